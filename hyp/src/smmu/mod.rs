//! SMMUv3 driver: stage-2-only stream tables, the command queue, invalidation, events.
//!
//! Warden owns the SMMU; the host never sees it. Every stream either aborts or translates
//! through a stage-2 table Warden built — never bypass, not even while the driver starts
//! (`GBPA.ABORT` is set before anything else).
//!
//! # Pieces
//!
//! - [`regs`]: the register map, no logic: the frame layout (`tock-registers`, offsets
//!   checked at compile time), the fields, and the [`regs::Reg`] handles.
//! - [`SmmuIo`]: the MMIO seam, by register handle only (volatile accesses at EL2,
//!   `model::SmmuModel` in tests).
//! - Memory for the stream table and queues comes from an [`TableMemory`]
//!   (the same seam the stage-2 tables use), passed to every call like
//!   [`Stage2`](crate::s2mmu::Stage2)'s; when the SMMU does not snoop (`IDR0.COHACC = 0` or no
//!   `dma-coherent`), every write the SMMU reads is followed by `clean` (I5).
//! - [`features`]: `IDR*` decoded; [`ste`]: stream table entries and their
//!   break-before-make update; [`cmdq`]: commands, `CMD_SYNC`, error recovery,
//!   invalidation; [`evtq`]: event records.
//!
//! # Probe sequence ([`Smmu::probe`])
//!
//! 1. `GBPA.ABORT` (with the `GBPA.UPDATE` handshake), then `CR0 = 0` and wait for
//!    `CR0ACK`: from here on, nothing passes untranslated.
//! 2. Check the ID registers (`IIDR` errata applied, see [`Features::with_iidr`]): stage 2
//!    and AArch64 tables are required, big-endian-only walks (`TTENDIAN`) and forced
//!    stalls (`STALL_MODEL = 0b10`, which would need `STE.S2S = 1` and `CMD_RESUME` for
//!    every fault) are refused (an error naming the field; the SMMU is left disabled and
//!    aborting). A non-coherent SMMU is announced to the memory
//!    ([`TableMemory::set_noncoherent_walker`]) before anything is written.
//! 3. Interrupts off (`IRQ_CTRL = 0`; Warden polls), stale `GERROR`s acknowledged.
//! 4. Stream table: linear for at most 2^8 StreamIDs (or without two-level support),
//!    two-level with `SPLIT = 8` otherwise, level-2 tables only for spans that contain a
//!    described StreamID (others are added by [`Smmu::set_ste_s2`] on demand). Every STE
//!    starts as abort.
//! 5. Queues: command and event queues of `min(hardware maximum, cap)` entries.
//! 6. `CR1` (cacheable inner-shareable when coherent, non-cacheable otherwise), `CR2`
//!    (`PTM = 1`, `RECINVSID = 1`, `E2H = 0`).
//! 7. `CMDQEN`; `CFGI_ALL`, `TLBI_NSNH_ALL`, `TLBI_EL2_ALL` (with `IDR0.HYP`), `CMD_SYNC`;
//!    `EVTQEN`; `SMMUEN` (with `ATSCHK` when `IDR0.ATS`: ATS-translated traffic is then
//!    checked against its STE, where `EATS = 0` refuses it).
//!
//! Every wait (`GBPA.UPDATE`, `CR0ACK`, `IRQ_CTRLACK`, `CMD_SYNC`, queue space) ends
//! after [`POLL_TIMEOUT_NS`] by the seam's clock ([`SmmuIo::now_ns`]) with
//! [`SmmuError::Timeout`].
//!
//! # Concurrency
//!
//! `Smmu` methods take `&mut self`: the caller serialises (the SMMU queue lock comes last
//! in Warden's lock order).

pub mod cmdq;
pub mod evtq;
pub mod features;
#[cfg(any(test, feature = "fuzzing"))]
pub mod model;
pub mod regs;
pub mod ste;
#[cfg(test)]
mod tests;

pub use cmdq::{CmdError, Command, CommandCounts, TLBI_RANGE_MAX_PAGES, TlbiRange};
pub use evtq::{Event, EventPoll, EventType};
pub use features::Features;
pub use ste::{S2Config, Ste};

