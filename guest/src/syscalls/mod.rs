//! The Linux x86-64 system call interface: the entry from the trampoline
//! and the dispatch by number. Each submodule implements one area on
//! `Kernel`: decode the arguments, call the subsystem, encode the result.

pub mod event;
pub mod fs;
pub mod mm;
pub mod net;
pub mod process;
pub mod signal;
pub mod time;
pub mod tty;

use core::fmt::Write as _;

use crate::arch::{self, SyscallFrame};
use crate::errno::{Errno, Result};
use crate::kernel::{Kernel, MsgBuf};

/// Entry from `capsa_syscall_user`.
pub fn entry(frame: &mut SyscallFrame) {
    let k = crate::kernel::kernel();
    k.meter.enter_kernel(k.clock.cpu_ticks());
    // SAFETY: `frame` is the trampoline's frame, with its fxsave image below.
    let fx = unsafe { crate::kernel::sched::fx_of(frame) };
    let nr = frame.rax;
    let ret = k.dispatch(frame);
    if k.oom_pending.get() {
        k.out_of_memory();
    }
    k.finish_syscall(frame, fx, nr, ret);
    k.meter.leave_kernel(k.clock.cpu_ticks());
    if frame.needs_full_return() {
        // A signal handler's return, or a switch to a task that was
        // interrupted by a fault: the trampoline's return would lose rcx/r11.
        crate::arch::return_user(frame, fx)
    }
}

