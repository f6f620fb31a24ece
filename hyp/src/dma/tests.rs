//! The hypercall core through [`Hyp::dispatch`], against the SMMU, CPU-TLB and RAM
//! models, with BTM on and off: observable behaviour only (what a device's DMA reaches,
//! pin counts, the commands the SMMU executed, STATS).

use super::world::*;
use super::*;
use crate::PAGE;
use crate::addr::Iova;
use crate::smmu::cmdq::op;
use crate::smmu::model::{DmaFault, ModelConfig};
use host_abi::{domain, features, func, prot, stats};
use host_abi::{domain_flags, event};
use std::println;

mod alloc;
mod fuzz;
mod inval_counts;
mod prop;
mod reclaim;
mod threads;
mod unconfirmed;

const MB: u64 = 1 << 20;
/// A host page (inside the host RAM).
const HP: u64 = HOST_BASE + 0x10_0000;
const SID: u32 = SIDS[0];
const BATCHED: u64 = domain_flags::BATCHED;
const NC: u64 = domain_flags::NON_COHERENT;
const G16K: u64 = 14 << domain_flags::GRANULE_SHIFT;
const G64K: u64 = 16 << domain_flags::GRANULE_SHIFT;

fn world(btm: bool) -> World {
    World::new(Opts {
        btm,
        ..Opts::default()
    })
}

/// BTM off, BTM on with SMMU commands, BTM on with CPU TLBIs for domains.
fn each_config(mut f: impl FnMut(World, &str)) {
    f(world(false), "btm off");
    f(world(true), "btm on, smmu commands");
    let cfg = Config {
        domain_cpu_tlbi: true,
        ..Config::default()
    };
    f(
        World::new(Opts {
            btm: true,
            cfg,
            ..Opts::default()
        }),
        "btm on, cpu tlbi",
    );
}

/// A strict domain attached to `SID` on SMMU 0 with `pages` pages from `HP` mapped at
/// IOVA 0x10_0000.
fn mapped(w: &World, flags: u64, pages: u64) -> u64 {
    let d = w.alloc(flags).unwrap();
    w.attach(d, 0, SID).unwrap();
    if pages != 0 {
        assert_eq!(w.map(d, 0x10_0000, HP, pages * PAGE), Ok(pages * PAGE));
    }
    d
}

// ----------------------------------------------------------------------------------------
// FEATURES, unknown calls.

#[test]
fn features_report_paths_sizes_and_limits() {
    each_config(|w, what| {
        let [bits, sizes, limits] = w.try_call(func::FEATURES, &[]).unwrap();
        let btm = w.hyp.btm();
        assert_eq!(bits & features::BTM != 0, btm, "{what}");
        assert_ne!(bits & features::RIL, 0);
        assert_ne!(bits & features::BATCHED, 0);
        assert_ne!(bits & features::NON_COHERENT, 0);
        assert_eq!(
            bits & features::DOMAIN_CPU_TLBI != 0,
            what.ends_with("cpu tlbi"),
            "{what}"
        );
        // 4K, 2M; 16K, 32M; 64K (512M and 1G exceed one MAP's 64 MiB).
        assert_eq!(
            sizes,
            (4 << 10) | (2 << 20) | (16 << 10) | (32 << 20) | (64 << 10),
            "{sizes:#x}"
        );
        assert_eq!(limits & 0xffff, 1024);
        assert_eq!((limits >> 16) & 0xff, 16, "VMID bits");
        assert_eq!((limits >> 24) & 0xff, 44, "IAS");
        assert_eq!((limits >> 32) & 0xff, 44, "OAS");
    });
    let w = World::new(Opts {
        model: ModelConfig {
            ril: false,
            gran16k: false,
            ..ModelConfig::default()
        },
        ril: false,
        ..Opts::default()
    });
    let [bits, sizes, _] = w.try_call(func::FEATURES, &[]).unwrap();
    assert_eq!(bits & features::RIL, 0);
    assert_eq!(sizes, (4 << 10) | (2 << 20) | (64 << 10));
}

/// The typed core methods a second front-end (virtio-iommu) calls serve the same domains
/// as the hypercalls: no register layout is needed below the front-end.
#[test]
fn typed_core_methods_serve_the_same_domains_as_the_hypercalls() {
    each_config(|w, what| {
        let h = &w.hyp;
        let d = h.domain_alloc(DomainFlags::decode(0).unwrap()).unwrap();
        assert!(d >= DomainId::FIRST_MANAGED, "{what}");
        let ep = Endpoint { smmu: 0, sid: SID };
        h.attach(d, ep).unwrap();
        let ro = Prot {
            read: true,
            write: false,
        };
        let none = Prot {
            read: false,
            write: false,
        };
        let iova = Iova(0x10_0000);
        assert_eq!(
            h.map(d, iova, PhysRange::new(HP, PAGE), none),
            Err(Error::Invalid),
            "{what}: no access"
        );
        assert_eq!(h.map(d, iova, PhysRange::new(HP, PAGE), ro), Ok(PAGE));
        assert_eq!(w.dma(0, SID, iova.get(), false), Ok(PhysAddr(HP)), "{what}");
        assert_eq!(w.dma(0, SID, iova.get(), true), Err(DmaFault::Permission));
        assert_eq!(h.iova_to_phys(d, iova), Ok(PhysAddr(HP)));
        assert_eq!(
            w.try_call(func::IOVA_TO_PHYS, &[d.get(), iova.get()]),
            Ok([HP, 0, 0]),
            "{what}: the hypercall sees the same mapping"
        );
        assert_eq!(w.pins(HP), 1);
        assert_eq!(h.unmap(d, iova, PAGE), Ok(PAGE));
        assert_eq!(w.dma(0, SID, iova.get(), false), Err(DmaFault::Translation));
        assert_eq!(w.pins(HP), 0, "{what}: strict unmap released the pin");
        assert_eq!(h.domain_free(d), Err(Error::Busy), "attached");
        h.attach(DomainId::HOST, ep).unwrap();
        assert_eq!(h.domain_free(d), Ok(()));
        assert_eq!(h.flush(d), Err(Error::NoEnt));
        let f = h.features();
        let [bits, sizes, limits] = w.try_call(func::FEATURES, &[]).unwrap();
        assert_eq!(bits & features::BTM != 0, f.btm);
        assert_eq!(sizes, f.page_sizes);
        assert_eq!(limits & features::LIMIT_DOMAINS_MASK, f.max_domains);
        assert_eq!(h.stats().pages_pinned, w.stats(stats::PAGES)[0]);
    });
}

