//! Unconfirmed invalidation never releases anything (I2, I3): an SMMU that skips an
//! invalidation (`CERROR_ILL`) or never completes its `CMD_SYNC` leaves the pages and
//! tables involved pinned / allocated for good, on every path: a strict unmap, a batched
//! unmap whose block split failed inside the call, host stage-2 tables, DOMAIN_FREE's
//! quarantine (and its VMID, I4), a deadline flush, and an ATTACH whose STE update timed
//! out.

use super::*;

/// The page `iova` of domain `d` must not reach a page donated to Warden: either the
/// host cannot donate it (still pinned) or the device faults.
fn donated_page_unreachable(w: &World, iova: u64, pa: u64, what: &str) {
    match w.donate(pa, 1) {
        Err(Error::Busy) => {
            assert!(w.pins(pa) >= 1, "{what}: BUSY because still pinned");
        }
        Ok(()) => {
            let r = w.dev_write(0, SID, iova, 0x5a5a_5a5a_5a5a_5a5a);
            assert!(
                r.is_err(),
                "{what}: a device wrote page {pa:#x} after it was donated to Warden"
            );
            panic!("{what}: the page was released although its invalidation was unconfirmed");
        }
        Err(e) => panic!("{what}: donate: {e:?}"),
    }
}

#[test]
fn strict_unmap_with_a_skipped_tlbi_keeps_the_page_pinned() {
    let w = world(false);
    let d = mapped(&w, 0, 1);
    // The device uses the page: the SMMU caches its translation.
    assert_eq!(w.dma(0, SID, 0x10_0000, true), Ok(PhysAddr(HP)));
    w.models[0].reject_next(op::TLBI_S2_IPA);
    assert_eq!(w.unmap(d, 0x10_0000, PAGE), Ok(PAGE));
    assert_eq!(w.models[0].rejected().len(), 1, "the TLBI was refused");
    assert_eq!(
        w.dma(0, SID, 0x10_0000, true),
        Ok(PhysAddr(HP)),
        "the stale translation is still there"
    );
    assert_eq!(w.pins(HP), 1, "still pinned");
    assert_eq!(w.hyp.leaked_pages(), 1, "counted");
    donated_page_unreachable(&w, 0x10_0000, HP, "strict");
}

#[test]
fn batched_unmap_splitting_a_block_with_an_unconfirmed_break_never_unpins() {
    for stall in [false, true] {
        let what = if stall { "stalled" } else { "skipped" };
        let w = world(false);
        let d = mapped(&w, BATCHED, 0);
        let (iova, pa) = (0x20_0000, HOST_BASE + 2 * MB);
        assert_eq!(w.map(d, iova, pa, 2 * MB), Ok(2 * MB), "one 2 MiB block");
        let page = (iova + PAGE, pa + PAGE);
        assert_eq!(w.dma(0, SID, page.0, true), Ok(PhysAddr(page.1)));
        // Unmapping one page splits the block: break-before-make inside the call. Its
        // invalidation is refused, or never completes.
        if stall {
            w.models[0].set_stalled(true);
        } else {
            w.models[0].reject_next(op::TLBI_S2_IPA);
        }
        assert_eq!(w.unmap(d, page.0, PAGE), Ok(PAGE), "{what}");
        if stall {
            w.models[0].set_stalled(false);
        }
        // Whatever FLUSH does later, it must not release the page.
        w.flush(d).unwrap();
        assert_eq!(w.pins(page.1), 1, "{what}: still pinned");
        assert!(w.hyp.leaked_pages() >= 1, "{what}: counted");
        assert_eq!(w.stats(stats::PAGES)[1], 0, "{what}: nothing left pending");
        donated_page_unreachable(&w, page.0, page.1, what);
        // The rest of the block still works.
        assert_eq!(w.dma(0, SID, iova, true), Ok(PhysAddr(pa)));
    }
}

