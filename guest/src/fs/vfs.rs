//! Path resolution and the mount table.
//!
//! Paths are walked component by component from the root with FUSE LOOKUPs;
//! the walk keeps the stack of directories it went through, so `..` pops
//! back to where the walk really came from, also after following a symlink
//! (POSIX semantics, no lexical shortcut). Mount points are matched by the
//! canonical path of the stack; `..` out of a mount's root returns to the
//! mount point's parent. The VMM confines every server to its directory, so
//! this walk is about correctness, not security.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use crate::errno::{Errno, Result};
use crate::fs::fuse::{Attr, ROOT_ID, S_IFDIR, S_IFLNK, S_IFMT};
use crate::fs::fuse::{FuseFs, FuseTransport};

const MAX_SYMLINKS: u32 = 40;
pub const PATH_MAX: usize = 4096;

/// A file on one of the mounted file systems.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Node {
    pub fs: usize,
    pub id: u64,
}

/// What the walk needs from the file systems.
pub trait FsOps {
    /// Looks `name` up in directory `parent`; returns the node id and `st_mode`.
    fn lookup(&mut self, fs: usize, parent: u64, name: &[u8]) -> Result<(u64, u32)>;
    fn readlink(&mut self, fs: usize, node: u64) -> Result<Vec<u8>>;
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// Components of the mount point ("/" has none).
    pub components: Vec<Vec<u8>>,
    pub fs: usize,
}

impl Mount {
    pub fn new(path: &[u8], fs: usize) -> Self {
        Self {
            components: components(path).map(<[u8]>::to_vec).collect(),
            fs,
        }
    }
}

/// A resolved path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Walk {
    pub node: Node,
    /// `st_mode` type bits of the node (its permission bits may be stale:
    /// they come from the name cache; ask GETATTR for them).
    pub mode: u32,
    /// Canonical absolute path (symlinks resolved).
    pub path: Vec<u8>,
}

impl Walk {
    pub fn is_dir(&self) -> bool {
        self.mode & S_IFMT == S_IFDIR
    }
}

fn components(path: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    path.split(|&b| b == b'/').filter(|c| !c.is_empty())
}

struct Frame {
    name: Vec<u8>,
    node: Node,
    mode: u32,
}

fn canonical(stack: &[Frame]) -> Vec<u8> {
    if stack.len() <= 1 {
        return b"/".to_vec();
    }
    let mut p = Vec::new();
    for f in &stack[1..] {
        p.push(b'/');
        p.extend_from_slice(&f.name);
    }
    p
}

fn mount_at(mounts: &[Mount], stack: &[Frame]) -> Option<usize> {
    mounts
        .iter()
        .rev()
        .find(|m| {
            m.components.len() + 1 == stack.len()
                && m.components
                    .iter()
                    .zip(&stack[1..])
                    .all(|(c, f)| *c == f.name)
        })
        .map(|m| m.fs)
}

