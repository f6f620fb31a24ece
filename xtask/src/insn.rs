//! Instruction-class checks on the code of aarch64 ELF images: a small A64 decoder for the
//! classes some image must not contain, and a scanner over an ELF's executable sections.
//!
//! - [`mmu_off_forbidden`]: the EL1 test images run with their MMU off (every data access
//!   is Device memory), so no exclusives, atomics or `DC ZVA`.
//! - [`fp_simd_sve_sme`]: Warden's EL2 image must never touch FP/SIMD/SVE/SME state (the
//!   exception entry saves only the general registers, so any such instruction would
//!   change or leak the host's registers): no FP/SIMD data processing or loads/stores, no
//!   SVE or SME instruction, no access to FPCR/FPSR/FPMR, FPEXC32_EL2, ZCR_ELx, SMCR_ELx,
//!   SVCR, SMPRI_EL1 or the other SME registers, no `SMSTART`/`SMSTOP`. Two kinds of
//!   access are not FP state and stay allowed: the trap controls (CPTR_EL2, CPACR_EL1),
//!   and *writes* of EL2's own vector-length and priority controls (`MSR ZCR_EL2`,
//!   `MSR SMCR_EL2`, `MSR SMPRIMAP_EL2`), which Warden programs once per CPU before the
//!   host first runs (src/cpu.rs), as Linux's EL2 setup does.
//!
//! The checks are by encoding class (the top-level A64 encoding table), not by mnemonic,
//! so that an encoding no disassembler knows yet is still judged by the register file its
//! class uses. The tests hold them against an independent decoder (`disarm64`).

use anyhow::{Context, Result, bail};
use object::elf::{FileHeader64, SHF_EXECINSTR, SHT_PROGBITS};
use object::read::elf::{FileHeader, SectionHeader, Sym};
use object::{Endianness, FileKind};

/// A class check: why an instruction is not allowed, if it is not.
pub type Check = fn(u32) -> Option<&'static str>;

/// Why an instruction is not allowed in code that runs with the MMU off, if it is not.
pub fn mmu_off_forbidden(insn: u32) -> Option<&'static str> {
    // Load/store exclusive (LDXR, STXR, LDAXR, STLXR, LDXP, STXP, ...): o2 (bit 23) clear
    // in the exclusive/ordered class. LDAR/STLR (o2 set) are fine.
    if insn & 0x3f80_0000 == 0x0800_0000 {
        return Some("load/store exclusive");
    }
    // CAS, CASA, CASL, CASAL (and byte/halfword forms): o2 and o1 set.
    if insn & 0x3fa0_0000 == 0x08a0_0000 {
        return Some("compare and swap");
    }
    // LSE atomic memory operations (LDADD, LDCLR, LDEOR, LDSET, LD[SU]MAX/MIN, SWP), but
    // not LDAPR (o3 = 1, opc = 100), which is a plain load-acquire.
    if insn & 0x3f20_0c00 == 0x3820_0000 && (insn >> 12) & 0xf != 0xc {
        return Some("atomic memory operation");
    }
    // DC ZVA faults on Device memory.
    if insn & 0xffff_ffe0 == 0xd50b_7420 {
        return Some("DC ZVA");
    }
    None
}

/// System registers that hold FP/SIMD/SVE/SME state or its vector lengths, as
/// (op0 & 1, op1, CRn, CRm, op2) packed like bits [19:5] of an MRS/MSR.
const FP_SYSREGS: [(u32, &str); 16] = [
    (sysreg(3, 3, 4, 4, 0), "FPCR"),
    (sysreg(3, 3, 4, 4, 1), "FPSR"),
    (sysreg(3, 3, 4, 4, 2), "FPMR"),
    (sysreg(3, 0, 1, 2, 0), "ZCR_EL1"),
    (sysreg(3, 4, 1, 2, 0), "ZCR_EL2"),
    (sysreg(3, 5, 1, 2, 0), "ZCR_EL12"),
    (sysreg(3, 6, 1, 2, 0), "ZCR_EL3"),
    (sysreg(3, 0, 1, 2, 6), "SMCR_EL1"),
    (sysreg(3, 4, 1, 2, 6), "SMCR_EL2"),
    (sysreg(3, 5, 1, 2, 6), "SMCR_EL12"),
    (sysreg(3, 6, 1, 2, 6), "SMCR_EL3"),
    (sysreg(3, 3, 4, 2, 2), "SVCR"),
    (sysreg(3, 3, 13, 0, 5), "TPIDR2_EL0"),
    (sysreg(3, 4, 1, 2, 5), "SMPRIMAP_EL2"),
    // The host's AArch32 FPEXC and its SME streaming priority.
    (sysreg(3, 4, 5, 3, 0), "FPEXC32_EL2"),
    (sysreg(3, 0, 1, 2, 4), "SMPRI_EL1"),
];

