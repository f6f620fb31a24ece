//! Section 3: Linux block I/O in QEMU. `test-images/blkbench` (random 4 KiB `O_DIRECT`
//! reads, then writes, on `/dev/vda`) in a bench-only initramfs (`init.sh` beside this
//! file; the test initramfs is left alone), booted with the same kernel, QEMU and disk
//! in each configuration, the configurations interleaved in every round.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::report::{Chart, Section, Stat};
use crate::deps::{self, Payload};
use crate::qemu::{self, Boot, Machine};
use crate::util::{self, say, write_atomic};
use crate::{boottest, initramfs, kmod, newc};

const INIT: &str = include_str!("init.sh");
const PACKAGE: &str = "blkbench";
/// The disk: sparse, its blocks are what the reads and writes hit.
const DISK_BYTES: u64 = 256 << 20;
/// Per boot.
const TIMEOUT: Duration = Duration::from_secs(300);

/// One configuration: name, whether Warden runs, whether QEMU has an SMMU, extra host
/// kernel arguments.
pub struct Config {
    pub name: &'static str,
    pub warden: bool,
    pub smmu: bool,
    pub args: &'static str,
}

/// The configurations, in the order of every round. The ratios are to `native-strict`.
pub const CONFIGS: [Config; 5] = [
    Config {
        name: "no SMMU",
        warden: false,
        smmu: false,
        args: "",
    },
    Config {
        name: "native iommu.passthrough=1",
        warden: false,
        smmu: true,
        args: "iommu.passthrough=1",
    },
    Config {
        name: "native iommu.strict=1",
        warden: false,
        smmu: true,
        args: "iommu.strict=1",
    },
    Config {
        name: "native iommu.strict=0",
        warden: false,
        smmu: true,
        args: "iommu.strict=0",
    },
    Config {
        name: "Warden (identity domain)",
        warden: true,
        smmu: true,
        args: "",
    },
];
const BASELINE: usize = 2;

/// `blkbench`'s two phases from a console log: (read ops/s, write ops/s), the domain the
/// disk was in, and whether it ended with `ok`.
#[derive(Debug, Default, PartialEq)]
pub struct Run {
    pub read: Option<f64>,
    pub write: Option<f64>,
    pub domain: Option<String>,
    pub ok: bool,
}

/// Parses the `WBENCH` lines of one boot.
pub fn parse(log: &str) -> Run {
    let mut r = Run::default();
    for line in log.lines() {
        let Some(rest) = line.split("WBENCH ").nth(1) else {
            continue;
        };
        if let Some(start) = rest.strip_prefix("START ") {
            r.domain = start
                .split_whitespace()
                .find_map(|w| w.strip_prefix("domain="))
                .map(String::from);
        } else if rest.trim() == "blkbench: ok" {
            r.ok = true;
        } else if let Some(phase) = rest.strip_prefix("blkbench: ") {
            let mut it = phase.split_whitespace();
            let name = it.next();
            let num = |p: &str| {
                phase
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix(p))
                    .and_then(|v| v.parse::<f64>().ok())
            };
            let rate = match (num("ops="), num("ns=")) {
                (Some(ops), Some(ns)) if ns > 0.0 => Some(ops * 1e9 / ns),
                _ => None,
            };
            match name {
                Some("read") => r.read = rate,
                Some("write") => r.write = rate,
                _ => {}
            }
        }
    }
    r
}

/// Builds `blkbench` and returns its ELF.
fn build_program() -> Result<Vec<u8>> {
    let mut cmd = crate::cargo();
    cmd.args([
        "build",
        "-p",
        PACKAGE,
        "--release",
        "--target",
        crate::build::TEST_IMAGE_TARGET,
    ]);
    util::run(&mut cmd)?;
    let elf = util::target_dir()
        .join(crate::build::TEST_IMAGE_TARGET)
        .join("release")
        .join(PACKAGE);
    std::fs::read(&elf).with_context(|| format!("cannot read {}", elf.display()))
}

/// The bench initramfs: busybox, the disk's modules, `blkbench` and [`INIT`].
pub fn archive(busybox: &[u8], modules: &[kmod::Module], blkbench: &[u8]) -> Result<Vec<u8>> {
    let mut w = newc::Writer::new();
    for dir in [
        "bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp",
    ] {
        w.dir(dir, 0o755)?;
    }
    w.char_dev("dev/console", 0o600, 5, 1)?;
    w.file("bin/busybox", 0o755, busybox)?;
    w.symlink("bin/sh", "busybox")?;
    w.file("bin/blkbench", 0o755, blkbench)?;
    let names: Vec<String> = modules.iter().map(|m| m.name.clone()).collect();
    w.file(
        "init",
        0o755,
        INIT.replace("@MODULES@", &names.join(" ")).as_bytes(),
    )?;
    w.dir("lib", 0o755)?;
    w.dir("lib/modules", 0o755)?;
    for m in modules {
        w.file(&format!("lib/modules/{}.ko", m.name), 0o644, &m.data)?;
    }
    w.finish()
}

