//! FEATURES, STATS and EVENT_POLL: what the core reports about itself, its counters and
//! the SMMUs' fault events.

use super::*;

impl<I: SmmuIo, M: PagePool, C: CpuSeams> Hyp<I, M, C> {
    /// FEATURES: x1 feature bits, x2 page sizes a domain can map (granules and the block
    /// sizes one MAP can produce), x3 limits.
    pub fn features(&self) -> [u64; 3] {
        let mut bits = features::BATCHED | features::NON_COHERENT;
        if self.btm {
            bits |= features::BTM;
        }
        if self.limits.ril {
            bits |= features::RIL;
        }
        if self.cpu_path() {
            bits |= features::DOMAIN_CPU_TLBI;
        }
        let mut sizes = 0u64;
        for (i, g) in [Granule::Size4K, Granule::Size16K, Granule::Size64K]
            .into_iter()
            .enumerate()
        {
            if !self.limits.gran[i] {
                continue;
            }
            let Ok(geom) = S2Geometry::new(g, self.limits.ipa_bits, self.limits.pa_bits) else {
                continue;
            };
            for level in 1..=3 {
                if let Some(size) = geom.leaf_size(level)
                    && size <= self.cfg.max_map_bytes
                {
                    sizes |= size;
                }
            }
        }
        let (vmid_bits, vmids_usable) = {
            let v = self.vmids.lock();
            (
                u64::from(v.bits()),
                u64::from(v.capacity() - v.reserved_count()),
            )
        };
        // Every host-managed domain holds a VMID: at most as many can be alive as there
        // are VMIDs besides the reserved ones (255 with 8-bit VMIDs).
        let domains = u64::from(self.cfg.max_domains)
            .min(vmids_usable)
            .min(0xffff);
        let limits = (domains << features::LIMIT_DOMAINS_SHIFT)
            | (vmid_bits << features::LIMIT_VMID_BITS_SHIFT)
            | (u64::from(self.limits.ipa_bits) << features::LIMIT_IAS_SHIFT)
            | (u64::from(self.limits.pa_bits) << features::LIMIT_OAS_SHIFT);
        [bits, sizes, limits]
    }

    /// STATS: the counter group `group` (host-abi `stats`); INVALID for an unknown group.
    pub fn stats(&self, group: u64) -> Result<[u64; 3], Error> {
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
        match group {
            stats::CALLS_SYNCS_TLBIS => {
                let syncs = self.smmu_counts(|c| c.cmd_sync);
                let host_tlbis = self.host.lock().counts.cpu_tlbi;
                Ok([
                    ld(&self.stats.calls),
                    syncs,
                    host_tlbis + ld(&self.stats.domain_cpu_tlbis),
                ])
            }
            stats::SMMU_COMMANDS => Ok([
                self.smmu_counts(|c| c.tlbi_s2_ipa),
                self.smmu_counts(|c| c.tlbi_s12_vmall),
                self.smmu_counts(|c| c.cfgi_ste),
            ]),
            stats::PAGES => {
                let pending = self
                    .slots
                    .iter()
                    .map(|s| s.pending_pages.load(Ordering::Relaxed))
                    .sum();
                let host = self.host.lock();
                Ok([
                    host.mem.pins().pinned_pages(),
                    pending,
                    host.mem.donated_pages(),
                ])
            }
            stats::DMA_CALLS => Ok([
                ld(&self.stats.map_calls),
                ld(&self.stats.unmap_calls),
                ld(&self.stats.flush_calls),
            ]),
            stats::LEAVES_WRITTEN => Ok(self.stats.leaves.each_ref().map(ld)),
            _ => Err(Error::Invalid),
        }
    }

    fn smmu_counts(&self, f: impl Fn(&crate::smmu::CommandCounts) -> u64) -> u64 {
        self.smmus
            .lock()
            .smmus
            .iter()
            .map(|s| f(&s.stats().commands))
            .sum()
    }

    /// Drains every SMMU's event queue into the log and the EVENT_POLL ring. Skipped if
    /// another CPU holds the SMMUs (it can drain them later).
    pub fn drain_events(&self) {
        let Some(mut set) = self.smmus.try_lock() else {
            return;
        };
        let mut mem = self.pool.clone();
        self.events.lock().drain(&mut set.smmus, &mut mem);
    }

    /// EVENT_POLL: the oldest fault event, NOENT when none.
    pub fn event_poll(&self) -> Result<[u64; 3], Error> {
        self.drain_events();
        self.events.lock().pop().ok_or(Error::NoEnt)
    }
}
