//! FUSE protocol messages (Linux `include/uapi/linux/fuse.h`, 7.31), as
//! carried over virtio-fs: encoders for request bodies, decoders for replies.

use alloc::vec::Vec;

use crate::errno::{Errno, Result};

pub const ROOT_ID: u64 = 1;
pub const KERNEL_VERSION: u32 = 7;
pub const KERNEL_MINOR_VERSION: u32 = 31;
pub const IN_HEADER_SIZE: usize = 40;
pub const OUT_HEADER_SIZE: usize = 16;
pub const ENTRY_OUT_SIZE: usize = 128;
pub const ATTR_OUT_SIZE: usize = 104;
pub const OPEN_OUT_SIZE: usize = 16;
pub const INIT_OUT_SIZE: usize = 64;
pub const STATFS_OUT_SIZE: usize = 80;

pub mod op {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const SETXATTR: u32 = 21;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const REMOVEXATTR: u32 = 24;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const FSYNCDIR: u32 = 30;
    pub const ACCESS: u32 = 34;
    pub const CREATE: u32 = 35;
    pub const FALLOCATE: u32 = 43;
}

/// `FUSE_INIT` flags we ask for.
pub const INIT_BIG_WRITES: u32 = 1 << 5;
pub const INIT_MAX_PAGES: u32 = 1 << 22;

pub mod fattr {
    pub const MODE: u32 = 1 << 0;
    pub const UID: u32 = 1 << 1;
    pub const GID: u32 = 1 << 2;
    pub const SIZE: u32 = 1 << 3;
    pub const ATIME: u32 = 1 << 4;
    pub const MTIME: u32 = 1 << 5;
    pub const FH: u32 = 1 << 6;
    pub const ATIME_NOW: u32 = 1 << 7;
    pub const MTIME_NOW: u32 = 1 << 8;
}

/// Little-endian request body builder.
#[derive(Default)]
pub struct Enc(pub Vec<u8>);

impl Enc {
    pub fn new() -> Self {
        Self(Vec::with_capacity(64))
    }
    pub fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// A NUL-terminated name.
    pub fn name(mut self, name: &[u8]) -> Self {
        self.0.extend_from_slice(name);
        self.0.push(0);
        self
    }
    pub fn bytes(self) -> Vec<u8> {
        self.0
    }
}

