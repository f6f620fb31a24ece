//! The boot flow: from firmware's jump to the host's first instruction at EL1, and the
//! secondary / warm-boot path PSCI brings CPUs through.

use crate::arch::{self, read_sysreg, write_sysreg};
use crate::cpu::{self, CPUS, MAX_CPUS, NR_CPUS, STACK_SIZE};
use crate::error::BootError;
use crate::mm::{self, SCTLR_EL2_MMU_ON};
use crate::platform::El2Cpu;
use crate::println;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;
use host_abi::PAGE;
use hyp::addr::{ByteSize, GroupedHex, Ipa, PhysRange};
use hyp::dma::{Hyp, HypInit};
use hyp::dtb::{self, Platform};
use hyp::el2_s1::{MAIR_EL2, S1Attr};
use hyp::host_mem::HostMem;
use hyp::layout;
use hyp::masters::{Decision, Masters};
use hyp::psci::PowerState;
use hyp::s2mmu::{Granule, S2Attrs, S2Geometry, Stage2};
use hyp::vmid_alloc::VmidAllocator;
use spin::{Mutex, Once};

const MB: u64 = 1 << 20;
/// Pool size when `warden.pool=` is not given.
const DEFAULT_POOL: u64 = 32 * MB;
/// The host's VMID: the first one, shared by the CPU and (later) every host StreamID.
pub const HOST_VMID: u16 = 0;

unsafe extern "C" {
    fn secondary_entry();
    fn enter_host(entry: u64, x0: u64, stack_top: u64) -> !;
    static __stacks_start: u8;
}

/// Physical address of the secondary / warm-boot entry point (identity-mapped).
pub fn secondary_entry_pa() -> u64 {
    secondary_entry as *const () as u64
}

fn stack_top(slot: usize) -> u64 {
    &raw const __stacks_start as u64 + (slot as u64 + 1) * STACK_SIZE
}

/// What every CPU needs to enter the host.
struct HostCpuState {
    vtcr: u64,
    vttbr: u64,
}

static HOST_CPU: Once<HostCpuState> = Once::new();

/// The hypervisor core: host memory and its stage-2 (shared by the CPU and every host
/// StreamID), the SMMUs, DMA domains, pins, statistics.
pub static HYP: Once<WardenCore> = Once::new();

/// The core with Warden's EL2 seams.
pub type WardenCore = Hyp<crate::platform::El2SmmuIo, mm::S2Mem, El2Cpu>;

/// The one VMID allocator for CPU and SMMU stage-2 contexts.
pub static VMIDS: Mutex<VmidAllocator> = Mutex::new(VmidAllocator::unconfigured());

/// Boot CPU entry from head.S, MMU off. `dtb` from firmware's x0, `base` the load address.
#[unsafe(no_mangle)]
extern "C" fn primary_main(dtb_pa: u64, base: u64) -> ! {
    // SAFETY: first thing on the boot CPU, MMU off, nothing else running.
    let Ok(map) = (unsafe { mm::early_mmu(dtb_pa) }) else {
        // No usable DTB: there is no console to complain on either.
        arch::park()
    };
    *mm::HYP_MAP.lock() = Some(map);
    mm::init_boot_heap();
    match boot(dtb_pa, base) {
        Ok(()) => unreachable_park(),
        Err(e) => {
            println!("warden: boot failed: {e}");
            log::error!("boot failed: {e}; parking the boot CPU");
            arch::park()
        }
    }
}

fn unreachable_park() -> ! {
    arch::park()
}

