//! Firmware calls through Warden: only PSCI (intercepted) and SMCCC discovery reach
//! firmware; every other service is refused with NOT_SUPPORTED; suspends that would lose
//! power are refused, standby still works; PSCI_FEATURES says what is refused; CPU_ON
//! with SMCCC 1.3's SVE hint is still Warden's CPU_ON (the CPU starts at EL1).
//!
//! The calls that could take a CPU away if Warden forwarded them (a firmware that does
//! not know an ID may make it UNDEFINED at EL2, a suspend may never return) run on a
//! secondary CPU, the executor, which the boot CPU drives through a mailbox and waits for
//! with a timeout: a CPU that does not come back fails the check, and the run goes on.

use alloc::format;
use alloc::string::String;
use core::sync::atomic::{AtomicU64, Ordering};

use el1_rt::rt;
use el1_rt::smccc::{self, psci};
use el1_rt::smp;
use hyp::dtb::{EnableMethod, GicVersion};

use crate::env::{Env, Outcome};

type R = Result<String, String>;

/// SMCCC 1.3's SVE hint.
const HINT: u32 = 1 << 16;
const NOT_SUPPORTED: i64 = -1;
const INVALID_PARAMETERS: i64 = -2;
const CPU_SUSPEND_64: u32 = 0xC400_0001;
const CPU_SUSPEND_32: u32 = 0x8400_0001;
const SYSTEM_SUSPEND_64: u32 = 0xC400_000E;
const SYSTEM_SUSPEND_32: u32 = 0x8400_000E;
const PSCI_FEATURES: u32 = 0x8400_000A;
/// How long one executor call may take.
const CALL_TIMEOUT_MS: u64 = 3_000;
/// The wake-up timer of a suspend call.
const WAKE_MS: u64 = 20;
/// The virtual timer's PPI (INTID 27, as Arm's BSA assigns it and QEMU wires it).
const VTIMER_INTID: u32 = 27;

const ALIVE: u64 = 0xa11e_f000_0000_0000;

mod kind {
    /// A plain SMCCC call over the PSCI conduit.
    pub const CALL: u64 = 1;
    /// The same with the virtual timer armed to wake the CPU from WFI.
    pub const SUSPEND: u64 = 2;
    /// CPU_OFF.
    pub const OFF: u64 = 3;
    /// Branch to the address in `a1` (expecting the exception that follows).
    pub const FETCH: u64 = 4;
}

/// The executor's mailbox: the first words are the boot CPU's, the rest the executor's.
#[repr(C, align(128))]
struct Exec {
    req: AtomicU64,
    kind: AtomicU64,
    fid: AtomicU64,
    a1: AtomicU64,
    a2: AtomicU64,
    a3: AtomicU64,
    gic_version: AtomicU64,
    gic_dist: AtomicU64,
    gic_redist: AtomicU64,
    gic_redist_size: AtomicU64,
    gic_cpu_if: AtomicU64,
    alive: AtomicU64,
    el: AtomicU64,
    done: AtomicU64,
    r0: AtomicU64,
    us: AtomicU64,
}

static EXEC: Exec = Exec {
    req: AtomicU64::new(0),
    kind: AtomicU64::new(0),
    fid: AtomicU64::new(0),
    a1: AtomicU64::new(0),
    a2: AtomicU64::new(0),
    a3: AtomicU64::new(0),
    gic_version: AtomicU64::new(0),
    gic_dist: AtomicU64::new(0),
    gic_redist: AtomicU64::new(0),
    gic_redist_size: AtomicU64::new(0),
    gic_cpu_if: AtomicU64::new(0),
    alive: AtomicU64::new(0),
    el: AtomicU64::new(0),
    done: AtomicU64::new(0),
    r0: AtomicU64::new(0),
    us: AtomicU64::new(0),
};

fn current_el() -> u64 {
    let v: u64;
    // SAFETY: reading CurrentEL has no side effects.
    unsafe { core::arch::asm!("mrs {}, CurrentEL", out(reg) v, options(nomem, nostack)) };
    (v >> 2) & 3
}

