//! The VM's clocks: realtime and monotonic time, the TSC's rate, the CPU-time
//! meter's run clock, and idling until a deadline.
//!
//! With the host TSC frequency from the boot info, time is rdtsc at CPL3
//! scaled from one reading of the control clock registers at boot: no exit
//! per `clock_gettime`. Without it, every reading is an MMIO exit, and CPU
//! times (always TSC ticks) are converted with a frequency measured
//! against the control clock.

use core::cell::Cell;

use capsa_abi::control;

use crate::arch::{self, control_read, control_write};
use crate::errno::{Errno, Result};
use crate::kernel::Kernel;
use crate::task::cputime::Times;
use crate::task::process::{self, Pid};
use crate::task::signal::{SigInfo, SI_TIMER};
use crate::task::timers::Notify;

pub const SIGVTALRM: u32 = 26;
pub const SIGPROF: u32 = 27;

pub struct Clock {
    tsc_khz: u64,
    tsc0: u64,
    realtime0: u64,
    monotonic0: u64,
    /// Without `tsc_khz`: the TSC frequency measured since boot, kept once
    /// measured over long enough that CPU clocks stay monotonic.
    measured_khz: Cell<u64>,
}

pub const CLOCK_REALTIME: u32 = 0;

pub const CLOCK_REALTIME_COARSE: u32 = 5;

pub const CLOCK_REALTIME_ALARM: u32 = 8;

pub const CLOCK_TAI: u32 = 11;

impl Clock {
    pub fn new(tsc_khz: u64) -> Self {
        let realtime0 = control_read(control::REALTIME_NS);
        let monotonic0 = control_read(control::MONOTONIC_NS);
        Self {
            tsc_khz,
            tsc0: arch::rdtsc(),
            realtime0,
            monotonic0,
            measured_khz: Cell::new(0),
        }
    }

    /// TSC ticks per millisecond.
    fn khz(&self) -> u64 {
        if self.tsc_khz != 0 {
            return self.tsc_khz;
        }
        if self.measured_khz.get() != 0 {
            return self.measured_khz.get();
        }
        let ns = control_read(control::MONOTONIC_NS).saturating_sub(self.monotonic0);
        let ticks = arch::rdtsc().wrapping_sub(self.tsc0);
        let khz = (u128::from(ticks) * 1_000_000 / u128::from(ns.max(1))).max(1) as u64;
        // The MMIO read's latency (tens of µs) is lost in 100 ms.
        if ns >= 100_000_000 {
            self.measured_khz.set(khz);
        }
        khz
    }

    /// TSC ticks as nanoseconds.
    pub fn ticks_ns(&self, ticks: u64) -> u64 {
        (u128::from(ticks) * 1_000_000 / u128::from(self.khz())).min(u128::from(u64::MAX)) as u64
    }

    /// Nanoseconds as TSC ticks (rounded down).
    pub fn ns_ticks(&self, ns: u64) -> u64 {
        (u128::from(ns) * u128::from(self.khz()) / 1_000_000).min(u128::from(u64::MAX)) as u64
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

    /// The clock the CPU-time meter reads: TSC ticks, less the time the
    /// host kept the vCPU from running (steal time), which is no task's CPU
    /// time, as a Linux guest's accounting leaves it out. Without this a
    /// loaded host would turn its own preemption of the vCPU into the
    /// interrupted task's time.
    pub fn cpu_ticks(&self) -> u64 {
        let tsc = arch::rdtsc();
        match arch::steal_ns() {
            0 => tsc,
            steal => tsc.saturating_sub(self.ns_ticks(steal)),
        }
    }

    /// Time since boot.
    pub fn since_boot_ns(&self) -> u64 {
        self.monotonic_ns().saturating_sub(self.monotonic0)
    }

    pub fn now(&self, clock: u32) -> Result<u64> {
        match clock {
            CLOCK_REALTIME | CLOCK_REALTIME_COARSE | CLOCK_REALTIME_ALARM | CLOCK_TAI => {
                Ok(self.realtime_ns())
            }
            1 | 4 | 6 | 7 | 9 => Ok(self.monotonic_ns()),
            // The CPU-time clocks are the kernel's (`Kernel::cpu_clock_ns`).
            _ => Err(Errno::EINVAL),
        }
    }

    /// Blocks the vCPU up to `ns` (it may wake earlier on stdin input).
    pub fn idle(&self, ns: u64) {
        control_write(control::IDLE_NS, ns);
    }
}

impl Kernel {
    /// CPU time of task `tid` so far, its running stretch included; None
    /// if there is no such task.
    pub fn thread_cpu(&self, tid: Pid) -> Option<Times> {
        let mut t = self.procs.get(tid)?.cpu;
        if tid == self.cur {
            t += self.meter.unflushed(self.clock.cpu_ticks());
        }
        Some(t)
    }

