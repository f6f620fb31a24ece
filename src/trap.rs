//! Exceptions taken to EL2: host hypercalls and SMCs (PSCI, SMCCC discovery, Warden's
//! own calls, pass-through to firmware), host stage-2 faults (answered with an external
//! abort injected at EL1), and anything else the host can provoke (answered with an
//! UNDEFINED exception). Nothing the host does reaches a panic.

use crate::arch::{self, SmcArgs, read_sysreg, write_sysreg};
use crate::cpu::{self, CPUS};
use crate::println;
use hyp::fault::{self, HostExceptionState, Injection, ec};
use hyp::psci::{self, Action, PowerState};

/// The registers saved by `exception_common` (src/head.S).
#[repr(C)]
pub struct TrapFrame {
    /// x0–x30.
    pub x: [u64; 31],
    /// ELR_EL2.
    pub elr: u64,
    /// SPSR_EL2.
    pub spsr: u64,
    _pad: u64,
}

const _: () = assert!(core::mem::size_of::<TrapFrame>() == 272);

/// Where the host's SMC or HVC came from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Conduit {
    Smc,
    Hvc,
}

/// Entry from the vectors. `kind` is the vector slot (0–15).
#[unsafe(no_mangle)]
extern "C" fn handle_exception(kind: u64, frame: &mut TrapFrame) {
    match kind {
        8 | 12 => lower_sync(frame),
        9..=11 | 13..=15 => {
            // IRQ/FIQ/SError are routed to EL1 (HCR_EL2.IMO/FMO/AMO clear); seeing one here
            // means a spurious route. Log and resume the host.
            log::warn!("unexpected asynchronous exception (vector {kind}) from the host");
        }
        _ => warden_fault(kind, frame),
    }
}

/// An exception taken from EL2 itself: a Warden bug. Report everything and stop this CPU.
fn warden_fault(kind: u64, frame: &TrapFrame) -> ! {
    let esr = read_sysreg!("esr_el2");
    let far = read_sysreg!("far_el2");
    println!(
        "warden: FATAL exception at EL2: vector {kind} ESR {esr:#x} ELR {:#x} FAR {far:#x} SPSR {:#x}",
        frame.elr, frame.spsr
    );
    arch::park()
}

fn lower_sync(frame: &mut TrapFrame) {
    let esr = read_sysreg!("esr_el2");
    // No SMMU interrupt reaches EL2 (the host owns the GIC): report device faults
    // whenever the host enters Warden.
    if let Some(core) = crate::boot::HYP.get() {
        core.drain_events();
    }
    match esr >> 26 {
        ec::HVC64 => smccc_call(frame, Conduit::Hvc),
        ec::SMC64 => {
            // ELR points at the SMC itself: resume after it.
            frame.elr += 4;
            smccc_call(frame, Conduit::Smc);
        }
        ec::DABT_LOW | ec::IABT_LOW => stage2_fault(frame, esr),
        class => {
            let once = UNDEF_REPORTS.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
            if once < 8 {
                log::warn!(
                    "host trap EC {class:#x} ESR {esr:#x} at {:#x}: injecting UNDEFINED",
                    frame.elr
                );
            }
            let inj = fault::undefined(&host_state(frame));
            inject(frame, &inj);
        }
    }
}

static UNDEF_REPORTS: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

fn host_state(frame: &TrapFrame) -> HostExceptionState {
    HostExceptionState {
        elr_el2: frame.elr,
        spsr_el2: frame.spsr,
        vbar_el1: read_sysreg!("vbar_el1"),
        sctlr_el1: read_sysreg!("sctlr_el1"),
    }
}

fn inject(frame: &mut TrapFrame, inj: &Injection) {
    write_sysreg!("esr_el1", inj.esr_el1);
    if let Some(far) = inj.far_el1 {
        write_sysreg!("far_el1", far);
    }
    write_sysreg!("elr_el1", inj.elr_el1);
    write_sysreg!("spsr_el1", inj.spsr_el1);
    frame.elr = inj.elr_el2;
    frame.spsr = inj.spsr_el2;
}

/// The host touched an IPA its stage-2 does not map (Warden's memory): log it and give
/// the host a synchronous external abort, exactly as if the memory system had refused.
fn stage2_fault(frame: &mut TrapFrame, esr: u64) {
    let far = read_sysreg!("far_el2");
    // HPFAR_EL2.FIPA holds IPA[51:12] for stage-2 faults.
    let hpfar = read_sysreg!("hpfar_el2");
    let ipa = ((hpfar >> 4) << 12) | (far & 0xfff);
    // A live entry may be briefly invalid during break-before-make on another CPU: if
    // the IPA is mapped now, the access simply retries.
    if let Some(core) = crate::boot::HYP.get()
        && core.with_host_mem(|hm| {
            hm.s2
                .translate(&crate::mm::S2Mem, hyp::addr::Ipa(ipa))
                .is_some()
        })
    {
        return;
    }
    // The GIC's table and command-queue registers: emulated (src/gic.rs).
    if crate::gic::emulate(frame, esr, ipa) {
        return;
    }
    let write = esr & (1 << 6) != 0 && esr >> 26 == ec::DABT_LOW;
    let el = if fault::from_el0(frame.spsr) {
        "EL0"
    } else {
        "EL1"
    };
    log::error!(
        "host stage-2 fault: {} of IPA {ipa:#x} (VA {far:#x}) from {el} at {:#x} on CPU {}, ESR {esr:#x}: injecting external abort",
        if esr >> 26 == ec::IABT_LOW {
            "fetch"
        } else if write {
            "write"
        } else {
            "read"
        },
        frame.elr,
        cpu::this_slot(),
    );
    let inj = fault::external_abort(&host_state(frame), esr, far);
    inject(frame, &inj);
}

