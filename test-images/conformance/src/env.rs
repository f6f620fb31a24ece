//! What every check uses: the machine as the DTB describes it (Warden's carve-outs, the
//! edu devices and their endpoints, FEATURES), the program's DMA buffers, domains that
//! clean up after themselves, DMA helpers, and result bookkeeping.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Display;

use el1_rt::edu::Edu;
use el1_rt::logic::{PageWords, Status, WORDS};
use el1_rt::mem::{DmaPages, HostPages};
use el1_rt::smccc::{self, Ret};
use el1_rt::{println, rt};
use host_abi::{Error, domain, prot, stats};
use hyp::addr::PhysRange;
use hyp::dtb::Platform;

use crate::plan::{self, Counters, Event, Features, PAGE};

// ---------------------------------------------------------------------------------------
// Buffers
// ---------------------------------------------------------------------------------------

/// Staging pages, one per edu: edu's buffer is filled from and read into these.
pub static STAGE: HostPages<2> = HostPages::new();
/// Pages that are never donated: DMA targets.
pub static HOST: HostPages<16> = HostPages::new();
/// Pages that checks donate to Warden (touched by the CPU only while the program owns
/// them).
pub static DONATABLE: DmaPages<8> = DmaPages::new();
/// `pool-exhaustion`'s donation (never touched by the CPU).
pub static POOL_DONATION: DmaPages<64> = DmaPages::new();
/// A page passed to calls that must fail or change nothing: never read or written by the
/// CPU, so a call that wrongly takes it cannot make the program fault.
pub static SPARE: DmaPages<1> = DmaPages::new();
/// 4 MiB, so that it holds a 2 MiB-aligned 2 MiB block whatever the load address
/// (`budget-block-map`; never donated).
pub static BLOCK: HostPages<1024> = HostPages::new();
/// Pages the SMP checks map: one per CPU in its own domain, and one all CPUs map in the
/// shared domain (index 0). Never touched by the CPU.
pub static SMP_PAGES: DmaPages<{ el1_rt::rt::MAX_CPUS + 1 }> = DmaPages::new();

/// Pattern tags of the suite's page contents.
pub mod tag {
    /// What edu's buffer is filled with.
    pub const FILL: u8 = 0x11;
    /// A second filling (e.g. the other edu).
    pub const FILL2: u8 = 0x22;
    /// What a page holds that a DMA must not change or deliver.
    pub const KEEP: u8 = 0x33;
    /// A third filling.
    pub const FILL3: u8 = 0x44;
}

/// A page of pattern `t`.
pub fn pat(t: u8) -> PageWords {
    el1_rt::logic::pattern_page(t)
}

/// A page of zeros.
pub const ZERO: PageWords = [0; WORDS];

/// Describes how a page differs from what it should hold (None: identical).
pub fn differs(got: &PageWords, want: &PageWords) -> Option<String> {
    el1_rt::logic::compare(got, want).map(|m| {
        format!(
            "{} of {WORDS} words differ, word {} = {:#x} (expected {:#x})",
            m.count, m.index, m.got, m.want
        )
    })
}

/// Names what a page holds, given the candidates (then the suite's own patterns).
pub fn which(got: &PageWords, candidates: &[(&str, &PageWords)]) -> String {
    if let Some((n, _)) = candidates.iter().find(|(_, c)| got == *c) {
        return String::from(*n);
    }
    if got.iter().all(|&w| w == 0) {
        return "zeros".into();
    }
    let known = [
        (tag::FILL, "FILL"),
        (tag::FILL2, "FILL2"),
        (tag::KEEP, "KEEP"),
        (tag::FILL3, "FILL3"),
    ];
    match known.iter().find(|(t, _)| *got == pat(*t)) {
        Some((_, n)) => format!("the suite's {n} pattern (what edu's buffer held at some point)"),
        None => format!("unknown data (word 0 = {:#x})", got[0]),
    }
}

// ---------------------------------------------------------------------------------------
// The machine
// ---------------------------------------------------------------------------------------

