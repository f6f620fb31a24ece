//! A writer for the "newc" cpio format (the one the Linux kernel unpacks as initramfs,
//! Documentation/driver-api/early-userspace/buffer-format.rst).
//!
//! Each entry: the ASCII magic `070701`, thirteen 8-digit hex fields (ino, mode, uid,
//! gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor, namesize,
//! check), the NUL-terminated name padded to 4 bytes, the data padded to 4 bytes.
//! The archive ends with an entry named `TRAILER!!!`. Output is deterministic
//! (mtime 0, uid/gid 0, inode numbers in order).

use std::collections::BTreeSet;

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// Builds a cpio archive in memory. Parent directories are created on demand.
#[derive(Default)]
pub struct Writer {
    buf: Vec<u8>,
    next_ino: u32,
    dirs: BTreeSet<String>,
    names: BTreeSet<String>,
}

impl Writer {
    pub fn new() -> Self {
        Self {
            next_ino: 1,
            ..Self::default()
        }
    }

    /// A directory (`path` without a leading slash, e.g. `lib/modules`).
    pub fn dir(&mut self, path: &str, perm: u32) {
        let path = clean(path);
        if self.dirs.contains(&path) {
            return;
        }
        self.parents(&path);
        self.dirs.insert(path.clone());
        self.entry(&path, S_IFDIR | perm, 2, (0, 0), b"");
    }

    /// A regular file.
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) {
        let path = clean(path);
        self.parents(&path);
        self.entry(&path, S_IFREG | perm, 1, (0, 0), data);
    }

    /// A symbolic link to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) {
        let path = clean(path);
        self.parents(&path);
        self.entry(&path, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes());
    }

    /// A character device node.
    pub fn char_dev(&mut self, path: &str, perm: u32, major: u32, minor: u32) {
        let path = clean(path);
        self.parents(&path);
        self.entry(&path, S_IFCHR | perm, 1, (major, minor), b"");
    }

    /// Appends the trailer and returns the archive.
    pub fn finish(mut self) -> Vec<u8> {
        self.next_ino = 0;
        self.raw_entry("TRAILER!!!", 0, 1, (0, 0), b"");
        self.buf
    }

    fn parents(&mut self, path: &str) {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent, 0o755);
        }
    }

    fn entry(&mut self, name: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) {
        assert!(
            self.names.insert(name.to_string()),
            "cpio: {name} added twice"
        );
        self.raw_entry(name, mode, nlink, rdev, data);
    }

    fn raw_entry(&mut self, name: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) {
        let ino = self.next_ino;
        self.next_ino += 1;
        let size = u32::try_from(data.len()).expect("cpio newc files are below 4 GiB");
        let fields = [
            ino,
            mode,
            0,
            0,
            nlink,
            0,
            size,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }
}

fn clean(path: &str) -> String {
    let p = path.trim_matches('/');
    assert!(!p.is_empty() && !p.split('/').any(|c| c.is_empty() || c == "." || c == ".."));
    p.to_string()
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
        w.char_dev("dev/console", 0o600, 5, 1);
        w.file("/init", 0o755, b"#!/bin/sh\n");
        w.file("lib/modules/virtio.ko", 0o644, &[1, 2, 3]);
        w.symlink("bin/sh", "busybox");
        w.dir("tmp", 0o1777);
        let entries = parse(&w.finish());
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
            w.file("a/b/c", 0o644, b"xyz");
            w.finish()
        };
        assert_eq!(build(), build());
    }

    #[test]
    #[should_panic(expected = "added twice")]
    fn duplicate_names_are_a_bug() {
        let mut w = Writer::new();
        w.file("x", 0o644, b"");
        w.file("x", 0o644, b"");
    }
}
