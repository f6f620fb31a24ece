//! The checks. Each prints `EDU PASS <name>: details` or `EDU FAIL <name>: why`
//! ([`rt::report`]); lines `edu: target <what>=0x…` name the addresses that DMA must not
//! reach, for the harness to find in Warden's SMMU fault log.
//!
//! - `dma-to-host`: RAM -> edu -> RAM of a pattern through the host's identity stage-2.
//! - `dma-into-carveout`: DMA at the first and the middle page of Warden's carve-out
//!   (`/reserved-memory/warden@…`): a read into edu's buffer, then a write back. The
//!   read must deliver nothing (edu's buffer stays as it was, or holds the zeros QEMU
//!   gives an aborted read); the write carries whatever the read delivered, so that if
//!   DMA does reach the carve-out (no SMMU protection) Warden gets its own bytes back and
//!   the run goes on. Whether the write landed the program cannot see: Warden's log must
//!   show the SMMU fault (the harness checks).
//! - `donate-blocks-dma`: a page donated with `MEM_DONATE` is out of reach of DMA in both
//!   directions (the write: Warden logs the SMMU fault); `MEM_RECLAIM` returns it
//!   zeroed, and DMA reaches it again.
//! - `donate-errors`: `MEM_DONATE` / `MEM_RECLAIM` refuse bad arguments with the ABI's
//!   error codes.
//! - `fw-cfg-dma`: QEMU's fw_cfg DMA interface (a DMA master no SMMU translates) is
//!   hidden from the host: with a page donated to Warden, the host points fw_cfg's DMA
//!   at it (the `QEMU` signature, selector 0). The register write must take an external
//!   abort, the DMA must not run (its access block stays as written), and after
//!   `MEM_RECLAIM` the page must not hold the signature. fw_cfg comes from the DTB
//!   Warden hands over (its node disabled, its `reg` still there).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use hyp::addr::PhysRange;
use hyp::dtb::Platform;

use el1_rt::edu::Edu;
use el1_rt::mem::{DmaPage, HostPage};
use el1_rt::rt::{self, report};
use el1_rt::{println, smccc};

use crate::logic::{
    self, FW_CFG_DMA_REG, FW_CFG_SIGNATURE, PAGE, PageWords, Status, Tag, WORDS, compare,
    describe_read, find_signature, fw_cfg_block_control, fw_cfg_dma_block, fw_cfg_read_control,
    judge_refused_read, pattern_page,
};

/// The checks, in the order they run (the harness expects exactly these).
pub const CHECKS: [&str; 5] = [
    "dma-to-host",
    "dma-into-carveout",
    "donate-blocks-dma",
    "donate-errors",
    "fw-cfg-dma",
];

const PAGE_LEN: u64 = PAGE as u64;

// ---------------------------------------------------------------------------------------
// DMA buffers
// ---------------------------------------------------------------------------------------

/// Source data of DMAs into edu.
static SRC: HostPage = HostPage::new();
/// Destination of DMAs out of edu.
static DST: HostPage = HostPage::new();
/// The page `donate-blocks-dma` donates (only ever accessed through `DmaPage`'s unsafe
/// methods, when the program owns it).
static DONATED: DmaPage = DmaPage::new();
/// The page `donate-errors` passes to calls that must fail. Never read or written by the
/// CPU, so a call that wrongly succeeds cannot make the program fault.
static SPARE: DmaPage = DmaPage::new();
/// The page `fw-cfg-dma` donates and points fw_cfg's DMA at.
static FW_CFG_TARGET: DmaPage = DmaPage::new();
/// fw_cfg's DMA access block.
static FW_CFG_BLOCK: HostPage = HostPage::new();

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Puts a page of `words` into edu's buffer (by DMA from `SRC`).
fn load_edu(edu: &Edu, words: &PageWords) -> Result<u64, String> {
    SRC.store(0, words);
    edu.to_device(SRC.addr(), 0, PAGE_LEN)
}

/// Reads edu's buffer back (by DMA into `DST`).
fn read_edu(edu: &Edu) -> Result<PageWords, String> {
    DST.store(0, &[0; WORDS]);
    edu.to_ram(0, DST.addr(), PAGE_LEN)?;
    Ok(DST.load(0))
}

// ---------------------------------------------------------------------------------------
// The checks
// ---------------------------------------------------------------------------------------

