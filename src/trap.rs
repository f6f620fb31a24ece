//! Exceptions taken to EL2: host hypercalls and SMCs (PSCI, SMCCC discovery, Warden's
//! own calls, pass-through to firmware), host stage-2 faults (answered with an external
//! abort injected at EL1), and anything else the host can provoke (answered with an
//! UNDEFINED exception). Nothing the host does reaches a panic.

use crate::arch::{self, SmcArgs, read_sysreg, write_sysreg};
use crate::cpu::{self, CPUS};
use crate::println;
use hyp::fault::{self, HostExceptionState, Injection, ec};
use hyp::psci::{self, PowerState};

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
    use hyp::hpfar::{self, IpaSource};
    let far = read_sysreg!("far_el2");
    // HPFAR_EL2 only where the architecture writes it; otherwise the host's stage 1.
    let erratum = hpfar::erratum_834220(read_sysreg!("midr_el1"));
    let source = hpfar::ipa_source(esr, erratum);
    let ipa = match source {
        IpaSource::Hpfar => Some(hpfar::ipa_from_hpfar(read_sysreg!("hpfar_el2"), far)),
        IpaSource::Translate => match hpfar::ipa_from_par(arch::at_s1e1r(far), far) {
            Some(ipa) => Some(ipa),
            // The host's stage 1 changed since the access: let it retry.
            None => return,
        },
        IpaSource::Unknown => None,
    };
    // A live entry may be briefly invalid during break-before-make on another CPU: if
    // the IPA is mapped now, the access simply retries. (Only for translation and
    // access-flag faults: any other fault would repeat on every retry.)
    if let Some(ipa) = ipa
        && hpfar::may_be_transient(esr)
        && let Some(core) = crate::boot::HYP.get()
        && core.with_host_mem(|hm| {
            hm.s2
                .translate(&crate::mm::S2Mem, hyp::addr::Ipa(ipa))
                .is_some()
        })
    {
        return;
    }
    // The GIC's table and command-queue registers: emulated (src/gic.rs).
    if let Some(ipa) = ipa
        && crate::gic::emulate(frame, esr, ipa)
    {
        return;
    }
    let how = match source {
        IpaSource::Hpfar => "",
        IpaSource::Translate => " (IPA from AT S1E1R)",
        IpaSource::Unknown => " (IPA unknown)",
    };
    let ipa = ipa.unwrap_or(0);
    let write = esr & (1 << 6) != 0 && esr >> 26 == ec::DABT_LOW;
    let el = if fault::from_el0(frame.spsr) {
        "EL0"
    } else {
        "EL1"
    };
    log::error!(
        "host stage-2 fault: {} of IPA {ipa:#x}{how} (VA {far:#x}) from {el} at {:#x} on CPU {}, ESR {esr:#x}: injecting external abort",
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

/// Forwards the host's registers to firmware with x0 = `fid` (the normalised ID).
fn forward(frame: &mut TrapFrame, fid: u32) {
    let mut a = SmcArgs::default();
    let mut host = [0u64; 17];
    host.copy_from_slice(&frame.x[1..18]);
    a.0[0] = u64::from(fid);
    a.0[1..18].copy_from_slice(&psci::forward_args(fid, &host));
    let r = arch::smc(&a);
    frame.x[..18].copy_from_slice(&r.0);
}

fn forward_with(fid: u32, args: &[u64]) -> i64 {
    let mut a = SmcArgs::default();
    a.0[0] = fid as u64;
    a.0[1..=args.len()].copy_from_slice(args);
    arch::smc(&a).0[0] as i64
}

/// The firmware-call policy (hyp/src/psci.rs), fixed at boot by [`init_firmware`].
static POLICY: spin::Once<psci::Policy> = spin::Once::new();

fn policy() -> &'static psci::Policy {
    POLICY.get().unwrap_or(&psci::Policy::DEFAULT)
}

/// Builds the firmware-call policy from the DTB's `/psci` node, firmware's own answers
/// (PSCI_VERSION, then PSCI_FEATURES(CPU_SUSPEND) for the `power_state` format) and the
/// board's allowlist. Boot CPU, before the host runs.
pub fn init_firmware(plat: &hyp::dtb::Platform, allow: psci::SmcAllowList) {
    use hyp::dtb::{PsciMethod, PsciVersion};
    let mut p = psci::Policy::for_platform(plat.psci.as_ref(), allow);
    // ID_AA64PFR0_EL1.EL3: without EL3 an SMC at EL2 is UNDEFINED (it would take Warden
    // down), unless the DTB's PSCI conduit is SMC (an emulator implements it).
    let el3 = (read_sysreg!("id_aa64pfr0_el1") >> 12) & 0xf != 0;
    p.smc = el3
        || plat
            .psci
            .as_ref()
            .is_some_and(|n| n.method == PsciMethod::Smc);
    if !p.smc {
        log::warn!("no EL3 and no SMC PSCI conduit: no firmware call is forwarded");
    }
    if let Some(node) = &plat.psci
        && node.version != PsciVersion::V0_1
        && node.method == PsciMethod::Smc
    {
        let version = forward_with(psci::id::VERSION, &[]);
        if version >= 0x1_0000 {
            let f = forward_with(psci::id::FEATURES, &[u64::from(psci::id::CPU_SUSPEND_64)]);
            p.suspend_format = psci::SuspendFormat::from_features(f);
        }
        println!(
            "warden: PSCI firmware version {}.{}, CPU_SUSPEND power_state format {}",
            version >> 16,
            version & 0xffff,
            match p.suspend_format {
                psci::SuspendFormat::Original => "original (PSCI 0.2)",
                psci::SuspendFormat::Extended => "extended (PSCI 1.0)",
            }
        );
    }
    if p.allow.is_empty() {
        println!("warden: firmware calls: PSCI and SMCCC discovery only (no warden.smc_allow=)");
    } else {
        for (a, b) in p.allow.ranges() {
            log::warn!(
                "firmware calls {a:#x}..={b:#x} are forwarded unchecked (warden.smc_allow=)"
            );
        }
    }
    POLICY.call_once(|| p);
}