impl Kernel {
    pub fn dispatch(&mut self, f: &mut SyscallFrame) -> i64 {
        let (a0, a1, a2, a3, a4, a5) = (f.rdi, f.rsi, f.rdx, f.r10, f.r8, f.r9);
        let nr = f.rax;
        let result: Result<u64> = match nr {
            0 => self.sys_read(a0 as i32, a1, a2),
            1 => self.sys_write(a0 as i32, a1, a2),
            2 => self.sys_openat(fs::AT_FDCWD, a0, a1 as u32, a2 as u32),
            3 => self.sys_close(a0 as i32),
            4 => self.sys_fstatat(fs::AT_FDCWD, a0, a1, 0),
            5 => self.sys_fstat(a0 as i32, a1),
            6 => self.sys_fstatat(fs::AT_FDCWD, a0, a1, fs::AT_SYMLINK_NOFOLLOW),
            7 => self.sys_poll(a0, a1, a2 as i32 as i64),
            8 => self.sys_lseek(a0 as i32, a1 as i64, a2 as u32),
            9 => self.sys_mmap(a0, a1, a2 as u32, a3 as u32, a4 as i32, a5),
            10 => self.sys_mprotect(a0, a1, a2 as u32),
            11 => self.sys_munmap(a0, a1),
            12 => Ok(self.sys_brk(a0)),
            15 => self.sys_rt_sigreturn(f),
            13 => self.sys_rt_sigaction(a0 as u32, a1, a2, a3),
            14 => self.sys_rt_sigprocmask(a0 as u32, a1, a2, a3),
            16 => self.sys_ioctl(a0 as i32, a1 as u32, a2),
            17 => self.sys_pread(a0 as i32, a1, a2, a3),
            18 => self.sys_pwrite(a0 as i32, a1, a2, a3),
            19 => self.sys_readv(a0 as i32, a1, a2, None),
            20 => self.sys_writev(a0 as i32, a1, a2, None),
            21 => self.sys_faccessat(fs::AT_FDCWD, a0, a1 as u32),
            23 => self.sys_select(a0 as i32, a1, a2, a3, a4),
            24 => Ok(self.sys_sched_yield()),
            25 => self.sys_mremap(a0, a1, a2, a3 as u32, a4),
            26 => self.sys_msync(a0, a1, a2 as u32),
            28 => self.sys_madvise(a0, a1, a2 as u32),
            22 => self.sys_pipe2(a0, 0),
            32 => self.sys_dup(a0 as i32),
            34 => self.sys_pause(),
            33 => self.sys_dup3(a0 as i32, a1 as i32, 0, true),
            35 => self.sys_nanosleep(a0, a1),
            36 => self.sys_getitimer(a0 as u32, a1),
            37 => self.sys_alarm(a0 as u32),
            38 => self.sys_setitimer(a0 as u32, a1, a2),
            39 => Ok(self.procs.tgid(self.cur) as u64),
            186 => Ok(self.cur as u64),
            40 => self.sys_sendfile(a0 as i32, a1 as i32, a2, a3),
            275 => self.sys_splice(a0 as i32, a1, a2 as i32, a3, a4, a5 as u32),
            326 => self.sys_copy_file_range(a0 as i32, a1, a2 as i32, a3, a4, a5 as u32),
            41 => self.sys_socket(a0 as u32, a1 as u32, a2 as u32),
            42 => self.sys_connect(a0 as i32, a1, a2 as u32),
            43 => self.sys_accept4(a0 as i32, a1, a2, 0),
            288 => self.sys_accept4(a0 as i32, a1, a2, a3 as u32),
            44 => self.sys_sendto(a0 as i32, a1, a2, a3 as u32, a4, a5 as u32),
            45 => self.sys_recvfrom(a0 as i32, a1, a2, a3 as u32, a4, a5),
            46 => self.sys_sendmsg(a0 as i32, a1, a2 as u32),
            47 => self.sys_recvmsg(a0 as i32, a1, a2 as u32),
            307 => self.sys_sendmmsg(a0 as i32, a1, a2 as u32, a3 as u32),
            299 => self.sys_recvmmsg(a0 as i32, a1, a2 as u32, a3 as u32, a4),
            48 => self.sys_shutdown(a0 as i32, a1 as u32),
            49 => self.sys_bind(a0 as i32, a1, a2 as u32),
            50 => self.sys_listen(a0 as i32, a1 as i32),
            51 => self.sys_getsockname(a0 as i32, a1, a2),
            52 => self.sys_getpeername(a0 as i32, a1, a2),
            53 => self.sys_socketpair(a0 as u32, a1 as u32, a2 as u32, a3),
            54 => self.sys_setsockopt(a0 as i32, a1 as u32, a2 as u32, a3, a4 as u32),
            55 => self.sys_getsockopt(a0 as i32, a1 as u32, a2 as u32, a3, a4),
            56 => self.sys_clone(f, a0, a1, a2, a3, a4),
            57 => self.sys_clone(f, u64::from(crate::kernel::sched::SIGCHLD), 0, 0, 0, 0),
            58 => self.sys_clone(
                f,
                0x4100 | u64::from(crate::kernel::sched::SIGCHLD),
                0,
                0,
                0,
                0,
            ),
            59 => self.sys_execve(f, a0, a1, a2),
            60 => self.sys_exit_thread(a0 as i32),
            231 => self.sys_exit(a0 as i32),
            61 => self.sys_wait4(a0 as i32, a1, a2 as u32, a3),
            62 => self.sys_kill(a0 as i32, a1 as u32),
            63 => self.sys_uname(a0),
            72 => self.sys_fcntl(a0 as i32, a1 as u32, a2),
            73 => self.sys_flock(a0 as i32, a1 as u32),
            74 | 75 => self.sys_fsync(a0 as i32),
            76 => self.sys_truncate(a0, a1),
            77 => self.sys_ftruncate(a0 as i32, a1),
            79 => self.sys_getcwd(a0, a1),
            80 => self.sys_chdir(a0),
            81 => self.sys_fchdir(a0 as i32),
            82 => self.sys_renameat2(fs::AT_FDCWD, a0, fs::AT_FDCWD, a1, 0),
            83 => self.sys_mkdirat(fs::AT_FDCWD, a0, a1 as u32),
            84 => self.sys_unlinkat(fs::AT_FDCWD, a0, fs::AT_REMOVEDIR),
            85 => self.sys_openat(fs::AT_FDCWD, a0, 0o1101, a1 as u32),
            86 => self.sys_linkat(fs::AT_FDCWD, a0, fs::AT_FDCWD, a1, 0),
            87 => self.sys_unlinkat(fs::AT_FDCWD, a0, 0),
            88 => self.sys_symlinkat(a0, fs::AT_FDCWD, a1),
            89 => self.sys_readlinkat(fs::AT_FDCWD, a0, a1, a2),
            90 => self.sys_fchmodat(fs::AT_FDCWD, a0, a1 as u32),
            91 => self.sys_fchmod(a0 as i32, a1 as u32),
            92 => self.sys_fchownat(fs::AT_FDCWD, a0, a1 as u32, a2 as u32, 0),
            94 => self.sys_fchownat(
                fs::AT_FDCWD,
                a0,
                a1 as u32,
                a2 as u32,
                fs::AT_SYMLINK_NOFOLLOW,
            ),
            93 => self.sys_fchown(a0 as i32, a1 as u32, a2 as u32),
            95 => Ok(self.sys_umask(a0 as u32)),
            96 => self.sys_gettimeofday(a0, a1),
            97 => self.sys_prlimit(0, a0 as u32, 0, a1),
            98 => self.sys_getrusage(a0 as i32, a1),
            99 => self.sys_sysinfo(a0),
            100 => self.sys_times(a0),
            102 => Ok(u64::from(self.proc_mut().creds.uid)),
            104 => Ok(u64::from(self.proc_mut().creds.gid)),
            105 => self.sys_setresuid(a0 as u32, a0 as u32, a0 as u32),
            106 => self.sys_setresgid(a0 as u32, a0 as u32, a0 as u32),
            107 => Ok(u64::from(self.proc_mut().creds.euid)),
            108 => Ok(u64::from(self.proc_mut().creds.egid)),
            109 => self.sys_setpgid(a0 as i32, a1 as i32),
            110 => self.sys_getppid(),
            111 => self.sys_getpgid(0),
            112 => self.sys_setsid(),
            121 => self.sys_getpgid(a0 as i32),
            124 => self.sys_getsid(a0 as i32),
            113 => self.sys_setresuid(a0 as u32, a1 as u32, u32::MAX),
            114 => self.sys_setresgid(a0 as u32, a1 as u32, u32::MAX),
            115 => self.sys_getgroups(a0 as i32, a1),
            116 => self.sys_setgroups(a0, a1),
            117 => self.sys_setresuid(a0 as u32, a1 as u32, a2 as u32),
            118 => self.sys_getresuid(a0, a1, a2, false),
            119 => self.sys_setresgid(a0 as u32, a1 as u32, a2 as u32),
            120 => self.sys_getresuid(a0, a1, a2, true),
            122 => self.sys_setfsid(a0 as u32, false),
            123 => self.sys_setfsid(a0 as u32, true),
            125 => self.sys_capget(a0, a1),
            126 => self.sys_capset(a0, a1),
            127 => self.sys_rt_sigpending(a0),
            130 => self.sys_rt_sigsuspend(a0, a1),
            128 => self.sys_rt_sigtimedwait(a0, a1, a2, a3),
            436 => self.sys_close_range(a0 as u32, a1 as u32, a2 as u32),
            222 => self.sys_timer_create(a0 as u32, a1, a2),
            223 => self.sys_timer_settime(a0 as i32, a1 as u32, a2, a3),
            224 => self.sys_timer_gettime(a0 as i32, a1),
            225 => self.sys_timer_getoverrun(a0 as i32),
            226 => self.sys_timer_delete(a0 as i32),
            131 => self.sys_sigaltstack(a0, a1),
            132 => self.sys_utimes_compat(a0, a1, false),
            133 => self.sys_mknodat(fs::AT_FDCWD, a0, a1 as u32, a2 as u32),
            135 => self.sys_personality(a0 as u32),
            137 => self.sys_statfs(a0, a1),
            138 => self.sys_fstatfs(a0 as i32, a1),
            140 => self.sys_getpriority(a0 as u32, a1 as i32),
            141 => self.sys_setpriority(a0 as u32, a1 as i32, a2 as i32),
            142 => self.sys_sched_setparam(a0 as i32, a1),
            143 => self.sys_sched_getparam(a0 as i32, a1),
            144 => self.sys_sched_setscheduler(a0 as i32, a1 as u32, a2),
            145 => self.sys_sched_getscheduler(a0 as i32),
            146 => process::sched_priority_range(a0 as u32).map(|(_, max)| max),
            147 => process::sched_priority_range(a0 as u32).map(|(min, _)| min),
            148 => self.sys_sched_rr_get_interval(a0 as i32, a1),
            157 => self.sys_prctl(a0 as u32, a1, a2),
            158 => self.sys_arch_prctl(a0 as u32, a1),
            160 => self.sys_prlimit(0, a0 as u32, a1, 0),
            162 => Ok(0), // sync: every write already reached the server
            // sethostname, setdomainname: CAP_SYS_ADMIN, which the guest
            // grants no process (nor Docker's default set a container).
            170 | 171 => Err(Errno::EPERM),
            164 => self.sys_settimeofday(a0, a1),
            // setxattr, getxattr, listxattr, removexattr, each as path,
            // l-path and f-descriptor forms.
            188..=190 => {
                let target = xattr_target(nr - 188, a0);
                self.sys_setxattr(target, a1, a2, a3, a4 as u32)
            }
            191..=193 => self.sys_getxattr(xattr_target(nr - 191, a0), a1, a2, a3),
            194..=196 => self.sys_listxattr(xattr_target(nr - 194, a0), a1, a2),
            197..=199 => self.sys_removexattr(xattr_target(nr - 197, a0), a1),
            200 => self.sys_tkill(a0 as i32, a1 as u32),
            // tgkill: the thread must belong to the named group.
            234 if self.procs.tgid(a1 as i32) != a0 as i32 => Err(Errno::ESRCH),
            234 => self.sys_tkill(a1 as i32, a2 as u32),
            201 => self.sys_time(a0),
            202 => self.sys_futex(a0, a1 as u32, a2 as u32, a3, a4, a5 as u32),
            203 => self.sys_sched_setaffinity(a0 as i32, a1, a2),
            204 => self.sys_sched_getaffinity(a0 as i32, a1, a2),
            221 => self.sys_fadvise64(a0 as i32, a1 as i64, a2 as i64, a3 as u32),
            217 => self.sys_getdents64(a0 as i32, a1, a2),
            218 => self.sys_set_tid_address(a0),
            227 => self.sys_clock_settime(a0 as u32, a1),
            228 => self.sys_clock_gettime(a0 as u32, a1),
            229 => self.sys_clock_getres(a0 as u32, a1),
            230 => self.sys_clock_nanosleep(a0 as u32, a1 as u32, a2, a3),
            235 => self.sys_utimes_compat(a0, a1, true),
            257 => self.sys_openat(a0 as i32, a1, a2 as u32, a3 as u32),
            258 => self.sys_mkdirat(a0 as i32, a1, a2 as u32),
            322 => self.sys_execveat(f, a0 as i32, a1, a2, a3, a4 as u32),
            259 => self.sys_mknodat(a0 as i32, a1, a2 as u32, a3 as u32),
            260 => self.sys_fchownat(a0 as i32, a1, a2 as u32, a3 as u32, a4 as u32),
            262 => self.sys_fstatat(a0 as i32, a1, a2, a3 as u32),
            263 => self.sys_unlinkat(a0 as i32, a1, a2 as u32),
            264 => self.sys_renameat2(a0 as i32, a1, a2 as i32, a3, 0),
            265 => self.sys_linkat(a0 as i32, a1, a2 as i32, a3, a4 as u32),
            266 => self.sys_symlinkat(a0, a1 as i32, a2),
            267 => self.sys_readlinkat(a0 as i32, a1, a2, a3),
            268 => self.sys_fchmodat(a0 as i32, a1, a2 as u32),
            269 | 439 => self.sys_faccessat(a0 as i32, a1, a2 as u32),
            270 => self.sys_pselect(a0 as i32, a1, a2, a3, a4),
            271 => self.sys_ppoll(a0, a1, a2),
            273 => self.sys_set_robust_list(a0, a1),
            274 => self.sys_get_robust_list(a0 as i32, a1, a2),
            280 => self.sys_utimensat(a0 as i32, a1, a2, a3 as u32),
            284 => self.sys_eventfd2(a0 as u32, 0),
            290 => self.sys_eventfd2(a0 as u32, a1 as u32),
            319 => self.sys_memfd_create(a0, a1 as u32),
            213 if (a0 as i32) <= 0 => Err(Errno::EINVAL),
            213 => self.sys_epoll_create1(0),
            291 => self.sys_epoll_create1(a0 as u32),
            233 => self.sys_epoll_ctl(a0 as i32, a1 as u32, a2 as i32, a3),
            232 | 281 => {
                let timeout = (a3 as i32 >= 0).then(|| (a3 as i32) as u64 * 1_000_000);
                self.sys_epoll_wait(a0 as i32, a1, a2 as i32, timeout)
            }
            441 => self.sys_epoll_pwait2(a0 as i32, a1, a2 as i32, a3),
            285 => self.sys_fallocate(a0 as i32, a1 as u32, a2 as i64, a3 as i64),
            247 => self.sys_waitid(a0 as u32, a1, a2, a3 as u32, a4),
            424 => self.sys_pidfd_send_signal(a0 as i32, a1 as u32, a2, a3 as u32),
            434 => self.sys_pidfd_open(a0 as i32, a1 as u32),
            293 => self.sys_pipe2(a0, a1 as u32),
            292 => self.sys_dup3(a0 as i32, a1 as i32, a2 as u32, false),
            295 => self.sys_preadv(a0 as i32, a1, a2, a3),
            296 => self.sys_pwritev(a0 as i32, a1, a2, a3),
            327 => self.sys_preadv2(a0 as i32, a1, a2, a3 as i64, a5 as u32),
            328 => self.sys_pwritev2(a0 as i32, a1, a2, a3 as i64, a5 as u32),
            302 => self.sys_prlimit(a0 as i32, a1 as u32, a2, a3),
            309 => self.sys_getcpu(a0, a1),
            316 => self.sys_renameat2(a0 as i32, a1, a2 as i32, a3, a4 as u32),
            318 => self.sys_getrandom(a0, a1),
            332 => self.sys_statx(a0 as i32, a1, a2 as u32, a3 as u32, a4),
            _ => Err(self.unknown_syscall(nr)),
        };
        if result == Err(Errno::EPIPE) && matches!(nr, 1 | 18 | 20 | 40 | 275 | 296) {
            // Writing to a pipe nobody reads also raises SIGPIPE.
            let cur = self.cur;
            self.post_signal(cur, crate::task::signal::SIGPIPE);
        }
        match result {
            Ok(v) => v as i64,
            Err(e) => e.to_ret(),
        }
    }

    fn unknown_syscall(&mut self, nr: u64) -> Errno {
        let count = self.unknown_syscalls.entry(nr).or_insert(0);
        *count += 1;
        if *count == 1 && self.debug_enabled() {
            let mut m = MsgBuf::new();
            let _ = write!(m, "capsa guest: unknown syscall {nr} (-ENOSYS)");
            arch::debug(m.as_bytes());
        }
        Errno::ENOSYS
    }
}

/// The target of the n-th form of an extended-attribute call: 0 a path,
/// 1 a path not followed at its end (`l*`), 2 a descriptor (`f*`).
fn xattr_target(form: u64, arg: u64) -> crate::syscalls::fs::XattrTarget {
    use crate::syscalls::fs::XattrTarget;
    match form {
        0 => XattrTarget::Path {
            path: arg,
            follow: true,
        },
        1 => XattrTarget::Path {
            path: arg,
            follow: false,
        },
        _ => XattrTarget::Fd(arg as i32),
    }
}
