//! Invalidation of stage-2 changes: the gather the table walker records into, and the one
//! fan-out that turns what was gathered into CPU TLBIs or SMMU commands.
//!
//! # Pieces
//!
//! - [`Gather`]: what one stage-2 operation (or a queue of them) still owes the walkers:
//!   the pending IPA/IOVA ranges, the tables that left the tree and wait for the
//!   invalidation to complete, and whether an invalidation could not be confirmed. The
//!   walker ([`crate::s2mmu`]) records into it; its mode is the policy:
//!   - [`Gather::eager`] passes every invalidation on at once and frees a table as soon
//!     as the invalidation before it completed (the host stage-2, tables no walker uses);
//!   - [`Gather::clipped`] keeps invalidations (clipped to the range of the operation and
//!     merged, see below) and tables until [`Gather::complete`], and may leave the tables
//!     an unmap emptied linked ([`Gather::keep_empty_tables`], batched DMA domains).
//! - [`Fanout`]: the [`S2Tlb`] for one stage-2 and every walker that uses it. The choice
//!   is made here and nowhere else: the CPUs' TLBs are invalidated with TLBIs when the
//!   CPUs translate through the table (the host stage-2) or when the SMMUs take part in
//!   broadcast TLB maintenance (BTM); without BTM the SMMUs get the same ranges as
//!   commands, and completion is one `CMD_SYNC` per SMMU.
//!
//! # Clipping
//!
//! A clipped gather records every invalidation the table code asks for *clipped to the
//! range being changed*. That is sound for an unmap: leaf entries are matched by any
//! address they translate, and a table entry left empty by the unmap had its last valid
//! leaves inside the range, so a walk-cache invalidation by an address inside the range
//! hits it; a table entry whose whole span was unmapped lies inside the range anyway. So
//! unmapping one page needs one page-sized invalidation even when the tables above it
//! were freed. The unclipped spans of freed tables are kept too ([`Gather::spans`]): a
//! later map into them must first complete the invalidation, or a stale walk-cache entry
//! could shadow the new table.

use crate::addr::{Ipa, PhysAddr};
use crate::s2mmu::{Granule, S2Tlb, TableMemory};
use crate::smmu::{Smmu, SmmuIo};
use alloc::vec::Vec;
use core::marker::PhantomData;
use core::sync::atomic::{AtomicU64, Ordering};

/// An IPA/IOVA range `[start, end)` to invalidate; `leaf`: leaf entries only (no table was
/// freed in it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvRange {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// Only last-level entries changed.
    pub leaf: bool,
}

/// Sorts `ranges` and merges overlapping or touching ones (in place, no allocation).
pub fn merge_ranges(ranges: &mut Vec<InvRange>) {
    ranges.sort_unstable_by_key(|r| r.start);
    let mut w = 0;
    for i in 0..ranges.len() {
        let r = ranges[i];
        if i > 0 && r.start <= ranges[w].end {
            let m = &mut ranges[w];
            m.end = m.end.max(r.end);
            m.leaf &= r.leaf;
        } else {
            if i > 0 {
                w += 1;
            }
            ranges[w] = r;
        }
    }
    ranges.truncate(if ranges.is_empty() { 0 } else { w + 1 });
}

/// When a gathered list is invalidated as a whole VMID instead of range by range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// More merged ranges than this: the whole VMID.
    pub max_ranges: usize,
    /// A range of more granules than this: the whole VMID.
    pub max_range_granules: u64,
    /// The granule the ranges are counted in.
    pub granule: Granule,
}

impl Limits {
    /// No limit: every range is passed on as it is.
    pub const NONE: Self = Self {
        max_ranges: usize::MAX,
        max_range_granules: u64::MAX,
        granule: Granule::Size4K,
    };
}

/// Issues `ranges` (merged first) or, when `all` or past `limits`, one whole-VMID
/// invalidation through `tlb`, then waits for completion. `false` if it could not be
/// confirmed.
pub fn issue<T: S2Tlb + ?Sized>(
    tlb: &mut T,
    ranges: &mut Vec<InvRange>,
    all: bool,
    limits: &Limits,
) -> bool {
    merge_ranges(ranges);
    let g = limits.granule.size();
    let all = all
        || ranges.len() > limits.max_ranges
        || ranges
            .iter()
            .any(|r| (r.end - r.start) / g > limits.max_range_granules);
    tlb.issue(ranges, all)
}

