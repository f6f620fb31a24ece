//! QEMU Linux boot tests: boot Warden with the Debian host kernel and the test
//! initramfs on several machine variants, and judge each boot from its console log.
//!
//! A variant passes only if: every check of the test `/init` printed `WTEST PASS <name>`,
//! none printed `WTEST FAIL`, `/init` reached `WTEST DONE`; Warden printed its banner (a
//! line starting with `Warden `) and logged the host's stage-2 fault on the carve-out;
//! the variant's own log lines appear; the disk sector the guest wrote is on the disk
//! file; and QEMU powered off by itself with status 0 before the timeout.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

use crate::image;
use crate::qemu::{self, Boot, Machine, RAM_BASE};
use crate::util::{self, hex_numbers, name_and_rest, show, truncate, write_atomic};

/// The checks of the test `/init`, in the order it runs them.
pub const TESTS: [&str; 10] = [
    "cpus",
    "hotplug",
    "el1",
    "reserved-memory",
    "devmem-carveout",
    "smmu-hidden",
    "dma-masters-hidden",
    "virtio-blk",
    "fp-regs",
    "msi",
];
/// Warden prints one line per device node with its DMA-master decision
/// (`warden: device <path> [<compatible>] <ranges>: <decision> (<why>)`, hyp::masters).
pub const DECISION_PREFIX: &str = "warden: device /";
/// The decision every node of these compatibles must get on QEMU virt: each must appear
/// at least once, and no line of that compatible may say anything else.
pub const DECISIONS: [(&str, &str); 6] = [
    ("qemu,fw-cfg-mmio", "hidden"),
    ("virtio,mmio", "hidden"),
    ("pci-host-ecam-generic", "translated"),
    ("arm,smmu-v3", "warden"),
    ("arm,pl011", "no-dma"),
    ("cfi-flash", "no-dma"),
];
/// Warden's summary of the decisions.
pub const DECISION_SUMMARY: &str = "warden: DMA masters: ";
/// Warden's first line starts with this (`Warden v<version>`).
pub const BANNER_PREFIX: &str = "Warden ";
/// Warden logs this (with the address) when the host touches memory it does not own.
pub const FAULT_TEXT: &str = "host stage-2 fault";
/// The default Warden command line for tests and `run`.
pub const WARDEN_ARGS: &str = "warden.log=info";
/// The host kernel command line every boot starts with.
pub const HOST_ARGS: &str = "console=ttyAMA0 rdinit=/init";

/// One machine configuration to boot.
#[derive(Debug, Clone, Copy)]
pub struct Variant {
    pub name: &'static str,
    pub cpu: &'static str,
    pub smp: u32,
    pub mem: &'static str,
    pub gic: u8,
    /// Load Warden at RAM base + this (a patched copy of the image header's text_offset)
    /// instead of QEMU's default RAM base + 2 MiB.
    pub text_offset: Option<u64>,
}

/// The variants `cargo xtask test` boots, in order.
pub const VARIANTS: &[Variant] = &[
    Variant {
        name: "max-gicv3",
        cpu: "max",
        smp: 4,
        mem: "2G",
        gic: 3,
        text_offset: None,
    },
    Variant {
        name: "a57-gicv2",
        cpu: "cortex-a57",
        smp: 2,
        mem: "1G",
        gic: 2,
        text_offset: None,
    },
    Variant {
        name: "n1-5g",
        cpu: "neoverse-n1",
        smp: 8,
        mem: "5G",
        gic: 3,
        text_offset: None,
    },
    Variant {
        name: "relocated",
        cpu: "max",
        smp: 2,
        mem: "2G",
        gic: 3,
        text_offset: Some(0x0320_0000),
    },
];

impl Variant {
    pub fn machine(&self) -> Machine {
        Machine {
            cpu: self.cpu.into(),
            smp: self.smp,
            mem: self.mem.into(),
            gic: self.gic,
        }
    }

    /// Lines (substrings) Warden must print for this variant besides banner and fault.
    pub fn expected_log(&self) -> Vec<String> {
        match self.text_offset {
            Some(off) => vec![format!("load address {:#x}", RAM_BASE + off)],
            None => Vec::new(),
        }
    }
}

