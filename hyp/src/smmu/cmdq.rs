//! The command queue: command encodings, the producer side of the queue (wrap bits,
//! batching, waiting for space), `CMD_SYNC` completion (MSI write-back or polling
//! `CMDQ_CONS`, given up after [`POLL_TIMEOUT_NS`](super::POLL_TIMEOUT_NS) by the seam's
//! clock), command error recovery, and the invalidation API.
//!
//! # Queue indices
//!
//! `PROD` and `CONS` hold an index in bits `log2-1:0` and a wrap bit at bit `log2`. The
//! queue is empty when both are equal and full when the indices are equal and the wrap
//! bits differ. The driver keeps 64-bit positions that never wrap (`pos`: next entry to
//! write, `published`: what `CMDQ_PROD` says, `cons`: what the SMMU consumed) and derives
//! the register values from them, so "has the SMMU passed entry `p`" is `cons > p`.
//!
//! # Errors
//!
//! When the SMMU meets a command it cannot execute it stops at it, writes the reason to
//! `CMDQ_CONS.ERR` and toggles `GERROR.CMDQ_ERR`. While waiting, the driver notices
//! (`GERROR.CMDQ_ERR != GERRORN.CMDQ_ERR`), records the error and the command, replaces
//! an illegal command by a `CMD_SYNC` (as Linux does: the command is skipped), leaves it in
//! place for an abort or ATC timeout (the SMMU retries it), and acknowledges through
//! `GERRORN`; the SMMU then resumes. The errors are in [`SmmuStats`](super::SmmuStats) and
//! [`Smmu::take_errors`]. A `sync` whose own `CMD_SYNC` completes returns Ok unless a
//! command other than a `CMD_SYNC` or prefetch was skipped since the last `sync`: a
//! skipped invalidation did not happen, so the sync returns
//! [`SmmuError::CommandSkipped`] and the caller treats it as unconfirmed.

use super::regs::*;
use super::{Deadline, Region, Smmu, SmmuError, SmmuIo};
use crate::addr::{Ipa, PhysAddr};
use crate::s2mmu::{Granule, TableMemory};
use bitfield_struct::bitfield;
use core::fmt;

/// Command opcodes (`word0[7:0]`).
pub mod op {
    /// Prefetch a configuration.
    pub const PREFETCH_CONFIG: u8 = 0x01;
    /// Prefetch an address.
    pub const PREFETCH_ADDR: u8 = 0x02;
    /// Invalidate the cached STE of one StreamID.
    pub const CFGI_STE: u8 = 0x03;
    /// Invalidate cached STEs of a range of StreamIDs (range 31: all, `CFGI_ALL`).
    pub const CFGI_STE_RANGE: u8 = 0x04;
    /// Invalidate a cached context descriptor.
    pub const CFGI_CD: u8 = 0x05;
    /// Invalidate every cached context descriptor of a stream.
    pub const CFGI_CD_ALL: u8 = 0x06;
    /// Invalidate all non-secure EL1 stage-1 entries of a VMID.
    pub const TLBI_NH_ALL: u8 = 0x10;
    /// Invalidate EL1 stage-1 entries by ASID.
    pub const TLBI_NH_ASID: u8 = 0x11;
    /// Invalidate EL1 stage-1 entries by VA and ASID.
    pub const TLBI_NH_VA: u8 = 0x12;
    /// Invalidate EL1 stage-1 entries by VA, all ASIDs.
    pub const TLBI_NH_VAA: u8 = 0x13;
    /// Invalidate all EL3 entries.
    pub const TLBI_EL3_ALL: u8 = 0x18;
    /// Invalidate EL3 entries by VA.
    pub const TLBI_EL3_VA: u8 = 0x1A;
    /// Invalidate all EL2 entries (needs `IDR0.HYP`).
    pub const TLBI_EL2_ALL: u8 = 0x20;
    /// Invalidate EL2 entries by ASID.
    pub const TLBI_EL2_ASID: u8 = 0x21;
    /// Invalidate EL2 entries by VA.
    pub const TLBI_EL2_VA: u8 = 0x22;
    /// Invalidate EL2 entries by VA, all ASIDs.
    pub const TLBI_EL2_VAA: u8 = 0x23;
    /// Invalidate all stage-1 and stage-2 entries of a VMID.
    pub const TLBI_S12_VMALL: u8 = 0x28;
    /// Invalidate stage-2 entries by IPA (and range, with `IDR3.RIL`).
    pub const TLBI_S2_IPA: u8 = 0x2A;
    /// Invalidate all non-secure non-hypervisor entries.
    pub const TLBI_NSNH_ALL: u8 = 0x30;
    /// Invalidate a device's ATC.
    pub const ATC_INV: u8 = 0x40;
    /// PRI response.
    pub const PRI_RESP: u8 = 0x41;
    /// Resume a stalled transaction.
    pub const RESUME: u8 = 0x44;
    /// Terminate stalled transactions.
    pub const STALL_TERM: u8 = 0x45;
    /// Completion barrier for the commands before it.
    pub const CMD_SYNC: u8 = 0x46;
}

