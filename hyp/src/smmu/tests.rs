//! The driver against [`SmmuModel`] over a RAM arena: observable behaviour only (what a
//! device's DMA reaches, the events it leaves, the commands the SMMU executed).

use super::cmdq::op;
use super::model::{DmaFault, ModelConfig, SmmuModel, StreamCfg};
use super::ste::{CONFIG_S2, STE0_V};
use super::*;
use crate::addr::Ipa;
use crate::s2mmu::{Granule, NoTlb, S2Attrs, S2Geometry, Stage2};
use crate::testutil::{ARENA_BASE, Arena, Ram};
use std::rc::Rc;
use std::string::ToString;
use std::vec::Vec;

const SID: u32 = 0x10;
const VMID: u16 = 1;
use crate::PAGE;
/// Where test mappings send DMA (outside the arena: the model never touches data).
const OUT: u64 = 0x10_0000_0000;

type TestSmmu<'a> = Smmu<&'a SmmuModel, Arena>;

fn setup(cfg: ModelConfig) -> (Arena, SmmuModel) {
    let mem = Arena::new(16 << 20);
    let model = SmmuModel::new(cfg, mem.ram());
    (mem, model)
}

fn probe_with<'a>(
    model: &'a SmmuModel,
    mem: &mut Arena,
    cfg: &ProbeConfig<'_>,
) -> Result<TestSmmu<'a>, SmmuError> {
    // SAFETY: every call in these tests passes this same arena.
    unsafe { Smmu::probe(model, mem, cfg) }
}

fn probe<'a>(model: &'a SmmuModel, mem: &mut Arena) -> TestSmmu<'a> {
    let sids = [(SID, 1)];
    probe_with(
        model,
        mem,
        &ProbeConfig {
            coherent: true,
            sids: &sids,
            cmdq_log2: None,
            evtq_log2: None,
        },
    )
    .unwrap()
}

/// A stage-2 with a 32-bit IPA space and 40-bit output in the arena.
fn stage2(mem: &mut Arena, granule: Granule) -> Stage2 {
    let geom = S2Geometry::new(granule, 32, 40).unwrap();
    // SAFETY: the tests pass this arena to every call.
    unsafe { Stage2::new(geom, mem) }.unwrap()
}

fn map(s2: &mut Stage2, mem: &mut Arena, ipa: u64, pa: u64, size: u64) {
    s2.map(
        mem,
        &mut NoTlb,
        Ipa(ipa),
        PhysAddr(pa),
        size,
        S2Attrs::NORMAL_RW,
    )
    .unwrap();
}

/// A probed SMMU with `SID` translating through a fresh 4 KiB stage-2.
fn attached<'a>(model: &'a SmmuModel, mem: &mut Arena) -> (TestSmmu<'a>, Stage2) {
    let mut smmu = probe(model, mem);
    let s2 = stage2(mem, Granule::Size4K);
    smmu.set_ste_s2(mem, SID, &S2Config::for_stage2(&s2, VMID))
        .unwrap();
    (smmu, s2)
}

fn events(smmu: &mut TestSmmu<'_>, mem: &mut Arena) -> (Vec<Event>, EventPoll) {
    let mut out = Vec::new();
    let poll = smmu.poll_events(mem, |e| out.push(e));
    (out, poll)
}

// ----------------------------------------------------------------------------------------
// Register map.

#[test]
fn register_offsets_match_the_spec() {
    let spec: &[(usize, usize)] = &[
        (regs::IDR0.offset(), 0x0),
        (regs::IDR1.offset(), 0x4),
        (regs::IDR2.offset(), 0x8),
        (regs::IDR3.offset(), 0xC),
        (regs::IDR4.offset(), 0x10),
        (regs::IDR5.offset(), 0x14),
        (regs::IIDR.offset(), 0x18),
        (regs::AIDR.offset(), 0x1C),
        (regs::CR0.offset(), 0x20),
        (regs::CR0ACK.offset(), 0x24),
        (regs::CR1.offset(), 0x28),
        (regs::CR2.offset(), 0x2C),
        (regs::STATUSR.offset(), 0x40),
        (regs::GBPA.offset(), 0x44),
        (regs::AGBPA.offset(), 0x48),
        (regs::IRQ_CTRL.offset(), 0x50),
        (regs::IRQ_CTRLACK.offset(), 0x54),
        (regs::GERROR.offset(), 0x60),
        (regs::GERRORN.offset(), 0x64),
        (regs::GERROR_IRQ_CFG0.offset(), 0x68),
        (regs::STRTAB_BASE.offset(), 0x80),
        (regs::STRTAB_BASE_CFG.offset(), 0x88),
        (regs::CMDQ_BASE.offset(), 0x90),
        (regs::CMDQ_PROD.offset(), 0x98),
        (regs::CMDQ_CONS.offset(), 0x9C),
        (regs::EVENTQ_BASE.offset(), 0xA0),
        (regs::EVENTQ_IRQ_CFG0.offset(), 0xB0),
        (regs::PRIQ_BASE.offset(), 0xC0),
        (regs::EVENTQ_PROD.offset(), 0x100A8),
        (regs::EVENTQ_CONS.offset(), 0x100AC),
    ];
    for &(got, want) in spec {
        assert_eq!(got, want);
    }
    // 64-bit registers are 8-aligned; everything fits the 128 KiB frame.
    for off in [
        regs::STRTAB_BASE.offset(),
        regs::CMDQ_BASE.offset(),
        regs::EVENTQ_BASE.offset(),
        regs::GERROR_IRQ_CFG0.offset(),
    ] {
        assert_eq!(off % 8, 0);
    }
    assert!(spec.iter().all(|&(o, _)| o + 4 <= regs::FRAME_SIZE));
    assert_eq!(regs::GBPA::ABORT::SET.value, 1 << 20);
    assert_eq!(regs::GBPA::UPDATE::SET.value, 1 << 31);
    assert_eq!(
        regs::CR2::PTM::SET.value | regs::CR2::RECINVSID::SET.value | regs::CR2::E2H::SET.value,
        0b111
    );
}

