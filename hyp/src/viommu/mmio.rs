//! The virtio-mmio version 2 register file as a pure state machine: [`Regs::access`] takes
//! one trapped access (offset, width, direction, value) and returns the value read and
//! the [`Effect`] the device must carry out (serve a queue, reset the backend). No memory
//! access, no backend: those are [`super::Device`]'s.
//!
//! Widths: the registers (`0x000..0x100`) take aligned 32-bit accesses only; the
//! configuration space takes aligned 8-, 16- and 32-bit accesses. Anything else is an
//! [`Abort`] (an external abort for the host). Registers the device does not implement,
//! and configuration bytes past `struct virtio_iommu_config`, read as zero and ignore
//! writes.
//!
//! Status, as the device enforces it:
//!
//! | write | effect |
//! |---|---|
//! | 0 | reset: features, queues, interrupt causes, status cleared (`bypass` kept) |
//! | `FEATURES_OK` | kept only if the driver's features are a subset of the offer and include `VERSION_1` |
//! | `DRIVER_OK` | kept only after `FEATURES_OK`; from then on queues are served |
//! | `DEVICE_NEEDS_RESET` | device-owned: the driver's bit is ignored |
//! | clearing a bit (other than by 0) | ignored: status bits are sticky until reset |
//!
//! Feature writes after `FEATURES_OK`, and queue layout writes to a ready queue, are
//! ignored; the latter (a ring moved under a live queue) also sets `DEVICE_NEEDS_RESET`.

use super::Config;
use super::queue::Vq;
use crate::viommu::regs::*;

/// The access cannot be emulated: inject an external abort.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Abort;

/// One trapped access to the node's window (from the data abort's ISV syndrome).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// Offset from the node's base.
    pub off: u64,
    /// Bytes: 1, 2, 4 or 8.
    pub width: u8,
    /// A write (of `value`), or a read.
    pub write: bool,
    /// The value written (ignored for reads).
    pub value: u64,
}

impl Access {
    /// A read of `width` bytes at `off`.
    pub const fn read(off: u64, width: u8) -> Self {
        Self {
            off,
            width,
            write: false,
            value: 0,
        }
    }

    /// A write of `value` (`width` bytes) at `off`.
    pub const fn write(off: u64, width: u8, value: u64) -> Self {
        Self {
            off,
            width,
            write: true,
            value,
        }
    }
}

/// What the device must do after an access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Nothing.
    None,
    /// The driver notified queue `n`.
    Notify(u32),
    /// The driver reset the device.
    Reset,
    /// The device entered `DEVICE_NEEDS_RESET` (signal a configuration change).
    NeedsReset,
}

/// Index of the request queue.
pub const REQUESTQ: usize = 0;
/// Index of the event queue.
pub const EVENTQ: usize = 1;
/// Queue size limit of the request queue (a kick serves at most this many requests).
pub const REQUESTQ_MAX: u32 = 256;
/// Queue size limit of the event queue.
pub const EVENTQ_MAX: u32 = 64;

/// The register file's state.
#[derive(Clone, Debug)]
pub struct Regs {
    cfg: Config,
    offered: u64,
    dev_features_sel: u32,
    driver_features: u64,
    driver_features_sel: u32,
    queue_sel: u32,
    /// The two queues.
    pub vqs: [Vq; 2],
    int_status: u32,
    status: u32,
    shm_sel: u32,
    bypass: bool,
}

fn queue_max(q: usize) -> u32 {
    match q {
        REQUESTQ => REQUESTQ_MAX,
        _ => EVENTQ_MAX,
    }
}

