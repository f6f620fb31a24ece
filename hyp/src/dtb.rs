//! Platform discovery from the flattened device tree (DTB) that firmware hands Warden,
//! and the edited copy of it that Warden hands the host.
//!
//! [`Platform::parse`] reads everything Warden needs to know about the machine from the
//! DTB — RAM, existing reservations, console, GIC, PSCI, CPUs, the host payload
//! (`/chosen/module@…`, the Multiboot-for-ARM binding), Warden's own command line, the
//! SMMUs and their StreamID wiring, and the highest MMIO address — so that nothing about
//! any particular board is hard-coded. The result is owned (it does not borrow the
//! blob): after parsing, Warden need not trust the DTB's memory any more, which matters
//! because that memory is handed to the host.
//!
//! [`build_host_dtb`] re-emits the DTB with Warden's edits (carve-outs as
//! `/reserved-memory` `no-map` children, `/chosen/bootargs` and `linux,initrd-*` from the
//! modules, SMMUs disabled) into a caller-provided buffer, without allocating.
//!
//! The reader is Warden's own rather than `dtoolkit`'s: `dtoolkit` 0.4 rejects whole
//! blobs whose node or property names exceed the specification's 31 characters, and
//! shipping board DTBs contain such names (Rockchip's `snps,dis-u2-freeclk-exists-quirk`
//! is 32), which dtc and Linux accept. This reader checks every offset and length, never
//! panics on malformed input, and bounds nesting depth ([`MAX_DEPTH`]).
//!
//! Conventions, as Linux applies them:
//! - A node without `#address-cells` / `#size-cells` inherits its parent's (Linux's
//!   `of_n_addr_cells` walk; the root defaults to 2 and 1). QEMU's `guest-loader` relies
//!   on this: `/chosen` has no cell sizes of its own and module `reg`s are 2+2 cells,
//!   the root's.
//! - `reg` addresses are translated to CPU physical addresses through every ancestor's
//!   `ranges` (empty `ranges` = identity; no `ranges` = not CPU-addressable). Child
//!   addresses wider than two cells (PCI) are compared as whole numbers, so devices
//!   below a PCI host bridge are not translated.
//! - `status` absent, `"okay"` or `"ok"` means available.

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::addr::{PhysAddr, PhysRange};

mod nodes;
pub use nodes::{DeviceNode, IommuRef, MapEntry, device_nodes};

/// Maximum node nesting depth accepted (the root is depth 0). Real DTBs stay below 10.
pub const MAX_DEPTH: usize = 32;

/// The size of the FDT header (version 17).
const HEADER_SIZE: usize = 40;
const FDT_MAGIC: u32 = 0xd00d_feed;
const FDT_BEGIN_NODE: u32 = 1;
const FDT_END_NODE: u32 = 2;
const FDT_PROP: u32 = 3;
const FDT_NOP: u32 = 4;
const FDT_END: u32 = 9;
/// At most this many `/memreserve/` entries are accepted (guards the scan).
const MAX_MEMRESERVE: usize = 1024;

/// Why a DTB could not be parsed or edited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DtbError {
    /// The blob is shorter than the FDT header or than the header's `totalsize`.
    Truncated,
    /// The header's magic number is not `0xd00dfeed`.
    BadMagic,
    /// The header's version is not compatible with version 17 (the value is `version`).
    UnsupportedVersion(u32),
    /// The header's offsets and sizes, the memory reservation block or the structure
    /// block are inconsistent; the text says what was wrong.
    Malformed(&'static str),
    /// Nodes nest deeper than [`MAX_DEPTH`].
    TooDeep,
    /// A property Warden interprets has a value it cannot decode (wrong length, bad
    /// string, unsupported cell count, address not translatable); the text names it.
    BadProperty(&'static str),
    /// Allocating memory for the discovered data failed.
    NoMemory,
    /// The output buffer is too small: `needed` bytes are required.
    NoSpace {
        /// Total size the edited DTB needs.
        needed: usize,
    },
    /// A requested edit cannot be expressed in this DTB (for example a carve-out that
    /// does not fit `/reserved-memory`'s cell sizes); the text says which.
    BadEdit(&'static str),
}

impl fmt::Display for DtbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => f.write_str("DTB truncated"),
            Self::BadMagic => f.write_str("not a DTB (bad magic)"),
            Self::UnsupportedVersion(v) => write!(f, "unsupported DTB version {v}"),
            Self::Malformed(what) => write!(f, "malformed DTB: {what}"),
            Self::TooDeep => write!(f, "DTB nodes nest deeper than {MAX_DEPTH}"),
            Self::BadProperty(what) => write!(f, "bad DTB property: {what}"),
            Self::NoMemory => f.write_str("out of memory while parsing the DTB"),
            Self::NoSpace { needed } => {
                write!(f, "DTB output buffer too small ({needed} bytes needed)")
            }
            Self::BadEdit(what) => write!(f, "cannot edit the DTB: {what}"),
        }
    }
}

type Res<T> = Result<T, DtbError>;

// ---------------------------------------------------------------------------------------
// Discovered platform description
// ---------------------------------------------------------------------------------------

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

/// The PSCI conduit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PsciMethod {
    /// `SMC #0`.
    Smc,
    /// `HVC #0`.
    Hvc,
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
    /// Parses a DTB. `dtb` may be longer than the blob's `totalsize` (the rest is
    /// ignored). See the module documentation for the conventions applied.
    ///
    /// # Errors
    ///
    /// [`DtbError::Truncated`], [`DtbError::BadMagic`], [`DtbError::UnsupportedVersion`],
    /// [`DtbError::Malformed`] or [`DtbError::TooDeep`] for a blob that is not a valid
    /// FDT; [`DtbError::BadProperty`] when a property Warden interprets (memory, GIC,
    /// SMMU, PSCI, CPU, module `reg`s, cell counts, …) cannot be decoded;
    /// [`DtbError::NoMemory`] if allocation fails.
    pub fn parse(dtb: &[u8]) -> Result<Platform, DtbError> {
        let fdt = Fdt::open(dtb)?;
        let mut scan = Scan::new(fdt)?;
        let (_, root) = fdt.next_token(0)?;
        scan.visit(root, 0)?;
        scan.finish()
    }

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
        const PAGE: u64 = 4096;
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

// ---------------------------------------------------------------------------------------
// Low-level FDT reader
// ---------------------------------------------------------------------------------------

fn be32(data: &[u8], off: usize) -> Option<u32> {
    let bytes = data.get(off..off.checked_add(4)?)?;
    Some(u32::from_be_bytes(bytes.try_into().ok()?))
}

fn be64(data: &[u8], off: usize) -> Option<u64> {
    let bytes = data.get(off..off.checked_add(8)?)?;
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

const fn align4(off: usize) -> usize {
    (off + 3) & !3
}

/// The NUL-terminated string at the start of `data`, as UTF-8.
fn cstr(data: &[u8]) -> Option<&str> {
    let nul = data.iter().position(|&b| b == 0)?;
    core::str::from_utf8(&data[..nul]).ok()
}

/// A validated view of an FDT: every token, name and property in the structure block
/// has been checked to lie inside the blob.
#[derive(Clone, Copy)]
struct Fdt<'a> {
    /// The whole blob, `totalsize` bytes.
    data: &'a [u8],
    /// The structure block; node offsets are relative to it.
    structs: &'a [u8],
    /// The strings block.
    strings: &'a [u8],
    /// Offset of the memory reservation block in `data`.
    rsv_off: usize,
}

/// A node: its name and where its body (properties, then children) starts.
#[derive(Clone, Copy)]
struct RawNode<'a> {
    name: &'a str,
    body: usize,
}

/// A property.
#[derive(Clone, Copy)]
struct RawProp<'a> {
    name: &'a str,
    /// Offset of the name in the strings block.
    nameoff: u32,
    value: &'a [u8],
}

struct Header {
    totalsize: usize,
    off_struct: usize,
    off_strings: usize,
    off_rsv: usize,
    version: u32,
    last_comp: u32,
    size_strings: usize,
    size_struct: usize,
}

impl Header {
    fn read(blob: &[u8]) -> Res<Header> {
        if blob.len() < HEADER_SIZE {
            return Err(DtbError::Truncated);
        }
        let field = |i: usize| be32(blob, i * 4).ok_or(DtbError::Truncated);
        if field(0)? != FDT_MAGIC {
            return Err(DtbError::BadMagic);
        }
        Ok(Header {
            totalsize: field(1)? as usize,
            off_struct: field(2)? as usize,
            off_strings: field(3)? as usize,
            off_rsv: field(4)? as usize,
            version: field(5)?,
            last_comp: field(6)?,
            size_strings: field(8)? as usize,
            size_struct: field(9)? as usize,
        })
    }
}

