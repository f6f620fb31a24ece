//! Trap-and-emulate of the GICv3 registers that make the GIC a DMA master (I1).
//!
//! The ITS reads and writes its device, collection and interrupt translation tables, and
//! the redistributors their LPI property and pending tables, all at physical addresses
//! software programs. Handing those registers to the host would let it point the GIC at
//! Warden's memory. So the ITS control frame (the first 64 KiB of each ITS; the
//! `GITS_TRANSLATER` frame stays the host's) and each redistributor's RD_base frame (and
//! its GICv4 VLPI_base frame, if any) leave the host stage-2, and every host access to
//! them arrives here from the stage-2 data-abort path:
//!
//! | register | what the host gets |
//! |---|---|
//! | `GITS_CBASER`/`CWRITER`/`CREADR` | shadows: the host's queue (host-owned, pinned) is only read by Warden; each new command is copied once, checked and written to Warden's own queue, which the real `GITS_CBASER` points at ([`its`]) |
//! | `GITS_BASER<n>` | device and collection tables live in Warden memory of the size the host asked for, at most what the ITS's IDs index (the host's range must be host-owned); Indirect reads as zero; other tables (vPE) read as zero and ignore writes; writes while the ITS is enabled or not quiescent ignored |
//! | `GITS_TYPER` | GICv4 (`Virtual`, `VMOVP`, `VSGI`) hidden |
//! | `GICR_PROPBASER`/`PENDBASER` | accepted only for host-owned ranges; pinned for good when `GICR_CTLR.EnableLPIs` is set (refused, with the bit kept clear, if they are not host-owned then); once LPIs are on anywhere, every redistributor's `GICR_PROPBASER` must name the same table and IDbits ([`gicr`]) |
//! | `GICR_TYPER` | `VLPIS`/`RVPEID` hidden; the VLPI_base frame is RAZ/WI |
//! | other architected registers of the trapped frames (`GITS_IIDR`, `GITS_PIDR2`, `GICR_WAKER`, `GICR_SYNCR`, `GICR_INVLPIR`, …: [`regs::gits::passthrough`], [`regs::gicr::passthrough`]) | passed through, same width |
//! | IMPLEMENTATION DEFINED and reserved offsets (e.g. GIC-600's `GITS_FCTLR`, `GITS_OPR`, `GICR_PWRR`) | read as zero, writes ignored (logged once): Warden cannot tell what they do to the GIC's memory accesses |
//!
//! A refused write leaves the register as it was (the host reads back the old value) and
//! is logged once per register kind. Pins are never dropped while the GIC may still use
//! the pages (see [`its`] for when an ITT pin ends).
//!
//! The emulation reaches hardware, host memory and the pin bookkeeping only through
//! [`GicEnv`], so that the same code runs at EL2 and, in `cargo test`, against a software
//! ITS/redistributor model.

pub mod gicr;
pub mod its;
#[cfg(test)]
pub mod model;
pub mod regs;
#[cfg(test)]
mod tests;

use crate::addr::PhysRange;
use alloc::vec::Vec;
use regs::FRAME;

/// Width of an emulated access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Width {
    /// 32 bits.
    W32,
    /// 64 bits.
    W64,
}

/// Everything the emulation needs from the machine.
pub trait GicEnv {
    /// Reads the real GIC register at physical `pa`.
    fn reg_read(&mut self, pa: u64, w: Width) -> u64;
    /// Writes the real GIC register at physical `pa`.
    fn reg_write(&mut self, pa: u64, w: Width, v: u64);
    /// The system counter (CNTPCT).
    fn now(&mut self) -> u64;
    /// Counter ticks per millisecond.
    fn ticks_per_ms(&self) -> u64;
    /// Whether the host owns every page of `r` now.
    fn host_owns(&mut self, r: PhysRange) -> bool;
    /// Adds a DMA pin to every page of the page-aligned `r` if the host owns them all.
    fn pin(&mut self, r: PhysRange) -> bool;
    /// Drops one DMA pin from every page of `r` (pinned by [`pin`](Self::pin)).
    fn unpin(&mut self, r: PhysRange);
    /// Reads 8 bytes of host memory (pinned by the caller).
    fn host_read_u64(&mut self, pa: u64) -> u64;
    /// Zeroed Warden memory of `size` bytes (a power of two) aligned to `align`.
    fn alloc(&mut self, size: u64, align: u64) -> Option<u64>;
    /// Frees what [`alloc`](Self::alloc) returned.
    fn free(&mut self, pa: u64, size: u64);
    /// Writes 8 bytes of Warden memory.
    fn write_u64(&mut self, pa: u64, v: u64);
    /// Cleans (and invalidates) Warden memory to the point of coherency, for a GIC that
    /// does not snoop.
    fn clean(&mut self, pa: u64, len: u64);
}

