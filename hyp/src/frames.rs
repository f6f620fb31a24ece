//! The pages the host donated, as the page pool sees them: which ranges are donated (to
//! route a free to the right allocator) and which of their pages are free, both as
//! sorted lists of disjoint, merged runs.
//!
//! Memory (I6): nothing here allocates infallibly. Every operation that may need one
//! more list entry reserves it first (`try_reserve`) and, if that fails, changes
//! nothing: [`donate`](FramePool::donate) returns NOMEM, [`alloc`](FramePool::alloc) and
//! [`reclaim`](FramePool::reclaim) find nothing. A [`free`](FramePool::free) that cannot
//! be recorded leaves the pages allocated for good (counted in
//! [`lost_pages`](FramePool::lost_pages)): safe, and only under memory exhaustion.
//! Removing entries never shrinks a list's capacity, so a MEM_DONATE / MEM_RECLAIM pair
//! leaves the lists as long as before and allocates nothing once they have grown to
//! their working size: the heap's high-water mark stays put however many pairs the host
//! issues.

use crate::addr::{PhysAddr, PhysRange};
use alloc::vec::Vec;

/// Bytes per page: the crate's one `PAGE`.
pub use crate::PAGE;

/// No memory for the bookkeeping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoMem;

/// Donated ranges and their free pages.
#[derive(Debug, Default)]
pub struct FramePool {
    /// Donated ranges, sorted, disjoint, touching ones merged.
    ranges: Vec<PhysRange>,
    /// Free donated pages, sorted, disjoint, touching ones merged.
    free: Vec<PhysRange>,
    /// Pages whose free could not be recorded.
    lost: u64,
}

/// Inserts `r` into the sorted, merged list `v` (no overlap with any entry). Needs at most
/// one more entry: the caller reserved it.
fn insert_merged(v: &mut Vec<PhysRange>, r: PhysRange) {
    let i = v.partition_point(|x| x.end() <= r.base.get());
    debug_assert!(v.get(i).is_none_or(|x| x.base.get() >= r.end()), "overlap");
    let joins_prev = i > 0 && v[i - 1].end() == r.base.get();
    let joins_next = v.get(i).is_some_and(|x| x.base.get() == r.end());
    match (joins_prev, joins_next) {
        (true, true) => {
            let next = v.remove(i);
            v[i - 1].size += r.size + next.size;
        }
        (true, false) => v[i - 1].size += r.size,
        (false, true) => v[i] = PhysRange::new(r.base.get(), r.size + v[i].size),
        (false, false) => {
            debug_assert!(v.len() < v.capacity());
            v.insert(i, r);
        }
    }
}

/// Whether removing `part` from entry `i` of `v` splits it in two (needs one more entry).
fn splits(v: &[PhysRange], i: usize, part: PhysRange) -> bool {
    v[i].base.get() < part.base.get() && part.end() < v[i].end()
}

/// Removes `part`, inside entry `i`, from `v`. If that splits the entry the caller
/// reserved one more entry.
fn remove_part(v: &mut Vec<PhysRange>, i: usize, part: PhysRange) {
    let e = v[i];
    let left = PhysRange::new(e.base.get(), part.base.get() - e.base.get());
    let right = PhysRange::new(part.end(), e.end() - part.end());
    match (left.size != 0, right.size != 0) {
        (false, false) => {
            v.remove(i);
        }
        (true, false) => v[i] = left,
        (false, true) => v[i] = right,
        (true, true) => {
            debug_assert!(v.len() < v.capacity());
            v[i] = left;
            v.insert(i + 1, right);
        }
    }
}

/// Reserves room for `n` more entries (nothing to do if the capacity has it).
fn room(v: &mut Vec<PhysRange>, n: usize) -> Result<(), NoMem> {
    if v.capacity() - v.len() >= n {
        return Ok(());
    }
    v.try_reserve(n).map_err(|_| NoMem)
}

