//! The event queue: decoding event records and draining the queue, plus the global errors
//! that concern it (`GERROR.EVTQ_ABT_ERR`, `EVENTQ_PROD.OVFLG`).
//!
//! # Event record (32 bytes, four 64-bit words; QEMU's 32-bit word numbers after `w`)
//!
//! | word | bits  | field                                        |
//! |------|-------|----------------------------------------------|
//! | 0    | 7:0   | type (w0)                                     |
//! | 0    | 11    | SSV: SubstreamID valid                       |
//! | 0    | 31:12 | SubstreamID                                  |
//! | 0    | 63:32 | StreamID (w1)                                 |
//! | 1    | 35    | RnW: 1 read, 0 write (w3 bit 3)               |
//! | 1    | 39    | S2: fault at stage 2 (w3 bit 7)               |
//! | 1    | 41:40 | CLASS: 0 CD, 1 TT (table walk), 2 IN (w3 9:8) |
//! | 2    | 63:0  | input address (or fetch address) (w4, w5)      |
//! | 3    | 51:3  | IPA (w6, w7)                                   |

use super::regs::*;
use super::{Smmu, SmmuIo};
use crate::s2mmu::TableMemory;
use bitfield_struct::bitfield;
use core::fmt;

/// An event type (`word0[7:0]`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct EventType(pub u8);

impl EventType {
    /// Unsupported upstream transaction.
    pub const F_UUT: Self = Self(0x01);
    /// StreamID beyond the stream table.
    pub const C_BAD_STREAMID: Self = Self(0x02);
    /// External abort fetching an STE.
    pub const F_STE_FETCH: Self = Self(0x03);
    /// Invalid or illegal STE.
    pub const C_BAD_STE: Self = Self(0x04);
    /// Bad ATS translation request.
    pub const F_BAD_ATS_TREQ: Self = Self(0x05);
    /// Stream disabled (non-substream transaction to a substream-only config).
    pub const F_STREAM_DISABLED: Self = Self(0x06);
    /// Translation forbidden (ATS).
    pub const F_TRANSL_FORBIDDEN: Self = Self(0x07);
    /// Bad SubstreamID.
    pub const C_BAD_SUBSTREAMID: Self = Self(0x08);
    /// External abort fetching a context descriptor.
    pub const F_CD_FETCH: Self = Self(0x09);
    /// Invalid context descriptor.
    pub const C_BAD_CD: Self = Self(0x0A);
    /// External abort during a table walk.
    pub const F_WALK_EABT: Self = Self(0x0B);
    /// Translation fault: no valid descriptor.
    pub const F_TRANSLATION: Self = Self(0x10);
    /// Address size fault.
    pub const F_ADDR_SIZE: Self = Self(0x11);
    /// Access flag fault.
    pub const F_ACCESS: Self = Self(0x12);
    /// Permission fault.
    pub const F_PERMISSION: Self = Self(0x13);
    /// TLB conflict.
    pub const F_TLB_CONFLICT: Self = Self(0x20);
    /// Configuration cache conflict.
    pub const F_CFG_CONFLICT: Self = Self(0x21);
    /// PRI page request.
    pub const E_PAGE_REQUEST: Self = Self(0x24);
    /// External abort fetching a VMS.
    pub const F_VMS_FETCH: Self = Self(0x25);

    /// The architected name, or `"UNKNOWN"`.
    pub const fn name(self) -> &'static str {
        match self.0 {
            0x01 => "F_UUT",
            0x02 => "C_BAD_STREAMID",
            0x03 => "F_STE_FETCH",
            0x04 => "C_BAD_STE",
            0x05 => "F_BAD_ATS_TREQ",
            0x06 => "F_STREAM_DISABLED",
            0x07 => "F_TRANSL_FORBIDDEN",
            0x08 => "C_BAD_SUBSTREAMID",
            0x09 => "F_CD_FETCH",
            0x0A => "C_BAD_CD",
            0x0B => "F_WALK_EABT",
            0x10 => "F_TRANSLATION",
            0x11 => "F_ADDR_SIZE",
            0x12 => "F_ACCESS",
            0x13 => "F_PERMISSION",
            0x20 => "F_TLB_CONFLICT",
            0x21 => "F_CFG_CONFLICT",
            0x24 => "E_PAGE_REQUEST",
            0x25 => "F_VMS_FETCH",
            _ => "UNKNOWN",
        }
    }

    /// Whether the record carries a faulting input address, IPA, RnW, S2 and CLASS
    /// (translation, address size, access, permission and walk abort faults).
    pub const fn is_translation_fault(self) -> bool {
        matches!(self.0, 0x0B | 0x10..=0x13)
    }
}

/// Event record word 0.
#[bitfield(u64)]
pub struct EvtWord0 {
    /// Type (bits 7:0).
    pub kind: u8,
    #[bits(3)]
    __: u8,
    /// SSV (bit 11): SubstreamID valid.
    pub ssv: bool,
    /// SubstreamID (bits 31:12).
    #[bits(20)]
    pub substreamid: u32,
    /// StreamID (bits 63:32).
    pub streamid: u32,
}

