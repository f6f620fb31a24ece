//! Page ownership as state kept in the host stage-2: the [`PageState`] enum, its encoding
//! in descriptors, the one visitor that checks "every page of a range is in state S", and
//! the *prepare* half of a transition's table changes (how many tables a map or unmap
//! will allocate, and those tables allocated in advance, so that the change itself cannot
//! run out of memory).
//!
//! # Encoding
//!
//! The state of a RAM page is read from the host stage-2 leaf (or invalid entry) that
//! covers it; nothing else is needed on the host side.
//!
//! | host stage-2 entry                                   | SW bits 58:55 | state                     |
//! |------------------------------------------------------|---------------|---------------------------|
//! | leaf, identity, [`HOST_RAM`] attributes              | `0b0000`      | [`PageState::HostOwned`]  |
//! | leaf, identity, [`HOST_RAM`] attributes              | `0b0001`      | [`PageState::HostSharedWithHyp`] (reserved) |
//! | leaf, identity, [`HOST_RAM`] attributes              | `0b0010`      | [`PageState::HostBorrowed`] (reserved) |
//! | leaf, identity, [`HOST_RAM`] attributes              | other         | [`PageState::Other`] (reserved encodings) |
//! | invalid, all bits zero                               | —             | [`PageState::HypOwned`]   |
//! | invalid, any bit set (owner annotation, for guests)  | —             | [`PageState::Other`]      |
//! | anything else (device memory, not identity, …)       | —             | [`PageState::Other`]      |
//!
//! Warden's pages are the host's *unmapped* RAM: an invalid descriptor carries no owner,
//! so an all-zero invalid entry over RAM means "Warden's". Which of Warden's pages it is
//! (its image and pool carve-out, a donated page, a page withheld after an unconfirmed
//! invalidation) is Warden's own ledger ([`HostMem`](crate::host_mem::HostMem)), checked
//! as the second side of every transition. The state is only defined for RAM: callers
//! check that a range is RAM first (an MMIO hole is unmapped too).
//!
//! Room for more owners: guests' pages will also be unmapped in the host stage-2, with the
//! owner's id annotated in the invalid descriptor (bits 9:2, valid bit clear, as pKVM
//! does); such entries already decode as [`PageState::Other`], never as Warden's. The
//! table code writes only all-zero invalid descriptors today. Shared states keep the page
//! mapped and differ only in the SW bits: changing them needs no break-before-make and
//! no TLB invalidation.
//!
//! DMA pins are not a page state: a pinned page is [`PageState::HostOwned`] with a
//! non-zero count in [`PinSet`](crate::pins::PinSet) (a count does not fit in 4 bits,
//! and the host keeps full access to a pinned page; what the pin forbids is a change of
//! owner).
//!
//! # Prepare, then commit
//!
//! [`Stage2::map`] and [`Stage2::unmap`] allocate a table where a block must be split or
//! an invalid entry must hold a partial mapping; nothing else can fail once the
//! arguments are checked. [`tables_to_map`] and [`tables_to_unmap`] count those
//! allocations exactly (they follow the table code's rules: largest leaf that fits, an
//! entry that already maps as asked is kept), and [`PreparedTables`] allocates them up
//! front and hands them out during the change: the change draws from nothing else, so it
//! cannot run out halfway, and tables it did not use go back when it is dropped. An
//! unmap may free a table (one it covers whole) before it splits a later block: prepared
//! with room ([`PreparedTables::with_room`]), the freed table is taken back and handed
//! out again, so that [`fresh_tables_to_unmap`] is all a donation needs from the pool.

use core::ops::ControlFlow;

use crate::addr::{Ipa, PhysAddr, PhysRange};
use crate::s2mmu::{Descriptor, S2Attrs, S2Error, S2Geometry, Stage2, TableMemory};
use alloc::vec::Vec;

/// Attributes of host-owned RAM in the host stage-2 (SW bits `0b0000`).
pub const HOST_RAM: S2Attrs = S2Attrs::NORMAL_RWX;

