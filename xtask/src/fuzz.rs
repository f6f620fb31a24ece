//! `cargo xtask fuzz`: the coverage-guided hypercall fuzzer (cargo-fuzz, libFuzzer) on the
//! nightly toolchain, with the checked-in corpus.
//!
//! The target (`hyp/fuzz`, not a workspace member) calls `hyp::fuzzing::run`, the same
//! harness the stable smoke test (`fuzz-smoke` step of `cargo xtask test`) runs. New
//! inputs go to `target/fuzz/corpus/<target>/` (the checked-in corpus,
//! `hyp/fuzz/corpus/<target>/`, is only read); a finding is written to
//! `target/fuzz/artifacts/<target>/` and fails the command.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::util::{self, describe, output, say, show};

/// The default fuzz target (the hypercall dispatcher).
pub const TARGET: &str = "dispatch";
/// Every fuzz target of `hyp/fuzz` (`--target`).
pub const TARGETS: [&str; 2] = ["dispatch", "viommu"];
/// The toolchain cargo-fuzz needs (`-Z` flags, sanitizer coverage).
const TOOLCHAIN: &str = "nightly";

/// Options of `cargo xtask fuzz`.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// `-max_total_time`.
    pub time_secs: u64,
    /// Parallel fuzzing processes (`-fork`); 1 = one process.
    pub jobs: u32,
    /// `-max_len`.
    pub max_len: u32,
    /// cargo-fuzz `--sanitizer` (`none` is fastest: the harness is safe Rust over models;
    /// `address` also checks the models' raw-pointer accesses).
    pub sanitizer: String,
    /// Extra libFuzzer arguments.
    pub extra: Vec<String>,
    /// The fuzz target: one of [`TARGETS`].
    pub target: String,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            time_secs: 60,
            jobs: 1,
            max_len: 256,
            sanitizer: "none".into(),
            extra: Vec::new(),
            target: TARGET.into(),
        }
    }
}

/// The fuzz crate's directory.
fn fuzz_dir() -> PathBuf {
    util::root().join("hyp/fuzz")
}

/// The checked-in corpus of `target`.
pub fn corpus_dir(target: &str) -> PathBuf {
    fuzz_dir().join("corpus").join(target)
}

/// `rustup run nightly <prog>`: the nightly toolchain, whatever `cargo xtask` runs on.
fn nightly(prog: &str) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", TOOLCHAIN, prog]);
    // The outer cargo's settings must not leak into the nightly one.
    for var in ["CARGO", "RUSTUP_TOOLCHAIN", "RUSTC", "RUSTDOC", "RUSTFLAGS"] {
        cmd.env_remove(var);
    }
    cmd
}

/// Installs the nightly toolchain and cargo-fuzz unless they are there.
pub fn ensure_cargo_fuzz() -> Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))
        .context("cannot list rustup toolchains")?;
    if !toolchains.lines().any(|l| l.starts_with(TOOLCHAIN)) {
        say(format!(
            "installing the {TOOLCHAIN} toolchain (for cargo-fuzz)"
        ));
        util::run(Command::new("rustup").args([
            "toolchain",
            "install",
            TOOLCHAIN,
            "--profile",
            "minimal",
        ]))?;
    }
    if output(nightly("cargo").args(["fuzz", "--version"])).is_ok() {
        return Ok(());
    }
    say("installing cargo-fuzz from crates.io");
    util::run(
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())).args([
            "install",
            "cargo-fuzz",
            "--locked",
        ]),
    )?;
    output(nightly("cargo").args(["fuzz", "--version"]))
        .map(|_| ())
        .context("cargo-fuzz is still missing after installing it")
}

/// What libFuzzer reported last.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Stats {
    pub execs: u64,
    pub cov: u64,
    pub secs: u64,
    pub crashes: u64,
}

/// Reads a libFuzzer status line: `#N ... cov: C ...` (one process) or `#N: cov: C ...
/// oom/timeout/crash: a/b/c time: Ts ...` (fork mode), `Done N runs in S second(s)`, or
/// `stat::number_of_executed_units: N`.
pub fn parse_status(line: &str, s: &mut Stats) {
    let word_after = |key: &str| -> Option<&str> {
        let at = line.find(key)? + key.len();
        line[at..].split_whitespace().next()
    };
    if let Some(rest) = line.strip_prefix('#') {
        let n: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if let (Ok(n), Some(cov)) = (n.parse(), word_after("cov: ")) {
            s.execs = n;
            s.cov = cov.parse().unwrap_or(s.cov);
            if let Some(t) = word_after(" time: ") {
                s.secs = t.trim_end_matches('s').parse().unwrap_or(s.secs);
            }
            if let Some(c) = word_after("oom/timeout/crash: ") {
                let v: Vec<u64> = c.split('/').filter_map(|x| x.parse().ok()).collect();
                s.crashes = v.iter().sum();
            }
        }
    } else if let Some(n) = word_after("stat::number_of_executed_units:") {
        s.execs = n.parse().unwrap_or(s.execs);
    } else if let Some(rest) = line.strip_prefix("Done ") {
        // `Done N runs in S second(s)`.
        let words: Vec<&str> = rest.split_whitespace().collect();
        if let [n, "runs", "in", t, ..] = words[..] {
            s.execs = n.parse().unwrap_or(s.execs);
            s.secs = t.parse().unwrap_or(s.secs);
        }
    }
}

