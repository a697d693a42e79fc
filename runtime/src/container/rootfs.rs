//! The container's root filesystem: mounts in order, devices, links,
//! pivot_root, then masked and read-only paths.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{symlink, FileTypeExt};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use oci_spec::runtime::{LinuxDeviceType, LinuxNamespaceType, Mount};

use super::ContainerError;
use crate::backend::Init;
use crate::paths::{ensure_dir, ensure_file, nix_io, secure_join, PathError};
use crate::spec::{parse_options, propagation_flags, MountOptions};
use crate::state::Status;

type Result<T> = std::result::Result<T, ContainerError>;

fn mount_error(field: String, target: &Path) -> impl FnOnce(nix::Error) -> ContainerError + '_ {
    move |source| {
        PathError::Mount {
            field,
            target: target.to_path_buf(),
            source,
        }
        .into()
    }
}

/// Everything up to and including pivot_root (or chroot, without a mount
/// namespace); runs the runtime hooks and createContainer hooks at the
/// points the spec puts them.
pub fn prepare(init: &mut Init) -> Result<()> {
    let linux = init.spec.linux().clone().unwrap_or_default();
    let requested = linux
        .rootfs_propagation()
        .as_deref()
        .and_then(propagation_flags);
    let propagation_error = || mount_error("linux.rootfsPropagation".into(), Path::new("/"));
    let own_namespace = linux
        .namespaces()
        .iter()
        .flatten()
        .any(|ns| ns.typ() == LinuxNamespaceType::Mount);
    let rootfs = if own_namespace {
        // Our mounts must not leak back to the host (nor, by default, theirs to us).
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            requested.unwrap_or(MsFlags::MS_SLAVE | MsFlags::MS_REC),
            None::<&str>,
        )
        .map_err(propagation_error())?;
        let rootfs = init.rootfs.clone();
        // pivot_root refuses a new root whose parent mount is shared, and a
        // bind of a shared mount would be shared too: as runc does, the
        // parent mount becomes private here and the requested propagation
        // applies after the pivot.
        make_parent_mount_private(&rootfs)?;
        // pivot_root needs the new root to be a mount point.
        mount(
            Some(&rootfs),
            &rootfs,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(mount_error("root.path".into(), &rootfs))?;
        rootfs
    } else {
        bind_root_in_host_namespace(init)?
    };

    let in_userns = init.has_new(LinuxNamespaceType::User)
        || linux
            .namespaces()
            .iter()
            .flatten()
            .any(|ns| ns.typ() == LinuxNamespaceType::User);
    let mounts = init.spec.mounts().clone().unwrap_or_default();
    for (index, m) in mounts.iter().enumerate() {
        mount_one(&rootfs, &init.bundle, index, m)?;
    }
    create_devices(&rootfs, &linux, in_userns)?;
    create_dev_links(&rootfs)?;

    init.run_runtime_hooks()?;
    init.run_hooks("createContainer", Status::Creating)?;

    if own_namespace {
        pivot_root(&rootfs)?;
        if let Some(propagation) = requested {
            mount(None::<&str>, "/", None::<&str>, propagation, None::<&str>)
                .map_err(propagation_error())?;
        }
    } else {
        chroot(&rootfs)?;
    }
    finish(init)
}

