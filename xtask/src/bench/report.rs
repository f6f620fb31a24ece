//! What `cargo xtask bench` prints and writes: statistics over rounds (median and
//! spread), text tables, `target/bench/report.md`, and one SVG bar chart per section
//! (drawn here, no plotting crate).

use std::fmt::Write as _;

/// Median and spread of one figure over the rounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stat {
    /// The statistics of `values`; `None` when there are none.
    pub fn of(values: &[f64]) -> Option<Self> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Self {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }

    /// `median (min..max)`, or the median alone when every round gave the same.
    pub fn show(&self, digits: usize) -> String {
        if self.min == self.max {
            format!("{:.digits$}", self.median)
        } else {
            format!(
                "{:.digits$} ({:.digits$}..{:.digits$})",
                self.median, self.min, self.max
            )
        }
    }
}

/// One section's results.
#[derive(Debug, Clone, Default)]
pub struct Section {
    /// File name stem of the chart (`target/bench/<id>.svg`) and `--only` name.
    pub id: String,
    pub title: String,
    /// Prose above the table (what was measured, how).
    pub about: String,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
    /// Lines below the table (checks, what is missing).
    pub notes: Vec<String>,
    /// The chart: bars (label, value), its value axis name, and reference lines.
    pub chart: Option<Chart>,
}

/// A horizontal bar chart.
#[derive(Debug, Clone, Default)]
pub struct Chart {
    pub title: String,
    pub axis: String,
    pub bars: Vec<(String, f64)>,
    /// Vertical reference lines: (value, label).
    pub marks: Vec<(f64, String)>,
}

/// A plain-text table with aligned columns.
pub fn text_table(header: &[String], rows: &[Vec<String>]) -> String {
    let cols = header.len();
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(cols) {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, w) in width.iter().enumerate() {
            let c = cells.get(i).map_or("", String::as_str);
            let pad = w - c.chars().count().min(*w);
            if i == 0 {
                s.push_str(c);
                s.push_str(&" ".repeat(pad));
            } else {
                s.push_str("  ");
                s.push_str(&" ".repeat(pad));
                s.push_str(c);
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(header);
    out.push('\n');
    out.push_str(&"-".repeat(width.iter().sum::<usize>() + 2 * cols.saturating_sub(1)));
    out.push('\n');
    for r in rows {
        out.push_str(&line(r));
        out.push('\n');
    }
    out
}

/// The section as Markdown (with a link to its chart when it has one).
pub fn markdown(s: &Section) -> String {
    let mut out = format!("## {}\n\n", s.title);
    if !s.about.is_empty() {
        out.push_str(&s.about);
        out.push_str("\n\n");
    }
    if !s.header.is_empty() {
        let cell = |c: &String| c.replace('|', "\\|");
        out.push_str(&format!(
            "| {} |\n",
            s.header.iter().map(cell).collect::<Vec<_>>().join(" | ")
        ));
        out.push_str(&format!("|{}\n", "---|".repeat(s.header.len())));
        for r in &s.rows {
            out.push_str(&format!(
                "| {} |\n",
                r.iter().map(cell).collect::<Vec<_>>().join(" | ")
            ));
        }
        out.push('\n');
    }
    for n in &s.notes {
        out.push_str(&format!("- {n}\n"));
    }
    if !s.notes.is_empty() {
        out.push('\n');
    }
    if s.chart.is_some() {
        out.push_str(&format!("![{}]({}.svg)\n\n", s.title, s.id));
    }
    out
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The chart as an SVG document: one horizontal bar per entry, its value printed at its
/// end, reference lines dashed.
pub fn svg(c: &Chart) -> String {
    const LABEL_W: f64 = 260.0;
    const PLOT_W: f64 = 440.0;
    const BAR_H: f64 = 22.0;
    const GAP: f64 = 8.0;
    const TOP: f64 = 52.0;
    let max = c
        .bars
        .iter()
        .map(|b| b.1)
        .chain(c.marks.iter().map(|m| m.0))
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    let max = if max > 0.0 { max * 1.15 } else { 1.0 };
    let x = |v: f64| LABEL_W + (v.max(0.0) / max) * PLOT_W;
    let height = TOP + c.bars.len() as f64 * (BAR_H + GAP) + 40.0;
    let width = LABEL_W + PLOT_W + 80.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="10" y="20" font-size="14" font-weight="bold">{}</text>"#,
        esc(&c.title)
    );
    for (i, (label, v)) in c.bars.iter().enumerate() {
        let y = TOP + i as f64 * (BAR_H + GAP);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            LABEL_W - 8.0,
            y + BAR_H * 0.7,
            esc(label)
        );
        let _ = writeln!(
            s,
            r##"<rect x="{LABEL_W}" y="{y}" width="{:.1}" height="{BAR_H}" fill="#4a7ebb"/>"##,
            x(*v) - LABEL_W
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}">{}</text>"#,
            x(*v) + 4.0,
            y + BAR_H * 0.7,
            esc(&short(*v))
        );
    }
    let bottom = TOP + c.bars.len() as f64 * (BAR_H + GAP);
    for (i, (v, label)) in c.marks.iter().enumerate() {
        // Alternate label heights so that close lines keep readable labels.
        let label_y = TOP - 8.0 - 11.0 * (i % 2) as f64;
        let _ = writeln!(
            s,
            r##"<line x1="{0:.1}" x2="{0:.1}" y1="{1}" y2="{bottom}" stroke="#c0392b" stroke-dasharray="4 3"/>"##,
            x(*v),
            TOP - 6.0
        );
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{}" fill="#c0392b" font-size="10">{}</text>"##,
            x(*v) + 2.0,
            label_y,
            esc(label)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{LABEL_W}" y="{}" fill="gray">{}</text>"#,
        bottom + 20.0,
        esc(&c.axis)
    );
    s.push_str("</svg>\n");
    s
}

