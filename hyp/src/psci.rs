//! PSCI as seen from the host. Warden sits between the host and firmware: calls that
//! start a CPU or resume one from a powerdown state must come back through Warden's own
//! entry point (so the CPU gets its EL2 state before the host runs), everything else is
//! passed through. This module holds the pure part: function IDs, classification, and the
//! per-CPU power state machine that keeps CPU_ON honest.

use core::sync::atomic::{AtomicU8, Ordering};

/// PSCI function IDs (SMC32 and SMC64 forms where both exist).
pub mod id {
    /// PSCI_VERSION.
    pub const VERSION: u32 = 0x8400_0000;
    /// CPU_SUSPEND, SMC32.
    pub const CPU_SUSPEND_32: u32 = 0x8400_0001;
    /// CPU_SUSPEND, SMC64.
    pub const CPU_SUSPEND_64: u32 = 0xC400_0001;
    /// CPU_OFF.
    pub const CPU_OFF: u32 = 0x8400_0002;
    /// CPU_ON, SMC32.
    pub const CPU_ON_32: u32 = 0x8400_0003;
    /// CPU_ON, SMC64.
    pub const CPU_ON_64: u32 = 0xC400_0003;
    /// AFFINITY_INFO, SMC32.
    pub const AFFINITY_INFO_32: u32 = 0x8400_0004;
    /// AFFINITY_INFO, SMC64.
    pub const AFFINITY_INFO_64: u32 = 0xC400_0004;
    /// MIGRATE_INFO_TYPE.
    pub const MIGRATE_INFO_TYPE: u32 = 0x8400_0006;
    /// SYSTEM_OFF.
    pub const SYSTEM_OFF: u32 = 0x8400_0008;
    /// SYSTEM_RESET.
    pub const SYSTEM_RESET: u32 = 0x8400_0009;
    /// PSCI_FEATURES.
    pub const FEATURES: u32 = 0x8400_000A;
    /// SYSTEM_SUSPEND, SMC32.
    pub const SYSTEM_SUSPEND_32: u32 = 0x8400_000E;
    /// SYSTEM_SUSPEND, SMC64.
    pub const SYSTEM_SUSPEND_64: u32 = 0xC400_000E;
    /// SYSTEM_RESET2, SMC32.
    pub const SYSTEM_RESET2_32: u32 = 0x8400_0012;
    /// SYSTEM_RESET2, SMC64.
    pub const SYSTEM_RESET2_64: u32 = 0xC400_0012;
    /// CPU_DEFAULT_SUSPEND, SMC32 / SMC64.
    pub const CPU_DEFAULT_SUSPEND_32: u32 = 0x8400_000C;
    /// CPU_DEFAULT_SUSPEND, SMC64.
    pub const CPU_DEFAULT_SUSPEND_64: u32 = 0xC400_000C;
    /// CPU_FREEZE.
    pub const CPU_FREEZE: u32 = 0x8400_000B;
}

/// PSCI return codes.
pub mod ret {
    /// Success.
    pub const SUCCESS: i64 = 0;
    /// NOT_SUPPORTED.
    pub const NOT_SUPPORTED: i64 = -1;
    /// INVALID_PARAMETERS.
    pub const INVALID_PARAMETERS: i64 = -2;
    /// DENIED.
    pub const DENIED: i64 = -3;
    /// ALREADY_ON.
    pub const ALREADY_ON: i64 = -4;
    /// ON_PENDING.
    pub const ON_PENDING: i64 = -5;
}

/// What Warden does with a PSCI call from the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// CPU_ON: record the host's entry and context for the target, forward with Warden's
    /// entry point.
    CpuOn,
    /// A suspend that may lose the CPU's context (CPU_SUSPEND, CPU_DEFAULT_SUSPEND,
    /// SYSTEM_SUSPEND): forward with Warden's entry point; `entry_arg` is the index of the
    /// host entry-point argument (1 for SYSTEM_SUSPEND, 2 for CPU_SUSPEND).
    Suspend {
        /// Register index holding the host's resume address.
        entry_arg: usize,
    },
    /// CPU_OFF: mark the CPU off, then forward.
    CpuOff,
    /// PSCI_FEATURES: answered by Warden for functions it implements itself, forwarded
    /// otherwise.
    Features,
    /// Forward unchanged (VERSION, AFFINITY_INFO, SYSTEM_OFF/RESET, …).
    Forward,
    /// Not PSCI.
    NotPsci,
}