#[allow(clippy::too_many_arguments)]
pub fn in_header(
    len: u32,
    opcode: u32,
    unique: u64,
    nodeid: u64,
    uid: u32,
    gid: u32,
    pid: u32,
) -> [u8; IN_HEADER_SIZE] {
    let mut h = [0u8; IN_HEADER_SIZE];
    h[0..4].copy_from_slice(&len.to_le_bytes());
    h[4..8].copy_from_slice(&opcode.to_le_bytes());
    h[8..16].copy_from_slice(&unique.to_le_bytes());
    h[16..24].copy_from_slice(&nodeid.to_le_bytes());
    h[24..28].copy_from_slice(&uid.to_le_bytes());
    h[28..32].copy_from_slice(&gid.to_le_bytes());
    h[32..36].copy_from_slice(&pid.to_le_bytes());
    h
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// Checks a reply header against the request; returns the payload length.
pub fn check_out_header(h: &[u8], unique: u64, written: usize) -> Result<usize> {
    if h.len() < OUT_HEADER_SIZE || written < OUT_HEADER_SIZE {
        return Err(Errno::EIO);
    }
    let len = u32_at(h, 0) as usize;
    let error = u32_at(h, 4) as i32;
    if u64_at(h, 8) != unique {
        return Err(Errno::EIO);
    }
    if error != 0 {
        return Err(Errno::from_device(error));
    }
    Ok(len.min(written).saturating_sub(OUT_HEADER_SIZE))
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub size: u64,
    pub blocks: u64,
    pub atime: u64,
    pub mtime: u64,
    pub ctime: u64,
    pub atimensec: u32,
    pub mtimensec: u32,
    pub ctimensec: u32,
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub blksize: u32,
}

pub const S_IFMT: u32 = 0o170000;
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFCHR: u32 = 0o020000;
pub const S_IFBLK: u32 = 0o060000;
pub const S_IFIFO: u32 = 0o010000;

impl Attr {
    pub fn is_dir(&self) -> bool {
        self.mode & S_IFMT == S_IFDIR
    }
    pub fn is_symlink(&self) -> bool {
        self.mode & S_IFMT == S_IFLNK
    }

    /// Encodes as Linux x86-64 `struct stat` (144 bytes).
    pub fn to_stat(&self, dev: u64) -> [u8; 144] {
        let mut s = [0u8; 144];
        let mut put = |at: usize, v: u64| s[at..at + 8].copy_from_slice(&v.to_le_bytes());
        put(0, dev);
        put(8, self.ino);
        put(16, u64::from(self.nlink));
        put(24, u64::from(self.mode) | (u64::from(self.uid) << 32));
        put(32, u64::from(self.gid));
        put(40, u64::from(self.rdev));
        put(48, self.size);
        put(
            56,
            if self.blksize == 0 {
                4096
            } else {
                u64::from(self.blksize)
            },
        );
        put(64, self.blocks);
        put(72, self.atime);
        put(80, u64::from(self.atimensec));
        put(88, self.mtime);
        put(96, u64::from(self.mtimensec));
        put(104, self.ctime);
        put(112, u64::from(self.ctimensec));
        s
    }
}

pub fn parse_attr(b: &[u8]) -> Result<Attr> {
    if b.len() < 88 {
        return Err(Errno::EIO);
    }
    Ok(Attr {
        ino: u64_at(b, 0),
        size: u64_at(b, 8),
        blocks: u64_at(b, 16),
        atime: u64_at(b, 24),
        mtime: u64_at(b, 32),
        ctime: u64_at(b, 40),
        atimensec: u32_at(b, 48),
        mtimensec: u32_at(b, 52),
        ctimensec: u32_at(b, 56),
        mode: u32_at(b, 60),
        nlink: u32_at(b, 64),
        uid: u32_at(b, 68),
        gid: u32_at(b, 72),
        rdev: u32_at(b, 76),
        blksize: u32_at(b, 80),
    })
}

/// `fuse_entry_out`: (nodeid, attr). A zero nodeid is a negative entry.
pub fn parse_entry(b: &[u8]) -> Result<(u64, Attr)> {
    if b.len() < ENTRY_OUT_SIZE {
        return Err(Errno::EIO);
    }
    let nodeid = u64_at(b, 0);
    if nodeid == 0 {
        return Err(Errno::ENOENT);
    }
    Ok((nodeid, parse_attr(&b[40..])?))
}

/// How long the name of a `fuse_entry_out` stays valid, in ns.
pub fn entry_valid_ns(b: &[u8]) -> u64 {
    if b.len() < ENTRY_OUT_SIZE {
        return 0;
    }
    valid_ns(u64_at(b, 16), u32_at(b, 32))
}

/// How long the attributes of a `fuse_entry_out` stay valid, in ns.
pub fn entry_attr_valid_ns(b: &[u8]) -> u64 {
    if b.len() < ENTRY_OUT_SIZE {
        return 0;
    }
    valid_ns(u64_at(b, 24), u32_at(b, 36))
}

/// How long the attributes of a `fuse_attr_out` stay valid, in ns.
pub fn attr_out_valid_ns(b: &[u8]) -> u64 {
    if b.len() < ATTR_OUT_SIZE {
        return 0;
    }
    valid_ns(u64_at(b, 0), u32_at(b, 8))
}

fn valid_ns(secs: u64, nsecs: u32) -> u64 {
    secs.saturating_mul(1_000_000_000)
        .saturating_add(u64::from(nsecs))
}

pub fn parse_attr_out(b: &[u8]) -> Result<Attr> {
    if b.len() < ATTR_OUT_SIZE {
        return Err(Errno::EIO);
    }
    parse_attr(&b[16..])
}

pub fn parse_open_out(b: &[u8]) -> Result<u64> {
    if b.len() < OPEN_OUT_SIZE {
        return Err(Errno::EIO);
    }
    Ok(u64_at(b, 0))
}

/// `fuse_init_out`: (major, minor, max_write).
pub fn parse_init_out(b: &[u8]) -> Result<(u32, u32, u32)> {
    if b.len() < 24 {
        return Err(Errno::EIO);
    }
    Ok((u32_at(b, 0), u32_at(b, 4), u32_at(b, 20)))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dirent<'a> {
    pub ino: u64,
    /// Cookie to continue reading after this entry.
    pub off: u64,
    pub kind: u32,
    pub name: &'a [u8],
}

/// Iterates over the `fuse_dirent`s of a READDIR reply.
pub fn dirents(mut b: &[u8]) -> impl Iterator<Item = Dirent<'_>> {
    core::iter::from_fn(move || {
        if b.len() < 24 {
            return None;
        }
        let namelen = u32_at(b, 16) as usize;
        let end = 24usize.checked_add(namelen)?;
        let name = b.get(24..end)?;
        let d = Dirent {
            ino: u64_at(b, 0),
            off: u64_at(b, 8),
            kind: u32_at(b, 20),
            name,
        };
        let rec = (end + 7) & !7;
        b = b.get(rec..).unwrap_or(&[]);
        Some(d)
    })
}

