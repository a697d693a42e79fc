//! The microVM backend: the container's init becomes a jailed VMM that runs
//! `process` inside a KVM microVM with capsa's own guest kernel.
//!
//! # Process model
//! `capsa create` clones the init exactly as for a container (same cgroup,
//! same sync channel, same hooks), but into the jail's namespaces: always new
//! mount, pid, ipc and uts namespaces, whatever `linux.namespaces` says,
//! because the VM is the isolation boundary and the namespaces only confine
//! the VMM process; the network namespace the spec names by path is joined
//! (else a new one is made), and its interface handed to the guest
//! ([`network`]). The init prepares (private mount propagation,
//! hooks, mount destinations, `args[0]` lookup), reports ready, waits for
//! `start`, then *is* the VMM: it pivots into a jail root holding only the
//! rootfs, the shared directories, `/dev/kvm` and its own `/proc`, drops every
//! capability the file server does not need, sets no_new_privs and calls
//! [`capsa_vmm::run`] on its own thread, which installs the VMM's seccomp
//! allowlist before the first guest instruction. The VMM process has two
//! tasks: its thread and KVM's per-VM `kvm-nx-lpage-recovery` worker. The
//! container's pid in `capsa state` is therefore the VMM's host pid, its
//! cgroup limits the VMM (guest RAM included), and `capsa kill` signals the
//! VMM. The VMM exits with the guest process's status, or with
//! [`VMM_FAILURE_STATUS`] if it fails itself.
//!
//! Signals: the VMM passes SIGHUP, SIGINT, SIGQUIT, SIGUSR1, SIGUSR2 and
//! SIGTERM (from `capsa kill`, a forwarding `capsa run`, podman) to the
//! guest's first process, which, like a container's pid 1, takes those it
//! has a handler for and ignores the rest; SIGKILL ends the microVM
//! (status 137). See `capsa_vmm`'s `signals` module.
//!
//! # Spec fields
//! Passed to the guest: `process.{args,env,cwd,user.{uid,gid,additionalGids,
//! umask},rlimits,noNewPrivileges}`, `hostname`, `domainname` (else those
//! of a UTS namespace the spec names by path, as a pod's containers join
//! their sandbox's),
//! `linux.resources.pids.limit`, `root.{path,readonly}` and bind mounts
//! (served as virtio-fs directories, `ro` honoured). `linux.resources.memory.
//! limit` sizes guest RAM (limit minus the VMM's allowance) and limits the
//! whole VMM through the cgroup; `pids.limit` counts the guest's processes
//! (the cgroup gets room for the VMM's tasks on top). The guest, not the
//! host, checks permission bits for a non-root `process.user` on open and
//! access, since the file server acts as root; it creates files as that user.
//!
//! A `tmpfs` mount becomes a tmpfs the VMM creates in its own mount namespace
//! (with the mount's options, charged to the instance's memory cgroup, gone
//! with the VMM) and serves like a directory bind; the executable lookup at
//! create time looks through directory binds to their sources.
//!
//! Not applied inside the guest: `proc` (the guest emulates the files it
//! needs, see docs/syscalls.md), `sysfs`, `devpts`, `mqueue`, `cgroup` mounts
//! and any mount under `/dev` (but a tmpfs on `/dev/shm`), `/proc` or
//! `/sys` are skipped; the guest provides
//! `/dev/{null,zero,full,random,urandom}` itself.
//! `process.capabilities` are the guest process's five capability sets,
//! which the guest kernel enforces and moves as Linux does (setuid, execve,
//! capset). `linux.seccomp`, `linux.maskedPaths`,
//! `linux.readonlyPaths`, `linux.devices`, `linux.sysctl` and id mappings have
//! no host meaning for a guest process and are ignored, as is
//! `--preserve-fds`; `process.terminal` is refused (no console device for a
//! terminal yet).

pub mod exec;
mod namespace;
mod network;

use std::convert::Infallible;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use caps::{CapSet, Capability as Cap};
use nix::mount::{mount, MsFlags};
use nix::sys::signal::{SigHandler, SigSet, Signal};
use oci_spec::runtime::{
    LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxNamespace, LinuxNamespaceBuilder,
    LinuxNamespaceType, LinuxResources, Spec,
};

use crate::backend::{Backend, BackendError, Init};
use crate::init::InitError;
use crate::paths::{
    ensure_dir, ensure_file, nix_io, resolve_executable_with, secure_join, secure_join_mounted,
    Overlay, PathError,
};
use crate::spec::{parse_options, rlimit_resource, Bundle};
use crate::state::Status;

/// The guest kernel, built by build.rs from `guest/`.
static GUEST_KERNEL: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/capsa-guest"));

/// The exit status of the VMM when it fails after `start` (jail, KVM, the
/// guest kernel; not the guest's process), with `capsa: <reason>` on stderr. Every status 0-255 is one a guest process
/// could also exit with, so this follows the convention of docker and podman
/// for "the runtime failed" rather than 1, which programs commonly return.
pub const VMM_FAILURE_STATUS: i32 = 125;

/// Environment variable that makes the guest log every unknown syscall.
pub const DEBUG_SYSCALLS_ENV: &str = "CAPSA_DEBUG_SYSCALLS";

