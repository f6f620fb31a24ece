//! Checks with real DMA: QEMU's edu devices (QEMU.md section 6) read and write RAM
//! through the SMMU, each transfer a 4 KiB page that completes 100 ms (virtual) after it
//! starts. The evidence is in the pages themselves: a DMA that must be refused leaves
//! its target unchanged (writes) or delivers nothing (reads), one that must land
//! changes exactly the page the mapping names.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use el1_rt::logic::{describe_read, judge_refused_read};
use el1_rt::smccc;
use host_abi::{Error, domain, domain_flags, event, event_type, prot};

use crate::env::{
    DONATABLE, Dom, Env, HOST, Outcome, STAGE, ZERO, check_i2p, differs, drain_events,
    fault_reported, fixture, pages, pat, poll_events, reclaim, tag, us_since, which,
};
use crate::plan::{PAGE, STAGE_IOVA, X, Y};

type R = Result<String, String>;

/// A deadline flush (10 ms after a batched UNMAP) could blur what the batched checks see
/// if this much time passed between their calls.
const DEADLINE_US: u64 = 10_000;

/// Expects page `got` to be `want`, naming what it holds otherwise.
fn expect_page(o: &mut Outcome, what: &str, got: &[u64; 512], want: (&str, &[u64; 512])) -> bool {
    match differs(got, want.1) {
        None => true,
        Some(d) => {
            o.fail(format!(
                "{what}: expected {}, found {} ({d})",
                want.0,
                which(got, &[want])
            ));
            false
        }
    }
}

// ---------------------------------------------------------------------------------------
// Endpoints
// ---------------------------------------------------------------------------------------

pub fn attach_domain(env: &Env) -> R {
    let mut dev = env.dev(0)?;
    let mut o = Outcome::new();
    let (fill, keep) = (pat(tag::FILL), pat(tag::KEEP));
    // On the host identity domain: put a pattern in edu's buffer.
    dev.fill(&fill)?;
    let mut d = Dom::alloc(0)?;
    d.map_ok(STAGE_IOVA, dev.stage_pa(), PAGE, prot::ALL)?;
    HOST.store(2, &keep);
    d.attach(dev.ep())?;
    o.note(format!("ATTACH({}, {:#x}) = 0", d.id, dev.ep()));
    dev.stage = STAGE_IOVA;
    // The device left the identity domain: its physical address is no longer reachable.
    dev.to_ram(HOST.page(2))?;
    if expect_page(
        &mut o,
        &format!(
            "after a DMA write to PA {:#x}, which domain {} does not map",
            HOST.page(2),
            d.id
        ),
        &HOST.load(2),
        ("its old contents", &keep),
    ) {
        o.note(format!(
            "DMA to PA {:#x} (not mapped in the domain) refused",
            HOST.page(2)
        ));
    }
    // ...and the domain's own mapping works.
    let buf = dev.read()?;
    if expect_page(
        &mut o,
        &format!(
            "edu's buffer read through IOVA {STAGE_IOVA:#x} of domain {}",
            d.id
        ),
        &buf,
        ("the pattern it was filled with", &fill),
    ) {
        o.note(format!(
            "DMA through IOVA {STAGE_IOVA:#x} -> PA {:#x} works",
            dev.stage_pa()
        ));
    }
    o.finish()
}

pub fn attach_host(env: &Env) -> R {
    let (mut d, mut dev) = fixture(env, 0, 0)?;
    let mut o = Outcome::new();
    d.detach(dev.ep())?;
    o.note(format!("ATTACH(0, {:#x}) = 0", dev.ep()));
    dev.stage = dev.stage_pa();
    let fill = pat(tag::FILL2);
    HOST.store(3, &ZERO);
    dev.fill(&fill)?;
    dev.to_ram(HOST.page(3))?;
    if expect_page(
        &mut o,
        &format!("after ATTACH(0): DMA write to PA {:#x}", HOST.page(3)),
        &HOST.load(3),
        ("edu's data", &fill),
    ) {
        o.note(format!(
            "identity-mapped DMA RAM {:#x} -> edu -> RAM {:#x} works again",
            dev.stage_pa(),
            HOST.page(3)
        ));
    }
    o.finish()
}

