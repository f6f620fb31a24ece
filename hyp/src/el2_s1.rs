//! Warden's own EL2 stage-1 translation tables: an identity map (VA == PA) built once at
//! boot, 4 KiB granule, 48-bit VA, four levels starting at level 0.
//!
//! Only what Warden touches is mapped: its image and pool, the RAM it reads and writes on
//! the host's behalf, and the MMIO frames it drives. The builder only adds mappings (no
//! unmap, no split), using 1 GiB and 2 MiB blocks where alignment allows and 4 KiB pages
//! elsewhere; it refuses to overwrite an existing mapping with a different one.
//!
//! The tables are built by the one table walker of [`crate::s2mmu`], as a second
//! translation regime ([`El2Regime`]: the EL2 stage-1 leaf encoding below) with the same
//! geometry code (4 KiB, 48 bits: start level 0, one root table) and its add-only map
//! ([`Stage2::map_new`]), which never changes a valid entry: the map is live while
//! Warden runs on it, and only needs its writes published (`DSB ISHST`, the
//! [`S2Tlb::sync`] of the caller's seam) before a new table is linked.
//!
//! Descriptor layout (VMSAv8-64, stage 1, EL2 regime):
//!
//! | bits  | field                                        |
//! |-------|----------------------------------------------|
//! | 0     | valid                                        |
//! | 1     | table (L0–L2) / page (L3); 0 = block          |
//! | 4:2   | AttrIndx into MAIR_EL2 (see [`MAIR_EL2`])     |
//! | 7:6   | AP: 0b00 RW at EL2, 0b10 read-only           |
//! | 9:8   | SH: 0b11 inner shareable                      |
//! | 10    | AF                                           |
//! | 47:12 | output address                               |
//! | 54    | XN                                           |

use crate::PAGE;
use crate::addr::{Ipa, PhysAddr, PhysRange};
use crate::s2mmu::{Granule, MapNewError, Regime, S2Error, S2Geometry, S2Tlb, Stage2, TableMemory};
use bitfield_struct::bitfield;
use core::ops::ControlFlow;

/// MAIR_EL2: index 0 Normal write-back RA/WA, index 1 Device-nGnRE, index 2 Device-nGnRnE.
pub const MAIR_EL2: u64 = 0x00_04_ff;

/// An EL2 stage-1 descriptor, field by field (VMSAv8-64, 4 KiB granule, 48-bit OA).
#[bitfield(u64)]
struct El2Desc {
    /// Bit 0: valid.
    valid: bool,
    /// Bit 1: 1 = table (L0–L2) or page (L3), 0 = block.
    table_or_page: bool,
    /// Bits 4:2: AttrIndx into [`MAIR_EL2`].
    #[bits(3)]
    attrindx: u8,
    /// Bit 5: NS (Secure state only): 0.
    ns: bool,
    /// Bits 7:6: AP.
    #[bits(2)]
    ap: u8,
    /// Bits 9:8: shareability.
    #[bits(2)]
    sh: u8,
    /// Bit 10: access flag.
    af: bool,
    /// Bits 11: nG (RES0 in this regime).
    ng: bool,
    /// Bits 47:12: output address or next-level table.
    #[bits(36)]
    oa: u64,
    /// Bits 51:48: 0 (no 52-bit OA, no DBM).
    #[bits(4)]
    __: u8,
    /// Bit 52: contiguous hint.
    contiguous: bool,
    /// Bit 53: reserved in the EL2 regime: 0.
    #[bits(1)]
    __: u8,
    /// Bit 54: execute never.
    xn: bool,
    /// Bits 58:55: software use.
    #[bits(4)]
    sw: u8,
    /// Bits 63:59: ignored / PBHA: 0.
    #[bits(5)]
    __: u8,
}

/// The bits of a field at `offset`, `bits` wide (less than 64).
const fn field(offset: usize, bits: usize) -> u64 {
    ((1u64 << bits) - 1) << offset
}

