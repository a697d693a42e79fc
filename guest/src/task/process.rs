//! The process table: pids, parentage, process groups and sessions, run
//! states, zombies and the wait status encoding.
//!
//! # Scheduling
//! One vCPU, round robin: a process runs until it makes a system
//! call that cannot complete (wait4 on live children, read of an empty pipe,
//! write to a full one, nanosleep, poll, read of stdin with nothing pending,
//! vfork until the child execs or exits) or exits; then the kernel switches
//! to the next runnable process in pid order. A blocked call is *restarted*:
//! the process's saved context points back at its `syscall` instruction with
//! the original registers, and it becomes runnable again when something may
//! have changed (any pipe, exit or signal event, its deadline passing, stdin
//! becoming readable), then simply retries. So the kernel needs no stack per
//! process: one kernel stack, and a context switch swaps saved user states.
//! When nothing is runnable, the kernel idles through the VMM's `IDLE_NS`
//! register until the earliest deadline or stdin input.
//!
//! The bound: a task is switched out once it has run a time slice
//! (`crate::kernel::sched`), at the end of a call or at the VMM's timer
//! tick if it computes without calls; the kernel itself is never
//! preempted (a tick that finds it running is dropped).
//!
//! Everything here is plain data, generic over each task's own state `S`
//! (`crate::task::Thread` in the kernel), so it is unit-tested on the host.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use crate::arch::{FxArea, SyscallFrame};
use crate::errno::{Errno, Result};
use crate::task::cputime::Times;

pub type Pid = i32;
pub const INIT: Pid = 1;

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(u8),
    Signaled { signal: u32, core: bool },
}

pub const CLD_EXITED: i32 = 1;
pub const CLD_KILLED: i32 = 2;
pub const CLD_DUMPED: i32 = 3;

impl ExitStatus {
    /// The `wstatus` word of wait4.
    pub fn wstatus(self) -> i32 {
        match self {
            ExitStatus::Exited(code) => i32::from(code) << 8,
            ExitStatus::Signaled { signal, core } => {
                (signal & 0x7f) as i32 | if core { 0x80 } else { 0 }
            }
        }
    }

    /// `(si_code, si_status)` for waitid and SIGCHLD.
    pub fn siginfo(self) -> (i32, i32) {
        match self {
            ExitStatus::Exited(code) => (CLD_EXITED, i32::from(code)),
            ExitStatus::Signaled { signal, core } => {
                (if core { CLD_DUMPED } else { CLD_KILLED }, signal as i32)
            }
        }
    }
}

/// What a blocked process waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Block {
    /// Retry the system call once the event counter moved past `since`, the
    /// monotonic `deadline` passed, or (with `stdin`) stdin became readable.
    Retry {
        since: u64,
        deadline: Option<u64>,
        stdin: bool,
    },
    /// A vfork parent: runnable when this child execs or exits.
    Vfork(Pid),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Runnable,
    Blocked(Block),
    Zombie(ExitStatus),
}

/// A saved user context: registers and FPU/SSE state.
#[derive(Clone, Copy)]
pub struct Context {
    pub frame: SyscallFrame,
    pub fx: FxArea,
}

pub struct Task<S> {
    pub pid: Pid,
    /// The thread group (the process) this task belongs to: its own pid for
    /// a process's first thread, the creator's group for a CLONE_THREAD child.
    pub tgid: Pid,
    pub ppid: Pid,
    pub pgid: Pid,
    pub sid: Pid,
    pub state: State,
    /// Saved context while not running.
    pub ctx: Option<Box<Context>>,
    /// What the thread owns besides its registers.
    pub thread: S,
    /// A vfork child runs in this parent's memory until it execs or exits.
    pub vfork_parent: Option<Pid>,
    /// CLONE_CHILD_SETTID: where to store the child's tid when it first runs.
    pub set_child_tid: u64,
    /// Signals sent to this thread while another ran (merged into its
    /// process's pending set when it is switched in).
    pub pending: u64,
    /// The process's ITIMER_REAL (kept on its first thread): next expiry
    /// and reload interval, in monotonic ns (interval 0: one-shot).
    pub alarm: Option<(u64, u64)>,
    /// Nice value (-20..=19): recorded and reported; the round-robin
    /// scheduler does not weigh it.
    pub nice: i32,
    /// CPU time this task ran (see `crate::task::cputime`), up to when it last
    /// stopped running (the running task's latest stretch is in the meter).
    pub cpu: Times,
    /// On a process's first thread: CPU time of its threads that ended.
    pub cpu_dead: Times,
    /// On a process's first thread: CPU time of its waited-for children
    /// (and of theirs), as Linux's `cutime`/`cstime`.
    pub cpu_children: Times,
    /// On a process's first thread: ITIMER_VIRTUAL and ITIMER_PROF, next
    /// expiry and reload interval in ticks of the process's user time
    /// (VIRTUAL) or user and system time (PROF).
    pub cpu_timers: [Option<(u64, u64)>; 2],
}

