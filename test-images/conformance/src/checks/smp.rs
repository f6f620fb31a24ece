//! SMP: every CPU of the DTB is started with PSCI CPU_ON (through Warden) at the image's
//! secondary entry, on its own stack; then all CPUs make hypercalls at the same time —
//! each allocates a domain of its own and maps/unmaps in it, and all map/unmap distinct
//! IOVAs of one shared domain — and the pins must balance; finally the secondaries
//! CPU_OFF.
//!
//! CPUs talk through per-CPU mailboxes of aligned 64-bit words, each word written by one
//! CPU only (`AtomicU64::load`/`store`: plain or acquire/release accesses, never a
//! read-modify-write — the MMU is off, there are no exclusives). Secondaries never
//! allocate or print (except from their exception and panic paths).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use el1_rt::rt::{self, MAX_CPUS};
use el1_rt::smccc::{self, psci};
use el1_rt::smp;
use host_abi::{Error, domain_flags, prot};
use hyp::dtb::EnableMethod;

use crate::env::{Dom, Env, Outcome, SMP_PAGES, pages};
use crate::plan::{self, PAGE, SMP_SLOTS, step};

type R = Result<String, String>;

/// Iterations of each CPU's map/unmap loop.
const ITERATIONS: u64 = 200;
/// How long the boot CPU waits for a secondary to check in, and for CPU_OFF.
const START_TIMEOUT_MS: u64 = 5_000;
/// How long the boot CPU waits for the concurrent loops.
const RUN_TIMEOUT_MS: u64 = 30_000;

const ALIVE: u64 = 0xa11e_0000_0000_0001;

mod cmd {
    pub const RUN: u64 = 1;
    pub const OFF: u64 = 2;
}

mod state {
    pub const IDLE: u64 = 1;
    pub const RUNNING: u64 = 2;
    pub const DONE: u64 = 3;
    pub const OFF_CALLED: u64 = 4;
    pub const OFF_FAILED: u64 = 5;
}

/// One CPU's mailbox. The first three words are the boot CPU's, the rest the CPU's own.
#[repr(C, align(128))]
struct Mailbox {
    cmd: AtomicU64,
    shared: AtomicU64,
    iterations: AtomicU64,
    alive: AtomicU64,
    mpidr: AtomicU64,
    el: AtomicU64,
    state: AtomicU64,
    own: AtomicU64,
    done: AtomicU64,
    errors: AtomicU64,
    first_error: AtomicU64,
    free: AtomicU64,
    free_again: AtomicU64,
    off_status: AtomicU64,
}

static MAIL: [Mailbox; MAX_CPUS] = [const {
    Mailbox {
        cmd: AtomicU64::new(0),
        shared: AtomicU64::new(0),
        iterations: AtomicU64::new(0),
        alive: AtomicU64::new(0),
        mpidr: AtomicU64::new(0),
        el: AtomicU64::new(0),
        state: AtomicU64::new(0),
        own: AtomicU64::new(0),
        done: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        first_error: AtomicU64::new(0),
        free: AtomicU64::new(0),
        free_again: AtomicU64::new(0),
        off_status: AtomicU64::new(0),
    }
}; MAX_CPUS];

fn current_el() -> u64 {
    let v: u64;
    // SAFETY: reading CurrentEL has no side effects.
    unsafe { core::arch::asm!("mrs {}, CurrentEL", out(reg) v, options(nomem, nostack)) };
    (v >> 2) & 3
}

/// Where a secondary CPU starts (from el1-rt's head.S, on its own stack).
extern "C" fn secondary_main(index: u64) -> ! {
    let i = index as usize;
    let mb = &MAIL[i];
    mb.mpidr.store(smp::mpidr(), Ordering::Relaxed);
    mb.el.store(current_el(), Ordering::Relaxed);
    mb.state.store(state::IDLE, Ordering::Relaxed);
    mb.alive.store(ALIVE, Ordering::Release);
    let mut ran = false;
    loop {
        match mb.cmd.load(Ordering::Acquire) {
            cmd::RUN if !ran => {
                ran = true;
                worker(i);
            }
            cmd::OFF => {
                mb.state.store(state::OFF_CALLED, Ordering::Release);
                let r = smccc::psci_cpu_off(rt::psci_smc());
                // CPU_OFF returned: it failed.
                mb.off_status.store(r as u64, Ordering::Relaxed);
                mb.state.store(state::OFF_FAILED, Ordering::Release);
                rt::park();
            }
            _ => {
                // SAFETY: waiting for an event (the boot CPU sends one after each
                // command) has no effect on memory.
                unsafe { core::arch::asm!("wfe", options(nomem, nostack)) };
            }
        }
    }
}

