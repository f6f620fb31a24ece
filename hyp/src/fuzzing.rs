//! The hypercall fuzz harness: one input (arbitrary bytes) is decoded into a world
//! configuration and a sequence of Warden calls, run through [`Hyp::dispatch`] on the SMMU,
//! CPU-TLB and RAM models, with every invariant the models can observe checked after every
//! call. The same [`run`] serves the coverage-guided `cargo fuzz` target (`hyp/fuzz`,
//! `cargo xtask fuzz`) and, on the stable toolchain, the smoke test that replays the
//! checked-in corpus and a few thousand generated inputs (`cargo test -p hyp fuzzing`).
//!
//! The decoder biases every argument towards values that get deep: live domain IDs,
//! IOVAs that are mapped in the chosen domain (or were just unmapped), host pages that are
//! mapped elsewhere or donated, block-aligned ranges, sizes of whole granules and blocks;
//! and now and then an edge value or a raw 64-bit one. The world itself comes from the
//! first two bytes: BTM on or off, SMMU commands or CPU TLBIs for domain invalidation,
//! 8- or 16-bit VMIDs, range invalidation, coherent or non-coherent memory, one or two
//! SMMUs, a small batch threshold, short MAP chunks, a short deadline.
//!
//! After every call:
//!
//! - I6: `x0` is success or a defined status, and the status is consistent with what a
//!   shadow of the mappings predicts (EXIST only over a mapping, NOENT only where nothing
//!   is mapped, MAP never over a mapping, x1 within what was asked);
//! - I1: no StreamID on any SMMU reaches a page the host does not own (the carve-out, a
//!   donated page, Warden's tables); a host-managed domain reaches only what the shadow
//!   says is mapped there, or (batched) a page still pinned by its queue;
//! - I2: pin counts are exactly the live mappings plus the queued unmaps; nothing pinned
//!   is outside host-owned RAM (a mapped or pending page's ownership cannot change); a
//!   donated page is never pinned;
//! - I3: after a strict UNMAP (or a FLUSH, or whenever a batched queue was emptied) no
//!   SMMU TLB translates an unmapped IOVA (the sweep probes pages that devices accessed
//!   before, so stale entries show);
//! - I4: live domains have distinct VMIDs (not the host's), a freshly allocated VMID has no
//!   TLB entry on any SMMU, and no TLB holds entries of a VMID nobody owns;
//!
//! and at the end, after every endpoint went back to the host domain and everything was
//! unmapped and flushed: no pin; and once every domain is freed: no VMID, no queued page
//! and no domain table is left.

use crate::PAGE;
use crate::addr::{Ipa, PhysRange};
use crate::dma::world::{HOST_BASE, HOST_SIZE, HOST_VMID, Opts, POOL_SIZE, RAM_BASE, SIDS, World};
use crate::dma::{Config, DomainId};
use crate::smmu::model::{DmaFault, ModelConfig};
use crate::vmid_alloc::VmidAllocator;
use host_abi::{Error, domain, domain_flags, endpoint, features, func, prot};
use spin::Mutex;
use std::boxed::Box;
use std::collections::{BTreeMap, BTreeSet};
use std::format;
use std::string::String;
use std::vec::Vec;

/// The cargo-fuzz target's name (and its corpus directory's).
pub const TARGET: &str = "dispatch";

/// Most calls one input makes.
const MAX_OPS: usize = 96;
/// Most DOMAIN_ALLOC/DOMAIN_FREE pairs the loop operation makes per input.
const MAX_LOOPS: u32 = 300;
/// The IOVA window of most calls.
const IOVA0: u64 = 0x10_0000;
/// Where block-aligned IOVAs start (aligned to every block size, inside the smallest
/// input range, 32 bits).
const IOVA_BLK: u64 = 1 << 31;
/// The host page window of most MAPs and donations (inside the host's RAM).
const PA0: u64 = HOST_BASE + 0x40_0000;
/// Pages (granules) in the windows.
const WIN: u64 = 48;
/// Probe pages kept per domain.
const PROBES: usize = 24;
/// A StreamID no SMMU describes.
const STRAY_SID: u32 = 0x13;

/// A broken invariant: what and where (shared by every fuzz harness of the crate).
#[derive(Debug)]
pub struct Finding(pub String);

type Check = Result<(), Finding>;

/// Returns a [`Finding`] made of the `format!` arguments.
macro_rules! fail {
    ($($t:tt)*) => {
        return Err($crate::fuzzing::Finding(format!($($t)*)))
    };
}
pub(crate) use fail;

/// A fuzz input, read front to back; zeros once it runs out (shared by every harness).
pub(crate) struct Input<'a> {
    pub(crate) data: &'a [u8],
    pub(crate) pos: usize,
}

impl Input<'_> {
    pub(crate) fn done(&self) -> bool {
        self.pos >= self.data.len()
    }
    pub(crate) fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }
    pub(crate) fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    pub(crate) fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    pub(crate) fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        for x in &mut b {
            *x = self.u8();
        }
        u64::from_le_bytes(b)
    }
}

/// What the world was built with.
#[derive(Clone, Copy, Debug)]
struct Setup {
    btm: bool,
    vmid_bits: u32,
    ril: bool,
    coherent: bool,
    smmus: usize,
    /// `IDR5.OAS` of the SMMUs (so the domains' input range): mostly 36 bits, as a domain's
    /// root table grows with it and DOMAIN_FREE walks all of it.
    oas: u8,
    cfg: Config,
}

impl Setup {
    fn decode(inp: &mut Input) -> Self {
        let a = inp.u8();
        let b = inp.u8();
        let btm = a & 1 != 0;
        let cfg = Config {
            batch_threshold: 1 + u32::from(b & 7),
            max_domains: 2 + u16::from((b >> 3) & 3),
            domain_cpu_tlbi: btm && a & 2 != 0,
            max_map_bytes: if a & 0x40 != 0 { 64 << 10 } else { 64 << 20 },
            deadline_ns: if a & 0x80 != 0 {
                1_000_000
            } else {
                Config::default().deadline_ns
            },
            ..Config::default()
        };
        Self {
            btm,
            vmid_bits: if a & 4 != 0 { 8 } else { 16 },
            ril: a & 8 == 0,
            coherent: a & 0x10 == 0,
            smmus: 1 + usize::from(a & 0x20 != 0),
            oas: [1, 1, 1, 1, 1, 2, 2, 4][usize::from(b >> 5)],
            cfg,
        }
    }
}

