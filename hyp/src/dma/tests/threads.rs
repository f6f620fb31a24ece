//! Many CPUs at once: threads hammer MAP / UNMAP / FLUSH on shared and private domains
//! (plus donations and reclaims of other pages), with page pins shared between them.
//! Seams here are thread-safe fakes (an SMMU that completes every command at once, a
//! locked page pool, no-op TLBIs): what is checked is the core's own bookkeeping — no
//! pin lost or doubled, no deadlock, every call answered.

use super::super::*;
use crate::PAGE;
use crate::addr::PhysRange;
use crate::s2mmu::NoTlb;
use crate::s2mmu::{S2Geometry, Stage2};
use crate::smmu::ProbeConfig;
use crate::smmu::regs::*;
use alloc::vec;
use host_abi::{Error, domain, func, prot, stats};
use std::boxed::Box;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Barrier, Mutex as StdMutex};

const RAM: u64 = 0x4000_0000;
const POOL: u64 = 8 << 20;
const HOST: u64 = RAM + POOL;
const HOST_SIZE: u64 = 16 << 20;
const SID: u32 = 3;

/// An SMMU that consumes every command as soon as `CMDQ_PROD` moves.
#[derive(Default)]
struct FakeIo(StdMutex<HashMap<usize, u32>>);

impl SmmuIo for FakeIo {
    fn read32(&self, off: usize) -> u32 {
        let regs = self.0.lock().unwrap();
        let r = |o| regs.get(&o).copied().unwrap_or(0);
        match off {
            IDR0 => {
                (IDR0_TTF_AARCH64 << IDR0_TTF.0)
                    | IDR0_S2P
                    | IDR0_COHACC
                    | IDR0_VMID16
                    | (0b10 << IDR0_TTENDIAN.0)
            }
            IDR1 => 8 | (8 << IDR1_EVENTQS.0) | (8 << IDR1_CMDQS.0),
            IDR3 => IDR3_RIL,
            IDR5 => 5 | IDR5_GRAN4K | IDR5_GRAN16K | IDR5_GRAN64K,
            CR0ACK => r(CR0),
            IRQ_CTRLACK => r(IRQ_CTRL),
            other => r(other),
        }
    }
    fn write32(&self, off: usize, v: u32) {
        let mut regs = self.0.lock().unwrap();
        match off {
            GBPA => {
                regs.insert(GBPA, v & !GBPA_UPDATE);
            }
            CMDQ_PROD => {
                regs.insert(CMDQ_PROD, v);
                regs.insert(CMDQ_CONS, v);
            }
            _ => {
                regs.insert(off, v);
            }
        }
    }
    fn read64(&self, off: usize) -> u64 {
        u64::from(self.read32(off))
    }
    fn write64(&self, off: usize, v: u64) {
        self.write32(off, v as u32);
    }
    fn now_ns(&self) -> u64 {
        static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        START
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_nanos() as u64
    }
}

/// A thread-safe page pool: 4 KiB pages from a free list, larger blocks bumped.
struct PoolInner {
    free: Vec<u64>,
    bump: u64,
}

#[derive(Clone)]
struct SyncPool {
    /// The backing memory's address (posing as physical `RAM`).
    base: usize,
    inner: Arc<StdMutex<PoolInner>>,
}

impl SyncPool {
    fn new() -> Self {
        let mem: Box<[u64]> = vec![0u64; (POOL / 8) as usize].into_boxed_slice();
        let base = Box::leak(mem).as_mut_ptr() as usize;
        Self {
            base,
            inner: Arc::new(StdMutex::new(PoolInner {
                free: Vec::new(),
                bump: RAM,
            })),
        }
    }
}

// SAFETY: allocations are disjoint ranges of one leaked buffer, zeroed when handed out
// and aligned as asked; `table_ptr` points into it; the buffer is only accessed through
// raw pointers.
unsafe impl TableMemory for SyncPool {
    fn alloc_zeroed(&mut self, size: usize, align: usize) -> Option<PhysAddr> {
        let size = (size as u64).max(PAGE);
        let mut inner = self.inner.lock().unwrap();
        let pa = if size == PAGE && align as u64 <= PAGE && !inner.free.is_empty() {
            inner.free.pop()?
        } else {
            let pa = inner.bump.next_multiple_of((align as u64).max(PAGE));
            if pa + size > RAM + POOL {
                return None;
            }
            inner.bump = pa + size;
            pa
        };
        let p = self.table_ptr(PhysAddr(pa)).cast::<u8>();
        // SAFETY: `size` bytes at `pa` are inside the buffer and not allocated.
        unsafe { p.write_bytes(0, size as usize) };
        Some(PhysAddr(pa))
    }
    unsafe fn free(&mut self, pa: PhysAddr, size: usize) {
        if size as u64 <= PAGE {
            self.inner.lock().unwrap().free.push(pa.get());
        }
    }
    fn table_ptr(&self, pa: PhysAddr) -> *mut u64 {
        assert!(pa.get() >= RAM && pa.get() < RAM + POOL);
        (self.base + (pa.get() - RAM) as usize) as *mut u64
    }
}

