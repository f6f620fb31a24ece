//! The hypercall front-end of the DMA core, and the only code that knows the ABI's
//! register layout: [`Hyp::dispatch`] decodes `fid` and `x1..x6` into typed arguments
//! ([`DomainId`], [`Iova`], [`PhysAddr`] / [`PhysRange`], [`Prot`], [`DomainFlags`],
//! [`Endpoint`], sizes), calls the core's typed methods and encodes their result into
//! `x0..x3` ([`encode`]). Beside it, one `From` per layer error gives the status code
//! the ABI returns for it; a call site that must answer differently says so itself.

use super::{CpuSeams, DomainFlags, DomainId, Endpoint, Features, Hyp, PagePool, Prot, Stats};
use crate::addr::{Iova, PhysAddr, PhysRange};
use crate::frames::NoMem;
use crate::pins::PinError;
use crate::s2mmu::S2Error;
use crate::smmu::{SmmuError, SmmuIo};
use crate::vmid_alloc::VmidError;
use core::sync::atomic::Ordering;
use host_abi::{Error, PAGE, endpoint_sid, endpoint_smmu, features, func, stats};

/// Encodes a call's outcome as `x0..x3`: the one place the ABI's status encoding lives.
pub fn encode(r: Result<[u64; 3], Error>) -> [u64; 4] {
    match r {
        Ok([a, b, c]) => [0, a, b, c],
        Err(e) => [e.to_reg(), 0, 0, 0],
    }
}

impl From<SmmuError> for Error {
    fn from(e: SmmuError) -> Self {
        match e {
            SmmuError::SidOutOfRange(_) => Error::NoEnt,
            SmmuError::OutOfMemory => Error::NoMem,
            SmmuError::BadConfig(_) => Error::Invalid,
            SmmuError::Unsupported(_) => Error::NotSupported,
            // The SMMU did not answer: try again later.
            SmmuError::Timeout(_) | SmmuError::BadQueueIndex(_) | SmmuError::CommandSkipped(_) => {
                Error::Busy
            }
        }
    }
}

impl From<S2Error> for Error {
    /// Table memory ran out: NOMEM; anything else is a bad geometry or range: INVALID.
    fn from(e: S2Error) -> Self {
        match e {
            S2Error::OutOfMemory { .. } => Error::NoMem,
            S2Error::InvalidIpaBits
            | S2Error::InvalidPaBits
            | S2Error::Misaligned
            | S2Error::OutOfRange => Error::Invalid,
        }
    }
}

impl From<NoMem> for Error {
    fn from(_: NoMem) -> Self {
        Error::NoMem
    }
}

impl From<PinError> for Error {
    fn from(e: PinError) -> Self {
        match e {
            PinError::Invalid => Error::Invalid,
            PinError::NoMem => Error::NoMem,
        }
    }
}

impl From<VmidError> for Error {
    /// No VMID left: NOSPC. The others are misuse of the allocator (a VMID in the wrong
    /// state: BUSY while a batch is in flight, INVALID otherwise).
    fn from(e: VmidError) -> Self {
        match e {
            VmidError::Exhausted => Error::NoSpc,
            VmidError::InUse(_) | VmidError::BatchInProgress => Error::Busy,
            VmidError::InvalidWidth(_)
            | VmidError::AlreadyConfigured
            | VmidError::OutOfRange(_)
            | VmidError::NotAllocated(_)
            | VmidError::AlreadyReleased(_)
            | VmidError::Reserved(_)
            | VmidError::StaleTicket(_)
            | VmidError::StaleBatch => Error::Invalid,
        }
    }
}

