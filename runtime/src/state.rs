//! The state store: one directory per container under the runtime root
//! (`/run/capsa` by default) holding `state.json` and, while the container
//! is created but not started, the `exec.fifo` its init waits on.
//!
//! The status is derived from the init process each time it is read, so a
//! crashed or killed container is reported as stopped without anyone having
//! to update the file.

use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};

use crate::cgroups::Cgroup;
use crate::spec::Isolation;

pub const DEFAULT_ROOT: &str = "/run/capsa";
const STATE_FILE: &str = "state.json";
const FIFO: &str = "exec.fifo";
/// Where a container without a mount namespace of its own has its root
/// bound, inside its state directory (see the container backend's rootfs).
pub const BOUND_ROOTFS: &str = "rootfs";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("container id {0:?} is invalid: use letters, digits, '_', '+', '-' and '.'")]
    InvalidId(String),
    #[error("container {0:?} already exists")]
    Exists(String),
    #[error("container {0:?} does not exist")]
    NotFound(String),
    #[error("{path}: state store error")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: corrupt state")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        })
    }
}

/// What capsa remembers about a container between invocations.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContainerState {
    pub id: String,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    /// Host pid of the container's init (the VMM for a microVM).
    pub pid: i32,
    /// The init's start time in clock ticks since boot (/proc/PID/stat field
    /// 22), so a recycled pid is never mistaken for the container.
    pub pid_start_time: u64,
    pub created: String,
    pub isolation: Isolation,
    pub paused: bool,
    /// False until the init reported ready: a state saved earlier exists only
    /// so that `delete --force` can clean up after a create that was killed.
    #[serde(default = "ready_default")]
    pub ready: bool,
    pub cgroup: Option<Cgroup>,
    pub spec: Spec,
}

/// The state document of `capsa state`, as runc prints it; also what hooks
/// read on stdin.
#[derive(Debug, Serialize)]
pub struct OciState<'a> {
    #[serde(rename = "ociVersion")]
    pub oci_version: &'a str,
    pub id: &'a str,
    pub pid: i32,
    pub status: Status,
    pub bundle: &'a Path,
    pub rootfs: &'a Path,
    pub created: &'a str,
    pub owner: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub annotations: Option<&'a std::collections::HashMap<String, String>>,
}

fn ready_default() -> bool {
    true
}

impl ContainerState {
    pub fn status(&self, store: &Store) -> Status {
        if self.pid <= 0 || !process_alive(self.pid, self.pid_start_time) {
            return Status::Stopped;
        }
        if !self.ready {
            Status::Creating
        } else if self.paused {
            Status::Paused
        } else if store.fifo_path(&self.id).exists() {
            Status::Created
        } else {
            Status::Running
        }
    }

    pub fn oci_state(&self, status: Status) -> OciState<'_> {
        OciState {
            oci_version: self.spec.version(),
            id: &self.id,
            pid: if status == Status::Stopped {
                0
            } else {
                self.pid
            },
            status,
            bundle: &self.bundle,
            rootfs: &self.rootfs,
            created: &self.created,
            owner: "",
            annotations: self.spec.annotations().as_ref(),
        }
    }
}

/// Reads the start time of `pid` (field 22 of /proc/PID/stat), or None if it
/// is gone or a zombie.
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    // `rest` starts at field 3; field 22 is 19 further.
    fields.nth(18)?.parse().ok()
}

fn process_alive(pid: i32, start_time: u64) -> bool {
    process_start_time(pid) == Some(start_time)
}

pub struct Store {
    root: PathBuf,
}

pub fn validate_id(id: &str) -> Result<(), StateError> {
    let ok = !id.is_empty()
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(StateError::InvalidId(id.to_string()))
    }
}

impl Store {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    pub fn fifo_path(&self, id: &str) -> PathBuf {
        self.dir(id).join(FIFO)
    }

    /// Claims `id` by creating its directory; fails if it is taken.
    pub fn claim(&self, id: &str) -> Result<PathBuf, StateError> {
        validate_id(id)?;
        fs::create_dir_all(&self.root).map_err(io_error(&self.root))?;
        let dir = self.dir(id);
        match fs::create_dir(&dir) {
            Ok(()) => Ok(dir),
            Err(err) if err.kind() == ErrorKind::AlreadyExists => {
                Err(StateError::Exists(id.to_string()))
            }
            Err(source) => Err(StateError::Io { path: dir, source }),
        }
    }

    pub fn save(&self, state: &ContainerState) -> Result<(), StateError> {
        let dir = self.dir(&state.id);
        let tmp = dir.join(".state.json.tmp");
        let json = serde_json::to_vec(state).map_err(|source| StateError::Corrupt {
            path: tmp.clone(),
            source,
        })?;
        let mut file = fs::File::create(&tmp).map_err(io_error(&tmp))?;
        file.write_all(&json).map_err(io_error(&tmp))?;
        let path = dir.join(STATE_FILE);
        fs::rename(&tmp, &path).map_err(io_error(&path))
    }

    pub fn load(&self, id: &str) -> Result<ContainerState, StateError> {
        validate_id(id)?;
        let path = self.dir(id).join(STATE_FILE);
        let text = match fs::read(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == ErrorKind::NotFound => {
                return Err(StateError::NotFound(id.to_string()))
            }
            Err(source) => return Err(StateError::Io { path, source }),
        };
        serde_json::from_slice(&text).map_err(|source| StateError::Corrupt { path, source })
    }

    /// Ids of every container with a state directory, sorted.
    pub fn list(&self) -> Result<Vec<String>, StateError> {
        let entries = match fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(err) if err.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(StateError::Io {
                    path: self.root.clone(),
                    source,
                })
            }
        };
        let mut ids: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join(STATE_FILE).exists())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        ids.sort();
        Ok(ids)
    }

    pub fn remove(&self, id: &str) -> Result<(), StateError> {
        let dir = self.dir(id);
        let root = dir.join(BOUND_ROOTFS);
        // Detached with every mount below it; EINVAL: not a mount point.
        match nix::mount::umount2(&root, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL | nix::Error::ENOENT) => {}
            Err(err) => return Err(io_error(&root)(err.into())),
        }
        // remove_dir rather than remove_dir_all: were the rootfs still bound
        // there, this fails instead of deleting the container's files.
        match fs::remove_dir(&root) {
            Ok(()) => {}
            Err(err) if err.kind() == ErrorKind::NotFound => {}
            Err(source) => return Err(StateError::Io { path: root, source }),
        }
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StateError::Io { path: dir, source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_runc_rules() {
        for id in ["a", "web-1", "x_y.z+1"] {
            validate_id(id).expect(id);
        }
        for id in ["", ".", "..", "a/b", "a b", "é"] {
            assert!(validate_id(id).is_err(), "{id}");
        }
    }

    #[test]
    fn claim_is_exclusive_and_remove_is_idempotent() {
        let root = tempfile::tempdir().expect("tempdir");
        let store = Store::new(root.path());
        store.claim("c1").expect("first claim");
        assert_eq!(
            store.claim("c1").expect_err("second").to_string(),
            "container \"c1\" already exists"
        );
        store.remove("c1").expect("remove");
        store.remove("c1").expect("again");
        assert!(matches!(store.load("c1"), Err(StateError::NotFound(_))));
    }

    #[test]
    fn own_process_start_time_is_readable_and_stable() {
        let pid = std::process::id() as i32;
        let first = process_start_time(pid).expect("alive");
        assert_eq!(process_start_time(pid), Some(first));
        assert!(process_alive(pid, first));
        assert!(!process_alive(pid, first + 1));
    }
}
