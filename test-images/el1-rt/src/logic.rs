//! The images' pure logic — data patterns and their comparison, PCI BAR sizing and
//! placement, StreamID lookup, finding Warden's carve-out in the DTB, status names — kept
//! apart from the hardware access so that `cargo test` checks it on the host.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use hyp::addr::PhysRange;
use hyp::dtb::{PciWindow, Platform, ReservationSource};

/// Bytes in a page and in edu's DMA buffer.
pub const PAGE: usize = 4096;
/// 64-bit words in a page.
pub const WORDS: usize = PAGE / 8;

/// The contents of one page, as words.
pub type PageWords = [u64; WORDS];

/// Word `i` of the pattern tagged `tag`: the tag in bits 63:56, a mix of tag and index
/// below. Each non-zero tag stamps itself in the top byte of every word, so no word of
/// one pattern equals any word of another, or zero.
pub fn pattern(tag: u8, i: usize) -> u64 {
    // splitmix64's finaliser: every index gives a different-looking word.
    let mut z = (i as u64)
        .wrapping_add(u64::from(tag) << 32)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (u64::from(tag) << 56) | (z >> 8)
}

/// A whole page of the pattern tagged `tag`.
pub fn pattern_page(tag: u8) -> PageWords {
    core::array::from_fn(|i| pattern(tag, i))
}

/// Where two pages first differ, and how many words differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// Index of the first differing word.
    pub index: usize,
    /// The word found there.
    pub got: u64,
    /// The word expected there.
    pub want: u64,
    /// Number of differing words.
    pub count: usize,
}

/// Compares two pages.
pub fn compare(got: &PageWords, want: &PageWords) -> Option<Mismatch> {
    let mut first = None;
    let mut count = 0;
    for (i, (&g, &w)) in got.iter().zip(want.iter()).enumerate() {
        if g != w {
            count += 1;
            first.get_or_insert((i, g, w));
        }
    }
    first.map(|(index, got, want)| Mismatch {
        index,
        got,
        want,
        count,
    })
}

/// What edu's buffer held after a DMA read that must have been refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// Unchanged: the device got nothing.
    Untouched,
    /// All zeros: what QEMU hands a device whose read was aborted.
    Zeros,
    /// Some word equals the protected memory's word at the same place: its data arrived.
    Leaked {
        /// The first such word.
        index: usize,
        /// Its value.
        value: u64,
    },
    /// Neither unchanged nor zeros: data from somewhere arrived. With the protected
    /// memory's contents unknown (Warden's carve-out), that is a leak too.
    Changed {
        /// The first word that is neither the old one nor zero.
        index: usize,
        /// Its value.
        value: u64,
    },
}

impl ReadOutcome {
    /// Whether this shows that the refused read delivered data.
    pub fn leaked(self) -> bool {
        matches!(self, Self::Leaked { .. } | Self::Changed { .. })
    }
}

/// Judges edu's buffer `after` a DMA read that must have been refused, given what it held
/// `before` and, if known, the contents of the memory it tried to read (`secret`).
pub fn judge_refused_read(
    after: &PageWords,
    before: &PageWords,
    secret: Option<&PageWords>,
) -> ReadOutcome {
    if let Some(secret) = secret
        && let Some(index) = (0..WORDS).find(|&i| after[i] == secret[i])
    {
        return ReadOutcome::Leaked {
            index,
            value: after[index],
        };
    }
    if after == before {
        return ReadOutcome::Untouched;
    }
    if after.iter().all(|&w| w == 0) {
        return ReadOutcome::Zeros;
    }
    let index = (0..WORDS)
        .find(|&i| after[i] != before[i] && after[i] != 0)
        .unwrap_or(0);
    ReadOutcome::Changed {
        index,
        value: after[index],
    }
}

/// What a [`ReadOutcome`] means, in words.
pub fn describe_read(r: ReadOutcome) -> String {
    match r {
        ReadOutcome::Untouched => "edu's buffer unchanged".into(),
        ReadOutcome::Zeros => "edu's buffer all zeros, as after an aborted read".into(),
        ReadOutcome::Leaked { index, value } => {
            format!("edu's buffer holds the protected page's data (word {index} = {value:#x})")
        }
        ReadOutcome::Changed { index, value } => format!(
            "edu's buffer holds data that is neither its old contents nor zeros (word {index} = {value:#x})"
        ),
    }
}

