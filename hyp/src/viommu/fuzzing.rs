//! The virtio-iommu fuzz harness: one input (arbitrary bytes) is decoded into a device
//! configuration and a sequence of host actions — raw MMIO accesses of any offset, width
//! and value, arbitrary bytes written over the rings and buffers, well-formed bring-ups
//! and requests (so that inputs get deep), hand-made descriptor chains, kicks, resets,
//! pages taken away from the host, fault reports — run against one [`Device`] over a RAM
//! arena. The same [`run`] serves the coverage-guided `cargo fuzz` target
//! (`hyp/fuzz/fuzz_targets/viommu.rs`) and, on the stable toolchain, the smoke test that
//! replays the checked-in corpus (`hyp/fuzz/corpus/viommu/`) and generated inputs
//! (`cargo test -p hyp --lib viommu::fuzzing`).
//!
//! Checked on every backend call (the backend only ever sees decoded, range-checked
//! values): the domain is inside `domain_range`; IOVA ranges are ordered and inside
//! `input_range`; MAPs are granule-aligned (start, end + 1, phys), their physical end does
//! not wrap, their flags are known and MMIO only when negotiated; ATTACH's bypass only
//! when `BYPASS_CONFIG` is negotiated; requests only while the device is live. After every
//! action: a device that was in `DEVICE_NEEDS_RESET` called the backend for nothing but a
//! reset; a kick that moved the published used index called `end_of_kick` exactly once,
//! before the index moved, and published at most a queue's worth; a kick calls
//! `end_of_kick` at most once. Panics and hangs are findings by themselves.

use super::regs::*;
use super::req::{DomainId, EndpointId, IovaRange, MapFlags, ResvKind, ResvRegion, ResvRegions};
use super::*;
use crate::addr::Iova;
use crate::testutil::Ram;
use std::format;
use std::rc::Rc;
use std::string::String;
use std::vec::Vec;

/// The cargo-fuzz target's name (and its corpus directory's).
pub const TARGET: &str = "viommu";

/// Most actions one input makes.
const MAX_OPS: usize = 200;
/// The arena: rings at fixed places, buffers after them.
const RAM: u64 = 0x4000_0000;
const RAM_LEN: usize = 0x2_0000;
/// Where the well-formed bring-up puts each queue's descriptor table, available and used
/// rings.
const RINGS: [[u64; 3]; 2] = [
    [RAM + 0x1000, RAM + 0x2000, RAM + 0x3000],
    [RAM + 0x4000, RAM + 0x5000, RAM + 0x6000],
];
/// Buffers, handed out round-robin.
const BUF0: u64 = RAM + 0x8000;
const BUF_END: u64 = RAM + RAM_LEN as u64;

pub use crate::fuzzing::Finding;
use crate::fuzzing::{Input, fail};

/// Host memory: the arena minus an optional range the host gave away.
struct Mem {
    ram: Rc<Ram>,
    deny: Option<(u64, u64)>,
}

impl GuestMem for Mem {
    fn read(&mut self, ipa: Ipa, buf: &mut [u8]) -> Result<(), MemFault> {
        self.check(ipa.0, buf.len())?;
        self.ram.read_bytes(ipa.0, buf);
        Ok(())
    }
    fn write(&mut self, ipa: Ipa, data: &[u8]) -> Result<(), MemFault> {
        self.check(ipa.0, data.len())?;
        self.ram.write_bytes(ipa.0, data);
        Ok(())
    }
}

impl Mem {
    fn check(&self, a: u64, len: usize) -> Result<(), MemFault> {
        let end = a.checked_add(len as u64).ok_or(MemFault)?;
        if !self.ram.contains(a, len) {
            return Err(MemFault);
        }
        match self.deny {
            Some((s, e)) if a < e && end > s => Err(MemFault),
            _ => Ok(()),
        }
    }
}

/// A backend that checks every call against what the device may pass on, and fails some
/// calls on purpose.
struct Checker {
    cfg: Config,
    ram: Rc<Ram>,
    /// Snapshot, before each action: the negotiated features, whether the device is live,
    /// and where its request queue's used index is.
    features: u64,
    live: bool,
    used_idx_at: Option<u64>,
    /// Calls during the current action: (is a request/end_of_kick, name).
    calls: Vec<&'static str>,
    /// The used index seen at each `end_of_kick` of this action.
    ends: Vec<u16>,
    violation: Option<String>,
    seed: u32,
    fail_end: bool,
}

