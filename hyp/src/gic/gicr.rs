//! One redistributor, emulated: its RD_base frame (and, with GICv4, its VLPI_base frame,
//! which reads as zero and ignores writes: virtual LPIs are hidden).
//!
//! `GICR_PROPBASER`/`GICR_PENDBASER` writes are accepted only when the table they name
//! (property table: 2^IDbits − 8192 bytes; pending table: 2^IDbits / 8 bytes, IDbits from
//! `GICR_PROPBASER`) is host-owned, and only while LPIs are off. Setting
//! `GICR_CTLR.EnableLPIs` first pins both tables, as the registers hold them then; if
//! that fails the bit stays clear. The pins are kept for good (EnableLPIs may not be
//! clearable, and the redistributor may cache the tables), and both registers are frozen
//! from then on — unless the redistributor is reset (LPIs off and the registers no longer
//! what they were, e.g. after firmware powered it down and up): then the host programs
//! them again, checked and pinned anew, instead of enabling LPIs on tables at the reset
//! address.
//!
//! **One LPI configuration.** Redistributors may share one LPI configuration table
//! (`GICR_TYPER.CommonLPIAff`; on a single-chip GIC all of them do), and the architecture
//! makes differing `GICR_PROPBASER` values UNPREDICTABLE: a redistributor may then use
//! another one's IDbits, and write its pending table beyond what Warden pinned for its
//! own. So once any redistributor has LPIs on, every `GICR_PROPBASER` write (of a value
//! that allows LPIs) must name the same table with the same IDbits (attributes may
//! differ), as Linux's do; and EnableLPIs is refused while another redistributor's
//! `GICR_PROPBASER` names a different one. Warden clears `GICR_PROPBASER` of every
//! redistributor with LPIs off when it takes the GIC over, so that no reset value gets in
//! the way.

use super::regs::{FRAME, gicr};
use super::{GicEnv, Width, log_once, page_hull, part};
use crate::addr::PhysRange;

/// Largest IDbits Warden accepts (the tables are 16 MiB and 2 MiB then).
const MAX_ID_BITS: u64 = 24;
/// Smallest IDbits with LPIs.
const MIN_ID_BITS: u64 = 14;

const W_PROP: u32 = 1 << 0;
const W_PEND: u32 = 1 << 1;
const W_ENABLE: u32 = 1 << 2;
const W_FROZEN: u32 = 1 << 3;
const W_SHARED: u32 = 1 << 4;
const W_OTHER: u32 = 1 << 5;

/// Emulation state of one redistributor.
pub struct Redist {
    base: u64,
    typer: u64,
    /// The redistributor has a VLPI_base frame (GICv4).
    vlpi: bool,
    /// EnableLPIs was set (by the host, with its tables pinned, or by firmware): the
    /// table registers no longer change.
    frozen: bool,
    /// The pinned tables.
    pinned: [Option<PhysRange>; 2],
    /// With LPIs on: the LPI configuration in use ([`config_key`]).
    config: Option<u64>,
    /// `GICR_PROPBASER`, `GICR_PENDBASER` as they read when the registers froze.
    tables: [u64; 2],
    warned: u32,
}

/// The LPI configuration a `GICR_PROPBASER` value names (table address and IDbits);
/// `None` if it allows no LPIs.
fn config_key(v: u64) -> Option<u64> {
    (gicr::prop_id_bits(v) >= MIN_ID_BITS).then_some(v & (gicr::PROP_PA_MASK | 0x1f))
}

/// The other redistributors (on both sides of the one being accessed), for the LPI
/// configuration they share.
pub struct Peers<'a>(pub &'a [Redist], pub &'a [Redist]);

impl Peers<'_> {
    /// The configuration of the redistributors with LPIs on (they all use the same).
    fn shared(&self) -> Option<u64> {
        self.0.iter().chain(self.1).find_map(|r| r.config)
    }

    /// Whether a redistributor may enable LPIs with configuration `key`: the one in use,
    /// or, while none is, one that no other redistributor's `GICR_PROPBASER` contradicts.
    fn allow_enable(&self, env: &mut impl GicEnv, key: u64) -> bool {
        match self.shared() {
            Some(s) => s == key,
            None => self.0.iter().chain(self.1).all(|r| {
                config_key(env.reg_read(r.base + gicr::PROPBASER, Width::W64))
                    .is_none_or(|k| k == key)
            }),
        }
    }
}

/// Property table pages named by a `GICR_PROPBASER` value (`None` if IDbits is too large;
/// `Some(None)` when it leaves no room for LPIs).
fn prop_table(v: u64) -> Option<Option<PhysRange>> {
    let bits = gicr::prop_id_bits(v);
    if bits > MAX_ID_BITS {
        return None;
    }
    if bits < MIN_ID_BITS {
        return Some(None);
    }
    Some(page_hull(
        v & gicr::PROP_PA_MASK,
        (1 << bits) - gicr::LPI_BASE,
    ))
}

