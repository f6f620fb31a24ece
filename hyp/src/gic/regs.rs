//! GICv3 ITS and redistributor register offsets and fields Warden interprets (GIC
//! architecture specification, IHI 0069). No logic here.

/// Size of one GIC register frame.
pub const FRAME: u64 = 0x1_0000;

/// ITS control frame (`GITS_*`, offsets from the ITS base).
pub mod gits {
    /// Control: Enabled (bit 0), Quiescent (bit 31).
    pub const CTLR: u64 = 0x0000;
    /// Features (64-bit).
    pub const TYPER: u64 = 0x0008;
    /// Command queue base (64-bit).
    pub const CBASER: u64 = 0x0080;
    /// Command queue write offset (64-bit).
    pub const CWRITER: u64 = 0x0088;
    /// Command queue read offset (64-bit).
    pub const CREADR: u64 = 0x0090;
    /// First table base register (eight of them, 64-bit each).
    pub const BASER0: u64 = 0x0100;
    /// Number of `GITS_BASER<n>` registers.
    pub const NR_BASER: usize = 8;

    /// Whether byte offset `off` of the control frame is an architected register that
    /// holds no table address and passes through unchanged: `GITS_CTLR` (read),
    /// `GITS_IIDR`, `GITS_MPAMIDR`, `GITS_PARTIDR`, `GITS_MPIDR`, `GITS_STATUSR`,
    /// `GITS_UMSIR` and the ID registers. The rest (IMPLEMENTATION DEFINED, reserved)
    /// reads as zero and ignores writes.
    pub const fn passthrough(off: u64) -> bool {
        matches!(off, 0x0000..0x0008 | 0x0010..0x0020 | 0x0040..0x0050 | 0xffd0..0x1_0000)
    }

    /// `GITS_CTLR.Enabled`.
    pub const CTLR_ENABLED: u64 = 1 << 0;
    /// `GITS_CTLR.Quiescent`.
    pub const CTLR_QUIESCENT: u64 = 1 << 31;

    /// `GITS_TYPER.Virtual`: GICv4 virtual LPIs.
    pub const TYPER_VIRTUAL: u64 = 1 << 1;
    /// `GITS_TYPER.VMOVP`.
    pub const TYPER_VMOVP: u64 = 1 << 37;
    /// `GITS_TYPER.VSGI` (GICv4.1).
    pub const TYPER_VSGI: u64 = 1 << 39;
    /// `GITS_TYPER.PTA`: RDbase fields are physical addresses (else processor numbers).
    pub const TYPER_PTA: u64 = 1 << 19;
    /// `GITS_TYPER.ITT_entry_size` (bytes − 1), bits 7:4.
    pub const fn typer_ite_size(typer: u64) -> u64 {
        ((typer >> 4) & 0xf) + 1
    }
    /// `GITS_TYPER.Devbits` (DeviceID bits − 1), bits 17:13.
    pub const fn typer_dev_bits(typer: u64) -> u64 {
        ((typer >> 13) & 0x1f) + 1
    }
    /// Collection ID bits: `GITS_TYPER.CIDbits` + 1 (bits 35:32) if `CIL` (bit 36), else 16.
    pub const fn typer_cid_bits(typer: u64) -> u64 {
        if typer & (1 << 36) != 0 {
            ((typer >> 32) & 0xf) + 1
        } else {
            16
        }
    }
    /// `GITS_BASER<n>`.Entry_Size (bytes − 1), bits 52:48.
    pub const fn baser_entry_size(v: u64) -> u64 {
        ((v >> 48) & 0x1f) + 1
    }
    /// `GITS_TYPER.ID_bits` (EventID bits − 1), bits 12:8.
    pub const fn typer_id_bits(typer: u64) -> u64 {
        ((typer >> 8) & 0x1f) + 1
    }

    /// `GITS_CBASER`/`GITS_BASER<n>`.Valid.
    pub const VALID: u64 = 1 << 63;
    /// `GITS_BASER<n>`.Indirect: two-level table.
    pub const BASER_INDIRECT: u64 = 1 << 62;
    /// `GITS_BASER<n>`.Type, bits 58:56.
    pub const fn baser_type(v: u64) -> u64 {
        (v >> 56) & 7
    }
    /// Table of devices.
    pub const TYPE_DEVICES: u64 = 1;
    /// Table of vPEs (GICv4).
    pub const TYPE_VPES: u64 = 2;
    /// Table of interrupt collections.
    pub const TYPE_COLLECTIONS: u64 = 4;
    /// `GITS_BASER<n>`.Page_Size, bits 9:8: 4K, 16K, 64K (64K for the reserved value).
    pub const fn baser_page_size(v: u64) -> u64 {
        match (v >> 8) & 3 {
            0 => 0x1000,
            1 => 0x4000,
            _ => 0x1_0000,
        }
    }
    /// `GITS_BASER<n>`.Page_Size field mask.
    pub const BASER_PAGE_SIZE_MASK: u64 = 3 << 8;
    /// `GITS_BASER<n>`.Size / `GITS_CBASER`.Size (pages − 1), bits 7:0.
    pub const SIZE_MASK: u64 = 0xff;
    /// `GITS_BASER<n>` physical address bits for 4K/16K pages: 47:12 (52-bit PAs with
    /// 64K pages keep PA\[51:48\] in bits 15:12, which Warden does not use).
    pub const BASER_PA_MASK: u64 = 0x0000_ffff_ffff_f000;
    /// `GITS_CBASER` physical address, bits 51:12.
    pub const CBASER_PA_MASK: u64 = 0x000f_ffff_ffff_f000;
    /// `GITS_CWRITER`/`GITS_CREADR` offset, bits 19:5.
    pub const OFFSET_MASK: u64 = 0x000f_ffe0;
    /// `GITS_CREADR.Stalled`.
    pub const CREADR_STALLED: u64 = 1 << 0;
    /// Shareability (bits 11:10) Inner Shareable, as Warden asks for its own structures.
    pub const SH_INNER: u64 = 1 << 10;
    /// Shareability field mask.
    pub const SH_MASK: u64 = 3 << 10;
    /// InnerCache (bits 61:59) read-allocate, write-allocate, write-back.
    pub const INNER_RAWAWB: u64 = 7 << 59;
}

