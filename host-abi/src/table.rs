//! Every constant of the ABI as data: name, value, type and documentation, grouped as in
//! the crate's modules. The table is built by the same macro invocations that define the
//! constants, so it always holds exactly what the crate exports. `cargo xtask
//! abi-header` turns it into `host-abi/include/warden_abi.h`.

/// How a group's values are best written in C. Whatever the style, a constant whose name
/// ends in `_SHIFT` (a bit position) is written as a plain decimal number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Identifiers and masks: `0xC6000004UL`.
    Hex,
    /// Flag bits: a single bit as `(1UL << n)`, anything else (masks) in hex.
    Bits,
    /// Small numbers (indices, counts): decimal, `2UL`.
    Dec,
    /// Signed status codes: `(-2L)`.
    Signed,
}

/// One constant.
#[derive(Debug, Clone, Copy)]
pub struct Const {
    /// The Rust name (for errors: the ABI name, e.g. `NOT_SUPPORTED`).
    pub name: &'static str,
    /// The value; for signed constants, the two's complement bits.
    pub value: u64,
    /// The Rust type: `u32`, `u64` or `i64`.
    pub ty: &'static str,
    /// The doc comment, one entry per line (each usually starting with a space).
    pub doc: &'static [&'static str],
}

impl Const {
    /// The value as a signed number (meaningful for `i64` constants).
    pub const fn signed(&self) -> i64 {
        self.value as i64
    }
}

/// The constants of one module (or of the crate root).
#[derive(Debug, Clone, Copy)]
pub struct Group {
    /// The Rust module (`""` for the crate root, `"Error"` for the status codes).
    pub module: &'static str,
    /// The prefix of the C names: `WARDEN_FN_` + `MAP`.
    pub prefix: &'static str,
    /// How to write the values in C.
    pub style: Style,
    /// The module's doc comment, one entry per line.
    pub doc: &'static [&'static str],
    /// The constants, in declaration order.
    pub consts: &'static [Const],
}

impl Group {
    /// The C name of a constant of this group.
    pub fn c_name(&self, c: &Const) -> CName {
        CName(self.prefix, c.name)
    }
}

/// A C name: a group's prefix followed by the constant's name in upper case.
#[derive(Debug, Clone, Copy)]
pub struct CName(&'static str, &'static str);

impl core::fmt::Display for CName {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.0)?;
        for ch in self.1.chars() {
            core::fmt::Write::write_char(f, ch.to_ascii_uppercase())?;
        }
        Ok(())
    }
}

/// Every group of the ABI, in the order the header presents them.
pub const GROUPS: &[Group] = &[
    crate::ROOT_TABLE,
    crate::smccc::TABLE,
    crate::func::TABLE,
    crate::ERROR_TABLE,
    crate::domain::TABLE,
    crate::domain_flags::TABLE,
    crate::prot::TABLE,
    crate::features::TABLE,
    crate::stats::TABLE,
    crate::event::TABLE,
    crate::event_type::TABLE,
    crate::mem::TABLE,
];
