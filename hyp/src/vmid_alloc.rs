//! The single VMID allocator shared by CPU stage-2 contexts and SMMU stage-2 domains.
//!
//! CPU stage-2 translation regimes (`VTTBR_EL2.VMID`) and SMMU stage-2 stream table
//! entries (`STE.S2VMID`) tag their TLB entries with a VMID. Warden draws both kinds from
//! this one allocator so that no two live address spaces share a VMID by accident (DESIGN
//! "One VMID allocator"). The usable width is the narrower of what the CPU
//! (`ID_AA64MMFR1_EL1.VMIDBits`) and every SMMU (`SMMU_IDR0.VMID16`) support: 8 or 16 bits.
//!
//! # Invariant I4
//!
//! *A VMID goes back to the allocator only after every CPU and SMMU TLB entry tagged with it
//! is invalidated and synchronised. Apart from the host stage-2 (shared on purpose by CPU
//! and host devices), no two live contexts share a VMID.*
//!
//! The allocator enforces the first half with a quarantine: [`VmidAllocator::release`] does
//! not free a VMID, it moves it to *pending invalidation* and hands back an
//! [`InvalidationTicket`]. The caller then performs `TLBI VMALLS12E1IS` + `DSB ISH` on the
//! CPU side and `CMD_TLBI_S12_VMALL` + `CMD_SYNC` on every SMMU, and only then redeems the
//! ticket with [`VmidAllocator::invalidation_done`]. A pending VMID is never returned by
//! [`VmidAllocator::alloc`], even when it is the last one left ([`VmidError::Exhausted`]
//! instead). The second half is the bitmap itself: a VMID is handed out only while free.
//! The host's VMID is taken with [`VmidAllocator::reserve`] and is never handed out.
//!
//! # Lifecycle
//!
//! | State                 | Entered by                                           | Left by                                                   | `alloc` may return it |
//! |-----------------------|------------------------------------------------------|-----------------------------------------------------------|-----------------------|
//! | Free                  | construction; invalidation completed                 | `alloc` → Allocated; `reserve` → Reserved                 | yes                   |
//! | Allocated             | `alloc`                                              | `release` → PendingInvalidation                           | no                    |
//! | PendingInvalidation   | `release`                                            | `invalidation_done`, `complete_batch`, `complete_all_pending` → Free | no         |
//! | Reserved              | `reserve` (the host VMID, taken first)               | never                                                     | no                    |
//!
//! Free → Allocated → PendingInvalidation → Free; Reserved is terminal.
//!
//! # Tickets cannot free a VMID early
//!
//! [`InvalidationTicket`] has private fields and is neither `Clone` nor `Copy`: it cannot be
//! forged and is consumed when redeemed, so it cannot be completed twice. It records the
//! vmid and the allocator's *sweep epoch* at release time. A VMID can also leave
//! PendingInvalidation through a batch ([`VmidAllocator::begin_batch`] /
//! [`VmidAllocator::complete_batch`] or [`VmidAllocator::complete_all_pending`]), which
//! leaves the individual tickets behind; every sweep advances the epoch, so such a stale
//! ticket no longer matches if its VMID is re-allocated and re-released, and redeeming it
//! yields [`VmidError::StaleTicket`] without touching any state. Dropping a ticket unredeemed
//! is safe: the VMID stays pending until the next batch sweep.
//!
//! # Batched invalidation
//!
//! [`VmidAllocator::begin_batch`] snapshots every pending VMID into the in-flight batch
//! (list it with [`VmidAllocator::in_flight`]). VMIDs released afterwards are *not* part of
//! it, so a caller may drop the lock while invalidating. After invalidating every VMID of
//! the batch (or one global `TLBI VMALLS12E1IS`/`ALLE1IS` + every SMMU's
//! `CMD_TLBI_NSNH_ALL` + sync issued after `begin_batch`), [`VmidAllocator::complete_batch`]
//! frees exactly the snapshot. [`VmidAllocator::complete_all_pending`] is the shortcut for
//! a caller that holds `&mut` access (the lock) from before its invalidation until the call.
//!
//! # Cost
//!
//! Storage is fixed (four bitmaps of 1024 words plus a 16-word summary of non-full words,
//! 32 KiB) and `const`-constructible, so the allocator lives in a `static` behind a spin
//! lock; no heap. `alloc` starts at a rotating hint (one past the last VMID handed out, so
//! freed VMIDs are reused as late as possible) and finds the next free VMID with
//! `trailing_zeros` on the inverted bitmap word, falling back to the summary bitmap: at most
//! 1 + 17 + 1 words are read per call, O(1) in the number of VMIDs.

use core::fmt;

/// Words in each bitmap: 65536 VMIDs / 64.
const WORDS: usize = 1024;
/// Words in the summary of non-full bitmap words.
const SUMMARY_WORDS: usize = WORDS / 64;

/// A VMID as programmed into `VTTBR_EL2.VMID` and `STE.S2VMID`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Vmid(u16);

impl Vmid {
    /// Wraps a raw VMID.
    #[must_use]
    pub const fn new(raw: u16) -> Self {
        Self(raw)
    }

    /// The raw VMID.
    #[must_use]
    pub const fn raw(self) -> u16 {
        self.0
    }