/// How a [`Gather`] treats what the walker records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Pass everything on at once; free tables after completion.
    Eager,
    /// Keep invalidations clipped to `[start, end)` and tables until completion.
    Clipped { start: u64, end: u64 },
}

/// What a stage-2 operation still owes the walkers (see the module docs).
#[derive(Debug)]
pub struct Gather<T> {
    tlb: T,
    mode: Mode,
    limits: Limits,
    keep_tables: bool,
    /// Gathered invalidations, not yet issued.
    pub ranges: Vec<InvRange>,
    /// Unclipped spans of freed tables.
    pub spans: Vec<InvRange>,
    /// Invalidate the whole VMID (a list could not grow, or asked for).
    pub all: bool,
    /// Tables that left the tree, to free once the invalidation completed.
    pub tables: Vec<(PhysAddr, usize)>,
    /// Some invalidation could not be confirmed: nothing it covers may change hands.
    pub failed: bool,
}

impl<T: S2Tlb> Gather<T> {
    /// A gather that passes every invalidation to `tlb` at once and frees tables as soon
    /// as the invalidation before them completed.
    pub fn eager(tlb: T) -> Self {
        Self::with_mode(tlb, Mode::Eager, Limits::NONE)
    }

    /// A gather for an operation on `[start, end)`: invalidations are clipped to it and
    /// kept, with the freed tables, until [`complete`](Self::complete); then issued merged,
    /// as one whole-VMID invalidation past `limits`.
    pub fn clipped(tlb: T, start: u64, end: u64, limits: Limits) -> Self {
        Self::with_mode(tlb, Mode::Clipped { start, end }, limits)
    }

    fn with_mode(tlb: T, mode: Mode, limits: Limits) -> Self {
        Self {
            tlb,
            mode,
            limits,
            keep_tables: false,
            ranges: Vec::new(),
            spans: Vec::new(),
            all: false,
            tables: Vec::new(),
            failed: false,
        }
    }

    /// Leave tables an unmap emptied linked instead of unlinking and freeing them (a user
    /// that defers invalidation wants them kept: once unlinked, the span could not be
    /// mapped again through a new table before the deferred walk-cache invalidation
    /// completed). Tables covered whole by an unmapped range are removed either way.
    pub fn keep_empty_tables(mut self, keep: bool) -> Self {
        self.keep_tables = keep;
        self
    }

    /// Whether the walker leaves emptied tables linked.
    pub fn keeps_empty_tables(&self) -> bool {
        self.keep_tables
    }

    /// Whether something waits to be issued.
    pub fn has_work(&self) -> bool {
        self.all || !self.ranges.is_empty()
    }

    /// The invalidator.
    pub fn tlb(&mut self) -> &mut T {
        &mut self.tlb
    }

    /// `DSB ISHST`: earlier descriptor writes are visible to the walkers.
    pub fn sync(&mut self) {
        self.tlb.sync();
    }

    /// Records that cached translations of `[ipa, ipa + size)` must go (leaf entries, and
    /// walk-cache entries too unless `last_level_only`).
    pub fn invalidate(&mut self, ipa: Ipa, size: u64, last_level_only: bool) {
        let (clip_start, clip_end) = match self.mode {
            Mode::Eager => {
                self.tlb.invalidate_ipa_range(ipa, size, last_level_only);
                return;
            }
            Mode::Clipped { start, end } => (start, end),
        };
        let (s, e) = (ipa.get(), ipa.get().saturating_add(size));
        let (cs, ce) = (s.max(clip_start), e.min(clip_end));
        let r = if cs < ce {
            InvRange {
                start: cs,
                end: ce,
                leaf: last_level_only,
            }
        } else {
            InvRange {
                start: s,
                end: e,
                leaf: last_level_only,
            }
        };
        if self.ranges.try_reserve(1).is_err() {
            self.all = true;
        } else {
            self.ranges.push(r);
        }
        if !last_level_only && (s < cs || e > ce) {
            if self.spans.try_reserve(1).is_err() {
                self.all = true;
            } else {
                self.spans.push(InvRange {
                    start: s,
                    end: e,
                    leaf: false,
                });
            }
        }
    }

    /// Records that every cached translation of the stage-2 must go.
    pub fn invalidate_all(&mut self) {
        match self.mode {
            Mode::Eager => self.tlb.invalidate_all(),
            Mode::Clipped { .. } => self.all = true,
        }
    }

