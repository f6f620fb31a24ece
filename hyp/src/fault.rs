//! Exceptions Warden injects into the host at EL1: a synchronous external abort when the
//! host touches memory its stage-2 does not map, and an UNDEFINED exception for a trapped
//! instruction Warden does not emulate. The computation mirrors what the CPU itself does
//! on exception entry to EL1 (Arm ARM, "Exception entry"), so the host's own vectors see
//! an ordinary exception.

/// Exception classes (ESR_ELx.EC) used here.
pub mod ec {
    /// Unknown reason (used for injected UNDEFINED).
    pub const UNKNOWN: u64 = 0x00;
    /// HVC from AArch64.
    pub const HVC64: u64 = 0x16;
    /// SMC from AArch64 (trapped by HCR_EL2.TSC).
    pub const SMC64: u64 = 0x17;
    /// MSR/MRS/system instruction trap.
    pub const SYSREG: u64 = 0x18;
    /// Instruction abort from a lower exception level.
    pub const IABT_LOW: u64 = 0x20;
    /// Instruction abort taken without a change of exception level.
    pub const IABT_CUR: u64 = 0x21;
    /// Data abort from a lower exception level.
    pub const DABT_LOW: u64 = 0x24;
    /// Data abort taken without a change of exception level.
    pub const DABT_CUR: u64 = 0x25;
}

/// ESR_ELx.IL: 32-bit instruction.
const ESR_IL: u64 = 1 << 25;
/// ISS.WnR for data aborts.
const ISS_WNR: u64 = 1 << 6;
/// Fault status code: synchronous external abort, not on a translation table walk.
const FSC_SEA: u64 = 0x10;

/// PSTATE/SPSR bits.
mod pstate {
    pub const M_MASK: u64 = 0xf;
    pub const M_AARCH32: u64 = 0x10;
    pub const M_EL0T: u64 = 0x0;
    pub const M_EL1T: u64 = 0x4;
    pub const M_EL1H: u64 = 0x5;
    pub const DAIF: u64 = 0xf << 6;
    pub const SSBS: u64 = 1 << 12;
    pub const PAN: u64 = 1 << 22;
    pub const ALLINT: u64 = 1 << 13;
}

/// SCTLR_EL1 bits that shape exception entry.
mod sctlr {
    pub const SPAN: u64 = 1 << 23;
    pub const DSSBS: u64 = 1 << 44;
}

/// The host context an injection reads and writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostExceptionState {
    /// ELR_EL2 at the trap: the faulting instruction.
    pub elr_el2: u64,
    /// SPSR_EL2 at the trap: the host's PSTATE.
    pub spsr_el2: u64,
    /// VBAR_EL1.
    pub vbar_el1: u64,
    /// SCTLR_EL1.
    pub sctlr_el1: u64,
}

/// The register writes that deliver an exception to the host's EL1 vectors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Injection {
    /// New ESR_EL1.
    pub esr_el1: u64,
    /// New FAR_EL1, when the exception reports an address.
    pub far_el1: Option<u64>,
    /// New ELR_EL1 (the preferred return address: the faulting instruction).
    pub elr_el1: u64,
    /// New SPSR_EL1 (the interrupted PSTATE).
    pub spsr_el1: u64,
    /// New ELR_EL2: the vector entry to resume at.
    pub elr_el2: u64,
    /// New SPSR_EL2: PSTATE at the vector (EL1h, all of DAIF masked).
    pub spsr_el2: u64,
}

/// Whether the trapped host context was running at EL0.
pub const fn from_el0(spsr_el2: u64) -> bool {
    spsr_el2 & pstate::M_AARCH32 != 0 || spsr_el2 & pstate::M_MASK == pstate::M_EL0T
}

/// Vector offset and PSTATE for a synchronous exception taken to EL1.
fn enter_el1(st: &HostExceptionState) -> (u64, u64) {
    let offset = if st.spsr_el2 & pstate::M_AARCH32 != 0 {
        0x600 // from EL0 running AArch32 (EL1 is AArch64: HCR_EL2.RW)
    } else {
        match st.spsr_el2 & pstate::M_MASK {
            pstate::M_EL1T => 0x000,
            pstate::M_EL1H => 0x200,
            _ => 0x400, // from EL0 (AArch64)
        }
    };
    let mut new = pstate::M_EL1H | pstate::DAIF;
    // PAN is set on entry unless SCTLR_EL1.SPAN says to keep it.
    if st.sctlr_el1 & sctlr::SPAN == 0 {
        new |= pstate::PAN;
    } else {
        new |= st.spsr_el2 & pstate::PAN;
    }
    if st.sctlr_el1 & sctlr::DSSBS != 0 {
        new |= pstate::SSBS;
    }
    // ALLINT is preserved unless NMI handling says otherwise; keep what the host had.
    new |= st.spsr_el2 & pstate::ALLINT;
    (st.vbar_el1.wrapping_add(offset), new)
}