/// Event record word 1 (the fields of translation-type faults).
#[bitfield(u64)]
pub struct EvtWord1 {
    #[bits(35)]
    __: u64,
    /// RnW (bit 35): 1 read, 0 write.
    pub rnw: bool,
    #[bits(3)]
    __: u8,
    /// S2 (bit 39): fault at stage 2.
    pub s2: bool,
    /// CLASS (bits 41:40): `CLASS_CD`, `CLASS_TT`, `CLASS_IN`.
    #[bits(2)]
    pub class: u8,
    #[bits(22)]
    __: u32,
}

/// Event record word 3.
#[bitfield(u64)]
pub struct EvtWord3 {
    #[bits(3)]
    __: u8,
    /// IPA bits 51:3, shifted right by 3.
    #[bits(49)]
    pub ipa: u64,
    #[bits(12)]
    __: u16,
}

/// IPA bits 51:3 of word 3.
const EVT3_IPA_MASK: u64 = ((1 << EvtWord3::IPA_BITS) - 1) << EvtWord3::IPA_OFFSET;

/// `CLASS`: fault while fetching a context descriptor.
pub const CLASS_CD: u8 = 0;
/// `CLASS`: fault on a stage-1 table walk access (stage-2 translation of it).
pub const CLASS_TT: u8 = 1;
/// `CLASS`: fault on the input address itself.
pub const CLASS_IN: u8 = 2;

/// A decoded event record.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Event {
    /// Type.
    pub kind: EventType,
    /// StreamID.
    pub sid: u32,
    /// SubstreamID, if valid.
    pub ssid: Option<u32>,
    /// Input address (IOVA) of a translation fault; fetch address of `F_STE_FETCH`.
    pub input_addr: u64,
    /// IPA of a stage-2 fault.
    pub ipa: u64,
    /// Whether the access was a read.
    pub read: bool,
    /// Whether the fault is at stage 2.
    pub stage2: bool,
    /// `CLASS_CD`, `CLASS_TT` or `CLASS_IN`.
    pub class: u8,
    /// The record.
    pub raw: [u64; 4],
}

impl Event {
    /// Decodes a record.
    pub const fn decode(raw: [u64; 4]) -> Self {
        let w0 = EvtWord0::from_bits(raw[0]);
        let w1 = EvtWord1::from_bits(raw[1]);
        Self {
            kind: EventType(w0.kind()),
            sid: w0.streamid(),
            ssid: if w0.ssv() {
                Some(w0.substreamid())
            } else {
                None
            },
            input_addr: raw[2],
            ipa: raw[3] & EVT3_IPA_MASK,
            read: w1.rnw(),
            stage2: w1.s2(),
            class: w1.class(),
            raw,
        }
    }

    /// Encodes a translation-type fault record (what an SMMU writes).
    pub const fn encode_fault(
        kind: EventType,
        sid: u32,
        iova: u64,
        ipa: u64,
        read: bool,
        stage2: bool,
        class: u8,
    ) -> [u64; 4] {
        let w0 = EvtWord0::new().with_kind(kind.0).with_streamid(sid);
        let w1 = EvtWord1::new()
            .with_rnw(read)
            .with_s2(stage2)
            .with_class(class & 3);
        [w0.into_bits(), w1.into_bits(), iova, ipa & EVT3_IPA_MASK]
    }
}

/// `SMMU event F_TRANSLATION sid 0x10 iova 0x… ipa 0x… read stage-2`.
impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SMMU event {} sid {:#x}", self.kind.name(), self.sid)?;
        if let Some(ssid) = self.ssid {
            write!(f, " ssid {ssid:#x}")?;
        }
        if self.kind.is_translation_fault() {
            let class = match self.class {
                CLASS_CD => " (CD fetch)",
                CLASS_TT => " (table walk)",
                _ => "",
            };
            write!(
                f,
                " iova {:#x} ipa {:#x} {} stage-{}{class}",
                self.input_addr,
                self.ipa,
                if self.read { "read" } else { "write" },
                if self.stage2 { 2 } else { 1 },
            )?;
        } else if self.kind == EventType::F_STE_FETCH || self.kind == EventType::F_CD_FETCH {
            write!(f, " fetch {:#x}", self.input_addr)?;
        } else if self.kind.name() == "UNKNOWN" {
            write!(f, " type {:#x} raw {:x?}", self.kind.0, self.raw)?;
        }
        Ok(())
    }
}

/// What one [`Smmu::poll_events`] found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventPoll {
    /// Events handed to the callback.
    pub events: u32,
    /// Events were lost: the queue overflowed (`EVENTQ_PROD.OVFLG`) or its writes failed
    /// (`GERROR.EVTQ_ABT_ERR`, which QEMU also raises for a full queue).
    pub overflow: bool,
    /// Other global errors seen and acknowledged (`GERROR` bits, `CMDQ_ERR` excluded:
    /// `sync` handles it).
    pub gerror: u32,
}

