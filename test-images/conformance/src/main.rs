//! `conformance`: Warden's hypercall conformance suite (ABI v1), a bare-metal EL1
//! program that Warden starts in place of Linux, as the host.
//!
//! It calls every function of the ABI (`host-abi`, the single source of truth for IDs,
//! errors, flags and layouts) with good and bad arguments, and checks the results with
//! real DMA by two of QEMU's `edu` devices (QEMU.md section 6) through the SMMU: mapped
//! IOVAs reach the right pages, permissions hold, unmapped or blocked addresses fault at
//! once (strict) or after FLUSH / the 10 ms deadline (batched), pages never change owner
//! while pinned, VMIDs are recycled safely, Warden's memory stays out of reach. STATS
//! gives the SMMU command budgets; PSCI brings up every CPU for concurrent calls.
//!
//! Everything comes from the DTB Warden hands the host (console, PCIe ECAM and window,
//! `iommu-map`, Warden's `/reserved-memory/warden@…` carve-out, CPUs and PSCI): nothing
//! about QEMU's address map is hard-coded. Each check prints
//! `CONF PASS <name>: details` or `CONF FAIL <name>: why` ([`names::CHECKS`], in
//! order), then `conformance: N passed, M failed`, and PSCI `SYSTEM_OFF` ends the run.
//! `cargo xtask test --only conf` boots it and judges the log (xtask/src/conformance.rs).
//!
//! The runtime (entry, console, heap, SMCCC calls, secondary CPUs, PCI, the edu driver)
//! is the test images' shared `el1-rt` crate; see its documentation for the memory
//! model (the EL1 MMU stays off: no unaligned accesses, no exclusives or atomic
//! read-modify-writes; CPUs share only single-writer 64-bit words).
//!
//! On the host (`cargo test`, `cargo clippy`) this crate is an empty program plus the
//! unit tests of its pure logic ([`plan`]).

#![cfg_attr(target_os = "none", no_std, no_main)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

extern crate alloc;

mod names;
mod plan;

#[cfg(target_os = "none")]
mod checks;
#[cfg(target_os = "none")]
mod env;

#[cfg(target_os = "none")]
static IMAGE: el1_rt::rt::Image = el1_rt::rt::Image {
    name: "conformance",
    check_prefix: "CONF",
    log_prefix: "conformance",
    run: checks::run,
};

/// Entered from el1-rt's head.S on the boot CPU with the DTB address, the image's load
/// address and the exception level the program was entered at.
#[cfg(target_os = "none")]
#[unsafe(no_mangle)]
extern "C" fn el1_main(dtb: u64, load_base: u64, el: u64) -> ! {
    el1_rt::rt::start(&IMAGE, dtb, load_base, el)
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "conformance is a bare-metal test image: `cargo xtask test --only conf` builds and boots it ({} checks)",
        names::CHECKS.len()
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn check_names_are_unique_and_enough() {
        let names = crate::names::CHECKS;
        assert!(names.len() >= 40, "{}", names.len());
        let mut sorted = names.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len(), "duplicate check names");
        assert!(names.iter().all(|n| {
            !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        }));
    }
}
