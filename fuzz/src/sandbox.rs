//! A directory tree for the file server, beside a sibling it must never
//! reach. After each input the harness checks that nothing outside the
//! served root changed (and, read-only, nothing inside either) and that no
//! reply carried the sibling's secret bytes.
//!
//! Layout, under /dev/shm when it exists so file operations cost no disk I/O:
//!
//! ```text
//! <top>/root/              served
//!        file              some text
//!        dir/inner         a file one level down
//!        empty/
//!        up -> ../outside/secret           a relative symlink climbing out
//!        abs -> <top>/outside/secret       an absolute symlink out
//!        self -> .
//! <top>/outside/secret     random bytes, new for every process
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once};

/// Trees to remove when the process exits: targets keep their sandbox in a
/// static, and statics are never dropped.
static TREES: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

extern "C" fn remove_trees() {
    if let Ok(trees) = TREES.lock() {
        for top in trees.iter() {
            let _ = fs::remove_dir_all(top);
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Entry {
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    /// Contents of a small regular file, or a symlink's target.
    data: Option<Vec<u8>>,
}

type Snapshot = BTreeMap<PathBuf, Entry>;

/// Every entry under `dir` (and `dir` itself), symlinks not followed.
fn snapshot(dir: &Path) -> Snapshot {
    let mut out = Snapshot::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        let data = if meta.file_type().is_symlink() {
            fs::read_link(&path)
                .ok()
                .map(|t| t.into_os_string().into_encoded_bytes())
        } else if meta.is_file() && meta.len() <= 4096 {
            fs::read(&path).ok()
        } else {
            None
        };
        if meta.is_dir() {
            if let Ok(entries) = fs::read_dir(&path) {
                pending.extend(entries.flatten().map(|e| e.path()));
            }
        }
        out.insert(
            path,
            Entry {
                mode: meta.mode(),
                uid: meta.uid(),
                gid: meta.gid(),
                nlink: meta.nlink(),
                size: meta.size(),
                mtime: (meta.mtime(), meta.mtime_nsec()),
                ctime: (meta.ctime(), meta.ctime_nsec()),
                data,
            },
        );
    }
    out
}

/// Removes a tree the file server may have left unreadable or unwritable.
fn force_remove(path: &Path) {
    if fs::remove_dir_all(path).is_ok() || !path.exists() {
        return;
    }
    let mut pending = vec![path.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o700));
        if let Ok(entries) = fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    pending.push(e.path());
                }
            }
        }
    }
    fs::remove_dir_all(path).unwrap_or_else(|e| panic!("cannot remove {}: {e}", path.display()));
}

pub struct Sandbox {
    top: PathBuf,
    root: PathBuf,
    outside: PathBuf,
    secret: [u8; 32],
    pristine_root: Snapshot,
    pristine_outside: Snapshot,
}

/// The process's one sandbox, shared by every input of a fuzz target.
pub fn shared() -> &'static std::sync::Mutex<Sandbox> {
    static SANDBOX: std::sync::OnceLock<std::sync::Mutex<Sandbox>> = std::sync::OnceLock::new();
    SANDBOX.get_or_init(|| std::sync::Mutex::new(Sandbox::new()))
}

impl Sandbox {
    pub fn new() -> Self {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let top = base.join(format!(
            "capsa-fuzz-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        force_remove(&top);
        static AT_EXIT: Once = Once::new();
        AT_EXIT.call_once(|| {
            // SAFETY: registers a plain function with no preconditions.
            unsafe { libc::atexit(remove_trees) };
        });
        TREES.lock().unwrap().push(top.clone());
        let root = top.join("root");
        let outside = top.join("outside");
        fs::create_dir_all(&outside).unwrap();
        let mut secret = [0u8; 32];
        fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut secret))
            .unwrap();
        fs::write(outside.join("secret"), secret).unwrap();
        let mut sandbox = Sandbox {
            top,
            root,
            outside,
            secret,
            pristine_root: Snapshot::new(),
            pristine_outside: Snapshot::new(),
        };
        sandbox.populate();
        sandbox.pristine_outside = snapshot(&sandbox.outside);
        sandbox
    }

    fn populate(&mut self) {
        let root = &self.root;
        fs::create_dir(root).unwrap();
        fs::write(root.join("file"), "capsa fuzz\n".repeat(64)).unwrap();
        fs::create_dir(root.join("dir")).unwrap();
        fs::write(root.join("dir/inner"), b"inner\n").unwrap();
        fs::create_dir(root.join("empty")).unwrap();
        std::os::unix::fs::symlink("../outside/secret", root.join("up")).unwrap();
        std::os::unix::fs::symlink(self.outside.join("secret"), root.join("abs")).unwrap();
        std::os::unix::fs::symlink(".", root.join("self")).unwrap();
        self.pristine_root = snapshot(root);
    }

    /// The served directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Panics if anything outside the served root changed, if a read-only
    /// root changed, or if a reply holds the secret the input did not
    /// bring; then puts a modified root back as it was, so every input
    /// starts from the same tree.
    pub fn check(&mut self, readonly: bool, replies: &[&[u8]], input: &[u8]) {
        let mut names: Vec<_> = fs::read_dir(&self.top)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["outside", "root"],
            "the file server changed the directory above its root"
        );
        assert!(
            snapshot(&self.outside) == self.pristine_outside,
            "the file server changed a file outside its root"
        );
        if !contains(input, &self.secret) {
            for reply in replies {
                assert!(
                    !contains(reply, &self.secret),
                    "a reply carries the contents of a file outside the served root"
                );
            }
        }
        if snapshot(&self.root) != self.pristine_root {
            assert!(!readonly, "the file server changed a read-only directory");
            force_remove(&self.root);
            self.populate();
        }
    }
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        force_remove(&self.top);
        TREES.lock().unwrap().retain(|t| *t != self.top);
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    let Some((&first, _)) = needle.split_first() else {
        return true;
    };
    haystack
        .iter()
        .enumerate()
        .filter(|&(_, &b)| b == first)
        .any(|(i, _)| haystack[i..].starts_with(needle))
}
