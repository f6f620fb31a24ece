//! Tests of the stage-2 table code: geometry, descriptors, map / unmap / walk against a
//! reference map and a TLB model, break-before-make ordering, out-of-memory at every
//! allocation.

use super::*;
use crate::testutil::{Arena, Ram};
use proptest::prelude::*;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::vec::Vec;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Read-only access to the arena, for the TLB model and the checks.
#[derive(Clone)]
struct View {
    ram: Rc<Ram>,
    live: Rc<RefCell<BTreeMap<u64, usize>>>,
}

fn view_of(arena: &Arena) -> View {
    View {
        ram: arena.ram(),
        live: arena.live_handle(),
    }
}

impl View {
    fn read(&self, pa: u64) -> u64 {
        self.ram.read_u64(pa)
    }

    fn is_live(&self, pa: u64) -> bool {
        self.live.borrow().contains_key(&pa)
    }
}

/// What the TLB model saw; `watch` is the descriptor chain (level, bits) from the root
/// to the watched IPA at that moment.
#[derive(Clone, Debug, PartialEq)]
enum Event {
    Sync {
        watch: Vec<(u8, u64)>,
    },
    Invalidate {
        ipa: u64,
        size: u64,
        last_level_only: bool,
        watch: Vec<(u8, u64)>,
    },
    InvalidateAll,
}

/// An independent reference walker over the arena (does not use the code under test).
fn shift_of(g: &S2Geometry, level: u8) -> u32 {
    let gs = g.granule().shift();
    gs + (gs - 3) * (3 - level as u32)
}

fn index_of(g: &S2Geometry, level: u8, ipa: u64) -> u64 {
    let idx = ipa >> shift_of(g, level);
    if level == g.start_level() {
        idx
    } else {
        idx & ((1 << (g.granule().shift() - 3)) - 1)
    }
}

/// Descriptors from the root down to the entry translating `ipa`.
fn chain(view: &View, g: &S2Geometry, root: u64, ipa: u64) -> Vec<(u8, u64)> {
    let mut out = Vec::new();
    let (mut table, mut level) = (root, g.start_level());
    loop {
        let d = view.read(table + 8 * index_of(g, level, ipa));
        out.push((level, d));
        if level < 3 && d & 3 == 3 {
            table = d & OA_MASK;
            level += 1;
        } else {
            return out;
        }
    }
}

/// Number of tables reachable from the root (root included), and how many of the
/// non-root ones are empty.
fn tree_stats(view: &View, g: &S2Geometry, root: u64) -> (usize, usize) {
    fn visit(view: &View, g: &S2Geometry, table: u64, level: u8, stats: &mut (usize, usize)) {
        assert!(view.is_live(table), "table {table:#x} reachable but freed");
        stats.0 += 1;
        let n = g.entries(level) as u64;
        let mut any = false;
        for i in 0..n {
            let d = view.read(table + 8 * i);
            any |= d & 1 != 0;
            if level < 3 && d & 3 == 3 {
                visit(view, g, d & OA_MASK, level + 1, stats);
            }
        }
        if !any && level != g.start_level() {
            stats.1 += 1;
        }
    }
    let mut stats = (0, 0);
    visit(view, g, root, g.start_level(), &mut stats);
    stats
}

/// A model of a CPU/SMMU TLB with walk caches: it caches what lookups walked, keeps it
/// until invalidated, and so returns stale translations if an invalidation is
/// missing. It also records every call, with the watched descriptor chain.
struct ModelTlb {
    view: View,
    geom: S2Geometry,
    root: u64,
    /// Per level: entry base IPA → cached leaf.
    leaves: [BTreeMap<u64, Descriptor>; 4],
    /// Per level l: base IPA of the span of a table at level l → its address.
    walks: [BTreeMap<u64, u64>; 4],
    events: Vec<Event>,
    watch: Option<u64>,
}

impl ModelTlb {
    fn new(arena: &Arena, s2: &Stage2) -> Self {
        Self {
            view: view_of(arena),
            geom: s2.geometry(),
            root: s2.root().0,
            leaves: Default::default(),
            walks: Default::default(),
            events: Vec::new(),
            watch: None,
        }
    }

    fn watched(&self) -> Vec<(u8, u64)> {
        self.watch
            .map(|ipa| chain(&self.view, &self.geom, self.root, ipa))
            .unwrap_or_default()
    }

    fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    fn invalidations(&self) -> Vec<&Event> {
        self.events
            .iter()
            .filter(|e| matches!(e, Event::Invalidate { .. }))
            .collect()
    }

    /// Translates `ipa` as hardware would: TLB first, else a walk (through the walk
    /// cache) that fills the TLB.
    fn lookup(&mut self, ipa: u64) -> Option<(u64, S2Attrs)> {
        let g = self.geom;
        let mut hit = None;
        for level in g.start_level()..=3 {
            let size = g.entry_size(level);
            if let Some(d) = self.leaves[level as usize].get(&(ipa & !(size - 1))) {
                assert!(hit.is_none(), "TLB conflict for {ipa:#x}");
                hit = Some((d.address().0 + (ipa & (size - 1)), d.attrs()));
            }
        }
        if hit.is_some() {
            return hit;
        }
        let (mut level, mut table) = (g.start_level(), self.root);
        for l in (g.start_level() + 1..=3).rev() {
            let span = g.entry_size(l - 1);
            if let Some(&t) = self.walks[l as usize].get(&(ipa & !(span - 1))) {
                assert!(
                    self.view.is_live(t),
                    "walk cache: freed table {t:#x} for {ipa:#x}"
                );
                (level, table) = (l, t);
                break;
            }
        }
        loop {
            let d = Descriptor(self.view.read(table + 8 * index_of(&g, level, ipa)));
            let size = g.entry_size(level);
            if d.is_table(level) {
                table = d.address().0;
                assert!(
                    self.view.is_live(table),
                    "descriptor to freed table {table:#x}"
                );
                self.walks[level as usize + 1].insert(ipa & !(size - 1), table);
                level += 1;
            } else if d.is_leaf(level) {
                self.leaves[level as usize].insert(ipa & !(size - 1), d);
                return Some((d.address().0 + (ipa & (size - 1)), d.attrs()));
            } else {
                return None;
            }
        }
    }
}

fn drop_range<V>(map: &mut BTreeMap<u64, V>, span: u64, ipa: u64, size: u64) {
    let keys: Vec<u64> = map
        .range(ipa & !(span - 1)..ipa + size)
        .map(|(&k, _)| k)
        .collect();
    for k in keys {
        map.remove(&k);
    }
}

impl S2Tlb for ModelTlb {
    fn invalidate_ipa_range(&mut self, ipa: Ipa, size: u64, last_level_only: bool) {
        let watch = self.watched();
        self.events.push(Event::Invalidate {
            ipa: ipa.0,
            size,
            last_level_only,
            watch,
        });
        let g = self.geom;
        for level in g.start_level()..=3 {
            drop_range(
                &mut self.leaves[level as usize],
                g.entry_size(level),
                ipa.0,
                size,
            );
            if !last_level_only && level > g.start_level() {
                let span = g.entry_size(level - 1);
                drop_range(&mut self.walks[level as usize], span, ipa.0, size);
            }
        }
    }

    fn invalidate_all(&mut self) {
        self.events.push(Event::InvalidateAll);
        self.leaves = Default::default();
        self.walks = Default::default();
    }

    fn sync(&mut self) {
        let watch = self.watched();
        self.events.push(Event::Sync { watch });
    }
}

fn geom(granule: Granule, ipa_bits: u32, pa_bits: u32) -> S2Geometry {
    S2Geometry::new(granule, ipa_bits, pa_bits).unwrap()
}

