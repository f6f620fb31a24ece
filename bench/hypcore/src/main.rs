//! `hypcore SCENARIO`: one workload of Warden calls through `Hyp::dispatch` on the SMMU,
//! CPU-TLB and RAM models (`hyp::dma::world`), for `cargo xtask bench` section 2, run
//! under callgrind.
//!
//! The calls run inside [`bench_region`], the only function callgrind counts
//! (`--collect-atstart=no --toggle-collect=*bench_region*`): building the world, the
//! domain and its attachment, the STATS reads and the checks after it are not counted (the
//! models' own work on the calls is: they stand in for the hardware). The program prints
//! `ops N` (the operations the region made: MAP + UNMAP pairs, or donations), `stat NAME
//! VALUE` lines (how much each STATS counter and each SMMU model counter grew over the
//! region) and, for the equal-work check, `check ...` lines; it exits non-zero if a call
//! failed or a check did not hold.
//!
//! Scenarios: `strict`, `batched` (a host-managed 4 KiB domain with one endpoint attached
//! and one page mapped beside the workload, so the workload's tables stay), `donate` (one
//! MEM_DONATE of one host page per operation), each with a suffix `-btm` (SMMUs with
//! broadcast TLB maintenance) or `-cpu` (BTM, and domains invalidated with CPU TLBIs by
//! VMID: `domain_tlbi=cpu`), or none (no BTM).

use std::hint::black_box;
use std::process::ExitCode;

use host_abi::{domain_flags, stats};
use hyp::dma::Config;
use hyp::dma::world::{HOST_BASE, Opts, SIDS, World};
use hyp::smmu::cmdq::op;

/// 4 KiB.
const PAGE: u64 = 4096;
/// MAP + UNMAP pairs (and batched unmaps before the FLUSH) per run: the default batch
/// threshold.
const PAIRS: u64 = 256;
/// Donations per run.
const DONATIONS: u64 = 64;
/// The workload's first IOVA: 256 pages from here fill one level-3 table.
const IOVA0: u64 = 0x10_0000;
/// The page mapped for the whole run, beside the workload (same level-3 table).
const ANCHOR: u64 = IOVA0 - PAGE;
/// The workload's first host page.
const PA0: u64 = HOST_BASE + (1 << 20);
/// The first host page donated.
const DONATE0: u64 = HOST_BASE + (4 << 20);

/// What one run does.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// MAP + UNMAP of one page, `PAIRS` times, strict domain.
    Strict,
    /// `PAIRS` MAPs, `PAIRS` UNMAPs, one FLUSH, batched domain.
    Batched,
    /// `DONATIONS` × MEM_DONATE of one page.
    Donate,
}

/// Decodes a scenario name: the workload, BTM, the CPU-TLBI domain path.
fn scenario(name: &str) -> Option<(Kind, bool, bool)> {
    let (base, btm, cpu) = if let Some(b) = name.strip_suffix("-btm") {
        (b, true, false)
    } else if let Some(b) = name.strip_suffix("-cpu") {
        (b, true, true)
    } else {
        (name, false, false)
    };
    let kind = match base {
        "strict" => Kind::Strict,
        "batched" => Kind::Batched,
        "donate" if !cpu => Kind::Donate,
        _ => return None,
    };
    Some((kind, btm, cpu))
}

/// Every counter the run reports, read now (STATS, then the SMMU models).
fn counters(w: &World) -> Vec<(&'static str, u64)> {
    let [_, syncs, tlbis] = w.stats(stats::CALLS_SYNCS_TLBIS);
    let [ipa, vmall, cfgi] = w.stats(stats::SMMU_COMMANDS);
    let [maps, unmaps, flushes] = w.stats(stats::DMA_CALLS);
    vec![
        ("cmd_sync", syncs),
        ("cpu_tlbi", tlbis),
        ("tlbi_s2_ipa", ipa),
        ("tlbi_s12_vmall", vmall),
        ("cfgi_ste", cfgi),
        ("map_calls", maps),
        ("unmap_calls", unmaps),
        ("flush_calls", flushes),
        ("model_cmd_sync", w.executed(op::CMD_SYNC)),
        (
            "model_tlbi",
            w.executed(op::TLBI_S2_IPA) + w.executed(op::TLBI_S12_VMALL),
        ),
        ("model_cpu_tlbi", {
            let c = &w.cpu.0;
            c.host_tlbis.get() + c.vmid_tlbis.get()
        }),
    ]
}

