//! Firmware calls as seen from the host. Warden sits between the host and firmware, and
//! only calls it understands reach firmware: every SMC or HVC the host makes is
//! classified here by its normalised function ID ([`classify`]) and given an [`Action`]
//! by the [`Policy`] built at boot:
//!
//! - PSCI (all of it, by function number and SMC32/SMC64 form, SMCCC 1.3's SVE hint
//!   cleared, plus the PSCI 0.1 IDs the DTB's `/psci` node names) is intercepted. Calls
//!   that start or resume a CPU come back through Warden's own entry point (so the CPU
//!   gets its EL2 state before the host runs); suspends that may lose power are refused,
//!   since the SMMUs' state would not survive them; the informational calls are
//!   forwarded. The table is in `docs/abi.md`.
//! - The Arm Architecture Service (OEN 0): `SMCCC_VERSION` and `SMCCC_ARCH_FEATURES` are
//!   answered by Warden; `SMCCC_ARCH_SOC_ID` and the CPU-erratum workarounds
//!   (`SMCCC_ARCH_WORKAROUND_1/2/3`, which pass no addresses) are forwarded.
//! - The vendor hypervisor service (OEN 6) is Warden's own ABI.
//! - Everything else (SiP, OEM, SDEI, FF-A, TRNG, Trusted OS, RMI, …) is refused with
//!   `NOT_SUPPORTED` unless the board's allowlist ([`SmcAllowList`], `warden.smc_allow=`)
//!   names it; refusals are logged, rate-limited ([`log_refusal`]).
//!
//! This module holds the pure part: function IDs, classification, the policy, the
//! `power_state` decoding, and the per-CPU power state machine that keeps CPU_ON honest.

use core::sync::atomic::{AtomicU8, Ordering};

/// PSCI function IDs (SMC32 and SMC64 forms where both exist), as PSCI 1.3 numbers them.
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
    /// CPU_FREEZE.
    pub const CPU_FREEZE: u32 = 0x8400_000B;
    /// CPU_DEFAULT_SUSPEND, SMC32.
    pub const CPU_DEFAULT_SUSPEND_32: u32 = 0x8400_000C;
    /// CPU_DEFAULT_SUSPEND, SMC64.
    pub const CPU_DEFAULT_SUSPEND_64: u32 = 0xC400_000C;
    /// SYSTEM_SUSPEND, SMC32.
    pub const SYSTEM_SUSPEND_32: u32 = 0x8400_000E;
    /// SYSTEM_SUSPEND, SMC64.
    pub const SYSTEM_SUSPEND_64: u32 = 0xC400_000E;
    /// SYSTEM_RESET2, SMC32.
    pub const SYSTEM_RESET2_32: u32 = 0x8400_0012;
    /// SYSTEM_RESET2, SMC64.
    pub const SYSTEM_RESET2_64: u32 = 0xC400_0012;
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

/// SMCCC function ID fields.
pub mod smccc {
    /// Bit 31: fast call (0 = yielding call).
    pub const FAST: u32 = 1 << 31;
    /// Bit 30: SMC64/HVC64 calling convention.
    pub const SMC64: u32 = 1 << 30;
    /// Bit 16: SMCCC 1.3's SVE hint ("no live SVE state"); not part of the function.
    pub const SVE_HINT: u32 = 1 << 16;
    /// Bits 23:17 of a fast call: must be zero.
    pub const RESERVED: u32 = 0x00FE_0000;
    /// Bits 29:24: the owning entity number (OEN).
    pub const fn oen(fid: u32) -> u32 {
        (fid >> 24) & 0x3f
    }
    /// OEN 0: Arm Architecture Service.
    pub const OEN_ARCH: u32 = 0;
    /// OEN 4: Standard Secure Service (PSCI, SDEI, TRNG, FF-A, …).
    pub const OEN_STD: u32 = 4;
    /// OEN 6: Vendor Specific Hypervisor Service (Warden's own ABI).
    pub const OEN_VENDOR_HYP: u32 = 6;
    /// `SMCCC_VERSION`.
    pub const VERSION: u32 = 0x8000_0000;
    /// `SMCCC_ARCH_FEATURES`.
    pub const ARCH_FEATURES: u32 = 0x8000_0001;
    /// `SMCCC_ARCH_SOC_ID`, SMC32.
    pub const ARCH_SOC_ID: u32 = 0x8000_0002;
    /// `SMCCC_ARCH_WORKAROUND_1` (Spectre v2).
    pub const ARCH_WORKAROUND_1: u32 = 0x8000_8000;
    /// `SMCCC_ARCH_WORKAROUND_2` (Spectre v4).
    pub const ARCH_WORKAROUND_2: u32 = 0x8000_7FFF;
    /// `SMCCC_ARCH_WORKAROUND_3` (Spectre-BHB).
    pub const ARCH_WORKAROUND_3: u32 = 0x8000_3FFF;
}

/// A function ID with the SVE hint cleared, or `None` for a fast call whose reserved
/// bits (23:17) are set: such an ID names no function, and firmware that ignores those
/// bits would read it as another call, so it is never forwarded.
pub const fn normalise(fid: u32) -> Option<u32> {
    if fid & smccc::FAST == 0 {
        // Yielding calls have no hint bit and a 16-bit function number.
        return Some(fid);
    }
    if fid & smccc::RESERVED != 0 {
        return None;
    }
    Some(fid & !smccc::SVE_HINT)
}

/// A PSCI function, by number (bits 4:0 of the function ID).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PsciFn {
    /// 0x00 PSCI_VERSION.
    Version,
    /// 0x01 CPU_SUSPEND.
    CpuSuspend,
    /// 0x02 CPU_OFF.
    CpuOff,
    /// 0x03 CPU_ON.
    CpuOn,
    /// 0x04 AFFINITY_INFO.
    AffinityInfo,
    /// 0x05 MIGRATE.
    Migrate,
    /// 0x06 MIGRATE_INFO_TYPE.
    MigrateInfoType,
    /// 0x07 MIGRATE_INFO_UP_CPU.
    MigrateInfoUpCpu,
    /// 0x08 SYSTEM_OFF.
    SystemOff,
    /// 0x09 SYSTEM_RESET.
    SystemReset,
    /// 0x0A PSCI_FEATURES.
    Features,
    /// 0x0B CPU_FREEZE.
    CpuFreeze,
    /// 0x0C CPU_DEFAULT_SUSPEND.
    CpuDefaultSuspend,
    /// 0x0D NODE_HW_STATE.
    NodeHwState,
    /// 0x0E SYSTEM_SUSPEND.
    SystemSuspend,
    /// 0x0F PSCI_SET_SUSPEND_MODE.
    SetSuspendMode,
    /// 0x10 PSCI_STAT_RESIDENCY.
    StatResidency,
    /// 0x11 PSCI_STAT_COUNT.
    StatCount,
    /// 0x12 SYSTEM_RESET2.
    SystemReset2,
    /// 0x13 MEM_PROTECT.
    MemProtect,
    /// 0x14 MEM_PROTECT_CHECK_RANGE.
    MemProtectCheckRange,
    /// 0x15 SYSTEM_OFF2.
    SystemOff2,
    /// 0x16–0x1F, or a function called in a form (SMC32/SMC64) PSCI does not define.
    Reserved,
}