/// The owner of one 4 KiB RAM page, as the host stage-2 records it (see the module docs
/// for the encoding).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PageState {
    /// Mapped for the host, which owns it alone (it may be DMA-pinned).
    HostOwned,
    /// Reserved: owned by the host and shared with Warden (mapped; not produced yet).
    HostSharedWithHyp,
    /// Reserved: lent to the host by another owner (mapped; not produced yet).
    HostBorrowed,
    /// Not mapped in the host stage-2: Warden's (for RAM).
    HypOwned,
    /// Any other entry: device memory, a mapping that is not the host's RAM identity, a
    /// reserved SW encoding, an annotated invalid entry. Never an owner of RAM.
    Other,
}

impl PageState {
    /// Every state a transition can ask for, in encoding order (tests iterate over it).
    pub const ALL: [PageState; 5] = [
        PageState::HostOwned,
        PageState::HostSharedWithHyp,
        PageState::HostBorrowed,
        PageState::HypOwned,
        PageState::Other,
    ];

    /// The SW-bit value of a mapped state; `None` for states that are not mapped.
    pub const fn sw_bits(self) -> Option<u8> {
        match self {
            PageState::HostOwned => Some(0b0000),
            PageState::HostSharedWithHyp => Some(0b0001),
            PageState::HostBorrowed => Some(0b0010),
            PageState::HypOwned | PageState::Other => None,
        }
    }

    /// The host stage-2 attributes of a mapped state ([`HOST_RAM`] with its SW bits).
    pub const fn host_attrs(self) -> Option<S2Attrs> {
        match self.sw_bits() {
            Some(sw) => Some(HOST_RAM.with_sw(sw)),
            None => None,
        }
    }

    /// The state of the pages under the host stage-2 entry `desc` at `level`, whose span
    /// starts at `ipa` (as [`Stage2::walk`] reports it). Table descriptors are not page
    /// states: they decode as [`Other`](Self::Other).
    pub fn of(ipa: Ipa, desc: Descriptor, level: u8) -> PageState {
        if !desc.is_valid() {
            return if desc == Descriptor::INVALID {
                PageState::HypOwned
            } else {
                PageState::Other
            };
        }
        if !desc.is_leaf(level) || desc.address().get() != ipa.get() {
            return PageState::Other;
        }
        let attrs = desc.attrs();
        if attrs.with_sw(0) != HOST_RAM {
            return PageState::Other;
        }
        match attrs.sw() {
            0b0000 => PageState::HostOwned,
            0b0001 => PageState::HostSharedWithHyp,
            0b0010 => PageState::HostBorrowed,
            _ => PageState::Other,
        }
    }
}

/// Visits the states of `r` in the host stage-2 `s2`, in address order: `f` gets each
/// part of `r` that one entry covers, and its state, and may stop the walk. `Err` when
/// `r` is not inside the IPA space.
pub fn visit_states<M, B>(
    s2: &Stage2,
    mem: &M,
    r: PhysRange,
    mut f: impl FnMut(PhysRange, PageState) -> ControlFlow<B>,
) -> Result<ControlFlow<B>, S2Error>
where
    M: TableMemory + ?Sized,
{
    let geom = s2.geometry();
    let end = r
        .base
        .get()
        .checked_add(r.size)
        .ok_or(S2Error::OutOfRange)?;
    s2.walk(mem, Ipa(r.base.get()), r.size, |ipa, desc, level| {
        if desc.is_table(level) {
            return ControlFlow::Continue(());
        }
        let span_end = ipa.get().saturating_add(geom.entry_size(level));
        let from = ipa.get().max(r.base.get());
        let to = span_end.min(end);
        f(
            PhysRange::new(from, to - from),
            PageState::of(ipa, desc, level),
        )
    })
}

/// Whether every page of `r` is in state `want` in the host stage-2 (the check every
/// ownership transition makes on the host side). An empty range is; a range outside the
/// IPA space is not.
pub fn range_is<M: TableMemory + ?Sized>(
    s2: &Stage2,
    mem: &M,
    r: PhysRange,
    want: PageState,
) -> bool {
    matches!(
        visit_states(s2, mem, r, |_, state| {
            if state == want {
                ControlFlow::Continue(())
            } else {
                ControlFlow::Break(())
            }
        }),
        Ok(ControlFlow::Continue(()))
    )
}

