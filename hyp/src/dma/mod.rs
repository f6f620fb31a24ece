//! The DMA hypercall core: every call of ABI v1 (host-abi's `func`), served by [`Hyp`]
//! on all CPUs at once. The EL2 glue decodes the trap, calls [`Hyp::dispatch`] and
//! writes the four result registers back; everything else happens here, against narrow
//! hardware seams so that the same code runs in `cargo test` on the SMMU, CPU-TLB and RAM
//! models.
//!
//! # Seams
//!
//! - [`SmmuIo`] (per SMMU) and a [`PagePool`] (table memory for the host stage-2, the
//!   domain tables and the SMMU queues; grows by MEM_DONATE, shrinks by MEM_RECLAIM);
//! - [`CpuTlb`]: CPU TLB maintenance for the host's VMID;
//! - [`VmidTlb`]: CPU TLB maintenance under another VMID (for domain invalidation with
//!   BTM, and the quarantine of a freed domain's VMID);
//! - [`Clock`]: a monotonic time for the batched-queue deadline;
//! - [`CacheMaint`]: data-cache maintenance to the point of coherency for non-coherent
//!   domains, and the barrier that publishes descriptor writes.
//!
//! # Locks
//!
//! One order, always taken left to right (a thread holding a lock only ever waits for
//! locks further right):
//!
//! `domain table` → `one domain slot` → `host memory` (host stage-2, pins, donated list)
//! → `SMMUs` (every SMMU's queues, stream table and the endpoint map) → `event ring`;
//! the VMID allocator and the page pool's own lock are leaves.
//!
//! - ATTACH holds the table (so that no domain is freed meanwhile) and may hold two
//!   domain slots (lower index first); no other path holds two slots.
//! - A path that must flush *other* domains (pool pressure, a donation of a page pending
//!   in a batched queue, the deadline check) first drops every lock it holds (nothing
//!   changed yet), flushes the domains one at a time, and starts over.
//! - Pins are changed only under the host memory lock; a page is pinned before any PTE
//!   points at it and unpinned only after the invalidation of its last PTE completed.
//!
//! # Partial progress and errors (I6)
//!
//! Every call returns exactly one [`Error`] (encoded by [`encode`]) and changes nothing
//! when it fails. MAP and UNMAP may do less than asked: x1 is the number of bytes done
//! from the start of the range, and the caller continues from `iova + x1`.
//!
//! - MAP maps at most [`Config::max_map_bytes`] per call, and less if the page pool runs
//!   dry (NOMEM only when nothing could be mapped, after flushing every batched queue
//!   once to free their tables). The whole requested range must be unmapped (EXIST
//!   otherwise, nothing done).
//! - UNMAP walks the range and unmaps up to [`Config::max_map_bytes`] of *mapped* bytes:
//!   x1 is the length of the prefix `[iova, iova + x1)` that is now entirely unmapped,
//!   holes included (so x1 == size when the whole range was processed). NOENT when
//!   nothing at all is mapped in the range.
//! - Domains 0 (host identity) and 1 (blocking) cannot be mapped, unmapped, flushed,
//!   translated or freed: INVALID.
//! - A hardware failure (an SMMU that does not complete a `CMD_SYNC`) can leave an
//!   operation's effect unconfirmed: then the pages and tables involved are never
//!   released (they stay pinned / allocated), which is safe, and logged.

use crate::addr::{Ipa, PhysAddr, PhysRange};
use crate::domain::{
    Domain, DomainFlags, Gather, InvRange, Invalidate, Leaf, Pending, any_mapped, collect_leaves,
    count_leaves,
};
use crate::events::EventRing;
use crate::host_mem::{self, CpuTlb, HostMem, HostS2Tlb, InvalidationCounts};
use crate::s2mmu::{Granule, S2Attrs, S2Error, S2Geometry, Stage2, TableMemory};
use crate::smmu::{S2Config, Smmu, SmmuError, SmmuIo, TLBI_RANGE_MAX_PAGES};
use crate::vmid_alloc::{Vmid, VmidAllocator};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use host_abi::{Error, domain, features, func, prot, stats};
use spin::Mutex;

#[cfg(test)]
mod tests;
#[cfg(any(test, feature = "fuzzing"))]
pub mod world;

/// Bytes per page (the ownership and pin unit).
pub const PAGE: u64 = 4096;
/// Most SMMUs one [`Hyp`] drives (a domain's SMMUs are a 64-bit mask).
pub const MAX_SMMUS: usize = 64;
/// Past this many merged ranges one flush invalidates the whole VMID instead.
pub const MAX_FLUSH_RANGES: usize = 16;
/// Default [`Config::max_map_bytes`].
pub const DEFAULT_MAX_MAP_BYTES: u64 = 64 << 20;
/// Default [`Config::max_domains`].
pub const DEFAULT_MAX_DOMAINS: u16 = 1024;

/// Warden's page pool: memory for translation tables and SMMU queues.
///
/// # Safety
///
/// Besides the [`TableMemory`] contract (shared by every clone: a clone is a handle to
/// the same pool), [`reclaim`](Self::reclaim) returns only pages that were given to
/// [`donate`](Self::donate), are not part of any live allocation, and are removed from
/// the pool (never handed out again unless donated again).
pub unsafe trait PagePool: TableMemory + Clone {
    /// Makes sure the next [`donate`](Self::donate) can record a donation without
    /// allocating (as far as the pool's own allocations in between allow); NOMEM if not.
    fn prepare_donate(&mut self) -> Result<(), crate::frames::NoMem>;
    /// Pages the host donated (already gone from the host stage-2, invalidated) join the
    /// pool. NOMEM, the pages not taken, if the pool's bookkeeping cannot grow.
    fn donate(&mut self, r: PhysRange) -> Result<(), crate::frames::NoMem>;
    /// Takes a run of at most `max_pages` donated pages that nothing uses out of the pool,
    /// for MEM_RECLAIM; `None` if no donated page is free.
    fn reclaim(&mut self, max_pages: u64) -> Option<PhysRange>;
    /// Writes zeros over `r`, a run [`reclaim`](Self::reclaim) just took out (through the
    /// CPU's view; the caller then cleans it to the point of coherency).
    fn scrub(&mut self, r: PhysRange);
}

/// CPU TLB maintenance under another VMID than the host's: at EL2 the implementation
/// switches `VTTBR_EL2.VMID` to `vmid` (with interrupts masked), issues the TLBIs, and
/// restores the host's. With BTM in use the SMMUs see the same broadcast invalidations.
pub trait VmidTlb {
    /// `DSB ISHST`, `TLBI IPAS2E1IS` (`IPAS2LE1IS` when `leaf_only`) for each `granule`
    /// page of `[ipa, ipa + size)` under `vmid`, `DSB ISH`: complete on return.
    fn tlbi_vmid_range(
        &mut self,
        vmid: u16,
        ipa: Ipa,
        size: u64,
        granule: Granule,
        leaf_only: bool,
    );
    /// `DSB ISHST`, `TLBI VMALLS12E1IS` under `vmid`, `DSB ISH`.
    fn tlbi_vmid_all(&mut self, vmid: u16);
}

/// A monotonic clock.
pub trait Clock {
    /// Nanoseconds since some fixed point (e.g. `CNTPCT_EL0` scaled by `CNTFRQ_EL0`).
    fn now_ns(&self) -> u64;
}

/// Data-cache maintenance.
pub trait CacheMaint {
    /// `DC CIVAC` over every line of `[pa, pa + len)`, then `DSB SY`: dirty lines reach
    /// memory (a non-snooping device reads what the CPU wrote) and the CPU's copies are
    /// dropped (it then reads what the device wrote).
    fn clean_inval_poc(&mut self, pa: PhysAddr, len: u64);
    /// `DSB ISHST`: earlier descriptor writes are visible to table walkers.
    fn dsb_ishst(&mut self);
}

