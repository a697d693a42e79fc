//! Socket system calls (the socket kinds are `crate::net`).

use crate::errno::{Errno, Result};
use crate::fs::fd::{File, O_CLOEXEC, O_NONBLOCK, O_RDWR};
use crate::fs::pipe::new_pipe;
use crate::kernel::Kernel;
use crate::net::unix::*;
use alloc::rc::Rc;
use core::cell::{Cell, RefCell};

impl Kernel {
    fn socket_file(&self, fd: i32) -> Result<Rc<dyn File>> {
        let file = self.proc().fds.file(fd)?;
        if unix_stream(&*file).is_none() {
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
        let file = self.socket_file(fd)?;
        if addr != 0 {
            return Err(Errno::EISCONN);
        }
        let data = self.user_buf(buf, len as usize)?;
        let Some(sock) = unix_stream(&*file) else {
            return Err(Errno::ENOTSOCK);
        };
        let nonblocking = sock.nonblocking() || flags & MSG_DONTWAIT != 0;
        match sock.send(data, nonblocking) {
            Err(Errno::EPIPE) if flags & MSG_NOSIGNAL == 0 => {
                let cur = self.cur;
                self.post_signal(cur, crate::task::signal::SIGPIPE);
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
        let file = self.socket_file(fd)?;
        let data = self.user_buf_mut(buf, len as usize)?;
        let Some(sock) = unix_stream(&*file) else {
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
        let file = self.socket_file(fd)?;
        let Some(sock) = unix_stream(&*file) else {
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
        self.socket_file(fd)?;
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
        self.socket_file(fd)?;
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
