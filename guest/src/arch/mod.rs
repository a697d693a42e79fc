//! The CPU-facing side of the kernel: the register frames the trampolines in
//! `main.rs` hand to Rust, MMIO accessors, the privileged gates, and the jump
//! into the application. The host unit tests never call these.

pub mod mem;

use capsa_abi::{control, CONTROL_MMIO_BASE};

/// Registers saved by `capsa_syscall_user`, lowest address first. The
/// dispatcher writes the result into `rax`; the return path restores the
/// rest, so a handler may also redirect `rip`/`rsp` (e.g. `rt_sigreturn`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SyscallFrame {
    pub rax: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub r10: u64,
    pub r8: u64,
    pub r9: u64,
    /// Callee-saved registers: saved too so that a context switch can swap
    /// whole user register sets through this frame.
    pub rbx: u64,
    pub rbp: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    /// The application's return address (the CPU put it in rcx).
    pub rip: u64,
    /// The application's rflags (the CPU put them in r11).
    pub rflags: u64,
    pub rsp: u64,
    /// rcx and r11 of the context: after a `syscall` the CPU's copies of
    /// rip and rflags, which the fast return path relies on; anything else
    /// after a fault or a signal handler's return (`return_user` then
    /// takes the path that restores them).
    pub rcx: u64,
    pub r11: u64,
}

/// General registers at the time of an exception, as pushed by `capsa_fault_user`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FaultInfo {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
}

/// The CPU's exception frame, left on the CPL0 stack by the stubs.
#[derive(Clone, Copy, Debug, Default)]
pub struct ExceptionFrame {
    pub vector: u64,
    pub error: u64,
    pub rip: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub cr2: u64,
}

#[cfg(not(test))]
mod machine {
    use super::ExceptionFrame;

    extern "C" {
        static mut CAPSA_IDT: [u64; 512];
        static CAPSA_CPL0_STACK_TOP: u8;
        static CAPSA_FAULT_CR2: u64;
        static capsa_exception_stubs: u8;
        static capsa_msr_gate: u8;
        static capsa_ud_stub: u8;
        fn capsa_cr3_gate(cr3: u64);
        fn capsa_invlpg_gate(va: u64);
        fn capsa_return_user(frame: *const super::SyscallFrame, fx: *const u8) -> !;
        fn capsa_return_full(frame: *const super::SyscallFrame, fx: *const u8) -> !;
    }

    const KERNEL_CS: u64 = 0x08;

    fn gate(handler: u64, dpl: u64) -> (u64, u64) {
        let low = (handler & 0xFFFF)
            | (KERNEL_CS << 16)
            | ((0x8E | (dpl << 5)) << 40)
            | ((handler >> 16) & 0xFFFF) << 48;
        (low, handler >> 32)
    }

    /// Fills the IDT that `_start` loaded (empty until now). Runs at CPL3:
    /// the table is ordinary user-accessible memory, and building it here
    /// instead of at CPL0 saves thousands of emulated instructions.
    pub fn install_idt() {
        let stubs = core::ptr::addr_of!(capsa_exception_stubs) as u64;
        let msr = core::ptr::addr_of!(capsa_msr_gate) as u64;
        // SAFETY: the IDT is only written here, once, before any exception
        // can be taken; one vCPU.
        let idt = unsafe { &mut *core::ptr::addr_of_mut!(CAPSA_IDT) };
        for vector in 0..32 {
            let (low, high) = gate(stubs + 16 * vector as u64, 0);
            idt[2 * vector] = low;
            idt[2 * vector + 1] = high;
        }
        // #UD doubles as the CR3 gate (see `capsa_ud_stub`).
        let ud = core::ptr::addr_of!(capsa_ud_stub) as u64;
        let (low, high) = gate(ud, 0);
        idt[2 * 6] = low;
        idt[2 * 6 + 1] = high;
        let (low, high) = gate(msr, 3);
        idt[2 * 0x81] = low;
        idt[2 * 0x81 + 1] = high;
    }

