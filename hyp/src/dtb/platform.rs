//! The owned description of the machine that [`Platform::parse`] fills in from the DTB —
//! RAM, reservations, console, GIC, PSCI, CPUs, the host payload, SMMUs and their
//! StreamID wiring — and the questions Warden asks of it afterwards.

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::addr::{PhysAddr, PhysRange};
use host_abi::PAGE;

/// Where a reserved range comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReservationSource {
    /// The FDT memory reservation block (`/memreserve/`).
    MemReserve,
    /// A `/reserved-memory` child with a `reg` property.
    ReservedMemory {
        /// The node has `no-map` (the OS must not map it at all).
        no_map: bool,
    },
}

/// A physical range that firmware has already reserved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reservation {
    /// The reserved bytes.
    pub range: PhysRange,
    /// Where the reservation was found.
    pub source: ReservationSource,
}

/// The kind of UART behind `/chosen/stdout-path`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsoleKind {
    /// Arm PrimeCell PL011 (`arm,pl011`).
    Pl011,
    /// 16550-compatible (`ns16550a`, `ns16550`, `snps,dw-apb-uart`).
    Ns16550 {
        /// Registers are `1 << reg_shift` bytes apart (`reg-shift`, default 0).
        reg_shift: u32,
        /// Access width in bytes (`reg-io-width`, default 1).
        reg_io_width: u32,
    },
    /// Any other `compatible`.
    Unknown,
}

/// The console named by `/chosen/stdout-path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Console {
    /// The UART model.
    pub kind: ConsoleKind,
    /// The first `reg` entry, as CPU physical addresses.
    pub regs: PhysRange,
    /// The text after `:` in `stdout-path` (e.g. `115200n8`), if any.
    pub options: Option<String>,
}

/// The GIC architecture version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GicVersion {
    /// GICv2 (`arm,cortex-a15-gic`, `arm,gic-400`, `arm,cortex-a9-gic`).
    V2,
    /// GICv3 or GICv4 (`arm,gic-v3`).
    V3,
}

/// `GICv2`, `GICv3`.
impl fmt::Display for GicVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V2 => "GICv2",
            Self::V3 => "GICv3",
        })
    }
}

/// The interrupt controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gic {
    /// Architecture version.
    pub version: GicVersion,
    /// Distributor (GICD).
    pub dist: PhysRange,
    /// GICv3 redistributor regions (GICR), `#redistributor-regions` of them; empty for v2.
    pub redists: Vec<PhysRange>,
    /// CPU interface (GICC): always for v2, optional for v3.
    pub cpu_if: Option<PhysRange>,
    /// Virtual interface control (GICH), if described.
    pub hyp_if: Option<PhysRange>,
    /// Virtual CPU interface (GICV), if described.
    pub vcpu_if: Option<PhysRange>,
    /// The INTID of the maintenance interrupt (`interrupts`), if described.
    pub maintenance_intid: Option<u32>,
    /// `redistributor-stride`, if given (GICv3).
    pub redist_stride: Option<u64>,
    /// The available `arm,gic-v3-its` nodes' first `reg` entries (GICv3; wherever the
    /// nodes are in the tree).
    pub its: Vec<PhysRange>,
}

/// The newest PSCI version the `/psci` node claims.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PsciVersion {
    /// `arm,psci`: function IDs come from the node.
    V0_1,
    /// `arm,psci-0.2`.
    V0_2,
    /// `arm,psci-1.0`.
    V1_0,
}

/// The version number as the binding writes it: `0.1`, `0.2`, `1.0`.
impl fmt::Display for PsciVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V0_1 => "0.1",
            Self::V0_2 => "0.2",
            Self::V1_0 => "1.0",
        })
    }
}

/// The PSCI conduit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PsciMethod {
    /// `SMC #0`.
    Smc,
    /// `HVC #0`.
    Hvc,
}

/// The instruction: `SMC`, `HVC`.
impl fmt::Display for PsciMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Smc => "SMC",
            Self::Hvc => "HVC",
        })
    }
}

/// The PSCI firmware interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Psci {
    /// Newest version in `compatible`.
    pub version: PsciVersion,
    /// Conduit (`method`).
    pub method: PsciMethod,
    /// `cpu_on` function ID (PSCI 0.1 style), if present.
    pub cpu_on: Option<u32>,
    /// `cpu_off` function ID, if present.
    pub cpu_off: Option<u32>,
    /// `cpu_suspend` function ID, if present.
    pub cpu_suspend: Option<u32>,
    /// `migrate` function ID, if present.
    pub migrate: Option<u32>,
}