/// Each layer's error reaches the ABI as the status code the calls have always returned.
#[test]
fn layer_errors_map_to_their_abi_codes() {
    use crate::frames::NoMem;
    use crate::pins::PinError;
    use crate::s2mmu::S2Error;
    use crate::smmu::SmmuError;
    use crate::vmid_alloc::{Vmid, VmidError};
    assert_eq!(Error::from(S2Error::OutOfMemory { done: 0 }), Error::NoMem);
    for e in [
        S2Error::InvalidIpaBits,
        S2Error::InvalidPaBits,
        S2Error::Misaligned,
        S2Error::OutOfRange,
    ] {
        assert_eq!(Error::from(e), Error::Invalid, "{e}");
    }
    assert_eq!(Error::from(NoMem), Error::NoMem);
    assert_eq!(Error::from(PinError::NoMem), Error::NoMem);
    assert_eq!(Error::from(PinError::Invalid), Error::Invalid);
    assert_eq!(Error::from(VmidError::Exhausted), Error::NoSpc);
    assert_eq!(Error::from(VmidError::InUse(Vmid::new(3))), Error::Busy);
    assert_eq!(Error::from(SmmuError::SidOutOfRange(7)), Error::NoEnt);
    assert_eq!(Error::from(SmmuError::OutOfMemory), Error::NoMem);
    assert_eq!(Error::from(SmmuError::BadConfig("x")), Error::Invalid);
    assert_eq!(
        Error::from(SmmuError::Unsupported("x")),
        Error::NotSupported
    );
    for e in [
        SmmuError::Timeout("x"),
        SmmuError::BadQueueIndex(0),
        SmmuError::CommandSkipped(0),
    ] {
        assert_eq!(Error::from(e), Error::Busy, "{e}");
    }
}

#[test]
fn unknown_calls_are_not_supported_and_change_nothing() {
    let w = world(false);
    let d = mapped(&w, 0, 1);
    let before = (w.stats(stats::PAGES), w.stats(stats::DMA_CALLS));
    for fid in [
        host_abi::VENDOR_HYP_BASE + 0x0C,
        host_abi::VENDOR_HYP_BASE + 0xFF,
        0xC600_FFFF,
        0x8400_0000,
    ] {
        assert_eq!(
            w.try_call(fid, &[d, 0x10_0000, PAGE]),
            Err(Error::NotSupported)
        );
    }
    assert_eq!(before, (w.stats(stats::PAGES), w.stats(stats::DMA_CALLS)));
    assert_eq!(w.dma(0, SID, 0x10_0000, true), Ok(PhysAddr(HP)));
    assert_eq!(w.try_call(func::STATS, &[5]), Err(Error::Invalid));
}

// ----------------------------------------------------------------------------------------
// DOMAIN_ALLOC / DOMAIN_FREE.

#[test]
fn domain_alloc_and_free_errors() {
    let w = world(false);
    for bad in [1 << 2, 1 << 16, 13 << 8, 17 << 8, u64::MAX] {
        assert_eq!(w.alloc(bad), Err(Error::Invalid), "{bad:#x}");
    }
    let d = w.alloc(0).unwrap();
    assert!(d >= domain::FIRST_MANAGED);
    let e = w.alloc(BATCHED | NC | G64K).unwrap();
    assert_ne!(d, e);
    assert_ne!(
        w.hyp.domain_vmid(DomainId(d)),
        w.hyp.domain_vmid(DomainId(e))
    );
    assert_eq!(w.free(0), Err(Error::Invalid));
    assert_eq!(w.free(1), Err(Error::Invalid));
    assert_eq!(w.free(5000), Err(Error::NoEnt));
    assert_eq!(w.free(u64::MAX), Err(Error::NoEnt));
    w.attach(d, 0, SID).unwrap();
    assert_eq!(w.free(d), Err(Error::Busy), "attached");
    w.attach(domain::HOST, 0, SID).unwrap();
    assert_eq!(w.free(d), Ok(()));
    assert_eq!(w.free(d), Err(Error::NoEnt), "twice");
    assert_eq!(w.free(e), Ok(()));
    // Nothing leaked: only the host stage-2 and the SMMU's memory are left.
    let live = w.pool.live().len();
    let d = w.alloc(0).unwrap();
    w.free(d).unwrap();
    assert_eq!(w.pool.live().len(), live);
}

#[test]
fn unsupported_granule_is_invalid() {
    let w = World::new(Opts {
        model: ModelConfig {
            gran16k: false,
            ..ModelConfig::default()
        },
        ..Opts::default()
    });
    assert_eq!(w.alloc(G16K), Err(Error::Invalid));
    assert!(w.alloc(G64K).is_ok());
}

#[test]
fn nospc_when_the_table_or_the_vmids_run_out() {
    let cfg = Config {
        max_domains: 3,
        ..Config::default()
    };
    let w = World::new(Opts {
        cfg,
        ..Opts::default()
    });
    let ids: Vec<u64> = (0..3).map(|_| w.alloc(0).unwrap()).collect();
    assert_eq!(w.alloc(0), Err(Error::NoSpc));
    w.free(ids[1]).unwrap();
    assert!(w.alloc(0).is_ok());

    // 8-bit VMIDs: 255 besides the host's.
    let w = World::new(Opts {
        vmid_bits: 8,
        ..Opts::default()
    });
    let mut ids = Vec::new();
    for _ in 0..255 {
        ids.push(w.alloc(0).unwrap());
    }
    assert_eq!(w.alloc(0), Err(Error::NoSpc));
    w.free(ids[7]).unwrap();
    assert!(
        w.alloc(0).is_ok(),
        "a freed VMID comes back after its invalidation"
    );
}

#[test]
fn domain_alloc_nomem_then_donate_succeeds() {
    let w = world(false);
    w.pool.set_budget(Some(0));
    assert_eq!(w.alloc(0), Err(Error::NoMem));
    // The VMID went back: 16 bits, but check the allocator directly.
    assert_eq!(w.hyp.vmids().lock().allocated_count(), 0);
    w.pool.set_budget(None);
    assert!(w.alloc(0).is_ok());
}

// ----------------------------------------------------------------------------------------
// ATTACH.