impl<'a> Fdt<'a> {
    /// Checks the header, the memory reservation block and the whole structure block.
    fn open(blob: &'a [u8]) -> Res<Fdt<'a>> {
        let h = Header::read(blob)?;
        if h.version < 17 || h.last_comp > 17 {
            return Err(DtbError::UnsupportedVersion(h.version));
        }
        if h.totalsize < HEADER_SIZE {
            return Err(DtbError::Malformed("totalsize smaller than the header"));
        }
        let data = blob.get(..h.totalsize).ok_or(DtbError::Truncated)?;
        let block = |off: usize, size: usize, what: &'static str| {
            off.checked_add(size)
                .filter(|&end| off >= HEADER_SIZE && end <= data.len())
                .map(|end| &data[off..end])
                .ok_or(DtbError::Malformed(what))
        };
        let structs = block(h.off_struct, h.size_struct, "structure block out of bounds")?;
        let strings = block(h.off_strings, h.size_strings, "strings block out of bounds")?;
        if !h.off_struct.is_multiple_of(4) {
            return Err(DtbError::Malformed("structure block misaligned"));
        }
        if !h.off_rsv.is_multiple_of(8) || h.off_rsv < HEADER_SIZE {
            return Err(DtbError::Malformed("memory reservation block misplaced"));
        }
        let fdt = Fdt {
            data,
            structs,
            strings,
            rsv_off: h.off_rsv,
        };
        // The reservation block must be terminated inside the blob.
        let mut terminated = false;
        for i in 0..MAX_MEMRESERVE {
            let off = h.off_rsv + i * 16;
            let (addr, size) =
                be64(data, off)
                    .zip(be64(data, off + 8))
                    .ok_or(DtbError::Malformed(
                        "memory reservation block not terminated",
                    ))?;
            if addr == 0 && size == 0 {
                terminated = true;
                break;
            }
        }
        if !terminated {
            return Err(DtbError::Malformed("too many memory reservations"));
        }
        fdt.validate_structure()?;
        Ok(fdt)
    }

    /// `boot_cpuid_phys` from the header.
    fn boot_cpuid(&self) -> u32 {
        be32(self.data, 28).unwrap_or(0)
    }

    /// The memory reservation entries (address, size), terminator excluded.
    fn memreserve(&self) -> impl Iterator<Item = (u64, u64)> + 'a {
        let data = self.data;
        let base = self.rsv_off;
        (0..MAX_MEMRESERVE)
            .map(move |i| {
                let off = base + i * 16;
                (
                    be64(data, off).unwrap_or(0),
                    be64(data, off + 8).unwrap_or(0),
                )
            })
            .take_while(|&(a, s)| a != 0 || s != 0)
    }

    fn token(&self, off: usize) -> Res<u32> {
        be32(self.structs, off).ok_or(DtbError::Malformed("structure block ends early"))
    }

    /// The next token at or after `off`, skipping NOPs: (token, its offset).
    fn next_token(&self, mut off: usize) -> Res<(u32, usize)> {
        loop {
            let t = self.token(off)?;
            if t != FDT_NOP {
                return Ok((t, off));
            }
            off += 4;
        }
    }

    /// The node whose FDT_BEGIN_NODE token is at `off`.
    fn node_at(&self, off: usize) -> Res<RawNode<'a>> {
        let rest = self
            .structs
            .get(off + 4..)
            .ok_or(DtbError::Malformed("node name out of bounds"))?;
        let name = cstr(rest).ok_or(DtbError::Malformed("bad node name"))?;
        Ok(RawNode {
            name,
            body: align4(off + 4 + name.len() + 1),
        })
    }

    /// The property whose FDT_PROP token is at `off`, and the offset after it.
    fn prop_at(&self, off: usize) -> Res<(RawProp<'a>, usize)> {
        let bad = DtbError::Malformed("property out of bounds");
        let len = be32(self.structs, off + 4).ok_or(bad)? as usize;
        let nameoff = be32(self.structs, off + 8).ok_or(bad)? as usize;
        let start = off + 12;
        let end = start.checked_add(len).ok_or(bad)?;
        let value = self.structs.get(start..end).ok_or(bad)?;
        let name = self
            .strings
            .get(nameoff..)
            .and_then(cstr)
            .ok_or(DtbError::Malformed("bad property name"))?;
        Ok((
            RawProp {
                name,
                nameoff: nameoff as u32,
                value,
            },
            align4(end),
        ))
    }

    /// Walks the whole structure block once, checking every token.
    fn validate_structure(&self) -> Res<()> {
        let (t, mut off) = self.next_token(0)?;
        if t != FDT_BEGIN_NODE {
            return Err(DtbError::Malformed(
                "structure block does not start with a node",
            ));
        }
        let mut depth = 0usize;
        // Whether the current node has had a child yet (properties must come first).
        let mut seen_child = false;
        loop {
            let (t, o) = self.next_token(off)?;
            match t {
                FDT_BEGIN_NODE => {
                    if depth >= MAX_DEPTH {
                        return Err(DtbError::TooDeep);
                    }
                    off = self.node_at(o)?.body;
                    depth += 1;
                    seen_child = false;
                }
                FDT_PROP => {
                    if seen_child || depth == 0 {
                        return Err(DtbError::Malformed("property after a child node"));
                    }
                    off = self.prop_at(o)?.1;
                }
                FDT_END_NODE => {
                    if depth == 0 {
                        return Err(DtbError::Malformed("unbalanced FDT_END_NODE"));
                    }
                    depth -= 1;
                    off = o + 4;
                    seen_child = true;
                    if depth == 0 {
                        break;
                    }
                }
                _ => return Err(DtbError::Malformed("unexpected token in structure block")),
            }
        }
        match self.next_token(off)? {
            (FDT_END, _) => Ok(()),
            _ => Err(DtbError::Malformed("missing FDT_END")),
        }
    }

    fn root(&self) -> Res<RawNode<'a>> {
        let (_, off) = self.next_token(0)?;
        self.node_at(off)
    }

    /// The properties of `node`.
    fn props(&self, node: RawNode<'a>) -> PropIter<'a> {
        PropIter {
            fdt: *self,
            off: node.body,
        }
    }

    /// The value of `node`'s property `name`.
    fn prop(&self, node: RawNode<'a>, name: &str) -> Option<&'a [u8]> {
        self.props(node).find(|p| p.name == name).map(|p| p.value)
    }

    /// Offset of the first token after `node`'s properties.
    fn after_props(&self, node: RawNode<'a>) -> Res<usize> {
        let mut off = node.body;
        loop {
            let (t, o) = self.next_token(off)?;
            if t != FDT_PROP {
                return Ok(o);
            }
            off = self.prop_at(o)?.1;
        }
    }

    /// Offset just past the FDT_END_NODE of the node beginning at `off`.
    fn skip_node(&self, off: usize) -> Res<usize> {
        let mut off = self.node_at(off)?.body;
        let mut depth = 1usize;
        loop {
            let (t, o) = self.next_token(off)?;
            off = match t {
                FDT_BEGIN_NODE => {
                    depth += 1;
                    self.node_at(o)?.body
                }
                FDT_PROP => self.prop_at(o)?.1,
                FDT_END_NODE => {
                    depth -= 1;
                    if depth == 0 {
                        return Ok(o + 4);
                    }
                    o + 4
                }
                _ => return Err(DtbError::Malformed("unexpected token in node")),
            };
        }
    }

    /// The first child of `node` whose name satisfies `pred`.
    fn child_where(
        &self,
        node: RawNode<'a>,
        pred: impl Fn(&str) -> bool,
    ) -> Res<Option<RawNode<'a>>> {
        let mut off = self.after_props(node)?;
        loop {
            let (t, o) = self.next_token(off)?;
            if t != FDT_BEGIN_NODE {
                return Ok(None);
            }
            let c = self.node_at(o)?;
            if pred(c.name) {
                return Ok(Some(c));
            }
            off = self.skip_node(o)?;
        }
    }

    /// The root's child named exactly `name` (`chosen`, `aliases`, `reserved-memory`).
    fn top(&self, name: &str) -> Res<Option<RawNode<'a>>> {
        self.child_where(self.root()?, |n| n == name)
    }
}

/// Iterator over a node's properties (stops at the first non-property token).
struct PropIter<'a> {
    fdt: Fdt<'a>,
    off: usize,
}

impl<'a> Iterator for PropIter<'a> {
    type Item = RawProp<'a>;

    fn next(&mut self) -> Option<RawProp<'a>> {
        let (t, o) = self.fdt.next_token(self.off).ok()?;
        if t != FDT_PROP {
            return None;
        }
        let (p, next) = self.fdt.prop_at(o).ok()?;
        self.off = next;
        Some(p)
    }
}

/// Whether a path component names a node: exactly, or by its name without unit address.
fn component_matches(comp: &str, name: &str) -> bool {
    comp == name || (!comp.contains('@') && name.split('@').next() == Some(comp))
}

/// Whether a string-list property contains `s`.
fn strlist_has(value: Option<&[u8]>, s: &str) -> bool {
    value.is_some_and(|v| v.split(|&b| b == 0).any(|x| x == s.as_bytes()))
}

/// A string property (one string, NUL-terminated or not).
fn prop_str<'v>(value: &'v [u8], what: &'static str) -> Res<&'v str> {
    let s = value.split(|&b| b == 0).next().unwrap_or(&[]);
    core::str::from_utf8(s).map_err(|_| DtbError::BadProperty(what))
}

/// A one-cell property.
fn prop_u32(value: &[u8], what: &'static str) -> Res<u32> {
    if value.len() != 4 {
        return Err(DtbError::BadProperty(what));
    }
    be32(value, 0).ok_or(DtbError::BadProperty(what))
}

/// Whether a node is available (`status` absent, `okay` or `ok`).
fn status_ok(value: Option<&[u8]>) -> bool {
    match value {
        None => true,
        Some(v) => matches!(prop_str(v, "status"), Ok("okay" | "ok")),
    }
}