/// `PSCI 1.0 over SMC`.
impl fmt::Display for Psci {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PSCI {} over {}", self.version, self.method)
    }
}

/// How a secondary CPU is started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnableMethod {
    /// `enable-method = "psci"`.
    Psci,
    /// `enable-method = "spin-table"`.
    SpinTable,
    /// No `enable-method` (typically the boot CPU on uniprocessor boards).
    None,
    /// Something else.
    Other,
}

/// One `/cpus/cpu@…` node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cpu {
    /// MPIDR affinity fields as in `reg`.
    pub mpidr: u64,
    /// How to start it.
    pub enable_method: EnableMethod,
    /// `cpu-release-addr` for spin-table CPUs.
    pub release_addr: Option<u64>,
    /// `status` is absent or okay.
    pub available: bool,
}

/// A `/chosen/module@…` boot module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Module {
    /// Where the loader placed it.
    pub range: PhysRange,
    /// The module's `bootargs` (kernel modules), if any.
    pub bootargs: Option<String>,
}

/// An `arm,smmu-v3` node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Smmu {
    /// Register frame (first `reg` entry), CPU physical.
    pub regs: PhysRange,
    /// `phandle`, which `iommu-map` and `iommus` refer to.
    pub phandle: Option<u32>,
    /// `status` is absent or okay.
    pub available: bool,
    /// `dma-coherent` is present.
    pub dma_coherent: bool,
}

/// A node with an `iommu-map` property: in practice a PCIe host bridge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciHost {
    /// First `reg` entry (the ECAM window for `pci-host-ecam-generic`), if translatable.
    pub ecam: Option<PhysRange>,
    /// `linux,pci-domain`.
    pub domain: Option<u32>,
    /// `bus-range` (first, last).
    pub bus_range: Option<(u32, u32)>,
    /// `iommu-map-mask`, applied to a requester ID before the map lookup.
    pub iommu_map_mask: Option<u32>,
    /// The first non-prefetchable 32-bit memory window of `ranges` (where 32-bit BARs
    /// go), if there is one and it translates to CPU addresses.
    pub mem32: Option<PciWindow>,
}

/// A memory window of a PCI host bridge: PCI bus addresses `pci_addr .. pci_addr + size`
/// appear at CPU physical addresses `cpu_addr ..`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciWindow {
    /// CPU physical address of the window's first byte.
    pub cpu_addr: u64,
    /// PCI bus address of the window's first byte (what a BAR is programmed with).
    pub pci_addr: u64,
    /// Size in bytes (non-zero).
    pub size: u64,
}

/// One `iommu-map` entry: requester IDs `rid_base .. rid_base + len` of host
/// [`Platform::pci_hosts`]`[host]` are StreamIDs `sid_base ..` of the IOMMU `iommu`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IommuMapEntry {
    /// Index into [`Platform::pci_hosts`].
    pub host: usize,
    /// First requester ID.
    pub rid_base: u32,
    /// Phandle of the IOMMU (see [`Platform::smmu_by_phandle`]).
    pub iommu: u32,
    /// StreamID of `rid_base` (the first specifier cell).
    pub sid_base: u32,
    /// Number of IDs.
    pub len: u32,
}

/// One `iommus` specifier of a device: the device masters as `sid` on IOMMU `iommu`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceStream {
    /// The device's first `reg` address, if it has a translatable one (to name it).
    pub device: Option<PhysAddr>,
    /// Phandle of the IOMMU.
    pub iommu: u32,
    /// StreamID (the first specifier cell).
    pub sid: u32,
}

