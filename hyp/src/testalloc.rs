//! The global allocator of the host tests: the system allocator, with per-thread
//! counting (live bytes and their high-water mark) and allocations that fail on demand.
//!
//! Each test runs on its own thread, and the counters and the failure switch are
//! per thread, so tests running in parallel do not see each other. A failed allocation
//! returns null: a fallible path (`try_reserve`) sees the error, an infallible one
//! (`Vec::push` past its capacity, `Box::new`) calls `handle_alloc_error`, which aborts
//! the test process — exactly what Warden must never do on a host-reachable path.

use core::cell::Cell;
use std::alloc::{GlobalAlloc, Layout, System};

struct Counting;

std::thread_local! {
    /// Bytes allocated and not freed by this thread.
    static LIVE: Cell<usize> = const { Cell::new(0) };
    /// The most `LIVE` has been since the last reset.
    static PEAK: Cell<usize> = const { Cell::new(0) };
    /// Allocations still allowed before every further one fails (`None`: no limit).
    static ALLOWED: Cell<Option<u64>> = const { Cell::new(None) };
    /// Allocations refused so far.
    static REFUSED: Cell<u64> = const { Cell::new(0) };
    /// Inside [`exempt`]: the hardware models' own allocations, never refused.
    static EXEMPT: Cell<u32> = const { Cell::new(0) };
}

/// Whether this thread may allocate now (consumes one allowance).
fn permit() -> bool {
    if EXEMPT.try_with(Cell::get).unwrap_or(0) != 0 {
        return true;
    }
    ALLOWED
        .try_with(|a| match a.get() {
            None => true,
            Some(0) => {
                let _ = REFUSED.try_with(|r| r.set(r.get() + 1));
                false
            }
            Some(n) => {
                a.set(Some(n - 1));
                true
            }
        })
        .unwrap_or(true)
}

fn grew(n: usize) {
    let _ = LIVE.try_with(|l| {
        let v = l.get() + n;
        l.set(v);
        let _ = PEAK.try_with(|p| p.set(p.get().max(v)));
    });
}

fn shrank(n: usize) {
    let _ = LIVE.try_with(|l| l.set(l.get().saturating_sub(n)));
}

// SAFETY: forwards to the system allocator; the bookkeeping allocates nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !permit() {
            return core::ptr::null_mut();
        }
        // SAFETY: forwarded under the caller's contract.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !permit() {
            return core::ptr::null_mut();
        }
        // SAFETY: forwarded under the caller's contract.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        shrank(layout.size());
        // SAFETY: forwarded under the caller's contract.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !permit() {
            return core::ptr::null_mut();
        }
        // SAFETY: forwarded under the caller's contract.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            shrank(layout.size());
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `f` with at most `allowed` successful allocations on this thread (then every
/// allocation fails); returns `f`'s result and how many allocations were refused.
pub fn with_allocations<R>(allowed: u64, f: impl FnOnce() -> R) -> (R, u64) {
    let before = REFUSED.with(Cell::get);
    let saved = ALLOWED.with(|a| a.replace(Some(allowed)));
    let r = f();
    ALLOWED.with(|a| a.set(saved));
    (r, REFUSED.with(Cell::get) - before)
}

/// Runs `f` (a hardware model or test fixture, not the code under test) with its
/// allocations never refused.
pub fn exempt<R>(f: impl FnOnce() -> R) -> R {
    EXEMPT.with(|e| e.set(e.get() + 1));
    let r = f();
    EXEMPT.with(|e| e.set(e.get() - 1));
    r
}

/// Runs `f` with every allocation on this thread failing.
pub fn failing<R>(f: impl FnOnce() -> R) -> (R, u64) {
    with_allocations(0, f)
}

/// Bytes this thread has allocated and not freed.
pub fn live_bytes() -> usize {
    LIVE.with(Cell::get)
}

/// The high-water mark of [`live_bytes`] since the last [`reset_peak`].
pub fn peak_bytes() -> usize {
    PEAK.with(Cell::get)
}

/// Starts a new high-water mark at the current live bytes.
pub fn reset_peak() {
    PEAK.with(|p| p.set(live_bytes()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    #[test]
    fn counts_and_fails_on_demand() {
        reset_peak();
        let base = live_bytes();
        let mut v: Vec<u8> = Vec::new();
        v.try_reserve_exact(1000).unwrap();
        assert_eq!(live_bytes(), base + 1000);
        drop(v);
        assert_eq!(live_bytes(), base);
        assert!(peak_bytes() >= base + 1000);
        let (r, refused) = failing(|| Vec::<u8>::new().try_reserve(1).is_err());
        assert!(r && refused == 1);
        let (r, refused) = with_allocations(1, || {
            let mut a: Vec<u8> = Vec::new();
            let mut b: Vec<u8> = Vec::new();
            (a.try_reserve(1).is_ok(), b.try_reserve(1).is_ok())
        });
        assert_eq!((r, refused), ((true, false), 1));
    }
}