/// A raw call over the PSCI conduit.
fn call(fid: u32, a1: u64, a2: u64, a3: u64) -> i64 {
    // SAFETY: the calls this module makes (services Warden must refuse, PSCI suspends,
    // CPU_OFF, PSCI_FEATURES) take no memory from the program; none is MEM_DONATE.
    unsafe { smccc::raw(rt::psci_smc(), fid, [a1, a2, a3, 0, 0, 0]) }.x0 as i64
}

/// Where the executor starts (`gen` tells its lives apart).
extern "C" fn executor_main(generation: u64) -> ! {
    let e = &EXEC;
    // A request left over from an earlier life is not run again.
    e.done
        .store(e.req.load(Ordering::Acquire), Ordering::Relaxed);
    e.el.store(current_el(), Ordering::Relaxed);
    e.alive.store(ALIVE | generation, Ordering::Release);
    loop {
        let req = e.req.load(Ordering::Acquire);
        if req == e.done.load(Ordering::Relaxed) {
            // SAFETY: waiting for an event has no effect on memory.
            unsafe { core::arch::asm!("wfe", options(nomem, nostack)) };
            continue;
        }
        let fid = e.fid.load(Ordering::Relaxed) as u32;
        let (a1, a2, a3) = (
            e.a1.load(Ordering::Relaxed),
            e.a2.load(Ordering::Relaxed),
            e.a3.load(Ordering::Relaxed),
        );
        match e.kind.load(Ordering::Relaxed) {
            kind::SUSPEND => {
                let armed = wake_setup();
                let t0 = rt::counter();
                let r = if armed {
                    call(fid, a1, a2, a3)
                } else {
                    i64::MIN
                };
                e.us.store(rt::us_between(t0, rt::counter()), Ordering::Relaxed);
                wake_teardown();
                e.r0.store(r as u64, Ordering::Relaxed);
            }
            kind::FETCH => {
                rt::expect_exception();
                e.done.store(req, Ordering::Release);
                // SAFETY: a branch to an address that cannot execute: the exception that
                // follows is expected and ends this CPU's run (rt::expect_exception).
                unsafe { core::arch::asm!("blr {}", in(reg) a1, options(nostack)) };
                rt::park();
            }
            kind::OFF => {
                e.done.store(req, Ordering::Release);
                let r = call(psci::CPU_OFF, 0, 0, 0);
                // CPU_OFF returned: it failed.
                e.r0.store(r as u64, Ordering::Relaxed);
                rt::park();
            }
            _ => {
                let r = call(fid, a1, a2, a3);
                e.r0.store(r as u64, Ordering::Relaxed);
            }
        }
        e.done.store(req, Ordering::Release);
    }
}

// ---- The executor's wake-up source: its virtual timer through the GIC ----------------

fn sysreg_isb() {
    // SAFETY: a barrier.
    unsafe { core::arch::asm!("isb", options(nostack, preserves_flags)) };
}

