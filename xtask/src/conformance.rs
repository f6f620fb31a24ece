//! `conf:<variant>` tests: boot the hypercall conformance suite (test-images/conformance)
//! through Warden, in place of Linux, with two of QEMU's `edu` PCI devices, and judge
//! the console log.
//!
//! A variant passes only if: nothing printed `CONF FAIL`; every check of the suite's list
//! (test-images/conformance/src/names.rs, included below) printed `CONF PASS`; the summary
//! `conformance: N passed, M failed` says M = 0 and N ≥ [`MIN_CHECKS`], and N matches the
//! `CONF PASS` lines; Warden's banner appeared; Warden logged that it refused the SiP call
//! and SYSTEM_SUSPEND of the firmware checks; and QEMU powered off by itself with status 0 before
//! the timeout.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;

use crate::boottest::{Variant, banner_problem};
use crate::qemu::{self, Machine};
use crate::testimage::{self, TestImage, parse_summary};
use crate::util::{self, name_and_rest};

/// The suite's check names, in run order: the image's own list.
mod names {
    include!("../../test-images/conformance/src/names.rs");
}
pub use names::CHECKS;

/// The boot-test variants the suite runs on.
pub const VARIANT_NAMES: [&str; 3] = ["max-gicv3", "a57-gicv2", "n1-5g"];
/// Fewest checks a passing run may report.
pub const MIN_CHECKS: usize = 40;
/// Two edu devices: 00:02.0 (StreamID 0x10) and 00:03.0 (StreamID 0x18), DMA addresses
/// not truncated (QEMU's default mask is 28 bits).
pub const EDU_DEVICES: [&str; 2] = [
    "edu,addr=2,dma_mask=0xffffffffffffffff",
    "edu,addr=3,dma_mask=0xffffffffffffffff",
];
/// Per-boot timeout unless `--timeout` says otherwise (a run takes well under that:
/// about 45 DMAs of 100 ms virtual each, plus the pool-exhaustion and SMP loops).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(90);
/// The image's package (and binary) name.
const PACKAGE: &str = "conformance";

/// The `conf:<variant>` tests.
pub struct Conf;

impl TestImage for Conf {
    const PREFIX: &'static str = "conf";
    const WHAT: &'static str = "the conformance test image";
    const DEFAULT_TIMEOUT: Duration = DEFAULT_TIMEOUT;
    const MAX_LISTED: usize = 12;

    fn variants() -> impl Iterator<Item = &'static Variant> {
        variants()
    }

    fn build_image() -> Result<PathBuf> {
        build_image()
    }

    fn qemu_args(machine: &Machine, warden: &Path, image: &Path) -> Vec<OsString> {
        qemu_args(machine, warden, image)
    }

    fn devices_note() -> String {
        "two edu devices".into()
    }

    fn echo(line: &str) -> bool {
        line.starts_with("CONF ")
            || (line.starts_with("conformance: ") && line.ends_with(" failed"))
    }

    fn evaluate(output: &str, exit: Option<i32>, timeout: Duration) -> Vec<String> {
        evaluate(output, exit, timeout)
    }
}

/// The variants, from the boot tests' table.
pub fn variants() -> impl Iterator<Item = &'static Variant> {
    testimage::variants(&VARIANT_NAMES)
}

/// Where the flat test image is written.
pub fn image_path() -> PathBuf {
    util::target_dir()
        .join("test-images")
        .join("conformance.bin")
}

/// Builds the conformance image (release, aarch64-unknown-none, MMU-off rules checked)
/// and returns the flat image's path.
pub fn build_image() -> Result<PathBuf> {
    crate::edutest::build_test_image(PACKAGE, Conf::WHAT, &image_path())
}

/// The QEMU arguments of a conformance boot: Warden as the firmware-loaded image, the
/// suite as its `multiboot,kernel` module (no initrd), and the two edu devices.
pub fn qemu_args(machine: &Machine, warden: &Path, image: &Path) -> Vec<OsString> {
    testimage::qemu_args(machine, warden, image, &EDU_DEVICES)
}

/// What the image printed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Results {
    /// (name, details) of each `CONF PASS`.
    pub passed: Vec<(String, String)>,
    /// (name, reason) of each `CONF FAIL`.
    pub failed: Vec<(String, String)>,
    /// The `conformance: N passed, M failed` summary.
    pub summary: Option<(u32, u32)>,
}

/// Collects the image's lines from a console log.
pub fn parse_results(log: &str) -> Results {
    let mut r = Results::default();
    for line in log.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(p) = line.strip_prefix("CONF PASS ") {
            r.passed.push(name_and_rest(p));
        } else if let Some(f) = line.strip_prefix("CONF FAIL ") {
            r.failed.push(name_and_rest(f));
        } else if let Some(s) = line.strip_prefix("conformance: ")
            && let Some(summary) = parse_summary(s)
        {
            r.summary = Some(summary);
        }
    }
    r
}