pub fn attach_blocked(env: &Env) -> R {
    let dev = env.dev(0)?;
    let mut o = Outcome::new();
    let (fill, keep) = (pat(tag::FILL), pat(tag::KEEP));
    dev.fill(&fill)?;
    HOST.store(4, &keep);
    let r = smccc::attach(domain::BLOCKED, dev.ep());
    if !o.want_ok(format!("ATTACH(1, {:#x})", dev.ep()), r) {
        return o.finish();
    }
    let t = HOST.page(4);
    let res = dev.to_ram(t).and_then(|()| dev.to_device(t));
    let back = smccc::attach(domain::HOST, dev.ep());
    res?;
    if !o.want_ok(format!("ATTACH(0, {:#x}) afterwards", dev.ep()), back) {
        return o.finish();
    }
    if expect_page(
        &mut o,
        &format!("DMA write to PA {t:#x} in the blocking domain"),
        &HOST.load(4),
        ("its old contents", &keep),
    ) {
        o.note(format!("DMA write to {t:#x} blocked"));
    }
    let read = judge_refused_read(&dev.read()?, &fill, Some(&keep));
    if read.leaked() {
        o.fail(format!(
            "DMA read of {t:#x} in the blocking domain delivered data: {}",
            describe_read(read)
        ));
    } else {
        o.note(format!(
            "DMA read of {t:#x} blocked ({})",
            describe_read(read)
        ));
    }
    o.finish()
}

// ---------------------------------------------------------------------------------------
// Translation and permissions
// ---------------------------------------------------------------------------------------

pub fn dma_iova_translate(env: &Env) -> R {
    let (mut d, dev) = fixture(env, 0, 0)?;
    let mut o = Outcome::new();
    let a = HOST.page(5);
    if a == X {
        return Err(format!(
            "IOVA {X:#x} equals the target's PA: the check would prove nothing"
        ));
    }
    d.map_ok(X, a, PAGE, prot::ALL)?;
    let (fill, keep) = (pat(tag::FILL), pat(tag::KEEP));
    HOST.store(5, &ZERO);
    dev.fill(&fill)?;
    dev.to_ram(X)?;
    if expect_page(
        &mut o,
        &format!("DMA write to IOVA {X:#x} (-> PA {a:#x})"),
        &HOST.load(5),
        ("edu's data", &fill),
    ) {
        o.note(format!("DMA write to IOVA {X:#x} landed in PA {a:#x}"));
    }
    HOST.store(5, &keep);
    dev.to_device(X)?;
    if expect_page(
        &mut o,
        &format!("DMA read of IOVA {X:#x} (PA {a:#x})"),
        &dev.read()?,
        ("the page's data", &keep),
    ) {
        o.note(format!(
            "DMA read of IOVA {X:#x} delivered PA {a:#x}'s data"
        ));
    }
    check_i2p(&mut o, d.id, X, Some(a));
    o.finish()
}

pub fn dma_read_only(env: &Env) -> R {
    let (mut d, dev) = fixture(env, 0, 0)?;
    let mut o = Outcome::new();
    let c = HOST.page(6);
    let (fill, keep) = (pat(tag::FILL), pat(tag::KEEP));
    HOST.store(6, &keep);
    d.map_ok(Y, c, PAGE, prot::READ)?;
    dev.fill(&fill)?;
    drain_events();
    dev.to_ram(Y)?;
    if expect_page(
        &mut o,
        &format!("DMA write to read-only IOVA {Y:#x} (PA {c:#x})"),
        &HOST.load(6),
        ("its old contents", &keep),
    ) {
        o.note(format!("DMA write to read-only IOVA {Y:#x} refused"));
        if let Ok(s) = fault_reported(dev.ep(), Y, false) {
            o.note(s);
        }
    }
    dev.to_device(Y)?;
    if expect_page(
        &mut o,
        &format!("DMA read of read-only IOVA {Y:#x}"),
        &dev.read()?,
        ("the page's data", &keep),
    ) {
        o.note(format!("DMA read of IOVA {Y:#x} allowed"));
    }
    o.finish()
}