    const fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Debug for Vmid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Vmid({:#x})", self.0)
    }
}

impl fmt::Display for Vmid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// Allocator errors. None of them changes the allocator's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmidError {
    /// Width other than 8 or 16 bits.
    InvalidWidth(u32),
    /// [`VmidAllocator::configure`] on an allocator that already has a width.
    AlreadyConfigured,
    /// The VMID does not fit the configured width.
    OutOfRange(Vmid),
    /// Every VMID is allocated, reserved or pending invalidation.
    Exhausted,
    /// `reserve` of a VMID that is not free.
    InUse(Vmid),
    /// `release` of a free VMID.
    NotAllocated(Vmid),
    /// `release` of a VMID already pending invalidation (double release).
    AlreadyReleased(Vmid),
    /// `release` of a reserved VMID.
    Reserved(Vmid),
    /// The ticket's VMID is not pending under this ticket (already freed by a batch, or
    /// freed and re-released since).
    StaleTicket(Vmid),
    /// `begin_batch` while another batch is in flight.
    BatchInProgress,
    /// The batch ticket does not match the in-flight batch (superseded by
    /// `complete_all_pending`).
    StaleBatch,
}

impl fmt::Display for VmidError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidWidth(b) => write!(f, "invalid VMID width {b} (expected 8 or 16)"),
            Self::AlreadyConfigured => f.write_str("VMID allocator already configured"),
            Self::OutOfRange(v) => write!(f, "VMID {v} out of range"),
            Self::Exhausted => f.write_str("no free VMID"),
            Self::InUse(v) => write!(f, "VMID {v} is in use"),
            Self::NotAllocated(v) => write!(f, "VMID {v} is not allocated"),
            Self::AlreadyReleased(v) => write!(f, "VMID {v} already released"),
            Self::Reserved(v) => write!(f, "VMID {v} is reserved"),
            Self::StaleTicket(v) => write!(f, "stale invalidation ticket for VMID {v}"),
            Self::BatchInProgress => f.write_str("an invalidation batch is already in flight"),
            Self::StaleBatch => f.write_str("stale invalidation batch ticket"),
        }
    }
}

/// The state of one VMID (see the module's lifecycle table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmidState {
    /// Allocatable.
    Free,
    /// Handed out by `alloc`.
    Allocated,
    /// Released; waiting for TLB invalidation (possibly part of the in-flight batch).
    PendingInvalidation,
    /// Reserved (the host's VMID); never handed out.
    Reserved,
}

/// Proof of one `release`, redeemed with [`VmidAllocator::invalidation_done`] once every
/// CPU and SMMU TLB entry tagged with [`Self::vmid`] is invalidated and synchronised.
///
/// Not `Clone`/`Copy` and not constructible outside this module.
#[derive(Debug)]
#[must_use = "the VMID stays quarantined until the ticket is redeemed (or a batch sweeps it)"]
pub struct InvalidationTicket {
    vmid: Vmid,
    epoch: u64,
}

impl InvalidationTicket {
    /// The VMID to invalidate.
    #[must_use]
    pub const fn vmid(&self) -> Vmid {
        self.vmid
    }
}

/// Proof of one `begin_batch`, redeemed with [`VmidAllocator::complete_batch`].
#[derive(Debug)]
#[must_use = "the batch's VMIDs stay quarantined until the batch is completed"]
pub struct BatchTicket {
    epoch: u64,
    len: u32,
}

impl BatchTicket {
    /// Number of VMIDs in the batch.
    #[must_use]
    pub const fn len(&self) -> u32 {
        self.len
    }

    /// Whether the batch holds no VMID.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The VMID allocator. See the module documentation.
pub struct VmidAllocator {
    /// Number of VMIDs: `1 << bits`, or 0 while unconfigured.
    count: u32,
    bits: u32,
    /// Bit set: not free (allocated, pending, in-flight batch or reserved).
    used: [u64; WORDS],
    /// Bit set: released, not yet in a batch.
    pending: [u64; WORDS],
    /// Bit set: released and part of the in-flight batch.
    batch: [u64; WORDS],
    /// Bit set: reserved.
    reserved: [u64; WORDS],
    /// Bit `w` set: `used[w]` has a free bit (only for words inside the width).
    nonfull: [u64; SUMMARY_WORDS],
    /// Next VMID to try.
    hint: u32,
    /// Sweep epoch: advanced by `begin_batch` and `complete_all_pending`.
    epoch: u64,
    batch_in_flight: bool,
    n_free: u32,
    n_allocated: u32,
    n_pending: u32,
    n_reserved: u32,
    /// Bitmap words (including summary words) read by `alloc`.
    #[cfg(test)]
    words_scanned: u64,
}

impl VmidAllocator {
    /// An allocator with no VMIDs (every `alloc` fails) until [`Self::configure`]. Lets a
    /// `static` be initialised at compile time and configured in place once the width is
    /// known, without a 32 KiB temporary on the stack.
    #[must_use]
    pub const fn unconfigured() -> Self {
        Self {
            count: 0,
            bits: 0,
            used: [0; WORDS],
            pending: [0; WORDS],
            batch: [0; WORDS],
            reserved: [0; WORDS],
            nonfull: [0; SUMMARY_WORDS],
            hint: 0,
            epoch: 0,
            batch_in_flight: false,
            n_free: 0,
            n_allocated: 0,
            n_pending: 0,
            n_reserved: 0,
            #[cfg(test)]
            words_scanned: 0,
        }
    }