impl PsciFn {
    /// The function numbered `n` (0–31) in the SMC64 form (`w64`) or the SMC32 form.
    pub const fn from_number(n: u32, w64: bool) -> Self {
        use PsciFn::*;
        let (f, has64) = match n {
            0x00 => (Version, false),
            0x01 => (CpuSuspend, true),
            0x02 => (CpuOff, false),
            0x03 => (CpuOn, true),
            0x04 => (AffinityInfo, true),
            0x05 => (Migrate, true),
            0x06 => (MigrateInfoType, false),
            0x07 => (MigrateInfoUpCpu, true),
            0x08 => (SystemOff, false),
            0x09 => (SystemReset, false),
            0x0A => (Features, false),
            0x0B => (CpuFreeze, false),
            0x0C => (CpuDefaultSuspend, true),
            0x0D => (NodeHwState, true),
            0x0E => (SystemSuspend, true),
            0x0F => (SetSuspendMode, false),
            0x10 => (StatResidency, true),
            0x11 => (StatCount, true),
            0x12 => (SystemReset2, true),
            0x13 => (MemProtect, false),
            0x14 => (MemProtectCheckRange, true),
            0x15 => (SystemOff2, true),
            _ => (Reserved, true),
        };
        if w64 && !has64 { Reserved } else { f }
    }
}

/// What a function ID is, before any policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// A PSCI function. `w64`: SMC64 form (64-bit arguments); `legacy`: one of the DTB's
    /// PSCI 0.1 IDs.
    Psci {
        /// The function.
        func: PsciFn,
        /// SMC64 form.
        w64: bool,
        /// A PSCI 0.1 ID from the DTB.
        legacy: bool,
    },
    /// `SMCCC_VERSION`.
    SmcccVersion,
    /// `SMCCC_ARCH_FEATURES`.
    ArchFeatures,
    /// `SMCCC_ARCH_SOC_ID` or an `SMCCC_ARCH_WORKAROUND_n`: no addresses, forwarded.
    ArchForward,
    /// Any other Arm Architecture Service call: not implemented.
    ArchOther,
    /// The vendor hypervisor service: Warden's own calls.
    VendorHyp,
    /// Anything else (normalised ID): forwarded only if the allowlist names it.
    Other(u32),
    /// A fast call with reserved bits set: never forwarded.
    Malformed,
}

/// The PSCI 0.1 function IDs of the DTB's `/psci` node (`cpu_on`, `cpu_off`,
/// `cpu_suspend`, `migrate`), which may differ from the standard ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LegacyIds {
    /// `cpu_on`.
    pub cpu_on: Option<u32>,
    /// `cpu_off`.
    pub cpu_off: Option<u32>,
    /// `cpu_suspend`.
    pub cpu_suspend: Option<u32>,
    /// `migrate`.
    pub migrate: Option<u32>,
}

impl LegacyIds {
    /// The function a DTB ID names (matched exactly, and for a fast call with the SVE hint
    /// cleared on both sides: firmware that follows SMCCC 1.3 ignores the hint whichever
    /// way the DTB's ID has it, so a call that differs from the ID only there is the same
    /// call).
    fn lookup(&self, fid: u32) -> Option<PsciFn> {
        let hint = |f: u32| f & !smccc::SVE_HINT;
        let hit = |v: Option<u32>| {
            v.is_some_and(|v| v == fid || (fid & smccc::FAST != 0 && hint(v) == hint(fid)))
        };
        if hit(self.cpu_on) {
            Some(PsciFn::CpuOn)
        } else if hit(self.cpu_off) {
            Some(PsciFn::CpuOff)
        } else if hit(self.cpu_suspend) {
            Some(PsciFn::CpuSuspend)
        } else if hit(self.migrate) {
            Some(PsciFn::Migrate)
        } else {
            None
        }
    }
}

/// Classifies a function ID: standard PSCI IDs (normalised), then the DTB's PSCI 0.1
/// IDs (which need not follow SMCCC), then the rest by owning entity.
pub fn classify(fid: u32, legacy: &LegacyIds) -> Call {
    let n = normalise(fid);
    if let Some(n) = n
        && n & smccc::FAST != 0
        && smccc::oen(n) == smccc::OEN_STD
        && n & 0xffff < 0x20
    {
        let w64 = n & smccc::SMC64 != 0;
        return Call::Psci {
            func: PsciFn::from_number(n & 0x1f, w64),
            w64,
            legacy: false,
        };
    }
    if let Some(func) = legacy.lookup(fid) {
        // PSCI 0.1 calls take native-width (64-bit) arguments on AArch64.
        return Call::Psci {
            func,
            w64: true,
            legacy: true,
        };
    }
    let Some(n) = n else {
        return Call::Malformed;
    };
    if n & smccc::FAST == 0 {
        return Call::Other(n);
    }
    match smccc::oen(n) {
        smccc::OEN_ARCH => match n {
            smccc::VERSION => Call::SmcccVersion,
            smccc::ARCH_FEATURES => Call::ArchFeatures,
            smccc::ARCH_SOC_ID
            | smccc::ARCH_WORKAROUND_1
            | smccc::ARCH_WORKAROUND_2
            | smccc::ARCH_WORKAROUND_3 => Call::ArchForward,
            _ => Call::ArchOther,
        },
        smccc::OEN_VENDOR_HYP => Call::VendorHyp,
        _ => Call::Other(n),
    }
}

/// The argument registers x1–x17 firmware gets for a call Warden forwards as
/// [`Action::Forward`]`(fid)`, from the host's. The Arm Architecture calls Warden forwards
/// take at most one argument, and one of them is not the host's to choose:
/// `SMCCC_ARCH_WORKAROUND_2` with x1 = 0 turns the Spectre-v4 mitigation off for the
/// whole non-secure world on firmware with a dynamic mitigation, Warden included, so
/// Warden always asks for it on (x1 = 1). `SMCCC_ARCH_SOC_ID` keeps its type (x1);
/// `WORKAROUND_1`/`_3` take none. Every unused register is zero. PSCI and allowlisted
/// calls are passed unchanged (PSCI's forwarded calls are informational or end the
/// system; an allowlisted call is the integrator's decision).
pub fn forward_args(fid: u32, host: &[u64; 17]) -> [u64; 17] {
    match fid {
        smccc::ARCH_WORKAROUND_1 | smccc::ARCH_WORKAROUND_3 => [0; 17],
        smccc::ARCH_WORKAROUND_2 => {
            let mut a = [0; 17];
            a[0] = 1;
            a
        }
        smccc::ARCH_SOC_ID => {
            let mut a = [0; 17];
            a[0] = host[0] & 0xffff_ffff;
            a
        }
        _ => *host,
    }
}

