//! CPU-time accounting for the one vCPU, and Linux's CPU-clock ids.
//!
//! # Where time goes
//! The vCPU is always in one of three states: running a task in user mode,
//! running the kernel for a task (its system call, its fault, switching it
//! in or out), or idle (nothing runnable: the guest waits in the VMM). The
//! [`Meter`] reads the vCPU's run clock at each transition (the TSC less
//! the host's steal time, `Clock::cpu_ticks`: a busy host preempting the
//! vCPU is not the task's time) and charges the time since the previous one: user time at system-call and fault entry, system time
//! when the kernel returns to user mode or switches the task out, nobody's
//! while idle. Charges go to the running task in the meter itself and reach
//! the task (`crate::task::process::Task::cpu`) when it stops running, so a
//! system call costs two readings of the run clock (`rdtsc` and the steal
//! counter, a memory read) and two additions, no table lookup.
//!
//! Measured on this project's PVM machines: `rdtsc` at CPL3 takes ~10 ns
//! (it does not exit to the hypervisor), against ~3.8 µs for the cheapest
//! system call round trip, so the split is measured on every call (~0.5%).
//! The CPL0 half of the syscall trampoline (~3.5 µs emulated here, ~0.1 µs
//! on hardware KVM) runs before the first reading and counts as user time.
//!
//! Times are kept in TSC ticks and converted to nanoseconds when read
//! (`crate::kernel::time::Clock::ticks_ns`).
//!
//! Plain data, unit-tested on the host.

use core::ops::{Add, AddAssign};

use crate::task::process::Pid;

/// CPU time, in TSC ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Times {
    pub user: u64,
    pub sys: u64,
}

impl Times {
    pub fn total(self) -> u64 {
        self.user.saturating_add(self.sys)
    }
}

impl Add for Times {
    type Output = Times;
    fn add(self, o: Times) -> Times {
        Times {
            user: self.user.saturating_add(o.user),
            sys: self.sys.saturating_add(o.sys),
        }
    }
}

impl AddAssign for Times {
    fn add_assign(&mut self, o: Times) {
        *self = *self + o;
    }
}

/// The vCPU's time since the last transition, charged to the running task.
#[derive(Debug)]
pub struct Meter {
    /// TSC at the last transition.
    mark: u64,
    /// A task is on the vCPU (false while idle between two tasks).
    running: bool,
    /// The running task's time not yet added to its `Task`.
    pending: Times,
    /// Ticks nobody ran.
    idle: u64,
}

impl Meter {
    /// Starts with the first task running in the kernel (being loaded).
    pub fn new(now: u64) -> Self {
        Self {
            mark: now,
            running: true,
            pending: Times::default(),
            idle: 0,
        }
    }

    fn since(&mut self, now: u64) -> u64 {
        let d = now.saturating_sub(self.mark);
        self.mark = now;
        d
    }

    /// The running task enters the kernel (system call, fault): the time
    /// since the last transition was its user time.
    pub fn enter_kernel(&mut self, now: u64) {
        if self.running {
            let d = self.since(now);
            self.pending.user = self.pending.user.saturating_add(d);
        }
    }

    /// The kernel returns to the running task's user code: system time.
    pub fn leave_kernel(&mut self, now: u64) {
        if self.running {
            let d = self.since(now);
            self.pending.sys = self.pending.sys.saturating_add(d);
        }
    }

    /// The running task stops (switched out, or gone): returns its time
    /// not yet taken, system time up to `now` included. Until [`start`],
    /// the vCPU is idle. Nothing when no task was running.
    ///
    /// [`start`]: Meter::start
    pub fn stop(&mut self, now: u64) -> Times {
        if !self.running {
            return Times::default();
        }
        self.leave_kernel(now);
        self.running = false;
        core::mem::take(&mut self.pending)
    }

    /// A task is switched in (in the kernel): the time since [`stop`] was idle.
    ///
    /// [`stop`]: Meter::stop
    pub fn start(&mut self, now: u64) {
        if !self.running {
            let d = self.since(now);
            self.idle = self.idle.saturating_add(d);
            self.running = true;
        }
    }

    /// The running task's time not yet taken, as read from inside the
    /// kernel at `now` (the current stretch is system time).
    pub fn unflushed(&self, now: u64) -> Times {
        if !self.running {
            return Times::default();
        }
        self.pending
            + Times {
                user: 0,
                sys: now.saturating_sub(self.mark),
            }
    }

    /// Ticks the vCPU spent idle up to `now`.
    pub fn idle(&self, now: u64) -> u64 {
        let current = if self.running {
            0
        } else {
            now.saturating_sub(self.mark)
        };
        self.idle.saturating_add(current)
    }
}

/// `CLOCK_PROCESS_CPUTIME_ID` and `CLOCK_THREAD_CPUTIME_ID`.
pub const CLOCK_PROCESS_CPUTIME_ID: i32 = 2;
pub const CLOCK_THREAD_CPUTIME_ID: i32 = 3;

/// Which CPU time a CPU clock reads (Linux's `CPUCLOCK_WHICH`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    /// User and system time.
    Prof,
    /// User time only.
    Virt,
    /// Scheduler runtime: user and system time here, in nanoseconds.
    Sched,
}

/// A CPU-time clock id, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuClock {
    /// 0: the caller (its thread, or its process).
    pub pid: Pid,
    pub thread: bool,
    pub which: Which,
}

