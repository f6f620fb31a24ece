//! MEM_DONATE and MEM_RECLAIM (pages move between the host and the page pool), the host
//! reserve that keeps host stage-2 changes possible with an empty pool, and the pins of
//! DMA masters Warden emulates.

use super::{CpuSeams, HOST_RESERVE_PAGES, HostState, Hyp, PagePool};
use crate::PAGE;
use crate::addr::{PhysAddr, PhysRange};
use crate::host_mem::{self, HostMem, HostS2Tlb};
use crate::s2mmu::TableMemory;
use crate::smmu::{Smmu, SmmuIo};
use alloc::vec::Vec;
use host_abi::Error;

impl HostState {
    /// Tops the reserve up from the pool (best effort).
    pub(super) fn refill<M: PagePool>(&mut self, pool: &M) {
        let mut pool = pool.clone();
        while self.reserve.len() < HOST_RESERVE_PAGES {
            match pool.alloc_zeroed(PAGE as usize, PAGE as usize) {
                Some(pa) => self.reserve.push(pa),
                None => break,
            }
        }
    }
}

/// The pool, falling back to the host reserve for page-sized tables.
struct ReserveMem<'a, M> {
    pool: M,
    reserve: &'a mut Vec<PhysAddr>,
}

// SAFETY: every allocation is a live allocation of `pool` (directly, or a reserve page
// the pool handed out earlier, zeroed again here); the rest is the pool's.
unsafe impl<M: PagePool> TableMemory for ReserveMem<'_, M> {
    fn alloc_zeroed(&mut self, size: usize, align: usize) -> Option<PhysAddr> {
        if let Some(pa) = self.pool.alloc_zeroed(size, align) {
            return Some(pa);
        }
        if size as u64 > PAGE || align as u64 > PAGE {
            return None;
        }
        let pa = self.reserve.pop()?;
        let p = self.pool.table_ptr(pa);
        for i in 0..PAGE as usize / 8 {
            // SAFETY: `pa` is a live page-sized allocation of the pool that nothing
            // else uses (it sat in the reserve), so `p` is valid for the whole page.
            unsafe { p.add(i).write_volatile(0) };
        }
        self.pool.clean(pa, PAGE as usize);
        Some(pa)
    }

    unsafe fn free(&mut self, pa: PhysAddr, size: usize) {
        // SAFETY: forwarded under the caller's contract (every allocation is the pool's).
        unsafe { self.pool.free(pa, size) }
    }

    fn table_ptr(&self, pa: PhysAddr) -> *mut u64 {
        self.pool.table_ptr(pa)
    }

    fn clean(&mut self, pa: PhysAddr, size: usize) {
        self.pool.clean(pa, size)
    }
}

impl<I: SmmuIo, M: PagePool, C: CpuSeams> Hyp<I, M, C> {
    /// Pins `r` (page-aligned) for a DMA master Warden emulates (the GIC's tables, see
    /// [`crate::gic`]): DENIED unless the host owns every page now.
    pub fn pin_for_device(&self, r: PhysRange) -> Result<(), Error> {
        let mem = self.pool.clone();
        self.host.lock().mem.host_pin_dma(&mem, r)
    }

    /// Drops a pin taken by [`pin_for_device`](Self::pin_for_device). If the pin
    /// bookkeeping has no memory to record it, the pages stay pinned for good (the safe
    /// side: the host can never donate them) and are logged.
    pub fn unpin_for_device(&self, r: PhysRange) {
        if self.host.lock().mem.host_unpin_dma(r).is_err() {
            log::error!(
                "no memory to unpin {:#x}..{:#x} (emulated device): the pages stay pinned",
                r.base.get(),
                r.end()
            );
        }
    }

    /// Runs `f`, a change of the host stage-2, with its seams: the host's memory, the
    /// pool backed by the host reserve for tables, and invalidation through the CPU and
    /// `smmus` (the SMMU set, locked by the caller after `host`).
    fn with_host_s2<R>(
        &self,
        host: &mut HostState,
        smmus: &mut [Smmu<I, M>],
        f: impl FnOnce(&mut HostMem, &mut ReserveMem<'_, M>, &mut HostS2Tlb<'_, C, I, M>) -> R,
    ) -> R {
        let HostState {
            mem: hm,
            counts,
            reserve,
        } = host;
        let mut cpu = self.cpu.clone();
        let mut qmem = self.pool.clone();
        let mut mem = ReserveMem {
            pool: self.pool.clone(),
            reserve,
        };
        let mut tlb =
            host_mem::host_s2_tlb(&mut cpu, smmus, &mut qmem, self.btm, self.host_vmid, counts);
        f(hm, &mut mem, &mut tlb)
    }

