//! `AF_UNIX` stream socket pairs (`socketpair`): what Python's asyncio uses
//! for its self-pipe and a subprocess's stdin. Each direction is a pipe
//! buffer (see `crate::pipe`), so blocking, end of file, `EPIPE` and wake-ups
//! are the pipes' own. There are no named sockets: `socket`, `bind` and
//! `connect` are not implemented, nor datagram pairs.

use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};

use crate::errno::{Errno, Result};
use crate::fd::{File, O_CLOEXEC, O_NONBLOCK, O_RDWR};
use crate::files::synthetic_stat;
use crate::kernel::{Devices, Kernel};
use crate::pipe::{new_pipe, PipeEnd};

const AF_UNIX: u32 = 1;
const SOCK_STREAM: u32 = 1;
const SOCK_TYPE_MASK: u32 = 0xf;
const SOL_SOCKET: u32 = 1;
const SO_TYPE: u32 = 3;
const SO_ERROR: u32 = 4;
const SO_ACCEPTCONN: u32 = 30;
const SO_DOMAIN: u32 = 39;
const MSG_PEEK: u32 = 0x2;
const MSG_DONTWAIT: u32 = 0x40;
const MSG_NOSIGNAL: u32 = 0x4000;
const S_IFSOCK: u32 = 0o140000;

/// One end of a connected pair.
pub struct UnixStream {
    /// What the peer writes; None after `shutdown(SHUT_RD)`.
    rx: RefCell<Option<PipeEnd>>,
    /// What the peer reads; None after `shutdown(SHUT_WR)` (the peer sees
    /// end of file).
    tx: RefCell<Option<PipeEnd>>,
    flags: Cell<u32>,
    ino: u64,
}

impl UnixStream {
    fn recv(&self, buf: &mut [u8], nonblocking: bool, peek: bool) -> Result<usize> {
        let rx = self.rx.borrow();
        let Some(end) = rx.as_ref() else {
            return Ok(0);
        };
        let mut pipe = end.pipe.borrow_mut();
        if peek {
            let n = pipe.peek(buf);
            if n > 0 || buf.is_empty() || !pipe.has_writers() {
                return Ok(n);
            }
            return Err(if nonblocking {
                Errno::EAGAIN
            } else {
                Errno::EBLOCK
            });
        }
        pipe.read(buf, nonblocking)
    }

    fn send(&self, buf: &[u8], nonblocking: bool) -> Result<usize> {
        let tx = self.tx.borrow();
        let end = tx.as_ref().ok_or(Errno::EPIPE)?;
        let result = end.pipe.borrow_mut().write(buf, nonblocking);
        result
    }

    fn nonblocking(&self) -> bool {
        self.flags.get() & O_NONBLOCK != 0
    }
}

impl File for UnixStream {
    fn read(&self, _dev: &mut Devices, buf: &mut [u8]) -> Result<usize> {
        self.recv(buf, self.nonblocking(), false)
    }
    fn write(&self, _dev: &mut Devices, buf: &[u8]) -> Result<usize> {
        self.send(buf, self.nonblocking())
    }
    fn stat(&self, _dev: &mut Devices) -> Result<[u8; 144]> {
        Ok(synthetic_stat(S_IFSOCK | 0o777, 0, self.ino))
    }
    fn poll(&self, _dev: &mut Devices) -> (bool, bool) {
        let readable = self
            .rx
            .borrow()
            .as_ref()
            .is_none_or(|e| e.pipe.borrow().poll().0);
        let writable = self
            .tx
            .borrow()
            .as_ref()
            .is_none_or(|e| e.pipe.borrow().poll().1);
        (readable, writable)
    }
    fn flags(&self) -> u32 {
        self.flags.get()
    }
    fn set_flags(&self, flags: u32) {
        self.flags.set(flags);
    }
    fn proc_name(&self) -> Vec<u8> {
        alloc::format!("socket:[{}]", self.ino).into_bytes()
    }
    fn as_unix_stream(&self) -> Option<&UnixStream> {
        Some(self)
    }
}

impl Kernel {
    fn unix_stream(&self, fd: i32) -> Result<Rc<dyn File>> {
        let file = self.fds.file(fd)?;
        if file.as_unix_stream().is_none() {
            return Err(Errno::ENOTSOCK);
        }
        Ok(file)
    }