/// Smallest guest RAM a program runs in: the guest kernel's image (below
/// 4 MiB), its heap (at least 4 MiB) and 8 MiB for the program, which is
/// what the guest's boot checks (`kernel::heap_region`).
const MIN_GUEST_RAM: u64 = 16 << 20;

/// Tasks of the VMM process: its own thread and the worker KVM starts per
/// VM on the first KVM_RUN (`kvm-nx-lpage-recovery`), which counts against
/// the pids cgroup: at pids.max 1 KVM_RUN fails with EAGAIN.
const VMM_TASKS: i64 = 2;

/// Capabilities the VMM keeps: what the virtio-fs passthrough server needs
/// to serve the rootfs on behalf of the guest's users. It opens and creates
/// files regardless of the host modes (DAC_*), sets owners, modes and times
/// of files it does not own (CHOWN, FOWNER, FSETID), and switches its
/// effective uid/gid to the requester's when creating files (SETUID,
/// SETGID: fuse-backend-rs `set_creds` calls setresuid/setresgid).
const KEPT_CAPABILITIES: [Cap; 7] = [
    Cap::CAP_CHOWN,
    Cap::CAP_DAC_OVERRIDE,
    Cap::CAP_DAC_READ_SEARCH,
    Cap::CAP_FOWNER,
    Cap::CAP_FSETID,
    Cap::CAP_SETGID,
    Cap::CAP_SETUID,
];

