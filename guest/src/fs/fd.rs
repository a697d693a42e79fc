//! File descriptors: the per-fd object trait and the descriptor table.
//!
//! Each kind of open file implements only what it supports; the default
//! methods answer with the errno Linux gives for that kind of misuse.

use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::Cell;

use crate::errno::{Errno, Result};
use crate::fs::fuse::SetAttr;
use crate::fs::fuse::VirtioFuse;
use crate::fs::vfs::Vfs;
use crate::fs::Devices;
use crate::mm::cache::FileKey;

pub const O_ACCMODE: u32 = 3;
pub const O_RDONLY: u32 = 0;
pub const O_WRONLY: u32 = 1;
pub const O_RDWR: u32 = 2;
pub const O_CREAT: u32 = 0o100;
pub const O_EXCL: u32 = 0o200;
pub const O_NOCTTY: u32 = 0o400;
pub const O_TRUNC: u32 = 0o1000;
pub const O_APPEND: u32 = 0o2000;
pub const O_NONBLOCK: u32 = 0o4000;
pub const O_DIRECTORY: u32 = 0o200000;
pub const O_NOFOLLOW: u32 = 0o400000;
pub const O_CLOEXEC: u32 = 0o2000000;
pub const O_PATH: u32 = 0o10000000;
/// Status flags `F_SETFL` may change.
pub const SETFL_MASK: u32 = O_APPEND | O_NONBLOCK;

/// poll(2)'s readiness bits, which epoll's `EPOLL*` share.
pub const POLL_IN: u32 = 0x1;
pub const POLL_OUT: u32 = 0x4;
pub const POLL_ERR: u32 = 0x8;
pub const POLL_HUP: u32 = 0x10;
pub const POLL_NVAL: u32 = 0x20;
pub const POLL_RDNORM: u32 = 0x40;
pub const POLL_WRNORM: u32 = 0x100;
pub const POLL_RDHUP: u32 = 0x2000;

pub const SEEK_SET: u32 = 0;
pub const SEEK_CUR: u32 = 1;
pub const SEEK_END: u32 = 2;
pub const SEEK_DATA: u32 = 3;
pub const SEEK_HOLE: u32 = 4;