const fn sysreg(op0: u32, op1: u32, crn: u32, crm: u32, op2: u32) -> u32 {
    ((op0 & 1) << 14) | (op1 << 11) | (crn << 7) | (crm << 3) | op2
}

/// EL2 controls of [`FP_SYSREGS`] that EL2 may write (not read) at setup.
const EL2_WRITABLE: [u32; 3] = [
    sysreg(3, 4, 1, 2, 0), // ZCR_EL2
    sysreg(3, 4, 1, 2, 6), // SMCR_EL2
    sysreg(3, 4, 1, 2, 5), // SMPRIMAP_EL2
];

/// Why an instruction touches FP/SIMD/SVE/SME state, if it does (see the module docs).
/// Unallocated encodings in those classes count as touching it.
pub fn fp_simd_sve_sme(insn: u32) -> Option<&'static str> {
    let op1 = (insn >> 25) & 0xf; // the top-level class, bits [28:25]
    // SME (op0 = 1, op1 = 0000).
    if insn >> 31 == 1 && op1 == 0 {
        return Some("SME instruction");
    }
    // SVE (op1 = 0010).
    if op1 == 0b0010 {
        return Some("SVE instruction");
    }
    // Data processing, SIMD and FP (op1 = x111): FP arithmetic, FMOV, Advanced SIMD,
    // the cryptographic extensions.
    if op1 & 0b0111 == 0b0111 {
        return Some("FP/SIMD data processing");
    }
    // Loads and stores (op1 = x1x0) with V (bit 26) set use the SIMD&FP registers, except
    // the memory copy/set instructions (FEAT_MOPS: bits [29:24] = xx1101 or xx1001 with
    // bit 21 clear and bits [11:10] = 01), where bit 26 is an opcode bit.
    if op1 & 0b0101 == 0b0100 && insn & (1 << 26) != 0 {
        let mops = (insn >> 28) & 3 == 0b01
            && insn & (1 << 24) != 0
            && insn & (1 << 21) == 0
            && (insn >> 10) & 3 == 0b01;
        if !mops {
            return Some("SIMD&FP load/store");
        }
    }
    // MRS/MSR (register) of an FP/SIMD/SVE/SME register: 1101 0101 00 L 1 o0 ... Rt.
    if insn & 0xffd0_0000 == 0xd510_0000 {
        let reg = (insn >> 5) & 0x7fff;
        let read = insn & (1 << 21) != 0;
        if let Some((_, name)) = FP_SYSREGS.iter().find(|(r, _)| *r == reg)
            && (read || !EL2_WRITABLE.contains(&reg))
        {
            return Some(name);
        }
    }
    // MSR SVCRSM/SVCRZA/SVCRSMZA, #imm (SMSTART, SMSTOP): MSR (immediate), op1 = 3,
    // op2 = 3.
    if insn & 0xffff_f0ff == 0xd503_407f {
        return Some("SMSTART/SMSTOP");
    }
    None
}

