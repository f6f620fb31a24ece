//! SMMUv3 register map (Arm IHI 0070, chapter 6): offsets from the SMMU base and field
//! constants. No logic here; [`super`] decodes and programs.
//!
//! Page 0 (`base .. base + 64 KiB`) holds the control registers; page 1
//! (`base + 64 KiB ..`) holds the event and PRI queue indices that software consumes
//! (`EVENTQ_PROD` / `EVENTQ_CONS` at `0x100A8` / `0x100AC`).
//!
//! Field constants are either single-bit masks (`*_BIT`-like names without a suffix) or a
//! `(SHIFT, MASK)` pair where `MASK` is right-aligned (`value = (reg >> SHIFT) & MASK`).

// ----------------------------------------------------------------------------------------
// Offsets (32-bit unless noted).

/// Identification register 0: stages, table formats, coherency, BTM, MSI, stream table levels.
pub const IDR0: usize = 0x0000;
/// Identification register 1: StreamID size, queue sizes.
pub const IDR1: usize = 0x0004;
/// Identification register 2: VATOS page.
pub const IDR2: usize = 0x0008;
/// Identification register 3: range invalidation, BBM level, XNX.
pub const IDR3: usize = 0x000C;
/// Identification register 4: implementation defined.
pub const IDR4: usize = 0x0010;
/// Identification register 5: output address size, granules.
pub const IDR5: usize = 0x0014;
/// Implementation identification.
pub const IIDR: usize = 0x0018;
/// Architecture version (SMMUv3.x).
pub const AIDR: usize = 0x001C;
/// Global control 0: enables.
pub const CR0: usize = 0x0020;
/// Acknowledges `CR0` writes: reads back the enables once they took effect.
pub const CR0ACK: usize = 0x0024;
/// Global control 1: table and queue memory attributes.
pub const CR1: usize = 0x0028;
/// Global control 2: PTM, RECINVSID, E2H.
pub const CR2: usize = 0x002C;
/// Status.
pub const STATUSR: usize = 0x0040;
/// Global bypass attributes: what happens to transactions while `SMMUEN = 0`.
pub const GBPA: usize = 0x0044;
/// Alternate global bypass attributes (implementation defined).
pub const AGBPA: usize = 0x0048;
/// Interrupt enables.
pub const IRQ_CTRL: usize = 0x0050;
/// Acknowledges `IRQ_CTRL` writes.
pub const IRQ_CTRLACK: usize = 0x0054;
/// Global errors: a bit differs from `GERRORN` while that error is active.
pub const GERROR: usize = 0x0060;
/// Global errors acknowledged: software toggles bits to match `GERROR`.
pub const GERRORN: usize = 0x0064;
/// GERROR MSI address (64-bit).
pub const GERROR_IRQ_CFG0: usize = 0x0068;
/// Stream table base address (64-bit).
pub const STRTAB_BASE: usize = 0x0080;
/// Stream table format and size.
pub const STRTAB_BASE_CFG: usize = 0x0088;
/// Command queue base address and size (64-bit).
pub const CMDQ_BASE: usize = 0x0090;
/// Command queue producer index (written by software).
pub const CMDQ_PROD: usize = 0x0098;
/// Command queue consumer index and error code (written by the SMMU).
pub const CMDQ_CONS: usize = 0x009C;
/// Event queue base address and size (64-bit).
pub const EVENTQ_BASE: usize = 0x00A0;
/// Event queue MSI address (64-bit).
pub const EVENTQ_IRQ_CFG0: usize = 0x00B0;
/// PRI queue base address and size (64-bit).
pub const PRIQ_BASE: usize = 0x00C0;
/// Event queue producer index (written by the SMMU), page 1.
pub const EVENTQ_PROD: usize = 0x100A8;
/// Event queue consumer index (written by software), page 1.
pub const EVENTQ_CONS: usize = 0x100AC;
/// Size of the register frame (two 64 KiB pages).
pub const FRAME_SIZE: usize = 0x20000;

// ----------------------------------------------------------------------------------------
// IDR0.

