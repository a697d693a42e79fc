//! Cgroups for containers: OCI `linux.cgroupsPath` and `linux.resources`.
//!
//! Both layouts are supported and picked from the root (`/sys/fs/cgroup`, or
//! any root given to [`Cgroup::create_at`], which is how the unit tests use
//! fixture trees):
//! - v1 / hybrid: the root is a tmpfs holding one mount per controller
//!   (`cpu`, `memory`, `pids`, ...); the container gets a directory in each of
//!   them ([`v1`]). A v2 mount at `unified/` (hybrid) is left alone.
//! - unified v2: the root is cgroup2; the container gets one directory and the
//!   controllers its resources need are enabled on the way down ([`v2`]).
//!
//! Only directories this [`Cgroup`] created are ever removed, and a failure
//! during [`Cgroup::create`] removes whatever it had created.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use oci_spec::runtime::LinuxResources;
use serde::{Deserialize, Serialize};

pub mod v1;
pub mod v2;

/// Where the hierarchies are mounted on a normal host.
pub const DEFAULT_ROOT: &str = "/sys/fs/cgroup";

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Errors of creating, configuring and removing a container's cgroup.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// `linux.cgroupsPath` cannot be used.
    #[error("linux.cgroupsPath {path:?} is invalid: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    /// The root holds no usable hierarchy.
    #[error("no cgroup hierarchy found under {0}")]
    NoHierarchy(PathBuf),
    /// The host cannot apply a resource the spec sets.
    #[error("{field}: not supported by this host ({detail})")]
    Unsupported { field: String, detail: String },
    /// A resource value is out of range or inconsistent.
    #[error("{field}: {reason}")]
    InvalidValue { field: String, reason: String },
    /// statfs of the root failed.
    #[error("cannot determine the cgroup layout of {0}")]
    Statfs(PathBuf, #[source] io::Error),
    #[error("cannot create cgroup directory {0}")]
    Mkdir(PathBuf, #[source] io::Error),
    #[error("cannot remove cgroup directory {0}")]
    Rmdir(PathBuf, #[source] io::Error),
    #[error("cannot read {0}")]
    Read(PathBuf, #[source] io::Error),
    /// Writing a control file failed; `what` names the spec field or action.
    #[error("{what}: cannot write {value:?} to {path}")]
    Write {
        what: String,
        value: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The freezer did not settle.
    #[error("{0} did not report the cgroup frozen within {FREEZE_TIMEOUT:?}")]
    FreezeTimeout(PathBuf),
}

const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);

/// Which layout a [`Cgroup`] lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Version {
    V1,
    V2,
}

/// The container's directory in one hierarchy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hierarchy {
    /// v1 controllers mounted on this hierarchy (`["cpu"]`, `["cpu",
    /// "cpuacct"]`); empty for v2.
    pub controllers: Vec<String>,
    /// The hierarchy's mount point.
    pub root: PathBuf,
    /// The container's cgroup directory.
    pub path: PathBuf,
    /// Directories this Cgroup created, parents first.
    pub created: Vec<PathBuf>,
}

impl Hierarchy {
    fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }
}

/// A container's cgroup; serialisable so later capsa invocations can reload
/// it from the container state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cgroup {
    version: Version,
    /// The cgroup path below each hierarchy root.
    relative: PathBuf,
    hierarchies: Vec<Hierarchy>,
}

impl Cgroup {
    /// Creates (or joins) the cgroup under [`DEFAULT_ROOT`] and applies
    /// `resources`.
    ///
    /// `cgroups_path` is OCI `linux.cgroupsPath`: absolute or relative, both
    /// taken below each hierarchy root like runc does; `None` means
    /// `/capsa/<id>`; runc's systemd form `slice:prefix:name` becomes the
    /// plain path `slice/prefix-name.scope` (systemd is not called).
    pub fn create(
        cgroups_path: Option<&str>,
        id: &str,
        resources: Option<&LinuxResources>,
    ) -> Result<Cgroup, CgroupError> {
        Self::create_at(Path::new(DEFAULT_ROOT), cgroups_path, id, resources)
    }

