//! File-system and descriptor syscalls.

use alloc::rc::Rc;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::Cell;

use crate::errno::{Errno, Result};
use crate::fs::fd::*;
use crate::fs::files::{CharDev, FuseDir, FuseFile, PathFile};
use crate::fs::fuse::{fattr, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG};
use crate::fs::fuse::{SetAttr, XattrValue};
use crate::fs::locks::{LockKey, Owner, RecordLock};
use crate::fs::notify;
use crate::fs::procfs;
use crate::fs::vfs::{self, Walk};
use crate::kernel::Kernel;
use crate::task::capability::{
    CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER, CAP_MKNOD, CAP_SYS_ADMIN,
};

pub const AT_FDCWD: i32 = -100;
pub const AT_SYMLINK_NOFOLLOW: u32 = 0x100;
pub const AT_REMOVEDIR: u32 = 0x200;
pub const AT_SYMLINK_FOLLOW: u32 = 0x400;
pub const AT_EMPTY_PATH: u32 = 0x1000;
const UTIME_NOW: u64 = (1 << 30) - 1;
const UTIME_OMIT: u64 = (1 << 30) - 2;
const RENAME_NOREPLACE: u32 = 1;
const RWF_HIPRI: u32 = 1;
const RWF_DSYNC: u32 = 2;
const RWF_SYNC: u32 = 4;
const RWF_NOWAIT: u32 = 8;
const F_DUPFD: u32 = 0;
const F_GETFD: u32 = 1;
const F_SETFD: u32 = 2;
const F_GETFL: u32 = 3;
const F_SETFL: u32 = 4;
const F_GETLK: u32 = 5;
const F_SETLK: u32 = 6;
const F_SETLKW: u32 = 7;
const F_OFD_GETLK: u32 = 36;
const F_OFD_SETLK: u32 = 37;
const F_OFD_SETLKW: u32 = 38;
const F_RDLCK: u16 = 0;
const F_WRLCK: u16 = 1;
const F_UNLCK: u16 = 2;
const LOCK_SH: u32 = 1;
const LOCK_EX: u32 = 2;
const LOCK_NB: u32 = 4;
const LOCK_UN: u32 = 8;

/// What locks on `file` are keyed by: its node, or the open file itself.
fn lock_key(file: &Rc<dyn File>) -> LockKey {
    file.node_key()
        .unwrap_or((usize::MAX, Rc::as_ptr(file) as *const u8 as u64))
}
const F_DUPFD_CLOEXEC: u32 = 1030;
const F_SETPIPE_SZ: u32 = 1031;
const F_NOTIFY: u32 = 1026;
const F_GETPIPE_SZ: u32 = 1032;
const FD_CLOEXEC: u64 = 1;
const FIONBIO: u32 = 0x5421;
const FIONCLEX: u32 = 0x5450;
const FIOCLEX: u32 = 0x5451;
const IOV_MAX: u64 = 1024;
/// Packet-mode pipes: accepted, the pipe stays a byte stream.
const O_DIRECT: u32 = 0o40000;

impl Kernel {
    /// The directory relative paths start from for a `*at` call.
    fn at_base(&self, dirfd: i32, path: &[u8]) -> Result<Vec<u8>> {
        if path.first() == Some(&b'/') || dirfd == AT_FDCWD {
            return Ok(self.proc().cwd.clone());
        }
        let fd = self.proc().fds.get(dirfd)?;
        fd.file.dir_path().map(<[u8]>::to_vec).ok_or(Errno::ENOTDIR)
    }

    /// `path` from `dirfd` as an absolute path (lexically: `..` after a
    /// symlink is resolved by the walk that follows).
    pub fn absolute_at(&self, dirfd: i32, path: &[u8]) -> Result<Vec<u8>> {
        if path.first() == Some(&b'/') {
            return Ok(path.to_vec());
        }
        let base = self.at_base(dirfd, path)?;
        Ok(vfs::join(&base, path))
    }

    fn walk_at(&mut self, dirfd: i32, path: &[u8], follow: bool) -> Result<Walk> {
        let base = self.at_base(dirfd, path)?;
        self.dev.vfs.walk(&base, path, follow)
    }

    fn walk_parent_at(&mut self, dirfd: i32, path: &[u8]) -> Result<(Walk, Vec<u8>)> {
        let base = self.at_base(dirfd, path)?;
        let (dir, name) = self.dev.vfs.walk_parent(&base, path)?;
        if name.is_empty() {
            // The path named the root itself, which always exists.
            return Err(Errno::EEXIST);
        }
        if name == b"." || name == b".." {
            return Err(Errno::EINVAL);
        }
        Ok((dir, name))
    }

    /// Lexically normalised absolute form of `path` (for emulated /dev and /proc).
    fn lexical(&self, base: &[u8], path: &[u8]) -> Vec<u8> {
        let mut parts: Vec<&[u8]> = Vec::new();
        let full = if path.first() == Some(&b'/') {
            path.to_vec()
        } else {
            vfs::join(base, path)
        };
        for c in full.split(|&b| b == b'/') {
            match c {
                b"" | b"." => {}
                b".." => {
                    parts.pop();
                }
                c => parts.push(c),
            }
        }
        let mut out = Vec::new();
        for p in parts {
            out.push(b'/');
            out.extend_from_slice(p);
        }
        if out.is_empty() {
            out.push(b'/');
        }
        out
    }

    pub fn install(&mut self, file: Rc<dyn File>, cloexec: bool) -> Result<u64> {
        let limit = self.nofile_limit();
        self.proc_mut()
            .fds
            .insert(Fd { file, cloexec }, limit)
            .map(|fd| fd as u64)
    }

    pub fn sys_openat(&mut self, dirfd: i32, path: u64, flags: u32, mode: u32) -> Result<u64> {
        let path = self.user_cstr(path)?;
        let cloexec = flags & O_CLOEXEC != 0;
        let file = self.open_path(dirfd, &path, flags, mode)?;
        self.install(file, cloexec)
    }

