//! The GIC emulation against the software ITS/redistributor model.

use super::model::{CARVE, GICR_BASE, HOST, ITS_BASE, TestEnv};
use super::regs::{FRAME, cmd, gicr, gits};
use super::{DataAccess, GicEmu};
use crate::addr::PhysRange;
use host_abi::Error;

use crate::PAGE;
/// Host pages used below (all host-owned RAM).
const QUEUE: u64 = HOST;
const DT: u64 = HOST + 0x1_0000; // 64 KiB device table (8192 entries)
const CT: u64 = HOST + 0x2_0000; // one page collection table
const ITT: u64 = HOST + 0x3_0000;
const ITT2: u64 = HOST + 0x4_0000;
const PROP: u64 = HOST + 0x10_0000; // 56 KiB for 16 ID bits
const PEND: u64 = HOST + 0x20_0000; // 8 KiB, 64 KiB aligned
const SPARE: u64 = HOST + 0x30_0000;
/// 16 ID bits.
const PROP_BITS: u64 = 15;

struct World {
    env: TestEnv,
    emu: GicEmu,
    wr: u64,
}

impl World {
    fn new() -> Self {
        let mut env = TestEnv::new();
        let emu = GicEmu::probe(
            &mut env,
            &[PhysRange::new(GICR_BASE, 0x10_0000)],
            None,
            &[PhysRange::new(ITS_BASE, 2 * FRAME)],
        )
        .unwrap();
        Self { env, emu, wr: 0 }
    }

    fn r64(&mut self, pa: u64) -> u64 {
        self.emu.access(&mut self.env, pa, 8, None).unwrap()
    }
    fn r32(&mut self, pa: u64) -> u64 {
        self.emu.access(&mut self.env, pa, 4, None).unwrap()
    }
    fn w64(&mut self, pa: u64, v: u64) {
        assert_eq!(self.emu.access(&mut self.env, pa, 8, Some(v)), Some(0));
    }
    fn w32(&mut self, pa: u64, v: u64) {
        assert_eq!(self.emu.access(&mut self.env, pa, 4, Some(v)), Some(0));
    }

    /// What Linux does: queue (one page), device and collection tables, enable.
    fn its_init(&mut self) {
        self.w64(
            ITS_BASE + gits::CBASER,
            QUEUE | gits::VALID | gits::SH_INNER,
        );
        self.w64(ITS_BASE + gits::CWRITER, 0);
        self.w64(ITS_BASE + gits::BASER0, DT | gits::VALID | 15);
        self.w64(ITS_BASE + gits::BASER0 + 8, CT | gits::VALID);
        self.w32(ITS_BASE + gits::CTLR, gits::CTLR_ENABLED as u32 as u64);
        self.wr = 0;
    }

    /// Redistributor 0's LPI tables and EnableLPIs.
    fn lpis_on(&mut self) {
        self.w64(GICR_BASE + gicr::PROPBASER, PROP | PROP_BITS);
        self.w64(GICR_BASE + gicr::PENDBASER, PEND);
        self.w32(GICR_BASE + gicr::CTLR, 1);
    }

    /// Writes commands into the host's queue and `GITS_CWRITER`.
    fn send(&mut self, cmds: &[[u64; 4]]) {
        for c in cmds {
            for (i, w) in c.iter().enumerate() {
                self.env.ram.write_u64(QUEUE + self.wr + 8 * i as u64, *w);
            }
            self.wr = (self.wr + 32) % PAGE;
        }
        self.w64(ITS_BASE + gits::CWRITER, self.wr);
    }

    fn creadr(&mut self) -> u64 {
        self.r64(ITS_BASE + gits::CREADR)
    }

    fn executed(&self, op: u8) -> usize {
        self.env
            .gic
            .executed
            .iter()
            .filter(|c| c[0] as u8 == op)
            .count()
    }

    fn page_is_zero(&self, pa: u64) -> bool {
        (0..PAGE / 8).all(|i| self.env.ram.read_u64(pa + 8 * i) == 0)
    }
}

fn mapd(dev: u64, itt: u64, bits: u64, valid: bool) -> [u64; 4] {
    let v = if valid { cmd::VALID } else { 0 };
    [(dev << 32) | cmd::MAPD as u64, bits - 1, v | itt, 0]
}
fn mapc(icid: u64, rd: u64) -> [u64; 4] {
    [cmd::MAPC as u64, 0, cmd::VALID | (rd << 16) | icid, 0]
}
fn mapti(dev: u64, event: u64, lpi: u64, icid: u64) -> [u64; 4] {
    [
        (dev << 32) | cmd::MAPTI as u64,
        (lpi << 32) | event,
        icid,
        0,
    ]
}
fn int(dev: u64, event: u64) -> [u64; 4] {
    [(dev << 32) | cmd::INT as u64, event, 0, 0]
}
fn sync(rd: u64) -> [u64; 4] {
    [cmd::SYNC as u64, 0, rd << 16, 0]
}