/// The register table of IHI 0070 (§6.2, name → offset from the frame base), checked
/// three ways that share no declaration: the driver's frame layout (`offset_of!` on the
/// tock-registers struct), the driver's register handles, and the model's own map (which
/// decodes raw offsets from its own literals).
#[test]
fn register_table_matches_frame_layout_handles_and_model() {
    use core::mem::offset_of;
    use regs::SmmuFrame;
    const TABLE: &[(&str, usize)] = &[
        ("IDR0", 0x0000),
        ("IDR1", 0x0004),
        ("IDR2", 0x0008),
        ("IDR3", 0x000C),
        ("IDR4", 0x0010),
        ("IDR5", 0x0014),
        ("IIDR", 0x0018),
        ("AIDR", 0x001C),
        ("CR0", 0x0020),
        ("CR0ACK", 0x0024),
        ("CR1", 0x0028),
        ("CR2", 0x002C),
        ("STATUSR", 0x0040),
        ("GBPA", 0x0044),
        ("AGBPA", 0x0048),
        ("IRQ_CTRL", 0x0050),
        ("IRQ_CTRLACK", 0x0054),
        ("GERROR", 0x0060),
        ("GERRORN", 0x0064),
        ("GERROR_IRQ_CFG0", 0x0068),
        ("STRTAB_BASE", 0x0080),
        ("STRTAB_BASE_CFG", 0x0088),
        ("CMDQ_BASE", 0x0090),
        ("CMDQ_PROD", 0x0098),
        ("CMDQ_CONS", 0x009C),
        ("EVENTQ_BASE", 0x00A0),
        ("EVENTQ_IRQ_CFG0", 0x00B0),
        ("PRIQ_BASE", 0x00C0),
        ("EVENTQ_PROD", 0x100A8),
        ("EVENTQ_CONS", 0x100AC),
    ];
    let layout = |name: &str| -> usize {
        match name {
            "IDR0" => offset_of!(SmmuFrame, page0.idr0),
            "IDR1" => offset_of!(SmmuFrame, page0.idr1),
            "IDR2" => offset_of!(SmmuFrame, page0.idr2),
            "IDR3" => offset_of!(SmmuFrame, page0.idr3),
            "IDR4" => offset_of!(SmmuFrame, page0.idr4),
            "IDR5" => offset_of!(SmmuFrame, page0.idr5),
            "IIDR" => offset_of!(SmmuFrame, page0.iidr),
            "AIDR" => offset_of!(SmmuFrame, page0.aidr),
            "CR0" => offset_of!(SmmuFrame, page0.cr0),
            "CR0ACK" => offset_of!(SmmuFrame, page0.cr0ack),
            "CR1" => offset_of!(SmmuFrame, page0.cr1),
            "CR2" => offset_of!(SmmuFrame, page0.cr2),
            "STATUSR" => offset_of!(SmmuFrame, page0.statusr),
            "GBPA" => offset_of!(SmmuFrame, page0.gbpa),
            "AGBPA" => offset_of!(SmmuFrame, page0.agbpa),
            "IRQ_CTRL" => offset_of!(SmmuFrame, page0.irq_ctrl),
            "IRQ_CTRLACK" => offset_of!(SmmuFrame, page0.irq_ctrlack),
            "GERROR" => offset_of!(SmmuFrame, page0.gerror),
            "GERRORN" => offset_of!(SmmuFrame, page0.gerrorn),
            "GERROR_IRQ_CFG0" => offset_of!(SmmuFrame, page0.gerror_irq_cfg0),
            "STRTAB_BASE" => offset_of!(SmmuFrame, page0.strtab_base),
            "STRTAB_BASE_CFG" => offset_of!(SmmuFrame, page0.strtab_base_cfg),
            "CMDQ_BASE" => offset_of!(SmmuFrame, page0.cmdq_base),
            "CMDQ_PROD" => offset_of!(SmmuFrame, page0.cmdq_prod),
            "CMDQ_CONS" => offset_of!(SmmuFrame, page0.cmdq_cons),
            "EVENTQ_BASE" => offset_of!(SmmuFrame, page0.eventq_base),
            "EVENTQ_IRQ_CFG0" => offset_of!(SmmuFrame, page0.eventq_irq_cfg0),
            "PRIQ_BASE" => offset_of!(SmmuFrame, page0.priq_base),
            "EVENTQ_PROD" => offset_of!(SmmuFrame, page1.eventq_prod),
            "EVENTQ_CONS" => offset_of!(SmmuFrame, page1.eventq_cons),
            _ => unreachable!("{name}"),
        }
    };
    let handle = |name: &str| -> usize {
        match name {
            "IDR0" => regs::IDR0.offset(),
            "IDR1" => regs::IDR1.offset(),
            "IDR2" => regs::IDR2.offset(),
            "IDR3" => regs::IDR3.offset(),
            "IDR4" => regs::IDR4.offset(),
            "IDR5" => regs::IDR5.offset(),
            "IIDR" => regs::IIDR.offset(),
            "AIDR" => regs::AIDR.offset(),
            "CR0" => regs::CR0.offset(),
            "CR0ACK" => regs::CR0ACK.offset(),
            "CR1" => regs::CR1.offset(),
            "CR2" => regs::CR2.offset(),
            "STATUSR" => regs::STATUSR.offset(),
            "GBPA" => regs::GBPA.offset(),
            "AGBPA" => regs::AGBPA.offset(),
            "IRQ_CTRL" => regs::IRQ_CTRL.offset(),
            "IRQ_CTRLACK" => regs::IRQ_CTRLACK.offset(),
            "GERROR" => regs::GERROR.offset(),
            "GERRORN" => regs::GERRORN.offset(),
            "GERROR_IRQ_CFG0" => regs::GERROR_IRQ_CFG0.offset(),
            "STRTAB_BASE" => regs::STRTAB_BASE.offset(),
            "STRTAB_BASE_CFG" => regs::STRTAB_BASE_CFG.offset(),
            "CMDQ_BASE" => regs::CMDQ_BASE.offset(),
            "CMDQ_PROD" => regs::CMDQ_PROD.offset(),
            "CMDQ_CONS" => regs::CMDQ_CONS.offset(),
            "EVENTQ_BASE" => regs::EVENTQ_BASE.offset(),
            "EVENTQ_IRQ_CFG0" => regs::EVENTQ_IRQ_CFG0.offset(),
            "PRIQ_BASE" => regs::PRIQ_BASE.offset(),
            "EVENTQ_PROD" => regs::EVENTQ_PROD.offset(),
            "EVENTQ_CONS" => regs::EVENTQ_CONS.offset(),
            _ => unreachable!("{name}"),
        }
    };
    let mut modelled = 0;
    for &(name, off) in TABLE {
        assert_eq!(layout(name), off, "{name}: frame layout");
        assert_eq!(handle(name), off, "{name}: register handle");
        if let Some(m) = SmmuModel::spec_offset(name) {
            assert_eq!(m, off, "{name}: the model's map");
            modelled += 1;
        }
    }
    // The model implements every register the driver touches.
    assert_eq!(modelled, 22);
    assert_eq!(core::mem::size_of::<SmmuFrame>(), 0x20000);
    assert_eq!(offset_of!(SmmuFrame, page1), 0x10000);
}

// ----------------------------------------------------------------------------------------
// Probe.

#[test]
fn probe_aborts_before_enabling_and_never_bypasses() {
    let (mut mem, model) = setup(ModelConfig::default());
    // Out of reset the SMMU is disabled with GBPA bypass: DMA passes untranslated.
    assert_eq!(model.dma(SID, 0x1000, false), Ok(PhysAddr(0x1000)));
    let before = model.bypassed();
    let smmu = probe(&model, &mut mem);

    let writes = model.writes();
    let abort_at = writes
        .iter()
        .position(|&(o, v)| {
            o == regs::GBPA.offset() && v as u32 & regs::GBPA::ABORT::SET.value != 0
        })
        .expect("GBPA.ABORT written");
    let cr0_at = writes
        .iter()
        .position(|&(o, _)| o == regs::CR0.offset())
        .unwrap();
    let enable_at = writes
        .iter()
        .position(|&(o, v)| o == regs::CR0.offset() && v as u32 & regs::CR0::SMMUEN::SET.value != 0)
        .unwrap();
    assert!(
        abort_at < cr0_at && abort_at < enable_at,
        "GBPA.ABORT first"
    );
    assert_eq!(writes[cr0_at], (regs::CR0.offset(), 0), "then disabled");
    assert_ne!(model.reg(regs::GBPA) & regs::GBPA::ABORT::SET.value, 0);
    assert_eq!(
        model.reg(regs::CR0ACK),
        regs::CR0::SMMUEN::SET.value
            | regs::CR0::CMDQEN::SET.value
            | regs::CR0::EVENTQEN::SET.value
    );
    assert_eq!(
        model.reg(regs::CR2),
        regs::CR2::PTM::SET.value | regs::CR2::RECINVSID::SET.value
    );
    // Coherent: write-back inner-shareable queues and tables.
    assert_eq!(model.reg(regs::CR1), 0b11_01_01_11_01_01);
    assert_eq!(model.reg(regs::IRQ_CTRL), 0);
    assert_eq!(model.guard_violations(), 0);
    // Caches cleaned once, with one CMD_SYNC (no TLBI_EL2_ALL without IDR0.HYP).
    let ops: Vec<u8> = model.executed().iter().map(Command::opcode).collect();
    assert_eq!(ops, [op::CFGI_STE_RANGE, op::TLBI_NSNH_ALL, op::CMD_SYNC]);
    assert_eq!(model.executed()[0], Command::cfgi_all());
    // Every StreamID aborts, none passes.
    for sid in [0, 1, SID, 0xff, 0x100, 0xffff] {
        assert!(model.dma(sid, 0x1000, true).is_err(), "sid {sid:#x}");
    }
    assert_eq!(model.bypassed(), before);
    assert!(smmu.stats().syncs_completed == 1);
    assert!(!smmu.btm_active());
}

#[test]
fn probe_issues_tlbi_el2_all_with_hyp() {
    let (mut mem, model) = setup(ModelConfig {
        hyp: true,
        ..ModelConfig::default()
    });
    probe(&model, &mut mem);
    assert_eq!(model.count(op::TLBI_EL2_ALL), 1);
    assert!(model.rejected().is_empty());
}

#[test]
fn every_ste_aborts_until_configured() {
    let (mut mem, model) = setup(ModelConfig::default());
    let smmu = probe(&model, &mut mem);
    // SIDs in the described span: abort STEs, silently.
    for sid in [0, SID, 0xff] {
        assert_eq!(smmu.read_ste(&mem, sid), Some(Ste::ABORT));
        assert_eq!(model.dma(sid, 0x2000, false), Err(DmaFault::Abort));
    }
    assert_eq!(model.events_recorded(), 0, "abort STEs abort silently");
    // A span without a level-2 table: no STE at all, the SMMU aborts and reports it.
    assert_eq!(smmu.read_ste(&mem, 0x100), None);
    assert_eq!(model.dma(0x100, 0x2000, false), Err(DmaFault::BadStreamId));
    assert_eq!(model.dma(1 << 16, 0, false), Err(DmaFault::BadStreamId));
    assert_eq!(model.bypassed(), 0);
}