/// Maps RAM, the pool and the console, builds the host stage-2 and DTB, starts the host.
fn boot(dtb_pa: u64, base: u64) -> Result<(), BootError> {
    // SAFETY: the early map covers the whole DTB (its header size) read-write.
    let dtb_len = unsafe { u32::from_be((dtb_pa as *const u32).add(1).read()) } as usize;
    // SAFETY: as above; the blob stays untouched while Warden reads it.
    let blob = unsafe { core::slice::from_raw_parts(dtb_pa as *const u8, dtb_len) };
    let plat =
        Platform::parse(blob).map_err(|e| BootError::Dtb("cannot read the device tree", e))?;

    if let Some(con) = &plat.console
        && con.kind == dtb::ConsoleKind::Pl011
        && mm::map_hyp(con.regs, S1Attr::Device).is_ok()
    {
        // SAFETY: the DTB names this PL011 and it is now mapped Device at EL2.
        unsafe { crate::console::init_pl011(con.regs.base.get() as usize) };
    }
    let parsed = hyp::bootargs::parse(plat.bootargs.as_deref().unwrap_or(""));
    let opts = parsed.options;
    crate::console::init_log(opts.log);

    let id = cpu::read_id_regs();
    println!("Warden v{} — EL2 hypervisor", env!("CARGO_PKG_VERSION"));
    println!(
        "warden: load address {base:#x}, image {}",
        mm::image_range()
    );
    for w in parsed.warnings() {
        log::warn!("bootargs: {w}");
    }
    println!("warden: options {opts}");
    println!(
        "warden: CPU MIDR {:#x}: PA {} bits, VMID {} bits, {}",
        read_sysreg!("midr_el1"),
        id.pa_bits(),
        id.vmid_bits(),
        CpuFeatures(&id)
    );

    match plat.psci.as_ref().map(|p| p.method) {
        Some(dtb::PsciMethod::Smc) => {}
        Some(dtb::PsciMethod::Hvc) => log::warn!(
            "the DTB's PSCI uses HVC: no EL3 firmware to forward to; host PSCI calls will fail"
        ),
        None => log::warn!("no PSCI in the DTB: secondary CPUs cannot be started"),
    }
    crate::trap::init_firmware(&plat, opts.smc_allow);

    // ---- RAM, carve-out and pool ------------------------------------------------------
    let ram: Vec<PhysRange> = plat.ram.clone();
    if ram.is_empty() {
        return Err(BootError::Platform("no /memory in the device tree"));
    }
    for r in &ram {
        println!("warden: RAM {r}");
    }
    let image = mm::image_range();
    let image_2m = PhysRange::new(
        image.base.get(),
        layout::align_up(image.size, 2 * MB).ok_or("Warden's image size overflows")?,
    );
    let kernel = plat
        .kernel
        .as_ref()
        .ok_or("no multiboot,kernel module under /chosen")?;
    let kernel_span = kernel_footprint(kernel.range)?;
    let ramdisk = plat.ramdisk.as_ref().map(|m| m.range);
    let mut taken: Vec<PhysRange> = plat.reservations.iter().map(|r| r.range).collect();
    taken.push(PhysRange::new(dtb_pa, dtb_len as u64));
    taken.push(kernel_span);
    if let Some(rd) = ramdisk {
        taken.push(rd);
    }
    taken.push(image_2m);
    if let Some(clash) = taken[..taken.len() - 1]
        .iter()
        .find(|t| t.overlaps(&image_2m))
    {
        log::error!("Warden's image {image_2m} overlaps {clash}");
        return Err(BootError::Platform(
            "Warden's image overlaps the DTB, a module or a reservation",
        ));
    }
    // Spin-table CPUs would start at the host's release address, at EL2: they are not
    // the host's, and the pages holding their release addresses (and firmware's holding
    // pen) leave its reach. Nothing of Warden's (pool, host DTB) may land there either: a
    // write would release the CPU.
    let release_pages = plat.spin_table_release_pages(arch::mpidr());
    taken.extend_from_slice(&release_pages);
    let pool_size = opts.pool_size.unwrap_or(DEFAULT_POOL);
    let pool = layout::find_free(&ram, &taken, pool_size, 2 * MB, Some(image_2m.end()))
        .ok_or("no free RAM for Warden's pool (warden.pool=)")?;
    taken.push(pool);
    let mut carveouts: Vec<PhysRange> = if pool.base.get() == image_2m.end() {
        alloc::vec![PhysRange::new(
            image_2m.base.get(),
            image_2m.size + pool.size
        )]
    } else {
        alloc::vec![image_2m, pool]
    };
    // The carve-out must be RAM the DTB describes: anything else may be MMIO, or memory
    // the host learns about some other way and would then use.
    for c in &carveouts {
        if let Some(out) = layout::outside_ram(&ram, *c) {
            println!("warden: carve-out {c} is not inside /memory ({out} is not RAM)");
            return Err(BootError::Platform(
                "Warden's carve-out (image or pool) lies outside the DTB's /memory",
            ));
        }
    }
    for page in &release_pages {
        log::warn!(
            "spin-table CPU(s) refused: {page} (release address, holding pen) kept from the host"
        );
    }
    let mut hidden_mmio = layout::keep_from_host(&ram, &mut carveouts, &release_pages);

    // Map all RAM (the image keeps its executable mapping) and hand the pool to the heap.
    for bank in &ram {
        let mut err = Ok(());
        layout::subtract(*bank, &[image], |piece| {
            if err.is_ok() {
                err = mm::map_hyp(piece, S1Attr::NormalRw);
            }
        });
        err.map_err(|e| BootError::Map("cannot map RAM at EL2", e))?;
    }
    // SAFETY: the pool lies in RAM (mapped above), overlaps nothing else, and is
    // Warden's from now on (it leaves the host stage-2 below).
    unsafe { mm::add_to_heap(pool) };
    for c in &carveouts {
        println!("warden: carve-out {c}");
    }
    println!("warden: pool {pool}");

    // ---- Host modules -------------------------------------------------------------------
    println!(
        "warden: host kernel {}, bootargs \"{}\"",
        kernel.range,
        kernel.bootargs.as_deref().unwrap_or("")
    );
    if let Some(rd) = ramdisk {
        println!("warden: host ramdisk {rd}");
    }

    // WFE-based waits (SMMU CMD_SYNC with SEV) are bounded by the timer's event stream.
    write_sysreg!(
        "cnthctl_el2",
        read_sysreg!("cnthctl_el2") | hyp::el2_setup::event_stream_bits(read_sysreg!("cntfrq_el0"))
    );
    arch::isb();

    // ---- SMMUs, then the host stage-2 they share with the CPU ---------------------------
    let mut probed = crate::iommu::probe_all(&plat)?;
    // ---- Who may master DMA: one decision per device node --------------------------------
    // The SMMUs' frames and the GIC's emulated frames stay out of the host stage-2.
    hidden_mmio.extend_from_slice(&probed.frames);
    hidden_mmio.extend(crate::gic::init(&plat)?);
    let masters = decide_masters(blob, &plat, &probed)?;
    let host_mmio = masters
        .host_mmio()
        .map_err(|e| BootError::Dtb("no memory for the host's MMIO list", e))?;
    let s2 = build_host_stage2(
        &id,
        &plat,
        &ram,
        &carveouts,
        probed.min_oas,
        &hidden_mmio,
        &host_mmio,
    )?;
    let geom = s2.geometry();
    let vtcr = geom.vtcr_el2() | if id.vmid_bits() == 16 { 1 << 19 } else { 0 };
    let vttbr = s2.root().get() | ((HOST_VMID as u64) << 48);
    println!(
        "warden: host stage-2: IPA {} bits, PA {} bits, 4K granule, start level {}, {} concatenated root table(s), root {}, VTCR_EL2 {vtcr:#x}",
        geom.ipa_bits(),
        geom.pa_bits(),
        geom.start_level(),
        geom.root_tables(),
        GroupedHex(s2.root().get())
    );
    let btm =
        crate::iommu::attach_host(&mut probed, &plat, &s2, HOST_VMID, opts.btm, id.vmid_bits());
    let smmu16 = probed.smmus.iter().all(|s| s.features().vmid16);
    let vmid_bits = if id.vmid_bits() == 16 && smmu16 {
        16
    } else {
        8
    };
    {
        let mut v = VMIDS.lock();
        v.configure(vmid_bits)
            .map_err(|e| BootError::Vmid("cannot configure the VMID allocator", e))?;
        v.reserve(hyp::vmid_alloc::Vmid::new(HOST_VMID))
            .map_err(|e| BootError::Vmid("cannot reserve the host VMID", e))?;
    }
    println!(
        "warden: VMIDs: {vmid_bits} bits shared by CPU and SMMU stage-2; host VMID {HOST_VMID}"
    );
    let init = HypInit {
        host: HostMem::new(s2, ram.clone(), carveouts.clone()),
        host_vmid: HOST_VMID,
        smmus: probed.smmus,
        btm,
        vmids: &VMIDS,
    };
    let cfg = hyp::dma::Config::from_options(&opts);
    // SAFETY: the host stage-2 and every SMMU were built with `S2Mem` (the one pool) and
    // from now on only the core touches them.
    let core = unsafe { Hyp::new(init, mm::S2Mem, El2Cpu, cfg) }
        .map_err(|e| BootError::Core("cannot set up the DMA hypercall core", e))?;
    println!(
        "warden: DMA domains: batch {} ranges, deadline {} ms, domain invalidation by {}",
        cfg.batch_threshold,
        cfg.deadline_ns / 1_000_000,
        if core.cpu_path() {
            "CPU TLBIs (BTM)"
        } else {
            "SMMU commands"
        }
    );
    HYP.call_once(|| core);
    crate::gic::core_ready();
    HOST_CPU.call_once(|| HostCpuState { vtcr, vttbr });

    // ---- Host DTB ----------------------------------------------------------------------
    let out_size = layout::align_up(dtb_len as u64 + 64 * 1024, PAGE)
        .filter(|&s| s <= 2 * MB)
        .ok_or(BootError::Platform(
            "device tree too large for the host (over 2 MiB)",
        ))?;
    let out = layout::find_free(&ram, &taken, 2 * MB, 2 * MB, Some(pool.end()))
        .ok_or("no free RAM for the host device tree")?;
    // SAFETY: `out` is free host RAM, mapped at EL2, overlapping nothing in use.
    let out_buf =
        unsafe { core::slice::from_raw_parts_mut(out.base.get() as *mut u8, out_size as usize) };
    let hidden = masters
        .hidden_offsets()
        .map_err(|e| BootError::Dtb("no memory for the host DTB edits", e))?;
    let mut edits = dtb::HostDtbEdits {
        disable_nodes: &hidden,
        ..dtb::HostDtbEdits::for_host(&plat, &carveouts)
    };
    edits.refuse_spin_table = Some(arch::mpidr());
    let n = dtb::build_host_dtb(blob, out_buf, &edits)
        .map_err(|e| BootError::Dtb("cannot build the host DTB", e))?;
    arch::clean_dcache_range(out.base.get(), n as u64);
    println!(
        "warden: host DTB {}",
        PhysRange::new(out.base.get(), n as u64)
    );

    // ---- CPUs --------------------------------------------------------------------------
    setup_cpu_slots(&plat)?;
    let (used, total) = mm::heap_usage();
    println!(
        "warden: heap {} used of {}; starting the host",
        ByteSize(used as u64),
        ByteSize(total as u64)
    );

    let me = 0;
    write_sysreg!("tpidr_el2", me as u64);
    CPUS[me].power.set(PowerState::On);
    enter_host_on_this_cpu(kernel.range.base.get(), out.base.get(), me)
}

