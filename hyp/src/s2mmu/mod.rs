//! Stage-2 translation tables (VMSAv8-64), shared by the CPU (`VTTBR_EL2`) and the SMMU
//! (`STE.S2TTB`): geometry, descriptors, map / unmap / translate, a generic walker, and
//! break-before-make.
//!
//! # Pieces
//!
//! - [`S2Geometry`]: granule, IPA and PA size, chosen once per table. It picks the start
//!   level and the number of concatenated start tables and derives `VTCR_EL2` (and the
//!   raw fields an SMMU STE needs: `S2T0SZ`, `S2SL0`, `S2TG`, `S2PS`).
//! - [`TableMemory`]: where table memory comes from and how the hypervisor reaches it.
//!   The code never assumes VA == PA; under `cargo test` a RAM arena poses as memory.
//! - [`S2Tlb`]: TLB maintenance (and the write barrier) for changes to live tables: the
//!   hardware side, with no policy. The VMID is the implementation's business. The walker
//!   does not call it directly: it records into a [`Gather`] (module [`crate::inval`]),
//!   which owns the pending ranges, the tables waiting for their invalidation and the
//!   failure flag, and decides when to issue and free.
//! - [`Stage2`]: one table tree: [`map`](Stage2::map), [`unmap`](Stage2::unmap) (and
//!   their `_gathered` forms that record into the caller's gather),
//!   [`map_new`](Stage2::map_new) (add-only, for a table the caller runs on),
//!   [`translate`](Stage2::translate), [`walk`](Stage2::walk), [`destroy`](Stage2::destroy).
//! - [`Regime`]: the leaf encoding of a translation regime. [`Stage2Regime`] is the
//!   default; Warden's EL2 stage-1 map ([`crate::el2_s1`]) is the second regime of the
//!   same walker.
//!
//! # Break-before-make
//!
//! Every descriptor change goes through one helper (`Updater::set`). A change of a
//! descriptor that a walker can see (a table reachable from the root) follows the Arm ARM
//! rules:
//!
//! - invalid → valid: write, then (end of the operation) [`S2Tlb::sync`];
//! - valid → invalid, table ↔ block, or a change of output address, memory type or
//!   shareability: write invalid, [`S2Tlb::sync`], [`S2Tlb::invalidate_ipa_range`] over the
//!   whole entry (`last_level_only` unless the old entry was a table), then write the new
//!   descriptor; a table that left the tree is freed only after that invalidation;
//! - only permissions (S2AP, XN) change: write, sync, invalidate (no break needed);
//! - only software bits change: write (the walker ignores them, nothing to invalidate).
//!
//! New tables (a fresh table under an invalid entry, or the table that replaces a block
//! being split) are filled *before* they are linked, while no walker can see them: a
//! split table gets the block's equivalent smaller entries and then the requested change,
//! and replaces the block in one break-before-make step. The hardware never sees a
//! half-built table.
//!
//! # Descriptor layout (stage 2, 48-bit OA, `HCR_EL2.FWB = 0`)
//!
//! Declared field by field in `desc.rs` (`bitfield-struct`); the masks below come from it.
//!
//! | bits  | block (L1/L2) / page (L3)                        | table (L0–L2)             |
//! |-------|--------------------------------------------------|---------------------------|
//! | 0     | valid = 1                                        | valid = 1                 |
//! | 1     | 0 = block (L1/L2), 1 = page (L3)                 | 1                         |
//! | 5:2   | MemAttr: 0b1111 Normal WB, 0b0001 Device-nGnRE   | ignored: count bits 10:7  |
//! | 6     | `S2AP[0]`: read allowed                          | ignored: count bit 11     |
//! | 7     | `S2AP[1]`: write allowed                         | ignored: count bit 12     |
//! | 9:8   | SH: 0b11 inner shareable (Normal), 0b00 (Device) | 8: count bit 13; 9: (0)   |
//! | 10    | AF: always 1 (no access-flag faults)             | ignored (0; `FEAT_HAFT`)  |
//! | 47:n  | output address (n = block or page shift)         | next table (47:granule)   |
//! | 51    | DBM: 0                                           | RES0 (0)                  |
//! | 52    | Contiguous: 0                                    | ignored: count bit 0      |
//! | 53    | `XN[0]` (FEAT_XNX): 0                            | ignored: count bit 1      |
//! | 54    | `XN[1]`: execute never (EL1, EL0)                | ignored: count bit 2      |
//! | 58:55 | software: reserved for Warden's ownership states | ignored: count bits 6:3   |
//! | 63:59 | ignored / PBHA: 0                                | RES0 (0)                  |
//!
//! A table descriptor's "count" is the number of valid entries in the table it points to
//! (0..=8192), in bits every walker ignores there; it makes "did this unmap empty the
//! table?" O(1). [`Stage2::walk`] shows table descriptors without it.
//!
//! Leaves per granule (no 52-bit / LPA2): 4 KiB: L1 1 GiB blocks, L2 2 MiB blocks, L3
//! pages; 16 KiB: L2 32 MiB blocks, L3 pages; 64 KiB: L2 512 MiB blocks, L3 pages.
//!
//! # Mapping semantics
//!
//! [`Stage2::map`] *sets* the translation of a range, whatever was there before (no
//! "already mapped" error): the ownership layer above decides what may be mapped. Mapping
//! a range that already translates exactly as asked changes nothing (no split, no TLB
//! maintenance), so remapping is idempotent. Every step uses the largest leaf that the
//! alignment of both IPA and PA and the remaining size allow. Tables emptied by
//! [`Stage2::unmap`] are freed; blocks are not coalesced back from tables except when a
//! whole aligned block is mapped over a table.

use core::fmt;
use core::marker::PhantomData;
use core::ops::ControlFlow;

use crate::addr::{Ipa, PhysAddr};
use crate::inval::{Gather, InvRange};

mod desc;

use desc::{
    AF, CONTIGUOUS, DESC_TABLE_OR_PAGE, DESC_VALID, MEMATTR_DEVICE_NGNRE, MEMATTR_MASK,
    MEMATTR_NORMAL_WB, OA_MASK, S2AP_READ, S2AP_WRITE, SH_INNER, SH_MASK, SW_MASK, SW_SHIFT, XN,
    XN_MASK,
};

/// Attribute bits of a leaf that [`S2Attrs`] carries.
const ATTR_MASK: u64 = MEMATTR_MASK | S2AP_READ | S2AP_WRITE | SH_MASK | AF | XN_MASK | SW_MASK;
/// Leaf fields whose change needs break-before-make.
const BREAK_MASK: u64 =
    DESC_VALID | DESC_TABLE_OR_PAGE | MEMATTR_MASK | SH_MASK | OA_MASK | CONTIGUOUS;
/// Leaf fields the walker uses for permission checks: a change needs TLB invalidation but
/// no break.
const PERM_MASK: u64 = S2AP_READ | S2AP_WRITE | AF | XN_MASK;

/// Table descriptors keep the count of valid entries of the table they point to in bits
/// that every walker ignores in a table descriptor (Arm ARM, VMSAv8-64 table descriptor,
/// 48-bit OA, no FEAT_LPA2: bits 11:2 and 58:52 are IGNORED, in stage 1 and stage 2 alike,
/// for the CPU and the SMMU; bits 51:48 are RES0 — a set bit there would be an output
/// address bit, an Address size fault — and bits 63:59 are RES0 in stage 2): the low 7
/// bits of the count in bits 58:52, the high 7 in bits 8:2 (bit 10 stays clear: FEAT_HAFT
/// makes it the table's Access flag when enabled). So finding out whether an unmap
/// emptied a table is O(1), without a side table. Changing these bits of a live table
/// descriptor needs no break-before-make and no TLB maintenance (nothing a walker uses
/// changes).
const TABLE_COUNT_LO_SHIFT: u32 = 52;
const TABLE_COUNT_LO_BITS: u32 = 7;
const TABLE_COUNT_LO: u64 = 0x7f << TABLE_COUNT_LO_SHIFT;
const TABLE_COUNT_HI_SHIFT: u32 = 2;
const TABLE_COUNT_HI: u64 = 0x7f << TABLE_COUNT_HI_SHIFT;
/// Every bit of a table descriptor's count of valid entries.
const TABLE_COUNT_MASK: u64 = TABLE_COUNT_LO | TABLE_COUNT_HI;
// The count never touches the table address, the RES0 bits 51:48 and 63:59, or bits 11:9
// (bit 10: FEAT_HAFT's table Access flag), and holds a 64 KiB table's 8192 entries.
const _: () =
    assert!(TABLE_COUNT_MASK & (OA_MASK | (0xf << 48) | (0x1f << 59) | (0b111 << 9)) == 0);
const _: () = assert!(TABLE_COUNT_MASK.count_ones() >= 14);

/// Deepest level.
const LAST_LEVEL: u8 = 3;
/// Largest supported IPA and PA size (no 52-bit / LPA2).
const MAX_ADDR_BITS: u32 = 48;

