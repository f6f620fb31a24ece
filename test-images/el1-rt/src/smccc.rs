//! SMCCC 1.1 fast calls: Warden's ABI (`host-abi`) and the standard discovery calls over
//! `HVC #0`, PSCI over the DTB's conduit.

use host_abi::{func, smccc};

use crate::logic::Status;

/// PSCI function IDs used by the images.
pub mod psci {
    /// `PSCI_VERSION`.
    pub const VERSION: u32 = 0x8400_0000;
    /// `CPU_OFF`.
    pub const CPU_OFF: u32 = 0x8400_0002;
    /// `CPU_ON`, SMC64.
    pub const CPU_ON_64: u32 = 0xC400_0003;
    /// `AFFINITY_INFO`, SMC64.
    pub const AFFINITY_INFO_64: u32 = 0xC400_0004;
    /// `SYSTEM_OFF`.
    pub const SYSTEM_OFF: u32 = 0x8400_0008;
    /// `AFFINITY_INFO` result: the CPU is on.
    pub const AFFINITY_ON: u64 = 0;
    /// `AFFINITY_INFO` result: the CPU is off.
    pub const AFFINITY_OFF: u64 = 1;
    /// `AFFINITY_INFO` result: the CPU is being turned on.
    pub const AFFINITY_ON_PENDING: u64 = 2;
}

/// x0..x3 after a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ret {
    pub x0: u64,
    pub x1: u64,
    pub x2: u64,
    pub x3: u64,
}

impl Ret {
    /// Whether x0 is 0 (success).
    pub fn ok(&self) -> bool {
        self.x0 == 0
    }

    /// Whether x0 is this error.
    pub fn is(&self, e: host_abi::Error) -> bool {
        self.x0 == e.to_reg()
    }

    /// x0 as a status, for messages: `-2 (INVALID)`.
    pub fn status(&self) -> Status {
        Status(self.x0)
    }
}

/// An SMCCC call over HVC (`smc` false) or SMC, with arguments x1..x6.
///
/// # Safety
///
/// The call may change what memory the program owns (`MEM_DONATE`, or any call an
/// implementation might misread as one): the caller must respect the contract of `fid`
/// and pass nothing the program still uses where memory could be taken away.
pub unsafe fn raw(smc: bool, fid: u32, a: [u64; 6]) -> Ret {
    let (x0, x1, x2, x3): (u64, u64, u64, u64);
    macro_rules! invoke {
        ($insn:literal) => {
            // SAFETY: an SMCCC 1.1 call: the callee returns results in x0-x3 and may
            // clobber x4-x17 (declared); it touches no memory of ours except as `fid`'s
            // contract says, which the caller respects (memory is not marked `nomem`).
            unsafe {
                core::arch::asm!(
                    $insn,
                    inout("x0") u64::from(fid) => x0,
                    inout("x1") a[0] => x1,
                    inout("x2") a[1] => x2,
                    inout("x3") a[2] => x3,
                    inout("x4") a[3] => _,
                    inout("x5") a[4] => _,
                    inout("x6") a[5] => _,
                    lateout("x7") _,
                    lateout("x8") _, lateout("x9") _, lateout("x10") _, lateout("x11") _,
                    lateout("x12") _, lateout("x13") _, lateout("x14") _, lateout("x15") _,
                    lateout("x16") _, lateout("x17") _,
                    options(nostack),
                )
            }
        };
    }
    if smc {
        invoke!("smc #0");
    } else {
        invoke!("hvc #0");
    }
    Ret { x0, x1, x2, x3 }
}

/// A Warden call over HVC that cannot take memory from the program: anything but
/// `MEM_DONATE` (use [`mem_donate`]), which this refuses by panicking.
pub fn hvc(fid: u32, a: [u64; 6]) -> Ret {
    assert!(fid != func::MEM_DONATE, "MEM_DONATE through smccc::hvc");
    // SAFETY: the other calls of Warden's ABI (and the standard ones) give the program
    // memory back at most (MEM_RECLAIM); none takes any away.
    unsafe { raw(false, fid, a) }
}

/// `MEM_DONATE(pa, pages)` over HVC.
///
/// # Safety
///
/// If it succeeds, the pages are Warden's: the program must not touch them (nor let
/// anything else it controls do so) until `MEM_RECLAIM` returns them.
pub unsafe fn mem_donate(pa: u64, pages: u64) -> Ret {
    // SAFETY: per this function's contract.
    unsafe { raw(false, func::MEM_DONATE, [pa, pages, 0, 0, 0, 0]) }
}

/// `MEM_RECLAIM(pages)` over HVC: pages come back to the program, which is always safe.
pub fn mem_reclaim(pages: u64) -> Ret {
    hvc(func::MEM_RECLAIM, [pages, 0, 0, 0, 0, 0])
}

