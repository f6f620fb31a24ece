//! The checks. Each prints `GIC PASS <name>: details` or `GIC FAIL <name>: why`.
//!
//! - `its-baser-donated`: `GITS_BASER` (device table) at a donated page P is refused
//!   (reads back otherwise); after `MEM_RECLAIM` returned P, a MAPD that an ITS using P
//!   would record there leaves P all-zero.
//! - `its-mapd-donated`: a MAPD whose ITT is a donated page P is skipped; after reclaim,
//!   a MAPTI that would write the translation entry into P leaves P all-zero.
//! - `its-forged-dte`: a device table entry the program writes into its own device
//!   table (in QEMU's format) naming a page P it donated and reclaimed as the ITT: a
//!   MAPTI for that device must leave P all-zero (Warden's ITS uses its own copy of the
//!   table).
//! - `gicr-pendbaser-donated`: `GICR_PENDBASER` at donated pages P is refused; after
//!   reclaim, EnableLPIs and an LPI raised with INT (which a redistributor using P would
//!   record in P) leave P all-zero.
//! - `its-legit-lpi`: with tables in the program's own memory the ITS works: the LPI an
//!   INT raises is pending in the program's pending table, its ITT holds the entry.
//! - `gic-pins-busy`: `MEM_DONATE` of the pages the GIC now uses (ITT, LPI pending and
//!   property tables, command queue) is BUSY.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::UnsafeCell;

use hyp::dtb::{GicVersion, Platform};
use hyp::gic::regs::{FRAME, cmd, gicr, gits};

use el1_rt::rt::{self, report};
use el1_rt::{println, smccc};

/// The checks, in the order they run (the harness expects exactly these).
pub const CHECKS: [&str; 6] = [
    "its-baser-donated",
    "its-mapd-donated",
    "its-forged-dte",
    "gicr-pendbaser-donated",
    "its-legit-lpi",
    "gic-pins-busy",
];

const PAGE: u64 = 4096;
const NPAGES: usize = 64;
/// Page indices in [`MEM`].
const PEND: usize = 0; // 64 KiB aligned, 2 pages used (16 ID bits)
const P3: usize = 16; // 64 KiB aligned, 2 pages donated
const PROP: usize = 32; // 14 pages
const QUEUE: usize = 48;
const DT: usize = 49;
const CT: usize = 50;
const P1: usize = 51;
const P2: usize = 52;
const ITT1: usize = 53;
const ITT3: usize = 54;
const ITT4: usize = 55;
const P4: usize = 56;
/// `GICR_PROPBASER.IDbits`: 16 ID bits.
const ID_BITS: u64 = 15;
/// MAPD Size: 32 events.
const EVENT_BITS: u64 = 5;
/// How long the ITS may take for a command.
const CMD_MS: u64 = 200;

/// The program's GIC memory: only ever accessed with aligned volatile 64-bit accesses
/// (and by the GIC), and pages are touched only while the program owns them.
#[repr(C, align(65536))]
struct Mem(UnsafeCell<[u64; NPAGES * 512]>);
// SAFETY: one CPU uses it, with volatile accesses only.
unsafe impl Sync for Mem {}
static MEM: Mem = Mem(UnsafeCell::new([0; NPAGES * 512]));

fn page(i: usize) -> u64 {
    MEM.0.get() as u64 + i as u64 * PAGE
}

fn rd(pa: u64) -> u64 {
    let v: u64;
    // SAFETY: an aligned word of MEM (owned at this point, see the callers) or a GIC
    // register the program may read. A plain `LDR` (no writeback, no pair), so that a
    // trapped access has a valid syndrome for Warden to emulate.
    unsafe { core::arch::asm!("ldr {v}, [{a}]", a = in(reg) pa, v = out(reg) v, options(nostack)) };
    v
}

fn wr(pa: u64, v: u64) {
    // SAFETY: as in `rd`.
    unsafe { core::arch::asm!("str {v}, [{a}]", a = in(reg) pa, v = in(reg) v, options(nostack)) };
}

fn rd32(pa: u64) -> u64 {
    let v: u32;
    // SAFETY: as in `rd`.
    unsafe {
        core::arch::asm!("ldr {v:w}, [{a}]", a = in(reg) pa, v = out(reg) v, options(nostack))
    };
    u64::from(v)
}