/// Routes the executor's virtual timer interrupt to it (GICv3 redistributor and system
/// register interface, or GICv2 distributor and CPU interface) and arms the timer for
/// [`WAKE_MS`]. Interrupts stay masked (DAIF): a pending one only ends WFI. Returns
/// whether the GIC could be set up.
fn wake_setup() -> bool {
    let e = &EXEC;
    let dist = e.gic_dist.load(Ordering::Acquire);
    let bit = 1u32 << VTIMER_INTID;
    let prio_reg = 0x400 + u64::from(VTIMER_INTID & !3);
    let prio_shift = (VTIMER_INTID & 3) * 8;
    // The register accesses below: the DTB's GIC frames, 32-bit aligned registers,
    // Device memory with the MMU off; the program owns the GIC (Warden leaves it to the
    // host) and the EL1 GIC system registers.
    match e.gic_version.load(Ordering::Acquire) {
        3 => {
            let Some(rd) = my_redistributor() else {
                return false;
            };
            let sgi = rd + 0x1_0000;
            // SAFETY: see above.
            unsafe {
                // GICD_CTLR: ARE and group 1 enabled.
                rt::write32(dist, rt::read32(dist) | (1 << 4) | (1 << 1));
                // GICR_WAKER: ProcessorSleep clear, wait for ChildrenAsleep clear.
                rt::write32(rd + 0x14, rt::read32(rd + 0x14) & !(1 << 1));
                let t0 = rt::counter();
                while rt::read32(rd + 0x14) & (1 << 2) != 0 {
                    if rt::ms_between(t0, rt::counter()) > 100 {
                        return false;
                    }
                }
                rt::write32(sgi + 0x80, rt::read32(sgi + 0x80) | bit); // IGROUPR0: group 1
                let p = rt::read32(sgi + prio_reg) & !(0xff << prio_shift);
                rt::write32(sgi + prio_reg, p | (0x80 << prio_shift));
                rt::write32(sgi + 0x100, bit); // ISENABLER0
                // ICC_SRE_EL1.SRE, ICC_PMR_EL1, ICC_IGRPEN1_EL1.
                core::arch::asm!("mrs {t}, s3_0_c12_c12_5", "orr {t}, {t}, #1", "msr s3_0_c12_c12_5, {t}", "isb", t = out(reg) _, options(nostack));
                core::arch::asm!("msr s3_0_c4_c6_0, {}", in(reg) 0xffu64, options(nostack));
                core::arch::asm!("msr s3_0_c12_c12_7, {}", in(reg) 1u64, options(nostack));
            }
        }
        2 => {
            let cpu_if = e.gic_cpu_if.load(Ordering::Acquire);
            if cpu_if == 0 {
                return false;
            }
            // SAFETY: see above.
            unsafe {
                rt::write32(dist, rt::read32(dist) | 1); // GICD_CTLR
                let p = rt::read32(dist + prio_reg) & !(0xff << prio_shift);
                rt::write32(dist + prio_reg, p | (0x80 << prio_shift));
                rt::write32(dist + 0x100, bit); // GICD_ISENABLER0 (banked)
                rt::write32(cpu_if + 0x4, 0xff); // GICC_PMR
                rt::write32(cpu_if, rt::read32(cpu_if) | 1); // GICC_CTLR
            }
        }
        _ => return false,
    }
    let ticks = rt::counter_hz() * WAKE_MS / 1000;
    // SAFETY: the EL1 virtual timer is the program's.
    unsafe {
        core::arch::asm!("msr s3_3_c14_c3_2, {}", in(reg) rt::counter() + ticks, options(nostack)); // CNTV_CVAL_EL0
        core::arch::asm!("msr s3_3_c14_c3_1, {}", in(reg) 1u64, options(nostack)); // CNTV_CTL_EL0: enabled
    }
    sysreg_isb();
    true
}

/// Stops the timer and takes the interrupt away again.
fn wake_teardown() {
    let e = &EXEC;
    let bit = 1u32 << VTIMER_INTID;
    // SAFETY: as in `wake_setup`.
    unsafe {
        core::arch::asm!("msr s3_3_c14_c3_1, {}", in(reg) 0u64, options(nostack)); // CNTV_CTL_EL0
        match e.gic_version.load(Ordering::Acquire) {
            3 => {
                if let Some(rd) = my_redistributor() {
                    rt::write32(rd + 0x1_0000 + 0x180, bit); // ICENABLER0
                }
                core::arch::asm!("msr s3_0_c12_c12_7, {}", in(reg) 0u64, options(nostack));
            }
            2 => rt::write32(e.gic_dist.load(Ordering::Acquire) + 0x180, bit),
            _ => {}
        }
    }
    sysreg_isb();
}

