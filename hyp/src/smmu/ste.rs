//! Stream table entries: layout, the stage-2 configuration Warden uses, and the driver's
//! break-before-make update of a live entry.
//!
//! # STE (64 bytes, eight little-endian 64-bit words; fields Warden sets)
//!
//! | word | bits  | field    | Warden                                                   |
//! |------|-------|----------|----------------------------------------------------------|
//! | 0    | 0     | V        | 1                                                        |
//! | 0    | 3:1   | Config   | 0b000 abort, 0b110 stage 2 only (never bypass 0b100)     |
//! | 1    | 29:28 | EATS     | 0b00 ATS off: with `CR0.ATSCHK` translated traffic aborts |
//! | 1    | 45:44 | SHCFG    | 0b01 use incoming shareability                           |
//! | 2    | 15:0  | S2VMID   | the domain's VMID                                        |
//! | 2    | 37:32 | S2T0SZ   | `64 - ipa_bits`                                          |
//! | 2    | 39:38 | S2SL0    | as `VTCR_EL2.SL0`                                        |
//! | 2    | 41:40 | S2IR0    | 0b01 write-back write-allocate (0b00 if not coherent)    |
//! | 2    | 43:42 | S2OR0    | 0b01 write-back write-allocate (0b00 if not coherent)    |
//! | 2    | 45:44 | S2SH0    | 0b11 inner shareable (0b10 outer if not coherent)        |
//! | 2    | 47:46 | S2TG     | as `VTCR_EL2.TG0` (0 = 4K, 1 = 64K, 2 = 16K)             |
//! | 2    | 50:48 | S2PS     | as `VTCR_EL2.PS`                                         |
//! | 2    | 51    | S2AA64   | 1 (0 aborts QEMU)                                        |
//! | 2    | 52    | S2ENDI   | 0 little endian                                          |
//! | 2    | 53    | S2AFFD   | 0 (descriptors always have AF set)                       |
//! | 2    | 54    | S2PTW    | 0                                                        |
//! | 2    | 57    | S2S      | 0 faults terminate (stall-forced SMMUs are refused)      |
//! | 2    | 58    | S2R      | 1 record faults as events                                |
//! | 3    | 51:4  | S2TTB    | root of the stage-2 tables                               |
//!
//! # Updating a live STE
//!
//! The SMMU may fetch an STE at any moment and need not read its words atomically, and it
//! caches what it fetched until `CMD_CFGI_STE`. So every change follows:
//!
//! 1. if the entry is valid: word 0 with V = 0, `CFGI_STE`, `CMD_SYNC` (the SMMU now
//!    aborts the stream: an invalid STE never lets anything through);
//! 2. words 1..=7, `CFGI_STE`, `CMD_SYNC` (the completion orders these writes before
//!    step 3, for every observer);
//! 3. word 0 with V = 1 and the new Config, `CFGI_STE`, `CMD_SYNC`.
//!
//! Writes are cleaned to the point of coherency when the SMMU does not snoop (I5).

use super::cmdq::Command;
use super::{Region, Smmu, SmmuError, SmmuIo};
use crate::addr::PhysAddr;
use crate::s2mmu::{Granule, S2Geometry, Stage2, TableMemory};
use bitfield_struct::bitfield;

/// Bytes of one STE.
pub const STE_SIZE: usize = 64;
/// StreamID bits resolved by a level-2 stream table (`STRTAB_BASE_CFG.SPLIT`).
pub const SPLIT: u32 = 8;

/// STE word 0.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct SteWord0 {
    /// V: valid.
    pub v: bool,
    /// Config (bits 3:1): `CONFIG_*`.
    #[bits(3)]
    pub config: u8,
    #[bits(60)]
    __: u64,
}