/// Word 0 of every command: the opcode.
#[bitfield(u64)]
pub struct CmdWord0 {
    /// Opcode ([`op`]).
    pub opcode: u8,
    #[bits(56)]
    __: u64,
}

/// `CMD_CFGI_STE` / `CMD_CFGI_STE_RANGE`, word 0.
#[bitfield(u64)]
pub struct CfgiWord0 {
    /// Opcode.
    pub opcode: u8,
    #[bits(24)]
    __: u32,
    /// StreamID (bits 63:32).
    pub sid: u32,
}

/// `CMD_CFGI_STE`, word 1.
#[bitfield(u64)]
pub struct CfgiSteWord1 {
    /// Leaf: 1 = the STE only, 0 = also the level-1 descriptor that locates it.
    pub leaf: bool,
    #[bits(63)]
    __: u64,
}

/// `CMD_CFGI_STE_RANGE`, word 1.
#[bitfield(u64)]
pub struct CfgiRangeWord1 {
    /// Range: `2^(Range + 1)` StreamIDs; 31 = all (`CMD_CFGI_ALL`).
    #[bits(5)]
    pub range: u8,
    #[bits(59)]
    __: u64,
}

/// `CMD_TLBI_S2_IPA` / `CMD_TLBI_S12_VMALL`, word 0.
#[bitfield(u64)]
pub struct TlbiWord0 {
    /// Opcode.
    pub opcode: u8,
    #[bits(4)]
    __: u8,
    /// NUM (bits 16:12): number of multiples minus one (range invalidation).
    #[bits(5)]
    pub num: u8,
    #[bits(3)]
    __: u8,
    /// SCALE (bits 24:20): log2 of the multiple (range invalidation).
    #[bits(5)]
    pub scale: u8,
    #[bits(7)]
    __: u8,
    /// VMID (bits 47:32).
    pub vmid: u16,
    #[bits(16)]
    __: u16,
}

/// `CMD_TLBI_S2_IPA`, word 1.
#[bitfield(u64)]
pub struct TlbiWord1 {
    /// Leaf: last-level entries only.
    pub leaf: bool,
    #[bits(7)]
    __: u8,
    /// TTL (bits 9:8): level of the leaf entries, 0 = any.
    #[bits(2)]
    pub ttl: u8,
    /// TG (bits 11:10): granule of the range, 0 = not a range.
    #[bits(2)]
    pub tg: u8,
    /// Address bits 51:12, shifted right by 12.
    #[bits(40)]
    pub address: u64,
    #[bits(12)]
    __: u16,
}

/// `CMD_SYNC`, word 0.
#[bitfield(u64)]
pub struct SyncWord0 {
    /// Opcode.
    pub opcode: u8,
    #[bits(4)]
    __: u8,
    /// CS (bits 13:12): completion signal (`SYNC_CS_*`).
    #[bits(2)]
    pub cs: u8,
    #[bits(8)]
    __: u8,
    /// MSH (bits 23:22): shareability of the MSI write.
    #[bits(2)]
    pub msh: u8,
    /// MSIAttr (bits 27:24): memory type of the MSI write.
    #[bits(4)]
    pub msiattr: u8,
    #[bits(4)]
    __: u8,
    /// MSIData (bits 63:32).
    pub msidata: u32,
}

/// `CMD_SYNC`, word 1.
#[bitfield(u64)]
pub struct SyncWord1 {
    #[bits(2)]
    __: u8,
    /// MSIAddr bits 51:2, shifted right by 2.
    #[bits(50)]
    pub msiaddr: u64,
    #[bits(12)]
    __: u16,
}