#[test]
fn attach_errors_and_moves() {
    let w = World::new(Opts {
        smmus: 2,
        ..Opts::default()
    });
    let d = w.alloc(0).unwrap();
    assert_eq!(w.attach(d, 2, SID), Err(Error::NoEnt), "no such SMMU");
    assert_eq!(
        w.attach(d, 0, 1 << 16),
        Err(Error::NoEnt),
        "beyond the stream table"
    );
    assert_eq!(w.attach(77, 0, SID), Err(Error::NoEnt), "no such domain");
    // Host identity at boot.
    assert_eq!(w.dma(0, SID, HP, true), Ok(PhysAddr(HP)));
    // Blocking.
    w.clear_counts();
    w.attach(domain::BLOCKED, 0, SID).unwrap();
    assert!(w.executed(op::CFGI_STE) >= 1, "CFGI_STE for the change");
    assert_eq!(w.dma(0, SID, HP, true), Err(DmaFault::Abort));
    // A managed domain, then another, then back to the host.
    w.map(d, 0x1000, HP, PAGE).unwrap();
    w.attach(d, 0, SID).unwrap();
    assert_eq!(w.dma(0, SID, 0x1000, true), Ok(PhysAddr(HP)));
    assert_eq!(w.dma(0, SID, HP, true).ok(), None, "no identity any more");
    let e = w.alloc(0).unwrap();
    w.map(e, 0x1000, HP + PAGE, PAGE).unwrap();
    w.attach(e, 0, SID).unwrap();
    assert_eq!(w.dma(0, SID, 0x1000, true), Ok(PhysAddr(HP + PAGE)));
    assert_eq!(w.free(d), Ok(()), "d lost its only endpoint");
    assert_eq!(w.free(e), Err(Error::Busy));
    w.attach(e, 1, SIDS[2]).unwrap();
    assert_eq!(w.dma(1, SIDS[2], 0x1000, false), Ok(PhysAddr(HP + PAGE)));
    w.attach(domain::HOST, 0, SID).unwrap();
    assert_eq!(w.dma(0, SID, HP, true), Ok(PhysAddr(HP)));
    assert_eq!(w.free(e), Err(Error::Busy), "still on SMMU 1");
    w.attach(domain::BLOCKED, 1, SIDS[2]).unwrap();
    assert_eq!(w.free(e), Ok(()));
    assert_eq!(w.pinned_pages(), 0);
}

// ----------------------------------------------------------------------------------------
// MAP / UNMAP / IOVA_TO_PHYS: errors.

#[test]
fn map_errors_change_nothing() {
    let w = world(false);
    let d = mapped(&w, 0, 1);
    let donated = HOST_BASE + 0x40_0000;
    w.donate(donated, 1).unwrap();
    let ipa_top = 1u64 << 44;
    let cases: &[(u64, u64, u64, u64, u64, Error)] = &[
        (d, 0x20_0000 + 8, HP, PAGE, prot::ALL, Error::Invalid), // unaligned iova
        (d, 0x20_0000, HP + 8, PAGE, prot::ALL, Error::Invalid), // unaligned pa
        (d, 0x20_0000, HP, 100, prot::ALL, Error::Invalid),      // unaligned size
        (d, 0x20_0000, HP, 0, prot::ALL, Error::Invalid),        // zero size
        (
            d,
            u64::MAX - PAGE + 1,
            HP,
            2 * PAGE,
            prot::ALL,
            Error::Invalid,
        ), // iova wraps
        (
            d,
            0x20_0000,
            u64::MAX - PAGE + 1,
            2 * PAGE,
            prot::ALL,
            Error::Invalid,
        ), // pa wraps
        (d, ipa_top - PAGE, HP, 2 * PAGE, prot::ALL, Error::Invalid), // beyond the IOVA space
        (d, 0x20_0000, HP, PAGE, 0, Error::Invalid),             // no access
        (d, 0x20_0000, HP, PAGE, 4, Error::Invalid),             // unknown prot bit
        (domain::HOST, 0x20_0000, HP, PAGE, prot::ALL, Error::Invalid),
        (
            domain::BLOCKED,
            0x20_0000,
            HP,
            PAGE,
            prot::ALL,
            Error::Invalid,
        ),
        (99, 0x20_0000, HP, PAGE, prot::ALL, Error::NoEnt),
        (d, 0x20_0000, RAM_BASE, PAGE, prot::ALL, Error::Denied), // Warden's carve-out
        (d, 0x20_0000, donated, PAGE, prot::ALL, Error::Denied),  // donated
        (
            d,
            0x20_0000,
            donated - PAGE,
            2 * PAGE,
            prot::ALL,
            Error::Denied,
        ), // straddles
        (d, 0x20_0000, 0x900_0000, PAGE, prot::ALL, Error::Denied), // MMIO / not RAM
        (
            d,
            0x20_0000,
            HOST_BASE + HOST_SIZE - PAGE,
            2 * PAGE,
            prot::ALL,
            Error::Denied,
        ), // off the end
        (d, 0x10_0000, HP + PAGE, PAGE, prot::ALL, Error::Exist), // already mapped
        (d, 0x0f_f000, HP + PAGE, 2 * PAGE, prot::ALL, Error::Exist), // overlaps
    ];
    let pages = w.stats(stats::PAGES);
    let leaves = w.stats(stats::LEAVES_WRITTEN);
    for &(dom, iova, pa, size, p, err) in cases {
        assert_eq!(
            w.try_call(func::MAP, &[dom, iova, pa, size, p]),
            Err(err),
            "MAP({dom}, {iova:#x}, {pa:#x}, {size:#x}, {p})"
        );
        assert_eq!(w.stats(stats::PAGES), pages, "pins unchanged");
    }
    assert_eq!(w.stats(stats::LEAVES_WRITTEN), leaves);
    assert_eq!(w.dma(0, SID, 0x20_0000, true), Err(DmaFault::Translation));
    assert_eq!(w.dma(0, SID, 0x10_0000, true), Ok(PhysAddr(HP)));
    // Read-only and write-only mappings are enforced by the SMMU.
    w.try_call(func::MAP, &[d, 0x30_0000, HP, PAGE, prot::READ])
        .unwrap();
    assert_eq!(w.dma(0, SID, 0x30_0000, false), Ok(PhysAddr(HP)));
    assert_eq!(w.dma(0, SID, 0x30_0000, true), Err(DmaFault::Permission));
    assert_eq!(w.pins(HP), 2, "two mappings of one page: two pins");
}

