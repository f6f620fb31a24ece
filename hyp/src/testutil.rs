//! Test helpers: a RAM arena posing as physical memory, shared by the code under test
//! (through [`TableMemory`]) and by hardware models (through [`Ram`]).
//!
//! [`Ram`] is host memory at a fake physical base. It is only ever accessed through raw
//! pointers (never through Rust references), so the driver's `table_ptr` pointers and a
//! model's reads and writes may freely interleave.
//!
//! A `Ram` can be *non-coherent*: then it has two copies of every byte, what the CPU sees
//! (a write-back cache in which every line is always present) and what memory holds (what
//! a non-snooping device such as an SMMU with `IDR0.COHACC = 0` sees).
//! [`TableMemory::clean`] acts like `DC CIVAC` on each 64-byte line of the range: a line
//! the CPU wrote since the last maintenance is written back to memory, any other line is
//! refilled from memory (the invalidate half, so the CPU then sees device writes). A
//! missing clean shows up as a device reading stale memory, or as the CPU reading a stale
//! line.

use crate::addr::PhysAddr;
use crate::s2mmu::TableMemory;
use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::vec::Vec;

/// Where arenas pose as physical memory by default.
pub const ARENA_BASE: u64 = 0x8000_0000;
/// Cache line size of the non-coherent model.
pub const LINE: u64 = 64;

/// One zeroed host allocation, 64 KiB aligned.
struct Block {
    ptr: *mut u8,
    /// The allocation `ptr` lies in.
    raw: *mut u8,
    layout: Layout,
}

impl Block {
    fn new(len: usize) -> Self {
        // Allocated with a small alignment and aligned by hand: a large one would make
        // `alloc_zeroed` write every byte, while `calloc` of a large size gets fresh zero
        // pages for free (worlds are built millions of times by the fuzz harness).
        let layout = Layout::from_size_align(len + (1 << 16), 16).expect("arena layout");
        // SAFETY: `layout` has a non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        assert!(!raw.is_null(), "arena allocation failed");
        let ptr = raw.wrapping_add(raw.align_offset(1 << 16));
        Self { ptr, raw, layout }
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.raw, self.layout) }
    }
}

/// Host memory posing as physical memory `[base, base + len)`.
pub struct Ram {
    base: u64,
    len: usize,
    /// What the CPU sees.
    cpu: Block,
    /// Non-coherent only: what memory holds, and the CPU copy as of its last maintenance
    /// (to tell lines the CPU wrote since).
    mem: Option<(Block, Block)>,
    /// `clean` calls, for tests.
    cleans: Cell<u64>,
}

impl Ram {
    /// `len` bytes (a multiple of 64 KiB) at physical `base` (64 KiB aligned), coherent.
    pub fn new(base: u64, len: usize) -> Self {
        Self::with_coherency(base, len, true)
    }

    /// As [`new`](Self::new), coherent or not (see the module docs).
    pub fn with_coherency(base: u64, len: usize, coherent: bool) -> Self {
        assert!(len > 0 && len.is_multiple_of(1 << 16) && base.is_multiple_of(1 << 16));
        Self {
            base,
            len,
            cpu: Block::new(len),
            mem: (!coherent).then(|| (Block::new(len), Block::new(len))),
            cleans: Cell::new(0),
        }
    }

    /// First physical address.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Size in bytes.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the range `[pa, pa + len)` is inside.
    pub fn contains(&self, pa: u64, len: usize) -> bool {
        pa >= self.base && pa - self.base + len as u64 <= self.len as u64
    }

    fn offset(&self, pa: u64, len: usize) -> usize {
        assert!(self.contains(pa, len), "{pa:#x}+{len:#x} outside the arena");
        (pa - self.base) as usize
    }

    /// The CPU's pointer to `pa` (`len` bytes must be inside).
    pub fn cpu_ptr(&self, pa: u64, len: usize) -> *mut u8 {
        let off = self.offset(pa, len);
        // SAFETY: `off + len` is within the allocation.
        unsafe { self.cpu.ptr.add(off) }
    }