/// One mapping the shadow knows of: `len` bytes at an IOVA to `pa`.
#[derive(Clone, Copy, Debug)]
struct Map {
    len: u64,
    pa: u64,
    prot: u64,
}

/// The shadow of one host-managed domain.
#[derive(Debug, Default)]
struct Dom {
    id: u64,
    granule: u64,
    batched: bool,
    /// IOVA → mapping; disjoint.
    live: BTreeMap<u64, Map>,
    /// IOVA pages the sweep probes (recently mapped, unmapped or accessed).
    probes: Vec<u64>,
}

impl Dom {
    /// Whether anything is mapped in `[iova, iova + len)`.
    fn overlaps(&self, iova: u64, len: u64) -> bool {
        let end = iova.saturating_add(len);
        if let Some((&s, m)) = self.live.range(..=iova).next_back()
            && s + m.len > iova
        {
            return true;
        }
        self.live.range(iova..end).next().is_some()
    }

    /// The physical address `iova` is mapped to, and the mapping's prot.
    fn lookup(&self, iova: u64) -> Option<(u64, u64)> {
        let (&s, m) = self.live.range(..=iova).next_back()?;
        (iova < s + m.len).then(|| (m.pa + (iova - s), m.prot))
    }

    /// Forgets `[iova, iova + len)`, splitting mappings at its ends.
    fn remove(&mut self, iova: u64, len: u64) {
        let end = iova.saturating_add(len);
        let hit: Vec<(u64, Map)> = {
            let mut v: Vec<(u64, Map)> = Vec::new();
            if let Some((&s, m)) = self.live.range(..iova).next_back()
                && s + m.len > iova
            {
                v.push((s, *m));
            }
            v.extend(self.live.range(iova..end).map(|(&s, m)| (s, *m)));
            v
        };
        for (s, m) in hit {
            self.live.remove(&s);
            if s < iova {
                self.live.insert(s, Map { len: iova - s, ..m });
            }
            let mend = s + m.len;
            if mend > end {
                self.live.insert(
                    end,
                    Map {
                        len: mend - end,
                        pa: m.pa + (end - s),
                        prot: m.prot,
                    },
                );
            }
        }
    }

    fn probe(&mut self, iova: u64) {
        let page = iova & !(PAGE - 1);
        if self.probes.contains(&page) {
            return;
        }
        if self.probes.len() == PROBES {
            self.probes.remove(0);
        }
        self.probes.push(page);
    }

    /// Probes the first, middle and last page of `[iova, iova + len)`.
    fn probe_range(&mut self, iova: u64, len: u64) {
        if len == 0 {
            return;
        }
        let len = len.min(u64::MAX - iova).max(1);
        self.probe(iova);
        self.probe(iova + ((len / 2) & !(PAGE - 1)));
        self.probe(iova + (len - 1));
    }
}

/// The shadow of the whole world.
struct Shadow {
    setup: Setup,
    doms: Vec<Dom>,
    freed: Vec<u64>,
    /// (SMMU, StreamID) → domain, for every endpoint ever attached.
    attached: BTreeMap<(usize, u32), u64>,
    /// Page-pool allocations after boot, not counting the host stage-2's tables, plus the
    /// stream tables ATTACH added.
    pool_live: usize,
    loops: u32,
}

impl Shadow {
    fn dom(&self, id: u64) -> Option<usize> {
        self.doms.iter().position(|d| d.id == id)
    }

    fn is_attached(&self, id: u64) -> bool {
        self.attached.values().any(|&d| d == id)
    }
}

/// Decodes `x0`: `Ok` or a defined error; anything else is a finding.
fn status(x0: u64) -> Result<Result<(), Error>, Finding> {
    let e = match x0 as i64 {
        0 => return Ok(Ok(())),
        -1 => Error::NotSupported,
        -2 => Error::Invalid,
        -3 => Error::Denied,
        -4 => Error::NoEnt,
        -5 => Error::Busy,
        -6 => Error::NoMem,
        -7 => Error::NoSpc,
        -8 => Error::Exist,
        other => return Err(Finding(format!("undefined status {other}"))),
    };
    Ok(Err(e))
}

/// A call through `dispatch`.
fn call(w: &World, fid: u32, args: [u64; 6]) -> Result<Result<[u64; 3], Error>, Finding> {
    let r = w.hyp.dispatch(fid, args);
    Ok(status(r[0])?.map(|()| [r[1], r[2], r[3]]))
}

// ----------------------------------------------------------------------------------------
// Biased argument choices.

fn pick_dom(inp: &mut Input, s: &Shadow) -> u64 {
    let sel = inp.u8();
    match sel {
        0..=175 if !s.doms.is_empty() => s.doms[usize::from(sel) % s.doms.len()].id,
        0..=199 => [domain::HOST, domain::BLOCKED][usize::from(sel & 1)],
        200..=229 => match s.freed.last() {
            Some(&id) if sel & 1 == 0 => id,
            _ => domain::FIRST_MANAGED + u64::from(sel % 8),
        },
        _ => inp.u64(),
    }
}

/// The granule of domain `id` (4 KiB when unknown).
fn granule_of(s: &Shadow, id: u64) -> u64 {
    s.dom(id).map_or(PAGE, |i| s.doms[i].granule)
}