    pub fn sys_socketpair(&mut self, domain: u32, typ: u32, protocol: u32, sv: u64) -> Result<u64> {
        if domain != AF_UNIX {
            return Err(Errno::EAFNOSUPPORT);
        }
        if typ & !(SOCK_TYPE_MASK | O_NONBLOCK | O_CLOEXEC) != 0 {
            return Err(Errno::EINVAL);
        }
        if typ & SOCK_TYPE_MASK != SOCK_STREAM {
            return Err(Errno::EPROTONOSUPPORT);
        }
        if protocol != 0 {
            return Err(Errno::EPROTONOSUPPORT);
        }
        self.user_buf_mut(sv, 8)?;
        let (a_rx, b_tx) = new_pipe(0);
        let (b_rx, a_tx) = new_pipe(0);
        let flags = O_RDWR | (typ & O_NONBLOCK);
        let end = |rx, tx, ino| UnixStream {
            rx: RefCell::new(Some(rx)),
            tx: RefCell::new(Some(tx)),
            flags: Cell::new(flags),
            ino,
        };
        let (a_ino, b_ino) = (a_rx.pipe.borrow().ino(), b_rx.pipe.borrow().ino());
        let cloexec = typ & O_CLOEXEC != 0;
        let a = self.install(Rc::new(end(a_rx, a_tx, a_ino)), cloexec)?;
        let b = match self.install(Rc::new(end(b_rx, b_tx, b_ino)), cloexec) {
            Ok(b) => b,
            Err(e) => {
                let _ = self.sys_close(a as i32);
                return Err(e);
            }
        };
        let mut out = [0u8; 8];
        out[..4].copy_from_slice(&(a as i32).to_le_bytes());
        out[4..].copy_from_slice(&(b as i32).to_le_bytes());
        self.put_user(sv, &out)?;
        Ok(0)
    }

    /// sendto on a connected pair: no address may be given.
    pub fn sys_sendto(
        &mut self,
        fd: i32,
        buf: u64,
        len: u64,
        flags: u32,
        addr: u64,
    ) -> Result<u64> {
        let file = self.unix_stream(fd)?;
        if addr != 0 {
            return Err(Errno::EISCONN);
        }
        let data = self.user_buf(buf, len as usize)?;
        let Some(sock) = file.as_unix_stream() else {
            return Err(Errno::ENOTSOCK);
        };
        let nonblocking = sock.nonblocking() || flags & MSG_DONTWAIT != 0;
        match sock.send(data, nonblocking) {
            Err(Errno::EPIPE) if flags & MSG_NOSIGNAL == 0 => {
                let cur = self.cur;
                self.post_signal(cur, crate::syscalls::signal::SIGPIPE);
                Err(Errno::EPIPE)
            }
            other => other.map(|n| n as u64),
        }
    }

    /// recvfrom on a connected pair; the peer has no address (length 0).
    pub fn sys_recvfrom(
        &mut self,
        fd: i32,
        buf: u64,
        len: u64,
        flags: u32,
        addr_len: u64,
    ) -> Result<u64> {
        let file = self.unix_stream(fd)?;
        let data = self.user_buf_mut(buf, len as usize)?;
        let Some(sock) = file.as_unix_stream() else {
            return Err(Errno::ENOTSOCK);
        };
        let nonblocking = sock.nonblocking() || flags & MSG_DONTWAIT != 0;
        let n = sock.recv(data, nonblocking, flags & MSG_PEEK != 0)?;
        if addr_len != 0 {
            self.put_user(addr_len, &0u32.to_le_bytes())?;
        }
        Ok(n as u64)
    }

    pub fn sys_shutdown(&mut self, fd: i32, how: u32) -> Result<u64> {
        let file = self.unix_stream(fd)?;
        let Some(sock) = file.as_unix_stream() else {
            return Err(Errno::ENOTSOCK);
        };
        if how > 2 {
            return Err(Errno::EINVAL);
        }
        // Dropping an end updates its pipe's reader or writer count.
        if how != 1 {
            sock.rx.borrow_mut().take();
        }
        if how != 0 {
            sock.tx.borrow_mut().take();
        }
        Ok(0)
    }

    /// getsockname and getpeername: an unnamed `AF_UNIX` address.
    pub fn sys_socket_name(&mut self, fd: i32, addr: u64, addr_len: u64) -> Result<u64> {
        self.unix_stream(fd)?;
        let room = u32::from_le_bytes(
            self.user_buf(addr_len, 4)?
                .try_into()
                .map_err(|_| Errno::EFAULT)?,
        );
        let family = (AF_UNIX as u16).to_le_bytes();
        let n = (room as usize).min(family.len());
        self.put_user(addr, &family[..n])?;
        self.put_user(addr_len, &2u32.to_le_bytes())?;
        Ok(0)
    }

    pub fn sys_getsockopt(
        &mut self,
        fd: i32,
        level: u32,
        name: u32,
        value: u64,
        len: u64,
    ) -> Result<u64> {
        self.unix_stream(fd)?;
        if level != SOL_SOCKET {
            return Err(Errno::ENOPROTOOPT);
        }
        let v: u32 = match name {
            SO_TYPE => SOCK_STREAM,
            SO_ERROR | SO_ACCEPTCONN => 0,
            SO_DOMAIN => AF_UNIX,
            _ => return Err(Errno::ENOPROTOOPT),
        };
        let room = u32::from_le_bytes(
            self.user_buf(len, 4)?
                .try_into()
                .map_err(|_| Errno::EFAULT)?,
        );
        let bytes = v.to_le_bytes();
        let n = (room as usize).min(4);
        self.put_user(value, &bytes[..n])?;
        self.put_user(len, &(n as u32).to_le_bytes())?;
        Ok(0)
    }
}
