//! The stage-2 descriptor's field layout (VMSAv8-64, 48-bit OA, `HCR_EL2.FWB = 0`),
//! declared once with `bitfield-struct`, and the masks the table code derives from it.
//! No logic: the meaning of each field is in the parent module's table.

use bitfield_struct::bitfield;

/// A stage-2 descriptor, field by field (block, page or table; table descriptors use only
/// `valid`, `table_or_page` and `oa` as declared here, and keep Warden's count of valid
/// entries in bits the walkers ignore: see the parent module's `TABLE_COUNT_MASK`).
#[bitfield(u64)]
pub(super) struct S2Desc {
    /// Bit 0: valid.
    pub(super) valid: bool,
    /// Bit 1: 1 = table (L0–L2) or page (L3), 0 = block.
    pub(super) table_or_page: bool,
    /// Bits 5:2: MemAttr.
    #[bits(4)]
    pub(super) memattr: u8,
    /// Bit 6: `S2AP[0]`, reads allowed.
    pub(super) s2ap_read: bool,
    /// Bit 7: `S2AP[1]`, writes allowed.
    pub(super) s2ap_write: bool,
    /// Bits 9:8: shareability.
    #[bits(2)]
    pub(super) sh: u8,
    /// Bit 10: access flag.
    pub(super) af: bool,
    /// Bit 11: reserved (FEAT_BBM nT): 0.
    #[bits(1)]
    __: u8,
    /// Bits 47:12: output address or next-level table, in 4 KiB units.
    #[bits(36)]
    pub(super) oa: u64,
    /// Bits 50:48: output address bits of 52-bit OA: 0.
    #[bits(3)]
    __: u8,
    /// Bit 51: dirty bit modifier.
    pub(super) dbm: bool,
    /// Bit 52: contiguous hint.
    pub(super) contiguous: bool,
    /// Bits 54:53: `XN[1:0]`.
    #[bits(2)]
    pub(super) xn: u8,
    /// Bits 58:55: software use.
    #[bits(4)]
    pub(super) sw: u8,
    /// Bits 63:59: ignored / PBHA: 0.
    #[bits(5)]
    __: u8,
}

/// The bits of a field at `offset`, `bits` wide (less than 64).
const fn field(offset: usize, bits: usize) -> u64 {
    ((1u64 << bits) - 1) << offset
}

pub(super) const DESC_VALID: u64 = field(S2Desc::VALID_OFFSET, S2Desc::VALID_BITS);
pub(super) const DESC_TABLE_OR_PAGE: u64 =
    field(S2Desc::TABLE_OR_PAGE_OFFSET, S2Desc::TABLE_OR_PAGE_BITS);
pub(super) const MEMATTR_MASK: u64 = field(S2Desc::MEMATTR_OFFSET, S2Desc::MEMATTR_BITS);
pub(super) const MEMATTR_NORMAL_WB: u64 = 0b1111 << S2Desc::MEMATTR_OFFSET;
pub(super) const MEMATTR_DEVICE_NGNRE: u64 = 0b0001 << S2Desc::MEMATTR_OFFSET;
pub(super) const S2AP_READ: u64 = field(S2Desc::S2AP_READ_OFFSET, S2Desc::S2AP_READ_BITS);
pub(super) const S2AP_WRITE: u64 = field(S2Desc::S2AP_WRITE_OFFSET, S2Desc::S2AP_WRITE_BITS);
pub(super) const SH_MASK: u64 = field(S2Desc::SH_OFFSET, S2Desc::SH_BITS);
pub(super) const SH_INNER: u64 = 0b11 << S2Desc::SH_OFFSET;
pub(super) const AF: u64 = field(S2Desc::AF_OFFSET, S2Desc::AF_BITS);
pub(super) const CONTIGUOUS: u64 = field(S2Desc::CONTIGUOUS_OFFSET, S2Desc::CONTIGUOUS_BITS);
pub(super) const XN_MASK: u64 = field(S2Desc::XN_OFFSET, S2Desc::XN_BITS);
/// `XN[1]`: execute never at EL1 and EL0.
pub(super) const XN: u64 = 0b10 << S2Desc::XN_OFFSET;
pub(super) const SW_SHIFT: u32 = S2Desc::SW_OFFSET as u32;
pub(super) const SW_MASK: u64 = field(S2Desc::SW_OFFSET, S2Desc::SW_BITS);
/// Output address / next-level table address, 48-bit OA.
pub(super) const OA_MASK: u64 = field(S2Desc::OA_OFFSET, S2Desc::OA_BITS);

#[cfg(test)]
mod tests {
    use super::*;

    /// The declaration matches the Arm ARM's bit positions (D8.3, stage-2 block and page
    /// descriptors), written out independently.
    #[test]
    fn fields_sit_where_the_architecture_puts_them() {
        assert_eq!(DESC_VALID, 1 << 0);
        assert_eq!(DESC_TABLE_OR_PAGE, 1 << 1);
        assert_eq!(MEMATTR_MASK, 0xf << 2);
        assert_eq!(S2AP_READ, 1 << 6);
        assert_eq!(S2AP_WRITE, 1 << 7);
        assert_eq!(SH_MASK, 0b11 << 8);
        assert_eq!(AF, 1 << 10);
        assert_eq!(OA_MASK, 0x0000_ffff_ffff_f000);
        assert_eq!(CONTIGUOUS, 1 << 52);
        assert_eq!(XN_MASK, 0b11 << 53);
        assert_eq!(XN, 1 << 54);
        assert_eq!(SW_MASK, 0xf << 55);
        let d = S2Desc::new()
            .with_valid(true)
            .with_oa(0x8_0000)
            .with_sw(0xa)
            .with_dbm(false);
        assert_eq!(d.into_bits(), 1 | 0x8000_0000 | (0xa << 55));
    }
}