/// Fires a timer `(deadline, interval)` that expired by `now`: reloads it
/// past `now` (intervals missed meanwhile are skipped) or disarms it, and
/// returns true.
pub fn expire(timer: &mut Option<(u64, u64)>, now: u64) -> bool {
    match *timer {
        Some((deadline, interval)) if now >= deadline => {
            *timer = (interval > 0).then(|| {
                let missed = (now - deadline) / interval + 1;
                (
                    deadline.saturating_add(missed.saturating_mul(interval)),
                    interval,
                )
            });
            true
        }
        _ => false,
    }
}

/// SIGALRM, what an expired ITIMER_REAL sends.
const SIGALRM: u32 = 14;

/// Which children a wait call asks about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitFor {
    Any,
    Pid(Pid),
    Group(Pid),
}

pub struct ProcTable<S> {
    tasks: BTreeMap<Pid, Task<S>>,
    last_pid: Pid,
    /// The spec's pids limit: live and zombie processes together.
    pub limit: Option<u64>,
}

const PID_MAX: Pid = 32768;

impl<S: Default> ProcTable<S> {
    /// A table holding the init process, pid 1, in its own group and session.
    pub fn new(limit: Option<u64>) -> Self {
        let mut tasks = BTreeMap::new();
        tasks.insert(INIT, Self::task(INIT, 0, INIT, INIT));
        Self {
            tasks,
            last_pid: INIT,
            limit,
        }
    }

    fn task(pid: Pid, ppid: Pid, pgid: Pid, sid: Pid) -> Task<S> {
        Task {
            pid,
            tgid: pid,
            ppid,
            pgid,
            sid,
            state: State::Runnable,
            ctx: None,
            thread: S::default(),
            vfork_parent: None,
            set_child_tid: 0,
            pending: 0,
            alarm: None,
            nice: 0,
            cpu: Times::default(),
            cpu_dead: Times::default(),
            cpu_children: Times::default(),
            cpu_timers: [None; 2],
        }
    }

    /// Fires `tgid`'s ITIMER_REAL if it expired by `now`: reloads or
    /// disarms it and returns true (the caller delivers SIGALRM).
    pub fn take_expired_alarm(&mut self, tgid: Pid, now: u64) -> bool {
        self.tasks
            .get_mut(&tgid)
            .is_some_and(|t| expire(&mut t.alarm, now))
    }

    /// Signals sent to `tgid`'s threads while they were not running, not
    /// yet merged into the process's pending set.
    pub fn group_pending(&self, tgid: Pid) -> u64 {
        self.tasks
            .values()
            .filter(|t| t.tgid == tgid)
            .fold(0, |acc, t| acc | t.pending)
    }

    pub fn get(&self, pid: Pid) -> Option<&Task<S>> {
        self.tasks.get(&pid)
    }