/// FEATURES' three registers.
fn encode_features(f: &Features) -> [u64; 3] {
    let mut bits = 0;
    for (on, bit) in [
        (f.batched, features::BATCHED),
        (f.non_coherent, features::NON_COHERENT),
        (f.btm, features::BTM),
        (f.ril, features::RIL),
        (f.domain_cpu_tlbi, features::DOMAIN_CPU_TLBI),
    ] {
        if on {
            bits |= bit;
        }
    }
    let field = |v: u64, mask: u64, shift: u32| (v.min(mask) & mask) << shift;
    let limits = field(
        f.max_domains,
        features::LIMIT_DOMAINS_MASK,
        features::LIMIT_DOMAINS_SHIFT,
    ) | field(
        u64::from(f.vmid_bits),
        features::LIMIT_VMID_BITS_MASK,
        features::LIMIT_VMID_BITS_SHIFT,
    ) | field(
        u64::from(f.ias_bits),
        features::LIMIT_IAS_MASK,
        features::LIMIT_IAS_SHIFT,
    ) | field(
        u64::from(f.oas_bits),
        features::LIMIT_OAS_MASK,
        features::LIMIT_OAS_SHIFT,
    );
    [bits, f.page_sizes, limits]
}

/// STATS' three registers for counter group `group`; INVALID for an unknown group.
fn encode_stats(s: &Stats, group: u64) -> Result<[u64; 3], Error> {
    match group {
        stats::CALLS_SYNCS_TLBIS => Ok([s.calls, s.cmd_syncs, s.cpu_tlbis]),
        stats::SMMU_COMMANDS => Ok([s.tlbi_s2_ipa, s.tlbi_s12_vmall, s.cfgi_ste]),
        stats::PAGES => Ok([s.pages_pinned, s.pages_pending, s.pages_donated]),
        stats::DMA_CALLS => Ok([s.map_calls, s.unmap_calls, s.flush_calls]),
        stats::LEAVES_WRITTEN => Ok(s.leaves),
        _ => Err(Error::Invalid),
    }
}

impl<I: SmmuIo, M: PagePool, C: CpuSeams> Hyp<I, M, C> {
    /// Serves one Warden call: `fid` from `w0`, `args` from `x1..x6`; returns `x0..x3`.
    /// Unknown IDs return NOT_SUPPORTED and change nothing. Every call first flushes the
    /// batched queues that passed their deadline.
    pub fn dispatch(&self, fid: u32, args: [u64; 6]) -> [u64; 4] {
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        self.deadline_check();
        let [a1, a2, a3, a4, a5, _] = args;
        let r = match fid {
            func::FEATURES => Ok(encode_features(&self.features())),
            func::DOMAIN_ALLOC => DomainFlags::decode(a1)
                .and_then(|flags| self.domain_alloc(flags))
                .map(|id| [id.get(), 0, 0]),
            func::DOMAIN_FREE => self.domain_free(DomainId(a1)).map(|()| [0; 3]),
            func::ATTACH => {
                let ep = Endpoint {
                    smmu: endpoint_smmu(a2),
                    sid: endpoint_sid(a2),
                };
                self.attach(DomainId(a1), ep).map(|()| [0; 3])
            }
            func::MAP => {
                self.stats.map_calls.fetch_add(1, Ordering::Relaxed);
                Prot::decode(a5)
                    .and_then(|prot| self.map(DomainId(a1), Iova(a2), PhysRange::new(a3, a4), prot))
                    .map(|n| [n, 0, 0])
            }
            func::UNMAP => {
                self.stats.unmap_calls.fetch_add(1, Ordering::Relaxed);
                self.unmap(DomainId(a1), Iova(a2), a3).map(|n| [n, 0, 0])
            }
            func::FLUSH => {
                self.stats.flush_calls.fetch_add(1, Ordering::Relaxed);
                self.flush(DomainId(a1)).map(|()| [0; 3])
            }
            func::IOVA_TO_PHYS => self
                .iova_to_phys(DomainId(a1), Iova(a2))
                .map(|pa| [pa.get(), 0, 0]),
            func::EVENT_POLL => self
                .event_poll()
                .map(|e| crate::events::encode(e.smmu, &e.event, e.lost)),
            func::STATS => encode_stats(&self.stats(), a1),
            func::MEM_DONATE => self.mem_donate(PhysAddr(a1), a2).map(|()| [0; 3]),
            func::MEM_RECLAIM => self
                .mem_reclaim(a1)
                .map(|r| [r.base.get(), r.size / PAGE, 0]),
            _ => Err(Error::NotSupported),
        };
        encode(r)
    }
}