/// Errors of the stage-2 table code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum S2Error {
    /// IPA size not supported for this granule and PA size: outside 25..=48 bits
    /// (`VTCR_EL2.T0SZ` 16..=39), or larger than the PA size.
    InvalidIpaBits,
    /// PA size not one that `VTCR_EL2.PS` encodes without FEAT_LPA: 32, 36, 40, 42, 44 or
    /// 48 bits.
    InvalidPaBits,
    /// An IPA, PA or size is not a multiple of the granule.
    Misaligned,
    /// The range wraps around, ends beyond the IPA size, or its output ends beyond the PA
    /// size.
    OutOfRange,
    /// Table memory ran out. The first `done` bytes of the requested range were processed
    /// (mapped or unmapped) as asked; the rest of the range is unchanged and the tables
    /// are consistent (no half-built or leaked table). `done` is a multiple of the
    /// granule; 0 from [`Stage2::new`].
    OutOfMemory {
        /// Bytes done from the start of the range.
        done: u64,
    },
}

impl fmt::Display for S2Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            S2Error::InvalidIpaBits => f.write_str("unsupported IPA size"),
            S2Error::InvalidPaBits => f.write_str("unsupported PA size"),
            S2Error::Misaligned => f.write_str("address or size not granule-aligned"),
            S2Error::OutOfRange => f.write_str("range outside the IPA or PA space"),
            S2Error::OutOfMemory { done } => {
                write!(f, "out of table memory after {done:#x} bytes")
            }
        }
    }
}

impl core::error::Error for S2Error {}

/// Translation granule. The discriminant is the log2 of the page size, so that
/// [`shift`](Self::shift), which the walker needs at every level, is free.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Granule {
    /// 4 KiB pages; blocks of 1 GiB (L1) and 2 MiB (L2).
    Size4K = 12,
    /// 16 KiB pages; blocks of 32 MiB (L2).
    Size16K = 14,
    /// 64 KiB pages; blocks of 512 MiB (L2).
    Size64K = 16,
}

impl Granule {
    /// log2 of the page size.
    pub const fn shift(self) -> u32 {
        self as u32
    }

    /// Page size in bytes.
    pub const fn size(self) -> u64 {
        1 << self.shift()
    }

    /// `VTCR_EL2.TG0` / `STE.S2TG` encoding.
    pub const fn tg(self) -> u64 {
        match self {
            Granule::Size4K => 0b00,
            Granule::Size16K => 0b10,
            Granule::Size64K => 0b01,
        }
    }

    /// Address bits resolved per level.
    const fn stride(self) -> u32 {
        self.shift() - 3
    }

    /// Shallowest start level for IPAs of at most 48 bits.
    const fn min_start_level(self) -> u8 {
        match self {
            Granule::Size4K => 0,
            Granule::Size16K | Granule::Size64K => 1,
        }
    }

    /// Deepest start level without FEAT_TTST.
    const fn max_start_level(self) -> u8 {
        match self {
            Granule::Size4K => 2,
            Granule::Size16K | Granule::Size64K => 3,
        }
    }

    /// Whether a block or page descriptor is allowed at `level` (48-bit OA).
    const fn leaf_allowed(self, level: u8) -> bool {
        match self {
            Granule::Size4K => level >= 1 && level <= LAST_LEVEL,
            Granule::Size16K | Granule::Size64K => level == 2 || level == LAST_LEVEL,
        }
    }

    /// log2 of the span of one entry at `level`.
    const fn level_shift(self, level: u8) -> u32 {
        self.shift() + self.stride() * (LAST_LEVEL - level) as u32
    }
}

/// `VTCR_EL2.PS` / `STE.S2PS` encoding of a PA size.
const fn ps_encoding(pa_bits: u32) -> Option<u64> {
    match pa_bits {
        32 => Some(0b000),
        36 => Some(0b001),
        40 => Some(0b010),
        42 => Some(0b011),
        44 => Some(0b100),
        48 => Some(0b101),
        _ => None,
    }
}

/// The shape of a stage-2 table tree, fixed when it is created.
///
/// The start level is the deepest one from which at most 16 concatenated tables resolve
/// the whole IPA (fewest levels), as Arm ARM `AArch64.S2InconsistentSL` allows: the start
/// level `l` must resolve between 1 and `stride + 4` bits. For example with 4 KiB pages:
/// 25..=34-bit IPAs start at L2 (1 to 16 tables), 35..=43 at L1 (1 to 16 tables, so
/// 40 bits gives 2), 44..=48 at L0 (one table; 44 bits would need 32 L1 tables). 16 KiB:
/// 25..=29 L3, 30..=40 L2, 41..=48 L1 (48 bits: 2 tables). 64 KiB: 25..=33 L3, 34..=46 L2,
/// 47..=48 L1.
///
/// The IPA size may not exceed the PA size. This keeps every start level within what
/// `AArch64.S2InvalidSL` allows for the implemented PA size (which `pa_bits` must not
/// exceed: pass at most `ID_AA64MMFR0_EL1.PARange`, or the SMMU's OAS), and matches
/// the SMMU, whose stage-2 input size is bounded by its output size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct S2Geometry {
    granule: Granule,
    ipa_bits: u32,
    pa_bits: u32,
    start_level: u8,
    root_tables: u32,
}

impl S2Geometry {
    /// Smallest IPA size (`T0SZ` = 39; smaller needs FEAT_TTST).
    pub const MIN_IPA_BITS: u32 = 25;
    /// Largest IPA size (`T0SZ` = 16; larger needs 52-bit support).
    pub const MAX_IPA_BITS: u32 = MAX_ADDR_BITS;

    /// Chooses start level and concatenation for `granule`, an IPA of `ipa_bits` and
    /// output addresses of `pa_bits` (`VTCR_EL2.PS`).
    pub fn new(granule: Granule, ipa_bits: u32, pa_bits: u32) -> Result<Self, S2Error> {
        if ps_encoding(pa_bits).is_none() {
            return Err(S2Error::InvalidPaBits);
        }
        if !(Self::MIN_IPA_BITS..=Self::MAX_IPA_BITS).contains(&ipa_bits) || ipa_bits > pa_bits {
            return Err(S2Error::InvalidIpaBits);
        }
        let stride = granule.stride();
        let mut level = granule.max_start_level();
        loop {
            // Bits resolved by the start level; at least 1 because ipa_bits >= 25 exceeds
            // the shift of the deepest start level and we only go up when it is too many.
            let bits = ipa_bits - granule.level_shift(level);
            if bits <= stride + 4 {
                return Ok(Self {
                    granule,
                    ipa_bits,
                    pa_bits,
                    start_level: level,
                    root_tables: 1 << bits.saturating_sub(stride),
                });
            }
            if level == granule.min_start_level() {
                return Err(S2Error::InvalidIpaBits);
            }
            level -= 1;
        }
    }

    /// The translation granule.
    pub const fn granule(&self) -> Granule {
        self.granule
    }

    /// IPA size in bits.
    pub const fn ipa_bits(&self) -> u32 {
        self.ipa_bits
    }

    /// PA (output) size in bits.
    pub const fn pa_bits(&self) -> u32 {
        self.pa_bits
    }

    /// Bytes of IPA space: `1 << ipa_bits`.
    pub const fn ipa_size(&self) -> u64 {
        1 << self.ipa_bits
    }

    /// Level of the root (start) tables.
    pub const fn start_level(&self) -> u8 {
        self.start_level
    }

    /// Number of concatenated start tables (1..=16).
    pub const fn root_tables(&self) -> usize {
        self.root_tables as usize
    }

    /// Size in bytes of the root: `root_tables` granule-sized tables.
    pub const fn root_size(&self) -> usize {
        self.root_tables as usize * self.granule.size() as usize
    }

    /// Required alignment of the root: concatenated tables are aligned to their total size.
    pub const fn root_align(&self) -> usize {
        self.root_size()
    }

    /// Bytes covered by one entry of a table at `level`.
    pub const fn entry_size(&self, level: u8) -> u64 {
        1 << self.granule.level_shift(level)
    }

    /// Bytes mapped by a leaf (block or page) at `level`, or `None` where leaves are not
    /// allowed (above the start level, L0 with 4 KiB, L1 with 16/64 KiB).
    pub const fn leaf_size(&self, level: u8) -> Option<u64> {
        if level >= self.start_level && self.granule.leaf_allowed(level) {
            Some(self.entry_size(level))
        } else {
            None
        }
    }

    /// `VTCR_EL2.T0SZ` / `STE.S2T0SZ`: `64 - ipa_bits`.
    pub const fn t0sz(&self) -> u64 {
        64 - self.ipa_bits as u64
    }

    /// `VTCR_EL2.SL0` / `STE.S2SL0` for the start level.
    pub const fn sl0(&self) -> u64 {
        match self.granule {
            Granule::Size4K => 2 - self.start_level as u64,
            Granule::Size16K | Granule::Size64K => 3 - self.start_level as u64,
        }
    }

    /// `VTCR_EL2.TG0` / `STE.S2TG`.
    pub const fn tg(&self) -> u64 {
        self.granule.tg()
    }

    /// `VTCR_EL2.PS` / `STE.S2PS`.
    pub const fn ps(&self) -> u64 {
        match ps_encoding(self.pa_bits) {
            Some(ps) => ps,
            // `new` accepted only encodable sizes.
            None => 0,
        }
    }