/// The SMC32 or SMC64 PSCI function ID of `func`.
pub const fn standard_id(func: PsciFn, w64: bool) -> Option<u32> {
    use PsciFn::*;
    let n = match func {
        Version => 0x00,
        CpuSuspend => 0x01,
        CpuOff => 0x02,
        CpuOn => 0x03,
        AffinityInfo => 0x04,
        Migrate => 0x05,
        MigrateInfoType => 0x06,
        MigrateInfoUpCpu => 0x07,
        SystemOff => 0x08,
        SystemReset => 0x09,
        Features => 0x0A,
        CpuFreeze => 0x0B,
        CpuDefaultSuspend => 0x0C,
        NodeHwState => 0x0D,
        SystemSuspend => 0x0E,
        SetSuspendMode => 0x0F,
        StatResidency => 0x10,
        StatCount => 0x11,
        SystemReset2 => 0x12,
        MemProtect => 0x13,
        MemProtectCheckRange => 0x14,
        SystemOff2 => 0x15,
        Reserved => return None,
    };
    // Functions without an SMC64 form are always called in their SMC32 form.
    let w64 = w64 && !matches!(PsciFn::from_number(n, true), Reserved);
    Some(0x8400_0000 | n | if w64 { smccc::SMC64 } else { 0 })
}

/// What Warden does with PSCI `func` (the table in docs/abi.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PsciPolicy {
    /// CPU_ON: through Warden's secondary entry.
    CpuOn,
    /// CPU_OFF: mark the CPU off, then forward.
    CpuOff,
    /// CPU_SUSPEND: standby states forwarded (resume through Warden's entry in case),
    /// power-down states refused.
    CpuSuspend,
    /// PSCI_FEATURES: answered from this table, asking firmware for what it forwards.
    Features,
    /// SYSTEM_RESET2: only the architectural warm reset (type 0) is forwarded.
    SystemReset2,
    /// Forwarded unchanged (no addresses, no power loss Warden does not see).
    Forward,
    /// Refused with this PSCI status.
    Refuse(i64),
}

/// The policy for each PSCI function.
pub const fn psci_policy(func: PsciFn) -> PsciPolicy {
    use PsciFn::*;
    match func {
        CpuOn => PsciPolicy::CpuOn,
        CpuOff => PsciPolicy::CpuOff,
        CpuSuspend => PsciPolicy::CpuSuspend,
        Features => PsciPolicy::Features,
        SystemReset2 => PsciPolicy::SystemReset2,
        Version | AffinityInfo | MigrateInfoType | MigrateInfoUpCpu | SystemOff | SystemReset
        | NodeHwState | StatResidency | StatCount | MemProtect | SystemOff2 => PsciPolicy::Forward,
        // MIGRATE moves the Trusted OS; CPU_FREEZE and CPU_DEFAULT_SUSPEND may lose the
        // CPU's context in a state Warden cannot see; SYSTEM_SUSPEND loses the SMMUs';
        // SET_SUSPEND_MODE (OS-initiated mode) is not needed in platform-coordinated mode;
        // MEM_PROTECT_CHECK_RANGE takes a host-chosen physical range.
        Migrate | CpuFreeze | CpuDefaultSuspend | SystemSuspend | SetSuspendMode
        | MemProtectCheckRange | Reserved => PsciPolicy::Refuse(ret::NOT_SUPPORTED),
    }
}

/// `CPU_SUSPEND`'s `power_state` format, from `PSCI_FEATURES(CPU_SUSPEND)` bit 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SuspendFormat {
    /// PSCI 0.2 format: StateID 15:0, StateType bit 16, PowerLevel 25:24.
    Original,
    /// PSCI 1.0 extended format: StateID 27:0, StateType bit 30.
    Extended,
}

impl SuspendFormat {
    /// The format firmware uses, from its `PSCI_FEATURES(CPU_SUSPEND)` result (a negative
    /// result, or firmware older than 1.0, means the original format).
    pub const fn from_features(features: i64) -> Self {
        if features >= 0 && features & 2 != 0 {
            Self::Extended
        } else {
            Self::Original
        }
    }
}

/// A decoded `power_state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateKind {
    /// Standby or retention: the CPU keeps its context.
    Standby,
    /// Power-down: the CPU (and maybe more) loses its context.
    PowerDown,
    /// Reserved bits set.
    Invalid,
}

/// Decodes the low 32 bits of `power_state` (the parameter is 32 bits wide in both
/// forms) in firmware's format.
pub const fn decode_power_state(power_state: u64, fmt: SuspendFormat) -> StateKind {
    let ps = power_state as u32;
    let (valid, ty) = match fmt {
        SuspendFormat::Original => (0x0301_ffff, 1 << 16),
        SuspendFormat::Extended => (0x4fff_ffff, 1 << 30),
    };
    if ps & !valid != 0 {
        StateKind::Invalid
    } else if ps & ty != 0 {
        StateKind::PowerDown
    } else {
        StateKind::Standby
    }
}

/// The status CPU_SUSPEND returns for a `power_state` Warden does not forward: a
/// power-down state is one Warden does not support (the SMMUs would lose their state),
/// which PSCI reports as INVALID_PARAMETERS in platform-coordinated mode (DENIED is for
/// OS-initiated mode's coordination failures); reserved bits set are invalid too.
pub const fn suspend_refusal(kind: StateKind) -> Option<i64> {
    match kind {
        StateKind::Standby => None,
        StateKind::PowerDown | StateKind::Invalid => Some(ret::INVALID_PARAMETERS),
    }
}

/// At most this many allowlist entries.
pub const MAX_SMC_ALLOW: usize = 8;

/// Function IDs the board allows Warden to forward to firmware unchanged
/// (`warden.smc_allow=`): inclusive ranges of normalised IDs. Empty by default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SmcAllowList {
    ranges: [(u32, u32); MAX_SMC_ALLOW],
    len: usize,
}

impl SmcAllowList {
    /// The empty list.
    pub const EMPTY: Self = Self {
        ranges: [(0, 0); MAX_SMC_ALLOW],
        len: 0,
    };

