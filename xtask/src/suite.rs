//! `cargo xtask test`: every test layer in order, a summary, non-zero exit on failure.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::boottest::{self, VARIANTS};
use crate::testimage::{self, TestImage};
use crate::util::describe;
use crate::{build, cargo, conformance, deps, edutest, gictest, initramfs};

/// The steps, in the order they run. Boot steps are named `boot:<variant>`, the edu DMA
/// test image's boots `edu:<variant>`, the conformance suite's boots `conf:<variant>`.
pub fn step_names() -> Vec<String> {
    let mut names: Vec<String> = ["fmt", "clippy", "clippy-aarch64", "unit", "image"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    // The hypercall fuzz harness's smoke, right after the unit tests.
    let at = names.iter().position(|s| s == "unit").map_or(0, |i| i + 1);
    names.insert(at, "fuzz-smoke".into());
    // `bench --quick`'s deterministic checks (host only), right after the fuzz smoke.
    names.insert(at + 1, "bench".into());
    names.extend(VARIANTS.iter().map(|v| format!("boot:{}", v.name)));
    names.extend(group_steps("edu", &edutest::VARIANT_NAMES));
    names.extend(group_steps("conf", &conformance::VARIANT_NAMES));
    names.extend(group_steps("gic", &gictest::VARIANT_NAMES));
    names
}

/// The `cargo xtask bench` sections the `bench` step runs (with `--quick`).
pub const BENCH_SECTIONS: [&str; 2] = ["s2", "core"];

/// The steps of a group: `<prefix>:<variant>` for each variant.
fn group_steps(prefix: &str, variants: &[&str]) -> Vec<String> {
    variants.iter().map(|v| format!("{prefix}:{v}")).collect()
}

/// Options of `cargo xtask test`.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Run only these (step names, `boot` for all boots, or a variant name).
    pub only: Vec<String>,
    /// Skip these (same names).
    pub skip: Vec<String>,
    pub timeout_secs: Option<u64>,
    pub direct: bool,
    /// Boot this flat image instead of building one.
    pub image: Option<std::path::PathBuf>,
}

/// Whether a filter word selects a step.
pub fn matches(word: &str, step: &str) -> bool {
    word == step
        || (word == "boot" || word == "qemu") && step.starts_with("boot:")
        || (word == "edu" || word == "qemu") && step.starts_with("edu:")
        || (word == "conf" || word == "qemu") && step.starts_with("conf:")
        || (word == "gic" || word == "qemu") && step.starts_with("gic:")
        || step.strip_prefix("boot:") == Some(word)
        || word == "clippy" && step == "clippy-aarch64"
}

/// The steps selected by `--only`/`--skip`, in order.
pub fn select(opts: &Options) -> Result<Vec<String>> {
    for word in opts.only.iter().chain(&opts.skip) {
        if !step_names().iter().any(|s| matches(word, s)) {
            bail!(
                "unknown test step '{word}'; the steps are: {}, boot",
                step_names().join(", ")
            );
        }
    }
    let mut steps: Vec<String> = step_names()
        .into_iter()
        .filter(|s| opts.only.is_empty() || opts.only.iter().any(|w| matches(w, s)))
        .filter(|s| !opts.skip.iter().any(|w| matches(w, s)))
        .collect();
    // Boots need the image (unless they boot Linux directly); edu and conformance boots
    // always run Warden.
    let boots = steps.iter().any(|s| s.starts_with("boot:"));
    let edus = steps
        .iter()
        .any(|s| s.starts_with("edu:") || s.starts_with("conf:") || s.starts_with("gic:"));
    let prebuilt = opts.direct || opts.image.is_some();
    let need_image = boots && !prebuilt || edus && opts.image.is_none();
    if need_image && !steps.iter().any(|s| s == "image") {
        if opts.skip.iter().any(|w| w == "image") {
            bail!("the boot steps need the image: do not skip `image`");
        }
        let at = steps
            .iter()
            .position(|s| {
                s.starts_with("boot:")
                    || s.starts_with("edu:")
                    || s.starts_with("conf:")
                    || s.starts_with("gic:")
            })
            .unwrap_or(0);
        steps.insert(at, "image".into());
    }
    Ok(steps)
}

