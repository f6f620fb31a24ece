//! A software SMMUv3 for host tests: registers with their real semantics, the real
//! command queue, stream table, stage-2 tables and event queue read from and written to
//! a [`Ram`] (the device's view of it), a configuration cache and a TLB.
//!
//! What it models, and how it differs from hardware:
//!
//! - Registers: `CR0`/`CR0ACK` (acknowledged at once), `GBPA` (takes effect on
//!   `UPDATE`), `IRQ_CTRL`/`ACK`, `GERROR`/`GERRORN` toggles, queue `PROD`/`CONS` with wrap
//!   bits. Writes to guarded registers while the unit is enabled (`CR1`, `CR2`,
//!   `STRTAB_BASE*` under `SMMUEN`; queue bases under their enables) are ignored and
//!   counted in [`SmmuModel::guard_violations`].
//! - Commands are consumed synchronously when `CMDQ_PROD` is written (and after a
//!   command error is acknowledged), like QEMU. Unknown opcodes, `TLBI_EL2_*` without
//!   `IDR0.HYP`, range fields without `IDR3.RIL`, and [`SmmuModel::reject_next`] give
//!   `CERROR_ILL`: `CMDQ_CONS.ERR`, `GERROR.CMDQ_ERR` toggled, consumption stops until
//!   `GERRORN` acknowledges.
//! - `CMD_SYNC` with `CS = SIG_IRQ` and an `MSIAddr` writes `MSIData` there (with
//!   `IDR0.MSI`).
//! - Configurations are cached per StreamID until `CFGI_STE` / `CFGI_ALL`; translations
//!   are cached per (VMID, page) until a `TLBI` covering them (unlimited capacity: a
//!   missing invalidation always shows). A range `TLBI_S2_IPA` only hits entries of its
//!   granule and, with a TTL, of that level. No walk cache.
//! - Broadcast TLBIs from the CPU ([`SmmuModel::cpu_tlbi_ipa`],
//!   [`SmmuModel::cpu_tlbi_vmall`]) apply only with `IDR0.BTM` and `CR2.PTM = 0`.
//! - Stream table linear or two-level; STE: abort (silent), bypass, stage 2; anything
//!   else, or a bad stage-2 field, is `C_BAD_STE`. Its own stage-2 walker (not
//!   [`crate::s2mmu`]'s) with concatenated start tables, blocks, AF and permissions.
//! - Events into the real event queue; translation-type faults only if `STE.S2R`. A full
//!   or disabled queue raises `GERROR.EVTQ_ABT_ERR` (as QEMU).
//! - Its own encoding: register offsets and fields, command opcodes and fields, and event
//!   records come from the private `spec` module (literals from IHI 0070), never from the
//!   driver's declarations ([`super::regs`], [`super::cmdq`], [`super::evtq`]), so the
//!   driver and the model check each other.

use super::regs::Reg;
use super::{Command, SmmuIo};
use crate::addr::PhysAddr;
use crate::testutil::Ram;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::vec::Vec;
use tock_registers::RegisterLongName;

use spec::*;

/// The model's own encoding of the registers, commands and event records it implements,
/// written from the SMMUv3 specification (Arm IHI 0070) as literal offsets and bit
/// positions. It deliberately does not use the driver's declarations
/// ([`super::regs`], [`super::cmdq`], [`super::ste`], [`super::evtq`]): a wrong offset or
/// field on either side makes the driver's tests fail.
mod spec {
    #![allow(missing_docs)]
    // Register offsets (page 1 at 0x10000).
    pub const IDR0: usize = 0x00;
    pub const IDR1: usize = 0x04;
    pub const IDR3: usize = 0x0c;
    pub const IDR5: usize = 0x14;
    pub const IIDR: usize = 0x18;
    pub const CR0: usize = 0x20;
    pub const CR0ACK: usize = 0x24;
    pub const CR1: usize = 0x28;
    pub const CR2: usize = 0x2c;
    pub const GBPA: usize = 0x44;
    pub const IRQ_CTRL: usize = 0x50;
    pub const IRQ_CTRLACK: usize = 0x54;
    pub const GERROR: usize = 0x60;
    pub const GERRORN: usize = 0x64;
    pub const STRTAB_BASE: usize = 0x80;
    pub const STRTAB_BASE_CFG: usize = 0x88;
    pub const CMDQ_BASE: usize = 0x90;
    pub const CMDQ_PROD: usize = 0x98;
    pub const CMDQ_CONS: usize = 0x9c;
    pub const EVENTQ_BASE: usize = 0xa0;
    pub const EVENTQ_PROD: usize = 0x1_00a8;
    pub const EVENTQ_CONS: usize = 0x1_00ac;

    // IDR0 / IDR1 / IDR3 / IDR5.
    pub const IDR0_S2P: u32 = 1;
    pub const IDR0_S1P: u32 = 1 << 1;
    pub const IDR0_TTF: (u32, u32) = (2, 3);
    pub const IDR0_TTF_AARCH64: u32 = 2;
    pub const IDR0_COHACC: u32 = 1 << 4;
    pub const IDR0_BTM: u32 = 1 << 5;
    pub const IDR0_HYP: u32 = 1 << 9;
    pub const IDR0_ATS: u32 = 1 << 10;
    pub const IDR0_ASID16: u32 = 1 << 12;
    pub const IDR0_MSI: u32 = 1 << 13;
    pub const IDR0_SEV: u32 = 1 << 14;
    pub const IDR0_VMID16: u32 = 1 << 18;
    pub const IDR0_TTENDIAN: (u32, u32) = (21, 3);
    pub const IDR0_STALL_MODEL: (u32, u32) = (24, 3);
    pub const IDR0_ST_LEVEL: (u32, u32) = (27, 3);
    pub const IDR0_ST_LEVEL_2LVL: u32 = 1;
    pub const IDR1_EVENTQS: (u32, u32) = (16, 0x1f);
    pub const IDR1_CMDQS: (u32, u32) = (21, 0x1f);
    pub const IDR3_RIL: u32 = 1 << 10;
    pub const IDR5_GRAN4K: u32 = 1 << 4;
    pub const IDR5_GRAN16K: u32 = 1 << 5;
    pub const IDR5_GRAN64K: u32 = 1 << 6;

