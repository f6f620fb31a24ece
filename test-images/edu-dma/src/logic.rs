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

#[cfg(test)]
mod tests {
    use super::*;

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
