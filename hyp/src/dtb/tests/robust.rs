//! Malformed input: every truncation and random mutations of every test DTB are parsed
//! and edited without panicking, and whatever succeeds is consistent.

use super::*;

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Parses and edits a possibly malformed blob; checks that whatever succeeds is
/// consistent. Panics only on a real bug.
fn exercise(blob: &[u8], out: &mut [u8]) {
    let parsed = Platform::parse(blob);
    let _ = device_nodes(blob);
    let carve = [r(0x7e00_0000, 0x10_0000)];
    let edits = HostDtbEdits {
        carve_outs: &carve,
        bootargs: Some("console=ttyAMA0"),
        initrd: Some(r(0x5800_0000, 0x2000)),
        disable_smmus: true,
        drop_modules: false,
        disable_nodes: &[0, 4, 8],
        refuse_spin_table: Some(0),
    };
    match build_host_dtb(blob, out, &edits) {
        Ok(n) => {
            assert!(
                Fdt::open(&out[..n]).is_ok(),
                "edited output must be a valid FDT"
            );
            if parsed.is_ok() {
                let _ = Platform::parse(&out[..n]).expect("an edit of a parsable DTB parses");
            }
        }
        Err(e) => {
            if parsed.is_ok() {
                // Only edit-specific failures are acceptable for a parsable blob.
                assert!(
                    matches!(e, DtbError::BadEdit(_) | DtbError::NoSpace { .. }),
                    "{e:?}"
                );
            }
        }
    }
}

/// Random mutations per DTB and kind; `WARDEN_DTB_FUZZ=<n>` runs more.
fn fuzz_rounds() -> usize {
    std::env::var("WARDEN_DTB_FUZZ")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400)
}

#[test]
fn malformed_input_never_panics() {
    let rounds = fuzz_rounds();
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let mut out = vec![0u8; 64 * 1024];
    for (_, dtb) in ALL {
        // Every truncation, with and without totalsize adjusted to match.
        for len in 0..dtb.len() {
            let mut b = dtb[..len].to_vec();
            assert!(Platform::parse(&b).is_err());
            if len >= 8 {
                b[4..8].copy_from_slice(&(len as u32).to_be_bytes());
                exercise(&b, &mut out);
            }
        }
        // Random byte flips anywhere, and concentrated in the header.
        for i in 0..rounds {
            let mut b = dtb.to_vec();
            for _ in 0..1 + rng.below(4) {
                let pos = if i.is_multiple_of(4) {
                    rng.below(HEADER_SIZE)
                } else {
                    rng.below(b.len())
                };
                b[pos] = rng.next() as u8;
            }
            exercise(&b, &mut out);
        }
        // Random 32-bit values in every header field and at structure offsets.
        for field in 1..10 {
            for v in [
                0,
                1,
                4,
                0x7fff_ffff,
                0xffff_ffff,
                dtb.len() as u32,
                dtb.len() as u32 + 4,
                rng.next() as u32,
            ] {
                let mut b = dtb.to_vec();
                b[field * 4..field * 4 + 4].copy_from_slice(&v.to_be_bytes());
                exercise(&b, &mut out);
            }
        }
        for _ in 0..rounds {
            let mut b = dtb.to_vec();
            let pos = rng.below(b.len() / 4) * 4;
            let v = [0xffff_ffffu32, 0, 1, 2, 3, 4, 9, 0x8000_0000][rng.below(8)];
            b[pos..pos + 4].copy_from_slice(&v.to_be_bytes());
            exercise(&b, &mut out);
        }
    }
    // Random garbage behind a valid-looking header.
    for _ in 0..rounds {
        let len = HEADER_SIZE + rng.below(512);
        let mut b: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        b[0..4].copy_from_slice(&FDT_MAGIC.to_be_bytes());
        b[4..8].copy_from_slice(&(len as u32).to_be_bytes());
        b[20..24].copy_from_slice(&17u32.to_be_bytes());
        b[24..28].copy_from_slice(&16u32.to_be_bytes());
        exercise(&b, &mut out);
    }
}
