//! Warden's own calls in the vendor-specific hypervisor service range (OEN 6). The SMCCC
//! vendor discovery calls are answered here; every ABI v1 call goes with `x0..x6` to the
//! `hyp` core's hypercall front-end ([`hyp::dma::Hyp::dispatch`]), which decodes, checks
//! and serves it, and its `x0..x3` go back to the trap frame.

use crate::trap::TrapFrame;
use host_abi::{Error, smccc};

/// Handles a call in the vendor hypervisor service range.
pub fn dispatch(frame: &mut TrapFrame) {
    let fid = frame.x[0] as u32;
    match fid {
        smccc::VENDOR_HYP_CALL_UID => {
            for (i, w) in smccc::UID.iter().enumerate() {
                frame.x[i] = u64::from(*w);
            }
        }
        smccc::VENDOR_HYP_REVISION => {
            frame.x[0] = u64::from(smccc::REVISION_MAJOR);
            frame.x[1] = u64::from(smccc::REVISION_MINOR);
        }
        _ => match crate::boot::HYP.get() {
            Some(core) => {
                let mut args = [0u64; 6];
                args.copy_from_slice(&frame.x[1..7]);
                let r = core.dispatch(fid, args);
                frame.x[..4].copy_from_slice(&r);
            }
            None => frame.x[0] = Error::NotSupported.to_reg(),
        },
    }
}
