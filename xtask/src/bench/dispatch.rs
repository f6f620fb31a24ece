//! Section 2: the hypercall core on the models. `bench/hypcore` runs Warden calls through
//! `Hyp::dispatch` on the SMMU, CPU-TLB and RAM models; callgrind counts the instructions
//! of the calls only (its `bench_region`), and the program reports how much STATS and the
//! SMMU models' counters grew. The command counts are checked against their floors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::report::{Chart, Section, Stat, show_grouped};
use super::s2::callgrind;
use crate::util::{self, say};

const PACKAGE: &str = "hypcore";

/// The most commands a workload may take: `count` per `per` operations (or no more than
/// `count` in a run of `per` operations).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Floor {
    /// SMMU invalidation and configuration commands (TLBI_S2_IPA, TLBI_S12_VMALL,
    /// CFGI_STE), CMD_SYNC not included.
    pub smmu: u64,
    /// CMD_SYNCs.
    pub syncs: u64,
    /// CPU TLBI operations.
    pub cpu: u64,
    /// Operations the counts above cover.
    pub per: u64,
}

/// A workload: `hypcore` scenario, what the table calls it, the chart's label, its floor.
pub struct Scenario {
    /// `hypcore`'s argument.
    pub name: &'static str,
    /// The table's row name.
    pub what: &'static str,
    /// The chart's bar label.
    pub label: &'static str,
    /// The most commands it may take.
    pub floor: Floor,
}

const fn floor(smmu: u64, syncs: u64, cpu: u64, per: u64) -> Floor {
    Floor {
        smmu,
        syncs,
        cpu,
        per,
    }
}

/// The workloads. A strict single-page unmap needs one TLBI and one sync (on the CPU path
/// the TLBI is the CPU's and its DSB is the sync: no SMMU command); 256 batched unmaps and
/// a FLUSH need one sync (and one invalidation); a host stage-2 change needs one CPU TLBI,
/// and without BTM one SMMU TLBI and one sync, under BTM no SMMU command.
pub const SCENARIOS: [Scenario; 8] = [
    Scenario {
        name: "strict",
        what: "strict: MAP + UNMAP 4 KiB, no BTM",
        label: "strict, no BTM",
        floor: floor(1, 1, 0, 1),
    },
    Scenario {
        name: "strict-btm",
        what: "strict: MAP + UNMAP 4 KiB, BTM",
        label: "strict, BTM",
        floor: floor(1, 1, 0, 1),
    },
    Scenario {
        name: "strict-cpu",
        what: "strict: MAP + UNMAP 4 KiB, BTM, domain_tlbi=cpu",
        label: "strict, CPU TLBI",
        floor: floor(0, 0, 1, 1),
    },
    Scenario {
        name: "batched",
        what: "batched: 256 MAP, 256 UNMAP, FLUSH; no BTM",
        label: "batched, no BTM",
        floor: floor(1, 1, 0, 256),
    },
    Scenario {
        name: "batched-btm",
        what: "batched: 256 MAP, 256 UNMAP, FLUSH; BTM",
        label: "batched, BTM",
        floor: floor(1, 1, 0, 256),
    },
    Scenario {
        name: "batched-cpu",
        what: "batched: 256 MAP, 256 UNMAP, FLUSH; BTM, domain_tlbi=cpu",
        label: "batched, CPU TLBI",
        floor: floor(0, 0, 1, 256),
    },
    Scenario {
        name: "donate",
        what: "MEM_DONATE 1 page (host stage-2 change), no BTM",
        label: "donate, no BTM",
        floor: floor(1, 1, 1, 1),
    },
    Scenario {
        name: "donate-btm",
        what: "MEM_DONATE 1 page (host stage-2 change), BTM",
        label: "donate, BTM",
        floor: floor(0, 0, 1, 1),
    },
];

/// What one `hypcore` run reported: `ops N` and the `stat NAME VALUE` lines.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Counts {
    /// Operations made (MAP + UNMAP pairs or donations).
    pub ops: u64,
    /// Counter name → how much it grew over the counted calls.
    pub stat: BTreeMap<String, u64>,
}

impl Counts {
    /// Parses `hypcore`'s standard output.
    pub fn parse(stdout: &str) -> Option<Self> {
        let mut c = Self::default();
        for l in stdout.lines() {
            if let Some(v) = l.strip_prefix("ops ") {
                c.ops = v.trim().parse().ok()?;
            } else if let Some(rest) = l.strip_prefix("stat ") {
                let (k, v) = rest.split_once(' ')?;
                c.stat.insert(k.to_string(), v.trim().parse().ok()?);
            }
        }
        (c.ops > 0).then_some(c)
    }

