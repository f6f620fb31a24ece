//! Why the boot stopped: [`BootError`], the image crate's one error type. Each variant
//! names the step that failed and keeps the lower layer's error as its cause, so that
//! `warden: boot failed: …` says both (`cannot map RAM at EL2: range already mapped
//! differently`), printed with `Display`.

use core::fmt;
use hyp::dtb::DtbError;
use hyp::el2_s1::S1Error;
use hyp::gic::ProbeError;
use hyp::s2mmu::S2Error;
use hyp::vmid_alloc::VmidError;

/// A boot step that failed, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootError {
    /// The platform or the boot images are not what Warden needs; the text says what
    /// (there is no lower error).
    Platform(&'static str),
    /// Reading or editing the device tree failed.
    Dtb(&'static str, DtbError),
    /// An EL2 stage-1 mapping could not be made.
    Map(&'static str, S1Error),
    /// The host stage-2 could not be built.
    Stage2(&'static str, S2Error),
    /// The VMID allocator refused.
    Vmid(&'static str, VmidError),
    /// The DMA hypercall core could not be set up (its ABI error).
    Core(&'static str, host_abi::Error),
    /// The GICv3 ITS / redistributor takeover failed.
    Gic(&'static str, ProbeError),
}

/// A condition without a lower error (also what `crate::iommu` reports).
impl From<&'static str> for BootError {
    fn from(what: &'static str) -> Self {
        Self::Platform(what)
    }
}

impl fmt::Display for BootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Platform(what) => f.write_str(what),
            Self::Dtb(what, e) => write!(f, "{what}: {e}"),
            Self::Map(what, e) => write!(f, "{what}: {}", s1_cause(*e)),
            Self::Stage2(what, e) => write!(f, "{what}: {e}"),
            Self::Vmid(what, e) => write!(f, "{what}: {e}"),
            Self::Core(what, e) => write!(f, "{what}: {}", e.name()),
            Self::Gic(what, e) => write!(f, "{what}: {}", gic_cause(*e)),
        }
    }
}

/// [`S1Error`] in words (`hyp::el2_s1` has no `Display`).
fn s1_cause(e: S1Error) -> &'static str {
    match e {
        S1Error::OutOfTables => "out of EL2 page-table pages",
        S1Error::BadRange => "range not page-aligned or beyond the 48-bit VA space",
        S1Error::Conflict => "range already mapped differently",
    }
}

/// [`ProbeError`] in words (`hyp::gic` has no `Display`).
fn gic_cause(e: ProbeError) -> &'static str {
    match e {
        ProbeError::NoMem => "no memory for the emulation or an ITS command queue",
        ProbeError::ItsBusy => "an ITS did not become quiescent in time",
    }
}