/// `CFGI_STE_RANGE.Range` meaning every StreamID.
const CFGI_RANGE_ALL: u8 = 31;
/// `TLBI_*.Address` bits 51:12 (word 1).
pub const TLBI_ADDR_MASK: u64 = ((1 << TlbiWord1::ADDRESS_BITS) - 1) << TlbiWord1::ADDRESS_OFFSET;
/// `CMD_SYNC.CS`: no signal, completion seen through `CMDQ_CONS`.
pub const SYNC_CS_NONE: u64 = 0;
/// `CMD_SYNC.CS`: signal an interrupt, or write `MSIData` to `MSIAddr` when set.
pub const SYNC_CS_IRQ: u64 = 1;
/// `CMD_SYNC.CS`: send an event (SEV).
pub const SYNC_CS_SEV: u64 = 2;
/// `CMD_SYNC.MSIAddr` bits 51:2 (word 1).
pub const SYNC_MSIADDR_MASK: u64 =
    ((1 << SyncWord1::MSIADDR_BITS) - 1) << SyncWord1::MSIADDR_OFFSET;
/// Inner shareable.
const MSH_ISH: u8 = 0b11;
/// Inner and outer write-back cacheable.
const MSIATTR_OIWB: u8 = 0xf;

/// Range fields of `TLBI_S2_IPA` (with `IDR3.RIL`): `(NUM + 1) << SCALE` pages of the
/// granule `TG` from the address, `TTL` the level hint (0 = any).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlbiRange {
    /// Granule: 1 = 4 KiB, 2 = 16 KiB, 3 = 64 KiB.
    pub tg: u8,
    /// log2 of the page multiple (0..=31).
    pub scale: u8,
    /// Number of multiples minus one (0..=31).
    pub num: u8,
    /// Level of the leaf entries (1..=3), 0 when unknown.
    pub ttl: u8,
}

/// One 16-byte command.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Command(pub [u64; 2]);

impl Command {
    /// `CMD_CFGI_STE` with Leaf = 1: the cached STE only (a cached level-1 descriptor
    /// that located it may stay).
    pub const fn cfgi_ste(sid: u32) -> Self {
        Self::cfgi_ste_leaf(sid, true)
    }

    /// `CMD_CFGI_STE` with Leaf = 0: the cached STE and the cached level-1 descriptor that
    /// locates it (needed after a level-1 descriptor changed: a new level-2 table).
    pub const fn cfgi_ste_l1(sid: u32) -> Self {
        Self::cfgi_ste_leaf(sid, false)
    }

    const fn cfgi_ste_leaf(sid: u32, leaf: bool) -> Self {
        Self([
            CfgiWord0::new()
                .with_opcode(op::CFGI_STE)
                .with_sid(sid)
                .into_bits(),
            CfgiSteWord1::new().with_leaf(leaf).into_bits(),
        ])
    }

    /// `CMD_CFGI_ALL` (`CFGI_STE_RANGE` with range 31).
    pub const fn cfgi_all() -> Self {
        Self([
            CfgiWord0::new().with_opcode(op::CFGI_STE_RANGE).into_bits(),
            CfgiRangeWord1::new().with_range(CFGI_RANGE_ALL).into_bits(),
        ])
    }

    /// A command with only an opcode.
    const fn bare(opcode: u8) -> Self {
        Self([CmdWord0::new().with_opcode(opcode).into_bits(), 0])
    }

    /// `CMD_TLBI_NSNH_ALL`.
    pub const fn tlbi_nsnh_all() -> Self {
        Self::bare(op::TLBI_NSNH_ALL)
    }

    /// `CMD_TLBI_EL2_ALL`.
    pub const fn tlbi_el2_all() -> Self {
        Self::bare(op::TLBI_EL2_ALL)
    }

    /// `CMD_TLBI_S12_VMALL`: every entry of `vmid`.
    pub const fn tlbi_s12_vmall(vmid: u16) -> Self {
        Self([
            TlbiWord0::new()
                .with_opcode(op::TLBI_S12_VMALL)
                .with_vmid(vmid)
                .into_bits(),
            0,
        ])
    }

    /// `CMD_TLBI_S2_IPA`: entries of `vmid` translating `ipa` (or the range), leaf
    /// entries only when `leaf`.
    pub const fn tlbi_s2_ipa(vmid: u16, ipa: u64, leaf: bool, range: Option<TlbiRange>) -> Self {
        let mut w0 = TlbiWord0::new()
            .with_opcode(op::TLBI_S2_IPA)
            .with_vmid(vmid);
        let mut w1 = TlbiWord1::new()
            .with_leaf(leaf)
            .with_address((ipa & TLBI_ADDR_MASK) >> TlbiWord1::ADDRESS_OFFSET);
        if let Some(r) = range {
            w0 = w0.with_num(r.num & 0x1f).with_scale(r.scale & 0x1f);
            w1 = w1.with_ttl(r.ttl & 3).with_tg(r.tg & 3);
        }
        Self([w0.into_bits(), w1.into_bits()])
    }

