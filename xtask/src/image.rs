//! The bootable image: ELF → flat binary, and the arm64 Image header
//! (Documentation/arch/arm64/booting.rst in Linux).
//!
//! ```text
//! offset  field        use here
//!   0     code0/code1  first instructions (a branch past the header)
//!   8     text_offset  QEMU loads the image at RAM base + text_offset
//!  16     image_size   bytes the image occupies once loaded, .bss and stacks included
//!  24     flags        bit 0: big endian (must be 0)
//!  56     magic        "ARM\x64"
//! ```

use anyhow::{Context, Result, anyhow, bail};
use object::elf::{EM_AARCH64, FileHeader64, PT_LOAD};
use object::read::elf::{FileHeader, ProgramHeader};
use object::{Endianness, FileKind};

/// Offset of the magic number in an arm64 Image header.
pub const MAGIC_OFFSET: usize = 56;
/// The magic number of an arm64 Image.
pub const MAGIC: &[u8; 4] = b"ARM\x64";
/// Size of the header (the part this module reads).
pub const HEADER_LEN: usize = 64;

/// A flat binary made from the loadable segments of an ELF file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flat {
    /// Virtual address of the first byte of `bytes`.
    pub base: u64,
    /// File contents from `base`, gaps zero-filled, trailing .bss omitted.
    pub bytes: Vec<u8>,
    /// Memory the image occupies once loaded: from `base` to the end of the last segment,
    /// .bss included.
    pub mem_span: u64,
    /// The ELF entry point.
    pub entry: u64,
}

/// Converts an ELF file to a flat binary: every PT_LOAD segment's file bytes at
/// `p_vaddr - lowest p_vaddr`, zeros in between, nothing after the last file byte.
pub fn elf_to_flat(data: &[u8]) -> Result<Flat> {
    match FileKind::parse(data) {
        Ok(FileKind::Elf64) => {}
        Ok(kind) => bail!("not a 64-bit ELF file ({kind:?})"),
        Err(e) => bail!("not an ELF file: {e}"),
    }
    let header = FileHeader64::<Endianness>::parse(data).context("bad ELF header")?;
    let endian = header.endian().context("bad ELF header")?;
    if endian != Endianness::Little {
        bail!("the ELF file is big endian; Warden is little endian");
    }
    if header.e_machine(endian) != EM_AARCH64 {
        bail!(
            "the ELF file is not for aarch64 (e_machine = {})",
            header.e_machine(endian)
        );
    }
    let mut segs = Vec::new();
    for ph in header
        .program_headers(endian, data)
        .context("bad ELF program headers")?
    {
        if ph.p_type(endian) != PT_LOAD || ph.p_memsz(endian) == 0 {
            continue;
        }
        let vaddr = ph.p_vaddr(endian);
        let (filesz, memsz) = (ph.p_filesz(endian), ph.p_memsz(endian));
        if filesz > memsz {
            bail!("PT_LOAD at {vaddr:#x}: p_filesz {filesz:#x} > p_memsz {memsz:#x}");
        }
        let bytes = ph
            .data(endian, data)
            .map_err(|()| anyhow!("PT_LOAD at {vaddr:#x}: file bytes lie outside the file"))?;
        let end = vaddr
            .checked_add(memsz)
            .with_context(|| format!("PT_LOAD at {vaddr:#x}: size overflows"))?;
        segs.push((vaddr, end, bytes));
    }
    if segs.is_empty() {
        bail!("the ELF file has no PT_LOAD segment");
    }
    segs.sort_by_key(|s| s.0);
    for pair in segs.windows(2) {
        if pair[1].0 < pair[0].1 {
            bail!(
                "PT_LOAD segments overlap: [{:#x}, {:#x}) and [{:#x}, {:#x})",
                pair[0].0,
                pair[0].1,
                pair[1].0,
                pair[1].1
            );
        }
    }
    let base = segs[0].0;
    let mem_span = segs.iter().map(|s| s.1).max().unwrap_or(base) - base;
    if mem_span > 1 << 30 {
        bail!("PT_LOAD segments span {mem_span:#x} bytes (over 1 GiB): not an image");
    }
    let file_end = segs
        .iter()
        .filter(|s| !s.2.is_empty())
        .map(|s| s.0 - base + s.2.len() as u64)
        .max()
        .unwrap_or(0);
    let mut bytes = vec![0u8; file_end as usize];
    for (vaddr, _, data) in segs.iter().filter(|s| !s.2.is_empty()) {
        let at = (vaddr - base) as usize;
        bytes[at..at + data.len()].copy_from_slice(data);
    }
    Ok(Flat {
        base,
        bytes,
        mem_span,
        entry: header.e_entry(endian),
    })
}

