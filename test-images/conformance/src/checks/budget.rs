//! Pool exhaustion and donation, and the SMMU command budgets that STATS makes visible.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use el1_rt::smccc::{self, Ret};
use host_abi::{Error, domain_flags, prot, stats};

use crate::env::{
    BLOCK, Env, HOST, Outcome, POOL_DONATION, ZERO, check_i2p, differs, fixture, pages, pat,
    reclaim, stats3, tag, us_since,
};
use crate::plan::{self, BATCH_IOVA, BATCH_PAGES, BLOCK_2M, BLOCK_IOVA, PAGE, X, delta};

type R = Result<String, String>;

/// Most MAP calls `pool-exhaustion` makes before it gives up waiting for NOMEM (each
/// needs at least one page-table page: 800 MiB of tables).
const MAX_EXHAUST_MAPS: u64 = 200_000;

/// The call that ran out of memory.
#[derive(Clone, Copy)]
enum Starved {
    Alloc,
    Map { domain: u64, iova: u64, pa: u64 },
}

pub fn pool_exhaustion(env: &Env) -> R {
    let ias = env.ias()?;
    let slots = plan::exhaust_slots(ias);
    if slots == 0 {
        return Err(format!("a {ias}-bit IOVA space has no room for the plan"));
    }
    let mut o = Outcome::new();
    let p0 = pages()?;
    let donation = POOL_DONATION.addr();
    let n = POOL_DONATION.len() / PAGE;
    // Donate and reclaim the donation's first and last page once while memory is
    // plentiful: if the host stage-2 maps them with a block, this splits it, so that the
    // donation under pressure below needs no new table.
    for pa in [donation, donation + (n - 1) * PAGE] {
        // SAFETY: the donation's pages are never touched by the CPU.
        let r = unsafe { smccc::mem_donate(pa, 1) };
        if !r.ok() {
            return Err(format!(
                "MEM_DONATE({pa:#x}, 1) before the run = {}",
                r.status()
            ));
        }
        reclaim(pa, 1)?;
    }

    // Domains and how many pages each has mapped (at exhaust_iova(0..count)).
    let mut doms: Vec<(u64, u64)> = Vec::new();
    let mut total = 0u64;
    let mut starved = None;
    let page_of = |i: u64| HOST.page(13 + (i % 3) as usize);
    'run: while total < MAX_EXHAUST_MAPS {
        let r = smccc::domain_alloc(0);
        if r.is(Error::NoMem) {
            starved = Some(Starved::Alloc);
            break;
        }
        if !r.ok() {
            o.fail(format!(
                "DOMAIN_ALLOC(0) = {} after {total} MAPs in {} domain(s), before the pool ran out",
                r.status(),
                doms.len()
            ));
            break;
        }
        doms.push((r.x1, 0));
        let id = r.x1;
        for i in 0..slots {
            let (iova, pa) = (plan::exhaust_iova(i), page_of(i));
            let r = smccc::map(id, iova, pa, PAGE, prot::READ);
            if r.ok() && r.x1 == PAGE {
                doms.last_mut().expect("domain").1 += 1;
                total += 1;
                if total >= MAX_EXHAUST_MAPS {
                    break 'run;
                }
                continue;
            }
            if r.is(Error::NoMem) {
                starved = Some(Starved::Map {
                    domain: id,
                    iova,
                    pa,
                });
            } else {
                o.fail(format!(
                    "MAP({id}, {iova:#x}, {pa:#x}, 4K) = {} (x1 {:#x}) after {total} MAPs",
                    r.status(),
                    r.x1
                ));
            }
            break 'run;
        }
    }

    let mut donated = false;
    match starved {
        None if o.problems.is_empty() => o.fail(format!(
            "no NOMEM after {total} single-page MAPs in {} domain(s) (each needing new table pages)",
            doms.len()
        )),
        None => {}
        Some(s) => {
            let what = match s {
                Starved::Alloc => "DOMAIN_ALLOC(0)".into(),
                Starved::Map { domain, iova, pa } => format!("MAP({domain}, {iova:#x}, {pa:#x}, 4K)"),
            };
            o.note(format!("{what} = NOMEM after {total} MAPs in {} domain(s)", doms.len()));
            // SAFETY: the donation's pages are never touched by the CPU.
            let r = unsafe { smccc::mem_donate(donation, n) };
            donated = r.ok();
            if o.want_ok(format!("MEM_DONATE({donation:#x}, {n}) with the pool empty"), r) {
                let r: Ret = match s {
                    Starved::Alloc => smccc::domain_alloc(0),
                    Starved::Map { domain, iova, pa } => smccc::map(domain, iova, pa, PAGE, prot::READ),
                };
                if r.ok() {
                    match s {
                        Starved::Alloc => doms.push((r.x1, 0)),
                        Starved::Map { .. } => doms.last_mut().expect("domain").1 += 1,
                    }
                    o.note(format!("after MEM_DONATE of {n} pages the same {what} = 0"));
                } else {
                    o.fail(format!("after MEM_DONATE of {n} pages, {what} again = {}, expected 0", r.status()));
                }
            }
        }
    }

    // Clean up: every mapping, every domain, then the donation.
    let mut cleanup = Vec::new();
    for &(id, count) in &doms {
        for i in 0..count {
            let r = smccc::unmap(id, plan::exhaust_iova(i), PAGE);
            if !(r.ok() && r.x1 == PAGE) && cleanup.len() < 4 {
                cleanup.push(format!(
                    "UNMAP({id}, {:#x}) = {}",
                    plan::exhaust_iova(i),
                    r.status()
                ));
            }
        }
        let r = smccc::domain_free(id);
        if !r.ok() && cleanup.len() < 4 {
            cleanup.push(format!("DOMAIN_FREE({id}) = {}", r.status()));
        }
    }
    if !cleanup.is_empty() {
        o.fail(format!("cleanup: {}", cleanup.join(", ")));
    }
    crate::env::check_pins(
        &mut o,
        p0,
        "after unmapping everything and freeing the domains",
    );
    if donated {
        match reclaim(donation, n) {
            Ok(s) => o.note(s),
            Err(e) => o.fail(format!("{e} (after the cleanup)")),
        }
    }
    o.finish()
}

