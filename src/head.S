// Warden entry code: the arm64 Image header, the primary (cold) entry, the secondary /
// warm-boot entry used for PSCI CPU_ON and powerdown suspend, the EL2 exception vectors
// and the final jump into the host.
//
// Everything here is position independent: addresses come from adr/adrp, and the few
// absolute pointers in Rust data are fixed up from .rela.dyn before any Rust code runs.

.macro adr_l reg, sym
    adrp    \reg, \sym
    add     \reg, \reg, :lo12:\sym
.endm

// SCTLR_EL2 with the MMU and caches off: RES1 bits (4, 5, 11, 16, 18, 22, 23, 28, 29),
// little endian, SP alignment checking on.
.equ SCTLR_EL2_MMU_OFF, 0x30c50838
.equ R_AARCH64_RELATIVE, 1027
// HCR_EL2 at entry: EL1 is AArch64, everything else clear (E2H = 0: nVHE; TGE = 0).
.equ HCR_EL2_ENTRY, (1 << 31)
.equ HCR_EL2_E2H_BIT, 34
.equ STACK_SIZE, 0x8000
.equ FRAME_SIZE, 272

.section .text.head, "ax"
.global _start
_start:
    // arm64 Image header (Documentation/arch/arm64/booting.rst)
    b       primary_entry           // code0
    .long   0                       // code1
    .quad   0                       // text_offset: 2 MiB-aligned base + 0
    .quad   _image_size             // image_size: includes .bss and stacks
    .quad   0xa                     // flags: LE, 4K pages, placed anywhere in RAM
    .quad   0                       // res2
    .quad   0                       // res3
    .quad   0                       // res4
    .ascii  "ARM\x64"               // magic
    .long   0                       // res5

// The EL2 state every CPU gets first, before SCTLR_EL2 and long before the EL2 MMU is
// on: whatever firmware (or a previous life of the CPU) left, HCR_EL2 is nVHE (E2H = 0,
// TGE = 0; a CPU where E2H is RES1 cannot run Warden and parks), interrupts are masked,
// the stack is SP_EL2, and the PSTATE bits that change how EL2 code executes are set:
// PAN = 0, UAO = 0 (both only matter with E2H = 1), SSBS = 0 (as SCTLR_EL2.DSSBS gives
// every exception entry), TCO = 1 (as every exception entry sets it), DIT = 0. The
// optional ones are written only when ID registers say they exist (the MSR immediate
// forms are UNDEFINED otherwise; they are encoded by hand so that the assembler needs no
// target features). Uses x1 and x2.
.macro el2_entry_state
    msr     daifset, #0xf
    mov     x1, #HCR_EL2_ENTRY
    msr     hcr_el2, x1
    isb
    mrs     x1, hcr_el2
    tbnz    x1, #HCR_EL2_E2H_BIT, park
    msr     spsel, #1
    mrs     x1, id_aa64mmfr1_el1
    ubfx    x1, x1, #20, #4         // PAN
    cbz     x1, 1f
    .inst   0xd500409f              // msr pan, #0
1:  mrs     x1, id_aa64mmfr2_el1
    ubfx    x1, x1, #4, #4          // UAO
    cbz     x1, 2f
    .inst   0xd500407f              // msr uao, #0
2:  mrs     x1, id_aa64pfr1_el1
    ubfx    x2, x1, #4, #4          // SSBS
    cbz     x2, 3f
    .inst   0xd503403f              // msr ssbs, #0
3:  ubfx    x2, x1, #8, #4          // MTE
    cbz     x2, 4f
    .inst   0xd503419f              // msr tco, #1
4:  mrs     x1, id_aa64pfr0_el1
    ubfx    x1, x1, #48, #4         // DIT
    cbz     x1, 5f
    .inst   0xd503405f              // msr dit, #0
5:  isb
.endm

.section .text.entry, "ax"
primary_entry:
    mov     x19, x0                 // x19 = DTB physical address
    mrs     x1, CurrentEL
    cmp     x1, #(2 << 2)
    b.ne    park                    // Warden must be entered at EL2
    el2_entry_state

    ldr     x1, =SCTLR_EL2_MMU_OFF
    msr     sctlr_el2, x1
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

2:  // Zero .bss.
    adr_l   x1, __bss_start
    adr_l   x2, __bss_end
3:  cmp     x1, x2
    b.hs    4f
    stp     xzr, xzr, [x1], #16
    b       3b

4:  // Boot CPU stack: slot 0.
    adr_l   x1, __stacks_start
    add     x1, x1, #STACK_SIZE
    mov     sp, x1
    msr     tpidr_el2, xzr
    adr_l   x1, el2_vectors
    msr     vbar_el2, x1
    isb

    mov     x0, x19
    mov     x1, x20
    bl      primary_main            // never returns
    b       park