impl Checker {
    fn violate(&mut self, what: String) {
        if self.violation.is_none() {
            self.violation = Some(what);
        }
    }

    /// A request arrived: it must be a live device's.
    fn request(&mut self, name: &'static str) -> Result<(), BackendError> {
        self.calls.push(name);
        if !self.live {
            self.violate(format!("{name} while the device is not live"));
        }
        self.seed = self.seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
        match (self.seed >> 16) % 11 {
            0 => Err(BackendError::Invalid),
            1 => Err(BackendError::NoEnt),
            2 => Err(BackendError::NoMem),
            _ => Ok(()),
        }
    }

    fn domain(&mut self, d: DomainId) {
        if d.0 < self.cfg.domain_start || d.0 > self.cfg.domain_end {
            self.violate(format!("domain {} outside the range", d.0));
        }
    }

    fn range(&mut self, v: IovaRange) {
        if v.start > v.end || v.start.0 < self.cfg.input_start || v.end.0 > self.cfg.input_end {
            self.violate(format!(
                "IOVA range {v:?} not ordered or outside the input range"
            ));
        }
    }
}

impl Backend for Checker {
    fn attach(&mut self, d: DomainId, _e: EndpointId, bypass: bool) -> Result<(), BackendError> {
        self.domain(d);
        if bypass && self.features & F_BYPASS_CONFIG == 0 {
            self.violate(String::from("ATTACH bypass without BYPASS_CONFIG"));
        }
        self.request("attach")
    }
    fn detach(&mut self, d: DomainId, _e: EndpointId) -> Result<(), BackendError> {
        self.domain(d);
        self.request("detach")
    }
    fn map(&mut self, d: DomainId, v: IovaRange, p: Ipa, f: MapFlags) -> Result<(), BackendError> {
        self.domain(d);
        self.range(v);
        let g = self.cfg.granule();
        if !v.start.0.is_multiple_of(g)
            || !v.end.0.wrapping_add(1).is_multiple_of(g)
            || !p.0.is_multiple_of(g)
        {
            self.violate(format!("MAP {v:?} -> {p:?} not aligned"));
        }
        if v.start <= v.end && p.0.checked_add(v.end.0 - v.start.0).is_none() {
            self.violate(format!("MAP {v:?} -> {p:?} wraps"));
        }
        let mut known = MAP_F_READ | MAP_F_WRITE;
        if self.features & F_MMIO != 0 {
            known |= MAP_F_MMIO;
        }
        if f.0 & !known != 0 {
            self.violate(format!("MAP flags {:#x}", f.0));
        }
        self.request("map")
    }
    fn unmap(&mut self, d: DomainId, v: IovaRange) -> Result<(), BackendError> {
        self.domain(d);
        self.range(v);
        self.request("unmap")
    }
    fn probe(&mut self, _e: EndpointId) -> Result<ResvRegions, BackendError> {
        if self.features & F_PROBE == 0 {
            self.violate(String::from("PROBE without F_PROBE"));
        }
        self.request("probe")?;
        let mut r = ResvRegions::default();
        for i in 0..u64::from(self.seed % 10) {
            let _ = r.push(ResvRegion {
                kind: if i == 0 {
                    ResvKind::Msi
                } else {
                    ResvKind::Reserved
                },
                start: i << 20,
                end: (i << 20) | 0xfffff,
            });
        }
        Ok(r)
    }
    fn end_of_kick(&mut self) -> Result<(), BackendError> {
        self.calls.push("end_of_kick");
        let mut b = [0u8; 2];
        if let Some(a) = self.used_idx_at {
            self.ram.read_bytes(a, &mut b);
        }
        self.ends.push(u16::from_le_bytes(b));
        if self.fail_end {
            Err(BackendError::Device)
        } else {
            Ok(())
        }
    }
    fn set_unattached(&mut self, _p: Unattached) {}
    fn reset(&mut self) {
        self.calls.push("reset");
    }
}

#[derive(Default)]
struct Irqs(u64);

impl Irq for Irqs {
    fn raise(&mut self) {
        self.0 += 1;
    }
}

