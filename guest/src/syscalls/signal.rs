//! Signal state. One thread, no asynchronous signal sources inside the VM:
//! dispositions and the mask are bookkeeping, and a signal the process
//! sends itself takes its default action (terminate or ignore). A handled
//! signal is not delivered (no signal frames yet); `abort()` still ends the
//! process because it resets SIGABRT to the default and raises it again.

use crate::errno::{Errno, Result};
use crate::kernel::{self, Kernel};

pub const NSIG: usize = 64;
const SIG_DFL: u64 = 0;
#[cfg(test)]
const SIG_IGN: u64 = 1;
const SIGKILL: u32 = 9;
const SIGSTOP: u32 = 19;

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
}

impl Default for Signals {
    fn default() -> Self {
        let mut altstack = [0u8; 24];
        altstack[8..12].copy_from_slice(&2u32.to_le_bytes()); // SS_DISABLE
        Self {
            actions: [SigAction::default(); NSIG],
            mask: 0,
            altstack,
        }
    }
}

/// Whether the default action of `sig` is to ignore it.
pub fn ignored_by_default(sig: u32) -> bool {
    matches!(sig, 17 | 18 | 20 | 21 | 22 | 23 | 28) // CHLD CONT TSTP TTIN TTOU URG WINCH
}

impl Signals {
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
            let unblockable = (1u64 << (SIGKILL - 1)) | (1u64 << (SIGSTOP - 1));
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
        self.put_user(set, &0u64.to_le_bytes())?;
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

    fn signal_self(&mut self, sig: u32) -> Result<u64> {
        if sig == 0 {
            return Ok(0);
        }
        if sig as usize > NSIG {
            return Err(Errno::EINVAL);
        }
        if let Some(fatal) = self.signals.raise(sig) {
            kernel::exit_signal(fatal);
        }
        Ok(0)
    }

    pub fn sys_kill(&mut self, pid: i32, sig: u32) -> Result<u64> {
        match pid {
            // Ourselves, our process group, or "everyone we may signal": all just us.
            -1..=1 => self.signal_self(sig),
            _ => Err(Errno::ESRCH),
        }
    }

    pub fn sys_tkill(&mut self, tid: i32, sig: u32) -> Result<u64> {
        if tid != 1 {
            return Err(Errno::ESRCH);
        }
        self.signal_self(sig)
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
}