// SAFETY: donated pages are outside the backing buffer: they are only recorded, never
// handed out, and given back as they came.
unsafe impl PagePool for SyncPool {
    fn prepare_donate(&mut self) -> Result<(), crate::frames::NoMem> {
        Ok(())
    }
    fn donate(&mut self, _r: PhysRange) -> Result<(), crate::frames::NoMem> {
        Ok(())
    }
    fn reclaim(&mut self, _max_pages: u64) -> Option<PhysRange> {
        None
    }
    fn scrub(&mut self, _r: PhysRange) {
        // Never called: `reclaim` returns nothing.
    }
}

/// CPU seams that do nothing but count.
#[derive(Clone, Default)]
struct SyncCpu(Arc<AtomicU64>);

impl CpuTlb for SyncCpu {
    fn publish(&mut self) {}
    fn tlbi_ipa_range(&mut self, _ipa: Ipa, _size: u64) {}
    fn tlbi_vmall(&mut self) {}
}
impl VmidTlb for SyncCpu {
    fn tlbi_vmid_range(&mut self, _v: u16, _ipa: Ipa, _s: u64, _g: Granule, _l: bool) {}
    fn tlbi_vmid_all(&mut self, _v: u16) {}
}
impl Clock for SyncCpu {
    fn now_ns(&self) -> u64 {
        // Every call advances time: deadlines pass now and then.
        self.0.fetch_add(50_000, Ordering::Relaxed)
    }
}
impl CacheMaint for SyncCpu {
    fn clean_inval_poc(&mut self, _pa: PhysAddr, _len: u64) {}
    fn dsb_ishst(&mut self) {}
}

type SyncHyp = Hyp<FakeIo, SyncPool, SyncCpu>;

fn build() -> SyncHyp {
    let mut pool = SyncPool::new();
    let geom = S2Geometry::new(Granule::Size4K, 40, 40).unwrap();
    // SAFETY: every later use passes a clone of this pool.
    let mut s2 = unsafe { Stage2::new(geom, &mut pool) }.unwrap();
    s2.map(
        &mut pool,
        &mut NoTlb,
        Ipa(HOST),
        PhysAddr(HOST),
        HOST_SIZE,
        crate::host_mem::HOST_RAM,
    )
    .unwrap();
    let sids = [(0, 16)];
    let cfg = ProbeConfig {
        coherent: true,
        sids: &sids,
        cmdq_log2: Some(8),
        evtq_log2: Some(8),
    };
    // SAFETY: every later call passes a clone of this pool.
    let smmu = unsafe { Smmu::probe(FakeIo::default(), &mut pool, &cfg) }.unwrap();
    let vmids: &'static Mutex<VmidAllocator> =
        Box::leak(Box::new(Mutex::new(VmidAllocator::new(16).unwrap())));
    vmids.lock().reserve(Vmid::new(0)).unwrap();
    let init = HypInit {
        host: HostMem::new(
            s2,
            vec![PhysRange::new(RAM, POOL + HOST_SIZE)],
            vec![PhysRange::new(RAM, POOL)],
        ),
        host_vmid: 0,
        smmus: vec![smmu],
        btm: false,
        vmids,
    };
    let cfg = Config {
        batch_threshold: 16,
        ..Config::default()
    };
    // SAFETY: built with this pool.
    unsafe { Hyp::new(init, pool, SyncCpu::default(), cfg) }.unwrap()
}

fn ok(r: [u64; 4]) -> [u64; 4] {
    assert_eq!(r[0], 0, "call failed: {r:?}");
    r
}

