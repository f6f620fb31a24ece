//! SMMUv3 register map (Arm IHI 0070, chapter 6): the layout of the register frame, the
//! fields of each register, and the register handles the driver passes to its
//! [`SmmuIo`](super::SmmuIo) seam. No logic here; [`super`] decodes and programs.
//!
//! Page 0 (`base .. base + 64 KiB`, [`SmmuPage0`]) holds the control registers; page 1
//! (`base + 64 KiB ..`, [`SmmuPage1`]) holds the event queue indices that software
//! consumes (`EVENTQ_PROD` / `EVENTQ_CONS` at `0x100A8` / `0x100AC`). The frame layout is
//! declared with `tock-registers`' `register_structs!`, which checks every offset and the
//! padding at compile time; fields with `register_bitfields!`.
//!
//! A [`Reg`] handle names one register: its offset in [`SmmuFrame`] (taken with
//! `offset_of!` from the declared layout), its width and its field layout. Only this
//! module creates handles, so an [`SmmuIo`](super::SmmuIo) implementation only ever sees
//! offsets of declared registers inside the frame.

use core::fmt;
use core::marker::PhantomData;
use core::mem::offset_of;
use tock_registers::registers::{ReadOnly, ReadWrite};
use tock_registers::{RegisterLongName, UIntLike, register_bitfields, register_structs};