use crate::addr::PhysAddr;
use crate::s2mmu::TableMemory;
use alloc::vec::Vec;
use cmdq::CmdQueue;
use core::fmt;
use core::marker::PhantomData;
use evtq::EvtQueue;
use regs::*;
use ste::{L2_SIZE, SPLIT, STE_SIZE, StreamTable};
use tock_registers::{LocalRegisterCopy, RegisterLongName, fields::FieldValue};

/// Register access to one SMMU's frame, by the handles of [`regs`] (which only name
/// declared registers: an implementation never sees an offset outside the frame).
///
/// # Ordering contract (what the EL2 implementation must provide)
///
/// - `write32` / `write64` are ordered after every earlier access of this CPU to normal
///   memory and after earlier cache maintenance (`DSB SY` before the store, like Linux's
///   `writel` but stronger): a queue entry or STE written (and cleaned) before
///   `CMDQ_PROD` is visible to the SMMU when it sees the new `PROD`.
/// - `read32` / `read64` are ordered before every later read of normal memory (`DSB LD`
///   after the load): an event record is read only after the `EVENTQ_PROD` that
///   published it.
///
/// Accesses are single-copy atomic, to Device-nGnRE memory.
pub trait SmmuIo {
    /// Reads the 32-bit register `reg`.
    fn read32<R: RegisterLongName>(&self, reg: Reg<u32, R>) -> u32;
    /// Writes the 32-bit register `reg`.
    fn write32<R: RegisterLongName>(&self, reg: Reg<u32, R>, v: u32);
    /// Reads the 64-bit register `reg`.
    fn read64<R: RegisterLongName>(&self, reg: Reg<u64, R>) -> u64;
    /// Writes the 64-bit register `reg`.
    fn write64<R: RegisterLongName>(&self, reg: Reg<u64, R>, v: u64);
    /// Waits for an event while polling for a `CMD_SYNC` sent with `CS = SIG_SEV`: `WFE`
    /// at EL2 (the SMMU's SEV, or the generic timer's event stream, wakes it). The
    /// default only hints a spin.
    fn wait_for_event(&self) {
        core::hint::spin_loop();
    }
    /// Monotonic time in nanoseconds (at EL2: `CNTPCT_EL0` scaled by `CNTFRQ_EL0`). Every
    /// wait for the SMMU gives up [`POLL_TIMEOUT_NS`] after it started, by this clock.
    fn now_ns(&self) -> u64;

    /// Reads the 32-bit register `reg` as its fields.
    fn get<R: RegisterLongName>(&self, reg: Reg<u32, R>) -> LocalRegisterCopy<u32, R> {
        LocalRegisterCopy::new(self.read32(reg))
    }
    /// Writes `v` (every field it does not name is 0) to the 32-bit register `reg`.
    fn set<R: RegisterLongName>(&self, reg: Reg<u32, R>, v: FieldValue<u32, R>) {
        self.write32(reg, v.value);
    }
    /// Writes `v` (every field it does not name is 0) to the 64-bit register `reg`.
    fn set64<R: RegisterLongName>(&self, reg: Reg<u64, R>, v: FieldValue<u64, R>) {
        self.write64(reg, v.value);
    }
}

impl<T: SmmuIo + ?Sized> SmmuIo for &T {
    fn read32<R: RegisterLongName>(&self, reg: Reg<u32, R>) -> u32 {
        (**self).read32(reg)
    }
    fn write32<R: RegisterLongName>(&self, reg: Reg<u32, R>, v: u32) {
        (**self).write32(reg, v)
    }
    fn read64<R: RegisterLongName>(&self, reg: Reg<u64, R>) -> u64 {
        (**self).read64(reg)
    }
    fn write64<R: RegisterLongName>(&self, reg: Reg<u64, R>, v: u64) {
        (**self).write64(reg, v)
    }
    fn wait_for_event(&self) {
        (**self).wait_for_event()
    }
    fn now_ns(&self) -> u64 {
        (**self).now_ns()
    }
}

