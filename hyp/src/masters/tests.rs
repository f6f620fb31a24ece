//! Host tests of the DMA-master decisions: the checked-in QEMU DTBs and synthetic ones,
//! each node's decision, the host DTB edits and the host stage-2 holes that follow.

use std::string::ToString;
use std::vec;
use std::vec::Vec;

use super::*;
use crate::dtb::{HostDtbEdits, build_host_dtb, device_nodes};

const GICV3: &[u8] = include_bytes!("../../testdata/virt-gicv3.dtb");
const GICV2: &[u8] = include_bytes!("../../testdata/virt-gicv2.dtb");
const BIGRAM: &[u8] = include_bytes!("../../testdata/virt-bigram.dtb");
const SYNTHETIC: &[u8] = include_bytes!("../../testdata/synthetic.dtb");

/// QEMU virt's SMMUv3 frame.
const QEMU_SMMU: u64 = 0x905_0000;

fn r(base: u64, size: u64) -> PhysRange {
    PhysRange::new(base, size)
}

fn decide_blob(blob: &[u8], live: &[u64], pass: &[&str]) -> Masters {
    // The GIC nodes Warden emulates, as the boot path finds them.
    let plat = crate::dtb::Platform::parse(blob).ok();
    let gic = emulated_gic(plat.as_ref().and_then(|p| p.gic.as_ref())).unwrap();
    decide(device_nodes(blob).unwrap(), live, &gic, pass).unwrap()
}

fn table(m: &Masters) -> Vec<(String, Decision)> {
    m.verdicts
        .iter()
        .map(|v| (m.node(v).path.clone(), v.decision))
        .collect()
}

fn virtio_paths() -> Vec<String> {
    (0..32)
        .map(|i| format!("/virtio_mmio@{:x}", 0xa00_0000 + i * 0x200))
        .collect()
}

/// Every decision on QEMU virt, in DTB order, for the GIC nodes given.
fn qemu_expected(gic: &[(&str, Decision)], pcie: Decision) -> Vec<(String, Decision)> {
    use Decision::*;
    let mut e = vec![("/fw-cfg@9020000".to_string(), Hidden)];
    e.extend(virtio_paths().into_iter().map(|p| (p, Hidden)));
    e.push(("/pl061@9030000".into(), NoDma));
    e.push(("/smmuv3@9050000".into(), Warden));
    e.push(("/pcie@10000000".into(), pcie));
    e.push(("/pl031@9010000".into(), NoDma));
    e.push(("/pl011@9000000".into(), NoDma));
    e.extend(gic.iter().map(|(p, d)| (p.to_string(), *d)));
    e.push(("/flash@0".into(), NoDma));
    e
}

const V3_GIC: [(&str, Decision); 2] = [
    ("/intc@8000000", Decision::Emulated),
    ("/intc@8000000/its@8080000", Decision::Emulated),
];
const V2_GIC: [(&str, Decision); 2] = [
    ("/intc@8000000", Decision::NoDma),
    ("/intc@8000000/v2m@8020000", Decision::NoDma),
];

#[test]
fn qemu_virt_every_node() {
    for (name, blob, gic) in [
        ("virt-gicv3", GICV3, &V3_GIC),
        ("virt-bigram", BIGRAM, &V3_GIC),
        ("virt-gicv2", GICV2, &V2_GIC),
    ] {
        let m = decide_blob(blob, &[QEMU_SMMU], &[]);
        assert_eq!(
            table(&m),
            qemu_expected(gic, Decision::Translated),
            "{name}"
        );
        assert!(m.notes.is_empty(), "{name}: {:?}", m.notes);
        let fw = m.by_path("/fw-cfg@9020000").unwrap();
        assert!(fw.why.contains("fw_cfg"), "{name}");
        assert_eq!(
            m.by_path("/smmuv3@9050000").unwrap().why,
            "SMMUv3 driven by Warden"
        );
    }
}

