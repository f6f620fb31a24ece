//! virtio-iommu requests: decoding the device-readable bytes into a typed [`Request`]
//! (every field range-checked against the configuration and the negotiated features),
//! serving it through the [`Backend`] (the domain core), and encoding the reply (the
//! writable part: PROBE properties and the tail status).
//!
//! What the device checks before the backend sees a request (the backend gets only these):
//!
//! | request | check | status |
//! |---|---|---|
//! | any | readable part shorter than the type's | `INVAL` |
//! | ATTACH | reserved bytes not zero; unknown flag; `BYPASS` without `BYPASS_CONFIG` | `INVAL` |
//! | ATTACH, DETACH, MAP, UNMAP | `domain` outside `domain_range` | `RANGE` |
//! | MAP | unknown flag; `MMIO` without `F_MMIO` | `INVAL` |
//! | MAP, UNMAP | `virt_end < virt_start` | `INVAL` |
//! | MAP, UNMAP | outside `input_range` | `RANGE` |
//! | MAP | `virt_start`, `phys_start` or `virt_end + 1` not granule-aligned; `phys` end wraps | `RANGE` |
//! | PROBE | writable part not `probe_size` + tail | `INVAL` |
//!
//! An unknown type, or MAP/UNMAP/PROBE whose feature was not negotiated, is not written at
//! all (used length 0), as the specification asks. Backend errors become statuses in one
//! place, `From<BackendError> for Status`.

use super::Config;
use crate::addr::{Iova, Ipa};
use crate::viommu::regs::*;

/// A domain ID of the driver's (not a Warden domain ID: the backend maps them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DomainId(pub u32);

/// An endpoint ID: what the DTB's `iommu-map` gives the driver (the RID → endpoint
/// mapping Warden uses for the SMMU).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EndpointId(pub u32);

/// MAP permissions and memory type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapFlags(pub u32);

impl MapFlags {
    /// Endpoints may read.
    pub const READ: Self = Self(MAP_F_READ);
    /// Endpoints may write.
    pub const WRITE: Self = Self(MAP_F_WRITE);
    /// Device memory.
    pub const MMIO: Self = Self(MAP_F_MMIO);

    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

/// An inclusive IOVA range, `start <= end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IovaRange {
    /// First byte.
    pub start: Iova,
    /// Last byte.
    pub end: Iova,
}

/// A decoded request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// Attach `endpoint` to `domain` (creating it), a bypass (identity) domain if `bypass`.
    Attach {
        /// Domain.
        domain: DomainId,
        /// Endpoint.
        endpoint: EndpointId,
        /// `ATTACH_F_BYPASS`.
        bypass: bool,
    },
    /// Detach `endpoint` from `domain`.
    Detach {
        /// Domain.
        domain: DomainId,
        /// Endpoint.
        endpoint: EndpointId,
    },
    /// Map `virt` to `phys..` in `domain`.
    Map {
        /// Domain.
        domain: DomainId,
        /// Granule-aligned, inside `input_range`.
        virt: IovaRange,
        /// Granule-aligned host physical (IPA) start; `phys + len` does not wrap.
        phys: Ipa,
        /// Known flags only (MMIO only when negotiated).
        flags: MapFlags,
    },
    /// Remove the mappings inside `virt` from `domain`.
    Unmap {
        /// Domain.
        domain: DomainId,
        /// Inside `input_range`.
        virt: IovaRange,
    },
    /// Reserved regions of `endpoint`.
    Probe {
        /// Endpoint.
        endpoint: EndpointId,
    },
}

/// A reply status (`tail.status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    /// Success.
    Ok = S_OK,
    /// Communication error.
    IoErr = S_IOERR,
    /// Unsupported.
    Unsupp = S_UNSUPP,
    /// Internal error.
    DevErr = S_DEVERR,
    /// Invalid parameters.
    Inval = S_INVAL,
    /// Out-of-range parameters.
    Range = S_RANGE,
    /// No such entry.
    NoEnt = S_NOENT,
    /// Bad address.
    Fault = S_FAULT,
    /// Out of resources.
    NoMem = S_NOMEM,
}