/// The consumer's view of the event queue.
#[derive(Debug)]
pub(super) struct EvtQueue {
    pub(super) q: super::Region,
    pub(super) log2: u32,
    /// `EVENTQ_CONS` (index, wrap bit, OVACKFLG) as last written.
    pub(super) cons: u32,
}

impl<I: SmmuIo, M: TableMemory + ?Sized> Smmu<I, M> {
    /// Drains the event queue, handing every record to `f`, and reports overflows and
    /// global errors (acknowledging them). Call it from the event-queue / GERROR
    /// interrupt or periodically.
    pub fn poll_events(&mut self, mem: &mut M, mut f: impl FnMut(Event)) -> EventPoll {
        let mut out = EventPoll::default();
        let active = (self.io.read32(GERROR) ^ self.io.read32(GERRORN))
            & GERROR_ALL
            & !GERROR::CMDQ_ERR::SET.value;
        if active != 0 {
            out.gerror = active;
            self.stats.gerrors += 1;
            if GERROR::EVENTQ_ABT_ERR.is_set(active) {
                out.overflow = true;
            }
            if GERROR::SFM_ERR.is_set(active) {
                log::error!("SMMU service failure mode (GERROR {active:#x})");
            }
            let gerrorn = self.io.read32(GERRORN);
            self.io.write32(GERRORN, gerrorn ^ active);
        }
        let n = 1u32 << self.evtq.log2;
        let idx_mask = (2 * n) - 1;
        // At most two laps: the SMMU keeps writing while we read.
        'outer: for _ in 0..2 {
            let prod = self.io.read32(EVENTQ_PROD);
            if EVENTQ_PROD::OVFLG.is_set(prod) != EVENTQ_CONS::OVACKFLG.is_set(self.evtq.cons) {
                out.overflow = true;
                self.evtq.cons ^= EVENTQ_CONS::OVACKFLG::SET.value;
            }
            let target = prod & idx_mask;
            let mut cons = self.evtq.cons & idx_mask;
            if (target.wrapping_sub(cons) & idx_mask) > n {
                // Not a position the SMMU can be at: resynchronise, reporting a loss.
                out.overflow = true;
                cons = target;
            }
            if cons == target {
                self.evtq.cons = (self.evtq.cons & !idx_mask) | cons;
                break 'outer;
            }
            while cons != target {
                let off = ((cons & (n - 1)) as usize) * 32;
                if !self.coherent {
                    // The SMMU wrote memory behind the cache: invalidate first.
                    mem.clean(crate::addr::PhysAddr(self.evtq.q.pa.0 + off as u64), 32);
                }
                let mut raw = [0u64; 4];
                self.evtq.q.read(mem, off, &mut raw);
                f(Event::decode(raw));
                out.events += 1;
                cons = (cons + 1) & idx_mask;
            }
            self.evtq.cons = (self.evtq.cons & !idx_mask) | cons;
            self.io.write32(EVENTQ_CONS, self.evtq.cons);
        }
        if out.overflow {
            self.stats.event_overflows += 1;
            self.io.write32(EVENTQ_CONS, self.evtq.cons);
        }
        self.stats.events += u64::from(out.events);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    /// A record laid out as QEMU.md describes it in 32-bit words: 0 type, 1 SID, 3 flags
    /// (RnW bit 3, S2 bit 7, CLASS 9:8), 4-5 input address, 6-7 IPA.
    #[test]
    fn decodes_qemu_layout() {
        let w32: [u32; 8] = [
            0x10,
            0x10,
            0,
            (1 << 3) | (1 << 7) | (2 << 8),
            0x4000_3000,
            0x1,
            0x4000_3000,
            0x1,
        ];
        let raw =
            core::array::from_fn(|i| u64::from(w32[2 * i]) | (u64::from(w32[2 * i + 1]) << 32));
        let e = Event::decode(raw);
        assert_eq!(e.kind, EventType::F_TRANSLATION);
        assert_eq!(e.sid, 0x10);
        assert_eq!(e.ssid, None);
        assert!(e.read && e.stage2);
        assert_eq!(e.class, CLASS_IN);
        assert_eq!(e.input_addr, 0x1_4000_3000);
        assert_eq!(e.ipa, 0x1_4000_3000);
        assert_eq!(
            e.to_string(),
            "SMMU event F_TRANSLATION sid 0x10 iova 0x140003000 ipa 0x140003000 read stage-2"
        );
        let w = Event::decode(Event::encode_fault(
            EventType::F_PERMISSION,
            3,
            0x2000,
            0x2000,
            false,
            true,
            CLASS_IN,
        ));
        assert_eq!(
            w.to_string(),
            "SMMU event F_PERMISSION sid 0x3 iova 0x2000 ipa 0x2000 write stage-2"
        );
        let b = Event::decode([0x04 | (7 << 32) | (1 << 11) | (5 << 12), 0, 0, 0]);
        assert_eq!(b.to_string(), "SMMU event C_BAD_STE sid 0x7 ssid 0x5");
        assert_eq!(Event::decode([0x77, 0, 0, 0]).kind.name(), "UNKNOWN");
    }
}