    /// An allocator for `bits`-wide VMIDs, all free. `bits` is the narrower of the CPU's and
    /// every SMMU's VMID width and must be 8 or 16.
    pub const fn new(bits: u32) -> Result<Self, VmidError> {
        let mut a = Self::unconfigured();
        match a.configure(bits) {
            Ok(()) => Ok(a),
            Err(e) => Err(e),
        }
    }

    /// Gives an [`Self::unconfigured`] allocator its width; all VMIDs become free.
    pub const fn configure(&mut self, bits: u32) -> Result<(), VmidError> {
        if self.count != 0 {
            return Err(VmidError::AlreadyConfigured);
        }
        if bits != 8 && bits != 16 {
            return Err(VmidError::InvalidWidth(bits));
        }
        let count = 1u32 << bits;
        let words = (count / 64) as usize;
        let mut w = 0;
        while w < words {
            self.nonfull[w / 64] |= 1 << (w % 64);
            w += 1;
        }
        self.count = count;
        self.bits = bits;
        self.n_free = count;
        Ok(())
    }

    /// The configured width in bits (0 while unconfigured).
    #[must_use]
    pub const fn bits(&self) -> u32 {
        self.bits
    }

    /// Number of VMIDs (`1 << bits`).
    #[must_use]
    pub const fn capacity(&self) -> u32 {
        self.count
    }

    /// VMIDs that `alloc` can still hand out.
    #[must_use]
    pub const fn free_count(&self) -> u32 {
        self.n_free
    }

    /// VMIDs handed out and not released.
    #[must_use]
    pub const fn allocated_count(&self) -> u32 {
        self.n_allocated
    }

    /// VMIDs released and waiting for invalidation (including the in-flight batch).
    #[must_use]
    pub const fn pending_count(&self) -> u32 {
        self.n_pending
    }

    /// Reserved VMIDs.
    #[must_use]
    pub const fn reserved_count(&self) -> u32 {
        self.n_reserved
    }

    /// The state of `vmid`.
    pub fn state(&self, vmid: Vmid) -> Result<VmidState, VmidError> {
        self.check_range(vmid)?;
        let (w, bit) = Self::locate(vmid);
        Ok(if self.reserved[w] & bit != 0 {
            VmidState::Reserved
        } else if (self.pending[w] | self.batch[w]) & bit != 0 {
            VmidState::PendingInvalidation
        } else if self.used[w] & bit != 0 {
            VmidState::Allocated
        } else {
            VmidState::Free
        })
    }

    /// Reserves a free `vmid` for good (the host's VMID, taken before any `alloc`).
    pub fn reserve(&mut self, vmid: Vmid) -> Result<(), VmidError> {
        self.check_range(vmid)?;
        let (w, bit) = Self::locate(vmid);
        if self.used[w] & bit != 0 {
            return Err(VmidError::InUse(vmid));
        }
        self.mark_used(vmid);
        self.reserved[w] |= bit;
        self.n_free -= 1;
        self.n_reserved += 1;
        Ok(())
    }

    /// Hands out a free VMID, starting the search one past the last one handed out.
    pub fn alloc(&mut self) -> Result<Vmid, VmidError> {
        if self.n_free == 0 {
            return Err(VmidError::Exhausted);
        }
        let words = self.words();
        let start = self.hint as usize;
        let (w0, b0) = (start / 64, start % 64);
        self.count_scanned(1);
        let m = !self.used[w0] & (!0u64 << b0);
        let index = if m != 0 {
            w0 * 64 + m.trailing_zeros() as usize
        } else {
            // Some word has a free bit (n_free > 0); the circular summary search ends with
            // `w0` itself, whose free bits are then all below `b0`.
            let Some(w) = self.next_nonfull_word((w0 + 1) % words) else {
                debug_assert!(false, "n_free > 0 but no non-full word");
                return Err(VmidError::Exhausted);
            };
            self.count_scanned(1);
            let m = !self.used[w];
            debug_assert!(m != 0);
            w * 64 + m.trailing_zeros() as usize
        };
        // `index < count <= 65536`, so the cast is lossless.
        let vmid = Vmid(index as u16);
        self.mark_used(vmid);
        self.n_free -= 1;
        self.n_allocated += 1;
        self.hint = (index as u32 + 1) % self.count;
        Ok(vmid)
    }

    /// Moves an allocated `vmid` to pending invalidation. It becomes allocatable again only
    /// when the returned ticket is redeemed with [`Self::invalidation_done`] (or a batch
    /// sweeps it).
    pub fn release(&mut self, vmid: Vmid) -> Result<InvalidationTicket, VmidError> {
        match self.state(vmid)? {
            VmidState::Free => return Err(VmidError::NotAllocated(vmid)),
            VmidState::PendingInvalidation => return Err(VmidError::AlreadyReleased(vmid)),
            VmidState::Reserved => return Err(VmidError::Reserved(vmid)),
            VmidState::Allocated => {}
        }
        let (w, bit) = Self::locate(vmid);
        self.pending[w] |= bit;
        self.n_allocated -= 1;
        self.n_pending += 1;
        Ok(InvalidationTicket {
            vmid,
            epoch: self.epoch,
        })
    }