/// STE word 1 (the fields Warden sets).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct SteWord1 {
    #[bits(28)]
    __: u32,
    /// EATS (bits 29:28): ATS for the stream; Warden leaves it 0b00 (no ATS).
    #[bits(2)]
    pub eats: u8,
    #[bits(14)]
    __: u16,
    /// SHCFG (bits 45:44).
    #[bits(2)]
    pub shcfg: u8,
    #[bits(18)]
    __: u32,
}

/// STE word 2: the stage-2 configuration.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct SteWord2 {
    /// S2VMID (bits 15:0).
    pub s2vmid: u16,
    #[bits(16)]
    __: u16,
    /// S2T0SZ (bits 37:32).
    #[bits(6)]
    pub s2t0sz: u8,
    /// S2SL0 (bits 39:38).
    #[bits(2)]
    pub s2sl0: u8,
    /// S2IR0 (bits 41:40): walk inner cacheability (`WALK_WBWA`, `WALK_NC`).
    #[bits(2)]
    pub s2ir0: u8,
    /// S2OR0 (bits 43:42): walk outer cacheability.
    #[bits(2)]
    pub s2or0: u8,
    /// S2SH0 (bits 45:44): walk shareability (`WALK_ISH`, `WALK_OSH`).
    #[bits(2)]
    pub s2sh0: u8,
    /// S2TG (bits 47:46).
    #[bits(2)]
    pub s2tg: u8,
    /// S2PS (bits 50:48).
    #[bits(3)]
    pub s2ps: u8,
    /// S2AA64 (bit 51).
    pub s2aa64: bool,
    /// S2ENDI (bit 52): big-endian tables.
    pub s2endi: bool,
    /// S2AFFD (bit 53): access flag faults disabled.
    pub s2affd: bool,
    /// S2PTW (bit 54): protected table walk.
    pub s2ptw: bool,
    /// S2HD (bit 55): hardware dirty state.
    pub s2hd: bool,
    /// S2HA (bit 56): hardware access flag.
    pub s2ha: bool,
    /// S2S (bit 57): stall on fault.
    pub s2s: bool,
    /// S2R (bit 58): record faults.
    pub s2r: bool,
    #[bits(5)]
    __: u8,
}

/// STE word 3.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct SteWord3 {
    #[bits(4)]
    __: u8,
    /// S2TTB (bits 51:4), the address shifted right by 4.
    #[bits(48)]
    pub s2ttb: u64,
    #[bits(12)]
    __: u16,
}

/// Level-1 stream table descriptor (64 bits).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct L1Std {
    /// log2(number of STEs in the level-2 table) + 1; 0 = no level-2 table.
    #[bits(5)]
    pub span: u8,
    #[bits(1)]
    __: u8,
    /// Level-2 table address bits 51:6, shifted right by 6.
    #[bits(46)]
    pub l2ptr: u64,
    #[bits(12)]
    __: u16,
}

/// Word 0: valid.
pub const STE0_V: u64 = SteWord0::new().with_v(true).into_bits();
/// Config: abort every transaction (no event).
pub const CONFIG_ABORT: u64 = 0b000;
/// Config: bypass (Warden never uses it).
pub const CONFIG_BYPASS: u64 = 0b100;
/// Config: stage 1 only.
pub const CONFIG_S1: u64 = 0b101;
/// Config: stage 2 only.
pub const CONFIG_S2: u64 = 0b110;
/// Config: stage 1 and stage 2.
pub const CONFIG_NESTED: u64 = 0b111;
/// SHCFG: use the incoming shareability.
pub const SHCFG_INCOMING: u64 = 0b01;
/// Word 2: S2AA64.
pub const STE2_S2AA64: u64 = SteWord2::new().with_s2aa64(true).into_bits();
/// Word 2: S2R (record faults).
pub const STE2_S2R: u64 = SteWord2::new().with_s2r(true).into_bits();
/// Word 3: S2TTB (bits 51:4).
pub const STE3_S2TTB_MASK: u64 = ((1u64 << SteWord3::S2TTB_BITS) - 1) << SteWord3::S2TTB_OFFSET;
/// Walk cacheability: normal write-back read/write-allocate.
pub const WALK_WBWA: u64 = 0b01;
/// Walk shareability: inner shareable.
pub const WALK_ISH: u64 = 0b11;
/// Walk cacheability: non-cacheable.
pub const WALK_NC: u64 = 0b00;
/// Walk shareability: outer shareable.
pub const WALK_OSH: u64 = 0b10;