/// Why the microVM backend refused a bundle or could not start the VMM.
#[derive(Debug, thiserror::Error)]
pub enum MicroVmError {
    #[error("cannot make the exec socket")]
    ExecSocket(#[from] exec::ExecError),
    #[error("--isolation=microvm: cannot open /dev/kvm (microVMs need KVM)")]
    NoKvm(#[source] std::io::Error),
    #[error("process.terminal: cannot give the microVM a terminal")]
    Terminal(#[source] nix::Error),
    #[error(
        "linux.resources.memory.limit: {limit} bytes is too small for a microVM, \
         which needs at least {min} ({allowance} for the VMM and {guest} of guest RAM)"
    )]
    MemoryTooSmall {
        limit: i64,
        min: u64,
        allowance: u64,
        guest: u64,
    },
    #[error("mounts[{index}].source: {path}: {message}")]
    MountSource {
        index: usize,
        path: PathBuf,
        message: String,
    },
    #[error("mounts[{index}].options: {option}: not accepted by tmpfs")]
    Tmpfs {
        index: usize,
        option: String,
        #[source]
        source: nix::Error,
    },
    #[error("linux.namespaces: cannot read the hostname of the UTS namespace {path}")]
    Uts {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("{field}: cannot set it in the VMM's UTS namespace")]
    UtsNames {
        field: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("linux.rootfsPropagation: cannot make the VMM's mounts private")]
    Propagation(#[source] nix::Error),
    #[error("cannot build the VMM's jail at {path}")]
    Jail {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("cannot confine the VMM: {what}")]
    Confine {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Network(#[from] network::NetworkError),
    #[error(transparent)]
    Path(#[from] PathError),
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecError),
    #[error(transparent)]
    Init(#[from] InitError),
}

// `?` in the trait methods: the error crosses the interface boxed.
impl From<MicroVmError> for BackendError {
    fn from(err: MicroVmError) -> Self {
        BackendError::Failed(Box::new(err))
    }
}

type Result<T, E = MicroVmError> = std::result::Result<T, E>;

/// A mount of the spec that the VMM serves: a bind mount, or a tmpfs the
/// VMM creates (in its own mount namespace, so it goes away with the VMM).
struct GuestMount {
    index: usize,
    source: GuestMountSource,
    destination: PathBuf,
    readonly: bool,
    /// A file, not a directory: bound in place inside the rootfs (which the
    /// VMM serves with its submounts) rather than shared as a device.
    is_file: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum GuestMountSource {
    /// A host file or directory (absolute).
    Host(PathBuf),
    /// A new tmpfs with these options (`size=`, `mode=`, ...).
    Tmpfs(Vec<String>),
}

impl GuestMount {
    fn host_source(&self) -> Option<&Path> {
        match &self.source {
            GuestMountSource::Host(path) => Some(path),
            GuestMountSource::Tmpfs(_) => None,
        }
    }
}

/// Whether a destination is one of the trees the guest kernel provides
/// itself (`/dev`, `/proc`, `/sys` and anything below them), except
/// `/dev/shm`: POSIX shared memory and named semaphores are files there
/// that processes map shared, so its tmpfs is served like any other.
fn provided_by_guest(destination: &Path) -> bool {
    !destination.starts_with("/dev/shm")
        && ["/dev", "/proc", "/sys"]
            .iter()
            .any(|tree| destination.starts_with(tree))
}

/// The spec's bind and tmpfs mounts, in order; other mount types are the
/// guest's business (see the module docs).
fn guest_mounts(spec: &Spec, bundle: &Path) -> Vec<GuestMount> {
    let mounts = spec.mounts().as_deref().unwrap_or_default();
    mounts
        .iter()
        .enumerate()
        .filter_map(|(index, m)| {
            let options = parse_options(m.options().as_deref().unwrap_or_default());
            let readonly = options.flags.contains(MsFlags::MS_RDONLY);
            if m.typ().as_deref() == Some("tmpfs") && !options.bind {
                return (!provided_by_guest(m.destination())).then(|| GuestMount {
                    index,
                    source: GuestMountSource::Tmpfs(options.data),
                    destination: m.destination().clone(),
                    readonly,
                    is_file: false,
                });
            }
            if !(options.bind || m.typ().as_deref() == Some("bind")) {
                return None;
            }
            let source = m.source().clone().unwrap_or_default();
            let source = if source.is_absolute() {
                source
            } else {
                bundle.join(source)
            };
            let is_file = std::fs::metadata(&source).is_ok_and(|meta| !meta.is_dir());
            Some(GuestMount {
                index,
                source: GuestMountSource::Host(source),
                destination: m.destination().clone(),
                readonly,
                is_file,
            })
        })
        .collect()
}

/// Guest RAM for a memory limit: what the cgroup leaves after the VMM's own
/// needs, at most what the guest can address.
fn ram_size(limit: Option<i64>) -> Result<u64> {
    let Some(limit) = limit.filter(|l| *l > 0) else {
        return Ok(capsa_vmm::DEFAULT_RAM_SIZE);
    };
    let allowance = capsa_vmm::VMM_MEMORY_ALLOWANCE;
    let min = allowance + MIN_GUEST_RAM;
    match u64::try_from(limit) {
        Ok(bytes) if bytes >= min => Ok((bytes - allowance).min(capsa_abi::MAX_RAM_SIZE)),
        _ => Err(MicroVmError::MemoryTooSmall {
            limit,
            min,
            allowance,
            guest: MIN_GUEST_RAM,
        }),
    }
}

fn memory_limit(spec: &Spec) -> Option<i64> {
    spec.linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.limit())
}

/// Where the guest mounts a shared directory: the destination resolved in
/// the rootfs as `prepare` resolved it (symlinks in the rootfs followed,
/// never out of it), so that the mount lands on the directory made there and
/// a path through a symlink reaches it, as in a container.
fn guest_destination(rootfs: &Path, destination: &Path) -> String {
    secure_join(rootfs, destination)
        .ok()
        .and_then(|p| p.strip_prefix(rootfs).ok().map(|r| Path::new("/").join(r)))
        .unwrap_or_else(|| destination.to_path_buf())
        .to_string_lossy()
        .into_owned()
}

/// The guest's view of the spec (public for the config.json fuzz target).
/// What the guest runs for `process` of the container `spec`.
fn process_spec(spec: &Spec, process: &oci_spec::runtime::Process) -> capsa_vmm::ProcessSpec {
    let user = process.user();
    let rlimits = process
        .rlimits()
        .iter()
        .flatten()
        .map(|r| capsa_vmm::Rlimit {
            resource: rlimit_resource(r.typ()),
            soft: r.soft(),
            hard: r.hard(),
        })
        .collect();
    let pids_limit = spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.pids().as_ref())
        .and_then(|p| u64::try_from(p.limit()).ok().filter(|l| *l > 0));
    capsa_vmm::ProcessSpec {
        args: process.args().clone().unwrap_or_default(),
        env: process.env().clone().unwrap_or_default(),
        cwd: process.cwd().to_string_lossy().into_owned(),
        hostname: spec.hostname().clone().unwrap_or_default(),
        domainname: spec.domainname().clone().unwrap_or_default(),
        uid: user.uid(),
        gid: user.gid(),
        additional_gids: user.additional_gids().clone().unwrap_or_default(),
        umask: user.umask(),
        rlimits,
        no_new_privileges: process.no_new_privileges().unwrap_or(false),
        pids_limit,
        capabilities: Some(capability_sets(process.capabilities().as_ref())),
        oom_score_adj: process.oom_score_adj(),
    }
}

/// The encoded spec of a process `capsa exec` starts in the microVM of
/// container `spec`.
pub fn encode_exec_process(
    spec: &Spec,
    process: &oci_spec::runtime::Process,
) -> Result<Vec<u8>, exec::ExecError> {
    let encoded = capsa_vmm::vm::encode_process_spec(&process_spec(spec, process), &[]);
    encoded.map_err(|_| exec::ExecError::TooLarge(capsa_vmm::vm::layout::PROCESS_SPEC_MAX))
}

pub fn vm_config(spec: &Spec, rootfs: &Path, bundle: &Path) -> Result<capsa_vmm::VmConfig> {
    let default_process = oci_spec::runtime::Process::default();
    let process = spec.process().as_ref().unwrap_or(&default_process);
    // A tmpfs has no source yet: `enter_jail` creates it.
    let mounts = guest_mounts(spec, bundle)
        .into_iter()
        .filter(|m| !m.is_file)
        .map(|m| capsa_vmm::SharedDir {
            source: m.host_source().map(Path::to_path_buf).unwrap_or_default(),
            destination: guest_destination(rootfs, &m.destination),
            readonly: m.readonly,
        })
        .collect();
    Ok(capsa_vmm::VmConfig {
        kernel: std::borrow::Cow::Borrowed(GUEST_KERNEL),
        ram_size: ram_size(memory_limit(spec))?,
        hugepages: crate::spec::hugepages(spec)?,
        vcpus: 1,
        process: process_spec(spec, process),
        rootfs: rootfs.to_path_buf(),
        rootfs_readonly: spec
            .root()
            .as_ref()
            .and_then(|r| r.readonly())
            .unwrap_or(false),
        mounts,
        debug_syscalls: std::env::var(DEBUG_SYSCALLS_ENV).is_ok_and(|v| v == "1"),
        seccomp: true,
        net: None,
        exec_socket: None,
    })
}

/// The guest's capability sets for `process.capabilities`, as the
/// container backend applies them before its execve: none named is none
/// held; the effective set within the permitted one; ambient capabilities
/// only where permitted and inheritable.
fn capability_sets(
    capabilities: Option<&oci_spec::runtime::LinuxCapabilities>,
) -> capsa_abi::process::CapabilitySets {
    use oci_spec::runtime::LinuxCapabilities as Caps;
    let mask = |set: fn(&Caps) -> &Option<oci_spec::runtime::Capabilities>| {
        crate::spec::capability_set(capabilities.and_then(|c| set(c).as_ref()))
            .iter()
            .fold(0u64, |m, cap| m | cap.bitmask())
    };
    let permitted = mask(Caps::permitted);
    let inheritable = mask(Caps::inheritable);
    capsa_abi::process::CapabilitySets {
        effective: mask(Caps::effective) & permitted,
        permitted,
        inheritable,
        bounding: mask(Caps::bounding),
        ambient: mask(Caps::ambient) & permitted & inheritable,
    }
}

/// Closes every inherited descriptor above stdio but `keep` (the VMM's
/// own, opened while preparing): the VMM passes none to the guest, and
/// must not keep capsa's (or its caller's) open.
fn close_inherited_fds(keep: &[i32]) {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2 && !keep.contains(fd))
        .collect();
    for fd in fds {
        // SAFETY: nothing in this process owns these fds any more (the
        // init's were dropped before); a stale number (the read_dir's own,
        // already closed) fails with EBADF.
        unsafe { libc::close(fd) };
    }
}

/// Pivots the VMM into a root of its own that holds only what it serves or
/// opens: `/rootfs`, `/mnt/<i>` (the shared directories), `/dev/kvm` and a
/// `/proc` of its pid namespace (fuse-backend-rs reopens files through
/// /proc/self/fd). Rewrites `config`'s paths to those. The rest of the host's
/// file system is then out of reach even for the file-serving syscalls the
/// seccomp filter must allow.
fn enter_jail(config: &mut capsa_vmm::VmConfig, shared: &[GuestMount]) -> Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::os::unix::ffi::OsStrExt;

    let jail_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| MicroVmError::Jail { path, source }
    };
    // Detached copies of the mounts to keep, taken before the tmpfs below
    // may hide them (a bind through a path would see the tmpfs instead).
    let clone_tree = |path: &Path| -> Result<OwnedFd> {
        let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
            .map_err(|_| jail_error(path)(nix::Error::EINVAL))?;
        // SAFETY: open_tree reads a NUL-terminated path and returns a new fd or -1.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_open_tree,
                libc::AT_FDCWD,
                c_path.as_ptr(),
                (libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC) as libc::c_uint
                    | libc::AT_RECURSIVE as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(jail_error(path)(nix::Error::last()));
        }
        // SAFETY: the fd was just returned by the kernel and is owned by no one else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    };
    let mut trees = vec![(
        clone_tree(&config.rootfs)?,
        PathBuf::from("rootfs"),
        config.rootfs_readonly,
        true,
    )];
    for (i, (dir, mount)) in config.mounts.iter().zip(shared).enumerate() {
        let tree = match &mount.source {
            GuestMountSource::Host(_) => clone_tree(&dir.source)?,
            GuestMountSource::Tmpfs(options) => new_tmpfs(mount.index, options, true)?,
        };
        trees.push((tree, PathBuf::from(format!("mnt/{i}")), dir.readonly, true));
    }
    trees.push((
        clone_tree(Path::new("/dev/kvm"))?,
        PathBuf::from("dev/kvm"),
        false,
        false,
    ));

    // Any existing directory serves as the mount point; the rootfs is one.
    let jail = config.rootfs.clone();
    mount(
        Some("tmpfs"),
        &jail,
        Some("tmpfs"),
        MsFlags::MS_NOSUID,
        Some("mode=755"),
    )
    .map_err(jail_error(&jail))?;
    let create = |path: &Path, dir: bool| -> Result<()> {
        let made = match (dir, path.parent()) {
            (true, _) => std::fs::create_dir_all(path),
            (false, Some(parent)) => {
                std::fs::create_dir_all(parent).and_then(|()| std::fs::File::create(path).map(drop))
            }
            (false, None) => Ok(()),
        };
        made.map_err(|e| jail_error(path)(nix_io(e)))
    };
    for (tree, relative, readonly, dir) in &trees {
        let target = jail.join(relative);
        create(&target, *dir)?;
        let c_target = std::ffi::CString::new(target.as_os_str().as_bytes())
            .map_err(|_| jail_error(&target)(nix::Error::EINVAL))?;
        // SAFETY: move_mount reads an empty path (with F_EMPTY_PATH, the fd
        // itself is moved) and a NUL-terminated target path.
        let moved = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                tree.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_FDCWD,
                c_target.as_ptr(),
                libc::MOVE_MOUNT_F_EMPTY_PATH,
            )
        };
        if moved < 0 {
            return Err(jail_error(&target)(nix::Error::last()));
        }
        if *readonly {
            mount(
                None::<&str>,
                &target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            )
            .map_err(jail_error(&target))?;
        }
    }
    drop(trees);
    let proc = jail.join("proc");
    create(&proc, true)?;
    mount(
        Some("proc"),
        &proc,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(jail_error(&proc))?;

    // pivot_root(".", ".") stacks the old root over the new one; detaching
    // it leaves only the jail.
    nix::unistd::chdir(&jail).map_err(jail_error(&jail))?;
    nix::unistd::pivot_root(".", ".").map_err(jail_error(&jail))?;
    nix::mount::umount2(".", nix::mount::MntFlags::MNT_DETACH).map_err(jail_error(&jail))?;
    nix::unistd::chdir("/").map_err(jail_error(&jail))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID,
        None::<&str>,
    )
    .map_err(jail_error(Path::new("/")))?;

    config.rootfs = PathBuf::from("/rootfs");
    for (i, dir) in config.mounts.iter_mut().enumerate() {
        dir.source = PathBuf::from(format!("/mnt/{i}"));
    }
    Ok(())
}