/// The world of one input.
struct World {
    dev: Device,
    mem: Mem,
    be: Checker,
    irq: Irqs,
    /// The driver's avail index and next descriptor per queue (of the layout it last
    /// programmed itself).
    avail_idx: [u16; 2],
    next_desc: [u16; 2],
    buf: u64,
}

impl World {
    fn access(&mut self, a: Access) -> Result<u64, Abort> {
        self.dev.mmio(a, &mut self.mem, &mut self.be, &mut self.irq)
    }

    fn wr(&mut self, off: u64, v: u32) {
        let _ = self.access(Access::write(off, 4, u64::from(v)));
    }

    fn alloc(&mut self, len: u64) -> u64 {
        let len = len.min(0x1000);
        if self.buf + len > BUF_END {
            self.buf = BUF0;
        }
        let a = self.buf;
        self.buf = (a + len).next_multiple_of(8);
        a
    }

    fn bring_up(&mut self, inp: &mut Input) {
        let sel = inp.u8();
        let wanted =
            F_VERSION_1 | F_INPUT_RANGE | F_DOMAIN_RANGE | F_MAP_UNMAP | F_PROBE | F_BYPASS_CONFIG;
        let features = match sel % 8 {
            0..=4 => wanted,
            5 => wanted | F_MMIO,
            6 => wanted & !(1 << (inp.u8() % 8)),
            _ => inp.u64(),
        };
        self.wr(STATUS, 0);
        self.wr(STATUS, S_ACKNOWLEDGE | S_DRIVER);
        self.wr(DRIVER_FEATURES_SEL, 1);
        self.wr(DRIVER_FEATURES, (features >> 32) as u32);
        self.wr(DRIVER_FEATURES_SEL, 0);
        self.wr(DRIVER_FEATURES, features as u32);
        self.wr(STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
        let num = 1u32 << (inp.u8() % 9);
        for (q, r) in RINGS.iter().enumerate() {
            self.wr(QUEUE_SEL, q as u32);
            let num = if q == mmio::EVENTQ {
                num.min(mmio::EVENTQ_MAX)
            } else {
                num
            };
            self.wr(QUEUE_NUM, num);
            self.wr(QUEUE_DESC_LOW, r[0] as u32);
            self.wr(QUEUE_DESC_HIGH, 0);
            self.wr(QUEUE_DRIVER_LOW, r[1] as u32);
            self.wr(QUEUE_DRIVER_HIGH, 0);
            self.wr(QUEUE_DEVICE_LOW, r[2] as u32);
            self.wr(QUEUE_DEVICE_HIGH, 0);
            self.wr(QUEUE_READY, 1);
            self.avail_idx[q] = 0;
            self.next_desc[q] = 0;
            self.mem.ram.zero(r[1], 0x1000);
            self.mem.ram.zero(r[2], 0x1000);
        }
        if sel & 0x80 == 0 {
            self.wr(
                STATUS,
                S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK,
            );
        }
    }

    /// The queue as the device has it, if its rings are inside the arena.
    fn vq(&self, q: usize) -> Option<Vq> {
        let v = *self.dev.queue(q)?;
        let n = u64::from(v.num);
        let inside = |a: u64, len: u64| self.mem.ram.contains(a, len as usize);
        (v.num != 0
            && v.num <= 0x1000
            && inside(v.desc, 16 * n)
            && inside(v.avail, 4 + 2 * n)
            && inside(v.used, 4 + 8 * n))
        .then_some(v)
    }

    /// Posts a chain of `(addr, len, flags)`; `next` links are made unless the input asks
    /// for a raw one.
    fn post(&mut self, q: usize, bufs: &[(u64, u32, u16)], raw_next: Option<u16>) {
        let Some(v) = self.vq(q) else { return };
        let num = v.num as u16;
        let head = self.next_desc[q] % num;
        for (k, &(addr, len, flags)) in bufs.iter().enumerate() {
            let i = (head + k as u16) % num;
            let last = k + 1 == bufs.len();
            let next = raw_next.unwrap_or((i + 1) % num);
            let flags = if last { flags } else { flags | DESC_F_NEXT };
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&addr.to_le_bytes());
            b[8..12].copy_from_slice(&len.to_le_bytes());
            b[12..14].copy_from_slice(&flags.to_le_bytes());
            b[14..].copy_from_slice(&next.to_le_bytes());
            self.mem.ram.write_bytes(v.desc + 16 * u64::from(i), &b);
        }
        self.next_desc[q] = head.wrapping_add(bufs.len() as u16) % num;
        let idx = self.avail_idx[q];
        let slot = u64::from(idx % num);
        self.mem
            .ram
            .write_bytes(v.avail + 4 + 2 * slot, &head.to_le_bytes());
        self.avail_idx[q] = idx.wrapping_add(1);
        self.mem
            .ram
            .write_bytes(v.avail + 2, &self.avail_idx[q].to_le_bytes());
    }