/// Records a worker error (the CPU's own words).
fn record(mb: &Mailbox, step: u64, k: u64, value: u64) {
    let n = mb.errors.load(Ordering::Relaxed);
    if n == 0 {
        mb.first_error
            .store(plan::pack_error(step, k, value), Ordering::Relaxed);
    }
    mb.errors.store(n + 1, Ordering::Release);
}

/// The map/unmap loop every CPU runs (CPU `i`, its own mailbox).
fn worker(i: usize) {
    let mb = &MAIL[i];
    mb.state.store(state::RUNNING, Ordering::Release);
    let shared = mb.shared.load(Ordering::Acquire);
    let iterations = mb.iterations.load(Ordering::Acquire);
    let own_page = SMP_PAGES.page(1 + i);
    let common = SMP_PAGES.page(0);
    // Odd CPUs use batched domains, even ones strict.
    let flags = if i % 2 == 1 { domain_flags::BATCHED } else { 0 };
    let r = smccc::domain_alloc(flags);
    if !r.ok() {
        record(mb, step::ALLOC, 0, r.x0);
        mb.state.store(state::DONE, Ordering::Release);
        return;
    }
    let own = r.x1;
    mb.own.store(own, Ordering::Relaxed);
    let one = |r: smccc::Ret| {
        if r.ok() && r.x1 == PAGE {
            None
        } else {
            Some(if r.ok() { r.x1 } else { r.x0 })
        }
    };
    for k in 0..iterations {
        let (io, is) = (plan::smp_own_iova(k), plan::smp_shared_iova(i, k));
        let mut failed = None;
        if let Some(v) = one(smccc::map(own, io, own_page, PAGE, prot::ALL)) {
            failed = Some((step::MAP_OWN, v));
        } else if let Some(v) = one(smccc::map(shared, is, common, PAGE, prot::READ)) {
            failed = Some((step::MAP_SHARED, v));
        } else {
            let r = smccc::iova_to_phys(own, io);
            let s = smccc::iova_to_phys(shared, is);
            if !(r.ok() && r.x1 == own_page) {
                failed = Some((step::I2P_OWN, if r.ok() { r.x1 } else { r.x0 }));
            } else if !(s.ok() && s.x1 == common) {
                failed = Some((step::I2P_SHARED, if s.ok() { s.x1 } else { s.x0 }));
            } else if let Some(v) = one(smccc::unmap(own, io, PAGE)) {
                failed = Some((step::UNMAP_OWN, v));
            } else if let Some(v) = one(smccc::unmap(shared, is, PAGE)) {
                failed = Some((step::UNMAP_SHARED, v));
            }
        }
        if let Some((s, v)) = failed {
            record(mb, s, k, v);
            // Leave nothing mapped behind (either may already be gone).
            let _ = smccc::unmap(own, io, PAGE);
            let _ = smccc::unmap(shared, is, PAGE);
            break;
        }
        mb.done.store(k + 1, Ordering::Release);
    }
    if flags & domain_flags::BATCHED != 0 {
        let r = smccc::flush(own);
        if !r.ok() {
            record(mb, step::FLUSH, 0, r.x0);
        }
    }
    mb.free.store(smccc::domain_free(own).x0, Ordering::Relaxed);
    mb.free_again
        .store(smccc::domain_free(own).x0, Ordering::Relaxed);
    mb.state.store(state::DONE, Ordering::Release);
}

/// Waits until `f` holds or `ms` pass; returns whether it held.
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

/// A worker's result in words.
fn worker_report(i: usize) -> Result<String, String> {
    let mb = &MAIL[i];
    let errors = mb.errors.load(Ordering::Acquire);
    let done = mb.done.load(Ordering::Acquire);
    let own = mb.own.load(Ordering::Relaxed);
    let free = mb.free.load(Ordering::Relaxed);
    let mut p = Vec::new();
    if errors != 0 {
        let (s, k, v) = plan::unpack_error(mb.first_error.load(Ordering::Relaxed));
        let value = if (-8..0).contains(&v) {
            format!("{}", el1_rt::logic::Status(v as u64))
        } else {
            format!("{:#x} (low 32 bits of the result)", v as u32)
        };
        p.push(format!(
            "CPU {i}: {errors} error(s), first in {} at iteration {k}: {value}",
            step::name(s)
        ));
    }
    if done != ITERATIONS && errors == 0 {
        p.push(format!("CPU {i}: {done} of {ITERATIONS} iterations"));
    }
    if own != 0 && free != 0 {
        p.push(format!(
            "CPU {i}: DOMAIN_FREE({own}) = {}",
            el1_rt::logic::Status(free)
        ));
    }
    if p.is_empty() {
        Ok(format!("CPU {i}: {done} iterations in domain {own}"))
    } else {
        Err(p.join("; "))
    }
}

