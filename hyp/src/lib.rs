//! Warden's hypervisor core. `no_std`; everything that touches hardware goes through
//! narrow seams so that the same code runs at EL2 and, under `cargo test`, against
//! software models.

#![cfg_attr(not(test), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod addr;
pub mod bootargs;
pub mod dtb;
pub mod s2mmu;