#[derive(Debug)]
enum Outcome {
    Pass,
    Fail(String),
    Skip(String),
}

fn cargo_step(args: &[&str]) -> Outcome {
    let mut cmd = cargo();
    cmd.args(args);
    run_step_cmd(cmd)
}

fn run_step_cmd(mut cmd: Command) -> Outcome {
    println!("    $ {}", describe(&cmd));
    match cmd.status() {
        Ok(s) if s.success() => Outcome::Pass,
        Ok(s) => Outcome::Fail(format!("`{}` failed ({s})", describe(&cmd))),
        Err(e) => Outcome::Fail(format!("cannot run `{}`: {e}", describe(&cmd))),
    }
}

/// A `<T::PREFIX>:<variant>` step (edu, conformance): boots test image `T` through
/// Warden, unless QEMU or Warden's image is missing. `image` keeps the test image (or
/// why it could not be built) for the group's other steps.
fn test_image_step<T: TestImage>(
    step: &str,
    opts: &Options,
    qemu_ok: bool,
    image_ok: bool,
    image: &mut Option<std::result::Result<PathBuf, String>>,
) -> Outcome {
    let name = &step[T::PREFIX.len() + ":".len()..];
    let v = T::variants()
        .find(|v| v.name == name)
        .expect("known variant");
    let warden = opts.image.clone().unwrap_or_else(build::image_path);
    if !qemu_ok {
        Outcome::Skip("QEMU could not be set up".into())
    } else if !(image_ok || opts.image.is_some()) {
        Outcome::Skip("no image (the image step failed)".into())
    } else {
        let t = opts
            .timeout_secs
            .map_or(T::DEFAULT_TIMEOUT, Duration::from_secs);
        match testimage::run_step::<T>(v, &warden, t, image) {
            Ok(()) => Outcome::Pass,
            Err(why) => Outcome::Fail(why),
        }
    }
}

