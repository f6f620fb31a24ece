//! Warden's developer tasks: `cargo xtask build | run | test | bench | fuzz | deps`.
//!
//! See README.md for what each command does; `cargo xtask help` prints the options.

mod abi;
mod bench;
mod boottest;
mod build;
mod conformance;
mod deps;
mod edutest;
mod fuzz;
mod gictest;
mod image;
mod initramfs;
mod insn;
mod kmod;
mod newc;
mod qemu;
mod suite;
mod testimage;
mod util;

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, anyhow, bail};
use lexopt::ValueExt;
use util::{say, show};

const USAGE: &str = "\
usage: cargo xtask <command> [options]

commands:
  build [--debug]      build the EL2 image: target/warden.bin
  run [options] [-- QEMU ARGS]
                       build the image, then boot it in QEMU with a Linux host and a
                       busybox shell on the console (poweroff, or Ctrl-A x, to quit)
  test [options]       every test layer: fmt, clippy (host and aarch64), unit tests,
                       the image, QEMU Linux boot tests, the edu DMA test image and
                       the hypercall conformance suite under Warden; prints a summary
  bench [--quick] [--only SECTION[,SECTION]]
                       benchmarks against Warden's peers (sections: s2, core, blk,
                       footprint); prints tables, writes target/bench/report.md and
                       one SVG chart per section; fails only on deterministic checks
  fuzz [options] [-- LIBFUZZER ARGS]
                       the coverage-guided hypercall fuzzer (cargo-fuzz on nightly,
                       installed if missing) with the checked-in corpus; prints the
                       number of executions, fails on a finding
  deps                 install/download what run and test need, build the initramfs
  elf2bin ELF OUT      convert an image ELF to a flat binary and check its Image header
  check-no-fp ELF      fail if an EL2 image ELF has FP/SIMD/SVE/SME instructions
  abi-header [--check] write host-abi/include/warden_abi.h from the host-abi crate
                       (--check: only report whether it is up to date)

run options:
  --kernel PATH        host kernel Image (default: Debian's arm64 cloud kernel)
  --initrd PATH        host initramfs (default: target/initramfs.cpio)
  --append ARGS        extra host kernel arguments (after `console=ttyAMA0 rdinit=/init`)
  --warden-args ARGS   Warden's own arguments (default: warden.log=info)
  --smp N              CPUs (default 4)
  --mem SIZE           RAM, at least 1G (default 2G)
  --cpu MODEL          CPU model (default max)
  --gic 2|3            GIC version (default 3)
  --disk FILE          attach FILE as a raw virtio-blk-pci disk (/dev/vda)
  --debug              boot a debug build of the image
  --image PATH         boot this flat image instead of building one
  --direct             boot the kernel directly, without Warden (Linux at EL2)

fuzz options:
  --time SECS          how long to fuzz (default 60)
  --jobs N             parallel fuzzing processes (libFuzzer -fork=N; default 1)
  --max-len BYTES      longest input (default 256)
  --sanitizer NAME     cargo-fuzz sanitizer: none (default, fastest) or address
  --target NAME        fuzz target: dispatch (default, the hypercalls) or viommu (the
                       virtio-iommu device model)

test options:
  --only STEP[,STEP]   run only these steps (repeatable)
  --skip STEP[,STEP]   skip these steps (repeatable); --skip-qemu skips all QEMU runs
  --list               list the steps
  --timeout SECS       per QEMU boot (default 240; edu boots 60, conformance 90)
  --image PATH         boot this flat image instead of building target/warden.bin
  --direct             boot Linux without Warden (to check the Linux side: the
                       Warden-specific checks are then expected to fail)
  steps: fmt, clippy (both), clippy-aarch64, unit, fuzz-smoke, bench, image, boot (all Linux boots),
         boot:<variant> or just <variant>; variants: max-gicv3, a57-gicv2, n1-5g, relocated;
         edu (all edu DMA boots), edu:<variant> (max-gicv3, a57-gicv2, n1-5g);
         conf (all conformance boots), conf:<variant> (the same three);
         qemu (Linux, edu and conformance boots)
";

/// `cargo`, as the one running us.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(util::root());
    cmd
}

/// The options of one command, tokenised by `lexopt`: `--flag`, `--opt VALUE`,
/// `--opt=VALUE`, `-- rest`. The match on the names stays in each `parse_*`.
struct Args(lexopt::Parser);

impl Args {
    fn new(args: Vec<String>) -> Self {
        Self(lexopt::Parser::from_args(args))
    }

