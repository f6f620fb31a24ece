//! `blkbench`: a static Linux aarch64 program (no libc, raw system calls) for
//! `cargo xtask bench` section 3:
//!
//! ```text
//! blkbench DEVICE OPS [SEED]
//! ```
//!
//! opens DEVICE with `O_DIRECT`, does OPS random 4 KiB reads, then OPS random 4 KiB
//! writes (4 KiB-aligned offsets drawn from a xorshift generator over the whole device),
//! and prints
//!
//! ```text
//! blkbench: read ops=N ns=T
//! blkbench: write ops=N ns=T
//! blkbench: ok
//! ```
//!
//! with `CLOCK_MONOTONIC` nanoseconds per phase, or `blkbench: FAIL <why>` and exit
//! status 1. Built for `aarch64-unknown-none` (see build.rs); on the host it is an empty
//! program.

#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod linux {
    use core::arch::{asm, global_asm};

    const SYS_OPENAT: u64 = 56;
    const SYS_LSEEK: u64 = 62;
    const SYS_WRITE: u64 = 64;
    const SYS_PREAD64: u64 = 67;
    const SYS_PWRITE64: u64 = 68;
    const SYS_EXIT_GROUP: u64 = 94;
    const SYS_CLOCK_GETTIME: u64 = 113;
    const AT_FDCWD: i64 = -100;
    const O_RDWR: u64 = 2;
    /// arm64's value (it differs between architectures).
    const O_DIRECT: u64 = 0o200000;
    const SEEK_END: u64 = 2;
    const CLOCK_MONOTONIC: u64 = 1;
    const BLOCK: usize = 4096;

    /// The one I/O buffer: `O_DIRECT` wants it aligned to the logical block size.
    #[repr(C, align(4096))]
    struct Buf([u8; BLOCK]);
    static mut BUF: Buf = Buf([0; BLOCK]);

    // Entry: the kernel leaves argc at [sp], argv after it; sp is 16-byte aligned.
    global_asm!(
        ".section .text._start, \"ax\"",
        ".global _start",
        "_start:",
        "    mov x0, sp",
        "    bl {main}",
        main = sym start,
    );

    /// A system call with up to four arguments; returns x0 (negative errno on error).
    fn syscall(nr: u64, a: u64, b: u64, c: u64, d: u64) -> i64 {
        let ret: i64;
        // SAFETY: a Linux system call touches only the memory its arguments name; the
        // callers pass valid buffers and lengths.
        unsafe {
            asm!("svc #0", in("x8") nr, inlateout("x0") a as i64 => ret,
                 in("x1") b, in("x2") c, in("x3") d, options(nostack));
        }
        ret
    }

    fn write_all(s: &[u8]) {
        let _ = syscall(SYS_WRITE, 1, s.as_ptr() as u64, s.len() as u64, 0);
    }

    fn exit(code: u64) -> ! {
        let _ = syscall(SYS_EXIT_GROUP, code, 0, 0, 0);
        loop {
            core::hint::spin_loop();
        }
    }

    /// A line under construction (no allocator).
    struct Line {
        buf: [u8; 160],
        len: usize,
    }

    impl Line {
        fn new() -> Self {
            Self {
                buf: [0; 160],
                len: 0,
            }
        }
        fn s(&mut self, s: &[u8]) -> &mut Self {
            for &b in s {
                if self.len < self.buf.len() {
                    self.buf[self.len] = b;
                    self.len += 1;
                }
            }
            self
        }
        fn n(&mut self, mut v: u64) -> &mut Self {
            let mut digits = [0u8; 20];
            let mut i = digits.len();
            loop {
                i -= 1;
                digits[i] = b'0' + (v % 10) as u8;
                v /= 10;
                if v == 0 {
                    break;
                }
            }
            self.s(&digits[i..])
        }
        fn put(&mut self) {
            self.s(b"\n");
            write_all(&self.buf[..self.len]);
        }
    }

    fn fail(why: &[u8], err: i64) -> ! {
        let mut l = Line::new();
        l.s(b"blkbench: FAIL ").s(why);
        if err < 0 {
            l.s(b" (errno ").n(err.unsigned_abs()).s(b")");
        }
        l.put();
        exit(1)
    }

    fn cstr_len(p: *const u8) -> usize {
        let mut n = 0;
        // SAFETY: argv strings are NUL-terminated; stop at 4096 to stay bounded.
        while n < 4096 && unsafe { p.add(n).read() } != 0 {
            n += 1;
        }
        n
    }

    fn parse(p: *const u8) -> Option<u64> {
        let len = cstr_len(p);
        if len == 0 {
            return None;
        }
        let mut v: u64 = 0;
        for i in 0..len {
            // SAFETY: `i < len`, inside the string.
            let c = unsafe { p.add(i).read() };
            if !c.is_ascii_digit() {
                return None;
            }
            v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
        }
        Some(v)
    }

    fn now_ns() -> u64 {
        let mut ts = [0u64; 2];
        let r = syscall(
            SYS_CLOCK_GETTIME,
            CLOCK_MONOTONIC,
            ts.as_mut_ptr() as u64,
            0,
            0,
        );
        if r < 0 {
            fail(b"clock_gettime", r);
        }
        ts[0] * 1_000_000_000 + ts[1]
    }

    fn next(state: &mut u64) -> u64 {
        let mut x = *state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *state = x;
        x
    }

    /// One phase: `ops` random block reads (`nr` = pread64) or writes (pwrite64).
    fn phase(fd: u64, nr: u64, ops: u64, blocks: u64, seed: &mut u64, name: &[u8]) {
        let buf = (&raw mut BUF) as u64;
        let t0 = now_ns();
        for i in 0..ops {
            let off = (next(seed) % blocks) * BLOCK as u64;
            if nr == SYS_PWRITE64 {
                // A changing first word, so every write carries new data.
                // SAFETY: BUF is ours alone (one thread) and 4 KiB long.
                unsafe { (buf as *mut u64).write_volatile(i) };
            }
            let r = syscall(nr, fd, buf, BLOCK as u64, off);
            if r != BLOCK as i64 {
                fail(name, r);
            }
        }
        let t = now_ns() - t0;
        Line::new()
            .s(b"blkbench: ")
            .s(name)
            .s(b" ops=")
            .n(ops)
            .s(b" ns=")
            .n(t)
            .put();
    }

    extern "C" fn start(sp: *const u64) -> ! {
        // SAFETY: the kernel's initial stack: argc, then argc argv pointers.
        let argc = unsafe { sp.read() };
        if argc < 3 {
            fail(b"usage: blkbench DEVICE OPS [SEED]", 0);
        }
        // SAFETY: argc >= 3 argv entries follow argc.
        let arg = |i: usize| unsafe { sp.add(1 + i).read() as *const u8 };
        let Some(ops) = parse(arg(2)) else {
            fail(b"OPS is not a number", 0)
        };
        let mut seed = if argc > 3 {
            parse(arg(3)).unwrap_or(1)
        } else {
            1
        };
        seed |= 1;
        let fd = syscall(
            SYS_OPENAT,
            AT_FDCWD as u64,
            arg(1) as u64,
            O_RDWR | O_DIRECT,
            0,
        );
        if fd < 0 {
            fail(b"cannot open the device", fd);
        }
        let fd = fd as u64;
        let size = syscall(SYS_LSEEK, fd, 0, SEEK_END, 0);
        if size < BLOCK as i64 {
            fail(b"cannot size the device", size);
        }
        let blocks = size as u64 / BLOCK as u64;
        phase(fd, SYS_PREAD64, ops, blocks, &mut seed, b"read");
        phase(fd, SYS_PWRITE64, ops, blocks, &mut seed, b"write");
        write_all(b"blkbench: ok\n");
        exit(0)
    }

    #[panic_handler]
    fn panic(_: &core::panic::PanicInfo) -> ! {
        fail(b"panic", 0)
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "blkbench is a Linux aarch64 program: `cargo xtask bench` packs it into the bench initramfs"
    );
}
