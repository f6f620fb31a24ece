//! Who may master DMA: one decision per device node of the DTB, made in this one place,
//! from the DTB alone (plus which SMMUs Warden actually drives and the integrator's
//! `warden.passthrough=` list). Invariant I1 needs it: a device that reads or writes
//! memory without going through an SMMU Warden controls can reach any page, Warden's
//! included, whatever the host stage-2 says.
//!
//! [`decide`] gives every device node with a CPU-addressable `reg` (and every PCI host
//! bridge) a [`Decision`]:
//!
//! - [`Decision::Warden`]: an SMMUv3 (`arm,smmu-v3`), live or not. Its frame is never in
//!   the host stage-2 and its node is disabled for the host. A disabled SMMU, or one that
//!   failed to probe, may sit in bypass after reset: Warden puts it in abort
//!   (`GBPA.ABORT`, `SMMUEN = 0`) where it can, and every device behind it is hidden.
//! - [`Decision::Translated`]: every `iommus` specifier and every requester ID of its
//!   `iommu-map` (a PCI host bridge's whole `bus-range`) lead to a live SMMU.
//! - [`Decision::Emulated`]: the GICv3 (its redistributors walk LPI tables) and its ITS,
//!   when the GIC code traps them ([`emulated_gic`]): reachable, with the registers that
//!   hold table addresses trapped by Warden (the GIC code decides which pages leave the
//!   host stage-2). Any other GICv3 or ITS is hidden.
//! - [`Decision::NoDma`]: known not to master DMA (PrimeCell UART/RTC/GPIO, 16550
//!   UARTs, CFI flash, GICv2 distributor and CPU interface, GICv2m frames, memory-mapped
//!   timers, watchdogs).
//! - [`Decision::Hidden`]: everything else — known masters outside every SMMU (fw_cfg's
//!   DMA interface, virtio-mmio transports, PCIe bridges without a complete `iommu-map`,
//!   SMMU PMCGs, whose MSIs are not translated, devices behind an SMMU that is not live),
//!   devices disabled in the DTB, and any device Warden does not know (default deny).
//!   Hidden nodes get `status = "disabled"` in the host DTB and their `reg` (and a
//!   bridge's `ranges` windows) leave the host stage-2, whole 4 KiB pages.
//! - [`Decision::Passthrough`]: a node the integrator listed in `warden.passthrough=`
//!   that would otherwise be hidden: reachable and UNPROTECTED.
//!
//! Pages are the unit of the host stage-2: a node that is reachable but shares a page
//! with a hidden one becomes hidden too ([`Verdict::shares_with`]), repeated until
//! nothing changes; emulated and passed-through nodes keep their decision but lose the
//! shared page ([`Masters::notes`]). [`Masters::host_mmio`] is the result: the only
//! non-RAM ranges the host stage-2 maps (default deny also for address space no node
//! describes).

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::addr::PhysRange;
use crate::dtb::{DeviceNode, DtbError};
use host_abi::PAGE;

/// What the host gets of a device node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Its DMA goes through a live SMMU: mapped for the host.
    Translated,
    /// Trapped and emulated by Warden (GICv3 redistributors, ITS): mapped as the GIC
    /// code decides.
    Emulated,
    /// Disabled for the host and absent from its stage-2.
    Hidden,
    /// Known not to master DMA: mapped for the host.
    NoDma,
    /// An SMMU: Warden's alone.
    Warden,
    /// The integrator's override (`warden.passthrough=`): mapped, UNPROTECTED.
    Passthrough,
}

impl Decision {
    /// Whether the host stage-2 maps the node's registers.
    pub fn reachable(self) -> bool {
        !matches!(self, Self::Hidden | Self::Warden)
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Translated => "translated",
            Self::Emulated => "emulated",
            Self::Hidden => "hidden",
            Self::NoDma => "no-dma",
            Self::Warden => "warden",
            Self::Passthrough => "PASSTHROUGH, UNPROTECTED",
        })
    }
}

/// The decision for one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Index of the node in [`Masters::nodes`].
    pub node: usize,
    /// What the host gets.
    pub decision: Decision,
    /// Why, in a few words.
    pub why: &'static str,
    /// Hidden because it shares a page with this hidden node (an index in
    /// [`Masters::nodes`]).
    pub shares_with: Option<usize>,
}

