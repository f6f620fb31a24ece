//! Ownership of RAM between the host and Warden. Each page's state is explicit
//! ([`PageState`], kept in the host stage-2 as [`page_state`] describes): a page the
//! host owns is identity-mapped with [`HOST_RAM`] (SW bits `0b0000`); a page Warden owns
//! (its carve-out, pages the host donated) is unmapped.
//! [`HostMem`] adds Warden's side of the ledger: which ranges are RAM, Warden's own
//! memory, the donated runs, and the DMA pin counts (a pin is not a state: a pinned page
//! is host-owned with a non-zero count, and cannot change owner).
//!
//! | transition          | host stage-2 before → after | Warden's side            | hypercall   |
//! |---------------------|-----------------------------|--------------------------|-------------|
//! | `host_donate_hyp`   | `HostOwned` → `HypOwned`    | unpinned → donated run   | MEM_DONATE  |
//! | `hyp_donate_host`   | `HypOwned` → `HostOwned`    | donated run → removed    | MEM_RECLAIM |
//! | `host_pin_dma`      | `HostOwned` (unchanged)     | pin count n → n + 1      | MAP         |
//! | `host_unpin_dma`    | `HostOwned` (unchanged)     | pin count n + 1 → n      | UNMAP, FLUSH|
//!
//! # One template
//!
//! Every transition, named initiator_verb_target, runs the same steps:
//!
//! 1. **validate** the arguments (alignment, size, overflow): INVALID;
//! 2. **lock** in the documented order (below);
//! 3. **check both sides**: the host stage-2 state of every page of the range, with the
//!    one visitor [`page_state::range_is`], and Warden's ledger (RAM, carve-outs, donated
//!    runs, then pins): DENIED, BUSY, INVALID (`host_unpin_dma` checks only the pins:
//!    a pinned page cannot have changed owner);
//! 4. **prepare** everything that can fail: list capacity (`try_reserve`, the pin set's
//!    prepare half) and every table the stage-2 change will allocate
//!    ([`page_state::tables_to_map`] / [`page_state::unmap_table_needs`], allocated
//!    up front in a [`PreparedTables`]): NOMEM, nothing changed;
//! 5. **commit**: change the stage-2 (drawing tables only from the prepared ones, and a
//!    donation also from tables its unmap freed on the way), wait for the invalidation,
//!    then update the ledger. Nothing here runs out of memory.
//!
//! An invalidation that an SMMU does not confirm is hardware failure, not a lack of
//! memory: the pages concerned leave the host but go to nobody (withheld, BUSY), and I2
//! holds (ownership changes only after the invalidation has completed).
//!
//! # Locks
//!
//! A transition runs with the `host memory` lock held (the DMA core's order: `domain
//! table` → `one domain slot` → `host memory` → `SMMUs` → `event ring`): [`HostMem`] is
//! that lock's data, the host stage-2 together with the ledger and the pins, so that "is
//! it the host's and unpinned" and "take it" are one atomic step. The [`S2Tlb`] a
//! transition gets holds the `SMMUs` lock (taken after `host memory`); the table memory
//! (the page pool) is a leaf.
//!
//! Invalidation of the host stage-2 goes through [`HostS2Tlb`], the host's
//! [`Fanout`]: CPU `TLBI IPAS2E1IS` + `TLBI VMALLE1IS` (or `VMALLS12E1IS` for large
//! ranges) with `DSB ISH`; when the SMMUs take part in broadcast TLB maintenance (BTM,
//! CR2.PTM = 0) that is all, otherwise the same ranges are invalidated with SMMU commands
//! and one `CMD_SYNC` per SMMU completes them. Its `sync` is `DSB ISHST`
//! ([`CpuTlb::publish`]): the table code calls it before every invalidation, before
//! linking a new table and at the end of every change, so a walker never sees a table
//! descriptor before the table's contents, nor a TLBI before the descriptor write it is
//! for.

use crate::addr::{Ipa, PhysAddr, PhysRange};
use crate::inval::{CpuInval, Fanout};
use crate::page_state::{self, PageState, PreparedTables};
use crate::pins::{PinError, PinSet};
use crate::s2mmu::{Granule, S2Tlb, Stage2, TableMemory};
use crate::smmu::{Smmu, SmmuIo};
use alloc::vec::Vec;
use host_abi::Error;

/// Bytes in a page (the ownership unit): the crate's one `PAGE`.
pub use crate::PAGE;
/// Most pages one MEM_DONATE / MEM_RECLAIM moves (bounded work per call).
pub const MAX_PAGES_PER_CALL: u64 = 1 << 18;
/// Past this many pages one invalidation covers the whole VMID instead of a range.
pub const FULL_FLUSH_PAGES: u64 = 512;

/// CPU TLB maintenance for the host's VMID (the current `VTTBR_EL2`), inner shareable,
/// each call complete (`DSB ISH`) when it returns.
pub trait CpuTlb {
    /// `DSB ISHST`: every earlier descriptor write is visible to the table walkers (the
    /// CPUs' and the SMMUs') before anything that follows: linking a new table, a TLBI,
    /// the host running on the changed table.
    fn publish(&mut self);
    /// `TLBI IPAS2E1IS` for each page of the range, then `TLBI VMALLE1IS` (stage 1+2
    /// entries built from them).
    fn tlbi_ipa_range(&mut self, ipa: Ipa, size: u64);
    /// `TLBI VMALLS12E1IS`.
    fn tlbi_vmall(&mut self);
}

pub use crate::inval::InvalidationCounts;

/// The CPU side of the host stage-2's [`Fanout`]: [`CpuTlb`] for the host's VMID.
pub struct HostCpu<'a, C: CpuTlb>(pub &'a mut C);

impl<C: CpuTlb> CpuInval for HostCpu<'_, C> {
    fn barrier(&mut self) {
        self.0.publish();
    }
    fn range(&mut self, ipa: Ipa, size: u64, _granule: Granule, _leaf: bool) {
        self.0.tlbi_ipa_range(ipa, size);
    }
    fn all(&mut self) {
        self.0.tlbi_vmall();
    }
}

/// Host stage-2 invalidation for the CPU and every SMMU that walks the same table: the
/// [`Fanout`] with the CPUs translating through the table, 4 KiB commands that also
/// invalidate walk caches, and the whole VMID past [`FULL_FLUSH_PAGES`] pages (built by
/// [`host_s2_tlb`]).
pub type HostS2Tlb<'a, C, I, M> = Fanout<'a, HostCpu<'a, C>, I, M>;

/// Bundles the seams of one host stage-2 change into its [`HostS2Tlb`]: the CPU side,
/// every SMMU whose host StreamIDs use the host stage-2 and their DMA memory seam, whether
/// the SMMUs see the CPU's broadcast TLBIs (BTM in use), the host's VMID, and the counters.
pub fn host_s2_tlb<'a, C: CpuTlb, I: SmmuIo, M: TableMemory>(
    cpu: &'a mut C,
    smmus: &'a mut [Smmu<I, M>],
    smmu_mem: &'a mut M,
    btm: bool,
    vmid: u16,
    counts: &'a mut InvalidationCounts,
) -> HostS2Tlb<'a, C, I, M> {
    let mut f = Fanout::new(
        HostCpu(cpu),
        true,
        btm,
        smmus,
        smmu_mem,
        vmid,
        Granule::Size4K,
        counts,
    );
    f.whole_above = FULL_FLUSH_PAGES;
    f
}

