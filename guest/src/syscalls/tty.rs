//! Terminals: the pseudo-terminals' paths (`/dev/ptmx`, `/dev/pts/N`,
//! `/dev/tty`) and their requests, which need the caller (its session and
//! process group decide the controlling terminal and the foreground), and
//! terminal requests on stdio that is a host pty (`process.terminal`,
//! `capsa exec -t`), which the VMM carries out.

use alloc::rc::Rc;
use alloc::vec;
use core::cell::RefCell;

use crate::errno::{Errno, Result};
use crate::fs::fd::{File, O_ACCMODE, SETFL_MASK};
use crate::fs::pty::{self, Pty, Termios, TERMIOS_SIZE};
use crate::kernel::Kernel;

const TCGETS: u32 = 0x5401;
const TCSETS: u32 = 0x5402;
const TCSETSW: u32 = 0x5403;
const TCSETSF: u32 = 0x5404;
const TCSBRK: u32 = 0x5409;
const TCXONC: u32 = 0x540A;
const TCFLSH: u32 = 0x540B;
const TIOCEXCL: u32 = 0x540C;
const TIOCNXCL: u32 = 0x540D;
const TIOCSCTTY: u32 = 0x540E;
const TIOCGPGRP: u32 = 0x540F;
const TIOCSPGRP: u32 = 0x5410;
const TIOCOUTQ: u32 = 0x5411;
const TIOCGWINSZ: u32 = 0x5413;
const TIOCSWINSZ: u32 = 0x5414;
const FIONREAD: u32 = 0x541B;
const TIOCNOTTY: u32 = 0x5422;
const TIOCGSID: u32 = 0x5429;
const TIOCGPTN: u32 = 0x8004_5430;
const TIOCSPTLCK: u32 = 0x4004_5431;
const TIOCGPTLCK: u32 = 0x8004_5439;
const TIOCGPTPEER: u32 = 0x5441;
const O_NOCTTY: u32 = 0o400;
const O_CLOEXEC: u32 = 0o2000000;

impl Kernel {
    /// The caller's (process id, process group, session).
    fn caller_ids(&self) -> (i32, i32, i32) {
        let tgid = self.procs.tgid(self.cur);
        self.procs
            .get(tgid)
            .map_or((tgid, 0, 0), |t| (tgid, t.pgid, t.sid))
    }

    /// A slave opened without O_NOCTTY by a session leader that has no
    /// controlling terminal becomes its controlling terminal, as on Linux.
    fn maybe_acquire(&mut self, pty: &Rc<RefCell<Pty>>, flags: u32) {
        let (pid, pgid, sid) = self.caller_ids();
        if flags & O_NOCTTY != 0 || pid != sid || self.dev.ptys.of_session(sid).is_some() {
            return;
        }
        let mut p = pty.borrow_mut();
        if p.session.is_none() {
            p.session = Some(sid);
            p.foreground = pgid;
        }
    }

    /// Opens one of the terminal paths; None for any other path.
    pub(crate) fn open_terminal(
        &mut self,
        lexical: &[u8],
        flags: u32,
    ) -> Option<Result<Rc<dyn File>>> {
        let kept = flags & (O_ACCMODE | SETFL_MASK);
        if lexical == b"/dev/ptmx" || lexical == b"/dev/pts/ptmx" {
            let uid = self.proc().creds.euid;
            return Some(
                self.dev
                    .ptys
                    .open_master(uid, kept)
                    .map(|m| Rc::new(m) as Rc<dyn File>),
            );
        }
        let pty = if lexical == b"/dev/tty" {
            let (_, _, sid) = self.caller_ids();
            match self.dev.ptys.of_session(sid) {
                Some(pty) => pty,
                None => return Some(Err(Errno::ENXIO)),
            }
        } else {
            let index = pts_index(lexical)?;
            match self.dev.ptys.get(index) {
                Some(pty) => pty,
                None => return Some(Err(Errno::ENOENT)),
            }
        };
        let opened = pty::open_slave(&pty, kept);
        if opened.is_ok() {
            self.maybe_acquire(&pty, flags);
        }
        Some(opened.map(|s| Rc::new(s) as Rc<dyn File>))
    }