/// A tmpfs configured with a spec mount's `options` (those the kernel
/// rejects are reported with their mount's index): with `create`, the
/// detached mount of a new instance (nosuid, nodev), else only the checked
/// configuration.
fn new_tmpfs(index: usize, options: &[String], create: bool) -> Result<OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let error = |option: &str| {
        let option = option.to_string();
        move |source| MicroVmError::Tmpfs {
            index,
            option,
            source,
        }
    };
    let owned = |fd: libc::c_long, option: &str| -> Result<OwnedFd> {
        if fd < 0 {
            return Err(error(option)(nix::Error::last()));
        }
        // SAFETY: the fd was just returned by the kernel and is owned by no one else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    };
    // SAFETY: fsopen reads a NUL-terminated name and returns a new fd or -1.
    let opened =
        unsafe { libc::syscall(libc::SYS_fsopen, c"tmpfs".as_ptr(), libc::FSOPEN_CLOEXEC) };
    let context = owned(opened, "tmpfs")?;
    let configure =
        |command: libc::c_uint, key: Option<&std::ffi::CStr>, value: Option<&std::ffi::CStr>| {
            // SAFETY: fsconfig reads the optional NUL-terminated key and value
            // and writes nothing into this process.
            unsafe {
                libc::syscall(
                    libc::SYS_fsconfig,
                    context.as_raw_fd(),
                    command,
                    key.map_or(std::ptr::null(), |k| k.as_ptr()),
                    value.map_or(std::ptr::null(), |v| v.as_ptr()),
                    0,
                )
            }
        };
    for option in options {
        let (key, value) = match option.split_once('=') {
            Some((key, value)) => (key, Some(value)),
            None => (option.as_str(), None),
        };
        let c = |text: &str| {
            std::ffi::CString::new(text).map_err(|_| error(option)(nix::Error::EINVAL))
        };
        let key = c(key)?;
        let done = match value {
            Some(value) => configure(libc::FSCONFIG_SET_STRING, Some(&key), Some(&c(value)?)),
            None => configure(libc::FSCONFIG_SET_FLAG, Some(&key), None),
        };
        if done < 0 {
            return Err(error(option)(nix::Error::last()));
        }
    }
    if !create {
        return Ok(context);
    }
    if configure(libc::FSCONFIG_CMD_CREATE, None, None) < 0 {
        return Err(error("tmpfs")(nix::Error::last()));
    }
    // SAFETY: fsmount takes the configured context and returns a new fd or -1.
    let mounted = unsafe {
        libc::syscall(
            libc::SYS_fsmount,
            context.as_raw_fd(),
            libc::FSMOUNT_CLOEXEC,
            libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV,
        )
    };
    owned(mounted, "tmpfs")
}