    fn request(&mut self, inp: &mut Input) {
        let ty = inp.u8();
        let mut b = [0u8; PROBE_SIZE];
        b[0] = match ty % 8 {
            0 | 1 => T_MAP,
            2 => T_UNMAP,
            3 => T_ATTACH,
            4 => T_DETACH,
            5 => T_PROBE,
            6 => inp.u8(),
            _ => T_UNMAP,
        };
        // Domain or endpoint, small mostly.
        let d = match inp.u8() {
            0..=200 => u32::from(inp.u8() % 8),
            _ => inp.u32(),
        };
        b[4..8].copy_from_slice(&d.to_le_bytes());
        let sel = inp.u8();
        let (start, end) = match sel % 4 {
            0 | 1 => {
                let s = u64::from(inp.u8()) << 12;
                (s, s + (u64::from(inp.u8() % 16 + 1) << 12) - 1)
            }
            2 => (u64::from(inp.u16()) << 4, u64::from(inp.u16()) << 8),
            _ => (inp.u64(), inp.u64()),
        };
        let phys = match sel >> 6 {
            0 | 1 => RAM + (u64::from(inp.u8()) << 12),
            2 => !0xfff,
            _ => inp.u64(),
        };
        match b[0] {
            T_ATTACH | T_DETACH => {
                b[8..12].copy_from_slice(&inp.u32().to_le_bytes());
                let flags = match inp.u8() % 4 {
                    0 | 1 => 0,
                    2 => ATTACH_F_BYPASS,
                    _ => inp.u32(),
                };
                b[12..16].copy_from_slice(&flags.to_le_bytes());
            }
            T_MAP | T_UNMAP => {
                b[8..16].copy_from_slice(&start.to_le_bytes());
                b[16..24].copy_from_slice(&end.to_le_bytes());
                b[24..32].copy_from_slice(&phys.to_le_bytes());
                let flags = match inp.u8() % 4 {
                    0 | 1 => MAP_F_READ | MAP_F_WRITE,
                    2 => MAP_F_WRITE | MAP_F_MMIO,
                    _ => inp.u32(),
                };
                b[32..36].copy_from_slice(&flags.to_le_bytes());
            }
            _ => {}
        }
        let size = match b[0] {
            T_ATTACH => ATTACH_SIZE,
            T_DETACH => DETACH_SIZE,
            T_MAP => MAP_SIZE,
            T_UNMAP => UNMAP_SIZE,
            _ => PROBE_SIZE,
        };
        let shape = inp.u8();
        let rlen = match shape % 16 {
            0 => usize::from(inp.u8()) % (PROBE_SIZE + 1),
            _ => size,
        };
        let wlen = match (b[0], shape >> 4) {
            (T_PROBE, 0..=14) => req::WRITE_MAX as u32,
            (_, 0..=14) => 4,
            _ if shape & 1 == 0 => u32::from(inp.u8()),
            _ => inp.u16().into(),
        };
        let r = self.alloc(rlen as u64);
        self.mem.ram.write_bytes(r, &b[..rlen.min(PROBE_SIZE)]);
        let w = self.alloc(u64::from(wlen));
        if shape & 6 == 6 && rlen > 4 {
            // Split the readable part.
            let cut = (usize::from(inp.u8()) % (rlen - 1)) + 1;
            self.post(
                0,
                &[
                    (r, cut as u32, 0),
                    (r + cut as u64, (rlen - cut) as u32, 0),
                    (w, wlen, DESC_F_WRITE),
                ],
                None,
            );
        } else {
            self.post(0, &[(r, rlen as u32, 0), (w, wlen, DESC_F_WRITE)], None);
        }
    }