    /// `stat` of one of the terminal paths; None for any other path.
    pub(crate) fn stat_terminal(&self, lexical: &[u8]) -> Option<Result<[u8; 144]>> {
        if lexical == b"/dev/ptmx" || lexical == b"/dev/pts/ptmx" {
            return Some(Ok(pty::ptmx_stat()));
        }
        if lexical == b"/dev/pts" {
            return Some(Ok(crate::fs::fuse::Attr {
                ino: 1,
                mode: crate::fs::fuse::S_IFDIR | 0o755,
                nlink: 2,
                blksize: 1024,
                ..Default::default()
            }
            .to_stat(pty::DEVPTS_DEV)));
        }
        let index = pts_index(lexical)?;
        Some(
            self.dev
                .ptys
                .get(index)
                .map(|p| pty::slave_stat(&p.borrow()))
                .ok_or(Errno::ENOENT),
        )
    }

    /// A request on a pty's master or slave.
    pub(crate) fn pty_ioctl(&mut self, file: &Rc<dyn File>, request: u32, arg: u64) -> Result<u64> {
        let Some((pty, master)) = pty::pty_of(&**file) else {
            return Err(Errno::ENOTTY);
        };
        let pty = pty.clone();
        let (pid, pgid, sid) = self.caller_ids();
        // Job-control requests on a slave are about the caller's own
        // controlling terminal (Linux's tty_check_change and friends).
        let controlling = pty.borrow().session == Some(sid);
        let put_i32 = |k: &mut Kernel, v: i32| k.put_user(arg, &v.to_le_bytes()).map(|()| 0);
        match request {
            TCGETS => {
                let p = pty.borrow();
                let t = if master { p.master_termios } else { p.termios };
                drop(p);
                self.put_user(arg, &t.to_bytes()).map(|()| 0)
            }
            TCSETS | TCSETSW | TCSETSF => {
                let t =
                    Termios::from_bytes(self.user_buf(arg, TERMIOS_SIZE)?).ok_or(Errno::EFAULT)?;
                let mut p = pty.borrow_mut();
                if request == TCSETSF {
                    p.flush(0);
                }
                if master {
                    p.master_termios = t;
                } else {
                    p.set_termios(t);
                }
                Ok(0)
            }
            TIOCGWINSZ => {
                let w = pty.borrow().winsize;
                self.put_user(arg, &w).map(|()| 0)
            }
            TIOCSWINSZ => {
                let mut w = [0u8; 8];
                w.copy_from_slice(self.user_buf(arg, 8)?);
                pty.borrow_mut().winsize = w;
                Ok(0)
            }
            TIOCGPTN if master => {
                let index = pty.borrow().index;
                self.put_user(arg, &index.to_le_bytes()).map(|()| 0)
            }
            TIOCSPTLCK if master => {
                let lock = self.user_buf(arg, 4)?.iter().any(|&b| b != 0);
                pty.borrow_mut().locked = lock;
                Ok(0)
            }
            TIOCGPTLCK if master => {
                let locked = i32::from(pty.borrow().locked);
                put_i32(self, locked)
            }
            TIOCGPTPEER if master => {
                let flags = arg as u32;
                let slave = pty::open_slave(&pty, flags & (O_ACCMODE | SETFL_MASK))?;
                self.maybe_acquire(&pty, flags);
                self.install(Rc::new(slave), flags & O_CLOEXEC != 0)
            }
            TIOCSCTTY => {
                if pid != sid || self.dev.ptys.of_session(sid).is_some() {
                    return if controlling {
                        Ok(0)
                    } else {
                        Err(Errno::EPERM)
                    };
                }
                let mut p = pty.borrow_mut();
                if p.session.is_some() && !(arg == 1 && self.capable(21)) {
                    return Err(Errno::EPERM);
                }
                p.session = Some(sid);
                p.foreground = pgid;
                Ok(0)
            }
            TIOCNOTTY if !master => {
                if !controlling {
                    return Err(Errno::ENOTTY);
                }
                if pid == sid {
                    pty.borrow_mut().session = None;
                }
                Ok(0)
            }
            TIOCGPGRP | TIOCGSID => {
                let p = pty.borrow();
                if !master && !controlling {
                    return Err(Errno::ENOTTY);
                }
                let value = if request == TIOCGPGRP {
                    p.foreground
                } else {
                    p.session.ok_or(Errno::ENOTTY)?
                };
                drop(p);
                put_i32(self, value)
            }
            TIOCSPGRP => {
                if !master && !controlling {
                    return Err(Errno::ENOTTY);
                }
                let mut raw = [0u8; 4];
                raw.copy_from_slice(self.user_buf(arg, 4)?);
                let group = i32::from_le_bytes(raw);
                if group < 0 {
                    return Err(Errno::EINVAL);
                }
                let session = pty.borrow().session;
                let in_session = self
                    .procs
                    .pids()
                    .into_iter()
                    .filter_map(|p| self.procs.get(p))
                    .any(|t| t.pgid == group && Some(t.sid) == session);
                if !in_session {
                    return Err(Errno::EPERM);
                }
                pty.borrow_mut().foreground = group;
                Ok(0)
            }
            FIONREAD | TIOCOUTQ => {
                let p = pty.borrow();
                let n = match (master, request == FIONREAD) {
                    (true, true) | (false, false) => p.output_bytes(),
                    (false, true) | (true, false) => p.readable_bytes(),
                };
                drop(p);
                put_i32(self, i32::try_from(n).unwrap_or(i32::MAX))
            }
            TCFLSH => {
                let which = arg as u32;
                if which > 2 {
                    return Err(Errno::EINVAL);
                }
                // Queues are named from the side asking.
                let which = if master && which < 2 {
                    1 - which
                } else {
                    which
                };
                pty.borrow_mut().flush(which);
                Ok(0)
            }
            TCSBRK | TCXONC | TIOCEXCL | TIOCNXCL => Ok(0),
            _ => Err(Errno::ENOTTY),
        }
    }

