//! The EL2 state each CPU gets before the host runs at EL1: the same job as Linux's
//! `init_el2_state`, computed here as plain values from the CPU's ID registers so that
//! it is testable on the host. `src/cpu.rs` reads the ID registers and writes the result.
//!
//! Real hardware leaves most EL2 controls UNKNOWN at reset (QEMU happens to reset them to
//! friendly values), so every control that can trap or hide a feature from EL1 is set
//! explicitly, and only for features the CPU implements.
//!
//! EL2 itself stays invisible to the host's observation units: PMU event and cycle
//! counters do not count at EL2 (MDCR_EL2.HPMD with PMUv3p1, HCCD with PMUv3p5), SPE does
//! not profile it (PMSCR_EL2 = 0), self-hosted trace does not trace it (TRFCR_EL2 = 0) and
//! BRBE does not record its branches (BRBCR_EL2.E2BRE = 0). HCR_EL2 never has E2H; the
//! entry code (`src/head.S`) writes it, masks interrupts and sets PSTATE before anything
//! else on every CPU.

use aarch64_cpu::registers::{CNTHCTL_EL2, MDCR_EL2};

/// Snapshot of the ID registers (and a few feature probes) that decide the EL2 setup.
#[derive(Clone, Copy, Debug, Default)]
pub struct IdRegs {
    /// ID_AA64PFR0_EL1.
    pub pfr0: u64,
    /// ID_AA64PFR1_EL1.
    pub pfr1: u64,
    /// ID_AA64PFR2_EL1.
    pub pfr2: u64,
    /// ID_AA64MMFR0_EL1.
    pub mmfr0: u64,
    /// ID_AA64MMFR1_EL1.
    pub mmfr1: u64,
    /// ID_AA64MMFR3_EL1.
    pub mmfr3: u64,
    /// ID_AA64DFR0_EL1.
    pub dfr0: u64,
    /// ID_AA64ISAR1_EL1.
    pub isar1: u64,
    /// ID_AA64ISAR2_EL1.
    pub isar2: u64,
    /// ID_AA64SMFR0_EL1 (0 without SME).
    pub smfr0: u64,
    /// PMCR_EL0.N, valid when a PMUv3 is present.
    pub pmcr_n: u64,
    /// SMIDR_EL1.SMPS (SME priority mapping), valid with SME.
    pub sme_prio: bool,
    /// SPE present and PMBIDR_EL1.P == 0 (EL1 may own the profiling buffer).
    pub spe_for_el1: bool,
    /// TRBE present and TRBIDR_EL1.P == 0 (EL1 may own the trace buffer).
    pub trbe_for_el1: bool,
    /// MPAMIDR_EL1.HAS_HCR, valid with MPAM.
    pub mpam_has_hcr: bool,
}

const fn field(reg: u64, shift: u32) -> u64 {
    (reg >> shift) & 0xf
}

