//! Checks without DMA: discovery, domain allocation, endpoints, and the argument checks
//! of MAP, UNMAP and IOVA_TO_PHYS (each error must come with nothing changed: no
//! mapping appears, no page gets pinned).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use el1_rt::smccc;
use host_abi::{Error, domain, domain_flags, endpoint, features as feat, func, prot, smccc as sc};

use crate::env::{
    DONATABLE, Dom, Env, HOST, Outcome, SPARE, check_i2p, check_pins, pages, reclaim,
};
use crate::plan::{self, BOGUS_DOMAIN, Features, PAGE, X};

type R = Result<String, String>;

/// The batched-flush deadline (10 ms): a window longer than this proves nothing about
/// the batched queue.
const DEADLINE_US: u64 = 10_000;

// ---------------------------------------------------------------------------------------
// Discovery
// ---------------------------------------------------------------------------------------

pub fn smccc_version(_: &Env) -> R {
    let r = smccc::smccc_version();
    if r.x0 == sc::VERSION_1_1 {
        Ok(format!("SMCCC_VERSION = {:#x} (SMCCC 1.1)", r.x0))
    } else {
        Err(format!(
            "SMCCC_VERSION = {:#x}, expected {:#x} (SMCCC 1.1)",
            r.x0,
            sc::VERSION_1_1
        ))
    }
}

pub fn arch_features(_: &Env) -> R {
    let mut o = Outcome::new();
    for (q, name) in [
        (sc::VERSION, "SMCCC_VERSION"),
        (sc::ARCH_FEATURES, "SMCCC_ARCH_FEATURES"),
    ] {
        let r = smccc::arch_features(q);
        if r.x0 == 0 {
            o.note(format!("ARCH_FEATURES({name}) = 0"));
        } else {
            o.fail(format!(
                "ARCH_FEATURES({name}) = {}, expected 0",
                r.x0 as i64
            ));
        }
    }
    // An Arm architecture call that does not exist.
    let r = smccc::arch_features(0x8000_00ff);
    o.want_err(
        "ARCH_FEATURES(0x800000ff, no such call)",
        r,
        Error::NotSupported,
    );
    o.finish()
}

pub fn call_uid(_: &Env) -> R {
    let r = smccc::call_uid();
    let got = [r.x0, r.x1, r.x2, r.x3];
    let want = sc::UID.map(u64::from);
    let s = |w: [u64; 4]| format!("{:#x}, {:#x}, {:#x}, {:#x}", w[0], w[1], w[2], w[3]);
    if got == want {
        Ok(format!(
            "CALL_UID = {} (\"warden-hyp-v\", version 1)",
            s(got)
        ))
    } else {
        Err(format!("CALL_UID = {}, expected {}", s(got), s(want)))
    }
}

pub fn revision(_: &Env) -> R {
    let r = smccc::revision();
    let (major, minor) = (u64::from(sc::REVISION_MAJOR), u64::from(sc::REVISION_MINOR));
    if r.x0 == major && r.x1 == minor {
        Ok(format!("REVISION = {}.{}", r.x0, r.x1))
    } else {
        Err(format!(
            "REVISION = {}.{} (x0 {:#x}, x1 {:#x}), expected {}.{}",
            r.x0 as i64, r.x1, r.x0, r.x1, major, minor
        ))
    }
}

pub fn features(env: &Env) -> R {
    let r = smccc::features();
    if !r.ok() {
        return Err(format!("FEATURES = {}, expected 0", r.status()));
    }
    let f = Features::from_regs(r.x1, r.x2, r.x3);
    let mut problems = f.problems(env.ram_end);
    // QEMU's SMMUv3 has no BTM (IDR0.BTM = 0): claiming it would mean host stage-2 changes
    // and domain invalidations skip the SMMU commands that QEMU needs.
    if f.bits & feat::BTM != 0 {
        problems.push(format!(
            "x1 = {:#x} claims BTM, which QEMU's SMMUv3 does not implement",
            f.bits
        ));
    }
    // ABI v1 has batched domains.
    if f.bits & feat::BATCHED == 0 {
        problems.push(format!(
            "x1 = {:#x} lacks BATCHED (batched domains are part of ABI v1)",
            f.bits
        ));
    }
    if problems.is_empty() {
        Ok(format!(
            "x1 = {:#x} (RIL {}, batched, BTM off), page sizes {:#x}, {} domains, {}-bit VMIDs, {}-bit IOVA, {}-bit output",
            f.bits,
            if f.bits & feat::RIL != 0 { "on" } else { "off" },
            f.page_sizes,
            f.domains,
            f.vmid_bits,
            f.ias,
            f.oas
        ))
    } else {
        Err(format!(
            "FEATURES = {:#x}, {:#x}, {:#x}: {}",
            r.x1,
            r.x2,
            r.x3,
            problems.join("; ")
        ))
    }
}