    pub fn exception_frame() -> ExceptionFrame {
        // SAFETY: the stub left vector, error, rip, cs, rflags, rsp, ss just
        // below the CPL0 stack top; the region is ordinary memory in the image.
        unsafe {
            let top = core::ptr::addr_of!(CAPSA_CPL0_STACK_TOP) as *const u64;
            let at = |slot: usize| core::ptr::read_volatile(top.sub(7 - slot));
            ExceptionFrame {
                vector: at(0),
                error: at(1),
                rip: at(2),
                rflags: at(4),
                rsp: at(5),
                cr2: core::ptr::read_volatile(core::ptr::addr_of!(CAPSA_FAULT_CR2)),
            }
        }
    }

    /// Sets the FS base: `wrfsbase` when `_start` enabled CR4.FSGSBASE,
    /// else the `wrmsr` gate.
    pub fn set_fs_base(value: u64) {
        extern "C" {
            static CAPSA_FSGSBASE: u8;
        }
        // SAFETY: a byte written once by `_start`.
        if unsafe { core::ptr::read_volatile(core::ptr::addr_of!(CAPSA_FSGSBASE)) } != 0 {
            // SAFETY: CR4.FSGSBASE is set; the kernel itself never uses FS.
            unsafe {
                core::arch::asm!("wrfsbase {}", in(reg) value, options(nostack, preserves_flags))
            };
        } else {
            wrmsr(super::MSR_FS_BASE, value);
        }
    }

    /// Asks the VMM for timer ticks (`control::TICK_ENTRY_ADDR`): a tick
    /// that catches the application resumes the vCPU at `capsa_fault_user`
    /// on the fault stack with the CPU-style frame the exception stubs
    /// leave, so it takes the fault path with no CPL0 step at all.
    /// XCR0 if the CPU has XSAVE and it is enabled (CPUID.1:ECX.OSXSAVE).
    pub fn xcr0() -> Option<u64> {
        let leaf1 = core::arch::x86_64::__cpuid(1);
        if leaf1.ecx & (1 << 27) == 0 {
            return None;
        }
        let (lo, hi): (u32, u32);
        // SAFETY: OSXSAVE is set, so xgetbv of XCR0 is valid at any
        // privilege level and only reads.
        unsafe { core::arch::asm!("xgetbv", in("ecx") 0, out("eax") lo, out("edx") hi) };
        Some(u64::from(hi) << 32 | u64::from(lo))
    }

    /// (size, offset) of XSAVE component `component` in the standard format.
    pub fn xsave_component(component: u32) -> (u32, u32) {
        let leaf = core::arch::x86_64::__cpuid_count(0xd, component);
        (leaf.eax, leaf.ebx)
    }

    pub fn set_xsave_mask(mask: u64) {
        extern "C" {
            static mut CAPSA_XSAVE_MASK: u64;
        }
        // SAFETY: the trampolines only read this word, and it is set once
        // at boot before any task runs.
        unsafe { core::ptr::addr_of_mut!(CAPSA_XSAVE_MASK).write_volatile(mask) };
    }

    pub fn enable_ticks() {
        extern "C" {
            static CAPSA_FAULT_STACK_TOP: u8;
            static capsa_fault_user: u8;
            static __kernel_end: u8;
        }
        struct Entry(core::cell::UnsafeCell<[u64; 5]>);
        // SAFETY: one vCPU; written once, before the VMM is told of it.
        unsafe impl Sync for Entry {}
        static ENTRY: Entry = Entry(core::cell::UnsafeCell::new([0; 5]));
        let entry = [
            core::ptr::addr_of!(capsa_fault_user) as u64,
            core::ptr::addr_of!(CAPSA_FAULT_STACK_TOP) as u64,
            core::ptr::addr_of!(CAPSA_CPL0_STACK_TOP) as u64 - 56,
            capsa_abi::KERNEL_BASE,
            core::ptr::addr_of!(__kernel_end) as u64,
        ];
        // SAFETY: see `Entry`; the image is identity mapped, so the
        // address is also guest-physical.
        unsafe { *ENTRY.0.get() = entry };
        super::control_write(capsa_abi::control::TICK_ENTRY_ADDR, ENTRY.0.get() as u64);
    }

