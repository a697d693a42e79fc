//! Context switching and the scheduler (the policy and its
//! bound are described in `crate::task::process`), and the ends of threads
//! and processes. A switch saves the running task's registers in its task,
//! points `Kernel::cur` at the next one and loads its process's page
//! tables: every task's and process's state stays where it is.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::mem::take;

use crate::arch::{self, FxArea, SyscallFrame};
use crate::errno::Errno;
use crate::fs::pipe;
use crate::kernel::{self, Kernel};
use crate::mm::space::{Frames, Space};
use crate::mm::Vmas;
use crate::task::futex::{self, RobustMemory};
use crate::task::process::{Block, Context, ExitStatus, Pid, State, INIT};

pub const SIGCHLD: u32 = 17;

/// The FPU/SSE save area `capsa_syscall_user` put below `frame`.
///
/// # Safety
/// `frame` must be the frame `capsa_syscall_user` passed to the kernel.
pub unsafe fn fx_of(frame: *const SyscallFrame) -> &'static mut FxArea {
    let at = (frame as usize - crate::arch::FX_SIZE) & !63;
    // SAFETY: per the contract, the trampoline's fxsave image is there,
    // 64-byte aligned, on the kernel stack below the frame.
    unsafe { &mut *(at as *mut FxArea) }
}

/// The user memory of an address space loaded in CR3, for the robust-list
/// walk: only pages present in the space with the rights the access
/// needs, and that its mappings let the application read (or write), are
/// touched, so a bad pointer is a failed access, never a kernel fault.
struct LoadedSpace<'a> {
    space: &'a Space,
    frames: &'a Frames,
    vmas: &'a Vmas,
}

impl LoadedSpace<'_> {
    fn check(&self, addr: u64, len: u64, write: bool) -> Option<*mut u8> {
        let end = addr.checked_add(len)?;
        let ok = self.frames.is_user(addr)
            && self.frames.is_user(end - 1)
            && self.vmas.allows(addr, end, write)
            && self.space.accessible(addr, end, write);
        ok.then_some(addr as *mut u8)
    }
}

impl RobustMemory for LoadedSpace<'_> {
    fn read_u64(&mut self, addr: u64) -> Option<u64> {
        let p = self.check(addr, 8, false)?;
        // SAFETY: both ends lie in slots the loaded space backs (a range of
        // 8 bytes spans at most two slots) and every page of it is readable;
        // unaligned reads are allowed.
        Some(unsafe { core::ptr::read_unaligned(p as *const u64) })
    }

    fn read_u32(&mut self, addr: u64) -> Option<u32> {
        let p = self.check(addr, 4, false)?;
        // SAFETY: as in `read_u64`.
        Some(unsafe { core::ptr::read_unaligned(p as *const u32) })
    }

    fn write_u32(&mut self, addr: u64, value: u32) -> Option<()> {
        let p = self.check(addr, 4, true)?;
        // SAFETY: as in `read_u64`, and the pages are writable: user memory
        // of the loaded space the application itself may write (nothing
        // else runs meanwhile).
        unsafe { core::ptr::write_unaligned(p as *mut u32, value) };
        Some(())
    }
}

/// How long a task whose system calls do not block runs before the others
/// get a turn (Linux's default minimum granularity is a few ms; 10 ms keeps
/// switches, each a CR3 load under PVM, rare).
pub const TIME_SLICE_NS: u64 = 10_000_000;