/// Sets edu up and runs every check, reporting each.
pub fn run(plat: &Platform, dtb: &[u8]) {
    let uid = smccc::call_uid();
    println!(
        "edu: hypervisor UID {:08x}-{:08x}-{:08x}-{:08x}",
        uid.x0 as u32, uid.x1 as u32, uid.x2 as u32, uid.x3 as u32
    );
    let bases = logic::warden_node_bases(dtb);
    let carve = logic::carve_outs(plat, &bases);
    for c in &carve {
        println!(
            "edu: Warden carve-out {:#x}..{:#x} (/reserved-memory/warden@{:x})",
            c.base.get(),
            c.end(),
            c.base.get()
        );
    }
    // fw_cfg needs no edu: run it whatever happens to edu.
    let fw_cfg = fw_cfg_dma(dtb);
    let edu = match Edu::setup(plat) {
        Ok((edu, info)) => {
            println!("edu: {info}");
            edu
        }
        Err(why) => {
            for name in CHECKS.iter().filter(|n| **n != "fw-cfg-dma") {
                report(name, Err(format!("not run: {why}")));
            }
            report("fw-cfg-dma", fw_cfg);
            return;
        }
    };
    report("dma-to-host", dma_to_host(&edu));
    report("dma-into-carveout", dma_into_carveout(&edu, &carve));
    report("donate-blocks-dma", donate_blocks_dma(&edu));
    report("donate-errors", donate_errors(carve.first().copied()));
    report("fw-cfg-dma", fw_cfg);
    println!("edu: heap {} KiB used", rt::heap_used().div_ceil(1024));
}

fn dma_to_host(edu: &Edu) -> Result<String, String> {
    let src = pattern_page(Tag::Source);
    SRC.store(0, &src);
    DST.store(0, &[0; WORDS]);
    let t1 = edu.to_device(SRC.addr(), 0, PAGE_LEN)?;
    let t2 = edu.to_ram(0, DST.addr(), PAGE_LEN)?;
    match compare(&DST.load(0), &src) {
        None => Ok(format!(
            "{PAGE} bytes RAM {:#x} -> edu -> RAM {:#x} arrived intact ({t1} ms + {t2} ms)",
            SRC.addr(),
            DST.addr()
        )),
        Some(m) => Err(format!(
            "{PAGE} bytes RAM {:#x} -> edu -> RAM {:#x}: {} of {WORDS} words differ, first word {} = {:#x}, expected {:#x}",
            SRC.addr(),
            DST.addr(),
            m.count,
            m.index,
            m.got,
            m.want
        )),
    }
}

fn dma_into_carveout(edu: &Edu, carve: &[PhysRange]) -> Result<String, String> {
    let c = *carve
        .first()
        .ok_or("the DTB has no /reserved-memory/warden@… node: Warden's carve-out is unknown")?;
    let targets = logic::carve_out_targets(c);
    println!("edu: target carveout-base={:#x}", targets[0]);
    println!("edu: target carveout-middle={:#x}", targets[1]);
    let filler = pattern_page(Tag::Filler);
    let mut problems = Vec::new();
    let mut seen = Vec::new();
    for (name, at) in [("base", targets[0]), ("middle", targets[1])] {
        load_edu(edu, &filler)?;
        // No call into Warden from here to the write below: Warden's memory cannot change
        // in between, so if the read does reach it the write puts back the same bytes.
        edu.to_device(at, 0, PAGE_LEN)?;
        let read = judge_refused_read(&read_edu(edu)?, &filler, None);
        edu.to_ram(0, at, PAGE_LEN)?;
        smccc::nudge();
        println!(
            "edu: carve-out {name} {at:#x}: DMA read then write of {PAGE} bytes; after the read: {}",
            describe_read(read)
        );
        if read.leaked() {
            problems.push(format!(
                "a DMA read of the carve-out {name} {at:#x} delivered data ({}): the carve-out is reachable by DMA (the DMA write that followed carried the same bytes back)",
                describe_read(read)
            ));
        }
        seen.push(format!("{name} {at:#x}"));
    }
    if problems.is_empty() {
        Ok(format!(
            "carve-out {:#x}..{:#x}: DMA reads of {} delivered nothing; DMA writes to the same pages issued (Warden must log the SMMU faults)",
            c.base.get(),
            c.end(),
            seen.join(" and ")
        ))
    } else {
        Err(problems.join("; "))
    }
}

