//! The runtime of an MMU-off EL1 program: entry from head.S, the PL011 console, a
//! lock-free bump heap for the boot CPU, the generic timer, check reporting, unexpected
//! exceptions and panics, and power-off.
//!
//! The boot CPU's state is in `Cell`s of `Sync` wrappers. That is sound because only the
//! boot CPU (index 0, see [`cpu_index`]) touches them: it runs with interrupts masked
//! (Warden enters it with DAIF set and nothing unmasks them), nothing re-enters it except
//! the exception and panic paths, which are guarded against recursion and end in
//! power-off, and secondary CPUs use none of it (their exceptions and panics are
//! recorded in per-CPU words, see [`secondary_failures`]).

use alloc::string::String;
use core::alloc::{GlobalAlloc, Layout};
use core::cell::{Cell, UnsafeCell};
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU64, Ordering};

use hyp::dtb::Platform;

use crate::smccc;

/// Most CPUs an image drives (index 0 is the boot CPU).
pub const MAX_CPUS: usize = 16;

/// What an image is called and what it runs.
pub struct Image {
    /// The image's name in its first line (`edu-dma`).
    pub name: &'static str,
    /// Prefix of check lines: `EDU` gives `EDU PASS name: details`.
    pub check_prefix: &'static str,
    /// Prefix of the image's other lines and of the summary: `edu` gives
    /// `edu: N passed, M failed`.
    pub log_prefix: &'static str,
    /// Runs the checks on the boot CPU (the console is up, the program runs at EL1).
    pub run: fn(&Platform, &[u8]),
}

// ---------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------

struct State {
    /// PSCI conduit: SMC (true) or HVC.
    psci_smc: Cell<bool>,
    passed: Cell<u32>,
    failed: Cell<u32>,
    /// Set once the program is on its way out (exception, panic, power-off).
    finishing: Cell<bool>,
    check_prefix: Cell<&'static str>,
    log_prefix: Cell<&'static str>,
}

// SAFETY: only the boot CPU uses the cells, with interrupts masked and no re-entrancy but
// the guarded exception and panic paths (see the module documentation).
unsafe impl Sync for State {}

static STATE: State = State {
    psci_smc: Cell::new(true),
    passed: Cell::new(0),
    failed: Cell::new(0),
    finishing: Cell::new(false),
    check_prefix: Cell::new("EL1"),
    log_prefix: Cell::new("el1"),
};

/// Failures recorded by secondary CPUs (exceptions, panics), one word per CPU, written
/// only by that CPU.
static SECONDARY_FAILS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// Per-CPU: the CPU expects its next exception (set by itself with [`expect_exception`]).
static EXPECTING: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// Per-CPU: the syndrome of the expected exception it took, with bit 63 set (0: none).
static CAUGHT: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// Declares that the calling secondary CPU's next exception is expected: instead of a
/// failure, it records the syndrome (see [`caught_exception`]) and the CPU parks.
pub fn expect_exception() {
    if let (Some(e), Some(c)) = (EXPECTING.get(cpu_index()), CAUGHT.get(cpu_index())) {
        c.store(0, Ordering::Relaxed);
        e.store(1, Ordering::Release);
    }
}

/// The ESR_EL1 of the expected exception CPU `cpu` took, if it took one.
pub fn caught_exception(cpu: usize) -> Option<u64> {
    let v = CAUGHT.get(cpu)?.load(Ordering::Acquire);
    (v != 0).then_some(v & !(1 << 63))
}

/// This CPU's index in the image (TPIDR_EL1, set by head.S): 0 for the boot CPU.
pub fn cpu_index() -> usize {
    let v: u64;
    // SAFETY: reading TPIDR_EL1 has no side effects.
    unsafe { core::arch::asm!("mrs {}, tpidr_el1", out(reg) v, options(nomem, nostack)) };
    v as usize
}

/// Whether this is the boot CPU.
pub fn is_boot_cpu() -> bool {
    cpu_index() == 0
}

/// The failures secondary CPUs recorded so far.
pub fn secondary_failures() -> u64 {
    SECONDARY_FAILS
        .iter()
        .map(|f| f.load(Ordering::Acquire))
        .sum()
}

