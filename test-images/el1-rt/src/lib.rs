//! `el1-rt`: the runtime shared by Warden's bare-metal EL1 test images (`edu-dma`,
//! `conformance`): programs that Warden starts in place of Linux, as the host, to check
//! Warden from the host's side.
//!
//! It provides the entry code (an arm64 Image header, self-relocation, the secondary CPUs'
//! entry; `head.S`, with the layout in `linker.ld`), the PL011 console found through the
//! DTB, a heap, the generic timer, check reporting (`<PREFIX> PASS name: details` /
//! `<PREFIX> FAIL name: why`, a summary and PSCI `SYSTEM_OFF`), SMCCC calls (Warden's
//! ABI from `host-abi`, PSCI), secondary CPU bring-up with per-CPU stacks, PCI
//! configuration through ECAM, and a driver for QEMU's `edu` device. An image defines
//! `el1_main` (called by `head.S` on the boot CPU) and hands over to [`rt::start`].
//!
//! **Memory model: the EL1 MMU stays off.** Every data access is then Device-nGnRnE
//! (instruction fetches are Normal), which costs nothing under QEMU and keeps the images
//! small, at the price of two rules the code keeps: no unaligned accesses (the target
//! has `+strict-align`, and all DMA buffers are accessed as aligned `u64`s) and no
//! exclusives or atomic read-modify-writes (their behaviour on Device memory is
//! IMPLEMENTATION DEFINED). The heap is a bump allocator without a lock that only the
//! boot CPU may use; the boot CPU's state lives in `Cell`s (it runs with interrupts
//! masked); CPUs talk to each other only through aligned 64-bit loads and stores
//! (`AtomicU64::load`/`store`, which compile to plain `LDR`/`STR` or `LDAR`/`STLR`; never
//! a read-modify-write), each word with a single writer. xtask rejects a binary that
//! contains a load/store-exclusive, LSE atomic or `DC ZVA`. DMA buffers need no cache
//! maintenance because the CPUs never cache them.
//!
//! On the host (`cargo test`, `cargo clippy`) only the pure logic ([`logic`]) is built,
//! and unit-tested.

#![cfg_attr(target_os = "none", no_std)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

extern crate alloc;

pub mod logic;

#[cfg(target_os = "none")]
pub mod edu;
#[cfg(target_os = "none")]
pub mod mem;
#[cfg(target_os = "none")]
pub mod pci;
#[cfg(target_os = "none")]
pub mod rt;
#[cfg(target_os = "none")]
pub mod smccc;
#[cfg(target_os = "none")]
pub mod smp;

#[cfg(target_os = "none")]
core::arch::global_asm!(include_str!("head.S"));