#[test]
fn probe_takes_over_the_its_and_hides_gicv4() {
    let mut w = World::new();
    assert_eq!(w.emu.counts(), (1, 2));
    let trapped: Vec<_> = w.emu.trapped().collect();
    assert_eq!(
        trapped,
        vec![
            PhysRange::new(ITS_BASE, FRAME),
            PhysRange::new(GICR_BASE, FRAME),
            PhysRange::new(GICR_BASE + 2 * FRAME, FRAME)
        ]
    );
    // GITS_TRANSLATER's frame and SGI_base stay the host's.
    assert!(!w.emu.traps(ITS_BASE + FRAME + 0x40));
    assert!(!w.emu.traps(GICR_BASE + FRAME));
    assert_eq!(w.r64(ITS_BASE + gits::TYPER) & gits::TYPER_VIRTUAL, 0);
    assert_ne!(w.env.gic.baser(0) & 0xff << 56, 0, "type kept");
    // The real queue is Warden's.
    let q = w.env.gic.cbaser() & gits::CBASER_PA_MASK;
    assert!(CARVE.contains(q) && w.env.gic.cbaser() & gits::VALID != 0);
    assert!(w.env.gic.baser(0) & gits::VALID == 0);
    // Narrow or unaligned accesses are not emulated.
    assert_eq!(w.emu.access(&mut w.env, ITS_BASE, 2, None), None);
    assert_eq!(w.emu.access(&mut w.env, ITS_BASE + 4, 8, None), None);
    assert_eq!(w.emu.access(&mut w.env, 0x4000_0000, 8, None), None);
}

#[test]
fn legit_path_delivers_an_lpi_into_the_host_pending_table() {
    let mut w = World::new();
    w.its_init();
    w.lpis_on();
    assert_eq!(w.r32(GICR_BASE + gicr::CTLR) & 1, 1);
    assert_eq!(w.r64(GICR_BASE + gicr::PENDBASER), PEND);
    w.send(&[
        mapc(0, 0),
        mapd(1, ITT, 8, true),
        mapti(1, 3, 8192 + 77, 0),
        int(1, 3),
        sync(0),
    ]);
    assert_eq!(w.creadr(), w.wr);
    assert_eq!(w.executed(cmd::INT), 1);
    // LPI 8269's pending bit.
    let bit = 8192 + 77;
    assert_ne!(w.env.ram.read_u64(PEND + bit / 64 * 8) & 1 << (bit % 64), 0);
    // The ITE went to the host's ITT; the DTE to Warden's copy of the device table,
    // not to the host's.
    assert_ne!(w.env.ram.read_u64(ITT + 3 * 8), 0);
    assert!(w.page_is_zero(DT));
    let (shadow, _) = w.emu.its[0].shadow_table(0).unwrap();
    assert!(CARVE.contains(shadow));
    assert_ne!(w.env.ram.read_u64(shadow + 8), 0);
    // The host reads back its own table address, Indirect clear.
    assert_eq!(w.r64(ITS_BASE + gits::BASER0) & gits::BASER_PA_MASK, DT);
    // ITT and LPI tables pinned: MEM_DONATE says BUSY.
    assert_eq!(w.env.hm.pins().count(ITT), 1);
    assert_eq!(w.env.donate(ITT), Err(Error::Busy));
    assert_eq!(w.env.donate(PEND), Err(Error::Busy));
    assert_eq!(w.env.donate(PROP), Err(Error::Busy));
    assert_eq!(w.env.donate(QUEUE), Err(Error::Busy));
    assert!(w.env.gic.wild.is_empty());
}

#[test]
fn a_forged_device_table_entry_is_never_used() {
    let mut w = World::new();
    w.its_init();
    w.lpis_on();
    // The host writes a DTE pointing at Warden's memory into "its" device table, then
    // maps an event of that device.
    let target = CARVE.base.get() + 0x10_0000;
    let before = w.env.ram.read_u64(target);
    w.env.ram.write_u64(DT + 5 * 8, cmd::VALID | target | 7);
    w.send(&[mapc(0, 0), mapti(5, 0, 8200, 0)]);
    assert_eq!(w.creadr(), w.wr);
    assert_eq!(w.env.ram.read_u64(target), before);
}