/// Something the integrator should know about the decisions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Note {
    /// A `warden.passthrough=` path that names no node with a decision.
    PassthroughUnknown(String),
    /// A `warden.passthrough=` path naming a node that is reachable anyway.
    PassthroughNeedless(usize),
    /// A `warden.passthrough=` path naming an SMMU: refused.
    PassthroughRefused(usize),
    /// A reachable node (emulated or passed through) shares a page with a hidden one:
    /// the page stays out of the host stage-2.
    PageLost {
        /// The reachable node.
        node: usize,
        /// The hidden node.
        hidden: usize,
    },
}

/// Every decision, with the nodes they are about.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Masters {
    /// Every node of the DTB ([`crate::dtb::device_nodes`]).
    pub nodes: Vec<DeviceNode>,
    /// One per device node, in DTB order.
    pub verdicts: Vec<Verdict>,
    /// Warnings for the banner.
    pub notes: Vec<Note>,
}

/// Compatible strings of devices known not to master DMA.
const NO_DMA: &[&str] = &[
    "arm,pl011",
    "arm,sbsa-uart",
    "arm,pl031",
    "arm,pl061",
    "ns16550a",
    "ns16550",
    "snps,dw-apb-uart",
    "cfi-flash",
    "arm,cortex-a15-gic",
    "arm,cortex-a9-gic",
    "arm,gic-400",
    "arm,gic-v2m-frame",
    "arm,armv7-timer-mem",
    "arm,sbsa-gwdt",
    "arm,sp805",
];

/// GICv2 compatibles (distributor + CPU interface: no DMA).
const GICV2: &[&str] = &["arm,cortex-a15-gic", "arm,cortex-a9-gic", "arm,gic-400"];

/// Decides for every device node of `nodes`.
///
/// `live_smmus`: the register frame bases of the SMMUs Warden drives (probed and taken
/// over); every other `arm,smmu-v3` node is not live. `emulated_gic`: the first `reg`
/// bases of the GICv3 and ITS nodes whose registers Warden traps ([`emulated_gic`]);
/// any other `arm,gic-v3` or `arm,gic-v3-its` node is a master nobody checks.
/// `passthrough`: node paths from `warden.passthrough=` (exact full paths, a trailing
/// `/` ignored).
///
/// # Errors
///
/// [`DtbError::NoMemory`] if allocation fails.
pub fn decide(
    nodes: Vec<DeviceNode>,
    live_smmus: &[u64],
    emulated_gic: &[u64],
    passthrough: &[&str],
) -> Result<Masters, DtbError> {
    let mut m = Masters {
        nodes,
        verdicts: Vec::new(),
        notes: Vec::new(),
    };
    for (i, n) in m.nodes.iter().enumerate() {
        if !is_device(n) {
            continue;
        }
        let (decision, why) = first_decision(&m.nodes, n, live_smmus, emulated_gic);
        push(
            &mut m.verdicts,
            Verdict {
                node: i,
                decision,
                why,
                shares_with: None,
            },
        )?;
    }
    for &p in passthrough {
        let p = if p.len() > 1 {
            p.strip_suffix('/').unwrap_or(p)
        } else {
            p
        };
        let Some(v) = m.verdicts.iter_mut().find(|v| m.nodes[v.node].path == p) else {
            let mut s = String::new();
            s.try_reserve(p.len()).map_err(|_| DtbError::NoMemory)?;
            s.push_str(p);
            push(&mut m.notes, Note::PassthroughUnknown(s))?;
            continue;
        };
        match v.decision {
            Decision::Hidden => {
                v.decision = Decision::Passthrough;
                v.why = "warden.passthrough=";
            }
            Decision::Warden => push(&mut m.notes, Note::PassthroughRefused(v.node))?,
            Decision::Passthrough => {}
            _ => push(&mut m.notes, Note::PassthroughNeedless(v.node))?,
        }
    }
    m.settle_shared_pages()?;
    Ok(m)
}

fn push<T>(v: &mut Vec<T>, item: T) -> Result<(), DtbError> {
    v.try_reserve(1).map_err(|_| DtbError::NoMemory)?;
    v.push(item);
    Ok(())
}

/// Whether the node gets a decision: a device on the CPU's buses with registers there,
/// or a PCI host bridge.
fn is_device(n: &DeviceNode) -> bool {
    n.depth > 0
        && !n.system
        && !n.under_pci
        && ((n.cpu_addressable && !n.regs.is_empty()) || (n.pci_bridge && !n.windows.is_empty()))
}

