//! The suite's pure logic: the IOVA plan, decoding FEATURES, STATS and EVENT_POLL
//! results, and small address helpers — kept apart from the hardware access so that
//! `cargo test` checks it on the host.

#![cfg_attr(not(target_os = "none"), allow(dead_code))]

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use host_abi::{event, features as feat};

/// Bytes in a page (4 KiB granule).
pub const PAGE: u64 = 4096;
/// Bytes in a level-2 block (4 KiB granule).
pub const BLOCK_2M: u64 = 2 << 20;

/// IOVA of the staging page through which the checks fill and read edu's buffer while
/// the device is in a domain. Like every IOVA below it is far from the program's
/// physical addresses (RAM starts at 1 GiB on QEMU's `virt`, the image at 0x5000_0000),
/// so a DMA that reaches the right page cannot have bypassed translation.
pub const STAGE_IOVA: u64 = 0x2000_0000;
/// The IOVA most checks map and DMA to.
pub const X: u64 = 0x1000_0000;
/// A second IOVA (read-only mapping, second page of a pair).
pub const Y: u64 = 0x1020_0000;
/// Where `budget-block-map` maps its 2 MiB block.
pub const BLOCK_IOVA: u64 = 0x4000_0000;
/// Where `budget-batched-flush` maps its pages (every other page, so each UNMAP is a
/// range of its own).
pub const BATCH_IOVA: u64 = 0x3000_0000;
/// Pages `budget-batched-flush` unmaps one by one.
pub const BATCH_PAGES: u64 = 256;
/// Where each CPU maps in the SMP checks' shared domain: CPU `i` uses
/// `SMP_SHARED_IOVA + i * SMP_CPU_STRIDE + (k % SMP_SLOTS) * PAGE`.
pub const SMP_SHARED_IOVA: u64 = 0x6000_0000;
/// IOVA space of one CPU in the shared domain.
pub const SMP_CPU_STRIDE: u64 = 0x100_0000;
/// Where each CPU maps in its own domain: `SMP_OWN_IOVA + (k % SMP_SLOTS) * BLOCK_2M`
/// (a new level-3 table now and then).
pub const SMP_OWN_IOVA: u64 = 0x1000_0000;
/// Distinct IOVAs a CPU cycles through.
pub const SMP_SLOTS: u64 = 64;
/// A domain ID no implementation hands out this early (Warden numbers from 2).
pub const BOGUS_DOMAIN: u64 = 0x7fff_fff0;

/// The IOVA CPU `cpu` uses in iteration `k` in the shared domain.
pub fn smp_shared_iova(cpu: usize, k: u64) -> u64 {
    SMP_SHARED_IOVA + cpu as u64 * SMP_CPU_STRIDE + (k % SMP_SLOTS) * PAGE
}

/// The IOVA a CPU uses in iteration `k` in its own domain.
pub fn smp_own_iova(k: u64) -> u64 {
    SMP_OWN_IOVA + (k % SMP_SLOTS) * BLOCK_2M
}

/// The `i`th IOVA `pool-exhaustion` maps: one page every 2 MiB from 2 MiB up, so that
/// every MAP needs a level-3 table of its own (and every 512th a level-2 table).
pub fn exhaust_iova(i: u64) -> u64 {
    (i + 1) * BLOCK_2M
}

/// How many such IOVAs fit below `1 << ias`.
pub fn exhaust_slots(ias: u64) -> u64 {
    if ias >= 64 {
        return u64::MAX;
    }
    ((1u64 << ias) / BLOCK_2M).saturating_sub(1)
}

/// The first `align`-aligned address in `[base, base + len)` that leaves `size` bytes
/// before the end.
pub fn aligned_within(base: u64, len: u64, align: u64, size: u64) -> Option<u64> {
    let a = base.checked_next_multiple_of(align)?;
    (a.checked_add(size)? <= base.checked_add(len)?).then_some(a)
}

/// FEATURES' results, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    /// x1: feature bits.
    pub bits: u64,
    /// x2: page sizes (bit n: granule of 2^n bytes).
    pub page_sizes: u64,
    /// Most host-managed domains.
    pub domains: u64,
    /// VMID bits.
    pub vmid_bits: u64,
    /// IOVA bits of host-managed domains.
    pub ias: u64,
    /// Output address bits.
    pub oas: u64,
}