fn ensure_initramfs(payload: &Payload, dir: &Path) -> Result<PathBuf> {
    let busybox = std::fs::read(&payload.busybox)
        .with_context(|| format!("cannot read {}", payload.busybox.display()))?;
    let modules = kmod::resolve(
        &payload.moddir,
        initramfs::WANTED_MODULES,
        &deps::ensure_tool,
    )?;
    let prog = build_program().context("cannot build test-images/blkbench")?;
    let out = dir.join("initramfs-bench.cpio");
    let bytes = archive(&busybox, &modules, &prog)?;
    if std::fs::read(&out).ok().as_deref() != Some(&bytes[..]) {
        write_atomic(&out, &bytes)?;
    }
    Ok(out)
}

/// QEMU's arguments for one configuration: those of every boot, without the SMMU when
/// the configuration has none.
pub fn qemu_args(machine: &Machine, boot: &Boot, smmu: bool) -> Vec<OsString> {
    let mut a = qemu::args(machine, boot);
    if !smmu {
        for arg in &mut a {
            if let Some(s) = arg.to_str()
                && s.starts_with("virt,")
            {
                *arg = s.replace("iommu=smmuv3,", "").into();
            }
        }
    }
    a
}

/// What every boot of the section shares: kernel, initramfs, Warden, disk, machine.
pub struct Env {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub warden: PathBuf,
    pub disk: PathBuf,
    pub machine: Machine,
}

/// Installs and builds what the boots need (QEMU, the Debian kernel and busybox, the
/// bench initramfs, Warden's image, a sparse disk).
pub fn prepare(dir: &Path) -> Result<Env> {
    let payload = deps::ensure_all()?;
    let initrd = ensure_initramfs(&payload, dir)?;
    let warden = crate::build::build_image(false)?;
    let disk = dir.join("blk.disk");
    let f = std::fs::File::create(&disk)
        .with_context(|| format!("cannot create {}", disk.display()))?;
    f.set_len(DISK_BYTES)?;
    let machine = Machine {
        cpu: "max".into(),
        smp: 2,
        mem: "2G".into(),
        gic: 3,
    };
    qemu::check_layout(&machine, &payload.kernel, &initrd)?;
    Ok(Env {
        kernel: payload.kernel,
        initrd,
        warden,
        disk,
        machine,
    })
}

/// Boots `c` once with `ops` operations per phase; returns the console output (also
/// in `log`) and what `blkbench` reported. Fails unless `blkbench` finished.
pub fn boot(env: &Env, c: &Config, ops: u64, seed: u64, log: &Path) -> Result<(String, Run)> {
    let host_args = format!(
        "{} warden_bench.ops={ops} warden_bench.seed={seed} {}",
        boottest::HOST_ARGS,
        c.args
    );
    let boot = Boot {
        warden: c
            .warden
            .then(|| (env.warden.clone(), boottest::WARDEN_ARGS.to_string())),
        kernel: env.kernel.clone(),
        initrd: env.initrd.clone(),
        host_args: host_args.trim_end().to_string(),
        disk: Some(env.disk.clone()),
        no_reboot: true,
        extra: Vec::new(),
    };
    let mut cmd = std::process::Command::new("qemu-system-aarch64");
    cmd.args(qemu_args(&env.machine, &boot, c.smmu));
    let out = qemu::run_captured(cmd, log, TIMEOUT, |_| {})?;
    let r = parse(&out.output);
    if !r.ok {
        bail!(
            "{}: blkbench did not finish (see {})",
            c.name,
            util::show(log)
        );
    }
    Ok((out.output, r))
}

