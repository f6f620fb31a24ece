//! Page-aligned buffers in .bss for DMA: only device DMA and the CPU's volatile, aligned
//! 64-bit accesses touch them (the MMU is off, so addresses are physical and nothing is
//! cached).
//!
//! [`DmaPages`] may be donated to Warden (`MEM_DONATE`), so reading or writing them is
//! `unsafe`: the caller promises the program owns them at that moment. [`HostPages`] are
//! never donated and safe to use.

use core::cell::UnsafeCell;

use crate::logic::{PAGE, PageWords, WORDS};
use crate::rt;

/// `N` page-aligned pages of RAM in .bss.
#[repr(C, align(4096))]
pub struct DmaPages<const N: usize>(UnsafeCell<[PageWords; N]>);

// SAFETY: the CPUs access the pages only with volatile aligned word accesses, and the
// images give every page a single user at a time (the boot CPU; secondaries only name
// pages in hypercalls).
unsafe impl<const N: usize> Sync for DmaPages<N> {}

/// One page that may be donated.
pub type DmaPage = DmaPages<1>;

impl<const N: usize> DmaPages<N> {
    /// Zeroed pages (for statics: .bss).
    pub const fn new() -> Self {
        Self(UnsafeCell::new([[0; WORDS]; N]))
    }

    /// Physical address of the first page (the MMU is off: addresses are physical).
    pub fn addr(&self) -> u64 {
        self.0.get() as u64
    }

    /// Physical address of page `i`.
    pub fn page(&self, i: usize) -> u64 {
        assert!(i < N, "page {i} of {N}");
        self.addr() + (i * PAGE) as u64
    }

    /// Bytes covered.
    pub const fn len(&self) -> u64 {
        (N * PAGE) as u64
    }

    /// Whether there are no pages.
    pub const fn is_empty(&self) -> bool {
        N == 0
    }

    /// Whether `pa` lies inside.
    pub fn contains(&self, pa: u64) -> bool {
        pa >= self.addr() && pa - self.addr() < self.len()
    }

    /// Reads page `i`.
    ///
    /// # Safety
    ///
    /// The page must be the program's (not donated to Warden).
    pub unsafe fn load(&self, i: usize) -> PageWords {
        let p = self.page(i) as *const u64;
        // SAFETY: the page is ours and `w` stays inside it; volatile because devices
        // write it.
        core::array::from_fn(|w| unsafe { p.add(w).read_volatile() })
    }

    /// Writes page `i` and waits until the writes are done.
    ///
    /// # Safety
    ///
    /// The page must be the program's (not donated to Warden).
    pub unsafe fn store(&self, i: usize, words: &PageWords) {
        let p = self.page(i) as *mut u64;
        for (w, &v) in words.iter().enumerate() {
            // SAFETY: the page is ours and `w` stays inside it.
            unsafe { p.add(w).write_volatile(v) };
        }
        rt::dsb();
    }
}

impl<const N: usize> Default for DmaPages<N> {
    fn default() -> Self {
        Self::new()
    }
}

/// `N` pages that are never donated: reading and writing them is always allowed.
pub struct HostPages<const N: usize>(DmaPages<N>);

/// One page that is never donated.
pub type HostPage = HostPages<1>;

impl<const N: usize> HostPages<N> {
    /// Zeroed pages (for statics: .bss).
    pub const fn new() -> Self {
        Self(DmaPages::new())
    }

    /// Physical address of the first page.
    pub fn addr(&self) -> u64 {
        self.0.addr()
    }

    /// Physical address of page `i`.
    pub fn page(&self, i: usize) -> u64 {
        self.0.page(i)
    }

    /// Reads page `i`.
    pub fn load(&self, i: usize) -> PageWords {
        // SAFETY: host pages are never donated.
        unsafe { self.0.load(i) }
    }

    /// Writes page `i`.
    pub fn store(&self, i: usize, words: &PageWords) {
        // SAFETY: host pages are never donated.
        unsafe { self.0.store(i, words) }
    }
}

impl<const N: usize> Default for HostPages<N> {
    fn default() -> Self {
        Self::new()
    }
}
