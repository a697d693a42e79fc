//! What `/proc` shows, gathered from the process table and each process's
//! state into the plain snapshots `crate::fs::procfs` turns into files.

use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use crate::errno::{Errno, Result};
use crate::fs::fd::File;
use crate::fs::procfs::*;
use crate::kernel::Kernel;
use crate::task::signal::SigMask;
use crate::task::Process;

/// The process state parts of a `ProcInfo` (everything but the task fields).
fn from_state(info: &mut ProcInfo, process: &Process, sigmask: &SigMask) {
    let (c, sig, mm) = (&process.creds, &process.signals, &process.mm);
    info.uids = [c.uid, c.euid, c.suid, c.fsuid];
    info.gids = [c.gid, c.egid, c.sgid, c.fsgid];
    info.groups = c.groups.clone();
    info.pending = sig.pending;
    info.blocked = sigmask.mask;
    for (i, action) in sig.actions.iter().enumerate() {
        match action.handler {
            0 => {}
            1 => info.ignored |= 1 << i,
            _ => info.caught |= 1 << i,
        }
    }
    info.vmas = mm.vmas.iter().collect();
    info.resident = process
        .space
        .as_ref()
        .map_or(0, |s| s.resident_pages() * crate::mm::PAGE_SIZE);
    info.stack = mm.stack;
    info.brk = (mm.brk_start, mm.brk_end);
}

/// What `/proc/sys/kernel` shows: the UTS names and the kernel's identity
/// (read-only: no process in the guest may change them).
const SYS_KERNEL: [&[u8]; 5] = [
    b"domainname",
    b"hostname",
    b"osrelease",
    b"ostype",
    b"version",
];

impl Kernel {
    /// The node name uname(2) and `/proc/sys/kernel/hostname` report.
    pub fn hostname(&self) -> &[u8] {
        if self.spec.hostname.is_empty() {
            b"localhost"
        } else {
            &self.spec.hostname
        }
    }

    /// The NIS domain name, `(none)` when unset, as Linux reports it.
    pub fn domainname(&self) -> &[u8] {
        if self.spec.domainname.is_empty() {
            b"(none)"
        } else {
            &self.spec.domainname
        }
    }