// ---------------------------------------------------------------------------------------
// PCI
// ---------------------------------------------------------------------------------------

/// PCI Command register bits.
pub const CMD_MEM: u16 = 1 << 1;
/// Bus master enable.
pub const CMD_BUS_MASTER: u16 = 1 << 2;

/// Offset of a configuration register in an ECAM window whose first bus is `bus_start`.
pub fn ecam_offset(bus_start: u32, bus: u32, dev: u32, func: u32, reg: u32) -> Option<u64> {
    if bus < bus_start || dev >= 32 || func >= 8 || reg >= 4096 {
        return None;
    }
    Some((u64::from(bus - bus_start) << 20) | u64::from(dev << 15 | func << 12 | reg))
}

/// A memory BAR as its sizing probe (all ones written, value read back) describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemBar {
    /// Bytes it decodes (a power of two, at least 16).
    pub size: u64,
    /// It is the low half of a 64-bit BAR.
    pub is_64: bool,
    /// Prefetchable.
    pub prefetchable: bool,
}

/// Decodes the read-back of a BAR after writing all ones to it (`upper` is the next BAR's
/// read-back for a 64-bit BAR).
pub fn mem_bar(probe: u32, upper: Option<u32>) -> Result<MemBar, &'static str> {
    if probe & 1 != 0 {
        return Err("an I/O BAR");
    }
    let is_64 = match (probe >> 1) & 3 {
        0 => false,
        2 => true,
        _ => return Err("a BAR of reserved type"),
    };
    let mask = if is_64 {
        (u64::from(upper.ok_or("a 64-bit BAR without its upper half")?) << 32)
            | u64::from(probe & !0xf)
    } else {
        u64::from(probe & !0xf) | 0xffff_ffff_0000_0000
    };
    if mask == 0 || mask == 0xffff_ffff_0000_0000 {
        return Err("a BAR that decodes nothing");
    }
    let size = (!mask).wrapping_add(1);
    if !size.is_power_of_two() || size < 16 {
        return Err("a BAR with a malformed size mask");
    }
    Ok(MemBar {
        size,
        is_64,
        prefetchable: probe & (1 << 3) != 0,
    })
}

/// Where a BAR of `size` bytes goes in `window`: the first naturally aligned PCI address
/// that fits, as (PCI address, CPU address).
pub fn place_bar(window: PciWindow, size: u64) -> Option<(u64, u64)> {
    if !size.is_power_of_two() {
        return None;
    }
    let pci = window.pci_addr.checked_add(size - 1)? & !(size - 1);
    let end = pci.checked_add(size)?;
    if end > window.pci_addr.checked_add(window.size)? || end > 1 << 32 {
        return None;
    }
    Some((pci, window.cpu_addr + (pci - window.pci_addr)))
}

/// What is left of `window` once its first `used` bytes are taken (None if nothing).
pub fn window_after(window: PciWindow, used: u64) -> Option<PciWindow> {
    (used < window.size).then(|| PciWindow {
        cpu_addr: window.cpu_addr + used,
        pci_addr: window.pci_addr + used,
        size: window.size - used,
    })
}

/// The StreamID (and the IOMMU's phandle) that requester ID `rid` of PCI host `host`
/// masters as, from the DTB's `iommu-map` (and `iommu-map-mask`).
pub fn stream_id(plat: &Platform, host: usize, rid: u32) -> Option<(u32, u32)> {
    let mask = plat.pci_hosts.get(host)?.iommu_map_mask.unwrap_or(u32::MAX);
    let rid = rid & mask;
    plat.iommu_map
        .iter()
        .find(|e| e.host == host && rid >= e.rid_base && rid - e.rid_base < e.len)
        .map(|e| (e.sid_base + (rid - e.rid_base), e.iommu))
}

// ---------------------------------------------------------------------------------------
// Warden's carve-out
// ---------------------------------------------------------------------------------------

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

