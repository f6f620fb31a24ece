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

/// DOMAIN_ALLOC flags (x1).
pub mod domain_flags {
    /// Batched invalidation (0 = strict).
    pub const BATCHED: u64 = 1 << 0;
    /// The devices attached are not cache coherent: Warden cleans and invalidates the
    /// CPU caches for mapped pages.
    pub const NON_COHERENT: u64 = 1 << 1;
    /// Bits 15:8: log2 of the granule (0 means 12, i.e. 4 KiB; 14 = 16 KiB; 16 = 64 KiB).
    pub const GRANULE_SHIFT: u32 = 8;
    /// Mask of the granule field (after shifting).
    pub const GRANULE_MASK: u64 = 0xff;
    /// Every defined bit; others must be zero.
    pub const ALL: u64 = BATCHED | NON_COHERENT | (GRANULE_MASK << GRANULE_SHIFT);
}

/// Well-known domains.
pub mod domain {
    /// The host identity domain: the shared host stage-2.
    pub const HOST: u64 = 0;
    /// The blocking domain: every DMA aborts.
    pub const BLOCKED: u64 = 1;
    /// First host-managed domain ID.
    pub const FIRST_MANAGED: u64 = 2;
}

/// MAP prot (x5).
pub mod prot {
    /// Device may read.
    pub const READ: u64 = 1 << 0;
    /// Device may write.
    pub const WRITE: u64 = 1 << 1;
    /// Every defined bit.
    pub const ALL: u64 = READ | WRITE;
}

/// An endpoint (ATTACH x2, EVENT_POLL x1): SMMU index in bits 63:32, StreamID in 31:0.
pub const fn endpoint(smmu: u32, sid: u32) -> u64 {
    ((smmu as u64) << 32) | sid as u64
}

/// FEATURES results.
pub mod features {
    /// x1: host stage-2 changes use broadcast TLB maintenance (BTM) only.
    pub const BTM: u64 = 1 << 0;
    /// x1: the SMMUs support range invalidation (RIL).
    pub const RIL: u64 = 1 << 1;
    /// x1: batched domains are supported.
    pub const BATCHED: u64 = 1 << 2;
    /// x1: non-coherent domains are supported.
    pub const NON_COHERENT: u64 = 1 << 3;
    /// x1: host-managed domains are invalidated with CPU TLBIs by VMID (BTM).
    pub const DOMAIN_CPU_TLBI: u64 = 1 << 4;
    /// x3 bits 15:0: most host-managed domains.
    pub const LIMIT_DOMAINS_SHIFT: u32 = 0;
    /// x3 bits 23:16: VMID bits.
    pub const LIMIT_VMID_BITS_SHIFT: u32 = 16;
    /// x3 bits 31:24: IOVA (input) bits of host-managed domains.
    pub const LIMIT_IAS_SHIFT: u32 = 24;
    /// x3 bits 39:32: output address bits.
    pub const LIMIT_OAS_SHIFT: u32 = 32;
}

/// STATS counter groups (x1); each returns three counters in x1..x3, cumulative since
/// boot.
pub mod stats {
    /// (hypercalls, SMMU CMD_SYNCs, CPU TLBI operations).
    pub const CALLS_SYNCS_TLBIS: u64 = 0;
    /// (SMMU TLBI_S2_IPA commands, TLBI_S12_VMALL commands, CFGI_STE commands).
    pub const SMMU_COMMANDS: u64 = 1;
    /// (pages pinned now, batched pages pending invalidation now, pages donated now).
    pub const PAGES: u64 = 2;
    /// (MAP calls, UNMAP calls, FLUSH calls).
    pub const DMA_CALLS: u64 = 3;
    /// (level-1 blocks, level-2 blocks, level-3 pages) written by MAP into domain tables.
    pub const LEAVES_WRITTEN: u64 = 4;
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
