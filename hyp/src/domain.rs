//! Host-managed DMA domains: their flags, their stage-2 table and VMID, and the queue of
//! batched unmaps waiting for invalidation.
//!
//! This module knows nothing of locks, SMMUs or hypercalls: [`crate::dma`] owns domains
//! and decides when to invalidate; the same pieces can serve another front-end (a
//! virtio-iommu device) later.
//!
//! # Invalidation of an unmap
//!
//! An unmap records into a clipped [`Gather`] (see [`crate::inval`]): its invalidations
//! clipped to the unmapped range and merged, and the tables it freed, kept until the
//! invalidation completed. Batched domains keep the tables their unmaps empty
//! ([`Gather::keep_empty_tables`], like Linux's io-pgtable, which never frees them), so a
//! later MAP next to a queued unmap reuses the same table and needs no flush; the
//! unclipped spans of tables removed anyway (covered whole by an unmap) are kept
//! ([`Pending::spans`]): a MAP into them first completes the queue, or a stale
//! walk-cache entry could shadow the new table. Their tables are freed when the domain
//! is.

use crate::addr::{Iova, Ipa, PhysAddr, PhysRange};
use crate::inval::Gather;
use crate::s2mmu::{Granule, S2Tlb, Stage2, TableMemory};
use crate::vmid_alloc::Vmid;
use alloc::vec::Vec;
use core::fmt;
use core::ops::ControlFlow;
use host_abi::{Error, domain, domain_flags, prot};

/// A domain, numbered as the ABI numbers them: [`HOST`](Self::HOST) (the host identity
/// domain), [`BLOCKED`](Self::BLOCKED), and host-managed domains from
/// [`FIRST_MANAGED`](Self::FIRST_MANAGED) up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub struct DomainId(pub u64);

impl DomainId {
    /// The host identity domain (the shared host stage-2).
    pub const HOST: Self = Self(domain::HOST);
    /// The blocking domain (every DMA aborts).
    pub const BLOCKED: Self = Self(domain::BLOCKED);
    /// The first host-managed domain.
    pub const FIRST_MANAGED: Self = Self(domain::FIRST_MANAGED);

    /// The raw number.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for DomainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A DMA endpoint: one StreamID of one SMMU (the SMMU's index in Warden's list).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    /// Index of the SMMU.
    pub smmu: u32,
    /// StreamID on that SMMU.
    pub sid: u32,
}

/// What a device may do through a mapping. At least one of the two is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prot {
    /// The device may read.
    pub read: bool,
    /// The device may write.
    pub write: bool,
}

impl Prot {
    /// Read and write.
    pub const RW: Self = Self {
        read: true,
        write: true,
    };

    /// Decodes MAP's prot bits: unknown bits, or neither read nor write, are INVALID.
    pub const fn decode(bits: u64) -> Result<Self, Error> {
        if bits & !prot::ALL != 0 || bits & prot::ALL == 0 {
            return Err(Error::Invalid);
        }
        Ok(Self {
            read: bits & prot::READ != 0,
            write: bits & prot::WRITE != 0,
        })
    }

    /// Whether the mapping would allow nothing.
    pub const fn is_none(self) -> bool {
        !self.read && !self.write
    }
}

/// What DOMAIN_ALLOC's flags ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DomainFlags {
    /// Batched invalidation (else strict).
    pub batched: bool,
    /// The devices do not snoop the CPU caches.
    pub non_coherent: bool,
    /// Translation granule.
    pub granule: Granule,
}

impl DomainFlags {
    /// Decodes DOMAIN_ALLOC's x1: unknown bits or a granule shift other than 0, 12, 14 or
    /// 16 are INVALID.
    pub fn decode(flags: u64) -> Result<Self, Error> {
        if flags & !domain_flags::ALL != 0 {
            return Err(Error::Invalid);
        }
        let shift = (flags >> domain_flags::GRANULE_SHIFT) & domain_flags::GRANULE_MASK;
        let granule = match shift {
            0 | 12 => Granule::Size4K,
            14 => Granule::Size16K,
            16 => Granule::Size64K,
            _ => return Err(Error::Invalid),
        };
        Ok(Self {
            batched: flags & domain_flags::BATCHED != 0,
            non_coherent: flags & domain_flags::NON_COHERENT != 0,
            granule,
        })
    }
}

