//! Pipes: a shared 64 KiB buffer and two kinds of open file (the ends).
//!
//! Each end is one open file description; dup and fork share it through
//! the descriptor tables' `Rc`, so the reader and writer counts are counts
//! of descriptions, dropped when the last descriptor of an end closes.
//! Blocking is the scheduler's business: an end answers `EBLOCK` and the
//! caller is parked until the event counter moves (every change to any
//! pipe bumps it, see [`bump`]).

use alloc::collections::VecDeque;
use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use core::sync::atomic::{AtomicU64, Ordering};

use crate::errno::{Errno, Result};
use crate::fs::fd::{File, O_NONBLOCK, O_RDONLY, O_WRONLY};
use crate::fs::fuse::{Attr, S_IFIFO};
use crate::fs::Devices;

pub const PIPE_SIZE: usize = 64 * 1024;
/// Writes up to this size are atomic (all or nothing).
pub const PIPE_BUF: usize = 4096;

static EVENTS: AtomicU64 = AtomicU64::new(0);
static NEXT_INO: AtomicU64 = AtomicU64::new(0x1000);

/// Something a blocked process may wait for happened (pipe I/O, a close,
/// an exit, a signal).
pub fn bump() {
    EVENTS.fetch_add(1, Ordering::Relaxed);
}

pub fn events() -> u64 {
    EVENTS.load(Ordering::Relaxed)
}

pub struct PipeBuf {
    data: VecDeque<u8>,
    readers: usize,
    writers: usize,
    ino: u64,
}

impl PipeBuf {
    /// Reads what is there; `EBLOCK` (or `EAGAIN` when `nonblocking`) if
    /// empty while a writer exists, 0 at end of file.
    pub fn read(&mut self, out: &mut [u8], nonblocking: bool) -> Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        if self.data.is_empty() {
            return match (self.writers, nonblocking) {
                (0, _) => Ok(0),
                (_, true) => Err(Errno::EAGAIN),
                (_, false) => Err(Errno::EBLOCK),
            };
        }
        let n = out.len().min(self.data.len());
        for (o, b) in out.iter_mut().zip(self.data.drain(..n)) {
            *o = b;
        }
        bump();
        Ok(n)
    }

    /// Writes what fits (all of it for up to `PIPE_BUF` bytes, or nothing);
    /// `EPIPE` without readers.
    pub fn write(&mut self, data: &[u8], nonblocking: bool) -> Result<usize> {
        if self.readers == 0 {
            return Err(Errno::EPIPE);
        }
        if data.is_empty() {
            return Ok(0);
        }
        let space = PIPE_SIZE - self.data.len();
        let fits = if data.len() <= PIPE_BUF {
            space >= data.len()
        } else {
            space > 0
        };
        if !fits {
            return Err(if nonblocking {
                Errno::EAGAIN
            } else {
                Errno::EBLOCK
            });
        }
        let n = data.len().min(space);
        self.data.extend(&data[..n]);
        bump();
        Ok(n)
    }

    /// Copies what is there without taking it (`MSG_PEEK`).
    pub fn peek(&self, out: &mut [u8]) -> usize {
        let n = out.len().min(self.data.len());
        for (o, b) in out.iter_mut().zip(self.data.iter()) {
            *o = *b;
        }
        n
    }

    pub fn ino(&self) -> u64 {
        self.ino
    }

    pub fn has_writers(&self) -> bool {
        self.writers > 0
    }

    /// (readable, writable) for poll: end of file and a broken pipe count as ready.
    pub fn poll(&self) -> (bool, bool) {
        (
            !self.data.is_empty() || self.writers == 0,
            self.data.len() < PIPE_SIZE || self.readers == 0,
        )
    }
}

pub struct PipeEnd {
    pub pipe: Rc<RefCell<PipeBuf>>,
    pub write: bool,
    pub flags: Cell<u32>,
}

/// A new pipe: (read end, write end), with `O_NONBLOCK` from `flags`.
pub fn new_pipe(flags: u32) -> (PipeEnd, PipeEnd) {
    let pipe = Rc::new(RefCell::new(PipeBuf {
        data: VecDeque::new(),
        readers: 1,
        writers: 1,
        ino: NEXT_INO.fetch_add(1, Ordering::Relaxed),
    }));
    let status = flags & O_NONBLOCK;
    (
        PipeEnd {
            pipe: pipe.clone(),
            write: false,
            flags: Cell::new(O_RDONLY | status),
        },
        PipeEnd {
            pipe,
            write: true,
            flags: Cell::new(O_WRONLY | status),
        },
    )
}

