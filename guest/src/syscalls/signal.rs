//! Signal system calls: dispositions, masks, pending sets, sending,
//! waiting and returning from handlers (the state is `crate::task::signal`,
//! delivery `crate::kernel::signal`).

use crate::arch::SyscallFrame;
use crate::errno::{Errno, Result};
use crate::kernel::Kernel;
use crate::task::signal::*;

impl Kernel {
    pub fn sys_rt_sigaction(&mut self, sig: u32, act: u64, old: u64, size: u64) -> Result<u64> {
        if size != 8 || sig == 0 || sig as usize > NSIG {
            return Err(Errno::EINVAL);
        }
        let slot = sig as usize - 1;
        if old != 0 {
            let a = self.proc_mut().signals.actions[slot];
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
            self.proc_mut().signals.actions[slot] = SigAction {
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
        let previous = self.thread_mut().sigmask.mask;
        if set != 0 {
            let s = self.get_u64(set)?;
            let unblockable = UNBLOCKABLE;
            self.thread_mut().sigmask.mask = match how {
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
        let pending = self.proc_mut().signals.pending & self.thread_mut().sigmask.mask;
        self.put_user(set, &pending.to_le_bytes())?;
        Ok(0)
    }

    pub fn sys_sigaltstack(&mut self, new: u64, old: u64) -> Result<u64> {
        if old != 0 {
            let current = self.thread_mut().sigmask.altstack;
            self.put_user(old, &current)?;
        }
        if new != 0 {
            let b = self.user_buf(new, 24)?;
            self.thread_mut().sigmask.altstack.copy_from_slice(b);
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
            self.note_sender(t, sig, SI_USER);
            self.send(t, sig);
        }
        Ok(0)
    }

    /// Records the caller as the sender of `sig` to `target`'s process,
    /// for the siginfo its handler or sigwaitinfo gets.
    fn note_sender(&mut self, target: i32, sig: u32, code: i32) {
        if sig == 0 || sig as usize > NSIG {
            return;
        }
        let record = SigInfo {
            code,
            first: self.procs.tgid(self.cur) as u32,
            second: self.proc().creds.uid,
            value: 0,
        };
        let tgid = self.procs.tgid(target);
        if let Some(p) = self.processes.get_mut(&tgid) {
            p.signals.info[sig as usize - 1] = record;
        }
    }

    pub fn sys_tkill(&mut self, tid: i32, sig: u32) -> Result<u64> {
        if tid <= 0 || sig as usize > NSIG {
            return Err(Errno::EINVAL);
        }
        let alive = self
            .procs
            .get(tid)
            .is_some_and(|t| !matches!(t.state, crate::task::process::State::Zombie(_)));
        if !alive {
            return Err(Errno::ESRCH);
        }
        self.note_sender(tid, sig, SI_TKILL);
        self.send(tid, sig);
        Ok(0)
    }

    /// `rt_sigsuspend`: waits with `mask` in place until a signal is
    /// delivered; the handler's frame restores the original mask.
    pub fn sys_rt_sigsuspend(&mut self, mask: u64, size: u64) -> Result<u64> {
        if size != 8 {
            return Err(Errno::EINVAL);
        }
        let mask = self.get_u64(mask)? & !UNBLOCKABLE;
        if self.proc_mut().signals.pending & !mask != 0 {
            let old = self.thread_mut().sigmask.mask;
            self.thread_mut().sigmask.saved_mask = Some(old);
            self.thread_mut().sigmask.mask = mask;
            return Err(Errno::EINTR);
        }
        Err(Errno::EBLOCK)
    }

    /// `rt_sigtimedwait` (and so sigwait and sigwaitinfo): takes a pending
    /// signal of `set`, with its siginfo, or waits for one, up to
    /// `timeout` if given (then EAGAIN). A handled signal outside the set
    /// interrupts the wait (EINTR).
    pub fn sys_rt_sigtimedwait(
        &mut self,
        set: u64,
        info: u64,
        timeout: u64,
        size: u64,
    ) -> Result<u64> {
        if size != 8 {
            return Err(Errno::EINVAL);
        }
        let want = self.get_u64(set)? & !UNBLOCKABLE;
        let ready = self.proc().signals.pending & want;
        if ready != 0 {
            let sig = ready.trailing_zeros() + 1;
            self.proc_mut().signals.pending &= !(1 << (sig - 1));
            let record = self.take_signal_info(sig);
            if info != 0 {
                self.put_user(info, &record.encode(sig))?;
            }
            return Ok(u64::from(sig));
        }
        if timeout != 0 {
            let ns = self.timespec_ns(timeout)?;
            let now = self.clock.monotonic_ns();
            let until = *self
                .thread_mut()
                .restart_deadline
                .get_or_insert(now.saturating_add(ns));
            if now >= until {
                return Err(Errno::EAGAIN);
            }
            self.block_deadline = Some(until);
        }
        Err(Errno::EBLOCK)
    }

    /// `pause`: blocks until a signal is pending, then EINTR.
    pub fn sys_pause(&mut self) -> Result<u64> {
        if self.proc_mut().signals.pending & (!self.thread_mut().sigmask.mask | UNBLOCKABLE) != 0 {
            return Err(Errno::EINTR);
        }
        Err(Errno::EBLOCK)
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
            let size = crate::arch::fpu_size();
            let image = self.user_buf(fp, size)?;
            // SAFETY: `frame` is the trampoline's (sys_rt_sigreturn is only
            // reached from `dispatch`), so its FPU image is below it.
            let fx = unsafe { crate::kernel::sched::fx_of(frame) };
            fx.0[..size].copy_from_slice(image);
            fx.sanitize();
        }
        self.thread_mut().sigmask.mask = mask & !UNBLOCKABLE;
        restore_mcontext(frame, &mc);
        Ok(frame.rax)
    }
}
