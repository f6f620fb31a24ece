//! A test world for [`Hyp`]: one RAM (coherent or not) holding Warden's carve-out (the
//! page pool: host stage-2, domain tables, SMMU queues) and the host's RAM, SMMU models
//! over it, a CPU model whose broadcast TLBIs reach the SMMU models (honoured only with
//! BTM), a settable clock, and the core on top.

use super::*;
use crate::PAGE;
use crate::host_mem;
use crate::s2mmu::NoTlb;
use crate::s2mmu::{S2Geometry, Stage2};
use crate::smmu::ProbeConfig;
use crate::smmu::model::{DmaFault, ModelConfig, SmmuModel};
use crate::testutil::Ram;
use alloc::vec;
use host_abi::{func, prot};
use std::boxed::Box;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

/// First byte of the RAM.
pub const RAM_BASE: u64 = 0x4000_0000;
/// Warden's carve-out: the page pool, at the start of RAM.
pub const POOL_SIZE: u64 = 8 << 20;
/// The host's RAM, after the carve-out (2 MiB aligned).
pub const HOST_BASE: u64 = RAM_BASE + POOL_SIZE;
/// Size of the host's RAM.
pub const HOST_SIZE: u64 = 8 << 20;
/// The host's VMID.
pub const HOST_VMID: u16 = 0;
/// StreamIDs described at boot on every SMMU (attached to the host stage-2).
pub const SIDS: [u32; 3] = [0x10, 0x11, 0x12];

/// Runs a model's or the test pool's own code with its allocations exempt from the test
/// allocator's failures (hardware and fixtures, not Warden).
fn exempt<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(test)]
    return crate::testalloc::exempt(f);
    #[cfg(not(test))]
    f()
}

/// An SMMU model behind the register seam.
pub struct ModelIo(pub Rc<SmmuModel>);

// The model's own allocations (its logs, its TLB) are exempt from the test allocator's
// failures: they are hardware, not Warden.
impl SmmuIo for ModelIo {
    fn read32(&self, off: usize) -> u32 {
        exempt(|| self.0.read32(off))
    }
    fn write32(&self, off: usize, v: u32) {
        exempt(|| self.0.write32(off, v))
    }
    fn read64(&self, off: usize) -> u64 {
        exempt(|| self.0.read64(off))
    }
    fn write64(&self, off: usize, v: u64) {
        exempt(|| self.0.write64(off, v))
    }
    fn now_ns(&self) -> u64 {
        self.0.now_ns()
    }
}

/// The page pool's state.
pub struct PoolState {
    ram: Rc<Ram>,
    /// Free 4 KiB pages.
    free: BTreeSet<u64>,
    /// Live allocations: address → size.
    live: BTreeMap<u64, usize>,
    /// Donated pages: the same bookkeeping as Warden's pool at EL2.
    pub frames: crate::frames::FramePool,
    /// Per page of the RAM: inside a live allocation (`table_ptr`'s check, kept cheap).
    live_pages: Vec<bool>,
    /// Allocations still allowed (`None`: unlimited).
    pub budget: Option<usize>,
}

/// A page pool over the RAM: page-granular first fit in the carve-out, then donated pages
/// (kept as Warden's pool at EL2 keeps them, in a [`FramePool`](crate::frames::FramePool)).
#[derive(Clone)]
pub struct TestPool(pub Rc<RefCell<PoolState>>);

impl TestPool {
    /// A pool of the pages of `r`.
    pub fn new(ram: Rc<Ram>, r: PhysRange) -> Self {
        let free = (0..r.size / PAGE)
            .map(|i| r.base.get() + i * PAGE)
            .collect();
        Self(Rc::new(RefCell::new(PoolState {
            live_pages: vec![false; ram.len() / PAGE as usize],
            ram,
            free,
            live: BTreeMap::new(),
            frames: crate::frames::FramePool::new(),
            budget: None,
        })))
    }

    /// Limits further allocations (`None`: unlimited).
    pub fn set_budget(&self, b: Option<usize>) {
        self.0.borrow_mut().budget = b;
    }

    /// Live allocations (address, size).
    pub fn live(&self) -> Vec<(u64, usize)> {
        self.0.borrow().live.iter().map(|(&a, &s)| (a, s)).collect()
    }

    /// Whether `pa` is inside a live allocation.
    pub fn is_live(&self, pa: u64) -> bool {
        let st = self.0.borrow();
        pa.checked_sub(st.ram.base())
            .and_then(|off| st.live_pages.get((off / PAGE) as usize))
            .is_some_and(|&live| live)
    }

