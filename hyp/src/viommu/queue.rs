//! Split virtqueues in host memory: the layout the driver programmed ([`Vq`]), reading the
//! available ring and descriptor chains, and writing used elements.
//!
//! The rings live in memory the host keeps writing while Warden reads, so everything is
//! read once, into Warden memory, and checked there: the available index and flags (one
//! 4-byte read), each ring entry, each descriptor (one 16-byte read), the device-readable
//! bytes of a request. Nothing is read twice, so the host cannot change a value between
//! its check and its use.
//!
//! Every walk is bounded: a chain has at most `num` descriptors (a longer one loops), a
//! kick serves at most `num` buffers, every index is checked against `num`. Anything the
//! driver could not have produced legitimately is a [`Malformed`] queue, which the device
//! answers with `DEVICE_NEEDS_RESET`:
//!
//! | condition | variant |
//! |---|---|
//! | head or `next` index `>= num` | [`Malformed::Index`] |
//! | more than `num` descriptors in a chain (a loop) | [`Malformed::Loop`] |
//! | `INDIRECT` (not negotiated) | [`Malformed::Indirect`] |
//! | a readable descriptor after a writable one | [`Malformed::Order`] |
//! | `addr + len` wraps | [`Malformed::Wrap`] |
//! | more than [`MAX_SEGS`] writable descriptors | [`Malformed::Segments`] |
//! | available index more than `num` ahead of the device | [`Malformed::AvailIdx`] |
//! | memory the host may not hand to the device | [`Malformed::Memory`] |
//!
//! The framing checks of one queue's buffers (a request needs a readable head and a
//! writable tail; an event buffer is writable only) are the caller's.

use super::{GuestMem, MemFault};
use crate::addr::Ipa;
use crate::viommu::regs::*;

/// Most writable descriptors one chain may have (drivers use one or two).
pub const MAX_SEGS: usize = 8;
/// Most device-readable bytes kept of a chain (the largest request, PROBE).
pub const READ_MAX: usize = PROBE_SIZE;

/// Why a queue cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// An index at or beyond the queue size.
    Index,
    /// A chain longer than the queue: a loop.
    Loop,
    /// An indirect descriptor, not negotiated.
    Indirect,
    /// A device-readable descriptor after a device-writable one.
    Order,
    /// A buffer that wraps around the address space.
    Wrap,
    /// Too many writable descriptors.
    Segments,
    /// The available index ran more than a queue size ahead.
    AvailIdx,
    /// Host memory the device may not access (or a ring that moved while live).
    Memory,
    /// A request without a readable head or without room for the tail, or an event
    /// buffer that is readable or too small.
    Framing,
    /// A queue programmed with a bad size or alignment, or a ring moved while live.
    Layout,
    /// The backend could not complete the kick (its invalidation failed).
    Backend,
}

impl From<MemFault> for Malformed {
    fn from(_: MemFault) -> Self {
        Malformed::Memory
    }
}

/// One virtqueue as the driver programmed it, and the device's position in it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Vq {
    /// Queue size (`QueueNum`).
    pub num: u32,
    /// `QueueReady`.
    pub ready: bool,
    /// Descriptor table.
    pub desc: u64,
    /// Available ring.
    pub avail: u64,
    /// Used ring.
    pub used: u64,
    /// The next available entry the device reads.
    pub last_avail: u16,
    /// The used index the device publishes next (entries below it are written).
    pub used_idx: u16,
}

/// One descriptor, as read.
#[derive(Clone, Copy, Debug, Default)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

/// A device-writable piece of a chain.
#[derive(Clone, Copy, Debug, Default)]
pub struct Seg {
    /// Where.
    pub addr: u64,
    /// Bytes.
    pub len: u32,
}

/// A descriptor chain, read: its head index, the first [`READ_MAX`] device-readable bytes
/// and the writable pieces.
#[derive(Clone, Debug)]
pub struct Chain {
    /// Head descriptor index (the used element's `id`).
    pub head: u16,
    /// The device-readable bytes, concatenated (the first `out_len`).
    pub out: [u8; READ_MAX],
    /// How many bytes of `out` are valid.
    pub out_len: usize,
    /// Total device-readable bytes of the chain.
    pub out_total: u64,
    /// Device-writable pieces, in order (the first `nsegs`).
    pub segs: [Seg; MAX_SEGS],
    /// Number of writable pieces.
    pub nsegs: usize,
    /// Total device-writable bytes.
    pub in_total: u64,
}

impl Chain {
    /// The device-readable bytes kept.
    pub fn readable(&self) -> &[u8] {
        &self.out[..self.out_len]
    }

    /// Writes `data` over the writable pieces, in order (`data` no longer than
    /// `in_total`).
    pub fn scatter<M: GuestMem>(&self, mem: &mut M, data: &[u8]) -> Result<(), Malformed> {
        let mut rest = data;
        for s in &self.segs[..self.nsegs] {
            if rest.is_empty() {
                break;
            }
            let n = rest.len().min(s.len as usize);
            let (now, later) = rest.split_at(n);
            mem.write(Ipa(s.addr), now)?;
            rest = later;
        }
        Ok(())
    }
}

