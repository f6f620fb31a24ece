//! Physical memory layout decisions made once at boot: where Warden's page pool goes,
//! where the host's device tree goes, and the range arithmetic they need. Pure functions
//! over the RAM banks and the ranges that are already taken, so they are tested on the host.

use crate::addr::PhysRange;

/// Rounds `v` up to a multiple of `align` (a power of two), or `None` on overflow.
pub const fn align_up(v: u64, align: u64) -> Option<u64> {
    match v.checked_add(align - 1) {
        Some(x) => Some(x & !(align - 1)),
        None => None,
    }
}

/// Calls `f` for each piece of `range` not covered by any of `holes` (in address order).
pub fn subtract(range: PhysRange, holes: &[PhysRange], mut f: impl FnMut(PhysRange)) {
    let mut cursor = range.base.get();
    let end = range.end();
    while cursor < end {
        // The hole that covers `cursor`, if any: skip past it.
        if let Some(h) = holes.iter().find(|h| h.contains(cursor)) {
            cursor = h.end().min(end);
            continue;
        }
        // Otherwise run up to the next hole start.
        let next = holes
            .iter()
            .map(|h| h.base.get())
            .filter(|&b| b > cursor && b < end)
            .min()
            .unwrap_or(end);
        f(PhysRange::new(cursor, next - cursor));
        cursor = next;
    }
}

/// Whether `r` overlaps any of `taken`.
pub fn overlaps_any(r: &PhysRange, taken: &[PhysRange]) -> bool {
    taken.iter().any(|t| t.overlaps(r))
}

/// The first part of `r` that no RAM bank covers (adjacent banks count as one), or `None`
/// when `r` lies wholly in RAM. Warden's carve-out must: memory that is not in `/memory`
/// may be MMIO, or RAM the host is told about some other way.
pub fn outside_ram(ram: &[PhysRange], r: PhysRange) -> Option<PhysRange> {
    let mut first = None;
    subtract(r, ram, |piece| {
        first.get_or_insert(piece);
    });
    first
}

/// Pages Warden keeps from the host although they are not its own (the spin-table release
/// addresses): those in RAM join `carve_outs` (unless a carve-out already covers them), so
/// that the host stage-2 leaves them out, the host DTB reserves them and they never count
/// as host-owned; the others are returned, for the caller to leave out of the host
/// stage-2's MMIO map.
pub fn keep_from_host(
    ram: &[PhysRange],
    carve_outs: &mut alloc::vec::Vec<PhysRange>,
    pages: &[PhysRange],
) -> alloc::vec::Vec<PhysRange> {
    let mut mmio = alloc::vec::Vec::new();
    for p in pages {
        // A range (a reservation around a release address) may straddle RAM and MMIO:
        // each part is kept from the host its own way.
        subtract(*p, ram, |piece| mmio.push(piece));
        for bank in ram {
            let base = bank.base.get().max(p.base.get());
            let end = bank.end().min(p.end());
            if base >= end {
                continue;
            }
            let part = PhysRange::new(base, end - base);
            if !carve_outs.iter().any(|c| c.contains_range(&part)) {
                carve_outs.push(part);
            }
        }
    }
    mmio
}