/// Tables [`Stage2::map`] allocates to map `r` identity (IPA = PA) with `attrs`, given
/// the table's current contents.
pub fn tables_to_map<M: TableMemory + ?Sized>(
    s2: &Stage2,
    mem: &M,
    r: PhysRange,
    attrs: S2Attrs,
) -> Result<usize, S2Error> {
    let geom = s2.geometry();
    count(s2, mem, r, |base, desc, level, from, to| {
        let whole = from == base && to == base + geom.entry_size(level);
        if desc.is_leaf(level) && desc.attrs() == attrs && desc.address().get() == base {
            // Already maps its part exactly as asked: kept.
            0
        } else if desc.is_table(level) {
            // The walk goes on into the table (a whole entry may become a leaf: nothing
            // to allocate below it either).
            0
        } else if whole && geom.leaf_size(level).is_some() {
            0
        } else {
            map_need(&geom, level, from, to)
        }
    })
}

/// Tables [`Stage2::unmap`] allocates to unmap `r`, given the table's current contents
/// (one per split block, at each end of the range).
pub fn tables_to_unmap<M: TableMemory + ?Sized>(
    s2: &Stage2,
    mem: &M,
    r: PhysRange,
) -> Result<usize, S2Error> {
    unmap_table_needs(s2, mem, r).map(|(need, _)| need)
}

/// Fresh tables to prepare for [`Stage2::unmap`] of `r`: see [`unmap_table_needs`].
pub fn fresh_tables_to_unmap<M: TableMemory + ?Sized>(
    s2: &Stage2,
    mem: &M,
    r: PhysRange,
) -> Result<usize, S2Error> {
    unmap_table_needs(s2, mem, r).map(|(_, fresh)| fresh)
}

/// In one walk of `r`: the tables [`Stage2::unmap`] allocates (as [`tables_to_unmap`]),
/// and the fresh ones to prepare when it runs through
/// [`PreparedTables::with_room`]`(.., fresh, need)`: the splits' allocations less those a
/// table freed earlier in the same walk can serve. The walk goes in address order, and a
/// table whose whole span lies inside `r` is freed (after its invalidation completed)
/// when the walk reaches it, before any later split; the prepared tables take it back
/// and hand it out again, as the pool did when the walk drew from it as it went. Tables
/// emptied by the unmap are not counted (they may be freed too: never fewer tables than
/// needed).
pub fn unmap_table_needs<M: TableMemory + ?Sized>(
    s2: &Stage2,
    mem: &M,
    r: PhysRange,
) -> Result<(usize, usize), S2Error> {
    let geom = s2.geometry();
    let (mut fresh, mut freed) = (0usize, 0usize);
    let need = count(s2, mem, r, |base, desc, level, from, to| {
        let whole = from == base && to == base + geom.entry_size(level);
        if desc.is_leaf(level) && !whole {
            let n = unmap_need(&geom, level, from, to);
            let reused = n.min(freed);
            freed -= reused;
            fresh = fresh.saturating_add(n - reused);
            n
        } else {
            if desc.is_table(level) && whole {
                freed = freed.saturating_add(1);
            }
            0
        }
    })?;
    Ok((need, fresh))
}

/// Sums `need(entry base, descriptor, level, from, to)` over the entries that intersect
/// `r` (`[from, to)` is the intersection), after checking `r` as the table code will
/// (granule-aligned, inside the IPA and PA spaces).
fn count<M: TableMemory + ?Sized>(
    s2: &Stage2,
    mem: &M,
    r: PhysRange,
    mut need: impl FnMut(u64, Descriptor, u8, u64, u64) -> usize,
) -> Result<usize, S2Error> {
    let geom = s2.geometry();
    // The checks `Stage2::map` / `unmap` make, so that the change that follows cannot
    // fail on them either.
    let granule = geom.granule().size();
    if !r.base.get().is_multiple_of(granule) || !r.size.is_multiple_of(granule) {
        return Err(S2Error::Misaligned);
    }
    let end = r
        .base
        .get()
        .checked_add(r.size)
        .ok_or(S2Error::OutOfRange)?;
    if end > 1u64 << geom.pa_bits() {
        return Err(S2Error::OutOfRange);
    }
    let mut total = 0usize;
    let _: ControlFlow<()> = s2.walk(mem, Ipa(r.base.get()), r.size, |ipa, desc, level| {
        let base = ipa.get();
        let from = base.max(r.base.get());
        let to = base.saturating_add(geom.entry_size(level)).min(end);
        total = total.saturating_add(need(base, desc, level, from, to));
        ControlFlow::Continue(())
    })?;
    Ok(total)
}

