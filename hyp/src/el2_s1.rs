//! Warden's own EL2 stage-1 translation tables: an identity map (VA == PA) built once at
//! boot, 4 KiB granule, 48-bit VA, four levels starting at level 0.
//!
//! Only what Warden touches is mapped: its image and pool, the RAM it reads and writes on
//! the host's behalf, and the MMIO frames it drives. The builder only adds mappings (no
//! unmap, no split), using 1 GiB and 2 MiB blocks where alignment allows and 4 KiB pages
//! elsewhere; it refuses to overwrite an existing mapping with a different one.
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

use crate::addr::{PhysAddr, PhysRange};

/// MAIR_EL2: index 0 Normal write-back RA/WA, index 1 Device-nGnRE, index 2 Device-nGnRnE.
pub const MAIR_EL2: u64 = 0x00_04_ff;

const PAGE: u64 = 4096;
const ENTRIES: usize = 512;
const DESC_VALID: u64 = 1 << 0;
const DESC_TABLE: u64 = 1 << 1;
const DESC_AF: u64 = 1 << 10;
const DESC_SH_INNER: u64 = 3 << 8;
const DESC_AP_RO: u64 = 2 << 6;
const DESC_XN: u64 = 1 << 54;
const OA_MASK: u64 = 0x0000_ffff_ffff_f000;

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
            S1Attr::Device => (1 << 2) | DESC_AF | DESC_XN,
        }
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

/// Source of zeroed 4 KiB table pages. `alloc` returns the physical address of a zeroed,
/// 4 KiB-aligned page; `ptr` gives a pointer through which the page can be written.
pub trait TableAlloc {
    /// A zeroed 4 KiB page, or `None` when exhausted.
    fn alloc(&mut self) -> Option<PhysAddr>;
    /// A writable pointer to the table at `pa` (identity at EL2; an arena in tests).
    fn ptr(&self, pa: PhysAddr) -> *mut u64;
    /// `DSB ISHST`: earlier writes (a new table's zeroing, descriptors) are visible to the
    /// table walker before what follows. Called before a new table is linked and at the
    /// end of every [`IdMap::map`].
    fn publish(&mut self);
}

/// TCR_EL2 for this map: T0SZ = 16, 4 KiB granule, inner-shareable write-back walks,
/// PS from `pa_range` (the ID_AA64MMFR0_EL1.PARange field value, capped at 48 bits).
pub const fn tcr_el2(pa_range: u64) -> u64 {
    let ps = if pa_range > 5 { 5 } else { pa_range };
    (1 << 31) | (1 << 23) | (ps << 16) | (3 << 12) | (1 << 10) | (1 << 8) | 16
}

/// An identity map under construction.
pub struct IdMap {
    root: PhysAddr,
}

impl IdMap {
    /// Starts an empty map, allocating its level-0 table.
    pub fn new(alloc: &mut impl TableAlloc) -> Result<Self, S1Error> {
        let root = alloc.alloc().ok_or(S1Error::OutOfTables)?;
        Ok(Self { root })
    }

    /// The level-0 table: the value for TTBR0_EL2.
    pub fn root(&self) -> PhysAddr {
        self.root
    }

    /// Maps `range` (rounded out to pages) to itself with `attr`. Re-mapping a range
    /// with the same attributes is allowed and changes nothing.
    pub fn map(
        &mut self,
        alloc: &mut impl TableAlloc,
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
        let mut addr = start;
        let mut r = Ok(());
        while addr < end {
            match self.map_one(alloc, addr, end, attr) {
                Ok(next) => addr = next,
                Err(e) => {
                    r = Err(e);
                    break;
                }
            }
        }
        // What was written is visible to the walker when this returns.
        alloc.publish();
        r
    }

    /// Maps the largest block that fits at `addr` and returns the next address.
    fn map_one(
        &mut self,
        alloc: &mut impl TableAlloc,
        addr: u64,
        end: u64,
        attr: S1Attr,
    ) -> Result<u64, S1Error> {
        let mut table = self.root;
        for level in 0..4u32 {
            let shift = 39 - 9 * level;
            let size = 1u64 << shift;
            let index = ((addr >> shift) & (ENTRIES as u64 - 1)) as usize;
            let slot = alloc.ptr(table).wrapping_add(index);
            // SAFETY: `table` is a 4 KiB table page owned by this map and `index` < 512.
            let desc = unsafe { slot.read_volatile() };
            let block_ok = level >= 1 && addr.is_multiple_of(size) && end - addr >= size;
            if block_ok && (desc & DESC_VALID == 0) {
                let leaf =
                    addr | attr.bits() | DESC_VALID | if level == 3 { DESC_TABLE } else { 0 };
                // SAFETY: as above.
                unsafe { slot.write_volatile(leaf) };
                return Ok(addr + size);
            }
            if desc & DESC_VALID == 0 {
                let next = alloc.alloc().ok_or(S1Error::OutOfTables)?;
                // The walker must see the new table's zeros before the entry linking it.
                alloc.publish();
                // SAFETY: as above.
                unsafe { slot.write_volatile(next.get() | DESC_TABLE | DESC_VALID) };
                table = next;
                continue;
            }
            if level == 3 || desc & DESC_TABLE == 0 {
                // An existing leaf (page, or block at L1/L2): must match exactly.
                let leaf_size = size;
                let base = addr & !(leaf_size - 1);
                let want =
                    base | attr.bits() | DESC_VALID | if level == 3 { DESC_TABLE } else { 0 };
                if desc != want {
                    return Err(S1Error::Conflict);
                }
                return Ok((base + leaf_size).min(end));
            }
            table = PhysAddr(desc & OA_MASK);
        }
        Err(S1Error::BadRange)
    }

