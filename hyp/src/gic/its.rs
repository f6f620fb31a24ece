//! One ITS, emulated.
//!
//! **Command queue.** The host's `GITS_CBASER` is a shadow: its queue (host-owned, pinned
//! while `GITS_CBASER` names it) is only ever read by Warden; the real `GITS_CBASER`
//! points at a 64 KiB queue in Warden memory. On a host write of `GITS_CWRITER`, each new
//! command is copied out of the host queue once, checked, and (if it passes) written to
//! Warden's queue; then the real `GITS_CWRITER` is written and Warden waits, bounded in
//! time, until the real `GITS_CREADR` has passed every command. Only then does the host's
//! `GITS_CREADR` move on. A refused command is skipped (the host's `GITS_CREADR` still
//! passes it) and logged. If the ITS does not finish in time (or stalls), the host's
//! `GITS_CREADR` stays at the first command not confirmed and Warden sends nothing more.
//!
//! | command | check |
//! |---|---|
//! | MAPD | DeviceID within `GITS_TYPER.Devbits` and the device table (else the ITS would ignore it: the pins must not change) |
//! | MAPD V=1 | `Size` within `GITS_TYPER.ID_bits`; the ITT (2^(Size+1) entries of `ITT_entry_size` bytes) host-owned → pinned |
//! | MAPD V=0 | — (the DeviceID's ITT pin is dropped once the command completed) |
//! | MAPC V=1, SYNC, MOVALL | RDbase names a real redistributor (address with `PTA`, else processor number) |
//! | MOVI, INT, CLEAR, MAPTI, MAPI, INV, INVALL, DISCARD | — |
//! | GICv4 (VMAPP, VMAPTI, VMOVP, …) and unknown opcodes | refused |
//!
//! An ITT pin lasts until a later MAPD for the same DeviceID (V=0, or V=1 with another
//! ITT) has completed; a pin whose release cannot be recorded, or whose command was not
//! confirmed, is kept for good.
//!
//! **Tables.** The ITS's device and collection tables hold the addresses it writes to
//! (a device table entry holds its ITT's address), so they must not be host-writable:
//! an accepted `GITS_BASER<n>` (host-owned range, Warden checks it) gets a zeroed table
//! of the same size in Warden memory (at most what the ITS's DeviceID or collection ID
//! bits can index), and the real register points there. The host reads back its own
//! address and size, with the attributes the ITS accepted and Indirect clear (Warden
//! refuses two-level tables: Linux then uses flat ones). Other tables (vPE, GICv4) read
//! as zero (Type 0: no table) and ignore writes. Writes
//! of `GITS_CBASER` or `GITS_BASER<n>` while the ITS is enabled or not quiescent are
//! ignored (the architecture makes them UNPREDICTABLE).

use super::regs::{FRAME, cmd, gits};
use super::{GicEnv, ProbeError, RdTargets, Width, log_once, merge, page_hull, part};
use crate::addr::PhysRange;
use alloc::vec::Vec;

/// Size of Warden's command queue for each ITS.
pub const QUEUE_SIZE: u64 = 0x1_0000;
/// How long Warden waits for the ITS to consume its commands (or to become quiescent).
pub const WAIT_MS: u64 = 1000;
/// Commands sent to the ITS at most before waiting for them (below the queue's 2047).
const BATCH: usize = 1024;
/// `GITS_TYPER` bits the host does not see (GICv4).
const HIDDEN_TYPER: u64 = gits::TYPER_VIRTUAL | gits::TYPER_VMOVP | gits::TYPER_VSGI;
/// `GITS_CBASER` bits that are not RES0.
const CBASER_MASK: u64 =
    gits::VALID | (7 << 59) | (7 << 53) | gits::CBASER_PA_MASK | gits::SH_MASK | gits::SIZE_MASK;

// Log-once flags.
const W_CBASER: u32 = 1 << 0;
const W_BASER: u32 = 1 << 1;
const W_ENABLED: u32 = 1 << 2;
const W_CMD: u32 = 1 << 3;
const W_MAPD: u32 = 1 << 4;
const W_TARGET: u32 = 1 << 5;
const W_STUCK: u32 = 1 << 6;
const W_VPE: u32 = 1 << 7;
const W_OTHER: u32 = 1 << 8;