    /// `VTCR_EL2`: T0SZ, SL0, IRGN0 = ORGN0 = write-back write-allocate, SH0 = inner
    /// shareable, TG0, PS, and RES1 bit 31. VS (16-bit VMID), HA/HD and the rest stay 0:
    /// the caller ORs in what it needs. The SMMU STE uses the same walk attributes
    /// (`S2IR0`, `S2OR0`, `S2SH0`) with the same encodings.
    pub const fn vtcr_el2(&self) -> u64 {
        const IRGN0_WBWA: u64 = 0b01 << 8;
        const ORGN0_WBWA: u64 = 0b01 << 10;
        const SH0_INNER: u64 = 0b11 << 12;
        const RES1: u64 = 1 << 31;
        self.t0sz()
            | (self.sl0() << 6)
            | IRGN0_WBWA
            | ORGN0_WBWA
            | SH0_INNER
            | (self.tg() << 14)
            | (self.ps() << 16)
            | RES1
    }

    /// Number of descriptors in a table at `level` (the root may be concatenated).
    const fn entries(&self, level: u8) -> usize {
        let per_table = 1usize << self.granule.stride();
        if level == self.start_level {
            per_table * self.root_tables as usize
        } else {
            per_table
        }
    }

    /// Bytes of a table at `level`.
    const fn table_size(&self, level: u8) -> usize {
        if level == self.start_level {
            self.root_size()
        } else {
            self.granule.size() as usize
        }
    }
}

/// Memory type of a mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MemType {
    /// Normal, inner and outer write-back cacheable, inner shareable (MemAttr 0b1111).
    Normal,
    /// Device-nGnRE (MemAttr 0b0001).
    Device,
}

/// Attributes of a stage-2 leaf: memory type, S2AP, XN, software bits. AF is always set.
/// The value holds exactly the descriptor bits (see the module table), so it can only be
/// built through the constructors below and always has a valid MemAttr.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct S2Attrs(u64);

impl S2Attrs {
    /// Normal memory, read, write and execute.
    pub const NORMAL_RWX: Self = Self::normal().with_access(true, true).with_exec(true);
    /// Normal memory, read and write, never executable.
    pub const NORMAL_RW: Self = Self::normal().with_access(true, true);
    /// Device-nGnRE, read and write, never executable.
    pub const DEVICE_RW: Self = Self::device().with_access(true, true);

    /// Normal write-back inner-shareable memory, no access, not executable.
    pub const fn normal() -> Self {
        Self(MEMATTR_NORMAL_WB | SH_INNER | AF | XN)
    }

    /// Device-nGnRE memory, no access, not executable.
    pub const fn device() -> Self {
        Self(MEMATTR_DEVICE_NGNRE | AF | XN)
    }

    /// With S2AP set to allow reads and/or writes.
    pub const fn with_access(self, read: bool, write: bool) -> Self {
        let mut bits = self.0 & !(S2AP_READ | S2AP_WRITE);
        if read {
            bits |= S2AP_READ;
        }
        if write {
            bits |= S2AP_WRITE;
        }
        Self(bits)
    }

    /// With execution allowed (XN clear) or forbidden (XN set).
    pub const fn with_exec(self, exec: bool) -> Self {
        let bits = self.0 & !XN_MASK;
        Self(if exec { bits } else { bits | XN })
    }

    /// With the 4 software bits (descriptor bits 55..=58) set to `sw & 0xf`.
    pub const fn with_sw(self, sw: u8) -> Self {
        Self((self.0 & !SW_MASK) | (((sw & 0xf) as u64) << SW_SHIFT))
    }

    /// The memory type.
    pub const fn mem_type(self) -> MemType {
        if self.0 & MEMATTR_MASK == MEMATTR_DEVICE_NGNRE {
            MemType::Device
        } else {
            MemType::Normal
        }
    }

    /// Whether reads are allowed.
    pub const fn readable(self) -> bool {
        self.0 & S2AP_READ != 0
    }

    /// Whether writes are allowed.
    pub const fn writable(self) -> bool {
        self.0 & S2AP_WRITE != 0
    }

    /// Whether instruction fetches are allowed.
    pub const fn executable(self) -> bool {
        self.0 & XN_MASK == 0
    }

    /// The software bits (0..=15).
    pub const fn sw(self) -> u8 {
        ((self.0 & SW_MASK) >> SW_SHIFT) as u8
    }

    /// The descriptor bits.
    pub const fn bits(self) -> u64 {
        self.0
    }
}

impl fmt::Debug for S2Attrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "S2Attrs({:?} {}{}{} sw={:#x})",
            self.mem_type(),
            if self.readable() { 'r' } else { '-' },
            if self.writable() { 'w' } else { '-' },
            if self.executable() { 'x' } else { '-' },
            self.sw()
        )
    }
}

/// A raw stage-2 descriptor. What it is depends on the level it sits at.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(transparent)]
pub struct Descriptor(u64);

impl Descriptor {
    /// The invalid descriptor (all zero).
    pub const INVALID: Self = Self(0);

    /// A descriptor from its raw bits.
    pub const fn from_bits(bits: u64) -> Self {
        Self(bits)
    }

    /// The raw bits.
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// Whether bit 0 (valid) is set.
    pub const fn is_valid(self) -> bool {
        self.0 & DESC_VALID != 0
    }

    /// Whether this is a table descriptor at `level` (valid, bit 1 set, above L3).
    pub const fn is_table(self, level: u8) -> bool {
        self.is_valid() && level < LAST_LEVEL && self.0 & DESC_TABLE_OR_PAGE != 0
    }

    /// Whether this is a leaf at `level`: a block above L3, a page at L3.
    pub const fn is_leaf(self, level: u8) -> bool {
        self.is_valid() && ((self.0 & DESC_TABLE_OR_PAGE != 0) == (level == LAST_LEVEL))
    }

    /// Output address of a leaf, or the next-level table of a table descriptor
    /// (bits 47:12; Warden never sets bits below the block or granule size).
    pub const fn address(self) -> PhysAddr {
        PhysAddr(self.0 & OA_MASK)
    }

    /// Leaf attributes.
    pub const fn attrs(self) -> S2Attrs {
        S2Attrs(self.0 & ATTR_MASK)
    }

    /// A block (level < 3) or page (level 3) descriptor with attribute bits `attrs`.
    const fn leaf_bits(pa: u64, attrs: u64, level: u8) -> Self {
        let kind = if level == LAST_LEVEL {
            DESC_TABLE_OR_PAGE
        } else {
            0
        };
        Self((pa & OA_MASK) | attrs | kind | DESC_VALID)
    }

    /// A table descriptor pointing at `table`.
    const fn table(table: PhysAddr) -> Self {
        Self((table.0 & OA_MASK) | DESC_TABLE_OR_PAGE | DESC_VALID)
    }

    /// The count of valid entries in the table this table descriptor points to (kept in
    /// bits the walkers ignore, see [`TABLE_COUNT_MASK`]).
    const fn table_count(self) -> usize {
        (((self.0 & TABLE_COUNT_LO) >> TABLE_COUNT_LO_SHIFT)
            | (((self.0 & TABLE_COUNT_HI) >> TABLE_COUNT_HI_SHIFT) << TABLE_COUNT_LO_BITS))
            as usize
    }

    /// This table descriptor with its count of valid entries set to `n` (at most 8192, the
    /// entries of a 64 KiB-granule table).
    const fn with_table_count(self, n: usize) -> Self {
        let n = n as u64;
        Self(
            (self.0 & !TABLE_COUNT_MASK)
                | ((n << TABLE_COUNT_LO_SHIFT) & TABLE_COUNT_LO)
                | (((n >> TABLE_COUNT_LO_BITS) << TABLE_COUNT_HI_SHIFT) & TABLE_COUNT_HI),
        )
    }

    /// The descriptor as the module's users see it: a table descriptor without its count.
    const fn public(self, level: u8) -> Self {
        if self.is_table(level) {
            Self(self.0 & !TABLE_COUNT_MASK)
        } else {
            self
        }
    }
}

impl fmt::Debug for Descriptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Descriptor({:#018x})", self.0)
    }
}

/// Memory for translation tables, and the hypervisor's way to reach it.
///
/// # Safety
///
/// For every `pa` returned by [`alloc_zeroed(size, align)`](Self::alloc_zeroed) and not yet
/// passed to [`free`](Self::free), the implementation guarantees:
///
/// - `pa` is a multiple of `align`, and the `size` bytes from `pa` are zero on return and
///   belong to no other live allocation;
/// - `table_ptr(pa)` returns a pointer, aligned to 8 bytes, that is valid for volatile
///   reads and writes of those `size` bytes for as long as the allocation lives, and that
///   no Rust reference aliases.
pub unsafe trait TableMemory {
    /// Allocates `size` bytes of zeroed table memory aligned to `align` (both powers of
    /// two, `align <= size`). `None` when memory is exhausted.
    fn alloc_zeroed(&mut self, size: usize, align: usize) -> Option<PhysAddr>;

    /// Returns an allocation.
    ///
    /// # Safety
    ///
    /// `pa` and `size` come from one earlier `alloc_zeroed` of this memory, not freed
    /// since, and no descriptor and no walker (TLB invalidation completed) refers to it.
    unsafe fn free(&mut self, pa: PhysAddr, size: usize);

