//! Every node of the DTB as a flat, owned list ([`device_nodes`]): what
//! [`crate::masters`] needs to decide, node by node, whether the host may reach a
//! device — its path, `compatible`, `status`, `reg` and bus `ranges` windows translated
//! to CPU physical addresses, `iommus` / `iommu-map` with their targets, and where the
//! node sits in the structure block (so that [`super::build_host_dtb`] can disable it).
//!
//! Same conventions as [`super::Platform::parse`] (cell sizes inherited, `reg`
//! translated through every ancestor's `ranges`). Nodes that are not devices on the CPU's
//! buses are marked [`DeviceNode::system`] (memory, `/chosen`, `/cpus`,
//! `/reserved-memory`, `/aliases` and everything below them) or
//! [`DeviceNode::under_pci`] (nodes below a PCI host bridge: their fate is the bridge's).

use super::bus::{Frame, translate_up};
use super::fdt::{FDT_BEGIN_NODE, FDT_END_NODE, FDT_PROP, Fdt, be32};
use super::props::{owned, prop_str, prop_u32, push, range, status_ok, tuples};
use super::{DtbError, MAX_DEPTH, Res};
use crate::addr::PhysRange;
use alloc::string::String;
use alloc::vec::Vec;

/// One `iommus` specifier: the device masters as `sid` on the IOMMU with phandle `iommu`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IommuRef {
    /// Phandle of the IOMMU node.
    pub iommu: u32,
    /// The first specifier cell (the StreamID for an SMMUv3), 0 if there is none.
    pub sid: u32,
}

/// One `iommu-map` entry: requester IDs `rid_base .. rid_base + len` master as StreamIDs
/// `sid_base ..` of the IOMMU with phandle `iommu`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapEntry {
    /// First requester ID.
    pub rid_base: u32,
    /// Phandle of the IOMMU node.
    pub iommu: u32,
    /// StreamID of `rid_base`.
    pub sid_base: u32,
    /// Number of IDs.
    pub len: u32,
}

/// A DTB node, as [`device_nodes`] lists it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceNode {
    /// Full path (`/soc@f0000000/serial@2000`; the root is `/`).
    pub path: String,
    /// Offset of the node's `FDT_BEGIN_NODE` token in the structure block: what
    /// [`super::HostDtbEdits::disable_nodes`] names.
    pub offset: usize,
    /// Nesting depth (the root is 0).
    pub depth: usize,
    /// Index of the parent in the list (None for the root).
    pub parent: Option<usize>,
    /// The `compatible` strings, in order.
    pub compatible: Vec<String>,
    /// `status` is absent, `okay` or `ok`.
    pub available: bool,
    /// `phandle` (or `linux,phandle`).
    pub phandle: Option<u32>,
    /// `#iommu-cells`, if present.
    pub iommu_cells: Option<u32>,
    /// Memory, `/chosen`, `/cpus`, `/reserved-memory`, `/aliases` or below: not a device.
    pub system: bool,
    /// Below a PCI host bridge (`device_type = "pci"`): covered by the bridge.
    pub under_pci: bool,
    /// `device_type = "pci"`: a PCI host bridge.
    pub pci_bridge: bool,
    /// The node has a `reg` property.
    pub has_reg: bool,
    /// Every `reg` entry translated to a CPU physical address (empty if there is no `reg`
    /// or if some entry does not translate; see [`DeviceNode::cpu_addressable`]).
    pub regs: Vec<PhysRange>,
    /// `reg` is present, well formed, and every entry reaches the CPU.
    pub cpu_addressable: bool,
    /// This node's own non-empty `ranges` windows, as CPU physical ranges (those that
    /// translate): a bus's, or a PCI host bridge's memory and I/O windows.
    pub windows: Vec<PhysRange>,
    /// `iommus` is present.
    pub has_iommus: bool,
    /// The decoded `iommus` specifiers.
    pub iommus: Vec<IommuRef>,
    /// `iommu-map` is present.
    pub has_iommu_map: bool,
    /// The decoded `iommu-map` entries.
    pub iommu_map: Vec<MapEntry>,
    /// `iommus` or `iommu-map` could not be decoded completely (an unknown phandle, a
    /// target without `#iommu-cells`, a truncated entry).
    pub iommu_undecodable: bool,
    /// `iommu-map-mask`.
    pub iommu_map_mask: Option<u32>,
    /// `bus-range` (first, last).
    pub bus_range: Option<(u32, u32)>,
}

impl DeviceNode {
    /// Whether one of the `compatible` strings is `c`.
    pub fn is_compatible(&self, c: &str) -> bool {
        self.compatible.iter().any(|x| x == c)
    }

    /// The first `compatible` string, or "" if there is none.
    pub fn first_compatible(&self) -> &str {
        self.compatible.first().map_or("", |s| s.as_str())
    }
}