/// Emulation state of one ITS.
pub struct Its {
    base: u64,
    /// The real `GITS_TYPER`.
    typer: u64,
    /// Warden's command queue (physical address) and its write offset.
    queue: u64,
    wr: u64,
    /// The ITS does not snoop Warden's queue: clean each command.
    queue_nc: bool,
    /// The host's view.
    cbaser: u64,
    cwriter: u64,
    creadr: u64,
    baser: [u64; gits::NR_BASER],
    /// The host's queue pages, pinned while `cbaser` names them.
    host_queue: Option<PhysRange>,
    /// Warden's tables behind the real `GITS_BASER<n>`: (address, allocation size).
    shadow: [Option<(u64, u64)>; gits::NR_BASER],
    /// Pinned ITT pages by DeviceID.
    itts: Vec<(u32, PhysRange)>,
    /// The ITS did not confirm commands in time: nothing more is sent.
    stuck: bool,
    warned: u32,
}

/// Why a command was refused.
type Refusal = &'static str;

impl Its {
    /// Takes over the ITS whose control frame is at `base` (see [`super::GicEmu::probe`]).
    pub fn take_over(env: &mut impl GicEnv, base: u64) -> Result<Self, ProbeError> {
        let typer = env.reg_read(base + gits::TYPER, Width::W64);
        let ctlr = env.reg_read(base + gits::CTLR, Width::W32);
        if ctlr & gits::CTLR_ENABLED != 0 {
            log::warn!("ITS {base:#x}: enabled by firmware; disabling it");
            env.reg_write(base + gits::CTLR, Width::W32, ctlr & !gits::CTLR_ENABLED);
        }
        if !wait(env, WAIT_MS, |env| {
            env.reg_read(base + gits::CTLR, Width::W32) & gits::CTLR_QUIESCENT != 0
        }) {
            return Err(ProbeError::ItsBusy);
        }
        let mut baser = [0; gits::NR_BASER];
        for (n, b) in baser.iter_mut().enumerate() {
            let reg = base + gits::BASER0 + 8 * n as u64;
            env.reg_write(reg, Width::W64, 0);
            let v = env.reg_read(reg, Width::W64);
            // The host sees only the tables it may have: a vPE table (GICv4) reads as
            // "no table" (Linux would otherwise try to set it up and give the ITS up).
            let ty = gits::baser_type(v);
            if ty == gits::TYPE_DEVICES || ty == gits::TYPE_COLLECTIONS {
                *b = v;
            }
        }
        let queue = env.alloc(QUEUE_SIZE, QUEUE_SIZE).ok_or(ProbeError::NoMem)?;
        let mut its = Self {
            base,
            typer,
            queue,
            wr: 0,
            queue_nc: false,
            cbaser: 0,
            cwriter: 0,
            creadr: 0,
            baser,
            host_queue: None,
            shadow: [None; gits::NR_BASER],
            itts: Vec::new(),
            stuck: false,
            warned: 0,
        };
        its.program_queue(env);
        Ok(its)
    }

    /// Points the real command queue at Warden's, empty.
    fn program_queue(&mut self, env: &mut impl GicEnv) {
        let v = self.queue
            | gits::VALID
            | gits::INNER_RAWAWB
            | gits::SH_INNER
            | (QUEUE_SIZE / 0x1000 - 1);
        env.reg_write(self.base + gits::CBASER, Width::W64, v);
        let rb = env.reg_read(self.base + gits::CBASER, Width::W64);
        self.queue_nc = rb & gits::SH_MASK == 0;
        env.clean(self.queue, QUEUE_SIZE);
        env.reg_write(self.base + gits::CWRITER, Width::W64, 0);
        self.wr = 0;
        self.stuck = false;
    }

    /// The control frame's physical address.
    pub const fn base(&self) -> u64 {
        self.base
    }

    /// Whether `pa` lies in the control frame.
    pub const fn contains(&self, pa: u64) -> bool {
        pa >= self.base && pa - self.base < FRAME
    }