impl Kernel {
    /// Walks the robust futex lists (set_robust_list) of threads `tids` of
    /// group `tgid` as Linux does when a thread exits or execs, in the
    /// group's memory (loaded for the walk when it is another process's:
    /// two CR3 loads). Each head is cleared, as Linux's `futex_cleanup`
    /// does. Waiters are woken as by a shared futex wake (see
    /// `Kernel::futex_key`).
    pub fn exit_robust_lists(&mut self, tgid: Pid, tids: &[Pid]) {
        let mut lists = Vec::new();
        for &tid in tids {
            if let Some(t) = self.procs.get_mut(tid) {
                let head = take(&mut t.thread.robust_list);
                if head != 0 {
                    lists.push((tid, head));
                }
            }
        }
        // Without a space (a vfork parent lending its memory) there is
        // nothing to walk.
        let Some(process) = self.processes.get(&tgid).filter(|_| !lists.is_empty()) else {
            return;
        };
        let Some(space) = process.space.as_ref() else {
            return;
        };
        let vmas = &process.mm.vmas;
        let loaded = space.cr3() == self.loaded_cr3;
        if !loaded {
            arch::load_cr3(space.cr3());
        }
        let mut mem = LoadedSpace {
            space,
            frames: &self.frames,
            vmas,
        };
        let mut wakes = Vec::new();
        for (tid, head) in lists {
            wakes.extend(
                futex::exit_robust_list(&mut mem, head, tid)
                    .into_iter()
                    .map(|addr| (tgid, addr)),
            );
        }
        // Keyed as a shared-futex wake, as Linux's: by the memory in
        // shared mappings (waiters of other processes), else the group's.
        for wake in &mut wakes {
            let addr = wake.1;
            if let Some(pa) = vmas
                .get(addr)
                .filter(|(_, v)| v.shared)
                .and_then(|_| space.physical(addr))
            {
                *wake = (0, pa);
            }
        }
        if !loaded {
            self.loaded_cr3 = space.cr3();
        }
        // Back to the current process's tables if the walk loaded others.
        self.load_space();
        for &(group, key) in &wakes {
            self.futexes.wake(group, key, 1, futex::BITSET_MATCH_ANY);
        }
        if !wakes.is_empty() {
            pipe::bump();
        }
    }

    /// Loads the current process's page tables (or the kernel-only ones
    /// when it has none, or is gone).
    pub fn load_space(&mut self) {
        let tgid = self.procs.tgid(self.cur);
        let space = self
            .processes
            .get(&tgid)
            .and_then(|p| p.space.as_ref())
            .or(self.kernel_space.as_ref());
        if let Some(s) = space {
            if s.cr3() != self.loaded_cr3 {
                arch::load_cr3(s.cr3());
                self.loaded_cr3 = s.cr3();
            }
            s.activate();
        }
    }

    /// Whether task `pid` is on the vCPU now (its registers are live, not
    /// saved in its task: false while the scheduler idles).
    pub fn is_running(&self, pid: Pid) -> bool {
        pid == self.cur && self.procs.get(pid).is_some_and(|t| t.ctx.is_none())
    }

    /// Sends `sig` to task `pid`: to the running task's process at once,
    /// to another task when it next runs.
    pub fn post_signal(&mut self, pid: Pid, sig: u32) {
        if sig == 0 || sig as usize > crate::task::signal::NSIG {
            return;
        }
        let bit = 1u64 << (sig - 1);
        if self.is_running(pid) {
            self.proc_mut().signals.pending |= bit;
        } else if let Some(t) = self.procs.get_mut(pid) {
            t.pending |= bit;
        }
        pipe::bump();
    }