    /// A counter (0 when absent).
    pub fn get(&self, name: &str) -> u64 {
        self.stat.get(name).copied().unwrap_or(0)
    }

    /// (SMMU commands, CMD_SYNCs, CPU TLBIs) from STATS.
    pub fn commands(&self) -> (u64, u64, u64) {
        (
            self.get("tlbi_s2_ipa") + self.get("tlbi_s12_vmall") + self.get("cfgi_ste"),
            self.get("cmd_sync"),
            self.get("cpu_tlbi"),
        )
    }

    /// Deterministic checks: the floors, STATS against the models, the work done.
    pub fn check(&self, s: &Scenario) -> Vec<String> {
        let mut bad = Vec::new();
        let (smmu, syncs, cpu) = self.commands();
        let f = s.floor;
        for (what, got, most) in [
            ("SMMU commands", smmu, f.smmu),
            ("CMD_SYNCs", syncs, f.syncs),
            ("CPU TLBIs", cpu, f.cpu),
        ] {
            // got / ops <= most / per
            if got * f.per > most * self.ops {
                bad.push(format!(
                    "section 2 {}: {got} {what} for {} operations, floor {most} per {}",
                    s.name, self.ops, f.per
                ));
            }
        }
        let model_smmu = self.get("model_tlbi") + self.get("cfgi_ste");
        if (
            model_smmu,
            self.get("model_cmd_sync"),
            self.get("model_cpu_tlbi"),
        ) != (smmu, syncs, cpu)
        {
            bad.push(format!(
                "section 2 {}: STATS ({smmu}, {syncs}, {cpu}) disagree with what the models \
                 executed ({model_smmu}, {}, {})",
                s.name,
                self.get("model_cmd_sync"),
                self.get("model_cpu_tlbi")
            ));
        }
        let calls = if s.name.starts_with("donate") {
            (0, 0, 0, self.ops)
        } else if s.name.starts_with("batched") {
            (self.ops, self.ops, 1, 2 * self.ops + 1)
        } else {
            (self.ops, self.ops, 0, 2 * self.ops)
        };
        let got = (
            self.get("map_calls"),
            self.get("unmap_calls"),
            self.get("flush_calls"),
            self.get("calls"),
        );
        if got != calls {
            bad.push(format!(
                "section 2 {}: (MAP, UNMAP, FLUSH, all) calls {got:?}, expected {calls:?}",
                s.name
            ));
        }
        bad
    }
}

/// `n` per operation of `ops`: a whole number, or `n/ops`.
pub fn per_op(n: u64, ops: u64) -> String {
    if ops != 0 && n.is_multiple_of(ops) {
        (n / ops).to_string()
    } else {
        format!("{n}/{ops}")
    }
}

/// A figure with its floor: `1 (floor 1)`.
fn with_floor(n: u64, ops: u64, most: u64, per: u64) -> String {
    format!("{} (floor {})", per_op(n, ops), per_op(most, per))
}

/// Builds `hypcore` (release: the profile the EL2 image uses) and returns its path.
fn build() -> Result<PathBuf> {
    let mut cmd = crate::cargo();
    cmd.args(["build", "--release", "-p", PACKAGE]);
    util::run(&mut cmd)?;
    Ok(util::target_dir().join("release").join(PACKAGE))
}

/// One run under callgrind: instructions counted, and the counters.
fn run_one(bin: &Path, out_dir: &Path, name: &str) -> Result<(u64, Counts)> {
    let out_file = out_dir.join(format!("callgrind.core.{name}.out"));
    let (total, stdout) = callgrind(bin, &[name], &out_file, &format!("hypcore {name}"))?;
    let counts = Counts::parse(&stdout)
        .with_context(|| format!("`hypcore {name}` printed no counts: {}", stdout.trim()))?;
    Ok((total, counts))
}

