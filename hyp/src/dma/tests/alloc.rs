//! Nothing the host does can stop Warden (I6): no allocation on a host-reachable path
//! fails by panicking, and the host cannot make Warden's heap grow without bound. Under
//! the test allocator ([`crate::testalloc`]): counting, and failing on demand.

use super::*;
use crate::testalloc;

/// MEM_DONATE / MEM_RECLAIM pairs, with the SMMU commands (BTM off) and without (BTM
/// on), on the models. After the first iterations the lists have their working size:
/// from then on the heap's high-water mark does not move.
fn donate_reclaim_pairs(btm: bool, pairs: u64) {
    {
        let w = world(btm);
        let pair = |i: u64| {
            let pa = HP + (i % 4) * PAGE;
            assert_eq!(w.donate(pa, 1), Ok(()));
            assert_eq!(w.reclaim(1), Ok((pa, 1)));
            // The models' own logs are not Warden's heap.
            w.clear_counts();
        };
        for i in 0..1000 {
            pair(i);
        }
        testalloc::reset_peak();
        for i in 1000..2000 {
            pair(i);
        }
        let warm = testalloc::peak_bytes();
        for i in 2000..pairs {
            pair(i);
        }
        assert_eq!(
            testalloc::peak_bytes(),
            warm,
            "btm {btm}: the heap's high-water mark grew over {pairs} pairs"
        );
        assert_eq!(w.stats(stats::PAGES)[2], 0, "nothing left donated");
    }
}

#[test]
fn a_million_donate_reclaim_pairs_keep_the_heap_high_water_mark() {
    // With SMMU commands (the longer path) 10^6 pairs; with BTM 10^5.
    donate_reclaim_pairs(false, 1_000_000);
    donate_reclaim_pairs(true, 100_000);
}

/// One call of the sweep: name, the domain to observe, the call.
type Call<'a> = (
    &'static str,
    u64,
    Box<dyn Fn() -> Result<[u64; 3], Error> + 'a>,
);

/// What the host can observe of Warden's state.
fn snapshot(w: &World, d: u64, iovas: &[u64]) -> (Vec<u64>, [u64; 3], Vec<Option<u64>>) {
    let pins = (0..64).map(|i| w.pins(HP + i * PAGE)).collect();
    let pages = w.stats(stats::PAGES);
    let tr = iovas
        .iter()
        .map(|&a| {
            w.hyp
                .iova_to_phys(DomainId(d), Iova(a))
                .ok()
                .map(PhysAddr::get)
        })
        .collect();
    (pins, pages, tr)
}

#[test]
fn strict_unmaps_that_split_pin_runs_under_a_failing_allocator() {
    // One MAP pins 64 pages as one run; unmapping every other page splits it each time.
    // With the allocator refusing (after the one allocation that lets UNMAP start), the
    // pin bookkeeping runs out: the page stays pinned (counted), never a panic.
    let w = world(false);
    let d = mapped(&w, 0, 64);
    let mut left_pinned = 0;
    for k in (1..64).step_by(2) {
        let iova = 0x10_0000 + k * PAGE;
        let (r, _) = testalloc::with_allocations(1, || w.unmap(d, iova, PAGE));
        match r {
            Ok(n) => {
                assert_eq!(n, PAGE);
                assert_eq!(w.dma(0, SID, iova, true), Err(DmaFault::Translation));
                left_pinned += w.pins(HP + k * PAGE);
            }
            Err(e) => {
                assert_eq!(e, Error::NoMem, "page {k}");
                assert_eq!(w.dma(0, SID, iova, true), Ok(PhysAddr(HP + k * PAGE)));
                assert_eq!(w.pins(HP + k * PAGE), 1, "still mapped, still pinned");
                left_pinned += 1;
            }
        }
    }
    assert!(left_pinned > 0, "the allocator's refusals were reached");
    assert_eq!(w.pinned_pages(), 32 + left_pinned);
    // Refused unpins are counted, never released: the pages cannot be donated.
    assert!(w.hyp.leaked_pages() <= left_pinned);
    for k in (1..64).step_by(2) {
        if w.pins(HP + k * PAGE) != 0 {
            assert_eq!(w.donate(HP + k * PAGE, 1), Err(Error::Busy));
        }
    }
}

