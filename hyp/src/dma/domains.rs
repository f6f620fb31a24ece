//! Domain lifetime: the domain table's slots, DOMAIN_ALLOC (a stage-2 table and a VMID)
//! and DOMAIN_FREE (the VMID's quarantine invalidation, then pins, tables and VMID
//! released).

use super::*;

impl<I: SmmuIo, M: PagePool, C: CpuSeams> Hyp<I, M, C> {
    pub(super) fn slot_of(&self, id: u64) -> Result<(usize, &Slot), Error> {
        if id < domain::FIRST_MANAGED {
            return Err(Error::Invalid);
        }
        let idx = usize::try_from(id - domain::FIRST_MANAGED).map_err(|_| Error::NoEnt)?;
        self.slots.get(idx).map(|s| (idx, s)).ok_or(Error::NoEnt)
    }

    /// DOMAIN_ALLOC: a host-managed domain with its own stage-2 and VMID.
    pub fn domain_alloc(&self, flags: u64) -> Result<u64, Error> {
        let flags = DomainFlags::decode(flags)?;
        if !self.limits.gran[granule_index(flags.granule)] {
            return Err(Error::Invalid);
        }
        let geom = S2Geometry::new(flags.granule, self.limits.ipa_bits, self.limits.pa_bits)
            .map_err(|_| Error::Invalid)?;
        let mut table = self.table.lock();
        if table.used >= self.slots.len() {
            return Err(Error::NoSpc);
        }
        let n = self.slots.len();
        let Some(idx) = (0..n)
            .map(|i| (table.hint + i) % n)
            .find(|&i| self.slots[i].dom.lock().is_none())
        else {
            return Err(Error::NoSpc);
        };
        let vmid = self.vmids.lock().alloc().map_err(|_| Error::NoSpc)?;
        let mut s2 = None;
        for attempt in 0..2 {
            let mut mem = self.pool.clone();
            // SAFETY: every later use of this table passes a clone of `self.pool`, the
            // same memory.
            match unsafe { Stage2::new(geom, &mut mem) } {
                Ok(t) => {
                    s2 = Some(t);
                    break;
                }
                Err(_) if attempt == 0 => {
                    // Table lock held: flushing takes slot locks, which come later.
                    self.flush_all();
                }
                Err(_) => {}
            }
        }
        let Some(s2) = s2 else {
            // Never installed anywhere: no TLB holds it, so the quarantine ends at once.
            let mut v = self.vmids.lock();
            if let Ok(ticket) = v.release(vmid) {
                let _ = v.invalidation_done(ticket);
            }
            return Err(Error::NoMem);
        };
        let id = idx as u64 + domain::FIRST_MANAGED;
        let slot = &self.slots[idx];
        slot.attached.store(0, Ordering::Relaxed);
        slot.smmu_mask.store(0, Ordering::Relaxed);
        slot.oldest_ns.store(u64::MAX, Ordering::Relaxed);
        slot.pending_pages.store(0, Ordering::Relaxed);
        *slot.dom.lock() = Some(Domain {
            id,
            flags,
            vmid,
            s2,
            pending: Pending::default(),
        });
        table.used += 1;
        table.hint = (idx + 1) % n;
        Ok(id)
    }

    /// DOMAIN_FREE: BUSY while an endpoint is attached. Unmaps everything, destroys the
    /// tables and returns the VMID through the quarantine (I4): `TLBI_S12_VMALL` +
    /// `CMD_SYNC` on every SMMU (and a CPU `TLBI VMALLS12E1IS` on the CPU-TLBI path)
    /// before pins, tables and VMID are released.
    pub fn domain_free(&self, id: u64) -> Result<(), Error> {
        let (_, slot) = self.slot_of(id)?;
        let dom = {
            let mut table = self.table.lock();
            let mut guard = slot.dom.lock();
            if guard.is_none() {
                return Err(Error::NoEnt);
            }
            if slot.attached.load(Ordering::Relaxed) != 0 {
                return Err(Error::Busy);
            }
            table.used -= 1;
            slot.oldest_ns.store(u64::MAX, Ordering::Relaxed);
            slot.pending_pages.store(0, Ordering::Relaxed);
            guard.take()
        };
        let Some(mut dom) = dom else {
            return Err(Error::NoEnt);
        };
        let vmid = dom.vmid.raw();
        let ticket = self.vmids.lock().release(dom.vmid);
        let mut ok = true;
        {
            let mut mem = self.pool.clone();
            let mut set = self.smmus.lock();
            for (i, smmu) in set.smmus.iter_mut().enumerate() {
                smmu.tlbi_vmall(&mut mem, vmid);
                if let Err(e) = smmu.sync(&mut mem) {
                    log::error!("smmu{i}: VMID {vmid} quarantine invalidation failed: {e}");
                    ok = false;
                }
            }
        }
        if self.cpu_path() {
            self.cpu.clone().tlbi_vmid_all(vmid);
            self.stats.domain_cpu_tlbis.fetch_add(1, Ordering::Relaxed);
        }
        let pending = dom.pending.take();
        if !ok {
            // The SMMUs may still use the tables and reach the pages: keep everything.
            log::error!("domain {id}: freed without confirmed invalidation; pages stay pinned");
            self.stats
                .leaked_pages
                .fetch_add(pending.pages, Ordering::Relaxed);
            return Ok(());
        }
        let mut mem = self.pool.clone();
        let nc = dom.flags.non_coherent;
        {
            let mut cpu = self.cpu.clone();
            let mut host = self.host.lock();
            let size = dom.s2.geometry().ipa_size();
            let _ = dom.s2.walk(&mem, Ipa(0), size, |at, desc, level| {
                if desc.is_leaf(level) {
                    let span = dom.s2.geometry().entry_size(level);
                    let r = PhysRange::new(desc.address().get(), span);
                    if nc {
                        cpu.clean_inval_poc(r.base, r.size);
                    }
                    self.unpin(&mut host.mem, r);
                }
                let _ = at;
                core::ops::ControlFlow::<()>::Continue(())
            });
            for r in &pending.pins {
                if nc {
                    cpu.clean_inval_poc(r.base, r.size);
                }
                self.unpin(&mut host.mem, *r);
            }
        }
        for (pa, size) in pending.tables {
            // SAFETY: deferred by the domain's unmaps; the whole VMID was invalidated and
            // synchronised above, so no walker refers to it.
            unsafe { mem.free(pa, size) };
        }
        dom.s2.destroy(&mut mem);
        if let Ok(ticket) = ticket {
            let _ = self.vmids.lock().invalidation_done(ticket);
        }
        Ok(())
    }
}