/// Finds `size` bytes aligned to `align` inside one RAM bank, overlapping nothing in
/// `taken`. The address `prefer` is tried first (if it fits); otherwise the highest
/// fitting address is chosen, which keeps low memory (where loaders put kernels) free.
pub fn find_free(
    ram: &[PhysRange],
    taken: &[PhysRange],
    size: u64,
    align: u64,
    prefer: Option<u64>,
) -> Option<PhysRange> {
    let fits = |base: u64| {
        let r = PhysRange::new(base, size);
        base.is_multiple_of(align)
            && base.checked_add(size).is_some()
            && ram.iter().any(|b| b.contains_range(&r))
            && !overlaps_any(&r, taken)
    };
    if let Some(p) = prefer
        && fits(p)
    {
        return Some(PhysRange::new(p, size));
    }
    let mut best: Option<u64> = None;
    for bank in ram {
        // Candidate tops: the bank end and the start of every taken range inside it.
        let tops = core::iter::once(bank.end()).chain(
            taken
                .iter()
                .map(|t| t.base.get())
                .filter(|&b| b > bank.base.get() && b <= bank.end()),
        );
        for top in tops {
            let Some(start) = top.checked_sub(size) else {
                continue;
            };
            let base = start & !(align - 1);
            if base >= bank.base.get() && fits(base) && best.is_none_or(|b| base > b) {
                best = Some(base);
            }
        }
    }
    best.map(|b| PhysRange::new(b, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    #[test]
    fn subtract_pieces() {
        let mut out = vec![];
        subtract(
            PhysRange::new(0, 100),
            &[
                PhysRange::new(10, 10),
                PhysRange::new(50, 60),
                PhysRange::new(15, 10),
            ],
            |r| out.push((r.base.get(), r.size)),
        );
        assert_eq!(out, vec![(0, 10), (25, 25)]);
        let mut out = vec![];
        subtract(PhysRange::new(0, 100), &[], |r| {
            out.push((r.base.get(), r.size))
        });
        assert_eq!(out, vec![(0, 100)]);
    }

    #[test]
    fn carve_out_inside_ram() {
        let ram = [
            PhysRange::new(0x4000_0000, 1024 * MB),
            PhysRange::new(0x8000_0000, 1024 * MB),
            PhysRange::new(0x1_0000_0000, 16 * MB),
        ];
        for ok in [
            PhysRange::new(0x4020_0000, 34 * MB),
            PhysRange::new(0x7fe0_0000, 4 * MB), // across two adjacent banks
            PhysRange::new(0x1_00f0_0000, MB),
        ] {
            assert_eq!(outside_ram(&ram, ok), None, "{ok:?}");
        }
        // Below RAM, past its end, straddling the end of a bank or a gap.
        assert_eq!(
            outside_ram(&ram, PhysRange::new(0x3fe0_0000, 4 * MB)),
            Some(PhysRange::new(0x3fe0_0000, 2 * MB))
        );
        assert_eq!(
            outside_ram(&ram, PhysRange::new(0xbfe0_0000, 4 * MB)),
            Some(PhysRange::new(0xc000_0000, 2 * MB))
        );
        assert_eq!(
            outside_ram(&ram, PhysRange::new(0x1_00f0_0000, 2 * MB)),
            Some(PhysRange::new(0x1_0100_0000, MB))
        );
        assert_eq!(
            outside_ram(&[], PhysRange::new(0x4000_0000, MB)),
            Some(PhysRange::new(0x4000_0000, MB))
        );
    }

    #[test]
    fn pages_kept_from_the_host() {
        let ram = [PhysRange::new(0x4000_0000, 1024 * MB)];
        let mut carve = vec![PhysRange::new(0x4020_0000, 36 * MB)];
        let pages = [
            PhysRange::new(0x4800_0000, 4096), // RAM
            PhysRange::new(0x4030_0000, 4096), // already Warden's
            PhysRange::new(0x0800_0000, 4096), // SRAM / MMIO
            // A reservation straddling the start of RAM: each part its own way.
            PhysRange::new(0x3fff_e000, 0x4000),
        ];
        let mmio = keep_from_host(&ram, &mut carve, &pages);
        assert_eq!(
            mmio,
            [
                PhysRange::new(0x0800_0000, 4096),
                PhysRange::new(0x3fff_e000, 0x2000)
            ]
        );
        assert_eq!(
            carve,
            [
                PhysRange::new(0x4020_0000, 36 * MB),
                PhysRange::new(0x4800_0000, 4096),
                PhysRange::new(0x4000_0000, 0x2000)
            ]
        );
    }

    #[test]
    fn prefers_the_given_address_then_the_highest_fit() {
        let ram = [PhysRange::new(0x4000_0000, 1024 * MB)];
        let image = PhysRange::new(0x4020_0000, 2 * MB);
        let dtb = PhysRange::new(0x4800_0000, MB);
        let kernel = PhysRange::new(0x5000_0000, 64 * MB);
        let taken = [image, dtb, kernel];
        let r = find_free(&ram, &taken, 32 * MB, 2 * MB, Some(0x4040_0000)).unwrap();
        assert_eq!(r.base.get(), 0x4040_0000);
        // Preferred spot collides with the DTB: highest fit instead.
        let r = find_free(&ram, &taken, 128 * MB, 2 * MB, Some(0x4040_0000)).unwrap();
        assert_eq!(r.end(), 0x8000_0000);
        // Nothing big enough.
        assert!(find_free(&ram, &taken, 2048 * MB, 2 * MB, None).is_none());
    }

    #[test]
    fn highest_fit_skips_taken_ranges() {
        let ram = [
            PhysRange::new(0x4000_0000, 64 * MB),
            PhysRange::new(0x1_0000_0000, 8 * MB),
        ];
        let taken = [
            PhysRange::new(0x1_0000_0000, 8 * MB),
            PhysRange::new(0x4300_0000, MB),
        ];
        let r = find_free(&ram, &taken, 16 * MB, 2 * MB, None).unwrap();
        assert_eq!(
            r.base.get(),
            0x4000_0000 + 32 * MB,
            "just below... or above the hole"
        );
        assert!(!overlaps_any(&r, &taken));
        assert!(ram[0].contains_range(&r));
    }
}