/// The kernel Image's footprint: its file, or `image_size` from its header if larger.
fn kernel_footprint(file: PhysRange) -> Result<PhysRange, BootError> {
    if file.size < 64 {
        return Err(BootError::Platform(
            "host kernel module too small for an arm64 Image",
        ));
    }
    let hdr = file.base.get() as *const u64;
    // SAFETY: RAM holding the module is mapped at EL2 (early map covers the DTB only, so
    // map the header page first).
    mm::map_hyp(PhysRange::new(file.base.get(), 64), S1Attr::NormalRw)
        .map_err(|e| BootError::Map("cannot map the kernel header", e))?;
    // SAFETY: mapped just above; an aligned 64-byte header.
    let (text_offset, image_size, magic) = unsafe {
        (
            hdr.add(1).read(),
            hdr.add(2).read(),
            (hdr.add(7) as *const u32).read(),
        )
    };
    if magic != 0x644d_5241 {
        return Err(BootError::Platform(
            "host kernel module is not an arm64 Image (bad magic)",
        ));
    }
    if !(file.base.get() - text_offset).is_multiple_of(2 * MB) {
        return Err(BootError::Platform(
            "host kernel module must sit text_offset after a 2 MiB boundary",
        ));
    }
    Ok(PhysRange::new(file.base.get(), file.size.max(image_size)))
}