#[test]
fn linear_stream_table_for_small_sidsize() {
    let (mut mem, model) = setup(ModelConfig {
        sidsize: 6,
        ..ModelConfig::default()
    });
    let mut smmu = probe(&model, &mut mem);
    assert_eq!(
        model.reg(regs::STRTAB_BASE_CFG),
        6,
        "FMT linear, LOG2SIZE 6"
    );
    assert_eq!(smmu.num_sids(), 64);
    // Table + command queue + event queue.
    assert_eq!(mem.live_count(), 3);
    for sid in 0..64 {
        assert_eq!(smmu.read_ste(&mem, sid), Some(Ste::ABORT));
        assert_eq!(model.dma(sid, 0, false), Err(DmaFault::Abort));
    }
    assert_eq!(
        smmu.set_ste_abort(&mut mem, 64),
        Err(SmmuError::SidOutOfRange(64))
    );
    let s2 = stage2(&mut mem, Granule::Size4K);
    let cfg = S2Config::for_stage2(&s2, VMID);
    assert_eq!(
        smmu.set_ste_s2(&mut mem, 64, &cfg),
        Err(SmmuError::SidOutOfRange(64))
    );
    smmu.set_ste_s2(&mut mem, 63, &cfg).unwrap();
    assert_eq!(model.dma(63, 0, false), Err(DmaFault::Translation));
}

#[test]
fn two_level_allocates_only_described_spans() {
    let (mut mem, model) = setup(ModelConfig::default());
    let sids = [(SID, 1), (0x300, 0x200), (0x2ff, 0), (0x5_0000, 4)];
    let mut smmu = probe_with(
        &model,
        &mut mem,
        &ProbeConfig {
            coherent: true,
            sids: &sids,
            cmdq_log2: None,
            evtq_log2: None,
        },
    )
    .unwrap();
    let cfg = model.reg(regs::STRTAB_BASE_CFG);
    assert_eq!(
        cfg,
        (1 << 16) | (8 << 6) | 16,
        "2-level, SPLIT 8, LOG2SIZE 16"
    );
    // L1 + level-2 tables for spans 0, 3 and 4 (the empty range and the SID beyond
    // SIDSIZE get none) + two queues.
    assert_eq!(mem.live_count(), 1 + 3 + 2);
    let l1 = model.read64(regs::STRTAB_BASE)
        & (regs::STRTAB_BASE::ADDR.mask << regs::STRTAB_BASE::ADDR.shift);
    let ram = mem.ram();
    for span in 0..256u64 {
        let desc = ram.read_u64(l1 + span * 8);
        let expect = matches!(span, 0 | 3 | 4);
        assert_eq!(desc & 0x1f, if expect { 9 } else { 0 }, "span {span}");
    }
    assert_eq!(smmu.read_ste(&mem, 0x4ff), Some(Ste::ABORT));
    assert_eq!(smmu.read_ste(&mem, 0x500), None);
    // A span is added on demand, aborting until configured.
    smmu.set_ste_abort(&mut mem, 0x1234).unwrap();
    assert_eq!(mem.live_count(), 7);
    assert_eq!(ram.read_u64(l1 + 0x12 * 8) & 0x1f, 9);
    for sid in [0x1200, 0x1234, 0x12ff] {
        assert_eq!(model.dma(sid, 0, false), Err(DmaFault::Abort));
    }
}

#[test]
fn smmu_without_stage2_or_aarch64_is_rejected_and_left_aborting() {
    for cfg in [
        ModelConfig {
            s2p: false,
            ..ModelConfig::default()
        },
        ModelConfig {
            aarch64: false,
            ..ModelConfig::default()
        },
    ] {
        let (mut mem, model) = setup(cfg);
        let sids = [(0, 1 << 16)];
        let r = probe_with(
            &model,
            &mut mem,
            &ProbeConfig {
                coherent: true,
                sids: &sids,
                cmdq_log2: None,
                evtq_log2: None,
            },
        );
        assert!(matches!(r, Err(SmmuError::Unsupported(_))));
        assert_eq!(model.reg(regs::CR0ACK), 0);
        assert_ne!(model.reg(regs::GBPA) & regs::GBPA::ABORT::SET.value, 0);
        assert_eq!(model.dma(SID, 0x1000, false), Err(DmaFault::Abort));
        assert_eq!(mem.live_count(), 0);
    }
}

#[test]
fn probe_out_of_memory_frees_everything_and_stays_aborting() {
    for budget in 0..6 {
        let (mut mem, model) = setup(ModelConfig::default());
        mem.budget = Some(budget);
        let sids = [(0, 0x300)];
        let r = probe_with(
            &model,
            &mut mem,
            &ProbeConfig {
                coherent: true,
                sids: &sids,
                cmdq_log2: None,
                evtq_log2: None,
            },
        );
        assert_eq!(r.err(), Some(SmmuError::OutOfMemory), "budget {budget}");
        assert_eq!(mem.live_count(), 0);
        assert_eq!(model.reg(regs::CR0ACK), 0);
        assert_eq!(model.dma(SID, 0, false), Err(DmaFault::Abort));
    }
}

// ----------------------------------------------------------------------------------------
// STEs.

#[test]
fn stage2_ste_translates_through_a_real_stage2() {
    let (mut mem, model) = setup(ModelConfig::default());
    let (mut smmu, mut s2) = attached(&model, &mut mem);
    map(&mut s2, &mut mem, 0x4000_0000, OUT, PAGE);
    map(&mut s2, &mut mem, 0x4020_0000, OUT + 0x20_0000, 0x20_0000); // a 2 MiB block
    s2.map(
        &mut mem,
        &mut NoTlb,
        Ipa(0x5000_0000),
        PhysAddr(OUT + 0x100_0000),
        PAGE,
        S2Attrs::normal().with_access(true, false),
    )
    .unwrap();
    assert_eq!(
        model.dma(SID, 0x4000_0123, false),
        Ok(PhysAddr(OUT + 0x123))
    );
    assert_eq!(
        model.dma(SID, 0x4033_4567, true),
        Ok(PhysAddr(OUT + 0x33_4567))
    );
    assert_eq!(
        model.dma(SID, 0x5000_0008, false),
        Ok(PhysAddr(OUT + 0x100_0008))
    );
    // The driver's walker and the model's agree.
    for ipa in [0x4000_0123, 0x4033_4567] {
        let (pa, _, _) = s2.translate(&mem, Ipa(ipa)).unwrap();
        assert_eq!(model.dma(SID, ipa, false), Ok(pa));
    }
    // Faults: unmapped, read-only, outside the IPA space; each one event.
    assert_eq!(
        model.dma(SID, 0x4000_1000, false),
        Err(DmaFault::Translation)
    );
    assert_eq!(model.dma(SID, 0x5000_0000, true), Err(DmaFault::Permission));
    assert_eq!(model.dma(SID, 1 << 32, false), Err(DmaFault::Translation));
    let (ev, poll) = events(&mut smmu, &mut mem);
    assert_eq!(poll.events, 3);
    assert!(!poll.overflow);
    assert_eq!(ev[0].kind, EventType::F_TRANSLATION);
    assert_eq!(
        (ev[0].sid, ev[0].input_addr, ev[0].ipa),
        (SID, 0x4000_1000, 0x4000_1000)
    );
    assert!(ev[0].read && ev[0].stage2);
    assert_eq!(
        ev[1].to_string(),
        "SMMU event F_PERMISSION sid 0x10 iova 0x50000000 ipa 0x50000000 write stage-2"
    );
    assert_eq!(ev[2].input_addr, 1 << 32);
    assert_eq!(smmu.stats().events, 3);
    assert_eq!(events(&mut smmu, &mut mem).1.events, 0, "drained");
}

#[test]
fn table_descriptor_ignored_bits_are_ignored_and_bits_51_48_are_address() {
    // Bits 58:52 and 11:2 of a table descriptor are IGNORED (Warden keeps its count of
    // valid entries there); bits 51:48 are not: with a 48-bit (or smaller) output size a
    // set bit there is a table address beyond PS, an Address size fault.
    let (mut mem, model) = setup(ModelConfig::default());
    let (_smmu, mut s2) = attached(&model, &mut mem);
    map(&mut s2, &mut mem, 0x4000_0000, OUT, PAGE);
    map(&mut s2, &mut mem, 0x4020_0000, OUT + 0x20_0000, PAGE);
    // The root entries above each page (a table descriptor each).
    let ram = mem.ram();
    let shift = 12 + 9 * (3 - u32::from(s2.geometry().start_level()));
    let entry = |ipa: u64| s2.root().0 + 8 * (ipa >> shift);
    let (a, b) = (entry(0x4000_0000), entry(0x4020_0000));
    assert_ne!(a, b);
    let (da, db) = (ram.read_u64(a), ram.read_u64(b));
    assert_eq!((da & 3, db & 3), (3, 3), "table descriptors");
    ram.write_u64(a, da | 0x7f << 52 | 0x3ff << 2);
    assert_eq!(model.dma(SID, 0x4000_0000, false), Ok(PhysAddr(OUT)));
    ram.write_u64(b, db | 1 << 51);
    assert_eq!(model.dma(SID, 0x4020_0000, false), Err(DmaFault::AddrSize));
}

