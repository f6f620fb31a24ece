//! MEM_RECLAIM returns zeroed pages: whatever Warden kept in a donated page (its tables)
//! never reaches the host, in the CPU's view nor in memory (non-coherent RAM).

use super::*;

#[test]
fn reclaimed_pages_are_zero_in_the_cpu_view_and_in_memory() {
    for coherent in [true, false] {
        let w = World::new(Opts {
            coherent,
            ..Opts::default()
        });
        let d = mapped(&w, 0, 0);
        // Use up the carve-out so that the domain's tables go into donated pages.
        let mut hog = Vec::new();
        let mut p = w.pool.clone();
        while let Some(pa) = p.alloc_zeroed(4096, 4096) {
            hog.push(pa);
        }
        let donated = HOST_BASE + 6 * MB;
        // The host leaves its own data in the pages it donates.
        for i in 0..8 * PAGE / 8 {
            w.ram.write_u64(donated + i * 8, 0x1234_5678_0000_0000 | i);
        }
        w.ram.clean(donated, 8 * PAGE as usize);
        w.donate(donated, 8).unwrap();
        assert_eq!(w.map(d, 0x4000_0000, HP, PAGE), Ok(PAGE));
        let tables: Vec<u64> = (0..8)
            .map(|i| donated + i * PAGE)
            .filter(|&a| w.pool.is_live(a))
            .collect();
        assert!(!tables.is_empty(), "tables went into donated pages");
        // The domain goes away: its tables are freed (the pool poisons freed memory).
        w.attach(domain::HOST, 0, SID).unwrap();
        w.free(d).unwrap();
        let mut back = Vec::new();
        while let Ok((pa, n)) = w.reclaim(8) {
            back.push((pa, n));
        }
        let got: u64 = back.iter().map(|&(_, n)| n).sum();
        assert!(
            got >= tables.len() as u64,
            "the table pages came back: {back:?}"
        );
        for (pa, n) in back {
            for a in (pa..pa + n * PAGE).step_by(8) {
                assert_eq!(
                    w.ram.read_u64(a),
                    0,
                    "CPU view of {a:#x} (coherent {coherent})"
                );
                assert_eq!(
                    w.ram.mem_read_u64(a),
                    0,
                    "memory at {a:#x} (coherent {coherent})"
                );
            }
        }
        for pa in hog {
            // SAFETY: allocated above, never used.
            unsafe { p.free(pa, 4096) };
        }
    }
}

/// A MEM_RECLAIM zeroes and cleans its run with the host lock held: it returns at most
/// `max_map_bytes` per call, like MAP, whatever the host asks for (here 64 KiB: 16 pages).
#[test]
fn one_reclaim_returns_at_most_max_map_bytes() {
    let w = World::new(Opts {
        cfg: Config {
            max_map_bytes: 0x1_0000,
            ..Config::default()
        },
        ..Opts::default()
    });
    let donated = HOST_BASE + 4 * MB;
    w.donate(donated, 64).unwrap();
    let mut total = 0;
    while let Ok((pa, n)) = w.reclaim(64) {
        assert!(n <= 16, "one MEM_RECLAIM gave back {n} pages at {pa:#x}");
        total += n;
    }
    assert_eq!(total, 64, "every donated page came back, 16 at a time");
}