/// Decides, node by node, which devices the host may reach ([`hyp::masters`]), from the
/// DTB, the SMMUs Warden drives and `warden.passthrough=`, and prints every decision.
fn decide_masters(
    blob: &[u8],
    plat: &Platform,
    probed: &crate::iommu::Probed,
) -> Result<Masters, BootError> {
    let nodes = dtb::device_nodes(blob)
        .map_err(|e| BootError::Dtb("cannot list the device tree's nodes", e))?;
    let live: Vec<u64> = probed
        .nodes
        .iter()
        .filter_map(|&i| plat.smmus.get(i))
        .map(|s| s.regs.base.get())
        .collect();
    let pass: Vec<&str> =
        hyp::bootargs::passthrough_paths(plat.bootargs.as_deref().unwrap_or("")).collect();
    // The GIC nodes src/gic.rs traps (gic::init ran first): any other GICv3 or ITS is hidden.
    let gic = hyp::masters::emulated_gic(plat.gic.as_ref())
        .map_err(|e| BootError::Dtb("no memory for the decisions", e))?;
    let m = hyp::masters::decide(nodes, &live, &gic, &pass)
        .map_err(|e| BootError::Dtb("no memory for the decisions", e))?;
    for v in &m.verdicts {
        if v.decision == Decision::Passthrough {
            log::warn!("UNPROTECTED: device {}", m.describe(v));
        }
        println!("warden: device {}", m.describe(v));
    }
    for n in &m.notes {
        log::warn!("device: {}", m.describe_note(n));
    }
    println!(
        "warden: DMA masters: {} device node(s): {} translated, {} emulated, {} no-dma, {} warden, {} hidden (disabled for the host, out of its stage-2), {} PASSTHROUGH (UNPROTECTED)",
        m.verdicts.len(),
        m.count(Decision::Translated),
        m.count(Decision::Emulated),
        m.count(Decision::NoDma),
        m.count(Decision::Warden),
        m.count(Decision::Hidden),
        m.count(Decision::Passthrough)
    );
    Ok(m)
}