fn wr32(pa: u64, v: u64) {
    let v = v as u32;
    // SAFETY: as in `rd`.
    unsafe {
        core::arch::asm!("str {v:w}, [{a}]", a = in(reg) pa, v = in(reg) v, options(nostack))
    };
}

fn zero(first: usize, pages: usize) {
    for w in 0..pages as u64 * 512 {
        wr(page(first) + 8 * w, 0);
    }
}

/// The first non-zero word of the pages: (offset, value).
fn nonzero(first: usize, pages: usize) -> Option<(u64, u64)> {
    (0..pages as u64 * 512)
        .map(|w| (8 * w, rd(page(first) + 8 * w)))
        .find(|&(_, v)| v != 0)
}

fn donate(first: usize, pages: u64) -> smccc::Ret {
    // SAFETY: the program does not touch the pages until MEM_RECLAIM gave them back.
    unsafe { smccc::mem_donate(page(first), pages) }
}

/// MEM_RECLAIM that must give back exactly `first` (`pages` pages).
fn reclaim(first: usize, pages: u64) -> Result<(), String> {
    let r = smccc::mem_reclaim(pages);
    if r.ok() && r.x1 == page(first) && r.x2 == pages {
        Ok(())
    } else {
        Err(format!(
            "MEM_RECLAIM({pages}) = {}, {:#x}, {}: expected {:#x}; the page cannot be checked",
            r.status(),
            r.x1,
            r.x2,
            page(first)
        ))
    }
}

/// The ITS and this CPU's redistributor.
struct Gic {
    its: u64,
    rd: u64,
    /// RDbase of MAPC/SYNC for this redistributor.
    rdbase: u64,
    dt: u64,
    ct: u64,
    wr: u64,
}

fn mpidr_aff() -> u64 {
    let v: u64;
    // SAFETY: reading MPIDR_EL1 has no side effect.
    unsafe { core::arch::asm!("mrs {}, mpidr_el1", out(reg) v, options(nomem, nostack)) };
    (v & 0xff_ffff) | ((v >> 32) & 0xff) << 24
}

fn wait(mut done: impl FnMut() -> bool) -> bool {
    let start = rt::counter();
    while rt::ms_between(start, rt::counter()) < CMD_MS {
        if done() {
            return true;
        }
    }
    done()
}

