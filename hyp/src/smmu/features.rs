//! What an SMMU implements, decoded from its ID registers.

use super::regs::*;
use crate::s2mmu::Granule;
use core::fmt;
use tock_registers::LocalRegisterCopy;

/// Most commands an MMU-700 may be given between two `CMD_SYNC`s (erratum 2812531, as
/// Linux works around it).
pub const MMU700_SYNC_EVERY: u32 = 63;

/// Features of one SMMU (`IDR0`, `IDR1`, `IDR3`, `IDR5`, `AIDR`), less what the
/// implementation's errata (`IIDR`, [`Features::with_iidr`]) make unusable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Features {
    /// Stage-1 translation (`IDR0.S1P`).
    pub s1p: bool,
    /// Stage-2 translation (`IDR0.S2P`): required.
    pub s2p: bool,
    /// AArch64 translation tables (`IDR0.TTF`): required.
    pub ttf_aarch64: bool,
    /// Coherent table, queue and MSI accesses (`IDR0.COHACC`).
    pub cohacc: bool,
    /// Broadcast TLB maintenance (`IDR0.BTM`).
    pub btm: bool,
    /// Hardware access flag / dirty state updates (`IDR0.HTTU`: 0, 1 = AF, 2 = AF + dirty).
    pub httu: u8,
    /// EL2 StreamWorld and `TLBI_EL2_*` (`IDR0.HYP`).
    pub hyp: bool,
    /// PCIe ATS (`IDR0.ATS`).
    pub ats: bool,
    /// MSIs, including `CMD_SYNC` completion by MSI write (`IDR0.MSI`).
    pub msi: bool,
    /// `CMD_SYNC` completion by SEV (`IDR0.SEV`).
    pub sev: bool,
    /// 16-bit VMIDs (`IDR0.VMID16`); 8-bit otherwise.
    pub vmid16: bool,
    /// 16-bit ASIDs (`IDR0.ASID16`).
    pub asid16: bool,
    /// Two-level stream tables (`IDR0.ST_LEVEL`).
    pub two_level_st: bool,
    /// StreamID bits (`IDR1.SIDSIZE`).
    pub sidsize: u32,
    /// log2 of the largest command queue (`IDR1.CMDQS`).
    pub cmdqs: u32,
    /// log2 of the largest event queue (`IDR1.EVENTQS`).
    pub eventqs: u32,
    /// Range invalidation (`IDR3.RIL`).
    pub ril: bool,
    /// Break-before-make level (`IDR3.BBML`).
    pub bbml: u8,
    /// Output address size encoding (`IDR5.OAS`, same as `STE.S2PS`).
    pub oas: u8,
    /// Output address size in bits.
    pub oas_bits: u32,
    /// 4 KiB granule (`IDR5.GRAN4K`).
    pub gran4k: bool,
    /// 16 KiB granule (`IDR5.GRAN16K`).
    pub gran16k: bool,
    /// 64 KiB granule (`IDR5.GRAN64K`).
    pub gran64k: bool,
    /// Architecture minor version (`AIDR`): 0 for SMMUv3.0, 1 for v3.1, …
    pub minor: u8,
    /// `IDR0.STALL_MODEL`: 0b00 stall and terminate, 0b01 terminate only, 0b10 stall
    /// forced (Warden refuses that one), 0b11 reserved.
    pub stall_model: u8,
    /// `IDR0.TTENDIAN`: 0b00 mixed, 0b10 little-endian, 0b11 big-endian (refused),
    /// 0b01 reserved (refused).
    pub ttendian: u8,
    /// `IIDR` as read (0 until [`Features::with_iidr`]).
    pub iidr: u32,
    /// Most commands between two `CMD_SYNC`s, 0 for no limit ([`MMU700_SYNC_EVERY`] on
    /// an MMU-700).
    pub sync_every: u32,
}

/// Output address bits of an `IDR5.OAS` / `S2PS` encoding (52 for anything larger).
pub const fn oas_bits(oas: u8) -> u32 {
    match oas {
        0 => 32,
        1 => 36,
        2 => 40,
        3 => 42,
        4 => 44,
        5 => 48,
        _ => 52,
    }
}

