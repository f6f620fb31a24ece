//! The checks and the order they run in (exactly [`crate::names::CHECKS`]).

mod api;
mod budget;
mod dma;
mod firmware;
mod smp;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use el1_rt::edu::Edu;
use el1_rt::rt::report;
use el1_rt::{logic, println, rt, smccc};
use hyp::dtb::Platform;

use crate::env::{Device, Env};
use crate::names::CHECKS;
use crate::plan::Features;

type R = Result<String, String>;

/// One step of the run: a check, or a sequence that reports several.
enum Step {
    One(&'static str, fn(&Env) -> R),
    Many(&'static [&'static str], fn(&Env) -> Vec<R>),
}

const STEPS: &[Step] = &[
    Step::One("smccc-version", api::smccc_version),
    Step::One("arch-features", api::arch_features),
    Step::One("call-uid", api::call_uid),
    Step::One("revision", api::revision),
    Step::One("features", api::features),
    Step::One("unknown-call", api::unknown_call),
    Step::One("alloc-strict", api::alloc_strict),
    Step::One("alloc-batched", api::alloc_batched),
    Step::One("alloc-bad-flags", api::alloc_bad_flags),
    Step::One("alloc-bad-granule", api::alloc_bad_granule),
    Step::One("alloc-limit", api::alloc_limit),
    Step::One("free-unknown", api::free_unknown),
    Step::One("free-attached", api::free_attached),
    Step::One("free-reuse", api::free_reuse),
    Step::One("attach-unknown-domain", api::attach_unknown_domain),
    Step::One("attach-unknown-endpoint", api::attach_unknown_endpoint),
    Step::One("attach-domain", dma::attach_domain),
    Step::One("attach-host", dma::attach_host),
    Step::One("attach-blocked", dma::attach_blocked),
    Step::One("map-unaligned", api::map_unaligned),
    Step::One("map-size-zero", api::map_size_zero),
    Step::One("map-iova-overflow", api::map_iova_overflow),
    Step::One("map-pa-overflow", api::map_pa_overflow),
    Step::One("map-bad-prot", api::map_bad_prot),
    Step::One("map-unknown-domain", api::map_unknown_domain),
    Step::One("map-fixed-domains", api::map_fixed_domains),
    Step::One("map-double", api::map_double),
    Step::One("map-carveout-denied", api::map_carveout_denied),
    Step::One("map-donated-denied", api::map_donated_denied),
    Step::One("unmap-nothing", api::unmap_nothing),
    Step::One("unmap-errors", api::unmap_errors),
    Step::One("iova-to-phys", api::iova_to_phys),
    Step::One("dma-iova-translate", dma::dma_iova_translate),
    Step::One("dma-read-only", dma::dma_read_only),
    Step::One("dma-strict-unmap", dma::dma_strict_unmap),
    Step::One("domain-isolation", dma::domain_isolation),
    Step::Many(
        &[
            "batched-unmap-pending",
            "batched-donate-pending",
            "batched-flush",
        ],
        |env| dma::batched(env).into(),
    ),
    Step::One("batched-deadline", dma::batched_deadline),
    Step::One("vmid-recycle", dma::vmid_recycle),
    Step::One("dma-carveout-fault", dma::dma_carveout_fault),
    Step::One("event-poll", dma::event_poll),
    Step::One("donate-mapped-busy", dma::donate_mapped_busy),
    Step::One("pool-exhaustion", budget::pool_exhaustion),
    Step::One("budget-strict-unmap", budget::budget_strict_unmap),
    Step::One("budget-batched-flush", budget::budget_batched_flush),
    Step::One("budget-block-map", budget::budget_block_map),
    Step::Many(
        &[
            "smp-bringup",
            "smp-concurrent",
            "smp-pins-balanced",
            "smp-cpu-off",
        ],
        |env| smp::smp(env).into(),
    ),
    Step::Many(
        &[
            "fw-other-services-refused",
            "fw-system-suspend-refused",
            "fw-cpu-suspend-powerdown-refused",
            "fw-cpu-suspend-standby",
            "fw-psci-features",
            "fw-cpu-on-sve-hint",
            "s2-permission-fault",
        ],
        |env| firmware::firmware(env).into(),
    ),
];

/// The names the steps report, in order.
fn step_names() -> impl Iterator<Item = &'static str> {
    STEPS.iter().flat_map(|s| match s {
        Step::One(n, _) => core::slice::from_ref(n).iter().copied(),
        Step::Many(ns, _) => ns.iter().copied(),
    })
}

/// Sets up the environment and runs every check, reporting each.
pub fn run(plat: &Platform, dtb: &[u8]) {
    if !step_names().eq(CHECKS.iter().copied()) {
        report(
            "setup",
            Err("the image's step table and names.rs disagree (a build mistake)".into()),
        );
        return;
    }
    let uid = smccc::call_uid();
    println!(
        "conformance: hypervisor UID {:08x}-{:08x}-{:08x}-{:08x}; {} checks",
        uid.x0 as u32,
        uid.x1 as u32,
        uid.x2 as u32,
        uid.x3 as u32,
        CHECKS.len()
    );
    let bases = logic::warden_node_bases(dtb);
    let carve = logic::carve_outs(plat, &bases);
    for c in &carve {
        println!(
            "conformance: Warden carve-out {:#x}..{:#x} (/reserved-memory/warden@{:x})",
            c.base.get(),
            c.end(),
            c.base.get()
        );
    }
    let (devs, devs_error) = match Edu::setup_all(plat) {
        Ok(found) => {
            let mut devs = Vec::new();
            let mut problems = Vec::new();
            for (index, (edu, info)) in found.into_iter().take(2).enumerate() {
                println!("conformance: {info}");
                match edu.stream {
                    Some((sid, phandle)) => match plat.smmu_by_phandle(phandle) {
                        Some(smmu) => {
                            let ep = host_abi::endpoint(smmu as u32, sid);
                            println!(
                                "conformance: edu #{} at {} is endpoint {ep:#x} (SMMU {smmu}, StreamID {sid:#x})",
                                index + 1,
                                edu.bdf
                            );
                            devs.push(Device { edu, ep, index });
                        }
                        None => problems.push(format!(
                            "edu at {}: its iommu-map names phandle {phandle:#x}, not an SMMU",
                            edu.bdf
                        )),
                    },
                    None => problems.push(format!(
                        "edu at {}: no iommu-map entry (it would not be behind the SMMU)",
                        edu.bdf
                    )),
                }
            }
            let err = (!problems.is_empty()).then(|| problems.join("; "));
            (devs, err)
        }
        Err(e) => (Vec::new(), Some(e)),
    };
    if let Some(e) = &devs_error {
        println!("conformance: no usable edu device: {e}");
    }
    let f = smccc::features();
    let feat = f.ok().then(|| Features::from_regs(f.x1, f.x2, f.x3));
    let env = Env {
        plat,
        carve,
        devs,
        devs_error,
        feat,
        ram_end: plat.ram.iter().map(|r| r.end()).max().unwrap_or(0),
    };
    let start = rt::counter();
    for step in STEPS {
        match step {
            Step::One(name, f) => report(name, f(&env)),
            Step::Many(names, f) => {
                let rs = f(&env);
                for (name, r) in names.iter().zip(rs) {
                    report(name, r);
                }
            }
        }
    }
    println!(
        "conformance: {} ms; heap {} KiB used",
        rt::ms_between(start, rt::counter()),
        rt::heap_used().div_ceil(1024)
    );
}