fn pick_iova(inp: &mut Input, s: &Shadow, id: u64) -> u64 {
    let g = granule_of(s, id);
    let sel = inp.u8();
    let k = u64::from(inp.u8());
    let d = s.dom(id).map(|i| &s.doms[i]);
    match sel {
        0..=109 => IOVA0 + (k % WIN) * g,
        110..=189 => match d {
            Some(d) if !d.live.is_empty() && sel < 160 => {
                let (&start, m) = d.live.iter().nth(k as usize % d.live.len()).unwrap();
                let off = match sel % 3 {
                    0 => 0,
                    1 => (m.len / 2) & !(g - 1),
                    _ => m.len - g,
                };
                start + off
            }
            Some(d) if !d.probes.is_empty() => d.probes[k as usize % d.probes.len()] & !(g - 1),
            _ => IOVA0 + (k % WIN) * g,
        },
        190..=224 => IOVA_BLK + (k % 4) * block(g),
        225..=239 => match k % 5 {
            0 => 0,
            1 => IOVA0 + 0x800,
            2 => (1 << 40) - g,
            3 => 1 << 48,
            _ => !(g - 1),
        },
        _ => inp.u64(),
    }
}

/// The level-2 block size of a granule.
fn block(g: u64) -> u64 {
    g * (g / 8)
}

fn pick_pa(inp: &mut Input, w: &World, s: &Shadow, g: u64) -> u64 {
    let sel = inp.u8();
    let k = u64::from(inp.u8());
    match sel {
        0..=119 => PA0 + (k % WIN) * g,
        120..=149 => {
            let donated = w.hyp.with_host_mem(|h| h.donated().to_vec());
            match donated.get(k as usize % donated.len().max(1)) {
                Some(r) => r.base.get() + (u64::from(sel) * PAGE) % r.size,
                None => PA0 + (k % WIN) * g,
            }
        }
        150..=164 => RAM_BASE + (k % 64) * PAGE,
        165..=199 => HOST_BASE + (k % (HOST_SIZE / block(PAGE))) * block(PAGE),
        200..=224 => {
            let maps: Vec<u64> = s
                .doms
                .iter()
                .flat_map(|d| d.live.values().map(|m| m.pa))
                .collect();
            maps.get(k as usize % maps.len().max(1))
                .map_or(PA0, |&pa| pa & !(g - 1))
        }
        225..=239 => match k % 4 {
            0 => HOST_BASE + HOST_SIZE - g,
            1 => HOST_BASE + HOST_SIZE,
            2 => HOST_BASE - g,
            _ => 0,
        },
        _ => inp.u64(),
    }
}

fn pick_size(inp: &mut Input, g: u64) -> u64 {
    let sel = inp.u8();
    let k = u64::from(inp.u8());
    match sel {
        0..=159 => (1 + k % 8) * g,
        160..=199 => block(g) * (1 + k % 2) + if sel & 1 == 0 { 0 } else { g * (k % 3) },
        200..=209 => 0,
        210..=224 => 1 + k * 0x100,
        225..=239 => [1 << 40, !(g - 1), u64::MAX, 64 << 20][(k % 4) as usize],
        _ => inp.u64(),
    }
}

fn pick_prot(inp: &mut Input) -> u64 {
    match inp.u8() {
        0..=199 => prot::ALL,
        200..=219 => prot::READ,
        220..=239 => prot::WRITE,
        240..=247 => 0,
        _ => inp.u64(),
    }
}

fn pick_flags(inp: &mut Input) -> u64 {
    let b = inp.u8();
    let mut f = 0;
    if b & 1 != 0 {
        f |= domain_flags::BATCHED;
    }
    if b & 2 != 0 {
        f |= domain_flags::NON_COHERENT;
    }
    f |= match (b >> 2) & 7 {
        0..=3 => 0,
        4 => domain_flags::granule(12),
        5 => domain_flags::granule(14),
        6 => domain_flags::granule(16),
        _ => domain_flags::granule(u32::from(b >> 5) + 10),
    };
    if b >= 0xf8 {
        f = inp.u64();
    }
    f
}

fn pick_endpoint(inp: &mut Input, s: &Shadow) -> u64 {
    let sel = inp.u8();
    let smmu = match sel >> 5 {
        0..=5 => u32::from(sel) % s.setup.smmus as u32,
        6 => s.setup.smmus as u32,
        _ => u32::from(inp.u8()),
    };
    let sid = match sel & 0x1f {
        0..=26 => SIDS[usize::from(sel & 0x1f) % SIDS.len()],
        27 => STRAY_SID,
        28 => 0,
        29 => u32::MAX,
        _ => u32::from(inp.u16()),
    };
    endpoint(smmu, sid)
}

// ----------------------------------------------------------------------------------------
// The operations.

/// Runs one input. `Err` describes the first broken invariant.
pub fn run(data: &[u8]) -> Result<(), Finding> {
    let mut inp = Input { data, pos: 0 };
    let setup = Setup::decode(&mut inp);
    if trace() {
        std::eprintln!("{setup:?}");
    }
    // Every field is set, and any added later takes its default.
    #[allow(clippy::needless_update)]
    let w = World::new(Opts {
        btm: setup.btm,
        ril: setup.ril,
        coherent: setup.coherent,
        smmus: setup.smmus,
        vmid_bits: setup.vmid_bits,
        cfg: setup.cfg,
        vmids: Some(vmid_allocator()),
        model: ModelConfig {
            oas: setup.oas,
            ..ModelConfig::default()
        },
        ..Opts::default()
    });
    let mut s = Shadow {
        setup,
        doms: Vec::new(),
        freed: Vec::new(),
        attached: BTreeMap::new(),
        pool_live: pool_allocations(&w),
        loops: 0,
    };
    let mut n = 0;
    while !inp.done() && n < MAX_OPS {
        n += 1;
        let what = step(&mut inp, &w, &mut s).map_err(|e| Finding(format!("op {n}: {}", e.0)))?;
        if trace() {
            std::eprintln!("op {n}: {what} [pool {}]", pool_allocations(&w));
        }
        check(&w, &mut s).map_err(|e| Finding(format!("after op {n} ({what}): {}", e.0)))?;
    }
    finish(&w, &mut s).map_err(|e| Finding(format!("at the end: {}", e.0)))
}