/// An edu device and its endpoint.
pub struct Device {
    pub edu: Edu,
    /// ATTACH's endpoint: (SMMU index << 32) | StreamID.
    pub ep: u64,
    /// Which staging page it uses.
    pub index: usize,
}

/// What the checks know about the machine.
pub struct Env<'p> {
    pub plat: &'p Platform,
    /// Warden's carve-outs (`/reserved-memory/warden@…`).
    pub carve: Vec<PhysRange>,
    /// The edu devices (at least one, normally two).
    pub devs: Vec<Device>,
    /// Why there are none, if so.
    pub devs_error: Option<String>,
    /// FEATURES, if Warden answers it.
    pub feat: Option<Features>,
    /// End of the highest RAM bank.
    pub ram_end: u64,
}

impl Env<'_> {
    /// Device `i`, or why the check cannot run.
    pub fn dev(&self, i: usize) -> Result<Dev<'_>, String> {
        match self.devs.get(i) {
            Some(d) => Ok(Dev {
                d,
                stage: STAGE.page(d.index),
            }),
            None => Err(match &self.devs_error {
                Some(e) => format!("not run: {e}"),
                None => format!(
                    "not run: needs edu device #{} (the machine has {}; the harness adds two: addr=2 and addr=3)",
                    i + 1,
                    self.devs.len()
                ),
            }),
        }
    }

    /// Warden's first carve-out, or why the check cannot run.
    pub fn carve(&self) -> Result<PhysRange, String> {
        self.carve.first().copied().ok_or_else(|| {
            "not run: the DTB has no /reserved-memory/warden@… node (Warden's carve-out is unknown)"
                .into()
        })
    }

    /// The IOVA bits of host-managed domains (FEATURES), or why the check cannot run.
    pub fn ias(&self) -> Result<u64, String> {
        self.feat
            .map(|f| f.ias)
            .ok_or_else(|| "not run: FEATURES is not served, so the IOVA size is unknown".into())
    }
}

// ---------------------------------------------------------------------------------------
// Calls and their results
// ---------------------------------------------------------------------------------------

/// `-2 (INVALID)` for an error.
pub fn st(e: Error) -> Status {
    Status(e.to_reg())
}

/// STATS(group), or why not.
pub fn stats3(group: u64) -> Result<Counters, String> {
    let r = smccc::stats(group);
    if r.ok() {
        Ok([r.x1, r.x2, r.x3])
    } else {
        Err(format!("STATS({group}) = {}", r.status()))
    }
}

/// STATS(PAGES): (pinned, pending, donated).
pub fn pages() -> Result<Counters, String> {
    stats3(stats::PAGES)
}

/// Polls EVENT_POLL until NOENT (at most `max` events); returns the events and whether
/// NOENT came.
pub fn poll_events(max: usize) -> (Vec<Event>, Result<(), String>) {
    let mut out = Vec::new();
    for _ in 0..max {
        let r = smccc::event_poll();
        if r.is(Error::NoEnt) {
            return (out, Ok(()));
        }
        if !r.ok() {
            return (out, Err(format!("EVENT_POLL = {}", r.status())));
        }
        out.push(Event {
            endpoint: r.x1,
            addr: r.x2,
            info: r.x3,
        });
    }
    (
        out,
        Err(format!("EVENT_POLL still had events after {max} polls")),
    )
}

/// Drains Warden's fault-event ring (events of earlier checks).
pub fn drain_events() {
    let _ = poll_events(1024);
}

/// Whether Warden reports an SMMU fault of `ep` on the page of `addr` (read or write),
/// polling the events that came since the last drain. Returns the verdict in words.
pub fn fault_reported(ep: u64, addr: u64, read: bool) -> Result<String, String> {
    let (evs, end) = poll_events(1024);
    let what = if read { "read" } else { "write" };
    match evs.iter().find(|e| e.matches(ep, addr, read)) {
        Some(e) => Ok(format!("EVENT_POLL reported the {what} fault ({e})")),
        None => Err(format!(
            "EVENT_POLL reported no {what} fault of endpoint {ep:#x} at {addr:#x} ({} other event(s){}{})",
            evs.len(),
            evs.first()
                .map_or(String::new(), |e| format!(", first: {e}")),
            end.err().map_or(String::new(), |e| format!("; {e}"))
        )),
    }
}