    // Control and status.
    pub const CR0_SMMUEN: u32 = 1;
    pub const CR0_EVENTQEN: u32 = 1 << 2;
    pub const CR0_CMDQEN: u32 = 1 << 3;
    pub const CR0_ATSCHK: u32 = 1 << 4;
    pub const CR2_E2H: u32 = 1;
    pub const CR2_RECINVSID: u32 = 1 << 1;
    pub const CR2_PTM: u32 = 1 << 2;
    pub const GBPA_ABORT: u32 = 1 << 20;
    pub const GBPA_UPDATE: u32 = 1 << 31;
    pub const GERROR_CMDQ_ERR: u32 = 1;
    pub const GERROR_EVTQ_ABT_ERR: u32 = 1 << 2;
    pub const GERROR_MSI_CMDQ_ABT_ERR: u32 = 1 << 4;

    // Tables and queues.
    pub const STRTAB_BASE_ADDR_MASK: u64 = 0x000f_ffff_ffff_ffc0;
    pub const STRTAB_BASE_CFG_SPLIT: (u32, u32) = (6, 0x1f);
    pub const STRTAB_BASE_CFG_FMT: (u32, u32) = (16, 3);
    pub const STRTAB_FMT_LINEAR: u32 = 0;
    pub const L1STD_L2PTR_MASK: u64 = 0x000f_ffff_ffff_ffc0;
    pub const Q_BASE_ADDR_MASK: u64 = 0x000f_ffff_ffff_ffe0;
    pub const CMDQ_CONS_ERR: (u32, u32) = (24, 0x7f);
    pub const EVENTQ_PROD_OVFLG: u32 = 1 << 31;
    pub const CERROR_ILL: u32 = 1;
    pub const CERROR_ABT: u32 = 2;

    /// Command opcodes (word 0 bits 7:0).
    pub mod op {
        pub const PREFETCH_CONFIG: u8 = 0x01;
        pub const PREFETCH_ADDR: u8 = 0x02;
        pub const CFGI_STE: u8 = 0x03;
        pub const CFGI_STE_RANGE: u8 = 0x04;
        pub const CFGI_CD: u8 = 0x05;
        pub const CFGI_CD_ALL: u8 = 0x06;
        pub const TLBI_NH_ALL: u8 = 0x10;
        pub const TLBI_NH_ASID: u8 = 0x11;
        pub const TLBI_NH_VA: u8 = 0x12;
        pub const TLBI_NH_VAA: u8 = 0x13;
        pub const TLBI_EL2_ALL: u8 = 0x20;
        pub const TLBI_EL2_ASID: u8 = 0x21;
        pub const TLBI_EL2_VA: u8 = 0x22;
        pub const TLBI_EL2_VAA: u8 = 0x23;
        pub const TLBI_S12_VMALL: u8 = 0x28;
        pub const TLBI_S2_IPA: u8 = 0x2a;
        pub const TLBI_NSNH_ALL: u8 = 0x30;
        pub const ATC_INV: u8 = 0x40;
        pub const PRI_RESP: u8 = 0x41;
        pub const RESUME: u8 = 0x44;
        pub const STALL_TERM: u8 = 0x45;
        pub const CMD_SYNC: u8 = 0x46;
    }

    // Command fields.
    /// `TLBI_*` word 1: address bits 51:12.
    pub const TLBI_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
    /// `CMD_SYNC` word 1: MSIAddr bits 51:2.
    pub const SYNC_MSIADDR_MASK: u64 = 0x000f_ffff_ffff_fffc;
    /// `CMD_SYNC.CS = SIG_IRQ`.
    pub const SYNC_CS_IRQ: u64 = 1;

    // Event records.
    /// Event types (word 0 bits 7:0) the model records.
    pub mod evt {
        pub const C_BAD_STREAMID: u8 = 0x02;
        pub const F_STE_FETCH: u8 = 0x03;
        pub const C_BAD_STE: u8 = 0x04;
        pub const F_TRANSL_FORBIDDEN: u8 = 0x07;
        pub const F_WALK_EABT: u8 = 0x0b;
        pub const F_TRANSLATION: u8 = 0x10;
        pub const F_ADDR_SIZE: u8 = 0x11;
        pub const F_ACCESS: u8 = 0x12;
        pub const F_PERMISSION: u8 = 0x13;
    }
    /// `CLASS`: fault on a stage-1 table walk access.
    pub const CLASS_TT: u8 = 1;
    /// `CLASS`: fault on the input address.
    pub const CLASS_IN: u8 = 2;

    /// Output address bits of an `IDR5.OAS` / `STE.S2PS` encoding.
    pub fn output_bits(ps: u8) -> u32 {
        [32, 36, 40, 42, 44, 48, 52][usize::from(ps.min(6))]
    }

    /// A fault record: type and StreamID in word 0 (7:0, 63:32), RnW (35), S2 (39) and
    /// CLASS (41:40) in word 1, the input address in word 2, IPA bits 51:3 in word 3.
    pub fn fault_record(
        kind: u8,
        sid: u32,
        input: u64,
        ipa: u64,
        read: bool,
        stage2: bool,
        class: u8,
    ) -> [u64; 4] {
        let w0 = u64::from(kind) | (u64::from(sid) << 32);
        let w1 = (u64::from(read) << 35) | (u64::from(stage2) << 39) | (u64::from(class & 3) << 40);
        [w0, w1, input, ipa & 0x000f_ffff_ffff_fff8]
    }
}

/// The model's ID register contents.
#[derive(Clone, Copy, Debug)]
pub struct ModelConfig {
    /// `IDR0.S2P`.
    pub s2p: bool,
    /// `IDR0.S1P`.
    pub s1p: bool,
    /// `IDR0.TTF` includes AArch64.
    pub aarch64: bool,
    /// `IDR0.COHACC`.
    pub cohacc: bool,
    /// `IDR0.BTM`.
    pub btm: bool,
    /// `IDR0.MSI`.
    pub msi: bool,
    /// `IDR0.SEV`.
    pub sev: bool,
    /// `IDR0.HYP`.
    pub hyp: bool,
    /// `IDR0.VMID16`.
    pub vmid16: bool,
    /// `IDR0.ST_LEVEL` two-level.
    pub two_level: bool,
    /// `IDR1.SIDSIZE`.
    pub sidsize: u32,
    /// `IDR1.CMDQS`.
    pub cmdqs: u32,
    /// `IDR1.EVENTQS`.
    pub eventqs: u32,
    /// `IDR3.RIL`.
    pub ril: bool,
    /// `IDR5.OAS` encoding.
    pub oas: u8,
    /// `IDR5.GRAN16K`.
    pub gran16k: bool,
    /// `IDR5.GRAN64K`.
    pub gran64k: bool,
    /// `IDR0.ATS`: PCIe ATS; the model then accepts `CR0.ATSCHK` and takes ATS-translated
    /// transactions ([`SmmuModel::dma_translated`]).
    pub ats: bool,
    /// `IDR0.STALL_MODEL`: 0b00 stall and terminate, 0b01 terminate only, 0b10 stall
    /// forced. Stage-2 STEs need `S2S = 1` when forced and `S2S = 0` otherwise (the
    /// model does not stall), else `C_BAD_STE`.
    pub stall_model: u8,
    /// `IDR0.TTENDIAN`: 0b00 mixed, 0b10 little, 0b11 big. Stage-2 STEs whose `S2ENDI`
    /// the SMMU cannot walk are `C_BAD_STE`.
    pub ttendian: u8,
    /// `IIDR`. For Arm's MMU-700 (product 0x487) the model has erratum 2812531's
    /// symptoms: broadcast TLBIs do not reach it even with `BTM`, and a command that
    /// follows 63 commands with no `CMD_SYNC` among them is consumed without effect.
    pub iidr: u32,
}

