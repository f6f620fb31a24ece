//! `gic-its`: a bare-metal EL1 program that Warden starts in place of Linux, to check
//! from the host's side that the GICv3 ITS and redistributors cannot be made to write
//! memory the host gave away (issue: DMA masters outside the SMMU, I1).
//!
//! As the host, it programs the ITS (`GITS_CBASER`, `GITS_BASER<n>`, commands) and its
//! own redistributor (`GICR_PROPBASER`/`PENDBASER`/`CTLR`) found through the DTB Warden
//! hands it, and points them at a page it donated (`MEM_DONATE`): Warden must refuse
//! (the register reads back something else, the command is skipped). It then takes the
//! page back (`MEM_RECLAIM`) and issues what would make a GIC that had accepted the page
//! write into it (MAPD, MAPTI, INT with LPIs enabled): the page must stay all-zero. A
//! legitimate setup (tables in the program's own memory) must work: an LPI raised with
//! INT shows up in the pending table, and the pages the GIC uses are pinned (donating
//! them is BUSY). Lines: `GIC PASS <name>: details` / `GIC FAIL <name>: why`, then
//! `gic: N passed, M failed`. `cargo xtask test --only gic` boots it (xtask/src/gictest.rs).
//!
//! The runtime is the test images' shared `el1-rt` (the EL1 MMU stays off: every access
//! is Device memory, so neither the GIC's writes nor the program's need cache
//! maintenance).

#![cfg_attr(target_os = "none", no_std, no_main)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

#[cfg(target_os = "none")]
extern crate alloc;

#[cfg(target_os = "none")]
mod checks;

#[cfg(target_os = "none")]
static IMAGE: el1_rt::rt::Image = el1_rt::rt::Image {
    name: "gic-its",
    check_prefix: "GIC",
    log_prefix: "gic",
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
        "gic-its is a bare-metal test image: `cargo xtask test --only gic` builds and boots it"
    );
}
