//! Per-CPU state: the boot records firmware hands back to Warden's secondary entry, the
//! power-state bookkeeping behind PSCI, and the EL2 configuration applied to each CPU
//! before it runs the host.

use crate::arch::{self, read_sysreg, write_sysreg};
use aarch64_cpu::registers::{
    CNTFRQ_EL0, CNTHCTL_EL2, CNTVOFF_EL2, CPTR_EL2, HAFGRTR_EL2, HCR_EL2, HDFGRTR_EL2, HDFGWTR_EL2,
    HFGITR_EL2, HFGRTR_EL2, HFGWTR_EL2, ICC_SRE_EL2, ICH_HCR_EL2, ID_AA64DFR0_EL1,
    ID_AA64ISAR1_EL1, ID_AA64MMFR0_EL1, ID_AA64MMFR1_EL1, ID_AA64PFR0_EL1, ID_AA64PFR1_EL1,
    MDCR_EL2, MIDR_EL1, MPIDR_EL1, Readable, SCTLR_EL1, SCTLR_EL2, TPIDR_EL2, VMPIDR_EL2, VTCR_EL2,
    VTTBR_EL2, Writeable,
};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use hyp::el2_setup::{El2Config, IdRegs};
use hyp::psci::{PowerCell, PowerState};

/// Most CPUs Warden manages (one EL2 stack each; see linker.ld).
pub const MAX_CPUS: usize = 16;
/// EL2 stack size per CPU (see linker.ld).
pub const STACK_SIZE: u64 = 0x8000;

/// What `secondary_entry` (src/head.S) reads with the MMU off, at fixed offsets.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBoot {
    /// Top of this CPU's EL2 stack.
    pub stack_top: u64,
    /// TTBR0_EL2.
    pub ttbr0: u64,
    /// TCR_EL2.
    pub tcr: u64,
    /// MAIR_EL2.
    pub mair: u64,
    /// SCTLR_EL2 with MMU and caches on.
    pub sctlr: u64,
    /// Where the host wants this CPU to start (CPU_ON / suspend resume address).
    pub host_entry: u64,
    /// The host's context argument for that entry (x0).
    pub host_ctx: u64,
    /// Index of this slot.
    pub index: u64,
}

/// One CPU slot.
pub struct CpuSlot {
    boot: UnsafeCell<CpuBoot>,
    /// Power state (PSCI).
    pub power: PowerCell,
    /// MPIDR affinity, or `u64::MAX` for an unused slot.
    pub mpidr: AtomicU64,
}

// SAFETY: `boot` is written only by the CPU that owns the slot's transition (the boot CPU
// before others start; a CPU_ON caller after winning `PowerCell::claim_for_on`; the CPU
// itself before suspending), and read by the slot's CPU after firmware starts it.
unsafe impl Sync for CpuSlot {}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: CpuSlot = CpuSlot {
    boot: UnsafeCell::new(CpuBoot {
        stack_top: 0,
        ttbr0: 0,
        tcr: 0,
        mair: 0,
        sctlr: 0,
        host_entry: 0,
        host_ctx: 0,
        index: 0,
    }),
    power: PowerCell::new(PowerState::Off),
    mpidr: AtomicU64::new(u64::MAX),
};

/// All CPU slots. Slot 0 is the boot CPU.
pub static CPUS: [CpuSlot; MAX_CPUS] = [EMPTY; MAX_CPUS];
/// Number of slots in use.
pub static NR_CPUS: AtomicUsize = AtomicUsize::new(0);

impl CpuSlot {
    /// Physical address of the boot record (identity-mapped).
    pub fn boot_pa(&self) -> u64 {
        self.boot.get() as u64
    }

    /// Updates the boot record and cleans it to the point of coherency, so the target CPU
    /// reads it with its MMU off.
    ///
    /// # Safety
    /// The caller owns the slot's current transition (see the `Sync` impl).
    pub unsafe fn update_boot(&self, f: impl FnOnce(&mut CpuBoot)) {
        // SAFETY: exclusive by the caller's contract.
        f(unsafe { &mut *self.boot.get() });
        arch::clean_dcache_range(
            self.boot.get() as u64,
            core::mem::size_of::<CpuBoot>() as u64,
        );
    }
}

/// The slot of the CPU with affinity `mpidr`.
pub fn slot_of(mpidr: u64) -> Option<usize> {
    let n = NR_CPUS.load(Ordering::Acquire);
    (0..n).find(|&i| CPUS[i].mpidr.load(Ordering::Acquire) == mpidr)
}

/// The calling CPU's slot (kept in TPIDR_EL2).
pub fn this_slot() -> usize {
    TPIDR_EL2.get() as usize
}