pub fn unknown_call(_: &Env) -> R {
    use host_abi::stats;
    let groups = [
        stats::SMMU_COMMANDS,
        stats::PAGES,
        stats::DMA_CALLS,
        stats::LEAVES_WRITTEN,
    ];
    let snapshot = || -> Result<Vec<[u64; 3]>, String> {
        groups.iter().map(|&g| crate::env::stats3(g)).collect()
    };
    let mut o = Outcome::new();
    let before = snapshot();
    // Arguments that would donate, map or free something if an implementation misread
    // the ID: a page the program never touches.
    let q = SPARE.addr();
    for fid in [
        host_abi::VENDOR_HYP_BASE + 0xff,
        func::MEM_RECLAIM + 1,
        0x8600_0001,
    ] {
        // SAFETY: the only memory named is SPARE, which the program never touches.
        let r = unsafe { smccc::raw(false, fid, [q, 1, q, PAGE, prot::ALL, 0]) };
        o.want_err(format!("{fid:#x}"), r, Error::NotSupported);
    }
    // Nothing was donated...
    let r = smccc::mem_reclaim(1);
    o.want_err("then MEM_RECLAIM(1)", r, Error::NoEnt);
    if r.ok() {
        o.fail(format!(
            "an unknown call donated {} page(s) at {:#x}",
            r.x2, r.x1
        ));
    }
    // ...and no counter of state moved.
    match (before, snapshot()) {
        (Ok(b), Ok(a)) if a == b => o.note("STATS groups 1-4 unchanged"),
        (Ok(b), Ok(a)) => o.fail(format!(
            "STATS changed across the unknown calls: before {b:?}, after {a:?} (groups SMMU_COMMANDS, PAGES, DMA_CALLS, LEAVES_WRITTEN)"
        )),
        (Err(e), _) | (_, Err(e)) => o.fail(format!(
            "{e}: cannot show that the unknown calls changed nothing"
        )),
    }
    o.finish()
}

// ---------------------------------------------------------------------------------------
// Domains
// ---------------------------------------------------------------------------------------

pub fn alloc_strict(_: &Env) -> R {
    let mut o = Outcome::new();
    let p0 = pages()?;
    let mut d = Dom::alloc(0)?;
    let id = d.id;
    o.note(format!("DOMAIN_ALLOC(0) = domain {id}"));
    check_i2p(&mut o, id, X, None);
    d.map_ok(X, HOST.page(0), PAGE, prot::ALL)?;
    check_i2p(&mut o, id, X, Some(HOST.page(0)));
    d.unmap_ok(X, PAGE)?;
    // Strict: nothing stays pending once UNMAP returns.
    check_pins(&mut o, p0, "after the strict UNMAP");
    d.free()?;
    o.note(format!("DOMAIN_FREE({id}) = 0"));
    o.want_err(
        format!("MAP into freed domain {id}"),
        smccc::map(id, X, HOST.page(0), PAGE, prot::ALL),
        Error::NoEnt,
    );
    o.finish()
}