    /// Free pages.
    pub fn free_pages(&self) -> usize {
        self.0.borrow().free.len()
    }
}

// SAFETY: allocations are disjoint sets of free pages of the RAM, zeroed in every copy
// and aligned as asked; `table_ptr` returns the CPU view of a live allocation (checked),
// and the RAM is only accessed through raw pointers.
unsafe impl TableMemory for TestPool {
    fn alloc_zeroed(&mut self, size: usize, align: usize) -> Option<PhysAddr> {
        // The pool's own bookkeeping (standing in for the EL2 heap) is exempt from the
        // test allocator's failures; the budget makes it run dry.
        exempt(|| self.alloc_inner(size, align))
    }

    unsafe fn free(&mut self, pa: PhysAddr, size: usize) {
        exempt(|| self.free_inner(pa, size))
    }

    fn table_ptr(&self, pa: PhysAddr) -> *mut u64 {
        assert!(self.is_live(pa.get()), "table_ptr({pa:?}) of no allocation");
        self.0.borrow().ram.cpu_ptr(pa.get(), 8).cast()
    }

    fn clean(&mut self, pa: PhysAddr, size: usize) {
        self.0.borrow().ram.clean(pa.get(), size);
    }
}

impl TestPool {
    fn alloc_inner(&mut self, size: usize, align: usize) -> Option<PhysAddr> {
        let mut st = self.0.borrow_mut();
        if let Some(b) = &mut st.budget {
            if *b == 0 {
                return None;
            }
            *b -= 1;
        }
        let size = (size as u64).max(PAGE);
        let align = (align as u64).max(PAGE);
        let n = size.div_ceil(PAGE);
        let found = st
            .free
            .iter()
            .copied()
            .filter(|p| p.is_multiple_of(align))
            .find(|&p| (1..n).all(|i| st.free.contains(&(p + i * PAGE))));
        let found = match found {
            Some(found) => {
                for i in 0..n {
                    st.free.remove(&(found + i * PAGE));
                }
                found
            }
            // The carve-out is used up: donated pages.
            None => st.frames.alloc(size as usize, align as usize)?.get(),
        };
        st.ram.zero(found, (n * PAGE) as usize);
        st.live.insert(found, (n * PAGE) as usize);
        let first = ((found - st.ram.base()) / PAGE) as usize;
        st.live_pages[first..first + n as usize].fill(true);
        Some(PhysAddr(found))
    }

    fn free_inner(&mut self, pa: PhysAddr, size: usize) {
        let mut st = self.0.borrow_mut();
        let size = (size as u64).max(PAGE);
        let was = st.live.remove(&pa.get());
        assert_eq!(
            was,
            Some(size as usize),
            "free({pa:?}, {size:#x}) of no allocation"
        );
        // Poison the CPU view: a use after free shows.
        let p = st.ram.cpu_ptr(pa.get(), size as usize);
        // SAFETY: the allocation was live until now: in bounds, no other user.
        unsafe { p.write_bytes(0xa5, size as usize) };
        let first = ((pa.get() - st.ram.base()) / PAGE) as usize;
        st.live_pages[first..first + (size / PAGE) as usize].fill(false);
        if st.frames.contains(pa) {
            st.frames.free(pa, size as usize);
            return;
        }
        for i in 0..size / PAGE {
            st.free.insert(pa.get() + i * PAGE);
        }
    }
}

// SAFETY: `reclaim` hands out only free donated pages and takes them out of the pool.
unsafe impl PagePool for TestPool {
    fn prepare_donate(&mut self) -> Result<(), crate::frames::NoMem> {
        self.0.borrow_mut().frames.reserve(4)
    }

    fn donate(&mut self, r: PhysRange) -> Result<(), crate::frames::NoMem> {
        self.0.borrow_mut().frames.donate(r)
    }

    fn reclaim(&mut self, max_pages: u64) -> Option<PhysRange> {
        self.0.borrow_mut().frames.reclaim(max_pages)
    }

    fn scrub(&mut self, r: PhysRange) {
        let st = self.0.borrow();
        // The CPU's view only: the core must clean it for memory to follow.
        let p = st.ram.cpu_ptr(r.base.get(), r.size as usize);
        // SAFETY: the pages were just reclaimed: in the RAM, used by nothing else.
        unsafe { p.write_bytes(0, r.size as usize) };
    }
}