    /// Issues what was gathered and waits for it. `false` if anything failed so far.
    pub fn complete(&mut self) -> bool {
        let ok = match self.mode {
            Mode::Eager => self.tlb.complete(),
            Mode::Clipped { .. } if self.has_work() => {
                let ok = issue(&mut self.tlb, &mut self.ranges, self.all, &self.limits);
                self.ranges.clear();
                self.all = false;
                ok
            }
            Mode::Clipped { .. } => true,
        };
        if !ok {
            self.failed = true;
        }
        !self.failed
    }

    /// Takes over a table of `size` bytes at `pa` that has just left the tree (unlinked,
    /// and its entry recorded for invalidation) or was never linked. An eager gather (or
    /// one whose list cannot grow) completes the invalidation and frees it now; a clipped
    /// one keeps it until [`free_tables`](Self::free_tables). Returns the bytes leaked
    /// because the invalidation could not be confirmed (the table is then never reused).
    ///
    /// # Safety
    ///
    /// `pa` and `size` come from one `alloc_zeroed` of `mem`, not freed since, and no
    /// descriptor refers to it any more.
    pub unsafe fn retire_table<M: TableMemory + ?Sized>(
        &mut self,
        mem: &mut M,
        pa: PhysAddr,
        size: usize,
    ) -> u64 {
        if matches!(self.mode, Mode::Clipped { .. }) && self.tables.try_reserve(1).is_ok() {
            self.tables.push((pa, size));
            return 0;
        }
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

    /// Frees the kept tables into `mem`, if the invalidation completed (else they stay in
    /// [`tables`](Self::tables) for the caller to account as leaked).
    pub fn free_tables<M: TableMemory + ?Sized>(&mut self, mem: &mut M) {
        if self.failed || self.has_work() {
            return;
        }
        for (pa, size) in self.tables.drain(..) {
            // SAFETY: the walker handed this table over through `retire_table` after
            // unlinking it (so it came from `mem` and nothing refers to it), and the
            // invalidation covering it completed (checked above).
            unsafe { mem.free(pa, size) };
        }
    }
}

/// What invalidations did, for benchmarks, STATS and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InvalidationCounts {
    /// CPU TLBI operations (ranges or whole-VMID).
    pub cpu_tlbi: u64,
    /// SMMU invalidation requests (ranges or whole-VMID), summed over SMMUs.
    pub smmu_tlbi: u64,
    /// SMMU `CMD_SYNC`s waited for.
    pub smmu_syncs: u64,
    /// SMMU errors during invalidation (timeouts, command errors).
    pub smmu_errors: u64,
}

/// The CPU side of a [`Fanout`]: TLB maintenance of one VMID, inner shareable, each call
/// complete (`DSB ISH`) when it returns.
pub trait CpuInval {
    /// `DSB ISHST`: earlier descriptor writes are visible to every table walker.
    fn barrier(&mut self);
    /// Invalidates `[ipa, ipa + size)` (leaf entries only when `leaf`).
    fn range(&mut self, ipa: Ipa, size: u64, granule: Granule, leaf: bool);
    /// Invalidates the whole VMID.
    fn all(&mut self);
}

/// The one fan-out of a stage-2's invalidations to the CPUs and the SMMUs that walk it.
///
/// | CPUs translate through it | BTM | CPU TLBIs | SMMU commands + `CMD_SYNC` |
/// |---------------------------|-----|-----------|----------------------------|
/// | yes (host stage-2)        | yes | yes       | no (the DSB completed both)|
/// | yes                       | no  | yes       | yes                        |
/// | no (DMA domain)           | yes | yes       | no                         |
/// | no                        | no  | no        | yes                        |
pub struct Fanout<'a, C: CpuInval, I: SmmuIo, M: TableMemory> {
    /// The CPU side.
    pub cpu: C,
    /// Whether the CPUs translate through this stage-2.
    pub cpu_walks: bool,
    /// Whether the SMMUs see the CPU's broadcast TLBIs (BTM in use for this stage-2).
    pub btm: bool,
    /// The SMMUs.
    pub smmus: &'a mut [Smmu<I, M>],
    /// Which of them walk this stage-2 (bit i: `smmus[i]`).
    pub smmu_mask: u64,
    /// The SMMUs' DMA memory seam.
    pub smmu_mem: &'a mut M,
    /// The VMID of the stage-2.
    pub vmid: u16,
    /// Its granule (the unit of range commands).
    pub granule: Granule,
    /// Leaf-only ranges become leaf-only SMMU commands (else every command also
    /// invalidates walk caches).
    pub leaf_commands: bool,
    /// A range of more granules than this is invalidated as the whole VMID.
    pub whole_above: u64,
    /// Counters.
    pub counts: &'a mut InvalidationCounts,
    pending: bool,
    failed: bool,
}

