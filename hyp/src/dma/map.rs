//! MAP, UNMAP and IOVA_TO_PHYS: changes and lookups of a host-managed domain's stage-2,
//! with the pins of the pages it maps. Completing an unmap (now or batched) is
//! [`super::flush`]'s.

use super::{CpuSeams, DomainId, Hyp, PagePool, Prot, Slot};
use crate::PAGE;
use crate::addr::{Iova, PhysAddr, PhysRange};
use crate::domain::{any_mapped, collect_leaves, count_leaves};
use crate::s2mmu::{S2Attrs, S2Error};
use crate::smmu::SmmuIo;
use core::sync::atomic::Ordering;
use host_abi::Error;

impl<I: SmmuIo, M: PagePool, C: CpuSeams> Hyp<I, M, C> {
    /// MAP: `[iova, iova + pages.size)` → `pages` with `prot`. Returns the bytes mapped
    /// from the start (see the module docs of [`crate::dma`]).
    pub fn map(
        &self,
        id: DomainId,
        iova: Iova,
        pages: PhysRange,
        prot: Prot,
    ) -> Result<u64, Error> {
        if prot.is_none() || pages.size == 0 {
            return Err(Error::Invalid);
        }
        let (_, slot) = self.slot_of(id)?;
        let attrs = S2Attrs::normal().with_access(prot.read, prot.write);
        match self.map_once(slot, iova, pages, attrs) {
            Err(Error::NoMem) => {
                self.flush_all();
                self.map_once(slot, iova, pages, attrs)
            }
            r => r,
        }
    }

    fn map_once(
        &self,
        slot: &Slot,
        iova: Iova,
        pages: PhysRange,
        attrs: S2Attrs,
    ) -> Result<u64, Error> {
        let (pa, size) = (pages.base, pages.size);
        let mut guard = slot.dom.lock();
        let dom = guard.as_mut().ok_or(Error::NoEnt)?;
        let geom = dom.s2.geometry();
        let g = geom.granule().size();
        if !iova.is_aligned(g) || !pa.is_aligned(g) || !size.is_multiple_of(g) {
            return Err(Error::Invalid);
        }
        let iova_end = iova.checked_add(size).ok_or(Error::Invalid)?;
        pa.checked_add(size).ok_or(Error::Invalid)?;
        if iova_end.get() > geom.ipa_size() {
            return Err(Error::Invalid);
        }
        let mut mem = self.pool.clone();
        if any_mapped(&dom.s2, &mem, iova, iova_end) {
            return Err(Error::Exist);
        }
        let chunk = size.min(self.cfg.max_map_bytes);
        // Cannot wrap: `iova + size` did not.
        let chunk_end = Iova(iova.get() + chunk);
        if dom.flags.batched && dom.pending.touches(iova, chunk_end) {
            // A stale translation of a queued unmap must not shadow the new mapping.
            self.flush_domain(slot, dom);
        }
        let pinned = PhysRange {
            base: pa,
            size: chunk,
        };
        self.host.lock().mem.host_pin_dma(&mem, pinned)?;
        let mut cpu = self.cpu.clone();
        if dom.flags.non_coherent {
            // What the CPU wrote must be in memory before the device can read it.
            cpu.clean_inval_poc(pa, chunk);
        }
        let mut g = self.dom_gather(slot, dom, iova, chunk_end);
        let r = dom
            .s2
            .map_gathered(&mut mem, &mut g, iova.ipa(), pa, chunk, attrs);
        let done = match r {
            Ok(()) => chunk,
            Err(S2Error::OutOfMemory { done }) => done,
            Err(e) => {
                log::error!("MAP {iova}: unexpected table error {e}");
                0
            }
        };
        // Nothing valid was replaced (the range was unmapped), so there is normally
        // nothing to invalidate; if there is, it completes before tables are freed.
        if g.complete() {
            g.free_tables(&mut mem);
        } else {
            self.leak_tables(&mut g);
        }
        if done < chunk {
            self.unpin(
                &mut self.host.lock().mem,
                PhysRange::new(pa.get() + done, chunk - done),
            );
        }
        if done == 0 {
            // Out of table memory: NOMEM; an unexpected table error: INVALID.
            return Err(r.err().map_or(Error::Invalid, Error::from));
        }
        let n = count_leaves(&dom.s2, &mem, iova, Iova(iova.get() + done));
        for (c, n) in self.stats.leaves.iter().zip(n) {
            c.fetch_add(n, Ordering::Relaxed);
        }
        Ok(done)
    }

