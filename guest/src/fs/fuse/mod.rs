//! The FUSE client: the protocol the guest speaks to the VMM's file server
//! over virtio-fs. `wire` is the format; [`FuseFs`] the typed operations
//! over a [`FuseTransport`]; [`VirtioFuse`] frames requests onto a virtio-fs
//! device (`crate::drivers::virtio::fs`).

pub mod wire;

pub use wire::*;

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;

use crate::drivers::virtio::fs::{FsDevice, MAX_CHAIN};
use crate::errno::{Errno, Result};

/// What GETXATTR and LISTXATTR answer: the length asked for, or the bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum XattrValue {
    Size(u32),
    Data(Vec<u8>),
}

/// Largest READ/WRITE/READDIR payload per request.
pub const MAX_IO: usize = 512 << 10;

/// Something that carries FUSE requests (the virtio-fs device, or a test double).
pub trait FuseTransport {
    /// Sends `opcode` for `nodeid` with request bodies `ins`; the reply
    /// payload is scattered over `outs`. Returns the payload length.
    fn call(
        &mut self,
        opcode: u32,
        nodeid: u64,
        ins: &[&[u8]],
        outs: &mut [&mut [u8]],
    ) -> Result<usize>;
}

/// FUSE over a virtio-fs device: each call is one request whose chain is
/// the in-header, the bodies, the out-header, the reply buffers.
pub struct VirtioFuse {
    device: FsDevice,
    unique: u64,
    /// Header buffers in the heap: their addresses go into descriptors.
    header_in: Box<[u8; IN_HEADER_SIZE]>,
    header_out: Box<[u8; OUT_HEADER_SIZE]>,
    /// The credentials every request carries.
    uid: u32,
    gid: u32,
}

impl VirtioFuse {
    pub fn new(device: FsDevice, uid: u32, gid: u32) -> Self {
        Self {
            device,
            unique: 0,
            header_in: Box::new([0; IN_HEADER_SIZE]),
            header_out: Box::new([0; OUT_HEADER_SIZE]),
            uid,
            gid,
        }
    }
}

impl FuseTransport for VirtioFuse {
    fn call(
        &mut self,
        opcode: u32,
        nodeid: u64,
        ins: &[&[u8]],
        outs: &mut [&mut [u8]],
    ) -> Result<usize> {
        self.unique = self.unique.wrapping_add(2);
        let in_len = IN_HEADER_SIZE + ins.iter().map(|b| b.len()).sum::<usize>();
        *self.header_in = in_header(
            in_len as u32,
            opcode,
            self.unique,
            nodeid,
            self.uid,
            self.gid,
            1,
        );
        if ins.len() >= MAX_CHAIN || outs.len() >= MAX_CHAIN {
            return Err(Errno::EINVAL);
        }
        let mut readable: [&[u8]; MAX_CHAIN] = [&[]; MAX_CHAIN];
        readable[0] = &self.header_in[..];
        for (slot, b) in readable[1..].iter_mut().zip(ins) {
            *slot = b;
        }
        let mut writable: [&mut [u8]; MAX_CHAIN] = Default::default();
        writable[0] = &mut self.header_out[..];
        let n_outs = outs.len();
        for (slot, b) in writable[1..].iter_mut().zip(outs.iter_mut()) {
            *slot = b;
        }
        let written = self
            .device
            .request(&readable[..1 + ins.len()], &mut writable[..1 + n_outs])?;
        if opcode == op::FORGET {
            return Ok(0);
        }
        check_out_header(&self.header_out[..], self.unique, written as usize)
    }
}

/// The fields of a SETATTR request.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    pub valid: u32,
    pub size: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// (seconds, nanoseconds)
    pub atime: (u64, u32),
    pub mtime: (u64, u32),
}