pub use crate::inval::{InvRange, merge_ranges};

/// Whether `[start, end)` overlaps one of `ranges`.
fn overlaps(ranges: &[InvRange], start: u64, end: u64) -> bool {
    ranges.iter().any(|r| r.start < end && start < r.end)
}

/// A mapped piece found by [`collect_leaves`]: IOVA and the pages it reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaf {
    /// First IOVA.
    pub iova: Iova,
    /// The physical pages.
    pub pa: PhysRange,
}

/// What [`collect_leaves`] found.
#[derive(Debug, Default)]
pub struct Leaves {
    /// Mapped pieces in IOVA order; IOVA- and PA-contiguous leaves merged.
    pub leaves: Vec<Leaf>,
    /// The walk covered `[iova, end)`: the range may be processed up to here.
    pub end: Iova,
    /// Bytes mapped in `[iova, end)`.
    pub mapped: u64,
}

/// Collects the mapped pieces of `[iova, end)` in `s2`, stopping before the leaf that
/// would take the total past `budget` bytes (but always taking at least one). NOMEM if
/// the list cannot grow.
pub fn collect_leaves<M: TableMemory + ?Sized>(
    s2: &Stage2,
    mem: &M,
    iova: Iova,
    end: Iova,
    budget: u64,
) -> Result<Leaves, Error> {
    let (iova, end) = (iova.get(), end.get());
    let geom = s2.geometry();
    let mut out = Leaves {
        end: Iova(end),
        ..Leaves::default()
    };
    let mut nomem = false;
    let walked = s2.walk(mem, Ipa(iova), end - iova, |at, desc, level| {
        if !desc.is_leaf(level) {
            return ControlFlow::Continue(());
        }
        let span = geom.entry_size(level);
        let s = at.get().max(iova);
        let e = (at.get() + span).min(end);
        if out.mapped != 0 && out.mapped + (e - s) > budget {
            out.end = Iova(s);
            return ControlFlow::Break(());
        }
        let pa = desc.address().get() + (s - at.get());
        out.mapped += e - s;
        if let Some(last) = out.leaves.last_mut()
            && last.iova.get() + last.pa.size == s
            && last.pa.end() == pa
        {
            last.pa.size += e - s;
            return ControlFlow::Continue(());
        }
        if out.leaves.try_reserve(1).is_err() {
            nomem = true;
            return ControlFlow::Break(());
        }
        out.leaves.push(Leaf {
            iova: Iova(s),
            pa: PhysRange::new(pa, e - s),
        });
        ControlFlow::Continue(())
    });
    if nomem {
        return Err(Error::NoMem);
    }
    let _ = walked?;
    Ok(out)
}

/// Leaves (L1, L2, L3) in `[iova, end)` of `s2`, by level.
pub fn count_leaves<M: TableMemory + ?Sized>(
    s2: &Stage2,
    mem: &M,
    iova: Iova,
    end: Iova,
) -> [u64; 3] {
    let (iova, end) = (iova.get(), end.get());
    let mut n = [0u64; 3];
    let _ = s2.walk(mem, Ipa(iova), end - iova, |_, desc, level| {
        if desc.is_leaf(level) && (1..=3).contains(&level) {
            n[level as usize - 1] += 1;
        }
        ControlFlow::<()>::Continue(())
    });
    n
}

/// Whether anything is mapped in `[iova, end)`.
pub fn any_mapped<M: TableMemory + ?Sized>(s2: &Stage2, mem: &M, iova: Iova, end: Iova) -> bool {
    let (iova, end) = (iova.get(), end.get());
    matches!(
        s2.walk(mem, Ipa(iova), end - iova, |_, desc, level| {
            if desc.is_leaf(level) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        }),
        Ok(ControlFlow::Break(()))
    )
}