/// Errors of the SMMU driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmmuError {
    /// The SMMU lacks something Warden needs (stage 2, AArch64 tables, a granule). It was
    /// left disabled with `GBPA.ABORT` set.
    Unsupported(&'static str),
    /// The SMMU did not respond in time: what was being waited for.
    Timeout(&'static str),
    /// Memory for a table or queue ran out.
    OutOfMemory,
    /// A StreamID beyond the stream table.
    SidOutOfRange(u32),
    /// An argument the SMMU cannot use (STE field, VMID width, address range).
    BadConfig(&'static str),
    /// `CMDQ_CONS` holds an index the SMMU cannot be at (the raw value).
    BadQueueIndex(u32),
    /// The SMMU refused a command (`CERROR_ILL`) and the driver skipped it: its effect
    /// (an invalidation) never happened. The opcode.
    CommandSkipped(u8),
}

impl fmt::Display for SmmuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unsupported(what) => write!(f, "SMMU unsupported: {what}"),
            Self::Timeout(what) => write!(f, "SMMU timeout: {what}"),
            Self::OutOfMemory => write!(f, "out of memory for SMMU tables"),
            Self::SidOutOfRange(sid) => write!(f, "StreamID {sid:#x} beyond the stream table"),
            Self::BadConfig(what) => write!(f, "bad SMMU configuration: {what}"),
            Self::BadQueueIndex(v) => write!(f, "SMMU reported an impossible CMDQ_CONS {v:#x}"),
            Self::CommandSkipped(op) => write!(f, "SMMU refused command {op:#04x} (skipped)"),
        }
    }
}

impl core::error::Error for SmmuError {}

/// How to bring an SMMU up.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProbeConfig<'a> {
    /// The platform says the SMMU's table walks snoop the caches (`dma-coherent`). Used
    /// only if `IDR0.COHACC` agrees.
    pub coherent: bool,
    /// StreamIDs in use (`(first, count)`, from the DTB's `iommu-map` / `iommus`): a
    /// two-level table gets level-2 tables for these spans up front.
    pub sids: &'a [(u32, u32)],
    /// Cap on log2 of the command queue entries (tests use tiny queues).
    pub cmdq_log2: Option<u32>,
    /// Cap on log2 of the event queue entries.
    pub evtq_log2: Option<u32>,
}

/// Default cap on log2 of the command queue (1024 entries, 16 KiB).
pub const CMDQ_LOG2_CAP: u32 = 10;
/// Default cap on log2 of the event queue (4096 entries, 128 KiB): a device faulting on
/// a buffer raises an event per access.
pub const EVTQ_LOG2_CAP: u32 = 12;
/// StreamID bits at or below which the stream table is linear.
pub const LINEAR_MAX_BITS: u32 = 8;
/// Most StreamID bits of a linear table on an SMMU without two-level support (4 MiB).
pub const LINEAR_LIMIT_BITS: u32 = 16;
/// Most level-1 descriptors of a two-level table, log2 (StreamIDs up to 2^20).
pub const L1_MAX_BITS: u32 = 12;
/// How long a wait for the SMMU (`CR0ACK`, `GBPA.UPDATE`, `IRQ_CTRLACK`, `CMD_SYNC`
/// completion, command queue space) lasts before [`SmmuError::Timeout`]: one second, by
/// [`SmmuIo::now_ns`] (as Linux's `ARM_SMMU_POLL_TIMEOUT_US`).
pub const POLL_TIMEOUT_NS: u64 = 1_000_000_000;
/// Smallest allocation the driver asks of its [`TableMemory`] (page-sized pools).
pub const MIN_ALLOC: usize = 4096;

/// Counters, for the STATS hypercall and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SmmuStats {
    /// Commands queued, by kind (`CMD_SYNC`s included).
    pub commands: CommandCounts,
    /// `CMD_SYNC`s that completed.
    pub syncs_completed: u64,
    /// Event records read.
    pub events: u64,
    /// Polls that found events lost (overflow, `EVTQ_ABT_ERR`).
    pub event_overflows: u64,
    /// Command errors (`CMDQ_CONS.ERR`) recovered from.
    pub cmd_errors: u64,
    /// Waits that timed out.
    pub timeouts: u64,
    /// Polls that found global errors other than command errors.
    pub gerrors: u64,
}

/// A block of memory the SMMU reads or writes: physical address and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Region {
    pub(crate) pa: PhysAddr,
    pub(crate) size: usize,
}

impl Region {
    /// Allocates zeroed memory for `size` bytes (rounded up to [`MIN_ALLOC`] and a power
    /// of two), aligned to its size.
    fn alloc<M: TableMemory + ?Sized>(mem: &mut M, size: usize) -> Result<Self, SmmuError> {
        let size = size.max(MIN_ALLOC).next_power_of_two();
        let pa = mem.alloc_zeroed(size, size).ok_or(SmmuError::OutOfMemory)?;
        Ok(Self { pa, size })
    }