/// Leaves the VMM only [`KEPT_CAPABILITIES`], in every set, and sets
/// no_new_privs so nothing it could exec regains more.
fn confine() -> Result<()> {
    let keep: std::collections::HashSet<Cap> = KEPT_CAPABILITIES.into_iter().collect();
    let caps_error = |what| {
        move |err: caps::errors::CapsError| MicroVmError::Confine {
            what,
            source: std::io::Error::other(err.to_string()),
        }
    };
    for cap in caps::all() {
        if !keep.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, cap).map_err(caps_error("bounding set"))?;
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(caps_error("ambient set"))?;
    caps::clear(None, CapSet::Inheritable).map_err(caps_error("inheritable set"))?;
    let permitted = caps::read(None, CapSet::Permitted).map_err(caps_error("permitted set"))?;
    let kept: std::collections::HashSet<Cap> = keep.intersection(&permitted).copied().collect();
    caps::set(None, CapSet::Effective, &kept).map_err(caps_error("effective set"))?;
    caps::set(None, CapSet::Permitted, &kept).map_err(caps_error("permitted set"))?;
    nix::sys::prctl::set_no_new_privs().map_err(|err| MicroVmError::Confine {
        what: "no_new_privs",
        source: err.into(),
    })
}

/// Writes `capsa: <message>` to stderr and ends the VMM with
/// [`VMM_FAILURE_STATUS`]. Only write and exit_group: the seccomp filter
/// may already be on.
fn fail(message: &str) -> ! {
    let text = format!("capsa: {message}\n");
    // SAFETY: writing a live buffer to fd 2, then ending the process
    // without running destructors or atexit handlers.
    unsafe {
        libc::write(2, text.as_ptr().cast(), text.len());
        libc::_exit(VMM_FAILURE_STATUS)
    }
}

