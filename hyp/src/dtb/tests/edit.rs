//! [`build_host_dtb`]: the edited blobs checked with an independent parser (dtoolkit)
//! and with dtc.

use super::builder::*;
use super::*;

#[test]
fn spin_table_cpus_are_refused() {
    let orig = spin_table_board();
    let p = Platform::parse(&orig).unwrap();
    assert_eq!(p.cpus.len(), 6);
    // The release pages of the secondaries, once each, both pages of a straddling
    // address, a disabled (quiescent) CPU's, and the whole reservation around a
    // release address (page-rounded); not the boot CPU's own.
    assert_eq!(
        p.spin_table_release_pages(0),
        [
            r(0x8000_0000, 0x1000),
            r(0x8000_1000, 0x1000),
            r(0x8000_2000, 0x1000),
            r(0x8800_0000, 0x3000),
            r(0x9000_0000, 0x1000),
        ]
    );
    assert_eq!(
        p.spin_table_release_pages(2),
        [
            r(0x8000_0000, 0x1000),
            r(0x8800_0000, 0x3000),
            r(0x9000_0000, 0x1000),
        ],
        "booted on CPU 2: CPUs 0 and 1 share a page"
    );
    let edits = HostDtbEdits {
        refuse_spin_table: Some(0),
        ..Default::default()
    };
    let mut out = vec![0u8; 4096];
    let n = build_host_dtb(&orig, &mut out, &edits).unwrap();
    let q = Platform::parse(&out[..n]).unwrap();
    let avail: Vec<(u64, bool)> = q.cpus.iter().map(|c| (c.mpidr, c.available)).collect();
    assert_eq!(
        avail,
        [
            (0, true),
            (1, false),
            (2, false),
            (3, false),
            (4, false),
            (0x100, true)
        ],
        "only the boot CPU and the PSCI CPU are left to the host"
    );
    let (_, props) = flatten(&out[..n]);
    let status = |node: &str| {
        props
            .get(&(node.to_string(), "status".to_string()))
            .cloned()
    };
    assert_eq!(status("/cpus/cpu@1"), Some(s("disabled")));
    assert_eq!(status("/cpus/cpu@2"), Some(s("disabled")));
    assert_eq!(status("/cpus/cpu@0"), None);
    assert_eq!(status("/cpus/cpu@100"), None);
    // Without the edit nothing changes.
    let n = build_host_dtb(&orig, &mut out, &HostDtbEdits::default()).unwrap();
    let q = Platform::parse(&out[..n]).unwrap();
    assert_eq!(q.cpus, p.cpus);
}

/// Every node path (in order) and every (path, property) → value, read with dtoolkit
/// as an independent parser.
type Flat = (Vec<String>, BTreeMap<(String, String), Vec<u8>>);

fn flatten(blob: &[u8]) -> Flat {
    use dtoolkit::{Node, Property};
    fn walk(
        node: dtoolkit::fdt::FdtNode<'_>,
        path: &str,
        nodes: &mut Vec<String>,
        props: &mut BTreeMap<(String, String), Vec<u8>>,
    ) {
        nodes.push(path.to_string());
        for p in node.properties() {
            props.insert((path.to_string(), p.name().to_string()), p.value().to_vec());
        }
        for c in node.children() {
            let child = format!("{}/{}", path.trim_end_matches('/'), c.name());
            walk(c, &child, nodes, props);
        }
    }
    let fdt = dtoolkit::fdt::Fdt::new(blob).expect("dtoolkit accepts the blob");
    let mut nodes = Vec::new();
    let mut props = BTreeMap::new();
    walk(fdt.root(), "/", &mut nodes, &mut props);
    (nodes, props)
}

