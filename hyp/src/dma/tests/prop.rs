//! Random sequences of every state-changing call (and clock ticks) against a reference
//! model, checking after every step:
//!
//! - I1: what any device reaches through the SMMU is a page the host owns and the
//!   reference says is mapped there (or, for a batched domain, a still-pinned page of a
//!   queued unmap); donated and carve-out pages are reachable neither through the host
//!   identity domain nor through the host stage-2;
//! - I2: pins of each page == its live mappings + the pins the domains' queues hold, the
//!   queues hold only pages the reference unmapped (batched) since their last FLUSH, and
//!   a donated page has no pin;
//! - I3: after a strict UNMAP or a FLUSH no stale translation hits;
//! - I4: live domains have distinct VMIDs, and no SMMU TLB entry carries the VMID of a
//!   freed domain;
//! - I6: every call's status matches the reference's prediction;
//!
//! and at the end, with every domain freed, that no pin is left.

use super::super::world::*;
use super::super::*;
use crate::PAGE;
use crate::smmu::model::DmaFault;
use host_abi::domain_flags;
use host_abi::{domain, stats};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

/// Pages in the IOVA window and in the PA window.
const WIN: u64 = 24;
const IOVA0: u64 = 0x10_0000;
const PA0: u64 = HOST_BASE + 0x20_0000;

#[derive(Clone, Debug)]
enum Op {
    Alloc { batched: bool, nc: bool },
    Free(usize),
    Attach(usize, usize),
    Map(usize, u64, u64, u64),
    Unmap(usize, u64, u64),
    Flush(usize),
    Donate(u64, u64),
    Reclaim(u64),
    Tick(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (any::<bool>(), any::<bool>()).prop_map(|(batched, nc)| Op::Alloc { batched, nc }),
        1 => (0usize..4).prop_map(Op::Free),
        3 => (0usize..6, 0usize..3).prop_map(|(d, s)| Op::Attach(d, s)),
        8 => (0usize..4, 0..WIN, 0..WIN, 1u64..5).prop_map(|(d, i, p, n)| Op::Map(d, i, p, n)),
        5 => (0usize..4, 0..WIN, 1u64..6).prop_map(|(d, i, n)| Op::Unmap(d, i, n)),
        2 => (0usize..4).prop_map(Op::Flush),
        2 => (0..WIN, 1u64..3).prop_map(|(p, n)| Op::Donate(p, n)),
        1 => (1u64..4).prop_map(Op::Reclaim),
        1 => (0u64..15).prop_map(Op::Tick),
    ]
}

#[derive(Debug, Default)]
struct RefDom {
    id: u64,
    batched: bool,
    /// IOVA page → PA.
    live: BTreeMap<u64, u64>,
    /// PAs unmapped (batched) since the last FLUSH: a multiset.
    pending: BTreeMap<u64, u64>,
}

#[derive(Debug, Default)]
struct Ref {
    doms: Vec<RefDom>,
    /// Per SID: HOST, BLOCKED or a domain ID.
    attached: [u64; 3],
    donated: BTreeSet<u64>,
}

impl Ref {
    fn live_count(&self, pa: u64) -> u64 {
        self.doms
            .iter()
            .map(|d| d.live.values().filter(|&&p| p == pa).count() as u64)
            .sum()
    }
}

fn run(btm: bool, cpu: bool, ops: &[Op]) -> Result<(), TestCaseError> {
    let cfg = Config {
        batch_threshold: 6,
        max_domains: 4,
        domain_cpu_tlbi: cpu,
        ..Config::default()
    };
    let w = World::new(Opts {
        btm,
        cfg,
        ..Opts::default()
    });
    let mut r = Ref::default();
    for (step, op) in ops.iter().enumerate() {
        apply(&w, &mut r, op)
            .map_err(|e| TestCaseError::fail(format!("step {step} {op:?}: {e}")))?;
        check(&w, &r).map_err(|e| TestCaseError::fail(format!("after step {step} {op:?}: {e}")))?;
    }
    // Everything back: pins balanced.
    for sid in SIDS {
        w.attach(domain::HOST, 0, sid).unwrap();
    }
    for d in &r.doms {
        w.free(d.id).unwrap();
    }
    prop_assert_eq!(w.pinned_pages(), 0);
    prop_assert_eq!(w.hyp.vmids().lock().allocated_count(), 0);
    prop_assert_eq!(w.stats(stats::PAGES)[1], 0);
    Ok(())
}

fn dom_of(r: &Ref, k: usize) -> Option<usize> {
    (!r.doms.is_empty()).then(|| k % r.doms.len())
}