/// The `arm,smmu-v3` node with this phandle, if it is live.
fn live_smmu(nodes: &[DeviceNode], phandle: u32, live: &[u64]) -> bool {
    nodes.iter().any(|n| {
        n.phandle == Some(phandle)
            && n.is_compatible("arm,smmu-v3")
            && n.regs.first().is_some_and(|r| live.contains(&r.base.get()))
    })
}

/// Whether every requester ID of the bridge's bus range maps to a live SMMU.
fn rids_covered(nodes: &[DeviceNode], n: &DeviceNode, live: &[u64]) -> bool {
    let (first, last) = n.bus_range.unwrap_or((0, 0xff));
    if first > last || last > 0xff {
        return false;
    }
    let mask = n.iommu_map_mask.unwrap_or(u32::MAX);
    let lo = first << 8;
    let hi = (last << 8) | 0xff;
    // The entries that lead to a live SMMU, found once (a DTB may have many entries and
    // many nodes; the masked check below visits every requester ID).
    let mut entries: Vec<&crate::dtb::MapEntry> = Vec::new();
    if entries.try_reserve(n.iommu_map.len()).is_err() {
        return false;
    }
    entries.extend(
        n.iommu_map
            .iter()
            .filter(|e| live_smmu(nodes, e.iommu, live)),
    );
    // Fast path: no mask, and the live entries' intervals cover [lo, hi].
    if mask & 0xffff == 0xffff {
        let mut at = lo;
        loop {
            let Some(e) = entries.iter().find(|e| {
                e.rid_base <= at && u64::from(at) < u64::from(e.rid_base) + u64::from(e.len)
            }) else {
                return false;
            };
            let end = u64::from(e.rid_base) + u64::from(e.len);
            if end > u64::from(hi) {
                return true;
            }
            at = end as u32;
        }
    }
    (lo..=hi).all(|rid| {
        let id = rid & mask;
        entries
            .iter()
            .any(|e| e.rid_base <= id && u64::from(id) < u64::from(e.rid_base) + u64::from(e.len))
    })
}

/// The first `reg` bases of the GIC nodes Warden emulates: the GICv3 distributor the
/// platform description found (the one whose redistributors `src/gic.rs` traps) and its
/// ITSes. Nothing for a GICv2.
///
/// # Errors
///
/// [`DtbError::NoMemory`] if allocation fails.
pub fn emulated_gic(gic: Option<&crate::dtb::Gic>) -> Result<Vec<u64>, DtbError> {
    let mut out = Vec::new();
    if let Some(g) = gic.filter(|g| g.version == crate::dtb::GicVersion::V3) {
        push(&mut out, g.dist.base.get())?;
        for its in &g.its {
            push(&mut out, its.base.get())?;
        }
    }
    Ok(out)
}

fn first_decision(
    nodes: &[DeviceNode],
    n: &DeviceNode,
    live: &[u64],
    gic: &[u64],
) -> (Decision, &'static str) {
    if n.is_compatible("arm,smmu-v3") {
        let is_live = n.regs.first().is_some_and(|r| live.contains(&r.base.get()));
        return (
            Decision::Warden,
            if is_live {
                "SMMUv3 driven by Warden"
            } else if !n.available {
                "SMMUv3 disabled in the DTB: put in abort, devices behind it hidden"
            } else {
                "SMMUv3 Warden could not take over: left aborting, devices behind it hidden"
            },
        );
    }
    if n.is_compatible("arm,smmu-v3-pmcg") {
        return (
            Decision::Hidden,
            "SMMU PMCG: its MSI writes are not translated",
        );
    }
    if !n.available {
        return (Decision::Hidden, "disabled in the DTB");
    }
    if n.has_iommus || n.has_iommu_map || n.pci_bridge {
        if n.iommu_undecodable {
            return (
                Decision::Hidden,
                "iommus/iommu-map cannot be decoded: DMA may bypass every SMMU",
            );
        }
        if n.has_iommus && !n.iommus.iter().all(|r| live_smmu(nodes, r.iommu, live)) {
            return (
                Decision::Hidden,
                "iommus names an IOMMU that Warden does not drive",
            );
        }
        if n.pci_bridge && !n.has_iommu_map {
            return (
                Decision::Hidden,
                "PCIe host bridge without iommu-map: its DMA bypasses every SMMU",
            );
        }
        if n.has_iommu_map && !rids_covered(nodes, n, live) {
            return (
                Decision::Hidden,
                "iommu-map leaves requester IDs outside every live SMMU",
            );
        }
        return (Decision::Translated, "behind an SMMU Warden drives");
    }
    let is_emulated = n.regs.first().is_some_and(|r| gic.contains(&r.base.get()));
    if (n.is_compatible("arm,gic-v3") || n.is_compatible("arm,gic-v3-its")) && !is_emulated {
        return (
            Decision::Hidden,
            "GICv3 or ITS that Warden does not emulate: its table walks bypass every SMMU",
        );
    }
    if n.is_compatible("arm,gic-v3") {
        return (
            Decision::Emulated,
            "GICv3: redistributor LPI tables trapped by Warden",
        );
    }
    if n.is_compatible("arm,gic-v3-its") {
        return (
            Decision::Emulated,
            "GICv3 ITS: table and command queue registers trapped by Warden",
        );
    }
    if GICV2.iter().any(|c| n.is_compatible(c)) {
        return (Decision::NoDma, "GICv2 distributor and CPU interface");
    }
    if NO_DMA.iter().any(|c| n.is_compatible(c)) {
        return (Decision::NoDma, "known not to master DMA");
    }
    if n.is_compatible("qemu,fw-cfg-mmio") {
        return (
            Decision::Hidden,
            "fw_cfg DMA interface: writes anywhere, bypassing every SMMU",
        );
    }
    if n.is_compatible("virtio,mmio") {
        return (
            Decision::Hidden,
            "virtio-mmio transport without iommus: its DMA bypasses every SMMU",
        );
    }
    (
        Decision::Hidden,
        "not known to be DMA-incapable and behind no SMMU",
    )
}