/// The PSCI conduit the DTB names: SMC (true) or HVC.
pub fn psci_smc() -> bool {
    STATE.psci_smc.get()
}

/// The prefix of the image's own lines (`edu`, `conformance`).
pub fn log_prefix() -> &'static str {
    STATE.log_prefix.get()
}

// ---------------------------------------------------------------------------------------
// MMIO and barriers
// ---------------------------------------------------------------------------------------

/// Reads a 32-bit device register.
///
/// # Safety
///
/// `addr` must be a 4-byte aligned device register (or RAM) the program may read.
pub unsafe fn read32(addr: u64) -> u32 {
    // SAFETY: per the caller's contract.
    unsafe { (addr as *const u32).read_volatile() }
}

/// Writes a 32-bit device register.
///
/// # Safety
///
/// `addr` must be a 4-byte aligned device register the program may write.
pub unsafe fn write32(addr: u64, value: u32) {
    // SAFETY: per the caller's contract.
    unsafe { (addr as *mut u32).write_volatile(value) }
}

/// Reads a 64-bit device register.
///
/// # Safety
///
/// `addr` must be an 8-byte aligned device register the program may read.
pub unsafe fn read64(addr: u64) -> u64 {
    // SAFETY: per the caller's contract.
    unsafe { (addr as *const u64).read_volatile() }
}

/// Writes a 64-bit device register.
///
/// # Safety
///
/// `addr` must be an 8-byte aligned device register the program may write.
pub unsafe fn write64(addr: u64, value: u64) {
    // SAFETY: per the caller's contract.
    unsafe { (addr as *mut u64).write_volatile(value) }
}

unsafe extern "C" {
    fn probe_write64(addr: u64, value: u64) -> u64;
}

/// Writes a 64-bit device register that may refuse the access: `Err(ESR_EL1)` if the
/// store took a synchronous abort (e.g. the external abort Warden injects for an address
/// outside the host stage-2), which the exception vectors turn into a return instead of
/// a failure (head.S, `probe_write64`). Boot CPU or secondaries alike.
///
/// # Safety
///
/// `addr` must be 8-byte aligned, and a store of `value` there must be harmless to the
/// program if it completes (a device register, not the program's own memory).
pub unsafe fn try_write64(addr: u64, value: u64) -> Result<(), u64> {
    // SAFETY: per the caller's contract; an abort of the store returns its syndrome.
    match unsafe { probe_write64(addr, value) } {
        0 => Ok(()),
        esr => Err(esr),
    }
}

/// `DSB SY`: every earlier memory access has completed (before a device is told to DMA,
/// and after it has said it is done).
pub fn dsb() {
    // SAFETY: a barrier; no memory or register effects beyond ordering.
    unsafe { core::arch::asm!("dsb sy", options(nostack, preserves_flags)) };
}

/// `SEV`: wakes CPUs waiting in `WFE`.
pub fn sev() {
    dsb();
    // SAFETY: sending an event has no effect on memory.
    unsafe { core::arch::asm!("sev", options(nomem, nostack, preserves_flags)) };
}

// ---------------------------------------------------------------------------------------
// Timer
// ---------------------------------------------------------------------------------------

/// The virtual counter (CNTVCT_EL0).
pub fn counter() -> u64 {
    let v: u64;
    // SAFETY: reading the counter has no side effects; EL1 may always read CNTVCT_EL0.
    unsafe { core::arch::asm!("isb", "mrs {}, cntvct_el0", out(reg) v, options(nostack)) };
    v
}

/// The counter frequency in Hz (CNTFRQ_EL0), never 0.
pub fn counter_hz() -> u64 {
    let v: u64;
    // SAFETY: reading CNTFRQ_EL0 has no side effects.
    unsafe { core::arch::asm!("mrs {}, cntfrq_el0", out(reg) v, options(nomem, nostack)) };
    v.max(1)
}

/// Milliseconds between two counter values.
pub fn ms_between(start: u64, end: u64) -> u64 {
    end.wrapping_sub(start).saturating_mul(1000) / counter_hz()
}