register_bitfields! {u32,
    /// Identification register 0: stages, table formats, coherency, BTM, MSI, stream
    /// table levels.
    pub IDR0 [
        /// Stage-2 translation supported.
        S2P OFFSET(0) NUMBITS(1) [],
        /// Stage-1 translation supported.
        S1P OFFSET(1) NUMBITS(1) [],
        /// Translation table formats.
        TTF OFFSET(2) NUMBITS(2) [
            /// AArch32 (LPAE) tables only.
            AArch32 = 0b01,
            /// AArch64 tables only.
            AArch64 = 0b10,
            /// Both.
            Both = 0b11
        ],
        /// Coherent access to tables, queues and MSIs.
        COHACC OFFSET(4) NUMBITS(1) [],
        /// Broadcast TLB maintenance supported.
        BTM OFFSET(5) NUMBITS(1) [],
        /// Hardware translation table update: 0 none, 1 access flag, 2 access flag and
        /// dirty.
        HTTU OFFSET(6) NUMBITS(2) [],
        /// EL2 (hypervisor) StreamWorld and the `TLBI_EL2_*` commands supported.
        HYP OFFSET(9) NUMBITS(1) [],
        /// PCIe ATS supported.
        ATS OFFSET(10) NUMBITS(1) [],
        /// 16-bit ASIDs.
        ASID16 OFFSET(12) NUMBITS(1) [],
        /// MSIs supported (including `CMD_SYNC` completion by MSI write).
        MSI OFFSET(13) NUMBITS(1) [],
        /// `CMD_SYNC` completion can send an event (SEV).
        SEV OFFSET(14) NUMBITS(1) [],
        /// 16-bit VMIDs.
        VMID16 OFFSET(18) NUMBITS(1) [],
        /// Table endianness.
        TTENDIAN OFFSET(21) NUMBITS(2) [
            /// Either endianness, per STE.
            Mixed = 0b00,
            /// Little-endian walks only.
            Little = 0b10,
            /// Big-endian walks only.
            Big = 0b11
        ],
        /// Stall model.
        STALL_MODEL OFFSET(24) NUMBITS(2) [
            /// Stall and terminate models both supported.
            StallTerminate = 0b00,
            /// Terminate only.
            Terminate = 0b01,
            /// Every fault that can stall does (`STE.S2S` must be 1).
            Forced = 0b10
        ],
        /// Stream table levels.
        ST_LEVEL OFFSET(27) NUMBITS(2) [
            /// Linear only.
            Linear = 0b00,
            /// Two-level tables supported.
            TwoLevel = 0b01
        ]
    ],

    /// Identification register 1: StreamID size, queue sizes, preset bases.
    pub IDR1 [
        /// log2 of the number of StreamIDs (0..=32).
        SIDSIZE OFFSET(0) NUMBITS(6) [],
        /// log2 of the maximum number of event queue entries.
        EVENTQS OFFSET(16) NUMBITS(5) [],
        /// log2 of the maximum number of command queue entries.
        CMDQS OFFSET(21) NUMBITS(5) [],
        /// Queue base registers are fixed (preset) by the implementation.
        QUEUES_PRESET OFFSET(29) NUMBITS(1) [],
        /// Stream table base registers are fixed by the implementation.
        TABLES_PRESET OFFSET(30) NUMBITS(1) []
    ],

    /// Identification register 3: range invalidation, BBM level.
    pub IDR3 [
        /// Range invalidation (`TLBI_*` with TG/SCALE/NUM) supported.
        RIL OFFSET(10) NUMBITS(1) [],
        /// Break-before-make level.
        BBML OFFSET(11) NUMBITS(2) []
    ],

    /// Identification register 5: output address size, granules.
    pub IDR5 [
        /// Output address size: 0 → 32, 1 → 36, 2 → 40, 3 → 42, 4 → 44, 5 → 48, 6 → 52
        /// bits.
        OAS OFFSET(0) NUMBITS(3) [],
        /// 4 KiB translation granule.
        GRAN4K OFFSET(4) NUMBITS(1) [],
        /// 16 KiB translation granule.
        GRAN16K OFFSET(5) NUMBITS(1) [],
        /// 64 KiB translation granule.
        GRAN64K OFFSET(6) NUMBITS(1) []
    ],

    /// Implementation identification.
    pub IIDR [
        /// Implementer (JEP106: bits 11:8 continuation code, 6:0 identity code).
        IMPLEMENTER OFFSET(0) NUMBITS(12) [
            /// Arm.
            Arm = 0x43b
        ],
        /// Revision (the `p` of `rNpM`).
        REVISION OFFSET(12) NUMBITS(4) [],
        /// Variant (the `r` of `rNpM`).
        VARIANT OFFSET(16) NUMBITS(4) [],
        /// Product ID.
        PRODUCTID OFFSET(20) NUMBITS(12) [
            /// Arm's MMU-600.
            Mmu600 = 0x483,
            /// Arm's MMU-700.
            Mmu700 = 0x487
        ]
    ],

    /// Architecture version (SMMUv3.x).
    pub AIDR [
        /// Minor revision: 0 for SMMUv3.0, 1 for v3.1, …
        ARCHMINORREV OFFSET(0) NUMBITS(4) [],
        /// Major revision (0 for SMMUv3).
        ARCHMAJORREV OFFSET(4) NUMBITS(4) []
    ],

    /// Global control 0 (and `CR0ACK`, which reads back the enables once they took
    /// effect).
    pub CR0 [
        /// SMMU enable: translate (else `GBPA` applies).
        SMMUEN OFFSET(0) NUMBITS(1) [],
        /// PRI queue enable.
        PRIQEN OFFSET(1) NUMBITS(1) [],
        /// Event queue enable.
        EVENTQEN OFFSET(2) NUMBITS(1) [],
        /// Command queue enable.
        CMDQEN OFFSET(3) NUMBITS(1) [],
        /// ATS-translated transactions are checked against their STE (`EATS`) instead of
        /// passing unchecked (only with `IDR0.ATS`).
        ATSCHK OFFSET(4) NUMBITS(1) []
    ],

    /// Global control 1: memory attributes the SMMU uses for its own accesses.
    pub CR1 [
        /// Queue inner cacheability.
        QUEUE_IC OFFSET(0) NUMBITS(2) [
            /// Non-cacheable.
            NonCacheable = 0b00,
            /// Write-back cacheable.
            WriteBack = 0b01
        ],
        /// Queue outer cacheability.
        QUEUE_OC OFFSET(2) NUMBITS(2) [
            /// Non-cacheable.
            NonCacheable = 0b00,
            /// Write-back cacheable.
            WriteBack = 0b01
        ],
        /// Queue shareability.
        QUEUE_SH OFFSET(4) NUMBITS(2) [
            /// Outer shareable.
            Outer = 0b10,
            /// Inner shareable.
            Inner = 0b11
        ],
        /// Table inner cacheability.
        TABLE_IC OFFSET(6) NUMBITS(2) [
            /// Non-cacheable.
            NonCacheable = 0b00,
            /// Write-back cacheable.
            WriteBack = 0b01
        ],
        /// Table outer cacheability.
        TABLE_OC OFFSET(8) NUMBITS(2) [
            /// Non-cacheable.
            NonCacheable = 0b00,
            /// Write-back cacheable.
            WriteBack = 0b01
        ],
        /// Table shareability.
        TABLE_SH OFFSET(10) NUMBITS(2) [
            /// Outer shareable.
            Outer = 0b10,
            /// Inner shareable.
            Inner = 0b11
        ]
    ],

    /// Global control 2.
    pub CR2 [
        /// EL2-E2H StreamWorld (Warden runs with `HCR_EL2.E2H = 0`: keep clear).
        E2H OFFSET(0) NUMBITS(1) [],
        /// Record `C_BAD_STREAMID` events for StreamIDs outside the stream table.
        RECINVSID OFFSET(1) NUMBITS(1) [],
        /// Private TLB maintenance: set = ignore the CPUs' broadcast TLBIs.
        PTM OFFSET(2) NUMBITS(1) []
    ],

    /// Global bypass attributes: what happens to transactions while `SMMUEN = 0`.
    pub GBPA [
        /// Abort every transaction while `SMMUEN = 0` (instead of passing it through).
        ABORT OFFSET(20) NUMBITS(1) [],
        /// Set with the new value; the SMMU clears it once the update took effect.
        UPDATE OFFSET(31) NUMBITS(1) []
    ],

    /// Interrupt enables (and `IRQ_CTRLACK`).
    pub IRQ_CTRL [
        /// GERROR interrupt enable.
        GERROR_IRQEN OFFSET(0) NUMBITS(1) [],
        /// PRI queue interrupt enable.
        PRIQ_IRQEN OFFSET(1) NUMBITS(1) [],
        /// Event queue interrupt enable.
        EVENTQ_IRQEN OFFSET(2) NUMBITS(1) []
    ],

    /// Global errors (and `GERRORN`): a bit of `GERROR` that differs from `GERRORN`'s is
    /// an active error; software toggles `GERRORN` to acknowledge.
    pub GERROR [
        /// Command queue error: `CMDQ_CONS.ERR` says which.
        CMDQ_ERR OFFSET(0) NUMBITS(1) [],
        /// Event queue write aborted (or, on QEMU, the queue was full or disabled).
        EVENTQ_ABT_ERR OFFSET(2) NUMBITS(1) [],
        /// PRI queue write aborted.
        PRIQ_ABT_ERR OFFSET(3) NUMBITS(1) [],
        /// `CMD_SYNC` MSI write aborted.
        MSI_CMDQ_ABT_ERR OFFSET(4) NUMBITS(1) [],
        /// Event queue MSI write aborted.
        MSI_EVENTQ_ABT_ERR OFFSET(5) NUMBITS(1) [],
        /// PRI queue MSI write aborted.
        MSI_PRIQ_ABT_ERR OFFSET(6) NUMBITS(1) [],
        /// GERROR MSI write aborted.
        MSI_GERROR_ABT_ERR OFFSET(7) NUMBITS(1) [],
        /// Service failure mode: the SMMU stopped.
        SFM_ERR OFFSET(8) NUMBITS(1) []
    ],

    /// Stream table format and size.
    pub STRTAB_BASE_CFG [
        /// log2 of the number of STEs the table covers.
        LOG2SIZE OFFSET(0) NUMBITS(6) [],
        /// StreamID bits resolved by the level-2 tables.
        SPLIT OFFSET(6) NUMBITS(5) [],
        /// Table format.
        FMT OFFSET(16) NUMBITS(2) [
            /// Linear stream table.
            Linear = 0b00,
            /// Two-level stream table.
            TwoLevel = 0b01
        ]
    ],

    /// Command queue producer index (written by software).
    pub CMDQ_PROD [
        /// Index and wrap bit (bits `log2size:0`).
        WR OFFSET(0) NUMBITS(20) []
    ],

    /// Command queue consumer index and error code (written by the SMMU).
    pub CMDQ_CONS [
        /// Index and wrap bit (bits `log2size:0`).
        RD OFFSET(0) NUMBITS(20) [],
        /// The error code of the command at `RD`.
        ERR OFFSET(24) NUMBITS(7) [
            /// No error.
            None = 0,
            /// Illegal command (unknown opcode, bad field).
            Ill = 1,
            /// Abort while fetching the command.
            Abt = 2,
            /// ATC invalidation timed out before a `CMD_SYNC`.
            AtcInvSync = 3
        ]
    ],

    /// Event queue producer index (written by the SMMU), page 1.
    pub EVENTQ_PROD [
        /// Index and wrap bit (bits `log2size:0`).
        WR OFFSET(0) NUMBITS(20) [],
        /// Toggled when events were lost.
        OVFLG OFFSET(31) NUMBITS(1) []
    ],

    /// Event queue consumer index (written by software), page 1.
    pub EVENTQ_CONS [
        /// Index and wrap bit (bits `log2size:0`).
        RD OFFSET(0) NUMBITS(20) [],
        /// Software sets it to `EVENTQ_PROD.OVFLG` to acknowledge an overflow.
        OVACKFLG OFFSET(31) NUMBITS(1) []
    ]
}