fn set_result(frame: &mut TrapFrame, r: &[u64]) {
    frame.x[..r.len()].copy_from_slice(r);
}

fn forward(frame: &mut TrapFrame) {
    let mut a = SmcArgs::default();
    a.0.copy_from_slice(&frame.x[..18]);
    let r = arch::smc(&a);
    frame.x[..18].copy_from_slice(&r.0);
}

fn forward_with(fid: u32, args: &[u64]) -> i64 {
    let mut a = SmcArgs::default();
    a.0[0] = fid as u64;
    a.0[1..=args.len()].copy_from_slice(args);
    arch::smc(&a).0[0] as i64
}

fn smccc_call(frame: &mut TrapFrame, conduit: Conduit) {
    let fid = frame.x[0] as u32;
    match psci::classify(fid) {
        Action::CpuOn => {
            let r = cpu_on(frame.x[1], frame.x[2], frame.x[3]);
            set_result(frame, &[r as u64]);
        }
        Action::Suspend { entry_arg } => {
            let r = suspend(fid, frame, entry_arg);
            set_result(frame, &[r as u64]);
        }
        Action::CpuOff => {
            let me = cpu::this_slot();
            CPUS[me].power.set(PowerState::Off);
            let r = forward_with(fid, &[]);
            // Only an error comes back.
            CPUS[me].power.set(PowerState::On);
            set_result(frame, &[r as u64]);
        }
        Action::Features => {
            let queried = frame.x[1] as u32;
            if queried == host_abi::smccc::VERSION {
                set_result(frame, &[0]);
            } else {
                forward_psci(frame, conduit);
            }
        }
        Action::Forward => forward_psci(frame, conduit),
        Action::NotPsci => other_call(frame, fid, conduit),
    }
}

fn forward_psci(frame: &mut TrapFrame, _conduit: Conduit) {
    // PSCI always goes to firmware over SMC, whichever conduit the host used.
    forward(frame);
}

fn other_call(frame: &mut TrapFrame, fid: u32, conduit: Conduit) {
    use host_abi::smccc;
    const NOT_SUPPORTED: u64 = -1i64 as u64;
    match fid {
        smccc::VERSION => set_result(frame, &[smccc::VERSION_1_1]),
        smccc::ARCH_FEATURES => {
            let queried = frame.x[1] as u32;
            match queried {
                smccc::VERSION | smccc::ARCH_FEATURES => set_result(frame, &[0]),
                // Firmware's own workarounds (ARCH_WORKAROUND_1/2/3) and SOC_ID.
                0x8000_8000 | 0x8000_7FFF | 0x8000_3FFF | 0x8000_0002 => forward(frame),
                _ => set_result(frame, &[NOT_SUPPORTED]),
            }
        }
        0x8600_0000..=0x8600_FFFF | 0xC600_0000..=0xC600_FFFF => {
            // Vendor-specific hypervisor service: Warden's own calls.
            crate::hypercall::dispatch(frame);
        }
        _ if conduit == Conduit::Smc => forward(frame),
        _ => set_result(frame, &[NOT_SUPPORTED]),
    }
}

/// PSCI CPU_ON on behalf of the host: the target starts in Warden's secondary entry,
/// which sets up its EL2 state and then enters the host's `entry` with `ctx`.
fn cpu_on(target: u64, entry: u64, ctx: u64) -> i64 {
    let Some(slot) = cpu::slot_of(target & psci::MPIDR_AFF_MASK) else {
        return psci::ret::INVALID_PARAMETERS;
    };
    let s = &CPUS[slot];
    if let Err(e) = s.power.claim_for_on() {
        return e;
    }
    // SAFETY: this CPU moved the slot from Off to OnPending, so it owns the record.
    unsafe {
        s.update_boot(|b| {
            b.host_entry = entry;
            b.host_ctx = ctx;
        })
    };
    let r = forward_with(
        psci::id::CPU_ON_64,
        &[target, crate::boot::secondary_entry_pa(), s.boot_pa()],
    );
    if r != psci::ret::SUCCESS {
        s.power.set(PowerState::Off);
    }
    r
}

/// A suspend that may lose context: resume goes through Warden's entry point too.
fn suspend(fid: u32, frame: &TrapFrame, entry_arg: usize) -> i64 {
    let me = cpu::this_slot();
    let s = &CPUS[me];
    let entry = frame.x[entry_arg];
    let ctx = frame.x[entry_arg + 1];
    // SAFETY: a CPU owns its own record while it is running.
    unsafe {
        s.update_boot(|b| {
            b.host_entry = entry;
            b.host_ctx = ctx;
        })
    };
    let mut args = [0u64; 3];
    args[..entry_arg - 1].copy_from_slice(&frame.x[1..entry_arg]);
    args[entry_arg - 1] = crate::boot::secondary_entry_pa();
    args[entry_arg] = s.boot_pa();
    // Standby states and errors return here; powerdown resumes in `secondary_entry`.
    forward_with(fid, &args[..entry_arg + 1])
}