fn build_host_stage2(
    id: &hyp::el2_setup::IdRegs,
    plat: &Platform,
    ram: &[PhysRange],
    carveouts: &[PhysRange],
    smmu_oas: Option<u32>,
    smmu_frames: &[PhysRange],
    host_mmio: &[PhysRange],
) -> Result<Stage2, BootError> {
    // One geometry both the CPU and every SMMU can walk: output size within the CPU's
    // PARange and every SMMU's OAS, input size covering all RAM and MMIO in the DTB.
    let pa_bits = id.pa_bits().min(48).min(smmu_oas.unwrap_or(48));
    let top = ram
        .iter()
        .map(|r| r.end())
        .chain([plat.max_mmio_end])
        .max()
        .unwrap_or(0);
    let ipa_bits = [32u32, 36, 40, 42, 44, 48]
        .into_iter()
        .find(|&b| b <= pa_bits && top <= 1u64 << b)
        .ok_or(BootError::Platform(
            "the platform's address map exceeds the CPU's or an SMMU's address size",
        ))?;
    let pa_bits = [32u32, 36, 40, 42, 44, 48]
        .into_iter()
        .rev()
        .find(|&b| b <= pa_bits)
        .ok_or(BootError::Platform("the CPU's PA size is below 32 bits"))?;
    let geom = S2Geometry::new(Granule::Size4K, ipa_bits, pa_bits)
        .map_err(|e| BootError::Stage2("no stage-2 geometry for the host", e))?;
    let mut mem = mm::S2Mem;
    // Nothing walks this table yet (VTTBR_EL2 and the STEs are set later).
    let mut tlb = hyp::s2mmu::NoTlb;
    // SAFETY: every use of the host stage-2 passes `mm::S2Mem`, whose tables come from the
    // heap and are freed only through it.
    let mut s2 = unsafe { Stage2::new(geom, &mut mem) }
        .map_err(|e| BootError::Stage2("no memory for the host stage-2", e))?;
    let space = PhysRange::new(0, 1u64 << ipa_bits);
    let mut err = Ok(());
    // MMIO: only the pages of devices the host may reach (`host_mmio`, from
    // hyp::masters: nothing hidden, nothing undescribed), Device memory, largest blocks
    // possible; never RAM or the SMMUs' register frames, which only Warden may touch.
    let mut holes: Vec<PhysRange> = ram.to_vec();
    holes.extend_from_slice(smmu_frames);
    for mmio in host_mmio.iter().filter(|m| m.base.get() < space.end()) {
        let mmio = PhysRange::new(
            mmio.base.get(),
            mmio.size.min(space.end() - mmio.base.get()),
        );
        layout::subtract(mmio, &holes, |r| {
            if err.is_ok() {
                err = s2.map(
                    &mut mem,
                    &mut tlb,
                    Ipa(r.base.get()),
                    r.base,
                    r.size,
                    S2Attrs::DEVICE_RW,
                );
            }
        });
    }
    // RAM minus Warden's carve-outs: Normal write-back, host-owned.
    for bank in ram {
        layout::subtract(*bank, carveouts, |r| {
            if err.is_ok() {
                err = s2.map(
                    &mut mem,
                    &mut tlb,
                    Ipa(r.base.get()),
                    r.base,
                    r.size,
                    hyp::host_mem::HOST_RAM,
                );
            }
        });
    }
    err.map_err(|e| BootError::Stage2("cannot build the host stage-2", e))?;
    Ok(s2)
}

