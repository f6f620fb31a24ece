//! Links `fp-regs` as a static, non-PIE Linux executable (only for the bare-metal target:
//! the program has no libc and no relocations, so the same ELF runs under Linux).
fn main() {
    println!("cargo:rerun-if-changed=src/fp-regs.S");
    let target = std::env::var("TARGET").unwrap_or_default();
    if target == "aarch64-unknown-none" {
        println!("cargo:rustc-link-arg-bins=--no-pie");
        println!("cargo:rustc-link-arg-bins=--image-base=0x400000");
        println!("cargo:rustc-link-arg-bins=-zseparate-code");
    }
}