#[test]
fn unmap_flush_translate_errors() {
    let w = world(false);
    let d = mapped(&w, 0, 2);
    for (dom, iova, size, err) in [
        (d, 0x10_0000 + 8, PAGE, Error::Invalid),
        (d, 0x10_0000, 8, Error::Invalid),
        (d, 0x10_0000, 0, Error::Invalid),
        (d, u64::MAX - PAGE + 1, 2 * PAGE, Error::Invalid),
        (d, (1 << 44) - PAGE, 2 * PAGE, Error::Invalid),
        (domain::HOST, 0x10_0000, PAGE, Error::Invalid),
        (domain::BLOCKED, 0x10_0000, PAGE, Error::Invalid),
        (1234, 0x10_0000, PAGE, Error::NoEnt),
        (d, 0x80_0000, 16 * PAGE, Error::NoEnt), // nothing mapped there
    ] {
        assert_eq!(
            w.try_call(func::UNMAP, &[dom, iova, size]),
            Err(err),
            "UNMAP({dom}, {iova:#x}, {size:#x})"
        );
    }
    assert_eq!(w.pins(HP), 1);
    assert_eq!(w.flush(domain::HOST), Err(Error::Invalid));
    assert_eq!(w.flush(77), Err(Error::NoEnt));
    assert_eq!(w.flush(d), Ok(()), "strict: nothing pending");
    let t = |dom, iova| w.try_call(func::IOVA_TO_PHYS, &[dom, iova]).map(|r| r[0]);
    assert_eq!(t(d, 0x10_1234), Ok(HP + 0x1234));
    assert_eq!(t(d, 0x10_2000), Err(Error::NoEnt));
    assert_eq!(t(d, 1 << 44), Err(Error::Invalid));
    assert_eq!(t(domain::HOST, 0), Err(Error::Invalid));
    assert_eq!(t(55, 0), Err(Error::NoEnt));
}

#[test]
fn unmap_with_holes_reports_what_it_processed() {
    let w = world(false);
    let d = mapped(&w, 0, 0);
    w.map(d, 0x10_0000, HP, PAGE).unwrap();
    w.map(d, 0x10_2000, HP + 2 * PAGE, PAGE).unwrap();
    // Holes are fine: the whole range is processed.
    assert_eq!(w.unmap(d, 0x10_0000, 8 * PAGE), Ok(8 * PAGE));
    assert_eq!(w.pinned_pages(), 0);
    assert_eq!(w.unmap(d, 0x10_0000, 8 * PAGE), Err(Error::NoEnt));
    // Part of a 2 MiB block: the block is split, the rest stays mapped.
    let blk = HOST_BASE + 2 * MB;
    w.map(d, 0x40_0000, blk, 2 * MB).unwrap();
    assert!(w.dma(0, SID, 0x40_1000, true).is_ok());
    w.clear_counts();
    assert_eq!(w.unmap(d, 0x40_1000, PAGE), Ok(PAGE));
    // Break-before-make of the block already invalidated everything: one sync.
    assert_eq!(w.executed(op::CMD_SYNC), 1);
    assert_eq!(w.dma(0, SID, 0x40_1000, true), Err(DmaFault::Translation));
    assert_eq!(w.dma(0, SID, 0x40_2000, true), Ok(PhysAddr(blk + 2 * PAGE)));
    assert_eq!(w.pins(blk + PAGE), 0);
    assert_eq!(w.pins(blk), 1);
    assert_eq!(w.pinned_pages(), 511);
}

#[test]
fn map_and_unmap_do_bounded_work() {
    let cfg = Config {
        max_map_bytes: 64 << 10,
        ..Config::default()
    };
    let w = World::new(Opts {
        cfg,
        ..Opts::default()
    });
    let d = mapped(&w, 0, 0);
    let (mut iova, mut pa, mut left) = (0x10_0000u64, HP, 40 * PAGE);
    let mut calls = 0;
    while left != 0 {
        let n = w.map(d, iova, pa, left).unwrap();
        assert!(n <= 64 << 10 && n != 0);
        (iova, pa, left) = (iova + n, pa + n, left - n);
        calls += 1;
    }
    assert_eq!(calls, 3);
    assert_eq!(w.pinned_pages(), 40);
    let n = w.unmap(d, 0x10_0000, 64 * PAGE).unwrap();
    assert_eq!(n, 16 * PAGE, "stops after 64 KiB of mapped memory");
    assert_eq!(w.unmap(d, 0x10_0000 + n, 64 * PAGE - n), Ok(16 * PAGE));
    assert_eq!(
        w.unmap(d, 0x12_0000, 32 * PAGE),
        Ok(32 * PAGE),
        "the rest, then holes"
    );
    assert_eq!(w.pinned_pages(), 0);
}

// ----------------------------------------------------------------------------------------
// DMA evidence, invalidation budgets.

#[test]
fn strict_unmap_one_tlbi_one_sync_and_no_stale_hit() {
    for ril in [true, false] {
        for (btm, cpu) in [(false, false), (true, false), (true, true)] {
            let cfg = Config {
                domain_cpu_tlbi: cpu,
                ..Config::default()
            };
            let w = World::new(Opts {
                btm,
                ril,
                cfg,
                ..Opts::default()
            });
            let d = mapped(&w, 0, 1);
            // The device uses it: its translation is now in the SMMU's TLB.
            assert_eq!(w.dma(0, SID, 0x10_0000, true), Ok(PhysAddr(HP)));
            assert_eq!(w.pins(HP), 1);
            w.clear_counts();
            let tlbis = w.cpu.0.vmid_tlbis.get();
            assert_eq!(w.unmap(d, 0x10_0000, PAGE), Ok(PAGE));
            assert_eq!(
                w.dma(0, SID, 0x10_0000, true),
                Err(DmaFault::Translation),
                "no stale hit after strict UNMAP (btm {btm}, cpu {cpu}, ril {ril})"
            );
            assert_eq!(w.pins(HP), 0);
            if btm && cpu {
                assert_eq!(w.executed(op::CMD_SYNC), 0);
                assert_eq!(w.executed(op::TLBI_S2_IPA), 0);
                assert_eq!(w.cpu.0.vmid_tlbis.get() - tlbis, 1);
            } else {
                assert_eq!(
                    w.executed(op::TLBI_S2_IPA),
                    1,
                    "{:?}",
                    w.models[0].executed()
                );
                assert_eq!(w.executed(op::TLBI_S12_VMALL), 0);
                assert_eq!(w.executed(op::CMD_SYNC), 1);
            }
        }
    }
}

#[test]
fn strict_unmap_of_a_range_is_one_range_per_contiguous_run() {
    let w = world(false);
    let d = mapped(&w, 0, 64);
    for i in 0..64 {
        assert!(w.dma(0, SID, 0x10_0000 + i * PAGE, false).is_ok());
    }
    w.clear_counts();
    assert_eq!(w.unmap(d, 0x10_0000, 64 * PAGE), Ok(64 * PAGE));
    assert_eq!(
        w.executed(op::TLBI_S2_IPA),
        1,
        "one RIL command for 64 pages"
    );
    assert_eq!(w.executed(op::CMD_SYNC), 1);
    for i in 0..64 {
        assert!(w.dma(0, SID, 0x10_0000 + i * PAGE, false).is_err());
    }
}

