//! `AF_UNIX` stream socket pairs (`socketpair`): what Python's asyncio uses
//! for its self-pipe and a subprocess's stdin. Each direction is a pipe
//! buffer (see `crate::fs::pipe`), so blocking, end of file, `EPIPE` and wake-ups
//! are the pipes' own. There are no named sockets: `socket`, `bind` and
//! `connect` are not implemented, nor datagram pairs.

use alloc::vec::Vec;
use core::cell::{Cell, RefCell};

use crate::errno::{Errno, Result};
use crate::fs::fd::{File, O_NONBLOCK};
use crate::fs::files::synthetic_stat;
use crate::fs::pipe::PipeEnd;
use crate::fs::Devices;

pub const AF_UNIX: u32 = 1;
pub const SOCK_STREAM: u32 = 1;
pub const SOCK_TYPE_MASK: u32 = 0xf;
pub const SOL_SOCKET: u32 = 1;
pub const SO_TYPE: u32 = 3;
pub const SO_ERROR: u32 = 4;
pub const SO_ACCEPTCONN: u32 = 30;
pub const SO_DOMAIN: u32 = 39;
pub const MSG_PEEK: u32 = 0x2;
pub const MSG_DONTWAIT: u32 = 0x40;
pub const MSG_NOSIGNAL: u32 = 0x4000;
pub const S_IFSOCK: u32 = 0o140000;

/// The socket behind a descriptor, if it is one.
pub fn unix_stream(file: &dyn File) -> Option<&UnixStream> {
    file.as_any()?.downcast_ref::<UnixStream>()
}

/// One end of a connected pair.
pub struct UnixStream {
    /// What the peer writes; None after `shutdown(SHUT_RD)`.
    pub rx: RefCell<Option<PipeEnd>>,
    /// What the peer reads; None after `shutdown(SHUT_WR)` (the peer sees
    /// end of file).
    pub tx: RefCell<Option<PipeEnd>>,
    pub flags: Cell<u32>,
    pub ino: u64,
}

impl UnixStream {
    pub fn recv(&self, buf: &mut [u8], nonblocking: bool, peek: bool) -> Result<usize> {
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

    pub fn send(&self, buf: &[u8], nonblocking: bool) -> Result<usize> {
        let tx = self.tx.borrow();
        let end = tx.as_ref().ok_or(Errno::EPIPE)?;
        let result = end.pipe.borrow_mut().write(buf, nonblocking);
        result
    }

    pub fn nonblocking(&self) -> bool {
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
    fn as_any(&self) -> Option<&dyn core::any::Any> {
        Some(self)
    }
}