    /// Looks up `va`: the output address and leaf descriptor, for tests and diagnostics.
    pub fn lookup(&self, alloc: &impl TableAlloc, va: u64) -> Option<(u64, u64)> {
        let mut table = self.root;
        for level in 0..4u32 {
            let shift = 39 - 9 * level;
            let index = ((va >> shift) & (ENTRIES as u64 - 1)) as usize;
            // SAFETY: `table` is a table page of this map and `index` < 512.
            let desc = unsafe { alloc.ptr(table).wrapping_add(index).read_volatile() };
            if desc & DESC_VALID == 0 {
                return None;
            }
            if level < 3 && desc & DESC_TABLE != 0 {
                table = PhysAddr(desc & OA_MASK);
                continue;
            }
            let size = 1u64 << shift;
            return Some(((desc & OA_MASK & !(size - 1)) | (va & (size - 1)), desc));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// Table pages, with a memory-order model: a page's zeroing is unpublished until the
    /// next `publish` (DSB ISHST). The map descends into a table (`ptr`) only through the
    /// entry it just wrote or read, so reaching a non-root table that is still unpublished
    /// means the walker could have seen the link before the zeros.
    struct Arena {
        pages: RefCell<Vec<Box<[u64; 512]>>>,
        /// Pages allocated before the last `publish`.
        published: core::cell::Cell<usize>,
        violations: RefCell<Vec<std::string::String>>,
    }
    const ARENA_BASE: u64 = 0x7000_0000_0000;

    impl Arena {
        fn new() -> Self {
            Self {
                pages: RefCell::new(Vec::new()),
                published: core::cell::Cell::new(0),
                violations: RefCell::new(Vec::new()),
            }
        }
        fn count(&self) -> usize {
            self.pages.borrow().len()
        }
    }

    impl TableAlloc for Arena {
        fn alloc(&mut self) -> Option<PhysAddr> {
            let mut p = self.pages.borrow_mut();
            if p.len() >= 64 {
                return None;
            }
            p.push(Box::new([0; 512]));
            Some(PhysAddr(ARENA_BASE + (p.len() as u64 - 1) * PAGE))
        }
        fn ptr(&self, pa: PhysAddr) -> *mut u64 {
            let i = ((pa.get() - ARENA_BASE) / PAGE) as usize;
            if i != 0 && i >= self.published.get() {
                self.violations.borrow_mut().push(std::format!(
                    "table {pa:?} linked before its zeros were published"
                ));
            }
            self.pages.borrow_mut()[i].as_mut_ptr()
        }
        fn publish(&mut self) {
            self.published.set(self.pages.borrow().len());
        }
    }

    #[test]
    fn new_tables_are_published_before_they_are_linked() {
        let mut a = Arena::new();
        let mut m = IdMap::new(&mut a).unwrap();
        // Pages at both ends of a 2 MiB region and a block between: L1, L2, L3 tables.
        m.map(
            &mut a,
            PhysRange::new(0x4000_0000 - PAGE, 0x20_0000 + 2 * PAGE),
            S1Attr::NormalRw,
        )
        .unwrap();
        m.map(&mut a, PhysRange::new(0x9_0000_0000, PAGE), S1Attr::Device)
            .unwrap();
        assert!(a.count() > 4, "tables were linked");
        assert_eq!(
            *a.violations.borrow(),
            std::vec::Vec::<std::string::String>::new()
        );
        assert_eq!(a.published.get(), a.count(), "published when map returns");
    }

    #[test]
    fn blocks_and_pages() {
        let mut a = Arena::new();
        let mut m = IdMap::new(&mut a).unwrap();
        // 1 GiB-aligned GiB: one L1 block.
        m.map(
            &mut a,
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
        m.map(&mut a, PhysRange::new(0x0900_0000, 0x1000), S1Attr::Device)
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
        let mut a = Arena::new();
        let mut m = IdMap::new(&mut a).unwrap();
        m.map(
            &mut a,
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
        let mut a = Arena::new();
        let mut m = IdMap::new(&mut a).unwrap();
        let r = PhysRange::new(0x4000_0000, 0x20_0000);
        m.map(&mut a, r, S1Attr::NormalRw).unwrap();
        let before = a.count();
        m.map(
            &mut a,
            PhysRange::new(0x4000_1000, 0x1000),
            S1Attr::NormalRw,
        )
        .unwrap();
        assert_eq!(a.count(), before);
        assert_eq!(
            m.map(&mut a, PhysRange::new(0x4000_1000, 0x1000), S1Attr::Device),
            Err(S1Error::Conflict)
        );
    }

    #[test]
    fn exhaustion_and_bad_ranges_are_errors() {
        let mut a = Arena::new();
        let mut m = IdMap::new(&mut a).unwrap();
        assert_eq!(
            m.map(&mut a, PhysRange::new(u64::MAX - 10, 100), S1Attr::NormalRw),
            Err(S1Error::BadRange)
        );
        assert_eq!(
            m.map(&mut a, PhysRange::new(1 << 48, 4096), S1Attr::NormalRw),
            Err(S1Error::BadRange)
        );
        // Scatter pages across many 512 GiB regions until tables run out.
        let mut err = None;
        for i in 0..100u64 {
            if let Err(e) = m.map(&mut a, PhysRange::new(i << 39, 4096), S1Attr::Device) {
                err = Some(e);
                break;
            }
        }
        assert_eq!(err, Some(S1Error::OutOfTables));
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
