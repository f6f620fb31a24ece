// fp-regs: see main.rs. A static Linux aarch64 program: raw system calls, no libc, no
// relocations (every address comes from adr/adrp or the stack).
//
// Registers kept across the program: x19 argc, x20 argv, x21 ADDR, x22 rounds,
// x23 edu registers (VA) or 0, x24 ADDR's VA, x25 current round, x26 traps before the
// round, x27 SVE vector length in bytes (0 without SVE). Linux system calls preserve
// every register but x0.

.arch_extension sve
.equ AT_HWCAP, 16
.equ HWCAP_SVE, 22
// Largest SVE vector length (2048 bits): 32 Z registers and 16 P registers of it.
.equ SVE_MAX_BYTES, (32 * 256 + 16 * 32)

.equ SYS_openat, 56
.equ SYS_write, 64
.equ SYS_exit_group, 94
.equ SYS_nanosleep, 101
.equ SYS_rt_sigaction, 134
.equ SYS_rt_sigreturn, 139
.equ SYS_mmap, 222
.equ SIGBUS, 7
.equ SA_SIGINFO, 0x4
.equ SA_RESTORER, 0x04000000
// offsetof(ucontext_t, uc_mcontext.pc): uc_flags, uc_link, uc_stack (24), uc_sigmask
// (128 with padding) = 168, aligned to 16 = 176; then fault_address, x0-x30, sp = 264.
.equ UC_PC, 440
// QEMU edu registers (docs/specs/edu.rst): DMA source, destination, count, command.
.equ EDU_DMA_SRC, 0x80
.equ EDU_DMA_DST, 0x88
.equ EDU_DMA_CNT, 0x90
.equ EDU_DMA_CMD, 0x98
.equ EDU_BUFFER, 0x40000

.macro adr_l reg, sym
    adrp    \reg, \sym
    add     \reg, \reg, :lo12:\sym
.endm

.macro say msg
    adr_l   x0, \msg
    bl      puts
.endm