/// Everything Warden learns from the DTB. Owned: it does not borrow the blob.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Platform {
    /// The blob's `totalsize`.
    pub dtb_size: usize,
    /// The header's `boot_cpuid_phys`.
    pub boot_cpuid_phys: u32,
    /// RAM: every `reg` entry of every available `device_type = "memory"` node, in DTB
    /// order (zero-sized entries skipped).
    pub ram: Vec<PhysRange>,
    /// `/memreserve/` entries, then `/reserved-memory` children with `reg` (whatever their
    /// `status`: avoiding too much memory is harmless; dynamic `size`-only nodes have no
    /// address yet and are skipped).
    pub reservations: Vec<Reservation>,
    /// The `/chosen/stdout-path` console, if it resolves to a node with `reg`.
    pub console: Option<Console>,
    /// The first available GIC node.
    pub gic: Option<Gic>,
    /// The first node compatible with PSCI.
    pub psci: Option<Psci>,
    /// Every `/cpus` child with `device_type = "cpu"`, in DTB order.
    pub cpus: Vec<Cpu>,
    /// The first `/chosen` module compatible with `multiboot,kernel`.
    pub kernel: Option<Module>,
    /// The first `/chosen` module compatible with `multiboot,ramdisk`.
    pub ramdisk: Option<Module>,
    /// `/chosen/bootargs`: Warden's own options (see [`crate::bootargs`]).
    pub bootargs: Option<String>,
    /// Every `arm,smmu-v3` node, available or not, in DTB order.
    pub smmus: Vec<Smmu>,
    /// Every node with an `iommu-map`.
    pub pci_hosts: Vec<PciHost>,
    /// All `iommu-map` entries (entries whose IOMMU phandle names no node with
    /// `#iommu-cells` end the decoding of that property).
    pub iommu_map: Vec<IommuMapEntry>,
    /// All `iommus` specifiers of all devices (same rule for unknown phandles).
    pub iommus: Vec<DeviceStream>,
    /// One past the highest CPU physical address reached by any device `reg` or any bus
    /// `ranges` window (RAM and reserved-memory excluded), e.g. the end of QEMU's 64-bit
    /// PCIe window. 0 if there is none.
    pub max_mmio_end: u64,
}

impl Platform {
    /// The index in [`Platform::smmus`] of the SMMU with this phandle.
    pub fn smmu_by_phandle(&self, phandle: u32) -> Option<usize> {
        self.smmus.iter().position(|s| s.phandle == Some(phandle))
    }

    /// The pages holding the `cpu-release-addr` of every spin-table CPU except the boot
    /// CPU (`boot_mpidr`), page-aligned, sorted, merged where they overlap: a write there
    /// releases the CPU at an address of the writer's choosing and at firmware's exception
    /// level (EL2), so these pages must stay out of the host's reach. A CPU's `status`
    /// does not matter: `disabled` is how the devicetree specification describes a
    /// quiescent CPU waiting for its enable method. A reservation (`/memreserve/` or
    /// `/reserved-memory`) holding a release address is kept whole, page-rounded: that is
    /// where firmware's holding pen (the code the waiting CPUs run) lives (U-Boot's spin
    /// table, the boot-wrapper), and rewriting that code would release them just as well.
    pub fn spin_table_release_pages(&self, boot_mpidr: u64) -> Vec<PhysRange> {
        let mut pages: Vec<PhysRange> = Vec::new();
        let mut add = |r: PhysRange| {
            let base = r.base.get() & !(PAGE - 1);
            let end = r
                .end()
                .checked_next_multiple_of(PAGE)
                .unwrap_or(!(PAGE - 1));
            if end > base && pages.try_reserve(1).is_ok() {
                pages.push(PhysRange::new(base, end - base));
            }
        };
        for c in &self.cpus {
            if c.enable_method != EnableMethod::SpinTable || c.mpidr == boot_mpidr {
                continue;
            }
            let Some(a) = c.release_addr else { continue };
            // The 8-byte release address may straddle two pages.
            add(PhysRange::new(a & !(PAGE - 1), PAGE));
            add(PhysRange::new(a.saturating_add(7) & !(PAGE - 1), PAGE));
            for res in self.reservations.iter().filter(|r| r.range.contains(a)) {
                add(res.range);
            }
        }
        pages.sort_unstable_by_key(|p| p.base.get());
        // Merge in place: `pages[..n]` is the merged prefix.
        let mut n = 0;
        for i in 0..pages.len() {
            let p = pages[i];
            if n > 0 && p.base.get() < pages[n - 1].end() {
                let last = &mut pages[n - 1];
                let end = last.end().max(p.end());
                last.size = end - last.base.get();
            } else {
                pages[n] = p;
                n += 1;
            }
        }
        pages.truncate(n);
        pages
    }

    /// One past the highest physical address of RAM or MMIO: what the host stage-2 IPA
    /// space must cover.
    pub fn max_phys_end(&self) -> u64 {
        self.ram
            .iter()
            .map(PhysRange::end)
            .fold(self.max_mmio_end, u64::max)
    }
}