#[test]
fn mapd_into_donated_or_warden_memory_is_refused() {
    let mut w = World::new();
    w.its_init();
    w.env.donate(SPARE).unwrap();
    w.send(&[
        mapd(1, SPARE, 8, true),
        mapd(2, CARVE.base.get() + 0x30_0000, 8, true),
    ]);
    // Skipped, with CREADR past them.
    assert_eq!(w.creadr(), w.wr);
    assert_eq!(w.executed(cmd::MAPD), 0);
    assert_eq!(w.env.hm.pins().pinned_pages(), 1, "only the host queue");
    // MAPTI for those devices writes nothing anywhere.
    w.send(&[mapc(0, 0), mapti(1, 0, 8192, 0), mapti(2, 0, 8193, 0)]);
    assert_eq!(w.env.reclaim(), Ok(SPARE));
    assert!(w.page_is_zero(SPARE));
    // Size beyond ID_bits: refused.
    w.send(&[mapd(3, ITT, 17, true)]);
    assert_eq!(w.executed(cmd::MAPD), 0);
    assert!(w.env.gic.wild.is_empty());
}

#[test]
fn baser_refusals_read_back_the_old_value() {
    let mut w = World::new();
    w.env.donate(SPARE).unwrap();
    let old = w.r64(ITS_BASE + gits::BASER0);
    for bad in [SPARE, CARVE.base.get() + 0x20_0000, 0x0900_0000] {
        w.w64(ITS_BASE + gits::BASER0, bad | gits::VALID);
        assert_eq!(w.r64(ITS_BASE + gits::BASER0), old, "{bad:#x}");
        assert_eq!(w.env.gic.baser(0) & gits::VALID, 0);
    }
    // Indirect reads as zero, and the real ITS gets a flat table.
    w.w64(
        ITS_BASE + gits::BASER0,
        DT | gits::VALID | gits::BASER_INDIRECT,
    );
    let rb = w.r64(ITS_BASE + gits::BASER0);
    assert_eq!(rb & (gits::BASER_INDIRECT | gits::VALID), gits::VALID);
    assert_eq!(w.env.gic.baser(0) & gits::BASER_INDIRECT, 0);
    // vPE table refused.
    let vpe = w.r64(ITS_BASE + gits::BASER0 + 16);
    w.w64(ITS_BASE + gits::BASER0 + 16, DT | gits::VALID);
    assert_eq!(w.r64(ITS_BASE + gits::BASER0 + 16), vpe);
    // Writes while enabled are ignored.
    w.w32(ITS_BASE + gits::CTLR, 1);
    w.w64(ITS_BASE + gits::BASER0, CT | gits::VALID);
    assert_eq!(w.r64(ITS_BASE + gits::BASER0), rb);
    // The host's table pages are not pinned (the ITS never uses them); donation of a
    // host-table page cannot make the ITS write it.
    assert_eq!(w.env.donate(DT), Ok(()));
    assert!(w.env.gic.wild.is_empty());
}

#[test]
fn cbaser_at_a_donated_page_is_refused() {
    let mut w = World::new();
    w.env.donate(SPARE).unwrap();
    w.w64(ITS_BASE + gits::CBASER, SPARE | gits::VALID);
    assert_eq!(w.r64(ITS_BASE + gits::CBASER), 0);
    assert_eq!(w.env.hm.pins().pinned_pages(), 0);
}

#[test]
fn lpi_tables_must_be_host_owned_and_stay_pinned() {
    let mut w = World::new();
    w.env.donate(SPARE).unwrap();
    // PENDBASER/PROPBASER at a donated page: refused, read-back differs.
    w.w64(GICR_BASE + gicr::PENDBASER, SPARE);
    assert_ne!(w.r64(GICR_BASE + gicr::PENDBASER), SPARE);
    w.w64(GICR_BASE + gicr::PROPBASER, SPARE | PROP_BITS);
    assert_ne!(w.r64(GICR_BASE + gicr::PROPBASER), SPARE | PROP_BITS);
    assert_eq!(w.env.reclaim(), Ok(SPARE));
    // EnableLPIs with what the registers hold (not host RAM): stays off.
    w.w32(GICR_BASE + gicr::CTLR, 1);
    assert_eq!(w.r32(GICR_BASE + gicr::CTLR) & 1, 0);
    assert!(w.page_is_zero(SPARE));

    // Accepted while host-owned, donated before EnableLPIs: enabling is refused.
    w.w64(GICR_BASE + gicr::PROPBASER, PROP | PROP_BITS);
    w.w64(GICR_BASE + gicr::PENDBASER, SPARE & !0xffff);
    assert_eq!(w.r64(GICR_BASE + gicr::PENDBASER), SPARE & !0xffff);
    w.env.donate(SPARE & !0xffff).unwrap();
    w.w32(GICR_BASE + gicr::CTLR, 1);
    assert_eq!(w.r32(GICR_BASE + gicr::CTLR) & 1, 0);
    assert_eq!(w.env.hm.pins().pinned_pages(), 0, "nothing left pinned");
    w.env.reclaim().unwrap();

    // Good tables: enabled, pinned, frozen.
    w.lpis_on();
    assert_eq!(w.r32(GICR_BASE + gicr::CTLR) & 1, 1);
    let pages = w.env.hm.pins().pinned_pages();
    assert_eq!(pages, 14 + 2);
    assert_eq!(w.env.donate(PEND + PAGE), Err(Error::Busy));
    w.w64(GICR_BASE + gicr::PENDBASER, SPARE & !0xffff);
    assert_eq!(w.r64(GICR_BASE + gicr::PENDBASER), PEND);
    // Another EnableLPIs write pins nothing more.
    w.w32(GICR_BASE + gicr::CTLR, 1);
    assert_eq!(w.env.hm.pins().pinned_pages(), pages);
}