// Secondary and warm-boot entry: firmware starts the CPU here at EL2, MMU off, with
// x0 = the physical address of its `CpuBoot` record (see src/cpu.rs):
//   0: stack top, 8: TTBR0_EL2, 16: TCR_EL2, 24: MAIR_EL2, 32: SCTLR_EL2 (MMU on).
.global secondary_entry
secondary_entry:
    mrs     x1, CurrentEL
    cmp     x1, #(2 << 2)
    b.ne    park
    el2_entry_state
    ldr     x1, =SCTLR_EL2_MMU_OFF
    msr     sctlr_el2, x1
    isb
    mov     x19, x0
    adr_l   x1, el2_vectors
    msr     vbar_el2, x1
    ldp     x1, x2, [x19]           // stack top, TTBR0_EL2
    ldp     x3, x4, [x19, #16]      // TCR_EL2, MAIR_EL2
    ldr     x5, [x19, #32]          // SCTLR_EL2
    mov     sp, x1
    msr     ttbr0_el2, x2
    msr     tcr_el2, x3
    msr     mair_el2, x4
    isb
    tlbi    alle2
    dsb     nsh
    isb
    msr     sctlr_el2, x5
    isb
    ic      iallu
    dsb     nsh
    isb
    mov     x0, x19
    bl      secondary_main          // never returns
    b       park

.global park
park:
    wfe
    b       park

// enter_host(entry, x0_for_host, stack_top): reset this CPU's EL2 stack and ERET to the
// host at EL1h with DAIF masked, all other general-purpose registers zeroed.
.global enter_host
enter_host:
    mov     sp, x2
    msr     elr_el2, x0
    mov     x2, #0x3c5              // EL1h, D, A, I, F masked
    msr     spsr_el2, x2
    mov     x0, x1
    mov     x1, xzr
    mov     x2, xzr
    mov     x3, xzr
    mov     x4, xzr
    mov     x5, xzr
    mov     x6, xzr
    mov     x7, xzr
    mov     x8, xzr
    mov     x9, xzr
    mov     x10, xzr
    mov     x11, xzr
    mov     x12, xzr
    mov     x13, xzr
    mov     x14, xzr
    mov     x15, xzr
    mov     x16, xzr
    mov     x17, xzr
    mov     x18, xzr
    mov     x19, xzr
    mov     x20, xzr
    mov     x21, xzr
    mov     x22, xzr
    mov     x23, xzr
    mov     x24, xzr
    mov     x25, xzr
    mov     x26, xzr
    mov     x27, xzr
    mov     x28, xzr
    mov     x29, xzr
    mov     x30, xzr
    eret
    dsb     nsh
    isb

// ---------------------------------------------------------------------------------------
// Exception vectors. Each slot saves x0/x1, loads its kind and joins the common path,
// which saves the whole frame (x0-x30, ELR_EL2, SPSR_EL2) and calls
// `handle_exception(kind, &mut frame)`.
.macro vector kind
    .balign 0x80
    sub     sp, sp, #FRAME_SIZE
    stp     x0, x1, [sp, #0]
    mov     x0, #\kind
    b       exception_common
.endm

.section .text.vectors, "ax"
.balign 0x800
.global el2_vectors
el2_vectors:
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

exception_common:
    stp     x2, x3, [sp, #16]
    stp     x4, x5, [sp, #32]
    stp     x6, x7, [sp, #48]
    stp     x8, x9, [sp, #64]
    stp     x10, x11, [sp, #80]
    stp     x12, x13, [sp, #96]
    stp     x14, x15, [sp, #112]
    stp     x16, x17, [sp, #128]
    stp     x18, x19, [sp, #144]
    stp     x20, x21, [sp, #160]
    stp     x22, x23, [sp, #176]
    stp     x24, x25, [sp, #192]
    stp     x26, x27, [sp, #208]
    stp     x28, x29, [sp, #224]
    mrs     x1, elr_el2
    stp     x30, x1, [sp, #240]
    mrs     x1, spsr_el2
    str     x1, [sp, #256]
    mov     x1, sp
    bl      handle_exception
    ldr     x1, [sp, #256]
    msr     spsr_el2, x1
    ldp     x30, x1, [sp, #240]
    msr     elr_el2, x1
    ldp     x0, x1, [sp, #0]
    ldp     x2, x3, [sp, #16]
    ldp     x4, x5, [sp, #32]
    ldp     x6, x7, [sp, #48]
    ldp     x8, x9, [sp, #64]
    ldp     x10, x11, [sp, #80]
    ldp     x12, x13, [sp, #96]
    ldp     x14, x15, [sp, #112]
    ldp     x16, x17, [sp, #128]
    ldp     x18, x19, [sp, #144]
    ldp     x20, x21, [sp, #160]
    ldp     x22, x23, [sp, #176]
    ldp     x24, x25, [sp, #192]
    ldp     x26, x27, [sp, #208]
    ldp     x28, x29, [sp, #224]
    add     sp, sp, #FRAME_SIZE
    eret
    dsb     nsh
    isb