pub fn budget_strict_unmap(env: &Env) -> R {
    let (mut d, _dev) = fixture(env, 0, 0)?;
    d.map_ok(X, HOST.page(0), PAGE, prot::ALL)?;
    let s0 = stats3(stats::CALLS_SYNCS_TLBIS)?;
    let c0 = stats3(stats::SMMU_COMMANDS)?;
    d.unmap_ok(X, PAGE)?;
    let s1 = stats3(stats::CALLS_SYNCS_TLBIS)?;
    let c1 = stats3(stats::SMMU_COMMANDS)?;
    let (ds, dc) = (delta(s0, s1), delta(c0, c1));
    let said = format!(
        "one strict 4K UNMAP (device attached): {} CMD_SYNC, {} TLBI_S2_IPA, {} TLBI_S12_VMALL, {} CFGI_STE, {} CPU TLBI",
        ds[1], dc[0], dc[1], dc[2], ds[2]
    );
    if ds[1] == 1 && dc[0] + dc[1] == 1 && dc[2] == 0 {
        Ok(said)
    } else {
        Err(format!(
            "{said}; expected exactly 1 CMD_SYNC, 1 TLBI command in all and no CFGI_STE"
        ))
    }
}

pub fn budget_batched_flush(env: &Env) -> R {
    let (mut d, _dev) = fixture(env, 0, domain_flags::BATCHED)?;
    let a = HOST.page(0);
    let iova = |i: u64| BATCH_IOVA + 2 * i * PAGE;
    // STATS counts pinned pages (not mappings): all 256 IOVAs pin the one page.
    let p0 = pages()?;
    for i in 0..BATCH_PAGES {
        d.map_ok(iova(i), a, PAGE, prot::READ)?;
    }
    let s0 = stats3(stats::CALLS_SYNCS_TLBIS)?;
    let c0 = stats3(stats::SMMU_COMMANDS)?;
    let t0 = el1_rt::rt::counter();
    for i in 0..BATCH_PAGES {
        d.unmap_ok(iova(i), PAGE)?;
    }
    let r = smccc::flush(d.id);
    let us = us_since(t0);
    if !r.ok() {
        return Err(format!("FLUSH({}) = {}", d.id, r.status()));
    }
    let s1 = stats3(stats::CALLS_SYNCS_TLBIS)?;
    let c1 = stats3(stats::SMMU_COMMANDS)?;
    let p1 = pages()?;
    let (ds, dc) = (delta(s0, s1), delta(c0, c1));
    let mut o = Outcome::new();
    let said = format!(
        "{BATCH_PAGES} batched 4K UNMAPs (separate ranges) + FLUSH in {us} µs: {} CMD_SYNC, {} TLBI_S2_IPA, {} TLBI_S12_VMALL",
        ds[1], dc[0], dc[1]
    );
    if ds[1] <= 2 {
        o.note(said);
    } else {
        o.fail(format!(
            "{said}; expected at most 2 CMD_SYNCs{}",
            if us > 10_000 {
                " (the run took over 10 ms: a deadline flush may have added one)"
            } else {
                ""
            }
        ));
    }
    if p1[0] != p0[0] || p1[1] != p0[1] {
        o.fail(format!(
            "after FLUSH, pinned/pending = {}/{}, expected {}/{} (as before the MAPs)",
            p1[0], p1[1], p0[0], p0[1]
        ));
    }
    o.finish()
}

