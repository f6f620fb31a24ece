//! Warden's hypervisor core. `no_std`; everything that touches hardware goes through
//! narrow seams so that the same code runs at EL2 and, under `cargo test`, against
//! software models.

#![cfg_attr(not(any(test, feature = "fuzzing")), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

extern crate alloc;

/// Bytes per page (ownership, pins, donation): the ABI's [`host_abi::PAGE`].
pub use host_abi::PAGE;

pub mod addr;
pub mod bootargs;
pub mod dma;
pub mod domain;
pub mod dtb;
pub mod el2_s1;
pub mod el2_setup;
pub mod events;
pub mod fault;
pub mod frames;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod gic;
pub mod host_mem;
pub mod hpfar;
pub mod inval;
pub mod layout;
pub mod masters;
pub mod page_state;
pub mod pins;
pub mod pl011;
pub mod psci;
pub mod s2mmu;
pub mod smmu;
#[cfg(test)]
pub mod testalloc;
#[cfg(any(test, feature = "fuzzing"))]
pub mod testutil;
pub mod viommu;
pub mod vmid_alloc;
