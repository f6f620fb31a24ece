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

/// Warden's calls (SMC64 fast calls, `VENDOR_HYP_BASE + n`), as in the ABI v1 table.
pub mod func {
    use super::VENDOR_HYP_BASE;
    /// FEATURES: x1 feature bits, x2 page sizes, x3 limits.
    pub const FEATURES: u32 = VENDOR_HYP_BASE;
    /// DOMAIN_ALLOC: x1 flags → x1 domain.
    pub const DOMAIN_ALLOC: u32 = VENDOR_HYP_BASE + 0x01;
    /// DOMAIN_FREE: x1 domain.
    pub const DOMAIN_FREE: u32 = VENDOR_HYP_BASE + 0x02;
    /// ATTACH: x1 domain, x2 endpoint.
    pub const ATTACH: u32 = VENDOR_HYP_BASE + 0x03;
    /// MAP: x1 domain, x2 iova, x3 pa, x4 size, x5 prot → x1 bytes mapped.
    pub const MAP: u32 = VENDOR_HYP_BASE + 0x04;
    /// UNMAP: x1 domain, x2 iova, x3 size → x1 bytes unmapped.
    pub const UNMAP: u32 = VENDOR_HYP_BASE + 0x05;
    /// FLUSH: x1 domain.
    pub const FLUSH: u32 = VENDOR_HYP_BASE + 0x06;
    /// IOVA_TO_PHYS: x1 domain, x2 iova → x1 pa.
    pub const IOVA_TO_PHYS: u32 = VENDOR_HYP_BASE + 0x07;
    /// EVENT_POLL: → x1 endpoint, x2 address, x3 type and flags; NOENT when none.
    pub const EVENT_POLL: u32 = VENDOR_HYP_BASE + 0x08;
    /// STATS: x1 counter group → counters.
    pub const STATS: u32 = VENDOR_HYP_BASE + 0x09;
    /// MEM_DONATE: x1 pa, x2 pages.
    pub const MEM_DONATE: u32 = VENDOR_HYP_BASE + 0x0A;
    /// MEM_RECLAIM: x1 pages wanted → x1 pa, x2 pages returned.
    pub const MEM_RECLAIM: u32 = VENDOR_HYP_BASE + 0x0B;
}

/// EVENT_POLL's x3: event type in bits 7:0, flags above.
pub mod event {
    /// The access was a read (else a write).
    pub const FLAG_READ: u64 = 1 << 8;
    /// The fault was at stage 2.
    pub const FLAG_STAGE2: u64 = 1 << 9;
    /// Events were lost before this one (ring overflow).
    pub const FLAG_LOST: u64 = 1 << 10;
}

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
