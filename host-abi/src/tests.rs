//! Consistency of the ABI's constants and of the table the header is generated from.

extern crate std;

use super::table::{GROUPS, Group, Style};
use super::*;
use std::collections::BTreeSet;
use std::string::ToString;
use std::vec::Vec;

fn group(module: &str) -> &'static Group {
    GROUPS
        .iter()
        .find(|g| g.module == module)
        .unwrap_or_else(|| panic!("no group {module}"))
}

/// Asserts that the masks are non-zero and pairwise disjoint.
fn assert_disjoint(what: &str, masks: &[(&str, u64)]) {
    for (i, (a, ma)) in masks.iter().enumerate() {
        assert_ne!(*ma, 0, "{what}: {a} is empty");
        for (b, mb) in &masks[i + 1..] {
            assert_eq!(ma & mb, 0, "{what}: {a} ({ma:#x}) overlaps {b} ({mb:#x})");
        }
    }
}

#[test]
fn function_ids_are_smc64_fast_calls_in_the_vendor_hyp_range() {
    let ids = group("func").consts;
    assert_eq!(ids.len(), 12);
    for (n, c) in ids.iter().enumerate() {
        let id = c.value as u32;
        assert_eq!(c.ty, "u32", "{}", c.name);
        assert_ne!(id & (1 << 31), 0, "{}: not a fast call", c.name);
        assert_ne!(id & (1 << 30), 0, "{}: not SMC64", c.name);
        assert_eq!((id >> 24) & 0x3f, 6, "{}: not OEN 6 (vendor hyp)", c.name);
        assert_eq!((id >> 16) & 0xff, 0, "{}: reserved bits set", c.name);
        assert!((0xC600_0000..=0xC600_FFFF).contains(&id), "{}", c.name);
        // The table of the ABI: 0x00..0x0B in order, no gaps.
        assert_eq!(id, VENDOR_HYP_BASE + n as u32, "{}", c.name);
    }
    assert_eq!(func::FEATURES, 0xC600_0000);
    assert_eq!(func::MAP, 0xC600_0004);
    assert_eq!(func::MEM_RECLAIM, 0xC600_000B);
}

#[test]
fn function_ids_are_unique() {
    let mut seen = BTreeSet::new();
    let smccc_ids = [
        smccc::VERSION,
        smccc::ARCH_FEATURES,
        smccc::VENDOR_HYP_CALL_UID,
        smccc::VENDOR_HYP_REVISION,
    ];
    let funcs = group("func").consts.iter().map(|c| c.value as u32);
    for id in funcs.chain(smccc_ids) {
        assert!(seen.insert(id), "function ID {id:#x} used twice");
    }
}

#[test]
fn smccc_discovery_ids() {
    // SMC32 fast calls: Arm architecture service (OEN 0) and vendor hyp (OEN 6).
    assert_eq!(smccc::VERSION >> 24, 0x80);
    assert_eq!(smccc::ARCH_FEATURES >> 24, 0x80);
    assert_eq!(smccc::VENDOR_HYP_CALL_UID, 0x8600_0000 | 0xFF01);
    assert_eq!(smccc::VENDOR_HYP_REVISION, 0x8600_0000 | 0xFF03);
    assert_eq!(smccc::VERSION_1_1, (1 << 16) | 1);
    assert_eq!(
        smccc::UID,
        [0x7761_7264, 0x656e_2d68, 0x7970_2d76, 0x0000_0001]
    );
    let text: Vec<u8> = smccc::UID[..3]
        .iter()
        .flat_map(|w| w.to_be_bytes())
        .collect();
    assert_eq!(text, b"warden-hyp-v");
    assert_eq!((smccc::REVISION_MAJOR, smccc::REVISION_MINOR), (1, 0));
}

#[test]
fn error_codes_are_unique_and_negative() {
    let mut seen = BTreeSet::new();
    for e in Error::ALL {
        let code = *e as i64;
        assert!(code < 0, "{e:?} = {code}");
        assert!(seen.insert(code), "{e:?}: code {code} used twice");
    }
    // -1..-8, densely, in declaration order.
    let codes: Vec<i64> = Error::ALL.iter().map(|&e| e as i64).collect();
    assert_eq!(codes, (1..=8).map(|n| -n).collect::<Vec<i64>>());
    assert_eq!(Error::NotSupported as i64, -1);
    assert_eq!(Error::Invalid as i64, -2);
    assert_eq!(Error::Exist as i64, -8);
}

