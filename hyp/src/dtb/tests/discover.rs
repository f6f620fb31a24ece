//! [`Platform::parse`] on QEMU's DTBs, the synthetic board and hand-built blobs.

use super::builder::*;
use super::*;

#[test]
fn qemu_virt_gicv3() {
    let p = Platform::parse(GICV3).unwrap();
    let expected = Platform {
        dtb_size: GICV3.len(),
        boot_cpuid_phys: 0,
        ram: vec![r(0x4000_0000, 0x8000_0000)],
        reservations: vec![],
        console: qemu_console(),
        gic: qemu_gicv3(),
        psci: qemu_psci(),
        cpus: psci_cpus(4),
        kernel: Some(Module {
            range: r(0x5000_0000, 0x1000),
            bootargs: Some("console=ttyAMA0 quiet".to_string()),
        }),
        ramdisk: Some(Module {
            range: r(0x5800_0000, 0x2000),
            bootargs: None,
        }),
        bootargs: Some("warden.log=debug".to_string()),
        smmus: qemu_smmu(0x8007),
        pci_hosts: qemu_pci_host(),
        iommu_map: qemu_iommu_map(0x8007),
        iommus: vec![],
        max_mmio_end: QEMU_MMIO_END,
    };
    assert_eq!(p, expected);
    assert_eq!(p.dtb_size, 8699);
    assert_eq!(p.smmu_by_phandle(0x8007), Some(0));
    assert_eq!(p.smmu_by_phandle(0x8005), None);
    assert_eq!(p.max_phys_end(), QEMU_MMIO_END);
}

#[test]
fn qemu_virt_gicv2() {
    let p = Platform::parse(GICV2).unwrap();
    let expected = Platform {
        dtb_size: GICV2.len(),
        boot_cpuid_phys: 0,
        ram: vec![r(0x4000_0000, 0x4000_0000)],
        reservations: vec![],
        console: qemu_console(),
        gic: Some(Gic {
            version: GicVersion::V2,
            dist: r(0x800_0000, 0x1_0000),
            redists: vec![],
            cpu_if: Some(r(0x801_0000, 0x1_0000)),
            hyp_if: Some(r(0x803_0000, 0x1_0000)),
            vcpu_if: Some(r(0x804_0000, 0x1_0000)),
            maintenance_intid: Some(25),
            redist_stride: None,
            its: vec![],
        }),
        psci: qemu_psci(),
        cpus: psci_cpus(2),
        kernel: Some(Module {
            range: r(0x4800_0000, 0x1000),
            bootargs: Some("console=ttyAMA0,115200 earlycon".to_string()),
        }),
        ramdisk: None,
        bootargs: None,
        smmus: qemu_smmu(0x8005),
        pci_hosts: qemu_pci_host(),
        iommu_map: qemu_iommu_map(0x8005),
        iommus: vec![],
        max_mmio_end: QEMU_MMIO_END,
    };
    assert_eq!(p, expected);
}

#[test]
fn qemu_virt_big_ram() {
    let p = Platform::parse(BIGRAM).unwrap();
    let expected = Platform {
        dtb_size: BIGRAM.len(),
        boot_cpuid_phys: 0,
        ram: vec![r(0x4000_0000, 0x1_4000_0000)],
        reservations: vec![],
        console: qemu_console(),
        gic: qemu_gicv3(),
        psci: qemu_psci(),
        cpus: psci_cpus(8),
        kernel: Some(Module {
            range: r(0x6000_0000, 0x1000),
            bootargs: Some("console=ttyAMA0 root=/dev/vda rw".to_string()),
        }),
        ramdisk: Some(Module {
            range: r(0x7000_0000, 0x2000),
            bootargs: None,
        }),
        bootargs: Some("warden.log=info warden.pool=64M warden.btm=off".to_string()),
        smmus: qemu_smmu(0x800b),
        pci_hosts: qemu_pci_host(),
        iommu_map: qemu_iommu_map(0x800b),
        iommus: vec![],
        max_mmio_end: QEMU_MMIO_END,
    };
    assert_eq!(p, expected);
    assert_eq!(p.ram[0].end(), 0x1_8000_0000);
}

