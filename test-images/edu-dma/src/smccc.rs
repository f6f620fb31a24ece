//! SMCCC 1.1 fast calls: Warden's memory calls and discovery over `HVC #0`, PSCI
//! `SYSTEM_OFF` over the DTB's conduit.

use host_abi::VENDOR_HYP_BASE;

/// ABI v1 `MEM_DONATE` (x1 = pa, x2 = pages).
pub const MEM_DONATE: u32 = VENDOR_HYP_BASE + 0x0A;
/// ABI v1 `MEM_RECLAIM` (x1 = pages wanted; x1 = pa, x2 = pages returned).
pub const MEM_RECLAIM: u32 = VENDOR_HYP_BASE + 0x0B;
/// PSCI `SYSTEM_OFF`.
const PSCI_SYSTEM_OFF: u32 = 0x8400_0008;

/// x0..x3 after a call.
#[derive(Clone, Copy, Debug)]
pub struct Ret {
    pub x0: u64,
    pub x1: u64,
    pub x2: u64,
    pub x3: u64,
}

/// An SMCCC call over HVC (`smc` false) or SMC.
///
/// # Safety
///
/// The call may change what memory the program owns (`MEM_DONATE`): the caller must
/// respect the contract of `fid`.
unsafe fn call(smc: bool, fid: u32, a1: u64, a2: u64, a3: u64) -> Ret {
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
                    inout("x1") a1 => x1,
                    inout("x2") a2 => x2,
                    inout("x3") a3 => x3,
                    lateout("x4") _, lateout("x5") _, lateout("x6") _, lateout("x7") _,
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

/// `MEM_DONATE(pa, pages)` over HVC.
///
/// # Safety
///
/// If it succeeds, the pages are Warden's: the program must not touch them (nor let
/// anything else it controls do so) until `MEM_RECLAIM` returns them.
pub unsafe fn mem_donate(pa: u64, pages: u64) -> Ret {
    // SAFETY: per this function's contract.
    unsafe { call(false, MEM_DONATE, pa, pages, 0) }
}

/// `MEM_RECLAIM(pages)` over HVC: pages come back to the program, which is always safe.
pub fn mem_reclaim(pages: u64) -> Ret {
    // SAFETY: reclaiming gives memory back; nothing the program owns is taken away.
    unsafe { call(false, MEM_RECLAIM, pages, 0, 0) }
}

/// The vendor hypervisor service's `CALL_UID` (x0..x3 = the UID words).
pub fn call_uid() -> Ret {
    // SAFETY: a discovery call: no memory effects.
    unsafe { call(false, host_abi::smccc::VENDOR_HYP_CALL_UID, 0, 0, 0) }
}

/// A harmless call (`REVISION`) that gives Warden a trap, e.g. to drain its SMMU event
/// queue and log the events, right after DMAs that should have faulted.
pub fn nudge() {
    // SAFETY: a discovery call: no memory effects.
    let _ = unsafe { call(false, host_abi::smccc::VENDOR_HYP_REVISION, 0, 0, 0) };
}

/// PSCI `SYSTEM_OFF` over SMC (`smc`) or HVC; returns only if it failed.
pub fn psci_system_off(smc: bool) -> u64 {
    // SAFETY: powering off has no memory effects on the program (it does not come back).
    unsafe { call(smc, PSCI_SYSTEM_OFF, 0, 0, 0) }.x0
}
