//! A software GICv3 ITS and redistributors for tests, with the test world around them
//! ([`TestEnv`]: host memory with a host stage-2 and DMA pins, Warden memory, a clock).
//!
//! The ITS model behaves like QEMU's: commands run when `GITS_CWRITER` is written (if
//! enabled), and every command walks the tables *in memory* (no caching), so a table
//! entry the host forged would be used. Device table entries are 8 bytes
//! (`V | ITT_addr | Size`), collection table entries 8 bytes (`V | RDbase`, processor
//! numbers: `PTA` = 0), ITEs 8 bytes (`V | ICID << 32 | pINTID`). INT sets the LPI's bit
//! in the target redistributor's pending table, if the LPI is within the IDbits of the
//! LPI configuration in use: the redistributor's own `GICR_PROPBASER`, or, with
//! [`GicModel::shared_config`] (redistributors that share one LPI configuration table,
//! `GICR_TYPER.CommonLPIAff`), the `GICR_PROPBASER` written last on any of them (the
//! architecture makes differing values UNPREDICTABLE). Memory writes outside the RAM are
//! recorded in [`GicModel::wild`].

use super::regs::{FRAME, cmd, gicr, gits};
use super::{GicEnv, Width};
use crate::addr::PhysRange;
use crate::host_mem::{HOST_RAM, HostMem};
use crate::s2mmu::{Granule, NoTlb, S2Geometry, Stage2, TableMemory};
use crate::testutil::{Arena, Ram};
use alloc::vec;
use alloc::vec::Vec;
use std::rc::Rc;

/// The ITS control frame in the model.
pub const ITS_BASE: u64 = 0x0808_0000;
/// The redistributor region.
pub const GICR_BASE: u64 = 0x080a_0000;
/// Redistributors in the model.
pub const NR_RD: usize = 2;
/// The fake RAM.
pub const RAM: PhysRange = PhysRange::new(0x4000_0000, 16 << 20);
/// Warden's carve-out inside it: stage-2 tables from its start, GIC tables from +2 MiB.
pub const CARVE: PhysRange = PhysRange::new(0x4000_0000, 4 << 20);
/// First host page the tests use.
pub const HOST: u64 = 0x4040_0000;
/// `GITS_TYPER`: PTA = 0, ITT entry 8 bytes, 16 EventID bits, 16 DeviceID bits,
/// Physical, plus Virtual (which the host must not see).
pub const TYPER: u64 = (15 << 13) | (15 << 8) | (7 << 4) | 1 | gits::TYPER_VIRTUAL;

/// One redistributor's registers.
#[derive(Clone, Debug, Default)]
pub struct RdModel {
    /// RD_base.
    pub base: u64,
    /// `GICR_TYPER`.
    pub typer: u64,
    /// `GICR_CTLR`.
    pub ctlr: u64,
    /// `GICR_PROPBASER`.
    pub prop: u64,
    /// `GICR_PENDBASER`.
    pub pend: u64,
}

/// The ITS and redistributors.
pub struct GicModel {
    ram: Rc<Ram>,
    ctlr: u64,
    cbaser: u64,
    cwriter: u64,
    creadr: u64,
    baser: [u64; 8],
    /// Redistributors.
    pub rds: Vec<RdModel>,
    /// Every command the ITS executed.
    pub executed: Vec<[u64; 4]>,
    /// Memory writes the GIC attempted outside the RAM.
    pub wild: Vec<u64>,
    /// `false`: the ITS never consumes commands.
    pub consume: bool,
    /// Accesses to registers the model does not know: (pa, write).
    pub other: Vec<(u64, bool)>,
    /// The redistributors share one LPI configuration: the last `GICR_PROPBASER` written.
    pub shared_config: bool,
    last_prop: u64,
}

/// `GITS_BASER<n>` read-only fields: Type and Entry_Size (8 bytes; 32 for vPEs).
fn baser_ro(n: usize) -> u64 {
    match n {
        0 => (gits::TYPE_DEVICES << 56) | (7 << 48),
        1 => (gits::TYPE_COLLECTIONS << 56) | (7 << 48),
        2 => (gits::TYPE_VPES << 56) | (31 << 48),
        _ => 0,
    }
}

