//! The QEMU command line (`virt` with EL2, SMMUv3 and the `guest-loader` modules Warden
//! boots the host from) and running QEMU with a timeout while capturing its console.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::image;
use crate::util::show;

/// RAM base of QEMU's `virt` machine.
pub const RAM_BASE: u64 = 0x4000_0000;
/// Where the host kernel is loaded (`guest-loader`): RAM + 256 MiB, clear of Warden
/// (RAM + 2 MiB, or RAM + text_offset) and of the DTB QEMU puts at RAM + 128 MiB.
pub const KERNEL_ADDR: u64 = RAM_BASE + (256 << 20);
/// Where the host initramfs is loaded: RAM + 384 MiB.
pub const INITRD_ADDR: u64 = RAM_BASE + (384 << 20);
/// Smallest RAM the layout above works with.
pub const MIN_MEM: u64 = 1 << 30;

/// The emulated machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    pub cpu: String,
    pub smp: u32,
    /// As given to `-m` (e.g. `2G`).
    pub mem: String,
    pub gic: u8,
}

/// What QEMU boots.
#[derive(Debug, Clone)]
pub struct Boot {
    /// Warden's flat image and its own command line; `None` boots the kernel directly
    /// (Linux then starts at EL2: only for checking the Linux side).
    pub warden: Option<(PathBuf, String)>,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The host kernel's command line.
    pub host_args: String,
    pub disk: Option<PathBuf>,
    /// Exit instead of rebooting (so a panic with `panic=-1` ends the run).
    pub no_reboot: bool,
    /// Appended to the command line as they are.
    pub extra: Vec<String>,
}

/// Parses a QEMU `-m` size: a number with an optional K/M/G/T suffix; plain numbers are
/// MiB, as for QEMU.
pub fn parse_size(s: &str) -> Result<u64> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "M"),
    };
    let shift = match unit.to_ascii_uppercase().trim_end_matches(['B', 'I']) {
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        "" => 0,
        _ => bail!("cannot parse memory size '{s}' (use e.g. 2G or 1536M)"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| anyhow!("cannot parse memory size '{s}' (use e.g. 2G or 1536M)"))?;
    n.checked_mul(1 << shift)
        .with_context(|| format!("memory size '{s}' is too large"))
}

/// Escapes a value for a QEMU `-device`/`-drive` option string: commas are doubled.
pub fn escape(value: &str) -> String {
    value.replace(',', ",,")
}

fn escape_path(path: &Path) -> String {
    escape(&path.to_string_lossy())
}

/// Checks that the host kernel and initramfs fit where the loaders put them.
pub fn check_layout(machine: &Machine, kernel: &Path, initrd: &Path) -> Result<()> {
    let mem = parse_size(&machine.mem)?;
    if mem < MIN_MEM {
        bail!(
            "--mem {}: Warden's QEMU layout needs at least 1 GiB of RAM",
            machine.mem
        );
    }
    let ksize = std::fs::metadata(kernel)
        .with_context(|| format!("kernel {}", kernel.display()))?
        .len();
    let mut head = vec![0u8; image::HEADER_LEN];
    std::fs::File::open(kernel)
        .and_then(|mut f| f.read_exact(&mut head))
        .with_context(|| format!("cannot read {}", kernel.display()))?;
    let kimage = image::parse_header(&head)
        .with_context(|| format!("kernel {} is not an arm64 Image", show(kernel)))?;
    let kspan = ksize.max(kimage.image_size);
    if KERNEL_ADDR + kspan > INITRD_ADDR {
        bail!(
            "kernel {} needs {kspan:#x} bytes at {KERNEL_ADDR:#x}, which runs into the \
             initramfs at {INITRD_ADDR:#x}",
            show(kernel)
        );
    }
    let isize = std::fs::metadata(initrd)
        .with_context(|| format!("initrd {}", initrd.display()))?
        .len();
    if INITRD_ADDR + isize > RAM_BASE + mem {
        bail!(
            "initrd {} ({isize} bytes) does not fit in {} of RAM at {INITRD_ADDR:#x}",
            show(initrd),
            machine.mem
        );
    }
    Ok(())
}