    /// Writes `words` at byte offset `off` (8-aligned), then cleans them unless
    /// `coherent`. Out-of-bounds writes are dropped (a driver bug, never reached).
    fn write<M: TableMemory + ?Sized>(
        &self,
        mem: &mut M,
        off: usize,
        words: &[u64],
        coherent: bool,
    ) {
        let len = words.len() * 8;
        if !off.is_multiple_of(8) || off + len > self.size {
            debug_assert!(false, "SMMU region write out of bounds");
            return;
        }
        let base = mem.table_ptr(self.pa);
        for (i, w) in words.iter().enumerate() {
            // SAFETY: `self` is a live allocation of `mem` (allocated by `alloc`, freed
            // only when the driver no longer uses it), so `table_ptr` is valid for its
            // `size` bytes, 8-aligned; `off + len <= size` was checked.
            unsafe { base.add(off / 8 + i).write_volatile(*w) };
        }
        if !coherent {
            mem.clean(PhysAddr(self.pa.0 + off as u64), len);
        }
    }

    /// Reads words at byte offset `off` (zeros if out of bounds: never reached).
    fn read<M: TableMemory + ?Sized>(&self, mem: &M, off: usize, out: &mut [u64]) {
        if !off.is_multiple_of(8) || off + out.len() * 8 > self.size {
            debug_assert!(false, "SMMU region read out of bounds");
            out.fill(0);
            return;
        }
        let base = mem.table_ptr(self.pa);
        for (i, w) in out.iter_mut().enumerate() {
            // SAFETY: as in `write`.
            *w = unsafe { base.add(off / 8 + i).read_volatile() };
        }
    }

    /// Reads the 32-bit word at byte offset `off` (4-aligned).
    fn read_u32<M: TableMemory + ?Sized>(&self, mem: &M, off: usize) -> u32 {
        if !off.is_multiple_of(4) || off + 4 > self.size {
            debug_assert!(false, "SMMU region read out of bounds");
            return 0;
        }
        let base = mem.table_ptr(self.pa).cast::<u32>();
        // SAFETY: as in `write`; 4-aligned since the allocation is 8-aligned.
        unsafe { base.add(off / 4).read_volatile() }
    }

    /// Returns the memory.
    ///
    /// # Safety
    ///
    /// The SMMU no longer accesses it (the structure using it is disabled).
    unsafe fn free<M: TableMemory + ?Sized>(self, mem: &mut M) {
        // SAFETY: allocated by `alloc` with this size; the caller guarantees no user.
        unsafe { mem.free(self.pa, self.size) }
    }
}

/// One SMMUv3, up and translating.
pub struct Smmu<I: SmmuIo, M: TableMemory + ?Sized> {
    io: I,
    features: Features,
    /// Whether the SMMU snoops the caches (no clean needed).
    coherent: bool,
    strtab: StreamTable,
    cmdq: CmdQueue,
    evtq: EvtQueue,
    /// Word that `CMD_SYNC`s write to on completion (MSI, coherent SMMUs only).
    msi: Option<Region>,
    sync_seq: u32,
    /// `CR2` as programmed.
    cr2: u32,
    stats: SmmuStats,
    errors: Vec<CmdError>,
    /// First failure of a `push` since the last `sync`.
    pending: Option<SmmuError>,
    _mem: PhantomData<fn(&mut M)>,
}

impl<I: SmmuIo, M: TableMemory + ?Sized> fmt::Debug for Smmu<I, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Smmu")
            .field("features", &self.features)
            .field("coherent", &self.coherent)
            .field("strtab", &self.strtab)
            .field("cmdq", &self.cmdq)
            .field("evtq", &self.evtq)
            .field("msi", &self.msi)
            .field("cr2", &self.cr2)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// The end of a wait: [`POLL_TIMEOUT_NS`] after it started, by the seam's clock.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Deadline(u64);

impl Deadline {
    /// [`POLL_TIMEOUT_NS`] from now.
    pub(crate) fn start<I: SmmuIo>(io: &I) -> Self {
        Self(io.now_ns().saturating_add(POLL_TIMEOUT_NS))
    }

