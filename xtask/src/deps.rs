//! Installs what `run` and `test` need, skipping what is there: the Rust target, QEMU ≥ 10
//! (Debian bookworm-backports), and the Debian arm64 packages the host is made of (the
//! cloud kernel and busybox-static), cached under `target/debian/`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};

use crate::image;
use crate::util::{self, output, run, say, show};

/// The QEMU major version Warden needs (an SMMUv3 with stage 2, `guest-loader`).
pub const QEMU_MIN_MAJOR: u32 = 10;
/// The metapackage that names the current cloud kernel.
pub const KERNEL_META: &str = "linux-image-cloud-arm64";
pub const BUSYBOX_PKG: &str = "busybox-static";
const BACKPORTS_LINE: &str = "deb http://deb.debian.org/debian bookworm-backports main";

/// Everything the host side is made of.
#[derive(Debug, Clone)]
pub struct Payload {
    /// The kernel Image (`/boot/vmlinuz-<version>`).
    pub kernel: PathBuf,
    /// `/lib/modules/<version>` of that kernel.
    pub moddir: PathBuf,
    /// The static arm64 busybox.
    pub busybox: PathBuf,
}

/// Rust target, QEMU and the Debian payload.
pub fn ensure_all() -> Result<Payload> {
    ensure_rust_target()?;
    ensure_qemu()?;
    ensure_payload()
}

fn is_root() -> bool {
    static ROOT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ROOT.get_or_init(|| output(Command::new("id").arg("-u")).is_ok_and(|s| s.trim() == "0"))
}

/// A command run as root: directly when we are root, else through sudo.
fn root_cmd(prog: &str) -> Command {
    if is_root() {
        Command::new(prog)
    } else {
        let mut c = Command::new("sudo");
        c.arg(prog);
        c
    }
}

static APT_UPDATED: AtomicBool = AtomicBool::new(false);

fn apt_update() -> Result<()> {
    say("apt-get update");
    run(root_cmd("apt-get").args(["-q", "update"]))?;
    APT_UPDATED.store(true, Ordering::Relaxed);
    Ok(())
}

fn apt_install(args: &[&str]) -> Result<()> {
    say(format!("apt-get install {}", args.join(" ")));
    let mut cmd = root_cmd("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive")
        .args(["-q", "install", "-y"])
        .args(args);
    if run(&mut cmd).is_ok() {
        return Ok(());
    }
    if !APT_UPDATED.load(Ordering::Relaxed) {
        apt_update()?;
        return run(&mut cmd);
    }
    bail!("cannot install {}", args.join(" "))
}

/// `rustup target add` of the bare-metal targets that are not installed: Warden's
/// (`aarch64-unknown-none-softfloat`, no FP/SIMD) and the EL1 test images'
/// (`aarch64-unknown-none`).
pub fn ensure_rust_target() -> Result<()> {
    let targets = [crate::build::TARGET, crate::build::TEST_IMAGE_TARGET];
    let installed = match output(Command::new("rustup").args(["target", "list", "--installed"])) {
        Ok(list) => list,
        Err(e) => {
            say(format!(
                "cannot ask rustup for installed targets ({e:#}); assuming {} are there",
                targets.join(" and ")
            ));
            return Ok(());
        }
    };
    let missing: Vec<&str> = targets
        .into_iter()
        .filter(|t| !installed.lines().any(|l| l.trim() == *t))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    say(format!(
        "installing the Rust target(s) {}",
        missing.join(" ")
    ));
    run(Command::new("rustup")
        .args(["target", "add"])
        .args(&missing))
}

/// The major version in `qemu-system-aarch64 --version` output.
pub fn parse_qemu_major(version: &str) -> Option<u32> {
    let rest = version.split("version ").nth(1)?;
    rest.split(['.', ' ']).next()?.parse().ok()
}

/// The major version of the installed `qemu-system-aarch64` and its version line.
fn qemu_version() -> Option<(u32, String)> {
    let out = output(Command::new("qemu-system-aarch64").arg("--version")).ok()?;
    Some((
        parse_qemu_major(&out)?,
        out.lines().next().unwrap_or("").to_string(),
    ))
}

fn qemu_major() -> Option<u32> {
    qemu_version().map(|(major, _)| major)
}

fn os_codename() -> String {
    let text = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .unwrap_or("")
        .trim_matches('"')
        .to_string()
}

/// Whether any apt source (one-line or deb822 format) names the bookworm-backports suite.
fn have_backports_source() -> bool {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        files.extend(
            dir.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "list" || e == "sources")),
        );
    }
    files.iter().any(|f| {
        std::fs::read_to_string(f).is_ok_and(|t| {
            t.lines().map(str::trim).any(|l| {
                !l.starts_with('#') && l.split_whitespace().any(|w| w == "bookworm-backports")
            })
        })
    })
}