pub struct MicroVmBackend;

impl Backend for MicroVmBackend {
    fn check(&self, bundle: &Bundle) -> Result<(), BackendError> {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .map_err(MicroVmError::NoKvm)?;
        ram_size(memory_limit(&bundle.spec))?;
        for m in guest_mounts(&bundle.spec, &bundle.dir) {
            let source = match &m.source {
                GuestMountSource::Host(source) => source,
                GuestMountSource::Tmpfs(options) => {
                    new_tmpfs(m.index, options, false)?;
                    continue;
                }
            };
            if let Err(err) = std::fs::metadata(source) {
                return Err(MicroVmError::MountSource {
                    index: m.index,
                    path: source.to_path_buf(),
                    message: err.to_string(),
                }
                .into());
            }
        }
        Ok(())
    }

    fn cgroup_resources(&self, spec: &Spec) -> Option<LinuxResources> {
        let mut resources = spec.linux().as_ref()?.resources().clone()?;
        // `pids.limit` counts the guest's processes, which the guest enforces
        // itself; the cgroup holds the VMM's tasks instead.
        if let Some(pids) = resources.pids().as_ref().filter(|p| p.limit() > 0) {
            let mut pids = *pids;
            pids.set_limit(pids.limit().saturating_add(VMM_TASKS));
            resources.set_pids(Some(pids));
        }
        // Device rules are about the guest's process in container terms; the
        // VMM itself must reach /dev/kvm (10:232) even when they deny
        // everything (as containerd's and podman's specs do), and its init
        // /dev/net/tun (10:200) for the TAP of the guest's network device
        // (opened before the jail, which has no /dev/net/tun).
        if let Some(mut devices) = resources.devices().clone() {
            for (minor, access) in [(232, "rwm"), (200, "rw")] {
                if let Ok(rule) = LinuxDeviceCgroupBuilder::default()
                    .allow(true)
                    .typ(LinuxDeviceType::C)
                    .major(10)
                    .minor(minor)
                    .access(access)
                    .build()
                {
                    devices.push(rule);
                }
            }
            resources.set_devices(Some(devices));
        }
        Some(resources)
    }

