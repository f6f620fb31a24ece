//! The thin architecture layer: system registers, barriers, cache and TLB maintenance,
//! and the SMC conduit to firmware. Everything above it is plain Rust in `hyp`.
//!
//! Named system registers and barriers go through `aarch64-cpu`; the macros below are for
//! registers it does not name (written by their `s3_…` encodings) and for the writes
//! whose ordering against memory matters. `aarch64-cpu`'s accessors (and `read_sysreg!`)
//! are `nomem` asm, which the compiler may move memory accesses across; `write_sysreg!`
//! and the barriers here are not, so they also order the compiler's memory accesses.

use aarch64_cpu::asm::barrier;
use aarch64_cpu::registers::{MPIDR_EL1, PAR_EL1, Readable, Writeable};
use core::arch::asm;

/// Reads a system register by name or `s3_…` encoding.
macro_rules! read_sysreg {
    ($name:literal) => {{
        let v: u64;
        // SAFETY: reading a system register has no memory effects; the register exists
        // on every CPU Warden runs on (callers check the ID registers for optional ones).
        unsafe {
            core::arch::asm!(concat!("mrs {}, ", $name), out(reg) v, options(nomem, nostack, preserves_flags))
        };
        v
    }};
}

/// Writes a system register by name or `s3_…` encoding.
macro_rules! write_sysreg {
    ($name:literal, $v:expr) => {{
        let v: u64 = $v;
        // SAFETY: EL2 owns these registers; each call site documents why the value is
        // right and checks the ID registers for optional ones.
        unsafe {
            core::arch::asm!(concat!("msr ", $name, ", {}"), in(reg) v, options(nostack, preserves_flags))
        };
    }};
}

pub(crate) use read_sysreg;
pub(crate) use write_sysreg;

/// Instruction synchronisation barrier.
#[inline(always)]
pub fn isb() {
    barrier::isb(barrier::SY);
}

/// Full-system data synchronisation barrier.
#[inline(always)]
pub fn dsb_sy() {
    barrier::dsb(barrier::SY);
}

/// Inner-shareable store barrier: table writes become visible to walkers.
#[inline(always)]
pub fn dsb_ishst() {
    barrier::dsb(barrier::ISHST);
}

/// Smallest data cache line size in bytes (CTR_EL0.DminLine).
fn dcache_line() -> u64 {
    4 << ((read_sysreg!("ctr_el0") >> 16) & 0xf)
}

/// Cleans `[start, start + len)` to the point of coherency, so a non-cached observer
/// (a CPU with its MMU off, a non-coherent device) sees what this CPU wrote.
pub fn clean_dcache_range(start: u64, len: u64) {
    let line = dcache_line();
    let mut a = start & !(line - 1);
    while a < start + len {
        // SAFETY: cache maintenance by VA on a mapped address has no effect on memory
        // contents (a clean only writes back dirty data).
        unsafe { asm!("dc cvac, {}", in(reg) a, options(nostack, preserves_flags)) };
        a += line;
    }
    dsb_sy();
}

/// Cleans and invalidates `[start, start + len)` to the point of coherency: what this CPU
/// wrote reaches memory, and its next read comes from memory (what a non-coherent
/// device wrote).
pub fn clean_invalidate_dcache_range(start: u64, len: u64) {
    let line = dcache_line();
    let mut a = start & !(line - 1);
    while a < start + len {
        // SAFETY: clean+invalidate writes back dirty data before dropping the line, so
        // memory contents are preserved.
        unsafe { asm!("dc civac, {}", in(reg) a, options(nostack, preserves_flags)) };
        a += line;
    }
    dsb_sy();
}

/// Invalidates `[start, start + len)` from the data caches, discarding any copy.
///
/// # Safety
/// Dirty lines in the range are lost: only for memory whose cached copies are known to be
/// stale or clean (used before the MMU is turned on, for memory written with it off).
pub unsafe fn invalidate_dcache_range(start: u64, len: u64) {
    let line = dcache_line();
    let mut a = start & !(line - 1);
    while a < start + len {
        // SAFETY: the caller guarantees no dirty data in the range matters.
        unsafe { asm!("dc ivac, {}", in(reg) a, options(nostack, preserves_flags)) };
        a += line;
    }
    dsb_sy();
}

