//! Warden's console: the UART named by `/chosen/stdout-path`, shared with the host (which
//! drives it too once it runs), and the `log` backend. Only PL011 is driven for now; with
//! any other UART Warden stays silent rather than guess.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicUsize, Ordering};
use spin::Mutex;

const UARTDR: usize = 0x00;
const UARTFR: usize = 0x18;
const UARTCR: usize = 0x30;
const FR_TXFF: u32 = 1 << 5;
const CR_UARTEN_TXE_RXE: u32 = 0x301;

/// MMIO base of the PL011 (0 = no console).
static BASE: AtomicUsize = AtomicUsize::new(0);
static LOCK: Mutex<()> = Mutex::new(());

/// Starts using the PL011 at `base` (already mapped Device at EL2).
///
/// # Safety
/// `base` must be the MMIO base of a PL011 mapped at EL2.
pub unsafe fn init_pl011(base: usize) {
    let cr = (base + UARTCR) as *mut u32;
    // SAFETY: the caller guarantees a mapped PL011 at `base`.
    unsafe {
        if cr.read_volatile() & 1 == 0 {
            cr.write_volatile(CR_UARTEN_TXE_RXE);
        }
    }
    BASE.store(base, Ordering::Release);
}

struct Uart(usize);

impl Uart {
    fn put(&mut self, b: u8) {
        let fr = (self.0 + UARTFR) as *const u32;
        let dr = (self.0 + UARTDR) as *mut u32;
        // SAFETY: `self.0` is the PL011 base registered by `init_pl011`.
        unsafe {
            while fr.read_volatile() & FR_TXFF != 0 {
                core::hint::spin_loop();
            }
            dr.write_volatile(b as u32);
        }
    }
}

impl Write for Uart {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                self.put(b'\r');
            }
            self.put(b);
        }
        Ok(())
    }
}

/// Prints to the console (if any), holding the console lock for the whole message.
pub fn print(args: fmt::Arguments) {
    let base = BASE.load(Ordering::Acquire);
    if base == 0 {
        return;
    }
    let _g = LOCK.lock();
    let _ = Uart(base).write_fmt(args);
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