/// The fields of an arm64 Image header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub text_offset: u64,
    pub image_size: u64,
    pub flags: u64,
}

fn le64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// Reads the arm64 Image header at the start of `image`.
pub fn parse_header(image: &[u8]) -> Result<Header> {
    if image.len() < HEADER_LEN {
        bail!(
            "{} bytes: too short for an arm64 Image header ({HEADER_LEN} bytes)",
            image.len()
        );
    }
    let magic = &image[MAGIC_OFFSET..MAGIC_OFFSET + 4];
    if magic != MAGIC {
        bail!(
            "no arm64 Image magic \"ARM\\x64\" at offset {MAGIC_OFFSET} (found {:02x?}); \
             the image must start with an arm64 Image header",
            magic
        );
    }
    Ok(Header {
        text_offset: le64(image, 8),
        image_size: le64(image, 16),
        flags: le64(image, 24),
    })
}

/// Checks the header of a flat image whose memory span (.bss included) is `mem_span`.
pub fn check_header(image: &[u8], mem_span: u64) -> Result<Header> {
    let h = parse_header(image)?;
    if h.image_size == 0 {
        bail!(
            "Image header: image_size (offset 16) is 0, so loaders ignore text_offset and \
             cannot know how much memory the image needs; it must be at least {mem_span:#x}"
        );
    }
    if h.image_size < mem_span {
        bail!(
            "Image header: image_size (offset 16) = {:#x} is less than the image's memory \
             span {mem_span:#x} (.bss included): a loader could place something over .bss",
            h.image_size
        );
    }
    if h.flags & 1 != 0 {
        bail!("Image header: flags bit 0 says big endian; Warden is little endian");
    }
    Ok(h)
}