pub fn dma_strict_unmap(env: &Env) -> R {
    let (mut d, dev) = fixture(env, 0, 0)?;
    let mut o = Outcome::new();
    let a = HOST.page(7);
    let (fill, keep) = (pat(tag::FILL), pat(tag::KEEP));
    d.map_ok(X, a, PAGE, prot::ALL)?;
    HOST.store(7, &ZERO);
    dev.fill(&fill)?;
    // This DMA also leaves the translation in the SMMU's TLB.
    dev.to_ram(X)?;
    if !expect_page(
        &mut o,
        &format!("DMA write to IOVA {X:#x} before UNMAP"),
        &HOST.load(7),
        ("edu's data", &fill),
    ) {
        return o.finish();
    }
    HOST.store(7, &keep);
    d.unmap_ok(X, PAGE)?;
    dev.to_ram(X)?;
    if expect_page(
        &mut o,
        &format!("DMA write to IOVA {X:#x} right after the strict UNMAP returned"),
        &HOST.load(7),
        ("its old contents", &keep),
    ) {
        o.note(format!(
            "DMA write to IOVA {X:#x} landed in {a:#x} before UNMAP and was refused right after it (no stale TLB entry)"
        ));
    }
    check_i2p(&mut o, d.id, X, None);
    o.finish()
}

pub fn domain_isolation(env: &Env) -> R {
    let (mut d1, v1) = fixture(env, 0, 0)?;
    let (mut d2, v2) = fixture(env, 1, 0)?;
    let mut o = Outcome::new();
    let (a, b) = (HOST.page(8), HOST.page(9));
    d1.map_ok(X, a, PAGE, prot::ALL)?;
    d2.map_ok(X, b, PAGE, prot::ALL)?;
    let (f1, f2) = (pat(tag::FILL), pat(tag::FILL2));
    HOST.store(8, &ZERO);
    HOST.store(9, &ZERO);
    STAGE.store(v1.d.index, &f1);
    STAGE.store(v2.d.index, &f2);
    // Both devices at once: same IOVAs, different domains.
    let p1 = v1.d.edu.start_to_device(STAGE_IOVA, 0, PAGE)?;
    let p2 = v2.d.edu.start_to_device(STAGE_IOVA, 0, PAGE);
    let w1 = p1.wait();
    p2?.wait()?;
    w1?;
    let p1 = v1.d.edu.start_to_ram(0, X, PAGE)?;
    let p2 = v2.d.edu.start_to_ram(0, X, PAGE);
    let w1 = p1.wait();
    p2?.wait()?;
    w1?;
    let cands = [("edu #1's data", &f1), ("edu #2's data", &f2)];
    for (i, page, want, name) in [(8, a, &f1, "edu #1"), (9, b, &f2, "edu #2")] {
        let got = HOST.load(i);
        if got != *want {
            o.fail(format!(
                "IOVA {X:#x} of {name}'s domain should be PA {page:#x}, which holds {}",
                which(&got, &cands)
            ));
        }
    }
    if o.problems.is_empty() {
        o.note(format!(
            "edu #1 (endpoint {:#x}) in domain {} and edu #2 (endpoint {:#x}) in domain {} wrote IOVA {X:#x} at the same time: each reached its own page ({a:#x}, {b:#x})",
            v1.ep(),
            d1.id,
            v2.ep(),
            d2.id
        ));
    }
    o.finish()
}

// ---------------------------------------------------------------------------------------
// Batched invalidation
// ---------------------------------------------------------------------------------------