fn donate_blocks_dma(edu: &Edu) -> Result<String, String> {
    let p = DONATED.addr();
    println!("edu: target donated-page={p:#x}");
    let secret = pattern_page(Tag::Donated);
    let marker = pattern_page(Tag::Marker);
    // SAFETY: the page has not been donated yet.
    unsafe { DONATED.store(0, &secret) };
    load_edu(edu, &marker)?;

    let mut problems = Vec::new();
    // SAFETY: from here on the program touches the page again only once MEM_RECLAIM has
    // returned it, or if MEM_DONATE failed (then it never left).
    let r = unsafe { smccc::mem_donate(p, 1) };
    let donated = r.x0 == 0;
    if !donated {
        problems.push(format!(
            "MEM_DONATE({p:#x}, 1) = {}, expected 0",
            Status(r.x0)
        ));
    }
    // edu -> P, then P -> edu: both must be refused.
    edu.to_ram(0, p, PAGE_LEN)?;
    edu.to_device(p, 0, PAGE_LEN)?;
    let read = judge_refused_read(&read_edu(edu)?, &marker, Some(&secret));
    smccc::nudge();
    if read.leaked() {
        problems.push(format!(
            "a DMA read of the donated page reached it: {}",
            describe_read(read)
        ));
    }

    let r = smccc::mem_reclaim(1);
    let reclaimed = r.x0 == 0 && r.x1 == p && r.x2 == 1;
    if r.x0 != 0 {
        problems.push(format!(
            "MEM_RECLAIM(1) = {}, expected 0 with x1 = {p:#x}, x2 = 1",
            Status(r.x0)
        ));
    } else if !reclaimed {
        problems.push(format!(
            "MEM_RECLAIM(1) returned x1 = {:#x}, x2 = {}: expected {p:#x}, 1",
            r.x1, r.x2
        ));
    }
    if donated && !reclaimed {
        problems.push(format!(
            "page {p:#x} is still Warden's: whether the DMA write reached it cannot be checked"
        ));
        return Err(problems.join("; "));
    }

    // SAFETY: the page is the program's again (reclaimed, or never donated).
    let now = unsafe { DONATED.load(0) };
    // MEM_RECLAIM hands pages back zeroed (Warden may have kept tables there), so the
    // page cannot show whether the refused DMA write landed: that is the SMMU fault the
    // harness finds in Warden's log for this address. The page must be all zeros; edu's
    // data in it would mean a write after the reclaim zeroed it.
    let expected = if donated { [0; WORDS] } else { secret };
    if let Some(m) = compare(&now, &expected) {
        let whose = if m.got == marker[m.index] {
            "edu's data"
        } else if m.got == secret[m.index] {
            "the page's old pattern: not zeroed"
        } else {
            "unknown data"
        };
        problems.push(format!(
            "after MEM_RECLAIM the page is not {} ({} of {WORDS} words differ, word {} = {:#x}: {whose})",
            if donated {
                "zeroed"
            } else {
                "as it was (never donated)"
            },
            m.count,
            m.index,
            m.got
        ));
    }

    // Back with the host: DMA reaches it again.
    load_edu(edu, &marker)?;
    edu.to_ram(0, p, PAGE_LEN)?;
    // SAFETY: as above.
    if let Some(m) = compare(&unsafe { DONATED.load(0) }, &marker) {
        problems.push(format!(
            "after MEM_RECLAIM a DMA write into {p:#x} did not land ({} of {WORDS} words differ, word {} = {:#x})",
            m.count, m.index, m.got
        ));
    }

    if problems.is_empty() {
        Ok(format!(
            "page {p:#x} donated: DMA read of it refused ({}), DMA write into it issued (Warden must log the SMMU fault); MEM_RECLAIM(1) = 0, {p:#x}, 1, the page zeroed; DMA write into it lands again",
            describe_read(read)
        ))
    } else {
        Err(problems.join("; "))
    }
}