impl IdRegs {
    /// FEAT_SVE.
    pub const fn sve(&self) -> bool {
        field(self.pfr0, 32) != 0
    }
    /// FEAT_SME.
    pub const fn sme(&self) -> bool {
        field(self.pfr1, 24) != 0
    }
    /// Any pointer authentication (address or generic, QARMA3 included).
    pub const fn pauth(&self) -> bool {
        field(self.isar1, 4) != 0
            || field(self.isar1, 8) != 0
            || field(self.isar1, 24) != 0
            || field(self.isar1, 28) != 0
            || field(self.isar2, 12) != 0
            || field(self.isar2, 8) != 0
    }
    /// FEAT_MTE2 or later (tag storage the guest can use).
    pub const fn mte2(&self) -> bool {
        field(self.pfr1, 8) >= 2
    }
    /// The GICv3+ system register interface.
    pub const fn gic_sysregs(&self) -> bool {
        field(self.pfr0, 24) != 0
    }
    /// FEAT_HCX (HCRX_EL2 exists).
    pub const fn hcx(&self) -> bool {
        field(self.mmfr1, 40) != 0
    }
    /// FEAT_FGT level: 0 none, 1 FGT, 2 FGT2.
    pub const fn fgt(&self) -> u64 {
        field(self.mmfr0, 56)
    }
    /// A PMUv3 (not absent, not IMPLEMENTATION DEFINED).
    pub const fn pmuv3(&self) -> bool {
        let v = field(self.dfr0, 8);
        v != 0 && v != 0xf
    }
    /// The PMUv3 version (ID_AA64DFR0_EL1.PMUVer: 1 PMUv3, 4 v3p1, 5 v3p4, 6 v3p5, ...),
    /// 0 without a PMUv3 (absent or IMPLEMENTATION DEFINED).
    pub const fn pmu_version(&self) -> u64 {
        if self.pmuv3() { field(self.dfr0, 8) } else { 0 }
    }
    /// FEAT_SPE (ID_AA64DFR0_EL1.PMSVer): PMSCR_EL2 exists.
    pub const fn spe(&self) -> bool {
        field(self.dfr0, 32) != 0
    }
    /// FEAT_TRF (ID_AA64DFR0_EL1.TraceFilt): TRFCR_EL2 exists.
    pub const fn trace_filter(&self) -> bool {
        field(self.dfr0, 40) != 0
    }
    /// FEAT_LOR.
    pub const fn lor(&self) -> bool {
        field(self.mmfr1, 16) != 0
    }
    /// FEAT_AMUv1.
    pub const fn amu(&self) -> bool {
        field(self.pfr0, 44) != 0
    }
    /// FEAT_MPAM (major or minor version non-zero).
    pub const fn mpam(&self) -> bool {
        field(self.pfr0, 40) != 0 || field(self.pfr1, 16) != 0
    }
    /// FEAT_GCS.
    pub const fn gcs(&self) -> bool {
        field(self.pfr1, 44) != 0
    }
    /// FEAT_BRBE.
    pub const fn brbe(&self) -> bool {
        field(self.dfr0, 52) != 0
    }
    /// Physical address size in bits, from ID_AA64MMFR0_EL1.PARange.
    pub const fn pa_bits(&self) -> u32 {
        match field(self.mmfr0, 0) {
            0 => 32,
            1 => 36,
            2 => 40,
            3 => 42,
            4 => 44,
            5 => 48,
            _ => 52,
        }
    }
    /// VMID width in bits (8 or 16).
    pub const fn vmid_bits(&self) -> u32 {
        if field(self.mmfr1, 4) == 2 { 16 } else { 8 }
    }
    /// Stage-2 support of the three granules (4K, 16K, 64K), from the TGRAN*_2 fields.
    pub const fn s2_granules(&self) -> [bool; 3] {
        // TGranX_2: 0 = as stage 1 (TGranX), 1 = not supported, >= 2 = supported.
        let t4 = field(self.mmfr0, 40);
        let t16 = field(self.mmfr0, 32);
        let t64 = field(self.mmfr0, 36);
        let s1_4 = field(self.mmfr0, 28) != 0xf;
        let s1_16 = field(self.mmfr0, 20) != 0;
        let s1_64 = field(self.mmfr0, 24) != 0xf;
        [
            if t4 == 0 { s1_4 } else { t4 >= 2 },
            if t16 == 0 { s1_16 } else { t16 >= 2 },
            if t64 == 0 { s1_64 } else { t64 >= 2 },
        ]
    }
}

/// HCR_EL2 bits Warden uses (values of `aarch64-cpu`'s typed fields).
pub mod hcr {
    use aarch64_cpu::registers::HCR_EL2;

    /// EL2 host (VHE). Never set: Warden runs nVHE, and `src/head.S` writes HCR_EL2 with
    /// E2H = 0 (just [`RW`]) before anything else at entry.
    pub const E2H: u64 = HCR_EL2::E2H::EnableOsAtEl2.value;
    /// Stage-2 translation enabled.
    pub const VM: u64 = HCR_EL2::VM::Enable.value;
    /// SMC from EL1 traps to EL2.
    pub const TSC: u64 = HCR_EL2::TSC::EnableTrapEl1SmcToEl2.value;
    /// EL1 is AArch64.
    pub const RW: u64 = HCR_EL2::RW::EL1IsAarch64.value;
    /// Pointer-authentication key registers not trapped.
    pub const APK: u64 = HCR_EL2::APK::DisableTrapPointerAuthKeyRegsToEl2.value;
    /// Pointer-authentication instructions not trapped.
    pub const API: u64 = HCR_EL2::API::DisableTrapPointerAuthInstToEl2.value;
    /// Allocation-tag access allowed at EL1/EL0.
    pub const ATA: u64 = HCR_EL2::ATA::SET.value;
}

