//! Signal delivery: sending a signal to a task (or ending it at once when
//! the default action is fatal), and taking pending signals on the way back
//! to user mode, onto a Linux `rt_sigframe` when a handler is set. The
//! per-task state and the rules are `crate::task::signal`.

use crate::arch::{FxArea, SyscallFrame};
use crate::errno::{Errno, Result};
use crate::kernel::Kernel;
use crate::task::process::ExitStatus;
use crate::task::signal::*;

/// What a handler's siginfo describes.
enum Origin {
    /// A fault: its si_code and address.
    Fault(i32, u64),
    /// A signal sent, with where it came from (all zero: unknown).
    Sent(SigInfo),
}

impl Kernel {
    /// Sends `sig` (0: just the existence check). A task not running now
    /// whose signal would take the default fatal action dies right away;
    /// anything else is delivered when it next returns to user mode.
    pub(crate) fn send(&mut self, pid: i32, sig: u32) {
        if sig == 0 {
            return;
        }
        let tgid = self.procs.tgid(pid);
        let handler = self
            .processes
            .get(&tgid)
            .map(|p| p.signals.actions[sig as usize - 1].handler);
        // The VM's init is a pid namespace's init: signals sent from inside
        // that it has no handler for (SIGKILL and SIGSTOP included) are
        // dropped, as Linux protects a container's pid 1.
        // A signal the target blocks is queued all the same (its handler
        // may change before it is unblocked), as Linux's sig_ignored says.
        let mask = self.procs.get(pid).map_or(0, |t| t.thread.sigmask.mask);
        let blocked = mask & (1 << (sig - 1)) & !UNBLOCKABLE != 0;
        if tgid == 1
            && !blocked
            && (sig == SIGKILL || is_stop(sig) || handler.is_none_or(|h| h == SIG_DFL))
        {
            return;
        }
        if !self.is_running(pid) {
            let fatal = handler.is_some_and(|handler| {
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

    /// Takes pending signals before returning to user mode: default actions
    /// now, or one handler frame.
    pub fn deliver_signals(&mut self, frame: &mut SyscallFrame, fx: &mut FxArea) {
        self.deliver_one(frame, fx);
        // A suspend mask outlives the call only as the handler's saved mask.
        if let Some(mask) = self.thread_mut().sigmask.saved_mask.take() {
            self.thread_mut().sigmask.mask = mask;
        }
    }

    fn deliver_one(&mut self, frame: &mut SyscallFrame, fx: &mut FxArea) {
        loop {
            let mask = self.thread().sigmask.mask;
            let Some(sig) = self.proc_mut().signals.take_next(mask) else {
                break;
            };
            let action = self.proc_mut().signals.actions[sig as usize - 1];
            let record = self.take_signal_info(sig);
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
            if let Some(nr) = self.thread_mut().blocked_nr.take() {
                if action.flags & SA_RESTART == 0 || !restartable(nr) {
                    // The handler returns to after the call, which failed.
                    frame.resume_after_syscall_at(frame.rip.wrapping_add(2));
                    frame.rax = Errno::EINTR.to_ret() as u64;
                    self.thread_mut().restart_deadline = None;
                    self.block_deadline = None;
                    self.block_stdin = false;
                    self.futexes.forget(self.cur);
                }
            }
            if self
                .push_frame(sig, &action, frame, fx, Origin::Sent(record))
                .is_err()
            {
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
        origin: Origin,
    ) -> Result<()> {
        if action.flags & SA_RESTORER == 0 {
            // No vDSO to return through: the handler could never return.
            return Err(Errno::EFAULT);
        }
        let alt = self.thread().sigmask.altstack;
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
        self.put_user(fp, &fx.0[..crate::arch::fpu_size()])?;
        let mut mc = mcontext(frame);
        mc[MC_OLDMASK] = self
            .thread()
            .sigmask
            .saved_mask
            .unwrap_or(self.thread().sigmask.mask);
        mc[MC_FPSTATE] = fp;
        let mut bytes = alloc::vec![0u8; FRAME_SIZE as usize];
        let mut put = |off: u64, v: &[u8]| {
            bytes[off as usize..off as usize + v.len()].copy_from_slice(v);
        };
        put(0, &action.restorer.to_le_bytes());
        put(FRAME_UC + UC_STACK, &alt);
        if on_alt {
            put(FRAME_UC + UC_STACK + 8, &SS_ONSTACK.to_le_bytes());
        }
        for (i, w) in mc.iter().enumerate() {
            put(FRAME_UC + UC_MCONTEXT + 8 * i as u64, &w.to_le_bytes());
        }
        let restore = self
            .thread_mut()
            .sigmask
            .saved_mask
            .take()
            .unwrap_or(self.thread_mut().sigmask.mask);
        put(FRAME_UC + UC_SIGMASK, &restore.to_le_bytes());
        put(FRAME_INFO, &(sig as i32).to_le_bytes());
        match origin {
            // A fault: its si_code and the faulting address.
            Origin::Fault(code, addr) => {
                put(FRAME_INFO + 8, &code.to_le_bytes());
                put(FRAME_INFO + 16, &addr.to_le_bytes());
            }
            // Who sent it, as recorded; else SI_USER from ourselves.
            Origin::Sent(record) => {
                let record = if record == SigInfo::default() {
                    SigInfo {
                        code: SI_USER,
                        first: self.cur as u32,
                        second: self.proc_mut().creds.uid,
                        value: 0,
                    }
                } else {
                    record
                };
                put(FRAME_INFO, &record.encode(sig));
            }
        }
        self.put_user(at, &bytes)?;

        let mut mask = self.thread_mut().sigmask.mask | action.mask;
        if action.flags & SA_NODEFER == 0 {
            mask |= 1 << (sig - 1);
        }
        self.thread_mut().sigmask.mask = mask & !UNBLOCKABLE;
        if action.flags & SA_RESETHAND != 0 {
            self.proc_mut().signals.actions[sig as usize - 1] = SigAction::default();
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
        frame.resume_after_syscall_at(action.handler);
        *fx = FxArea::initial();
        Ok(())
    }

    /// Sends the signals a terminal's line discipline raised (INTR, QUIT,
    /// SUSP typed on a pty's master) to the terminal's foreground group.
    pub fn send_terminal_signals(&mut self) {
        for (group, sig) in core::mem::take(&mut self.dev.ptys.signals) {
            for pid in self.procs.kill_targets(self.cur, -group) {
                self.send(pid, sig);
            }
        }
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
        let action = self.proc_mut().signals.actions[sig as usize - 1];
        let blocked = self.thread_mut().sigmask.mask & (1 << (sig - 1)) != 0;
        if blocked || action.handler == SIG_DFL || action.handler == SIG_IGN {
            return false;
        }
        self.push_frame(sig, &action, frame, fx, Origin::Fault(code, addr))
            .is_ok()
    }
}
