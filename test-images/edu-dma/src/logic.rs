//! The program's pure logic: the patterns its checks write. The rest (pattern words and
//! their comparison, PCI BAR sizing and placement, StreamID lookup, finding Warden's
//! carve-out in the DTB, status names) is shared by the test images in `el1-rt`, where
//! `cargo test` checks it on the host.

#![cfg_attr(not(target_os = "none"), allow(dead_code, unused_imports))]

pub use el1_rt::logic::*;

/// Which pattern a page holds. Each one stamps its own non-zero tag in the top byte of
/// every word, so no word of one pattern equals any word of another, or zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Tag {
    /// The source buffer of `dma-to-host`.
    Source = 0xa5,
    /// What edu's buffer is filled with before a DMA that must not reach it.
    Filler = 0x5a,
    /// What edu writes into memory it must not reach.
    Marker = 0xc3,
    /// What the donated page holds.
    Donated = 0x3c,
}

/// A whole page of pattern `tag`.
pub fn pattern_page(tag: Tag) -> PageWords {
    el1_rt::logic::pattern_page(tag as u8)
}

/// fw_cfg's DMA address register: the big-endian address of a DMA access block
/// (QEMU's docs/specs/fw_cfg.rst; QEMU.md section 9).
pub const FW_CFG_DMA_REG: u64 = 0x10;
/// fw_cfg selector 0: the signature, the four bytes `QEMU`.
pub const FW_CFG_SIGNATURE: u16 = 0;
/// The signature's bytes.
pub const SIGNATURE: [u8; 4] = *b"QEMU";
/// DMA control bits: select the item in the top 16 bits, then read it.
pub const FW_CFG_DMA_SELECT: u32 = 0x08;
/// DMA control: read the item into memory.
pub const FW_CFG_DMA_READ: u32 = 0x02;

/// The fw_cfg device the DTB describes (`qemu,fw-cfg-mmio`): its registers and whether
/// the node is enabled.
pub fn fw_cfg(dtb: &[u8]) -> Option<(hyp::addr::PhysRange, bool)> {
    let nodes = hyp::dtb::device_nodes(dtb).ok()?;
    let n = nodes.iter().find(|n| n.is_compatible("qemu,fw-cfg-mmio"))?;
    Some((*n.regs.first()?, n.available))
}

/// The control word of a DMA access that reads item `selector` into memory.
pub fn fw_cfg_read_control(selector: u16) -> u32 {
    (u32::from(selector) << 16) | FW_CFG_DMA_SELECT | FW_CFG_DMA_READ
}

/// A fw_cfg DMA access block `{be32 control, be32 length, be64 address}` as the two
/// little-endian 64-bit words that hold those bytes in memory.
pub fn fw_cfg_dma_block(control: u32, length: u32, address: u64) -> [u64; 2] {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&control.to_be_bytes());
    b[4..8].copy_from_slice(&length.to_be_bytes());
    b[8..].copy_from_slice(&address.to_be_bytes());
    [
        u64::from_le_bytes(b[..8].try_into().unwrap_or_default()),
        u64::from_le_bytes(b[8..].try_into().unwrap_or_default()),
    ]
}

/// The control field of a DMA access block's first word (QEMU writes 0 there when the
/// access is done, or sets bit 0 on error).
pub fn fw_cfg_block_control(word0: u64) -> u32 {
    u32::from_be_bytes((word0 as u32).to_le_bytes())
}

/// The byte offset of the first `QEMU` signature in a page, if there is one.
pub fn find_signature(page: &PageWords) -> Option<usize> {
    let mut bytes = [0u8; PAGE];
    for (i, w) in page.iter().enumerate() {
        bytes[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
    }
    bytes.windows(4).position(|w| w == SIGNATURE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fw_cfg_dma_encoding() {
        // Selector 0, SELECT | READ, 4 bytes to 0x5009_4000.
        assert_eq!(fw_cfg_read_control(FW_CFG_SIGNATURE), 0x0a);
        assert_eq!(fw_cfg_read_control(0x19), 0x0019_000a);
        let [w0, w1] = fw_cfg_dma_block(0x0a, 4, 0x5009_4000);
        let mut bytes = w0.to_le_bytes().to_vec();
        bytes.extend_from_slice(&w1.to_le_bytes());
        assert_eq!(
            bytes,
            [0, 0, 0, 0x0a, 0, 0, 0, 4, 0, 0, 0, 0, 0x50, 0x09, 0x40, 0]
        );
        assert_eq!(fw_cfg_block_control(w0), 0x0a);
        assert_eq!(fw_cfg_block_control(fw_cfg_dma_block(0, 4, 0)[0]), 0);
    }

    #[test]
    fn signature_search() {
        let mut page = [0u64; WORDS];
        assert_eq!(find_signature(&page), None);
        assert_eq!(find_signature(&pattern_page(Tag::Donated)), None);
        page[0] = u64::from(u32::from_le_bytes(SIGNATURE));
        assert_eq!(find_signature(&page), Some(0));
        page[0] = 0;
        page[3] = u64::from(u32::from_le_bytes(SIGNATURE)) << 16;
        assert_eq!(find_signature(&page), Some(26));
    }

    #[test]
    fn fw_cfg_from_the_dtb() {
        let gicv3 = include_bytes!("../../../hyp/testdata/virt-gicv3.dtb");
        let gicv2 = include_bytes!("../../../hyp/testdata/virt-gicv2.dtb");
        for blob in [&gicv3[..], &gicv2[..]] {
            assert_eq!(
                fw_cfg(blob),
                Some((hyp::addr::PhysRange::new(0x902_0000, 0x18), true))
            );
        }
        let synthetic = include_bytes!("../../../hyp/testdata/synthetic.dtb");
        assert_eq!(fw_cfg(synthetic), None);
    }

    #[test]
    fn tags_give_distinct_patterns() {
        let tags = [Tag::Source, Tag::Filler, Tag::Marker, Tag::Donated];
        let mut all = std::collections::HashSet::new();
        for t in tags {
            let page = pattern_page(t);
            for (i, &w) in page.iter().enumerate() {
                assert_eq!(w, pattern(t as u8, i));
                assert_eq!(w >> 56, t as u64);
                assert!(all.insert(w), "{t:?} {i}");
            }
        }
    }
}
