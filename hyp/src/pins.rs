//! DMA pin counts of host pages.
//!
//! A page the host has mapped into a DMA domain is *pinned* once per mapping (and stays
//! pinned while a batched invalidation covering it is pending): its ownership cannot
//! change while the count is non-zero (I2). Counts are kept per 4 KiB page, stored as a
//! sorted list of disjoint runs of pages with the same count, so that mapping a large
//! contiguous buffer costs one entry, not one per page.
//!
//! A pin is not an ownership state: a pinned page stays
//! [`PageState::HostOwned`](crate::page_state::PageState::HostOwned) in the host stage-2
//! (the host keeps full access); the count says that its owner cannot change.
//!
//! Both changes come in two halves for transitions that prepare everything before they
//! change anything: prepare ([`PinSet::prepare_pin`], [`PinSet::prepare_unpin`]: checks and
//! reserves, may fail, changes nothing) and commit ([`PinSet::commit_pin`],
//! [`PinSet::commit_unpin`]: cannot fail). [`PinSet::pin`] and [`PinSet::unpin`] run both.
//!
//! Memory (I6: nothing here can fail by panicking): [`PinSet::pin`] reserves everything
//! it needs up front (and keeps a little spare capacity) and fails with
//! [`PinError::NoMem`] without changing anything. [`PinSet::unpin`] may split a run at
//! each end of the range (two more entries): it reserves them first, from the spare
//! capacity or the allocator, and fails with [`PinError::NoMem`], changing nothing, if
//! neither has room. The caller then keeps the pages pinned (safe: they only stay out of
//! reach of ownership changes) and counts them.

use crate::addr::PhysRange;
use alloc::vec::Vec;

/// Bytes per pinned page: the crate's one `PAGE`.
pub use crate::PAGE;
/// Spare entries reserved along with what an operation needs, so that most unpins need
/// no allocation.
const SPARE: usize = 4;

/// Errors of [`PinSet::pin`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinError {
    /// The range is empty, unaligned or wraps.
    Invalid,
    /// No memory for the bookkeeping.
    NoMem,
}

/// A run of pages `[start, end)` (page frame numbers) pinned `count` times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    start: u64,
    end: u64,
    count: u64,
}

/// Pin counts of every pinned 4 KiB page.
#[derive(Debug, Default)]
pub struct PinSet {
    /// Sorted, disjoint, non-empty runs with `count >= 1`; neighbours that touch have
    /// different counts.
    runs: Vec<Run>,
    /// Pages with a non-zero count.
    pages: u64,
}

/// Page frame numbers `[start, end)` of a page-aligned range.
fn pfns(r: PhysRange) -> Option<(u64, u64)> {
    if r.size == 0 || !r.base.get().is_multiple_of(PAGE) || !r.size.is_multiple_of(PAGE) {
        return None;
    }
    let end = r.base.get().checked_add(r.size)?;
    Some((r.base.get() / PAGE, end / PAGE))
}

impl PinSet {
    /// No page pinned.
    pub const fn new() -> Self {
        Self {
            runs: Vec::new(),
            pages: 0,
        }
    }

    /// Number of pages with a non-zero pin count.
    pub const fn pinned_pages(&self) -> u64 {
        self.pages
    }

    /// Number of runs (for tests and statistics).
    pub fn runs(&self) -> usize {
        self.runs.len()
    }

    /// The pin count of the page containing `pa`.
    pub fn count(&self, pa: u64) -> u64 {
        let pfn = pa / PAGE;
        let i = self.runs.partition_point(|r| r.end <= pfn);
        match self.runs.get(i) {
            Some(r) if r.start <= pfn => r.count,
            _ => 0,
        }
    }

    /// Whether any page of `r` is pinned.
    pub fn any_pinned(&self, r: PhysRange) -> bool {
        let start = r.base.get() / PAGE;
        let end = r.end().div_ceil(PAGE);
        let i = self.runs.partition_point(|run| run.end <= start);
        self.runs.get(i).is_some_and(|run| run.start < end)
    }