impl Default for ModelConfig {
    /// Like QEMU 10.0's `virt` SMMU (QEMU.md §4).
    fn default() -> Self {
        Self {
            s2p: true,
            s1p: true,
            aarch64: true,
            cohacc: true,
            btm: false,
            msi: false,
            sev: false,
            hyp: false,
            vmid16: true,
            two_level: true,
            sidsize: 16,
            cmdqs: 19,
            eventqs: 19,
            ril: true,
            oas: 4,
            gran16k: true,
            gran64k: true,
            ats: false,
            stall_model: 0,
            ttendian: 0b10,
            iidr: 0,
        }
    }
}

impl ModelConfig {
    fn idr0(&self) -> u32 {
        let mut v = (u32::from(self.aarch64) * IDR0_TTF_AARCH64) << IDR0_TTF.0;
        for (on, bit) in [
            (self.s2p, IDR0_S2P),
            (self.s1p, IDR0_S1P),
            (self.cohacc, IDR0_COHACC),
            (self.btm, IDR0_BTM),
            (self.msi, IDR0_MSI),
            (self.sev, IDR0_SEV),
            (self.hyp, IDR0_HYP),
            (self.vmid16, IDR0_VMID16),
            (self.ats, IDR0_ATS),
            (true, IDR0_ASID16),
        ] {
            if on {
                v |= bit;
            }
        }
        if self.two_level {
            v |= IDR0_ST_LEVEL_2LVL << IDR0_ST_LEVEL.0;
        }
        v | (u32::from(self.ttendian & 3) << IDR0_TTENDIAN.0)
            | (u32::from(self.stall_model & 3) << IDR0_STALL_MODEL.0)
    }

    /// Whether the model has MMU-700's erratum 2812531.
    fn mmu700(&self) -> bool {
        self.iidr & 0xfff == 0x43b && self.iidr >> 20 == 0x487
    }

    fn idr1(&self) -> u32 {
        self.sidsize | (self.eventqs << IDR1_EVENTQS.0) | (self.cmdqs << IDR1_CMDQS.0)
    }

    fn idr3(&self) -> u32 {
        if self.ril { IDR3_RIL } else { 0 }
    }

    fn idr5(&self) -> u32 {
        let mut v = u32::from(self.oas) | IDR5_GRAN4K;
        if self.gran16k {
            v |= IDR5_GRAN16K;
        }
        if self.gran64k {
            v |= IDR5_GRAN64K;
        }
        v
    }
}

/// Why a modelled DMA did not reach memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaFault {
    /// Terminated without event: `GBPA.ABORT` while disabled, or an abort STE.
    Abort,
    /// `C_BAD_STREAMID`.
    BadStreamId,
    /// `C_BAD_STE`.
    BadSte,
    /// `F_STE_FETCH`.
    SteFetch,
    /// `F_WALK_EABT`.
    WalkEabt,
    /// `F_TRANSLATION`.
    Translation,
    /// `F_ADDR_SIZE`.
    AddrSize,
    /// `F_ACCESS`.
    Access,
    /// `F_PERMISSION`.
    Permission,
    /// `F_TRANSL_FORBIDDEN`: an ATS-translated transaction the STE does not allow.
    TranslForbidden,
}

/// A decoded stage-2 configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct S2Cfg {
    /// `S2VMID`.
    pub vmid: u16,
    /// `S2TTB`.
    pub ttb: u64,
    /// IPA bits (`64 - S2T0SZ`).
    pub ipa_bits: u32,
    /// Output bits (`S2PS` capped to OAS).
    pub pa_bits: u32,
    /// Granule shift (12, 14, 16).
    pub gshift: u32,
    /// Start level.
    pub start: u32,
    /// `S2AFFD`.
    pub affd: bool,
    /// `S2R`.
    pub record: bool,
    /// `EATS` (word 1, bits 29:28): 0 = ATS not enabled for the stream.
    pub eats: u8,
}

/// A decoded (cached) STE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamCfg {
    /// Config = abort.
    Abort,
    /// Config = bypass.
    Bypass,
    /// Stage 2 only.
    S2(S2Cfg),
}

/// One cached translation of a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlbEntry {
    /// Output address of the page.
    pub pa: u64,
    /// Level of the leaf it came from.
    pub level: u32,
    /// Granule shift.
    pub gshift: u32,
    /// S2AP read.
    pub read: bool,
    /// S2AP write.
    pub write: bool,
}

/// The STE in memory when a `CFGI_STE` for it executed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CfgiRecord {
    /// The StreamID.
    pub sid: u32,
    /// Its STE as memory held it (`None` if unreachable).
    pub ste: Option<[u64; 8]>,
}

#[derive(Default)]
struct State {
    cr0: u32,
    cr0ack: u32,
    cr1: u32,
    cr2: u32,
    gbpa: u32,
    irq_ctrl: u32,
    gerror: u32,
    gerrorn: u32,
    strtab_base: u64,
    strtab_cfg: u32,
    cmdq_base: u64,
    cmdq_prod: u32,
    cmdq_cons: u32,
    evtq_base: u64,
    evtq_prod: u32,
    evtq_cons: u32,
    configs: BTreeMap<u32, StreamCfg>,
    tlb: BTreeMap<(u16, u64), TlbEntry>,
    executed: Vec<Command>,
    counts: BTreeMap<u8, u64>,
    reject: Option<u8>,
    rejected: Vec<Command>,
    cfgi: Vec<CfgiRecord>,
    writes: Vec<(usize, u64)>,
    bypassed: u64,
    guard_violations: u64,
    stalled: bool,
    events: u64,
    /// Cached level-1 stream table descriptors, by index (any state, as the spec allows).
    l1_cache: BTreeMap<u64, u64>,
    /// Commands consumed since the last `CMD_SYNC`.
    since_sync: u64,
    /// Commands consumed without effect (MMU-700 erratum model).
    lost: u64,
    cr0ack_stuck: bool,
    gbpa_stuck: bool,
}