/// Microseconds between two counter values.
pub fn us_between(start: u64, end: u64) -> u64 {
    end.wrapping_sub(start).saturating_mul(1_000_000) / counter_hz()
}

/// Busy-waits for `us` microseconds of the virtual counter.
pub fn delay_us(us: u64) {
    let start = counter();
    while us_between(start, counter()) < us {
        core::hint::spin_loop();
    }
}

// ---------------------------------------------------------------------------------------
// Console
// ---------------------------------------------------------------------------------------

const UARTDR: u64 = 0x00;
const UARTFR: u64 = 0x18;
const UARTCR: u64 = 0x30;
const FR_BUSY: u32 = 1 << 3;
const FR_TXFF: u32 = 1 << 5;
/// UARTEN | TXE | RXE.
const CR_ENABLE: u32 = 0x301;

fn console_init(base: u64) {
    // SAFETY: `base` is the PL011 the DTB names as the console.
    unsafe {
        let cr = read32(base + UARTCR);
        if cr & CR_ENABLE != CR_ENABLE {
            write32(base + UARTCR, cr | CR_ENABLE);
        }
    }
    CONSOLE_BASE.store(base, Ordering::Release);
}

/// The console's base: set once by the boot CPU before any secondary starts, then only
/// read (secondaries print only from their exception and panic paths).
static CONSOLE_BASE: AtomicU64 = AtomicU64::new(0);

fn putc(byte: u8) {
    let base = CONSOLE_BASE.load(Ordering::Relaxed);
    if base == 0 {
        return;
    }
    // SAFETY: `base` is the PL011 set up by `console_init`.
    unsafe {
        while read32(base + UARTFR) & FR_TXFF != 0 {}
        write32(base + UARTDR, u32::from(byte));
    }
}

fn console_flush() {
    let base = CONSOLE_BASE.load(Ordering::Relaxed);
    if base == 0 {
        return;
    }
    // SAFETY: as in `putc`.
    unsafe { while read32(base + UARTFR) & FR_BUSY != 0 {} }
}

struct Console;

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                putc(b'\r');
            }
            putc(b);
        }
        Ok(())
    }
}

/// Writes formatted text to the console.
pub fn print_fmt(args: fmt::Arguments<'_>) {
    let _ = Console.write_fmt(args);
}

/// `println!` on the console.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {
        $crate::rt::print_fmt(format_args!("{}\n", format_args!($($arg)*)))
    };
}

// ---------------------------------------------------------------------------------------
// Heap: a bump allocator without a lock (no exclusives with the MMU off), boot CPU only
// ---------------------------------------------------------------------------------------

const HEAP_SIZE: usize = 1024 * 1024;

#[repr(C, align(16))]
struct HeapMem(UnsafeCell<[u8; HEAP_SIZE]>);

struct Bump {
    mem: HeapMem,
    /// Offset of the first free byte.
    next: Cell<usize>,
}

// SAFETY: only the boot CPU allocates (`alloc` refuses on other CPUs and `dealloc` /
// `realloc` only act on the boot CPU), with interrupts masked and no allocation from the
// exception path before it powers off: no concurrent access to `next`.
unsafe impl Sync for Bump {}

impl Bump {
    fn base(&self) -> usize {
        self.mem.0.get() as usize
    }

    /// Whether `[ptr, ptr + size)` is the most recent allocation.
    fn is_last(&self, ptr: *mut u8, size: usize) -> bool {
        ptr as usize + size == self.base() + self.next.get()
    }
}