    fn open_path(
        &mut self,
        dirfd: i32,
        path: &[u8],
        flags: u32,
        mode: u32,
    ) -> Result<Rc<dyn File>> {
        // O_PATH ignores every flag but these (Linux's open(2)).
        let flags = if flags & O_PATH != 0 {
            flags & (O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        } else {
            flags
        };
        let base = self.at_base(dirfd, path)?;
        let lexical = self.lexical(&base, path);
        if let Some(kind) = CharDev::by_path(&lexical) {
            return Ok(Rc::new(CharDev {
                kind,
                flags: flags & (O_ACCMODE | SETFL_MASK),
            }));
        }
        if let Some(opened) = self.open_terminal(&lexical, flags) {
            return opened;
        }
        if procfs::is_proc(&lexical) {
            let follow = flags & O_NOFOLLOW == 0;
            return match self.proc_entry(&lexical, follow, true)? {
                procfs::Entry::Link(target, None) if follow => {
                    self.open_path(AT_FDCWD, &target, flags, mode)
                }
                entry => procfs::open_entry(entry, flags),
            };
        }
        let access = flags & O_ACCMODE;
        let keep = flags & (O_ACCMODE | O_APPEND | O_NONBLOCK);
        if flags & O_CREAT != 0 && path.ends_with(b"/") {
            // As Linux: a trailing slash names a directory, which O_CREAT
            // never opens or makes, once the directories before it exist.
            return Err(match self.walk_parent_at(dirfd, path) {
                Ok(_) | Err(Errno::EEXIST) => Errno::EISDIR,
                Err(e) => e,
            });
        }
        if flags & O_CREAT != 0 {
            let (dir, name) = self.walk_parent_at(dirfd, path)?;
            let exists =
                crate::fs::vfs::FsOps::lookup(&mut self.dev.vfs, dir.node.fs, dir.node.id, &name);
            match exists {
                Ok(_) if flags & O_EXCL != 0 => return Err(Errno::EEXIST),
                Ok(_) => {}
                Err(Errno::ENOENT) => {
                    let umask = self.proc_mut().umask;
                    let fs = self.dev.vfs.fs(dir.node.fs)?;
                    let open_flags = keep & !O_NONBLOCK;
                    let (id, attr, fh) = fs.create(
                        dir.node.id,
                        &name,
                        open_flags,
                        S_IFREG | (mode & 0o7777 & !umask),
                        umask,
                    )?;
                    self.dev.vfs.remember(dir.node, &name, id, &attr);
                    let node = crate::fs::vfs::Node {
                        fs: dir.node.fs,
                        id,
                    };
                    let file = FuseFile {
                        node,
                        fh,
                        flags: Cell::new(keep),
                        offset: Cell::new(0),
                        path: vfs::join(&dir.path, &name),
                    };
                    file.revalidate(&mut self.dev);
                    self.dir_event(&dir.path, notify::DN_CREATE);
                    return Ok(Rc::new(file));
                }
                Err(e) => return Err(e),
            }
        }
        let w = self.walk_at(dirfd, path, flags & O_NOFOLLOW == 0)?;
        // CAP_DAC_OVERRIDE opens anything for reading and writing.
        let overrides = self.proc().creds.capable(CAP_DAC_OVERRIDE);
        if !overrides && w.mode & S_IFMT != S_IFLNK && flags & O_PATH == 0 {
            let want = match access {
                O_RDONLY => vfs::MAY_READ,
                O_WRONLY => vfs::MAY_WRITE,
                _ => vfs::MAY_READ | vfs::MAY_WRITE,
            };
            self.check_access(w.node, want)?;
        }
        if flags & O_PATH != 0 {
            let dir = w.mode & S_IFMT == S_IFDIR;
            if flags & O_DIRECTORY != 0 && !dir {
                return Err(Errno::ENOTDIR);
            }
            return Ok(Rc::new(PathFile {
                node: w.node,
                path: w.path,
                dir,
                flags: flags & !O_CLOEXEC,
            }));
        }
        match w.mode & S_IFMT {
            S_IFLNK => Err(Errno::ELOOP),
            S_IFDIR => {
                if access != O_RDONLY {
                    return Err(Errno::EISDIR);
                }
                let fh = self.dev.vfs.fs(w.node.fs)?.opendir(w.node.id)?;
                Ok(Rc::new(FuseDir {
                    node: w.node,
                    fh,
                    flags: keep | O_DIRECTORY,
                    offset: Cell::new(0),
                    dots: Cell::new(0),
                    path: w.path,
                }))
            }
            _ if flags & O_DIRECTORY != 0 => Err(Errno::ENOTDIR),
            _ => {
                let fs = self.dev.vfs.fs(w.node.fs)?;
                let fh = fs.open(w.node.id, keep & !O_NONBLOCK)?;
                let file = FuseFile {
                    node: w.node,
                    fh,
                    flags: Cell::new(keep),
                    offset: Cell::new(0),
                    path: w.path,
                };
                if flags & O_TRUNC != 0 && access != O_RDONLY {
                    let set = SetAttr {
                        valid: fattr::SIZE,
                        ..SetAttr::default()
                    };
                    crate::fs::files::set_node_attr(&mut self.dev, w.node, Some(fh), &set)?;
                }
                file.revalidate(&mut self.dev);
                Ok(Rc::new(file))
            }
        }
    }

    /// memfd_create: an anonymous file in memory. The guest keeps no file
    /// data of its own, so it is a file made and at once unlinked in the
    /// instance's `/dev/shm` tmpfs (or `/tmp`, without one): its pages live
    /// in host memory charged to the instance and are shared by every
    /// mapping through the page cache, as any file's; `/proc` shows it as
    /// Linux does, `/memfd:NAME (deleted)`. Seals are not kept (sealing
    /// requests answer EINVAL, as on a file that does not allow them).
    pub fn sys_memfd_create(&mut self, name: u64, flags: u32) -> Result<u64> {
        const MFD_CLOEXEC: u32 = 1;
        // MFD_ALLOW_SEALING, MFD_HUGETLB (with a page size in the top
        // bits), MFD_NOEXEC_SEAL, MFD_EXEC: accepted; the file is the same.
        const KNOWN: u32 = 0x1f | 0x3f << 26;
        let name = self.user_cstr(name)?;
        if flags & !KNOWN != 0 || name.len() > 249 {
            return Err(Errno::EINVAL);
        }
        static NEXT: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
        let tgid = self.procs.tgid(self.cur);
        let mut display = b"/memfd:".to_vec();
        display.extend_from_slice(&name);
        display.extend_from_slice(b" (deleted)");
        for dir in [b"/dev/shm".as_slice(), b"/tmp"] {
            let n = NEXT.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
            let path = [dir, alloc::format!("/.capsa-memfd-{tgid}-{n}").as_bytes()].concat();
            let Ok((parent, leaf)) = self.walk_parent_at(AT_FDCWD, &path) else {
                continue;
            };
            let Ok(fs) = self.dev.vfs.fs(parent.node.fs) else {
                continue;
            };
            let Ok((id, _attr, fh)) =
                fs.create(parent.node.id, &leaf, O_RDWR | O_EXCL, S_IFREG | 0o600, 0)
            else {
                continue;
            };
            let _ = fs.unlink(parent.node.id, &leaf, false);
            self.dev.vfs.forget(parent.node, &leaf);
            let file = FuseFile {
                node: crate::fs::vfs::Node {
                    fs: parent.node.fs,
                    id,
                },
                fh,
                flags: Cell::new(O_RDWR),
                offset: Cell::new(0),
                path: display,
            };
            file.revalidate(&mut self.dev);
            return self.install(Rc::new(file), flags & MFD_CLOEXEC != 0);
        }
        Err(Errno::ENOSYS)
    }

    /// `event` happened to an entry of directory `dir` (a canonical path):
    /// dnotify's watches of it owe their owners a SIGIO.
    fn dir_event(&mut self, dir: &[u8], event: u32) {
        if !self.dev.dnotify.is_empty() {
            self.dev.dnotify.event(dir, event);
        }
    }

    /// `event` happened to a regular file through `file`: its directory's
    /// watches hear of it (by the path it was opened as).
    fn file_event(&mut self, file: &dyn File, event: u32) {
        if !self.dev.dnotify.is_empty() && file.cache_key().is_some() {
            let path = file.proc_name();
            self.dir_event(notify::parent(&path), event);
        }
    }

    pub fn sys_close(&mut self, fd: i32) -> Result<u64> {
        let entry = self.proc_mut().fds.remove(fd)?;
        self.release_if_last(entry);
        Ok(0)
    }

    /// close_range: closes (or with CLOSE_RANGE_CLOEXEC marks close-on-exec)
    /// every open descriptor in `[first, last]`. CLOSE_RANGE_UNSHARE needs
    /// nothing: threads share the table, and a process's copy is its own
    /// already once it forked.
    pub fn sys_close_range(&mut self, first: u32, last: u32, flags: u32) -> Result<u64> {
        const CLOSE_RANGE_UNSHARE: u32 = 2;
        const CLOSE_RANGE_CLOEXEC: u32 = 4;
        if flags & !(CLOSE_RANGE_UNSHARE | CLOSE_RANGE_CLOEXEC) != 0 || first > last {
            return Err(Errno::EINVAL);
        }
        for fd in self.proc().fds.open_in(first, last) {
            if flags & CLOSE_RANGE_CLOEXEC != 0 {
                self.proc_mut().fds.set_cloexec(fd, true)?;
            } else {
                let entry = self.proc_mut().fds.remove(fd)?;
                self.release_if_last(entry);
            }
        }
        Ok(0)
    }

    fn release_if_last(&mut self, entry: Fd) {
        // Closing any descriptor of a file drops the process's POSIX locks on it.
        let tgid = self.procs.tgid(self.cur);
        self.locks.release_process(lock_key(&entry.file), tgid);
        if Rc::strong_count(&entry.file) == 1 {
            entry.file.release(&mut self.dev);
        }
    }

    pub fn sys_read(&mut self, fd: i32, buf: u64, len: u64) -> Result<u64> {
        let file = self.proc_mut().fds.file(fd)?;
        let buf = self.user_buf_mut(buf, len as usize)?;
        let n = file.read(&mut self.dev, buf)?;
        self.file_event(&*file, notify::DN_ACCESS);
        Ok(n as u64)
    }

    pub fn sys_write(&mut self, fd: i32, buf: u64, len: u64) -> Result<u64> {
        let file = self.proc_mut().fds.file(fd)?;
        if crate::net::socket::socket_of(&*file).is_some() {
            // write(2) on a socket is send(2) without flags, as on Linux.
            return self.sys_sendto(fd, buf, len, 0, 0, 0);
        }
        let buf = self.user_buf(buf, len as usize)?;
        let n = file.write(&mut self.dev, buf)?;
        self.file_event(&*file, notify::DN_MODIFY);
        Ok(n as u64)
    }

    pub fn sys_pread(&mut self, fd: i32, buf: u64, len: u64, offset: u64) -> Result<u64> {
        let file = self.proc_mut().fds.file(fd)?;
        let buf = self.user_buf_mut(buf, len as usize)?;
        let n = file.pread(&mut self.dev, buf, offset)?;
        self.file_event(&*file, notify::DN_ACCESS);
        Ok(n as u64)
    }

    pub fn sys_pwrite(&mut self, fd: i32, buf: u64, len: u64, offset: u64) -> Result<u64> {
        let file = self.proc_mut().fds.file(fd)?;
        let buf = self.user_buf(buf, len as usize)?;
        let n = file.pwrite(&mut self.dev, buf, offset)?;
        self.file_event(&*file, notify::DN_MODIFY);
        Ok(n as u64)
    }

    /// The buffers of an iovec array; `write`: the kernel fills them.
    pub(crate) fn iovecs(
        &mut self,
        iov: u64,
        count: u64,
        write: bool,
    ) -> Result<Vec<&'static mut [u8]>> {
        if count > IOV_MAX {
            return Err(Errno::EINVAL);
        }
        let raw = self.user_buf(iov, count as usize * 16)?;
        let mut out = Vec::with_capacity(count as usize);
        for v in raw.chunks_exact(16) {
            let base = u64::from_le_bytes(v[..8].try_into().map_err(|_| Errno::EFAULT)?);
            let len = u64::from_le_bytes(v[8..].try_into().map_err(|_| Errno::EFAULT)?);
            out.push(if write {
                self.user_buf_mut(base, len as usize)?
            } else {
                self.user_buf(base, len as usize)?
            });
        }
        Ok(out)
    }

    pub fn sys_readv(&mut self, fd: i32, iov: u64, count: u64, offset: Option<u64>) -> Result<u64> {
        let file = self.proc_mut().fds.file(fd)?;
        let mut total = 0u64;
        for buf in self.iovecs(iov, count, true)? {
            let want = buf.len();
            let n = match offset {
                Some(o) => file.pread(&mut self.dev, buf, o + total),
                None => file.read(&mut self.dev, buf),
            };
            let n = match n {
                Ok(n) => n,
                // What was read so far is the answer; the next call blocks.
                Err(_) if total > 0 => break,
                Err(e) => return Err(e),
            };
            total += n as u64;
            if n < want {
                break;
            }
        }
        Ok(total)
    }

    pub fn sys_writev(
        &mut self,
        fd: i32,
        iov: u64,
        count: u64,
        offset: Option<u64>,
    ) -> Result<u64> {
        let file = self.proc_mut().fds.file(fd)?;
        let bufs = self.iovecs(iov, count, false)?;
        // Gather small vectors into one write: one device request instead of many.
        let total_len: usize = bufs.iter().map(|b| b.len()).sum();
        if bufs.len() > 1 && total_len <= 64 * 1024 {
            let mut joined = Vec::with_capacity(total_len);
            for b in &bufs {
                joined.extend_from_slice(b);
            }
            let n = match offset {
                Some(o) => file.pwrite(&mut self.dev, &joined, o)?,
                None => file.write(&mut self.dev, &joined)?,
            };
            self.file_event(&*file, notify::DN_MODIFY);
            return Ok(n as u64);
        }
        let mut total = 0u64;
        for buf in bufs {
            let n = match offset {
                Some(o) => file.pwrite(&mut self.dev, buf, o + total),
                None => file.write(&mut self.dev, buf),
            };
            let n = match n {
                Ok(n) => n,
                Err(_) if total > 0 => break,
                Err(e) => return Err(e),
            };
            total += n as u64;
            if n < buf.len() {
                break;
            }
        }
        self.file_event(&*file, notify::DN_MODIFY);
        Ok(total)
    }