/// A number of `cells` big-endian cells (at most 4).
fn read_cells(data: &[u8], cells: u32) -> Option<u128> {
    if cells > 4 || data.len() != cells as usize * 4 {
        return None;
    }
    Some(data.chunks_exact(4).fold(0u128, |acc, c| {
        (acc << 32) | u128::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
    }))
}

/// Decodes a prop-encoded array of `N`-field tuples with the given cell widths.
fn tuples<const N: usize>(
    value: &[u8],
    widths: [u32; N],
) -> Option<impl Iterator<Item = [u128; N]> + '_> {
    if widths.iter().any(|&w| w > 4) {
        return None;
    }
    let len = widths.iter().sum::<u32>() as usize * 4;
    if len == 0 {
        if !value.is_empty() {
            return None;
        }
    } else if !value.len().is_multiple_of(len) {
        return None;
    }
    Some(value.chunks_exact(len.max(1)).map(move |chunk| {
        let mut out = [0u128; N];
        let mut off = 0;
        for (slot, &w) in out.iter_mut().zip(widths.iter()) {
            let n = w as usize * 4;
            *slot = read_cells(&chunk[off..off + n], w).unwrap_or(0);
            off += n;
        }
        out
    }))
}

fn push<T>(v: &mut Vec<T>, item: T) -> Res<()> {
    v.try_reserve(1).map_err(|_| DtbError::NoMemory)?;
    v.push(item);
    Ok(())
}

fn owned(s: &str) -> Res<String> {
    let mut out = String::new();
    out.try_reserve_exact(s.len())
        .map_err(|_| DtbError::NoMemory)?;
    out.push_str(s);
    Ok(out)
}

fn range(base: u64, size: u128, what: &'static str) -> Res<PhysRange> {
    let size = u64::try_from(size).map_err(|_| DtbError::BadProperty(what))?;
    if base.checked_add(size).is_none() {
        return Err(DtbError::BadProperty(what));
    }
    Ok(PhysRange::new(base, size))
}

// ---------------------------------------------------------------------------------------
// The discovery walk
// ---------------------------------------------------------------------------------------

/// What the walk keeps about each ancestor.
#[derive(Clone, Copy, Default)]
struct Frame<'a> {
    name: &'a str,
    /// Effective `#address-cells` / `#size-cells` for this node's children.
    address_cells: u32,
    size_cells: u32,
    /// `ranges` (None: absent, not CPU-addressable below).
    ranges: Option<&'a [u8]>,
}