    /// Whether the time is up. Read it before the last look at what is waited for, so
    /// that a wait that was descheduled past its end still gets one look.
    pub(crate) fn passed<I: SmmuIo>(self, io: &I) -> bool {
        io.now_ns() >= self.0
    }
}

/// Polls `io.read32(reg) & mask == want`, for at most [`POLL_TIMEOUT_NS`].
fn wait_reg<I: SmmuIo, R: RegisterLongName>(
    io: &I,
    reg: Reg<u32, R>,
    mask: u32,
    want: u32,
    what: &'static str,
) -> Result<(), SmmuError> {
    let deadline = Deadline::start(io);
    loop {
        let expired = deadline.passed(io);
        if io.read32(reg) & mask == want {
            return Ok(());
        }
        if expired {
            return Err(SmmuError::Timeout(what));
        }
        core::hint::spin_loop();
    }
}

/// Sets `GBPA.ABORT` with the `UPDATE` handshake.
fn gbpa_abort<I: SmmuIo>(io: &I) -> Result<(), SmmuError> {
    let update = GBPA::UPDATE::SET.mask();
    wait_reg(io, GBPA, update, 0, "GBPA update")?;
    let gbpa = io.get(GBPA);
    if !gbpa.is_set(GBPA::ABORT) {
        io.write32(
            GBPA,
            (GBPA::ABORT::SET + GBPA::UPDATE::SET).modify(gbpa.get()),
        );
        wait_reg(io, GBPA, update, 0, "GBPA update")?;
    }
    if !io.get(GBPA).is_set(GBPA::ABORT) {
        return Err(SmmuError::Unsupported("GBPA.ABORT does not stick"));
    }
    Ok(())
}

/// Writes `CR0` and waits for `CR0ACK` to match.
fn write_cr0<I: SmmuIo>(io: &I, v: u32) -> Result<(), SmmuError> {
    io.write32(CR0, v);
    wait_reg(io, CR0ACK, u32::MAX, v, "CR0ACK")
}

/// Puts an SMMU that Warden does not drive (disabled in the DTB, or one whose probe
/// failed) into abort: `GBPA.ABORT` set, then `CR0 = 0` (`SMMUEN` and the queues off), so
/// that nothing passes untranslated (see [`crate::masters`]).
///
/// # Errors
///
/// As the first step of [`Smmu::probe`]: a register that does not acknowledge in time,
/// or `GBPA.ABORT` that does not stick.
pub fn force_abort<I: SmmuIo>(io: &I) -> Result<(), SmmuError> {
    gbpa_abort(io)?;
    write_cr0(io, 0)
}

/// `CMDQ_BASE` / `EVENTQ_BASE` for a queue of `2^log2` entries at `q`, with the
/// allocation hint.
fn queue_base(q: Region, log2: u32) -> FieldValue<u64, QUEUE_BASE::Register> {
    QUEUE_BASE::ALLOC_HINT::SET
        + QUEUE_BASE::ADDR.val(q.pa.0 >> QUEUE_BASE::ADDR.shift)
        + QUEUE_BASE::LOG2SIZE.val(u64::from(log2))
}

/// Bits needed to number `n` things (`ceil(log2(n))`).
const fn bits_for(n: u64) -> u32 {
    if n <= 1 {
        0
    } else {
        64 - (n - 1).leading_zeros()
    }
}