/// The unit addresses of the `/reserved-memory/warden@<hex>` nodes of a DTB (the
/// carve-outs Warden describes to the host), in DTB order. A malformed blob gives what
/// was found before the damage.
pub fn warden_node_bases(dtb: &[u8]) -> Vec<u64> {
    const BEGIN_NODE: u32 = 1;
    const END_NODE: u32 = 2;
    const PROP: u32 = 3;
    const NOP: u32 = 4;
    let mut out = Vec::new();
    if be32(dtb, 0) != Some(0xd00d_feed) {
        return out;
    }
    let (Some(off), Some(len)) = (be32(dtb, 8), be32(dtb, 36)) else {
        return out;
    };
    let (start, Some(end)) = (off as usize, (off as usize).checked_add(len as usize)) else {
        return out;
    };
    let Some(structs) = dtb.get(start..end) else {
        return out;
    };
    // Depth of the node being read (the root is 1) and whether the current depth-2 node
    // is /reserved-memory.
    let mut depth = 0usize;
    let mut in_resmem = false;
    let mut at = 0usize;
    while let Some(token) = be32(structs, at) {
        at += 4;
        match token {
            BEGIN_NODE => {
                let Some(nul) = structs
                    .get(at..)
                    .and_then(|s| s.iter().position(|&b| b == 0))
                else {
                    break;
                };
                let name = &structs[at..at + nul];
                at = (at + nul + 1 + 3) & !3;
                depth += 1;
                if depth == 2 {
                    in_resmem = name == b"reserved-memory";
                } else if depth == 3
                    && in_resmem
                    && let Some(hex) = name.strip_prefix(b"warden@")
                    && let Ok(hex) = core::str::from_utf8(hex)
                    && let Ok(base) = u64::from_str_radix(hex, 16)
                {
                    out.push(base);
                }
            }
            END_NODE => {
                if depth == 0 {
                    break;
                }
                depth -= 1;
            }
            PROP => {
                let Some(len) = be32(structs, at) else {
                    break;
                };
                at = at.saturating_add(8).saturating_add(len as usize);
                at = at.saturating_add(3) & !3;
            }
            NOP => {}
            _ => break,
        }
    }
    out
}

/// Warden's carve-outs: the `/reserved-memory` reservations whose base one of `bases`
/// (from [`warden_node_bases`]) names.
pub fn carve_outs(plat: &Platform, bases: &[u64]) -> Vec<PhysRange> {
    plat.reservations
        .iter()
        .filter(|r| matches!(r.source, ReservationSource::ReservedMemory { .. }))
        .filter(|r| bases.contains(&r.range.base.get()))
        .map(|r| r.range)
        .collect()
}

/// The pages of a carve-out that `dma-into-carveout` aims at: its first page and the page
/// in its middle.
pub fn carve_out_targets(c: PhysRange) -> [u64; 2] {
    let base = c.base.get();
    [base, base + ((c.size / 2) & !(PAGE as u64 - 1))]
}

// ---------------------------------------------------------------------------------------
// Status codes
// ---------------------------------------------------------------------------------------

/// A status register value with its name: `-2 (INVALID)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status(pub u64);