fn setup(granule: Granule, ipa_bits: u32, pa_bits: u32) -> (Arena, Stage2, ModelTlb) {
    let mut arena = Arena::new(32 << 20);
    // SAFETY: every call below passes this arena.
    let s2 = unsafe { Stage2::new(geom(granule, ipa_bits, pa_bits), &mut arena) }.unwrap();
    let tlb = ModelTlb::new(&arena, &s2);
    (arena, s2, tlb)
}

/// Leaves in `[ipa, ipa + size)`: (entry IPA, level, descriptor).
fn leaves(s2: &Stage2, arena: &Arena, ipa: u64, size: u64) -> Vec<(u64, u8, Descriptor)> {
    let mut out = Vec::new();
    let flow = s2
        .walk(arena, Ipa(ipa), size, |at, d, level| {
            if d.is_leaf(level) {
                out.push((at.0, level, d));
            }
            ControlFlow::<()>::Continue(())
        })
        .unwrap();
    assert_eq!(flow, ControlFlow::Continue(()));
    out
}

fn tr(s2: &Stage2, arena: &Arena, ipa: u64) -> Option<(u64, S2Attrs, u8)> {
    s2.translate(arena, Ipa(ipa)).map(|(pa, a, l)| (pa.0, a, l))
}

// ---- geometry ----

#[test]
fn geometry_4k_40_bits_starts_at_l1_with_two_tables() {
    let g = geom(Granule::Size4K, 40, 40);
    assert_eq!(g.start_level(), 1);
    assert_eq!(g.root_tables(), 2);
    assert_eq!(g.root_size(), 8192);
    assert_eq!(g.root_align(), 8192);
    assert_eq!((g.t0sz(), g.sl0(), g.tg(), g.ps()), (24, 1, 0, 0b010));
    // T0SZ 24 | SL0 1 | IRGN0 01 | ORGN0 01 | SH0 11 | TG0 00 | PS 010 | RES1 bit 31.
    assert_eq!(g.vtcr_el2(), 0x8002_3558);
    assert_eq!(g.ipa_size(), 1 << 40);
    assert_eq!(g.leaf_size(1), Some(GIB));
    assert_eq!(g.leaf_size(2), Some(2 * MIB));
    assert_eq!(g.leaf_size(3), Some(4 * KIB));
    assert_eq!(g.leaf_size(0), None);
}

#[test]
fn geometry_4k_large_ipas() {
    let g = geom(Granule::Size4K, 48, 48);
    assert_eq!(
        (g.start_level(), g.root_tables(), g.sl0(), g.t0sz()),
        (0, 1, 2, 16)
    );
    assert_eq!(g.ps(), 0b101);
    assert_eq!(g.vtcr_el2(), 16 | 2 << 6 | 0x3500 | 0b101 << 16 | 1 << 31);
    // 44 bits would need 32 concatenated L1 tables: start at L0 instead.
    let g = geom(Granule::Size4K, 44, 44);
    assert_eq!((g.start_level(), g.root_tables(), g.sl0()), (0, 1, 2));
    assert_eq!(g.ps(), 0b100);
    // 43 bits: 16 concatenated L1 tables, 64 KiB aligned.
    let g = geom(Granule::Size4K, 43, 44);
    assert_eq!((g.start_level(), g.root_tables(), g.sl0()), (1, 16, 1));
    assert_eq!((g.root_size(), g.root_align()), (64 << 10, 64 << 10));
    assert_eq!(g.vtcr_el2() & 0x3f, 21);
}

#[test]
fn geometry_4k_small_ipas_start_at_l2() {
    let g = geom(Granule::Size4K, 32, 32);
    assert_eq!(
        (g.start_level(), g.root_tables(), g.sl0(), g.ps()),
        (2, 4, 0, 0)
    );
    let g = geom(Granule::Size4K, 34, 36);
    assert_eq!((g.start_level(), g.root_tables(), g.ps()), (2, 16, 1));
    let g = geom(Granule::Size4K, 35, 36);
    assert_eq!((g.start_level(), g.root_tables()), (1, 1));
    let g = geom(Granule::Size4K, 25, 32);
    assert_eq!((g.start_level(), g.root_tables(), g.t0sz()), (2, 1, 39));
}

#[test]
fn geometry_16k() {
    let g = geom(Granule::Size16K, 40, 40);
    assert_eq!(
        (g.start_level(), g.root_tables(), g.sl0(), g.tg()),
        (2, 16, 1, 0b10)
    );
    assert_eq!(g.root_size(), 16 * 16 * 1024);
    assert_eq!((g.vtcr_el2() >> 14) & 3, 0b10);
    let g = geom(Granule::Size16K, 48, 48);
    assert_eq!((g.start_level(), g.root_tables(), g.sl0()), (1, 2, 2));
    let g = geom(Granule::Size16K, 41, 42);
    assert_eq!((g.start_level(), g.root_tables(), g.ps()), (1, 1, 0b011));
    let g = geom(Granule::Size16K, 29, 32);
    assert_eq!((g.start_level(), g.root_tables(), g.sl0()), (3, 16, 0));
    assert_eq!(g.leaf_size(2), None, "above the start level");
    assert_eq!(g.leaf_size(3), Some(16 * KIB));
    let g = geom(Granule::Size16K, 36, 36);
    assert_eq!((g.start_level(), g.root_tables()), (2, 1));
    assert_eq!(g.leaf_size(1), None);
    assert_eq!(g.leaf_size(2), Some(32 * MIB));
    assert_eq!(g.leaf_size(3), Some(16 * KIB));
}

#[test]
fn geometry_64k() {
    let g = geom(Granule::Size64K, 48, 48);
    assert_eq!(
        (g.start_level(), g.root_tables(), g.sl0(), g.tg()),
        (1, 1, 2, 0b01)
    );
    assert_eq!((g.vtcr_el2() >> 14) & 3, 0b01);
    let g = geom(Granule::Size64K, 42, 42);
    assert_eq!((g.start_level(), g.root_tables(), g.sl0()), (2, 1, 1));
    assert_eq!(g.leaf_size(2), Some(512 * MIB));
    let g = geom(Granule::Size64K, 46, 48);
    assert_eq!((g.start_level(), g.root_tables()), (2, 16));
    assert_eq!(g.root_size(), 1 << 20);
    let g = geom(Granule::Size64K, 32, 32);
    assert_eq!((g.start_level(), g.root_tables(), g.sl0()), (3, 8, 0));
    assert_eq!(g.leaf_size(3), Some(64 * KIB));
    assert_eq!(g.leaf_size(2), None);
}

#[test]
fn geometry_rejects_invalid_combinations() {
    use S2Error::*;
    for granule in [Granule::Size4K, Granule::Size16K, Granule::Size64K] {
        assert_eq!(S2Geometry::new(granule, 24, 32), Err(InvalidIpaBits));
        assert_eq!(S2Geometry::new(granule, 49, 48), Err(InvalidIpaBits));
        assert_eq!(S2Geometry::new(granule, 44, 40), Err(InvalidIpaBits));
        assert_eq!(S2Geometry::new(granule, 40, 39), Err(InvalidPaBits));
        assert_eq!(S2Geometry::new(granule, 40, 52), Err(InvalidPaBits));
        assert_eq!(S2Geometry::new(granule, 32, 0), Err(InvalidPaBits));
    }
}

// ---- attributes ----

