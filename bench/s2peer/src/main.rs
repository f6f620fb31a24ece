//! `s2peer SIDE WORKLOAD`: one stage-2 page-table workload on one side, for
//! `cargo xtask bench` section 1, run under callgrind.
//!
//! SIDE is `warden` (`hyp::s2mmu::Stage2`, 4 KiB granule, 39-bit IPA, root at level 1)
//! or `peer` (aarch64-paging 0.12, `Stage2` regime, root level 1: the same 512 GiB span).
//! The workload itself runs inside [`bench_region`], the only function callgrind counts
//! (`--collect-atstart=no --toggle-collect=*bench_region*`); setup and the equal-work
//! check after it are not counted. Before the unmap phase (outside the region) the program
//! translates sample addresses and prints them as `check IPA -> PA` (or `-> none`) lines,
//! which xtask compares between the sides; after the unmap phase it checks that the
//! samples are gone. It also prints `tables mapped BYTES` (translation-table bytes
//! allocated, root included, after the maps) and `tables unmapped BYTES` (after the
//! unmaps). Exit status 0 only if every check passed.

use std::alloc::Layout;
use std::hint::black_box;
use std::process::ExitCode;
use std::ptr::NonNull;

use aarch64_paging::Mapping;
use aarch64_paging::descriptor::{PhysicalAddress, Stage2Attributes};
use aarch64_paging::paging::{
    Constraints, MemoryRegion, PageTable, Stage2 as PeerRegime, Translation,
};
use hyp::addr::{Ipa, PhysAddr};
use hyp::s2mmu::{Granule, NoTlb, S2Attrs, S2Geometry, Stage2, TableMemory};

const K4: u64 = 4 << 10;
const M2: u64 = 2 << 20;
const G1: u64 = 1 << 30;
/// Where the page workloads start (IPA), clear of IPA 0.
const BASE: u64 = G1;

/// One workload: a list of map calls then a list of unmap calls, `(ipa, pa, size)`.
struct Work {
    /// Map calls, in order.
    maps: Vec<(u64, u64, u64)>,
    /// Unmap calls, in order (`pa` unused).
    unmaps: Vec<(u64, u64, u64)>,
    /// Whether each map is immediately followed by its unmap (the 1 GiB loop) instead
    /// of all maps first.
    paired: bool,
}

/// The workloads `cargo xtask bench` runs, by name.
fn work(name: &str) -> Option<Work> {
    let singles = |n: u64, size: u64, pa_off: u64| {
        let maps: Vec<_> = (0..n)
            .map(|i| (BASE + i * size, BASE + i * size + pa_off, size))
            .collect();
        let unmaps = maps.clone();
        (maps, unmaps)
    };
    let (maps, unmaps, paired) = match name {
        // 16,384 single 4 KiB maps, then 16,384 single unmaps (64 MiB).
        "4k" => {
            let (m, u) = singles(16_384, K4, 0);
            (m, u, false)
        }
        // 64 x (map one 1 GiB block, unmap it), each at its own GiB.
        "1g" => {
            let (m, u) = singles(64, G1, 0);
            (m, u, true)
        }
        // 512 single 2 MiB block maps (1 GiB), then 512 single unmaps.
        "2m" => {
            let (m, u) = singles(512, M2, 0);
            (m, u, false)
        }
        // One call maps 1 GiB as 4 KiB pages (the PA is offset by 4 KiB, so no block
        // fits), one call unmaps it.
        "range" => (vec![(BASE, BASE + K4, G1)], vec![(BASE, 0, G1)], false),
        _ => return None,
    };
    Some(Work {
        maps,
        unmaps,
        paired,
    })
}

/// Table memory for Warden's side: the global allocator, PA == host address (as
/// the peer's [`CountingTranslation`]); `live` counts the bytes allocated.
struct HeapMem {
    live: u64,
}

// SAFETY: `alloc_zeroed` returns fresh zeroed allocations of `size` bytes aligned to
// `align` from the global allocator, which no other allocation overlaps; `table_ptr`
// returns the address itself, valid while the allocation lives; nothing else takes
// references to the memory.
unsafe impl TableMemory for HeapMem {
    fn alloc_zeroed(&mut self, size: usize, align: usize) -> Option<PhysAddr> {
        let layout = Layout::from_size_align(size, align).ok()?;
        // SAFETY: `size` is nonzero (a table).
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        if p.is_null() {
            return None;
        }
        self.live += size as u64;
        Some(PhysAddr(p as u64))
    }