fn synthetic_expected() -> Platform {
    Platform {
        dtb_size: SYNTHETIC.len(),
        boot_cpuid_phys: 0,
        ram: vec![
            r(0x8000_0000, 0x2000_0000),
            r(0xc000_0000, 0x2000_0000),
            r(0x8_8000_0000, 0x8000_0000),
        ],
        reservations: vec![
            Reservation {
                range: r(0x8000_0000, 0x10_0000),
                source: ReservationSource::MemReserve,
            },
            Reservation {
                range: r(0x8_8000_0000, 0x20_0000),
                source: ReservationSource::MemReserve,
            },
            Reservation {
                range: r(0x8100_0000, 0x100_0000),
                source: ReservationSource::ReservedMemory { no_map: true },
            },
            Reservation {
                range: r(0xde00_0000, 0x80_0000),
                source: ReservationSource::ReservedMemory { no_map: false },
            },
        ],
        console: Some(Console {
            kind: ConsoleKind::Ns16550 {
                reg_shift: 2,
                reg_io_width: 4,
            },
            regs: r(0xf200_2000, 0x100),
            options: Some("115200n8".to_string()),
        }),
        gic: Some(Gic {
            version: GicVersion::V3,
            dist: r(0xf100_0000, 0x1_0000),
            redists: vec![r(0xf110_0000, 0x10_0000), r(0xf130_0000, 0x10_0000)],
            cpu_if: Some(r(0xf140_0000, 0x2000)),
            hyp_if: Some(r(0xf141_0000, 0x2000)),
            vcpu_if: Some(r(0xf142_0000, 0x2000)),
            maintenance_intid: Some(25),
            redist_stride: None,
            its: vec![],
        }),
        psci: Some(Psci {
            version: PsciVersion::V0_2,
            method: PsciMethod::Hvc,
            cpu_on: None,
            cpu_off: None,
            cpu_suspend: None,
            migrate: None,
        }),
        cpus: vec![
            Cpu {
                mpidr: 0,
                enable_method: EnableMethod::Psci,
                release_addr: None,
                available: true,
            },
            Cpu {
                mpidr: 1,
                enable_method: EnableMethod::Psci,
                release_addr: None,
                available: true,
            },
            Cpu {
                mpidr: 0x100,
                enable_method: EnableMethod::Psci,
                release_addr: None,
                available: false,
            },
            Cpu {
                mpidr: 0x1_0000_0000,
                enable_method: EnableMethod::SpinTable,
                release_addr: Some(0x8000_fff8),
                available: true,
            },
        ],
        kernel: Some(Module {
            range: r(0xc800_0000, 0x180_0000),
            bootargs: Some("console=ttyS2,115200 root=/dev/mmcblk0p2 rootwait".to_string()),
        }),
        ramdisk: Some(Module {
            range: r(0xca00_0000, 0x40_0000),
            bootargs: None,
        }),
        bootargs: Some("warden.log=trace warden.pool=32M warden.btm=on".to_string()),
        smmus: vec![
            Smmu {
                regs: r(0x2b40_0000, 0x2_0000),
                phandle: Some(0x10),
                available: true,
                dma_coherent: true,
            },
            Smmu {
                regs: r(0x2b50_0000, 0x2_0000),
                phandle: Some(0x11),
                available: false,
                dma_coherent: false,
            },
        ],
        pci_hosts: vec![PciHost {
            ecam: Some(r(0x30_0000_0000, 0x1000_0000)),
            domain: Some(1),
            bus_range: Some((0, 0xff)),
            iommu_map_mask: Some(0xffff),
            mem32: Some(PciWindow {
                cpu_addr: 0x4000_0000,
                pci_addr: 0x4000_0000,
                size: 0x2000_0000,
            }),
        }],
        iommu_map: vec![
            IommuMapEntry {
                host: 0,
                rid_base: 0,
                iommu: 0x10,
                sid_base: 0,
                len: 0x8000,
            },
            IommuMapEntry {
                host: 0,
                rid_base: 0x8000,
                iommu: 0x11,
                sid_base: 0x1_0000,
                len: 0x8000,
            },
        ],
        iommus: vec![
            DeviceStream {
                device: Some(PhysAddr(0xf200_6000)),
                iommu: 0x10,
                sid: 0x20,
            },
            DeviceStream {
                device: Some(PhysAddr(0xf200_6000)),
                iommu: 0x10,
                sid: 0x21,
            },
        ],
        // The PCIe 64-bit window 0x40_0000_0000 + 0x40_0000_0000.
        max_mmio_end: 0x80_0000_0000,
    }
}