/// Sets `text_offset` (so QEMU loads the image at RAM base + `text_offset`).
pub fn patch_text_offset(image: &mut [u8], text_offset: u64) -> Result<()> {
    parse_header(image)?;
    if !text_offset.is_multiple_of(2 << 20) {
        bail!("text_offset {text_offset:#x} is not a multiple of 2 MiB");
    }
    image[8..16].copy_from_slice(&text_offset.to_le_bytes());
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal ELF64 file for aarch64 with the given PT_LOAD segments
    /// `(vaddr, file bytes, memsz)`.
    pub(crate) fn make_elf(entry: u64, segs: &[(u64, Vec<u8>, u64)]) -> Vec<u8> {
        let phoff = 64u64;
        let mut data_off = phoff + 56 * segs.len() as u64;
        let mut elf = Vec::new();
        elf.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
        elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        elf.extend_from_slice(&EM_AARCH64.to_le_bytes());
        elf.extend_from_slice(&1u32.to_le_bytes());
        elf.extend_from_slice(&entry.to_le_bytes());
        elf.extend_from_slice(&phoff.to_le_bytes());
        elf.extend_from_slice(&0u64.to_le_bytes()); // shoff
        elf.extend_from_slice(&0u32.to_le_bytes()); // flags
        elf.extend_from_slice(&64u16.to_le_bytes()); // ehsize
        elf.extend_from_slice(&56u16.to_le_bytes()); // phentsize
        elf.extend_from_slice(&(segs.len() as u16).to_le_bytes());
        elf.extend_from_slice(&64u16.to_le_bytes()); // shentsize
        elf.extend_from_slice(&0u16.to_le_bytes()); // shnum
        elf.extend_from_slice(&0u16.to_le_bytes()); // shstrndx
        assert_eq!(elf.len(), 64);
        let mut payload = Vec::new();
        for (vaddr, bytes, memsz) in segs {
            elf.extend_from_slice(&PT_LOAD.to_le_bytes());
            elf.extend_from_slice(&7u32.to_le_bytes()); // RWX
            elf.extend_from_slice(&data_off.to_le_bytes());
            elf.extend_from_slice(&vaddr.to_le_bytes());
            elf.extend_from_slice(&vaddr.to_le_bytes());
            elf.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            elf.extend_from_slice(&memsz.to_le_bytes());
            elf.extend_from_slice(&0x1000u64.to_le_bytes());
            data_off += bytes.len() as u64;
            payload.extend_from_slice(bytes);
        }
        elf.extend_from_slice(&payload);
        elf
    }

    /// 64 bytes of a valid Image header.
    pub(crate) fn header(text_offset: u64, image_size: u64) -> Vec<u8> {
        let mut h = vec![0u8; HEADER_LEN];
        h[0..4].copy_from_slice(&0x1400_0010u32.to_le_bytes()); // b +0x40
        h[8..16].copy_from_slice(&text_offset.to_le_bytes());
        h[16..24].copy_from_slice(&image_size.to_le_bytes());
        h[24..32].copy_from_slice(&0xau64.to_le_bytes());
        h[56..60].copy_from_slice(MAGIC);
        h
    }

    #[test]
    fn segments_gaps_and_bss() {
        let text = header(0, 0x4000);
        let data = vec![0xaa; 16];
        // text at 0x1000, data at 0x3000 with 0x10 file bytes and 0x800 of .bss after it,
        // then a .bss-only segment.
        let elf = make_elf(
            0x1000,
            &[
                (0x3000, data.clone(), 0x810),
                (0x1000, text.clone(), 0x100),
                (0x4000, vec![], 0x1000),
            ],
        );
        let flat = elf_to_flat(&elf).unwrap();
        assert_eq!(flat.base, 0x1000);
        assert_eq!(flat.entry, 0x1000);
        assert_eq!(flat.mem_span, 0x4000);
        assert_eq!(flat.bytes.len(), 0x2010, "trailing .bss must be omitted");
        assert_eq!(&flat.bytes[..64], &text[..]);
        assert!(
            flat.bytes[64..0x2000].iter().all(|&b| b == 0),
            "gap must be zero-filled"
        );
        assert_eq!(&flat.bytes[0x2000..], &data[..]);
        assert_eq!(
            check_header(&flat.bytes, flat.mem_span).unwrap().image_size,
            0x4000
        );
    }

    #[test]
    fn bss_between_segments_is_zeroed() {
        let elf = make_elf(0, &[(0, vec![1; 8], 0x100), (0x200, vec![2; 8], 8)]);
        let flat = elf_to_flat(&elf).unwrap();
        assert_eq!(flat.bytes.len(), 0x208);
        assert!(flat.bytes[8..0x200].iter().all(|&b| b == 0));
        assert_eq!(flat.mem_span, 0x208);
    }

    #[test]
    fn rejects_overlap_and_non_elf() {
        let elf = make_elf(0, &[(0, vec![1; 8], 0x100), (0x80, vec![2; 8], 8)]);
        assert!(format!("{:#}", elf_to_flat(&elf).unwrap_err()).contains("overlap"));
        assert!(elf_to_flat(b"MZ not an elf at all, really not").is_err());
        let mut other = make_elf(0, &[(0, vec![1; 8], 8)]);
        other[18] = 62; // EM_X86_64
        assert!(format!("{:#}", elf_to_flat(&other).unwrap_err()).contains("aarch64"));
    }

    #[test]
    fn header_checks() {
        let h = header(0, 0x2000);
        assert!(check_header(&h, 0x2000).is_ok());
        assert!(format!("{:#}", check_header(&h, 0x2001).unwrap_err()).contains("image_size"));
        assert!(format!("{:#}", check_header(&header(0, 0), 0x40).unwrap_err()).contains("is 0"));
        let mut bad = h.clone();
        bad[56] = b'X';
        assert!(format!("{:#}", check_header(&bad, 0x40).unwrap_err()).contains("magic"));
        assert!(parse_header(&h[..32]).is_err());
    }

    #[test]
    fn text_offset_patch() {
        let mut h = header(0, 0x2000);
        patch_text_offset(&mut h, 0x0320_0000).unwrap();
        let parsed = parse_header(&h).unwrap();
        assert_eq!(parsed.text_offset, 0x0320_0000);
        assert_eq!(parsed.image_size, 0x2000);
        assert_eq!(&h[..8], &header(0, 0x2000)[..8], "code0/code1 untouched");
        assert!(patch_text_offset(&mut h, 0x1000).is_err());
        assert!(patch_text_offset(&mut [0u8; 64], 0).is_err());
    }
}