fn donate_errors(carve: Option<PhysRange>) -> Result<String, String> {
    use host_abi::Error;
    let q = SPARE.addr();
    let mut calls: Vec<(String, u64, Error)> = Vec::new();
    let mut problems = Vec::new();
    // SAFETY: this MEM_DONATE and the two below must fail; one that wrongly succeeds can
    // only take the spare page, which the program never touches, or Warden's own memory.
    let r = unsafe { smccc::mem_donate(q + 0x10, 1) };
    calls.push((
        format!("MEM_DONATE({:#x}, 1)", q + 0x10),
        r.x0,
        Error::Invalid,
    ));
    match carve {
        Some(c) => {
            // SAFETY: see above.
            let r = unsafe { smccc::mem_donate(c.base.get(), 1) };
            calls.push((
                format!("MEM_DONATE(carve-out {:#x}, 1)", c.base.get()),
                r.x0,
                Error::Denied,
            ));
        }
        None => problems.push("no carve-out in the DTB to try MEM_DONATE on".into()),
    }
    // SAFETY: see above.
    let r = unsafe { smccc::mem_donate(q, 0) };
    calls.push((format!("MEM_DONATE({q:#x}, 0)"), r.x0, Error::Invalid));
    let r = smccc::mem_reclaim(0);
    calls.push(("MEM_RECLAIM(0)".into(), r.x0, Error::Invalid));

    let mut done = Vec::new();
    for (call, got, want) in calls {
        let line = format!("{call} = {}", Status(got));
        if got == want.to_reg() {
            done.push(line);
        } else {
            problems.push(format!("{line}, expected {}", Status(want.to_reg())));
        }
    }
    if problems.is_empty() {
        Ok(done.join("; "))
    } else {
        Err(problems.join("; "))
    }
}

fn fw_cfg_dma(dtb: &[u8]) -> Result<String, String> {
    let (regs, enabled) = logic::fw_cfg(dtb)
        .ok_or("the DTB has no qemu,fw-cfg-mmio node with a reg: fw_cfg cannot be found")?;
    let reg = regs.base.get() + FW_CFG_DMA_REG;
    let p = FW_CFG_TARGET.addr();
    println!(
        "edu: fw_cfg at {:#x} (node {}), DMA register {reg:#x}; donated page {p:#x}",
        regs.base.get(),
        if enabled { "enabled" } else { "disabled" }
    );
    let filler = pattern_page(Tag::Donated);
    // SAFETY: the page has not been donated yet.
    unsafe { FW_CFG_TARGET.store(0, &filler) };
    let control = fw_cfg_read_control(FW_CFG_SIGNATURE);
    let block = fw_cfg_dma_block(control, 4, p);
    let mut words = [0u64; WORDS];
    words[..2].copy_from_slice(&block);
    FW_CFG_BLOCK.store(0, &words);

    // SAFETY: from here on the page is touched again only once MEM_RECLAIM returned it.
    let r = unsafe { smccc::mem_donate(p, 1) };
    if r.x0 != 0 {
        return Err(format!(
            "MEM_DONATE({p:#x}, 1) = {}, expected 0",
            Status(r.x0)
        ));
    }
    // The host starts fw_cfg's DMA: a 64-bit big-endian write of the block's address.
    // SAFETY: a device register; an abort of the store comes back as its syndrome.
    let write = unsafe { rt::try_write64(reg, FW_CFG_BLOCK.addr().to_be()) };
    let after = fw_cfg_block_control(FW_CFG_BLOCK.load(0)[0]);
    let r = smccc::mem_reclaim(1);
    if r.x0 != 0 || r.x1 != p || r.x2 != 1 {
        return Err(format!(
            "MEM_RECLAIM(1) = {}, {:#x}, {}: expected 0, {p:#x}, 1 (the page stays Warden's; whether the DMA reached it cannot be checked)",
            Status(r.x0),
            r.x1,
            r.x2
        ));
    }
    // SAFETY: the page is the program's again.
    let now = unsafe { FW_CFG_TARGET.load(0) };

    let mut problems = Vec::new();
    let aborted = match write {
        Err(esr) if esr >> 26 == 0x25 && esr & 0x3f == 0x10 => {
            format!("the register write took a synchronous external abort (ESR {esr:#x})")
        }
        Err(esr) => {
            problems.push(format!(
                "the write of fw_cfg's DMA register {reg:#x} took an abort with ESR {esr:#x}, not a synchronous external abort"
            ));
            String::new()
        }
        Ok(()) => {
            problems.push(format!(
                "the write of fw_cfg's DMA register {reg:#x} completed: the host reaches a DMA master that no SMMU translates"
            ));
            String::new()
        }
    };
    if after != control {
        problems.push(format!(
            "the DMA ran: its access block's control went from {control:#x} to {after:#x}"
        ));
    }
    if let Some(at) = find_signature(&now) {
        problems.push(format!(
            "the page donated to Warden received fw_cfg's DMA: after MEM_RECLAIM it holds the \"QEMU\" signature at offset {at}"
        ));
    }
    if problems.is_empty() {
        Ok(format!(
            "fw_cfg DMA of its signature to donated page {p:#x}: {aborted}, the access block is untouched (control {after:#x}), no \"QEMU\" in the page after MEM_RECLAIM"
        ))
    } else {
        Err(problems.join("; "))
    }
}
