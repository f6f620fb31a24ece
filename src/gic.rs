//! The GICv3 ITS/redistributor emulation at EL2 (`hyp::gic`): its hardware seam (the
//! GIC's registers mapped Device, identity), boot-time takeover, and the host's trapped
//! accesses, which arrive from the stage-2 data-abort path.

use crate::arch::{self, read_sysreg};
use crate::error::BootError;
use crate::mm::{self, S2Mem};
use crate::trap::TrapFrame;
use alloc::vec::Vec;
use hyp::addr::{PhysAddr, PhysRange};
use hyp::dtb::{GicVersion, Platform};
use hyp::el2_s1::S1Attr;
use hyp::gic::{DataAccess, GicEmu, GicEnv, Width};
use hyp::s2mmu::TableMemory;
use spin::{Mutex, Once};

/// The emulation state.
static GIC: Once<Mutex<GicEmu>> = Once::new();
/// The trapped frames (fixed at boot), to tell GIC faults from others without the lock.
static TRAPPED: Once<Vec<PhysRange>> = Once::new();

/// The EL2 seam: registers by volatile access at their (identity-mapped) physical
/// address, host memory and Warden memory through the identity map, pins through the
/// hypercall core.
struct El2Gic;

impl GicEnv for El2Gic {
    fn reg_read(&mut self, pa: u64, w: Width) -> u64 {
        // SAFETY: `pa` is inside a GIC frame the DTB describes, mapped Device at EL2 by
        // `init`; the emulation only forms naturally aligned register addresses.
        unsafe {
            match w {
                Width::W32 => u64::from((pa as *const u32).read_volatile()),
                Width::W64 => (pa as *const u64).read_volatile(),
            }
        }
    }
    fn reg_write(&mut self, pa: u64, w: Width, v: u64) {
        // Commands and tables Warden wrote must be visible before the GIC acts on them.
        arch::dsb_sy();
        // SAFETY: as in `reg_read`.
        unsafe {
            match w {
                Width::W32 => (pa as *mut u32).write_volatile(v as u32),
                Width::W64 => (pa as *mut u64).write_volatile(v),
            }
        }
    }
    fn now(&mut self) -> u64 {
        read_sysreg!("cntpct_el0")
    }
    fn ticks_per_ms(&self) -> u64 {
        (read_sysreg!("cntfrq_el0") / 1000).max(1)
    }
    fn host_owns(&mut self, r: PhysRange) -> bool {
        crate::boot::HYP
            .get()
            .is_some_and(|core| core.with_host_mem(|hm| hm.host_owns(&S2Mem, r)))
    }
    fn pin(&mut self, r: PhysRange) -> bool {
        crate::boot::HYP
            .get()
            .is_some_and(|core| core.pin_for_device(r).is_ok())
    }
    fn unpin(&mut self, r: PhysRange) {
        if let Some(core) = crate::boot::HYP.get() {
            core.unpin_for_device(r);
        }
    }
    fn host_read_u64(&mut self, pa: u64) -> u64 {
        // SAFETY: the caller pinned the host page holding `pa` (host RAM, mapped at EL2
        // as all RAM is); an aligned volatile read has no other effect.
        unsafe { (pa as *const u64).read_volatile() }
    }
    fn alloc(&mut self, size: u64, align: u64) -> Option<u64> {
        S2Mem
            .alloc_zeroed(size as usize, align as usize)
            .map(|p| p.get())
    }
    fn free(&mut self, pa: u64, size: u64) {
        // SAFETY: `pa`/`size` come from `alloc` and the GIC no longer uses the memory.
        unsafe { S2Mem.free(PhysAddr(pa), size as usize) }
    }
    fn write_u64(&mut self, pa: u64, v: u64) {
        // SAFETY: `pa` is inside Warden memory `alloc` handed out (identity-mapped).
        unsafe { (pa as *mut u64).write_volatile(v) }
    }
    fn clean(&mut self, pa: u64, len: u64) {
        arch::clean_invalidate_dcache_range(pa, len);
    }
}

/// Takes over the GICv3 ITSs and redistributors of the DTB (nothing for GICv2) and
/// returns the frames that must stay out of the host stage-2.
pub fn init(plat: &Platform) -> Result<Vec<PhysRange>, BootError> {
    let emu = match plat.gic.as_ref().filter(|g| g.version == GicVersion::V3) {
        None => GicEmu::empty(),
        Some(g) => {
            for r in g.redists.iter().chain(&g.its) {
                mm::map_hyp(*r, S1Attr::Device)
                    .map_err(|e| BootError::Map("cannot map the GIC at EL2", e))?;
            }
            GicEmu::probe(&mut El2Gic, &g.redists, g.redist_stride, &g.its)
                .map_err(|e| BootError::Gic("cannot take over the GICv3 ITS", e))?
        }
    };
    let trapped: Vec<PhysRange> = emu.trapped().collect();
    let (its, rds) = emu.counts();
    if its + rds > 0 {
        crate::println!(
            "warden: GIC: {its} ITS(s) and {rds} redistributor(s) emulated (tables checked and pinned, command queue shadowed, GICv4 hidden)"
        );
    }
    GIC.call_once(|| Mutex::new(emu));
    TRAPPED.call_once(|| trapped.clone());
    Ok(trapped)
}

/// Once the hypercall core (and its pin bookkeeping) exists, before the host runs: pins
/// the LPI tables firmware may have left in use.
pub fn core_ready() {
    if let Some(gic) = GIC.get() {
        gic.lock().pin_firmware_tables(&mut El2Gic);
    }
}

/// Emulates the host's access behind a stage-2 data abort at `ipa` if it hit a trapped
/// GIC frame: `true` when done (ELR advanced past the instruction), `false` when the caller must go on (not
/// a GIC frame, or no usable syndrome: an external abort).
pub fn emulate(frame: &mut TrapFrame, esr: u64, ipa: u64) -> bool {
    if esr >> 26 != hyp::fault::ec::DABT_LOW
        || !TRAPPED
            .get()
            .is_some_and(|t| t.iter().any(|r| r.contains(ipa)))
    {
        return false;
    }
    let (Some(acc), Some(gic)) = (DataAccess::decode(esr), GIC.get()) else {
        return false;
    };
    let reg = usize::from(acc.reg);
    let value = acc.write.then(|| {
        let v = if reg == 31 { 0 } else { frame.x[reg] };
        if acc.bytes == 8 {
            v
        } else {
            v & ((1u64 << (8 * u32::from(acc.bytes))) - 1)
        }
    });
    let Some(v) = gic.lock().access(&mut El2Gic, ipa, acc.bytes, value) else {
        return false;
    };
    if !acc.write && reg != 31 {
        frame.x[reg] = acc.load_value(v);
    }
    frame.elr += u64::from(acc.insn_bytes);
    true
}
