//! Small shared helpers: paths of the workspace, running commands, console text.
//!
//! Errors are `anyhow`'s: a message for the person at the terminal with its causes,
//! printed as one line (`{:#}`: "what failed: why").

use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// The workspace root (the parent of `xtask/`).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// Cargo's target directory (`CARGO_TARGET_DIR` or `<root>/target`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                root().join(dir)
            }
        }
        _ => root().join("target"),
    }
}

/// A path relative to the current directory when possible, for short messages.
pub fn show(path: &Path) -> String {
    let cwd = std::env::current_dir().unwrap_or_default();
    path.strip_prefix(&cwd)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Prints a progress message of xtask itself.
pub fn say(msg: impl fmt::Display) {
    eprintln!("xtask: {msg}");
}

/// `s` cut to `max` characters, with `…` when something was cut (for console lines).
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(max).collect::<String>())
    }
}

/// Splits `name: details` (a test image's `PASS`/`FAIL` line after the word) into
/// (name, details).
pub fn name_and_rest(s: &str) -> (String, String) {
    let end = s.find([':', ' ']).unwrap_or(s.len());
    let rest = s[end..].trim_start_matches(':').trim();
    (s[..end].to_string(), rest.to_string())
}

/// Every `0x…` number in a line (`_` separators allowed).
pub fn hex_numbers(line: &str) -> Vec<u64> {
    line.match_indices("0x")
        .filter_map(|(at, _)| {
            let digits: String = line[at + 2..]
                .chars()
                .take_while(|c| c.is_ascii_hexdigit() || *c == '_')
                .collect();
            u64::from_str_radix(&digits.replace('_', ""), 16).ok()
        })
        .collect()
}

/// A command line as it would be typed (for messages; a program given by its full path,
/// such as the `cargo` running us, is shown by its name).
pub fn describe(cmd: &Command) -> String {
    let program = Path::new(cmd.get_program());
    let mut s = program
        .file_name()
        .unwrap_or(program.as_os_str())
        .to_string_lossy()
        .into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&shell_quote(arg));
    }
    s
}

fn shell_quote(arg: &OsStr) -> String {
    let a = arg.to_string_lossy();
    let plain = !a.is_empty()
        && a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        a.into_owned()
    } else {
        format!("'{}'", a.replace('\'', r"'\''"))
    }
}

/// Runs a command with inherited stdio; fails unless it exits with status 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{}`", describe(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", describe(cmd));
    }
    Ok(())
}

/// Runs a command and returns its standard output; fails unless it exits with status 0.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start `{}`", describe(cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether a program can be started at all (`prog --version` runs).
pub fn have(prog: &str) -> bool {
    Command::new(prog)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Writes a file through a temporary name and a rename, so that readers never see half a
/// file and an interrupted run leaves the old one.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp-xtask");
    std::fs::write(&tmp, data).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_for_messages() {
        let mut cmd = Command::new("qemu");
        cmd.args(["-m", "2G", "-append", "a b", "it's"]);
        assert_eq!(describe(&cmd), r"qemu -m 2G -append 'a b' 'it'\''s'");
        assert_eq!(describe(&Command::new("/opt/rust/bin/cargo")), "cargo");
    }
}