#[test]
fn batched_unmap_is_stale_until_flush_then_faults_and_unpins() {
    each_config(|w, what| {
        let d = mapped(&w, BATCHED, 1);
        assert_eq!(w.dma(0, SID, 0x10_0000, true), Ok(PhysAddr(HP)));
        w.clear_counts();
        assert_eq!(w.unmap(d, 0x10_0000, PAGE), Ok(PAGE));
        assert_eq!(w.executed(op::CMD_SYNC), 0, "{what}: nothing issued yet");
        assert_eq!(w.pins(HP), 1, "{what}: still pinned while pending");
        assert_eq!(w.stats(stats::PAGES)[1], 1, "one page pending");
        if w.hyp.cpu_path() {
            // Nothing issued: the stale entry is still there either way.
        }
        assert_eq!(
            w.dma(0, SID, 0x10_0000, true),
            Ok(PhysAddr(HP)),
            "{what}: the stale translation still hits (the host's choice)"
        );
        assert_eq!(
            w.hyp.iova_to_phys(DomainId(d), Iova(0x10_0000)),
            Err(Error::NoEnt)
        );
        w.flush(d).unwrap();
        assert_eq!(w.dma(0, SID, 0x10_0000, true), Err(DmaFault::Translation));
        assert_eq!(w.pins(HP), 0);
        assert_eq!(w.stats(stats::PAGES)[1], 0);
    });
}

#[test]
fn map_over_a_queued_unmap_is_never_shadowed_by_its_stale_entry() {
    let w = world(false);
    let d = mapped(&w, BATCHED, 1);
    assert_eq!(w.dma(0, SID, 0x10_0000, true), Ok(PhysAddr(HP)));
    w.unmap(d, 0x10_0000, PAGE).unwrap();
    assert_eq!(w.dma(0, SID, 0x10_0000, true), Ok(PhysAddr(HP)), "stale");
    // Mapping the IOVA again completes the queue first.
    w.map(d, 0x10_0000, HP + PAGE, PAGE).unwrap();
    assert_eq!(w.dma(0, SID, 0x10_0000, true), Ok(PhysAddr(HP + PAGE)));
    assert_eq!(w.pins(HP), 0);
    // A neighbour in the same table does not force a flush.
    assert!(w.dma(0, SID, 0x10_0000, true).is_ok());
    w.unmap(d, 0x10_0000, PAGE).unwrap();
    w.clear_counts();
    w.map(d, 0x10_1000, HP + 2 * PAGE, PAGE).unwrap();
    assert_eq!(w.executed(op::CMD_SYNC), 0);
    assert_eq!(w.pins(HP + PAGE), 1, "still queued");
}

#[test]
fn batched_threshold_and_deadline_flush() {
    let cfg = Config {
        batch_threshold: 4,
        ..Config::default()
    };
    let w = World::new(Opts {
        cfg,
        ..Opts::default()
    });
    let d = mapped(&w, BATCHED, 8);
    for i in 0..8 {
        assert!(w.dma(0, SID, 0x10_0000 + i * PAGE, true).is_ok());
    }
    for i in 0..3 {
        w.unmap(d, 0x10_0000 + i * PAGE, PAGE).unwrap();
    }
    assert_eq!(w.stats(stats::PAGES)[1], 3);
    assert!(w.dma(0, SID, 0x10_0000, true).is_ok(), "stale");
    w.unmap(d, 0x10_3000, PAGE).unwrap();
    assert_eq!(
        w.stats(stats::PAGES)[1],
        0,
        "the 4th range flushed the queue"
    );
    for i in 0..4 {
        assert!(w.dma(0, SID, 0x10_0000 + i * PAGE, true).is_err());
        assert_eq!(w.pins(HP + i * PAGE), 0);
    }
    // Deadline: 10 ms after the oldest pending unmap, the next call (any call) flushes.
    w.unmap(d, 0x10_4000, PAGE).unwrap();
    w.tick_ms(5);
    w.try_call(func::FEATURES, &[]).unwrap();
    assert_eq!(w.pins(HP + 4 * PAGE), 1, "not yet");
    w.unmap(d, 0x10_5000, PAGE).unwrap();
    w.tick_ms(5);
    w.try_call(func::FEATURES, &[]).unwrap();
    assert_eq!(w.pins(HP + 4 * PAGE), 0, "the oldest's deadline passed");
    assert_eq!(w.pins(HP + 5 * PAGE), 0, "the whole queue went");
    assert!(w.dma(0, SID, 0x10_4000, true).is_err());
    // An unknown call also triggers it.
    w.unmap(d, 0x10_6000, PAGE).unwrap();
    w.tick_ms(11);
    assert_eq!(w.try_call(0xC600_0F00, &[]), Err(Error::NotSupported));
    assert_eq!(w.pins(HP + 6 * PAGE), 0);
}

#[test]
fn batched_256_single_page_unmaps_and_flush_take_at_most_two_syncs() {
    each_config(|w, what| {
        let d = mapped(&w, BATCHED, 0);
        for i in 0..256 {
            w.map(d, 0x10_0000 + i * PAGE, HP + i * PAGE, PAGE).unwrap();
            assert!(w.dma(0, SID, 0x10_0000 + i * PAGE, false).is_ok());
        }
        w.clear_counts();
        let tlbis = w.cpu.0.vmid_tlbis.get();
        for i in 0..256 {
            assert_eq!(w.unmap(d, 0x10_0000 + i * PAGE, PAGE), Ok(PAGE));
        }
        w.flush(d).unwrap();
        let syncs = w.executed(op::CMD_SYNC);
        println!(
            "{what}: 256 batched unmaps + FLUSH: {syncs} CMD_SYNC, {} TLBI_S2_IPA, {} TLBI_S12_VMALL, {} CPU TLBI",
            w.executed(op::TLBI_S2_IPA),
            w.executed(op::TLBI_S12_VMALL),
            w.cpu.0.vmid_tlbis.get() - tlbis
        );
        assert!(syncs <= 2, "{what}: {syncs} syncs");
        for i in 0..256 {
            assert!(w.dma(0, SID, 0x10_0000 + i * PAGE, false).is_err());
        }
        assert_eq!(w.pinned_pages(), 0);
    });
}

