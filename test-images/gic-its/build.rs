//! Passes the test images' shared linker script (test-images/el1-rt/linker.ld) to the
//! linker (only for the bare-metal target).
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    let script = format!("{dir}/../el1-rt/linker.ld");
    println!("cargo:rerun-if-changed={script}");
    let target = std::env::var("TARGET").unwrap_or_default();
    if target == "aarch64-unknown-none" {
        println!("cargo:rustc-link-arg-bins=-T{script}");
    }
}