register_bitfields! {u64,
    /// Stream table base address.
    pub STRTAB_BASE [
        /// Address bits 51:6.
        ADDR OFFSET(6) NUMBITS(46) [],
        /// Read-allocate hint for stream table accesses.
        RA OFFSET(62) NUMBITS(1) []
    ],

    /// Command, event and PRI queue base address and size.
    pub QUEUE_BASE [
        /// log2 of the number of entries.
        LOG2SIZE OFFSET(0) NUMBITS(5) [],
        /// Address bits 51:5.
        ADDR OFFSET(5) NUMBITS(47) [],
        /// Read-allocate (command queue) / write-allocate (event queue) hint.
        ALLOC_HINT OFFSET(62) NUMBITS(1) []
    ]
}

register_structs! {
    /// Page 0 of the frame: identification, control, tables, command queue.
    pub SmmuPage0 {
        (0x0000 => pub idr0: ReadOnly<u32, IDR0::Register>),
        (0x0004 => pub idr1: ReadOnly<u32, IDR1::Register>),
        (0x0008 => pub idr2: ReadOnly<u32>),
        (0x000C => pub idr3: ReadOnly<u32, IDR3::Register>),
        (0x0010 => pub idr4: ReadOnly<u32>),
        (0x0014 => pub idr5: ReadOnly<u32, IDR5::Register>),
        (0x0018 => pub iidr: ReadOnly<u32, IIDR::Register>),
        (0x001C => pub aidr: ReadOnly<u32, AIDR::Register>),
        (0x0020 => pub cr0: ReadWrite<u32, CR0::Register>),
        (0x0024 => pub cr0ack: ReadOnly<u32, CR0::Register>),
        (0x0028 => pub cr1: ReadWrite<u32, CR1::Register>),
        (0x002C => pub cr2: ReadWrite<u32, CR2::Register>),
        (0x0030 => _reserved0),
        (0x0040 => pub statusr: ReadOnly<u32>),
        (0x0044 => pub gbpa: ReadWrite<u32, GBPA::Register>),
        (0x0048 => pub agbpa: ReadWrite<u32>),
        (0x004C => _reserved1),
        (0x0050 => pub irq_ctrl: ReadWrite<u32, IRQ_CTRL::Register>),
        (0x0054 => pub irq_ctrlack: ReadOnly<u32, IRQ_CTRL::Register>),
        (0x0058 => _reserved2),
        (0x0060 => pub gerror: ReadOnly<u32, GERROR::Register>),
        (0x0064 => pub gerrorn: ReadWrite<u32, GERROR::Register>),
        (0x0068 => pub gerror_irq_cfg0: ReadWrite<u64>),
        (0x0070 => _reserved3),
        (0x0080 => pub strtab_base: ReadWrite<u64, STRTAB_BASE::Register>),
        (0x0088 => pub strtab_base_cfg: ReadWrite<u32, STRTAB_BASE_CFG::Register>),
        (0x008C => _reserved4),
        (0x0090 => pub cmdq_base: ReadWrite<u64, QUEUE_BASE::Register>),
        (0x0098 => pub cmdq_prod: ReadWrite<u32, CMDQ_PROD::Register>),
        (0x009C => pub cmdq_cons: ReadWrite<u32, CMDQ_CONS::Register>),
        (0x00A0 => pub eventq_base: ReadWrite<u64, QUEUE_BASE::Register>),
        (0x00A8 => _reserved5),
        (0x00B0 => pub eventq_irq_cfg0: ReadWrite<u64>),
        (0x00B8 => _reserved6),
        (0x00C0 => pub priq_base: ReadWrite<u64, QUEUE_BASE::Register>),
        (0x00C8 => _reserved7),
        (0x10000 => @END),
    }
}