impl Features {
    /// Decodes the ID registers.
    pub fn decode(idr0: u32, idr1: u32, idr3: u32, idr5: u32, aidr: u32) -> Self {
        let idr0 = LocalRegisterCopy::<u32, IDR0::Register>::new(idr0);
        let idr1 = LocalRegisterCopy::<u32, IDR1::Register>::new(idr1);
        let idr3 = LocalRegisterCopy::<u32, IDR3::Register>::new(idr3);
        let idr5 = LocalRegisterCopy::<u32, IDR5::Register>::new(idr5);
        let aidr = LocalRegisterCopy::<u32, AIDR::Register>::new(aidr);
        let oas = idr5.read(IDR5::OAS) as u8;
        Self {
            s1p: idr0.is_set(IDR0::S1P),
            s2p: idr0.is_set(IDR0::S2P),
            ttf_aarch64: idr0.any_matching_bits_set(IDR0::TTF::AArch64),
            cohacc: idr0.is_set(IDR0::COHACC),
            btm: idr0.is_set(IDR0::BTM),
            httu: idr0.read(IDR0::HTTU) as u8,
            hyp: idr0.is_set(IDR0::HYP),
            ats: idr0.is_set(IDR0::ATS),
            msi: idr0.is_set(IDR0::MSI),
            sev: idr0.is_set(IDR0::SEV),
            vmid16: idr0.is_set(IDR0::VMID16),
            asid16: idr0.is_set(IDR0::ASID16),
            two_level_st: idr0.matches_all(IDR0::ST_LEVEL::TwoLevel),
            sidsize: idr1.read(IDR1::SIDSIZE),
            cmdqs: idr1.read(IDR1::CMDQS),
            eventqs: idr1.read(IDR1::EVENTQS),
            ril: idr3.is_set(IDR3::RIL),
            bbml: idr3.read(IDR3::BBML) as u8,
            oas,
            oas_bits: oas_bits(oas),
            gran4k: idr5.is_set(IDR5::GRAN4K),
            gran16k: idr5.is_set(IDR5::GRAN16K),
            gran64k: idr5.is_set(IDR5::GRAN64K),
            minor: aidr.read(AIDR::ARCHMINORREV) as u8,
            stall_model: idr0.read(IDR0::STALL_MODEL) as u8,
            ttendian: idr0.read(IDR0::TTENDIAN) as u8,
            iidr: 0,
            sync_every: 0,
        }
    }

    /// Records `IIDR` and drops what the implementation's errata make unusable, as Linux
    /// does: Arm MMU-600 r0p0..r0p2 (erratum 1076982) loses `SEV` (`CMD_SYNC`
    /// completion is then polled); Arm MMU-700 (erratum 2812531) loses `BTM` and gets a
    /// `CMD_SYNC` at least every [`MMU700_SYNC_EVERY`] commands. (Linux's other
    /// MMU-600/700 quirks, errata 1209401 and 2268618, concern nested translation, which
    /// Warden does not use.)
    pub fn with_iidr(mut self, iidr: u32) -> Self {
        self.iidr = iidr;
        let id = LocalRegisterCopy::<u32, IIDR::Register>::new(iidr);
        if !id.matches_all(IIDR::IMPLEMENTER::Arm) {
            return self;
        }
        match id.read_as_enum(IIDR::PRODUCTID) {
            Some(IIDR::PRODUCTID::Value::Mmu600)
                if id.read(IIDR::VARIANT) == 0 && id.read(IIDR::REVISION) <= 2 =>
            {
                self.sev = false;
            }
            Some(IIDR::PRODUCTID::Value::Mmu700) => {
                self.btm = false;
                self.sync_every = MMU700_SYNC_EVERY;
            }
            _ => {}
        }
        self
    }

    /// Arm's product name when `IIDR` names one (`"MMU-600"`, `"MMU-700"`).
    pub fn arm_product(&self) -> Option<&'static str> {
        let id = LocalRegisterCopy::<u32, IIDR::Register>::new(self.iidr);
        if !id.matches_all(IIDR::IMPLEMENTER::Arm) {
            return None;
        }
        match id.read_as_enum(IIDR::PRODUCTID)? {
            IIDR::PRODUCTID::Value::Mmu600 => Some("MMU-600"),
            IIDR::PRODUCTID::Value::Mmu700 => Some("MMU-700"),
        }
    }

    /// Whether stage-2 tables with this granule can be walked.
    pub const fn supports(&self, granule: Granule) -> bool {
        match granule {
            Granule::Size4K => self.gran4k,
            Granule::Size16K => self.gran16k,
            Granule::Size64K => self.gran64k,
        }
    }

    /// Largest VMID.
    pub const fn max_vmid(&self) -> u16 {
        if self.vmid16 {
            u16::MAX
        } else {
            u8::MAX as u16
        }
    }
}