/// The model. Register accesses go through [`SmmuIo`] (`&SmmuModel` works too).
pub struct SmmuModel {
    cfg: ModelConfig,
    ram: Rc<Ram>,
    st: RefCell<State>,
    /// The clock behind [`SmmuIo::now_ns`], in ns.
    clock: Cell<u64>,
    /// How far each reading of the clock moves it.
    clock_step: Cell<u64>,
}

/// How far each [`SmmuIo::now_ns`] of the model moves its clock by default (10 µs).
pub const CLOCK_STEP_NS: u64 = 10_000;

fn raise(st: &mut State, bit: u32) {
    if (st.gerror ^ st.gerrorn) & bit == 0 {
        st.gerror ^= bit;
    }
}

impl SmmuModel {
    /// A model with `cfg`'s ID registers over `ram`, in its reset state (`GBPA` =
    /// 0x1000: bypass while disabled).
    pub fn new(cfg: ModelConfig, ram: Rc<Ram>) -> Self {
        let st = State {
            gbpa: 0x1000,
            ..State::default()
        };
        Self {
            cfg,
            ram,
            st: RefCell::new(st),
            clock: Cell::new(0),
            clock_step: Cell::new(CLOCK_STEP_NS),
        }
    }

    /// The model's time (ns): what [`SmmuIo::now_ns`] last returned.
    pub fn time_ns(&self) -> u64 {
        self.clock.get()
    }

    /// Makes every reading of the clock advance it by `ns` (the time one poll takes).
    pub fn set_clock_step(&self, ns: u64) {
        self.clock_step.set(ns);
    }

    /// Moves the clock forward.
    pub fn advance_ns(&self, ns: u64) {
        self.clock.set(self.clock.get() + ns);
    }

    /// `CR0ACK` stops following `CR0` (a wedged SMMU).
    pub fn set_cr0ack_stuck(&self, stuck: bool) {
        self.st.borrow_mut().cr0ack_stuck = stuck;
    }

    /// `GBPA.UPDATE` never clears.
    pub fn set_gbpa_stuck(&self, stuck: bool) {
        self.st.borrow_mut().gbpa_stuck = stuck;
    }

    /// Commands consumed without effect (MMU-700 erratum model).
    pub fn lost_commands(&self) -> u64 {
        self.st.borrow().lost
    }

    /// The ID registers it reports.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Makes the next command with `opcode` fail with `CERROR_ILL`.
    pub fn reject_next(&self, opcode: u8) {
        self.st.borrow_mut().reject = Some(opcode);
    }

    /// Stops (or resumes) command consumption: the queue looks stuck.
    pub fn set_stalled(&self, stalled: bool) {
        self.st.borrow_mut().stalled = stalled;
        if !stalled {
            self.consume();
        }
    }

    /// Commands executed, in order.
    pub fn executed(&self) -> Vec<Command> {
        self.st.borrow().executed.clone()
    }

    /// Commands refused with an error.
    pub fn rejected(&self) -> Vec<Command> {
        self.st.borrow().rejected.clone()
    }

    /// How many commands with `opcode` executed.
    pub fn count(&self, opcode: u8) -> u64 {
        self.st.borrow().counts.get(&opcode).copied().unwrap_or(0)
    }

    /// Forgets the executed commands, the counts and the register-write log.
    pub fn clear_counts(&self) {
        let mut st = self.st.borrow_mut();
        st.executed.clear();
        st.counts.clear();
        st.cfgi.clear();
        st.writes.clear();
    }

    /// Every `CFGI_STE` executed, with the STE memory held then.
    pub fn cfgi_log(&self) -> Vec<CfgiRecord> {
        self.st.borrow().cfgi.clone()
    }

    /// Every register write: (offset, value).
    pub fn writes(&self) -> Vec<(usize, u64)> {
        self.st.borrow().writes.clone()
    }

    /// Transactions that passed untranslated (bypass).
    pub fn bypassed(&self) -> u64 {
        self.st.borrow().bypassed
    }

    /// Ignored writes to guarded registers.
    pub fn guard_violations(&self) -> u64 {
        self.st.borrow().guard_violations
    }

    /// Events written to the queue.
    pub fn events_recorded(&self) -> u64 {
        self.st.borrow().events
    }

    /// The cached configuration of `sid`.
    pub fn cached_config(&self, sid: u32) -> Option<StreamCfg> {
        self.st.borrow().configs.get(&sid).copied()
    }

    /// Number of cached translations.
    pub fn tlb_len(&self) -> usize {
        self.st.borrow().tlb.len()
    }

    /// Cached translations tagged with `vmid`.
    pub fn tlb_entries(&self, vmid: u16) -> usize {
        self.st
            .borrow()
            .tlb
            .keys()
            .filter(|&&(v, _)| v == vmid)
            .count()
    }

    /// VMIDs with cached translations.
    pub fn tlb_vmids(&self) -> Vec<u16> {
        let mut v: Vec<u16> = self.st.borrow().tlb.keys().map(|&(v, _)| v).collect();
        v.dedup();
        v
    }

    /// The offset of the register `name` (as IHI 0070 names it) in the model's own map,
    /// for registers the model implements.
    pub fn spec_offset(name: &str) -> Option<usize> {
        Some(match name {
            "IDR0" => IDR0,
            "IDR1" => IDR1,
            "IDR3" => IDR3,
            "IDR5" => IDR5,
            "IIDR" => IIDR,
            "CR0" => CR0,
            "CR0ACK" => CR0ACK,
            "CR1" => CR1,
            "CR2" => CR2,
            "GBPA" => GBPA,
            "IRQ_CTRL" => IRQ_CTRL,
            "IRQ_CTRLACK" => IRQ_CTRLACK,
            "GERROR" => GERROR,
            "GERRORN" => GERRORN,
            "STRTAB_BASE" => STRTAB_BASE,
            "STRTAB_BASE_CFG" => STRTAB_BASE_CFG,
            "CMDQ_BASE" => CMDQ_BASE,
            "CMDQ_PROD" => CMDQ_PROD,
            "CMDQ_CONS" => CMDQ_CONS,
            "EVENTQ_BASE" => EVENTQ_BASE,
            "EVENTQ_PROD" => EVENTQ_PROD,
            "EVENTQ_CONS" => EVENTQ_CONS,
            _ => return None,
        })
    }