/// Collects what a check did and what went wrong.
#[derive(Default)]
pub struct Outcome {
    pub done: Vec<String>,
    pub problems: Vec<String>,
}

impl Outcome {
    pub fn new() -> Self {
        Self::default()
    }

    /// Notes something that went as expected.
    pub fn note(&mut self, s: impl Into<String>) {
        self.done.push(s.into());
    }

    /// Notes a problem.
    pub fn fail(&mut self, s: impl Into<String>) {
        self.problems.push(s.into());
    }

    /// Expects the call `what` (with result `r`) to have failed with `e`.
    pub fn want_err(&mut self, what: impl Display, r: Ret, e: Error) -> bool {
        if r.is(e) {
            self.note(format!("{what} = {}", r.status()));
            true
        } else {
            self.fail(format!("{what} = {}, expected {}", r.status(), st(e)));
            false
        }
    }

    /// Expects the call `what` to have failed (any error).
    pub fn want_any_err(&mut self, what: impl Display, r: Ret) -> bool {
        if r.ok() {
            self.fail(format!(
                "{what} succeeded (x1 = {:#x}), expected an error",
                r.x1
            ));
            false
        } else {
            self.note(format!("{what} = {}", r.status()));
            true
        }
    }

    /// Expects the call `what` to have succeeded.
    pub fn want_ok(&mut self, what: impl Display, r: Ret) -> bool {
        if r.ok() {
            true
        } else {
            self.fail(format!("{what} = {}, expected 0", r.status()));
            false
        }
    }

    /// Pass with what was done, or fail with the problems.
    pub fn finish(self) -> Result<String, String> {
        if self.problems.is_empty() {
            Ok(self.done.join("; "))
        } else {
            Err(self.problems.join("; "))
        }
    }
}

/// Expects IOVA_TO_PHYS(d, iova) to give `pa` (Some) or NOENT (None).
pub fn check_i2p(o: &mut Outcome, d: u64, iova: u64, pa: Option<u64>) {
    let r = smccc::iova_to_phys(d, iova);
    let what = format!("IOVA_TO_PHYS({d}, {iova:#x})");
    match pa {
        Some(pa) => {
            if r.ok() && r.x1 == pa {
                o.note(format!("{what} = {pa:#x}"));
            } else if r.ok() {
                o.fail(format!("{what} = {:#x}, expected {pa:#x}", r.x1));
            } else {
                o.fail(format!("{what} = {}, expected {pa:#x}", r.status()));
            }
        }
        None => {
            o.want_err(what, r, Error::NoEnt);
        }
    }
}

/// Expects the pinned and pending page counts to equal `before`'s.
pub fn check_pins(o: &mut Outcome, before: Counters, when: &str) {
    match pages() {
        Ok(now) if now[0] == before[0] && now[1] == before[1] => {}
        Ok(now) => o.fail(format!(
            "{when}: STATS pages pinned {} and pending {}, expected {} and {} (unchanged)",
            now[0], now[1], before[0], before[1]
        )),
        Err(e) => o.fail(format!("{when}: {e}")),
    }
}

/// Gives back pages donated from `base` (`pages` of them): MEM_RECLAIM until all are
/// back. Every page returned must be one of them.
pub fn reclaim(base: u64, pages: u64) -> Result<String, String> {
    let mut got = 0;
    let mut runs = Vec::new();
    while got < pages {
        let r = smccc::mem_reclaim(pages - got);
        if !r.ok() {
            return Err(format!(
                "MEM_RECLAIM({}) = {} with {got} of the {pages} page(s) from {base:#x} back",
                pages - got,
                r.status()
            ));
        }
        let end = base + pages * PAGE;
        if r.x2 == 0 || r.x1 < base || r.x1 + r.x2 * PAGE > end {
            return Err(format!(
                "MEM_RECLAIM({}) returned {} page(s) at {:#x}, not among the {pages} donated at {base:#x}",
                pages - got,
                r.x2,
                r.x1
            ));
        }
        got += r.x2;
        runs.push(format!("{:#x}+{}", r.x1, r.x2));
    }
    Ok(format!("MEM_RECLAIM gave back {}", runs.join(", ")))
}

