//! Warden's own calls in the vendor-specific hypervisor service range (OEN 6): SMCCC
//! discovery, host memory donation, and SMMU fault events. Handlers only decode registers
//! and call the core; the DMA-domain calls of ABI v1 are not served yet and return
//! NOT_SUPPORTED, changing nothing.

use crate::boot::{HOST_MEM, HOST_VMID};
use crate::iommu::IOMMU;
use crate::mm::S2Mem;
use crate::platform::El2CpuTlb;
use crate::trap::TrapFrame;
use host_abi::{Error, event, func, smccc};
use hyp::host_mem::HostS2Tlb;

/// Warden's SMCCC vendor-hypervisor UID, returned by CALL_UID in w0..w3.
pub const WARDEN_UID: [u32; 4] = [0x7761_7264, 0x656e_2d68, 0x7970_2d76, 0x0000_0001];

fn ret(frame: &mut TrapFrame, r: Result<&[u64], Error>) {
    match r {
        Ok(vals) => {
            frame.x[0] = 0;
            frame.x[1..=vals.len()].copy_from_slice(vals);
        }
        Err(e) => frame.x[0] = e.to_reg(),
    }
}

/// Handles a call in the vendor hypervisor service range.
pub fn dispatch(frame: &mut TrapFrame) {
    let fid = frame.x[0] as u32;
    match fid {
        smccc::VENDOR_HYP_CALL_UID => {
            for (i, w) in WARDEN_UID.iter().enumerate() {
                frame.x[i] = *w as u64;
            }
        }
        smccc::VENDOR_HYP_REVISION => {
            frame.x[0] = 1;
            frame.x[1] = 0;
        }
        func::MEM_DONATE => {
            let r = mem_donate(frame.x[1], frame.x[2]);
            ret(frame, r.map(|()| &[][..]));
        }
        func::MEM_RECLAIM => match mem_reclaim(frame.x[1]) {
            Ok((pa, n)) => ret(frame, Ok(&[pa, n])),
            Err(e) => ret(frame, Err(e)),
        },
        func::EVENT_POLL => match event_poll() {
            Ok(v) => ret(frame, Ok(&v)),
            Err(e) => ret(frame, Err(e)),
        },
        _ => frame.x[0] = Error::NotSupported.to_reg(),
    }
}

/// Runs `f` on the host memory with the host stage-2 invalidation seams.
fn with_host<R>(
    f: impl FnOnce(
        &mut hyp::host_mem::HostMem,
        &mut HostS2Tlb<'_, El2CpuTlb, crate::platform::El2SmmuIo, S2Mem>,
    ) -> R,
) -> Option<R> {
    let mut hm = HOST_MEM.lock();
    let hm = hm.as_mut()?;
    let mut io = IOMMU.lock();
    let io = &mut *io;
    let mut cpu = El2CpuTlb;
    let mut qmem = S2Mem;
    let mut tlb = HostS2Tlb::new(
        &mut cpu,
        &mut io.smmus,
        &mut qmem,
        io.btm,
        HOST_VMID,
        &mut io.counts,
    );
    Some(f(hm, &mut tlb))
}

fn mem_donate(pa: u64, pages: u64) -> Result<(), Error> {
    with_host(|hm, tlb| hm.host_donate_hyp(&mut S2Mem, tlb, pa, pages))
        .unwrap_or(Err(Error::NotSupported))?;
    log::debug!("host donated {pages} page(s) at {pa:#x}");
    Ok(())
}

fn mem_reclaim(pages: u64) -> Result<(u64, u64), Error> {
    let (pa, n) = with_host(|hm, tlb| hm.hyp_donate_host(&mut S2Mem, tlb, pages))
        .unwrap_or(Err(Error::NotSupported))?;
    log::debug!("host reclaimed {n} page(s) at {pa:?}");
    Ok((pa.get(), n))
}

fn event_poll() -> Result<[u64; 3], Error> {
    crate::iommu::drain_events();
    let mut io = IOMMU.lock();
    let lost = core::mem::take(&mut io.events_lost);
    let (idx, e) = io.events.pop_front().ok_or(Error::NoEnt)?;
    let mut flags = e.kind.0 as u64;
    if e.read {
        flags |= event::FLAG_READ;
    }
    if e.stage2 {
        flags |= event::FLAG_STAGE2;
    }
    if lost != 0 {
        flags |= event::FLAG_LOST;
    }
    Ok([((idx as u64) << 32) | e.sid as u64, e.input_addr, flags])
}