    /// `CMD_SYNC` with completion signal `cs` and no MSI.
    const fn sync_cs(cs: u64) -> Self {
        Self([
            SyncWord0::new()
                .with_opcode(op::CMD_SYNC)
                .with_cs(cs as u8)
                .into_bits(),
            0,
        ])
    }

    /// `CMD_SYNC` without signal (completion seen as `CMDQ_CONS` passing it).
    pub const fn sync() -> Self {
        Self::sync_cs(SYNC_CS_NONE)
    }

    /// `CMD_SYNC` that signals completion with a send-event (`CS = SIG_SEV`), so a CPU
    /// waiting in `WFE` wakes up (completion still seen as `CMDQ_CONS` passing it).
    pub const fn sync_sev() -> Self {
        Self::sync_cs(SYNC_CS_SEV)
    }

    /// `CMD_SYNC` that writes `data` (32 bits) to `addr` on completion (inner-shareable,
    /// write-back: for a coherent SMMU).
    pub const fn sync_msi(addr: PhysAddr, data: u32) -> Self {
        Self([
            SyncWord0::new()
                .with_opcode(op::CMD_SYNC)
                .with_cs(SYNC_CS_IRQ as u8)
                .with_msh(MSH_ISH)
                .with_msiattr(MSIATTR_OIWB)
                .with_msidata(data)
                .into_bits(),
            SyncWord1::new()
                .with_msiaddr((addr.0 & SYNC_MSIADDR_MASK) >> SyncWord1::MSIADDR_OFFSET)
                .into_bits(),
        ])
    }

    /// The opcode.
    pub const fn opcode(&self) -> u8 {
        CmdWord0::from_bits(self.0[0]).opcode()
    }

    /// The command's name (`CMD_` prefix dropped), or `"?"`.
    pub const fn name(&self) -> &'static str {
        match self.opcode() {
            op::PREFETCH_CONFIG => "PREFETCH_CONFIG",
            op::PREFETCH_ADDR => "PREFETCH_ADDR",
            op::CFGI_STE => "CFGI_STE",
            op::CFGI_STE_RANGE => "CFGI_STE_RANGE",
            op::CFGI_CD => "CFGI_CD",
            op::CFGI_CD_ALL => "CFGI_CD_ALL",
            op::TLBI_NH_ALL => "TLBI_NH_ALL",
            op::TLBI_NH_ASID => "TLBI_NH_ASID",
            op::TLBI_NH_VA => "TLBI_NH_VA",
            op::TLBI_NH_VAA => "TLBI_NH_VAA",
            op::TLBI_EL3_ALL => "TLBI_EL3_ALL",
            op::TLBI_EL3_VA => "TLBI_EL3_VA",
            op::TLBI_EL2_ALL => "TLBI_EL2_ALL",
            op::TLBI_EL2_ASID => "TLBI_EL2_ASID",
            op::TLBI_EL2_VA => "TLBI_EL2_VA",
            op::TLBI_EL2_VAA => "TLBI_EL2_VAA",
            op::TLBI_S12_VMALL => "TLBI_S12_VMALL",
            op::TLBI_S2_IPA => "TLBI_S2_IPA",
            op::TLBI_NSNH_ALL => "TLBI_NSNH_ALL",
            op::ATC_INV => "ATC_INV",
            op::PRI_RESP => "PRI_RESP",
            op::RESUME => "RESUME",
            op::STALL_TERM => "STALL_TERM",
            op::CMD_SYNC => "CMD_SYNC",
            _ => "?",
        }
    }
}

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} [{:#018x} {:#018x}]",
            self.name(),
            self.0[0],
            self.0[1]
        )
    }
}

/// Commands issued, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommandCounts {
    /// `CMD_CFGI_STE`.
    pub cfgi_ste: u64,
    /// `CMD_CFGI_ALL`.
    pub cfgi_all: u64,
    /// `CMD_TLBI_S2_IPA` (one per command, ranges included).
    pub tlbi_s2_ipa: u64,
    /// `CMD_TLBI_S12_VMALL`.
    pub tlbi_s12_vmall: u64,
    /// `CMD_TLBI_NSNH_ALL`.
    pub tlbi_nsnh_all: u64,
    /// `CMD_TLBI_EL2_ALL`.
    pub tlbi_el2_all: u64,
    /// `CMD_SYNC`.
    pub cmd_sync: u64,
    /// Anything else.
    pub other: u64,
}

