//! Section 1: stage-2 page tables, Warden's `hyp::s2mmu::Stage2` against aarch64-paging
//! 0.12, instructions counted by callgrind in `bench/s2peer` (only its `bench_region`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::report::{Chart, Section, Stat, show_grouped};
use crate::util::{self, say};

/// The workloads: `s2peer` name, what the table calls them, the chart's short label.
pub const WORKLOADS: [(&str, &str, &str); 4] = [
    (
        "4k",
        "16,384 x 4 KiB map, then 16,384 x unmap",
        "4 KiB pages, single",
    ),
    ("1g", "64 x (1 GiB block map + unmap)", "1 GiB blocks"),
    (
        "2m",
        "512 x 2 MiB block map, then 512 x unmap",
        "2 MiB blocks",
    ),
    (
        "range",
        "1 GiB of 4 KiB pages: one map, one unmap",
        "1 GiB range of pages",
    ),
];

/// The goal of issue 9: Warden at most this many times the peer's instructions.
pub const GOAL: f64 = 0.7;

const PACKAGE: &str = "s2peer";

/// Builds `s2peer` (release: the profile the EL2 image uses) and returns its path.
fn build() -> Result<PathBuf> {
    let mut cmd = crate::cargo();
    cmd.args(["build", "--release", "-p", PACKAGE]);
    util::run(&mut cmd)?;
    Ok(util::target_dir().join("release").join(PACKAGE))
}

/// Instructions in `summary:`/`totals:` of a callgrind output file.
pub fn parse_callgrind_total(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
        })
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The `check IPA -> PA` lines of an `s2peer` run (the equal-work evidence).
pub fn check_lines(stdout: &str) -> Vec<&str> {
    stdout.lines().filter(|l| l.starts_with("check ")).collect()
}

/// The `tables mapped N` / `tables unmapped N` figures of an `s2peer` run.
pub fn table_bytes(stdout: &str) -> (Option<u64>, Option<u64>) {
    let get = |p: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(p))
            .and_then(|v| v.trim().parse().ok())
    };
    (get("tables mapped "), get("tables unmapped "))
}

/// Runs `s2peer SIDE WORK` natively (no counting) and returns its standard output.
pub fn run_plain(side: &str, work: &str) -> Result<String> {
    let bin = build().context("cannot build bench/s2peer")?;
    util::output(Command::new(bin).args([side, work]))
}

/// Runs `bin ARGS` under callgrind, counting only `bench_region` (and what it calls), and
/// returns the instructions counted and the program's standard output; `what` names the
/// run in errors, `out_file` receives callgrind's profile. Shared by sections 1 and 2.
pub fn callgrind(bin: &Path, args: &[&str], out_file: &Path, what: &str) -> Result<(u64, String)> {
    let mut cmd = Command::new("valgrind");
    cmd.args([
        "--tool=callgrind",
        "--collect-atstart=no",
        "--toggle-collect=*bench_region*",
    ])
    .arg(format!("--callgrind-out-file={}", out_file.display()))
    .arg(bin)
    .args(args);
    let out = cmd
        .output()
        .with_context(|| format!("cannot start `{}`", util::describe(&cmd)))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "`{what}` failed ({}): {}{}",
            out.status,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
    }
    let text = std::fs::read_to_string(out_file)
        .with_context(|| format!("cannot read {}", out_file.display()))?;
    let total = parse_callgrind_total(&text)
        .with_context(|| format!("no instruction total in {}", out_file.display()))?;
    if total == 0 {
        bail!("callgrind counted nothing in `{what}` (bench_region not found?)");
    }
    Ok((total, stdout))
}

/// One run: instructions counted, and `s2peer`'s standard output.
fn run_one(bin: &Path, out_dir: &Path, side: &str, work: &str) -> Result<(u64, String)> {
    let out_file = out_dir.join(format!("callgrind.{side}.{work}.out"));
    callgrind(
        bin,
        &[side, work],
        &out_file,
        &format!("s2peer {side} {work}"),
    )
}