/// A FUSE file system: typed operations over a transport.
pub struct FuseFs<T: FuseTransport> {
    pub transport: T,
    pub max_write: usize,
    pub readonly: bool,
    /// FUSE_INIT done: `init` at boot, or the first request's.
    initialized: bool,
    pub attrs: AttrCache,
    /// How long the server said directory entries stay valid, in ns (from
    /// its last entry reply).
    pub entry_valid_ns: u64,
}

/// Attributes kept for as long as the server says they stay valid (its
/// `attr_valid`: virtio-fs's `cache=auto` gives 1 s), so that stat needs no
/// round trip to the VMM. The guest's own changes update or drop what they
/// touch; someone else's show once the time is up, as on a Linux
/// virtio-fs mount.
#[derive(Default)]
pub struct AttrCache {
    /// TSC ticks per millisecond; 0 keeps nothing (no TSC rate known).
    pub tsc_khz: u64,
    entries: BTreeMap<u64, (Attr, u64)>,
}

impl AttrCache {
    /// The TSC reading `valid_ns` from now; None when nothing may be kept.
    pub fn deadline(&self, valid_ns: u64) -> Option<u64> {
        if self.tsc_khz == 0 || valid_ns == 0 {
            return None;
        }
        let ticks = (u128::from(valid_ns) * u128::from(self.tsc_khz) / 1_000_000) as u64;
        Some(crate::arch::rdtsc().saturating_add(ticks))
    }

    fn get(&self, node: u64) -> Option<Attr> {
        let &(attr, until) = self.entries.get(&node)?;
        (crate::arch::rdtsc() < until).then_some(attr)
    }

    fn put(&mut self, node: u64, attr: Attr, valid_ns: u64) {
        match self.deadline(valid_ns) {
            Some(until) => {
                self.entries.insert(node, (attr, until));
            }
            None => {
                self.entries.remove(&node);
            }
        }
    }

    fn forget(&mut self, node: u64) {
        self.entries.remove(&node);
    }

    /// After unlink and rename, whose reply names no node whose link count
    /// and ctime changed.
    fn clear(&mut self) {
        self.entries.clear();
    }
}

fn reply<const N: usize>() -> [u8; N] {
    [0; N]
}

impl<T: FuseTransport> FuseFs<T> {
    pub fn new(transport: T, readonly: bool) -> Self {
        Self {
            transport,
            max_write: 128 * 1024,
            readonly,
            initialized: false,
            attrs: AttrCache::default(),
            entry_valid_ns: 0,
        }
    }

    /// Marks FUSE_INIT done (tests that speak to a recorder).
    #[cfg(test)]
    fn ready(mut self) -> Self {
        self.initialized = true;
        self
    }

    /// Sends one request, after FUSE_INIT if this is the first.
    fn call(
        &mut self,
        opcode: u32,
        nodeid: u64,
        ins: &[&[u8]],
        outs: &mut [&mut [u8]],
    ) -> Result<usize> {
        if !self.initialized {
            self.init()?;
        }
        self.transport.call(opcode, nodeid, ins, outs)
    }

    fn check_writable(&self) -> Result<()> {
        if self.readonly {
            Err(Errno::EROFS)
        } else {
            Ok(())
        }
    }

    pub fn init(&mut self) -> Result<()> {
        let body = Enc::new()
            .u32(KERNEL_VERSION)
            .u32(KERNEL_MINOR_VERSION)
            .u32(MAX_IO as u32)
            .u32(INIT_BIG_WRITES | INIT_MAX_PAGES)
            .bytes();
        let mut out = reply::<{ INIT_OUT_SIZE }>();
        let n = self
            .transport
            .call(op::INIT, 0, &[&body], &mut [&mut out])?;
        let (major, _minor, max_write) = parse_init_out(&out[..n])?;
        if major != KERNEL_VERSION {
            return Err(Errno::EPROTO_LIKE);
        }
        if max_write >= 4096 {
            self.max_write = (max_write as usize).min(MAX_IO);
        }
        self.initialized = true;
        Ok(())
    }