impl Gic {
    fn find(plat: &Platform) -> Result<Self, String> {
        let g = plat.gic.as_ref().ok_or("no GIC in the DTB")?;
        if g.version != GicVersion::V3 {
            return Err("not a GICv3".into());
        }
        let its = g
            .its
            .first()
            .ok_or("no arm,gic-v3-its in the DTB")?
            .base
            .get();
        let me = mpidr_aff();
        let mut found = None;
        'regions: for r in &g.redists {
            let mut at = r.base.get();
            while at + FRAME <= r.end() {
                let typer = rd(at + gicr::TYPER);
                if typer >> 32 == me {
                    found = Some((at, typer));
                    break 'regions;
                }
                if typer & gicr::TYPER_LAST != 0 {
                    break;
                }
                at += g
                    .redist_stride
                    .unwrap_or(if typer & gicr::TYPER_VLPIS != 0 {
                        4 * FRAME
                    } else {
                        2 * FRAME
                    });
            }
        }
        let (rdb, rtyper) = found.ok_or("no redistributor for this CPU")?;
        let typer = rd(its + gits::TYPER);
        let rdbase = if typer & gits::TYPER_PTA != 0 {
            rdb >> 16
        } else {
            gicr::typer_processor(rtyper)
        };
        let baser = |ty| {
            (0..gits::NR_BASER as u64)
                .map(|n| its + gits::BASER0 + 8 * n)
                .find(|&r| gits::baser_type(rd(r)) == ty)
        };
        let dt = baser(gits::TYPE_DEVICES).ok_or("no device table GITS_BASER")?;
        let ct = baser(gits::TYPE_COLLECTIONS).ok_or("no collection table GITS_BASER")?;
        println!(
            "gic: ITS {its:#x} GITS_TYPER {typer:#x}; redistributor {rdb:#x} GICR_TYPER {rtyper:#x}; device table at {:#x}, collections at {:#x}",
            dt - its,
            ct - its
        );
        Ok(Self {
            its,
            rd: rdb,
            rdbase,
            dt,
            ct,
            wr: 0,
        })
    }

    fn enable(&self, on: bool) -> Result<(), String> {
        wr32(self.its + gits::CTLR, u64::from(on));
        let ctlr = || rd32(self.its + gits::CTLR);
        if on || wait(|| ctlr() & gits::CTLR_QUIESCENT != 0) {
            Ok(())
        } else {
            Err("the ITS did not become quiescent".into())
        }
    }

    /// Queue (one page), collection table, CWRITER = 0; ITS disabled.
    fn setup(&mut self) -> Result<(), String> {
        self.enable(false)?;
        zero(QUEUE, 1);
        zero(CT, 1);
        wr(
            self.its + gits::CBASER,
            page(QUEUE) | gits::VALID | gits::SH_INNER | gits::INNER_RAWAWB,
        );
        wr(self.its + gits::CWRITER, 0);
        self.wr = 0;
        wr(self.ct, page(CT) | gits::VALID);
        let cb = rd(self.its + gits::CBASER);
        if cb & gits::CBASER_PA_MASK != page(QUEUE) {
            return Err(format!("GITS_CBASER reads back {cb:#x}"));
        }
        Ok(())
    }

    /// Writes one command and waits until the ITS has read past it.
    fn send(&mut self, c: [u64; 4]) -> Result<(), String> {
        for (i, w) in c.iter().enumerate() {
            wr(page(QUEUE) + self.wr + 8 * i as u64, *w);
        }
        self.wr = (self.wr + cmd::SIZE) % PAGE;
        rt::dsb();
        wr(self.its + gits::CWRITER, self.wr);
        let want = self.wr;
        let its = self.its;
        if wait(|| rd(its + gits::CREADR) & gits::OFFSET_MASK == want) {
            Ok(())
        } else {
            Err(format!(
                "command {:#x} not consumed: GITS_CREADR {:#x}, GITS_CWRITER {want:#x}",
                c[0],
                rd(its + gits::CREADR)
            ))
        }
    }

    fn mapd(&mut self, dev: u64, itt: u64) -> Result<(), String> {
        self.send([
            (dev << 32) | u64::from(cmd::MAPD),
            EVENT_BITS - 1,
            cmd::VALID | itt,
            0,
        ])
    }
    fn mapc(&mut self) -> Result<(), String> {
        let rdbase = self.rdbase;
        self.send([u64::from(cmd::MAPC), 0, cmd::VALID | (rdbase << 16), 0])
    }
    fn mapti(&mut self, dev: u64, event: u64, lpi: u64) -> Result<(), String> {
        self.send([
            (dev << 32) | u64::from(cmd::MAPTI),
            (lpi << 32) | event,
            0,
            0,
        ])
    }
    fn int(&mut self, dev: u64, event: u64) -> Result<(), String> {
        self.send([(dev << 32) | u64::from(cmd::INT), event, 0, 0])?;
        let rdbase = self.rdbase;
        self.send([u64::from(cmd::SYNC), 0, rdbase << 16, 0])
    }

    fn lpis_on(&self) -> bool {
        rd32(self.rd + gicr::CTLR) & gicr::CTLR_ENABLE_LPIS != 0
    }
    fn enable_lpis(&self) {
        wr32(self.rd + gicr::CTLR, gicr::CTLR_ENABLE_LPIS);
    }
}

/// Runs every check, reporting each.
pub fn run(plat: &Platform, _dtb: &[u8]) {
    let mut gic = match Gic::find(plat).and_then(|mut g| g.setup().map(|()| g)) {
        Ok(g) => g,
        Err(why) => {
            for name in CHECKS {
                report(name, Err(format!("not run: {why}")));
            }
            return;
        }
    };
    println!(
        "gic: target pages P1={:#x} P2={:#x} P3={:#x}",
        page(P1),
        page(P2),
        page(P3)
    );
    report("its-baser-donated", baser_donated(&mut gic));
    report("its-mapd-donated", mapd_donated(&mut gic));
    report("its-forged-dte", forged_dte(&mut gic));
    let pend = pendbaser_donated(&mut gic);
    let lpis = gic.lpis_on();
    report("gicr-pendbaser-donated", pend);
    report("its-legit-lpi", legit_lpi(&mut gic, lpis));
    report("gic-pins-busy", pins_busy());
}