#[test]
fn map_of_an_aligned_2m_range_writes_one_block() {
    let w = world(false);
    let d = mapped(&w, 0, 0);
    let before = w.stats(stats::LEAVES_WRITTEN);
    assert_eq!(w.map(d, 0x20_0000, HOST_BASE + 2 * MB, 2 * MB), Ok(2 * MB));
    let after = w.stats(stats::LEAVES_WRITTEN);
    assert_eq!(
        [
            after[0] - before[0],
            after[1] - before[1],
            after[2] - before[2]
        ],
        [0, 1, 0]
    );
    assert_eq!(w.pinned_pages(), 512);
    assert_eq!(
        w.dma(0, SID, 0x20_0000 + 0x1f_f000, true),
        Ok(PhysAddr(HOST_BASE + 4 * MB - PAGE))
    );
    // Misaligned PA: pages.
    let before = after;
    w.map(d, 0x60_0000, HOST_BASE + 2 * MB + PAGE, 16 * PAGE)
        .unwrap();
    let after = w.stats(stats::LEAVES_WRITTEN);
    assert_eq!(after[2] - before[2], 16);
}

#[test]
fn recycled_vmid_never_serves_a_stale_translation() {
    for btm in [false, true] {
        let w = World::new(Opts {
            btm,
            vmid_bits: 8,
            ..Opts::default()
        });
        let d = mapped(&w, 0, 1);
        let vmid = w.hyp.domain_vmid(DomainId(d)).unwrap();
        assert_eq!(w.dma(0, SID, 0x10_0000, true), Ok(PhysAddr(HP)));
        w.attach(domain::HOST, 0, SID).unwrap();
        w.clear_counts();
        w.free(d).unwrap();
        assert!(
            w.executed(op::TLBI_S12_VMALL) >= 1,
            "quarantine invalidation"
        );
        assert_eq!(w.models[0].tlb_entries(vmid.raw()), 0);
        // Cycle through the VMIDs until the same one comes back.
        let mut e;
        let mut n = 0;
        loop {
            e = w.alloc(0).unwrap();
            if w.hyp.domain_vmid(DomainId(e)) == Some(vmid) {
                break;
            }
            w.free(e).unwrap();
            n += 1;
            assert!(n < 300, "VMID never recycled");
        }
        w.map(e, 0x10_0000, HP + 8 * PAGE, PAGE).unwrap();
        w.attach(e, 0, SID).unwrap();
        assert_eq!(
            w.dma(0, SID, 0x10_0000, true),
            Ok(PhysAddr(HP + 8 * PAGE)),
            "the new domain's translation, not the old one"
        );
    }
}

#[test]
fn invalidations_go_to_every_smmu_the_domain_ever_used() {
    let w = World::new(Opts {
        smmus: 2,
        ..Opts::default()
    });
    let d = mapped(&w, 0, 2);
    w.attach(d, 1, SID).unwrap();
    assert!(w.dma(1, SID, 0x10_0000, true).is_ok());
    // Detach from SMMU 1: its TLB still holds the entry, tagged with the VMID.
    w.attach(domain::BLOCKED, 1, SID).unwrap();
    w.clear_counts();
    w.unmap(d, 0x10_0000, PAGE).unwrap();
    assert_eq!(w.models[1].count(op::CMD_SYNC), 1, "SMMU 1 invalidated too");
    w.attach(d, 1, SID).unwrap();
    assert_eq!(w.dma(1, SID, 0x10_0000, true), Err(DmaFault::Translation));
    // A domain never attached to SMMU 1 does not bother it.
    let e = mapped(&w, 0, 0);
    w.map(e, 0x1000, HP, PAGE).unwrap();
    w.clear_counts();
    w.unmap(e, 0x1000, PAGE).unwrap();
    assert_eq!(w.models[1].count(op::CMD_SYNC), 0);
    assert_eq!(w.models[0].count(op::CMD_SYNC), 1);
}

// ----------------------------------------------------------------------------------------
// Ownership: MEM_DONATE / MEM_RECLAIM against pins.

#[test]
fn donate_busy_while_mapped_and_flushes_pending_pages() {
    each_config(|w, what| {
        let d = mapped(&w, BATCHED, 2);
        assert!(w.dma(0, SID, 0x10_0000, true).is_ok());
        assert_eq!(w.donate(HP, 1), Err(Error::Busy), "{what}: mapped");
        assert_eq!(w.donate(HP + PAGE, 1), Err(Error::Busy));
        w.unmap(d, 0x10_0000, PAGE).unwrap();
        assert_eq!(w.pins(HP), 1, "pending");
        assert_eq!(w.donate(HP, 2), Err(Error::Busy), "page 2 still mapped");
        assert_eq!(w.pins(HP), 0, "…but the queue holding page 1 was flushed");
        assert_eq!(w.dma(0, SID, 0x10_0000, true), Err(DmaFault::Translation));
        w.unmap(d, 0x10_1000, PAGE).unwrap();
        assert_eq!(w.pins(HP + PAGE), 1, "pending again");
        assert_eq!(w.donate(HP, 2), Ok(()), "{what}: flush, then donate");
        assert_eq!(w.pinned_pages(), 0);
        assert!(w.dma(0, SID, 0x10_1000, true).is_err());
        assert_eq!(w.stats(stats::PAGES)[2], 2);
        // The host's own DMA (identity domain) no longer reaches them either.
        w.attach(domain::HOST, 0, SIDS[1]).unwrap();
        assert!(w.dma(0, SIDS[1], HP, true).is_err());
        assert_eq!(
            w.dma(0, SIDS[1], HP + 2 * PAGE, true),
            Ok(PhysAddr(HP + 2 * PAGE))
        );
        // And they cannot be mapped.
        assert_eq!(w.map(d, 0x50_0000, HP, PAGE), Err(Error::Denied));
        assert_eq!(w.reclaim(2), Ok((HP, 2)));
        assert_eq!(w.map(d, 0x50_0000, HP, PAGE), Ok(PAGE));
    });
}