/// dtc's warnings for a blob; panics if dtc reports an error.
fn dtc_warnings(name: &str, blob: &[u8]) -> Option<Vec<String>> {
    let path =
        std::env::temp_dir().join(format!("warden-dtb-test-{}-{name}.dtb", std::process::id()));
    std::fs::write(&path, blob).unwrap();
    let out = Command::new("dtc")
        .args(["-I", "dtb", "-O", "dts", "-o", "/dev/null"])
        .arg(&path)
        .output();
    let _ = std::fs::remove_file(&path);
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            std::println!("note: dtc not runnable ({e}); skipping the dtc check");
            return None;
        }
    };
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "dtc failed on {name}: {stderr}");
    assert!(!stderr.contains("ERROR"), "dtc errors on {name}: {stderr}");
    let mut w: Vec<String> = stderr
        .lines()
        .filter(|l| l.contains("Warning"))
        .map(|l| l.split_once(": ").map_or(l, |(_, rest)| rest).to_string())
        .collect();
    w.sort();
    Some(w)
}

fn u64be(v: u64) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}

/// Edits `orig` with the usual host edits and checks the result in every way.
fn check_host_edit(name: &str, orig: &[u8], carve_outs: &[PhysRange], reg_cells: (u32, u32)) {
    let before = Platform::parse(orig).unwrap();
    let edits = HostDtbEdits::for_host(&before, carve_outs);
    let mut out = vec![0u8; orig.len() + 1024];
    let n = build_host_dtb(orig, &mut out, &edits).unwrap();
    let out = &out[..n];
    assert_eq!(host_dtb_size(orig, &edits), Ok(n));
    assert_eq!(be32(out, 4), Some(n as u32), "totalsize");

    // Round trip through Platform::parse.
    let after = Platform::parse(out).unwrap();
    let mut expected = before.clone();
    expected.dtb_size = n;
    for c in carve_outs {
        expected.reservations.push(Reservation {
            range: *c,
            source: ReservationSource::ReservedMemory { no_map: true },
        });
    }
    for smmu in &mut expected.smmus {
        smmu.available = false;
    }
    for cpu in &mut expected.cpus {
        if cpu.enable_method == EnableMethod::SpinTable
            && cpu.mpidr != u64::from(before.boot_cpuid_phys)
        {
            cpu.available = false;
        }
    }
    expected.bootargs = before
        .kernel
        .as_ref()
        .map(|k| k.bootargs.clone().unwrap_or_default());
    assert_eq!(after, expected, "{name}");

    // Structural diff against the original, read by an independent parser.
    let (nodes0, props0) = flatten(orig);
    let (nodes1, props1) = flatten(out);
    let resmem_existed = nodes0.iter().any(|n| n == "/reserved-memory");
    let new_nodes: Vec<String> = nodes1
        .iter()
        .filter(|n| !nodes0.contains(n))
        .cloned()
        .collect();
    let mut expected_new: Vec<String> = carve_outs
        .iter()
        .map(|c| format!("/reserved-memory/warden@{:x}", c.base.get()))
        .collect();
    if !resmem_existed {
        expected_new.insert(0, "/reserved-memory".to_string());
    }
    assert_eq!(new_nodes, expected_new, "{name}: added nodes");
    let kept: Vec<&String> = nodes1.iter().filter(|n| nodes0.contains(n)).collect();
    assert_eq!(
        kept,
        nodes0.iter().collect::<Vec<_>>(),
        "{name}: nodes kept, in order"
    );

    let mut want = props0.clone();
    let key = |p: &str, n: &str| (p.to_string(), n.to_string());
    if let Some(k) = &before.kernel {
        want.insert(
            key("/chosen", "bootargs"),
            s(k.bootargs.as_deref().unwrap_or("")),
        );
    }
    if let Some(rd) = &before.ramdisk {
        want.insert(
            key("/chosen", "linux,initrd-start"),
            u64be(rd.range.base.get()),
        );
        want.insert(key("/chosen", "linux,initrd-end"), u64be(rd.range.end()));
    }
    for ((path, prop), _) in props0
        .iter()
        .filter(|((_, p), v)| p == "compatible" && v.starts_with(b"arm,smmu-v3\0"))
    {
        let _ = prop;
        want.insert(key(path, "status"), s("disabled"));
    }
    for ((path, _), _) in props0
        .iter()
        .filter(|((_, p), v)| p == "enable-method" && v.as_slice() == b"spin-table\0")
    {
        want.insert(key(path, "status"), s("disabled"));
    }
    if !resmem_existed {
        want.insert(key("/reserved-memory", "#address-cells"), cells(&[2]));
        want.insert(
            key("/reserved-memory", "#size-cells"),
            cells(&[reg_cells.1]),
        );
        want.insert(key("/reserved-memory", "ranges"), vec![]);
    }
    for c in carve_outs {
        let path = format!("/reserved-memory/warden@{:x}", c.base.get());
        let mut reg = u64be(c.base.get());
        if reg_cells.1 == 2 {
            reg.extend(u64be(c.size));
        } else {
            reg.extend(cells(&[c.size as u32]));
        }
        want.insert(key(&path, "reg"), reg);
        want.insert(key(&path, "no-map"), vec![]);
    }
    assert_eq!(props1, want, "{name}: properties");

    // Header fields and memory reservations carried over.
    assert_eq!(be32(out, 28), be32(orig, 28), "boot_cpuid_phys");
    let rsv = |b: &[u8]| Fdt::open(b).unwrap().memreserve().collect::<Vec<_>>();
    assert_eq!(rsv(out), rsv(orig));

    // dtc accepts it and has nothing new to complain about.
    if let (Some(w0), Some(w1)) = (
        dtc_warnings(&format!("{name}-orig"), orig),
        dtc_warnings(name, out),
    ) {
        let new: Vec<&String> = w1.iter().filter(|w| !w0.contains(w)).collect();
        assert!(new.is_empty(), "{name}: new dtc warnings {new:?}");
    }

    // Editing the output again with the same edits changes nothing.
    let mut again = vec![0u8; n + 1024];
    let m = build_host_dtb(out, &mut again, &edits).unwrap();
    assert_eq!(&again[..m], out, "{name}: idempotent");
}