/// Lists every node of `dtb` in structure-block order (parents before children).
///
/// # Errors
///
/// The structural errors of [`super::Platform::parse`]; [`DtbError::BadProperty`] for a
/// cell count that cannot be decoded; [`DtbError::NoMemory`] if allocation fails. A
/// `reg`, `ranges`, `iommus` or `iommu-map` that cannot be decoded is not an error: the
/// node is recorded as not CPU-addressable or with [`DeviceNode::iommu_undecodable`].
pub fn device_nodes(dtb: &[u8]) -> Result<Vec<DeviceNode>, DtbError> {
    let fdt = Fdt::open(dtb)?;
    let mut w = Walk {
        fdt,
        frames: [Frame::default(); MAX_DEPTH + 1],
        out: Vec::new(),
        raw: Vec::new(),
    };
    let (_, root) = fdt.next_token(0)?;
    w.visit(root, 0, None)?;
    w.decode_iommus();
    Ok(w.out)
}

/// A node's raw `iommus` and `iommu-map` values, by node index.
type RawIommu<'a> = (usize, Option<&'a [u8]>, Option<&'a [u8]>);

struct Walk<'a> {
    fdt: Fdt<'a>,
    frames: [Frame<'a>; MAX_DEPTH + 1],
    out: Vec<DeviceNode>,
    /// (node index, raw `iommus`, raw `iommu-map`), decoded once every `#iommu-cells`
    /// is known.
    raw: Vec<RawIommu<'a>>,
}

impl<'a> Walk<'a> {
    /// Translates `addr` in the child address space of the node at `level` to a CPU
    /// physical address (as `Scan::translate`).
    fn translate(&self, addr: u128, level: usize) -> Option<u64> {
        translate_up(&self.frames, addr, level)
    }

    fn visit(&mut self, begin: usize, depth: usize, parent: Option<usize>) -> Res<usize> {
        if depth > MAX_DEPTH {
            return Err(DtbError::TooDeep);
        }
        let fdt = self.fdt;
        let node = fdt.node_at(begin)?;
        let mut props = Vec::new();
        let mut off = node.body;
        loop {
            let (t, o) = fdt.next_token(off)?;
            if t != FDT_PROP {
                off = o;
                break;
            }
            let (p, next) = fdt.prop_at(o)?;
            push(&mut props, p)?;
            off = next;
        }
        let prop = |name: &str| props.iter().find(|p| p.name == name).map(|p| p.value);
        let (inherit_ac, inherit_sc) = if depth == 0 {
            (2, 1)
        } else {
            (
                self.frames[depth - 1].address_cells,
                self.frames[depth - 1].size_cells,
            )
        };
        let address_cells = match prop("#address-cells") {
            Some(v) => prop_u32(v, "#address-cells")?,
            None => inherit_ac,
        };
        let size_cells = match prop("#size-cells") {
            Some(v) => prop_u32(v, "#size-cells")?,
            None => inherit_sc,
        };
        if address_cells > 4 || size_cells > 4 {
            return Err(DtbError::BadProperty("#address-cells / #size-cells"));
        }
        self.frames[depth] = Frame {
            name: node.name,
            address_cells,
            size_cells,
            ranges: prop("ranges"),
        };

        let device_type = prop("device_type").and_then(|v| prop_str(v, "device_type").ok());
        let parent_node = parent.and_then(|p| self.out.get(p));
        let mut path = String::new();
        match parent_node {
            None => path.push('/'),
            Some(p) => {
                let name = if p.depth == 0 { "" } else { p.path.as_str() };
                path.try_reserve(name.len() + 1 + node.name.len())
                    .map_err(|_| DtbError::NoMemory)?;
                path.push_str(name);
                path.push('/');
                path.push_str(node.name);
            }
        }
        let top_system = depth == 1
            && matches!(
                node.name,
                "chosen" | "cpus" | "reserved-memory" | "aliases" | "__symbols__"
            );
        let system =
            parent_node.is_some_and(|p| p.system) || top_system || device_type == Some("memory");
        let under_pci = parent_node.is_some_and(|p| p.under_pci || p.pci_bridge);
        let pci_bridge = matches!(device_type, Some("pci" | "pciex"));

        let mut compatible = Vec::new();
        if let Some(v) = prop("compatible") {
            for s in v.split(|&b| b == 0).filter(|s| !s.is_empty()) {
                if let Ok(s) = core::str::from_utf8(s) {
                    push(&mut compatible, owned(s)?)?;
                }
            }
        }
        let phandle = prop("phandle")
            .or_else(|| prop("linux,phandle"))
            .and_then(|v| prop_u32(v, "phandle").ok());
        let iommu_cells = prop("#iommu-cells").and_then(|v| prop_u32(v, "#iommu-cells").ok());

        // `reg`, translated.
        let mut regs = Vec::new();
        let reg = prop("reg");
        let mut cpu_addressable = false;
        if let (Some(reg), true) = (reg, depth > 0) {
            let pf = self.frames[depth - 1];
            if let Some(entries) = tuples(reg, [pf.address_cells, pf.size_cells]) {
                cpu_addressable = true;
                for [addr, size] in entries {
                    let Some(base) = self.translate(addr, depth - 1) else {
                        cpu_addressable = false;
                        break;
                    };
                    match range(base, size, "reg") {
                        Ok(r) if r.size != 0 => push(&mut regs, r)?,
                        Ok(_) => {}
                        Err(_) => {
                            cpu_addressable = false;
                            break;
                        }
                    }
                }
            }
            if !cpu_addressable {
                regs.clear();
            }
        }
        // This node's own `ranges` windows, as CPU addresses.
        let mut windows = Vec::new();
        if let (Some(r), true) = (prop("ranges").filter(|r| !r.is_empty()), depth > 0) {
            let pf = self.frames[depth - 1];
            if let Some(entries) = tuples(r, [address_cells, pf.address_cells, size_cells]) {
                for [_, parent_addr, size] in entries {
                    if let Some(base) = self.translate(parent_addr, depth - 1)
                        && let Ok(w) = range(base, size, "ranges")
                        && w.size != 0
                    {
                        push(&mut windows, w)?;
                    }
                }
            }
        }
        let bus_range = prop("bus-range")
            .filter(|v| v.len() == 8)
            .and_then(|v| Some((be32(v, 0)?, be32(v, 4)?)));
        let iommus = prop("iommus");
        let map = prop("iommu-map");
        let index = self.out.len();
        let n = DeviceNode {
            path,
            offset: begin,
            depth,
            parent,
            compatible,
            available: status_ok(prop("status")),
            phandle,
            iommu_cells,
            system,
            under_pci,
            pci_bridge,
            has_reg: reg.is_some(),
            regs,
            cpu_addressable,
            windows,
            has_iommus: iommus.is_some(),
            iommus: Vec::new(),
            has_iommu_map: map.is_some(),
            iommu_map: Vec::new(),
            iommu_undecodable: false,
            iommu_map_mask: prop("iommu-map-mask").and_then(|v| prop_u32(v, "mask").ok()),
            bus_range,
        };
        push(&mut self.out, n)?;
        if iommus.is_some() || map.is_some() {
            push(&mut self.raw, (index, iommus, map))?;
        }
        // Children.
        loop {
            let (t, o) = fdt.next_token(off)?;
            match t {
                FDT_BEGIN_NODE => off = self.visit(o, depth + 1, Some(index))?,
                FDT_END_NODE => return Ok(o + 4),
                _ => return Err(DtbError::Malformed("unexpected token in node")),
            }
        }
    }