#[test]
fn concurrent_map_unmap_keeps_pins_exact() {
    const THREADS: u64 = 4;
    const ROUNDS: u64 = 200;
    /// Pages every thread maps (so pins are shared).
    const SHARED_PAGES: u64 = 8;
    let hyp = Arc::new(build());
    let call = |h: &SyncHyp, fid, a: &[u64]| {
        let mut args = [0u64; 6];
        args[..a.len()].copy_from_slice(a);
        h.dispatch(fid, args)
    };
    let strict = ok(call(&hyp, func::DOMAIN_ALLOC, &[0]))[1];
    let batched = ok(call(&hyp, func::DOMAIN_ALLOC, &[domain_flags_batched()]))[1];
    ok(call(
        &hyp,
        func::ATTACH,
        &[strict, host_abi::endpoint(0, SID)],
    ));
    ok(call(
        &hyp,
        func::ATTACH,
        &[batched, host_abi::endpoint(0, SID + 1)],
    ));
    let page = |k: u64| HOST + k * PAGE;
    let barrier = Arc::new(Barrier::new(THREADS as usize + 1));
    let mut handles = Vec::new();
    for t in 0..THREADS {
        let hyp = hyp.clone();
        let barrier = barrier.clone();
        handles.push(std::thread::spawn(move || {
            let call = |fid, a: &[u64]| {
                let mut args = [0u64; 6];
                args[..a.len()].copy_from_slice(a);
                hyp.dispatch(fid, args)
            };
            let own = ok(call(
                func::DOMAIN_ALLOC,
                &[if t % 2 == 0 {
                    0
                } else {
                    domain_flags_batched()
                }],
            ))[1];
            // Phase 1: every thread maps every shared page in three domains.
            for k in 0..SHARED_PAGES {
                let iova = (t * 0x100 + k) * PAGE;
                for d in [strict, batched, own] {
                    let r = ok(call(func::MAP, &[d, iova, page(k), PAGE, prot::ALL]));
                    assert_eq!(r[1], PAGE);
                }
            }
            barrier.wait();
            barrier.wait();
            // Phase 2: churn. Map and unmap private pages and the shared ones.
            for round in 0..ROUNDS {
                let k = (round + t) % SHARED_PAGES;
                let iova = (t * 0x100 + 0x80 + round % 16) * PAGE;
                for d in [strict, batched, own] {
                    ok(call(func::MAP, &[d, iova, page(k), PAGE, prot::ALL]));
                }
                let pk = 64 + t * 16 + round % 16;
                ok(call(
                    func::MAP,
                    &[own, iova + 0x40_0000, page(pk), PAGE, prot::WRITE],
                ));
                for d in [strict, batched, own] {
                    let r = ok(call(func::UNMAP, &[d, iova, PAGE]));
                    assert_eq!(r[1], PAGE);
                }
                ok(call(func::UNMAP, &[own, iova + 0x40_0000, PAGE]));
                if round % 7 == 0 {
                    ok(call(func::FLUSH, &[batched]));
                }
                // Donations of pages nobody maps, and of a mapped one (BUSY).
                let mine = 256 + t * ROUNDS + round;
                ok(call(func::MEM_DONATE, &[page(mine), 1]));
                let r = call(func::MEM_DONATE, &[page(k), 1]);
                assert_eq!(r[0], Error::Busy.to_reg());
            }
            // Phase 3: unmap phase-1 mappings.
            for k in 0..SHARED_PAGES {
                let iova = (t * 0x100 + k) * PAGE;
                for d in [strict, batched, own] {
                    ok(call(func::UNMAP, &[d, iova, PAGE]));
                }
            }
            ok(call(func::FLUSH, &[own]));
            ok(call(func::DOMAIN_FREE, &[own]));
        }));
    }
    barrier.wait();
    // Everyone mapped every shared page in three domains.
    hyp.with_host_mem(|h| {
        for k in 0..SHARED_PAGES {
            assert_eq!(h.pins().count(page(k)), 3 * THREADS, "page {k}");
        }
    });
    barrier.wait();
    for h in handles {
        h.join().unwrap();
    }
    ok(call(&hyp, func::FLUSH, &[batched]));
    hyp.with_host_mem(|h| {
        assert_eq!(
            h.pins().pinned_pages(),
            0,
            "every pin released exactly once"
        );
        assert_eq!(h.donated_pages(), THREADS * ROUNDS);
    });
    let s = ok(call(&hyp, func::STATS, &[stats::DMA_CALLS]));
    assert_eq!(s[1], THREADS * (ROUNDS * 4 + SHARED_PAGES * 3));
    ok(call(
        &hyp,
        func::ATTACH,
        &[domain::BLOCKED, host_abi::endpoint(0, SID)],
    ));
    ok(call(
        &hyp,
        func::ATTACH,
        &[domain::BLOCKED, host_abi::endpoint(0, SID + 1)],
    ));
    ok(call(&hyp, func::DOMAIN_FREE, &[strict]));
    ok(call(&hyp, func::DOMAIN_FREE, &[batched]));
    assert!(hyp.domain_ids().is_empty());
}

fn domain_flags_batched() -> u64 {
    host_abi::domain_flags::BATCHED
}