    /// The guest has no terminals but its ptys, yet stdio may be a host
    /// pty's slave (a spec or `capsa exec -t` that asks for a terminal),
    /// which the VMM asks (the argument through kernel memory: the VMM sees
    /// guest-physical addresses); any other file is no terminal.
    pub(crate) fn host_terminal_ioctl(
        &mut self,
        file: &dyn File,
        request: u32,
        arg: u64,
    ) -> Result<u64> {
        use crate::fs::files::{ConsoleIn, ConsoleOut, ExecStream};
        let any = file.as_any().ok_or(Errno::ENOTTY)?;
        let own_stream = if any.is::<ConsoleIn>() {
            Some(0)
        } else {
            any.downcast_ref::<ConsoleOut>()
                .map(|out| 1 + u32::from(out.stderr))
        };
        let exec_stream = any.downcast_ref::<ExecStream>();
        if own_stream.is_none() && exec_stream.is_none() {
            return Err(Errno::ENOTTY);
        }
        let size = capsa_abi::exec::TERMINAL_REQUESTS
            .iter()
            .find(|&&(r, _)| r == request)
            .map_or(0, |&(_, size)| size);
        let fills = capsa_abi::exec::terminal_request_fills(request);
        let mut buf = if fills {
            vec![0u8; size]
        } else {
            self.user_buf(arg, size)?.to_vec()
        };
        match (exec_stream, own_stream) {
            (Some(stream), _) => stream.terminal(request, &mut buf)?,
            (None, Some(stream)) => {
                crate::drivers::virtio::console::terminal_request(stream, request, &mut buf)?
            }
            (None, None) => return Err(Errno::ENOTTY),
        }
        if fills {
            self.put_user(arg, &buf)?;
        }
        Ok(0)
    }
}

/// N of `/dev/pts/N`.
fn pts_index(lexical: &[u8]) -> Option<u32> {
    let digits = lexical.strip_prefix(b"/dev/pts/")?;
    if digits.is_empty() || digits.len() > 5 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    core::str::from_utf8(digits).ok()?.parse().ok()
}
