//! Paths inside a bundle's rootfs, resolved and created the same way by both
//! backends: `secure_join`, mount targets, `args[0]` looked up like execvp,
//! and the errors that name the spec field a path came from.

use std::fs;
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::Process;

/// A path from the spec that cannot be resolved, created, mounted or found;
/// each names the field it came from.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("{field}: cannot mount {target}")]
    Mount {
        field: String,
        target: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("{field}: {path}: {message}")]
    Path {
        field: String,
        path: PathBuf,
        message: String,
    },
    #[error("{field}: cannot create {path}")]
    Create {
        field: String,
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("process.args: {0:?}: executable file not found in $PATH")]
    NotFound(String),
}

type Result<T> = std::result::Result<T, PathError>;

/// An I/O error as the nix error of its errno, for errors that carry one.
pub fn nix_io(err: std::io::Error) -> nix::Error {
    nix::Error::from_raw(err.raw_os_error().unwrap_or(libc::EIO))
}

/// Resolves `unsafe_path` inside `root` as if `root` were `/`: `..` stops at
/// the root and symlinks (absolute or relative) are followed within it, so a
/// malicious rootfs cannot point a mount outside itself. Written by hand
/// because no maintained crate does this lexically-with-symlinks walk.
pub fn secure_join(root: &Path, unsafe_path: &Path) -> std::io::Result<PathBuf> {
    secure_join_mounted(root, &[], unsafe_path)
}

/// A directory mounted over part of a rootfs, for [`secure_join_mounted`]:
/// where the process sees it, and the host directory holding its files
/// (`None` for one that starts empty, a tmpfs).
pub struct Overlay {
    pub destination: PathBuf,
    pub source: Option<PathBuf>,
}

/// [`secure_join`] through mounts that are not in place on the host: each
/// step of the walk, and each symlink met, is looked up where the process
/// will find it, in the topmost of `mounts` (later ones are on top) holding
/// it, else in `root`. So `/bin/sh` with `/bin -> usr/bin` in the rootfs and
/// `/usr` bound from the host resolves to the host's `/usr/bin/sh`, and a
/// symlink inside a mount that points back into the rootfs (or into another
/// mount) is followed there. Returns the host path, or `None` inside a mount
/// that starts empty.
pub fn secure_join_mounted(
    root: &Path,
    mounts: &[Overlay],
    unsafe_path: &Path,
) -> std::io::Result<PathBuf> {
    let host = |guest: &Path| -> Option<PathBuf> {
        for m in mounts.iter().rev() {
            let destination: PathBuf = m
                .destination
                .components()
                .filter(|c| matches!(c, Component::Normal(_)))
                .collect();
            if let Ok(rest) = guest.strip_prefix(&destination) {
                return m.source.as_ref().map(|source| source.join(rest));
            }
        }
        Some(root.join(guest))
    };
    let missing = || std::io::Error::from_raw_os_error(libc::ENOENT);
    // `resolved` is the path as the process sees it, relative to its root.
    let mut resolved = PathBuf::new();
    let mut pending: Vec<std::ffi::OsString> = unsafe_path
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut links = 0;
    while let Some(name) = pending.pop() {
        if name == ".." {
            resolved.pop();
            continue;
        }
        let candidate = host(&resolved.join(&name)).ok_or_else(missing)?;
        match fs::symlink_metadata(&candidate) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > 255 {
                    return Err(std::io::Error::from_raw_os_error(libc::ELOOP));
                }
                let target = fs::read_link(&candidate)?;
                if target.is_absolute() {
                    resolved.clear();
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(n) => pending.push(n.to_os_string()),
                        Component::ParentDir => pending.push("..".into()),
                        _ => {}
                    }
                }
            }
            _ => resolved.push(&name),
        }
    }
    host(&resolved).ok_or_else(missing)
}

/// Makes `path` (a mount target) a directory, with its parents.
pub fn ensure_dir(field: &str, path: &Path) -> Result<()> {
    fs::create_dir_all(path).map_err(|err| PathError::Create {
        field: field.to_string(),
        path: path.to_path_buf(),
        source: nix_io(err),
    })
}

/// Makes `path` (a mount target) a file if it is not there, with its
/// parents.
pub fn ensure_file(field: &str, path: &Path) -> Result<()> {
    if let Some(parent) = path.parent() {
        ensure_dir(field, parent)?;
    }
    if path.exists() {
        return Ok(());
    }
    fs::File::create(path)
        .map(drop)
        .map_err(|err| PathError::Create {
            field: field.to_string(),
            path: path.to_path_buf(),
            source: nix_io(err),
        })
}