/// Translates `addr` in the child address space of the node at `frames[level]` up to a
/// CPU physical address through every ancestor's `ranges`. None if some ancestor has no
/// `ranges` or no window covers it.
fn translate_up(frames: &[Frame<'_>], mut addr: u128, mut level: usize) -> Option<u64> {
    while level > 0 {
        let bus = &frames[level];
        let parent_cells = frames[level - 1].address_cells;
        let ranges = bus.ranges?;
        if !ranges.is_empty() {
            let mut hit = None;
            for [child, parent, size] in
                tuples(ranges, [bus.address_cells, parent_cells, bus.size_cells])?
            {
                if addr >= child && addr - child < size {
                    hit = parent.checked_add(addr - child);
                    break;
                }
            }
            addr = hit?;
        }
        level -= 1;
    }
    u64::try_from(addr).ok()
}

struct Scan<'a> {
    fdt: Fdt<'a>,
    frames: [Frame<'a>; MAX_DEPTH + 1],
    /// `stdout-path` target as (path, suffix) — an alias's value plus what followed it.
    stdout: Option<(&'a str, &'a str)>,
    stdout_options: Option<&'a str>,
    p: Platform,
    /// (phandle, #iommu-cells) of every node with both.
    iommu_cells: Vec<(u32, u32)>,
    /// Raw `iommus` values and the device base.
    raw_iommus: Vec<(&'a [u8], Option<PhysAddr>)>,
    /// Raw `iommu-map` values and the host index.
    raw_maps: Vec<(&'a [u8], usize)>,
    /// Every available ITS's first `reg` entry, wherever its node is.
    its: Vec<PhysRange>,
    /// The properties of the node being interpreted.
    cur: Vec<RawProp<'a>>,
}

impl<'a> Scan<'a> {
    fn new(fdt: Fdt<'a>) -> Res<Scan<'a>> {
        let mut p = Platform {
            dtb_size: fdt.data.len(),
            boot_cpuid_phys: fdt.boot_cpuid(),
            ..Platform::default()
        };
        for (addr, size) in fdt.memreserve() {
            if size != 0 {
                let r = range(addr, size.into(), "/memreserve/ entry")?;
                push(
                    &mut p.reservations,
                    Reservation {
                        range: r,
                        source: ReservationSource::MemReserve,
                    },
                )?;
            }
        }
        let mut scan = Scan {
            fdt,
            frames: [Frame::default(); MAX_DEPTH + 1],
            stdout: None,
            stdout_options: None,
            p,
            iommu_cells: Vec::new(),
            raw_iommus: Vec::new(),
            raw_maps: Vec::new(),
            its: Vec::new(),
            cur: Vec::new(),
        };
        // The console is optional: an unusable stdout-path just means no console.
        let _ = scan.resolve_stdout();
        Ok(scan)
    }

    /// Works out which node `/chosen/stdout-path` (or `linux,stdout-path`) names.
    fn resolve_stdout(&mut self) -> Res<()> {
        let fdt = self.fdt;
        let Some(chosen) = fdt.top("chosen")? else {
            return Ok(());
        };
        let Some(v) = fdt
            .prop(chosen, "stdout-path")
            .or_else(|| fdt.prop(chosen, "linux,stdout-path"))
        else {
            return Ok(());
        };
        let s = prop_str(v, "stdout-path")?;
        let (path, options) = match s.split_once(':') {
            Some((p, o)) => (p, Some(o)),
            None => (s, None),
        };
        self.stdout_options = options.filter(|o| !o.is_empty());
        if path.starts_with('/') {
            self.stdout = Some((path, ""));
            return Ok(());
        }
        // An alias, possibly followed by a relative path.
        let (alias, rest) = path.split_once('/').unwrap_or((path, ""));
        let Some(aliases) = fdt.top("aliases")? else {
            return Ok(());
        };
        if let Some(target) = fdt.prop(aliases, alias) {
            let target = prop_str(target, "alias")?;
            if target.starts_with('/') {
                self.stdout = Some((target, rest));
            }
        }
        Ok(())
    }

    /// Whether the node at `depth` (frames 1..=depth filled in) is the stdout node.
    fn is_stdout(&self, depth: usize) -> bool {
        let Some((path, rest)) = self.stdout else {
            return false;
        };
        let mut comps = path
            .split('/')
            .chain(rest.split('/'))
            .filter(|c| !c.is_empty());
        for frame in &self.frames[1..=depth] {
            match comps.next() {
                Some(c) if component_matches(c, frame.name) => {}
                _ => return false,
            }
        }
        comps.next().is_none()
    }

    /// Translates an address in the child address space of the node at `level` up to a
    /// CPU physical address. None if some ancestor has no `ranges` or no window covers it.
    fn translate(&self, addr: u128, level: usize) -> Option<u64> {
        translate_up(&self.frames, addr, level)
    }

    /// The `reg` entries of the node at `depth`, translated; None if it has no `reg`.
    /// Entries that cannot be translated are returned as `Err(BadProperty)`.
    fn regs(&self, depth: usize, what: &'static str) -> Res<Option<Vec<PhysRange>>> {
        let Some(reg) = self.prop("reg") else {
            return Ok(None);
        };
        let parent = &self.frames[depth - 1];
        let entries = tuples(reg, [parent.address_cells, parent.size_cells])
            .ok_or(DtbError::BadProperty(what))?;
        let mut out = Vec::new();
        for [addr, size] in entries {
            let base = self
                .translate(addr, depth - 1)
                .ok_or(DtbError::BadProperty(what))?;
            push(&mut out, range(base, size, what)?)?;
        }
        Ok(Some(out))
    }

    /// The first `reg` entry, required.
    fn reg0(&self, depth: usize, what: &'static str) -> Res<PhysRange> {
        self.regs(depth, what)?
            .and_then(|r| r.first().copied())
            .ok_or(DtbError::BadProperty(what))
    }

    /// Raises `max_mmio_end` to cover `node`'s translatable `reg`s and `ranges` windows.
    fn note_mmio(&mut self, depth: usize) {
        let parent = self.frames[depth - 1];
        let mut max = self.p.max_mmio_end;
        if let Some(entries) = self
            .prop("reg")
            .and_then(|r| tuples(r, [parent.address_cells, parent.size_cells]))
        {
            for [addr, size] in entries {
                if let Some(base) = self.translate(addr, depth - 1) {
                    max = max.max(
                        u64::try_from(u128::from(base).saturating_add(size)).unwrap_or(u64::MAX),
                    );
                }
            }
        }
        let me = self.frames[depth];
        if let Some(entries) = me
            .ranges
            .filter(|r| !r.is_empty())
            .and_then(|r| tuples(r, [me.address_cells, parent.address_cells, me.size_cells]))
        {
            for [_, parent_addr, size] in entries {
                if let Some(base) = self.translate(parent_addr, depth - 1) {
                    max = max.max(
                        u64::try_from(u128::from(base).saturating_add(size)).unwrap_or(u64::MAX),
                    );
                }
            }
        }
        self.p.max_mmio_end = max;
    }

    /// Interprets the node whose FDT_BEGIN_NODE is at `begin` and its subtree; returns
    /// the offset after its FDT_END_NODE.
    fn visit(&mut self, begin: usize, depth: usize) -> Res<usize> {
        if depth > MAX_DEPTH {
            return Err(DtbError::TooDeep);
        }
        let fdt = self.fdt;
        let node = fdt.node_at(begin)?;
        self.cur.clear();
        let mut off = node.body;
        loop {
            let (t, o) = fdt.next_token(off)?;
            if t != FDT_PROP {
                off = o;
                break;
            }
            let (p, next) = fdt.prop_at(o)?;
            push(&mut self.cur, p)?;
            off = next;
        }
        let (inherit_ac, inherit_sc) = if depth == 0 {
            (2, 1)
        } else {
            (
                self.frames[depth - 1].address_cells,
                self.frames[depth - 1].size_cells,
            )
        };
        let address_cells = match self.prop("#address-cells") {
            Some(v) => prop_u32(v, "#address-cells")?,
            None => inherit_ac,
        };
        let size_cells = match self.prop("#size-cells") {
            Some(v) => prop_u32(v, "#size-cells")?,
            None => inherit_sc,
        };
        if address_cells > 4 {
            return Err(DtbError::BadProperty("#address-cells"));
        }
        if size_cells > 4 {
            return Err(DtbError::BadProperty("#size-cells"));
        }
        self.frames[depth] = Frame {
            name: node.name,
            address_cells,
            size_cells,
            ranges: self.prop("ranges"),
        };
        if depth > 0 {
            self.interpret(node, depth)?;
        }
        // Children.
        loop {
            let (t, o) = fdt.next_token(off)?;
            match t {
                FDT_BEGIN_NODE => off = self.visit(o, depth + 1)?,
                FDT_END_NODE => return Ok(o + 4),
                _ => return Err(DtbError::Malformed("unexpected token in node")),
            }
        }
    }

    /// The current node's property `name`.
    fn prop(&self, name: &str) -> Option<&'a [u8]> {
        self.cur.iter().find(|p| p.name == name).map(|p| p.value)
    }

    /// The current node's `phandle` (or `linux,phandle`).
    fn phandle(&self) -> Res<Option<u32>> {
        self.prop("phandle")
            .or_else(|| self.prop("linux,phandle"))
            .map(|v| prop_u32(v, "phandle"))
            .transpose()
    }

    /// Records whatever `node` (at `depth` ≥ 1) tells us.
    fn interpret(&mut self, node: RawNode<'a>, depth: usize) -> Res<()> {
        let compatible = self.prop("compatible");
        let available = status_ok(self.prop("status"));
        let device_type = self
            .prop("device_type")
            .map(|v| prop_str(v, "device_type"))
            .transpose()?;
        let parent_name = self.frames[depth - 1].name;

        if let Some(v) = self.prop("#iommu-cells") {
            let cells = prop_u32(v, "#iommu-cells")?;
            if let Some(ph) = self.phandle()? {
                push(&mut self.iommu_cells, (ph, cells))?;
            }
        }

        if device_type == Some("memory") {
            if available {
                for r in self.regs(depth, "memory reg")?.unwrap_or_default() {
                    if r.size != 0 {
                        push(&mut self.p.ram, r)?;
                    }
                }
            }
            return Ok(());
        }

        if depth == 2 && parent_name == "reserved-memory" {
            // The binding requires an identity `ranges`, so the raw address is physical.
            if let Some(reg) = self.prop("reg") {
                let parent = self.frames[1];
                let what = "reserved-memory reg";
                for [addr, size] in tuples(reg, [parent.address_cells, parent.size_cells])
                    .ok_or(DtbError::BadProperty(what))?
                {
                    let base = u64::try_from(addr).map_err(|_| DtbError::BadProperty(what))?;
                    let r = range(base, size, what)?;
                    if r.size != 0 {
                        let no_map = self.prop("no-map").is_some();
                        push(
                            &mut self.p.reservations,
                            Reservation {
                                range: r,
                                source: ReservationSource::ReservedMemory { no_map },
                            },
                        )?;
                    }
                }
            }
            return Ok(());
        }

        if depth == 1 && node.name == "chosen" {
            if let Some(v) = self.prop("bootargs") {
                self.p.bootargs = Some(owned(prop_str(v, "/chosen/bootargs")?)?);
            }
            return Ok(());
        }

        if depth == 2 && parent_name == "chosen" {
            let kernel = strlist_has(compatible, "multiboot,kernel");
            let ramdisk = strlist_has(compatible, "multiboot,ramdisk");
            if kernel || ramdisk {
                // `/chosen` has no `ranges`: module addresses are physical as written,
                // in /chosen's (possibly inherited) cell sizes.
                let chosen = self.frames[1];
                let what = "module reg";
                let reg = self.prop("reg").ok_or(DtbError::BadProperty(what))?;
                let [addr, size] = tuples(reg, [chosen.address_cells, chosen.size_cells])
                    .and_then(|mut t| t.next())
                    .ok_or(DtbError::BadProperty(what))?;
                let base = u64::try_from(addr).map_err(|_| DtbError::BadProperty(what))?;
                let bootargs = match self.prop("bootargs") {
                    Some(v) => Some(owned(prop_str(v, "module bootargs")?)?),
                    None => None,
                };
                let module = Module {
                    range: range(base, size, what)?,
                    bootargs,
                };
                if kernel && self.p.kernel.is_none() {
                    self.p.kernel = Some(module);
                } else if ramdisk && !kernel && self.p.ramdisk.is_none() {
                    self.p.ramdisk = Some(module);
                }
            }
            return Ok(());
        }

        if depth == 2 && parent_name == "cpus" {
            let is_cpu = match device_type {
                Some(t) => t == "cpu",
                None => node.name.split('@').next() == Some("cpu"),
            };
            if is_cpu {
                self.cpu()?;
            }
            return Ok(());
        }

        self.note_mmio(depth);

        if self.p.console.is_none() && self.is_stdout(depth) {
            self.console(depth, compatible)?;
        }
        if self.p.psci.is_none()
            && (strlist_has(compatible, "arm,psci")
                || strlist_has(compatible, "arm,psci-0.2")
                || strlist_has(compatible, "arm,psci-1.0"))
        {
            self.psci(compatible)?;
        }
        if self.p.gic.is_none() && available {
            self.gic(depth, compatible)?;
        } else if available && strlist_has(compatible, "arm,gic-v3") {
            // Its redistributors would be DMA masters Warden does not emulate.
            return Err(DtbError::BadProperty("a second arm,gic-v3"));
        }
        if available && strlist_has(compatible, "arm,gic-v3-its") {
            // Attached to the GIC at the end: the node may come before the GIC's.
            let its = self.reg0(depth, "its reg")?;
            push(&mut self.its, its)?;
        }
        if strlist_has(compatible, "arm,smmu-v3") {
            let smmu = Smmu {
                regs: self.reg0(depth, "smmu reg")?,
                phandle: self.phandle()?,
                available,
                dma_coherent: self.prop("dma-coherent").is_some(),
            };
            push(&mut self.p.smmus, smmu)?;
        }
        if let Some(map) = self.prop("iommu-map") {
            let opt_u32 =
                |name: &'static str| self.prop(name).map(|v| prop_u32(v, name)).transpose();
            let bus_range = match self.prop("bus-range") {
                Some(v) if v.len() == 8 => Some((be32(v, 0).unwrap_or(0), be32(v, 4).unwrap_or(0))),
                Some(_) => return Err(DtbError::BadProperty("bus-range")),
                None => None,
            };
            let host = PciHost {
                ecam: self
                    .regs(depth, "pci host reg")
                    .ok()
                    .flatten()
                    .and_then(|r| r.first().copied()),
                domain: opt_u32("linux,pci-domain")?,
                bus_range,
                iommu_map_mask: opt_u32("iommu-map-mask")?,
                mem32: self.pci_mem32(depth),
            };
            push(&mut self.raw_maps, (map, self.p.pci_hosts.len()))?;
            push(&mut self.p.pci_hosts, host)?;
        }
        if let Some(iommus) = self.prop("iommus") {
            let device = self
                .regs(depth, "device reg")
                .ok()
                .flatten()
                .and_then(|r| r.first().map(|r| r.base));
            push(&mut self.raw_iommus, (iommus, device))?;
        }
        Ok(())
    }

    /// The first non-prefetchable 32-bit memory window in the `ranges` of the PCI host
    /// bridge at `depth`: an entry whose 3-cell PCI address has space code 0b10 in
    /// `phys.hi` (bits 25:24) and the prefetchable bit (30) clear, whose parent address
    /// translates to a CPU address, and which ends at or below 4 GiB on the PCI side.
    fn pci_mem32(&self, depth: usize) -> Option<PciWindow> {
        let me = self.frames[depth];
        let parent = self.frames[depth - 1];
        if me.address_cells != 3 {
            return None;
        }
        let ranges = me.ranges.filter(|r| !r.is_empty())?;
        for [child, parent_addr, size] in tuples(ranges, [3, parent.address_cells, me.size_cells])?
        {
            let hi = (child >> 64) as u32;
            if (hi >> 24) & 3 != 0b10 || hi & (1 << 30) != 0 {
                continue;
            }
            let pci_addr = child as u64;
            let (Some(cpu_addr), Ok(size)) =
                (self.translate(parent_addr, depth - 1), u64::try_from(size))
            else {
                continue;
            };
            let fits = size != 0
                && cpu_addr.checked_add(size).is_some()
                && pci_addr.checked_add(size).is_some_and(|end| end <= 1 << 32);
            if fits {
                return Some(PciWindow {
                    cpu_addr,
                    pci_addr,
                    size,
                });
            }
        }
        None
    }

    fn cpu(&mut self) -> Res<()> {
        let cpus = self.frames[1];
        let what = "cpu reg";
        let reg = self.prop("reg").ok_or(DtbError::BadProperty(what))?;
        let [mpidr, _] = tuples(reg, [cpus.address_cells, cpus.size_cells])
            .and_then(|mut t| t.next())
            .ok_or(DtbError::BadProperty(what))?;
        let mpidr = u64::try_from(mpidr).map_err(|_| DtbError::BadProperty(what))?;
        let enable_method = match self.prop("enable-method") {
            None => EnableMethod::None,
            Some(v) => match prop_str(v, "enable-method")? {
                "psci" => EnableMethod::Psci,
                "spin-table" => EnableMethod::SpinTable,
                _ => EnableMethod::Other,
            },
        };
        let release_addr = match self.prop("cpu-release-addr") {
            None => None,
            Some(v) => Some(
                read_cells(v, (v.len() / 4) as u32)
                    .filter(|_| v.len() == 4 || v.len() == 8)
                    .and_then(|a| u64::try_from(a).ok())
                    .ok_or(DtbError::BadProperty("cpu-release-addr"))?,
            ),
        };
        let cpu = Cpu {
            mpidr,
            enable_method,
            release_addr,
            available: status_ok(self.prop("status")),
        };
        push(&mut self.p.cpus, cpu)
    }

    fn console(&mut self, depth: usize, compatible: Option<&[u8]>) -> Res<()> {
        let Some(regs) = self.regs(depth, "console reg").ok().flatten() else {
            return Ok(());
        };
        let Some(&regs) = regs.first() else {
            return Ok(());
        };
        let kind = if strlist_has(compatible, "arm,pl011") {
            ConsoleKind::Pl011
        } else if ["ns16550a", "ns16550", "snps,dw-apb-uart"]
            .iter()
            .any(|c| strlist_has(compatible, c))
        {
            let cell = |name: &'static str, default: u32| match self.prop(name) {
                Some(v) => prop_u32(v, name),
                None => Ok(default),
            };
            ConsoleKind::Ns16550 {
                reg_shift: cell("reg-shift", 0)?,
                reg_io_width: cell("reg-io-width", 1)?,
            }
        } else {
            ConsoleKind::Unknown
        };
        let options = match self.stdout_options {
            Some(o) => Some(owned(o)?),
            None => None,
        };
        self.p.console = Some(Console {
            kind,
            regs,
            options,
        });
        Ok(())
    }

    fn psci(&mut self, compatible: Option<&[u8]>) -> Res<()> {
        let version = if strlist_has(compatible, "arm,psci-1.0") {
            PsciVersion::V1_0
        } else if strlist_has(compatible, "arm,psci-0.2") {
            PsciVersion::V0_2
        } else {
            PsciVersion::V0_1
        };
        let method = match self
            .prop("method")
            .map(|v| prop_str(v, "psci method"))
            .transpose()?
        {
            Some("smc") => PsciMethod::Smc,
            Some("hvc") => PsciMethod::Hvc,
            _ => return Err(DtbError::BadProperty("psci method")),
        };
        let id = |name: &'static str| self.prop(name).map(|v| prop_u32(v, name)).transpose();
        self.p.psci = Some(Psci {
            version,
            method,
            cpu_on: id("cpu_on")?,
            cpu_off: id("cpu_off")?,
            cpu_suspend: id("cpu_suspend")?,
            migrate: id("migrate")?,
        });
        Ok(())
    }

    fn gic(&mut self, depth: usize, compatible: Option<&[u8]>) -> Res<()> {
        let version = if strlist_has(compatible, "arm,gic-v3") {
            GicVersion::V3
        } else if ["arm,cortex-a15-gic", "arm,gic-400", "arm,cortex-a9-gic"]
            .iter()
            .any(|c| strlist_has(compatible, c))
        {
            GicVersion::V2
        } else {
            return Ok(());
        };
        let what = "gic reg";
        let regs = self.regs(depth, what)?.ok_or(DtbError::BadProperty(what))?;
        let mut it = regs.iter().copied();
        let dist = it.next().ok_or(DtbError::BadProperty(what))?;
        let mut redists = Vec::new();
        if version == GicVersion::V3 {
            let n = match self.prop("#redistributor-regions") {
                Some(v) => prop_u32(v, "#redistributor-regions")?,
                None => 1,
            };
            for _ in 0..n {
                push(&mut redists, it.next().ok_or(DtbError::BadProperty(what))?)?;
            }
        }
        let cpu_if = it.next();
        if version == GicVersion::V2 && cpu_if.is_none() {
            return Err(DtbError::BadProperty(what));
        }
        let hyp_if = it.next();
        let vcpu_if = it.next();
        // `interrupts = <type number flags>` in the GIC's own 3-cell format.
        let maintenance_intid =
            self.prop("interrupts")
                .and_then(|v| match (be32(v, 0)?, be32(v, 4)?) {
                    (0, n) => n.checked_add(32),
                    (1, n) => n.checked_add(16),
                    _ => None,
                });
        let redist_stride = match self.prop("redistributor-stride") {
            Some(v) if v.len() == 8 => be64(v, 0),
            Some(v) => Some(u64::from(prop_u32(v, "redistributor-stride")?)),
            None => None,
        }
        .filter(|&s| s != 0);
        self.p.gic = Some(Gic {
            version,
            dist,
            redists,
            cpu_if,
            hyp_if,
            vcpu_if,
            maintenance_intid,
            redist_stride,
            its: Vec::new(),
        });
        Ok(())
    }

    fn iommu_cells_of(&self, phandle: u32) -> Option<u32> {
        self.iommu_cells
            .iter()
            .find(|(p, _)| *p == phandle)
            .map(|(_, c)| *c)
    }

    /// Decodes `iommu-map` and `iommus` now that every `#iommu-cells` is known.
    fn finish(mut self) -> Res<Platform> {
        // An ITS is a DMA master Warden must emulate: one without a GICv3 to go with it
        // cannot be left to the host.
        match self.p.gic.as_mut().filter(|g| g.version == GicVersion::V3) {
            Some(g) => g.its = core::mem::take(&mut self.its),
            None if !self.its.is_empty() => {
                return Err(DtbError::BadProperty(
                    "arm,gic-v3-its without an arm,gic-v3",
                ));
            }
            None => {}
        }
        for &(map, host) in &self.raw_maps {
            let mut off = 0;
            while off < map.len() {
                let (Some(rid_base), Some(iommu)) = (be32(map, off), be32(map, off + 4)) else {
                    break;
                };
                let Some(cells) = self.iommu_cells_of(iommu) else {
                    break;
                };
                let spec = off + 8;
                let Some(len_off) = (cells as usize)
                    .checked_mul(4)
                    .and_then(|n| spec.checked_add(n))
                else {
                    break;
                };
                let Some(len) = be32(map, len_off) else {
                    break;
                };
                let sid_base = if cells == 0 {
                    0
                } else {
                    be32(map, spec).unwrap_or(0)
                };
                push(
                    &mut self.p.iommu_map,
                    IommuMapEntry {
                        host,
                        rid_base,
                        iommu,
                        sid_base,
                        len,
                    },
                )?;
                off = len_off + 4;
            }
        }
        for &(iommus, device) in &self.raw_iommus {
            let mut off = 0;
            while off < iommus.len() {
                let Some(iommu) = be32(iommus, off) else {
                    break;
                };
                let Some(cells) = self.iommu_cells_of(iommu) else {
                    break;
                };
                let sid = if cells == 0 {
                    0
                } else {
                    be32(iommus, off + 4).unwrap_or(0)
                };
                push(&mut self.p.iommus, DeviceStream { device, iommu, sid })?;
                let Some(next) = (cells as usize)
                    .checked_mul(4)
                    .and_then(|n| (off + 4).checked_add(n))
                else {
                    break;
                };
                off = next;
            }
        }
        Ok(self.p)
    }
}

// ---------------------------------------------------------------------------------------
// Host DTB editing
// ---------------------------------------------------------------------------------------

/// What [`build_host_dtb`] changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostDtbEdits<'e> {
    /// Ranges the host must not use: each becomes `/reserved-memory/warden@<hex base>`
    /// with `reg` and `no-map`. Bases must be distinct; sizes non-zero.
    pub carve_outs: &'e [PhysRange],
    /// New `/chosen/bootargs` (created or replaced); `None` leaves it as it is.
    pub bootargs: Option<&'e str>,
    /// Sets `/chosen/linux,initrd-start` and `linux,initrd-end` (2 cells each); `None`
    /// leaves any existing ones.
    pub initrd: Option<PhysRange>,
    /// Sets `status = "disabled"` on every `arm,smmu-v3` node.
    pub disable_smmus: bool,
    /// Drops the `/chosen/module@…` nodes (otherwise they are kept).
    pub drop_modules: bool,
    /// Sets `status = "disabled"` on these nodes, named by [`DeviceNode::offset`] (the
    /// devices [`crate::masters`] hides from the host).
    pub disable_nodes: &'e [usize],
    /// `Some(boot)`: sets `status = "disabled"` on every CPU node with
    /// `enable-method = "spin-table"` whose `reg` is not `boot` (the boot CPU's MPIDR).
    /// Such CPUs would start at the host's release address without entering Warden, so
    /// the host does not get them (see [`Platform::spin_table_release_pages`]).
    pub refuse_spin_table: Option<u64>,
}

impl<'e> HostDtbEdits<'e> {
    /// The usual edits for booting the host described by `platform`: the carve-outs,
    /// bootargs from the kernel module (an empty string if it has none; left alone if
    /// there is no kernel module), the ramdisk as initrd, SMMUs disabled, modules kept.
    pub fn for_host(platform: &'e Platform, carve_outs: &'e [PhysRange]) -> Self {
        Self {
            carve_outs,
            bootargs: platform
                .kernel
                .as_ref()
                .map(|k| k.bootargs.as_deref().unwrap_or("")),
            initrd: platform.ramdisk.as_ref().map(|r| r.range),
            disable_smmus: true,
            drop_modules: false,
            disable_nodes: &[],
            refuse_spin_table: Some(u64::from(platform.boot_cpuid_phys)),
        }
    }
}

/// Property names the edits may add.
const ADDED_NAMES: [&str; 9] = [
    "reg",
    "no-map",
    "#address-cells",
    "#size-cells",
    "ranges",
    "bootargs",
    "linux,initrd-start",
    "linux,initrd-end",
    "status",
];

/// Writes `orig` with `edits` applied into `out` and returns the number of bytes
/// written (the new blob's `totalsize`). The output has the standard layout (header,
/// memory reservations, structure, strings) with no free space; NOPs are dropped and
/// everything else (memory reservations, `boot_cpuid_phys`, node and property order,
/// string table) is kept. A new `/reserved-memory` gets the root's cell sizes (Linux
/// ignores a `/reserved-memory` whose cell sizes differ from the root's), which are
/// `#address-cells = 2`, `#size-cells = 2` on QEMU, and an empty `ranges`. Existing
/// `warden@…` children that clash with a new one are replaced.
///
/// # Errors
///
/// Any [`Platform::parse`] structural error for `orig`; [`DtbError::BadEdit`] for a
/// carve-out that is empty, duplicated or does not fit `/reserved-memory`'s cell sizes
/// (1 or 2 cells supported), or bootargs containing NUL; [`DtbError::NoSpace`] with the
/// needed size when `out` is too small (`out` may then hold partial output).
pub fn build_host_dtb(
    orig: &[u8],
    out: &mut [u8],
    edits: &HostDtbEdits<'_>,
) -> Result<usize, DtbError> {
    let fdt = Fdt::open(orig)?;
    let root = fdt.root()?;

    if edits.bootargs.is_some_and(|b| b.contains('\0')) {
        return Err(DtbError::BadEdit("bootargs contain NUL"));
    }
    for (i, c) in edits.carve_outs.iter().enumerate() {
        if c.size == 0 {
            return Err(DtbError::BadEdit("empty carve-out"));
        }
        if edits.carve_outs[..i].iter().any(|o| o.base == c.base) {
            return Err(DtbError::BadEdit("two carve-outs with the same base"));
        }
    }

    // Cell sizes for the carve-out `reg`s.
    let cells = |node: RawNode<'_>, name: &'static str, default: u32| match fdt.prop(node, name) {
        Some(v) => prop_u32(v, name),
        None => Ok(default),
    };
    let root_ac = cells(root, "#address-cells", 2)?;
    let root_sc = cells(root, "#size-cells", 1)?;
    let resmem = fdt.top("reserved-memory")?;
    let (res_ac, res_sc) = match resmem {
        Some(n) => (
            cells(n, "#address-cells", root_ac)?,
            cells(n, "#size-cells", root_sc)?,
        ),
        None => (root_ac, root_sc),
    };
    if !(1..=2).contains(&res_ac) || !(1..=2).contains(&res_sc) {
        return Err(DtbError::BadEdit("unsupported /reserved-memory cell sizes"));
    }
    let fits = |v: u64, cells: u32| cells == 2 || v <= u64::from(u32::MAX);
    for c in edits.carve_outs {
        if !fits(c.base.get(), res_ac) || !fits(c.size, res_sc) {
            return Err(DtbError::BadEdit(
                "carve-out does not fit /reserved-memory cells",
            ));
        }
    }

    // String table: the original, then whichever added names it lacks.
    let mut added_off = [0u32; ADDED_NAMES.len()];
    let mut extra_len = 0usize;
    let mut missing = [false; ADDED_NAMES.len()];
    let carving = !edits.carve_outs.is_empty();
    let used = |name: &str| match name {
        "reg" | "no-map" => carving,
        "#address-cells" | "#size-cells" | "ranges" => carving && resmem.is_none(),
        "bootargs" => edits.bootargs.is_some(),
        "linux,initrd-start" | "linux,initrd-end" => edits.initrd.is_some(),
        _ => {
            edits.disable_smmus
                || !edits.disable_nodes.is_empty()
                || edits.refuse_spin_table.is_some()
        }
    };
    for (i, name) in ADDED_NAMES.iter().enumerate() {
        if !used(name) {
            continue;
        }
        match find_string(fdt.strings, name) {
            Some(o) => added_off[i] = o,
            None => {
                missing[i] = true;
                added_off[i] = u32::try_from(fdt.strings.len() + extra_len)
                    .map_err(|_| DtbError::Malformed("strings block too large"))?;
                extra_len += name.len() + 1;
            }
        }
    }

    let mut e = Emitter {
        fdt,
        out: Out { buf: out, pos: 0 },
        edits,
        added_off,
        res_cells: (res_ac, res_sc),
        root_cells: (root_ac, root_sc),
    };
    // Header placeholder, then the reservation map.
    e.out.put(&[0; HEADER_SIZE]);
    let off_rsv = e.out.pos;
    for (a, s) in fdt.memreserve() {
        e.out.put(&a.to_be_bytes());
        e.out.put(&s.to_be_bytes());
    }
    e.out.put(&[0; 16]);
    let off_struct = e.out.pos;
    let (_, root_off) = fdt.next_token(0)?;
    e.node(root_off, 0, NodeRole::Root)?;
    e.out.u32(FDT_END);
    let size_struct = e.out.pos - off_struct;
    let off_strings = e.out.pos;
    e.out.put(fdt.strings);
    for (i, name) in ADDED_NAMES.iter().enumerate() {
        if missing[i] {
            e.out.put(name.as_bytes());
            e.out.put(&[0]);
        }
    }
    let size_strings = e.out.pos - off_strings;
    let total = e.out.pos;
    if total > e.out.buf.len() {
        return Err(DtbError::NoSpace { needed: total });
    }
    let as32 =
        |v: usize| u32::try_from(v).map_err(|_| DtbError::BadEdit("output larger than 4 GiB"));
    let header = [
        FDT_MAGIC,
        as32(total)?,
        as32(off_struct)?,
        as32(off_strings)?,
        as32(off_rsv)?,
        17,
        16,
        fdt.boot_cpuid(),
        as32(size_strings)?,
        as32(size_struct)?,
    ];
    for (i, v) in header.iter().enumerate() {
        e.out.buf[i * 4..i * 4 + 4].copy_from_slice(&v.to_be_bytes());
    }
    Ok(total)
}

/// The size [`build_host_dtb`] needs for these inputs.
///
/// # Errors
///
/// As [`build_host_dtb`], except [`DtbError::NoSpace`].
pub fn host_dtb_size(orig: &[u8], edits: &HostDtbEdits<'_>) -> Result<usize, DtbError> {
    match build_host_dtb(orig, &mut [], edits) {
        Err(DtbError::NoSpace { needed }) => Ok(needed),
        other => other,
    }
}

/// An offset in `block` where `name` followed by NUL starts (suffix sharing allowed).
fn find_string(block: &[u8], name: &str) -> Option<u32> {
    let n = name.as_bytes();
    block
        .windows(n.len() + 1)
        .position(|w| &w[..n.len()] == n && w[n.len()] == 0)
        .and_then(|p| u32::try_from(p).ok())
}

/// A bounded writer that keeps counting past the end of its buffer.
struct Out<'o> {
    buf: &'o mut [u8],
    pos: usize,
}