/// `batched-unmap-pending`, `batched-donate-pending`, `batched-flush`: one batched
/// domain, one page through its life.
pub fn batched(env: &Env) -> [R; 3] {
    let not_run =
        || Err::<String, String>("not run: an earlier step of the batched sequence failed".into());
    let (mut d, dev) = match fixture(env, 0, domain_flags::BATCHED) {
        Ok(f) => f,
        Err(e) => {
            return [
                Err(e.clone()),
                Err(format!("not run: {e}")),
                Err(format!("not run: {e}")),
            ];
        }
    };
    let a = DONATABLE.page(1);
    let (fill, keep) = (pat(tag::FILL), pat(tag::KEEP));
    let setup = (|| -> Result<[u64; 3], String> {
        let p0 = pages()?;
        d.map_ok(X, a, PAGE, prot::ALL)?;
        // SAFETY: the page is the program's (not donated).
        unsafe { DONATABLE.store(1, &ZERO) };
        dev.fill(&fill)?;
        dev.to_ram(X)?;
        // SAFETY: as above.
        let got = unsafe { DONATABLE.load(1) };
        if let Some(diff) = differs(&got, &fill) {
            return Err(format!(
                "DMA write to IOVA {X:#x} before UNMAP did not land in {a:#x}: {diff}"
            ));
        }
        Ok(p0)
    })();
    let p0 = match setup {
        Ok(p) => p,
        Err(e) => return [Err(e), not_run(), not_run()],
    };

    // 1. UNMAP: the PTE goes at once, the page stays pinned until the invalidation.
    let t0 = el1_rt::rt::counter();
    let r1 = (|| -> R {
        d.unmap_ok(X, PAGE)?;
        let mut o = Outcome::new();
        let p1 = pages()?;
        check_i2p(&mut o, d.id, X, None);
        let us = us_since(t0);
        if p1[0] != p0[0] + 1 || p1[1] != p0[1] + 1 {
            o.fail(format!(
                "after the batched UNMAP, STATS pinned/pending = {}/{}, expected {}/{} (page still pinned, 1 pending)",
                p1[0], p1[1], p0[0] + 1, p0[1] + 1
            ));
            if us > DEADLINE_US {
                o.fail(format!(
                    "(inconclusive: {us} µs passed, the 10 ms deadline may have flushed)"
                ));
            }
        } else {
            o.note(format!(
                "UNMAP returned; {a:#x} still pinned, 1 page pending invalidation ({us} µs later)"
            ));
        }
        o.finish()
    })();
    if r1.is_err() {
        return [r1, not_run(), not_run()];
    }

    // 2. The page cannot change owner while its invalidation is pending. DESIGN.md (I2)
    // allows two answers: BUSY (the page stays pinned until FLUSH), or a donation that
    // first completes the pending invalidation. Either way no device may reach the page
    // once it is Warden's.
    let mut donated = false;
    let r2 = (|| -> R {
        let mut o = Outcome::new();
        // SAFETY: if this succeeds, the page is reclaimed below before the CPU touches it.
        let r = unsafe { smccc::mem_donate(a, 1) };
        donated = r.ok();
        let us = us_since(t0);
        if r.is(Error::Busy) {
            match pages() {
                Ok(p) if p[0] == p0[0] + 1 && p[1] == p0[1] + 1 => o.note(format!(
                    "MEM_DONATE({a:#x}, 1) with its batched UNMAP pending = BUSY; still pinned and pending"
                )),
                Ok(p) => o.fail(format!(
                    "after MEM_DONATE = BUSY, pinned/pending = {}/{}, expected {}/{}",
                    p[0], p[1], p0[0] + 1, p0[1] + 1
                )),
                Err(e) => o.fail(e),
            }
        } else if r.ok() {
            // The donation must have completed the invalidation first: nothing pending,
            // the pin gone, the page donated; and a DMA through the old IOVA (which the
            // SMMU's TLB held) must not reach it.
            match pages() {
                Ok(p) if p[0] == p0[0] && p[1] == p0[1] && p[2] == p0[2] + 1 => {}
                Ok(p) => o.fail(format!(
                    "MEM_DONATE of a page pending invalidation succeeded, after which pinned/pending/donated = {}/{}/{}, expected {}/{}/{} (invalidation completed first)",
                    p[0], p[1], p[2], p0[0], p0[1], p0[2] + 1
                )),
                Err(e) => o.fail(e),
            }
            let other = pat(tag::FILL2);
            drain_events();
            let dma = dev.fill(&other).and_then(|()| dev.to_ram(X));
            // MEM_RECLAIM zeroes the page, so its contents cannot show whether the DMA
            // landed: the SMMU's fault event for IOVA X does (no stale TLB entry hit).
            let fault = fault_reported(dev.ep(), X, false);
            let back = reclaim(a, 1);
            donated = back.is_err();
            back?;
            dma?;
            // SAFETY: reclaimed just above.
            let got = unsafe { DONATABLE.load(1) };
            if let Err(e) = &fault {
                o.fail(format!(
                    "while {a:#x} was donated, a DMA write through IOVA {X:#x} did not fault (a stale translation may have reached it): {e}"
                ));
            }
            if got != ZERO {
                o.fail(format!(
                    "MEM_RECLAIM gave {a:#x} back not zeroed (it holds {})",
                    which(
                        &got,
                        &[("the DMA's data", &other), ("its old pattern", &fill)]
                    )
                ));
            }
            if let (Ok(f), true) = (&fault, got == ZERO) {
                o.note(format!(
                    "MEM_DONATE({a:#x}, 1) with its batched UNMAP pending = 0 after completing the invalidation first ({us} µs after UNMAP; pin released, nothing pending); a DMA write through IOVA {X:#x} meanwhile faulted ({f}); reclaimed zeroed"
                ));
            }
        } else {
            o.fail(format!(
                "MEM_DONATE({a:#x}, 1) with its batched UNMAP pending = {}, expected BUSY (or 0 after completing the invalidation)",
                r.status()
            ));
        }
        o.finish()
    })();
    if donated {
        return [
            r1,
            r2,
            Err("not run: the donated page could not be reclaimed".into()),
        ];
    }

    // 3. FLUSH completes the invalidation: DMA faults, pins drop, the page can go.
    let r3 = (|| -> R {
        let mut o = Outcome::new();
        if !o.want_ok(format!("FLUSH({})", d.id), smccc::flush(d.id)) {
            return o.finish();
        }
        let p = pages()?;
        if p[0] != p0[0] || p[1] != p0[1] {
            o.fail(format!(
                "after FLUSH, pinned/pending = {}/{}, expected {}/{}",
                p[0], p[1], p0[0], p0[1]
            ));
        }
        // SAFETY: the page is the program's (never donated, or reclaimed above).
        unsafe { DONATABLE.store(1, &keep) };
        dev.to_ram(X)?;
        // SAFETY: as above.
        let got = unsafe { DONATABLE.load(1) };
        if differs(&got, &keep).is_some() {
            o.fail(format!(
                "DMA write to IOVA {X:#x} after FLUSH reached {a:#x} (it holds {})",
                which(&got, &[("edu's data", &fill)])
            ));
        } else {
            o.note(format!("after FLUSH a DMA write to IOVA {X:#x} is refused"));
        }
        // SAFETY: reclaimed right below before the CPU touches it again.
        let r = unsafe { smccc::mem_donate(a, 1) };
        if o.want_ok(format!("MEM_DONATE({a:#x}, 1) after FLUSH"), r) {
            match reclaim(a, 1) {
                Ok(s) => o.note(format!("MEM_DONATE = 0; {s}")),
                Err(e) => {
                    o.fail(e);
                    return o.finish();
                }
            }
            // SAFETY: reclaimed.
            let got = unsafe { DONATABLE.load(1) };
            if let Some(diff) = differs(&got, &ZERO) {
                o.fail(format!("MEM_RECLAIM gave {a:#x} back not zeroed: {diff}"));
            }
        }
        o.finish()
    })();
    [r1, r2, r3]
}