/// PCI slot of the test disk on bus 0: its requester ID, hence StreamID, is `slot << 3`.
pub const DISK_SLOT: u32 = 3;
/// The disk's StreamID (QEMU's `iommu-map` is the identity RID → SID).
pub const DISK_SID: u32 = DISK_SLOT << 3;

/// The QEMU arguments (without the program name).
pub fn args(machine: &Machine, boot: &Boot) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |s: String| a.push(s.into());
    push("-machine".into());
    push(format!(
        "virt,virtualization=on,iommu=smmuv3,gic-version={}",
        machine.gic
    ));
    for (opt, val) in [
        ("-cpu", machine.cpu.clone()),
        ("-smp", machine.smp.to_string()),
        ("-m", machine.mem.clone()),
    ] {
        push(opt.into());
        push(val);
    }
    for s in ["-nographic", "-nic", "none"] {
        push(s.into());
    }
    if boot.no_reboot {
        push("-no-reboot".into());
    }
    match &boot.warden {
        Some((image, warden_args)) => {
            push("-kernel".into());
            push(image.to_string_lossy().into_owned());
            push("-append".into());
            push(warden_args.clone());
            push("-device".into());
            push(format!(
                "guest-loader,addr={KERNEL_ADDR:#x},kernel={},bootargs={}",
                escape_path(&boot.kernel),
                escape(&boot.host_args)
            ));
            push("-device".into());
            push(format!(
                "guest-loader,addr={INITRD_ADDR:#x},initrd={}",
                escape_path(&boot.initrd)
            ));
        }
        None => {
            push("-kernel".into());
            push(boot.kernel.to_string_lossy().into_owned());
            push("-initrd".into());
            push(boot.initrd.to_string_lossy().into_owned());
            push("-append".into());
            push(boot.host_args.clone());
        }
    }
    if let Some(disk) = &boot.disk {
        push("-drive".into());
        push(format!(
            "if=none,id=d0,format=raw,file={}",
            escape_path(disk)
        ));
        push("-device".into());
        push(format!(
            "virtio-blk-pci,drive=d0,iommu_platform=on,disable-legacy=on,addr={DISK_SLOT}"
        ));
    }
    push("-accel".into());
    push("tcg,thread=multi".into());
    for e in &boot.extra {
        push(e.clone());
    }
    a
}

/// `qemu-system-aarch64` with [`args`].
pub fn command(machine: &Machine, boot: &Boot) -> Command {
    let mut cmd = Command::new("qemu-system-aarch64");
    cmd.args(args(machine, boot));
    cmd
}

/// How a captured QEMU run ended.
#[derive(Debug)]
pub struct Outcome {
    /// `None` when QEMU was killed at the timeout.
    pub status: Option<ExitStatus>,
    pub elapsed: Duration,
    /// Everything QEMU printed (console and its own messages), `\r` removed.
    pub output: String,
}

impl Outcome {
    /// QEMU's exit status (-1 when it ended by a signal); `None` when it was killed at
    /// the timeout.
    pub fn exit_code(&self) -> Option<i32> {
        self.status.map(|s| s.code().unwrap_or(-1))
    }
}

/// What is wrong with how QEMU ended (`exit` as [`Outcome::exit_code`]): a boot test
/// must power off by itself, with status 0, before `timeout`.
pub fn exit_problem(exit: Option<i32>, timeout: Duration) -> Option<String> {
    match exit {
        None => Some(format!(
            "QEMU did not exit within {} s and was killed",
            timeout.as_secs()
        )),
        Some(0) => None,
        Some(code) => Some(format!("QEMU exited with status {code}, not 0")),
    }
}

enum Chunk {
    Out(Vec<u8>),
    Err(Vec<u8>),
}