#[test]
fn qemu_virt_host_stage2_ranges() {
    let m = decide_blob(GICV3, &[QEMU_SMMU], &[]);
    let mmio = m.host_mmio().unwrap();
    let mapped = |a: u64| mmio.iter().any(|x| x.contains(a));
    // Reachable: flash, GIC (dist, ITS, redistributors), UART, RTC, GPIO, ECAM and the
    // PCIe windows.
    for a in [
        0,
        0x7ff_f000,
        0x800_0000,
        0x808_0000,
        0x80a_0000,
        0x8ff_f000,
        0x900_0000,
        0x901_0000,
        0x903_0000,
        0x1000_0000,
        0x3eff_0000,
        0x40_1000_0000,
        0x80_0000_0000,
        0xff_ffff_f000,
    ] {
        assert!(mapped(a), "{a:#x} not mapped: {mmio:x?}");
    }
    // Hidden: fw_cfg, every virtio-mmio transport, the SMMU, undescribed space (the
    // empty platform bus window, the gap before RAM).
    for a in [
        0x902_0000,
        0xa00_0000,
        0xa00_3e00,
        0x905_0000,
        0x906_f000,
        0xc00_0000,
        0x3f00_0000,
        0x1_0000_0000,
    ] {
        assert!(!mapped(a), "{a:#x} mapped: {mmio:x?}");
    }
    // Sorted, disjoint, page aligned.
    for w in mmio.windows(2) {
        assert!(w[0].end() < w[1].base.get() || w[0].end() == w[1].base.get());
    }
    assert!(
        mmio.iter()
            .all(|x| x.base.get() % PAGE == 0 && x.size % PAGE == 0)
    );
}

#[test]
fn qemu_virt_smmu_not_live() {
    // The SMMU failed to probe: the PCIe bridge behind it is hidden with its ECAM and
    // windows.
    let m = decide_blob(GICV3, &[], &[]);
    assert_eq!(table(&m), qemu_expected(&V3_GIC, Decision::Hidden));
    assert!(
        m.by_path("/smmuv3@9050000")
            .unwrap()
            .why
            .contains("could not take over")
    );
    let pcie = m.by_path("/pcie@10000000").unwrap();
    assert!(pcie.why.contains("iommu-map"), "{}", pcie.why);
    let mmio = m.host_mmio().unwrap();
    for a in [0x40_1000_0000, 0x1000_0000, 0x3eff_0000, 0x80_0000_0000] {
        assert!(!mmio.iter().any(|x| x.contains(a)), "{a:#x}");
    }
}

#[test]
fn synthetic_board_every_node() {
    use Decision::*;
    let smmu0 = 0x2b40_0000;
    let m = decide_blob(SYNTHETIC, &[smmu0], &[]);
    assert_eq!(
        table(&m),
        [
            ("/soc@f0000000/interrupt-controller@1000000", Emulated),
            ("/soc@f0000000/apb@2000000/serial@0", NoDma),
            ("/soc@f0000000/apb@2000000/serial@2000", NoDma),
            ("/soc@f0000000/apb@2000000/i2c@4000", Hidden),
            ("/soc@f0000000/apb@2000000/dma@6000", Translated),
            ("/iommu@2b400000", Warden),
            ("/iommu@2b500000", Warden),
            ("/pcie@3000000000", Hidden),
        ]
        .map(|(p, d)| (p.to_string(), d))
    );
    // Nested simple-buses: addresses are CPU physical.
    let uart = m.by_path("/soc@f0000000/apb@2000000/serial@2000").unwrap();
    assert_eq!(m.node(uart).regs, [r(0xf200_2000, 0x100)]);
    let i2c = m.by_path("/soc@f0000000/apb@2000000/i2c@4000").unwrap();
    assert_eq!(i2c.why, "not known to be DMA-incapable and behind no SMMU");
    assert!(
        m.by_path("/iommu@2b500000")
            .unwrap()
            .why
            .contains("disabled")
    );
    // The bridge's iommu-map sends RIDs 0x8000.. to the disabled SMMU.
    let pcie = m.by_path("/pcie@3000000000").unwrap();
    assert!(pcie.why.contains("requester IDs"), "{}", pcie.why);
    let mmio = m.host_mmio().unwrap();
    let mapped = |a: u64| mmio.iter().any(|x| x.contains(a));
    assert!(mapped(0xf200_2000) && mapped(0xf100_0000) && mapped(0xf200_6000));
    assert!(!mapped(0xf200_4000), "i2c");
    assert!(!mapped(0x30_0000_0000) && !mapped(0x4000_0000) && !mapped(0x2f00_0000));
    assert!(!mapped(0x2b40_0000) && !mapped(0x2b50_0000));
    // Not CPU-addressable (outside the soc window; below the i2c bus): no decision.
    assert!(
        m.verdicts
            .iter()
            .all(|v| !m.node(v).path.contains("orphan"))
    );
    assert!(
        m.verdicts
            .iter()
            .all(|v| !m.node(v).path.contains("eeprom"))
    );
}