/// A host data access, decoded from ESR_EL2's ISS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataAccess {
    /// Access width in bytes: 1, 2, 4 or 8.
    pub bytes: u8,
    /// Transfer register (31 = XZR for writes, discarded for reads).
    pub reg: u8,
    /// Write (WnR).
    pub write: bool,
    /// Sign-extend a narrow load (SSE).
    pub sign_extend: bool,
    /// The load writes a 64-bit register (SF).
    pub sixty_four: bool,
    /// Length of the faulting instruction (IL): 4, or 2 for a 16-bit T32 one (AArch32
    /// EL0), which is how far the return address moves past it.
    pub insn_bytes: u8,
}

impl DataAccess {
    /// Decodes a data abort's ISS; `None` when ESR_EL2 has no valid syndrome (ISV = 0)
    /// or the fault came from a stage-1 table walk (S1PTW).
    pub fn decode(esr: u64) -> Option<Self> {
        let isv = esr & (1 << 24) != 0;
        let s1ptw = esr & (1 << 7) != 0;
        if !isv || s1ptw {
            return None;
        }
        Some(Self {
            bytes: 1 << ((esr >> 22) & 3),
            reg: ((esr >> 16) & 0x1f) as u8,
            write: esr & (1 << 6) != 0,
            sign_extend: esr & (1 << 21) != 0,
            sixty_four: esr & (1 << 15) != 0,
            insn_bytes: if esr & (1 << 25) != 0 { 4 } else { 2 },
        })
    }

    /// The value a load of `v` puts into its register.
    pub fn load_value(&self, v: u64) -> u64 {
        let bits = u32::from(self.bytes) * 8;
        let v = if bits == 64 {
            v
        } else {
            let m = v & ((1u64 << bits) - 1);
            if self.sign_extend && m >> (bits - 1) != 0 {
                m | !((1u64 << bits) - 1)
            } else {
                m
            }
        };
        if self.sixty_four { v } else { v & 0xffff_ffff }
    }
}

/// The GIC emulation: every ITS and redistributor Warden traps.
pub struct GicEmu {
    its: Vec<its::Its>,
    rds: Vec<gicr::Redist>,
}

/// Why [`GicEmu::probe`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeError {
    /// No memory for the emulation's state or an ITS command queue.
    NoMem,
    /// An ITS did not become quiescent in time.
    ItsBusy,
}

impl GicEmu {
    /// Nothing trapped (GICv2, or no GICv3 ITS/redistributor in the DTB).
    pub const fn empty() -> Self {
        Self {
            its: Vec::new(),
            rds: Vec::new(),
        }
    }

    /// Walks the redistributor regions (frames of `stride` bytes, or 128 KiB / 256 KiB
    /// from `GICR_TYPER.VLPIS` — 256 KiB for all of a region if any of its redistributors
    /// reports VLPIS —, up to `GICR_TYPER.Last`) and takes over each ITS (whose
    /// control frame is the first 64 KiB of its range): disables it if firmware left it
    /// on, invalidates every table, and points its command queue at Warden memory. The
    /// regions must be readable through `env` (mapped at EL2).
    pub fn probe(
        env: &mut impl GicEnv,
        redist_regions: &[PhysRange],
        stride: Option<u64>,
        its_ranges: &[PhysRange],
    ) -> Result<Self, ProbeError> {
        let mut rds = Vec::new();
        for region in redist_regions {
            // Every redistributor of a GICv4 has a VLPI_base frame, also one whose
            // GICR_TYPER does not say so now (e.g. still powered down): if any in the
            // region reports VLPIS, all get that layout, so that no VLPI_base frame
            // passes for an RD_base.
            let mut vlpi = false;
            walk(env, *region, stride, false, |_, _, typer| {
                vlpi |= typer & regs::gicr::TYPER_VLPIS != 0;
                Ok(())
            })?;
            walk(env, *region, stride, vlpi, |env, at, typer| {
                rds.try_reserve(1).map_err(|_| ProbeError::NoMem)?;
                rds.push(gicr::Redist::new(env, at, typer, vlpi));
                Ok(())
            })?;
        }
        let mut its = Vec::new();
        for r in its_ranges {
            its.try_reserve(1).map_err(|_| ProbeError::NoMem)?;
            its.push(its::Its::take_over(env, r.base.get())?);
        }
        Ok(Self { its, rds })
    }

    /// Pins the LPI tables of redistributors whose LPIs firmware left enabled (call once
    /// pins work, before the host runs).
    pub fn pin_firmware_tables(&mut self, env: &mut impl GicEnv) {
        for r in &mut self.rds {
            r.pin_firmware_tables(env);
        }
    }