#[test]
fn stage2_ste_with_16k_and_64k_granules() {
    for granule in [Granule::Size16K, Granule::Size64K] {
        let (mut mem, model) = setup(ModelConfig::default());
        let mut smmu = probe(&model, &mut mem);
        let mut s2 = stage2(&mut mem, granule);
        let g = granule.size();
        map(&mut s2, &mut mem, 0x1000_0000, OUT, 4 * g);
        smmu.set_ste_s2(&mut mem, SID, &S2Config::for_stage2(&s2, 7))
            .unwrap();
        assert_eq!(
            model.dma(SID, 0x1000_0000 + 3 * g + 8, true),
            Ok(PhysAddr(OUT + 3 * g + 8))
        );
        assert_eq!(
            model.dma(SID, 0x1000_0000 + 4 * g, true),
            Err(DmaFault::Translation)
        );
    }
}

#[test]
fn ste_update_is_break_before_make() {
    let (mut mem, model) = setup(ModelConfig::default());
    let mut smmu = probe(&model, &mut mem);
    let a = stage2(&mut mem, Granule::Size4K);
    let b = stage2(&mut mem, Granule::Size4K);
    let ste_a = Ste::stage2(&S2Config::for_stage2(&a, 1));
    let ste_b = Ste::stage2(&S2Config::for_stage2(&b, 2));
    for (old, new, cfg) in [
        (Ste::ABORT, ste_a, S2Config::for_stage2(&a, 1)),
        (ste_a, ste_b, S2Config::for_stage2(&b, 2)),
    ] {
        model.clear_counts();
        smmu.set_ste_s2(&mut mem, SID, &cfg).unwrap();
        let log: Vec<[u64; 8]> = model.cfgi_log().iter().map(|r| r.ste.unwrap()).collect();
        // Each CFGI_STE saw either the whole old entry, an invalid one, or the whole
        // new one — never a valid mix — and an invalid one before the new one.
        let first_new = log
            .iter()
            .position(|s| *s == new.0)
            .expect("new entry seen");
        assert!(
            log[..first_new].iter().any(|s| s[0] & STE0_V == 0),
            "broken first"
        );
        for s in &log {
            assert!(s[0] & STE0_V == 0 || *s == old.0 || *s == new.0, "{s:x?}");
        }
        assert_eq!(log.last().unwrap()[0] >> 1 & 7, CONFIG_S2);
        assert_eq!(model.count(op::CMD_SYNC), model.count(op::CFGI_STE));
        assert_eq!(smmu.read_ste(&mem, SID), Some(new));
    }
    // Back to abort: silent aborts again.
    smmu.set_ste_abort(&mut mem, SID).unwrap();
    assert_eq!(model.dma(SID, 0, false), Err(DmaFault::Abort));
    assert_eq!(model.cached_config(SID), Some(StreamCfg::Abort));
    assert_eq!(model.events_recorded(), 0);
}

#[test]
fn ste_change_needs_cfgi_and_the_driver_issues_it() {
    let (mut mem, model) = setup(ModelConfig::default());
    let (mut smmu, mut a) = attached(&model, &mut mem);
    let mut b = stage2(&mut mem, Granule::Size4K);
    map(&mut a, &mut mem, 0x1000, OUT, 2 * PAGE);
    map(&mut b, &mut mem, 0x1000, OUT + 0x10_0000, 2 * PAGE);
    assert_eq!(model.dma(SID, 0x1000, false), Ok(PhysAddr(OUT)));
    // Rewrite S2TTB behind the SMMU's back (no CFGI): the cached config still walks `a`
    // (0x2000 is not in the TLB yet).
    let ste_pa = {
        let l1 = model.read64(regs::STRTAB_BASE)
            & (regs::STRTAB_BASE::ADDR.mask << regs::STRTAB_BASE::ADDR.shift);
        (ste::L1Std::from_bits(mem.ram().read_u64(l1)).l2ptr() << 6) + u64::from(SID) * 64
    };
    let ste_b = Ste::stage2(&S2Config::for_stage2(&b, VMID));
    mem.ram().write_u64(ste_pa + 24, ste_b.0[3]);
    assert_eq!(
        model.dma(SID, 0x2000, false),
        Ok(PhysAddr(OUT + PAGE)),
        "stale config"
    );
    // Through the driver (new VMID, so no TLB entry is shared): the new table.
    smmu.set_ste_s2(&mut mem, SID, &S2Config::for_stage2(&b, 2))
        .unwrap();
    assert_eq!(model.dma(SID, 0x2000, false), Ok(PhysAddr(OUT + 0x10_1000)));
}

#[test]
fn bad_stage2_configs_are_refused() {
    let (mut mem, model) = setup(ModelConfig {
        vmid16: false,
        oas: 2,
        ..ModelConfig::default()
    });
    let mut smmu = probe(&model, &mut mem);
    let s2 = stage2(&mut mem, Granule::Size4K);
    let good = S2Config::for_stage2(&s2, 255);
    smmu.set_ste_s2(&mut mem, SID, &good).unwrap();
    let bad = [
        S2Config { vmid: 256, ..good },
        S2Config { tg: 3, ..good },
        S2Config { t0sz: 15, ..good },
        S2Config { sl0: 3, ..good },
        S2Config { ps: 4, ..good }, // 44 bits > OAS 40
        S2Config {
            s2ttb: PhysAddr(good.s2ttb.0 + 8),
            ..good
        },
    ];
    for cfg in bad {
        assert!(
            matches!(
                smmu.set_ste_s2(&mut mem, SID, &cfg),
                Err(SmmuError::BadConfig(_))
            ),
            "{cfg:?}"
        );
    }
    assert_eq!(
        smmu.read_ste(&mem, SID),
        Some(Ste::stage2(&good)),
        "unchanged"
    );
}

// ----------------------------------------------------------------------------------------
// Invalidation.

#[test]
fn unmap_is_stale_until_tlbi_and_sync() {
    let (mut mem, model) = setup(ModelConfig::default());
    let (mut smmu, mut s2) = attached(&model, &mut mem);
    map(&mut s2, &mut mem, 0x8000, OUT, PAGE);
    assert_eq!(model.dma(SID, 0x8010, false), Ok(PhysAddr(OUT + 0x10)));
    s2.unmap(&mut mem, &mut NoTlb, Ipa(0x8000), PAGE).unwrap();
    assert_eq!(
        model.dma(SID, 0x8010, false),
        Ok(PhysAddr(OUT + 0x10)),
        "stale TLB entry"
    );

    let syncs = model.count(op::CMD_SYNC);
    smmu.tlbi_s2_range(&mut mem, VMID, Ipa(0x8000), PAGE, Granule::Size4K);
    assert_eq!(
        model.dma(SID, 0x8010, false),
        Ok(PhysAddr(OUT + 0x10)),
        "not published yet"
    );
    smmu.sync(&mut mem).unwrap();
    assert_eq!(
        model.count(op::CMD_SYNC),
        syncs + 1,
        "one CMD_SYNC per sync()"
    );
    assert_eq!(model.dma(SID, 0x8010, true), Err(DmaFault::Translation));
    let (ev, _) = events(&mut smmu, &mut mem);
    assert_eq!(ev.len(), 1);
    assert_eq!(
        (ev[0].kind, ev[0].sid, ev[0].input_addr),
        (EventType::F_TRANSLATION, SID, 0x8010)
    );
    assert!(!ev[0].read);
    assert_eq!(
        ev[0].to_string(),
        "SMMU event F_TRANSLATION sid 0x10 iova 0x8010 ipa 0x8010 write stage-2"
    );
}

/// Maps `pages` pages at `ipa`, warms the TLB, unmaps behind the SMMU's back, then
/// invalidates with the driver: returns the TLBI_S2_IPA / TLBI_S12_VMALL counts, and
/// checks exactly the range went stale-free.
fn invalidate_range(ril: bool, pages: u64) -> (u64, u64) {
    let (mut mem, model) = setup(ModelConfig {
        ril,
        ..ModelConfig::default()
    });
    let (mut smmu, mut s2) = attached(&model, &mut mem);
    let ipa = 0x10_3000; // not aligned to any power of two above the page
    let warm = pages.min(80) + 1;
    map(&mut s2, &mut mem, ipa, OUT, (pages + 1) * PAGE);
    for p in (0..warm).chain([pages]) {
        model.dma(SID, ipa + p * PAGE, false).unwrap();
    }
    s2.unmap(&mut mem, &mut NoTlb, Ipa(ipa), (pages + 1) * PAGE)
        .unwrap();
    model.clear_counts();
    smmu.tlbi_s2_range(&mut mem, VMID, Ipa(ipa), pages * PAGE, Granule::Size4K);
    smmu.sync(&mut mem).unwrap();
    for p in 0..pages.min(80) {
        assert_eq!(
            model.dma(SID, ipa + p * PAGE, false),
            Err(DmaFault::Translation),
            "page {p}"
        );
    }
    let after = model.dma(SID, ipa + pages * PAGE, false);
    if pages <= TLBI_RANGE_MAX_PAGES {
        assert!(after.is_ok(), "the page after the range stays cached");
    }
    assert_eq!(model.count(op::CMD_SYNC), 1);
    (
        model.count(op::TLBI_S2_IPA),
        model.count(op::TLBI_S12_VMALL),
    )
}