// --- Hand-made DTBs ----------------------------------------------------------------

#[derive(Default)]
struct Builder {
    structs: Vec<u8>,
    strings: Vec<u8>,
}

impl Builder {
    fn pad(&mut self) {
        while !self.structs.len().is_multiple_of(4) {
            self.structs.push(0);
        }
    }

    fn begin(&mut self, name: &str) -> &mut Self {
        self.structs.extend_from_slice(&1u32.to_be_bytes());
        self.structs.extend_from_slice(name.as_bytes());
        self.structs.push(0);
        self.pad();
        self
    }

    fn prop(&mut self, name: &str, value: &[u8]) -> &mut Self {
        let off = self.strings.len() as u32;
        self.strings.extend_from_slice(name.as_bytes());
        self.strings.push(0);
        self.structs.extend_from_slice(&3u32.to_be_bytes());
        self.structs
            .extend_from_slice(&(value.len() as u32).to_be_bytes());
        self.structs.extend_from_slice(&off.to_be_bytes());
        self.structs.extend_from_slice(value);
        self.pad();
        self
    }

    fn cells(&mut self, name: &str, v: &[u32]) -> &mut Self {
        let b: Vec<u8> = v.iter().flat_map(|c| c.to_be_bytes()).collect();
        self.prop(name, &b)
    }

    fn str(&mut self, name: &str, v: &str) -> &mut Self {
        let mut b = v.as_bytes().to_vec();
        b.push(0);
        self.prop(name, &b)
    }

    /// A device node with a 2+2-cell `reg` and a compatible.
    fn dev(&mut self, name: &str, compat: &str, base: u64, size: u64) -> &mut Self {
        self.begin(name).str("compatible", compat).cells(
            "reg",
            &[
                (base >> 32) as u32,
                base as u32,
                (size >> 32) as u32,
                size as u32,
            ],
        )
    }

    fn end(&mut self) -> &mut Self {
        self.structs.extend_from_slice(&2u32.to_be_bytes());
        self
    }

    fn finish(&self) -> Vec<u8> {
        let mut structs = self.structs.clone();
        structs.extend_from_slice(&9u32.to_be_bytes());
        let off_struct = 40 + 16;
        let off_strings = off_struct + structs.len();
        let total = off_strings + self.strings.len();
        let mut out = Vec::new();
        for v in [
            0xd00d_feed,
            total as u32,
            off_struct as u32,
            off_strings as u32,
            40,
            17,
            16,
            0,
            self.strings.len() as u32,
            structs.len() as u32,
        ] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out.extend_from_slice(&[0; 16]);
        out.extend_from_slice(&structs);
        out.extend_from_slice(&self.strings);
        out
    }
}

/// The root with 2+2 cells, memory, a PL011, and one live SMMU (phandle 1) at
/// 0x2000_0000 plus whatever `body` adds.
fn board(body: impl FnOnce(&mut Builder)) -> Vec<u8> {
    let mut b = Builder::default();
    b.begin("")
        .cells("#address-cells", &[2])
        .cells("#size-cells", &[2])
        .begin("memory@40000000")
        .str("device_type", "memory")
        .cells("reg", &[0, 0x4000_0000, 0, 0x1000_0000])
        .end()
        .dev("uart@1000000", "arm,pl011", 0x100_0000, 0x1000)
        .end()
        .dev("smmu@20000000", "arm,smmu-v3", 0x2000_0000, 0x2_0000)
        .cells("#iommu-cells", &[1])
        .cells("phandle", &[1])
        .end();
    body(&mut b);
    b.end();
    b.finish()
}

const LIVE: u64 = 0x2000_0000;