/// A whole number with thousands separators: `37,491,562`.
pub fn grouped(v: f64) -> String {
    let digits = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0.0 { format!("-{out}") } else { out }
}

/// [`Stat::show`] for whole numbers, with thousands separators.
pub fn show_grouped(s: &Stat) -> String {
    if s.min == s.max {
        grouped(s.median)
    } else {
        format!(
            "{} ({}..{})",
            grouped(s.median),
            grouped(s.min),
            grouped(s.max)
        )
    }
}

/// A figure for a chart label: 3 significant digits.
fn short(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread() {
        let s = Stat::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Stat::of(&[4.0, 1.0]).unwrap().median, 2.5);
        assert_eq!(Stat::of(&[]), None);
        assert_eq!(Stat::of(&[5.0, 5.0]).unwrap().show(1), "5.0");
        assert_eq!(s.show(0), "2 (1..3)");
    }

    #[test]
    fn thousands() {
        assert_eq!(grouped(37_491_562.0), "37,491,562");
        assert_eq!(grouped(999.0), "999");
        assert_eq!(grouped(1000.0), "1,000");
        assert_eq!(grouped(0.0), "0");
        let s = Stat::of(&[1000.0, 3000.0, 2000.0]).unwrap();
        assert_eq!(show_grouped(&s), "2,000 (1,000..3,000)");
    }

    #[test]
    fn table_aligns_columns() {
        let t = text_table(
            &["a".into(), "bb".into()],
            &[vec!["xyz".into(), "1".into()]],
        );
        assert_eq!(t, "a    bb\n-------\nxyz   1\n");
    }

    #[test]
    fn chart_has_a_bar_per_entry_and_escapes() {
        let c = Chart {
            title: "t<1>".into(),
            axis: "x".into(),
            bars: vec![("a".into(), 1.0), ("b".into(), 2.0)],
            marks: vec![(0.7, "goal".into())],
        };
        let s = svg(&c);
        assert_eq!(s.matches("<rect x=").count(), 2);
        assert!(s.contains("t&lt;1&gt;"));
        assert!(s.contains("stroke-dasharray"));
        assert!(s.ends_with("</svg>\n"));
    }
}