/// What the backend can report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendError {
    /// The operation is not supported (e.g. endpoints of one group in two domains).
    Unsupported,
    /// Invalid parameters (e.g. MAP over a mapping, bypass flag inconsistent with the
    /// domain, MAP or UNMAP on a bypass domain, MAP over a reserved region).
    Invalid,
    /// Out of range (e.g. UNMAP splitting a mapping).
    Range,
    /// No such endpoint or domain.
    NoEnt,
    /// Bad address (e.g. a physical page the host does not own).
    Fault,
    /// Out of resources (domains, VMIDs, page tables, budgets).
    NoMem,
    /// Internal error (e.g. the SMMU did not complete an invalidation).
    Device,
}

impl From<BackendError> for Status {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::Unsupported => Status::Unsupp,
            BackendError::Invalid => Status::Inval,
            BackendError::Range => Status::Range,
            BackendError::NoEnt => Status::NoEnt,
            BackendError::Fault => Status::Fault,
            BackendError::NoMem => Status::NoMem,
            BackendError::Device => Status::DevErr,
        }
    }
}

/// Kind of a reserved region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResvKind {
    /// The driver must not map it.
    Reserved,
    /// An MSI doorbell (e.g. the GICv3 ITS `GITS_TRANSLATER` page): not mapped by the
    /// driver, translated as is.
    Msi,
}

/// A reserved IOVA region of an endpoint, inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResvRegion {
    /// Kind.
    pub kind: ResvKind,
    /// First byte.
    pub start: u64,
    /// Last byte.
    pub end: u64,
}

/// Most reserved regions one PROBE reports.
pub const MAX_RESV: usize = 8;
/// The `probe_size` the device advertises: room for [`MAX_RESV`] RESV_MEM properties.
pub const PROBE_PROPS_SIZE: usize = MAX_RESV * RESV_MEM_SIZE;
/// Largest device-writable part of a request: PROBE properties and the tail.
pub const WRITE_MAX: usize = PROBE_PROPS_SIZE + TAIL_SIZE;

/// The reserved regions of one endpoint (a fixed-capacity list).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResvRegions {
    regions: [ResvRegion; MAX_RESV],
    len: usize,
}

impl Default for ResvRegions {
    fn default() -> Self {
        Self {
            regions: [ResvRegion {
                kind: ResvKind::Reserved,
                start: 0,
                end: 0,
            }; MAX_RESV],
            len: 0,
        }
    }
}

impl ResvRegions {
    /// Adds a region; `Err` when the list is full.
    pub fn push(&mut self, r: ResvRegion) -> Result<(), BackendError> {
        let slot = self.regions.get_mut(self.len).ok_or(BackendError::NoMem)?;
        *slot = r;
        self.len += 1;
        Ok(())
    }

    /// The regions.
    pub fn as_slice(&self) -> &[ResvRegion] {
        &self.regions[..self.len]
    }
}

/// Policy for endpoints the driver has not attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unattached {
    /// The host identity domain (before DRIVER_OK, or with `bypass` set).
    Identity,
    /// All DMA aborts.
    Blocked,
}

