//! Signals: the state (a process's dispositions and pending set, a
//! thread's mask and alternate stack), the rules, and the `rt_sigframe`
//! layout. Delivery is `crate::kernel::signal`, the calls
//! `crate::syscalls::signal`.
//!
//! Signals come from `kill`/`tkill`/`tgkill`, from the kernel (SIGCHLD,
//! SIGPIPE) and from faults. They are delivered when the process returns to
//! user mode from a system call (there are no asynchronous interruptions in
//! this design; a blocked process is woken to take them). Default actions
//! terminate (core signals too: no core files, as with RLIMIT_CORE 0) or
//! ignore; stop signals are ignored (no job control without a terminal).
//! A handler runs on a Linux `rt_sigframe` (siginfo, ucontext with the
//! interrupted registers, signal mask and fxsave image) and returns through
//! its `SA_RESTORER` trampoline into `rt_sigreturn`. A call that was
//! blocked when the signal came fails with EINTR, or, for the calls Linux
//! restarts under `SA_RESTART` when the handler has it, is restarted after
//! the handler.

use crate::arch::SyscallFrame;

pub const NSIG: usize = 64;
pub const SIG_DFL: u64 = 0;
pub const SIG_IGN: u64 = 1;
pub const SIGKILL: u32 = 9;
pub const SIGPIPE: u32 = 13;
pub const SIGSTOP: u32 = 19;
pub const SA_SIGINFO: u64 = 4;
pub const SA_RESTART: u64 = 0x1000_0000;

/// Calls a handler with `SA_RESTART` restarts after interrupting them (the
/// others — sleeps, poll, select, epoll_wait, pause — always fail with EINTR).
pub fn restartable(nr: u64) -> bool {
    // read, write, readv, writev, wait4, fcntl (F_SETLKW), flock, futex,
    // waitid, openat (a FIFO), sendfile.
    matches!(
        nr,
        0 | 1 | 19 | 20 | 61 | 72 | 73 | 202 | 247 | 2 | 257 | 40
    )
}
pub const SA_ONSTACK: u64 = 0x0800_0000;
pub const SA_RESTORER: u64 = 0x0400_0000;
pub const SA_NODEFER: u64 = 0x4000_0000;
pub const SA_RESETHAND: u64 = 0x8000_0000;
pub const SS_ONSTACK: u32 = 1;
pub const SS_DISABLE: u32 = 2;
pub const UNBLOCKABLE: u64 = (1 << (SIGKILL - 1)) | (1 << (SIGSTOP - 1));

/// `struct rt_sigframe` (x86-64): the restorer address, `struct ucontext`
/// (flags, link, stack_t, sigcontext, mask), then `siginfo`.
pub const FRAME_UC: u64 = 8;
pub const UC_STACK: u64 = 16;
pub const UC_MCONTEXT: u64 = 40;
pub const UC_SIGMASK: u64 = UC_MCONTEXT + 256;
pub const FRAME_INFO: u64 = FRAME_UC + UC_SIGMASK + 8;
pub const FRAME_SIZE: u64 = FRAME_INFO + 128;
/// `sigcontext` slot of each register, in `u64`s from its start.
pub const MC_R8: usize = 0;
pub const MC_RDI: usize = 8;
pub const MC_RSI: usize = 9;
pub const MC_RBP: usize = 10;
pub const MC_RBX: usize = 11;
pub const MC_RDX: usize = 12;
pub const MC_RAX: usize = 13;
pub const MC_RCX: usize = 14;
pub const MC_RSP: usize = 15;
pub const MC_RIP: usize = 16;
pub const MC_EFLAGS: usize = 17;
pub const MC_CSGSFS: usize = 18;
pub const MC_OLDMASK: usize = 21;
pub const MC_FPSTATE: usize = 23;
/// Flags a signal handler may change on return (CF PF AF ZF SF TF DF OF AC).
pub const USER_FLAGS: u64 = 0x0004_0dd5;

/// The `sigcontext` words for `f` (fpstate pointer and mask filled in later).
pub fn mcontext(f: &SyscallFrame) -> [u64; 32] {
    let mut m = [0u64; 32];
    let gprs = [f.r8, f.r9, f.r10, f.r11, f.r12, f.r13, f.r14, f.r15];
    m[MC_R8..MC_R8 + 8].copy_from_slice(&gprs);
    m[MC_RDI] = f.rdi;
    m[MC_RSI] = f.rsi;
    m[MC_RBP] = f.rbp;
    m[MC_RBX] = f.rbx;
    m[MC_RDX] = f.rdx;
    m[MC_RAX] = f.rax;
    m[MC_RCX] = f.rcx;
    m[MC_RSP] = f.rsp;
    m[MC_RIP] = f.rip;
    m[MC_EFLAGS] = f.rflags;
    // cs = 0x2b, gs = fs = 0, ss = 0x23.
    m[MC_CSGSFS] = 0x2b | (0x23 << 48);
    m
}