/// MDCR_EL2 bits Warden sets besides HPMN and the buffer-ownership fields.
pub mod mdcr {
    use aarch64_cpu::registers::MDCR_EL2;

    /// Event counting prohibited at EL2 (FEAT_PMUv3p1).
    pub const HPMD: u64 = MDCR_EL2::HPMD::SET.value;
    /// PMCCNTR_EL0 does not count at EL2 (FEAT_PMUv3p5).
    pub const HCCD: u64 = MDCR_EL2::HCCD::SET.value;
    /// E2PB = 0b11: the profiling buffer is owned by EL1.
    pub const E2PB_EL1: u64 = MDCR_EL2::E2PB::OwnedByEL1.value;
    /// E2TB = 0b11: the trace buffer is owned by EL1, not trapped.
    pub const E2TB_EL1: u64 = MDCR_EL2::E2TB::EL1OwnerNotTrapped.value;
}

/// CNTHCTL_EL2 (nVHE layout): EL1 access to the physical counter and timer.
const CNTHCTL_EL1_PHYSICAL: u64 =
    CNTHCTL_EL2::EL1PCTEN::SET.value | CNTHCTL_EL2::EL1PCEN::SET.value;

/// BRBCR_EL2 bits.
pub mod brbcr {
    /// EL2 branch recording enable (kept clear).
    pub const E2BRE: u64 = 1 << 1;
    /// Cycle counts in branch records allowed.
    pub const CC: u64 = 1 << 3;
    /// Mispredict bits in branch records allowed.
    pub const MPRED: u64 = 1 << 4;
}

/// Values of the fine-grained trap registers (FEAT_FGT). Zero bits trap nothing except the
/// negative-polarity `n*` bits, which are set for every implemented feature they cover.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FineGrainedTraps {
    /// HFGRTR_EL2.
    pub hfgrtr: u64,
    /// HFGWTR_EL2.
    pub hfgwtr: u64,
    /// HFGITR_EL2.
    pub hfgitr: u64,
    /// HDFGRTR_EL2.
    pub hdfgrtr: u64,
    /// HDFGWTR_EL2.
    pub hdfgwtr: u64,
    /// Whether HAFGRTR_EL2 exists (FEAT_AMUv1) and must be cleared.
    pub hafgrtr: bool,
    /// Whether the FEAT_FGT2 registers exist and must be cleared.
    pub fgt2: bool,
}

/// The EL2 configuration for running the host at EL1.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct El2Config {
    /// HCR_EL2.
    pub hcr: u64,
    /// HCRX_EL2, when FEAT_HCX is implemented.
    pub hcrx: Option<u64>,
    /// CNTHCTL_EL2 (EL1 physical timer and counter access).
    pub cnthctl: u64,
    /// MDCR_EL2.
    pub mdcr: u64,
    /// PMSCR_EL2, with SPE: no statistical profiling of EL2.
    pub pmscr: Option<u64>,
    /// TRFCR_EL2, with FEAT_TRF: no trace of EL2.
    pub trfcr: Option<u64>,
    /// BRBCR_EL2, with BRBE: no branch records of EL2.
    pub brbcr: Option<u64>,
    /// CPTR_EL2 (nVHE layout).
    pub cptr: u64,
    /// ZCR_EL2, with SVE.
    pub zcr: Option<u64>,
    /// SMCR_EL2, with SME.
    pub smcr: Option<u64>,
    /// Clear SMPRIMAP_EL2 (SME priority mapping implemented).
    pub clear_smprimap: bool,
    /// Bits to set in SCTLR_EL2 besides the MMU/cache controls.
    pub sctlr_extra: u64,
    /// Fine-grained traps, with FEAT_FGT.
    pub fgt: Option<FineGrainedTraps>,
    /// Enable the GICv3 system-register interface for EL1 (ICC_SRE_EL2) and clear ICH_HCR_EL2.
    pub gicv3: bool,
    /// MPAM2_EL2 value, with MPAM (plus whether MPAMHCR_EL2 exists and must be cleared).
    pub mpam2: Option<(u64, bool)>,
    /// Clear LORC_EL1 (FEAT_LOR).
    pub clear_lorc: bool,
}

