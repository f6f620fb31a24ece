//! `cargo xtask abi-header [--check]`: writes the C header of the hypercall ABI,
//! `host-abi/include/warden_abi.h`, from the constants of the `host-abi` crate
//! (`host_abi::table::GROUPS`, which the macros that define the constants fill in).
//!
//! The header is checked in. The unit tests below regenerate it in memory and compare it
//! with the committed file, so `cargo xtask test` fails when `host-abi` changes without
//! `cargo xtask abi-header`; they also compile it with gcc, run a C program that prints
//! every constant, and build and run the worked example of `docs/abi.md` against a fake
//! hypervisor.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use host_abi::table::{Const, GROUPS, Group, Style};

use anyhow::{Result, bail};

use crate::util::{self, say, show};

/// The header, relative to the workspace root.
pub const HEADER: &str = "host-abi/include/warden_abi.h";

/// The header's path.
pub fn header_path() -> PathBuf {
    util::root().join(HEADER)
}

/// `cargo xtask abi-header [--check]`.
pub fn cmd(args: &[String]) -> Result<ExitCode> {
    let check = match args {
        [] => false,
        [a] if a == "--check" => true,
        _ => bail!("usage: cargo xtask abi-header [--check]"),
    };
    let path = header_path();
    let want = header();
    let have = std::fs::read_to_string(&path).ok();
    if have.as_deref() == Some(want.as_str()) {
        say(format!("{} is up to date", show(&path)));
        return Ok(ExitCode::SUCCESS);
    }
    if check {
        say(format!(
            "{} is out of date with host-abi: run `cargo xtask abi-header`",
            show(&path)
        ));
        return Ok(ExitCode::FAILURE);
    }
    util::write_atomic(&path, want.as_bytes())?;
    say(format!("wrote {}", show(&path)));
    Ok(ExitCode::SUCCESS)
}

/// The C value of a constant.
fn c_value(g: &Group, c: &Const) -> String {
    if c.name.ends_with("_SHIFT") {
        // A bit position: a plain int, usable in any shift.
        return c.value.to_string();
    }
    match g.style {
        Style::Hex if c.ty == "u32" => format!("0x{:08X}UL", c.value),
        Style::Hex => format!("0x{:02X}UL", c.value),
        Style::Bits if c.value.is_power_of_two() => {
            format!("(1UL << {})", c.value.trailing_zeros())
        }
        Style::Bits => format!("0x{:X}UL", c.value),
        Style::Dec => format!("{}UL", c.value),
        Style::Signed => format!("({}L)", c.signed()),
    }
}

/// A group's doc comment as a block comment, wrapped at 80 columns.
fn c_block_comment(out: &mut String, doc: &[&str]) {
    let text = doc.iter().map(|l| l.trim()).collect::<Vec<_>>().join(" ");
    out.push_str("/*\n");
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > 77 {
            let _ = writeln!(out, " * {line}");
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    let _ = writeln!(out, " * {line}\n */");
}

/// A constant's doc comment as a C comment (ASCII only).
fn c_comment(out: &mut String, doc: &[&str]) {
    let lines: Vec<String> = doc
        .iter()
        .map(|l| l.trim().replace('→', "->"))
        .filter(|l| !l.is_empty())
        .collect();
    match lines.as_slice() {
        [] => {}
        [one] => {
            let _ = writeln!(out, "/* {one} */");
        }
        many => {
            out.push_str("/*\n");
            for l in many {
                let _ = writeln!(out, " * {l}");
            }
            out.push_str(" */\n");
        }
    }
}

const PREAMBLE: &str = "\
/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * warden_abi.h - Warden's hypercall ABI v{MAJOR} (revision {MAJOR}.{MINOR}) for C clients.
 *
 * GENERATED FILE, DO NOT EDIT: written by `cargo xtask abi-header` from the
 * constants of the host-abi crate (host-abi/src/lib.rs, host_abi::table::GROUPS),
 * the single source of truth. The contract behind the values is docs/abi.md.
 *
 * Calling convention: SMCCC 1.1 fast calls over HVC #0 (or SMC #0, trapped by
 * Warden). Function ID in w0, arguments in x1..x6, status in x0 (0 or a negative
 * WARDEN_ERR_*), results in x1..x3; x4..x17 are preserved.
 */

#ifndef WARDEN_ABI_H
#define WARDEN_ABI_H

#ifdef __KERNEL__
#include <linux/types.h>
#else
#include <stdint.h>
#endif
";

const HELPERS: &str = "\
/*
 * Helpers.
 */

/* The endpoint (ATTACH x2) of StreamID `sid` behind SMMU number `smmu`. */
static inline uint64_t warden_endpoint(uint32_t smmu, uint32_t sid)
{
\treturn ((uint64_t)smmu << WARDEN_ENDPOINT_SMMU_SHIFT) | sid;
}