    fn cells_of(&self, phandle: u32) -> Option<u32> {
        self.out
            .iter()
            .find(|n| n.phandle == Some(phandle))
            .and_then(|n| n.iommu_cells)
    }

    /// Decodes every `iommus` and `iommu-map`. Allocation failures leave the node
    /// marked undecodable (the safe side).
    fn decode_iommus(&mut self) {
        let raw = core::mem::take(&mut self.raw);
        for (index, iommus, map) in raw {
            let mut refs = Vec::new();
            let mut entries = Vec::new();
            let mut bad = false;
            if let Some(v) = iommus {
                let mut off = 0;
                while off < v.len() {
                    let Some(iommu) = be32(v, off) else {
                        bad = true;
                        break;
                    };
                    let Some(cells) = self.cells_of(iommu) else {
                        bad = true;
                        break;
                    };
                    let next = off + 4 + cells as usize * 4;
                    if cells > 4 || next > v.len() {
                        bad = true;
                        break;
                    }
                    let sid = if cells == 0 {
                        0
                    } else {
                        be32(v, off + 4).unwrap_or(0)
                    };
                    if push(&mut refs, IommuRef { iommu, sid }).is_err() {
                        bad = true;
                        break;
                    }
                    off = next;
                }
                if v.is_empty() {
                    bad = true;
                }
            }
            if let Some(v) = map {
                let mut off = 0;
                while off < v.len() {
                    let (Some(rid_base), Some(iommu)) = (be32(v, off), be32(v, off + 4)) else {
                        bad = true;
                        break;
                    };
                    let Some(cells) = self.cells_of(iommu) else {
                        bad = true;
                        break;
                    };
                    if cells > 4 {
                        bad = true;
                        break;
                    }
                    let len_off = off + 8 + cells as usize * 4;
                    let Some(len) = be32(v, len_off) else {
                        bad = true;
                        break;
                    };
                    let sid_base = if cells == 0 {
                        0
                    } else {
                        be32(v, off + 8).unwrap_or(0)
                    };
                    let e = MapEntry {
                        rid_base,
                        iommu,
                        sid_base,
                        len,
                    };
                    if push(&mut entries, e).is_err() {
                        bad = true;
                        break;
                    }
                    off = len_off + 4;
                }
                if v.is_empty() {
                    bad = true;
                }
            }
            if let Some(n) = self.out.get_mut(index) {
                n.iommus = refs;
                n.iommu_map = entries;
                n.iommu_undecodable = bad;
            }
        }
    }
}