/// Invalidates all EL2 stage-1 TLB entries on this CPU.
pub fn tlbi_alle2() {
    // SAFETY: TLB maintenance only drops cached translations.
    unsafe {
        asm!(
            "tlbi alle2",
            "dsb nsh",
            "isb",
            options(nostack, preserves_flags)
        )
    };
}

/// Invalidates the stage-2 entries of `[ipa, ipa + size)` page by page, then all combined
/// stage-1+2 entries of the current VMID (they may have been built from the removed
/// stage-2 entries), inner shareable, and waits for completion — the sequence a host
/// stage-2 change needs.
pub fn tlbi_ipa_range_is(ipa: u64, size: u64) {
    dsb_ishst();
    let mut a = ipa;
    while a < ipa.saturating_add(size) {
        // SAFETY: TLB maintenance only drops cached translations.
        unsafe { asm!("tlbi ipas2e1is, {}", in(reg) a >> 12, options(nostack, preserves_flags)) };
        a += 4096;
    }
    // SAFETY: as above.
    unsafe {
        asm!(
            "dsb ish",
            "tlbi vmalle1is",
            "dsb ish",
            "isb",
            options(nostack, preserves_flags)
        )
    };
}

/// Invalidates all stage-1 and stage-2 entries of the current VMID, inner shareable.
pub fn tlbi_vmalls12_is() {
    // SAFETY: TLB maintenance only drops cached translations.
    unsafe {
        asm!(
            "dsb ishst",
            "tlbi vmalls12e1is",
            "dsb ish",
            "isb",
            options(nostack, preserves_flags)
        )
    };
}

/// Invalidates all stage-1 and stage-2 entries of the current VMID on this CPU only.
pub fn tlbi_vmalls12_local() {
    // SAFETY: TLB maintenance only drops cached translations.
    unsafe {
        asm!(
            "tlbi vmalls12e1",
            "dsb nsh",
            "isb",
            options(nostack, preserves_flags)
        )
    };
}

/// Translates `va` through the host's stage 1 with `AT S1E1R` and returns the result
/// (PAR_EL1), leaving the host's own PAR_EL1 as it was.
pub fn at_s1e1r(va: u64) -> u64 {
    let saved = PAR_EL1.get();
    // SAFETY: address translation only writes PAR_EL1 (restored below); it cannot fault
    // at EL2 for an EL1 regime translation (failures are reported in PAR_EL1.F).
    unsafe { asm!("at s1e1r, {}", in(reg) va, options(nostack, preserves_flags)) };
    isb();
    let par = PAR_EL1.get();
    PAR_EL1.set(saved);
    par
}

/// Arguments and results of an SMCCC call (x0–x17).
#[derive(Clone, Copy, Debug, Default)]
pub struct SmcArgs(pub [u64; 18]);

/// Issues `SMC #0` to firmware with x0–x17 and returns x0–x17 (SMCCC 1.2 allows results
/// beyond x3; earlier versions preserve x4–x17).
pub fn smc(args: &SmcArgs) -> SmcArgs {
    let mut r = *args;
    // SAFETY: an SMC transfers control to EL3 firmware, which follows SMCCC and returns
    // here; it does not touch Warden's memory.
    unsafe {
        asm!(
            "smc #0",
            inout("x0") r.0[0], inout("x1") r.0[1], inout("x2") r.0[2], inout("x3") r.0[3],
            inout("x4") r.0[4], inout("x5") r.0[5], inout("x6") r.0[6], inout("x7") r.0[7],
            inout("x8") r.0[8], inout("x9") r.0[9], inout("x10") r.0[10], inout("x11") r.0[11],
            inout("x12") r.0[12], inout("x13") r.0[13], inout("x14") r.0[14],
            inout("x15") r.0[15], inout("x16") r.0[16], inout("x17") r.0[17],
            options(nostack)
        )
    };
    r
}

/// Parks this CPU forever (low power wait).
pub fn park() -> ! {
    loop {
        aarch64_cpu::asm::wfe();
    }
}

/// This CPU's MPIDR_EL1 affinity.
pub fn mpidr() -> u64 {
    MPIDR_EL1.get() & hyp::psci::MPIDR_AFF_MASK
}