static REFUSALS: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

/// Logs a refused call, rate-limited.
fn log_refused(frame: &TrapFrame, conduit: Conduit, status: i64) {
    let n = REFUSALS.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    if psci::log_refusal(n) {
        log::warn!(
            "host {} {:#x} (x1 {:#x}) refused with {status}, not forwarded to firmware ({} refusal(s) so far)",
            if conduit == Conduit::Smc {
                "SMC"
            } else {
                "HVC"
            },
            frame.x[0] as u32,
            frame.x[1],
            n + 1
        );
    }
}

fn smccc_call(frame: &mut TrapFrame, conduit: Conduit) {
    use psci::{Action, FeatureAnswer};
    let fid = frame.x[0] as u32;
    let p = policy();
    let answer = |a: FeatureAnswer, query: u32| match a {
        FeatureAnswer::Value(v) => v,
        FeatureAnswer::AskFirmware { fid, clear } => {
            let r = forward_with(query, &[u64::from(fid)]);
            if r >= 0 { r & !clear } else { r }
        }
    };
    match p.decide(fid, conduit == Conduit::Smc) {
        Action::CpuOn { fw_id, w64 } => {
            let m = if w64 { u64::MAX } else { u64::from(u32::MAX) };
            let r = cpu_on(fw_id, frame.x[1] & m, frame.x[2] & m, frame.x[3] & m);
            set_result(frame, &[r as u64]);
        }
        Action::CpuSuspend { fw_id, w64 } => {
            let r = match p.suspend(frame.x[1]) {
                Ok(()) => suspend(fw_id, frame, w64),
                Err(e) => {
                    log_refused(frame, conduit, e);
                    e
                }
            };
            set_result(frame, &[r as u64]);
        }
        Action::CpuOff { fw_id } => {
            let me = cpu::this_slot();
            CPUS[me].power.set(PowerState::Off);
            let r = forward_with(fw_id, &[]);
            // Only an error comes back.
            CPUS[me].power.set(PowerState::On);
            set_result(frame, &[r as u64]);
        }
        Action::PsciFeatures => {
            let r = answer(p.psci_features(frame.x[1] as u32), psci::id::FEATURES);
            set_result(frame, &[r as u64]);
        }
        Action::SystemReset2(id) => {
            if psci::system_reset2_allowed(frame.x[1]) {
                let r = forward_with(id, &[0, 0]);
                set_result(frame, &[r as u64]);
            } else {
                log_refused(frame, conduit, psci::ret::INVALID_PARAMETERS);
                set_result(frame, &[psci::ret::INVALID_PARAMETERS as u64]);
            }
        }
        // PSCI and the forwarded Arm Architecture calls always go to firmware over SMC,
        // whichever conduit the host used.
        Action::Forward(id) => forward(frame, id),
        Action::SmcccVersion => set_result(frame, &[host_abi::smccc::VERSION_1_1]),
        Action::ArchFeatures => {
            let r = answer(
                p.arch_features(frame.x[1] as u32),
                host_abi::smccc::ARCH_FEATURES,
            );
            set_result(frame, &[r as u64]);
        }
        Action::VendorHyp => crate::hypercall::dispatch(frame),
        Action::Refuse(e) => {
            log_refused(frame, conduit, e);
            set_result(frame, &[e as u64]);
        }
        Action::Deny => {
            log_refused(frame, conduit, psci::ret::NOT_SUPPORTED);
            set_result(frame, &[psci::ret::NOT_SUPPORTED as u64]);
        }
    }
}

/// PSCI CPU_ON on behalf of the host: the target starts in Warden's secondary entry,
/// which sets up its EL2 state and then enters the host's `entry` with `ctx`.
fn cpu_on(fw_id: u32, target: u64, entry: u64, ctx: u64) -> i64 {
    // Firmware gets exactly the affinity Warden looks up: bits outside it must not make
    // firmware start another CPU than the one whose record is handed over.
    let target = match psci::cpu_on_target(target) {
        Ok(t) => t,
        Err(e) => return e,
    };
    let Some(slot) = cpu::slot_of(target) else {
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
        fw_id,
        &[target, crate::boot::secondary_entry_pa(), s.boot_pa()],
    );
    if r != psci::ret::SUCCESS {
        s.power.set(PowerState::Off);
    }
    r
}

/// CPU_SUSPEND to a standby state (checked by the caller): firmware returns here, but
/// should it lose the CPU's context after all, the CPU resumes through Warden's entry
/// point like a CPU_ON, into the host's resume address.
fn suspend(fw_id: u32, frame: &TrapFrame, w64: bool) -> i64 {
    let me = cpu::this_slot();
    let s = &CPUS[me];
    let m = if w64 { u64::MAX } else { u64::from(u32::MAX) };
    let (entry, ctx) = (frame.x[2] & m, frame.x[3] & m);
    // SAFETY: a CPU owns its own record while it is running.
    unsafe {
        s.update_boot(|b| {
            b.host_entry = entry;
            b.host_ctx = ctx;
        })
    };
    // power_state is a 32-bit parameter: firmware sees exactly what was checked.
    let power_state = frame.x[1] & u64::from(u32::MAX);
    forward_with(
        fw_id,
        &[power_state, crate::boot::secondary_entry_pa(), s.boot_pa()],
    )
}
