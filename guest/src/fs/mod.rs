//! Files: the VFS and its mounts over FUSE file systems (`vfs`, `fuse`),
//! the fd table and the file-object trait (`fd`), the kinds of files
//! (`files`: FUSE files and directories, the consoles; `pipe`; `pty`:
//! pseudo-terminals; `event`: eventfd and epoll; `procfs`), and advisory
//! locks (`locks`).

pub mod event;
pub mod fd;
pub mod files;
pub mod fuse;
pub mod locks;
pub mod notify;
pub mod pipe;
pub mod procfs;
pub mod pty;
pub mod vfs;

use alloc::vec::Vec;

use crate::drivers::rng::Rng;
use crate::drivers::virtio::console::Console;
use crate::mm::cache::PageCache;
use fuse::VirtioFuse;
use vfs::Vfs;

/// Everything file objects need to do I/O.
pub struct Devices {
    pub vfs: Vfs<VirtioFuse>,
    /// The pages of regular files (`FuseFile` reads and writes through it).
    pub cache: PageCache,
    pub consoles: Vec<Console>,
    /// Index in `consoles` of the Stdio and Stderr roles.
    pub stdio: Option<usize>,
    pub stderr: Option<usize>,
    pub rng: Rng,
    /// Set by a read that answers `EBLOCK` until stdin has input: the
    /// scheduler then also wakes the reader when the console has some.
    pub want_stdin: bool,
    /// The pseudo-terminals.
    pub ptys: pty::Ptys,
    /// Directory change notification watches (`F_NOTIFY`).
    pub dnotify: notify::DirNotify,
}