// SAFETY: `alloc` hands out disjoint, suitably aligned ranges of `mem` (or null when it
// is exhausted or called on a secondary CPU); `dealloc` and `realloc` only move `next`
// back over or extend the most recent allocation, which its owner is giving up or growing.
unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !is_boot_cpu() {
            return core::ptr::null_mut();
        }
        let base = self.base();
        let Some(start) = (base + self.next.get()).checked_next_multiple_of(layout.align()) else {
            return core::ptr::null_mut();
        };
        match start.checked_add(layout.size()) {
            Some(end) if end <= base + HEAP_SIZE => {
                self.next.set(end - base);
                start as *mut u8
            }
            _ => core::ptr::null_mut(),
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // Only the most recent allocation goes back; the rest stays (the program is short).
        if is_boot_cpu() && self.is_last(ptr, layout.size()) {
            self.next.set(ptr as usize - self.base());
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !is_boot_cpu() {
            return core::ptr::null_mut();
        }
        let start = ptr as usize - self.base();
        if self.is_last(ptr, layout.size()) && start + new_size <= HEAP_SIZE {
            self.next.set(start + new_size);
            return ptr;
        }
        // SAFETY: `layout.align()` is valid and `new_size` is non-zero, per the caller.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: `new_layout` has a non-zero size.
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both ranges are live allocations of at least the copied size, and
            // disjoint (the new one lies after every live allocation).
            unsafe {
                core::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new
    }
}

#[global_allocator]
static HEAP: Bump = Bump {
    mem: HeapMem(UnsafeCell::new([0; HEAP_SIZE])),
    next: Cell::new(0),
};

/// Bytes of heap in use.
pub fn heap_used() -> usize {
    HEAP.next.get()
}

// ---------------------------------------------------------------------------------------
// Reporting and the end of the program
// ---------------------------------------------------------------------------------------

/// Prints a check's result line and counts it (boot CPU only).
pub fn report(name: &str, result: Result<String, String>) {
    let prefix = STATE.check_prefix.get();
    match result {
        Ok(details) => {
            STATE.passed.set(STATE.passed.get() + 1);
            crate::println!("{prefix} PASS {name}: {details}");
        }
        Err(why) => {
            STATE.failed.set(STATE.failed.get() + 1);
            crate::println!("{prefix} FAIL {name}: {why}");
        }
    }
}

/// Prints the summary and powers the machine off (boot CPU only).
pub fn finish() -> ! {
    STATE.finishing.set(true);
    let failed = u64::from(STATE.failed.get()) + secondary_failures();
    crate::println!(
        "{}: {} passed, {} failed",
        STATE.log_prefix.get(),
        STATE.passed.get(),
        failed
    );
    console_flush();
    // Give Warden one more trap before the end (it may drain its SMMU event queue then).
    smccc::nudge();
    let r = smccc::psci_system_off(STATE.psci_smc.get());
    crate::println!(
        "{}: PSCI SYSTEM_OFF returned {:#x}; parking",
        STATE.log_prefix.get(),
        r
    );
    park()
}

/// Stops this CPU for good.
pub fn park() -> ! {
    loop {
        // SAFETY: waiting for an event has no effect on memory.
        unsafe { core::arch::asm!("wfe", options(nomem, nostack)) };
    }
}

/// Records a failure of this secondary CPU (its own word only).
fn secondary_failed() {
    if let Some(f) = SECONDARY_FAILS.get(cpu_index()) {
        f.store(f.load(Ordering::Relaxed) + 1, Ordering::Release);
    }
}

fn exception_hint(esr: u64) -> &'static str {
    match (esr >> 26, esr & 0x3f) {
        (0x25, 0x10) | (0x21, 0x10) => {
            ": a synchronous external abort, i.e. Warden refused the access (memory the \
             program does not own)"
        }
        (0x25, _) | (0x24, _) => ": a data abort",
        (0x21, _) | (0x20, _) => ": an instruction abort",
        (0x00, _) => ": an UNDEFINED instruction (Warden injects this for traps it refuses)",
        _ => "",
    }
}

