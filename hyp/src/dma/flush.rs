//! Domain invalidation and release: [`DomInv`] (SMMU commands on the SMMUs a domain was
//! attached to, or CPU TLBIs by VMID with BTM), the quarantine invalidation of a freed
//! domain's VMID, the completion of a strict unmap, the batched queue's flush policy
//! (threshold, deadline, pool pressure) and FLUSH. Pins and tables are released here,
//! and only after the invalidation covering them completed.

use super::{CpuSeams, DomainId, Hyp, MAX_FLUSH_RANGES, PagePool, Slot, SmmuSet};
use crate::PAGE;
use crate::addr::{Iova, Ipa, PhysRange};
use crate::domain::{Domain, Leaf};
use crate::host_mem::HostMem;
use crate::inval::{CpuInval, DomainFanout, Fanout, Gather, InvalidationCounts, Limits};
use crate::s2mmu::{Granule, S2Tlb};
use crate::smmu::{SmmuIo, TLBI_RANGE_MAX_PAGES};
use core::sync::atomic::Ordering;
use host_abi::Error;

/// A domain's invalidation for one operation: its [`DomainFanout`] over the SMMU set,
/// with [`VmidCpu`] as its CPU side.
pub(super) type DomInv<'h, I, M, C> = DomainFanout<'h, VmidCpu<C>, SmmuSet<I, M>, I, M>;

/// The CPU side of a domain's fan-out: TLBIs under the domain's VMID (the CPU seam
/// adapted to [`CpuInval`]).
#[derive(Clone)]
pub(super) struct VmidCpu<C> {
    cpu: C,
    vmid: u16,
}

impl<C: CpuSeams> CpuInval for VmidCpu<C> {
    fn barrier(&mut self) {
        self.cpu.dsb_ishst();
    }
    fn range(&mut self, ipa: Ipa, size: u64, granule: Granule, leaf: bool) {
        self.cpu
            .tlbi_vmid_range(self.vmid, ipa, size, granule, leaf);
    }
    fn all(&mut self) {
        self.cpu.tlbi_vmid_all(self.vmid);
    }
}

impl<I: SmmuIo, M: PagePool, C: CpuSeams> Hyp<I, M, C> {
    /// `TLBI_S12_VMALL` + `CMD_SYNC` for `vmid` on every SMMU (and a CPU
    /// `TLBI VMALLS12E1IS` on the CPU-TLBI path): the quarantine of a freed domain's VMID.
    /// `false` if an SMMU did not confirm it.
    pub(super) fn invalidate_vmid_everywhere(&self, vmid: u16) -> bool {
        // The one fan-out, aimed at every SMMU whatever the domain was attached to, with
        // the CPUs too on the CPU-TLBI path.
        let cpu = VmidCpu {
            cpu: self.cpu.clone(),
            vmid,
        };
        let mut mem = self.pool.clone();
        let mut counts = InvalidationCounts::default();
        let ok = {
            let mut set = self.smmus.lock();
            let mut fan = Fanout::new(
                cpu,
                self.cpu_path(),
                false,
                &mut set.smmus,
                &mut mem,
                vmid,
                Granule::Size4K,
                &mut counts,
            );
            fan.invalidate_all();
            fan.complete()
        };
        self.stats
            .domain_cpu_tlbis
            .fetch_add(counts.cpu_tlbi, Ordering::Relaxed);
        ok
    }

    /// Completes a strict unmap: one invalidation per range and one `CMD_SYNC` per SMMU,
    /// then (only then) tables freed, caches invalidated and pins released.
    pub(super) fn complete_unmap<V: S2Tlb>(&self, nc: bool, g: &mut Gather<V>, leaves: &[Leaf]) {
        if !g.complete() {
            self.leak_tables(g);
            self.leak_pins(leaves.iter().map(|l| l.pa));
            return;
        }
        g.free_tables(&mut self.pool.clone());
        if nc {
            let mut cpu = self.cpu.clone();
            for l in leaves {
                cpu.clean_inval_poc(l.pa.base, l.pa.size);
            }
        }
        let mut host = self.host.lock();
        for l in leaves {
            self.unpin(&mut host.mem, l.pa);
        }
    }

    pub(super) fn leak_tables<V>(&self, g: &mut Gather<V>) {
        if !g.tables.is_empty() {
            log::error!("{} table(s) kept: invalidation unconfirmed", g.tables.len());
            let n: u64 = g.tables.iter().map(|&(_, size)| size as u64).sum();
            self.stats
                .leaked_table_bytes
                .fetch_add(n, Ordering::Relaxed);
            g.tables.clear();
        }
    }

    /// Drops one pin from every page of `r`; if the pin bookkeeping has no memory for
    /// it, the pages stay pinned for good (safe) and are counted as leaked.
    pub(super) fn unpin(&self, host: &mut HostMem, r: PhysRange) {
        if host.host_unpin_dma(r).is_err() {
            log::error!("{r:?}: no memory to record the unpin; the pages stay pinned");
            self.stats
                .leaked_pages
                .fetch_add(r.size / PAGE, Ordering::Relaxed);
        }
    }