register_structs! {
    /// Page 1 of the frame: the queue indices software consumes.
    pub SmmuPage1 {
        (0x0000 => _reserved0),
        (0x00A8 => pub eventq_prod: ReadWrite<u32, EVENTQ_PROD::Register>),
        (0x00AC => pub eventq_cons: ReadWrite<u32, EVENTQ_CONS::Register>),
        (0x00B0 => _reserved1),
        (0x10000 => @END),
    }
}

register_structs! {
    /// The whole register frame: two 64 KiB pages.
    pub SmmuFrame {
        (0x00000 => pub page0: SmmuPage0),
        (0x10000 => pub page1: SmmuPage1),
        (0x20000 => @END),
    }
}

/// Size of the register frame (two 64 KiB pages).
pub const FRAME_SIZE: usize = core::mem::size_of::<SmmuFrame>();

/// A register of the frame: offset from the frame base, width `T` (`u32` or `u64`) and
/// field layout `R`. Handles exist only as the constants below (built from
/// [`SmmuFrame`]'s declared layout), so an offset always names a declared register.
pub struct Reg<T: UIntLike, R: RegisterLongName = ()> {
    off: usize,
    _reg: PhantomData<fn() -> (T, R)>,
}

impl<T: UIntLike, R: RegisterLongName> Clone for Reg<T, R> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T: UIntLike, R: RegisterLongName> Copy for Reg<T, R> {}