/// Everything wrong with a conformance boot (empty: it passed).
pub fn evaluate(output: &str, exit: Option<i32>, timeout: Duration) -> Vec<String> {
    let mut problems = Vec::new();
    let r = parse_results(output);
    for (name, why) in &r.failed {
        problems.push(format!("CONF FAIL {name}: {why}"));
    }
    let missing: Vec<&str> = CHECKS
        .iter()
        .copied()
        .filter(|name| {
            !r.passed.iter().any(|(n, _)| n == name) && !r.failed.iter().any(|(n, _)| n == name)
        })
        .collect();
    if !missing.is_empty() {
        problems.push(format!(
            "no result for {} check(s): {}",
            missing.len(),
            missing.join(", ")
        ));
    }
    for (name, _) in &r.passed {
        if !CHECKS.contains(&name.as_str()) {
            problems.push(format!(
                "`{name}` passed but is not one of the suite's checks"
            ));
        }
    }
    match r.summary {
        None => problems
            .push("the image never printed its summary `conformance: N passed, M failed`".into()),
        Some((n, m)) => {
            if m != 0 {
                problems.push(format!("the image's summary says {n} passed, {m} failed"));
            }
            if (n as usize) < MIN_CHECKS {
                problems.push(format!(
                    "only {n} checks passed; a complete run has at least {MIN_CHECKS}"
                ));
            }
            if n as usize != r.passed.len() {
                problems.push(format!(
                    "the summary says {n} passed but {} `CONF PASS` lines appeared",
                    r.passed.len()
                ));
            }
        }
    }
    for (fid, what) in REFUSED {
        if !output
            .lines()
            .any(|l| !l.contains("CONF ") && l.contains("refused") && l.contains(fid))
        {
            problems.push(format!(
                "Warden did not log that it refused {what} {fid} (QEMU answers a call it does not know NOT_SUPPORTED too, so only Warden's log tells a refused call from a forwarded one)"
            ));
        }
    }
    problems.extend(banner_problem(output));
    problems.extend(qemu::exit_problem(exit, timeout));
    problems
}