pub fn alloc_batched(env: &Env) -> R {
    let mut o = Outcome::new();
    if let Some(f) = env.feat
        && f.bits & feat::BATCHED == 0
    {
        o.fail("FEATURES does not advertise batched domains");
    }
    let p0 = pages()?;
    let strict = Dom::alloc(0)?;
    let mut d = Dom::alloc(domain_flags::BATCHED)?;
    if d.id == strict.id {
        o.fail(format!("two live domains got the same ID {}", d.id));
    }
    o.note(format!(
        "DOMAIN_ALLOC(BATCHED) = domain {} (a strict one alive: {})",
        d.id, strict.id
    ));
    // The 10 ms deadline flush may empty the queue if this vCPU is descheduled between
    // UNMAP and STATS (a loaded host): such a window proves nothing, so it is retried
    // (after a FLUSH) and only a window shorter than the deadline is judged.
    let mut judged = false;
    for attempt in 0..5 {
        d.map_ok(X, HOST.page(0), PAGE, prot::ALL)?;
        let t0 = el1_rt::rt::counter();
        d.unmap_ok(X, PAGE)?;
        let p = pages();
        let us = crate::env::us_since(t0);
        if us > DEADLINE_US {
            o.note(format!(
                "attempt {attempt}: {us} µs between UNMAP and STATS, retried"
            ));
            o.want_ok(format!("FLUSH({})", d.id), smccc::flush(d.id));
            continue;
        }
        judged = true;
        match p {
            Ok(p) if p[1] == p0[1] + 1 && p[0] == p0[0] + 1 => {
                o.note("after UNMAP: 1 page pending invalidation, still pinned")
            }
            Ok(p) => o.fail(format!(
                "after a batched UNMAP, STATS pinned/pending = {}/{}, expected {}/{} ({us} µs later)",
                p[0],
                p[1],
                p0[0] + 1,
                p0[1] + 1
            )),
            Err(e) => o.fail(e),
        }
        break;
    }
    if !judged {
        o.fail("five UNMAP-to-STATS windows all exceeded the 10 ms deadline: nothing judged");
    }
    o.want_ok(format!("FLUSH({})", d.id), smccc::flush(d.id));
    check_pins(&mut o, p0, "after FLUSH");
    d.free()?;
    strict.free()?;
    o.finish()
}

pub fn alloc_bad_flags(_: &Env) -> R {
    let mut o = Outcome::new();
    let p0 = pages();
    for flags in [1 << 2, 1 << 7, 1 << 16, 1 << 63, !domain_flags::ALL] {
        let r = smccc::domain_alloc(flags);
        if r.ok() {
            // Do not leak it.
            let _ = smccc::domain_free(r.x1);
        }
        o.want_err(format!("DOMAIN_ALLOC({flags:#x})"), r, Error::Invalid);
    }
    if let Ok(p0) = p0 {
        check_pins(&mut o, p0, "after the refused allocations");
    }
    o.finish()
}

pub fn alloc_bad_granule(env: &Env) -> R {
    let mut o = Outcome::new();
    for shift in [11u32, 13, 15, 21, 30, 0xff] {
        let flags = domain_flags::granule(shift);
        let r = smccc::domain_alloc(flags);
        if r.ok() {
            let _ = smccc::domain_free(r.x1);
        }
        o.want_err(
            format!("DOMAIN_ALLOC(granule 2^{shift}, {flags:#x})"),
            r,
            Error::Invalid,
        );
    }
    // Shift 12 names the default 4 KiB granule.
    match Dom::alloc(domain_flags::granule(12)) {
        Ok(d) => {
            o.note("DOMAIN_ALLOC(granule 2^12) = 0");
            drop(d);
        }
        Err(e) => o.fail(e),
    }
    // 16 KiB and 64 KiB: as FEATURES says.
    match env.feat {
        None => o.fail("FEATURES not served: cannot tell whether 16K/64K granules must work"),
        Some(f) => {
            for shift in [14u32, 16] {
                let flags = domain_flags::granule(shift);
                if f.granule(shift) {
                    match Dom::alloc(flags) {
                        Ok(_) => {
                            o.note(format!("DOMAIN_ALLOC(granule 2^{shift}) = 0 (advertised)"))
                        }
                        Err(e) => o.fail(format!("{e} (FEATURES advertises it)")),
                    }
                } else {
                    let r = smccc::domain_alloc(flags);
                    if r.ok() {
                        let _ = smccc::domain_free(r.x1);
                    }
                    o.want_err(
                        format!("DOMAIN_ALLOC(granule 2^{shift}, not advertised)"),
                        r,
                        Error::Invalid,
                    );
                }
            }
        }
    }
    o.finish()
}