/// The CPU model's state.
pub struct CpuState {
    models: RefCell<Vec<Rc<SmmuModel>>>,
    ram: Rc<Ram>,
    /// The clock.
    pub now: Cell<u64>,
    /// Host-VMID TLBI operations.
    pub host_tlbis: Cell<u64>,
    /// TLBI operations under other VMIDs.
    pub vmid_tlbis: Cell<u64>,
    /// `clean_inval_poc` calls.
    pub cleans: Cell<u64>,
    /// Skip `clean_inval_poc` (to show what a missing clean does).
    pub skip_cleans: Cell<bool>,
}

/// A CPU whose broadcast TLBIs reach the SMMU models (which honour them only with BTM
/// present and `CR2.PTM` clear).
#[derive(Clone)]
pub struct TestCpu(pub Rc<CpuState>);

impl TestCpu {
    fn each_model(&self, f: impl Fn(&SmmuModel)) {
        for m in self.0.models.borrow().iter() {
            f(m);
        }
    }
}

impl CpuTlb for TestCpu {
    fn publish(&mut self) {}
    fn tlbi_ipa_range(&mut self, ipa: Ipa, size: u64) {
        let mut a = ipa.get();
        while a < ipa.get() + size {
            self.each_model(|m| m.cpu_tlbi_ipa(HOST_VMID, a));
            a += PAGE;
        }
        // VMALLE1IS drops combined stage-1 entries only: none in a stage-2-only SMMU.
        self.0.host_tlbis.set(self.0.host_tlbis.get() + 1);
    }
    fn tlbi_vmall(&mut self) {
        self.each_model(|m| m.cpu_tlbi_vmall(HOST_VMID));
        self.0.host_tlbis.set(self.0.host_tlbis.get() + 1);
    }
}

impl VmidTlb for TestCpu {
    fn tlbi_vmid_range(&mut self, vmid: u16, ipa: Ipa, size: u64, granule: Granule, _leaf: bool) {
        let mut a = ipa.get();
        while a < ipa.get() + size {
            self.each_model(|m| m.cpu_tlbi_ipa(vmid, a));
            a += granule.size();
        }
        self.0.vmid_tlbis.set(self.0.vmid_tlbis.get() + 1);
    }
    fn tlbi_vmid_all(&mut self, vmid: u16) {
        self.each_model(|m| m.cpu_tlbi_vmall(vmid));
        self.0.vmid_tlbis.set(self.0.vmid_tlbis.get() + 1);
    }
}

impl Clock for TestCpu {
    fn now_ns(&self) -> u64 {
        self.0.now.get()
    }
}

impl CacheMaint for TestCpu {
    fn clean_inval_poc(&mut self, pa: PhysAddr, len: u64) {
        self.0.cleans.set(self.0.cleans.get() + 1);
        if !self.0.skip_cleans.get() && self.0.ram.contains(pa.get(), len as usize) {
            self.0.ram.clean(pa.get(), len as usize);
        }
    }
    fn dsb_ishst(&mut self) {}
}

/// How to build a world.
#[derive(Clone, Copy, Debug)]
pub struct Opts {
    /// SMMUs with BTM, taking part (`PTM = 0`).
    pub btm: bool,
    /// Range invalidation.
    pub ril: bool,
    /// Coherent RAM and SMMUs.
    pub coherent: bool,
    /// Number of SMMUs.
    pub smmus: usize,
    /// VMID width.
    pub vmid_bits: u32,
    /// The core's tunables.
    pub cfg: Config,
    /// Base model configuration.
    pub model: ModelConfig,
    /// A VMID allocator to reuse (reset by [`World::new`]) instead of leaking a new one:
    /// for callers that build millions of worlds (the fuzz harness).
    pub vmids: Option<&'static Mutex<VmidAllocator>>,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            btm: false,
            ril: true,
            coherent: true,
            smmus: 1,
            vmid_bits: 16,
            cfg: Config::default(),
            model: ModelConfig::default(),
            vmids: None,
        }
    }
}

/// The core under test.
pub type TestHyp = Hyp<ModelIo, TestPool, TestCpu>;

/// Everything a test needs.
pub struct World {
    /// The RAM.
    pub ram: Rc<Ram>,
    /// The SMMU models.
    pub models: Vec<Rc<SmmuModel>>,
    /// The page pool.
    pub pool: TestPool,
    /// The CPU model.
    pub cpu: TestCpu,
    /// The core.
    pub hyp: TestHyp,
}

