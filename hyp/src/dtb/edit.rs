//! [`build_host_dtb`]: re-emits the DTB with Warden's edits (carve-outs as
//! `/reserved-memory` `no-map` children, `/chosen/bootargs` and `linux,initrd-*` from the
//! modules, SMMUs, hidden devices and spin-table CPUs disabled) into a caller-provided
//! buffer, without allocating.

use core::fmt;

use super::fdt::{
    FDT_BEGIN_NODE, FDT_END, FDT_END_NODE, FDT_MAGIC, FDT_PROP, Fdt, HEADER_SIZE, RawNode, align4,
};
use super::platform::Platform;
use super::props::{prop_str, prop_u32, read_cells, strlist_has};
use super::{DtbError, MAX_DEPTH, Res};
use crate::addr::PhysRange;

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
    /// Sets `status = "disabled"` on these nodes, named by [`DeviceNode::offset`](super::DeviceNode::offset) (the
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
pub(super) fn find_string(block: &[u8], name: &str) -> Option<u32> {
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