/// Runs the fuzzer for `o.time_secs`; fails on a finding.
pub fn run(o: &Options) -> Result<()> {
    ensure_cargo_fuzz()?;
    let target = o.target.as_str();
    let work = util::target_dir().join("fuzz/corpus").join(target);
    let artifacts = util::target_dir().join("fuzz/artifacts").join(target);
    std::fs::create_dir_all(&work).context("cannot create the working corpus")?;
    std::fs::create_dir_all(&artifacts).context("cannot create the artifact directory")?;
    let before: Vec<PathBuf> = list(&artifacts);
    let mut cmd = nightly("cargo");
    cmd.current_dir(util::root().join("hyp"));
    cmd.args([
        "fuzz",
        "run",
        "--sanitizer",
        &o.sanitizer,
        "--no-trace-compares",
        target,
    ]);
    cmd.arg(&work).arg(corpus_dir(target));
    cmd.arg("--");
    cmd.arg(format!("-max_total_time={}", o.time_secs));
    cmd.arg(format!("-max_len={}", o.max_len));
    cmd.arg(format!("-artifact_prefix={}/", artifacts.display()));
    cmd.args(["-timeout=20", "-rss_limit_mb=1024", "-print_final_stats=1"]);
    if o.jobs > 1 {
        cmd.arg(format!("-fork={}", o.jobs));
    }
    cmd.args(&o.extra);
    // Worlds allocate 16 MiB and more: without a fixed mmap threshold glibc would serve
    // them from the heap and zero them on every run.
    cmd.env("MALLOC_MMAP_THRESHOLD_", "131072");
    cmd.stderr(Stdio::piped());
    say(describe(&cmd));
    let start = Instant::now();
    let mut child = cmd.spawn().context("cannot start cargo fuzz")?;
    let mut stats = Stats::default();
    let stderr = child.stderr.take().expect("piped");
    for line in BufReader::new(stderr).lines() {
        let line = line.context("reading the fuzzer's output")?;
        eprintln!("{line}");
        parse_status(&line, &mut stats);
    }
    let status = child.wait().context("waiting for cargo fuzz")?;
    let found: Vec<PathBuf> = list(&artifacts)
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    let secs = if stats.secs != 0 {
        stats.secs
    } else {
        start.elapsed().as_secs()
    };
    println!(
        "xtask: fuzz: {} executions in {secs} s ({} per second), coverage {}",
        stats.execs,
        stats.execs / secs.max(1),
        stats.cov
    );
    if !found.is_empty() {
        for p in &found {
            println!("xtask: fuzz: finding {}", show(p));
        }
        bail!(
            "the fuzzer found {} failing input(s); replay one with \
             WARDEN_FUZZ_TRACE=1 WARDEN_FUZZ_REPLAY=<file> cargo test -p hyp --lib {}::tests::replay -- --nocapture",
            found.len(),
            if target == "viommu" {
                "viommu::fuzzing"
            } else {
                "fuzzing"
            }
        );
    }
    if !status.success() {
        bail!("`cargo fuzz run` failed ({status})");
    }
    println!("xtask: fuzz: no finding");
    Ok(())
}

fn list(dir: &std::path::Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        let mut s = Stats::default();
        parse_status(
            "#38780\tDONE   cov: 2214 ft: 7497 corp: 871/7813b lim: 17 exec/s: 1250 rss: 35Mb",
            &mut s,
        );
        assert_eq!((s.execs, s.cov), (38780, 2214));
        parse_status(
            "#403097: cov: 2972 ft: 14385 corp: 1532 exec/s: 2391 oom/timeout/crash: 0/0/1 time: 81s job: 16 dft_time: 0",
            &mut s,
        );
        assert_eq!(
            s,
            Stats {
                execs: 403097,
                cov: 2972,
                secs: 81,
                crashes: 1
            }
        );
        parse_status("Done 45460 runs in 16 second(s)", &mut s);
        assert_eq!((s.execs, s.secs), (45460, 16));
        parse_status("stat::number_of_executed_units: 18499", &mut s);
        assert_eq!(s.execs, 18499);
        parse_status("INFO: Seed: 3479388095", &mut s);
        assert_eq!(s.execs, 18499);
    }

    #[test]
    fn checked_in_corpus_exists() {
        for t in TARGETS {
            assert!(
                list(&corpus_dir(t)).len() >= 3,
                "{}",
                corpus_dir(t).display()
            );
        }
    }
}
