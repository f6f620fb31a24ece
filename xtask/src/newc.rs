//! The initramfs as a "newc" cpio archive (the format the Linux kernel unpacks,
//! Documentation/driver-api/early-userspace/buffer-format.rst), built in memory.
//!
//! The `cpio` crate writes the entries (header, padded name, padded data, trailer); this
//! module owns what an initramfs needs on top: paths without a leading slash, parent
//! directories created on demand, each name once, and deterministic output (mtime 0,
//! uid/gid 0, inode numbers in order, the trailer's 0), so that the same inputs give the
//! same bytes and `target/initramfs.cpio` is rewritten only when its contents change.

use std::collections::BTreeSet;

use anyhow::{Context, Result, bail};
use cpio::newc;

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// Builds a newc archive in memory. Parent directories are created on demand.
#[derive(Default)]
pub struct Writer {
    buf: Vec<u8>,
    next_ino: u32,
    dirs: BTreeSet<String>,
    names: BTreeSet<String>,
}

impl Writer {
    /// An empty archive.
    pub fn new() -> Self {
        Self {
            next_ino: 1,
            ..Self::default()
        }
    }

    /// A directory (`path` without a leading slash, e.g. `lib/modules`).
    pub fn dir(&mut self, path: &str, perm: u32) -> Result<()> {
        let path = clean(path)?;
        if self.dirs.contains(&path) {
            return Ok(());
        }
        self.parents(&path)?;
        self.dirs.insert(path.clone());
        self.entry(&path, S_IFDIR | perm, 2, (0, 0), b"")
    }

    /// A regular file.
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> Result<()> {
        let path = clean(path)?;
        self.parents(&path)?;
        self.entry(&path, S_IFREG | perm, 1, (0, 0), data)
    }

    /// A symbolic link to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        let path = clean(path)?;
        self.parents(&path)?;
        self.entry(&path, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes())
    }

    /// A character device node.
    pub fn char_dev(&mut self, path: &str, perm: u32, major: u32, minor: u32) -> Result<()> {
        let path = clean(path)?;
        self.parents(&path)?;
        self.entry(&path, S_IFCHR | perm, 1, (major, minor), b"")
    }

    /// Appends the trailer and returns the archive.
    pub fn finish(self) -> Result<Vec<u8>> {
        newc::trailer(self.buf).context("cpio: cannot write the trailer")
    }

    fn parents(&mut self, path: &str) -> Result<()> {
        match path.rsplit_once('/') {
            Some((parent, _)) => self.dir(parent, 0o755),
            None => Ok(()),
        }
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> Result<()> {
        if !self.names.insert(name.to_string()) {
            bail!("cpio: {name} added twice");
        }
        let size = u32::try_from(data.len())
            .ok()
            .with_context(|| format!("cpio: {name} is 4 GiB or more (newc cannot hold it)"))?;
        let ino = self.next_ino;
        self.next_ino += 1;
        let mut w = newc::Builder::new(name)
            .ino(ino)
            .mode(mode)
            .nlink(nlink)
            .rdev_major(rdev.0)
            .rdev_minor(rdev.1)
            .write(std::mem::take(&mut self.buf), size);
        std::io::Write::write_all(&mut w, data).with_context(|| format!("cpio: {name}"))?;
        self.buf = w.finish().with_context(|| format!("cpio: {name}"))?;
        Ok(())
    }
}

fn clean(path: &str) -> Result<String> {
    let p = path.trim_matches('/');
    if p.is_empty() || p.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        bail!("cpio: '{path}' is not a plain relative path");
    }
    Ok(p.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One parsed entry: (name, mode, nlink, rdevmajor, rdevminor, data).
    type Entry = (String, u32, u32, u32, u32, Vec<u8>);

    /// A strict reader of what [`Writer`] produces.
    fn parse(mut buf: &[u8]) -> Vec<Entry> {
        let mut out = Vec::new();
        let total = buf.len();
        loop {
            assert_eq!((total - buf.len()) % 4, 0, "entries start 4-byte aligned");
            assert_eq!(&buf[..6], b"070701");
            let field = |i: usize| {
                u32::from_str_radix(
                    std::str::from_utf8(&buf[6 + 8 * i..14 + 8 * i]).unwrap(),
                    16,
                )
                .unwrap()
            };
            let (mode, nlink, size, namesize) = (field(1), field(4), field(6), field(11));
            let (rmaj, rmin) = (field(9), field(10));
            assert_eq!(field(5), 0, "mtime");
            let name_end = 110 + namesize as usize;
            assert_eq!(buf[name_end - 1], 0, "name is NUL-terminated");
            let name = String::from_utf8(buf[110..name_end - 1].to_vec()).unwrap();
            let data_start = name_end.div_ceil(4) * 4;
            let data = buf[data_start..data_start + size as usize].to_vec();
            let next = (data_start + size as usize).div_ceil(4) * 4;
            buf = &buf[next..];
            if name == "TRAILER!!!" {
                assert!(buf.is_empty(), "nothing after the trailer");
                return out;
            }
            out.push((name, mode, nlink, rmaj, rmin, data));
        }
    }

    #[test]
    fn round_trip() {
        let mut w = Writer::new();
        w.char_dev("dev/console", 0o600, 5, 1).unwrap();
        w.file("/init", 0o755, b"#!/bin/sh\n").unwrap();
        w.file("lib/modules/virtio.ko", 0o644, &[1, 2, 3]).unwrap();
        w.symlink("bin/sh", "busybox").unwrap();
        w.dir("tmp", 0o1777).unwrap();
        let entries = parse(&w.finish().unwrap());
        let names: Vec<_> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "dev",
                "dev/console",
                "init",
                "lib",
                "lib/modules",
                "lib/modules/virtio.ko",
                "bin",
                "bin/sh",
                "tmp"
            ]
        );
        let get = |n: &str| entries.iter().find(|e| e.0 == n).unwrap();
        assert_eq!(get("dev/console").1, 0o020_600);
        assert_eq!((get("dev/console").3, get("dev/console").4), (5, 1));
        assert_eq!(get("init").1, 0o100_755);
        assert_eq!(get("init").5, b"#!/bin/sh\n");
        assert_eq!(get("lib/modules/virtio.ko").5, [1, 2, 3]);
        assert_eq!(get("bin/sh").1, 0o120_777);
        assert_eq!(get("bin/sh").5, b"busybox");
        assert_eq!(get("tmp").1, 0o041_777);
        assert_eq!(get("lib").2, 2);
    }

    #[test]
    fn deterministic() {
        let build = || {
            let mut w = Writer::new();
            w.file("a/b/c", 0o644, b"xyz").unwrap();
            w.finish().unwrap()
        };
        assert_eq!(build(), build());
    }

    #[test]
    fn duplicate_names_and_odd_paths_are_refused() {
        let mut w = Writer::new();
        w.file("x", 0o644, b"").unwrap();
        let e = w.file("x", 0o644, b"").unwrap_err();
        assert!(format!("{e:#}").contains("added twice"), "{e:#}");
        for bad in ["", "/", "a//b", "a/./b", "../x"] {
            assert!(w.file(bad, 0o644, b"").is_err(), "{bad}");
        }
    }
}
