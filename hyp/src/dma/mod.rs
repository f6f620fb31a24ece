//! The DMA core: the `Hyp` state (domain table, host memory, SMMUs, events), its seams,
//! locks and configuration, served on all CPUs at once. The EL2 glue decodes the trap,
//! calls [`Hyp::dispatch`] and writes the four result registers back; everything else
//! happens here, against narrow hardware seams so that the same code runs in `cargo test`
//! on the SMMU, CPU-TLB and RAM models.
//!
//! # Where each call family lives
//!
//! - `hypercall`: the front-end, the only code that knows register layouts: it decodes
//!   `fid` + `x1..x6`, calls the typed methods below and encodes `x0..x3` ([`encode`]);
//! - `info`: FEATURES, STATS, EVENT_POLL;
//! - `domains`: DOMAIN_ALLOC, DOMAIN_FREE (domain slots, VMIDs);
//! - `attach`: ATTACH (STEs and the endpoint map);
//! - `map`: MAP, UNMAP, IOVA_TO_PHYS;
//! - `flush`: domain invalidation (`DomInv`), strict completion, the
//!   batched queue (threshold, deadline, pool pressure) and FLUSH;
//! - `memory`: MEM_DONATE, MEM_RECLAIM, the host reserve, pins of emulated masters.
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
//! Every call returns exactly one [`Error`] (the front-end encodes it with [`encode`])
//! and changes nothing when it fails. MAP and UNMAP may do less than asked: they return
//! the number of bytes `done` from the start of the range (x1 in the hypercall ABI), and
//! the caller continues from `iova + done`.
//!
//! - MAP maps at most [`Config::max_map_bytes`] per call, and less if the page pool runs
//!   dry (NOMEM only when nothing could be mapped, after flushing every batched queue
//!   once to free their tables). The whole requested range must be unmapped (EXIST
//!   otherwise, nothing done).
//! - UNMAP walks the range and unmaps up to [`Config::max_map_bytes`] of *mapped* bytes:
//!   `done` is the length of the prefix `[iova, iova + done)` that is now entirely
//!   unmapped, holes included (so `done == size` when the whole range was processed). NOENT when
//!   nothing at all is mapped in the range.
//! - Domains [`DomainId::HOST`] and [`DomainId::BLOCKED`] cannot be mapped, unmapped, flushed,
//!   translated or freed: INVALID.
//! - A hardware failure (an SMMU that does not complete a `CMD_SYNC`) can leave an
//!   operation's effect unconfirmed: then the pages and tables involved are never
//!   released (they stay pinned / allocated), which is safe, and logged.

use crate::addr::{Ipa, PhysAddr, PhysRange};
use crate::domain::Domain;
use crate::events::EventRing;
use crate::host_mem::{CpuTlb, HostMem, InvalidationCounts};
use crate::s2mmu::{Granule, TableMemory};
use crate::smmu::{S2Config, Smmu, SmmuIo};
use crate::vmid_alloc::{Vmid, VmidAllocator};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use hashbrown::HashMap;
use host_abi::Error;
use spin::Mutex;

mod attach;
mod domains;
mod flush;
mod hypercall;
mod info;
mod map;
mod memory;
#[cfg(test)]
mod tests;
#[cfg(any(test, feature = "fuzzing"))]
pub mod world;

pub use crate::domain::{DomainFlags, DomainId, Endpoint, Prot};
pub use hypercall::encode;
pub use info::{Features, Stats};
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

/// The SMMUs and which managed domain each endpoint is attached to.
struct SmmuSet<I: SmmuIo, M: TableMemory> {
    smmus: Vec<Smmu<I, M>>,
    /// Per SMMU: StreamID → domain slot, for endpoints attached to a managed domain
    /// (room reserved with `try_reserve` before an insert).
    owner: Vec<HashMap<u32, usize>>,
}

/// The SMMUs of the set, for the invalidation fan-out ([`crate::inval::DomainFanout`]).
impl<I: SmmuIo, M: TableMemory> AsMut<[Smmu<I, M>]> for SmmuSet<I, M> {
    fn as_mut(&mut self) -> &mut [Smmu<I, M>] {
        &mut self.smmus
    }
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

/// An empty vector with room for exactly `n` elements; NOMEM if the heap has no room.
fn with_capacity<T>(n: usize) -> Result<Vec<T>, crate::frames::NoMem> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| crate::frames::NoMem)?;
    Ok(v)
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
        let mut slots = with_capacity(usize::from(cfg.max_domains))?;
        slots.extend((0..cfg.max_domains).map(|_| Slot::new()));
        let mut owner = with_capacity(smmus.len())?;
        owner.extend(smmus.iter().map(|_| HashMap::new()));
        let events = EventRing::with_capacity(cfg.event_ring).ok_or(Error::NoMem)?;
        let host_ste = S2Config::for_stage2(&host.s2, host_vmid);
        Ok(Self {
            table: Mutex::new(Table { hint: 0, used: 0 }),
            slots,
            host: Mutex::new({
                let reserve = with_capacity(HOST_RESERVE_PAGES)?;
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

    /// Runs `f` on the SMMUs.
    pub fn with_smmus<R>(&self, f: impl FnOnce(&mut [Smmu<I, M>]) -> R) -> R {
        f(&mut self.smmus.lock().smmus)
    }

    // ------------------------------------------------------------------------------------
    // Introspection (tests, debugging).

    /// The VMID of domain `id`, if it exists.
    pub fn domain_vmid(&self, id: DomainId) -> Option<Vmid> {
        let (_, slot) = self.slot_of(id).ok()?;
        slot.dom.lock().as_ref().map(|d| d.vmid)
    }

    /// IDs of the live host-managed domains.
    pub fn domain_ids(&self) -> Vec<DomainId> {
        let mut v = Vec::new();
        for (i, s) in self.slots.iter().enumerate() {
            if s.dom.lock().is_some() {
                v.push(DomainId(i as u64 + DomainId::FIRST_MANAGED.get()));
            }
        }
        v
    }

    /// Pins held by domain `id`'s queued unmaps.
    pub fn pending_pins(&self, id: DomainId) -> Vec<PhysRange> {
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
