//! `conf:<variant>` tests: boot the hypercall conformance suite (test-images/conformance)
//! through Warden, in place of Linux, with two of QEMU's `edu` PCI devices, and judge
//! the console log.
//!
//! A variant passes only if: nothing printed `CONF FAIL`; every check of the suite's list
//! (test-images/conformance/src/names.rs, included below) printed `CONF PASS`; the summary
//! `conformance: N passed, M failed` says M = 0 and N ≥ [`MIN_CHECKS`], and N matches the
//! `CONF PASS` lines; Warden's banner appeared; and QEMU powered off by itself with status
//! 0 before the timeout.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::boottest::{BANNER_PREFIX, VARIANTS, Variant, WARDEN_ARGS, log_dir};
use crate::edutest::truncate;
use crate::qemu::{self, KERNEL_ADDR, Machine};
use crate::util::{self, Result, show};

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

/// The variants, from the boot tests' table.
pub fn variants() -> impl Iterator<Item = &'static Variant> {
    VARIANT_NAMES
        .iter()
        .filter_map(|n| VARIANTS.iter().find(|v| v.name == *n))
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
    crate::edutest::build_test_image(PACKAGE, "the conformance test image", &image_path())
}

/// The QEMU arguments of a conformance boot: Warden as the firmware-loaded image, the
/// suite as its `multiboot,kernel` module (no initrd), and the two edu devices.
pub fn qemu_args(machine: &Machine, warden: &Path, image: &Path) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |s: &str| a.push(s.into());
    push("-machine");
    push(&format!(
        "virt,virtualization=on,iommu=smmuv3,gic-version={}",
        machine.gic
    ));
    push("-cpu");
    push(&machine.cpu);
    push("-smp");
    push(&machine.smp.to_string());
    push("-m");
    push(&machine.mem);
    for s in ["-nographic", "-nic", "none", "-no-reboot", "-kernel"] {
        push(s);
    }
    a.push(warden.into());
    let mut push = |s: &str| a.push(s.into());
    push("-append");
    push(WARDEN_ARGS);
    push("-device");
    push(&format!(
        "guest-loader,addr={KERNEL_ADDR:#x},kernel={}",
        qemu::escape(&image.to_string_lossy())
    ));
    for dev in EDU_DEVICES {
        push("-device");
        push(dev);
    }
    push("-accel");
    push("tcg,thread=multi");
    a
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

/// Splits `name: details` into (name, details).
fn name_and_rest(s: &str) -> (String, String) {
    let end = s.find([':', ' ']).unwrap_or(s.len());
    let rest = s[end..].trim_start_matches(':').trim();
    (s[..end].to_string(), rest.to_string())
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
        } else if let Some(s) = line.strip_prefix("conformance: ") {
            let words: Vec<&str> = s.split_whitespace().collect();
            if let [n, "passed,", m, "failed"] = words.as_slice()
                && let (Ok(n), Ok(m)) = (n.parse(), m.parse())
            {
                r.summary = Some((n, m));
            }
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
    if !output.lines().any(|l| l.starts_with(BANNER_PREFIX)) {
        problems.push(format!(
            "no Warden banner (a line starting with `{BANNER_PREFIX}`)"
        ));
    }
    match exit {
        None => problems.push(format!(
            "QEMU did not exit within {} s and was killed",
            timeout.as_secs()
        )),
        Some(0) => {}
        Some(code) => problems.push(format!("QEMU exited with status {code}, not 0")),
    }
    problems
}

/// The console log of a variant.
pub fn log_path(v: &Variant) -> PathBuf {
    log_dir().join(format!("conf-{}.log", v.name))
}

/// Boots one variant and returns its problems (empty = passed).
pub fn run_variant(
    v: &Variant,
    warden: &Path,
    image: &Path,
    timeout: Duration,
) -> Result<Vec<String>> {
    let log = log_path(v);
    let machine = v.machine();
    let mut cmd = std::process::Command::new("qemu-system-aarch64");
    cmd.args(qemu_args(&machine, warden, image));
    println!(
        "    conf:{}: -cpu {} -smp {} -m {} gic-version={}, two edu devices (log: {})",
        v.name,
        v.cpu,
        v.smp,
        v.mem,
        v.gic,
        show(&log)
    );
    let outcome = qemu::run_captured(cmd, &log, timeout, |line| {
        if line.starts_with("CONF ")
            || (line.starts_with("conformance: ") && line.ends_with(" failed"))
            || line.starts_with("qemu stderr:")
        {
            println!("      {}", truncate(line, 200));
        }
    })?;
    let exit = outcome.status.map(|s| s.code().unwrap_or(-1));
    let problems = evaluate(&outcome.output, exit, timeout);
    println!(
        "    conf:{}: {} in {:.1} s",
        v.name,
        if problems.is_empty() { "PASS" } else { "FAIL" },
        outcome.elapsed.as_secs_f64()
    );
    for p in problems.iter().take(12) {
        println!("      - {}", truncate(p, 300));
    }
    if problems.len() > 12 {
        println!("      - … and {} more", problems.len() - 12);
    }
    if !problems.is_empty() {
        println!("      full console log: {}", log.display());
    }
    Ok(problems)
}

/// One `conf:<variant>` step of `cargo xtask test`: builds the image the first time
/// (`image` keeps the outcome for the other variants), boots it, and says what failed.
pub fn run_step(
    v: &Variant,
    warden: &Path,
    timeout: Duration,
    image: &mut Option<std::result::Result<PathBuf, String>>,
) -> std::result::Result<(), String> {
    let image = image
        .get_or_insert_with(|| build_image().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| format!("the conformance test image: {e}"))?;
    let problems = run_variant(v, warden, image, timeout).map_err(|e| e.to_string())?;
    match problems.as_slice() {
        [] => Ok(()),
        [first, rest @ ..] => Err(format!(
            "{first}{} (log: {})",
            if rest.is_empty() {
                String::new()
            } else {
                format!(" (and {} more problems)", rest.len())
            },
            log_path(v).display()
        )),
    }
}

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
