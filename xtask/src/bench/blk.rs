//! Section 3: Linux block I/O in QEMU.

use std::path::Path;

use anyhow::Result;

use super::report::Section;

/// Not measured yet.
pub fn run(_quick: bool, _rounds: usize, _dir: &Path) -> Result<(Section, Vec<String>)> {
    Ok((
        Section {
            id: "blk".into(),
            title: "3. Linux block I/O in QEMU".into(),
            about: "Not yet measured.".into(),
            ..Default::default()
        },
        Vec::new(),
    ))
}
