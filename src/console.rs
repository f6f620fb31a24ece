//! Warden's console: the UART named by `/chosen/stdout-path`, shared with the host (which
//! drives it too once it runs), and the `log` backend. Only PL011 is driven for now; with
//! any other UART Warden stays silent rather than guess.

use core::fmt;
use core::sync::atomic::{AtomicUsize, Ordering};
use hyp::pl011::{CR_RXE, CR_TXE, CR_UARTEN, Pl011, Ticks, UARTCR, UartIo};
use spin::Mutex;

/// MMIO base of the PL011 (0 = no console).
static BASE: AtomicUsize = AtomicUsize::new(0);
/// The transmit state (bounded waits, dropped-byte count), under the console lock.
static CONSOLE: Mutex<Pl011> = Mutex::new(Pl011::new());

/// Starts using the PL011 at `base` (already mapped Device at EL2).
///
/// # Safety
/// `base` must be the MMIO base of a PL011 mapped at EL2.
pub unsafe fn init_pl011(base: usize) {
    let cr = (base + UARTCR) as *mut u32;
    // SAFETY: the caller guarantees a mapped PL011 at `base`.
    unsafe {
        if cr.read_volatile() & CR_UARTEN == 0 {
            cr.write_volatile(CR_UARTEN | CR_TXE | CR_RXE);
        }
    }
    BASE.store(base, Ordering::Release);
}

/// The PL011's registers at the base registered by `init_pl011`.
struct Mmio(usize);

impl UartIo for Mmio {
    fn read32(&self, off: usize) -> u32 {
        // SAFETY: `self.0` is the PL011 base registered by `init_pl011`, mapped Device.
        unsafe { ((self.0 + off) as *const u32).read_volatile() }
    }
    fn write32(&self, off: usize, v: u32) {
        // SAFETY: as above.
        unsafe { ((self.0 + off) as *mut u32).write_volatile(v) }
    }
}

/// The generic timer's physical counter.
struct Counter;

impl Ticks for Counter {
    fn ticks(&self) -> u64 {
        crate::arch::read_sysreg!("cntpct_el0")
    }
    fn ticks_per_sec(&self) -> u64 {
        // Firmware must set CNTFRQ_EL0; if it did not, assume a fast counter (a longer
        // wait, still bounded).
        match crate::arch::read_sysreg!("cntfrq_el0") {
            0 => 1_000_000_000,
            f => f,
        }
    }
}

/// Prints to the console (if any), holding the console lock for the whole message.
/// Returns within a bounded time whatever the host did to the UART (output it does not
/// take is dropped and counted; see `hyp::pl011`).
pub fn print(args: fmt::Arguments) {
    let base = BASE.load(Ordering::Acquire);
    if base == 0 {
        return;
    }
    CONSOLE.lock().print(&Mmio(base), &Counter, args);
}

/// Prints a line on Warden's console.
#[macro_export]
macro_rules! println {
    () => { $crate::console::print(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::console::print(format_args!("{}\n", format_args!($($arg)*))) };
}

struct Logger;

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            print(format_args!("warden: {:<5} {}\n", r.level(), r.args()));
        }
    }
    fn flush(&self) {}
}

static LOGGER: Logger = Logger;

/// Installs the console as the `log` backend at `level`.
pub fn init_log(level: log::LevelFilter) {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}
