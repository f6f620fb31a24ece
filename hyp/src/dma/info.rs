//! FEATURES, STATS and EVENT_POLL: what the core reports about itself ([`Features`]), its
//! counters ([`Stats`]) and the SMMUs' fault events.

use super::{CpuSeams, Hyp, PagePool};
use crate::events::PolledEvent;
use crate::s2mmu::{Granule, S2Geometry};
use crate::smmu::{CommandCounts, SmmuIo};
use core::sync::atomic::{AtomicU64, Ordering};
use host_abi::Error;

/// What the core supports (FEATURES).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    /// Batched domains are supported.
    pub batched: bool,
    /// Non-coherent domains are supported.
    pub non_coherent: bool,
    /// Host stage-2 changes use broadcast TLB maintenance.
    pub btm: bool,
    /// Every SMMU supports range invalidation.
    pub ril: bool,
    /// Host-managed domains are invalidated with CPU TLBIs by VMID.
    pub domain_cpu_tlbi: bool,
    /// Sizes a domain can map, one bit per size (bit n: 2^n bytes): the granules and
    /// the block sizes one MAP can produce.
    pub page_sizes: u64,
    /// Most host-managed domains alive at once.
    pub max_domains: u64,
    /// VMID bits.
    pub vmid_bits: u32,
    /// IOVA (input) bits of host-managed domains.
    pub ias_bits: u32,
    /// Output address bits.
    pub oas_bits: u32,
}

/// A snapshot of every counter STATS reports (host-abi `stats` groups them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Hypercalls served.
    pub calls: u64,
    /// SMMU `CMD_SYNC`s.
    pub cmd_syncs: u64,
    /// CPU TLBI operations (host stage-2 and domains).
    pub cpu_tlbis: u64,
    /// SMMU `TLBI_S2_IPA` commands.
    pub tlbi_s2_ipa: u64,
    /// SMMU `TLBI_S12_VMALL` commands.
    pub tlbi_s12_vmall: u64,
    /// SMMU `CFGI_STE` commands.
    pub cfgi_ste: u64,
    /// Pages pinned now.
    pub pages_pinned: u64,
    /// Pages of batched unmaps waiting for invalidation now.
    pub pages_pending: u64,
    /// Pages donated to Warden now.
    pub pages_donated: u64,
    /// MAP calls.
    pub map_calls: u64,
    /// UNMAP calls.
    pub unmap_calls: u64,
    /// FLUSH calls.
    pub flush_calls: u64,
    /// Level-1 blocks, level-2 blocks and level-3 pages MAP wrote into domain tables.
    pub leaves: [u64; 3],
}

impl<I: SmmuIo, M: PagePool, C: CpuSeams> Hyp<I, M, C> {
    /// FEATURES: the feature bits, the page sizes a domain can map (granules and the
    /// block sizes one MAP can produce) and the limits.
    pub fn features(&self) -> Features {
        let mut page_sizes = 0u64;
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
                    page_sizes |= size;
                }
            }
        }
        let (vmid_bits, vmids_usable) = {
            let v = self.vmids.lock();
            (v.bits(), u64::from(v.capacity() - v.reserved_count()))
        };
        // Every host-managed domain holds a VMID: at most as many can be alive as there
        // are VMIDs besides the reserved ones (255 with 8-bit VMIDs).
        let max_domains = u64::from(self.cfg.max_domains).min(vmids_usable);
        Features {
            batched: true,
            non_coherent: true,
            btm: self.btm,
            ril: self.limits.ril,
            domain_cpu_tlbi: self.cpu_path(),
            page_sizes,
            max_domains,
            vmid_bits,
            ias_bits: self.limits.ipa_bits,
            oas_bits: self.limits.pa_bits,
        }
    }

    /// STATS: every counter, read now.
    pub fn stats(&self) -> Stats {
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let smmu = self.smmu_counts();
        let pages_pending = self
            .slots
            .iter()
            .map(|s| s.pending_pages.load(Ordering::Relaxed))
            .sum();
        let host = self.host.lock();
        Stats {
            calls: ld(&self.stats.calls),
            cmd_syncs: smmu.cmd_sync,
            cpu_tlbis: host.counts.cpu_tlbi + ld(&self.stats.domain_cpu_tlbis),
            tlbi_s2_ipa: smmu.tlbi_s2_ipa,
            tlbi_s12_vmall: smmu.tlbi_s12_vmall,
            cfgi_ste: smmu.cfgi_ste,
            pages_pinned: host.mem.pins().pinned_pages(),
            pages_pending,
            pages_donated: host.mem.donated_pages(),
            map_calls: ld(&self.stats.map_calls),
            unmap_calls: ld(&self.stats.unmap_calls),
            flush_calls: ld(&self.stats.flush_calls),
            leaves: self.stats.leaves.each_ref().map(ld),
        }
    }

    /// The command counts of every SMMU, summed.
    fn smmu_counts(&self) -> CommandCounts {
        let mut sum = CommandCounts::default();
        for s in &self.smmus.lock().smmus {
            let c = &s.stats().commands;
            sum.cmd_sync += c.cmd_sync;
            sum.tlbi_s2_ipa += c.tlbi_s2_ipa;
            sum.tlbi_s12_vmall += c.tlbi_s12_vmall;
            sum.cfgi_ste += c.cfgi_ste;
        }
        sum
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
    pub fn event_poll(&self) -> Result<PolledEvent, Error> {
        self.drain_events();
        self.events.lock().pop_event().ok_or(Error::NoEnt)
    }
}
