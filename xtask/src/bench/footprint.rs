//! Section 4: Warden's memory footprint, from what Warden itself reports.

use std::path::Path;

use anyhow::Result;

use super::report::Section;

/// Not measured yet: see the notes.
pub fn run(_dir: &Path) -> Result<(Section, Vec<String>)> {
    Ok((
        Section {
            id: "footprint".into(),
            title: "4. Footprint".into(),
            about: "Not yet measured.".into(),
            ..Default::default()
        },
        Vec::new(),
    ))
}