    /// MEM_DONATE: `pages` pages at `pa` leave the host and join the page pool. A page
    /// pinned only by a queued batched unmap is released by flushing that domain first;
    /// a page still mapped is BUSY.
    pub fn mem_donate(&self, pa: PhysAddr, pages: u64) -> Result<(), Error> {
        let pa = pa.get();
        for attempt in 0..2 {
            let r = {
                let mut host = self.host.lock();
                // Prepare: the pool can record the donation (no allocation after the host
                // stage-2 changed).
                self.pool.clone().prepare_donate()?;
                let mut set = self.smmus.lock();
                let r = self.with_host_s2(&mut host, &mut set.smmus, |hm, mem, tlb| {
                    hm.host_donate_hyp(mem, tlb, pa, pages)
                });
                if r.is_ok() {
                    let given = PhysRange::new(pa, pages * PAGE);
                    if self.pool.clone().donate(given).is_err() {
                        // Undo: the pages go back to the host (their tables still exist).
                        let back = self.with_host_s2(&mut host, &mut set.smmus, |hm, mem, tlb| {
                            hm.hyp_donate_host_range(mem, tlb, given)
                        });
                        if back.is_err() {
                            log::error!(
                                "MEM_DONATE {given:?}: no memory to record or undo it; pages withheld"
                            );
                        }
                        return Err(Error::NoMem);
                    }
                    host.refill(&self.pool);
                }
                r
            };
            match r {
                Ok(()) => return Ok(()),
                Err(Error::Busy) if attempt == 0 => {
                    let r = PhysRange::new(pa, pages.saturating_mul(PAGE));
                    if self.flush_where(|d| d.pending.pins_overlap(&r)) == 0 {
                        return Err(Error::Busy);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::Busy)
    }

    /// MEM_RECLAIM: gives up to `wanted` donated pages the pool does not use back to the
    /// host (one run), zeroed. NOENT when nothing is donated, BUSY when every donated page
    /// is in use. Returns the run given back.
    pub fn mem_reclaim(&self, wanted: u64) -> Result<PhysRange, Error> {
        if wanted == 0 || wanted > host_mem::MAX_PAGES_PER_CALL {
            return Err(Error::Invalid);
        }
        // Zeroing and cleaning the run happens with the host lock held: bound it like a
        // MAP (the host calls again for more).
        let wanted = wanted.min((self.cfg.max_map_bytes / PAGE).max(1));
        for attempt in 0..2 {
            let mut host = self.host.lock();
            if host.mem.donated_pages() == 0 {
                return Err(Error::NoEnt);
            }
            let mut pool = self.pool.clone();
            let Some(give) = pool.reclaim(wanted) else {
                drop(host);
                if attempt == 0 {
                    // Queued unmaps may hold tables in donated pages.
                    self.flush_all();
                    continue;
                }
                return Err(Error::Busy);
            };
            // Warden may have kept tables (or anything) there: the host gets zeros, in
            // its caches and in memory (it may map the pages non-cacheable, a device
            // may not snoop).
            pool.scrub(give);
            self.cpu.clone().clean_inval_poc(give.base, give.size);
            let mut set = self.smmus.lock();
            let r = self.with_host_s2(&mut host, &mut set.smmus, |hm, mem, tlb| {
                hm.hyp_donate_host_range(mem, tlb, give)
            });
            return match r {
                // `n` is at most `MAX_PAGES_PER_CALL`: the size cannot overflow.
                Ok((pa, n)) => Ok(PhysRange {
                    base: pa,
                    size: n * PAGE,
                }),
                Err(Error::Busy) => {
                    // Withheld (an unconfirmed invalidation): a device may still reach
                    // part of the run, so it never goes back to the pool.
                    Err(Error::Busy)
                }
                Err(e) => {
                    // Back into the pool: the lists shrank by taking it out, so this needs
                    // no allocation; if it failed anyway the pages are only withheld.
                    if pool.donate(give).is_err() {
                        log::error!(
                            "MEM_RECLAIM {give:?}: could not return it to the pool; pages withheld"
                        );
                    }
                    Err(e)
                }
            };
        }
        Err(Error::Busy)
    }
}