    /// The `/proc` entry at `path` (lexical, absolute, under `/proc`).
    /// `/proc/self` is a link; below it, `self` names the caller's pid.
    /// `opening`: the entry is being opened, so the caller's `fd/` lists
    /// the descriptor the open is about to take, as Linux's listing does.
    pub fn proc_entry(&mut self, path: &[u8], follow: bool, opening: bool) -> Result<Entry> {
        let parts: Vec<&[u8]> = path
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty())
            .skip(1)
            .collect();
        let me = self.procs.tgid(self.cur);
        // `self`, or a pid (a thread's id names its process, as on Linux).
        let pid_of = |name: &[u8]| -> Option<i32> {
            if name == b"self" {
                return Some(me);
            }
            let pid = core::str::from_utf8(name).ok()?.parse::<i32>().ok()?;
            (pid > 0).then_some(pid)
        };
        match parts.as_slice() {
            [] => {
                let mut names: Vec<(Vec<u8>, u8)> =
                    [b"cpuinfo".as_slice(), b"meminfo", b"mounts", b"uptime"]
                        .iter()
                        .map(|n| (n.to_vec(), DT_REG))
                        .collect();
                names.push((b"self".to_vec(), DT_LNK));
                names.push((b"sys".to_vec(), DT_DIR));
                for pid in self.procs.pids() {
                    if self.procs.tgid(pid) == pid && self.proc_info(pid).is_some() {
                        names.push((format!("{pid}").into_bytes(), DT_DIR));
                    }
                }
                Ok(Entry::Dir(b"/proc".to_vec(), names))
            }
            [b"self"] if !follow => Ok(Entry::Link(format!("{me}").into_bytes(), None)),
            [b"cpuinfo"] => Ok(Entry::File(cpuinfo())),
            [b"meminfo"] => Ok(Entry::File(self.meminfo())),
            [b"uptime"] => {
                // Up time, and the time the one vCPU spent idle.
                let up = self.clock.since_boot_ns();
                let idle = self.clock.ticks_ns(self.meter.idle(self.clock.cpu_ticks()));
                let secs = |ns: u64| format!("{}.{:02}", ns / 1_000_000_000, ns / 10_000_000 % 100);
                Ok(Entry::File(
                    format!("{} {}\n", secs(up), secs(idle.min(up))).into_bytes(),
                ))
            }
            [b"mounts"] => Ok(Entry::File(self.mounts())),
            [b"sys"] => Ok(Entry::Dir(
                b"/proc/sys".to_vec(),
                alloc::vec![(b"kernel".to_vec(), DT_DIR)],
            )),
            [b"sys", b"kernel"] => Ok(Entry::Dir(
                b"/proc/sys/kernel".to_vec(),
                SYS_KERNEL.iter().map(|n| (n.to_vec(), DT_REG)).collect(),
            )),
            [b"sys", b"kernel", name] => {
                let value: &[u8] = match *name {
                    b"hostname" => self.hostname(),
                    b"domainname" => self.domainname(),
                    b"osrelease" => super::OS_RELEASE,
                    b"ostype" => super::OS_TYPE,
                    b"version" => super::OS_VERSION,
                    _ => return Err(Errno::ENOENT),
                };
                let mut line = value.to_vec();
                line.push(b'\n');
                Ok(Entry::File(line))
            }
            [name, rest @ ..] => {
                let pid = pid_of(name).ok_or(Errno::ENOENT)?;
                let info = self.proc_info(pid).ok_or(Errno::ENOENT)?;
                if rest.is_empty() {
                    let path = format!("/proc/{}", info.tgid).into_bytes();
                    let names = PID_ENTRIES.iter().map(|(n, t)| (n.to_vec(), *t)).collect();
                    return Ok(Entry::Dir(path, names));
                }
                let opening_own_fd =
                    (opening && info.tgid == me).then(|| self.proc_mut().fds.lowest_free());
                self.pid_entry(&info, rest, opening_own_fd)
            }
        }
    }

    /// What `/proc/<pid>` shows of process `pid` (or of the process whose
    /// thread `pid` is); None if there is no such live process.
    fn proc_info(&self, pid: i32) -> Option<ProcInfo> {
        let tgid = self.procs.tgid(pid);
        let task = self.procs.get(tgid)?;
        if matches!(task.state, crate::task::process::State::Zombie(_)) {
            return None;
        }
        let mut info = ProcInfo {
            tgid,
            pid: tgid,
            ppid: task.ppid,
            pgid: task.pgid,
            sid: task.sid,
            sleeping: matches!(task.state, crate::task::process::State::Blocked(_)),
            comm: [0; 16],
            exe: Vec::new(),
            cmdline: Vec::new(),
            uids: [0; 4],
            gids: [0; 4],
            groups: Vec::new(),
            umask: 0,
            pending: 0,
            blocked: 0,
            ignored: 0,
            caught: 0,
            vmas: Vec::new(),
            stack: (0, 0),
            brk: (0, 0),
            fds: Vec::new(),
            threads: self.procs.threads(tgid).len().max(1),
            cpu: [0; 4],
            resident: 0,
            proportional: 0,
            private: 0,
            caps: Default::default(),
            no_new_privs: self.spec.no_new_privileges,
            cwd: Vec::new(),
            limits: self.spec.rlimits,
        };
        let own = self.process_cpu(tgid).unwrap_or_default();
        let children = task.cpu_children;
        for (slot, ticks) in
            info.cpu
                .iter_mut()
                .zip([own.user, own.sys, children.user, children.sys])
        {
            *slot = crate::task::cputime::clock_ticks(self.clock.ticks_ns(ticks));
        }
        let fds = |table: &crate::fs::fd::FdTable| -> Vec<(i32, Rc<dyn File>)> {
            let mut out = Vec::new();
            let (mut fd, mut seen) = (0, 0);
            while seen < table.open_count() && (fd as usize) < self.nofile_limit() {
                if let Ok(file) = table.file(fd) {
                    out.push((fd, file));
                    seen += 1;
                }
                fd += 1;
            }
            out
        };
        let process = self.processes.get(&tgid)?;
        info.comm = process.comm;
        info.caps = process.creds.caps;
        info.exe = process.exe_path.clone();
        let (start, end) = process.mm.args;
        let mut cmdline = alloc::vec![0u8; end.saturating_sub(start).min(1 << 20) as usize];
        if process
            .space
            .as_ref()
            .is_some_and(|s| s.read(start, &mut cmdline))
        {
            info.cmdline = cmdline;
        }
        info.umask = process.umask;
        info.cwd = process.cwd.clone();
        info.fds = fds(&process.fds);
        from_state(&mut info, process, &task.thread.sigmask);
        (info.proportional, info.private) = process
            .space
            .as_ref()
            .map_or((0, 0), |s| s.shares(&self.frames));
        Some(info)
    }

    /// `opening_fd`: the descriptor the caller's open of its own `fd/` is
    /// about to take, listed too.
    fn pid_entry(
        &mut self,
        info: &ProcInfo,
        rest: &[&[u8]],
        opening_fd: Option<i32>,
    ) -> Result<Entry> {
        match rest {
            [b"cmdline"] => Ok(Entry::File(info.cmdline.clone())),
            [b"comm"] => Ok(Entry::File(format!("{}\n", info.name()).into_bytes())),
            [b"exe"] => Ok(Entry::Link(info.exe.clone(), None)),
            [b"cwd"] => Ok(Entry::Link(info.cwd.clone(), None)),
            [b"root"] => Ok(Entry::Link(b"/".to_vec(), None)),
            [b"limits"] => Ok(Entry::File(limits(info))),
            [b"oom_score_adj"] => Ok(Entry::File(
                format!("{}\n", self.spec.oom_score_adj).into_bytes(),
            )),
            [b"maps"] => Ok(Entry::File(maps(info))),
            [b"mounts"] => Ok(Entry::File(self.mounts())),
            [b"smaps_rollup"] => Ok(Entry::File(smaps_rollup(info))),
            [b"stat"] => Ok(Entry::File(stat_line(info))),
            [b"statm"] => Ok(Entry::File(statm(info))),
            [b"status"] => Ok(Entry::File(status(info))),
            [b"fd"] => {
                let mut fds: Vec<i32> = info.fds.iter().map(|(fd, _)| *fd).collect();
                fds.extend(opening_fd);
                fds.sort_unstable();
                fds.dedup();
                let names = fds
                    .into_iter()
                    .map(|fd| (format!("{fd}").into_bytes(), DT_LNK))
                    .collect();
                Ok(Entry::Dir(
                    format!("/proc/{}/fd", info.tgid).into_bytes(),
                    names,
                ))
            }
            [b"fd", n] => {
                let fd = core::str::from_utf8(n)
                    .ok()
                    .and_then(|n| n.parse::<i32>().ok())
                    .ok_or(Errno::ENOENT)?;
                let (_, file) = info
                    .fds
                    .iter()
                    .find(|(f, _)| *f == fd)
                    .ok_or(Errno::ENOENT)?;
                Ok(Entry::Link(file.proc_name(), Some(file.clone())))
            }
            _ => Err(Errno::ENOENT),
        }
    }

    fn meminfo(&self) -> Vec<u8> {
        let total = self.ram_size / 1024;
        let free = self.frames.available() * (crate::mm::PAGE_SIZE / 1024);
        // The page cache gives its clean pages back when frames run short.
        let cached = self.dev.cache.pages() * (crate::mm::PAGE_SIZE / 1024);
        let available = free + cached;
        format!(
            "MemTotal:       {total:8} kB\nMemFree:        {free:8} kB\n\
             MemAvailable:   {available:8} kB\nBuffers:               0 kB\n\
             Cached:         {cached:8} kB\nSwapCached:            0 kB\n\
             SwapTotal:             0 kB\nSwapFree:              0 kB\n"
        )
        .into_bytes()
    }

    fn mounts(&mut self) -> Vec<u8> {
        let mut out = String::new();
        for m in &self.dev.vfs.mounts {
            let mut path = String::new();
            for c in &m.components {
                path.push('/');
                path.push_str(&String::from_utf8_lossy(c));
            }
            if path.is_empty() {
                path.push('/');
            }
            let ro = self
                .dev
                .vfs
                .filesystems
                .get(m.fs)
                .is_some_and(|fs| fs.readonly);
            let mode = if ro { "ro" } else { "rw" };
            let _ = writeln!(out, "virtiofs{} {path} virtiofs {mode},relatime 0 0", m.fs);
        }
        out.push_str("proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0\n");
        out.into_bytes()
    }
}
