//! QEMU's `edu` device (hw/misc/edu.c, QEMU.md section 6): finding it on the PCI bus,
//! placing its BAR0 in the host bridge's 32-bit window, and its DMA engine.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use hyp::dtb::{PciWindow, Platform};

use crate::logic::{self, CMD_BUS_MASTER, CMD_MEM, PAGE};
use crate::pci::{self, Bdf, Ecam};
use crate::rt::{self, read32, read64, write32, write64};

pub const VENDOR: u16 = 0x1234;
pub const DEVICE: u16 = 0x11e8;

/// Identification register (0x010000ed: version 1.0).
const REG_ID: u64 = 0x00;
/// Liveness register: reads back the inverse of what was written.
const REG_LIVENESS: u64 = 0x04;
const REG_DMA_SRC: u64 = 0x80;
const REG_DMA_DST: u64 = 0x88;
const REG_DMA_COUNT: u64 = 0x90;
const REG_DMA_CMD: u64 = 0x98;
const CMD_START: u64 = 1 << 0;
/// Direction bit: 0 = RAM -> edu, 1 = edu -> RAM.
const CMD_TO_RAM: u64 = 1 << 1;
/// The device's DMA buffer, in its own address space.
pub const BUF_ADDR: u64 = 0x4_0000;
pub const BUF_SIZE: u64 = 0x1000;
/// How long a DMA may take (it takes 100 ms of QEMU's virtual clock).
const DMA_TIMEOUT_MS: u64 = 10_000;
const EDU_ID: u32 = 0x0100_00ed;

/// The programmed device.
pub struct Edu {
    /// CPU address of BAR0.
    regs: u64,
    /// Where it is.
    pub bdf: Bdf,
    /// StreamID and SMMU phandle, from the DTB's `iommu-map`.
    pub stream: Option<(u32, u32)>,
}

/// A DMA that was started and not yet waited for.
#[must_use = "a started DMA must be waited for"]
pub struct Pending<'e> {
    edu: &'e Edu,
    what: &'static str,
    src: u64,
    dst: u64,
    len: u64,
    start: u64,
}

impl Edu {
    /// Finds edu below the DTB's first PCI host bridge, puts BAR0 at the start of the
    /// bridge's 32-bit memory window, enables memory decoding and bus mastering, and
    /// checks the ID and liveness registers. Returns the device and what was done.
    pub fn setup(plat: &Platform) -> Result<(Edu, String), String> {
        let (ecam, window) = Self::bridge(plat)?;
        let bus = ecam.bus_start;
        let bdf = ecam.find(bus, VENDOR, DEVICE).ok_or_else(|| {
            format!(
                "no {VENDOR:04x}:{DEVICE:04x} (edu) on bus {bus:#x} of ECAM {ecam_base:#x}",
                ecam_base = ecam.window.base.get()
            )
        })?;
        let (edu, info, _) = Self::program(plat, &ecam, bdf, window)?;
        Ok((edu, info))
    }

    /// Like [`Edu::setup`] for every edu on the first bus of the first PCI host bridge, in
    /// device/function order, their BAR0s one after the other from the start of the
    /// window. At least one must be there.
    pub fn setup_all(plat: &Platform) -> Result<Vec<(Edu, String)>, String> {
        let (ecam, window) = Self::bridge(plat)?;
        let bus = ecam.bus_start;
        let mut out = Vec::new();
        let mut free = Some(window);
        for bdf in ecam.find_all(bus, VENDOR, DEVICE).collect::<Vec<_>>() {
            let w = free.ok_or_else(|| format!("no room left in the PCI window for {bdf}"))?;
            let (edu, info, end_cpu) = Self::program(plat, &ecam, bdf, w)?;
            free = logic::window_after(w, end_cpu - w.cpu_addr);
            out.push((edu, info));
        }
        if out.is_empty() {
            return Err(format!(
                "no {VENDOR:04x}:{DEVICE:04x} (edu) on bus {bus:#x} of ECAM {ecam_base:#x}",
                ecam_base = ecam.window.base.get()
            ));
        }
        Ok(out)
    }

