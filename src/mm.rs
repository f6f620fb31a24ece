//! Warden's memory at EL2: the heap (one buddy allocator serving both Rust allocations and
//! page-table pages, seeded from .bss and then from the pool carve-out), the EL2 identity
//! map, and turning the MMU on.

use crate::arch::{self, write_sysreg};
use buddy_system_allocator::LockedHeap;
use core::alloc::Layout;
use core::cell::UnsafeCell;
use hyp::addr::{PhysAddr, PhysRange};
use hyp::el2_s1::{IdMap, MAIR_EL2, S1Attr};
use hyp::s2mmu::{S2Tlb, TableMemory};
use spin::Mutex;

#[global_allocator]
static HEAP: LockedHeap<33> = LockedHeap::empty();

/// SCTLR_EL2 with MMU, data and instruction caches on (and SA, RES1 bits).
pub const SCTLR_EL2_MMU_ON: u64 = 0x30c5_183d;

const EARLY_TABLES: usize = 8;
const BOOT_HEAP_SIZE: usize = 2 << 20;

#[repr(C, align(4096))]
struct Pages<const N: usize>([[u8; 4096]; N]);

/// Memory in .bss handed out before the heap exists. Accessed only through raw pointers.
struct BssPages<const N: usize>(UnsafeCell<Pages<N>>);
// SAFETY: used only by the boot CPU during boot, through raw pointers.
unsafe impl<const N: usize> Sync for BssPages<N> {}

static EARLY: BssPages<EARLY_TABLES> = BssPages(UnsafeCell::new(Pages([[0; 4096]; EARLY_TABLES])));
static BOOT_HEAP: BssPages<{ BOOT_HEAP_SIZE / 4096 }> =
    BssPages(UnsafeCell::new(Pages([[0; 4096]; BOOT_HEAP_SIZE / 4096])));

/// Table pages for the EL2 map: a few from .bss (usable with the MMU off, no locks), then
/// from the heap.
pub struct HypTables {
    early_used: usize,
}

impl HypTables {
    /// Whether `pa` is one of the .bss pages.
    fn is_early(pa: PhysAddr) -> bool {
        let base = EARLY.0.get() as u64;
        (base..base + (EARLY_TABLES as u64) * 4096).contains(&pa.get())
    }
}

// SAFETY: every table is one 4 KiB page, zeroed and 4 KiB aligned: a .bss page (zeroed at
// entry, handed out once and never reused) or a heap allocation owned by the map until it
// is freed; all are identity-mapped at EL2 (and reached by physical address with the MMU
// off), so `table_ptr` is the address itself.
unsafe impl TableMemory for HypTables {
    fn alloc_zeroed(&mut self, size: usize, align: usize) -> Option<PhysAddr> {
        if size != 4096 || align > 4096 {
            return None;
        }
        if self.early_used < EARLY_TABLES {
            let base = EARLY.0.get() as u64;
            let pa = base + (self.early_used as u64) * 4096;
            self.early_used += 1;
            return Some(PhysAddr(pa));
        }
        alloc_zeroed_pages(4096, 4096)
    }
    unsafe fn free(&mut self, pa: PhysAddr, size: usize) {
        if Self::is_early(pa) {
            // A .bss page is never handed out again.
            return;
        }
        // SAFETY: not a .bss page, so a heap allocation of `alloc_zeroed` (4 KiB, 4 KiB
        // aligned), which the trait contract says is freed once.
        unsafe { free_pages(pa, size, 4096) };
    }
    fn table_ptr(&self, pa: PhysAddr) -> *mut u64 {
        pa.get() as *mut u64
    }
}

/// The EL2 map's barrier seam: `DSB ISHST` publishes table writes to the walker. The map
/// only fills invalid entries, so nothing is ever invalidated.
struct Publish;

impl S2Tlb for Publish {
    fn invalidate_ipa_range(&mut self, _ipa: hyp::addr::Ipa, _size: u64, _leaf: bool) {}
    fn invalidate_all(&mut self) {}
    fn sync(&mut self) {
        arch::dsb_ishst();
    }
}

/// `size` zeroed bytes aligned to `align` from the heap, as a physical address.
pub fn alloc_zeroed_pages(size: usize, align: usize) -> Option<PhysAddr> {
    let layout = Layout::from_size_align(size, align).ok()?;
    // SAFETY: the layout has non-zero size.
    let p = unsafe { alloc::alloc::alloc_zeroed(layout) };
    (!p.is_null()).then_some(PhysAddr(p as u64))
}