/// Resolves `path` (absolute, or relative to the canonical `cwd`).
/// `follow_last`: follow a symlink in the last component.
pub fn walk<F: FsOps>(
    ops: &mut F,
    mounts: &[Mount],
    cwd: &[u8],
    path: &[u8],
    follow_last: bool,
) -> Result<Walk> {
    if path.is_empty() {
        return Err(Errno::ENOENT);
    }
    if path.len() >= PATH_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    let root_fs = mount_at(
        mounts,
        &[Frame {
            name: Vec::new(),
            node: Node { fs: 0, id: 0 },
            mode: 0,
        }],
    )
    .unwrap_or(0);
    let root = || Frame {
        name: Vec::new(),
        node: Node {
            fs: root_fs,
            id: ROOT_ID,
        },
        mode: S_IFDIR,
    };
    let mut stack = alloc::vec![root()];
    // Pending components, last to walk first.
    let mut pending: Vec<Vec<u8>> = Vec::new();
    let must_be_dir = path.ends_with(b"/");
    for c in components(path).rev() {
        pending.push(c.to_vec());
    }
    if path[0] != b'/' {
        for c in components(cwd).rev() {
            pending.push(c.to_vec());
        }
    }
    let mut links = 0;
    while let Some(name) = pending.pop() {
        if name == b"." {
            continue;
        }
        if name == b".." {
            if stack.len() > 1 {
                stack.pop();
            }
            continue;
        }
        let top = stack.last().ok_or(Errno::ENOENT)?;
        if top.mode & S_IFMT != S_IFDIR {
            return Err(Errno::ENOTDIR);
        }
        if name.len() > 255 {
            return Err(Errno::ENAMETOOLONG);
        }
        let parent = top.node;
        let (id, mode) = ops.lookup(parent.fs, parent.id, &name)?;
        let last = pending.is_empty();
        if mode & S_IFMT == S_IFLNK && (!last || follow_last || must_be_dir) {
            links += 1;
            if links > MAX_SYMLINKS {
                return Err(Errno::ELOOP);
            }
            let target = ops.readlink(parent.fs, id)?;
            if target.is_empty() {
                return Err(Errno::ENOENT);
            }
            if target[0] == b'/' {
                stack.truncate(1);
            }
            for c in components(&target).rev() {
                pending.push(c.to_vec());
            }
            continue;
        }
        stack.push(Frame {
            name,
            node: Node { fs: parent.fs, id },
            mode,
        });
        if let Some(fs) = mount_at(mounts, &stack) {
            if let Some(top) = stack.last_mut() {
                top.node = Node { fs, id: ROOT_ID };
                top.mode = S_IFDIR;
            }
        }
    }
    let top = stack.last().ok_or(Errno::ENOENT)?;
    if must_be_dir && top.mode & S_IFMT != S_IFDIR {
        return Err(Errno::ENOTDIR);
    }
    Ok(Walk {
        node: top.node,
        mode: top.mode,
        path: canonical(&stack),
    })
}

/// Splits a path into its directory part and final name, for operations
/// that create or remove the final name. Trailing slashes are dropped.
pub fn split_last(path: &[u8]) -> Result<(&[u8], &[u8])> {
    let mut end = path.len();
    while end > 1 && path[end - 1] == b'/' {
        end -= 1;
    }
    let path = &path[..end];
    if path.is_empty() {
        return Err(Errno::ENOENT);
    }
    match path.iter().rposition(|&b| b == b'/') {
        None => Ok((b".", path)),
        Some(0) => Ok((b"/", &path[1..])),
        Some(i) => Ok((&path[..i], &path[i + 1..])),
    }
}

