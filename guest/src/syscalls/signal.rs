//! Signals: dispositions, masks, pending sets, and delivery.
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

use crate::arch::{FxArea, SyscallFrame};
use crate::errno::{Errno, Result};
use crate::kernel::Kernel;
use crate::process::ExitStatus;

pub const NSIG: usize = 64;
const SIG_DFL: u64 = 0;
const SIG_IGN: u64 = 1;
const SIGKILL: u32 = 9;
pub const SIGPIPE: u32 = 13;
const SIGSTOP: u32 = 19;
const SA_SIGINFO: u64 = 4;
const SA_RESTART: u64 = 0x1000_0000;

/// Calls a handler with `SA_RESTART` restarts after interrupting them (the
/// others — sleeps, poll, select, epoll_wait, pause — always fail with EINTR).
fn restartable(nr: u64) -> bool {
    // read, write, readv, writev, wait4, fcntl (F_SETLKW), flock, futex,
    // waitid, openat (a FIFO), sendfile.
    matches!(
        nr,
        0 | 1 | 19 | 20 | 61 | 72 | 73 | 202 | 247 | 2 | 257 | 40
    )
}
const SA_ONSTACK: u64 = 0x0800_0000;
const SA_RESTORER: u64 = 0x0400_0000;
const SA_NODEFER: u64 = 0x4000_0000;
const SA_RESETHAND: u64 = 0x8000_0000;
const SS_ONSTACK: u32 = 1;
const SS_DISABLE: u32 = 2;
const UNBLOCKABLE: u64 = (1 << (SIGKILL - 1)) | (1 << (SIGSTOP - 1));

/// `struct rt_sigframe` (x86-64): the restorer address, `struct ucontext`
/// (flags, link, stack_t, sigcontext, mask), then `siginfo`.
pub const FRAME_UC: u64 = 8;
pub const UC_STACK: u64 = 16;
pub const UC_MCONTEXT: u64 = 40;
pub const UC_SIGMASK: u64 = UC_MCONTEXT + 256;
pub const FRAME_INFO: u64 = FRAME_UC + UC_SIGMASK + 8;
pub const FRAME_SIZE: u64 = FRAME_INFO + 128;
/// `sigcontext` slot of each register, in `u64`s from its start.
const MC_R8: usize = 0;
const MC_RDI: usize = 8;
const MC_RSI: usize = 9;
const MC_RBP: usize = 10;
const MC_RBX: usize = 11;
const MC_RDX: usize = 12;
const MC_RAX: usize = 13;
const MC_RCX: usize = 14;
const MC_RSP: usize = 15;
const MC_RIP: usize = 16;
const MC_EFLAGS: usize = 17;
const MC_CSGSFS: usize = 18;
const MC_OLDMASK: usize = 21;
const MC_FPSTATE: usize = 23;
/// Flags a signal handler may change on return (CF PF AF ZF SF TF DF OF AC).
const USER_FLAGS: u64 = 0x0004_0dd5;

/// The `sigcontext` words for `f` (fpstate pointer and mask filled in later).
pub fn mcontext(f: &SyscallFrame) -> [u64; 32] {
    let mut m = [0u64; 32];
    let gprs = [f.r8, f.r9, f.r10, 0, f.r12, f.r13, f.r14, f.r15];
    m[MC_R8..MC_R8 + 8].copy_from_slice(&gprs);
    m[MC_RDI] = f.rdi;
    m[MC_RSI] = f.rsi;
    m[MC_RBP] = f.rbp;
    m[MC_RBX] = f.rbx;
    m[MC_RDX] = f.rdx;
    m[MC_RAX] = f.rax;
    m[MC_RCX] = f.rip;
    m[MC_RSP] = f.rsp;
    m[MC_RIP] = f.rip;
    m[MC_EFLAGS] = f.rflags;
    // cs = 0x2b, gs = fs = 0, ss = 0x23.
    m[MC_CSGSFS] = 0x2b | (0x23 << 48);
    m
}

/// The registers a `sigcontext` restores into `f` (rcx and r11 are the
/// return address and flags in this kernel's return path).
pub fn restore_mcontext(f: &mut SyscallFrame, m: &[u64; 32]) {
    f.r8 = m[MC_R8];
    f.r9 = m[MC_R8 + 1];
    f.r10 = m[MC_R8 + 2];
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
    f.rsp = m[MC_RSP];
    f.rip = m[MC_RIP];
    f.rflags = (f.rflags & !USER_FLAGS) | (m[MC_EFLAGS] & USER_FLAGS);
}