#[test]
fn itt_pins_balance_over_remap_and_unmap() {
    let mut w = World::new();
    w.its_init();
    let base = w.env.hm.pins().pinned_pages();
    w.send(&[mapd(1, ITT, 16, true)]); // 64K entries * 8 bytes = 512 KiB
    assert_eq!(w.env.hm.pins().pinned_pages(), base + 128);
    w.send(&[mapd(1, ITT2, 8, true)]);
    assert_eq!(w.env.hm.pins().count(ITT), 0);
    assert_eq!(w.env.hm.pins().count(ITT2), 1);
    assert_eq!(w.env.hm.pins().pinned_pages(), base + 1);
    w.send(&[mapd(1, 0, 8, false)]);
    assert_eq!(w.env.hm.pins().pinned_pages(), base);
    assert_eq!(w.env.donate(ITT2), Ok(()));
    assert_eq!(w.executed(cmd::MAPD), 3);
    // Disable, drop the queue: nothing pinned any more.
    w.w32(ITS_BASE + gits::CTLR, 0);
    w.w64(ITS_BASE + gits::CBASER, 0);
    assert_eq!(w.env.hm.pins().pinned_pages(), 0);
}

#[test]
fn gicv4_unknown_and_misdirected_commands_are_skipped() {
    let mut w = World::new();
    w.its_init();
    let vmapp = [0x29, 0, 0, cmd::VALID | CARVE.base.get()];
    let vmapti = [0x2a, 0, 0, 0];
    let vmovp = [0x22, 0, 0, 0];
    let junk = [0xff, 0, 0, 0];
    w.send(&[
        vmapp,
        vmapti,
        vmovp,
        junk,
        mapc(0, 7),
        sync(9),
        mapc(1, 1),
        sync(1),
    ]);
    assert_eq!(w.creadr(), w.wr);
    let ops: Vec<u8> = w.env.gic.executed.iter().map(|c| c[0] as u8).collect();
    assert_eq!(ops, vec![cmd::MAPC, cmd::SYNC]);
}

#[test]
fn a_stuck_its_bounds_the_wait_and_keeps_pins() {
    let mut w = World::new();
    w.its_init();
    w.send(&[mapd(1, ITT, 8, true)]);
    w.env.gic.consume = false;
    w.send(&[mapd(1, 0, 8, false)]);
    // Returned (bounded wait); CREADR stops before the unconfirmed command.
    assert_eq!(w.creadr(), 32);
    assert_eq!(w.env.hm.pins().count(ITT), 1);
    assert_eq!(w.env.donate(ITT), Err(Error::Busy));
    // Nothing more is sent.
    w.env.gic.consume = true;
    w.send(&[sync(0)]);
    assert_eq!(w.executed(cmd::SYNC), 0);
}

#[test]
fn data_abort_syndrome_decoding() {
    // LDR w3, [x] (32-bit, SRT 3): ISV, SAS=2.
    let esr = (0x24 << 26) | (1 << 25) | (1 << 24) | (2 << 22) | (3 << 16);
    let a = DataAccess::decode(esr).unwrap();
    assert_eq!(
        (a.bytes, a.reg, a.write, a.sixty_four),
        (4, 3, false, false)
    );
    assert_eq!(a.load_value(0x1_8000_0000), 0x8000_0000);
    assert_eq!(a.insn_bytes, 4);
    // STR x30 (64-bit).
    let esr = (1 << 25) | (1 << 24) | (3 << 22) | (30 << 16) | (1 << 15) | (1 << 6);
    let a = DataAccess::decode(esr).unwrap();
    assert_eq!((a.bytes, a.reg, a.write, a.sixty_four), (8, 30, true, true));
    assert_eq!(a.insn_bytes, 4);
    // A 16-bit T32 STR r2 from AArch32 EL0 (IL = 0): the return address moves by 2.
    let esr = (1 << 24) | (2 << 22) | (2 << 16) | (1 << 6);
    assert_eq!(DataAccess::decode(esr).unwrap().insn_bytes, 2);
    // LDRSH x1: sign-extended to 64 bits.
    let esr = (1 << 24) | (1 << 22) | (1 << 21) | (1 << 16) | (1 << 15);
    assert_eq!(
        DataAccess::decode(esr).unwrap().load_value(0x8001),
        0xffff_ffff_ffff_8001
    );
    // No syndrome (e.g. LDP), or a stage-1 walk: not emulated.
    assert_eq!(DataAccess::decode(2 << 22), None);
    assert_eq!(DataAccess::decode((1 << 24) | (1 << 7)), None);
}

