//! `edu:<variant>` tests: boot the `edu-dma` test image (test-images/edu-dma) through
//! Warden, in place of Linux, with QEMU's `edu` PCI device, and judge the console log.
//!
//! A variant passes only if: every check printed `EDU PASS <name>` and nothing printed
//! `EDU FAIL`; the summary line says `edu: 5 passed, 0 failed`; Warden's banner appeared;
//! for each address the image names in an `edu: target <what>=0x…` line (the carve-out's
//! first and middle page, the donated page) Warden logged an SMMU fault: a line of its
//! own (not one of the image's `EDU `/`edu:` lines) containing `SMMU`, `sid 0x10` (the
//! StreamID of `edu,addr=2`) and that address as a `0x…` number; Warden logged a host
//! stage-2 fault on fw_cfg's DMA register (the image's `edu: fw_cfg at …, DMA register
//! 0x…` line); and QEMU powered off by itself with status 0 before the timeout.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

#[cfg(test)]
use crate::boottest::WARDEN_ARGS;
use crate::boottest::{Variant, banner_problem};
use crate::qemu::{self, Machine};
use crate::testimage::{self, TestImage, parse_summary};
use crate::util::{self, hex_numbers, name_and_rest, say, show};

/// The boot-test variants the edu image runs on.
pub const VARIANT_NAMES: [&str; 3] = ["max-gicv3", "a57-gicv2", "n1-5g"];
/// The image's checks, in the order it runs them (test-images/edu-dma/src/checks.rs).
pub const CHECKS: [&str; 5] = [
    "dma-to-host",
    "dma-into-carveout",
    "donate-blocks-dma",
    "donate-errors",
    "fw-cfg-dma",
];
/// The image names fw_cfg's DMA address register in a line starting with this
/// (`edu: fw_cfg at 0x… (node …), DMA register 0x…; …`): Warden must log the host's
/// stage-2 fault on it.
pub const FW_CFG_LINE: &str = "edu: fw_cfg at ";
/// The addresses (named by the image's `edu: target <name>=0x…` lines) that Warden must
/// report SMMU faults for.
pub const TARGETS: [&str; 3] = ["carveout-base", "carveout-middle", "donated-page"];
/// edu at 00:02.0, DMA addresses not truncated (QEMU's default mask is 28 bits).
pub const EDU_DEVICE: &str = "edu,addr=2,dma_mask=0xffffffffffffffff";
/// StreamID of 00:02.0 (requester ID 0x10; QEMU's `iommu-map` is the identity).
pub const EDU_SID: u64 = 0x10;
/// Per-boot timeout unless `--timeout` says otherwise (a run takes a few seconds).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// The image's package (and binary) name.
const PACKAGE: &str = "edu-dma";

/// The `edu:<variant>` tests.
pub struct Edu;

impl TestImage for Edu {
    const PREFIX: &'static str = "edu";
    const WHAT: &'static str = "the edu test image";
    const DEFAULT_TIMEOUT: Duration = DEFAULT_TIMEOUT;
    const MAX_LISTED: usize = usize::MAX;

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
        format!("-device {EDU_DEVICE}")
    }

    fn echo(line: &str) -> bool {
        line.starts_with("EDU ")
            || line.starts_with("edu: target")
            || (line.starts_with("edu: ") && line.ends_with(" failed"))
            || (!is_image_line(line)
                && !line.starts_with(crate::boottest::DECISION_PREFIX)
                && line.contains("SMMU"))
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
    util::target_dir().join("test-images").join("edu-dma.bin")
}

/// Builds `edu-dma` (release, aarch64-unknown-none), checks that its code keeps the
/// MMU-off rules, converts it to a flat arm64 Image and returns its path.
pub fn build_image() -> Result<PathBuf> {
    build_test_image(PACKAGE, Edu::WHAT, &image_path())
}

/// Builds a bare-metal EL1 test image `package` (release, aarch64-unknown-none), checks
/// that its code keeps the MMU-off rules (no exclusives, atomics or `DC ZVA`), converts
/// it to a flat arm64 Image at `out` and returns that path.
pub fn build_test_image(package: &str, what: &str, out: &Path) -> Result<PathBuf> {
    let mut cmd = crate::cargo();
    cmd.args([
        "build",
        "-p",
        package,
        "--release",
        "--target",
        crate::build::TEST_IMAGE_TARGET,
    ]);
    say(format!("building {what}: {}", util::describe(&cmd)));
    util::run(&mut cmd)?;
    let elf_path = util::target_dir()
        .join(crate::build::TEST_IMAGE_TARGET)
        .join("release")
        .join(package);
    let elf =
        std::fs::read(&elf_path).with_context(|| format!("cannot read {}", show(&elf_path)))?;
    let bad =
        crate::insn::scan(&elf, crate::insn::mmu_off_forbidden).with_context(|| show(&elf_path))?;
    if !bad.is_empty() {
        bail!(
            "{} runs with the EL1 MMU off (all data accesses Device memory) and must not use \
             exclusives, atomics or DC ZVA, but contains {} such instruction(s): {}",
            show(&elf_path),
            bad.len(),
            crate::insn::describe(&bad, 8)
        );
    }
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    crate::build::elf_to_image(&elf_path, out)?;
    Ok(out.to_path_buf())
}

