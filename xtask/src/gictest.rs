//! `gic:<variant>` tests: boot the `gic-its` test image (test-images/gic-its) through
//! Warden, in place of Linux, on the GICv3 variants, and judge the console log.
//!
//! The image, as the host, points the ITS device table (`GITS_BASER`), a MAPD's ITT and
//! its redistributor's `GICR_PENDBASER` at pages it donated, takes them back, and makes
//! the GIC write where it would have written: the pages must stay all-zero; then tables
//! in its own memory must work (an LPI raised by INT is pending) and be pinned.
//! A variant passes only if every check printed `GIC PASS <name>` and nothing printed
//! `GIC FAIL`; the summary says `gic: 6 passed, 0 failed`; Warden's banner and its GIC
//! emulation line (`warden: GIC: … emulated`) appeared; and QEMU powered off by itself
//! with status 0 before the timeout.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;

use crate::boottest::{Variant, banner_problem};
use crate::qemu::{self, Machine};
use crate::testimage::{self, TestImage, parse_summary};
use crate::util::{self, name_and_rest};

/// The boot-test variants the image runs on (the GICv3 ones with an ITS).
pub const VARIANT_NAMES: [&str; 2] = ["max-gicv3", "n1-5g"];
/// The image's checks, in the order it runs them (test-images/gic-its/src/checks.rs).
pub const CHECKS: [&str; 6] = [
    "its-baser-donated",
    "its-mapd-donated",
    "its-forged-dte",
    "gicr-pendbaser-donated",
    "its-legit-lpi",
    "gic-pins-busy",
];
/// Warden's line saying it took the GIC over.
pub const EMULATION_TEXT: &str = "warden: GIC: ";
/// Per-boot timeout unless `--timeout` says otherwise (a run takes a few seconds).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
const PACKAGE: &str = "gic-its";

/// The `gic:<variant>` tests.
pub struct Gic;

impl TestImage for Gic {
    const PREFIX: &'static str = "gic";
    const WHAT: &'static str = "the gic-its test image";
    const DEFAULT_TIMEOUT: Duration = DEFAULT_TIMEOUT;
    const MAX_LISTED: usize = usize::MAX;

    fn variants() -> impl Iterator<Item = &'static Variant> {
        testimage::variants(&VARIANT_NAMES)
    }

    fn build_image() -> Result<PathBuf> {
        let out = util::target_dir().join("test-images").join("gic-its.bin");
        crate::edutest::build_test_image(PACKAGE, Self::WHAT, &out)
    }

    fn qemu_args(machine: &Machine, warden: &Path, image: &Path) -> Vec<OsString> {
        testimage::qemu_args(machine, warden, image, &[])
    }

    fn devices_note() -> String {
        "no devices".into()
    }

    fn echo(line: &str) -> bool {
        line.starts_with("GIC ")
            || line.starts_with(EMULATION_TEXT)
            || (line.starts_with("gic: ") && line.ends_with(" failed"))
    }

    fn evaluate(output: &str, exit: Option<i32>, timeout: Duration) -> Vec<String> {
        evaluate(output, exit, timeout)
    }
}

/// Everything wrong with a gic boot (empty: it passed).
pub fn evaluate(output: &str, exit: Option<i32>, timeout: Duration) -> Vec<String> {
    let mut problems = Vec::new();
    let mut passed = Vec::new();
    let mut failed = Vec::new();
    let mut summary = None;
    for line in output.lines() {
        if let Some(p) = line.strip_prefix("GIC PASS ") {
            passed.push(name_and_rest(p).0);
        } else if let Some(f) = line.strip_prefix("GIC FAIL ") {
            let (name, why) = name_and_rest(f);
            problems.push(format!("GIC FAIL {name}: {why}"));
            failed.push(name);
        } else if let Some(s) = line.strip_prefix("gic: ")
            && let Some(s) = parse_summary(s)
        {
            summary = Some(s);
        }
    }
    for name in CHECKS {
        if !passed.iter().chain(&failed).any(|n| n == name) {
            problems.push(format!("no result for the `{name}` check"));
        }
    }
    match summary {
        None => {
            problems.push("the image never printed its summary `gic: N passed, M failed`".into())
        }
        Some((n, 0)) if n as usize == CHECKS.len() => {}
        Some((n, m)) => problems.push(format!(
            "the image's summary says {n} passed, {m} failed (expected {} passed, 0 failed)",
            CHECKS.len()
        )),
    }
    problems.extend(banner_problem(output));
    if !output.lines().any(|l| l.starts_with(EMULATION_TEXT)) {
        problems.push(format!(
            "Warden did not report its GIC emulation (`{EMULATION_TEXT}…`)"
        ));
    }
    problems.extend(qemu::exit_problem(exit, timeout));
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
Warden v0.1.0 — EL2 hypervisor
warden: GIC: 1 ITS(s) and 4 redistributor(s) emulated
GIC PASS its-baser-donated: P1 all-zero
GIC PASS its-mapd-donated: P2 all-zero
GIC PASS its-forged-dte: P4 all-zero
GIC PASS gicr-pendbaser-donated: P3 all-zero
GIC PASS its-legit-lpi: LPI 8195 pending
GIC PASS gic-pins-busy: MEM_DONATE BUSY for: ITT
gic: 6 passed, 0 failed
";
    const T: Duration = Duration::from_secs(60);

    #[test]
    fn a_good_run_passes_and_each_requirement_can_fail() {
        assert_eq!(evaluate(GOOD, Some(0), T), Vec::<String>::new());
        let check = |log: &str, exit: Option<i32>, needle: &str| {
            let p = evaluate(log, exit, T);
            assert!(
                p.iter().any(|p| p.contains(needle)),
                "{needle:?} not in {p:?}"
            );
        };
        check(GOOD, None, "did not exit");
        check(&GOOD.replace("Warden v0.1.0", "Hello"), Some(0), "banner");
        check(
            &GOOD.replace("warden: GIC: ", "x"),
            Some(0),
            "GIC emulation",
        );
        check(
            &GOOD.replace("GIC PASS its-mapd-donated", "GIC FAIL its-mapd-donated"),
            Some(0),
            "GIC FAIL its-mapd-donated",
        );
        check(
            &GOOD.replace("GIC PASS gic-pins-busy", "x"),
            Some(0),
            "no result for the `gic-pins-busy` check",
        );
        check(&GOOD.replace("6 passed", "5 passed"), Some(0), "5 passed");
    }
}