const DESC_KIND_MASK: u64 = field(El2Desc::VALID_OFFSET, 2);
const DESC_ATTRINDX_MASK: u64 = field(El2Desc::ATTRINDX_OFFSET, El2Desc::ATTRINDX_BITS);
const DESC_ATTRINDX_DEVICE: u64 = 1 << El2Desc::ATTRINDX_OFFSET;
const DESC_AP_MASK: u64 = field(El2Desc::AP_OFFSET, El2Desc::AP_BITS);
/// AP = 0b10: read-only at EL2.
const DESC_AP_RO: u64 = 0b10 << El2Desc::AP_OFFSET;
const DESC_SH_MASK: u64 = field(El2Desc::SH_OFFSET, El2Desc::SH_BITS);
const DESC_SH_INNER: u64 = 0b11 << El2Desc::SH_OFFSET;
const DESC_AF: u64 = field(El2Desc::AF_OFFSET, El2Desc::AF_BITS);
const DESC_OA_MASK: u64 = field(El2Desc::OA_OFFSET, El2Desc::OA_BITS);
const DESC_CONTIGUOUS: u64 = field(El2Desc::CONTIGUOUS_OFFSET, El2Desc::CONTIGUOUS_BITS);
const DESC_XN: u64 = field(El2Desc::XN_OFFSET, El2Desc::XN_BITS);
/// Leaf bits the EL2 regime's attributes carry.
const ATTR_MASK: u64 = DESC_ATTRINDX_MASK | DESC_AP_MASK | DESC_SH_MASK | DESC_AF | DESC_XN;

/// How a range is mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum S1Attr {
    /// Normal memory, read-write, executable (Warden's image).
    NormalRwx,
    /// Normal memory, read-write, never executable.
    NormalRw,
    /// Normal memory, read-only, never executable.
    NormalRo,
    /// Device-nGnRE, read-write, never executable (MMIO).
    Device,
}

impl S1Attr {
    const fn bits(self) -> u64 {
        match self {
            S1Attr::NormalRwx => DESC_SH_INNER | DESC_AF,
            S1Attr::NormalRw => DESC_SH_INNER | DESC_AF | DESC_XN,
            S1Attr::NormalRo => DESC_SH_INNER | DESC_AF | DESC_XN | DESC_AP_RO,
            S1Attr::Device => DESC_ATTRINDX_DEVICE | DESC_AF | DESC_XN,
        }
    }
}

/// The leaf attribute bits of an EL2 stage-1 descriptor (AttrIndx, AP, SH, AF, XN).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct El2Attrs(u64);

impl El2Attrs {
    /// The descriptor bits.
    pub const fn bits(self) -> u64 {
        self.0
    }
}

impl From<S1Attr> for El2Attrs {
    fn from(a: S1Attr) -> Self {
        Self(a.bits())
    }
}

/// The EL2 stage-1 regime (`TTBR0_EL2`, `TCR_EL2`, `MAIR_EL2`) for the shared walker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct El2Regime;

impl Regime for El2Regime {
    type Attrs = El2Attrs;
    const ATTR_MASK: u64 = ATTR_MASK;
    /// Memory type, shareability, valid/table bits and output address.
    const BREAK_MASK: u64 =
        DESC_KIND_MASK | DESC_ATTRINDX_MASK | DESC_SH_MASK | DESC_OA_MASK | DESC_CONTIGUOUS;
    /// AP, AF and XN.
    const PERM_MASK: u64 = DESC_AP_MASK | DESC_AF | DESC_XN;
    fn bits(attrs: El2Attrs) -> u64 {
        attrs.0
    }
    fn from_bits(bits: u64) -> El2Attrs {
        El2Attrs(bits & ATTR_MASK)
    }
}

/// Errors while building the map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum S1Error {
    /// The table allocator is exhausted.
    OutOfTables,
    /// The range is not page aligned or lies beyond the 48-bit VA space.
    BadRange,
    /// Part of the range is already mapped differently.
    Conflict,
}

/// TCR_EL2 for this map: T0SZ = 16, 4 KiB granule, inner-shareable write-back walks,
/// PS from `pa_range` (the ID_AA64MMFR0_EL1.PARange field value, capped at 48 bits).
pub const fn tcr_el2(pa_range: u64) -> u64 {
    let ps = if pa_range > 5 { 5 } else { pa_range };
    (1 << 31) | (1 << 23) | (ps << 16) | (3 << 12) | (1 << 10) | (1 << 8) | 16
}

/// The geometry of the EL2 map: 4 KiB granule, 48-bit VA and PA, start level 0.
fn geometry() -> Result<S2Geometry, S1Error> {
    S2Geometry::new(Granule::Size4K, 48, 48).map_err(|_| S1Error::BadRange)
}