#[test]
fn attrs_encode_the_descriptor_fields() {
    // MemAttr 0b1111 at 5:2, S2AP 11 at 7:6, SH 11 at 9:8, AF at 10, XN at 54.
    assert_eq!(
        S2Attrs::NORMAL_RW.bits(),
        0x3c | 0xc0 | 0x300 | 0x400 | 1 << 54
    );
    assert_eq!(S2Attrs::NORMAL_RWX.bits(), 0x3c | 0xc0 | 0x300 | 0x400);
    // MemAttr 0b0001, SH 00.
    assert_eq!(S2Attrs::DEVICE_RW.bits(), 0x04 | 0xc0 | 0x400 | 1 << 54);
    let a = S2Attrs::normal().with_access(true, false).with_sw(0b1010);
    assert_eq!(
        a.bits(),
        0x3c | 0x40 | 0x300 | 0x400 | 1 << 54 | 0b1010 << 55
    );
    assert!(a.readable() && !a.writable() && !a.executable());
    assert_eq!((a.mem_type(), a.sw()), (MemType::Normal, 0b1010));
    assert_eq!(a.with_sw(0xff).sw(), 0xf);
    assert_eq!(S2Attrs::DEVICE_RW.mem_type(), MemType::Device);
    assert!(S2Attrs::NORMAL_RWX.executable());
    assert_eq!(S2Attrs::NORMAL_RWX.with_exec(false), S2Attrs::NORMAL_RW);
}

// ---- map ----

#[test]
fn map_2m_aligned_writes_one_l2_block() {
    let (mut arena, mut s2, mut tlb) = setup(Granule::Size4K, 40, 40);
    let (ipa, pa) = (GIB + 2 * MIB, 0x8_0060_0000);
    s2.map(
        &mut arena,
        &mut tlb,
        Ipa(ipa),
        PhysAddr(pa),
        2 * MIB,
        S2Attrs::NORMAL_RW,
    )
    .unwrap();
    // Read the tables directly: root[1] → L2 table, L2[1] = the block.
    let view = view_of(&arena);
    let root = s2.root().0;
    let l1 = view.read(root + 8);
    assert_eq!(l1 & 3, 3, "L1 entry is a table");
    let l2 = l1 & OA_MASK;
    assert_eq!(view.read(l2 + 8), 0x0040_0008_0060_07fd);
    let others = (0..512)
        .filter(|&i| i != 1 && view.read(l2 + 8 * i) != 0)
        .count();
    assert_eq!(others, 0);
    assert_eq!(arena.live_count(), 2);
    let found = leaves(&s2, &arena, 0, 1 << 40);
    assert_eq!(found.len(), 1);
    assert_eq!((found[0].0, found[0].1), (ipa, 2));
    assert_eq!(
        tr(&s2, &arena, ipa + 0x1_2345),
        Some((pa + 0x12345, S2Attrs::NORMAL_RW, 2))
    );
    assert_eq!(tr(&s2, &arena, ipa + 2 * MIB), None);
    assert_eq!(tr(&s2, &arena, ipa - 1), None);
    // Mapping into empty entries needs no invalidation.
    assert!(tlb.invalidations().is_empty());
}

#[test]
fn map_1g_aligned_writes_an_l1_block() {
    let (mut arena, mut s2, mut tlb) = setup(Granule::Size4K, 40, 40);
    s2.map(
        &mut arena,
        &mut tlb,
        Ipa(3 * GIB),
        PhysAddr(GIB),
        GIB,
        S2Attrs::DEVICE_RW,
    )
    .unwrap();
    assert_eq!(arena.live_count(), 1, "no table below the root");
    let found = leaves(&s2, &arena, 0, 1 << 40);
    assert_eq!(found.len(), 1);
    assert_eq!((found[0].0, found[0].1), (3 * GIB, 1));
    assert_eq!(found[0].2.bits(), GIB | S2Attrs::DEVICE_RW.bits() | 1);
    assert_eq!(
        tr(&s2, &arena, 4 * GIB - 8),
        Some((2 * GIB - 8, S2Attrs::DEVICE_RW, 1))
    );
}

#[test]
fn map_unaligned_start_uses_pages_then_blocks_then_pages() {
    let (mut arena, mut s2, mut tlb) = setup(Granule::Size4K, 40, 40);
    let ipa = GIB + 2 * MIB - 8 * KIB;
    let size = 8 * KIB + 4 * MIB + 12 * KIB;
    let delta = 0x10_0000_0000;
    s2.map(
        &mut arena,
        &mut tlb,
        Ipa(ipa),
        PhysAddr(ipa + delta),
        size,
        S2Attrs::NORMAL_RWX,
    )
    .unwrap();
    let got: Vec<(u64, u8)> = leaves(&s2, &arena, 0, 1 << 40)
        .iter()
        .map(|&(at, level, d)| {
            assert_eq!(d.address().0, at + delta);
            (at, level)
        })
        .collect();
    let base = GIB;
    let expect = [
        (base + 2 * MIB - 8 * KIB, 3),
        (base + 2 * MIB - 4 * KIB, 3),
        (base + 2 * MIB, 2),
        (base + 4 * MIB, 2),
        (base + 6 * MIB, 3),
        (base + 6 * MIB + 4 * KIB, 3),
        (base + 6 * MIB + 8 * KIB, 3),
    ];
    assert_eq!(got, expect);
    // root + L2 + two L3 tables
    assert_eq!(arena.live_count(), 4);
}

#[test]
fn map_with_pa_misaligned_to_ipa_uses_pages() {
    let (mut arena, mut s2, mut tlb) = setup(Granule::Size4K, 40, 40);
    s2.map(
        &mut arena,
        &mut tlb,
        Ipa(GIB),
        PhysAddr(0x10_0000_1000),
        2 * MIB,
        S2Attrs::NORMAL_RW,
    )
    .unwrap();
    let found = leaves(&s2, &arena, 0, 1 << 40);
    assert_eq!(found.len(), 512);
    assert!(found.iter().all(|&(_, level, _)| level == 3));
    assert_eq!(
        tr(&s2, &arena, GIB + 2 * MIB - 1),
        Some((0x10_0020_0fff, S2Attrs::NORMAL_RW, 3))
    );
}

#[test]
fn map_16k_uses_32m_blocks() {
    let (mut arena, mut s2, mut tlb) = setup(Granule::Size16K, 40, 40);
    let size = 32 * MIB + 16 * KIB;
    s2.map(
        &mut arena,
        &mut tlb,
        Ipa(32 * MIB),
        PhysAddr(GIB),
        size,
        S2Attrs::NORMAL_RW,
    )
    .unwrap();
    let got: Vec<(u64, u8)> = leaves(&s2, &arena, 0, 1 << 40)
        .iter()
        .map(|&(at, l, _)| (at, l))
        .collect();
    assert_eq!(got, [(32 * MIB, 2), (64 * MIB, 3)]);
    assert_eq!(
        tr(&s2, &arena, 64 * MIB + 100),
        Some((GIB + 32 * MIB + 100, S2Attrs::NORMAL_RW, 3))
    );
    assert_eq!(tr(&s2, &arena, 64 * MIB + 16 * KIB), None);
    // Root is 16 concatenated L2 tables: the block sits in the root itself.
    assert_eq!(arena.live_count(), 2);
}

#[test]
fn map_64k_uses_512m_blocks() {
    for (ipa_bits, tables) in [(48, 3), (42, 2)] {
        let (mut arena, mut s2, mut tlb) = setup(Granule::Size64K, ipa_bits, ipa_bits);
        let size = 512 * MIB + 64 * KIB;
        s2.map(
            &mut arena,
            &mut tlb,
            Ipa(512 * MIB),
            PhysAddr(2 * GIB),
            size,
            S2Attrs::NORMAL_RW,
        )
        .unwrap();
        let got: Vec<(u64, u8)> = leaves(&s2, &arena, 0, 1 << ipa_bits)
            .iter()
            .map(|&(at, l, _)| (at, l))
            .collect();
        assert_eq!(got, [(512 * MIB, 2), (GIB, 3)]);
        assert_eq!(arena.live_count(), tables);
        assert_eq!(
            tr(&s2, &arena, GIB + 0xffff),
            Some((2 * GIB + 512 * MIB + 0xffff, S2Attrs::NORMAL_RW, 3))
        );
    }
}