/// A test disk and what the guest must find on it.
#[derive(Debug, Clone)]
pub struct Disk {
    pub bytes: Vec<u8>,
    /// md5 of the first `blocks` 4 KiB blocks.
    pub md5: String,
    pub blocks: u64,
    /// The guest writes `WTEST-WRITE <nonce>\n` into the last sector.
    pub nonce: String,
}

/// Size of the test disk.
pub const DISK_SIZE: usize = 4 << 20;
/// The disk's first bytes (the guest checks them before the md5).
pub const DISK_MAGIC: &[u8; 16] = b"WARDEN-TEST-DISK";

/// The MD5 digest of `data` as 32 lower-case hex digits, as busybox `md5sum` prints it in
/// the guest (a check of the disk's contents, not a secure hash).
pub fn md5_hex(data: &[u8]) -> String {
    use md5::Digest;
    md5::Md5::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// A disk of pseudo-random content derived from `seed`: magic, seed, random bytes.
pub fn make_disk(seed: u64) -> Disk {
    let mut state = seed | 1;
    let mut bytes = Vec::with_capacity(DISK_SIZE);
    bytes.extend_from_slice(DISK_MAGIC);
    bytes.extend_from_slice(format!("\nseed={seed:016x}\n").as_bytes());
    while bytes.len() < DISK_SIZE {
        bytes.extend_from_slice(&xorshift(&mut state).to_le_bytes());
    }
    bytes.truncate(DISK_SIZE);
    let blocks = (DISK_SIZE / 4096 - 1) as u64; // the last block is for the write test
    let md5 = md5_hex(&bytes[..blocks as usize * 4096]);
    let nonce = format!("{:016x}", xorshift(&mut state));
    Disk {
        bytes,
        md5,
        blocks,
        nonce,
    }
}

/// Checks that the disk's last sector holds what the guest was asked to write.
pub fn check_disk_write(disk: &[u8], nonce: &str) -> Result<(), String> {
    let want = format!("WTEST-WRITE {nonce}\n");
    let Some(sector) = disk.len().checked_sub(512).map(|at| &disk[at..]) else {
        return Err("the disk file is shorter than a sector".into());
    };
    let ok = sector.starts_with(want.as_bytes()) && sector[want.len()..].iter().all(|&b| b == 0);
    if ok {
        Ok(())
    } else {
        let shown = String::from_utf8_lossy(&sector[..want.len().min(sector.len())]).into_owned();
        Err(format!(
            "the disk file's last sector starts with {shown:?}, expected {want:?} and zeros"
        ))
    }
}

/// The host kernel command line of a test boot.
pub fn test_bootargs(smp: u32, disk: &Disk) -> String {
    format!(
        "{HOST_ARGS} panic=-1 warden_test=1 warden_test.cpus={smp} warden_test.md5={} \
         warden_test.md5blocks={} warden_test.nonce={}",
        disk.md5, disk.blocks, disk.nonce
    )
}

/// What a boot must show.
#[derive(Debug, Clone)]
pub struct Expect {
    /// Warden's banner and fault log line are required (false for direct Linux boots).
    pub warden: bool,
    /// Further substrings the log must contain.
    pub log: Vec<String>,
}

/// The results of the test `/init` found in a console log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Results {
    /// (name, details) of each `WTEST PASS`.
    pub passed: Vec<(String, String)>,
    /// (name, reason) of each `WTEST FAIL`.
    pub failed: Vec<(String, String)>,
    pub done: bool,
}

/// Collects the `WTEST` lines of a log.
pub fn parse_results(log: &str) -> Results {
    let mut r = Results::default();
    for line in log.lines() {
        let Some(at) = line.find("WTEST ") else {
            continue;
        };
        let rest = &line[at + "WTEST ".len()..];
        if let Some(p) = rest.strip_prefix("PASS ") {
            r.passed.push(name_and_rest(p));
        } else if let Some(f) = rest.strip_prefix("FAIL ") {
            r.failed.push(name_and_rest(f));
        } else if rest.trim_end() == "DONE" {
            r.done = true;
        }
    }
    r
}

