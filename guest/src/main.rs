//! The capsa guest kernel image: CPL0 trampolines, the heap, the panic handler.
//!
//! # Rings
//! On this project's machines guest CPL0 is emulated one instruction at a
//! time (see PLATFORM.md), so no compiled Rust runs at CPL0: the code below in
//! `global_asm!` is the only CPL0 code, a few dozen plain integer
//! instructions in total. Everything else, the whole library OS, runs at CPL3
//! in the application's address space (the VM is the security boundary).
//!
//! - `_start` (CPL0, once): loads our GDT, TSS and IDT, the syscall MSRs, and
//!   `iretq`s to `capsa_user_entry` (CPL3) on the kernel stack.
//! - `capsa_syscall_entry` (CPL0, per syscall, 8 instructions): saves the user
//!   rsp, builds an `iretq` frame for `capsa_syscall_user` (CPL3) on the
//!   kernel stack. `sysretq` triple-faults here, hence `iretq`.
//! - `capsa_syscall_user` (CPL3): saves registers and the FPU/SSE state, runs
//!   the Rust dispatcher, restores, and returns to the application *without*
//!   a second CPL0 transition: the syscall ABI clobbers rcx and r11 anyway, so
//!   rcx carries the return address, `popfq` restores the flags while still on
//!   the kernel stack, then `mov rsp` + `jmp rcx` neither touch flags nor the
//!   application's red zone. This halves the emulated work per syscall.
//! - `capsa_return_full` (CPL3, then 4 CPL0 instructions): resumes a context
//!   whose rcx and r11 matter (an interrupted instruction after a page
//!   fault, a signal handler's return) by loading every register and
//!   `iretq`ing from the #UD stub through a prepared frame.
//! - Exception stubs (CPL0): push the vector (and a zero error code where the
//!   CPU pushes none), save CR2, and `iretq` to `capsa_fault_user` (CPL3) with
//!   the CPU's frame left in place on the CPL0 stack for Rust to read.
//! - `_start` also registers KVM's steal-time area (MSR_KVM_STEAL_TIME) when
//!   the hypervisor offers it: the host writes there how long it kept the
//!   vCPU from running, which the CPU-time meter leaves out (`arch::steal_ns`).
//! - The FS base (`arch_prctl(ARCH_SET_FS)`) is set with `wrfsbase` at CPL3:
//!   `_start` enables CR4.FSGSBASE when the CPU has it. Otherwise an `int 0x81`
//!   gate (DPL3) does `wrmsr` with the caller's ecx/edx:eax (PVM raises #UD
//!   for `int n` from guest CPL3, so FSGSBASE is the path that works there).
#![no_std]
#![no_main]

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;

use capsa_guest::arch::{FaultInfo, SyscallFrame};
use capsa_guest::mm::heap::Heap;