/// Reads the ID registers that decide this CPU's EL2 setup.
pub fn read_id_regs() -> IdRegs {
    let pfr0 = ID_AA64PFR0_EL1.get();
    let pfr1 = ID_AA64PFR1_EL1.get();
    let dfr0 = ID_AA64DFR0_EL1.get();
    let mut id = IdRegs {
        pfr0,
        pfr1,
        pfr2: read_sysreg!("s3_0_c0_c4_2"),
        mmfr0: ID_AA64MMFR0_EL1.get(),
        mmfr1: ID_AA64MMFR1_EL1.get(),
        mmfr3: read_sysreg!("s3_0_c0_c7_3"),
        dfr0,
        isar1: ID_AA64ISAR1_EL1.get(),
        isar2: read_sysreg!("s3_0_c0_c6_2"),
        ..Default::default()
    };
    if id.sme() {
        id.smfr0 = read_sysreg!("s3_0_c0_c4_5");
        id.sme_prio = read_sysreg!("s3_1_c0_c0_6") & (1 << 15) != 0;
    }
    if id.pmuv3() {
        id.pmcr_n = (read_sysreg!("pmcr_el0") >> 11) & 0x1f;
    }
    if (dfr0 >> 32) & 0xf != 0 {
        // PMBIDR_EL1.P: buffer owned by a higher EL.
        id.spe_for_el1 = read_sysreg!("s3_0_c9_c10_7") & (1 << 4) == 0;
    }
    if (dfr0 >> 44) & 0xf != 0 {
        // TRBIDR_EL1.P.
        id.trbe_for_el1 = read_sysreg!("s3_0_c9_c11_7") & (1 << 4) == 0;
    }
    if id.mpam() {
        id.mpam_has_hcr = read_sysreg!("s3_0_c10_c4_4") & (1 << 17) != 0;
    }
    id
}

/// SCTLR_EL1 for entering the host: MMU and caches off, RES1 bits set, little endian.
const SCTLR_EL1_MMU_OFF: u64 = 0x30d0_0800;

/// Programs this CPU's EL2 state for running the host at EL1 with stage 2 on.
pub fn init_el2_for_host(vtcr: u64, vttbr: u64) {
    let id = read_id_regs();
    let cfg = El2Config::for_host(&id);

    // The host stage-2 tables are written before the registers that let EL1 walk them.
    // `aarch64-cpu`'s register writes are `nomem` asm, which the compiler may move memory
    // accesses across: this barrier (a memory clobber, and a DSB for the walker) keeps
    // the table writes first.
    arch::dsb_ishst();
    VTCR_EL2.set(vtcr);
    VTTBR_EL2.set(vttbr);
    arch::isb();
    HCR_EL2.set(cfg.hcr);
    if let Some(v) = cfg.hcrx {
        write_sysreg!("s3_4_c1_c2_2", v); // HCRX_EL2
    }
    CNTHCTL_EL2.set(cfg.cnthctl | hyp::el2_setup::event_stream_bits(CNTFRQ_EL0.get()));
    CNTVOFF_EL2.set(0);
    MDCR_EL2.set(cfg.mdcr);
    // The host's profiling, trace and branch-record units must not see EL2.
    if let Some(v) = cfg.pmscr {
        write_sysreg!("s3_4_c9_c9_0", v); // PMSCR_EL2
    }
    if let Some(v) = cfg.trfcr {
        write_sysreg!("s3_4_c1_c2_1", v); // TRFCR_EL2
    }
    if let Some(v) = cfg.brbcr {
        write_sysreg!("s2_4_c9_c0_0", v); // BRBCR_EL2
    }
    CPTR_EL2.set(cfg.cptr);
    write_sysreg!("hstr_el2", 0);
    arch::isb();
    if let Some(v) = cfg.zcr {
        write_sysreg!("s3_4_c1_c2_0", v); // ZCR_EL2
    }
    if let Some(v) = cfg.smcr {
        write_sysreg!("s3_4_c1_c2_6", v); // SMCR_EL2
    }
    if cfg.clear_smprimap {
        write_sysreg!("s3_4_c1_c2_5", 0); // SMPRIMAP_EL2
    }
    if cfg.sctlr_extra != 0 {
        SCTLR_EL2.set(SCTLR_EL2.get() | cfg.sctlr_extra);
    }
    if let Some(f) = cfg.fgt {
        HFGRTR_EL2.set(f.hfgrtr);
        HFGWTR_EL2.set(f.hfgwtr);
        HFGITR_EL2.set(f.hfgitr);
        HDFGRTR_EL2.set(f.hdfgrtr);
        HDFGWTR_EL2.set(f.hdfgwtr);
        if f.hafgrtr {
            HAFGRTR_EL2.set(0);
        }
        if f.fgt2 {
            write_sysreg!("s3_4_c3_c1_0", 0); // HDFGRTR2_EL2
            write_sysreg!("s3_4_c3_c1_1", 0); // HDFGWTR2_EL2
            write_sysreg!("s3_4_c3_c1_2", 0); // HFGRTR2_EL2
            write_sysreg!("s3_4_c3_c1_3", 0); // HFGWTR2_EL2
            write_sysreg!("s3_4_c3_c1_7", 0); // HFGITR2_EL2
        }
    }
    if cfg.gicv3 {
        // SRE | Enable: the system-register interface, and EL1 may use it.
        ICC_SRE_EL2.set(ICC_SRE_EL2.get() | 0b1001);
        arch::isb();
        if ICC_SRE_EL2.get() & 1 != 0 {
            ICH_HCR_EL2.set(0);
        }
    }
    if let Some((mpam2, has_hcr)) = cfg.mpam2 {
        write_sysreg!("s3_4_c10_c5_0", mpam2); // MPAM2_EL2
        if has_hcr {
            write_sysreg!("s3_4_c10_c4_0", 0); // MPAMHCR_EL2
        }
    }
    if cfg.clear_lorc {
        write_sysreg!("s3_0_c10_c4_3", 0); // LORC_EL1
    }
    write_sysreg!("vpidr_el2", MIDR_EL1.get());
    VMPIDR_EL2.set(MPIDR_EL1.get());
    SCTLR_EL1.set(SCTLR_EL1_MMU_OFF);
    arch::isb();
    // Nothing cached from before (firmware, an earlier life of this CPU) may survive.
    arch::tlbi_vmalls12_local();
}