impl<I: SmmuIo, M: TableMemory + ?Sized> Smmu<I, M> {
    /// Brings the SMMU up as the module docs describe. On error the SMMU is left
    /// disabled with `GBPA.ABORT` set (if it got that far) and memory is returned.
    ///
    /// # Safety
    ///
    /// Every later call on the returned value passes this same `mem` (or one through which
    /// `table_ptr` reaches the same allocations), and nothing else writes or frees the
    /// driver's allocations while the `Smmu` exists. `io` gives exclusive access to one
    /// SMMU's registers.
    pub unsafe fn probe(io: I, mem: &mut M, cfg: &ProbeConfig<'_>) -> Result<Self, SmmuError> {
        // 1. Nothing passes untranslated from here on.
        gbpa_abort(&io)?;
        write_cr0(&io, 0)?;

        // 2. What we need.
        let features = Features::decode(
            io.read32(IDR0),
            io.read32(IDR1),
            io.read32(IDR3),
            io.read32(IDR5),
            io.read32(AIDR),
        )
        .with_iidr(io.read32(IIDR));
        Self::check_drivable(&features)?;
        if io
            .get(IDR1)
            .any_matching_bits_set(IDR1::QUEUES_PRESET::SET + IDR1::TABLES_PRESET::SET)
        {
            return Err(SmmuError::Unsupported("preset queue or table bases"));
        }
        // Coherent only if the SMMU can snoop (COHACC) and the integration does
        // (`dma-coherent`). Otherwise every structure is cleaned to PoC from its first
        // write on: tell the memory before anything is written.
        let coherent = cfg.coherent && features.cohacc;
        if !coherent {
            mem.set_noncoherent_walker();
        }

        // 3. Polling, not interrupts; forget stale errors.
        io.write32(IRQ_CTRL, 0);
        wait_reg(&io, IRQ_CTRLACK, u32::MAX, 0, "IRQ_CTRLACK")?;
        let stale = io.read32(GERROR) ^ io.read32(GERRORN);
        if stale != 0 {
            io.write32(GERRORN, io.read32(GERROR));
        }

        // 4-5. Memory.
        let mut regions: Vec<Region> = Vec::new();
        match Self::build(io, mem, cfg, features, coherent, &mut regions) {
            Ok(smmu) => Ok(smmu),
            Err((io, e)) => {
                // Stop the queues before the memory goes back; if they do not stop, leak.
                if write_cr0(&io, 0).is_ok() {
                    for r in regions {
                        // SAFETY: the SMMU is disabled (CR0ACK = 0): it no longer reads
                        // or writes the stream table or queues.
                        unsafe { r.free(mem) };
                    }
                }
                Err(e)
            }
        }
    }

    /// Refuses an SMMU whose rules Warden cannot follow (step 2 of the probe).
    fn check_drivable(f: &Features) -> Result<(), SmmuError> {
        if !f.s2p {
            return Err(SmmuError::Unsupported("no stage-2 translation"));
        }
        if !f.ttf_aarch64 {
            return Err(SmmuError::Unsupported("no AArch64 translation tables"));
        }
        match IDR0::TTENDIAN.read_as_enum(u32::from(f.ttendian) << IDR0::TTENDIAN.shift) {
            Some(IDR0::TTENDIAN::Value::Mixed | IDR0::TTENDIAN::Value::Little) => {}
            Some(IDR0::TTENDIAN::Value::Big) => {
                return Err(SmmuError::Unsupported(
                    "IDR0.TTENDIAN: big-endian table walks only (Warden's tables are little-endian)",
                ));
            }
            _ => return Err(SmmuError::Unsupported("IDR0.TTENDIAN: reserved value")),
        }
        match IDR0::STALL_MODEL.read_as_enum(u32::from(f.stall_model) << IDR0::STALL_MODEL.shift) {
            Some(IDR0::STALL_MODEL::Value::Forced) => Err(SmmuError::Unsupported(
                "IDR0.STALL_MODEL: stall forced (STEs need S2S = 1; Warden does not resume \
                 stalled transactions)",
            )),
            None => Err(SmmuError::Unsupported("IDR0.STALL_MODEL: reserved value")),
            Some(_) => Ok(()),
        }
    }

    /// `CR0` with everything on: queues, translation, and `ATSCHK` with `IDR0.ATS` (so
    /// that ATS-translated transactions are checked against their STE, whose `EATS = 0`
    /// refuses them, instead of skipping the stream table).
    fn cr0_enabled(f: &Features) -> u32 {
        let on = CR0::CMDQEN::SET + CR0::EVENTQEN::SET + CR0::SMMUEN::SET;
        if f.ats { on + CR0::ATSCHK::SET } else { on }.value
    }