#[test]
fn range_invalidation_with_ril() {
    assert_eq!(
        invalidate_range(true, 64),
        (1, 0),
        "one range command for 64 pages"
    );
    assert_eq!(invalidate_range(true, 33), (2, 0));
    assert_eq!(invalidate_range(true, 1), (1, 0));
    assert_eq!(invalidate_range(true, 512), (1, 0));
    assert_eq!(invalidate_range(true, 0x1ff), (2, 0));
}

#[test]
fn page_invalidation_without_ril() {
    assert_eq!(invalidate_range(false, 64), (64, 0));
    assert_eq!(invalidate_range(false, 1), (1, 0));
}

#[test]
fn large_ranges_invalidate_the_vmid() {
    assert_eq!(invalidate_range(true, TLBI_RANGE_MAX_PAGES + 1), (0, 1));
    assert_eq!(invalidate_range(false, 4096), (0, 1));
}

#[test]
fn range_invalidation_covers_unaligned_sizes_and_other_granules() {
    let (mut mem, model) = setup(ModelConfig::default());
    let mut smmu = probe(&model, &mut mem);
    let mut s2 = stage2(&mut mem, Granule::Size64K);
    let g = Granule::Size64K.size();
    map(&mut s2, &mut mem, 0x30_0000, OUT, 8 * g);
    smmu.set_ste_s2(&mut mem, SID, &S2Config::for_stage2(&s2, 3))
        .unwrap();
    for p in 0..8 {
        model.dma(SID, 0x30_0000 + p * g, false).unwrap();
    }
    s2.unmap(&mut mem, &mut NoTlb, Ipa(0x30_0000), 8 * g)
        .unwrap();
    // Bytes 0x30_0100 .. +3 pages - 0x200: touches pages 0..=3.
    smmu.tlbi_s2_leaf_range(&mut mem, 3, Ipa(0x30_0100), 3 * g, Granule::Size64K);
    smmu.sync(&mut mem).unwrap();
    for p in 0..4 {
        assert!(
            model.dma(SID, 0x30_0000 + p * g, false).is_err(),
            "page {p}"
        );
    }
    for p in 4..8 {
        assert!(
            model.dma(SID, 0x30_0000 + p * g, false).is_ok(),
            "page {p} untouched"
        );
    }
    smmu.tlbi_vmall(&mut mem, 3);
    smmu.sync(&mut mem).unwrap();
    assert!(model.dma(SID, 0x30_0000 + 5 * g, false).is_err());
}

#[test]
fn bad_invalidation_arguments_fail_the_next_sync() {
    let (mut mem, model) = setup(ModelConfig {
        vmid16: false,
        ..ModelConfig::default()
    });
    let mut smmu = probe(&model, &mut mem);
    smmu.tlbi_vmall(&mut mem, 300);
    assert!(matches!(smmu.sync(&mut mem), Err(SmmuError::BadConfig(_))));
    smmu.tlbi_s2_range(&mut mem, 1, Ipa(u64::MAX - PAGE), 2 * PAGE, Granule::Size4K);
    assert!(matches!(smmu.sync(&mut mem), Err(SmmuError::BadConfig(_))));
    smmu.sync(&mut mem).unwrap();
    assert!(model.rejected().is_empty());
}

// ----------------------------------------------------------------------------------------
// Broadcast TLB maintenance.

fn btm_case(btm: bool, ptm: bool) -> bool {
    let (mut mem, model) = setup(ModelConfig {
        btm,
        ..ModelConfig::default()
    });
    let (mut smmu, mut s2) = attached(&model, &mut mem);
    if !ptm {
        smmu.set_ptm(&mut mem, false).unwrap();
        assert!(smmu.btm_active());
    }
    map(&mut s2, &mut mem, 0x7000, OUT, 2 * PAGE);
    model.dma(SID, 0x7000, false).unwrap();
    model.dma(SID, 0x8000, false).unwrap();
    s2.unmap(&mut mem, &mut NoTlb, Ipa(0x7000), 2 * PAGE)
        .unwrap();
    model.cpu_tlbi_ipa(VMID, 0x7000);
    let page_gone = model.dma(SID, 0x7000, false).is_err();
    model.cpu_tlbi_vmall(VMID);
    let vm_gone = model.dma(SID, 0x8000, false).is_err();
    assert_eq!(page_gone, vm_gone);
    assert_eq!(model.guard_violations(), 0);
    page_gone
}

#[test]
fn btm_makes_cpu_tlbis_reach_the_smmu_only_when_ptm_is_clear() {
    assert!(
        btm_case(true, false),
        "BTM + PTM clear: broadcast invalidates"
    );
    assert!(!btm_case(true, true), "PTM set: private");
    assert!(!btm_case(false, true), "no BTM");
    let (mut mem, model) = setup(ModelConfig::default());
    let mut smmu = probe(&model, &mut mem);
    assert!(matches!(
        smmu.set_ptm(&mut mem, false),
        Err(SmmuError::Unsupported(_))
    ));
    assert_eq!(
        model.reg(regs::CR2) & regs::CR2::PTM::SET.value,
        regs::CR2::PTM::SET.value
    );
}

#[test]
fn set_ptm_keeps_translating_after_the_switch() {
    let (mut mem, model) = setup(ModelConfig {
        btm: true,
        ..ModelConfig::default()
    });
    let (mut smmu, mut s2) = attached(&model, &mut mem);
    map(&mut s2, &mut mem, 0x7000, OUT, PAGE);
    smmu.set_ptm(&mut mem, false).unwrap();
    assert_eq!(model.reg(regs::CR2), regs::CR2::RECINVSID::SET.value);
    assert_eq!(model.dma(SID, 0x7000, false), Ok(PhysAddr(OUT)));
    smmu.set_ptm(&mut mem, true).unwrap();
    assert!(!smmu.btm_active());
    assert_eq!(model.dma(SID, 0x7000, false), Ok(PhysAddr(OUT)));
    assert_eq!(model.bypassed(), 0);
}

// ----------------------------------------------------------------------------------------
// The queue.

#[test]
fn tiny_command_queue_wraps_in_order() {
    for log2 in [1, 2] {
        let (mut mem, model) = setup(ModelConfig::default());
        let mut smmu = probe_with(
            &model,
            &mut mem,
            &ProbeConfig {
                coherent: true,
                sids: &[],
                cmdq_log2: Some(log2),
                evtq_log2: None,
            },
        )
        .unwrap();
        model.clear_counts();
        let mut expect = Vec::new();
        let mut vmid = 0u16;
        for batch in 0..40 {
            for _ in 0..batch % 7 {
                smmu.tlbi_vmall(&mut mem, vmid);
                expect.push(Command::tlbi_s12_vmall(vmid));
                vmid += 1;
            }
            smmu.sync(&mut mem).unwrap();
            expect.push(Command::sync());
            // PROD and CONS agree, wrap bit included.
            assert_eq!(model.reg(regs::CMDQ_PROD), model.reg(regs::CMDQ_CONS));
        }
        assert_eq!(model.executed(), expect);
        let total = expect.len() as u32;
        assert_eq!(
            model.reg(regs::CMDQ_PROD),
            (total + 3) & ((2 << log2) - 1),
            "probe's 3 too"
        );
        assert_eq!(smmu.stats().syncs_completed, 41);
    }
}

#[test]
fn command_errors_are_reported_skipped_and_the_queue_restarts() {
    for msi in [false, true] {
        let (mut mem, model) = setup(ModelConfig {
            msi,
            ..ModelConfig::default()
        });
        let mut smmu = probe(&model, &mut mem);
        assert_eq!(smmu.uses_msi(), msi);
        model.clear_counts();
        model.reject_next(op::TLBI_S12_VMALL);
        smmu.tlbi_vmall(&mut mem, 1);
        smmu.tlbi_vmall(&mut mem, 2);
        // The skipped TLBI did not happen: the sync does not confirm it.
        assert_eq!(
            smmu.sync(&mut mem),
            Err(SmmuError::CommandSkipped(op::TLBI_S12_VMALL))
        );
        let errors = smmu.take_errors();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].code, regs::CERROR_ILL);
        assert_eq!(errors[0].cmd, Command::tlbi_s12_vmall(1));
        assert!(errors[0].skipped);
        assert!(
            errors[0]
                .to_string()
                .starts_with("SMMU command error CERROR_ILL")
        );
        assert_eq!(smmu.stats().cmd_errors, 1);
        assert!(smmu.take_errors().is_empty());
        // The bad command became a CMD_SYNC; the rest ran, in order.
        let ops: Vec<u8> = model.executed().iter().map(Command::opcode).collect();
        assert_eq!(ops, [op::CMD_SYNC, op::TLBI_S12_VMALL, op::CMD_SYNC]);
        assert_eq!(model.executed()[1], Command::tlbi_s12_vmall(2));
        assert_eq!(model.reg(regs::GERROR), model.reg(regs::GERRORN));
        // The queue goes on.
        smmu.tlbi_vmall(&mut mem, 3);
        smmu.sync(&mut mem).unwrap();
        assert_eq!(model.count(op::TLBI_S12_VMALL), 2);
        // Even the SYNC itself refused: skipped, and the wait still ends.
        model.reject_next(op::CMD_SYNC);
        smmu.sync(&mut mem).unwrap();
        assert_eq!(smmu.stats().cmd_errors, 2);
    }
}

