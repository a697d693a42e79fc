//! Clocks and sleeping.
//!
//! With the host TSC frequency from the boot info, time is rdtsc at CPL3
//! scaled from one reading of the control clock registers at boot: no exit
//! per `clock_gettime`. Without it, every reading is an MMIO exit.

use capsa_abi::control;

use crate::arch::{self, control_read, control_write};
use crate::errno::{Errno, Result};
use crate::kernel::Kernel;

pub struct Clock {
    tsc_khz: u64,
    tsc0: u64,
    realtime0: u64,
    monotonic0: u64,
}

const CLOCK_REALTIME: u32 = 0;
const CLOCK_REALTIME_COARSE: u32 = 5;
const CLOCK_REALTIME_ALARM: u32 = 8;
const CLOCK_TAI: u32 = 11;
const TIMER_ABSTIME: u32 = 1;

impl Clock {
    pub fn new(tsc_khz: u64) -> Self {
        let realtime0 = control_read(control::REALTIME_NS);
        let monotonic0 = control_read(control::MONOTONIC_NS);
        Self {
            tsc_khz,
            tsc0: arch::rdtsc(),
            realtime0,
            monotonic0,
        }
    }

    fn elapsed_ns(&self) -> u64 {
        let ticks = arch::rdtsc().wrapping_sub(self.tsc0);
        (u128::from(ticks) * 1_000_000 / u128::from(self.tsc_khz)) as u64
    }

    pub fn realtime_ns(&self) -> u64 {
        if self.tsc_khz == 0 {
            return control_read(control::REALTIME_NS);
        }
        self.realtime0 + self.elapsed_ns()
    }

    pub fn monotonic_ns(&self) -> u64 {
        if self.tsc_khz == 0 {
            return control_read(control::MONOTONIC_NS);
        }
        self.monotonic0 + self.elapsed_ns()
    }

    /// Time since boot (for CPU-time clocks: the one thread always runs).
    pub fn since_boot_ns(&self) -> u64 {
        self.monotonic_ns().saturating_sub(self.monotonic0)
    }

    pub fn now(&self, clock: u32) -> Result<u64> {
        match clock {
            CLOCK_REALTIME | CLOCK_REALTIME_COARSE | CLOCK_REALTIME_ALARM | CLOCK_TAI => {
                Ok(self.realtime_ns())
            }
            1 | 4 | 6 | 7 | 9 => Ok(self.monotonic_ns()),
            2 | 3 => Ok(self.since_boot_ns()),
            _ => Err(Errno::EINVAL),
        }
    }

    /// Blocks the vCPU up to `ns` (it may wake earlier on stdin input).
    pub fn idle(&self, ns: u64) {
        control_write(control::IDLE_NS, ns);
    }
}

pub fn timespec(ns: u64) -> [u8; 16] {
    let mut t = [0u8; 16];
    t[..8].copy_from_slice(&(ns / 1_000_000_000).to_le_bytes());
    t[8..].copy_from_slice(&(ns % 1_000_000_000).to_le_bytes());
    t
}

/// A `struct timeval` (sec, usec) as ns, rejecting out-of-range fields.
fn timeval_ns(t: &[u8]) -> Result<u64> {
    let sec = i64::from_le_bytes(t[..8].try_into().map_err(|_| Errno::EFAULT)?);
    let usec = i64::from_le_bytes(t[8..16].try_into().map_err(|_| Errno::EFAULT)?);
    if sec < 0 || !(0..1_000_000).contains(&usec) {
        return Err(Errno::EINVAL);
    }
    Ok((sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(usec as u64 * 1000))
}

fn timeval(ns: u64) -> [u8; 16] {
    let mut t = [0u8; 16];
    t[..8].copy_from_slice(&(ns / 1_000_000_000).to_le_bytes());
    t[8..].copy_from_slice(&(ns % 1_000_000_000 / 1000).to_le_bytes());
    t
}

const ITIMER_REAL: u32 = 0;

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

    /// getitimer: only ITIMER_REAL (the virtual and profiling timers need
    /// CPU-time accounting the guest does not keep).
    pub fn sys_getitimer(&mut self, which: u32, out: u64) -> Result<u64> {
        if which != ITIMER_REAL {
            return Err(Errno::EINVAL);
        }
        let (value, interval) = self.real_timer();
        let mut v = [0u8; 32];
        v[..16].copy_from_slice(&timeval(interval));
        v[16..].copy_from_slice(&timeval(value));
        self.put_user(out, &v)?;
        Ok(0)
    }

    pub fn sys_setitimer(&mut self, which: u32, new: u64, old: u64) -> Result<u64> {
        if which != ITIMER_REAL {
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
        self.set_real_timer(value, interval);
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

    pub fn timespec_ns(&self, ptr: u64) -> Result<u64> {
        let t = self.user_buf(ptr, 16)?;
        let sec = i64::from_le_bytes(t[..8].try_into().map_err(|_| Errno::EFAULT)?);
        let nsec = i64::from_le_bytes(t[8..].try_into().map_err(|_| Errno::EFAULT)?);
        if sec < 0 || !(0..1_000_000_000).contains(&nsec) {
            return Err(Errno::EINVAL);
        }
        Ok((sec as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(nsec as u64))
    }

    pub fn sys_clock_gettime(&mut self, clock: u32, out: u64) -> Result<u64> {
        let ns = self.clock.now(clock)?;
        self.put_user(out, &timespec(ns))?;
        Ok(0)
    }

    pub fn sys_clock_getres(&mut self, clock: u32, out: u64) -> Result<u64> {
        self.clock.now(clock)?;
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

    pub fn sys_times(&mut self, out: u64) -> Result<u64> {
        let ticks = self.clock.since_boot_ns() / 10_000_000;
        if out != 0 {
            let mut t = [0u8; 32];
            t[..8].copy_from_slice(&ticks.to_le_bytes());
            self.put_user(out, &t)?;
        }
        Ok(ticks)
    }

    pub fn sys_getrusage(&mut self, out: u64) -> Result<u64> {
        let ns = self.clock.since_boot_ns();
        let mut r = [0u8; 144];
        r[..8].copy_from_slice(&(ns / 1_000_000_000).to_le_bytes());
        r[8..16].copy_from_slice(&((ns % 1_000_000_000) / 1000).to_le_bytes());
        self.put_user(out, &r)?;
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