/// Appends a Linux `struct linux_dirent64`; false if it does not fit.
pub fn put_dirent64(
    out: &mut [u8],
    at: &mut usize,
    ino: u64,
    off: u64,
    kind: u8,
    name: &[u8],
) -> bool {
    let reclen = (19 + name.len() + 1 + 7) & !7;
    let Some(rec) = out.get_mut(*at..*at + reclen) else {
        return false;
    };
    rec.fill(0);
    rec[0..8].copy_from_slice(&ino.to_le_bytes());
    rec[8..16].copy_from_slice(&off.to_le_bytes());
    rec[16..18].copy_from_slice(&(reclen as u16).to_le_bytes());
    rec[18] = kind;
    rec[19..19 + name.len()].copy_from_slice(name);
    *at += reclen;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_headers_and_bodies() {
        let h = in_header(56, op::READ, 9, 5, 1000, 100, 1);
        assert_eq!(&h[0..4], &56u32.to_le_bytes());
        assert_eq!(&h[4..8], &op::READ.to_le_bytes());
        assert_eq!(&h[16..24], &5u64.to_le_bytes());
        let body = Enc::new().u32(0o644).u32(0o22).name(b"dir").bytes();
        assert_eq!(body.len(), 12);
        assert_eq!(&body[8..], b"dir\0");
    }

    #[test]
    fn out_header_errors_map_to_errno() {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&16u32.to_le_bytes());
        h[4..8].copy_from_slice(&(-2i32).to_le_bytes());
        h[8..16].copy_from_slice(&3u64.to_le_bytes());
        assert_eq!(check_out_header(&h, 3, 16), Err(Errno::ENOENT));
        assert_eq!(check_out_header(&h, 4, 16), Err(Errno::EIO));
        h[0..4].copy_from_slice(&30u32.to_le_bytes());
        h[4..8].copy_from_slice(&0i32.to_le_bytes());
        assert_eq!(check_out_header(&h, 3, 30), Ok(14));
    }

    #[test]
    fn decodes_entries_and_dirents() {
        let mut e = vec![0u8; ENTRY_OUT_SIZE];
        e[0..8].copy_from_slice(&42u64.to_le_bytes());
        e[40 + 8..40 + 16].copy_from_slice(&1234u64.to_le_bytes());
        e[40 + 60..40 + 64].copy_from_slice(&(S_IFLNK | 0o777).to_le_bytes());
        let (id, attr) = parse_entry(&e).expect("entry");
        assert_eq!((id, attr.size), (42, 1234));
        assert!(attr.is_symlink());
        assert_eq!(parse_entry(&e[..100]), Err(Errno::EIO));

        let mut buf = Vec::new();
        for (i, name) in [&b"a"[..], b"longer-name"].iter().enumerate() {
            buf.extend_from_slice(&(i as u64 + 10).to_le_bytes());
            buf.extend_from_slice(&(i as u64 + 1).to_le_bytes());
            buf.extend_from_slice(&(name.len() as u32).to_le_bytes());
            buf.extend_from_slice(&4u32.to_le_bytes());
            buf.extend_from_slice(name);
            while buf.len() % 8 != 0 {
                buf.push(0);
            }
        }
        let all: Vec<_> = dirents(&buf).collect();
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].name, b"longer-name");
        assert_eq!(all[1].off, 2);
        assert_eq!(dirents(&buf[..30]).count(), 1);

        let mut out = [0u8; 48];
        let mut at = 0;
        assert!(put_dirent64(&mut out, &mut at, 1, 1, 4, b"abc"));
        assert_eq!(at, 24);
        assert!(!put_dirent64(
            &mut out,
            &mut at,
            1,
            1,
            4,
            b"a-name-too-long-to-fit"
        ));
    }

    #[test]
    fn stat_layout_matches_linux() {
        let a = Attr {
            ino: 7,
            size: 99,
            mode: S_IFREG | 0o600,
            uid: 5,
            gid: 6,
            nlink: 1,
            ..Attr::default()
        };
        let s = a.to_stat(1);
        assert_eq!(&s[8..16], &7u64.to_le_bytes());
        assert_eq!(&s[24..28], &(S_IFREG | 0o600).to_le_bytes());
        assert_eq!(&s[28..32], &5u32.to_le_bytes());
        assert_eq!(&s[48..56], &99u64.to_le_bytes());
    }
}