/// A PCIe host bridge with ECAM at 0x30_0000_0000 (256 MiB), an I/O window at
/// 0x3eff_0000 and a 32-bit memory window at 0x1000_0000 (256 MiB).
fn pcie(b: &mut Builder, name: &str, extra: impl FnOnce(&mut Builder)) {
    b.dev(name, "pci-host-ecam-generic", 0x30_0000_0000, 0x1000_0000)
        .str("device_type", "pci")
        .cells("#address-cells", &[3])
        .cells("#size-cells", &[2])
        .cells("bus-range", &[0, 0xff])
        .cells(
            "ranges",
            &[
                0x0100_0000,
                0,
                0,
                0,
                0x3eff_0000,
                0,
                0x1_0000, //
                0x0200_0000,
                0,
                0x1000_0000,
                0,
                0x1000_0000,
                0,
                0x1000_0000,
            ],
        );
    extra(b);
    // A device below the bridge: covered by the bridge's decision.
    b.begin("ethernet@0,0")
        .cells("reg", &[0x1_0000, 0, 0, 0, 0])
        .end()
        .end();
}

#[test]
fn pcie_bridge_without_iommu_map() {
    let blob = board(|b| pcie(b, "pcie@3000000000", |_| {}));
    let m = decide_blob(&blob, &[LIVE], &[]);
    let v = m.by_path("/pcie@3000000000").unwrap();
    assert_eq!(v.decision, Decision::Hidden);
    assert!(v.why.contains("without iommu-map"), "{}", v.why);
    assert!(m.by_path("/pcie@3000000000/ethernet@0,0").is_none());
    let mmio = m.host_mmio().unwrap();
    for a in [
        0x30_0000_0000,
        0x30_0fff_f000,
        0x3eff_0000,
        0x1000_0000,
        0x1fff_f000,
    ] {
        assert!(
            !mmio.iter().any(|x| x.contains(a)),
            "{a:#x} mapped: {mmio:x?}"
        );
    }
    assert_eq!(mmio, [r(0x100_0000, 0x1000)]);

    // The same bridge with a complete iommu-map to the live SMMU: translated, ECAM and
    // windows mapped.
    let blob = board(|b| {
        pcie(b, "pcie@3000000000", |b| {
            b.cells("iommu-map", &[0, 1, 0, 0x1_0000]);
        })
    });
    let m = decide_blob(&blob, &[LIVE], &[]);
    assert_eq!(
        m.by_path("/pcie@3000000000").unwrap().decision,
        Decision::Translated
    );
    let mmio = m.host_mmio().unwrap();
    for a in [0x30_0000_0000, 0x3eff_0000, 0x1000_0000] {
        assert!(mmio.iter().any(|x| x.contains(a)), "{a:#x} not mapped");
    }

    // An iommu-map that covers only bus 0, a mask that folds every RID onto bus 0, and
    // an unknown phandle.
    for (map, mask, want) in [
        (vec![0, 1, 0, 0x100], None, Decision::Hidden),
        (vec![0, 1, 0, 0x100], Some(0xff), Decision::Translated),
        (vec![0, 7, 0, 0x1_0000], None, Decision::Hidden),
    ] {
        let blob = board(|b| {
            pcie(b, "pcie@3000000000", |b| {
                b.cells("iommu-map", &map);
                if let Some(m) = mask {
                    b.cells("iommu-map-mask", &[m]);
                }
            })
        });
        let m = decide_blob(&blob, &[LIVE], &[]);
        assert_eq!(
            m.by_path("/pcie@3000000000").unwrap().decision,
            want,
            "{map:x?} {mask:?}"
        );
    }
}

#[test]
fn disabled_smmu_and_devices_behind_it() {
    let blob = board(|b| {
        b.dev("smmu@21000000", "arm,smmu-v3", 0x2100_0000, 0x2_0000)
            .cells("#iommu-cells", &[1])
            .cells("phandle", &[2])
            .str("status", "disabled")
            .end()
            .dev("dma@3000000", "vendor,dma", 0x300_0000, 0x1000)
            .cells("iommus", &[2, 0x10])
            .end()
            .dev("dma@3001000", "vendor,dma", 0x300_1000, 0x1000)
            .cells("iommus", &[1, 0x11])
            .end()
            .dev("dma@3002000", "vendor,dma", 0x300_2000, 0x1000)
            .cells("iommus", &[1, 0x12, 2, 0x13])
            .end();
    });
    let m = decide_blob(&blob, &[LIVE], &[]);
    let d = |p: &str| m.by_path(p).unwrap().decision;
    assert_eq!(d("/smmu@21000000"), Decision::Warden);
    assert!(
        m.by_path("/smmu@21000000")
            .unwrap()
            .why
            .contains("disabled")
    );
    assert_eq!(d("/smmu@20000000"), Decision::Warden);
    assert_eq!(d("/dma@3000000"), Decision::Hidden);
    assert_eq!(d("/dma@3001000"), Decision::Translated);
    // One specifier on the disabled SMMU is enough to hide it.
    assert_eq!(d("/dma@3002000"), Decision::Hidden);
    let mmio = m.host_mmio().unwrap();
    assert!(mmio.iter().any(|x| x.contains(0x300_1000)));
    for a in [0x300_0000, 0x300_2000, 0x2000_0000, 0x2100_0000] {
        assert!(!mmio.iter().any(|x| x.contains(a)), "{a:#x}");
    }
}