    /// Ends process `pid` with `status`: closes its files, frees its memory
    /// (or hands it back to a vfork parent), makes it a zombie for its
    /// parent, and stops the VM when it is init.
    pub fn terminate(&mut self, pid: Pid, status: ExitStatus) {
        // A process ends with all its threads, whichever one was named.
        let pid = self.procs.tgid(pid);
        // Every thread dies: their robust mutexes are marked while the
        // memory is still there (Linux's exit_mm_release, per thread).
        let threads = self.procs.group(pid);
        self.exit_robust_lists(pid, &threads);
        self.end_threads(pid);
        self.futexes.forget(pid);
        if pid == self.cur {
            // Wake a CLONE_CHILD_CLEARTID waiter's word before the memory goes.
            let addr = self.thread().clear_child_tid;
            if addr != 0 {
                let _ = self.put_user(addr, &0u32.to_le_bytes());
            }
            self.switch_pending = true;
        }
        let mut process = self.processes.remove(&pid);
        if let Some(exited) = process.as_ref().and_then(|p| p.exited.as_ref()) {
            exited.set(true);
        }
        if let Some(p) = &process {
            self.report_exec_exit(p, status);
        }
        // A session leader's end takes its controlling terminal from the
        // session (Linux's disassociate_ctty).
        if self.procs.get(pid).is_some_and(|t| t.sid == pid) {
            if let Some(pty) = self.dev.ptys.of_session(pid) {
                pty.borrow_mut().session = None;
            }
        }
        // Shared file mappings reach their files before the memory goes
        // (a vfork child's memory is its parent's, which keeps them).
        let lends_memory = self
            .procs
            .get(pid)
            .is_some_and(|t| t.vfork_parent.is_some());
        if let Some(p) = process.as_mut().filter(|_| !lends_memory) {
            let maps = p.mm.files.take(0, u64::MAX);
            crate::kernel::mm::write_back(p.space.as_ref(), &mut self.dev, maps);
            let backing = core::mem::take(&mut p.mm.backing).into_values().collect();
            crate::kernel::mm::release_files(&mut self.dev, backing);
        }
        if pid == INIT {
            match status {
                ExitStatus::Exited(code) => kernel::exit(i32::from(code)),
                ExitStatus::Signaled { signal, .. } => kernel::exit_signal(signal),
            }
        }
        let Some(task) = self.procs.get_mut(pid) else {
            return;
        };
        task.state = State::Zombie(status);
        task.ctx = None;
        // Its CPU-time timers end with it (ITIMER_VIRTUAL, ITIMER_PROF).
        task.cpu_timers = [None; 2];
        let ppid = task.ppid;
        let vfork_parent = task.vfork_parent.take();
        // The process is out of the table: stop using its page tables
        // before anything may release them.
        self.load_space();
        if let Some(mut p) = process {
            for fd in p.fds.take_all() {
                if alloc::rc::Rc::strong_count(&fd.file) == 1 {
                    fd.file.release(&mut self.dev);
                }
            }
            let space = p.space.take();
            if let Some(parent) = vfork_parent {
                self.return_vfork_memory(parent, take(&mut p.mm), space);
            } else if let Some(space) = space {
                space.release(&self.frames);
            }
        }
        self.procs.reparent(pid);
        if ppid == 0 {
            // Started by the host: nobody in the guest reaps it.
            self.procs.remove(pid);
        } else {
            self.post_signal(ppid, SIGCHLD);
        }
        pipe::bump();
    }

    /// Thread `tid` (not a group's first) is about to go away: its CPU time
    /// (the running stretch too, if it is the current task) joins its
    /// group's total of ended threads.
    fn retire_cpu(&mut self, tid: Pid) {
        let mut spent = if tid == self.cur {
            self.meter.stop(self.clock.cpu_ticks())
        } else {
            crate::task::cputime::Times::default()
        };
        let tgid = self.procs.tgid(tid);
        if let Some(t) = self.procs.get(tid) {
            spent += t.cpu;
        }
        if tgid != tid {
            if let Some(leader) = self.procs.get_mut(tgid) {
                leader.cpu_dead += spent;
            }
        }
    }

    /// Ends the other threads of group `tgid` (exit_group, a fatal signal,
    /// execve): their tasks go away; the process stays with its leader.
    pub fn end_threads(&mut self, tgid: Pid) {
        for tid in self.procs.threads(tgid) {
            self.futexes.forget(tid);
            if tid == self.cur {
                self.switch_pending = true;
            }
            self.retire_cpu(tid);
            self.procs.remove(tid);
        }
    }

    /// exit (not exit_group) of one thread while its group has others: the
    /// tid word is cleared and its futex woken (pthread_join) and the task
    /// goes away. Returns false when the caller is the group's leader (then
    /// the whole process exits; see docs/syscalls.md for the leader's limit).
    pub fn exit_thread(&mut self) -> bool {
        let cur = self.cur;
        let tgid = self.procs.tgid(cur);
        if tgid == cur {
            return false;
        }
        // As Linux's exit_mm_release: robust mutexes first, then the tid word.
        self.exit_robust_lists(tgid, &[cur]);
        let addr = self.thread().clear_child_tid;
        if addr != 0 && self.put_user(addr, &0u32.to_le_bytes()).is_ok() {
            self.futexes
                .wake(tgid, addr, 1, crate::task::futex::BITSET_MATCH_ANY);
        }
        self.futexes.forget(cur);
        self.retire_cpu(cur);
        self.procs.remove(cur);
        self.switch_pending = true;
        pipe::bump();
        true
    }

    /// A vfork child execs or exits: its parent gets its memory back and
    /// runs again (a parent that died meanwhile leaves it to be freed).
    pub fn return_vfork_memory(
        &mut self,
        parent: Pid,
        mm: crate::kernel::Mm,
        space: Option<Space>,
    ) {
        let tgid = self.procs.tgid(parent);
        match self.processes.get_mut(&tgid) {
            Some(p) => {
                p.mm = mm;
                p.space = space;
            }
            None => {
                if let Some(space) = space {
                    self.load_space();
                    space.release(&self.frames);
                }
            }
        }
        if let Some(t) = self.procs.get_mut(parent) {
            if matches!(t.state, State::Blocked(Block::Vfork(_))) {
                t.state = State::Runnable;
            }
        }
    }

