//! POSIX interval timers (`timer_create` and friends): a process's timers,
//! their deadlines on the monotonic clock, and what an expiry sends. The
//! kernel fires them after every call and tick and while idle
//! (`crate::kernel::time`).

use alloc::vec::Vec;

use crate::errno::{Errno, Result};
use crate::task::process::Pid;

/// `sigev_notify` values.
pub const SIGEV_SIGNAL: i32 = 0;
pub const SIGEV_NONE: i32 = 1;
pub const SIGEV_THREAD_ID: i32 = 4;

const SIGALRM: u32 = 14;

/// Most timers one process may hold (Linux bounds them by RLIMIT_SIGPENDING).
pub const MAX_TIMERS: usize = 1024;

/// What an expiry does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notify {
    None,
    /// Send `signal` with `value` to the process, or to thread `tid`.
    Signal {
        signal: u32,
        tid: Option<Pid>,
        value: u64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PosixTimer {
    pub id: i32,
    pub clock: u32,
    pub notify: Notify,
    /// Next expiry on the monotonic clock, while armed.
    pub deadline: Option<u64>,
    /// Reload interval in ns (0: one-shot).
    pub interval: u64,
    /// Expiries folded into the signal last delivered (`timer_getoverrun`).
    pub overrun: u32,
    /// Expiries folded into the signal now pending.
    pub missed: u32,
}

/// One expiry to deliver: the signal, its target and its siginfo fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expiry {
    pub timer: i32,
    pub signal: u32,
    pub tid: Option<Pid>,
    pub value: u64,
}

/// A process's timers.
#[derive(Clone, Debug, Default)]
pub struct Timers {
    list: Vec<PosixTimer>,
}

impl Timers {
    /// A new, disarmed timer; returns its id (the lowest free, from 0).
    /// Without a `notify` (no sigevent) it sends SIGALRM to the process
    /// with the timer's id as the value, as Linux's default.
    pub fn create(&mut self, clock: u32, notify: Option<Notify>) -> Result<i32> {
        if self.list.len() >= MAX_TIMERS {
            return Err(Errno::EAGAIN);
        }
        let id = (0..)
            .find(|id| self.list.iter().all(|t| t.id != *id))
            .unwrap_or(0);
        let notify = notify.unwrap_or(Notify::Signal {
            signal: SIGALRM,
            tid: None,
            value: id as u64,
        });
        self.list.push(PosixTimer {
            id,
            clock,
            notify,
            deadline: None,
            interval: 0,
            overrun: 0,
            missed: 0,
        });
        Ok(id)
    }

    pub fn get(&self, id: i32) -> Result<&PosixTimer> {
        self.list.iter().find(|t| t.id == id).ok_or(Errno::EINVAL)
    }

    pub fn get_mut(&mut self, id: i32) -> Result<&mut PosixTimer> {
        self.list
            .iter_mut()
            .find(|t| t.id == id)
            .ok_or(Errno::EINVAL)
    }

    /// The timer's pending signal is being delivered: its overrun is what
    /// the signal folded in (the siginfo's `si_overrun`).
    pub fn delivered(&mut self, id: i32) -> u32 {
        match self.get_mut(id) {
            Ok(t) => {
                t.overrun = core::mem::take(&mut t.missed);
                t.overrun
            }
            Err(_) => 0,
        }
    }

    pub fn delete(&mut self, id: i32) -> Result<()> {
        let before = self.list.len();
        self.list.retain(|t| t.id != id);
        if self.list.len() == before {
            return Err(Errno::EINVAL);
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The earliest deadline of any armed timer.
    pub fn next_deadline(&self) -> Option<u64> {
        self.list.iter().filter_map(|t| t.deadline).min()
    }

    /// Expires every timer due by `now`: periodic ones reload (expiries
    /// missed in between count as overruns), one-shots disarm. `pending`
    /// says whether a timer's signal still waits undelivered, in which
    /// case the expiry only adds to its overrun, as on Linux.
    pub fn expire(&mut self, now: u64, pending: impl Fn(&Notify) -> bool) -> Vec<Expiry> {
        let mut out = Vec::new();
        for t in &mut self.list {
            let Some(deadline) = t.deadline.filter(|&d| d <= now) else {
                continue;
            };
            let mut count = 1u64;
            t.deadline = match (now - deadline).checked_div(t.interval) {
                None => None,
                Some(extra) => {
                    count += extra;
                    Some(deadline + (extra + 1) * t.interval)
                }
            };
            let Notify::Signal { signal, tid, value } = t.notify else {
                continue;
            };
            let count = u32::try_from(count).unwrap_or(u32::MAX);
            if pending(&t.notify) {
                t.missed = t.missed.saturating_add(count);
                continue;
            }
            // Expiries beyond the first fold into the signal sent now.
            t.missed = count - 1;
            out.push(Expiry {
                timer: t.id,
                signal,
                tid,
                value,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signal(sig: u32) -> Option<Notify> {
        Some(Notify::Signal {
            signal: sig,
            tid: None,
            value: 7,
        })
    }

    #[test]
    fn ids_are_the_lowest_free_and_the_default_value_is_the_id() {
        let mut t = Timers::default();
        assert_eq!(t.create(1, None), Ok(0));
        assert_eq!(t.create(1, Some(Notify::None)), Ok(1));
        t.delete(0).expect("delete");
        assert_eq!(t.delete(0), Err(Errno::EINVAL));
        assert_eq!(t.create(0, None), Ok(0));
        assert_eq!(
            t.get(0).expect("timer").notify,
            Notify::Signal {
                signal: SIGALRM,
                tid: None,
                value: 0
            }
        );
        // A value the caller gives is kept, whatever it is.
        let given = Notify::Signal {
            signal: 10,
            tid: None,
            value: u64::MAX,
        };
        let id = t.create(0, Some(given)).expect("create");
        assert_eq!(t.get(id).expect("timer").notify, given);
    }

    #[test]
    fn periodic_timers_reload_and_count_what_they_missed() {
        let mut t = Timers::default();
        let id = t.create(1, signal(14)).expect("create");
        let timer = t.get_mut(id).expect("timer");
        timer.deadline = Some(100);
        timer.interval = 10;
        assert!(t.expire(99, |_| false).is_empty());
        assert_eq!(t.expire(135, |_| false).len(), 1);
        assert_eq!(t.get(id).expect("timer").deadline, Some(140));
        // Still pending: the next expiries only add to what it folds in.
        assert!(t.expire(150, |_| true).is_empty());
        assert_eq!(
            t.delivered(id),
            5,
            "due at 110-150 beyond the one sent at 100"
        );
        assert_eq!(t.get(id).expect("timer").overrun, 5);
        assert_eq!(t.expire(160, |_| false).len(), 1);
        assert_eq!(t.delivered(id), 0);
        assert_eq!(t.next_deadline(), Some(170));
    }

    #[test]
    fn one_shots_disarm_and_none_sends_nothing() {
        let mut t = Timers::default();
        let a = t.create(1, signal(14)).expect("create");
        let b = t.create(1, Some(Notify::None)).expect("create");
        t.get_mut(a).expect("timer").deadline = Some(5);
        t.get_mut(b).expect("timer").deadline = Some(5);
        assert_eq!(t.expire(5, |_| false).len(), 1);
        assert_eq!(t.next_deadline(), None);
    }
}