impl CpuClock {
    /// Decodes `CLOCK_PROCESS_CPUTIME_ID`, `CLOCK_THREAD_CPUTIME_ID` and the
    /// ids `clock_getcpuclockid`/`pthread_getcpuclockid` make, Linux's
    /// `MAKE_PROCESS_CPUCLOCK`/`MAKE_THREAD_CPUCLOCK`:
    /// `(~pid << 3) | (thread ? 4 : 0) | which`. None for any other clock
    /// (`which` 3 is no CPU clock: with bit 2 clear it is a clock fd).
    pub fn decode(clock: i32) -> Option<CpuClock> {
        match clock {
            CLOCK_PROCESS_CPUTIME_ID | CLOCK_THREAD_CPUTIME_ID => {
                return Some(CpuClock {
                    pid: 0,
                    thread: clock == CLOCK_THREAD_CPUTIME_ID,
                    which: Which::Sched,
                })
            }
            c if c >= 0 => return None,
            _ => {}
        }
        let which = match clock & 3 {
            0 => Which::Prof,
            1 => Which::Virt,
            2 => Which::Sched,
            _ => return None,
        };
        Some(CpuClock {
            pid: !(clock >> 3),
            thread: clock & 4 != 0,
            which,
        })
    }

    /// The ticks this clock reads of `t`.
    pub fn read(self, t: Times) -> u64 {
        match self.which {
            Which::Virt => t.user,
            Which::Prof | Which::Sched => t.total(),
        }
    }
}

/// A `struct rusage` with the times filled in (the other fields are zero).
pub fn rusage(user_ns: u64, sys_ns: u64) -> [u8; 144] {
    let mut r = [0u8; 144];
    r[..16].copy_from_slice(&timeval(user_ns));
    r[16..32].copy_from_slice(&timeval(sys_ns));
    r
}

/// A `struct timeval`, microseconds truncated as Linux's rusage does.
pub fn timeval(ns: u64) -> [u8; 16] {
    let mut t = [0u8; 16];
    t[..8].copy_from_slice(&(ns / 1_000_000_000).to_le_bytes());
    t[8..].copy_from_slice(&(ns % 1_000_000_000 / 1000).to_le_bytes());
    t
}

/// Clock ticks (USER_HZ, what `times` and `/proc/<pid>/stat` count in).
pub const USER_HZ: u64 = 100;

pub fn clock_ticks(ns: u64) -> u64 {
    ns / (1_000_000_000 / USER_HZ)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_meter_splits_user_system_and_idle_time() {
        let mut m = Meter::new(100);
        m.leave_kernel(110); // loading the program: 10 system
        m.enter_kernel(150); // 40 user
        assert_eq!(m.unflushed(155), Times { user: 40, sys: 15 });
        m.leave_kernel(160); // 10 system
        m.enter_kernel(200); // 40 user
        let first = m.stop(205); // switched out after 5 more of system time
        assert_eq!(first, Times { user: 80, sys: 25 });
        // Idle: nothing is charged, even if a stray transition comes.
        m.leave_kernel(300);
        assert_eq!(m.stop(310), Times::default());
        assert_eq!(m.unflushed(400), Times::default());
        assert_eq!(m.idle(400), 195);
        m.start(405);
        assert_eq!(m.idle(1000), 200);
        m.leave_kernel(407);
        m.enter_kernel(500);
        assert_eq!(m.stop(501), Times { user: 93, sys: 3 });
        // A clock that seems to go back charges nothing rather than wrap.
        m.start(600);
        m.leave_kernel(590);
        assert_eq!(m.stop(600), Times { user: 0, sys: 10 });
    }

    #[test]
    fn cpu_clock_ids_decode_as_linux_encodes_them() {
        let make =
            |pid: i32, thread: bool, which: i32| (!pid << 3) | (i32::from(thread) << 2) | which;
        assert_eq!(
            CpuClock::decode(CLOCK_PROCESS_CPUTIME_ID),
            Some(CpuClock {
                pid: 0,
                thread: false,
                which: Which::Sched
            })
        );
        assert_eq!(
            CpuClock::decode(CLOCK_THREAD_CPUTIME_ID).map(|c| c.thread),
            Some(true)
        );
        // glibc's CLOCK_PROCESS_CPUTIME_ID for clock_nanosleep: pid 0, SCHED.
        assert_eq!(make(0, false, 2), -6);
        assert_eq!(
            CpuClock::decode(make(1234, true, 1)),
            Some(CpuClock {
                pid: 1234,
                thread: true,
                which: Which::Virt
            })
        );
        assert_eq!(
            CpuClock::decode(make(7, false, 0)),
            Some(CpuClock {
                pid: 7,
                thread: false,
                which: Which::Prof
            })
        );
        assert_eq!(CpuClock::decode(make(7, false, 3)), None);
        assert_eq!(CpuClock::decode(0), None);
        assert_eq!(CpuClock::decode(1), None);
        assert_eq!(CpuClock::decode(11), None);
        let t = Times { user: 5, sys: 7 };
        let read = |which| {
            CpuClock {
                pid: 0,
                thread: false,
                which,
            }
            .read(t)
        };
        assert_eq!(
            (read(Which::Prof), read(Which::Virt), read(Which::Sched)),
            (12, 5, 12)
        );
    }

    #[test]
    fn rusage_and_clock_ticks() {
        let r = rusage(1_500_000_999, 2_000_001_000);
        assert_eq!(&r[..8], &1u64.to_le_bytes());
        assert_eq!(&r[8..16], &500_000u64.to_le_bytes());
        assert_eq!(&r[16..24], &2u64.to_le_bytes());
        assert_eq!(&r[24..32], &1u64.to_le_bytes());
        assert!(r[32..].iter().all(|&b| b == 0));
        assert_eq!(clock_ticks(29_999_999), 2);
        assert_eq!(clock_ticks(30_000_000), 3);
    }
}