    /// The time the host has kept this vCPU from running since boot (KVM
    /// steal time: runnable but not scheduled), in nanoseconds; 0 when the
    /// hypervisor offers no steal-time area.
    pub fn steal_ns() -> u64 {
        extern "C" {
            static CAPSA_STEAL_TIME_ON: u8;
            static CAPSA_STEAL_TIME: u64;
        }
        // SAFETY: a byte written once by `_start`.
        if unsafe { core::ptr::read_volatile(core::ptr::addr_of!(CAPSA_STEAL_TIME_ON)) } == 0 {
            return 0;
        }
        let area = core::ptr::addr_of!(CAPSA_STEAL_TIME);
        loop {
            // SAFETY: `struct kvm_steal_time` in the image (64-byte aligned,
            // 64 bytes): the steal counter at offset 0, the version at 8.
            // The host updates it only while this vCPU is not running, and
            // makes the version odd while it does.
            let (before, steal, after) = unsafe {
                let version = area.cast::<u32>().add(2);
                (
                    core::ptr::read_volatile(version),
                    core::ptr::read_volatile(area),
                    core::ptr::read_volatile(version),
                )
            };
            if before == after && before & 1 == 0 {
                return steal;
            }
        }
    }

    /// Writes a model-specific register through the `int 0x81` gate.
    pub fn wrmsr(msr: u32, value: u64) {
        // SAFETY: the gate executes `wrmsr; iretq` with these registers; the
        // only MSR the kernel writes this way is the FS base.
        unsafe {
            core::arch::asm!(
                "int 0x81",
                in("ecx") msr,
                in("eax") value as u32,
                in("edx") (value >> 32) as u32,
            );
        }
    }

    /// Loads CR3 (which also flushes the TLB) through the #UD gate.
    pub fn load_cr3(value: u64) {
        // SAFETY: the gate only executes `mov cr3, rax` for this call site;
        // callers pass the physical address of a complete PML4 that maps the
        // kernel identically (see `mm::space`). rax is clobbered.
        unsafe {
            core::arch::asm!("call {g}", g = sym capsa_cr3_gate, out("rax") _, in("rdi") value)
        };
    }

    /// Drops the TLB's translation of the page at `va` through the #UD gate.
    pub fn invlpg(va: u64) {
        // SAFETY: the gate only executes `invlpg [rax]` for this call site,
        // which changes no memory and no register but rax.
        unsafe {
            core::arch::asm!("call {g}", g = sym capsa_invlpg_gate, out("rax") _, in("rdi") va)
        };
    }

    /// Resumes the user context `frame` with FPU/SSE state `fx` (64-byte
    /// aligned): the fast path when rcx and r11 hold rip and rflags (as
    /// after a syscall), else the one through CPL0 that restores them.
    pub fn return_user(frame: &super::SyscallFrame, fx: &super::FxArea) -> ! {
        if frame.needs_full_return() {
            // SAFETY: both point to complete saved states; the routine
            // restores every register and irets to the user's rip (the
            // frame's rflags were sanitised by whoever set them).
            unsafe { capsa_return_full(frame, fx.0.as_ptr()) }
        }
        // SAFETY: both point to complete saved states; the routine restores
        // them and jumps to the user's rip, never returning.
        unsafe { capsa_return_user(frame, fx.0.as_ptr()) }
    }

    /// Starts the application: fresh registers, the given stack and entry.
    pub fn enter_user(entry: u64, sp: u64) -> ! {
        // SAFETY: `entry` and `sp` come from the ELF loader and the initial
        // stack builder; the application now owns the CPU until its next
        // syscall or fault.
        unsafe {
            core::arch::asm!(
                "mov rsp, {sp}",
                "xor eax, eax",
                "xor ebx, ebx",
                "xor ecx, ecx",
                "xor edx, edx",
                "xor esi, esi",
                "xor edi, edi",
                "xor ebp, ebp",
                "xor r8d, r8d",
                "xor r9d, r9d",
                "xor r10d, r10d",
                "xor r11d, r11d",
                "xor r12d, r12d",
                "xor r13d, r13d",
                "xor r14d, r14d",
                "cld",
                "jmp r15",
                sp = in(reg) sp,
                in("r15") entry,
                options(noreturn)
            )
        }
    }
}