    /// The first PCI host bridge's ECAM and 32-bit memory window.
    fn bridge(plat: &Platform) -> Result<(Ecam, PciWindow), String> {
        let host = plat
            .pci_hosts
            .first()
            .ok_or("the DTB has no PCI host bridge (no node with iommu-map)")?;
        let ecam = host.ecam.ok_or("the PCI host bridge has no ECAM reg")?;
        let window = host
            .mem32
            .ok_or("the PCI host bridge has no 32-bit memory window in `ranges`")?;
        let bus = host.bus_range.map_or(0, |(first, _)| first);
        Ok((
            Ecam {
                window: ecam,
                bus_start: bus,
            },
            window,
        ))
    }

    /// Programs edu at `bdf`: BAR0 at the first fitting place of `window`, decoding and
    /// bus mastering on, ID and liveness checked. Returns the device, what was done and
    /// the CPU address just past its BAR.
    fn program(
        plat: &Platform,
        ecam: &Ecam,
        bdf: Bdf,
        window: PciWindow,
    ) -> Result<(Edu, String, u64), String> {
        // Decoding off while the BAR is sized and moved.
        let cmd = ecam.read(bdf, pci::COMMAND_STATUS) & 0xffff;
        let off = cmd & !u32::from(CMD_MEM | CMD_BUS_MASTER);
        ecam.write(bdf, pci::COMMAND_STATUS, off);
        ecam.write(bdf, pci::BAR0, u32::MAX);
        let probe = ecam.read(bdf, pci::BAR0);
        let upper = if (probe >> 1) & 3 == 2 {
            ecam.write(bdf, pci::BAR0 + 4, u32::MAX);
            Some(ecam.read(bdf, pci::BAR0 + 4))
        } else {
            None
        };
        let bar = logic::mem_bar(probe, upper).map_err(|e| format!("{bdf} BAR0 is {e}"))?;
        let (pci_addr, cpu_addr) = logic::place_bar(window, bar.size).ok_or_else(|| {
            format!(
                "BAR0 ({:#x} bytes) does not fit the 32-bit window {:#x}+{:#x}",
                bar.size, window.pci_addr, window.size
            )
        })?;
        ecam.write(bdf, pci::BAR0, pci_addr as u32);
        if bar.is_64 {
            ecam.write(bdf, pci::BAR0 + 4, (pci_addr >> 32) as u32);
        }
        ecam.write(
            bdf,
            pci::COMMAND_STATUS,
            off | u32::from(CMD_MEM | CMD_BUS_MASTER),
        );
        let cmd_now = ecam.read(bdf, pci::COMMAND_STATUS) & 0xffff;
        let bar_now = ecam.read(bdf, pci::BAR0) & !0xf;
        if bar_now != pci_addr as u32 || cmd_now & u32::from(CMD_MEM | CMD_BUS_MASTER) == 0 {
            return Err(format!(
                "{bdf}: BAR0 reads {bar_now:#x} (wrote {pci_addr:#x}), command {cmd_now:#x}"
            ));
        }

        let edu = Edu {
            regs: cpu_addr,
            bdf,
            stream: logic::stream_id(plat, 0, bdf.rid()),
        };
        // SAFETY: BAR0 was just placed at `cpu_addr` with memory decoding on; 0x00 and
        // 0x04 are edu's 32-bit ID and liveness registers.
        let (id, alive) = unsafe {
            let id = read32(edu.regs + REG_ID);
            write32(edu.regs + REG_LIVENESS, 0x1234_5678);
            (id, read32(edu.regs + REG_LIVENESS))
        };
        if id != EDU_ID || alive != !0x1234_5678 {
            return Err(format!(
                "edu at {bdf}, BAR0 CPU {cpu_addr:#x}: ID {id:#x} (expected {EDU_ID:#x}), liveness {alive:#x} (expected {:#x})",
                !0x1234_5678u32
            ));
        }
        let sid = match edu.stream {
            Some((sid, iommu)) => format!("StreamID {sid:#x} on the IOMMU with phandle {iommu:#x}"),
            None => "no iommu-map entry".into(),
        };
        let info = format!(
            "edu {VENDOR:04x}:{DEVICE:04x} at {bdf} (RID {:#x}, {sid}); ECAM {:#x}; BAR0 {} KiB -> PCI {pci_addr:#x} = CPU {cpu_addr:#x} (window CPU {:#x} = PCI {:#x}, {:#x} bytes); command {cmd_now:#x}; ID {id:#x}",
            bdf.rid(),
            ecam.window.base.get(),
            bar.size / 1024,
            window.cpu_addr,
            window.pci_addr,
            window.size,
        );
        Ok((edu, info, cpu_addr + bar.size))
    }