/// The registers a `sigcontext` restores into `f`.
pub fn restore_mcontext(f: &mut SyscallFrame, m: &[u64; 32]) {
    f.r8 = m[MC_R8];
    f.r9 = m[MC_R8 + 1];
    f.r10 = m[MC_R8 + 2];
    f.r11 = m[MC_R8 + 3];
    f.r12 = m[MC_R8 + 4];
    f.r13 = m[MC_R8 + 5];
    f.r14 = m[MC_R8 + 6];
    f.r15 = m[MC_R8 + 7];
    f.rdi = m[MC_RDI];
    f.rsi = m[MC_RSI];
    f.rbp = m[MC_RBP];
    f.rbx = m[MC_RBX];
    f.rdx = m[MC_RDX];
    f.rax = m[MC_RAX];
    f.rcx = m[MC_RCX];
    f.rsp = m[MC_RSP];
    f.rip = m[MC_RIP];
    f.rflags = (f.rflags & !USER_FLAGS) | (m[MC_EFLAGS] & USER_FLAGS);
}

/// Where the frame goes below `sp`: (frame address, fpstate address). The
/// red zone is skipped, the FPU and vector image (`arch::fpu_size`)
/// 64-byte aligned, and the handler entered as if called (`rsp + 8`
/// 16-byte aligned).
pub fn frame_layout(sp: u64) -> (u64, u64) {
    let fp = (sp - 128 - crate::arch::fpu_size() as u64) & !63;
    let frame = ((fp - FRAME_SIZE) & !15) - 8;
    (frame, fp)
}