/// Checks QEMU's `smmuv3_translate_success` trace: the disk's StreamID was translated
/// at stage 2 only, identity (the host stage-2), at least once. Returns the count.
pub fn check_disk_translation(trace: &str, sid: u32) -> std::result::Result<usize, String> {
    let want_sid = format!("sid={sid:#x} ");
    let mut n = 0;
    for line in trace
        .lines()
        .filter(|l| l.contains("smmuv3_translate_success"))
    {
        if !line.contains(&want_sid) {
            continue;
        }
        if !line.contains("stage=2") {
            return Err(format!(
                "the disk's DMA was not translated at stage 2: {line}"
            ));
        }
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok())
        };
        match (field("iova="), field("translated=")) {
            (Some(i), Some(t)) if i == t => n += 1,
            _ => {
                return Err(format!(
                    "the disk's DMA was not identity-translated: {line}"
                ));
            }
        }
    }
    if n == 0 {
        return Err(format!(
            "QEMU's SMMU trace shows no translation for the disk (sid {sid:#x}): its DMA bypassed the SMMU or never happened"
        ));
    }
    Ok(n)
}

/// The carve-out base the `reserved-memory` check reported (`base=0x…`).
fn carve_out_base(r: &Results) -> Option<u64> {
    let (_, details) = r.passed.iter().find(|(n, _)| n == "reserved-memory")?;
    let hex = details
        .split_whitespace()
        .find_map(|w| w.strip_prefix("base=0x"))?;
    u64::from_str_radix(hex, 16).ok()
}

/// Everything wrong with a boot, from its console output and how QEMU ended
/// (`exit` = `None` when it was killed at the timeout). Empty means the boot passed.
pub fn evaluate(
    output: &str,
    exit: Option<i32>,
    timeout: Duration,
    expect: &Expect,
) -> Vec<String> {
    let mut problems = Vec::new();
    let r = parse_results(output);
    for (name, why) in &r.failed {
        problems.push(format!("WTEST FAIL {name}: {why}"));
    }
    for name in TESTS {
        let passed = r.passed.iter().any(|(n, _)| n == name);
        let failed = r.failed.iter().any(|(n, _)| n == name);
        if !passed && !failed {
            problems.push(format!("no result for the `{name}` check"));
        }
    }
    if !r.done {
        problems.push("the test /init never printed `WTEST DONE`".into());
    }
    if expect.warden {
        problems.extend(banner_problem(output));
        let faults: Vec<&str> = output.lines().filter(|l| l.contains(FAULT_TEXT)).collect();
        if faults.is_empty() {
            problems.push(format!(
                "Warden did not log `{FAULT_TEXT}` for the host's read of its carve-out"
            ));
        } else if let Some(base) = carve_out_base(&r) {
            // The carve-out's first page is probed first: its fault must be among them.
            if !faults.iter().any(|l| hex_numbers(l).contains(&base)) {
                problems.push(format!(
                    "no `{FAULT_TEXT}` line names the probed carve-out base {base:#x}"
                ));
            }
        }
    }
    if expect.warden {
        problems.extend(decision_problems(output));
    }
    // The fp-regs rounds with edu's DMA must really have had an SMMU event pending: Warden
    // logged edu's fault on the carve-out base (the DMA's source).
    if expect.warden
        && r.passed.iter().any(|(n, _)| n == "fp-regs")
        && let Some(base) = carve_out_base(&r)
        && !crate::edutest::smmu_fault_logged(output, base)
    {
        problems.push(format!(
            "fp-regs passed but Warden logged no SMMU fault of edu (sid {:#x}) at {base:#x}: \
             no event was pending at its traps",
            crate::edutest::EDU_SID
        ));
    }
    for want in &expect.log {
        if !output.contains(want.as_str()) {
            problems.push(format!("`{want}` is not in the log"));
        }
    }
    problems.extend(qemu::exit_problem(exit, timeout));
    problems
}

