//! Arbitrary MMIO access sequences and ring memory against the emulated virtio-iommu, every
//! backend call and every kick checked: the harness is `hyp::viommu::fuzzing::run`, which
//! the stable smoke test (`cargo test -p hyp --lib viommu::fuzzing`) runs too.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(e) = hyp::viommu::fuzzing::run(data) {
        panic!("{}", e.0);
    }
});
