//! The hypercall surface under arbitrary register values: any function ID in (and around)
//! Warden's range with any arguments — zeros, edge values, addresses inside and outside
//! the host's RAM, Warden's carve-out, wrapping sizes. Every call must return success or
//! a defined status (I6: `world::status` rejects anything else), Warden's carve-out must
//! never become reachable by a device, and once every endpoint is back on the host domain
//! and every domain is freed, no page stays pinned.

use super::super::world::*;
use host_abi::{domain, endpoint, func};
use proptest::prelude::*;

fn value() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(u64::MAX),
        Just(!0xfff),
        Just(1 << 63),
        0u64..8,                                         // domain IDs
        (0u64..64).prop_map(|p| HOST_BASE + p * 0x1000), // host pages
        (0u64..64).prop_map(|p| RAM_BASE + p * 0x1000),  // Warden's pool
        (0u64..64).prop_map(|p| 0x10_0000 + p * 0x1000), // IOVAs
        (1u64..0x4_0000).prop_map(|n| n * 0x1000),       // sizes
        (0u32..3).prop_map(|i| endpoint(0, 0x10 + i)),   // endpoints
        any::<u64>(),
    ]
}

fn fid() -> impl Strategy<Value = u32> {
    prop_oneof![
        8 => (0u32..0x10).prop_map(|n| func::FEATURES + n),
        1 => any::<u32>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_calls_keep_warden_safe(
        calls in proptest::collection::vec((fid(), proptest::array::uniform6(value())), 1..80),
        btm in any::<bool>(),
    ) {
        let w = World::new(Opts { btm, ..Opts::default() });
        for (f, args) in &calls {
            let r = w.call(*f, args);
            // A defined status or success; `status` panics on anything else.
            let _ = status(r[0]);
            // No device reaches Warden's memory through any StreamID.
            for sid in SIDS {
                for iova in [RAM_BASE, RAM_BASE + 0x1000, 0x10_0000] {
                    if let Ok(pa) = w.dma(0, sid, iova, false) {
                        prop_assert!(
                            !(RAM_BASE..RAM_BASE + POOL_SIZE).contains(&pa.get()),
                            "sid {sid:#x} iova {iova:#x} reached Warden's page {pa:?} after {f:#x} {args:x?}"
                        );
                    }
                }
            }
        }
        // Clean up: every endpoint home, every domain freed (flushing first).
        for sid in SIDS {
            let _ = w.attach(domain::HOST, 0, sid);
        }
        for d in domain::FIRST_MANAGED..1100 {
            let _ = w.flush(d);
            let _ = w.free(d);
        }
        prop_assert_eq!(w.pinned_pages(), 0, "pins left after freeing every domain");
    }
}
