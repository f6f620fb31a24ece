//! Secondary CPUs: PSCI `CPU_ON` to head.S's `secondary_entry` with a per-CPU boot record
//! (stack, entry function, argument, CPU index), and the MPIDR of the running CPU.
//!
//! CPUs share nothing but aligned 64-bit words, each written by one CPU only and
//! accessed with `AtomicU64::load`/`store` (plain or acquire/release loads and stores:
//! the MMU is off, so there are no exclusives or atomic read-modify-writes).

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::rt::{self, MAX_CPUS};
use crate::smccc;

/// Bytes of stack per secondary CPU.
pub const STACK_SIZE: usize = 32 * 1024;

/// MPIDR_EL1's affinity fields (Aff3, Aff2, Aff1, Aff0).
pub const MPIDR_AFF_MASK: u64 = 0xff_00ff_ffff;

/// What `secondary_entry` (head.S) reads, at fixed offsets: the CPU's stack top (+0), the
/// function it calls (+8) with its argument (+16), and the CPU index for TPIDR_EL1 (+24).
#[repr(C, align(64))]
struct SecondaryBoot {
    stack_top: AtomicU64,
    entry: AtomicU64,
    arg: AtomicU64,
    cpu: AtomicU64,
}

static BOOT: [SecondaryBoot; MAX_CPUS] = [const {
    SecondaryBoot {
        stack_top: AtomicU64::new(0),
        entry: AtomicU64::new(0),
        arg: AtomicU64::new(0),
        cpu: AtomicU64::new(0),
    }
}; MAX_CPUS];

#[repr(C, align(4096))]
struct Stacks(UnsafeCell<[[u8; STACK_SIZE]; MAX_CPUS]>);

// SAFETY: each stack is used by one CPU only (the one started with it), and only through
// its stack pointer: the program never reads or writes the array otherwise.
unsafe impl Sync for Stacks {}

static STACKS: Stacks = Stacks(UnsafeCell::new([[0; STACK_SIZE]; MAX_CPUS]));

unsafe extern "C" {
    /// head.S: the entry point given to PSCI CPU_ON.
    fn secondary_entry();
}

/// The running CPU's MPIDR affinity fields.
pub fn mpidr() -> u64 {
    let v: u64;
    // SAFETY: reading MPIDR_EL1 has no side effects.
    unsafe { core::arch::asm!("mrs {}, mpidr_el1", out(reg) v, options(nomem, nostack)) };
    v & MPIDR_AFF_MASK
}

/// Starts the CPU `mpidr` as the image's CPU `index` (1..MAX_CPUS) running
/// `entry(arg)` on its own stack, with PSCI CPU_ON over the DTB's conduit. Returns
/// CPU_ON's status (0 or a PSCI error; -2 INVALID_PARAMETERS for a bad index).
///
/// Boot CPU only; each index may be started once at a time (it must have stopped, e.g.
/// by CPU_OFF, before it is started again).
pub fn start_cpu(index: usize, mpidr: u64, entry: extern "C" fn(u64) -> !, arg: u64) -> i64 {
    start_cpu_with(smccc::psci::CPU_ON_64, index, mpidr, entry, arg)
}

/// [`start_cpu`] with the CPU_ON function ID `fid` (e.g. with SMCCC 1.3's SVE hint set).
pub fn start_cpu_with(
    fid: u32,
    index: usize,
    mpidr: u64,
    entry: extern "C" fn(u64) -> !,
    arg: u64,
) -> i64 {
    if index == 0 || index >= MAX_CPUS || !rt::is_boot_cpu() {
        return -2;
    }
    let rec = &BOOT[index];
    // SAFETY: computing an address inside STACKS (no access).
    let top = unsafe { (STACKS.0.get() as *mut u8).add((index + 1) * STACK_SIZE) } as u64;
    rec.stack_top.store(top, Ordering::Relaxed);
    rec.entry
        .store(entry as *const () as u64, Ordering::Relaxed);
    rec.arg.store(arg, Ordering::Relaxed);
    rec.cpu.store(index as u64, Ordering::Release);
    rt::dsb();
    smccc::psci_cpu_on_with(
        rt::psci_smc(),
        fid,
        mpidr,
        secondary_entry as *const () as u64,
        rec as *const SecondaryBoot as u64,
    )
}