    /// The device's (memory's) pointer to `pa`.
    fn dev_ptr(&self, pa: u64, len: usize) -> *mut u8 {
        let off = self.offset(pa, len);
        let block = self.mem.as_ref().map_or(&self.cpu, |(m, _)| m);
        // SAFETY: `off + len` is within the allocation.
        unsafe { block.ptr.add(off) }
    }

    /// Reads 8 bytes as the CPU sees them.
    pub fn read_u64(&self, pa: u64) -> u64 {
        assert_eq!(pa % 8, 0);
        // SAFETY: in bounds and 8-aligned (the block is 64 KiB aligned); raw access only.
        unsafe { self.cpu_ptr(pa, 8).cast::<u64>().read_volatile() }
    }

    /// Writes 8 bytes as the CPU.
    pub fn write_u64(&self, pa: u64, v: u64) {
        assert_eq!(pa % 8, 0);
        // SAFETY: in bounds and 8-aligned; raw access only.
        unsafe { self.cpu_ptr(pa, 8).cast::<u64>().write_volatile(v) }
    }

    /// Reads bytes as the CPU sees them.
    pub fn read_bytes(&self, pa: u64, out: &mut [u8]) {
        let p = self.cpu_ptr(pa, out.len());
        // SAFETY: in bounds; `out` is a distinct Rust buffer.
        unsafe { core::ptr::copy_nonoverlapping(p, out.as_mut_ptr(), out.len()) }
    }

    /// Writes bytes as the CPU.
    pub fn write_bytes(&self, pa: u64, data: &[u8]) {
        let p = self.cpu_ptr(pa, data.len());
        // SAFETY: in bounds; `data` is a distinct Rust buffer.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) }
    }

    /// Reads 8 bytes as a device sees them, `None` outside the arena (an external abort).
    pub fn dev_read_u64(&self, pa: u64) -> Option<u64> {
        if !pa.is_multiple_of(8) || !self.contains(pa, 8) {
            return None;
        }
        // SAFETY: in bounds and aligned; raw access only.
        Some(unsafe { self.dev_ptr(pa, 8).cast::<u64>().read_volatile() })
    }

    /// Writes 8 bytes as a device; `false` outside the arena.
    pub fn dev_write_u64(&self, pa: u64, v: u64) -> bool {
        if !pa.is_multiple_of(8) || !self.contains(pa, 8) {
            return false;
        }
        // SAFETY: in bounds and aligned; raw access only.
        unsafe { self.dev_ptr(pa, 8).cast::<u64>().write_volatile(v) };
        true
    }

    /// Writes 4 bytes as a device; `false` outside the arena.
    pub fn dev_write_u32(&self, pa: u64, v: u32) -> bool {
        if !pa.is_multiple_of(4) || !self.contains(pa, 4) {
            return false;
        }
        // SAFETY: in bounds and aligned; raw access only.
        unsafe { self.dev_ptr(pa, 4).cast::<u32>().write_volatile(v) };
        true
    }

    /// `DC CIVAC` over the lines of `[pa, pa + len)` (see the module docs); nothing when
    /// coherent.
    pub fn clean(&self, pa: u64, len: usize) {
        self.cleans.set(self.cleans.get() + 1);
        let Some((mem, snap)) = &self.mem else {
            return;
        };
        let start = pa & !(LINE - 1);
        let end = (pa + len as u64).next_multiple_of(LINE);
        let mut line = start;
        while line < end {
            let off = self.offset(line, LINE as usize);
            // SAFETY: the three blocks have the same length and `off + LINE` is in bounds;
            // the slices are short-lived copies' sources, no other reference exists.
            unsafe {
                let c = self.cpu.ptr.add(off);
                let m = mem.ptr.add(off);
                let s = snap.ptr.add(off);
                let dirty = core::slice::from_raw_parts(c, LINE as usize)
                    != core::slice::from_raw_parts(s, LINE as usize);
                if dirty {
                    core::ptr::copy_nonoverlapping(c, m, LINE as usize);
                } else {
                    core::ptr::copy_nonoverlapping(m, c, LINE as usize);
                }
                core::ptr::copy_nonoverlapping(c, s, LINE as usize);
            }
            line += LINE;
        }
    }

