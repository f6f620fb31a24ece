//! Warden's SMMUs at EL2: probing every `arm,smmu-v3` node of the DTB, pointing the host's
//! StreamIDs at the host stage-2 (the same table the CPU uses, with the host VMID),
//! broadcast TLB maintenance when every SMMU supports it, and the event log.

use crate::error::BootError;
use crate::mm::{self, S2Mem};
use crate::platform::El2SmmuIo;
use alloc::vec::Vec;
use hyp::addr::PhysRange;
use hyp::dtb::Platform;
use hyp::el2_s1::S1Attr;
use hyp::s2mmu::Stage2;
use hyp::smmu::{ProbeConfig, S2Config, Smmu};

/// One SMMU Warden drives.
pub type El2Smmu = Smmu<El2SmmuIo, S2Mem>;

/// StreamIDs the DTB gives this SMMU for devices Warden can see at boot: `iommus`
/// properties, and the `iommu-map` entries for requester IDs on each host bridge's first
/// bus (bridges below it are not configured yet; their devices abort until attached).
fn described_sids(plat: &Platform, phandle: Option<u32>) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    let Some(ph) = phandle else { return out };
    for m in plat.iommu_map.iter().filter(|m| m.iommu == ph) {
        let host = plat.pci_hosts.get(m.host);
        let first_bus = host.and_then(|h| h.bus_range).map(|(b, _)| b).unwrap_or(0);
        let lo = first_bus << 8;
        let hi = lo + 0x100;
        let start = m.rid_base.max(lo);
        let end = m.rid_base.saturating_add(m.len).min(hi);
        if start < end {
            out.push((m.sid_base + (start - m.rid_base), end - start));
        }
    }
    for d in plat.iommus.iter().filter(|d| d.iommu == ph) {
        out.push((d.sid, 1));
    }
    out
}

/// Probes every available SMMU of the DTB: maps its frame at EL2, takes it over (global
/// abort first, every STE aborting) and prints its features; puts every other SMMU of the
/// DTB (disabled, or failed to probe) in abort. Returns the smallest output address size
/// among those it drives, which bounds the shared stage-2.
pub fn probe_all(plat: &Platform) -> Result<Probed, BootError> {
    let mut io = Probed {
        smmus: Vec::new(),
        nodes: Vec::new(),
        frames: Vec::new(),
        min_oas: None,
    };
    let mut min_oas: Option<u32> = None;
    for (i, s) in plat.smmus.iter().enumerate() {
        // Two nodes for one frame: driving (or aborting) it twice would undo the first
        // node's set-up. The frame stays out of the host's reach either way.
        if io.frames.iter().any(|f| f.overlaps(&s.regs)) {
            log::error!(
                "smmu{i} at {} overlaps an SMMU frame already handled: ignored (devices behind it are hidden)",
                s.regs
            );
            io.frames.push(s.regs);
            continue;
        }
        io.frames.push(s.regs);
        mm::map_hyp(s.regs, S1Attr::Device)
            .map_err(|e| BootError::Map("cannot map an SMMU at EL2", e))?;
        if !s.available {
            // Its reset state may be bypass: put it in abort; the devices behind it are
            // hidden from the host (hyp::masters).
            abort_undriven(i, s.regs, "disabled in the DTB");
            continue;
        }
        let sids = described_sids(plat, s.phandle);
        // A faulting device raises an event per access: a 4096-entry event queue
        // (128 KiB) holds a few pages of faults between two drains.
        let cfg = ProbeConfig {
            coherent: s.dma_coherent,
            sids: &sids,
            cmdq_log2: None,
            evtq_log2: Some(12),
        };
        // SAFETY: the frame comes from the DTB, is mapped Device above and is Warden's
        // alone (it leaves the host stage-2 and the host DTB disables the node).
        let regs = unsafe { El2SmmuIo::new(s.regs.base.get() as usize) };
        // SAFETY: every later call on this SMMU passes `S2Mem`.
        match unsafe { Smmu::probe(regs, &mut S2Mem, &cfg) } {
            Ok(smmu) => {
                let f = smmu.features();
                crate::println!("warden: smmu{i} at {:#x}: {f}", s.regs.base.get());
                if !s.dma_coherent || !f.cohacc {
                    mm::set_noncoherent_walkers();
                }
                min_oas = Some(min_oas.map_or(f.oas_bits, |m: u32| m.min(f.oas_bits)));
                io.smmus.push(smmu);
                io.nodes.push(i);
            }
            Err(e) => {
                log::error!("smmu{i} at {}: {e}", s.regs);
                abort_undriven(i, s.regs, "failed to probe");
            }
        }
    }
    io.min_oas = min_oas;
    Ok(io)
}

