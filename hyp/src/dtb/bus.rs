//! The addressing conventions of the walk: what it keeps about each ancestor (its
//! effective cell sizes and `ranges`) and the translation of a child address up to a CPU
//! physical address through every ancestor's `ranges`. Shared by the platform scan
//! ([`super::Platform::parse`]) and the node list ([`super::device_nodes`]).

use super::props::tuples;

/// What the walk keeps about each ancestor.
#[derive(Clone, Copy, Default)]
pub(super) struct Frame<'a> {
    pub(super) name: &'a str,
    /// Effective `#address-cells` / `#size-cells` for this node's children.
    pub(super) address_cells: u32,
    pub(super) size_cells: u32,
    /// `ranges` (None: absent, not CPU-addressable below).
    pub(super) ranges: Option<&'a [u8]>,
}

/// Translates `addr` in the child address space of the node at `frames[level]` up to a
/// CPU physical address through every ancestor's `ranges`. None if some ancestor has no
/// `ranges` or no window covers it.
pub(super) fn translate_up(frames: &[Frame<'_>], mut addr: u128, mut level: usize) -> Option<u64> {
    while level > 0 {
        let bus = &frames[level];
        let parent_cells = frames[level - 1].address_cells;
        let ranges = bus.ranges?;
        if !ranges.is_empty() {
            let mut hit = None;
            for [child, parent, size] in
                tuples(ranges, [bus.address_cells, parent_cells, bus.size_cells])?
            {
                if addr >= child && addr - child < size {
                    hit = parent.checked_add(addr - child);
                    break;
                }
            }
            addr = hit?;
        }
        level -= 1;
    }
    u64::try_from(addr).ok()
}