    /// Frees the ticket's VMID. Call only after `TLBI VMALLS12E1IS` + `DSB ISH` for it on
    /// the CPU and `CMD_TLBI_S12_VMALL` + `CMD_SYNC` on every SMMU have completed.
    pub fn invalidation_done(&mut self, ticket: InvalidationTicket) -> Result<Vmid, VmidError> {
        let vmid = ticket.vmid;
        let stale = Err(VmidError::StaleTicket(vmid));
        if self.check_range(vmid).is_err() {
            return stale;
        }
        let (w, bit) = Self::locate(vmid);
        if self.pending[w] & bit != 0 {
            // Released since the last sweep started: the current release has epoch `epoch`.
            if ticket.epoch != self.epoch {
                return stale;
            }
            self.pending[w] &= !bit;
        } else if self.batch[w] & bit != 0 {
            // Swept into the in-flight batch, which advanced the epoch by one.
            if ticket.epoch.wrapping_add(1) != self.epoch {
                return stale;
            }
            self.batch[w] &= !bit;
        } else {
            return stale;
        }
        self.mark_free(vmid);
        self.n_pending -= 1;
        self.n_free += 1;
        Ok(vmid)
    }

    /// VMIDs pending invalidation, in ascending order (the in-flight batch included).
    pub fn pending(&self) -> impl Iterator<Item = Vmid> + '_ {
        self.iter_bits(|a, w| a.pending[w] | a.batch[w])
    }

    /// VMIDs of the in-flight batch, in ascending order (empty without a batch).
    pub fn in_flight(&self) -> impl Iterator<Item = Vmid> + '_ {
        self.iter_bits(|a, w| a.batch[w])
    }

    /// Snapshots every pending VMID into a batch. Invalidate each VMID in
    /// [`Self::in_flight`] (or everything, globally) after this call, then call
    /// [`Self::complete_batch`]. VMIDs released meanwhile are not part of the batch.
    pub fn begin_batch(&mut self) -> Result<BatchTicket, VmidError> {
        if self.batch_in_flight {
            return Err(VmidError::BatchInProgress);
        }
        let mut len = 0;
        for w in 0..self.words() {
            len += self.pending[w].count_ones();
            self.batch[w] = self.pending[w];
            self.pending[w] = 0;
        }
        self.epoch += 1;
        self.batch_in_flight = true;
        Ok(BatchTicket {
            epoch: self.epoch,
            len,
        })
    }

    /// Frees every VMID of the batch; returns how many.
    pub fn complete_batch(&mut self, batch: BatchTicket) -> Result<u32, VmidError> {
        if !self.batch_in_flight || batch.epoch != self.epoch {
            return Err(VmidError::StaleBatch);
        }
        self.batch_in_flight = false;
        Ok(self.sweep(false))
    }

    /// Frees every pending VMID (in-flight batch included); returns how many. Only for a
    /// caller that has held `&mut self` (the allocator's lock) since before issuing a
    /// global invalidation (`TLBI VMALLS12E1IS` or `ALLE1IS` + `DSB ISH`, and on every SMMU
    /// `CMD_TLBI_S12_VMALL` for each pending VMID or `CMD_TLBI_NSNH_ALL`, + `CMD_SYNC`),
    /// so that no VMID was released after it. Outstanding tickets for these VMIDs become
    /// stale, as does an outstanding [`BatchTicket`].
    pub fn complete_all_pending(&mut self) -> u32 {
        self.epoch += 1;
        self.batch_in_flight = false;
        self.sweep(true)
    }

    /// Frees the in-flight batch and, with `with_pending`, the unbatched pending VMIDs.
    fn sweep(&mut self, with_pending: bool) -> u32 {
        let mut n = 0;
        for w in 0..self.words() {
            let mut m = self.batch[w];
            self.batch[w] = 0;
            if with_pending {
                m |= self.pending[w];
                self.pending[w] = 0;
            }
            if m != 0 {
                self.used[w] &= !m;
                self.nonfull[w / 64] |= 1 << (w % 64);
                n += m.count_ones();
            }
        }
        self.n_pending -= n;
        self.n_free += n;
        n
    }

    fn iter_bits(&self, word: fn(&Self, usize) -> u64) -> impl Iterator<Item = Vmid> + '_ {
        (0..self.words()).flat_map(move |w| {
            let mut m = word(self, w);
            core::iter::from_fn(move || {
                if m == 0 {
                    return None;
                }
                let b = m.trailing_zeros() as usize;
                m &= m - 1;
                // `w * 64 + b < 65536`.
                Some(Vmid((w * 64 + b) as u16))
            })
        })
    }

    /// First word index with a free bit, searching circularly from `from` (inclusive) and
    /// ending with the words below it.
    fn next_nonfull_word(&mut self, from: usize) -> Option<usize> {
        let sn = self.words().div_ceil(64);
        let (s0, b0) = (from / 64, from % 64);
        self.count_scanned(1);
        let m = self.nonfull[s0] & (!0u64 << b0);
        if m != 0 {
            return Some(s0 * 64 + m.trailing_zeros() as usize);
        }
        for i in 1..=sn {
            let s = (s0 + i) % sn;
            self.count_scanned(1);
            let mut m = self.nonfull[s];
            if i == sn {
                m &= (1u64 << b0) - 1;
            }
            if m != 0 {
                return Some(s * 64 + m.trailing_zeros() as usize);
            }
        }
        None
    }

    fn mark_used(&mut self, vmid: Vmid) {
        let (w, bit) = Self::locate(vmid);
        self.used[w] |= bit;
        if self.used[w] == !0 {
            self.nonfull[w / 64] &= !(1 << (w % 64));
        }
    }

    fn mark_free(&mut self, vmid: Vmid) {
        let (w, bit) = Self::locate(vmid);
        self.used[w] &= !bit;
        self.nonfull[w / 64] |= 1 << (w % 64);
    }

    const fn words(&self) -> usize {
        (self.count / 64) as usize
    }

    const fn locate(vmid: Vmid) -> (usize, u64) {
        (vmid.index() / 64, 1 << (vmid.index() % 64))
    }

    fn check_range(&self, vmid: Vmid) -> Result<(), VmidError> {
        if u32::from(vmid.0) < self.count {
            Ok(())
        } else {
            Err(VmidError::OutOfRange(vmid))
        }
    }

    #[cfg(test)]
    fn count_scanned(&mut self, n: u64) {
        self.words_scanned += n;
    }

    #[cfg(not(test))]
    #[inline(always)]
    fn count_scanned(&mut self, _n: u64) {}
}