/// Whether `WARDEN_FUZZ_TRACE` asks for every call to be printed.
fn trace() -> bool {
    std::thread_local! {
        static TRACE: bool = std::env::var_os("WARDEN_FUZZ_TRACE").is_some();
    }
    TRACE.with(|t| *t)
}

/// One VMID allocator per thread, reused by every world (`World::new` resets it), so that
/// millions of runs do not leak one each.
fn vmid_allocator() -> &'static Mutex<VmidAllocator> {
    std::thread_local! {
        static VMIDS: &'static Mutex<VmidAllocator> =
            Box::leak(Box::new(Mutex::new(VmidAllocator::unconfigured())));
    }
    VMIDS.with(|v| *v)
}

/// Decodes and makes one call (or model action); returns what it was, for messages.
fn step(inp: &mut Input, w: &World, s: &mut Shadow) -> Result<String, Finding> {
    let op = inp.u8();
    Ok(match op % 20 {
        0 | 1 => {
            let flags = pick_flags(inp);
            let r = call(w, func::DOMAIN_ALLOC, [flags, 0, 0, 0, 0, 0])?;
            alloc_done(w, s, flags, r)?;
            format!("DOMAIN_ALLOC {flags:#x} -> {r:x?}")
        }
        2 => {
            let id = pick_dom(inp, s);
            let r = call(w, func::DOMAIN_FREE, [id, 0, 0, 0, 0, 0])?;
            free_done(s, id, r)?;
            format!("DOMAIN_FREE {id} -> {r:x?}")
        }
        3 | 4 => {
            let id = pick_dom(inp, s);
            let ep = pick_endpoint(inp, s);
            let r = attach(w, s, [id, ep, 0, 0, 0, 0])?;
            if r.is_ok() {
                let known = s.dom(id).is_some() || id == domain::HOST || id == domain::BLOCKED;
                if !known {
                    fail!("ATTACH to unknown domain {id} succeeded");
                }
                s.attached.insert(((ep >> 32) as usize, ep as u32), id);
            }
            format!("ATTACH {id} {ep:#x} -> {r:x?}")
        }
        5..=8 => {
            let id = pick_dom(inp, s);
            let g = granule_of(s, id);
            let iova = pick_iova(inp, s, id);
            let pa = pick_pa(inp, w, s, g);
            let size = pick_size(inp, g);
            let prot = pick_prot(inp);
            let r = call(w, func::MAP, [id, iova, pa, size, prot, 0])?;
            map_done(s, id, iova, pa, size, prot, r)?;
            format!("MAP {id} {iova:#x} {pa:#x} {size:#x} {prot:#x} -> {r:x?}")
        }
        9..=11 => {
            let id = pick_dom(inp, s);
            let g = granule_of(s, id);
            let iova = pick_iova(inp, s, id);
            let size = pick_size(inp, g);
            let r = call(w, func::UNMAP, [id, iova, size, 0, 0, 0])?;
            unmap_done(s, id, iova, size, r)?;
            format!("UNMAP {id} {iova:#x} {size:#x} -> {r:x?}")
        }
        12 => {
            let id = pick_dom(inp, s);
            let r = call(w, func::FLUSH, [id, 0, 0, 0, 0, 0])?;
            if r.is_ok() && !w.hyp.pending_pins(DomainId(id)).is_empty() {
                fail!("FLUSH {id} left queued pins");
            }
            format!("FLUSH {id} -> {r:x?}")
        }
        13 => {
            let id = pick_dom(inp, s);
            let iova = pick_iova(inp, s, id);
            let r = call(w, func::IOVA_TO_PHYS, [id, iova, 0, 0, 0, 0])?;
            if let Some(i) = s.dom(id) {
                let want = s.doms[i].lookup(iova).map(|(pa, _)| pa);
                match (r, want) {
                    (Ok([pa, ..]), Some(want)) if pa == want => {}
                    (Err(Error::NoEnt), None) | (Err(Error::Invalid), None) => {}
                    (r, want) => fail!("IOVA_TO_PHYS {id} {iova:#x}: {r:x?}, mapped {want:x?}"),
                }
            }
            format!("IOVA_TO_PHYS {id} {iova:#x} -> {r:x?}")
        }
        14 => {
            let g = PAGE << (inp.u8() % 3 * 2);
            let pa = pick_pa(inp, w, s, g);
            let pages = match inp.u8() {
                0..=199 => 1 + u64::from(inp.u8() % 8),
                200..=229 => 512,
                230..=239 => 0,
                _ => inp.u64(),
            };
            let r = call(w, func::MEM_DONATE, [pa, pages, 0, 0, 0, 0])?;
            if r.is_ok() {
                let range = PhysRange::new(pa, pages * PAGE);
                for d in &s.doms {
                    for (&iova, m) in &d.live {
                        if range.overlaps(&PhysRange::new(m.pa, m.len)) {
                            fail!("donated {range:?}, mapped in domain {} at {iova:#x}", d.id);
                        }
                    }
                }
            }
            format!("MEM_DONATE {pa:#x} {pages} -> {r:x?}")
        }
        15 => {
            let want = match inp.u8() {
                0..=239 => 1 + u64::from(inp.u8() % 16),
                240..=247 => 0,
                _ => inp.u64(),
            };
            let before = w.hyp.with_host_mem(|h| h.donated().to_vec());
            let r = call(w, func::MEM_RECLAIM, [want, 0, 0, 0, 0, 0])?;
            if let Ok([pa, n, _]) = r {
                let got = PhysRange::new(pa, n * PAGE);
                if n == 0 || n > want || !before.iter().any(|d| d.contains_range(&got)) {
                    fail!("MEM_RECLAIM {want} returned {pa:#x} x{n}, donated {before:x?}");
                }
                if !w.hyp.with_host_mem(|h| h.host_owns(&w.pool, got)) {
                    fail!("MEM_RECLAIM {want}: {got:?} not back to the host");
                }
            }
            format!("MEM_RECLAIM {want} -> {r:x?}")
        }
        16 => {
            let ms = u64::from(inp.u8()) * 4;
            w.tick_ms(ms);
            format!("tick {ms} ms")
        }
        17 => {
            // A device accesses an IOVA (fills the SMMU's TLB; checked by the sweep).
            let smmu = usize::from(inp.u8()) % s.setup.smmus;
            let sid = SIDS[usize::from(inp.u8()) % SIDS.len()];
            let id = s
                .attached
                .get(&(smmu, sid))
                .copied()
                .unwrap_or(domain::HOST);
            let iova = pick_iova(inp, s, id);
            let write = inp.u8() & 1 != 0;
            let r = w.dma(smmu, sid, iova, write);
            if let Some(i) = s.dom(id) {
                s.doms[i].probe(iova);
            }
            format!("DMA smmu{smmu} sid {sid:#x} {iova:#x} -> {r:x?}")
        }
        18 => {
            let sel = inp.u8();
            match sel % 4 {
                0 => {
                    let n = u64::from(inp.u8());
                    let r = call(w, func::STATS, [n % 8, 0, 0, 0, 0, 0])?;
                    format!("STATS {n} -> {r:x?}")
                }
                1 => {
                    let r = call(w, func::EVENT_POLL, [0; 6])?;
                    format!("EVENT_POLL -> {r:x?}")
                }
                2 => {
                    let r = call(w, func::FEATURES, [0; 6])?;
                    format!("FEATURES -> {r:x?}")
                }
                _ => {
                    // Any function ID near Warden's range, any arguments: success or a
                    // defined status, and the invariants after it.
                    let fid = func::FEATURES.wrapping_add(u32::from(inp.u8() % 0x14));
                    let fid = if sel & 0x80 != 0 {
                        inp.u64() as u32
                    } else {
                        fid
                    };
                    let args = [
                        inp.u64(),
                        inp.u64(),
                        inp.u64(),
                        inp.u64(),
                        inp.u64(),
                        inp.u64(),
                    ];
                    let r = if fid == func::ATTACH {
                        attach(w, s, args)?
                    } else {
                        call(w, fid, args)?
                    };
                    // A raw call may have changed what the shadow knows: resynchronise
                    // from the calls' own effects where they were successful.
                    raw_done(w, s, fid, args, r)?;
                    format!("raw {fid:#x} {args:x?} -> {r:x?}")
                }
            }
        }
        _ => {
            let sel = inp.u8();
            if sel & 1 == 0 {
                // DOMAIN_ALLOC/DOMAIN_FREE pairs: VMIDs go round (I4). 4 KiB granule: the
                // smallest root table, so the fastest DOMAIN_FREE.
                let flags =
                    pick_flags(inp) & !(domain_flags::GRANULE_MASK << domain_flags::GRANULE_SHIFT);
                let n = u32::from(inp.u8()) + 1;
                let n = n.min(MAX_LOOPS - s.loops);
                s.loops += n;
                for _ in 0..n {
                    let r = call(w, func::DOMAIN_ALLOC, [flags, 0, 0, 0, 0, 0])?;
                    let Ok([id, ..]) = r else {
                        alloc_done(w, s, flags, r)?;
                        break;
                    };
                    alloc_done(w, s, flags, r)?;
                    let r = call(w, func::DOMAIN_FREE, [id, 0, 0, 0, 0, 0])?;
                    free_done(s, id, r)?;
                }
                format!("{n} x DOMAIN_ALLOC {flags:#x} + DOMAIN_FREE")
            } else {
                // The page pool runs dry (the host donated too little), or recovers.
                let b = inp.u8();
                let budget = (b < 0xc0).then_some(usize::from(b % 24));
                w.pool.set_budget(budget);
                format!("pool budget {budget:?}")
            }
        }
    })
}