    /// DMA of `len` bytes from RAM at `ram` into edu's buffer at offset `off`.
    pub fn to_device(&self, ram: u64, off: u64, len: u64) -> Result<u64, String> {
        self.dma(ram, BUF_ADDR + off, len, 0, off)
    }

    /// DMA of `len` bytes from edu's buffer at offset `off` to RAM at `ram`.
    pub fn to_ram(&self, off: u64, ram: u64, len: u64) -> Result<u64, String> {
        self.dma(BUF_ADDR + off, ram, len, CMD_TO_RAM, off)
    }

    /// Starts a DMA of `len` bytes from RAM (device address `ram`) into edu's buffer at
    /// offset `off`; [`Pending::wait`] waits for it.
    pub fn start_to_device(&self, ram: u64, off: u64, len: u64) -> Result<Pending<'_>, String> {
        self.start(ram, BUF_ADDR + off, len, 0, off)
    }

    /// Starts a DMA of `len` bytes from edu's buffer at offset `off` to RAM (device
    /// address `ram`); [`Pending::wait`] waits for it.
    pub fn start_to_ram(&self, off: u64, ram: u64, len: u64) -> Result<Pending<'_>, String> {
        self.start(BUF_ADDR + off, ram, len, CMD_TO_RAM, off)
    }

    /// Runs one DMA and waits for it; returns how long it took in milliseconds.
    fn dma(&self, src: u64, dst: u64, len: u64, dir: u64, off: u64) -> Result<u64, String> {
        self.start(src, dst, len, dir, off)?.wait()
    }

    /// Starts one DMA.
    fn start(
        &self,
        src: u64,
        dst: u64,
        len: u64,
        dir: u64,
        off: u64,
    ) -> Result<Pending<'_>, String> {
        // edu aborts QEMU itself on a transfer outside its buffer: never ask for one.
        if len == 0 || off.checked_add(len).is_none_or(|end| end > BUF_SIZE) {
            return Err(format!(
                "DMA of {len:#x} bytes at buffer offset {off:#x} is outside edu's buffer"
            ));
        }
        let what = if dir == CMD_TO_RAM {
            "edu -> RAM"
        } else {
            "RAM -> edu"
        };
        // SAFETY: edu's DMA registers in BAR0 (64-bit accesses are allowed at 0x80 and up).
        unsafe {
            if read64(self.regs + REG_DMA_CMD) & CMD_START != 0 {
                return Err(format!(
                    "{what} DMA {src:#x} -> {dst:#x}: an earlier DMA is still running"
                ));
            }
            write64(self.regs + REG_DMA_SRC, src);
            write64(self.regs + REG_DMA_DST, dst);
            write64(self.regs + REG_DMA_COUNT, len);
            // The buffers' contents must be in memory before the device reads them.
            rt::dsb();
            write64(self.regs + REG_DMA_CMD, CMD_START | dir);
        }
        Ok(Pending {
            edu: self,
            what,
            src,
            dst,
            len,
            start: rt::counter(),
        })
    }
}

impl Pending<'_> {
    /// Waits for the DMA to complete; returns how long it took in milliseconds.
    pub fn wait(self) -> Result<u64, String> {
        let Pending {
            edu,
            what,
            src,
            dst,
            len,
            start,
        } = self;
        loop {
            // SAFETY: edu's DMA command register in BAR0.
            let cmd = unsafe { read64(edu.regs + REG_DMA_CMD) };
            let now = rt::counter();
            if cmd & CMD_START == 0 {
                rt::dsb();
                return Ok(rt::ms_between(start, now));
            }
            if rt::ms_between(start, now) > DMA_TIMEOUT_MS {
                return Err(format!(
                    "{what} DMA {src:#x} -> {dst:#x} ({len} bytes) did not complete within {DMA_TIMEOUT_MS} ms"
                ));
            }
        }
    }
}

const _: () = assert!(BUF_SIZE == PAGE as u64);
