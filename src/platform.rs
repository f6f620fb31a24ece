//! EL2 implementations of `hyp`'s hardware seams: SMMU register access and host stage-2
//! CPU TLB maintenance.

use crate::arch;
use hyp::addr::Ipa;
use hyp::host_mem::CpuTlb;

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
    fn read32(&self, off: usize) -> u32 {
        // SAFETY: `base` is a mapped SMMU frame (see `new`); offsets come from the
        // register map and stay inside it.
        let v = unsafe { ((self.base + off) as *const u32).read_volatile() };
        after_load();
        v
    }
    fn write32(&self, off: usize, v: u32) {
        before_store();
        // SAFETY: as in `read32`.
        unsafe { ((self.base + off) as *mut u32).write_volatile(v) }
    }
    fn read64(&self, off: usize) -> u64 {
        // SAFETY: as in `read32`.
        let v = unsafe { ((self.base + off) as *const u64).read_volatile() };
        after_load();
        v
    }
    fn write64(&self, off: usize, v: u64) {
        before_store();
        // SAFETY: as in `read32`.
        unsafe { ((self.base + off) as *mut u64).write_volatile(v) }
    }
}

/// CPU TLB maintenance for the host VMID (VTTBR_EL2 holds it whenever Warden runs).
pub struct El2CpuTlb;

impl CpuTlb for El2CpuTlb {
    fn tlbi_ipa_range(&mut self, ipa: Ipa, size: u64) {
        arch::tlbi_ipa_range_is(ipa.get(), size);
    }
    fn tlbi_vmall(&mut self) {
        arch::tlbi_vmalls12_is();
    }
}
