//! ATTACH: which domain an endpoint's STE points at, and the endpoint map that keeps a
//! domain busy while an endpoint uses it.

use super::{CpuSeams, DomainId, Endpoint, Hyp, PagePool, SmmuSet};
use crate::smmu::{S2Config, SmmuError, SmmuIo};
use core::sync::atomic::Ordering;
use host_abi::Error;

/// The target of an ATTACH.
#[derive(Clone, Copy)]
enum Target {
    Host,
    Blocked,
    Managed(usize, S2Config),
}

impl<I: SmmuIo, M: PagePool, C: CpuSeams> Hyp<I, M, C> {
    /// ATTACH: points endpoint `ep` (an SMMU index and a StreamID) at domain `id`: the
    /// host identity domain (0), the blocking domain (1) or a host-managed one. The STE
    /// changes break-before-make with `CFGI_STE` + `CMD_SYNC` (I5).
    pub fn attach(&self, id: DomainId, ep: Endpoint) -> Result<(), Error> {
        // An index that does not fit `usize` names no SMMU.
        let smmu_idx = usize::try_from(ep.smmu).map_err(|_| Error::NoEnt)?;
        let sid = ep.sid;
        let _table = self.table.lock();
        let target = match id {
            DomainId::HOST => Target::Host,
            DomainId::BLOCKED => Target::Blocked,
            _ => {
                let (idx, slot) = self.slot_of(id)?;
                let guard = slot.dom.lock();
                let dom = guard.as_ref().ok_or(Error::NoEnt)?;
                Target::Managed(idx, S2Config::for_stage2(&dom.s2, dom.vmid.raw()))
            }
        };
        let mut mem = self.pool.clone();
        let mut set = self.smmus.lock();
        let SmmuSet { smmus, owner } = &mut *set;
        let smmu = smmus.get_mut(smmu_idx).ok_or(Error::NoEnt)?;
        if u64::from(sid) >= smmu.num_sids() {
            return Err(Error::NoEnt);
        }
        let owners = &mut owner[smmu_idx];
        let cur = owners.get(&sid).copied();
        if let Target::Managed(idx, _) = target {
            if cur == Some(idx) {
                return Ok(());
            }
            // Room for the new entry first: the inserts below then cannot allocate.
            if cur.is_none() && owners.try_reserve(1).is_err() {
                return Err(Error::NoMem);
            }
            // Before the STE can use the domain: its invalidations reach this SMMU.
            self.slots[idx]
                .smmu_mask
                .fetch_or(1 << smmu_idx, Ordering::Relaxed);
        }
        let r = match target {
            Target::Host => smmu.set_ste_s2(&mut mem, sid, &self.host_ste),
            Target::Blocked => smmu.set_ste_abort(&mut mem, sid),
            Target::Managed(_, cfg) => smmu.set_ste_s2(&mut mem, sid, &cfg),
        };
        match r {
            Ok(()) => {
                if let Some(old) = cur {
                    self.slots[old].attached.fetch_sub(1, Ordering::Relaxed);
                }
                match target {
                    // An endpoint that moves keeps its entry: only the value changes
                    // (`insert` would reserve room for a new key first, and grow the
                    // table infallibly when it is full).
                    Target::Managed(idx, _) => match owners.get_mut(&sid) {
                        Some(slot) => *slot = idx,
                        None => {
                            owners.insert(sid, idx);
                        }
                    },
                    Target::Host | Target::Blocked => {
                        owners.remove(&sid);
                    }
                }
                if let Target::Managed(idx, _) = target {
                    self.slots[idx].attached.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }
            Err(
                e @ (SmmuError::SidOutOfRange(_)
                | SmmuError::OutOfMemory
                | SmmuError::BadConfig(_)
                | SmmuError::Unsupported(_)),
            ) => Err(e.into()),
            Err(e) => {
                // The STE may now be invalid, old or new: keep both domains busy (never
                // freed while an STE might use their tables).
                log::error!("smmu{smmu_idx}: STE update for sid {sid:#x} failed: {e}");
                if let Target::Managed(idx, _) = target {
                    self.slots[idx].attached.fetch_add(1, Ordering::Relaxed);
                    if cur.is_none() {
                        owners.insert(sid, idx);
                    }
                }
                Err(e.into())
            }
        }
    }
}