/// Returns pages from [`alloc_zeroed_pages`].
///
/// # Safety
/// `pa`/`size`/`align` must come from one earlier `alloc_zeroed_pages` call.
pub unsafe fn free_pages(pa: PhysAddr, size: usize, align: usize) {
    if let Ok(layout) = Layout::from_size_align(size, align) {
        // SAFETY: by the caller's contract.
        unsafe { alloc::alloc::dealloc(pa.get() as *mut u8, layout) };
    }
}

/// The EL2 identity map and its table allocator.
pub static HYP_MAP: Mutex<Option<(IdMap, HypTables)>> = Mutex::new(None);

unsafe extern "C" {
    static _start_image: u8;
    static _end: u8;
}

/// Warden's image in memory: `[_start, _end)` at its runtime address.
pub fn image_range() -> PhysRange {
    let start = &raw const _start_image as u64;
    let end = &raw const _end as u64;
    PhysRange::new(start, end - start)
}

/// TCR_EL2 for this CPU's PA size.
pub fn tcr() -> u64 {
    hyp::el2_s1::tcr_el2(crate::arch::read_sysreg!("id_aa64mmfr0_el1") & 0xf)
}

/// Builds the boot-time EL2 map (image and DTB) and turns on the MMU and caches.
///
/// # Safety
/// Must run once, on the boot CPU, with the MMU off, before anything else uses locks or
/// the heap; `dtb` must be the address firmware passed.
pub unsafe fn early_mmu(dtb: u64) -> Result<(IdMap, HypTables), ()> {
    let mut tables = HypTables { early_used: 0 };
    // SAFETY: the map always uses these tables (kept with it in `HYP_MAP`).
    let mut map = unsafe { IdMap::new(&mut tables) }.map_err(|_| ())?;
    let image = image_range();
    map.map(&mut tables, &mut Publish, image, S1Attr::NormalRwx)
        .map_err(|_| ())?;
    if dtb == 0 || !dtb.is_multiple_of(8) {
        return Err(());
    }
    // SAFETY: firmware passed a DTB address (non-null, aligned); its header starts with two
    // big-endian words, magic and total size.
    let (magic, size) = unsafe {
        (
            u32::from_be((dtb as *const u32).read_volatile()),
            u32::from_be((dtb as *const u32).add(1).read_volatile()),
        )
    };
    if magic != 0xd00d_feed {
        return Err(());
    }
    map.map(
        &mut tables,
        &mut Publish,
        PhysRange::new(dtb, size as u64),
        S1Attr::NormalRw,
    )
    .map_err(|_| ())?;

    // Everything written so far went to memory with caches off; drop any stale cached
    // copies of the image (tables, .bss, stack) before caching is turned on.
    // SAFETY: the boot protocol leaves the image cleaned to PoC, so no dirty line matters.
    unsafe { arch::invalidate_dcache_range(image.base.get(), image.size) };
    write_sysreg!("mair_el2", MAIR_EL2);
    write_sysreg!("tcr_el2", tcr());
    write_sysreg!("ttbr0_el2", map.root().get());
    arch::isb();
    arch::tlbi_alle2();
    write_sysreg!("sctlr_el2", SCTLR_EL2_MMU_ON);
    arch::isb();
    // SAFETY: instruction cache invalidation has no memory effect.
    unsafe { core::arch::asm!("ic iallu", "dsb nsh", "isb") };
    Ok((map, tables))
}

/// Gives the heap its first memory (from .bss).
pub fn init_boot_heap() {
    // SAFETY: BOOT_HEAP is used for nothing else and is handed over once.
    unsafe { HEAP.lock().init(BOOT_HEAP.0.get() as usize, BOOT_HEAP_SIZE) };
}

/// Adds `range` (Warden's pool) to the heap.
///
/// # Safety
/// `range` must be mapped, owned by Warden from now on, and given only once.
pub unsafe fn add_to_heap(range: PhysRange) {
    let start = range.base.get() as usize;
    // SAFETY: by the caller's contract.
    unsafe { HEAP.lock().add_to_heap(start, start + range.size as usize) };
}

/// Heap statistics: (allocated bytes, total bytes).
pub fn heap_usage() -> (usize, usize) {
    let h = HEAP.lock();
    (h.stats_alloc_actual(), h.stats_total_bytes())
}

