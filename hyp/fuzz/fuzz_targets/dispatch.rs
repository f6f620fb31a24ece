//! Arbitrary call sequences through `Hyp::dispatch` on the SMMU, CPU-TLB and RAM models,
//! every invariant checked after every call: the harness is `hyp::fuzzing::run`, which
//! the stable smoke test (`cargo test -p hyp fuzzing`) runs too.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(e) = hyp::fuzzing::run(data) {
        panic!("{}", e.0);
    }
});