    pub fn sys_preadv(&mut self, fd: i32, iov: u64, count: u64, offset: u64) -> Result<u64> {
        self.sys_readv(fd, iov, count, Some(offset))
    }

    pub fn sys_pwritev(&mut self, fd: i32, iov: u64, count: u64, offset: u64) -> Result<u64> {
        self.sys_writev(fd, iov, count, Some(offset))
    }

    /// preadv2 and pwritev2: offset -1 is the file position, as readv and
    /// writev use. RWF_HIPRI asks for polled I/O, which a request to the
    /// file server already is; RWF_NOWAIT makes a pipe's end answer EAGAIN
    /// instead of blocking (a file's I/O never waits for other tasks);
    /// RWF_DSYNC and RWF_SYNC make a write durable (fsync after it).
    /// RWF_APPEND is EOPNOTSUPP, as for a file system without it, and so is
    /// any unknown flag.
    pub fn sys_preadv2(
        &mut self,
        fd: i32,
        iov: u64,
        count: u64,
        offset: i64,
        flags: u32,
    ) -> Result<u64> {
        if flags & !(RWF_HIPRI | RWF_NOWAIT) != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        let offset = u64::try_from(offset).ok();
        self.without_waiting(fd, flags, |k| k.sys_readv(fd, iov, count, offset))
    }

    pub fn sys_pwritev2(
        &mut self,
        fd: i32,
        iov: u64,
        count: u64,
        offset: i64,
        flags: u32,
    ) -> Result<u64> {
        if flags & !(RWF_HIPRI | RWF_NOWAIT | RWF_DSYNC | RWF_SYNC) != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        let offset = u64::try_from(offset).ok();
        let n = self.without_waiting(fd, flags, |k| k.sys_writev(fd, iov, count, offset))?;
        if flags & (RWF_DSYNC | RWF_SYNC) != 0 {
            let file = self.proc().fds.file(fd)?;
            file.sync(&mut self.dev)?;
        }
        Ok(n)
    }

    /// Runs `io` on `fd` as if it were O_NONBLOCK when `flags` has RWF_NOWAIT.
    fn without_waiting(
        &mut self,
        fd: i32,
        flags: u32,
        io: impl FnOnce(&mut Self) -> Result<u64>,
    ) -> Result<u64> {
        if flags & RWF_NOWAIT == 0 {
            return io(self);
        }
        let file = self.proc().fds.file(fd)?;
        let status = file.flags();
        file.set_flags(status | O_NONBLOCK);
        let result = io(self);
        file.set_flags(status);
        result
    }

    pub fn sys_sendfile(
        &mut self,
        out_fd: i32,
        in_fd: i32,
        offset_ptr: u64,
        count: u64,
    ) -> Result<u64> {
        let input = self.proc_mut().fds.file(in_fd)?;
        let output = self.proc_mut().fds.file(out_fd)?;
        let mut buf = vec![0u8; (count as usize).min(1 << 20)];
        // The input advances by what the output took, so a partial or
        // blocked write loses nothing: read at the position, then move it.
        let at = match self.user_offset(offset_ptr)? {
            Some(at) => at,
            None => match input.seek(&mut self.dev, 0, SEEK_CUR) {
                Ok(at) => at,
                Err(_) => {
                    // A pipe or socket as the input: what is read is written.
                    let n = input.read(&mut self.dev, &mut buf)?;
                    return output.write(&mut self.dev, &buf[..n]).map(|n| n as u64);
                }
            },
        };
        let n = input.pread(&mut self.dev, &mut buf, at)?;
        let written = if n == 0 {
            0
        } else {
            output.write(&mut self.dev, &buf[..n])?
        };
        self.advance(&input, offset_ptr, at + written as u64)?;
        Ok(written as u64)
    }

    /// An offset a call takes by pointer (0: none, use the file's own);
    /// negative is EINVAL.
    fn user_offset(&mut self, ptr: u64) -> Result<Option<u64>> {
        if ptr == 0 {
            return Ok(None);
        }
        let at = self.get_u64(ptr)?;
        if (at as i64) < 0 {
            return Err(Errno::EINVAL);
        }
        Ok(Some(at))
    }

    /// Where a call works in `file`: the offset it was given, or the
    /// file's own position (which the caller moves by what it used).
    fn position(&mut self, file: &Rc<dyn File>, at: Option<u64>) -> Result<u64> {
        match at {
            Some(at) => Ok(at),
            None => file.seek(&mut self.dev, 0, SEEK_CUR),
        }
    }

    /// copy_file_range: between regular files, by reads and writes in the
    /// guest (the two files may be on different servers); at most 1 MiB
    /// per call, as Linux may also return short.
    pub fn sys_copy_file_range(
        &mut self,
        in_fd: i32,
        in_off: u64,
        out_fd: i32,
        out_off: u64,
        len: u64,
        flags: u32,
    ) -> Result<u64> {
        let input = self.proc_mut().fds.file(in_fd)?;
        let output = self.proc_mut().fds.file(out_fd)?;
        if flags != 0 {
            return Err(Errno::EINVAL);
        }
        if input.flags() & O_ACCMODE == O_WRONLY
            || output.flags() & O_ACCMODE == O_RDONLY
            || output.flags() & O_APPEND != 0
        {
            return Err(Errno::EBADF);
        }
        for file in [&input, &output] {
            if file.dir_path().is_some() {
                return Err(Errno::EISDIR);
            }
            if file.cache_key().is_none() {
                return Err(Errno::EINVAL);
            }
        }
        let (in_at, out_at) = (self.user_offset(in_off)?, self.user_offset(out_off)?);
        let mut buf = vec![0u8; (len as usize).min(1 << 20)];
        let from = self.position(&input, in_at)?;
        let n = input.pread(&mut self.dev, &mut buf, from)?;
        if n == 0 {
            return Ok(0);
        }
        let to = self.position(&output, out_at)?;
        let same = input.cache_key() == output.cache_key();
        if same && from < to + n as u64 && to < from + n as u64 {
            return Err(Errno::EINVAL);
        }
        let written = output.pwrite(&mut self.dev, &buf[..n], to)?;
        self.advance(&input, in_off, from + written as u64)?;
        self.advance(&output, out_off, to + written as u64)?;
        Ok(written as u64)
    }

    /// Moves a call's offset past what it used: the one passed by pointer,
    /// else the file's own position.
    fn advance(&mut self, file: &Rc<dyn File>, offset_ptr: u64, end: u64) -> Result<()> {
        if offset_ptr != 0 {
            self.put_user(offset_ptr, &end.to_le_bytes())
        } else {
            file.seek(&mut self.dev, end as i64, SEEK_SET).map(|_| ())
        }
    }

    /// splice: one end is a pipe; the bytes are copied through the guest
    /// (at most 64 KiB per call). From a pipe, only what the output took
    /// leaves it; into a pipe, only what fits is read.
    pub fn sys_splice(
        &mut self,
        in_fd: i32,
        in_off: u64,
        out_fd: i32,
        out_off: u64,
        len: u64,
        flags: u32,
    ) -> Result<u64> {
        const SPLICE_F_NONBLOCK: u32 = 2;
        let input = self.proc_mut().fds.file(in_fd)?;
        let output = self.proc_mut().fds.file(out_fd)?;
        let in_pipe = crate::fs::pipe::pipe_end(&*input)
            .filter(|e| !e.write)
            .map(|e| e.pipe.clone());
        let out_pipe = crate::fs::pipe::pipe_end(&*output)
            .filter(|e| e.write)
            .map(|e| e.pipe.clone());
        if input.flags() & O_ACCMODE == O_WRONLY || output.flags() & O_ACCMODE == O_RDONLY {
            return Err(Errno::EBADF);
        }
        if in_pipe.is_none() && out_pipe.is_none() {
            return Err(Errno::EINVAL);
        }
        if (in_pipe.is_some() && in_off != 0) || (out_pipe.is_some() && out_off != 0) {
            return Err(Errno::ESPIPE);
        }
        if len == 0 {
            return Ok(0);
        }
        let nonblocking = flags & SPLICE_F_NONBLOCK != 0;
        let mut buf = vec![0u8; (len as usize).min(64 * 1024)];
        if let Some(pipe) = in_pipe {
            let n = {
                let p = pipe.borrow();
                let n = p.peek(&mut buf);
                if n == 0 {
                    // Empty: end of file without writers, else wait.
                    if !p.has_writers() {
                        return Ok(0);
                    }
                    return Err(Errno::would_block(
                        nonblocking || input.flags() & O_NONBLOCK != 0,
                    ));
                }
                n
            };
            let written = match (self.user_offset(out_off)?, &out_pipe) {
                (_, Some(out)) => out
                    .borrow_mut()
                    .write(&buf[..n], nonblocking || output.flags() & O_NONBLOCK != 0)?,
                (Some(at), None) => {
                    let w = output.pwrite(&mut self.dev, &buf[..n], at)?;
                    self.put_user(out_off, &(at + w as u64).to_le_bytes())?;
                    w
                }
                (None, None) => output.write(&mut self.dev, &buf[..n])?,
            };
            // Take from the pipe what the output took (the same bytes).
            pipe.borrow_mut().read(&mut buf[..written], true)?;
            return Ok(written as u64);
        }
        let Some(out) = out_pipe else {
            return Err(Errno::EINVAL);
        };
        let room = out.borrow().room();
        if room == 0 {
            return Err(Errno::would_block(
                nonblocking || output.flags() & O_NONBLOCK != 0,
            ));
        }
        let want = buf.len().min(room);
        let in_at = self.user_offset(in_off)?;
        let n = match in_at {
            // A socket or other stream: what is read goes in.
            None if input.cache_key().is_none() => input.read(&mut self.dev, &mut buf[..want])?,
            at => {
                let from = self.position(&input, at)?;
                let n = input.pread(&mut self.dev, &mut buf[..want], from)?;
                self.advance(&input, in_off, from + n as u64)?;
                n
            }
        };
        if n == 0 {
            return Ok(0);
        }
        let written = out.borrow_mut().write(&buf[..n], true)?;
        Ok(written as u64)
    }

    pub fn sys_lseek(&mut self, fd: i32, offset: i64, whence: u32) -> Result<u64> {
        let file = self.proc_mut().fds.file(fd)?;
        file.seek(&mut self.dev, offset, whence)
    }