#[test]
fn smmu_that_failed_to_probe() {
    let blob = board(|b| {
        b.dev("dma@3000000", "vendor,dma", 0x300_0000, 0x1000)
            .cells("iommus", &[1, 0x10])
            .end();
        pcie(b, "pcie@3000000000", |b| {
            b.cells("iommu-map", &[0, 1, 0, 0x1_0000]);
        });
    });
    // Live: everything behind it translated.
    let m = decide_blob(&blob, &[LIVE], &[]);
    assert_eq!(
        m.by_path("/dma@3000000").unwrap().decision,
        Decision::Translated
    );
    // Not live (probe failed): hidden, and the SMMU says why.
    let m = decide_blob(&blob, &[], &[]);
    let smmu = m.by_path("/smmu@20000000").unwrap();
    assert_eq!(smmu.decision, Decision::Warden);
    assert!(smmu.why.contains("could not take over"), "{}", smmu.why);
    assert_eq!(
        m.by_path("/dma@3000000").unwrap().decision,
        Decision::Hidden
    );
    assert_eq!(
        m.by_path("/pcie@3000000000").unwrap().decision,
        Decision::Hidden
    );
}

#[test]
fn pmcg_is_hidden() {
    let blob = board(|b| {
        b.dev("pmu@2a000000", "arm,smmu-v3-pmcg", 0x2a00_0000, 0x1000)
            .end()
            .dev("pmu@2a010000", "arm,mmu-600-pmcg", 0x2a01_0000, 0x1000)
            .end();
    });
    let m = decide_blob(&blob, &[LIVE], &[]);
    let v = m.by_path("/pmu@2a000000").unwrap();
    assert_eq!(v.decision, Decision::Hidden);
    assert!(v.why.contains("PMCG"));
    // Unknown compatible: default deny.
    assert_eq!(
        m.by_path("/pmu@2a010000").unwrap().decision,
        Decision::Hidden
    );
    assert_eq!(m.host_mmio().unwrap(), [r(0x100_0000, 0x1000)]);
}

#[test]
fn passthrough_override() {
    let blob = board(|b| {
        b.dev("virtio@a000000", "virtio,mmio", 0xa00_0000, 0x200)
            .end()
            .dev("virtio@a001000", "virtio,mmio", 0xa00_1000, 0x200)
            .end();
    });
    let m = decide_blob(
        &blob,
        &[LIVE],
        &[
            "/virtio@a000000/",
            "/nothing@0",
            "/smmu@20000000",
            "/uart@1000000",
        ],
    );
    let v = m.by_path("/virtio@a000000").unwrap();
    assert_eq!(v.decision, Decision::Passthrough);
    assert_eq!(
        m.by_path("/virtio@a001000").unwrap().decision,
        Decision::Hidden
    );
    assert_eq!(
        m.by_path("/smmu@20000000").unwrap().decision,
        Decision::Warden
    );
    assert_eq!(
        m.by_path("/uart@1000000").unwrap().decision,
        Decision::NoDma
    );
    let smmu = m
        .nodes
        .iter()
        .position(|n| n.path == "/smmu@20000000")
        .unwrap();
    let uart = m
        .nodes
        .iter()
        .position(|n| n.path == "/uart@1000000")
        .unwrap();
    assert_eq!(
        m.notes,
        [
            Note::PassthroughUnknown("/nothing@0".into()),
            Note::PassthroughRefused(smmu),
            Note::PassthroughNeedless(uart),
        ]
    );
    let line = m.describe(v).to_string();
    assert!(line.contains("UNPROTECTED"), "{line}");
    assert!(
        m.describe_note(&m.notes[0])
            .to_string()
            .contains("/nothing@0"),
        "{:?}",
        m.notes
    );
    let mmio = m.host_mmio().unwrap();
    assert_eq!(mmio, [r(0x100_0000, 0x1000), r(0xa00_0000, 0x1000)]);
    // The DTB keeps it enabled; the other transport is disabled.
    let hidden = m.hidden_offsets().unwrap();
    assert_eq!(hidden.len(), 1);
}