/// QEMU ≥ 10 for aarch64; on Debian bookworm from bookworm-backports.
pub fn ensure_qemu() -> Result<()> {
    match qemu_version() {
        Some((v, line)) if v >= QEMU_MIN_MAJOR => {
            say(line);
            return Ok(());
        }
        Some((v, _)) => say(format!(
            "qemu-system-aarch64 is version {v}; Warden needs {QEMU_MIN_MAJOR} or later"
        )),
        None => say("qemu-system-aarch64 is not installed"),
    }
    if os_codename() == "bookworm" {
        if !have_backports_source() {
            let file = "/etc/apt/sources.list.d/bookworm-backports.list";
            say(format!(
                "adding bookworm-backports to apt's sources ({file})"
            ));
            let mut tee = root_cmd("sh");
            tee.args(["-c", &format!("echo '{BACKPORTS_LINE}' > {file}")]);
            run(&mut tee)?;
        }
        apt_update()?;
        apt_install(&["-t", "bookworm-backports", "qemu-system-arm"])?;
    } else {
        apt_install(&["qemu-system-arm"])?;
    }
    match qemu_major() {
        Some(v) if v >= QEMU_MIN_MAJOR => Ok(()),
        found => bail!(
            "qemu-system-aarch64 {QEMU_MIN_MAJOR} or later is needed, found {}; on Debian \
             bookworm install qemu-system-arm from bookworm-backports",
            found.map_or("none".to_string(), |v| format!("version {v}"))
        ),
    }
}

/// The Debian package that provides a tool, for tools installed on demand.
fn package_of(tool: &str) -> &str {
    match tool {
        "xz" => "xz-utils",
        "dpkg-deb" => "dpkg",
        other => other,
    }
}

/// Installs the Debian package of `tool` unless the tool runs.
pub fn ensure_tool(tool: &str) -> Result<()> {
    if util::have(tool) {
        return Ok(());
    }
    say(format!("{tool} is missing"));
    apt_install(&[package_of(tool)])?;
    if !util::have(tool) {
        bail!(
            "{tool} is still missing after installing {}",
            package_of(tool)
        );
    }
    Ok(())
}

/// The versioned kernel package in `apt-cache depends` output of the metapackage.
pub fn parse_kernel_dep(depends: &str) -> Option<String> {
    depends.lines().find_map(|l| {
        let name = l.trim().strip_prefix("Depends:")?.trim();
        let name = name.trim_start_matches('<').trim_end_matches('>');
        let name = name.split(':').next()?;
        (name.starts_with("linux-image-") && name.ends_with("-cloud-arm64"))
            .then(|| name.to_string())
    })
}

fn debian_dir() -> PathBuf {
    util::target_dir().join("debian")
}

fn ensure_arm64_arch() -> Result<()> {
    let archs = output(Command::new("dpkg").arg("--print-foreign-architectures"))?;
    if archs.split_whitespace().any(|a| a == "arm64") {
        return Ok(());
    }
    say("adding the arm64 architecture to dpkg");
    run(root_cmd("dpkg").args(["--add-architecture", "arm64"]))?;
    apt_update()
}

/// Resolves the real cloud kernel package behind the metapackage.
fn kernel_package() -> Result<String> {
    let query = || {
        output(Command::new("apt-cache").args(["depends", &format!("{KERNEL_META}:arm64")]))
            .ok()
            .and_then(|o| parse_kernel_dep(&o))
    };
    if let Some(pkg) = query() {
        return Ok(pkg);
    }
    if !APT_UPDATED.load(Ordering::Relaxed) {
        apt_update()?;
        if let Some(pkg) = query() {
            return Ok(pkg);
        }
    }
    // Offline: any cached one will do.
    let cached = std::fs::read_dir(debian_dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with("linux-image-") && n.ends_with("-cloud-arm64"))
        .max();
    if let Some(pkg) = cached {
        say(format!(
            "apt cannot resolve {KERNEL_META}:arm64; using the cached {pkg}"
        ));
        return Ok(pkg);
    }
    bail!(
        "cannot resolve {KERNEL_META}:arm64 with `apt-cache depends` (is the arm64 architecture added and `apt-get update` done?)"
    )
}