    /// Blocks the current task in a restartable call.
    pub fn block_current(&mut self) {
        let state = State::Blocked(Block::Retry {
            since: pipe::events(),
            deadline: self.block_deadline.take(),
            stdin: take(&mut self.block_stdin) | take(&mut self.dev.want_stdin),
        });
        if let Some(t) = self.procs.get_mut(self.cur) {
            t.state = state;
        }
        self.switch_pending = true;
    }

    /// The running task gives the others a turn (sched_yield, or its time
    /// slice is over). The scheduler only looks at deadlines when nothing
    /// is runnable; a yielding task is, so expired sleepers are woken here
    /// or a task spinning on sched_yield would starve them forever. (Stdin
    /// is not asked: that costs an exit, and idling looks at it.)
    pub fn yield_now(&mut self) {
        self.fire_posix_timers();
        let now = self.clock.monotonic_ns();
        self.procs.wake(pipe::events(), now, &mut || false);
        self.switch_pending = true;
    }

    /// After a system call (or fault) that left the current task unable
    /// to continue: saves its registers (if it lives on), then resumes the
    /// next runnable task in `frame`/`fx`, idling while none is.
    pub fn schedule(&mut self, frame: &mut SyscallFrame, fx: &mut FxArea) {
        self.switch_pending = false;
        let cur = self.cur;
        // The task stops running: its time so far is its own, and until
        // the next one starts (idling included) the vCPU's is nobody's.
        let spent = self.meter.stop(self.clock.cpu_ticks());
        if let Some(t) = self.procs.get_mut(cur) {
            t.cpu += spent;
            if !matches!(t.state, State::Zombie(_)) {
                t.ctx = Some(Box::new(Context {
                    frame: *frame,
                    fx: *fx,
                }));
            }
        }
        let next = match self.vfork_child.take() {
            Some(child) => {
                // The child runs in the parent's memory until exec or exit.
                let parent = self.procs.tgid(cur);
                let lent = self
                    .processes
                    .get_mut(&parent)
                    .map(|p| (take(&mut p.mm), p.space.take()));
                if let (Some((mm, space)), Some(c)) = (lent, self.processes.get_mut(&child)) {
                    c.mm = mm;
                    c.space = space;
                }
                child
            }
            None => self.pick_next(cur),
        };
        self.switch_to(next, frame, fx);
    }

    fn pick_next(&mut self, cur: Pid) -> Pid {
        loop {
            if let Some(next) = self.procs.next_runnable(cur) {
                return next;
            }
            self.take_host_signals();
            self.take_host_events();
            self.fire_posix_timers();
            let now = self.clock.monotonic_ns();
            self.poll_wire(now);
            let dev = &mut self.dev;
            let mut stdin_ready = || match dev.stdio.and_then(|i| dev.consoles.get_mut(i)) {
                Some(c) => c.readable(),
                None => true,
            };
            if self.procs.wake(pipe::events(), now, &mut stdin_ready) {
                continue;
            }
            let wire = self.net.wire.as_ref().and_then(|w| w.deadline_ns());
            let deadline = [self.procs.next_deadline(), self.next_posix_deadline(), wire]
                .into_iter()
                .flatten()
                .min();
            let wait = deadline.map_or(u64::MAX, |d| d.saturating_sub(now).max(1));
            self.clock.idle(wait);
        }
    }

    fn switch_to(&mut self, next: Pid, frame: &mut SyscallFrame, fx: &mut FxArea) {
        let Some(t) = self.procs.get_mut(next) else {
            kernel::fatal(format_args!("scheduled a missing task {next}"));
        };
        t.state = State::Runnable;
        let Some(ctx) = t.ctx.take() else {
            kernel::fatal(format_args!("task {next} has no saved registers"));
        };
        let pending = take(&mut t.pending);
        let settid = take(&mut t.set_child_tid);
        let fs_base = t.thread.fs_base;
        self.cur = next;
        self.proc_mut().signals.pending |= pending;
        *frame = ctx.frame;
        *fx = ctx.fx;
        self.load_space();
        arch::set_fs_base(fs_base);
        if settid != 0 {
            let _ = self.put_user(settid, &next.to_le_bytes());
        }
        self.meter.start(self.clock.cpu_ticks());
        self.slice_start = self.clock.monotonic_ns();
    }

