//! Where the faulting IPA of a host stage-2 abort comes from. `HPFAR_EL2` is written only
//! for some fault kinds (Arm ARM R_FKLWR; KVM's `__hpfar_valid`): a translation, access
//! flag or permission fault at stage 2 on a stage-1 table walk (`S1PTW`), or otherwise a
//! translation, access flag or address size fault at stage 2. For anything else (a
//! stage-2 permission fault on the access itself, say) it is UNKNOWN, and so it is on
//! CPUs with Arm erratum 834220, which can report a stage-2 fault where stage 1 should
//! have faulted. Then the IPA is recovered by translating `FAR_EL2` through the host's
//! stage 1 (`AT S1E1R`), unless `FAR_EL2` itself is not valid (`FnV`) or the fault was an
//! external abort or a parity/ECC error on a translation table walk, at either stage
//! (walking again could abort again, and an abort of `AT` is taken at EL2: KVM's
//! `__fault_safe_to_translate` makes the same exception).
//!
//! The decision is pure and lives here; the `AT` instruction is in the image's arch layer.

/// How to find the IPA of a stage-2 abort.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpaSource {
    /// `HPFAR_EL2.FIPA` is valid.
    Hpfar,
    /// Translate `FAR_EL2` with `AT S1E1R`.
    Translate,
    /// Neither is trustworthy: the IPA is unknown.
    Unknown,
}

/// ESR_EL2 ISS bits of instruction and data aborts.
pub mod iss {
    /// Fault status code, bits 5:0.
    pub const FSC: u64 = 0x3f;
    /// Stage-2 fault on a stage-1 translation table walk.
    pub const S1PTW: u64 = 1 << 7;
    /// FAR not valid (external aborts only).
    pub const FNV: u64 = 1 << 10;
}

const fn fsc(esr: u64) -> u64 {
    esr & iss::FSC
}

/// Translation fault at any level (FEAT_LPA2's level -1 included).
pub const fn is_translation(esr: u64) -> bool {
    matches!(fsc(esr), 0x04..=0x07 | 0x2b)
}

/// Access flag fault at any level.
pub const fn is_access_flag(esr: u64) -> bool {
    matches!(fsc(esr), 0x08..=0x0b)
}

/// Permission fault at any level.
pub const fn is_permission(esr: u64) -> bool {
    matches!(fsc(esr), 0x0c..=0x0f)
}

/// Whether a stage-2 abort on an IPA that the host stage-2 maps (when Warden looks) may
/// be a transient gap that the host should simply retry: a translation or access-flag
/// fault, as seen while another CPU breaks and makes the entry. Anything else (a
/// permission fault, a TLB conflict, an unsupported atomic or exclusive, an external
/// abort) would fault again on every retry: the host gets an abort instead of looping.
pub const fn may_be_transient(esr: u64) -> bool {
    is_translation(esr) || is_access_flag(esr)
}

/// Address size fault at any level.
pub const fn is_address_size(esr: u64) -> bool {
    matches!(fsc(esr), 0x00..=0x03 | 0x29)
}

/// Synchronous external abort (on the access or on a walk, any level).
pub const fn is_external_abort(esr: u64) -> bool {
    matches!(fsc(esr), 0x10 | 0x12..=0x17)
}

/// Synchronous external abort or parity/ECC error on a translation table walk (or
/// hardware table update), any level (FEAT_LPA2's level -1 and FEAT_D128's -2 included).
pub const fn is_walk_abort(esr: u64) -> bool {
    matches!(fsc(esr), 0x12..=0x17 | 0x1b..=0x1f)
}

/// Whether the CPU (MIDR_EL1) has Arm erratum 834220: Cortex-A57 r0p0 to r1p2.
pub const fn erratum_834220(midr: u64) -> bool {
    let implementer = (midr >> 24) & 0xff;
    let part = (midr >> 4) & 0xfff;
    let variant = (midr >> 20) & 0xf;
    let revision = midr & 0xf;
    implementer == 0x41 && part == 0xd07 && (variant == 0 || (variant == 1 && revision <= 2))
}

/// The IPA source for an abort with syndrome `esr` on a CPU with (`erratum`) or without
/// erratum 834220.
pub const fn ipa_source(esr: u64, erratum: bool) -> IpaSource {
    if esr & iss::S1PTW != 0 {
        if is_translation(esr) || is_access_flag(esr) || is_permission(esr) {
            return IpaSource::Hpfar;
        }
    } else if !erratum && (is_translation(esr) || is_access_flag(esr) || is_address_size(esr)) {
        return IpaSource::Hpfar;
    }
    // FAR is not valid (FnV, external aborts only), or walking again could abort again
    // (whether the walk that aborted was stage 1's or stage 2's: S1PTW only tells which).
    if esr & iss::FNV != 0 || is_walk_abort(esr) {
        return IpaSource::Unknown;
    }
    IpaSource::Translate
}

/// The IPA of the faulting access from `HPFAR_EL2` (FIPA is IPA\[51:12\] in bits 43:4) and
/// the page offset in `FAR_EL2`.
pub const fn ipa_from_hpfar(hpfar: u64, far: u64) -> u64 {
    (((hpfar >> 4) & ((1 << 40) - 1)) << 12) | (far & 0xfff)
}