#[test]
fn nomem_then_donate_then_map_succeeds_and_tables_stay_hidden() {
    let w = world(false);
    let d = mapped(&w, 0, 0);
    let pool_pages = w.pool.free_pages();
    // Use up the carve-out.
    let mut hog = Vec::new();
    let mut p = w.pool.clone();
    while let Some(pa) = p.alloc_zeroed(4096, 4096) {
        hog.push(pa);
    }
    assert!(pool_pages > 0 && w.pool.free_pages() == 0);
    let pages = w.stats(stats::PAGES);
    assert_eq!(w.map(d, 0x4000_0000, HP, PAGE), Err(Error::NoMem));
    assert_eq!(w.stats(stats::PAGES), pages, "nothing pinned");
    assert_eq!(w.reclaim(1), Err(Error::NoEnt), "nothing donated");
    let donated = HOST_BASE + 6 * MB;
    w.donate(donated, 8).unwrap();
    assert_eq!(w.map(d, 0x4000_0000, HP, PAGE), Ok(PAGE));
    assert_eq!(w.dma(0, SID, 0x4000_0000, false), Ok(PhysAddr(HP)));
    // The new tables live in the donated pages, which neither the host nor any device
    // can reach.
    let tables: Vec<u64> = (0..8)
        .map(|i| donated + i * PAGE)
        .filter(|&a| w.pool.is_live(a))
        .collect();
    assert!(!tables.is_empty());
    for &t in &tables {
        assert!(
            !w.hyp
                .with_host_mem(|h| h.host_owns(&w.pool, PhysRange::new(t, PAGE)))
        );
        assert_eq!(w.map(d, 0x10_0000, t, PAGE), Err(Error::Denied));
    }
    w.attach(domain::HOST, 0, SIDS[1]).unwrap();
    assert!(w.dma(0, SIDS[1], tables[0], false).is_err());
    // Reclaim gives back only pages the pool does not use.
    let (pa, n) = w.reclaim(8).unwrap();
    for i in 0..n {
        assert!(!tables.contains(&(pa + i * PAGE)), "a live table went back");
    }
    // Once the domain is gone, everything can come back.
    w.attach(domain::HOST, 0, SID).unwrap();
    w.free(d).unwrap();
    let mut back = n;
    while let Ok((_, n)) = w.reclaim(8) {
        back += n;
    }
    // What is still donated is in use: the host stage-2's reserve of table pages.
    let kept = w.hyp.with_host_mem(|h| h.donated().to_vec());
    let kept_pages: u64 = kept.iter().map(|r| r.size / PAGE).sum();
    assert_eq!(back + kept_pages, 8);
    assert!(kept_pages <= HOST_RESERVE_PAGES as u64);
    for r in kept {
        for i in 0..r.size / PAGE {
            assert!(w.pool.is_live(r.base.get() + i * PAGE));
        }
    }
    assert_eq!(w.stats(stats::PAGES)[2], kept_pages);
    for pa in hog {
        // SAFETY: allocated above, never used.
        unsafe { p.free(pa, 4096) };
    }
}

#[test]
fn reclaim_errors() {
    let w = world(false);
    assert_eq!(w.reclaim(0), Err(Error::Invalid));
    assert_eq!(w.reclaim(u64::MAX), Err(Error::Invalid));
    assert_eq!(w.reclaim(1), Err(Error::NoEnt));
    assert_eq!(w.donate(HP + 8, 1), Err(Error::Invalid));
    assert_eq!(w.donate(HP, 0), Err(Error::Invalid));
    assert_eq!(w.donate(RAM_BASE, 1), Err(Error::Denied));
}

// ----------------------------------------------------------------------------------------
// Granules.

#[test]
fn large_granules_need_every_4k_page_host_owned() {
    let w = world(false);
    let d64 = w.alloc(G64K).unwrap();
    w.attach(d64, 0, SID).unwrap();
    let g = 64 << 10;
    let base = HOST_BASE + MB;
    // One 4 KiB page inside the second 64 KiB granule goes to Warden.
    w.donate(base + g + 3 * PAGE, 1).unwrap();
    assert_eq!(w.map(d64, 0x100_0000, base + g, g), Err(Error::Denied));
    assert_eq!(w.map(d64, 0x100_0000, base, 2 * g), Err(Error::Denied));
    assert_eq!(
        w.map(d64, 0x100_0000, base + PAGE, g),
        Err(Error::Invalid),
        "pa alignment"
    );
    assert_eq!(
        w.map(d64, 0x100_1000, base, g),
        Err(Error::Invalid),
        "iova alignment"
    );
    assert_eq!(
        w.map(d64, 0x100_0000, base, PAGE),
        Err(Error::Invalid),
        "size alignment"
    );
    assert_eq!(w.map(d64, 0x100_0000, base, g), Ok(g));
    assert_eq!(w.pinned_pages(), 16, "every 4 KiB page of the granule");
    assert_eq!(
        w.dma(0, SID, 0x100_0000 + g - 8, true),
        Ok(PhysAddr(base + g - 8))
    );
    assert_eq!(w.donate(base + 5 * PAGE, 1), Err(Error::Busy));
    assert_eq!(w.unmap(d64, 0x100_0000, g), Ok(g));
    assert!(w.dma(0, SID, 0x100_0000, true).is_err());
    assert_eq!(w.pinned_pages(), 0);
    // 16 KiB, batched.
    let d16 = w.alloc(G16K | BATCHED).unwrap();
    w.attach(d16, 0, SID).unwrap();
    assert_eq!(w.map(d16, 0x4000, base, 4 * PAGE), Ok(4 * PAGE));
    assert_eq!(
        w.dma(0, SID, 0x4000 + 0x3008, false),
        Ok(PhysAddr(base + 0x3008))
    );
    w.unmap(d16, 0x4000, 4 * PAGE).unwrap();
    w.flush(d16).unwrap();
    assert!(w.dma(0, SID, 0x4000, false).is_err());
    assert_eq!(w.pinned_pages(), 0);
}

// ----------------------------------------------------------------------------------------
// Non-coherent domains.

#[test]
fn non_coherent_domains_clean_caches_both_ways() {
    let w = World::new(Opts {
        coherent: false,
        ..Opts::default()
    });
    let buf = HP;
    // What a missing clean looks like: the CPU's write sits in its cache.
    w.ram.write_u64(buf, 0x1111);
    let plain = w.alloc(0).unwrap();
    w.attach(plain, 0, SID).unwrap();
    w.map(plain, 0x1000, buf, PAGE).unwrap();
    assert_eq!(
        w.dev_read(0, SID, 0x1000),
        Ok(0),
        "stale: memory never saw the write"
    );
    w.unmap(plain, 0x1000, PAGE).unwrap();
    // The core's cleans for a non-coherent domain.
    let d = w.alloc(NC).unwrap();
    w.attach(d, 0, SID).unwrap();
    w.map(d, 0x1000, buf, PAGE).unwrap();
    assert_eq!(
        w.dev_read(0, SID, 0x1000),
        Ok(0x1111),
        "cleaned before reachable"
    );
    // The device writes; the CPU sees it once the UNMAP returned.
    w.dev_write(0, SID, 0x1008, 0x2222).unwrap();
    assert_eq!(
        w.ram.read_u64(buf + 8),
        0,
        "the CPU's line is stale while mapped"
    );
    w.unmap(d, 0x1000, PAGE).unwrap();
    assert_eq!(w.ram.read_u64(buf + 8), 0x2222, "invalidated after UNMAP");
    // Batched: after FLUSH.
    let b = w.alloc(NC | BATCHED).unwrap();
    w.attach(b, 0, SID).unwrap();
    w.map(b, 0x1000, buf + PAGE, PAGE).unwrap();
    w.dev_write(0, SID, 0x1000, 0x3333).unwrap();
    w.unmap(b, 0x1000, PAGE).unwrap();
    w.flush(b).unwrap();
    assert_eq!(w.ram.read_u64(buf + PAGE), 0x3333);
    // Without the core's cleans the same sequence leaves the CPU stale.
    w.cpu.0.skip_cleans.set(true);
    w.map(b, 0x1000, buf + 2 * PAGE, PAGE).unwrap();
    w.dev_write(0, SID, 0x1000, 0x4444).unwrap();
    w.unmap(b, 0x1000, PAGE).unwrap();
    w.flush(b).unwrap();
    assert_eq!(w.ram.read_u64(buf + 2 * PAGE), 0, "stale without the clean");
}

