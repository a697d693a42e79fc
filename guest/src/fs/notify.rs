//! Directory change notification (dnotify: fcntl `F_NOTIFY`). A process
//! asks, through a descriptor of a directory, to be sent SIGIO when an
//! entry of that directory is read (`DN_ACCESS`), written or truncated
//! (`DN_MODIFY`), created (`DN_CREATE`), removed (`DN_DELETE`), renamed
//! (`DN_RENAME`) or has its attributes changed (`DN_ATTRIB`); once, or
//! every time with `DN_MULTISHOT`. A watch lasts while its open directory
//! does.
//!
//! Directories are named by their path in the guest's tree (the walk's
//! canonical path; a file's, as it was opened). Only what the guest's own
//! processes do is seen: the host's changes to a shared directory reach no
//! watch, as none crosses virtio-fs.

use alloc::rc::{Rc, Weak};
use alloc::vec::Vec;

use crate::fs::fd::File;

pub const DN_ACCESS: u32 = 0x1;
pub const DN_MODIFY: u32 = 0x2;
pub const DN_CREATE: u32 = 0x4;
pub const DN_DELETE: u32 = 0x8;
pub const DN_RENAME: u32 = 0x10;
pub const DN_ATTRIB: u32 = 0x20;
pub const DN_MULTISHOT: u32 = 0x8000_0000;

struct Watch {
    dir: Vec<u8>,
    file: Weak<dyn File>,
    owner: i32,
    mask: u32,
}

#[derive(Default)]
pub struct DirNotify {
    watches: Vec<Watch>,
    /// Processes owed a SIGIO, for the kernel to send after the call.
    pub signals: Vec<i32>,
}

impl DirNotify {
    /// Whether no watch exists (the common case: nothing to look up).
    pub fn is_empty(&self) -> bool {
        self.watches.is_empty()
    }

    /// `F_NOTIFY` with `arg` by `owner` through `file`, a descriptor of
    /// directory `dir`: replaces its watch, or removes it when `arg` asks
    /// for no event.
    pub fn set(&mut self, dir: &[u8], file: &Rc<dyn File>, owner: i32, arg: u32) {
        let same = |w: &Watch| w.owner == owner && Weak::ptr_eq(&w.file, &Rc::downgrade(file));
        self.watches
            .retain(|w| !same(w) && w.file.strong_count() > 0);
        if arg & !DN_MULTISHOT != 0 {
            self.watches.push(Watch {
                dir: dir.to_vec(),
                file: Rc::downgrade(file),
                owner,
                mask: arg,
            });
        }
    }

    /// Events (one or more `DN_*` bits) happened to an entry of directory
    /// `dir`. A rename is `DN_RENAME` to both directories, and also
    /// `DN_DELETE` to the one it left and `DN_CREATE` to the one it entered
    /// (Linux's moved-from and moved-to).
    pub fn event(&mut self, dir: &[u8], event: u32) {
        let signals = &mut self.signals;
        self.watches.retain(|w| {
            if w.file.strong_count() == 0 {
                return false;
            }
            if w.dir != dir || w.mask & event == 0 {
                return true;
            }
            if !signals.contains(&w.owner) {
                signals.push(w.owner);
            }
            w.mask & DN_MULTISHOT != 0
        });
    }
}

/// The directory holding `path` (a canonical path).
pub fn parent(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(0) | None => b"/",
        Some(i) => &path[..i],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::pipe;

    fn dir_file() -> Rc<dyn File> {
        let (r, _w) = pipe::new_pipe(0);
        Rc::new(r)
    }

    #[test]
    fn one_shot_and_multishot_watches() {
        let mut n = DirNotify::default();
        let a = dir_file();
        let b = dir_file();
        n.set(b"/d", &a, 7, DN_CREATE);
        n.set(b"/d", &b, 8, DN_DELETE);
        // Events add to a watch.
        n.set(b"/d", &b, 8, DN_RENAME | DN_MULTISHOT);
        n.event(b"/other", DN_CREATE);
        n.event(b"/d", DN_MODIFY);
        assert!(n.signals.is_empty());
        n.event(b"/d", DN_CREATE);
        n.event(b"/d", DN_CREATE);
        assert_eq!(n.signals, [7], "a one-shot watch fires once");
        n.signals.clear();
        n.event(b"/d", DN_DELETE);
        n.event(b"/d", DN_DELETE);
        n.event(b"/d", DN_RENAME);
        assert_eq!(n.signals, [8], "one signal per owner until sent");
        n.set(b"/d", &b, 8, 0);
        assert!(n.is_empty(), "no event asked: the watch goes");
        n.signals.clear();
        n.set(b"/d", &a, 7, DN_CREATE);
        drop(a);
        n.event(b"/d", DN_CREATE);
        assert!(
            n.is_empty() && n.signals.is_empty(),
            "a closed directory's watch goes"
        );
    }

    #[test]
    fn parents() {
        assert_eq!(parent(b"/a/b"), b"/a");
        assert_eq!(parent(b"/a"), b"/");
        assert_eq!(parent(b"/"), b"/");
    }
}