/// Stage-2 translation supported.
pub const IDR0_S2P: u32 = 1 << 0;
/// Stage-1 translation supported.
pub const IDR0_S1P: u32 = 1 << 1;
/// Translation table formats: 0b01 AArch32, 0b10 AArch64, 0b11 both.
pub const IDR0_TTF: (u32, u32) = (2, 0b11);
/// `TTF` bit meaning AArch64 tables are supported.
pub const IDR0_TTF_AARCH64: u32 = 0b10;
/// Coherent access to tables, queues and MSIs.
pub const IDR0_COHACC: u32 = 1 << 4;
/// Broadcast TLB maintenance supported.
pub const IDR0_BTM: u32 = 1 << 5;
/// Hardware translation table update: 0 none, 1 access flag, 2 access flag and dirty.
pub const IDR0_HTTU: (u32, u32) = (6, 0b11);
/// EL2 (hypervisor) StreamWorld and the `TLBI_EL2_*` commands supported.
pub const IDR0_HYP: u32 = 1 << 9;
/// PCIe ATS supported.
pub const IDR0_ATS: u32 = 1 << 10;
/// 16-bit ASIDs.
pub const IDR0_ASID16: u32 = 1 << 12;
/// MSIs supported (including `CMD_SYNC` completion by MSI write).
pub const IDR0_MSI: u32 = 1 << 13;
/// `CMD_SYNC` completion can send an event (SEV).
pub const IDR0_SEV: u32 = 1 << 14;
/// 16-bit VMIDs.
pub const IDR0_VMID16: u32 = 1 << 18;
/// Table endianness: 0b00 mixed, 0b01 reserved, 0b10 little, 0b11 big.
pub const IDR0_TTENDIAN: (u32, u32) = (21, 0b11);
/// `TTENDIAN`: either endianness, per STE.
pub const IDR0_TTENDIAN_MIXED: u32 = 0b00;
/// `TTENDIAN`: little-endian walks only.
pub const IDR0_TTENDIAN_LE: u32 = 0b10;
/// `TTENDIAN`: big-endian walks only.
pub const IDR0_TTENDIAN_BE: u32 = 0b11;
/// Stall model: 0b00 stall and terminate, 0b01 terminate only, 0b10 stall forced.
pub const IDR0_STALL_MODEL: (u32, u32) = (24, 0b11);
/// `STALL_MODEL`: every fault that can stall does (`STE.S2S` must be 1).
pub const IDR0_STALL_MODEL_FORCE: u32 = 0b10;
/// Stream table levels: 0b00 linear only, 0b01 two-level supported.
pub const IDR0_ST_LEVEL: (u32, u32) = (27, 0b11);
/// `ST_LEVEL` value meaning two-level stream tables are supported.
pub const IDR0_ST_LEVEL_2LVL: u32 = 0b01;

// IIDR.

/// Implementer (JEP106: bits 11:8 continuation code, 6:0 identity code).
pub const IIDR_IMPLEMENTER: (u32, u32) = (0, 0xfff);
/// Revision (the `p` of `rNpM`).
pub const IIDR_REVISION: (u32, u32) = (12, 0xf);
/// Variant (the `r` of `rNpM`).
pub const IIDR_VARIANT: (u32, u32) = (16, 0xf);
/// Product ID.
pub const IIDR_PRODUCTID: (u32, u32) = (20, 0xfff);
/// `IIDR.Implementer` of Arm.
pub const IIDR_IMPLEMENTER_ARM: u32 = 0x43b;
/// `IIDR.ProductID` of Arm's MMU-600.
pub const IIDR_PRODUCTID_MMU_600: u32 = 0x483;
/// `IIDR.ProductID` of Arm's MMU-700.
pub const IIDR_PRODUCTID_MMU_700: u32 = 0x487;

// IDR1.