    unsafe fn free(&mut self, pa: PhysAddr, size: usize) {
        // Tables are allocated aligned to their size.
        if let Ok(layout) = Layout::from_size_align(size, size) {
            // SAFETY: the caller passes an allocation of ours with its size.
            unsafe { std::alloc::dealloc(pa.0 as *mut u8, layout) };
            self.live -= size as u64;
        }
    }

    fn table_ptr(&self, pa: PhysAddr) -> *mut u64 {
        pa.0 as *mut u64
    }
}

/// The two implementations behind one interface.
trait Side {
    fn map(&mut self, ipa: u64, pa: u64, size: u64) -> bool;
    fn unmap(&mut self, ipa: u64, size: u64) -> bool;
    /// The output address of `ipa`, if mapped.
    fn translate(&self, ipa: u64) -> Option<u64>;
    /// Bytes of translation tables allocated now (root included).
    fn table_bytes(&self) -> u64;
}

struct Warden {
    s2: Stage2,
    mem: HeapMem,
}

impl Side for Warden {
    fn map(&mut self, ipa: u64, pa: u64, size: u64) -> bool {
        self.s2
            .map(
                &mut self.mem,
                &mut NoTlb,
                Ipa(ipa),
                PhysAddr(pa),
                size,
                S2Attrs::NORMAL_RW,
            )
            .is_ok()
    }
    fn unmap(&mut self, ipa: u64, size: u64) -> bool {
        self.s2
            .unmap(&mut self.mem, &mut NoTlb, Ipa(ipa), size)
            .is_ok()
    }
    fn translate(&self, ipa: u64) -> Option<u64> {
        self.s2
            .translate(&self.mem, Ipa(ipa))
            .map(|(pa, _, _)| pa.0)
    }
    fn table_bytes(&self) -> u64 {
        self.mem.live
    }
}

/// The peer's table memory: like aarch64-paging's `IdTranslation` (global allocator,
/// PA == host address), counting the bytes allocated.
#[derive(Default)]
struct CountingTranslation {
    live: u64,
}

type PeerTable = PageTable<Stage2Attributes>;

impl Translation<Stage2Attributes> for CountingTranslation {
    fn allocate_table(&mut self) -> (NonNull<PeerTable>, PhysicalAddress) {
        let layout = Layout::new::<PeerTable>();
        // SAFETY: a page table has a nonzero size; zeroed memory is a valid (empty) table.
        let p = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<PeerTable>();
        let Some(table) = NonNull::new(p) else {
            std::alloc::handle_alloc_error(layout)
        };
        self.live += layout.size() as u64;
        (table, PhysicalAddress(p as usize))
    }

    unsafe fn deallocate_table(&mut self, page_table: NonNull<PeerTable>) {
        let layout = Layout::new::<PeerTable>();
        // SAFETY: the caller passes a table `allocate_table` allocated with this layout.
        unsafe { std::alloc::dealloc(page_table.as_ptr().cast(), layout) };
        self.live -= layout.size() as u64;
    }

    fn physical_to_virtual(&self, pa: PhysicalAddress) -> NonNull<PeerTable> {
        NonNull::new(pa.0 as *mut PeerTable).unwrap_or(NonNull::dangling())
    }
}

type PeerMap = Mapping<CountingTranslation, PeerRegime>;

struct Peer {
    map: PeerMap,
}

/// Normal write-back memory, read/write, inner shareable, accessed: what Warden's
/// `S2Attrs::NORMAL_RW` writes.
fn peer_attrs() -> Stage2Attributes {
    Stage2Attributes::VALID
        | Stage2Attributes::MEMATTR_NORMAL_INNER_WB
        | Stage2Attributes::MEMATTR_NORMAL_OUTER_WB
        | Stage2Attributes::S2AP_ACCESS_RW
        | Stage2Attributes::SH_INNER
        | Stage2Attributes::ACCESS_FLAG
        | Stage2Attributes::XN
}

fn region(ipa: u64, size: u64) -> MemoryRegion {
    MemoryRegion::new(ipa as usize, (ipa + size) as usize)
}

