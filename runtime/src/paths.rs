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
        let candidate = root.join(&resolved).join(&name);
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
    Ok(root.join(resolved))
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
}