/// Every CPU-side seam in one bound.
pub trait CpuSeams: CpuTlb + VmidTlb + Clock + CacheMaint + Clone {}
impl<T: CpuTlb + VmidTlb + Clock + CacheMaint + Clone> CpuSeams for T {}

/// Tunables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// A batched domain flushes once its queue holds this many unmapped ranges
    /// (`warden.batch=`).
    pub batch_threshold: u32,
    /// … or at the first hypercall this long after its oldest queued unmap
    /// (`warden.deadline_ms=`).
    pub deadline_ns: u64,
    /// Most bytes one MAP maps, and most mapped bytes one UNMAP unmaps (a multiple of
    /// 64 KiB; bounded work per call).
    pub max_map_bytes: u64,
    /// Most host-managed domains at once.
    pub max_domains: u16,
    /// With BTM in use, invalidate host-managed domains with CPU TLBIs by VMID instead
    /// of SMMU commands (`warden.domain_tlbi=cpu`).
    pub domain_cpu_tlbi: bool,
    /// Events kept for EVENT_POLL.
    pub event_ring: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            batch_threshold: crate::bootargs::DEFAULT_BATCH,
            deadline_ns: u64::from(crate::bootargs::DEFAULT_DEADLINE_MS) * 1_000_000,
            max_map_bytes: DEFAULT_MAX_MAP_BYTES,
            max_domains: DEFAULT_MAX_DOMAINS,
            domain_cpu_tlbi: false,
            event_ring: crate::events::DEFAULT_RING,
        }
    }
}

impl Config {
    /// The defaults, with what Warden's command line sets.
    pub fn from_options(o: &crate::bootargs::Options) -> Self {
        Self {
            batch_threshold: o.batch,
            deadline_ns: u64::from(o.deadline_ms) * 1_000_000,
            domain_cpu_tlbi: o.domain_cpu_tlbi,
            ..Self::default()
        }
    }
}

/// What the boot code built, handed over to [`Hyp::new`].
pub struct HypInit<I: SmmuIo, M: TableMemory> {
    /// The host's memory and stage-2 (every host StreamID already uses it).
    pub host: HostMem,
    /// The host's VMID (reserved in `vmids`).
    pub host_vmid: u16,
    /// Every SMMU, probed; the index is the endpoint's SMMU index.
    pub smmus: Vec<Smmu<I, M>>,
    /// Broadcast TLB maintenance in use (every SMMU takes part, `CR2.PTM = 0`).
    pub btm: bool,
    /// The one VMID allocator for CPU and SMMU stage-2 contexts.
    pub vmids: &'static Mutex<VmidAllocator>,
}

/// Pages kept aside for host stage-2 changes: a donation into an empty pool must still
/// be able to split the blocks around the donated pages (two tables at each end).
pub const HOST_RESERVE_PAGES: usize = 4;

/// The host's memory and the counters of its invalidations.
struct HostState {
    mem: HostMem,
    counts: InvalidationCounts,
    /// Pool pages (live 4 KiB allocations) for host stage-2 tables when the pool is dry.
    reserve: Vec<PhysAddr>,
}

impl HostState {
    /// Tops the reserve up from the pool (best effort).
    fn refill<M: PagePool>(&mut self, pool: &M) {
        let mut pool = pool.clone();
        while self.reserve.len() < HOST_RESERVE_PAGES {
            match pool.alloc_zeroed(PAGE as usize, PAGE as usize) {
                Some(pa) => self.reserve.push(pa),
                None => break,
            }
        }
    }
}

/// The pool, falling back to the host reserve for page-sized tables.
struct ReserveMem<'a, M> {
    pool: M,
    reserve: &'a mut Vec<PhysAddr>,
}

// SAFETY: every allocation is a live allocation of `pool` (directly, or a reserve page
// the pool handed out earlier, zeroed again here); the rest is the pool's.
unsafe impl<M: PagePool> TableMemory for ReserveMem<'_, M> {
    fn alloc_zeroed(&mut self, size: usize, align: usize) -> Option<PhysAddr> {
        if let Some(pa) = self.pool.alloc_zeroed(size, align) {
            return Some(pa);
        }
        if size as u64 > PAGE || align as u64 > PAGE {
            return None;
        }
        let pa = self.reserve.pop()?;
        let p = self.pool.table_ptr(pa);
        for i in 0..PAGE as usize / 8 {
            // SAFETY: `pa` is a live page-sized allocation of the pool that nothing
            // else uses (it sat in the reserve), so `p` is valid for the whole page.
            unsafe { p.add(i).write_volatile(0) };
        }
        self.pool.clean(pa, PAGE as usize);
        Some(pa)
    }

    unsafe fn free(&mut self, pa: PhysAddr, size: usize) {
        // SAFETY: forwarded under the caller's contract (every allocation is the pool's).
        unsafe { self.pool.free(pa, size) }
    }

    fn table_ptr(&self, pa: PhysAddr) -> *mut u64 {
        self.pool.table_ptr(pa)
    }

    fn clean(&mut self, pa: PhysAddr, size: usize) {
        self.pool.clean(pa, size)
    }
}

/// The SMMUs and which managed domain each endpoint is attached to.
struct SmmuSet<I: SmmuIo, M: TableMemory> {
    smmus: Vec<Smmu<I, M>>,
    /// Per SMMU: sorted (StreamID, domain slot) for endpoints attached to a managed domain.
    owner: Vec<Vec<(u32, usize)>>,
}

/// One entry of the domain table.
struct Slot {
    dom: Mutex<Option<Domain>>,
    /// Endpoints attached (changed under the table and SMMU locks).
    attached: AtomicU32,
    /// SMMUs this domain was ever attached to since it was allocated: the ones that may
    /// cache its translations (changed under the SMMU lock).
    smmu_mask: AtomicU64,
    /// Time of the oldest queued batched unmap, `u64::MAX` when none.
    oldest_ns: AtomicU64,
    /// Pages queued.
    pending_pages: AtomicU64,
}

impl Slot {
    fn new() -> Self {
        Self {
            dom: Mutex::new(None),
            attached: AtomicU32::new(0),
            smmu_mask: AtomicU64::new(0),
            oldest_ns: AtomicU64::new(u64::MAX),
            pending_pages: AtomicU64::new(0),
        }
    }
}

/// The domain table's own state.
struct Table {
    /// Next slot to try (rotating, so IDs are reused late).
    hint: usize,
    used: usize,
}

/// Counters for STATS.
#[derive(Default)]
struct Counters {
    calls: AtomicU64,
    domain_cpu_tlbis: AtomicU64,
    map_calls: AtomicU64,
    unmap_calls: AtomicU64,
    flush_calls: AtomicU64,
    leaves: [AtomicU64; 3],
    /// Pages whose release was abandoned after a hardware failure.
    leaked_pages: AtomicU64,
    /// Bytes of domain tables kept allocated after a hardware failure.
    leaked_table_bytes: AtomicU64,
}

/// What every host-managed domain can use, fixed at boot from the SMMUs.
#[derive(Clone, Copy, Debug)]
struct DomainLimits {
    /// IOVA bits.
    ipa_bits: u32,
    /// Output bits.
    pa_bits: u32,
    gran: [bool; 3],
    ril: bool,
}

fn granule_index(g: Granule) -> usize {
    match g {
        Granule::Size4K => 0,
        Granule::Size16K => 1,
        Granule::Size64K => 2,
    }
}