/// Pending table pages named by a `GICR_PENDBASER` value for `bits` ID bits.
fn pend_table(v: u64, bits: u64) -> Option<PhysRange> {
    page_hull(v & gicr::PEND_PA_MASK, (1 << bits) / 8)
}

impl Redist {
    /// The redistributor whose RD_base frame is at `base`, with `GICR_TYPER` `typer`;
    /// `vlpi`: it has a VLPI_base frame whatever `typer` says.
    pub fn new(env: &mut impl GicEnv, base: u64, typer: u64, vlpi: bool) -> Self {
        let ctlr = env.reg_read(base + gicr::CTLR, Width::W32);
        let frozen = ctlr & gicr::CTLR_ENABLE_LPIS != 0;
        let prop = env.reg_read(base + gicr::PROPBASER, Width::W64);
        let pend = env.reg_read(base + gicr::PENDBASER, Width::W64);
        if frozen {
            log::warn!(
                "redistributor {base:#x}: LPIs enabled by firmware (tables {prop:#x}, {pend:#x}); the host cannot move them"
            );
        } else {
            // No reset value may contradict the configuration the host sets up.
            env.reg_write(base + gicr::PROPBASER, Width::W64, 0);
        }
        Self {
            base,
            typer,
            vlpi: vlpi || typer & gicr::TYPER_VLPIS != 0,
            frozen,
            pinned: [None; 2],
            config: if frozen { config_key(prop) } else { None },
            tables: [prop, pend],
            warned: 0,
        }
    }

    /// The RD_base frame's physical address.
    pub const fn base(&self) -> u64 {
        self.base
    }

    /// Whether the redistributor has a VLPI_base frame (GICv4).
    pub const fn vlpi(&self) -> bool {
        self.vlpi
    }

    /// `GICR_TYPER.Processor_Number`.
    pub const fn processor(&self) -> u64 {
        gicr::typer_processor(self.typer)
    }

    /// The pinned LPI tables (property, pending).
    pub const fn pinned(&self) -> [Option<PhysRange>; 2] {
        self.pinned
    }