    fn raw_chain(&mut self, inp: &mut Input) {
        let q = usize::from(inp.u8() & 1);
        let n = 1 + usize::from(inp.u8() % 12);
        let mut bufs = Vec::new();
        for _ in 0..n {
            let addr = match inp.u8() % 4 {
                0..=2 => BUF0 + (u64::from(inp.u16()) % 0x7000),
                _ => inp.u64(),
            };
            let len = match inp.u8() % 4 {
                0 | 1 => u32::from(inp.u8()),
                2 => 4,
                _ => inp.u32(),
            };
            let flags = u16::from(inp.u8() & 7);
            bufs.push((addr, len, flags));
        }
        let raw_next = (inp.u8() & 3 == 0).then(|| inp.u16());
        self.post(q, &bufs, raw_next);
    }

    fn fault(&mut self, inp: &mut Input) {
        let r = inp.u8();
        let f = Fault {
            reason: [
                FaultReason::Unknown,
                FaultReason::Domain,
                FaultReason::Mapping,
            ][usize::from(r % 3)],
            endpoint: EndpointId(inp.u32()),
            read: r & 8 != 0,
            write: r & 16 != 0,
            exec: r & 32 != 0,
            address: (r & 64 != 0).then(|| Iova(inp.u64())),
        };
        let _ = self.dev.report_fault(&f, &mut self.mem, &mut self.irq);
    }

    fn event_buffers(&mut self, inp: &mut Input) {
        for _ in 0..1 + inp.u8() % 4 {
            let b = self.alloc(FAULT_SIZE as u64);
            self.post(1, &[(b, FAULT_SIZE as u32, DESC_F_WRITE)], None);
        }
    }

    fn raw_access(&mut self, inp: &mut Input) {
        const OFFS: [u64; 24] = [
            MAGIC_VALUE,
            DEVICE_FEATURES,
            DEVICE_FEATURES_SEL,
            DRIVER_FEATURES,
            DRIVER_FEATURES_SEL,
            QUEUE_SEL,
            QUEUE_NUM_MAX,
            QUEUE_NUM,
            QUEUE_READY,
            QUEUE_NOTIFY,
            INTERRUPT_STATUS,
            INTERRUPT_ACK,
            STATUS,
            QUEUE_DESC_LOW,
            QUEUE_DESC_HIGH,
            QUEUE_DRIVER_LOW,
            QUEUE_DEVICE_LOW,
            SHM_SEL,
            SHM_LEN_LOW,
            QUEUE_RESET,
            CONFIG_GENERATION,
            CONFIG + CFG_BYPASS,
            CONFIG + CFG_PAGE_SIZE_MASK,
            CONFIG + CFG_INPUT_END,
        ];
        let sel = inp.u8();
        let off = if sel < 200 {
            OFFS[usize::from(sel) % OFFS.len()]
        } else {
            u64::from(inp.u16())
        };
        let width = [4, 4, 4, 1, 2, 8, 3, 4][usize::from(inp.u8() % 8)];
        let write = inp.u8() & 1 != 0;
        let value = match inp.u8() % 4 {
            0 => u64::from(inp.u8()),
            1 => RINGS[0][0] + u64::from(inp.u16()),
            2 => u64::from(inp.u32()),
            _ => inp.u64(),
        };
        let _ = self.access(Access {
            off,
            width,
            write,
            value,
        });
    }

    fn scribble(&mut self, inp: &mut Input) {
        let at = match inp.u8() % 4 {
            0 => RINGS[usize::from(inp.u8() & 1)][usize::from(inp.u8() % 3)] + u64::from(inp.u8()),
            1 => BUF0 + u64::from(inp.u16()) % 0x7000,
            _ => RAM + u64::from(inp.u16()) % 0x8000,
        };
        let n = usize::from(inp.u8() % 24);
        let bytes: Vec<u8> = (0..n).map(|_| inp.u8()).collect();
        if self.mem.ram.contains(at, n) {
            self.mem.ram.write_bytes(at, &bytes);
        }
    }
}