#[test]
fn warden_copies_of_tables_are_no_larger_than_the_ids_need() {
    let mut w = World::new();
    // 64 pages of 64 KiB asked for (4 MiB of host memory): Warden's copy covers the
    // 2^16 DeviceIDs of 8 bytes the ITS can index (512 KiB), the host reads back its
    // own request.
    let big = DT | gits::VALID | (2 << 8) | 0x3f;
    w.w64(ITS_BASE + gits::BASER0, big);
    assert_eq!(
        w.r64(ITS_BASE + gits::BASER0) & !(0xff << 48 | 7 << 56),
        big
    );
    let (_, size) = w.emu.its[0].shadow_table(0).unwrap();
    assert_eq!(size, 0x8_0000);
    assert_eq!(w.env.gic.baser(0) & gits::SIZE_MASK, 7);
    // A MAPD for a DeviceID beyond Devbits is refused.
    w.its_init();
    w.send(&[mapd(1 << 16, ITT, 8, true)]);
    assert_eq!(w.executed(cmd::MAPD), 0);
    assert_eq!(w.env.hm.pins().count(ITT), 0);
}

#[test]
fn a_64_bit_store_to_gicr_ctlr_cannot_skip_the_pins() {
    let mut w = World::new();
    w.env.donate(SPARE).unwrap();
    w.w64(GICR_BASE + gicr::CTLR, 1);
    assert_eq!(w.r32(GICR_BASE + gicr::CTLR) & 1, 0);
}

#[test]
fn every_physical_command_kind_reaches_the_its() {
    let mut w = World::new();
    w.its_init();
    let plain = |op: u8| [(1 << 32) | u64::from(op), 0, 0, 0];
    let movall = |a: u64, b: u64| [u64::from(cmd::MOVALL), 0, a << 16, b << 16];
    w.send(&[
        mapc(0, 0),
        mapd(1, ITT, 8, true),
        [(1 << 32) | u64::from(cmd::MAPI), 2, 0, 0],
        mapti(1, 3, 8200, 0),
        plain(cmd::MOVI),
        plain(cmd::INT),
        plain(cmd::CLEAR),
        plain(cmd::INV),
        [u64::from(cmd::INVALL), 0, 0, 0],
        plain(cmd::DISCARD),
        movall(0, 1),
        movall(0, 5), // no processor 5: refused
        sync(0),
        mapd(1, 0, 8, false),
        [u64::from(cmd::MAPC), 0, 7 << 16, 0], // V = 0: no target needed
    ]);
    assert_eq!(w.creadr(), w.wr);
    let ops: Vec<u8> = w.env.gic.executed.iter().map(|c| c[0] as u8).collect();
    assert_eq!(
        ops,
        vec![
            cmd::MAPC,
            cmd::MAPD,
            cmd::MAPI,
            cmd::MAPTI,
            cmd::MOVI,
            cmd::INT,
            cmd::CLEAR,
            cmd::INV,
            cmd::INVALL,
            cmd::DISCARD,
            cmd::MOVALL,
            cmd::SYNC,
            cmd::MAPD,
            cmd::MAPC
        ]
    );
    // Commands reach the ITS exactly as the host wrote them.
    assert_eq!(w.env.gic.executed[3], mapti(1, 3, 8200, 0));
    assert_eq!(w.env.hm.pins().count(ITT), 0, "MAPD V=0 released the ITT");
}

#[test]
fn lpi_tables_firmware_left_enabled_get_pinned_and_frozen() {
    let mut env = TestEnv::new();
    let rd0 = &mut env.gic.rds[0];
    rd0.prop = PROP | PROP_BITS;
    rd0.pend = PEND;
    rd0.ctlr = 1;
    let mut emu = GicEmu::probe(
        &mut env,
        &[PhysRange::new(GICR_BASE, 0x10_0000)],
        None,
        &[PhysRange::new(ITS_BASE, 2 * FRAME)],
    )
    .unwrap();
    emu.pin_firmware_tables(&mut env);
    assert_eq!(env.donate(PEND), Err(Error::Busy));
    assert_eq!(env.donate(PROP), Err(Error::Busy));
    emu.access(&mut env, GICR_BASE + gicr::PENDBASER, 8, Some(SPARE))
        .unwrap();
    assert_eq!(env.gic.rds[0].pend, PEND);
}

/// A second LPI property table (16 ID bits: 56 KiB), host-owned.
const PROP2: u64 = HOST + 0x18_0000;
/// Redistributor 1's RD_base.
const RD1: u64 = GICR_BASE + 2 * FRAME;