// ---- split, break-before-make ----

#[test]
fn unmap_4k_from_1g_block_splits_with_break_before_make() {
    let (mut arena, mut s2, mut tlb) = setup(Granule::Size4K, 40, 40);
    let delta = 0x40_0000_0000 - GIB;
    s2.map(
        &mut arena,
        &mut tlb,
        Ipa(GIB),
        PhysAddr(GIB + delta),
        GIB,
        S2Attrs::NORMAL_RWX,
    )
    .unwrap();
    let hole = GIB + 0x0123_4000;
    // Warm the TLB model with the block.
    for ipa in [GIB, hole, hole - 4 * KIB, hole + 4 * KIB] {
        assert_eq!(tlb.lookup(ipa), Some((ipa + delta, S2Attrs::NORMAL_RWX)));
    }
    let block = chain(&view_of(&arena), &s2.geometry(), s2.root().0, hole);
    assert_eq!(block.len(), 1);
    assert_eq!(block[0].1, (GIB + delta) | S2Attrs::NORMAL_RWX.bits() | 1);
    tlb.take_events();
    tlb.watch = Some(hole);

    s2.unmap(&mut arena, &mut tlb, Ipa(hole), 4 * KIB).unwrap();

    let events = tlb.take_events();
    let inval: Vec<usize> = (0..events.len())
        .filter(|&i| matches!(events[i], Event::Invalidate { .. }))
        .collect();
    assert_eq!(inval.len(), 1, "{events:#?}");
    let i = inval[0];
    // The block descriptor was invalid (and synced) when the TLB was invalidated...
    assert_eq!(
        events[i],
        Event::Invalidate {
            ipa: GIB,
            size: GIB,
            last_level_only: true,
            watch: vec![(1, 0)],
        }
    );
    assert_eq!(
        events[i - 1],
        Event::Sync {
            watch: vec![(1, 0)]
        }
    );
    // ...and before that it was still the block: no window with a half-built table.
    assert!(
        events[..i - 1]
            .iter()
            .all(|e| matches!(e, Event::Sync { watch } if *watch == block))
    );
    // Afterwards: L1 → table, L2 → table, L3 hole invalid.
    let after = chain(&view_of(&arena), &s2.geometry(), s2.root().0, hole);
    assert_eq!(after.len(), 3);
    assert!(after[0].1 & 3 == 3 && after[1].1 & 3 == 3);
    assert_eq!(after[2], (3, 0));
    assert_eq!(events.last(), Some(&Event::Sync { watch: after }));
    assert_eq!(arena.live_count(), 3);

    // The hole is gone, everything else translates as before, hardware included.
    assert_eq!(tr(&s2, &arena, hole), None);
    assert_eq!(tr(&s2, &arena, hole + 4 * KIB - 1), None);
    assert_eq!(tlb.lookup(hole), None);
    let hole_2m = hole & !(2 * MIB - 1);
    for ipa in (GIB..2 * GIB).step_by(4 * KIB as usize) {
        if ipa == hole {
            continue;
        }
        let level = if ipa & !(2 * MIB - 1) == hole_2m {
            3
        } else {
            2
        };
        if level == 3 || ipa % (64 * KIB) == 0 {
            assert_eq!(
                tr(&s2, &arena, ipa + 5),
                Some((ipa + 5 + delta, S2Attrs::NORMAL_RWX, level))
            );
            assert_eq!(
                tlb.lookup(ipa + 5),
                Some((ipa + 5 + delta, S2Attrs::NORMAL_RWX))
            );
        }
    }
    let found = leaves(&s2, &arena, GIB, GIB);
    assert_eq!(found.len(), 511 + 511);
}

#[test]
fn map_over_block_with_other_attrs_splits_it() {
    let (mut arena, mut s2, mut tlb) = setup(Granule::Size4K, 40, 40);
    let (ipa, pa) = (GIB + 2 * MIB, 0x8_0000_0000);
    s2.map(
        &mut arena,
        &mut tlb,
        Ipa(ipa),
        PhysAddr(pa),
        2 * MIB,
        S2Attrs::NORMAL_RW,
    )
    .unwrap();
    let page = ipa + 5 * 4 * KIB;
    assert_eq!(
        tlb.lookup(page),
        Some((pa + 5 * 4 * KIB, S2Attrs::NORMAL_RW))
    );
    tlb.take_events();
    tlb.watch = Some(page);
    s2.map(
        &mut arena,
        &mut tlb,
        Ipa(page),
        PhysAddr(0x0900_0000),
        4 * KIB,
        S2Attrs::DEVICE_RW,
    )
    .unwrap();
    let inval = tlb.invalidations();
    assert_eq!(inval.len(), 1);
    let Event::Invalidate {
        ipa: at,
        size,
        last_level_only,
        watch,
    } = inval[0]
    else {
        unreachable!()
    };
    assert_eq!((*at, *size, *last_level_only), (ipa, 2 * MIB, true));
    assert_eq!(watch.len(), 2);
    assert_eq!(watch[1], (2, 0), "L2 block invalid at invalidation time");
    assert_eq!(
        tr(&s2, &arena, page),
        Some((0x0900_0000, S2Attrs::DEVICE_RW, 3))
    );
    assert_eq!(
        tlb.lookup(page + 4),
        Some((0x0900_0004, S2Attrs::DEVICE_RW))
    );
    for i in (0..512).filter(|&i| i != 5) {
        let at = ipa + i * 4 * KIB;
        assert_eq!(
            tr(&s2, &arena, at),
            Some((pa + i * 4 * KIB, S2Attrs::NORMAL_RW, 3))
        );
    }
}

#[test]
fn remapping_identically_changes_nothing() {
    let (mut arena, mut s2, mut tlb) = setup(Granule::Size4K, 40, 40);
    let (ipa, pa) = (GIB + 2 * MIB, 0x8_0000_0000);
    s2.map(
        &mut arena,
        &mut tlb,
        Ipa(ipa),
        PhysAddr(pa),
        2 * MIB,
        S2Attrs::NORMAL_RW,
    )
    .unwrap();
    let before = leaves(&s2, &arena, 0, 1 << 40);
    let live = arena.live_count();
    tlb.take_events();
    s2.map(
        &mut arena,
        &mut tlb,
        Ipa(ipa),
        PhysAddr(pa),
        2 * MIB,
        S2Attrs::NORMAL_RW,
    )
    .unwrap();
    // A page inside the block, mapped the way the block already maps it: no split.
    s2.map(
        &mut arena,
        &mut tlb,
        Ipa(ipa + 8 * KIB),
        PhysAddr(pa + 8 * KIB),
        4 * KIB,
        S2Attrs::NORMAL_RW,
    )
    .unwrap();
    assert!(tlb.invalidations().is_empty());
    assert_eq!(arena.live_count(), live);
    assert_eq!(leaves(&s2, &arena, 0, 1 << 40), before);
}