/// Joins a canonical directory path and a name.
pub fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = dir.to_vec();
    if !p.ends_with(b"/") {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// The mounted FUSE file systems with a lookup cache.
///
/// The cache maps (directory, name) to (node, type) for as long as the
/// server says entries stay valid (virtio-fs's `cache=auto`: 1 s; forever
/// without a TSC rate to time it). The guest drops the entries it changes
/// itself; attributes are `FuseFs::attrs`'.
pub struct Vfs<T: FuseTransport> {
    pub filesystems: Vec<FuseFs<T>>,
    pub mounts: Vec<Mount>,
    cache: BTreeMap<EntryKey, CachedEntry>,
}

/// (file system, directory node, name).
type EntryKey = (usize, u64, Vec<u8>);
/// (node, `st_mode` type bits, TSC reading when it goes stale).
type CachedEntry = (u64, u32, u64);

impl<T: FuseTransport> Vfs<T> {
    pub fn new() -> Self {
        Self {
            filesystems: Vec::new(),
            mounts: Vec::new(),
            cache: BTreeMap::new(),
        }
    }

    pub fn fs(&mut self, index: usize) -> Result<&mut FuseFs<T>> {
        self.filesystems.get_mut(index).ok_or(Errno::EIO)
    }

    pub fn walk(&mut self, cwd: &[u8], path: &[u8], follow: bool) -> Result<Walk> {
        let mounts = core::mem::take(&mut self.mounts);
        let result = walk(self, &mounts, cwd, path, follow);
        self.mounts = mounts;
        result
    }

    /// Resolves the parent directory of `path` and returns it with the final name.
    pub fn walk_parent(&mut self, cwd: &[u8], path: &[u8]) -> Result<(Walk, Vec<u8>)> {
        let (dir, name) = split_last(path)?;
        let dir = self.walk(cwd, dir, true)?;
        if !dir.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        Ok((dir, name.to_vec()))
    }

    pub fn forget(&mut self, node: Node, name: &[u8]) {
        self.cache.remove(&(node.fs, node.id, name.to_vec()));
    }

    pub fn remember(&mut self, parent: Node, name: &[u8], id: u64, attr: &Attr) {
        let until = self.entry_deadline(parent.fs);
        self.cache.insert(
            (parent.fs, parent.id, name.to_vec()),
            (id, attr.mode, until),
        );
    }

    /// When an entry of file system `fs` looked up now goes stale.
    fn entry_deadline(&mut self, fs: usize) -> u64 {
        match self.fs(fs) {
            Ok(fs) if fs.attrs.tsc_khz != 0 => fs.attrs.deadline(fs.entry_valid_ns).unwrap_or(0),
            _ => u64::MAX,
        }
    }
}

impl<T: FuseTransport> Default for Vfs<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: FuseTransport> FsOps for Vfs<T> {
    fn lookup(&mut self, fs: usize, parent: u64, name: &[u8]) -> Result<(u64, u32)> {
        let key = (fs, parent, name.to_vec());
        if let Some(&(id, mode, until)) = self.cache.get(&key) {
            if until == u64::MAX || crate::arch::rdtsc() < until {
                return Ok((id, mode));
            }
        }
        let (id, attr) = self.fs(fs)?.lookup(parent, name)?;
        let until = self.entry_deadline(fs);
        self.cache.insert(key, (id, attr.mode, until));
        Ok((id, attr.mode))
    }

    fn readlink(&mut self, fs: usize, node: u64) -> Result<Vec<u8>> {
        self.fs(fs)?.readlink(node)
    }
}

/// Access bits for [`may_access`].
pub const MAY_READ: u32 = 4;
pub const MAY_WRITE: u32 = 2;
pub const MAY_EXEC: u32 = 1;

/// The capabilities that override permission bits (`CAP_DAC_OVERRIDE`,
/// `CAP_DAC_READ_SEARCH`), as the caller's effective set has them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DacOverride {
    pub any: bool,
    pub read_search: bool,
}

/// Who asks for access: file-system ids, supplementary groups, overrides.
#[derive(Clone, Copy, Debug)]
pub struct Accessor<'a> {
    pub uid: u32,
    pub gid: u32,
    pub groups: &'a [u32],
    pub dac: DacOverride,
}