    /// The next option's name (`--name`, `-n`), `--` for the end of the options, or a
    /// word that is no option as it is (for the caller to reject); `None` at the end. A
    /// value given as `--opt=value` is kept for [`Self::value`] and is an error if the
    /// caller does not take it.
    fn next_opt(&mut self) -> Result<Option<String>> {
        let mut raw = self.0.raw_args()?;
        if raw.peek() == Some(OsStr::new("--")) {
            raw.next();
            return Ok(Some("--".into()));
        }
        Ok(match self.0.next()? {
            None => None,
            Some(lexopt::Arg::Long(name)) => Some(format!("--{name}")),
            Some(lexopt::Arg::Short(c)) => Some(format!("-{c}")),
            Some(lexopt::Arg::Value(word)) => Some(word.string()?),
        })
    }

    fn value(&mut self, opt: &str) -> Result<String> {
        let Ok(v) = self.0.value() else {
            bail!("{opt} needs a value");
        };
        Ok(v.string()?)
    }

    fn number(&mut self, opt: &str) -> Result<u64> {
        let v = self.value(opt)?;
        v.parse()
            .map_err(|_| anyhow!("{opt}: '{v}' is not a number"))
    }

    /// Everything not read yet, as it was given (after `--`: arguments for QEMU or
    /// libFuzzer; for `elf2bin`/`check-no-fp`/`abi-header`: their operands).
    fn rest(&mut self) -> Result<Vec<String>> {
        self.0
            .raw_args()?
            .map(|a| {
                a.into_string()
                    .map_err(|a| anyhow!("not UTF-8: {}", a.display()))
            })
            .collect()
    }
}

/// Options of `cargo xtask run`.
#[derive(Debug, Clone, PartialEq)]
struct RunOptions {
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    append: Option<String>,
    warden_args: String,
    machine: qemu::Machine,
    disk: Option<PathBuf>,
    debug: bool,
    direct: bool,
    image: Option<PathBuf>,
    extra: Vec<String>,
}

fn parse_run(mut args: Args) -> Result<RunOptions> {
    let mut o = RunOptions {
        kernel: None,
        initrd: None,
        append: None,
        warden_args: boottest::WARDEN_ARGS.into(),
        machine: qemu::Machine {
            cpu: "max".into(),
            smp: 4,
            mem: "2G".into(),
            gic: 3,
        },
        disk: None,
        debug: false,
        direct: false,
        image: None,
        extra: Vec::new(),
    };
    while let Some(opt) = args.next_opt()? {
        match opt.as_str() {
            "--kernel" => o.kernel = Some(args.value(&opt)?.into()),
            "--initrd" => o.initrd = Some(args.value(&opt)?.into()),
            "--append" => o.append = Some(args.value(&opt)?),
            "--warden-args" => o.warden_args = args.value(&opt)?,
            "--smp" => {
                o.machine.smp = u32::try_from(args.number(&opt)?)
                    .ok()
                    .filter(|&n| (1..=512).contains(&n))
                    .context("--smp: 1 to 512 CPUs")?
            }
            "--mem" => o.machine.mem = args.value(&opt)?,
            "--cpu" => o.machine.cpu = args.value(&opt)?,
            "--gic" => {
                o.machine.gic = match args.value(&opt)?.as_str() {
                    "2" => 2,
                    "3" => 3,
                    v => bail!("--gic: '{v}' is not 2 or 3"),
                }
            }
            "--disk" => o.disk = Some(args.value(&opt)?.into()),
            "--debug" => o.debug = true,
            "--direct" => o.direct = true,
            "--image" => o.image = Some(args.value(&opt)?.into()),
            "--" => o.extra = args.rest()?,
            other => bail!("run: unknown option '{other}'\n\n{USAGE}"),
        }
    }
    qemu::parse_size(&o.machine.mem)?;
    if o.machine.gic == 2 && o.machine.smp > 8 {
        bail!("GICv2 supports at most 8 CPUs (--smp {})", o.machine.smp);
    }
    Ok(o)
}