fn setup_cpu_slots(plat: &Platform) -> Result<(), BootError> {
    let me = arch::mpidr();
    let mut mpidrs: Vec<u64> = alloc::vec![me];
    for c in plat
        .cpus
        .iter()
        .filter(|c| c.available && c.enable_method != dtb::EnableMethod::SpinTable)
    {
        let m = c.mpidr & hyp::psci::MPIDR_AFF_MASK;
        if m != me {
            mpidrs.push(m);
        }
    }
    if mpidrs.len() > MAX_CPUS {
        log::warn!(
            "{} CPUs in the DTB; Warden manages the first {MAX_CPUS}",
            mpidrs.len()
        );
        mpidrs.truncate(MAX_CPUS);
    }
    let ttbr0 = read_sysreg!("ttbr0_el2");
    for (i, m) in mpidrs.iter().enumerate() {
        CPUS[i].mpidr.store(*m, Ordering::Release);
        // SAFETY: no other CPU runs yet.
        unsafe {
            CPUS[i].update_boot(|b| {
                b.stack_top = stack_top(i);
                b.ttbr0 = ttbr0;
                b.tcr = mm::tcr();
                b.mair = MAIR_EL2;
                b.sctlr = SCTLR_EL2_MMU_ON;
                b.index = i as u64;
            })
        };
    }
    NR_CPUS.store(mpidrs.len(), Ordering::Release);
    println!(
        "warden: {} CPU(s), boot CPU MPIDR {me:#x}, {}, {}",
        mpidrs.len(),
        OrElse(plat.psci.as_ref(), "no PSCI"),
        OrElse(plat.gic.as_ref().map(|g| g.version).as_ref(), "no GIC")
    );
    Ok(())
}