/// An identity map under construction.
pub struct IdMap {
    tables: Stage2<El2Regime>,
}

impl IdMap {
    /// Starts an empty map, allocating its level-0 table.
    ///
    /// # Safety
    ///
    /// Every later call on the returned value passes this same `mem` (as for
    /// [`Stage2::new`]), and nothing else writes or frees the tables' memory while the
    /// map exists.
    pub unsafe fn new<M: TableMemory + ?Sized>(mem: &mut M) -> Result<Self, S1Error> {
        // SAFETY: the caller's contract is `Stage2::new`'s.
        let tables = unsafe { Stage2::new(geometry()?, mem) }.map_err(|_| S1Error::OutOfTables)?;
        Ok(Self { tables })
    }

    /// The level-0 table: the value for TTBR0_EL2.
    pub fn root(&self) -> PhysAddr {
        self.tables.root()
    }

    /// Maps `range` (rounded out to pages) to itself with `attr`. Re-mapping a range
    /// with the same attributes is allowed and changes nothing. `tlb`'s
    /// [`sync`](S2Tlb::sync) (`DSB ISHST`) publishes the writes before a new table is
    /// linked and when this returns; no valid entry changes, so nothing is invalidated.
    pub fn map<M: TableMemory + ?Sized, T: S2Tlb + ?Sized>(
        &mut self,
        mem: &mut M,
        tlb: &mut T,
        range: PhysRange,
        attr: S1Attr,
    ) -> Result<(), S1Error> {
        let start = range.base.get() & !(PAGE - 1);
        let end = range
            .base
            .get()
            .checked_add(range.size)
            .and_then(|e| e.checked_add(PAGE - 1))
            .ok_or(S1Error::BadRange)?
            & !(PAGE - 1);
        if end > 1 << 48 {
            return Err(S1Error::BadRange);
        }
        let r = self.tables.map_new(
            mem,
            tlb,
            Ipa(start),
            PhysAddr(start),
            end - start,
            attr.into(),
        );
        match r {
            Ok(()) => Ok(()),
            Err(MapNewError::Conflict { .. }) => Err(S1Error::Conflict),
            Err(MapNewError::Table(S2Error::OutOfMemory { .. })) => Err(S1Error::OutOfTables),
            Err(MapNewError::Table(_)) => Err(S1Error::BadRange),
        }
    }

    /// Looks up `va`: the output address and leaf descriptor, for tests and diagnostics.
    pub fn lookup<M: TableMemory + ?Sized>(&self, mem: &M, va: u64) -> Option<(u64, u64)> {
        let walk = self.tables.walk(mem, Ipa(va), 1, |base, desc, level| {
            if desc.is_leaf(level) {
                let pa = desc.address().get() + (va - base.get());
                ControlFlow::Break((pa, desc.bits()))
            } else {
                ControlFlow::Continue(())
            }
        });
        match walk {
            Ok(ControlFlow::Break(found)) => Some(found),
            _ => None,
        }
    }

