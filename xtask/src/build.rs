//! `cargo xtask build`: the EL2 image, from the `warden` ELF to `target/warden.bin`.

use std::path::{Path, PathBuf};

use crate::bail;
use crate::image;
use crate::util::{self, Context, Result, say, show, write_atomic};

/// The bare-metal target the image is built for.
pub const TARGET: &str = "aarch64-unknown-none";

/// Where the flat image is written.
pub fn image_path() -> PathBuf {
    util::target_dir().join("warden.bin")
}

/// Builds the `warden` package, converts its ELF to a flat binary, checks the arm64 Image
/// header and writes `target/warden.bin`.
pub fn build_image(debug: bool) -> Result<PathBuf> {
    let profile = if debug { "debug" } else { "release" };
    let mut cmd = crate::cargo();
    cmd.args(["build", "-p", "warden", "--target", TARGET]);
    if !debug {
        cmd.arg("--release");
    }
    say(format!("building the image: {}", util::describe(&cmd)));
    util::run(&mut cmd)?;
    let elf_path = util::target_dir().join(TARGET).join(profile).join("warden");
    let out = image_path();
    elf_to_image(&elf_path, &out)?;
    Ok(out)
}

/// Converts an image ELF to a flat binary at `out`, checking its arm64 Image header.
pub fn elf_to_image(elf_path: &Path, out: &Path) -> Result<()> {
    let elf = std::fs::read(elf_path)
        .with_context(|| format!("cannot read the image ELF {}", elf_path.display()))?;
    let flat = image::elf_to_flat(&elf).with_context(|| show(elf_path))?;
    if flat.bytes.is_empty() {
        bail!("{} has no file contents", show(elf_path));
    }
    let header = image::check_header(&flat.bytes, flat.mem_span)
        .with_context(|| format!("{} is not a bootable arm64 Image", show(elf_path)))?;
    if flat.entry != flat.base {
        say(format!(
            "warning: the ELF entry point {:#x} is not the image start {:#x}; loaders enter the \
             image at its first byte (the Image header's code0)",
            flat.entry, flat.base
        ));
    }
    write_atomic(out, &flat.bytes)?;
    say(format!(
        "wrote {} ({} KiB; image_size {:#x}, memory span {:#x}, text_offset {:#x})",
        show(out),
        flat.bytes.len().div_ceil(1024),
        header.image_size,
        flat.mem_span,
        header.text_offset
    ));
    Ok(())
}