    /// ITT pins currently held: (DeviceID, pages).
    pub fn itt_pins(&self) -> &[(u32, PhysRange)] {
        &self.itts
    }

    /// The host's queue pages, if pinned.
    pub const fn host_queue(&self) -> Option<PhysRange> {
        self.host_queue
    }

    /// Emulates an access at offset `off` of the control frame.
    pub fn access(
        &mut self,
        env: &mut impl GicEnv,
        targets: &RdTargets<'_>,
        off: u64,
        w: Width,
        write: Option<u64>,
    ) -> u64 {
        let reg = off & !7;
        let sub = off & 7;
        let real = self.base + off;
        let baser_end = gits::BASER0 + 8 * gits::NR_BASER as u64;
        match (reg, write) {
            (gits::CTLR, Some(v)) if off == gits::CTLR => {
                env.reg_write(real, w, v);
                self.process(env, targets);
                0
            }
            (gits::TYPER, None) => part(self.typer & !HIDDEN_TYPER, sub, w),
            (gits::TYPER, Some(_)) => 0,
            (gits::CBASER, None) => part(self.cbaser, sub, w),
            (gits::CBASER, Some(v)) => {
                let v = merge(self.cbaser, sub, w, v);
                self.write_cbaser(env, v);
                0
            }
            (gits::CWRITER, None) => part(self.cwriter, sub, w),
            (gits::CWRITER, Some(v)) => {
                let v = merge(self.cwriter, sub, w, v);
                self.write_cwriter(env, targets, v);
                0
            }
            (gits::CREADR, None) => part(self.creadr, sub, w),
            (gits::CREADR, Some(_)) => 0,
            (r, None) if (gits::BASER0..baser_end).contains(&r) => {
                part(self.baser[((r - gits::BASER0) / 8) as usize], sub, w)
            }
            (r, Some(v)) if (gits::BASER0..baser_end).contains(&r) => {
                let n = ((r - gits::BASER0) / 8) as usize;
                let v = merge(self.baser[n], sub, w, v);
                self.write_baser(env, n, v);
                0
            }
            _ if !gits::passthrough(off) => {
                let base = self.base;
                log_once(&mut self.warned, W_OTHER, || {
                    log::warn!(
                        "ITS {base:#x}: access to offset {off:#x} (not an architected register Warden passes on): read as zero, writes ignored (logged once)"
                    )
                });
                0
            }
            (_, None) => env.reg_read(real, w),
            (_, Some(v)) => {
                env.reg_write(real, w, v);
                0
            }
        }
    }

    /// Enabled, or not yet quiescent: table and queue registers must not change.
    fn busy(&self, env: &mut impl GicEnv) -> bool {
        let ctlr = env.reg_read(self.base + gits::CTLR, Width::W32);
        ctlr & gits::CTLR_ENABLED != 0 || ctlr & gits::CTLR_QUIESCENT == 0
    }

    fn enabled(&self, env: &mut impl GicEnv) -> bool {
        env.reg_read(self.base + gits::CTLR, Width::W32) & gits::CTLR_ENABLED != 0
    }

    fn write_cbaser(&mut self, env: &mut impl GicEnv, v: u64) {
        let base = self.base;
        if self.busy(env) {
            log_once(&mut self.warned, W_ENABLED, || {
                log::warn!("ITS {base:#x}: GITS_CBASER/BASER write while enabled: ignored")
            });
            return;
        }
        let v = v & CBASER_MASK;
        let range = if v & gits::VALID != 0 {
            let r = PhysRange::new(
                v & gits::CBASER_PA_MASK,
                ((v & gits::SIZE_MASK) + 1) * 0x1000,
            );
            if !env.pin(r) {
                log_once(&mut self.warned, W_CBASER, || {
                    log::error!(
                        "ITS {base:#x}: GITS_CBASER {v:#x}: the queue is not host-owned; refused"
                    )
                });
                return;
            }
            Some(r)
        } else {
            None
        };
        // Warden only reads the old queue, and not any more: its pin can go.
        if let Some(old) = self.host_queue.take() {
            env.unpin(old);
        }
        self.host_queue = range;
        self.cbaser = v;
        self.creadr = 0;
        self.cwriter = 0;
        self.program_queue(env);
    }

