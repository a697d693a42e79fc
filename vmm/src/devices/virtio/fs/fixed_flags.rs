//! A guard around fuse-backend-rs 0.14's passthrough READ and WRITE.
//!
//! When a READ or WRITE carries flags other than its handle's, the
//! passthrough applies them to the host descriptor with `F_SETFL`; if that
//! fails (an `O_PATH` handle, `O_DIRECT` where the file system has none,
//! `O_APPEND` cleared on an append-only file), its error path drops a `File`
//! it built over the handle's borrowed descriptor and so closes it, while the
//! handle keeps the number. The handle then reads, writes and finally closes
//! whatever the VMM opens next under that number.
//!
//! [`FixedFlags`] gives every READ and WRITE the flags its handle was opened
//! with, so the passthrough never changes a descriptor's flags after open.
//! The guest kernel keeps the status flags itself and sends 0 anyway: it
//! writes appends at the end of the file on its own, so OPEN and CREATE
//! leave `O_APPEND` off the host descriptor (where it would turn every
//! positioned write into an append, even after the guest cleared it).
//! Everything else is passed through unchanged.

use std::collections::HashMap;
use std::ffi::CStr;
use std::io;
use std::sync::Mutex;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{
    stat64, statvfs64, CreateIn, FsOptions, OpenOptions, SetattrValid,
};
use fuse_backend_rs::abi::virtio_fs::RemovemappingOne;
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileLock, FileSystem, GetxattrReply, IoctlData, ListxattrReply,
    ZeroCopyReader, ZeroCopyWriter,
};
use fuse_backend_rs::transport::FsCacheReqHandler;

/// Linux's largest extended attribute value and name list (64 KiB).
const XATTR_MAX: u32 = 65536;

pub struct FixedFlags<FS> {
    inner: FS,
    /// Open flags of each file handle the inner file system returned, as it
    /// stored them (directory handles have none: they take no READ or WRITE).
    /// The passthrough never reuses a handle number, so an entry left by a
    /// failed RELEASE cannot describe another handle; each entry stands for
    /// an open host descriptor, which RLIMIT_NOFILE bounds.
    handles: Mutex<HashMap<u64, Option<u32>>>,
}

impl<FS> FixedFlags<FS> {
    pub fn new(inner: FS) -> Self {
        Self {
            inner,
            handles: Mutex::new(HashMap::new()),
        }
    }

    fn remember(&self, handle: Option<u64>, flags: Option<u32>) {
        if let (Some(handle), Ok(mut handles)) = (handle, self.handles.lock()) {
            handles.insert(handle, flags);
        }
    }

    fn forget_handle(&self, handle: u64) {
        if let Ok(mut handles) = self.handles.lock() {
            handles.remove(&handle);
        }
    }

    /// The flags `handle` was opened with; an unknown or directory handle
    /// is a bad descriptor for READ and WRITE.
    fn open_flags(&self, handle: u64) -> io::Result<u32> {
        self.handles
            .lock()
            .ok()
            .and_then(|handles| handles.get(&handle).copied().flatten())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))
    }
}

/// Methods passed to the inner file system unchanged.
macro_rules! delegate {
    ($(fn $name:ident(&self $(, $arg:ident: $ty:ty)*) $(-> $ret:ty)?;)*) => {
        $(fn $name(&self $(, $arg: $ty)*) $(-> $ret)? {
            self.inner.$name($($arg),*)
        })*
    };
}

impl<FS: FileSystem<Inode = u64, Handle = u64>> FileSystem for FixedFlags<FS> {
    type Inode = u64;
    type Handle = u64;

    fn open(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        let flags = flags & !(libc::O_APPEND as u32);
        let opened = self.inner.open(ctx, inode, flags, fuse_flags)?;
        self.remember(opened.0, Some(flags));
        Ok(opened)
    }

    fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mut args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        args.flags &= !(libc::O_APPEND as u32);
        let created = self.inner.create(ctx, parent, name, args)?;
        self.remember(created.1, Some(args.flags));
        Ok(created)
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        let opened = self.inner.opendir(ctx, inode, flags)?;
        self.remember(opened.0, None);
        Ok(opened)
    }

    fn read(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        _flags: u32,
    ) -> io::Result<usize> {
        let flags = self.open_flags(handle)?;
        self.inner
            .read(ctx, inode, handle, w, size, offset, lock_owner, flags)
    }

    fn write(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        delayed_write: bool,
        _flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        let flags = self.open_flags(handle)?;
        self.inner.write(
            ctx,
            inode,
            handle,
            r,
            size,
            offset,
            lock_owner,
            delayed_write,
            flags,
            fuse_flags,
        )
    }

    fn release(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        handle: u64,
        flush: bool,
        flock_release: bool,
        lock_owner: Option<u64>,
    ) -> io::Result<()> {
        self.inner
            .release(ctx, inode, flags, handle, flush, flock_release, lock_owner)?;
        self.forget_handle(handle);
        Ok(())
    }

    fn releasedir(&self, ctx: &Context, inode: u64, flags: u32, handle: u64) -> io::Result<()> {
        self.inner.releasedir(ctx, inode, flags, handle)?;
        self.forget_handle(handle);
        Ok(())
    }

    // The passthrough allocates the buffer a request's size names before
    // asking the host: a guest asking for 4 GiB would make the VMM allocate
    // it. Linux caps both at 64 KiB (XATTR_SIZE_MAX, XATTR_LIST_MAX), so a
    // larger size answers the same.
    fn getxattr(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        self.inner.getxattr(ctx, inode, name, size.min(XATTR_MAX))
    }

    fn listxattr(&self, ctx: &Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        self.inner.listxattr(ctx, inode, size.min(XATTR_MAX))
    }

    fn destroy(&self) {
        self.inner.destroy();
        if let Ok(mut handles) = self.handles.lock() {
            handles.clear();
        }
    }

    delegate! {
        fn init(&self, capable: FsOptions) -> io::Result<FsOptions>;
        fn lookup(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry>;
        fn forget(&self, ctx: &Context, inode: u64, count: u64);
        fn batch_forget(&self, ctx: &Context, requests: Vec<(u64, u64)>);
        fn getattr(&self, ctx: &Context, inode: u64, handle: Option<u64>) -> io::Result<(stat64, Duration)>;
        fn setattr(&self, ctx: &Context, inode: u64, attr: stat64, handle: Option<u64>, valid: SetattrValid) -> io::Result<(stat64, Duration)>;
        fn readlink(&self, ctx: &Context, inode: u64) -> io::Result<Vec<u8>>;
        fn symlink(&self, ctx: &Context, linkname: &CStr, parent: u64, name: &CStr) -> io::Result<Entry>;
        fn mknod(&self, ctx: &Context, inode: u64, name: &CStr, mode: u32, rdev: u32, umask: u32) -> io::Result<Entry>;
        fn mkdir(&self, ctx: &Context, parent: u64, name: &CStr, mode: u32, umask: u32) -> io::Result<Entry>;
        fn unlink(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()>;
        fn rmdir(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()>;
        fn rename(&self, ctx: &Context, olddir: u64, oldname: &CStr, newdir: u64, newname: &CStr, flags: u32) -> io::Result<()>;
        fn link(&self, ctx: &Context, inode: u64, newparent: u64, newname: &CStr) -> io::Result<Entry>;
        fn flush(&self, ctx: &Context, inode: u64, handle: u64, lock_owner: u64) -> io::Result<()>;
        fn fsync(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()>;
        fn fallocate(&self, ctx: &Context, inode: u64, handle: u64, mode: u32, offset: u64, length: u64) -> io::Result<()>;
        fn statfs(&self, ctx: &Context, inode: u64) -> io::Result<statvfs64>;
        fn setxattr(&self, ctx: &Context, inode: u64, name: &CStr, value: &[u8], flags: u32) -> io::Result<()>;
        fn removexattr(&self, ctx: &Context, inode: u64, name: &CStr) -> io::Result<()>;
        fn readdir(&self, ctx: &Context, inode: u64, handle: u64, size: u32, offset: u64, add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>) -> io::Result<()>;
        fn readdirplus(&self, ctx: &Context, inode: u64, handle: u64, size: u32, offset: u64, add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>) -> io::Result<()>;
        fn fsyncdir(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()>;
        fn setupmapping(&self, ctx: &Context, inode: u64, handle: u64, foffset: u64, len: u64, flags: u64, moffset: u64, vu_req: &mut dyn FsCacheReqHandler) -> io::Result<()>;
        fn removemapping(&self, ctx: &Context, inode: u64, requests: Vec<RemovemappingOne>, vu_req: &mut dyn FsCacheReqHandler) -> io::Result<()>;
        fn access(&self, ctx: &Context, inode: u64, mask: u32) -> io::Result<()>;
        fn lseek(&self, ctx: &Context, inode: u64, handle: u64, offset: u64, whence: u32) -> io::Result<u64>;
        fn getlk(&self, ctx: &Context, inode: u64, handle: u64, owner: u64, lock: FileLock, flags: u32) -> io::Result<FileLock>;
        fn setlk(&self, ctx: &Context, inode: u64, handle: u64, owner: u64, lock: FileLock, flags: u32) -> io::Result<()>;
        fn setlkw(&self, ctx: &Context, inode: u64, handle: u64, owner: u64, lock: FileLock, flags: u32) -> io::Result<()>;
        fn ioctl(&self, ctx: &Context, inode: u64, handle: u64, flags: u32, cmd: u32, data: IoctlData, out_size: u32) -> io::Result<IoctlData<'_>>;
        fn bmap(&self, ctx: &Context, inode: u64, block: u64, blocksize: u32) -> io::Result<u64>;
        fn poll(&self, ctx: &Context, inode: u64, handle: u64, khandle: u64, flags: u32, events: u32) -> io::Result<u32>;
        fn notify_reply(&self) -> io::Result<()>;
    }

    fn id_remap(&self, ctx: &mut Context) -> io::Result<()> {
        self.inner.id_remap(ctx)
    }
}