#[test]
fn host_stage2_tables_are_not_freed_after_an_unconfirmed_invalidation() {
    let w = world(false);
    // Donating one page splits the first host 2 MiB block: a level-3 table.
    let before: Vec<u64> = w.pool.live().iter().map(|&(a, _)| a).collect();
    w.donate(HOST_BASE + PAGE, 1).unwrap();
    let tables: Vec<u64> = w
        .pool
        .live()
        .iter()
        .map(|&(a, _)| a)
        .filter(|a| !before.contains(a))
        .collect();
    assert!(!tables.is_empty(), "the split allocated a table");
    assert_eq!(w.reclaim(1), Ok((HOST_BASE + PAGE, 1)));
    // Donating the whole block unlinks (and would free) that table; the SMMU does not
    // complete the invalidation.
    w.models[0].set_stalled(true);
    assert_eq!(w.donate(HOST_BASE, 512), Err(Error::Busy), "withheld");
    w.models[0].set_stalled(false);
    for t in &tables {
        assert!(
            w.pool.is_live(*t),
            "table {t:#x} went back to the pool while an SMMU may still walk it"
        );
    }
    assert_eq!(w.hyp.leaked_table_bytes(), PAGE * tables.len() as u64);
}

#[test]
fn domain_free_with_an_unconfirmed_quarantine_keeps_pages_tables_and_vmid() {
    let w = world(false);
    let d = mapped(&w, BATCHED, 2);
    // One page queued (batched), one still mapped.
    assert_eq!(w.unmap(d, 0x10_0000, PAGE), Ok(PAGE));
    assert_eq!(
        w.dma(0, SID, 0x10_0000 + PAGE, true),
        Ok(PhysAddr(HP + PAGE))
    );
    let vmid = w.hyp.domain_vmid(DomainId(d)).unwrap();
    let tables: Vec<u64> = w.pool.live().iter().map(|&(a, _)| a).collect();
    w.attach(domain::BLOCKED, 0, SID).unwrap();
    w.models[0].set_stalled(true);
    assert_eq!(w.free(d), Ok(()));
    w.models[0].set_stalled(false);
    assert_eq!(w.pins(HP), 1, "the queued page stays pinned");
    assert_eq!(w.pins(HP + PAGE), 1, "the mapped page stays pinned");
    for t in &tables {
        assert!(w.pool.is_live(*t), "table {t:#x} went back to the pool");
    }
    assert_ne!(
        w.hyp.vmids().lock().state(vmid),
        Ok(crate::vmid_alloc::VmidState::Free),
        "VMID {vmid:?} freed although its invalidation was unconfirmed (I4)"
    );
    donated_page_unreachable(&w, 0x10_0000, HP, "domain free");
}

#[test]
fn deadline_flush_that_is_not_confirmed_never_unpins() {
    let w = world(false);
    let d = mapped(&w, BATCHED, 1);
    assert_eq!(w.dma(0, SID, 0x10_0000, true), Ok(PhysAddr(HP)));
    assert_eq!(w.unmap(d, 0x10_0000, PAGE), Ok(PAGE));
    w.tick_ms(1000);
    // Any call runs the deadline check first.
    w.models[0].set_stalled(true);
    let _ = w.try_call(host_abi::func::FEATURES, &[]);
    w.models[0].set_stalled(false);
    assert_eq!(w.stats(stats::PAGES)[1], 0, "the deadline flush ran");
    assert_eq!(w.pins(HP), 1, "still pinned");
    donated_page_unreachable(&w, 0x10_0000, HP, "deadline");
}

#[test]
fn attach_whose_ste_update_times_out_keeps_both_domains_busy() {
    let w = world(false);
    let a = mapped(&w, 0, 1);
    let b = w.alloc(0).unwrap();
    w.models[0].set_stalled(true);
    assert!(w.attach(b, 0, SID).is_err());
    w.models[0].set_stalled(false);
    assert_eq!(w.free(a), Err(Error::Busy), "the STE may still point at a");
    assert_eq!(
        w.free(b),
        Err(Error::Busy),
        "the STE may already point at b"
    );
    assert_eq!(w.pins(HP), 1);
}