pub fn budget_block_map(env: &Env) -> R {
    let base = BLOCK.addr();
    let pa = plan::aligned_within(base, 1024 * PAGE, BLOCK_2M, BLOCK_2M)
        .ok_or("the 4 MiB .bss buffer holds no aligned 2 MiB block")?;
    let (mut d, dev) = fixture(env, 0, 0)?;
    let mut o = Outcome::new();
    let l0 = stats3(stats::LEAVES_WRITTEN)?;
    d.map_ok(BLOCK_IOVA, pa, BLOCK_2M, prot::ALL)?;
    let l1 = stats3(stats::LEAVES_WRITTEN)?;
    let dl = delta(l0, l1);
    if dl == [0, 1, 0] {
        o.note(format!(
            "MAP({BLOCK_IOVA:#x}, {pa:#x}, 2 MiB) wrote one level-2 block entry and no page entries"
        ));
    } else {
        o.fail(format!(
            "MAP of a 2 MiB-aligned 2 MiB range ({BLOCK_IOVA:#x} -> {pa:#x}) wrote {} L1 block(s), {} L2 block(s), {} L3 page(s): expected 0, 1, 0",
            dl[0], dl[1], dl[2]
        ));
    }
    check_i2p(&mut o, d.id, BLOCK_IOVA + 0x12_3000, Some(pa + 0x12_3000));
    // A DMA into the middle of the block lands where the block says.
    let off = 1 << 20;
    let idx = ((pa + off - base) / PAGE) as usize;
    let fill = pat(tag::FILL);
    BLOCK.store(idx, &ZERO);
    dev.fill(&fill)?;
    dev.to_ram(BLOCK_IOVA + off)?;
    match differs(&BLOCK.load(idx), &fill) {
        None => o.note(format!(
            "DMA write to IOVA {:#x} landed at {:#x}",
            BLOCK_IOVA + off,
            pa + off
        )),
        Some(e) => o.fail(format!(
            "DMA write to IOVA {:#x} did not land at {:#x}: {e}",
            BLOCK_IOVA + off,
            pa + off
        )),
    }
    d.unmap_ok(BLOCK_IOVA, BLOCK_2M)?;
    o.finish()
}