/// The level-1 descriptor pointing at a full level-2 table `table`.
pub(super) const fn l1_descriptor(table: Region) -> u64 {
    L1Std::new()
        .with_span(L2_SPAN as u8)
        .with_l2ptr((table.pa.0 >> L1Std::L2PTR_OFFSET) & ((1 << L1Std::L2PTR_BITS) - 1))
        .into_bits()
}

/// A stage-2-only translation for a stream: the STE fields that describe the table.
/// The raw fields are those of [`S2Geometry`] (`t0sz() sl0() tg() ps()`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct S2Config {
    /// Root of the stage-2 tables (`STE.S2TTB`).
    pub s2ttb: PhysAddr,
    /// VMID tagging the SMMU's TLB entries (`STE.S2VMID`).
    pub vmid: u16,
    /// `STE.S2T0SZ`.
    pub t0sz: u64,
    /// `STE.S2SL0`.
    pub sl0: u64,
    /// `STE.S2TG`.
    pub tg: u64,
    /// `STE.S2PS`.
    pub ps: u64,
    /// `STE.S2R`: record translation faults as events.
    pub s2r: bool,
}

impl S2Config {
    /// The configuration for tables of `geometry` rooted at `s2ttb`, faults recorded.
    pub const fn new(geometry: &S2Geometry, s2ttb: PhysAddr, vmid: u16) -> Self {
        Self {
            s2ttb,
            vmid,
            t0sz: geometry.t0sz(),
            sl0: geometry.sl0(),
            tg: geometry.tg(),
            ps: geometry.ps(),
            s2r: true,
        }
    }

    /// The configuration for `stage2`, faults recorded.
    pub const fn for_stage2(stage2: &Stage2, vmid: u16) -> Self {
        Self::new(&stage2.geometry(), stage2.root(), vmid)
    }

    /// The granule of an `S2TG` encoding.
    pub const fn granule(&self) -> Option<Granule> {
        match self.tg {
            0 => Some(Granule::Size4K),
            1 => Some(Granule::Size64K),
            2 => Some(Granule::Size16K),
            _ => None,
        }
    }
}

/// A stream table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Ste(pub [u64; 8]);

impl Ste {
    /// Valid, Config = abort: every transaction of the stream is terminated, no event.
    pub const ABORT: Self = Self([
        SteWord0::new()
            .with_v(true)
            .with_config(CONFIG_ABORT as u8)
            .into_bits(),
        0,
        0,
        0,
        0,
        0,
        0,
        0,
    ]);

    /// Valid, stage-2 translation only, as the module docs describe.
    pub const fn stage2(cfg: &S2Config) -> Self {
        let w0 = SteWord0::new().with_v(true).with_config(CONFIG_S2 as u8);
        let w1 = SteWord1::new().with_shcfg(SHCFG_INCOMING as u8);
        let w2 = SteWord2::new()
            .with_s2vmid(cfg.vmid)
            .with_s2t0sz((cfg.t0sz & 0x3f) as u8)
            .with_s2sl0((cfg.sl0 & 0b11) as u8)
            .with_s2ir0(WALK_WBWA as u8)
            .with_s2or0(WALK_WBWA as u8)
            .with_s2sh0(WALK_ISH as u8)
            .with_s2tg((cfg.tg & 0b11) as u8)
            .with_s2ps((cfg.ps & 0b111) as u8)
            .with_s2aa64(true)
            .with_s2r(cfg.s2r);
        let w3 =
            SteWord3::new().with_s2ttb((cfg.s2ttb.0 & STE3_S2TTB_MASK) >> SteWord3::S2TTB_OFFSET);
        Self([
            w0.into_bits(),
            w1.into_bits(),
            w2.into_bits(),
            w3.into_bits(),
            0,
            0,
            0,
            0,
        ])
    }

