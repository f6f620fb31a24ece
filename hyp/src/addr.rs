//! Address newtypes: physical addresses, intermediate physical addresses (stage-2 input)
//! and I/O virtual addresses. Arithmetic is checked; `Debug` prints hex; `Display` of a
//! range reads like a person wrote it (`0x4020_0000..0x404b_b000 (2.7 MiB)`).

use core::fmt;

macro_rules! addr_type {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[repr(transparent)]
        pub struct $name(pub u64);

        impl $name {
            /// The raw value.
            pub const fn get(self) -> u64 {
                self.0
            }
            /// `self + off`, or `None` on overflow.
            pub const fn checked_add(self, off: u64) -> Option<Self> {
                match self.0.checked_add(off) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }
            /// Whether the address is a multiple of `align` (a power of two).
            pub const fn is_aligned(self, align: u64) -> bool {
                self.0 & (align - 1) == 0
            }
            /// Rounds down to a multiple of `align` (a power of two).
            pub const fn align_down(self, align: u64) -> Self {
                Self(self.0 & !(align - 1))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:#018x})"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }
    };
}

addr_type!(
    /// A physical address.
    PhysAddr
);
addr_type!(
    /// An intermediate physical address: the input of a stage-2 translation.
    Ipa
);
addr_type!(
    /// An I/O virtual address: what a device puts on the bus before the SMMU translates it.
    Iova
);

impl Iova {
    /// The same address as the input of the domain's stage-2 table: a host-managed
    /// domain's IOVA space is its stage-2 IPA space.
    pub const fn ipa(self) -> Ipa {
        Ipa(self.0)
    }
}

/// A half-open physical range `[base, base + size)`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct PhysRange {
    /// First byte.
    pub base: PhysAddr,
    /// Length in bytes.
    pub size: u64,
}

impl PhysRange {
    /// A range from base and size.
    pub const fn new(base: u64, size: u64) -> Self {
        Self {
            base: PhysAddr(base),
            size,
        }
    }
    /// One past the last byte (saturating).
    pub const fn end(&self) -> u64 {
        self.base.0.saturating_add(self.size)
    }
    /// Whether the two ranges share a byte.
    pub const fn overlaps(&self, other: &PhysRange) -> bool {
        self.size != 0 && other.size != 0 && self.base.0 < other.end() && other.base.0 < self.end()
    }
    /// Whether `other` lies entirely inside `self`.
    pub const fn contains_range(&self, other: &PhysRange) -> bool {
        other.base.0 >= self.base.0 && other.end() <= self.end()
    }
    /// Whether `addr` lies inside.
    pub const fn contains(&self, addr: u64) -> bool {
        addr >= self.base.0 && addr < self.end()
    }
}

/// `0x4020_0000..0x404b_b000 (2.7 MiB)`: the range in hex, digits grouped by four, and
/// its size in words ([`ByteSize`]). For logs a person reads (the boot banner).
impl fmt::Display for PhysRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}..{} ({})",
            GroupedHex(self.base.0),
            GroupedHex(self.end()),
            ByteSize(self.size)
        )
    }
}

/// A number printed as `0x4020_0000`: lower-case hex, `_` between groups of four digits
/// counted from the right.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct GroupedHex(pub u64);

impl fmt::Display for GroupedHex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let v = self.0;
        let n = (u64::BITS - v.leading_zeros()).div_ceil(4).max(1);
        f.write_str("0x")?;
        for i in (0..n).rev() {
            let d = DIGITS[((v >> (4 * i)) & 0xf) as usize];
            fmt::Write::write_char(f, char::from(d))?;
            if i != 0 && i % 4 == 0 {
                f.write_str("_")?;
            }
        }
        Ok(())
    }
}

/// A byte count printed for people: `24 bytes`, `9.3 KiB`, `2.7 MiB`, `2 GiB` — the
/// largest binary unit not above it, one decimal rounded to the nearest tenth, none when
/// that is zero.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ByteSize(pub u64);

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
        let n = self.0;
        match n {
            1 => return f.write_str("1 byte"),
            0..1024 => return write!(f, "{n} bytes"),
            _ => {}
        }
        // The unit is 1024^(k+1) for the largest k with n >= that.
        let k = ((u64::BITS - 1 - n.leading_zeros()) / 10 - 1) as usize;
        let unit = 1u128 << (10 * (k + 1));
        let tenths = (u128::from(n) * 10 + unit / 2) / unit;
        let name = UNITS.get(k).copied().unwrap_or("EiB");
        match tenths % 10 {
            0 => write!(f, "{} {name}", tenths / 10),
            frac => write!(f, "{}.{frac} {name}", tenths / 10),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    #[test]
    fn ranges_read_as_hex_ranges_with_sizes() {
        assert_eq!(
            PhysRange::new(0x4020_0000, 0x2b_b000).to_string(),
            "0x4020_0000..0x404b_b000 (2.7 MiB)"
        );
        assert_eq!(
            PhysRange::new(0x4000_0000, 2 << 30).to_string(),
            "0x4000_0000..0xc000_0000 (2 GiB)"
        );
        assert_eq!(
            PhysRange::new(0x902_0000, 0x18).to_string(),
            "0x902_0000..0x902_0018 (24 bytes)"
        );
        assert_eq!(
            PhysRange::new(0x40_1000_0000, 0x1000_0000).to_string(),
            "0x40_1000_0000..0x40_2000_0000 (256 MiB)"
        );
        assert_eq!(PhysRange::new(0, 0).to_string(), "0x0..0x0 (0 bytes)");
    }

    #[test]
    fn grouped_hex() {
        for (v, s) in [
            (0, "0x0"),
            (0xf, "0xf"),
            (0xffff, "0xffff"),
            (0x1_0000, "0x1_0000"),
            (u64::MAX, "0xffff_ffff_ffff_ffff"),
        ] {
            assert_eq!(GroupedHex(v).to_string(), s);
        }
    }

    #[test]
    fn byte_sizes() {
        for (v, s) in [
            (0, "0 bytes"),
            (1, "1 byte"),
            (1023, "1023 bytes"),
            (1024, "1 KiB"),
            (9497, "9.3 KiB"),
            (1536, "1.5 KiB"),
            (36 << 20, "36 MiB"),
            ((1 << 20) - 1, "1024 KiB"),
            (2_912_256, "2.8 MiB"),
            (u64::MAX, "16 EiB"),
        ] {
            assert_eq!(ByteSize(v).to_string(), s, "{v}");
        }
    }
}