/// Runs QEMU without a terminal, writing everything it prints to `log` as it comes and
/// calling `on_line` for each console line; kills it after `timeout`.
pub fn run_captured(
    mut cmd: Command,
    log: &Path,
    timeout: Duration,
    mut on_line: impl FnMut(&str),
) -> Result<Outcome> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file =
        std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    writeln!(file, "# {}\n", crate::util::describe(&cmd))?;
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start qemu-system-aarch64")?;
    let (tx, rx) = mpsc::channel();
    let readers = [
        spawn_reader(child.stdout.take().expect("piped"), tx.clone(), Chunk::Out),
        spawn_reader(child.stderr.take().expect("piped"), tx, Chunk::Err),
    ];
    let deadline = start + timeout;
    let mut output = Vec::new();
    let (mut line, mut err_line) = (Vec::new(), Vec::new());
    let mut killed = false;
    loop {
        let wait = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(if killed { Duration::from_secs(5) } else { wait }) {
            Ok(Chunk::Out(bytes)) => {
                file.write_all(&bytes)?;
                for &b in &bytes {
                    if b == b'\n' {
                        let text = String::from_utf8_lossy(&line).replace('\r', "");
                        on_line(&text);
                        line.clear();
                    } else {
                        line.push(b);
                    }
                }
                output.extend_from_slice(&bytes);
            }
            Ok(Chunk::Err(bytes)) => {
                for &b in &bytes {
                    if b == b'\n' {
                        let text = format!("qemu stderr: {}\n", String::from_utf8_lossy(&err_line));
                        file.write_all(text.as_bytes())?;
                        output.extend_from_slice(text.as_bytes());
                        on_line(text.trim_end());
                        err_line.clear();
                    } else {
                        err_line.push(b);
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) if !killed => {
                let _ = child.kill();
                killed = true;
                writeln!(file, "\n# xtask: killed QEMU after {} s", timeout.as_secs())?;
            }
            // Both pipes closed, or nothing more after the kill.
            Err(_) => break,
        }
    }
    if !err_line.is_empty() {
        output.extend_from_slice(
            format!("qemu stderr: {}\n", String::from_utf8_lossy(&err_line)).as_bytes(),
        );
    }
    let status = child.wait().context("waiting for QEMU")?;
    for r in readers {
        let _ = r.join();
    }
    let elapsed = start.elapsed();
    writeln!(
        file,
        "\n# xtask: QEMU {} after {:.1} s",
        if killed {
            "killed".to_string()
        } else {
            status.to_string()
        },
        elapsed.as_secs_f64()
    )?;
    Ok(Outcome {
        status: (!killed).then_some(status),
        elapsed,
        output: String::from_utf8_lossy(&output).replace('\r', ""),
    })
}

fn spawn_reader(
    mut pipe: impl Read + Send + 'static,
    tx: mpsc::Sender<Chunk>,
    wrap: fn(Vec<u8>) -> Chunk,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.send(wrap(buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> Machine {
        Machine {
            cpu: "max".into(),
            smp: 4,
            mem: "2G".into(),
            gic: 3,
        }
    }

    fn boot() -> Boot {
        Boot {
            warden: Some(("target/warden.bin".into(), "warden.log=info".into())),
            kernel: "/k/vmlinuz".into(),
            initrd: "/i/init,rd.cpio".into(),
            host_args: "console=ttyAMA0 rdinit=/init opt=a,b".into(),
            disk: Some("/d/disk.img".into()),
            no_reboot: true,
            extra: vec!["-d".into(), "guest_errors".into()],
        }
    }

    fn joined(a: &[OsString]) -> Vec<String> {
        a.iter().map(|s| s.to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("5g").unwrap(), 5 << 30);
        assert_eq!(parse_size("1536M").unwrap(), 1536 << 20);
        assert_eq!(parse_size("1024").unwrap(), 1 << 30);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("2X").is_err());
    }

    #[test]
    fn commas_are_doubled() {
        assert_eq!(escape("a,b,,c"), "a,,b,,,,c");
        assert_eq!(
            escape("console=ttyAMA0 rdinit=/init"),
            "console=ttyAMA0 rdinit=/init"
        );
    }

    #[test]
    fn warden_command_line() {
        let a = joined(&args(&machine(), &boot()));
        let at = |s: &str| a.iter().position(|x| x == s).unwrap();
        assert_eq!(
            a[at("-machine") + 1],
            "virt,virtualization=on,iommu=smmuv3,gic-version=3"
        );
        assert_eq!(a[at("-kernel") + 1], "target/warden.bin");
        assert_eq!(a[at("-append") + 1], "warden.log=info");
        assert!(a.contains(&"guest-loader,addr=0x50000000,kernel=/k/vmlinuz,bootargs=console=ttyAMA0 rdinit=/init opt=a,,b".to_string()));
        assert!(a.contains(&"guest-loader,addr=0x58000000,initrd=/i/init,,rd.cpio".to_string()));
        assert!(a.contains(&"if=none,id=d0,format=raw,file=/d/disk.img".to_string()));
        assert!(a.contains(
            &"virtio-blk-pci,drive=d0,iommu_platform=on,disable-legacy=on,addr=3".to_string()
        ));
        assert!(a.contains(&"-no-reboot".to_string()));
        assert_eq!(&a[a.len() - 2..], ["-d", "guest_errors"]);
        assert!(!a.contains(&"-initrd".to_string()));
    }

    #[test]
    fn direct_command_line() {
        let mut b = boot();
        b.warden = None;
        b.disk = None;
        let a = joined(&args(
            &Machine {
                gic: 2,
                ..machine()
            },
            &b,
        ));
        let at = |s: &str| a.iter().position(|x| x == s).unwrap();
        assert_eq!(a[at("-kernel") + 1], "/k/vmlinuz");
        assert_eq!(a[at("-initrd") + 1], "/i/init,rd.cpio");
        assert_eq!(a[at("-append") + 1], "console=ttyAMA0 rdinit=/init opt=a,b");
        assert!(a[at("-machine") + 1].ends_with("gic-version=2"));
        assert!(
            !a.iter()
                .any(|x| x.contains("guest-loader") || x.contains("virtio-blk"))
        );
    }

    #[test]
    fn layout_checks() {
        let dir = std::env::temp_dir().join(format!("xtask-layout-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let kernel = dir.join("Image");
        let initrd = dir.join("initrd");
        std::fs::write(&kernel, crate::image::tests::header(0, 40 << 20)).unwrap();
        std::fs::write(&initrd, vec![0u8; 4096]).unwrap();
        assert!(check_layout(&machine(), &kernel, &initrd).is_ok());
        let small = Machine {
            mem: "512M".into(),
            ..machine()
        };
        assert!(
            format!("{:#}", check_layout(&small, &kernel, &initrd).unwrap_err()).contains("1 GiB")
        );
        std::fs::write(&kernel, crate::image::tests::header(0, 200 << 20)).unwrap();
        assert!(
            format!(
                "{:#}",
                check_layout(&machine(), &kernel, &initrd).unwrap_err()
            )
            .contains("runs into")
        );
        std::fs::write(&kernel, b"not an image").unwrap();
        assert!(check_layout(&machine(), &kernel, &initrd).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn capture_and_timeout() {
        let dir = std::env::temp_dir().join(format!("xtask-capture-{}", std::process::id()));
        let log = dir.join("x.log");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "printf 'a\\r\\nWTEST DONE\\n'; echo oops >&2; exit 3"]);
        let mut lines = Vec::new();
        let out = run_captured(cmd, &log, Duration::from_secs(20), |l| {
            lines.push(l.to_string())
        })
        .unwrap();
        assert_eq!(out.status.unwrap().code(), Some(3));
        assert!(out.output.contains("a\nWTEST DONE\n"));
        assert!(out.output.contains("qemu stderr: oops"));
        assert!(lines.contains(&"WTEST DONE".to_string()));
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo started; exec sleep 30"]);
        let out = run_captured(cmd, &log, Duration::from_millis(500), |_| {}).unwrap();
        assert!(out.status.is_none(), "killed at the timeout");
        assert!(out.elapsed < Duration::from_secs(10));
        assert!(
            std::fs::read_to_string(&log)
                .unwrap()
                .contains("killed QEMU")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