pub use machine::{
    enable_ticks, enter_user, exception_frame, install_idt, invlpg, load_cr3, return_user,
    set_fs_base, steal_ns, wrmsr,
};

impl SyscallFrame {
    /// Resumes at `rip` as after a system call, which leaves rcx and r11
    /// holding rip and rflags: the fast return path serves it.
    pub fn resume_after_syscall_at(&mut self, rip: u64) {
        self.rip = rip;
        self.rcx = rip;
        self.r11 = self.rflags;
    }

    /// Whether resuming this context must restore rcx and r11 too.
    pub fn needs_full_return(&self) -> bool {
        self.rcx != self.rip || self.r11 != self.rflags
    }
}

/// Room for a task's x87, SSE and vector state: an `xsave` image of the
/// components in [`xsave_mask`] (AVX and AVX-512 take 2.7 KiB), or an
/// `fxsave` image in its first 512 bytes on CPUs without XSAVE.
pub const FX_SIZE: usize = 4096;
/// Where an xsave image's header starts (after the legacy region).
const XSAVE_HEADER: usize = 512;

/// A task's FPU and vector registers, aligned as `xsave` requires.
///
/// The kernel must save everything a program may hold in registers: on
/// this platform the guest sees the host's CPUID and XCR0 (PVM does not
/// trap CPUID), so programs use AVX and AVX-512, and a context switch that
/// kept only SSE state would hand one task's upper vector halves to the next.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub struct FxArea(pub [u8; FX_SIZE]);