    /// The same entry with its stage-2 table walks non-cacheable and outer shareable: for
    /// an SMMU that does not snoop the caches (as `CR1` then sets for its own structures,
    /// and as Linux's non-coherent walks do). Walks then read what was cleaned to PoC.
    pub const fn with_noncoherent_walk(self) -> Self {
        let mut ste = self;
        ste.0[2] = SteWord2::from_bits(ste.0[2])
            .with_s2ir0(WALK_NC as u8)
            .with_s2or0(WALK_NC as u8)
            .with_s2sh0(WALK_OSH as u8)
            .into_bits();
        ste
    }

    /// Whether V is set.
    pub const fn is_valid(&self) -> bool {
        SteWord0::from_bits(self.0[0]).v()
    }

    /// The Config field.
    pub const fn config(&self) -> u64 {
        SteWord0::from_bits(self.0[0]).config() as u64
    }
}

/// The stream table as the driver keeps it.
#[derive(Debug)]
pub(super) enum StreamTable {
    /// One array of `2^log2` STEs.
    Linear { table: Region, log2: u32 },
    /// Level-1 descriptors for `2^(log2 - SPLIT)` spans of `2^SPLIT` STEs; level-2
    /// tables only where allocated.
    TwoLevel {
        l1: Region,
        log2: u32,
        l2: alloc::vec::Vec<Option<Region>>,
    },
}

impl StreamTable {
    /// log2 of the number of StreamIDs the table covers.
    pub(super) fn log2(&self) -> u32 {
        match self {
            Self::Linear { log2, .. } | Self::TwoLevel { log2, .. } => *log2,
        }
    }
}

/// Bytes of a level-2 stream table.
pub(super) const L2_SIZE: usize = STE_SIZE << SPLIT;
/// `L1STD.SPAN` of a full level-2 table.
pub(super) const L2_SPAN: u64 = SPLIT as u64 + 1;

impl<I: SmmuIo, M: TableMemory + ?Sized> Smmu<I, M> {
    /// Number of StreamIDs the stream table covers (`2^LOG2SIZE`).
    pub fn num_sids(&self) -> u64 {
        1u64 << self.strtab.log2()
    }

    /// Makes `sid` translate through the stage-2 tables of `cfg` (break-before-make, then
    /// `CFGI_STE` + `CMD_SYNC`: when this returns Ok the SMMU uses the new entry).
    ///
    /// Errors: `sid` beyond the stream table, a configuration the SMMU cannot walk
    /// (granule, sizes, VMID width), out of memory for a level-2 table, or a command
    /// queue failure (the entry is then left invalid or as it was: never bypass).
    ///
    /// The SMMU's TLB is not touched: its entries are tagged with the VMID, and a VMID
    /// is invalidated before it is reused for other tables (I4).
    pub fn set_ste_s2(&mut self, mem: &mut M, sid: u32, cfg: &S2Config) -> Result<(), SmmuError> {
        self.check_s2_config(cfg)?;
        let ste = Ste::stage2(cfg);
        let ste = if self.coherent {
            ste
        } else {
            ste.with_noncoherent_walk()
        };
        self.write_ste(mem, sid, &ste)
    }

    /// Makes every transaction of `sid` abort (break-before-make, `CFGI_STE`, `CMD_SYNC`).
    pub fn set_ste_abort(&mut self, mem: &mut M, sid: u32) -> Result<(), SmmuError> {
        self.write_ste(mem, sid, &Ste::ABORT)
    }

    /// The STE of `sid` as it is in memory (`None` beyond the table or in a span without
    /// a level-2 table, where the SMMU aborts).
    pub fn read_ste(&self, mem: &M, sid: u32) -> Option<Ste> {
        let (region, off) = self.ste_location(sid)?;
        let mut ste = Ste::default();
        region.read(mem, off, &mut ste.0);
        Some(ste)
    }

