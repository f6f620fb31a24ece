//! What the `edu:<variant>` and `conf:<variant>` tests share: a bare-metal EL1 test image
//! booted through Warden, in place of Linux, with some of QEMU's `edu` PCI devices; the
//! QEMU command line, the captured run and its report. Each kind judges its console log
//! itself ([`TestImage::evaluate`]).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;

use crate::boottest::{VARIANTS, Variant, WARDEN_ARGS, log_dir};
use crate::qemu::{self, KERNEL_ADDR, Machine};
use crate::util::{show, truncate};

/// One kind of test image boot (`edu`, `conf`).
pub trait TestImage {
    /// The step and log name prefix: steps are `<PREFIX>:<variant>`, logs
    /// `<PREFIX>-<variant>.log`.
    const PREFIX: &'static str;
    /// The image, in messages (`the edu test image`).
    const WHAT: &'static str;
    /// Per-boot timeout unless `--timeout` says otherwise.
    const DEFAULT_TIMEOUT: Duration;
    /// Most problems a failed boot lists on the console.
    const MAX_LISTED: usize;

    /// The boot-test variants the image runs on.
    fn variants() -> impl Iterator<Item = &'static Variant>;
    /// Builds the image and returns the flat image's path.
    fn build_image() -> Result<PathBuf>;
    /// The QEMU arguments of a boot.
    fn qemu_args(machine: &Machine, warden: &Path, image: &Path) -> Vec<OsString>;
    /// The devices, as the line announcing a boot describes them.
    fn devices_note() -> String;
    /// Whether a console line is echoed while the boot runs (QEMU's own messages always
    /// are).
    fn echo(line: &str) -> bool;
    /// Everything wrong with a boot (empty: it passed).
    fn evaluate(output: &str, exit: Option<i32>, timeout: Duration) -> Vec<String>;
}

/// The variants of the boot tests' table named in `names`, in that order.
pub fn variants(names: &'static [&'static str]) -> impl Iterator<Item = &'static Variant> {
    names
        .iter()
        .filter_map(|n| VARIANTS.iter().find(|v| v.name == *n))
}

/// The QEMU arguments of a test image boot: Warden as the firmware-loaded image, the test
/// image as its `multiboot,kernel` module (no initrd), and `devices` (one `-device` each).
pub fn qemu_args(
    machine: &Machine,
    warden: &Path,
    image: &Path,
    devices: &[&str],
) -> Vec<OsString> {
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
    for dev in devices {
        push("-device");
        push(dev);
    }
    push("-accel");
    push("tcg,thread=multi");
    a
}

/// The `N passed, M failed` of a summary line, after the image's prefix.
pub fn parse_summary(s: &str) -> Option<(u32, u32)> {
    let words: Vec<&str> = s.split_whitespace().collect();
    if let [n, "passed,", m, "failed"] = words.as_slice()
        && let (Ok(n), Ok(m)) = (n.parse(), m.parse())
    {
        Some((n, m))
    } else {
        None
    }
}

/// The console log of a variant.
pub fn log_path<T: TestImage>(v: &Variant) -> PathBuf {
    log_dir().join(format!("{}-{}.log", T::PREFIX, v.name))
}

/// Boots one variant and returns its problems (empty = passed).
pub fn run_variant<T: TestImage>(
    v: &Variant,
    warden: &Path,
    image: &Path,
    timeout: Duration,
) -> Result<Vec<String>> {
    let log = log_path::<T>(v);
    let machine = v.machine();
    let mut cmd = std::process::Command::new("qemu-system-aarch64");
    cmd.args(T::qemu_args(&machine, warden, image));
    println!(
        "    {}:{}: -cpu {} -smp {} -m {} gic-version={}, {} (log: {})",
        T::PREFIX,
        v.name,
        v.cpu,
        v.smp,
        v.mem,
        v.gic,
        T::devices_note(),
        show(&log)
    );
    let outcome = qemu::run_captured(cmd, &log, timeout, |line| {
        if T::echo(line) || line.starts_with("qemu stderr:") {
            println!("      {}", truncate(line, 200));
        }
    })?;
    let problems = T::evaluate(&outcome.output, outcome.exit_code(), timeout);
    println!(
        "    {}:{}: {} in {:.1} s",
        T::PREFIX,
        v.name,
        if problems.is_empty() { "PASS" } else { "FAIL" },
        outcome.elapsed.as_secs_f64()
    );
    for p in problems.iter().take(T::MAX_LISTED) {
        println!("      - {}", truncate(p, 300));
    }
    if problems.len() > T::MAX_LISTED {
        println!("      - … and {} more", problems.len() - T::MAX_LISTED);
    }
    if !problems.is_empty() {
        println!("      full console log: {}", log.display());
    }
    Ok(problems)
}

/// One `<PREFIX>:<variant>` step of `cargo xtask test`: builds the test image the first
/// time (`image` keeps the outcome for the other variants), boots it, and says what
/// failed.
pub fn run_step<T: TestImage>(
    v: &Variant,
    warden: &Path,
    timeout: Duration,
    image: &mut Option<std::result::Result<PathBuf, String>>,
) -> std::result::Result<(), String> {
    let image = image
        .get_or_insert_with(|| T::build_image().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| format!("{}: {e}", T::WHAT))?;
    let problems = run_variant::<T>(v, warden, image, timeout).map_err(|e| format!("{e:#}"))?;
    match problems.as_slice() {
        [] => Ok(()),
        [first, rest @ ..] => Err(format!(
            "{first}{} (log: {})",
            if rest.is_empty() {
                String::new()
            } else {
                format!(" (and {} more problems)", rest.len())
            },
            log_path::<T>(v).display()
        )),
    }
}