/// CPTR_EL2 (nVHE): RES1 bits plus TZ (bit 8) and TSM (bit 12) set, TFP and TTA clear.
const CPTR_EL2_BASE: u64 = 0x33ff;
const CPTR_EL2_TZ: u64 = 1 << 8;
const CPTR_EL2_TSM: u64 = 1 << 12;

impl El2Config {
    /// Computes the configuration for a CPU with these ID registers.
    pub fn for_host(id: &IdRegs) -> Self {
        let mut hcr = hcr::RW | hcr::VM | hcr::TSC;
        if id.pauth() {
            hcr |= hcr::API | hcr::APK;
        }
        if id.mte2() {
            hcr |= hcr::ATA;
        }

        let hcrx = id.hcx().then(|| {
            let mut v = 0;
            if field(id.isar2, 16) != 0 {
                // MSCEn: FEAT_MOPS usable at EL1/EL0. MCE2 stays clear: the host's MOPS
                // exceptions go to its own EL1 handler, not to Warden.
                v |= 1 << 11;
            }
            if field(id.mmfr3, 0) != 0 {
                v |= 1 << 14; // TCR2En
            }
            if field(id.mmfr3, 4) != 0 {
                v |= 1 << 15; // SCTLR2En
            }
            if id.gcs() {
                v |= 1 << 22; // GCSEn
            }
            if field(id.pfr2, 32) != 0 {
                v |= 1 << 23; // EnFPM
            }
            let ls64 = field(id.isar1, 60);
            if ls64 >= 1 {
                v |= 1 << 1; // EnALS
            }
            if ls64 >= 2 {
                v |= 1 << 2; // EnASR
            }
            v
        });

        let mut mdcr = if id.pmuv3() {
            MDCR_EL2::HPMN.val(id.pmcr_n & 0x1f).value
        } else {
            0
        };
        // The host's PMU counters do not count at EL2: HPMD (PMUv3p1) stops the event
        // counters, HCCD (PMUv3p5) the cycle counter.
        if id.pmu_version() >= 4 {
            mdcr |= mdcr::HPMD;
        }
        if id.pmu_version() >= 6 {
            mdcr |= mdcr::HCCD;
        }
        if id.spe_for_el1 {
            mdcr |= mdcr::E2PB_EL1; // EL1 owns the profiling buffer
        }
        if id.trbe_for_el1 {
            mdcr |= mdcr::E2TB_EL1; // EL1 owns the trace buffer
        }

        let mut cptr = CPTR_EL2_BASE;
        if id.sve() {
            cptr &= !CPTR_EL2_TZ;
        }
        if id.sme() {
            cptr &= !CPTR_EL2_TSM;
        }

        let smcr = id.sme().then(|| {
            let mut v = 0xf; // LEN: the largest vector length
            if id.smfr0 >> 63 != 0 {
                v |= 1 << 31; // FA64
            }
            if field(id.smfr0, 56) != 0 {
                v |= 1 << 30; // EZT0 (SME2)
            }
            v
        });

        let fgt = (id.fgt() != 0).then(|| Self::fine_grained(id));

        let mpam2 = id.mpam().then(|| {
            let v = if id.sme() { 1 << 50 } else { 0 }; // EnMPAMSM
            (v, id.mpam_has_hcr)
        });

        Self {
            hcr,
            hcrx,
            cnthctl: CNTHCTL_EL1_PHYSICAL,
            mdcr,
            // E2SPE = 0 (EL2 not profiled), E0HSPE = 0 (a VHE control), PA/CX/TS = 0.
            pmscr: id.spe().then_some(0),
            // E2TRE = 0 (EL2 trace prohibited), E0HTRE = 0, CX = 0, TS = 0.
            trfcr: id.trace_filter().then_some(0),
            // E2BRE = 0 (EL2 branches not recorded), E0HBRE = 0; CC and MPRED set so that
            // the host's own BRBCR_EL1 settings of them take effect.
            brbcr: id.brbe().then_some(brbcr::CC | brbcr::MPRED),
            cptr,
            zcr: id.sve().then_some(0xf),
            smcr,
            clear_smprimap: id.sme() && id.sme_prio,
            sctlr_extra: if id.sme() { 1 << 60 } else { 0 }, // EnTP2
            fgt,
            gicv3: id.gic_sysregs(),
            mpam2,
            clear_lorc: id.lor(),
        }
    }