    /// Steps 4-7 of the probe. `regions` collects every allocation, for the caller to
    /// free on failure.
    fn build(
        io: I,
        mem: &mut M,
        cfg: &ProbeConfig<'_>,
        features: Features,
        coherent: bool,
        regions: &mut Vec<Region>,
    ) -> Result<Self, (I, SmmuError)> {
        macro_rules! tri {
            ($e:expr) => {
                match $e {
                    Ok(v) => v,
                    Err(e) => return Err((io, e)),
                }
            };
        }
        let mut alloc = |mem: &mut M, size: usize| -> Result<Region, SmmuError> {
            let r = Region::alloc(mem, size)?;
            regions.push(r);
            Ok(r)
        };

        // 4. Stream table, every STE abort.
        let sid_bits = features.sidsize.min(32);
        let max_sid_bits = cfg
            .sids
            .iter()
            .filter(|&&(_, count)| count != 0)
            .map(|&(first, count)| bits_for(u64::from(first) + u64::from(count)))
            .max()
            .unwrap_or(0);
        let (strtab, strtab_cfg) = if sid_bits <= LINEAR_MAX_BITS || !features.two_level_st {
            let log2 = if sid_bits <= LINEAR_MAX_BITS {
                sid_bits
            } else {
                max_sid_bits.clamp(1, sid_bits.min(LINEAR_LIMIT_BITS))
            };
            let table = tri!(alloc(mem, STE_SIZE << log2));
            ste::fill_abort(mem, table, 1 << log2, coherent);
            let base_cfg = STRTAB_BASE_CFG::FMT::Linear + STRTAB_BASE_CFG::LOG2SIZE.val(log2);
            (StreamTable::Linear { table, log2 }, (table.pa, base_cfg))
        } else {
            let log2 = sid_bits.min(L1_MAX_BITS + SPLIT);
            let spans = 1usize << (log2 - SPLIT);
            let l1 = tri!(alloc(mem, spans * 8));
            let mut l2 = Vec::new();
            if l2.try_reserve_exact(spans).is_err() {
                return Err((io, SmmuError::OutOfMemory));
            }
            l2.resize(spans, None);
            for &(first, count) in cfg.sids {
                let last = u64::from(first) + u64::from(count);
                let mut span = u64::from(first) >> SPLIT;
                while count != 0 && span << SPLIT < last {
                    if span as usize >= spans {
                        log::warn!(
                            "SMMU: StreamIDs from {:#x} beyond the stream table",
                            span << SPLIT
                        );
                        break;
                    }
                    if l2[span as usize].is_none() {
                        let table = tri!(alloc(mem, L2_SIZE));
                        ste::fill_abort(mem, table, 1 << SPLIT, coherent);
                        l1.write(mem, span as usize * 8, &[ste::l1_descriptor(table)], true);
                        l2[span as usize] = Some(table);
                    }
                    span += 1;
                }
            }
            if !coherent {
                mem.clean(l1.pa, l1.size);
            }
            let base_cfg = STRTAB_BASE_CFG::FMT::TwoLevel
                + STRTAB_BASE_CFG::SPLIT.val(SPLIT)
                + STRTAB_BASE_CFG::LOG2SIZE.val(log2);
            (StreamTable::TwoLevel { l1, log2, l2 }, (l1.pa, base_cfg))
        };
        io.set64(
            STRTAB_BASE,
            STRTAB_BASE::RA::SET + STRTAB_BASE::ADDR.val(strtab_cfg.0.0 >> STRTAB_BASE::ADDR.shift),
        );
        io.set(STRTAB_BASE_CFG, strtab_cfg.1);

        // 5. Queues.
        let cmdq_log2 = features
            .cmdqs
            .min(cfg.cmdq_log2.unwrap_or(CMDQ_LOG2_CAP))
            .min(CMDQ_LOG2_CAP);
        let evtq_log2 = features
            .eventqs
            .min(cfg.evtq_log2.unwrap_or(EVTQ_LOG2_CAP))
            .min(EVTQ_LOG2_CAP);
        let cq = tri!(alloc(mem, 16 << cmdq_log2));
        let eq = tri!(alloc(mem, 32 << evtq_log2));
        if !coherent {
            mem.clean(eq.pa, eq.size);
        }
        io.set64(CMDQ_BASE, queue_base(cq, cmdq_log2));
        io.write32(CMDQ_PROD, 0);
        io.write32(CMDQ_CONS, 0);
        io.set64(EVENTQ_BASE, queue_base(eq, evtq_log2));
        io.write32(EVENTQ_PROD, 0);
        io.write32(EVENTQ_CONS, 0);
        let msi = if features.msi && coherent {
            Some(tri!(alloc(mem, 64)))
        } else {
            None
        };

        // 6. Attributes of the SMMU's own accesses; private TLB maintenance for now.
        let cr1 = if coherent {
            CR1::QUEUE_IC::WriteBack
                + CR1::QUEUE_OC::WriteBack
                + CR1::QUEUE_SH::Inner
                + CR1::TABLE_IC::WriteBack
                + CR1::TABLE_OC::WriteBack
                + CR1::TABLE_SH::Inner
        } else {
            CR1::QUEUE_IC::NonCacheable
                + CR1::QUEUE_OC::NonCacheable
                + CR1::QUEUE_SH::Outer
                + CR1::TABLE_IC::NonCacheable
                + CR1::TABLE_OC::NonCacheable
                + CR1::TABLE_SH::Outer
        };
        io.set(CR1, cr1);
        let cr2 = (CR2::PTM::SET + CR2::RECINVSID::SET).value;
        io.write32(CR2, cr2);

        let mut smmu = Self {
            io,
            features,
            coherent,
            strtab,
            cmdq: CmdQueue::new(cq, cmdq_log2),
            evtq: EvtQueue {
                q: eq,
                log2: evtq_log2,
                cons: 0,
            },
            msi,
            sync_seq: 0,
            cr2,
            stats: SmmuStats::default(),
            errors: Vec::new(),
            pending: None,
            _mem: PhantomData,
        };

        // 7. Queues on, caches clean, translation on.
        macro_rules! tri_smmu {
            ($e:expr) => {
                match $e {
                    Ok(v) => v,
                    Err(e) => return Err((smmu.io, e)),
                }
            };
        }
        tri_smmu!(write_cr0(&smmu.io, CR0::CMDQEN::SET.value));
        smmu.push(mem, Command::cfgi_all());
        smmu.push(mem, Command::tlbi_nsnh_all());
        if features.hyp {
            smmu.push(mem, Command::tlbi_el2_all());
        }
        tri_smmu!(smmu.sync(mem));
        tri_smmu!(write_cr0(
            &smmu.io,
            (CR0::CMDQEN::SET + CR0::EVENTQEN::SET).value
        ));
        tri_smmu!(write_cr0(&smmu.io, Self::cr0_enabled(&features)));
        Ok(smmu)
    }