/// Without a mount namespace of its own, the container's mounts are made in
/// the host's, where runc leaves them behind. capsa makes them on a private
/// bind of the rootfs in the container's state directory instead: nothing
/// propagates between it and the host's mounts, the host's propagation is
/// untouched, and removing the state detaches it with everything below it
/// (`Store::remove`). Returns the new root.
fn bind_root_in_host_namespace(init: &Init) -> Result<PathBuf> {
    let root = init.state_dir.join(crate::state::BOUND_ROOTFS);
    ensure_dir("root.path", &root)?;
    mount(
        Some(&init.rootfs),
        &root,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(mount_error("root.path".into(), &root))?;
    mount(
        None::<&str>,
        &root,
        None::<&str>,
        MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(mount_error("root.path".into(), &root))?;
    Ok(root)
}

/// What runc does without a mount namespace, where pivot_root would move
/// the host's root.
fn chroot(rootfs: &Path) -> Result<()> {
    let error = |source| ContainerError::Chroot(rootfs.to_path_buf(), source);
    nix::unistd::chroot(rootfs).map_err(error)?;
    nix::unistd::chdir("/").map_err(error)
}

/// Makes the mount holding `path` private if it is shared (in this mount
/// namespace only: the init has a new one).
fn make_parent_mount_private(path: &Path) -> Result<()> {
    let path = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    match parent_mount(&mountinfo, &path) {
        Some((point, true)) => mount(
            None::<&str>,
            &point,
            None::<&str>,
            MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(mount_error("linux.rootfsPropagation".into(), &point)),
        _ => Ok(()),
    }
}

/// The mount point of the mount holding `path` in `mountinfo`, and whether
/// that mount is shared.
fn parent_mount(mountinfo: &str, path: &Path) -> Option<(PathBuf, bool)> {
    // The last of the longest matches is the mount on top.
    let mut parent: Option<(PathBuf, bool)> = None;
    for line in mountinfo.lines() {
        let Some((left, _)) = line.split_once(" - ") else {
            continue;
        };
        let fields: Vec<&str> = left.split(' ').collect();
        let Some(point) = fields.get(4).map(|p| unescape_mountinfo(p)) else {
            continue;
        };
        if !path.starts_with(&point) {
            continue;
        }
        let longer = parent
            .as_ref()
            .is_none_or(|(best, _)| point.as_os_str().len() >= best.as_os_str().len());
        if longer {
            let shared = fields.iter().skip(6).any(|f| f.starts_with("shared:"));
            parent = Some((point, shared));
        }
    }
    parent
}

/// A mount point as /proc/self/mountinfo writes it: space, tab, newline
/// and backslash are octal escapes.
fn unescape_mountinfo(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

fn mount_one(rootfs: &Path, bundle: &Path, index: usize, m: &Mount) -> Result<()> {
    let field = format!("mounts[{index}]");
    let options = parse_options(m.options().as_deref().unwrap_or_default());
    let typ = m.typ().as_deref().unwrap_or("");
    let target = secure_join(rootfs, m.destination()).map_err(|err| PathError::Path {
        field: format!("{field}.destination"),
        path: m.destination().clone(),
        message: err.to_string(),
    })?;
    let is_bind = options.bind || typ == "bind";
    if is_bind {
        let source = m.source().as_ref().ok_or_else(|| PathError::Path {
            field: format!("{field}.source"),
            path: m.destination().clone(),
            message: "a bind mount needs a source".into(),
        })?;
        let source = if source.is_absolute() {
            source.clone()
        } else {
            bundle.join(source)
        };
        let meta = fs::metadata(&source).map_err(|err| PathError::Path {
            field: format!("{field}.source"),
            path: source.clone(),
            message: err.to_string(),
        })?;
        if meta.is_dir() {
            ensure_dir(&field, &target)?;
        } else {
            ensure_file(&field, &target)?;
        }
        let base = MsFlags::MS_BIND | (options.flags & MsFlags::MS_REC);
        mount(Some(&source), &target, None::<&str>, base, None::<&str>)
            .map_err(mount_error(field.clone(), &target))?;
        let extra = options.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
        if !extra.is_empty() {
            // A bind mount ignores flags until remounted; keep the flags the
            // source already had (locked ones cannot be cleared) plus ours.
            let existing = statvfs_flags(&target);
            mount(
                None::<&str>,
                &target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | ((existing | extra) & !options.cleared),
                None::<&str>,
            )
            .map_err(mount_error(format!("{field}.options"), &target))?;
        }
    } else if typ == "cgroup" || typ == "cgroup2" {
        ensure_dir(&field, &target)?;
        mount_cgroups(&field, &target, &options)?;
    } else {
        ensure_dir(&field, &target)?;
        let data = options.data.join(",");
        let source = m.source().clone().unwrap_or_else(|| PathBuf::from(typ));
        mount(
            Some(&source),
            &target,
            Some(typ),
            options.flags & !MsFlags::MS_REMOUNT,
            (!data.is_empty()).then_some(data.as_str()),
        )
        .map_err(mount_error(field.clone(), &target))?;
    }
    if !options.propagation.is_empty() {
        mount(
            None::<&str>,
            &target,
            None::<&str>,
            options.propagation,
            None::<&str>,
        )
        .map_err(mount_error(format!("{field}.options"), &target))?;
    }
    Ok(())
}

fn statvfs_flags(path: &Path) -> MsFlags {
    let Ok(stat) = nix::sys::statvfs::statvfs(path) else {
        return MsFlags::empty();
    };
    use nix::sys::statvfs::FsFlags;
    let mut flags = MsFlags::empty();
    for (fs_flag, ms_flag) in [
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if stat.flags().contains(fs_flag) {
            flags |= ms_flag;
        }
    }
    flags
}

/// A `cgroup` mount: cgroup2 on a unified host; on a v1/hybrid host a tmpfs
/// holding one mount per hierarchy, as the host has them.
fn mount_cgroups(field: &str, target: &Path, options: &MountOptions) -> Result<()> {
    let flags = options.flags & !(MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_REC);
    let unified = nix::sys::statfs::statfs("/sys/fs/cgroup")
        .map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        .unwrap_or(false);
    if unified {
        return mount(
            Some("cgroup2"),
            target,
            Some("cgroup2"),
            flags,
            None::<&str>,
        )
        .map_err(mount_error(field.to_string(), target));
    }
    mount(
        Some("tmpfs"),
        target,
        Some("tmpfs"),
        flags & !MsFlags::MS_RDONLY,
        Some("mode=755"),
    )
    .map_err(mount_error(field.to_string(), target))?;
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mut right = right.split_whitespace();
        let (Some(fstype), Some(_source), Some(super_opts)) =
            (right.next(), right.next(), right.next())
        else {
            continue;
        };
        let Some(mount_point) = left.split_whitespace().nth(4) else {
            continue;
        };
        let Some(name) = mount_point.strip_prefix("/sys/fs/cgroup/") else {
            continue;
        };
        if name.contains('/') {
            continue;
        }
        let dest = target.join(name);
        ensure_dir(field, &dest)?;
        let (typ, data) = match fstype {
            "cgroup" => (
                "cgroup",
                super_opts
                    .split(',')
                    .filter(|o| *o != "rw" && *o != "ro")
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            "cgroup2" => ("cgroup2", String::new()),
            _ => continue,
        };
        mount(
            Some("cgroup"),
            &dest,
            Some(typ),
            flags,
            (!data.is_empty()).then_some(data.as_str()),
        )
        .map_err(mount_error(field.to_string(), &dest))?;
    }
    if flags.contains(MsFlags::MS_RDONLY) {
        mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_REMOUNT | flags,
            Some("mode=755"),
        )
        .map_err(mount_error(field.to_string(), target))?;
    }
    Ok(())
}

struct DeviceNode {
    path: PathBuf,
    kind: SFlag,
    major: u64,
    minor: u64,
    mode: u32,
    uid: Option<u32>,
    gid: Option<u32>,
}

fn create_devices(rootfs: &Path, linux: &oci_spec::runtime::Linux, in_userns: bool) -> Result<()> {
    let defaults = [
        ("/dev/null", 1, 3),
        ("/dev/zero", 1, 5),
        ("/dev/full", 1, 7),
        ("/dev/random", 1, 8),
        ("/dev/urandom", 1, 9),
        ("/dev/tty", 5, 0),
    ];
    let mut nodes: Vec<(String, DeviceNode)> = defaults
        .iter()
        .map(|(path, major, minor)| {
            (
                "linux.devices (default)".to_string(),
                DeviceNode {
                    path: PathBuf::from(path),
                    kind: SFlag::S_IFCHR,
                    major: *major,
                    minor: *minor,
                    mode: 0o666,
                    uid: None,
                    gid: None,
                },
            )
        })
        .collect();
    for (i, device) in linux.devices().iter().flatten().enumerate() {
        let kind = match device.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
            LinuxDeviceType::B => SFlag::S_IFBLK,
            LinuxDeviceType::P => SFlag::S_IFIFO,
            LinuxDeviceType::A => {
                return Err(PathError::Path {
                    field: format!("linux.devices[{i}].type"),
                    path: device.path().clone(),
                    message: "type \"a\" is only valid in cgroup device rules".into(),
                }
                .into())
            }
        };
        nodes.push((
            format!("linux.devices[{i}]"),
            DeviceNode {
                path: device.path().clone(),
                kind,
                major: u64::try_from(device.major()).unwrap_or(0),
                minor: u64::try_from(device.minor()).unwrap_or(0),
                mode: device.file_mode().unwrap_or(0o666) & 0o7777,
                uid: device.uid(),
                gid: device.gid(),
            },
        ));
    }
    for (field, node) in nodes {
        let dest = secure_join(rootfs, &node.path).map_err(|err| PathError::Path {
            field: field.clone(),
            path: node.path.clone(),
            message: err.to_string(),
        })?;
        if let Some(parent) = dest.parent() {
            ensure_dir(&field, parent)?;
        }
        if in_userns {
            // mknod is not permitted in a user namespace: bind the host's node.
            ensure_file(&field, &dest)?;
            mount(
                Some(&node.path),
                &dest,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(mount_error(field.clone(), &dest))?;
            continue;
        }
        if let Ok(meta) = fs::symlink_metadata(&dest) {
            let ft = meta.file_type();
            if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() || ft.is_file() {
                let _ = fs::remove_file(&dest);
            }
        }
        let create_error = |source| PathError::Create {
            field: field.clone(),
            path: node.path.clone(),
            source,
        };
        mknod(
            &dest,
            node.kind,
            Mode::from_bits_truncate(node.mode),
            makedev(node.major, node.minor),
        )
        .map_err(create_error)?;
        // mknod's mode is filtered by the umask; set it exactly.
        nix::sys::stat::fchmodat(
            nix::fcntl::AT_FDCWD,
            &dest,
            Mode::from_bits_truncate(node.mode),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
        .map_err(create_error)?;
        if node.uid.is_some() || node.gid.is_some() {
            nix::unistd::chown(
                &dest,
                node.uid.map(nix::unistd::Uid::from_raw),
                node.gid.map(nix::unistd::Gid::from_raw),
            )
            .map_err(create_error)?;
        }
    }
    Ok(())
}

fn create_dev_links(rootfs: &Path) -> Result<()> {
    let dev = rootfs.join("dev");
    let mut links = vec![
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
    ];
    if Path::new("/proc/kcore").exists() {
        links.push(("/proc/kcore", "core"));
    }
    if dev.join("pts").is_dir() {
        links.push(("pts/ptmx", "ptmx"));
    }
    for (target, name) in links {
        let path = dev.join(name);
        if name == "ptmx" {
            let _ = fs::remove_file(&path);
        }
        match symlink(target, &path) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(err) => {
                return Err(PathError::Create {
                    field: "/dev links".into(),
                    path,
                    source: nix_io(err),
                }
                .into())
            }
        }
    }
    Ok(())
}

fn pivot_root(rootfs: &Path) -> Result<()> {
    let error = |source| ContainerError::PivotRoot(rootfs.to_path_buf(), source);
    nix::unistd::chdir(rootfs).map_err(error)?;
    // pivot_root(".", ".") stacks the old root on top of the new one, so it
    // can be detached without a directory for it inside the rootfs.
    nix::unistd::pivot_root(".", ".").map_err(error)?;
    umount2(".", MntFlags::MNT_DETACH).map_err(error)?;
    nix::unistd::chdir("/").map_err(error)
}

/// After pivot_root: hostname, sysctls, read-only and masked paths, a
/// read-only root.
fn finish(init: &Init) -> Result<()> {
    let spec = &init.spec;
    if let Some(hostname) = spec.hostname() {
        nix::unistd::sethostname(hostname).map_err(|source| ContainerError::Apply {
            field: "hostname".into(),
            source,
        })?;
    }
    if let Some(domainname) = spec.domainname() {
        // SAFETY: the pointer and length describe a live byte slice.
        let ret = unsafe { libc::setdomainname(domainname.as_ptr().cast(), domainname.len()) };
        if ret != 0 {
            return Err(ContainerError::Apply {
                field: "domainname".into(),
                source: nix::Error::last(),
            });
        }
    }
    let linux = spec.linux().clone().unwrap_or_default();
    for (key, value) in linux.sysctl().iter().flatten() {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        fs::write(&path, value).map_err(|source| ContainerError::Sysctl {
            key: key.clone(),
            source,
        })?;
    }
    for (i, path) in linux.readonly_paths().iter().flatten().enumerate() {
        readonly_path(&format!("linux.readonlyPaths[{i}]"), Path::new(path))?;
    }
    for (i, path) in linux.masked_paths().iter().flatten().enumerate() {
        mask_path(&format!("linux.maskedPaths[{i}]"), Path::new(path))?;
    }
    if spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false)
    {
        let existing = statvfs_flags(Path::new("/"));
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | existing,
            None::<&str>,
        )
        .map_err(mount_error("root.readonly".into(), Path::new("/")))?;
    }
    Ok(())
}

fn readonly_path(field: &str, path: &Path) -> Result<()> {
    match mount(
        Some(path),
        path,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    ) {
        Ok(()) => {}
        Err(nix::Error::ENOENT) => return Ok(()),
        Err(source) => return Err(mount_error(field.to_string(), path)(source)),
    }
    let existing = statvfs_flags(path);
    mount(
        None::<&str>,
        path,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | existing,
        None::<&str>,
    )
    .map_err(mount_error(field.to_string(), path))
}

fn mask_path(field: &str, path: &Path) -> Result<()> {
    let result = match fs::metadata(path) {
        Err(_) => return Ok(()),
        Ok(meta) if meta.is_dir() => mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            None::<&str>,
        ),
        Ok(_) => mount(
            Some(OsStr::new("/dev/null")),
            path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        ),
    };
    result.map_err(mount_error(field.to_string(), path))
}