/// What is wrong with the DMA-master decisions in Warden's banner ([`DECISIONS`]).
pub fn decision_problems(output: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let lines: Vec<&str> = output
        .lines()
        .filter(|l| l.starts_with(DECISION_PREFIX))
        .collect();
    for (compat, want) in DECISIONS {
        let tag = format!(" [{compat}] ");
        let of: Vec<&&str> = lines.iter().filter(|l| l.contains(&tag)).collect();
        if of.is_empty() {
            problems.push(format!(
                "Warden's banner has no DMA-master decision for a `{compat}` node (`{DECISION_PREFIX}… [{compat}] …: {want} (…)`)"
            ));
        }
        for l in of {
            if !l.contains(&format!(": {want} (")) {
                problems.push(format!("expected `{compat}` to be {want}: {l}"));
            }
        }
    }
    if !output.lines().any(|l| l.starts_with(DECISION_SUMMARY)) {
        problems.push(format!(
            "Warden's banner has no DMA-master summary (`{DECISION_SUMMARY}…`)"
        ));
    }
    problems
}

/// What is wrong when Warden's banner (a line starting with [`BANNER_PREFIX`]) is not in
/// a console log.
pub fn banner_problem(output: &str) -> Option<String> {
    (!output.lines().any(|l| l.starts_with(BANNER_PREFIX)))
        .then(|| format!("no Warden banner (a line starting with `{BANNER_PREFIX}`)"))
}

/// Options of a boot-test run.
#[derive(Debug, Clone)]
pub struct Options {
    pub timeout: Duration,
    /// Boot Linux directly, without Warden (checks the Linux side; Warden's checks fail).
    pub direct: bool,
}

/// Where the logs go.
pub fn log_dir() -> PathBuf {
    util::target_dir().join("qemu-tests")
}

