//! Host tests of the virtio-iommu device against a model of the host's driver: rings and
//! buffers in a RAM arena, negotiation through the register file, requests posted and
//! their used elements and tail statuses read back, and a mock backend that records every
//! call (and, at `end_of_kick`, what the driver could see of the used ring).

use super::regs::*;
use super::req::{DomainId, EndpointId, IovaRange, MapFlags, ResvKind, ResvRegion, ResvRegions};
use super::*;
use crate::addr::Iova;
use crate::testutil::Ram;
use std::rc::Rc;
use std::vec;
use std::vec::Vec;

const RAM: u64 = 0x4000_0000;
const RAM_LEN: usize = 1 << 20;

/// Host memory: the arena, minus ranges the host does not own (any more).
pub(super) struct Mem {
    pub ram: Rc<Ram>,
    pub deny: Vec<(u64, u64)>,
}

impl Mem {
    fn ok(&self, ipa: Ipa, len: usize) -> Result<(), MemFault> {
        let end = ipa.0.checked_add(len as u64).ok_or(MemFault)?;
        if !self.ram.contains(ipa.0, len) || self.deny.iter().any(|&(s, e)| ipa.0 < e && end > s) {
            return Err(MemFault);
        }
        Ok(())
    }
}

impl GuestMem for Mem {
    fn read(&mut self, ipa: Ipa, buf: &mut [u8]) -> Result<(), MemFault> {
        self.ok(ipa, buf.len())?;
        self.ram.read_bytes(ipa.0, buf);
        Ok(())
    }
    fn write(&mut self, ipa: Ipa, data: &[u8]) -> Result<(), MemFault> {
        self.ok(ipa, data.len())?;
        self.ram.write_bytes(ipa.0, data);
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Call {
    Attach(u32, u32, bool),
    Detach(u32, u32),
    Map(u32, u64, u64, u64, u32),
    Unmap(u32, u64, u64),
    Probe(u32),
    /// With the used index the driver could see at that moment.
    EndOfKick(u16),
    Policy(Unattached),
    Reset,
}

struct Mock {
    calls: Vec<Call>,
    ram: Rc<Ram>,
    /// Where the request queue's used index is (0 = not set up).
    used_idx_at: u64,
    fail: Option<BackendError>,
    fail_end: bool,
    resv: ResvRegions,
}

impl Mock {
    fn result(&self) -> Result<(), BackendError> {
        self.fail.map_or(Ok(()), Err)
    }
    /// Calls other than policy changes.
    fn ops(&self) -> Vec<Call> {
        self.calls
            .iter()
            .filter(|c| !matches!(c, Call::Policy(_)))
            .cloned()
            .collect()
    }
}

impl Backend for Mock {
    fn attach(&mut self, d: DomainId, e: EndpointId, bypass: bool) -> Result<(), BackendError> {
        self.calls.push(Call::Attach(d.0, e.0, bypass));
        self.result()
    }
    fn detach(&mut self, d: DomainId, e: EndpointId) -> Result<(), BackendError> {
        self.calls.push(Call::Detach(d.0, e.0));
        self.result()
    }
    fn map(&mut self, d: DomainId, v: IovaRange, p: Ipa, f: MapFlags) -> Result<(), BackendError> {
        self.calls
            .push(Call::Map(d.0, v.start.0, v.end.0, p.0, f.0));
        self.result()
    }
    fn unmap(&mut self, d: DomainId, v: IovaRange) -> Result<(), BackendError> {
        self.calls.push(Call::Unmap(d.0, v.start.0, v.end.0));
        self.result()
    }
    fn probe(&mut self, e: EndpointId) -> Result<ResvRegions, BackendError> {
        self.calls.push(Call::Probe(e.0));
        self.result().map(|()| self.resv)
    }
    fn end_of_kick(&mut self) -> Result<(), BackendError> {
        let mut b = [0u8; 2];
        if self.used_idx_at != 0 {
            self.ram.read_bytes(self.used_idx_at, &mut b);
        }
        self.calls.push(Call::EndOfKick(u16::from_le_bytes(b)));
        if self.fail_end {
            Err(BackendError::Device)
        } else {
            Ok(())
        }
    }
    fn set_unattached(&mut self, p: Unattached) {
        self.calls.push(Call::Policy(p));
    }
    fn reset(&mut self) {
        self.calls.push(Call::Reset);
    }
}

#[derive(Default)]
struct CountIrq(u32);

impl Irq for CountIrq {
    fn raise(&mut self) {
        self.0 += 1;
    }
}

/// The driver's view of one queue.
#[derive(Clone, Copy, Default)]
struct DrvQ {
    num: u16,
    desc: u64,
    avail: u64,
    used: u64,
    avail_idx: u16,
    next_desc: u16,
}

/// A model of the host's driver.
struct Driver {
    dev: Device,
    mem: Mem,
    be: Mock,
    irq: CountIrq,
    q: [DrvQ; 2],
    bump: u64,
}

/// What a well-behaved 6.12 driver accepts of the offer.
const WANTED: u64 =
    F_VERSION_1 | F_INPUT_RANGE | F_DOMAIN_RANGE | F_MAP_UNMAP | F_PROBE | F_BYPASS_CONFIG;

impl Driver {
    fn new(cfg: Config) -> Self {
        let ram = Rc::new(Ram::new(RAM, RAM_LEN));
        Self {
            dev: Device::new(cfg),
            mem: Mem {
                ram: ram.clone(),
                deny: Vec::new(),
            },
            be: Mock {
                calls: Vec::new(),
                ram,
                used_idx_at: 0,
                fail: None,
                fail_end: false,
                resv: ResvRegions::default(),
            },
            irq: CountIrq::default(),
            q: [DrvQ::default(); 2],
            bump: RAM + 0x1000,
        }
    }

    fn access(&mut self, off: u64, width: u8, write: bool, v: u64) -> Result<u64, Abort> {
        let a = Access {
            off,
            width,
            write,
            value: v,
        };
        self.dev.mmio(a, &mut self.mem, &mut self.be, &mut self.irq)
    }
    fn rd(&mut self, off: u64) -> u32 {
        self.access(off, 4, false, 0).unwrap() as u32
    }
    fn wr(&mut self, off: u64, v: u32) {
        assert_eq!(self.access(off, 4, true, u64::from(v)), Ok(0));
    }
    fn cfg(&mut self, off: u64, width: u8) -> u64 {
        self.access(CONFIG + off, width, false, 0).unwrap()
    }
    fn status(&mut self) -> u32 {
        self.rd(STATUS)
    }

    fn alloc(&mut self, len: u64, align: u64) -> u64 {
        let a = self.bump.next_multiple_of(align);
        self.bump = a + len;
        assert!(self.bump <= RAM + RAM_LEN as u64);
        a
    }

    fn device_features(&mut self) -> u64 {
        self.wr(DEVICE_FEATURES_SEL, 1);
        let hi = self.rd(DEVICE_FEATURES);
        self.wr(DEVICE_FEATURES_SEL, 0);
        let lo = self.rd(DEVICE_FEATURES);
        (u64::from(hi) << 32) | u64::from(lo)
    }

    /// Reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK: the status read back.
    fn negotiate(&mut self, features: u64) -> u32 {
        self.wr(STATUS, 0);
        self.be.calls.clear();
        self.wr(STATUS, S_ACKNOWLEDGE);
        self.wr(STATUS, S_ACKNOWLEDGE | S_DRIVER);
        self.wr(DRIVER_FEATURES_SEL, 1);
        self.wr(DRIVER_FEATURES, (features >> 32) as u32);
        self.wr(DRIVER_FEATURES_SEL, 0);
        self.wr(DRIVER_FEATURES, features as u32);
        self.wr(STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
        self.status()
    }

    fn setup_queue(&mut self, q: usize, num: u16) {
        self.wr(QUEUE_SEL, q as u32);
        assert_eq!(self.rd(QUEUE_READY), 0);
        assert!(u32::from(num) <= self.rd(QUEUE_NUM_MAX));
        let n = u64::from(num);
        let d = DrvQ {
            num,
            desc: self.alloc(16 * n, 16),
            avail: self.alloc(6 + 2 * n, 2),
            used: self.alloc(6 + 8 * n, 4),
            avail_idx: 0,
            next_desc: 0,
        };
        self.wr(QUEUE_NUM, u32::from(num));
        self.wr(QUEUE_DESC_LOW, d.desc as u32);
        self.wr(QUEUE_DESC_HIGH, (d.desc >> 32) as u32);
        self.wr(QUEUE_DRIVER_LOW, d.avail as u32);
        self.wr(QUEUE_DRIVER_HIGH, (d.avail >> 32) as u32);
        self.wr(QUEUE_DEVICE_LOW, d.used as u32);
        self.wr(QUEUE_DEVICE_HIGH, (d.used >> 32) as u32);
        self.wr(QUEUE_READY, 1);
        assert_eq!(self.rd(QUEUE_READY), 1);
        self.q[q] = d;
        if q == 0 {
            self.be.used_idx_at = d.used + USED_IDX;
        }
    }

    fn driver_ok(&mut self) {
        let s = self.status();
        self.wr(STATUS, s | S_DRIVER_OK);
    }

    /// Full bring-up with `num`-entry queues.
    fn up(cfg: Config, num: u16) -> Self {
        let mut d = Self::new(cfg);
        assert_ne!(d.negotiate(WANTED) & S_FEATURES_OK, 0);
        d.setup_queue(0, num);
        d.setup_queue(1, num);
        d.driver_ok();
        assert_eq!(d.status() & S_DRIVER_OK, S_DRIVER_OK);
        d
    }

    fn write_desc(&mut self, q: usize, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&addr.to_le_bytes());
        b[8..12].copy_from_slice(&len.to_le_bytes());
        b[12..14].copy_from_slice(&flags.to_le_bytes());
        b[14..].copy_from_slice(&next.to_le_bytes());
        self.mem
            .ram
            .write_bytes(self.q[q].desc + 16 * u64::from(i), &b);
    }

    /// Makes `head` available (without notifying).
    fn push_avail(&mut self, q: usize, head: u16) {
        let d = self.q[q];
        let slot = u64::from(d.avail_idx % d.num);
        self.mem
            .ram
            .write_bytes(d.avail + 4 + 2 * slot, &head.to_le_bytes());
        self.q[q].avail_idx = d.avail_idx.wrapping_add(1);
        self.set_avail_idx(q, self.q[q].avail_idx);
    }

    fn set_avail_idx(&mut self, q: usize, idx: u16) {
        self.mem
            .ram
            .write_bytes(self.q[q].avail + 2, &idx.to_le_bytes());
    }

    /// Posts a chain of `(addr, len, writable)` buffers; returns its head.
    fn post(&mut self, q: usize, bufs: &[(u64, u32, bool)]) -> u16 {
        let num = self.q[q].num;
        let head = self.q[q].next_desc;
        for (k, &(addr, len, w)) in bufs.iter().enumerate() {
            let i = (head + k as u16) % num;
            let last = k + 1 == bufs.len();
            let flags = if w { DESC_F_WRITE } else { 0 } | if last { 0 } else { DESC_F_NEXT };
            self.write_desc(q, i, addr, len, flags, (i + 1) % num);
        }
        self.q[q].next_desc = (head + bufs.len() as u16) % num;
        self.push_avail(q, head);
        head
    }

    /// Posts a request (readable bytes, `wlen` writable bytes); returns the writable
    /// buffer.
    fn post_req(&mut self, req: &[u8], wlen: u32) -> u64 {
        let r = self.alloc(req.len() as u64, 8);
        self.mem.ram.write_bytes(r, req);
        let w = self.alloc(u64::from(wlen), 8);
        self.mem.ram.write_bytes(w, &vec![0xee; wlen as usize]);
        self.post(0, &[(r, req.len() as u32, false), (w, wlen, true)]);
        w
    }

    fn kick(&mut self) {
        self.wr(QUEUE_NOTIFY, 0);
    }

    fn used_idx(&self, q: usize) -> u16 {
        let mut b = [0u8; 2];
        self.mem.ram.read_bytes(self.q[q].used + USED_IDX, &mut b);
        u16::from_le_bytes(b)
    }

    fn used_elem(&self, q: usize, i: u16) -> (u32, u32) {
        let d = self.q[q];
        let mut b = [0u8; 8];
        let slot = u64::from(i % d.num);
        self.mem.ram.read_bytes(d.used + 4 + 8 * slot, &mut b);
        (
            u32::from_le_bytes(b[..4].try_into().unwrap()),
            u32::from_le_bytes(b[4..].try_into().unwrap()),
        )
    }

    /// Sends one request, kicks, and returns the used length and the tail status (if the
    /// used length covers the writable part).
    fn send(&mut self, req: &[u8], wlen: u32) -> (u32, Option<u8>) {
        let before = self.used_idx(0);
        let w = self.post_req(req, wlen);
        self.kick();
        assert_eq!(self.used_idx(0), before.wrapping_add(1), "request not used");
        let (_, len) = self.used_elem(0, before);
        let mut st = [0u8; 1];
        self.mem.ram.read_bytes(w + u64::from(wlen) - 4, &mut st);
        (len, (len == wlen).then_some(st[0]))
    }

    fn status_of(&mut self, req: &[u8]) -> u8 {
        let (len, st) = self.send(req, 4);
        assert_eq!(len, 4);
        st.unwrap()
    }
}

fn attach(domain: u32, ep: u32, flags: u32) -> Vec<u8> {
    let mut b = vec![0u8; ATTACH_SIZE];
    b[0] = T_ATTACH;
    b[4..8].copy_from_slice(&domain.to_le_bytes());
    b[8..12].copy_from_slice(&ep.to_le_bytes());
    b[12..16].copy_from_slice(&flags.to_le_bytes());
    b
}

fn detach(domain: u32, ep: u32) -> Vec<u8> {
    let mut b = vec![0u8; DETACH_SIZE];
    b[0] = T_DETACH;
    b[4..8].copy_from_slice(&domain.to_le_bytes());
    b[8..12].copy_from_slice(&ep.to_le_bytes());
    b
}

fn map(domain: u32, start: u64, end: u64, phys: u64, flags: u32) -> Vec<u8> {
    let mut b = vec![0u8; MAP_SIZE];
    b[0] = T_MAP;
    b[4..8].copy_from_slice(&domain.to_le_bytes());
    b[8..16].copy_from_slice(&start.to_le_bytes());
    b[16..24].copy_from_slice(&end.to_le_bytes());
    b[24..32].copy_from_slice(&phys.to_le_bytes());
    b[32..36].copy_from_slice(&flags.to_le_bytes());
    b
}

fn unmap(domain: u32, start: u64, end: u64) -> Vec<u8> {
    let mut b = vec![0u8; UNMAP_SIZE];
    b[0] = T_UNMAP;
    b[4..8].copy_from_slice(&domain.to_le_bytes());
    b[8..16].copy_from_slice(&start.to_le_bytes());
    b[16..24].copy_from_slice(&end.to_le_bytes());
    b
}

fn probe(ep: u32) -> Vec<u8> {
    let mut b = vec![0u8; PROBE_SIZE];
    b[0] = T_PROBE;
    b[4..8].copy_from_slice(&ep.to_le_bytes());
    b
}

const RW: u32 = MAP_F_READ | MAP_F_WRITE;
const PROPS: u32 = req::PROBE_PROPS_SIZE as u32;

// ----------------------------------------------------------------------------------------
// Transport.

#[test]
fn identification_and_config_space() {
    let cfg = Config {
        input_end: (1 << 40) - 1,
        domain_start: 1,
        domain_end: 300,
        ..Config::default()
    };
    let mut d = Driver::new(cfg);
    assert_eq!(d.rd(MAGIC_VALUE), 0x7472_6976);
    assert_eq!(d.rd(VERSION), 2);
    assert_eq!(d.rd(DEVICE_ID), 23);
    assert_eq!(d.rd(VENDOR_ID), cfg.vendor_id);
    // page_size_mask as two 32-bit halves, and narrower reads of it.
    assert_eq!(d.cfg(CFG_PAGE_SIZE_MASK, 4), 0x1000);
    assert_eq!(d.cfg(CFG_PAGE_SIZE_MASK + 4, 4), 0);
    assert_eq!(d.cfg(CFG_PAGE_SIZE_MASK, 2), 0x1000);
    assert_eq!(d.cfg(CFG_PAGE_SIZE_MASK + 1, 1), 0x10);
    assert_eq!(d.cfg(CFG_INPUT_START, 4), 0);
    assert_eq!(d.cfg(CFG_INPUT_END, 4), 0xffff_ffff);
    assert_eq!(d.cfg(CFG_INPUT_END + 4, 4), 0xff);
    assert_eq!(d.cfg(CFG_DOMAIN_START, 4), 1);
    assert_eq!(d.cfg(CFG_DOMAIN_END, 4), 300);
    assert_eq!(d.cfg(CFG_PROBE_SIZE, 4), u64::from(PROPS));
    assert_eq!(d.cfg(CFG_BYPASS, 1), 0);
    assert_eq!(d.cfg(0x80, 4), 0, "past the config struct: zero");
    // Widths and alignment the transport does not allow.
    assert_eq!(d.access(CONFIG, 8, false, 0), Err(Abort), "64-bit config");
    assert_eq!(
        d.access(CONFIG + 2, 4, false, 0),
        Err(Abort),
        "unaligned config"
    );
    assert_eq!(d.access(STATUS, 2, false, 0), Err(Abort), "16-bit register");
    assert_eq!(d.access(STATUS, 1, true, 1), Err(Abort), "8-bit register");
    assert_eq!(
        d.access(STATUS + 1, 4, false, 0),
        Err(Abort),
        "unaligned register"
    );
    assert_eq!(
        d.access(WINDOW, 4, false, 0),
        Err(Abort),
        "outside the window"
    );
    assert_eq!(d.status(), 0, "aborted write had no effect");
    // No shared memory regions.
    assert_eq!(d.rd(SHM_LEN_LOW), u32::MAX);
    assert_eq!(d.rd(SHM_LEN_HIGH), u32::MAX);
    // Only two queues.
    d.wr(QUEUE_SEL, 0);
    assert_eq!(d.rd(QUEUE_NUM_MAX), mmio::REQUESTQ_MAX);
    d.wr(QUEUE_SEL, 1);
    assert_eq!(d.rd(QUEUE_NUM_MAX), mmio::EVENTQ_MAX);
    d.wr(QUEUE_SEL, 2);
    assert_eq!(d.rd(QUEUE_NUM_MAX), 0);
}

#[test]
fn offered_features() {
    let mut d = Driver::new(Config::default());
    let f = d.device_features();
    assert_eq!(f, WANTED, "{f:#x}");
    for not in [
        F_ACCESS_PLATFORM,
        F_INDIRECT_DESC,
        F_EVENT_IDX,
        F_RING_PACKED,
        F_BYPASS,
        F_MMIO,
    ] {
        assert_eq!(f & not, 0, "{not:#x} offered");
    }
    let mut d = Driver::new(Config {
        mmio_maps: true,
        ..Config::default()
    });
    assert_eq!(d.device_features(), WANTED | F_MMIO);
}

#[test]
fn full_negotiation() {
    let mut d = Driver::new(Config::default());
    assert_eq!(d.dev.unattached(), Unattached::Identity);
    let st = d.negotiate(WANTED);
    assert_eq!(st, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
    assert_eq!(d.dev.features(), WANTED);
    d.setup_queue(0, 8);
    d.setup_queue(1, 8);
    assert!(!d.dev.driver_ok());
    assert_eq!(
        d.dev.unattached(),
        Unattached::Identity,
        "identity until DRIVER_OK"
    );
    d.driver_ok();
    assert!(d.dev.driver_ok());
    assert_eq!(d.dev.unattached(), Unattached::Blocked);
    assert_eq!(d.be.calls, vec![Call::Policy(Unattached::Blocked)]);
    // Feature writes after FEATURES_OK are ignored.
    d.wr(DRIVER_FEATURES_SEL, 0);
    d.wr(DRIVER_FEATURES, 0);
    assert_eq!(d.dev.features(), WANTED);
    // Status bits are sticky; the device's NEEDS_RESET cannot be set by the driver.
    d.wr(STATUS, S_ACKNOWLEDGE | S_DEVICE_NEEDS_RESET);
    assert_eq!(
        d.status(),
        S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK
    );
    assert!(!d.dev.needs_reset());
    // A request works.
    assert_eq!(d.status_of(&attach(1, 8, 0)), S_OK);
}

#[test]
fn features_ok_refused_for_unknown_bits() {
    for bad in [
        WANTED | F_INDIRECT_DESC,
        WANTED | F_ACCESS_PLATFORM,
        WANTED | (1 << 50),
        WANTED | F_MMIO,
        WANTED & !F_VERSION_1,
    ] {
        let mut d = Driver::new(Config::default());
        let st = d.negotiate(bad);
        assert_eq!(st & S_FEATURES_OK, 0, "{bad:#x} accepted");
        assert_eq!(d.dev.features(), 0);
        // DRIVER_OK without FEATURES_OK is refused too, and nothing is served.
        d.setup_queue(0, 4);
        d.driver_ok();
        assert_eq!(d.status() & S_DRIVER_OK, 0);
        assert!(!d.dev.driver_ok());
        d.post_req(&attach(1, 1, 0), 4);
        d.kick();
        assert_eq!(d.used_idx(0), 0);
        assert!(d.be.calls.is_empty(), "{:?}", d.be.calls);
    }
}

#[test]
fn reset_mid_way() {
    let mut d = Driver::up(Config::default(), 8);
    assert_eq!(d.status_of(&attach(1, 8, 0)), S_OK);
    assert_eq!(d.status_of(&map(1, 0x10000, 0x1ffff, RAM, RW)), S_OK);
    d.be.calls.clear();
    d.wr(STATUS, 0);
    assert_eq!(
        d.be.calls,
        vec![Call::Reset, Call::Policy(Unattached::Identity)]
    );
    assert_eq!(d.status(), 0);
    assert_eq!(d.rd(INTERRUPT_STATUS), 0);
    d.wr(QUEUE_SEL, 0);
    assert_eq!(d.rd(QUEUE_READY), 0);
    assert!(!d.dev.driver_ok());
    assert_eq!(d.dev.unattached(), Unattached::Identity);
    // The old queue is gone: a kick serves nothing.
    d.be.calls.clear();
    d.post_req(&attach(1, 9, 0), 4);
    d.kick();
    assert!(d.be.calls.is_empty());
    // And the device comes back up from scratch.
    assert_ne!(d.negotiate(WANTED) & S_FEATURES_OK, 0);
    d.setup_queue(0, 8);
    d.setup_queue(1, 8);
    d.driver_ok();
    assert_eq!(d.status_of(&attach(2, 8, 0)), S_OK);
    assert_eq!(
        d.be.ops(),
        vec![Call::Attach(2, 8, false), Call::EndOfKick(0)]
    );
    assert_eq!(d.dev.stats().resets, 3, "negotiate resets first too");
    // Bypass set by the driver survives a device reset.
    d.access(CONFIG + CFG_BYPASS, 1, true, 1).unwrap();
    d.wr(STATUS, 0);
    assert!(d.dev.bypass());
    assert_eq!(d.cfg(CFG_BYPASS, 1), 1);
}

#[test]
fn bypass_policy() {
    let mut d = Driver::up(Config::default(), 4);
    assert_eq!(d.dev.unattached(), Unattached::Blocked);
    // Only 0 or 1.
    d.access(CONFIG + CFG_BYPASS, 1, true, 2).unwrap();
    assert!(!d.dev.bypass());
    // A 32-bit write covering it (reserved bytes ignored).
    d.access(CONFIG + CFG_BYPASS, 4, true, 0xffff_ff01).unwrap();
    assert!(d.dev.bypass());
    assert_eq!(d.cfg(CFG_BYPASS, 4), 1);
    assert_eq!(d.dev.unattached(), Unattached::Identity);
    d.access(CONFIG + CFG_BYPASS, 1, true, 0).unwrap();
    assert_eq!(d.dev.unattached(), Unattached::Blocked);
    assert_eq!(
        d.be.calls,
        vec![
            Call::Policy(Unattached::Blocked),
            Call::Policy(Unattached::Identity),
            Call::Policy(Unattached::Blocked),
        ]
    );
    // Other config fields are read-only.
    d.access(CONFIG + CFG_PAGE_SIZE_MASK, 4, true, 0).unwrap();
    assert_eq!(d.cfg(CFG_PAGE_SIZE_MASK, 4), 0x1000);
    // Without BYPASS_CONFIG negotiated the field cannot be written, but a device that
    // starts in bypass keeps unattached endpoints in identity.
    let mut d = Driver::new(Config {
        bypass: true,
        ..Config::default()
    });
    d.negotiate(WANTED & !F_BYPASS_CONFIG);
    d.setup_queue(0, 4);
    d.driver_ok();
    d.access(CONFIG + CFG_BYPASS, 1, true, 0).unwrap();
    assert!(d.dev.bypass());
    assert_eq!(d.dev.unattached(), Unattached::Identity);
    // And ATTACH_F_BYPASS is an unknown flag then.
    assert_eq!(d.status_of(&attach(1, 1, ATTACH_F_BYPASS)), S_INVAL);
}

// ----------------------------------------------------------------------------------------
// Requests.

#[test]
fn requests_reach_the_backend_decoded() {
    let mut d = Driver::up(Config::default(), 16);
    let irqs = d.irq.0;
    assert_eq!(d.status_of(&attach(7, 0x10, 0)), S_OK);
    assert_eq!(d.status_of(&attach(8, 0x18, ATTACH_F_BYPASS)), S_OK);
    assert_eq!(
        d.status_of(&map(7, 0x10_0000, 0x10_3fff, RAM + 0x4000, MAP_F_READ)),
        S_OK
    );
    assert_eq!(d.status_of(&unmap(7, 0x10_0000, 0x10_3fff)), S_OK);
    assert_eq!(d.status_of(&detach(7, 0x10)), S_OK);
    assert_eq!(
        d.be.ops(),
        vec![
            Call::Attach(7, 0x10, false),
            Call::EndOfKick(0),
            Call::Attach(8, 0x18, true),
            Call::EndOfKick(1),
            Call::Map(7, 0x10_0000, 0x10_3fff, RAM + 0x4000, MAP_F_READ),
            Call::EndOfKick(2),
            Call::Unmap(7, 0x10_0000, 0x10_3fff),
            Call::EndOfKick(3),
            Call::Detach(7, 0x10),
            Call::EndOfKick(4),
        ]
    );
    assert_eq!(d.dev.stats().requests, 5);
    assert_eq!(d.irq.0, irqs + 5, "one used-buffer interrupt per kick");
    assert_ne!(d.rd(INTERRUPT_STATUS) & INT_VRING, 0);
    d.wr(INTERRUPT_ACK, INT_VRING);
    assert_eq!(d.rd(INTERRUPT_STATUS), 0);
}

#[test]
fn used_elements_name_the_head() {
    let mut d = Driver::up(Config::default(), 8);
    d.post_req(&attach(1, 1, 0), 4);
    d.post_req(&attach(1, 2, 0), 4);
    d.post_req(&attach(1, 3, 0), 4);
    d.kick();
    assert_eq!(d.used_idx(0), 3);
    assert_eq!(d.used_elem(0, 0), (0, 4));
    assert_eq!(d.used_elem(0, 1), (2, 4));
    assert_eq!(d.used_elem(0, 2), (4, 4));
}

#[test]
fn backend_errors_become_statuses() {
    for (e, s) in [
        (BackendError::Unsupported, S_UNSUPP),
        (BackendError::Invalid, S_INVAL),
        (BackendError::Range, S_RANGE),
        (BackendError::NoEnt, S_NOENT),
        (BackendError::Fault, S_FAULT),
        (BackendError::NoMem, S_NOMEM),
        (BackendError::Device, S_DEVERR),
    ] {
        let mut d = Driver::up(Config::default(), 4);
        d.be.fail = Some(e);
        assert_eq!(d.status_of(&attach(1, 1, 0)), s, "{e:?}");
    }
}

#[test]
fn contents_checked_before_the_backend() {
    let cfg = Config {
        input_start: 0x1000,
        input_end: (1 << 32) - 1,
        domain_start: 1,
        domain_end: 10,
        ..Config::default()
    };
    let mut d = Driver::up(cfg, 32);
    let cases: Vec<(Vec<u8>, u8)> = vec![
        (map(1, 0x10_0800, 0x10_ffff, RAM, RW), S_RANGE),
        (map(1, 0x10_0000, 0x10_0ffe, RAM, RW), S_RANGE),
        (map(1, 0x10_0000, 0x10_0fff, RAM + 0x10, RW), S_RANGE),
        (map(1, 0x0, 0xfff, RAM, RW), S_RANGE),
        (map(1, 0xffff_f000, 0x1_0000_0fff, RAM, RW), S_RANGE),
        (map(1, 0x2000, 0x3fff, !0xfff, RW), S_RANGE),
        (map(1, 0x3000, 0x1fff, RAM, RW), S_INVAL),
        (map(1, 0x2000, 0x2fff, RAM, 0x10), S_INVAL),
        (map(1, 0x2000, 0x2fff, RAM, MAP_F_MMIO), S_INVAL),
        (map(0, 0x2000, 0x2fff, RAM, RW), S_RANGE),
        (map(11, 0x2000, 0x2fff, RAM, RW), S_RANGE),
        (unmap(1, 0x3000, 0x2fff), S_INVAL),
        (unmap(1, 0x0, 0xfff), S_RANGE),
        (unmap(12, 0x2000, 0x2fff), S_RANGE),
        (attach(1, 1, 2), S_INVAL),
        (attach(0, 1, 0), S_RANGE),
        (detach(u32::MAX, 1), S_RANGE),
        (
            {
                let mut a = attach(1, 1, 0);
                a[17] = 1;
                a
            },
            S_INVAL,
        ),
        (
            map(1, 0x2000, 0x2fff, RAM, RW)[..MAP_SIZE - 1].to_vec(),
            S_INVAL,
        ),
        (attach(1, 1, 0)[..8].to_vec(), S_INVAL),
    ];
    for (req, want) in &cases {
        assert_eq!(d.status_of(req), *want, "{req:02x?}");
    }
    assert_eq!(
        d.be.ops()
            .iter()
            .filter(|c| !matches!(c, Call::EndOfKick(_)))
            .count(),
        0,
        "{:?}",
        d.be.calls
    );
    // DETACH ignores its reserved bytes; extra readable bytes are ignored.
    let mut x = detach(1, 1);
    x[15] = 9;
    x.extend_from_slice(&[1, 2, 3, 4]);
    assert_eq!(d.status_of(&x), S_OK);
    // A range reaching the top of the input range is fine.
    assert_eq!(
        d.status_of(&map(1, 0xffff_f000, 0xffff_ffff, RAM, RW)),
        S_OK
    );
    assert!(
        d.be.calls
            .contains(&Call::Map(1, 0xffff_f000, 0xffff_ffff, RAM, RW))
    );
}

#[test]
fn mmio_maps_only_when_negotiated() {
    let mut d = Driver::new(Config {
        mmio_maps: true,
        ..Config::default()
    });
    d.negotiate(WANTED | F_MMIO);
    d.setup_queue(0, 4);
    d.driver_ok();
    let f = MAP_F_WRITE | MAP_F_MMIO;
    assert_eq!(
        d.status_of(&map(1, 0x8000_0000, 0x8000_0fff, 0x0800_0000, f)),
        S_OK
    );
    assert_eq!(
        d.be.ops()[0],
        Call::Map(1, 0x8000_0000, 0x8000_0fff, 0x0800_0000, f)
    );
}

#[test]
fn unknown_or_unnegotiated_types_are_not_written() {
    let mut d = Driver::up(Config::default(), 8);
    let mut x = attach(1, 1, 0);
    x[0] = 0x42;
    assert_eq!(d.send(&x, 4), (0, None));
    // MAP/UNMAP/PROBE without their features.
    let mut d = Driver::new(Config::default());
    d.negotiate(F_VERSION_1);
    d.setup_queue(0, 8);
    d.driver_ok();
    assert_eq!(d.send(&map(1, 0, 0xfff, RAM, RW), 4), (0, None));
    assert_eq!(d.send(&unmap(1, 0, 0xfff), 4), (0, None));
    assert_eq!(d.send(&probe(1), PROPS + 4), (0, None));
    assert_eq!(d.status_of(&attach(1, 1, 0)), S_OK);
    assert!(d.be.ops().contains(&Call::Attach(1, 1, false)));
    assert!(
        !d.be
            .ops()
            .iter()
            .any(|c| matches!(c, Call::Map(..) | Call::Unmap(..) | Call::Probe(_)))
    );
}

#[test]
fn probe_reports_reserved_regions() {
    let mut d = Driver::up(Config::default(), 8);
    d.be.resv
        .push(ResvRegion {
            kind: ResvKind::Msi,
            start: 0x0808_0000,
            end: 0x0808_ffff,
        })
        .unwrap();
    d.be.resv
        .push(ResvRegion {
            kind: ResvKind::Reserved,
            start: 0x1000_0000,
            end: 0x1fff_ffff,
        })
        .unwrap();
    let wlen = PROPS + 4;
    let before = d.used_idx(0);
    let w = d.post_req(&probe(0x20), wlen);
    d.kick();
    assert_eq!(d.used_elem(0, before).1, wlen);
    let mut out = vec![0u8; wlen as usize];
    d.mem.ram.read_bytes(w, &mut out);
    let prop = |i: usize| &out[i * RESV_MEM_SIZE..(i + 1) * RESV_MEM_SIZE];
    let p0 = prop(0);
    assert_eq!(u16::from_le_bytes([p0[0], p0[1]]), PROBE_T_RESV_MEM);
    assert_eq!(
        u16::from_le_bytes([p0[2], p0[3]]),
        20,
        "length excludes the header"
    );
    assert_eq!(p0[4], RESV_MEM_T_MSI);
    assert_eq!(&p0[5..8], &[0, 0, 0]);
    assert_eq!(
        u64::from_le_bytes(p0[8..16].try_into().unwrap()),
        0x0808_0000
    );
    assert_eq!(
        u64::from_le_bytes(p0[16..24].try_into().unwrap()),
        0x0808_ffff
    );
    let p1 = prop(1);
    assert_eq!(p1[4], RESV_MEM_T_RESERVED);
    assert_eq!(
        u64::from_le_bytes(p1[8..16].try_into().unwrap()),
        0x1000_0000
    );
    assert!(
        out[2 * RESV_MEM_SIZE..PROPS as usize]
            .iter()
            .all(|&b| b == 0),
        "rest zeroed"
    );
    assert_eq!(out[PROPS as usize], S_OK);
    assert_eq!(d.be.ops()[0], Call::Probe(0x20));
    // A properties buffer of the wrong size: INVAL, nothing asked of the backend.
    d.be.calls.clear();
    assert_eq!(d.send(&probe(0x20), PROPS), (PROPS, Some(S_INVAL)));
    assert_eq!(d.be.ops(), vec![Call::EndOfKick(1)]);
    // A failing probe writes no property.
    d.be.fail = Some(BackendError::NoEnt);
    let w = d.post_req(&probe(0x21), wlen);
    d.kick();
    d.mem.ram.read_bytes(w, &mut out);
    assert!(out[..PROPS as usize].iter().all(|&b| b == 0));
    assert_eq!(out[PROPS as usize], S_NOENT);
}

#[test]
fn any_descriptor_layout_is_accepted() {
    // The request split over three readable descriptors, the tail over two writable ones.
    let mut d = Driver::up(Config::default(), 8);
    let req = map(3, 0x4000, 0x4fff, RAM + 0x2000, RW);
    let r = d.alloc(64, 8);
    d.mem.ram.write_bytes(r, &req);
    let w = d.alloc(8, 8);
    d.post(
        0,
        &[
            (r, 1, false),
            (r + 1, 20, false),
            (r + 21, 15, false),
            (w, 1, true),
            (w + 4, 3, true),
        ],
    );
    d.kick();
    assert_eq!(d.used_elem(0, 0), (0, 4));
    let mut t = [0xffu8; 8];
    d.mem.ram.read_bytes(w, &mut t);
    assert_eq!(&t, &[0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(
        d.be.ops()[0],
        Call::Map(3, 0x4000, 0x4fff, RAM + 0x2000, RW)
    );
}

// ----------------------------------------------------------------------------------------
// One invalidation per kick.

#[test]
fn unmaps_of_one_kick_share_one_end_of_kick_before_any_used_entry() {
    let mut d = Driver::up(Config::default(), 64);
    for i in 0..8u64 {
        d.post_req(&map(1, i << 12, (i << 12) | 0xfff, RAM, RW), 4);
    }
    d.kick();
    assert_eq!(d.used_idx(0), 8);
    d.be.calls.clear();
    let irqs = d.irq.0;
    for i in 0..8u64 {
        d.post_req(&unmap(1, i << 12, (i << 12) | 0xfff), 4);
    }
    d.kick();
    let ends: Vec<&Call> =
        d.be.calls
            .iter()
            .filter(|c| matches!(c, Call::EndOfKick(_)))
            .collect();
    assert_eq!(
        ends,
        vec![&Call::EndOfKick(8)],
        "one end_of_kick, before the used index moved"
    );
    assert_eq!(
        d.be.calls.last(),
        Some(&Call::EndOfKick(8)),
        "after every UNMAP"
    );
    assert_eq!(d.be.calls.len(), 9);
    assert_eq!(d.used_idx(0), 16);
    assert_eq!(d.irq.0, irqs + 1);
}

#[test]
fn failed_end_of_kick_publishes_nothing() {
    let mut d = Driver::up(Config::default(), 8);
    d.be.fail_end = true;
    d.post_req(&unmap(1, 0, 0xfff), 4);
    d.post_req(&unmap(1, 0x1000, 0x1fff), 4);
    d.kick();
    assert_eq!(d.used_idx(0), 0, "nothing published");
    assert!(d.dev.needs_reset());
    assert_ne!(d.rd(INTERRUPT_STATUS) & INT_CONFIG, 0);
    assert_eq!(d.dev.stats().last_malformed, Some(Malformed::Backend));
}

#[test]
fn kick_serves_at_most_a_queue_and_wraps_the_indices() {
    // A two-entry queue driven past the 16-bit wrap of both indices.
    let mut d = Driver::up(Config::default(), 2);
    let r = d.alloc(ATTACH_SIZE as u64, 8);
    d.mem.ram.write_bytes(r, &attach(1, 1, 0));
    let w = d.alloc(4, 8);
    d.write_desc(0, 0, r, ATTACH_SIZE as u32, DESC_F_NEXT, 1);
    d.write_desc(0, 1, w, 4, DESC_F_WRITE, 0);
    for k in 0..(1u32 << 16) + 5 {
        // One buffer a kick, always the same chain: both indices run through 65535 → 0.
        d.push_avail(0, 0);
        d.kick();
        assert_eq!(d.used_idx(0), d.q[0].avail_idx, "kick {k}");
    }
    assert!(!d.dev.needs_reset());
    assert_eq!(d.dev.stats().requests, (1 << 16) + 5);
    // Exactly a queue's worth at once is fine.
    d.push_avail(0, 0);
    d.push_avail(0, 0);
    d.kick();
    assert_eq!(d.used_idx(0), d.q[0].avail_idx);
    assert!(!d.dev.needs_reset());
}

#[test]
fn no_interrupt_flag_suppresses_the_used_interrupt() {
    let mut d = Driver::up(Config::default(), 4);
    d.mem
        .ram
        .write_bytes(d.q[0].avail, &AVAIL_F_NO_INTERRUPT.to_le_bytes());
    let irqs = d.irq.0;
    assert_eq!(d.status_of(&attach(1, 1, 0)), S_OK);
    assert_eq!(d.irq.0, irqs);
    assert_eq!(d.rd(INTERRUPT_STATUS), 0);
}

// ----------------------------------------------------------------------------------------
// Malformed queues.

/// Runs `break_it` on a live device with a good request already served, kicks, and checks
/// that the device is in DEVICE_NEEDS_RESET with a config interrupt, that the backend
/// heard nothing after the break, and that later kicks are ignored until a reset.
fn expect_needs_reset(why: Malformed, break_it: impl FnOnce(&mut Driver)) {
    let mut d = Driver::up(Config::default(), 8);
    assert_eq!(d.status_of(&attach(1, 1, 0)), S_OK);
    d.be.calls.clear();
    let irqs = d.irq.0;
    let used = d.used_idx(0);
    break_it(&mut d);
    d.kick();
    assert!(d.dev.needs_reset(), "{why:?}: not in NEEDS_RESET");
    assert_eq!(d.dev.stats().last_malformed, Some(why));
    assert_ne!(d.status() & S_DEVICE_NEEDS_RESET, 0);
    assert_ne!(d.rd(INTERRUPT_STATUS) & INT_CONFIG, 0);
    assert!(d.irq.0 > irqs, "{why:?}: no interrupt");
    assert!(
        d.be.ops().is_empty(),
        "{why:?}: backend called: {:?}",
        d.be.calls
    );
    assert_eq!(d.used_idx(0), used, "{why:?}: used index moved");
    // Good requests are not served any more.
    d.post_req(&attach(1, 2, 0), 4);
    d.kick();
    assert!(d.be.ops().is_empty(), "{why:?}: served after NEEDS_RESET");
    // Events are dropped.
    let f = Fault {
        reason: FaultReason::Mapping,
        endpoint: EndpointId(1),
        read: true,
        write: false,
        exec: false,
        address: None,
    };
    assert_eq!(
        d.dev.report_fault(&f, &mut d.mem, &mut d.irq),
        Delivery::Dropped
    );
    // A reset brings it back.
    d.mem.deny.clear();
    d.wr(STATUS, 0);
    assert!(!d.dev.needs_reset());
    assert_eq!(d.be.ops(), vec![Call::Reset]);
}

#[test]
fn malformed_head_index() {
    expect_needs_reset(Malformed::Index, |d| d.push_avail(0, 8));
}

#[test]
fn malformed_next_index() {
    expect_needs_reset(Malformed::Index, |d| {
        let r = d.alloc(32, 8);
        d.write_desc(0, 5, r, 20, DESC_F_NEXT, 9);
        d.push_avail(0, 5);
    });
}

#[test]
fn malformed_loop() {
    expect_needs_reset(Malformed::Loop, |d| {
        let r = d.alloc(32, 8);
        d.mem.ram.write_bytes(r, &attach(1, 1, 0));
        d.write_desc(0, 3, r, 20, DESC_F_NEXT, 4);
        d.write_desc(0, 4, r, 4, DESC_F_NEXT | DESC_F_WRITE, 4);
        d.push_avail(0, 3);
    });
}

#[test]
fn malformed_too_many_writable_descriptors() {
    let mut d = Driver::up(Config::default(), 32);
    let r = d.alloc(32, 8);
    d.mem.ram.write_bytes(r, &attach(1, 1, 0));
    let w = d.alloc(64, 8);
    let mut bufs = vec![(r, 20, false)];
    bufs.extend((0..queue::MAX_SEGS as u64 + 1).map(|i| (w + i, 1, true)));
    d.post(0, &bufs);
    d.kick();
    assert!(d.dev.needs_reset());
    assert_eq!(d.dev.stats().last_malformed, Some(Malformed::Segments));
    assert!(d.be.ops().is_empty());
}

#[test]
fn malformed_indirect() {
    expect_needs_reset(Malformed::Indirect, |d| {
        let r = d.alloc(32, 16);
        d.write_desc(0, 2, r, 32, DESC_F_INDIRECT, 0);
        d.push_avail(0, 2);
    });
}

#[test]
fn malformed_readable_after_writable() {
    expect_needs_reset(Malformed::Order, |d| {
        let r = d.alloc(32, 8);
        d.mem.ram.write_bytes(r, &attach(1, 1, 0));
        let w = d.alloc(4, 8);
        d.post(0, &[(r, 4, false), (w, 4, true), (r + 4, 16, false)]);
    });
}

#[test]
fn malformed_wrapping_buffer() {
    expect_needs_reset(Malformed::Wrap, |d| {
        d.write_desc(0, 2, u64::MAX - 2, 20, 0, 0);
        d.push_avail(0, 2);
    });
}

#[test]
fn malformed_write_only_header() {
    expect_needs_reset(Malformed::Framing, |d| {
        let w = d.alloc(32, 8);
        d.mem.ram.write_bytes(w, &attach(1, 1, 0));
        d.post(0, &[(w, 24, true)]);
    });
}

#[test]
fn malformed_short_head() {
    expect_needs_reset(Malformed::Framing, |d| {
        let r = d.alloc(32, 8);
        d.mem.ram.write_bytes(r, &attach(1, 1, 0));
        let w = d.alloc(4, 8);
        d.post(0, &[(r, 3, false), (w, 4, true)]);
    });
}

#[test]
fn malformed_short_tail() {
    expect_needs_reset(Malformed::Framing, |d| {
        d.post_req(&attach(1, 1, 0), 3);
    });
}

#[test]
fn malformed_oversized_writable_part() {
    expect_needs_reset(Malformed::Framing, |d| {
        d.post_req(&attach(1, 1, 0), req::WRITE_MAX as u32 + 1);
    });
}

#[test]
fn malformed_avail_idx_jump() {
    expect_needs_reset(Malformed::AvailIdx, |d| {
        d.post_req(&attach(1, 1, 0), 4);
        let idx = d.q[0].avail_idx;
        d.set_avail_idx(0, idx + 8);
    });
}

#[test]
fn malformed_buffer_not_the_hosts() {
    expect_needs_reset(Malformed::Memory, |d| {
        let w = d.post_req(&attach(1, 1, 0), 4);
        d.mem.deny.push((w, w + 4));
    });
}

#[test]
fn malformed_ring_taken_from_the_host() {
    // The host gave its ring page away (e.g. donated it): the device cannot read it.
    expect_needs_reset(Malformed::Memory, |d| {
        d.post_req(&attach(1, 1, 0), 4);
        let desc = d.q[0].desc;
        d.mem.deny.push((desc, desc + 16 * 8));
    });
}

#[test]
fn malformed_ring_moved_while_live() {
    let mut d = Driver::up(Config::default(), 8);
    assert_eq!(d.status_of(&attach(1, 1, 0)), S_OK);
    d.be.calls.clear();
    d.wr(QUEUE_SEL, 0);
    d.wr(QUEUE_DESC_LOW, 0x1000);
    assert!(d.dev.needs_reset());
    assert_ne!(d.rd(INTERRUPT_STATUS) & INT_CONFIG, 0);
    assert_eq!(
        d.dev.queue(0).unwrap().desc,
        d.q[0].desc,
        "layout unchanged"
    );
    d.post_req(&attach(1, 2, 0), 4);
    d.kick();
    assert!(d.be.ops().is_empty());
}

#[test]
fn bad_queue_layouts_are_refused() {
    for (num, desc_off, why) in [
        (3u32, 0u64, "not a power of two"),
        (512, 0, "above max"),
        (0, 0, "zero"),
        (8, 8, "misaligned"),
    ] {
        let mut d = Driver::new(Config::default());
        d.negotiate(WANTED);
        d.wr(QUEUE_SEL, 0);
        d.wr(QUEUE_NUM, num);
        d.wr(QUEUE_DESC_LOW, (RAM + 0x1000 + desc_off) as u32);
        d.wr(QUEUE_DRIVER_LOW, (RAM + 0x3000) as u32);
        d.wr(QUEUE_DEVICE_LOW, (RAM + 0x4000) as u32);
        d.wr(QUEUE_READY, 1);
        assert_eq!(d.rd(QUEUE_READY), 0, "{why}");
        assert!(d.dev.needs_reset(), "{why}");
    }
}

#[test]
fn served_prefix_is_completed_before_needs_reset() {
    let mut d = Driver::up(Config::default(), 8);
    d.post_req(&unmap(1, 0, 0xfff), 4);
    d.post_req(&unmap(1, 0x1000, 0x1fff), 4);
    d.push_avail(0, 7 + 8);
    d.kick();
    assert_eq!(
        d.be.ops(),
        vec![
            Call::Unmap(1, 0, 0xfff),
            Call::Unmap(1, 0x1000, 0x1fff),
            Call::EndOfKick(0)
        ]
    );
    assert_eq!(d.used_idx(0), 2, "the two served requests are published");
    assert!(d.dev.needs_reset());
}

// ----------------------------------------------------------------------------------------
// Events.

fn fault(ep: u32, addr: Option<u64>) -> Fault {
    Fault {
        reason: FaultReason::Mapping,
        endpoint: EndpointId(ep),
        read: false,
        write: true,
        exec: false,
        address: addr.map(Iova),
    }
}

#[test]
fn events_delivered_then_dropped() {
    let mut d = Driver::up(Config::default(), 4);
    let bufs: Vec<u64> = (0..2).map(|_| d.alloc(FAULT_SIZE as u64, 8)).collect();
    for &b in &bufs {
        d.post(1, &[(b, FAULT_SIZE as u32, true)]);
    }
    d.wr(QUEUE_NOTIFY, 1);
    let irqs = d.irq.0;
    let f = fault(0x18, Some(0xdead_0000));
    assert_eq!(
        d.dev.report_fault(&f, &mut d.mem, &mut d.irq),
        Delivery::Delivered
    );
    assert_eq!(d.irq.0, irqs + 1);
    assert_ne!(d.rd(INTERRUPT_STATUS) & INT_VRING, 0);
    assert_eq!(d.used_idx(1), 1);
    assert_eq!(d.used_elem(1, 0), (0, FAULT_SIZE as u32));
    let mut b = [0u8; FAULT_SIZE];
    d.mem.ram.read_bytes(bufs[0], &mut b);
    assert_eq!(b[0], FAULT_R_MAPPING);
    assert_eq!(&b[1..4], &[0, 0, 0]);
    assert_eq!(
        u32::from_le_bytes(b[4..8].try_into().unwrap()),
        FAULT_F_WRITE | FAULT_F_ADDRESS
    );
    assert_eq!(u32::from_le_bytes(b[8..12].try_into().unwrap()), 0x18);
    assert_eq!(&b[12..16], &[0, 0, 0, 0]);
    assert_eq!(
        u64::from_le_bytes(b[16..24].try_into().unwrap()),
        0xdead_0000
    );
    let f2 = Fault {
        reason: FaultReason::Domain,
        ..fault(0x20, None)
    };
    assert_eq!(
        d.dev.report_fault(&f2, &mut d.mem, &mut d.irq),
        Delivery::Delivered
    );
    d.mem.ram.read_bytes(bufs[1], &mut b);
    assert_eq!(b[0], FAULT_R_DOMAIN);
    assert_eq!(
        u32::from_le_bytes(b[4..8].try_into().unwrap()),
        FAULT_F_WRITE
    );
    assert_eq!(u64::from_le_bytes(b[16..24].try_into().unwrap()), 0);
    // No buffer left: dropped and counted, no interrupt.
    let irqs = d.irq.0;
    assert_eq!(
        d.dev.report_fault(&f, &mut d.mem, &mut d.irq),
        Delivery::Dropped
    );
    assert_eq!(d.irq.0, irqs);
    assert_eq!(d.dev.stats().events, 2);
    assert_eq!(d.dev.stats().events_dropped, 1);
    assert!(!d.dev.needs_reset());
    // The driver recycles a buffer: delivered again.
    d.post(1, &[(bufs[0], FAULT_SIZE as u32, true)]);
    assert_eq!(
        d.dev.report_fault(&f, &mut d.mem, &mut d.irq),
        Delivery::Delivered
    );
    assert_eq!(d.used_idx(1), 3);
    assert!(d.be.ops().is_empty(), "events do not involve the backend");
}

#[test]
fn events_dropped_before_driver_ok() {
    let mut d = Driver::new(Config::default());
    d.negotiate(WANTED);
    d.setup_queue(1, 4);
    let b = d.alloc(FAULT_SIZE as u64, 8);
    d.post(1, &[(b, FAULT_SIZE as u32, true)]);
    assert_eq!(
        d.dev.report_fault(&fault(1, None), &mut d.mem, &mut d.irq),
        Delivery::Dropped
    );
    assert_eq!(d.dev.stats().events_dropped, 1);
}

#[test]
fn malformed_event_buffer() {
    for bufs in [
        vec![(0u64, FAULT_SIZE as u32, false)],
        vec![(0, FAULT_SIZE as u32 - 1, true)],
    ] {
        let mut d = Driver::up(Config::default(), 4);
        let b = d.alloc(64, 8);
        let bufs: Vec<(u64, u32, bool)> = bufs.iter().map(|&(_, l, w)| (b, l, w)).collect();
        d.post(1, &bufs);
        let irqs = d.irq.0;
        assert_eq!(
            d.dev.report_fault(&fault(1, None), &mut d.mem, &mut d.irq),
            Delivery::Dropped
        );
        assert!(d.dev.needs_reset());
        assert_eq!(d.dev.stats().last_malformed, Some(Malformed::Framing));
        assert!(d.irq.0 > irqs);
        assert_eq!(d.used_idx(1), 0);
    }
}

#[test]
fn acted_on_request_with_lost_answer_still_gets_end_of_kick() {
    // The used ring is taken from the host between the driver's post and the kick: the
    // UNMAP was done, so its invalidation must still happen.
    let mut d = Driver::up(Config::default(), 8);
    d.post_req(&unmap(1, 0, 0xfff), 4);
    let used = d.q[0].used;
    d.mem
        .deny
        .push((used + USED_RING, used + USED_RING + 8 * 8));
    d.kick();
    assert_eq!(
        d.be.ops(),
        vec![Call::Unmap(1, 0, 0xfff), Call::EndOfKick(0)]
    );
    assert!(d.dev.needs_reset());
    assert_eq!(d.dev.stats().last_malformed, Some(Malformed::Memory));
}

#[test]
fn event_split_over_two_buffers_and_bigger_buffers() {
    let mut d = Driver::up(Config::default(), 4);
    let a = d.alloc(64, 8);
    let b = d.alloc(64, 8);
    d.mem.ram.write_bytes(a, &[0xaa; 64]);
    d.mem.ram.write_bytes(b, &[0xbb; 64]);
    d.post(1, &[(a, 10, true), (b, 40, true)]);
    let f = fault(0x42, Some(0x1234_5000));
    assert_eq!(
        d.dev.report_fault(&f, &mut d.mem, &mut d.irq),
        Delivery::Delivered
    );
    assert_eq!(
        d.used_elem(1, 0),
        (0, FAULT_SIZE as u32),
        "used length: the report only"
    );
    let mut got = [0u8; FAULT_SIZE];
    d.mem.ram.read_bytes(a, &mut got[..10]);
    d.mem.ram.read_bytes(b, &mut got[10..]);
    assert_eq!(got, f.encode());
    let mut rest = [0u8; 26];
    d.mem.ram.read_bytes(b + 14, &mut rest);
    assert!(
        rest.iter().all(|&x| x == 0xbb),
        "nothing written past the report"
    );
    assert_eq!(d.rd(CONFIG_GENERATION), 0);
}