/// Redistributor 0 with 14 ID bits (a one-page pending table) and LPIs on; the page after
/// its pending table donated. On a GIC whose redistributors share one LPI configuration
/// (`GICR_TYPER.CommonLPIAff`), another redistributor's `GICR_PROPBASER` may decide how
/// far redistributor 0 writes into its pending table.
fn small_rd0_and_donated_neighbour(w: &mut World) {
    w.env.gic.shared_config = true;
    w.its_init();
    w.w64(GICR_BASE + gicr::PROPBASER, PROP | 13);
    w.w64(GICR_BASE + gicr::PENDBASER, PEND);
    w.w32(GICR_BASE + gicr::CTLR, 1);
    assert_eq!(w.r32(GICR_BASE + gicr::CTLR) & 1, 1);
    assert_eq!(w.env.hm.pins().count(PEND + PAGE), 0);
    w.env.donate(PEND + PAGE).unwrap();
}

/// LPI 40000 (beyond 14 ID bits, its pending bit in the second page) raised on
/// redistributor 0.
fn raise_lpi_40000(w: &mut World) {
    w.send(&[
        mapc(0, 0),
        mapd(1, ITT, 8, true),
        mapti(1, 0, 40000, 0),
        int(1, 0),
        sync(0),
    ]);
    assert_eq!(w.creadr(), w.wr);
}

#[test]
fn a_later_propbaser_cannot_widen_an_enabled_redistributors_lpis() {
    let mut w = World::new();
    small_rd0_and_donated_neighbour(&mut w);
    // Another redistributor's PROPBASER with 16 ID bits, while redistributor 0 uses 14:
    // refused (the enabled redistributors' table is the only one accepted from now on).
    w.w64(RD1 + gicr::PROPBASER, PROP2 | PROP_BITS);
    assert_ne!(w.r64(RD1 + gicr::PROPBASER), PROP2 | PROP_BITS);
    raise_lpi_40000(&mut w);
    assert!(w.page_is_zero(PEND + PAGE), "the GIC wrote a donated page");
    assert_eq!(w.env.reclaim(), Ok(PEND + PAGE));
    assert!(w.env.gic.wild.is_empty());
}

#[test]
fn enable_lpis_is_refused_while_another_redistributor_names_another_table() {
    let mut w = World::new();
    w.env.gic.shared_config = true;
    w.its_init();
    // Redistributor 0 is given 14 bits, then redistributor 1 (LPIs off there) 16, then
    // redistributor 0 enables LPIs: with a shared configuration it could use 16.
    w.w64(GICR_BASE + gicr::PROPBASER, PROP | 13);
    w.w64(GICR_BASE + gicr::PENDBASER, PEND);
    w.w64(RD1 + gicr::PROPBASER, PROP2 | PROP_BITS);
    assert_eq!(w.r64(RD1 + gicr::PROPBASER), PROP2 | PROP_BITS);
    w.env.donate(PEND + PAGE).unwrap();
    w.w32(GICR_BASE + gicr::CTLR, 1);
    assert_eq!(w.r32(GICR_BASE + gicr::CTLR) & 1, 0, "EnableLPIs refused");
    raise_lpi_40000(&mut w);
    assert!(w.page_is_zero(PEND + PAGE), "the GIC wrote a donated page");
    assert_eq!(w.env.reclaim(), Ok(PEND + PAGE));
}

#[test]
fn redistributors_sharing_one_property_table_all_get_lpis() {
    // What Linux does: one property table for every redistributor (attributes may
    // differ), a pending table each.
    let mut w = World::new();
    w.env.gic.shared_config = true;
    w.its_init();
    w.lpis_on();
    w.w64(RD1 + gicr::PROPBASER, PROP | PROP_BITS | gits::SH_INNER);
    w.w64(RD1 + gicr::PENDBASER, PEND + 0x1_0000);
    w.w32(RD1 + gicr::CTLR, 1);
    assert_eq!(w.r32(RD1 + gicr::CTLR) & 1, 1);
    // An LPI to redistributor 1 (collection 1) lands in its pending table.
    w.send(&[
        mapc(1, 1),
        mapd(1, ITT, 8, true),
        mapti(1, 0, 40000, 1),
        int(1, 0),
        sync(1),
    ]);
    assert_eq!(w.creadr(), w.wr);
    let at = PEND + 0x1_0000 + 40000 / 64 * 8;
    assert_ne!(w.env.ram.read_u64(at) & 1 << (40000 % 64), 0);
}