/// A synchronous external abort for a host access that hit an unmapped stage-2 page.
/// `esr_el2` is the trapped data or instruction abort; `far` the faulting virtual address.
pub fn external_abort(st: &HostExceptionState, esr_el2: u64, far: u64) -> Injection {
    let class = esr_el2 >> 26;
    let is_insn = class == ec::IABT_LOW || class == ec::IABT_CUR;
    let el0 = from_el0(st.spsr_el2);
    let new_ec = match (is_insn, el0) {
        (true, true) => ec::IABT_LOW,
        (true, false) => ec::IABT_CUR,
        (false, true) => ec::DABT_LOW,
        (false, false) => ec::DABT_CUR,
    };
    let mut iss = FSC_SEA;
    if !is_insn {
        iss |= esr_el2 & ISS_WNR;
    }
    let (vector, spsr) = enter_el1(st);
    Injection {
        esr_el1: (new_ec << 26) | ESR_IL | iss,
        far_el1: Some(far),
        elr_el1: st.elr_el2,
        spsr_el1: st.spsr_el2,
        elr_el2: vector,
        spsr_el2: spsr,
    }
}

/// An UNDEFINED exception for the trapped instruction at `elr_el2`.
pub fn undefined(st: &HostExceptionState) -> Injection {
    let (vector, spsr) = enter_el1(st);
    Injection {
        esr_el1: (ec::UNKNOWN << 26) | ESR_IL,
        far_el1: None,
        elr_el1: st.elr_el2,
        spsr_el1: st.spsr_el2,
        elr_el2: vector,
        spsr_el2: spsr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VBAR: u64 = 0xffff_8000_1001_0000;

    #[test]
    fn user_load_becomes_lower_el_data_abort() {
        let st = HostExceptionState {
            elr_el2: 0x40_1234,
            spsr_el2: 0x8000_0000, // EL0t, N flag set
            vbar_el1: VBAR,
            sctlr_el1: 0,
        };
        // Stage-2 translation fault, level 3, read.
        let esr = (ec::DABT_LOW << 26) | ESR_IL | 0x07;
        let inj = external_abort(&st, esr, 0xffff_a000);
        assert_eq!(inj.esr_el1 >> 26, ec::DABT_LOW);
        assert_eq!(inj.esr_el1 & 0x3f, FSC_SEA);
        assert_eq!(inj.esr_el1 & ISS_WNR, 0);
        assert_eq!(inj.far_el1, Some(0xffff_a000));
        assert_eq!(inj.elr_el1, 0x40_1234);
        assert_eq!(inj.spsr_el1, 0x8000_0000);
        assert_eq!(inj.elr_el2, VBAR + 0x400);
        assert_eq!(inj.spsr_el2 & 0xf, 0x5, "EL1h");
        assert_eq!(inj.spsr_el2 & (0xf << 6), 0xf << 6, "DAIF masked");
        assert_ne!(inj.spsr_el2 & pstate::PAN, 0, "PAN set when SPAN = 0");
    }

    #[test]
    fn kernel_store_becomes_current_el_data_abort() {
        let st = HostExceptionState {
            elr_el2: 0xffff_8000_0800_0000,
            spsr_el2: 0x3c5, // EL1h
            vbar_el1: VBAR,
            sctlr_el1: sctlr::SPAN | sctlr::DSSBS,
        };
        let esr = (ec::DABT_LOW << 26) | ESR_IL | ISS_WNR | 0x06;
        let inj = external_abort(&st, esr, 0xffff_0000_4000_0000);
        assert_eq!(inj.esr_el1 >> 26, ec::DABT_CUR);
        assert_ne!(inj.esr_el1 & ISS_WNR, 0, "write preserved");
        assert_eq!(inj.elr_el2, VBAR + 0x200);
        assert_eq!(
            inj.spsr_el2 & pstate::PAN,
            0,
            "SPAN = 1 keeps PAN (was clear)"
        );
        assert_ne!(inj.spsr_el2 & pstate::SSBS, 0);
    }

    #[test]
    fn instruction_fetch_and_undef() {
        let st = HostExceptionState {
            elr_el2: 0x1000,
            spsr_el2: 0x4,
            vbar_el1: VBAR,
            sctlr_el1: 0,
        };
        let inj = external_abort(&st, (ec::IABT_LOW << 26) | 0x07, 0x1000);
        assert_eq!(inj.esr_el1 >> 26, ec::IABT_CUR);
        assert_eq!(inj.elr_el2, VBAR, "EL1t uses the SP_EL0 vectors");
        let a32 = HostExceptionState {
            spsr_el2: 0x10,
            ..st
        };
        let inj = external_abort(&a32, (ec::DABT_LOW << 26) | 0x07, 0x8000);
        assert_eq!(inj.esr_el1 >> 26, ec::DABT_LOW, "AArch32 EL0 is a lower EL");
        assert_eq!(inj.elr_el2, VBAR + 0x600);
        let u = undefined(&st);
        assert_eq!(u.esr_el1, ESR_IL);
        assert_eq!(u.far_el1, None);
        assert_eq!(u.elr_el1, 0x1000);
    }
}