#[test]
fn permission_and_software_bit_changes_skip_the_break() {
    let (mut arena, mut s2, mut tlb) = setup(Granule::Size4K, 40, 40);
    let (ipa, pa) = (GIB + 0x5000, 0x8_0000_5000);
    s2.map(
        &mut arena,
        &mut tlb,
        Ipa(ipa),
        PhysAddr(pa),
        4 * KIB,
        S2Attrs::NORMAL_RW,
    )
    .unwrap();
    assert!(tlb.lookup(ipa).is_some());
    tlb.watch = Some(ipa);
    tlb.take_events();

    // Write access removed: no invalid window, but invalidated afterwards.
    let ro = S2Attrs::NORMAL_RW.with_access(true, false);
    s2.map(&mut arena, &mut tlb, Ipa(ipa), PhysAddr(pa), 4 * KIB, ro)
        .unwrap();
    let events = tlb.take_events();
    assert!(events.iter().all(|e| match e {
        Event::Sync { watch } | Event::Invalidate { watch, .. } => watch[2].1 & 1 == 1,
        Event::InvalidateAll => false,
    }));
    let new_desc = pa | ro.bits() | 3;
    assert!(events.contains(&Event::Invalidate {
        ipa,
        size: 4 * KIB,
        last_level_only: true,
        watch: chain(&view_of(&arena), &s2.geometry(), s2.root().0, ipa),
    }));
    assert_eq!(
        chain(&view_of(&arena), &s2.geometry(), s2.root().0, ipa)[2].1,
        new_desc
    );
    assert_eq!(tlb.lookup(ipa), Some((pa, ro)));

    // Only software bits: nothing to invalidate.
    let owned = ro.with_sw(3);
    s2.map(&mut arena, &mut tlb, Ipa(ipa), PhysAddr(pa), 4 * KIB, owned)
        .unwrap();
    assert!(tlb.invalidations().is_empty());
    assert_eq!(tr(&s2, &arena, ipa), Some((pa, owned, 3)));

    // Output address changes: break-before-make.
    tlb.take_events();
    s2.map(
        &mut arena,
        &mut tlb,
        Ipa(ipa),
        PhysAddr(pa + GIB),
        4 * KIB,
        owned,
    )
    .unwrap();
    let inval = tlb.invalidations();
    assert_eq!(inval.len(), 1);
    assert!(matches!(inval[0], Event::Invalidate { watch, .. } if watch[2] == (3, 0)));
    assert_eq!(tlb.lookup(ipa), Some((pa + GIB, owned)));
}

#[test]
fn mapping_a_block_over_a_table_frees_the_table() {
    let (mut arena, mut s2, mut tlb) = setup(Granule::Size4K, 40, 40);
    let ipa = GIB + 2 * MIB;
    s2.map(
        &mut arena,
        &mut tlb,
        Ipa(ipa),
        PhysAddr(0x8_0000_0000),
        8 * KIB,
        S2Attrs::NORMAL_RW,
    )
    .unwrap();
    assert_eq!(arena.live_count(), 3);
    // Puts the L3 table in the model's walk cache.
    assert!(tlb.lookup(ipa).is_some());
    tlb.take_events();
    s2.map(
        &mut arena,
        &mut tlb,
        Ipa(ipa),
        PhysAddr(0x9_0000_0000),
        2 * MIB,
        S2Attrs::NORMAL_RW,
    )
    .unwrap();
    let inval = tlb.invalidations();
    assert_eq!(inval.len(), 1);
    assert!(matches!(
        inval[0],
        Event::Invalidate { ipa: at, size, last_level_only: false, .. } if *at == ipa && *size == 2 * MIB
    ));
    assert_eq!(arena.live_count(), 2);
    // The walk cache entry for the freed table is gone (the model asserts otherwise).
    assert_eq!(
        tlb.lookup(ipa + 4 * KIB),
        Some((0x9_0000_1000, S2Attrs::NORMAL_RW))
    );
    assert_eq!(leaves(&s2, &arena, 0, 1 << 40).len(), 1);
}

// ---- unmap, freeing ----

#[test]
fn unmap_frees_empty_tables_and_destroy_frees_everything() {
    let (mut arena, mut s2, mut tlb) = setup(Granule::Size4K, 40, 40);
    assert_eq!(arena.live_count(), 1);
    let pieces = [
        (0x1000, 4 * KIB),
        (GIB + 0x20_3000, 12 * KIB),
        (2 * GIB + 6 * MIB, 2 * MIB),
        (5 * GIB - 4 * KIB, 8 * KIB),
        (7 * GIB, GIB),
    ];
    for &(ipa, size) in &pieces {
        s2.map(
            &mut arena,
            &mut tlb,
            Ipa(ipa),
            PhysAddr(ipa + 0x10_0000_0000),
            size,
            S2Attrs::NORMAL_RW,
        )
        .unwrap();
        assert!(tlb.lookup(ipa).is_some());
    }
    assert!(arena.live_count() > 1);
    tlb.take_events();
    for &(ipa, size) in &pieces {
        s2.unmap(&mut arena, &mut tlb, Ipa(ipa), size).unwrap();
        assert_eq!(tlb.lookup(ipa), None);
        assert_eq!(
            tree_stats(&view_of(&arena), &s2.geometry(), s2.root().0).1,
            0
        );
    }
    assert_eq!(arena.live_count(), 1, "only the root is left");
    assert!(leaves(&s2, &arena, 0, 1 << 40).is_empty());
    // Tables were unlinked with walk-cache invalidation.
    assert!(tlb.invalidations().iter().any(|e| matches!(
        e,
        Event::Invalidate {
            last_level_only: false,
            ..
        }
    )));

    // Unmapping nothing is fine.
    s2.unmap(&mut arena, &mut tlb, Ipa(0), 1 << 40).unwrap();
    assert_eq!(arena.live_count(), 1);

    for &(ipa, size) in &pieces {
        s2.map(
            &mut arena,
            &mut tlb,
            Ipa(ipa),
            PhysAddr(ipa),
            size,
            S2Attrs::DEVICE_RW,
        )
        .unwrap();
    }
    s2.destroy(&mut arena);
    assert_eq!(arena.live_count(), 0);
}

#[test]
fn boot_map_then_carve_out() {
    // RAM as Normal, the rest as Device, over the whole IPA space; then Warden's
    // carve-out comes out of the middle of a 1 GiB block.
    let (mut arena, mut s2, mut tlb) = setup(Granule::Size4K, 40, 40);
    let (ram, ram_size) = (GIB, 4 * GIB);
    s2.map(
        &mut arena,
        &mut NoTlb,
        Ipa(0),
        PhysAddr(0),
        ram,
        S2Attrs::DEVICE_RW,
    )
    .unwrap();
    s2.map(
        &mut arena,
        &mut NoTlb,
        Ipa(ram),
        PhysAddr(ram),
        ram_size,
        S2Attrs::NORMAL_RWX,
    )
    .unwrap();
    let rest = (1 << 40) - ram - ram_size;
    s2.map(
        &mut arena,
        &mut NoTlb,
        Ipa(ram + ram_size),
        PhysAddr(ram + ram_size),
        rest,
        S2Attrs::DEVICE_RW,
    )
    .unwrap();
    assert_eq!(arena.live_count(), 1, "only 1 GiB blocks");
    let (carve, carve_size) = (2 * GIB + 0x0345_0000, 0x0123_0000);
    for ipa in [carve, carve + carve_size - 1, carve - 1, carve + carve_size] {
        assert!(tlb.lookup(ipa).is_some());
    }
    s2.unmap(&mut arena, &mut tlb, Ipa(carve), carve_size)
        .unwrap();
    for ipa in [carve, carve + 0x1000, carve + carve_size - 1] {
        assert_eq!(tr(&s2, &arena, ipa), None);
        assert_eq!(tlb.lookup(ipa), None);
    }
    for ipa in [
        carve - 1,
        carve + carve_size,
        2 * GIB,
        3 * GIB - 1,
        ram,
        0x0900_0000,
    ] {
        let attrs = if ipa < ram {
            S2Attrs::DEVICE_RW
        } else {
            S2Attrs::NORMAL_RWX
        };
        assert_eq!(
            tr(&s2, &arena, ipa).map(|(pa, a, _)| (pa, a)),
            Some((ipa, attrs))
        );
        assert_eq!(tlb.lookup(ipa), Some((ipa, attrs)));
    }
    assert_eq!(tr(&s2, &arena, carve - 1).unwrap().2, 3);
    assert_eq!(tr(&s2, &arena, 2 * GIB).unwrap().2, 2);
    assert_eq!(tr(&s2, &arena, 3 * GIB).unwrap().2, 1);
}