    pub fn lookup(&mut self, parent: u64, name: &[u8]) -> Result<(u64, Attr)> {
        let body = Enc::new().name(name).bytes();
        let mut out = reply::<{ ENTRY_OUT_SIZE }>();
        let n = self.call(op::LOOKUP, parent, &[&body], &mut [&mut out])?;
        self.entry(None, &out[..n])
    }

    /// Decodes an entry reply, keeping the node's attributes; `parent`: a
    /// directory the request changed.
    fn entry(&mut self, parent: Option<u64>, out: &[u8]) -> Result<(u64, Attr)> {
        let (id, attr) = parse_entry(out)?;
        self.attrs.put(id, attr, entry_attr_valid_ns(out));
        self.entry_valid_ns = entry_valid_ns(out);
        if let Some(parent) = parent {
            self.attrs.forget(parent);
        }
        Ok((id, attr))
    }

    fn attr_reply(&mut self, node: u64, out: &[u8]) -> Result<Attr> {
        let attr = parse_attr_out(out)?;
        self.attrs.put(node, attr, attr_out_valid_ns(out));
        Ok(attr)
    }

    pub fn getattr(&mut self, node: u64, fh: Option<u64>) -> Result<Attr> {
        if let Some(attr) = self.attrs.get(node) {
            return Ok(attr);
        }
        let body = Enc::new()
            .u32(if fh.is_some() { 1 } else { 0 })
            .u32(0)
            .u64(fh.unwrap_or(0))
            .bytes();
        let mut out = reply::<{ ATTR_OUT_SIZE }>();
        let n = self.call(op::GETATTR, node, &[&body], &mut [&mut out])?;
        self.attr_reply(node, &out[..n])
    }

    /// SETATTR: changes the fields `set.valid` (`fattr` bits) names.
    pub fn setattr(&mut self, node: u64, fh: Option<u64>, set: &SetAttr) -> Result<Attr> {
        self.check_writable()?;
        let valid = set.valid | if fh.is_some() { fattr::FH } else { 0 };
        let body = Enc::new()
            .u32(valid)
            .u32(0)
            .u64(fh.unwrap_or(0))
            .u64(set.size)
            .u64(0)
            .u64(set.atime.0)
            .u64(set.mtime.0)
            .u64(0)
            .u32(set.atime.1)
            .u32(set.mtime.1)
            .u32(0)
            .u32(set.mode)
            .u32(0)
            .u32(set.uid)
            .u32(set.gid)
            .u32(0)
            .bytes();
        let mut out = reply::<{ ATTR_OUT_SIZE }>();
        self.attrs.forget(node);
        let n = self.call(op::SETATTR, node, &[&body], &mut [&mut out])?;
        self.attr_reply(node, &out[..n])
    }

    pub fn readlink(&mut self, node: u64) -> Result<Vec<u8>> {
        let mut out = vec![0u8; 4096];
        let n = self.call(op::READLINK, node, &[], &mut [&mut out])?;
        out.truncate(n);
        Ok(out)
    }

    fn open_common(&mut self, opcode: u32, node: u64, flags: u32) -> Result<u64> {
        let body = Enc::new().u32(flags).u32(0).bytes();
        let mut out = reply::<{ OPEN_OUT_SIZE }>();
        let n = self.call(opcode, node, &[&body], &mut [&mut out])?;
        parse_open_out(&out[..n])
    }

    pub fn open(&mut self, node: u64, flags: u32) -> Result<u64> {
        if flags & 3 != 0 {
            self.check_writable()?;
        }
        self.open_common(op::OPEN, node, flags)
    }

    pub fn opendir(&mut self, node: u64) -> Result<u64> {
        self.open_common(op::OPENDIR, node, 0)
    }