impl FxArea {
    /// The state after `fninit` and a reset MXCSR: what a new program
    /// starts with (the vector components in their initial state).
    pub fn initial() -> Self {
        let mut a = [0u8; FX_SIZE];
        a[0..2].copy_from_slice(&0x037fu16.to_le_bytes());
        a[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
        // XSTATE_BV: x87 and SSE from the legacy region, the rest initial.
        a[XSAVE_HEADER] = 0x3;
        Self(a)
    }

    /// Makes an image a program wrote (a signal frame's, at sigreturn)
    /// safe to restore: reserved MXCSR bits and a header naming components
    /// not saved, or the compacted format, would fault in the kernel.
    pub fn sanitize(&mut self) {
        let mxcsr = u32::from_le_bytes([self.0[24], self.0[25], self.0[26], self.0[27]]) & 0xffff;
        self.0[24..28].copy_from_slice(&mxcsr.to_le_bytes());
        let header = &mut self.0[XSAVE_HEADER..XSAVE_HEADER + 64];
        let bv = u64::from_le_bytes([
            header[0], header[1], header[2], header[3], header[4], header[5], header[6], header[7],
        ]) & xsave_mask();
        header.fill(0);
        header[..8].copy_from_slice(&bv.to_le_bytes());
    }
}

static XSAVE_SIZE: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(512);
static XSAVE_MASK: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// The XSAVE components saved per task (0: fxsave is used).
pub fn xsave_mask() -> u64 {
    XSAVE_MASK.load(core::sync::atomic::Ordering::Relaxed)
}

/// How many bytes of an [`FxArea`] hold state (what a signal frame
/// carries): 512 with fxsave, else the end of the last saved component.
pub fn fpu_size() -> usize {
    XSAVE_SIZE.load(core::sync::atomic::Ordering::Relaxed)
}

/// Chooses how task state is saved: `xsave` of every user component XCR0
/// enables (x87, SSE, AVX, AVX-512, PKRU) that fits an [`FxArea`] when the
/// CPU has XSAVE enabled, else `fxsave`. AMX tiles are left out: Linux
/// too grants them only on request (arch_prctl), which the guest does not.
pub fn init_fpu() {
    let Some(xcr0) = machine::xcr0() else {
        return;
    };
    let mut mask = xcr0 & 0x2e7;
    let mut size = XSAVE_HEADER + 64;
    for component in 2..10 {
        if mask & (1 << component) == 0 {
            continue;
        }
        let (len, offset) = machine::xsave_component(component);
        let end = offset as usize + len as usize;
        if len == 0 || end > FX_SIZE {
            mask &= !(1 << component);
        } else {
            size = size.max(end);
        }
    }
    XSAVE_SIZE.store((size + 63) & !63, core::sync::atomic::Ordering::Relaxed);
    XSAVE_MASK.store(mask, core::sync::atomic::Ordering::Relaxed);
    machine::set_xsave_mask(mask);
}

pub const MSR_FS_BASE: u32 = 0xC000_0100;

/// Reads a 32-bit MMIO register.
///
/// # Safety
/// `addr` must be a device register inside the MMIO window.
pub unsafe fn mmio_read32(addr: u64) -> u32 {
    // SAFETY: per the caller's contract; identity mapped.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

/// # Safety
/// `addr` must be a device register inside the MMIO window.
pub unsafe fn mmio_write32(addr: u64, value: u32) {
    // SAFETY: per the caller's contract; identity mapped.
    unsafe { core::ptr::write_volatile(addr as *mut u32, value) }
}

/// Reads a capsa control register (see `capsa_abi::control`).
pub fn control_read(reg: u64) -> u64 {
    if cfg!(test) {
        return 0;
    }
    // SAFETY: the control device is at CONTROL_MMIO_BASE, identity mapped;
    // registers are 8-byte aligned.
    unsafe { core::ptr::read_volatile((CONTROL_MMIO_BASE + reg) as *const u64) }
}

pub fn control_write(reg: u64, value: u64) {
    if cfg!(test) {
        return;
    }
    // SAFETY: as in `control_read`.
    unsafe { core::ptr::write_volatile((CONTROL_MMIO_BASE + reg) as *mut u64, value) }
}

/// Logs a message through the VMM's debug channel.
pub fn debug(msg: &[u8]) {
    control_write(control::DEBUG_ADDR, msg.as_ptr() as u64);
    control_write(control::DEBUG_LEN, msg.len() as u64);
}

pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no side effects; CR4.TSD is clear so it works at CPL3.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// A hardware random number, if the CPU has RDRAND and it delivers.
pub fn rdrand() -> Option<u64> {
    let leaf1 = core::arch::x86_64::__cpuid(1);
    if leaf1.ecx & (1 << 30) == 0 {
        return None;
    }
    for _ in 0..10 {
        let value: u64;
        let ok: u8;
        // SAFETY: the CPU advertises RDRAND (checked above).
        unsafe {
            core::arch::asm!("rdrand {v}", "setc {ok}", v = out(reg) value, ok = out(reg_byte) ok);
        }
        if ok != 0 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod machine {
    use super::ExceptionFrame;

    pub fn install_idt() {}
    pub fn exception_frame() -> ExceptionFrame {
        ExceptionFrame::default()
    }
    pub fn wrmsr(_msr: u32, _value: u64) {}
    pub fn load_cr3(_value: u64) {}
    pub fn invlpg(_va: u64) {}
    pub fn return_user(_frame: &super::SyscallFrame, _fx: &super::FxArea) -> ! {
        unreachable!("host tests never enter user mode")
    }
    pub fn set_fs_base(_value: u64) {}
    pub fn steal_ns() -> u64 {
        0
    }
    pub fn enable_ticks() {}
    pub fn xcr0() -> Option<u64> {
        None
    }
    pub fn xsave_component(_component: u32) -> (u32, u32) {
        (0, 0)
    }
    pub fn set_xsave_mask(_mask: u64) {}
    pub fn enter_user(_entry: u64, _sp: u64) -> ! {
        unreachable!("host tests never enter user mode")
    }
}