#[test]
fn linux_sets_up_every_table_the_its_shows() {
    // Linux's its_alloc_tables: every GITS_BASER<n> whose Type is not 0 gets a page size
    // probe (64K, 16K, 4K: the first that reads back) and a table, and the ITS is given
    // up if any read-back differs from what was written. The vPE table GICv4 hardware
    // has (GITS_BASER2 in the model) must therefore not show.
    let mut w = World::new();
    let tables = [DT, CT, SPARE, SPARE + 0x1_0000];
    let mut next = tables.iter();
    for n in 0..8u64 {
        let reg = ITS_BASE + gits::BASER0 + 8 * n;
        let v = w.r64(reg);
        if gits::baser_type(v) == 0 {
            continue;
        }
        let psz = [2u64, 1, 0]
            .into_iter()
            .find(|&p| {
                w.w64(reg, (v & !gits::BASER_PAGE_SIZE_MASK) | p << 8);
                (w.r64(reg) >> 8) & 3 == p
            })
            .unwrap_or_else(|| panic!("GITS_BASER{n}: no page size sticks"));
        let table = *next.next().unwrap();
        let want = (w.r64(reg) & !(gits::BASER_PA_MASK | gits::SIZE_MASK))
            | table
            | gits::VALID
            | gits::SH_INNER;
        w.w64(reg, want);
        assert_eq!(
            w.r64(reg),
            want,
            "GITS_BASER{n} (page size {psz}) doesn't stick"
        );
    }
    assert!(w.emu.its[0].shadow_table(0).is_some());
    assert!(w.emu.its[0].shadow_table(1).is_some());
    assert_eq!(w.env.gic.baser(2) & gits::VALID, 0, "no vPE table");
}

#[test]
fn only_architected_registers_of_the_trapped_frames_reach_the_gic() {
    let mut w = World::new();
    w.env.gic.other.clear();
    // IMPLEMENTATION DEFINED registers (GIC-600/700: GITS_FCTLR, GITS_OPR cache locks,
    // GICR_FCTLR, GICR_PWRR) and reserved offsets: read as zero, writes dropped.
    for pa in [
        ITS_BASE + 0x20,
        ITS_BASE + 0xc000,
        ITS_BASE + 0x150,
        GICR_BASE + 0x20,
        GICR_BASE + 0x24,
        GICR_BASE + 0x100,
        RD1 + 0x8000,
    ] {
        w.w32(pa, 0xffff_ffff);
        w.w64(pa & !7, u64::MAX);
        assert_eq!(w.r32(pa), 0, "{pa:#x}");
    }
    assert_eq!(
        w.env.gic.other,
        vec![],
        "IMPLEMENTATION DEFINED accesses reached the GIC"
    );
    // The architected ones the host needs still do: GITS_STATUSR, GITS_PIDR2, GICR_WAKER,
    // GICR_SYNCR, GICR_INVLPIR, GICR_PIDR2 (the model does not know them: it records
    // them).
    w.r32(ITS_BASE + 0x40);
    w.r32(ITS_BASE + 0xffe8);
    w.w32(GICR_BASE + 0x14, 0);
    w.r32(GICR_BASE + 0xc0);
    w.w64(GICR_BASE + 0xa0, 8192);
    w.r32(RD1 + 0xffe8);
    // (The model records registers by their 64-bit-aligned offset.)
    let reached: Vec<u64> = w.env.gic.other.iter().map(|&(pa, _)| pa & !7).collect();
    for pa in [
        ITS_BASE + 0x40,
        ITS_BASE + 0xffe8,
        GICR_BASE + 0x14,
        GICR_BASE + 0xc0,
        GICR_BASE + 0xa0,
        RD1 + 0xffe8,
    ] {
        assert!(
            reached.contains(&(pa & !7)),
            "{pa:#x} did not reach the GIC"
        );
    }
}

#[test]
fn a_mapd_the_its_would_ignore_changes_no_pin() {
    let mut w = World::new();
    w.its_init();
    // A 64 KiB device table of 8-byte entries: DeviceIDs 0..8191.
    w.send(&[mapd(1, ITT, 8, true)]);
    assert_eq!(w.env.hm.pins().count(ITT), 1);
    // DeviceIDs within Devbits (16) but beyond the table: a command error the ITS
    // ignores. Warden neither pins the new ITT nor drops a pin for it.
    w.send(&[mapd(8192, ITT2, 8, true), mapd(9000, 0, 8, false)]);
    assert_eq!(w.creadr(), w.wr);
    assert_eq!(w.env.hm.pins().count(ITT2), 0);
    assert_eq!(w.executed(cmd::MAPD), 1);
    // No device table at all (disabled, GITS_BASER0 invalid): every MAPD is ignored.
    w.w32(ITS_BASE + gits::CTLR, 0);
    w.w64(ITS_BASE + gits::BASER0, 0);
    w.w32(ITS_BASE + gits::CTLR, 1);
    w.send(&[mapd(1, ITT2, 8, true), mapd(1, 0, 8, false)]);
    assert_eq!(w.env.hm.pins().count(ITT2), 0);
    assert_eq!(
        w.env.hm.pins().count(ITT),
        1,
        "DeviceID 1's ITT stays pinned"
    );
    assert_eq!(w.executed(cmd::MAPD), 1);
}