/// Runs the section: `rounds` rounds, each running every scenario once. Returns the
/// section and the failed deterministic checks.
pub fn run(rounds: usize, out_dir: &Path) -> Result<(Section, Vec<String>)> {
    crate::deps::ensure_tool("valgrind")?;
    let bin = build().context("cannot build bench/hypcore")?;
    let mut insns = vec![Vec::new(); SCENARIOS.len()];
    let mut counts: Vec<Option<Counts>> = vec![None; SCENARIOS.len()];
    let mut failures = Vec::new();
    for round in 0..rounds {
        say(format!("section 2: callgrind round {}/{rounds}", round + 1));
        for (i, s) in SCENARIOS.iter().enumerate() {
            let (n, c) = run_one(&bin, out_dir, s.name)?;
            insns[i].push(n as f64 / c.ops as f64);
            match &counts[i] {
                None => {
                    failures.extend(c.check(s));
                    counts[i] = Some(c);
                }
                Some(first) if *first != c => failures.push(format!(
                    "section 2 {}: the counters differ between rounds",
                    s.name
                )),
                Some(_) => {}
            }
        }
    }
    let mut sec = Section {
        id: "core".into(),
        title: "2. The hypercall core on the models".into(),
        about: format!(
            "Warden calls through `Hyp::dispatch` on the SMMU, CPU-TLB and RAM models \
             (`bench/hypcore`, x86-64 host build, release profile): a host-managed 4 KiB \
             domain with one endpoint attached and one other page mapped beside the \
             workload. Instructions (callgrind) of the calls only, the models' own work \
             included, per operation: one MAP + UNMAP pair (batched: the FLUSH shared by \
             the 256 pairs) or one MEM_DONATE; median of {rounds} round(s). Commands per \
             operation from STATS (equal to what the SMMU and CPU models executed), each \
             with its floor: SMMU commands are TLBI_S2_IPA + TLBI_S12_VMALL + CFGI_STE, \
             CMD_SYNC counted apart. Checked: no count above its floor."
        ),
        header: [
            "workload",
            "insns / op",
            "SMMU commands / op",
            "CMD_SYNCs / op",
            "CPU TLBIs / op",
        ]
        .map(String::from)
        .to_vec(),
        ..Default::default()
    };
    let mut bars = Vec::new();
    for (i, s) in SCENARIOS.iter().enumerate() {
        let (Some(st), Some(c)) = (Stat::of(&insns[i]), &counts[i]) else {
            continue;
        };
        let (smmu, syncs, cpu) = c.commands();
        let f = s.floor;
        sec.rows.push(vec![
            s.what.to_string(),
            show_grouped(&st),
            with_floor(smmu, c.ops, f.smmu, f.per),
            with_floor(syncs, c.ops, f.syncs, f.per),
            with_floor(cpu, c.ops, f.cpu, f.per),
        ]);
        bars.push((s.label.to_string(), st.median));
    }
    sec.chart = Some(Chart {
        title: "Hypercall core on the models: instructions per operation (lower is better)".into(),
        axis: "instructions per operation".into(),
        bars,
        marks: Vec::new(),
    });
    Ok((sec, failures))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = "ops 256\nstat calls 512\nstat cmd_sync 256\nstat cpu_tlbi 0\n\
        stat tlbi_s2_ipa 256\nstat tlbi_s12_vmall 0\nstat cfgi_ste 0\nstat map_calls 256\n\
        stat unmap_calls 256\nstat flush_calls 0\nstat model_cmd_sync 256\n\
        stat model_tlbi 256\nstat model_cpu_tlbi 0\ncheck pinned 1 pending 0 donated 0\n";

    #[test]
    fn parses_and_passes_at_the_floor() {
        let c = Counts::parse(OUT).unwrap();
        assert_eq!(c.ops, 256);
        assert_eq!(c.commands(), (256, 256, 0));
        assert_eq!(c.check(&SCENARIOS[0]), Vec::<String>::new());
        assert_eq!(Counts::parse("stat x 1\n"), None);
    }

    #[test]
    fn fails_above_the_floor_and_on_disagreement() {
        let more = OUT.replace("cmd_sync 256\nstat cpu", "cmd_sync 257\nstat cpu");
        let c = Counts::parse(&more).unwrap();
        let bad = c.check(&SCENARIOS[0]);
        assert!(bad.iter().any(|b| b.contains("CMD_SYNCs")), "{bad:?}");
        assert!(bad.iter().any(|b| b.contains("disagree")), "{bad:?}");
        // The CPU path allows no SMMU command at all.
        let c = Counts::parse(OUT).unwrap();
        assert!(c.check(&SCENARIOS[2]).len() >= 2);
        // The batched floor is one sync per 256 operations.
        let batched = OUT
            .replace("cmd_sync 256\nstat cpu", "cmd_sync 2\nstat cpu")
            .replace("model_cmd_sync 256", "model_cmd_sync 2");
        let bad = Counts::parse(&batched).unwrap().check(&SCENARIOS[3]);
        assert!(bad.iter().any(|b| b.contains("2 CMD_SYNCs")), "{bad:?}");
    }

    #[test]
    fn per_operation_figures() {
        assert_eq!(per_op(256, 256), "1");
        assert_eq!(per_op(1, 256), "1/256");
        assert_eq!(per_op(0, 64), "0");
        assert_eq!(with_floor(1, 256, 1, 256), "1/256 (floor 1/256)");
    }
}