    fn fine_grained(id: &IdRegs) -> FineGrainedTraps {
        let mut rw = 0u64; // HFGRTR_EL2 / HFGWTR_EL2 share the n-bit layout
        if id.sme() {
            rw |= (1 << 54) | (1 << 55); // nSMPRI_EL1, nTPIDR2_EL0
        }
        if field(id.mmfr3, 8) != 0 {
            rw |= (1 << 57) | (1 << 58); // nPIRE0_EL1, nPIR_EL1 (S1PIE)
        }
        if field(id.mmfr3, 16) != 0 {
            rw |= (1 << 59) | (1 << 60); // nPOR_EL0, nPOR_EL1 (S1POE)
        }
        if field(id.mmfr3, 20) != 0 {
            rw |= 1 << 61; // nS2POR_EL1
        }
        if field(id.mmfr3, 24) != 0 {
            rw |= (1 << 62) | (1 << 63); // nMAIR2_EL1, nAMAIR2_EL1 (AIE)
        }
        if id.gcs() {
            rw |= (1 << 52) | (1 << 53); // nGCS_EL0, nGCS_EL1
        }
        if field(id.pfr1, 48) != 0 {
            rw |= 1 << 56; // nRCWMASK_EL1 (THE)
        }
        if field(id.isar1, 60) >= 3 {
            rw |= 1 << 50; // nACCDATA_EL1 (LS64_ACCDATA)
        }
        let mut itr = 0u64;
        if id.gcs() {
            // nGCSEPP, nGCSSTR_EL1, nGCSPUSHM_EL1: the host's GCS instructions do not trap.
            itr |= (1 << 59) | (1 << 58) | (1 << 57);
        }
        let (mut dr, mut dw) = (0u64, 0u64);
        if id.brbe() {
            itr |= (1 << 56) | (1 << 55); // nBRBIALL, nBRBINJ
            dr |= (1 << 61) | (1 << 60) | (1 << 59); // nBRBDATA, nBRBCTL, nBRBIDR
            dw |= (1 << 61) | (1 << 60);
        }
        if field(id.dfr0, 32) >= 3 {
            dr |= 1 << 62; // nPMSNEVFR_EL1 (SPEv1p2)
            dw |= 1 << 62;
        }
        FineGrainedTraps {
            hfgrtr: rw,
            hfgwtr: rw,
            hfgitr: itr,
            hdfgrtr: dr,
            hdfgwtr: dw,
            hafgrtr: id.amu(),
            fgt2: id.fgt() >= 2,
        }
    }
}

