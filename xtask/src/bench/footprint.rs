//! Section 4: Warden's memory footprint, from what Warden itself reports: its boot log
//! (one Warden boot of the section 3 setup) and the table bytes its `Stage2` allocates
//! in `bench/s2peer`.

use std::path::Path;

use anyhow::{Context, Result};

use super::blk;
use super::report::Section;
use super::s2;

/// The figures Warden's boot log gives: heap used and total (KiB), pool and carve-out
/// sizes (MiB).
#[derive(Debug, Default, PartialEq)]
pub struct BootFigures {
    pub heap_used_kib: Option<u64>,
    pub heap_total_kib: Option<u64>,
    pub pool_mib: Option<u64>,
    pub carve_out_mib: Option<u64>,
}

/// The first size in `text` written as Warden's `ByteSize` writes it (`586.7 KiB`,
/// `34 MiB`, `512 bytes`), in KiB, rounded.
fn size_kib(text: &str) -> Option<u64> {
    const UNITS: [(&str, f64); 6] = [
        ("byte", 1.0 / 1024.0),
        ("bytes", 1.0 / 1024.0),
        ("KiB", 1.0),
        ("MiB", 1024.0),
        ("GiB", 1024.0 * 1024.0),
        ("TiB", 1024.0 * 1024.0 * 1024.0),
    ];
    let words: Vec<&str> = text.split_whitespace().collect();
    words.iter().enumerate().skip(1).find_map(|(i, w)| {
        let w = w.trim_end_matches([')', ';', ',']);
        let (_, scale) = UNITS.iter().find(|(u, _)| *u == w)?;
        let n: f64 = words[i - 1].trim_start_matches('(').parse().ok()?;
        Some((n * scale).round() as u64)
    })
}

/// Reads [`BootFigures`] from Warden's boot log lines.
pub fn parse_boot(log: &str) -> BootFigures {
    let mut f = BootFigures::default();
    for line in log.lines() {
        let Some(rest) = line.strip_prefix("warden: ") else {
            continue;
        };
        if let Some(h) = rest.strip_prefix("heap ") {
            let mut parts = h.split(" used of ");
            f.heap_used_kib = parts.next().and_then(size_kib);
            f.heap_total_kib = parts.next().and_then(size_kib);
        } else if rest.starts_with("pool ") {
            f.pool_mib = size_kib(rest).map(|k| k / 1024);
        } else if rest.starts_with("carve-out ") {
            f.carve_out_mib = size_kib(rest).map(|k| k / 1024);
        }
    }
    f
}

/// Runs the section.
pub fn run(dir: &Path) -> Result<(Section, Vec<String>)> {
    let mut s = Section {
        id: "footprint".into(),
        title: "4. Footprint".into(),
        about: "Warden's own figures: its boot log (a Warden boot of the section 3 \
                setup: 2 GiB, 2 vCPUs, one virtio-blk disk), and the table bytes \
                `hyp::s2mmu::Stage2` allocates for 1 GiB in `bench/s2peer`."
            .into(),
        header: ["figure", "value", "from"].map(String::from).to_vec(),
        ..Default::default()
    };
    let mut failures = Vec::new();
    // Stage-2 table bytes per GiB, beyond the root (the `range` and `2m` workloads map
    // exactly 1 GiB).
    for (work, what) in [("range", "4 KiB pages"), ("2m", "2 MiB blocks")] {
        let out = s2::run_plain("warden", work)?;
        let (Some(mapped), Some(empty)) = s2::table_bytes(&out) else {
            failures.push(format!("section 4: no table figures from s2peer {work}"));
            continue;
        };
        s.rows.push(vec![
            format!("stage-2 table bytes per GiB mapped as {what} (root excluded)"),
            (mapped - empty.min(mapped)).to_string(),
            format!("s2peer warden {work}"),
        ]);
    }
    let env = blk::prepare(dir)?;
    let log = dir.join("footprint-warden.log");
    let (output, _) = blk::boot(&env, &blk::CONFIGS[4], 16, 1, &log)
        .context("the Warden boot for the footprint")?;
    let f = parse_boot(&output);
    let show =
        |v: Option<u64>, unit: &str| v.map_or("not in the log".into(), |v| format!("{v} {unit}"));
    s.rows.push(vec![
        "heap used after boot".into(),
        show(f.heap_used_kib, "KiB"),
        "boot log `heap ... used of ...`".into(),
    ]);
    s.rows.push(vec![
        "heap size".into(),
        show(f.heap_total_kib, "KiB"),
        "boot log".into(),
    ]);
    s.rows.push(vec![
        "frame pool size".into(),
        show(f.pool_mib, "MiB"),
        "boot log `pool ...`".into(),
    ]);
    s.rows.push(vec![
        "carve-out (all of Warden's memory)".into(),
        show(f.carve_out_mib, "MiB"),
        "boot log `carve-out ...`".into(),
    ]);
    if f.heap_used_kib.is_none() {
        failures.push("section 4: Warden's boot log has no heap figure".into());
    }
    s.notes.push(
        "Missing: pool use after boot and the host stage-2's real table bytes (Warden \
         logs neither; STATS does not expose them to the host yet), and metadata bytes \
         per pinned page (no counter)."
            .into(),
    );
    Ok((s, failures))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_log_figures() {
        let log = "warden: carve-out 0x40200000..0x42600000 (36 MiB)\n\
                   warden: pool 0x40600000..0x42600000 (32 MiB)\n\
                   warden: heap 586 KiB used of 34816 KiB; starting the host\n";
        assert_eq!(
            parse_boot(log),
            BootFigures {
                heap_used_kib: Some(586),
                heap_total_kib: Some(34816),
                pool_mib: Some(32),
                carve_out_mib: Some(36),
            }
        );
        // As Warden writes sizes today (`ByteSize`: one decimal, the largest unit).
        let log = "warden: carve-out 0x4020_0000..0x4260_0000 (36 MiB)\n\
                   warden: pool 0x4060_0000..0x4260_0000 (32 MiB)\n\
                   warden: heap 586.7 KiB used of 34 MiB; starting the host\n";
        assert_eq!(
            parse_boot(log),
            BootFigures {
                heap_used_kib: Some(587),
                heap_total_kib: Some(34816),
                pool_mib: Some(32),
                carve_out_mib: Some(36),
            }
        );
        assert_eq!(size_kib("512 bytes"), Some(1));
        assert_eq!(size_kib("1.5 GiB"), Some(1536 * 1024));
        assert_eq!(size_kib("no size"), None);
        assert_eq!(parse_boot("nothing\n"), BootFigures::default());
    }
}