    /// Frees every table (the map must no longer be in use).
    pub fn destroy<M: TableMemory + ?Sized>(self, mem: &mut M) {
        self.tables.destroy(mem);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::{Cell, RefCell};
    use std::rc::Rc;

    const OA_MASK: u64 = 0x0000_ffff_ffff_f000;

    /// Table pages, with a memory-order model: a page's contents (its zeroing, the
    /// entries written into it while it is unlinked) are unpublished until the next
    /// `publish` (DSB ISHST). At every publish, a table descriptor in a page the walker
    /// can already reach (the root, or a page published earlier) must point at a page
    /// published by an earlier barrier, or the walker could have seen the link before
    /// the zeros.
    #[derive(Default)]
    struct Shared {
        pages: RefCell<Vec<Box<[u64; 512]>>>,
        /// Pages allocated before the last `publish`.
        published: Cell<usize>,
        violations: RefCell<Vec<std::string::String>>,
    }
    const ARENA_BASE: u64 = 0x7000_0000_0000;

    impl Shared {
        fn publish(&self) {
            let pages = self.pages.borrow();
            let before = self.published.get();
            for (i, page) in pages.iter().enumerate().take(before.max(1)) {
                for &d in page.iter() {
                    let j = ((d & OA_MASK).wrapping_sub(ARENA_BASE) / PAGE) as usize;
                    if d & 3 == 3 && j < pages.len() && j >= before {
                        self.violations.borrow_mut().push(std::format!(
                            "table {j} linked from {i} before its zeros were published"
                        ));
                    }
                }
            }
            self.published.set(pages.len());
        }
    }

    /// The arena (the `TableMemory`).
    struct Arena(Rc<Shared>);

    /// The barrier seam: `sync` publishes the arena's pages.
    struct Publish(Rc<Shared>);

    impl Arena {
        fn count(&self) -> usize {
            self.0.pages.borrow().len()
        }
        fn published(&self) -> usize {
            self.0.published.get()
        }
        fn violations(&self) -> Vec<std::string::String> {
            self.0.violations.borrow().clone()
        }
    }

    impl S2Tlb for Publish {
        fn invalidate_ipa_range(&mut self, ipa: Ipa, _size: u64, _leaf: bool) {
            self.0
                .violations
                .borrow_mut()
                .push(std::format!("valid entry at {ipa:?} changed"));
        }
        fn invalidate_all(&mut self) {
            self.invalidate_ipa_range(Ipa(0), 0, false);
        }
        fn sync(&mut self) {
            self.0.publish();
        }
    }

    // SAFETY: each allocation is a fresh boxed, zeroed, 8-byte aligned 4 KiB page that
    // lives as long as the arena (never freed), reached only through `table_ptr`.
    unsafe impl TableMemory for Arena {
        fn alloc_zeroed(&mut self, size: usize, align: usize) -> Option<PhysAddr> {
            let mut p = self.0.pages.borrow_mut();
            if p.len() >= 64 || size != PAGE as usize || align > PAGE as usize {
                return None;
            }
            p.push(Box::new([0; 512]));
            Some(PhysAddr(ARENA_BASE + (p.len() as u64 - 1) * PAGE))
        }
        unsafe fn free(&mut self, _pa: PhysAddr, _size: usize) {}
        fn table_ptr(&self, pa: PhysAddr) -> *mut u64 {
            let i = ((pa.get() - ARENA_BASE) / PAGE) as usize;
            self.0.pages.borrow_mut()[i].as_mut_ptr()
        }
    }

    /// A fresh arena, its barrier seam, and a map in it.
    fn setup() -> (Arena, Publish, IdMap) {
        let shared = Rc::new(Shared::default());
        let mut a = Arena(shared.clone());
        // SAFETY: every call below passes this arena.
        let m = unsafe { IdMap::new(&mut a) }.unwrap();
        (a, Publish(shared), m)
    }

    #[test]
    fn new_tables_are_published_before_they_are_linked() {
        let (mut a, mut t, mut m) = setup();
        // Pages at both ends of a 2 MiB region and a block between: L1, L2, L3 tables.
        m.map(
            &mut a,
            &mut t,
            PhysRange::new(0x4000_0000 - PAGE, 0x20_0000 + 2 * PAGE),
            S1Attr::NormalRw,
        )
        .unwrap();
        m.map(
            &mut a,
            &mut t,
            PhysRange::new(0x9_0000_0000, PAGE),
            S1Attr::Device,
        )
        .unwrap();
        assert!(a.count() > 4, "tables were linked");
        assert_eq!(a.violations(), std::vec::Vec::<std::string::String>::new());
        assert_eq!(a.published(), a.count(), "published when map returns");
    }

    #[test]
    fn blocks_and_pages() {
        let (mut a, mut t, mut m) = setup();
        // 1 GiB-aligned GiB: one L1 block.
        m.map(
            &mut a,
            &mut t,
            PhysRange::new(0x4000_0000, 0x4000_0000),
            S1Attr::NormalRw,
        )
        .unwrap();
        assert_eq!(a.count(), 2, "L0 + one L1 table");
        let (pa, desc) = m.lookup(&a, 0x4123_4567).unwrap();
        assert_eq!(pa, 0x4123_4567);
        assert_eq!(desc & 3, 1, "block descriptor");
        assert_ne!(desc & DESC_XN, 0);
        // A device page: needs L2 and L3 tables.
        m.map(
            &mut a,
            &mut t,
            PhysRange::new(0x0900_0000, 0x1000),
            S1Attr::Device,
        )
        .unwrap();
        assert_eq!(a.count(), 4);
        let (pa, desc) = m.lookup(&a, 0x0900_0010).unwrap();
        assert_eq!(pa, 0x0900_0010);
        assert_eq!((desc >> 2) & 7, 1, "device attribute index");
        assert_eq!(desc & 3, 3, "page descriptor");
        assert!(m.lookup(&a, 0x0900_1000).is_none());
        assert!(m.lookup(&a, 0x8000_0000).is_none());
    }

    #[test]
    fn unaligned_range_uses_pages_then_blocks() {
        let (mut a, mut t, mut m) = setup();
        m.map(
            &mut a,
            &mut t,
            PhysRange::new(0x4010_0000, 0x0030_0000),
            S1Attr::NormalRwx,
        )
        .unwrap();
        let (_, d) = m.lookup(&a, 0x4010_0000).unwrap();
        assert_eq!(d & 3, 3, "first MiB in pages");
        let (_, d) = m.lookup(&a, 0x4020_0000).unwrap();
        assert_eq!(d & 3, 1, "then a 2 MiB block");
        assert_eq!(d & DESC_XN, 0, "image is executable");
        assert!(m.lookup(&a, 0x4040_0000).is_none());
        assert!(m.lookup(&a, 0x400f_f000).is_none());
    }

    #[test]
    fn remap_same_is_ok_conflict_is_refused() {
        let (mut a, mut t, mut m) = setup();
        let r = PhysRange::new(0x4000_0000, 0x20_0000);
        m.map(&mut a, &mut t, r, S1Attr::NormalRw).unwrap();
        let before = a.count();
        m.map(
            &mut a,
            &mut t,
            PhysRange::new(0x4000_1000, 0x1000),
            S1Attr::NormalRw,
        )
        .unwrap();
        assert_eq!(a.count(), before);
        assert_eq!(
            m.map(
                &mut a,
                &mut t,
                PhysRange::new(0x4000_1000, 0x1000),
                S1Attr::Device
            ),
            Err(S1Error::Conflict)
        );
    }

    #[test]
    fn exhaustion_and_bad_ranges_are_errors() {
        let (mut a, mut t, mut m) = setup();
        assert_eq!(
            m.map(
                &mut a,
                &mut t,
                PhysRange::new(u64::MAX - 10, 100),
                S1Attr::NormalRw
            ),
            Err(S1Error::BadRange)
        );
        assert_eq!(
            m.map(
                &mut a,
                &mut t,
                PhysRange::new(1 << 48, 4096),
                S1Attr::NormalRw
            ),
            Err(S1Error::BadRange)
        );
        // Scatter pages across many 512 GiB regions until tables run out.
        let mut err = None;
        for i in 0..100u64 {
            if let Err(e) = m.map(
                &mut a,
                &mut t,
                PhysRange::new(i << 39, 4096),
                S1Attr::Device,
            ) {
                err = Some(e);
                break;
            }
        }
        assert_eq!(err, Some(S1Error::OutOfTables));
    }

    #[test]
    fn descriptor_fields_sit_where_the_architecture_puts_them() {
        assert_eq!(DESC_KIND_MASK, 0b11);
        assert_eq!(DESC_ATTRINDX_MASK, 0b111 << 2);
        assert_eq!(DESC_AP_MASK, 0b11 << 6);
        assert_eq!(DESC_SH_MASK, 0b11 << 8);
        assert_eq!(DESC_AF, 1 << 10);
        assert_eq!(DESC_OA_MASK, 0x0000_ffff_ffff_f000);
        assert_eq!(DESC_CONTIGUOUS, 1 << 52);
        assert_eq!(DESC_XN, 1 << 54);
        let d = El2Desc::new()
            .with_valid(true)
            .with_oa(0x4_0000)
            .with_ng(false);
        assert_eq!(d.into_bits(), 1 | 0x4000_0000);
    }

    #[test]
    fn tcr_fields() {
        let t = tcr_el2(2); // 40-bit PA
        assert_eq!(t & 0x3f, 16);
        assert_eq!((t >> 16) & 7, 2);
        assert_eq!((t >> 14) & 3, 0, "4 KiB granule");
        assert_eq!(tcr_el2(6) >> 16 & 7, 5, "52-bit PA capped to 48");
    }
}