/// log2 of the number of StreamIDs (0..=32).
pub const IDR1_SIDSIZE: (u32, u32) = (0, 0x3f);
/// log2 of the maximum number of event queue entries.
pub const IDR1_EVENTQS: (u32, u32) = (16, 0x1f);
/// log2 of the maximum number of command queue entries.
pub const IDR1_CMDQS: (u32, u32) = (21, 0x1f);
/// Queue base registers are fixed (preset) by the implementation.
pub const IDR1_QUEUES_PRESET: u32 = 1 << 29;
/// Stream table base registers are fixed by the implementation.
pub const IDR1_TABLES_PRESET: u32 = 1 << 30;

// IDR3.

/// Range invalidation (`TLBI_*` with TG/SCALE/NUM) supported.
pub const IDR3_RIL: u32 = 1 << 10;
/// Break-before-make level.
pub const IDR3_BBML: (u32, u32) = (11, 0b11);

// IDR5.

/// Output address size: 0 → 32, 1 → 36, 2 → 40, 3 → 42, 4 → 44, 5 → 48, 6 → 52 bits.
pub const IDR5_OAS: (u32, u32) = (0, 0b111);
/// 4 KiB translation granule.
pub const IDR5_GRAN4K: u32 = 1 << 4;
/// 16 KiB translation granule.
pub const IDR5_GRAN16K: u32 = 1 << 5;
/// 64 KiB translation granule.
pub const IDR5_GRAN64K: u32 = 1 << 6;

// ----------------------------------------------------------------------------------------
// CR0 / CR0ACK.

/// SMMU enable: translate (else `GBPA` applies).
pub const CR0_SMMUEN: u32 = 1 << 0;
/// PRI queue enable.
pub const CR0_PRIQEN: u32 = 1 << 1;
/// Event queue enable.
pub const CR0_EVENTQEN: u32 = 1 << 2;
/// Command queue enable.
pub const CR0_CMDQEN: u32 = 1 << 3;
/// ATS-translated transactions are checked against their STE (`EATS`) instead of
/// passing unchecked (only with `IDR0.ATS`).
pub const CR0_ATSCHK: u32 = 1 << 4;

// CR1: memory attributes the SMMU uses for its own accesses.

/// Queue inner cacheability (`CR1_CACHE_*`).
pub const CR1_QUEUE_IC: (u32, u32) = (0, 0b11);
/// Queue outer cacheability.
pub const CR1_QUEUE_OC: (u32, u32) = (2, 0b11);
/// Queue shareability (`CR1_SH_*`).
pub const CR1_QUEUE_SH: (u32, u32) = (4, 0b11);
/// Table inner cacheability.
pub const CR1_TABLE_IC: (u32, u32) = (6, 0b11);
/// Table outer cacheability.
pub const CR1_TABLE_OC: (u32, u32) = (8, 0b11);
/// Table shareability.
pub const CR1_TABLE_SH: (u32, u32) = (10, 0b11);
/// Non-cacheable.
pub const CR1_CACHE_NC: u32 = 0b00;
/// Write-back cacheable.
pub const CR1_CACHE_WB: u32 = 0b01;
/// Outer shareable.
pub const CR1_SH_OSH: u32 = 0b10;
/// Inner shareable.
pub const CR1_SH_ISH: u32 = 0b11;

// CR2.

/// EL2-E2H StreamWorld (Warden runs with `HCR_EL2.E2H = 0`: keep clear).
pub const CR2_E2H: u32 = 1 << 0;
/// Record `C_BAD_STREAMID` events for StreamIDs outside the stream table.
pub const CR2_RECINVSID: u32 = 1 << 1;
/// Private TLB maintenance: set = ignore the CPUs' broadcast TLBIs.
pub const CR2_PTM: u32 = 1 << 2;

// GBPA.

/// Set with the new value; the SMMU clears it once the update took effect.
pub const GBPA_UPDATE: u32 = 1 << 31;
/// Abort every transaction while `SMMUEN = 0` (instead of passing it through).
pub const GBPA_ABORT: u32 = 1 << 20;

// IRQ_CTRL / IRQ_CTRLACK.

/// GERROR interrupt enable.
pub const IRQ_CTRL_GERROR: u32 = 1 << 0;
/// PRI queue interrupt enable.
pub const IRQ_CTRL_PRIQ: u32 = 1 << 1;
/// Event queue interrupt enable.
pub const IRQ_CTRL_EVENTQ: u32 = 1 << 2;