/// Where the frame goes below `sp`: (frame address, fpstate address). The
/// red zone is skipped, the fxsave image 64-byte aligned, and the handler
/// entered as if called (`rsp + 8` 16-byte aligned).
pub fn frame_layout(sp: u64) -> (u64, u64) {
    let fp = (sp - 128 - 512) & !63;
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

#[derive(Clone, Debug)]
pub struct Signals {
    pub actions: [SigAction; NSIG],
    pub mask: u64,
    pub altstack: [u8; 24],
    pub pending: u64,
    /// The mask to restore after a handler run from `rt_sigsuspend`.
    pub saved_mask: Option<u64>,
}

impl Default for Signals {
    fn default() -> Self {
        let mut altstack = [0u8; 24];
        altstack[8..12].copy_from_slice(&2u32.to_le_bytes()); // SS_DISABLE
        Self {
            actions: [SigAction::default(); NSIG],
            mask: 0,
            altstack,
            pending: 0,
            saved_mask: None,
        }
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
        *self = Self {
            actions: self.actions,
            mask: self.mask,
            pending: self.pending,
            ..Self::default()
        };
    }

    /// The next deliverable signal, taken off the pending set.
    pub fn take_next(&mut self) -> Option<u32> {
        let ready = self.pending & (!self.mask | UNBLOCKABLE);
        if ready == 0 {
            return None;
        }
        let sig = ready.trailing_zeros() + 1;
        self.pending &= !(1 << (sig - 1));
        Some(sig)
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

impl Kernel {
    pub fn sys_rt_sigaction(&mut self, sig: u32, act: u64, old: u64, size: u64) -> Result<u64> {
        if size != 8 || sig == 0 || sig as usize > NSIG {
            return Err(Errno::EINVAL);
        }
        let slot = sig as usize - 1;
        if old != 0 {
            let a = self.signals.actions[slot];
            let mut b = [0u8; 32];
            for (i, v) in [a.handler, a.flags, a.restorer, a.mask].iter().enumerate() {
                b[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
            }
            self.put_user(old, &b)?;
        }
        if act != 0 {
            if sig == SIGKILL || sig == SIGSTOP {
                return Err(Errno::EINVAL);
            }
            let b = self.user_buf(act, 32)?;
            let w = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
            self.signals.actions[slot] = SigAction {
                handler: w(0),
                flags: w(1),
                restorer: w(2),
                mask: w(3),
            };
        }
        Ok(0)
    }

    pub fn sys_rt_sigprocmask(&mut self, how: u32, set: u64, old: u64, size: u64) -> Result<u64> {
        if size != 8 {
            return Err(Errno::EINVAL);
        }
        let previous = self.signals.mask;
        if set != 0 {
            let s = self.get_u64(set)?;
            let unblockable = UNBLOCKABLE;
            self.signals.mask = match how {
                0 => previous | s,
                1 => previous & !s,
                2 => s,
                _ => return Err(Errno::EINVAL),
            } & !unblockable;
        }
        if old != 0 {
            self.put_user(old, &previous.to_le_bytes())?;
        }
        Ok(0)
    }

    pub fn sys_rt_sigpending(&mut self, set: u64) -> Result<u64> {
        let pending = self.signals.pending & self.signals.mask;
        self.put_user(set, &pending.to_le_bytes())?;
        Ok(0)
    }

    pub fn sys_sigaltstack(&mut self, new: u64, old: u64) -> Result<u64> {
        if old != 0 {
            let current = self.signals.altstack;
            self.put_user(old, &current)?;
        }
        if new != 0 {
            let b = self.user_buf(new, 24)?;
            self.signals.altstack.copy_from_slice(b);
        }
        Ok(0)
    }

    pub fn sys_kill(&mut self, pid: i32, sig: u32) -> Result<u64> {
        if sig as usize > NSIG {
            return Err(Errno::EINVAL);
        }
        let targets = self.procs.kill_targets(self.cur, pid);
        if targets.is_empty() {
            return Err(Errno::ESRCH);
        }
        for t in targets {
            self.send(t, sig);
        }
        Ok(0)
    }

    pub fn sys_tkill(&mut self, tid: i32, sig: u32) -> Result<u64> {
        if tid <= 0 || sig as usize > NSIG {
            return Err(Errno::EINVAL);
        }
        let alive = self
            .procs
            .get(tid)
            .is_some_and(|t| !matches!(t.state, crate::process::State::Zombie(_)));
        if !alive {
            return Err(Errno::ESRCH);
        }
        self.send(tid, sig);
        Ok(0)
    }

    /// Sends `sig` (0: just the existence check). A parked process whose
    /// signal would take the default fatal action dies right away; anything
    /// else is delivered when it next returns to user mode.
    pub(crate) fn send(&mut self, pid: i32, sig: u32) {
        if sig == 0 {
            return;
        }
        // The VM's init is a pid namespace's init: signals sent from inside
        // that it has no handler for (SIGKILL and SIGSTOP included) are
        // dropped, as Linux protects a container's pid 1.
        let loaded = self.cur_is_loaded();
        let tgid = self.procs.tgid(pid);
        if tgid == 1 {
            let own = loaded && tgid == self.procs.tgid(self.cur);
            let handled = own
                && sig != SIGKILL
                && !is_stop(sig)
                && self.signals.actions[sig as usize - 1].handler != SIG_DFL;
            let parked_handled = !own
                && sig != SIGKILL
                && !is_stop(sig)
                && self
                    .procs
                    .group(tgid)
                    .into_iter()
                    .filter_map(|p| self.procs.get(p).and_then(|t| t.parked.as_ref()))
                    .find(|p| p.shared)
                    .is_some_and(|p| p.signals.actions[sig as usize - 1].handler != SIG_DFL);
            if !handled && !parked_handled {
                return;
            }
        }
        if pid != self.cur || !loaded {
            // A thread's signal state is its group's: in the kernel when a
            // sibling runs, else parked with whichever task holds it.
            let tgid = self.procs.tgid(pid);
            let signals = if loaded && tgid == self.procs.tgid(self.cur) {
                Some(&self.signals)
            } else {
                self.parked_shared(tgid).map(|p| &p.signals)
            };
            let fatal = signals.is_some_and(|signals| {
                let handler = signals.actions[sig as usize - 1].handler;
                let blocked = signals.mask & (1 << (sig - 1)) & !UNBLOCKABLE != 0;
                sig == SIGKILL
                    || (!blocked && handler == SIG_DFL && !ignored_by_default(sig) && !is_stop(sig))
            });
            if fatal {
                self.terminate(
                    pid,
                    ExitStatus::Signaled {
                        signal: sig,
                        core: false,
                    },
                );
                return;
            }
        }
        self.post_signal(pid, sig);
    }

    /// `rt_sigsuspend`: waits with `mask` in place until a signal is
    /// delivered; the handler's frame restores the original mask.
    pub fn sys_rt_sigsuspend(&mut self, mask: u64, size: u64) -> Result<u64> {
        if size != 8 {
            return Err(Errno::EINVAL);
        }
        let mask = self.get_u64(mask)? & !UNBLOCKABLE;
        if self.signals.pending & !mask != 0 {
            let old = self.signals.mask;
            self.signals.saved_mask = Some(old);
            self.signals.mask = mask;
            return Err(Errno::EINTR);
        }
        Err(Errno::EBLOCK)
    }

    /// `pause`: blocks until a signal is pending, then EINTR.
    pub fn sys_pause(&mut self) -> Result<u64> {
        if self.signals.pending & (!self.signals.mask | UNBLOCKABLE) != 0 {
            return Err(Errno::EINTR);
        }
        Err(Errno::EBLOCK)
    }

    /// Takes pending signals before returning to user mode: default actions
    /// now, or one handler frame.
    pub fn deliver_signals(&mut self, frame: &mut SyscallFrame, fx: &mut FxArea) {
        self.deliver_one(frame, fx);
        // A suspend mask outlives the call only as the handler's saved mask.
        if let Some(mask) = self.signals.saved_mask.take() {
            self.signals.mask = mask;
        }
    }

    fn deliver_one(&mut self, frame: &mut SyscallFrame, fx: &mut FxArea) {
        while let Some(sig) = self.signals.take_next() {
            let action = self.signals.actions[sig as usize - 1];
            if sig == SIGKILL || action.handler == SIG_DFL {
                if sig != SIGKILL && (ignored_by_default(sig) || is_stop(sig)) {
                    continue;
                }
                let cur = self.cur;
                self.terminate(
                    cur,
                    ExitStatus::Signaled {
                        signal: sig,
                        core: false,
                    },
                );
                return;
            }
            if action.handler == SIG_IGN {
                continue;
            }
            if let Some(nr) = self.blocked_nr.take() {
                if action.flags & SA_RESTART == 0 || !restartable(nr) {
                    // The handler returns to after the call, which failed.
                    frame.rip = frame.rip.wrapping_add(2);
                    frame.rax = Errno::EINTR.to_ret() as u64;
                    self.restart_deadline = None;
                    self.block_deadline = None;
                    self.block_stdin = false;
                    self.futexes.forget(self.cur);
                }
            }
            if self.push_frame(sig, &action, frame, fx, None).is_err() {
                let cur = self.cur;
                self.terminate(
                    cur,
                    ExitStatus::Signaled {
                        signal: 11,
                        core: false,
                    },
                );
            }
            return;
        }
    }

    fn push_frame(
        &mut self,
        sig: u32,
        action: &SigAction,
        frame: &mut SyscallFrame,
        fx: &mut FxArea,
        fault: Option<(i32, u64)>,
    ) -> Result<()> {
        if action.flags & SA_RESTORER == 0 {
            // No vDSO to return through: the handler could never return.
            return Err(Errno::EFAULT);
        }
        let alt = &self.signals.altstack;
        let alt_sp = u64::from_le_bytes(alt[0..8].try_into().unwrap_or([0; 8]));
        let alt_flags = u32::from_le_bytes(alt[8..12].try_into().unwrap_or([0; 4]));
        let alt_size = u64::from_le_bytes(alt[16..24].try_into().unwrap_or([0; 8]));
        let on_alt = (alt_sp..alt_sp + alt_size).contains(&frame.rsp);
        let sp = if action.flags & SA_ONSTACK != 0 && alt_flags & SS_DISABLE == 0 && !on_alt {
            alt_sp + alt_size + 128
        } else {
            frame.rsp
        };
        let (at, fp) = frame_layout(sp);
        self.put_user(fp, &fx.0)?;
        let mut mc = mcontext(frame);
        mc[MC_OLDMASK] = self.signals.saved_mask.unwrap_or(self.signals.mask);
        mc[MC_FPSTATE] = fp;
        let mut bytes = alloc::vec![0u8; FRAME_SIZE as usize];
        let mut put = |off: u64, v: &[u8]| {
            bytes[off as usize..off as usize + v.len()].copy_from_slice(v);
        };
        put(0, &action.restorer.to_le_bytes());
        put(FRAME_UC + UC_STACK, alt);
        if on_alt {
            put(FRAME_UC + UC_STACK + 8, &SS_ONSTACK.to_le_bytes());
        }
        for (i, w) in mc.iter().enumerate() {
            put(FRAME_UC + UC_MCONTEXT + 8 * i as u64, &w.to_le_bytes());
        }
        let restore = self.signals.saved_mask.take().unwrap_or(self.signals.mask);
        put(FRAME_UC + UC_SIGMASK, &restore.to_le_bytes());
        put(FRAME_INFO, &(sig as i32).to_le_bytes());
        match fault {
            // A fault: its si_code and the faulting address.
            Some((code, addr)) => {
                put(FRAME_INFO + 8, &code.to_le_bytes());
                put(FRAME_INFO + 16, &addr.to_le_bytes());
            }
            // si_code SI_USER, si_pid and si_uid of the sender (unknown: ours).
            None => {
                put(FRAME_INFO + 16, &self.cur.to_le_bytes());
                put(FRAME_INFO + 20, &self.creds.uid.to_le_bytes());
            }
        }
        self.put_user(at, &bytes)?;

        let mut mask = self.signals.mask | action.mask;
        if action.flags & SA_NODEFER == 0 {
            mask |= 1 << (sig - 1);
        }
        self.signals.mask = mask & !UNBLOCKABLE;
        if action.flags & SA_RESETHAND != 0 {
            self.signals.actions[sig as usize - 1] = SigAction::default();
        }
        frame.rip = action.handler;
        frame.rsp = at;
        frame.rdi = u64::from(sig);
        frame.rsi = if action.flags & SA_SIGINFO != 0 {
            at + FRAME_INFO
        } else {
            0
        };
        frame.rdx = at + FRAME_UC;
        frame.rax = 0;
        frame.rflags &= !0x500; // TF, DF
        *fx = FxArea::initial();
        Ok(())
    }

    /// Delivers the signals the host sent the VM (see
    /// `capsa_abi::HOST_SIGNALS_ADDR`) to the first process, which, as a
    /// container's pid 1, takes only those it has handlers for.
    pub fn take_host_signals(&mut self) {
        #[cfg(not(test))]
        {
            use core::sync::atomic::{AtomicU64, Ordering};
            // SAFETY: the word is 8-byte aligned in the boot data page,
            // mapped in every address space, and only accessed atomically.
            let word = unsafe { &*(capsa_abi::HOST_SIGNALS_ADDR as *const AtomicU64) };
            if word.load(Ordering::Relaxed) == 0 {
                return;
            }
            let bits = word.swap(0, Ordering::AcqRel);
            if self.debug_enabled() {
                crate::arch::debug(
                    alloc::format!("capsa guest: host signals {bits:#x}").as_bytes(),
                );
            }
            for sig in 1..=NSIG as u32 {
                if bits & (1 << (sig - 1)) != 0 && self.procs.get(1).is_some() {
                    self.send(1, sig);
                }
            }
        }
    }

    /// A fault raised `sig` in the running process: runs its handler (true)
    /// when it has one and the signal is not blocked; otherwise, as Linux
    /// forces, the default action applies and the caller ends the process.
    pub fn deliver_fault_signal(
        &mut self,
        sig: u32,
        code: i32,
        addr: u64,
        frame: &mut SyscallFrame,
        fx: &mut FxArea,
    ) -> bool {
        let action = self.signals.actions[sig as usize - 1];
        let blocked = self.signals.mask & (1 << (sig - 1)) != 0;
        if blocked || action.handler == SIG_DFL || action.handler == SIG_IGN {
            return false;
        }
        self.push_frame(sig, &action, frame, fx, Some((code, addr)))
            .is_ok()
    }

    /// `rt_sigreturn`: back to the context saved in the frame the handler
    /// was entered on (its `ret` popped the restorer address).
    pub fn sys_rt_sigreturn(&mut self, frame: &mut SyscallFrame) -> Result<u64> {
        let uc = frame.rsp;
        let raw = self.user_buf(uc + UC_MCONTEXT, 256)?;
        let mut mc = [0u64; 32];
        for (i, w) in raw.chunks_exact(8).enumerate() {
            mc[i] = u64::from_le_bytes(w.try_into().unwrap_or([0; 8]));
        }
        let mask = self.get_u64(uc + UC_SIGMASK)?;
        let fp = mc[MC_FPSTATE];
        if fp != 0 {
            let image = self.user_buf(fp, 512)?;
            // SAFETY: `frame` is the trampoline's (sys_rt_sigreturn is only
            // reached from `dispatch`), so its fxsave image is below it.
            let fx = unsafe { crate::sched::fx_of(frame) };
            fx.0.copy_from_slice(image);
            // Reserved MXCSR bits would make fxrstor fault.
            let mxcsr = u32::from_le_bytes(fx.0[24..28].try_into().unwrap_or([0; 4])) & 0xffff;
            fx.0[24..28].copy_from_slice(&mxcsr.to_le_bytes());
        }
        self.signals.mask = mask & !UNBLOCKABLE;
        restore_mcontext(frame, &mc);
        Ok(frame.rax)
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
        };
        let mut m = mcontext(&f);
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
            mask: 1 << 9,
            ..Signals::default()
        };
        assert_eq!(s.take_next(), Some(9));
        assert_eq!(s.take_next(), Some(17));
        assert_eq!(s.take_next(), None);
        s.mask = u64::MAX;
        s.pending = 1 << 8;
        assert_eq!(s.take_next(), Some(9), "SIGKILL cannot be blocked");
        s.actions[1].handler = 0x401000;
        s.actions[2].handler = SIG_IGN;
        s.reset_for_exec();
        assert_eq!(s.actions[1].handler, SIG_DFL);
        assert_eq!(s.actions[2].handler, SIG_IGN);
        assert_eq!(s.mask, u64::MAX);
    }
}