/// Decodes `x0` as the ABI does.
pub fn status(x0: u64) -> Result<(), Error> {
    let e = match x0 as i64 {
        0 => return Ok(()),
        -1 => Error::NotSupported,
        -2 => Error::Invalid,
        -3 => Error::Denied,
        -4 => Error::NoEnt,
        -5 => Error::Busy,
        -6 => Error::NoMem,
        -7 => Error::NoSpc,
        -8 => Error::Exist,
        other => panic!("undefined status {other}"),
    };
    Err(e)
}

impl World {
    /// Builds a world: host stage-2 over the host RAM, SMMUs probed with the host
    /// StreamIDs on it, BTM on if asked.
    pub fn new(o: Opts) -> Self {
        let ram = Rc::new(Ram::with_coherency(
            RAM_BASE,
            (POOL_SIZE + HOST_SIZE) as usize,
            o.coherent,
        ));
        let mut pool = TestPool::new(ram.clone(), PhysRange::new(RAM_BASE, POOL_SIZE));
        // 40 bits, or less when the SMMUs' OAS is smaller (`IDR5.OAS` encoding).
        let bits = [32, 36, 40]
            .get(usize::from(o.model.oas))
            .map_or(40, |&b| b);
        let geom = S2Geometry::new(Granule::Size4K, bits, bits).unwrap();
        // SAFETY: every later use passes a clone of this pool.
        let mut s2 = unsafe { Stage2::new(geom, &mut pool) }.unwrap();
        s2.map(
            &mut pool,
            &mut NoTlb,
            Ipa(HOST_BASE),
            PhysAddr(HOST_BASE),
            HOST_SIZE,
            host_mem::HOST_RAM,
        )
        .unwrap();
        let host_cfg = S2Config::for_stage2(&s2, HOST_VMID);
        let mut models = Vec::new();
        let mut smmus = Vec::new();
        let sids = [(SIDS[0], SIDS.len() as u32)];
        for _ in 0..o.smmus {
            let model = Rc::new(SmmuModel::new(
                ModelConfig {
                    btm: o.btm,
                    ril: o.ril,
                    cohacc: o.coherent,
                    vmid16: o.vmid_bits == 16,
                    ..o.model
                },
                ram.clone(),
            ));
            let cfg = ProbeConfig {
                coherent: o.coherent,
                sids: &sids,
                cmdq_log2: Some(8),
                evtq_log2: Some(8),
            };
            // SAFETY: every later call passes a clone of this pool.
            let mut smmu = unsafe { Smmu::probe(ModelIo(model.clone()), &mut pool, &cfg) }.unwrap();
            for sid in SIDS {
                smmu.set_ste_s2(&mut pool, sid, &host_cfg).unwrap();
            }
            if o.btm {
                smmu.set_ptm(&mut pool, false).unwrap();
            }
            models.push(model);
            smmus.push(smmu);
        }
        let vmids: &'static Mutex<VmidAllocator> = match o.vmids {
            Some(v) => {
                *v.lock() = VmidAllocator::new(o.vmid_bits).unwrap();
                v
            }
            None => Box::leak(Box::new(Mutex::new(
                VmidAllocator::new(o.vmid_bits).unwrap(),
            ))),
        };
        vmids.lock().reserve(Vmid::new(HOST_VMID)).unwrap();
        let host = HostMem::new(
            s2,
            vec![PhysRange::new(RAM_BASE, POOL_SIZE + HOST_SIZE)],
            vec![PhysRange::new(RAM_BASE, POOL_SIZE)],
        );
        let cpu = TestCpu(Rc::new(CpuState {
            models: RefCell::new(models.clone()),
            ram: ram.clone(),
            now: Cell::new(1_000_000_000),
            host_tlbis: Cell::new(0),
            vmid_tlbis: Cell::new(0),
            cleans: Cell::new(0),
            skip_cleans: Cell::new(false),
        }));
        let init = HypInit {
            host,
            host_vmid: HOST_VMID,
            smmus,
            btm: o.btm,
            vmids,
        };
        // SAFETY: the host stage-2 and SMMUs were built with this pool.
        let hyp = unsafe { Hyp::new(init, pool.clone(), cpu.clone(), o.cfg) }.unwrap();
        for m in &models {
            m.clear_counts();
        }
        Self {
            ram,
            models,
            pool,
            cpu,
            hyp,
        }
    }

    /// A raw call.
    pub fn call(&self, fid: u32, args: &[u64]) -> [u64; 4] {
        let mut a = [0u64; 6];
        a[..args.len()].copy_from_slice(args);
        self.hyp.dispatch(fid, a)
    }

    /// A call, decoded: `x1..x3` or the error.
    pub fn try_call(&self, fid: u32, args: &[u64]) -> Result<[u64; 3], Error> {
        let r = self.call(fid, args);
        status(r[0]).map(|()| [r[1], r[2], r[3]])
    }

    /// DOMAIN_ALLOC.
    pub fn alloc(&self, flags: u64) -> Result<u64, Error> {
        self.try_call(func::DOMAIN_ALLOC, &[flags]).map(|r| r[0])
    }

    /// DOMAIN_FREE.
    pub fn free(&self, d: u64) -> Result<(), Error> {
        self.try_call(func::DOMAIN_FREE, &[d]).map(|_| ())
    }

    /// ATTACH.
    pub fn attach(&self, d: u64, smmu: u32, sid: u32) -> Result<(), Error> {
        self.try_call(func::ATTACH, &[d, host_abi::endpoint(smmu, sid)])
            .map(|_| ())
    }

    /// MAP read-write: bytes mapped.
    pub fn map(&self, d: u64, iova: u64, pa: u64, size: u64) -> Result<u64, Error> {
        self.try_call(func::MAP, &[d, iova, pa, size, prot::ALL])
            .map(|r| r[0])
    }

    /// UNMAP: bytes processed.
    pub fn unmap(&self, d: u64, iova: u64, size: u64) -> Result<u64, Error> {
        self.try_call(func::UNMAP, &[d, iova, size]).map(|r| r[0])
    }

    /// FLUSH.
    pub fn flush(&self, d: u64) -> Result<(), Error> {
        self.try_call(func::FLUSH, &[d]).map(|_| ())
    }

    /// MEM_DONATE.
    pub fn donate(&self, pa: u64, pages: u64) -> Result<(), Error> {
        self.try_call(func::MEM_DONATE, &[pa, pages]).map(|_| ())
    }

    /// MEM_RECLAIM: (pa, pages).
    pub fn reclaim(&self, pages: u64) -> Result<(u64, u64), Error> {
        self.try_call(func::MEM_RECLAIM, &[pages])
            .map(|r| (r[0], r[1]))
    }

    /// STATS group.
    pub fn stats(&self, group: u64) -> [u64; 3] {
        self.try_call(func::STATS, &[group]).unwrap()
    }

    /// Pin count of the page at `pa`.
    pub fn pins(&self, pa: u64) -> u64 {
        self.hyp.with_host_mem(|h| h.pins().count(pa))
    }

    /// Pinned pages in all.
    pub fn pinned_pages(&self) -> u64 {
        self.hyp.with_host_mem(|h| h.pins().pinned_pages())
    }

    /// A device's access through SMMU `smmu`.
    pub fn dma(&self, smmu: usize, sid: u32, iova: u64, write: bool) -> Result<PhysAddr, DmaFault> {
        self.models[smmu].dma(sid, iova, write)
    }

    /// A device writes `v` at `iova` (to memory, past the CPU caches).
    pub fn dev_write(&self, smmu: usize, sid: u32, iova: u64, v: u64) -> Result<(), DmaFault> {
        let pa = self.dma(smmu, sid, iova, true)?;
        assert!(self.ram.dev_write_u64(pa.get(), v));
        Ok(())
    }

    /// A device reads at `iova` (from memory).
    pub fn dev_read(&self, smmu: usize, sid: u32, iova: u64) -> Result<u64, DmaFault> {
        let pa = self.dma(smmu, sid, iova, false)?;
        Ok(self.ram.mem_read_u64(pa.get()))
    }

    /// SMMU commands executed with `opcode`, summed over models.
    pub fn executed(&self, opcode: u8) -> u64 {
        self.models.iter().map(|m| m.count(opcode)).sum()
    }

    /// Forgets every model's executed commands.
    pub fn clear_counts(&self) {
        for m in &self.models {
            m.clear_counts();
        }
    }

    /// Advances the clock.
    pub fn tick_ms(&self, ms: u64) {
        self.cpu.0.now.set(self.cpu.0.now.get() + ms * 1_000_000);
    }
}