#[test]
fn nodes_under_a_simple_bus_and_shared_pages() {
    let blob = board(|b| {
        b.begin("soc")
            .str("compatible", "simple-bus")
            .cells("#address-cells", &[1])
            .cells("#size-cells", &[1])
            .cells("ranges", &[0, 0, 0x5000_0000, 0x10_0000])
            // A known UART sharing its page with an unknown device, which shares
            // another page with a GPIO block: all three hidden (transitively).
            .begin("serial@1000")
            .str("compatible", "ns16550a")
            .cells("reg", &[0x1000, 0x100])
            .end()
            .begin("thing@1800")
            .str("compatible", "vendor,thing")
            .cells("reg", &[0x1800, 0x100, 0x2000, 0x10])
            .end()
            .begin("gpio@2800")
            .str("compatible", "arm,pl061")
            .cells("reg", &[0x2800, 0x100])
            .end()
            // Alone in its page: stays reachable.
            .begin("rtc@4000")
            .str("compatible", "arm,pl031")
            .cells("reg", &[0x4000, 0x1000])
            .end()
            // The GICv3 ITS (emulated: see below) sharing a page with a hidden device:
            // stays emulated, loses the page.
            .begin("its@8000")
            .str("compatible", "arm,gic-v3-its")
            .cells("reg", &[0x8000, 0x2_0000])
            .end()
            .begin("virtio@27000")
            .str("compatible", "virtio,mmio")
            .cells("reg", &[0x2_7e00, 0x200])
            .end()
            .end();
    });
    // This board has no GIC for the ITS to belong to: Warden would not emulate it.
    let unchecked = decide_blob(&blob, &[LIVE], &[]);
    assert_eq!(
        unchecked.by_path("/soc/its@8000").unwrap().decision,
        Decision::Hidden
    );
    // As if the GIC code trapped it.
    let m = decide(device_nodes(&blob).unwrap(), &[LIVE], &[0x5000_8000], &[]).unwrap();
    let d = |p: &str| m.by_path(p).unwrap();
    assert_eq!(d("/soc/thing@1800").decision, Decision::Hidden);
    let thing = m
        .nodes
        .iter()
        .position(|n| n.path == "/soc/thing@1800")
        .unwrap();
    for p in ["/soc/serial@1000", "/soc/gpio@2800"] {
        assert_eq!(d(p).decision, Decision::Hidden, "{p}");
        assert_eq!(d(p).shares_with, Some(thing), "{p}");
        assert!(m.describe(d(p)).to_string().contains("/soc/thing@1800"));
    }
    assert_eq!(d("/soc/rtc@4000").decision, Decision::NoDma);
    assert_eq!(m.node(d("/soc/rtc@4000")).regs, [r(0x5000_4000, 0x1000)]);
    assert_eq!(d("/soc/its@8000").decision, Decision::Emulated);
    let its = m
        .nodes
        .iter()
        .position(|n| n.path == "/soc/its@8000")
        .unwrap();
    let virtio = m
        .nodes
        .iter()
        .position(|n| n.path == "/soc/virtio@27000")
        .unwrap();
    assert_eq!(
        m.notes,
        [Note::PageLost {
            node: its,
            hidden: virtio
        }]
    );
    assert_eq!(
        m.host_mmio().unwrap(),
        [
            r(0x100_0000, 0x1000),
            r(0x5000_4000, 0x1000),
            r(0x5000_8000, 0x1_f000)
        ]
    );
}