/// The domain core behind the device: what each request does. Every argument was decoded
/// and range-checked by the device (see the module docs).
pub trait Backend {
    /// Attaches `endpoint` to `domain` (created on first attach; `bypass`: an identity
    /// domain), detaching it from its previous domain first.
    fn attach(
        &mut self,
        domain: DomainId,
        endpoint: EndpointId,
        bypass: bool,
    ) -> Result<(), BackendError>;
    /// Detaches `endpoint` from `domain` (a domain without endpoints ceases to exist and
    /// loses its mappings).
    fn detach(&mut self, domain: DomainId, endpoint: EndpointId) -> Result<(), BackendError>;
    /// Maps `virt` to `phys` with `flags`.
    fn map(
        &mut self,
        domain: DomainId,
        virt: IovaRange,
        phys: Ipa,
        flags: MapFlags,
    ) -> Result<(), BackendError>;
    /// Removes every mapping inside `virt`; the invalidation may wait for
    /// [`end_of_kick`](Self::end_of_kick) (the pages must stay pinned until then).
    fn unmap(&mut self, domain: DomainId, virt: IovaRange) -> Result<(), BackendError>;
    /// The reserved regions of `endpoint`.
    fn probe(&mut self, endpoint: EndpointId) -> Result<ResvRegions, BackendError>;
    /// The end of one notification's requests: the one shared invalidation of all its
    /// UNMAPs, completed before any of their buffers is published. An error puts the
    /// device in `DEVICE_NEEDS_RESET` and nothing of the kick is published.
    fn end_of_kick(&mut self) -> Result<(), BackendError>;
    /// The driver changed what unattached endpoints get.
    fn set_unattached(&mut self, policy: Unattached);
    /// The device was reset: every endpoint detached, every domain of the driver gone.
    /// ([`set_unattached`](Self::set_unattached)`(Identity)` follows.)
    fn reset(&mut self);
}

/// How a request is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Buffers returned unwritten (used length 0).
    NoWrite,
    /// The writable part was filled (`len` bytes, the tail last).
    Written(usize),
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// Why a request is not served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    /// Answer with this status.
    Status(Status),
    /// Do not write the buffers.
    NoWrite,
}

impl From<Status> for Reject {
    fn from(s: Status) -> Self {
        Reject::Status(s)
    }
}

fn domain(cfg: &Config, b: &[u8]) -> Result<DomainId, Reject> {
    let d = le32(b, 4);
    if d < cfg.domain_start || d > cfg.domain_end {
        return Err(Status::Range.into());
    }
    Ok(DomainId(d))
}

fn virt_range(cfg: &Config, b: &[u8]) -> Result<IovaRange, Reject> {
    let (start, end) = (le64(b, 8), le64(b, 16));
    if end < start {
        return Err(Status::Inval.into());
    }
    if start < cfg.input_start || end > cfg.input_end {
        return Err(Status::Range.into());
    }
    Ok(IovaRange {
        start: Iova(start),
        end: Iova(end),
    })
}

/// Decodes the readable bytes `b` of a request under the negotiated `features`.
pub fn decode(b: &[u8], features: u64, cfg: &Config) -> Result<Request, Reject> {
    let ty = *b.first().ok_or(Reject::NoWrite)?;
    let (size, feature) = match ty {
        T_ATTACH => (ATTACH_SIZE, 0),
        T_DETACH => (DETACH_SIZE, 0),
        T_MAP => (MAP_SIZE, F_MAP_UNMAP),
        T_UNMAP => (UNMAP_SIZE, F_MAP_UNMAP),
        T_PROBE => (PROBE_SIZE, F_PROBE),
        _ => return Err(Reject::NoWrite),
    };
    if features & feature != feature {
        return Err(Reject::NoWrite);
    }
    if b.len() < size {
        return Err(Status::Inval.into());
    }
    let b = &b[..size];
    Ok(match ty {
        T_ATTACH => {
            let flags = le32(b, 12);
            let known = if features & F_BYPASS_CONFIG != 0 {
                ATTACH_F_BYPASS
            } else {
                0
            };
            if le32(b, 16) != 0 || flags & !known != 0 {
                return Err(Status::Inval.into());
            }
            Request::Attach {
                domain: domain(cfg, b)?,
                endpoint: EndpointId(le32(b, 8)),
                bypass: flags & ATTACH_F_BYPASS != 0,
            }
        }
        T_DETACH => Request::Detach {
            domain: domain(cfg, b)?,
            endpoint: EndpointId(le32(b, 8)),
        },
        T_MAP => {
            let flags = le32(b, 32);
            let mut known = MAP_F_READ | MAP_F_WRITE;
            if features & F_MMIO != 0 {
                known |= MAP_F_MMIO;
            }
            if flags & !known != 0 {
                return Err(Status::Inval.into());
            }
            let domain = domain(cfg, b)?;
            let virt = virt_range(cfg, b)?;
            let phys = le64(b, 24);
            let g = cfg.granule();
            let last = phys.checked_add(virt.end.0 - virt.start.0);
            if !virt.start.0.is_multiple_of(g)
                || !virt.end.0.wrapping_add(1).is_multiple_of(g)
                || !phys.is_multiple_of(g)
                || last.is_none()
            {
                return Err(Status::Range.into());
            }
            Request::Map {
                domain,
                virt,
                phys: Ipa(phys),
                flags: MapFlags(flags),
            }
        }
        T_UNMAP => Request::Unmap {
            domain: domain(cfg, b)?,
            virt: virt_range(cfg, b)?,
        },
        _ => Request::Probe {
            endpoint: EndpointId(le32(b, 4)),
        },
    })
}