/// The host's RAM and who owns which part of it: the host stage-2 (the host side of
/// every page's state, see [`page_state`]) and Warden's ledger (the
/// hyp side: what is RAM, Warden's own memory, donated runs, DMA pins). One lock guards
/// all of it (the DMA core's `host memory` lock).
pub struct HostMem {
    /// The host stage-2 (shared by the CPU and every host StreamID).
    pub s2: Stage2,
    ram: Vec<PhysRange>,
    /// Warden's own memory (image, pool): never the host's.
    carveouts: Vec<PhysRange>,
    /// Pages the host donated and Warden has not given back, in donation order.
    donated: Vec<PhysRange>,
    /// DMA pin counts of host pages.
    pins: PinSet,
}

pub use crate::page_state::HOST_RAM;

/// Maps an error of the pin bookkeeping to the ABI.
fn pin_error(e: PinError) -> Error {
    match e {
        PinError::Invalid => Error::Invalid,
        PinError::NoMem => Error::NoMem,
    }
}

/// A page-aligned, non-empty range that does not wrap.
fn page_range(base: u64, size: u64) -> Result<PhysRange, Error> {
    if size == 0 || !base.is_multiple_of(PAGE) || !size.is_multiple_of(PAGE) {
        return Err(Error::Invalid);
    }
    base.checked_add(size).ok_or(Error::Invalid)?;
    Ok(PhysRange::new(base, size))
}

impl HostMem {
    /// Wraps the boot-time host stage-2 (RAM minus `carveouts` mapped with [`HOST_RAM`],
    /// that is every page [`PageState::HostOwned`]).
    pub fn new(s2: Stage2, ram: Vec<PhysRange>, carveouts: Vec<PhysRange>) -> Self {
        Self {
            s2,
            ram,
            carveouts,
            donated: Vec::new(),
            pins: PinSet::new(),
        }
    }

    /// The DMA pin counts.
    pub fn pins(&self) -> &PinSet {
        &self.pins
    }

    /// Ranges currently donated to Warden, in donation order.
    pub fn donated(&self) -> &[PhysRange] {
        &self.donated
    }

    /// Pages currently donated to Warden.
    pub fn donated_pages(&self) -> u64 {
        self.donated.iter().map(|r| r.size / PAGE).sum()
    }

    /// Whether the host owns every page of `r` right now: every page is
    /// [`PageState::HostOwned`] in the host stage-2 (mapped identity as host RAM).
    pub fn host_owns(&self, mem: &impl TableMemory, r: PhysRange) -> bool {
        page_state::range_is(&self.s2, mem, r, PageState::HostOwned)
    }

    /// Both sides of "the host owns `r` and may give it away or pin it": the ledger says
    /// it is RAM and none of it is Warden's, and the stage-2 says every page is
    /// [`PageState::HostOwned`]. DENIED otherwise.
    fn check_host_owned(&self, mem: &impl TableMemory, r: PhysRange) -> Result<(), Error> {
        let ledger = self.ram.iter().any(|b| b.contains_range(&r))
            && !self.carveouts.iter().any(|c| c.overlaps(&r))
            && !self.donated.iter().any(|d| d.overlaps(&r));
        if ledger && self.host_owns(mem, r) {
            Ok(())
        } else {
            Err(Error::Denied)
        }
    }

    /// `host_pin_dma`: checks that the host owns every 4 KiB page of `r` now (DENIED
    /// otherwise: Warden's memory, donated pages, MMIO, beyond RAM) and adds one DMA pin to
    /// each. On error nothing changed.
    pub fn host_pin_dma(&mut self, mem: &impl TableMemory, r: PhysRange) -> Result<(), Error> {
        // Validate.
        let r = page_range(r.base.get(), r.size)?;
        // Check both sides.
        self.check_host_owned(mem, r)?;
        // Prepare.
        self.pins.prepare_pin(r).map_err(pin_error)?;
        // Commit.
        self.pins.commit_pin(r);
        Ok(())
    }

    /// `host_unpin_dma`: drops one DMA pin from every page of `r` (pinned by
    /// [`host_pin_dma`](Self::host_pin_dma)). Call only once no device can reach the pages
    /// through the mapping that held the pin (its invalidation completed). NOMEM when the
    /// pin bookkeeping cannot record it: then the pages stay pinned (safe; the caller
    /// counts them as leaked).
    pub fn host_unpin_dma(&mut self, r: PhysRange) -> Result<(), Error> {
        // Validate and prepare (the pin side is the only one: a pinned page is the host's
        // and stays so).
        self.pins.prepare_unpin(r).map_err(pin_error)?;
        // Commit.
        self.pins.commit_unpin(r);
        Ok(())
    }

    /// MEM_DONATE: `pages` pages from `pa` leave the host stage-2 and become Warden's
    /// ([`PageState::HostOwned`] → [`PageState::HypOwned`]). DENIED unless the host owns
    /// every page; BUSY if one is DMA-pinned (mapped in a domain or pending a batched
    /// invalidation); NOMEM if the tables or the ledger cannot grow. On any of these
    /// errors nothing has changed. BUSY also when an SMMU did not confirm the
    /// invalidation: then the pages have left the host but go to nobody (withheld).
    pub fn host_donate_hyp<T: S2Tlb>(
        &mut self,
        mem: &mut impl TableMemory,
        tlb: &mut T,
        pa: u64,
        pages: u64,
    ) -> Result<(), Error> {
        // Validate.
        if pages > MAX_PAGES_PER_CALL {
            return Err(Error::Invalid);
        }
        let r = page_range(pa, pages.saturating_mul(PAGE))?;
        // Check both sides: the host's (stage-2 state, ledger), then the pins.
        self.check_host_owned(mem, r)?;
        if self.pins.any_pinned(r) {
            return Err(Error::Busy);
        }
        // Prepare: room for the donated run (merging needs none, a new run one entry),
        // and every table the unmap will split blocks into (less those a table it frees
        // on the way, taken back, can be).
        self.donated.try_reserve(1).map_err(|_| Error::NoMem)?;
        // One walk: the splits' tables, and how many of them must come from the pool.
        let (need, fresh) = page_state::unmap_table_needs(&self.s2, mem, r)?;
        let geom = self.s2.geometry();
        let mut tables = PreparedTables::with_room(mem, geom, fresh, need)?;
        // Commit: nothing below can run out of memory.
        let unmapped = self.s2.unmap(&mut tables, tlb, Ipa(r.base.get()), r.size);
        drop(tables);
        // Ownership changes only once the host's and devices' translations are gone.
        let confirmed = tlb.complete();
        if let Err(e) = unmapped {
            // Not reachable unless an SMMU did not confirm an invalidation (then a table
            // the walk freed was kept, never reused): the tables were counted and
            // allocated above. Whatever was unmapped stays so, and goes to nobody.
            debug_assert!(!confirmed, "MEM_DONATE {r:?}: prepared unmap failed: {e:?}");
            log::error!("MEM_DONATE {r:?}: prepared unmap failed ({e}); pages withheld");
            return Err(Error::Busy);
        }
        if !confirmed {
            // A device may still reach the pages: they leave the host (unmapped) but go
            // to nobody; the host gets BUSY and the pages stay out of use for good.
            log::error!(
                "MEM_DONATE {r:?}: an SMMU did not confirm the invalidation; pages withheld"
            );
            return Err(Error::Busy);
        }
        self.record_donated(r);
        Ok(())
    }

    /// Adds `r` to the donated runs, merging it with a run it touches (the pool may hand
    /// back, for reclaim, a run that spans two adjacent donations). Room for a new run
    /// was reserved before anything changed.
    fn record_donated(&mut self, r: PhysRange) {
        let before = self.donated.iter().position(|d| d.end() == r.base.get());
        let after = self.donated.iter().position(|d| d.base.get() == r.end());
        match (before, after) {
            (Some(b), Some(a)) => {
                let merged = PhysRange::new(
                    self.donated[b].base.get(),
                    self.donated[b].size + r.size + self.donated[a].size,
                );
                self.donated[b] = merged;
                self.donated.remove(a);
            }
            (Some(b), None) => self.donated[b].size += r.size,
            (None, Some(a)) => {
                self.donated[a] = PhysRange::new(r.base.get(), r.size + self.donated[a].size)
            }
            (None, None) => {
                debug_assert!(self.donated.len() < self.donated.capacity());
                self.donated.push(r)
            }
        }
    }