#[test]
fn host_dtb_disables_exactly_the_hidden_nodes() {
    for blob in [GICV3, GICV2, SYNTHETIC] {
        let live = [QEMU_SMMU, 0x2b40_0000];
        let m = decide_blob(blob, &live, &["/virtio_mmio@a000200"]);
        let hidden = m.hidden_offsets().unwrap();
        let edits = HostDtbEdits {
            disable_nodes: &hidden,
            ..HostDtbEdits::default()
        };
        let mut out = vec![0u8; blob.len() + 4096];
        let n = build_host_dtb(blob, &mut out, &edits).unwrap();
        let after = device_nodes(&out[..n]).unwrap();
        assert_eq!(after.len(), m.nodes.len());
        for (before, now) in m.nodes.iter().zip(&after) {
            assert_eq!(before.path, now.path);
            let v = m.verdicts.iter().find(|v| m.node(v).path == before.path);
            let want = match v.map(|v| v.decision) {
                Some(Decision::Hidden) => false,
                _ => before.available,
            };
            assert_eq!(now.available, want, "{}", before.path);
            assert_eq!(now.regs, before.regs, "{}", before.path);
        }
    }
    // On QEMU: fw_cfg and virtio-mmio disabled; the one passed through stays.
    let m = decide_blob(GICV3, &[QEMU_SMMU], &["/virtio_mmio@a000200"]);
    assert_eq!(m.count(Decision::Hidden), 32);
    assert_eq!(m.count(Decision::Passthrough), 1);
}

#[test]
fn every_line_names_path_ranges_and_decision() {
    let m = decide_blob(GICV3, &[QEMU_SMMU], &[]);
    let fw = m.by_path("/fw-cfg@9020000").unwrap();
    assert_eq!(
        m.describe(fw).to_string(),
        "/fw-cfg@9020000 [qemu,fw-cfg-mmio] 0x9020000..0x9020018: hidden (fw_cfg DMA \
         interface: writes anywhere, bypassing every SMMU)"
    );
    let pcie = m.by_path("/pcie@10000000").unwrap();
    let line = m.describe(pcie).to_string();
    assert!(line.starts_with("/pcie@10000000 [pci-host-ecam-generic] 0x4010000000..0x4020000000 "));
    assert!(
        line.ends_with(": translated (behind an SMMU Warden drives)"),
        "{line}"
    );
}

#[test]
fn page_rounding() {
    assert_eq!(page_round(r(0x1001, 0x10)), r(0x1000, 0x1000));
    assert_eq!(page_round(r(0x1000, 0x1000)), r(0x1000, 0x1000));
    assert_eq!(page_round(r(0xfff, 2)), r(0, 0x2000));
    assert_eq!(page_round(r(u64::MAX - 0x10, 0x10)).base.get(), !0xfff);
}

#[test]
fn smmu_not_driven_is_put_in_abort() {
    use crate::smmu::model::{DmaFault, ModelConfig, SmmuModel};
    let mem = crate::testutil::Arena::new(1 << 20);
    let model = SmmuModel::new(ModelConfig::default(), mem.ram());
    // Reset state: bypass while disabled.
    assert_eq!(
        model.dma(0x10, 0x4000_0000, true),
        Ok(crate::addr::PhysAddr(0x4000_0000))
    );
    crate::smmu::force_abort(&&model).unwrap();
    assert_eq!(model.dma(0x10, 0x4000_0000, true), Err(DmaFault::Abort));
    assert_eq!(model.reg(crate::smmu::regs::CR0), 0);
    assert_ne!(
        model.reg(crate::smmu::regs::GBPA) & crate::smmu::regs::GBPA::ABORT::SET.value,
        0
    );
}