pub fn alloc_limit(env: &Env) -> R {
    let f = env
        .feat
        .ok_or("not run: FEATURES is not served, so the domain limit is unknown")?;
    let mut live = Vec::new();
    let mut end = None;
    // One more than advertised: that one must fail with NOSPC.
    while (live.len() as u64) <= f.domains {
        let r = smccc::domain_alloc(0);
        if !r.ok() {
            end = Some(r);
            break;
        }
        live.push(r.x1);
    }
    let n = live.len();
    let mut freed = 0;
    for id in live {
        if smccc::domain_free(id).ok() {
            freed += 1;
        }
    }
    let mut o = Outcome::new();
    match end {
        Some(r) if n as u64 == f.domains && r.is(Error::NoSpc) => o.note(format!(
            "{n} domains alive at once (FEATURES' limit), the next DOMAIN_ALLOC = {}",
            r.status()
        )),
        Some(r) => o.fail(format!(
            "DOMAIN_ALLOC = {} with {n} domains alive; FEATURES promises {} (then NOSPC)",
            r.status(),
            f.domains
        )),
        None => o.fail(format!(
            "{n} domains alive at once, more than FEATURES' limit of {}",
            f.domains
        )),
    }
    if freed != n {
        o.fail(format!("only {freed} of the {n} domains could be freed"));
    }
    o.finish()
}

pub fn free_unknown(_: &Env) -> R {
    let mut o = Outcome::new();
    o.want_err(
        format!("DOMAIN_FREE({BOGUS_DOMAIN:#x})"),
        smccc::domain_free(BOGUS_DOMAIN),
        Error::NoEnt,
    );
    let d = Dom::alloc(0)?;
    let id = d.id;
    d.free()?;
    o.note(format!("DOMAIN_FREE({id}) = 0"));
    o.want_err(
        format!("DOMAIN_FREE({id}) again"),
        smccc::domain_free(id),
        Error::NoEnt,
    );
    o.finish()
}

pub fn free_attached(env: &Env) -> R {
    let dev = env.dev(0)?;
    let mut o = Outcome::new();
    let mut d = Dom::alloc(0)?;
    d.attach(dev.ep())?;
    o.note(format!("ATTACH({}, {:#x}) = 0", d.id, dev.ep()));
    o.want_err(
        format!("DOMAIN_FREE({}) while attached", d.id),
        smccc::domain_free(d.id),
        Error::Busy,
    );
    d.detach(dev.ep())?;
    let id = d.id;
    d.free()?;
    o.note(format!("after ATTACH(0, ep): DOMAIN_FREE({id}) = 0"));
    o.finish()
}

pub fn free_reuse(env: &Env) -> R {
    let limit = env.feat.map_or(64, |f| f.domains);
    // More cycles than there are domain slots, so that slots are reused even by an
    // implementation that hands them out round-robin (bounded for time).
    let cycles = (limit + 16).min(20_000);
    let mut ids = Vec::new();
    for i in 0..cycles {
        let d = Dom::alloc(0).map_err(|e| format!("cycle {i} of {cycles}: {e}"))?;
        let r = smccc::iova_to_phys(d.id, X);
        if !r.is(Error::NoEnt) {
            return Err(format!(
                "cycle {i}: a fresh domain {} has IOVA_TO_PHYS({X:#x}) = {} (x1 {:#x}), expected NOENT",
                d.id,
                r.status(),
                r.x1
            ));
        }
        if i == 0 {
            // Leave nothing behind for the next incarnation to see.
            let mut d = d;
            d.map_ok(X, HOST.page(0), PAGE, prot::ALL)?;
            d.unmap_ok(X, PAGE)?;
            ids.push(d.id);
            d.free().map_err(|e| format!("cycle {i}: {e}"))?;
        } else {
            if ids.len() < 4 && !ids.contains(&d.id) {
                ids.push(d.id);
            }
            d.free().map_err(|e| format!("cycle {i}: {e}"))?;
        }
    }
    Ok(format!(
        "{cycles} DOMAIN_ALLOC/DOMAIN_FREE cycles (domain limit {limit}) all succeeded; fresh domains never showed an old mapping; IDs seen include {ids:?}"
    ))
}