    /// Zeroes `[pa, pa + len)` in every copy (CPU view, memory, snapshot): fresh memory
    /// with no dirty line.
    pub fn zero(&self, pa: u64, len: usize) {
        let off = self.offset(pa, len);
        // SAFETY: `off + len` is within each block (same length); raw access only.
        unsafe {
            self.cpu.ptr.add(off).write_bytes(0, len);
            if let Some((mem, snap)) = &self.mem {
                mem.ptr.add(off).write_bytes(0, len);
                snap.ptr.add(off).write_bytes(0, len);
            }
        }
    }

    /// Reads 8 bytes as a device sees them (memory, not the CPU cache), panicking outside.
    pub fn mem_read_u64(&self, pa: u64) -> u64 {
        self.dev_read_u64(pa).expect("outside the arena")
    }

    /// Number of `clean` calls so far.
    pub fn cleans(&self) -> u64 {
        self.cleans.get()
    }
}

/// A [`TableMemory`] over a shared [`Ram`]: bump allocation with a free list, live
/// allocations tracked, an optional allocation budget (to run out on purpose).
pub struct Arena {
    ram: Rc<Ram>,
    bump: u64,
    free: Vec<(u64, usize)>,
    live: Rc<RefCell<BTreeMap<u64, usize>>>,
    /// Allocations still allowed; `None` = unlimited.
    pub budget: Option<usize>,
}

impl Arena {
    /// A coherent arena of `len` bytes at [`ARENA_BASE`].
    pub fn new(len: usize) -> Self {
        Self::with_ram(Rc::new(Ram::new(ARENA_BASE, len)))
    }

    /// An arena over `ram`.
    pub fn with_ram(ram: Rc<Ram>) -> Self {
        let bump = ram.base();
        Self {
            ram,
            bump,
            free: Vec::new(),
            live: Rc::default(),
            budget: None,
        }
    }

    /// A second allocator over the same `ram`, handing out memory from `start` on (keep
    /// the ranges of allocators sharing a RAM disjoint).
    pub fn with_ram_at(ram: Rc<Ram>, start: u64) -> Self {
        let mut a = Self::with_ram(ram);
        a.bump = start;
        a
    }

    /// The memory, to hand to a model.
    pub fn ram(&self) -> Rc<Ram> {
        self.ram.clone()
    }

    /// The live-allocation map (address → size), shared: for models that must tell a
    /// live table from a freed one.
    pub fn live_handle(&self) -> Rc<RefCell<BTreeMap<u64, usize>>> {
        self.live.clone()
    }

    /// Number of live allocations.
    pub fn live_count(&self) -> usize {
        self.live.borrow().len()
    }

    /// Live allocations: (physical address, size).
    pub fn live(&self) -> Vec<(u64, usize)> {
        self.live.borrow().iter().map(|(&a, &s)| (a, s)).collect()
    }
}