#[test]
fn every_call_under_a_failing_allocator_fails_cleanly_or_succeeds() {
    // For each number of allocations allowed, a fresh world runs every kind of call with
    // the allocator then refusing. Each call returns a defined status (`try_call`
    // panics on anything else); one that fails leaves the host-visible state as it was;
    // the process never aborts.
    let iovas = [0x10_0000, 0x10_1000, 0x20_0000, 0x40_0000];
    for allowed in 0..6 {
        let w = world(false);
        let strict = mapped(&w, 0, 8);
        let batched = w.alloc(BATCHED).unwrap();
        w.attach(batched, 0, SIDS[1]).unwrap();
        assert_eq!(
            w.map(batched, 0x10_0000, HP + 16 * PAGE, 8 * PAGE),
            Ok(8 * PAGE)
        );
        w.donate(HP + 40 * PAGE, 2).unwrap();
        let calls: Vec<Call<'_>> = vec![
            (
                "MAP",
                strict,
                Box::new(|| {
                    w.try_call(
                        func::MAP,
                        &[strict, 0x40_0000, HP + 32 * PAGE, 4 * PAGE, prot::ALL],
                    )
                }),
            ),
            (
                "UNMAP middle",
                strict,
                Box::new(|| w.try_call(func::UNMAP, &[strict, 0x10_2000, PAGE])),
            ),
            (
                "UNMAP batched",
                batched,
                Box::new(|| w.try_call(func::UNMAP, &[batched, 0x10_3000, PAGE])),
            ),
            (
                "FLUSH",
                batched,
                Box::new(|| w.try_call(func::FLUSH, &[batched])),
            ),
            (
                "ATTACH",
                strict,
                Box::new(|| w.try_call(func::ATTACH, &[strict, host_abi::endpoint(0, SIDS[2])])),
            ),
            (
                "DOMAIN_ALLOC",
                strict,
                Box::new(|| w.try_call(func::DOMAIN_ALLOC, &[0])),
            ),
            (
                "MEM_DONATE",
                strict,
                Box::new(|| w.try_call(func::MEM_DONATE, &[HP + 48 * PAGE, 3])),
            ),
            (
                "MEM_RECLAIM",
                strict,
                Box::new(|| w.try_call(func::MEM_RECLAIM, &[1])),
            ),
            (
                "EVENT_POLL",
                strict,
                Box::new(|| w.try_call(func::EVENT_POLL, &[])),
            ),
            (
                "STATS",
                strict,
                Box::new(|| w.try_call(func::STATS, &[stats::PAGES])),
            ),
        ];
        for (name, d, call) in &calls {
            let before = snapshot(&w, *d, &iovas);
            let (r, _) = testalloc::with_allocations(allowed, call);
            if let Err(e) = r {
                if *name != "EVENT_POLL" {
                    assert_eq!(e, Error::NoMem, "{name} with {allowed} allocations");
                }
                assert_eq!(
                    snapshot(&w, *d, &iovas),
                    before,
                    "{name}: {e:?} changed things"
                );
            }
        }
        // Donated pages stay out of reach whatever happened.
        w.attach(domain::HOST, 0, SIDS[2]).unwrap();
        for r in w.hyp.with_host_mem(|h| h.donated().to_vec()) {
            for a in (r.base.get()..r.end()).step_by(PAGE as usize) {
                assert!(w.dma(0, SIDS[2], a, true).is_err(), "donated {a:#x}");
            }
        }
    }
}

#[test]
fn moving_an_endpoint_between_domains_with_the_endpoint_map_full_allocates_nothing() {
    // Three endpoints on one SMMU fill the map's first table (no room left for a new
    // key). Moving one of them to another domain only changes its value: with the
    // allocator refusing, it succeeds (an insert that reserves room first would grow
    // the table infallibly and abort here).
    let w = world(false);
    let a = w.alloc(0).unwrap();
    let b = w.alloc(0).unwrap();
    for sid in SIDS {
        w.attach(a, 0, sid).unwrap();
    }
    let (r, refused) = testalloc::failing(|| w.attach(b, 0, SIDS[0]));
    assert_eq!((r, refused), (Ok(()), 0));
    // The map follows: `a` is still busy (two endpoints), `b` too (one).
    assert_eq!(w.free(a), Err(Error::Busy));
    w.attach(domain::HOST, 0, SIDS[1]).unwrap();
    w.attach(domain::HOST, 0, SIDS[2]).unwrap();
    assert_eq!(w.free(a), Ok(()));
    assert_eq!(w.free(b), Err(Error::Busy));
    w.attach(domain::BLOCKED, 0, SIDS[0]).unwrap();
    assert_eq!(w.free(b), Ok(()));
}