pub fn batched_deadline(env: &Env) -> R {
    let (mut d, dev) = fixture(env, 0, domain_flags::BATCHED)?;
    let mut o = Outcome::new();
    let a = HOST.page(10);
    let (fill, keep) = (pat(tag::FILL3), pat(tag::KEEP));
    let p0 = pages()?;
    d.map_ok(X, a, PAGE, prot::ALL)?;
    HOST.store(10, &ZERO);
    dev.fill(&fill)?;
    dev.to_ram(X)?;
    if !expect_page(
        &mut o,
        &format!("DMA write to IOVA {X:#x} before UNMAP"),
        &HOST.load(10),
        ("edu's data", &fill),
    ) {
        return o.finish();
    }
    let t0 = el1_rt::rt::counter();
    d.unmap_ok(X, PAGE)?;
    let p1 = pages()?;
    let us1 = us_since(t0);
    if p1[1] != p0[1] + 1 {
        o.fail(format!(
            "right after the batched UNMAP ({us1} µs), pending = {}, expected {}",
            p1[1],
            p0[1] + 1
        ));
    }
    // Past the 10 ms deadline, without a call...
    el1_rt::rt::delay_us((15_000u64).saturating_sub(us_since(t0)));
    let waited = us_since(t0);
    // ...then any call: the queue must be flushed by the time it returns.
    let _ = smccc::revision();
    let p2 = pages()?;
    if p2[0] != p0[0] || p2[1] != p0[1] {
        o.fail(format!(
            "{waited} µs after the batched UNMAP and a hypercall, pinned/pending = {}/{}, expected {}/{} (the deadline flush did not happen)",
            p2[0], p2[1], p0[0], p0[1]
        ));
    } else {
        o.note(format!("pending 1 right after UNMAP; {waited} µs later, after one REVISION call, nothing pending and the page unpinned"));
    }
    HOST.store(10, &keep);
    dev.to_ram(X)?;
    if expect_page(
        &mut o,
        &format!("DMA write to IOVA {X:#x} after the deadline flush"),
        &HOST.load(10),
        ("its old contents", &keep),
    ) {
        o.note("DMA to the IOVA is refused");
    }
    o.finish()
}