// ---- out of memory ----

#[test]
fn out_of_memory_while_creating_tables_leaves_consistent_tables() {
    let (mut arena, mut s2, mut tlb) = setup(Granule::Size4K, 40, 40);
    // Two pages across a 2 MiB boundary need an L2 table and two L3 tables.
    let ipa = GIB + 2 * MIB - 4 * KIB;
    let pa = 0x8_0000_0000;
    let map = |s2: &mut Stage2, arena: &mut Arena, tlb: &mut ModelTlb| {
        s2.map(
            arena,
            tlb,
            Ipa(ipa),
            PhysAddr(pa),
            8 * KIB,
            S2Attrs::NORMAL_RW,
        )
    };

    arena.budget = Some(1);
    assert_eq!(
        map(&mut s2, &mut arena, &mut tlb),
        Err(S2Error::OutOfMemory { done: 0 })
    );
    assert_eq!(arena.live_count(), 1, "the unused L2 table was freed");
    assert_eq!(tr(&s2, &arena, ipa), None);

    arena.budget = Some(2);
    assert_eq!(
        map(&mut s2, &mut arena, &mut tlb),
        Err(S2Error::OutOfMemory { done: 4 * KIB })
    );
    assert_eq!(tr(&s2, &arena, ipa), Some((pa, S2Attrs::NORMAL_RW, 3)));
    assert_eq!(tr(&s2, &arena, ipa + 4 * KIB), None);
    assert_eq!(
        tree_stats(&view_of(&arena), &s2.geometry(), s2.root().0),
        (3, 0)
    );
    assert_eq!(arena.live_count(), 3);

    arena.budget = None;
    map(&mut s2, &mut arena, &mut tlb).unwrap();
    assert_eq!(
        tr(&s2, &arena, ipa + 4 * KIB),
        Some((pa + 4 * KIB, S2Attrs::NORMAL_RW, 3))
    );
    assert_eq!(arena.live_count(), 4);
}

#[test]
fn out_of_memory_while_splitting_keeps_the_block() {
    let (mut arena, mut s2, mut tlb) = setup(Granule::Size4K, 40, 40);
    s2.map(
        &mut arena,
        &mut tlb,
        Ipa(GIB),
        PhysAddr(GIB),
        GIB,
        S2Attrs::NORMAL_RW,
    )
    .unwrap();
    let hole = GIB + 0x40_0000;
    assert!(tlb.lookup(hole).is_some());
    tlb.take_events();

    // The L2 table can be allocated, the L3 one cannot: nothing changes.
    arena.budget = Some(1);
    assert_eq!(
        s2.unmap(&mut arena, &mut tlb, Ipa(hole), 4 * KIB),
        Err(S2Error::OutOfMemory { done: 0 })
    );
    assert_eq!(arena.live_count(), 1);
    assert!(tlb.invalidations().is_empty());
    assert_eq!(tr(&s2, &arena, hole), Some((hole, S2Attrs::NORMAL_RW, 1)));

    // Unmapping a 2 MiB block and then a page: the first part is done.
    arena.budget = Some(1);
    assert_eq!(
        s2.unmap(&mut arena, &mut tlb, Ipa(hole), 2 * MIB + 4 * KIB),
        Err(S2Error::OutOfMemory { done: 2 * MIB })
    );
    assert_eq!(tr(&s2, &arena, hole), None);
    assert_eq!(tlb.lookup(hole), None);
    assert_eq!(
        tr(&s2, &arena, hole + 2 * MIB),
        Some((hole + 2 * MIB, S2Attrs::NORMAL_RW, 2))
    );
    assert_eq!(
        tr(&s2, &arena, hole - 1),
        Some((hole - 1, S2Attrs::NORMAL_RW, 2))
    );
    assert_eq!(
        tree_stats(&view_of(&arena), &s2.geometry(), s2.root().0),
        (2, 0)
    );

    // Root allocation failure.
    let mut empty = Arena::new(1 << 20);
    empty.budget = Some(0);
    // SAFETY: the arena is not used again.
    let r: Result<Stage2, _> = unsafe { Stage2::new(geom(Granule::Size4K, 40, 40), &mut empty) };
    assert_eq!(r.unwrap_err(), S2Error::OutOfMemory { done: 0 });
}

// ---- bad input ----

#[test]
fn bad_input_is_rejected_without_changes() {
    use S2Error::*;
    let (mut arena, mut s2, mut tlb) = setup(Granule::Size4K, 40, 40);
    let a = S2Attrs::NORMAL_RW;
    let mut map = |ipa: u64, pa: u64, size: u64| {
        s2.map(&mut arena, &mut tlb, Ipa(ipa), PhysAddr(pa), size, a)
    };
    assert_eq!(map(0x800, 0, 4 * KIB), Err(Misaligned));
    assert_eq!(map(0, 0x800, 4 * KIB), Err(Misaligned));
    assert_eq!(map(0, 0, 4 * KIB + 1), Err(Misaligned));
    assert_eq!(map((1 << 40) - 4 * KIB, 0, 8 * KIB), Err(OutOfRange));
    assert_eq!(map(1 << 40, 0, 4 * KIB), Err(OutOfRange));
    assert_eq!(map(!0xfff, 0, 4 * KIB), Err(OutOfRange));
    assert_eq!(map(0, (1 << 40) - 4 * KIB, 8 * KIB), Err(OutOfRange));
    assert_eq!(map(0, !0xfff, 8 * KIB), Err(OutOfRange));
    assert_eq!(map(0, 0, 0), Ok(()));
    assert_eq!(
        s2.unmap(&mut arena, &mut tlb, Ipa(0x10), 4 * KIB),
        Err(Misaligned)
    );
    assert_eq!(s2.unmap(&mut arena, &mut tlb, Ipa(0), 12), Err(Misaligned));
    assert_eq!(
        s2.unmap(&mut arena, &mut tlb, Ipa(1 << 40), 4 * KIB),
        Err(OutOfRange)
    );
    assert_eq!(
        s2.unmap(&mut arena, &mut tlb, Ipa(4 * KIB), !0xfff),
        Err(OutOfRange)
    );
    let walk = s2.walk(&arena, Ipa(1 << 39), 1 << 40, |_, _, _| {
        ControlFlow::<()>::Continue(())
    });
    assert_eq!(walk, Err(OutOfRange));
    assert_eq!(tr(&s2, &arena, 1 << 40), None);
    assert_eq!(tr(&s2, &arena, u64::MAX), None);
    assert_eq!(arena.live_count(), 1);
    assert!(leaves(&s2, &arena, 0, 1 << 40).is_empty());
    assert!(tlb.invalidations().is_empty());
}

// ---- walker ----