impl FramePool {
    /// Nothing donated.
    pub const fn new() -> Self {
        Self {
            ranges: Vec::new(),
            free: Vec::new(),
            lost: 0,
        }
    }

    /// Pages donated now (free or in use).
    pub fn donated_pages(&self) -> u64 {
        self.ranges.iter().map(|r| r.size / PAGE).sum()
    }

    /// Free donated pages.
    pub fn free_pages(&self) -> u64 {
        self.free.iter().map(|r| r.size / PAGE).sum()
    }

    /// Pages given up because a free could not be recorded.
    pub const fn lost_pages(&self) -> u64 {
        self.lost
    }

    /// Entries in the two lists (for tests and statistics).
    pub fn entries(&self) -> (usize, usize) {
        (self.ranges.len(), self.free.len())
    }

    /// Whether `pa` lies in a donated range.
    pub fn contains(&self, pa: PhysAddr) -> bool {
        let i = self.ranges.partition_point(|r| r.end() <= pa.get());
        self.ranges.get(i).is_some_and(|r| r.contains(pa.get()))
    }

    /// Makes room for `n` more entries in both lists, so that the next donations (and
    /// splits) need no allocation. NOMEM if the allocator refuses.
    pub fn reserve(&mut self, n: usize) -> Result<(), NoMem> {
        room(&mut self.ranges, n)?;
        room(&mut self.free, n)
    }

    /// Adds `r` (page-aligned, donated by the host, not already in the pool) as free
    /// pages. NOMEM, changing nothing, if the lists cannot grow.
    pub fn donate(&mut self, r: PhysRange) -> Result<(), NoMem> {
        if r.size == 0 {
            return Ok(());
        }
        room(&mut self.ranges, 1)?;
        room(&mut self.free, 1)?;
        insert_merged(&mut self.ranges, r);
        insert_merged(&mut self.free, r);
        Ok(())
    }

    /// Takes `size` bytes (rounded up to pages) aligned to `align` from the free pages
    /// (first fit); `None` if no free run has room, or the list cannot grow for the
    /// split. The pages are not zeroed.
    pub fn alloc(&mut self, size: usize, align: usize) -> Option<PhysAddr> {
        let size = (size as u64).div_ceil(PAGE).max(1) * PAGE;
        let align = (align as u64).max(PAGE);
        let (i, part) = self.free.iter().enumerate().find_map(|(i, r)| {
            let at = r.base.get().checked_next_multiple_of(align)?;
            (at.checked_add(size)? <= r.end()).then(|| (i, PhysRange::new(at, size)))
        })?;
        if splits(&self.free, i, part) {
            room(&mut self.free, 1).ok()?;
        }
        remove_part(&mut self.free, i, part);
        Some(part.base)
    }

    /// Returns `size` bytes (rounded up to pages) at `pa`, from [`alloc`](Self::alloc).
    /// If the list cannot grow, the pages stay allocated for good (counted).
    pub fn free(&mut self, pa: PhysAddr, size: usize) {
        let size = (size as u64).div_ceil(PAGE).max(1) * PAGE;
        if room(&mut self.free, 1).is_err() {
            self.lost += size / PAGE;
            return;
        }
        insert_merged(&mut self.free, PhysRange::new(pa.get(), size));
    }