/// `FEATURES`.
pub fn features() -> Ret {
    hvc(func::FEATURES, [0; 6])
}

/// `DOMAIN_ALLOC(flags)`.
pub fn domain_alloc(flags: u64) -> Ret {
    hvc(func::DOMAIN_ALLOC, [flags, 0, 0, 0, 0, 0])
}

/// `DOMAIN_FREE(domain)`.
pub fn domain_free(domain: u64) -> Ret {
    hvc(func::DOMAIN_FREE, [domain, 0, 0, 0, 0, 0])
}

/// `ATTACH(domain, endpoint)`.
pub fn attach(domain: u64, endpoint: u64) -> Ret {
    hvc(func::ATTACH, [domain, endpoint, 0, 0, 0, 0])
}

/// `MAP(domain, iova, pa, size, prot)`.
pub fn map(domain: u64, iova: u64, pa: u64, size: u64, prot: u64) -> Ret {
    hvc(func::MAP, [domain, iova, pa, size, prot, 0])
}

/// `UNMAP(domain, iova, size)`.
pub fn unmap(domain: u64, iova: u64, size: u64) -> Ret {
    hvc(func::UNMAP, [domain, iova, size, 0, 0, 0])
}

/// `FLUSH(domain)`.
pub fn flush(domain: u64) -> Ret {
    hvc(func::FLUSH, [domain, 0, 0, 0, 0, 0])
}

/// `IOVA_TO_PHYS(domain, iova)`.
pub fn iova_to_phys(domain: u64, iova: u64) -> Ret {
    hvc(func::IOVA_TO_PHYS, [domain, iova, 0, 0, 0, 0])
}

/// `EVENT_POLL`.
pub fn event_poll() -> Ret {
    hvc(func::EVENT_POLL, [0; 6])
}

/// `STATS(group)`.
pub fn stats(group: u64) -> Ret {
    hvc(func::STATS, [group, 0, 0, 0, 0, 0])
}

/// `SMCCC_VERSION`.
pub fn smccc_version() -> Ret {
    hvc(smccc::VERSION, [0; 6])
}

/// `SMCCC_ARCH_FEATURES(fid)`.
pub fn arch_features(queried: u32) -> Ret {
    hvc(smccc::ARCH_FEATURES, [u64::from(queried), 0, 0, 0, 0, 0])
}

/// The vendor hypervisor service's `CALL_UID` (x0..x3 = the UID words).
pub fn call_uid() -> Ret {
    hvc(smccc::VENDOR_HYP_CALL_UID, [0; 6])
}

/// The vendor hypervisor service's `REVISION` (x0 major, x1 minor).
pub fn revision() -> Ret {
    hvc(smccc::VENDOR_HYP_REVISION, [0; 6])
}

/// A harmless call (`REVISION`) that gives Warden a trap, e.g. to drain its SMMU event
/// queue and log the events, right after DMAs that should have faulted.
pub fn nudge() {
    let _ = revision();
}

/// A PSCI call over SMC (`smc`) or HVC.
fn psci_call(smc: bool, fid: u32, a1: u64, a2: u64, a3: u64) -> Ret {
    // SAFETY: the PSCI calls the images make (CPU_ON, CPU_OFF, AFFINITY_INFO,
    // SYSTEM_OFF) take no memory from the program.
    unsafe { raw(smc, fid, [a1, a2, a3, 0, 0, 0]) }
}

/// PSCI `SYSTEM_OFF` over SMC (`smc`) or HVC; returns only if it failed.
pub fn psci_system_off(smc: bool) -> u64 {
    psci_call(smc, psci::SYSTEM_OFF, 0, 0, 0).x0
}

/// PSCI `CPU_ON(mpidr, entry, context)`: x0 = 0 or a PSCI error.
pub fn psci_cpu_on(smc: bool, mpidr: u64, entry: u64, context: u64) -> i64 {
    psci_call(smc, psci::CPU_ON_64, mpidr, entry, context).x0 as i64
}

/// PSCI `CPU_ON` with the function ID `fid` (a CPU_ON form).
pub fn psci_cpu_on_with(smc: bool, fid: u32, mpidr: u64, entry: u64, context: u64) -> i64 {
    psci_call(smc, fid, mpidr, entry, context).x0 as i64
}

/// PSCI `CPU_OFF` of the calling CPU: returns (with an error) only if it failed.
pub fn psci_cpu_off(smc: bool) -> i64 {
    psci_call(smc, psci::CPU_OFF, 0, 0, 0).x0 as i64
}

/// PSCI `AFFINITY_INFO(mpidr, level 0)`: ON, OFF, ON_PENDING or an error.
pub fn psci_affinity_info(smc: bool, mpidr: u64) -> i64 {
    psci_call(smc, psci::AFFINITY_INFO_64, mpidr, 0, 0).x0 as i64
}
