//! The hypercall front-end of the DMA core: the only place that knows the ABI's register
//! layout. [`Hyp::dispatch`] decodes `fid` and `x1..x6` into the core's typed calls and
//! [`encode`] turns their result into `x0..x3`; the `From` conversions beside it map each
//! layer's error to the status code the ABI returns.

use super::*;

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

impl<I: SmmuIo, M: PagePool, C: CpuSeams> Hyp<I, M, C> {
    /// Serves one Warden call: `fid` from `w0`, `args` from `x1..x6`; returns `x0..x3`.
    /// Unknown IDs return NOT_SUPPORTED and change nothing. Every call first flushes the
    /// batched queues that passed their deadline.
    pub fn dispatch(&self, fid: u32, args: [u64; 6]) -> [u64; 4] {
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        self.deadline_check();
        let [a1, a2, a3, a4, a5, _] = args;
        let r = match fid {
            func::FEATURES => Ok(self.features()),
            func::DOMAIN_ALLOC => self.domain_alloc(a1).map(|id| [id, 0, 0]),
            func::DOMAIN_FREE => self.domain_free(a1).map(|()| [0; 3]),
            func::ATTACH => self.attach(a1, a2).map(|()| [0; 3]),
            func::MAP => {
                self.stats.map_calls.fetch_add(1, Ordering::Relaxed);
                self.map(a1, a2, a3, a4, a5).map(|n| [n, 0, 0])
            }
            func::UNMAP => {
                self.stats.unmap_calls.fetch_add(1, Ordering::Relaxed);
                self.unmap(a1, a2, a3).map(|n| [n, 0, 0])
            }
            func::FLUSH => {
                self.stats.flush_calls.fetch_add(1, Ordering::Relaxed);
                self.flush(a1).map(|()| [0; 3])
            }
            func::IOVA_TO_PHYS => self.iova_to_phys(a1, a2).map(|pa| [pa, 0, 0]),
            func::EVENT_POLL => self.event_poll(),
            func::STATS => self.stats(a1),
            func::MEM_DONATE => self.mem_donate(a1, a2).map(|()| [0; 3]),
            func::MEM_RECLAIM => self.mem_reclaim(a1).map(|(pa, n)| [pa, n, 0]),
            _ => Err(Error::NotSupported),
        };
        encode(r)
    }
}