impl Features {
    /// Decodes x1..x3.
    pub fn from_regs(x1: u64, x2: u64, x3: u64) -> Self {
        Self {
            bits: x1,
            page_sizes: x2,
            domains: feat::limit(x3, feat::LIMIT_DOMAINS_SHIFT, feat::LIMIT_DOMAINS_MASK),
            vmid_bits: feat::limit(x3, feat::LIMIT_VMID_BITS_SHIFT, feat::LIMIT_VMID_BITS_MASK),
            ias: feat::limit(x3, feat::LIMIT_IAS_SHIFT, feat::LIMIT_IAS_MASK),
            oas: feat::limit(x3, feat::LIMIT_OAS_SHIFT, feat::LIMIT_OAS_MASK),
        }
    }

    /// Whether domains with a granule of `1 << shift` bytes are supported.
    pub fn granule(&self, shift: u32) -> bool {
        shift < 64 && self.page_sizes & (1 << shift) != 0
    }

    /// What is wrong with these results on a machine whose RAM ends at `ram_end` (one
    /// entry per problem; empty: sane).
    pub fn problems(&self, ram_end: u64) -> Vec<String> {
        let mut p = Vec::new();
        if self.page_sizes & feat::GRANULE_4K == 0 {
            p.push(format!(
                "x2 = {:#x} lacks the 4 KiB granule (bit 12)",
                self.page_sizes
            ));
        }
        if self.page_sizes & (PAGE - 1) != 0 {
            p.push(format!(
                "x2 = {:#x} names page sizes below 4 KiB",
                self.page_sizes
            ));
        }
        if self.domains == 0 {
            p.push("x3 says no host-managed domain can exist (domains limit 0)".into());
        }
        if self.vmid_bits != 8 && self.vmid_bits != 16 {
            p.push(format!(
                "x3 VMID bits = {}: the architecture has 8 or 16",
                self.vmid_bits
            ));
        } else if self.domains > (1 << self.vmid_bits) - 1 {
            p.push(format!(
                "x3 allows {} domains, more than {}-bit VMIDs can tag besides the host's",
                self.domains, self.vmid_bits
            ));
        }
        if !(32..=52).contains(&self.ias) {
            p.push(format!(
                "x3 IOVA bits = {}: expected 32..=52 (at least 4 GiB of IOVA, at most the architecture's 52 bits)",
                self.ias
            ));
        }
        if !(32..=52).contains(&self.oas) {
            p.push(format!(
                "x3 output address bits = {}: expected 32..=52",
                self.oas
            ));
        } else if ram_end > 1 << self.oas {
            p.push(format!(
                "x3 output address bits = {} cannot reach the end of RAM {ram_end:#x}",
                self.oas
            ));
        }
        if self.bits & feat::DOMAIN_CPU_TLBI != 0 && self.bits & feat::BTM == 0 {
            p.push(
                "x1 claims domain invalidation by CPU TLBIs (DOMAIN_CPU_TLBI) without BTM".into(),
            );
        }
        p
    }
}

/// STATS' three counters.
pub type Counters = [u64; 3];

/// `after - before`, counter by counter (wrapping: the counters are cumulative).
pub fn delta(before: Counters, after: Counters) -> Counters {
    [
        after[0].wrapping_sub(before[0]),
        after[1].wrapping_sub(before[1]),
        after[2].wrapping_sub(before[2]),
    ]
}

/// One EVENT_POLL result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// x1: endpoint.
    pub endpoint: u64,
    /// x2: faulting address (IOVA, or IPA for the host identity domain).
    pub addr: u64,
    /// x3: type and flags.
    pub info: u64,
}

impl Event {
    /// The SMMU event number (x3 bits 7:0).
    pub fn kind(&self) -> u64 {
        self.info & event::TYPE_MASK
    }

    /// Whether the faulting access was a read.
    pub fn read(&self) -> bool {
        self.info & event::FLAG_READ != 0
    }

    /// Whether the event is about `endpoint` accessing the page of `addr`, reading
    /// (`read`) or writing.
    pub fn matches(&self, endpoint: u64, addr: u64, read: bool) -> bool {
        self.endpoint == endpoint && self.addr / PAGE == addr / PAGE && self.read() == read
    }
}

impl core::fmt::Display for Event {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "endpoint {:#x} addr {:#x} type {:#x}{}{}{}",
            self.endpoint,
            self.addr,
            self.kind(),
            if self.read() { " read" } else { " write" },
            if self.info & event::FLAG_STAGE2 != 0 {
                " stage-2"
            } else {
                ""
            },
            if self.info & event::FLAG_LOST != 0 {
                " (events lost before)"
            } else {
                ""
            }
        )
    }
}

/// A StreamID that no stream table can hold: beyond the 16 bits QEMU's SMMU (and most)
/// implement and beyond every `iommu-map` entry of the machine, whose ends are
/// `map_ends` (`sid_base + len`).
pub fn absent_sid(map_ends: &[u64]) -> u32 {
    let end = map_ends.iter().copied().max().unwrap_or(0).max(1 << 16);
    u32::try_from(end).unwrap_or(u32::MAX)
}