    fn namespaces(&self, spec: &Spec) -> Vec<LinuxNamespace> {
        // The network namespace the spec names (podman's, a CNI plugin's,
        // a pod's) is joined: its interface becomes the guest's.
        let mut network = LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Network);
        if let Some(path) = joined_namespace(spec, LinuxNamespaceType::Network) {
            network = network.path(path);
        }
        [
            LinuxNamespaceType::Mount,
            LinuxNamespaceType::Pid,
            LinuxNamespaceType::Ipc,
            LinuxNamespaceType::Uts,
        ]
        .into_iter()
        .filter_map(|typ| LinuxNamespaceBuilder::default().typ(typ).build().ok())
        .chain(network.build().ok())
        .collect()
    }

    fn prepare(&self, init: &mut Init) -> Result<(), BackendError> {
        // The mount namespace is a copy of the host's: nothing the VMM's
        // side does to it may propagate back.
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_PRIVATE | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(MicroVmError::Propagation)?;
        if init.has_new(LinuxNamespaceType::Uts) {
            set_uts_names(&init.spec)?;
        }
        init.run_runtime_hooks().map_err(MicroVmError::from)?;
        // A namespace of our own has only lo: nothing to hand over.
        let net = if init.has_new(LinuxNamespaceType::Network) {
            None
        } else {
            network::attach(&init.id, &init.state_dir).map_err(MicroVmError::from)?
        };
        let exec_socket = exec::listen_in(&init.state_dir).map_err(MicroVmError::from)?;
        init.handover = Some(Box::new(Handover { net, exec_socket }));
        init.run_hooks("createContainer", Status::Creating)
            .map_err(MicroVmError::from)?;
        // The guest mounts shared directories over existing directories;
        // files (podman's /etc/hosts, say) are bound in place here, in our
        // private mount namespace, and reach the guest with the rootfs.
        for m in guest_mounts(&init.spec, &init.bundle) {
            let field = format!("mounts[{}].destination", m.index);
            let target = secure_join(&init.rootfs, &m.destination)
                .map_err(|err| PathError::Path {
                    field: field.clone(),
                    path: m.destination.clone(),
                    message: err.to_string(),
                })
                .map_err(MicroVmError::from)?;
            if !m.is_file {
                ensure_dir(&field, &target).map_err(MicroVmError::from)?;
                continue;
            }
            ensure_file(&field, &target).map_err(MicroVmError::from)?;
            let bind_error = |source| PathError::Mount {
                field: format!("mounts[{}]", m.index),
                target: target.clone(),
                source,
            };
            mount(
                m.host_source(),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(bind_error)
            .map_err(MicroVmError::from)?;
            if m.readonly {
                let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
                mount(None::<&str>, &target, None::<&str>, flags, None::<&str>)
                    .map_err(bind_error)
                    .map_err(MicroVmError::from)?;
            }
        }
        // Directory binds and tmpfs mounts reach the guest as their own
        // devices, not through the rootfs: args[0] is looked up through them
        // as the guest will see them (the host's /usr bound, /bin a symlink
        // into it, or a symlink chain across several mounts).
        let overlays: Vec<Overlay> = guest_mounts(&init.spec, &init.bundle)
            .into_iter()
            .filter(|m| !m.is_file)
            .map(|m| Overlay {
                source: m.host_source().map(Path::to_path_buf),
                destination: m.destination,
            })
            .collect();
        let rootfs = init.rootfs.clone();
        resolve_executable_with(init.process(), |path| {
            secure_join_mounted(&rootfs, &overlays, path)
                .and_then(std::fs::metadata)
                .ok()
        })
        .map_err(MicroVmError::from)?;
        Ok(())
    }

    fn release(&self, spec: &Spec, state_dir: &Path) {
        if let Some(path) = joined_namespace(spec, LinuxNamespaceType::Network) {
            if let Err(err) = network::detach(&path, state_dir) {
                eprintln!("capsa: warning: {}", crate::error_chain(&err));
            }
        }
    }

    fn launch(&self, init: Init) -> Result<Infallible, BackendError> {
        // Past `start` the VMM is the container's process: any failure to
        // become it is reported like a VMM failure, with its status.
        match become_vmm(init) {
            Ok(never) => match never {},
            Err(err) => fail(&crate::error_chain(&err)),
        }
    }
}

/// The path of the spec's namespace of `kind`, if it names one.
fn joined_namespace(spec: &Spec, kind: LinuxNamespaceType) -> Option<PathBuf> {
    spec.linux()
        .as_ref()?
        .namespaces()
        .as_ref()?
        .iter()
        .find(|ns| ns.typ() == kind)?
        .path()
        .clone()
}

/// Gives the VMM's own UTS namespace the spec's hostname and NIS domain
/// name, as a container's gets them: a pod whose sandbox is a microVM has
/// its containers join that namespace by path, and [`uts_names`] reads the
/// pod's names there.
fn set_uts_names(spec: &Spec) -> Result<()> {
    if let Some(hostname) = spec.hostname() {
        nix::unistd::sethostname(hostname).map_err(|source| MicroVmError::UtsNames {
            field: "hostname",
            source,
        })?;
    }
    if let Some(domainname) = spec.domainname() {
        // SAFETY: the pointer and length describe a live byte slice.
        let ret = unsafe { libc::setdomainname(domainname.as_ptr().cast(), domainname.len()) };
        if ret != 0 {
            return Err(MicroVmError::UtsNames {
                field: "domainname",
                source: nix::Error::last(),
            });
        }
    }
    Ok(())
}

/// The hostname and NIS domain name of the UTS namespace at `path`.
fn uts_names(path: &Path) -> Result<(String, String)> {
    let error = |source| MicroVmError::Uts {
        path: path.to_path_buf(),
        source,
    };
    let namespace = std::fs::File::open(path).map_err(|e| error(nix_io(e)))?;
    let names = namespace::within(&namespace, nix::sched::CloneFlags::CLONE_NEWUTS, || {
        nix::sys::utsname::uname()
    })
    .and_then(|names| names)
    .map_err(error)?;
    let text = |s: &std::ffi::OsStr| s.to_string_lossy().into_owned();
    Ok((text(names.nodename()), text(names.domainname())))
}

/// What `prepare` makes while the init is privileged and outside the jail,
/// for the VMM.
struct Handover {
    net: Option<capsa_vmm::NetAttachment>,
    /// The listening exec socket in the state directory (`exec`).
    exec_socket: OwnedFd,
}

