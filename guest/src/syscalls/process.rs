//! Processes: fork/vfork/clone, execve, exit, wait4/waitid, ids, process
//! groups and sessions; and process identity and limits: uname,
//! credentials, rlimits, TLS.
//!
//! # Cost of fork
//! The address space is copied eagerly, 2 MiB slot by slot, skipping slots
//! whose dirty bit is clear (see `crate::mm::space` for the choice and the
//! measurements: ~0.9 ms per busybox `sh` fork, ~1.9 ms per subshell).
//! vfork and `CLONE_VM|CLONE_VFORK` (posix_spawn) copy nothing: the child
//! borrows the parent's memory and page tables until it execs or exits.

use alloc::boxed::Box;
use alloc::rc::Rc;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::Cell;

use crate::arch::{self, FxArea, SyscallFrame};
use crate::errno::{Errno, Result};
use crate::fs::event::PidFd;
use crate::fs::fd::{File as _, O_NONBLOCK, O_RDWR};
use crate::kernel::spec::RLIMIT_COUNT;
use crate::kernel::Kernel;
use crate::kernel::Mm;
use crate::mm::space::Space;
use crate::task::capability::{
    CAP_LAST_CAP, CAP_SETGID, CAP_SETPCAP, CAP_SETUID, CAP_SYS_NICE, CAP_SYS_RESOURCE,
};
use crate::task::cputime::Times;
use crate::task::futex;
use crate::task::process::{Block, Context, ExitStatus, Pid, State, WaitFor};
use crate::task::signal::SigMask;
use crate::task::{Process, Thread};

const CLONE_VM: u64 = 0x100;
const CLONE_FS: u64 = 0x200;
const CLONE_FILES: u64 = 0x400;
const CLONE_SIGHAND: u64 = 0x800;
const CLONE_VFORK: u64 = 0x4000;
const CLONE_PARENT: u64 = 0x8000;
const CLONE_THREAD: u64 = 0x10000;
const CLONE_SETTLS: u64 = 0x80000;
const CLONE_PARENT_SETTID: u64 = 0x100000;
const CLONE_CHILD_CLEARTID: u64 = 0x200000;
const CLONE_CHILD_SETTID: u64 = 0x1000000;
const WNOHANG: u32 = 1;
const WEXITED: u32 = 4;
const WNOWAIT: u32 = 0x0100_0000;
const P_ALL: u32 = 0;
const P_PID: u32 = 1;
const P_PGID: u32 = 2;
const P_PIDFD: u32 = 3;
/// How many `#!` interpreters may chain.
const MAX_SCRIPT_DEPTH: usize = 4;
/// Longest argument or environment vector accepted (ARG_MAX-like).
const MAX_ARGS: usize = 1 << 17;

const ARCH_SET_GS: u32 = 0x1001;
const ARCH_SET_FS: u32 = 0x1002;
const ARCH_GET_FS: u32 = 0x1003;
const ARCH_GET_GS: u32 = 0x1004;
const PR_SET_PDEATHSIG: u32 = 1;
const PR_GET_PDEATHSIG: u32 = 2;
const PR_GET_DUMPABLE: u32 = 3;
const PR_SET_DUMPABLE: u32 = 4;
const PR_SET_NAME: u32 = 15;
const PR_GET_NAME: u32 = 16;
const PR_SET_NO_NEW_PRIVS: u32 = 38;
const PR_GET_NO_NEW_PRIVS: u32 = 39;
const PR_GET_KEEPCAPS: u32 = 7;
const PR_SET_KEEPCAPS: u32 = 8;
const PR_CAPBSET_READ: u32 = 23;
const PR_CAPBSET_DROP: u32 = 24;
const PR_CAP_AMBIENT: u32 = 47;
const PR_CAP_AMBIENT_IS_SET: u64 = 1;
const PR_CAP_AMBIENT_RAISE: u64 = 2;
const PR_CAP_AMBIENT_LOWER: u64 = 3;
const PR_CAP_AMBIENT_CLEAR_ALL: u64 = 4;
/// capget/capset header versions: 64-bit sets in two 32-bit halves (2 and
/// 3), or one 32-bit set (1).
const CAP_VERSION_1: u32 = 0x1998_0330;
const CAP_VERSION_2: u32 = 0x2007_1026;
const CAP_VERSION_3: u32 = 0x2008_0522;

const SCHED_OTHER: u32 = 0;
const SCHED_FIFO: u32 = 1;
const SCHED_RR: u32 = 2;
const SCHED_BATCH: u32 = 3;
const SCHED_IDLE: u32 = 5;
const SCHED_RESET_ON_FORK: u32 = 0x4000_0000;

/// The priorities a policy takes, as Linux's sched_get_priority_min/max;
/// EINVAL for no policy.
pub fn sched_priority_range(policy: u32) -> Result<(u64, u64)> {
    match policy {
        SCHED_FIFO | SCHED_RR => Ok((1, 99)),
        SCHED_OTHER | SCHED_BATCH | SCHED_IDLE => Ok((0, 0)),
        _ => Err(Errno::EINVAL),
    }
}

impl Kernel {
    /// exit: ends the calling thread only, unless it is the last one.
    pub fn sys_exit_thread(&mut self, code: i32) -> Result<u64> {
        if self.exit_thread() {
            return Ok(0);
        }
        self.sys_exit(code)
    }

    pub fn sys_exit(&mut self, code: i32) -> Result<u64> {
        let cur = self.cur;
        self.terminate(cur, ExitStatus::Exited(code as u8));
        Ok(0)
    }