impl Side for Peer {
    fn map(&mut self, ipa: u64, pa: u64, size: u64) -> bool {
        self.map
            .map_range(
                &region(ipa, size),
                PhysicalAddress(pa as usize),
                peer_attrs(),
                Constraints::empty(),
            )
            .is_ok()
    }
    fn unmap(&mut self, ipa: u64, size: u64) -> bool {
        // aarch64-paging unmaps by mapping without VALID.
        self.map
            .map_range(
                &region(ipa, size),
                PhysicalAddress(0),
                Stage2Attributes::empty(),
                Constraints::empty(),
            )
            .is_ok()
    }
    fn translate(&self, ipa: u64) -> Option<u64> {
        let mut out = None;
        // Leaves only; the offset within the leaf comes from its level.
        let _ = self.map.walk_range(&region(ipa, K4), &mut |_r, d, level| {
            if d.is_valid() {
                let span = K4 << (9 * (3 - level.min(3)));
                out = Some(d.output_address().0 as u64 + (ipa & (span - 1)));
            }
            Ok(())
        });
        out
    }
    fn table_bytes(&self) -> u64 {
        self.map.translation().live
    }
}

/// The counted part: every call of the workload. Returns how many calls failed.
#[inline(never)]
fn bench_region(side: &mut dyn Side, w: &Work, phase_maps: bool, phase_unmaps: bool) -> u64 {
    let mut failed = 0;
    if w.paired {
        for &(ipa, pa, size) in &w.maps {
            failed += u64::from(!side.map(ipa, pa, size));
            failed += u64::from(!side.unmap(ipa, size));
        }
        return black_box(failed);
    }
    if phase_maps {
        for &(ipa, pa, size) in &w.maps {
            failed += u64::from(!side.map(ipa, pa, size));
        }
    }
    if phase_unmaps {
        for &(ipa, _, size) in &w.unmaps {
            failed += u64::from(!side.unmap(ipa, size));
        }
    }
    black_box(failed)
}

/// Sample IPAs: the first, middle and last page of each map call's range (at most 48).
fn samples(w: &Work) -> Vec<u64> {
    let step = (w.maps.len() / 16).max(1);
    let mut out = Vec::new();
    for &(ipa, _, size) in w.maps.iter().step_by(step) {
        out.extend([ipa, ipa + ((size / 2) & !(K4 - 1)), ipa + size - K4]);
    }
    out
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [side_name, name] = args.as_slice() else {
        eprintln!("usage: s2peer warden|peer 4k|1g|2m|range");
        return ExitCode::from(2);
    };
    let Some(w) = work(name) else {
        eprintln!("s2peer: unknown workload '{name}'");
        return ExitCode::from(2);
    };
    let mut side: Box<dyn Side> = match side_name.as_str() {
        "warden" => {
            let Ok(geom) = S2Geometry::new(Granule::Size4K, 39, 48) else {
                eprintln!("s2peer: no 39-bit geometry");
                return ExitCode::FAILURE;
            };
            let mut mem = HeapMem { live: 0 };
            // SAFETY: every call passes this `mem`, and nothing else touches its tables.
            let Ok(s2) = (unsafe { Stage2::new(geom, &mut mem) }) else {
                eprintln!("s2peer: no memory for the root");
                return ExitCode::FAILURE;
            };
            Box::new(Warden { s2, mem })
        }
        "peer" => Box::new(Peer {
            map: PeerMap::new(CountingTranslation::default(), 1, PeerRegime),
        }),
        other => {
            eprintln!("s2peer: unknown side '{other}'");
            return ExitCode::from(2);
        }
    };
    let mut ok = true;
    let failed = if w.paired {
        // Check one pair outside the counted region first (map, translate, unmap).
        let (ipa, pa, size) = w.maps[0];
        ok &= side.map(ipa, pa, size);
        for s in [ipa, ipa + size / 2, ipa + size - K4] {
            print_check(s, side.translate(s));
        }
        println!("tables mapped {}", side.table_bytes());
        ok &= side.unmap(ipa, size);
        bench_region(side.as_mut(), &w, true, true)
    } else {
        let f = bench_region(side.as_mut(), &w, true, false);
        for s in samples(&w) {
            print_check(s, side.translate(s));
        }
        println!("tables mapped {}", side.table_bytes());
        f + bench_region(side.as_mut(), &w, false, true)
    };
    println!("tables unmapped {}", side.table_bytes());
    for s in samples(&w) {
        if side.translate(s).is_some() {
            println!("error: {s:#x} still mapped after the unmaps");
            ok = false;
        }
    }
    if failed != 0 {
        println!("error: {failed} calls failed");
        ok = false;
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn print_check(ipa: u64, pa: Option<u64>) {
    match pa {
        Some(pa) => println!("check {ipa:#x} -> {pa:#x}"),
        None => println!("check {ipa:#x} -> none"),
    }
}
