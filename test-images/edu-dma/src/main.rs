//! `edu-dma`: a bare-metal EL1 program that Warden starts in place of Linux, to check
//! from the host's side that device DMA goes through Warden's SMMU configuration.
//!
//! It drives QEMU's `edu` PCI device (QEMU.md section 6), found and programmed through
//! what the DTB Warden hands the host says (console, PCIe ECAM and 32-bit memory window,
//! `iommu-map`, Warden's `/reserved-memory/warden@…` carve-out, PSCI): nothing about
//! QEMU's address map is hard-coded. It prints one line per check,
//! `EDU PASS <name>: details` or `EDU FAIL <name>: why`, then `edu: N passed, M failed`,
//! and powers the machine off with PSCI `SYSTEM_OFF`. Its other lines start with `edu:`.
//! `cargo xtask test --only edu` boots it and judges the log (xtask/src/edutest.rs).
//!
//! The runtime (entry, console, heap, SMCCC calls, PCI, the edu driver) is the test
//! images' shared `el1-rt` crate; see its documentation for the memory model (the EL1
//! MMU stays off: no unaligned accesses, no exclusives or atomics). This program uses
//! one CPU.
//!
//! On the host (`cargo test`, `cargo clippy`) this crate is an empty program plus the
//! unit tests of its pure logic ([`logic`]).

#![cfg_attr(target_os = "none", no_std, no_main)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

#[cfg(target_os = "none")]
extern crate alloc;

mod logic;

#[cfg(target_os = "none")]
mod checks;

#[cfg(target_os = "none")]
static IMAGE: el1_rt::rt::Image = el1_rt::rt::Image {
    name: "edu-dma",
    check_prefix: "EDU",
    log_prefix: "edu",
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
        "edu-dma is a bare-metal test image: `cargo xtask test --only edu` builds and boots it"
    );
}