impl CommandCounts {
    fn count(&mut self, cmd: &Command) {
        let c = match cmd.opcode() {
            op::CFGI_STE => &mut self.cfgi_ste,
            op::CFGI_STE_RANGE => &mut self.cfgi_all,
            op::TLBI_S2_IPA => &mut self.tlbi_s2_ipa,
            op::TLBI_S12_VMALL => &mut self.tlbi_s12_vmall,
            op::TLBI_NSNH_ALL => &mut self.tlbi_nsnh_all,
            op::TLBI_EL2_ALL => &mut self.tlbi_el2_all,
            op::CMD_SYNC => &mut self.cmd_sync,
            _ => &mut self.other,
        };
        *c += 1;
    }
}

/// A command the SMMU refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CmdError {
    /// `CMDQ_CONS.ERR`: [`CERROR_ILL`], [`CERROR_ABT`], [`CERROR_ATC_INV_SYNC`], …
    pub code: u32,
    /// The command at `CMDQ_CONS`.
    pub cmd: Command,
    /// Whether the driver replaced it by a `CMD_SYNC` (skipped it); otherwise the SMMU
    /// retries it.
    pub skipped: bool,
}

impl CmdError {
    /// The name of the error code.
    pub const fn code_name(&self) -> &'static str {
        match self.code {
            CERROR_NONE => "CERROR_NONE",
            CERROR_ILL => "CERROR_ILL",
            CERROR_ABT => "CERROR_ABT",
            CERROR_ATC_INV_SYNC => "CERROR_ATC_INV_SYNC",
            _ => "CERROR_?",
        }
    }
}

impl fmt::Display for CmdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SMMU command error {} ({:#x}) on {:?}{}",
            self.code_name(),
            self.code,
            self.cmd,
            if self.skipped {
                ", skipped"
            } else {
                ", retried"
            }
        )
    }
}

/// Most command errors kept for [`Smmu::take_errors`] (older ones are counted only).
pub const MAX_KEPT_ERRORS: usize = 16;
/// Past this many pages a range invalidation becomes one `TLBI_S12_VMALL`.
pub const TLBI_RANGE_MAX_PAGES: u64 = 512;

/// The producer's view of the command queue.
#[derive(Debug)]
pub(super) struct CmdQueue {
    pub(super) q: Region,
    /// log2 of the number of entries.
    pub(super) log2: u32,
    /// Next entry to write.
    pub(super) pos: u64,
    /// What `CMDQ_PROD` was last set to.
    pub(super) published: u64,
    /// Entries the SMMU consumed, as last read.
    pub(super) cons: u64,
    /// Commands queued since the last `CMD_SYNC`.
    pub(super) unsynced: u32,
}

impl CmdQueue {
    pub(super) const fn new(q: Region, log2: u32) -> Self {
        Self {
            q,
            log2,
            pos: 0,
            published: 0,
            cons: 0,
            unsynced: 0,
        }
    }

    const fn entries(&self) -> u64 {
        1 << self.log2
    }

    /// Index + wrap bit of a position, as `PROD` / `CONS` hold it.
    const fn reg(&self, pos: u64) -> u32 {
        (pos & ((2 << self.log2) - 1)) as u32
    }

    /// The consumer position from a `CMDQ_CONS` value, or `None` if it is not within the
    /// published part of the queue (the SMMU misbehaves).
    fn cons_from_reg(&self, cons: u32) -> Option<u64> {
        let wrap_mask = (2u64 << self.log2) - 1;
        let behind =
            (u64::from(self.reg(self.published)).wrapping_sub(u64::from(cons))) & wrap_mask;
        if behind > self.entries() {
            return None;
        }
        let pos = self.published - behind;
        (pos >= self.cons).then_some(pos)
    }
}

impl<I: SmmuIo, M: TableMemory + ?Sized> Smmu<I, M> {
    /// Queues `cmd`, waiting for space (publishing what is queued) when the queue is full.
    /// Nothing is published otherwise: [`sync`](Self::sync) does. A failure (timeout
    /// while waiting for space) loses the command and is returned by the next `sync`.
    ///
    /// On an SMMU that must not see more than `Features::sync_every` commands in a row
    /// (MMU-700, erratum 2812531), a full run is first completed with a `CMD_SYNC`, as
    /// Linux does; a failure of that sync is returned by the next `sync` too.
    pub fn push(&mut self, mem: &mut M, cmd: Command) {
        let limit = self.features.sync_every;
        if limit != 0
            && cmd.opcode() != op::CMD_SYNC
            && self.cmdq.unsynced >= limit
            && let Err(e) = self.issue_sync(mem)
        {
            self.pending.get_or_insert(e);
        }
        if let Err(e) = self.try_push(mem, cmd) {
            self.pending.get_or_insert(e);
        }
    }