fn env_path(process: &Process) -> String {
    process
        .env()
        .iter()
        .flatten()
        .find_map(|v| v.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .to_string()
}

/// Finds `args[0]` like execvp inside `root`, resolving symlinks within it.
/// Returns the path as the process sees it.
pub fn resolve_executable_in(root: &Path, process: &Process) -> Result<PathBuf> {
    resolve_executable_with(process, |path| {
        secure_join(root, path).and_then(std::fs::metadata).ok()
    })
}

/// Finds `args[0]` like execvp, asking `metadata` what a path (as the
/// process sees it) is — so a caller can look through mounts that are not
/// in place yet.
pub fn resolve_executable_with(
    process: &Process,
    metadata: impl Fn(&Path) -> Option<std::fs::Metadata>,
) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let arg0 = process
        .args()
        .as_ref()
        .and_then(|a| a.first())
        .cloned()
        .unwrap_or_default();
    if arg0.contains('/') {
        let path = if Path::new(&arg0).is_absolute() {
            PathBuf::from(&arg0)
        } else {
            process.cwd().join(&arg0)
        };
        return if metadata(&path).is_some() {
            Ok(path)
        } else {
            Err(PathError::NotFound(arg0))
        };
    }
    for dir in env_path(process).split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(&arg0);
        if let Some(meta) = metadata(&candidate) {
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return Ok(candidate);
            }
        }
    }
    Err(PathError::NotFound(arg0))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn secure_join_stays_inside_the_root() {
        let root = tempfile::tempdir().expect("tempdir");
        let r = root.path();
        fs::create_dir_all(r.join("a/b")).expect("dirs");
        symlink("/etc", r.join("abs")).expect("abs link");
        symlink("../../../../etc", r.join("a/b/rel")).expect("rel link");
        symlink("b", r.join("a/inner")).expect("inner link");
        assert_eq!(
            secure_join(r, Path::new("/../../etc")).expect("j"),
            r.join("etc")
        );
        assert_eq!(
            secure_join(r, Path::new("/abs/passwd")).expect("j"),
            r.join("etc/passwd")
        );
        assert_eq!(
            secure_join(r, Path::new("/a/b/rel")).expect("j"),
            r.join("etc")
        );
        assert_eq!(
            secure_join(r, Path::new("/a/inner/x")).expect("j"),
            r.join("a/b/x")
        );

        symlink("loop", r.join("loop")).expect("loop");
        assert!(secure_join(r, Path::new("/loop")).is_err());
    }

    #[test]
    fn secure_join_mounted_follows_links_through_mounts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (root, usr, etc) = (
            dir.path().join("root"),
            dir.path().join("usr"),
            dir.path().join("etc"),
        );
        fs::create_dir_all(root.join("usr")).expect("dirs");
        fs::create_dir_all(usr.join("bin")).expect("dirs");
        fs::create_dir_all(usr.join("lib/jvm/bin")).expect("dirs");
        fs::create_dir_all(etc.join("alternatives")).expect("dirs");
        symlink("usr/bin", root.join("bin")).expect("bin link");
        fs::write(usr.join("bin/sh"), "").expect("sh");
        // /usr/bin/java -> /etc/alternatives/java -> /usr/lib/jvm/bin/java,
        // with /usr and /etc each a mount of its own.
        symlink("/etc/alternatives/java", usr.join("bin/java")).expect("java link");
        symlink("../../usr/lib/jvm/bin/java", etc.join("alternatives/java")).expect("alt link");
        fs::write(usr.join("lib/jvm/bin/java"), "").expect("java");
        let mounts = [
            Overlay {
                destination: "/usr".into(),
                source: Some(usr.clone()),
            },
            Overlay {
                destination: "/etc/".into(),
                source: Some(etc.clone()),
            },
            Overlay {
                destination: "/tmp".into(),
                source: None,
            },
        ];
        let join = |p: &str| secure_join_mounted(&root, &mounts, Path::new(p));
        assert_eq!(join("/bin/sh").expect("sh"), usr.join("bin/sh"));
        assert_eq!(
            join("/usr/bin/java").expect("java"),
            usr.join("lib/jvm/bin/java")
        );
        assert_eq!(join("/usr/../../bin/sh").expect("sh"), usr.join("bin/sh"));
        assert!(join("/tmp/x").is_err(), "a tmpfs starts empty");
        // Without the mounts the rootfs's own (empty) /usr is what is found.
        assert_eq!(
            secure_join(&root, Path::new("/bin/sh")).expect("j"),
            root.join("usr/bin/sh")
        );
    }
}