#[test]
fn msi_completion_writes_the_sync_word() {
    let (mut mem, model) = setup(ModelConfig {
        msi: true,
        ..ModelConfig::default()
    });
    let mut smmu = probe(&model, &mut mem);
    assert!(smmu.uses_msi());
    smmu.sync(&mut mem).unwrap();
    let last = *model.executed().last().unwrap();
    assert_eq!(last.opcode(), op::CMD_SYNC);
    assert_eq!((last.0[0] >> 12) & 3, 1, "CS = SIG_IRQ");
    let addr = last.0[1] & cmdq::SYNC_MSIADDR_MASK;
    assert_eq!(mem.ram().read_u64(addr) as u32, (last.0[0] >> 32) as u32);
    // Not for a non-coherent SMMU (the CPU could read a stale line).
    let (mut mem, model) = setup(ModelConfig {
        msi: true,
        cohacc: false,
        ..ModelConfig::default()
    });
    assert!(!probe(&model, &mut mem).uses_msi());
}

#[test]
fn stuck_queue_times_out_then_recovers() {
    let (mut mem, model) = setup(ModelConfig::default());
    let mut smmu = probe(&model, &mut mem);
    model.set_stalled(true);
    smmu.tlbi_all(&mut mem);
    assert_eq!(
        smmu.sync(&mut mem),
        Err(SmmuError::Timeout("command queue"))
    );
    assert_eq!(smmu.stats().timeouts, 1);
    model.set_stalled(false);
    smmu.sync(&mut mem).unwrap();
    assert_eq!(model.count(op::TLBI_NSNH_ALL), 2);
}

// ----------------------------------------------------------------------------------------
// Events.

#[test]
fn event_queue_wraps_and_overflow_is_reported() {
    let (mut mem, model) = setup(ModelConfig::default());
    let sids = [(SID, 1)];
    let mut smmu = probe_with(
        &model,
        &mut mem,
        &ProbeConfig {
            coherent: true,
            sids: &sids,
            cmdq_log2: None,
            evtq_log2: Some(1),
        },
    )
    .unwrap();
    let s2 = stage2(&mut mem, Granule::Size4K);
    smmu.set_ste_s2(&mut mem, SID, &S2Config::for_stage2(&s2, VMID))
        .unwrap();
    // Several laps of a two-entry queue.
    let mut next = 0u64;
    for round in 0..5 {
        for _ in 0..=round % 2 {
            next += PAGE;
            assert!(model.dma(SID, next, false).is_err());
        }
        let (ev, poll) = events(&mut smmu, &mut mem);
        assert!(!poll.overflow);
        assert_eq!(ev.len(), round % 2 + 1);
        assert_eq!(ev.last().unwrap().input_addr, next);
    }
    // Four faults into two slots: two kept, the loss reported and acknowledged.
    for i in 1..=4 {
        let _ = model.dma(SID, 0x100_0000 + i * PAGE, true);
    }
    assert_ne!(model.reg(regs::GERROR), model.reg(regs::GERRORN));
    let (ev, poll) = events(&mut smmu, &mut mem);
    assert!(poll.overflow);
    assert_eq!(poll.gerror, regs::GERROR::EVENTQ_ABT_ERR::SET.value);
    assert_eq!(
        ev.iter().map(|e| e.input_addr).collect::<Vec<_>>(),
        [0x100_1000, 0x100_2000]
    );
    assert_eq!(model.reg(regs::GERROR), model.reg(regs::GERRORN));
    assert_eq!(smmu.stats().event_overflows, 1);
    let _ = model.dma(SID, 0x200_0000, false);
    let (ev, poll) = events(&mut smmu, &mut mem);
    assert_eq!((ev.len(), poll.overflow), (1, false));
}

// ----------------------------------------------------------------------------------------
// Non-coherent SMMU: everything the SMMU reads is cleaned, everything it writes is
// invalidated before being read (the arena keeps separate cache and memory copies).

#[test]
fn non_coherent_smmu_sees_cleaned_memory() {
    let ram = Rc::new(Ram::with_coherency(ARENA_BASE, 16 << 20, false));
    let mut mem = Arena::with_ram(ram.clone());
    let model = SmmuModel::new(
        ModelConfig {
            cohacc: false,
            ..ModelConfig::default()
        },
        ram,
    );
    let sids = [(SID, 1)];
    let mut smmu = probe_with(
        &model,
        &mut mem,
        &ProbeConfig {
            coherent: true, // the DTB says so, IDR0.COHACC does not
            sids: &sids,
            cmdq_log2: Some(2),
            evtq_log2: None,
        },
    )
    .unwrap();
    assert!(smmu.needs_clean());
    assert_eq!(
        model.reg(regs::CR1),
        0b10_00_00_10_00_00,
        "non-cacheable, outer shareable"
    );
    assert_eq!(
        model.dma(0x11, 0, false),
        Err(DmaFault::Abort),
        "cleaned abort STEs"
    );
    let mut s2 = stage2(&mut mem, Granule::Size4K);
    map(&mut s2, &mut mem, 0x9000, OUT, PAGE);
    smmu.set_ste_s2(&mut mem, SID, &S2Config::for_stage2(&s2, VMID))
        .unwrap();
    assert_eq!(model.dma(SID, 0x9000, false), Ok(PhysAddr(OUT)));
    s2.unmap(&mut mem, &mut NoTlb, Ipa(0x9000), PAGE).unwrap();
    for _ in 0..3 {
        smmu.tlbi_s2_range(&mut mem, VMID, Ipa(0x9000), PAGE, Granule::Size4K);
        smmu.sync(&mut mem).unwrap();
    }
    assert!(model.rejected().is_empty(), "every command arrived whole");
    assert_eq!(model.dma(SID, 0x9000, false), Err(DmaFault::Translation));
    let (ev, _) = events(&mut smmu, &mut mem);
    assert_eq!(ev.len(), 1);
    assert_eq!((ev[0].sid, ev[0].input_addr), (SID, 0x9000));
}

#[test]
fn stats_count_commands_by_kind() {
    let (mut mem, model) = setup(ModelConfig::default());
    let (mut smmu, _s2) = attached(&model, &mut mem);
    let before = smmu.stats().commands;
    smmu.tlbi_s2_range(&mut mem, VMID, Ipa(0), 3 * PAGE, Granule::Size4K);
    smmu.tlbi_vmall(&mut mem, VMID);
    smmu.sync(&mut mem).unwrap();
    let after = smmu.stats().commands;
    assert_eq!(
        after.tlbi_s2_ipa - before.tlbi_s2_ipa,
        1,
        "3 pages: one range (NUM = 2)"
    );
    assert_eq!(after.tlbi_s12_vmall - before.tlbi_s12_vmall, 1);
    assert_eq!(after.cmd_sync - before.cmd_sync, 1);
    assert_eq!(before.cfgi_all, 1);
    assert_eq!(before.cfgi_ste, 3, "an abort → stage-2 change: three steps");
}

/// Register access that counts the waits for an event (`WFE` at EL2).
struct WaitCounting<'a> {
    model: &'a SmmuModel,
    waits: core::cell::Cell<u32>,
}

impl SmmuIo for WaitCounting<'_> {
    fn read32<R: RegisterLongName>(&self, reg: regs::Reg<u32, R>) -> u32 {
        self.model.read32(reg)
    }
    fn write32<R: RegisterLongName>(&self, reg: regs::Reg<u32, R>, v: u32) {
        self.model.write32(reg, v)
    }
    fn read64<R: RegisterLongName>(&self, reg: regs::Reg<u64, R>) -> u64 {
        self.model.read64(reg)
    }
    fn write64<R: RegisterLongName>(&self, reg: regs::Reg<u64, R>, v: u64) {
        self.model.write64(reg, v)
    }
    fn wait_for_event(&self) {
        self.waits.set(self.waits.get() + 1);
    }
    fn now_ns(&self) -> u64 {
        self.model.now_ns()
    }
}