core::arch::global_asm!(
    r#"
.section .text.capsa_entry, "ax"
.global _start
_start:
    lgdt [rip + CAPSA_GDT_PTR]
    lea rax, [rip + CAPSA_TSS]
    mov [rip + CAPSA_GDT + 0x32], ax
    shr rax, 16
    mov [rip + CAPSA_GDT + 0x34], al
    mov [rip + CAPSA_GDT + 0x37], ah
    shr rax, 16
    mov [rip + CAPSA_GDT + 0x38], eax
    mov ax, 0x30
    ltr ax
    push 0x08
    lea rax, [rip + 2f]
    push rax
    retfq
2:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    lidt [rip + CAPSA_IDT_PTR]
    mov eax, 7
    xor ecx, ecx
    cpuid
    test ebx, 1
    jz 3f
    mov rax, cr4
    or eax, 0x10000
    mov cr4, rax
    mov BYTE PTR [rip + CAPSA_FSGSBASE], 1
3:
    mov eax, 0x40000000
    cpuid
    cmp ebx, 0x4b4d564b
    jne 4f
    cmp eax, 0x40000001
    jb 4f
    mov eax, 0x40000001
    cpuid
    test eax, 0x20
    jz 4f
    mov ecx, 0x4b564d03
    lea rax, [rip + CAPSA_STEAL_TIME]
    mov rdx, rax
    shr rdx, 32
    or eax, 1
    wrmsr
    mov BYTE PTR [rip + CAPSA_STEAL_TIME_ON], 1
4:
    mov ecx, 0xC0000081
    xor eax, eax
    mov edx, 0x00180008
    wrmsr
    mov ecx, 0xC0000082
    lea rax, [rip + capsa_syscall_entry]
    mov rdx, rax
    shr rdx, 32
    wrmsr
    mov ecx, 0xC0000084
    mov eax, 0x47700
    xor edx, edx
    wrmsr
    push 0x23
    lea rax, [rip + CAPSA_KERNEL_STACK_TOP]
    push rax
    push 0x2
    push 0x2B
    lea rax, [rip + capsa_user_entry]
    push rax
    iretq

.global capsa_syscall_entry
capsa_syscall_entry:
    mov [rip + CAPSA_SYSCALL_USER_RSP], rsp
    lea rsp, [rip + CAPSA_CPL0_STACK_TOP]
    push 0x23
    push OFFSET CAPSA_KERNEL_STACK_TOP
    push 0x2
    push 0x2B
    push OFFSET capsa_syscall_user
    iretq

.global capsa_msr_gate
capsa_msr_gate:
    wrmsr
    iretq

.balign 16
.global capsa_exception_stubs
capsa_exception_stubs:
.irp vec, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .balign 16
    .if (\vec == 8) || (\vec == 10) || (\vec == 11) || (\vec == 12) || (\vec == 13) || (\vec == 14) || (\vec == 17) || (\vec == 21) || (\vec == 29) || (\vec == 30)
    .else
    push 0
    .endif
    push \vec
    jmp capsa_exception_common
.endr

/* #UD: the CR3 gate, the full-return gate or the invlpg gate when it
   comes from their ud2 (capsa_cr3_gate_ud, capsa_iret_gate_ud,
   capsa_invlpg_gate_ud), else an ordinary exception. 4-8 emulated
   instructions on a gate path. */
.global capsa_ud_stub
capsa_ud_stub:
    cmp QWORD PTR [rsp], OFFSET capsa_cr3_gate_ud
    jne 1f
    mov cr3, rax
    add QWORD PTR [rsp], 2
    iretq
1:
    cmp QWORD PTR [rsp], OFFSET capsa_iret_gate_ud
    jne 2f
    lea rsp, [rip + CAPSA_IRET_FRAME]
    iretq
2:
    cmp QWORD PTR [rsp], OFFSET capsa_invlpg_gate_ud
    jne 3f
    invlpg [rax]
    add QWORD PTR [rsp], 2
    iretq
3:
    push 0
    push 6
    jmp capsa_exception_common

capsa_exception_common:
    push rax
    mov rax, cr2
    mov [rip + CAPSA_FAULT_CR2], rax
    pop rax
    push 0x23
    push OFFSET CAPSA_FAULT_STACK_TOP
    push 0x2
    push 0x2B
    push OFFSET capsa_fault_user
    iretq

.text
/* ---- everything below runs at CPL3 ---- */

/* The general registers of a SyscallFrame at rsp but rip, rflags, rsp,
   rcx and r11, which each return path restores its own way. */
.macro save_fpu base
    mov rax, [rip + CAPSA_XSAVE_MASK]
    test rax, rax
    jz 2f
    /* xsave leaves the header past XSTATE_BV alone; xrstor faults on
       anything but zeros there. */
    mov qword ptr [\base + 520], 0
    mov qword ptr [\base + 528], 0
    mov qword ptr [\base + 536], 0
    mov qword ptr [\base + 544], 0
    mov qword ptr [\base + 552], 0
    mov qword ptr [\base + 560], 0
    mov qword ptr [\base + 568], 0
    mov rdx, rax
    shr rdx, 32
    xsave [\base]
    jmp 3f
2:
    fxsave [\base]
3:
.endm

.macro restore_fpu base
    mov rax, [rip + CAPSA_XSAVE_MASK]
    test rax, rax
    jz 2f
    mov rdx, rax
    shr rdx, 32
    xrstor [\base]
    jmp 3f
2:
    fxrstor [\base]
3:
.endm

.macro pop_frame_gprs
    pop rax
    pop rdi
    pop rsi
    pop rdx
    pop r10
    pop r8
    pop r9
    pop rbx
    pop rbp
    pop r12
    pop r13
    pop r14
    pop r15
.endm

capsa_user_entry:
    call capsa_main
    ud2

capsa_syscall_user:
    push r11
    push rcx
    push QWORD PTR [rip + CAPSA_SYSCALL_USER_RSP]
    push r11
    push rcx
    push r15
    push r14
    push r13
    push r12
    push rbp
    push rbx
    push r9
    push r8
    push r10
    push rdx
    push rsi
    push rdi
    push rax
    mov rbx, rsp
    sub rsp, 4096
    and rsp, -64
    save_fpu rsp
    mov rdi, rbx
    call capsa_syscall
    restore_fpu rsp
    mov rsp, rbx
capsa_pop_user:
    pop_frame_gprs
    pop rcx
    pop r11
    push r11
    popfq
    mov rsp, [rsp]
    jmp rcx

/* capsa_return_user(frame: rdi, fxsave image: rsi) -> !: resumes a saved
   user context from anywhere at CPL3 whose rcx and r11 are its rip and
   rflags (as after a syscall). */
.global capsa_return_user
capsa_return_user:
    restore_fpu rsi
    mov rsp, rdi
    jmp capsa_pop_user

/* capsa_return_full(frame: rdi, fxsave image: rsi) -> !: resumes any saved
   user context, every register as it was (after a fault, a signal
   handler's return). rip, rflags and rsp go into CAPSA_IRET_FRAME, the
   general registers are loaded, and the ud2 below is recognised by the #UD
   stub, which iretqs through that frame: 4 emulated instructions. */
.global capsa_return_full
capsa_return_full:
    restore_fpu rsi
    mov rax, [rdi + 104]
    mov [rip + CAPSA_IRET_FRAME], rax
    mov rax, [rdi + 112]
    mov [rip + CAPSA_IRET_FRAME + 16], rax
    mov rax, [rdi + 120]
    mov [rip + CAPSA_IRET_FRAME + 24], rax
    mov rcx, [rdi + 128]
    mov r11, [rdi + 136]
    mov rsp, rdi
    pop_frame_gprs
.global capsa_iret_gate_ud
capsa_iret_gate_ud:
    ud2

/* capsa_invlpg_gate(rdi = address): as the CR3 gate, for invlpg of one page. */
.global capsa_invlpg_gate
capsa_invlpg_gate:
    mov rax, rdi
.global capsa_invlpg_gate_ud
capsa_invlpg_gate_ud:
    ud2
    ret

/* capsa_cr3_gate(rdi = new CR3): the #UD stub recognises this ud2 by its
   address, loads CR3 (flushing the TLB) and resumes after it. */
.global capsa_cr3_gate
capsa_cr3_gate:
    mov rax, rdi
.global capsa_cr3_gate_ud
capsa_cr3_gate_ud:
    ud2
    ret

.global capsa_fault_user
capsa_fault_user:
    push r15
    push r14
    push r13
    push r12
    push r11
    push r10
    push r9
    push r8
    push rbp
    push rdi
    push rsi
    push rdx
    push rcx
    push rbx
    push rax
    mov rdi, rsp
    sub rsp, 4096
    and rsp, -64
    save_fpu rsp
    mov rsi, rsp
    call capsa_fault
    ud2

.data
.balign 16
.global CAPSA_GDT
CAPSA_GDT:
    .quad 0
    .quad 0x00AF9B000000FFFF
    .quad 0x00CF93000000FFFF
    .quad 0x00CFFB000000FFFF
    .quad 0x00CFF3000000FFFF
    .quad 0x00AFFB000000FFFF
    .quad 0x0000890000000067
    .quad 0
CAPSA_GDT_PTR:
    .word 63
    .quad CAPSA_GDT
.balign 16
CAPSA_IDT_PTR:
    .word 4095
    .quad CAPSA_IDT
.balign 16
.global CAPSA_TSS
CAPSA_TSS:
    .long 0
    .quad CAPSA_CPL0_STACK_TOP
    .fill 92, 1, 0
.balign 8
.global CAPSA_SYSCALL_USER_RSP
CAPSA_SYSCALL_USER_RSP:
    .quad 0
.global CAPSA_FAULT_CR2
CAPSA_FAULT_CR2:
    .quad 0
/* rip, cs, rflags, rsp, ss for capsa_return_full. */
CAPSA_IRET_FRAME:
    .quad 0, 0x2B, 0x2, 0, 0x23
.global CAPSA_FSGSBASE
CAPSA_FSGSBASE:
    .quad 0
/* The XSAVE components tasks' vector state is saved with (0: fxsave). */
.global CAPSA_XSAVE_MASK
CAPSA_XSAVE_MASK:
    .quad 0
.global CAPSA_STEAL_TIME_ON
CAPSA_STEAL_TIME_ON:
    .quad 0
.balign 64
.global CAPSA_STEAL_TIME
CAPSA_STEAL_TIME:
    .fill 64, 1, 0

.bss
.balign 4096
.global CAPSA_IDT
CAPSA_IDT:
    .skip 4096
.balign 16
    .skip 4096
.global CAPSA_CPL0_STACK_TOP
CAPSA_CPL0_STACK_TOP:
    .skip 65536
.global CAPSA_FAULT_STACK_TOP
CAPSA_FAULT_STACK_TOP:
    .skip 262144
.global CAPSA_KERNEL_STACK_TOP
CAPSA_KERNEL_STACK_TOP:
"#
);