impl Vq {
    /// Checks the programmed layout: a power-of-two size in `1..=max`, rings aligned as
    /// the split layout requires and not wrapping the address space.
    pub fn check_layout(&self, max: u32) -> Result<(), Malformed> {
        let n = u64::from(self.num);
        let ok = self.num != 0
            && self.num <= max
            && self.num.is_power_of_two()
            && self.desc.is_multiple_of(16)
            && self.avail.is_multiple_of(2)
            && self.used.is_multiple_of(4)
            && self.desc.checked_add(n * DESC_SIZE).is_some()
            && self.avail.checked_add(AVAIL_RING + 2 * n + 2).is_some()
            && self
                .used
                .checked_add(USED_RING + USED_ELEM * n + 2)
                .is_some();
        if ok { Ok(()) } else { Err(Malformed::Layout) }
    }

    /// Reads the available ring's flags and index (once) and returns the flags and the
    /// number of new entries, at most `num`.
    pub fn pending<M: GuestMem>(&self, mem: &mut M) -> Result<(u16, u16), Malformed> {
        let mut b = [0u8; 4];
        mem.read(Ipa(self.avail), &mut b)?;
        let flags = u16::from_le_bytes([b[0], b[1]]);
        let idx = u16::from_le_bytes([b[2], b[3]]);
        let n = idx.wrapping_sub(self.last_avail);
        if u32::from(n) > self.num {
            return Err(Malformed::AvailIdx);
        }
        Ok((flags, n))
    }

    /// Reads the next available entry (a head index) and advances past it.
    pub fn next_head<M: GuestMem>(&mut self, mem: &mut M) -> Result<u16, Malformed> {
        let slot = u64::from(self.last_avail) % u64::from(self.num.max(1));
        let mut b = [0u8; 2];
        mem.read(Ipa(self.avail + AVAIL_RING + 2 * slot), &mut b)?;
        self.last_avail = self.last_avail.wrapping_add(1);
        Ok(u16::from_le_bytes(b))
    }

    fn desc<M: GuestMem>(&self, mem: &mut M, i: u16) -> Result<Desc, Malformed> {
        if u32::from(i) >= self.num {
            return Err(Malformed::Index);
        }
        let mut b = [0u8; 16];
        mem.read(Ipa(self.desc + DESC_SIZE * u64::from(i)), &mut b)?;
        let [
            a0,
            a1,
            a2,
            a3,
            a4,
            a5,
            a6,
            a7,
            l0,
            l1,
            l2,
            l3,
            f0,
            f1,
            n0,
            n1,
        ] = b;
        Ok(Desc {
            addr: u64::from_le_bytes([a0, a1, a2, a3, a4, a5, a6, a7]),
            len: u32::from_le_bytes([l0, l1, l2, l3]),
            flags: u16::from_le_bytes([f0, f1]),
            next: u16::from_le_bytes([n0, n1]),
        })
    }

    /// Reads the chain starting at `head`: every descriptor once, at most `num` of them.
    pub fn chain<M: GuestMem>(&self, mem: &mut M, head: u16) -> Result<Chain, Malformed> {
        let mut c = Chain {
            head,
            out: [0; READ_MAX],
            out_len: 0,
            out_total: 0,
            segs: [Seg::default(); MAX_SEGS],
            nsegs: 0,
            in_total: 0,
        };
        let mut i = head;
        for _ in 0..self.num {
            let d = self.desc(mem, i)?;
            if d.flags & DESC_F_INDIRECT != 0 {
                return Err(Malformed::Indirect);
            }
            if d.addr.checked_add(u64::from(d.len)).is_none() {
                return Err(Malformed::Wrap);
            }
            if d.flags & DESC_F_WRITE != 0 {
                if d.len != 0 {
                    let s = c.segs.get_mut(c.nsegs).ok_or(Malformed::Segments)?;
                    *s = Seg {
                        addr: d.addr,
                        len: d.len,
                    };
                    c.nsegs += 1;
                    c.in_total += u64::from(d.len);
                }
            } else {
                if c.nsegs != 0 || c.in_total != 0 {
                    return Err(Malformed::Order);
                }
                let room = READ_MAX - c.out_len;
                let n = room.min(d.len as usize);
                if n != 0 {
                    mem.read(Ipa(d.addr), &mut c.out[c.out_len..c.out_len + n])?;
                    c.out_len += n;
                }
                c.out_total += u64::from(d.len);
            }
            if d.flags & DESC_F_NEXT == 0 {
                return Ok(c);
            }
            i = d.next;
        }
        Err(Malformed::Loop)
    }

    /// Writes the used element for `head` (`len` bytes written) at the device's used index,
    /// without publishing it.
    pub fn put_used<M: GuestMem>(
        &mut self,
        mem: &mut M,
        head: u16,
        len: u32,
    ) -> Result<(), Malformed> {
        let slot = u64::from(self.used_idx) % u64::from(self.num.max(1));
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        b[4..].copy_from_slice(&len.to_le_bytes());
        mem.write(Ipa(self.used + USED_RING + USED_ELEM * slot), &b)?;
        self.used_idx = self.used_idx.wrapping_add(1);
        Ok(())
    }

    /// Publishes every used element written so far: a barrier, then the used index.
    pub fn publish<M: GuestMem>(&self, mem: &mut M) -> Result<(), Malformed> {
        mem.publish_barrier();
        mem.write(Ipa(self.used + USED_IDX), &self.used_idx.to_le_bytes())?;
        Ok(())
    }
}
