//! PCI configuration space through a host bridge's ECAM window (DTB `reg`): 32-bit
//! accesses only, as every ECAM supports.

use hyp::addr::PhysRange;

use crate::logic;
use crate::rt::{read32, write32};

/// Configuration register offsets.
pub const VENDOR_DEVICE: u32 = 0x00;
pub const COMMAND_STATUS: u32 = 0x04;
pub const HEADER_TYPE: u32 = 0x0c;
pub const BAR0: u32 = 0x10;

/// A bus/device/function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bdf {
    pub bus: u32,
    pub dev: u32,
    pub func: u32,
}

impl Bdf {
    /// The requester ID (`bus << 8 | dev << 3 | func`).
    pub fn rid(self) -> u32 {
        (self.bus << 8) | (self.dev << 3) | self.func
    }
}

impl core::fmt::Display for Bdf {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.dev, self.func)
    }
}

/// An ECAM window whose first bus is `bus_start`.
pub struct Ecam {
    pub window: PhysRange,
    pub bus_start: u32,
}

impl Ecam {
    fn addr(&self, f: Bdf, reg: u32) -> Option<u64> {
        let off = logic::ecam_offset(self.bus_start, f.bus, f.dev, f.func, reg & !3)?;
        (off + 4 <= self.window.size).then(|| self.window.base.get() + off)
    }

    /// Reads a configuration register (all ones outside the window, like an absent device).
    pub fn read(&self, f: Bdf, reg: u32) -> u32 {
        match self.addr(f, reg) {
            // SAFETY: an aligned register inside the ECAM window the DTB describes.
            Some(a) => unsafe { read32(a) },
            None => u32::MAX,
        }
    }

    /// Writes a configuration register (ignored outside the window).
    pub fn write(&self, f: Bdf, reg: u32, value: u32) {
        if let Some(a) = self.addr(f, reg) {
            // SAFETY: an aligned register inside the ECAM window the DTB describes.
            unsafe { write32(a, value) }
        }
    }

    /// The first function on `bus` with this vendor and device ID.
    pub fn find(&self, bus: u32, vendor: u16, device: u16) -> Option<Bdf> {
        self.find_all(bus, vendor, device).next()
    }

    /// Every function on `bus` with this vendor and device ID, in device/function order.
    pub fn find_all(&self, bus: u32, vendor: u16, device: u16) -> impl Iterator<Item = Bdf> {
        let want = (u32::from(device) << 16) | u32::from(vendor);
        (0..32)
            .flat_map(move |dev| {
                let f0 = Bdf { bus, dev, func: 0 };
                let funcs = if self.read(f0, VENDOR_DEVICE) & 0xffff == 0xffff {
                    0
                } else if self.read(f0, HEADER_TYPE) & (0x80 << 16) != 0 {
                    8
                } else {
                    1
                };
                (0..funcs).map(move |func| Bdf { bus, dev, func })
            })
            .filter(move |&f| self.read(f, VENDOR_DEVICE) == want)
    }
}
