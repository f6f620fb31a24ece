//! EL2 implementations of `hyp`'s hardware seams: SMMU register access, CPU TLB
//! maintenance (host VMID and others), the clock, and cache maintenance.

use crate::arch::{self, read_sysreg, write_sysreg};
use hyp::addr::{Ipa, PhysAddr};
use hyp::dma::{CacheMaint, Clock, VmidTlb};
use hyp::host_mem::CpuTlb;
use hyp::s2mmu::Granule;
use hyp::smmu::regs::Reg;
use tock_registers::RegisterLongName;

/// An SMMUv3 register frame mapped Device at EL2 (identity).
pub struct El2SmmuIo {
    base: usize,
}

impl El2SmmuIo {
    /// Register access for the SMMU at `base`.
    ///
    /// # Safety
    /// `base` must be the DTB-described SMMU register frame (both 64 KiB pages), mapped
    /// Device at EL2 and used by nothing else.
    pub unsafe fn new(base: usize) -> Self {
        Self { base }
    }
}

/// Orders memory writes (queue entries, STEs, cache cleans) before a register store that
/// lets the SMMU see them.
fn before_store() {
    arch::dsb_sy();
}

/// Orders a register load (e.g. EVENTQ_PROD) before reads of the memory it covers.
fn after_load() {
    // SAFETY: a barrier has no memory-safety effect.
    unsafe { core::arch::asm!("dsb ld", options(nostack, preserves_flags)) };
}

impl hyp::smmu::SmmuIo for El2SmmuIo {
    fn read32<R: RegisterLongName>(&self, reg: Reg<u32, R>) -> u32 {
        // SAFETY: `base` is a mapped SMMU frame (see `new`); `reg` is a declared register
        // of that frame (handles exist only for `SmmuFrame`'s fields), 4-aligned.
        let v = unsafe { ((self.base + reg.offset()) as *const u32).read_volatile() };
        after_load();
        v
    }
    fn write32<R: RegisterLongName>(&self, reg: Reg<u32, R>, v: u32) {
        before_store();
        // SAFETY: as in `read32`.
        unsafe { ((self.base + reg.offset()) as *mut u32).write_volatile(v) }
    }
    fn read64<R: RegisterLongName>(&self, reg: Reg<u64, R>) -> u64 {
        // SAFETY: as in `read32`; 64-bit registers are 8-aligned.
        let v = unsafe { ((self.base + reg.offset()) as *const u64).read_volatile() };
        after_load();
        v
    }
    fn write64<R: RegisterLongName>(&self, reg: Reg<u64, R>, v: u64) {
        before_store();
        // SAFETY: as in `read64`.
        unsafe { ((self.base + reg.offset()) as *mut u64).write_volatile(v) }
    }
    fn wait_for_event(&self) {
        // Woken by the SMMU's SEV on CMD_SYNC completion, or by the generic timer's event
        // stream (CNTHCTL_EL2.EVNTEN, see `cpu::init_el2_for_host`) at the latest.
        // SAFETY: waiting for an event has no memory effect.
        unsafe { core::arch::asm!("wfe", options(nomem, nostack, preserves_flags)) };
    }
    fn now_ns(&self) -> u64 {
        // CNTPCT_EL0 scaled by CNTFRQ_EL0: SMMU waits are bounded in time, not in polls.
        El2Cpu.now_ns()
    }
}

// SAFETY: the frame is MMIO shared by all CPUs; every access is a single volatile load
// or store, and the `hyp` core serialises the SMMU's users behind its own lock.
unsafe impl Send for El2SmmuIo {}
// SAFETY: as above.
unsafe impl Sync for El2SmmuIo {}

/// The CPU-side seams at EL2. VTTBR_EL2 holds the host's VMID whenever Warden runs on
/// behalf of the host, so host TLB maintenance needs no switch.
#[derive(Clone, Copy, Default)]
pub struct El2Cpu;

impl CpuTlb for El2Cpu {
    fn publish(&mut self) {
        arch::dsb_ishst();
    }
    fn tlbi_ipa_range(&mut self, ipa: Ipa, size: u64) {
        arch::tlbi_ipa_range_is(ipa.get(), size);
    }
    fn tlbi_vmall(&mut self) {
        arch::tlbi_vmalls12_is();
    }
}

impl VmidTlb for El2Cpu {
    fn tlbi_vmid_range(
        &mut self,
        vmid: u16,
        ipa: Ipa,
        size: u64,
        granule: Granule,
        leaf_only: bool,
    ) {
        with_vmid(vmid, || {
            arch::dsb_ishst();
            let step = granule.size();
            let mut a = ipa.get();
            while a < ipa.get().saturating_add(size) {
                if leaf_only {
                    // SAFETY: TLB maintenance only drops cached translations.
                    unsafe {
                        core::arch::asm!("tlbi ipas2le1is, {}", in(reg) a >> 12, options(nostack))
                    };
                } else {
                    // SAFETY: as above.
                    unsafe {
                        core::arch::asm!("tlbi ipas2e1is, {}", in(reg) a >> 12, options(nostack))
                    };
                }
                a += step;
            }
            // SAFETY: barriers and TLB maintenance only.
            unsafe {
                core::arch::asm!(
                    "dsb ish",
                    "tlbi vmalle1is",
                    "dsb ish",
                    "isb",
                    options(nostack)
                )
            };
        });
    }
    fn tlbi_vmid_all(&mut self, vmid: u16) {
        with_vmid(vmid, arch::tlbi_vmalls12_is);
    }
}

/// Runs `f` with VTTBR_EL2.VMID = `vmid` (interrupts are masked at EL2), then restores the
/// host's. The table base stays the host's: nothing runs at EL1 meanwhile.
fn with_vmid(vmid: u16, f: impl FnOnce()) {
    let saved = read_sysreg!("vttbr_el2");
    write_sysreg!(
        "vttbr_el2",
        (saved & !(0xffff << 48)) | (u64::from(vmid) << 48)
    );
    arch::isb();
    f();
    write_sysreg!("vttbr_el2", saved);
    arch::isb();
}

impl Clock for El2Cpu {
    fn now_ns(&self) -> u64 {
        let cnt = read_sysreg!("cntpct_el0") as u128;
        let freq = (read_sysreg!("cntfrq_el0") as u128).max(1);
        (cnt * 1_000_000_000 / freq) as u64
    }
}

impl CacheMaint for El2Cpu {
    fn clean_inval_poc(&mut self, pa: PhysAddr, len: u64) {
        arch::clean_invalidate_dcache_range(pa.get(), len);
    }
    fn dsb_ishst(&mut self) {
        arch::dsb_ishst();
    }
}
