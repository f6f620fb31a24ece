//! The virtio-iommu device Warden emulates for the host (DESIGN.md, "The virtio-iommu
//! front-end"): a virtio-mmio version 2 transport ([`mmio`]), two split virtqueues in host
//! memory ([`queue`]), the requests ([`req`]) served synchronously on QueueNotify through
//! a [`Backend`] (the domain core), and fault reports on the event queue ([`event`]).
//!
//! [`Device`] owns the state and glues the parts; everything outside Warden goes through
//! seams so that it runs in `cargo test` and under the fuzzer: host memory by IPA
//! ([`GuestMem`], fallible: the implementation checks the pages are the host's), the
//! domain core ([`Backend`]) and the node's interrupt ([`Irq`]). Not wired into the trap
//! path, the DTB or the DMA core yet.
//!
//! Features offered: `VERSION_1`, `INPUT_RANGE`, `DOMAIN_RANGE`, `MAP_UNMAP`, `PROBE`,
//! `BYPASS_CONFIG` (what Linux 6.12's driver asks for; it requires `VERSION_1` and
//! `MAP_UNMAP`), and `MMIO` when [`Config::mmio_maps`] says the backend maps device
//! memory. Not offered:
//!
//! - `ACCESS_PLATFORM`: the device's own accesses (rings, requests) are Warden's reads of
//!   host IPAs through its ownership checks, not DMA behind an IOMMU, so the driver must
//!   hand it untranslated addresses — which is what a driver does without the feature (no
//!   DMA API, no bounce buffers for the rings).
//! - `ORDER_PLATFORM`: Warden reads the rings on a CPU, in the host's inner-shareable
//!   domain, after the trap of the driver's notification; the driver's SMP barriers are
//!   enough.
//! - `INDIRECT_DESC`, `EVENT_IDX`, `RING_PACKED`, `IN_ORDER`, `NOTIFICATION_DATA`,
//!   `RING_RESET`: not implemented (an indirect descriptor is a malformed queue).
//! - `BYPASS`: superseded by `BYPASS_CONFIG`, which must not be offered with it.
//!
//! Unattached endpoints ([`Device::unattached`]): identity until the driver sets
//! DRIVER_OK (a kernel without the driver keeps working), blocked afterwards unless
//! `bypass` is set; the backend hears of every change ([`Backend::set_unattached`]).
//!
//! A kick serves at most a queue's worth of requests, calls [`Backend::end_of_kick`] once
//! (the one invalidation for all its UNMAPs) and only then publishes the used index. A
//! malformed queue ([`queue::Malformed`]) sets `DEVICE_NEEDS_RESET` with a
//! configuration-change interrupt, and the device serves nothing more (and calls the
//! backend for nothing but a reset) until the driver resets it; what the kick had served
//! before is still completed and published.
//!
//! A request's framing is checked before its contents: a chain without a readable head
//! (at least 4 bytes), without a writable tail (at least 4 bytes), or with more writable
//! bytes than the largest reply ([`req::WRITE_MAX`]) is malformed. Within that frame, bad
//! contents get a status in the tail (see [`req`]).

//!
//! Wiring it (the next increment): a stage-2 data abort with ISV in the node's window
//! becomes one [`Access`] (SAS → width, WnR → write, SRT → the value); an abort without
//! ISV, or an [`Abort`], becomes an external abort for the host. [`GuestMem`] is the host
//! stage-2 view with the host-ownership check; [`Backend`] maps the driver's domain IDs to
//! Warden domains of the DMA core (ATTACH with bypass → domain 0), UNMAPs batched until
//! `end_of_kick`; [`Irq`] sets the node's SPI pending at the distributor.

pub mod event;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod mmio;
pub mod queue;
pub mod regs;
pub mod req;
#[cfg(test)]
mod tests;

pub use event::{Delivery, Fault, FaultReason, Irq};
pub use mmio::{Abort, Access};
pub use req::{Backend, BackendError, Unattached};

use crate::addr::Ipa;
use mmio::{EVENTQ, Effect, REQUESTQ, Regs};
use queue::{Malformed, Vq};
use regs::{AVAIL_F_NO_INTERRUPT, FAULT_SIZE, HEAD_SIZE, INT_VRING, TAIL_SIZE};
use req::{Reply, WRITE_MAX};

/// Host memory the device may read and write, by IPA. Both directions take `&mut self`:
/// an implementation may map host pages into Warden's address space on demand.
pub trait GuestMem {
    /// Reads `buf.len()` bytes at `ipa`; fails if any of it is not the host's to give.
    fn read(&mut self, ipa: Ipa, buf: &mut [u8]) -> Result<(), MemFault>;
    /// Writes `data` at `ipa`; fails if any of it is not the host's to give.
    fn write(&mut self, ipa: Ipa, data: &[u8]) -> Result<(), MemFault>;
    /// Orders the writes before it before those after it, as the driver observes them
    /// (before a used index is published). Nothing by default.
    fn publish_barrier(&mut self) {}
}