    /// Adds `first..=last`; `Err` when full or `first > last`.
    pub fn push(&mut self, first: u32, last: u32) -> Result<(), &'static str> {
        if first > last {
            return Err("range ends before it starts");
        }
        let slot = self.ranges.get_mut(self.len).ok_or("more than 8 entries")?;
        *slot = (first, last);
        self.len += 1;
        Ok(())
    }

    /// The ranges.
    pub fn ranges(&self) -> &[(u32, u32)] {
        &self.ranges[..self.len]
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `fid` (normalised) is allowed.
    pub fn allows(&self, fid: u32) -> bool {
        self.ranges().iter().any(|&(a, b)| (a..=b).contains(&fid))
    }
}

/// The firmware function IDs Warden itself uses for CPU_ON/CPU_OFF/CPU_SUSPEND: the
/// standard SMC64/SMC32 ones, or the DTB's PSCI 0.1 IDs for firmware that has no other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FirmwareIds {
    /// CPU_ON.
    pub cpu_on: Option<u32>,
    /// CPU_OFF.
    pub cpu_off: Option<u32>,
    /// CPU_SUSPEND.
    pub cpu_suspend: Option<u32>,
}

impl FirmwareIds {
    /// The standard PSCI 0.2+ IDs.
    pub const STANDARD: Self = Self {
        cpu_on: Some(id::CPU_ON_64),
        cpu_off: Some(id::CPU_OFF),
        cpu_suspend: Some(id::CPU_SUSPEND_64),
    };
}

/// What Warden does with one call from the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// CPU_ON through Warden's secondary entry: firmware's `fw_id`; SMC32 arguments are
    /// 32 bits wide (`w64` false).
    CpuOn {
        /// Firmware's CPU_ON ID.
        fw_id: u32,
        /// SMC64 arguments.
        w64: bool,
    },
    /// CPU_OFF with firmware's `fw_id`.
    CpuOff {
        /// Firmware's CPU_OFF ID.
        fw_id: u32,
    },
    /// CPU_SUSPEND: decode `power_state` ([`Policy::suspend`]), forward standby with
    /// firmware's `fw_id`.
    CpuSuspend {
        /// Firmware's CPU_SUSPEND ID.
        fw_id: u32,
        /// SMC64 arguments.
        w64: bool,
    },
    /// PSCI_FEATURES: see [`Policy::psci_features`].
    PsciFeatures,
    /// SYSTEM_RESET2 with this ID: forwarded for reset type 0 only.
    SystemReset2(u32),
    /// Forward to firmware over SMC with x0 = this ID (normalised) and the host's other
    /// registers.
    Forward(u32),
    /// `SMCCC_VERSION`.
    SmcccVersion,
    /// `SMCCC_ARCH_FEATURES`: see [`Policy::arch_features`].
    ArchFeatures,
    /// Warden's own ABI.
    VendorHyp,
    /// Refused with this status, without logging (a defined part of the interface).
    Refuse(i64),
    /// Refused with NOT_SUPPORTED and logged (rate-limited): not PSCI, not Warden's, not
    /// allowlisted.
    Deny,
}

/// How to answer a feature query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeatureAnswer {
    /// Answer this.
    Value(i64),
    /// Ask firmware the same query about `fid`, and clear `clear` in a non-negative
    /// answer.
    AskFirmware {
        /// The ID to ask about.
        fid: u32,
        /// Feature bits Warden does not pass on.
        clear: i64,
    },
}

/// The firmware-call policy, fixed at boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// The DTB's PSCI 0.1 IDs.
    pub legacy: LegacyIds,
    /// Firmware IDs Warden uses.
    pub fw: FirmwareIds,
    /// Firmware's `power_state` format.
    pub suspend_format: SuspendFormat,
    /// The board's allowlist.
    pub allow: SmcAllowList,
    /// An SMC from EL2 reaches firmware: EL3 is implemented, or the DTB's PSCI conduit is
    /// SMC (an emulator's PSCI). Without either an SMC at EL2 is UNDEFINED, so nothing is
    /// forwarded and every call that needs firmware is refused.
    pub smc: bool,
}

impl Policy {
    /// A policy for PSCI 0.2+ firmware with the original `power_state` format and an
    /// empty allowlist.
    pub const DEFAULT: Self = Self {
        legacy: LegacyIds {
            cpu_on: None,
            cpu_off: None,
            cpu_suspend: None,
            migrate: None,
        },
        fw: FirmwareIds::STANDARD,
        suspend_format: SuspendFormat::Original,
        allow: SmcAllowList::EMPTY,
        smc: true,
    };

    /// The policy for the DTB's `/psci` node and the board's allowlist, before firmware is
    /// asked anything: the node's PSCI 0.1 IDs are intercepted; firmware that claims only
    /// `arm,psci` (0.1) is driven with those IDs, newer firmware with the standard ones.
    /// The caller fills in [`Policy::suspend_format`] from firmware.
    pub fn for_platform(node: Option<&crate::dtb::Psci>, allow: SmcAllowList) -> Self {
        let mut p = Self {
            allow,
            ..Self::DEFAULT
        };
        if let Some(n) = node {
            p.legacy = LegacyIds {
                cpu_on: n.cpu_on,
                cpu_off: n.cpu_off,
                cpu_suspend: n.cpu_suspend,
                migrate: n.migrate,
            };
            if n.version == crate::dtb::PsciVersion::V0_1 {
                p.fw = FirmwareIds {
                    cpu_on: n.cpu_on,
                    cpu_off: n.cpu_off,
                    cpu_suspend: n.cpu_suspend,
                };
            }
        }
        p
    }

    /// The action for the call `fid` the host made over SMC (`smc`) or HVC.
    pub fn decide(&self, fid: u32, smc: bool) -> Action {
        let a = self.decide_any(fid, smc);
        match a {
            Action::CpuOn { .. }
            | Action::CpuOff { .. }
            | Action::CpuSuspend { .. }
            | Action::SystemReset2(_)
            | Action::Forward(_)
                if !self.smc =>
            {
                Action::Refuse(ret::NOT_SUPPORTED)
            }
            a => a,
        }
    }