/// An optional value in the banner: the value's `Display`, or the text when it is absent.
struct OrElse<'a, T>(Option<&'a T>, &'static str);

impl<T: core::fmt::Display> core::fmt::Display for OrElse<'_, T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str(self.1),
        }
    }
}

/// The CPU's stage-2 granules and the features that matter to Warden, as words:
/// `stage-2 granules 4K 16K 64K, SVE SME PAuth FGT HCX, no MTE2`.
struct CpuFeatures<'a>(&'a hyp::el2_setup::IdRegs);

impl core::fmt::Display for CpuFeatures<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let id = self.0;
        f.write_str("stage-2 granules")?;
        let g = id.s2_granules();
        for (has, name) in [(g[0], "4K"), (g[1], "16K"), (g[2], "64K")] {
            if has {
                write!(f, " {name}")?;
            }
        }
        if !g.iter().any(|&has| has) {
            f.write_str(" none")?;
        }
        let fgt = match id.fgt() {
            0 => None,
            1 => Some("FGT"),
            _ => Some("FGT2"),
        };
        let features = [
            (id.sve(), "SVE"),
            (id.sme(), "SME"),
            (id.pauth(), "PAuth"),
            (id.mte2(), "MTE2"),
            (fgt.is_some(), fgt.unwrap_or("FGT")),
            (id.hcx(), "HCX"),
        ];
        let mut sep = ", ";
        for (_, name) in features.iter().filter(|(has, _)| *has) {
            write!(f, "{sep}{name}")?;
            sep = " ";
        }
        let mut sep = ", no ";
        for (_, name) in features.iter().filter(|(has, _)| !*has) {
            write!(f, "{sep}{name}")?;
            sep = " ";
        }
        Ok(())
    }
}

fn enter_host_on_this_cpu(entry: u64, x0: u64, slot: usize) -> ! {
    let st = HOST_CPU.get().map(|h| (h.vtcr, h.vttbr));
    let Some((vtcr, vttbr)) = st else {
        arch::park()
    };
    cpu::init_el2_for_host(vtcr, vttbr);
    // SAFETY: EL2 is fully set up for the host; the stack is reset to this CPU's top.
    unsafe { enter_host(entry, x0, stack_top(slot)) }
}

/// Secondary / warm-boot entry from head.S, MMU on, on this CPU's own stack.
#[unsafe(no_mangle)]
extern "C" fn secondary_main(record: &cpu::CpuBoot) -> ! {
    let slot = record.index as usize;
    // A CPU that firmware started with another CPU's record (a firmware that reads
    // CPU_ON's target differently) must not run as that CPU: it would share its stack.
    if slot >= MAX_CPUS || CPUS[slot].mpidr.load(Ordering::Acquire) != arch::mpidr() {
        arch::park()
    }
    write_sysreg!("tpidr_el2", slot as u64);
    let (entry, ctx) = (record.host_entry, record.host_ctx);
    CPUS[slot].power.set(PowerState::On);
    log::debug!(
        "CPU {slot} (MPIDR {:#x}) entering the host at {entry:#x}",
        arch::mpidr()
    );
    enter_host_on_this_cpu(entry, ctx, slot)
}