#[test]
fn synthetic_board() {
    let p = Platform::parse(SYNTHETIC).unwrap();
    assert_eq!(p, synthetic_expected());
    assert_eq!(p.max_phys_end(), 0x80_0000_0000);
    assert_eq!(p.smmu_by_phandle(0x11), Some(1));
}

#[test]
fn blob_longer_than_totalsize_and_padded_blob() {
    // A buffer longer than the blob (e.g. a whole mapped page).
    let mut long = GICV3.to_vec();
    long.extend_from_slice(&[0xa5; 4096]);
    assert_eq!(
        Platform::parse(&long).unwrap(),
        Platform::parse(GICV3).unwrap()
    );
    // QEMU's own layout: totalsize 1 MiB with free space after the strings.
    let mut padded = GICV3.to_vec();
    padded.resize(1 << 20, 0);
    padded[4..8].copy_from_slice(&(1u32 << 20).to_be_bytes());
    let p = Platform::parse(&padded).unwrap();
    assert_eq!(p.dtb_size, 1 << 20);
    assert_eq!(p.kernel, Platform::parse(GICV3).unwrap().kernel);
}

#[test]
fn minimal_board_without_optional_nodes() {
    let p = Platform::parse(&minimal()).unwrap();
    assert_eq!(p.ram, [r(0x1000_0000, 0x1000_0000)]);
    assert_eq!(p.console, None);
    assert_eq!(
        (p.gic.as_ref(), p.psci, p.kernel.as_ref()),
        (None, None, None)
    );
    assert!(p.cpus.is_empty() && p.smmus.is_empty() && p.reservations.is_empty());
    assert_eq!(p.max_mmio_end, 0x1100);
}

#[test]
fn stdout_path_forms() {
    let board = |stdout: &str| {
        let mut b = Builder::default();
        b.begin("")
            .begin("aliases")
            .prop("serial1", &s("/bus@0"))
            .prop("console", &s("/bus@0/serial@200"))
            .end()
            .begin("chosen")
            .prop("stdout-path", &s(stdout))
            .end()
            .begin("bus@0")
            .prop("compatible", &s("simple-bus"))
            .prop("#address-cells", &cells(&[1]))
            .prop("#size-cells", &cells(&[1]))
            .prop("ranges", &cells(&[0x0, 0x0, 0x1c00_0000, 0x1000]))
            .begin("serial@100")
            .prop("compatible", &s("ns16550"))
            .prop("reg", &cells(&[0x100, 0x20]))
            .end()
            .begin("serial@200")
            .prop("compatible", &s("arm,pl011"))
            .prop("reg", &cells(&[0x200, 0x20]))
            .end()
            .end()
            .end();
        Platform::parse(&b.finish()).unwrap().console
    };
    let uart0 = |options: Option<&str>| {
        Some(Console {
            kind: ConsoleKind::Ns16550 {
                reg_shift: 0,
                reg_io_width: 1,
            },
            regs: r(0x1c00_0100, 0x20),
            options: options.map(str::to_string),
        })
    };
    let pl011 = |options: Option<&str>| {
        Some(Console {
            kind: ConsoleKind::Pl011,
            regs: r(0x1c00_0200, 0x20),
            options: options.map(str::to_string),
        })
    };
    assert_eq!(board("/bus@0/serial@100"), uart0(None));
    assert_eq!(board("/bus@0/serial@100:9600n8"), uart0(Some("9600n8")));
    assert_eq!(
        board("/bus/serial@200"),
        pl011(None),
        "component without unit address"
    );
    assert_eq!(board("console"), pl011(None));
    assert_eq!(board("console:115200"), pl011(Some("115200")));
    assert_eq!(
        board("serial1/serial@100:38400"),
        uart0(Some("38400")),
        "alias + path"
    );
    assert_eq!(board("nosuchalias"), None);
    assert_eq!(board("/bus@0/serial@300"), None);
    assert_eq!(board("/bus@0"), None, "a node without reg is no console");
}