    fn decide_any(&self, fid: u32, smc: bool) -> Action {
        let not_sup = Action::Refuse(ret::NOT_SUPPORTED);
        match classify(fid, &self.legacy) {
            Call::Psci { func, w64, .. } => match psci_policy(func) {
                PsciPolicy::CpuOn => match self.fw.cpu_on {
                    Some(fw_id) => Action::CpuOn { fw_id, w64 },
                    None => not_sup,
                },
                PsciPolicy::CpuOff => match self.fw.cpu_off {
                    Some(fw_id) => Action::CpuOff { fw_id },
                    None => not_sup,
                },
                PsciPolicy::CpuSuspend => match self.fw.cpu_suspend {
                    Some(fw_id) => Action::CpuSuspend { fw_id, w64 },
                    None => not_sup,
                },
                PsciPolicy::Features => Action::PsciFeatures,
                PsciPolicy::SystemReset2 => match standard_id(func, w64) {
                    Some(id) => Action::SystemReset2(id),
                    None => not_sup,
                },
                PsciPolicy::Forward => match standard_id(func, w64) {
                    Some(id) => Action::Forward(id),
                    None => not_sup,
                },
                PsciPolicy::Refuse(e) => Action::Refuse(e),
            },
            Call::SmcccVersion => Action::SmcccVersion,
            Call::ArchFeatures => Action::ArchFeatures,
            Call::ArchForward => match normalise(fid) {
                Some(n) => Action::Forward(n),
                None => not_sup,
            },
            Call::ArchOther => not_sup,
            Call::VendorHyp => Action::VendorHyp,
            Call::Other(n) if smc && self.allow.allows(n) => Action::Forward(n),
            Call::Other(_) | Call::Malformed => Action::Deny,
        }
    }

    /// `PSCI_FEATURES(queried)`: NOT_SUPPORTED for everything Warden refuses, firmware's
    /// answer for what it forwards or implements through firmware (CPU_SUSPEND without
    /// the OS-initiated mode bit, since SET_SUSPEND_MODE is refused), 0 for
    /// `SMCCC_VERSION` (PSCI 1.0 requires it).
    pub fn psci_features(&self, queried: u32) -> FeatureAnswer {
        let none = FeatureAnswer::Value(ret::NOT_SUPPORTED);
        if !self.smc && queried != smccc::VERSION {
            return none;
        }
        match classify(queried, &self.legacy) {
            Call::SmcccVersion => FeatureAnswer::Value(0),
            Call::Psci { func, w64, .. } => {
                let Some(std) = standard_id(func, w64) else {
                    return none;
                };
                let ask = |clear| FeatureAnswer::AskFirmware { fid: std, clear };
                match psci_policy(func) {
                    PsciPolicy::CpuOn if self.fw.cpu_on.is_some() => ask(0),
                    PsciPolicy::CpuOff if self.fw.cpu_off.is_some() => ask(0),
                    PsciPolicy::CpuSuspend if self.fw.cpu_suspend.is_some() => ask(1),
                    PsciPolicy::Features | PsciPolicy::SystemReset2 | PsciPolicy::Forward => ask(0),
                    _ => none,
                }
            }
            _ => none,
        }
    }

    /// `SMCCC_ARCH_FEATURES(queried)`: 0 for the two calls Warden implements, firmware's
    /// answer for the calls it forwards (the erratum workarounds: the host must not
    /// believe a mitigation is there when it is not), NOT_SUPPORTED otherwise.
    pub fn arch_features(&self, queried: u32) -> FeatureAnswer {
        match classify(queried, &LegacyIds::default()) {
            Call::SmcccVersion | Call::ArchFeatures => FeatureAnswer::Value(0),
            Call::ArchForward if self.smc => match normalise(queried) {
                Some(fid) => FeatureAnswer::AskFirmware { fid, clear: 0 },
                None => FeatureAnswer::Value(ret::NOT_SUPPORTED),
            },
            _ => FeatureAnswer::Value(ret::NOT_SUPPORTED),
        }
    }