pub trait File {
    fn read(&self, _dev: &mut Devices, _buf: &mut [u8]) -> Result<usize> {
        Err(Errno::EBADF)
    }
    fn write(&self, _dev: &mut Devices, _buf: &[u8]) -> Result<usize> {
        Err(Errno::EBADF)
    }
    fn pread(&self, _dev: &mut Devices, _buf: &mut [u8], _offset: u64) -> Result<usize> {
        Err(Errno::ESPIPE)
    }
    fn pwrite(&self, _dev: &mut Devices, _buf: &[u8], _offset: u64) -> Result<usize> {
        Err(Errno::ESPIPE)
    }
    fn seek(&self, _dev: &mut Devices, _offset: i64, _whence: u32) -> Result<u64> {
        Err(Errno::ESPIPE)
    }
    /// Linux `struct stat`.
    fn stat(&self, dev: &mut Devices) -> Result<[u8; 144]>;
    fn getdents64(&self, _dev: &mut Devices, _buf: &mut [u8]) -> Result<usize> {
        Err(Errno::ENOTDIR)
    }
    fn ioctl(&self, _dev: &mut Devices, _request: u32, _arg: u64) -> Result<u64> {
        Err(Errno::ENOTTY)
    }
    fn truncate(&self, _dev: &mut Devices, _len: u64) -> Result<()> {
        Err(Errno::EINVAL)
    }
    /// `fallocate`: ENODEV for anything but a regular file (ESPIPE for pipes).
    fn fallocate(&self, _dev: &mut Devices, _mode: u32, _offset: u64, _len: u64) -> Result<()> {
        Err(Errno::ENODEV)
    }
    fn sync(&self, _dev: &mut Devices) -> Result<()> {
        Ok(())
    }
    /// Changes mode, owner, size or times (`fchmod`, `fchown`, `futimens`).
    fn setattr(&self, _dev: &mut Devices, _set: &SetAttr) -> Result<()> {
        Err(Errno::EPERM)
    }
    /// (readable, writable) without blocking.
    fn poll(&self, _dev: &mut Devices) -> (bool, bool) {
        (true, true)
    }
    /// The readiness as Linux's poll bits (`POLLIN`, `POLLOUT`, and the
    /// `POLLERR`, `POLLHUP` and `POLLRDHUP` sockets add).
    fn poll_mask(&self, dev: &mut Devices) -> u32 {
        let (readable, writable) = self.poll(dev);
        (u32::from(readable) * (POLL_IN | POLL_RDNORM))
            | (u32::from(writable) * (POLL_OUT | POLL_WRNORM))
    }
    /// A count that moves whenever readiness may have changed (data came or
    /// went, an end closed): epoll's edge-triggered entries report when it
    /// moved since their last report, as Linux's report after a wake-up.
    /// None: the file has none, and its entries act level-triggered.
    fn poll_generation(&self) -> Option<u64> {
        None
    }
    /// `O_*` access mode and status flags.
    fn flags(&self) -> u32;
    fn set_flags(&self, _flags: u32) {}
    /// Canonical path of a directory (for `fchdir` and `*at` calls).
    fn dir_path(&self) -> Option<&[u8]> {
        None
    }
    /// The file a lock on this open file is about (file system, node id);
    /// None for files without a node (pipes, emulated devices).
    fn node_key(&self) -> Option<(usize, u64)> {
        None
    }
    /// Whether readiness can change (epoll refuses regular files and
    /// directories, which are always ready).
    fn pollable(&self) -> bool {
        true
    }
    /// The file as its concrete type, for the subsystems that own a kind
    /// of file (sockets) and need it back from a descriptor.
    fn as_any(&self) -> Option<&dyn core::any::Any> {
        None
    }
    /// The epoll instance this file is, if it is one.
    fn as_epoll(&self) -> Option<&crate::fs::event::Epoll> {
        None
    }
    /// What `/proc/self/fd/N` links to.
    fn proc_name(&self) -> Vec<u8> {
        b"anon_inode:[unknown]".to_vec()
    }
    /// Called when the last descriptor referring to this file is closed.
    fn release(&self, _dev: &mut Devices) {}
    /// Whole-file access for the ELF loader and file-backed `mmap`.
    fn read_at(&self, dev: &mut Devices, buf: &mut [u8], offset: u64) -> Result<usize> {
        self.pread(dev, buf, offset)
    }
    /// The page-cache key of a file whose pages the cache holds (regular
    /// files of the FUSE file systems).
    fn cache_key(&self) -> Option<FileKey> {
        None
    }
    /// Reads from the file itself, past the page cache (what the cache
    /// fills itself with).
    fn fetch(&self, _vfs: &mut Vfs<VirtioFuse>, _buf: &mut [u8], _offset: u64) -> Result<usize> {
        Err(Errno::ENODEV)
    }
}

/// lseek on a file with its own offset: moves `offset` relative to the
/// start, itself or `end()` (asked only for `SEEK_END`); never before 0.
pub fn seek_in(
    offset: &Cell<u64>,
    delta: i64,
    whence: u32,
    end: impl FnOnce() -> Result<u64>,
) -> Result<u64> {
    let base = match whence {
        SEEK_SET => 0,
        SEEK_CUR => offset.get() as i64,
        SEEK_END => end()? as i64,
        // As Linux's generic llseek for a file system that reports no
        // holes: all of the file is data, its end the only hole.
        SEEK_DATA | SEEK_HOLE => {
            let eof = end()?;
            let at = u64::try_from(delta)
                .ok()
                .filter(|&at| at < eof)
                .ok_or(Errno::ENXIO)?;
            let at = if whence == SEEK_DATA { at } else { eof };
            offset.set(at);
            return Ok(at);
        }
        _ => return Err(Errno::EINVAL),
    };
    let at = base
        .checked_add(delta)
        .filter(|&v| v >= 0)
        .ok_or(Errno::EINVAL)?;
    offset.set(at as u64);
    Ok(at as u64)
}