impl GicModel {
    /// A disabled ITS with its tables invalid and `NR_RD` redistributors (GICv3, the
    /// last one with `Last`).
    pub fn new(ram: Rc<Ram>) -> Self {
        let rds = (0..NR_RD)
            .map(|i| RdModel {
                base: GICR_BASE + 2 * FRAME * i as u64,
                typer: ((i as u64) << 8) | if i + 1 == NR_RD { gicr::TYPER_LAST } else { 0 },
                ..RdModel::default()
            })
            .collect();
        Self {
            ram,
            ctlr: 0,
            cbaser: 0,
            cwriter: 0,
            creadr: 0,
            baser: core::array::from_fn(baser_ro),
            rds,
            executed: Vec::new(),
            wild: Vec::new(),
            consume: true,
            other: Vec::new(),
            shared_config: false,
            last_prop: 0,
        }
    }

    /// The real `GITS_BASER<n>`.
    pub fn baser(&self, n: usize) -> u64 {
        self.baser[n]
    }

    /// The real `GITS_CBASER`.
    pub fn cbaser(&self) -> u64 {
        self.cbaser
    }

    fn dma_read(&self, pa: u64) -> Option<u64> {
        self.ram.dev_read_u64(pa)
    }

    fn dma_write(&mut self, pa: u64, v: u64) {
        if !self.ram.dev_write_u64(pa, v) {
            self.wild.push(pa);
        }
    }

    /// Register read.
    pub fn read(&mut self, pa: u64, w: Width) -> u64 {
        let v = self.read64(pa & !7);
        match (w, pa & 7) {
            (Width::W64, _) => v,
            (Width::W32, 4) => v >> 32,
            (Width::W32, _) => v & 0xffff_ffff,
        }
    }

    fn read64(&mut self, pa: u64) -> u64 {
        if (ITS_BASE..ITS_BASE + FRAME).contains(&pa) {
            return match pa - ITS_BASE {
                gits::CTLR => {
                    self.ctlr
                        | if self.ctlr & gits::CTLR_ENABLED == 0 {
                            gits::CTLR_QUIESCENT
                        } else {
                            0
                        }
                }
                gits::TYPER => TYPER,
                gits::CBASER => self.cbaser,
                gits::CWRITER => self.cwriter,
                gits::CREADR => self.creadr,
                o @ 0x100..0x140 => self.baser[((o - 0x100) / 8) as usize],
                _ => {
                    self.other.push((pa, false));
                    0
                }
            };
        }
        if let Some(rd) = self
            .rds
            .iter()
            .find(|rd| pa >= rd.base && pa < rd.base + FRAME)
        {
            return match pa - rd.base {
                gicr::CTLR => rd.ctlr,
                gicr::TYPER => rd.typer,
                gicr::PROPBASER => rd.prop,
                gicr::PENDBASER => rd.pend,
                _ => {
                    self.other.push((pa, false));
                    0
                }
            };
        }
        self.other.push((pa, false));
        0
    }

    /// Register write.
    pub fn write(&mut self, pa: u64, w: Width, v: u64) {
        let old = self.read64(pa & !7);
        let v = super::merge(old, pa & 7, w, v);
        let pa = pa & !7;
        if (ITS_BASE..ITS_BASE + FRAME).contains(&pa) {
            match pa - ITS_BASE {
                gits::CTLR => {
                    self.ctlr = v & gits::CTLR_ENABLED;
                    self.run();
                }
                gits::CBASER => {
                    self.cbaser = v;
                    self.creadr = 0;
                }
                gits::CWRITER => {
                    self.cwriter = v & gits::OFFSET_MASK;
                    self.run();
                }
                o @ 0x100..0x140 => {
                    let n = ((o - 0x100) / 8) as usize;
                    if baser_ro(n) != 0 {
                        let ro = (7 << 56) | (0x1f << 48);
                        self.baser[n] = (v & !ro) | baser_ro(n);
                    }
                }
                _ => self.other.push((pa, true)),
            }
            return;
        }
        for rd in &mut self.rds {
            if pa >= rd.base && pa < rd.base + FRAME {
                match pa - rd.base {
                    gicr::CTLR => rd.ctlr |= v & gicr::CTLR_ENABLE_LPIS,
                    gicr::PROPBASER => {
                        rd.prop = v;
                        self.last_prop = v;
                    }
                    gicr::PENDBASER => rd.pend = v,
                    _ => self.other.push((pa, true)),
                }
                return;
            }
        }
        self.other.push((pa, true));
    }