impl PipeEnd {
    fn nonblocking(&self) -> bool {
        self.flags.get() & O_NONBLOCK != 0
    }
}

impl Drop for PipeEnd {
    fn drop(&mut self) {
        let mut p = self.pipe.borrow_mut();
        if self.write {
            p.writers = p.writers.saturating_sub(1);
        } else {
            p.readers = p.readers.saturating_sub(1);
        }
        bump();
    }
}

impl File for PipeEnd {
    fn read(&self, _dev: &mut Devices, buf: &mut [u8]) -> Result<usize> {
        if self.write {
            return Err(Errno::EBADF);
        }
        self.pipe.borrow_mut().read(buf, self.nonblocking())
    }
    fn write(&self, _dev: &mut Devices, buf: &[u8]) -> Result<usize> {
        if !self.write {
            return Err(Errno::EBADF);
        }
        self.pipe.borrow_mut().write(buf, self.nonblocking())
    }
    fn proc_name(&self) -> Vec<u8> {
        alloc::format!("pipe:[{}]", self.pipe.borrow().ino).into_bytes()
    }
    fn fallocate(&self, _dev: &mut Devices, _mode: u32, _offset: u64, _len: u64) -> Result<()> {
        Err(Errno::ESPIPE)
    }
    fn stat(&self, _dev: &mut Devices) -> Result<[u8; 144]> {
        Ok(Attr {
            ino: self.pipe.borrow().ino,
            mode: S_IFIFO | 0o600,
            nlink: 1,
            blksize: 4096,
            ..Attr::default()
        }
        .to_stat(0xfe))
    }
    fn poll(&self, _dev: &mut Devices) -> (bool, bool) {
        let (r, w) = self.pipe.borrow().poll();
        if self.write {
            (false, w)
        } else {
            (r, false)
        }
    }
    fn flags(&self) -> u32 {
        self.flags.get()
    }
    fn set_flags(&self, flags: u32) {
        self.flags.set(flags);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_flows_then_eof_when_writers_close() {
        let (r, w) = new_pipe(0);
        let mut out = [0u8; 8];
        assert_eq!(
            r.pipe.borrow_mut().read(&mut out, false),
            Err(Errno::EBLOCK)
        );
        assert_eq!(r.pipe.borrow_mut().read(&mut out, true), Err(Errno::EAGAIN));
        assert_eq!(w.pipe.borrow_mut().write(b"hello", false), Ok(5));
        assert_eq!(r.pipe.borrow().poll(), (true, true));
        assert_eq!(r.pipe.borrow_mut().read(&mut out[..3], false), Ok(3));
        assert_eq!(&out[..3], b"hel");
        let w2 = Rc::new(w);
        let w3 = w2.clone();
        drop(w2);
        assert_eq!(r.pipe.borrow_mut().read(&mut out, false), Ok(2));
        assert_eq!(
            r.pipe.borrow_mut().read(&mut out, false),
            Err(Errno::EBLOCK)
        );
        drop(w3);
        assert_eq!(r.pipe.borrow_mut().read(&mut out, false), Ok(0));
    }

    #[test]
    fn full_pipes_block_small_writes_whole_and_broken_pipes_fail() {
        let (r, w) = new_pipe(0);
        let big = alloc::vec![7u8; PIPE_SIZE + 10];
        assert_eq!(w.pipe.borrow_mut().write(&big, false), Ok(PIPE_SIZE));
        assert_eq!(w.pipe.borrow_mut().write(b"x", false), Err(Errno::EBLOCK));
        let mut out = alloc::vec![0u8; 100];
        assert_eq!(r.pipe.borrow_mut().read(&mut out, false), Ok(100));
        // 100 bytes free: a 200-byte write (<= PIPE_BUF) must wait for room.
        assert_eq!(
            w.pipe.borrow_mut().write(&[1; 200], true),
            Err(Errno::EAGAIN)
        );
        assert_eq!(w.pipe.borrow_mut().write(&[1; 100], false), Ok(100));
        drop(r);
        assert_eq!(w.pipe.borrow_mut().write(b"x", false), Err(Errno::EPIPE));
        assert!(w.pipe.borrow().poll().1);
    }
}