    /// [`Cgroup::create`] with the hierarchies under `root`.
    pub fn create_at(
        root: &Path,
        cgroups_path: Option<&str>,
        id: &str,
        resources: Option<&LinuxResources>,
    ) -> Result<Cgroup, CgroupError> {
        let relative = relative_path(cgroups_path, id)?;
        let (version, hierarchies) = match detect(root)? {
            Version::V1 => (Version::V1, v1::create(root, &relative)?),
            Version::V2 => (Version::V2, vec![v2::create(root, &relative)?]),
        };
        let cg = Cgroup {
            version,
            relative,
            hierarchies,
        };
        let res = match resources {
            Some(r) => cg.update(r),
            None => Ok(()),
        };
        if let Err(e) = res {
            // Leave nothing behind; the first error is the one to report.
            let _ = cg.delete();
            return Err(e);
        }
        Ok(cg)
    }

    /// The layout this cgroup lives in.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The cgroup path below each hierarchy root.
    pub fn relative_path(&self) -> &Path {
        &self.relative
    }

    /// Moves process `pid` into the cgroup (in every v1 hierarchy).
    pub fn add_process(&self, pid: i32) -> Result<(), CgroupError> {
        let what = format!("adding process {pid} to the cgroup");
        for h in &self.hierarchies {
            write_file(&h.path.join("cgroup.procs"), &pid.to_string(), &what)?;
        }
        Ok(())
    }

    /// Applies the fields of `resources` that are set; others are untouched.
    pub fn update(&self, resources: &LinuxResources) -> Result<(), CgroupError> {
        match self.version {
            Version::V1 => v1::apply(&self.hierarchies, resources),
            Version::V2 => v2::apply(self.v2_hierarchy()?, resources),
        }
    }

    /// Freezes every process of the cgroup, waiting until the kernel reports
    /// the cgroup frozen.
    pub fn freeze(&self) -> Result<(), CgroupError> {
        match self.version {
            Version::V1 => v1::freeze(self.v1_freezer()?),
            Version::V2 => v2::freeze(self.v2_hierarchy()?),
        }
    }

    /// Resumes the processes frozen by [`Cgroup::freeze`].
    pub fn thaw(&self) -> Result<(), CgroupError> {
        match self.version {
            Version::V1 => v1::thaw(self.v1_freezer()?),
            Version::V2 => v2::thaw(self.v2_hierarchy()?),
        }
    }

    /// Every process in the cgroup and its descendants.
    pub fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        // In v1 any hierarchy holds all processes; prefer ones that exist on
        // every host and that the container cannot leave by itself.
        let h = ["pids", "freezer", "memory", "cpu"]
            .iter()
            .find_map(|c| self.hierarchies.iter().find(|h| h.has(c)))
            .or(self.hierarchies.first());
        let mut pids = Vec::new();
        if let Some(h) = h {
            collect_pids(&h.path, &mut pids)?;
        }
        pids.sort_unstable();
        pids.dedup();
        Ok(pids)
    }

    /// Removes the directories this Cgroup created, deepest first, together
    /// with any sub-cgroups the container made inside its own cgroup.
    /// Waits briefly while exiting processes still pin the cgroup. Parents
    /// that meanwhile hold other cgroups (another container's) are kept.
    pub fn delete(&self) -> Result<(), CgroupError> {
        let mut first_err = None;
        for h in &self.hierarchies {
            if let Err(e) = delete_hierarchy(h) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Whether the kernel OOM killer has killed a process of this cgroup.
    pub fn oom_killed(&self) -> bool {
        let (file, h) = match self.version {
            Version::V1 => (
                "memory.oom_control",
                self.hierarchies.iter().find(|h| h.has("memory")),
            ),
            Version::V2 => ("memory.events", self.hierarchies.first()),
        };
        let Some(h) = h else { return false };
        let Ok(text) = fs::read_to_string(h.path.join(file)) else {
            return false;
        };
        text.lines().any(|l| {
            l.strip_prefix("oom_kill ")
                .and_then(|n| n.trim().parse::<u64>().ok())
                .is_some_and(|n| n > 0)
        })
    }

    /// The container's directory in every hierarchy.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.hierarchies.iter().map(|h| h.path.clone()).collect()
    }

    /// Per-hierarchy details (controllers, created directories).
    pub fn hierarchies(&self) -> &[Hierarchy] {
        &self.hierarchies
    }

    fn v2_hierarchy(&self) -> Result<&Hierarchy, CgroupError> {
        // create_at makes exactly one; a hand-edited state file may not.
        self.hierarchies
            .first()
            .ok_or_else(|| CgroupError::NoHierarchy(self.relative.clone()))
    }

    fn v1_freezer(&self) -> Result<&Hierarchy, CgroupError> {
        self.hierarchies
            .iter()
            .find(|h| h.has("freezer"))
            .ok_or_else(|| CgroupError::Unsupported {
                field: "pause".into(),
                detail: "the freezer controller is not mounted".into(),
            })
    }
}