/// The kernel heap: a region of RAM handed over by `boot`, single-threaded.
struct KernelHeap(UnsafeCell<Heap>);

// SAFETY: the guest has one vCPU and no interrupts, so there is never
// concurrent access to the heap.
unsafe impl Sync for KernelHeap {}

#[global_allocator]
static HEAP: KernelHeap = KernelHeap(UnsafeCell::new(Heap::empty()));

// SAFETY: `Heap` hands out disjoint, suitably aligned blocks of memory it owns;
// one vCPU and no interrupts mean no reentrancy.
unsafe impl GlobalAlloc for KernelHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: single-threaded, see `Sync` above.
        let heap = unsafe { &mut *self.0.get() };
        if !heap.initialized() {
            // SAFETY: the VMM wrote the BootInfo at BOOT_INFO_ADDR before
            // entry (identity mapped, never written by the guest).
            let info = unsafe {
                core::ptr::read_volatile(capsa_abi::BOOT_INFO_ADDR as *const capsa_abi::BootInfo)
            };
            if let Some((start, len)) = capsa_guest::kernel::heap_region(&info) {
                // SAFETY: boot keeps this region out of the application's
                // free ranges; nothing else uses it.
                unsafe { heap.init(start, len) };
            }
        }
        // SAFETY: single-threaded, see `Sync` above.
        unsafe { heap.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: single-threaded; `ptr` came from `alloc` with this layout.
        unsafe { (*self.0.get()).dealloc(ptr, layout) }
    }
}