/// The GICv3 redistributor frame of the running CPU (GICR_TYPER's affinity).
fn my_redistributor() -> Option<u64> {
    let e = &EXEC;
    let (base, size) = (
        e.gic_redist.load(Ordering::Acquire),
        e.gic_redist_size.load(Ordering::Acquire),
    );
    let m = smp::mpidr();
    // GICR_TYPER[63:32] is Aff3.Aff2.Aff1.Aff0.
    let aff = (((m >> 32) & 0xff) << 24) | (m & 0xff_ffff);
    let mut rd = base;
    while rd < base + size {
        // SAFETY: a redistributor frame inside the DTB's region.
        let typer = unsafe { rt::read64(rd + 8) };
        if typer >> 32 == aff {
            return Some(rd);
        }
        if typer & (1 << 4) != 0 {
            return None; // Last
        }
        rd += if typer & (1 << 1) != 0 {
            0x4_0000
        } else {
            0x2_0000
        };
    }
    None
}

// ---- The boot CPU's side --------------------------------------------------------------

/// Waits until `f` holds or `ms` pass.
fn wait_until(ms: u64, mut f: impl FnMut() -> bool) -> bool {
    let start = rt::counter();
    loop {
        if f() {
            return true;
        }
        if rt::ms_between(start, rt::counter()) > ms {
            return false;
        }
        rt::delay_us(50);
    }
}

/// The executor: which CPU it is and whether it still answers.
struct Executor {
    mpidr: u64,
    seq: u64,
    lost: bool,
}

impl Executor {
    /// Runs one request; `Err` if the executor did not come back in time (it is then
    /// lost for the checks that follow).
    fn run(&mut self, k: u64, fid: u32, a: [u64; 3]) -> Result<i64, String> {
        if self.lost {
            return Err("not run: the executor CPU was lost earlier".into());
        }
        let e = &EXEC;
        self.seq += 1;
        e.kind.store(k, Ordering::Relaxed);
        e.fid.store(u64::from(fid), Ordering::Relaxed);
        e.a1.store(a[0], Ordering::Relaxed);
        e.a2.store(a[1], Ordering::Relaxed);
        e.a3.store(a[2], Ordering::Relaxed);
        e.req.store(self.seq, Ordering::Release);
        rt::sev();
        let seq = self.seq;
        if wait_until(CALL_TIMEOUT_MS, || e.done.load(Ordering::Acquire) == seq) {
            Ok(e.r0.load(Ordering::Relaxed) as i64)
        } else {
            self.lost = true;
            Err(format!(
                "{fid:#x}: CPU {:#x} did not come back from the call within {CALL_TIMEOUT_MS} ms",
                self.mpidr
            ))
        }
    }
}

/// The first secondary CPU of the DTB that PSCI can start.
fn first_secondary(env: &Env) -> Option<u64> {
    let me = smp::mpidr();
    env.plat
        .cpus
        .iter()
        .find(|c| c.available && c.mpidr != me && c.enable_method == EnableMethod::Psci)
        .map(|c| c.mpidr)
}

/// Starts the executor as image CPU 1 with CPU_ON `fid`; returns CPU_ON's status, or
/// `Err` when the CPU does not check in at EL1.
fn start(fid: u32, mpidr: u64, generation: u64) -> Result<(), String> {
    let r = smp::start_cpu_with(fid, 1, mpidr, executor_main, generation);
    if r != 0 {
        return Err(format!("CPU_ON {fid:#x} of {mpidr:#x} = {r}"));
    }
    if !wait_until(CALL_TIMEOUT_MS, || {
        EXEC.alive.load(Ordering::Acquire) == ALIVE | generation
    }) {
        return Err(format!(
            "CPU_ON {fid:#x} of {mpidr:#x} returned 0 but the CPU never reached the program"
        ));
    }
    match EXEC.el.load(Ordering::Relaxed) {
        1 => Ok(()),
        el => Err(format!(
            "CPU_ON {fid:#x}: CPU {mpidr:#x} started at EL{el}, not EL1 (it bypassed Warden)"
        )),
    }
}