    /// Current value of a register (as `read32`).
    pub fn reg<R: RegisterLongName>(&self, reg: Reg<u32, R>) -> u32 {
        self.read32(reg)
    }

    /// A broadcast `TLBI IPAS2E1IS` by the CPU (with its `DSB`): invalidates the SMMU's
    /// entries for the page of `ipa` only if it takes part (`BTM`, `CR2.PTM = 0`).
    pub fn cpu_tlbi_ipa(&self, vmid: u16, ipa: u64) {
        let mut st = self.st.borrow_mut();
        if self.cfg.btm && !self.cfg.mmu700() && st.cr2 & CR2_PTM == 0 && st.cr0 & CR0_SMMUEN != 0 {
            st.tlb.retain(|&(v, page), e| {
                v != vmid || !(page..page + (1 << e.gshift)).contains(&ipa)
            });
        }
    }

    /// A broadcast `TLBI VMALLS12E1IS` by the CPU (with its `DSB`).
    pub fn cpu_tlbi_vmall(&self, vmid: u16) {
        let mut st = self.st.borrow_mut();
        if self.cfg.btm && !self.cfg.mmu700() && st.cr2 & CR2_PTM == 0 && st.cr0 & CR0_SMMUEN != 0 {
            st.tlb.retain(|&(v, _), _| v != vmid);
        }
    }

    // ------------------------------------------------------------------------------------
    // Command queue.

    fn consume(&self) {
        let mut st = self.st.borrow_mut();
        if st.cr0 & CR0_CMDQEN == 0 || (st.gerror ^ st.gerrorn) & GERROR_CMDQ_ERR != 0 || st.stalled
        {
            return;
        }
        let log2 = ((st.cmdq_base & 0x1f) as u32).min(self.cfg.cmdqs);
        let n = 1u32 << log2;
        let mask = 2 * n - 1;
        let base = st.cmdq_base & Q_BASE_ADDR_MASK;
        loop {
            let cons = st.cmdq_cons & mask;
            if cons == st.cmdq_prod & mask {
                st.cmdq_cons = cons;
                return;
            }
            let addr = base + u64::from(cons & (n - 1)) * 16;
            let result = match (self.ram.dev_read_u64(addr), self.ram.dev_read_u64(addr + 8)) {
                (Some(w0), Some(w1)) => self.exec(&mut st, Command([w0, w1])),
                _ => Err(CERROR_ABT),
            };
            if let Err(code) = result {
                st.cmdq_cons = cons | (code << CMDQ_CONS_ERR.0);
                raise(&mut st, GERROR_CMDQ_ERR);
                return;
            }
            st.cmdq_cons = (cons + 1) & mask;
        }
    }

    fn exec(&self, st: &mut State, cmd: Command) -> Result<(), u32> {
        let opcode = cmd.0[0] as u8;
        let [w0, w1] = cmd.0;
        if opcode == op::CMD_SYNC {
            st.since_sync = 0;
        } else {
            st.since_sync += 1;
            if self.cfg.mmu700() && st.since_sync > 63 {
                // Erratum 2812531 (as modelled): the command is lost.
                st.lost += 1;
                return Ok(());
            }
        }
        if st.reject == Some(opcode) {
            st.reject = None;
            st.rejected.push(cmd);
            return Err(CERROR_ILL);
        }
        let ill = |st: &mut State| {
            st.rejected.push(cmd);
            Err(CERROR_ILL)
        };
        match opcode {
            op::PREFETCH_CONFIG | op::PREFETCH_ADDR | op::CFGI_CD | op::CFGI_CD_ALL => {}
            op::TLBI_NH_ALL | op::TLBI_NH_ASID | op::TLBI_NH_VA | op::TLBI_NH_VAA => {}
            op::ATC_INV | op::PRI_RESP | op::RESUME | op::STALL_TERM => {}
            op::CFGI_STE => {
                let sid = (w0 >> 32) as u32;
                st.configs.remove(&sid);
                if w1 & 1 == 0 {
                    // Leaf = 0: the level-1 descriptor too.
                    let split = (st.strtab_cfg >> STRTAB_BASE_CFG_SPLIT.0) & 0x1f;
                    st.l1_cache.remove(&u64::from(sid >> split));
                }
                let ste = self
                    .locate_ste(&mut *st, sid)
                    .ok()
                    .and_then(|addr| self.read_ste(addr));
                st.cfgi.push(CfgiRecord { sid, ste });
            }
            op::CFGI_STE_RANGE => {
                let range = (w1 & 0x1f) as u32;
                if range == 31 {
                    st.configs.clear();
                    st.l1_cache.clear();
                } else {
                    let span = 2u64 << range;
                    let first = (w0 >> 32) & !(span - 1);
                    st.configs
                        .retain(|&sid, _| !(first..first + span).contains(&u64::from(sid)));
                    let split = (st.strtab_cfg >> STRTAB_BASE_CFG_SPLIT.0) & 0x1f;
                    let (lo, hi) = (first >> split, (first + span - 1) >> split);
                    st.l1_cache.retain(|&i, _| !(lo..=hi).contains(&i));
                }
            }
            op::TLBI_EL2_ALL | op::TLBI_EL2_ASID | op::TLBI_EL2_VA | op::TLBI_EL2_VAA => {
                if !self.cfg.hyp {
                    return ill(st);
                }
            }
            op::TLBI_S12_VMALL => {
                let vmid = (w0 >> 32) as u16;
                st.tlb.retain(|&(v, _), _| v != vmid);
            }
            op::TLBI_S2_IPA => {
                let vmid = (w0 >> 32) as u16;
                let addr = w1 & TLBI_ADDR_MASK;
                let tg = (w1 >> 10) & 3;
                let ttl = ((w1 >> 8) & 3) as u32;
                let num = (w0 >> 12) & 0x1f;
                let scale = (w0 >> 20) & 0x1f;
                if tg == 0 {
                    if num != 0 || scale != 0 {
                        return ill(st);
                    }
                    st.tlb.retain(|&(v, page), e| {
                        v != vmid || !(page..page + (1 << e.gshift)).contains(&addr)
                    });
                } else {
                    if !self.cfg.ril {
                        return ill(st);
                    }
                    let gshift = [0, 12, 14, 16][tg as usize];
                    let len = (num + 1) << (scale as u32 + gshift);
                    let end = addr.saturating_add(len);
                    st.tlb.retain(|&(v, page), e| {
                        let hit = v == vmid
                            && e.gshift == gshift
                            && (ttl == 0 || e.level == ttl)
                            && page < end
                            && page + (1 << e.gshift) > addr;
                        !hit
                    });
                }
            }
            op::TLBI_NSNH_ALL => st.tlb.clear(),
            op::CMD_SYNC => {
                let cs = (w0 >> 12) & 3;
                if cs == 3 {
                    return ill(st);
                }
                let msi_addr = w1 & SYNC_MSIADDR_MASK;
                if cs == SYNC_CS_IRQ
                    && self.cfg.msi
                    && msi_addr != 0
                    && !self.ram.dev_write_u32(msi_addr, (w0 >> 32) as u32)
                {
                    raise(st, GERROR_MSI_CMDQ_ABT_ERR);
                }
            }
            _ => return ill(st),
        }
        st.executed.push(cmd);
        *st.counts.entry(opcode).or_default() += 1;
        Ok(())
    }