impl Regs {
    /// A device just out of system reset, configured by `cfg`.
    pub fn new(cfg: Config) -> Self {
        let mut offered =
            F_VERSION_1 | F_INPUT_RANGE | F_DOMAIN_RANGE | F_MAP_UNMAP | F_PROBE | F_BYPASS_CONFIG;
        if cfg.mmio_maps {
            offered |= F_MMIO;
        }
        Self {
            bypass: cfg.bypass,
            cfg,
            offered,
            dev_features_sel: 0,
            driver_features: 0,
            driver_features_sel: 0,
            queue_sel: 0,
            vqs: [Vq::default(); 2],
            int_status: 0,
            status: 0,
            shm_sel: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The features the device offers.
    pub fn offered(&self) -> u64 {
        self.offered
    }

    /// The negotiated features (0 until `FEATURES_OK`).
    pub fn features(&self) -> u64 {
        if self.status & S_FEATURES_OK != 0 {
            self.driver_features
        } else {
            0
        }
    }

    /// The device status.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// The pending interrupt causes.
    pub fn int_status(&self) -> u32 {
        self.int_status
    }

    /// Whether the driver set `DRIVER_OK` (since the last reset).
    pub fn driver_ok(&self) -> bool {
        self.status & S_DRIVER_OK != 0
    }

    /// Whether the device is in `DEVICE_NEEDS_RESET`.
    pub fn needs_reset(&self) -> bool {
        self.status & S_DEVICE_NEEDS_RESET != 0
    }

    /// Whether queues are served: `DRIVER_OK` and no `DEVICE_NEEDS_RESET`.
    pub fn live(&self) -> bool {
        self.driver_ok() && !self.needs_reset()
    }

    /// The `bypass` configuration field.
    pub fn bypass(&self) -> bool {
        self.bypass
    }

    /// Adds an interrupt cause.
    pub fn interrupt(&mut self, cause: u32) {
        self.int_status |= cause;
    }

    /// Enters `DEVICE_NEEDS_RESET` (with a configuration-change cause); `false` if it was
    /// already there.
    pub fn set_needs_reset(&mut self) -> bool {
        if self.needs_reset() {
            return false;
        }
        self.status |= S_DEVICE_NEEDS_RESET;
        self.int_status |= INT_CONFIG;
        true
    }

    fn reset(&mut self) {
        *self = Self {
            bypass: self.bypass,
            ..Self::new(self.cfg)
        };
    }

    fn features_ok(&self) -> bool {
        self.driver_features & !self.offered == 0 && self.driver_features & F_VERSION_1 != 0
    }

    fn sel(&self) -> Option<usize> {
        let q = self.queue_sel as usize;
        (q < self.vqs.len()).then_some(q)
    }

    /// One access. Returns the value read (0 for writes) and what to do next.
    pub fn access(&mut self, a: Access) -> Result<(u64, Effect), Abort> {
        let Access {
            off,
            width,
            write,
            value,
        } = a;
        if off >= WINDOW || !matches!(width, 1 | 2 | 4) || !off.is_multiple_of(u64::from(width)) {
            return Err(Abort);
        }
        if off >= CONFIG {
            let off = off - CONFIG;
            if write {
                self.config_write(off, width, value);
                return Ok((0, Effect::None));
            }
            return Ok((self.config_read(off, width), Effect::None));
        }
        if width != 4 {
            return Err(Abort);
        }
        let v = value as u32;
        if write {
            Ok((0, self.reg_write(off, v)))
        } else {
            Ok((u64::from(self.reg_read(off)), Effect::None))
        }
    }

    fn reg_read(&self, off: u64) -> u32 {
        let q = self.sel().map(|q| (q, &self.vqs[q]));
        match off {
            MAGIC_VALUE => MAGIC,
            VERSION => VERSION_2,
            DEVICE_ID => ID_IOMMU,
            VENDOR_ID => self.cfg.vendor_id,
            DEVICE_FEATURES => match self.dev_features_sel {
                0 => self.offered as u32,
                1 => (self.offered >> 32) as u32,
                _ => 0,
            },
            QUEUE_NUM_MAX => q.map_or(0, |(q, _)| queue_max(q)),
            QUEUE_READY => q.map_or(0, |(_, vq)| u32::from(vq.ready)),
            INTERRUPT_STATUS => self.int_status,
            STATUS => self.status,
            SHM_LEN_LOW | SHM_LEN_HIGH => u32::MAX,
            CONFIG_GENERATION => 0,
            _ => 0,
        }
    }

    fn reg_write(&mut self, off: u64, v: u32) -> Effect {
        match off {
            DEVICE_FEATURES_SEL => self.dev_features_sel = v,
            DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            DRIVER_FEATURES if self.status & S_FEATURES_OK == 0 => {
                let v = u64::from(v);
                match self.driver_features_sel {
                    0 => self.driver_features = (self.driver_features & !0xffff_ffff) | v,
                    1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (v << 32),
                    _ => {}
                }
            }
            QUEUE_SEL => self.queue_sel = v,
            QUEUE_NUM | QUEUE_DESC_LOW | QUEUE_DESC_HIGH | QUEUE_DRIVER_LOW | QUEUE_DRIVER_HIGH
            | QUEUE_DEVICE_LOW | QUEUE_DEVICE_HIGH => return self.queue_layout_write(off, v),
            QUEUE_READY => return self.queue_ready(v),
            QUEUE_NOTIFY => return Effect::Notify(v),
            INTERRUPT_ACK => self.int_status &= !v,
            STATUS => return self.status_write(v),
            SHM_SEL => self.shm_sel = v,
            _ => {}
        }
        Effect::None
    }

    fn queue_layout_write(&mut self, off: u64, v: u32) -> Effect {
        let Some(q) = self.sel() else {
            return Effect::None;
        };
        let vq = &mut self.vqs[q];
        if vq.ready {
            return if self.set_needs_reset() {
                Effect::NeedsReset
            } else {
                Effect::None
            };
        }
        let lo = |x: u64| (x & !0xffff_ffff) | u64::from(v);
        let hi = |x: u64| (x & 0xffff_ffff) | (u64::from(v) << 32);
        match off {
            QUEUE_NUM => vq.num = v,
            QUEUE_DESC_LOW => vq.desc = lo(vq.desc),
            QUEUE_DESC_HIGH => vq.desc = hi(vq.desc),
            QUEUE_DRIVER_LOW => vq.avail = lo(vq.avail),
            QUEUE_DRIVER_HIGH => vq.avail = hi(vq.avail),
            QUEUE_DEVICE_LOW => vq.used = lo(vq.used),
            _ => vq.used = hi(vq.used),
        }
        Effect::None
    }

    fn queue_ready(&mut self, v: u32) -> Effect {
        let Some(q) = self.sel() else {
            return Effect::None;
        };
        let vq = &mut self.vqs[q];
        match (v & 1 != 0, vq.ready) {
            (false, _) => vq.ready = false,
            (true, true) => {}
            (true, false) => match vq.check_layout(queue_max(q)) {
                Ok(()) => {
                    vq.ready = true;
                    vq.last_avail = 0;
                    vq.used_idx = 0;
                }
                Err(_) => {
                    if self.set_needs_reset() {
                        return Effect::NeedsReset;
                    }
                }
            },
        }
        Effect::None
    }

    fn status_write(&mut self, v: u32) -> Effect {
        if v == 0 {
            self.reset();
            return Effect::Reset;
        }
        let old = self.status;
        let add = v & 0xff & !old & !S_DEVICE_NEEDS_RESET;
        let mut new = old | add;
        if add & S_FEATURES_OK != 0 && !self.features_ok() {
            new &= !S_FEATURES_OK;
        }
        if add & S_DRIVER_OK != 0 && new & S_FEATURES_OK == 0 {
            new &= !S_DRIVER_OK;
        }
        self.status = new;
        Effect::None
    }

    fn config_bytes(&self) -> [u8; CFG_SIZE as usize] {
        let c = &self.cfg;
        let mut b = [0u8; CFG_SIZE as usize];
        let put = |b: &mut [u8], at: u64, v: &[u8]| {
            b[at as usize..at as usize + v.len()].copy_from_slice(v);
        };
        put(&mut b, CFG_PAGE_SIZE_MASK, &c.page_size_mask.to_le_bytes());
        put(&mut b, CFG_INPUT_START, &c.input_start.to_le_bytes());
        put(&mut b, CFG_INPUT_END, &c.input_end.to_le_bytes());
        put(&mut b, CFG_DOMAIN_START, &c.domain_start.to_le_bytes());
        put(&mut b, CFG_DOMAIN_END, &c.domain_end.to_le_bytes());
        put(
            &mut b,
            CFG_PROBE_SIZE,
            &(super::req::PROBE_PROPS_SIZE as u32).to_le_bytes(),
        );
        b[CFG_BYPASS as usize] = u8::from(self.bypass);
        b
    }

    fn config_read(&self, off: u64, width: u8) -> u64 {
        let b = self.config_bytes();
        let mut v = [0u8; 8];
        for (i, x) in v.iter_mut().take(usize::from(width)).enumerate() {
            *x = off
                .checked_add(i as u64)
                .and_then(|o| b.get(o as usize))
                .copied()
                .unwrap_or(0);
        }
        u64::from_le_bytes(v)
    }

    fn config_write(&mut self, off: u64, width: u8, value: u64) {
        // Only `bypass`, only once BYPASS_CONFIG is negotiated, only 0 or 1; the rest of
        // an access that covers it writes reserved bytes (ignored).
        if self.features() & F_BYPASS_CONFIG == 0 {
            return;
        }
        if off > CFG_BYPASS || off + u64::from(width) <= CFG_BYPASS {
            return;
        }
        let byte = (value >> (8 * (CFG_BYPASS - off))) as u8;
        if byte <= 1 {
            self.bypass = byte == 1;
        }
    }
}