/// The counted part: every call of the workload. Returns how many calls failed.
#[inline(never)]
fn bench_region(w: &World, kind: Kind, d: u64) -> u64 {
    let mut failed = 0;
    match kind {
        Kind::Strict => {
            for i in 0..PAIRS {
                let iova = IOVA0 + i * PAGE;
                failed += u64::from(w.map(d, iova, PA0 + i * PAGE, PAGE) != Ok(PAGE));
                failed += u64::from(w.unmap(d, iova, PAGE) != Ok(PAGE));
            }
        }
        Kind::Batched => {
            for i in 0..PAIRS {
                let iova = IOVA0 + i * PAGE;
                failed += u64::from(w.map(d, iova, PA0 + i * PAGE, PAGE) != Ok(PAGE));
            }
            for i in 0..PAIRS {
                failed += u64::from(w.unmap(d, IOVA0 + i * PAGE, PAGE) != Ok(PAGE));
            }
            failed += u64::from(w.flush(d).is_err());
        }
        Kind::Donate => {
            for i in 0..DONATIONS {
                failed += u64::from(w.donate(DONATE0 + i * PAGE, 1).is_err());
            }
        }
    }
    black_box(failed)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((kind, btm, cpu)) = args.first().and_then(|a| scenario(a)) else {
        eprintln!(
            "usage: hypcore strict|batched|donate[-btm] | strict-cpu|batched-cpu \
             (see the module doc)"
        );
        return ExitCode::from(2);
    };
    let w = World::new(Opts {
        btm,
        cfg: Config {
            domain_cpu_tlbi: cpu,
            ..Config::default()
        },
        ..Opts::default()
    });
    let mut ok = true;
    let mut d = 0;
    if kind != Kind::Donate {
        let flags = if kind == Kind::Batched {
            domain_flags::BATCHED
        } else {
            0
        };
        let setup = w.alloc(flags).and_then(|id| {
            d = id;
            w.attach(id, 0, SIDS[0])?;
            w.map(id, ANCHOR, PA0 - PAGE, PAGE)
        });
        if setup != Ok(PAGE) {
            println!("error: setup failed: {setup:?}");
            return ExitCode::FAILURE;
        }
        // A device uses the anchor: the domain's VMID is live in the SMMU's TLB.
        ok &= w.dma(0, SIDS[0], ANCHOR, false).is_ok();
    }
    let before = counters(&w);
    let calls0 = w.stats(stats::CALLS_SYNCS_TLBIS)[0];
    let failed = bench_region(&w, kind, d);
    let calls1 = w.stats(stats::CALLS_SYNCS_TLBIS)[0];
    let after = counters(&w);
    let ops = if kind == Kind::Donate {
        DONATIONS
    } else {
        PAIRS
    };
    println!("ops {ops}");
    // The second STATS read counts itself.
    println!("stat calls {}", calls1 - calls0 - 1);
    for ((name, a), (_, b)) in after.iter().zip(&before) {
        println!("stat {name} {}", a - b);
    }
    if failed != 0 {
        println!("error: {failed} calls failed");
        ok = false;
    }
    // The equal-work evidence: what is mapped, pinned, pending and donated now.
    let [pinned, pending, donated] = w.stats(stats::PAGES);
    println!("check pinned {pinned} pending {pending} donated {donated}");
    let expect = match kind {
        Kind::Donate => (0, 0, DONATIONS),
        _ => (1, 0, 0),
    };
    if (pinned, pending, donated) != expect {
        println!("error: expected pinned/pending/donated {expect:?}");
        ok = false;
    }
    if kind != Kind::Donate {
        // Every page the workload unmapped is gone for the device (no stale TLB entry);
        // the anchor still translates.
        let stale = (0..PAIRS)
            .filter(|i| w.dma(0, SIDS[0], IOVA0 + i * PAGE, false).is_ok())
            .count();
        let anchor = w.dma(0, SIDS[0], ANCHOR, false).is_ok();
        println!("check unmapped-reachable {stale} anchor {anchor}");
        ok &= stale == 0 && anchor;
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