.section .text._start, "ax"
.global _start
_start:
    ldr     x19, [sp]
    add     x20, sp, #8
    cmp     x19, #3
    b.lo    usage
    ldr     x0, [x20, #8]
    bl      parse_num
    cbz     x1, usage
    mov     x21, x0
    ldr     x0, [x20, #16]
    bl      parse_num
    cbz     x1, usage
    cbz     x0, usage
    mov     x22, x0
    // SVE? AT_HWCAP in the auxiliary vector, after argv[] and envp[] and their NULLs.
    mov     x27, #0
    add     x1, x20, x19, lsl #3
    add     x1, x1, #8              // envp
4:  ldr     x2, [x1], #8
    cbnz    x2, 4b
5:  ldp     x2, x3, [x1], #16       // auxv (type, value) pairs, AT_NULL last
    cbz     x2, 6f
    cmp     x2, #AT_HWCAP
    b.ne    5b
    tbz     x3, #HWCAP_SVE, 6f
    rdvl    x27, #1
6:  mov     x23, #0
    cmp     x19, #4
    b.lo    1f
    ldr     x1, [x20, #24]
    mov     x9, #0
    bl      map_page
    mov     x23, x0
    ldr     w0, [x23]               // identification: 0xRRrr00ed
    and     w0, w0, #0xffff
    cmp     w0, #0xed
    b.ne    not_edu
1:  adr_l   x1, devmem
    and     x9, x21, #~0xfff
    bl      map_page
    and     x1, x21, #0xfff
    add     x24, x0, x1

    // rt_sigaction(SIGBUS, {on_sigbus, SA_SIGINFO | SA_RESTORER, restorer, {}}, NULL, 8)
    sub     sp, sp, #32
    adr_l   x0, on_sigbus
    str     x0, [sp]
    mov     x0, #SA_SIGINFO
    movk    x0, #(SA_RESTORER >> 16), lsl #16
    str     x0, [sp, #8]
    adr_l   x0, restorer
    str     x0, [sp, #16]
    str     xzr, [sp, #24]
    mov     x0, #SIGBUS
    mov     x1, sp
    mov     x2, #0
    mov     x3, #8
    mov     x8, #SYS_rt_sigaction
    svc     #0
    add     sp, sp, #32
    cbnz    x0, no_sigaction

    mov     x25, #0
round:
    cbz     x23, 2f
    bl      edu_dma
2:  adr_l   x0, traps
    ldr     x26, [x0]
    mov     x0, x25
    cbz     x27, 7f
    tbz     x25, #0, 7f
    bl      sve_round               // odd rounds with SVE: the whole Z and P registers
    b       8f
7:  bl      fp_round
8:  cbnz    x0, mismatch
    adr_l   x0, traps
    ldr     x1, [x0]
    cmp     x1, x26
    b.eq    no_trap
    add     x25, x25, #1
    cmp     x25, x22
    b.lo    round

    say     msg_ok
    mov     x0, x22
    bl      putdec
    say     msg_rounds
    adr_l   x0, traps
    ldr     x0, [x0]
    bl      putdec
    say     msg_traps
    cbz     x27, 9f
    say     msg_sve
    mov     x0, x27
    bl      putdec
    say     msg_sve2
9:  cbz     x23, 3f
    say     msg_edu
3:  say     msg_nl
    mov     x0, #0
    b       exit

// One round. x0 = round number. Loads v0-v31, FPCR and FPSR with values derived from it,
// reads [x24] (the trap), and compares. Returns x0 = 0 if everything is intact, else
// x0 = the register (1 + n for vn, 33 FPCR, 34 FPSR) with x1:x2 = what it holds
// (low, high) and x3:x4 = what it should hold. Touches only x0-x4, x9-x15 and the FP
// registers.
fp_round:
    ldr     x9, =0x9e3779b97f4a7c15
    ldr     x12, =0xd1b54a32d192ed03
    lsl     x15, x0, #6
.irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    add     x10, x15, #\n
    mul     x10, x10, x9
    eor     x11, x10, x12
    ror     x11, x11, #(\n + 7)
    fmov    d\n, x10
    mov     v\n\().d[1], x11
.endr
    // FPCR: AHP, DN, FZ, RMode from the round number; FPSR: cumulative flags. What reads
    // back (unimplemented bits read as zero) is what must survive.
    and     x10, x0, #0x1f
    lsl     x10, x10, #22
    msr     fpcr, x10
    mrs     x13, fpcr
    mul     x10, x0, x9
    mov     x11, #0x9f
    movk    x11, #0xf800, lsl #16
    and     x10, x10, x11
    orr     x10, x10, #1
    msr     fpsr, x10
    mrs     x14, fpsr

    ldr     x10, [x24]              // the trap: SIGBUS, the handler skips this load

    mrs     x1, fpcr
    mov     x2, #0
    mov     x3, x13
    mov     x4, #0
    mov     x0, #33
    cmp     x1, x13
    b.ne    1f
    mrs     x1, fpsr
    mov     x3, x14
    mov     x0, #34
    cmp     x1, x14
    b.ne    1f
.irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    add     x3, x15, #\n
    mul     x3, x3, x9
    eor     x4, x3, x12
    ror     x4, x4, #(\n + 7)
    fmov    x1, d\n
    mov     x2, v\n\().d[1]
    mov     x0, #(\n + 1)
    cmp     x1, x3
    b.ne    1f
    cmp     x2, x4
    b.ne    1f
.endr
    mov     x0, #0
1:  ret
.ltorg

// One SVE round (x0 = round number): fills buffer A with values derived from it, loads
// z0-z31 and p0-p15 from A and FPCR/FPSR as fp_round does, traps, stores every Z and P
// register to buffer B, and compares A and B. Returns x0 = 0 if intact, 35 for a Z/P
// word that changed (x1 = what it holds, x3 = what it should, x2 = its byte offset in
// the buffer), or 33/34 for FPCR/FPSR as fp_round.
sve_round:
    ldr     x9, =0x9e3779b97f4a7c15
    ldr     x12, =0xd1b54a32d192ed03
    adr_l   x14, sve_a
    adr_l   x16, sve_b
    add     x15, x14, x27, lsl #5   // the P registers after the 32 Z registers
    add     x17, x16, x27, lsl #5
    mov     x1, #34
    mul     x2, x27, x1
    lsr     x2, x2, #3              // 8-byte words: 32 Z of VL, 16 P of VL / 8
    lsl     x3, x0, #12
    mov     x4, #0
1:  add     x5, x3, x4
    mul     x5, x5, x9
    eor     x5, x5, x12
    ror     x5, x5, #29
    str     x5, [x14, x4, lsl #3]
    str     xzr, [x16, x4, lsl #3]
    add     x4, x4, #1
    cmp     x4, x2
    b.lo    1b
.irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    ldr     z\n, [x14, #\n, mul vl]
.endr
.irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
    ldr     p\n, [x15, #\n, mul vl]
.endr
    and     x10, x0, #0x1f
    lsl     x10, x10, #22
    msr     fpcr, x10
    mrs     x6, fpcr
    mul     x10, x0, x9
    mov     x11, #0x9f
    movk    x11, #0xf800, lsl #16
    and     x10, x10, x11
    orr     x10, x10, #1
    msr     fpsr, x10
    mrs     x7, fpsr

    ldr     x10, [x24]              // the trap

    mrs     x1, fpcr
    mov     x3, x6
    mov     x0, #33
    cmp     x1, x6
    b.ne    3f
    mrs     x1, fpsr
    mov     x3, x7
    mov     x0, #34
    cmp     x1, x7
    b.ne    3f
.irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    str     z\n, [x16, #\n, mul vl]
.endr
.irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
    str     p\n, [x17, #\n, mul vl]
.endr
    mov     x4, #0
2:  ldr     x3, [x14, x4, lsl #3]
    ldr     x1, [x16, x4, lsl #3]
    cmp     x1, x3
    b.ne    4f
    add     x4, x4, #1
    cmp     x4, x2
    b.lo    2b
    mov     x0, #0
3:  ret
4:  mov     x0, #35
    lsl     x2, x4, #3
    ret
.ltorg

// SIGBUS handler (x2 = ucontext): step over the faulting load, count the trap.
on_sigbus:
    ldr     x3, [x2, #UC_PC]
    add     x3, x3, #4
    str     x3, [x2, #UC_PC]
    adr_l   x3, traps
    ldr     x4, [x3]
    add     x4, x4, #1
    str     x4, [x3]
    ret

restorer:
    mov     x8, #SYS_rt_sigreturn
    svc     #0

// edu DMA of 4 KiB from ADDR into edu's buffer; waits (20 ms sleeps, at most 5 s) until
// edu says it is over, so that the SMMU has recorded the fault.
edu_dma:
    str     x21, [x23, #EDU_DMA_SRC]
    mov     x0, #EDU_BUFFER
    str     x0, [x23, #EDU_DMA_DST]
    mov     x0, #4096
    str     x0, [x23, #EDU_DMA_CNT]
    mov     x0, #1                  // start, RAM to edu
    str     x0, [x23, #EDU_DMA_CMD]
    mov     x10, #0
    sub     sp, sp, #16
    ldr     x0, =20000000
    stp     xzr, x0, [sp]
1:  mov     x0, sp
    mov     x1, #0
    mov     x8, #SYS_nanosleep
    svc     #0
    ldr     x0, [x23, #EDU_DMA_CMD]
    tbz     x0, #0, 2f
    add     x10, x10, #1
    cmp     x10, #250
    b.lo    1b
    say     msg_edu_stuck
    b       fail
2:  add     sp, sp, #16
    ret

// map_page: x1 = path, x9 = page-aligned offset. Returns x0 = the VA of a shared,
// read/write mapping of that page of the file; exits on failure.
map_page:
    mov     x0, #-100               // AT_FDCWD
    mov     x2, #0x1002             // O_RDWR | O_SYNC
    movk    x2, #0x10, lsl #16
    mov     x3, #0
    mov     x8, #SYS_openat
    svc     #0
    tbnz    x0, #63, 1f
    mov     x4, x0
    mov     x5, x9
    mov     x0, #0
    mov     x1, #4096
    mov     x2, #3                  // PROT_READ | PROT_WRITE
    mov     x3, #1                  // MAP_SHARED
    mov     x8, #SYS_mmap
    svc     #0
    cmn     x0, #4096
    b.hi    2f
    ret
1:  say     msg_open
    b       fail
2:  say     msg_mmap
    b       fail

// parse_num: x0 = NUL-terminated decimal or 0x-hex string. Returns x0 = value, x1 = 1
// (0 if it is not a number).
parse_num:
    mov     x2, x0
    mov     x0, #0
    mov     x1, #0
    mov     x4, #10
    ldrb    w3, [x2]
    cmp     w3, #'0'
    b.ne    1f
    ldrb    w3, [x2, #1]
    orr     w3, w3, #0x20
    cmp     w3, #'x'
    b.ne    1f
    mov     x4, #16
    add     x2, x2, #2
1:  ldrb    w3, [x2], #1
    cbz     w3, 4f
    sub     w5, w3, #'0'
    cmp     w5, #10
    b.lo    3f
    orr     w5, w3, #0x20
    sub     w5, w5, #'a'
    cmp     w5, #6
    b.hs    5f
    add     w5, w5, #10
3:  cmp     x5, x4
    b.hs    5f
    madd    x0, x0, x4, x5
    mov     x1, #1
    b       1b
4:  ret
5:  mov     x1, #0
    ret

// puts: x0 = NUL-terminated string, written to stdout.
puts:
    mov     x1, x0
    mov     x2, #0
1:  ldrb    w3, [x1, x2]
    cbz     w3, 2f
    add     x2, x2, #1
    b       1b
2:  mov     x0, #1
    mov     x8, #SYS_write
    svc     #0
    ret

// putdec: x0 written in decimal. puthex: x0 written as 0x and 16 hex digits.
putdec:
    adr_l   x1, numbuf + 31
    strb    wzr, [x1]
    mov     x3, #10
1:  udiv    x2, x0, x3
    msub    x4, x2, x3, x0
    add     w4, w4, #'0'
    strb    w4, [x1, #-1]!
    mov     x0, x2
    cbnz    x0, 1b
    mov     x0, x1
    b       puts

puthex:
    adr_l   x1, numbuf
    mov     w2, #'0'
    strb    w2, [x1]
    mov     w2, #'x'
    strb    w2, [x1, #1]
    mov     x2, #60
1:  lsr     x3, x0, x2
    and     w3, w3, #0xf
    cmp     w3, #10
    add     w4, w3, #'0'
    add     w5, w3, #('a' - 10)
    csel    w4, w4, w5, lo
    strb    w4, [x1, #2]
    add     x1, x1, #1
    subs    x2, x2, #4
    b.pl    1b
    strb    wzr, [x1, #2]
    adr_l   x0, numbuf
    b       puts

mismatch:
    mov     x19, x0
    cmp     x19, #35
    b.eq    sve_mismatch
    stp     x1, x2, [sp, #-32]!
    stp     x3, x4, [sp, #16]
    say     msg_fail_round
    mov     x0, x25
    bl      putdec
    say     msg_colon
    cmp     x19, #33
    b.hs    1f
    say     msg_q
    sub     x0, x19, #1
    bl      putdec
    b       2f
1:  adr_l   x0, msg_fpcr
    adr_l   x1, msg_fpsr
    cmp     x19, #33
    csel    x0, x0, x1, eq
    bl      puts
2:  say     msg_holds
    ldr     x0, [sp, #8]
    bl      puthex
    say     msg_sp
    ldr     x0, [sp]
    bl      puthex
    say     msg_expected
    ldr     x0, [sp, #24]
    bl      puthex
    say     msg_sp
    ldr     x0, [sp, #16]
    bl      puthex
    cbz     x23, 3f
    say     msg_with_events
3:  say     msg_nl
    mov     x0, #1
    b       exit

// x1 = what the word holds, x3 = what it should, x2 = byte offset in the Z/P buffer.
sve_mismatch:
    mov     x20, x1
    mov     x21, x3
    mov     x22, x2
    say     msg_fail_round
    mov     x0, x25
    bl      putdec
    say     msg_colon
    lsl     x0, x27, #5
    cmp     x22, x0
    b.hs    1f
    udiv    x26, x22, x27           // Z register number
    msub    x22, x26, x27, x22      // byte offset in it
    say     msg_z
    b       2f
1:  sub     x22, x22, x27, lsl #5
    lsr     x1, x27, #3
    udiv    x26, x22, x1            // P register number
    msub    x22, x26, x1, x22
    say     msg_p
2:  mov     x0, x26
    bl      putdec
    say     msg_bytes
    mov     x0, x22
    bl      putdec
    say     msg_holds
    mov     x0, x20
    bl      puthex
    say     msg_expected_sve
    mov     x0, x21
    bl      puthex
    cbz     x23, 3f
    say     msg_with_events
3:  say     msg_nl
    mov     x0, #1
    b       exit

no_trap:
    say     msg_fail_round
    mov     x0, x25
    bl      putdec
    say     msg_no_trap
    b       fail
not_edu:
    say     msg_not_edu
    b       fail
no_sigaction:
    say     msg_sigaction
    b       fail
usage:
    say     msg_usage
fail:
    mov     x0, #1
exit:
    mov     x8, #SYS_exit_group
    svc     #0
    b       exit

.section .rodata.fp_regs, "a"
devmem:         .asciz "/dev/mem"
msg_ok:         .asciz "fp-regs: ok: "
msg_rounds:     .asciz " rounds, "
msg_traps:      .asciz " traps into Warden (SIGBUS), v0-v31 (128 bits each), FPCR and FPSR intact every time"
msg_sve:        .asciz ", odd rounds the whole SVE state (z0-z31, p0-p15, VL "
msg_sve2:       .asciz " bytes)"
msg_z:          .asciz "z"
msg_p:          .asciz "p"
msg_bytes:      .asciz " bytes 8 from "
msg_expected_sve: .asciz " after a trap into Warden, expected "
msg_edu:        .asciz ", an edu DMA fault pending before each"
msg_nl:         .asciz "\n"
msg_fail_round: .asciz "fp-regs: FAIL round "
msg_colon:      .asciz ": "
msg_q:          .asciz "q"
msg_fpcr:       .asciz "FPCR"
msg_fpsr:       .asciz "FPSR"
msg_holds:      .asciz " holds "
msg_sp:         .asciz ":"
msg_expected:   .asciz " (high:low) after a trap into Warden, expected "
msg_with_events: .asciz " (an edu DMA fault was pending)"
msg_no_trap:    .asciz ": reading the address did not trap (no SIGBUS)\n"
msg_edu_stuck:  .asciz "fp-regs: FAIL edu DMA still running after 5 s\n"
msg_open:       .asciz "fp-regs: FAIL cannot open a file to map\n"
msg_mmap:       .asciz "fp-regs: FAIL mmap failed\n"
msg_not_edu:    .asciz "fp-regs: FAIL the edu BAR0 does not read as edu (identification register)\n"
msg_sigaction:  .asciz "fp-regs: FAIL rt_sigaction(SIGBUS) failed\n"
msg_usage:      .asciz "fp-regs: FAIL usage: fp-regs ADDR ROUNDS [EDU_BAR0_FILE]\n"

.section .bss.fp_regs, "aw", %nobits
.balign 8
traps:  .quad 0
numbuf: .space 40
.balign 16
sve_a:  .space SVE_MAX_BYTES
sve_b:  .space SVE_MAX_BYTES