    /// UNMAP: removes the translations of `[iova, iova + size)`. Returns the bytes
    /// processed (see the module docs).
    pub fn unmap(&self, id: DomainId, iova: Iova, size: u64) -> Result<u64, Error> {
        if size == 0 {
            return Err(Error::Invalid);
        }
        let (_, slot) = self.slot_of(id)?;
        match self.unmap_once(slot, iova, size) {
            Err(Error::NoMem) => {
                self.flush_all();
                self.unmap_once(slot, iova, size)
            }
            r => r,
        }
    }

    fn unmap_once(&self, slot: &Slot, start: Iova, size: u64) -> Result<u64, Error> {
        let mut guard = slot.dom.lock();
        let dom = guard.as_mut().ok_or(Error::NoEnt)?;
        let geom = dom.s2.geometry();
        let g = geom.granule().size();
        if !start.is_aligned(g) || !size.is_multiple_of(g) {
            return Err(Error::Invalid);
        }
        let end = start.checked_add(size).ok_or(Error::Invalid)?;
        if end.get() > geom.ipa_size() {
            return Err(Error::Invalid);
        }
        let mut mem = self.pool.clone();
        let mut found = collect_leaves(&dom.s2, &mem, start, end, self.cfg.max_map_bytes)?;
        if found.mapped == 0 {
            return Err(Error::NoEnt);
        }
        let mut gather = self
            .dom_gather(slot, dom, start, found.end)
            .keep_empty_tables(dom.flags.batched);
        let iova = start.get();
        let processed =
            match dom
                .s2
                .unmap_gathered(&mut mem, &mut gather, start.ipa(), found.end.get() - iova)
            {
                Ok(()) => found.end.get(),
                Err(S2Error::OutOfMemory { done }) => iova + done,
                Err(e) => {
                    log::error!("UNMAP {start}: unexpected table error {e}");
                    iova
                }
            };
        // Keep the pins of what was actually unmapped.
        found.leaves.retain_mut(|l| {
            if l.iova.get() >= processed {
                return false;
            }
            l.pa.size = l.pa.size.min(processed - l.iova.get());
            true
        });
        if processed == iova {
            // Nothing unmapped (no memory to split a block): nothing to release.
            if gather.complete() {
                gather.free_tables(&mut mem);
            } else {
                self.leak_tables(&mut gather);
            }
            return Err(Error::NoMem);
        }
        if dom.flags.batched {
            let now = self.cpu.now_ns();
            match dom.pending.push(gather, &found.leaves, now) {
                Ok(()) => {
                    let pages: u64 = found.leaves.iter().map(|l| l.pa.size / PAGE).sum();
                    slot.pending_pages.fetch_add(pages, Ordering::Relaxed);
                    if slot.oldest_ns.load(Ordering::Relaxed) == u64::MAX {
                        slot.oldest_ns.store(now, Ordering::Relaxed);
                    }
                    self.next_deadline.fetch_min(
                        dom.pending
                            .oldest_ns
                            .unwrap_or(now)
                            .saturating_add(self.cfg.deadline_ns),
                        Ordering::Relaxed,
                    );
                    if dom.pending.entries >= self.cfg.batch_threshold {
                        self.flush_domain(slot, dom);
                    }
                }
                Err(g) => {
                    // No room in the queue, or an invalidation inside the call was not
                    // confirmed: complete this unmap now (releasing nothing if failed).
                    gather = g;
                    self.complete_unmap(dom.flags.non_coherent, &mut gather, &found.leaves);
                }
            }
        } else {
            self.complete_unmap(dom.flags.non_coherent, &mut gather, &found.leaves);
        }
        Ok(processed - iova)
    }

    /// IOVA_TO_PHYS: the physical address `iova` reaches in the domain; NOENT if unmapped.
    pub fn iova_to_phys(&self, id: DomainId, iova: Iova) -> Result<PhysAddr, Error> {
        let (_, slot) = self.slot_of(id)?;
        let guard = slot.dom.lock();
        let dom = guard.as_ref().ok_or(Error::NoEnt)?;
        if iova.get() >= dom.s2.geometry().ipa_size() {
            return Err(Error::Invalid);
        }
        dom.s2
            .translate(&self.pool, iova.ipa())
            .map(|(pa, _, _)| pa)
            .ok_or(Error::NoEnt)
    }
}