    /// Whether CPU_SUSPEND with `power_state` may be forwarded: `Err(status)` otherwise.
    pub fn suspend(&self, power_state: u64) -> Result<(), i64> {
        match suspend_refusal(decode_power_state(power_state, self.suspend_format)) {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }
}

/// SYSTEM_RESET2's reset type that is forwarded: the architectural warm reset (bit 31
/// clear, type 0), whose cookie firmware ignores. Vendor reset types (bit 31 set) may
/// interpret the cookie as an address.
pub const fn system_reset2_allowed(reset_type: u64) -> bool {
    reset_type as u32 == 0
}

/// Whether the `n`-th refusal (counting from 0) is logged: the first 16, then every
/// power of two, so a host that loops on a refused call cannot flood the console.
pub const fn log_refusal(n: u32) -> bool {
    n < 16 || n.is_power_of_two()
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

/// CPU_ON's `target_cpu` as Warden looks it up and passes it on: PSCI requires bits
/// 63:40 and 31:24 to be zero, and a target with any of them set is refused with
/// INVALID_PARAMETERS rather than masked, so that firmware (which may read those bits
/// its own way) is never asked to start a CPU other than the one Warden prepared.
pub const fn cpu_on_target(target: u64) -> Result<u64, i64> {
    if target & !MPIDR_AFF_MASK != 0 {
        Err(ret::INVALID_PARAMETERS)
    } else {
        Ok(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HINT: u32 = smccc::SVE_HINT;

    fn pol() -> Policy {
        Policy::DEFAULT
    }

    #[test]
    fn normalisation_clears_the_sve_hint_and_rejects_reserved_bits() {
        assert_eq!(normalise(0xC401_0003), Some(id::CPU_ON_64));
        assert_eq!(normalise(id::CPU_ON_64), Some(id::CPU_ON_64));
        for bit in 17..24 {
            assert_eq!(normalise(id::CPU_ON_64 | 1 << bit), None, "bit {bit}");
        }
        // Yielding calls keep all bits.
        assert_eq!(normalise(0x3200_0001 | HINT), Some(0x3201_0001));
    }

    #[test]
    fn cpu_on_suspend_and_system_suspend_with_the_hint_are_intercepted() {
        let p = pol();
        for (fid, w64) in [(id::CPU_ON_64, true), (id::CPU_ON_32, false)] {
            for f in [fid, fid | HINT] {
                assert_eq!(
                    p.decide(f, true),
                    Action::CpuOn {
                        fw_id: id::CPU_ON_64,
                        w64
                    },
                    "{f:#x}"
                );
                // Over HVC too.
                assert!(matches!(p.decide(f, false), Action::CpuOn { .. }));
            }
        }
        for (fid, w64) in [(id::CPU_SUSPEND_64, true), (id::CPU_SUSPEND_32, false)] {
            for f in [fid, fid | HINT] {
                assert_eq!(
                    p.decide(f, true),
                    Action::CpuSuspend {
                        fw_id: id::CPU_SUSPEND_64,
                        w64
                    }
                );
            }
        }
        for f in [
            id::SYSTEM_SUSPEND_32,
            id::SYSTEM_SUSPEND_64,
            id::SYSTEM_SUSPEND_32 | HINT,
            id::SYSTEM_SUSPEND_64 | HINT,
        ] {
            assert_eq!(p.decide(f, true), Action::Refuse(ret::NOT_SUPPORTED));
        }
        assert_eq!(
            p.decide(id::CPU_OFF | HINT, true),
            Action::CpuOff { fw_id: id::CPU_OFF }
        );
        // Reserved bits: never forwarded, even if firmware would ignore them.
        assert_eq!(p.decide(id::CPU_ON_64 | 1 << 20, true), Action::Deny);
    }

    #[test]
    fn every_psci_function_number_is_intercepted() {
        let p = pol();
        for n in 0..0x20u32 {
            for base in [0x8400_0000u32, 0xC400_0000] {
                for f in [base | n, base | n | HINT] {
                    let a = p.decide(f, true);
                    assert!(
                        !matches!(a, Action::Deny),
                        "{f:#x} reached the allowlist check"
                    );
                    if let Action::Forward(to) = a {
                        // Forwarded PSCI calls are the informational ones, normalised.
                        assert_eq!(to, base | n, "{f:#x}");
                        let func = PsciFn::from_number(n, base & smccc::SMC64 != 0);
                        assert_eq!(psci_policy(func), PsciPolicy::Forward, "{f:#x}");
                    }
                }
            }
        }
        // The refused ones.
        for f in [
            0x8400_0005u32, // MIGRATE
            0xC400_0005,
            id::CPU_FREEZE,
            id::CPU_DEFAULT_SUSPEND_32,
            id::CPU_DEFAULT_SUSPEND_64,
            0x8400_000F, // SET_SUSPEND_MODE
            0x8400_0014, // MEM_PROTECT_CHECK_RANGE
            0xC400_0014,
            0x8400_0016, // reserved
            0x8400_001F,
            0xC400_0002, // CPU_OFF has no SMC64 form
            0xC400_0008, // nor SYSTEM_OFF
        ] {
            assert_eq!(
                p.decide(f, true),
                Action::Refuse(ret::NOT_SUPPORTED),
                "{f:#x}"
            );
        }
        for (f, to) in [
            (id::VERSION, id::VERSION),
            (id::AFFINITY_INFO_64 | HINT, id::AFFINITY_INFO_64),
            (id::AFFINITY_INFO_32, id::AFFINITY_INFO_32),
            (id::SYSTEM_OFF, id::SYSTEM_OFF),
            (id::SYSTEM_RESET, id::SYSTEM_RESET),
            (id::MIGRATE_INFO_TYPE, id::MIGRATE_INFO_TYPE),
            (0xC400_0010, 0xC400_0010), // PSCI_STAT_RESIDENCY
            (0x8400_0013, 0x8400_0013), // MEM_PROTECT
        ] {
            assert_eq!(p.decide(f, true), Action::Forward(to), "{f:#x}");
        }
        assert_eq!(
            p.decide(id::SYSTEM_RESET2_64 | HINT, true),
            Action::SystemReset2(id::SYSTEM_RESET2_64)
        );
        assert!(system_reset2_allowed(0));
        assert!(system_reset2_allowed(0xffff_ffff_0000_0000));
        assert!(!system_reset2_allowed(0x8000_0000));
        assert!(!system_reset2_allowed(1));
        assert_eq!(p.decide(id::FEATURES, true), Action::PsciFeatures);
    }

    #[test]
    fn psci_0_1_ids_from_the_dtb() {
        let mut p = pol();
        p.legacy = LegacyIds {
            cpu_on: Some(0x95c1_ba5f),
            cpu_off: Some(0x95c1_ba5e),
            cpu_suspend: Some(0x95c1_ba5c),
            migrate: Some(0x95c1_ba5d),
        };
        p.fw = FirmwareIds {
            cpu_on: Some(0x95c1_ba5f),
            cpu_off: Some(0x95c1_ba5e),
            cpu_suspend: Some(0x95c1_ba5c),
        };
        // These IDs have reserved bits set: without the DTB they would be malformed.
        assert_eq!(
            p.decide(0x95c1_ba5f, true),
            Action::CpuOn {
                fw_id: 0x95c1_ba5f,
                w64: true
            }
        );
        assert_eq!(
            p.decide(0x95c1_ba5e, true),
            Action::CpuOff { fw_id: 0x95c1_ba5e }
        );
        assert_eq!(
            p.decide(0x95c1_ba5c, true),
            Action::CpuSuspend {
                fw_id: 0x95c1_ba5c,
                w64: true
            }
        );
        assert_eq!(
            p.decide(0x95c1_ba5d, true),
            Action::Refuse(ret::NOT_SUPPORTED)
        );
        assert_eq!(Policy::DEFAULT.decide(0x95c1_ba5f, true), Action::Deny);
        // QEMU's node repeats the standard IDs: same result either way.
        let mut q = pol();
        q.legacy = LegacyIds {
            cpu_on: Some(id::CPU_ON_64),
            cpu_off: Some(id::CPU_OFF),
            cpu_suspend: Some(id::CPU_SUSPEND_64),
            migrate: Some(0xC400_0005),
        };
        assert_eq!(
            q.decide(id::CPU_ON_64 | HINT, true),
            Action::CpuOn {
                fw_id: id::CPU_ON_64,
                w64: true
            }
        );
        assert_eq!(
            q.decide(0xC400_0005, true),
            Action::Refuse(ret::NOT_SUPPORTED)
        );
        // A PSCI 0.1-only firmware without cpu_on: CPU_ON cannot be served.
        let mut r = pol();
        r.fw.cpu_on = None;
        assert_eq!(
            r.decide(id::CPU_ON_64, true),
            Action::Refuse(ret::NOT_SUPPORTED)
        );
    }

    #[test]
    fn policy_from_the_dtbs() {
        use crate::dtb::{Platform, Psci, PsciMethod, PsciVersion};
        for blob in [
            &include_bytes!("../testdata/virt-gicv3.dtb")[..],
            &include_bytes!("../testdata/virt-gicv2.dtb")[..],
        ] {
            let plat = Platform::parse(blob).unwrap();
            let p = Policy::for_platform(plat.psci.as_ref(), SmcAllowList::EMPTY);
            // QEMU's node names the 0.1 IDs (the standard ones again); standard IDs are
            // used towards firmware.
            assert_eq!(p.legacy.cpu_on, Some(id::CPU_ON_64));
            assert_eq!(p.fw, FirmwareIds::STANDARD);
            assert_eq!(
                p.decide(id::CPU_ON_64 | HINT, true),
                Action::CpuOn {
                    fw_id: id::CPU_ON_64,
                    w64: true
                }
            );
            assert_eq!(
                p.decide(0xC400_0005, true),
                Action::Refuse(ret::NOT_SUPPORTED)
            );
            assert_eq!(p.decide(0xC200_0000, true), Action::Deny);
        }
        // PSCI 0.1-only firmware with IDs of its own: intercepted and used.
        let node = Psci {
            version: PsciVersion::V0_1,
            method: PsciMethod::Smc,
            cpu_on: Some(0x9500_0003),
            cpu_off: Some(0x9500_0002),
            cpu_suspend: None,
            migrate: Some(0x9500_0005),
        };
        let mut allow = SmcAllowList::EMPTY;
        allow.push(0x9500_0000, 0x9500_00ff).unwrap();
        let p = Policy::for_platform(Some(&node), allow);
        assert_eq!(
            p.decide(0x9500_0003, true),
            Action::CpuOn {
                fw_id: 0x9500_0003,
                w64: true
            },
            "intercepted even though the allowlist names it"
        );
        assert_eq!(
            p.decide(0x9501_0002, true),
            Action::CpuOff { fw_id: 0x9500_0002 }
        );
        assert_eq!(
            p.decide(0x9500_0005, true),
            Action::Refuse(ret::NOT_SUPPORTED)
        );
        assert_eq!(p.decide(0x9500_0004, true), Action::Forward(0x9500_0004));
        // A DTB ID with the SVE hint bit set: the call without it is the same call to
        // firmware that ignores the hint, and must not reach the allowlist.
        let mut hinted = node;
        hinted.cpu_on = Some(0x9501_0003);
        let p = Policy::for_platform(Some(&hinted), allow);
        for f in [0x9501_0003, 0x9500_0003] {
            assert_eq!(
                p.decide(f, true),
                Action::CpuOn {
                    fw_id: 0x9501_0003,
                    w64: true
                },
                "{f:#x}"
            );
        }
        let p = Policy::for_platform(Some(&node), allow);
        // No cpu_suspend ID: CPU_SUSPEND cannot be served (standard IDs mean nothing to
        // this firmware).
        assert_eq!(
            p.decide(id::CPU_SUSPEND_64, true),
            Action::Refuse(ret::NOT_SUPPORTED)
        );
        assert_eq!(
            p.decide(id::CPU_ON_64, true),
            Action::CpuOn {
                fw_id: 0x9500_0003,
                w64: true
            }
        );
        assert_eq!(
            p.psci_features(id::CPU_SUSPEND_64),
            FeatureAnswer::Value(ret::NOT_SUPPORTED)
        );
    }

    #[test]
    fn other_services_are_denied_unless_allowlisted() {
        let mut p = pol();
        for f in [
            0x8200_0000u32, // SiP
            0xC200_0001,
            0x8300_0000, // OEM
            0xC400_0020, // SDEI
            0x8400_0050, // TRNG
            0x8400_0060, // FF-A
            0xC400_0060,
            0xC400_0150, // RMI
            0xB200_0000, // Trusted OS
            0xBF00_FF01,
            0x3200_0000, // yielding (OP-TEE standard call)
            0x8501_0000, // reserved bits set
        ] {
            assert_eq!(p.decide(f, true), Action::Deny, "{f:#x}");
            assert_eq!(p.decide(f, false), Action::Deny, "{f:#x}");
        }
        p.allow.push(0x8200_0001, 0x8200_0001).unwrap();
        p.allow.push(0xC200_0000, 0xC200_FFFF).unwrap();
        assert_eq!(p.decide(0x8200_0001, true), Action::Forward(0x8200_0001));
        assert_eq!(p.decide(0x8201_0001, true), Action::Forward(0x8200_0001));
        assert_eq!(p.decide(0xC200_1234, true), Action::Forward(0xC200_1234));
        assert_eq!(p.decide(0x8200_0002, true), Action::Deny);
        assert_eq!(p.decide(0xC201_0000, true), Action::Forward(0xC200_0000));
        // Firmware is reached by SMC: an allowlisted HVC is not forwarded.
        assert_eq!(p.decide(0x8200_0001, false), Action::Deny);
        // The allowlist cannot open what Warden intercepts.
        p.allow.push(0x8400_0000, 0xC4FF_FFFF).unwrap();
        assert_eq!(
            p.decide(id::SYSTEM_SUSPEND_64, true),
            Action::Refuse(ret::NOT_SUPPORTED)
        );
        assert_eq!(p.decide(0x8401_0000, true), Action::Forward(id::VERSION));
        assert!(matches!(p.decide(0xC600_0001, true), Action::VendorHyp));
    }

    #[test]
    fn arch_service() {
        let p = pol();
        assert_eq!(p.decide(smccc::VERSION, true), Action::SmcccVersion);
        assert_eq!(p.decide(smccc::ARCH_FEATURES, false), Action::ArchFeatures);
        for f in [
            smccc::ARCH_WORKAROUND_1,
            smccc::ARCH_WORKAROUND_2,
            smccc::ARCH_WORKAROUND_3,
            smccc::ARCH_SOC_ID,
        ] {
            assert_eq!(p.decide(f, true), Action::Forward(f));
            assert_eq!(p.decide(f | HINT, true), Action::Forward(f));
            assert_eq!(
                p.arch_features(f),
                FeatureAnswer::AskFirmware { fid: f, clear: 0 }
            );
        }
        assert_eq!(
            p.decide(0x8000_00FF, true),
            Action::Refuse(ret::NOT_SUPPORTED)
        );
        assert_eq!(p.arch_features(smccc::VERSION), FeatureAnswer::Value(0));
        assert_eq!(
            p.arch_features(smccc::ARCH_FEATURES),
            FeatureAnswer::Value(0)
        );
        for q in [0x8000_00FFu32, 0xC200_0000, id::CPU_ON_64, 0xC600_0000] {
            assert_eq!(
                p.arch_features(q),
                FeatureAnswer::Value(ret::NOT_SUPPORTED),
                "{q:#x}"
            );
        }
    }

    #[test]
    fn psci_features_reports_refused_calls_unsupported() {
        let p = pol();
        let ns = FeatureAnswer::Value(ret::NOT_SUPPORTED);
        for q in [
            id::SYSTEM_SUSPEND_64,
            id::SYSTEM_SUSPEND_32,
            id::SYSTEM_SUSPEND_64 | HINT,
            id::CPU_DEFAULT_SUSPEND_64,
            id::CPU_FREEZE,
            0x8400_000F,
            0xC400_0014,
            0xC400_0005,
            0xC200_0000,
            0x8400_0050,
            0xC600_0000,
        ] {
            assert_eq!(p.psci_features(q), ns, "{q:#x}");
        }
        assert_eq!(p.psci_features(smccc::VERSION), FeatureAnswer::Value(0));
        assert_eq!(
            p.psci_features(id::CPU_SUSPEND_64 | HINT),
            FeatureAnswer::AskFirmware {
                fid: id::CPU_SUSPEND_64,
                clear: 1
            }
        );
        assert_eq!(
            p.psci_features(id::CPU_ON_32),
            FeatureAnswer::AskFirmware {
                fid: id::CPU_ON_32,
                clear: 0
            }
        );
        assert_eq!(
            p.psci_features(id::FEATURES),
            FeatureAnswer::AskFirmware {
                fid: id::FEATURES,
                clear: 0
            }
        );
    }

    #[test]
    fn power_state_decoding() {
        use StateKind::*;
        use SuspendFormat::*;
        assert_eq!(SuspendFormat::from_features(0), Original);
        assert_eq!(SuspendFormat::from_features(2), Extended);
        assert_eq!(SuspendFormat::from_features(3), Extended);
        assert_eq!(SuspendFormat::from_features(1), Original);
        assert_eq!(SuspendFormat::from_features(-1), Original);
        for (ps, orig, ext) in [
            (0u64, Standby, Standby),
            (0x0000_ffff, Standby, Standby),
            (0x0001_0000, PowerDown, Standby),
            (0x0101_0000, PowerDown, Standby), // cluster power-down, original
            (0x0100_0000, Standby, Standby),   // cluster retention, original
            (0x4000_0000, Invalid, PowerDown),
            (0x4000_0001, Invalid, PowerDown),
            (0x0fff_ffff, Invalid, Standby),
            (0x0002_0000, Invalid, Standby),
            (0x8000_0000, Invalid, Invalid),
            (0x1000_0000, Invalid, Invalid),
            // Only the 32-bit parameter counts.
            (0xffff_ffff_0000_0000, Standby, Standby),
            (0x1_0001_0000, PowerDown, Standby),
        ] {
            assert_eq!(decode_power_state(ps, Original), orig, "{ps:#x} original");
            assert_eq!(decode_power_state(ps, Extended), ext, "{ps:#x} extended");
        }
        let mut p = pol();
        assert_eq!(p.suspend(0), Ok(()));
        assert_eq!(p.suspend(0x1_0000), Err(ret::INVALID_PARAMETERS));
        p.suspend_format = Extended;
        assert_eq!(p.suspend(0x1_0000), Ok(()));
        assert_eq!(p.suspend(0x4000_0000), Err(ret::INVALID_PARAMETERS));
    }

    #[test]
    fn allowlist_limits() {
        let mut l = SmcAllowList::default();
        assert!(l.is_empty());
        assert!(!l.allows(0));
        assert!(l.push(2, 1).is_err());
        for i in 0..MAX_SMC_ALLOW as u32 {
            l.push(i * 10, i * 10 + 1).unwrap();
        }
        assert!(l.push(100, 100).is_err());
        assert_eq!(l.ranges().len(), MAX_SMC_ALLOW);
        assert!(l.allows(71) && !l.allows(72));
    }

    #[test]
    fn refusal_logging_is_rate_limited() {
        let logged = (0..100_000u32).filter(|&n| log_refusal(n)).count();
        assert!(logged < 40, "{logged}");
        assert!(log_refusal(0) && log_refusal(15) && !log_refusal(17) && log_refusal(1024));
    }

    #[test]
    fn standard_ids() {
        assert_eq!(standard_id(PsciFn::CpuOff, true), Some(id::CPU_OFF));
        assert_eq!(standard_id(PsciFn::CpuOn, false), Some(id::CPU_ON_32));
        assert_eq!(standard_id(PsciFn::Reserved, false), None);
        for n in 0..0x16 {
            for w in [false, true] {
                let f = PsciFn::from_number(n, w);
                if f != PsciFn::Reserved {
                    let id = standard_id(f, w).unwrap();
                    assert_eq!(id & 0x1f, n);
                    assert_eq!(id & smccc::SMC64 != 0, w);
                }
            }
        }
    }

    #[test]
    fn without_a_way_to_firmware_nothing_issues_an_smc() {
        let mut p = pol();
        p.smc = false;
        p.allow.push(0xC200_0000, 0xC200_FFFF).unwrap();
        for base in [0x8400_0000u32, 0xC400_0000, 0x8000_0000, 0xC200_0000] {
            for n in 0..0x10000u32 {
                let f = base | n;
                let a = p.decide(f, true);
                assert!(
                    !matches!(
                        a,
                        Action::CpuOn { .. }
                            | Action::CpuOff { .. }
                            | Action::CpuSuspend { .. }
                            | Action::SystemReset2(_)
                            | Action::Forward(_)
                    ),
                    "{f:#x}: {a:?}"
                );
                assert!(
                    !matches!(p.psci_features(f), FeatureAnswer::AskFirmware { .. }),
                    "{f:#x}"
                );
                assert!(
                    !matches!(p.arch_features(f), FeatureAnswer::AskFirmware { .. }),
                    "{f:#x}"
                );
            }
        }
        assert_eq!(p.decide(smccc::VERSION, true), Action::SmcccVersion);
        assert_eq!(p.decide(id::FEATURES, true), Action::PsciFeatures);
        assert_eq!(p.psci_features(smccc::VERSION), FeatureAnswer::Value(0));
        assert!(matches!(p.decide(0xC600_0001, false), Action::VendorHyp));
        // The same policy with firmware reachable forwards.
        p.smc = true;
        assert_eq!(p.decide(id::VERSION, true), Action::Forward(id::VERSION));
    }

    #[test]
    fn cpu_on_target_must_be_an_affinity() {
        for t in [0, 1, 0x100, 0xff_00ff_ffff, 0x1_0000_0203] {
            assert_eq!(cpu_on_target(t), Ok(t), "{t:#x}");
        }
        for t in [1 << 24, 1 << 30, 1 << 31 | 1, 1 << 40, 1 << 63 | 0x100] {
            assert_eq!(cpu_on_target(t), Err(ret::INVALID_PARAMETERS), "{t:#x}");
        }
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

    #[test]
    fn forwarded_arch_calls_get_only_their_arguments_and_keep_ssbd_on() {
        let mut host = [0xdead_beef_u64; 17];
        host[0] = 0;
        // The host asks firmware to turn the Spectre-v4 mitigation off: firmware is
        // asked to keep it on (it covers Warden too).
        let a = forward_args(smccc::ARCH_WORKAROUND_2, &host);
        assert_eq!(a[0], 1);
        assert!(a[1..].iter().all(|&x| x == 0));
        for f in [smccc::ARCH_WORKAROUND_1, smccc::ARCH_WORKAROUND_3] {
            assert_eq!(forward_args(f, &host), [0; 17]);
        }
        host[0] = 1;
        let a = forward_args(smccc::ARCH_SOC_ID, &host);
        assert_eq!(a[0], 1);
        assert!(a[1..].iter().all(|&x| x == 0));
        // Everything else (PSCI, the allowlist) is passed as the host gave it.
        assert_eq!(forward_args(0x8400_0004, &host), host);
        assert_eq!(forward_args(0x8200_0001, &host), host);
    }
}