    /// CPU time of process `tgid`: its threads, those that ended included.
    pub fn process_cpu(&self, tgid: Pid) -> Option<Times> {
        let mut t = self.procs.get(tgid)?.cpu_dead;
        for tid in self.procs.group(tgid) {
            t += self.thread_cpu(tid).unwrap_or_default();
        }
        Some(t)
    }

    /// The calling process's CPU time as the ITIMER_VIRTUAL (`index` 0:
    /// user time) or ITIMER_PROF (1: user and system time) counts it, in ticks.
    pub fn itimer_clock(&self, index: usize) -> u64 {
        let times = self
            .process_cpu(self.procs.tgid(self.cur))
            .unwrap_or_default();
        if index == 0 {
            times.user
        } else {
            times.total()
        }
    }

    /// Sends SIGVTALRM or SIGPROF for the calling process's CPU timers that
    /// expired (checked after each system call, like ITIMER_REAL).
    pub fn fire_cpu_timers(&mut self) {
        let tgid = self.procs.tgid(self.cur);
        for (index, sig) in [(0, SIGVTALRM), (1, SIGPROF)] {
            if self
                .procs
                .get(tgid)
                .is_none_or(|t| t.cpu_timers[index].is_none())
            {
                continue;
            }
            let now = self.itimer_clock(index);
            let fired = self
                .procs
                .get_mut(tgid)
                .is_some_and(|t| process::expire(&mut t.cpu_timers[index], now));
            if fired {
                let cur = self.cur;
                self.post_signal(cur, sig);
            }
        }
    }

    /// Fires every process's POSIX timers that expired (after each call
    /// and tick, and while idle): each expiry sends its signal with an
    /// SI_TIMER siginfo, or adds to the overrun of one still pending.
    pub fn fire_posix_timers(&mut self) {
        let now = self.clock.monotonic_ns();
        let due: alloc::vec::Vec<Pid> = self
            .processes
            .iter()
            .filter(|(_, p)| p.timers.next_deadline().is_some_and(|d| d <= now))
            .map(|(&tgid, _)| tgid)
            .collect();
        for tgid in due {
            let staged = self.procs.group_pending(tgid);
            let Some(p) = self.processes.get_mut(&tgid) else {
                continue;
            };
            let pending = p.signals.pending | staged;
            let fired = p.timers.expire(now, |n| match n {
                Notify::Signal { signal, .. } => pending & (1 << (signal - 1)) != 0,
                Notify::None => false,
            });
            for e in fired {
                if let Some(p) = self.processes.get_mut(&tgid) {
                    p.signals.info[e.signal as usize - 1] = SigInfo {
                        code: SI_TIMER,
                        first: e.timer as u32,
                        second: 0,
                        value: e.value,
                    };
                }
                self.post_signal(e.tid.unwrap_or(tgid), e.signal);
            }
        }
    }

    /// Takes where the current process's pending `sig` came from; a POSIX
    /// timer's records how many expiries it folded in.
    pub fn take_signal_info(&mut self, sig: u32) -> SigInfo {
        let p = self.proc_mut();
        let mut record = p.signals.take_info(sig);
        if record.code == SI_TIMER {
            record.second = p.timers.delivered(record.first as i32);
        }
        record
    }

    /// The earliest POSIX timer deadline of any process.
    pub fn next_posix_deadline(&self) -> Option<u64> {
        self.processes
            .values()
            .filter_map(|p| p.timers.next_deadline())
            .min()
    }
}