    /// Where the hypervisor reads and writes the table at `pa` (a live allocation).
    fn table_ptr(&self, pa: PhysAddr) -> *mut u64;

    /// Called after descriptors in `[pa, pa + size)` were written, before a walker may
    /// depend on them. Walkers that snoop the caches need nothing (the default); for a
    /// non-coherent SMMU (`IDR0.COHACC = 0`) the implementation cleans those lines to PoC
    /// (`DC CVAC`). The barrier that follows is [`S2Tlb::sync`].
    fn clean(&mut self, pa: PhysAddr, size: usize) {
        let _ = (pa, size);
    }

    /// Announces a walker that does not snoop the caches (an SMMU with `IDR0.COHACC = 0`
    /// or without `dma-coherent`), before the first write it will read: from this call
    /// on, `clean` must reach the point of coherency. The SMMU driver calls it first
    /// thing in its probe. Implementations whose `clean` always cleans need nothing.
    fn set_noncoherent_walker(&mut self) {}
}

/// TLB maintenance for changes of a live stage-2, for the VMID (and SMMU) it belongs to.
///
/// The EL2 implementation for the CPU: `invalidate_ipa_range` issues `TLBI IPAS2E1IS`
/// (`IPAS2LE1IS` when `last_level_only`) per granule or a range TLBI, `DSB ISH`, then
/// `TLBI VMALLE1IS` + `DSB ISH` (combined stage 1+2 entries); `sync` is `DSB ISHST`.
/// Without BTM, SMMU commands for the same VMID follow: [`crate::inval::Fanout`] makes
/// that choice for every user.
pub trait S2Tlb {
    /// Invalidates cached translations of `[ipa, ipa + size)` (leaf entries, and walk
    /// cache entries too unless `last_level_only`); completion may be deferred until
    /// [`complete`](Self::complete). Called after
    /// the changed descriptor was written and [`sync`](Self::sync)ed.
    fn invalidate_ipa_range(&mut self, ipa: Ipa, size: u64, last_level_only: bool);

    /// Invalidates every cached translation of this stage-2 and waits for completion.
    fn invalidate_all(&mut self);

    /// Makes all earlier descriptor writes visible to table walkers (`DSB ISHST`).
    /// Called before each invalidation, before a new table is linked into a live table,
    /// and at the end of every [`Stage2::map`] / [`Stage2::unmap`].
    fn sync(&mut self) {}

    /// Waits for every invalidation issued so far to complete, and says whether they
    /// did: `false` if one could not be confirmed (an SMMU did not complete its
    /// `CMD_SYNC`); the caller must then not hand the affected pages or tables to anyone
    /// else. An implementation may defer completion of
    /// [`invalidate_ipa_range`](Self::invalidate_ipa_range) (e.g. to send one SMMU
    /// `CMD_SYNC` for a whole unmap); it must not defer past this call, which comes before
    /// a broken entry is re-made (break-before-make). Whoever drives a pure unmap calls it
    /// once at the end, before the freed IPAs change owner.
    fn complete(&mut self) -> bool {
        true
    }

    /// Invalidates `ranges` (or every entry when `all`) and waits: what a
    /// [`Gather`] issues at once. The default goes range by range
    /// and then [`complete`](Self::complete)s; an implementation that must take a lock
    /// to reach its hardware may do it once here.
    fn issue(&mut self, ranges: &[InvRange], all: bool) -> bool {
        if all {
            self.invalidate_all();
        } else {
            for r in ranges {
                self.invalidate_ipa_range(Ipa(r.start), r.end - r.start, r.leaf);
            }
        }
        self.complete()
    }
}

/// What the update code records what it owes the walkers into: a [`Gather`], or, for the
/// one-operation calls ([`Stage2::map`], [`Stage2::unmap`], [`Stage2::map_new`]), an
/// [`Eager`] that does what an eager gather does without its lists.
trait Owed {
    /// As [`Gather::sync`].
    fn sync(&mut self);
    /// As [`Gather::invalidate`].
    fn invalidate(&mut self, ipa: Ipa, size: u64, last_level_only: bool);
    /// As [`Gather::complete`].
    fn complete(&mut self) -> bool;
    /// As [`Gather::keeps_empty_tables`].
    fn keeps_empty_tables(&self) -> bool;
    /// As [`Gather::retire_table`].
    ///
    /// # Safety
    ///
    /// As [`Gather::retire_table`].
    unsafe fn retire_table<M: TableMemory + ?Sized>(
        &mut self,
        mem: &mut M,
        pa: PhysAddr,
        size: usize,
    ) -> u64;
}

impl<T: S2Tlb> Owed for Gather<T> {
    fn sync(&mut self) {
        Gather::sync(self);
    }
    fn invalidate(&mut self, ipa: Ipa, size: u64, last_level_only: bool) {
        Gather::invalidate(self, ipa, size, last_level_only);
    }
    fn complete(&mut self) -> bool {
        Gather::complete(self)
    }
    fn keeps_empty_tables(&self) -> bool {
        Gather::keeps_empty_tables(self)
    }
    unsafe fn retire_table<M: TableMemory + ?Sized>(
        &mut self,
        mem: &mut M,
        pa: PhysAddr,
        size: usize,
    ) -> u64 {
        // SAFETY: forwarded under the caller's contract.
        unsafe { Gather::retire_table(self, mem, pa, size) }
    }
}

/// The caller's [`S2Tlb`] used as an eager gather ([`Gather::eager`]): every invalidation
/// goes to it at once, a table is freed once the invalidations before it completed, and
/// a failed completion is remembered. Needs no lists, so costs nothing to set up.
struct Eager<'a, T: ?Sized> {
    tlb: &'a mut T,
    failed: bool,
}

impl<'a, T: S2Tlb + ?Sized> Eager<'a, T> {
    fn new(tlb: &'a mut T) -> Self {
        Self { tlb, failed: false }
    }
}

impl<T: S2Tlb + ?Sized> Owed for Eager<'_, T> {
    fn sync(&mut self) {
        self.tlb.sync();
    }
    fn invalidate(&mut self, ipa: Ipa, size: u64, last_level_only: bool) {
        self.tlb.invalidate_ipa_range(ipa, size, last_level_only);
    }
    fn complete(&mut self) -> bool {
        if !self.tlb.complete() {
            self.failed = true;
        }
        !self.failed
    }
    fn keeps_empty_tables(&self) -> bool {
        false
    }
    unsafe fn retire_table<M: TableMemory + ?Sized>(
        &mut self,
        mem: &mut M,
        pa: PhysAddr,
        size: usize,
    ) -> u64 {
        // No walker may still hold the table through a pending invalidation.
        if !self.complete() {
            log::error!("stage-2 table {pa:?} kept: invalidation unconfirmed");
            return size as u64;
        }
        // SAFETY: by the caller's contract nothing refers to the table, and the
        // invalidation of its entry completed.
        unsafe { mem.free(pa, size) };
        0
    }
}

/// An [`S2Tlb`] that does nothing: for a table that no walker uses yet (before `VTTBR_EL2`
/// or an STE points at it).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoTlb;

impl S2Tlb for NoTlb {
    fn invalidate_ipa_range(&mut self, _ipa: Ipa, _size: u64, _last_level_only: bool) {}
    fn invalidate_all(&mut self) {}
}

/// A translation regime's leaf format, as the walker sees it: which descriptor bits are
/// attributes, and which of them need break-before-make or TLB invalidation when they
/// change (like aarch64-paging's regimes). Table descriptors, the valid and table/page
/// bits and the output address are the same in every VMSAv8-64 regime (4 KiB to 64 KiB
/// granules, 48-bit OA), so the walker is shared.
pub trait Regime {
    /// Leaf attributes in this regime's encoding.
    type Attrs: Copy + PartialEq;
    /// Descriptor bits of a leaf that [`Attrs`](Self::Attrs) carries.
    const ATTR_MASK: u64;
    /// Leaf fields whose change needs break-before-make.
    const BREAK_MASK: u64;
    /// Leaf fields whose change needs TLB invalidation but no break (permissions).
    const PERM_MASK: u64;
    /// The descriptor bits of `attrs` (within [`ATTR_MASK`](Self::ATTR_MASK)).
    fn bits(attrs: Self::Attrs) -> u64;
    /// The attributes of a leaf's descriptor bits (masked with `ATTR_MASK`).
    fn from_bits(bits: u64) -> Self::Attrs;
}

/// The stage-2 regime (`VTTBR_EL2`, `STE.S2TTB`): [`S2Attrs`], layout in the module docs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stage2Regime;

impl Regime for Stage2Regime {
    type Attrs = S2Attrs;
    const ATTR_MASK: u64 = ATTR_MASK;
    const BREAK_MASK: u64 = BREAK_MASK;
    const PERM_MASK: u64 = PERM_MASK;
    fn bits(attrs: S2Attrs) -> u64 {
        attrs.0
    }
    fn from_bits(bits: u64) -> S2Attrs {
        S2Attrs(bits & ATTR_MASK)
    }
}

