//! The host initramfs: busybox, the kernel modules virtio-blk over PCI needs, the boot
//! tests' FP/SIMD checker `/bin/fp-regs` (test-images/fp-regs), and an `/init` that
//! either runs the boot tests or starts a shell (`assets/init.sh`).

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::deps::{self, Payload};
use crate::kmod;
use crate::newc;
use crate::util::{say, show, write_atomic};

/// The drivers the host needs beyond what the kernel has built in.
pub const WANTED_MODULES: &[&str] = &["virtio_pci", "virtio_blk"];

const INIT: &str = include_str!("../assets/init.sh");
const INITTAB: &str = include_str!("../assets/inittab");
const PROFILE: &str = include_str!("../assets/profile");

/// The `/init` script with the module list filled in.
pub fn init_script(modules: &[String]) -> String {
    INIT.replace("@MODULES@", &modules.join(" "))
}

/// The FP/SIMD checker's package (a static Linux aarch64 program, test-images/fp-regs).
const FP_REGS: &str = "fp-regs";

/// Builds `fp-regs` (release, for the bare-metal target: it needs no libc) and returns
/// its ELF.
pub fn build_fp_regs() -> Result<Vec<u8>> {
    let mut cmd = crate::cargo();
    cmd.args([
        "build",
        "-p",
        FP_REGS,
        "--release",
        "--target",
        crate::build::TEST_IMAGE_TARGET,
    ]);
    crate::util::run(&mut cmd)?;
    let elf = crate::util::target_dir()
        .join(crate::build::TEST_IMAGE_TARGET)
        .join("release")
        .join(FP_REGS);
    std::fs::read(&elf).with_context(|| format!("cannot read {}", show(&elf)))
}

/// Builds the archive in memory.
pub fn build(busybox: &[u8], modules: &[kmod::Module], fp_regs: &[u8]) -> Result<Vec<u8>> {
    let mut w = newc::Writer::new();
    for dir in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "run", "root",
    ] {
        w.dir(dir, 0o755)?;
    }
    w.dir("tmp", 0o1777)?;
    // The kernel opens /dev/console for init before anything is mounted.
    w.char_dev("dev/console", 0o600, 5, 1)?;
    w.char_dev("dev/null", 0o666, 1, 3)?;
    w.file("bin/busybox", 0o755, busybox)?;
    // The rest of the applet links come from `busybox --install -s` in /init.
    w.symlink("bin/sh", "busybox")?;
    w.file("bin/fp-regs", 0o755, fp_regs)?;
    let names: Vec<String> = modules.iter().map(|m| m.name.clone()).collect();
    w.file("init", 0o755, init_script(&names).as_bytes())?;
    w.file("etc/inittab", 0o644, INITTAB.as_bytes())?;
    w.file("etc/profile", 0o644, PROFILE.as_bytes())?;
    w.dir("lib/modules", 0o755)?;
    for m in modules {
        w.file(&format!("lib/modules/{}.ko", m.name), 0o644, &m.data)?;
    }
    w.finish()
}

/// Where the initramfs is written.
pub fn path() -> PathBuf {
    crate::util::target_dir().join("initramfs.cpio")
}

/// Makes sure `target/initramfs.cpio` matches the current inputs (busybox, the kernel's
/// modules, the scripts); rewrites it only if its contents would change.
pub fn ensure(payload: &Payload) -> Result<PathBuf> {
    let busybox = std::fs::read(&payload.busybox)
        .with_context(|| format!("cannot read {}", payload.busybox.display()))?;
    let modules = kmod::resolve(&payload.moddir, WANTED_MODULES, &deps::ensure_tool)
        .context("cannot collect the kernel modules for the initramfs")?;
    let fp_regs = build_fp_regs().context("cannot build the fp-regs test program")?;
    let archive = build(&busybox, &modules, &fp_regs).context("cannot build the initramfs")?;
    let out = path();
    if std::fs::read(&out).is_ok_and(|old| old == archive) {
        return Ok(out);
    }
    write_atomic(&out, &archive)?;
    let names: Vec<&str> = modules.iter().map(|m| m.name.as_str()).collect();
    say(format!(
        "wrote {} ({} KiB: busybox, modules {})",
        show(&out),
        archive.len() / 1024,
        if names.is_empty() {
            "none (all built in)".to_string()
        } else {
            names.join(" ")
        }
    ));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_gets_the_module_list() {
        let s = init_script(&["virtio".into(), "virtio_ring".into()]);
        assert!(s.starts_with("#!/bin/busybox sh\n"));
        assert!(s.contains("MODULES=\"virtio virtio_ring\""));
        assert!(!s.contains("@MODULES@"), "the placeholder is filled");
    }

    #[test]
    fn script_prints_every_test_and_the_end_marker() {
        for name in crate::boottest::TESTS {
            assert!(
                INIT.contains(&format!("pass {name} ")),
                "{name} has a PASS line"
            );
            assert!(
                INIT.contains(&format!("fail {name} ")),
                "{name} has a FAIL line"
            );
        }
        assert!(INIT.contains("echo \"WTEST DONE\""));
        assert!(INIT.contains("poweroff -f"));
    }

    #[test]
    fn archive_has_the_pieces() {
        let m = kmod::Module {
            name: "virtio".into(),
            data: vec![7; 10],
        };
        let a = build(b"BB", &[m], b"FP").unwrap();
        let find = |s: &str| a.windows(s.len()).any(|w| w == s.as_bytes());
        for name in [
            "init\0",
            "bin/busybox\0",
            "bin/fp-regs\0",
            "lib/modules/virtio.ko\0",
            "dev/console\0",
            "etc/inittab\0",
            "TRAILER!!!\0",
        ] {
            assert!(find(name), "{name}");
        }
    }
}