/// CPL3 entry from `_start`, on the kernel stack.
#[no_mangle]
extern "C" fn capsa_main(boot_info: u64) -> ! {
    capsa_guest::arch::install_idt();
    capsa_guest::kernel::boot(boot_info)
}

#[no_mangle]
extern "C" fn capsa_syscall(frame: &mut SyscallFrame) {
    capsa_guest::syscalls::entry(frame);
}

#[no_mangle]
extern "C" fn capsa_fault(regs: &FaultInfo, fx: &capsa_guest::arch::FxArea) -> ! {
    capsa_guest::kernel::fault(regs, fx)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    capsa_guest::kernel::panic(info)
}

/// The prebuilt `alloc` is compiled with unwinding and refers to this symbol;
/// with `panic = "abort"` nothing ever unwinds, so it is never called. An
/// optimised build drops the reference; an unoptimised one needs it to link.
#[cfg(not(test))]
#[no_mangle]
extern "C" fn rust_eh_personality() {}

/// The prebuilt `alloc`'s formatting code keeps cleanup landing pads that
/// resume unwinding through this symbol. With `panic = "abort"` no unwind
/// ever starts, so reaching it would be a broken invariant: stop there.
#[cfg(not(test))]
#[no_mangle]
extern "C" fn _Unwind_Resume() -> ! {
    panic!("unwinding reached in an abort-on-panic kernel")
}