/// The steps of the SMP worker loop, for its error reports.
pub mod step {
    pub const ALLOC: u64 = 1;
    pub const MAP_OWN: u64 = 2;
    pub const MAP_SHARED: u64 = 3;
    pub const I2P_OWN: u64 = 4;
    pub const I2P_SHARED: u64 = 5;
    pub const UNMAP_OWN: u64 = 6;
    pub const UNMAP_SHARED: u64 = 7;
    pub const FLUSH: u64 = 8;
    pub const FREE: u64 = 9;

    /// A step's name.
    pub fn name(step: u64) -> &'static str {
        match step {
            ALLOC => "DOMAIN_ALLOC of its own domain",
            MAP_OWN => "MAP in its own domain",
            MAP_SHARED => "MAP in the shared domain",
            I2P_OWN => "IOVA_TO_PHYS in its own domain",
            I2P_SHARED => "IOVA_TO_PHYS in the shared domain",
            UNMAP_OWN => "UNMAP in its own domain",
            UNMAP_SHARED => "UNMAP in the shared domain",
            FLUSH => "FLUSH of its own domain",
            FREE => "DOMAIN_FREE of its own domain",
            _ => "an unknown step",
        }
    }
}

/// A worker's first error, packed in one word: step (bits 63:56), iteration (55:32),
/// and x0 or the wrong result's low 32 bits (31:0).
pub fn pack_error(step: u64, iteration: u64, value: u64) -> u64 {
    (step << 56) | ((iteration & 0xff_ffff) << 32) | (value & 0xffff_ffff)
}