#[test]
fn gic_nodes_warden_does_not_emulate_are_hidden() {
    // A GIC node is emulated only if the GIC code traps it. Every ITS is trapped,
    // wherever its node is (one before the GIC node included); a DTB with a second
    // available GICv3 is refused by the platform parser (its redistributors would not
    // be trapped), so no GIC node of it counts as emulated.
    let gicv3 = |b: &mut Builder, name: &str, base: u64| {
        b.begin(name)
            .str("compatible", "arm,gic-v3")
            .cells(
                "reg",
                &[
                    0,
                    base as u32,
                    0,
                    0x1_0000,
                    0,
                    base as u32 + 0xa_0000,
                    0,
                    0x2_0000,
                ],
            )
            .prop("interrupt-controller", &[])
            .cells("#interrupt-cells", &[3])
            .cells("#address-cells", &[2])
            .cells("#size-cells", &[2])
            .prop("ranges", &[]);
    };
    let one_gic = board(|b| {
        b.dev("its@7f00000", "arm,gic-v3-its", 0x7f0_0000, 0x2_0000)
            .prop("msi-controller", &[])
            .end();
        gicv3(b, "intc@8000000", 0x800_0000);
        b.dev("its@8080000", "arm,gic-v3-its", 0x808_0000, 0x2_0000)
            .prop("msi-controller", &[])
            .end()
            .end();
    });
    let m = decide_blob(&one_gic, &[LIVE], &[]);
    let d = |p: &str| m.by_path(p).unwrap().decision;
    assert_eq!(d("/intc@8000000"), Decision::Emulated);
    assert_eq!(d("/intc@8000000/its@8080000"), Decision::Emulated);
    assert_eq!(d("/its@7f00000"), Decision::Emulated);

    let two_gics = board(|b| {
        gicv3(b, "intc@8000000", 0x800_0000);
        b.dev("its@8080000", "arm,gic-v3-its", 0x808_0000, 0x2_0000)
            .prop("msi-controller", &[])
            .end()
            .end();
        gicv3(b, "intc@c000000", 0xc00_0000);
        b.dev("its@c080000", "arm,gic-v3-its", 0xc08_0000, 0x2_0000)
            .prop("msi-controller", &[])
            .end()
            .end();
    });
    assert!(crate::dtb::Platform::parse(&two_gics).is_err());
    let m = decide_blob(&two_gics, &[LIVE], &[]);
    for p in [
        "/intc@8000000",
        "/intc@8000000/its@8080000",
        "/intc@c000000",
        "/intc@c000000/its@c080000",
    ] {
        let v = m.by_path(p).unwrap();
        assert_eq!(v.decision, Decision::Hidden, "{p}");
        assert!(v.why.contains("does not emulate"), "{p}: {}", v.why);
    }
    let mmio = m.host_mmio().unwrap();
    for a in [0x800_0000u64, 0x808_0000, 0xc00_0000, 0xc0a_0000] {
        assert!(!mmio.iter().any(|r| r.contains(a)), "{a:#x}");
    }
}

#[test]
fn a_page_shared_with_an_smmu_frame_hides_the_device() {
    // The SMMU's frame is never mapped: a UART in its last page would be left enabled
    // for the host but unreachable (and, to the banner, reachable).
    let blob = board(|b| {
        b.dev("serial@2001f800", "ns16550a", 0x2001_f800, 0x100)
            .end();
    });
    let m = decide_blob(&blob, &[LIVE], &[]);
    let v = m.by_path("/serial@2001f800").unwrap();
    assert_eq!(v.decision, Decision::Hidden);
    let smmu = m.nodes.iter().position(|n| n.path == "/smmu@20000000");
    assert_eq!(v.shares_with, smmu);
    assert!(m.hidden_offsets().unwrap().contains(&m.node(v).offset));
}

#[test]
fn page_sharing_is_followed_along_a_chain() {
    // thing (hidden) shares a page with uart-a, uart-a one with uart-b, uart-b one with
    // uart-c: all hidden, each because of the one before; uart-d, alone, stays.
    let blob = board(|b| {
        b.dev("thing@3000000", "vendor,thing", 0x300_0000, 0x100)
            .end()
            .dev("serial@3000800", "ns16550a", 0x300_0800, 0x1000)
            .end()
            .dev("serial@3001c00", "ns16550a", 0x300_1c00, 0x1000)
            .end()
            .dev("serial@3002f00", "ns16550a", 0x300_2f00, 0x100)
            .end()
            .dev("serial@3004000", "ns16550a", 0x300_4000, 0x100)
            .end();
    });
    let m = decide_blob(&blob, &[LIVE], &[]);
    let idx = |p: &str| m.nodes.iter().position(|n| n.path == p);
    for (p, because) in [
        ("/serial@3000800", "/thing@3000000"),
        ("/serial@3001c00", "/serial@3000800"),
        ("/serial@3002f00", "/serial@3001c00"),
    ] {
        let v = m.by_path(p).unwrap();
        assert_eq!(v.decision, Decision::Hidden, "{p}");
        assert_eq!(v.shares_with, idx(because), "{p}");
    }
    assert_eq!(
        m.by_path("/serial@3004000").unwrap().decision,
        Decision::NoDma
    );
}