/// CNTHCTL_EL2 bits for an event stream of about 10 kHz from the physical counter
/// (EVNTEN, EVNTI): `WFE` then wakes at least every ~100 µs, which bounds Warden's waits
/// for an SMMU's SEV even if the event never comes (Linux runs its own EL1 event stream
/// at the same rate, so the host sees nothing new). `cntfrq` is CNTFRQ_EL0.
pub const fn event_stream_bits(cntfrq: u64) -> u64 {
    // An event each time counter bit EVNTI goes 0 -> 1: every 2^(EVNTI+1) ticks.
    let target = cntfrq / 10_000;
    let mut bit = 0u64;
    while bit < 15 && (1u64 << (bit + 2)) <= target {
        bit += 1;
    }
    (1 << 2) | (bit << 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cortex-A57-like: no SVE/SME/PAuth/FGT/HCX, GICv3 sysregs absent (GICv2 system).
    fn a57() -> IdRegs {
        IdRegs {
            pfr0: 0x0000_0000_0000_2222,
            mmfr0: 0x0000_0000_0000_1124,
            mmfr1: 0,
            dfr0: 0x0000_0000_1030_5106,
            pmcr_n: 6,
            ..Default::default()
        }
    }

    #[test]
    fn plain_v8_cpu() {
        let c = El2Config::for_host(&a57());
        assert_eq!(c.hcr, hcr::RW | hcr::VM | hcr::TSC);
        assert_eq!(c.hcrx, None);
        assert_eq!(c.cptr, 0x33ff, "TFP clear, TZ/TSM stay RES1/set");
        assert_eq!(c.zcr, None);
        assert_eq!(c.fgt, None);
        assert!(!c.gicv3);
        assert_eq!(c.mdcr, 6, "HPMN = PMCR_EL0.N, no traps, PMUv3 (no HPMD)");
        assert_eq!(c.hcr & hcr::E2H, 0);
        assert_eq!((c.pmscr, c.trfcr, c.brbcr), (None, None, None));
        assert_eq!(c.cnthctl, 3);
        assert_eq!(a57().pa_bits(), 44);
        assert_eq!(a57().vmid_bits(), 8);
    }

    #[test]
    fn modern_cpu_opens_everything_it_has() {
        let id = IdRegs {
            pfr0: (1 << 32) | (1 << 24) | (1 << 44), // SVE, GICv3 sysregs, AMU
            pfr1: (1 << 24) | (2 << 8),              // SME, MTE2
            mmfr0: (1 << 56) | 5,                    // FGT, 48-bit PA
            mmfr1: (1 << 40) | (2 << 4),             // HCX, 16-bit VMID
            mmfr3: (1 << 8) | 1,                     // S1PIE, TCRX
            isar1: 1 << 4,                           // APA
            isar2: 1 << 16,                          // MOPS
            smfr0: 1 << 63,                          // FA64
            sme_prio: true,
            ..Default::default()
        };
        let c = El2Config::for_host(&id);
        assert_eq!(c.hcr & (hcr::API | hcr::APK), hcr::API | hcr::APK);
        assert_ne!(c.hcr & hcr::ATA, 0);
        assert_eq!(
            c.hcrx,
            Some((1 << 11) | (1 << 14)),
            "MSCEn, TCR2En; MCE2 clear"
        );
        assert_eq!(c.cptr & (CPTR_EL2_TZ | CPTR_EL2_TSM), 0);
        assert_eq!(c.zcr, Some(0xf));
        assert_eq!(c.smcr, Some(0xf | (1 << 31)));
        assert!(c.clear_smprimap);
        assert_eq!(c.sctlr_extra, 1 << 60);
        let f = c.fgt.unwrap();
        assert_eq!(f.hfgrtr, (1 << 54) | (1 << 55) | (1 << 57) | (1 << 58));
        assert_eq!(f.hfgwtr, f.hfgrtr);
        assert!(f.hafgrtr);
        assert!(!f.fgt2);
        assert!(c.gicv3);
        assert_eq!(id.pa_bits(), 48);
        assert_eq!(id.vmid_bits(), 16);
    }

    #[test]
    fn el2_is_hidden_from_the_hosts_pmu_profiling_and_trace() {
        // PMUVer -> (HPMD, HCCD).
        for (ver, hpmd, hccd) in [
            (0x1, false, false), // PMUv3
            (0x4, true, false),  // PMUv3p1
            (0x5, true, false),  // PMUv3p4
            (0x6, true, true),   // PMUv3p5
            (0x8, true, true),   // PMUv3p8
            (0xf, false, false), // IMPLEMENTATION DEFINED: no PMUv3 controls
        ] {
            let id = IdRegs {
                dfr0: ver << 8,
                pmcr_n: 6,
                ..Default::default()
            };
            let c = El2Config::for_host(&id);
            assert_eq!(c.mdcr & mdcr::HPMD != 0, hpmd, "PMUVer {ver:#x}");
            assert_eq!(c.mdcr & mdcr::HCCD != 0, hccd, "PMUVer {ver:#x}");
            let n = if ver == 0xf { 0 } else { 6 };
            assert_eq!(c.mdcr & 0x1f, n, "HPMN, PMUVer {ver:#x}");
        }
        // SPE (PMSVer), TRF (TraceFilt), BRBE: the EL2 controls are written, to values
        // that keep EL2 out.
        let id = IdRegs {
            dfr0: (1 << 32) | (1 << 40) | (1 << 52),
            ..Default::default()
        };
        let c = El2Config::for_host(&id);
        assert_eq!(c.pmscr, Some(0), "E2SPE clear");
        assert_eq!(c.trfcr, Some(0), "E2TRE clear");
        let brbcr = c.brbcr.unwrap();
        assert_eq!(brbcr & brbcr::E2BRE, 0);
        assert_eq!(brbcr, brbcr::CC | brbcr::MPRED);
        // Each alone.
        for (dfr0, want) in [
            (1u64 << 32, (true, false, false)),
            (1 << 40, (false, true, false)),
            (1 << 52, (false, false, true)),
        ] {
            let c = El2Config::for_host(&IdRegs {
                dfr0,
                ..Default::default()
            });
            assert_eq!(
                (c.pmscr.is_some(), c.trfcr.is_some(), c.brbcr.is_some()),
                want,
                "{dfr0:#x}"
            );
        }
    }

    #[test]
    fn mops_exceptions_stay_with_the_host() {
        let with = |isar2| {
            El2Config::for_host(&IdRegs {
                mmfr1: 1 << 40, // HCX
                isar2,
                ..Default::default()
            })
            .hcrx
            .unwrap()
        };
        assert_eq!(with(1 << 16), 1 << 11, "MSCEn only: MCE2 clear");
        assert_eq!(with(0), 0);
    }

    #[test]
    fn gcs_instructions_do_not_trap() {
        let fgt = |pfr1| {
            El2Config::for_host(&IdRegs {
                mmfr0: 1 << 56, // FGT
                mmfr1: 1 << 40, // HCX
                pfr1,
                ..Default::default()
            })
        };
        let c = fgt(1 << 44);
        let f = c.fgt.unwrap();
        assert_eq!(
            f.hfgitr,
            (1 << 59) | (1 << 58) | (1 << 57),
            "nGCSEPP, nGCSSTR_EL1, nGCSPUSHM_EL1"
        );
        assert_eq!(f.hfgrtr, (1 << 52) | (1 << 53), "nGCS_EL0, nGCS_EL1");
        assert_eq!(c.hcrx.unwrap() & (1 << 22), 1 << 22, "GCSEn");
        let c = fgt(0);
        assert_eq!(c.fgt.unwrap().hfgitr, 0);
        assert_eq!(c.hcrx.unwrap() & (1 << 22), 0);
    }

    #[test]
    fn hcr_is_nvhe_whatever_the_cpu_has() {
        let all = IdRegs {
            pfr0: u64::MAX,
            pfr1: u64::MAX,
            pfr2: u64::MAX,
            mmfr0: u64::MAX,
            mmfr1: u64::MAX,
            mmfr3: u64::MAX,
            dfr0: u64::MAX,
            isar1: u64::MAX,
            isar2: u64::MAX,
            smfr0: u64::MAX,
            ..Default::default()
        };
        let c = El2Config::for_host(&all);
        assert_eq!(c.hcr & hcr::E2H, 0);
        assert_eq!(c.hcr & hcr::RW, hcr::RW);
    }

    #[test]
    fn event_stream_is_about_10_khz() {
        for freq in [62_500_000u64, 1_000_000_000, 24_000_000, 100_000_000] {
            let v = event_stream_bits(freq);
            assert_ne!(v & (1 << 2), 0, "EVNTEN");
            let period = 1u64 << (((v >> 4) & 0xf) + 1);
            let us = period * 1_000_000 / freq;
            assert!(
                (50..=200).contains(&us) || (v >> 4) & 0xf == 15,
                "{freq} Hz: {us} us"
            );
        }
        assert_eq!(event_stream_bits(0), 1 << 2, "no frequency: fastest stream");
    }

    #[test]
    fn stage2_granules_follow_tgran_2_fields() {
        // TGran4 = 0 (supported), TGran64 = 0 (supported), TGran16 = 1 (supported);
        // TGran4_2 = 0 (as stage 1), TGran16_2 = 1 (not at stage 2), TGran64_2 = 2.
        let id = IdRegs {
            mmfr0: (1 << 20) | (1 << 32) | (2 << 36),
            ..Default::default()
        };
        assert_eq!(id.s2_granules(), [true, false, true]);
    }
}
