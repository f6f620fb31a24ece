//! Links `blkbench` as a static, non-PIE Linux executable when built for the bare-metal
//! target (it has no libc; its addresses are fixed at link time, so the ELF runs under
//! Linux as it is).
fn main() {
    let target = std::env::var("TARGET").unwrap_or_default();
    if target == "aarch64-unknown-none" {
        println!("cargo:rustc-link-arg-bins=--no-pie");
        println!("cargo:rustc-link-arg-bins=--image-base=0x400000");
        println!("cargo:rustc-link-arg-bins=-zseparate-code");
    }
}