// ---------------------------------------------------------------------------------------
// Endpoints
// ---------------------------------------------------------------------------------------

pub fn attach_unknown_domain(env: &Env) -> R {
    let dev = env.dev(0)?;
    let mut o = Outcome::new();
    o.want_err(
        format!("ATTACH({BOGUS_DOMAIN:#x}, {:#x})", dev.ep()),
        smccc::attach(BOGUS_DOMAIN, dev.ep()),
        Error::NoEnt,
    );
    let d = Dom::alloc(0)?;
    let id = d.id;
    d.free()?;
    o.want_err(
        format!("ATTACH(freed domain {id}, {:#x})", dev.ep()),
        smccc::attach(id, dev.ep()),
        Error::NoEnt,
    );
    o.finish()
}

pub fn attach_unknown_endpoint(env: &Env) -> R {
    let dev = env.dev(0)?;
    let mut o = Outcome::new();
    let ends: Vec<u64> = env
        .plat
        .iommu_map
        .iter()
        .map(|e| u64::from(e.sid_base) + u64::from(e.len))
        .collect();
    let absent = plan::absent_sid(&ends);
    let sid = host_abi::endpoint_sid(dev.ep());
    let mut d = Dom::alloc(0)?;
    for (what, ep) in [
        (
            format!("StreamID {absent:#x}, beyond the stream table"),
            endpoint(0, absent),
        ),
        ("StreamID 0xffffffff".into(), endpoint(0, u32::MAX)),
        (format!("SMMU index 7, StreamID {sid:#x}"), endpoint(7, sid)),
    ] {
        let r = smccc::attach(d.id, ep);
        if r.ok() {
            // Keep the bookkeeping right for the cleanup.
            let _ = d.detach(ep);
        }
        o.want_err(
            format!("ATTACH({}, {ep:#x}: {what})", d.id),
            r,
            Error::NoEnt,
        );
    }
    // None of them got attached: the domain frees without BUSY.
    let id = d.id;
    match d.free() {
        Ok(()) => o.note(format!(
            "DOMAIN_FREE({id}) = 0 afterwards (nothing attached)"
        )),
        Err(e) => o.fail(e),
    }
    o.finish()
}

// ---------------------------------------------------------------------------------------
// MAP / UNMAP / IOVA_TO_PHYS arguments
// ---------------------------------------------------------------------------------------

/// Runs `f` on a fresh strict domain, then checks that no page got pinned and nothing is
/// mapped at X.
fn with_domain(f: impl FnOnce(&mut Dom, &mut Outcome)) -> R {
    let mut o = Outcome::new();
    let p0 = pages()?;
    let mut d = Dom::alloc(0)?;
    f(&mut d, &mut o);
    drop(d);
    check_pins(&mut o, p0, "afterwards");
    o.finish()
}

fn map_err(d: &mut Dom, o: &mut Outcome, iova: u64, pa: u64, size: u64, prot: u64, e: Error) {
    let r = d.map(iova, pa, size, prot);
    o.want_err(
        format!("MAP({}, {iova:#x}, {pa:#x}, {size:#x}, {prot:#x})", d.id),
        r,
        e,
    );
}

pub fn map_unaligned(_: &Env) -> R {
    let a = HOST.page(0);
    with_domain(|d, o| {
        map_err(d, o, X + 0x800, a, PAGE, prot::ALL, Error::Invalid);
        map_err(d, o, X, a + 0x10, PAGE, prot::ALL, Error::Invalid);
        map_err(d, o, X, a, 0x1800, prot::ALL, Error::Invalid);
        map_err(d, o, X, a, 0x800, prot::ALL, Error::Invalid);
        check_i2p(o, d.id, X, None);
    })
}