/// Encodes `regions` as RESV_MEM properties into `out` (zeroes after the last).
fn encode_props(regions: &ResvRegions, out: &mut [u8]) {
    for (r, p) in regions
        .as_slice()
        .iter()
        .zip(out.chunks_exact_mut(RESV_MEM_SIZE))
    {
        p[0..2].copy_from_slice(&PROBE_T_RESV_MEM.to_le_bytes());
        p[2..4].copy_from_slice(&((RESV_MEM_SIZE - PROP_HEAD_SIZE) as u16).to_le_bytes());
        p[4] = match r.kind {
            ResvKind::Reserved => RESV_MEM_T_RESERVED,
            ResvKind::Msi => RESV_MEM_T_MSI,
        };
        p[8..16].copy_from_slice(&r.start.to_le_bytes());
        p[16..24].copy_from_slice(&r.end.to_le_bytes());
    }
}

/// Serves the request `readable` whose writable part has `writable` bytes (at most
/// [`WRITE_MAX`], at least the tail): decodes it, calls the backend and fills `out`
/// (zeroed by the caller) with the reply.
pub fn serve<B: Backend>(
    readable: &[u8],
    writable: usize,
    features: u64,
    cfg: &Config,
    backend: &mut B,
    out: &mut [u8; WRITE_MAX],
) -> Reply {
    let Some(tail) = writable
        .checked_sub(TAIL_SIZE)
        .filter(|_| writable <= WRITE_MAX)
    else {
        return Reply::NoWrite;
    };
    let status = match decode(readable, features, cfg) {
        Err(Reject::NoWrite) => return Reply::NoWrite,
        Err(Reject::Status(s)) => s,
        Ok(Request::Probe { .. }) if tail != PROBE_PROPS_SIZE => Status::Inval,
        Ok(req) => match run(req, backend, &mut out[..tail]) {
            Ok(()) => Status::Ok,
            Err(e) => {
                out[..tail].fill(0);
                e.into()
            }
        },
    };
    out[tail] = status as u8;
    Reply::Written(writable)
}

fn run<B: Backend>(req: Request, b: &mut B, props: &mut [u8]) -> Result<(), BackendError> {
    match req {
        Request::Attach {
            domain,
            endpoint,
            bypass,
        } => b.attach(domain, endpoint, bypass),
        Request::Detach { domain, endpoint } => b.detach(domain, endpoint),
        Request::Map {
            domain,
            virt,
            phys,
            flags,
        } => b.map(domain, virt, phys, flags),
        Request::Unmap { domain, virt } => b.unmap(domain, virt),
        Request::Probe { endpoint } => {
            let regions = b.probe(endpoint)?;
            encode_props(&regions, props);
            Ok(())
        }
    }
}