/// The instructions of an aarch64 ELF's executable sections that `check` rejects, as
/// (address, encoding, why). Data in code (after a `$d` mapping symbol, up to the next
/// `$x`) is skipped.
pub fn scan(elf: &[u8], check: Check) -> Result<Vec<(u64, u32, &'static str)>> {
    if !matches!(FileKind::parse(elf), Ok(FileKind::Elf64)) {
        bail!("not a 64-bit ELF file");
    }
    let header = FileHeader64::<Endianness>::parse(elf).context("bad ELF header")?;
    let endian = header.endian().context("bad ELF header")?;
    let sections = header.sections(endian, elf).context("bad ELF sections")?;
    // Mapping symbols: (section index, address, is data).
    let mut marks: Vec<(usize, u64, bool)> = Vec::new();
    if let Ok(symbols) = sections.symbols(endian, elf, object::elf::SHT_SYMTAB) {
        for sym in symbols.iter() {
            let Ok(name) = sym.name(endian, symbols.strings()) else {
                continue;
            };
            let is_data = match name {
                b"$d" => true,
                b"$x" => false,
                n if n.starts_with(b"$d.") => true,
                n if n.starts_with(b"$x.") => false,
                _ => continue,
            };
            marks.push((sym.st_shndx(endian).into(), sym.st_value(endian), is_data));
        }
    }
    // By section and address; at one address `$d` before `$x`, so that code wins (the
    // last mark at or before an address decides).
    marks.sort_unstable_by_key(|&(section, addr, is_data)| (section, addr, !is_data));
    let mut bad = Vec::new();
    for (index, section) in sections.iter().enumerate() {
        if section.sh_type(endian) != SHT_PROGBITS
            || section.sh_flags(endian) & u64::from(SHF_EXECINSTR) == 0
        {
            continue;
        }
        let data = section
            .data(endian, elf)
            .with_context(|| format!("section {index}: contents outside the file"))?;
        let base = section.sh_addr(endian);
        let mine: Vec<(u64, bool)> = marks
            .iter()
            .filter(|m| m.0 == index)
            .map(|m| (m.1, m.2))
            .collect();
        for (i, word) in data.chunks_exact(4).enumerate() {
            let addr = base + 4 * i as u64;
            let before = mine.partition_point(|m| m.0 <= addr);
            if before > 0 && mine[before - 1].1 {
                continue;
            }
            let insn = u32::from_le_bytes(word.try_into().expect("4 bytes"));
            if let Some(why) = check(insn) {
                bad.push((addr, insn, why));
            }
        }
    }
    Ok(bad)
}