impl core::fmt::Display for Status {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let name = match self.0 {
            0 => "OK",
            v => host_abi::Error::from_reg(v).map_or("unknown", host_abi::Error::name),
        };
        write!(f, "{} ({name})", self.0 as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use hyp::dtb::HostDtbEdits;

    const GICV3: &[u8] = include_bytes!("../../../hyp/testdata/virt-gicv3.dtb");
    const GICV2: &[u8] = include_bytes!("../../../hyp/testdata/virt-gicv2.dtb");
    const SYNTHETIC: &[u8] = include_bytes!("../../../hyp/testdata/synthetic.dtb");

    #[test]
    fn patterns_never_collide() {
        let mut all = std::collections::HashSet::new();
        for t in 1..=255u8 {
            for i in 0..WORDS {
                let w = pattern(t, i);
                assert_ne!(w, 0);
                assert_eq!(w >> 56, u64::from(t));
                assert!(all.insert(w), "{t} {i}");
            }
        }
        assert_eq!(pattern_page(0xc3)[7], pattern(0xc3, 7));
    }

    #[test]
    fn page_comparison() {
        let a = pattern_page(0xa5);
        assert_eq!(compare(&a, &a), None);
        let mut b = a;
        b[3] = 0;
        b[9] = 1;
        assert_eq!(
            compare(&b, &a),
            Some(Mismatch {
                index: 3,
                got: 0,
                want: a[3],
                count: 2
            })
        );
    }

    #[test]
    fn refused_reads() {
        let before = pattern_page(0xc3);
        let secret = pattern_page(0x3c);
        let j = |after: &PageWords, secret| judge_refused_read(after, &before, secret);
        assert_eq!(j(&before, Some(&secret)), ReadOutcome::Untouched);
        assert_eq!(j(&[0; WORDS], Some(&secret)), ReadOutcome::Zeros);
        assert_eq!(j(&[0; WORDS], None), ReadOutcome::Zeros);
        // The secret arrived, wholly or in part.
        assert_eq!(
            j(&secret, Some(&secret)),
            ReadOutcome::Leaked {
                index: 0,
                value: secret[0]
            }
        );
        let mut part = before;
        part[100] = secret[100];
        assert!(j(&part, Some(&secret)).leaked());
        assert!(j(&part, None).leaked());
        // Unknown contents: anything that is neither the old data nor zeros came in.
        let mut other = [0u64; WORDS];
        other[5] = 0x1234;
        assert_eq!(
            j(&other, None),
            ReadOutcome::Changed {
                index: 5,
                value: 0x1234
            }
        );
        assert!(j(&other, None).leaked());
        assert!(!ReadOutcome::Untouched.leaked() && !ReadOutcome::Zeros.leaked());
    }

    #[test]
    fn ecam_offsets() {
        assert_eq!(ecam_offset(0, 0, 2, 0, 0x10), Some(0x1_0010));
        assert_eq!(ecam_offset(0, 1, 0, 0, 0), Some(0x10_0000));
        assert_eq!(ecam_offset(0x10, 0x11, 31, 7, 0xffc), Some(0x1f_fffc));
        assert_eq!(ecam_offset(1, 0, 0, 0, 0), None);
        assert_eq!(ecam_offset(0, 0, 32, 0, 0), None);
        assert_eq!(ecam_offset(0, 0, 0, 8, 0), None);
        assert_eq!(ecam_offset(0, 0, 0, 0, 4096), None);
    }

    #[test]
    fn bar_sizing() {
        // edu's BAR0: 32-bit, non-prefetchable, 1 MiB.
        assert_eq!(
            mem_bar(0xfff0_0000, None),
            Ok(MemBar {
                size: 1 << 20,
                is_64: false,
                prefetchable: false
            })
        );
        assert_eq!(
            mem_bar(0xffff_e00c, Some(0xffff_ffff)),
            Ok(MemBar {
                size: 0x2000,
                is_64: true,
                prefetchable: true
            })
        );
        assert_eq!(
            mem_bar(0x0000_000c, Some(0xffff_fff0)).unwrap().size,
            0x10_0000_0000
        );
        assert!(mem_bar(0xffff_ff01, None).is_err(), "I/O");
        assert!(mem_bar(0xffff_f004, None).is_err(), "64-bit without upper");
        assert!(mem_bar(0xffff_f002, None).is_err(), "reserved type");
        assert!(mem_bar(0, None).is_err(), "no BAR");
        assert!(mem_bar(0xff0f_0000, None).is_err(), "holes in the mask");
    }

    #[test]
    fn bar_placement() {
        let w = PciWindow {
            cpu_addr: 0x8_1000_0000,
            pci_addr: 0x1000_0000,
            size: 0x2eff_0000,
        };
        assert_eq!(place_bar(w, 1 << 20), Some((0x1000_0000, 0x8_1000_0000)));
        let odd = PciWindow {
            pci_addr: 0x1000_1000,
            cpu_addr: 0x2000_1000,
            size: 0x20_0000,
        };
        assert_eq!(place_bar(odd, 1 << 20), Some((0x1010_0000, 0x2010_0000)));
        assert_eq!(place_bar(odd, 2 << 20), None, "does not fit once aligned");
        assert_eq!(place_bar(odd, 3 << 20), None, "not a power of two");
        let top = PciWindow {
            pci_addr: 0xfff0_0000,
            cpu_addr: 0xfff0_0000,
            size: 0x20_0000,
        };
        assert_eq!(place_bar(top, 1 << 20), Some((0xfff0_0000, 0xfff0_0000)));
        assert_eq!(place_bar(top, 2 << 20), None, "past 4 GiB");
    }

    #[test]
    fn window_use() {
        let w = PciWindow {
            cpu_addr: 0x1000_0000,
            pci_addr: 0x1000_0000,
            size: 0x2eff_0000,
        };
        let rest = window_after(w, 1 << 20).unwrap();
        assert_eq!(rest.cpu_addr, 0x1010_0000);
        assert_eq!(rest.size, 0x2eef_0000);
        assert_eq!(place_bar(rest, 1 << 20), Some((0x1010_0000, 0x1010_0000)));
        assert_eq!(window_after(w, w.size), None);
    }

    #[test]
    fn read_descriptions() {
        assert!(describe_read(ReadOutcome::Zeros).contains("aborted read"));
        assert!(
            describe_read(ReadOutcome::Leaked {
                index: 3,
                value: 0x10
            })
            .contains("word 3 = 0x10")
        );
    }

    #[test]
    fn stream_ids() {
        let p = Platform::parse(GICV3).unwrap();
        let phandle = p.smmus[0].phandle.unwrap();
        // 00:02.0 -> RID 0x10 -> SID 0x10 on QEMU (identity iommu-map).
        assert_eq!(stream_id(&p, 0, 0x10), Some((0x10, phandle)));
        assert_eq!(stream_id(&p, 1, 0x10), None);
        // The synthetic board splits the RIDs over two SMMUs.
        let s = Platform::parse(SYNTHETIC).unwrap();
        assert_eq!(stream_id(&s, 0, 0x10), Some((0x10, 0x10)));
        assert_eq!(stream_id(&s, 0, 0x8010), Some((0x1_0010, 0x11)));
    }

    #[test]
    fn finds_wardens_carve_outs() {
        for (name, blob, carve) in [
            (
                "gicv3",
                GICV3,
                vec![PhysRange::new(0x4020_0000, 0x240_0000)],
            ),
            (
                "gicv2",
                GICV2,
                vec![
                    PhysRange::new(0x4020_0000, 0x40_0000),
                    PhysRange::new(0x7e00_0000, 0x200_0000),
                ],
            ),
        ] {
            let p = Platform::parse(blob).unwrap();
            assert!(warden_node_bases(blob).is_empty(), "{name}: none before");
            let mut out = vec![0u8; blob.len() + 4096];
            let n = hyp::dtb::build_host_dtb(blob, &mut out, &HostDtbEdits::for_host(&p, &carve))
                .unwrap();
            let host = &out[..n];
            let bases = warden_node_bases(host);
            let want: Vec<u64> = carve.iter().map(|c| c.base.get()).collect();
            assert_eq!(bases, want, "{name}");
            let hp = Platform::parse(host).unwrap();
            assert_eq!(carve_outs(&hp, &bases), carve, "{name}");
            // Truncated blobs never panic and find at most what is there.
            for len in (0..n).step_by(7) {
                let mut cut = host[..len].to_vec();
                if len >= 8 {
                    cut[4..8].copy_from_slice(&(len as u32).to_be_bytes());
                }
                let found = warden_node_bases(&cut);
                assert!(found.iter().all(|b| want.contains(b)), "{name} {len}");
            }
        }
        // DTBs without such nodes, or not DTBs at all.
        assert!(warden_node_bases(SYNTHETIC).is_empty());
        assert!(warden_node_bases(b"not a dtb").is_empty());
    }

    #[test]
    fn carve_out_pages() {
        let c = PhysRange::new(0x4020_0000, 0x240_0000);
        assert_eq!(carve_out_targets(c), [0x4020_0000, 0x4140_0000]);
        let odd = PhysRange::new(0x1000, 0x3000);
        assert_eq!(carve_out_targets(odd), [0x1000, 0x2000]);
    }

    #[test]
    fn status_names() {
        assert_eq!(format!("{}", Status(0)), "0 (OK)");
        assert_eq!(format!("{}", Status(-2i64 as u64)), "-2 (INVALID)");
        assert_eq!(format!("{}", Status(-3i64 as u64)), "-3 (DENIED)");
        assert_eq!(format!("{}", Status(-8i64 as u64)), "-8 (EXIST)");
        assert_eq!(format!("{}", Status(-99i64 as u64)), "-99 (unknown)");
        assert_eq!(format!("{}", Status(5)), "5 (unknown)");
    }
}