/// The QEMU arguments of an edu boot: Warden as the firmware-loaded image, the test image
/// as its `multiboot,kernel` module (no initrd), and the edu device.
pub fn qemu_args(machine: &Machine, warden: &Path, image: &Path) -> Vec<OsString> {
    testimage::qemu_args(machine, warden, image, &[EDU_DEVICE])
}

/// What the image printed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Results {
    /// (name, details) of each `EDU PASS`.
    pub passed: Vec<(String, String)>,
    /// (name, reason) of each `EDU FAIL`.
    pub failed: Vec<(String, String)>,
    /// The `edu: N passed, M failed` summary.
    pub summary: Option<(u32, u32)>,
    /// The `edu: target <name>=0x…` addresses.
    pub targets: Vec<(String, u64)>,
    /// fw_cfg's DMA register, from the `edu: fw_cfg at …, DMA register 0x…` line.
    pub fw_cfg_dma: Option<u64>,
}

/// Whether a console line is the image's own (not Warden's or QEMU's).
fn is_image_line(line: &str) -> bool {
    line.starts_with("EDU ") || line.starts_with("edu:")
}

/// Collects the image's lines from a console log.
pub fn parse_results(log: &str) -> Results {
    let mut r = Results::default();
    for line in log.lines() {
        if let Some(p) = line.strip_prefix("EDU PASS ") {
            r.passed.push(name_and_rest(p));
        } else if let Some(f) = line.strip_prefix("EDU FAIL ") {
            r.failed.push(name_and_rest(f));
        } else if line.starts_with(FW_CFG_LINE) {
            r.fw_cfg_dma = line
                .split_once("DMA register ")
                .and_then(|(_, rest)| rest.split([';', ' ', ',']).next())
                .and_then(|word| hex_numbers(word).first().copied());
        } else if let Some(t) = line.strip_prefix("edu: target ") {
            if let Some((name, value)) = t.trim().split_once('=')
                && let Some(hex) = value.strip_prefix("0x")
                && let Ok(v) = u64::from_str_radix(hex, 16)
            {
                r.targets.push((name.to_string(), v));
            }
        } else if let Some(s) = line.strip_prefix("edu: ")
            && let Some(summary) = parse_summary(s)
        {
            r.summary = Some(summary);
        }
    }
    r
}

/// The StreamIDs a line names: `sid 0x10`, `SID=0x10`, `sid: 0x10` (any case).
pub fn stream_ids(line: &str) -> Vec<u64> {
    let lower = line.to_ascii_lowercase();
    lower
        .match_indices("sid")
        .filter(|(at, _)| {
            // A word of its own: not the end of e.g. "bsid".
            *at == 0 || !lower.as_bytes()[at - 1].is_ascii_alphanumeric()
        })
        .filter_map(|(at, _)| {
            let rest = lower[at + 3..].trim_start_matches([' ', '=', ':']);
            let hex: String = rest
                .strip_prefix("0x")?
                .chars()
                .take_while(char::is_ascii_hexdigit)
                .collect();
            u64::from_str_radix(&hex, 16).ok()
        })
        .collect()
}

/// Whether Warden logged an SMMU fault of edu at `addr`: one of its lines containing
/// `SMMU`, StreamID [`EDU_SID`] and `addr`.
pub fn smmu_fault_logged(output: &str, addr: u64) -> bool {
    output.lines().any(|l| {
        !is_image_line(l)
            && l.contains("SMMU")
            && stream_ids(l).contains(&EDU_SID)
            && hex_numbers(l).contains(&addr)
    })
}