    /// What the SMMU implements.
    pub const fn features(&self) -> &Features {
        &self.features
    }

    /// Counters.
    pub const fn stats(&self) -> &SmmuStats {
        &self.stats
    }

    /// Whether table and queue writes are cleaned to PoC (the SMMU does not snoop).
    pub const fn needs_clean(&self) -> bool {
        !self.coherent
    }

    /// Whether `CMD_SYNC` completion is signalled by an MSI write.
    pub const fn uses_msi(&self) -> bool {
        self.msi.is_some()
    }

    /// Whether the SMMU takes part in the CPUs' broadcast TLB maintenance (`CR2.PTM`
    /// clear); then a CPU `TLBI … IS` + `DSB` also invalidates the SMMU's entries.
    pub fn btm_active(&self) -> bool {
        !CR2::PTM.is_set(self.cr2)
    }

    /// The register seam.
    pub const fn io(&self) -> &I {
        &self.io
    }

    /// Sets `CR2.PTM`: `false` makes the SMMU take part in broadcast TLB maintenance
    /// (needs `IDR0.BTM`), `true` makes it private again. `CR2` may only change while
    /// `SMMUEN = 0`, so translation is briefly switched off (`GBPA.ABORT`: DMA aborts
    /// meanwhile — do this at boot, before devices run); the SMMU TLB is then invalidated
    /// (`TLBI_NSNH_ALL` + `CMD_SYNC`), as entries may have missed broadcasts.
    pub fn set_ptm(&mut self, mem: &mut M, ptm: bool) -> Result<(), SmmuError> {
        if !ptm && !self.features.btm {
            return Err(SmmuError::Unsupported(
                "broadcast TLB maintenance (IDR0.BTM = 0)",
            ));
        }
        let cr2 = if ptm {
            CR2::PTM::SET.modify(self.cr2)
        } else {
            CR2::PTM::CLEAR.modify(self.cr2)
        };
        if cr2 == self.cr2 {
            return Ok(());
        }
        let on = Self::cr0_enabled(&self.features);
        write_cr0(&self.io, CR0::SMMUEN::CLEAR.modify(on))?;
        self.io.write32(CR2, cr2);
        self.cr2 = cr2;
        self.push(mem, Command::tlbi_nsnh_all());
        self.sync(mem)?;
        write_cr0(&self.io, on)
    }
}
