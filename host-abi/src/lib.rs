//! Warden's hypercall ABI (v1): function IDs, status codes and flags shared by Warden and
//! its clients. This crate is the single source of truth; `docs/abi.md` and the generated
//! C header (`host-abi/include/warden_abi.h`, written by `cargo xtask abi-header` from
//! [`table::GROUPS`]) describe the same values.
//!
//! Calling convention: SMCCC 1.1 fast calls over `HVC #0` (or a trapped `SMC #0`),
//! function ID in `w0`, arguments in `x1..x6`, status in `x0`, results in `x1..x3`.
//!
//! Every constant is declared through the `abi_consts!` / `abi_errors!` macros, which
//! also record it in [`table::GROUPS`]: the header generator reads that table, so a
//! constant added here reaches the header (and the test that keeps the committed header
//! in sync fails until it is regenerated).

#![no_std]
#![deny(unsafe_code)]

#[macro_use]
mod macros;
pub mod table;

abi_consts! {
    /// Service range and endpoint encoding.
    root ("WARDEN_", Hex) {
        /// Base of Warden's SMC64 fast calls: Vendor Specific Hypervisor Service (OEN 6).
        const VENDOR_HYP_BASE: u32 = 0xC600_0000;
        /// Endpoint (ATTACH x2, EVENT_POLL x1): bit position of the SMMU index (63:32).
        const ENDPOINT_SMMU_SHIFT: u32 = 32;
        /// Endpoint: mask of the StreamID (bits 31:0).
        const ENDPOINT_SID_MASK: u64 = 0xffff_ffff;
    }
}

/// An endpoint (ATTACH x2, EVENT_POLL x1): SMMU index in bits 63:32, StreamID in 31:0.
pub const fn endpoint(smmu: u32, sid: u32) -> u64 {
    ((smmu as u64) << ENDPOINT_SMMU_SHIFT) | sid as u64
}

/// The SMMU index of an endpoint.
pub const fn endpoint_smmu(ep: u64) -> u32 {
    (ep >> ENDPOINT_SMMU_SHIFT) as u32
}

/// The StreamID of an endpoint.
pub const fn endpoint_sid(ep: u64) -> u32 {
    (ep & ENDPOINT_SID_MASK) as u32
}

abi_consts! {
    /// Warden's calls (SMC64 fast calls, `VENDOR_HYP_BASE + n`), as in the ABI v1 table.
    pub mod func ("WARDEN_FN_", Hex) {
        /// FEATURES: x1 feature bits, x2 page sizes, x3 limits.
        const FEATURES: u32 = VENDOR_HYP_BASE;
        /// DOMAIN_ALLOC: x1 flags → x1 domain.
        const DOMAIN_ALLOC: u32 = VENDOR_HYP_BASE + 0x01;
        /// DOMAIN_FREE: x1 domain.
        const DOMAIN_FREE: u32 = VENDOR_HYP_BASE + 0x02;
        /// ATTACH: x1 domain, x2 endpoint.
        const ATTACH: u32 = VENDOR_HYP_BASE + 0x03;
        /// MAP: x1 domain, x2 iova, x3 pa, x4 size, x5 prot → x1 bytes mapped.
        const MAP: u32 = VENDOR_HYP_BASE + 0x04;
        /// UNMAP: x1 domain, x2 iova, x3 size → x1 bytes unmapped.
        const UNMAP: u32 = VENDOR_HYP_BASE + 0x05;
        /// FLUSH: x1 domain.
        const FLUSH: u32 = VENDOR_HYP_BASE + 0x06;
        /// IOVA_TO_PHYS: x1 domain, x2 iova → x1 pa.
        const IOVA_TO_PHYS: u32 = VENDOR_HYP_BASE + 0x07;
        /// EVENT_POLL: → x1 endpoint, x2 address, x3 type and flags; NOENT when none.
        const EVENT_POLL: u32 = VENDOR_HYP_BASE + 0x08;
        /// STATS: x1 counter group → counters.
        const STATS: u32 = VENDOR_HYP_BASE + 0x09;
        /// MEM_DONATE: x1 pa, x2 pages.
        const MEM_DONATE: u32 = VENDOR_HYP_BASE + 0x0A;
        /// MEM_RECLAIM: x1 pages wanted → x1 pa, x2 pages returned.
        const MEM_RECLAIM: u32 = VENDOR_HYP_BASE + 0x0B;
    }
}