/// Why [`Stage2::map_new`] stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapNewError {
    /// As [`Stage2::map`] fails (the first `done` bytes of an out-of-memory are mapped).
    Table(S2Error),
    /// `at` is already mapped, differently from what was asked; everything before it is
    /// mapped as asked.
    Conflict {
        /// The first conflicting address.
        at: Ipa,
    },
}

/// A translation table tree of regime `R` (stage 2 unless said otherwise).
///
/// Tables live in a [`TableMemory`] passed to every call; all tables reachable from the
/// root are treated as live (visible to walkers), so changes follow break-before-make.
/// Dropping a `Stage2` without [`destroy`](Self::destroy) leaks its tables.
#[derive(Debug)]
pub struct Stage2<R: Regime = Stage2Regime> {
    geom: S2Geometry,
    root: PhysAddr,
    /// Bytes of tables left allocated because the invalidation that unlinked them was
    /// not confirmed ([`S2Tlb::complete`] returned `false`).
    leaked: u64,
    regime: PhantomData<R>,
}

/// A table in the tree, as the update code sees it.
#[derive(Clone, Copy)]
struct Node {
    /// Where the table is.
    pa: PhysAddr,
    /// First IPA the table covers.
    base: u64,
    /// Its level.
    level: u8,
    /// Whether walkers can reach it (through the root).
    live: bool,
}

/// One table entry passed on the way down to the table that holds a whole range: the
/// table, the entry's index and the entry (a table descriptor) as read.
#[derive(Clone, Copy)]
struct Step {
    node: Node,
    idx: usize,
    desc: Descriptor,
}

/// The table entries above the table an operation starts in, root first (at most one per
/// level above the last).
struct Path {
    steps: [Step; LAST_LEVEL as usize],
    len: usize,
}

impl Path {
    /// No step.
    const EMPTY: Self = Self {
        steps: [Step {
            node: Node {
                pa: PhysAddr(0),
                base: 0,
                level: 0,
                live: false,
            },
            idx: 0,
            desc: Descriptor::INVALID,
        }; LAST_LEVEL as usize],
        len: 0,
    };

    /// Appends a step (there is at most one per level above the last).
    fn push(&mut self, step: Step) {
        if let Some(slot) = self.steps.get_mut(self.len) {
            *slot = step;
            self.len += 1;
        }
    }
}

/// What [`Stage2::map`] maps.
struct MapReq {
    ipa: u64,
    pa: u64,
    /// Leaf attribute bits (within the regime's `ATTR_MASK`).
    attrs: u64,
    /// Only fill invalid entries ([`Stage2::map_new`]): a valid leaf that translates
    /// differently is a conflict, and no valid entry is ever replaced.
    add_only: bool,
}

impl<R: Regime> Stage2<R> {
    /// Allocates the (possibly concatenated) zeroed root for `geometry`.
    ///
    /// # Safety
    ///
    /// Every later call on the returned value passes this same `mem` (or one through which
    /// `table_ptr` reaches the same allocations), and nothing else writes or frees the
    /// tables' memory while the `Stage2` exists.
    pub unsafe fn new<M: TableMemory + ?Sized>(
        geometry: S2Geometry,
        mem: &mut M,
    ) -> Result<Self, S2Error> {
        let size = geometry.root_size();
        let root = alloc_table(&geometry, mem, size).ok_or(S2Error::OutOfMemory { done: 0 })?;
        mem.clean(root, size);
        Ok(Self {
            geom: geometry,
            root,
            leaked: 0,
            regime: PhantomData,
        })
    }

    /// The geometry chosen at creation.
    pub const fn geometry(&self) -> S2Geometry {
        self.geom
    }

    /// Physical address of the root: `VTTBR_EL2.BADDR`, `STE.S2TTB`.
    pub const fn root(&self) -> PhysAddr {
        self.root
    }

    /// Bytes of tables never freed because the invalidation that unlinked them was not
    /// confirmed (a walker may still hold them): leaked on purpose.
    pub const fn leaked_table_bytes(&self) -> u64 {
        self.leaked
    }

    /// Makes `[ipa, ipa + size)` translate to `[pa, pa + size)` with `attrs`, replacing
    /// whatever was mapped there (see the module docs). All three must be granule-aligned;
    /// `size == 0` does nothing. On return the new descriptors are visible to walkers and
    /// every replaced translation has been invalidated through `tlb` (an eager
    /// [`Gather`]: invalidations go to `tlb` as they are recorded, tables are freed once
    /// they completed).
    ///
    /// On [`S2Error::OutOfMemory`] the first `done` bytes are mapped and the rest is as
    /// before.
    pub fn map<M: TableMemory + ?Sized, T: S2Tlb + ?Sized>(
        &mut self,
        mem: &mut M,
        tlb: &mut T,
        ipa: Ipa,
        pa: PhysAddr,
        size: u64,
        attrs: R::Attrs,
    ) -> Result<(), S2Error> {
        let mut g = Eager::new(tlb);
        match self.map_req(mem, &mut g, ipa, pa, size, R::bits(attrs), false) {
            Ok(()) => Ok(()),
            Err(MapNewError::Table(e)) => Err(e),
            // Not reachable: only add-only requests conflict.
            Err(MapNewError::Conflict { at }) => Err(S2Error::OutOfMemory { done: at.0 - ipa.0 }),
        }
    }

    /// Maps `[ipa, ipa + size)` to `[pa, pa + size)` with `attrs` where nothing is mapped
    /// yet, and keeps what already translates exactly so: no valid entry is ever changed
    /// (so no break-before-make and no TLB maintenance, only [`S2Tlb::sync`]: safe on a
    /// live table the caller itself runs on). Tables are added as for
    /// [`map`](Self::map), with the same choice of leaves where nothing was mapped; a
    /// table already under an entry is kept (not replaced by a block).
    pub fn map_new<M: TableMemory + ?Sized, T: S2Tlb + ?Sized>(
        &mut self,
        mem: &mut M,
        tlb: &mut T,
        ipa: Ipa,
        pa: PhysAddr,
        size: u64,
        attrs: R::Attrs,
    ) -> Result<(), MapNewError> {
        let mut g = Eager::new(tlb);
        self.map_req(mem, &mut g, ipa, pa, size, R::bits(attrs), true)
    }

