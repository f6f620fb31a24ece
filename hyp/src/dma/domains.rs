//! Domain lifetime: the domain table's slots, DOMAIN_ALLOC (a stage-2 table and a VMID)
//! and DOMAIN_FREE (the VMID's quarantine invalidation, then pins, tables and VMID
//! released).

use super::{CpuSeams, DomainFlags, DomainId, Hyp, PagePool, Slot, granule_index};
use crate::addr::{Ipa, PhysRange};
use crate::domain::{Domain, Pending};
use crate::s2mmu::{S2Geometry, Stage2};
use crate::smmu::SmmuIo;
use core::sync::atomic::Ordering;
use host_abi::Error;

impl<I: SmmuIo, M: PagePool, C: CpuSeams> Hyp<I, M, C> {
    /// The slot of host-managed domain `id`: INVALID for the host identity and blocking
    /// domains, NOENT past the table (the slot may be empty).
    pub(super) fn slot_of(&self, id: DomainId) -> Result<(usize, &Slot), Error> {
        if id < DomainId::FIRST_MANAGED {
            return Err(Error::Invalid);
        }
        // An index that does not fit `usize` is past the table as well.
        let idx =
            usize::try_from(id.get() - DomainId::FIRST_MANAGED.get()).map_err(|_| Error::NoEnt)?;
        self.slots.get(idx).map(|s| (idx, s)).ok_or(Error::NoEnt)
    }

    /// DOMAIN_ALLOC: a host-managed domain with its own stage-2 and VMID.
    pub fn domain_alloc(&self, flags: DomainFlags) -> Result<DomainId, Error> {
        if !self.limits.gran[granule_index(flags.granule)] {
            return Err(Error::Invalid);
        }
        let geom = S2Geometry::new(flags.granule, self.limits.ipa_bits, self.limits.pa_bits)?;
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
        let vmid = self.vmids.lock().alloc()?;
        let new_table = || {
            let mut mem = self.pool.clone();
            // SAFETY: every later use of this table passes a clone of `self.pool`, the
            // same memory.
            unsafe { Stage2::new(geom, &mut mem) }
        };
        let s2 = new_table().or_else(|_| {
            // Table lock held: flushing takes slot locks, which come later.
            self.flush_all();
            new_table()
        });
        let s2 = match s2 {
            Ok(t) => t,
            Err(e) => {
                // Never installed anywhere: no TLB holds it, so the quarantine ends at once.
                let mut v = self.vmids.lock();
                if let Ok(ticket) = v.release(vmid) {
                    let _ = v.invalidation_done(ticket);
                }
                // The geometry is valid: only table memory can be missing (NOMEM).
                return Err(e.into());
            }
        };
        let id = DomainId(idx as u64 + DomainId::FIRST_MANAGED.get());
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
    pub fn domain_free(&self, id: DomainId) -> Result<(), Error> {
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
        let ok = self.invalidate_vmid_everywhere(vmid);
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