/// Everything wrong with an edu boot (empty: it passed).
pub fn evaluate(output: &str, exit: Option<i32>, timeout: Duration) -> Vec<String> {
    let mut problems = Vec::new();
    let r = parse_results(output);
    for (name, why) in &r.failed {
        problems.push(format!("EDU FAIL {name}: {why}"));
    }
    for name in CHECKS {
        let passed = r.passed.iter().any(|(n, _)| n == name);
        let failed = r.failed.iter().any(|(n, _)| n == name);
        if !passed && !failed {
            problems.push(format!("no result for the `{name}` check"));
        }
    }
    match r.summary {
        None => {
            problems.push("the image never printed its summary `edu: N passed, M failed`".into())
        }
        Some((n, 0)) if n as usize == CHECKS.len() => {}
        Some((n, m)) => problems.push(format!(
            "the image's summary says {n} passed, {m} failed (expected {} passed, 0 failed)",
            CHECKS.len()
        )),
    }
    problems.extend(banner_problem(output));
    for target in TARGETS {
        match r.targets.iter().find(|(n, _)| n == target) {
            None => problems.push(format!(
                "the image did not name its `{target}` address (`edu: target {target}=0x…`)"
            )),
            Some(&(_, addr)) if !smmu_fault_logged(output, addr) => problems.push(format!(
                "Warden logged no SMMU fault for sid {EDU_SID:#x} at {target} {addr:#x} (a line \
                 with `SMMU`, `sid {EDU_SID:#x}` and `{addr:#x}`)"
            )),
            Some(_) => {}
        }
    }
    match r.fw_cfg_dma {
        None => problems.push(format!(
            "the image did not name fw_cfg's DMA register (`{FW_CFG_LINE}…, DMA register 0x…`)"
        )),
        Some(addr) => {
            let logged = output.lines().any(|l| {
                !is_image_line(l)
                    && l.contains(crate::boottest::FAULT_TEXT)
                    && hex_numbers(l).contains(&addr)
            });
            if !logged {
                problems.push(format!(
                    "Warden logged no `{}` for the host's write of fw_cfg's DMA register {addr:#x}",
                    crate::boottest::FAULT_TEXT
                ));
            }
        }
    }
    problems.extend(qemu::exit_problem(exit, timeout));
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
Warden v0.1.0 — EL2 hypervisor
warden: carve-out 0x40200000..0x42600000 (36 MiB)
edu: edu-dma test image at EL1, loaded at 0x50000000
EDU PASS dma-to-host: 4096 bytes RAM 0x50092000 -> edu -> RAM 0x50091000 arrived intact
edu: target carveout-base=0x40200000
edu: target carveout-middle=0x41400000
warden: WARN  SMMU event F_TRANSLATION sid 0x10 iova 0x40200000 read
warden: WARN  SMMU event F_TRANSLATION sid 0x10 iova 0x40200000 write
warden: WARN  SMMU event F_TRANSLATION sid 0x10 iova 0x41400000 write
EDU PASS dma-into-carveout: carve-out 0x40200000..0x42600000
edu: target donated-page=0x50094000
warden: WARN  SMMU event F_TRANSLATION sid 0x10 iova 0x50094000 write
EDU PASS donate-blocks-dma: page 0x50094000 donated
EDU PASS donate-errors: MEM_DONATE(0x50093010, 1) = -2 (INVALID)
edu: fw_cfg at 0x9020000 (node disabled), DMA register 0x9020010; donated page 0x50096000
warden: ERROR host stage-2 fault: write of IPA 0x9020010 (VA 0x9020010) from EL1 at 0x50001234 on CPU 0, ESR 0x92000046: injecting external abort
EDU PASS fw-cfg-dma: fw_cfg DMA of its signature to donated page 0x50096000: aborted
edu: 5 passed, 0 failed
";

    const T: Duration = Duration::from_secs(60);

    #[test]
    fn a_good_run_passes() {
        assert_eq!(evaluate(GOOD, Some(0), T), Vec::<String>::new());
        let r = parse_results(GOOD);
        assert_eq!(r.passed.len(), 5);
        assert_eq!(r.summary, Some((5, 0)));
        assert_eq!(r.fw_cfg_dma, Some(0x902_0010));
        assert_eq!(
            r.targets,
            [
                ("carveout-base".to_string(), 0x4020_0000),
                ("carveout-middle".to_string(), 0x4140_0000),
                ("donated-page".to_string(), 0x5009_4000)
            ]
        );
    }

    #[test]
    fn every_requirement_can_fail() {
        let check = |log: &str, exit: Option<i32>, needle: &str| {
            let p = evaluate(log, exit, T);
            assert!(
                p.iter().any(|p| p.contains(needle)),
                "{needle:?} not in {p:?}"
            );
        };
        check(GOOD, None, "did not exit within 60 s");
        check(GOOD, Some(1), "status 1");
        check(&GOOD.replace("Warden v0.1.0", "Hello"), Some(0), "banner");
        check(
            &GOOD.replace("EDU PASS donate-errors", "EDU FAIL donate-errors"),
            Some(0),
            "EDU FAIL donate-errors",
        );
        check(
            &GOOD.replace("EDU PASS dma-to-host", "EDU INFO dma-to-host"),
            Some(0),
            "no result for the `dma-to-host` check",
        );
        check(
            &GOOD.replace("edu: 5 passed, 0 failed", ""),
            Some(0),
            "never printed its summary",
        );
        check(
            &GOOD.replace("5 passed, 0 failed", "4 passed, 1 failed"),
            Some(0),
            "4 passed, 1 failed",
        );
        check(
            &GOOD.replace("5 passed, 0 failed", "6 passed, 0 failed"),
            Some(0),
            "6 passed, 0 failed",
        );
        check(
            &GOOD.replace("0x9020010 (VA 0x9020010)", "0x9020000 (VA 0x9020000)"),
            Some(0),
            "for the host's write of fw_cfg's DMA register 0x9020010",
        );
        check(
            &GOOD.replace("DMA register 0x9020010", "DMA register ?"),
            Some(0),
            "did not name fw_cfg's DMA register",
        );
        // Extra failures (setup, exceptions) fail the run too.
        check(
            &format!("{GOOD}EDU FAIL exception: ESR 0x96000010\n"),
            Some(0),
            "EDU FAIL exception",
        );
        check(
            &GOOD.replace("edu: target donated-page=0x50094000\n", ""),
            Some(0),
            "did not name its `donated-page`",
        );
    }

    #[test]
    fn smmu_faults_must_name_sid_and_address() {
        let missing = |log: &str, target: &str| {
            evaluate(log, Some(0), T)
                .iter()
                .any(|p| p.contains("no SMMU fault") && p.contains(target))
        };
        // Remove the only event for the donated page.
        let no_p = GOOD.replace("iova 0x50094000", "iova 0x50095000");
        assert!(missing(&no_p, "donated-page"));
        // Wrong StreamID, or a longer one that merely starts with 0x10.
        for sid in ["sid 0x11", "sid 0x100", "bsid 0x10"] {
            let log = GOOD.replace(
                "sid 0x10 iova 0x50094000",
                &format!("{sid} iova 0x50094000"),
            );
            assert!(missing(&log, "donated-page"), "{sid}");
        }
        // Not an SMMU line.
        let log = GOOD.replace(
            "WARN  SMMU event F_TRANSLATION sid 0x10 iova 0x41400000",
            "WARN  event F_TRANSLATION sid 0x10 iova 0x41400000",
        );
        assert!(missing(&log, "carveout-middle"));
        // The image's own lines never count, whatever they say.
        let log = GOOD.replace(
            "warden: WARN  SMMU event F_TRANSLATION sid 0x10 iova 0x50094000 write",
            "edu: SMMU sid 0x10 0x50094000",
        );
        assert!(missing(&log, "donated-page"));
        // Other spellings of the same facts are fine.
        for line in [
            "warden: WARN SMMU event 0x10 sid=0x10 addr=0x0000000050094000",
            "[warden] smmu0: SMMU F_PERMISSION SID: 0x10 IPA 0x5009_4000",
        ] {
            let log = GOOD.replace(
                "warden: WARN  SMMU event F_TRANSLATION sid 0x10 iova 0x50094000 write",
                line,
            );
            assert!(evaluate(&log, Some(0), T).is_empty(), "{line}");
        }
    }

    #[test]
    fn stream_id_parsing() {
        assert_eq!(stream_ids("SMMU sid 0x10 iova 0x1"), [0x10]);
        assert_eq!(stream_ids("SID=0x8, sid: 0x10"), [0x8, 0x10]);
        assert!(stream_ids("sid 16").is_empty());
        assert!(stream_ids("bsid 0x10").is_empty());
        assert_eq!(
            hex_numbers("a 0x10, b 0xffff_0000 c 0x"),
            [0x10, 0xffff_0000]
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
        let v = variants().nth(1).unwrap();
        let a: Vec<String> = qemu_args(
            &v.machine(),
            Path::new("target/warden.bin"),
            Path::new("/t/edu,dma.bin"),
        )
        .iter()
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
        let at = |s: &str| a.iter().position(|x| x == s).unwrap();
        assert_eq!(
            a[at("-machine") + 1],
            "virt,virtualization=on,iommu=smmuv3,gic-version=2"
        );
        assert_eq!(a[at("-cpu") + 1], "cortex-a57");
        assert_eq!(a[at("-kernel") + 1], "target/warden.bin");
        assert_eq!(a[at("-append") + 1], WARDEN_ARGS);
        assert!(a.contains(&"guest-loader,addr=0x50000000,kernel=/t/edu,,dma.bin".to_string()));
        assert!(a.contains(&EDU_DEVICE.to_string()));
        assert!(a.contains(&"-no-reboot".to_string()));
        assert!(!a.iter().any(|x| x.contains("initrd")));
    }
}