/// Turns the executor off and waits for AFFINITY_INFO to say so.
fn stop(x: &mut Executor) -> Result<(), String> {
    x.run(kind::OFF, 0, [0; 3])?;
    let mut last = 0;
    if wait_until(CALL_TIMEOUT_MS, || {
        last = smccc::psci_affinity_info(rt::psci_smc(), x.mpidr);
        last == psci::AFFINITY_OFF as i64
    }) {
        Ok(())
    } else {
        Err(format!(
            "CPU {:#x}: AFFINITY_INFO = {last} after CPU_OFF, expected 1 (OFF)",
            x.mpidr
        ))
    }
}

/// Expects each call to return `want` on the executor.
fn expect_all(
    o: &mut Outcome,
    x: &mut Executor,
    k: u64,
    calls: &[(&str, u32, [u64; 3])],
    want: i64,
) {
    for &(what, fid, a) in calls {
        match x.run(k, fid, a) {
            Ok(r) if r == want => o.note(format!("{what} {fid:#x} = {r}")),
            Ok(i64::MIN) => o.fail(format!("{what} {fid:#x}: the GIC could not be set up")),
            Ok(r) => o.fail(format!("{what} {fid:#x} = {r}, expected {want}")),
            Err(e) => o.fail(format!("{what}: {e}")),
        }
    }
}