/// Runs the selected steps; returns whether all passed.
pub fn run(opts: &Options) -> Result<bool> {
    let steps = select(opts)?;
    // Boots need a target too: the initramfs carries the fp-regs program.
    let needs_target = steps
        .iter()
        .any(|s| s == "clippy-aarch64" || s == "image" || s.starts_with("boot:"));
    let boots: Vec<&str> = steps
        .iter()
        .filter_map(|s| s.strip_prefix("boot:"))
        .collect();
    let edus = steps
        .iter()
        .any(|s| s.starts_with("edu:") || s.starts_with("conf:") || s.starts_with("gic:"));

    let mut results: Vec<(String, Outcome, Duration)> = Vec::new();
    let mut payload = None;
    let setup_start = Instant::now();
    if needs_target {
        deps::ensure_rust_target()?;
    }
    if !boots.is_empty() {
        // Installing is part of the boot tests: a failure there fails them, not xtask.
        let ready = deps::ensure_qemu()
            .and_then(|()| deps::ensure_payload())
            .and_then(|p| {
                let initrd = initramfs::ensure(&p)?;
                Ok((p, initrd))
            });
        match ready {
            Ok(p) => payload = Some(p),
            Err(e) => {
                println!("xtask: cannot set up the boot tests: {e:#}");
                results.push((
                    "setup".into(),
                    Outcome::Fail(format!("{e:#}")),
                    setup_start.elapsed(),
                ))
            }
        }
    }

    // The edu and conformance boots need QEMU only (no Linux payload).
    let mut qemu_ok = !boots.is_empty() && payload.is_some();
    if edus && !qemu_ok {
        match deps::ensure_qemu() {
            Ok(()) => qemu_ok = true,
            Err(e) => println!("xtask: cannot set up the edu/conformance tests: {e:#}"),
        }
    }
    // The edu and conformance test images, built by the first step that boots each.
    let mut edu_image = None;
    let mut conf_image = None;
    let mut gic_image = None;

    let timeout = Duration::from_secs(opts.timeout_secs.unwrap_or(240));
    let mut image_ok = false;
    for step in &steps {
        println!("==> {step}");
        let start = Instant::now();
        let outcome = match step.as_str() {
            "fmt" => cargo_step(&["fmt", "--all", "--", "--check"]),
            "clippy" => cargo_step(&[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]),
            "clippy-aarch64" => match cargo_step(&[
                "clippy",
                "-p",
                "warden",
                "-p",
                "hyp",
                "-p",
                "host-abi",
                "--target",
                build::TARGET,
                "--",
                "-D",
                "warnings",
            ]) {
                Outcome::Pass => cargo_step(&[
                    "clippy",
                    "-p",
                    "edu-dma",
                    "-p",
                    "el1-rt",
                    "-p",
                    "conformance",
                    "-p",
                    "fp-regs",
                    "-p",
                    "gic-its",
                    "-p",
                    "blkbench",
                    "--target",
                    build::TEST_IMAGE_TARGET,
                    "--",
                    "-D",
                    "warnings",
                ]),
                fail => fail,
            },
            "unit" => cargo_step(&["test", "--workspace", "--no-fail-fast"]),
            // The hypercall fuzz harness on stable: the checked-in corpus and a few
            // thousand generated inputs (`cargo xtask fuzz` runs the real fuzzer).
            "fuzz-smoke" => cargo_step(&[
                "test",
                "-p",
                "hyp",
                "--lib",
                "fuzzing::",
                "--",
                "--include-ignored",
            ]),
            // Sections 1 and 2 only: host-side callgrind counts whose checks are
            // deterministic; sections 3 and 4 boot QEMU and measure, they check nothing
            // the boot steps do not.
            "bench" => {
                let o = crate::bench::Options {
                    quick: true,
                    only: BENCH_SECTIONS.iter().map(|s| s.to_string()).collect(),
                };
                println!(
                    "    $ cargo xtask bench --quick --only {}",
                    BENCH_SECTIONS.join(",")
                );
                match crate::bench::run(&o) {
                    Ok(true) => Outcome::Pass,
                    Ok(false) => Outcome::Fail("a deterministic bench check failed".into()),
                    Err(e) => Outcome::Fail(format!("{e:#}")),
                }
            }
            "image" => match build::build_image(false) {
                Ok(_) => {
                    image_ok = true;
                    Outcome::Pass
                }
                Err(e) => Outcome::Fail(format!("{e:#}")),
            },
            edu if edu.starts_with("edu:") => {
                test_image_step::<edutest::Edu>(edu, opts, qemu_ok, image_ok, &mut edu_image)
            }
            conf if conf.starts_with("conf:") => {
                test_image_step::<conformance::Conf>(conf, opts, qemu_ok, image_ok, &mut conf_image)
            }
            gic if gic.starts_with("gic:") => {
                test_image_step::<gictest::Gic>(gic, opts, qemu_ok, image_ok, &mut gic_image)
            }
            boot => {
                let name = boot.strip_prefix("boot:").expect("boot step");
                let v = VARIANTS
                    .iter()
                    .find(|v| v.name == name)
                    .expect("known variant");
                match (&payload, image_ok || opts.direct || opts.image.is_some()) {
                    (None, _) => {
                        Outcome::Skip("the host kernel/initramfs could not be set up".into())
                    }
                    (_, false) => Outcome::Skip("no image (the image step failed)".into()),
                    (Some((p, initrd)), true) => {
                        let bopts = boottest::Options {
                            timeout,
                            direct: opts.direct,
                        };
                        match boottest::run_variant(
                            v,
                            &opts.image.clone().unwrap_or_else(build::image_path),
                            &p.kernel,
                            initrd,
                            &bopts,
                        ) {
                            Ok(problems) if problems.is_empty() => Outcome::Pass,
                            Ok(problems) => Outcome::Fail(format!(
                                "{} (log: {})",
                                problems.join("; "),
                                boottest::log_dir()
                                    .join(format!(
                                        "{name}{}.log",
                                        if opts.direct { "-direct" } else { "" }
                                    ))
                                    .display()
                            )),
                            Err(e) => Outcome::Fail(format!("{e:#}")),
                        }
                    }
                }
            }
        };
        let elapsed = start.elapsed();
        let word = match &outcome {
            Outcome::Pass => "PASS",
            Outcome::Fail(_) => "FAIL",
            Outcome::Skip(_) => "SKIP",
        };
        println!("<== {step}: {word} ({:.0} s)", elapsed.as_secs_f64());
        results.push((step.clone(), outcome, elapsed));
    }

    println!("\n==> summary");
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for (name, outcome, elapsed) in &results {
        let secs = elapsed.as_secs_f64();
        match outcome {
            Outcome::Pass => {
                passed += 1;
                println!("  PASS  {name:<16} {secs:>5.0} s");
            }
            Outcome::Fail(why) => {
                failed += 1;
                println!(
                    "  FAIL  {name:<16} {secs:>5.0} s  {}",
                    why.lines().next().unwrap_or("")
                );
            }
            Outcome::Skip(why) => {
                skipped += 1;
                println!("  SKIP  {name:<16} {secs:>5.0} s  {why}");
            }
        }
    }
    // Skipped steps were selected and could not run: that is a failure of the run.
    println!("xtask: {passed} passed, {failed} failed, {skipped} skipped");
    Ok(failed == 0 && skipped == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(only: &[&str], skip: &[&str]) -> Vec<String> {
        select(&Options {
            only: only.iter().map(|s| s.to_string()).collect(),
            skip: skip.iter().map(|s| s.to_string()).collect(),
            ..Options::default()
        })
        .unwrap()
    }

    /// A group's steps, and what `--only <prefix>` selects: the image, then the steps.
    fn group(prefix: &str, variants: &[&str]) -> (Vec<String>, Vec<String>) {
        let steps = group_steps(prefix, variants);
        let mut want = vec!["image".to_string()];
        want.extend(steps.iter().cloned());
        (steps, want)
    }

    /// The selection of `--only <word>` with `--direct`, and with `--image w.bin`.
    fn direct_and_prebuilt(word: &str) -> (Vec<String>, Vec<String>) {
        let direct = select(&Options {
            only: vec![word.into()],
            direct: true,
            ..Options::default()
        })
        .unwrap();
        let prebuilt = select(&Options {
            only: vec![word.into()],
            image: Some("w.bin".into()),
            ..Options::default()
        })
        .unwrap();
        (direct, prebuilt)
    }

    #[test]
    fn default_runs_everything() {
        let all = sel(&[], &[]);
        assert_eq!(all, step_names());
        assert!(all.contains(&"boot:relocated".to_string()));
    }

    #[test]
    fn filters() {
        assert_eq!(sel(&["fmt"], &[]), ["fmt"]);
        assert_eq!(sel(&["clippy"], &[]), ["clippy", "clippy-aarch64"]);
        assert_eq!(sel(&["max-gicv3"], &[]), ["image", "boot:max-gicv3"]);
        assert_eq!(
            sel(&["unit", "boot:relocated"], &[]),
            ["unit", "image", "boot:relocated"]
        );
        let no_qemu = sel(&[], &["qemu"]);
        assert!(no_qemu.iter().all(|s| !s.starts_with("boot:")));
        assert!(no_qemu.contains(&"image".to_string()));
        assert_eq!(sel(&["boot"], &["n1-5g"]).len(), 1 + VARIANTS.len() - 1);
        assert!(!no_qemu.iter().any(|s| s.starts_with("edu:")));
        // The bench step is host only: right after the fuzz smoke, kept by --skip-qemu.
        assert_eq!(sel(&["fuzz-smoke", "bench"], &[]), ["fuzz-smoke", "bench"]);
        assert!(no_qemu.contains(&"bench".to_string()));
        assert_eq!(sel(&["bench"], &[]), ["bench"]);
    }

    #[test]
    fn edu_filters() {
        let (edu, want) = group("edu", &edutest::VARIANT_NAMES);
        assert_eq!(sel(&["edu"], &[]), want);
        assert_eq!(sel(&["edu:a57-gicv2"], &[]), ["image", "edu:a57-gicv2"]);
        // A variant name alone still means its Linux boot only.
        assert_eq!(sel(&["max-gicv3"], &[]), ["image", "boot:max-gicv3"]);
        // `boot` is the Linux boots, `qemu` both kinds.
        assert!(!sel(&["boot"], &[]).iter().any(|s| s.starts_with("edu:")));
        assert_eq!(
            sel(&["qemu"], &[]).len(),
            1 + VARIANTS.len()
                + edutest::VARIANT_NAMES.len()
                + conformance::VARIANT_NAMES.len()
                + gictest::VARIANT_NAMES.len()
        );
        assert!(sel(&[], &["edu"]).iter().all(|s| !s.starts_with("edu:")));
        // Edu boots always run Warden: --direct does not spare the image.
        let (direct, prebuilt) = direct_and_prebuilt("edu");
        assert_eq!(direct[0], "image");
        assert_eq!(prebuilt, edu);
    }

    #[test]
    fn conf_filters() {
        let (conf, want) = group("conf", &conformance::VARIANT_NAMES);
        assert_eq!(sel(&["conf"], &[]), want);
        assert_eq!(sel(&["conf:n1-5g"], &[]), ["image", "conf:n1-5g"]);
        assert!(!sel(&["edu"], &[]).iter().any(|s| s.starts_with("conf:")));
        assert!(!sel(&["boot"], &[]).iter().any(|s| s.starts_with("conf:")));
        assert!(sel(&["qemu"], &[]).iter().any(|s| s == "conf:a57-gicv2"));
        assert!(sel(&[], &["conf"]).iter().all(|s| !s.starts_with("conf:")));
        assert!(sel(&[], &["qemu"]).iter().all(|s| !s.starts_with("conf:")));
        // The conformance steps come after the edu ones, the gic ones last.
        let all = sel(&[], &[]);
        let last_conf = all.iter().rposition(|s| s.starts_with("conf:")).unwrap();
        assert!(all[..last_conf].iter().any(|s| s.starts_with("edu:")));
        assert!(all[last_conf + 1..].iter().all(|s| s.starts_with("gic:")));
        // They always run Warden: --direct does not spare the image; --image does.
        let (direct, prebuilt) = direct_and_prebuilt("conf");
        assert_eq!(direct[0], "image");
        assert_eq!(prebuilt, conf);
    }

    #[test]
    fn gic_filters() {
        let (gic, want) = group("gic", &gictest::VARIANT_NAMES);
        assert_eq!(sel(&["gic"], &[]), want);
        assert_eq!(sel(&["gic:n1-5g"], &[]), ["image", "gic:n1-5g"]);
        assert!(sel(&["qemu"], &[]).iter().any(|s| s == "gic:max-gicv3"));
        assert!(sel(&[], &["gic"]).iter().all(|s| !s.starts_with("gic:")));
        assert!(all_last_is_gic());
        let (direct, prebuilt) = direct_and_prebuilt("gic");
        assert_eq!(direct[0], "image");
        assert_eq!(prebuilt, gic);
    }

    fn all_last_is_gic() -> bool {
        sel(&[], &[]).last().is_some_and(|s| s.starts_with("gic:"))
    }

    #[test]
    fn bad_filters_are_errors() {
        let o = Options {
            only: vec!["nope".into()],
            ..Options::default()
        };
        assert!(select(&o).is_err());
        let o = Options {
            only: vec!["boot".into()],
            skip: vec!["image".into()],
            ..Options::default()
        };
        assert!(select(&o).is_err());
    }
}
