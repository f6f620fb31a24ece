//! MAP, UNMAP and IOVA_TO_PHYS: changes and lookups of a host-managed domain's stage-2,
//! with the pins of the pages it maps. Completing an unmap (now or batched) is
//! [`super::flush`]'s.

use super::*;

impl<I: SmmuIo, M: PagePool, C: CpuSeams> Hyp<I, M, C> {
    /// MAP: `[iova, iova + size)` → `[pa, pa + size)` with `prot`. Returns bytes mapped.
    pub fn map(&self, id: u64, iova: u64, pa: u64, size: u64, prot: u64) -> Result<u64, Error> {
        if prot & !prot::ALL != 0 || prot & prot::ALL == 0 || size == 0 {
            return Err(Error::Invalid);
        }
        let (_, slot) = self.slot_of(id)?;
        let attrs = S2Attrs::normal().with_access(prot & prot::READ != 0, prot & prot::WRITE != 0);
        match self.map_once(slot, iova, pa, size, attrs) {
            Err(Error::NoMem) => {
                self.flush_all();
                self.map_once(slot, iova, pa, size, attrs)
            }
            r => r,
        }
    }

    fn map_once(
        &self,
        slot: &Slot,
        iova: u64,
        pa: u64,
        size: u64,
        attrs: S2Attrs,
    ) -> Result<u64, Error> {
        let mut guard = slot.dom.lock();
        let dom = guard.as_mut().ok_or(Error::NoEnt)?;
        let geom = dom.s2.geometry();
        let g = geom.granule().size();
        if !iova.is_multiple_of(g) || !pa.is_multiple_of(g) || !size.is_multiple_of(g) {
            return Err(Error::Invalid);
        }
        let iova_end = iova.checked_add(size).ok_or(Error::Invalid)?;
        pa.checked_add(size).ok_or(Error::Invalid)?;
        if iova_end > geom.ipa_size() {
            return Err(Error::Invalid);
        }
        let mut mem = self.pool.clone();
        if any_mapped(&dom.s2, &mem, iova, iova_end) {
            return Err(Error::Exist);
        }
        let chunk = size.min(self.cfg.max_map_bytes);
        if dom.flags.batched && dom.pending.touches(iova, iova + chunk) {
            // A stale translation of a queued unmap must not shadow the new mapping.
            self.flush_domain(slot, dom);
        }
        let pages = PhysRange::new(pa, chunk);
        self.host.lock().mem.host_pin_dma(&mem, pages)?;
        let mut cpu = self.cpu.clone();
        if dom.flags.non_coherent {
            // What the CPU wrote must be in memory before the device can read it.
            cpu.clean_inval_poc(PhysAddr(pa), chunk);
        }
        let mut g = self.dom_gather(slot, dom, iova, iova + chunk);
        let r = dom
            .s2
            .map_gathered(&mut mem, &mut g, Ipa(iova), PhysAddr(pa), chunk, attrs);
        let done = match r {
            Ok(()) => chunk,
            Err(S2Error::OutOfMemory { done }) => done,
            Err(e) => {
                log::error!("MAP {iova:#x}: unexpected table error {e}");
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
                PhysRange::new(pa + done, chunk - done),
            );
        }
        if done == 0 {
            return Err(match r {
                Err(S2Error::OutOfMemory { .. }) => Error::NoMem,
                _ => Error::Invalid,
            });
        }
        let n = count_leaves(&dom.s2, &mem, iova, iova + done);
        for (c, n) in self.stats.leaves.iter().zip(n) {
            c.fetch_add(n, Ordering::Relaxed);
        }
        Ok(done)
    }

    /// UNMAP: removes the translations of `[iova, iova + size)`. Returns the bytes
    /// processed (see the module docs).
    pub fn unmap(&self, id: u64, iova: u64, size: u64) -> Result<u64, Error> {
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

    fn unmap_once(&self, slot: &Slot, iova: u64, size: u64) -> Result<u64, Error> {
        let mut guard = slot.dom.lock();
        let dom = guard.as_mut().ok_or(Error::NoEnt)?;
        let geom = dom.s2.geometry();
        let g = geom.granule().size();
        if !iova.is_multiple_of(g) || !size.is_multiple_of(g) {
            return Err(Error::Invalid);
        }
        let end = iova.checked_add(size).ok_or(Error::Invalid)?;
        if end > geom.ipa_size() {
            return Err(Error::Invalid);
        }
        let mut mem = self.pool.clone();
        let mut found = collect_leaves(&dom.s2, &mem, iova, end, self.cfg.max_map_bytes)?;
        if found.mapped == 0 {
            return Err(Error::NoEnt);
        }
        let mut gather = self
            .dom_gather(slot, dom, iova, found.end)
            .keep_empty_tables(dom.flags.batched);
        let processed =
            match dom
                .s2
                .unmap_gathered(&mut mem, &mut gather, Ipa(iova), found.end - iova)
            {
                Ok(()) => found.end,
                Err(S2Error::OutOfMemory { done }) => iova + done,
                Err(e) => {
                    log::error!("UNMAP {iova:#x}: unexpected table error {e}");
                    iova
                }
            };
        // Keep the pins of what was actually unmapped.
        found.leaves.retain_mut(|l| {
            if l.iova >= processed {
                return false;
            }
            l.pa.size = l.pa.size.min(processed - l.iova);
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
    pub fn iova_to_phys(&self, id: u64, iova: u64) -> Result<u64, Error> {
        let (_, slot) = self.slot_of(id)?;
        let guard = slot.dom.lock();
        let dom = guard.as_ref().ok_or(Error::NoEnt)?;
        if iova >= dom.s2.geometry().ipa_size() {
            return Err(Error::Invalid);
        }
        dom.s2
            .translate(&self.pool, Ipa(iova))
            .map(|(pa, _, _)| pa.get())
            .ok_or(Error::NoEnt)
    }
}