// ----------------------------------------------------------------------------------------
// STATS, EVENT_POLL.

#[test]
fn stats_groups_count_what_happened() {
    let w = world(false);
    let calls0 = w.stats(stats::CALLS_SYNCS_TLBIS)[0];
    let d = mapped(&w, BATCHED, 4);
    let c = w.stats(stats::CALLS_SYNCS_TLBIS);
    assert_eq!(c[0], calls0 + 1 + 3, "STATS, ALLOC, ATTACH, MAP");
    let cmds = w.stats(stats::SMMU_COMMANDS);
    assert!(cmds[2] >= 3, "CFGI_STE per attach step: {cmds:?}");
    w.unmap(d, 0x10_0000, 2 * PAGE).unwrap();
    assert_eq!(w.stats(stats::PAGES), [4, 2, 0]);
    w.flush(d).unwrap();
    assert_eq!(w.stats(stats::PAGES), [2, 0, 0]);
    assert_eq!(w.stats(stats::DMA_CALLS), [1, 1, 1]);
    let before = w.stats(stats::CALLS_SYNCS_TLBIS);
    w.donate(HOST_BASE + 7 * MB, 1).unwrap();
    let after = w.stats(stats::CALLS_SYNCS_TLBIS);
    assert_eq!(after[2] - before[2], 1, "one CPU TLBI for the donation");
    assert_eq!(after[1] - before[1], 1, "one CMD_SYNC (no BTM)");
    assert_eq!(w.stats(stats::PAGES)[2], 1);
}

#[test]
fn event_poll_reports_faults() {
    let w = world(false);
    let d = mapped(&w, 0, 1);
    assert_eq!(w.try_call(func::EVENT_POLL, &[]), Err(Error::NoEnt));
    assert!(w.dma(0, SID, 0x70_0000, false).is_err());
    let [ep, addr, flags] = w.try_call(func::EVENT_POLL, &[]).unwrap();
    assert_eq!(ep, host_abi::endpoint(0, SID));
    assert_eq!(addr, 0x70_0000);
    assert_eq!(flags & 0xff, 0x10, "F_TRANSLATION");
    assert_ne!(flags & event::FLAG_READ, 0);
    assert_ne!(flags & event::FLAG_STAGE2, 0);
    assert_eq!(flags & event::FLAG_LOST, 0);
    assert_eq!(w.try_call(func::EVENT_POLL, &[]), Err(Error::NoEnt));
    // More than the ring holds: the oldest go, the next poll says so.
    for i in 0..100 {
        assert!(w.dma(0, SID, 0x80_0000 + i * PAGE, true).is_err());
    }
    w.hyp.drain_events();
    let [_, addr, flags] = w.try_call(func::EVENT_POLL, &[]).unwrap();
    assert_ne!(flags & event::FLAG_LOST, 0);
    assert_eq!(addr, 0x80_0000 + 36 * PAGE);
    assert_eq!(flags & event::FLAG_READ, 0);
    let _ = d;
}

// ----------------------------------------------------------------------------------------
// BTM: SMMU commands against CPU TLBIs for domain invalidation.

/// Runs one workload and returns (CMD_SYNCs, SMMU TLBI commands, CPU TLBIs).
fn workload(w: &World) -> (u64, u64, u64) {
    let strict = mapped(w, 0, 0);
    let batched = w.alloc(BATCHED).unwrap();
    w.attach(batched, 0, SIDS[1]).unwrap();
    w.clear_counts();
    let cpu0 = w.cpu.0.vmid_tlbis.get() + w.cpu.0.host_tlbis.get();
    for i in 0..128 {
        let iova = 0x10_0000 + i * PAGE;
        w.map(strict, iova, HP + i * PAGE, PAGE).unwrap();
        assert!(w.dma(0, SID, iova, true).is_ok());
        w.unmap(strict, iova, PAGE).unwrap();
        assert!(w.dma(0, SID, iova, true).is_err());
        w.map(batched, iova, HP + i * PAGE, PAGE).unwrap();
        assert!(w.dma(0, SIDS[1], iova, true).is_ok());
        w.unmap(batched, iova, PAGE).unwrap();
    }
    w.flush(batched).unwrap();
    for i in 0..8 {
        w.donate(HOST_BASE + 7 * MB + i * PAGE, 1).unwrap();
    }
    let tlbi = w.executed(op::TLBI_S2_IPA) + w.executed(op::TLBI_S12_VMALL);
    (
        w.executed(op::CMD_SYNC),
        tlbi,
        w.cpu.0.vmid_tlbis.get() + w.cpu.0.host_tlbis.get() - cpu0,
    )
}

#[test]
fn btm_comparison_report() {
    let mut rows = Vec::new();
    each_config(|w, what| rows.push((what.to_string(), workload(&w))));
    println!("domain invalidation paths, 128 strict + 128 batched map/unmap, 8 donations:");
    println!(
        "{:<24} {:>9} {:>12} {:>9}",
        "config", "CMD_SYNC", "SMMU TLBIs", "CPU TLBI"
    );
    for (what, (s, t, c)) in &rows {
        println!("{what:<24} {s:>9} {t:>12} {c:>9}");
    }
    let base = rows[0].1;
    for (what, (s, t, c)) in &rows[1..] {
        println!(
            "{what}: syncs x{:.2}, SMMU TLBIs x{:.2}, CPU TLBIs x{:.2} of btm off",
            *s as f64 / base.0 as f64,
            *t as f64 / base.1 as f64,
            *c as f64 / base.2.max(1) as f64
        );
    }
    // With BTM, host stage-2 changes need no SMMU command; with the CPU path domains need
    // none either.
    assert!(rows[1].1.0 < rows[0].1.0);
    assert_eq!(rows[2].1.0, 0);
    assert_eq!(rows[2].1.1, 0);
    assert!(rows[2].1.2 > rows[1].1.2);
}