// GERROR / GERRORN.

/// Command queue error: `CMDQ_CONS.ERR` says which.
pub const GERROR_CMDQ_ERR: u32 = 1 << 0;
/// Event queue write aborted (or, on QEMU, the queue was full or disabled).
pub const GERROR_EVTQ_ABT_ERR: u32 = 1 << 2;
/// PRI queue write aborted.
pub const GERROR_PRIQ_ABT_ERR: u32 = 1 << 3;
/// `CMD_SYNC` MSI write aborted.
pub const GERROR_MSI_CMDQ_ABT_ERR: u32 = 1 << 4;
/// Event queue MSI write aborted.
pub const GERROR_MSI_EVTQ_ABT_ERR: u32 = 1 << 5;
/// PRI queue MSI write aborted.
pub const GERROR_MSI_PRIQ_ABT_ERR: u32 = 1 << 6;
/// GERROR MSI write aborted.
pub const GERROR_MSI_GERROR_ABT_ERR: u32 = 1 << 7;
/// Service failure mode: the SMMU stopped.
pub const GERROR_SFM_ERR: u32 = 1 << 8;
/// Every architected GERROR bit.
pub const GERROR_ALL: u32 = 0x1fd;

// STRTAB_BASE / STRTAB_BASE_CFG.

/// Read-allocate hint for stream table accesses.
pub const STRTAB_BASE_RA: u64 = 1 << 62;
/// Stream table address bits (51:6).
pub const STRTAB_BASE_ADDR_MASK: u64 = 0x000f_ffff_ffff_ffc0;
/// log2 of the number of STEs the table covers.
pub const STRTAB_BASE_CFG_LOG2SIZE: (u32, u32) = (0, 0x3f);
/// StreamID bits resolved by the level-2 tables.
pub const STRTAB_BASE_CFG_SPLIT: (u32, u32) = (6, 0x1f);
/// Table format (`STRTAB_FMT_*`).
pub const STRTAB_BASE_CFG_FMT: (u32, u32) = (16, 0b11);
/// Linear stream table.
pub const STRTAB_FMT_LINEAR: u32 = 0;
/// Two-level stream table.
pub const STRTAB_FMT_2LVL: u32 = 1;

// Level-1 stream table descriptor (64 bits).

/// log2(number of STEs in the level-2 table) + 1; 0 = no level-2 table.
pub const L1STD_SPAN: (u32, u64) = (0, 0x1f);
/// Level-2 table address bits (51:6).
pub const L1STD_L2PTR_MASK: u64 = 0x000f_ffff_ffff_ffc0;

// CMDQ_BASE / EVENTQ_BASE, PROD / CONS.

/// Read-allocate (command queue) / write-allocate (event queue) hint.
pub const Q_BASE_ALLOC_HINT: u64 = 1 << 62;
/// Queue address bits (51:5).
pub const Q_BASE_ADDR_MASK: u64 = 0x000f_ffff_ffff_ffe0;
/// log2 of the number of entries.
pub const Q_BASE_LOG2SIZE: (u32, u64) = (0, 0x1f);
/// `CMDQ_CONS.ERR`: the error code of the command at `CONS` (`CERROR_*`).
pub const CMDQ_CONS_ERR: (u32, u32) = (24, 0x7f);
/// `EVENTQ_PROD.OVFLG`: toggled when events were lost.
pub const EVENTQ_PROD_OVFLG: u32 = 1 << 31;
/// `EVENTQ_CONS.OVACKFLG`: software sets it to `OVFLG` to acknowledge.
pub const EVENTQ_CONS_OVACKFLG: u32 = 1 << 31;

/// No error.
pub const CERROR_NONE: u32 = 0;
/// Illegal command (unknown opcode, bad field).
pub const CERROR_ILL: u32 = 1;
/// Abort while fetching the command.
pub const CERROR_ABT: u32 = 2;
/// ATC invalidation timed out before a `CMD_SYNC`.
pub const CERROR_ATC_INV_SYNC: u32 = 3;