#[test]
fn host_edits_qemu() {
    let carve = [r(0x7e00_0000, 0x200_0000), r(0x4000_0000, 0x10_0000)];
    check_host_edit("virt-gicv3", GICV3, &carve, (2, 2));
    check_host_edit("virt-gicv2", GICV2, &carve[..1], (2, 2));
    check_host_edit(
        "virt-bigram",
        BIGRAM,
        &[r(0x1_7c00_0000, 0x400_0000)],
        (2, 2),
    );
}

#[test]
fn host_edits_synthetic_uses_existing_reserved_memory_cells() {
    // /reserved-memory is 2+1 cells there.
    check_host_edit(
        "synthetic",
        SYNTHETIC,
        &[r(0x8_fc00_0000, 0x400_0000)],
        (2, 1),
    );
    let p = Platform::parse(SYNTHETIC).unwrap();
    let too_big = [r(0x8_0000_0000, 0x1_0000_0000)];
    let mut out = vec![0u8; 8192];
    assert_eq!(
        build_host_dtb(SYNTHETIC, &mut out, &HostDtbEdits::for_host(&p, &too_big)),
        Err(DtbError::BadEdit(
            "carve-out does not fit /reserved-memory cells"
        ))
    );
}

#[test]
fn host_edits_create_chosen_and_reserved_memory() {
    let orig = minimal();
    let carve = [r(0x1f00_0000, 0x100_0000)];
    let edits = HostDtbEdits {
        carve_outs: &carve,
        bootargs: Some("console=ttyS0"),
        initrd: Some(r(0x1800_0000, 0x1234)),
        disable_smmus: true,
        drop_modules: false,
        disable_nodes: &[],
        refuse_spin_table: None,
    };
    let mut out = vec![0u8; 1024];
    let n = build_host_dtb(&orig, &mut out, &edits).unwrap();
    let (nodes, props) = flatten(&out[..n]);
    assert_eq!(
        nodes,
        [
            "/",
            "/memory@10000000",
            "/uart@1000",
            "/reserved-memory",
            "/reserved-memory/warden@1f000000",
            "/chosen"
        ]
    );
    let get = |p: &str, n: &str| props[&(p.to_string(), n.to_string())].clone();
    // The root's 1+1 cells, so that Linux honours the node.
    assert_eq!(get("/reserved-memory", "#address-cells"), cells(&[1]));
    assert_eq!(get("/reserved-memory", "#size-cells"), cells(&[1]));
    assert_eq!(
        get("/reserved-memory/warden@1f000000", "reg"),
        cells(&[0x1f00_0000, 0x100_0000])
    );
    assert_eq!(get("/chosen", "bootargs"), s("console=ttyS0"));
    assert_eq!(get("/chosen", "linux,initrd-start"), u64be(0x1800_0000));
    assert_eq!(get("/chosen", "linux,initrd-end"), u64be(0x1800_1234));
    let p = Platform::parse(&out[..n]).unwrap();
    assert_eq!(p.bootargs.as_deref(), Some("console=ttyS0"));
    let _ = dtc_warnings("minimal-edited", &out[..n]);

    // A carve-out above 4 GiB cannot be described with 1 address cell.
    let high = [r(0x1_0000_0000, 0x1000)];
    assert_eq!(
        build_host_dtb(
            &orig,
            &mut out,
            &HostDtbEdits {
                carve_outs: &high,
                ..edits
            }
        ),
        Err(DtbError::BadEdit(
            "carve-out does not fit /reserved-memory cells"
        ))
    );
}