#[derive(Clone)]
pub struct Fd {
    pub file: Rc<dyn File>,
    pub cloexec: bool,
}

/// Cloned on fork: the copies share open file descriptions (the `Rc`s).
#[derive(Clone, Default)]
pub struct FdTable {
    slots: Vec<Option<Fd>>,
}

impl FdTable {
    pub fn get(&self, fd: i32) -> Result<&Fd> {
        usize::try_from(fd)
            .ok()
            .and_then(|i| self.slots.get(i))
            .and_then(Option::as_ref)
            .ok_or(Errno::EBADF)
    }

    pub fn file(&self, fd: i32) -> Result<Rc<dyn File>> {
        Ok(self.get(fd)?.file.clone())
    }

    /// The open descriptors in `[first, last]`.
    pub fn open_in(&self, first: u32, last: u32) -> Vec<i32> {
        self.slots
            .iter()
            .enumerate()
            .skip(first as usize)
            .take_while(|(i, _)| *i as u64 <= u64::from(last))
            .filter(|(_, slot)| slot.is_some())
            .filter_map(|(i, _)| i32::try_from(i).ok())
            .collect()
    }

    /// The descriptor the next `insert` would use.
    pub fn lowest_free(&self) -> i32 {
        let i = self
            .slots
            .iter()
            .position(Option::is_none)
            .unwrap_or(self.slots.len());
        i32::try_from(i).unwrap_or(i32::MAX)
    }

    /// Installs at the lowest free descriptor >= `min`, below `limit`.
    pub fn insert_from(&mut self, min: usize, fd: Fd, limit: usize) -> Result<i32> {
        let free = (min..self.slots.len()).find(|&i| self.slots[i].is_none());
        let i = free.unwrap_or(self.slots.len().max(min));
        if i >= limit {
            return Err(Errno::EMFILE);
        }
        if i >= self.slots.len() {
            self.slots.resize(i + 1, None);
        }
        self.slots[i] = Some(fd);
        i32::try_from(i).map_err(|_| Errno::EMFILE)
    }

    pub fn insert(&mut self, fd: Fd, limit: usize) -> Result<i32> {
        self.insert_from(0, fd, limit)
    }

    /// Puts `fd` at `at`, returning what was there.
    pub fn replace(&mut self, at: i32, fd: Fd, limit: usize) -> Result<Option<Fd>> {
        let i = usize::try_from(at).map_err(|_| Errno::EBADF)?;
        if i >= limit {
            return Err(Errno::EBADF);
        }
        if i >= self.slots.len() {
            self.slots.resize(i + 1, None);
        }
        Ok(self.slots[i].replace(fd))
    }

    pub fn remove(&mut self, fd: i32) -> Result<Fd> {
        usize::try_from(fd)
            .ok()
            .and_then(|i| self.slots.get_mut(i))
            .and_then(Option::take)
            .ok_or(Errno::EBADF)
    }

    pub fn set_cloexec(&mut self, fd: i32, cloexec: bool) -> Result<()> {
        let i = usize::try_from(fd).map_err(|_| Errno::EBADF)?;
        match self.slots.get_mut(i) {
            Some(Some(f)) => {
                f.cloexec = cloexec;
                Ok(())
            }
            _ => Err(Errno::EBADF),
        }
    }

    /// Empties the table (process exit).
    pub fn take_all(&mut self) -> Vec<Fd> {
        core::mem::take(&mut self.slots)
            .into_iter()
            .flatten()
            .collect()
    }