impl<'a, C: CpuInval, I: SmmuIo, M: TableMemory> Fanout<'a, C, I, M> {
    /// Bundles the seams for one operation. `cpu_walks`: the CPUs translate through the
    /// stage-2; `btm`: the SMMUs see the CPU's TLBIs. Commands use `granule`, non-leaf
    /// ranges, and ranges are never widened to the whole VMID: see the public fields to
    /// change that.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cpu: C,
        cpu_walks: bool,
        btm: bool,
        smmus: &'a mut [Smmu<I, M>],
        smmu_mem: &'a mut M,
        vmid: u16,
        granule: Granule,
        counts: &'a mut InvalidationCounts,
    ) -> Self {
        Self {
            cpu,
            cpu_walks,
            btm,
            smmus,
            smmu_mask: u64::MAX,
            smmu_mem,
            vmid,
            granule,
            leaf_commands: false,
            whole_above: u64::MAX,
            counts,
            pending: false,
            failed: false,
        }
    }

    fn smmu_in_use(&self, i: usize) -> bool {
        i < 64 && self.smmu_mask & (1 << i) != 0
    }
}

impl<C: CpuInval, I: SmmuIo, M: TableMemory> S2Tlb for Fanout<'_, C, I, M> {
    fn sync(&mut self) {
        self.cpu.barrier();
    }

    fn invalidate_ipa_range(&mut self, ipa: Ipa, size: u64, last_level_only: bool) {
        let whole = size / self.granule.size() > self.whole_above;
        if self.cpu_walks || self.btm {
            if whole {
                self.cpu.all();
            } else {
                self.cpu.range(ipa, size, self.granule, last_level_only);
            }
            self.counts.cpu_tlbi += 1;
        }
        if self.btm {
            // The DSB that completed the broadcast TLBI completed it on the SMMUs too.
            return;
        }
        let leaf = last_level_only && self.leaf_commands;
        for i in 0..self.smmus.len() {
            if !self.smmu_in_use(i) {
                continue;
            }
            let smmu = &mut self.smmus[i];
            if whole {
                smmu.tlbi_vmall(self.smmu_mem, self.vmid);
            } else if leaf {
                smmu.tlbi_s2_leaf_range(self.smmu_mem, self.vmid, ipa, size, self.granule);
            } else {
                smmu.tlbi_s2_range(self.smmu_mem, self.vmid, ipa, size, self.granule);
            }
            self.counts.smmu_tlbi += 1;
            self.pending = true;
        }
    }

    fn invalidate_all(&mut self) {
        if self.cpu_walks || self.btm {
            self.cpu.all();
            self.counts.cpu_tlbi += 1;
        }
        if self.btm {
            return;
        }
        for i in 0..self.smmus.len() {
            if self.smmu_in_use(i) {
                self.smmus[i].tlbi_vmall(self.smmu_mem, self.vmid);
                self.counts.smmu_tlbi += 1;
                self.pending = true;
            }
        }
    }

    fn complete(&mut self) -> bool {
        if self.pending {
            self.pending = false;
            for i in 0..self.smmus.len() {
                if !self.smmu_in_use(i) {
                    continue;
                }
                self.counts.smmu_syncs += 1;
                if let Err(e) = self.smmus[i].sync(self.smmu_mem) {
                    log::error!("smmu{i}: invalidation of VMID {} failed: {e}", self.vmid);
                    self.counts.smmu_errors += 1;
                    self.failed = true;
                }
            }
        }
        !self.failed
    }
}

/// A DMA domain's fan-out for one operation: a [`Fanout`] built each time something is
/// issued, so that the SMMU set is locked only then (never across a table walk, nor across
/// the pin release that follows). The CPUs never translate through a domain: with
/// `smmus: None` (the CPU-TLBI path, BTM in use) it is CPU TLBIs by VMID only; otherwise
/// SMMU commands (leaf forms where the walker allows) on the SMMUs in `smmu_mask` — read
/// at issue time — and one `CMD_SYNC` per SMMU. CPU TLBIs are added to `cpu_tlbis`.
pub struct DomainFanout<'h, C, S, I, M> {
    cpu: C,
    smmus: Option<&'h spin::Mutex<S>>,
    smmu_mask: &'h AtomicU64,
    mem: M,
    vmid: u16,
    granule: Granule,
    cpu_tlbis: &'h AtomicU64,
    /// An invalidation issued through this value was not confirmed.
    failed: bool,
    _io: PhantomData<I>,
}