/// `apt-get download PKG:arm64` and `dpkg-deb -x` into `target/debian/PKG/`, unless done.
fn ensure_package(pkg: &str) -> Result<PathBuf> {
    let dest = debian_dir().join(pkg);
    if dest.is_dir() {
        return Ok(dest);
    }
    let dl = debian_dir().join(format!("{pkg}.download"));
    let _ = std::fs::remove_dir_all(&dl);
    std::fs::create_dir_all(&dl).with_context(|| format!("cannot create {}", dl.display()))?;
    say(format!("downloading {pkg}:arm64"));
    let mut cmd = Command::new("apt-get");
    cmd.current_dir(&dl).args(["-q", "download"]);
    if is_root() {
        // apt would otherwise warn that its _apt user cannot write here.
        cmd.arg("-o").arg("APT::Sandbox::User=root");
    }
    cmd.arg(format!("{pkg}:arm64"));
    if run(&mut cmd).is_err() {
        if APT_UPDATED.load(Ordering::Relaxed) {
            bail!("cannot download {pkg}:arm64");
        }
        apt_update()?;
        run(&mut cmd)?;
    }
    let deb = std::fs::read_dir(&dl)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("apt-get download left no .deb in {}", dl.display()))?;
    ensure_tool("dpkg-deb")?;
    let tmp = debian_dir().join(format!("{pkg}.extract"));
    let _ = std::fs::remove_dir_all(&tmp);
    say(format!("extracting {} into {}", show(&deb), show(&dest)));
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp))?;
    std::fs::rename(&tmp, &dest).with_context(|| format!("cannot create {}", dest.display()))?;
    let _ = std::fs::remove_dir_all(&dl);
    Ok(dest)
}

/// Finds the kernel Image and its modules in an extracted kernel package.
fn kernel_in(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let boot = dir.join("boot");
    let kernel = std::fs::read_dir(&boot)
        .with_context(|| format!("cannot list {}", boot.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .with_context(|| format!("no vmlinuz-* in {}", boot.display()))?;
    let version = kernel.file_name().unwrap().to_string_lossy()["vmlinuz-".len()..].to_string();
    let head = read_head(&kernel, image::HEADER_LEN)?;
    image::parse_header(&head)
        .with_context(|| format!("{} is not an uncompressed arm64 Image", show(&kernel)))?;
    let moddir = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|m| dir.join(m).join(&version))
        .find(|p| p.is_dir())
        .with_context(|| format!("no lib/modules/{version} in {}", dir.display()))?;
    Ok((kernel, moddir))
}

fn read_head(path: &Path, len: usize) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = Vec::with_capacity(len);
    std::fs::File::open(path)
        .with_context(|| format!("cannot open {}", path.display()))?
        .take(len as u64)
        .read_to_end(&mut buf)?;
    Ok(buf)
}

/// Checks that `path` is a static aarch64 executable.
fn check_busybox(path: &Path) -> Result<()> {
    use object::read::elf::{FileHeader, ProgramHeader};
    let data = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let header = object::elf::FileHeader64::<object::Endianness>::parse(&*data)
        .with_context(|| format!("{} is not a 64-bit ELF file", path.display()))?;
    let endian = header.endian().context("bad ELF header")?;
    if header.e_machine(endian) != object::elf::EM_AARCH64 {
        bail!("{} is not an aarch64 program", path.display());
    }
    let phdrs = header
        .program_headers(endian, &*data)
        .context("bad ELF program headers")?;
    if phdrs
        .iter()
        .any(|p| p.p_type(endian) == object::elf::PT_INTERP)
    {
        bail!(
            "{} is dynamically linked; the initramfs needs a static busybox",
            path.display()
        );
    }
    Ok(())
}

/// The Debian arm64 kernel and busybox, downloaded and extracted if needed.
pub fn ensure_payload() -> Result<Payload> {
    ensure_arm64_arch()?;
    let kpkg = kernel_package()?;
    let kdir = ensure_package(&kpkg)?;
    let (kernel, moddir) = kernel_in(&kdir)?;
    let bdir = ensure_package(BUSYBOX_PKG)?;
    let busybox = ["bin/busybox", "usr/bin/busybox"]
        .iter()
        .map(|p| bdir.join(p))
        .find(|p| p.is_file())
        .with_context(|| format!("no bin/busybox in {}", bdir.display()))?;
    check_busybox(&busybox)?;
    say(format!(
        "host: {kpkg} and {BUSYBOX_PKG} (arm64), unpacked in {}",
        show(&debian_dir())
    ));
    Ok(Payload {
        kernel,
        moddir,
        busybox,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_versions() {
        let v = "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\nCopyright";
        assert_eq!(parse_qemu_major(v), Some(10));
        assert_eq!(
            parse_qemu_major("QEMU emulator version 7.2.15 (Debian 1:7.2+dfsg-7+deb12u12)"),
            Some(7)
        );
        assert_eq!(parse_qemu_major("garbage"), None);
    }

    #[test]
    fn kernel_metapackage() {
        let out =
            "linux-image-cloud-arm64:arm64\n  Depends: linux-image-6.1.0-56-cloud-arm64:arm64\n";
        assert_eq!(
            parse_kernel_dep(out).as_deref(),
            Some("linux-image-6.1.0-56-cloud-arm64")
        );
        let out = "linux-image-cloud-arm64\n  Depends: <linux-image-6.12.9+bpo-cloud-arm64>\n";
        assert_eq!(
            parse_kernel_dep(out).as_deref(),
            Some("linux-image-6.12.9+bpo-cloud-arm64")
        );
        assert_eq!(parse_kernel_dep("x\n  Depends: initramfs-tools\n"), None);
    }
}