#[test]
fn sev_completion_signals_and_waits_for_events() {
    let (mut mem, model) = setup(ModelConfig {
        sev: true,
        ..ModelConfig::default()
    });
    let io = WaitCounting {
        model: &model,
        waits: core::cell::Cell::new(0),
    };
    let sids = [(SID, 1)];
    let cfg = ProbeConfig {
        coherent: true,
        sids: &sids,
        cmdq_log2: None,
        evtq_log2: None,
    };
    // SAFETY: every call in this test passes this same arena.
    let mut smmu = unsafe { Smmu::probe(&io, &mut mem, &cfg) }.unwrap();
    assert!(!smmu.uses_msi());
    smmu.sync(&mut mem).unwrap();
    let last = *model.executed().last().unwrap();
    assert_eq!(last.opcode(), op::CMD_SYNC);
    assert_eq!((last.0[0] >> 12) & 3, 2, "CS = SIG_SEV");
    // A stuck SMMU: the driver waits for events between polls, and still times out.
    model.set_stalled(true);
    let before = io.waits.get();
    assert_eq!(
        smmu.sync(&mut mem),
        Err(SmmuError::Timeout("command queue"))
    );
    assert!(
        io.waits.get() > before + 1000,
        "waited in WFE between polls"
    );
    model.set_stalled(false);
    // Without SEV the sync carries no signal.
    let (mut mem, model) = setup(ModelConfig::default());
    let mut smmu = probe(&model, &mut mem);
    smmu.sync(&mut mem).unwrap();
    assert_eq!(
        (model.executed().last().unwrap().0[0] >> 12) & 3,
        0,
        "CS = SIG_NONE"
    );
}

// ----------------------------------------------------------------------------------------
// Rules QEMU forgives: bounded waits, ATS, refused models, level-1 descriptors, errata,
// non-coherent probe.

/// Runs `f` and returns how long it took by the model's clock.
fn timed<T>(model: &SmmuModel, f: impl FnOnce() -> T) -> (T, u64) {
    let t0 = model.time_ns();
    let out = f();
    (out, model.time_ns() - t0)
}

/// A wait that never completes gives up after `POLL_TIMEOUT_NS` of the seam's clock,
/// however long one poll takes (the number of polls differs by 25x between the steps).
#[test]
fn waits_end_after_the_timeout_by_the_clock_not_after_a_poll_count() {
    for step in [10_000u64, 250_000] {
        // The timeout, plus the few clock readings of the waits that succeeded on the way.
        let within = |ns: u64| (POLL_TIMEOUT_NS..=POLL_TIMEOUT_NS + 20 * step).contains(&ns);

        // CR0ACK that never follows CR0.
        let (mut mem, model) = setup(ModelConfig::default());
        model.set_clock_step(step);
        model.set_cr0ack_stuck(true);
        let (r, ns) = timed(&model, || {
            probe_with(&model, &mut mem, &ProbeConfig::default())
        });
        assert_eq!(r.unwrap_err(), SmmuError::Timeout("CR0ACK"));
        assert!(within(ns), "CR0ACK: {ns} ns with {step} ns polls");

        // GBPA.UPDATE that never clears.
        let (mut mem, model) = setup(ModelConfig::default());
        model.set_clock_step(step);
        model.set_gbpa_stuck(true);
        let (r, ns) = timed(&model, || {
            probe_with(&model, &mut mem, &ProbeConfig::default())
        });
        assert_eq!(r.unwrap_err(), SmmuError::Timeout("GBPA update"));
        assert!(within(ns), "GBPA: {ns} ns with {step} ns polls");

        // A CMD_SYNC that never completes, and space in a full queue that never frees.
        let (mut mem, model) = setup(ModelConfig::default());
        model.set_clock_step(step);
        let sids = [(SID, 1)];
        let cfg = ProbeConfig {
            coherent: true,
            sids: &sids,
            cmdq_log2: Some(1),
            evtq_log2: None,
        };
        let mut smmu = probe_with(&model, &mut mem, &cfg).unwrap();
        model.set_stalled(true);
        smmu.tlbi_all(&mut mem);
        let (r, ns) = timed(&model, || smmu.sync(&mut mem));
        assert_eq!(r, Err(SmmuError::Timeout("command queue")));
        assert!(within(ns), "CMD_SYNC: {ns} ns with {step} ns polls");
        // Two entries, both taken (TLBI + SYNC): the next command waits for space.
        let ((), ns) = timed(&model, || smmu.tlbi_all(&mut mem));
        assert!(within(ns), "queue space: {ns} ns with {step} ns polls");
        assert_eq!(smmu.stats().timeouts, 2);
        model.set_stalled(false);
        assert_eq!(
            smmu.sync(&mut mem),
            Err(SmmuError::Timeout("command queue")),
            "the lost command is reported"
        );
        smmu.sync(&mut mem).unwrap();
    }
}

/// With `IDR0.ATS`, `CR0.ATSCHK` makes ATS-translated transactions look at the STE, whose
/// `EATS = 0` refuses them; without it they would reach any physical address.
#[test]
fn ats_translated_traffic_is_checked_against_the_ste() {
    let (mut mem, model) = setup(ModelConfig {
        ats: true,
        btm: true,
        ..ModelConfig::default()
    });
    let (mut smmu, _s2) = attached(&model, &mut mem);
    let warden_page = ARENA_BASE;
    assert_ne!(model.reg(regs::CR0) & regs::CR0::ATSCHK::SET.value, 0);
    let ste = smmu.read_ste(&mem, SID).unwrap();
    assert_eq!(
        ste::SteWord1::from_bits(ste.0[1]).eats(),
        0,
        "EATS = 0: no ATS"
    );
    let before = model.bypassed();
    assert_eq!(
        model.dma_translated(SID, warden_page, true),
        Err(DmaFault::TranslForbidden)
    );
    assert_eq!(
        model.dma_translated(0x11, warden_page, true),
        Err(DmaFault::Abort)
    );
    let (ev, _) = events(&mut smmu, &mut mem);
    assert_eq!(ev.len(), 1);
    assert_eq!(
        (ev[0].kind, ev[0].sid),
        (EventType::F_TRANSL_FORBIDDEN, SID)
    );
    // Switching PTM re-enables translation: ATSCHK stays.
    smmu.set_ptm(&mut mem, false).unwrap();
    assert_ne!(model.reg(regs::CR0ACK) & regs::CR0::ATSCHK::SET.value, 0);
    assert_eq!(
        model.dma_translated(SID, warden_page, false),
        Err(DmaFault::TranslForbidden)
    );
    assert_eq!(model.bypassed(), before, "nothing passed unchecked");
    // Without IDR0.ATS, ATSCHK is not set (the bit is RES0).
    let (mut mem, model) = setup(ModelConfig::default());
    probe(&model, &mut mem);
    assert_eq!(model.reg(regs::CR0) & regs::CR0::ATSCHK::SET.value, 0);
}

/// Stall-forced SMMUs (an STE with `S2S = 0` is ILLEGAL there, and `S2S = 1` needs
/// `CMD_RESUME` for every fault) and big-endian-only walkers are refused, left aborting.
#[test]
fn stall_forced_and_big_endian_smmus_are_refused_and_left_aborting() {
    for (stall_model, ttendian, field) in [
        (0b10, 0b10, "STALL_MODEL"),
        (0b11, 0b10, "STALL_MODEL"),
        (0b00, 0b11, "TTENDIAN"),
        (0b01, 0b01, "TTENDIAN"),
    ] {
        let (mut mem, model) = setup(ModelConfig {
            stall_model,
            ttendian,
            ..ModelConfig::default()
        });
        let before = model.bypassed();
        let sids = [(SID, 1)];
        let cfg = ProbeConfig {
            coherent: true,
            sids: &sids,
            cmdq_log2: None,
            evtq_log2: None,
        };
        match probe_with(&model, &mut mem, &cfg) {
            Err(SmmuError::Unsupported(why)) => {
                assert!(why.contains(field), "{why}");
                assert!(SmmuError::Unsupported(why).to_string().contains(field));
            }
            other => panic!("STALL_MODEL {stall_model:#b} TTENDIAN {ttendian:#b}: {other:?}"),
        }
        assert_ne!(model.reg(regs::GBPA) & regs::GBPA::ABORT::SET.value, 0);
        assert_eq!(model.reg(regs::CR0), 0);
        assert_eq!(model.dma(SID, 0x1000, true), Err(DmaFault::Abort));
        assert_eq!(model.bypassed(), before);
        assert_eq!(mem.live_count(), 0, "nothing allocated");
    }
    // Stall supported but not forced, terminate-only, mixed endianness: driven (S2S = 0).
    for (stall_model, ttendian) in [(0b00, 0b00), (0b01, 0b10)] {
        let (mut mem, model) = setup(ModelConfig {
            stall_model,
            ttendian,
            ..ModelConfig::default()
        });
        let (_smmu, mut s2) = attached(&model, &mut mem);
        map(&mut s2, &mut mem, 0x5000, OUT, PAGE);
        assert_eq!(model.dma(SID, 0x5000, false), Ok(PhysAddr(OUT)));
    }
}