/// Calls the firmware checks make that Warden must log as refused: the first of
/// `fw-other-services-refused` and of `fw-system-suspend-refused`.
const REFUSED: [(&str, &str); 2] = [
    ("0xc2000000", "the SiP call"),
    ("0xc400000e", "SYSTEM_SUSPEND"),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// A console log in which every check passed.
    fn good() -> String {
        let mut s = String::from(
            "Warden v0.1.0 — EL2 hypervisor\n\
             warden: carve-out 0x40200000..0x42600000 (36 MiB)\n\
             conformance: conformance test image at EL1, loaded at 0x50000000\n",
        );
        for name in CHECKS {
            s.push_str(&format!("CONF PASS {name}: fine\r\n"));
            s.push_str("warden: WARN  smmu0: SMMU event F_TRANSLATION sid 0x10\n");
        }
        s.push_str(
            "warden: WARN  host SMC 0xc2000000 (x1 0x0) refused with -1, not forwarded to firmware\n\
             warden: WARN  host SMC 0xc400000e (x1 0x0) refused with -1, not forwarded to firmware\n",
        );
        s.push_str(&format!("conformance: {} passed, 0 failed\n", CHECKS.len()));
        s
    }

    const T: Duration = Duration::from_secs(90);

    fn problems_with(log: &str, exit: Option<i32>, needle: &str) {
        let p = evaluate(log, exit, T);
        assert!(
            p.iter().any(|p| p.contains(needle)),
            "{needle:?} not in {p:?}"
        );
    }

    #[test]
    fn the_list_is_the_images() {
        assert!(CHECKS.len() >= MIN_CHECKS);
        assert!(CHECKS.contains(&"pool-exhaustion"));
        assert!(CHECKS.contains(&"smp-cpu-off"));
    }

    #[test]
    fn a_good_run_passes() {
        let log = good();
        assert_eq!(evaluate(&log, Some(0), T), Vec::<String>::new());
        let r = parse_results(&log);
        assert_eq!(r.passed.len(), CHECKS.len());
        assert_eq!(r.passed[0], ("smccc-version".into(), "fine".into()));
        assert_eq!(r.summary, Some((CHECKS.len() as u32, 0)));
        assert!(r.failed.is_empty());
    }

    #[test]
    fn parsing() {
        let r = parse_results(
            "CONF PASS a-b: x: y\nCONF FAIL c: why: because\nCONF FAIL exception: ESR 0x1\n\
             conformance: 3 passed, 2 failed\nconformance: heap 4 KiB used\n",
        );
        assert_eq!(r.passed, [("a-b".to_string(), "x: y".to_string())]);
        assert_eq!(
            r.failed,
            [
                ("c".to_string(), "why: because".to_string()),
                ("exception".to_string(), "ESR 0x1".to_string())
            ]
        );
        assert_eq!(r.summary, Some((3, 2)));
        // Lines that merely look similar do not count.
        let r = parse_results("xCONF PASS a: b\nconformance: many passed, 0 failed\n");
        assert_eq!(r, Results::default());
    }

    #[test]
    fn every_requirement_can_fail() {
        let log = good();
        problems_with(&log, None, "did not exit within 90 s");
        problems_with(&log, Some(1), "status 1");
        problems_with(&log.replace("Warden v0.1.0", "Hello"), Some(0), "banner");
        problems_with(
            &log.replace("0xc2000000 (x1", "0xc2000001 (x1"),
            Some(0),
            "did not log that it refused the SiP call 0xc2000000",
        );
        problems_with(
            &log.replace("0xc400000e (x1", "0xc400000f (x1"),
            Some(0),
            "did not log that it refused SYSTEM_SUSPEND 0xc400000e",
        );
        // A failing check, and the summary that counts it.
        let failing = log
            .replace(
                "CONF PASS map-double: fine",
                "CONF FAIL map-double: EXIST expected",
            )
            .replace(
                &format!("{} passed, 0 failed", CHECKS.len()),
                &format!("{} passed, 1 failed", CHECKS.len() - 1),
            );
        problems_with(&failing, Some(0), "CONF FAIL map-double: EXIST expected");
        problems_with(&failing, Some(0), "1 failed");
        // A check that never reported.
        problems_with(
            &log.replace("CONF PASS event-poll: fine", ""),
            Some(0),
            "no result for 1 check(s): event-poll",
        );
        // No summary; a summary that disagrees with the lines.
        problems_with(
            &log.replace(&format!("conformance: {} passed", CHECKS.len()), "x"),
            Some(0),
            "never printed its summary",
        );
        problems_with(
            &log.replace(
                &format!("{} passed, 0 failed", CHECKS.len()),
                &format!("{} passed, 0 failed", CHECKS.len() + 1),
            ),
            Some(0),
            "lines appeared",
        );
        // Too few checks, even if all passed.
        let short = "Warden v0.1.0\nCONF PASS smccc-version: ok\nconformance: 1 passed, 0 failed\n";
        problems_with(short, Some(0), "at least 40");
        // Failures that are not checks (exceptions, panics) fail the run too.
        problems_with(
            &format!("{log}CONF FAIL exception: ESR 0x96000010\n"),
            Some(0),
            "CONF FAIL exception",
        );
        // An unknown name that passed.
        problems_with(
            &log.replace(
                "CONF PASS revision: fine",
                "CONF PASS revision: fine\nCONF PASS bogus: x",
            ),
            Some(0),
            "`bogus` passed",
        );
    }

    #[test]
    fn variants_exist_and_fit() {
        let names: Vec<&str> = variants().map(|v| v.name).collect();
        assert_eq!(names, VARIANT_NAMES);
        for v in variants() {
            assert_eq!(v.text_offset, None, "{}", v.name);
        }
    }

    #[test]
    fn command_line() {
        let v = variants().nth(2).unwrap();
        let a: Vec<String> = qemu_args(
            &v.machine(),
            Path::new("target/warden.bin"),
            Path::new("/t/conf,x.bin"),
        )
        .iter()
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
        let at = |s: &str| a.iter().position(|x| x == s).unwrap();
        assert_eq!(
            a[at("-machine") + 1],
            "virt,virtualization=on,iommu=smmuv3,gic-version=3"
        );
        assert_eq!(a[at("-cpu") + 1], "neoverse-n1");
        assert_eq!(a[at("-smp") + 1], "8");
        assert_eq!(a[at("-m") + 1], "5G");
        assert_eq!(a[at("-kernel") + 1], "target/warden.bin");
        assert!(a.contains(&"guest-loader,addr=0x50000000,kernel=/t/conf,,x.bin".to_string()));
        let devices: Vec<&String> = a
            .iter()
            .enumerate()
            .filter(|(i, _)| *i > 0 && a[i - 1] == "-device")
            .map(|(_, d)| d)
            .filter(|d| d.starts_with("edu,"))
            .collect();
        assert_eq!(devices, EDU_DEVICES.iter().collect::<Vec<_>>());
        assert!(a.contains(&"-no-reboot".to_string()));
        assert!(!a.iter().any(|x| x.contains("initrd")));
    }
}