/// ATTACH, counting the stream-table memory it may allocate (kept until reset). A call
/// before it flushes the queues past their deadline (whose tables go back to the pool),
/// so that ATTACH's own deadline check does nothing.
fn attach(w: &World, s: &mut Shadow, args: [u64; 6]) -> Result<Result<[u64; 3], Error>, Finding> {
    let _ = call(w, func::FEATURES, [0; 6])?;
    let before = w.pool.live().len();
    let r = call(w, func::ATTACH, args)?;
    s.pool_live += w.pool.live().len().saturating_sub(before);
    Ok(r)
}

fn alloc_done(w: &World, s: &mut Shadow, flags: u64, r: Result<[u64; 3], Error>) -> Check {
    let Ok([id, ..]) = r else { return Ok(()) };
    if s.dom(id).is_some() || id < domain::FIRST_MANAGED {
        fail!("DOMAIN_ALLOC returned {id}, already live");
    }
    if s.doms.len() >= usize::from(s.setup.cfg.max_domains) {
        fail!("DOMAIN_ALLOC beyond max_domains");
    }
    let Some(vmid) = w.hyp.domain_vmid(DomainId(id)) else {
        fail!("domain {id} has no VMID")
    };
    let vmid = vmid.raw();
    // I4: a VMID handed out again has nothing left in any TLB.
    for (i, m) in w.models.iter().enumerate() {
        if vmid == HOST_VMID || m.tlb_entries(vmid) != 0 {
            fail!("domain {id} got VMID {vmid} with TLB entries on smmu{i}");
        }
    }
    let log2 = (flags >> domain_flags::GRANULE_SHIFT) & domain_flags::GRANULE_MASK;
    s.doms.push(Dom {
        id,
        granule: if log2 == 0 { PAGE } else { 1 << log2 },
        batched: flags & domain_flags::BATCHED != 0,
        ..Dom::default()
    });
    s.freed.retain(|&f| f != id);
    Ok(())
}

