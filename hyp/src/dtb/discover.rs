//! [`Platform::parse`]: one walk over the structure block that interprets every node
//! Warden cares about (memory, `/reserved-memory`, `/chosen` and its modules, the
//! console, GIC and ITS, PSCI, CPUs, SMMUs, `iommu-map` / `iommus`, bus windows) and
//! returns the owned [`Platform`].

extern crate alloc;

use alloc::vec::Vec;

use super::bus::{Frame, translate_up};
use super::fdt::{FDT_BEGIN_NODE, FDT_END_NODE, FDT_PROP, Fdt, RawNode, RawProp, be32, be64};
use super::platform::{
    Console, ConsoleKind, Cpu, DeviceStream, EnableMethod, Gic, GicVersion, IommuMapEntry, Module,
    PciHost, PciWindow, Platform, Psci, PsciMethod, PsciVersion, Reservation, ReservationSource,
    Smmu,
};
use super::props::{
    component_matches, owned, prop_str, prop_u32, push, range, read_cells, status_ok, strlist_has,
    tuples,
};
use super::{DtbError, MAX_DEPTH, Res};
use crate::addr::{PhysAddr, PhysRange};

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
