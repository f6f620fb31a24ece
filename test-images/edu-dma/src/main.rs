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
//! **Memory model: the EL1 MMU stays off.** Every data access is then Device-nGnRnE
//! (instruction fetches are Normal), which costs nothing under QEMU and keeps the program
//! small, at the price of two rules the code keeps: no unaligned accesses (the target has
//! `+strict-align`, and all DMA buffers are accessed as aligned `u64`s) and no exclusives
//! or atomic read-modify-writes (their behaviour on Device memory is IMPLEMENTATION
//! DEFINED): the heap is a bump allocator without a lock, all state lives in `Cell`s of a
//! single-CPU program that runs with interrupts masked, and xtask rejects a binary that
//! contains a load/store-exclusive, LSE atomic or `DC ZVA`. DMA buffers need no cache
//! maintenance because the CPU never caches them.
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
mod edu;
#[cfg(target_os = "none")]
mod pci;
#[cfg(target_os = "none")]
mod rt;
#[cfg(target_os = "none")]
mod smccc;

#[cfg(target_os = "none")]
core::arch::global_asm!(include_str!("head.S"));

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "edu-dma is a bare-metal test image: `cargo xtask test --only edu` builds and boots it"
    );
}