/* The SMMU index of an endpoint (ATTACH x2, EVENT_POLL x1). */
static inline uint32_t warden_endpoint_smmu(uint64_t ep)
{
\treturn (uint32_t)(ep >> WARDEN_ENDPOINT_SMMU_SHIFT);
}

/* The StreamID of an endpoint (ATTACH x2, EVENT_POLL x1). */
static inline uint32_t warden_endpoint_sid(uint64_t ep)
{
\treturn (uint32_t)(ep & WARDEN_ENDPOINT_SID_MASK);
}

/* DOMAIN_ALLOC's granule field for a granule of 2^log2 bytes (12, 14, 16). */
static inline uint64_t warden_domain_granule(unsigned int log2)
{
\treturn ((uint64_t)log2 & WARDEN_DOMAIN_FLAG_GRANULE_MASK)
\t       << WARDEN_DOMAIN_FLAG_GRANULE_SHIFT;
}

/* One field of FEATURES' x3, e.g. (x3, WARDEN_FEATURES_LIMIT_IAS_SHIFT,
 * WARDEN_FEATURES_LIMIT_IAS_MASK). */
static inline uint64_t warden_features_limit(uint64_t x3, unsigned int shift,
\t\t\t\t\t     uint64_t mask)
{
\treturn (x3 >> shift) & mask;
}

/* Whether a status (x0) is an error: every error code is negative. */
static inline int warden_is_error(uint64_t x0)
{
\treturn (int64_t)x0 < 0;
}

#endif /* WARDEN_ABI_H */
";

/// The status of a successful call (SMCCC: zero).
const SUCCESS: &str = "WARDEN_SUCCESS";