/// Domains held alive to use up every domain slot or VMID; freed when dropped.
struct Hold(Vec<u64>);

impl Drop for Hold {
    fn drop(&mut self) {
        let mut bad = 0;
        for &id in &self.0 {
            if !smccc::domain_free(id).ok() {
                bad += 1;
            }
        }
        if bad != 0 {
            el1_rt::println!("conformance: cleanup: {bad} held domain(s) could not be freed");
        }
    }
}

pub fn vmid_recycle(env: &Env) -> R {
    let mut o = Outcome::new();
    let (a, b) = (HOST.page(11), HOST.page(12));
    let (fill, keep) = (pat(tag::FILL), pat(tag::KEEP));
    let p0 = pages()?;
    // Use up every domain slot or VMID (whichever runs out first) and give one back, so
    // that the second domain below can only get what the first one had: its slot when
    // slots run out first, its VMID when VMIDs do (8-bit VMIDs). Warden hands both out
    // round-robin, so without this the new domain would get a fresh VMID.
    let mut hold = Hold(Vec::new());
    let stop = loop {
        let r = smccc::domain_alloc(0);
        if !r.ok() || hold.0.len() >= 70_000 {
            break r;
        }
        hold.0.push(r.x1);
    };
    let held = hold.0.len() as u64;
    let forced = stop.is(Error::NoSpc) && held > 0;
    // Every VMID but the host's is taken when `held` reaches 2^bits - 1.
    let limited_by = match env.feat {
        Some(f) if f.vmid_bits < 64 && held + 1 >= 1 << f.vmid_bits => "VMIDs",
        _ => "domain slots",
    };
    if forced {
        let id = hold.0.pop().expect("held");
        if !smccc::domain_free(id).ok() {
            return Err(format!("DOMAIN_FREE({id}) of a held domain failed"));
        }
    } else {
        o.fail(format!(
            "DOMAIN_ALLOC = {} after {held} domains, expected NOSPC once slots or VMIDs run out",
            stop.status()
        ));
        drop(core::mem::replace(&mut hold, Hold(Vec::new())));
    }
    let (mut d1, dev) = fixture(env, 0, domain_flags::BATCHED)?;
    d1.map_ok(X, a, PAGE, prot::ALL)?;
    HOST.store(11, &ZERO);
    dev.fill(&fill)?;
    // Fills the SMMU's TLB with (VMID of d1, X) -> a.
    dev.to_ram(X)?;
    if !expect_page(
        &mut o,
        &format!("DMA write to IOVA {X:#x} in the first domain"),
        &HOST.load(11),
        ("edu's data", &fill),
    ) {
        return o.finish();
    }
    // Batched UNMAPs, no FLUSH: the invalidation is still pending when the domain goes.
    d1.unmap_ok(X, PAGE)?;
    d1.unmap_ok(STAGE_IOVA, PAGE)?;
    d1.detach(dev.ep())?;
    let id1 = d1.id;
    d1.free()?;
    crate::env::check_pins(
        &mut o,
        p0,
        "after DOMAIN_FREE of the batched domain with UNMAPs pending",
    );
    let (mut d2, dev) = fixture(env, 0, 0)?;
    d2.map_ok(X, b, PAGE, prot::ALL)?;
    HOST.store(11, &keep);
    HOST.store(12, &ZERO);
    // edu's buffer still holds `fill`.
    dev.to_ram(X)?;
    let (ga, gb) = (HOST.load(11), HOST.load(12));
    if ga != keep {
        o.fail(format!("DMA write to IOVA {X:#x} in the new domain {} reached the old domain's page {a:#x}: a stale translation", d2.id));
    }
    if gb != fill {
        o.fail(format!("DMA write to IOVA {X:#x} in the new domain {} did not land in its page {b:#x} (it holds {})", d2.id, which(&gb, &[("edu's data", &fill)])));
    }
    if o.problems.is_empty() {
        o.note(format!(
            "{held} domains held until NOSPC ({limited_by} ran out), one given back; domain {id1} (IOVA {X:#x} -> {a:#x}, in the SMMU TLB, UNMAP pending) freed; domain {} ({}{}) maps {X:#x} -> {b:#x}: DMA lands in {b:#x}, {a:#x} untouched",
            d2.id,
            if d2.id == id1 { "same ID" } else { "another ID" },
            if limited_by == "VMIDs" { ", necessarily the same VMID" } else { "" }
        ));
    }
    drop(d2);
    drop(hold);
    o.finish()
}