/// Boots one variant and returns its problems (empty = passed).
pub fn run_variant(
    v: &Variant,
    image_path: &Path,
    kernel: &Path,
    initrd: &Path,
    opts: &Options,
) -> Result<Vec<String>> {
    let dir = log_dir();
    std::fs::create_dir_all(&dir)?;
    let suffix = if opts.direct { "-direct" } else { "" };
    let log = dir.join(format!("{}{suffix}.log", v.name));
    let disk_path = dir.join(format!("{}{suffix}.disk", v.name));
    let seed = {
        let mut h = DefaultHasher::new();
        v.name.hash(&mut h);
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
            .hash(&mut h);
        h.finish()
    };
    let disk = make_disk(seed);
    write_atomic(&disk_path, &disk.bytes)?;

    let machine = v.machine();
    qemu::check_layout(&machine, kernel, initrd)?;
    let warden = if opts.direct {
        None
    } else {
        let image = match v.text_offset {
            None => image_path.to_path_buf(),
            Some(off) => {
                let mut bytes = std::fs::read(image_path)
                    .with_context(|| format!("cannot read {}", image_path.display()))?;
                image::patch_text_offset(&mut bytes, off)?;
                let path = dir.join(format!("warden-{}.bin", v.name));
                write_atomic(&path, &bytes)?;
                path
            }
        };
        Some((image, WARDEN_ARGS.to_string()))
    };
    // QEMU's SMMU trace shows whether the disk's DMA was really translated at stage 2.
    let trace = dir.join(format!("{}{suffix}.smmu-trace", v.name));
    let _ = std::fs::remove_file(&trace);
    let boot = Boot {
        warden,
        kernel: kernel.to_path_buf(),
        initrd: initrd.to_path_buf(),
        host_args: test_bootargs(v.smp, &disk),
        disk: Some(disk_path.clone()),
        no_reboot: true,
        extra: vec![
            // The fp-regs check's DMA master (SMMU fault events pending at a trap).
            "-device".into(),
            crate::edutest::EDU_DEVICE.into(),
            "-trace".into(),
            format!("enable=smmuv3_translate_success,file={}", trace.display()),
            "-trace".into(),
            format!("enable=smmuv3_record_event,file={}", trace.display()),
        ],
    };
    let mut expect = Expect {
        warden: !opts.direct,
        log: Vec::new(),
    };
    if !opts.direct {
        expect.log = v.expected_log();
    }
    println!(
        "    {}: -cpu {} -smp {} -m {} gic-version={}{}{} (log: {})",
        v.name,
        v.cpu,
        v.smp,
        v.mem,
        v.gic,
        v.text_offset.map_or(String::new(), |o| format!(
            ", loaded at {:#x}",
            RAM_BASE + o
        )),
        if opts.direct {
            ", Linux directly, no Warden"
        } else {
            ""
        },
        show(&log)
    );
    let outcome = qemu::run_captured(qemu::command(&machine, &boot), &log, opts.timeout, |line| {
        if let Some(at) = line.find("WTEST ") {
            let l = &line[at..];
            if l.starts_with("WTEST PASS")
                || l.starts_with("WTEST FAIL")
                || l.starts_with("WTEST DONE")
            {
                println!("      {}", truncate(l, 150));
            }
        } else if line.starts_with("qemu stderr:") {
            println!("      {}", truncate(line, 150));
        }
    })?;
    let exit = outcome.exit_code();
    let mut problems = evaluate(&outcome.output, exit, opts.timeout, &expect);
    if parse_results(&outcome.output)
        .passed
        .iter()
        .any(|(n, _)| n == "virtio-blk")
    {
        let written = std::fs::read(&disk_path)?;
        if let Err(e) = check_disk_write(&written, &disk.nonce) {
            problems.push(format!("the guest reported its disk write, but {e}"));
        }
    }
    if !opts.direct {
        let text = std::fs::read_to_string(&trace).unwrap_or_default();
        match check_disk_translation(&text, qemu::DISK_SID) {
            Ok(n) => println!(
                "      SMMU trace: {n} stage-2 translations of the disk's DMA (sid {:#x}), all identity",
                qemu::DISK_SID
            ),
            Err(e) => problems.push(format!("{e} (trace: {})", show(&trace))),
        }
    }
    println!(
        "    {}: {} in {:.0} s",
        v.name,
        if problems.is_empty() { "PASS" } else { "FAIL" },
        outcome.elapsed.as_secs_f64()
    );
    if !problems.is_empty() {
        for p in &problems {
            println!("      - {p}");
        }
        println!("      full console log: {}", log.display());
    } else {
        let _ = std::fs::remove_file(&disk_path);
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
Warden v0.1.0
load address 0x43200000
warden: device /fw-cfg@9020000 [qemu,fw-cfg-mmio] 0x9020000..0x9020018: hidden (fw_cfg DMA interface)
warden: device /virtio_mmio@a000000 [virtio,mmio] 0xa000000..0xa000200: hidden (virtio-mmio)
warden: device /virtio_mmio@a000200 [virtio,mmio] 0xa000200..0xa000400: hidden (virtio-mmio)
warden: device /smmuv3@9050000 [arm,smmu-v3] 0x9050000..0x9070000: warden (SMMUv3 driven by Warden)
warden: device /pcie@10000000 [pci-host-ecam-generic] 0x4010000000..0x4020000000: translated (behind an SMMU)
warden: device /pl011@9000000 [arm,pl011] 0x9000000..0x9001000: no-dma (known not to master DMA)
warden: device /flash@0 [cfi-flash] 0x0..0x4000000: no-dma (known not to master DMA)
warden: DMA masters: 7 device node(s): 1 translated
[    0.000000] Booting Linux on physical CPU 0x0000000000 [0x000f0510]
WTEST START 6.1.0-56-cloud-arm64
WTEST PASS cpus: online 0-3
WTEST PASS hotplug: cpu3 offline (online: 0-2) and back (online: 0-3)
WTEST PASS el1: CPU: All CPU(s) started at EL1
WTEST PASS reserved-memory: warden@4fe00000 base=0x4fe00000 size=0x200000 no-map
warden: host stage-2 fault at 0x4fe00000
WTEST PASS devmem-carveout: 0x4fe00000 killed by SIGBUS (status 135)
WTEST PASS smmu-hidden: no IOMMU in Linux; smmuv3@9050000 disabled
WTEST PASS dma-masters-hidden: 33 nodes disabled
WTEST PASS virtio-blk
warden: WARN  smmu0: SMMU event F_TRANSLATION sid 0x10 iova 0x4fe00000 ipa 0x4fe00000 read stage-2
WTEST PASS fp-regs: ok: 200 rounds; ok: 6 rounds
WTEST PASS msi: ITS-MSI: virtio0-req.0=417(ITS-MSI)
WTEST DONE
";

    fn expect() -> Expect {
        Expect {
            warden: true,
            log: VARIANTS[3].expected_log(),
        }
    }

    const T: Duration = Duration::from_secs(240);

    #[test]
    fn a_good_boot_passes() {
        assert_eq!(evaluate(GOOD, Some(0), T, &expect()), Vec::<String>::new());
        let r = parse_results(GOOD);
        assert_eq!(r.passed.len(), TESTS.len());
        assert_eq!(r.passed[0], ("cpus".to_string(), "online 0-3".to_string()));
        assert_eq!(r.passed[7], ("virtio-blk".to_string(), String::new()));
    }

    #[test]
    fn every_requirement_can_fail() {
        let check = |log: &str, exit: Option<i32>, needle: &str| {
            let p = evaluate(log, exit, T, &expect());
            assert!(
                p.iter().any(|p| p.contains(needle)),
                "{needle:?} not in {p:?}"
            );
        };
        check(GOOD, None, "did not exit within 240 s");
        check(GOOD, Some(1), "status 1");
        check(&GOOD.replace("Warden v0.1.0", "Hello"), Some(0), "banner");
        check(
            &GOOD.replace("host stage-2 fault", "fault"),
            Some(0),
            FAULT_TEXT,
        );
        check(
            &GOOD.replace("load address 0x43200000", "load address 0x40200000"),
            Some(0),
            "load address 0x43200000",
        );
        check(&GOOD.replace("WTEST DONE", ""), Some(0), "WTEST DONE");
        check(
            &GOOD.replace(
                "WTEST PASS el1: CPU: All CPU(s) started at EL1",
                "WTEST FAIL el1: started at EL2",
            ),
            Some(0),
            "WTEST FAIL el1: started at EL2",
        );
        check(
            &GOOD.replace("WTEST PASS cpus: online 0-3\n", ""),
            Some(0),
            "no result for the `cpus` check",
        );
        // The DMA-master decisions must be in the banner, and right.
        check(
            &GOOD.replace(": hidden (fw_cfg", ": no-dma (fw_cfg"),
            Some(0),
            "expected `qemu,fw-cfg-mmio` to be hidden",
        );
        check(
            &GOOD.replace(
                "[virtio,mmio] 0xa000200..0xa000400: hidden",
                "[virtio,mmio] 0xa000200..0xa000400: PASSTHROUGH, UNPROTECTED",
            ),
            Some(0),
            "expected `virtio,mmio` to be hidden",
        );
        check(
            &GOOD.replace("[pci-host-ecam-generic]", "[pci]"),
            Some(0),
            "no DMA-master decision for a `pci-host-ecam-generic` node",
        );
        check(
            &GOOD.replace("warden: DMA masters: ", "DMA: "),
            Some(0),
            "no DMA-master summary",
        );
        check(
            &GOOD.replace("sid 0x10", "sid 0x18"),
            Some(0),
            "no event was pending",
        );
        // A failure reported besides a pass still fails the boot.
        check(
            &format!("{GOOD}WTEST FAIL virtio-blk: md5\n"),
            Some(0),
            "WTEST FAIL virtio-blk",
        );
    }

    #[test]
    fn the_fault_must_name_the_carve_out() {
        let log = GOOD.replace("fault at 0x4fe00000", "fault at 0x1000");
        let log = log.replace("0x4fe00000 ipa 0x4fe00000", "0x1000 ipa 0x1000");
        let p = evaluate(&log, Some(0), T, &expect());
        assert!(p.iter().any(|p| p.contains("base 0x4fe00000")), "{p:?}");
        // Any spelling of the number will do.
        for spelling in [
            "0x000000004fe00000",
            "0x4fe0_0000",
            "IPA 0x4FE00000 (VA 0xffff)",
        ] {
            let log = GOOD.replace("fault at 0x4fe00000", &format!("fault at {spelling}"));
            assert!(
                evaluate(&log, Some(0), T, &expect()).is_empty(),
                "{spelling}"
            );
        }
        assert_eq!(
            hex_numbers("a 0x10, b 0xffff_0000 c 0x"),
            [0x10, 0xffff_0000]
        );
    }

    #[test]
    fn banner_must_start_a_line() {
        let log = GOOD.replace("Warden v0.1.0", "x Warden v0.1.0");
        assert!(!evaluate(&log, Some(0), T, &expect()).is_empty());
    }

    #[test]
    fn direct_boots_skip_the_warden_lines() {
        let log = GOOD
            .replace("Warden v0.1.0", "")
            .replace("host stage-2 fault", "");
        let e = Expect {
            warden: false,
            log: vec![],
        };
        assert!(evaluate(&log, Some(0), T, &e).is_empty());
    }

    #[test]
    fn md5_rfc1321_vectors() {
        assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(md5_hex(b"abc"), "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(
            md5_hex(
                b"12345678901234567890123456789012345678901234567890123456789012345678901234567890"
            ),
            "57edf4a22be3c955ac49da2e2107b67a"
        );
    }

    #[test]
    fn md5_matches_md5sum_on_a_large_input() {
        // Cross-check against the host's md5sum when it is there (coreutils).
        let data: Vec<u8> = (0..100_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let Ok(mut child) = std::process::Command::new("md5sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
        else {
            return;
        };
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&data).unwrap();
        let out = child.wait_with_output().unwrap();
        let want = String::from_utf8(out.stdout).unwrap();
        assert_eq!(md5_hex(&data), want.split_whitespace().next().unwrap());
    }

    #[test]
    fn disks_differ_by_seed_and_carry_their_md5() {
        let (a, b) = (make_disk(1), make_disk(2));
        assert_eq!(a.bytes.len(), DISK_SIZE);
        assert!(a.bytes.starts_with(DISK_MAGIC));
        assert_ne!(a.md5, b.md5);
        assert_ne!(a.nonce, b.nonce);
        assert_eq!(a.blocks, 1023);
        assert_eq!(a.md5, md5_hex(&a.bytes[..1023 * 4096]));
        let args = test_bootargs(4, &a);
        assert!(args.contains(&format!("warden_test.md5={}", a.md5)));
        assert!(args.contains("warden_test.cpus=4"));
        assert!(args.starts_with(HOST_ARGS));
    }

    #[test]
    fn disk_write_check() {
        let mut d = make_disk(3);
        assert!(
            check_disk_write(&d.bytes, &d.nonce).is_err(),
            "random data is not a write"
        );
        let at = d.bytes.len() - 512;
        d.bytes[at..].fill(0);
        let line = format!("WTEST-WRITE {}\n", d.nonce);
        d.bytes[at..at + line.len()].copy_from_slice(line.as_bytes());
        assert!(check_disk_write(&d.bytes, &d.nonce).is_ok());
        assert!(check_disk_write(&d.bytes, "0000000000000000").is_err());
    }

    #[test]
    fn variants_fit_the_layout() {
        for v in VARIANTS {
            let mem = qemu::parse_size(v.mem).unwrap();
            assert!(mem >= qemu::MIN_MEM, "{}", v.name);
            assert!(
                v.gic != 2 || v.smp <= 8,
                "{}: GICv2 has at most 8 CPUs",
                v.name
            );
            if let Some(off) = v.text_offset {
                assert_eq!(off % (2 << 20), 0);
                assert!(RAM_BASE + off < RAM_BASE + (128 << 20), "below the DTB");
            }
        }
        assert_eq!(VARIANTS[3].expected_log(), ["load address 0x43200000"]);
    }
}

#[cfg(test)]
mod trace_tests {
    use super::check_disk_translation;

    #[test]
    fn disk_translation_evidence() {
        let ok = "smmuv3_translate_success smmuv3-iommu-memory-region-24-3 sid=0x18 iova=0xb9ac3002 translated=0xb9ac3002 perm=0x3 stage=2\n";
        assert_eq!(check_disk_translation(ok, 0x18), Ok(1));
        assert!(
            check_disk_translation("", 0x18).is_err(),
            "no translation = no evidence"
        );
        assert!(check_disk_translation(ok, 0x8).is_err(), "other device");
        let s1 = ok.replace("stage=2", "stage=1");
        assert!(check_disk_translation(&s1, 0x18).is_err());
        let moved = ok.replace("translated=0xb9ac3002", "translated=0x1000");
        assert!(check_disk_translation(&moved, 0x18).is_err());
    }
}