    fn write_cwriter(&mut self, env: &mut impl GicEnv, targets: &RdTargets<'_>, v: u64) {
        let off = v & gits::OFFSET_MASK;
        match self.host_queue {
            Some(q) if off < q.size => {}
            _ => return,
        }
        self.cwriter = off;
        self.process(env, targets);
    }

    /// Forwards the host's commands from `creadr` to `cwriter` (see the module docs).
    fn process(&mut self, env: &mut impl GicEnv, targets: &RdTargets<'_>) {
        let Some(q) = self.host_queue else {
            return;
        };
        if self.stuck || self.creadr == self.cwriter || !self.enabled(env) {
            return;
        }
        let mut pos = self.creadr;
        let mut release: Vec<PhysRange> = Vec::new();
        let mut sent = 0;
        while pos != self.cwriter {
            let mut c = [0u64; 4];
            for (i, w) in c.iter_mut().enumerate() {
                *w = env.host_read_u64(q.base.get() + pos + 8 * i as u64);
            }
            match self.check(env, targets, &c, &mut release) {
                Ok(()) => {
                    for (i, w) in c.iter().enumerate() {
                        env.write_u64(self.queue + self.wr + 8 * i as u64, *w);
                    }
                    if self.queue_nc {
                        env.clean(self.queue + self.wr, cmd::SIZE);
                    }
                    self.wr = (self.wr + cmd::SIZE) % QUEUE_SIZE;
                    sent += 1;
                }
                Err(why) => {
                    let base = self.base;
                    log_once(&mut self.warned, W_CMD, || {
                        log::error!(
                            "ITS {base:#x}: command {:#x} {:#x} {:#x} {:#x} refused: {why} (logged once)",
                            c[0],
                            c[1],
                            c[2],
                            c[3]
                        )
                    });
                }
            }
            pos = (pos + cmd::SIZE) % q.size;
            if sent == BATCH || (pos == self.cwriter && sent > 0) {
                if !self.kick_and_wait(env) {
                    // Keep every pin the unconfirmed commands may still need: `release`
                    // is dropped without unpinning.
                    return;
                }
                sent = 0;
                self.creadr = pos;
                for r in release.drain(..) {
                    env.unpin(r);
                }
            }
        }
        self.creadr = pos;
        for r in release {
            env.unpin(r);
        }
    }

    /// Writes the real `GITS_CWRITER` and waits for `GITS_CREADR` to reach it.
    fn kick_and_wait(&mut self, env: &mut impl GicEnv) -> bool {
        let (base, wr) = (self.base, self.wr);
        env.reg_write(base + gits::CWRITER, Width::W64, wr);
        let mut stalled = false;
        let done = wait(env, WAIT_MS, |env| {
            let r = env.reg_read(base + gits::CREADR, Width::W64);
            stalled = r & gits::CREADR_STALLED != 0;
            r & gits::OFFSET_MASK == wr || stalled
        }) && !stalled;
        if !done {
            self.stuck = true;
            log_once(&mut self.warned, W_STUCK, || {
                log::error!(
                    "ITS {base:#x}: commands not consumed within {WAIT_MS} ms{}; no more commands are sent",
                    if stalled { " (stalled)" } else { "" }
                )
            });
        }
        done
    }

    /// Checks one command; `release` collects pins to drop once it completed.
    fn check(
        &mut self,
        env: &mut impl GicEnv,
        targets: &RdTargets<'_>,
        c: &[u64; 4],
        release: &mut Vec<PhysRange>,
    ) -> Result<(), Refusal> {
        let pta = self.typer & gits::TYPER_PTA != 0;
        let target = |dw: u64| {
            if targets.valid(cmd::rdbase(dw), pta) {
                Ok(())
            } else {
                Err("RDbase is not a redistributor")
            }
        };
        let r = match c[0] as u8 {
            cmd::MOVI
            | cmd::INT
            | cmd::CLEAR
            | cmd::MAPTI
            | cmd::MAPI
            | cmd::INV
            | cmd::INVALL
            | cmd::DISCARD => Ok(()),
            cmd::SYNC => target(c[2]),
            cmd::MOVALL => target(c[2]).and_then(|()| target(c[3])),
            cmd::MAPC if c[2] & cmd::VALID != 0 => target(c[2]),
            cmd::MAPC => Ok(()),
            cmd::MAPD => return self.check_mapd(env, c, release),
            _ => Err("GICv4 or unknown command"),
        };
        if r.is_err() {
            let base = self.base;
            log_once(&mut self.warned, W_TARGET, || {
                log::error!("ITS {base:#x}: command with RDbase {:#x} refused", c[2])
            });
        }
        r
    }