/// Called by the EL1 vectors (head.S) for any exception: none is expected, except on a
/// secondary CPU that said so ([`expect_exception`]).
#[unsafe(no_mangle)]
extern "C" fn el1_exception(kind: u64, esr: u64, elr: u64, far: u64) -> ! {
    let class = esr >> 26;
    let hint = exception_hint(esr);
    let prefix = STATE.check_prefix.get();
    if !is_boot_cpu() {
        let i = cpu_index();
        if let (Some(e), Some(c)) = (EXPECTING.get(i), CAUGHT.get(i))
            && e.load(Ordering::Acquire) != 0
        {
            e.store(0, Ordering::Relaxed);
            c.store(esr | 1 << 63, Ordering::Release);
            park();
        }
        // The boot CPU's cells are not ours: record the failure, say what happened, stop.
        secondary_failed();
        crate::println!(
            "{prefix} FAIL exception: unexpected exception at EL1 on CPU {}, vector {kind}, ESR {esr:#x} (EC {class:#x}), ELR {elr:#x}, FAR {far:#x}{hint}",
            cpu_index()
        );
        park();
    }
    if STATE.finishing.replace(true) {
        park();
    }
    STATE.failed.set(STATE.failed.get() + 1);
    crate::println!(
        "{prefix} FAIL exception: unexpected exception at EL1, vector {kind}, ESR {esr:#x} (EC {class:#x}), ELR {elr:#x}, FAR {far:#x}{hint}"
    );
    finish()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    let prefix = STATE.check_prefix.get();
    if !is_boot_cpu() {
        secondary_failed();
        crate::println!("{prefix} FAIL panic: on CPU {}: {info}", cpu_index());
        park();
    }
    if STATE.finishing.replace(true) {
        park();
    }
    STATE.failed.set(STATE.failed.get() + 1);
    crate::println!("{prefix} FAIL panic: {info}");
    finish()
}

// ---------------------------------------------------------------------------------------
// Entry
// ---------------------------------------------------------------------------------------

/// Largest DTB accepted (Warden's host DTB is at most 2 MiB).
const MAX_DTB: usize = 2 << 20;

/// The DTB's bytes, as long as its header says (None if it does not look like one).
fn dtb_blob(pa: u64) -> Option<&'static [u8]> {
    if pa == 0 || !pa.is_multiple_of(8) {
        return None;
    }
    // SAFETY: Warden passes the physical address of the DTB it wrote into host RAM; the
    // program never writes it. The header is read first to learn the length.
    let head = unsafe { core::slice::from_raw_parts(pa as *const u8, 8) };
    if head[..4] != [0xd0, 0x0d, 0xfe, 0xed] {
        return None;
    }
    let size = u32::from_be_bytes([head[4], head[5], head[6], head[7]]) as usize;
    if !(40..=MAX_DTB).contains(&size) {
        return None;
    }
    // SAFETY: as above; the blob is `size` bytes long.
    Some(unsafe { core::slice::from_raw_parts(pa as *const u8, size) })
}

/// The boot CPU's life after head.S (called from the image's `el1_main` with the DTB
/// address, the image's load address and the exception level it was entered at): parses
/// the DTB, brings up the console, runs the image's checks, prints the summary and powers
/// off.
pub fn start(image: &Image, dtb: u64, load_base: u64, el: u64) -> ! {
    STATE.check_prefix.set(image.check_prefix);
    STATE.log_prefix.set(image.log_prefix);
    let Some(blob) = dtb_blob(dtb) else {
        // No DTB, no console: nothing can be reported. Try to end the run anyway.
        smccc::psci_system_off(true);
        park()
    };
    let plat = match Platform::parse(blob) {
        Ok(p) => p,
        Err(_) => {
            smccc::psci_system_off(true);
            park()
        }
    };
    if let Some(psci) = &plat.psci {
        STATE.psci_smc.set(psci.method == hyp::dtb::PsciMethod::Smc);
    }
    match &plat.console {
        Some(c) if c.kind == hyp::dtb::ConsoleKind::Pl011 => console_init(c.regs.base.get()),
        // Only a PL011 is driven; without it the run cannot report anything.
        _ => {
            smccc::psci_system_off(STATE.psci_smc.get());
            park()
        }
    }
    crate::println!(
        "{}: {} test image at EL{el}, loaded at {load_base:#x}, DTB at {dtb:#x} ({} bytes), EL1 MMU off",
        image.log_prefix,
        image.name,
        blob.len()
    );
    if el != 1 {
        report(
            "setup",
            Err(alloc::format!(
                "entered at EL{el}: the image must run at EL1 under Warden"
            )),
        );
        finish();
    }
    (image.run)(&plat, blob);
    finish()
}