    fn check_s2_config(&self, cfg: &S2Config) -> Result<(), SmmuError> {
        let f = &self.features;
        let granule = cfg.granule().ok_or(SmmuError::BadConfig("S2TG"))?;
        if !f.supports(granule) {
            return Err(SmmuError::BadConfig("granule not supported"));
        }
        if !(16..=39).contains(&cfg.t0sz) {
            return Err(SmmuError::BadConfig("S2T0SZ"));
        }
        if cfg.sl0 > 2 {
            return Err(SmmuError::BadConfig("S2SL0"));
        }
        if cfg.ps > 5 || cfg.ps > u64::from(f.oas) {
            return Err(SmmuError::BadConfig("S2PS beyond the SMMU's output size"));
        }
        if 64 - cfg.t0sz > u64::from(super::features::oas_bits(cfg.ps as u8)) {
            return Err(SmmuError::BadConfig("IPA size beyond S2PS"));
        }
        if cfg.vmid > f.max_vmid() {
            return Err(SmmuError::BadConfig("VMID wider than the SMMU's"));
        }
        if cfg.s2ttb.0 & !STE3_S2TTB_MASK != 0 || !cfg.s2ttb.is_aligned(granule.size()) {
            return Err(SmmuError::BadConfig("S2TTB alignment"));
        }
        Ok(())
    }

    /// Where the STE of `sid` lives: its region and the offset inside.
    fn ste_location(&self, sid: u32) -> Option<(Region, usize)> {
        if u64::from(sid) >= self.num_sids() {
            return None;
        }
        match &self.strtab {
            StreamTable::Linear { table, .. } => Some((*table, sid as usize * STE_SIZE)),
            StreamTable::TwoLevel { l2, .. } => {
                let span = (*l2.get((sid >> SPLIT) as usize)?)?;
                Some((span, (sid as usize & ((1 << SPLIT) - 1)) * STE_SIZE))
            }
        }
    }

    /// Allocates the level-2 table for the span of `sid` if it has none: every STE
    /// abort, linked into the level-1 table (an invalid → valid change: no break), then
    /// `CMD_CFGI_STE` with Leaf = 0 and `CMD_SYNC`: the SMMU may have cached the old,
    /// invalid level-1 descriptor (IHI 0070 §5.2: an L1STD fetched in any state may be
    /// cached), and only Leaf = 0 (or a range invalidation) drops it.
    pub(super) fn ensure_l2(&mut self, mem: &mut M, sid: u32) -> Result<(), SmmuError> {
        let coherent = self.coherent;
        let StreamTable::TwoLevel { l1, l2, .. } = &mut self.strtab else {
            return Ok(());
        };
        let idx = (sid >> SPLIT) as usize;
        let Some(slot) = l2.get_mut(idx) else {
            return Err(SmmuError::SidOutOfRange(sid));
        };
        if slot.is_some() {
            return Ok(());
        }
        let table = Region::alloc(mem, L2_SIZE)?;
        fill_abort(mem, table, 1 << SPLIT, coherent);
        l1.write(mem, idx * 8, &[l1_descriptor(table)], coherent);
        *slot = Some(table);
        self.push(mem, Command::cfgi_ste_l1(sid));
        self.sync(mem)
    }