// ---------------------------------------------------------------------------------------
// Domains that clean up after themselves
// ---------------------------------------------------------------------------------------

/// A host-managed domain allocated by a check. Dropping it detaches its endpoints (back
/// to the host identity domain), unmaps what it mapped, flushes and frees it, so that a
/// check that stops early leaves nothing behind for the next.
pub struct Dom {
    pub id: u64,
    maps: Vec<(u64, u64)>,
    attached: Vec<u64>,
    freed: bool,
}

impl Dom {
    /// DOMAIN_ALLOC(flags); the ID must be a host-managed one.
    pub fn alloc(flags: u64) -> Result<Dom, String> {
        let r = smccc::domain_alloc(flags);
        if !r.ok() {
            return Err(format!(
                "DOMAIN_ALLOC({flags:#x}) = {}, expected 0",
                r.status()
            ));
        }
        let d = Dom {
            id: r.x1,
            maps: Vec::new(),
            attached: Vec::new(),
            freed: false,
        };
        if d.id < domain::FIRST_MANAGED {
            let id = d.id;
            core::mem::forget(d);
            return Err(format!(
                "DOMAIN_ALLOC({flags:#x}) returned domain {id}, one of the fixed domains (host-managed ones start at {})",
                domain::FIRST_MANAGED
            ));
        }
        Ok(d)
    }

    /// MAP; a successful one is remembered for cleanup.
    pub fn map(&mut self, iova: u64, pa: u64, size: u64, prot: u64) -> Ret {
        let r = smccc::map(self.id, iova, pa, size, prot);
        if r.ok() && r.x1 != 0 {
            self.maps.push((iova, r.x1.min(size)));
        }
        r
    }

    /// MAP that must map all of it.
    pub fn map_ok(&mut self, iova: u64, pa: u64, size: u64, prot: u64) -> Result<(), String> {
        let r = self.map(iova, pa, size, prot);
        if r.ok() && r.x1 == size {
            Ok(())
        } else if r.ok() {
            Err(format!(
                "MAP({}, {iova:#x}, {pa:#x}, {size:#x}, {prot}) mapped {:#x} bytes, expected {size:#x}",
                self.id, r.x1
            ))
        } else {
            Err(format!(
                "MAP({}, {iova:#x}, {pa:#x}, {size:#x}, {prot}) = {}, expected 0",
                self.id,
                r.status()
            ))
        }
    }

    /// UNMAP; what it unmapped is forgotten.
    pub fn unmap(&mut self, iova: u64, size: u64) -> Ret {
        let r = smccc::unmap(self.id, iova, size);
        if r.ok() {
            let end = iova.saturating_add(r.x1);
            self.maps.retain(|&(a, _)| a < iova || a >= end);
        }
        r
    }

    /// UNMAP that must unmap all of it.
    pub fn unmap_ok(&mut self, iova: u64, size: u64) -> Result<(), String> {
        let r = self.unmap(iova, size);
        if r.ok() && r.x1 == size {
            Ok(())
        } else if r.ok() {
            Err(format!(
                "UNMAP({}, {iova:#x}, {size:#x}) unmapped {:#x} bytes, expected {size:#x}",
                self.id, r.x1
            ))
        } else {
            Err(format!(
                "UNMAP({}, {iova:#x}, {size:#x}) = {}, expected 0",
                self.id,
                r.status()
            ))
        }
    }

    /// ATTACH(self, ep).
    pub fn attach(&mut self, ep: u64) -> Result<(), String> {
        let r = smccc::attach(self.id, ep);
        if r.ok() {
            self.attached.push(ep);
            Ok(())
        } else {
            Err(format!(
                "ATTACH({}, {ep:#x}) = {}, expected 0",
                self.id,
                r.status()
            ))
        }
    }