    fn run(&mut self) {
        if self.ctlr & gits::CTLR_ENABLED == 0 || self.cbaser & gits::VALID == 0 || !self.consume {
            return;
        }
        let q = self.cbaser & gits::CBASER_PA_MASK;
        let size = ((self.cbaser & gits::SIZE_MASK) + 1) * 0x1000;
        while self.creadr != self.cwriter {
            let mut c = [0u64; 4];
            for (i, w) in c.iter_mut().enumerate() {
                *w = self.dma_read(q + self.creadr + 8 * i as u64).unwrap_or(0);
            }
            self.execute(&c);
            self.executed.push(c);
            self.creadr = (self.creadr + cmd::SIZE) % size;
        }
    }

    /// Entry `i` (8 bytes) of the table of `GITS_BASER<n>`, if inside it.
    fn entry(&self, n: usize, i: u64) -> Option<u64> {
        let b = self.baser[n];
        let len = ((b & gits::SIZE_MASK) + 1) * gits::baser_page_size(b);
        (b & gits::VALID != 0 && i * 8 < len).then(|| (b & gits::BASER_PA_MASK) + i * 8)
    }

    /// The ITE of (device, event): its address and value.
    fn ite(&self, dev: u64, event: u64) -> Option<(u64, u64)> {
        let dte = self.dma_read(self.entry(0, dev)?)?;
        if dte & cmd::VALID == 0 || event >= 1 << ((dte & 0x1f) + 1) {
            return None;
        }
        let at = (dte & cmd::ITT_MASK) + event * 8;
        Some((at, self.dma_read(at).unwrap_or(0)))
    }

    fn execute(&mut self, c: &[u64; 4]) {
        let dev = c[0] >> 32;
        let event = c[1] & 0xffff_ffff;
        match c[0] as u8 {
            cmd::MAPD => {
                if let Some(at) = self.entry(0, dev) {
                    let v = c[2] & cmd::VALID;
                    self.dma_write(at, v | (c[2] & cmd::ITT_MASK) | (c[1] & 0x1f));
                }
            }
            cmd::MAPC => {
                if let Some(at) = self.entry(1, c[2] & 0xffff) {
                    self.dma_write(at, (c[2] & cmd::VALID) | cmd::rdbase(c[2]));
                }
            }
            cmd::MAPTI | cmd::MAPI => {
                let pintid = if c[0] as u8 == cmd::MAPTI {
                    c[1] >> 32
                } else {
                    event
                };
                if let Some((at, _)) = self.ite(dev, event) {
                    self.dma_write(at, cmd::VALID | ((c[2] & 0xffff) << 32) | pintid);
                }
            }
            cmd::INT => {
                let Some((_, ite)) = self.ite(dev, event) else {
                    return;
                };
                let Some(cte) = self
                    .entry(1, (ite >> 32) & 0xffff)
                    .and_then(|a| self.dma_read(a))
                else {
                    return;
                };
                let Some(rd) = self.rds.get((cte & !cmd::VALID) as usize).cloned() else {
                    return;
                };
                let pintid = ite & 0xffff_ffff;
                let config = if self.shared_config {
                    self.last_prop
                } else {
                    rd.prop
                };
                let in_range = pintid >> gicr::prop_id_bits(config) == 0;
                if cte & cmd::VALID != 0 && rd.ctlr & gicr::CTLR_ENABLE_LPIS != 0 && in_range {
                    let at = (rd.pend & gicr::PEND_PA_MASK) + (pintid / 64) * 8;
                    let old = self.dma_read(at).unwrap_or(0);
                    self.dma_write(at, old | 1 << (pintid % 64));
                }
            }
            _ => {}
        }
    }
}