/// Runs the section.
pub fn run(quick: bool, rounds: usize, dir: &Path) -> Result<(Section, Vec<String>)> {
    let env = prepare(dir)?;
    let ops: u64 = if quick { 200 } else { 5000 };
    let mut reads = vec![Vec::new(); CONFIGS.len()];
    let mut writes = vec![Vec::new(); CONFIGS.len()];
    let mut domains = vec![String::new(); CONFIGS.len()];
    let mut failures = Vec::new();
    for round in 0..rounds {
        for (i, c) in CONFIGS.iter().enumerate() {
            say(format!(
                "section 3: round {}/{rounds}: {} ({ops} reads + {ops} writes)",
                round + 1,
                c.name
            ));
            let log = dir.join(format!("blk-{i}-round{}.log", round + 1));
            let (_, r) = boot(&env, c, ops, round as u64 + 1, &log)?;
            domains[i] = r.domain.unwrap_or_default();
            reads[i].extend(r.read);
            writes[i].extend(r.write);
        }
    }
    let base_r = Stat::of(&reads[BASELINE]);
    let base_w = Stat::of(&writes[BASELINE]);
    let mut s = Section {
        id: "blk".into(),
        title: "3. Linux block I/O in QEMU (virtio-blk, random 4 KiB O_DIRECT)".into(),
        about: format!(
            "`blkbench` in a bench-only initramfs: {ops} random 4 KiB reads, then {ops} \
             random 4 KiB writes on a {} MiB virtio-blk disk; QEMU `virt`, TCG, 2 vCPUs, \
             2 GiB, same kernel and disk for each configuration, configurations \
             interleaved in each of {rounds} round(s); median (min..max) of the rounds. \
             Ratios are each median over the median of native `iommu.strict=1`. Timings \
             are not checked (they vary by +-20% from round to round).",
            DISK_BYTES >> 20
        ),
        header: [
            "configuration",
            "disk's domain",
            "read ops/s",
            "write ops/s",
            "read / strict",
            "write / strict",
        ]
        .map(String::from)
        .to_vec(),
        ..Default::default()
    };
    let mut bars = Vec::new();
    for (i, c) in CONFIGS.iter().enumerate() {
        let (Some(r), Some(w)) = (Stat::of(&reads[i]), Stat::of(&writes[i])) else {
            failures.push(format!("section 3 {}: no figures", c.name));
            continue;
        };
        let ratio = |x: f64, b: Option<Stat>| b.map_or(f64::NAN, |b| x / b.median);
        let (rr, wr) = (ratio(r.median, base_r), ratio(w.median, base_w));
        s.rows.push(vec![
            c.name.to_string(),
            domains[i].clone(),
            r.show(0),
            w.show(0),
            format!("{rr:.2}x"),
            format!("{wr:.2}x"),
        ]);
        bars.push((format!("{} read", c.name), rr));
        bars.push((format!("{} write", c.name), wr));
    }
    s.notes.push(
        "Not yet measured: Warden with the virtio-iommu front-end (strict / lazy); \
         CMD_SYNCs per I/O (Warden exposes no counter to the host yet)."
            .into(),
    );
    s.chart = Some(Chart {
        title: "Block I/O ops/s relative to native iommu.strict=1 (higher is better)".into(),
        axis: "ratio of ops/s".into(),
        bars,
        marks: vec![(1.0, "native strict".into())],
    });
    Ok((s, failures))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_boot() {
        let log = "noise\nWBENCH START 6.1 cpus=2 iommus=smmu3.0x9050000, domain=DMA\n\
                   WBENCH blkbench: read ops=100 ns=50000000\n\
                   WBENCH blkbench: write ops=100 ns=100000000\nWBENCH blkbench: ok\n";
        let r = parse(log);
        assert_eq!(r.read, Some(2000.0));
        assert_eq!(r.write, Some(1000.0));
        assert_eq!(r.domain.as_deref(), Some("DMA"));
        assert!(r.ok);
        assert!(!parse("WBENCH blkbench: FAIL read (errno 5)\n").ok);
    }

    #[test]
    fn no_smmu_drops_only_the_iommu() {
        let machine = Machine {
            cpu: "max".into(),
            smp: 2,
            mem: "2G".into(),
            gic: 3,
        };
        let boot = Boot {
            warden: None,
            kernel: "k".into(),
            initrd: "i".into(),
            host_args: "a".into(),
            disk: None,
            no_reboot: true,
            extra: Vec::new(),
        };
        let join = |a: Vec<OsString>| {
            a.iter()
                .map(|s| s.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        };
        let with = join(qemu_args(&machine, &boot, true));
        let without = join(qemu_args(&machine, &boot, false));
        assert!(with.contains("iommu=smmuv3"));
        assert!(!without.contains("iommu=smmuv3"));
        assert_eq!(with.replace("iommu=smmuv3,", ""), without);
    }

    #[test]
    fn archive_has_the_program_and_init() {
        let a = archive(b"BB", &[], b"PROG").unwrap();
        let find = |s: &str| a.windows(s.len()).any(|w| w == s.as_bytes());
        for name in ["init\0", "bin/busybox\0", "bin/blkbench\0", "TRAILER!!!\0"] {
            assert!(find(name), "{name}");
        }
    }
}