fn parse_test(mut args: Args) -> Result<Option<suite::Options>> {
    let mut o = suite::Options::default();
    let split = |v: String| {
        v.split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    while let Some(opt) = args.next_opt()? {
        match opt.as_str() {
            "--only" => o.only.extend(split(args.value(&opt)?)),
            "--skip" => o.skip.extend(split(args.value(&opt)?)),
            "--skip-qemu" => o.skip.push("qemu".into()),
            "--timeout" => o.timeout_secs = Some(args.number(&opt)?),
            "--direct" => o.direct = true,
            "--image" => o.image = Some(args.value(&opt)?.into()),
            "--list" => {
                for s in suite::step_names() {
                    println!("{s}");
                }
                return Ok(None);
            }
            other => bail!("test: unknown option '{other}'\n\n{USAGE}"),
        }
    }
    Ok(Some(o))
}

fn parse_fuzz(mut args: Args) -> Result<fuzz::Options> {
    let mut o = fuzz::Options::default();
    while let Some(opt) = args.next_opt()? {
        match opt.as_str() {
            "--time" => o.time_secs = args.number(&opt)?.max(1),
            "--jobs" => {
                o.jobs = u32::try_from(args.number(&opt)?)
                    .ok()
                    .filter(|&n| (1..=64).contains(&n))
                    .context("--jobs: 1 to 64")?
            }
            "--max-len" => {
                o.max_len = u32::try_from(args.number(&opt)?)
                    .ok()
                    .filter(|&n| n >= 2)
                    .context("--max-len: at least 2 bytes")?
            }
            "--sanitizer" => o.sanitizer = args.value(&opt)?,
            "--target" => {
                let t = args.value(&opt)?;
                if !fuzz::TARGETS.contains(&t.as_str()) {
                    bail!("--target: one of {}", fuzz::TARGETS.join(", "));
                }
                o.target = t;
            }
            "--" => o.extra = args.rest()?,
            other => bail!("fuzz: unknown option '{other}'\n\n{USAGE}"),
        }
    }
    Ok(o)
}

fn cmd_run(o: RunOptions) -> Result<ExitCode> {
    deps::ensure_rust_target()?;
    deps::ensure_qemu()?;
    let need_payload = o.kernel.is_none() || o.initrd.is_none();
    let payload = if need_payload {
        Some(deps::ensure_payload()?)
    } else {
        None
    };
    let kernel = match &o.kernel {
        Some(k) => k.clone(),
        None => payload.as_ref().expect("payload").kernel.clone(),
    };
    let initrd = match &o.initrd {
        Some(i) => i.clone(),
        None => initramfs::ensure(payload.as_ref().expect("payload"))?,
    };
    if o.kernel.is_some() && o.initrd.is_none() {
        say(
            "note: the default initramfs carries the Debian kernel's modules; they load only into that kernel",
        );
    }
    qemu::check_layout(&o.machine, &kernel, &initrd)?;
    let warden = match (&o.image, o.direct) {
        (_, true) => None,
        (Some(image), false) => Some((image.clone(), o.warden_args.clone())),
        (None, false) => Some((build::build_image(o.debug)?, o.warden_args.clone())),
    };
    let mut host_args = boottest::HOST_ARGS.to_string();
    if let Some(a) = &o.append {
        host_args.push(' ');
        host_args.push_str(a);
    }
    if let Some(disk) = o.disk.as_ref().filter(|d| !d.is_file()) {
        bail!("--disk {}: no such file", disk.display());
    }
    let boot = qemu::Boot {
        warden,
        kernel,
        initrd,
        host_args,
        disk: o.disk.clone(),
        no_reboot: false,
        extra: o.extra.clone(),
    };
    let mut cmd = qemu::command(&o.machine, &boot);
    say(format!(
        "{}\nxtask: Ctrl-A x quits QEMU; `poweroff` in the shell ends it too",
        util::describe(&cmd)
    ));
    let status = cmd.status().context("cannot start qemu-system-aarch64")?;
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn cmd_deps() -> Result<ExitCode> {
    let payload = deps::ensure_all()?;
    let initrd = initramfs::ensure(&payload)?;
    println!("kernel:    {}", show(&payload.kernel));
    println!("modules:   {}", show(&payload.moddir));
    println!("busybox:   {}", show(&payload.busybox));
    println!("initramfs: {}", show(&initrd));
    Ok(ExitCode::SUCCESS)
}

fn main_inner() -> Result<ExitCode> {
    let mut argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.is_empty() {
        eprint!("{USAGE}");
        return Ok(ExitCode::FAILURE);
    }
    let command = argv.remove(0);
    let mut args = Args::new(argv);
    match command.as_str() {
        "build" => {
            let mut debug = false;
            while let Some(opt) = args.next_opt()? {
                match opt.as_str() {
                    "--debug" => debug = true,
                    other => bail!("build: unknown option '{other}'\n\n{USAGE}"),
                }
            }
            build::build_image(debug)?;
            Ok(ExitCode::SUCCESS)
        }
        "run" => cmd_run(parse_run(args)?),
        "test" => match parse_test(args)? {
            None => Ok(ExitCode::SUCCESS),
            Some(o) => Ok(if suite::run(&o)? {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }),
        },
        "fuzz" => {
            fuzz::run(&parse_fuzz(args)?)?;
            Ok(ExitCode::SUCCESS)
        }
        "bench" => {
            let mut o = bench::Options::default();
            while let Some(opt) = args.next_opt()? {
                match opt.as_str() {
                    "--quick" => o.quick = true,
                    "--only" => o.add_only(&args.value(&opt)?)?,
                    other => bail!("bench: unknown option '{other}'\n\n{USAGE}"),
                }
            }
            Ok(if bench::run(&o)? {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        "deps" => cmd_deps(),
        "abi-header" => abi::cmd(&args.rest()?),
        "elf2bin" => {
            let rest = args.rest()?;
            let [elf, out] = rest.as_slice() else {
                bail!("usage: cargo xtask elf2bin ELF OUT");
            };
            build::elf_to_image(elf.as_ref(), out.as_ref())?;
            Ok(ExitCode::SUCCESS)
        }
        "check-no-fp" => {
            let rest = args.rest()?;
            let [elf] = rest.as_slice() else {
                bail!("usage: cargo xtask check-no-fp ELF");
            };
            build::check_no_fp(elf.as_ref())?;
            Ok(ExitCode::SUCCESS)
        }
        "help" | "-h" | "--help" => {
            print!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        other => bail!("unknown command '{other}'\n\n{USAGE}"),
    }
}

fn main() -> ExitCode {
    match main_inner() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Args {
        Args::new(s.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn run_defaults() {
        let o = parse_run(args(&[])).unwrap();
        assert_eq!(
            o.machine,
            qemu::Machine {
                cpu: "max".into(),
                smp: 4,
                mem: "2G".into(),
                gic: 3
            }
        );
        assert_eq!(o.warden_args, "warden.log=info");
        assert!(o.kernel.is_none() && o.initrd.is_none() && o.disk.is_none() && !o.direct);
    }

    #[test]
    fn run_options() {
        let o = parse_run(args(&[
            "--smp",
            "2",
            "--mem=1G",
            "--cpu",
            "cortex-a57",
            "--gic",
            "2",
            "--append",
            "quiet loglevel=3",
            "--warden-args=warden.log=debug",
            "--kernel",
            "/k",
            "--disk",
            "d.img",
            "--",
            "-d",
            "int",
        ]))
        .unwrap();
        assert_eq!(
            o.machine,
            qemu::Machine {
                cpu: "cortex-a57".into(),
                smp: 2,
                mem: "1G".into(),
                gic: 2
            }
        );
        assert_eq!(o.append.as_deref(), Some("quiet loglevel=3"));
        assert_eq!(o.warden_args, "warden.log=debug");
        assert_eq!(o.kernel, Some(PathBuf::from("/k")));
        assert_eq!(o.disk, Some(PathBuf::from("d.img")));
        assert_eq!(o.extra, ["-d", "int"]);
    }

    #[test]
    fn run_rejects_nonsense() {
        assert!(parse_run(args(&["--gic", "4"])).is_err());
        assert!(parse_run(args(&["--smp", "x"])).is_err());
        assert!(parse_run(args(&["--smp", "9", "--gic", "2"])).is_err());
        assert!(parse_run(args(&["--mem", "lots"])).is_err());
        assert!(parse_run(args(&["--frobnicate"])).is_err());
        assert!(parse_run(args(&["--smp"])).is_err());
        assert!(parse_run(args(&["--debug=yes"])).is_err());
        assert!(parse_run(args(&["stray"])).is_err());
        assert!(parse_run(args(&["-x"])).is_err());
    }

    #[test]
    fn everything_after_the_double_dash_is_for_qemu() {
        let o = parse_run(args(&["--smp=2", "--", "--smp", "8", "--", "-S"])).unwrap();
        assert_eq!(o.machine.smp, 2);
        assert_eq!(o.extra, ["--smp", "8", "--", "-S"]);
        let o = parse_run(args(&["--append", "--", "--"])).unwrap();
        assert_eq!(
            o.append.as_deref(),
            Some("--"),
            "a value may look like an option"
        );
        assert!(o.extra.is_empty());
        assert!(parse_test(args(&["--"])).is_err());
    }

    #[test]
    fn fuzz_options() {
        assert_eq!(parse_fuzz(args(&[])).unwrap(), fuzz::Options::default());
        let o = parse_fuzz(args(&["--time", "600", "--jobs=2", "--", "-runs=5"])).unwrap();
        assert_eq!((o.time_secs, o.jobs), (600, 2));
        assert_eq!(o.extra, ["-runs=5"]);
        assert!(parse_fuzz(args(&["--jobs", "0"])).is_err());
        assert!(parse_fuzz(args(&["--time"])).is_err());
        assert!(parse_fuzz(args(&["--forever"])).is_err());
        assert_eq!(parse_fuzz(args(&[])).unwrap().target, "dispatch");
        assert_eq!(
            parse_fuzz(args(&["--target", "viommu"])).unwrap().target,
            "viommu"
        );
        assert!(parse_fuzz(args(&["--target", "nothing"])).is_err());
    }

    #[test]
    fn test_options() {
        let o = parse_test(args(&[
            "--only",
            "fmt,unit",
            "--skip-qemu",
            "--timeout=300",
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(o.only, ["fmt", "unit"]);
        assert_eq!(o.skip, ["qemu"]);
        assert_eq!(o.timeout_secs, Some(300));
        assert!(parse_test(args(&["--bogus"])).is_err());
    }
}