    pub fn sys_fstat(&mut self, fd: i32, out: u64) -> Result<u64> {
        let file = self.proc_mut().fds.file(fd)?;
        let st = file.stat(&mut self.dev)?;
        self.put_user(out, &st)?;
        Ok(0)
    }

    fn stat_path(&mut self, dirfd: i32, path: &[u8], flags: u32) -> Result<[u8; 144]> {
        if path.is_empty() {
            if flags & AT_EMPTY_PATH != 0 {
                let file = self.proc_mut().fds.file(dirfd)?;
                return file.stat(&mut self.dev);
            }
            return Err(Errno::ENOENT);
        }
        let base = self.at_base(dirfd, path)?;
        let lexical = self.lexical(&base, path);
        if let Some(kind) = CharDev::by_path(&lexical) {
            return CharDev {
                kind,
                flags: O_RDONLY,
            }
            .stat(&mut self.dev);
        }
        if let Some(stat) = self.stat_terminal(&lexical) {
            return stat;
        }
        if procfs::is_proc(&lexical) {
            let follow = flags & AT_SYMLINK_NOFOLLOW == 0;
            return match self.proc_entry(&lexical, follow, false)? {
                procfs::Entry::Link(target, None) if follow => {
                    self.stat_path(AT_FDCWD, &target, flags)
                }
                procfs::Entry::Link(_, Some(file)) if follow => file.stat(&mut self.dev),
                entry => Ok(entry.stat()),
            };
        }
        let w = self.walk_at(dirfd, path, flags & AT_SYMLINK_NOFOLLOW == 0)?;
        let attr = self.dev.vfs.fs(w.node.fs)?.getattr(w.node.id, None)?;
        Ok(attr.to_stat(w.node.fs as u64 + 1))
    }

    pub fn sys_fstatat(&mut self, dirfd: i32, path: u64, out: u64, flags: u32) -> Result<u64> {
        let path = self.user_cstr(path)?;
        let st = self.stat_path(dirfd, &path, flags)?;
        self.put_user(out, &st)?;
        Ok(0)
    }

    pub fn sys_statx(
        &mut self,
        dirfd: i32,
        path: u64,
        flags: u32,
        _mask: u32,
        out: u64,
    ) -> Result<u64> {
        let path = self.user_cstr(path)?;
        let st = self.stat_path(dirfd, &path, flags)?;
        let u64_at = |at: usize| u64::from_le_bytes(st[at..at + 8].try_into().unwrap_or([0; 8]));
        let mut x = [0u8; 256];
        let mut put = |at: usize, bytes: &[u8]| x[at..at + bytes.len()].copy_from_slice(bytes);
        put(0, &0x7ffu32.to_le_bytes()); // STATX_BASIC_STATS
        put(4, &(u64_at(56) as u32).to_le_bytes()); // blksize
        put(16, &(u64_at(16) as u32).to_le_bytes()); // nlink
        put(20, &(u64_at(24) >> 32).to_le_bytes()[..4]); // uid
        put(24, &(u64_at(32) as u32).to_le_bytes()); // gid
        put(28, &(u64_at(24) as u16).to_le_bytes()); // mode
        put(32, &u64_at(8).to_le_bytes()); // ino
        put(40, &u64_at(48).to_le_bytes()); // size
        put(48, &u64_at(64).to_le_bytes()); // blocks
        for (at, sec, nsec) in [(64, 72, 80), (96, 104, 112), (112, 88, 96), (80, 104, 112)] {
            put(at, &u64_at(sec).to_le_bytes());
            put(at + 8, &(u64_at(nsec) as u32).to_le_bytes());
        }
        let rdev = u64_at(40);
        put(128, &((rdev >> 8) as u32 & 0xfff).to_le_bytes());
        put(132, &(rdev as u32 & 0xff).to_le_bytes());
        let dev = u64_at(0);
        put(140, &(dev as u32).to_le_bytes());
        self.put_user(out, &x)?;
        Ok(0)
    }

    pub fn sys_getdents64(&mut self, fd: i32, buf: u64, len: u64) -> Result<u64> {
        let file = self.proc_mut().fds.file(fd)?;
        let buf = self.user_buf_mut(buf, len as usize)?;
        file.getdents64(&mut self.dev, buf).map(|n| n as u64)
    }

    pub fn sys_readlinkat(&mut self, dirfd: i32, path: u64, buf: u64, size: u64) -> Result<u64> {
        let path = self.user_cstr(path)?;
        if size == 0 {
            return Err(Errno::EINVAL);
        }
        let base = self.at_base(dirfd, &path)?;
        let lexical = self.lexical(&base, &path);
        let target = if procfs::is_proc(&lexical) {
            match self.proc_entry(&lexical, false, false)? {
                procfs::Entry::Link(target, _) => target,
                _ => return Err(Errno::EINVAL),
            }
        } else {
            let w = self.walk_at(dirfd, &path, false)?;
            if w.mode & S_IFMT != S_IFLNK {
                return Err(Errno::EINVAL);
            }
            self.dev.vfs.fs(w.node.fs)?.readlink(w.node.id)?
        };
        let n = target.len().min(size as usize);
        self.put_user(buf, &target[..n])?;
        Ok(n as u64)
    }

    /// Refuses `want` (vfs::MAY_* bits) on `node` unless its permission bits
    /// grant it to this process: the virtio-fs server acts as root.
    fn check_access(&mut self, node: vfs::Node, want: u32) -> Result<()> {
        let attr = self.dev.vfs.fs(node.fs)?.getattr(node.id, None)?;
        let c = &self.proc_mut().creds;
        let dac = vfs::DacOverride {
            any: c.capable(CAP_DAC_OVERRIDE),
            read_search: c.capable(CAP_DAC_READ_SEARCH),
        };
        let who = vfs::Accessor {
            uid: c.fsuid,
            gid: c.fsgid,
            groups: &c.groups,
            dac,
        };
        if vfs::may_access(attr.mode, attr.uid, attr.gid, &who, want) {
            Ok(())
        } else {
            Err(Errno::EACCES)
        }
    }

    pub fn sys_faccessat(&mut self, dirfd: i32, path: u64, mode: u32) -> Result<u64> {
        let path = self.user_cstr(path)?;
        let base = self.at_base(dirfd, &path)?;
        let lexical = self.lexical(&base, &path);
        if CharDev::by_path(&lexical).is_some() {
            return Ok(0);
        }
        if let Some(stat) = self.stat_terminal(&lexical) {
            return stat.map(|_| 0);
        }
        if procfs::is_proc(&lexical) {
            return match self.proc_entry(&lexical, true, false)? {
                procfs::Entry::Link(..) => Ok(0),
                _ if mode & 2 != 0 => Err(Errno::EACCES),
                _ => Ok(0),
            };
        }
        let w = self.walk_at(dirfd, &path, true)?;
        let fs = self.dev.vfs.fs(w.node.fs)?;
        if mode & 2 != 0 && fs.readonly {
            return Err(Errno::EROFS);
        }
        if mode & 7 != 0 {
            self.check_access(w.node, mode & 7)?;
            return Ok(0);
        }
        let fs = self.dev.vfs.fs(w.node.fs)?;
        if mode & 1 != 0 && w.mode & S_IFMT != S_IFDIR {
            let attr = fs.getattr(w.node.id, None)?;
            if attr.mode & 0o111 == 0 {
                return Err(Errno::EACCES);
            }
        }
        Ok(0)
    }

    pub fn sys_getcwd(&mut self, buf: u64, size: u64) -> Result<u64> {
        let len = self.proc_mut().cwd.len() + 1;
        if (size as usize) < len {
            return Err(Errno::ERANGE);
        }
        let mut out = self.proc_mut().cwd.clone();
        out.push(0);
        self.put_user(buf, &out)?;
        Ok(len as u64)
    }

    pub fn sys_chdir(&mut self, path: u64) -> Result<u64> {
        let path = self.user_cstr(path)?;
        let w = self.walk_at(AT_FDCWD, &path, true)?;
        if !w.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        self.proc_mut().cwd = w.path;
        Ok(0)
    }

    pub fn sys_fchdir(&mut self, fd: i32) -> Result<u64> {
        let path = self
            .proc_mut()
            .fds
            .get(fd)?
            .file
            .dir_path()
            .map(<[u8]>::to_vec)
            .ok_or(Errno::ENOTDIR)?;
        self.proc_mut().cwd = path;
        Ok(0)
    }

    pub fn sys_mkdirat(&mut self, dirfd: i32, path: u64, mode: u32) -> Result<u64> {
        let path = self.user_cstr(path)?;
        let (dir, name) = self.walk_parent_at(dirfd, &path)?;
        let umask = self.proc_mut().umask;
        let (id, attr) = self.dev.vfs.fs(dir.node.fs)?.mkdir(
            dir.node.id,
            &name,
            mode & 0o7777 & !umask,
            umask,
        )?;
        self.dev.vfs.remember(dir.node, &name, id, &attr);
        self.dir_event(&dir.path, notify::DN_CREATE);
        Ok(0)
    }

    pub fn sys_mknodat(&mut self, dirfd: i32, path: u64, mode: u32, rdev: u32) -> Result<u64> {
        let path = self.user_cstr(path)?;
        let (dir, name) = self.walk_parent_at(dirfd, &path)?;
        let kind = if mode & S_IFMT == 0 {
            S_IFREG
        } else {
            mode & S_IFMT
        };
        // Device nodes need CAP_MKNOD; files, fifos and sockets do not.
        let device = kind == crate::fs::fuse::S_IFCHR || kind == crate::fs::fuse::S_IFBLK;
        if device && !self.proc().creds.capable(CAP_MKNOD) {
            return Err(Errno::EPERM);
        }
        self.mknod_in(&dir, &name, kind, mode & 0o7777, rdev)?;
        Ok(0)
    }

    /// Creates `name` in `dir` of type `kind` with `perm` less the umask,
    /// and remembers it in the name cache.
    pub(crate) fn mknod_in(
        &mut self,
        dir: &Walk,
        name: &[u8],
        kind: u32,
        perm: u32,
        rdev: u32,
    ) -> Result<vfs::Node> {
        let umask = self.proc_mut().umask;
        let (id, attr) = self.dev.vfs.fs(dir.node.fs)?.mknod(
            dir.node.id,
            name,
            kind | (perm & !umask),
            rdev,
            umask,
        )?;
        self.dev.vfs.remember(dir.node, name, id, &attr);
        self.dir_event(&dir.path, notify::DN_CREATE);
        Ok(vfs::Node {
            fs: dir.node.fs,
            id,
        })
    }