fn apply(w: &World, r: &mut Ref, op: &Op) -> Result<(), String> {
    macro_rules! expect {
        ($got:expr, $want:expr) => {{
            let (got, want) = ($got, $want);
            if got != want {
                return Err(format!("got {got:?}, expected {want:?}"));
            }
        }};
    }
    match *op {
        Op::Alloc { batched, nc } => {
            let mut flags = 0;
            if batched {
                flags |= domain_flags::BATCHED;
            }
            if nc {
                flags |= domain_flags::NON_COHERENT;
            }
            let got = w.alloc(flags);
            if r.doms.len() == 4 {
                expect!(got, Err(Error::NoSpc));
            } else {
                let id = got.map_err(|e| format!("alloc: {e:?}"))?;
                r.doms.push(RefDom {
                    id,
                    batched,
                    ..RefDom::default()
                });
            }
        }
        Op::Free(k) => {
            let Some(i) = dom_of(r, k) else { return Ok(()) };
            let id = r.doms[i].id;
            if r.attached.contains(&id) {
                expect!(w.free(id), Err(Error::Busy));
            } else {
                expect!(w.free(id), Ok(()));
                r.doms.remove(i);
            }
        }
        Op::Attach(k, sid) => {
            let target = match k {
                0 => domain::HOST,
                1 => domain::BLOCKED,
                _ => match dom_of(r, k) {
                    Some(i) => r.doms[i].id,
                    None => domain::BLOCKED,
                },
            };
            expect!(w.attach(target, 0, SIDS[sid]), Ok(()));
            r.attached[sid] = target;
        }
        Op::Map(k, i, p, n) => {
            let Some(d) = dom_of(r, k) else { return Ok(()) };
            let n = n.min(WIN - i).min(WIN - p);
            let got = w.map(r.doms[d].id, IOVA0 + i * PAGE, PA0 + p * PAGE, n * PAGE);
            let exist = (i..i + n).any(|x| r.doms[d].live.contains_key(&x));
            let denied = (p..p + n).any(|x| r.donated.contains(&(PA0 + x * PAGE)));
            if exist {
                expect!(got, Err(Error::Exist));
            } else if denied {
                expect!(got, Err(Error::Denied));
            } else {
                expect!(got, Ok(n * PAGE));
                for x in 0..n {
                    r.doms[d].live.insert(i + x, PA0 + (p + x) * PAGE);
                }
            }
        }
        Op::Unmap(k, i, n) => {
            let Some(d) = dom_of(r, k) else { return Ok(()) };
            let n = n.min(WIN - i);
            let got = w.unmap(r.doms[d].id, IOVA0 + i * PAGE, n * PAGE);
            let gone: Vec<u64> = (i..i + n)
                .filter_map(|x| r.doms[d].live.remove(&x))
                .collect();
            if gone.is_empty() {
                expect!(got, Err(Error::NoEnt));
            } else {
                expect!(got, Ok(n * PAGE));
                if r.doms[d].batched {
                    for pa in gone {
                        *r.doms[d].pending.entry(pa).or_default() += 1;
                    }
                }
            }
        }
        Op::Flush(k) => {
            let Some(d) = dom_of(r, k) else { return Ok(()) };
            expect!(w.flush(r.doms[d].id), Ok(()));
            r.doms[d].pending.clear();
        }
        Op::Donate(p, n) => {
            let n = n.min(WIN - p);
            let pages: Vec<u64> = (p..p + n).map(|x| PA0 + x * PAGE).collect();
            let got = w.donate(PA0 + p * PAGE, n);
            if pages.iter().any(|pa| r.donated.contains(pa)) {
                expect!(got, Err(Error::Denied));
            } else if pages.iter().any(|&pa| r.live_count(pa) != 0) {
                expect!(got, Err(Error::Busy));
            } else {
                expect!(got, Ok(()));
                r.donated.extend(pages.iter().copied());
                // No queue holds them any more: Warden flushed the queues that did. A
                // queue that held them may have been flushed earlier already (a deadline
                // flush at the start of some call), so the reference cannot tell which
                // other pages left the queue with them; it only forgets the donated ones
                // (the check needs queues ⊆ reference, not equality).
                for d in &mut r.doms {
                    for pa in &pages {
                        d.pending.remove(pa);
                    }
                }
            }
        }
        Op::Reclaim(n) => {
            let got = w.reclaim(n);
            if r.donated.is_empty() {
                expect!(got, Err(Error::NoEnt));
            } else {
                let (pa, k) = got.map_err(|e| format!("reclaim: {e:?}"))?;
                if k == 0 || k > n {
                    return Err(format!("reclaimed {k} pages"));
                }
                for x in 0..k {
                    if !r.donated.remove(&(pa + x * PAGE)) {
                        return Err(format!("reclaimed {:#x}, never donated", pa + x * PAGE));
                    }
                }
            }
        }
        Op::Tick(ms) => w.tick_ms(ms),
    }
    Ok(())
}