/// Largest output size a stage-2 geometry encodes (no 52-bit).
fn encodable_pa_bits(bits: u32) -> u32 {
    match bits {
        0..36 => 32,
        36..40 => 36,
        40..42 => 40,
        42..44 => 42,
        44..48 => 44,
        _ => 48,
    }
}

/// The hypercall core. See the module docs.
pub struct Hyp<I: SmmuIo, M: PagePool, C: CpuSeams> {
    table: Mutex<Table>,
    slots: Vec<Slot>,
    host: Mutex<HostState>,
    smmus: Mutex<SmmuSet<I, M>>,
    events: Mutex<EventRing>,
    vmids: &'static Mutex<VmidAllocator>,
    pool: M,
    cpu: C,
    cfg: Config,
    btm: bool,
    nsmmus: usize,
    host_vmid: u16,
    host_ste: S2Config,
    limits: DomainLimits,
    /// Earliest time a batched queue may pass its deadline (`u64::MAX`: none queued).
    next_deadline: AtomicU64,
    stats: Counters,
}

/// Encodes a call's outcome as `x0..x3`: the one place the ABI's status encoding lives.
pub fn encode(r: Result<[u64; 3], Error>) -> [u64; 4] {
    match r {
        Ok([a, b, c]) => [0, a, b, c],
        Err(e) => [e.to_reg(), 0, 0, 0],
    }
}

impl From<SmmuError> for Error {
    fn from(e: SmmuError) -> Self {
        match e {
            SmmuError::SidOutOfRange(_) => Error::NoEnt,
            SmmuError::OutOfMemory => Error::NoMem,
            SmmuError::BadConfig(_) => Error::Invalid,
            SmmuError::Unsupported(_) => Error::NotSupported,
            // The SMMU did not answer: try again later.
            SmmuError::Timeout(_) | SmmuError::BadQueueIndex(_) | SmmuError::CommandSkipped(_) => {
                Error::Busy
            }
        }
    }
}

/// Domain invalidation for one operation: SMMU commands on the SMMUs the domain was ever
/// attached to, or CPU TLBIs by VMID (BTM).
struct DomInv<'h, I: SmmuIo, M: PagePool, C: CpuSeams> {
    hyp: &'h Hyp<I, M, C>,
    slot: &'h Slot,
    vmid: u16,
    granule: Granule,
}

impl<I: SmmuIo, M: PagePool, C: CpuSeams> Invalidate for DomInv<'_, I, M, C> {
    fn issue(&mut self, ranges: &[InvRange], all: bool) -> bool {
        let gsize = self.granule.size();
        let all = all
            || ranges.len() > MAX_FLUSH_RANGES
            || ranges
                .iter()
                .any(|r| (r.end - r.start) / gsize > TLBI_RANGE_MAX_PAGES);
        let hyp = self.hyp;
        if hyp.cpu_path() {
            let mut cpu = hyp.cpu.clone();
            if all {
                cpu.tlbi_vmid_all(self.vmid);
                hyp.stats.domain_cpu_tlbis.fetch_add(1, Ordering::Relaxed);
            } else {
                for r in ranges {
                    cpu.tlbi_vmid_range(
                        self.vmid,
                        Ipa(r.start),
                        r.end - r.start,
                        self.granule,
                        r.leaf,
                    );
                    hyp.stats.domain_cpu_tlbis.fetch_add(1, Ordering::Relaxed);
                }
            }
            return true;
        }
        let mut mem = hyp.pool.clone();
        let mut set = hyp.smmus.lock();
        let mask = self.slot.smmu_mask.load(Ordering::Relaxed);
        let mut ok = true;
        for (i, smmu) in set.smmus.iter_mut().enumerate() {
            if mask & (1 << i) == 0 {
                continue;
            }
            if all {
                smmu.tlbi_vmall(&mut mem, self.vmid);
            } else {
                for r in ranges {
                    let (ipa, size) = (Ipa(r.start), r.end - r.start);
                    if r.leaf {
                        smmu.tlbi_s2_leaf_range(&mut mem, self.vmid, ipa, size, self.granule);
                    } else {
                        smmu.tlbi_s2_range(&mut mem, self.vmid, ipa, size, self.granule);
                    }
                }
            }
            if let Err(e) = smmu.sync(&mut mem) {
                log::error!("smmu{i}: invalidation of VMID {} failed: {e}", self.vmid);
                ok = false;
            }
        }
        ok
    }

    fn barrier(&mut self) {
        self.hyp.cpu.clone().dsb_ishst();
    }
}

/// The target of an ATTACH.
#[derive(Clone, Copy)]
enum Target {
    Host,
    Blocked,
    Managed(usize, S2Config),
}

impl<I: SmmuIo, M: PagePool, C: CpuSeams> Hyp<I, M, C> {
    /// Takes over what the boot code built. NOT_SUPPORTED with more than [`MAX_SMMUS`]
    /// SMMUs, NOMEM if the domain table or event ring cannot be allocated.
    ///
    /// # Safety
    ///
    /// The host stage-2 and every SMMU were created with `pool` (or a clone of it: the
    /// same memory), and nothing else uses, changes or frees their tables and queues
    /// from now on.
    pub unsafe fn new(init: HypInit<I, M>, pool: M, cpu: C, cfg: Config) -> Result<Self, Error> {
        let HypInit {
            host,
            host_vmid,
            smmus,
            btm,
            vmids,
        } = init;
        if smmus.len() > MAX_SMMUS {
            return Err(Error::NotSupported);
        }
        let cfg = Config {
            batch_threshold: cfg.batch_threshold.max(1),
            max_map_bytes: (cfg.max_map_bytes & !0xffff).max(0x1_0000),
            ..cfg
        };
        let oas = smmus
            .iter()
            .map(|s| s.features().oas_bits)
            .min()
            .unwrap_or(48);
        let pa_bits = encodable_pa_bits(oas);
        let limits = DomainLimits {
            ipa_bits: pa_bits.min(48),
            pa_bits,
            gran: [Granule::Size4K, Granule::Size16K, Granule::Size64K]
                .map(|g| !smmus.is_empty() && smmus.iter().all(|s| s.features().supports(g))),
            ril: !smmus.is_empty() && smmus.iter().all(|s| s.features().ril),
        };
        let mut slots = Vec::new();
        slots
            .try_reserve_exact(usize::from(cfg.max_domains))
            .map_err(|_| Error::NoMem)?;
        slots.extend((0..cfg.max_domains).map(|_| Slot::new()));
        let mut owner = Vec::new();
        owner
            .try_reserve_exact(smmus.len())
            .map_err(|_| Error::NoMem)?;
        owner.extend(smmus.iter().map(|_| Vec::new()));
        let events = EventRing::with_capacity(cfg.event_ring).ok_or(Error::NoMem)?;
        let host_ste = S2Config::for_stage2(&host.s2, host_vmid);
        Ok(Self {
            table: Mutex::new(Table { hint: 0, used: 0 }),
            slots,
            host: Mutex::new({
                let mut reserve = Vec::new();
                reserve
                    .try_reserve_exact(HOST_RESERVE_PAGES)
                    .map_err(|_| Error::NoMem)?;
                let mut h = HostState {
                    mem: host,
                    counts: InvalidationCounts::default(),
                    reserve,
                };
                h.refill(&pool);
                h
            }),
            nsmmus: smmus.len(),
            smmus: Mutex::new(SmmuSet { smmus, owner }),
            events: Mutex::new(events),
            vmids,
            pool,
            cpu,
            cfg,
            btm,
            host_vmid,
            host_ste,
            limits,
            next_deadline: AtomicU64::new(u64::MAX),
            stats: Counters::default(),
        })
    }