/// A host memory access the device may not make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemFault;

/// What the device advertises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// `page_size_mask`: the lowest bit set is the granule (the SMMU's 4 KiB); higher bits
    /// are block sizes mapped efficiently.
    pub page_size_mask: u64,
    /// `input_range.start`.
    pub input_start: u64,
    /// `input_range.end` (inclusive): from the SMMUs' input size.
    pub input_end: u64,
    /// `domain_range.start`.
    pub domain_start: u32,
    /// `domain_range.end` (inclusive).
    pub domain_end: u32,
    /// Initial `bypass` (kept across device resets).
    pub bypass: bool,
    /// Offer `F_MMIO`: the backend maps device memory.
    pub mmio_maps: bool,
    /// `VendorID`.
    pub vendor_id: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            page_size_mask: 0x1000,
            input_start: 0,
            input_end: (1 << 48) - 1,
            domain_start: 1,
            domain_end: 0xffff,
            bypass: false,
            mmio_maps: false,
            vendor_id: 0x5744_4e31,
        }
    }
}

impl Config {
    /// The mapping granule: the lowest size in `page_size_mask` (4 KiB if empty).
    pub fn granule(&self) -> u64 {
        match self.page_size_mask {
            0 => 0x1000,
            m => 1 << m.trailing_zeros(),
        }
    }
}

/// Counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests answered.
    pub requests: u64,
    /// Kicks that served at least one request.
    pub kicks: u64,
    /// Times the device entered `DEVICE_NEEDS_RESET`.
    pub needs_reset: u64,
    /// The last malformation seen.
    pub last_malformed: Option<Malformed>,
    /// Fault reports delivered.
    pub events: u64,
    /// Fault reports dropped (no buffer, or no live event queue).
    pub events_dropped: u64,
    /// Device resets by the driver.
    pub resets: u64,
}

/// The emulated virtio-iommu.
#[derive(Clone, Debug)]
pub struct Device {
    regs: Regs,
    policy: Unattached,
    stats: Stats,
}

impl Device {
    /// A device out of system reset.
    pub fn new(cfg: Config) -> Self {
        Self {
            regs: Regs::new(cfg),
            policy: Unattached::Identity,
            stats: Stats::default(),
        }
    }

    /// Whether the driver set DRIVER_OK (and has not reset the device since).
    pub fn driver_ok(&self) -> bool {
        self.regs.driver_ok()
    }

    /// The `bypass` configuration field.
    pub fn bypass(&self) -> bool {
        self.regs.bypass()
    }

    /// Whether the device is in `DEVICE_NEEDS_RESET`.
    pub fn needs_reset(&self) -> bool {
        self.regs.needs_reset()
    }

    /// What endpoints the driver has not attached get.
    pub fn unattached(&self) -> Unattached {
        if self.driver_ok() && !self.bypass() {
            Unattached::Blocked
        } else {
            Unattached::Identity
        }
    }

    /// The negotiated features (0 before `FEATURES_OK`).
    pub fn features(&self) -> u64 {
        self.regs.features()
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.regs.status()
    }