/// Computes the cgroup path below the hierarchy roots.
pub fn relative_path(cgroups_path: Option<&str>, id: &str) -> Result<PathBuf, CgroupError> {
    let raw = match cgroups_path {
        None | Some("") => {
            if id.is_empty() || id.contains('/') || id == "." || id == ".." {
                return Err(CgroupError::InvalidPath {
                    path: format!("/capsa/{id}"),
                    reason: "the container id cannot be a path component",
                });
            }
            format!("capsa/{id}")
        }
        Some(p) if !p.starts_with('/') && p.matches(':').count() == 2 => {
            // runc's systemd driver syntax, mapped without talking to systemd.
            let parts: Vec<&str> = p.split(':').collect();
            let &[slice, prefix, name] = parts.as_slice() else {
                return Err(CgroupError::InvalidPath {
                    path: p.into(),
                    reason: "the systemd form is slice:prefix:name",
                });
            };
            if name.is_empty() {
                return Err(CgroupError::InvalidPath {
                    path: p.into(),
                    reason: "the name after the last ':' is empty",
                });
            }
            let slice = if slice.is_empty() {
                "system.slice"
            } else {
                slice
            };
            let unit = if prefix.is_empty() {
                format!("{name}.scope")
            } else {
                format!("{prefix}-{name}.scope")
            };
            format!("{slice}/{unit}")
        }
        Some(p) => p.to_string(),
    };
    let mut rel = PathBuf::new();
    for c in Path::new(&raw).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => rel.push(n),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(CgroupError::InvalidPath {
                    path: cgroups_path.unwrap_or(&raw).into(),
                    reason: "'..' would leave the cgroup hierarchy",
                })
            }
        }
    }
    if rel.as_os_str().is_empty() {
        return Err(CgroupError::InvalidPath {
            path: raw,
            reason: "it names the hierarchy root itself",
        });
    }
    Ok(rel)
}

/// v2 when the root is a cgroup2 mount (or, for fixture trees on other file
/// systems, when it has a `cgroup.controllers` file); v1 otherwise.
pub fn detect(root: &Path) -> Result<Version, CgroupError> {
    let st = nix::sys::statfs::statfs(root)
        .map_err(|e| CgroupError::Statfs(root.into(), io::Error::from(e)))?;
    // f_type's integer type differs between libc targets.
    #[allow(clippy::unnecessary_cast)]
    let magic = st.filesystem_type().0 as i64;
    if magic == CGROUP2_SUPER_MAGIC || root.join("cgroup.controllers").is_file() {
        Ok(Version::V2)
    } else {
        Ok(Version::V1)
    }
}

/// Creates `root/relative` component by component, recording the
/// directories it had to make (parents first) into `created`. On error the
/// caller removes `created`.
fn mkdir_path(
    root: &Path,
    relative: &Path,
    created: &mut Vec<PathBuf>,
    mut on_created: impl FnMut(&Path) -> Result<(), CgroupError>,
) -> Result<PathBuf, CgroupError> {
    let mut dir = root.to_path_buf();
    for c in relative.components() {
        dir.push(c);
        match fs::create_dir(&dir) {
            Ok(()) => {
                created.push(dir.clone());
                on_created(&dir)?;
            }
            // Someone else's (or a concurrent capsa's): not ours to remove.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(CgroupError::Mkdir(dir, e)),
        }
    }
    Ok(dir)
}