abi_consts! {
    /// DOMAIN_ALLOC flags (x1).
    pub mod domain_flags ("WARDEN_DOMAIN_FLAG_", Bits) {
        /// Batched invalidation (0 = strict).
        const BATCHED: u64 = 1 << 0;
        /// The devices attached are not cache coherent: Warden cleans and invalidates the
        /// CPU caches for mapped pages.
        const NON_COHERENT: u64 = 1 << 1;
        /// Bits 15:8: log2 of the granule (0 means 12, i.e. 4 KiB; 14 = 16 KiB; 16 = 64 KiB).
        const GRANULE_SHIFT: u32 = 8;
        /// Mask of the granule field (after shifting).
        const GRANULE_MASK: u64 = 0xff;
        /// Every defined bit; others must be zero.
        const ALL: u64 = BATCHED | NON_COHERENT | (GRANULE_MASK << GRANULE_SHIFT);
    }
    extra {
        /// The granule field for a granule of `1 << log2` bytes (12, 14 or 16; 0 also
        /// means 4 KiB).
        pub const fn granule(log2: u32) -> u64 {
            (log2 as u64 & GRANULE_MASK) << GRANULE_SHIFT
        }
    }
}

abi_consts! {
    /// Well-known domains.
    pub mod domain ("WARDEN_DOMAIN_", Dec) {
        /// The host identity domain: the shared host stage-2.
        const HOST: u64 = 0;
        /// The blocking domain: every DMA aborts.
        const BLOCKED: u64 = 1;
        /// First host-managed domain ID.
        const FIRST_MANAGED: u64 = 2;
    }
}

abi_consts! {
    /// MAP prot (x5).
    pub mod prot ("WARDEN_PROT_", Bits) {
        /// Device may read.
        const READ: u64 = 1 << 0;
        /// Device may write.
        const WRITE: u64 = 1 << 1;
        /// Every defined bit.
        const ALL: u64 = READ | WRITE;
    }
}

abi_consts! {
    /// FEATURES results.
    pub mod features ("WARDEN_FEATURES_", Bits) {
        /// x1: host stage-2 changes use broadcast TLB maintenance (BTM) only.
        const BTM: u64 = 1 << 0;
        /// x1: the SMMUs support range invalidation (RIL).
        const RIL: u64 = 1 << 1;
        /// x1: batched domains are supported.
        const BATCHED: u64 = 1 << 2;
        /// x1: non-coherent domains are supported.
        const NON_COHERENT: u64 = 1 << 3;
        /// x1: host-managed domains are invalidated with CPU TLBIs by VMID (BTM).
        const DOMAIN_CPU_TLBI: u64 = 1 << 4;
        /// x2: 4 KiB granule domains are supported (bit n set: granule of 2^n bytes).
        const GRANULE_4K: u64 = 1 << 12;
        /// x2: 16 KiB granule domains are supported.
        const GRANULE_16K: u64 = 1 << 14;
        /// x2: 64 KiB granule domains are supported.
        const GRANULE_64K: u64 = 1 << 16;
        /// x3 bits 15:0: most host-managed domains.
        const LIMIT_DOMAINS_SHIFT: u32 = 0;
        /// Mask of the domains limit (after shifting).
        const LIMIT_DOMAINS_MASK: u64 = 0xffff;
        /// x3 bits 23:16: VMID bits.
        const LIMIT_VMID_BITS_SHIFT: u32 = 16;
        /// Mask of the VMID bits limit (after shifting).
        const LIMIT_VMID_BITS_MASK: u64 = 0xff;
        /// x3 bits 31:24: IOVA (input) bits of host-managed domains.
        const LIMIT_IAS_SHIFT: u32 = 24;
        /// Mask of the IOVA bits limit (after shifting).
        const LIMIT_IAS_MASK: u64 = 0xff;
        /// x3 bits 39:32: output address bits.
        const LIMIT_OAS_SHIFT: u32 = 32;
        /// Mask of the output address bits limit (after shifting).
        const LIMIT_OAS_MASK: u64 = 0xff;
    }
    extra {
        /// One field of FEATURES' x3: `limit(x3, LIMIT_IAS_SHIFT, LIMIT_IAS_MASK)`.
        pub const fn limit(x3: u64, shift: u32, mask: u64) -> u64 {
            (x3 >> shift) & mask
        }
    }
}

abi_consts! {
    /// STATS counter groups (x1); each returns three counters in x1..x3, cumulative since
    /// boot unless marked "now".
    pub mod stats ("WARDEN_STATS_", Dec) {
        /// (hypercalls, SMMU CMD_SYNCs, CPU TLBI operations).
        const CALLS_SYNCS_TLBIS: u64 = 0;
        /// (SMMU TLBI_S2_IPA commands, TLBI_S12_VMALL commands, CFGI_STE commands).
        const SMMU_COMMANDS: u64 = 1;
        /// (pages pinned now, batched pages pending invalidation now, pages donated now).
        const PAGES: u64 = 2;
        /// (MAP calls, UNMAP calls, FLUSH calls).
        const DMA_CALLS: u64 = 3;
        /// (level-1 blocks, level-2 blocks, level-3 pages) written by MAP into domain tables.
        const LEAVES_WRITTEN: u64 = 4;
    }
}