    /// MEM_RECLAIM for a pool that never uses donated pages: gives up to `wanted` pages
    /// of the oldest donated run back to the host. Returns the run's address and page
    /// count; NOENT when nothing is donated. (The DMA core, whose pool does use donated
    /// pages, calls [`hyp_donate_host_range`](Self::hyp_donate_host_range) with pages the
    /// pool released.)
    pub fn hyp_donate_host<T: S2Tlb>(
        &mut self,
        mem: &mut impl TableMemory,
        tlb: &mut T,
        wanted: u64,
    ) -> Result<(PhysAddr, u64), Error> {
        if wanted == 0 || wanted > MAX_PAGES_PER_CALL {
            return Err(Error::Invalid);
        }
        let Some(first) = self.donated.first().copied() else {
            return Err(Error::NoEnt);
        };
        let n = (first.size / PAGE).min(wanted);
        self.hyp_donate_host_range(mem, tlb, PhysRange::new(first.base.get(), n * PAGE))
    }

    /// MEM_RECLAIM: gives the donated pages `give` back to the host (Warden no longer
    /// uses them: the page pool handed them out for this), [`PageState::HypOwned`] →
    /// [`PageState::HostOwned`]. Returns the run's address and page count. INVALID if
    /// `give` is not page-aligned or not inside one donated range; NOMEM if the tables or
    /// the ledger cannot grow; on either nothing has changed.
    pub fn hyp_donate_host_range<T: S2Tlb>(
        &mut self,
        mem: &mut impl TableMemory,
        tlb: &mut T,
        give: PhysRange,
    ) -> Result<(PhysAddr, u64), Error> {
        // Validate.
        let n = give.size / PAGE;
        if n > MAX_PAGES_PER_CALL {
            return Err(Error::Invalid);
        }
        let give = page_range(give.base.get(), give.size)?;
        // Check both sides: Warden's ledger (one donated run holds it all), then the
        // stage-2 (every page Warden's, unmapped for the host).
        let Some(idx) = self.donated.iter().position(|d| d.contains_range(&give)) else {
            return Err(Error::Invalid);
        };
        if !page_state::range_is(&self.s2, mem, give, PageState::HypOwned) {
            return Err(Error::Invalid);
        }
        // Prepare: room for splitting the donated run, and every table the map needs.
        let first = self.donated[idx];
        let (left, right) = (
            PhysRange::new(first.base.get(), give.base.get() - first.base.get()),
            PhysRange::new(give.end(), first.end() - give.end()),
        );
        if left.size != 0 && right.size != 0 && self.donated.try_reserve(1).is_err() {
            return Err(Error::NoMem);
        }
        let need = page_state::tables_to_map(&self.s2, mem, give, HOST_RAM)?;
        let geom = self.s2.geometry();
        let mut tables = PreparedTables::new(mem, geom, need)?;
        // Commit: nothing below can run out of memory.
        let mapped = self.s2.map(
            &mut tables,
            tlb,
            Ipa(give.base.get()),
            give.base,
            give.size,
            HOST_RAM,
        );
        drop(tables);
        tlb.complete();
        if let Err(e) = mapped {
            // Not reachable: the tables were counted and allocated above. Part of the run
            // may be the host's now: it stays donated but is never used again (withheld).
            debug_assert!(false, "MEM_RECLAIM {give:?}: prepared map failed: {e:?}");
            log::error!("MEM_RECLAIM {give:?}: prepared map failed ({e}); pages withheld");
            return Err(Error::Busy);
        }
        match (left.size != 0, right.size != 0) {
            (false, false) => {
                self.donated.remove(idx);
            }
            (true, false) => self.donated[idx] = left,
            (false, true) => self.donated[idx] = right,
            (true, true) => {
                self.donated[idx] = left;
                debug_assert!(self.donated.len() < self.donated.capacity());
                self.donated.insert(idx + 1, right);
            }
        }
        Ok((give.base, n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::s2mmu::{NoTlb, S2Geometry};
    use crate::smmu::cmdq::op;
    use crate::smmu::model::{ModelConfig, SmmuModel};
    use crate::smmu::{ProbeConfig, S2Config};
    use crate::testutil::Arena;
    use alloc::vec;

    const SID: u32 = 0x10;
    const HOST_VMID: u16 = 0;
    const MB: u64 = 1 << 20;
    /// The host's fake RAM (outside the arena: DMA is only translated, never performed).
    const RAM: PhysRange = PhysRange::new(0x4000_0000, 256 * MB);
    /// Warden's carve-out inside it.
    const CARVE: PhysRange = PhysRange::new(0x4020_0000, 4 * MB);

    /// A CPU whose broadcast TLBIs reach the SMMU model (which honours them only with BTM
    /// present and PTM clear), counting what it issued.
    struct ModelCpu<'a> {
        model: &'a SmmuModel,
        ops: u64,
    }

    impl CpuTlb for ModelCpu<'_> {
        fn publish(&mut self) {}
        fn tlbi_ipa_range(&mut self, ipa: Ipa, size: u64) {
            let mut a = ipa.get();
            while a < ipa.get() + size {
                self.model.cpu_tlbi_ipa(HOST_VMID, a);
                a += PAGE;
            }
            self.model.cpu_tlbi_vmall(HOST_VMID);
            self.ops += 1;
        }
        fn tlbi_vmall(&mut self) {
            self.model.cpu_tlbi_vmall(HOST_VMID);
            self.ops += 1;
        }
    }

    type TestSmmu<'a> = Smmu<&'a SmmuModel, Arena>;

    /// Seams for one host stage-2 operation: SMMU queue memory in its own allocator.
    struct World<'m> {
        model: &'m SmmuModel,
        tables: Arena,
        queues: Arena,
        btm: bool,
    }