/// One line for the boot banner, e.g. `SMMUv3.0 S2 S1 AArch64 coherent RIL VMID16 …`.
impl fmt::Display for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SMMUv3.{}", self.minor)?;
        let flags = [
            (self.s2p, "S2"),
            (self.s1p, "S1"),
            (self.ttf_aarch64, "AArch64"),
            (self.cohacc, "coherent"),
            (self.btm, "BTM"),
            (self.httu != 0, "HTTU"),
            (self.hyp, "HYP"),
            (self.ats, "ATS"),
            (self.msi, "MSI"),
            (self.sev, "SEV"),
            (self.ril, "RIL"),
            (self.vmid16, "VMID16"),
            (self.asid16, "ASID16"),
            (self.two_level_st, "2-level-ST"),
        ];
        for (on, name) in flags {
            if on {
                write!(f, " {name}")?;
            }
        }
        write!(
            f,
            ", SID {} bits, cmdq 2^{}, evtq 2^{}, OAS {} bits, granules",
            self.sidsize, self.cmdqs, self.eventqs, self.oas_bits
        )?;
        for (on, name) in [
            (self.gran4k, "4K"),
            (self.gran16k, "16K"),
            (self.gran64k, "64K"),
        ] {
            if on {
                write!(f, " {name}")?;
            }
        }
        if let Some(name) = self.arm_product() {
            let id = LocalRegisterCopy::<u32, IIDR::Register>::new(self.iidr);
            write!(
                f,
                ", Arm {name} r{}p{}",
                id.read(IIDR::VARIANT),
                id.read(IIDR::REVISION)
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    /// The values QEMU 10.0's `virt` SMMU reports (QEMU.md §4).
    #[test]
    fn decodes_qemu_virt() {
        let f = Features::decode(0x0D44_101B, 0x0273_0010, 0x1414, 0x74, 0);
        assert!(f.s2p && f.s1p && f.ttf_aarch64 && f.cohacc);
        assert!(!f.btm && !f.msi && !f.sev && !f.hyp);
        assert!(f.vmid16 && f.asid16 && f.two_level_st && f.ril);
        assert_eq!((f.sidsize, f.cmdqs, f.eventqs), (16, 19, 19));
        assert_eq!((f.oas, f.oas_bits), (4, 44));
        assert!(f.gran4k && f.gran16k && f.gran64k);
        assert_eq!(f.bbml, 2);
        assert_eq!(
            f.to_string(),
            "SMMUv3.0 S2 S1 AArch64 coherent RIL VMID16 ASID16 2-level-ST, SID 16 bits, \
             cmdq 2^19, evtq 2^19, OAS 44 bits, granules 4K 16K 64K"
        );
    }

    #[test]
    fn decodes_stall_model_endianness_and_errata() {
        let idr0 = 0b1001 | (IDR0::BTM::SET + IDR0::SEV::SET).value | (0b10 << 24) | (0b11 << 21);
        let f = Features::decode(idr0, 0, 0, 0, 0);
        assert_eq!((f.stall_model, f.ttendian), (0b10, 0b11));
        assert!(f.btm && f.sev && f.sync_every == 0);
        // MMU-700 r1p0: no BTM, CMD_SYNC every 63 commands; SEV kept.
        let mmu700 = f.with_iidr(0x4871_043b);
        assert!(!mmu700.btm && mmu700.sev);
        assert_eq!(mmu700.sync_every, 63);
        assert_eq!(mmu700.arm_product(), Some("MMU-700"));
        assert!(mmu700.to_string().ends_with(", Arm MMU-700 r1p0"));
        // MMU-600 r0p2 loses SEV, r0p3 and r1p0 keep it; BTM stays.
        for (iidr, sev) in [
            (0x4830_243b, false),
            (0x4830_343b, true),
            (0x4831_043b, true),
        ] {
            let g = f.with_iidr(iidr);
            assert_eq!((g.sev, g.btm, g.sync_every), (sev, true, 0), "{iidr:#x}");
        }
        // Another implementer with the same product number: nothing applies.
        let other = f.with_iidr(0x4870_0001);
        assert!(other.btm && other.sev && other.arm_product().is_none());
    }

    #[test]
    fn decodes_small_linear_smmu() {
        let f = Features::decode(0b1001, 8 | (4 << 21) | (3 << 16), 0, 0x10 | 2, 0x2);
        assert!(f.s2p && !f.s1p && f.ttf_aarch64 && !f.two_level_st && !f.vmid16);
        assert_eq!((f.sidsize, f.cmdqs, f.eventqs, f.oas_bits), (8, 4, 3, 40));
        assert_eq!(f.max_vmid(), 255);
        assert!(f.supports(Granule::Size4K) && !f.supports(Granule::Size64K));
        assert_eq!(f.minor, 2);
    }
}