impl fmt::Debug for VmidAllocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VmidAllocator")
            .field("bits", &self.bits)
            .field("free", &self.n_free)
            .field("allocated", &self.n_allocated)
            .field("pending", &self.n_pending)
            .field("reserved", &self.n_reserved)
            .field("batch_in_flight", &self.batch_in_flight)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::boxed::Box;
    use alloc::vec::Vec;
    use proptest::prelude::*;
    use std::collections::{HashMap, HashSet};

    fn new(bits: u32) -> Box<VmidAllocator> {
        Box::new(VmidAllocator::new(bits).unwrap())
    }

    /// Allocates until exhaustion; returns the VMIDs in allocation order.
    fn drain(a: &mut VmidAllocator) -> Vec<Vmid> {
        let mut out = Vec::new();
        loop {
            match a.alloc() {
                Ok(v) => out.push(v),
                Err(e) => {
                    assert_eq!(e, VmidError::Exhausted);
                    return out;
                }
            }
        }
    }

    fn check_counts(a: &VmidAllocator) {
        assert_eq!(
            a.free_count() + a.allocated_count() + a.pending_count() + a.reserved_count(),
            a.capacity()
        );
    }

    #[test]
    fn widths() {
        for bits in [0, 1, 4, 7, 9, 12, 15, 17, 32, u32::MAX] {
            assert_eq!(
                VmidAllocator::new(bits).err(),
                Some(VmidError::InvalidWidth(bits))
            );
        }
        assert_eq!(new(8).capacity(), 256);
        assert_eq!(new(16).capacity(), 65536);
        let mut a = VmidAllocator::unconfigured();
        assert_eq!(a.alloc(), Err(VmidError::Exhausted));
        assert_eq!(
            a.reserve(Vmid::new(0)),
            Err(VmidError::OutOfRange(Vmid::new(0)))
        );
        assert_eq!(a.configure(12), Err(VmidError::InvalidWidth(12)));
        a.configure(8).unwrap();
        assert_eq!(a.configure(16), Err(VmidError::AlreadyConfigured));
        assert_eq!(a.free_count(), 256);
    }

    #[test]
    fn usable_in_a_static() {
        static A: spin::Mutex<VmidAllocator> = spin::Mutex::new(VmidAllocator::unconfigured());
        let mut a = A.lock();
        a.configure(8).unwrap();
        a.reserve(Vmid::new(0)).unwrap();
        assert_eq!(a.alloc(), Ok(Vmid::new(1)));
    }

    #[test]
    fn debug_is_hex() {
        assert_eq!(format!("{:?}", Vmid::new(0xab)), "Vmid(0xab)");
        assert_eq!(format!("{}", Vmid::new(0x1f)), "0x1f");
    }

    fn exhaust_with_host(bits: u32, host: u16) {
        let mut a = new(bits);
        let host = Vmid::new(host);
        a.reserve(host).unwrap();
        assert_eq!(a.reserve(host), Err(VmidError::InUse(host)));
        let got = drain(&mut a);
        assert_eq!(got.len(), (1usize << bits) - 1);
        assert!(!got.contains(&host));
        let unique: HashSet<_> = got.iter().copied().collect();
        assert_eq!(unique.len(), got.len());
        assert!(got.iter().all(|v| u32::from(v.raw()) < a.capacity()));
        assert_eq!(a.alloc(), Err(VmidError::Exhausted));
        assert_eq!(a.free_count(), 0);
        assert_eq!(a.allocated_count(), (1 << bits) - 1);
        check_counts(&a);
    }

    #[test]
    fn exhaustion_8bit_host_0() {
        exhaust_with_host(8, 0);
    }

    #[test]
    fn exhaustion_8bit_host_1() {
        exhaust_with_host(8, 1);
    }

    #[test]
    fn exhaustion_16bit_host_0() {
        exhaust_with_host(16, 0);
    }

    #[test]
    fn exhaustion_16bit_host_1() {
        exhaust_with_host(16, 1);
    }

    #[test]
    fn without_reservation_every_vmid_is_handed_out() {
        let mut a = new(8);
        assert_eq!(drain(&mut a).len(), 256);
    }

    #[test]
    fn rotating_hint() {
        let mut a = new(8);
        a.reserve(Vmid::new(0)).unwrap();
        let v1 = a.alloc().unwrap();
        let v2 = a.alloc().unwrap();
        assert_eq!((v1, v2), (Vmid::new(1), Vmid::new(2)));
        let t = a.release(v1).unwrap();
        a.invalidation_done(t).unwrap();
        // v1 is free again but not reused until the hint wraps.
        assert_eq!(a.alloc(), Ok(Vmid::new(3)));
    }

    #[test]
    fn pending_vmid_is_quarantined_until_done() {
        for bits in [8, 16] {
            let mut a = new(bits);
            a.reserve(Vmid::new(0)).unwrap();
            let got = drain(&mut a);
            let victim = got[got.len() / 2];
            let t = a.release(victim).unwrap();
            assert_eq!(t.vmid(), victim);
            assert_eq!(a.state(victim), Ok(VmidState::PendingInvalidation));
            // The only non-allocated, non-reserved VMID is pending: not handed out.
            for _ in 0..3 {
                assert_eq!(a.alloc(), Err(VmidError::Exhausted));
            }
            assert_eq!(a.pending().collect::<Vec<_>>(), [victim]);
            assert_eq!(a.invalidation_done(t), Ok(victim));
            assert_eq!(a.state(victim), Ok(VmidState::Free));
            assert_eq!(a.alloc(), Ok(victim));
            assert_eq!(a.alloc(), Err(VmidError::Exhausted));
            check_counts(&a);
        }
    }

    #[test]
    fn reserved_survives_exhaustion_cycles() {
        for host in [0u16, 1, 255] {
            let mut a = new(8);
            let host = Vmid::new(host);
            a.reserve(host).unwrap();
            for cycle in 0..5 {
                let got = drain(&mut a);
                assert_eq!(got.len(), 255);
                assert!(!got.contains(&host));
                assert_eq!(a.release(host).err(), Some(VmidError::Reserved(host)));
                let tickets: Vec<_> = got.iter().map(|&v| a.release(v).unwrap()).collect();
                if cycle % 2 == 0 {
                    for t in tickets {
                        a.invalidation_done(t).unwrap();
                    }
                } else {
                    drop(tickets);
                    assert_eq!(a.complete_all_pending(), 255);
                }
                assert_eq!(a.state(host), Ok(VmidState::Reserved));
                check_counts(&a);
            }
        }
    }

    #[test]
    fn release_errors() {
        let mut a = new(8);
        let host = Vmid::new(0);
        a.reserve(host).unwrap();
        let v = a.alloc().unwrap();
        let free = Vmid::new(200);
        assert_eq!(a.release(free).err(), Some(VmidError::NotAllocated(free)));
        assert_eq!(a.release(host).err(), Some(VmidError::Reserved(host)));
        let big = Vmid::new(256);
        assert_eq!(a.release(big).err(), Some(VmidError::OutOfRange(big)));
        assert_eq!(a.reserve(big), Err(VmidError::OutOfRange(big)));
        assert_eq!(a.reserve(v), Err(VmidError::InUse(v)));
        let t = a.release(v).unwrap();
        assert_eq!(a.release(v).err(), Some(VmidError::AlreadyReleased(v)));
        assert_eq!(a.reserve(v), Err(VmidError::InUse(v)));
        a.invalidation_done(t).unwrap();
        assert_eq!(a.release(v).err(), Some(VmidError::NotAllocated(v)));
        check_counts(&a);
    }

    #[test]
    fn stale_ticket_after_complete_all_cannot_free_a_rereleased_vmid() {
        let mut a = new(8);
        a.reserve(Vmid::new(0)).unwrap();
        let v = a.alloc().unwrap();
        let old = a.release(v).unwrap();
        assert_eq!(a.complete_all_pending(), 1);
        // Cycle the hint round so that `v` is handed out again.
        let got = drain(&mut a);
        assert!(got.contains(&v));
        for &w in &got {
            if w != v {
                let t = a.release(w).unwrap();
                a.invalidation_done(t).unwrap();
            }
        }
        let new_ticket = a.release(v).unwrap();
        // The old ticket must not free `v`: its current release is not invalidated yet.
        assert_eq!(a.invalidation_done(old), Err(VmidError::StaleTicket(v)));
        assert_eq!(a.state(v), Ok(VmidState::PendingInvalidation));
        assert_eq!(a.invalidation_done(new_ticket), Ok(v));
    }

    #[test]
    fn stale_ticket_after_batch() {
        let mut a = new(8);
        let v = a.alloc().unwrap();
        let w = a.alloc().unwrap();
        let tv = a.release(v).unwrap();
        let tw = a.release(w).unwrap();
        let b = a.begin_batch().unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(a.begin_batch().err(), Some(VmidError::BatchInProgress));
        // An individual ticket for a batched VMID is still valid.
        assert_eq!(a.invalidation_done(tw), Ok(w));
        assert_eq!(a.complete_batch(b), Ok(1));
        // `v` was freed by the batch: its ticket is stale, whatever happens to `v` next.
        assert_eq!(a.state(v), Ok(VmidState::Free));
        assert_eq!(a.invalidation_done(tv), Err(VmidError::StaleTicket(v)));
    }

    #[test]
    fn batch_excludes_later_releases() {
        let mut a = new(8);
        let vs: Vec<_> = (0..4).map(|_| a.alloc().unwrap()).collect();
        let t0 = a.release(vs[0]).unwrap();
        let t1 = a.release(vs[1]).unwrap();
        let b = a.begin_batch().unwrap();
        assert_eq!(a.in_flight().collect::<Vec<_>>(), [vs[0], vs[1]]);
        // Released while the batch's invalidation is in progress.
        let t2 = a.release(vs[2]).unwrap();
        assert_eq!(a.pending().collect::<Vec<_>>(), [vs[0], vs[1], vs[2]]);
        assert_eq!(a.complete_batch(b), Ok(2));
        assert_eq!(a.state(vs[2]), Ok(VmidState::PendingInvalidation));
        assert_eq!(a.in_flight().count(), 0);
        assert_eq!(a.invalidation_done(t0), Err(VmidError::StaleTicket(vs[0])));
        assert_eq!(a.invalidation_done(t1), Err(VmidError::StaleTicket(vs[1])));
        assert_eq!(a.invalidation_done(t2), Ok(vs[2]));
        assert_eq!(a.pending_count(), 0);
        check_counts(&a);
    }

    #[test]
    fn complete_all_supersedes_batch() {
        let mut a = new(8);
        let v = a.alloc().unwrap();
        let w = a.alloc().unwrap();
        drop(a.release(v).unwrap());
        let b = a.begin_batch().unwrap();
        drop(a.release(w).unwrap());
        assert_eq!(a.complete_all_pending(), 2);
        assert_eq!(a.complete_batch(b), Err(VmidError::StaleBatch));
        assert_eq!(a.free_count(), 256);
        // A fresh batch works afterwards.
        let b = a.begin_batch().unwrap();
        assert!(b.is_empty());
        assert_eq!(a.complete_batch(b), Ok(0));
    }

    /// Average bitmap words read per `alloc` over full cycles stays ≤ 2 after many
    /// scattered frees, and no single `alloc` reads more than 1 + 17 + 1 words even when
    /// the only free VMID is far behind the hint.
    #[test]
    fn alloc_is_o1_amortised() {
        let mut a = new(16);
        a.reserve(Vmid::new(0)).unwrap();
        a.words_scanned = 0;
        let mut live = drain(&mut a);
        let first = a.words_scanned as f64 / live.len() as f64;
        assert!(first <= 2.0, "{first} words per alloc");
        // Free a scattered two thirds, then refill, several times.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..4 {
            live.retain(|&v| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                if !seed.is_multiple_of(3) {
                    drop(a.release(v).unwrap());
                    false
                } else {
                    true
                }
            });
            a.complete_all_pending();
            a.words_scanned = 0;
            let refill = drain(&mut a);
            let avg = a.words_scanned as f64 / (refill.len() + 1) as f64;
            assert!(avg <= 2.0, "{avg} words per alloc");
            live.extend(refill);
            assert_eq!(live.len(), 65535);
        }
        // Worst case: a single free VMID just behind the hint.
        for _ in 0..64 {
            let victim = live.swap_remove((seed % live.len() as u64) as usize);
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            let t = a.release(victim).unwrap();
            a.invalidation_done(t).unwrap();
            a.words_scanned = 0;
            assert_eq!(a.alloc(), Ok(victim));
            assert!(a.words_scanned <= 19, "{} words", a.words_scanned);
            live.push(victim);
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Alloc,
        /// Release the n-th live VMID.
        Release(usize),
        /// Release an arbitrary VMID (may be free, pending, reserved, out of range).
        ReleaseRaw(u16),
        /// Redeem the n-th held ticket.
        Done(usize),
        BeginBatch,
        CompleteBatch,
        CompleteAll,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => Just(Op::Alloc),
            4 => any::<usize>().prop_map(Op::Release),
            1 => (0u16..300).prop_map(Op::ReleaseRaw),
            3 => any::<usize>().prop_map(Op::Done),
            1 => Just(Op::BeginBatch),
            1 => Just(Op::CompleteBatch),
            1 => Just(Op::CompleteAll),
        ]
    }

    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    enum Pend {
        Unbatched,
        InBatch,
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn matches_reference_model(
            host in 0u16..256,
            prefill in 0usize..=255,
            ops in proptest::collection::vec(op(), 0..600),
        ) {
            let mut a = new(8);
            let host = Vmid::new(host);
            a.reserve(host).unwrap();
            let mut live: Vec<Vmid> = Vec::new();
            let mut live_set: HashSet<Vmid> = HashSet::new();
            // Pending VMIDs: batch membership and the serial of the release's ticket.
            let mut pending: HashMap<Vmid, (Pend, u64)> = HashMap::new();
            // Tickets held (also stale ones), each with its release serial.
            let mut tickets: Vec<(u64, InvalidationTicket)> = Vec::new();
            let mut serial = 0u64;
            // Start near exhaustion half of the time.
            for _ in 0..prefill {
                let v = a.alloc().unwrap();
                prop_assert!(v != host && live_set.insert(v));
                live.push(v);
            }
            let mut batch: Option<BatchTicket> = None;

            for op in ops {
                match op {
                    Op::Alloc => {
                        let free = 255 - live_set.len() - pending.len();
                        match a.alloc() {
                            Ok(v) => {
                                prop_assert!(free > 0);
                                prop_assert!(v != host);
                                prop_assert!(!pending.contains_key(&v), "pending {v:?} returned");
                                prop_assert!(live_set.insert(v), "live {v:?} returned twice");
                                live.push(v);
                            }
                            Err(e) => {
                                prop_assert_eq!(e, VmidError::Exhausted);
                                prop_assert_eq!(free, 0);
                            }
                        }
                    }
                    Op::Release(i) if !live.is_empty() => {
                        let v = live.swap_remove(i % live.len());
                        live_set.remove(&v);
                        let t = a.release(v).unwrap();
                        prop_assert_eq!(t.vmid(), v);
                        serial += 1;
                        pending.insert(v, (Pend::Unbatched, serial));
                        tickets.push((serial, t));
                    }
                    Op::Release(_) => {}
                    Op::ReleaseRaw(raw) => {
                        let v = Vmid::new(raw);
                        let r = a.release(v);
                        let expected = if raw >= 256 {
                            Some(VmidError::OutOfRange(v))
                        } else if v == host {
                            Some(VmidError::Reserved(v))
                        } else if pending.contains_key(&v) {
                            Some(VmidError::AlreadyReleased(v))
                        } else if !live_set.contains(&v) {
                            Some(VmidError::NotAllocated(v))
                        } else {
                            None
                        };
                        match expected {
                            Some(e) => prop_assert_eq!(r.err(), Some(e)),
                            None => {
                                live_set.remove(&v);
                                live.retain(|&x| x != v);
                                serial += 1;
                                tickets.push((serial, r.unwrap()));
                                pending.insert(v, (Pend::Unbatched, serial));
                            }
                        }
                    }
                    Op::Done(i) if !tickets.is_empty() => {
                        let (s, t) = tickets.swap_remove(i % tickets.len());
                        let v = t.vmid();
                        // A ticket is valid iff its VMID is still pending under the release
                        // that produced it.
                        let r = a.invalidation_done(t);
                        if pending.get(&v).is_some_and(|&(_, cur)| cur == s) {
                            pending.remove(&v);
                            prop_assert_eq!(r, Ok(v));
                        } else {
                            prop_assert_eq!(r, Err(VmidError::StaleTicket(v)));
                        }
                    }
                    Op::Done(_) => {}
                    Op::BeginBatch => {
                        let r = a.begin_batch();
                        if batch.is_some() {
                            prop_assert_eq!(r.err(), Some(VmidError::BatchInProgress));
                        } else {
                            let b = r.unwrap();
                            let n = pending.values_mut().filter(|(p, _)| *p == Pend::Unbatched)
                                .map(|(p, _)| *p = Pend::InBatch).count();
                            prop_assert_eq!(b.len() as usize, n);
                            batch = Some(b);
                        }
                    }
                    Op::CompleteBatch => {
                        if let Some(b) = batch.take() {
                            let before = pending.len();
                            pending.retain(|_, (p, _)| *p == Pend::Unbatched);
                            prop_assert_eq!(a.complete_batch(b), Ok((before - pending.len()) as u32));
                        }
                    }
                    Op::CompleteAll => {
                        let n = pending.len();
                        pending.clear();
                        prop_assert_eq!(a.complete_all_pending(), n as u32);
                        if let Some(b) = batch.take() {
                            prop_assert_eq!(a.complete_batch(b), Err(VmidError::StaleBatch));
                        }
                    }
                }
                for v in (0..256).map(Vmid::new) {
                    let st = a.state(v).unwrap();
                    prop_assert_eq!(st == VmidState::PendingInvalidation, pending.contains_key(&v));
                    prop_assert_eq!(st == VmidState::Allocated, live_set.contains(&v));
                }
                let mut model_batch: Vec<_> = pending.iter()
                    .filter(|(_, (p, _))| *p == Pend::InBatch).map(|(v, _)| *v).collect();
                model_batch.sort();
                prop_assert_eq!(a.in_flight().collect::<Vec<_>>(), model_batch);
                // Invariants against the model.
                prop_assert_eq!(a.allocated_count() as usize, live_set.len());
                prop_assert_eq!(a.pending_count() as usize, pending.len());
                prop_assert_eq!(a.reserved_count(), 1);
                prop_assert_eq!(
                    a.free_count() as usize,
                    255 - live_set.len() - pending.len()
                );
                let mut model_pending: Vec<_> = pending.keys().copied().collect();
                model_pending.sort();
                prop_assert_eq!(a.pending().collect::<Vec<_>>(), model_pending);
                prop_assert_eq!(a.state(host).unwrap(), VmidState::Reserved);
            }
        }
    }
}