    pub fn create(
        &mut self,
        parent: u64,
        name: &[u8],
        flags: u32,
        mode: u32,
        umask: u32,
    ) -> Result<(u64, Attr, u64)> {
        self.check_writable()?;
        let body = Enc::new()
            .u32(flags)
            .u32(mode)
            .u32(umask)
            .u32(0)
            .name(name)
            .bytes();
        let mut entry = reply::<{ ENTRY_OUT_SIZE }>();
        let mut open = reply::<{ OPEN_OUT_SIZE }>();
        self.call(op::CREATE, parent, &[&body], &mut [&mut entry, &mut open])?;
        let (id, attr) = self.entry(Some(parent), &entry)?;
        Ok((id, attr, parse_open_out(&open)?))
    }

    fn io_in(fh: u64, offset: u64, size: usize, flags: u32) -> Vec<u8> {
        Enc::new()
            .u64(fh)
            .u64(offset)
            .u32(size as u32)
            .u32(0)
            .u64(0)
            .u32(flags)
            .u32(0)
            .bytes()
    }

    /// Reads into `buf` (one request per `MAX_IO`), stopping at a short read.
    pub fn read(&mut self, node: u64, fh: u64, mut offset: u64, buf: &mut [u8]) -> Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            let want = (buf.len() - done).min(MAX_IO);
            let body = Self::io_in(fh, offset, want, 0);
            let n = self.call(op::READ, node, &[&body], &mut [&mut buf[done..done + want]])?;
            let n = n.min(want);
            done += n;
            offset += n as u64;
            if n < want {
                break;
            }
        }
        Ok(done)
    }

    pub fn write(&mut self, node: u64, fh: u64, mut offset: u64, data: &[u8]) -> Result<usize> {
        self.check_writable()?;
        self.attrs.forget(node);
        let mut done = 0;
        while done < data.len() {
            let chunk = &data[done..done + (data.len() - done).min(self.max_write)];
            let body = Self::io_in(fh, offset, chunk.len(), 0);
            let mut out = [0u8; 8];
            self.call(op::WRITE, node, &[&body, chunk], &mut [&mut out])?;
            let n =
                (u32::from_le_bytes([out[0], out[1], out[2], out[3]]) as usize).min(chunk.len());
            done += n;
            offset += n as u64;
            if n < chunk.len() {
                break;
            }
        }
        Ok(done)
    }

    pub fn readdir(&mut self, node: u64, fh: u64, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let want = buf.len().min(MAX_IO);
        let body = Self::io_in(fh, offset, want, 0);
        self.call(op::READDIR, node, &[&body], &mut [&mut buf[..want]])
    }

    pub fn release(&mut self, node: u64, fh: u64, flags: u32, dir: bool) {
        let body = Enc::new().u64(fh).u32(flags).u32(0).u64(0).bytes();
        let opcode = if dir { op::RELEASEDIR } else { op::RELEASE };
        // Nothing useful can be done about a failed release.
        let _ = self.call(opcode, node, &[&body], &mut []);
    }

    pub fn flush(&mut self, node: u64, fh: u64) -> Result<()> {
        let body = Enc::new().u64(fh).u32(0).u32(0).u64(0).bytes();
        self.call(op::FLUSH, node, &[&body], &mut []).map(|_| ())
    }

    pub fn fallocate(
        &mut self,
        node: u64,
        fh: u64,
        offset: u64,
        len: u64,
        mode: u32,
    ) -> Result<()> {
        self.check_writable()?;
        self.attrs.forget(node);
        let body = Enc::new()
            .u64(fh)
            .u64(offset)
            .u64(len)
            .u32(mode)
            .u32(0)
            .bytes();
        self.call(op::FALLOCATE, node, &[&body], &mut [])
            .map(|_| ())
    }

    pub fn fsync(&mut self, node: u64, fh: u64, datasync: bool) -> Result<()> {
        let body = Enc::new().u64(fh).u32(u32::from(datasync)).u32(0).bytes();
        self.call(op::FSYNC, node, &[&body], &mut []).map(|_| ())
    }

    pub fn mkdir(
        &mut self,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
    ) -> Result<(u64, Attr)> {
        self.check_writable()?;
        let body = Enc::new().u32(mode).u32(umask).name(name).bytes();
        let mut out = reply::<{ ENTRY_OUT_SIZE }>();
        let n = self.call(op::MKDIR, parent, &[&body], &mut [&mut out])?;
        self.entry(Some(parent), &out[..n])
    }

    pub fn mknod(
        &mut self,
        parent: u64,
        name: &[u8],
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> Result<(u64, Attr)> {
        self.check_writable()?;
        let body = Enc::new()
            .u32(mode)
            .u32(rdev)
            .u32(umask)
            .u32(0)
            .name(name)
            .bytes();
        let mut out = reply::<{ ENTRY_OUT_SIZE }>();
        let n = self.call(op::MKNOD, parent, &[&body], &mut [&mut out])?;
        self.entry(Some(parent), &out[..n])
    }

    pub fn unlink(&mut self, parent: u64, name: &[u8], dir: bool) -> Result<()> {
        self.check_writable()?;
        let body = Enc::new().name(name).bytes();
        let opcode = if dir { op::RMDIR } else { op::UNLINK };
        self.attrs.clear();
        self.call(opcode, parent, &[&body], &mut []).map(|_| ())
    }

    pub fn rename(
        &mut self,
        olddir: u64,
        oldname: &[u8],
        newdir: u64,
        newname: &[u8],
    ) -> Result<()> {
        self.check_writable()?;
        let body = Enc::new().u64(newdir).name(oldname).name(newname).bytes();
        self.attrs.clear();
        self.call(op::RENAME, olddir, &[&body], &mut []).map(|_| ())
    }

    pub fn symlink(&mut self, parent: u64, name: &[u8], target: &[u8]) -> Result<(u64, Attr)> {
        self.check_writable()?;
        let body = Enc::new().name(name).name(target).bytes();
        let mut out = reply::<{ ENTRY_OUT_SIZE }>();
        let n = self.call(op::SYMLINK, parent, &[&body], &mut [&mut out])?;
        self.entry(Some(parent), &out[..n])
    }

    pub fn link(&mut self, node: u64, newparent: u64, newname: &[u8]) -> Result<(u64, Attr)> {
        self.check_writable()?;
        let body = Enc::new().u64(node).name(newname).bytes();
        let mut out = reply::<{ ENTRY_OUT_SIZE }>();
        let n = self.call(op::LINK, newparent, &[&body], &mut [&mut out])?;
        self.entry(Some(newparent), &out[..n])
    }

    /// GETXATTR of `name`, or LISTXATTR without: with `size` 0 the length
    /// the answer needs, else the answer (ERANGE from the server when it is
    /// longer than `size`).
    pub fn xattr_get(&mut self, node: u64, name: Option<&[u8]>, size: u32) -> Result<XattrValue> {
        let mut enc = Enc::new().u32(size).u32(0);
        if let Some(name) = name {
            enc = enc.name(name);
        }
        let body = enc.bytes();
        let opcode = if name.is_some() {
            op::GETXATTR
        } else {
            op::LISTXATTR
        };
        if size == 0 {
            let mut out = [0u8; 8];
            self.call(opcode, node, &[&body], &mut [&mut out])?;
            return Ok(XattrValue::Size(u32::from_le_bytes([
                out[0], out[1], out[2], out[3],
            ])));
        }
        let mut out = vec![0u8; size as usize];
        let n = self.call(opcode, node, &[&body], &mut [&mut out])?;
        out.truncate(n);
        Ok(XattrValue::Data(out))
    }

    /// SETXATTR (`flags`: XATTR_CREATE, XATTR_REPLACE).
    pub fn xattr_set(&mut self, node: u64, name: &[u8], value: &[u8], flags: u32) -> Result<()> {
        self.check_writable()?;
        let body = Enc::new()
            .u32(value.len() as u32)
            .u32(flags)
            .name(name)
            .bytes();
        self.call(op::SETXATTR, node, &[&body, value], &mut [])
            .map(|_| ())
    }

    pub fn xattr_remove(&mut self, node: u64, name: &[u8]) -> Result<()> {
        self.check_writable()?;
        let body = Enc::new().name(name).bytes();
        self.call(op::REMOVEXATTR, node, &[&body], &mut [])
            .map(|_| ())
    }

    /// `struct kstatfs` as FUSE returns it (80 bytes).
    pub fn statfs(&mut self, node: u64) -> Result<[u8; STATFS_OUT_SIZE]> {
        let mut out = reply::<{ STATFS_OUT_SIZE }>();
        self.call(op::STATFS, node, &[], &mut [&mut out])?;
        Ok(out)
    }

    pub fn access(&mut self, node: u64, mask: u32) -> Result<()> {
        let body = Enc::new().u32(mask).u32(0).bytes();
        match self.call(op::ACCESS, node, &[&body], &mut []) {
            // Servers without ACCESS leave permission checks to open().
            Err(Errno::ENOSYS) => Ok(()),
            other => other.map(|_| ()),
        }
    }
}