#[test]
fn to_reg_round_trips() {
    for &e in Error::ALL {
        let reg = e.to_reg();
        assert_eq!(reg as i64, e as i64);
        assert_eq!(reg >> 63, 1, "{e:?}: sign bit clear");
        assert_eq!(Error::from_reg(reg), Some(e));
    }
    assert_eq!(Error::Invalid.to_reg(), 0xFFFF_FFFF_FFFF_FFFE);
    assert_eq!(Error::from_reg(0), None);
    assert_eq!(Error::from_reg(1), None);
    assert_eq!(Error::from_reg(-9i64 as u64), None);
    // A 32-bit -2 (w0 sign-extension gone wrong) is no error code.
    assert_eq!(Error::from_reg(0xFFFF_FFFE), None);
}

#[test]
fn error_names_and_table_agree() {
    let g = group("Error");
    assert_eq!(g.style, Style::Signed);
    assert_eq!(g.consts.len(), Error::ALL.len());
    for (c, &e) in g.consts.iter().zip(Error::ALL) {
        assert_eq!(c.name, e.name());
        assert_eq!(c.signed(), e as i64);
    }
    assert_eq!(Error::NoEnt.name(), "NOENT");
}

#[test]
fn domain_flags_do_not_overlap() {
    let granule = domain_flags::GRANULE_MASK << domain_flags::GRANULE_SHIFT;
    assert_disjoint(
        "domain flags",
        &[
            ("BATCHED", domain_flags::BATCHED),
            ("NON_COHERENT", domain_flags::NON_COHERENT),
            ("granule field", granule),
        ],
    );
    assert_eq!(
        domain_flags::ALL,
        domain_flags::BATCHED | domain_flags::NON_COHERENT | granule
    );
    assert_eq!(domain_flags::ALL, 0xff03);
    for log2 in [0, 12, 14, 16] {
        let f = domain_flags::granule(log2);
        assert_eq!(f & !domain_flags::ALL, 0);
        assert_eq!(
            (f >> domain_flags::GRANULE_SHIFT) & domain_flags::GRANULE_MASK,
            log2 as u64
        );
    }
    assert_eq!(domain_flags::granule(16), 0x1000);
}

#[test]
fn prot_features_and_event_bits_do_not_overlap() {
    assert_disjoint("prot", &[("READ", prot::READ), ("WRITE", prot::WRITE)]);
    assert_eq!(prot::ALL, prot::READ | prot::WRITE);

    use features::*;
    assert_disjoint(
        "FEATURES x1",
        &[
            ("BTM", BTM),
            ("RIL", RIL),
            ("BATCHED", BATCHED),
            ("NON_COHERENT", NON_COHERENT),
            ("DOMAIN_CPU_TLBI", DOMAIN_CPU_TLBI),
        ],
    );
    assert_disjoint(
        "FEATURES x2",
        &[
            ("GRANULE_4K", GRANULE_4K),
            ("GRANULE_16K", GRANULE_16K),
            ("GRANULE_64K", GRANULE_64K),
        ],
    );
    assert_eq!(GRANULE_4K, 4096);
    assert_eq!(GRANULE_16K, 16384);
    assert_eq!(GRANULE_64K, 65536);
    let limits = [
        ("domains", LIMIT_DOMAINS_MASK << LIMIT_DOMAINS_SHIFT),
        ("VMID bits", LIMIT_VMID_BITS_MASK << LIMIT_VMID_BITS_SHIFT),
        ("IAS", LIMIT_IAS_MASK << LIMIT_IAS_SHIFT),
        ("OAS", LIMIT_OAS_MASK << LIMIT_OAS_SHIFT),
    ];
    assert_disjoint("FEATURES x3", &limits);
    let x3 = (0x1234 << LIMIT_DOMAINS_SHIFT)
        | (16 << LIMIT_VMID_BITS_SHIFT)
        | (48 << LIMIT_IAS_SHIFT)
        | (44u64 << LIMIT_OAS_SHIFT);
    assert_eq!(limit(x3, LIMIT_DOMAINS_SHIFT, LIMIT_DOMAINS_MASK), 0x1234);
    assert_eq!(limit(x3, LIMIT_VMID_BITS_SHIFT, LIMIT_VMID_BITS_MASK), 16);
    assert_eq!(limit(x3, LIMIT_IAS_SHIFT, LIMIT_IAS_MASK), 48);
    assert_eq!(limit(x3, LIMIT_OAS_SHIFT, LIMIT_OAS_MASK), 44);

    assert_disjoint(
        "EVENT_POLL x3",
        &[
            ("TYPE_MASK", event::TYPE_MASK),
            ("FLAG_READ", event::FLAG_READ),
            ("FLAG_STAGE2", event::FLAG_STAGE2),
            ("FLAG_LOST", event::FLAG_LOST),
        ],
    );
    for c in group("event_type").consts {
        assert_eq!(c.value & !event::TYPE_MASK, 0, "{}", c.name);
    }
}