    /// Takes the largest naturally aligned run of free donated pages whose page count is
    /// a power of two, at most `max_pages`, out of the pool for good (it is no longer
    /// donated). `None` if no page is free or the lists cannot grow for the split.
    pub fn reclaim(&mut self, max_pages: u64) -> Option<PhysRange> {
        let mut n = 1u64 << (63 - max_pages.max(1).leading_zeros());
        loop {
            let bytes = n * PAGE;
            let found = self.free.iter().enumerate().find_map(|(i, r)| {
                let at = r.base.get().checked_next_multiple_of(bytes)?;
                (at.checked_add(bytes)? <= r.end()).then(|| (i, PhysRange::new(at, bytes)))
            });
            if let Some((i, part)) = found {
                let j = self.ranges.partition_point(|r| r.end() <= part.base.get());
                debug_assert!(self.ranges.get(j).is_some_and(|r| r.contains_range(&part)));
                // Prepare: room for both splits, or nothing changes.
                if splits(&self.free, i, part) {
                    room(&mut self.free, 1).ok()?;
                }
                if splits(&self.ranges, j, part) {
                    room(&mut self.ranges, 1).ok()?;
                }
                remove_part(&mut self.free, i, part);
                remove_part(&mut self.ranges, j, part);
                return Some(part);
            }
            if n == 1 {
                return None;
            }
            n /= 2;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(page: u64, pages: u64) -> PhysRange {
        PhysRange::new(page * PAGE, pages * PAGE)
    }

    #[test]
    fn donate_alloc_free_reclaim() {
        let mut p = FramePool::new();
        p.donate(r(16, 4)).unwrap();
        p.donate(r(20, 4)).unwrap();
        assert_eq!(p.entries(), (1, 1), "touching donations merge");
        assert!(p.contains(PhysAddr(16 * PAGE)) && !p.contains(PhysAddr(24 * PAGE)));
        let a = p.alloc(4096, 4096).unwrap();
        assert_eq!(a, PhysAddr(16 * PAGE));
        let b = p.alloc(2 * 4096, 2 * 4096).unwrap();
        assert_eq!(b, PhysAddr(18 * PAGE), "aligned");
        assert_eq!(p.free_pages(), 5);
        assert_eq!(p.entries(), (1, 2), "page 17 and 20..24");
        // Reclaim: the largest naturally aligned power of two run, at most asked.
        assert_eq!(p.reclaim(8), Some(r(20, 4)));
        assert_eq!(p.donated_pages(), 4);
        assert!(!p.contains(PhysAddr(20 * PAGE)));
        p.free(a, 4096);
        p.free(b, 2 * 4096);
        assert_eq!(p.entries(), (1, 1));
        assert_eq!(p.reclaim(3), Some(r(16, 2)));
        assert_eq!(p.reclaim(1), Some(r(18, 1)));
        assert_eq!(p.reclaim(1), Some(r(19, 1)));
        assert_eq!(p.reclaim(1), None);
        assert_eq!(p.entries(), (0, 0));
    }

    #[test]
    fn under_a_failing_allocator_nothing_changes_and_nothing_panics() {
        let mut p = FramePool::new();
        p.donate(r(0, 64)).unwrap();
        let (refusals, refused) = crate::testalloc::failing(|| {
            // Every other page: each allocation splits the free run, until the list's
            // capacity is used up and the allocator refuses.
            let mut refusals = 0;
            for _ in 0..32 {
                let before = (p.entries(), p.free_pages());
                if p.alloc(4096, 2 * 4096).is_none() {
                    assert_eq!((p.entries(), p.free_pages()), before, "nothing changed");
                    refusals += 1;
                }
            }
            let before = (p.entries(), p.free_pages(), p.donated_pages());
            assert_eq!(p.donate(r(1000, 1)), Err(NoMem), "a new entry: NOMEM");
            assert_eq!(
                (p.entries(), p.free_pages(), p.donated_pages()),
                before,
                "nothing changed"
            );
            refusals
        });
        assert!(refusals > 0 && refused > 0);
    }

    #[test]
    fn donate_reclaim_pairs_do_not_grow_the_lists() {
        let mut p = FramePool::new();
        p.donate(r(0, 1)).unwrap();
        let _keep = p.alloc(4096, 4096).unwrap();
        p.donate(r(10, 1)).unwrap();
        assert_eq!(p.reclaim(1), Some(r(10, 1)));
        crate::testalloc::reset_peak();
        let base = crate::testalloc::live_bytes();
        for i in 0..10_000u64 {
            p.donate(r(10 + i % 7, 1)).unwrap();
            assert_eq!(p.reclaim(1), Some(r(10 + i % 7, 1)));
        }
        assert_eq!(crate::testalloc::peak_bytes(), base, "no allocation at all");
    }
}