/// The child entries (one level below `level`) that `[from, to)` covers: the parts of
/// the partly covered ones (at most one at each end) and the number of whole ones.
fn children(geom: &S2Geometry, level: u8, from: u64, to: u64) -> ([Option<(u64, u64)>; 2], u64) {
    let cs = geom.entry_size(level + 1);
    let first = from & !(cs - 1);
    let last = (to - 1) & !(cs - 1);
    let part = |b: u64| {
        let (f, t) = (from.max(b), to.min(b + cs));
        (f != b || t != b + cs).then_some((f, t))
    };
    let head = part(first);
    let tail = if last != first { part(last) } else { None };
    let spanned = (last - first) / cs + 1;
    let whole = spanned - head.is_some() as u64 - tail.is_some() as u64;
    ([head, tail], whole)
}

/// Tables to map `[from, to)` inside an entry at `level` (invalid, or a leaf that does
/// not map as asked) that cannot take one leaf: a new table, then the same one level
/// down for the child entries that are not covered whole by a leaf.
fn map_need(geom: &S2Geometry, level: u8, from: u64, to: u64) -> usize {
    if level >= 3 {
        return 0;
    }
    let (parts, whole) = children(geom, level, from, to);
    let mut n = 1usize;
    for (f, t) in parts.into_iter().flatten() {
        n = n.saturating_add(map_need(geom, level + 1, f, t));
    }
    let per_whole = map_whole_need(geom, level + 1);
    n.saturating_add(per_whole.saturating_mul(whole as usize))
}

/// Tables to map a whole entry at `level` (no leaf allowed there: a table, and so on).
fn map_whole_need(geom: &S2Geometry, level: u8) -> usize {
    if level >= 3 || geom.leaf_size(level).is_some() {
        return 0;
    }
    let entries = (geom.entry_size(level) / geom.entry_size(level + 1)) as usize;
    1usize.saturating_add(entries.saturating_mul(map_whole_need(geom, level + 1)))
}

/// Tables to unmap `[from, to)`, a part of a block at `level`: the block becomes a table
/// of smaller leaves, and the partly covered ones are split the same way.
fn unmap_need(geom: &S2Geometry, level: u8, from: u64, to: u64) -> usize {
    if level >= 3 {
        return 0;
    }
    let (parts, _) = children(geom, level, from, to);
    let mut n = 1usize;
    for (f, t) in parts.into_iter().flatten() {
        n = n.saturating_add(unmap_need(geom, level + 1, f, t));
    }
    n
}

/// No memory to prepare a change (the crate's one out-of-memory error).
pub use crate::frames::NoMem;

/// Granule-sized tables allocated before a table change, and the memory they came from:
/// a [`TableMemory`] whose allocations are served from those tables only (everything
/// else is forwarded). A change run through it that was counted by [`tables_to_map`] /
/// [`tables_to_unmap`] cannot run out of memory. Unused tables go back on drop.
pub struct PreparedTables<'a, M: TableMemory + ?Sized> {
    mem: &'a mut M,
    tables: Vec<PhysAddr>,
    size: usize,
}

impl<'a, M: TableMemory + ?Sized> PreparedTables<'a, M> {
    /// Allocates `n` tables of `geom`'s granule from `mem` (each inside the output range,
    /// as the table code requires). NOMEM, with everything given back, if `mem` or the
    /// heap (for the list) runs out.
    pub fn new(mem: &'a mut M, geom: S2Geometry, n: usize) -> Result<Self, NoMem> {
        Self::with_room(mem, geom, n, n)
    }

    /// [`new`](Self::new), with room to hold `room` tables (at least `n`): a granule
    /// table the change frees while fewer are held goes back into the prepared ones
    /// (zeroed again) instead of to `mem`, so that a later allocation of the same change
    /// can have it (see [`fresh_tables_to_unmap`]). The room is reserved here: taking a
    /// table back never allocates.
    pub fn with_room(
        mem: &'a mut M,
        geom: S2Geometry,
        n: usize,
        room: usize,
    ) -> Result<Self, NoMem> {
        let size = geom.granule().size() as usize;
        let mut tables = Vec::new();
        tables.try_reserve_exact(n.max(room)).map_err(|_| NoMem)?;
        let mut prepared = Self { mem, tables, size };
        for _ in 0..n {
            let pa = prepared.mem.alloc_zeroed(size, size).ok_or(NoMem)?;
            let fits = pa
                .checked_add(size as u64)
                .is_some_and(|end| end.get() <= 1u64 << geom.pa_bits());
            if !pa.is_aligned(size as u64) || !fits {
                // SAFETY: `pa` was just allocated with `size` and nothing refers to it.
                unsafe { prepared.mem.free(pa, size) };
                return Err(NoMem);
            }
            // Capacity reserved above: no allocation.
            prepared.tables.push(pa);
        }
        Ok(prepared)
    }