pub fn map_size_zero(_: &Env) -> R {
    with_domain(|d, o| {
        map_err(d, o, X, HOST.page(0), 0, prot::ALL, Error::Invalid);
        check_i2p(o, d.id, X, None);
    })
}

pub fn map_iova_overflow(_: &Env) -> R {
    with_domain(|d, o| {
        let top = 0u64.wrapping_sub(PAGE);
        map_err(d, o, top, HOST.page(0), 2 * PAGE, prot::ALL, Error::Invalid);
        map_err(
            d,
            o,
            X,
            HOST.page(0),
            0u64.wrapping_sub(X),
            prot::ALL,
            Error::Invalid,
        );
        check_i2p(o, d.id, X, None);
    })
}

pub fn map_pa_overflow(_: &Env) -> R {
    with_domain(|d, o| {
        let top = 0u64.wrapping_sub(PAGE);
        map_err(d, o, X, top, 2 * PAGE, prot::ALL, Error::Invalid);
        check_i2p(o, d.id, X, None);
    })
}

pub fn map_bad_prot(_: &Env) -> R {
    with_domain(|d, o| {
        for p in [1 << 2, 1 << 3, prot::ALL | 1 << 2, 1 << 63] {
            map_err(d, o, X, HOST.page(0), PAGE, p, Error::Invalid);
        }
        check_i2p(o, d.id, X, None);
    })
}

pub fn map_unknown_domain(_: &Env) -> R {
    let mut o = Outcome::new();
    let p0 = pages()?;
    o.want_err(
        format!("MAP({BOGUS_DOMAIN:#x}, ...)"),
        smccc::map(BOGUS_DOMAIN, X, HOST.page(0), PAGE, prot::ALL),
        Error::NoEnt,
    );
    let d = Dom::alloc(0)?;
    let id = d.id;
    d.free()?;
    o.want_err(
        format!("MAP(freed domain {id}, ...)"),
        smccc::map(id, X, HOST.page(0), PAGE, prot::ALL),
        Error::NoEnt,
    );
    check_pins(&mut o, p0, "afterwards");
    o.finish()
}

pub fn map_fixed_domains(env: &Env) -> R {
    let mut o = Outcome::new();
    let p0 = pages();
    let a = HOST.page(0);
    for (d, name) in [
        (domain::HOST, "the host identity domain"),
        (domain::BLOCKED, "the blocking domain"),
    ] {
        let r = smccc::map(d, X, a, PAGE, prot::ALL);
        o.want_any_err(format!("MAP({d} = {name}, {X:#x}, {a:#x})"), r);
    }
    if let Ok(c) = env.carve() {
        let r = smccc::map(domain::HOST, X, c.base.get(), PAGE, prot::ALL);
        o.want_any_err(
            format!(
                "MAP(host identity domain, {X:#x}, carve-out {:#x})",
                c.base.get()
            ),
            r,
        );
    }
    match p0 {
        Ok(p0) => check_pins(&mut o, p0, "afterwards"),
        Err(e) => o.fail(e),
    }
    o.finish()
}

pub fn map_double(_: &Env) -> R {
    let (a, b) = (HOST.page(0), HOST.page(1));
    let mut o = Outcome::new();
    let p0 = pages()?;
    let mut d = Dom::alloc(0)?;
    d.map_ok(X, a, PAGE, prot::ALL)?;
    map_err(&mut d, &mut o, X, b, PAGE, prot::ALL, Error::Exist);
    map_err(&mut d, &mut o, X, b, 2 * PAGE, prot::ALL, Error::Exist);
    check_i2p(&mut o, d.id, X, Some(a));
    check_i2p(&mut o, d.id, X + PAGE, None);
    match pages() {
        Ok(p) if p[0] == p0[0] + 1 => o.note("1 page pinned"),
        Ok(p) => o.fail(format!(
            "STATS pinned {} with one page mapped, expected {}",
            p[0],
            p0[0] + 1
        )),
        Err(e) => o.fail(e),
    }
    d.unmap_ok(X, PAGE)?;
    drop(d);
    check_pins(&mut o, p0, "afterwards");
    o.finish()
}