    /// fork, vfork and clone; CLONE_THREAD goes to [`Self::clone_thread`].
    pub fn sys_clone(
        &mut self,
        frame: &SyscallFrame,
        flags: u64,
        stack: u64,
        parent_tid: u64,
        child_tid: u64,
        tls: u64,
    ) -> Result<u64> {
        if flags & CLONE_THREAD != 0 {
            return self.clone_thread(frame, flags, stack, parent_tid, child_tid, tls);
        }
        if flags & (CLONE_THREAD | CLONE_SIGHAND | CLONE_FILES | CLONE_FS | CLONE_PARENT) != 0 {
            return Err(Errno::EINVAL);
        }
        let vfork = flags & CLONE_VFORK != 0;
        if flags & CLONE_VM != 0 && !vfork {
            // Shared memory without the parent waiting is a thread in all but name.
            return Err(Errno::EINVAL);
        }
        let shares_vm = flags & CLONE_VM != 0;
        let space = if shares_vm {
            None
        } else {
            let started = self.clock.monotonic_ns();
            // Shared memory must have its frames before they are shared:
            // a page first touched after the fork would be each side's own.
            // (A read-only shared mapping of a file may stay unread: both
            // sides read the same file.)
            let shared: Vec<(u64, u64)> = self
                .proc()
                .mm
                .vmas
                .shared()
                .filter(|&(s, _, prot)| {
                    prot & crate::mm::PROT_WRITE != 0
                        || self
                            .proc()
                            .mm
                            .vmas
                            .get(s)
                            .is_some_and(|(_, v)| v.file.is_none())
                })
                .map(|(s, e, _)| (s, e))
                .collect();
            for &(s, e) in &shared {
                self.populate(s, e, false).map_err(|_| Errno::ENOMEM)?;
            }
            let tgid = self.procs.tgid(self.cur);
            let parent = self.processes.get(&tgid);
            let vmas = parent.map(|p| &p.mm.vmas);
            let is_shared = |va: u64| vmas.and_then(|v| v.get(va)).is_some_and(|(_, v)| v.shared);
            let copy = parent
                .and_then(|p| p.space.as_ref())
                .map(|s| s.fork(&self.frames, is_shared))
                .transpose()
                .map_err(|_| Errno::ENOMEM)?;
            let copy = copy.map(|(child, flush)| {
                if flush {
                    // The parent's pages just became read-only.
                    arch::load_cr3(self.loaded_cr3);
                }
                child
            });
            self.last_fork_ns = self.clock.monotonic_ns().saturating_sub(started);
            if self.debug_enabled() {
                let mut m = crate::kernel::MsgBuf::new();
                let _ = core::fmt::Write::write_fmt(
                    &mut m,
                    format_args!(
                        "capsa guest: fork of pid {}: {} pages in {} us",
                        self.cur,
                        copy.as_ref().map_or(0, Space::resident_pages),
                        self.last_fork_ns / 1000
                    ),
                );
                arch::debug(m.as_bytes());
            }
            copy
        };
        // A thread's fork makes a child of its process, not of the thread.
        let pid = match self.procs.spawn(self.procs.tgid(self.cur)) {
            Ok(pid) => pid,
            Err(e) => {
                if let Some(s) = space {
                    s.release(&self.frames);
                }
                return Err(e);
            }
        };
        let mut child_frame = *frame;
        child_frame.rax = 0;
        if stack != 0 {
            child_frame.rsp = stack;
        }
        // SAFETY: `frame` is the trampoline's (clone is only reached from
        // `dispatch`), with the caller's fxsave image below it.
        let fx = unsafe { crate::kernel::sched::fx_of(frame) };
        let mut signals = self.proc().signals.clone();
        signals.pending = 0;
        signals.info = [Default::default(); crate::task::signal::NSIG];
        let parent = self.proc();
        let process = Process {
            fds: parent.fds.clone(),
            mm: if shares_vm {
                Mm::default()
            } else {
                parent.mm.clone()
            },
            space,
            cwd: parent.cwd.clone(),
            umask: parent.umask,
            creds: parent.creds.clone(),
            signals,
            exe_path: parent.exe_path.clone(),
            comm: parent.comm,
            personality: parent.personality,
            exited: None,
            timers: Default::default(),
            exec_session: None,
        };
        let thread = Thread {
            fs_base: if flags & CLONE_SETTLS != 0 {
                tls
            } else {
                self.thread().fs_base
            },
            sigmask: SigMask {
                mask: self.thread().sigmask.mask,
                altstack: self.thread().sigmask.altstack,
                saved_mask: None,
            },
            clear_child_tid: if flags & CLONE_CHILD_CLEARTID != 0 {
                child_tid
            } else {
                0
            },
            policy: self.thread().policy,
            ..Thread::default()
        };
        self.processes.insert(pid, process);
        if let Some(t) = self.procs.get_mut(pid) {
            t.ctx = Some(Box::new(Context {
                frame: child_frame,
                fx: *fx,
            }));
            t.thread = thread;
            if flags & CLONE_CHILD_SETTID != 0 {
                t.set_child_tid = child_tid;
            }
            if vfork {
                t.vfork_parent = Some(self.cur);
            }
        }
        if flags & CLONE_PARENT_SETTID != 0 {
            let _ = self.put_user(parent_tid, &pid.to_le_bytes());
        }
        if vfork {
            if let Some(t) = self.procs.get_mut(self.cur) {
                t.state = State::Blocked(Block::Vfork(pid));
            }
            self.vfork_child = Some(pid);
            self.switch_pending = true;
        } else {
            self.start_behind_parent();
        }
        Ok(pid as u64)
    }

    /// clone with CLONE_THREAD (glibc's pthread_create, after clone3 answers
    /// ENOSYS): a new task in the caller's group sharing everything but its
    /// registers, TLS base and tid words. It first runs when the caller
    /// blocks, yields or is preempted (see `crate::task::process`).
    fn clone_thread(
        &mut self,
        frame: &SyscallFrame,
        flags: u64,
        stack: u64,
        parent_tid: u64,
        child_tid: u64,
        tls: u64,
    ) -> Result<u64> {
        // Linux's own rules: a thread shares signal handlers, which need
        // shared memory; a thread sharing files and cwd is all we model.
        let needed = CLONE_VM | CLONE_SIGHAND | CLONE_FILES | CLONE_FS;
        if flags & needed != needed || flags & CLONE_VFORK != 0 {
            return Err(Errno::EINVAL);
        }
        let tgid = self.procs.tgid(self.cur);
        let ppid = self.procs.get(tgid).map_or(0, |t| t.ppid);
        let tid = self.procs.spawn(tgid)?;
        let mut child_frame = *frame;
        child_frame.rax = 0;
        if stack != 0 {
            child_frame.rsp = stack;
        }
        // SAFETY: `frame` is the trampoline's (clone is only reached from
        // `dispatch`), with the caller's fxsave image below it.
        let fx = unsafe { crate::kernel::sched::fx_of(frame) };
        // Memory, files and the rest are the process's; the signal mask is
        // the thread's own, inherited, and it starts without an alternate
        // stack, as on Linux.
        let thread = Thread {
            fs_base: if flags & CLONE_SETTLS != 0 {
                tls
            } else {
                self.thread().fs_base
            },
            clear_child_tid: if flags & CLONE_CHILD_CLEARTID != 0 {
                child_tid
            } else {
                0
            },
            sigmask: SigMask {
                mask: self.thread().sigmask.mask,
                ..SigMask::default()
            },
            policy: self.thread().policy,
            ..Thread::default()
        };
        if let Some(t) = self.procs.get_mut(tid) {
            t.tgid = tgid;
            t.ppid = ppid;
            t.ctx = Some(Box::new(Context {
                frame: child_frame,
                fx: *fx,
            }));
            t.thread = thread;
            if flags & CLONE_CHILD_SETTID != 0 {
                t.set_child_tid = child_tid;
            }
        }
        if flags & CLONE_PARENT_SETTID != 0 {
            let _ = self.put_user(parent_tid, &tid.to_le_bytes());
        }
        self.start_behind_parent();
        Ok(tid as u64)
    }

