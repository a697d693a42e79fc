//! Time system calls: clocks, sleeping, CPU time (`crate::task::cputime`),
//! interval timers and resource usage. The clocks themselves are
//! `crate::kernel::time`.

use crate::errno::{Errno, Result};
use crate::kernel::time::CLOCK_REALTIME;
use crate::kernel::Kernel;
use crate::task::cputime::{self, timeval, CpuClock, Times};
use crate::task::process::Pid;

const TIMER_ABSTIME: u32 = 1;
const CLOCK_MONOTONIC: u32 = 1;

pub fn timespec(ns: u64) -> [u8; 16] {
    let mut t = [0u8; 16];
    t[..8].copy_from_slice(&(ns / 1_000_000_000).to_le_bytes());
    t[8..].copy_from_slice(&(ns % 1_000_000_000).to_le_bytes());
    t
}

/// A `struct timeval` (sec, usec) as ns, rejecting out-of-range fields.
pub(crate) fn timeval_ns(t: &[u8]) -> Result<u64> {
    seconds_and_part_ns(t, 1_000_000)
}

/// A `struct timespec` as ns, rejecting out-of-range fields.
fn timespec_of(t: &[u8]) -> Result<u64> {
    seconds_and_part_ns(t, 1_000_000_000)
}

/// Two i64s, seconds and `parts` of a second, as ns.
fn seconds_and_part_ns(t: &[u8], parts: i64) -> Result<u64> {
    let sec = i64::from_le_bytes(t[..8].try_into().map_err(|_| Errno::EFAULT)?);
    let part = i64::from_le_bytes(t[8..16].try_into().map_err(|_| Errno::EFAULT)?);
    if sec < 0 || !(0..parts).contains(&part) {
        return Err(Errno::EINVAL);
    }
    Ok((sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(part as u64 * (1_000_000_000 / parts as u64)))
}

const ITIMER_REAL: u32 = 0;
const ITIMER_VIRTUAL: u32 = 1;
const ITIMER_PROF: u32 = 2;

const RUSAGE_SELF: i32 = 0;
const RUSAGE_CHILDREN: i32 = -1;
const RUSAGE_THREAD: i32 = 1;

impl Kernel {
    /// The ITIMER_REAL of the calling process as (remaining, interval) ns.
    fn real_timer(&self) -> (u64, u64) {
        let tgid = self.procs.tgid(self.cur);
        match self.procs.get(tgid).and_then(|t| t.alarm) {
            Some((deadline, interval)) => (
                deadline.saturating_sub(self.clock.monotonic_ns()).max(1),
                interval,
            ),
            None => (0, 0),
        }
    }

    fn set_real_timer(&mut self, value: u64, interval: u64) {
        let tgid = self.procs.tgid(self.cur);
        let now = self.clock.monotonic_ns();
        if let Some(t) = self.procs.get_mut(tgid) {
            t.alarm = (value > 0).then(|| (now.saturating_add(value), interval));
        }
    }

    /// The task whose CPU time `clock` reads, as Linux's `lookup_task`
    /// finds it: a thread of the caller's own process, or any process
    /// named by its first thread (a zombie too, until reaped). `gettime`:
    /// for clock_gettime, which also takes the caller's own tid as a
    /// process. EINVAL for anything else.
    fn cpu_clock_owner(&self, clock: CpuClock, gettime: bool) -> Result<Pid> {
        let me = self.cur;
        let my_group = self.procs.tgid(me);
        let pid = match (clock.pid, clock.thread) {
            (0, true) => me,
            (0, false) => my_group,
            (p, true) => {
                if self.procs.get(p).is_some_and(|t| t.tgid == my_group) {
                    p
                } else {
                    return Err(Errno::EINVAL);
                }
            }
            (p, false) => match self.procs.get(p) {
                Some(_) if gettime && p == me => my_group,
                Some(t) if t.tgid == p => p,
                _ => return Err(Errno::EINVAL),
            },
        };
        Ok(pid)
    }

    /// What a CPU clock reads now, in ns.
    fn cpu_clock_ns(&self, clock: CpuClock) -> Result<u64> {
        let pid = self.cpu_clock_owner(clock, true)?;
        let times = if clock.thread {
            self.thread_cpu(pid)
        } else {
            self.process_cpu(pid)
        };
        Ok(self.clock.ticks_ns(clock.read(times.unwrap_or_default())))
    }

    /// An interval timer of the calling process as (remaining, interval) ns.
    fn itimer(&self, which: u32) -> (u64, u64) {
        if which == ITIMER_REAL {
            return self.real_timer();
        }
        let index = (which - ITIMER_VIRTUAL) as usize;
        let tgid = self.procs.tgid(self.cur);
        match self.procs.get(tgid).and_then(|t| t.cpu_timers[index]) {
            // Due but not yet delivered (the next call's check will): about
            // to fire, still armed.
            Some((deadline, interval)) => (
                self.clock
                    .ticks_ns(deadline.saturating_sub(self.itimer_clock(index)))
                    .max(1000),
                self.clock.ticks_ns(interval),
            ),
            None => (0, 0),
        }
    }

    /// getitimer: ITIMER_REAL (monotonic time), ITIMER_VIRTUAL (the
    /// process's user time) and ITIMER_PROF (its user and system time).
    pub fn sys_getitimer(&mut self, which: u32, out: u64) -> Result<u64> {
        if which > ITIMER_PROF {
            return Err(Errno::EINVAL);
        }
        let (value, interval) = self.itimer(which);
        let mut v = [0u8; 32];
        v[..16].copy_from_slice(&timeval(interval));
        v[16..].copy_from_slice(&timeval(value));
        self.put_user(out, &v)?;
        Ok(0)
    }

    /// setitimer: see [`Self::sys_getitimer`]; not inherited by fork, kept
    /// across exec, as on Linux.
    pub fn sys_setitimer(&mut self, which: u32, new: u64, old: u64) -> Result<u64> {
        if which > ITIMER_PROF {
            return Err(Errno::EINVAL);
        }
        let (interval, value) = if new == 0 {
            (0, 0)
        } else {
            let raw = self.user_buf(new, 32)?;
            (timeval_ns(&raw[..16])?, timeval_ns(&raw[16..])?)
        };
        if old != 0 {
            self.sys_getitimer(which, old)?;
        }
        if which == ITIMER_REAL {
            self.set_real_timer(value, interval);
            return Ok(0);
        }
        let index = (which - ITIMER_VIRTUAL) as usize;
        let timer = (value > 0).then(|| {
            // At least one tick: a value shorter than that still arms it.
            let ticks = self.clock.ns_ticks(value).max(1);
            let now = self.itimer_clock(index);
            (now.saturating_add(ticks), self.clock.ns_ticks(interval))
        });
        let tgid = self.procs.tgid(self.cur);
        if let Some(t) = self.procs.get_mut(tgid) {
            t.cpu_timers[index] = timer;
        }
        Ok(0)
    }

    /// alarm: a one-shot ITIMER_REAL; returns the seconds the previous one
    /// had left (rounded to nearest, at least 1 if armed), as Linux does.
    pub fn sys_alarm(&mut self, seconds: u32) -> Result<u64> {
        let (left, _) = self.real_timer();
        self.set_real_timer(u64::from(seconds) * 1_000_000_000, 0);
        Ok(if left == 0 {
            0
        } else {
            (left.saturating_add(500_000_000) / 1_000_000_000).max(1)
        })
    }

    pub fn timespec_ns(&mut self, ptr: u64) -> Result<u64> {
        let t = self.user_buf(ptr, 16)?;
        timespec_of(t)
    }

    pub fn sys_clock_gettime(&mut self, clock: u32, out: u64) -> Result<u64> {
        let ns = match CpuClock::decode(clock as i32) {
            Some(cpu) => self.cpu_clock_ns(cpu)?,
            None => self.clock.now(clock)?,
        };
        self.put_user(out, &timespec(ns))?;
        Ok(0)
    }

    /// clock_settime and settimeofday: the VM's realtime clock follows the
    /// host's, which no process in it may set, so the answer is EPERM, as
    /// for a container without CAP_SYS_TIME, after Linux's own checks:
    /// only CLOCK_REALTIME is settable (EINVAL), the time must be readable
    /// (EFAULT) and valid (EINVAL).
    pub fn sys_clock_settime(&mut self, clock: u32, tp: u64) -> Result<u64> {
        if clock != CLOCK_REALTIME {
            return Err(Errno::EINVAL);
        }
        self.timespec_ns(tp)?;
        Err(Errno::EPERM)
    }

    pub fn sys_settimeofday(&mut self, tv: u64, tz: u64) -> Result<u64> {
        if tv != 0 {
            timeval_ns(self.user_buf(tv, 16)?)?;
        }
        if tz != 0 {
            self.user_buf(tz, 8)?;
        }
        Err(Errno::EPERM)
    }

    /// clock_getres: 1 ns for every clock (CPU times are TSC readings too).
    pub fn sys_clock_getres(&mut self, clock: u32, out: u64) -> Result<u64> {
        match CpuClock::decode(clock as i32) {
            Some(cpu) => {
                self.cpu_clock_owner(cpu, false)?;
            }
            None => {
                self.clock.now(clock)?;
            }
        }
        if out != 0 {
            self.put_user(out, &timespec(1))?;
        }
        Ok(0)
    }

    pub fn sys_gettimeofday(&mut self, tv: u64, _tz: u64) -> Result<u64> {
        if tv != 0 {
            let ns = self.clock.realtime_ns();
            let mut t = [0u8; 16];
            t[..8].copy_from_slice(&(ns / 1_000_000_000).to_le_bytes());
            t[8..].copy_from_slice(&((ns % 1_000_000_000) / 1000).to_le_bytes());
            self.put_user(tv, &t)?;
        }
        Ok(0)
    }

    pub fn sys_time(&mut self, out: u64) -> Result<u64> {
        let secs = self.clock.realtime_ns() / 1_000_000_000;
        if out != 0 {
            self.put_user(out, &secs.to_le_bytes())?;
        }
        Ok(secs)
    }

    /// Sleeps until `clock` reaches `deadline` by blocking (other processes
    /// run meanwhile); the monotonic deadline survives the restarts.
    fn sleep_until(&mut self, clock: u32, deadline: u64) -> Result<()> {
        let now = self.clock.now(clock)?;
        let mono = self.clock.monotonic_ns();
        let until = *self
            .thread_mut()
            .restart_deadline
            .get_or_insert(mono.saturating_add(deadline.saturating_sub(now)));
        if mono >= until {
            return Ok(());
        }
        self.block_deadline = Some(until);
        Err(Errno::EBLOCK)
    }

    pub fn sys_nanosleep(&mut self, req: u64, rem: u64) -> Result<u64> {
        let ns = self.timespec_ns(req)?;
        let deadline = self.clock.monotonic_ns().saturating_add(ns);
        self.sleep_until(1, deadline)?;
        if rem != 0 {
            self.put_user(rem, &timespec(0))?;
        }
        Ok(0)
    }

    pub fn sys_clock_nanosleep(
        &mut self,
        clock: u32,
        flags: u32,
        req: u64,
        rem: u64,
    ) -> Result<u64> {
        let ns = self.timespec_ns(req)?;
        if let Some(cpu) = CpuClock::decode(clock as i32) {
            // Linux refuses the caller's own thread clock; a deadline on a
            // process's CPU time would need a check wherever that process
            // runs, so only one already reached is honoured.
            let pid = self.cpu_clock_owner(cpu, false)?;
            if cpu.thread && pid == self.cur {
                return Err(Errno::EINVAL);
            }
            let now = self.cpu_clock_ns(cpu)?;
            return if flags & TIMER_ABSTIME != 0 && now >= ns || ns == 0 {
                Ok(0)
            } else {
                Err(Errno::EOPNOTSUPP)
            };
        }
        let deadline = if flags & TIMER_ABSTIME != 0 {
            ns
        } else {
            self.clock.now(clock)?.saturating_add(ns)
        };
        self.sleep_until(clock, deadline)?;
        if rem != 0 && flags & TIMER_ABSTIME == 0 {
            self.put_user(rem, &timespec(0))?;
        }
        Ok(0)
    }

    /// times: the process's and its waited-for children's user and system
    /// time in clock ticks; returns the ticks since boot.
    pub fn sys_times(&mut self, out: u64) -> Result<u64> {
        let elapsed = cputime::clock_ticks(self.clock.since_boot_ns());
        if out != 0 {
            let tgid = self.procs.tgid(self.cur);
            let own = self.process_cpu(tgid).unwrap_or_default();
            let children = self
                .procs
                .get(tgid)
                .map(|t| t.cpu_children)
                .unwrap_or_default();
            let mut t = [0u8; 32];
            for (i, ticks) in [own.user, own.sys, children.user, children.sys]
                .into_iter()
                .enumerate()
            {
                let v = cputime::clock_ticks(self.clock.ticks_ns(ticks));
                t[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
            }
            self.put_user(out, &t)?;
        }
        Ok(elapsed)
    }

    /// getrusage: user and system time of the process (RUSAGE_SELF), of
    /// its waited-for children (RUSAGE_CHILDREN) or of the calling thread
    /// (RUSAGE_THREAD); the other fields are zero.
    pub fn sys_getrusage(&mut self, who: i32, out: u64) -> Result<u64> {
        let tgid = self.procs.tgid(self.cur);
        let times = match who {
            RUSAGE_SELF => self.process_cpu(tgid),
            RUSAGE_CHILDREN => self.procs.get(tgid).map(|t| t.cpu_children),
            RUSAGE_THREAD => self.thread_cpu(self.cur),
            _ => return Err(Errno::EINVAL),
        }
        .unwrap_or_default();
        let r = self.rusage(times);
        self.put_user(out, &r)?;
        Ok(0)
    }

    /// A `struct rusage` of `times`.
    pub fn rusage(&self, times: Times) -> [u8; 144] {
        cputime::rusage(
            self.clock.ticks_ns(times.user),
            self.clock.ticks_ns(times.sys),
        )
    }
}

/// POSIX timers: `timer_create`, `timer_settime`, `timer_gettime`,
/// `timer_getoverrun`, `timer_delete` on the real clocks (the state is
/// `crate::task::timers`; expiries fire in `Kernel::fire_posix_timers`).
impl Kernel {
    pub fn sys_timer_create(&mut self, clock: u32, sevp: u64, out: u64) -> Result<u64> {
        use crate::task::timers::{Notify, SIGEV_NONE, SIGEV_SIGNAL, SIGEV_THREAD_ID};
        const CLOCK_BOOTTIME: u32 = 7;
        if !matches!(clock, CLOCK_REALTIME | CLOCK_MONOTONIC | CLOCK_BOOTTIME) {
            // CPU-time clocks and the alarm clocks are not offered.
            return Err(Errno::EINVAL);
        }
        let notify = if sevp == 0 {
            None
        } else {
            let raw = self.user_buf(sevp, 24)?.to_vec();
            let value = u64::from_le_bytes(raw[0..8].try_into().map_err(|_| Errno::EFAULT)?);
            let signal = u32::from_le_bytes(raw[8..12].try_into().map_err(|_| Errno::EFAULT)?);
            let how = i32::from_le_bytes(raw[12..16].try_into().map_err(|_| Errno::EFAULT)?);
            let tid = i32::from_le_bytes(raw[16..20].try_into().map_err(|_| Errno::EFAULT)?);
            let valid_signal = (1..=crate::task::signal::NSIG as u32).contains(&signal);
            Some(match how {
                SIGEV_NONE => Notify::None,
                SIGEV_SIGNAL if valid_signal => Notify::Signal {
                    signal,
                    tid: None,
                    value,
                },
                SIGEV_THREAD_ID if valid_signal => {
                    // The thread must be one of the caller's.
                    let own = self.procs.get(tid).is_some_and(|t| {
                        t.tgid == self.procs.tgid(self.cur)
                            && !matches!(t.state, crate::task::process::State::Zombie(_))
                    });
                    if !own {
                        return Err(Errno::EINVAL);
                    }
                    Notify::Signal {
                        signal,
                        tid: Some(tid),
                        value,
                    }
                }
                _ => return Err(Errno::EINVAL),
            })
        };
        let id = self.proc_mut().timers.create(clock, notify)?;
        if let Err(e) = self.put_user(out, &id.to_le_bytes()) {
            let _ = self.proc_mut().timers.delete(id);
            return Err(e);
        }
        Ok(0)
    }

    /// The remaining time and interval of a timer, as an `itimerspec`.
    fn timer_spec(&self, id: i32) -> Result<[u8; 32]> {
        let t = self.proc().timers.get(id)?;
        let now = self.clock.monotonic_ns();
        let left = t.deadline.map_or(0, |d| d.saturating_sub(now).max(1));
        let mut out = [0u8; 32];
        out[..16].copy_from_slice(&timespec(t.interval));
        out[16..].copy_from_slice(&timespec(left));
        Ok(out)
    }

    pub fn sys_timer_settime(&mut self, id: i32, flags: u32, new: u64, old: u64) -> Result<u64> {
        let previous = self.timer_spec(id)?;
        let raw = self.user_buf(new, 32)?.to_vec();
        let (interval, value) = (timespec_of(&raw[..16])?, timespec_of(&raw[16..])?);
        let clock = self.proc().timers.get(id)?.clock;
        let now = self.clock.now(clock)?;
        let mono = self.clock.monotonic_ns();
        let deadline = match value {
            0 => None,
            // An absolute time on the timer's clock, as a monotonic deadline.
            v if flags & TIMER_ABSTIME != 0 => Some(mono.saturating_add(v.saturating_sub(now))),
            v => Some(mono.saturating_add(v)),
        };
        if old != 0 {
            self.put_user(old, &previous)?;
        }
        let t = self.proc_mut().timers.get_mut(id)?;
        t.deadline = deadline;
        t.interval = if deadline.is_some() { interval } else { 0 };
        t.missed = 0;
        Ok(0)
    }

    pub fn sys_timer_gettime(&mut self, id: i32, out: u64) -> Result<u64> {
        let spec = self.timer_spec(id)?;
        self.put_user(out, &spec)?;
        Ok(0)
    }

    pub fn sys_timer_getoverrun(&mut self, id: i32) -> Result<u64> {
        Ok(u64::from(self.proc().timers.get(id)?.overrun))
    }

    pub fn sys_timer_delete(&mut self, id: i32) -> Result<u64> {
        self.proc_mut().timers.delete(id)?;
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timespec_splits_seconds() {
        let t = timespec(3_000_000_007);
        assert_eq!(&t[..8], &3u64.to_le_bytes());
        assert_eq!(&t[8..], &7u64.to_le_bytes());
    }
}