    /// [`map`](Self::map), recording into `g`: what it owes the walkers (invalidations,
    /// tables that left the tree) is issued and freed as `g`'s mode says.
    pub fn map_gathered<M: TableMemory + ?Sized, T: S2Tlb>(
        &mut self,
        mem: &mut M,
        g: &mut Gather<T>,
        ipa: Ipa,
        pa: PhysAddr,
        size: u64,
        attrs: R::Attrs,
    ) -> Result<(), S2Error> {
        match self.map_req(mem, g, ipa, pa, size, R::bits(attrs), false) {
            Ok(()) => Ok(()),
            Err(MapNewError::Table(e)) => Err(e),
            // Not reachable: only add-only requests conflict.
            Err(MapNewError::Conflict { at }) => Err(S2Error::OutOfMemory { done: at.0 - ipa.0 }),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn map_req<M: TableMemory + ?Sized, G: Owed>(
        &mut self,
        mem: &mut M,
        g: &mut G,
        ipa: Ipa,
        pa: PhysAddr,
        size: u64,
        attrs: u64,
        add_only: bool,
    ) -> Result<(), MapNewError> {
        let end = self.check_range(ipa, size).map_err(MapNewError::Table)?;
        if !pa.is_aligned(self.geom.granule.size()) {
            return Err(MapNewError::Table(S2Error::Misaligned));
        }
        match pa.checked_add(size) {
            Some(pa_end) if pa_end.0 <= 1 << self.geom.pa_bits => {}
            _ => return Err(MapNewError::Table(S2Error::OutOfRange)),
        }
        if size == 0 {
            return Ok(());
        }
        let req = MapReq {
            ipa: ipa.0,
            pa: pa.0,
            attrs: attrs & R::ATTR_MASK,
            add_only,
        };
        let root = self.root_node();
        let mut up = Updater {
            geom: self.geom,
            mem,
            g,
            leaked: &mut self.leaked,
            conflict: None,
            regime: PhantomData::<R>,
        };
        let result = up.map_from_root(root, ipa.0, end, &req);
        up.g.sync();
        match (result, up.conflict) {
            (Ok(()), _) => Ok(()),
            (Err(_), Some(at)) => Err(MapNewError::Conflict { at: Ipa(at) }),
            (Err(at), None) => Err(MapNewError::Table(S2Error::OutOfMemory {
                done: at - ipa.0,
            })),
        }
    }

    /// Removes every translation in `[ipa, ipa + size)` (granule-aligned; unmapped parts
    /// are fine), splitting blocks that straddle the range ends and freeing tables left
    /// empty. On return no walker can use a removed translation once `tlb` completed (an
    /// eager [`Gather`], as for [`map`](Self::map)).
    ///
    /// On [`S2Error::OutOfMemory`] (splitting a block needs tables) the first `done`
    /// bytes are unmapped and the rest is as before.
    pub fn unmap<M: TableMemory + ?Sized, T: S2Tlb + ?Sized>(
        &mut self,
        mem: &mut M,
        tlb: &mut T,
        ipa: Ipa,
        size: u64,
    ) -> Result<(), S2Error> {
        let mut g = Eager::new(tlb);
        self.unmap_req(mem, &mut g, ipa, size)
    }

    /// [`unmap`](Self::unmap), recording into `g` (which also decides whether tables the
    /// unmap emptied stay linked: [`Gather::keep_empty_tables`]).
    pub fn unmap_gathered<M: TableMemory + ?Sized, T: S2Tlb>(
        &mut self,
        mem: &mut M,
        g: &mut Gather<T>,
        ipa: Ipa,
        size: u64,
    ) -> Result<(), S2Error> {
        self.unmap_req(mem, g, ipa, size)
    }

    fn unmap_req<M: TableMemory + ?Sized, G: Owed>(
        &mut self,
        mem: &mut M,
        g: &mut G,
        ipa: Ipa,
        size: u64,
    ) -> Result<(), S2Error> {
        let end = self.check_range(ipa, size)?;
        if size == 0 {
            return Ok(());
        }
        let root = self.root_node();
        let mut up = Updater {
            geom: self.geom,
            mem,
            g,
            leaked: &mut self.leaked,
            conflict: None,
            regime: PhantomData::<R>,
        };
        let result = up.unmap_from_root(root, ipa.0, end);
        up.g.sync();
        result.map_err(|at| S2Error::OutOfMemory { done: at - ipa.0 })
    }

    /// The translation of `ipa`: output address (offset within the page included),
    /// attributes, and the level of the leaf. `None` if unmapped or outside the IPA space.
    pub fn translate<M: TableMemory + ?Sized>(
        &self,
        mem: &M,
        ipa: Ipa,
    ) -> Option<(PhysAddr, R::Attrs, u8)> {
        if ipa.0 >= self.geom.ipa_size() {
            return None;
        }
        let mut node = self.root_node();
        loop {
            let shift = self.geom.granule.level_shift(node.level);
            let idx = ((ipa.0 - node.base) >> shift) as usize;
            let desc = read_desc(&self.geom, mem, node, idx);
            let entry_base = ipa.0 & !((1u64 << shift) - 1);
            if desc.is_table(node.level) {
                node = Node {
                    pa: desc.address(),
                    base: entry_base,
                    level: node.level + 1,
                    live: true,
                };
            } else if desc.is_leaf(node.level) {
                let pa = PhysAddr(desc.address().0 + (ipa.0 - entry_base));
                return Some((pa, R::from_bits(desc.0 & R::ATTR_MASK), node.level));
            } else {
                return None;
            }
        }
    }

    /// Visits, in IPA order and depth first, every descriptor whose span intersects
    /// `[ipa, ipa + size)`: invalid entries, leaves, and table descriptors (before the
    /// entries of their table). `f` gets the first IPA of the entry's span, the
    /// descriptor and its level, and may stop the walk with `ControlFlow::Break`.
    /// Addresses need no alignment.
    pub fn walk<M, B, F>(
        &self,
        mem: &M,
        ipa: Ipa,
        size: u64,
        mut f: F,
    ) -> Result<ControlFlow<B>, S2Error>
    where
        M: TableMemory + ?Sized,
        F: FnMut(Ipa, Descriptor, u8) -> ControlFlow<B>,
    {
        let end = match ipa.checked_add(size) {
            Some(end) if end.0 <= self.geom.ipa_size() => end.0,
            _ => return Err(S2Error::OutOfRange),
        };
        if size == 0 {
            return Ok(ControlFlow::Continue(()));
        }
        Ok(self.walk_in(mem, self.root_node(), ipa.0, end, &mut f))
    }

    /// Frees every table, root included.
    ///
    /// The caller must first make sure no walker uses the tables any more: `VTTBR_EL2`
    /// and STEs point elsewhere and the VMID's TLB entries are invalidated.
    pub fn destroy<M: TableMemory + ?Sized>(mut self, mem: &mut M) {
        let mut tlb = NoTlb;
        let mut up = Updater {
            geom: self.geom,
            mem,
            g: &mut Eager::new(&mut tlb),
            leaked: &mut self.leaked,
            conflict: None,
            regime: PhantomData::<R>,
        };
        up.free_subtree(self.root, self.geom.start_level);
    }

    fn root_node(&self) -> Node {
        Node {
            pa: self.root,
            base: 0,
            level: self.geom.start_level,
            live: true,
        }
    }

    /// Checks a granule-aligned IPA range and returns its end.
    #[inline]
    fn check_range(&self, ipa: Ipa, size: u64) -> Result<u64, S2Error> {
        // The granule is a power of two.
        if (ipa.0 | size) & (self.geom.granule.size() - 1) != 0 {
            return Err(S2Error::Misaligned);
        }
        match ipa.checked_add(size) {
            Some(end) if end.0 <= self.geom.ipa_size() => Ok(end.0),
            _ => Err(S2Error::OutOfRange),
        }
    }

    fn walk_in<M, B, F>(
        &self,
        mem: &M,
        node: Node,
        start: u64,
        end: u64,
        f: &mut F,
    ) -> ControlFlow<B>
    where
        M: TableMemory + ?Sized,
        F: FnMut(Ipa, Descriptor, u8) -> ControlFlow<B>,
    {
        let shift = self.geom.granule.level_shift(node.level);
        let mut addr = start;
        while addr < end {
            let entry_base = addr & !((1u64 << shift) - 1);
            let entry_end = entry_base + (1u64 << shift);
            let idx = ((addr - node.base) >> shift) as usize;
            let desc = read_desc(&self.geom, mem, node, idx);
            f(Ipa(entry_base), desc.public(node.level), node.level)?;
            if desc.is_table(node.level) {
                let child = Node {
                    pa: desc.address(),
                    base: entry_base,
                    level: node.level + 1,
                    live: true,
                };
                self.walk_in(mem, child, addr, end.min(entry_end), f)?;
            }
            addr = entry_end;
        }
        ControlFlow::Continue(())
    }
}

/// Allocates a zeroed table of `size` bytes aligned to its size, within the output range
/// (a walker cannot reach a table beyond PS).
fn alloc_table<M: TableMemory + ?Sized>(
    geom: &S2Geometry,
    mem: &mut M,
    size: usize,
) -> Option<PhysAddr> {
    let pa = mem.alloc_zeroed(size, size)?;
    let fits = pa
        .checked_add(size as u64)
        .is_some_and(|end| end.0 <= 1 << geom.pa_bits);
    if pa.is_aligned(size as u64) && fits {
        Some(pa)
    } else {
        // SAFETY: `pa` was just allocated with `size` and nothing refers to it.
        unsafe { mem.free(pa, size) };
        None
    }
}

/// Reads entry `idx` of the table `node`.
fn read_desc<M: TableMemory + ?Sized>(
    geom: &S2Geometry,
    mem: &M,
    node: Node,
    idx: usize,
) -> Descriptor {
    debug_assert!(idx < geom.entries(node.level));
    let table = mem.table_ptr(node.pa);
    // SAFETY: `node.pa` is a live table of this tree, allocated from `mem` with
    // `table_size(level)` bytes (the `Stage2::new` contract guarantees the same memory),
    // so by the `TableMemory` contract `table` is valid and aligned for
    // `entries(level)` u64s, and `idx` is below that: callers index with IPAs inside the
    // table's span.
    Descriptor(unsafe { table.add(idx).read_volatile() })
}

/// Changes descriptors: map, unmap, split, free. Holds the seams for one operation.
struct Updater<'a, M: ?Sized, G, R> {
    geom: S2Geometry,
    mem: &'a mut M,
    /// What the operation owes the walkers.
    g: &'a mut G,
    /// Where an add-only map found a conflicting entry.
    conflict: Option<u64>,
    regime: PhantomData<R>,
    /// The tree's count of tables leaked after an unconfirmed invalidation.
    leaked: &'a mut u64,
}

impl<M: TableMemory + ?Sized, G: Owed, R: Regime> Updater<'_, M, G, R> {
    fn read(&self, node: Node, idx: usize) -> Descriptor {
        read_desc(&self.geom, &*self.mem, node, idx)
    }

    /// Writes entry `idx` of `node` and, for a live table, cleans it for the walkers.
    fn write(&mut self, node: Node, idx: usize, desc: Descriptor) {
        debug_assert!(idx < self.geom.entries(node.level));
        let table = self.mem.table_ptr(node.pa);
        // SAFETY: as in `read_desc`: `node.pa` is a table of this tree or one being built
        // for it, allocated from `self.mem`, and `idx` is within it.
        unsafe { table.add(idx).write_volatile(desc.0) };
        if node.live {
            self.mem.clean(PhysAddr(node.pa.0 + idx as u64 * 8), 8);
        }
    }

    /// Writes table descriptor `idx` of `node` whose count of valid entries (and nothing
    /// else) changed. No clean, no barrier: the walkers ignore those bits, so it does not
    /// matter when a non-coherent walker sees the new value (a later clean of the line
    /// publishes it; nothing else writes the tables).
    fn write_count(&mut self, node: Node, idx: usize, desc: Descriptor) {
        debug_assert!(idx < self.geom.entries(node.level));
        let table = self.mem.table_ptr(node.pa);
        // SAFETY: as in `write`.
        unsafe { table.add(idx).write_volatile(desc.0) };
    }