    /// ATTACH(HOST, ep): the device goes back to the host identity domain.
    pub fn detach(&mut self, ep: u64) -> Result<(), String> {
        let r = smccc::attach(domain::HOST, ep);
        if r.ok() {
            self.attached.retain(|&e| e != ep);
            Ok(())
        } else {
            Err(format!(
                "ATTACH({}, {ep:#x}) (back to the host identity domain) = {}, expected 0",
                domain::HOST,
                r.status()
            ))
        }
    }

    /// DOMAIN_FREE (the caller detached and, if needed, unmapped first).
    pub fn free(mut self) -> Result<(), String> {
        let r = smccc::domain_free(self.id);
        if r.ok() {
            self.freed = true;
            Ok(())
        } else {
            Err(format!(
                "DOMAIN_FREE({}) = {}, expected 0",
                self.id,
                r.status()
            ))
        }
    }
}

impl Drop for Dom {
    fn drop(&mut self) {
        if self.freed {
            return;
        }
        let mut trouble = Vec::new();
        for ep in core::mem::take(&mut self.attached) {
            let r = smccc::attach(domain::HOST, ep);
            if !r.ok() {
                trouble.push(format!("ATTACH(0, {ep:#x}) = {}", r.status()));
            }
        }
        for (iova, size) in core::mem::take(&mut self.maps) {
            let r = smccc::unmap(self.id, iova, size);
            if !r.ok() {
                trouble.push(format!("UNMAP({:#x}, {size:#x}) = {}", iova, r.status()));
            }
        }
        let _ = smccc::flush(self.id);
        let r = smccc::domain_free(self.id);
        if !r.ok() {
            trouble.push(format!("DOMAIN_FREE = {}", r.status()));
        }
        if !trouble.is_empty() {
            println!(
                "conformance: cleanup of domain {}: {}",
                self.id,
                trouble.join(", ")
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// DMA
// ---------------------------------------------------------------------------------------

/// An edu device as a check drives it: `stage` is the device address of its staging
/// page in whatever domain the device is in (the page's PA on the host identity domain).
pub struct Dev<'e> {
    pub d: &'e Device,
    pub stage: u64,
}

impl Dev<'_> {
    /// The endpoint.
    pub fn ep(&self) -> u64 {
        self.d.ep
    }

    /// The staging page's physical address.
    pub fn stage_pa(&self) -> u64 {
        STAGE.page(self.d.index)
    }

    /// Fills edu's buffer with `words` (by DMA from the staging page).
    pub fn fill(&self, words: &PageWords) -> Result<(), String> {
        STAGE.store(self.d.index, words);
        self.to_device(self.stage)
            .map_err(|e| format!("filling edu's buffer: {e}"))
    }

    /// Reads edu's buffer (by DMA into the staging page).
    pub fn read(&self) -> Result<PageWords, String> {
        STAGE.store(self.d.index, &ZERO);
        self.to_ram(self.stage)
            .map_err(|e| format!("reading edu's buffer: {e}"))?;
        Ok(STAGE.load(self.d.index))
    }

    /// A page from device address `addr` into edu's buffer.
    pub fn to_device(&self, addr: u64) -> Result<(), String> {
        self.d.edu.to_device(addr, 0, PAGE).map(|_| ())
    }

    /// edu's buffer to a page at device address `addr`.
    pub fn to_ram(&self, addr: u64) -> Result<(), String> {
        self.d.edu.to_ram(0, addr, PAGE).map(|_| ())
    }
}

/// A domain with device `dev` attached and its staging page mapped at
/// [`plan::STAGE_IOVA`]: the usual start of a DMA check.
pub fn fixture<'e>(env: &'e Env<'_>, dev: usize, flags: u64) -> Result<(Dom, Dev<'e>), String> {
    let mut dv = env.dev(dev)?;
    let mut d = Dom::alloc(flags)?;
    d.map_ok(plan::STAGE_IOVA, dv.stage_pa(), PAGE, prot::ALL)?;
    d.attach(dv.ep())?;
    dv.stage = plan::STAGE_IOVA;
    Ok((d, dv))
}

/// The time since `start` in microseconds.
pub fn us_since(start: u64) -> u64 {
    rt::us_between(start, rt::counter())
}
