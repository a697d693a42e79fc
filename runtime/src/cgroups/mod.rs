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
    on_created: impl FnMut(&Path) -> Result<(), CgroupError>,
) -> Result<PathBuf, CgroupError> {
    mkdir_path_with(root, relative, created, on_created, |dir| {
        fs::create_dir(dir)
    })
}

/// How often [`mkdir_path`] starts over after a parent vanished.
const MKDIR_ATTEMPTS: usize = 10;

/// [`mkdir_path`] with `mkdir` doing each directory, so tests can interleave
/// another capsa's deletion.
fn mkdir_path_with(
    root: &Path,
    relative: &Path,
    created: &mut Vec<PathBuf>,
    mut on_created: impl FnMut(&Path) -> Result<(), CgroupError>,
    mut mkdir: impl FnMut(&Path) -> io::Result<()>,
) -> Result<PathBuf, CgroupError> {
    let mut attempt = 1;
    'again: loop {
        let mut dir = root.to_path_buf();
        for c in relative.components() {
            dir.push(c);
            match mkdir(&dir) {
                Ok(()) => {
                    created.push(dir.clone());
                    on_created(&dir)?;
                }
                // Someone else's (or a concurrent capsa's): not ours to remove.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                // A parent found existing was removed since by the capsa that
                // made it (its own container gone, the parent empty): make
                // it again, as ours now.
                Err(e) if e.kind() == io::ErrorKind::NotFound && attempt < MKDIR_ATTEMPTS => {
                    attempt += 1;
                    continue 'again;
                }
                Err(e) => return Err(CgroupError::Mkdir(dir, e)),
            }
        }
        return Ok(dir);
    }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::os::unix::fs::symlink;

    fn res(json: &str) -> LinuxResources {
        serde_json::from_str(json).unwrap()
    }

    fn touch(dir: &Path, files: &[(&str, &str)]) {
        for (f, v) in files {
            fs::write(dir.join(f), v).unwrap();
        }
    }

    fn read(p: impl AsRef<Path>) -> String {
        fs::read_to_string(p).unwrap()
    }

    #[test]
    fn path_computation() {
        let p = |c: Option<&str>| relative_path(c, "ctr1").map(|p| p.display().to_string());
        assert_eq!(p(None).unwrap(), "capsa/ctr1");
        assert_eq!(p(Some("")).unwrap(), "capsa/ctr1");
        assert_eq!(p(Some("/a/b/c")).unwrap(), "a/b/c");
        assert_eq!(p(Some("a/b")).unwrap(), "a/b");
        assert_eq!(p(Some("/a//./b/")).unwrap(), "a/b");
        assert_eq!(
            p(Some("machine.slice:capsa:abc")).unwrap(),
            "machine.slice/capsa-abc.scope"
        );
        assert_eq!(
            p(Some(":capsa:abc")).unwrap(),
            "system.slice/capsa-abc.scope"
        );
        assert_eq!(p(Some("user.slice::abc")).unwrap(), "user.slice/abc.scope");
        // An absolute path with colons is a plain path.
        assert_eq!(p(Some("/a:b:c")).unwrap(), "a:b:c");
        assert!(p(Some("/a/../../etc")).is_err());
        assert!(p(Some("/")).is_err());
        assert!(p(Some("s:p:")).is_err());
        assert!(relative_path(None, "../x").is_err());
        assert_eq!(
            relative_path(Some("/../x"), "c").unwrap_err().to_string(),
            "linux.cgroupsPath \"/../x\" is invalid: '..' would leave the cgroup hierarchy"
        );
    }

    #[test]
    fn conversions_match_runc() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(blkio_weight_to_io_weight(10), 1);
        assert_eq!(blkio_weight_to_io_weight(500), 4950);
        assert_eq!(blkio_weight_to_io_weight(1000), 10_000);
    }

    fn v2_fixture(controllers: &str) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        touch(
            t.path(),
            &[
                ("cgroup.controllers", controllers),
                ("cgroup.subtree_control", "cpu"),
                ("cgroup.procs", ""),
            ],
        );
        t
    }

    #[test]
    fn v2_create_update_delete() {
        let t = v2_fixture("cpuset cpu io memory pids");
        let root = t.path();
        assert_eq!(detect(root).unwrap(), Version::V2);
        // An existing parent that is not ours.
        fs::create_dir(root.join("a")).unwrap();
        touch(&root.join("a"), &[("cgroup.subtree_control", "")]);

        let cg = Cgroup::create_at(root, Some("/a/b/c"), "id", None).unwrap();
        assert_eq!(cg.version(), Version::V2);
        assert_eq!(cg.paths(), vec![root.join("a/b/c")]);
        assert_eq!(
            cg.hierarchies()[0].created,
            vec![root.join("a/b"), root.join("a/b/c")]
        );
        // Survives the state file round trip.
        let cg: Cgroup = serde_json::from_str(&serde_json::to_string(&cg).unwrap()).unwrap();

        let leaf = root.join("a/b/c");
        touch(&root.join("a/b"), &[("cgroup.subtree_control", "")]);
        touch(
            &leaf,
            &[
                ("memory.max", "max"),
                ("memory.swap.max", "max"),
                ("memory.low", "0"),
                ("cpu.weight", "100"),
                ("cpu.max", "max 100000"),
                ("cpuset.cpus", ""),
                ("pids.max", "max"),
                ("io.weight", "default 100"),
                ("io.max", ""),
                ("cgroup.procs", ""),
                ("cgroup.freeze", "0"),
                ("cgroup.events", "populated 1\nfrozen 1\n"),
                ("memory.events", "low 0\noom 1\noom_kill 2\n"),
            ],
        );
        cg.update(&res(r#"{
            "memory": {"limit": 104857600, "swap": 157286400, "reservation": 1048576, "kernel": 5},
            "cpu": {"shares": 1024, "quota": 50000, "cpus": "0"},
            "pids": {"limit": -1},
            "blockIO": {"weight": 500, "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1000}]}
        }"#))
        .unwrap();
        assert_eq!(read(leaf.join("memory.max")), "104857600");
        assert_eq!(read(leaf.join("memory.swap.max")), "52428800");
        assert_eq!(read(leaf.join("memory.low")), "1048576");
        assert_eq!(read(leaf.join("cpu.weight")), "39");
        assert_eq!(read(leaf.join("cpu.max")), "50000 100000");
        assert_eq!(read(leaf.join("cpuset.cpus")), "0");
        assert_eq!(read(leaf.join("pids.max")), "max");
        assert_eq!(read(leaf.join("io.weight")), "4950");
        assert_eq!(read(leaf.join("io.max")), "8:0 rbps=1000");
        // cpu was enabled at the root already: only the others were added
        // there (each write replaces the fixture file's content, so the last
        // one shows). The leaf's own subtree_control is never touched.
        assert_eq!(read(root.join("cgroup.subtree_control")), "+io");
        assert_eq!(read(root.join("a/cgroup.subtree_control")), "+io");
        assert_eq!(read(root.join("a/b/cgroup.subtree_control")), "+io");
        assert!(!leaf.join("cgroup.subtree_control").exists());

        // Only the period changes: the quota is kept.
        cg.update(&res(r#"{"cpu": {"period": 200000}}"#)).unwrap();
        assert_eq!(read(leaf.join("cpu.max")), "50000 200000");
        cg.update(&res(r#"{"cpu": {"quota": -1}}"#)).unwrap();
        assert_eq!(read(leaf.join("cpu.max")), "max 200000");

        cg.add_process(4242).unwrap();
        assert_eq!(read(leaf.join("cgroup.procs")), "4242");
        fs::create_dir(leaf.join("sub")).unwrap();
        touch(&leaf.join("sub"), &[("cgroup.procs", "7\n8\n")]);
        assert_eq!(cg.pids().unwrap(), vec![7, 8, 4242]);
        fs::remove_file(leaf.join("sub/cgroup.procs")).unwrap();

        cg.freeze().unwrap();
        assert_eq!(read(leaf.join("cgroup.freeze")), "1");
        cg.thaw().unwrap();
        assert_eq!(read(leaf.join("cgroup.freeze")), "0");
        assert!(cg.oom_killed());

        // Plain files cannot be in a real cgroup dir; drop them so rmdir
        // works on the fixture.
        for e in fs::read_dir(&leaf).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                fs::remove_file(e.path()).unwrap();
            }
        }
        fs::remove_file(root.join("a/b/cgroup.subtree_control")).unwrap();
        cg.delete().unwrap();
        assert!(!root.join("a/b").exists());
        assert!(root.join("a").exists(), "a/ was not created by capsa");
    }

    #[test]
    fn v2_errors_name_the_field_and_leave_nothing() {
        let t = v2_fixture("cpu memory");
        let root = t.path();
        let err = Cgroup::create_at(
            root,
            Some("/x/y"),
            "id",
            Some(&res(r#"{"pids": {"limit": 5}}"#)),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "linux.resources.pids.limit: not supported by this host (the pids controller is not in {}/cgroup.controllers)",
                root.display()
            )
        );
        assert!(!root.join("x").exists());

        // The controller exists but the knob does not (fixture dirs are empty).
        let err = Cgroup::create_at(
            root,
            Some("/x"),
            "id",
            Some(&res(r#"{"memory": {"limit": 5}}"#)),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "linux.resources.memory.limit: not supported by this host (no memory.max)"
        );
        assert!(!root.join("x").exists());

        let err = Cgroup::create_at(
            root,
            None,
            "id",
            Some(&res(r#"{"memory": {"limit": 100, "swap": 50}}"#)),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "linux.resources.memory.swap: 50 is below memory.limit 100 (swap is the memory+swap limit)"
        );
        // Rejected before anything is written (the fixture lacks the
        // subtree_control files a real capsa/ would have).
        assert!(!root.join("capsa").exists());
    }

    /// Docker's "not set": every block I/O weight 0.
    const ZERO_WEIGHTS: &str = r#"{"blockIO": {"weight": 0, "leafWeight": 0,
        "weightDevice": [{"major": 8, "minor": 0, "weight": 0, "leafWeight": 0}]}}"#;

    #[test]
    fn v2_zero_block_io_weights_are_not_set() {
        // Neither the io controller nor a weight file: a weight written or
        // asked for would fail.
        let t = v2_fixture("cpu memory");
        let root = t.path();
        let cg = Cgroup::create_at(root, Some("/z"), "id", Some(&res(ZERO_WEIGHTS))).unwrap();
        assert_eq!(fs::read_dir(root.join("z")).unwrap().count(), 0);
        assert_eq!(read(root.join("cgroup.subtree_control")), "cpu");
        cg.delete().unwrap();
        assert!(!root.join("z").exists());
    }

    #[test]
    fn v1_zero_block_io_weights_are_not_set() {
        let t = v1_fixture();
        let root = t.path();
        let cg = Cgroup::create_at(root, None, "c1", Some(&res(ZERO_WEIGHTS))).unwrap();
        let blkio = root.join("blkio/capsa/c1");
        assert_eq!(fs::read_dir(&blkio).unwrap().count(), 0, "nothing written");
        cg.delete().unwrap();
        assert!(!blkio.exists());
    }

    fn v1_fixture() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        for d in [
            "cpu,cpuacct",
            "cpuset",
            "memory",
            "pids",
            "blkio",
            "freezer",
            "devices",
            "systemd",
            "unified",
        ] {
            fs::create_dir(root.join(d)).unwrap();
        }
        symlink("cpu,cpuacct", root.join("cpu")).unwrap();
        symlink("cpu,cpuacct", root.join("cpuacct")).unwrap();
        touch(
            &root.join("cpuset"),
            &[("cpuset.cpus", "0-1\n"), ("cpuset.mems", "0\n")],
        );
        t
    }

    #[test]
    fn v1_fixture_create_update_delete() {
        let t = v1_fixture();
        let root = t.path();
        assert_eq!(detect(root).unwrap(), Version::V1);
        let cg = Cgroup::create_at(root, None, "c1", None).unwrap();
        let mut ctrls: Vec<String> = cg
            .hierarchies()
            .iter()
            .map(|h| h.controllers.join(","))
            .collect();
        ctrls.sort();
        assert_eq!(
            ctrls,
            [
                "blkio",
                "cpu,cpuacct",
                "cpuset",
                "devices",
                "freezer",
                "memory",
                "pids"
            ]
        );
        for h in cg.hierarchies() {
            assert_eq!(h.path, h.root.join("capsa/c1"));
            assert_eq!(
                h.created,
                vec![h.root.join("capsa"), h.root.join("capsa/c1")]
            );
        }
        assert!(!root.join("systemd/capsa").exists());
        assert!(!root.join("unified/capsa").exists());

        let leaf = |c: &str| root.join(c).join("capsa/c1");
        touch(
            &leaf("memory"),
            &[
                ("memory.limit_in_bytes", "9223372036854771712"),
                ("memory.memsw.limit_in_bytes", "9223372036854771712"),
                ("memory.soft_limit_in_bytes", ""),
                ("memory.swappiness", "60"),
                (
                    "memory.oom_control",
                    "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
                ),
            ],
        );
        touch(
            &leaf("cpu"),
            &[
                ("cpu.shares", ""),
                ("cpu.cfs_quota_us", ""),
                ("cpu.cfs_period_us", ""),
            ],
        );
        touch(&leaf("cpuset"), &[("cpuset.cpus", ""), ("cpuset.mems", "")]);
        touch(&leaf("pids"), &[("pids.max", "")]);
        touch(
            &leaf("blkio"),
            &[
                ("blkio.bfq.weight", "100"),
                ("blkio.throttle.write_iops_device", ""),
            ],
        );
        touch(
            &leaf("devices"),
            &[("devices.allow", ""), ("devices.deny", "")],
        );
        touch(
            &leaf("freezer"),
            &[("freezer.state", "THAWED"), ("cgroup.procs", "12\n")],
        );
        cg.update(&res(r#"{
            "memory": {"limit": 104857600, "swap": 209715200, "reservation": 1000, "swappiness": 10, "disableOOMKiller": true},
            "cpu": {"shares": 512, "quota": 20000, "period": 100000, "cpus": "1", "mems": "0"},
            "pids": {"limit": 0},
            "blockIO": {"weight": 300, "throttleWriteIOPSDevice": [{"major": 8, "minor": 16, "rate": 50}]},
            "devices": [{"allow": false, "access": "rwm"}, {"allow": true, "type": "c", "major": 4, "minor": 64}]
        }"#))
        .unwrap();
        let m = leaf("memory");
        assert_eq!(read(m.join("memory.limit_in_bytes")), "104857600");
        assert_eq!(read(m.join("memory.memsw.limit_in_bytes")), "209715200");
        assert_eq!(read(m.join("memory.soft_limit_in_bytes")), "1000");
        assert_eq!(read(m.join("memory.swappiness")), "10");
        assert_eq!(read(m.join("memory.oom_control")), "1");
        assert_eq!(read(leaf("cpu").join("cpu.shares")), "512");
        assert_eq!(read(leaf("cpu").join("cpu.cfs_quota_us")), "20000");
        assert_eq!(read(leaf("cpu").join("cpu.cfs_period_us")), "100000");
        assert_eq!(read(leaf("cpuset").join("cpuset.cpus")), "1");
        assert_eq!(read(leaf("pids").join("pids.max")), "max");
        assert_eq!(read(leaf("blkio").join("blkio.bfq.weight")), "300");
        assert_eq!(
            read(leaf("blkio").join("blkio.throttle.write_iops_device")),
            "8:16 50"
        );
        assert_eq!(read(leaf("devices").join("devices.deny")), "a *:* rwm");
        // The defaults come after the spec's rules (the fixture keeps the last).
        assert_eq!(
            read(leaf("devices").join("devices.allow")),
            v1::DEFAULT_ALLOWED_DEVICES[v1::DEFAULT_ALLOWED_DEVICES.len() - 1]
        );
        assert!(!cg.oom_killed());

        // pids come from the freezer hierarchy here (no cgroup.procs in pids).
        touch(&leaf("pids"), &[("cgroup.procs", "12\n")]);
        assert_eq!(cg.pids().unwrap(), vec![12]);

        let err = cg
            .update(&res(r#"{"blockIO": {"leafWeight": 10}}"#))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "linux.resources.blockIO.leafWeight: not supported by this host (no blkio.leaf_weight)"
        );
        fs::remove_file(leaf("blkio").join("blkio.bfq.weight")).unwrap();
        let err = cg
            .update(&res(r#"{"blockIO": {"weight": 10}}"#))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "linux.resources.blockIO.weight: not supported by this host (no blkio.weight or blkio.bfq.weight)"
        );
        let err = cg
            .update(&res(r#"{"unified": {"memory.high": "5"}}"#))
            .unwrap_err();
        assert!(err
            .to_string()
            .starts_with("linux.resources.unified: not supported"));

        for h in cg.hierarchies() {
            for e in fs::read_dir(&h.path).unwrap() {
                fs::remove_file(e.unwrap().path()).unwrap();
            }
        }
        cg.delete().unwrap();
        for c in [
            "cpu,cpuacct",
            "cpuset",
            "memory",
            "pids",
            "blkio",
            "freezer",
            "devices",
        ] {
            assert!(!root.join(c).join("capsa").exists(), "{c}");
        }
    }

    #[test]
    fn v1_delete_keeps_shared_parent() {
        let t = v1_fixture();
        let root = t.path();
        let a = Cgroup::create_at(root, None, "a", None).unwrap();
        let b = Cgroup::create_at(root, None, "b", None).unwrap();
        assert!(b.hierarchies()[0].created.len() == 1, "capsa/ was a's");
        a.delete().unwrap();
        assert!(root.join("memory/capsa/b").exists());
        b.delete().unwrap();
        assert!(!root.join("memory/capsa/b").exists());
        // Created by a, which left it for b; nobody removes it now: harmless.
        assert!(root.join("memory/capsa").exists());
    }

    /// Another capsa deletes the parent it made (its container gone)
    /// between this one finding the parent and making its own directory.
    #[test]
    fn a_parent_removed_meanwhile_is_made_again() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        fs::create_dir(root.join("capsa")).unwrap();
        let mut removed = false;
        let mut created = Vec::new();
        let path = mkdir_path_with(
            root,
            Path::new("capsa/c"),
            &mut created,
            |_| Ok(()),
            |dir| {
                if dir.ends_with("capsa/c") && !removed {
                    removed = true;
                    fs::remove_dir(root.join("capsa"))?;
                }
                fs::create_dir(dir)
            },
        )
        .unwrap();
        assert!(removed);
        assert!(path.is_dir());
        assert_eq!(created, [root.join("capsa"), root.join("capsa/c")]);

        // A root that does not exist still fails, after a bounded number of
        // attempts.
        let err = mkdir_path(
            &root.join("absent"),
            Path::new("capsa/c"),
            &mut Vec::new(),
            |_| Ok(()),
        )
        .unwrap_err();
        assert!(matches!(err, CgroupError::Mkdir(..)), "{err}");
    }

    /// A parent cpuset another capsa has made but not filled yet is filled
    /// from its own parent, or the new container's cpuset could hold no task.
    #[test]
    fn v1_fills_a_half_made_parent_cpuset() {
        let t = v1_fixture();
        let root = t.path();
        fs::create_dir(root.join("cpuset/capsa")).unwrap();
        touch(
            &root.join("cpuset/capsa"),
            &[("cpuset.cpus", ""), ("cpuset.mems", "")],
        );
        let cg = Cgroup::create_at(root, None, "c", None).unwrap();
        assert_eq!(read(root.join("cpuset/capsa/cpuset.cpus")), "0-1");
        assert_eq!(read(root.join("cpuset/capsa/cpuset.mems")), "0");
        cg.delete().unwrap();
        assert!(
            root.join("cpuset/capsa").exists(),
            "not capsa c's to remove"
        );
    }

    #[test]
    fn v1_missing_controller_fails_cleanly() {
        let t = v1_fixture();
        let root = t.path();
        fs::remove_dir(root.join("pids")).unwrap();
        let err = Cgroup::create_at(root, None, "c", Some(&res(r#"{"pids": {"limit": 3}}"#)))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "linux.resources.pids.limit: not supported by this host (the pids cgroup controller is not mounted)"
        );
        assert!(!root.join("memory/capsa").exists());
    }

    /// A real cgroup on this (v1/hybrid) host, as root.
    #[test]
    fn v1_real_host() {
        let root = Path::new(DEFAULT_ROOT);
        if !nix::unistd::geteuid().is_root()
            || !root.join("memory").is_dir()
            || detect(root).ok() != Some(Version::V1)
        {
            eprintln!("skipped: needs root on a cgroup v1 host");
            return;
        }
        let path = format!("/capsa-test-{}", std::process::id());

        // A field the host lacks fails and leaves nothing behind.
        let bad = res(r#"{"memory": {"limit": 67108864}, "blockIO": {"leafWeight": 100}}"#);
        let err = Cgroup::create(Some(&path), "t", Some(&bad)).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("linux.resources.blockIO.leafWeight"),
            "{err}"
        );
        assert!(!root.join("memory").join(&path[1..]).exists());

        let cg = Cgroup::create(
            Some(&path),
            "t",
            Some(&res(r#"{
                "memory": {"limit": 67108864, "swap": 134217728, "reservation": 33554432},
                "cpu": {"shares": 512, "quota": 20000, "period": 100000, "cpus": "0", "mems": "0"},
                "pids": {"limit": 42},
                "devices": [{"allow": false, "access": "rwm"}]
            }"#)),
        )
        .unwrap();
        let dir = |c: &str| root.join(c).join(&path[1..]);
        let r = |c: &str, f: &str| read(dir(c).join(f)).trim().to_string();
        assert_eq!(r("memory", "memory.limit_in_bytes"), "67108864");
        assert_eq!(r("memory", "memory.memsw.limit_in_bytes"), "134217728");
        assert_eq!(r("memory", "memory.soft_limit_in_bytes"), "33554432");
        assert_eq!(r("cpu", "cpu.shares"), "512");
        assert_eq!(r("cpu", "cpu.cfs_quota_us"), "20000");
        assert_eq!(r("cpu", "cpu.cfs_period_us"), "100000");
        assert_eq!(r("cpuset", "cpuset.cpus"), "0");
        assert_eq!(r("pids", "pids.max"), "42");
        assert!(r("devices", "devices.list").contains("c 1:3 rwm"));

        cg.update(&res(
            r#"{"pids": {"limit": -1}, "memory": {"limit": 33554432, "swap": 33554432}}"#,
        ))
        .unwrap();
        assert_eq!(r("pids", "pids.max"), "max");
        assert_eq!(r("memory", "memory.limit_in_bytes"), "33554432");
        assert_eq!(r("memory", "memory.memsw.limit_in_bytes"), "33554432");

        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        cg.add_process(pid).unwrap();
        assert_eq!(cg.pids().unwrap(), vec![pid]);
        cg.freeze().unwrap();
        assert_eq!(r("freezer", "freezer.state"), "FROZEN");
        cg.thaw().unwrap();
        assert_eq!(r("freezer", "freezer.state"), "THAWED");
        assert!(!cg.oom_killed());
        child.kill().unwrap();
        child.wait().unwrap();
        cg.delete().unwrap();
        for p in cg.paths() {
            assert!(!p.exists(), "{}", p.display());
        }
    }
}
