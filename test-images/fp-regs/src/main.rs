//! `fp-regs`: a static Linux aarch64 program (no libc, raw system calls) that the boot
//! tests' `/init` runs to check that traps into Warden leave the host's FP/SIMD state
//! alone. The whole program is assembly ([`fp-regs.S`](fp-regs.S)), so that nothing but
//! the check itself touches the FP/SIMD registers:
//!
//! ```text
//! fp-regs ADDR ROUNDS [EDU_BAR0]
//! ```
//!
//! maps the physical page of `ADDR` (Warden's carve-out) from `/dev/mem` and installs a
//! SIGBUS handler that steps over the faulting load. Each round loads known values into
//! v0–v31 (all 128 bits), FPCR and FPSR, reads `ADDR` (Warden takes the stage-2 fault
//! and injects an external abort; Linux delivers SIGBUS), and compares every register with
//! what it loaded. With SVE (`AT_HWCAP`), every odd round does the same with the whole of
//! z0–z31 and p0–p15 (through memory, `LDR`/`STR` of each register) besides FPCR/FPSR. With `EDU_BAR0` (a `/sys/bus/pci/devices/*/resource0` of QEMU's `edu`
//! device, memory decoding and bus mastering on) each round first has edu DMA from
//! `ADDR` and waits until the DMA is over, so the SMMU's fault event is pending when the
//! trap comes (Warden drains the event queue on every trap). It prints one line, starting
//! with `fp-regs: ok` or `fp-regs: FAIL`, and exits 0 only if every round trapped and
//! kept every register.
//!
//! On the host (`cargo test`, `cargo clippy`) this crate is an empty program.

#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
core::arch::global_asm!(include_str!("fp-regs.S"), options(raw));

#[cfg(target_os = "none")]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    // Unreachable: the program has no Rust code that can panic.
    loop {
        core::hint::spin_loop();
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "fp-regs is a Linux aarch64 program: `cargo xtask deps` builds it into the initramfs"
    );
}