fn free_done(s: &mut Shadow, id: u64, r: Result<[u64; 3], Error>) -> Check {
    let known = s.dom(id);
    match (r, known) {
        (Ok(_), Some(i)) => {
            if s.is_attached(id) {
                fail!("DOMAIN_FREE {id} succeeded while attached");
            }
            s.doms.remove(i);
            s.freed.push(id);
        }
        (Ok(_), None) => fail!("DOMAIN_FREE of unknown domain {id} succeeded"),
        (Err(Error::Busy), Some(_)) if s.is_attached(id) => {}
        (Err(e), Some(_)) => fail!("DOMAIN_FREE {id}: {e:?}"),
        (Err(_), None) => {}
    }
    Ok(())
}

fn map_done(
    s: &mut Shadow,
    id: u64,
    iova: u64,
    pa: u64,
    size: u64,
    prot: u64,
    r: Result<[u64; 3], Error>,
) -> Check {
    let Some(i) = s.dom(id) else {
        if r.is_ok() {
            fail!("MAP into unknown domain {id} succeeded");
        }
        return Ok(());
    };
    let d = &mut s.doms[i];
    let over = d.overlaps(iova, size);
    match r {
        Ok([n, ..]) => {
            if over {
                fail!("MAP over an existing mapping succeeded");
            }
            if n == 0 || n > size || n % d.granule != 0 || n > s.setup.cfg.max_map_bytes {
                fail!("MAP mapped {n:#x} of {size:#x}");
            }
            d.live.insert(iova, Map { len: n, pa, prot });
            d.probe_range(iova, n);
        }
        Err(Error::Exist) if !over => fail!("MAP: EXIST where nothing is mapped"),
        Err(_) => d.probe_range(iova, size.min(4 * d.granule).max(1)),
    }
    Ok(())
}

fn unmap_done(s: &mut Shadow, id: u64, iova: u64, size: u64, r: Result<[u64; 3], Error>) -> Check {
    let Some(i) = s.dom(id) else {
        if r.is_ok() {
            fail!("UNMAP in unknown domain {id} succeeded");
        }
        return Ok(());
    };
    let d = &mut s.doms[i];
    let over = d.overlaps(iova, size);
    match r {
        Ok([n, ..]) => {
            if !over {
                fail!("UNMAP succeeded where nothing is mapped");
            }
            if n == 0 || n > size || n % d.granule != 0 {
                fail!("UNMAP processed {n:#x} of {size:#x}");
            }
            d.remove(iova, n);
            d.probe_range(iova, n);
        }
        Err(Error::NoEnt)
            if over && size.is_multiple_of(d.granule) && iova.is_multiple_of(d.granule) =>
        {
            fail!("UNMAP: NOENT over a mapping")
        }
        Err(_) => {}
    }
    Ok(())
}

/// Updates the shadow after a raw call that succeeded.
fn raw_done(w: &World, s: &mut Shadow, fid: u32, a: [u64; 6], r: Result<[u64; 3], Error>) -> Check {
    match fid {
        func::DOMAIN_ALLOC => alloc_done(w, s, a[0], r),
        func::DOMAIN_FREE => free_done(s, a[0], r),
        func::ATTACH => {
            if r.is_ok() {
                s.attached
                    .insert(((a[1] >> 32) as usize, a[1] as u32), a[0]);
            }
            Ok(())
        }
        func::MAP => map_done(s, a[0], a[1], a[2], a[3], a[4], r),
        func::UNMAP => unmap_done(s, a[0], a[1], a[2], r),
        _ => Ok(()),
    }
}

// ----------------------------------------------------------------------------------------
// The checks.

/// Whether the host owns `pa`'s page.
fn host_owns(w: &World, pa: u64) -> bool {
    w.hyp
        .with_host_mem(|h| h.host_owns(&w.pool, PhysRange::new(pa & !(PAGE - 1), PAGE)))
}

/// A device's access: read, or write when reading is not allowed.
fn access(w: &World, smmu: usize, sid: u32, iova: u64) -> Result<u64, DmaFault> {
    match w.dma(smmu, sid, iova, false) {
        Err(DmaFault::Permission) => w.dma(smmu, sid, iova, true),
        r => r,
    }
    .map(|p| p.get())
}

/// Expected pin runs: every live mapping plus every queued unmap, as (page, count) runs.
fn expected_pins(w: &World, s: &Shadow) -> Vec<(u64, u64, u64)> {
    let mut edges: BTreeMap<u64, i64> = BTreeMap::new();
    let mut add = |pa: u64, len: u64| {
        let (a, b) = (pa / PAGE, (pa + len).div_ceil(PAGE));
        *edges.entry(a).or_default() += 1;
        *edges.entry(b).or_default() -= 1;
    };
    for d in &s.doms {
        for m in d.live.values() {
            add(m.pa, m.len);
        }
        for r in w.hyp.pending_pins(DomainId(d.id)) {
            add(r.base.get(), r.size);
        }
    }
    let mut runs: Vec<(u64, u64, u64)> = Vec::new();
    let mut count: i64 = 0;
    let mut at = 0;
    for (&p, &delta) in &edges {
        if count > 0 && p > at {
            match runs.last_mut() {
                Some(last) if last.1 == at && last.2 == count as u64 => last.1 = p,
                _ => runs.push((at, p, count as u64)),
            }
        }
        count += delta;
        at = p;
    }
    runs
}