#[cfg(test)]
mod tests {
    use super::*;

    // A host's table: / shared, /tmp private, /srv shared with a
    // private mount over it, and a mount point with a space.
    const MOUNTINFO: &str = "\
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 27 0:40 / /tmp rw,relatime - tmpfs tmpfs rw
31 27 254:0 /srv /srv rw,relatime shared:1 - ext4 /dev/vda rw
32 27 0:41 / /srv rw,relatime - tmpfs tmpfs rw
33 27 0:42 / /my\\040bundles rw,relatime shared:7 master:1 - tmpfs tmpfs rw
";

    fn parent(path: &str) -> Option<(PathBuf, bool)> {
        parent_mount(MOUNTINFO, Path::new(path))
    }

    #[test]
    fn the_rootfs_parent_mount_is_the_longest_match_on_top() {
        assert_eq!(parent("/var/b/rootfs"), Some(("/".into(), true)));
        assert_eq!(parent("/tmp/b/rootfs"), Some(("/tmp".into(), false)));
        // Components, not bytes: /tmpx is under /.
        assert_eq!(parent("/tmpx/rootfs"), Some(("/".into(), true)));
        // The later of two mounts on one point is the one on top.
        assert_eq!(parent("/srv/b/rootfs"), Some(("/srv".into(), false)));
        assert_eq!(
            parent("/my bundles/rootfs"),
            Some(("/my bundles".into(), true))
        );
        assert_eq!(parent_mount("", Path::new("/b/rootfs")), None);
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(
            unescape_mountinfo("/a\\040b\\011c\\012d\\134e"),
            PathBuf::from("/a b\tc\nd\\e")
        );
        // A backslash without three octal digits after it is kept.
        assert_eq!(unescape_mountinfo("/a\\9"), PathBuf::from("/a\\9"));
        assert_eq!(unescape_mountinfo("/a\\"), PathBuf::from("/a\\"));
    }
}