    fn try_push(&mut self, mem: &mut M, cmd: Command) -> Result<(), SmmuError> {
        if self.cmdq.pos - self.cmdq.cons >= self.cmdq.entries() {
            self.publish();
            let want = self.cmdq.pos - self.cmdq.entries() + 1;
            self.wait_cons(mem, want, None, false)?;
        }
        let idx = (self.cmdq.pos & (self.cmdq.entries() - 1)) as usize;
        self.cmdq.q.write(mem, idx * 16, &cmd.0, self.coherent);
        self.cmdq.pos += 1;
        self.cmdq.unsynced = if cmd.opcode() == op::CMD_SYNC {
            0
        } else {
            self.cmdq.unsynced.saturating_add(1)
        };
        self.stats.commands.count(&cmd);
        Ok(())
    }

    /// Makes the SMMU see every queued command (`CMDQ_PROD`).
    fn publish(&mut self) {
        if self.cmdq.published != self.cmdq.pos {
            self.cmdq.published = self.cmdq.pos;
            self.io.write32(CMDQ_PROD, self.cmdq.reg(self.cmdq.pos));
        }
    }

    /// Queues one `CMD_SYNC`, publishes, and waits until it completed: every command
    /// queued before it has taken effect. Returns an error for a timeout, or for a
    /// failure of an earlier [`push`](Self::push) since the last `sync`. Command errors
    /// met on the way are recovered from (see the module docs) and do not fail the sync.
    pub fn sync(&mut self, mem: &mut M) -> Result<(), SmmuError> {
        let done = self.issue_sync(mem);
        match self.pending.take() {
            Some(e) => Err(e),
            None => done,
        }
    }

    /// Queues one `CMD_SYNC`, publishes, and waits for its completion (the body of
    /// [`sync`](Self::sync), without the earlier failures).
    fn issue_sync(&mut self, mem: &mut M) -> Result<(), SmmuError> {
        let msi = self.msi.map(|addr| {
            self.sync_seq = self.sync_seq.wrapping_add(1).max(1);
            (addr, self.sync_seq)
        });
        // Completion: MSI write-back when available, else SEV (wait in WFE), else polling.
        let sev = msi.is_none() && self.features.sev;
        let cmd = match msi {
            Some((addr, seq)) => Command::sync_msi(addr.pa, seq),
            None if sev => Command::sync_sev(),
            None => Command::sync(),
        };
        let pushed = self.try_push(mem, cmd);
        let done = pushed.and_then(|()| {
            let at = self.cmdq.pos;
            self.publish();
            self.wait_cons(mem, at, msi, sev)
        });
        if done.is_ok() {
            self.stats.syncs_completed += 1;
        }
        done
    }

    /// Waits until the SMMU consumed everything before position `until`, or until the
    /// MSI word at `msi.0` holds `msi.1`; with `sev`, waits for events between polls.
    /// Handles command errors on the way.
    fn wait_cons(
        &mut self,
        mem: &mut M,
        until: u64,
        msi: Option<(Region, u32)>,
        sev: bool,
    ) -> Result<(), SmmuError> {
        let deadline = Deadline::start(&self.io);
        let mut i = 0u32;
        loop {
            i = i.wrapping_add(1);
            let expired = deadline.passed(&self.io);
            if let Some((word, seq)) = msi {
                if word.read_u32(mem, 0) == seq {
                    // The SYNC completed, hence everything before it. Refresh `cons` for
                    // the space accounting; an error here does not undo the completion.
                    let _ = self.refresh_cons(mem);
                    return Ok(());
                }
                // Look at the registers (errors, CONS) only now and then.
                if i % 16 != 15 && !expired {
                    core::hint::spin_loop();
                    continue;
                }
            }
            self.refresh_cons(mem)?;
            if self.cmdq.cons >= until {
                return Ok(());
            }
            if expired {
                self.stats.timeouts += 1;
                return Err(SmmuError::Timeout("command queue"));
            }
            if sev {
                self.io.wait_for_event();
            } else {
                core::hint::spin_loop();
            }
        }
    }

    /// Reads `CMDQ_CONS` (after dealing with a pending command error).
    fn refresh_cons(&mut self, mem: &mut M) -> Result<(), SmmuError> {
        let active = self.io.read32(GERROR) ^ self.io.read32(GERRORN);
        if GERROR::CMDQ_ERR.is_set(active) {
            self.recover_cmd_error(mem);
        }
        let cons = self.io.read32(CMDQ_CONS);
        let mask = (2u32 << self.cmdq.log2) - 1;
        match self.cmdq.cons_from_reg(cons & mask) {
            Some(pos) => {
                self.cmdq.cons = pos;
                Ok(())
            }
            None => Err(SmmuError::BadQueueIndex(cons)),
        }
    }