#[test]
fn names_longer_than_31_characters_are_accepted() {
    let long_prop = "snps,dis-u2-freeclk-exists-quirk";
    assert_eq!(long_prop.len(), 32);
    let mut b = Builder::default();
    b.begin("")
        .begin("memory@0")
        .prop("device_type", &s("memory"))
        .prop("reg", &cells(&[0, 0, 0x1000_0000]))
        .end()
        .begin("usb-controller-with-a-very-long-node-name@fe800000")
        .prop(long_prop, &[])
        .prop("reg", &cells(&[0, 0xfe80_0000, 0x10_0000]))
        .end()
        .end();
    let blob = b.finish();
    let p = Platform::parse(&blob).unwrap();
    assert_eq!(p.ram, [r(0, 0x1000_0000)]);
    assert_eq!(p.max_mmio_end, 0xfe90_0000);
    let mut out = vec![0; 4096];
    let n = build_host_dtb(&blob, &mut out, &HostDtbEdits::default()).unwrap();
    assert_eq!(
        Platform::parse(&out[..n]).unwrap(),
        Platform { dtb_size: n, ..p }
    );
}

#[test]
fn node_without_cells_inherits_from_parent() {
    // /chosen without cell sizes under a 1+1 root: modules use 1+1 (as Linux).
    let mut b = Builder::default();
    b.begin("")
        .prop("#address-cells", &cells(&[1]))
        .prop("#size-cells", &cells(&[1]))
        .begin("chosen")
        .begin("module@2000000")
        .prop("compatible", &s("multiboot,kernel"))
        .prop("reg", &cells(&[0x200_0000, 0x4000]))
        .end()
        .end()
        .end();
    let p = Platform::parse(&b.finish()).unwrap();
    assert_eq!(p.kernel.unwrap().range, r(0x200_0000, 0x4000));
}

#[test]
fn pci_mem32_window() {
    // A host bridge behind a bus that translates (child 0 -> CPU 0x8_0000_0000), with
    // an I/O window, a prefetchable 32-bit window, a 32-bit window the bus cannot
    // translate and one ending above 4 GiB on the PCI side before the usable one.
    let host = |ranges: &[u32], address_cells: u32| {
        let mut b = Builder::default();
        b.begin("")
            .prop("#address-cells", &cells(&[2]))
            .prop("#size-cells", &cells(&[2]))
            .begin("soc")
            .prop("#address-cells", &cells(&[1]))
            .prop("#size-cells", &cells(&[1]))
            .prop("ranges", &cells(&[0x0, 0x8, 0x0, 0x8000_0000]))
            .begin("smmu@1000")
            .prop("compatible", &s("arm,smmu-v3"))
            .prop("reg", &cells(&[0x1000, 0x1000]))
            .prop("#iommu-cells", &cells(&[1]))
            .prop("phandle", &cells(&[7]))
            .end()
            .begin("pcie@10000000")
            .prop("compatible", &s("pci-host-ecam-generic"))
            .prop("#address-cells", &cells(&[address_cells]))
            .prop("#size-cells", &cells(&[2]))
            .prop("reg", &cells(&[0x1000_0000, 0x100_0000]))
            .prop("ranges", &cells(ranges))
            .prop("iommu-map", &cells(&[0, 7, 0, 0x1_0000]))
            .end()
            .end()
            .end();
        let p = Platform::parse(&b.finish()).unwrap();
        assert_eq!(p.pci_hosts.len(), 1);
        assert_eq!(p.pci_hosts[0].ecam, Some(r(0x8_1000_0000, 0x100_0000)));
        p.pci_hosts[0].mem32
    };
    let io = [0x0100_0000, 0, 0, 0x2000_0000, 0, 0x1_0000];
    let pref = [0x4200_0000, 0, 0x3000_0000, 0x3000_0000, 0, 0x100_0000];
    let untranslatable = [0x0200_0000, 0, 0x5000_0000, 0x9000_0000, 0, 0x100_0000];
    let past_4g = [0x0200_0000, 0, 0xff00_0000, 0x4000_0000, 0, 0x200_0000];
    let good = [0x0200_0000, 0, 0x4000_0000, 0x5000_0000, 0, 0x800_0000];
    let mem64 = [0x4300_0000, 0x1, 0x0, 0x6000_0000, 0, 0x1000_0000];
    let all: Vec<u32> = [io, pref, untranslatable, past_4g, good, mem64].concat();
    assert_eq!(
        host(&all, 3),
        Some(PciWindow {
            cpu_addr: 0x8_5000_0000,
            pci_addr: 0x4000_0000,
            size: 0x800_0000,
        })
    );
    // No usable window: only I/O, prefetchable and 64-bit ones.
    assert_eq!(host(&[io, pref, mem64].concat(), 3), None);
    // Not a PCI address space (2 address cells): no window.
    assert_eq!(host(&[0x0, 0x4000_0000, 0x5000_0000, 0, 0x1000], 2), None);
    // The QEMU blobs and the synthetic board.
    for (name, blob) in ALL {
        let p = Platform::parse(blob).unwrap();
        let w = p.pci_hosts[0].mem32.unwrap_or_else(|| panic!("{name}"));
        assert_eq!(w.cpu_addr, w.pci_addr, "{name}: identity window");
    }
}