    /// Every pinned run: (physical range, count), in address order.
    pub fn iter(&self) -> impl Iterator<Item = (PhysRange, u64)> + '_ {
        self.runs.iter().map(|r| {
            (
                PhysRange::new(r.start * PAGE, (r.end - r.start) * PAGE),
                r.count,
            )
        })
    }

    /// Adds one pin to every page of `r` (page-aligned). On error nothing changed.
    pub fn pin(&mut self, r: PhysRange) -> Result<(), PinError> {
        self.prepare_pin(r)?;
        self.commit_pin(r);
        Ok(())
    }

    /// The fallible half of [`pin`](Self::pin): checks `r` and reserves every entry
    /// pinning it can need. After `Ok`, [`commit_pin`](Self::commit_pin) of the same range
    /// (with no other change of the set in between) allocates nothing and cannot fail.
    /// On error nothing changed.
    pub fn prepare_pin(&mut self, r: PhysRange) -> Result<(), PinError> {
        let (start, end) = pfns(r).ok_or(PinError::Invalid)?;
        // Worst case: two boundary splits and one new run per gap between the runs that
        // overlap (at most overlapping + 1 gaps).
        let first = self.runs.partition_point(|run| run.end <= start);
        let last = self.runs.partition_point(|run| run.start < end);
        let needed = (last - first) + 3 + SPARE;
        if self.runs.capacity() - self.runs.len() < needed {
            self.runs.try_reserve(needed).map_err(|_| PinError::NoMem)?;
        }
        Ok(())
    }

    /// The commit half of [`pin`](Self::pin), after [`prepare_pin`](Self::prepare_pin)
    /// of `r` succeeded: adds one pin to every page of `r`.
    pub fn commit_pin(&mut self, r: PhysRange) {
        let Some((start, end)) = pfns(r) else {
            debug_assert!(false, "commit_pin of a bad range {r:?}");
            return;
        };
        self.split_at(start);
        self.split_at(end);
        // Walk the runs inside [start, end), filling the gaps with count-1 runs.
        let mut i = self.runs.partition_point(|run| run.end <= start);
        let mut at = start;
        while at < end {
            match self.runs.get(i) {
                Some(run) if run.start == at => {
                    let run = &mut self.runs[i];
                    run.count += 1;
                    at = run.end;
                    i += 1;
                }
                next => {
                    let gap_end = next.map_or(end, |run| run.start.min(end));
                    self.runs.insert(
                        i,
                        Run {
                            start: at,
                            end: gap_end,
                            count: 1,
                        },
                    );
                    self.pages += gap_end - at;
                    at = gap_end;
                    i += 1;
                }
            }
        }
        self.merge_around(start, end);
    }

    /// Removes one pin from every page of `r`. Pages without a pin are left alone (a
    /// caller bug: reported in debug builds). NOMEM if splitting a run needs an entry that
    /// cannot be allocated: then nothing changed (the pins stay).
    pub fn unpin(&mut self, r: PhysRange) -> Result<(), PinError> {
        self.prepare_unpin(r)?;
        self.commit_unpin(r);
        Ok(())
    }

    /// The fallible half of [`unpin`](Self::unpin): checks `r` and reserves the entries
    /// splitting runs at its ends needs. After `Ok`, [`commit_unpin`](Self::commit_unpin)
    /// of the same range (with no other change in between) cannot fail. On error nothing
    /// changed.
    pub fn prepare_unpin(&mut self, r: PhysRange) -> Result<(), PinError> {
        let Some((start, end)) = pfns(r) else {
            debug_assert!(false, "unpin of a bad range {r:?}");
            return Err(PinError::Invalid);
        };
        let splits = [start, end]
            .iter()
            .filter(|&&pfn| {
                let i = self.runs.partition_point(|run| run.end <= pfn);
                self.runs.get(i).is_some_and(|run| run.start < pfn)
            })
            .count();
        if self.runs.capacity() - self.runs.len() < splits {
            self.runs
                .try_reserve(splits + SPARE)
                .map_err(|_| PinError::NoMem)?;
        }
        Ok(())
    }

    /// The commit half of [`unpin`](Self::unpin), after
    /// [`prepare_unpin`](Self::prepare_unpin) of `r` succeeded: removes one pin from
    /// every page of `r`.
    pub fn commit_unpin(&mut self, r: PhysRange) {
        let Some((start, end)) = pfns(r) else {
            debug_assert!(false, "commit_unpin of a bad range {r:?}");
            return;
        };
        self.split_at(start);
        self.split_at(end);
        let first = self.runs.partition_point(|run| run.end <= start);
        let mut unpinned = 0;
        let mut freed = 0;
        for run in self.runs[first..].iter_mut() {
            if run.start >= end {
                break;
            }
            unpinned += run.end - run.start;
            run.count -= 1;
            if run.count == 0 {
                freed += run.end - run.start;
            }
        }
        debug_assert_eq!(unpinned, end - start, "unpin of unpinned pages in {r:?}");
        self.pages -= freed;
        self.runs.retain(|run| run.count != 0);
        self.merge_around(start, end);
    }

    /// Splits the run containing page `pfn` (if any) so that a run starts at `pfn`.
    fn split_at(&mut self, pfn: u64) {
        let i = self.runs.partition_point(|run| run.end <= pfn);
        let Some(&run) = self.runs.get(i) else {
            return;
        };
        if run.start < pfn {
            self.runs[i].end = pfn;
            // Capacity was reserved by the caller (`pin`, `unpin`): no allocation.
            debug_assert!(self.runs.len() < self.runs.capacity());
            self.runs.insert(i + 1, Run { start: pfn, ..run });
        }
    }

    /// Merges touching runs with equal counts around `[start, end)`.
    fn merge_around(&mut self, start: u64, end: u64) {
        let from = self
            .runs
            .partition_point(|run| run.end < start)
            .saturating_sub(1);
        let to = self.runs.partition_point(|run| run.start <= end) + 1;
        let to = to.min(self.runs.len());
        let mut w = from;
        for r in from..to {
            let run = self.runs[r];
            if r > from && self.runs[w].end == run.start && self.runs[w].count == run.count {
                self.runs[w].end = run.end;
            } else {
                if r > from {
                    w += 1;
                }
                self.runs[w] = run;
            }
        }
        if to > from {
            self.runs.drain(w + 1..to);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn r(page: u64, pages: u64) -> PhysRange {
        PhysRange::new(page * PAGE, pages * PAGE)
    }

    #[test]
    fn pin_unpin_counts_and_runs() {
        let mut p = PinSet::new();
        p.pin(r(10, 10)).unwrap();
        assert_eq!(p.runs(), 1);
        assert_eq!(p.pinned_pages(), 10);
        p.pin(r(15, 10)).unwrap();
        assert_eq!(p.count(14 * PAGE), 1);
        assert_eq!(p.count(15 * PAGE + 7), 2);
        assert_eq!(p.count(24 * PAGE), 1);
        assert_eq!(p.count(25 * PAGE), 0);
        assert_eq!(p.pinned_pages(), 15);
        assert_eq!(p.runs(), 3);
        assert!(p.any_pinned(r(24, 5)));
        assert!(!p.any_pinned(r(25, 5)));
        assert!(!p.any_pinned(r(0, 10)));
        p.unpin(r(15, 10)).unwrap();
        assert_eq!(p.runs(), 1, "merged back");
        assert_eq!(p.pinned_pages(), 10);
        p.unpin(r(10, 10)).unwrap();
        assert_eq!(p.runs(), 0);
        assert_eq!(p.pinned_pages(), 0);
        assert_eq!(p.pin(r(1, 0)), Err(PinError::Invalid));
        assert_eq!(p.pin(PhysRange::new(7, PAGE)), Err(PinError::Invalid));
        assert_eq!(
            p.pin(PhysRange::new(u64::MAX - PAGE + 1, 2 * PAGE)),
            Err(PinError::Invalid)
        );
    }

    #[test]
    fn page_by_page_pins_stay_one_run() {
        let mut p = PinSet::new();
        for i in 0..1000 {
            p.pin(r(i, 1)).unwrap();
        }
        assert_eq!(p.runs(), 1);
        assert_eq!(p.pinned_pages(), 1000);
    }

    #[test]
    fn unpin_under_a_failing_allocator_is_nomem_and_changes_nothing() {
        let mut p = PinSet::new();
        p.pin(r(0, 200)).unwrap();
        // Unpinning every other page splits the run each time: the reserve runs out,
        // then the allocator refuses. Never a panic; a refused unpin changes nothing.
        let (nomem, refused) = crate::testalloc::failing(|| {
            let mut nomem = 0;
            for pg in (1..200).step_by(2) {
                let runs = p.runs();
                match p.unpin(r(pg, 1)) {
                    Ok(()) => assert_eq!(p.count(pg * PAGE), 0),
                    Err(e) => {
                        assert_eq!(e, PinError::NoMem);
                        assert_eq!(p.count(pg * PAGE), 1, "still pinned");
                        assert_eq!(p.runs(), runs, "nothing changed");
                        nomem += 1;
                    }
                }
            }
            nomem
        });
        assert!(
            nomem > 0 && refused > 0,
            "the allocator was asked and refused"
        );
        // With memory back, the rest goes.
        for pg in (1..200).step_by(2) {
            if p.count(pg * PAGE) == 1 {
                p.unpin(r(pg, 1)).unwrap();
            }
        }
        assert_eq!(p.pinned_pages(), 100);
        assert_eq!(p.runs(), 100);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        #[test]
        fn matches_per_page_reference(ops in proptest::collection::vec((0u64..64, 1u64..16, any::<bool>()), 1..60)) {
            let mut p = PinSet::new();
            let mut reference: BTreeMap<u64, u64> = BTreeMap::new();
            for (start, len, pin) in ops {
                let range = r(start, len);
                let all_pinned = (start..start + len).all(|pg| reference.get(&pg).copied().unwrap_or(0) > 0);
                if pin {
                    p.pin(range).unwrap();
                    for pg in start..start + len {
                        *reference.entry(pg).or_default() += 1;
                    }
                } else if all_pinned {
                    p.unpin(range).unwrap();
                    for pg in start..start + len {
                        let c = reference.get_mut(&pg).unwrap();
                        *c -= 1;
                        if *c == 0 {
                            reference.remove(&pg);
                        }
                    }
                }
                for pg in 0..90 {
                    prop_assert_eq!(p.count(pg * PAGE), reference.get(&pg).copied().unwrap_or(0));
                }
                prop_assert_eq!(p.pinned_pages(), reference.len() as u64);
                // Canonical: touching neighbours differ.
                let runs: Vec<_> = p.iter().collect();
                for w in runs.windows(2) {
                    prop_assert!(w[0].0.end() <= w[1].0.base.get());
                    prop_assert!(w[0].0.end() < w[1].0.base.get() || w[0].1 != w[1].1);
                }
            }
        }
    }
}