// SAFETY: allocations are disjoint ranges of the RAM, zeroed (in the CPU view and, when
// non-coherent, in memory too) when handed out and aligned as asked; `table_ptr` returns
// the CPU-view address of a live allocation, and the RAM is only accessed through raw
// pointers.
unsafe impl TableMemory for Arena {
    fn alloc_zeroed(&mut self, size: usize, align: usize) -> Option<PhysAddr> {
        assert!(size.is_power_of_two() && align.is_power_of_two() && align <= size);
        if let Some(budget) = &mut self.budget {
            if *budget == 0 {
                return None;
            }
            *budget -= 1;
        }
        let reuse = self
            .free
            .iter()
            .position(|&(pa, s)| s == size && pa.is_multiple_of(align as u64));
        let pa = match reuse {
            Some(i) => self.free.swap_remove(i).0,
            None => {
                let pa = self.bump.next_multiple_of(align as u64);
                if !self.ram.contains(pa, size) {
                    return None;
                }
                self.bump = pa + size as u64;
                pa
            }
        };
        let p = self.ram.cpu_ptr(pa, size);
        // SAFETY: `size` bytes at `pa` are inside the RAM and not allocated.
        unsafe { p.write_bytes(0, size) };
        if let Some((mem, snap)) = &self.ram.mem {
            let off = (pa - self.ram.base) as usize;
            // SAFETY: same offsets in blocks of the same length.
            unsafe {
                mem.ptr.add(off).write_bytes(0, size);
                snap.ptr.add(off).write_bytes(0, size);
            }
        }
        assert!(self.live.borrow_mut().insert(pa, size).is_none());
        Some(PhysAddr(pa))
    }

    unsafe fn free(&mut self, pa: PhysAddr, size: usize) {
        let was = self.live.borrow_mut().remove(&pa.0);
        assert_eq!(
            was,
            Some(size),
            "free({pa:?}, {size:#x}) of no such allocation"
        );
        // Poison, so that a use after free shows.
        let p = self.ram.cpu_ptr(pa.0, size);
        // SAFETY: the allocation was live until now: in bounds, no other user.
        unsafe { p.write_bytes(0xa5, size) };
        self.free.push((pa.0, size));
    }

    fn table_ptr(&self, pa: PhysAddr) -> *mut u64 {
        let live = self.live.borrow();
        let (&start, &size) = live
            .range(..=pa.0)
            .next_back()
            .expect("table_ptr below every allocation");
        assert!(
            pa.0 < start + size as u64,
            "table_ptr({pa:?}) of no allocation"
        );
        self.ram.cpu_ptr(pa.0, 8).cast()
    }

    fn clean(&mut self, pa: PhysAddr, size: usize) {
        self.ram.clean(pa.0, size);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_align_free_reuse() {
        let mut a = Arena::new(1 << 20);
        let x = a.alloc_zeroed(4096, 4096).unwrap();
        let y = a.alloc_zeroed(16384, 16384).unwrap();
        assert_eq!(x.0 % 4096, 0);
        assert_eq!(y.0 % 16384, 0);
        assert_eq!(a.live_count(), 2);
        a.ram().write_u64(x.0 + 8, 7);
        assert_eq!(a.ram().dev_read_u64(x.0 + 8), Some(7));
        // SAFETY: `x` is a live allocation of that size, unused.
        unsafe { a.free(x, 4096) };
        assert_eq!(a.live_count(), 1);
        let z = a.alloc_zeroed(4096, 4096).unwrap();
        assert_eq!(z, x);
        assert_eq!(a.ram().read_u64(z.0 + 8), 0);
        a.budget = Some(0);
        assert!(a.alloc_zeroed(4096, 4096).is_none());
    }

    #[test]
    fn non_coherent_needs_clean_both_ways() {
        let ram = Rc::new(Ram::with_coherency(ARENA_BASE, 1 << 16, false));
        let mut a = Arena::with_ram(ram.clone());
        let p = a.alloc_zeroed(4096, 4096).unwrap();
        ram.write_u64(p.0, 1);
        assert_eq!(
            ram.dev_read_u64(p.0),
            Some(0),
            "device sees memory, not the cache"
        );
        a.clean(p, 8);
        assert_eq!(ram.dev_read_u64(p.0), Some(1));
        ram.dev_write_u64(p.0 + 64, 5);
        assert_eq!(ram.read_u64(p.0 + 64), 0, "the CPU reads its stale line");
        a.clean(PhysAddr(p.0 + 64), 8);
        assert_eq!(ram.read_u64(p.0 + 64), 5);
    }
}