#[test]
fn structural_errors() {
    assert_eq!(Platform::parse(&[]), Err(DtbError::Truncated));
    assert_eq!(Platform::parse(&GICV3[..39]), Err(DtbError::Truncated));
    assert_eq!(
        Platform::parse(&GICV3[..GICV3.len() - 1]),
        Err(DtbError::Truncated)
    );
    let patched = |off: usize, v: u32| {
        let mut b = GICV3.to_vec();
        b[off..off + 4].copy_from_slice(&v.to_be_bytes());
        Platform::parse(&b)
    };
    assert_eq!(patched(0, 0xedfe_0dd0), Err(DtbError::BadMagic));
    assert_eq!(patched(20, 16), Err(DtbError::UnsupportedVersion(16)));
    assert_eq!(patched(24, 18), Err(DtbError::UnsupportedVersion(17)));
    assert!(matches!(patched(4, 20), Err(DtbError::Malformed(_))));
    assert!(matches!(patched(8, 0x10_0000), Err(DtbError::Malformed(_))));
    assert!(matches!(patched(8, 0x42), Err(DtbError::Malformed(_))));
    assert!(matches!(
        patched(12, 0xffff_fff0),
        Err(DtbError::Malformed(_))
    ));
    assert!(matches!(patched(16, 0x34), Err(DtbError::Malformed(_))));
    assert!(matches!(
        patched(32, 0xffff_ffff),
        Err(DtbError::Malformed(_))
    ));
    assert!(matches!(patched(36, 0x10), Err(DtbError::Malformed(_))));

    // Missing FDT_END, unbalanced nodes, property after child.
    let mut b = Builder::default();
    b.begin("").begin("a").end();
    assert!(matches!(
        Platform::parse(&b.finish()),
        Err(DtbError::Malformed(_))
    ));
    let mut b = Builder::default();
    b.begin("").end().end();
    assert!(matches!(
        Platform::parse(&b.finish()),
        Err(DtbError::Malformed(_))
    ));
    let mut b = Builder::default();
    b.begin("").begin("a").end().prop("late", &[]).end();
    assert!(matches!(
        Platform::parse(&b.finish()),
        Err(DtbError::Malformed(_))
    ));

    // Nesting.
    let nested = |depth: usize| {
        let mut b = Builder::default();
        b.begin("");
        for _ in 1..depth {
            b.begin("n");
        }
        for _ in 0..depth {
            b.end();
        }
        b.finish()
    };
    assert!(Platform::parse(&nested(MAX_DEPTH)).is_ok());
    assert_eq!(
        Platform::parse(&nested(MAX_DEPTH + 1)),
        Err(DtbError::TooDeep)
    );
    assert_eq!(Platform::parse(&nested(10_000)), Err(DtbError::TooDeep));
}