    /// Records the command error at `CMDQ_CONS`, skips an illegal command by turning it
    /// into a `CMD_SYNC`, and acknowledges `GERROR.CMDQ_ERR`.
    fn recover_cmd_error(&mut self, mem: &mut M) {
        let cons = self.io.read32(CMDQ_CONS);
        let code = CMDQ_CONS::ERR.read(cons);
        let idx = (cons & ((1 << self.cmdq.log2) - 1)) as usize;
        let mut cmd = Command([0; 2]);
        self.cmdq.q.read(mem, idx * 16, &mut cmd.0);
        let skipped = !matches!(code, CERROR_NONE | CERROR_ABT | CERROR_ATC_INV_SYNC);
        if skipped {
            self.cmdq
                .q
                .write(mem, idx * 16, &Command::sync().0, self.coherent);
        }
        let err = CmdError { code, cmd, skipped };
        log::warn!("{err}");
        self.stats.cmd_errors += 1;
        // A skipped invalidation did not happen: the next `sync` must not confirm it. (A
        // skipped CMD_SYNC became a CMD_SYNC; a prefetch has no effect to lose.)
        if skipped
            && !matches!(
                cmd.opcode(),
                op::CMD_SYNC | op::PREFETCH_CONFIG | op::PREFETCH_ADDR
            )
        {
            self.pending
                .get_or_insert(SmmuError::CommandSkipped(cmd.opcode()));
        }
        // Bounded and fallible: no allocation that can fail by panicking here.
        if self.errors.len() < MAX_KEPT_ERRORS && self.errors.try_reserve(1).is_ok() {
            self.errors.push(err);
        }
        // Acknowledge only CMDQ_ERR: make GERRORN's bit equal GERROR's.
        let gerrorn = self.io.read32(GERRORN);
        let gerror = self.io.get(GERROR);
        let ack = GERROR::CMDQ_ERR.val(gerror.read(GERROR::CMDQ_ERR));
        self.io.write32(GERRORN, ack.modify(gerrorn));
    }

    /// Command errors recorded since the last call (at most [`MAX_KEPT_ERRORS`]; the
    /// total is `stats().cmd_errors`).
    pub fn take_errors(&mut self) -> alloc::vec::Vec<CmdError> {
        core::mem::take(&mut self.errors)
    }

    /// Queues the invalidation of the SMMU's stage-2 entries of `vmid` for
    /// `[ipa, ipa + size)` (rounded out to `granule`), leaf and walk-cache entries. With
    /// range invalidation (`IDR3.RIL`) as few range commands as possible (TTL = 0); else
    /// one `TLBI_S2_IPA` per page; past [`TLBI_RANGE_MAX_PAGES`] pages one
    /// `TLBI_S12_VMALL`. No `CMD_SYNC`: call [`sync`](Self::sync). Bad arguments (VMID
    /// wider than the SMMU's, a range beyond 52 bits) are reported by the next `sync`.
    pub fn tlbi_s2_range(&mut self, mem: &mut M, vmid: u16, ipa: Ipa, size: u64, granule: Granule) {
        self.tlbi_s2(mem, vmid, ipa, size, granule, false);
    }

    /// As [`tlbi_s2_range`](Self::tlbi_s2_range) for last-level (leaf) entries only: for
    /// changes that freed no table.
    pub fn tlbi_s2_leaf_range(
        &mut self,
        mem: &mut M,
        vmid: u16,
        ipa: Ipa,
        size: u64,
        granule: Granule,
    ) {
        self.tlbi_s2(mem, vmid, ipa, size, granule, true);
    }