    // ------------------------------------------------------------------------------------
    // Stream table and translation.

    fn read_ste(&self, addr: u64) -> Option<[u64; 8]> {
        let mut ste = [0; 8];
        for (i, w) in ste.iter_mut().enumerate() {
            *w = self.ram.dev_read_u64(addr + i as u64 * 8)?;
        }
        Some(ste)
    }

    /// The address of the STE of `sid`, or the fault. A level-1 descriptor fetched on
    /// the way is cached until a `CFGI_STE` with Leaf = 0 or a `CFGI_STE_RANGE` covers it.
    fn locate_ste(&self, st: &mut State, sid: u32) -> Result<u64, (DmaFault, u8, u64)> {
        let log2 = (st.strtab_cfg & 0x3f).min(self.cfg.sidsize);
        let base = st.strtab_base & STRTAB_BASE_ADDR_MASK;
        if u64::from(sid) >= 1u64 << log2 {
            return Err((DmaFault::BadStreamId, evt::C_BAD_STREAMID, 0));
        }
        let fmt = (st.strtab_cfg >> STRTAB_BASE_CFG_FMT.0) & 3;
        if fmt == STRTAB_FMT_LINEAR {
            return Ok(base + u64::from(sid) * 64);
        }
        let split = (st.strtab_cfg >> STRTAB_BASE_CFG_SPLIT.0) & 0x1f;
        let l1_idx = u64::from(sid >> split);
        let l1_addr = base + l1_idx * 8;
        let l1 = match st.l1_cache.get(&l1_idx) {
            Some(&d) => d,
            None => {
                let d = self.ram.dev_read_u64(l1_addr).ok_or((
                    DmaFault::SteFetch,
                    evt::F_STE_FETCH,
                    l1_addr,
                ))?;
                st.l1_cache.insert(l1_idx, d);
                d
            }
        };
        let span = (l1 & 0x1f) as u32;
        let idx = u64::from(sid & ((1 << split) - 1));
        if span == 0 || span > split + 1 || idx >= 1 << (span - 1) {
            return Err((DmaFault::BadStreamId, evt::C_BAD_STREAMID, 0));
        }
        Ok((l1 & L1STD_L2PTR_MASK) + idx * 64)
    }

    fn fetch_config(&self, st: &mut State, sid: u32) -> Result<StreamCfg, (DmaFault, u8, u64)> {
        let addr = self.locate_ste(st, sid)?;
        let ste = self
            .read_ste(addr)
            .ok_or((DmaFault::SteFetch, evt::F_STE_FETCH, addr))?;
        let bad = (DmaFault::BadSte, evt::C_BAD_STE, 0);
        if ste[0] & 1 == 0 {
            return Err(bad);
        }
        match (ste[0] >> 1) & 7 {
            0b000 => Ok(StreamCfg::Abort),
            0b100 => Ok(StreamCfg::Bypass),
            0b110 => self.decode_s2(&ste).map(StreamCfg::S2).ok_or(bad),
            _ => Err(bad),
        }
    }

    fn decode_s2(&self, ste: &[u64; 8]) -> Option<S2Cfg> {
        let w2 = ste[2];
        let vmid = (w2 & 0xffff) as u16;
        if !self.cfg.vmid16 && vmid > 0xff {
            return None;
        }
        // S2AA64 = 0: not supported (QEMU: invalid). S2ENDI must be an endianness the SMMU
        // walks, and the model walks little-endian only. S2S must be 1 when stalls are
        // forced and is 0 otherwise (the model does not stall).
        let big = w2 & (1 << 52) != 0;
        let stall = w2 & (1 << 57) != 0;
        let endian_ok = match self.cfg.ttendian {
            0b10 => !big,
            0b11 => big,
            0b00 => true,
            _ => false,
        };
        if w2 & (1 << 51) == 0 || !endian_ok || big || stall != (self.cfg.stall_model == 0b10) {
            return None;
        }
        let t0sz = ((w2 >> 32) & 0x3f) as u32;
        let sl0 = ((w2 >> 38) & 3) as u32;
        let gshift = match (w2 >> 46) & 3 {
            0 => 12,
            1 => 16,
            2 => 14,
            _ => return None,
        };
        let ps = (((w2 >> 48) & 7) as u8).min(self.cfg.oas);
        let pa_bits = spec::output_bits(ps);
        let ipa_bits = 64u32.checked_sub(t0sz)?;
        if !(16..=39).contains(&t0sz) || ipa_bits > pa_bits || sl0 == 3 {
            return None;
        }
        let start = if gshift == 12 {
            2 - sl0 as i32
        } else {
            3 - sl0 as i32
        };
        if start < 0 || (gshift == 16 && start < 1) {
            return None;
        }
        let start = start as u32;
        let stride = gshift - 3;
        let ls = gshift + stride * (3 - start);
        // The start level must resolve 1..=stride+4 bits (at most 16 tables).
        if ipa_bits <= ls || ipa_bits - ls > stride + 4 {
            return None;
        }
        let ttb = ste[3] & 0x000f_ffff_ffff_fff0;
        let root_size = 8u64 << (ipa_bits - ls);
        if !ttb.is_multiple_of(root_size) {
            return None;
        }
        Some(S2Cfg {
            vmid,
            ttb,
            ipa_bits,
            pa_bits,
            gshift,
            start,
            affd: w2 & (1 << 53) != 0,
            record: w2 & (1 << 58) != 0,
            eats: ((ste[1] >> 28) & 3) as u8,
        })
    }