/// The header's text.
pub fn header() -> String {
    use host_abi::smccc::{REVISION_MAJOR, REVISION_MINOR};
    let mut out = PREAMBLE
        .replace("{MAJOR}", &REVISION_MAJOR.to_string())
        .replace("{MINOR}", &REVISION_MINOR.to_string());
    for g in GROUPS {
        out.push('\n');
        c_block_comment(&mut out, g.doc);
        out.push('\n');
        let names: Vec<String> = g.consts.iter().map(|c| g.c_name(c).to_string()).collect();
        let mut width = names.iter().map(String::len).max().unwrap_or(0);
        if g.style == Style::Signed {
            width = width.max(SUCCESS.len());
            let _ = writeln!(out, "/* Success. */\n#define {SUCCESS:<width$} 0L");
        }
        for (c, name) in g.consts.iter().zip(&names) {
            c_comment(&mut out, c.doc);
            let _ = writeln!(out, "#define {name:<width$} {}", c_value(g, c));
        }
    }
    out.push('\n');
    out.push_str(HELPERS);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::process::Command;

    /// A scratch directory for one test.
    fn scratch(name: &str) -> PathBuf {
        let dir = util::target_dir()
            .join("xtask-abi")
            .join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// gcc with the strict flags every compile here uses.
    fn gcc() -> Command {
        let mut cmd = Command::new("gcc");
        cmd.args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic"]);
        cmd.arg("-I").arg(header_path().parent().unwrap());
        cmd
    }

    fn compile_and_run(dir: &Path, source: &str) -> String {
        let c = dir.join("prog.c");
        let exe = dir.join("prog");
        std::fs::write(&c, source).unwrap();
        util::output(gcc().arg("-o").arg(&exe).arg(&c)).expect("gcc");
        let out = util::output(&mut Command::new(&exe)).expect("run");
        let _ = std::fs::remove_dir_all(dir);
        out
    }

    #[test]
    fn committed_header_is_up_to_date() {
        let path = header_path();
        let have = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}: run `cargo xtask abi-header`", path.display()));
        let want = header();
        if have != want {
            let line = have
                .lines()
                .zip(want.lines())
                .position(|(a, b)| a != b)
                .map_or_else(|| "the end".to_string(), |n| format!("line {}", n + 1));
            panic!(
                "{HEADER} differs from what host-abi generates (first at {line}): \
                 run `cargo xtask abi-header` and commit the result"
            );
        }
    }

    #[test]
    fn header_is_ascii_and_guarded() {
        let h = header();
        assert!(h.is_ascii());
        assert!(h.contains("GENERATED FILE, DO NOT EDIT"));
        assert!(h.contains("#ifndef WARDEN_ABI_H\n#define WARDEN_ABI_H\n"));
        assert!(h.trim_end().ends_with("#endif /* WARDEN_ABI_H */"));
        assert!(h.contains("#define WARDEN_FN_MAP          0xC6000004UL\n"));
        assert!(h.contains("#define WARDEN_ERR_INVALID       (-2L)\n"));
        assert!(h.contains("#define WARDEN_DOMAIN_FLAG_BATCHED       (1UL << 0)\n"));
        assert!(h.contains("#define WARDEN_FEATURES_LIMIT_OAS_SHIFT       32\n"));
        assert!(h.contains("#define WARDEN_STATS_PAGES             2UL\n"));
    }

    #[test]
    fn header_compiles_with_gcc() {
        for std in ["-std=c11", "-std=c99", "-std=gnu89"] {
            let mut cmd = Command::new("gcc");
            cmd.args(["-fsyntax-only", "-Wall", "-Werror", std, "-x", "c"]);
            if std == "-std=c11" {
                cmd.args(["-Wextra", "-pedantic"]);
            }
            util::output(cmd.arg(header_path())).expect("header does not compile");
        }
        if util::have("g++") {
            let mut cmd = Command::new("g++");
            cmd.args(["-fsyntax-only", "-Wall", "-Wextra", "-Werror", "-x", "c++"]);
            util::output(cmd.arg(header_path())).expect("header does not compile as C++");
        }
    }

    /// Every constant, printed by C, has the value host-abi gives it; so do the helpers.
    #[test]
    fn c_program_prints_the_abi_values() {
        let mut prog =
            String::from("#include <stdio.h>\n#include <warden_abi.h>\n\nint main(void)\n{\n");
        let mut want = String::new();
        for g in GROUPS {
            for c in g.consts {
                let name = g.c_name(c);
                if g.style == Style::Signed {
                    let _ = writeln!(prog, "\tprintf(\"{name} %lld\\n\", (long long){name});");
                    let _ = writeln!(want, "{name} {}", c.signed());
                } else {
                    let _ = writeln!(
                        prog,
                        "\tprintf(\"{name} %llu\\n\", (unsigned long long){name});"
                    );
                    let _ = writeln!(want, "{name} {}", c.value);
                }
            }
        }
        // The helpers against their Rust twins, and errors against a raw x0.
        let p = |s: &str| format!("\tprintf(\"%llu\\n\", (unsigned long long)({s}));\n");
        prog += &p("warden_endpoint(3, 0x42)");
        prog += &p("warden_endpoint(0xffffffffu, 0xfffffffeu)");
        prog += &p("warden_endpoint_smmu(0x500000010ULL)");
        prog += &p("warden_endpoint_sid(0x500000010ULL)");
        prog += &p("warden_domain_granule(14)");
        prog += &p("WARDEN_DOMAIN_FLAG_BATCHED | warden_domain_granule(16)");
        prog += &p(
            "warden_features_limit(0x2C30100004ULL, WARDEN_FEATURES_LIMIT_IAS_SHIFT, \
             WARDEN_FEATURES_LIMIT_IAS_MASK)",
        );
        prog += &p("(int64_t)0xFFFFFFFFFFFFFFFEULL == WARDEN_ERR_INVALID");
        prog += &p("warden_is_error(0xFFFFFFFFFFFFFFF8ULL)");
        prog += &p("warden_is_error(0)");
        prog += &p("WARDEN_FN_MAP == 0xC6000004u");
        prog += "\treturn 0;\n}\n";
        use host_abi::{domain_flags, endpoint, endpoint_sid, endpoint_smmu, features};
        for v in [
            endpoint(3, 0x42),
            endpoint(0xffff_ffff, 0xffff_fffe),
            endpoint_smmu(0x5_0000_0010).into(),
            endpoint_sid(0x5_0000_0010).into(),
            domain_flags::granule(14),
            domain_flags::BATCHED | domain_flags::granule(16),
            features::limit(
                0x2C_3010_0004,
                features::LIMIT_IAS_SHIFT,
                features::LIMIT_IAS_MASK,
            ),
            1,
            1,
            0,
            1,
        ] {
            let _ = writeln!(want, "{v}");
        }
        // A few values by their Rust paths, not through the table.
        for (name, v) in [
            ("WARDEN_FN_MAP", u64::from(host_abi::func::MAP)),
            ("WARDEN_SMCCC_VERSION", u64::from(host_abi::smccc::VERSION)),
            (
                "WARDEN_DOMAIN_FLAG_BATCHED",
                host_abi::domain_flags::BATCHED,
            ),
            ("WARDEN_STATS_PAGES", host_abi::stats::PAGES),
        ] {
            assert!(want.contains(&format!("\n{name} {v}\n")), "{name}");
        }
        assert!(want.contains(&format!(
            "\nWARDEN_ERR_INVALID {}\n",
            host_abi::Error::Invalid.to_reg() as i64
        )));

        let out = compile_and_run(&scratch("values"), &prog);
        for (n, (got, exp)) in out.lines().zip(want.lines()).enumerate() {
            assert_eq!(got, exp, "line {} of the C program's output", n + 1);
        }
        assert_eq!(out.lines().count(), want.lines().count());
    }

    /// The worked example of docs/abi.md: the C block after the marker, built and run
    /// against a fake Warden that maps and unmaps at most three pages per call and is
    /// short of memory once.
    #[test]
    fn docs_example_builds_and_runs() {
        let doc = std::fs::read_to_string(util::root().join("docs/abi.md")).unwrap();
        let marker = "<!-- example: built and run by xtask's abi tests -->";
        let rest = &doc[doc.find(marker).expect("example marker") + marker.len()..];
        let start = rest.find("```c\n").expect("```c") + 5;
        let example = &rest[start..start + rest[start..].find("```").expect("```")];
        let prog = format!("{example}\n{FAKE_WARDEN}");
        let out = compile_and_run(&scratch("example"), &prog);
        assert_eq!(
            out.trim(),
            "example 0 maps 4 unmaps 3 flushes 1 donated 1 free 1"
        );
    }

    const FAKE_WARDEN: &str = r#"
/* ---- A fake Warden for the test ---- */
#include <stdio.h>
#include <stdlib.h>

static uint64_t maps, unmaps, flushes, donated, frees, mapped, attached = WARDEN_DOMAIN_HOST;
static int nomem_once = 1;

struct warden_res warden_call(uint32_t fn, uint64_t a1, uint64_t a2, uint64_t a3,
			      uint64_t a4, uint64_t a5)
{
	struct warden_res r = { 0, 0, 0, 0 };
	uint64_t chunk = 3 * 4096;
	(void)a2;
	switch (fn) {
	case WARDEN_FN_FEATURES:
		r.x1 = WARDEN_FEATURES_BATCHED;
		r.x2 = WARDEN_FEATURES_GRANULE_4K;
		r.x3 = 48UL << WARDEN_FEATURES_LIMIT_IAS_SHIFT;
		break;
	case WARDEN_FN_DOMAIN_ALLOC:
		if (a1 & ~WARDEN_DOMAIN_FLAG_ALL)
			abort();
		r.x1 = 2;
		break;
	case WARDEN_FN_ATTACH:
		if (warden_endpoint_sid(a2) != 0x10 || warden_endpoint_smmu(a2) != 0)
			abort();
		attached = a1;
		break;
	case WARDEN_FN_MAP:
		if (a1 != 2 || attached != 2 || a5 != (WARDEN_PROT_READ | WARDEN_PROT_WRITE) ||
		    a3 != 0x80000000 + mapped)
			abort();
		maps++;
		if (nomem_once) {
			nomem_once = 0;
			r.x0 = (uint64_t)WARDEN_ERR_NOMEM;
			break;
		}
		r.x1 = a4 < chunk ? a4 : chunk;
		mapped += r.x1;
		break;
	case WARDEN_FN_UNMAP:
		unmaps++;
		r.x1 = a3 < chunk ? a3 : chunk;
		mapped -= r.x1;
		break;
	case WARDEN_FN_FLUSH:
		flushes++;
		break;
	case WARDEN_FN_MEM_DONATE:
		if (a1 % WARDEN_MEM_PAGE_SIZE || a2 == 0)
			abort();
		donated++;
		break;
	case WARDEN_FN_DOMAIN_FREE:
		if (attached == a1 || mapped != 0)
			r.x0 = (uint64_t)WARDEN_ERR_BUSY;
		else
			frees++;
		break;
	default:
		r.x0 = (uint64_t)WARDEN_ERR_NOT_SUPPORTED;
	}
	return r;
}

uint64_t driver_alloc_pages(uint64_t pages)
{
	return pages ? 0x90000000 : 0;
}

int main(void)
{
	int64_t r = example(0, 0x10, 0x80000000, 8 * 4096);
	printf("example %lld maps %llu unmaps %llu flushes %llu donated %llu free %llu\n",
	       (long long)r, (unsigned long long)maps, (unsigned long long)unmaps,
	       (unsigned long long)flushes, (unsigned long long)donated,
	       (unsigned long long)frees);
	return 0;
}
"#;

    /// docs/abi.md names every call with its ID and every error with its code.
    #[test]
    fn docs_list_every_call_and_error() {
        let doc = std::fs::read_to_string(util::root().join("docs/abi.md")).unwrap();
        for g in GROUPS {
            for c in g.consts {
                match g.module {
                    "func" => {
                        let row = format!("| `{}` | `0x{:08X}` |", c.name, c.value);
                        assert!(doc.contains(&row), "docs/abi.md lacks the row {row}");
                    }
                    "Error" => {
                        let row = format!("| `{}` | {} |", c.name, c.signed());
                        assert!(doc.contains(&row), "docs/abi.md lacks the row {row}");
                    }
                    _ => {}
                }
            }
        }
    }
}