impl Errno {
    /// FUSE major version mismatch (Linux answers EPROTO).
    pub const EPROTO_LIKE: Errno = Errno(71);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records requests and answers with canned payloads.
    struct Recorder {
        requests: Vec<(u32, u64, Vec<u8>)>,
        answer: Result<Vec<u8>>,
    }

    impl FuseTransport for Recorder {
        fn call(
            &mut self,
            opcode: u32,
            nodeid: u64,
            ins: &[&[u8]],
            outs: &mut [&mut [u8]],
        ) -> Result<usize> {
            self.requests.push((opcode, nodeid, ins.concat()));
            let answer = self.answer.clone()?;
            let mut at = 0;
            for out in outs.iter_mut() {
                let n = out.len().min(answer.len() - at);
                out[..n].copy_from_slice(&answer[at..at + n]);
                at += n;
            }
            Ok(at)
        }
    }

    #[test]
    fn the_first_request_sends_fuse_init_first() {
        let mut init = vec![0u8; INIT_OUT_SIZE];
        init[0..4].copy_from_slice(&KERNEL_VERSION.to_le_bytes());
        let mut fs = FuseFs::new(
            Recorder {
                requests: vec![],
                answer: Ok(init),
            },
            false,
        );
        let _ = fs.getattr(1, None);
        let _ = fs.getattr(1, None);
        let ops: Vec<u32> = fs.transport.requests.iter().map(|r| r.0).collect();
        assert_eq!(ops, vec![op::INIT, op::GETATTR, op::GETATTR]);
    }