/// Up to `n` findings of [`scan`], for an error message.
pub fn describe(bad: &[(u64, u32, &'static str)], n: usize) -> String {
    let list: Vec<String> = bad
        .iter()
        .take(n)
        .map(|(addr, insn, what)| format!("{addr:#x}: {insn:08x} ({what})"))
        .collect();
    list.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FP/SIMD/SVE/SME encodings (from `llvm-mc -show-encoding`).
    const FP: [(u32, &str); 43] = [
        (0x9e67_0020, "fmov d0, x1"),
        (0x9e66_0001, "fmov x1, d0"),
        (0x3dc0_0000, "ldr q0, [x0]"),
        (0x3d80_0401, "str q1, [x0, #16]"),
        (0xadbf_07e0, "stp q0, q1, [sp, #-32]!"),
        (0xad40_0c22, "ldp q2, q3, [x1]"),
        (0xac40_0400, "ldnp q0, q1, [x0]"),
        (0xfc61_6800, "ldr d0, [x0, x1]"),
        (0xbc5f_c000, "ldur s0, [x0, #-4]"),
        (0x9c00_0040, "ldr q0, <literal>"),
        (0x4f00_e400, "movi v0.16b, #0"),
        (0x4e01_0c20, "dup v0.16b, w1"),
        (0x4e08_0c41, "dup v1.2d, x2"),
        (0x4ea2_8420, "add v0.4s, v1.4s, v2.4s"),
        (0x4c40_7000, "ld1 {v0.16b}, [x0]"),
        (0x4c9f_a000, "st1 {v0.16b, v1.16b}, [x0], #32"),
        (0x0d40_9000, "ld1 {v0.s}[1], [x0]"),
        (0x1e62_2820, "fadd d0, d1, d2"),
        (0x9e62_0000, "scvtf d0, x0"),
        (0x4e28_4820, "aese v0.16b, v1.16b"),
        (0xa400_a000, "ld1b {z0.b}, p0/z, [x0]"),
        (0xe5e0_e401, "st1d {z1.d}, p1, [x0]"),
        (0x2518_e3e0, "ptrue p0.b"),
        (0x04bf_5020, "rdvl x0, #1"),
        (0x04e2_0020, "add z0.d, z1.d, z2.d"),
        (0xd503_477f, "smstart"),
        (0xd503_467f, "smstop"),
        (0xc008_00ff, "zero {za}"),
        (0xd53b_4400, "mrs x0, fpcr"),
        (0xd51b_4400, "msr fpcr, x0"),
        (0xd53b_4421, "mrs x1, fpsr"),
        (0xd51b_4421, "msr fpsr, x1"),
        (0xd53c_1200, "mrs x0, zcr_el2"),
        (0xd518_1200, "msr zcr_el1, x0"),
        (0xd53c_12c0, "mrs x0, smcr_el2"),
        (0xd51d_1200, "msr zcr_el12, x0"),
        (0xd51b_4240, "msr svcr, x0"),
        (0xd53b_4440, "mrs x0, fpmr"),
        (0xd518_12c0, "msr smcr_el1, x0"),
        (0xd53c_5300, "mrs x0, fpexc32_el2"),
        (0xd51c_5300, "msr fpexc32_el2, x0"),
        (0xd538_1280, "mrs x0, smpri_el1"),
        (0xd518_1280, "msr smpri_el1, x0"),
    ];

    /// General-register and system encodings that must pass.
    const NOT_FP: [(u32, &str); 43] = [
        (0xf940_0020, "ldr x0, [x1]"),
        (0xf900_0420, "str x0, [x1, #8]"),
        (0xa9bf_7bfd, "stp x29, x30, [sp, #-16]!"),
        (0xa8c1_0440, "ldp x0, x1, [x2], #16"),
        (0x3862_6820, "ldrb w0, [x1, x2]"),
        (0x5800_0040, "ldr x0, <literal>"),
        (0x8b02_0020, "add x0, x1, x2"),
        (0x9b02_7c20, "mul x0, x1, x2"),
        (0xd282_4680, "mov x0, #0x1234"),
        (0xf2a0_0020, "movk x0, #1, lsl #16"),
        (0x1400_0000, "b ."),
        (0x9400_0000, "bl ."),
        (0xd65f_03c0, "ret"),
        (0xb400_0000, "cbz x0, ."),
        (0xd53c_1000, "mrs x0, sctlr_el2"),
        (0xd51c_1100, "msr hcr_el2, x0"),
        (0xd53c_1140, "mrs x0, cptr_el2"),
        (0xd518_1040, "msr cpacr_el1, x0"),
        (0xd538_0400, "mrs x0, id_aa64pfr0_el1"),
        (0xd538_0480, "mrs x0, id_aa64zfr0_el1"),
        (0xd503_4fdf, "msr daifset, #15"),
        (0xd500_409f, "msr pan, #0"),
        (0xd503_403f, "msr ssbs, #0"),
        (0xd503_405f, "msr dit, #0"),
        (0xd503_409f, "msr tco, #0"),
        (0xd503_201f, "nop"),
        (0xd503_3f9f, "dsb sy"),
        (0xd400_0002, "hvc #0"),
        (0xd69f_03e0, "eret"),
        (0x0000_0000, "udf #0"),
        (0xd420_0020, "brk #1"),
        (0xc85f_fc20, "ldaxr x0, [x1]"),
        (0x1d01_0440, "cpyp [x0]!, [x1]!, x2!"),
        (0x1d41_0440, "cpym [x0]!, [x1]!, x2!"),
        (0x1901_0440, "cpyfp [x0]!, [x1]!, x2!"),
        (0x19c2_0420, "setp [x0]!, x1!, x2"),
        (0x1dc2_0420, "setgp [x0]!, x1!, x2"),
        (0xd50b_7420, "dc zva, x0"),
        (0xd960_0020, "ldg x0, [x1]"),
        (0xd503_233f, "paciasp"),
        (0xd51c_1200, "msr zcr_el2, x0"),
        (0xd51c_12c0, "msr smcr_el2, x0"),
        (0xd51c_12a0, "msr smprimap_el2, x0"),
    ];

    #[test]
    fn fp_simd_sve_sme_classes() {
        for (insn, what) in FP {
            assert!(fp_simd_sve_sme(insn).is_some(), "{what} ({insn:08x})");
        }
        for (insn, what) in NOT_FP {
            assert_eq!(fp_simd_sve_sme(insn), None, "{what} ({insn:08x})");
        }
    }

    #[test]
    fn mmu_off_classes() {
        for (insn, what) in [
            (0xc85f_7c20, "ldxr x0, [x1]"),
            (0xc802_7c20, "stxr w2, x0, [x1]"),
            (0x885f_fc20, "ldaxr w0, [x1]"),
            (0xc87f_0440, "ldxp x0, x1, [x2]"),
            (0xc8e0_fc41, "casal x0, x1, [x2]"),
            (0x08a0_7c41, "casb w0, w1, [x2]"),
            (0xf820_0041, "ldadd x0, x1, [x2]"),
            (0xb8e0_0041, "ldaddal w0, w1, [x2]"),
            (0xf820_8041, "swp x0, x1, [x2]"),
            (0xf820_301f, "stset x0, [x0]"),
            (0xd50b_7420, "dc zva, x0"),
        ] {
            assert!(mmu_off_forbidden(insn).is_some(), "{what}");
        }
        for (insn, what) in [
            (0xc8df_fc20, "ldar x0, [x1]"),
            (0xc89f_fc20, "stlr x0, [x1]"),
            (0xf8bf_c020, "ldapr x0, [x1]"),
            (0xf940_0020, "ldr x0, [x1]"),
            (0xb862_6820, "ldr w0, [x1, x2]"),
            (0x3862_6820, "ldrb w0, [x1, x2]"),
            (0xa9bf_7bfd, "stp x29, x30, [sp, #-16]!"),
            (0xd503_201f, "nop"),
            (0xd503_3f9f, "dsb sy"),
            (0xd400_0002, "hvc #0"),
            (0xd50b_7b20, "dc cvau, x0"),
        ] {
            assert_eq!(mmu_off_forbidden(insn), None, "{what}");
        }
    }

    /// A minimal ELF64 (little endian) with one executable section holding `words`, and a
    /// symbol table with the given mapping symbols (name, offset into the section).
    fn elf_with_text(words: &[u32], marks: &[(&str, u64)]) -> Vec<u8> {
        const BASE: u64 = 0x1000;
        let text: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        let mut strtab = vec![0u8];
        let mut syms = vec![0u8; 24]; // the null symbol
        for (name, off) in marks {
            let at = strtab.len() as u32;
            strtab.extend_from_slice(name.as_bytes());
            strtab.push(0);
            let mut s = Vec::new();
            s.extend_from_slice(&at.to_le_bytes()); // st_name
            s.push(0); // st_info: local, notype
            s.push(0); // st_other
            s.extend_from_slice(&1u16.to_le_bytes()); // st_shndx: .text
            s.extend_from_slice(&(BASE + off).to_le_bytes()); // st_value
            s.extend_from_slice(&0u64.to_le_bytes()); // st_size
            syms.extend_from_slice(&s);
        }
        let shstrtab = b"\0.text\0.symtab\0.strtab\0.shstrtab\0".to_vec();
        // Layout: header (64), .text, .symtab, .strtab, .shstrtab, section headers.
        let mut out = vec![0u8; 64];
        let text_off = out.len() as u64;
        out.extend_from_slice(&text);
        while !out.len().is_multiple_of(8) {
            out.push(0);
        }
        let sym_off = out.len() as u64;
        out.extend_from_slice(&syms);
        let str_off = out.len() as u64;
        out.extend_from_slice(&strtab);
        let shstr_off = out.len() as u64;
        out.extend_from_slice(&shstrtab);
        while !out.len().is_multiple_of(8) {
            out.push(0);
        }
        let sh_off = out.len() as u64;
        let sh = |name: u32, ty: u32, flags: u64, addr: u64, off: u64, size: u64, link: u32| {
            let mut h = Vec::new();
            h.extend_from_slice(&name.to_le_bytes());
            h.extend_from_slice(&ty.to_le_bytes());
            h.extend_from_slice(&flags.to_le_bytes());
            h.extend_from_slice(&addr.to_le_bytes());
            h.extend_from_slice(&off.to_le_bytes());
            h.extend_from_slice(&size.to_le_bytes());
            h.extend_from_slice(&link.to_le_bytes());
            h.extend_from_slice(&(if ty == 2 { 1u32 } else { 0 }).to_le_bytes()); // sh_info
            h.extend_from_slice(&(if ty == 2 { 8u64 } else { 4 }).to_le_bytes()); // align
            h.extend_from_slice(&(if ty == 2 { 24u64 } else { 0 }).to_le_bytes()); // entsize
            h
        };
        out.extend_from_slice(&[0u8; 64]);
        out.extend_from_slice(&sh(1, 1, 6, BASE, text_off, text.len() as u64, 0));
        out.extend_from_slice(&sh(7, 2, 0, 0, sym_off, syms.len() as u64, 3));
        out.extend_from_slice(&sh(15, 3, 0, 0, str_off, strtab.len() as u64, 0));
        out.extend_from_slice(&sh(23, 3, 0, 0, shstr_off, shstrtab.len() as u64, 0));
        let mut h = Vec::new();
        h.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
        h.extend_from_slice(&2u16.to_le_bytes()); // e_type: EXEC
        h.extend_from_slice(&183u16.to_le_bytes()); // e_machine: AArch64
        h.extend_from_slice(&1u32.to_le_bytes());
        h.extend_from_slice(&BASE.to_le_bytes()); // e_entry
        h.extend_from_slice(&0u64.to_le_bytes()); // e_phoff
        h.extend_from_slice(&sh_off.to_le_bytes()); // e_shoff
        h.extend_from_slice(&0u32.to_le_bytes()); // e_flags
        h.extend_from_slice(&64u16.to_le_bytes()); // e_ehsize
        h.extend_from_slice(&56u16.to_le_bytes()); // e_phentsize
        h.extend_from_slice(&0u16.to_le_bytes()); // e_phnum
        h.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
        h.extend_from_slice(&5u16.to_le_bytes()); // e_shnum
        h.extend_from_slice(&4u16.to_le_bytes()); // e_shstrndx
        out[..64].copy_from_slice(&h);
        out
    }

    #[test]
    fn scan_finds_fp_code_and_skips_data_in_code() {
        // nop; fmov d0, x1; [data: a word that decodes as ldr q0]; ldr x0, [x1]; stp q0, q1
        let words = [
            0xd503_201f,
            0x9e67_0020,
            0x3dc0_0000,
            0xf940_0020,
            0xadbf_07e0,
        ];
        let elf = elf_with_text(&words, &[("$x", 0), ("$d", 8), ("$x", 12)]);
        let bad = scan(&elf, fp_simd_sve_sme).unwrap();
        let found: Vec<(u64, u32)> = bad.iter().map(|b| (b.0, b.1)).collect();
        assert_eq!(found, [(0x1004, 0x9e67_0020), (0x1010, 0xadbf_07e0)]);
        assert!(describe(&bad, 1).starts_with("0x1004: 9e670020 ("));
        // A `$d` and an `$x` at the same address (an empty data run): code, whatever the
        // symbol table's order.
        for marks in [
            [("$x", 0), ("$d", 4), ("$x", 4)],
            [("$x", 0), ("$x", 4), ("$d", 4)],
        ] {
            let elf = elf_with_text(&words[..2], &marks);
            let found: Vec<u64> = scan(&elf, fp_simd_sve_sme)
                .unwrap()
                .iter()
                .map(|b| b.0)
                .collect();
            assert_eq!(found, [0x1004], "{marks:?}");
        }
        // Without mapping symbols the data word counts as code.
        let elf = elf_with_text(&words, &[]);
        assert_eq!(scan(&elf, fp_simd_sve_sme).unwrap().len(), 3);
        assert!(scan(b"not an elf", fp_simd_sve_sme).is_err());
    }
}

/// [`fp_simd_sve_sme`] against an independent decoder: `disarm64`, whose instruction
/// tables are generated from the GNU binutils opcode tables, and which names each
/// instruction's operand classes and architecture feature. The decoder does not replace
/// the check (see the README's layout section): it has no answer for unallocated
/// encodings, and the EL2-writable controls are Warden's policy, not a class.
#[cfg(test)]
mod oracle {
    use super::*;
    use disarm64::{InsnOpcode, decoder};
    use disarm64_defn::InsnOperandClass as Class;

    /// Whether `disarm64` decodes `insn` as an instruction on FP/SIMD/SVE/SME registers or
    /// of one of those features (`None`: it does not decode it).
    fn decoder_says_fp(insn: u32) -> Option<(bool, String)> {
        let def = decoder::decode(insn)?.definition();
        let registers = def.operands.iter().any(|o| {
            matches!(
                o.class,
                Class::FP_REG
                    | Class::SIMD_ELEMENT
                    | Class::SIMD_REG
                    | Class::SIMD_REGLIST
                    | Class::SISD_REG
                    | Class::SVE_REG
                    | Class::SVE_REGLIST
                    | Class::PRED_REG
                    | Class::ZA_ACCESS
            )
        });
        let feature = format!("{:?}", def.feature_set);
        let fp_feature = ["FP", "SIMD"].iter().any(|f| feature.starts_with(f))
            || feature.ends_with("_FP")
            || feature.contains("SVE")
            || feature.contains("SME");
        Some((
            registers || fp_feature,
            format!("{} ({feature})", def.mnemonic),
        ))
    }

    /// Two million pseudo-random words (a fixed xorshift sequence): every one the decoder
    /// calls FP/SIMD/SVE/SME is rejected, and every one rejected that the decoder calls
    /// something else is an FP system register access or a FEAT_MOPS_GO `SETGO*`
    /// (general-register memory sets that the load/store rule rejects, on the safe side).
    #[test]
    fn agrees_with_an_independent_decoder() {
        let mut state: u64 = 0x1234_5678_9abc_def1;
        let (mut decoded, mut fp) = (0u32, 0u32);
        for _ in 0..2_000_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let insn = (state >> 16) as u32;
            let ours = fp_simd_sve_sme(insn);
            let Some((theirs, what)) = decoder_says_fp(insn) else {
                continue;
            };
            decoded += 1;
            if theirs {
                fp += 1;
                assert!(ours.is_some(), "{insn:08x}: {what} is let through");
            } else if let Some(why) = ours {
                let sysreg = insn & 0xffd0_0000 == 0xd510_0000;
                let setgo = what.starts_with("setgo");
                assert!(sysreg || setgo, "{insn:08x}: {what} rejected as {why}");
            }
        }
        // The sample reaches every class (about 1/16 of the words each).
        assert!(
            decoded > 500_000 && fp > 100_000,
            "{decoded} decoded, {fp} FP"
        );
    }

    /// The decoder's names of the FP system registers match ours (FPMR it does not name,
    /// so it prints the generic `s3_3_c4_c4_2`, which is FPMR's encoding).
    #[test]
    fn sysreg_encodings_match_the_decoder_names() {
        for (reg, name) in FP_SYSREGS {
            let want = match name {
                "FPMR" => "s3_3_c4_c4_2".to_string(),
                _ => name.to_lowercase(),
            };
            for (insn, form) in [
                (0xd530_0000 | reg << 5, format!("x0, {want}")),
                (0xd510_0000 | reg << 5, format!("{want}, x0")),
            ] {
                let text = decoder::decode(insn).map(|o| o.to_string());
                assert!(
                    text.as_deref().is_some_and(|t| t
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" ")
                        .ends_with(&form)),
                    "{name}: {insn:08x} decodes as {text:?}"
                );
            }
        }
    }
}