    /// The one place a descriptor changes from `old` to `new`: break-before-make and TLB
    /// maintenance for live tables (see the module docs), a plain write otherwise. A
    /// table that `old` pointed to may be freed once this returns.
    #[inline]
    fn set(&mut self, node: Node, idx: usize, old: Descriptor, new: Descriptor) {
        if old == new {
            return;
        }
        let level = node.level;
        if new.is_table(level) {
            // The new table must be complete in memory before anything points at it.
            self.mem
                .clean(new.address(), self.geom.granule.size() as usize);
        }
        if !node.live {
            self.write(node, idx, new);
            return;
        }
        if new.is_table(level) {
            self.g.sync();
        }
        if !old.is_valid() {
            self.write(node, idx, new);
            return;
        }
        let shift = self.geom.granule.level_shift(level);
        let entry_ipa = Ipa(node.base + ((idx as u64) << shift));
        let entry_size = 1u64 << shift;
        if needs_break::<R>(old, new, level) {
            self.write(node, idx, Descriptor::INVALID);
            self.g.sync();
            self.g
                .invalidate(entry_ipa, entry_size, !old.is_table(level));
            if new.is_valid() {
                // Break-before-make: the old translation must be gone everywhere before
                // the new one becomes visible.
                self.g.complete();
                self.write(node, idx, new);
            }
        } else {
            self.write(node, idx, new);
            if (old.0 ^ new.0) & R::PERM_MASK != 0 {
                self.g.sync();
                self.g.invalidate(entry_ipa, entry_size, true);
            }
        }
    }

    /// Goes down from `root` through the table entries whose span holds all of
    /// `[start, end)` (without covering the whole entry, which the operation might
    /// replace), as [`map_in`](Self::map_in) and [`unmap_in`](Self::unmap_in) would
    /// through their one iteration at those levels, and returns the deepest table reached
    /// and the log2 of its entries' span; `step` gets the entries above it, root first.
    #[inline(always)]
    fn descend(&self, root: Node, start: u64, end: u64, mut step: impl FnMut(Step)) -> (Node, u32) {
        let mut node = root;
        let gshift = self.geom.granule.shift();
        let stride = self.geom.granule.stride();
        let mut shift = gshift + stride * u32::from(LAST_LEVEL - node.level);
        while node.level < LAST_LEVEL {
            let size = 1u64 << shift;
            // `off` bytes of the entry lie before the range, `spare` after it (wrapping
            // to above `size` if the range goes past the entry; ranges are below 2^49).
            // Both are below `size` exactly when the range ends inside the entry, and
            // then both are zero exactly when it covers the entry whole: one compare.
            let off = start & (size - 1);
            let spare = size.wrapping_sub(off + (end - start));
            if (off | spare).wrapping_sub(1) >= size - 1 {
                break;
            }
            let entry_base = start - off;
            let idx = ((start - node.base) >> shift) as usize;
            let desc = self.read(node, idx);
            // A table descriptor (the level is above the last).
            if desc.0 & (DESC_VALID | DESC_TABLE_OR_PAGE) != DESC_VALID | DESC_TABLE_OR_PAGE {
                break;
            }
            step(Step { node, idx, desc });
            node = Node {
                pa: desc.address(),
                base: entry_base,
                level: node.level + 1,
                live: node.live,
            };
            shift -= stride;
        }
        (node, shift)
    }

    /// [`map_in`](Self::map_in) on the root, without recursing through the levels where
    /// the range sits in one table entry (see [`descend`](Self::descend)); the counts of
    /// the tables on the way are updated on the way back.
    fn map_from_root(&mut self, root: Node, start: u64, end: u64, req: &MapReq) -> Result<(), u64> {
        let mut last = None;
        let (node, shift) = self.descend(root, start, end, |s| last = Some(s));
        // The root is never freed: its count is not kept.
        let mut count = last.map_or(0, |s: Step| s.desc.table_count());
        let result = match self.map_one(node, shift, start, end, req, &mut count) {
            Ok(at) if at < end => self.map_in(node, at, end, req, &mut count),
            done => done.map(|_| ()),
        };
        // A map never invalidates an entry: the tables above keep their counts.
        if let Some(last) = last
            && count != last.desc.table_count()
        {
            self.write_count(last.node, last.idx, last.desc.with_table_count(count));
        }
        result
    }

    /// [`unmap_in`](Self::unmap_in) on the root, as [`map_from_root`](Self::map_from_root):
    /// on the way back, each table the unmap emptied is unlinked and freed (unless the
    /// gather keeps them), innermost first, and the counts above are updated.
    fn unmap_from_root(&mut self, root: Node, start: u64, end: u64) -> Result<(), u64> {
        let mut last = None;
        let (node, shift) = self.descend(root, start, end, |s| last = Some(s));
        let Some(last) = last else {
            // The root is never freed: its count is not kept (start from the most valid
            // entries it can have, so that it cannot go below zero).
            let mut count = self.geom.entries(self.geom.start_level);
            return if self.unmap_one(node, shift, start, end, &mut count) {
                Ok(())
            } else {
                self.unmap_in(node, start, end, &mut count)
            };
        };
        let mut count = last.desc.table_count();
        let result = if self.unmap_one(node, shift, start, end, &mut count) {
            Ok(())
        } else {
            self.unmap_in(node, start, end, &mut count)
        };
        if count != 0 || self.g.keeps_empty_tables() {
            if count != last.desc.table_count() {
                self.write_count(last.node, last.idx, last.desc.with_table_count(count));
            }
            return result;
        }
        // The table emptied (rare: once per table): walk down again for every entry on
        // the way (nothing above the table changed), and free from the bottom up.
        let mut path = Path::EMPTY;
        self.descend(root, start, end, |s| path.push(s));
        let root_count = self.geom.entries(self.geom.start_level);
        let count_above = |i: usize| match i {
            0 => root_count,
            i => path.steps[i - 1].desc.table_count(),
        };
        for i in (0..path.len).rev() {
            let Step { node, idx, desc } = path.steps[i];
            if count == 0 && !self.g.keeps_empty_tables() {
                self.set(node, idx, desc, Descriptor::INVALID);
                self.free_table(desc.address(), node.level + 1);
                count = count_above(i) - 1;
            } else {
                if count != desc.table_count() {
                    self.write_count(node, idx, desc.with_table_count(count));
                }
                // The entry stays valid: the counts above do not change (and are not
                // zero: each of those tables holds the entry below it).
                break;
            }
        }
        result
    }

    /// The common cases of [`map_in`](Self::map_in), done without its loop: pages into
    /// invalid last-level entries, or one whole invalid entry that becomes a block. Returns
    /// where it stopped (`start` if it did nothing); `map_in` does the rest.
    #[inline(always)]
    fn map_one(
        &mut self,
        node: Node,
        shift: u32,
        start: u64,
        end: u64,
        req: &MapReq,
        count: &mut usize,
    ) -> Result<u64, u64> {
        let level = node.level;
        if level == LAST_LEVEL {
            return Ok(self.map_run(node, start, end, req, count));
        }
        let pa = req.pa + (start - req.ipa);
        let size = 1u64 << shift;
        // One whole entry, its output aligned to it: the differences OR-ed, zero.
        if ((end - start) ^ size) | ((start | pa) & (size - 1)) != 0
            || !self.geom.granule.leaf_allowed(level)
        {
            return Ok(start);
        }
        let idx = ((start - node.base) >> shift) as usize;
        let old = self.read(node, idx);
        if old.is_valid() {
            return Ok(start);
        }
        self.set(node, idx, old, Descriptor::leaf_bits(pa, req.attrs, level));
        *count += 1;
        Ok(end)
    }

    /// The common case of [`unmap_in`](Self::unmap_in), done without its loop: one whole
    /// entry that is invalid or a leaf. Returns whether it was that case (and is done).
    #[inline(always)]
    fn unmap_one(
        &mut self,
        node: Node,
        shift: u32,
        start: u64,
        end: u64,
        count: &mut usize,
    ) -> bool {
        let level = node.level;
        let size = 1u64 << shift;
        // One whole entry: the differences OR-ed, zero.
        if ((end - start) ^ size) | (start & (size - 1)) != 0 {
            return false;
        }
        let idx = ((start - node.base) >> shift) as usize;
        let old = self.read(node, idx);
        if old.is_table(level) {
            return false;
        }
        if old.is_valid() {
            self.set(node, idx, old, Descriptor::INVALID);
            *count -= 1;
        }
        true
    }

