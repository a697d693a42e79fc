//! The kinds of open files: console ends, emulated character devices, FUSE
//! files and directories.

use alloc::vec;
use alloc::vec::Vec;
use core::cell::Cell;

use crate::errno::{Errno, Result};
use crate::fs::fd::{
    File, O_ACCMODE, O_APPEND, O_NONBLOCK, O_RDONLY, O_WRONLY, SEEK_CUR, SEEK_SET,
};
use crate::fs::fuse::SetAttr;
use crate::fs::fuse::VirtioFuse;
use crate::fs::fuse::{self, Attr, S_IFCHR, S_IFIFO};
use crate::fs::vfs::{Node, Vfs};
use crate::fs::Devices;
use crate::mm::cache::{FileKey, Version};

pub(crate) fn synthetic_stat(mode: u32, rdev: u32, ino: u64) -> [u8; 144] {
    Attr {
        ino,
        mode,
        nlink: 1,
        rdev,
        blksize: 4096,
        ..Attr::default()
    }
    .to_stat(0)
}

fn readable(flags: u32) -> bool {
    flags & O_ACCMODE != O_WRONLY
}
pub fn writable(flags: u32) -> bool {
    flags & O_ACCMODE != O_RDONLY
}

/// The process's stdin: the receive queue of the Stdio console. Reported as
/// a pipe, which is what the container backend hands the process too.
pub struct ConsoleIn {
    pub flags: Cell<u32>,
}

impl File for ConsoleIn {
    fn read(&self, dev: &mut Devices, buf: &mut [u8]) -> Result<usize> {
        match dev.stdio.and_then(|i| dev.consoles.get_mut(i)) {
            Some(c) => {
                let nonblocking = self.flags.get() & O_NONBLOCK != 0;
                if !nonblocking && !buf.is_empty() && !c.readable() {
                    // Let other processes run until the VMM has input.
                    dev.want_stdin = true;
                    return Err(Errno::EBLOCK);
                }
                c.read(buf, nonblocking)
            }
            None => Ok(0),
        }
    }
    fn stat(&self, _dev: &mut Devices) -> Result<[u8; 144]> {
        Ok(synthetic_stat(S_IFIFO | 0o600, 0, 1))
    }
    fn proc_name(&self) -> Vec<u8> {
        b"pipe:[1]".to_vec()
    }
    fn as_any(&self) -> Option<&dyn core::any::Any> {
        Some(self)
    }
    fn poll(&self, dev: &mut Devices) -> (bool, bool) {
        let ready = match dev.stdio.and_then(|i| dev.consoles.get_mut(i)) {
            Some(c) => c.readable(),
            None => true,
        };
        (ready, false)
    }
    fn flags(&self) -> u32 {
        self.flags.get()
    }
    fn set_flags(&self, flags: u32) {
        self.flags.set(flags);
    }
}

/// stdout or stderr: a console transmit queue (stderr falls back to the
/// Stdio console when the VMM gave no separate one).
pub struct ConsoleOut {
    pub stderr: bool,
    pub flags: Cell<u32>,
}

impl File for ConsoleOut {
    fn write(&self, dev: &mut Devices, buf: &[u8]) -> Result<usize> {
        let index = if self.stderr {
            dev.stderr.or(dev.stdio)
        } else {
            dev.stdio
        };
        match index.and_then(|i| dev.consoles.get_mut(i)) {
            Some(c) => c.write(buf),
            None => Ok(buf.len()),
        }
    }
    fn stat(&self, _dev: &mut Devices) -> Result<[u8; 144]> {
        Ok(synthetic_stat(
            S_IFIFO | 0o600,
            0,
            2 + u64::from(self.stderr),
        ))
    }
    fn proc_name(&self) -> Vec<u8> {
        alloc::format!("pipe:[{}]", 2 + u64::from(self.stderr)).into_bytes()
    }
    fn as_any(&self) -> Option<&dyn core::any::Any> {
        Some(self)
    }
    fn poll(&self, _dev: &mut Devices) -> (bool, bool) {
        (false, true)
    }
    fn flags(&self) -> u32 {
        self.flags.get()
    }
    fn set_flags(&self, flags: u32) {
        self.flags.set(flags);
    }
}

/// A stdio stream of a process the host started with `capsa exec`: one of
/// the client's descriptors, read and written through the exec device.
/// Reported as a pipe, as the container backend's exec gives pipes.
pub struct ExecStream {
    pub session: u32,
    /// 0 stdin, 1 stdout, 2 stderr.
    pub stream: u32,
    pub flags: Cell<u32>,
}