/// Adds `range` to the live EL2 map with `attr`.
pub fn map_hyp(range: PhysRange, attr: S1Attr) -> Result<(), hyp::el2_s1::S1Error> {
    let mut g = HYP_MAP.lock();
    let Some((map, tables)) = g.as_mut() else {
        return Err(hyp::el2_s1::S1Error::BadRange);
    };
    let r = map.map(tables, &mut Publish, range, attr);
    // New valid entries replace invalid ones: no TLB maintenance, only visibility.
    arch::dsb_ishst();
    arch::isb();
    r
}

/// Warden's page pool for translation tables and SMMU queues: the heap (seeded from the
/// carve-out), then pages the host donated. Identity-mapped at EL2. A handle: every
/// value is the same pool.
#[derive(Clone, Copy, Default)]
pub struct S2Mem;

/// The pages the host donated: which are free, and which ranges are donated (to route
/// frees). Its bookkeeping never allocates infallibly (hyp's `frames`).
static DONATED: Mutex<hyp::frames::FramePool> = Mutex::new(hyp::frames::FramePool::new());

fn donated_alloc(size: usize, align: usize) -> Option<PhysAddr> {
    let pa = DONATED.lock().alloc(size, align)?;
    let len = size.div_ceil(4096) * 4096;
    let p = pa.get() as *mut u64;
    for i in 0..len / 8 {
        // SAFETY: the pages were donated (mapped at EL2 as RAM) and are free; volatile
        // word stores keep the compiler from emitting a SIMD memset.
        unsafe { p.add(i).write_volatile(0) };
    }
    Some(pa)
}

fn is_donated(pa: PhysAddr) -> bool {
    DONATED.lock().contains(pa)
}

// SAFETY: allocations come from the global heap, zeroed and aligned as requested, are
// identity-mapped at EL2 (VA == PA), and are owned by the page table until freed.
unsafe impl hyp::s2mmu::TableMemory for S2Mem {
    fn alloc_zeroed(&mut self, size: usize, align: usize) -> Option<PhysAddr> {
        // Tables and queues are naturally aligned (align <= size, both powers of two).
        alloc_zeroed_pages(size, align.max(size)).or_else(|| donated_alloc(size, align.max(size)))
    }
    unsafe fn free(&mut self, pa: PhysAddr, size: usize) {
        if is_donated(pa) {
            DONATED.lock().free(pa, size);
            return;
        }
        // SAFETY: heap allocations are made with alignment == size, and the trait
        // contract says `pa`/`size` come from `alloc_zeroed`.
        unsafe { free_pages(pa, size, size) };
    }
    fn table_ptr(&self, pa: PhysAddr) -> *mut u64 {
        pa.get() as *mut u64
    }
    fn clean(&mut self, pa: PhysAddr, size: usize) {
        if NONCOHERENT_WALKERS.load(core::sync::atomic::Ordering::Acquire) {
            // Clean and invalidate: the SMMU also writes (event records) through here.
            arch::clean_invalidate_dcache_range(pa.get(), size as u64);
        }
    }
    fn set_noncoherent_walker(&mut self) {
        set_noncoherent_walkers();
    }
}

/// Whether some table walker (a non-coherent SMMU) needs table writes cleaned to PoC.
static NONCOHERENT_WALKERS: core::sync::atomic::AtomicBool =
    core::sync::atomic::AtomicBool::new(false);

/// Records that an SMMU walks tables and queues without snooping the CPU caches.
pub fn set_noncoherent_walkers() {
    NONCOHERENT_WALKERS.store(true, core::sync::atomic::Ordering::Release);
}

// SAFETY: `reclaim` takes free pages out of the donated pool (so they are free and never
// handed out again unless donated again); they were donated, hence are not heap memory.
unsafe impl hyp::dma::PagePool for S2Mem {
    fn prepare_donate(&mut self) -> Result<(), hyp::frames::NoMem> {
        DONATED.lock().reserve(4)
    }
    fn donate(&mut self, r: PhysRange) -> Result<(), hyp::frames::NoMem> {
        DONATED.lock().donate(r)
    }
    fn reclaim(&mut self, max_pages: u64) -> Option<PhysRange> {
        DONATED.lock().reclaim(max_pages)
    }
    fn scrub(&mut self, r: PhysRange) {
        let p = r.base.get() as *mut u64;
        for i in 0..(r.size / 8) as usize {
            // SAFETY: the run was just reclaimed (donated, identity-mapped at EL2, used by
            // nothing); volatile word stores keep the compiler from emitting a SIMD memset.
            unsafe { p.add(i).write_volatile(0) };
        }
    }
}