    fn check_mapd(
        &mut self,
        env: &mut impl GicEnv,
        c: &[u64; 4],
        release: &mut Vec<PhysRange>,
    ) -> Result<(), Refusal> {
        let dev = (c[0] >> 32) as u32;
        if u64::from(dev) >> gits::typer_dev_bits(self.typer) != 0 {
            return Err("MAPD DeviceID beyond GITS_TYPER.Devbits");
        }
        // The ITS ignores a MAPD for a DeviceID its device table does not hold (a command
        // error); the pins must not change for it either (a device table entry the ITS
        // still caches from an earlier table would go on using the ITT).
        if u64::from(dev) >= self.device_table_entries(env) {
            return Err("MAPD DeviceID outside the device table");
        }
        let at = self.itts.iter().position(|(d, _)| *d == dev);
        release.try_reserve(1).map_err(|_| "no memory")?;
        if c[2] & cmd::VALID == 0 {
            if let Some(i) = at {
                release.push(self.itts.swap_remove(i).1);
            }
            return Ok(());
        }
        let bits = (c[1] & 0x1f) + 1;
        if bits > gits::typer_id_bits(self.typer) {
            return Err("MAPD Size beyond GITS_TYPER.ID_bits");
        }
        let itt = c[2] & cmd::ITT_MASK;
        let len = (1u64 << bits) * gits::typer_ite_size(self.typer);
        let r = page_hull(itt, len).ok_or("MAPD ITT wraps")?;
        if at.is_none() {
            self.itts.try_reserve(1).map_err(|_| "no memory")?;
        }
        if !env.pin(r) {
            let base = self.base;
            log_once(&mut self.warned, W_MAPD, || {
                log::error!(
                    "ITS {base:#x}: MAPD DeviceID {dev:#x} ITT {itt:#x}+{len:#x}: not host-owned; refused"
                )
            });
            return Err("MAPD ITT not host-owned");
        }
        match at {
            Some(i) => release.push(core::mem::replace(&mut self.itts[i].1, r)),
            None => self.itts.push((dev, r)),
        }
        Ok(())
    }