impl<T: UIntLike, R: RegisterLongName> fmt::Debug for Reg<T, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reg({:#x})", self.off)
    }
}

/// A register type of the frame layout (`ReadOnly` / `ReadWrite`), for [`Reg`]'s check
/// that a handle's width and fields are those of the field it names.
pub trait FrameRegister {
    /// Width.
    type T: UIntLike;
    /// Field layout.
    type R: RegisterLongName;
}

impl<T: UIntLike, R: RegisterLongName> FrameRegister for ReadOnly<T, R> {
    type T = T;
    type R = R;
}

impl<T: UIntLike, R: RegisterLongName> FrameRegister for ReadWrite<T, R> {
    type T = T;
    type R = R;
}

impl<T: UIntLike, R: RegisterLongName> Reg<T, R> {
    /// The handle of the register at `off`, whose type `_field` names (never called:
    /// it only ties the handle's width and fields to the declared field's).
    const fn of<F: FrameRegister<T = T, R = R>>(off: usize, _field: fn(&SmmuFrame) -> &F) -> Self {
        Self {
            off,
            _reg: PhantomData,
        }
    }

    /// Byte offset from the frame base (inside [`FRAME_SIZE`], aligned to the width).
    pub const fn offset(self) -> usize {
        self.off
    }
}