    /// Walks the stage-2 tables for `ipa`: the page's entry, or the fault and its class.
    fn walk(&self, c: &S2Cfg, ipa: u64) -> Result<TlbEntry, (DmaFault, u8, u8)> {
        let fault = |f, t| Err((f, t, CLASS_IN));
        if ipa >> c.ipa_bits != 0 {
            return fault(DmaFault::Translation, evt::F_TRANSLATION);
        }
        let stride = c.gshift - 3;
        let level_shift = |l: u32| c.gshift + stride * (3 - l);
        let oa_mask = |shift: u32| ((1u64 << 48) - 1) & !((1u64 << shift) - 1);
        let mut table = c.ttb;
        let mut level = c.start;
        loop {
            let ls = level_shift(level);
            let bits = if level == c.start {
                c.ipa_bits - ls
            } else {
                stride
            };
            let idx = (ipa >> ls) & ((1 << bits) - 1);
            let Some(desc) = self.ram.dev_read_u64(table + idx * 8) else {
                return Err((DmaFault::WalkEabt, evt::F_WALK_EABT, CLASS_TT));
            };
            if desc & 1 == 0 {
                return fault(DmaFault::Translation, evt::F_TRANSLATION);
            }
            let is_table = desc & 2 != 0 && level < 3;
            if is_table {
                // Bits 51:48 are the table address's top with a 52-bit output and RES0
                // otherwise: set with PS below 52 bits, an Address size fault. Bits
                // 58:52 and 11:2 are ignored.
                table = desc & ((1u64 << 52) - 1) & !((1u64 << c.gshift) - 1);
                if table >> c.pa_bits != 0 {
                    return fault(DmaFault::AddrSize, evt::F_ADDR_SIZE);
                }
                level += 1;
                continue;
            }
            let block_ok = match c.gshift {
                12 => level == 1 || level == 2,
                _ => level == 2,
            };
            if level < 3 && !block_ok || level == 3 && desc & 2 == 0 {
                return fault(DmaFault::Translation, evt::F_TRANSLATION);
            }
            let oa = desc & oa_mask(ls);
            if oa >> c.pa_bits != 0 {
                return fault(DmaFault::AddrSize, evt::F_ADDR_SIZE);
            }
            if desc & (1 << 10) == 0 && !c.affd {
                return fault(DmaFault::Access, evt::F_ACCESS);
            }
            let page = ipa & !((1u64 << c.gshift) - 1);
            return Ok(TlbEntry {
                pa: oa + (page & ((1u64 << ls) - 1)),
                level,
                gshift: c.gshift,
                read: desc & (1 << 6) != 0,
                write: desc & (1 << 7) != 0,
            });
        }
    }

    /// A device with StreamID `sid` accesses `iova`: the physical address it reaches, or
    /// why not (recording an event where the SMMU would).
    pub fn dma(&self, sid: u32, iova: u64, write: bool) -> Result<PhysAddr, DmaFault> {
        let mut st = self.st.borrow_mut();
        if st.cr0 & CR0_SMMUEN == 0 {
            if st.gbpa & GBPA_ABORT != 0 {
                return Err(DmaFault::Abort);
            }
            st.bypassed += 1;
            return Ok(PhysAddr(iova));
        }
        let cfg = self.lookup(&mut st, sid, write, true)?;
        let c = match cfg {
            StreamCfg::Abort => return Err(DmaFault::Abort),
            StreamCfg::Bypass => {
                st.bypassed += 1;
                return Ok(PhysAddr(iova));
            }
            StreamCfg::S2(c) => c,
        };
        let page = iova & !((1u64 << c.gshift) - 1);
        let entry = match st.tlb.get(&(c.vmid, page)) {
            Some(e) if e.gshift == c.gshift => Ok(*e),
            _ => self.walk(&c, iova).inspect(|e| {
                st.tlb.insert((c.vmid, page), *e);
            }),
        };
        let result = entry.and_then(|e| {
            if (write && !e.write) || (!write && !e.read) {
                Err((DmaFault::Permission, evt::F_PERMISSION, CLASS_IN))
            } else {
                Ok(PhysAddr(e.pa + (iova - page)))
            }
        });
        result.map_err(|(fault, kind, class)| {
            if c.record {
                let raw = fault_record(kind, sid, iova, iova, !write, true, class);
                self.record(&mut st, raw);
            }
            fault
        })
    }

    /// The configuration of `sid`: cached, or fetched and cached. A fetch that fails is
    /// recorded as an event when `record` (and `CR2.RECINVSID` for `C_BAD_STREAMID`).
    fn lookup(
        &self,
        st: &mut State,
        sid: u32,
        write: bool,
        record: bool,
    ) -> Result<StreamCfg, DmaFault> {
        if let Some(c) = st.configs.get(&sid) {
            return Ok(*c);
        }
        match self.fetch_config(st, sid) {
            Ok(c) => {
                st.configs.insert(sid, c);
                Ok(c)
            }
            Err((fault, kind, addr)) => {
                if record && (kind != evt::C_BAD_STREAMID || st.cr2 & CR2_RECINVSID != 0) {
                    let raw = fault_record(kind, sid, addr, 0, !write, false, 0);
                    self.record(st, raw);
                }
                Err(fault)
            }
        }
    }

    /// A PCIe ATS *translated* transaction (the endpoint claims `addr` is already a
    /// physical address) from `sid` (§3.9.1.3). With `CR0.SMMUEN = 0` it is
    /// `F_TRANSL_FORBIDDEN`. With `CR0.ATSCHK = 0` it passes with no check at all (the
    /// stream table is not looked at). With `ATSCHK = 1` the STE decides: an abort STE or
    /// an unreachable one aborts (no event: `CR2.REC_CFG_ATS` is not modelled), bypass or
    /// `EATS = 0b00` is `F_TRANSL_FORBIDDEN` (recorded), `EATS = 0b01` passes, `EATS =
    /// 0b10` translates `addr` at stage 2. Without `IDR0.ATS` nothing is accepted.
    pub fn dma_translated(&self, sid: u32, addr: u64, write: bool) -> Result<PhysAddr, DmaFault> {
        let mut st = self.st.borrow_mut();
        if !self.cfg.ats {
            return Err(DmaFault::Abort);
        }
        if st.cr0 & CR0_SMMUEN == 0 {
            return Err(DmaFault::TranslForbidden);
        }
        if st.cr0 & CR0_ATSCHK == 0 {
            st.bypassed += 1;
            return Ok(PhysAddr(addr));
        }
        let forbidden = |st: &mut State| {
            let raw = fault_record(evt::F_TRANSL_FORBIDDEN, sid, addr, 0, !write, false, 0);
            self.record(st, raw);
            Err(DmaFault::TranslForbidden)
        };
        match self.lookup(&mut st, sid, write, false)? {
            StreamCfg::Abort => Err(DmaFault::Abort),
            StreamCfg::Bypass => forbidden(&mut st),
            StreamCfg::S2(c) if c.eats == 0 => forbidden(&mut st),
            StreamCfg::S2(c) if c.eats == 1 => {
                st.bypassed += 1;
                Ok(PhysAddr(addr))
            }
            StreamCfg::S2(_) => {
                drop(st);
                self.dma(sid, addr, write)
            }
        }
    }