/// Puts an SMMU Warden does not drive in abort (`GBPA.ABORT`, `SMMUEN = 0`) and says
/// whether that worked. Its frame is mapped at EL2 and stays out of the host stage-2.
fn abort_undriven(i: usize, regs: PhysRange, why: &str) {
    // SAFETY: the frame comes from the DTB, is mapped Device at EL2, and nothing else
    // uses it (no `Smmu` owns it; it is never in the host stage-2).
    let io = unsafe { El2SmmuIo::new(regs.base.get() as usize) };
    match hyp::smmu::force_abort(&io) {
        Ok(()) => crate::println!(
            "warden: smmu{i} at {:#x}: {why}: put in abort (GBPA.ABORT, SMMUEN=0); devices behind it are hidden",
            regs.base.get()
        ),
        Err(e) => log::error!(
            "smmu{i} at {:#x}: {why}, and cannot be put in abort ({e}); devices behind it are hidden",
            regs.base.get()
        ),
    }
}

/// What [`probe_all`] found.
pub struct Probed {
    /// The SMMUs taken over (the index is the endpoint's SMMU index).
    pub smmus: Vec<El2Smmu>,
    /// For each SMMU in `smmus`, the index of its DTB node in `Platform::smmus`.
    pub nodes: Vec<usize>,
    /// Every SMMU register frame in the DTB (never in the host stage-2).
    pub frames: Vec<PhysRange>,
    /// The smallest output address size among them.
    pub min_oas: Option<u32>,
}

/// Points every described StreamID of every SMMU at the host stage-2, and turns on
/// broadcast TLB maintenance if every SMMU supports it, `warden.btm` allows it and the
/// VMID widths of CPU and SMMUs agree.
pub fn attach_host(
    io: &mut Probed,
    plat: &Platform,
    s2: &Stage2,
    vmid: u16,
    want_btm: bool,
    cpu_vmid_bits: u32,
) -> bool {
    let cfg = S2Config::for_stage2(s2, vmid);
    for (smmu_idx, node) in io.nodes.iter().enumerate() {
        let sids = described_sids(plat, plat.smmus[*node].phandle);
        let smmu = &mut io.smmus[smmu_idx];
        let mut n = 0u64;
        for (first, count) in sids {
            for sid in first..first.saturating_add(count) {
                match smmu.set_ste_s2(&mut S2Mem, sid, &cfg) {
                    Ok(()) => n += 1,
                    Err(e) => log::error!("smmu{smmu_idx}: STE for sid {sid:#x}: {e}"),
                }
            }
        }
        crate::println!(
            "warden: smmu{smmu_idx}: {n} StreamID(s) on the host stage-2 (VMID {vmid}), all others abort"
        );
    }
    let all_btm = !io.smmus.is_empty() && io.smmus.iter().all(|s| s.features().btm);
    let widths_agree = io
        .smmus
        .iter()
        .all(|s| (if s.features().vmid16 { 16 } else { 8 }) == cpu_vmid_bits);
    let mut btm = want_btm && all_btm && widths_agree;
    if btm {
        for s in io.smmus.iter_mut() {
            if s.set_ptm(&mut S2Mem, false).is_err() {
                btm = false;
            }
        }
        if !btm {
            for s in io.smmus.iter_mut() {
                let _ = s.set_ptm(&mut S2Mem, true);
            }
        }
    }
    let why = if io.smmus.is_empty() {
        "no SMMU"
    } else if !want_btm {
        "warden.btm=off"
    } else if !all_btm {
        "an SMMU lacks BTM"
    } else if !widths_agree {
        "CPU and SMMU VMID widths differ"
    } else {
        "every SMMU takes part in broadcast TLBIs"
    };
    crate::println!(
        "warden: BTM {}: {why}; host stage-2 changes use {}",
        if btm { "on" } else { "off" },
        if btm {
            "CPU TLBIs only"
        } else {
            "CPU TLBIs plus SMMU commands and CMD_SYNC"
        }
    );
    btm
}