    /// Every frame that must leave the host stage-2 (and be mapped Device at EL2).
    pub fn trapped(&self) -> impl Iterator<Item = PhysRange> + '_ {
        self.its
            .iter()
            .map(|i| PhysRange::new(i.base(), FRAME))
            .chain(self.rds.iter().flat_map(|r| r.frames()))
    }

    /// Whether `pa` lies in a trapped frame.
    pub fn traps(&self, pa: u64) -> bool {
        self.trapped().any(|r| r.contains(pa))
    }

    /// Number of ITSs and redistributors taken over.
    pub fn counts(&self) -> (usize, usize) {
        (self.its.len(), self.rds.len())
    }

    /// Emulates one host access to `pa`: `Some(value)` for a read (`write` = `None`),
    /// `Some(0)` for a write done (or refused: the register keeps its value), `None`
    /// when `pa` is not trapped or the access is not a naturally aligned 32- or 64-bit
    /// one (the caller injects an external abort).
    pub fn access(
        &mut self,
        env: &mut impl GicEnv,
        pa: u64,
        bytes: u8,
        write: Option<u64>,
    ) -> Option<u64> {
        let w = match bytes {
            4 => Width::W32,
            8 => Width::W64,
            _ => return None,
        };
        if !pa.is_multiple_of(u64::from(bytes)) {
            return None;
        }
        let targets = RdTargets(&self.rds);
        if let Some(i) = self.its.iter_mut().find(|i| i.contains(pa)) {
            return Some(i.access(env, &targets, pa - i.base(), w, write));
        }
        let i = self.rds.iter().position(|r| r.contains(pa))?;
        let (before, rest) = self.rds.split_at_mut(i);
        let (r, after) = rest.split_first_mut()?;
        Some(r.access(env, &gicr::Peers(before, after), pa, w, write))
    }
}

/// Walks one redistributor region (see [`GicEmu::probe`]), calling `f` with each
/// RD_base frame and its `GICR_TYPER`; with `vlpi`, every redistributor has the GICv4
/// layout (four frames).
fn walk<E: GicEnv>(
    env: &mut E,
    region: PhysRange,
    stride: Option<u64>,
    vlpi: bool,
    mut f: impl FnMut(&mut E, u64, u64) -> Result<(), ProbeError>,
) -> Result<(), ProbeError> {
    let mut at = region.base.get();
    while at.checked_add(FRAME).is_some_and(|e| e <= region.end()) {
        let typer = env.reg_read(at + regs::gicr::TYPER, Width::W64);
        f(env, at, typer)?;
        let four = vlpi || typer & regs::gicr::TYPER_VLPIS != 0;
        let step = stride.unwrap_or(if four { 4 * FRAME } else { 2 * FRAME });
        if typer & regs::gicr::TYPER_LAST != 0 || step == 0 {
            break;
        }
        at += step;
    }
    Ok(())
}

/// The redistributors a collection may target (MAPC, SYNC, MOVALL).
pub struct RdTargets<'a>(&'a [gicr::Redist]);

impl RdTargets<'_> {
    /// Whether `rdbase` (a command's RDbase field) names a real redistributor: its
    /// RD_base address >> 16 when `pta`, else its processor number.
    pub fn valid(&self, rdbase: u64, pta: bool) -> bool {
        self.0.iter().any(|r| {
            if pta {
                r.base() >> 16 == rdbase
            } else {
                r.processor() == rdbase
            }
        })
    }
}

/// Merges a 32-bit access at byte offset `off` (0 or 4) into the 64-bit register value
/// `old`, or returns a 64-bit one whole.
pub(crate) fn merge(old: u64, off: u64, w: Width, v: u64) -> u64 {
    match w {
        Width::W64 => v,
        Width::W32 if off == 4 => (old & 0xffff_ffff) | (v << 32),
        Width::W32 => (old & !0xffff_ffff) | (v & 0xffff_ffff),
    }
}

/// The half (or whole) of the 64-bit register value `v` a read at byte offset `off`
/// returns.
pub(crate) fn part(v: u64, off: u64, w: Width) -> u64 {
    match w {
        Width::W64 => v,
        Width::W32 if off == 4 => v >> 32,
        Width::W32 => v & 0xffff_ffff,
    }
}

/// Page-aligned hull of `[base, base + len)`; `None` if empty or it wraps.
pub(crate) fn page_hull(base: u64, len: u64) -> Option<PhysRange> {
    if len == 0 {
        return None;
    }
    let start = base & !0xfff;
    let end = base.checked_add(len)?.checked_next_multiple_of(0x1000)?;
    Some(PhysRange::new(start, end - start))
}

/// Logs `msg` once per `flag` bit of `seen`.
pub(crate) fn log_once(seen: &mut u32, flag: u32, f: impl FnOnce()) {
    if *seen & flag == 0 {
        *seen |= flag;
        f();
    }
}