#[test]
fn host_edit_options() {
    let p = Platform::parse(GICV3).unwrap();
    let mut out = vec![0u8; 16384];
    // No edits at all: same content (NOPs dropped, layout normalised).
    let n = build_host_dtb(GICV3, &mut out, &HostDtbEdits::default()).unwrap();
    assert_eq!(flatten(&out[..n]), flatten(GICV3));
    // Same size: QEMU (libfdt) starts the reservation map at 48 rather than 40 and
    // leaves stale bytes in property padding, otherwise the layout is the same.
    assert_eq!(n, GICV3.len() - 8);
    assert!(out[..4] == GICV3[..4] && out[28..32] == GICV3[28..32]);

    // Dropping modules, keeping SMMUs.
    let edits = HostDtbEdits {
        drop_modules: true,
        disable_smmus: false,
        ..HostDtbEdits::for_host(&p, &[])
    };
    let n = build_host_dtb(GICV3, &mut out, &edits).unwrap();
    let q = Platform::parse(&out[..n]).unwrap();
    assert_eq!((q.kernel, q.ramdisk), (None, None));
    assert!(q.smmus[0].available);
    assert_eq!(q.bootargs.as_deref(), Some("console=ttyAMA0 quiet"));

    // Invalid edits.
    let bad = |e: HostDtbEdits<'_>| build_host_dtb(GICV3, &mut [0u8; 16384], &e);
    assert_eq!(
        bad(HostDtbEdits {
            carve_outs: &[r(0x5000_0000, 0)],
            ..Default::default()
        }),
        Err(DtbError::BadEdit("empty carve-out"))
    );
    assert_eq!(
        bad(HostDtbEdits {
            carve_outs: &[r(0x5000_0000, 0x1000), r(0x5000_0000, 0x2000)],
            ..Default::default()
        }),
        Err(DtbError::BadEdit("two carve-outs with the same base"))
    );
    assert_eq!(
        bad(HostDtbEdits {
            bootargs: Some("a\0b"),
            ..Default::default()
        }),
        Err(DtbError::BadEdit("bootargs contain NUL"))
    );
    assert_eq!(bad(HostDtbEdits::default()).map(|_| ()), Ok(()));
    assert_eq!(
        build_host_dtb(&GICV3[..100], &mut out, &HostDtbEdits::default()),
        Err(DtbError::Truncated)
    );
}

#[test]
fn output_buffer_too_small() {
    let p = Platform::parse(GICV3).unwrap();
    let carve = [r(0x7e00_0000, 0x200_0000)];
    let edits = HostDtbEdits::for_host(&p, &carve);
    let needed = host_dtb_size(GICV3, &edits).unwrap();
    assert!(needed > GICV3.len());
    let mut out = vec![0u8; needed];
    for len in [0, 1, 39, 40, 100, GICV3.len(), needed / 2, needed - 1] {
        assert_eq!(
            build_host_dtb(GICV3, &mut out[..len], &edits),
            Err(DtbError::NoSpace { needed }),
            "{len}"
        );
    }
    assert_eq!(build_host_dtb(GICV3, &mut out, &edits), Ok(needed));
    assert!(Platform::parse(&out).is_ok());
}