/// Whether `sig`'s default action leaves a core (reported without one).
pub fn is_stop(sig: u32) -> bool {
    matches!(sig, 19..=22)
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SigAction {
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

/// `si_code` values.
pub const SI_USER: i32 = 0;
pub const SI_TIMER: i32 = -2;
pub const SI_TKILL: i32 = -6;

/// Where a pending signal came from, as its `siginfo_t` tells: the code,
/// then the two 32-bit words and the value of the union (the sender's pid
/// and uid, or a POSIX timer's id and overrun and its `sigev_value`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SigInfo {
    pub code: i32,
    pub first: u32,
    pub second: u32,
    pub value: u64,
}

impl SigInfo {
    /// The 128-byte `siginfo_t` of `sig`.
    pub fn encode(&self, sig: u32) -> [u8; 128] {
        let mut b = [0u8; 128];
        b[0..4].copy_from_slice(&sig.to_le_bytes());
        b[8..12].copy_from_slice(&self.code.to_le_bytes());
        b[16..20].copy_from_slice(&self.first.to_le_bytes());
        b[20..24].copy_from_slice(&self.second.to_le_bytes());
        b[24..32].copy_from_slice(&self.value.to_le_bytes());
        b
    }
}

/// A process's signal dispositions and the signals pending for it (its
/// threads share both, as Linux's `sighand_struct` and shared pending set),
/// with where each pending one came from.
#[derive(Clone, Debug)]
pub struct Signals {
    pub actions: [SigAction; NSIG],
    pub pending: u64,
    pub info: [SigInfo; NSIG],
}

impl Default for Signals {
    fn default() -> Self {
        Self {
            actions: [SigAction::default(); NSIG],
            pending: 0,
            info: [SigInfo::default(); NSIG],
        }
    }
}

/// A thread's own signal state: its mask and alternate stack.
#[derive(Clone, Debug)]
pub struct SigMask {
    pub mask: u64,
    pub altstack: [u8; 24],
    /// The mask to restore after a handler run from `rt_sigsuspend`.
    pub saved_mask: Option<u64>,
}

impl Default for SigMask {
    fn default() -> Self {
        let mut altstack = [0u8; 24];
        altstack[8..12].copy_from_slice(&SS_DISABLE.to_le_bytes());
        Self {
            mask: 0,
            altstack,
            saved_mask: None,
        }
    }
}

impl SigMask {
    /// After execve: the mask stays, the alternate stack goes.
    pub fn reset_for_exec(&mut self) {
        *self = Self {
            mask: self.mask,
            ..Self::default()
        };
    }
}

/// Whether the default action of `sig` is to ignore it.
pub fn ignored_by_default(sig: u32) -> bool {
    matches!(sig, 17 | 18 | 20 | 21 | 22 | 23 | 28) // CHLD CONT TSTP TTIN TTOU URG WINCH
}

impl Signals {
    /// After execve: handlers become the default, ignored stays ignored.
    pub fn reset_for_exec(&mut self) {
        for a in &mut self.actions {
            if a.handler != SIG_IGN {
                *a = SigAction::default();
            }
        }
    }

    /// The next signal deliverable to a thread with `mask`, taken off the
    /// pending set.
    pub fn take_next(&mut self, mask: u64) -> Option<u32> {
        let ready = self.pending & (!mask | UNBLOCKABLE);
        if ready == 0 {
            return None;
        }
        let sig = ready.trailing_zeros() + 1;
        self.pending &= !(1 << (sig - 1));
        Some(sig)
    }

    /// Takes where pending `sig` came from (the record goes with it).
    pub fn take_info(&mut self, sig: u32) -> SigInfo {
        self.info
            .get_mut(sig as usize - 1)
            .map(core::mem::take)
            .unwrap_or_default()
    }

    /// What happens when the process sends itself `sig`: `Some(sig)` if it dies.
    pub fn raise(&self, sig: u32) -> Option<u32> {
        let action = self.actions.get(sig as usize - 1)?;
        match action.handler {
            SIG_DFL if sig == SIGKILL || !ignored_by_default(sig) => Some(sig),
            _ if sig == SIGKILL => Some(sig),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_actions_terminate_or_ignore() {
        let mut s = Signals::default();
        assert_eq!(s.raise(6), Some(6));
        assert_eq!(s.raise(17), None);
        s.actions[5].handler = 0x401000;
        assert_eq!(s.raise(6), None);
        s.actions[14].handler = SIG_IGN;
        assert_eq!(s.raise(15), None);
        assert_eq!(s.raise(9), Some(9));
    }

    #[test]
    fn rt_sigframe_layout_matches_linux() {
        // struct ucontext: flags, link, stack_t (24), sigcontext (256), mask.
        assert_eq!(FRAME_UC + UC_MCONTEXT, 48);
        assert_eq!(FRAME_INFO, 312);
        assert_eq!(FRAME_SIZE, 440);
        let (frame, fp) = frame_layout(0x7fff_1000);
        assert_eq!(fp % 64, 0);
        assert!(fp + 512 <= 0x7fff_1000 - 128);
        assert!(frame + FRAME_SIZE <= fp);
        // Entered as if by `call`: rsp + 8 is 16-byte aligned.
        assert_eq!((frame + 8) % 16, 0);
    }

    #[test]
    fn mcontext_round_trips_and_keeps_privileged_flags() {
        let f = SyscallFrame {
            rax: 1,
            rdi: 2,
            rsi: 3,
            rdx: 4,
            r10: 5,
            r8: 6,
            r9: 7,
            rbx: 8,
            rbp: 9,
            r12: 10,
            r13: 11,
            r14: 12,
            r15: 13,
            rip: 0x401000,
            rflags: 0x246,
            rsp: 0x7000,
            rcx: 14,
            r11: 15,
        };
        let mut m = mcontext(&f);
        assert_eq!((m[MC_RCX], m[MC_R8 + 3]), (14, 15), "a fault's rcx and r11");
        assert_eq!(m[MC_RIP], 0x401000);
        assert_eq!(m[MC_R8 + 1], 7);
        m[MC_EFLAGS] |= 0x3000; // IOPL: not the handler's to change
                                // IF comes from the running context, not from the frame.
        let mut back = SyscallFrame {
            rflags: 0x202,
            ..SyscallFrame::default()
        };
        restore_mcontext(&mut back, &m);
        assert_eq!(back.rflags, 0x246);
        back.rflags = f.rflags;
        assert_eq!(format!("{back:?}"), format!("{f:?}"));
    }

    #[test]
    fn pending_signals_come_lowest_first_unless_masked() {
        let mut s = Signals {
            pending: (1 << 16) | (1 << 9) | (1 << 8),
            ..Signals::default()
        };
        let mut m = SigMask {
            mask: 1 << 9,
            ..SigMask::default()
        };
        assert_eq!(s.take_next(m.mask), Some(9));
        assert_eq!(s.take_next(m.mask), Some(17));
        assert_eq!(s.take_next(m.mask), None);
        m.mask = u64::MAX;
        s.pending = 1 << 8;
        assert_eq!(s.take_next(m.mask), Some(9), "SIGKILL cannot be blocked");
        s.actions[1].handler = 0x401000;
        s.actions[2].handler = SIG_IGN;
        s.reset_for_exec();
        m.reset_for_exec();
        assert_eq!(s.actions[1].handler, SIG_DFL);
        assert_eq!(s.actions[2].handler, SIG_IGN);
        assert_eq!(m.mask, u64::MAX);
    }
}