/// Classifies a function ID.
pub const fn classify(fid: u32) -> Action {
    match fid {
        id::CPU_ON_32 | id::CPU_ON_64 => Action::CpuOn,
        id::CPU_SUSPEND_32 | id::CPU_SUSPEND_64 => Action::Suspend { entry_arg: 2 },
        id::CPU_DEFAULT_SUSPEND_32 | id::CPU_DEFAULT_SUSPEND_64 => Action::Suspend { entry_arg: 1 },
        id::SYSTEM_SUSPEND_32 | id::SYSTEM_SUSPEND_64 => Action::Suspend { entry_arg: 1 },
        id::CPU_OFF => Action::CpuOff,
        id::FEATURES => Action::Features,
        // The rest of the PSCI range (0x8400_0000..=0x8400_001F and the SMC64 twins).
        0x8400_0000..=0x8400_001F | 0xC400_0000..=0xC400_001F => Action::Forward,
        _ => Action::NotPsci,
    }
}

/// Whether a CPU_SUSPEND `power_state` requests a powerdown state (context lost), in the
/// original format (bit 16 StateType) — used only to decide what to log; Warden forwards
/// every suspend with its own entry point, which is correct for both kinds.
pub const fn is_powerdown_original(power_state: u64) -> bool {
    power_state & (1 << 16) != 0
}

/// Per-CPU power state as Warden tracks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PowerState {
    /// Not running (never started, or CPU_OFF).
    Off = 0,
    /// CPU_ON accepted by Warden, firmware not yet confirmed / CPU not yet entered.
    OnPending = 1,
    /// Running the host.
    On = 2,
}

/// An atomic [`PowerState`]: the only writer of a CPU's boot record is whoever moved it
/// from `Off` to `OnPending`, so two racing CPU_ON calls cannot both rewrite the target's
/// entry point.
#[derive(Debug)]
pub struct PowerCell(AtomicU8);

impl PowerCell {
    /// A cell in state `s`.
    pub const fn new(s: PowerState) -> Self {
        Self(AtomicU8::new(s as u8))
    }
    /// Current state.
    pub fn get(&self) -> PowerState {
        match self.0.load(Ordering::Acquire) {
            0 => PowerState::Off,
            1 => PowerState::OnPending,
            _ => PowerState::On,
        }
    }
    /// Sets the state.
    pub fn set(&self, s: PowerState) {
        self.0.store(s as u8, Ordering::Release);
    }
    /// Off → OnPending. On failure returns the PSCI error CPU_ON must report.
    pub fn claim_for_on(&self) -> Result<(), i64> {
        match self.0.compare_exchange(
            PowerState::Off as u8,
            PowerState::OnPending as u8,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => Ok(()),
            Err(x) if x == PowerState::OnPending as u8 => Err(ret::ON_PENDING),
            Err(_) => Err(ret::ALREADY_ON),
        }
    }
}

/// MPIDR_EL1 affinity bits (Aff3..Aff0).
pub const MPIDR_AFF_MASK: u64 = 0xff_00ff_ffff;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert_eq!(classify(id::CPU_ON_64), Action::CpuOn);
        assert_eq!(classify(id::CPU_ON_32), Action::CpuOn);
        assert_eq!(
            classify(id::CPU_SUSPEND_64),
            Action::Suspend { entry_arg: 2 }
        );
        assert_eq!(
            classify(id::SYSTEM_SUSPEND_64),
            Action::Suspend { entry_arg: 1 }
        );
        assert_eq!(classify(id::CPU_OFF), Action::CpuOff);
        assert_eq!(classify(id::SYSTEM_OFF), Action::Forward);
        assert_eq!(classify(id::AFFINITY_INFO_64), Action::Forward);
        assert_eq!(classify(id::VERSION), Action::Forward);
        assert_eq!(classify(id::FEATURES), Action::Features);
        assert_eq!(classify(0x8200_0001), Action::NotPsci, "SiP call");
        assert_eq!(classify(0xC600_0000), Action::NotPsci, "Warden call");
        assert_eq!(classify(0x8400_0020), Action::NotPsci);
    }

    #[test]
    fn cpu_on_state_machine() {
        let c = PowerCell::new(PowerState::Off);
        assert_eq!(c.claim_for_on(), Ok(()));
        assert_eq!(c.claim_for_on(), Err(ret::ON_PENDING));
        c.set(PowerState::On);
        assert_eq!(c.claim_for_on(), Err(ret::ALREADY_ON));
        c.set(PowerState::Off);
        assert_eq!(c.claim_for_on(), Ok(()));
    }
}
