//! Warden's console output on a PL011 that the host drives too: bounded in time, never
//! blocking Warden (I6).
//!
//! The host owns the UART once it runs and may disable it (`UARTCR.UARTEN`/`TXE` clear),
//! leave its FIFO full for ever, or slow it down (baud rate). A byte waits at most
//! [`WAIT_MS`] (by the counter, not by loop iterations) for room in the FIFO, and a whole
//! message at most [`MESSAGE_MS`]; when a wait ends unmet the console is *stalled*:
//! from then on bytes are dropped at once, each costing one look at the registers, until
//! the UART takes bytes again. Dropped bytes are counted; the first message that gets
//! through again is preceded by a line saying how many were lost.

use core::fmt::{self, Write};

/// Data register.
pub const UARTDR: usize = 0x00;
/// Flag register.
pub const UARTFR: usize = 0x18;
/// Control register.
pub const UARTCR: usize = 0x30;
/// `UARTFR.TXFF`: the transmit FIFO is full.
pub const FR_TXFF: u32 = 1 << 5;
/// `UARTCR.UARTEN`.
pub const CR_UARTEN: u32 = 1 << 0;
/// `UARTCR.TXE`.
pub const CR_TXE: u32 = 1 << 8;
/// `UARTCR.RXE`.
pub const CR_RXE: u32 = 1 << 9;
/// Longest wait for room in the FIFO, in milliseconds.
pub const WAIT_MS: u64 = 10;
/// Longest time one message may keep Warden at the console, in milliseconds.
pub const MESSAGE_MS: u64 = 100;

/// The PL011's registers.
pub trait UartIo {
    /// Reads the 32-bit register at `off`.
    fn read32(&self, off: usize) -> u32;
    /// Writes the 32-bit register at `off`.
    fn write32(&self, off: usize, v: u32);
}

/// A free-running counter (`CNTPCT_EL0`).
pub trait Ticks {
    /// The counter now.
    fn ticks(&self) -> u64;
    /// Its frequency in Hz (`CNTFRQ_EL0`).
    fn ticks_per_sec(&self) -> u64;
}

/// The console's transmit state.
#[derive(Debug, Default)]
pub struct Pl011 {
    /// A wait timed out and the UART has not taken a byte since.
    stalled: bool,
    /// Bytes dropped and not yet reported.
    unreported: u64,
    /// Bytes dropped since boot.
    dropped_total: u64,
}

impl Pl011 {
    /// Nothing dropped yet.
    pub const fn new() -> Self {
        Self {
            stalled: false,
            unreported: 0,
            dropped_total: 0,
        }
    }

    /// Bytes dropped since boot.
    pub const fn dropped(&self) -> u64 {
        self.dropped_total
    }

    /// Whether the last byte could not be sent in time (and output is being dropped).
    pub const fn stalled(&self) -> bool {
        self.stalled
    }

    /// Prints one message (`\n` becomes `\r\n`): after a report of what was dropped, if
    /// anything was and the UART takes bytes again. Returns within about [`MESSAGE_MS`]
    /// (twice that with a report) whatever the UART does.
    pub fn print(&mut self, io: &impl UartIo, clock: &impl Ticks, args: fmt::Arguments) {
        if self.unreported != 0 && ready(io) {
            self.stalled = false;
            let n = self.unreported;
            let mut w = Out {
                uart: self,
                io,
                clock,
                start: clock.ticks(),
            };
            let _ = w.write_fmt(format_args!(
                "warden: console: {n} byte(s) dropped while the UART did not take them\n"
            ));
            if self.unreported == n {
                self.unreported = 0;
            }
        }
        let mut w = Out {
            uart: self,
            io,
            clock,
            start: clock.ticks(),
        };
        let _ = w.write_fmt(args);
    }

    fn drop_byte(&mut self) {
        self.unreported += 1;
        self.dropped_total += 1;
    }

    /// Sends `b`, part of a message that started at tick `start`.
    fn put(&mut self, io: &impl UartIo, clock: &impl Ticks, start: u64, b: u8) {
        if self.stalled {
            if !ready(io) {
                self.drop_byte();
                return;
            }
            self.stalled = false;
        } else if !wait_ready(io, clock, start) {
            self.stalled = true;
            self.drop_byte();
            return;
        }
        io.write32(UARTDR, u32::from(b));
    }
}

/// Whether the UART is enabled for transmission and has room in its FIFO.
fn ready(io: &impl UartIo) -> bool {
    let cr = io.read32(UARTCR);
    cr & (CR_UARTEN | CR_TXE) == (CR_UARTEN | CR_TXE) && io.read32(UARTFR) & FR_TXFF == 0
}

/// Waits up to [`WAIT_MS`] for [`ready`], and not past [`MESSAGE_MS`] after `message`
/// (the tick the message started at).
fn wait_ready(io: &impl UartIo, clock: &impl Ticks, message: u64) -> bool {
    if ready(io) {
        return true;
    }
    let per_ms = clock.ticks_per_sec().max(1000) / 1000;
    let (limit, message_limit) = (per_ms * WAIT_MS, per_ms * MESSAGE_MS);
    let start = clock.ticks();
    loop {
        if ready(io) {
            return true;
        }
        let now = clock.ticks();
        if now.wrapping_sub(start) >= limit || now.wrapping_sub(message) >= message_limit {
            return false;
        }
        core::hint::spin_loop();
    }
}

struct Out<'a, I, C> {
    uart: &'a mut Pl011,
    io: &'a I,
    clock: &'a C,
    /// When the message started (ticks).
    start: u64,
}

