//! `cargo xtask bench`: Warden side by side with what one would use instead (issue 9).
//! Runs the sections, prints a table per section, writes `target/bench/report.md` and
//! one SVG bar chart per measured section, and fails only on deterministic checks.
//!
//! Sections: 1 `s2` stage-2 tables vs aarch64-paging ([`s2`]); 2 `core` the hypercall
//! core on the models ([`dispatch`]); 3 `blk` Linux block I/O in QEMU ([`blk`]);
//! 4 `footprint` (what Warden reports of its memory use, [`footprint`]).

mod blk;
mod dispatch;
mod footprint;
mod report;
mod s2;

use std::path::PathBuf;

use anyhow::{Result, bail};

use crate::util::{self, say, show, write_atomic};
use report::Section;

/// The sections, by `--only` name, in report order.
pub const SECTIONS: [&str; 4] = ["s2", "core", "blk", "footprint"];

/// Options of `cargo xtask bench`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Options {
    /// Few rounds and a tiny I/O count (for CI: checks, not figures).
    pub quick: bool,
    /// Only these sections (empty: all).
    pub only: Vec<String>,
}

impl Options {
    /// Adds `--only` names (comma-separated), rejecting unknown ones.
    pub fn add_only(&mut self, list: &str) -> Result<()> {
        for name in list.split(',').filter(|s| !s.is_empty()) {
            if !SECTIONS.contains(&name) {
                bail!(
                    "bench --only: unknown section '{name}' (sections: {})",
                    SECTIONS.join(", ")
                );
            }
            self.only.push(name.to_string());
        }
        Ok(())
    }

    fn wants(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == name)
    }
}

/// Where the report and charts go.
pub fn out_dir() -> PathBuf {
    util::target_dir().join("bench")
}

fn print_section(s: &Section) {
    println!("\n== {}", s.title);
    if !s.header.is_empty() {
        print!("{}", report::text_table(&s.header, &s.rows));
    } else if !s.about.is_empty() {
        println!("{}", s.about);
    }
    for n in &s.notes {
        println!("  {n}");
    }
}

/// Runs `cargo xtask bench`; `Ok(false)` when a deterministic check failed.
pub fn run(o: &Options) -> Result<bool> {
    let dir = out_dir();
    std::fs::create_dir_all(&dir)?;
    let rounds = if o.quick { 1 } else { 3 };
    let mut sections = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    let mut record = |name: &str, r: Result<(Section, Vec<String>)>| match r {
        Ok((s, f)) => {
            print_section(&s);
            failures.extend(f);
            sections.push(s);
        }
        Err(e) => {
            let msg = format!("section {name} could not run: {e:#}");
            println!("\n== {msg}");
            errors.push(msg);
        }
    };
    if o.wants("s2") {
        record("s2", s2::run(rounds, &dir));
    }
    if o.wants("core") {
        record("core", dispatch::run(rounds, &dir));
    }
    if o.wants("blk") {
        record("blk", blk::run(o.quick, rounds, &dir));
    }
    if o.wants("footprint") {
        record("footprint", footprint::run(&dir));
    }

    let mut md = String::from("# Warden benchmarks (`cargo xtask bench`)\n\n");
    if o.quick {
        md.push_str("Quick run (`--quick`): one round, tiny I/O counts; figures are not representative.\n\n");
    }
    for s in &sections {
        md.push_str(&report::markdown(s));
        if let Some(c) = &s.chart {
            write_atomic(
                &dir.join(format!("{}.svg", s.id)),
                report::svg(c).as_bytes(),
            )?;
        }
    }
    if !failures.is_empty() || !errors.is_empty() {
        md.push_str("## Checks that failed\n\n");
        for f in failures.iter().chain(&errors) {
            md.push_str(&format!("- {f}\n"));
        }
    }
    let path = dir.join("report.md");
    write_atomic(&path, md.as_bytes())?;
    println!();
    say(format!("wrote {} and the charts beside it", show(&path)));
    if failures.is_empty() && errors.is_empty() {
        say("bench: every deterministic check passed");
        return Ok(true);
    }
    for f in failures.iter().chain(&errors) {
        say(format!("bench: FAILED: {f}"));
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_takes_known_sections() {
        let mut o = Options::default();
        o.add_only("s2,blk").unwrap();
        assert_eq!(o.only, ["s2", "blk"]);
        assert!(o.wants("s2") && !o.wants("core"));
        assert!(o.add_only("nope").is_err());
        assert!(Options::default().wants("footprint"));
    }
}