    pub fn sys_unlinkat(&mut self, dirfd: i32, path: u64, flags: u32) -> Result<u64> {
        let path = self.user_cstr(path)?;
        let (dir, name) = self.walk_parent_at(dirfd, &path)?;
        let rmdir = flags & AT_REMOVEDIR != 0;
        let result = self
            .dev
            .vfs
            .fs(dir.node.fs)?
            .unlink(dir.node.id, &name, rmdir);
        self.dev.vfs.forget(dir.node, &name);
        if result.is_ok() {
            self.dir_event(&dir.path, notify::DN_DELETE);
        }
        result.map(|_| 0)
    }

    pub fn sys_renameat2(
        &mut self,
        olddirfd: i32,
        oldpath: u64,
        newdirfd: i32,
        newpath: u64,
        flags: u32,
    ) -> Result<u64> {
        let oldpath = self.user_cstr(oldpath)?;
        let newpath = self.user_cstr(newpath)?;
        if flags & !RENAME_NOREPLACE != 0 {
            return Err(Errno::EINVAL);
        }
        let (olddir, oldname) = self.walk_parent_at(olddirfd, &oldpath)?;
        let (newdir, newname) = self.walk_parent_at(newdirfd, &newpath)?;
        if olddir.node.fs != newdir.node.fs {
            return Err(Errno::EXDEV);
        }
        if flags & RENAME_NOREPLACE != 0
            && crate::fs::vfs::FsOps::lookup(
                &mut self.dev.vfs,
                newdir.node.fs,
                newdir.node.id,
                &newname,
            )
            .is_ok()
        {
            return Err(Errno::EEXIST);
        }
        let result = self.dev.vfs.fs(olddir.node.fs)?.rename(
            olddir.node.id,
            &oldname,
            newdir.node.id,
            &newname,
        );
        self.dev.vfs.forget(olddir.node, &oldname);
        self.dev.vfs.forget(newdir.node, &newname);
        if result.is_ok() {
            self.dir_event(&olddir.path, notify::DN_RENAME | notify::DN_DELETE);
            self.dir_event(&newdir.path, notify::DN_RENAME | notify::DN_CREATE);
        }
        result.map(|_| 0)
    }

    pub fn sys_linkat(
        &mut self,
        olddirfd: i32,
        oldpath: u64,
        newdirfd: i32,
        newpath: u64,
        flags: u32,
    ) -> Result<u64> {
        let oldpath = self.user_cstr(oldpath)?;
        let newpath = self.user_cstr(newpath)?;
        let old = self.walk_at(olddirfd, &oldpath, flags & AT_SYMLINK_FOLLOW != 0)?;
        let (dir, name) = self.walk_parent_at(newdirfd, &newpath)?;
        if old.node.fs != dir.node.fs {
            return Err(Errno::EXDEV);
        }
        let (id, attr) = self
            .dev
            .vfs
            .fs(dir.node.fs)?
            .link(old.node.id, dir.node.id, &name)?;
        self.dev.vfs.remember(dir.node, &name, id, &attr);
        self.dir_event(&dir.path, notify::DN_CREATE);
        Ok(0)
    }

    pub fn sys_symlinkat(&mut self, target: u64, dirfd: i32, path: u64) -> Result<u64> {
        let target = self.user_cstr(target)?;
        let path = self.user_cstr(path)?;
        let (dir, name) = self.walk_parent_at(dirfd, &path)?;
        let (id, attr) = self
            .dev
            .vfs
            .fs(dir.node.fs)?
            .symlink(dir.node.id, &name, &target)?;
        self.dev.vfs.remember(dir.node, &name, id, &attr);
        self.dir_event(&dir.path, notify::DN_CREATE);
        Ok(0)
    }

    fn setattr_path(
        &mut self,
        dirfd: i32,
        path: &[u8],
        follow: bool,
        set: &SetAttr,
    ) -> Result<u64> {
        // `/proc/self/fd/N` links to the file itself (glibc's fchmodat
        // without following goes through it): follow it to that file.
        let base = self.at_base(dirfd, path)?;
        let lexical = self.lexical(&base, path);
        let target = if procfs::is_proc(&lexical) && follow {
            match self.proc_entry(&lexical, false, false)? {
                procfs::Entry::Link(target, Some(_)) => Some(target),
                _ => None,
            }
        } else {
            None
        };
        let w = match target {
            Some(target) => self.walk_at(AT_FDCWD, &target, true)?,
            None => self.walk_at(dirfd, path, follow)?,
        };
        let attr = self.dev.vfs.fs(w.node.fs)?.getattr(w.node.id, None)?;
        self.check_setattr(Some(w.node), attr.uid, attr.gid, set)?;
        crate::fs::files::set_node_attr(&mut self.dev, w.node, None, set)?;
        let event = if set.valid & fattr::SIZE != 0 {
            notify::DN_MODIFY
        } else {
            notify::DN_ATTRIB
        };
        self.dir_event(notify::parent(&w.path), event);
        Ok(0)
    }

    /// Refuses what `set` changes of a file owned by `uid`/`gid` unless
    /// the caller may, as Linux's `notify_change` decides: the mode by the
    /// owner or `CAP_FOWNER`; the owner by `CAP_CHOWN` (the owner may "set"
    /// itself); the group by the owner to one of its own groups, or by
    /// `CAP_CHOWN`; the times as utimensat(2) says (below).
    fn check_setattr(
        &mut self,
        node: Option<vfs::Node>,
        uid: u32,
        gid: u32,
        set: &SetAttr,
    ) -> Result<()> {
        let c = &self.proc().creds;
        let owner = c.fsuid == uid;
        // Linux's inode_owner_or_capable.
        let owner_or_capable = owner || c.capable(CAP_FOWNER);
        let mode_ok = set.valid & fattr::MODE == 0 || owner_or_capable;
        let uid_ok =
            set.valid & fattr::UID == 0 || (owner && set.uid == uid) || c.capable(CAP_CHOWN);
        let member = set.gid == c.fsgid || c.groups.contains(&set.gid);
        let gid_ok = set.valid & fattr::GID == 0
            || (owner && (set.gid == gid || member))
            || c.capable(CAP_CHOWN);
        // utimensat: explicit times need the owner or CAP_FOWNER; setting
        // both to now (a touch) also may whoever may write the file.
        let explicit = |time: u32, now: u32| set.valid & time != 0 && set.valid & now == 0;
        let explicit_times =
            explicit(fattr::ATIME, fattr::ATIME_NOW) || explicit(fattr::MTIME, fattr::MTIME_NOW);
        let touch_bits = fattr::ATIME | fattr::ATIME_NOW | fattr::MTIME | fattr::MTIME_NOW;
        if !(mode_ok && uid_ok && gid_ok) || (explicit_times && !owner_or_capable) {
            return Err(Errno::EPERM);
        }
        if set.valid & touch_bits == touch_bits && !owner_or_capable {
            return self.check_access(node.ok_or(Errno::EACCES)?, vfs::MAY_WRITE);
        }
        Ok(())
    }

    pub fn sys_fchmodat(&mut self, dirfd: i32, path: u64, mode: u32) -> Result<u64> {
        let path = self.user_cstr(path)?;
        let set = SetAttr {
            valid: fattr::MODE,
            mode: mode & 0o7777,
            ..SetAttr::default()
        };
        self.setattr_path(dirfd, &path, true, &set)
    }

    fn setattr_fd(&mut self, fd: i32, set: &SetAttr) -> Result<u64> {
        let file = self.proc_mut().fds.file(fd)?;
        let stat = file.stat(&mut self.dev)?;
        let word =
            |at: usize| u32::from_le_bytes([stat[at], stat[at + 1], stat[at + 2], stat[at + 3]]);
        // struct stat's st_uid and st_gid.
        let node = file.node_key().map(|(fs, id)| vfs::Node { fs, id });
        self.check_setattr(node, word(28), word(32), set)?;
        file.setattr(&mut self.dev, set).map(|_| 0)
    }

    pub fn sys_fchmod(&mut self, fd: i32, mode: u32) -> Result<u64> {
        let set = SetAttr {
            valid: fattr::MODE,
            mode: mode & 0o7777,
            ..SetAttr::default()
        };
        self.setattr_fd(fd, &set)
    }

    fn chown_set(uid: u32, gid: u32) -> SetAttr {
        let mut set = SetAttr::default();
        if uid != u32::MAX {
            set.valid |= fattr::UID;
            set.uid = uid;
        }
        if gid != u32::MAX {
            set.valid |= fattr::GID;
            set.gid = gid;
        }
        set
    }

    pub fn sys_fchownat(
        &mut self,
        dirfd: i32,
        path: u64,
        uid: u32,
        gid: u32,
        flags: u32,
    ) -> Result<u64> {
        let path = self.user_cstr(path)?;
        let set = Self::chown_set(uid, gid);
        if set.valid == 0 {
            // Nothing to change, but the file must exist, as on Linux.
            if !(path.is_empty() && flags & AT_EMPTY_PATH != 0) {
                self.walk_at(dirfd, &path, flags & AT_SYMLINK_NOFOLLOW == 0)?;
            } else {
                self.proc().fds.get(dirfd)?;
            }
            return Ok(0);
        }
        if path.is_empty() && flags & AT_EMPTY_PATH != 0 {
            return self.setattr_fd(dirfd, &set);
        }
        self.setattr_path(dirfd, &path, flags & AT_SYMLINK_NOFOLLOW == 0, &set)
    }

    /// posix_fadvise: checked as Linux checks it (a descriptor, not a
    /// pipe, a known advice, no negative length); the guest keeps no page
    /// cache the advice could steer, so a valid call has nothing to do.
    pub fn sys_fadvise64(&mut self, fd: i32, _offset: i64, len: i64, advice: u32) -> Result<u64> {
        let file = self.proc().fds.file(fd)?;
        if crate::fs::pipe::pipe_end(&*file).is_some() {
            return Err(Errno::ESPIPE);
        }
        const POSIX_FADV_NOREUSE: u32 = 5;
        if advice > POSIX_FADV_NOREUSE || len < 0 {
            return Err(Errno::EINVAL);
        }
        Ok(0)
    }

