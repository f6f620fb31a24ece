//! Warden: the bootable EL2 image. Only the glue lives here (entry code, exception
//! vectors, per-CPU bring-up, the architecture layer); the hypervisor core is the `hyp`
//! crate. On the host this crate is an empty program so that workspace-wide
//! `cargo clippy` and `cargo test` work.

#![cfg_attr(target_os = "none", no_std, no_main)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

// EL2 code must never touch the host's FP/SIMD registers: the image is built for
// aarch64-unknown-none-softfloat (`cargo xtask build` also scans it for FP/SIMD/SVE/SME
// instructions). A build for a target with FP/SIMD code generation stops here.
#[cfg(all(target_os = "none", target_feature = "neon"))]
compile_error!("Warden's EL2 image must be built for aarch64-unknown-none-softfloat (no FP/SIMD)");

#[cfg(target_os = "none")]
extern crate alloc;

#[cfg(target_os = "none")]
mod arch;
#[cfg(target_os = "none")]
mod boot;
#[cfg(target_os = "none")]
mod console;
#[cfg(target_os = "none")]
mod cpu;
#[cfg(target_os = "none")]
mod error;
#[cfg(target_os = "none")]
mod gic;
#[cfg(target_os = "none")]
mod hypercall;
#[cfg(target_os = "none")]
mod iommu;
#[cfg(target_os = "none")]
mod mm;
#[cfg(target_os = "none")]
mod platform;
#[cfg(target_os = "none")]
mod trap;

#[cfg(target_os = "none")]
core::arch::global_asm!(include_str!("head.S"));

#[cfg(target_os = "none")]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    println!("warden: PANIC on CPU {}: {info}", cpu::this_slot());
    arch::park()
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("warden is a bare-metal image: build it with `cargo xtask build`");
}
