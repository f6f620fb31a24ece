//! Warden's hypercall ABI (v1): function IDs, status codes and flags shared by Warden and
//! its clients. This crate is the single source of truth; `docs/abi.md` and the generated
//! C header describe the same values.
//!
//! Calling convention: SMCCC 1.1 fast calls over `HVC #0` (or a trapped `SMC #0`),
//! function ID in `w0`, arguments in `x1..x6`, status in `x0`, results in `x1..x3`.

#![no_std]
#![deny(unsafe_code)]

/// Base of Warden's SMC64 fast calls: Vendor Specific Hypervisor Service (OEN 6).
pub const VENDOR_HYP_BASE: u32 = 0xC600_0000;

/// Standard SMCCC discovery calls Warden answers itself.
pub mod smccc {
    /// `SMCCC_VERSION`: returns 0x1_0001 for SMCCC 1.1.
    pub const VERSION: u32 = 0x8000_0000;
    /// `SMCCC_ARCH_FEATURES`: x1 = function ID queried.
    pub const ARCH_FEATURES: u32 = 0x8000_0001;
    /// Vendor hypervisor service `CALL_UID`.
    pub const VENDOR_HYP_CALL_UID: u32 = 0x8600_FF01;
    /// Vendor hypervisor service `REVISION`.
    pub const VENDOR_HYP_REVISION: u32 = 0x8600_FF03;
    /// The SMCCC version Warden implements (1.1).
    pub const VERSION_1_1: u64 = 0x1_0001;
}

/// Status codes returned in `x0`. Zero is success; errors are negative.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i64)]
pub enum Error {
    /// Unknown function ID or feature.
    NotSupported = -1,
    /// Bad argument: alignment, size, flags, overflow.
    Invalid = -2,
    /// Page not owned by the host, or Warden memory.
    Denied = -3,
    /// No such domain, endpoint or mapping.
    NoEnt = -4,
    /// Busy: domain attached, page pinned, endpoint in use.
    Busy = -5,
    /// Page pool empty: donate memory and retry.
    NoMem = -6,
    /// No VMID or domain slot left.
    NoSpc = -7,
    /// IOVA already mapped.
    Exist = -8,
}

impl Error {
    /// The value placed in `x0`.
    pub const fn to_reg(self) -> u64 {
        self as i64 as u64
    }
}
