//! Fault reports for the event virtqueue: the typed [`Fault`] Warden builds from an SMMU
//! event of an endpoint the host attached, and its wire encoding. The device
//! ([`super::Device::report_fault`]) puts it into the next buffer the driver posted, or
//! counts a drop when there is none, and raises the node's interrupt through [`Irq`].

use super::req::EndpointId;
use crate::addr::Iova;
use crate::viommu::regs::*;

/// The interrupt of the virtio-mmio node (Warden makes its SPI pending at the
/// distributor).
pub trait Irq {
    /// Signals the driver: `InterruptStatus` has a new cause.
    fn raise(&mut self);
}

/// Why a DMA faulted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultReason {
    /// Unknown or internal.
    Unknown,
    /// The endpoint is not attached to a domain (blocked).
    Domain,
    /// The address is not mapped, or not with the access's permission.
    Mapping,
}

/// One fault report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// Why.
    pub reason: FaultReason,
    /// The endpoint that faulted.
    pub endpoint: EndpointId,
    /// Whether it was a read, a write (both may be unknown), an instruction fetch.
    pub read: bool,
    /// A write.
    pub write: bool,
    /// An instruction fetch.
    pub exec: bool,
    /// The faulting address, when known.
    pub address: Option<Iova>,
}

impl Fault {
    /// The report as the driver reads it.
    pub fn encode(&self) -> [u8; FAULT_SIZE] {
        let mut b = [0u8; FAULT_SIZE];
        b[0] = match self.reason {
            FaultReason::Unknown => FAULT_R_UNKNOWN,
            FaultReason::Domain => FAULT_R_DOMAIN,
            FaultReason::Mapping => FAULT_R_MAPPING,
        };
        let mut flags = 0;
        if self.read {
            flags |= FAULT_F_READ;
        }
        if self.write {
            flags |= FAULT_F_WRITE;
        }
        if self.exec {
            flags |= FAULT_F_EXEC;
        }
        if let Some(a) = self.address {
            flags |= FAULT_F_ADDRESS;
            b[16..24].copy_from_slice(&a.0.to_le_bytes());
        }
        b[4..8].copy_from_slice(&flags.to_le_bytes());
        b[8..12].copy_from_slice(&self.endpoint.0.to_le_bytes());
        b
    }
}

/// What became of a fault report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Written to the event queue and signalled.
    Delivered,
    /// No buffer (or no live event queue): counted as a drop.
    Dropped,
}