    /// Writes `new` over the STE of `sid` following the module's sequence.
    fn write_ste(&mut self, mem: &mut M, sid: u32, new: &Ste) -> Result<(), SmmuError> {
        if u64::from(sid) >= self.num_sids() {
            return Err(SmmuError::SidOutOfRange(sid));
        }
        self.ensure_l2(mem, sid)?;
        let (region, off) = self
            .ste_location(sid)
            .ok_or(SmmuError::SidOutOfRange(sid))?;
        let coherent = self.coherent;
        let mut old = Ste::default();
        region.read(mem, off, &mut old.0);
        if old == *new {
            // Nothing changes; make sure the SMMU does not hold an older copy anyway.
            self.push(mem, Command::cfgi_ste(sid));
            return self.sync(mem);
        }
        if old.is_valid() {
            let invalid = SteWord0::from_bits(old.0[0]).with_v(false);
            region.write(mem, off, &[invalid.into_bits()], coherent);
            self.push(mem, Command::cfgi_ste(sid));
            self.sync(mem)?;
        }
        region.write(mem, off + 8, &new.0[1..], coherent);
        self.push(mem, Command::cfgi_ste(sid));
        self.sync(mem)?;
        region.write(mem, off, &new.0[..1], coherent);
        self.push(mem, Command::cfgi_ste(sid));
        self.sync(mem)
    }
}

/// Fills the first `count` STEs of `table` with [`Ste::ABORT`] and cleans them.
pub(super) fn fill_abort<M: TableMemory + ?Sized>(
    mem: &mut M,
    table: Region,
    count: usize,
    coherent: bool,
) {
    for i in 0..count {
        table.write(mem, i * STE_SIZE, &Ste::ABORT.0[..1], true);
    }
    if !coherent {
        mem.clean(table.pa, count * STE_SIZE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// QEMU.md's working STE for SID 16: T0SZ = 32, SL0 = 1, 4K, PS = 40 bits, AA64, R.
    #[test]
    fn stage2_ste_matches_qemu_reference() {
        // Warden's geometry starts a 32-bit IPA at level 2 (4 concatenated tables), QEMU's
        // example at level 1: same fields otherwise.
        let geom = S2Geometry::new(Granule::Size4K, 32, 40).unwrap();
        let from_geom = S2Config::new(&geom, PhysAddr(0x4123_4000), 1);
        assert_eq!(
            (from_geom.t0sz, from_geom.sl0, from_geom.tg, from_geom.ps),
            (32, 0, 0, 2)
        );
        let cfg = S2Config {
            sl0: 1,
            ..from_geom
        };
        let ste = Ste::stage2(&cfg);
        // 32-bit words as QEMU.md lists them: 0 = 0xD, 4 = VMID, 5 = 0x040A0060 plus
        // Warden's walk attributes (IR0 = OR0 = WBWA, SH0 = inner: 0x3500), 6-7 = S2TTB.
        assert_eq!(ste.0[0] as u32, 0xD);
        assert_eq!(ste.0[2] as u32, 1);
        assert_eq!((ste.0[2] >> 32) as u32, 0x040A_0060 | 0x3500);
        assert_eq!(ste.0[3], 0x4123_4000);
        assert_eq!(ste.0[1], 1 << 44, "SHCFG = incoming");
        assert_eq!(&ste.0[4..], &[0; 4]);
        assert!(ste.is_valid());
        assert_eq!(ste.config(), CONFIG_S2);
        assert_eq!(Ste::ABORT.0[0], 1);
        assert_eq!(Ste::ABORT.config(), CONFIG_ABORT);
    }

    #[test]
    fn stage2_ste_other_granules() {
        let geom = S2Geometry::new(Granule::Size64K, 42, 44).unwrap();
        let mut cfg = S2Config::new(&geom, PhysAddr(0x8001_0000), 0x1234);
        cfg.s2r = false;
        assert_eq!(cfg.granule(), Some(Granule::Size64K));
        let w2 = Ste::stage2(&cfg).0[2];
        assert_eq!(w2 & 0xffff, 0x1234);
        assert_eq!((w2 >> 32) & 0x3f, 22);
        assert_eq!((w2 >> 46) & 3, 1, "S2TG 64K");
        assert_eq!((w2 >> 48) & 7, 4, "S2PS 44 bits");
        assert_eq!(w2 & STE2_S2R, 0);
        assert_ne!(w2 & STE2_S2AA64, 0);
    }
}