impl Out<'_> {
    fn put(&mut self, bytes: &[u8]) {
        let end = self.pos.saturating_add(bytes.len());
        if let Some(dst) = self.buf.get_mut(self.pos..end) {
            dst.copy_from_slice(bytes);
        }
        self.pos = end;
    }

    fn u32(&mut self, v: u32) {
        self.put(&v.to_be_bytes());
    }

    fn pad4(&mut self) {
        let pad = align4(self.pos) - self.pos;
        self.put(&[0; 3][..pad]);
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum NodeRole {
    Root,
    Chosen,
    ReservedMemory,
    Other,
}

struct Emitter<'a, 'o, 'e> {
    fdt: Fdt<'a>,
    out: Out<'o>,
    edits: &'e HostDtbEdits<'e>,
    added_off: [u32; ADDED_NAMES.len()],
    res_cells: (u32, u32),
    root_cells: (u32, u32),
}

/// A node name built without allocating.
struct NameBuf {
    buf: [u8; 32],
    len: usize,
}

impl fmt::Write for NameBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        self.buf
            .get_mut(self.len..end)
            .ok_or(fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

fn carve_out_name(c: &PhysRange) -> NameBuf {
    let mut n = NameBuf {
        buf: [0; 32],
        len: 0,
    };
    // "warden@" + at most 16 hex digits fits in 32 bytes.
    let _ = fmt::Write::write_fmt(&mut n, format_args!("warden@{:x}", c.base.get()));
    n
}

impl<'a> Emitter<'a, '_, '_> {
    /// A spin-table CPU node the host must not get (see [`HostDtbEdits::refuse_spin_table`]).
    fn refused_cpu(&self, node: RawNode<'a>) -> bool {
        let Some(boot) = self.edits.refuse_spin_table else {
            return false;
        };
        let is = |name, value| {
            self.fdt
                .prop(node, name)
                .is_some_and(|v| prop_str(v, name) == Ok(value))
        };
        let reg = self
            .fdt
            .prop(node, "reg")
            .and_then(|v| read_cells(v, (v.len() / 4) as u32))
            .filter(|_| matches!(self.fdt.prop(node, "reg").map(<[u8]>::len), Some(4 | 8)));
        is("device_type", "cpu")
            && is("enable-method", "spin-table")
            && reg != Some(u128::from(boot))
    }

    fn added(&self, name: &str) -> u32 {
        ADDED_NAMES
            .iter()
            .position(|n| *n == name)
            .map_or(0, |i| self.added_off[i])
    }

    fn begin(&mut self, name: &[u8]) {
        self.out.u32(FDT_BEGIN_NODE);
        self.out.put(name);
        self.out.put(&[0]);
        self.out.pad4();
    }

    fn prop(&mut self, nameoff: u32, value: &[u8]) {
        self.out.u32(FDT_PROP);
        self.out.u32(value.len() as u32);
        self.out.u32(nameoff);
        self.out.put(value);
        self.out.pad4();
    }

    fn prop_added(&mut self, name: &str, value: &[u8]) {
        let off = self.added(name);
        self.prop(off, value);
    }

    fn prop_str(&mut self, name: &str, value: &str) {
        let off = self.added(name);
        self.out.u32(FDT_PROP);
        self.out.u32(value.len() as u32 + 1);
        self.out.u32(off);
        self.out.put(value.as_bytes());
        self.out.put(&[0]);
        self.out.pad4();
    }

    /// `value` in `cells` (1 or 2) big-endian cells.
    fn cells(buf: &mut [u8; 16], len: &mut usize, value: u64, cells: u32) {
        if cells == 2 {
            buf[*len..*len + 8].copy_from_slice(&value.to_be_bytes());
            *len += 8;
        } else {
            buf[*len..*len + 4].copy_from_slice(&(value as u32).to_be_bytes());
            *len += 4;
        }
    }

    fn carve_out_nodes(&mut self) {
        let (ac, sc) = self.res_cells;
        for c in self.edits.carve_outs {
            let name = carve_out_name(c);
            self.begin(&name.buf[..name.len]);
            let mut reg = [0u8; 16];
            let mut len = 0;
            Self::cells(&mut reg, &mut len, c.base.get(), ac);
            Self::cells(&mut reg, &mut len, c.size, sc);
            self.prop_added("reg", &reg[..len]);
            self.prop_added("no-map", &[]);
            self.out.u32(FDT_END_NODE);
        }
    }

    fn chosen_additions(&mut self) {
        if let Some(b) = self.edits.bootargs {
            self.prop_str("bootargs", b);
        }
        if let Some(r) = self.edits.initrd {
            self.prop_added("linux,initrd-start", &r.base.get().to_be_bytes());
            self.prop_added("linux,initrd-end", &r.end().to_be_bytes());
        }
    }

    fn is_carve_out_name(&self, name: &str) -> bool {
        self.edits.carve_outs.iter().any(|c| {
            let n = carve_out_name(c);
            &n.buf[..n.len] == name.as_bytes()
        })
    }

    /// Emits the node whose FDT_BEGIN_NODE is at `begin` (edited according to `role`);
    /// returns the offset after its FDT_END_NODE in the input.
    fn node(&mut self, begin: usize, depth: usize, role: NodeRole) -> Res<usize> {
        if depth > MAX_DEPTH {
            return Err(DtbError::TooDeep);
        }
        let fdt = self.fdt;
        let node = fdt.node_at(begin)?;
        let smmu = (self.edits.disable_smmus
            && strlist_has(fdt.prop(node, "compatible"), "arm,smmu-v3"))
            || self.edits.disable_nodes.contains(&begin)
            || self.refused_cpu(node);
        self.begin(node.name.as_bytes());
        let mut off = node.body;
        // Properties.
        loop {
            let (t, o) = fdt.next_token(off)?;
            if t != FDT_PROP {
                off = o;
                break;
            }
            let (p, next) = fdt.prop_at(o)?;
            off = next;
            let replaced = match role {
                NodeRole::Chosen => {
                    (p.name == "bootargs" && self.edits.bootargs.is_some())
                        || ((p.name == "linux,initrd-start" || p.name == "linux,initrd-end")
                            && self.edits.initrd.is_some())
                }
                _ => smmu && p.name == "status",
            };
            if !replaced {
                // The strings block is copied verbatim, so name offsets stay valid.
                self.prop(p.nameoff, p.value);
            }
        }
        match role {
            NodeRole::Chosen => self.chosen_additions(),
            _ if smmu => self.prop_str("status", "disabled"),
            _ => {}
        }
        // Children.
        let mut have_chosen = false;
        let mut have_resmem = false;
        loop {
            let (t, o) = fdt.next_token(off)?;
            if t != FDT_BEGIN_NODE {
                if t != FDT_END_NODE {
                    return Err(DtbError::Malformed("unexpected token in node"));
                }
                off = o + 4;
                break;
            }
            let child = fdt.node_at(o)?;
            let child_role = match role {
                NodeRole::Root if child.name == "chosen" && !have_chosen => {
                    have_chosen = true;
                    NodeRole::Chosen
                }
                NodeRole::Root if child.name == "reserved-memory" && !have_resmem => {
                    have_resmem = true;
                    NodeRole::ReservedMemory
                }
                _ => NodeRole::Other,
            };
            let skip = match role {
                NodeRole::Chosen => {
                    self.edits.drop_modules && child.name.split('@').next() == Some("module")
                }
                NodeRole::ReservedMemory => self.is_carve_out_name(child.name),
                _ => false,
            };
            off = if skip {
                fdt.skip_node(o)?
            } else {
                self.node(o, depth + 1, child_role)?
            };
        }
        match role {
            NodeRole::ReservedMemory => self.carve_out_nodes(),
            NodeRole::Root => {
                if !have_resmem && !self.edits.carve_outs.is_empty() {
                    self.begin(b"reserved-memory");
                    let (ac, sc) = self.root_cells;
                    self.prop_added("#address-cells", &ac.to_be_bytes());
                    self.prop_added("#size-cells", &sc.to_be_bytes());
                    self.prop_added("ranges", &[]);
                    self.carve_out_nodes();
                    self.out.u32(FDT_END_NODE);
                }
                if !have_chosen && (self.edits.bootargs.is_some() || self.edits.initrd.is_some()) {
                    self.begin(b"chosen");
                    self.chosen_additions();
                    self.out.u32(FDT_END_NODE);
                }
            }
            _ => {}
        }
        self.out.u32(FDT_END_NODE);
        Ok(off)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::format;
    use std::process::Command;
    use std::string::ToString;
    use std::vec;

    use super::*;

    const GICV3: &[u8] = include_bytes!("../testdata/virt-gicv3.dtb");
    const GICV2: &[u8] = include_bytes!("../testdata/virt-gicv2.dtb");
    const BIGRAM: &[u8] = include_bytes!("../testdata/virt-bigram.dtb");
    const SYNTHETIC: &[u8] = include_bytes!("../testdata/synthetic.dtb");
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

    // --- A tiny FDT builder for hand-made edge cases -----------------------------------

    #[derive(Default)]
    struct Builder {
        structs: Vec<u8>,
        strings: Vec<u8>,
        rsv: Vec<(u64, u64)>,
    }

    impl Builder {
        fn begin(&mut self, name: &str) -> &mut Self {
            self.structs
                .extend_from_slice(&FDT_BEGIN_NODE.to_be_bytes());
            self.structs.extend_from_slice(name.as_bytes());
            self.structs.push(0);
            while !self.structs.len().is_multiple_of(4) {
                self.structs.push(0);
            }
            self
        }

        fn prop(&mut self, name: &str, value: &[u8]) -> &mut Self {
            let off = find_string(&self.strings, name).unwrap_or_else(|| {
                let o = self.strings.len() as u32;
                self.strings.extend_from_slice(name.as_bytes());
                self.strings.push(0);
                o
            });
            self.structs.extend_from_slice(&FDT_PROP.to_be_bytes());
            self.structs
                .extend_from_slice(&(value.len() as u32).to_be_bytes());
            self.structs.extend_from_slice(&off.to_be_bytes());
            self.structs.extend_from_slice(value);
            while !self.structs.len().is_multiple_of(4) {
                self.structs.push(0);
            }
            self
        }

        fn end(&mut self) -> &mut Self {
            self.structs.extend_from_slice(&FDT_END_NODE.to_be_bytes());
            self
        }

        fn finish(&self) -> Vec<u8> {
            let mut structs = self.structs.clone();
            structs.extend_from_slice(&FDT_END.to_be_bytes());
            let off_rsv = HEADER_SIZE;
            let off_struct = off_rsv + (self.rsv.len() + 1) * 16;
            let off_strings = off_struct + structs.len();
            let total = off_strings + self.strings.len();
            let mut out = Vec::new();
            for v in [
                FDT_MAGIC,
                total as u32,
                off_struct as u32,
                off_strings as u32,
                off_rsv as u32,
                17,
                16,
                0,
                self.strings.len() as u32,
                structs.len() as u32,
            ] {
                out.extend_from_slice(&v.to_be_bytes());
            }
            for &(a, s) in self.rsv.iter().chain([(0, 0)].iter()) {
                out.extend_from_slice(&a.to_be_bytes());
                out.extend_from_slice(&s.to_be_bytes());
            }
            out.extend_from_slice(&structs);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    fn cells(v: &[u32]) -> Vec<u8> {
        v.iter().flat_map(|c| c.to_be_bytes()).collect()
    }

    fn s(v: &str) -> Vec<u8> {
        let mut b = v.as_bytes().to_vec();
        b.push(0);
        b
    }

    /// A minimal board: no /chosen, no /reserved-memory, 1+1 root cells.
    fn minimal() -> Vec<u8> {
        let mut b = Builder::default();
        b.begin("")
            .prop("#address-cells", &cells(&[1]))
            .prop("#size-cells", &cells(&[1]))
            .begin("memory@10000000")
            .prop("device_type", &s("memory"))
            .prop("reg", &cells(&[0x1000_0000, 0x1000_0000]))
            .end()
            .begin("uart@1000")
            .prop("compatible", &s("vendor,unknown-uart"))
            .prop("reg", &cells(&[0x1000, 0x100]))
            .end()
            .end();
        b.finish()
    }

    /// A board whose secondary CPUs use spin tables (and one PSCI CPU).
    fn spin_table_board() -> Vec<u8> {
        let mut b = Builder::default();
        b.rsv.push((0x8800_0800, 0x2000));
        let spin = |b: &mut Builder, name: &str, reg: u32, release: u64, status: Option<&str>| {
            b.begin(name)
                .prop("device_type", &s("cpu"))
                .prop("reg", &cells(&[reg]))
                .prop("enable-method", &s("spin-table"))
                .prop("cpu-release-addr", &release.to_be_bytes());
            if let Some(st) = status {
                b.prop("status", &s(st));
            }
            b.end();
        };
        b.begin("")
            .prop("#address-cells", &cells(&[1]))
            .prop("#size-cells", &cells(&[1]))
            .begin("memory@80000000")
            .prop("device_type", &s("memory"))
            .prop("reg", &cells(&[0x8000_0000, 0x1000_0000]))
            .end()
            .begin("cpus")
            .prop("#address-cells", &cells(&[1]))
            .prop("#size-cells", &cells(&[0]));
        spin(&mut b, "cpu@0", 0, 0x8000_0ff8, None);
        spin(&mut b, "cpu@1", 1, 0x8000_0ff8, Some("okay"));
        // Straddles two pages.
        spin(&mut b, "cpu@2", 2, 0x8000_1ffc, None);
        // Disabled: quiescent, waiting on its release address all the same.
        spin(&mut b, "cpu@3", 3, 0x9000_0000, Some("disabled"));
        // Its release address lies in a reservation: firmware's holding pen.
        spin(&mut b, "cpu@4", 4, 0x8800_1010, None);
        b.begin("cpu@100")
            .prop("device_type", &s("cpu"))
            .prop("reg", &cells(&[0x100]))
            .prop("enable-method", &s("psci"))
            .end()
            .end()
            .end();
        b.finish()
    }

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

    // --- Host DTB editing --------------------------------------------------------------

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

    // --- Robustness --------------------------------------------------------------------

    /// xorshift64*: deterministic and dependency-free.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Parses and edits a possibly malformed blob; checks that whatever succeeds is
    /// consistent. Panics only on a real bug.
    fn exercise(blob: &[u8], out: &mut [u8]) {
        let parsed = Platform::parse(blob);
        let _ = device_nodes(blob);
        let carve = [r(0x7e00_0000, 0x10_0000)];
        let edits = HostDtbEdits {
            carve_outs: &carve,
            bootargs: Some("console=ttyAMA0"),
            initrd: Some(r(0x5800_0000, 0x2000)),
            disable_smmus: true,
            drop_modules: false,
            disable_nodes: &[0, 4, 8],
            refuse_spin_table: Some(0),
        };
        match build_host_dtb(blob, out, &edits) {
            Ok(n) => {
                assert!(
                    Fdt::open(&out[..n]).is_ok(),
                    "edited output must be a valid FDT"
                );
                if parsed.is_ok() {
                    let _ = Platform::parse(&out[..n]).expect("an edit of a parsable DTB parses");
                }
            }
            Err(e) => {
                if parsed.is_ok() {
                    // Only edit-specific failures are acceptable for a parsable blob.
                    assert!(
                        matches!(e, DtbError::BadEdit(_) | DtbError::NoSpace { .. }),
                        "{e:?}"
                    );
                }
            }
        }
    }

    /// Random mutations per DTB and kind; `WARDEN_DTB_FUZZ=<n>` runs more.
    fn fuzz_rounds() -> usize {
        std::env::var("WARDEN_DTB_FUZZ")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(400)
    }

    #[test]
    fn malformed_input_never_panics() {
        let rounds = fuzz_rounds();
        let mut rng = Rng(0x5eed_1234_abcd_ef01);
        let mut out = vec![0u8; 64 * 1024];
        for (_, dtb) in ALL {
            // Every truncation, with and without totalsize adjusted to match.
            for len in 0..dtb.len() {
                let mut b = dtb[..len].to_vec();
                assert!(Platform::parse(&b).is_err());
                if len >= 8 {
                    b[4..8].copy_from_slice(&(len as u32).to_be_bytes());
                    exercise(&b, &mut out);
                }
            }
            // Random byte flips anywhere, and concentrated in the header.
            for i in 0..rounds {
                let mut b = dtb.to_vec();
                for _ in 0..1 + rng.below(4) {
                    let pos = if i.is_multiple_of(4) {
                        rng.below(HEADER_SIZE)
                    } else {
                        rng.below(b.len())
                    };
                    b[pos] = rng.next() as u8;
                }
                exercise(&b, &mut out);
            }
            // Random 32-bit values in every header field and at structure offsets.
            for field in 1..10 {
                for v in [
                    0,
                    1,
                    4,
                    0x7fff_ffff,
                    0xffff_ffff,
                    dtb.len() as u32,
                    dtb.len() as u32 + 4,
                    rng.next() as u32,
                ] {
                    let mut b = dtb.to_vec();
                    b[field * 4..field * 4 + 4].copy_from_slice(&v.to_be_bytes());
                    exercise(&b, &mut out);
                }
            }
            for _ in 0..rounds {
                let mut b = dtb.to_vec();
                let pos = rng.below(b.len() / 4) * 4;
                let v = [0xffff_ffffu32, 0, 1, 2, 3, 4, 9, 0x8000_0000][rng.below(8)];
                b[pos..pos + 4].copy_from_slice(&v.to_be_bytes());
                exercise(&b, &mut out);
            }
        }
        // Random garbage behind a valid-looking header.
        for _ in 0..rounds {
            let len = HEADER_SIZE + rng.below(512);
            let mut b: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            b[0..4].copy_from_slice(&FDT_MAGIC.to_be_bytes());
            b[4..8].copy_from_slice(&(len as u32).to_be_bytes());
            b[20..24].copy_from_slice(&17u32.to_be_bytes());
            b[24..28].copy_from_slice(&16u32.to_be_bytes());
            exercise(&b, &mut out);
        }
    }

    /// A GICv3 board whose ITS node is `its_first` before the GIC node (a sibling), or a
    /// child of it; `v3 = false` makes the interrupt controller a GICv2.
    fn its_board(its_first: bool, v3: bool) -> Vec<u8> {
        let mut b = Builder::default();
        let its = |b: &mut Builder| {
            b.begin("its@8080000")
                .prop("compatible", &s("arm,gic-v3-its"))
                .prop("msi-controller", &[])
                .prop("reg", &cells(&[0x808_0000, 0x2_0000]))
                .end();
        };
        b.begin("")
            .prop("#address-cells", &cells(&[1]))
            .prop("#size-cells", &cells(&[1]))
            .begin("memory@40000000")
            .prop("device_type", &s("memory"))
            .prop("reg", &cells(&[0x4000_0000, 0x1000_0000]))
            .end();
        if its_first {
            its(&mut b);
        }
        b.begin("intc@8000000");
        if v3 {
            b.prop("compatible", &s("arm,gic-v3")).prop(
                "reg",
                &cells(&[0x800_0000, 0x1_0000, 0x80a_0000, 0xf6_0000]),
            );
        } else {
            b.prop("compatible", &s("arm,cortex-a15-gic"))
                .prop("reg", &cells(&[0x800_0000, 0x1_0000, 0x801_0000, 0x1_0000]));
        }
        b.prop("#address-cells", &cells(&[1]))
            .prop("#size-cells", &cells(&[1]))
            .prop("ranges", &[]);
        if !its_first {
            its(&mut b);
        }
        b.end().end();
        b.finish()
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
}