impl World {
    /// Snapshots what the checker must know, before the device is called.
    fn snapshot(&mut self) {
        self.be.features = self.dev.features();
        self.be.live = self.dev.driver_ok() && !self.dev.needs_reset();
        self.be.used_idx_at = self.vq(0).map(|v| v.used + USED_IDX);
        self.be.calls.clear();
        self.be.ends.clear();
    }

    fn check_calls(&mut self, step: usize, was_needs_reset: bool) -> Result<(), Finding> {
        if let Some(v) = self.be.violation.take() {
            fail!("step {step}: {v}");
        }
        let before_reset = self.be.calls.iter().take_while(|&&c| c != "reset").count();
        if was_needs_reset && before_reset != 0 {
            fail!(
                "step {step}: backend called in DEVICE_NEEDS_RESET: {:?}",
                self.be.calls
            );
        }
        Ok(())
    }

    fn used_idx(&self, v: Option<Vq>) -> Option<u16> {
        v.map(|v| {
            let mut b = [0u8; 2];
            self.mem.ram.read_bytes(v.used + USED_IDX, &mut b);
            u16::from_le_bytes(b)
        })
    }

    /// One action of the input; `true` if a kick of the request queue should follow.
    fn act(&mut self, inp: &mut Input) -> Result<bool, Finding> {
        let was_needs_reset = self.dev.needs_reset();
        self.snapshot();
        let step = inp.pos;
        let op = inp.u8();
        let kick = match op % 16 {
            0 => {
                self.raw_access(inp);
                false
            }
            1 | 14 => {
                self.bring_up(inp);
                false
            }
            2..=7 | 15 => {
                self.request(inp);
                inp.u8() & 3 != 0
            }
            8 => {
                self.raw_chain(inp);
                true
            }
            9 => true,
            10 => {
                self.event_buffers(inp);
                self.fault(inp);
                false
            }
            11 => {
                self.scribble(inp);
                false
            }
            12 => {
                let a = RAM + (u64::from(inp.u16()) << 4) % RAM_LEN as u64;
                self.mem.deny = (inp.u8() & 1 == 0).then_some((a, a + 0x100));
                false
            }
            _ => {
                if inp.u8() & 3 == 0 {
                    self.wr(STATUS, 0);
                } else {
                    self.fault(inp);
                }
                false
            }
        };
        self.check_calls(step, was_needs_reset)?;
        Ok(kick)
    }

    /// Notifies the request queue and checks what the kick did.
    fn kick(&mut self, step: usize) -> Result<(), Finding> {
        let was_needs_reset = self.dev.needs_reset();
        self.snapshot();
        let rq = self.vq(0);
        let before = self.used_idx(rq);
        let shadow = self.dev.queue(0).map(|v| v.used_idx);
        self.wr(QUEUE_NOTIFY, 0);
        self.check_calls(step, was_needs_reset)?;
        let ends = self
            .be
            .calls
            .iter()
            .filter(|&&c| c == "end_of_kick")
            .count();
        if ends > 1 {
            fail!("step {step}: {ends} end_of_kick in one kick");
        }
        if let (Some(b), Some(a)) = (before, self.used_idx(rq))
            && a != b
            && self.be.ends != [b]
        {
            fail!(
                "step {step}: used index {b} -> {a}, end_of_kick saw {:?}",
                self.be.ends
            );
        }
        // The host may scribble over the used index; the device's own count is what a
        // kick may advance by at most a queue's worth.
        if let (Some(b), Some(v)) = (shadow, rq) {
            let a = self.dev.queue(0).map_or(b, |q| q.used_idx);
            if u32::from(a.wrapping_sub(b)) > v.num {
                fail!(
                    "step {step}: {} used entries in one kick, queue of {}",
                    a.wrapping_sub(b),
                    v.num
                );
            }
        }
        Ok(())
    }
}

/// Runs one input; `Err` on a broken invariant.
pub fn run(data: &[u8]) -> Result<(), Finding> {
    run_stats(data).map(|_| ())
}