fn check(w: &World, r: &Ref) -> Result<(), String> {
    // I2: pins == live mappings + what the queues hold; queues ⊆ reference.
    let mut queued: BTreeMap<u64, u64> = BTreeMap::new();
    for d in &r.doms {
        let mut mine: BTreeMap<u64, u64> = BTreeMap::new();
        for range in w.hyp.pending_pins(DomainId(d.id)) {
            for x in 0..range.size / PAGE {
                *mine.entry(range.base.get() + x * PAGE).or_default() += 1;
            }
        }
        for (pa, n) in &mine {
            if d.pending.get(pa).copied().unwrap_or(0) < *n {
                return Err(format!("domain {} queues {pa:#x} x{n} unexpectedly", d.id));
            }
            *queued.entry(*pa).or_default() += n;
        }
    }
    for x in 0..WIN {
        let pa = PA0 + x * PAGE;
        let want = r.live_count(pa) + queued.get(&pa).copied().unwrap_or(0);
        let got = w.pins(pa);
        if got != want {
            return Err(format!("pins of {pa:#x}: {got}, expected {want}"));
        }
        let owned = w
            .hyp
            .with_host_mem(|h| h.host_owns(&w.pool, PhysRange::new(pa, PAGE)));
        if owned == r.donated.contains(&pa) {
            return Err(format!("{pa:#x}: host owns = {owned}"));
        }
        if r.donated.contains(&pa) && got != 0 {
            return Err(format!("donated {pa:#x} is pinned"));
        }
    }
    // I1 / I3 through the devices.
    for (s, &target) in r.attached.iter().enumerate() {
        let sid = SIDS[s];
        match target {
            domain::HOST => {
                for x in 0..WIN {
                    let pa = PA0 + x * PAGE;
                    let got = w.dma(0, sid, pa, true);
                    let ok = !r.donated.contains(&pa);
                    if got.is_ok() != ok || got.is_ok_and(|p| p.get() != pa) {
                        return Err(format!("host DMA to {pa:#x}: {got:?}"));
                    }
                }
                if w.dma(0, sid, RAM_BASE, false).is_ok() {
                    return Err("host DMA reached the carve-out".into());
                }
            }
            domain::BLOCKED => {
                if w.dma(0, sid, IOVA0, false) != Err(DmaFault::Abort) {
                    return Err("blocked endpoint not aborting".into());
                }
            }
            id => {
                let d = r
                    .doms
                    .iter()
                    .find(|d| d.id == id)
                    .ok_or("attached to a freed domain")?;
                for x in 0..WIN {
                    let got = w.dma(0, sid, IOVA0 + x * PAGE, false);
                    match (d.live.get(&x), got) {
                        (Some(&pa), Ok(p)) if p.get() == pa => {}
                        (None, Err(_)) => {}
                        (None, Ok(p))
                            if d.batched
                                && d.pending.contains_key(&p.get())
                                && w.pins(p.get()) > 0 => {}
                        (want, got) => {
                            return Err(format!(
                                "sid {sid:#x} domain {id} iova page {x}: {got:?}, mapped {want:?}"
                            ));
                        }
                    }
                }
            }
        }
    }
    // I4.
    let mut vmids = BTreeSet::new();
    for d in &r.doms {
        let v = w
            .hyp
            .domain_vmid(DomainId(d.id))
            .ok_or("live domain without VMID")?
            .raw();
        if v == HOST_VMID || !vmids.insert(v) {
            return Err(format!("VMID {v} shared"));
        }
    }
    for v in w.models[0].tlb_vmids() {
        if v != HOST_VMID && !vmids.contains(&v) {
            return Err(format!("TLB entries of dead VMID {v}"));
        }
    }
    if w.hyp.vmids().lock().allocated_count() as usize != r.doms.len() {
        return Err("VMID allocator out of step".into());
    }
    w.hyp.drain_events();
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, max_shrink_iters: 2000, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_btm_off(ops in proptest::collection::vec(op(), 1..60)) {
        run(false, false, &ops)?;
    }

    #[test]
    fn invariants_hold_btm_on(ops in proptest::collection::vec(op(), 1..60), cpu in any::<bool>()) {
        run(true, cpu, &ops)?;
    }
}