    /// Tables not handed out yet.
    pub fn left(&self) -> usize {
        self.tables.len()
    }
}

impl<M: TableMemory + ?Sized> Drop for PreparedTables<'_, M> {
    fn drop(&mut self) {
        while let Some(pa) = self.tables.pop() {
            // SAFETY: allocated from `self.mem` with `self.size` bytes in `new` and never
            // handed out: nothing refers to it.
            unsafe { self.mem.free(pa, self.size) };
        }
    }
}

// SAFETY: every allocation handed out is a live allocation of `mem` of `size` bytes,
// aligned to its size, all zero (never written since `alloc_zeroed` zeroed it, or zeroed
// again when taken back in `free`), and held by nobody else (a table taken back was
// given up by the caller, under `free`'s contract); everything else is `mem`'s own.
unsafe impl<M: TableMemory + ?Sized> TableMemory for PreparedTables<'_, M> {
    fn alloc_zeroed(&mut self, size: usize, align: usize) -> Option<PhysAddr> {
        if size != self.size || align > size {
            return None;
        }
        self.tables.pop()
    }

    unsafe fn free(&mut self, pa: PhysAddr, size: usize) {
        if size == self.size && self.tables.len() < self.tables.capacity() {
            // Taken back for a later allocation of this change: zeroed as a fresh one.
            let p = self.mem.table_ptr(pa);
            for i in 0..size / 8 {
                // SAFETY: `pa` is a live `size`-byte allocation of `mem` that nothing
                // refers to any more (the caller's contract), so `p` is valid for all
                // of it.
                unsafe { p.add(i).write_volatile(0) };
            }
            self.mem.clean(pa, size);
            // Within the capacity reserved in `with_room`: no allocation.
            self.tables.push(pa);
            return;
        }
        // SAFETY: forwarded under the caller's contract (every allocation is `mem`'s).
        unsafe { self.mem.free(pa, size) }
    }

    fn table_ptr(&self, pa: PhysAddr) -> *mut u64 {
        self.mem.table_ptr(pa)
    }

    fn clean(&mut self, pa: PhysAddr, size: usize) {
        self.mem.clean(pa, size)
    }

    fn set_noncoherent_walker(&mut self) {
        self.mem.set_noncoherent_walker()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::s2mmu::{Granule, NoTlb};
    use crate::testutil::Arena;
    use proptest::prelude::*;
    use std::vec;

    use crate::PAGE;
    const MB: u64 = 1 << 20;
    const GB: u64 = 1 << 30;
    /// RAM: two 1 GiB blocks and then 2 MiB blocks, as a boot map makes them.
    const RAM: PhysRange = PhysRange::new(GB, 2 * GB + 6 * MB);

    fn tree(arena: &mut Arena) -> Stage2 {
        let geom = S2Geometry::new(Granule::Size4K, 40, 40).unwrap();
        // SAFETY: every later call passes this same arena.
        let mut s2 = unsafe { Stage2::new(geom, arena) }.unwrap();
        s2.map(
            arena,
            &mut NoTlb,
            Ipa(RAM.base.get()),
            RAM.base,
            RAM.size,
            HOST_RAM,
        )
        .unwrap();
        s2
    }

    /// A page descriptor at level 3 for `pa` with `attrs`.
    fn page(pa: u64, attrs: S2Attrs) -> Descriptor {
        Descriptor::from_bits(pa | attrs.bits() | 0b11)
    }

    #[test]
    fn every_sw_encoding_decodes_to_its_state_or_other() {
        let pa = 0x4000_0000;
        for sw in 0..16u8 {
            let state = PageState::of(Ipa(pa), page(pa, HOST_RAM.with_sw(sw)), 3);
            let want = PageState::ALL
                .into_iter()
                .find(|s| s.sw_bits() == Some(sw))
                .unwrap_or(PageState::Other);
            assert_eq!(state, want, "sw {sw:#06b}");
        }
        for s in PageState::ALL {
            if let Some(attrs) = s.host_attrs() {
                assert_eq!(attrs.sw(), s.sw_bits().unwrap());
                assert_eq!(PageState::of(Ipa(pa), page(pa, attrs), 3), s, "round trip");
            } else {
                assert!(s.sw_bits().is_none());
            }
        }
        assert_eq!(PageState::HostOwned.host_attrs(), Some(HOST_RAM));
        // Not the host's RAM identity: never an owner.
        let other = [
            page(pa + PAGE, HOST_RAM),                          // not identity
            page(pa, S2Attrs::DEVICE_RW),                       // device memory
            page(pa, S2Attrs::NORMAL_RW),                       // other permissions
            Descriptor::from_bits(0b10 << 2),                   // annotated invalid (a guest's)
            Descriptor::from_bits(pa | HOST_RAM.bits() | 0b01), // a block at L3 is invalid
        ];
        for d in other {
            assert_eq!(PageState::of(Ipa(pa), d, 3), PageState::Other, "{d:?}");
        }
        assert_eq!(
            PageState::of(Ipa(pa), Descriptor::INVALID, 3),
            PageState::HypOwned
        );
        // A block: identity means its output is the span's first address.
        let block = Descriptor::from_bits(pa | HOST_RAM.bits() | 0b01);
        assert_eq!(PageState::of(Ipa(pa), block, 2), PageState::HostOwned);
        assert_eq!(PageState::of(Ipa(pa + 2 * MB), block, 2), PageState::Other);
    }

    #[test]
    fn the_visitor_sees_each_page_in_its_state() {
        let mut arena = Arena::new(4 << 20);
        let mut s2 = tree(&mut arena);
        let shared = GB + 2 * MB + 5 * PAGE;
        let hole = 2 * GB + 7 * PAGE;
        s2.map(
            &mut arena,
            &mut NoTlb,
            Ipa(shared),
            PhysAddr(shared),
            2 * PAGE,
            PageState::HostSharedWithHyp.host_attrs().unwrap(),
        )
        .unwrap();
        s2.unmap(&mut arena, &mut NoTlb, Ipa(hole), 3 * PAGE)
            .unwrap();
        let r = PhysRange::new(GB, 2 * GB);
        let mut seen = vec![];
        let flow = visit_states(&s2, &arena, r, |part, state| {
            seen.push((part, state));
            ControlFlow::<()>::Continue(())
        });
        assert_eq!(flow, Ok(ControlFlow::Continue(())));
        // The parts tile the range, in order.
        let mut at = r.base.get();
        for (part, _) in &seen {
            assert_eq!(part.base.get(), at);
            at = part.end();
        }
        assert_eq!(at, r.end());
        let state_at = |pa: u64| {
            seen.iter()
                .find(|(p, _)| p.contains(pa))
                .map(|&(_, s)| s)
                .unwrap()
        };
        assert_eq!(state_at(GB), PageState::HostOwned);
        assert_eq!(state_at(shared), PageState::HostSharedWithHyp);
        assert_eq!(state_at(shared + PAGE), PageState::HostSharedWithHyp);
        assert_eq!(state_at(shared + 2 * PAGE), PageState::HostOwned);
        for i in 0..3 {
            assert_eq!(state_at(hole + i * PAGE), PageState::HypOwned);
        }
        assert_eq!(state_at(hole + 3 * PAGE), PageState::HostOwned);
        // The check: whole range, parts, empty, beyond the IPA space, outside RAM.
        assert!(!range_is(&s2, &arena, r, PageState::HostOwned));
        assert!(range_is(
            &s2,
            &arena,
            PhysRange::new(hole, 3 * PAGE),
            PageState::HypOwned
        ));
        assert!(!range_is(
            &s2,
            &arena,
            PhysRange::new(hole, 4 * PAGE),
            PageState::HypOwned
        ));
        assert!(range_is(
            &s2,
            &arena,
            PhysRange::new(GB, 2 * MB + 5 * PAGE),
            PageState::HostOwned
        ));
        assert!(range_is(
            &s2,
            &arena,
            PhysRange::new(hole, 0),
            PageState::Other
        ));
        assert!(!range_is(
            &s2,
            &arena,
            PhysRange::new(1 << 40, PAGE),
            PageState::HypOwned
        ));
        assert!(range_is(
            &s2,
            &arena,
            PhysRange::new(0, GB),
            PageState::HypOwned
        ));
    }

    /// A table memory that counts allocations.
    struct Counting<'a> {
        inner: &'a mut Arena,
        allocs: usize,
    }

    // SAFETY: forwards to the arena.
    unsafe impl TableMemory for Counting<'_> {
        fn alloc_zeroed(&mut self, size: usize, align: usize) -> Option<PhysAddr> {
            self.allocs += 1;
            self.inner.alloc_zeroed(size, align)
        }
        unsafe fn free(&mut self, pa: PhysAddr, size: usize) {
            // SAFETY: forwarded under the caller's contract.
            unsafe { self.inner.free(pa, size) }
        }
        fn table_ptr(&self, pa: PhysAddr) -> *mut u64 {
            self.inner.table_ptr(pa)
        }
    }

    #[test]
    fn prepared_tables_go_back_unused_and_nomem_leaves_nothing() {
        let mut arena = Arena::new(1 << 20);
        let s2 = tree(&mut arena);
        let live = arena.live_count();
        {
            let mut p = PreparedTables::new(&mut arena, s2.geometry(), 3).unwrap();
            assert_eq!(p.left(), 3);
            assert!(p.alloc_zeroed(4096, 4096).is_some());
            assert!(p.alloc_zeroed(8192, 8192).is_none(), "only granule tables");
            assert_eq!(p.left(), 2);
        }
        assert_eq!(arena.live_count(), live + 1, "the one handed out stays");
        arena.budget = Some(2);
        assert!(PreparedTables::new(&mut arena, s2.geometry(), 3).is_err());
        assert_eq!(arena.live_count(), live + 1, "nothing kept on NOMEM");
        arena.budget = None;
        // With room, a table the change frees goes back into the prepared ones, zeroed.
        {
            let mut p = PreparedTables::with_room(&mut arena, s2.geometry(), 0, 1).unwrap();
            let t = p.mem.alloc_zeroed(4096, 4096).unwrap();
            // SAFETY: `t` is a live page of the arena that nothing else uses.
            unsafe { p.table_ptr(t).add(7).write(0x7ff) };
            // SAFETY: allocated from the same arena above, never linked.
            unsafe { p.free(t, 4096) };
            assert_eq!(p.left(), 1, "taken back");
            let again = p.alloc_zeroed(4096, 4096).unwrap();
            assert_eq!(again, t);
            // SAFETY: `again` is a live page of the arena.
            let word = unsafe { p.table_ptr(again).add(7).read() };
            assert_eq!(word, 0, "zeroed again");
            let u = p.mem.alloc_zeroed(4096, 4096).unwrap();
            // SAFETY: handed out above, never linked: taken back (room for one).
            unsafe { p.free(again, 4096) };
            // SAFETY: allocated from the same arena above, never linked; no room left
            // (one table held): freed to the arena.
            unsafe { p.free(u, 4096) };
            assert_eq!(p.left(), 1, "room for one only");
        }
        assert_eq!(
            arena.live_count(),
            live + 1,
            "the taken-back table went back on drop"
        );
        // The counts check what the change will check.
        let odd = PhysRange::new(GB + 512, PAGE);
        assert_eq!(tables_to_unmap(&s2, &arena, odd), Err(S2Error::Misaligned));
        assert_eq!(
            tables_to_map(&s2, &arena, odd, HOST_RAM),
            Err(S2Error::Misaligned)
        );
        let beyond = PhysRange::new((1 << 40) - PAGE, 2 * PAGE);
        assert_eq!(
            tables_to_unmap(&s2, &arena, beyond),
            Err(S2Error::OutOfRange)
        );
        assert_eq!(
            fresh_tables_to_unmap(&s2, &arena, beyond),
            Err(S2Error::OutOfRange)
        );
        assert_eq!(
            fresh_tables_to_unmap(&s2, &arena, odd),
            Err(S2Error::Misaligned)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
        /// The counts are exact: a change allocates exactly what was counted, so the
        /// prepared tables are all used and never fall short.
        #[test]
        fn table_counts_match_what_map_and_unmap_allocate(
            ops in proptest::collection::vec(
                (0u64..(RAM.size / PAGE), prop_oneof![1u64..8, 1u64..600, 1u64..300_000], 0u8..3),
                1..24,
            )
        ) {
            let mut arena = Arena::new(8 << 20);
            let mut s2 = tree(&mut arena);
            for (start, pages, kind) in ops {
                let base = RAM.base.get() + start * PAGE;
                let size = pages.min(RAM.end().saturating_sub(base) / PAGE).max(1) * PAGE;
                let r = PhysRange::new(base, size);
                let attrs = if kind == 1 { HOST_RAM.with_sw(1) } else { HOST_RAM };
                let need = if kind == 2 {
                    tables_to_unmap(&s2, &arena, r).unwrap()
                } else {
                    tables_to_map(&s2, &arena, r, attrs).unwrap()
                };
                let mut counting = Counting { inner: &mut arena, allocs: 0 };
                if kind == 2 {
                    s2.unmap(&mut counting, &mut NoTlb, Ipa(base), size).unwrap();
                } else {
                    s2.map(&mut counting, &mut NoTlb, Ipa(base), r.base, size, attrs).unwrap();
                }
                prop_assert_eq!(counting.allocs, need, "kind {} {:?}", kind, r);
                // And through prepared tables, the same change again (idempotent: needs
                // nothing now) succeeds with none.
                let need = if kind == 2 {
                    tables_to_unmap(&s2, &arena, r).unwrap()
                } else {
                    tables_to_map(&s2, &arena, r, attrs).unwrap()
                };
                prop_assert_eq!(need, 0);
                let mut none = PreparedTables::new(&mut arena, s2.geometry(), 0).unwrap();
                if kind == 2 {
                    prop_assert!(s2.unmap(&mut none, &mut NoTlb, Ipa(base), size).is_ok());
                } else {
                    prop_assert!(s2.map(&mut none, &mut NoTlb, Ipa(base), r.base, size, attrs).is_ok());
                }
            }
        }

        /// An unmap run through tables prepared as [`fresh_tables_to_unmap`] says (with
        /// room for [`tables_to_unmap`]) never falls short, and draws exactly the fresh
        /// ones from memory: the rest are tables it freed on the way, handed out again.
        #[test]
        fn unmaps_through_prepared_tables_draw_only_the_fresh_ones(
            ops in proptest::collection::vec(
                (0u64..(RAM.size / PAGE), prop_oneof![1u64..8, 1u64..600, 1u64..300_000], 0u8..3),
                1..24,
            )
        ) {
            let mut arena = Arena::new(8 << 20);
            let mut s2 = tree(&mut arena);
            let geom = s2.geometry();
            for (start, pages, kind) in ops {
                let base = RAM.base.get() + start * PAGE;
                let size = pages.min(RAM.end().saturating_sub(base) / PAGE).max(1) * PAGE;
                let r = PhysRange::new(base, size);
                if kind != 2 {
                    // Maps and unmaps of small runs leave level-3 tables about.
                    let attrs = if kind == 1 { HOST_RAM.with_sw(1) } else { HOST_RAM };
                    let small = PhysRange::new(base, size.min(64 * PAGE));
                    s2.map(&mut arena, &mut NoTlb, Ipa(base), r.base, small.size, attrs).unwrap();
                    if kind == 1 {
                        s2.unmap(&mut arena, &mut NoTlb, Ipa(base), PAGE).unwrap();
                    }
                    continue;
                }
                let need = tables_to_unmap(&s2, &arena, r).unwrap();
                let fresh = fresh_tables_to_unmap(&s2, &arena, r).unwrap();
                prop_assert!(fresh <= need);
                let mut counting = Counting { inner: &mut arena, allocs: 0 };
                {
                    let mut prepared =
                        PreparedTables::with_room(&mut counting, geom, fresh, need).unwrap();
                    prop_assert!(s2.unmap(&mut prepared, &mut NoTlb, Ipa(base), size).is_ok(), "{:?}", r);
                }
                prop_assert_eq!(counting.allocs, fresh, "{:?}", r);
                prop_assert!(range_is(&s2, &arena, r, PageState::HypOwned), "{:?}", r);
            }
        }
    }
}