impl ExecStream {
    /// A terminal request (`capsa_abi::exec::TERMINAL_REQUESTS`), its
    /// argument in kernel memory: the host pty's, when the client asked
    /// for a terminal; ENOTTY otherwise.
    pub fn terminal(&self, request: u32, arg: &mut [u8]) -> Result<()> {
        crate::drivers::exec::ioctl(self.session, self.stream, request, arg)
    }

    fn ino(&self) -> u64 {
        (u64::from(self.session) << 2 | u64::from(self.stream)) + 0x1000
    }
}

impl File for ExecStream {
    fn read(&self, _dev: &mut Devices, buf: &mut [u8]) -> Result<usize> {
        if !readable(self.flags.get()) {
            return Err(Errno::EBADF);
        }
        match crate::drivers::exec::read(self.session, self.stream, buf) {
            // The VMM tells the kernel when input comes, which wakes the
            // reader's retry (see `Kernel::take_host_events`).
            Err(Errno::EAGAIN) if self.flags.get() & O_NONBLOCK == 0 => Err(Errno::EBLOCK),
            other => other,
        }
    }
    fn write(&self, _dev: &mut Devices, buf: &[u8]) -> Result<usize> {
        if !writable(self.flags.get()) {
            return Err(Errno::EBADF);
        }
        crate::drivers::exec::write(self.session, self.stream, buf)
    }
    fn stat(&self, _dev: &mut Devices) -> Result<[u8; 144]> {
        Ok(synthetic_stat(S_IFIFO | 0o600, 0, self.ino()))
    }
    fn proc_name(&self) -> Vec<u8> {
        alloc::format!("pipe:[{}]", self.ino()).into_bytes()
    }
    fn poll(&self, _dev: &mut Devices) -> (bool, bool) {
        if readable(self.flags.get()) {
            (
                crate::drivers::exec::readable(self.session, self.stream),
                false,
            )
        } else {
            (false, true)
        }
    }
    fn flags(&self) -> u32 {
        self.flags.get()
    }
    fn set_flags(&self, flags: u32) {
        self.flags.set(flags);
    }
    fn release(&self, _dev: &mut Devices) {
        crate::drivers::exec::close(self.session, self.stream);
    }
    fn as_any(&self) -> Option<&dyn core::any::Any> {
        Some(self)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CharKind {
    Null,
    Zero,
    Full,
    Random,
}

/// `/dev/null`, `/dev/zero`, `/dev/full`, `/dev/random`, `/dev/urandom`,
/// emulated in the guest (the rootfs usually has no device nodes).
pub struct CharDev {
    pub kind: CharKind,
    pub flags: u32,
}

impl CharDev {
    pub fn by_path(path: &[u8]) -> Option<CharKind> {
        Some(match path {
            b"/dev/null" => CharKind::Null,
            b"/dev/zero" => CharKind::Zero,
            b"/dev/full" => CharKind::Full,
            b"/dev/random" | b"/dev/urandom" => CharKind::Random,
            _ => return None,
        })
    }
}

impl File for CharDev {
    fn read(&self, dev: &mut Devices, buf: &mut [u8]) -> Result<usize> {
        if !readable(self.flags) {
            return Err(Errno::EBADF);
        }
        match self.kind {
            CharKind::Null => Ok(0),
            CharKind::Zero | CharKind::Full => {
                buf.fill(0);
                Ok(buf.len())
            }
            CharKind::Random => {
                dev.rng.fill(buf);
                Ok(buf.len())
            }
        }
    }
    fn write(&self, _dev: &mut Devices, buf: &[u8]) -> Result<usize> {
        if !writable(self.flags) {
            return Err(Errno::EBADF);
        }
        match self.kind {
            CharKind::Full => Err(Errno::ENOSPC),
            _ => Ok(buf.len()),
        }
    }
    fn pread(&self, dev: &mut Devices, buf: &mut [u8], _offset: u64) -> Result<usize> {
        self.read(dev, buf)
    }
    fn pwrite(&self, dev: &mut Devices, buf: &[u8], _offset: u64) -> Result<usize> {
        self.write(dev, buf)
    }
    fn seek(&self, _dev: &mut Devices, _offset: i64, _whence: u32) -> Result<u64> {
        Ok(0)
    }
    fn stat(&self, _dev: &mut Devices) -> Result<[u8; 144]> {
        let (minor, ino) = match self.kind {
            CharKind::Null => (3, 10),
            CharKind::Zero => (5, 11),
            CharKind::Full => (7, 12),
            CharKind::Random => (9, 13),
        };
        Ok(synthetic_stat(S_IFCHR | 0o666, (1 << 8) | minor, ino))
    }
    fn proc_name(&self) -> Vec<u8> {
        match self.kind {
            CharKind::Null => b"/dev/null".to_vec(),
            CharKind::Zero => b"/dev/zero".to_vec(),
            CharKind::Full => b"/dev/full".to_vec(),
            CharKind::Random => b"/dev/urandom".to_vec(),
        }
    }
    fn flags(&self) -> u32 {
        self.flags
    }
}

/// An `O_PATH` descriptor: a place in the file tree (a symlink itself with
/// `O_NOFOLLOW`), not an open file. It serves fstat, fchdir and `*at`
/// calls from a directory, `/proc/self/fd` and execveat; any I/O or change
/// through it is EBADF, as on Linux. No file is opened on the server.
pub struct PathFile {
    pub node: Node,
    pub path: Vec<u8>,
    pub dir: bool,
    pub flags: u32,
}

impl File for PathFile {
    fn read(&self, _dev: &mut Devices, _buf: &mut [u8]) -> Result<usize> {
        Err(Errno::EBADF)
    }
    fn pread(&self, _dev: &mut Devices, _buf: &mut [u8], _offset: u64) -> Result<usize> {
        Err(Errno::EBADF)
    }
    fn pwrite(&self, _dev: &mut Devices, _buf: &[u8], _offset: u64) -> Result<usize> {
        Err(Errno::EBADF)
    }
    fn seek(&self, _dev: &mut Devices, _offset: i64, _whence: u32) -> Result<u64> {
        Err(Errno::EBADF)
    }
    fn stat(&self, dev: &mut Devices) -> Result<[u8; 144]> {
        let attr = dev.vfs.fs(self.node.fs)?.getattr(self.node.id, None)?;
        Ok(attr.to_stat(self.node.fs as u64 + 1))
    }
    fn getdents64(&self, _dev: &mut Devices, _buf: &mut [u8]) -> Result<usize> {
        Err(Errno::EBADF)
    }
    fn ioctl(&self, _dev: &mut Devices, _request: u32, _arg: u64) -> Result<u64> {
        Err(Errno::EBADF)
    }
    fn truncate(&self, _dev: &mut Devices, _len: u64) -> Result<()> {
        Err(Errno::EBADF)
    }
    fn fallocate(&self, _dev: &mut Devices, _mode: u32, _offset: u64, _len: u64) -> Result<()> {
        Err(Errno::EBADF)
    }
    fn sync(&self, _dev: &mut Devices) -> Result<()> {
        Err(Errno::EBADF)
    }
    fn setattr(&self, _dev: &mut Devices, _set: &SetAttr) -> Result<()> {
        Err(Errno::EBADF)
    }
    fn flags(&self) -> u32 {
        self.flags
    }
    fn dir_path(&self) -> Option<&[u8]> {
        self.dir.then_some(self.path.as_slice())
    }
    fn node_key(&self) -> Option<(usize, u64)> {
        Some((self.node.fs, self.node.id))
    }
    fn proc_name(&self) -> Vec<u8> {
        self.path.clone()
    }
    fn pollable(&self) -> bool {
        false
    }
}

pub struct FuseFile {
    pub node: Node,
    pub fh: u64,
    pub flags: Cell<u32>,
    pub offset: Cell<u64>,
    /// Canonical path at open (for `/proc/self/fd`).
    pub path: Vec<u8>,
}

impl FuseFile {
    fn size(&self, dev: &mut Devices) -> Result<u64> {
        Ok(dev
            .vfs
            .fs(self.node.fs)?
            .getattr(self.node.id, Some(self.fh))?
            .size)
    }

    fn key(&self) -> FileKey {
        (self.node.fs, self.node.id)
    }

    /// Close-to-open: an open checks the file against what its cached
    /// pages were read from (see `mm::cache`).
    /// Without the file's attributes nothing cached of it is trusted.
    pub fn revalidate(&self, dev: &mut Devices) {
        let attr = dev
            .vfs
            .fs(self.node.fs)
            .and_then(|fs| fs.getattr(self.node.id, Some(self.fh)));
        match attr {
            Ok(attr) => {
                let version = Version {
                    size: attr.size,
                    mtime: (attr.mtime, attr.mtimensec),
                };
                dev.cache.revalidate(self.key(), version);
            }
            Err(_) => dev.cache.invalidate(self.key()),
        }
    }
}

/// SETATTR of a FUSE node, keeping the page cache in step with a new size.
pub fn set_node_attr(
    dev: &mut Devices,
    node: Node,
    fh: Option<u64>,
    set: &SetAttr,
) -> Result<Attr> {
    let attr = dev.vfs.fs(node.fs)?.setattr(node.id, fh, set)?;
    if set.valid & fuse::fattr::SIZE != 0 {
        dev.cache.truncated((node.fs, node.id), set.size);
    }
    Ok(attr)
}

impl File for FuseFile {
    fn read(&self, dev: &mut Devices, buf: &mut [u8]) -> Result<usize> {
        let n = self.pread(dev, buf, self.offset.get())?;
        self.offset.set(self.offset.get() + n as u64);
        Ok(n)
    }
    fn write(&self, dev: &mut Devices, buf: &[u8]) -> Result<usize> {
        let at = if self.flags.get() & O_APPEND != 0 {
            self.size(dev)?
        } else {
            self.offset.get()
        };
        let n = self.pwrite(dev, buf, at)?;
        self.offset.set(at + n as u64);
        Ok(n)
    }
    fn pread(&self, dev: &mut Devices, buf: &mut [u8], offset: u64) -> Result<usize> {
        if !readable(self.flags.get()) {
            return Err(Errno::EBADF);
        }
        self.read_at(dev, buf, offset)
    }
    fn read_at(&self, dev: &mut Devices, buf: &mut [u8], offset: u64) -> Result<usize> {
        let Devices { cache, vfs, .. } = dev;
        cache.read(self.key(), offset, buf, &mut |at, out| {
            self.fetch(vfs, out, at)
        })
    }
    fn cache_key(&self) -> Option<FileKey> {
        Some(self.key())
    }
    fn fetch(&self, vfs: &mut Vfs<VirtioFuse>, buf: &mut [u8], offset: u64) -> Result<usize> {
        vfs.fs(self.node.fs)?
            .read(self.node.id, self.fh, offset, buf)
    }
    /// Writes go through to the host at once, and into the cached pages
    /// they cover: the host's copy is the one the container's other users
    /// (the host, other containers, a crash) see, and the guest's RAM is
    /// kept small, so nothing waits dirty in the guest but what processes
    /// store through shared mappings (written back on msync, munmap, exit
    /// and exec).
    fn pwrite(&self, dev: &mut Devices, buf: &[u8], offset: u64) -> Result<usize> {
        if !writable(self.flags.get()) {
            return Err(Errno::EBADF);
        }
        if buf.is_empty() {
            return Ok(0);
        }
        let n = dev
            .vfs
            .fs(self.node.fs)?
            .write(self.node.id, self.fh, offset, buf)?;
        dev.cache
            .wrote(self.key(), offset, &buf[..n.min(buf.len())]);
        Ok(n)
    }
    fn seek(&self, dev: &mut Devices, offset: i64, whence: u32) -> Result<u64> {
        crate::fs::fd::seek_in(&self.offset, offset, whence, || self.size(dev))
    }
    fn stat(&self, dev: &mut Devices) -> Result<[u8; 144]> {
        let attr = dev
            .vfs
            .fs(self.node.fs)?
            .getattr(self.node.id, Some(self.fh))?;
        Ok(attr.to_stat(self.node.fs as u64 + 1))
    }
    fn truncate(&self, dev: &mut Devices, len: u64) -> Result<()> {
        if !writable(self.flags.get()) {
            return Err(Errno::EINVAL);
        }
        let set = SetAttr {
            valid: fuse::fattr::SIZE,
            size: len,
            ..SetAttr::default()
        };
        set_node_attr(dev, self.node, Some(self.fh), &set).map(|_| ())
    }
    fn sync(&self, dev: &mut Devices) -> Result<()> {
        dev.vfs
            .fs(self.node.fs)?
            .fsync(self.node.id, self.fh, false)
    }
    fn fallocate(&self, dev: &mut Devices, mode: u32, offset: u64, len: u64) -> Result<()> {
        const FALLOC_FL_KEEP_SIZE: u32 = 1;
        if !writable(self.flags.get()) {
            return Err(Errno::EBADF);
        }
        dev.vfs
            .fs(self.node.fs)?
            .fallocate(self.node.id, self.fh, offset, len, mode)?;
        match mode {
            // Allocation only: the file may grow, no byte changes.
            0 => dev.cache.wrote(self.key(), offset.saturating_add(len), &[]),
            FALLOC_FL_KEEP_SIZE => {}
            // Holes punched, ranges zeroed or collapsed: read again.
            _ => dev.cache.invalidate(self.key()),
        }
        Ok(())
    }
    fn setattr(&self, dev: &mut Devices, set: &SetAttr) -> Result<()> {
        set_node_attr(dev, self.node, Some(self.fh), set).map(|_| ())
    }
    fn flags(&self) -> u32 {
        self.flags.get()
    }
    fn set_flags(&self, flags: u32) {
        self.flags.set(flags);
    }
    fn proc_name(&self) -> Vec<u8> {
        self.path.clone()
    }
    fn pollable(&self) -> bool {
        false
    }
    fn node_key(&self) -> Option<(usize, u64)> {
        Some((self.node.fs, self.node.id))
    }
    fn release(&self, dev: &mut Devices) {
        if let Ok(fs) = dev.vfs.fs(self.node.fs) {
            if writable(self.flags.get()) {
                let _ = fs.flush(self.node.id, self.fh);
            }
            fs.release(self.node.id, self.fh, self.flags.get(), false);
        }
    }
}

pub struct FuseDir {
    pub node: Node,
    pub fh: u64,
    pub flags: u32,
    /// FUSE readdir cookie of the next entry.
    pub offset: Cell<u64>,
    /// How many of the synthetic "." and ".." entries were returned.
    pub dots: Cell<u8>,
    pub path: Vec<u8>,
}

impl File for FuseDir {
    fn read(&self, _dev: &mut Devices, _buf: &mut [u8]) -> Result<usize> {
        Err(Errno::EISDIR)
    }
    fn seek(&self, _dev: &mut Devices, offset: i64, whence: u32) -> Result<u64> {
        // Only rewinding (and re-seeking to a cookie we handed out) is meaningful.
        match whence {
            SEEK_SET if offset >= 0 => {
                if offset == 0 {
                    self.dots.set(0);
                }
                self.offset.set(offset as u64);
                Ok(offset as u64)
            }
            SEEK_CUR if offset == 0 => Ok(self.offset.get()),
            _ => Err(Errno::EINVAL),
        }
    }
    fn stat(&self, dev: &mut Devices) -> Result<[u8; 144]> {
        let attr = dev.vfs.fs(self.node.fs)?.getattr(self.node.id, None)?;
        Ok(attr.to_stat(self.node.fs as u64 + 1))
    }
    fn getdents64(&self, dev: &mut Devices, out: &mut [u8]) -> Result<usize> {
        let mut at = 0;
        // "." and ".." come from the guest: virtio-fs servers (passthrough)
        // leave them out, and programs like `ls -a` expect them.
        while self.dots.get() < 2 {
            let name: &[u8] = if self.dots.get() == 0 { b"." } else { b".." };
            if !fuse::put_dirent64(out, &mut at, self.node.id, 0, 4, name) {
                return if at == 0 { Err(Errno::EINVAL) } else { Ok(at) };
            }
            self.dots.set(self.dots.get() + 1);
        }
        loop {
            // A fuse_dirent is never smaller than the linux_dirent64 it
            // becomes, so asking for the space left always fits.
            let mut raw = vec![0u8; (out.len() - at).min(64 * 1024)];
            if raw.len() < 32 {
                break;
            }
            let fs = dev.vfs.fs(self.node.fs)?;
            let n = fs.readdir(self.node.id, self.fh, self.offset.get(), &mut raw)?;
            if n == 0 {
                break;
            }
            let before = at;
            let mut consumed = false;
            for d in fuse::dirents(&raw[..n.min(raw.len())]) {
                let dot = d.name == b"." || d.name == b"..";
                if !dot && !fuse::put_dirent64(out, &mut at, d.ino, d.off, d.kind as u8, d.name) {
                    break;
                }
                consumed = true;
                self.offset.set(d.off);
            }
            if at > before || !consumed {
                break;
            }
        }
        Ok(at)
    }
    fn sync(&self, _dev: &mut Devices) -> Result<()> {
        Ok(())
    }
    fn setattr(&self, dev: &mut Devices, set: &SetAttr) -> Result<()> {
        dev.vfs
            .fs(self.node.fs)?
            .setattr(self.node.id, None, set)
            .map(|_| ())
    }
    fn flags(&self) -> u32 {
        self.flags
    }
    fn dir_path(&self) -> Option<&[u8]> {
        Some(&self.path)
    }
    fn proc_name(&self) -> Vec<u8> {
        self.path.clone()
    }
    fn pollable(&self) -> bool {
        false
    }
    fn node_key(&self) -> Option<(usize, u64)> {
        Some((self.node.fs, self.node.id))
    }
    fn release(&self, dev: &mut Devices) {
        if let Ok(fs) = dev.vfs.fs(self.node.fs) {
            fs.release(self.node.id, self.fh, 0, true);
        }
    }
}