/// Unpacks [`pack_error`]: (step, iteration, value as a signed 32-bit number).
pub fn unpack_error(word: u64) -> (u64, u64, i64) {
    (
        word >> 56,
        (word >> 32) & 0xff_ffff,
        i64::from((word & 0xffff_ffff) as u32 as i32),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iova_plan_is_disjoint_and_aligned() {
        let fixed = [STAGE_IOVA, X, Y, BLOCK_IOVA, BATCH_IOVA];
        for a in fixed {
            assert_eq!(a % PAGE, 0);
        }
        assert_eq!(BLOCK_IOVA % BLOCK_2M, 0);
        // The batched pages, the SMP ranges and the fixed pages never overlap.
        let batch_end = BATCH_IOVA + 2 * BATCH_PAGES * PAGE;
        for a in [STAGE_IOVA, X, Y, BLOCK_IOVA] {
            assert!(!(BATCH_IOVA..batch_end).contains(&a));
        }
        let smp_end = smp_shared_iova(15, SMP_SLOTS - 1) + PAGE;
        assert!(smp_end <= SMP_SHARED_IOVA + 16 * SMP_CPU_STRIDE);
        const { assert!(SMP_SHARED_IOVA > BLOCK_IOVA + BLOCK_2M) };
        assert_ne!(smp_shared_iova(0, 0), smp_shared_iova(1, 0));
        assert_eq!(smp_shared_iova(2, SMP_SLOTS), smp_shared_iova(2, 0));
        assert_eq!(smp_own_iova(1) - smp_own_iova(0), BLOCK_2M);
        // Everything fits a 32-bit IOVA space (the smallest FEATURES may report).
        assert!(smp_end <= 1 << 32 && smp_own_iova(SMP_SLOTS - 1) < 1 << 32);
    }

    #[test]
    fn exhaustion_iovas() {
        assert_eq!(exhaust_iova(0), BLOCK_2M);
        assert!(exhaust_iova(510) < 1 << 30);
        assert_eq!(exhaust_iova(511), 1 << 30);
        assert_eq!(exhaust_slots(32), 2047);
        assert!(exhaust_iova(exhaust_slots(32) - 1) + PAGE <= 1 << 32);
        assert_eq!(exhaust_slots(48), (1 << 27) - 1);
        assert_eq!(exhaust_slots(64), u64::MAX);
        assert_eq!(exhaust_slots(20), 0);
    }

    #[test]
    fn alignment() {
        let base = 0x5012_3000;
        let a = aligned_within(base, 4 << 20, BLOCK_2M, BLOCK_2M).unwrap();
        assert_eq!(a, 0x5020_0000);
        assert!(a + BLOCK_2M <= base + (4 << 20));
        assert_eq!(
            aligned_within(0x5000_0000, 2 << 20, BLOCK_2M, BLOCK_2M),
            Some(0x5000_0000)
        );
        assert_eq!(
            aligned_within(0x5000_1000, 2 << 20, BLOCK_2M, BLOCK_2M),
            None
        );
        assert_eq!(aligned_within(u64::MAX - 10, 5, 16, 1), None);
    }

    fn qemu_features() -> Features {
        // RIL | BATCHED; 4K | 16K | 64K; 256 domains, 16-bit VMIDs, 40-bit IOVA, 44-bit OAS.
        Features::from_regs(
            feat::RIL | feat::BATCHED,
            feat::GRANULE_4K | feat::GRANULE_16K | feat::GRANULE_64K,
            256 | (16 << 16) | (40 << 24) | (44 << 32),
        )
    }

    #[test]
    fn features_decode_and_judge() {
        let f = qemu_features();
        assert_eq!((f.domains, f.vmid_bits, f.ias, f.oas), (256, 16, 40, 44));
        assert!(f.granule(12) && f.granule(14) && f.granule(16) && !f.granule(13));
        assert!(!f.granule(64));
        assert!(f.problems(0x1_8000_0000).is_empty(), "{:?}", f.problems(0));
        let bad = |f: Features, needle: &str| {
            let p = f.problems(0x8000_0000);
            assert!(p.iter().any(|p| p.contains(needle)), "{needle}: {p:?}");
        };
        bad(
            Features {
                page_sizes: feat::GRANULE_16K,
                ..f
            },
            "4 KiB",
        );
        bad(
            Features {
                page_sizes: f.page_sizes | 0x800,
                ..f
            },
            "below 4 KiB",
        );
        bad(Features { domains: 0, ..f }, "limit 0");
        bad(Features { vmid_bits: 12, ..f }, "8 or 16");
        bad(
            Features {
                vmid_bits: 8,
                domains: 256,
                ..f
            },
            "8-bit VMIDs",
        );
        assert!(
            Features {
                vmid_bits: 8,
                domains: 255,
                ..f
            }
            .problems(0)
            .is_empty()
        );
        bad(Features { ias: 0, ..f }, "IOVA bits");
        bad(Features { oas: 60, ..f }, "output address bits = 60");
        let small = Features { oas: 32, ..f };
        assert!(small.problems(1 << 32).is_empty());
        let p = small.problems(0x1_8000_0000);
        assert!(p.iter().any(|p| p.contains("cannot reach")), "{p:?}");
        bad(
            Features {
                bits: feat::DOMAIN_CPU_TLBI,
                ..f
            },
            "without BTM",
        );
    }

    #[test]
    fn counters() {
        assert_eq!(delta([1, 2, 3], [2, 2, 10]), [1, 0, 7]);
        assert_eq!(delta([u64::MAX, 0, 0], [0, 0, 0]), [1, 0, 0]);
    }

    #[test]
    fn events() {
        let ep = host_abi::endpoint(0, 0x10);
        let e = Event {
            endpoint: ep,
            addr: 0x1000_0ffc,
            info: 0x10 | event::FLAG_STAGE2,
        };
        assert!(e.matches(ep, 0x1000_0000, false));
        assert!(!e.matches(ep, 0x1000_0000, true));
        assert!(!e.matches(ep, 0x1000_1000, false));
        assert!(!e.matches(host_abi::endpoint(0, 0x18), 0x1000_0000, false));
        assert_eq!(e.kind(), 0x10);
        assert_eq!(
            format!("{e}"),
            "endpoint 0x10 addr 0x10000ffc type 0x10 write stage-2"
        );
        let r = Event {
            info: 0x13 | event::FLAG_READ | event::FLAG_LOST,
            ..e
        };
        assert!(r.read() && r.matches(ep, 0x1000_0123, true));
        assert!(format!("{r}").ends_with("read (events lost before)"));
    }

    #[test]
    fn sids() {
        assert_eq!(absent_sid(&[0x1_0000]), 0x1_0000);
        assert_eq!(absent_sid(&[]), 0x1_0000);
        assert_eq!(absent_sid(&[0x2_0000, 0x100]), 0x2_0000);
        assert_eq!(absent_sid(&[1 << 40]), u32::MAX);
    }

    #[test]
    fn error_words() {
        let w = pack_error(step::UNMAP_SHARED, 123, (-4i64) as u64);
        assert_eq!(unpack_error(w), (step::UNMAP_SHARED, 123, -4));
        assert_eq!(
            unpack_error(pack_error(step::I2P_OWN, 1, 0x5000_1000)).2,
            0x5000_1000
        );
        assert_eq!(step::name(step::FREE), "DOMAIN_FREE of its own domain");
        assert_eq!(step::name(99), "an unknown step");
    }
}