    /// Writes an event record to the queue, or raises `EVTQ_ABT_ERR`.
    fn record(&self, st: &mut State, raw: [u64; 4]) {
        if st.cr0 & CR0_EVENTQEN == 0 {
            raise(st, GERROR_EVTQ_ABT_ERR);
            return;
        }
        let log2 = ((st.evtq_base & 0x1f) as u32).min(self.cfg.eventqs);
        let n = 1u32 << log2;
        let mask = 2 * n - 1;
        let (prod, cons) = (st.evtq_prod & mask, st.evtq_cons & mask);
        if prod ^ cons == n {
            raise(st, GERROR_EVTQ_ABT_ERR);
            return;
        }
        let addr = (st.evtq_base & Q_BASE_ADDR_MASK) + u64::from(prod & (n - 1)) * 32;
        for (i, w) in raw.iter().enumerate() {
            if !self.ram.dev_write_u64(addr + i as u64 * 8, *w) {
                raise(st, GERROR_EVTQ_ABT_ERR);
                return;
            }
        }
        st.evtq_prod = (st.evtq_prod & EVENTQ_PROD_OVFLG) | ((prod + 1) & mask);
        st.events += 1;
    }
}

// Register accesses by raw offset, decoded with the model's own map ([`spec`]).
impl SmmuModel {
    fn read_off32(&self, off: usize) -> u32 {
        let st = self.st.borrow();
        match off {
            IDR0 => self.cfg.idr0(),
            IDR1 => self.cfg.idr1(),
            IDR3 => self.cfg.idr3(),
            IDR5 => self.cfg.idr5(),
            CR0 => st.cr0,
            CR0ACK => st.cr0ack,
            IIDR => self.cfg.iidr,
            CR1 => st.cr1,
            CR2 => st.cr2,
            GBPA if st.gbpa_stuck => st.gbpa | GBPA_UPDATE,
            GBPA => st.gbpa,
            IRQ_CTRL | IRQ_CTRLACK => st.irq_ctrl,
            GERROR => st.gerror,
            GERRORN => st.gerrorn,
            STRTAB_BASE_CFG => st.strtab_cfg,
            CMDQ_PROD => st.cmdq_prod,
            CMDQ_CONS => st.cmdq_cons,
            EVENTQ_PROD => st.evtq_prod,
            EVENTQ_CONS => st.evtq_cons,
            _ => 0,
        }
    }

    fn write_off32(&self, off: usize, v: u32) {
        let mut st = self.st.borrow_mut();
        st.writes.push((off, u64::from(v)));
        let mut consume = false;
        match off {
            CR0 => {
                let ats = if self.cfg.ats { CR0_ATSCHK } else { 0 };
                st.cr0 = v & (CR0_SMMUEN | CR0_EVENTQEN | CR0_CMDQEN | ats);
                if !st.cr0ack_stuck {
                    st.cr0ack = st.cr0;
                }
                consume = true;
            }
            CR1 if st.cr0 == 0 => st.cr1 = v,
            CR2 if st.cr0 & CR0_SMMUEN == 0 => st.cr2 = v & (CR2_E2H | CR2_RECINVSID | CR2_PTM),
            GBPA if v & GBPA_UPDATE != 0 && !st.gbpa_stuck => st.gbpa = v & !GBPA_UPDATE,
            IRQ_CTRL => st.irq_ctrl = v & 7,
            GERRORN => {
                st.gerrorn = v;
                consume = true;
            }
            STRTAB_BASE_CFG if st.cr0 & CR0_SMMUEN == 0 => st.strtab_cfg = v,
            CMDQ_PROD => {
                st.cmdq_prod = v & 0xf_ffff;
                consume = true;
            }
            CMDQ_CONS if st.cr0 & CR0_CMDQEN == 0 => st.cmdq_cons = v,
            EVENTQ_PROD if st.cr0 & CR0_EVENTQEN == 0 => st.evtq_prod = v,
            EVENTQ_CONS => st.evtq_cons = v,
            CR1 | CR2 | STRTAB_BASE_CFG | CMDQ_CONS | EVENTQ_PROD => st.guard_violations += 1,
            _ => {}
        }
        drop(st);
        if consume {
            self.consume();
        }
    }

    fn read_off64(&self, off: usize) -> u64 {
        let st = self.st.borrow();
        match off {
            STRTAB_BASE => st.strtab_base,
            CMDQ_BASE => st.cmdq_base,
            EVENTQ_BASE => st.evtq_base,
            _ => u64::from(self.read_off32(off)) | (u64::from(self.read_off32(off + 4)) << 32),
        }
    }

    fn tick_ns(&self) -> u64 {
        let t = self.clock.get() + self.clock_step.get();
        self.clock.set(t);
        t
    }

    fn write_off64(&self, off: usize, v: u64) {
        let mut st = self.st.borrow_mut();
        st.writes.push((off, v));
        match off {
            STRTAB_BASE if st.cr0 & CR0_SMMUEN == 0 => st.strtab_base = v,
            CMDQ_BASE if st.cr0 & CR0_CMDQEN == 0 => st.cmdq_base = v,
            EVENTQ_BASE if st.cr0 & CR0_EVENTQEN == 0 => st.evtq_base = v,
            STRTAB_BASE | CMDQ_BASE | EVENTQ_BASE => st.guard_violations += 1,
            _ => {}
        }
    }
}

impl SmmuIo for SmmuModel {
    fn read32<R: RegisterLongName>(&self, reg: Reg<u32, R>) -> u32 {
        self.read_off32(reg.offset())
    }
    fn write32<R: RegisterLongName>(&self, reg: Reg<u32, R>, v: u32) {
        self.write_off32(reg.offset(), v)
    }
    fn read64<R: RegisterLongName>(&self, reg: Reg<u64, R>) -> u64 {
        self.read_off64(reg.offset())
    }
    fn write64<R: RegisterLongName>(&self, reg: Reg<u64, R>, v: u64) {
        self.write_off64(reg.offset(), v)
    }
    fn now_ns(&self) -> u64 {
        self.tick_ns()
    }
}