fn baser_donated(gic: &mut Gic) -> Result<String, String> {
    zero(P1, 1);
    let r = donate(P1, 1);
    if !r.ok() {
        return Err(format!("MEM_DONATE(P1) = {}", r.status()));
    }
    let want = page(P1) | gits::VALID;
    wr(gic.dt, want);
    let rb = rd(gic.dt);
    let accepted = rb & gits::VALID != 0 && rb & gits::BASER_PA_MASK == page(P1);
    reclaim(P1, 1)?;
    gic.enable(true)?;
    let sent = gic.mapd(1, page(ITT1));
    gic.enable(false)?;
    sent?;
    let mut problems = Vec::new();
    if accepted {
        problems.push(format!(
            "GITS_BASER = donated page {:#x} accepted (reads back {rb:#x})",
            page(P1)
        ));
    }
    if let Some((off, v)) = nonzero(P1, 1) {
        problems.push(format!(
            "after reclaim, MAPD wrote {v:#x} into P1 at +{off:#x} (a device table entry)"
        ));
    }
    if problems.is_empty() {
        Ok(format!(
            "GITS_BASER = {want:#x} (donated) reads back {rb:#x}; after reclaim and MAPD, P1 is all-zero"
        ))
    } else {
        Err(problems.join("; "))
    }
}

fn mapd_donated(gic: &mut Gic) -> Result<String, String> {
    zero(DT, 1);
    let want = page(DT) | gits::VALID;
    wr(gic.dt, want);
    let rb = rd(gic.dt);
    if rb & gits::VALID == 0 || rb & gits::BASER_PA_MASK != page(DT) {
        return Err(format!(
            "GITS_BASER = own page {want:#x} refused (reads back {rb:#x})"
        ));
    }
    gic.enable(true)?;
    gic.mapc()?;
    zero(P2, 1);
    let r = donate(P2, 1);
    if !r.ok() {
        return Err(format!("MEM_DONATE(P2) = {}", r.status()));
    }
    let sent = gic.mapd(2, page(P2));
    reclaim(P2, 1)?;
    sent?;
    gic.mapti(2, 0, 8193)?;
    match nonzero(P2, 1) {
        None => Ok(format!(
            "MAPD with ITT = donated {:#x}, reclaim, MAPTI: P2 is all-zero",
            page(P2)
        )),
        Some((off, v)) => Err(format!(
            "after reclaim, MAPTI wrote {v:#x} into P2 at +{off:#x} (an ITT entry)"
        )),
    }
}

/// QEMU's device table entry: V (bit 0), Size (bits 5:1), ITT address >> 8 (bits 49:6).
fn qemu_dte(itt: u64) -> u64 {
    1 | (EVENT_BITS - 1) << 1 | (itt >> 8) << 6
}

fn forged_dte(gic: &mut Gic) -> Result<String, String> {
    zero(P4, 1);
    let r = donate(P4, 1);
    if !r.ok() {
        return Err(format!("MEM_DONATE(P4) = {}", r.status()));
    }
    // Device 9 was never mapped with MAPD.
    wr(page(DT) + 9 * 8, qemu_dte(page(P4)));
    reclaim(P4, 1)?;
    gic.mapti(9, 0, 8196)?;
    match nonzero(P4, 1) {
        None => Ok(format!(
            "forged entry naming {:#x} in the program's device table, MAPTI: P4 is all-zero",
            page(P4)
        )),
        Some((off, v)) => Err(format!(
            "MAPTI used the forged device table entry: wrote {v:#x} into P4 at +{off:#x}"
        )),
    }
}