fn delete_hierarchy(h: &Hierarchy) -> Result<(), CgroupError> {
    for (i, dir) in h.created.iter().enumerate().rev() {
        let is_leaf = i + 1 == h.created.len() && *dir == h.path;
        if is_leaf {
            remove_children(dir)?;
            rmdir_retry(dir)?;
        } else {
            // A parent we made may since hold other containers' cgroups.
            match has_subdirs(dir) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(CgroupError::Read(dir.clone(), e)),
            }
            match fs::remove_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                // Raced with another capsa creating a sibling: keep it.
                Err(e) if is_busy(&e) => return Ok(()),
                Err(e) => return Err(CgroupError::Rmdir(dir.clone(), e)),
            }
        }
    }
    Ok(())
}

/// Removes sub-cgroups the container created inside its own cgroup.
fn remove_children(dir: &Path) -> Result<(), CgroupError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(CgroupError::Read(dir.into(), e)),
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            let child = entry.path();
            remove_children(&child)?;
            rmdir_retry(&child)?;
        }
    }
    Ok(())
}

fn has_subdirs(dir: &Path) -> io::Result<bool> {
    for entry in fs::read_dir(dir)? {
        if entry?.file_type()?.is_dir() {
            return Ok(true);
        }
    }
    Ok(false)
}

fn is_busy(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EBUSY) | Some(libc::ENOTEMPTY))
}

/// rmdir, retrying for up to a second while exiting processes still pin the
/// cgroup (EBUSY).
fn rmdir_retry(dir: &Path) -> Result<(), CgroupError> {
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut delay = Duration::from_millis(5);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if is_busy(&e) && Instant::now() < deadline => {
                sleep(delay);
                delay = (delay * 2).min(Duration::from_millis(100));
            }
            Err(e) => return Err(CgroupError::Rmdir(dir.into(), e)),
        }
    }
}

fn collect_pids(dir: &Path, out: &mut Vec<i32>) -> Result<(), CgroupError> {
    let procs = dir.join("cgroup.procs");
    let text = fs::read_to_string(&procs).map_err(|e| CgroupError::Read(procs, e))?;
    out.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    let entries = fs::read_dir(dir).map_err(|e| CgroupError::Read(dir.into(), e))?;
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            collect_pids(&entry.path(), out)?;
        }
    }
    Ok(())
}

/// Writes `value` to a control file; `what` names the spec field (or the
/// action) for the error.
pub(crate) fn write_file(path: &Path, value: &str, what: &str) -> Result<(), CgroupError> {
    // Control files must be written in one write(2); fs::write does that
    // for these short values and never creates files on cgroupfs.
    fs::write(path, value).map_err(|source| CgroupError::Write {
        what: what.to_string(),
        value: value.to_string(),
        path: path.into(),
        source,
    })
}

pub(crate) fn read_file(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|e| CgroupError::Read(path.into(), e))
}

/// Writes `value` to `dir/file` after checking the file exists, so a host
/// lacking the knob yields an error naming the spec field.
pub(crate) fn set(dir: &Path, file: &str, value: &str, field: &str) -> Result<(), CgroupError> {
    let path = dir.join(file);
    if !path.exists() {
        return Err(CgroupError::Unsupported {
            field: field.into(),
            detail: format!("no {file}"),
        });
    }
    write_file(&path, value, field)
}

/// Polls `check` until it holds or [`FREEZE_TIMEOUT`] passes.
pub(crate) fn wait_until(
    mut check: impl FnMut() -> Result<bool, CgroupError>,
) -> Result<bool, CgroupError> {
    let deadline = Instant::now() + FREEZE_TIMEOUT;
    let mut delay = Duration::from_millis(1);
    loop {
        if check()? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(50));
    }
}

/// One `rdma.max` line: `mlx4_0 hca_handle=2 hca_object=2000`.
pub(crate) fn rdma_line(dev: &str, l: &oci_spec::runtime::LinuxRdma) -> String {
    let v = |n: Option<u32>| n.map_or("max".to_string(), |n| n.to_string());
    format!(
        "{dev} hca_handle={} hca_object={}",
        v(l.hca_handles()),
        v(l.hca_objects())
    )
}

/// runc's conversion of cgroup v1 `cpu.shares` (2..262144) to cgroup v2
/// `cpu.weight` (1..10000).
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142
}

/// runc's conversion of `blkio.weight` (10..1000) to `io.weight` (1..10000).
pub fn blkio_weight_to_io_weight(weight: u64) -> u64 {
    if weight == 0 {
        return 0;
    }
    1 + (weight.clamp(10, 1000) - 10) * 9999 / 990
}