    fn user_strv(&mut self, ptr: u64) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        if ptr == 0 {
            return Ok(out);
        }
        let mut total = 0;
        for i in 0.. {
            let p = self.get_u64(ptr + 8 * i)?;
            if p == 0 {
                break;
            }
            let s = self.user_cstr(p)?;
            total += s.len() + 9;
            if total > MAX_ARGS {
                return Err(Errno::E2BIG);
            }
            out.push(s);
        }
        Ok(out)
    }

    /// Resolves `#!` scripts: the program to load and its arguments.
    fn resolve_exec(
        &mut self,
        mut path: Vec<u8>,
        mut args: Vec<Vec<u8>>,
    ) -> Result<(Vec<u8>, Vec<Vec<u8>>)> {
        for _ in 0..=MAX_SCRIPT_DEPTH {
            let w = self.walk_from_cwd(&path, true)?;
            if w.mode & crate::fs::fuse::S_IFMT != crate::fs::fuse::S_IFREG {
                return Err(Errno::EACCES);
            }
            // The permission bits as they are now (a walk's mode may come
            // from the name cache, from before a chmod).
            let attr = self.dev.vfs.fs(w.node.fs)?.getattr(w.node.id, None)?;
            if attr.mode & 0o111 == 0 {
                return Err(Errno::EACCES);
            }
            let file = self.open_for_exec(&path)?;
            let mut head = [0u8; 256];
            let n = file.read_at(&mut self.dev, &mut head, 0);
            file.release(&mut self.dev);
            let head = &head[..n?];
            if head.starts_with(b"\x7fELF") {
                return Ok((path, args));
            }
            if !head.starts_with(b"#!") {
                return Err(Errno::ENOEXEC);
            }
            let line = head[2..].split(|&b| b == b'\n').next().unwrap_or(&[]);
            let line: &[u8] = {
                let start = line
                    .iter()
                    .position(|&b| b != b' ' && b != b'\t')
                    .unwrap_or(line.len());
                let end = line
                    .iter()
                    .rposition(|&b| b != b' ' && b != b'\t' && b != b'\r')
                    .map_or(start, |e| e + 1);
                &line[start..end.max(start)]
            };
            if line.is_empty() {
                return Err(Errno::ENOEXEC);
            }
            let split = line.iter().position(|&b| b == b' ' || b == b'\t');
            let (interp, opt) = match split {
                Some(i) => {
                    let rest = &line[i..];
                    let s = rest
                        .iter()
                        .position(|&b| b != b' ' && b != b'\t')
                        .unwrap_or(rest.len());
                    (&line[..i], Some(&rest[s..]))
                }
                None => (line, None),
            };
            let mut new_args = vec![interp.to_vec()];
            if let Some(o) = opt.filter(|o| !o.is_empty()) {
                new_args.push(o.to_vec());
            }
            new_args.push(path.clone());
            new_args.extend(args.into_iter().skip(1));
            args = new_args;
            path = interp.to_vec();
        }
        Err(Errno::ELOOP)
    }

    pub fn sys_execve(
        &mut self,
        frame: &mut SyscallFrame,
        path: u64,
        argv: u64,
        envp: u64,
    ) -> Result<u64> {
        let path = self.user_cstr(path)?;
        self.exec(frame, path, argv, envp)
    }

    /// execveat: `path` from `dirfd`, or with `AT_EMPTY_PATH` and an empty
    /// path the file `dirfd` is open on (fexecve), which must be a file of
    /// the file system (not a pipe or socket: EACCES).
    pub fn sys_execveat(
        &mut self,
        frame: &mut SyscallFrame,
        dirfd: i32,
        path: u64,
        argv: u64,
        envp: u64,
        flags: u32,
    ) -> Result<u64> {
        use crate::syscalls::fs::{AT_EMPTY_PATH, AT_SYMLINK_NOFOLLOW};
        if flags & !(AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) != 0 {
            return Err(Errno::EINVAL);
        }
        let path = self.user_cstr(path)?;
        let program = if path.is_empty() {
            if flags & AT_EMPTY_PATH == 0 {
                return Err(Errno::ENOENT);
            }
            let file = self.proc().fds.file(dirfd)?;
            if file.node_key().is_none() || file.dir_path().is_some() {
                return Err(Errno::EACCES);
            }
            file.proc_name()
        } else {
            let absolute = self.absolute_at(dirfd, &path)?;
            if flags & AT_SYMLINK_NOFOLLOW != 0 {
                let w = self.walk_from_cwd(&absolute, false)?;
                if w.mode & crate::fs::fuse::S_IFMT == crate::fs::fuse::S_IFLNK {
                    return Err(Errno::ELOOP);
                }
            }
            absolute
        };
        self.exec(frame, program, argv, envp)
    }

    fn exec(
        &mut self,
        frame: &mut SyscallFrame,
        path: Vec<u8>,
        argv: u64,
        envp: u64,
    ) -> Result<u64> {
        let args = self.user_strv(argv)?;
        let env = self.user_strv(envp)?;
        let (program, args) = self.resolve_exec(path, args)?;
        // The point of no return: the old image goes away.
        let fresh = Space::new(&self.frames).map_err(|_| Errno::ENOMEM)?;
        // Robust mutexes the old image holds are marked before it goes
        // (Linux's exec_mm_release); the new image registers its own list.
        let cur = self.cur;
        let tgid = self.procs.tgid(cur);
        self.exit_robust_lists(tgid, &[cur]);
        // Linux's de_thread: the other threads die with the old image
        // (their robust mutexes marked first).
        let others = self.procs.threads(tgid);
        if cur == tgid && !others.is_empty() {
            self.exit_robust_lists(tgid, &others);
            self.end_threads(tgid);
        }
        let fresh_mm = Mm::new(self.frames.user_lo, self.frames.user_hi);
        let old_mm = core::mem::replace(&mut self.proc_mut().mm, fresh_mm);
        let old_space = self.proc_mut().space.replace(fresh);
        self.load_space();
        let vfork_parent = self
            .procs
            .get_mut(self.cur)
            .and_then(|t| t.vfork_parent.take());
        match vfork_parent {
            Some(parent) => self.return_vfork_memory(parent, old_mm, old_space),
            None => {
                let mut old_mm = old_mm;
                let maps = old_mm.files.take(0, u64::MAX);
                crate::kernel::mm::write_back(old_space.as_ref(), &mut self.dev, maps);
                let backing = core::mem::take(&mut old_mm.backing).into_values().collect();
                crate::kernel::mm::release_files(&mut self.dev, backing);
                if let Some(s) = old_space {
                    s.release(&self.frames);
                }
            }
        }
        crate::fs::pipe::bump();
        let (entry, sp) = match self.load_program(&program, &args, &env) {
            Ok(v) => v,
            Err(_) => {
                let cur = self.cur;
                self.terminate(
                    cur,
                    ExitStatus::Signaled {
                        signal: 11,
                        core: false,
                    },
                );
                return Ok(0);
            }
        };
        for fd in self.proc_mut().fds.take_cloexec() {
            if alloc::rc::Rc::strong_count(&fd.file) == 1 {
                fd.file.release(&mut self.dev);
            }
        }
        self.proc_mut().signals.reset_for_exec();
        let no_new_privs = self.spec.no_new_privileges;
        self.proc_mut().creds.fix_exec(no_new_privs);
        self.proc_mut().timers = Default::default();
        self.thread_mut().sigmask.reset_for_exec();
        self.thread_mut().fs_base = 0;
        arch::set_fs_base(0);
        self.thread_mut().clear_child_tid = 0;
        self.set_program_names(program);
        *frame = SyscallFrame {
            rip: entry,
            rsp: sp,
            rflags: 0x2,
            ..SyscallFrame::default()
        };
        // SAFETY: `frame` is the trampoline's, its fxsave image below it.
        *unsafe { crate::kernel::sched::fx_of(frame) } = FxArea::initial();
        Ok(0)
    }

    fn wait_for(&self, pid: i32) -> WaitFor {
        match pid {
            -1 => WaitFor::Any,
            0 => WaitFor::Group(self.procs.get(self.cur).map_or(0, |t| t.pgid)),
            p if p > 0 => WaitFor::Pid(p),
            p => WaitFor::Group(-p),
        }
    }

    /// Finds a zombie child: `Ok(Some)` reaped (unless `keep`), with its
    /// CPU time (its children's included), `Ok(None)` for WNOHANG with
    /// live children, EBLOCK to wait, ECHILD for none. Reaping adds that
    /// time to the caller's process's children's total.
    fn reap(
        &mut self,
        which: WaitFor,
        options: u32,
        keep: bool,
    ) -> Result<Option<(i32, ExitStatus, Times)>> {
        // Children belong to the process: any of its threads may wait.
        let cur = self.procs.tgid(self.cur);
        if let Some((pid, status)) = self.procs.zombie_child(cur, which) {
            let times = self
                .procs
                .get(pid)
                .map(|t| t.cpu + t.cpu_dead + t.cpu_children)
                .unwrap_or_default();
            if !keep {
                self.procs.remove(pid);
                if let Some(me) = self.procs.get_mut(cur) {
                    me.cpu_children += times;
                }
            }
            return Ok(Some((pid, status, times)));
        }
        if !self.procs.has_child(cur, which) {
            return Err(Errno::ECHILD);
        }
        if options & WNOHANG != 0 {
            return Ok(None);
        }
        Err(Errno::EBLOCK)
    }

    pub fn sys_wait4(&mut self, pid: i32, status: u64, options: u32, rusage: u64) -> Result<u64> {
        let which = self.wait_for(pid);
        let Some((child, st, times)) = self.reap(which, options, false)? else {
            return Ok(0);
        };
        if status != 0 {
            self.put_user(status, &st.wstatus().to_le_bytes())?;
        }
        if rusage != 0 {
            let r = self.rusage(times);
            self.put_user(rusage, &r)?;
        }
        Ok(child as u64)
    }

    /// pidfd_open: a descriptor for process `pid` (close-on-exec, as on
    /// Linux), readable once the process has exited.
    pub fn sys_pidfd_open(&mut self, pid: i32, flags: u32) -> Result<u64> {
        if flags & !O_NONBLOCK != 0 || pid <= 0 {
            return Err(Errno::EINVAL);
        }
        let task = self.procs.get(pid).ok_or(Errno::ESRCH)?;
        if task.tgid != pid {
            // A thread, not a process (Linux without PIDFD_THREAD).
            return Err(Errno::ENOENT);
        }
        let exited = match self.processes.get_mut(&pid) {
            Some(p) => p
                .exited
                .get_or_insert_with(|| Rc::new(Cell::new(false)))
                .clone(),
            // A zombie: it has exited already.
            None => Rc::new(Cell::new(true)),
        };
        let file = PidFd {
            pid,
            exited,
            flags: Cell::new(O_RDWR | flags),
        };
        self.install(Rc::new(file), true)
    }

    /// The process a pidfd refers to, and whether it has exited.
    fn pidfd_target(&self, fd: i32) -> Result<(i32, bool)> {
        let file = self.proc().fds.file(fd)?;
        let pidfd = file
            .as_any()
            .and_then(|a| a.downcast_ref::<PidFd>())
            .ok_or(Errno::EBADF)?;
        Ok((pidfd.pid, pidfd.exited.get()))
    }

    /// The process a `/proc/<pid>` directory descriptor names, which
    /// pidfd_send_signal takes as a pidfd too (EBADF for anything else).
    fn proc_dir_pid(&self, fd: i32) -> Result<i32> {
        let file = self.proc().fds.file(fd)?;
        let dir = file
            .as_any()
            .and_then(|a| a.downcast_ref::<crate::fs::procfs::ProcDir>())
            .ok_or(Errno::EBADF)?;
        let pid = dir.path.strip_prefix(b"/proc/").ok_or(Errno::EBADF)?;
        core::str::from_utf8(pid)
            .ok()
            .and_then(|p| p.parse().ok())
            .ok_or(Errno::EBADF)
    }

    fn pidfd_pid(&self, fd: i32) -> Result<i32> {
        self.pidfd_target(fd).map(|(pid, _)| pid)
    }

    /// pidfd_send_signal: kill(2) through a pidfd (no siginfo, no flags).
    /// A process that exited is never confused with a new one that got
    /// its pid: ESRCH.
    pub fn sys_pidfd_send_signal(
        &mut self,
        fd: i32,
        sig: u32,
        info: u64,
        flags: u32,
    ) -> Result<u64> {
        if flags != 0 || info != 0 {
            return Err(Errno::EINVAL);
        }
        let (pid, exited) = match self.pidfd_target(fd) {
            Err(Errno::EBADF) => (self.proc_dir_pid(fd)?, false),
            other => other?,
        };
        if exited && self.processes.contains_key(&pid) {
            return Err(Errno::ESRCH);
        }
        self.sys_kill(pid, sig)
    }

    pub fn sys_waitid(
        &mut self,
        idtype: u32,
        id: u64,
        info: u64,
        options: u32,
        rusage: u64,
    ) -> Result<u64> {
        let which = match idtype {
            P_ALL => WaitFor::Any,
            P_PID => WaitFor::Pid(id as i32),
            P_PGID if id == 0 => self.wait_for(0),
            P_PGID => WaitFor::Group(id as i32),
            P_PIDFD => WaitFor::Pid(self.pidfd_pid(id as i32)?),
            _ => return Err(Errno::EINVAL),
        };
        if options & WEXITED == 0 {
            return Err(Errno::EINVAL);
        }
        let found = self.reap(which, options, options & WNOWAIT != 0)?;
        if info != 0 {
            let mut si = [0u8; 128];
            if let Some((pid, st, _)) = found {
                let (code, value) = st.siginfo();
                si[0..4].copy_from_slice(&17i32.to_le_bytes());
                si[8..12].copy_from_slice(&code.to_le_bytes());
                si[16..20].copy_from_slice(&pid.to_le_bytes());
                si[20..24].copy_from_slice(&self.proc_mut().creds.uid.to_le_bytes());
                si[24..28].copy_from_slice(&value.to_le_bytes());
            }
            self.put_user(info, &si)?;
        }
        // As Linux, the rusage is written only when a child was found.
        if let (Some((_, _, times)), true) = (found, rusage != 0) {
            let r = self.rusage(times);
            self.put_user(rusage, &r)?;
        }
        Ok(0)
    }

    /// The tasks `which`/`who` name for get/setpriority.
    fn priority_targets(&self, which: u32, who: i32) -> Result<Vec<i32>> {
        const PRIO_PROCESS: u32 = 0;
        const PRIO_PGRP: u32 = 1;
        const PRIO_USER: u32 = 2;
        let me = self.procs.get(self.cur);
        let targets: Vec<i32> = match which {
            PRIO_PROCESS => vec![if who == 0 { self.cur } else { who }],
            PRIO_PGRP => {
                let group = if who == 0 {
                    me.map_or(0, |t| t.pgid)
                } else {
                    who
                };
                self.procs
                    .pids()
                    .into_iter()
                    .filter(|&p| self.procs.get(p).is_some_and(|t| t.pgid == group))
                    .collect()
            }
            // One user owns every process of the VM unless ids changed;
            // credentials of other processes are their own, so only the
            // caller's own uid is matched exactly.
            PRIO_USER if who == 0 || who as u32 == self.proc().creds.uid => self.procs.pids(),
            PRIO_USER => Vec::new(),
            _ => return Err(Errno::EINVAL),
        };
        let alive: Vec<i32> = targets
            .into_iter()
            .filter(|&p| {
                self.procs
                    .get(p)
                    .is_some_and(|t| !matches!(t.state, crate::task::process::State::Zombie(_)))
            })
            .collect();
        if alive.is_empty() {
            return Err(Errno::ESRCH);
        }
        Ok(alive)
    }

    /// getpriority: the best (lowest) nice of the targets, as `20 - nice`
    /// (the raw system call's encoding).
    pub fn sys_getpriority(&mut self, which: u32, who: i32) -> Result<u64> {
        let targets = self.priority_targets(which, who)?;
        let nice = targets
            .iter()
            .filter_map(|&p| self.procs.get(p).map(|t| t.nice))
            .min()
            .unwrap_or(0);
        Ok((20 - nice) as u64)
    }

    /// setpriority: only a privileged caller may lower a nice value.
    pub fn sys_setpriority(&mut self, which: u32, who: i32, prio: i32) -> Result<u64> {
        let nice = prio.clamp(-20, 19);
        let privileged = self.capable(CAP_SYS_NICE);
        for p in self.priority_targets(which, who)? {
            if let Some(t) = self.procs.get_mut(p) {
                if nice < t.nice && !privileged {
                    return Err(Errno::EACCES);
                }
                t.nice = nice;
            }
        }
        Ok(0)
    }

    pub fn sys_getppid(&mut self) -> Result<u64> {
        // The process's parent, whichever thread asks.
        let tgid = self.procs.tgid(self.cur);
        Ok(self.procs.get(tgid).map_or(0, |t| t.ppid) as u64)
    }

    pub fn sys_setpgid(&mut self, pid: i32, pgid: i32) -> Result<u64> {
        let cur = self.cur;
        self.procs.setpgid(cur, pid, pgid).map(|_| 0)
    }

    pub fn sys_getpgid(&mut self, pid: i32) -> Result<u64> {
        let pid = if pid == 0 { self.cur } else { pid };
        self.procs
            .get(pid)
            .map(|t| t.pgid as u64)
            .ok_or(Errno::ESRCH)
    }

    pub fn sys_getsid(&mut self, pid: i32) -> Result<u64> {
        let pid = if pid == 0 { self.cur } else { pid };
        self.procs
            .get(pid)
            .map(|t| t.sid as u64)
            .ok_or(Errno::ESRCH)
    }

    pub fn sys_setsid(&mut self) -> Result<u64> {
        let cur = self.cur;
        self.procs.setsid(cur).map(|p| p as u64)
    }

    pub fn sys_set_tid_address(&mut self, ptr: u64) -> Result<u64> {
        self.thread_mut().clear_child_tid = ptr;
        Ok(self.cur as u64)
    }

    pub fn sys_uname(&mut self, out: u64) -> Result<u64> {
        let mut u = [0u8; 65 * 6];
        let fields: [&[u8]; 6] = [
            crate::kernel::OS_TYPE,
            self.hostname(),
            crate::kernel::OS_RELEASE,
            crate::kernel::OS_VERSION,
            b"x86_64",
            self.domainname(),
        ];
        for (i, f) in fields.iter().enumerate() {
            let n = f.len().min(64);
            u[i * 65..i * 65 + n].copy_from_slice(&f[..n]);
        }
        self.put_user(out, &u)?;
        Ok(0)
    }

    /// Whether the caller's effective set holds `cap`.
    pub(crate) fn capable(&self, cap: u32) -> bool {
        self.proc().creds.capable(cap)
    }

    pub fn sys_setresuid(&mut self, r: u32, e: u32, s: u32) -> Result<u64> {
        let c = &self.proc_mut().creds;
        let [uid, euid, suid] =
            set_res([c.uid, c.euid, c.suid], [r, e, s], self.capable(CAP_SETUID))?;
        let old = self.proc().creds.clone();
        let c = &mut self.proc_mut().creds;
        (c.uid, c.euid, c.suid, c.fsuid) = (uid, euid, suid, euid);
        c.fix_setuid(&old);
        Ok(0)
    }

    pub fn sys_setresgid(&mut self, r: u32, e: u32, s: u32) -> Result<u64> {
        let c = &self.proc_mut().creds;
        let [gid, egid, sgid] =
            set_res([c.gid, c.egid, c.sgid], [r, e, s], self.capable(CAP_SETGID))?;
        let c = &mut self.proc_mut().creds;
        (c.gid, c.egid, c.sgid, c.fsgid) = (gid, egid, sgid, egid);
        Ok(0)
    }

    /// setfsuid/setfsgid: sets the file-system id to one of the caller's
    /// ids (any, when privileged); always returns the previous one, also
    /// when refusing (as Linux, which reports no error).
    pub fn sys_setfsid(&mut self, id: u32, group: bool) -> Result<u64> {
        let privileged = self.capable(if group { CAP_SETGID } else { CAP_SETUID });
        let c = &mut self.proc_mut().creds;
        let old_fsuid = c.fsuid;
        let (ids, fs) = if group {
            ([c.gid, c.egid, c.sgid, c.fsgid], &mut c.fsgid)
        } else {
            ([c.uid, c.euid, c.suid, c.fsuid], &mut c.fsuid)
        };
        let old = *fs;
        if id != u32::MAX && (privileged || ids.contains(&id)) {
            *fs = id;
        }
        c.fix_setfsuid(old_fsuid);
        Ok(u64::from(old))
    }

    pub fn sys_getresuid(&mut self, r: u64, e: u64, s: u64, group: bool) -> Result<u64> {
        let c = &self.proc_mut().creds;
        let ids = if group {
            [c.gid, c.egid, c.sgid]
        } else {
            [c.uid, c.euid, c.suid]
        };
        for (ptr, id) in [r, e, s].into_iter().zip(ids) {
            self.put_user(ptr, &id.to_le_bytes())?;
        }
        Ok(0)
    }

    pub fn sys_getgroups(&mut self, size: i32, list: u64) -> Result<u64> {
        let n = self.proc_mut().creds.groups.len();
        if size == 0 {
            return Ok(n as u64);
        }
        if (size as usize) < n || size < 0 {
            return Err(Errno::EINVAL);
        }
        let bytes: alloc::vec::Vec<u8> = self
            .proc_mut()
            .creds
            .groups
            .iter()
            .flat_map(|g| g.to_le_bytes())
            .collect();
        self.put_user(list, &bytes)?;
        Ok(n as u64)
    }

    pub fn sys_setgroups(&mut self, size: u64, list: u64) -> Result<u64> {
        if !self.capable(CAP_SETGID) {
            return Err(Errno::EPERM);
        }
        if size > 65536 {
            return Err(Errno::EINVAL);
        }
        let raw = self.user_buf(list, size as usize * 4)?;
        self.proc_mut().creds.groups = raw
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Ok(0)
    }

    pub fn sys_umask(&mut self, mask: u32) -> u64 {
        let old = self.proc_mut().umask;
        self.proc_mut().umask = mask & 0o777;
        u64::from(old)
    }

    pub fn sys_prlimit(&mut self, pid: i32, resource: u32, new: u64, old: u64) -> Result<u64> {
        if pid != 0 && pid != 1 {
            return Err(Errno::ESRCH);
        }
        let r = resource as usize;
        if r >= RLIMIT_COUNT {
            return Err(Errno::EINVAL);
        }
        let current = self.spec.rlimits[r];
        if new != 0 {
            let b = self.user_buf(new, 16)?;
            let soft = u64::from_le_bytes(b[..8].try_into().map_err(|_| Errno::EFAULT)?);
            let hard = u64::from_le_bytes(b[8..].try_into().map_err(|_| Errno::EFAULT)?);
            if soft > hard {
                return Err(Errno::EINVAL);
            }
            if hard > current.1 && !self.capable(CAP_SYS_RESOURCE) {
                return Err(Errno::EPERM);
            }
            self.spec.rlimits[r] = (soft, hard);
        }
        if old != 0 {
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&current.0.to_le_bytes());
            b[8..].copy_from_slice(&current.1.to_le_bytes());
            self.put_user(old, &b)?;
        }
        Ok(0)
    }

    pub fn sys_sched_getaffinity(&mut self, pid: i32, len: u64, mask: u64) -> Result<u64> {
        self.sched_target(pid, Errno::ESRCH)?;
        if len < 8 || !len.is_multiple_of(8) {
            return Err(Errno::EINVAL);
        }
        let mut m = vec![0u8; len.min(128) as usize];
        m[0] = 1;
        self.put_user(mask, &m)?;
        Ok(m.len() as u64)
    }

    /// The task a sched_* call names: 0 is the caller, and a pid of no
    /// task (a zombie still is one) is ESRCH, as Linux's
    /// `find_process_by_pid`. A negative pid is EINVAL for the policy and
    /// parameter calls, ESRCH for the affinity ones.
    fn sched_target(&self, pid: i32, negative: Errno) -> Result<Pid> {
        if pid < 0 {
            return Err(negative);
        }
        let pid = if pid == 0 { self.cur } else { pid };
        self.procs.get(pid).map(|_| pid).ok_or(Errno::ESRCH)
    }

    /// A `struct sched_param`'s priority.
    fn sched_param(&mut self, param: u64) -> Result<u32> {
        if param == 0 {
            return Err(Errno::EINVAL);
        }
        let raw = self.user_buf(param, 4)?;
        Ok(u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]))
    }

    /// sched_setscheduler: the normal policies (OTHER, BATCH, IDLE) with
    /// priority 0 are recorded; the real-time ones (FIFO, RR) need
    /// CAP_SYS_NICE or an RLIMIT_RTPRIO, which no process here has (EPERM,
    /// as in a container with Docker's capabilities). Checked as Linux
    /// checks: the pid, the policy and the priority's range first.
    pub fn sys_sched_setscheduler(&mut self, pid: i32, policy: u32, param: u64) -> Result<u64> {
        let target = self.sched_target(pid, Errno::EINVAL)?;
        let priority = self.sched_param(param)?;
        let policy = policy & !SCHED_RESET_ON_FORK;
        let (min, max) = sched_priority_range(policy)?;
        if !(min..=max).contains(&u64::from(priority)) {
            return Err(Errno::EINVAL);
        }
        if policy == SCHED_FIFO || policy == SCHED_RR {
            return Err(Errno::EPERM);
        }
        if let Some(t) = self.procs.get_mut(target) {
            t.thread.policy = policy;
        }
        Ok(0)
    }

    pub fn sys_sched_getscheduler(&mut self, pid: i32) -> Result<u64> {
        let target = self.sched_target(pid, Errno::EINVAL)?;
        Ok(self
            .procs
            .get(target)
            .map_or(0, |t| u64::from(t.thread.policy)))
    }

    /// sched_setparam: a normal policy's only priority is 0.
    pub fn sys_sched_setparam(&mut self, pid: i32, param: u64) -> Result<u64> {
        self.sched_target(pid, Errno::EINVAL)?;
        match self.sched_param(param)? {
            0 => Ok(0),
            _ => Err(Errno::EINVAL),
        }
    }

    pub fn sys_sched_getparam(&mut self, pid: i32, param: u64) -> Result<u64> {
        if param == 0 {
            return Err(Errno::EINVAL);
        }
        self.sched_target(pid, Errno::EINVAL)?;
        self.put_user(param, &0u32.to_le_bytes())?;
        Ok(0)
    }

    /// sched_rr_get_interval: the time slice a task that does not block
    /// gets (`kernel::sched`).
    pub fn sys_sched_rr_get_interval(&mut self, pid: i32, tp: u64) -> Result<u64> {
        self.sched_target(pid, Errno::EINVAL)?;
        let slice = crate::kernel::sched::TIME_SLICE_NS;
        self.put_user(tp, &crate::syscalls::time::timespec(slice))?;
        Ok(0)
    }

    /// sched_setaffinity: the one vCPU is CPU 0, so a mask must include it
    /// (EINVAL otherwise, as Linux answers for a mask of no usable CPU).
    pub fn sys_sched_setaffinity(&mut self, pid: i32, len: u64, mask: u64) -> Result<u64> {
        self.sched_target(pid, Errno::ESRCH)?;
        if len == 0 {
            return Err(Errno::EINVAL);
        }
        let first = self.user_buf(mask, 1)?[0];
        if first & 1 == 0 {
            return Err(Errno::EINVAL);
        }
        Ok(0)
    }

    /// personality: the execution domain is recorded and reported; only
    /// Linux's own (`PER_LINUX`, with any flags, e.g. ADDR_NO_RANDOMIZE,
    /// whose effect the guest's fixed layout already has) is accepted.
    pub fn sys_personality(&mut self, persona: u32) -> Result<u64> {
        let old = self.proc_mut().personality;
        if persona != u32::MAX {
            if persona & 0xff != 0 {
                return Err(Errno::EINVAL);
            }
            self.proc_mut().personality = persona;
        }
        Ok(u64::from(old))
    }

    pub fn sys_getcpu(&mut self, cpu: u64, node: u64) -> Result<u64> {
        for ptr in [cpu, node] {
            if ptr != 0 {
                self.put_user(ptr, &0u32.to_le_bytes())?;
            }
        }
        Ok(0)
    }

    pub fn sys_sysinfo(&mut self, out: u64) -> Result<u64> {
        let mut s = [0u8; 112];
        let free = self.frames.available() * crate::mm::PAGE_SIZE;
        let fields: [(usize, u64); 4] = [
            (0, self.clock.since_boot_ns() / 1_000_000_000),
            (32, self.ram_size),
            (40, free),
            (48, 0),
        ];
        for (at, v) in fields {
            s[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
        s[80..82].copy_from_slice(&1u16.to_le_bytes()); // procs
        s[104..108].copy_from_slice(&1u32.to_le_bytes()); // mem_unit
        self.put_user(out, &s)?;
        Ok(0)
    }

    pub fn sys_prctl(&mut self, option: u32, arg: u64, arg3: u64) -> Result<u64> {
        let cap = |n: u64| -> Result<u32> {
            u32::try_from(n)
                .ok()
                .filter(|c| *c <= CAP_LAST_CAP)
                .ok_or(Errno::EINVAL)
        };
        match option {
            PR_GET_KEEPCAPS => Ok(u64::from(self.proc().creds.keep_caps)),
            PR_SET_KEEPCAPS if arg <= 1 => {
                self.proc_mut().creds.keep_caps = arg == 1;
                Ok(0)
            }
            PR_CAPBSET_READ => Ok((self.proc().creds.caps.bounding >> cap(arg)?) & 1),
            PR_CAPBSET_DROP => {
                let c = cap(arg)?;
                if !self.capable(CAP_SETPCAP) {
                    return Err(Errno::EPERM);
                }
                self.proc_mut().creds.caps.bounding &= !(1 << c);
                Ok(0)
            }
            PR_CAP_AMBIENT => {
                let creds = &mut self.proc_mut().creds;
                match arg {
                    PR_CAP_AMBIENT_IS_SET => Ok((creds.caps.ambient >> cap(arg3)?) & 1),
                    PR_CAP_AMBIENT_RAISE => {
                        if creds.raise_ambient(cap(arg3)?) {
                            Ok(0)
                        } else {
                            Err(Errno::EPERM)
                        }
                    }
                    PR_CAP_AMBIENT_LOWER => {
                        creds.caps.ambient &= !(1 << cap(arg3)?);
                        Ok(0)
                    }
                    PR_CAP_AMBIENT_CLEAR_ALL => {
                        creds.caps.ambient = 0;
                        Ok(0)
                    }
                    _ => Err(Errno::EINVAL),
                }
            }
            PR_SET_NAME => {
                let name = self
                    .user_cstr(arg)
                    .or_else(|_| self.user_buf(arg, 16).map(|b| b.to_vec()))?;
                let n = name.len().min(15);
                self.proc_mut().comm = [0; 16];
                self.proc_mut().comm[..n].copy_from_slice(&name[..n]);
                Ok(0)
            }
            PR_GET_NAME => {
                let comm = self.proc_mut().comm;
                self.put_user(arg, &comm)?;
                Ok(0)
            }
            PR_SET_NO_NEW_PRIVS => {
                self.spec.no_new_privileges = true;
                Ok(0)
            }
            PR_GET_NO_NEW_PRIVS => Ok(u64::from(self.spec.no_new_privileges)),
            PR_SET_PDEATHSIG | PR_SET_DUMPABLE => Ok(0),
            PR_GET_PDEATHSIG => {
                self.put_user(arg, &0u32.to_le_bytes())?;
                Ok(0)
            }
            PR_GET_DUMPABLE => Ok(1),
            _ => Err(Errno::EINVAL),
        }
    }

    /// capget: the sets of the caller (pid 0) or of process `pid`. An
    /// unknown version is answered with the preferred one and EINVAL (a
    /// NULL data pointer with it is how libcap asks).
    pub fn sys_capget(&mut self, header: u64, data: u64) -> Result<u64> {
        let (halves, pid) = self.cap_header(header)?;
        if data == 0 {
            return Ok(0);
        }
        let tgid = if pid == 0 {
            self.procs.tgid(self.cur)
        } else {
            pid
        };
        let caps = self
            .processes
            .get(&self.procs.tgid(tgid))
            .filter(|_| self.procs.get(tgid).is_some())
            .map(|p| p.creds.caps)
            .ok_or(Errno::ESRCH)?;
        let mut out = Vec::with_capacity(24);
        for half in 0..halves {
            for set in [caps.effective, caps.permitted, caps.inheritable] {
                out.extend_from_slice(&((set >> (32 * half)) as u32).to_le_bytes());
            }
        }
        self.put_user(data, &out)?;
        Ok(0)
    }

    /// capset: the caller's own sets, by capset(2)'s rules.
    pub fn sys_capset(&mut self, header: u64, data: u64) -> Result<u64> {
        let (halves, pid) = self.cap_header(header)?;
        if pid != 0 && pid != self.procs.tgid(self.cur) {
            return Err(Errno::EPERM);
        }
        let raw = self.user_buf(data, 12 * halves)?.to_vec();
        let mut sets = [0u64; 3];
        for half in 0..halves {
            for (i, set) in sets.iter_mut().enumerate() {
                let at = 12 * half + 4 * i;
                let word = u32::from_le_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]]);
                *set |= u64::from(word) << (32 * half);
            }
        }
        let [effective, permitted, inheritable] = sets;
        if self
            .proc_mut()
            .creds
            .set_caps(effective, permitted, inheritable)
        {
            Ok(0)
        } else {
            Err(Errno::EPERM)
        }
    }

    /// The number of 32-bit halves a capget/capset header's version
    /// carries, and its pid.
    fn cap_header(&mut self, header: u64) -> Result<(usize, i32)> {
        let raw = self.user_buf(header, 8)?.to_vec();
        let version = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
        let pid = i32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]);
        let halves = match version {
            CAP_VERSION_1 => 1,
            CAP_VERSION_2 | CAP_VERSION_3 => 2,
            _ => {
                self.put_user(header, &CAP_VERSION_3.to_le_bytes())?;
                return Err(Errno::EINVAL);
            }
        };
        if pid < 0 {
            return Err(Errno::EINVAL);
        }
        Ok((halves, pid))
    }

    pub fn sys_arch_prctl(&mut self, code: u32, addr: u64) -> Result<u64> {
        match code {
            ARCH_SET_FS => {
                if addr >= 1 << 47 {
                    return Err(Errno::EPERM);
                }
                arch::set_fs_base(addr);
                self.thread_mut().fs_base = addr;
                Ok(0)
            }
            ARCH_GET_FS => {
                let base = self.thread_mut().fs_base;
                self.put_user(addr, &base.to_le_bytes())?;
                Ok(0)
            }
            ARCH_SET_GS | ARCH_GET_GS => Err(Errno::EINVAL),
            _ => Err(Errno::EINVAL),
        }
    }

    /// One thread: a wait on a value that still matches could never be
    /// woken, so it reports a timeout (or EAGAIN when the value changed).
    /// futex: WAIT, WAKE, REQUEUE, CMP_REQUEUE, WAIT_BITSET, WAKE_BITSET,
    /// private or not (the same thing here, see `crate::task::futex`). A waiter
    /// blocks in a restartable call and learns on each retry whether a
    /// wake reached it.
    pub fn sys_futex(
        &mut self,
        addr: u64,
        op: u32,
        val: u32,
        timeout: u64,
        addr2: u64,
        val3: u32,
    ) -> Result<u64> {
        let cur = self.cur;
        if !addr.is_multiple_of(4) {
            return Err(Errno::EINVAL);
        }
        let (group, key) = self.futex_key(addr, op);
        let word = |k: &mut Self, a: u64| -> Result<u32> {
            let b = k.user_buf(a, 4)?;
            Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        let cmd = op & !(futex::FUTEX_PRIVATE_FLAG | futex::FUTEX_CLOCK_REALTIME);
        match cmd {
            futex::FUTEX_WAIT | futex::FUTEX_WAIT_BITSET => {
                let bitset = if cmd == futex::FUTEX_WAIT {
                    futex::BITSET_MATCH_ANY
                } else {
                    val3
                };
                if bitset == 0 {
                    return Err(Errno::EINVAL);
                }
                match self.futexes.state(cur) {
                    futex::Wait::Woken => return Ok(0),
                    futex::Wait::Queued => {}
                    futex::Wait::First => {
                        if word(self, addr)? != val {
                            return Err(Errno::EAGAIN);
                        }
                        if timeout != 0 {
                            let ns = self.timespec_ns(timeout)?;
                            let mono = self.clock.monotonic_ns();
                            // FUTEX_WAIT's timeout is relative; the bitset
                            // form's is absolute, on the realtime clock when
                            // FUTEX_CLOCK_REALTIME asks for it.
                            let until = if cmd == futex::FUTEX_WAIT {
                                mono.saturating_add(ns)
                            } else if op & futex::FUTEX_CLOCK_REALTIME != 0 {
                                let now = self.clock.realtime_ns();
                                mono.saturating_add(ns.saturating_sub(now))
                            } else {
                                ns
                            };
                            self.thread_mut().restart_deadline = Some(until);
                        }
                        self.futexes.enqueue(cur, group, key, bitset);
                    }
                }
                if let Some(until) = self.thread_mut().restart_deadline {
                    if self.clock.monotonic_ns() >= until {
                        self.futexes.forget(cur);
                        return Err(Errno::ETIMEDOUT);
                    }
                    self.block_deadline = Some(until);
                }
                Err(Errno::EBLOCK)
            }
            futex::FUTEX_WAKE | futex::FUTEX_WAKE_BITSET => {
                let bitset = if cmd == futex::FUTEX_WAKE {
                    futex::BITSET_MATCH_ANY
                } else {
                    val3
                };
                if bitset == 0 {
                    return Err(Errno::EINVAL);
                }
                let n = self.futexes.wake(group, key, val, bitset);
                if n > 0 {
                    crate::fs::pipe::bump();
                }
                Ok(u64::from(n))
            }
            futex::FUTEX_REQUEUE | futex::FUTEX_CMP_REQUEUE => {
                if cmd == futex::FUTEX_CMP_REQUEUE && word(self, addr)? != val3 {
                    return Err(Errno::EAGAIN);
                }
                if !addr2.is_multiple_of(4) {
                    return Err(Errno::EINVAL);
                }
                // The fourth argument is a count here, not a timeout.
                let moved = u32::try_from(timeout).unwrap_or(u32::MAX);
                let (group2, key2) = self.futex_key(addr2, op);
                if group2 != group {
                    // Requeueing between private and shared memory is
                    // not something Linux allows either.
                    return Err(Errno::EINVAL);
                }
                let n = self.futexes.requeue(group, key, val, key2, moved);
                crate::fs::pipe::bump();
                Ok(u64::from(n))
            }
            _ => Err(Errno::ENOSYS),
        }
    }

    /// The futex the word at `addr` is, as `(group, key)`: in private
    /// memory `(thread group, address)`; in `MAP_SHARED` memory, which other
    /// processes may map too, `(0, guest-physical address)`, unless the
    /// caller promises with `FUTEX_PRIVATE_FLAG` that only its threads use it.
    pub fn futex_key(&self, addr: u64, op: u32) -> (Pid, u64) {
        let shared = op & futex::FUTEX_PRIVATE_FLAG == 0
            && self.proc().mm.vmas.get(addr).is_some_and(|(_, v)| v.shared);
        if let Some(pa) = crate::mm::space::physical(addr).filter(|_| shared) {
            return (0, pa);
        }
        (self.procs.tgid(self.cur), addr)
    }

    /// sched_yield: the caller stays runnable and the next runnable task
    /// (thread or process, round robin) runs first.
    pub fn sys_sched_yield(&mut self) -> u64 {
        self.yield_now();
        0
    }

    /// set_robust_list: recorded per thread; walked when the thread exits,
    /// dies with its process or execs (`Kernel::exit_robust_lists`).
    pub fn sys_set_robust_list(&mut self, head: u64, len: u64) -> Result<u64> {
        if len != futex::ROBUST_LIST_HEAD_SIZE {
            return Err(Errno::EINVAL);
        }
        self.thread_mut().robust_list = head;
        Ok(0)
    }

    pub fn sys_get_robust_list(&mut self, tid: i32, head: u64, len: u64) -> Result<u64> {
        let tid = if tid == 0 { self.cur } else { tid };
        let value = self
            .procs
            .get(tid)
            .map(|t| t.thread.robust_list)
            .ok_or(Errno::ESRCH)?;
        self.put_user(head, &value.to_le_bytes())?;
        self.put_user(len, &24u64.to_le_bytes())?;
        Ok(0)
    }

    pub fn sys_getrandom(&mut self, buf: u64, len: u64) -> Result<u64> {
        let out = self.user_buf_mut(buf, len as usize)?;
        self.dev.rng.fill(out);
        Ok(len)
    }
}

/// setresuid/setresgid semantics over (real, effective, saved): `u32::MAX`
/// keeps a value; without privilege each new value must be one of the
/// current three.
fn set_res(current: [u32; 3], requested: [u32; 3], privileged: bool) -> Result<[u32; 3]> {
    let allowed = |id: u32| id == u32::MAX || current.contains(&id);
    if !privileged && !requested.iter().all(|id| allowed(*id)) {
        return Err(Errno::EPERM);
    }
    let mut next = current;
    for (slot, id) in next.iter_mut().zip(requested) {
        if id != u32::MAX {
            *slot = id;
        }
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_res_keeps_unset_ids_and_checks_privilege() {
        assert_eq!(
            set_res([1, 2, 3], [u32::MAX, 3, u32::MAX], false),
            Ok([1, 3, 3])
        );
        assert_eq!(
            set_res([1, 2, 3], [9, u32::MAX, u32::MAX], false),
            Err(Errno::EPERM)
        );
        assert_eq!(set_res([0, 0, 0], [9, 9, 9], true), Ok([9, 9, 9]));
    }
}