    fn write_baser(&mut self, env: &mut impl GicEnv, n: usize, v: u64) {
        let base = self.base;
        let reg = base + gits::BASER0 + 8 * n as u64;
        let real = env.reg_read(reg, Width::W64);
        let ty = gits::baser_type(real);
        if ty != gits::TYPE_DEVICES && ty != gits::TYPE_COLLECTIONS {
            if ty != 0 {
                log_once(&mut self.warned, W_VPE, || {
                    log::warn!("ITS {base:#x}: GITS_BASER{n} (type {ty}) refused")
                });
            }
            return;
        }
        if self.busy(env) {
            log_once(&mut self.warned, W_ENABLED, || {
                log::warn!("ITS {base:#x}: GITS_CBASER/BASER write while enabled: ignored")
            });
            return;
        }
        let v = v & !gits::BASER_INDIRECT;
        let host_pa = v & gits::BASER_PA_MASK;
        if v & gits::VALID == 0 {
            env.reg_write(reg, Width::W64, v & !gits::BASER_PA_MASK);
            let rb = env.reg_read(reg, Width::W64);
            self.free_shadow(env, n);
            self.baser[n] = (rb & !gits::BASER_PA_MASK & !gits::BASER_INDIRECT & !gits::SIZE_MASK)
                | host_pa
                | (v & gits::SIZE_MASK);
            return;
        }
        let psz = gits::baser_page_size(v);
        let len = ((v & gits::SIZE_MASK) + 1) * psz;
        let refuse = |warned: &mut u32, why: &str| {
            log_once(warned, W_BASER, || {
                log::error!("ITS {base:#x}: GITS_BASER{n} {v:#x}: {why}; refused")
            })
        };
        if !host_pa.is_multiple_of(psz) {
            return refuse(&mut self.warned, "unaligned (or a 52-bit address)");
        }
        if !env.host_owns(PhysRange::new(host_pa, len)) {
            return refuse(&mut self.warned, "the table is not host-owned");
        }
        // Warden's copy need not be larger than the IDs the ITS can index (the host may
        // ask for up to 256 pages of 64 KiB).
        let ids = if ty == gits::TYPE_DEVICES {
            gits::typer_dev_bits(self.typer)
        } else {
            gits::typer_cid_bits(self.typer)
        };
        let needed = (1u64 << ids) * gits::baser_entry_size(real);
        let real_len = len.min(needed.next_multiple_of(psz));
        let size = real_len.next_power_of_two();
        let Some(table) = env.alloc(size, psz) else {
            return refuse(&mut self.warned, "no memory for Warden's copy");
        };
        env.clean(table, size);
        let real_size = real_len / psz - 1;
        let want = (v & !gits::BASER_PA_MASK & !gits::SIZE_MASK) | table | real_size;
        env.reg_write(reg, Width::W64, want);
        let rb = env.reg_read(reg, Width::W64);
        let geometry = gits::VALID | gits::BASER_PAGE_SIZE_MASK | gits::SIZE_MASK;
        if (rb ^ want) & (geometry | gits::BASER_PA_MASK) != 0 {
            // The ITS changed the page size or the size (or cannot reach the table): it
            // must not use a table Warden did not size for it. The host sees what the
            // ITS made of its request and may try again.
            env.reg_write(reg, Width::W64, 0);
            env.free(table, size);
            self.free_shadow(env, n);
            self.baser[n] = (rb & !gits::BASER_PA_MASK & !gits::BASER_INDIRECT) | host_pa;
            return;
        }
        self.free_shadow(env, n);
        self.shadow[n] = Some((table, size));
        // The host reads back its own address and size.
        self.baser[n] = (rb & !gits::BASER_PA_MASK & !gits::BASER_INDIRECT & !gits::SIZE_MASK)
            | host_pa
            | (v & gits::SIZE_MASK);
    }

    /// Entries of the device table the ITS uses now (0 without one).
    fn device_table_entries(&self, env: &mut impl GicEnv) -> u64 {
        (0..gits::NR_BASER)
            .filter(|&n| self.shadow[n].is_some())
            .map(|n| env.reg_read(self.base + gits::BASER0 + 8 * n as u64, Width::W64))
            .find(|&v| gits::baser_type(v) == gits::TYPE_DEVICES && v & gits::VALID != 0)
            .map_or(0, |v| {
                ((v & gits::SIZE_MASK) + 1) * gits::baser_page_size(v) / gits::baser_entry_size(v)
            })
    }

    /// Frees Warden's table of `GITS_BASER<n>` (the ITS is disabled and quiescent, and
    /// the register no longer names it).
    fn free_shadow(&mut self, env: &mut impl GicEnv, n: usize) {
        if let Some((pa, size)) = self.shadow[n].take() {
            env.free(pa, size);
        }
    }

    /// Warden's table behind `GITS_BASER<n>`, if any: (address, size).
    pub const fn shadow_table(&self, n: usize) -> Option<(u64, u64)> {
        self.shadow[n]
    }
}

/// Polls `done` until it holds or `ms` milliseconds of the system counter passed.
pub(crate) fn wait<E: GicEnv>(env: &mut E, ms: u64, mut done: impl FnMut(&mut E) -> bool) -> bool {
    let start = env.now();
    let limit = env.ticks_per_ms().saturating_mul(ms);
    loop {
        if done(env) {
            return true;
        }
        if env.now().wrapping_sub(start) > limit {
            return done(env);
        }
        core::hint::spin_loop();
    }
}
