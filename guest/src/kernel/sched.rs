//! Context switching and the cooperative scheduler (the policy and its
//! bound are described in `crate::task::process`), process exit, and the glue
//! between the process table and the kernel's per-process state.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::mem::{replace, take};

use crate::arch::{self, FxArea, SyscallFrame};
use crate::errno::Errno;
use crate::fs::pipe;
use crate::kernel::{self, Kernel, ProcState};
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
    let at = (frame as usize - 512) & !63;
    // SAFETY: per the contract, the trampoline's fxsave image is there,
    // 64-byte aligned, on the kernel stack below the frame.
    unsafe { &mut *(at as *mut FxArea) }
}

/// The user memory of an address space loaded in CR3, for the robust-list
/// walk: only slots the space backs in the user range, and only pages its
/// mappings let the application read (or write), are touched, so a bad
/// pointer is a failed access, never a kernel fault.
struct LoadedSpace<'a> {
    space: &'a Space,
    frames: &'a Frames,
    vmas: &'a Vmas,
}

impl LoadedSpace<'_> {
    fn check(&self, addr: u64, len: u64, write: bool) -> Option<*mut u8> {
        let end = addr.checked_add(len)?;
        let ok = |va: u64| self.frames.is_user(va) && self.space.is_mapped(va);
        (ok(addr) && ok(end - 1) && self.vmas.allows(addr, end, write)).then_some(addr as *mut u8)
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
const TIME_SLICE_NS: u64 = 10_000_000;

impl Kernel {
    /// Walks the robust futex lists (set_robust_list) of threads `tids` of
    /// group `tgid` as Linux does when a thread exits or execs, in the
    /// group's memory: the running one's, or a parked group's, loaded for
    /// the walk (two CR3 loads) and unloaded again. Each head is cleared,
    /// as Linux's `futex_cleanup` does. Waiters are woken as by a shared
    /// futex wake (see `Kernel::futex_key`).
    pub fn exit_robust_lists(&mut self, tgid: Pid, tids: &[Pid]) {
        let loaded = self.cur_is_loaded() && self.procs.tgid(self.cur) == tgid;
        let mut lists = Vec::new();
        for &tid in tids {
            let head = if tid == self.cur && loaded {
                take(&mut self.robust_list)
            } else {
                self.procs
                    .get_mut(tid)
                    .and_then(|t| t.parked.as_mut())
                    .map_or(0, |p| take(&mut p.robust_list))
            };
            if head != 0 {
                lists.push((tid, head));
            }
        }
        if lists.is_empty() {
            return;
        }
        let mut wakes = Vec::new();
        let memory = if loaded {
            self.space.as_ref().map(|s| (s, &self.mm.vmas))
        } else {
            self.parked_shared(tgid)
                .and_then(|p| p.space.as_ref().map(|s| (s, &p.mm.vmas)))
        };
        // Without a space (a vfork parent lending its memory) there is
        // nothing to walk.
        if let Some((space, vmas)) = memory {
            if !loaded {
                arch::load_cr3(space.cr3());
            }
            let mut mem = LoadedSpace {
                space,
                frames: &self.frames,
                vmas,
            };
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
        }
        // Back to the current process's tables (or the kernel's) if the
        // walk loaded others.
        self.load_space();
        for &(group, key) in &wakes {
            self.futexes.wake(group, key, 1, futex::BITSET_MATCH_ANY);
        }
        if !wakes.is_empty() {
            pipe::bump();
        }
    }

    /// Moves the running process's state out of the kernel.
    pub fn park(&mut self) -> ProcState {
        ProcState {
            fds: take(&mut self.fds),
            mm: take(&mut self.mm),
            space: self.space.take(),
            cwd: take(&mut self.cwd),
            umask: self.umask,
            creds: take(&mut self.creds),
            signals: take(&mut self.signals),
            exe_path: take(&mut self.exe_path),
            fs_base: self.fs_base,
            comm: self.comm,
            personality: self.personality,
            restart_deadline: self.restart_deadline.take(),
            blocked_nr: self.blocked_nr.take(),
            clear_child_tid: replace(&mut self.clear_child_tid, 0),
            robust_list: replace(&mut self.robust_list, 0),
            shared: true,
        }
    }

    fn unpark(&mut self, st: ProcState) {
        self.fds = st.fds;
        self.mm = st.mm;
        self.space = st.space;
        self.cwd = st.cwd;
        self.umask = st.umask;
        self.creds = st.creds;
        self.signals = st.signals;
        self.exe_path = st.exe_path;
        self.fs_base = st.fs_base;
        self.comm = st.comm;
        self.personality = st.personality;
        self.restart_deadline = st.restart_deadline;
        self.blocked_nr = st.blocked_nr;
        self.clear_child_tid = st.clear_child_tid;
        self.robust_list = st.robust_list;
    }

    /// Loads the current process's page tables (or the kernel-only ones).
    pub fn load_space(&mut self) {
        let space = self.space.as_ref().or(self.kernel_space.as_ref());
        if let Some(s) = space {
            if s.cr3() != self.loaded_cr3 {
                arch::load_cr3(s.cr3());
                self.loaded_cr3 = s.cr3();
            }
            s.activate();
        }
    }

    /// Whether the current task's state is in the kernel's fields (false
    /// while the scheduler has parked it, e.g. when idle).
    pub fn cur_is_loaded(&self) -> bool {
        self.procs.get(self.cur).is_some_and(|t| t.parked.is_none())
    }

    /// Sends `sig` to process `pid` (the current one or a parked one).
    pub fn post_signal(&mut self, pid: Pid, sig: u32) {
        if sig == 0 || sig as usize > crate::task::signal::NSIG {
            return;
        }
        let bit = 1u64 << (sig - 1);
        if pid == self.cur && self.cur_is_loaded() {
            self.signals.pending |= bit;
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
        let mut st = if pid == self.cur {
            // Wake a CLONE_CHILD_CLEARTID waiter's word before the memory goes.
            if self.clear_child_tid != 0 {
                let _ = self.put_user(self.clear_child_tid, &0u32.to_le_bytes());
            }
            self.switch_pending = true;
            Some(self.park())
        } else {
            self.procs.get_mut(pid).and_then(|t| t.parked.take())
        };
        // Shared file mappings reach their files before the memory goes
        // (a vfork child's memory is its parent's, which keeps them).
        let lends_memory = self
            .procs
            .get(pid)
            .is_some_and(|t| t.vfork_parent.is_some());
        if let Some(st) = st.as_mut().filter(|_| !lends_memory) {
            let maps = st.mm.files.take(0, u64::MAX);
            crate::kernel::mm::write_back(st.space.as_ref(), &mut self.dev, maps);
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
        if let Some(mut st) = st {
            for fd in st.fds.take_all() {
                if alloc::rc::Rc::strong_count(&fd.file) == 1 {
                    fd.file.release(&mut self.dev);
                }
            }
            let space = st.space.take();
            if let Some(parent) = vfork_parent {
                self.return_vfork_memory(parent, take(&mut st.mm), space);
            } else if let Some(space) = space {
                if pid == self.cur {
                    self.load_space();
                }
                space.release(&mut self.frames);
            }
        }
        if pid == self.cur {
            self.load_space();
        }
        self.procs.reparent(pid);
        self.post_signal(ppid, SIGCHLD);
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

    /// Group `tgid`'s shared state (memory, files, signal actions) while
    /// none of its threads runs: parked with whichever task holds it.
    pub fn parked_shared(&self, tgid: Pid) -> Option<&ProcState> {
        self.procs
            .group(tgid)
            .into_iter()
            .filter_map(|p| self.procs.get(p).and_then(|t| t.parked.as_ref()))
            .find(|p| p.shared)
    }

    /// Moves group `tgid`'s shared state into `into` from the sibling
    /// holding it.
    fn fetch_shared(&mut self, tgid: Pid, into: &mut ProcState) {
        for pid in self.procs.group(tgid) {
            let holder = self
                .procs
                .get_mut(pid)
                .and_then(|t| t.parked.as_mut())
                .filter(|p| p.shared);
            if let Some(holder) = holder {
                swap_shared(holder, into);
                return;
            }
        }
    }

    /// Ends the other threads of group `tgid` (exit_group, a fatal signal,
    /// execve): their tasks go away and the shared state ends up parked
    /// with the leader — or stays in the kernel when the leader runs.
    pub fn end_threads(&mut self, tgid: Pid) {
        for tid in self.procs.threads(tgid) {
            self.futexes.forget(tid);
            let st = if tid == self.cur {
                self.switch_pending = true;
                let st = self.park();
                // The space left the kernel: stop using it before anything
                // may release it.
                self.load_space();
                Some(st)
            } else {
                self.procs.get_mut(tid).and_then(|t| t.parked.take())
            };
            if let Some(mut st) = st.filter(|s| s.shared) {
                if let Some(leader) = self.procs.get_mut(tgid).and_then(|t| t.parked.as_mut()) {
                    swap_shared(&mut st, leader);
                }
            }
            self.retire_cpu(tid);
            self.procs.remove(tid);
        }
    }

    /// exit (not exit_group) of one thread while its group has others: the
    /// tid word is cleared and its futex woken (pthread_join), the task goes
    /// away and the shared state passes to a sibling. Returns false when
    /// the caller is the group's last thread or its leader (then the whole
    /// process exits; see docs/syscalls.md for the leader's limit).
    pub fn exit_thread(&mut self) -> bool {
        let cur = self.cur;
        let tgid = self.procs.tgid(cur);
        if tgid == cur {
            return false;
        }
        // As Linux's exit_mm_release: robust mutexes first, then the tid word.
        self.exit_robust_lists(tgid, &[cur]);
        if self.clear_child_tid != 0 {
            let addr = self.clear_child_tid;
            if self.put_user(addr, &0u32.to_le_bytes()).is_ok() {
                self.futexes
                    .wake(tgid, addr, 1, crate::task::futex::BITSET_MATCH_ANY);
            }
        }
        self.futexes.forget(cur);
        let mut st = self.park();
        self.load_space();
        let heir = self
            .procs
            .group(tgid)
            .into_iter()
            .find(|&p| p != cur && self.procs.get(p).is_some_and(|t| t.parked.is_some()));
        if let Some(p) = heir
            .and_then(|h| self.procs.get_mut(h))
            .and_then(|t| t.parked.as_mut())
        {
            swap_shared(&mut st, p);
        }
        self.retire_cpu(cur);
        self.procs.remove(cur);
        self.switch_pending = true;
        pipe::bump();
        true
    }

    /// A vfork child execs or exits: its parent gets its memory back and runs again.
    pub fn return_vfork_memory(
        &mut self,
        parent: Pid,
        mm: crate::kernel::Mm,
        space: Option<Space>,
    ) {
        if let Some(t) = self.procs.get_mut(parent) {
            if let Some(p) = t.parked.as_mut() {
                p.mm = mm;
                p.space = space;
            }
            if matches!(t.state, State::Blocked(Block::Vfork(_))) {
                t.state = State::Runnable;
            }
        }
    }

    /// Blocks the current process in a restartable call.
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

    /// After a system call (or fault) that left the current process unable
    /// to continue: saves it (if alive), then resumes the next runnable
    /// process in `frame`/`fx`, idling while none is.
    pub fn schedule(&mut self, frame: &mut SyscallFrame, fx: &mut FxArea) {
        self.switch_pending = false;
        let cur = self.cur;
        // The task stops running: its time so far is its own, and until
        // the next one starts (idling included) the vCPU's is nobody's.
        let spent = self.meter.stop(self.clock.cpu_ticks());
        if let Some(t) = self.procs.get_mut(cur) {
            t.cpu += spent;
        }
        let alive = self
            .procs
            .get(cur)
            .is_some_and(|t| !matches!(t.state, State::Zombie(_)));
        if alive {
            let st = self.park();
            if let Some(t) = self.procs.get_mut(cur) {
                t.ctx = Some(Box::new(Context {
                    frame: *frame,
                    fx: *fx,
                }));
                t.parked = Some(st);
            }
        }
        let next = match self.vfork_child.take() {
            Some(child) => {
                // The child runs in the parent's memory until exec or exit.
                let lent = self
                    .procs
                    .get_mut(cur)
                    .and_then(|t| t.parked.as_mut())
                    .map(|p| (take(&mut p.mm), p.space.take()));
                if let (Some((mm, space)), Some(c)) = (lent, self.procs.get_mut(child)) {
                    if let Some(p) = c.parked.as_mut() {
                        p.mm = mm;
                        p.space = space;
                    }
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
            let now = self.clock.monotonic_ns();
            let dev = &mut self.dev;
            let mut stdin_ready = || match dev.stdio.and_then(|i| dev.consoles.get_mut(i)) {
                Some(c) => c.readable(),
                None => true,
            };
            if self.procs.wake(pipe::events(), now, &mut stdin_ready) {
                continue;
            }
            let wait = self
                .procs
                .next_deadline()
                .map_or(u64::MAX, |d| d.saturating_sub(now).max(1));
            self.clock.idle(wait);
        }
    }

    fn switch_to(&mut self, next: Pid, frame: &mut SyscallFrame, fx: &mut FxArea) {
        let Some(t) = self.procs.get_mut(next) else {
            kernel::fatal(format_args!("scheduled a missing process {next}"));
        };
        t.state = State::Runnable;
        let (Some(ctx), Some(st)) = (t.ctx.take(), t.parked.take()) else {
            kernel::fatal(format_args!("process {next} has no saved state"));
        };
        let pending = take(&mut t.pending);
        let settid = take(&mut t.set_child_tid);
        let tgid = t.tgid;
        let mut st = st;
        if !st.shared {
            // A thread: fetch its group's shared state from whichever
            // sibling parked it last.
            self.fetch_shared(tgid, &mut st);
        }
        self.unpark(st);
        self.signals.pending |= pending;
        self.cur = next;
        *frame = ctx.frame;
        *fx = ctx.fx;
        self.load_space();
        arch::set_fs_base(self.fs_base);
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
            frame.rip = frame.rip.wrapping_sub(2);
            frame.rax = nr;
            self.blocked_nr = Some(nr);
            self.block_current();
        } else {
            frame.rax = ret as u64;
            self.blocked_nr = None;
            self.restart_deadline = None;
            self.block_deadline = None;
            self.block_stdin = false;
        }
        // The cooperative scheduler's bound: a task whose calls do not
        // block is switched out once it has run a time slice, so the other
        // runnable threads and processes (and sleepers whose time has
        // come) get the vCPU. A task making no calls at all is not
        // preempted (no timer interrupt, see docs/syscalls.md).
        if !self.switch_pending
            && self.clock.monotonic_ns().saturating_sub(self.slice_start) >= TIME_SLICE_NS
        {
            self.sys_sched_yield();
        }
        self.take_host_signals();
        // A process that keeps making calls never idles: its timers are
        // checked here (no timer interrupt, see docs/syscalls.md).
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
        self.resume_loop(frame, fx);
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
            }
            // Delivery may kill the process (then switch again) or set up a handler.
            self.deliver_signals(frame, fx);
            if !self.switch_pending {
                break;
            }
        }
    }
}

/// Exchanges the thread-group-wide parts of two parked states.
fn swap_shared(a: &mut ProcState, b: &mut ProcState) {
    core::mem::swap(&mut a.fds, &mut b.fds);
    core::mem::swap(&mut a.mm, &mut b.mm);
    core::mem::swap(&mut a.space, &mut b.space);
    core::mem::swap(&mut a.cwd, &mut b.cwd);
    core::mem::swap(&mut a.umask, &mut b.umask);
    core::mem::swap(&mut a.creds, &mut b.creds);
    core::mem::swap(&mut a.signals, &mut b.signals);
    // Handlers and pending signals are the group's; the mask and the
    // alternate stack stay each thread's own (glibc blocks every signal in
    // a thread about to exit: with a shared mask the process would go deaf).
    core::mem::swap(&mut a.signals.mask, &mut b.signals.mask);
    core::mem::swap(&mut a.signals.altstack, &mut b.signals.altstack);
    core::mem::swap(&mut a.signals.saved_mask, &mut b.signals.saved_mask);
    core::mem::swap(&mut a.exe_path, &mut b.exe_path);
    core::mem::swap(&mut a.comm, &mut b.comm);
    core::mem::swap(&mut a.personality, &mut b.personality);
    core::mem::swap(&mut a.shared, &mut b.shared);
}