    pub fn sys_fchown(&mut self, fd: i32, uid: u32, gid: u32) -> Result<u64> {
        let set = Self::chown_set(uid, gid);
        if set.valid == 0 {
            self.proc().fds.get(fd)?;
            return Ok(0);
        }
        self.setattr_fd(fd, &set)
    }

    fn time_set(&self, times: Option<[(u64, u64); 2]>) -> SetAttr {
        let mut set = SetAttr::default();
        let Some(times) = times else {
            set.valid = fattr::ATIME | fattr::MTIME | fattr::ATIME_NOW | fattr::MTIME_NOW;
            return set;
        };
        for (i, (sec, nsec)) in times.into_iter().enumerate() {
            let (bit, now, slot) = if i == 0 {
                (fattr::ATIME, fattr::ATIME_NOW, &mut set.atime)
            } else {
                (fattr::MTIME, fattr::MTIME_NOW, &mut set.mtime)
            };
            match nsec {
                UTIME_OMIT => {}
                UTIME_NOW => set.valid |= bit | now,
                _ => {
                    set.valid |= bit;
                    *slot = (sec, nsec as u32);
                }
            }
        }
        set
    }

    pub fn sys_utimensat(&mut self, dirfd: i32, path: u64, times: u64, flags: u32) -> Result<u64> {
        let times = if times == 0 {
            None
        } else {
            let t = self.user_buf(times, 32)?;
            let w = |at: usize| u64::from_le_bytes(t[at..at + 8].try_into().unwrap_or([0; 8]));
            Some([(w(0), w(8)), (w(16), w(24))])
        };
        let set = self.time_set(times);
        if path == 0 {
            return self.setattr_fd(dirfd, &set);
        }
        let path = self.user_cstr(path)?;
        self.setattr_path(dirfd, &path, flags & AT_SYMLINK_NOFOLLOW == 0, &set)
    }

    /// utime(2) (`timeval_usec` false: `struct utimbuf` seconds) and utimes(2).
    pub fn sys_utimes_compat(&mut self, path: u64, times: u64, timeval_usec: bool) -> Result<u64> {
        let times = if times == 0 {
            None
        } else if timeval_usec {
            let t = self.user_buf(times, 32)?;
            let w = |at: usize| u64::from_le_bytes(t[at..at + 8].try_into().unwrap_or([0; 8]));
            Some([(w(0), w(8) * 1000), (w(16), w(24) * 1000)])
        } else {
            let t = self.user_buf(times, 16)?;
            let w = |at: usize| u64::from_le_bytes(t[at..at + 8].try_into().unwrap_or([0; 8]));
            Some([(w(0), 0), (w(8), 0)])
        };
        let set = self.time_set(times);
        let path = self.user_cstr(path)?;
        self.setattr_path(AT_FDCWD, &path, true, &set)
    }

    pub fn sys_truncate(&mut self, path: u64, len: u64) -> Result<u64> {
        let path = self.user_cstr(path)?;
        let set = SetAttr {
            valid: fattr::SIZE,
            size: len,
            ..SetAttr::default()
        };
        self.setattr_path(AT_FDCWD, &path, true, &set)
    }

    pub fn sys_ftruncate(&mut self, fd: i32, len: u64) -> Result<u64> {
        let file = self.proc_mut().fds.file(fd)?;
        file.truncate(&mut self.dev, len).map(|_| 0)
    }

    pub fn sys_fallocate(&mut self, fd: i32, mode: u32, offset: i64, len: i64) -> Result<u64> {
        if offset < 0 || len <= 0 || offset.checked_add(len).is_none() {
            return Err(Errno::EINVAL);
        }
        let file = self.proc_mut().fds.file(fd)?;
        file.fallocate(&mut self.dev, mode, offset as u64, len as u64)
            .map(|()| 0)
    }

    pub fn sys_fsync(&mut self, fd: i32) -> Result<u64> {
        let file = self.proc_mut().fds.file(fd)?;
        file.sync(&mut self.dev).map(|_| 0)
    }

    fn statfs_of(&mut self, node: crate::fs::vfs::Node) -> Result<[u8; 120]> {
        let raw = self.dev.vfs.fs(node.fs)?.statfs(node.id)?;
        let r64 = |at: usize| u64::from_le_bytes(raw[at..at + 8].try_into().unwrap_or([0; 8]));
        let r32 = |at: usize| {
            u64::from(u32::from_le_bytes(
                raw[at..at + 4].try_into().unwrap_or([0; 4]),
            ))
        };
        let mut out = [0u8; 120];
        let fields = [
            0x6573_5546, // f_type: FUSE_SUPER_MAGIC
            r32(40),     // f_bsize
            r64(0),      // f_blocks
            r64(8),      // f_bfree
            r64(16),     // f_bavail
            r64(24),     // f_files
            r64(32),     // f_ffree
            node.fs as u64,
            r32(44), // f_namelen
            r32(48), // f_frsize
            if self.dev.vfs.fs(node.fs)?.readonly {
                1
            } else {
                0
            },
        ];
        for (i, v) in fields.iter().enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        Ok(out)
    }

    pub fn sys_statfs(&mut self, path: u64, out: u64) -> Result<u64> {
        let path = self.user_cstr(path)?;
        let w = self.walk_at(AT_FDCWD, &path, true)?;
        let st = self.statfs_of(w.node)?;
        self.put_user(out, &st)?;
        Ok(0)
    }

    pub fn sys_fstatfs(&mut self, fd: i32, out: u64) -> Result<u64> {
        let file = self.proc_mut().fds.file(fd)?;
        let path = match file.dir_path() {
            Some(p) => p.to_vec(),
            None => b"/".to_vec(),
        };
        let w = self.walk_at(AT_FDCWD, &path, true)?;
        let st = self.statfs_of(w.node)?;
        self.put_user(out, &st)?;
        Ok(0)
    }

    /// pipe and pipe2 (`O_CLOEXEC`, `O_NONBLOCK`).
    pub fn sys_pipe2(&mut self, fds: u64, flags: u32) -> Result<u64> {
        if flags & !(O_CLOEXEC | O_NONBLOCK | O_DIRECT) != 0 {
            return Err(Errno::EINVAL);
        }
        self.user_range_mut(fds, 8)?;
        let (r, w) = crate::fs::pipe::new_pipe(flags);
        let cloexec = flags & O_CLOEXEC != 0;
        let rfd = self.install(Rc::new(r), cloexec)?;
        let wfd = match self.install(Rc::new(w), cloexec) {
            Ok(fd) => fd,
            Err(e) => {
                let _ = self.proc_mut().fds.remove(rfd as i32);
                return Err(e);
            }
        };
        let mut out = [0u8; 8];
        out[..4].copy_from_slice(&(rfd as i32).to_le_bytes());
        out[4..].copy_from_slice(&(wfd as i32).to_le_bytes());
        self.put_user(fds, &out)?;
        Ok(0)
    }

    pub fn sys_dup(&mut self, fd: i32) -> Result<u64> {
        let file = self.proc_mut().fds.file(fd)?;
        self.install(file, false)
    }

    /// dup2 (`allow_same`: dup2 returns `new` when it equals `old`) and dup3.
    pub fn sys_dup3(&mut self, old: i32, new: i32, flags: u32, allow_same: bool) -> Result<u64> {
        let file = self.proc_mut().fds.file(old)?;
        if old == new {
            return if allow_same {
                Ok(new as u64)
            } else {
                Err(Errno::EINVAL)
            };
        }
        if flags & !O_CLOEXEC != 0 {
            return Err(Errno::EINVAL);
        }
        let limit = self.nofile_limit();
        if let Some(previous) = self.proc_mut().fds.replace(
            new,
            Fd {
                file,
                cloexec: flags & O_CLOEXEC != 0,
            },
            limit,
        )? {
            self.release_if_last(previous);
        }
        Ok(new as u64)
    }

    pub fn sys_fcntl(&mut self, fd: i32, cmd: u32, arg: u64) -> Result<u64> {
        let entry = self.proc_mut().fds.get(fd)?.clone();
        match cmd {
            F_DUPFD | F_DUPFD_CLOEXEC => {
                let limit = self.nofile_limit();
                let new = Fd {
                    file: entry.file,
                    cloexec: cmd == F_DUPFD_CLOEXEC,
                };
                self.proc_mut()
                    .fds
                    .insert_from(arg as usize, new, limit)
                    .map(|fd| fd as u64)
            }
            F_GETFD => Ok(if entry.cloexec { FD_CLOEXEC } else { 0 }),
            F_SETFD => self
                .proc_mut()
                .fds
                .set_cloexec(fd, arg & FD_CLOEXEC != 0)
                .map(|_| 0),
            F_GETFL => Ok(u64::from(entry.file.flags())),
            F_SETFL => {
                let flags = entry.file.flags();
                entry
                    .file
                    .set_flags((flags & !SETFL_MASK) | (arg as u32 & SETFL_MASK));
                Ok(0)
            }
            F_SETLK | F_SETLKW | F_OFD_SETLK | F_OFD_SETLKW | F_GETLK | F_OFD_GETLK => {
                self.record_lock(&entry.file, cmd, arg)
            }
            F_NOTIFY => {
                let file = entry.file;
                let dir = file.dir_path().ok_or(Errno::ENOTDIR)?.to_vec();
                let owner = self.procs.tgid(self.cur);
                self.dev.dnotify.set(&dir, &file, owner, arg as u32);
                Ok(0)
            }
            F_GETPIPE_SZ | F_SETPIPE_SZ => {
                let end = crate::fs::pipe::pipe_end(&*entry.file).ok_or(Errno::EBADF)?;
                let mut pipe = end.pipe.borrow_mut();
                let size = if cmd == F_SETPIPE_SZ {
                    pipe.set_capacity(arg)?
                } else {
                    pipe.capacity()
                };
                Ok(size as u64)
            }
            _ => Err(Errno::EINVAL),
        }
    }

