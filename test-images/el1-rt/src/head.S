// Entry code of Warden's bare-metal EL1 test images: the arm64 Image header, the boot
// CPU's entry (relocation, .bss, stack, FP/SIMD, exception vectors), the secondary CPUs'
// entry (PSCI CPU_ON), and the EL1 exception vectors.
//
// Warden enters an image like a Linux arm64 Image: at its first byte, at EL1h, MMU off,
// DAIF masked, x0 = the DTB Warden wrote for the host. Everything here is position
// independent (adr/adrp); the absolute pointers in Rust data are fixed up from .rela.dyn
// before any Rust code runs, exactly as Warden's own src/head.S does.
//
// The images run with the EL1 MMU off for their whole life: every data access is
// Device-nGnRnE. So no unaligned accesses (the target has +strict-align) and no
// exclusives or atomic read-modify-writes (xtask checks the binary for them); see
// src/lib.rs.
//
// TPIDR_EL1 holds the CPU's index in the image (0 for the boot CPU): the runtime uses it
// to tell CPUs apart (src/rt.rs, `cpu_index`).

.macro adr_l reg, sym
    adrp    \reg, \sym
    add     \reg, \reg, :lo12:\sym
.endm

// SCTLR_EL1 with the MMU and data cache off: RES1 bits (LSMAOE, nTLSMD, EIS, TSCXT, EOS),
// little endian, instruction cache on, SP alignment checking on.
.equ SCTLR_EL1_MMU_OFF, 0x30501808
.equ R_AARCH64_RELATIVE, 1027
// CPACR_EL1.FPEN = 0b11: FP/SIMD instructions do not trap (the compiler uses them).
.equ CPACR_EL1_FPEN, (3 << 20)

.section .text.head, "ax"
.global _start
_start:
    // arm64 Image header (Documentation/arch/arm64/booting.rst)
    b       primary_entry           // code0
    .long   0                       // code1
    .quad   0                       // text_offset: 2 MiB-aligned base + 0
    .quad   _image_size             // image_size: includes .bss and the stack
    .quad   0xa                     // flags: LE, 4K pages, placed anywhere in RAM
    .quad   0                       // res2
    .quad   0                       // res3
    .quad   0                       // res4
    .ascii  "ARM\x64"               // magic
    .long   0                       // res5

.section .text.entry, "ax"
primary_entry:
    mov     x19, x0                 // x19 = DTB physical address
    mrs     x21, CurrentEL
    lsr     x21, x21, #2            // x21 = exception level we were entered at

    ldr     x1, =SCTLR_EL1_MMU_OFF
    msr     sctlr_el1, x1
    mov     x1, #CPACR_EL1_FPEN
    msr     cpacr_el1, x1
    msr     tpidr_el1, xzr          // CPU index 0
    isb

    // Apply R_AARCH64_RELATIVE relocations: *(base + off) = base + addend.
    adr     x20, _start             // x20 = runtime base (linked at 0)
    adr_l   x1, __rela_start
    adr_l   x2, __rela_end
1:  cmp     x1, x2
    b.hs    2f
    ldp     x3, x4, [x1], #16       // r_offset, r_info
    ldr     x5, [x1], #8            // r_addend
    cmp     w4, #R_AARCH64_RELATIVE
    b.ne    park                    // only relative relocations are expected
    add     x5, x5, x20
    str     x5, [x20, x3]
    b       1b

2:  // Zero .bss (16-byte aligned at both ends, see linker.ld).
    adr_l   x1, __bss_start
    adr_l   x2, __bss_end
3:  cmp     x1, x2
    b.hs    4f
    stp     xzr, xzr, [x1], #16
    b       3b

4:  adr_l   x1, __stack_end
    mov     sp, x1
    adr_l   x1, el1_vectors
    msr     vbar_el1, x1
    isb

    mov     x0, x19
    mov     x1, x20
    mov     x2, x21
    bl      el1_main                // the image's (src/main.rs); never returns
    b       park

// A secondary CPU started by PSCI CPU_ON with this entry point, through Warden: EL1h,
// MMU off, DAIF masked, x0 = the context argument = the physical address of its
// `SecondaryBoot` record (src/smp.rs): stack top at +0, entry function at +8, its
// argument at +16, CPU index at +24. The image is already relocated and its .bss zeroed
// by the boot CPU.
.global secondary_entry
secondary_entry:
    ldr     x1, =SCTLR_EL1_MMU_OFF
    msr     sctlr_el1, x1
    mov     x1, #CPACR_EL1_FPEN
    msr     cpacr_el1, x1
    ldr     x1, [x0, #24]
    msr     tpidr_el1, x1
    adr_l   x1, el1_vectors
    msr     vbar_el1, x1
    isb
    ldr     x1, [x0]
    mov     sp, x1
    ldr     x1, [x0, #8]
    ldr     x0, [x0, #16]
    blr     x1                      // never returns
    b       park

.global park
park:
    wfe
    b       park

// A 64-bit store that may take a synchronous abort (src/rt.rs, `try_write64`):
// x0 = address, x1 = value. Returns x0 = 0 if the store completed, or the ESR_EL1 of
// the abort it took (the current-EL sync vector resumes at `probe_fixup`).
.global probe_write64
probe_write64:
    dsb     sy
probe_insn:
    str     x1, [x0]
    dsb     sy
    mov     x0, #0
probe_fixup:
    ret

// ---------------------------------------------------------------------------------------
// EL1 exception vectors. No exception is expected, except a synchronous abort of the
// store at `probe_insn`, which resumes at `probe_fixup` with x0 = ESR_EL1. Every other
// slot hands its number and the syndrome to `el1_exception` (src/rt.rs), which reports
// it and powers the machine off (the boot CPU) or parks the CPU (a secondary).
.macro vector kind
    .balign 0x80
.if \kind == 4
    stp     x9, x10, [sp, #-16]!
    mrs     x9, elr_el1
    adr     x10, probe_insn
    cmp     x9, x10
    b.ne    1f
    adr     x10, probe_fixup
    msr     elr_el1, x10
    mrs     x0, esr_el1
    ldp     x9, x10, [sp], #16
    eret
1:  ldp     x9, x10, [sp], #16
.endif
    mov     x0, #\kind
    mrs     x1, esr_el1
    mrs     x2, elr_el1
    mrs     x3, far_el1
    b       el1_exception
.endm

.section .text.vectors, "ax"
.balign 0x800
.global el1_vectors
el1_vectors:
    vector 0        // current EL, SP_EL0: sync
    vector 1        //   irq
    vector 2        //   fiq
    vector 3        //   serror
    vector 4        // current EL, SP_ELx: sync
    vector 5        //   irq
    vector 6        //   fiq
    vector 7        //   serror
    vector 8        // lower EL, AArch64: sync
    vector 9        //   irq
    vector 10       //   fiq
    vector 11       //   serror
    vector 12       // lower EL, AArch32: sync
    vector 13       //   irq
    vector 14       //   fiq
    vector 15       //   serror