/// Jails and confines this process, then runs the microVM and exits with
/// the guest's status.
fn become_vmm(mut init: Init) -> Result<Infallible> {
    use std::os::fd::AsRawFd;

    let mut config = vm_config(&init.spec, &init.rootfs, &init.bundle)?;
    if let Some(handover) = init
        .handover
        .take()
        .and_then(|h| h.downcast::<Handover>().ok())
    {
        config.net = handover.net;
        config.exec_socket = Some(std::sync::Arc::new(handover.exec_socket));
    }
    let shared: Vec<_> = guest_mounts(&init.spec, &init.bundle)
        .into_iter()
        .filter(|m| !m.is_file)
        .collect();
    // A UTS namespace given by path (a pod's) holds the hostname when the
    // spec has none: a CRI container joins its sandbox's.
    if let Some(path) = joined_namespace(&init.spec, LinuxNamespaceType::Uts) {
        let (hostname, domainname) = uts_names(&path)?;
        let process = &mut config.process;
        if process.hostname.is_empty() {
            process.hostname = hostname;
        }
        if process.domainname.is_empty() {
            process.domainname = domainname;
        }
    }
    // A terminal is a host pty as the VMM's stdio, which the guest's
    // process uses: the guest asks the VMM for its terminal requests.
    if init.process().terminal().unwrap_or(false) {
        if let Some(socket) = init.console_socket.take() {
            crate::terminal::become_stdio(socket, init.process().console_size())
                .map_err(MicroVmError::Terminal)?;
        }
    }
    // The init's channel and fifo are not the guest's business.
    drop(init);
    let kept: Vec<i32> = config
        .net
        .iter()
        .map(|n| n.tap.as_raw_fd())
        .chain(config.exec_socket.iter().map(|s| s.as_raw_fd()))
        .collect();
    close_inherited_fds(&kept);
    enter_jail(&mut config, &shared)?;
    confine()?;
    // capsa blocked the forwarded signals before cloning the init, and
    // Rust's runtime ignores SIGPIPE: the VMM should die of a closed
    // stdout pipe like the process would.
    let _ = SigSet::all().thread_unblock();
    // SAFETY: restoring the default disposition installs no handler.
    let _ = unsafe { nix::sys::signal::signal(Signal::SIGPIPE, SigHandler::SigDfl) };
    match capsa_vmm::run(config) {
        // SAFETY: ends the process with the guest's status; the seccomp
        // filter is on and nothing is left to flush or run.
        Ok(exit) => unsafe { libc::_exit(exit.status()) },
        Err(err) => fail(&crate::error_chain(&err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_ram_follows_the_memory_limit() {
        assert_eq!(ram_size(None).ok(), Some(capsa_vmm::DEFAULT_RAM_SIZE));
        assert_eq!(ram_size(Some(-1)).ok(), Some(capsa_vmm::DEFAULT_RAM_SIZE));
        assert_eq!(ram_size(Some(128 << 20)).ok(), Some(120 << 20));
        assert_eq!(ram_size(Some(64 << 30)).ok(), Some(capsa_abi::MAX_RAM_SIZE));
        let err = ram_size(Some(23 << 20)).expect_err("too small").to_string();
        assert!(err.starts_with("linux.resources.memory.limit: "), "{err}");
        assert!(ram_size(Some(24 << 20)).is_ok());
    }

    #[test]
    fn only_bind_and_tmpfs_mounts_become_shared_dirs() {
        let json = serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/data", "type": "bind", "source": "/srv", "options": ["rbind", "ro"]},
                {"destination": "/rel", "source": "rel", "options": ["bind"]},
                {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "size=1m"]},
                {"destination": "/dev/shm", "type": "tmpfs", "source": "shm"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts"},
            ],
        });
        let spec: Spec = serde_json::from_value(json).expect("spec");
        let mounts = guest_mounts(&spec, Path::new("/bundle"));
        let summary: Vec<_> = mounts
            .into_iter()
            .map(|m| (m.index, m.source, m.destination, m.readonly))
            .collect();
        let host = |path: &str| GuestMountSource::Host(PathBuf::from(path));
        assert_eq!(
            summary,
            vec![
                (1, host("/srv"), PathBuf::from("/data"), true),
                (2, host("/bundle/rel"), PathBuf::from("/rel"), false),
                (
                    3,
                    GuestMountSource::Tmpfs(vec!["size=1m".into()]),
                    PathBuf::from("/tmp"),
                    false
                ),
                (
                    4,
                    GuestMountSource::Tmpfs(vec![]),
                    PathBuf::from("/dev/shm"),
                    false
                ),
            ]
        );
    }

    #[test]
    fn the_jail_always_has_its_own_namespaces() {
        let kinds: Vec<_> = MicroVmBackend
            .namespaces(&Spec::default())
            .iter()
            .map(|ns| (ns.typ(), ns.path().is_none()))
            .collect();
        assert_eq!(kinds.len(), 5);
        assert!(kinds.iter().all(|(_, new)| *new));
        assert!(!kinds.iter().any(|(t, _)| *t == LinuxNamespaceType::User));
    }

    #[test]
    fn the_spec_s_network_namespace_is_joined_and_no_other() {
        let json = serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "linux": {"namespaces": [
                {"type": "pid", "path": "/proc/1/ns/pid"},
                {"type": "network", "path": "/var/run/netns/pod"},
                {"type": "mount"},
            ]},
        });
        let spec: Spec = serde_json::from_value(json).expect("spec");
        let namespaces = MicroVmBackend.namespaces(&spec);
        let joined: Vec<_> = namespaces
            .iter()
            .filter_map(|ns| Some((ns.typ(), ns.path().clone()?)))
            .collect();
        assert_eq!(
            joined,
            vec![(
                LinuxNamespaceType::Network,
                PathBuf::from("/var/run/netns/pod")
            )]
        );
        assert_eq!(namespaces.len(), 5);
    }
}