/// The test world: the GIC model, host memory with its stage-2 and pins, Warden memory.
pub struct TestEnv {
    /// The GIC.
    pub gic: GicModel,
    /// Host ownership and DMA pins.
    pub hm: HostMem,
    /// Stage-2 table memory.
    pub s2mem: Arena,
    /// Warden memory for the emulation (queues, tables).
    pub mem: Arena,
    /// The RAM.
    pub ram: Rc<Ram>,
    clock: u64,
}

impl Default for TestEnv {
    fn default() -> Self {
        Self::new()
    }
}

impl TestEnv {
    /// RAM minus the carve-out mapped for the host.
    pub fn new() -> Self {
        let ram = Rc::new(Ram::new(RAM.base.get(), RAM.size as usize));
        let mut s2mem = Arena::with_ram(ram.clone());
        let geom = S2Geometry::new(Granule::Size4K, 40, 40).unwrap();
        // SAFETY: every later call passes this same arena for the tables.
        let mut s2 = unsafe { Stage2::new(geom, &mut s2mem) }.unwrap();
        let host = PhysRange::new(CARVE.end(), RAM.size - CARVE.size);
        s2.map(
            &mut s2mem,
            &mut NoTlb,
            crate::addr::Ipa(host.base.get()),
            host.base,
            host.size,
            HOST_RAM,
        )
        .unwrap();
        Self {
            gic: GicModel::new(ram.clone()),
            hm: HostMem::new(s2, vec![RAM], vec![CARVE]),
            s2mem,
            mem: Arena::with_ram_at(ram.clone(), CARVE.base.get() + (2 << 20)),
            ram,
            clock: 0,
        }
    }

    /// MEM_DONATE of one page.
    pub fn donate(&mut self, pa: u64) -> Result<(), host_abi::Error> {
        self.hm.host_donate_hyp(&mut self.s2mem, &mut NoTlb, pa, 1)
    }

    /// MEM_RECLAIM of one page.
    pub fn reclaim(&mut self) -> Result<u64, host_abi::Error> {
        self.hm
            .hyp_donate_host(&mut self.s2mem, &mut NoTlb, 1)
            .map(|(pa, _)| pa.get())
    }
}

impl GicEnv for TestEnv {
    fn reg_read(&mut self, pa: u64, w: Width) -> u64 {
        self.gic.read(pa, w)
    }
    fn reg_write(&mut self, pa: u64, w: Width, v: u64) {
        self.gic.write(pa, w, v)
    }
    fn now(&mut self) -> u64 {
        self.clock += 10;
        self.clock
    }
    fn ticks_per_ms(&self) -> u64 {
        100
    }
    fn host_owns(&mut self, r: PhysRange) -> bool {
        self.hm.host_owns(&self.s2mem, r)
    }
    fn pin(&mut self, r: PhysRange) -> bool {
        self.hm.host_pin_dma(&self.s2mem, r).is_ok()
    }
    fn unpin(&mut self, r: PhysRange) {
        self.hm
            .host_unpin_dma(r)
            .expect("the test pin bookkeeping has memory");
    }
    fn host_read_u64(&mut self, pa: u64) -> u64 {
        self.ram.read_u64(pa)
    }
    fn alloc(&mut self, size: u64, align: u64) -> Option<u64> {
        self.mem
            .alloc_zeroed(size as usize, align as usize)
            .map(|p| p.get())
    }
    fn free(&mut self, pa: u64, size: u64) {
        // SAFETY: `pa`/`size` come from `alloc` above.
        unsafe { self.mem.free(crate::addr::PhysAddr(pa), size as usize) }
    }
    fn write_u64(&mut self, pa: u64, v: u64) {
        self.ram.write_u64(pa, v)
    }
    fn clean(&mut self, pa: u64, len: u64) {
        self.ram.clean(pa, len as usize)
    }
}