impl<'h, C, S, I, M> DomainFanout<'h, C, S, I, M>
where
    C: CpuInval + Clone,
    S: AsMut<[Smmu<I, M>]>,
    I: SmmuIo,
    M: TableMemory + Clone,
{
    /// The fan-out of a domain with `vmid` and `granule`: `cpu` issues its CPU TLBIs,
    /// `smmus` (`None` on the CPU-TLBI path) the SMMU set and its lock, `smmu_mask` which
    /// SMMUs the domain was ever attached to, `mem` the SMMUs' queue memory seam.
    pub const fn new(
        cpu: C,
        smmus: Option<&'h spin::Mutex<S>>,
        smmu_mask: &'h AtomicU64,
        mem: M,
        vmid: u16,
        granule: Granule,
        cpu_tlbis: &'h AtomicU64,
    ) -> Self {
        Self {
            cpu,
            smmus,
            smmu_mask,
            mem,
            vmid,
            granule,
            cpu_tlbis,
            failed: false,
            _io: PhantomData,
        }
    }

    /// Runs `f` on a [`Fanout`] over the domain's SMMUs (locked for the call), then counts
    /// its CPU TLBIs.
    fn with_fanout<R>(&mut self, f: impl FnOnce(&mut Fanout<'_, C, I, M>) -> R) -> R {
        let mut counts = InvalidationCounts::default();
        let mut mem = self.mem.clone();
        let r = match self.smmus {
            None => {
                let mut fan = Fanout::new(
                    self.cpu.clone(),
                    false,
                    true,
                    &mut [],
                    &mut mem,
                    self.vmid,
                    self.granule,
                    &mut counts,
                );
                f(&mut fan)
            }
            Some(lock) => {
                let mut set = lock.lock();
                let mut fan = Fanout::new(
                    self.cpu.clone(),
                    false,
                    false,
                    set.as_mut(),
                    &mut mem,
                    self.vmid,
                    self.granule,
                    &mut counts,
                );
                fan.smmu_mask = self.smmu_mask.load(Ordering::Relaxed);
                fan.leaf_commands = true;
                f(&mut fan)
            }
        };
        self.cpu_tlbis.fetch_add(counts.cpu_tlbi, Ordering::Relaxed);
        r
    }
}

impl<C, S, I, M> S2Tlb for DomainFanout<'_, C, S, I, M>
where
    C: CpuInval + Clone,
    S: AsMut<[Smmu<I, M>]>,
    I: SmmuIo,
    M: TableMemory + Clone,
{
    fn invalidate_ipa_range(&mut self, ipa: Ipa, size: u64, last_level_only: bool) {
        let r = InvRange {
            start: ipa.get(),
            end: ipa.get().saturating_add(size),
            leaf: last_level_only,
        };
        // Issued and completed at once (earlier than the seam requires).
        self.issue(&[r], false);
    }

    fn invalidate_all(&mut self) {
        self.issue(&[], true);
    }

    fn complete(&mut self) -> bool {
        !self.failed
    }

    fn sync(&mut self) {
        self.cpu.barrier();
    }

    fn issue(&mut self, ranges: &[InvRange], all: bool) -> bool {
        if !self.with_fanout(|fan| fan.issue(ranges, all)) {
            self.failed = true;
        }
        !self.failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::s2mmu::{S2Attrs, S2Geometry, Stage2};
    use crate::testutil::Arena;
    use alloc::vec;
    use std::vec::Vec;

    /// Records what reaches the hardware seam; `confirm` is what `complete` reports.
    #[derive(Default)]
    struct Rec {
        calls: Vec<(u64, u64, bool)>,
        alls: usize,
        completes: usize,
        fail: bool,
    }

    impl S2Tlb for &mut Rec {
        fn invalidate_ipa_range(&mut self, ipa: Ipa, size: u64, leaf: bool) {
            self.calls.push((ipa.get(), size, leaf));
        }
        fn invalidate_all(&mut self) {
            self.alls += 1;
        }
        fn complete(&mut self) -> bool {
            self.completes += 1;
            !self.fail
        }
    }

    const MIB: u64 = 1 << 20;

    /// A 4 KiB stage-2 with one page mapped at 2 MiB (so the unmap empties an L3 table).
    fn one_page() -> (Arena, Stage2) {
        let mut a = Arena::new(8 << 20);
        let g = S2Geometry::new(Granule::Size4K, 40, 40).unwrap();
        // SAFETY: every call passes this arena.
        let mut s2: Stage2 = unsafe { Stage2::new(g, &mut a) }.unwrap();
        s2.map(
            &mut a,
            &mut crate::s2mmu::NoTlb,
            Ipa(2 * MIB),
            PhysAddr(0x10_0000),
            4096,
            S2Attrs::NORMAL_RW,
        )
        .unwrap();
        (a, s2)
    }

    #[test]
    fn clipped_gather_keeps_invalidations_and_tables_until_complete() {
        let (mut a, mut s2) = one_page();
        let live = a.live_count();
        let mut rec = Rec::default();
        let mut g = Gather::clipped(&mut rec, 2 * MIB, 2 * MIB + 4096, Limits::NONE);
        s2.unmap_gathered(&mut a, &mut g, Ipa(2 * MIB), 4096)
            .unwrap();
        // The emptied L3 and L2 tables left the tree but are still allocated, nothing
        // was issued; their unclipped spans are kept.
        assert_eq!(g.tables.len(), 2);
        assert_eq!(g.spans.len(), 2);
        assert_eq!(a.live_count(), live);
        assert!(g.has_work());
        assert!(g.complete());
        g.free_tables(&mut a);
        assert!(g.tables.is_empty());
        assert_eq!(a.live_count(), live - 2, "freed after completion");
        drop(g);
        // One page-sized invalidation (both entries clipped to the page and merged; walk
        // caches too), one completion.
        assert_eq!(rec.calls, [(2 * MIB, 4096, false)]);
        assert_eq!((rec.alls, rec.completes), (0, 1));
    }

    #[test]
    fn unconfirmed_invalidation_keeps_the_tables() {
        let (mut a, mut s2) = one_page();
        let live = a.live_count();
        let mut rec = Rec {
            fail: true,
            ..Rec::default()
        };
        let mut g = Gather::clipped(&mut rec, 2 * MIB, 2 * MIB + 4096, Limits::NONE);
        s2.unmap_gathered(&mut a, &mut g, Ipa(2 * MIB), 4096)
            .unwrap();
        assert!(!g.complete());
        g.free_tables(&mut a);
        assert_eq!(g.tables.len(), 2, "kept for the caller to count as leaked");
        assert_eq!(a.live_count(), live);
        assert!(!g.complete(), "the failure sticks");
    }

    /// What the walker and the hardware seams did, in order: `outstanding` is set by an
    /// invalidation and cleared by a confirmed completion; `bad_frees` counts tables
    /// freed while an invalidation was outstanding (a walker could still hold them).
    #[derive(Default)]
    struct Order {
        outstanding: bool,
        completes: usize,
        frees: usize,
        bad_frees: usize,
        fail: bool,
    }

    /// An eager-style hardware seam over a shared [`Order`].
    struct OrderTlb(std::rc::Rc<core::cell::RefCell<Order>>);

    impl S2Tlb for OrderTlb {
        fn invalidate_ipa_range(&mut self, _ipa: Ipa, _size: u64, _leaf: bool) {
            self.0.borrow_mut().outstanding = true;
        }
        fn invalidate_all(&mut self) {
            self.0.borrow_mut().outstanding = true;
        }
        fn complete(&mut self) -> bool {
            let mut o = self.0.borrow_mut();
            o.completes += 1;
            if !o.fail {
                o.outstanding = false;
            }
            !o.fail
        }
    }

    /// The arena, recording in the shared [`Order`] whether each free came after the
    /// invalidations before it completed.
    struct OrderMem(Arena, std::rc::Rc<core::cell::RefCell<Order>>);

    // SAFETY: every call is passed on to the arena, whose contract holds.
    unsafe impl TableMemory for OrderMem {
        fn alloc_zeroed(&mut self, size: usize, align: usize) -> Option<PhysAddr> {
            self.0.alloc_zeroed(size, align)
        }
        unsafe fn free(&mut self, pa: PhysAddr, size: usize) {
            let mut o = self.1.borrow_mut();
            o.frees += 1;
            if o.outstanding {
                o.bad_frees += 1;
            }
            // SAFETY: the caller's contract is the arena's.
            unsafe { self.0.free(pa, size) };
        }
        fn table_ptr(&self, pa: PhysAddr) -> *mut u64 {
            self.0.table_ptr(pa)
        }
        fn clean(&mut self, pa: PhysAddr, size: usize) {
            self.0.clean(pa, size);
        }
    }

    /// The stage-2 of [`one_page`] in an [`OrderMem`], and the shared record.
    fn one_page_ordered(fail: bool) -> (OrderMem, Stage2, OrderTlb) {
        let (a, s2) = one_page();
        let o = std::rc::Rc::new(core::cell::RefCell::new(Order {
            fail,
            ..Order::default()
        }));
        (OrderMem(a, o.clone()), s2, OrderTlb(o))
    }

    #[test]
    fn eager_gather_frees_a_table_only_after_its_invalidation_completed() {
        let (mut mem, mut s2, mut tlb) = one_page_ordered(false);
        let live = mem.0.live_count();
        // The unmap empties the L3 and the L2 table: both leave the tree (eager gather).
        s2.unmap(&mut mem, &mut tlb, Ipa(2 * MIB), 4096).unwrap();
        let o = tlb.0.borrow();
        assert_eq!(o.frees, 2, "both emptied tables freed");
        assert_eq!(o.bad_frees, 0, "never before the invalidation completed");
        assert!(o.completes >= 2, "one completion before each free");
        assert_eq!(mem.0.live_count(), live - 2);
        assert_eq!(s2.leaked_table_bytes(), 0);
    }

    #[test]
    fn eager_gather_leaks_tables_when_the_invalidation_is_unconfirmed() {
        let (mut mem, mut s2, mut tlb) = one_page_ordered(true);
        let live = mem.0.live_count();
        s2.unmap(&mut mem, &mut tlb, Ipa(2 * MIB), 4096).unwrap();
        let o = tlb.0.borrow();
        assert_eq!(o.frees, 0, "nothing a walker may hold is freed");
        assert_eq!(mem.0.live_count(), live, "the tables stay allocated");
        assert_eq!(
            s2.leaked_table_bytes(),
            2 * 4096,
            "and are counted as leaked"
        );
        assert_eq!(
            s2.translate(&mem, Ipa(2 * MIB)),
            None,
            "unmapped all the same"
        );
    }

    #[test]
    fn past_the_limits_one_whole_vmid_invalidation() {
        let mut rec = Rec::default();
        let limits = Limits {
            max_ranges: 2,
            max_range_granules: 4,
            granule: Granule::Size4K,
        };
        let r = |start: u64, end: u64| InvRange {
            start,
            end,
            leaf: true,
        };
        let mut three = vec![r(0, 4096), r(0x10000, 0x11000), r(0x20000, 0x21000)];
        assert!(issue(&mut &mut rec, &mut three, false, &limits));
        assert_eq!((rec.calls.len(), rec.alls), (0, 1));
        let mut big = vec![r(0, 5 * 4096)];
        assert!(issue(&mut &mut rec, &mut big, false, &limits));
        assert_eq!((rec.calls.len(), rec.alls), (0, 2));
        let mut two = vec![r(0x1000, 0x2000), r(0, 0x1000), r(0x8000, 0x9000)];
        assert!(issue(&mut &mut rec, &mut two, false, &limits));
        assert_eq!(
            rec.calls,
            [(0, 0x2000, true), (0x8000, 0x1000, true)],
            "merged"
        );
        assert_eq!(rec.completes, 3);
    }

    #[test]
    fn merging() {
        let r = |start, end, leaf| InvRange { start, end, leaf };
        let mut v = vec![
            r(0x5000, 0x6000, true),
            r(0x1000, 0x2000, true),
            r(0x2000, 0x3000, false),
            r(0x8000, 0x9000, true),
            r(0x5800, 0x5900, true),
        ];
        merge_ranges(&mut v);
        assert_eq!(
            v,
            [
                r(0x1000, 0x3000, false),
                r(0x5000, 0x6000, true),
                r(0x8000, 0x9000, true)
            ]
        );
        let mut e: Vec<InvRange> = Vec::new();
        merge_ranges(&mut e);
        assert!(e.is_empty());
    }
}