/// `smp-bringup`, `smp-concurrent`, `smp-pins-balanced`, `smp-cpu-off`.
pub fn smp(env: &Env) -> [R; 4] {
    let me = smp::mpidr();
    let smc = rt::psci_smc();
    // 1. Bring-up.
    let mut o = Outcome::new();
    let mut started: Vec<(usize, u64)> = Vec::new();
    let others: Vec<_> = env
        .plat
        .cpus
        .iter()
        .filter(|c| c.available && c.mpidr != me)
        .collect();
    if others.is_empty() {
        o.fail(format!(
            "the DTB lists no CPU besides the boot CPU (MPIDR {me:#x}): nothing to start"
        ));
    }
    for (n, c) in others.iter().enumerate() {
        let index = n + 1;
        if index >= MAX_CPUS {
            o.fail(format!(
                "CPU {:#x}: more CPUs than the image drives ({MAX_CPUS})",
                c.mpidr
            ));
            continue;
        }
        if c.enable_method != EnableMethod::Psci {
            o.fail(format!("CPU {:#x}: enable-method is not PSCI", c.mpidr));
            continue;
        }
        let r = smp::start_cpu(index, c.mpidr, secondary_main, index as u64);
        if r != 0 {
            o.fail(format!("PSCI CPU_ON({:#x}) = {r}", c.mpidr));
            continue;
        }
        started.push((index, c.mpidr));
    }
    let mut online = Vec::new();
    for &(i, mpidr) in &started {
        let mb = &MAIL[i];
        if !wait_until(START_TIMEOUT_MS, || {
            mb.alive.load(Ordering::Acquire) == ALIVE
        }) {
            o.fail(format!(
                "CPU {mpidr:#x} did not check in within {START_TIMEOUT_MS} ms of CPU_ON"
            ));
            continue;
        }
        let (got, el) = (
            mb.mpidr.load(Ordering::Relaxed),
            mb.el.load(Ordering::Relaxed),
        );
        if got != mpidr || el != 1 {
            o.fail(format!(
                "CPU started for MPIDR {mpidr:#x} reports MPIDR {got:#x} at EL{el} (expected EL1)"
            ));
            continue;
        }
        let aff = smccc::psci_affinity_info(smc, mpidr);
        if aff != psci::AFFINITY_ON as i64 {
            o.fail(format!(
                "AFFINITY_INFO({mpidr:#x}) = {aff} while it runs, expected 0 (ON)"
            ));
        }
        online.push((i, mpidr));
    }
    if o.problems.is_empty() {
        o.note(format!(
            "{} secondary CPU(s) started by CPU_ON through Warden, each on its own stack at EL1 with the MMU off, all checked in (MPIDRs {:?})",
            online.len(),
            online.iter().map(|c| format!("{:#x}", c.1)).collect::<Vec<_>>()
        ));
    }
    let r1 = o.finish();

    // 2. Concurrent hypercalls.
    let p0 = pages();
    let mut shared_id = None;
    let r2 = (|| -> R {
        if online.is_empty() {
            return Err("not run: no secondary CPU is online".into());
        }
        let shared = Dom::alloc(0)?;
        let id = shared.id;
        // The workers unmap everything they map; the domain is freed in step 3.
        core::mem::forget(shared);
        shared_id = Some(id);
        for &(i, _) in online.iter().chain([(0usize, me)].iter()) {
            MAIL[i].shared.store(id, Ordering::Relaxed);
            MAIL[i].iterations.store(ITERATIONS, Ordering::Relaxed);
        }
        for &(i, _) in &online {
            MAIL[i].cmd.store(cmd::RUN, Ordering::Release);
        }
        rt::sev();
        let t0 = rt::counter();
        worker(0);
        let all_done = wait_until(RUN_TIMEOUT_MS, || {
            online
                .iter()
                .all(|&(i, _)| MAIL[i].state.load(Ordering::Acquire) == state::DONE)
        });
        let ms = rt::ms_between(t0, rt::counter());
        let mut o = Outcome::new();
        if !all_done {
            for &(i, mpidr) in &online {
                if MAIL[i].state.load(Ordering::Acquire) != state::DONE {
                    o.fail(format!(
                        "CPU {i} ({mpidr:#x}) not done after {RUN_TIMEOUT_MS} ms ({} iterations)",
                        MAIL[i].done.load(Ordering::Acquire)
                    ));
                }
            }
        }
        for i in [0].into_iter().chain(online.iter().map(|c| c.0)) {
            match worker_report(i) {
                Ok(_) => {}
                Err(e) => o.fail(e),
            }
        }
        if o.problems.is_empty() {
            o.note(format!(
                "{} CPUs each ran {ITERATIONS} iterations of MAP/IOVA_TO_PHYS/UNMAP in a domain of its own (odd CPUs batched) and in shared domain {id} at distinct IOVAs, all calls correct, in {ms} ms",
                online.len() + 1
            ));
        }
        o.finish()
    })();

    // 3. Pins balance and every domain is gone.
    let r3 = (|| -> R {
        let p0 = p0?;
        let Some(id) = shared_id else {
            return Err("not run: the concurrent run did not start".into());
        };
        let mut o = Outcome::new();
        // Nothing left mapped in the shared domain.
        let mut left = 0;
        for &(i, _) in online.iter().chain([(0usize, me)].iter()) {
            for k in 0..SMP_SLOTS {
                if !smccc::iova_to_phys(id, plan::smp_shared_iova(i, k)).is(Error::NoEnt) {
                    left += 1;
                }
            }
        }
        if left != 0 {
            o.fail(format!(
                "{left} IOVA(s) of the shared domain still translate"
            ));
        }
        let r = smccc::domain_free(id);
        o.want_ok(format!("DOMAIN_FREE({id}) of the shared domain"), r);
        for i in [0].into_iter().chain(online.iter().map(|c| c.0)) {
            let own = MAIL[i].own.load(Ordering::Relaxed);
            let again = MAIL[i].free_again.load(Ordering::Relaxed);
            if own != 0 && again != Error::NoEnt.to_reg() {
                o.fail(format!(
                    "CPU {i}: a second DOMAIN_FREE({own}) = {}, expected NOENT (the domain should be gone)",
                    el1_rt::logic::Status(again)
                ));
            }
        }
        match pages() {
            Ok(p) if p[0] == p0[0] && p[1] == p0[1] => o.note(format!(
                "pinned {} and pending {} as before the run; shared domain {id} empty and freed; every CPU's domain freed",
                p[0], p[1]
            )),
            Ok(p) => o.fail(format!(
                "after the run pinned/pending = {}/{}, before it {}/{}: pins do not balance",
                p[0], p[1], p0[0], p0[1]
            )),
            Err(e) => o.fail(e),
        }
        o.finish()
    })();

    // 4. CPU_OFF.
    let r4 = (|| -> R {
        if online.is_empty() {
            return Err("not run: no secondary CPU is online".into());
        }
        let mut o = Outcome::new();
        for &(i, _) in &online {
            MAIL[i].cmd.store(cmd::OFF, Ordering::Release);
        }
        rt::sev();
        for &(i, mpidr) in &online {
            let mut last = 0;
            let off = wait_until(START_TIMEOUT_MS, || {
                last = smccc::psci_affinity_info(smc, mpidr);
                last == psci::AFFINITY_OFF as i64
            });
            if MAIL[i].state.load(Ordering::Acquire) == state::OFF_FAILED {
                o.fail(format!(
                    "CPU {mpidr:#x}: CPU_OFF returned {}",
                    MAIL[i].off_status.load(Ordering::Relaxed) as i64
                ));
            } else if !off {
                o.fail(format!(
                    "CPU {mpidr:#x}: AFFINITY_INFO = {last} {START_TIMEOUT_MS} ms after it was told to CPU_OFF, expected 1 (OFF)"
                ));
            }
        }
        if o.problems.is_empty() {
            o.note(format!(
                "{} secondary CPU(s) called CPU_OFF; AFFINITY_INFO reports each OFF",
                online.len()
            ));
        }
        o.finish()
    })();
    [r1, r2, r3, r4]
}