    /// fcntl's record locks: `struct flock` at `arg`, owned by the process
    /// (`F_*LK*`) or by the open file description (`F_OFD_*`).
    fn record_lock(&mut self, file: &Rc<dyn File>, cmd: u32, arg: u64) -> Result<u64> {
        let raw = self.user_buf(arg, 32)?;
        let field = |at: usize| i64::from_le_bytes(raw[at..at + 8].try_into().unwrap_or([0; 8]));
        let typ = u16::from_le_bytes([raw[0], raw[1]]);
        let whence = u32::from(u16::from_le_bytes([raw[2], raw[3]]));
        let (start, len) = (field(8), field(16));
        let pid = i32::from_le_bytes([raw[24], raw[25], raw[26], raw[27]]);
        let ofd = matches!(cmd, F_OFD_GETLK | F_OFD_SETLK | F_OFD_SETLKW);
        if ofd && pid != 0 {
            return Err(Errno::EINVAL);
        }
        let base = match whence {
            SEEK_SET => 0,
            SEEK_CUR => file.seek(&mut self.dev, 0, SEEK_CUR)? as i64,
            SEEK_END => {
                let st = file.stat(&mut self.dev)?;
                i64::from_le_bytes(st[48..56].try_into().unwrap_or([0; 8]))
            }
            _ => return Err(Errno::EINVAL),
        };
        let start = base.checked_add(start).ok_or(Errno::EINVAL)?;
        let (from, to) = match len {
            0 => (start, None),
            l if l > 0 => (start, Some(start.checked_add(l).ok_or(Errno::EINVAL)?)),
            l => (start.checked_add(l).ok_or(Errno::EINVAL)?, Some(start)),
        };
        if from < 0 {
            return Err(Errno::EINVAL);
        }
        let owner = if ofd {
            Owner::File(Rc::downgrade(file))
        } else {
            Owner::Process(self.procs.tgid(self.cur))
        };
        let lock = RecordLock {
            owner,
            start: from as u64,
            end: to.map_or(u64::MAX, |t| t as u64),
            write: typ == F_WRLCK,
        };
        let key = lock_key(file);
        let procs = &self.procs;
        let alive = |pid: i32| {
            procs
                .get(pid)
                .is_some_and(|t| !matches!(t.state, crate::task::process::State::Zombie(_)))
        };
        if matches!(cmd, F_GETLK | F_OFD_GETLK) {
            if typ != F_RDLCK && typ != F_WRLCK {
                return Err(Errno::EINVAL);
            }
            let conflict = self.locks.conflict(key, &lock, &alive);
            let out = self.user_buf_mut(arg, 32)?;
            match conflict {
                None => out[0..2].copy_from_slice(&F_UNLCK.to_le_bytes()),
                Some(c) => {
                    let typ = if c.write { F_WRLCK } else { F_RDLCK };
                    let len = if c.end == u64::MAX {
                        0
                    } else {
                        c.end - c.start
                    };
                    let pid = match c.owner {
                        Owner::Process(pid) => pid,
                        Owner::File(_) => -1,
                    };
                    out[0..2].copy_from_slice(&typ.to_le_bytes());
                    out[2..4].copy_from_slice(&0u16.to_le_bytes());
                    out[8..16].copy_from_slice(&c.start.to_le_bytes());
                    out[16..24].copy_from_slice(&len.to_le_bytes());
                    out[24..28].copy_from_slice(&pid.to_le_bytes());
                }
            }
            return Ok(0);
        }
        let access = file.flags() & O_ACCMODE;
        match typ {
            F_RDLCK if access == O_WRONLY => return Err(Errno::EBADF),
            F_WRLCK if access == O_RDONLY => return Err(Errno::EBADF),
            F_RDLCK | F_WRLCK | F_UNLCK => {}
            _ => return Err(Errno::EINVAL),
        }
        let wait = matches!(cmd, F_SETLKW | F_OFD_SETLKW);
        match self.locks.set(key, lock, typ == F_UNLCK, &alive) {
            Err(Errno::EAGAIN) if wait => Err(Errno::EBLOCK),
            other => other.map(|()| 0),
        }
    }

    pub fn sys_flock(&mut self, fd: i32, op: u32) -> Result<u64> {
        let file = self.proc_mut().fds.file(fd)?;
        let (exclusive, unlock) = match op & !LOCK_NB {
            LOCK_SH => (false, false),
            LOCK_EX => (true, false),
            LOCK_UN => (false, true),
            _ => return Err(Errno::EINVAL),
        };
        match self.locks.flock(lock_key(&file), &file, exclusive, unlock) {
            Err(Errno::EAGAIN) if op & LOCK_NB == 0 => Err(Errno::EBLOCK),
            other => other.map(|()| 0),
        }
    }

    pub fn sys_ioctl(&mut self, fd: i32, request: u32, arg: u64) -> Result<u64> {
        let entry = self.proc_mut().fds.get(fd)?.clone();
        match request {
            FIONBIO => {
                let on = self.user_buf(arg, 4)?.iter().any(|&b| b != 0);
                let flags = entry.file.flags();
                entry.file.set_flags(if on {
                    flags | O_NONBLOCK
                } else {
                    flags & !O_NONBLOCK
                });
                Ok(0)
            }
            FIOCLEX | FIONCLEX => self
                .proc_mut()
                .fds
                .set_cloexec(fd, request == FIOCLEX)
                .map(|_| 0),
            _ if crate::fs::pty::pty_of(&*entry.file).is_some() => {
                self.pty_ioctl(&entry.file, request, arg)
            }
            request
                if capsa_abi::exec::TERMINAL_REQUESTS
                    .iter()
                    .any(|&(r, _)| r == request) =>
            {
                self.host_terminal_ioctl(&*entry.file, request, arg)
            }
            crate::net::FIONREAD | crate::net::SIOCOUTQ | 0x8900..=0x89ff
                if crate::net::socket::socket_of(&*entry.file).is_some() =>
            {
                self.socket_ioctl(&entry.file, request, arg)
            }
            _ => entry.file.ioctl(&mut self.dev, request, arg),
        }
    }

    /// Waits until one of `fds` (fd, poll events wanted) is ready or
    /// `timeout_ns` passes (`None`: forever). Returns each entry's revents:
    /// what it wants and is ready, `POLLERR` and `POLLHUP` always, and
    /// `POLLNVAL` for a descriptor not open; negative descriptors are
    /// skipped, as poll(2) does.
    fn wait_ready(&mut self, fds: &[(i32, u32)], timeout_ns: Option<u64>) -> Result<Vec<u32>> {
        let mut any = false;
        let mut out = Vec::with_capacity(fds.len());
        for &(fd, events) in fds {
            if fd < 0 {
                out.push(0);
                continue;
            }
            let revents = match self.proc_mut().fds.file(fd) {
                Ok(file) => file.poll_mask(&mut self.dev) & (events | POLL_ERR | POLL_HUP),
                Err(_) => POLL_NVAL,
            };
            any |= revents != 0;
            out.push(revents);
        }
        if !any {
            self.block_until(timeout_ns)?;
        }
        Ok(out)
    }

    /// For a call that found nothing ready: `Ok` once `timeout_ns` has
    /// passed (at once for 0), else `EBLOCK` — other processes run, and the
    /// whole call is retried when something changes; the deadline survives
    /// the restarts.
    pub fn block_until(&mut self, timeout_ns: Option<u64>) -> Result<()> {
        if timeout_ns == Some(0) {
            return Ok(());
        }
        let now = self.clock.monotonic_ns();
        let deadline = timeout_ns.map(|t| {
            *self
                .thread_mut()
                .restart_deadline
                .get_or_insert(now.saturating_add(t))
        });
        if deadline.is_some_and(|d| now >= d) {
            return Ok(());
        }
        self.block_deadline = deadline;
        self.block_stdin = true;
        Err(Errno::EBLOCK)
    }

    fn poll_common(&mut self, fds_ptr: u64, nfds: u64, timeout_ns: Option<u64>) -> Result<u64> {
        if nfds > 4096 {
            return Err(Errno::EINVAL);
        }
        let raw = self.user_buf_mut(fds_ptr, nfds as usize * 8)?;
        let want: Vec<(i32, u32)> = raw
            .chunks_exact(8)
            .map(|p| {
                let fd = i32::from_le_bytes([p[0], p[1], p[2], p[3]]);
                (fd, u32::from(u16::from_le_bytes([p[4], p[5]])))
            })
            .collect();
        let ready = self.wait_ready(&want, timeout_ns)?;
        let mut count = 0;
        for (p, revents) in raw.chunks_exact_mut(8).zip(ready) {
            if revents != 0 {
                count += 1;
            }
            p[6..8].copy_from_slice(&(revents as u16).to_le_bytes());
        }
        Ok(count)
    }

    pub fn sys_poll(&mut self, fds: u64, nfds: u64, timeout_ms: i64) -> Result<u64> {
        let timeout = (timeout_ms >= 0).then(|| timeout_ms as u64 * 1_000_000);
        self.poll_common(fds, nfds, timeout)
    }

    pub fn sys_ppoll(&mut self, fds: u64, nfds: u64, timeout: u64) -> Result<u64> {
        let timeout = if timeout == 0 {
            None
        } else {
            Some(self.timespec_ns(timeout)?)
        };
        self.poll_common(fds, nfds, timeout)
    }