#[test]
fn a_redistributor_that_hides_vlpis_at_probe_keeps_the_gicv4_layout() {
    // GICv4: RD_base, SGI_base, VLPI_base, reserved per redistributor (256 KiB). The
    // second one reads GICR_TYPER as zero when Warden probes (e.g. still powered down).
    let mut env = TestEnv::new();
    let vlpis = gicr::TYPER_VLPIS;
    env.gic.rds = (0..3u64)
        .map(|i| super::model::RdModel {
            base: GICR_BASE + 4 * FRAME * i,
            typer: match i {
                0 => vlpis,
                1 => 0,
                _ => (2 << 8) | vlpis | gicr::TYPER_LAST,
            },
            ..Default::default()
        })
        .collect();
    let mut emu = GicEmu::probe(
        &mut env,
        &[PhysRange::new(GICR_BASE, 0x10_0000)],
        None,
        &[PhysRange::new(ITS_BASE, 2 * FRAME)],
    )
    .unwrap();
    assert_eq!(
        emu.counts(),
        (1, 3),
        "no redistributor made up of a VLPI_base frame"
    );
    // Redistributor 1's VLPI_base frame is trapped as one: GICR_VPENDBASER (0x78 there)
    // reads as zero and a write never reaches the GIC.
    let vpendbaser = GICR_BASE + 4 * FRAME + 2 * FRAME + 0x78;
    assert!(emu.traps(vpendbaser));
    env.gic.other.clear();
    emu.access(&mut env, vpendbaser, 8, Some(gits::VALID | PEND))
        .unwrap();
    assert_eq!(emu.access(&mut env, vpendbaser, 8, None), Some(0));
    assert!(
        !env.gic.other.iter().any(|&(pa, w)| pa == vpendbaser && w),
        "GICR_VPENDBASER written"
    );
}

#[test]
fn rdbase_bit_51_is_part_of_the_target() {
    // RDbase is DW2[51:16] (52-bit physical addresses): a target with bit 51 set names
    // no redistributor (here: processor 0 plus bit 51), whatever bits 50:16 say.
    let mut w = World::new();
    w.its_init();
    let bit51 = 1u64 << 51;
    w.send(&[
        [cmd::MAPC as u64, 0, cmd::VALID | bit51 | 3, 0],
        [cmd::SYNC as u64, 0, bit51, 0],
        [cmd::MOVALL as u64, 0, 0, bit51],
    ]);
    assert_eq!(w.creadr(), w.wr);
    assert_eq!(w.env.gic.executed, Vec::<[u64; 4]>::new());
}

#[test]
fn an_itt_straddling_a_donated_page_is_refused_whole() {
    let mut w = World::new();
    w.its_init();
    w.env.donate(SPARE).unwrap();
    let before = w.env.hm.pins().pinned_pages();
    // 256 entries of 8 bytes from 1 KiB below the donated page: half of it is Warden's.
    w.send(&[
        mapd(1, SPARE - 0x400, 8, true),
        mapc(0, 0),
        mapti(1, 200, 8300, 0),
    ]);
    assert_eq!(w.creadr(), w.wr);
    assert_eq!(w.executed(cmd::MAPD), 0);
    assert_eq!(
        w.env.hm.pins().pinned_pages(),
        before,
        "no page of it pinned"
    );
    assert!(w.page_is_zero(SPARE));
    assert_eq!(w.env.reclaim(), Ok(SPARE));
}

#[test]
fn a_redistributor_that_lost_its_state_is_not_enabled_on_stale_pins() {
    let mut w = World::new();
    w.its_init();
    w.lpis_on();
    w.send(&[mapc(0, 0), mapd(1, ITT, 8, true), mapti(1, 0, 8300, 0)]);
    // Firmware powers the redistributor down and up again (CPU_OFF, CPU_ON): LPIs off,
    // the table registers at their reset values, architecturally UNKNOWN — here naming
    // Warden's memory.
    let warden = CARVE.base.get() + 0x10_0000;
    let rd = &mut w.env.gic.rds[0];
    (rd.ctlr, rd.prop, rd.pend) = (0, warden | PROP_BITS, warden);
    // EnableLPIs alone would make it use the tables the registers name now: refused.
    w.w32(GICR_BASE + gicr::CTLR, 1);
    assert_eq!(w.r32(GICR_BASE + gicr::CTLR) & 1, 0, "EnableLPIs refused");
    w.send(&[int(1, 0), sync(0)]);
    assert!(w.page_is_zero(warden), "the GIC wrote Warden's memory");
    // The host programs its tables again: they are checked and pinned as the first time.
    w.lpis_on();
    assert_eq!(w.r32(GICR_BASE + gicr::CTLR) & 1, 1);
    w.send(&[int(1, 0), sync(0)]);
    assert_ne!(
        w.env.ram.read_u64(PEND + 8300 / 64 * 8) & 1 << (8300 % 64),
        0
    );
    assert!(w.env.gic.wild.is_empty());
}