#[test]
fn well_known_domains_and_stats_groups() {
    assert_eq!(
        (domain::HOST, domain::BLOCKED, domain::FIRST_MANAGED),
        (0, 1, 2)
    );
    // Counter groups are numbered densely from 0.
    for (n, c) in group("stats").consts.iter().enumerate() {
        assert_eq!(c.value, n as u64, "{}", c.name);
    }
    assert_eq!(stats::PAGES, 2);
    assert_eq!(mem::PAGE_SIZE, 4096);
    assert_eq!(PAGE, mem::PAGE_SIZE);
    assert_eq!(mem::MAX_PAGES * mem::PAGE_SIZE, 1 << 30);
}

#[test]
fn endpoint_encoding() {
    assert_eq!(endpoint(0, 0), 0);
    assert_eq!(endpoint(0, 0x10), 0x10);
    assert_eq!(endpoint(1, 0x10), 0x1_0000_0010);
    assert_eq!(endpoint(u32::MAX, u32::MAX), u64::MAX);
    assert_eq!(endpoint(2, 0), 2 << 32);
    for (smmu, sid) in [(0, 0), (1, 0x10), (7, 0xffff_ffff), (u32::MAX, 0x8)] {
        let ep = endpoint(smmu, sid);
        assert_eq!(endpoint_smmu(ep), smmu);
        assert_eq!(endpoint_sid(ep), sid);
        assert_eq!(ep & ENDPOINT_SID_MASK, sid as u64);
        assert_eq!(ep >> ENDPOINT_SMMU_SHIFT, smmu as u64);
    }
}

#[test]
fn table_is_complete_and_well_formed() {
    let mut c_names = BTreeSet::new();
    for g in GROUPS {
        assert!(!g.doc.is_empty(), "group {} undocumented", g.module);
        assert!(g.prefix.starts_with("WARDEN_") && g.prefix.ends_with('_'));
        let mut names = BTreeSet::new();
        for c in g.consts {
            assert!(names.insert(c.name), "{}::{} twice", g.module, c.name);
            let cname = g.c_name(c).to_string();
            assert!(c_names.insert(cname.clone()), "C name {cname} twice");
            assert!(
                cname
                    .chars()
                    .all(|ch| ch.is_ascii_uppercase() || ch.is_ascii_digit() || ch == '_'),
                "{cname}"
            );
            assert!(!c.doc.is_empty(), "{cname} undocumented");
            for line in c.doc.iter().chain(g.doc) {
                assert!(
                    !line.contains("*/") && !line.contains("/*"),
                    "{cname}: {line}"
                );
            }
            assert!(["u32", "u64", "i64"].contains(&c.ty), "{cname}: {}", c.ty);
            if c.name.ends_with("_SHIFT") {
                assert_eq!(c.ty, "u32", "{cname}");
                assert!(c.value < 64, "{cname}");
            }
            if c.ty == "u32" {
                assert!(c.value <= u32::MAX as u64, "{cname}");
            }
        }
    }
    // Spot checks that the table holds the exported values under their paths.
    let find = |cname: &str| -> u64 {
        GROUPS
            .iter()
            .flat_map(|g| {
                g.consts
                    .iter()
                    .map(move |c| (g.c_name(c).to_string(), c.value))
            })
            .find(|(n, _)| n == cname)
            .unwrap_or_else(|| panic!("{cname} missing"))
            .1
    };
    assert_eq!(find("WARDEN_FN_MAP"), func::MAP as u64);
    assert_eq!(find("WARDEN_ERR_INVALID"), Error::Invalid.to_reg());
    assert_eq!(find("WARDEN_SMCCC_VERSION"), smccc::VERSION as u64);
    assert_eq!(find("WARDEN_DOMAIN_FLAG_BATCHED"), domain_flags::BATCHED);
    assert_eq!(find("WARDEN_STATS_PAGES"), stats::PAGES);
    assert_eq!(find("WARDEN_VENDOR_HYP_BASE"), VENDOR_HYP_BASE as u64);
    assert_eq!(
        find("WARDEN_FEATURES_LIMIT_OAS_SHIFT"),
        features::LIMIT_OAS_SHIFT as u64
    );
    let modules: Vec<&str> = GROUPS.iter().map(|g| g.module).collect();
    assert_eq!(
        modules,
        [
            "",
            "smccc",
            "func",
            "Error",
            "domain",
            "domain_flags",
            "prot",
            "features",
            "stats",
            "event",
            "event_type",
            "mem"
        ]
    );
}