/// A level-2 table linked after a device of its span already tried DMA: the SMMU cached
/// the invalid level-1 descriptor, and only `CFGI_STE` with Leaf = 0 drops it.
#[test]
fn a_new_level2_table_invalidates_the_cached_level1_descriptor() {
    let (mut mem, model) = setup(ModelConfig::default());
    let mut smmu = probe(&model, &mut mem);
    let late = 0x310;
    assert_eq!(model.dma(late, 0x5000, false), Err(DmaFault::BadStreamId));
    let mut s2 = stage2(&mut mem, Granule::Size4K);
    map(&mut s2, &mut mem, 0x5000, OUT, PAGE);
    model.clear_counts();
    smmu.set_ste_s2(&mut mem, late, &S2Config::for_stage2(&s2, VMID))
        .unwrap();
    assert_eq!(model.dma(late, 0x5000, false), Ok(PhysAddr(OUT)));
    let first = model.executed()[0];
    assert_eq!(first, Command::cfgi_ste_l1(late), "Leaf = 0 first");
    // An existing span needs no level-1 invalidation.
    model.clear_counts();
    smmu.set_ste_s2(&mut mem, late + 1, &S2Config::for_stage2(&s2, VMID))
        .unwrap();
    assert!(
        model
            .executed()
            .iter()
            .all(|c| c.0 != Command::cfgi_ste_l1(late + 1).0)
    );
}

/// The longest run of commands without a `CMD_SYNC` among `cmds`.
fn longest_unsynced_run(cmds: &[Command]) -> usize {
    cmds.split(|c| c.opcode() == op::CMD_SYNC)
        .map(<[Command]>::len)
        .max()
        .unwrap_or(0)
}

/// MMU-700 (erratum 2812531): no BTM, and never more than 63 commands without a
/// `CMD_SYNC` (the model loses the 64th, leaving stale translations).
#[test]
fn mmu700_gets_no_btm_and_a_sync_every_63_commands() {
    let (mut mem, model) = setup(ModelConfig {
        iidr: 0x4870_243b, // Arm MMU-700 r0p2
        btm: true,
        ril: false,
        ..ModelConfig::default()
    });
    let (mut smmu, mut s2) = attached(&model, &mut mem);
    assert!(!smmu.features().btm);
    assert_eq!(smmu.features().sync_every, 63);
    assert!(smmu.features().to_string().contains("Arm MMU-700 r0p2"));
    assert_eq!(
        smmu.set_ptm(&mut mem, false),
        Err(SmmuError::Unsupported(
            "broadcast TLB maintenance (IDR0.BTM = 0)"
        ))
    );
    assert!(!smmu.btm_active());
    // 100 pages unmapped, 100 TLBI_S2_IPA (no RIL), one sync asked for.
    let pages = 100u64;
    map(&mut s2, &mut mem, 0, OUT, pages * PAGE);
    for p in 0..pages {
        assert!(model.dma(SID, p * PAGE, false).is_ok());
    }
    s2.unmap(&mut mem, &mut NoTlb, Ipa(0), pages * PAGE)
        .unwrap();
    model.clear_counts();
    smmu.tlbi_s2_range(&mut mem, VMID, Ipa(0), pages * PAGE, Granule::Size4K);
    smmu.sync(&mut mem).unwrap();
    assert_eq!(model.count(op::TLBI_S2_IPA), pages);
    assert!(longest_unsynced_run(&model.executed()) <= 63);
    assert_eq!(model.lost_commands(), 0);
    for p in 0..pages {
        assert_eq!(
            model.dma(SID, p * PAGE, false),
            Err(DmaFault::Translation),
            "page {p}"
        );
    }
    // Other SMMUs are not held to it.
    let (mut mem, model) = setup(ModelConfig {
        ril: false,
        ..ModelConfig::default()
    });
    let mut smmu = probe(&model, &mut mem);
    model.clear_counts();
    smmu.tlbi_s2_range(&mut mem, VMID, Ipa(0), pages * PAGE, Granule::Size4K);
    smmu.sync(&mut mem).unwrap();
    assert_eq!(longest_unsynced_run(&model.executed()), 100);
}

/// MMU-600 r0p0..r0p2 (erratum 1076982): `CMD_SYNC` completion is polled, not SEV.
#[test]
fn early_mmu600_polls_instead_of_sev() {
    for (iidr, cs) in [(0x4830_243b, 0), (0x4830_343b, 2)] {
        let (mut mem, model) = setup(ModelConfig {
            iidr,
            sev: true,
            ..ModelConfig::default()
        });
        let mut smmu = probe(&model, &mut mem);
        smmu.sync(&mut mem).unwrap();
        let last = *model.executed().last().unwrap();
        assert_eq!((last.0[0] >> 12) & 3, cs, "IIDR {iidr:#x}");
    }
}

/// Memory like Warden's EL2 pool: `clean` does nothing until a non-coherent walker was
/// announced (`set_noncoherent_walker`), as a fully coherent system needs no cleaning.
struct GatedArena {
    inner: Arena,
    cleaning: bool,
}

// SAFETY: every method forwards to the `Arena`, which upholds the contract; skipping
// `clean` is what the trait allows until `set_noncoherent_walker`.
unsafe impl TableMemory for GatedArena {
    fn alloc_zeroed(&mut self, size: usize, align: usize) -> Option<PhysAddr> {
        self.inner.alloc_zeroed(size, align)
    }
    unsafe fn free(&mut self, pa: PhysAddr, size: usize) {
        // SAFETY: the caller's guarantees are passed on.
        unsafe { self.inner.free(pa, size) }
    }
    fn table_ptr(&self, pa: PhysAddr) -> *mut u64 {
        self.inner.table_ptr(pa)
    }
    fn clean(&mut self, pa: PhysAddr, size: usize) {
        if self.cleaning {
            self.inner.clean(pa, size);
        }
    }
    fn set_noncoherent_walker(&mut self) {
        self.cleaning = true;
    }
}

/// A non-coherent SMMU (either side saying no) sees every structure of the probe: the
/// memory is told before the first write, so the first command and STE are cleaned too.
#[test]
fn non_coherent_probe_cleans_from_the_first_write() {
    for (cohacc, dma_coherent) in [(false, true), (true, false), (false, false)] {
        let ram = Rc::new(Ram::with_coherency(ARENA_BASE, 16 << 20, false));
        let mut mem = GatedArena {
            inner: Arena::with_ram(ram.clone()),
            cleaning: false,
        };
        let model = SmmuModel::new(
            ModelConfig {
                cohacc,
                ..ModelConfig::default()
            },
            ram,
        );
        let sids = [(SID, 1)];
        let cfg = ProbeConfig {
            coherent: dma_coherent,
            sids: &sids,
            cmdq_log2: None,
            evtq_log2: None,
        };
        // SAFETY: every call in this test passes this same memory.
        let mut smmu = unsafe { Smmu::probe(&model, &mut mem, &cfg) }
            .unwrap_or_else(|e| panic!("COHACC {cohacc} dma-coherent {dma_coherent}: {e}"));
        assert!(smmu.needs_clean());
        let ops: Vec<u8> = model.executed().iter().map(Command::opcode).collect();
        assert_eq!(ops, [op::CFGI_STE_RANGE, op::TLBI_NSNH_ALL, op::CMD_SYNC]);
        assert!(model.rejected().is_empty());
        assert_eq!(
            model.dma(0x11, 0, false),
            Err(DmaFault::Abort),
            "abort STE seen"
        );
        assert_eq!(model.dma(0x310, 0, false), Err(DmaFault::BadStreamId));
        let mut s2 = {
            let geom = S2Geometry::new(Granule::Size4K, 32, 40).unwrap();
            // SAFETY: the test passes this memory to every call.
            unsafe { Stage2::new(geom, &mut mem) }.unwrap()
        };
        s2.map(
            &mut mem,
            &mut NoTlb,
            Ipa(0x9000),
            PhysAddr(OUT),
            PAGE,
            S2Attrs::NORMAL_RW,
        )
        .unwrap();
        smmu.set_ste_s2(&mut mem, SID, &S2Config::for_stage2(&s2, VMID))
            .unwrap();
        assert_eq!(model.dma(SID, 0x9000, false), Ok(PhysAddr(OUT)));
        // Its stage-2 walks are non-cacheable, outer shareable, as CR1 for the rest.
        let w2 = smmu.read_ste(&mem, SID).unwrap().0[2];
        assert_eq!(
            (w2 >> 40) & 0x3f,
            0b10_00_00,
            "S2SH0 = OSH, S2OR0 = S2IR0 = NC"
        );
    }
}
