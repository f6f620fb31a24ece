//! Passes the image's linker script to the linker (only for the bare-metal target).
fn main() {
    println!("cargo:rerun-if-changed=linker.ld");
    let target = std::env::var("TARGET").unwrap_or_default();
    if target.starts_with("aarch64-unknown-none") {
        let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
        println!("cargo:rustc-link-arg-bins=-T{dir}/linker.ld");
    }
}