macro_rules! handles {
    ($($(#[$doc:meta])* $name:ident: $t:ty, $r:ty = $($field:ident).+;)*) => {$(
        $(#[$doc])*
        pub const $name: Reg<$t, $r> =
            Reg::of(offset_of!(SmmuFrame, $($field).+), |f: &SmmuFrame| &f.$($field).+);
    )*};
}

handles! {
    /// Identification register 0.
    IDR0: u32, IDR0::Register = page0.idr0;
    /// Identification register 1.
    IDR1: u32, IDR1::Register = page0.idr1;
    /// Identification register 2: VATOS page.
    IDR2: u32, () = page0.idr2;
    /// Identification register 3.
    IDR3: u32, IDR3::Register = page0.idr3;
    /// Identification register 4: implementation defined.
    IDR4: u32, () = page0.idr4;
    /// Identification register 5.
    IDR5: u32, IDR5::Register = page0.idr5;
    /// Implementation identification.
    IIDR: u32, IIDR::Register = page0.iidr;
    /// Architecture version.
    AIDR: u32, AIDR::Register = page0.aidr;
    /// Global control 0.
    CR0: u32, CR0::Register = page0.cr0;
    /// Acknowledges `CR0` writes.
    CR0ACK: u32, CR0::Register = page0.cr0ack;
    /// Global control 1.
    CR1: u32, CR1::Register = page0.cr1;
    /// Global control 2.
    CR2: u32, CR2::Register = page0.cr2;
    /// Status.
    STATUSR: u32, () = page0.statusr;
    /// Global bypass attributes.
    GBPA: u32, GBPA::Register = page0.gbpa;
    /// Alternate global bypass attributes (implementation defined).
    AGBPA: u32, () = page0.agbpa;
    /// Interrupt enables.
    IRQ_CTRL: u32, IRQ_CTRL::Register = page0.irq_ctrl;
    /// Acknowledges `IRQ_CTRL` writes.
    IRQ_CTRLACK: u32, IRQ_CTRL::Register = page0.irq_ctrlack;
    /// Global errors.
    GERROR: u32, GERROR::Register = page0.gerror;
    /// Global errors acknowledged.
    GERRORN: u32, GERROR::Register = page0.gerrorn;
    /// GERROR MSI address.
    GERROR_IRQ_CFG0: u64, () = page0.gerror_irq_cfg0;
    /// Stream table base address.
    STRTAB_BASE: u64, STRTAB_BASE::Register = page0.strtab_base;
    /// Stream table format and size.
    STRTAB_BASE_CFG: u32, STRTAB_BASE_CFG::Register = page0.strtab_base_cfg;
    /// Command queue base address and size.
    CMDQ_BASE: u64, QUEUE_BASE::Register = page0.cmdq_base;
    /// Command queue producer index.
    CMDQ_PROD: u32, CMDQ_PROD::Register = page0.cmdq_prod;
    /// Command queue consumer index and error code.
    CMDQ_CONS: u32, CMDQ_CONS::Register = page0.cmdq_cons;
    /// Event queue base address and size.
    EVENTQ_BASE: u64, QUEUE_BASE::Register = page0.eventq_base;
    /// Event queue MSI address.
    EVENTQ_IRQ_CFG0: u64, () = page0.eventq_irq_cfg0;
    /// PRI queue base address and size.
    PRIQ_BASE: u64, QUEUE_BASE::Register = page0.priq_base;
    /// Event queue producer index (page 1).
    EVENTQ_PROD: u32, EVENTQ_PROD::Register = page1.eventq_prod;
    /// Event queue consumer index (page 1).
    EVENTQ_CONS: u32, EVENTQ_CONS::Register = page1.eventq_cons;
}

/// Every architected `GERROR` bit.
pub const GERROR_ALL: u32 = 0x1fd;

/// `CMDQ_CONS.ERR`: no error.
pub const CERROR_NONE: u32 = CMDQ_CONS::ERR::Value::None as u32;
/// `CMDQ_CONS.ERR`: illegal command (unknown opcode, bad field).
pub const CERROR_ILL: u32 = CMDQ_CONS::ERR::Value::Ill as u32;
/// `CMDQ_CONS.ERR`: abort while fetching the command.
pub const CERROR_ABT: u32 = CMDQ_CONS::ERR::Value::Abt as u32;
/// `CMDQ_CONS.ERR`: ATC invalidation timed out before a `CMD_SYNC`.
pub const CERROR_ATC_INV_SYNC: u32 = CMDQ_CONS::ERR::Value::AtcInvSync as u32;