/// Runs the section: `rounds` rounds, each running every workload on Warden then on the
/// peer. Returns the section and the failed deterministic checks.
pub fn run(rounds: usize, out_dir: &Path) -> Result<(Section, Vec<String>)> {
    crate::deps::ensure_tool("valgrind")?;
    let bin = build().context("cannot build bench/s2peer")?;
    let mut counts = vec![(Vec::new(), Vec::new()); WORKLOADS.len()];
    let mut tables = vec![((None, None), (None, None)); WORKLOADS.len()];
    let mut failures = Vec::new();
    for round in 0..rounds {
        say(format!("section 1: callgrind round {}/{rounds}", round + 1));
        for (i, (work, _, _)) in WORKLOADS.iter().enumerate() {
            let (w, w_out) = run_one(&bin, out_dir, "warden", work)?;
            let (p, p_out) = run_one(&bin, out_dir, "peer", work)?;
            if round == 0 {
                if check_lines(&w_out) != check_lines(&p_out) {
                    failures.push(format!(
                        "section 1 {work}: the sides translate the sample addresses differently"
                    ));
                }
                tables[i] = (table_bytes(&w_out), table_bytes(&p_out));
                if tables[i].0.0 != tables[i].1.0 {
                    failures.push(format!(
                        "section 1 {work}: the sides hold different table bytes after the maps"
                    ));
                }
            }
            counts[i].0.push(w as f64);
            counts[i].1.push(p as f64);
        }
    }
    let mut s = Section {
        id: "s2-tables".into(),
        title: "1. Stage-2 page tables: Warden vs aarch64-paging 0.12".into(),
        about: format!(
            "Instructions (callgrind, x86-64 host build, release profile) of the workload \
             calls only; 4 KiB granule, 39-bit IPA, no TLB maintenance (a table no walker \
             uses). Median of {rounds} interleaved rounds (callgrind counts are \
             deterministic: the spread shows only when they are not). Both sides \
             translate the same sample addresses to the same output addresses before the \
             unmaps and none after them, and hold the same table bytes after the maps. Goal (issue 9): Warden / peer <= {GOAL}. Note: \
             aarch64-paging does not free tables emptied by an unmap (it has a separate \
             `compact_subtables`); Warden does."
        ),
        header: [
            "workload",
            "Warden insns",
            "peer insns",
            "Warden / peer",
            "table KiB mapped (W / P)",
            "table KiB after unmap (W / P)",
        ]
        .map(String::from)
        .to_vec(),
        ..Default::default()
    };
    let mut bars = Vec::new();
    for (i, (work, what, label)) in WORKLOADS.iter().enumerate() {
        let (w, p) = &counts[i];
        let ratios: Vec<f64> = w.iter().zip(p).map(|(w, p)| w / p).collect();
        let (Some(ws), Some(ps), Some(rs)) = (Stat::of(w), Stat::of(p), Stat::of(&ratios)) else {
            continue;
        };
        let kib = |v: Option<u64>| v.map_or("?".to_string(), |b| (b / 1024).to_string());
        let ((wm, wu), (pm, pu)) = tables[i];
        s.rows.push(vec![
            what.to_string(),
            show_grouped(&ws),
            show_grouped(&ps),
            format!("{}x", rs.show(2)),
            format!("{} / {}", kib(wm), kib(pm)),
            format!("{} / {}", kib(wu), kib(pu)),
        ]);
        bars.push((label.to_string(), rs.median));
        if rs.median > GOAL {
            failures.push(format!(
                "section 1 {work}: Warden / peer = {:.2}, goal <= {GOAL}",
                rs.median
            ));
        }
    }
    s.chart = Some(Chart {
        title: "Stage-2 tables: Warden's instructions / aarch64-paging's (lower is better)".into(),
        axis: "ratio of instructions".into(),
        bars,
        marks: vec![(1.0, "equal".into()), (GOAL, format!("goal {GOAL}"))],
    });
    Ok((s, failures))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callgrind_totals() {
        let text = "events: Ir\nfn=foo\n1 2\nsummary: 37458464\ntotals: 37458464\n";
        assert_eq!(parse_callgrind_total(text), Some(37_458_464));
        assert_eq!(parse_callgrind_total("events: Ir\n"), None);
    }

    #[test]
    fn table_figures() {
        let out = "check 0x1 -> none\ntables mapped 8192\ntables unmapped 4096\n";
        assert_eq!(table_bytes(out), (Some(8192), Some(4096)));
        assert_eq!(table_bytes("x\n"), (None, None));
    }

    #[test]
    fn checks_are_the_check_lines() {
        let out = "check 0x1000 -> 0x2000\nerror: x\ncheck 0x3000 -> none\n";
        assert_eq!(
            check_lines(out),
            ["check 0x1000 -> 0x2000", "check 0x3000 -> none"]
        );
    }
}