    fn select_common(
        &mut self,
        nfds: i32,
        r: u64,
        w: u64,
        e: u64,
        timeout: Option<u64>,
    ) -> Result<u64> {
        if !(0..=1024).contains(&nfds) {
            return Err(Errno::EINVAL);
        }
        let bytes = (nfds as usize).div_ceil(64) * 8;
        let set = |k: &mut Self, p: u64| -> Result<Vec<u8>> {
            if p == 0 {
                Ok(vec![0; bytes])
            } else {
                Ok(k.user_buf(p, bytes)?.to_vec())
            }
        };
        let (rs, ws) = (set(self, r)?, set(self, w)?);
        let bit = |s: &[u8], i: usize| s[i / 8] & (1 << (i % 8)) != 0;
        // Linux's POLLIN_SET and POLLOUT_SET: what makes a descriptor
        // readable or writable for select.
        const IN_SET: u32 = POLL_IN | POLL_RDNORM | POLL_HUP | POLL_ERR;
        const OUT_SET: u32 = POLL_OUT | POLL_WRNORM | POLL_ERR;
        let want: Vec<(i32, u32)> = (0..nfds as usize)
            .filter(|&i| bit(&rs, i) || bit(&ws, i))
            .map(|i| {
                let events = (u32::from(bit(&rs, i)) * IN_SET) | (u32::from(bit(&ws, i)) * OUT_SET);
                (i as i32, events)
            })
            .collect();
        let ready = self.wait_ready(&want, timeout)?;
        if ready.iter().any(|r| r & POLL_NVAL != 0) {
            return Err(Errno::EBADF);
        }
        let (mut ro, mut wo) = (vec![0u8; bytes], vec![0u8; bytes]);
        let mut count = 0;
        for ((fd, events), revents) in want.iter().zip(ready) {
            let i = *fd as usize;
            if events & IN_SET == IN_SET && revents & IN_SET != 0 {
                ro[i / 8] |= 1 << (i % 8);
                count += 1;
            }
            if events & OUT_SET == OUT_SET && revents & OUT_SET != 0 {
                wo[i / 8] |= 1 << (i % 8);
                count += 1;
            }
        }
        if r != 0 {
            self.put_user(r, &ro)?;
        }
        if w != 0 {
            self.put_user(w, &wo)?;
        }
        if e != 0 {
            self.put_user(e, &vec![0u8; bytes])?;
        }
        Ok(count)
    }

    pub fn sys_select(&mut self, nfds: i32, r: u64, w: u64, e: u64, timeout: u64) -> Result<u64> {
        let timeout = if timeout == 0 {
            None
        } else {
            let t = self.user_buf(timeout, 16)?;
            let sec = u64::from_le_bytes(t[..8].try_into().unwrap_or([0; 8]));
            let usec = u64::from_le_bytes(t[8..].try_into().unwrap_or([0; 8]));
            Some(
                sec.saturating_mul(1_000_000_000)
                    .saturating_add(usec * 1000),
            )
        };
        self.select_common(nfds, r, w, e, timeout)
    }

    pub fn sys_pselect(&mut self, nfds: i32, r: u64, w: u64, e: u64, timeout: u64) -> Result<u64> {
        let timeout = if timeout == 0 {
            None
        } else {
            Some(self.timespec_ns(timeout)?)
        };
        self.select_common(nfds, r, w, e, timeout)
    }
}

/// Which file an extended-attribute call names.
#[derive(Clone, Copy)]
pub enum XattrTarget {
    /// A path, following a final symlink (`getxattr`) or not (`lgetxattr`).
    Path { path: u64, follow: bool },
    /// An open descriptor (`fgetxattr`).
    Fd(i32),
}

/// The namespaces of attribute names, and what the guest does with each.
#[derive(Clone, Copy, PartialEq, Eq)]
enum XattrNamespace {
    /// `user.*`: stored with the file on the host, as on Linux.
    User,
    /// `trusted.*`: only with `CAP_SYS_ADMIN` (then the host decides).
    Trusted,
    /// `security.*` (labels, file capabilities): the guest has no security
    /// module, so none are there to read (ENODATA) and none may be set
    /// (EPERM), and a guest can give no host file capabilities.
    Security,
    /// `system.*` (ACLs) and names of no namespace: EOPNOTSUPP.
    Unsupported,
}

/// XATTR_NAME_MAX, XATTR_SIZE_MAX and XATTR_LIST_MAX.
const XATTR_NAME_MAX: usize = 255;
const XATTR_SIZE_MAX: usize = 65536;
const XATTR_CREATE: u32 = 1;
const XATTR_REPLACE: u32 = 2;

fn xattr_namespace(name: &[u8]) -> XattrNamespace {
    if name.starts_with(b"user.") {
        XattrNamespace::User
    } else if name.starts_with(b"trusted.") {
        XattrNamespace::Trusted
    } else if name.starts_with(b"security.") {
        XattrNamespace::Security
    } else {
        XattrNamespace::Unsupported
    }
}

impl Kernel {
    /// The attribute name at `ptr`: 1 to 255 bytes (ERANGE otherwise, as
    /// Linux answers), and its namespace (EOPNOTSUPP if not exposed).
    fn xattr_name(&mut self, ptr: u64) -> Result<(Vec<u8>, XattrNamespace)> {
        let name = self.user_cstr(ptr)?;
        if name.is_empty() || name.len() > XATTR_NAME_MAX {
            return Err(Errno::ERANGE);
        }
        match xattr_namespace(&name) {
            XattrNamespace::Unsupported => Err(Errno::EOPNOTSUPP),
            ns => Ok((name, ns)),
        }
    }

    /// The file an attribute call names, with its type (S_IFMT bits).
    fn xattr_node(&mut self, target: XattrTarget) -> Result<(vfs::Node, u32)> {
        let node = match target {
            XattrTarget::Path { path, follow } => {
                let path = self.user_cstr(path)?;
                self.walk_at(AT_FDCWD, &path, follow)?.node
            }
            XattrTarget::Fd(fd) => {
                let file = self.proc().fds.file(fd)?;
                let (fs, id) = file.node_key().ok_or(Errno::EOPNOTSUPP)?;
                vfs::Node { fs, id }
            }
        };
        let attr = self.dev.vfs.fs(node.fs)?.getattr(node.id, None)?;
        Ok((node, attr.mode & S_IFMT))
    }

    /// Linux's `xattr_permission`: `trusted.*` needs CAP_SYS_ADMIN; `user.*`
    /// lives only on files and directories; then read or write permission.
    fn xattr_permission(
        &mut self,
        node: vfs::Node,
        kind: u32,
        ns: XattrNamespace,
        write: bool,
    ) -> Result<()> {
        let denied = if write { Errno::EPERM } else { Errno::ENODATA };
        if ns == XattrNamespace::Security {
            return Err(denied);
        }
        if ns == XattrNamespace::Trusted {
            return if self.proc().creds.capable(CAP_SYS_ADMIN) {
                Ok(())
            } else {
                Err(denied)
            };
        }
        if kind != S_IFREG && kind != S_IFDIR {
            return Err(denied);
        }
        self.check_access(node, if write { vfs::MAY_WRITE } else { vfs::MAY_READ })
    }

    /// getxattr, lgetxattr, fgetxattr.
    pub fn sys_getxattr(
        &mut self,
        target: XattrTarget,
        name: u64,
        value: u64,
        size: u64,
    ) -> Result<u64> {
        let (name, ns) = self.xattr_name(name)?;
        let (node, kind) = self.xattr_node(target)?;
        self.xattr_permission(node, kind, ns, false)?;
        let size = (size as usize).min(XATTR_SIZE_MAX) as u32;
        match xattr_errno(
            self.dev
                .vfs
                .fs(node.fs)?
                .xattr_get(node.id, Some(&name), size),
        )? {
            XattrValue::Size(n) => Ok(u64::from(n)),
            XattrValue::Data(bytes) => {
                self.put_user(value, &bytes)?;
                Ok(bytes.len() as u64)
            }
        }
    }

    /// setxattr, lsetxattr, fsetxattr.
    pub fn sys_setxattr(
        &mut self,
        target: XattrTarget,
        name: u64,
        value: u64,
        size: u64,
        flags: u32,
    ) -> Result<u64> {
        if flags & !(XATTR_CREATE | XATTR_REPLACE) != 0 {
            return Err(Errno::EINVAL);
        }
        let (name, ns) = self.xattr_name(name)?;
        if size as usize > XATTR_SIZE_MAX {
            return Err(Errno::E2BIG);
        }
        let bytes = self.user_buf(value, size as usize)?.to_vec();
        let (node, kind) = self.xattr_node(target)?;
        if self.dev.vfs.fs(node.fs)?.readonly {
            return Err(Errno::EROFS);
        }
        self.xattr_permission(node, kind, ns, true)?;
        xattr_errno(
            self.dev
                .vfs
                .fs(node.fs)?
                .xattr_set(node.id, &name, &bytes, flags),
        )?;
        Ok(0)
    }

    /// removexattr, lremovexattr, fremovexattr.
    pub fn sys_removexattr(&mut self, target: XattrTarget, name: u64) -> Result<u64> {
        let (name, ns) = self.xattr_name(name)?;
        let (node, kind) = self.xattr_node(target)?;
        if self.dev.vfs.fs(node.fs)?.readonly {
            return Err(Errno::EROFS);
        }
        self.xattr_permission(node, kind, ns, true)?;
        xattr_errno(self.dev.vfs.fs(node.fs)?.xattr_remove(node.id, &name))?;
        Ok(0)
    }

    /// listxattr, llistxattr, flistxattr: the names of the namespaces the
    /// caller may see (`user.*`; `trusted.*` with CAP_SYS_ADMIN).
    pub fn sys_listxattr(&mut self, target: XattrTarget, list: u64, size: u64) -> Result<u64> {
        let (node, _) = self.xattr_node(target)?;
        let all = match xattr_errno(self.dev.vfs.fs(node.fs)?.xattr_get(
            node.id,
            None,
            XATTR_SIZE_MAX as u32,
        )) {
            Ok(XattrValue::Data(names)) => names,
            Ok(XattrValue::Size(_)) => Vec::new(),
            Err(Errno::ERANGE) => return Err(Errno::E2BIG),
            Err(e) => return Err(e),
        };
        let trusted = self.proc().creds.capable(CAP_SYS_ADMIN);
        let mut names = Vec::new();
        for name in all.split(|&b| b == 0).filter(|n| !n.is_empty()) {
            let shown = match xattr_namespace(name) {
                XattrNamespace::User => true,
                XattrNamespace::Trusted => trusted,
                XattrNamespace::Security | XattrNamespace::Unsupported => false,
            };
            if shown {
                names.extend_from_slice(name);
                names.push(0);
            }
        }
        if size == 0 {
            return Ok(names.len() as u64);
        }
        if names.len() > size as usize {
            return Err(Errno::ERANGE);
        }
        self.put_user(list, &names)?;
        Ok(names.len() as u64)
    }
}

/// A server without extended attributes answers ENOSYS, which Linux's FUSE
/// client reports as EOPNOTSUPP.
fn xattr_errno<T>(result: Result<T>) -> Result<T> {
    result.map_err(|e| {
        if e == Errno::ENOSYS {
            Errno::EOPNOTSUPP
        } else {
            e
        }
    })
}
