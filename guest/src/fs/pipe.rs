//! Pipes: a shared buffer (64 KiB unless F_SETPIPE_SZ changes it) and two
//! kinds of open file (the ends).
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

/// A new pipe's capacity, as on Linux.
pub const PIPE_SIZE: usize = 64 * 1024;
/// The most an F_SETPIPE_SZ may ask without CAP_SYS_RESOURCE (Linux's
/// default /proc/sys/fs/pipe-max-size); capsa's guest grants no process
/// that capability, as this project's hosts grant it to no container.
pub const PIPE_MAX_SIZE: usize = 1 << 20;
const PAGE: usize = 4096;
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
    capacity: usize,
    readers: usize,
    writers: usize,
    ino: u64,
    /// Moves at every read, write and close (see `File::poll_generation`).
    generation: u64,
}

impl PipeBuf {
    /// Reads what is there; `EBLOCK` (or `EAGAIN` when `nonblocking`) if
    /// empty while a writer exists, 0 at end of file.
    pub fn read(&mut self, out: &mut [u8], nonblocking: bool) -> Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        if self.data.is_empty() {
            if self.writers == 0 {
                return Ok(0);
            }
            return Err(Errno::would_block(nonblocking));
        }
        let n = out.len().min(self.data.len());
        for (o, b) in out.iter_mut().zip(self.data.drain(..n)) {
            *o = b;
        }
        self.generation += 1;
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
        let space = self.capacity.saturating_sub(self.data.len());
        let fits = if data.len() <= PIPE_BUF {
            space >= data.len()
        } else {
            space > 0
        };
        if !fits {
            return Err(Errno::would_block(nonblocking));
        }
        let n = data.len().min(space);
        self.data.extend(&data[..n]);
        self.generation += 1;
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

    /// How many bytes a write could add now.
    pub fn room(&self) -> usize {
        self.capacity.saturating_sub(self.data.len())
    }

    /// F_GETPIPE_SZ.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// F_SETPIPE_SZ as Linux's `pipe_set_size`: `requested` rounds up to a
    /// power of two of pages (at least one); more than 2 GiB is EINVAL,
    /// more than `PIPE_MAX_SIZE` EPERM, less than what the pipe holds
    /// EBUSY. Returns the new capacity.
    pub fn set_capacity(&mut self, requested: u64) -> Result<usize> {
        if requested > 1 << 31 {
            return Err(Errno::EINVAL);
        }
        let pages = (requested as usize)
            .div_ceil(PAGE)
            .max(1)
            .next_power_of_two();
        let size = pages * PAGE;
        if size > PIPE_MAX_SIZE && size > self.capacity {
            return Err(Errno::EPERM);
        }
        if self.data.len().div_ceil(PAGE) > pages {
            return Err(Errno::EBUSY);
        }
        self.capacity = size;
        bump();
        Ok(size)
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
            self.data.len() < self.capacity || self.readers == 0,
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
        capacity: PIPE_SIZE,
        readers: 1,
        writers: 1,
        ino: NEXT_INO.fetch_add(1, Ordering::Relaxed),
        generation: 0,
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
        p.generation += 1;
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
    fn poll_generation(&self) -> Option<u64> {
        Some(self.pipe.borrow().generation)
    }
    fn flags(&self) -> u32 {
        self.flags.get()
    }
    fn set_flags(&self, flags: u32) {
        self.flags.set(flags);
    }
    fn as_any(&self) -> Option<&dyn core::any::Any> {
        Some(self)
    }
}

/// The pipe behind a descriptor, if it is one.
pub fn pipe_end(file: &dyn File) -> Option<&PipeEnd> {
    file.as_any()?.downcast_ref::<PipeEnd>()
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

    #[test]
    fn capacity_rounds_to_pages_and_bounds_what_fits() {
        let (r, w) = new_pipe(0);
        let mut p = w.pipe.borrow_mut();
        assert_eq!(p.capacity(), PIPE_SIZE);
        assert_eq!(p.set_capacity(0), Ok(4096));
        assert_eq!(p.set_capacity(5000), Ok(8192));
        assert_eq!(p.set_capacity(12 * 1024), Ok(16 * 1024));
        assert_eq!(p.set_capacity(PIPE_MAX_SIZE as u64 + 1), Err(Errno::EPERM));
        assert_eq!(p.set_capacity((1 << 31) + 1), Err(Errno::EINVAL));
        assert_eq!(p.write(&[1; 20000], true), Ok(16 * 1024));
        assert_eq!(p.write(b"x", true), Err(Errno::EAGAIN));
        assert_eq!(p.set_capacity(4096), Err(Errno::EBUSY));
        drop(p);
        drop(r);
    }
}