/// The IPA from a successful `AT S1E1R` (PAR_EL1 with F = 0: PA\[51:12\] in bits 51:12)
/// and the page offset in `FAR_EL2`; `None` if the translation failed (F = 1): the
/// host's stage 1 changed under the access, which the host then simply retries.
pub const fn ipa_from_par(par: u64, far: u64) -> Option<u64> {
    if par & 1 != 0 {
        return None;
    }
    Some((par & 0x000f_ffff_ffff_f000) | (far & 0xfff))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DABT: u64 = 0x24 << 26 | 1 << 25;

    #[test]
    fn hpfar_trusted_only_where_written() {
        // Stage-2 translation / access flag / address size faults on the access.
        for fsc in [0x04, 0x05, 0x06, 0x07, 0x2b, 0x08, 0x0b, 0x00, 0x03, 0x29] {
            assert_eq!(ipa_source(DABT | fsc, false), IpaSource::Hpfar, "{fsc:#x}");
        }
        // A stage-2 permission fault on the access: HPFAR is UNKNOWN.
        for fsc in 0x0c..=0x0f {
            assert_eq!(
                ipa_source(DABT | fsc, false),
                IpaSource::Translate,
                "{fsc:#x}"
            );
            assert_eq!(
                ipa_source(DABT | iss::S1PTW | fsc, false),
                IpaSource::Hpfar,
                "{fsc:#x} on a walk"
            );
        }
        // Address size faults on a walk are not in the list.
        assert_eq!(
            ipa_source(DABT | iss::S1PTW | 0x01, false),
            IpaSource::Translate
        );
        // External aborts: FAR may be invalid, and a walk must not be repeated.
        assert_eq!(ipa_source(DABT | 0x10, false), IpaSource::Translate);
        assert_eq!(
            ipa_source(DABT | 0x10 | iss::FNV, false),
            IpaSource::Unknown
        );
        assert_eq!(
            ipa_source(DABT | 0x14 | iss::S1PTW, false),
            IpaSource::Unknown
        );
        // An abort or ECC error on a walk, stage 1's or stage 2's, at every level: AT
        // would walk again (and an abort of AT is taken at EL2).
        for fsc in [
            0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f,
        ] {
            for s1ptw in [0, iss::S1PTW] {
                assert_eq!(
                    ipa_source(DABT | fsc | s1ptw, false),
                    IpaSource::Unknown,
                    "{fsc:#x} {s1ptw:#x}"
                );
                assert_eq!(ipa_source(DABT | fsc | s1ptw, true), IpaSource::Unknown);
            }
        }
        // A parity/ECC error on the access itself: the walk went fine.
        assert_eq!(ipa_source(DABT | 0x18, false), IpaSource::Translate);
        assert_eq!(ipa_source(DABT | 0x11, false), IpaSource::Translate);
    }

    #[test]
    fn erratum_834220_rewalks_everything_but_walk_faults() {
        for fsc in [0x04, 0x07, 0x08, 0x00, 0x0c] {
            assert_eq!(
                ipa_source(DABT | fsc, true),
                IpaSource::Translate,
                "{fsc:#x}"
            );
        }
        assert_eq!(ipa_source(DABT | iss::S1PTW | 0x05, true), IpaSource::Hpfar);
        // QEMU's cortex-a57 is r1p0; r1p3 and later are fixed; other parts never.
        assert!(erratum_834220(0x411f_d070));
        assert!(erratum_834220(0x410f_d071));
        assert!(erratum_834220(0x411f_d072));
        assert!(!erratum_834220(0x411f_d073));
        assert!(!erratum_834220(0x412f_d070));
        assert!(!erratum_834220(0x413f_d0c0), "Neoverse-N1");
        assert!(!erratum_834220(0x000f_0510), "QEMU max");
    }

    #[test]
    fn ipa_arithmetic() {
        assert_eq!(
            ipa_from_hpfar(0x4_7e000 << 4, 0xffff_8000_1234_5abc),
            0x4_7e00_0abc
        );
        // RES0 bits above FIPA (e.g. NS, bit 63) do not leak in.
        assert_eq!(ipa_from_hpfar(1 << 63 | 0x10, 0), 0x1000);
        assert_eq!(
            ipa_from_par(0x0000_0000_7e00_0000 | 0xff << 56, 0x123),
            Some(0x7e00_0123)
        );
        assert_eq!(ipa_from_par(0x7e00_0001, 0x123), None);
    }

    #[test]
    fn only_translation_and_access_flag_faults_are_retried() {
        let dabt = |fsc: u64| (0x24u64 << 26) | fsc;
        for fsc in [0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b] {
            assert!(may_be_transient(dabt(fsc)), "FSC {fsc:#x}");
        }
        // Permission, TLB conflict, unsupported atomic/exclusive, external abort, address
        // size: the same fault again on every retry.
        for fsc in [0x0c, 0x0f, 0x30, 0x31, 0x35, 0x10, 0x00] {
            assert!(!may_be_transient(dabt(fsc)), "FSC {fsc:#x}");
        }
    }
}