    /// The trapped frames: RD_base, and VLPI_base with GICv4.
    pub fn frames(&self) -> impl Iterator<Item = PhysRange> + '_ {
        let vlpi = self
            .vlpi()
            .then(|| PhysRange::new(self.base + 2 * FRAME, FRAME));
        core::iter::once(PhysRange::new(self.base, FRAME)).chain(vlpi)
    }

    /// Whether `pa` lies in a trapped frame.
    pub fn contains(&self, pa: u64) -> bool {
        self.frames().any(|f| f.contains(pa))
    }

    /// Emulates an access at physical `pa` (inside [`frames`](Self::frames)); `peers` are
    /// the other redistributors.
    pub fn access(
        &mut self,
        env: &mut impl GicEnv,
        peers: &Peers<'_>,
        pa: u64,
        w: Width,
        write: Option<u64>,
    ) -> u64 {
        let off = pa - self.base;
        if off >= FRAME {
            return 0;
        }
        let reg = off & !7;
        let sub = off & 7;
        match (reg, write) {
            (gicr::TYPER, None) => {
                let hidden = gicr::TYPER_VLPIS | gicr::TYPER_RVPEID;
                part(
                    env.reg_read(self.base + gicr::TYPER, Width::W64) & !hidden,
                    sub,
                    w,
                )
            }
            (gicr::TYPER, Some(_)) => 0,
            // Any width: a 64-bit store covers GICR_CTLR too.
            (gicr::CTLR, Some(v)) if off == gicr::CTLR => {
                self.thaw_if_reset(env);
                let v = if v & gicr::CTLR_ENABLE_LPIS != 0
                    && !self.frozen
                    && !(self.shares_config(env, peers) && self.pin_tables(env))
                {
                    v & !gicr::CTLR_ENABLE_LPIS
                } else {
                    v
                };
                env.reg_write(pa, w, v);
                0
            }
            (gicr::PROPBASER | gicr::PENDBASER, Some(v)) => {
                self.write_table_reg(env, peers, reg, sub, w, v);
                0
            }
            _ if !gicr::passthrough(off) => {
                let base = self.base;
                log_once(&mut self.warned, W_OTHER, || {
                    log::warn!(
                        "redistributor {base:#x}: access to offset {off:#x} (not an architected register Warden passes on): read as zero, writes ignored (logged once)"
                    )
                });
                0
            }
            (_, None) => env.reg_read(pa, w),
            (_, Some(v)) => {
                env.reg_write(pa, w, v);
                0
            }
        }
    }

    fn write_table_reg(
        &mut self,
        env: &mut impl GicEnv,
        peers: &Peers<'_>,
        reg: u64,
        sub: u64,
        w: Width,
        v: u64,
    ) {
        let base = self.base;
        self.thaw_if_reset(env);
        let lpis = env.reg_read(base + gicr::CTLR, Width::W32) & gicr::CTLR_ENABLE_LPIS != 0;
        if self.frozen || lpis {
            log_once(&mut self.warned, W_FROZEN, || {
                log::warn!("redistributor {base:#x}: LPI table write with LPIs enabled: ignored")
            });
            return;
        }
        let old = env.reg_read(base + reg, Width::W64);
        let v = super::merge(old, sub, w, v);
        if reg == gicr::PROPBASER
            && let (Some(key), Some(shared)) = (config_key(v), peers.shared())
            && key != shared
        {
            log_once(&mut self.warned, W_SHARED, || {
                log::error!(
                    "redistributor {base:#x}: GICR_PROPBASER {v:#x}: not the LPI configuration the other redistributors use ({shared:#x}); refused"
                )
            });
            return;
        }
        let (table, flag, what) = if reg == gicr::PROPBASER {
            (prop_table(v), W_PROP, "GICR_PROPBASER")
        } else {
            let prop = env.reg_read(base + gicr::PROPBASER, Width::W64);
            let bits = gicr::prop_id_bits(prop).clamp(MIN_ID_BITS, MAX_ID_BITS);
            (Some(pend_table(v, bits)), W_PEND, "GICR_PENDBASER")
        };
        let ok = match table {
            None => false,
            Some(None) => true,
            Some(Some(r)) => env.host_owns(r),
        };
        if !ok {
            log_once(&mut self.warned, flag, || {
                log::error!("redistributor {base:#x}: {what} {v:#x}: table not host-owned; refused")
            });
            return;
        }
        env.reg_write(base + reg, Width::W64, v);
    }

    /// Firmware left LPIs on: pins the tables the registers name (once the pin
    /// bookkeeping exists, before the host runs), so that the host cannot donate them.
    /// Logs an error if they are not host RAM (e.g. in Warden's carve-out).
    pub fn pin_firmware_tables(&mut self, env: &mut impl GicEnv) {
        if self.frozen && self.pinned == [None, None] && !self.pin_tables(env) {
            log::error!(
                "redistributor {:#x}: the LPI tables firmware enabled are not host RAM; the GIC may write there",
                self.base
            );
        }
    }

    /// A frozen redistributor with LPIs off whose table registers no longer read as when
    /// they froze has been reset (powered down and up by firmware, e.g. over CPU_OFF and
    /// CPU_ON): it uses none of the old tables any more, and EnableLPIs must not be let
    /// through on their pins. Its registers may be programmed (and checked, and pinned)
    /// again; the old pins stay for good.
    fn thaw_if_reset(&mut self, env: &mut impl GicEnv) {
        let base = self.base;
        if !self.frozen || env.reg_read(base + gicr::CTLR, Width::W32) & gicr::CTLR_ENABLE_LPIS != 0
        {
            return;
        }
        let now = [
            env.reg_read(base + gicr::PROPBASER, Width::W64),
            env.reg_read(base + gicr::PENDBASER, Width::W64),
        ];
        if now != self.tables {
            log::warn!(
                "redistributor {base:#x}: LPIs off and the LPI table registers reset ({:#x}, {:#x}): programmable again",
                now[0],
                now[1]
            );
            self.frozen = false;
            self.config = None;
        }
    }

    /// Whether this redistributor's `GICR_PROPBASER` is one the others allow for LPIs
    /// (see the module docs); logs once if not.
    fn shares_config(&mut self, env: &mut impl GicEnv, peers: &Peers<'_>) -> bool {
        let base = self.base;
        let prop = env.reg_read(base + gicr::PROPBASER, Width::W64);
        // No LPIs at all: `pin_tables` refuses.
        let Some(key) = config_key(prop) else {
            return true;
        };
        let ok = peers.allow_enable(env, key);
        if !ok {
            log_once(&mut self.warned, W_SHARED, || {
                log::error!(
                    "redistributor {base:#x}: EnableLPIs with GICR_PROPBASER {prop:#x}, which another redistributor contradicts; LPIs stay off"
                )
            });
        }
        ok
    }

    /// Pins both LPI tables as the registers hold them now; nothing pinned on failure.
    fn pin_tables(&mut self, env: &mut impl GicEnv) -> bool {
        let base = self.base;
        let prop = env.reg_read(base + gicr::PROPBASER, Width::W64);
        let pend = env.reg_read(base + gicr::PENDBASER, Width::W64);
        let bits = gicr::prop_id_bits(prop);
        let tables = match prop_table(prop) {
            Some(Some(p)) => pend_table(pend, bits).map(|q| (p, q)),
            _ => None,
        };
        let pinned = tables.filter(|&(p, q)| {
            if !env.pin(p) {
                return false;
            }
            if !env.pin(q) {
                env.unpin(p);
                return false;
            }
            true
        });
        let Some((p, q)) = pinned else {
            log_once(&mut self.warned, W_ENABLE, || {
                log::error!(
                    "redistributor {base:#x}: EnableLPIs with GICR_PROPBASER {prop:#x}, GICR_PENDBASER {pend:#x}: tables not host-owned; LPIs stay off"
                )
            });
            return false;
        };
        self.pinned = [Some(p), Some(q)];
        self.config = config_key(prop);
        self.tables = [prop, pend];
        self.frozen = true;
        true
    }
}