    /// The configuration in force.
    pub const fn config(&self) -> &Config {
        &self.cfg
    }

    /// Whether broadcast TLB maintenance is in use.
    pub const fn btm(&self) -> bool {
        self.btm
    }

    /// Whether host-managed domains are invalidated with CPU TLBIs by VMID.
    pub const fn cpu_path(&self) -> bool {
        self.btm && self.cfg.domain_cpu_tlbi
    }

    /// The VMID allocator (shared with CPU stage-2 contexts).
    pub const fn vmids(&self) -> &'static Mutex<VmidAllocator> {
        self.vmids
    }

    /// Runs `f` on the host's memory (lock order: no domain work inside).
    pub fn with_host_mem<R>(&self, f: impl FnOnce(&HostMem) -> R) -> R {
        f(&self.host.lock().mem)
    }

    /// Pins `r` (page-aligned) for a DMA master Warden emulates (the GIC's tables, see
    /// [`crate::gic`]): DENIED unless the host owns every page now.
    pub fn pin_for_device(&self, r: PhysRange) -> Result<(), Error> {
        let mem = self.pool.clone();
        self.host.lock().mem.host_pin_dma(&mem, r)
    }

    /// Drops a pin taken by [`pin_for_device`](Self::pin_for_device). If the pin
    /// bookkeeping has no memory to record it, the pages stay pinned for good (the safe
    /// side: the host can never donate them) and are logged.
    pub fn unpin_for_device(&self, r: PhysRange) {
        if self.host.lock().mem.host_unpin_dma(r).is_err() {
            log::error!(
                "no memory to unpin {:#x}..{:#x} (emulated device): the pages stay pinned",
                r.base.get(),
                r.end()
            );
        }
    }

    /// Runs `f` on the SMMUs.
    pub fn with_smmus<R>(&self, f: impl FnOnce(&mut [Smmu<I, M>]) -> R) -> R {
        f(&mut self.smmus.lock().smmus)
    }

    // ------------------------------------------------------------------------------------
    // Dispatch.

    /// Serves one Warden call: `fid` from `w0`, `args` from `x1..x6`; returns `x0..x3`.
    /// Unknown IDs return NOT_SUPPORTED and change nothing. Every call first flushes the
    /// batched queues that passed their deadline.
    pub fn dispatch(&self, fid: u32, args: [u64; 6]) -> [u64; 4] {
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        self.deadline_check();
        let [a1, a2, a3, a4, a5, _] = args;
        let r = match fid {
            func::FEATURES => Ok(self.features()),
            func::DOMAIN_ALLOC => self.domain_alloc(a1).map(|id| [id, 0, 0]),
            func::DOMAIN_FREE => self.domain_free(a1).map(|()| [0; 3]),
            func::ATTACH => self.attach(a1, a2).map(|()| [0; 3]),
            func::MAP => {
                self.stats.map_calls.fetch_add(1, Ordering::Relaxed);
                self.map(a1, a2, a3, a4, a5).map(|n| [n, 0, 0])
            }
            func::UNMAP => {
                self.stats.unmap_calls.fetch_add(1, Ordering::Relaxed);
                self.unmap(a1, a2, a3).map(|n| [n, 0, 0])
            }
            func::FLUSH => {
                self.stats.flush_calls.fetch_add(1, Ordering::Relaxed);
                self.flush(a1).map(|()| [0; 3])
            }
            func::IOVA_TO_PHYS => self.iova_to_phys(a1, a2).map(|pa| [pa, 0, 0]),
            func::EVENT_POLL => self.event_poll(),
            func::STATS => self.stats(a1),
            func::MEM_DONATE => self.mem_donate(a1, a2).map(|()| [0; 3]),
            func::MEM_RECLAIM => self.mem_reclaim(a1).map(|(pa, n)| [pa, n, 0]),
            _ => Err(Error::NotSupported),
        };
        encode(r)
    }

    // ------------------------------------------------------------------------------------
    // FEATURES, STATS, EVENT_POLL.

    /// FEATURES: x1 feature bits, x2 page sizes a domain can map (granules and the block
    /// sizes one MAP can produce), x3 limits.
    pub fn features(&self) -> [u64; 3] {
        let mut bits = features::BATCHED | features::NON_COHERENT;
        if self.btm {
            bits |= features::BTM;
        }
        if self.limits.ril {
            bits |= features::RIL;
        }
        if self.cpu_path() {
            bits |= features::DOMAIN_CPU_TLBI;
        }
        let mut sizes = 0u64;
        for (i, g) in [Granule::Size4K, Granule::Size16K, Granule::Size64K]
            .into_iter()
            .enumerate()
        {
            if !self.limits.gran[i] {
                continue;
            }
            let Ok(geom) = S2Geometry::new(g, self.limits.ipa_bits, self.limits.pa_bits) else {
                continue;
            };
            for level in 1..=3 {
                if let Some(size) = geom.leaf_size(level)
                    && size <= self.cfg.max_map_bytes
                {
                    sizes |= size;
                }
            }
        }
        let (vmid_bits, vmids_usable) = {
            let v = self.vmids.lock();
            (
                u64::from(v.bits()),
                u64::from(v.capacity() - v.reserved_count()),
            )
        };
        // Every host-managed domain holds a VMID: at most as many can be alive as there
        // are VMIDs besides the reserved ones (255 with 8-bit VMIDs).
        let domains = u64::from(self.cfg.max_domains)
            .min(vmids_usable)
            .min(0xffff);
        let limits = (domains << features::LIMIT_DOMAINS_SHIFT)
            | (vmid_bits << features::LIMIT_VMID_BITS_SHIFT)
            | (u64::from(self.limits.ipa_bits) << features::LIMIT_IAS_SHIFT)
            | (u64::from(self.limits.pa_bits) << features::LIMIT_OAS_SHIFT);
        [bits, sizes, limits]
    }

    /// STATS: the counter group `group` (host-abi `stats`); INVALID for an unknown group.
    pub fn stats(&self, group: u64) -> Result<[u64; 3], Error> {
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
        match group {
            stats::CALLS_SYNCS_TLBIS => {
                let syncs = self.smmu_counts(|c| c.cmd_sync);
                let host_tlbis = self.host.lock().counts.cpu_tlbi;
                Ok([
                    ld(&self.stats.calls),
                    syncs,
                    host_tlbis + ld(&self.stats.domain_cpu_tlbis),
                ])
            }
            stats::SMMU_COMMANDS => Ok([
                self.smmu_counts(|c| c.tlbi_s2_ipa),
                self.smmu_counts(|c| c.tlbi_s12_vmall),
                self.smmu_counts(|c| c.cfgi_ste),
            ]),
            stats::PAGES => {
                let pending = self
                    .slots
                    .iter()
                    .map(|s| s.pending_pages.load(Ordering::Relaxed))
                    .sum();
                let host = self.host.lock();
                Ok([
                    host.mem.pins().pinned_pages(),
                    pending,
                    host.mem.donated_pages(),
                ])
            }
            stats::DMA_CALLS => Ok([
                ld(&self.stats.map_calls),
                ld(&self.stats.unmap_calls),
                ld(&self.stats.flush_calls),
            ]),
            stats::LEAVES_WRITTEN => Ok(self.stats.leaves.each_ref().map(ld)),
            _ => Err(Error::Invalid),
        }
    }

    fn smmu_counts(&self, f: impl Fn(&crate::smmu::CommandCounts) -> u64) -> u64 {
        self.smmus
            .lock()
            .smmus
            .iter()
            .map(|s| f(&s.stats().commands))
            .sum()
    }

    /// Drains every SMMU's event queue into the log and the EVENT_POLL ring. Skipped if
    /// another CPU holds the SMMUs (it can drain them later).
    pub fn drain_events(&self) {
        let Some(mut set) = self.smmus.try_lock() else {
            return;
        };
        let mut mem = self.pool.clone();
        self.events.lock().drain(&mut set.smmus, &mut mem);
    }

    /// EVENT_POLL: the oldest fault event, NOENT when none.
    pub fn event_poll(&self) -> Result<[u64; 3], Error> {
        self.drain_events();
        self.events.lock().pop().ok_or(Error::NoEnt)
    }

    // ------------------------------------------------------------------------------------
    // Domains.

    fn slot_of(&self, id: u64) -> Result<(usize, &Slot), Error> {
        if id < domain::FIRST_MANAGED {
            return Err(Error::Invalid);
        }
        let idx = usize::try_from(id - domain::FIRST_MANAGED).map_err(|_| Error::NoEnt)?;
        self.slots.get(idx).map(|s| (idx, s)).ok_or(Error::NoEnt)
    }

    /// DOMAIN_ALLOC: a host-managed domain with its own stage-2 and VMID.
    pub fn domain_alloc(&self, flags: u64) -> Result<u64, Error> {
        let flags = DomainFlags::decode(flags)?;
        if !self.limits.gran[granule_index(flags.granule)] {
            return Err(Error::Invalid);
        }
        let geom = S2Geometry::new(flags.granule, self.limits.ipa_bits, self.limits.pa_bits)
            .map_err(|_| Error::Invalid)?;
        let mut table = self.table.lock();
        if table.used >= self.slots.len() {
            return Err(Error::NoSpc);
        }
        let n = self.slots.len();
        let Some(idx) = (0..n)
            .map(|i| (table.hint + i) % n)
            .find(|&i| self.slots[i].dom.lock().is_none())
        else {
            return Err(Error::NoSpc);
        };
        let vmid = self.vmids.lock().alloc().map_err(|_| Error::NoSpc)?;
        let mut s2 = None;
        for attempt in 0..2 {
            let mut mem = self.pool.clone();
            // SAFETY: every later use of this table passes a clone of `self.pool`, the
            // same memory.
            match unsafe { Stage2::new(geom, &mut mem) } {
                Ok(t) => {
                    s2 = Some(t);
                    break;
                }
                Err(_) if attempt == 0 => {
                    // Table lock held: flushing takes slot locks, which come later.
                    self.flush_all();
                }
                Err(_) => {}
            }
        }
        let Some(s2) = s2 else {
            // Never installed anywhere: no TLB holds it, so the quarantine ends at once.
            let mut v = self.vmids.lock();
            if let Ok(ticket) = v.release(vmid) {
                let _ = v.invalidation_done(ticket);
            }
            return Err(Error::NoMem);
        };
        let id = idx as u64 + domain::FIRST_MANAGED;
        let slot = &self.slots[idx];
        slot.attached.store(0, Ordering::Relaxed);
        slot.smmu_mask.store(0, Ordering::Relaxed);
        slot.oldest_ns.store(u64::MAX, Ordering::Relaxed);
        slot.pending_pages.store(0, Ordering::Relaxed);
        *slot.dom.lock() = Some(Domain {
            id,
            flags,
            vmid,
            s2,
            pending: Pending::default(),
        });
        table.used += 1;
        table.hint = (idx + 1) % n;
        Ok(id)
    }

    /// DOMAIN_FREE: BUSY while an endpoint is attached. Unmaps everything, destroys the
    /// tables and returns the VMID through the quarantine (I4): `TLBI_S12_VMALL` +
    /// `CMD_SYNC` on every SMMU (and a CPU `TLBI VMALLS12E1IS` on the CPU-TLBI path)
    /// before pins, tables and VMID are released.
    pub fn domain_free(&self, id: u64) -> Result<(), Error> {
        let (_, slot) = self.slot_of(id)?;
        let dom = {
            let mut table = self.table.lock();
            let mut guard = slot.dom.lock();
            if guard.is_none() {
                return Err(Error::NoEnt);
            }
            if slot.attached.load(Ordering::Relaxed) != 0 {
                return Err(Error::Busy);
            }
            table.used -= 1;
            slot.oldest_ns.store(u64::MAX, Ordering::Relaxed);
            slot.pending_pages.store(0, Ordering::Relaxed);
            guard.take()
        };
        let Some(mut dom) = dom else {
            return Err(Error::NoEnt);
        };
        let vmid = dom.vmid.raw();
        let ticket = self.vmids.lock().release(dom.vmid);
        let mut ok = true;
        {
            let mut mem = self.pool.clone();
            let mut set = self.smmus.lock();
            for (i, smmu) in set.smmus.iter_mut().enumerate() {
                smmu.tlbi_vmall(&mut mem, vmid);
                if let Err(e) = smmu.sync(&mut mem) {
                    log::error!("smmu{i}: VMID {vmid} quarantine invalidation failed: {e}");
                    ok = false;
                }
            }
        }
        if self.cpu_path() {
            self.cpu.clone().tlbi_vmid_all(vmid);
            self.stats.domain_cpu_tlbis.fetch_add(1, Ordering::Relaxed);
        }
        let pending = dom.pending.take();
        if !ok {
            // The SMMUs may still use the tables and reach the pages: keep everything.
            log::error!("domain {id}: freed without confirmed invalidation; pages stay pinned");
            self.stats
                .leaked_pages
                .fetch_add(pending.pages, Ordering::Relaxed);
            return Ok(());
        }
        let mut mem = self.pool.clone();
        let nc = dom.flags.non_coherent;
        {
            let mut cpu = self.cpu.clone();
            let mut host = self.host.lock();
            let size = dom.s2.geometry().ipa_size();
            let _ = dom.s2.walk(&mem, Ipa(0), size, |at, desc, level| {
                if desc.is_leaf(level) {
                    let span = dom.s2.geometry().entry_size(level);
                    let r = PhysRange::new(desc.address().get(), span);
                    if nc {
                        cpu.clean_inval_poc(r.base, r.size);
                    }
                    self.unpin(&mut host.mem, r);
                }
                let _ = at;
                core::ops::ControlFlow::<()>::Continue(())
            });
            for r in &pending.pins {
                if nc {
                    cpu.clean_inval_poc(r.base, r.size);
                }
                self.unpin(&mut host.mem, *r);
            }
        }
        for (pa, size) in pending.tables {
            // SAFETY: deferred by the domain's unmaps; the whole VMID was invalidated and
            // synchronised above, so no walker refers to it.
            unsafe { mem.free(pa, size) };
        }
        dom.s2.destroy(&mut mem);
        if let Ok(ticket) = ticket {
            let _ = self.vmids.lock().invalidation_done(ticket);
        }
        Ok(())
    }

    /// ATTACH: points endpoint `ep` = (SMMU index << 32) | StreamID at domain `id`: the
    /// host identity domain (0), the blocking domain (1) or a host-managed one. The STE
    /// changes break-before-make with `CFGI_STE` + `CMD_SYNC` (I5).
    pub fn attach(&self, id: u64, ep: u64) -> Result<(), Error> {
        let smmu_idx = usize::try_from(ep >> 32).map_err(|_| Error::NoEnt)?;
        let sid = ep as u32;
        let _table = self.table.lock();
        let target = match id {
            domain::HOST => Target::Host,
            domain::BLOCKED => Target::Blocked,
            _ => {
                let (idx, slot) = self.slot_of(id)?;
                let guard = slot.dom.lock();
                let dom = guard.as_ref().ok_or(Error::NoEnt)?;
                Target::Managed(idx, S2Config::for_stage2(&dom.s2, dom.vmid.raw()))
            }
        };
        let mut mem = self.pool.clone();
        let mut set = self.smmus.lock();
        let SmmuSet { smmus, owner } = &mut *set;
        let smmu = smmus.get_mut(smmu_idx).ok_or(Error::NoEnt)?;
        if u64::from(sid) >= smmu.num_sids() {
            return Err(Error::NoEnt);
        }
        let owners = &mut owner[smmu_idx];
        let pos = owners.binary_search_by_key(&sid, |&(s, _)| s);
        let cur = pos.ok().map(|p| owners[p].1);
        if let Target::Managed(idx, _) = target {
            if cur == Some(idx) {
                return Ok(());
            }
            if pos.is_err() && owners.try_reserve(1).is_err() {
                return Err(Error::NoMem);
            }
            // Before the STE can use the domain: its invalidations reach this SMMU.
            self.slots[idx]
                .smmu_mask
                .fetch_or(1 << smmu_idx, Ordering::Relaxed);
        }
        let r = match target {
            Target::Host => smmu.set_ste_s2(&mut mem, sid, &self.host_ste),
            Target::Blocked => smmu.set_ste_abort(&mut mem, sid),
            Target::Managed(_, cfg) => smmu.set_ste_s2(&mut mem, sid, &cfg),
        };
        match r {
            Ok(()) => {
                if let Some(old) = cur {
                    self.slots[old].attached.fetch_sub(1, Ordering::Relaxed);
                }
                match (target, pos) {
                    (Target::Managed(idx, _), Ok(p)) => owners[p].1 = idx,
                    (Target::Managed(idx, _), Err(p)) => owners.insert(p, (sid, idx)),
                    (_, Ok(p)) => {
                        owners.remove(p);
                    }
                    (_, Err(_)) => {}
                }
                if let Target::Managed(idx, _) = target {
                    self.slots[idx].attached.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }
            Err(
                e @ (SmmuError::SidOutOfRange(_)
                | SmmuError::OutOfMemory
                | SmmuError::BadConfig(_)
                | SmmuError::Unsupported(_)),
            ) => Err(e.into()),
            Err(e) => {
                // The STE may now be invalid, old or new: keep both domains busy (never
                // freed while an STE might use their tables).
                log::error!("smmu{smmu_idx}: STE update for sid {sid:#x} failed: {e}");
                if let Target::Managed(idx, _) = target {
                    self.slots[idx].attached.fetch_add(1, Ordering::Relaxed);
                    if pos.is_err()
                        && let Err(p) = owners.binary_search_by_key(&sid, |&(s, _)| s)
                    {
                        owners.insert(p, (sid, idx));
                    }
                }
                Err(e.into())
            }
        }
    }

    // ------------------------------------------------------------------------------------
    // MAP, UNMAP, FLUSH, IOVA_TO_PHYS.

    /// MAP: `[iova, iova + size)` → `[pa, pa + size)` with `prot`. Returns bytes mapped.
    pub fn map(&self, id: u64, iova: u64, pa: u64, size: u64, prot: u64) -> Result<u64, Error> {
        if prot & !prot::ALL != 0 || prot & prot::ALL == 0 || size == 0 {
            return Err(Error::Invalid);
        }
        let (_, slot) = self.slot_of(id)?;
        let attrs = S2Attrs::normal().with_access(prot & prot::READ != 0, prot & prot::WRITE != 0);
        match self.map_once(slot, iova, pa, size, attrs) {
            Err(Error::NoMem) => {
                self.flush_all();
                self.map_once(slot, iova, pa, size, attrs)
            }
            r => r,
        }
    }

    fn map_once(
        &self,
        slot: &Slot,
        iova: u64,
        pa: u64,
        size: u64,
        attrs: S2Attrs,
    ) -> Result<u64, Error> {
        let mut guard = slot.dom.lock();
        let dom = guard.as_mut().ok_or(Error::NoEnt)?;
        let geom = dom.s2.geometry();
        let g = geom.granule().size();
        if !iova.is_multiple_of(g) || !pa.is_multiple_of(g) || !size.is_multiple_of(g) {
            return Err(Error::Invalid);
        }
        let iova_end = iova.checked_add(size).ok_or(Error::Invalid)?;
        pa.checked_add(size).ok_or(Error::Invalid)?;
        if iova_end > geom.ipa_size() {
            return Err(Error::Invalid);
        }
        let mut mem = self.pool.clone();
        if any_mapped(&dom.s2, &mem, iova, iova_end) {
            return Err(Error::Exist);
        }
        let chunk = size.min(self.cfg.max_map_bytes);
        if dom.flags.batched && dom.pending.touches(iova, iova + chunk) {
            // A stale translation of a queued unmap must not shadow the new mapping.
            self.flush_domain(slot, dom);
        }
        let pages = PhysRange::new(pa, chunk);
        self.host.lock().mem.host_pin_dma(&mem, pages)?;
        let mut cpu = self.cpu.clone();
        if dom.flags.non_coherent {
            // What the CPU wrote must be in memory before the device can read it.
            cpu.clean_inval_poc(PhysAddr(pa), chunk);
        }
        let mut g = Gather::new(self.dom_inv(slot, dom), iova, iova + chunk);
        let r = dom
            .s2
            .map(&mut mem, &mut g, Ipa(iova), PhysAddr(pa), chunk, attrs);
        let done = match r {
            Ok(()) => chunk,
            Err(S2Error::OutOfMemory { done }) => done,
            Err(e) => {
                log::error!("MAP {iova:#x}: unexpected table error {e}");
                0
            }
        };
        // Nothing valid was replaced (the range was unmapped), so there is normally
        // nothing to invalidate; if there is, it completes before tables are freed.
        if g.issue() {
            g.free_tables(&mut mem);
        } else {
            self.leak_tables(&mut g);
        }
        if done < chunk {
            self.unpin(
                &mut self.host.lock().mem,
                PhysRange::new(pa + done, chunk - done),
            );
        }
        if done == 0 {
            return Err(match r {
                Err(S2Error::OutOfMemory { .. }) => Error::NoMem,
                _ => Error::Invalid,
            });
        }
        let n = count_leaves(&dom.s2, &mem, iova, iova + done);
        for (c, n) in self.stats.leaves.iter().zip(n) {
            c.fetch_add(n, Ordering::Relaxed);
        }
        Ok(done)
    }

    /// UNMAP: removes the translations of `[iova, iova + size)`. Returns the bytes
    /// processed (see the module docs).
    pub fn unmap(&self, id: u64, iova: u64, size: u64) -> Result<u64, Error> {
        if size == 0 {
            return Err(Error::Invalid);
        }
        let (_, slot) = self.slot_of(id)?;
        match self.unmap_once(slot, iova, size) {
            Err(Error::NoMem) => {
                self.flush_all();
                self.unmap_once(slot, iova, size)
            }
            r => r,
        }
    }

    fn unmap_once(&self, slot: &Slot, iova: u64, size: u64) -> Result<u64, Error> {
        let mut guard = slot.dom.lock();
        let dom = guard.as_mut().ok_or(Error::NoEnt)?;
        let geom = dom.s2.geometry();
        let g = geom.granule().size();
        if !iova.is_multiple_of(g) || !size.is_multiple_of(g) {
            return Err(Error::Invalid);
        }
        let end = iova.checked_add(size).ok_or(Error::Invalid)?;
        if end > geom.ipa_size() {
            return Err(Error::Invalid);
        }
        let mut mem = self.pool.clone();
        let mut found = collect_leaves(&dom.s2, &mem, iova, end, self.cfg.max_map_bytes)?;
        if found.mapped == 0 {
            return Err(Error::NoEnt);
        }
        let mut gather = Gather::new(self.dom_inv(slot, dom), iova, found.end);
        gather.keep_tables = dom.flags.batched;
        let processed = match dom
            .s2
            .unmap(&mut mem, &mut gather, Ipa(iova), found.end - iova)
        {
            Ok(()) => found.end,
            Err(S2Error::OutOfMemory { done }) => iova + done,
            Err(e) => {
                log::error!("UNMAP {iova:#x}: unexpected table error {e}");
                iova
            }
        };
        // Keep the pins of what was actually unmapped.
        found.leaves.retain_mut(|l| {
            if l.iova >= processed {
                return false;
            }
            l.pa.size = l.pa.size.min(processed - l.iova);
            true
        });
        if processed == iova {
            // Nothing unmapped (no memory to split a block): nothing to release.
            if gather.issue() {
                gather.free_tables(&mut mem);
            } else {
                self.leak_tables(&mut gather);
            }
            return Err(Error::NoMem);
        }
        if dom.flags.batched {
            let now = self.cpu.now_ns();
            match dom.pending.push(gather, &found.leaves, now) {
                Ok(()) => {
                    let pages: u64 = found.leaves.iter().map(|l| l.pa.size / PAGE).sum();
                    slot.pending_pages.fetch_add(pages, Ordering::Relaxed);
                    if slot.oldest_ns.load(Ordering::Relaxed) == u64::MAX {
                        slot.oldest_ns.store(now, Ordering::Relaxed);
                    }
                    self.next_deadline.fetch_min(
                        dom.pending
                            .oldest_ns
                            .unwrap_or(now)
                            .saturating_add(self.cfg.deadline_ns),
                        Ordering::Relaxed,
                    );
                    if dom.pending.entries >= self.cfg.batch_threshold {
                        self.flush_domain(slot, dom);
                    }
                }
                Err(g) => {
                    // No room in the queue, or an invalidation inside the call was not
                    // confirmed: complete this unmap now (releasing nothing if failed).
                    gather = g;
                    self.complete_unmap(dom.flags.non_coherent, &mut gather, &found.leaves);
                }
            }
        } else {
            self.complete_unmap(dom.flags.non_coherent, &mut gather, &found.leaves);
        }
        Ok(processed - iova)
    }

    /// Completes a strict unmap: one invalidation per range and one `CMD_SYNC` per SMMU,
    /// then (only then) tables freed, caches invalidated and pins released.
    fn complete_unmap<V: Invalidate>(&self, nc: bool, g: &mut Gather<V>, leaves: &[Leaf]) {
        if !g.issue() {
            self.leak_tables(g);
            self.leak_pins(leaves.iter().map(|l| l.pa));
            return;
        }
        g.free_tables(&mut self.pool.clone());
        if nc {
            let mut cpu = self.cpu.clone();
            for l in leaves {
                cpu.clean_inval_poc(l.pa.base, l.pa.size);
            }
        }
        let mut host = self.host.lock();
        for l in leaves {
            self.unpin(&mut host.mem, l.pa);
        }
    }

    fn leak_tables<V>(&self, g: &mut Gather<V>) {
        if !g.tables.is_empty() {
            log::error!("{} table(s) kept: invalidation unconfirmed", g.tables.len());
            let n: u64 = g.tables.iter().map(|&(_, size)| size as u64).sum();
            self.stats
                .leaked_table_bytes
                .fetch_add(n, Ordering::Relaxed);
            g.tables.clear();
        }
    }

    /// Drops one pin from every page of `r`; if the pin bookkeeping has no memory for
    /// it, the pages stay pinned for good (safe) and are counted as leaked.
    fn unpin(&self, host: &mut HostMem, r: PhysRange) {
        if host.host_unpin_dma(r).is_err() {
            log::error!("{r:?}: no memory to record the unpin; the pages stay pinned");
            self.stats
                .leaked_pages
                .fetch_add(r.size / PAGE, Ordering::Relaxed);
        }
    }

    fn leak_pins(&self, pins: impl Iterator<Item = PhysRange>) {
        let n: u64 = pins.map(|r| r.size / PAGE).sum();
        if n != 0 {
            log::error!("{n} page(s) stay pinned: invalidation unconfirmed");
            self.stats.leaked_pages.fetch_add(n, Ordering::Relaxed);
        }
    }

    fn dom_inv<'h>(&'h self, slot: &'h Slot, dom: &Domain) -> DomInv<'h, I, M, C> {
        DomInv {
            hyp: self,
            slot,
            vmid: dom.vmid.raw(),
            granule: dom.s2.geometry().granule(),
        }
    }

    /// Completes every queued unmap of `dom`: invalidation + one `CMD_SYNC` per SMMU,
    /// then tables freed and pins released (I3).
    fn flush_domain(&self, slot: &Slot, dom: &mut Domain) {
        if dom.pending.is_empty() {
            return;
        }
        let mut p = dom.pending.take();
        slot.oldest_ns.store(u64::MAX, Ordering::Relaxed);
        slot.pending_pages.fetch_sub(p.pages, Ordering::Relaxed);
        let mut inv = self.dom_inv(slot, dom);
        crate::domain::merge_ranges(&mut p.ranges);
        if (!p.ranges.is_empty() || p.all) && !inv.issue(&p.ranges, p.all) {
            log::error!("domain {}: flush unconfirmed", dom.id);
            self.stats
                .leaked_pages
                .fetch_add(p.pages, Ordering::Relaxed);
            return;
        }
        let mut mem = self.pool.clone();
        for (pa, size) in p.tables {
            // SAFETY: deferred by this domain's unmaps; the invalidation covering them
            // completed above.
            unsafe { mem.free(pa, size) };
        }
        if dom.flags.non_coherent {
            let mut cpu = self.cpu.clone();
            for r in &p.pins {
                cpu.clean_inval_poc(r.base, r.size);
            }
        }
        let mut host = self.host.lock();
        for r in &p.pins {
            self.unpin(&mut host.mem, *r);
        }
    }

    /// Flushes every batched queue (pool pressure). Takes one slot lock at a time: call
    /// with no slot or later lock held.
    fn flush_all(&self) {
        self.flush_where(|_| true);
    }

    /// Flushes the queues of the domains for which `want` says so (checked under the
    /// domain's lock). Returns how many were flushed.
    fn flush_where(&self, mut want: impl FnMut(&Domain) -> bool) -> usize {
        let mut n = 0;
        for slot in &self.slots {
            if slot.oldest_ns.load(Ordering::Relaxed) == u64::MAX {
                continue;
            }
            let mut guard = slot.dom.lock();
            if let Some(dom) = guard.as_mut()
                && !dom.pending.is_empty()
                && want(dom)
            {
                self.flush_domain(slot, dom);
                n += 1;
            }
        }
        n
    }

    /// Flushes every queue older than the deadline. Called at the start of every call.
    fn deadline_check(&self) {
        let now = self.cpu.now_ns();
        if now < self.next_deadline.load(Ordering::Relaxed) {
            return;
        }
        self.next_deadline.store(u64::MAX, Ordering::Relaxed);
        let deadline = self.cfg.deadline_ns;
        for slot in &self.slots {
            let oldest = slot.oldest_ns.load(Ordering::Relaxed);
            if oldest == u64::MAX {
                continue;
            }
            if now.saturating_sub(oldest) >= deadline {
                let mut guard = slot.dom.lock();
                if let Some(dom) = guard.as_mut() {
                    self.flush_domain(slot, dom);
                }
            } else {
                self.next_deadline
                    .fetch_min(oldest.saturating_add(deadline), Ordering::Relaxed);
            }
        }
    }

    /// FLUSH: completes every earlier batched UNMAP of the domain (I3).
    pub fn flush(&self, id: u64) -> Result<(), Error> {
        let (_, slot) = self.slot_of(id)?;
        let mut guard = slot.dom.lock();
        let dom = guard.as_mut().ok_or(Error::NoEnt)?;
        self.flush_domain(slot, dom);
        Ok(())
    }

    /// IOVA_TO_PHYS: the physical address `iova` reaches in the domain; NOENT if unmapped.
    pub fn iova_to_phys(&self, id: u64, iova: u64) -> Result<u64, Error> {
        let (_, slot) = self.slot_of(id)?;
        let guard = slot.dom.lock();
        let dom = guard.as_ref().ok_or(Error::NoEnt)?;
        if iova >= dom.s2.geometry().ipa_size() {
            return Err(Error::Invalid);
        }
        dom.s2
            .translate(&self.pool, Ipa(iova))
            .map(|(pa, _, _)| pa.get())
            .ok_or(Error::NoEnt)
    }

    // ------------------------------------------------------------------------------------
    // MEM_DONATE, MEM_RECLAIM.

    /// Runs `f`, a change of the host stage-2, with its seams: the host's memory, the
    /// pool backed by the host reserve for tables, and invalidation through the CPU and
    /// `smmus` (the SMMU set, locked by the caller after `host`).
    fn with_host_s2<R>(
        &self,
        host: &mut HostState,
        smmus: &mut [Smmu<I, M>],
        f: impl FnOnce(&mut HostMem, &mut ReserveMem<'_, M>, &mut HostS2Tlb<'_, C, I, M>) -> R,
    ) -> R {
        let HostState {
            mem: hm,
            counts,
            reserve,
        } = host;
        let mut cpu = self.cpu.clone();
        let mut qmem = self.pool.clone();
        let mut mem = ReserveMem {
            pool: self.pool.clone(),
            reserve,
        };
        let mut tlb = HostS2Tlb::new(&mut cpu, smmus, &mut qmem, self.btm, self.host_vmid, counts);
        f(hm, &mut mem, &mut tlb)
    }

    /// MEM_DONATE: `pages` pages at `pa` leave the host and join the page pool. A page
    /// pinned only by a queued batched unmap is released by flushing that domain first;
    /// a page still mapped is BUSY.
    pub fn mem_donate(&self, pa: u64, pages: u64) -> Result<(), Error> {
        for attempt in 0..2 {
            let r = {
                let mut host = self.host.lock();
                // Prepare: the pool can record the donation (no allocation after the host
                // stage-2 changed).
                self.pool
                    .clone()
                    .prepare_donate()
                    .map_err(|_| Error::NoMem)?;
                let mut set = self.smmus.lock();
                let r = self.with_host_s2(&mut host, &mut set.smmus, |hm, mem, tlb| {
                    hm.host_donate_hyp(mem, tlb, pa, pages)
                });
                if r.is_ok() {
                    let given = PhysRange::new(pa, pages * PAGE);
                    if self.pool.clone().donate(given).is_err() {
                        // Undo: the pages go back to the host (their tables still exist).
                        let back = self.with_host_s2(&mut host, &mut set.smmus, |hm, mem, tlb| {
                            hm.hyp_donate_host_range(mem, tlb, given)
                        });
                        if back.is_err() {
                            log::error!(
                                "MEM_DONATE {given:?}: no memory to record or undo it; pages withheld"
                            );
                        }
                        return Err(Error::NoMem);
                    }
                    host.refill(&self.pool);
                }
                r
            };
            match r {
                Ok(()) => return Ok(()),
                Err(Error::Busy) if attempt == 0 => {
                    let r = PhysRange::new(pa, pages.saturating_mul(PAGE));
                    if self.flush_where(|d| d.pending.pins_overlap(&r)) == 0 {
                        return Err(Error::Busy);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::Busy)
    }

    /// MEM_RECLAIM: gives up to `wanted` donated pages the pool does not use back to the
    /// host (one run), zeroed. NOENT when nothing is donated, BUSY when every donated page
    /// is in use.
    pub fn mem_reclaim(&self, wanted: u64) -> Result<(u64, u64), Error> {
        if wanted == 0 || wanted > host_mem::MAX_PAGES_PER_CALL {
            return Err(Error::Invalid);
        }
        // Zeroing and cleaning the run happens with the host lock held: bound it like a
        // MAP (the host calls again for more).
        let wanted = wanted.min((self.cfg.max_map_bytes / PAGE).max(1));
        for attempt in 0..2 {
            let mut host = self.host.lock();
            if host.mem.donated_pages() == 0 {
                return Err(Error::NoEnt);
            }
            let mut pool = self.pool.clone();
            let Some(give) = pool.reclaim(wanted) else {
                drop(host);
                if attempt == 0 {
                    // Queued unmaps may hold tables in donated pages.
                    self.flush_all();
                    continue;
                }
                return Err(Error::Busy);
            };
            // Warden may have kept tables (or anything) there: the host gets zeros, in
            // its caches and in memory (it may map the pages non-cacheable, a device
            // may not snoop).
            pool.scrub(give);
            self.cpu.clone().clean_inval_poc(give.base, give.size);
            let mut set = self.smmus.lock();
            let r = self.with_host_s2(&mut host, &mut set.smmus, |hm, mem, tlb| {
                hm.hyp_donate_host_range(mem, tlb, give)
            });
            return match r {
                Ok((pa, n)) => Ok((pa.get(), n)),
                Err(Error::Busy) => {
                    // Withheld (an unconfirmed invalidation): a device may still reach
                    // part of the run, so it never goes back to the pool.
                    Err(Error::Busy)
                }
                Err(e) => {
                    // Back into the pool: the lists shrank by taking it out, so this needs
                    // no allocation; if it failed anyway the pages are only withheld.
                    if pool.donate(give).is_err() {
                        log::error!(
                            "MEM_RECLAIM {give:?}: could not return it to the pool; pages withheld"
                        );
                    }
                    Err(e)
                }
            };
        }
        Err(Error::Busy)
    }

    // ------------------------------------------------------------------------------------
    // Introspection (tests, debugging).

    /// The VMID of domain `id`, if it exists.
    pub fn domain_vmid(&self, id: u64) -> Option<Vmid> {
        let (_, slot) = self.slot_of(id).ok()?;
        slot.dom.lock().as_ref().map(|d| d.vmid)
    }

    /// IDs of the live host-managed domains.
    pub fn domain_ids(&self) -> Vec<u64> {
        let mut v = Vec::new();
        for (i, s) in self.slots.iter().enumerate() {
            if s.dom.lock().is_some() {
                v.push(i as u64 + domain::FIRST_MANAGED);
            }
        }
        v
    }

    /// Pins held by domain `id`'s queued unmaps.
    pub fn pending_pins(&self, id: u64) -> Vec<PhysRange> {
        let Ok((_, slot)) = self.slot_of(id) else {
            return Vec::new();
        };
        slot.dom
            .lock()
            .as_ref()
            .map(|d| d.pending.pins.clone())
            .unwrap_or_default()
    }

    /// Number of SMMUs.
    pub const fn smmu_count(&self) -> usize {
        self.nsmmus
    }

    /// Pages kept pinned after a hardware failure.
    pub fn leaked_pages(&self) -> u64 {
        self.stats.leaked_pages.load(Ordering::Relaxed)
    }

    /// Bytes of tables never freed after a hardware failure: domain tables, and host
    /// stage-2 tables unlinked under an unconfirmed invalidation.
    pub fn leaked_table_bytes(&self) -> u64 {
        self.stats.leaked_table_bytes.load(Ordering::Relaxed)
            + self.host.lock().mem.s2.leaked_table_bytes()
    }
}