    pub fn get_mut(&mut self, pid: Pid) -> Option<&mut Task<S>> {
        self.tasks.get_mut(&pid)
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    pub fn pids(&self) -> Vec<Pid> {
        self.tasks.keys().copied().collect()
    }

    /// A new child of `parent` in its group and session; EAGAIN past the
    /// pids limit or when `parent` does not exist.
    pub fn spawn(&mut self, parent: Pid) -> Result<Pid> {
        if self
            .limit
            .is_some_and(|limit| self.tasks.len() as u64 >= limit)
        {
            return Err(Errno::EAGAIN);
        }
        let (pgid, sid) = match self.tasks.get(&parent) {
            Some(p) => (p.pgid, p.sid),
            None => return Err(Errno::EAGAIN),
        };
        let mut pid = self.last_pid;
        for _ in 0..PID_MAX {
            pid = if pid >= PID_MAX - 1 { 2 } else { pid + 1 };
            // A pid stays taken while it names a process or a group.
            let used = self
                .tasks
                .values()
                .any(|t| t.pid == pid || t.pgid == pid || t.sid == pid);
            if !used {
                self.last_pid = pid;
                let mut task = Self::task(pid, parent, pgid, sid);
                // fork and clone inherit the creator's nice value.
                task.nice = self.tasks.get(&parent).map_or(0, |p| p.nice);
                self.tasks.insert(pid, task);
                return Ok(pid);
            }
        }
        Err(Errno::EAGAIN)
    }

    /// A process with no parent in the guest, in a new session and group
    /// of its own: one the host started (`capsa exec`), as a runtime's
    /// exec process comes from outside the container's pid namespace.
    /// EAGAIN past the pids limit.
    pub fn spawn_detached(&mut self) -> Result<Pid> {
        let pid = self.spawn(INIT)?;
        if let Some(t) = self.tasks.get_mut(&pid) {
            t.ppid = 0;
            t.pgid = pid;
            t.sid = pid;
            t.nice = 0;
        }
        Ok(pid)
    }

    /// The thread group of `pid` (itself if unknown).
    pub fn tgid(&self, pid: Pid) -> Pid {
        self.tasks.get(&pid).map_or(pid, |t| t.tgid)
    }

    /// The other threads of group `tgid` (not the leader).
    pub fn threads(&self, tgid: Pid) -> Vec<Pid> {
        self.tasks
            .values()
            .filter(|t| t.tgid == tgid && t.pid != tgid)
            .map(|t| t.pid)
            .collect()
    }

    /// All tasks of group `tgid`, leader included.
    pub fn group(&self, tgid: Pid) -> Vec<Pid> {
        self.tasks
            .values()
            .filter(|t| t.tgid == tgid)
            .map(|t| t.pid)
            .collect()
    }

    pub fn remove(&mut self, pid: Pid) -> Option<Task<S>> {
        self.tasks.remove(&pid)
    }

    fn matches(t: &Task<S>, parent: Pid, which: WaitFor) -> bool {
        // Threads are not children anybody waits for.
        t.pid == t.tgid
            && t.ppid == parent
            && match which {
                WaitFor::Any => true,
                WaitFor::Pid(p) => t.pid == p,
                WaitFor::Group(g) => t.pgid == g,
            }
    }

    /// Whether `parent` has any child `which` selects.
    pub fn has_child(&self, parent: Pid, which: WaitFor) -> bool {
        self.tasks.values().any(|t| Self::matches(t, parent, which))
    }

    /// The lowest-pid zombie child `which` selects.
    pub fn zombie_child(&self, parent: Pid, which: WaitFor) -> Option<(Pid, ExitStatus)> {
        self.tasks.values().find_map(|t| match t.state {
            State::Zombie(st) if Self::matches(t, parent, which) => Some((t.pid, st)),
            _ => None,
        })
    }

    /// Hands the children of `dead` to init.
    pub fn reparent(&mut self, dead: Pid) {
        for t in self.tasks.values_mut() {
            if t.ppid == dead {
                t.ppid = INIT;
            }
        }
    }

    /// The next runnable process after `after`, wrapping around (round robin).
    pub fn next_runnable(&self, after: Pid) -> Option<Pid> {
        let runnable = |t: &&Task<S>| t.state == State::Runnable;
        self.tasks
            .range(after + 1..)
            .map(|(_, t)| t)
            .find(runnable)
            .or_else(|| self.tasks.range(..=after).map(|(_, t)| t).find(runnable))
            .map(|t| t.pid)
    }

    /// Makes runnable every `Retry` waiter whose condition holds.
    /// `stdin_ready` is only asked for (it costs a VM exit) when some waiter
    /// wants stdin. Returns whether any woke.
    pub fn wake(&mut self, events: u64, now: u64, stdin_ready: &mut dyn FnMut() -> bool) -> bool {
        let mut woke = false;
        let mut stdin: Option<bool> = None;
        let groups: Vec<Pid> = self
            .tasks
            .values()
            .filter(|t| t.alarm.is_some())
            .map(|t| t.pid)
            .collect();
        for pid in groups {
            if self.take_expired_alarm(pid, now) {
                if let Some(t) = self.tasks.get_mut(&pid) {
                    t.pending |= 1 << (SIGALRM - 1);
                }
                crate::fs::pipe::bump();
            }
        }
        for t in self.tasks.values_mut() {
            if let State::Blocked(Block::Retry {
                since,
                deadline,
                stdin: wants_stdin,
            }) = t.state
            {
                let ready = since != events
                    || t.pending != 0
                    || deadline.is_some_and(|d| now >= d)
                    || (wants_stdin && *stdin.get_or_insert_with(&mut *stdin_ready));
                if ready {
                    t.state = State::Runnable;
                    woke = true;
                }
            }
        }
        woke
    }

    /// The earliest deadline of any blocked process.
    pub fn next_deadline(&self) -> Option<u64> {
        let blocked = self.tasks.values().filter_map(|t| match t.state {
            State::Blocked(Block::Retry { deadline, .. }) => deadline,
            _ => None,
        });
        let alarms = self.tasks.values().filter_map(|t| t.alarm.map(|(d, _)| d));
        blocked.chain(alarms).min()
    }

    /// `setpgid(pid, pgid)` as asked by `caller` (pids already resolved: 0
    /// means the caller / the target's own pid).
    pub fn setpgid(&mut self, caller: Pid, pid: Pid, pgid: Pid) -> Result<()> {
        let pid = if pid == 0 { caller } else { pid };
        let pgid = if pgid == 0 { pid } else { pgid };
        if pgid < 0 {
            return Err(Errno::EINVAL);
        }
        let (caller_sid, target) = match (self.tasks.get(&caller), self.tasks.get(&pid)) {
            (Some(c), Some(t)) => (c.sid, t),
            _ => return Err(Errno::ESRCH),
        };
        if pid != caller && target.ppid != caller {
            return Err(Errno::ESRCH);
        }
        if target.sid != caller_sid || target.sid == pid {
            return Err(Errno::EPERM);
        }
        if pgid != pid
            && !self
                .tasks
                .values()
                .any(|t| t.pgid == pgid && t.sid == caller_sid)
        {
            return Err(Errno::EPERM);
        }
        if let Some(t) = self.tasks.get_mut(&pid) {
            t.pgid = pgid;
        }
        Ok(())
    }

    /// `setsid()`: EPERM for a group leader.
    pub fn setsid(&mut self, caller: Pid) -> Result<Pid> {
        if self.tasks.values().any(|t| t.pgid == caller) {
            return Err(Errno::EPERM);
        }
        let t = self.tasks.get_mut(&caller).ok_or(Errno::ESRCH)?;
        t.pgid = caller;
        t.sid = caller;
        Ok(caller)
    }

    /// Live processes a `kill(pid)` reaches from `caller`.
    pub fn kill_targets(&self, caller: Pid, pid: Pid) -> Vec<Pid> {
        let caller_pgid = self.tasks.get(&caller).map_or(0, |t| t.pgid);
        self.tasks
            .values()
            .filter(|t| !matches!(t.state, State::Zombie(_)))
            // kill names processes: the signal goes to the group once.
            .filter(|t| t.pid == t.tgid)
            .filter(|t| match pid {
                p if p > 0 => t.pid == p,
                0 => t.pgid == caller_pgid,
                -1 => t.pid != INIT || caller == INIT,
                p => t.pgid == -p,
            })
            .map(|t| t.pid)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_status_encoding_matches_linux() {
        assert_eq!(ExitStatus::Exited(3).wstatus(), 0x300);
        assert_eq!(
            ExitStatus::Signaled {
                signal: 9,
                core: false
            }
            .wstatus(),
            9
        );
        assert_eq!(
            ExitStatus::Signaled {
                signal: 11,
                core: true
            }
            .wstatus(),
            0x8b
        );
        assert_eq!(ExitStatus::Exited(3).siginfo(), (CLD_EXITED, 3));
        assert_eq!(
            ExitStatus::Signaled {
                signal: 6,
                core: true
            }
            .siginfo(),
            (CLD_DUMPED, 6)
        );
    }

    #[test]
    fn timers_fire_reload_past_now_or_disarm() {
        let mut one_shot = Some((100, 0));
        assert!(!expire(&mut one_shot, 99));
        assert!(expire(&mut one_shot, 100));
        assert_eq!(one_shot, None);
        assert!(!expire(&mut one_shot, 1000));
        let mut periodic = Some((100, 30));
        assert!(expire(&mut periodic, 100));
        assert_eq!(periodic, Some((130, 30)));
        // Intervals missed meanwhile are skipped: one signal, next in the future.
        assert!(expire(&mut periodic, 200));
        assert_eq!(periodic, Some((220, 30)));
    }

    #[test]
    fn spawn_respects_the_pids_limit_and_inherits_groups() {
        let mut t: ProcTable<()> = ProcTable::new(Some(3));
        let a = t.spawn(INIT).expect("pid");
        let b = t.spawn(a).expect("pid");
        assert_eq!((a, b), (2, 3));
        assert_eq!(t.spawn(INIT), Err(Errno::EAGAIN));
        assert_eq!(t.get(b).map(|x| (x.ppid, x.pgid, x.sid)), Some((a, 1, 1)));
        t.remove(b);
        assert_eq!(t.spawn(INIT), Ok(4));
    }

    #[test]
    fn zombies_are_found_per_selector_and_orphans_go_to_init() {
        let mut t: ProcTable<()> = ProcTable::new(None);
        let a = t.spawn(INIT).expect("pid");
        let b = t.spawn(INIT).expect("pid");
        let c = t.spawn(a).expect("pid");
        assert!(t.has_child(INIT, WaitFor::Any));
        assert_eq!(t.zombie_child(INIT, WaitFor::Any), None);
        t.get_mut(b).expect("b").state = State::Zombie(ExitStatus::Exited(1));
        assert_eq!(t.zombie_child(INIT, WaitFor::Pid(a)), None);
        assert_eq!(
            t.zombie_child(INIT, WaitFor::Any),
            Some((b, ExitStatus::Exited(1)))
        );
        assert!(!t.has_child(INIT, WaitFor::Pid(c)));
        t.reparent(a);
        assert!(t.has_child(INIT, WaitFor::Pid(c)));
        assert!(t.has_child(INIT, WaitFor::Group(1)));
    }

    #[test]
    fn round_robin_and_wakeups() {
        let mut t: ProcTable<()> = ProcTable::new(None);
        let a = t.spawn(INIT).expect("pid");
        let b = t.spawn(INIT).expect("pid");
        assert_eq!(t.next_runnable(a), Some(b));
        assert_eq!(t.next_runnable(b), Some(INIT));
        for p in [INIT, a, b] {
            t.get_mut(p).expect("p").state = State::Blocked(Block::Retry {
                since: 5,
                deadline: if p == b { Some(100) } else { None },
                stdin: p == a,
            });
        }
        assert_eq!(t.next_runnable(INIT), None);
        assert_eq!(t.next_deadline(), Some(100));
        let mut asked = 0;
        assert!(!t.wake(5, 50, &mut || {
            asked += 1;
            false
        }));
        assert_eq!(asked, 1);
        assert!(t.wake(5, 100, &mut || false));
        assert_eq!(t.next_runnable(INIT), Some(b));
        assert!(t.wake(6, 0, &mut || false));
        assert_eq!(t.next_runnable(b), Some(INIT));
    }

    #[test]
    fn threads_are_neither_waited_for_nor_killed_twice() {
        let mut t: ProcTable<()> = ProcTable::new(None);
        let a = t.spawn(INIT).expect("pid");
        let th = t.spawn(INIT).expect("tid");
        t.get_mut(th).expect("thread").tgid = a;
        assert_eq!(t.threads(a), vec![th]);
        assert_eq!(t.group(a), vec![a, th]);
        assert_eq!(t.tgid(th), a);
        assert!(!t.has_child(INIT, WaitFor::Pid(th)));
        assert_eq!(t.kill_targets(INIT, 0), vec![INIT, a]);
        t.get_mut(th).expect("thread").state = State::Zombie(ExitStatus::Exited(0));
        assert_eq!(t.zombie_child(INIT, WaitFor::Any), None);
    }

    #[test]
    fn groups_sessions_and_kill_targets() {
        let mut t: ProcTable<()> = ProcTable::new(None);
        let a = t.spawn(INIT).expect("pid");
        let b = t.spawn(INIT).expect("pid");
        assert_eq!(t.setsid(INIT), Err(Errno::EPERM));
        t.setpgid(INIT, a, 0).expect("own group");
        t.setpgid(INIT, b, a).expect("join a's group");
        assert_eq!(t.setpgid(INIT, b, 77), Err(Errno::EPERM));
        assert_eq!(t.kill_targets(INIT, -a), vec![a, b]);
        assert_eq!(t.kill_targets(INIT, 0), vec![INIT]);
        assert_eq!(t.kill_targets(a, -1), vec![a, b]);
        assert_eq!(t.setsid(a), Err(Errno::EPERM));
        let c = t.spawn(b).expect("pid");
        assert_eq!(t.setsid(c), Ok(c));
        assert_eq!(t.get(c).map(|x| (x.pgid, x.sid)), Some((c, c)));
        assert_eq!(t.setpgid(INIT, c, 0), Err(Errno::ESRCH));
    }
}