    /// Removes the close-on-exec descriptors (execve).
    pub fn take_cloexec(&mut self) -> Vec<Fd> {
        let mut out = Vec::new();
        for slot in &mut self.slots {
            if slot.as_ref().is_some_and(|f| f.cloexec) {
                out.extend(slot.take());
            }
        }
        out
    }

    pub fn open_count(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seek_data_and_hole_see_one_extent_of_data() {
        let at = Cell::new(0);
        let eof = || Ok(5);
        assert_eq!(seek_in(&at, 3, SEEK_DATA, eof), Ok(3));
        assert_eq!(seek_in(&at, 3, SEEK_HOLE, eof), Ok(5));
        assert_eq!(at.get(), 5);
        assert_eq!(seek_in(&at, 5, SEEK_DATA, eof), Err(Errno::ENXIO));
        assert_eq!(seek_in(&at, 5, SEEK_HOLE, eof), Err(Errno::ENXIO));
        assert_eq!(seek_in(&at, -1, SEEK_DATA, eof), Err(Errno::ENXIO));
        assert_eq!(at.get(), 5);
    }

    struct Dummy;
    impl File for Dummy {
        fn stat(&self, _dev: &mut Devices) -> Result<[u8; 144]> {
            Ok([0; 144])
        }
        fn flags(&self) -> u32 {
            O_RDONLY
        }
    }

    fn fd() -> Fd {
        Fd {
            file: Rc::new(Dummy),
            cloexec: false,
        }
    }

    #[test]
    fn lowest_free_descriptor_dup2_and_limits() {
        let mut t = FdTable::default();
        assert_eq!(t.insert(fd(), 8), Ok(0));
        assert_eq!(t.insert(fd(), 8), Ok(1));
        assert_eq!(t.insert(fd(), 8), Ok(2));
        t.remove(1).expect("open");
        assert_eq!(t.insert(fd(), 8), Ok(1));
        assert_eq!(t.insert_from(5, fd(), 8), Ok(5));
        assert_eq!(t.insert(fd(), 8), Ok(3));
        assert!(t.replace(7, fd(), 8).expect("in range").is_none());
        assert!(t.replace(7, fd(), 8).expect("in range").is_some());
        assert_eq!(t.replace(8, fd(), 8).map(|_| ()), Err(Errno::EBADF));
        assert_eq!(t.insert(fd(), 8), Ok(4));
        assert_eq!(t.insert(fd(), 8), Ok(6));
        assert_eq!(t.insert(fd(), 8), Err(Errno::EMFILE));
        assert_eq!(t.remove(-1).map(|_| ()), Err(Errno::EBADF));
        assert_eq!(t.get(99).map(|_| ()), Err(Errno::EBADF));
        t.set_cloexec(0, true).expect("open");
        assert!(t.get(0).expect("open").cloexec);
        assert_eq!(t.open_count(), 8);
    }

    #[test]
    fn forked_tables_share_open_files_and_exec_drops_cloexec() {
        let mut t = FdTable::default();
        t.insert(fd(), 8).expect("fd");
        t.insert(fd(), 8).expect("fd");
        t.set_cloexec(1, true).expect("open");
        let mut child = t.clone();
        // One description, two tables.
        assert_eq!(Rc::strong_count(&t.get(0).expect("open").file), 2);
        let gone = child.take_cloexec();
        assert_eq!(gone.len(), 1);
        assert!(child.get(1).is_err() && child.get(0).is_ok());
        drop(gone);
        assert_eq!(child.take_all().len(), 1);
        assert_eq!(Rc::strong_count(&t.get(0).expect("open").file), 1);
    }

    #[test]
    fn default_methods_give_linux_errnos() {
        // Only the methods that need no devices can run on the host.
        let d = Dummy;
        assert_eq!(d.dir_path(), None);
        assert_eq!(d.flags(), O_RDONLY);
    }
}