pub fn map_carveout_denied(env: &Env) -> R {
    let c = env.carve()?;
    let targets = el1_rt::logic::carve_out_targets(c);
    let last = c.end() - PAGE;
    with_domain(|d, o| {
        for pa in [targets[0], targets[1], last] {
            map_err(d, o, X, pa, PAGE, prot::ALL, Error::Denied);
        }
        check_i2p(o, d.id, X, None);
    })
}

pub fn map_donated_denied(_: &Env) -> R {
    let p = DONATABLE.page(0);
    let mut o = Outcome::new();
    let mut d = Dom::alloc(0)?;
    // SAFETY: the page is touched again only after MEM_RECLAIM returned it.
    let r = unsafe { smccc::mem_donate(p, 1) };
    if !o.want_ok(format!("MEM_DONATE({p:#x}, 1)"), r) {
        return o.finish();
    }
    map_err(&mut d, &mut o, X, p, PAGE, prot::ALL, Error::Denied);
    check_i2p(&mut o, d.id, X, None);
    drop(d);
    match reclaim(p, 1) {
        Ok(s) => o.note(s),
        Err(e) => o.fail(e),
    }
    o.finish()
}

pub fn unmap_nothing(_: &Env) -> R {
    let mut o = Outcome::new();
    let mut d = Dom::alloc(0)?;
    let r = d.unmap(X, PAGE);
    o.want_err(
        format!("UNMAP({}, {X:#x}, 4K) of nothing", d.id),
        r,
        Error::NoEnt,
    );
    d.map_ok(X, HOST.page(0), PAGE, prot::ALL)?;
    d.unmap_ok(X, PAGE)?;
    let r = d.unmap(X, PAGE);
    o.want_err(
        format!("UNMAP({}, {X:#x}, 4K) a second time", d.id),
        r,
        Error::NoEnt,
    );
    o.finish()
}

pub fn unmap_errors(_: &Env) -> R {
    let mut o = Outcome::new();
    let a = HOST.page(0);
    let mut d = Dom::alloc(0)?;
    d.map_ok(X, a, PAGE, prot::ALL)?;
    let id = d.id;
    for (iova, size, e) in [
        (X + 0x800, PAGE, Error::Invalid),
        (X, 0x800, Error::Invalid),
        (X, 0x1800, Error::Invalid),
        (X, 0, Error::Invalid),
        (0u64.wrapping_sub(PAGE), 2 * PAGE, Error::Invalid),
    ] {
        let r = d.unmap(iova, size);
        o.want_err(format!("UNMAP({id}, {iova:#x}, {size:#x})"), r, e);
    }
    o.want_err(
        format!("UNMAP({BOGUS_DOMAIN:#x}, {X:#x}, 4K)"),
        smccc::unmap(BOGUS_DOMAIN, X, PAGE),
        Error::NoEnt,
    );
    // The mapping survived every refused UNMAP.
    check_i2p(&mut o, id, X, Some(a));
    d.unmap_ok(X, PAGE)?;
    o.finish()
}

pub fn iova_to_phys(_: &Env) -> R {
    let (a, b) = (HOST.page(0), HOST.page(1));
    let y = X + plan::BLOCK_2M;
    let mut o = Outcome::new();
    let mut d = Dom::alloc(0)?;
    d.map_ok(X, a, PAGE, prot::ALL)?;
    d.map_ok(y, b, PAGE, prot::READ)?;
    let id = d.id;
    check_i2p(&mut o, id, X, Some(a));
    check_i2p(&mut o, id, y, Some(b));
    check_i2p(&mut o, id, X + PAGE, None);
    let r = smccc::iova_to_phys(BOGUS_DOMAIN, X);
    o.want_err(
        format!("IOVA_TO_PHYS({BOGUS_DOMAIN:#x}, {X:#x})"),
        r,
        Error::NoEnt,
    );
    d.unmap_ok(X, PAGE)?;
    check_i2p(&mut o, id, X, None);
    check_i2p(&mut o, id, y, Some(b));
    d.unmap_ok(y, PAGE)?;
    o.finish()
}