    fn world(model: &SmmuModel, ram: std::rc::Rc<crate::testutil::Ram>, btm: bool) -> World<'_> {
        let base = ram.base();
        World {
            model,
            tables: Arena::with_ram(ram.clone()),
            queues: Arena::with_ram_at(ram, base + (4 << 20)),
            btm,
        }
    }

    impl World<'_> {
        fn op<R>(
            &mut self,
            smmu: &mut TestSmmu<'_>,
            f: impl FnOnce(&mut Arena, &mut dyn S2TlbDyn) -> R,
        ) -> (R, InvalidationCounts, u64) {
            let mut counts = InvalidationCounts::default();
            let mut cpu = ModelCpu {
                model: self.model,
                ops: 0,
            };
            let r = {
                let mut tlb = host_s2_tlb(
                    &mut cpu,
                    core::slice::from_mut(smmu),
                    &mut self.queues,
                    self.btm,
                    HOST_VMID,
                    &mut counts,
                );
                f(&mut self.tables, &mut tlb)
            };
            (r, counts, cpu.ops)
        }
    }

    /// Object-safe view of an [`S2Tlb`] for the closures above.
    trait S2TlbDyn {
        fn inv(&mut self, ipa: Ipa, size: u64, leaf: bool);
        fn all(&mut self);
        fn sync_(&mut self);
        fn complete_(&mut self) -> bool;
    }
    impl<T: S2Tlb> S2TlbDyn for T {
        fn inv(&mut self, ipa: Ipa, size: u64, leaf: bool) {
            self.invalidate_ipa_range(ipa, size, leaf)
        }
        fn all(&mut self) {
            self.invalidate_all()
        }
        fn sync_(&mut self) {
            self.sync()
        }
        fn complete_(&mut self) -> bool {
            self.complete()
        }
    }
    impl S2Tlb for &mut dyn S2TlbDyn {
        fn invalidate_ipa_range(&mut self, ipa: Ipa, size: u64, leaf: bool) {
            (**self).inv(ipa, size, leaf)
        }
        fn invalidate_all(&mut self) {
            (**self).all()
        }
        fn sync(&mut self) {
            (**self).sync_()
        }
        fn complete(&mut self) -> bool {
            (**self).complete_()
        }
    }

    /// Boots a test world: `$model` (an SMMU model with `$cfg`), `$w` (its seams),
    /// `$hm` (host memory) and `$smmu` (the driver), BTM in use as `$btm` says.
    macro_rules! setup {
        ($model:ident, $w:ident, $hm:ident, $smmu:ident, $cfg:expr, $btm:expr) => {
            let ram = std::rc::Rc::new(crate::testutil::Ram::new(0x8000_0000, 8 << 20));
            let $model = SmmuModel::new($cfg, ram.clone());
            let mut $w = world(&$model, ram, $btm);
            #[allow(unused_mut)]
            let (mut $hm, mut $smmu) = {
                let World { tables, queues, .. } = &mut $w;
                boot_split(&$model, tables, queues, $btm)
            };
        };
    }

    /// Acceptance: after a donation, DMA to the page faults (never a stale hit); with BTM
    /// the donation issued no SMMU command at all, without BTM range invalidation(s) and
    /// exactly one CMD_SYNC; after reclaim the page is DMA-able again.
    fn donation_cycle(btm: bool, ril: bool) {
        setup!(
            model,
            w,
            hm,
            smmu,
            ModelConfig {
                btm,
                ril,
                ..ModelConfig::default()
            },
            btm
        );
        let page = 0x4100_0000u64;
        // The device uses the page: its translation is now cached in the SMMU TLB.
        assert_eq!(model.dma(SID, page, true), Ok(PhysAddr(page)));
        assert_eq!(
            model.dma(SID, page + PAGE, false),
            Ok(PhysAddr(page + PAGE))
        );
        model.clear_counts();

        let (r, counts, cpu_ops) = w.op(&mut smmu, |mem, mut tlb| {
            hm.host_donate_hyp(mem, &mut tlb, page, 1)
        });
        assert_eq!(r, Ok(()));
        assert!(cpu_ops >= 1, "the CPU side is always invalidated");
        assert!(
            model.dma(SID, page, true).is_err(),
            "DMA to a donated page must fault"
        );
        assert!(model.dma(SID, page, false).is_err());
        assert_eq!(
            model.dma(SID, page + PAGE, false),
            Ok(PhysAddr(page + PAGE)),
            "neighbour intact"
        );
        let total: u64 = model.executed().len() as u64;
        if btm {
            assert_eq!(
                total,
                0,
                "with BTM the donation issues no SMMU command: {:?}",
                model.executed()
            );
            assert_eq!(counts.smmu_syncs, 0);
        } else {
            assert_eq!(
                model.count(op::CMD_SYNC),
                1,
                "exactly one CMD_SYNC: {:?}",
                model.executed()
            );
            assert!(
                model.count(op::TLBI_S2_IPA) >= 1,
                "range invalidation issued"
            );
            assert_eq!(model.count(op::TLBI_S12_VMALL), 0);
        }
        assert!(!hm.host_owns(&w.tables, PhysRange::new(page, PAGE)));
        assert_eq!(hm.donated_pages(), 1);

        let (r, _, _) = w.op(&mut smmu, |mem, mut tlb| {
            hm.hyp_donate_host(mem, &mut tlb, 1)
        });
        assert_eq!(r, Ok((PhysAddr(page), 1)));
        assert_eq!(
            model.dma(SID, page, true),
            Ok(PhysAddr(page)),
            "DMA-able again after reclaim"
        );
        assert!(hm.host_owns(&w.tables, PhysRange::new(page, PAGE)));
    }

    fn boot_split<'m>(
        model: &'m SmmuModel,
        tables: &mut Arena,
        queues: &mut Arena,
        btm: bool,
    ) -> (HostMem, TestSmmu<'m>) {
        let geom = S2Geometry::new(Granule::Size4K, 40, 40).unwrap();
        // SAFETY: every later call passes this same arena for the tables.
        let mut s2 = unsafe { Stage2::new(geom, tables) }.unwrap();
        crate::layout::subtract(RAM, &[CARVE], |r| {
            s2.map(
                tables,
                &mut NoTlb,
                Ipa(r.base.get()),
                r.base,
                r.size,
                HOST_RAM,
            )
            .unwrap();
        });
        let sids = [(SID, 1)];
        let cfg = ProbeConfig {
            coherent: true,
            sids: &sids,
            cmdq_log2: None,
            evtq_log2: None,
        };
        // SAFETY: every later call passes this same arena for the queues.
        let mut smmu = unsafe { Smmu::probe(model, queues, &cfg) }.unwrap();
        smmu.set_ste_s2(queues, SID, &S2Config::for_stage2(&s2, HOST_VMID))
            .unwrap();
        if btm {
            smmu.set_ptm(queues, false).unwrap();
        }
        (HostMem::new(s2, vec![RAM], vec![CARVE]), smmu)
    }

    #[test]
    fn donation_without_btm_uses_smmu_commands_and_one_sync() {
        donation_cycle(false, true);
        donation_cycle(false, false);
    }

    #[test]
    fn donation_with_btm_issues_no_smmu_command() {
        donation_cycle(true, true);
    }

    #[test]
    fn btm_present_but_not_enabled_still_needs_commands() {
        // The SMMU has BTM but PTM stays set: broadcast TLBIs do not reach it, so Warden
        // must use commands; a stale translation would show up here.
        setup!(
            model,
            w,
            hm,
            smmu,
            ModelConfig {
                btm: true,
                ..ModelConfig::default()
            },
            false
        );
        let page = 0x4200_0000u64;
        assert!(model.dma(SID, page, true).is_ok());
        let (r, counts, _) = w.op(&mut smmu, |mem, mut tlb| {
            hm.host_donate_hyp(mem, &mut tlb, page, 4)
        });
        assert_eq!(r, Ok(()));
        assert_eq!(counts.smmu_syncs, 1);
        for i in 0..4 {
            assert!(model.dma(SID, page + i * PAGE, true).is_err());
        }
    }

    #[test]
    fn bad_donations_change_nothing() {
        setup!(model, w, hm, smmu, ModelConfig::default(), false);
        let page = 0x4300_0000u64;
        let cases: [(u64, u64, Error); 7] = [
            (page + 8, 1, Error::Invalid),          // unaligned
            (page, 0, Error::Invalid),              // zero pages
            (!0xfff, 2, Error::Invalid),            // wraps
            (CARVE.base.get(), 1, Error::Denied),   // Warden's memory
            (CARVE.end() - PAGE, 2, Error::Denied), // straddles the carve-out
            (RAM.end(), 1, Error::Denied),          // not RAM (MMIO / nothing)
            (RAM.end() - PAGE, 2, Error::Denied),   // runs off the end of RAM
        ];
        for (pa, pages, err) in cases {
            let (r, counts, _) = w.op(&mut smmu, |mem, mut tlb| {
                hm.host_donate_hyp(mem, &mut tlb, pa, pages)
            });
            assert_eq!(r, Err(err), "donate {pa:#x} x{pages}");
            assert_eq!(counts, InvalidationCounts::default(), "nothing invalidated");
        }
        assert_eq!(hm.donated_pages(), 0);
        assert!(model.dma(SID, page, true).is_ok());
        // Twice the same page: the second is DENIED (Warden owns it now).
        let (r, _, _) = w.op(&mut smmu, |mem, mut tlb| {
            hm.host_donate_hyp(mem, &mut tlb, page, 1)
        });
        assert_eq!(r, Ok(()));
        let (r, _, _) = w.op(&mut smmu, |mem, mut tlb| {
            hm.host_donate_hyp(mem, &mut tlb, page, 1)
        });
        assert_eq!(r, Err(Error::Denied));
        // Reclaim: zero is INVALID, a range beyond the donated run too; then the page,
        // then nothing left (NOENT).
        let (r, _, _) = w.op(&mut smmu, |mem, mut tlb| {
            hm.hyp_donate_host(mem, &mut tlb, 0)
        });
        assert_eq!(r, Err(Error::Invalid));
        let (r, _, _) = w.op(&mut smmu, |mem, mut tlb| {
            hm.hyp_donate_host_range(mem, &mut tlb, PhysRange::new(page, 0))
        });
        assert_eq!(r, Err(Error::Invalid));
        let (r, _, _) = w.op(&mut smmu, |mem, mut tlb| {
            hm.hyp_donate_host_range(mem, &mut tlb, PhysRange::new(page, 2 * PAGE))
        });
        assert_eq!(r, Err(Error::Invalid), "beyond the donated range");
        let (r, _, _) = w.op(&mut smmu, |mem, mut tlb| {
            hm.hyp_donate_host(mem, &mut tlb, 5)
        });
        assert_eq!(r, Ok((PhysAddr(page), 1)));
        let (r, _, _) = w.op(&mut smmu, |mem, mut tlb| {
            hm.hyp_donate_host(mem, &mut tlb, 1)
        });
        assert_eq!(r, Err(Error::NoEnt));
        // A pinned page cannot be donated (BUSY); once unpinned it can.
        let p2 = page + 16 * PAGE;
        assert_eq!(
            hm.host_pin_dma(&w.tables, PhysRange::new(p2, 2 * PAGE)),
            Ok(())
        );
        assert_eq!(
            hm.host_pin_dma(&w.tables, PhysRange::new(CARVE.base.get(), PAGE)),
            Err(Error::Denied)
        );
        let (r, counts, _) = w.op(&mut smmu, |mem, mut tlb| {
            hm.host_donate_hyp(mem, &mut tlb, p2 + PAGE, 4)
        });
        assert_eq!(r, Err(Error::Busy));
        assert_eq!(counts, InvalidationCounts::default(), "nothing invalidated");
        hm.host_unpin_dma(PhysRange::new(p2, 2 * PAGE)).unwrap();
        let (r, _, _) = w.op(&mut smmu, |mem, mut tlb| {
            hm.host_donate_hyp(mem, &mut tlb, p2 + PAGE, 4)
        });
        assert_eq!(r, Ok(()));
        // Reclaiming the middle of a donated run splits it.
        let (r, _, _) = w.op(&mut smmu, |mem, mut tlb| {
            hm.hyp_donate_host_range(mem, &mut tlb, PhysRange::new(p2 + 2 * PAGE, PAGE))
        });
        assert_eq!(r, Ok((PhysAddr(p2 + 2 * PAGE), 1)));
        assert_eq!(
            hm.donated(),
            &[
                PhysRange::new(p2 + PAGE, PAGE),
                PhysRange::new(p2 + 3 * PAGE, 2 * PAGE)
            ]
        );
    }

    #[test]
    fn adjacent_donations_reclaim_as_one_run() {
        setup!(model, w, hm, smmu, ModelConfig::default(), false);
        let a = 0x4400_0000u64;
        // Donated one page at a time, in reverse and then forward order.
        for pa in [a + PAGE, a, a + 2 * PAGE] {
            let (r, _, _) = w.op(&mut smmu, |mem, mut tlb| {
                hm.host_donate_hyp(mem, &mut tlb, pa, 1)
            });
            assert_eq!(r, Ok(()));
        }
        assert_eq!(hm.donated_pages(), 3);
        // A pool may hand back a run spanning separate donations.
        let give = PhysRange::new(a, 3 * PAGE);
        let (r, _, _) = w.op(&mut smmu, |mem, mut tlb| {
            hm.hyp_donate_host_range(mem, &mut tlb, give)
        });
        assert_eq!(r, Ok((PhysAddr(a), 3)));
        assert_eq!(hm.donated_pages(), 0);
        assert!(hm.host_owns(&w.tables, give));
        for i in 0..3 {
            assert!(model.dma(SID, a + i * PAGE, true).is_ok());
        }
    }

    #[test]
    fn donation_is_withheld_when_the_smmu_does_not_confirm() {
        setup!(model, w, hm, smmu, ModelConfig::default(), false);
        let page = 0x4500_0000u64;
        model.set_stalled(true);
        let (r, counts, _) = w.op(&mut smmu, |mem, mut tlb| {
            hm.host_donate_hyp(mem, &mut tlb, page, 1)
        });
        assert_eq!(r, Err(Error::Busy));
        assert_eq!(counts.smmu_errors, 1);
        assert_eq!(hm.donated_pages(), 0, "never handed to Warden's pool");
        assert!(
            !hm.host_owns(&w.tables, PhysRange::new(page, PAGE)),
            "and not the host's either"
        );
        model.set_stalled(false);
        let (r, _, _) = w.op(&mut smmu, |mem, mut tlb| {
            hm.hyp_donate_host(mem, &mut tlb, 1)
        });
        assert_eq!(r, Err(Error::NoEnt), "nothing to reclaim");
    }

    #[test]
    fn out_of_table_memory_rolls_back() {
        setup!(model, w, hm, smmu, ModelConfig::default(), false);
        // A page inside a 2 MiB block: splitting it needs a table; allow none.
        let page = 0x4800_1000u64;
        w.tables.budget = Some(0);
        let (r, _, _) = w.op(&mut smmu, |mem, mut tlb| {
            hm.host_donate_hyp(mem, &mut tlb, page, 1)
        });
        assert_eq!(r, Err(Error::NoMem));
        assert!(
            hm.host_owns(&w.tables, PhysRange::new(page, PAGE)),
            "nothing changed"
        );
        assert_eq!(model.dma(SID, page, true), Ok(PhysAddr(page)));
        w.tables.budget = None;
        let (r, _, _) = w.op(&mut smmu, |mem, mut tlb| {
            hm.host_donate_hyp(mem, &mut tlb, page, 1)
        });
        assert_eq!(r, Ok(()));
    }

    /// Was `reclaim_whose_rollback_is_unconfirmed_is_withheld`: a reclaim that ran out of
    /// tables halfway mapped part of the run, then rolled it back, and withheld the run
    /// when the SMMU did not confirm the rollback. The tables are now allocated before
    /// anything changes: the same reclaim maps nothing, invalidates nothing, and the run
    /// stays Warden's as it was (NOMEM), whatever the SMMU does.
    #[test]
    fn reclaim_short_of_tables_changes_nothing() {
        setup!(model, w, hm, smmu, ModelConfig::default(), false);
        // Donated: the last page of one 2 MiB block (which splits it: a level-3 table
        // stays) and the whole next block (no table left): one run of 513 pages.
        let edge = 0x4900_0000u64 + 2 * MB - PAGE;
        for (pa, pages) in [(edge, 1), (edge + PAGE, 512)] {
            let (r, _, _) = w.op(&mut smmu, |mem, mut tlb| {
                hm.host_donate_hyp(mem, &mut tlb, pa, pages)
            });
            assert_eq!(r, Ok(()));
        }
        // Giving back [edge, edge + 2 pages): the first page would map into the existing
        // table, the second needs a new table and there is none.
        w.tables.budget = Some(0);
        model.set_stalled(true);
        let give = PhysRange::new(edge, 2 * PAGE);
        let (r, counts, _) = w.op(&mut smmu, |mem, mut tlb| {
            hm.hyp_donate_host_range(mem, &mut tlb, give)
        });
        model.set_stalled(false);
        w.tables.budget = None;
        assert_eq!(r, Err(Error::NoMem));
        assert_eq!(
            counts,
            InvalidationCounts::default(),
            "nothing to invalidate"
        );
        assert!(
            page_state::range_is(&hm.s2, &w.tables, give, PageState::HypOwned),
            "not even the first page was mapped"
        );
        assert!(model.dma(SID, edge, true).is_err());
        assert_eq!(hm.donated_pages(), 513, "still donated");
        // With a table to spare it goes through.
        let (r, _, _) = w.op(&mut smmu, |mem, mut tlb| {
            hm.hyp_donate_host_range(mem, &mut tlb, give)
        });
        assert_eq!(r, Ok((PhysAddr(edge), 2)));
        assert!(hm.host_owns(&w.tables, give));
        assert_eq!(model.dma(SID, edge + PAGE, true), Ok(PhysAddr(edge + PAGE)));
        assert_eq!(hm.donated_pages(), 511);
    }

    /// Table memory that runs dry as a pool does: `left` allocations, and every table
    /// freed can be handed out again.
    struct Pool<'a> {
        inner: &'a mut Arena,
        left: usize,
    }

    // SAFETY: forwards to the arena.
    unsafe impl TableMemory for Pool<'_> {
        fn alloc_zeroed(&mut self, size: usize, align: usize) -> Option<PhysAddr> {
            self.left = self.left.checked_sub(1)?;
            self.inner.alloc_zeroed(size, align)
        }
        unsafe fn free(&mut self, pa: PhysAddr, size: usize) {
            self.left += 1;
            // SAFETY: forwarded under the caller's contract.
            unsafe { self.inner.free(pa, size) }
        }
        fn table_ptr(&self, pa: PhysAddr) -> *mut u64 {
            self.inner.table_ptr(pa)
        }
    }

    /// A donation that frees a table (covered whole) before it splits a later block
    /// needs no more table memory than the splits hold at once: the freed table is
    /// handed out again, as it was when the walk drew from the pool as it went. (With
    /// the host reserve partly used up and the pool empty, one spare table must do.)
    #[test]
    fn donation_reuses_a_table_it_freed_on_the_way() {
        setup!(model, w, hm, smmu, ModelConfig::default(), false);
        // Three 2 MiB blocks a, b, c; b becomes a level-3 table of host pages (one page
        // donated and given back), a and c stay blocks.
        let a = 0x4800_0000u64;
        let (b, c) = (a + 2 * MB, a + 4 * MB);
        let (r, _, _) = w.op(&mut smmu, |mem, mut tlb| {
            hm.host_donate_hyp(mem, &mut tlb, b + PAGE, 1)
        });
        assert_eq!(r, Ok(()));
        let (r, _, _) = w.op(&mut smmu, |mem, mut tlb| {
            hm.hyp_donate_host_range(mem, &mut tlb, PhysRange::new(b + PAGE, PAGE))
        });
        assert_eq!(r, Ok((PhysAddr(b + PAGE), 1)));
        let live = w.tables.live_count();
        // The last page of a, all of b, the first page of c: split a (one table), free
        // b's table, split c (the same table again).
        let r = PhysRange::new(b - PAGE, 2 * MB + 2 * PAGE);
        let (got, _, _) = w.op(&mut smmu, |mem, mut tlb| {
            let mut pool = Pool {
                inner: mem,
                left: 1,
            };
            hm.host_donate_hyp(&mut pool, &mut tlb, r.base.get(), r.size / PAGE)
        });
        assert_eq!(got, Ok(()));
        assert!(page_state::range_is(
            &hm.s2,
            &w.tables,
            r,
            PageState::HypOwned
        ));
        assert!(hm.host_owns(&w.tables, PhysRange::new(a, 2 * MB - PAGE)));
        assert!(hm.host_owns(&w.tables, PhysRange::new(c + PAGE, 2 * MB - PAGE)));
        assert_eq!(model.dma(SID, b, true).map_err(|_| ()), Err(()));
        assert_eq!(model.dma(SID, c + PAGE, true), Ok(PhysAddr(c + PAGE)));
        assert_eq!(
            w.tables.live_count(),
            live + 1,
            "b's table went, a's and c's came"
        );
        assert_eq!(hm.donated_pages(), 514);
    }

    /// The same donation when the SMMU does not confirm the invalidation before b's
    /// table is freed: the table is kept (never reused), so the split of c finds no
    /// table: BUSY, and what was unmapped goes to nobody; c stays the host's.
    #[test]
    fn donation_whose_freed_table_is_unconfirmed_is_withheld() {
        setup!(model, w, hm, smmu, ModelConfig::default(), false);
        let a = 0x4800_0000u64;
        let (b, c) = (a + 2 * MB, a + 4 * MB);
        let (r, _, _) = w.op(&mut smmu, |mem, mut tlb| {
            hm.host_donate_hyp(mem, &mut tlb, b + PAGE, 1)
        });
        assert_eq!(r, Ok(()));
        let (r, _, _) = w.op(&mut smmu, |mem, mut tlb| {
            hm.hyp_donate_host_range(mem, &mut tlb, PhysRange::new(b + PAGE, PAGE))
        });
        assert_eq!(r, Ok((PhysAddr(b + PAGE), 1)));
        model.set_stalled(true);
        let r = PhysRange::new(b - PAGE, 2 * MB + 2 * PAGE);
        let (got, counts, _) = w.op(&mut smmu, |mem, mut tlb| {
            hm.host_donate_hyp(mem, &mut tlb, r.base.get(), r.size / PAGE)
        });
        model.set_stalled(false);
        assert_eq!(got, Err(Error::Busy));
        assert!(counts.smmu_errors >= 1);
        assert!(page_state::range_is(
            &hm.s2,
            &w.tables,
            PhysRange::new(b - PAGE, 2 * MB + PAGE),
            PageState::HypOwned
        ));
        assert!(hm.host_owns(&w.tables, PhysRange::new(c, 2 * MB)));
        assert_eq!(hm.donated_pages(), 0, "withheld, not donated");
        assert_eq!(hm.s2.leaked_table_bytes(), PAGE, "b's table kept");
    }

    /// A memory-order model of the table walkers: a descriptor write (the table code
    /// cleans every entry it writes in a live table, and a new table whole before
    /// linking it; fresh tables are written by their zeroing) is *unpublished* until the
    /// next `DSB ISHST`. A walker must never be pointed at unpublished data: no TLBI while
    /// a write is unpublished, no table descriptor that points at an unpublished table.
    #[derive(Default)]
    struct Order {
        unpublished: Vec<(u64, u64)>,
        publishes: u64,
        violations: Vec<std::string::String>,
    }

    impl Order {
        fn dirty_in(&self, pa: u64, size: u64) -> bool {
            self.unpublished
                .iter()
                .any(|&(a, s)| a < pa + size && pa < a + s)
        }
    }

    struct OrderMem<'a> {
        inner: &'a mut Arena,
        order: Rc<RefCell<Order>>,
    }

    // SAFETY: forwards to the arena.
    unsafe impl TableMemory for OrderMem<'_> {
        fn alloc_zeroed(&mut self, size: usize, align: usize) -> Option<PhysAddr> {
            let pa = self.inner.alloc_zeroed(size, align)?;
            // Zeroing is a write like any other.
            self.order
                .borrow_mut()
                .unpublished
                .push((pa.get(), size as u64));
            Some(pa)
        }
        unsafe fn free(&mut self, pa: PhysAddr, size: usize) {
            // SAFETY: forwarded under the caller's contract.
            unsafe { self.inner.free(pa, size) }
        }
        fn table_ptr(&self, pa: PhysAddr) -> *mut u64 {
            self.inner.table_ptr(pa)
        }
        fn clean(&mut self, pa: PhysAddr, size: usize) {
            self.inner.clean(pa, size);
            let mut o = self.order.borrow_mut();
            if size == 8 {
                // An entry was just written: if it links a table, that table must be
                // published already.
                // SAFETY: `pa` is an entry of a live table of the arena.
                let d = unsafe {
                    self.inner
                        .table_ptr(PhysAddr(pa.get() & !0xfff))
                        .add((pa.get() & 0xfff) as usize / 8)
                        .read_volatile()
                };
                let target = d & 0x0000_ffff_ffff_f000;
                let is_table = self
                    .inner
                    .live()
                    .iter()
                    .any(|&(a, s)| target >= a && target < a + s as u64);
                if d & 3 == 3 && is_table && o.dirty_in(target, PAGE) {
                    let v = std::format!(
                        "table {target:#x} linked at {:#x} before its contents were published",
                        pa.get()
                    );
                    o.violations.push(v);
                }
            }
            o.unpublished.push((pa.get(), size as u64));
        }
    }

    struct OrderCpu<'a> {
        model: &'a SmmuModel,
        order: Rc<RefCell<Order>>,
    }

    impl OrderCpu<'_> {
        fn check(&self, what: &str) {
            let mut o = self.order.borrow_mut();
            if !o.unpublished.is_empty() {
                let v = std::format!(
                    "{what} with {} descriptor write(s) unpublished",
                    o.unpublished.len()
                );
                o.violations.push(v);
            }
        }
    }

    impl CpuTlb for OrderCpu<'_> {
        fn publish(&mut self) {
            let mut o = self.order.borrow_mut();
            o.unpublished.clear();
            o.publishes += 1;
        }
        fn tlbi_ipa_range(&mut self, ipa: Ipa, size: u64) {
            self.check("TLBI IPAS2E1IS");
            let mut a = ipa.get();
            while a < ipa.get() + size {
                self.model.cpu_tlbi_ipa(HOST_VMID, a);
                a += PAGE;
            }
            self.model.cpu_tlbi_vmall(HOST_VMID);
        }
        fn tlbi_vmall(&mut self) {
            self.check("TLBI VMALLS12E1IS");
            self.model.cpu_tlbi_vmall(HOST_VMID);
        }
    }

    use core::cell::RefCell;
    use std::rc::Rc;

    #[test]
    fn host_stage2_changes_publish_before_linking_and_before_invalidation() {
        for btm in [false, true] {
            setup!(
                model,
                w,
                hm,
                smmu,
                ModelConfig {
                    btm,
                    ..ModelConfig::default()
                },
                btm
            );
            let order = Rc::new(RefCell::new(Order::default()));
            let mut counts = InvalidationCounts::default();
            let mut cpu = OrderCpu {
                model: &model,
                order: order.clone(),
            };
            let mut mem = OrderMem {
                inner: &mut w.tables,
                order: order.clone(),
            };
            // A page inside a 2 MiB block (a new table is linked, the block broken), then
            // the whole block (a table unlinked), then both back.
            let page = 0x4800_1000u64;
            let mut tlb = host_s2_tlb(
                &mut cpu,
                core::slice::from_mut(&mut smmu),
                &mut w.queues,
                btm,
                HOST_VMID,
                &mut counts,
            );
            assert_eq!(hm.host_donate_hyp(&mut mem, &mut tlb, page, 1), Ok(()));
            assert_eq!(
                hm.hyp_donate_host_range(&mut mem, &mut tlb, PhysRange::new(page, PAGE)),
                Ok((PhysAddr(page), 1))
            );
            assert_eq!(
                hm.host_donate_hyp(&mut mem, &mut tlb, page & !0x1f_ffff, 512),
                Ok(())
            );
            assert_eq!(
                hm.hyp_donate_host(&mut mem, &mut tlb, 512),
                Ok((PhysAddr(page & !0x1f_ffff), 512))
            );
            let o = order.borrow();
            assert!(o.violations.is_empty(), "btm {btm}: {:?}", o.violations);
            assert!(o.publishes > 0, "btm {btm}: DSB ISHST issued");
            assert!(o.unpublished.is_empty(), "btm {btm}: published at the end");
        }
    }

    /// One transition, as the reference model and the tests below drive it.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Op {
        Donate,
        Reclaim,
        Pin,
        Unpin,
    }

    /// Who has a page of the window, in the reference model.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Who {
        Host,
        Donated,
        Carve,
    }

    /// The window the models cover: 4096 pages from the start of RAM, the carve-out
    /// (pages 512..1536) and 2 MiB blocks included.
    const WINDOW: PhysRange = PhysRange::new(0x4000_0000, 4096 * PAGE);
    /// Pages in [`WINDOW`].
    const WINDOW_PAGES: usize = 4096;

    /// Where a generated call goes: reclaims and unpins mostly into what was donated or
    /// pinned before (`done`), the rest anywhere in the window.
    fn target(op: Op, s: usize, n: usize, done: &[(Op, usize, usize)]) -> (usize, usize) {
        let wanted = match op {
            Op::Reclaim => Op::Donate,
            Op::Unpin => Op::Pin,
            _ => return (s, n.min(WINDOW_PAGES - s)),
        };
        let earlier: Vec<_> = done.iter().filter(|d| d.0 == wanted).collect();
        if earlier.is_empty() || s.is_multiple_of(5) {
            return (s, n.min(WINDOW_PAGES - s));
        }
        let &(_, a, m) = earlier[s % earlier.len()];
        let off = if s.is_multiple_of(3) { 0 } else { n % m };
        let len = if s.is_multiple_of(2) {
            m - off
        } else {
            1 + n % (m - off)
        };
        (a + off, len)
    }

    /// A per-page reference of ownership and pin counts.
    struct Reference {
        who: Vec<Who>,
        pins: Vec<u64>,
    }

    impl Reference {
        fn new() -> Self {
            let who = (0..WINDOW.size / PAGE)
                .map(|i| {
                    if CARVE.contains(WINDOW.base.get() + i * PAGE) {
                        Who::Carve
                    } else {
                        Who::Host
                    }
                })
                .collect();
            Self {
                who,
                pins: vec![0; (WINDOW.size / PAGE) as usize],
            }
        }

        /// What `op` on pages `[s, s + n)` must return, applying it; `None`: not a call
        /// to make (unpinning pages that are not all pinned).
        fn apply(&mut self, op: Op, s: usize, n: usize) -> Option<Result<(), Error>> {
            let pages = s..s + n;
            let all = |f: &dyn Fn(usize) -> bool| pages.clone().all(f);
            let r = match op {
                Op::Donate => {
                    if !all(&|i| self.who[i] == Who::Host) {
                        Err(Error::Denied)
                    } else if !all(&|i| self.pins[i] == 0) {
                        Err(Error::Busy)
                    } else {
                        pages.for_each(|i| self.who[i] = Who::Donated);
                        Ok(())
                    }
                }
                Op::Reclaim => {
                    if all(&|i| self.who[i] == Who::Donated) {
                        pages.for_each(|i| self.who[i] = Who::Host);
                        Ok(())
                    } else {
                        Err(Error::Invalid)
                    }
                }
                Op::Pin => {
                    if all(&|i| self.who[i] == Who::Host) {
                        pages.for_each(|i| self.pins[i] += 1);
                        Ok(())
                    } else {
                        Err(Error::Denied)
                    }
                }
                Op::Unpin => {
                    if !all(&|i| self.pins[i] > 0) {
                        return None;
                    }
                    pages.for_each(|i| self.pins[i] -= 1);
                    Ok(())
                }
            };
            Some(r)
        }

        /// The state the host stage-2 must show for page `i`.
        fn state(&self, i: usize) -> PageState {
            match self.who[i] {
                Who::Host => PageState::HostOwned,
                Who::Donated | Who::Carve => PageState::HypOwned,
            }
        }
    }

    /// Runs `op` on `r` through `hm`'s transitions.
    fn run<T: S2Tlb>(
        hm: &mut HostMem,
        mem: &mut impl TableMemory,
        tlb: &mut T,
        op: Op,
        r: PhysRange,
    ) -> Result<(), Error> {
        match op {
            Op::Donate => hm.host_donate_hyp(mem, tlb, r.base.get(), r.size / PAGE),
            Op::Reclaim => hm.hyp_donate_host_range(mem, tlb, r).map(|got| {
                assert_eq!(got, (r.base, r.size / PAGE));
            }),
            Op::Pin => hm.host_pin_dma(mem, r),
            Op::Unpin => hm.host_unpin_dma(r),
        }
    }

    /// Every page's state in the window, from the host stage-2 (the SW bits of its leaf,
    /// or an invalid entry).
    fn states(hm: &HostMem, mem: &impl TableMemory) -> Vec<PageState> {
        let mut out = Vec::new();
        let flow = page_state::visit_states(&hm.s2, mem, WINDOW, |part, state| {
            for _ in 0..part.size / PAGE {
                out.push(state);
            }
            core::ops::ControlFlow::<()>::Continue(())
        });
        assert_eq!(flow, Ok(core::ops::ControlFlow::Continue(())));
        out
    }

    fn check_against(
        hm: &HostMem,
        mem: &impl TableMemory,
        reference: &Reference,
    ) -> Result<(), proptest::test_runner::TestCaseError> {
        let got = states(hm, mem);
        for (i, state) in got.iter().enumerate() {
            prop_assert_eq!(*state, reference.state(i), "page {}", i);
            let pa = WINDOW.base.get() + i as u64 * PAGE;
            prop_assert_eq!(hm.pins().count(pa), reference.pins[i], "pins of page {}", i);
        }
        let donated = reference.who.iter().filter(|&&w| w == Who::Donated).count();
        prop_assert_eq!(hm.donated_pages(), donated as u64);
        Ok(())
    }

    fn ops() -> impl Strategy<Value = Vec<(Op, usize, usize)>> {
        let op = prop_oneof![
            Just(Op::Donate),
            Just(Op::Reclaim),
            Just(Op::Pin),
            Just(Op::Unpin)
        ];
        let len = prop_oneof![1usize..8, 1usize..700];
        proptest::collection::vec((op, 0usize..WINDOW_PAGES, len), 1..40)
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        /// After any sequence of transitions the SW-bit state of every page equals the
        /// reference, and so do the pin counts, the results and what a device can reach.
        #[test]
        fn page_states_follow_a_reference_model(ops in ops(), btm in any::<bool>()) {
            setup!(model, w, hm, smmu, ModelConfig { btm, ..ModelConfig::default() }, btm);
            let mut reference = Reference::new();
            let mut done = Vec::new();
            for (op, s, n) in ops {
                let (s, n) = target(op, s, n, &done);
                let r = PhysRange::new(WINDOW.base.get() + s as u64 * PAGE, n as u64 * PAGE);
                let Some(want) = reference.apply(op, s, n) else { continue };
                if want.is_ok() {
                    done.push((op, s, n));
                }
                let (got, _, _) = w.op(&mut smmu, |mem, mut tlb| run(&mut hm, mem, &mut tlb, op, r));
                prop_assert_eq!(got, want, "{:?} {:?}", op, r);
                check_against(&hm, &w.tables, &reference)?;
                for pa in [r.base.get(), r.end() - PAGE] {
                    let host = reference.state(((pa - WINDOW.base.get()) / PAGE) as usize)
                        == PageState::HostOwned;
                    prop_assert_eq!(model.dma(SID, pa, true).is_ok(), host, "DMA to {:#x}", pa);
                }
            }
        }
    }

    /// Table memory whose own bookkeeping (the arena's live map) is exempt from the
    /// failing heap: only the code under test is refused.
    struct ExemptArena(Arena);

    // SAFETY: forwards to the arena.
    unsafe impl TableMemory for ExemptArena {
        fn alloc_zeroed(&mut self, size: usize, align: usize) -> Option<PhysAddr> {
            crate::testalloc::exempt(|| self.0.alloc_zeroed(size, align))
        }
        unsafe fn free(&mut self, pa: PhysAddr, size: usize) {
            // SAFETY: forwarded under the caller's contract.
            crate::testalloc::exempt(|| unsafe { self.0.free(pa, size) })
        }
        fn table_ptr(&self, pa: PhysAddr) -> *mut u64 {
            self.0.table_ptr(pa)
        }
    }

    /// Everything a transition may change: page states, donated runs, pins, tables.
    type Snapshot = (Vec<PageState>, Vec<PhysRange>, Vec<(PhysRange, u64)>, usize);

    fn snapshot(hm: &HostMem, mem: &ExemptArena) -> Snapshot {
        (
            states(hm, mem),
            hm.donated().to_vec(),
            hm.pins().iter().collect(),
            mem.0.live_count(),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

        /// Out of memory at every allocation point, table memory and heap in turn: each
        /// refused call is NOMEM and leaves everything as it was; with one allocation more
        /// the call does what the reference says.
        #[test]
        fn out_of_memory_anywhere_changes_nothing(ops in ops()) {
            let mut mem = ExemptArena(Arena::new(8 << 20));
            let geom = S2Geometry::new(Granule::Size4K, 40, 40).unwrap();
            // SAFETY: every later call passes this same arena.
            let mut s2 = unsafe { Stage2::new(geom, &mut mem) }.unwrap();
            crate::layout::subtract(RAM, &[CARVE], |r| {
                s2.map(&mut mem, &mut NoTlb, Ipa(r.base.get()), r.base, r.size, HOST_RAM)
                    .unwrap();
            });
            let mut hm = HostMem::new(s2, vec![RAM], vec![CARVE]);
            let mut reference = Reference::new();
            let mut done = Vec::new();
            for (k, (op, s, n)) in ops.into_iter().enumerate() {
                let (s, n) = target(op, s, n, &done);
                let r = PhysRange::new(WINDOW.base.get() + s as u64 * PAGE, n as u64 * PAGE);
                let Some(want) = reference.apply(op, s, n) else { continue };
                if want.is_ok() {
                    done.push((op, s, n));
                }
                let before = snapshot(&hm, &mem);
                let heap = k % 2 == 1;
                let mut allowed = 0u64;
                let got = loop {
                    let got = if heap {
                        crate::testalloc::with_allocations(allowed, || {
                            run(&mut hm, &mut mem, &mut NoTlb, op, r)
                        })
                        .0
                    } else {
                        mem.0.budget = Some(allowed as usize);
                        let got = run(&mut hm, &mut mem, &mut NoTlb, op, r);
                        mem.0.budget = None;
                        got
                    };
                    if got != Err(Error::NoMem) {
                        break got;
                    }
                    prop_assert_eq!(&snapshot(&hm, &mem), &before, "{:?} {:?}: NOMEM changed things", op, r);
                    allowed += 1;
                    prop_assert!(allowed < 16, "{:?} {:?}: never enough memory", op, r);
                };
                prop_assert_eq!(got, want, "{:?} {:?}", op, r);
                check_against(&hm, &mem, &reference)?;
            }
        }
    }
}
