//! Invalidation counts, step by step, as the fan-outs before the one gather (817afc3)
//! issued them: splits, whole-VMID limits, batched queues and their flushes, donations
//! and domain frees, on two SMMUs, with RIL on and off, BTM off, BTM with SMMU commands
//! and BTM with CPU TLBIs for domains. The expected lines were recorded by running this
//! workload on 817afc3; any change of a CMD_SYNC, TLBI or CFGI count fails here.

use super::*;
/// Runs a workload of splits, whole-VMID limits, batched queues, donations and frees on
/// two SMMUs (a strict domain on SMMU 0, a batched one on SMMU 1) and returns, per step,
/// the result and what it issued: CMD_SYNCs, TLBI_S2_IPAs, TLBI_S12_VMALLs, CFGI_STEs,
/// CPU TLBIs by domain VMID, CPU TLBIs of the host stage-2.
fn invalidation_steps(w: &World) -> Vec<std::string::String> {
    let mut out = Vec::new();
    let mut cpu = (w.cpu.0.vmid_tlbis.get(), w.cpu.0.host_tlbis.get());
    let mut step = |w: &World, name: &str, r: std::string::String| {
        let now = (w.cpu.0.vmid_tlbis.get(), w.cpu.0.host_tlbis.get());
        out.push(std::format!(
            "{name}: {r} sync {} ipa {} vmall {} ste {} cpu {} host {}",
            w.executed(op::CMD_SYNC),
            w.executed(op::TLBI_S2_IPA),
            w.executed(op::TLBI_S12_VMALL),
            w.executed(op::CFGI_STE),
            now.0 - cpu.0,
            now.1 - cpu.1
        ));
        cpu = now;
        w.clear_counts();
    };
    let d = w.alloc(0).unwrap();
    w.attach(d, 0, SID).unwrap();
    let b = w.alloc(BATCHED).unwrap();
    w.attach(b, 1, SIDS[1]).unwrap();
    step(w, "setup", std::string::String::new());
    let r = w.map(d, 0x20_0000, HOST_BASE, 2 * MB);
    step(w, "strict map block", std::format!("{r:?}"));
    let r = w.unmap(d, 0x20_1000, PAGE);
    step(w, "strict split", std::format!("{r:?}"));
    let r = w.unmap(d, 0x20_0000, 2 * MB);
    step(w, "strict unmap rest", std::format!("{r:?}"));
    let r = w.map(d, 0x40_0000, HOST_BASE + 2 * MB, 4 * MB);
    step(w, "strict map 4M", std::format!("{r:?}"));
    let r = w.unmap(d, 0x40_0000, 4 * MB);
    step(w, "strict unmap 4M", std::format!("{r:?}"));
    let r = w.map(d, 0x10_0000, HP, 64 * PAGE);
    step(w, "strict map 64", std::format!("{r:?}"));
    let r = w.unmap(d, 0x10_0000, 64 * PAGE);
    step(w, "strict unmap 64", std::format!("{r:?}"));
    for i in 0..40 {
        w.map(b, 0x10_0000 + 2 * i * PAGE, HP + i * PAGE, PAGE)
            .unwrap();
    }
    step(w, "batched map 40", std::string::String::new());
    for i in 0..40 {
        w.unmap(b, 0x10_0000 + 2 * i * PAGE, PAGE).unwrap();
    }
    step(w, "batched unmap 40", std::string::String::new());
    let r = w.flush(b);
    step(w, "batched flush 40", std::format!("{r:?}"));
    w.map(b, 0x10_0000, HP, PAGE).unwrap();
    w.unmap(b, 0x10_0000, PAGE).unwrap();
    let r = w.map(b, 0x10_0000, HP + PAGE, PAGE);
    step(w, "batched map over queued", std::format!("{r:?}"));
    let r = w.unmap(b, 0x10_0000, PAGE);
    step(w, "batched unmap again", std::format!("{r:?}"));
    let r = w.map(b, 0x60_0000, HOST_BASE + 4 * MB, 2 * MB);
    step(w, "batched map block", std::format!("{r:?}"));
    let r = w.unmap(b, 0x60_1000, 2 * PAGE);
    step(w, "batched split", std::format!("{r:?}"));
    let r = w.unmap(b, 0x60_0000, 2 * MB);
    step(w, "batched unmap rest", std::format!("{r:?}"));
    let r = w.flush(b);
    step(w, "batched flush", std::format!("{r:?}"));
    let r = w.donate(HOST_BASE + 6 * MB + PAGE, 3);
    step(w, "donate split", std::format!("{r:?}"));
    let r = w.donate(HOST_BASE + 7 * MB, 256);
    step(w, "donate 256", std::format!("{r:?}"));
    let r = w.donate(HOST_BASE + 6 * MB + 8 * PAGE, 1);
    step(w, "donate 1", std::format!("{r:?}"));
    let r = w.map(b, 0x10_0000, HP, PAGE);
    step(w, "batched map", std::format!("{r:?}"));
    let r = w.attach(domain::BLOCKED, 0, SID);
    step(w, "block d", std::format!("{r:?}"));
    let r = w.attach(domain::BLOCKED, 1, SIDS[1]);
    step(w, "block b", std::format!("{r:?}"));
    let r = w.free(d);
    step(w, "free strict", std::format!("{r:?}"));
    let r = w.free(b);
    step(w, "free batched", std::format!("{r:?}"));
    out
}

#[test]
fn invalidation_counts_match_the_fanouts_before_the_gather() {
    let expected: Vec<&str> = include_str!("invalidation_counts_817afc3.txt")
        .lines()
        .collect();
    let mut all = Vec::new();
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
                smmus: 2,
                ..Opts::default()
            });
            all.push(std::format!("== ril {ril} btm {btm} cpu {cpu}"));
            all.extend(invalidation_steps(&w));
        }
    }
    assert_eq!(all.len(), expected.len(), "same steps");
    let mut config = "";
    for (got, want) in all.iter().zip(&expected) {
        if want.starts_with("==") {
            config = want;
        }
        assert_eq!(got, want, "{config}");
    }
}