fn pendbaser_donated(gic: &mut Gic) -> Result<String, String> {
    if gic.lpis_on() {
        return Err("LPIs already enabled on this redistributor".into());
    }
    zero(PROP, 14);
    // LPIs 8192..8207 enabled, priority 0xa0.
    wr(page(PROP), 0xa1a1_a1a1_a1a1_a1a1);
    wr(page(PROP) + 8, 0xa1a1_a1a1_a1a1_a1a1);
    let prop = page(PROP) | ID_BITS;
    wr(gic.rd + gicr::PROPBASER, prop);
    let rbp = rd(gic.rd + gicr::PROPBASER);
    if rbp & gicr::PROP_PA_MASK != page(PROP) {
        return Err(format!(
            "GICR_PROPBASER = own pages {prop:#x} reads back {rbp:#x}"
        ));
    }
    zero(P3, 2);
    let r = donate(P3, 2);
    if !r.ok() {
        return Err(format!("MEM_DONATE(P3, 2) = {}", r.status()));
    }
    wr(gic.rd + gicr::PENDBASER, page(P3));
    let rb = rd(gic.rd + gicr::PENDBASER);
    let accepted = rb & gicr::PEND_PA_MASK == page(P3);
    reclaim(P3, 2)?;
    gic.enable_lpis();
    let on = gic.lpis_on();
    gic.mapd(3, page(ITT3))?;
    gic.mapti(3, 0, 8194)?;
    gic.int(3, 0)?;
    let mut problems = Vec::new();
    if accepted {
        problems.push(format!(
            "GICR_PENDBASER = donated {:#x} accepted (reads back {rb:#x})",
            page(P3)
        ));
    }
    if let Some((off, v)) = nonzero(P3, 2) {
        problems.push(format!(
            "after reclaim, EnableLPIs ({}) and INT, P3 holds {v:#x} at +{off:#x} (pending bits)",
            if on { "set" } else { "refused" }
        ));
    }
    if problems.is_empty() {
        Ok(format!(
            "GICR_PENDBASER = donated {:#x} reads back {rb:#x}; after reclaim, EnableLPIs {} and INT: P3 is all-zero",
            page(P3),
            if on { "set" } else { "refused" }
        ))
    } else {
        Err(problems.join("; "))
    }
}

fn legit_lpi(gic: &mut Gic, lpis: bool) -> Result<String, String> {
    let mut notes = Vec::new();
    if lpis {
        notes.push("LPIs were already on (tables as the previous check left them)");
    } else {
        zero(PEND, 2);
        wr(gic.rd + gicr::PENDBASER, page(PEND));
        let rb = rd(gic.rd + gicr::PENDBASER);
        if rb & gicr::PEND_PA_MASK != page(PEND) {
            return Err(format!(
                "GICR_PENDBASER = own pages {:#x} reads back {rb:#x}",
                page(PEND)
            ));
        }
        gic.enable_lpis();
        if !gic.lpis_on() {
            return Err("EnableLPIs with the program's own tables did not stick".into());
        }
    }
    zero(ITT4, 1);
    gic.mapd(4, page(ITT4))?;
    gic.mapti(4, 1, 8195)?;
    gic.int(4, 1)?;
    let word = rd(page(PEND) + 8195 / 64 * 8);
    let pending = word & 1 << (8195 % 64) != 0;
    let ite = nonzero(ITT4, 1);
    match (pending, ite) {
        (true, Some((off, v))) => Ok(format!(
            "LPI 8195 pending in the program's pending table; ITT entry {v:#x} at +{off:#x}{}",
            notes.iter().map(|n| format!("; {n}")).collect::<String>()
        )),
        (p, i) => Err(format!(
            "LPI 8195 {} in the pending table (word {word:#x}); ITT {}",
            if p { "pending" } else { "not pending" },
            if i.is_some() { "written" } else { "empty" }
        )),
    }
}

fn pins_busy() -> Result<String, String> {
    let mut problems = Vec::new();
    let mut seen = Vec::new();
    for (what, p) in [
        ("ITT", ITT4),
        ("LPI pending table", PEND),
        ("LPI property table", PROP),
        ("command queue", QUEUE),
    ] {
        let r = donate(p, 1);
        if r.is(host_abi::Error::Busy) {
            seen.push(what);
        } else if r.ok() {
            problems.push(format!("MEM_DONATE of the {what} succeeded"));
            if let Err(e) = reclaim(p, 1) {
                problems.push(e);
            }
        } else {
            problems.push(format!("MEM_DONATE of the {what} = {}", r.status()));
        }
    }
    if problems.is_empty() {
        Ok(format!("MEM_DONATE BUSY for: {}", seen.join(", ")))
    } else {
        Err(problems.join("; "))
    }
}