/// ITS commands (32 bytes, four little-endian doublewords; the opcode is DW0\[7:0\]).
pub mod cmd {
    /// Bytes per command.
    pub const SIZE: u64 = 32;
    /// MOVI.
    pub const MOVI: u8 = 0x01;
    /// INT.
    pub const INT: u8 = 0x03;
    /// CLEAR.
    pub const CLEAR: u8 = 0x04;
    /// SYNC (RDbase in DW2).
    pub const SYNC: u8 = 0x05;
    /// MAPD (DeviceID DW0\[63:32\], Size DW1\[4:0\], ITT_addr DW2\[51:8\], V DW2\[63\]).
    pub const MAPD: u8 = 0x08;
    /// MAPC (V DW2\[63\], RDbase DW2\[51:16\], ICID DW2\[15:0\]).
    pub const MAPC: u8 = 0x09;
    /// MAPTI.
    pub const MAPTI: u8 = 0x0a;
    /// MAPI.
    pub const MAPI: u8 = 0x0b;
    /// INV.
    pub const INV: u8 = 0x0c;
    /// INVALL.
    pub const INVALL: u8 = 0x0d;
    /// MOVALL (RDbase1 DW2, RDbase2 DW3).
    pub const MOVALL: u8 = 0x0e;
    /// DISCARD.
    pub const DISCARD: u8 = 0x0f;
    /// `V` bit of MAPD/MAPC (DW2).
    pub const VALID: u64 = 1 << 63;
    /// MAPD ITT_addr, DW2\[51:8\].
    pub const ITT_MASK: u64 = 0x000f_ffff_ffff_ff00;
    /// RDbase field (DW2/DW3 bits 51:16, 52-bit physical addresses), shifted down.
    pub const fn rdbase(dw: u64) -> u64 {
        (dw >> 16) & ((1 << 36) - 1)
    }
}

/// Redistributor RD_base frame (`GICR_*`, offsets from the frame).
pub mod gicr {
    /// Control: EnableLPIs (bit 0).
    pub const CTLR: u64 = 0x0000;
    /// Type (64-bit).
    pub const TYPER: u64 = 0x0008;
    /// LPI property table base (64-bit).
    pub const PROPBASER: u64 = 0x0070;
    /// LPI pending table base (64-bit).
    pub const PENDBASER: u64 = 0x0078;

    /// Whether byte offset `off` of the RD_base frame is an architected register that
    /// passes through unchanged (or, for `GICR_PROPBASER`/`PENDBASER`, is read
    /// unchanged): `GICR_CTLR` (read), `GICR_IIDR`, `GICR_STATUSR`, `GICR_WAKER`,
    /// `GICR_MPAMIDR`, `GICR_PARTIDR`, `GICR_SETLPIR`, `GICR_CLRLPIR`, the LPI table
    /// registers, `GICR_INVLPIR`, `GICR_INVALLR`, `GICR_SYNCR` and the ID registers.
    /// The rest (IMPLEMENTATION DEFINED, reserved) reads as zero and ignores writes.
    pub const fn passthrough(off: u64) -> bool {
        matches!(
            off,
            0x0000..0x0008
                | 0x0010..0x0020
                | 0x0040..0x0050
                | 0x0070..0x0080
                | 0x00a0..0x00a8
                | 0x00b0..0x00b8
                | 0x00c0..0x00c4
                | 0xffd0..0x1_0000
        )
    }

    /// `GICR_CTLR.EnableLPIs`.
    pub const CTLR_ENABLE_LPIS: u64 = 1 << 0;
    /// `GICR_TYPER.VLPIS`: the frame has the GICv4 VLPI_base frame.
    pub const TYPER_VLPIS: u64 = 1 << 1;
    /// `GICR_TYPER.Last`: the last redistributor of its region.
    pub const TYPER_LAST: u64 = 1 << 4;
    /// `GICR_TYPER.RVPEID` (GICv4.1).
    pub const TYPER_RVPEID: u64 = 1 << 7;
    /// `GICR_TYPER.Processor_Number`, bits 23:8.
    pub const fn typer_processor(typer: u64) -> u64 {
        (typer >> 8) & 0xffff
    }
    /// `GICR_PROPBASER.IDbits` (ID bits − 1), bits 4:0.
    pub const fn prop_id_bits(v: u64) -> u64 {
        (v & 0x1f) + 1
    }
    /// `GICR_PROPBASER` physical address, bits 51:12.
    pub const PROP_PA_MASK: u64 = 0x000f_ffff_ffff_f000;
    /// `GICR_PENDBASER` physical address, bits 51:16.
    pub const PEND_PA_MASK: u64 = 0x000f_ffff_ffff_0000;
    /// First LPI INTID.
    pub const LPI_BASE: u64 = 8192;
}