fn check(w: &World, s: &mut Shadow) -> Check {
    // I2: pins are exactly the live mappings plus the queued unmaps.
    let want = expected_pins(w, s);
    let got: Vec<(u64, u64, u64)> = w.hyp.with_host_mem(|h| {
        h.pins()
            .iter()
            .map(|(r, n)| (r.base.get() / PAGE, r.end() / PAGE, n))
            .collect()
    });
    if got != want {
        fail!("pins {got:x?}, expected {want:x?}");
    }
    // I2: nothing pinned outside host-owned RAM; donated pages are never pinned.
    let donated = w.hyp.with_host_mem(|h| h.donated().to_vec());
    for &(a, b, _) in &got {
        let r = PhysRange::new(a * PAGE, (b - a) * PAGE);
        if r.base.get() < HOST_BASE || r.end() > HOST_BASE + HOST_SIZE {
            fail!("pinned {r:?} outside the host's RAM");
        }
        if let Some(d) = donated.iter().find(|d| d.overlaps(&r)) {
            fail!("pinned {r:?} overlaps donated {d:?}");
        }
        if !host_owns(w, r.base.get()) || !host_owns(w, r.end() - PAGE) {
            fail!("pinned {r:?} not owned by the host");
        }
    }
    // Queues hold only what this domain unmapped.
    for d in &s.doms {
        if !d.batched && !w.hyp.pending_pins(DomainId(d.id)).is_empty() {
            fail!("strict domain {} queues pins", d.id);
        }
    }
    // I4.
    let mut vmids = BTreeSet::new();
    for d in &s.doms {
        let Some(v) = w.hyp.domain_vmid(DomainId(d.id)) else {
            fail!("live domain {} has no VMID", d.id)
        };
        if v.raw() == HOST_VMID || !vmids.insert(v.raw()) {
            fail!("VMID {} of domain {} shared", v.raw(), d.id);
        }
    }
    for (i, m) in w.models.iter().enumerate() {
        for v in m.tlb_vmids() {
            if v != HOST_VMID && !vmids.contains(&v) {
                fail!("smmu{i} holds TLB entries of VMID {v}, owned by no domain");
            }
        }
    }
    if w.hyp.vmids().lock().allocated_count() as usize != s.doms.len() {
        fail!("VMID allocator out of step with the live domains");
    }
    // I1, I3 through every StreamID.
    let carve = [RAM_BASE, RAM_BASE + POOL_SIZE / 2, HOST_BASE - PAGE];
    let tables: Vec<u64> = w.pool.live().iter().take(4).map(|&(a, _)| a).collect();
    for smmu in 0..s.setup.smmus {
        let mut sids: BTreeSet<u32> = SIDS.iter().copied().collect();
        sids.insert(STRAY_SID);
        sids.extend(s.attached.keys().filter(|k| k.0 == smmu).map(|k| k.1));
        for sid in sids {
            let target = s
                .attached
                .get(&(smmu, sid))
                .copied()
                .unwrap_or(domain::HOST);
            match s.dom(target) {
                Some(i) => sweep_domain(w, &s.doms[i], smmu, sid)?,
                None if target == domain::BLOCKED => {
                    if w.dma(smmu, sid, IOVA0, false) != Err(DmaFault::Abort) {
                        fail!("blocked endpoint smmu{smmu} sid {sid:#x} does not abort");
                    }
                }
                None => {
                    let probes = carve.iter().chain(&tables).copied().chain(
                        donated
                            .iter()
                            .take(8)
                            .flat_map(|d| [d.base.get(), d.end() - PAGE]),
                    );
                    for pa in probes {
                        if let Ok(got) = access(w, smmu, sid, pa) {
                            fail!("smmu{smmu} sid {sid:#x} reaches Warden's page {got:#x}");
                        }
                    }
                }
            }
        }
    }
    w.hyp.drain_events();
    Ok(())
}

fn sweep_domain(w: &World, d: &Dom, smmu: usize, sid: u32) -> Check {
    let mut probes = d.probes.clone();
    for (&iova, m) in d.live.iter().take(8) {
        probes.extend([iova, iova + m.len - PAGE]);
    }
    let pending = if d.batched {
        w.hyp.pending_pins(DomainId(d.id))
    } else {
        Vec::new()
    };
    for iova in probes {
        let got = access(w, smmu, sid, iova);
        let want = d.lookup(iova);
        if let Ok(pa) = got {
            if !host_owns(w, pa) {
                fail!(
                    "smmu{smmu} sid {sid:#x} domain {} iova {iova:#x} reaches Warden's {pa:#x}",
                    d.id
                );
            }
            if w.pins(pa) == 0 {
                fail!(
                    "smmu{smmu} sid {sid:#x} domain {} iova {iova:#x} reaches unpinned {pa:#x}",
                    d.id
                );
            }
        }
        match (want, got) {
            (Some((pa, _)), Ok(p)) if p == pa => {}
            (Some((_, prot)), Err(DmaFault::Permission)) if prot != prot::ALL => {}
            (None, Err(_)) => {}
            // A batched domain's unmapped page stays reachable until its queue is flushed.
            (None, Ok(p)) if pending.iter().any(|r| r.contains(p)) => {}
            (want, got) => fail!(
                "smmu{smmu} sid {sid:#x} domain {} iova {iova:#x}: {got:x?}, mapped {want:x?}",
                d.id
            ),
        }
    }
    Ok(())
}

/// Live page-pool allocations, not counting the host stage-2's tables.
fn pool_allocations(w: &World) -> usize {
    let host_tables = w.hyp.with_host_mem(|h| {
        let mut n = 1;
        let size = h.s2.geometry().ipa_size();
        let _ = h.s2.walk(&w.pool, Ipa(0), size, |_, desc, level| {
            if desc.is_table(level) {
                n += 1;
            }
            core::ops::ControlFlow::<()>::Continue(())
        });
        n
    });
    w.pool.live().len() - host_tables
}

