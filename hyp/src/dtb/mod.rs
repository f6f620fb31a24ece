//! Platform discovery from the flattened device tree (DTB) that firmware hands Warden,
//! and the edited copy of it that Warden hands the host.
//!
//! [`Platform::parse`] reads everything Warden needs to know about the machine from the
//! DTB — RAM, existing reservations, console, GIC, PSCI, CPUs, the host payload
//! (`/chosen/module@…`, the Multiboot-for-ARM binding), Warden's own command line, the
//! SMMUs and their StreamID wiring, and the highest MMIO address — so that nothing about
//! any particular board is hard-coded. The result is owned (it does not borrow the
//! blob): after parsing, Warden need not trust the DTB's memory any more, which matters
//! because that memory is handed to the host.
//!
//! [`build_host_dtb`] re-emits the DTB with Warden's edits (carve-outs as
//! `/reserved-memory` `no-map` children, `/chosen/bootargs` and `linux,initrd-*` from the
//! modules, SMMUs disabled) into a caller-provided buffer, without allocating.
//!
//! The reader is Warden's own rather than `dtoolkit`'s: `dtoolkit` 0.4 rejects whole
//! blobs whose node or property names exceed the specification's 31 characters, and
//! shipping board DTBs contain such names (Rockchip's `snps,dis-u2-freeclk-exists-quirk`
//! is 32), which dtc and Linux accept. This reader checks every offset and length, never
//! panics on malformed input, and bounds nesting depth ([`MAX_DEPTH`]).
//!
//! Conventions, as Linux applies them:
//! - A node without `#address-cells` / `#size-cells` inherits its parent's (Linux's
//!   `of_n_addr_cells` walk; the root defaults to 2 and 1). QEMU's `guest-loader` relies
//!   on this: `/chosen` has no cell sizes of its own and module `reg`s are 2+2 cells,
//!   the root's.
//! - `reg` addresses are translated to CPU physical addresses through every ancestor's
//!   `ranges` (empty `ranges` = identity; no `ranges` = not CPU-addressable). Child
//!   addresses wider than two cells (PCI) are compared as whole numbers, so devices
//!   below a PCI host bridge are not translated.
//! - `status` absent, `"okay"` or `"ok"` means available.
//!
//! ## Where things are
//!
//! - `fdt`: the FDT reader — header, memory reservation block and structure block,
//!   checked once ([`MAX_DEPTH`] bounds nesting), then walked by offset.
//! - `props`: decoding property values (strings, cells, prop-encoded arrays) and the
//!   fallible-allocation helpers the owned results are built with.
//! - `bus`: the addressing conventions — cell sizes inherited from ancestors, `reg`
//!   translated through every ancestor's `ranges`.
//! - `platform`: the owned description of the machine ([`Platform`] and its parts) and
//!   what Warden asks of it.
//! - `discover`: [`Platform::parse`], the one walk over the tree that fills it in.
//! - `nodes`: every node as a flat list ([`device_nodes`]), for [`crate::masters`].
//! - `edit`: [`build_host_dtb`], the host's edited copy.
//! - `tests`: the unit tests of all of the above, on QEMU's DTBs, a synthetic board and
//!   hand-built blobs.

extern crate alloc;

use core::fmt;

mod bus;
mod discover;
mod edit;
mod fdt;
mod nodes;
mod platform;
mod props;
#[cfg(test)]
mod tests;

pub use edit::{HostDtbEdits, build_host_dtb, host_dtb_size};
pub use nodes::{DeviceNode, IommuRef, MapEntry, device_nodes};
pub use platform::{
    Console, ConsoleKind, Cpu, DeviceStream, EnableMethod, Gic, GicVersion, IommuMapEntry, Module,
    PciHost, PciWindow, Platform, Psci, PsciMethod, PsciVersion, Reservation, ReservationSource,
    Smmu,
};

/// Maximum node nesting depth accepted (the root is depth 0). Real DTBs stay below 10.
pub const MAX_DEPTH: usize = 32;

/// Why a DTB could not be parsed or edited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DtbError {
    /// The blob is shorter than the FDT header or than the header's `totalsize`.
    Truncated,
    /// The header's magic number is not `0xd00dfeed`.
    BadMagic,
    /// The header's version is not compatible with version 17 (the value is `version`).
    UnsupportedVersion(u32),
    /// The header's offsets and sizes, the memory reservation block or the structure
    /// block are inconsistent; the text says what was wrong.
    Malformed(&'static str),
    /// Nodes nest deeper than [`MAX_DEPTH`].
    TooDeep,
    /// A property Warden interprets has a value it cannot decode (wrong length, bad
    /// string, unsupported cell count, address not translatable); the text names it.
    BadProperty(&'static str),
    /// Allocating memory for the discovered data failed.
    NoMemory,
    /// The output buffer is too small: `needed` bytes are required.
    NoSpace {
        /// Total size the edited DTB needs.
        needed: usize,
    },
    /// A requested edit cannot be expressed in this DTB (for example a carve-out that
    /// does not fit `/reserved-memory`'s cell sizes); the text says which.
    BadEdit(&'static str),
}

impl fmt::Display for DtbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => f.write_str("DTB truncated"),
            Self::BadMagic => f.write_str("not a DTB (bad magic)"),
            Self::UnsupportedVersion(v) => write!(f, "unsupported DTB version {v}"),
            Self::Malformed(what) => write!(f, "malformed DTB: {what}"),
            Self::TooDeep => write!(f, "DTB nodes nest deeper than {MAX_DEPTH}"),
            Self::BadProperty(what) => write!(f, "bad DTB property: {what}"),
            Self::NoMemory => f.write_str("out of memory while parsing the DTB"),
            Self::NoSpace { needed } => {
                write!(f, "DTB output buffer too small ({needed} bytes needed)")
            }
            Self::BadEdit(what) => write!(f, "cannot edit the DTB: {what}"),
        }
    }
}

type Res<T> = Result<T, DtbError>;