#[test]
fn walk_visits_in_order_and_can_stop() {
    let (mut arena, mut s2, mut tlb) = setup(Granule::Size4K, 40, 40);
    let ipa = GIB + 2 * MIB - 8 * KIB;
    s2.map(
        &mut arena,
        &mut tlb,
        Ipa(ipa),
        PhysAddr(ipa),
        8 * KIB + 2 * MIB,
        S2Attrs::NORMAL_RW,
    )
    .unwrap();
    let mut seen = Vec::new();
    let flow = s2
        .walk(&arena, Ipa(ipa + 4 * KIB), 2 * MIB, |at, d, level| {
            seen.push((at.0, level, d.is_table(level), d.is_valid()));
            ControlFlow::<()>::Continue(())
        })
        .unwrap();
    assert_eq!(flow, ControlFlow::Continue(()));
    assert_eq!(
        seen,
        [
            (GIB, 1, true, true),
            (GIB, 2, true, true),
            (ipa + 4 * KIB, 3, false, true),
            (GIB + 2 * MIB, 2, false, true),
        ]
    );
    // Unmapped entries are visited too; Break stops the walk.
    let mut count = 0;
    let flow = s2
        .walk(&arena, Ipa(0), 1 << 40, |at, d, level| {
            count += 1;
            if d.is_leaf(level) {
                ControlFlow::Break(at.0)
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
    assert_eq!(flow, ControlFlow::Break(ipa));
    // root[0] invalid, root[1] table, L2[0] table, L3 entries up to the first leaf
    assert_eq!(count, 3 + 510 + 1);
}

// ---- property test against a reference model ----

const ATTRS: [S2Attrs; 4] = [
    S2Attrs::NORMAL_RWX,
    S2Attrs::NORMAL_RW,
    S2Attrs::DEVICE_RW,
    S2Attrs::normal().with_access(true, false).with_sw(5),
];
/// First IPA of the window the property tests work in.
const WINDOW_BASE: u64 = GIB;
const PA_BASE: u64 = 0x40_0000_0000;

#[derive(Clone, Debug)]
enum Op {
    Map {
        start: u64,
        pages: u64,
        pa_off: u64,
        attrs: usize,
        budget: Option<usize>,
    },
    Unmap {
        start: u64,
        pages: u64,
        budget: Option<usize>,
    },
}

/// Ops on a window of `window_pages` pages; `block_pages` = pages per L2 block.
fn ops(window_pages: u64, block_pages: u64) -> impl Strategy<Value = Vec<Op>> {
    let blocks = window_pages / block_pages;
    let start = prop_oneof![
        0..window_pages,
        (0..blocks).prop_map(move |b| b * block_pages),
        (0..blocks).prop_map(move |b| (b * block_pages).saturating_sub(1)),
    ];
    let pages = prop_oneof![
        1..=4u64,
        (1..=2u64).prop_map(move |n| n * block_pages),
        (1..=2u64).prop_map(move |n| n * block_pages + 1),
        1..=window_pages,
    ];
    let pa_off = prop_oneof![
        (0..4u64).prop_map(move |n| n * block_pages),
        0..4 * block_pages,
    ];
    let budget = prop_oneof![4 => Just(None), 1 => (0..4usize).prop_map(Some)];
    let op = prop_oneof![
        3 => (start.clone(), pages.clone(), pa_off, 0..ATTRS.len(), budget.clone())
            .prop_map(|(start, pages, pa_off, attrs, budget)| Op::Map { start, pages, pa_off, attrs, budget }),
        2 => (start, pages, budget).prop_map(|(start, pages, budget)| Op::Unmap { start, pages, budget }),
    ];
    prop::collection::vec(op, 1..14)
}

/// Every page of the window, through the tables and through the TLB model, agrees
/// with the reference; no empty or leaked table.
fn check(
    s2: &Stage2,
    arena: &Arena,
    tlb: &mut ModelTlb,
    reference: &BTreeMap<u64, (u64, S2Attrs)>,
    page: u64,
    window: u64,
) {
    for p in 0..window / page {
        let ipa = WINDOW_BASE + p * page;
        let expect = reference.get(&ipa).map(|&(pa, a)| (pa + 8, a));
        let got = s2
            .translate(arena, Ipa(ipa + 8))
            .map(|(pa, a, _)| (pa.0, a));
        assert_eq!(got, expect, "translate({:#x})", ipa + 8);
        assert_eq!(tlb.lookup(ipa + 8), expect, "TLB model at {:#x}", ipa + 8);
    }
    let (tables, empty) = tree_stats(&view_of(arena), &s2.geometry(), s2.root().0);
    assert_eq!(empty, 0, "empty table left behind");
    assert_eq!(tables, arena.live_count(), "leaked table");
}

fn run_ops(granule: Granule, ipa_bits: u32, window: u64, ops: &[Op]) {
    let (mut arena, mut s2, mut tlb) = setup(granule, ipa_bits, ipa_bits);
    let page = granule.size();
    let window_pages = window / page;
    let mut reference = BTreeMap::new();
    for op in ops {
        let (start, pages, budget) = match *op {
            Op::Map {
                start,
                pages,
                budget,
                ..
            }
            | Op::Unmap {
                start,
                pages,
                budget,
            } => (start, pages.min(window_pages - start), budget),
        };
        let ipa = WINDOW_BASE + start * page;
        let size = pages * page;
        arena.budget = budget;
        let result = match *op {
            Op::Map { pa_off, attrs, .. } => {
                let pa = PA_BASE + (start + pa_off) * page;
                s2.map(
                    &mut arena,
                    &mut tlb,
                    Ipa(ipa),
                    PhysAddr(pa),
                    size,
                    ATTRS[attrs],
                )
            }
            Op::Unmap { .. } => s2.unmap(&mut arena, &mut tlb, Ipa(ipa), size),
        };
        arena.budget = None;
        let done = match result {
            Ok(()) => size,
            Err(S2Error::OutOfMemory { done }) => {
                assert!(budget.is_some() && done < size && done % page == 0);
                done
            }
            Err(e) => panic!("{op:?}: {e:?}"),
        };
        for p in 0..done / page {
            let at = ipa + p * page;
            match *op {
                Op::Map { pa_off, attrs, .. } => {
                    let pa = PA_BASE + (start + pa_off + p) * page;
                    reference.insert(at, (pa, ATTRS[attrs]));
                }
                Op::Unmap { .. } => {
                    reference.remove(&at);
                }
            }
        }
        check(&s2, &arena, &mut tlb, &reference, page, window);
    }
    s2.unmap(&mut arena, &mut tlb, Ipa(WINDOW_BASE), window)
        .unwrap();
    reference.clear();
    check(&s2, &arena, &mut tlb, &reference, page, window);
    assert_eq!(arena.live_count(), 1);
    s2.destroy(&mut arena);
    assert_eq!(arena.live_count(), 0);
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// Windows: 16 MiB (4096 pages, 2 MiB blocks), 128 MiB (8192 pages, 32 MiB blocks),
// 1 GiB (16384 pages, 512 MiB blocks). Case counts keep each under a few seconds.
proptest! {
    #![proptest_config(config(32))]
    #[test]
    fn prop_4k_matches_reference(ops in ops(16 * MIB / (4 * KIB), 512)) {
        run_ops(Granule::Size4K, 40, 16 * MIB, &ops);
    }
}

proptest! {
    #![proptest_config(config(16))]
    #[test]
    fn prop_16k_matches_reference(ops in ops(128 * MIB / (16 * KIB), 2048)) {
        run_ops(Granule::Size16K, 42, 128 * MIB, &ops);
    }
}

proptest! {
    #![proptest_config(config(12))]
    #[test]
    fn prop_64k_matches_reference(ops in ops(GIB / (64 * KIB), 8192)) {
        run_ops(Granule::Size64K, 48, GIB, &ops);
    }
}

// ---- the tables' counts of valid entries against a full recount ----

/// Checks every table descriptor reachable from the root: the count of valid entries it
/// carries (bits 58:52 low, 8:2 high, decoded here independently) equals a recount of
/// its table. Returns the number of tables checked.
fn check_counts(view: &View, g: &S2Geometry, root: u64) -> usize {
    fn visit(view: &View, g: &S2Geometry, table: u64, level: u8, checked: &mut usize) {
        for i in 0..g.entries(level) as u64 {
            let d = view.read(table + 8 * i);
            if level < 3 && d & 3 == 3 {
                let child = d & OA_MASK;
                let valid = (0..g.entries(level + 1) as u64)
                    .filter(|&j| view.read(child + 8 * j) & 1 != 0)
                    .count() as u64;
                let kept = ((d >> 52) & 0x7f) | (((d >> 2) & 0x7f) << 7);
                assert_eq!(
                    d & (0xf << 48 | 0x1f << 59 | 0b111 << 9),
                    0,
                    "count in a RES0 or HAFT bit"
                );
                assert_eq!(
                    kept,
                    valid,
                    "count of table {child:#x} (level {})",
                    level + 1
                );
                *checked += 1;
                visit(view, g, child, level + 1, checked);
            }
        }
    }
    let mut checked = 0;
    visit(view, g, root, g.start_level(), &mut checked);
    checked
}

#[test]
fn table_counts_follow_maps_splits_and_unmaps() {
    let (mut arena, mut s2, mut tlb) = setup(Granule::Size4K, 40, 40);
    let view = view_of(&arena);
    let root = s2.root().0;
    let g = s2.geometry();
    let a = S2Attrs::NORMAL_RW;
    // 3 pages in one L3 table: L1 -> L2 (1 entry) -> L3 (3 entries).
    s2.map(
        &mut arena,
        &mut tlb,
        Ipa(GIB),
        PhysAddr(GIB),
        3 * 4 * KIB,
        a,
    )
    .unwrap();
    assert_eq!(check_counts(&view, &g, root), 2);
    let l2 = chain(&view, &g, root, GIB);
    assert_eq!(l2[0].1 & 0x7f << 2, 0, "count 1 has no high bits");
    assert_eq!((l2[0].1 >> 52) & 0x7f, 1);
    assert_eq!((l2[1].1 >> 52) & 0x7f, 3);
    // A 1 GiB block split by a page unmap: 511 pages and 511 blocks.
    s2.map(
        &mut arena,
        &mut tlb,
        Ipa(2 * GIB),
        PhysAddr(2 * GIB),
        GIB,
        a,
    )
    .unwrap();
    s2.unmap(&mut arena, &mut tlb, Ipa(2 * GIB + 4 * KIB), 4 * KIB)
        .unwrap();
    assert_eq!(check_counts(&view, &g, root), 4);
    let c = chain(&view, &g, root, 2 * GIB);
    assert_eq!(((c[0].1 >> 52) & 0x7f) | (((c[0].1 >> 2) & 0x7f) << 7), 512);
    assert_eq!(((c[1].1 >> 52) & 0x7f) | (((c[1].1 >> 2) & 0x7f) << 7), 511);
    // What users see of a table descriptor carries no count.
    let mut tables = Vec::new();
    let flow = s2
        .walk(&arena, Ipa(2 * GIB), 4 * KIB, |_, d, level| {
            if d.is_table(level) {
                tables.push(d.bits());
            }
            ControlFlow::<()>::Continue(())
        })
        .unwrap();
    assert_eq!(flow, ControlFlow::Continue(()));
    assert_eq!(tables.len(), 2);
    assert!(tables.iter().all(|d| d & TABLE_COUNT_MASK == 0));
    // Unmapping the pages one by one frees the L3 and L2 tables at the last one.
    for p in 0..3 {
        assert_eq!(arena.live_count(), 5);
        s2.unmap(&mut arena, &mut tlb, Ipa(GIB + p * 4 * KIB), 4 * KIB)
            .unwrap();
    }
    assert_eq!(arena.live_count(), 3);
    assert_eq!(check_counts(&view, &g, root), 2);
}

/// One random operation for the count property: map or unmap, through an eager gather
/// or a clipped one that keeps emptied tables, with an optional allocation budget; a map
/// may be add-only ([`Stage2::map_new`], eager).
#[derive(Clone, Debug)]
struct CountOp {
    op: Op,
    keep_empty: bool,
    add_only: bool,
}

fn count_ops(window_pages: u64, block_pages: u64) -> impl Strategy<Value = Vec<CountOp>> {
    (
        ops(window_pages, block_pages),
        prop::collection::vec((any::<bool>(), any::<bool>()), 14),
    )
        .prop_map(|(ops, flags)| {
            ops.into_iter()
                .zip(flags)
                .map(|(op, (keep_empty, add_only))| CountOp {
                    op,
                    keep_empty,
                    add_only,
                })
                .collect()
        })
}

fn run_count_ops(granule: Granule, ipa_bits: u32, window: u64, ops: &[CountOp]) {
    let (mut arena, mut s2, _) = setup(granule, ipa_bits, ipa_bits);
    let view = view_of(&arena);
    let page = granule.size();
    let window_pages = window / page;
    for CountOp {
        op,
        keep_empty,
        add_only,
    } in ops
    {
        let (start, pages, budget) = match *op {
            Op::Map {
                start,
                pages,
                budget,
                ..
            }
            | Op::Unmap {
                start,
                pages,
                budget,
            } => (start, pages.min(window_pages - start), budget),
        };
        let ipa = WINDOW_BASE + start * page;
        let size = pages * page;
        let mut g = if *keep_empty {
            Gather::clipped(NoTlb, ipa, ipa + size, crate::inval::Limits::NONE)
                .keep_empty_tables(true)
        } else {
            Gather::eager(NoTlb)
        };
        arena.budget = budget;
        let result = match *op {
            Op::Map { pa_off, attrs, .. } if *add_only => {
                let pa = PA_BASE + (start + pa_off) * page;
                match s2.map_new(
                    &mut arena,
                    &mut NoTlb,
                    Ipa(ipa),
                    PhysAddr(pa),
                    size,
                    ATTRS[attrs],
                ) {
                    Ok(()) | Err(MapNewError::Conflict { .. }) => Ok(()),
                    Err(MapNewError::Table(e)) => Err(e),
                }
            }
            Op::Map { pa_off, attrs, .. } => {
                let pa = PA_BASE + (start + pa_off) * page;
                s2.map_gathered(
                    &mut arena,
                    &mut g,
                    Ipa(ipa),
                    PhysAddr(pa),
                    size,
                    ATTRS[attrs],
                )
            }
            Op::Unmap { .. } => s2.unmap_gathered(&mut arena, &mut g, Ipa(ipa), size),
        };
        arena.budget = None;
        match result {
            Ok(()) => {}
            Err(S2Error::OutOfMemory { done }) => assert!(budget.is_some() && done < size),
            Err(e) => panic!("{op:?}: {e:?}"),
        }
        assert!(g.complete());
        g.free_tables(&mut arena);
        check_counts(&view, &s2.geometry(), s2.root().0);
    }
    s2.unmap(&mut arena, &mut NoTlb, Ipa(WINDOW_BASE), window)
        .unwrap();
    assert_eq!(check_counts(&view, &s2.geometry(), s2.root().0), 0);
    assert_eq!(arena.live_count(), 1);
    s2.destroy(&mut arena);
}

proptest! {
    #![proptest_config(config(32))]
    #[test]
    fn prop_4k_counts_match_a_recount(ops in count_ops(16 * MIB / (4 * KIB), 512)) {
        run_count_ops(Granule::Size4K, 40, 16 * MIB, &ops);
    }
}

proptest! {
    #![proptest_config(config(8))]
    #[test]
    fn prop_16k_counts_match_a_recount(ops in count_ops(128 * MIB / (16 * KIB), 2048)) {
        run_count_ops(Granule::Size16K, 42, 128 * MIB, &ops);
    }
}

proptest! {
    #![proptest_config(config(8))]
    #[test]
    fn prop_64k_counts_match_a_recount(ops in count_ops(GIB / (64 * KIB), 8192)) {
        run_count_ops(Granule::Size64K, 48, GIB, &ops);
    }
}