/// `r` widened to whole pages (saturating at the top of the address space).
pub fn page_round(r: PhysRange) -> PhysRange {
    let base = r.base.get() & !(PAGE - 1);
    let end = r
        .end()
        .checked_next_multiple_of(PAGE)
        .unwrap_or(!(PAGE - 1));
    PhysRange::new(base, end - base)
}

impl Masters {
    /// The node a verdict is about.
    pub fn node(&self, v: &Verdict) -> &DeviceNode {
        &self.nodes[v.node]
    }

    /// What the host stage-2 must account for: `reg`, plus a PCI host bridge's `ranges`
    /// windows (its ECAM and the windows its BARs live in; a node with an `iommu-map`
    /// counts as a bridge).
    pub fn regions(&self, v: &Verdict) -> impl Iterator<Item = PhysRange> + '_ {
        let n = &self.nodes[v.node];
        let bridge = n.pci_bridge || n.has_iommu_map;
        let windows: &[PhysRange] = if bridge { &n.windows } else { &[] };
        n.regs.iter().chain(windows.iter()).copied()
    }

    fn shares_page(&self, a: &Verdict, b: &Verdict) -> bool {
        self.regions(a).any(|ra| {
            let ra = page_round(ra);
            self.regions(b).any(|rb| page_round(rb).overlaps(&ra))
        })
    }

    /// Hides every translated or no-DMA node that shares a page with a hidden one (or
    /// with an SMMU's frame), until nothing changes; notes the emulated and
    /// passed-through ones.
    fn settle_shared_pages(&mut self) -> Result<(), DtbError> {
        // One pass hides every node that shares a page with one hidden before the pass;
        // passes repeat until none hides anything (each pass is quadratic, and a board's
        // DTB has hundreds of nodes).
        let mut changes: Vec<(usize, usize)> = Vec::new();
        loop {
            changes.clear();
            for (i, v) in self.verdicts.iter().enumerate() {
                if !matches!(v.decision, Decision::Translated | Decision::NoDma) {
                    continue;
                }
                if let Some(h) = self
                    .verdicts
                    .iter()
                    .filter(|h| !h.decision.reachable())
                    .find(|h| self.shares_page(v, h))
                {
                    push(&mut changes, (i, h.node))?;
                }
            }
            if changes.is_empty() {
                break;
            }
            for &(i, hidden) in &changes {
                let v = &mut self.verdicts[i];
                v.decision = Decision::Hidden;
                v.why = "shares a 4 KiB page with a hidden device";
                v.shares_with = Some(hidden);
            }
        }
        for v in &self.verdicts {
            if !matches!(v.decision, Decision::Emulated | Decision::Passthrough) {
                continue;
            }
            for h in self.verdicts.iter().filter(|h| !h.decision.reachable()) {
                if self.shares_page(v, h) {
                    push(
                        &mut self.notes,
                        Note::PageLost {
                            node: v.node,
                            hidden: h.node,
                        },
                    )?;
                }
            }
        }
        Ok(())
    }

    /// The verdict of the node with this path.
    pub fn by_path(&self, path: &str) -> Option<&Verdict> {
        self.verdicts
            .iter()
            .find(|v| self.nodes[v.node].path == path)
    }

    /// The structure-block offsets of the hidden nodes, for
    /// [`crate::dtb::HostDtbEdits::disable_nodes`].
    ///
    /// # Errors
    ///
    /// [`DtbError::NoMemory`] if allocation fails.
    pub fn hidden_offsets(&self) -> Result<Vec<usize>, DtbError> {
        let mut out = Vec::new();
        for v in self
            .verdicts
            .iter()
            .filter(|v| v.decision == Decision::Hidden)
        {
            push(&mut out, self.nodes[v.node].offset)?;
        }
        Ok(out)
    }

    /// The non-RAM ranges the host stage-2 may map: the pages of every reachable node
    /// (translated, emulated, no-DMA, passed through), minus every page of a hidden
    /// node or an SMMU. Sorted, disjoint, page-aligned. (RAM is the caller's business.)
    ///
    /// # Errors
    ///
    /// [`DtbError::NoMemory`] if allocation fails.
    pub fn host_mmio(&self) -> Result<Vec<PhysRange>, DtbError> {
        let mut allowed = Vec::new();
        let mut holes = Vec::new();
        for v in &self.verdicts {
            let dst = if v.decision.reachable() {
                &mut allowed
            } else {
                &mut holes
            };
            for r in self.regions(v) {
                push(dst, page_round(r))?;
            }
        }
        allowed.sort_unstable_by_key(|r: &PhysRange| r.base.get());
        let mut merged: Vec<PhysRange> = Vec::new();
        for r in allowed {
            match merged.last_mut() {
                Some(last) if r.base.get() <= last.end() => {
                    let end = last.end().max(r.end());
                    last.size = end - last.base.get();
                }
                _ => push(&mut merged, r)?,
            }
        }
        let mut out = Vec::new();
        let mut err = Ok(());
        for r in merged {
            crate::layout::subtract(r, &holes, |piece| {
                if err.is_ok() {
                    err = push(&mut out, piece);
                }
            });
        }
        err?;
        Ok(out)
    }

    /// How many verdicts have decision `d`.
    pub fn count(&self, d: Decision) -> usize {
        self.verdicts.iter().filter(|v| v.decision == d).count()
    }

    /// A line describing a verdict, for the boot banner:
    /// `<path> [<compatible>] <ranges>: <decision> (<why>)`.
    pub fn describe<'m>(&'m self, v: &'m Verdict) -> impl fmt::Display + 'm {
        Described { m: self, v }
    }

    /// A line describing a note, for the boot banner.
    pub fn describe_note<'m>(&'m self, n: &'m Note) -> impl fmt::Display + 'm {
        DescribedNote { m: self, n }
    }
}