#[test]
fn bad_properties() {
    let with_root_prop = |name: &str, value: &[u8]| {
        let mut b = Builder::default();
        b.begin("")
            .prop(name, value)
            .begin("memory@0")
            .prop("device_type", &s("memory"))
            .prop("reg", &cells(&[0, 0, 0x1000]))
            .end()
            .end();
        Platform::parse(&b.finish())
    };
    assert!(with_root_prop("model", &s("ok")).is_ok());
    assert_eq!(
        with_root_prop("#address-cells", &cells(&[5])),
        Err(DtbError::BadProperty("#address-cells"))
    );
    assert_eq!(
        with_root_prop("#size-cells", &[0, 1]),
        Err(DtbError::BadProperty("#size-cells"))
    );
    assert_eq!(
        with_root_prop("#size-cells", &cells(&[2])),
        Err(DtbError::BadProperty("memory reg"))
    );
    let mut b = Builder::default();
    b.begin("")
        .begin("psci")
        .prop("compatible", &s("arm,psci-1.0"))
        .prop("method", &s("svc"))
        .end()
        .end();
    assert_eq!(
        Platform::parse(&b.finish()),
        Err(DtbError::BadProperty("psci method"))
    );
    let mut b = Builder::default();
    b.begin("")
        .begin("iommu@1000")
        .prop("compatible", &s("arm,smmu-v3"))
        .end()
        .end();
    assert_eq!(
        Platform::parse(&b.finish()),
        Err(DtbError::BadProperty("smmu reg"))
    );
}

#[test]
fn every_its_is_found_wherever_its_node_is() {
    let its = PhysRange::new(0x808_0000, 0x2_0000);
    for first in [false, true] {
        let p = Platform::parse(&its_board(first, true)).unwrap();
        let g = p.gic.unwrap();
        assert_eq!(g.version, GicVersion::V3);
        assert_eq!(g.its, vec![its], "ITS node first: {first}");
    }
    // An ITS Warden cannot emulate (no GICv3 to go with it) is not silently left to
    // the host.
    for first in [false, true] {
        assert!(Platform::parse(&its_board(first, false)).is_err());
    }
}

#[test]
fn a_second_gicv3_is_refused() {
    let gic = |b: &mut Builder, name: &str, base: u32| {
        b.begin(name)
            .prop("compatible", &s("arm,gic-v3"))
            .prop("reg", &cells(&[base, 0x1_0000, base + 0xa_0000, 0x2_0000]))
            .end();
    };
    let board = |second: Option<&str>| {
        let mut b = Builder::default();
        b.begin("")
            .prop("#address-cells", &cells(&[1]))
            .prop("#size-cells", &cells(&[1]))
            .begin("memory@40000000")
            .prop("device_type", &s("memory"))
            .prop("reg", &cells(&[0x4000_0000, 0x1000_0000]))
            .end();
        gic(&mut b, "intc@8000000", 0x800_0000);
        if let Some(status) = second {
            b.begin("intc@9000000")
                .prop("compatible", &s("arm,gic-v3"))
                .prop("status", &s(status))
                .prop("reg", &cells(&[0x900_0000, 0x1_0000, 0x90a_0000, 0x2_0000]))
                .end();
        }
        b.end();
        b.finish()
    };
    assert!(Platform::parse(&board(None)).is_ok());
    assert!(Platform::parse(&board(Some("disabled"))).is_ok());
    assert_eq!(
        Platform::parse(&board(Some("okay"))).map(|_| ()),
        Err(DtbError::BadProperty("a second arm,gic-v3"))
    );
}

#[test]
fn banner_words() {
    let p = Platform::parse(GICV3).unwrap();
    assert_eq!(p.psci.unwrap().to_string(), "PSCI 1.0 over SMC");
    assert_eq!(p.gic.unwrap().version.to_string(), "GICv3");
    let p = Platform::parse(GICV2).unwrap();
    assert_eq!(p.gic.unwrap().version.to_string(), "GICv2");
    assert_eq!(PsciVersion::V0_1.to_string(), "0.1");
    assert_eq!(PsciVersion::V0_2.to_string(), "0.2");
    assert_eq!(PsciMethod::Hvc.to_string(), "HVC");
}