    /// Queue `q` as the driver programmed it (`None` past the two queues).
    pub fn queue(&self, q: usize) -> Option<&Vq> {
        self.regs.vqs.get(q)
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// One trapped access to the node's window. Returns the value read (0 for a write),
    /// or [`Abort`] for an access the transport does not allow.
    pub fn mmio<M: GuestMem, B: Backend, I: Irq>(
        &mut self,
        a: Access,
        mem: &mut M,
        backend: &mut B,
        irq: &mut I,
    ) -> Result<u64, Abort> {
        let (v, effect) = self.regs.access(a)?;
        match effect {
            Effect::None => {}
            Effect::Notify(q) if q as usize == REQUESTQ => self.kick(mem, backend, irq),
            // The event queue's new buffers are used when a fault comes.
            Effect::Notify(_) => {}
            Effect::Reset => {
                self.stats.resets += 1;
                backend.reset();
            }
            Effect::NeedsReset => self.entered_needs_reset(Malformed::Layout, irq),
        }
        let p = self.unattached();
        if p != self.policy {
            self.policy = p;
            backend.set_unattached(p);
        }
        Ok(v)
    }

    fn entered_needs_reset<I: Irq>(&mut self, why: Malformed, irq: &mut I) {
        self.stats.needs_reset += 1;
        self.stats.last_malformed = Some(why);
        irq.raise();
    }

    fn malformed<I: Irq>(&mut self, why: Malformed, irq: &mut I) {
        if self.regs.set_needs_reset() {
            self.entered_needs_reset(why, irq);
        }
    }

    /// Serves the request queue: at most a queue's worth of requests, one
    /// [`Backend::end_of_kick`], then the used index.
    fn kick<M: GuestMem, B: Backend, I: Irq>(&mut self, mem: &mut M, backend: &mut B, irq: &mut I) {
        let mut vq = self.regs.vqs[REQUESTQ];
        if !self.regs.live() || !vq.ready {
            return;
        }
        let features = self.regs.features();
        let cfg = *self.regs.config();
        let mut served = 0u32;
        let mut bad = None;
        match vq.pending(mem) {
            Err(e) => bad = Some(e),
            Ok((flags, n)) => {
                for _ in 0..n {
                    match serve_one(&mut vq, mem, backend, features, &cfg) {
                        Ok(()) => served += 1,
                        Err((e, reached_backend)) => {
                            // A request the backend acted on still needs its end_of_kick
                            // (an UNMAP's invalidation), even if its answer was lost.
                            served += u32::from(reached_backend);
                            bad = Some(e);
                            break;
                        }
                    }
                }
                if served != 0 {
                    self.stats.requests += u64::from(served);
                    self.stats.kicks += 1;
                    let done = backend
                        .end_of_kick()
                        .map_err(|_| Malformed::Backend)
                        .and_then(|()| vq.publish(mem));
                    match done {
                        Ok(()) if flags & AVAIL_F_NO_INTERRUPT == 0 => {
                            self.regs.interrupt(INT_VRING);
                            irq.raise();
                        }
                        Ok(()) => {}
                        Err(e) => bad = bad.or(Some(e)),
                    }
                }
            }
        }
        // Keep the device's positions (the layout registers cannot have changed).
        self.regs.vqs[REQUESTQ].last_avail = vq.last_avail;
        self.regs.vqs[REQUESTQ].used_idx = vq.used_idx;
        if let Some(e) = bad {
            self.malformed(e, irq);
        }
    }

    /// Puts `fault` into the next event buffer the driver posted and raises the interrupt;
    /// drops it (and counts the drop) when there is no buffer or no live event queue.
    pub fn report_fault<M: GuestMem, I: Irq>(
        &mut self,
        fault: &Fault,
        mem: &mut M,
        irq: &mut I,
    ) -> Delivery {
        match self.deliver(fault, mem) {
            Ok(Some(signal)) => {
                self.stats.events += 1;
                if signal {
                    self.regs.interrupt(INT_VRING);
                    irq.raise();
                }
                Delivery::Delivered
            }
            Ok(None) => {
                self.stats.events_dropped += 1;
                Delivery::Dropped
            }
            Err(e) => {
                self.stats.events_dropped += 1;
                self.malformed(e, irq);
                Delivery::Dropped
            }
        }
    }

    /// Writes `fault` into the next event buffer: `Some(signal)` when delivered (`signal`:
    /// the driver wants the interrupt), `None` without a buffer.
    fn deliver<M: GuestMem>(
        &mut self,
        fault: &Fault,
        mem: &mut M,
    ) -> Result<Option<bool>, Malformed> {
        let live = self.regs.live();
        let vq = &mut self.regs.vqs[EVENTQ];
        if !live || !vq.ready {
            return Ok(None);
        }
        let (flags, n) = vq.pending(mem)?;
        if n == 0 {
            return Ok(None);
        }
        let head = vq.next_head(mem)?;
        let c = vq.chain(mem, head)?;
        if c.out_total != 0 || c.in_total < FAULT_SIZE as u64 {
            return Err(Malformed::Framing);
        }
        c.scatter(mem, &fault.encode())?;
        vq.put_used(mem, head, FAULT_SIZE as u32)?;
        vq.publish(mem)?;
        Ok(Some(flags & AVAIL_F_NO_INTERRUPT == 0))
    }
}

/// Reads, checks, serves and answers the next request of `vq` (the used element written,
/// not published). On error, also says whether the backend had acted on the request.
fn serve_one<M: GuestMem, B: Backend>(
    vq: &mut Vq,
    mem: &mut M,
    backend: &mut B,
    features: u64,
    cfg: &Config,
) -> Result<(), (Malformed, bool)> {
    let before = |e: Malformed| (e, false);
    let head = vq.next_head(mem).map_err(before)?;
    let c = vq.chain(mem, head).map_err(before)?;
    if c.out_total < HEAD_SIZE as u64
        || c.in_total < TAIL_SIZE as u64
        || c.in_total > WRITE_MAX as u64
    {
        return Err(before(Malformed::Framing));
    }
    // The reply buffer must be writable before the backend acts on the request.
    let mut out = [0u8; WRITE_MAX];
    c.scatter(mem, &out[..c.in_total as usize])
        .map_err(before)?;
    let after = |e: Malformed| (e, true);
    let len = match req::serve(
        c.readable(),
        c.in_total as usize,
        features,
        cfg,
        backend,
        &mut out,
    ) {
        Reply::NoWrite => 0,
        Reply::Written(n) => {
            c.scatter(mem, &out[..n]).map_err(after)?;
            n as u32
        }
    };
    vq.put_used(mem, head, len).map_err(after)
}
