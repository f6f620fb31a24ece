//! `cargo xtask build`: the EL2 image, from the `warden` ELF to `target/warden.bin`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::image;
use crate::util::{self, say, show, write_atomic};

/// The bare-metal target the image (and the `hyp` crate in it) is built for: general
/// registers only, so that no EL2 code touches the host's FP/SIMD/SVE state (the build
/// also rejects an image that contains such an instruction, see [`crate::insn`]).
pub const TARGET: &str = "aarch64-unknown-none-softfloat";
/// The target of the EL1 test images (test-images/): they may use FP/SIMD.
pub const TEST_IMAGE_TARGET: &str = "aarch64-unknown-none";

/// Where the flat image is written.
pub fn image_path() -> PathBuf {
    util::target_dir().join("warden.bin")
}

/// Builds the `warden` package, checks that its code has no FP/SIMD/SVE/SME instruction,
/// converts its ELF to a flat binary, checks the arm64 Image header and writes
/// `target/warden.bin`.
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
    check_no_fp(&elf_path)?;
    let out = image_path();
    elf_to_image(&elf_path, &out)?;
    Ok(out)
}

/// Fails if the EL2 image ELF at `elf_path` contains an instruction that touches the
/// FP/SIMD/SVE/SME registers or their controls ([`crate::insn::fp_simd_sve_sme`]): Warden's
/// exception entry saves only the general registers, so such code would corrupt the
/// host's FP state or leak Warden's data through it.
pub fn check_no_fp(elf_path: &Path) -> Result<()> {
    let elf = std::fs::read(elf_path)
        .with_context(|| format!("cannot read the image ELF {}", elf_path.display()))?;
    let bad =
        crate::insn::scan(&elf, crate::insn::fp_simd_sve_sme).with_context(|| show(elf_path))?;
    if !bad.is_empty() {
        bail!(
            "{} is EL2 code and must not touch FP/SIMD/SVE/SME state (the host's registers), \
             but contains {} such instruction(s): {}",
            show(elf_path),
            bad.len(),
            crate::insn::describe(&bad, 8)
        );
    }
    say(format!(
        "checked {}: no FP/SIMD/SVE/SME instructions",
        show(elf_path)
    ));
    Ok(())
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