    /// A task just created runs after its creator has had a slice from the
    /// moment of creation, as Linux's CFS places a new task behind its parent
    /// (START_DEBIT): a fork costs milliseconds of first-touch faults under
    /// shadow paging, and without this it alone could use up the caller's
    /// slice, so a shell forking twice in a row would see its first child's
    /// whole subtree run (and take the pids limit) before its second fork.
    pub fn start_behind_parent(&mut self) {
        self.slice_start = self.clock.monotonic_ns();
    }

    /// Finishes a system call: result or restart, then switching and
    /// signal delivery before the return to user mode.
    pub fn finish_syscall(&mut self, frame: &mut SyscallFrame, fx: &mut FxArea, nr: u64, ret: i64) {
        if ret == Errno::EBLOCK.to_ret() {
            // Re-execute the `syscall` instruction (2 bytes) with the
            // original number when the process runs again.
            frame.resume_after_syscall_at(frame.rip.wrapping_sub(2));
            frame.rax = nr;
            self.thread_mut().blocked_nr = Some(nr);
            self.block_current();
        } else {
            frame.rax = ret as u64;
            self.thread_mut().blocked_nr = None;
            self.thread_mut().restart_deadline = None;
            self.block_deadline = None;
            self.block_stdin = false;
        }
        self.end_entry(frame, fx);
    }

    /// What every return to the application passes through after a call
    /// or a timer tick (`kernel::fault`): the time slice, host signals,
    /// timers, then signal delivery and the switch to whichever task runs
    /// next.
    pub fn end_entry(&mut self, frame: &mut SyscallFrame, fx: &mut FxArea) {
        // A task that has run a time slice is switched out, so the other
        // runnable threads and processes (and sleepers whose time has
        // come) get the vCPU: at its next call, or at the next tick if it
        // computes without calls.
        if !self.switch_pending
            && self.clock.monotonic_ns().saturating_sub(self.slice_start) >= TIME_SLICE_NS
        {
            self.yield_now();
        }
        self.take_host_signals();
        self.take_host_events();
        if !self.dev.ptys.signals.is_empty() {
            self.send_terminal_signals();
        }
        for pid in core::mem::take(&mut self.dev.dnotify.signals) {
            // SIGIO, dnotify's signal.
            self.send(pid, 29);
        }
        // A process that keeps running never idles: its timers are checked
        // here, after every call and tick.
        let tgid = self.procs.tgid(self.cur);
        if self.procs.get(tgid).is_some_and(|t| t.alarm.is_some())
            && self
                .procs
                .take_expired_alarm(tgid, self.clock.monotonic_ns())
        {
            self.post_signal(self.cur, 14);
        }
        if self
            .procs
            .get(tgid)
            .is_some_and(|t| t.cpu_timers.iter().any(Option::is_some))
        {
            self.fire_cpu_timers();
        }
        self.fire_posix_timers();
        if self.net.wire.is_some() {
            self.poll_wire(self.clock.monotonic_ns());
        }
        self.resume_loop(frame, fx);
    }

    /// Lets the network interface move frames and connections' data when
    /// it has any to move (see `net::wire`): after every call and tick,
    /// and before idling.
    fn poll_wire(&mut self, now: u64) {
        if let Some(w) = &mut self.net.wire {
            if w.due(now) {
                w.poll(now);
            }
        }
    }

    /// After a fault killed the current process: run the next one.
    pub fn finish_fault(&mut self, frame: &mut SyscallFrame, fx: &mut FxArea) {
        self.switch_pending = true;
        self.resume_loop(frame, fx);
    }

    fn resume_loop(&mut self, frame: &mut SyscallFrame, fx: &mut FxArea) {
        loop {
            if self.switch_pending {
                self.schedule(frame, fx);
                if let Some(launch) = self.thread_mut().launch.take() {
                    self.launch(*launch, frame, fx);
                    if self.switch_pending {
                        continue;
                    }
                }
            }
            // Delivery may kill the process (then switch again) or set up a handler.
            self.deliver_signals(frame, fx);
            if !self.switch_pending {
                break;
            }
        }
    }
}