impl<I: UartIo, C: Ticks> Write for Out<'_, I, C> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                self.uart.put(self.io, self.clock, self.start, b'\r');
            }
            self.uart.put(self.io, self.clock, self.start, b);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::cell::{Cell, RefCell};
    use std::vec::Vec;

    /// A PL011 whose FIFO is full (or which is disabled) until told otherwise; what it
    /// transmits is recorded.
    struct Uart {
        full: Cell<bool>,
        cr: Cell<u32>,
        sent: RefCell<Vec<u8>>,
        reads: Cell<u64>,
    }

    impl Uart {
        fn new() -> Self {
            Self {
                full: Cell::new(false),
                cr: Cell::new(CR_UARTEN | CR_TXE | CR_RXE),
                sent: RefCell::new(Vec::new()),
                reads: Cell::new(0),
            }
        }
        fn text(&self) -> std::string::String {
            std::string::String::from_utf8(self.sent.borrow().clone()).unwrap()
        }
    }

    impl UartIo for Uart {
        fn read32(&self, off: usize) -> u32 {
            self.reads.set(self.reads.get() + 1);
            match off {
                UARTFR if self.full.get() => FR_TXFF,
                UARTCR => self.cr.get(),
                _ => 0,
            }
        }
        fn write32(&self, off: usize, v: u32) {
            assert_eq!(off, UARTDR);
            assert!(!self.full.get(), "byte written into a full FIFO");
            self.sent.borrow_mut().push(v as u8);
        }
    }

    /// A counter at 1 MHz that advances 1 µs per read.
    struct Clock(Cell<u64>);
    impl Ticks for Clock {
        fn ticks(&self) -> u64 {
            self.0.set(self.0.get() + 1);
            self.0.get()
        }
        fn ticks_per_sec(&self) -> u64 {
            1_000_000
        }
    }

    #[test]
    fn a_uart_that_never_becomes_ready_drops_and_counts() {
        for disable in [false, true] {
            let uart = Uart::new();
            let clock = Clock(Cell::new(0));
            let mut c = Pl011::new();
            c.print(&uart, &clock, format_args!("boot\n"));
            assert_eq!(uart.text(), "boot\r\n");
            // The host takes the UART over and never lets Warden's bytes through.
            if disable {
                uart.cr.set(0);
            } else {
                uart.full.set(true);
            }
            let t0 = clock.0.get();
            for i in 0..100 {
                c.print(&uart, &clock, format_args!("message {i}\n"));
            }
            let waited = clock.0.get() - t0;
            assert!(
                waited <= 2 * WAIT_MS * 1000,
                "one bounded wait, then no more: {waited} µs"
            );
            assert!(c.stalled());
            let lost: u64 = (0..100)
                .map(|i| std::format!("message {i}\r\n").len() as u64)
                .sum();
            assert_eq!(c.dropped(), lost, "every byte counted");
            assert_eq!(uart.text(), "boot\r\n", "nothing written meanwhile");
            // The UART works again: the count comes first, then the message.
            uart.full.set(false);
            uart.cr.set(CR_UARTEN | CR_TXE | CR_RXE);
            c.print(&uart, &clock, format_args!("back\n"));
            assert_eq!(
                uart.text(),
                std::format!(
                    "boot\r\nwarden: console: {lost} byte(s) dropped while the UART did not take them\r\nback\r\n"
                )
            );
            assert!(!c.stalled());
            // Reported once.
            c.print(&uart, &clock, format_args!("x\n"));
            assert!(uart.text().ends_with("back\r\nx\r\n"));
        }
    }
    /// A UART that takes one byte every `gap` µs of `clock` (a slow baud rate the host
    /// chose: each byte alone is sent within [`WAIT_MS`]).
    struct SlowUart<'a> {
        clock: &'a Clock,
        gap: u64,
        last: Cell<Option<u64>>,
        sent: Cell<u64>,
    }

    impl UartIo for SlowUart<'_> {
        fn read32(&self, off: usize) -> u32 {
            let now = self.clock.0.get();
            match off {
                UARTCR => CR_UARTEN | CR_TXE,
                UARTFR if self.last.get().is_some_and(|t| now < t + self.gap) => FR_TXFF,
                _ => 0,
            }
        }
        fn write32(&self, off: usize, _v: u32) {
            assert_eq!(off, UARTDR);
            assert!(
                self.read32(UARTFR) & FR_TXFF == 0,
                "byte written into a full FIFO"
            );
            self.last.set(Some(self.clock.0.get()));
            self.sent.set(self.sent.get() + 1);
        }
    }

    #[test]
    fn a_slow_uart_bounds_each_message_not_only_each_byte() {
        let clock = Clock(Cell::new(0));
        let uart = SlowUart {
            clock: &clock,
            gap: (WAIT_MS - 1) * 1000,
            last: Cell::new(None),
            sent: Cell::new(0),
        };
        let mut c = Pl011::new();
        let line = [b'x'; 200];
        let text = core::str::from_utf8(&line).unwrap();
        let t0 = clock.0.get();
        c.print(&uart, &clock, format_args!("{text}"));
        let took = clock.0.get() - t0;
        assert!(
            took <= (MESSAGE_MS + WAIT_MS) * 1000,
            "one message kept Warden {took} µs at the console"
        );
        assert!(uart.sent.get() > 0, "the UART works, slowly");
        assert_eq!(
            c.dropped() + uart.sent.get(),
            200,
            "the rest dropped and counted"
        );
    }
}