/// As [`run`], returning the device's counters at the end.
fn run_stats(data: &[u8]) -> Result<Stats, Finding> {
    let mut inp = Input { data, pos: 0 };
    let setup = inp.u8();
    let cfg = Config {
        mmio_maps: setup & 1 != 0,
        bypass: setup & 2 != 0,
        input_start: if setup & 4 != 0 { 0x1000 } else { 0 },
        input_end: if setup & 8 != 0 {
            (1 << 32) - 1
        } else {
            (1 << 48) - 1
        },
        domain_start: u32::from(setup >> 6),
        domain_end: if setup & 16 != 0 { 7 } else { u32::MAX },
        ..Config::default()
    };
    let ram = Rc::new(Ram::new(RAM, RAM_LEN));
    let mut w = World {
        dev: Device::new(cfg),
        mem: Mem {
            ram: ram.clone(),
            deny: None,
        },
        be: Checker {
            cfg,
            ram,
            features: 0,
            live: false,
            used_idx_at: None,
            calls: Vec::new(),
            ends: Vec::new(),
            violation: None,
            seed: u32::from(setup),
            fail_end: setup & 0x3f == 0x31,
        },
        irq: Irqs::default(),
        avail_idx: [0; 2],
        next_desc: [0; 2],
        buf: BUF0,
    };
    for _ in 0..MAX_OPS {
        if inp.done() {
            break;
        }
        let kick = w.act(&mut inp)?;
        if kick {
            w.kick(inp.pos)?;
        }
    }
    Ok(*w.dev.stats())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzzing::generate;
    use crate::fuzzing::tests::{corpus_of, replay_env, smoke_count};

    /// The checked-in corpus replays clean.
    #[test]
    fn corpus_replays_clean() {
        let c = corpus_of(TARGET);
        assert!(!c.is_empty(), "empty corpus");
        for (p, data) in c {
            if let Err(e) = run(&data) {
                panic!("{}: {}", p.display(), e.0);
            }
        }
    }

    /// Replays the files named by `WARDEN_FUZZ_REPLAY` (colon-separated), for debugging.
    #[test]
    fn replay() {
        replay_env(run);
    }

    /// Generated inputs (`WARDEN_FUZZ_SMOKE` sets how many): run by the `fuzz-smoke` step
    /// of `cargo xtask test` (its filter `fuzzing::` matches this module too).
    #[test]
    #[ignore = "the fuzz-smoke step runs it"]
    fn generated_inputs_run_clean() {
        for seed in 0..smoke_count() {
            let data = generate(seed ^ 0x5649_4f4d, 16 + (seed as usize * 13) % 600);
            if let Err(e) = run(&data) {
                panic!("seed {seed}: {}", e.0);
            }
        }
    }

    /// Generated inputs get deep: requests served, queues found malformed, events
    /// delivered and dropped, resets.
    #[test]
    fn generated_inputs_get_deep() {
        let mut total = Stats::default();
        for seed in 0..400u64 {
            let data = generate(seed ^ 0x5649_4f4d, 16 + (seed as usize * 13) % 600);
            let s = run_stats(&data).unwrap_or_else(|e| panic!("seed {seed}: {}", e.0));
            total.requests += s.requests;
            total.kicks += s.kicks;
            total.needs_reset += s.needs_reset;
            total.events += s.events;
            total.events_dropped += s.events_dropped;
            total.resets += s.resets;
        }
        std::println!("{total:?}");
        assert!(total.requests > 300, "{total:?}");
        assert!(total.needs_reset > 40, "{total:?}");
        assert!(total.events > 20 && total.events_dropped > 20, "{total:?}");
        assert!(total.resets > 100, "{total:?}");
    }

    /// The checks are not vacuous: a backend call while not live is a finding.
    #[test]
    fn checker_sees_a_call_while_not_live() {
        let cfg = Config::default();
        let ram = Rc::new(Ram::new(RAM, RAM_LEN));
        let mut c = Checker {
            cfg,
            ram,
            features: 0,
            live: false,
            used_idx_at: None,
            calls: Vec::new(),
            ends: Vec::new(),
            violation: None,
            seed: 0,
            fail_end: false,
        };
        let _ = c.detach(DomainId(0), EndpointId(0));
        let v = c.violation.take().unwrap();
        assert!(v.contains("domain 0"), "{v}");
        c.live = true;
        let _ = c.map(
            DomainId(1),
            IovaRange {
                start: Iova(0x1000),
                end: Iova(0x1800),
            },
            Ipa(0),
            MapFlags(MAP_F_MMIO),
        );
        assert!(c.violation.unwrap().contains("aligned"));
    }
}
