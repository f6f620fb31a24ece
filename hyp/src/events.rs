//! SMMU fault events for the host: draining every SMMU's event queue into Warden's log
//! and a bounded ring that EVENT_POLL reads.
//!
//! A device that faults on a whole buffer raises one event per access: consecutive events
//! of one StreamID, kind and direction within one page are logged as one line (first
//! address and count), while every event still enters the ring. The ring keeps the most
//! recent [`EventRing::capacity`] events; older ones are dropped and the next event polled
//! carries `event::FLAG_LOST`, as do events that follow an SMMU event-queue overflow.

use crate::s2mmu::TableMemory;
use crate::smmu::{Event, Smmu, SmmuIo};
use alloc::collections::VecDeque;
use host_abi::event;

/// Default number of events kept for EVENT_POLL.
pub const DEFAULT_RING: usize = 64;

/// One event taken from the ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolledEvent {
    /// Index of the SMMU that reported it.
    pub smmu: u32,
    /// The event.
    pub event: Event,
    /// Events were lost before this one.
    pub lost: bool,
}

/// Recent fault events: (SMMU index, event).
#[derive(Debug)]
pub struct EventRing {
    ring: VecDeque<(u32, Event)>,
    cap: usize,
    /// Events lost (dropped from the ring, or by an SMMU) since the last poll.
    lost: u64,
}

impl EventRing {
    /// A ring for `cap` events (at least one), allocated up front so that recording an
    /// event never allocates. `None` if the memory is not there.
    pub fn with_capacity(cap: usize) -> Option<Self> {
        let cap = cap.max(1);
        let mut ring = VecDeque::new();
        ring.try_reserve_exact(cap).ok()?;
        Some(Self { ring, cap, lost: 0 })
    }

    /// How many events the ring keeps.
    pub const fn capacity(&self) -> usize {
        self.cap
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.ring.len()
    }

    /// Whether no event waits.
    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// Records an event of SMMU `smmu`, dropping the oldest when full.
    pub fn push(&mut self, smmu: u32, e: Event) {
        if self.ring.len() >= self.cap {
            self.ring.pop_front();
            self.lost += 1;
        }
        self.ring.push_back((smmu, e));
    }

    /// Notes that events were lost before reaching the ring.
    pub fn note_lost(&mut self) {
        self.lost += 1;
    }

    /// The oldest event as EVENT_POLL returns it: x1 endpoint, x2 input address, x3 type
    /// and flags (`FLAG_LOST` if events were lost since the last poll).
    pub fn pop(&mut self) -> Option<[u64; 3]> {
        self.pop_event().map(|p| encode(p.smmu, &p.event, p.lost))
    }

    /// The oldest event, and whether events were lost since the last poll.
    pub fn pop_event(&mut self) -> Option<PolledEvent> {
        let (smmu, event) = self.ring.pop_front()?;
        let lost = core::mem::take(&mut self.lost) != 0;
        Some(PolledEvent { smmu, event, lost })
    }

    /// Drains every SMMU's event queue into the ring and the log.
    pub fn drain<I: SmmuIo, M: TableMemory>(&mut self, smmus: &mut [Smmu<I, M>], mem: &mut M) {
        for (i, smmu) in smmus.iter_mut().enumerate() {
            let mut run: Option<(Event, u32)> = None;
            let poll = smmu.poll_events(mem, |e| {
                match &mut run {
                    Some((first, n))
                        if first.sid == e.sid
                            && first.kind == e.kind
                            && first.read == e.read
                            && first.input_addr >> 12 == e.input_addr >> 12 =>
                    {
                        *n += 1
                    }
                    _ => {
                        if let Some((first, n)) = run.take() {
                            log_event(i, &first, n);
                        }
                        run = Some((e, 1));
                    }
                }
                self.push(i as u32, e);
            });
            if let Some((first, n)) = run {
                log_event(i, &first, n);
            }
            if poll.overflow {
                self.note_lost();
                log::warn!("smmu{i}: event queue overflowed: some events were lost");
            }
            if poll.gerror != 0 {
                log::error!("smmu{i}: global error {:#x} acknowledged", poll.gerror);
            }
        }
    }
}

/// EVENT_POLL's registers for one event.
pub fn encode(smmu: u32, e: &Event, lost: bool) -> [u64; 3] {
    let mut flags = u64::from(e.kind.0);
    if e.read {
        flags |= event::FLAG_READ;
    }
    if e.stage2 {
        flags |= event::FLAG_STAGE2;
    }
    if lost {
        flags |= event::FLAG_LOST;
    }
    [host_abi::endpoint(smmu, e.sid), e.input_addr, flags]
}

fn log_event(smmu: usize, e: &Event, n: u32) {
    if n == 1 {
        log::warn!("smmu{smmu}: {e}");
    } else {
        log::warn!("smmu{smmu}: {e} (+{} more in this page)", n - 1);
    }
}
