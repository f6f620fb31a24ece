//! Unit tests of the DTB reader, discovery and editor: QEMU's own DTBs (GICv2, GICv3,
//! big RAM), a synthetic board, and hand-built blobs for the edge cases.

use std::collections::BTreeMap;
use std::format;
use std::process::Command;
use std::string::ToString;
use std::vec;

use super::edit::find_string;
use super::fdt::*;
use super::*;
use crate::addr::{PhysAddr, PhysRange};

const GICV3: &[u8] = include_bytes!("../../../testdata/virt-gicv3.dtb");
const GICV2: &[u8] = include_bytes!("../../../testdata/virt-gicv2.dtb");
const BIGRAM: &[u8] = include_bytes!("../../../testdata/virt-bigram.dtb");
const SYNTHETIC: &[u8] = include_bytes!("../../../testdata/synthetic.dtb");
const ALL: [(&str, &[u8]); 4] = [
    ("virt-gicv3", GICV3),
    ("virt-gicv2", GICV2),
    ("virt-bigram", BIGRAM),
    ("synthetic", SYNTHETIC),
];

fn r(base: u64, size: u64) -> PhysRange {
    PhysRange::new(base, size)
}

fn psci_cpus(n: u64) -> Vec<Cpu> {
    (0..n)
        .map(|mpidr| Cpu {
            mpidr,
            enable_method: EnableMethod::Psci,
            release_addr: None,
            available: true,
        })
        .collect()
}

fn qemu_psci() -> Option<Psci> {
    Some(Psci {
        version: PsciVersion::V1_0,
        method: PsciMethod::Smc,
        cpu_on: Some(0xc400_0003),
        cpu_off: Some(0x8400_0002),
        cpu_suspend: Some(0xc400_0001),
        migrate: Some(0xc400_0005),
    })
}

fn qemu_console() -> Option<Console> {
    Some(Console {
        kind: ConsoleKind::Pl011,
        regs: r(0x900_0000, 0x1000),
        options: None,
    })
}

fn qemu_smmu(phandle: u32) -> Vec<Smmu> {
    vec![Smmu {
        regs: r(0x905_0000, 0x2_0000),
        phandle: Some(phandle),
        available: true,
        dma_coherent: true,
    }]
}

fn qemu_pci_host() -> Vec<PciHost> {
    vec![PciHost {
        ecam: Some(r(0x40_1000_0000, 0x1000_0000)),
        domain: Some(0),
        bus_range: Some((0, 0xff)),
        iommu_map_mask: None,
        mem32: Some(PciWindow {
            cpu_addr: 0x1000_0000,
            pci_addr: 0x1000_0000,
            size: 0x2eff_0000,
        }),
    }]
}

fn qemu_iommu_map(phandle: u32) -> Vec<IommuMapEntry> {
    vec![IommuMapEntry {
        host: 0,
        rid_base: 0,
        iommu: phandle,
        sid_base: 0,
        len: 0x1_0000,
    }]
}

fn qemu_gicv3() -> Option<Gic> {
    Some(Gic {
        version: GicVersion::V3,
        dist: r(0x800_0000, 0x1_0000),
        redists: vec![r(0x80a_0000, 0xf6_0000)],
        cpu_if: None,
        hyp_if: None,
        vcpu_if: None,
        maintenance_intid: Some(25),
        redist_stride: None,
        its: vec![r(0x808_0000, 0x2_0000)],
    })
}

/// QEMU's 64-bit PCIe window 0x80_0000_0000 + 0x80_0000_0000 is the highest MMIO.
const QEMU_MMIO_END: u64 = 0x100_0000_0000;

mod builder;
mod discover;
mod edit;
mod robust;