/// `fw-other-services-refused`, `fw-system-suspend-refused`,
/// `fw-cpu-suspend-powerdown-refused`, `fw-cpu-suspend-standby`, `fw-psci-features`,
/// `fw-cpu-on-sve-hint`, `s2-permission-fault`.
pub fn firmware(env: &Env) -> [R; 7] {
    let not_run = |why: &str| -> [R; 7] { core::array::from_fn(|_| Err(why.into())) };
    let Some(mpidr) = first_secondary(env) else {
        return not_run("the DTB lists no secondary CPU PSCI can start");
    };
    if let Some(g) = &env.plat.gic {
        let e = &EXEC;
        e.gic_version.store(
            match g.version {
                GicVersion::V2 => 2,
                GicVersion::V3 => 3,
            },
            Ordering::Relaxed,
        );
        e.gic_dist.store(g.dist.base.get(), Ordering::Relaxed);
        if let Some(r) = g.redists.first() {
            e.gic_redist.store(r.base.get(), Ordering::Relaxed);
            e.gic_redist_size.store(r.size, Ordering::Relaxed);
        }
        if let Some(c) = g.cpu_if {
            e.gic_cpu_if.store(c.base.get(), Ordering::Relaxed);
        }
    }
    // The power_state format firmware (through Warden) says it uses.
    let suspend_features = call(PSCI_FEATURES, u64::from(CPU_SUSPEND_64), 0, 0);
    let extended = suspend_features >= 0 && suspend_features & 2 != 0;
    let powerdown: u64 = if extended { 1 << 30 } else { 1 << 16 };

    let mut x = Executor {
        mpidr,
        seq: EXEC.req.load(Ordering::Relaxed),
        lost: false,
    };
    let started = start(psci::CPU_ON_64, mpidr, 1);

    // 1. Other services.
    let r1 = (|| -> R {
        started.clone()?;
        let mut o = Outcome::new();
        let calls: &[(&str, u32, [u64; 3])] = &[
            ("SiP service", 0xC200_0000, [0; 3]),
            ("SiP service", 0x8200_0001, [0x4000_0000, 0x1000, 0]),
            ("SiP service with SVE hint", 0xC201_0000, [0; 3]),
            ("OEM service", 0x8300_0000, [0; 3]),
            ("SDEI_VERSION", 0xC400_0020, [0; 3]),
            ("TRNG_VERSION", 0x8400_0050, [0; 3]),
            ("FFA_VERSION", 0x8400_0063, [0x1_0001, 0, 0]),
            ("RMI_VERSION", 0xC400_0150, [0; 3]),
            ("Trusted OS call", 0xB200_0000, [0; 3]),
            ("Trusted OS yielding call", 0x3200_0000, [0; 3]),
            ("reserved bits set", 0x84FE_0000, [0; 3]),
        ];
        expect_all(&mut o, &mut x, kind::CALL, calls, NOT_SUPPORTED);
        o.finish()
    })();

    // 2. SYSTEM_SUSPEND in every form (the wake-up timer armed, should it suspend).
    let r2 = (|| -> R {
        started.clone()?;
        let mut o = Outcome::new();
        let calls: &[(&str, u32, [u64; 3])] = &[
            ("SYSTEM_SUSPEND", SYSTEM_SUSPEND_64, [0; 3]),
            ("SYSTEM_SUSPEND", SYSTEM_SUSPEND_32, [0; 3]),
            (
                "SYSTEM_SUSPEND with SVE hint",
                SYSTEM_SUSPEND_64 | HINT,
                [0; 3],
            ),
            (
                "SYSTEM_SUSPEND with SVE hint",
                SYSTEM_SUSPEND_32 | HINT,
                [0; 3],
            ),
            ("CPU_DEFAULT_SUSPEND", 0xC400_000C, [0; 3]),
            ("CPU_FREEZE", 0x8400_000B, [0; 3]),
        ];
        expect_all(&mut o, &mut x, kind::SUSPEND, calls, NOT_SUPPORTED);
        o.finish()
    })();

    // 3. CPU_SUSPEND to a power-down state (timer armed: forwarded, it would return 0).
    let r3 = (|| -> R {
        started.clone()?;
        let mut o = Outcome::new();
        let calls: &[(&str, u32, [u64; 3])] = &[
            ("CPU_SUSPEND(power-down)", CPU_SUSPEND_64, [powerdown, 0, 0]),
            ("CPU_SUSPEND(power-down)", CPU_SUSPEND_32, [powerdown, 0, 0]),
            (
                "CPU_SUSPEND(power-down) with SVE hint",
                CPU_SUSPEND_64 | HINT,
                [powerdown, 0, 0],
            ),
            (
                "CPU_SUSPEND(cluster power-down)",
                CPU_SUSPEND_64,
                [powerdown | if extended { 0 } else { 1 << 24 }, 0, 0],
            ),
        ];
        expect_all(&mut o, &mut x, kind::SUSPEND, calls, INVALID_PARAMETERS);
        o.note(format!(
            "power_state format {}",
            if extended { "extended" } else { "original" }
        ));
        o.finish()
    })();

    // 4. CPU_SUSPEND to standby: sleeps until the timer fires, returns 0.
    let r4 = (|| -> R {
        started.clone()?;
        let mut o = Outcome::new();
        for fid in [CPU_SUSPEND_64, CPU_SUSPEND_32 | HINT] {
            match x.run(kind::SUSPEND, fid, [0, 0, 0]) {
                Ok(0) => {
                    let us = EXEC.us.load(Ordering::Relaxed);
                    o.note(format!(
                        "CPU_SUSPEND {fid:#x}(standby) = 0 after {us} us (timer at {WAKE_MS} ms)"
                    ));
                }
                Ok(i64::MIN) => o.fail("the GIC could not be set up for the wake-up timer"),
                Ok(r) => o.fail(format!("CPU_SUSPEND {fid:#x}(standby) = {r}, expected 0")),
                Err(e) => o.fail(e),
            }
        }
        o.finish()
    })();

    // 5. PSCI_FEATURES (boot CPU: the call itself forwards nothing dangerous).
    let r5 = {
        let mut o = Outcome::new();
        for (what, q) in [
            ("SYSTEM_SUSPEND", SYSTEM_SUSPEND_64),
            ("SYSTEM_SUSPEND", SYSTEM_SUSPEND_32),
            ("SYSTEM_SUSPEND with SVE hint", SYSTEM_SUSPEND_64 | HINT),
            ("CPU_DEFAULT_SUSPEND", 0xC400_000C),
            ("CPU_FREEZE", 0x8400_000B),
            ("MIGRATE", 0xC400_0005),
            ("PSCI_SET_SUSPEND_MODE", 0x8400_000F),
            ("MEM_PROTECT_CHECK_RANGE", 0xC400_0014),
            ("a SiP call", 0xC200_0000),
        ] {
            let r = call(PSCI_FEATURES, u64::from(q), 0, 0);
            if r == NOT_SUPPORTED {
                o.note(format!("{what} {q:#x}: NOT_SUPPORTED"));
            } else {
                o.fail(format!(
                    "PSCI_FEATURES({what} {q:#x}) = {r}, expected NOT_SUPPORTED (Warden refuses it)"
                ));
            }
        }
        for (what, q) in [
            ("CPU_ON", psci::CPU_ON_64),
            ("CPU_ON with SVE hint", psci::CPU_ON_64 | HINT),
            ("CPU_SUSPEND with SVE hint", CPU_SUSPEND_64 | HINT),
            ("CPU_OFF", psci::CPU_OFF),
        ] {
            let r = call(PSCI_FEATURES, u64::from(q), 0, 0);
            if r < 0 {
                o.fail(format!(
                    "PSCI_FEATURES({what} {q:#x}) = {r}, but Warden serves that call"
                ));
            } else if q & !HINT == CPU_SUSPEND_64 && r & 1 != 0 {
                o.fail(format!(
                    "PSCI_FEATURES({what}) = {r:#x} offers OS-initiated mode, which Warden refuses"
                ));
            }
        }
        if o.problems.is_empty() {
            o.note("CPU_ON, CPU_OFF, CPU_SUSPEND (SVE hint or not) supported");
        }
        o.finish()
    };

    // 6. The executor goes off; CPU_ON with the SVE hint brings it back through Warden.
    let stopped = if started.is_ok() {
        stop(&mut x)
    } else {
        Err("not run: the executor never started".into())
    };
    let r6 = (|| -> R {
        stopped.clone()?;
        start(psci::CPU_ON_64 | HINT, mpidr, 2)?;
        x.lost = false;
        Ok(format!(
            "CPU_ON {:#x} started CPU {mpidr:#x} at EL1 through Warden",
            psci::CPU_ON_64 | HINT
        ))
    })();

    // 7. An instruction fetch from MMIO (Device and execute-never in the host stage-2):
    // a stage-2 permission fault, for which HPFAR_EL2 is not valid; Warden must answer it
    // with an external abort, not take the mapped IPA for a transient fault and retry.
    let r7 = (|| -> R {
        if r6.is_err() {
            // The executor is off (or lost): start it the ordinary way.
            stopped.clone()?;
            start(psci::CPU_ON_64, mpidr, 3)?;
            x.lost = false;
        }
        let uart = env
            .plat
            .console
            .as_ref()
            .map(|c| c.regs.base.get())
            .ok_or("no console in the DTB to fetch from")?;
        x.run(kind::FETCH, 0, [uart, 0, 0])?;
        let mut esr = None;
        wait_until(CALL_TIMEOUT_MS, || {
            esr = rt::caught_exception(1);
            esr.is_some()
        });
        // The executor ends its run in its exception handler.
        x.lost = true;
        match esr {
            None => Err(format!(
                "a fetch from MMIO {uart:#x} on CPU {mpidr:#x}: no exception within {CALL_TIMEOUT_MS} ms (the CPU is stuck re-trying the access)"
            )),
            Some(esr) if esr >> 26 == 0x21 && esr & 0x3f == 0x10 => Ok(format!(
                "a fetch from MMIO {uart:#x}: synchronous external abort at EL1 (ESR {esr:#x})"
            )),
            Some(esr) => Err(format!(
                "a fetch from MMIO {uart:#x}: ESR {esr:#x}, expected an instruction abort with FSC 0x10 (external abort)"
            )),
        }
    })();
    [r1, r2, r3, r4, r5, r6, r7]
}
