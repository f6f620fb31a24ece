//! Warden's own calls in the vendor-specific hypervisor service range (OEN 6). The
//! discovery calls every SMCCC client expects are answered here; the DMA calls of ABI v1
//! are not served yet and return NOT_SUPPORTED, changing nothing.

use crate::trap::TrapFrame;
use host_abi::{Error, smccc};

/// Warden's SMCCC vendor-hypervisor UID, returned by CALL_UID in w0..w3.
pub const WARDEN_UID: [u32; 4] = [0x7761_7264, 0x656e_2d68, 0x7970_2d76, 0x0000_0001];

/// Handles a call in the vendor hypervisor service range.
pub fn dispatch(frame: &mut TrapFrame) {
    let fid = frame.x[0] as u32;
    match fid {
        smccc::VENDOR_HYP_CALL_UID => {
            for (i, w) in WARDEN_UID.iter().enumerate() {
                frame.x[i] = *w as u64;
            }
        }
        smccc::VENDOR_HYP_REVISION => {
            frame.x[0] = 1;
            frame.x[1] = 0;
        }
        _ => frame.x[0] = Error::NotSupported.to_reg(),
    }
}