    /// Maps `[start, end)` (inside `node`'s span) as `req` says. `Err(at)`: out of memory
    /// with everything below `at` done and the rest unchanged.
    /// `count` is `node`'s count of valid entries, kept up to date.
    fn map_in(
        &mut self,
        node: Node,
        start: u64,
        end: u64,
        req: &MapReq,
        count: &mut usize,
    ) -> Result<(), u64> {
        let level = node.level;
        let mut addr = start;
        if level == LAST_LEVEL {
            addr = self.map_run(node, start, end, req, count);
        }
        let shift = self.geom.granule.level_shift(level);
        let entry_size = 1u64 << shift;
        while addr < end {
            let idx = ((addr - node.base) >> shift) as usize;
            let entry_base = addr & !(entry_size - 1);
            let entry_end = entry_base + entry_size;
            let sub_end = end.min(entry_end);
            let pa = req.pa + (addr - req.ipa);
            let old = self.read(node, idx);
            let whole = addr == entry_base && sub_end == entry_end;
            let same = old.is_leaf(level)
                && old.0 & R::ATTR_MASK == req.attrs
                && old.address().0 + (addr - entry_base) == pa;
            if req.add_only && old.is_leaf(level) && !same {
                self.conflict = Some(addr);
                return Err(addr);
            }
            let replace = !(req.add_only && old.is_valid());
            if replace
                && whole
                && self.geom.granule.leaf_allowed(level)
                && pa & (entry_size - 1) == 0
            {
                let leaf = Descriptor::leaf_bits(pa, req.attrs, level);
                self.set(node, idx, old, leaf);
                if !old.is_valid() {
                    *count += 1;
                }
                if old.is_table(level) {
                    self.free_subtree(old.address(), level + 1);
                }
            } else if old.is_table(level) {
                let child = Node {
                    pa: old.address(),
                    base: entry_base,
                    level: level + 1,
                    live: node.live,
                };
                let before = old.table_count();
                let mut c = before;
                let result = self.map_in(child, addr, sub_end, req, &mut c);
                if c != before {
                    self.write_count(node, idx, old.with_table_count(c));
                }
                result?;
            } else if same {
                // A block already maps this part exactly as asked: keep it.
            } else {
                self.replace_with_table(
                    node,
                    idx,
                    old,
                    entry_base,
                    addr,
                    count,
                    |up, child, c| up.map_in(child, addr, sub_end, req, c),
                )?;
            }
            addr = sub_end;
        }
        Ok(())
    }

    /// Fills the invalid last-level entries of `node` from `start` on with the pages `req`
    /// asks for, up to `end` or the first valid entry, and returns where it stopped. This
    /// is what [`set`](Self::set) does for invalid → page (a plain write; no barrier, no
    /// invalidation), in one pass, with one clean for the whole run.
    fn map_run(
        &mut self,
        node: Node,
        start: u64,
        end: u64,
        req: &MapReq,
        count: &mut usize,
    ) -> u64 {
        let shift = self.geom.granule.shift();
        let first = ((start - node.base) >> shift) as usize;
        let n = ((end - start) >> shift) as usize;
        debug_assert!(first + n <= self.geom.entries(node.level));
        let table = self.mem.table_ptr(node.pa);
        // The output address stays below the PA size (checked by `map_req`), so adding a
        // page to the descriptor adds it to its address field.
        let mut desc = Descriptor::leaf_bits(req.pa + (start - req.ipa), req.attrs, LAST_LEVEL).0;
        let mut done = 0;
        while done < n {
            // SAFETY: as in `read_desc`: `node.pa` is a table of this tree (or one being
            // built for it) and `first + done` is below its number of entries, since
            // `[start, end)` lies inside its span.
            let entry = unsafe { table.add(first + done) };
            // SAFETY: as above.
            if unsafe { entry.read_volatile() } & DESC_VALID != 0 {
                break;
            }
            // SAFETY: as above.
            unsafe { entry.write_volatile(desc) };
            desc += 1 << shift;
            done += 1;
        }
        if done > 0 && node.live {
            self.mem
                .clean(PhysAddr(node.pa.0 + first as u64 * 8), done * 8);
        }
        *count += done;
        start + ((done as u64) << shift)
    }

    /// Unmaps `[start, end)` (inside `node`'s span). `Err(at)`: out of memory with
    /// everything below `at` unmapped and the rest unchanged.
    /// `count` is `node`'s count of valid entries, kept up to date.
    fn unmap_in(&mut self, node: Node, start: u64, end: u64, count: &mut usize) -> Result<(), u64> {
        let level = node.level;
        let shift = self.geom.granule.level_shift(level);
        let entry_size = 1u64 << shift;
        let mut addr = start;
        while addr < end {
            let idx = ((addr - node.base) >> shift) as usize;
            let entry_base = addr & !(entry_size - 1);
            let entry_end = entry_base + entry_size;
            let sub_end = end.min(entry_end);
            let old = self.read(node, idx);
            let whole = addr == entry_base && sub_end == entry_end;
            if !old.is_valid() {
                // Nothing mapped here.
            } else if whole {
                self.set(node, idx, old, Descriptor::INVALID);
                *count -= 1;
                if old.is_table(level) {
                    self.free_subtree(old.address(), level + 1);
                }
            } else if old.is_table(level) {
                let child = Node {
                    pa: old.address(),
                    base: entry_base,
                    level: level + 1,
                    live: node.live,
                };
                let before = old.table_count();
                let mut c = before;
                let result = self.unmap_in(child, addr, sub_end, &mut c);
                if c == 0 && !self.g.keeps_empty_tables() {
                    self.set(node, idx, old, Descriptor::INVALID);
                    *count -= 1;
                    self.free_table(child.pa, child.level);
                } else if c != before {
                    self.write_count(node, idx, old.with_table_count(c));
                }
                result?;
            } else {
                // A block partly unmapped: split it.
                self.replace_with_table(
                    node,
                    idx,
                    old,
                    entry_base,
                    addr,
                    count,
                    |up, child, c| up.unmap_in(child, addr, sub_end, c),
                )?;
            }
            addr = sub_end;
        }
        Ok(())
    }

    /// Replaces entry `idx` of `node` (invalid, or a block to split) by a new next-level
    /// table: allocates it, fills it with the block's equivalent entries, lets `fill` apply
    /// the operation to it while no walker can see it, then links it in one step. If
    /// `fill` did nothing (out of memory at `at`), the new table is dropped and the entry
    /// stays as it was; if the table ends up empty, the entry becomes invalid. `count` is
    /// `node`'s count of valid entries, kept up to date; `fill` gets the new table's.
    #[allow(clippy::too_many_arguments)]
    fn replace_with_table(
        &mut self,
        node: Node,
        idx: usize,
        old: Descriptor,
        entry_base: u64,
        at: u64,
        count: &mut usize,
        fill: impl FnOnce(&mut Self, Node, &mut usize) -> Result<(), u64>,
    ) -> Result<(), u64> {
        let level = node.level;
        if level >= LAST_LEVEL {
            // Not reachable: L3 entries are pages, always covered whole.
            debug_assert!(false, "split below the last level");
            return Err(at);
        }
        let size = self.geom.granule.size() as usize;
        let pa = alloc_table(&self.geom, self.mem, size).ok_or(at)?;
        let child = Node {
            pa,
            base: entry_base,
            level: level + 1,
            live: false,
        };
        let mut c = 0;
        if old.is_leaf(level) {
            let child_size = self.geom.entry_size(child.level);
            c = self.geom.entries(child.level);
            for i in 0..c {
                let out = old.address().0 + i as u64 * child_size;
                let attrs = old.0 & R::ATTR_MASK;
                self.write(child, i, Descriptor::leaf_bits(out, attrs, child.level));
            }
        }
        let result = fill(self, child, &mut c);
        let progressed = match result {
            Ok(()) => true,
            Err(stop) => stop > at,
        };
        if !progressed {
            self.free_table(pa, child.level);
        } else if c == 0 {
            self.set(node, idx, old, Descriptor::INVALID);
            if old.is_valid() {
                *count -= 1;
            }
            self.free_table(pa, child.level);
        } else {
            self.set(node, idx, old, Descriptor::table(pa).with_table_count(c));
            if !old.is_valid() {
                *count += 1;
            }
        }
        result
    }

    /// Frees the table at `pa` (level `level`) and every table below it. Nothing may refer
    /// to it any more (see `set`).
    fn free_subtree(&mut self, pa: PhysAddr, level: u8) {
        if level < LAST_LEVEL {
            let node = Node {
                pa,
                base: 0,
                level,
                live: false,
            };
            for i in 0..self.geom.entries(level) {
                let desc = self.read(node, i);
                if desc.is_table(level) {
                    self.free_subtree(desc.address(), level + 1);
                }
            }
        }
        self.free_table(pa, level);
    }

    fn free_table(&mut self, pa: PhysAddr, level: u8) {
        let size = self.geom.table_size(level);
        // SAFETY: `pa` is a table of this tree allocated from `self.mem` with
        // `table_size(level)` bytes; the caller has unlinked it (with its entry recorded
        // for invalidation if it was live) or never linked it, so nothing refers to it.
        // The gather frees it only once that invalidation completed, and keeps it for
        // good (reported here) if it could not be confirmed.
        *self.leaked += unsafe { self.g.retire_table(self.mem, pa, size) };
    }
}

/// Whether changing a live `old` into `new` at `level` needs break-before-make: removing
/// a translation, anything involving a table, or a change of output address, memory type
/// or shareability. Permission and software-bit changes do not.
fn needs_break<R: Regime>(old: Descriptor, new: Descriptor, level: u8) -> bool {
    !new.is_valid()
        || old.is_table(level)
        || new.is_table(level)
        || (old.0 ^ new.0) & R::BREAK_MASK != 0
}

#[cfg(test)]
mod tests;