    fn tlbi_s2(
        &mut self,
        mem: &mut M,
        vmid: u16,
        ipa: Ipa,
        size: u64,
        granule: Granule,
        leaf: bool,
    ) {
        if size == 0 {
            return;
        }
        if vmid > self.features.max_vmid() {
            self.pending
                .get_or_insert(SmmuError::BadConfig("VMID wider than the SMMU's"));
            return;
        }
        let shift = granule.shift();
        let start = ipa.0 >> shift;
        let end = match ipa.0.checked_add(size) {
            Some(end) if end <= 1 << 52 => end.div_ceil(granule.size()),
            _ => {
                self.pending
                    .get_or_insert(SmmuError::BadConfig("invalidation range beyond 52 bits"));
                return;
            }
        };
        let mut pages = end - start;
        if pages > TLBI_RANGE_MAX_PAGES {
            self.push(mem, Command::tlbi_s12_vmall(vmid));
            return;
        }
        let mut page = start;
        if !self.features.ril {
            for p in start..end {
                self.push(mem, Command::tlbi_s2_ipa(vmid, p << shift, leaf, None));
            }
            return;
        }
        let tg = match granule {
            Granule::Size4K => 1,
            Granule::Size16K => 2,
            Granule::Size64K => 3,
        };
        // Each command covers (NUM + 1) << SCALE pages: take the lowest set bit of the
        // remaining count as SCALE and the next 5 bits as NUM + 1 (as Linux does).
        while pages != 0 {
            let scale = pages.trailing_zeros();
            let num = (pages >> scale) & 0x1f;
            let range = TlbiRange {
                tg,
                scale: scale as u8,
                num: (num - 1) as u8,
                ttl: 0,
            };
            self.push(
                mem,
                Command::tlbi_s2_ipa(vmid, page << shift, leaf, Some(range)),
            );
            page += num << scale;
            pages -= num << scale;
        }
    }

    /// Queues `TLBI_S12_VMALL`: every entry of `vmid`. No `CMD_SYNC`.
    pub fn tlbi_vmall(&mut self, mem: &mut M, vmid: u16) {
        if vmid > self.features.max_vmid() {
            self.pending
                .get_or_insert(SmmuError::BadConfig("VMID wider than the SMMU's"));
            return;
        }
        self.push(mem, Command::tlbi_s12_vmall(vmid));
    }

    /// Queues `TLBI_NSNH_ALL`: every non-secure, non-EL2 entry. No `CMD_SYNC`.
    pub fn tlbi_all(&mut self, mem: &mut M) {
        self.push(mem, Command::tlbi_nsnh_all());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings() {
        assert_eq!(Command::cfgi_ste(0x10).0, [0x0000_0010_0000_0003, 1]);
        assert_eq!(Command::cfgi_ste_l1(0x300).0, [0x0000_0300_0000_0003, 0]);
        assert_eq!(Command::cfgi_all().0, [0x04, 31]);
        assert_eq!(Command::tlbi_nsnh_all().0, [0x30, 0]);
        assert_eq!(Command::tlbi_el2_all().0, [0x20, 0]);
        assert_eq!(
            Command::tlbi_s12_vmall(0xabcd).0,
            [0x0000_abcd_0000_0028, 0]
        );
        assert_eq!(
            Command::tlbi_s2_ipa(1, 0x1234_5000, true, None).0,
            [0x0000_0001_0000_002a, 0x1234_5001]
        );
        let r = TlbiRange {
            tg: 1,
            scale: 6,
            num: 0,
            ttl: 3,
        };
        let c = Command::tlbi_s2_ipa(2, 0x4000_0000, false, Some(r));
        assert_eq!(c.0[0], 0x0000_0002_0060_002a);
        assert_eq!(c.0[1], 0x4000_0000 | (3 << 8) | (1 << 10));
        let r = TlbiRange {
            tg: 3,
            scale: 31,
            num: 31,
            ttl: 0,
        };
        assert_eq!(
            Command::tlbi_s2_ipa(0, 0, false, Some(r)).0[0],
            0x2a | (31 << 12) | (31 << 20)
        );
        assert_eq!(Command::sync().0, [0x46, 0]);
        let s = Command::sync_msi(PhysAddr(0x8000_1000), 7);
        assert_eq!(s.0, [0x0000_0007_0fc0_1046, 0x8000_1000]);
        assert_eq!(s.name(), "CMD_SYNC");
        assert_eq!(Command([0xff, 0]).name(), "?");
    }

    #[test]
    fn cons_positions_with_wrap() {
        let q = Region {
            pa: PhysAddr(0),
            size: 4096,
        };
        let mut cq = CmdQueue::new(q, 2);
        // Four entries: register values cycle through 0..8 (wrap bit = bit 2).
        cq.pos = 13;
        cq.published = 13;
        cq.cons = 9;
        assert_eq!(cq.reg(13), 5);
        assert_eq!(cq.cons_from_reg(5), Some(13), "empty");
        assert_eq!(cq.cons_from_reg(1), Some(9), "full: same index, other wrap");
        assert_eq!(cq.cons_from_reg(3), Some(11));
        assert_eq!(cq.cons_from_reg(0), None, "more than a queue behind");
        cq.cons = 12;
        assert_eq!(cq.cons_from_reg(3), None, "backwards");
    }
}