struct Described<'m> {
    m: &'m Masters,
    v: &'m Verdict,
}

impl fmt::Display for Described<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.m.node(self.v);
        write!(f, "{} [{}]", n.path, n.first_compatible())?;
        for (i, r) in self.m.regions(self.v).enumerate() {
            if i == 3 {
                f.write_str(" …")?;
                break;
            }
            write!(f, " {:#x}..{:#x}", r.base.get(), r.end())?;
        }
        write!(f, ": {} ({}", self.v.decision, self.v.why)?;
        if let Some(h) = self.v.shares_with {
            write!(f, ": {}", self.m.nodes[h].path)?;
        }
        f.write_str(")")
    }
}

struct DescribedNote<'m> {
    m: &'m Masters,
    n: &'m Note,
}

impl fmt::Display for DescribedNote<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = |i: usize| self.m.nodes[i].path.as_str();
        match self.n {
            Note::PassthroughUnknown(p) => {
                write!(
                    f,
                    "warden.passthrough={p}: no device node has this path; ignored"
                )
            }
            Note::PassthroughNeedless(i) => write!(
                f,
                "warden.passthrough={}: reachable anyway; nothing to override",
                path(*i)
            ),
            Note::PassthroughRefused(i) => write!(
                f,
                "warden.passthrough={}: an SMMU is Warden's own; refused",
                path(*i)
            ),
            Note::PageLost { node, hidden } => write!(
                f,
                "{} shares a page with hidden {}: that page stays out of the host stage-2",
                path(*node),
                path(*hidden)
            ),
        }
    }
}

#[cfg(test)]
mod tests;