// ---------------------------------------------------------------------------------------
// Warden's memory and fault events
// ---------------------------------------------------------------------------------------

pub fn dma_carveout_fault(env: &Env) -> R {
    let dev = env.dev(0)?;
    let c = env.carve()?;
    let mut o = Outcome::new();
    let fill = pat(tag::FILL);
    for (name, t) in [
        ("base", el1_rt::logic::carve_out_targets(c)[0]),
        ("middle", el1_rt::logic::carve_out_targets(c)[1]),
    ] {
        dev.fill(&fill)?;
        drain_events();
        // No call into Warden from the read to the write: if the read does reach Warden's
        // memory, the write puts back the very bytes it got.
        dev.to_device(t)?;
        let buf = dev.read()?;
        dev.to_ram(t)?;
        let read = judge_refused_read(&buf, &fill, None);
        if read.leaked() {
            o.fail(format!(
                "identity-domain DMA read of the carve-out {name} {t:#x} delivered data: {}",
                describe_read(read)
            ));
        } else {
            o.note(format!(
                "DMA read of carve-out {name} {t:#x} delivered nothing"
            ));
        }
        match fault_reported(dev.ep(), t, false) {
            Ok(s) => o.note(format!("DMA write to it faulted: {s}")),
            Err(e) => o.fail(format!(
                "identity-domain DMA write to the carve-out {name} {t:#x}: {e}"
            )),
        }
    }
    o.finish()
}

pub fn event_poll(env: &Env) -> R {
    let dev = env.dev(0)?;
    let mut o = Outcome::new();
    let (_, end) = poll_events(1024);
    if let Err(e) = end {
        o.fail(format!("draining earlier events: {e}"));
    }
    let p = DONATABLE.page(2);
    // SAFETY: the page is touched again only after MEM_RECLAIM returned it.
    let r = unsafe { smccc::mem_donate(p, 1) };
    if !o.want_ok(format!("MEM_DONATE({p:#x}, 1)"), r) {
        return o.finish();
    }
    let dma = dev.to_ram(p);
    let (evs, end) = poll_events(1024);
    match reclaim(p, 1) {
        Ok(_) => {}
        Err(e) => o.fail(e),
    }
    dma?;
    let want = |e: &crate::plan::Event| {
        e.matches(dev.ep(), p, false)
            && e.kind() == event_type::F_TRANSLATION
            && e.info & event::FLAG_STAGE2 != 0
    };
    match evs.iter().find(|e| want(e)) {
        Some(e) => o.note(format!("a DMA write to donated page {p:#x}: {} event(s), e.g. {e}", evs.len())),
        None => o.fail(format!(
            "after a DMA write to donated page {p:#x}, EVENT_POLL gave {} event(s){} but none with endpoint {:#x}, that page, F_TRANSLATION, stage 2, write",
            evs.len(),
            evs.first().map_or(String::new(), |e| format!(" (first: {e})")),
            dev.ep()
        )),
    }
    match end {
        Ok(()) => o.note("then NOENT"),
        Err(e) => o.fail(e),
    }
    o.finish()
}

pub fn donate_mapped_busy(_: &Env) -> R {
    let a = DONATABLE.page(3);
    let mut o = Outcome::new();
    let mut d = Dom::alloc(0)?;
    d.map_ok(X, a, PAGE, prot::READ)?;
    // SAFETY: if this wrongly succeeds, the page is reclaimed before the CPU touches it
    // (it never does in this check).
    let r = unsafe { smccc::mem_donate(a, 1) };
    o.want_err(
        format!("MEM_DONATE({a:#x}, 1) while mapped in domain {}", d.id),
        r,
        Error::Busy,
    );
    if r.ok() {
        if let Err(e) = reclaim(a, 1) {
            o.fail(e);
        }
        return o.finish();
    }
    d.unmap_ok(X, PAGE)?;
    // SAFETY: as above.
    let r = unsafe { smccc::mem_donate(a, 1) };
    if o.want_ok(format!("MEM_DONATE({a:#x}, 1) after the strict UNMAP"), r) {
        match reclaim(a, 1) {
            Ok(s) => o.note(format!("after UNMAP: MEM_DONATE = 0; {s}")),
            Err(e) => o.fail(e),
        }
    }
    o.finish()
}