    #[test]
    fn extended_attributes_frame_as_fuse_sends_them() {
        let recorder = |answer: &[u8]| {
            FuseFs::new(
                Recorder {
                    requests: vec![],
                    answer: Ok(answer.to_vec()),
                },
                false,
            )
            .ready()
        };
        let mut fs = recorder(&[5, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(fs.xattr_get(4, Some(b"user.a"), 0), Ok(XattrValue::Size(5)));
        assert_eq!(
            fs.transport.requests[0],
            (op::GETXATTR, 4, b"\0\0\0\0\0\0\0\0user.a\0".to_vec())
        );
        let mut fs = recorder(b"user.a\0user.b\0");
        assert_eq!(
            fs.xattr_get(4, None, 64),
            Ok(XattrValue::Data(b"user.a\0user.b\0".to_vec()))
        );
        assert_eq!(fs.transport.requests[0].0, op::LISTXATTR);
        let mut fs = recorder(&[]);
        fs.xattr_set(4, b"user.a", b"xyz", 1).expect("set");
        let mut body = 3u32.to_le_bytes().to_vec();
        body.extend_from_slice(&1u32.to_le_bytes());
        body.extend_from_slice(b"user.a\0xyz");
        assert_eq!(fs.transport.requests[0], (op::SETXATTR, 4, body));
        let mut readonly = FuseFs::new(
            Recorder {
                requests: vec![],
                answer: Ok(vec![]),
            },
            true,
        )
        .ready();
        assert_eq!(readonly.xattr_remove(4, b"user.a"), Err(Errno::EROFS));
        assert!(readonly.transport.requests.is_empty());
    }

    #[test]
    fn lookup_sends_a_terminated_name_and_decodes_the_entry() {
        let mut entry = vec![0u8; ENTRY_OUT_SIZE];
        entry[0..8].copy_from_slice(&9u64.to_le_bytes());
        let mut fs = FuseFs::new(
            Recorder {
                requests: vec![],
                answer: Ok(entry),
            },
            false,
        )
        .ready();
        let (id, _) = fs.lookup(1, b"bin").expect("lookup");
        assert_eq!(id, 9);
        assert_eq!(fs.transport.requests[0], (op::LOOKUP, 1, b"bin\0".to_vec()));
    }

    #[test]
    fn attributes_are_kept_while_valid_and_dropped_by_the_guests_changes() {
        // An attr_out valid for 1000 s, then a write's reply.
        let mut attr = vec![0u8; ATTR_OUT_SIZE];
        attr[0..8].copy_from_slice(&1000u64.to_le_bytes());
        let mut fs = FuseFs::new(
            Recorder {
                requests: vec![],
                answer: Ok(attr),
            },
            false,
        )
        .ready();
        let ops = |fs: &FuseFs<Recorder>| -> Vec<u32> {
            fs.transport.requests.iter().map(|r| r.0).collect()
        };
        // Without a TSC rate nothing is kept.
        let _ = fs.getattr(5, None);
        let _ = fs.getattr(5, None);
        assert_eq!(ops(&fs), vec![op::GETATTR, op::GETATTR]);
        fs.transport.requests.clear();
        fs.attrs.tsc_khz = 1_000_000;
        let _ = fs.getattr(5, None);
        let _ = fs.getattr(5, Some(3));
        assert_eq!(ops(&fs), vec![op::GETATTR], "the second from the cache");
        let _ = fs.write(5, 3, 0, b"x");
        let _ = fs.getattr(5, None);
        assert_eq!(ops(&fs), vec![op::GETATTR, op::WRITE, op::GETATTR]);
        let _ = fs.unlink(1, b"other", false);
        let _ = fs.getattr(5, None);
        assert_eq!(
            ops(&fs)[3..],
            [op::UNLINK, op::GETATTR],
            "an unlink may change any node's link count"
        );
    }

    #[test]
    fn errors_pass_through_and_readonly_refuses_writes() {
        let mut fs = FuseFs::new(
            Recorder {
                requests: vec![],
                answer: Err(Errno::ENOENT),
            },
            true,
        )
        .ready();
        assert_eq!(fs.lookup(1, b"x").map(|e| e.0), Err(Errno::ENOENT));
        assert_eq!(fs.unlink(1, b"x", false), Err(Errno::EROFS));
        assert_eq!(fs.mkdir(1, b"x", 0o755, 0).map(|e| e.0), Err(Errno::EROFS));
        assert_eq!(fs.transport.requests.len(), 1);
    }

    #[test]
    fn short_reads_stop_and_init_reads_max_write() {
        let mut fs = FuseFs::new(
            Recorder {
                requests: vec![],
                answer: Ok(vec![1; 10]),
            },
            false,
        )
        .ready();
        let mut buf = vec![0u8; 100];
        assert_eq!(fs.read(2, 3, 0, &mut buf), Ok(10));
        let body = &fs.transport.requests[0].2;
        assert_eq!(&body[16..20], &100u32.to_le_bytes());

        let mut init = vec![0u8; 24];
        init[0..4].copy_from_slice(&7u32.to_le_bytes());
        init[20..24].copy_from_slice(&(256u32 * 1024).to_le_bytes());
        let mut fs = FuseFs::new(
            Recorder {
                requests: vec![],
                answer: Ok(init),
            },
            false,
        )
        .ready();
        fs.init().expect("init");
        assert_eq!(fs.max_write, 256 * 1024);
    }
}