    fn leak_pins(&self, pins: impl Iterator<Item = PhysRange>) {
        let n: u64 = pins.map(|r| r.size / PAGE).sum();
        if n != 0 {
            log::error!("{n} page(s) stay pinned: invalidation unconfirmed");
            self.stats.leaked_pages.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub(super) fn dom_inv<'h>(&'h self, slot: &'h Slot, dom: &Domain) -> DomInv<'h, I, M, C> {
        let vmid = dom.vmid.raw();
        DomainFanout::new(
            VmidCpu {
                cpu: self.cpu.clone(),
                vmid,
            },
            (!self.cpu_path()).then_some(&self.smmus),
            &slot.smmu_mask,
            self.pool.clone(),
            vmid,
            dom.s2.geometry().granule(),
            &self.stats.domain_cpu_tlbis,
        )
    }

    /// When a domain's gathered ranges become one whole-VMID invalidation.
    fn dom_limits(dom: &Domain) -> Limits {
        Limits {
            max_ranges: MAX_FLUSH_RANGES,
            max_range_granules: TLBI_RANGE_MAX_PAGES,
            granule: dom.s2.geometry().granule(),
        }
    }

    /// The gather of one operation on `[start, end)` of `dom`.
    pub(super) fn dom_gather<'h>(
        &'h self,
        slot: &'h Slot,
        dom: &Domain,
        start: Iova,
        end: Iova,
    ) -> Gather<DomInv<'h, I, M, C>> {
        let limits = Self::dom_limits(dom);
        Gather::clipped(self.dom_inv(slot, dom), start.get(), end.get(), limits)
    }

    /// Completes every queued unmap of `dom`: invalidation + one `CMD_SYNC` per SMMU,
    /// then tables freed and pins released (I3).
    pub(super) fn flush_domain(&self, slot: &Slot, dom: &mut Domain) {
        if dom.pending.is_empty() {
            return;
        }
        let mut p = dom.pending.take();
        slot.oldest_ns.store(u64::MAX, Ordering::Relaxed);
        slot.pending_pages.fetch_sub(p.pages, Ordering::Relaxed);
        let mut inv = self.dom_inv(slot, dom);
        if (!p.ranges.is_empty() || p.all)
            && !crate::inval::issue(&mut inv, &mut p.ranges, p.all, &Self::dom_limits(dom))
        {
            log::error!("domain {}: flush unconfirmed", dom.id);
            self.stats
                .leaked_pages
                .fetch_add(p.pages, Ordering::Relaxed);
            return;
        }
        let mut mem = self.pool.clone();
        for (pa, size) in p.tables {
            // SAFETY: deferred by this domain's unmaps; the invalidation covering them
            // completed above.
            unsafe { mem.free(pa, size) };
        }
        if dom.flags.non_coherent {
            let mut cpu = self.cpu.clone();
            for r in &p.pins {
                cpu.clean_inval_poc(r.base, r.size);
            }
        }
        let mut host = self.host.lock();
        for r in &p.pins {
            self.unpin(&mut host.mem, *r);
        }
    }

    /// Flushes every batched queue (pool pressure). Takes one slot lock at a time: call
    /// with no slot or later lock held.
    pub(super) fn flush_all(&self) {
        self.flush_where(|_| true);
    }

    /// Flushes the queues of the domains for which `want` says so (checked under the
    /// domain's lock). Returns how many were flushed.
    pub(super) fn flush_where(&self, mut want: impl FnMut(&Domain) -> bool) -> usize {
        let mut n = 0;
        for slot in &self.slots {
            if slot.oldest_ns.load(Ordering::Relaxed) == u64::MAX {
                continue;
            }
            let mut guard = slot.dom.lock();
            if let Some(dom) = guard.as_mut()
                && !dom.pending.is_empty()
                && want(dom)
            {
                self.flush_domain(slot, dom);
                n += 1;
            }
        }
        n
    }

    /// Flushes every queue older than the deadline. Called at the start of every call.
    pub(super) fn deadline_check(&self) {
        let now = self.cpu.now_ns();
        if now < self.next_deadline.load(Ordering::Relaxed) {
            return;
        }
        self.next_deadline.store(u64::MAX, Ordering::Relaxed);
        let deadline = self.cfg.deadline_ns;
        for slot in &self.slots {
            let oldest = slot.oldest_ns.load(Ordering::Relaxed);
            if oldest == u64::MAX {
                continue;
            }
            if now.saturating_sub(oldest) >= deadline {
                let mut guard = slot.dom.lock();
                if let Some(dom) = guard.as_mut() {
                    self.flush_domain(slot, dom);
                }
            } else {
                self.next_deadline
                    .fetch_min(oldest.saturating_add(deadline), Ordering::Relaxed);
            }
        }
    }

    /// FLUSH: completes every earlier batched UNMAP of the domain (I3).
    pub fn flush(&self, id: DomainId) -> Result<(), Error> {
        let (_, slot) = self.slot_of(id)?;
        let mut guard = slot.dom.lock();
        let dom = guard.as_mut().ok_or(Error::NoEnt)?;
        self.flush_domain(slot, dom);
        Ok(())
    }
}