/// Whether the process `who` describes may access a file of `mode`/`uid`/`gid`
/// for `want` (MAY_* bits), as Linux's `generic_permission` decides: the
/// owner, group or other bits first, then the capabilities. The virtio-fs
/// server acts as root, so the guest checks (as a FUSE client mounted with
/// `default_permissions` does). `CAP_DAC_OVERRIDE` reads and writes
/// anything and executes what has any execute bit; `CAP_DAC_READ_SEARCH`
/// reads any file and reads and searches any directory.
pub fn may_access(mode: u32, uid: u32, gid: u32, who: &Accessor<'_>, want: u32) -> bool {
    let Accessor {
        uid: euid,
        gid: egid,
        groups,
        dac,
    } = *who;
    let granted = if uid == euid {
        mode >> 6
    } else if gid == egid || groups.contains(&gid) {
        mode >> 3
    } else {
        mode
    } & 7;
    if granted & want == want {
        return true;
    }
    let dir = mode & S_IFMT == S_IFDIR;
    if dac.any && (dir || want & MAY_EXEC == 0 || mode & 0o111 != 0) {
        return true;
    }
    dac.read_search && want & MAY_WRITE == 0 && (dir || want & MAY_EXEC == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::fuse::S_IFREG;

    /// An in-memory tree: (fs, parent, name) -> (id, mode), symlink targets by id.
    #[derive(Default)]
    struct Tree {
        entries: BTreeMap<(usize, u64, Vec<u8>), (u64, u32)>,
        links: BTreeMap<u64, Vec<u8>>,
        lookups: usize,
    }

    impl Tree {
        fn add(&mut self, fs: usize, parent: u64, name: &str, id: u64, mode: u32) {
            self.entries
                .insert((fs, parent, name.as_bytes().to_vec()), (id, mode));
        }
    }

    impl FsOps for Tree {
        fn lookup(&mut self, fs: usize, parent: u64, name: &[u8]) -> Result<(u64, u32)> {
            self.lookups += 1;
            self.entries
                .get(&(fs, parent, name.to_vec()))
                .copied()
                .ok_or(Errno::ENOENT)
        }
        fn readlink(&mut self, _fs: usize, node: u64) -> Result<Vec<u8>> {
            self.links.get(&node).cloned().ok_or(Errno::EINVAL)
        }
    }

    /// / -> bin(2) -> busybox(3), sh(4 -> busybox); usr(5) -> bin(6 -> ../bin);
    /// etc(7) -> passwd(8); data(9) mount point of fs 1 holding file(2).
    fn tree() -> (Tree, Vec<Mount>) {
        let mut t = Tree::default();
        t.add(0, 1, "bin", 2, S_IFDIR);
        t.add(0, 2, "busybox", 3, S_IFREG);
        t.add(0, 2, "sh", 4, S_IFLNK);
        t.links.insert(4, b"busybox".to_vec());
        t.add(0, 1, "usr", 5, S_IFDIR);
        t.add(0, 5, "bin", 6, S_IFLNK);
        t.links.insert(6, b"../bin".to_vec());
        t.add(0, 1, "etc", 7, S_IFDIR);
        t.add(0, 7, "passwd", 8, S_IFREG);
        t.add(0, 1, "data", 9, S_IFDIR);
        t.add(1, 1, "file", 2, S_IFREG);
        t.add(0, 1, "loop", 10, S_IFLNK);
        t.links.insert(10, b"/loop".to_vec());
        (t, vec![Mount::new(b"/", 0), Mount::new(b"/data", 1)])
    }

    fn node(fs: usize, id: u64) -> Node {
        Node { fs, id }
    }

    #[test]
    fn walks_absolute_relative_dot_and_dotdot() {
        let (mut t, m) = tree();
        let w = walk(&mut t, &m, b"/", b"/bin/busybox", true).expect("walk");
        assert_eq!(
            (w.node, w.path.as_slice()),
            (node(0, 3), &b"/bin/busybox"[..])
        );
        let w = walk(&mut t, &m, b"/etc", b"passwd", true).expect("walk");
        assert_eq!(w.node, node(0, 8));
        let w = walk(&mut t, &m, b"/etc", b"./../bin/./busybox", true).expect("walk");
        assert_eq!(w.node, node(0, 3));
        let w = walk(&mut t, &m, b"/", b"/../../etc", true).expect("walk");
        assert_eq!((w.node, w.path.as_slice()), (node(0, 7), &b"/etc"[..]));
        assert_eq!(walk(&mut t, &m, b"/", b"/nope", true), Err(Errno::ENOENT));
        assert_eq!(
            walk(&mut t, &m, b"/", b"/etc/passwd/x", true),
            Err(Errno::ENOTDIR)
        );
        assert_eq!(
            walk(&mut t, &m, b"/", b"/etc/passwd/", true),
            Err(Errno::ENOTDIR)
        );
        assert_eq!(walk(&mut t, &m, b"/", b"", true), Err(Errno::ENOENT));
    }

    #[test]
    fn follows_symlinks_where_asked() {
        let (mut t, m) = tree();
        let w = walk(&mut t, &m, b"/", b"/bin/sh", true).expect("walk");
        assert_eq!(
            (w.node, w.path.as_slice()),
            (node(0, 3), &b"/bin/busybox"[..])
        );
        let w = walk(&mut t, &m, b"/", b"/bin/sh", false).expect("walk");
        assert_eq!(w.node, node(0, 4));
        assert_eq!(w.mode & S_IFMT, S_IFLNK);
        // A symlink in the middle, with a relative `..` target.
        let w = walk(&mut t, &m, b"/", b"/usr/bin/sh", true).expect("walk");
        assert_eq!(
            (w.node, w.path.as_slice()),
            (node(0, 3), &b"/bin/busybox"[..])
        );
        assert_eq!(walk(&mut t, &m, b"/", b"/loop", true), Err(Errno::ELOOP));
    }

    #[test]
    fn crosses_mount_points_both_ways() {
        let (mut t, m) = tree();
        let w = walk(&mut t, &m, b"/", b"/data/file", true).expect("walk");
        assert_eq!(w.node, node(1, 2));
        let w = walk(&mut t, &m, b"/data", b"..", true).expect("walk");
        assert_eq!((w.node, w.path.as_slice()), (node(0, ROOT_ID), &b"/"[..]));
        let w = walk(&mut t, &m, b"/data", b".", true).expect("walk");
        assert_eq!(w.node, node(1, ROOT_ID));
        assert!(w.is_dir());
    }

    #[test]
    fn splits_parent_and_name() {
        assert_eq!(
            split_last(b"/a/b/").expect("split"),
            (&b"/a"[..], &b"b"[..])
        );
        assert_eq!(split_last(b"/a").expect("split"), (&b"/"[..], &b"a"[..]));
        assert_eq!(split_last(b"a").expect("split"), (&b"."[..], &b"a"[..]));
        assert_eq!(split_last(b""), Err(Errno::ENOENT));
        assert_eq!(join(b"/", b"x"), b"/x");
        assert_eq!(join(b"/a", b"x"), b"/a/x");
    }

    #[test]
    fn access_follows_owner_group_other_bits() {
        let file = S_IFREG | 0o640;
        // Owner, group (primary or supplementary), other.
        assert!(may_access(
            file,
            1000,
            100,
            &who(1000, 5, &[], NONE),
            MAY_READ | MAY_WRITE
        ));
        assert!(!may_access(
            file,
            1000,
            100,
            &who(1000, 5, &[], NONE),
            MAY_EXEC
        ));
        assert!(may_access(
            file,
            1,
            100,
            &who(1000, 100, &[], NONE),
            MAY_READ
        ));
        assert!(!may_access(
            file,
            1,
            100,
            &who(1000, 100, &[], NONE),
            MAY_WRITE
        ));
        assert!(may_access(
            file,
            1,
            100,
            &who(1000, 5, &[100], NONE),
            MAY_READ
        ));
        assert!(!may_access(
            file,
            1,
            100,
            &who(1000, 5, &[], NONE),
            MAY_READ
        ));
        // The owner's bits apply to the owner even when others have more.
        assert!(!may_access(
            S_IFREG | 0o066,
            1000,
            1,
            &who(1000, 1, &[], NONE),
            MAY_READ
        ));
        // CAP_DAC_OVERRIDE reads and writes anything, executes only what is
        // executable; CAP_DAC_READ_SEARCH reads and searches, never writes;
        // root without them is an owner like any other.
        assert!(may_access(
            S_IFREG,
            1,
            1,
            &who(0, 0, &[], ALL),
            MAY_READ | MAY_WRITE
        ));
        assert!(!may_access(
            S_IFREG | 0o644,
            1,
            1,
            &who(0, 0, &[], ALL),
            MAY_EXEC
        ));
        assert!(may_access(
            S_IFREG | 0o100,
            1,
            1,
            &who(0, 0, &[], ALL),
            MAY_EXEC
        ));
        assert!(may_access(S_IFDIR, 1, 1, &who(0, 0, &[], ALL), MAY_EXEC));
        let read_search = DacOverride {
            any: false,
            read_search: true,
        };
        assert!(may_access(
            S_IFREG,
            1,
            1,
            &who(0, 0, &[], read_search),
            MAY_READ
        ));
        assert!(!may_access(
            S_IFREG,
            1,
            1,
            &who(0, 0, &[], read_search),
            MAY_WRITE
        ));
        assert!(may_access(
            S_IFDIR,
            1,
            1,
            &who(0, 0, &[], read_search),
            MAY_EXEC | MAY_READ
        ));
        assert!(!may_access(
            S_IFREG | 0o600,
            1,
            1,
            &who(0, 0, &[], NONE),
            MAY_READ
        ));
        assert!(may_access(
            S_IFREG | 0o600,
            0,
            1,
            &who(0, 0, &[], NONE),
            MAY_WRITE
        ));
    }

    fn who(uid: u32, gid: u32, groups: &[u32], dac: DacOverride) -> Accessor<'_> {
        Accessor {
            uid,
            gid,
            groups,
            dac,
        }
    }

    const NONE: DacOverride = DacOverride {
        any: false,
        read_search: false,
    };
    const ALL: DacOverride = DacOverride {
        any: true,
        read_search: true,
    };
}