/// Everything back: every endpoint home, every domain flushed and freed; nothing left.
fn finish(w: &World, s: &mut Shadow) -> Check {
    w.pool.set_budget(None);
    let eps: Vec<(usize, u32)> = s.attached.keys().copied().collect();
    for (smmu, sid) in eps {
        let r = call(
            w,
            func::ATTACH,
            [domain::HOST, endpoint(smmu as u32, sid), 0, 0, 0, 0],
        )?;
        let expected = s.attached[&(smmu, sid)] == domain::HOST
            || smmu >= s.setup.smmus
            || !SIDS.contains(&sid);
        if let Err(e) = r
            && !expected
        {
            fail!("ATTACH smmu{smmu} sid {sid:#x} back to the host: {e:?}");
        }
        s.attached.remove(&(smmu, sid));
    }
    check(w, s)?;
    // Unmap everything (in as many calls as it takes) and flush: then no pin is left.
    let ias = match call(w, func::FEATURES, [0; 6])? {
        Ok([_, _, x3]) => features::limit(x3, features::LIMIT_IAS_SHIFT, features::LIMIT_IAS_MASK),
        Err(e) => fail!("FEATURES: {e:?}"),
    };
    let ids: Vec<u64> = s.doms.iter().map(|d| d.id).collect();
    for &id in &ids {
        let (size, mut iova) = (1u64 << ias, 0);
        for _ in 0..1024 {
            let r = call(w, func::UNMAP, [id, iova, size - iova, 0, 0, 0])?;
            unmap_done(s, id, iova, size - iova, r)?;
            check(w, s)?;
            match r {
                Ok([n, ..]) if iova + n < size => iova += n,
                Ok(_) | Err(Error::NoEnt) => break,
                Err(e) => fail!("UNMAP {id} {iova:#x} {:#x}: {e:?}", size - iova),
            }
        }
        if let Some(i) = s.dom(id)
            && !s.doms[i].live.is_empty()
        {
            fail!(
                "domain {id} still maps {:x?} after unmapping everything",
                s.doms[i].live
            );
        }
        if let Err(e) = call(w, func::FLUSH, [id, 0, 0, 0, 0, 0])? {
            fail!("FLUSH {id}: {e:?}");
        }
        check(w, s)?;
    }
    if w.pinned_pages() != 0 {
        fail!(
            "{} pages pinned after unmapping and flushing everything",
            w.pinned_pages()
        );
    }
    for id in ids {
        let r = call(w, func::DOMAIN_FREE, [id, 0, 0, 0, 0, 0])?;
        free_done(s, id, r)?;
        check(w, s)?;
    }
    if w.pinned_pages() != 0 {
        fail!("{} pages still pinned", w.pinned_pages());
    }
    if w.hyp.vmids().lock().allocated_count() != 0 {
        fail!("VMIDs still allocated");
    }
    if w.hyp.leaked_pages() != 0 {
        fail!("{} pages leaked", w.hyp.leaked_pages());
    }
    // Domain tables all went back (the host stage-2 may keep tables that donations split
    // off, and its reserve of pages may have been used for them).
    let now = pool_allocations(w);
    if now > s.pool_live || now + crate::dma::HOST_RESERVE_PAGES < s.pool_live {
        fail!(
            "page pool: {now} allocations besides the host stage-2, {} after boot",
            s.pool_live
        );
    }
    Ok(())
}

// ----------------------------------------------------------------------------------------
// Inputs for the smoke test.

/// A pseudo-random input of `len` bytes from `seed` (xorshift64*), for the smoke test.
pub fn generate(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::PathBuf;

    /// The checked-in corpus of fuzz target `target`, sorted by path.
    pub(crate) fn corpus_of(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(target);
        let mut v: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| {
                let p = e.unwrap().path();
                let data = std::fs::read(&p).unwrap();
                (p, data)
            })
            .collect();
        v.sort();
        v
    }

    fn corpus() -> Vec<(PathBuf, Vec<u8>)> {
        corpus_of(TARGET)
    }

    /// Runs `run` on each file named by `WARDEN_FUZZ_REPLAY` (colon-separated), if set.
    pub(crate) fn replay_env(run: impl Fn(&[u8]) -> Result<(), Finding>) {
        let Some(list) = std::env::var_os("WARDEN_FUZZ_REPLAY") else {
            return;
        };
        for p in std::env::split_paths(&list) {
            let data = std::fs::read(&p).unwrap();
            if let Err(e) = run(&data) {
                panic!("{}: {}", p.display(), e.0);
            }
        }
    }

    /// How many generated inputs a smoke test runs (`WARDEN_FUZZ_SMOKE`, default 3000).
    pub(crate) fn smoke_count() -> u64 {
        std::env::var("WARDEN_FUZZ_SMOKE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3000)
    }

    fn hex(data: &[u8]) -> String {
        data.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Replays the files named by `WARDEN_FUZZ_REPLAY` (colon-separated), for debugging.
    #[test]
    fn replay() {
        replay_env(run);
    }

    /// The checked-in corpus (seeds, and the inputs of past findings) replays clean.
    #[test]
    fn corpus_replays_clean() {
        let c = corpus();
        assert!(!c.is_empty(), "empty corpus");
        for (p, data) in c {
            if let Err(e) = run(&data) {
                panic!("{}: {}\ninput {}", p.display(), e.0, hex(&data));
            }
        }
    }

    /// A few thousand generated inputs through the same harness (`WARDEN_FUZZ_SMOKE`
    /// sets how many): the `fuzz-smoke` step of `cargo xtask test`.
    #[test]
    #[ignore = "the fuzz-smoke step runs it"]
    fn generated_inputs_run_clean() {
        for seed in 0..smoke_count() {
            let data = generate(seed, 16 + (seed as usize * 7) % 300);
            if let Err(e) = run(&data) {
                panic!("seed {seed}: {}\ninput {}", e.0, hex(&data));
            }
        }
    }

    /// The harness is not vacuous: a world that breaks an invariant is caught.
    #[test]
    fn harness_sees_a_stray_pin() {
        let data = generate(1, 64);
        let mut inp = Input {
            data: &data,
            pos: 0,
        };
        let setup = Setup::decode(&mut inp);
        let w = World::new(Opts {
            vmids: Some(vmid_allocator()),
            ..Opts::default()
        });
        let mut s = Shadow {
            setup,
            doms: Vec::new(),
            freed: Vec::new(),
            attached: BTreeMap::new(),
            pool_live: w.pool.live().len(),
            loops: 0,
        };
        check(&w, &mut s).unwrap();
        w.hyp.with_host_mem(|_| ());
        let d = w.alloc(0).unwrap();
        assert_eq!(w.map(d, IOVA0, PA0, PAGE), Ok(PAGE));
        // The shadow does not know of that mapping: the pin check fires.
        s.doms.push(Dom {
            id: d,
            granule: PAGE,
            ..Dom::default()
        });
        let e = check(&w, &mut s).unwrap_err();
        assert!(e.0.contains("pins"), "{}", e.0);
    }
}