abi_consts! {
    /// EVENT_POLL's x3: event type in bits 7:0, flags above.
    pub mod event ("WARDEN_EVENT_", Bits) {
        /// Mask of the event type: an SMMUv3 event number (`event_type`, C
        /// `WARDEN_EVENT_TYPE_*`).
        const TYPE_MASK: u64 = 0xff;
        /// The access was a read (else a write).
        const FLAG_READ: u64 = 1 << 8;
        /// The fault was at stage 2.
        const FLAG_STAGE2: u64 = 1 << 9;
        /// Events were lost before this one (ring overflow).
        const FLAG_LOST: u64 = 1 << 10;
    }
}

abi_consts! {
    /// EVENT_POLL event types (x3 bits 7:0): the SMMUv3 architecture's event numbers.
    /// Other architected numbers may appear too.
    pub mod event_type ("WARDEN_EVENT_TYPE_", Hex) {
        /// C_BAD_STREAMID: StreamID beyond the stream table.
        const C_BAD_STREAMID: u64 = 0x02;
        /// C_BAD_STE: invalid or illegal STE (a StreamID Warden does not know of).
        const C_BAD_STE: u64 = 0x04;
        /// F_WALK_EABT: external abort during a table walk.
        const F_WALK_EABT: u64 = 0x0b;
        /// F_TRANSLATION: no valid translation (unmapped IOVA, blocking domain).
        const F_TRANSLATION: u64 = 0x10;
        /// F_ADDR_SIZE: address beyond the domain's input or output range.
        const F_ADDR_SIZE: u64 = 0x11;
        /// F_ACCESS: access flag fault.
        const F_ACCESS: u64 = 0x12;
        /// F_PERMISSION: the mapping forbids the access (prot).
        const F_PERMISSION: u64 = 0x13;
    }
}

abi_consts! {
    /// MEM_DONATE / MEM_RECLAIM units and limits.
    pub mod mem ("WARDEN_MEM_", Dec) {
        /// Size of the pages MEM_DONATE and MEM_RECLAIM count (always 4 KiB).
        const PAGE_SIZE: u64 = 4096;
        /// Most pages one MEM_DONATE or MEM_RECLAIM call handles (1 GiB).
        const MAX_PAGES: u64 = 1 << 18;
    }
}

/// Bytes per page: the unit of memory ownership, pins and MEM_DONATE / MEM_RECLAIM (always
/// 4 KiB, whatever granule a domain uses). The same value as [`mem::PAGE_SIZE`].
pub const PAGE: u64 = mem::PAGE_SIZE;

abi_consts! {
    /// Standard SMCCC discovery calls Warden answers itself.
    pub mod smccc ("WARDEN_SMCCC_", Hex) {
        /// `SMCCC_VERSION`: returns 0x1_0001 for SMCCC 1.1.
        const VERSION: u32 = 0x8000_0000;
        /// `SMCCC_ARCH_FEATURES`: x1 = function ID queried.
        const ARCH_FEATURES: u32 = 0x8000_0001;
        /// Vendor hypervisor service `CALL_UID`.
        const VENDOR_HYP_CALL_UID: u32 = 0x8600_FF01;
        /// Vendor hypervisor service `REVISION`.
        const VENDOR_HYP_REVISION: u32 = 0x8600_FF03;
        /// The SMCCC version Warden implements (1.1).
        const VERSION_1_1: u64 = 0x1_0001;
        /// `CALL_UID` result w0 (`"ward"`).
        const UID_0: u32 = 0x7761_7264;
        /// `CALL_UID` result w1 (`"en-h"`).
        const UID_1: u32 = 0x656e_2d68;
        /// `CALL_UID` result w2 (`"yp-v"`).
        const UID_2: u32 = 0x7970_2d76;
        /// `CALL_UID` result w3 (UID version 1).
        const UID_3: u32 = 0x0000_0001;
        /// `REVISION` result x0: the ABI's major revision.
        const REVISION_MAJOR: u32 = 1;
        /// `REVISION` result x1: the ABI's minor revision.
        const REVISION_MINOR: u32 = 0;
    }
    extra {
        /// Warden's vendor hypervisor UID, as `CALL_UID` returns it in w0..w3.
        pub const UID: [u32; 4] = [UID_0, UID_1, UID_2, UID_3];
    }
}

abi_errors! {
    /// Status codes returned in `x0`. Zero is success; errors are negative.
    pub enum Error ("WARDEN_ERR_") {
        /// Unknown function ID or feature.
        NotSupported = -1 => "NOT_SUPPORTED",
        /// Bad argument: alignment, size, flags, overflow.
        Invalid = -2 => "INVALID",
        /// Page not owned by the host, or Warden memory.
        Denied = -3 => "DENIED",
        /// No such domain, endpoint or mapping.
        NoEnt = -4 => "NOENT",
        /// Busy: domain attached, page pinned, endpoint in use.
        Busy = -5 => "BUSY",
        /// Page pool empty: donate memory and retry.
        NoMem = -6 => "NOMEM",
        /// No VMID or domain slot left.
        NoSpc = -7 => "NOSPC",
        /// IOVA already mapped.
        Exist = -8 => "EXIST",
    }
}

#[cfg(test)]
mod tests;