/// Batched unmaps whose invalidation has not been issued yet. Their pages stay pinned and
/// their freed tables allocated until [`crate::dma`] flushes the queue.
#[derive(Debug, Default)]
pub struct Pending {
    /// IOVA ranges to invalidate.
    pub ranges: Vec<InvRange>,
    /// Unclipped spans of tables freed by the queued unmaps (see the module docs).
    pub spans: Vec<InvRange>,
    /// Invalidate the whole VMID instead (a list could not grow).
    pub all: bool,
    /// Pages to unpin once invalidated.
    pub pins: Vec<PhysRange>,
    /// Tables to free once invalidated.
    pub tables: Vec<(PhysAddr, usize)>,
    /// Unmapped ranges queued (the threshold's unit).
    pub entries: u32,
    /// Pages queued.
    pub pages: u64,
    /// When the oldest queued unmap happened.
    pub oldest_ns: Option<u64>,
}

impl Pending {
    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
            && !self.all
            && self.ranges.is_empty()
            && self.pins.is_empty()
            && self.tables.is_empty()
    }

    /// Whether a queued unmap touched `[start, end)` (its TLB or walk-cache entries may
    /// still be live).
    pub fn touches(&self, start: Iova, end: Iova) -> bool {
        let (start, end) = (start.get(), end.get());
        self.all || overlaps(&self.ranges, start, end) || overlaps(&self.spans, start, end)
    }

    /// Whether a queued unmap holds a pin on a page of `r`.
    pub fn pins_overlap(&self, r: &PhysRange) -> bool {
        self.pins.iter().any(|p| p.overlaps(r))
    }

    /// Moves one unmap's invalidations, tables and pins into the queue. If the lists
    /// cannot grow, or an invalidation the unmap already issued (break-before-make of a
    /// split block) was not confirmed, nothing is moved and `Err` returns the gather: the
    /// caller completes that unmap at once, which for a failed gather means releasing
    /// nothing (a later flush must never release what an unconfirmed invalidation
    /// covered).
    pub fn push<V: S2Tlb>(
        &mut self,
        g: Gather<V>,
        pins: &[Leaf],
        now_ns: u64,
    ) -> Result<(), Gather<V>> {
        if g.failed {
            return Err(g);
        }
        let grow = self.ranges.try_reserve(g.ranges.len()).is_ok()
            && self.spans.try_reserve(g.spans.len()).is_ok()
            && self.tables.try_reserve(g.tables.len()).is_ok()
            && self.pins.try_reserve(pins.len()).is_ok();
        if !grow {
            return Err(g);
        }
        self.ranges.extend_from_slice(&g.ranges);
        self.spans.extend_from_slice(&g.spans);
        self.tables.extend_from_slice(&g.tables);
        self.all |= g.all;
        let mut pages = 0;
        for l in pins {
            self.pins.push(l.pa);
            pages += l.pa.size / crate::PAGE;
        }
        self.pages += pages;
        self.entries += 1;
        self.oldest_ns.get_or_insert(now_ns);
        Ok(())
    }

    /// Empties the queue, returning it.
    pub fn take(&mut self) -> Pending {
        core::mem::take(self)
    }
}

/// A host-managed DMA domain.
#[derive(Debug)]
pub struct Domain {
    /// Its ID (DOMAIN_ALLOC's result).
    pub id: DomainId,
    /// What it was created with.
    pub flags: DomainFlags,
    /// Its VMID, from the shared allocator.
    pub vmid: Vmid,
    /// Its stage-2 table (IOVA → PA).
    pub s2: Stage2,
    /// Batched unmaps not yet invalidated.
    pub pending: Pending,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags() {
        assert_eq!(
            DomainFlags::decode(0),
            Ok(DomainFlags {
                batched: false,
                non_coherent: false,
                granule: Granule::Size4K
            })
        );
        let f = DomainFlags::decode(3 | (16 << 8)).unwrap();
        assert!(f.batched && f.non_coherent);
        assert_eq!(f.granule, Granule::Size64K);
        assert_eq!(
            DomainFlags::decode(14 << 8).unwrap().granule,
            Granule::Size16K
        );
        assert_eq!(
            DomainFlags::decode(12 << 8).unwrap().granule,
            Granule::Size4K
        );
        for bad in [4, 1 << 16, 13 << 8, 21 << 8, u64::MAX] {
            assert_eq!(DomainFlags::decode(bad), Err(Error::Invalid), "{bad:#x}");
        }
    }
}
