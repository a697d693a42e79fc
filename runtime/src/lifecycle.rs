//! The OCI lifecycle, shared by both backends: create, start, run, kill,
//! delete, pause, resume.
//!
//! `create` validates everything first, then claims the id and records each
//! resource it makes in a guard that undoes them all if a later step fails,
//! so a failed create leaves no state directory, cgroup or process.

use std::fs;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use nix::fcntl::OFlag;
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::stat::Mode;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::backend::{Backend, BackendError, Init};
use crate::cgroups::{Cgroup, CgroupError};
use crate::container::ContainerBackend;
use crate::hooks::{self, HookError};
use crate::init;
use crate::microvm::MicroVmBackend;
use crate::paths::nix_io;
use crate::spec::{Bundle, Isolation, SpecError};
use crate::state::{self, ContainerState, StateError, Status, Store};
use crate::sync::{Channel, Message, SyncError};

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Sync(#[from] SyncError),
    #[error(transparent)]
    Hook(#[from] HookError),
    #[error("{0}")]
    Init(String),
    #[error("{path}: cannot create the exec fifo")]
    Fifo {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("--console-socket {path}: cannot connect")]
    ConsoleSocket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("process.terminal is set but no --console-socket was given")]
    NoConsoleSocket,
    #[error("linux.namespaces: cannot enter the pid namespace {path}")]
    PidNamespace {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("cannot create the container's init")]
    Clone(#[source] nix::Error),
    #[error("linux.uidMappings: cannot write {path}")]
    IdMap {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("process.oomScoreAdj: cannot set")]
    OomScoreAdj(#[source] std::io::Error),
    #[error("--pid-file {path}: cannot write")]
    PidFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("container {id:?} is {status}, not {wanted}")]
    WrongStatus {
        id: String,
        status: Status,
        wanted: &'static str,
    },
    /// Worded as runc's, which containerd's shim matches.
    #[error("container not running: {0:?} has stopped")]
    NotRunning(String),
    #[error("container {0:?} is still running (use --force to delete it)")]
    StillRunning(String),
    #[error("cannot signal container {id:?}")]
    Signal {
        id: String,
        #[source]
        source: nix::Error,
    },
    #[error("cannot start container {id:?}")]
    Start {
        id: String,
        #[source]
        source: nix::Error,
    },
    #[error("this command needs root (capsa runs containers as root)")]
    NotRoot,
    #[error("cannot exec into microVM {id:?}")]
    ExecMicroVm {
        id: String,
        #[source]
        source: crate::microvm::exec::ExecError,
    },
    #[error("--preserve-fds: a microVM's process gets only stdin, stdout and stderr")]
    ExecPreserveFds,
    #[error("cannot set up the exec'd process's terminal")]
    ExecTerminal(#[source] nix::Error),
    #[error("cannot stand for the exec'd process on the host (its signals, its keeper)")]
    ExecHost(#[source] nix::Error),
    #[error("cannot join container {id:?} to exec")]
    ExecJoin {
        id: String,
        #[source]
        source: nix::Error,
    },
    /// The exec'd process's own one-line setup error.
    #[error("{0}")]
    ExecFailed(String),
}

type Result<T, E = LifecycleError> = std::result::Result<T, E>;

pub struct CreateOptions<'a> {
    pub id: &'a str,
    pub bundle: &'a Path,
    pub isolation: Option<Isolation>,
    /// The backend when neither `isolation` nor the bundle's annotation
    /// names one: what the program's name says (see `Isolation::for_program`).
    pub default_isolation: Isolation,
    pub pid_file: Option<&'a Path>,
    pub console_socket: Option<&'a Path>,
    pub preserve_fds: i32,
}

/// Undoes a partial create.
struct CreateGuard<'a> {
    store: &'a Store,
    id: String,
    cgroup: Option<Cgroup>,
    child: Option<Pid>,
    armed: bool,
}

impl Drop for CreateGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(pid) = self.child {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
        }
        if let Some(cgroup) = &self.cgroup {
            let _ = cgroup.delete();
        }
        let _ = self.store.remove(&self.id);
    }
}

pub fn require_root() -> Result<()> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(LifecycleError::NotRoot)
    }
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_nanos(SystemTime::now()).to_string()
}

/// The backend that runs a container of this isolation.
fn backend_for(isolation: Isolation) -> &'static dyn Backend {
    match isolation {
        Isolation::Container => &ContainerBackend,
        Isolation::Microvm => &MicroVmBackend,
    }
}

/// Creates the container up to "created": the init waits for `start`.
/// Returns the saved state (its pid is a child of this process).
pub fn create(store: &Store, opts: &CreateOptions<'_>) -> Result<ContainerState> {
    create_with_console(store, opts, None)
}

/// `create`, where `own_console` (if given) receives the terminal's master
/// instead of a `--console-socket` path.
fn create_with_console(
    store: &Store,
    opts: &CreateOptions<'_>,
    own_console: Option<OwnedFd>,
) -> Result<ContainerState> {
    require_root()?;
    state::validate_id(opts.id)?;
    let bundle = Bundle::load(opts.bundle)?;
    let annotated = bundle.isolation_annotation()?;
    let isolation = opts
        .isolation
        .or(annotated)
        .unwrap_or(opts.default_isolation);
    let backend = backend_for(isolation);
    backend.check(&bundle)?;
    let terminal = bundle
        .spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    let console_socket = match (terminal, opts.console_socket, own_console) {
        (false, _, _) => None,
        (true, Some(path), _) => Some(OwnedFd::from(UnixStream::connect(path).map_err(
            |source| LifecycleError::ConsoleSocket {
                path: path.to_path_buf(),
                source,
            },
        )?)),
        (true, None, Some(own)) => Some(own),
        (true, None, None) => return Err(LifecycleError::NoConsoleSocket),
    };

    store.claim(opts.id)?;
    let mut guard = CreateGuard {
        store,
        id: opts.id.to_string(),
        cgroup: None,
        child: None,
        armed: true,
    };

    let fifo_path = store.fifo_path(opts.id);
    nix::unistd::mkfifo(&fifo_path, Mode::from_bits_truncate(0o600)).map_err(|source| {
        LifecycleError::Fifo {
            path: fifo_path.clone(),
            source,
        }
    })?;
    let fifo = nix::fcntl::open(
        &fifo_path,
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|source| LifecycleError::Fifo {
        path: fifo_path.clone(),
        source,
    })?;

    let linux = bundle.spec.linux().as_ref();
    let cgroup = Cgroup::create(
        linux
            .and_then(|l| l.cgroups_path().as_ref())
            .and_then(|p| p.to_str()),
        opts.id,
        backend.cgroup_resources(&bundle.spec).as_ref(),
    )?;
    guard.cgroup = Some(cgroup.clone());

    let namespaces = backend.namespaces(&bundle.spec);
    let new_namespaces: Vec<LinuxNamespaceType> = namespaces
        .iter()
        .filter(|ns| ns.path().is_none())
        .map(|ns| ns.typ())
        .collect();
    let clone_flags = new_namespaces
        .iter()
        .filter(|t| **t != LinuxNamespaceType::Cgroup)
        .fold(0i32, |flags, t| flags | *t as i32);
    let pid_ns_path = namespaces
        .iter()
        .find(|ns| ns.typ() == LinuxNamespaceType::Pid)
        .and_then(|ns| ns.path().clone());

    let (parent_channel, child_channel) = Channel::pair()?;
    let init = Init {
        id: opts.id.to_string(),
        spec: bundle.spec.clone(),
        bundle: bundle.dir.clone(),
        rootfs: bundle.rootfs.clone(),
        state_dir: store.dir(opts.id),
        channel: child_channel,
        fifo: Some(fifo),
        console_socket,
        preserve_fds: opts.preserve_fds,
        new_namespaces: new_namespaces.clone(),
        handover: None,
    };
    let pid = spawn_init(
        init,
        &parent_channel,
        clone_flags,
        pid_ns_path.as_deref(),
        backend,
    )?;
    guard.child = Some(pid);

    if new_namespaces.contains(&LinuxNamespaceType::User) {
        write_id_maps(pid, &bundle.spec)?;
    }
    cgroup.add_process(pid.as_raw())?;
    if let Some(adj) = bundle
        .spec
        .process()
        .as_ref()
        .and_then(|p| p.oom_score_adj())
    {
        fs::write(format!("/proc/{pid}/oom_score_adj"), adj.to_string())
            .map_err(LifecycleError::OomScoreAdj)?;
    }

    let mut state = ContainerState {
        id: opts.id.to_string(),
        bundle: bundle.dir.clone(),
        rootfs: bundle.rootfs.clone(),
        pid: pid.as_raw(),
        pid_start_time: state::process_start_time(pid.as_raw()).unwrap_or_default(),
        created: now_rfc3339(),
        isolation,
        paused: false,
        ready: false,
        cgroup: Some(cgroup),
        spec: bundle.spec.clone(),
    };
    // Saved now so a capsa killed during setup leaves state that `delete
    // --force` can clean (cgroup, init) rather than an orphaned cgroup.
    store.save(&state)?;

    parent_channel.send(&Message::Go)?;
    loop {
        match parent_channel.recv() {
            Ok(Message::RuntimeHooks) => {
                let json =
                    serde_json::to_vec(&state.oci_state(Status::Creating)).unwrap_or_default();
                let hooks = bundle.spec.hooks().as_ref();
                let result =
                    hooks::run_all("prestart", hooks.and_then(|h| h.prestart().as_ref()), &json)
                        .and_then(|()| {
                            hooks::run_all(
                                "createRuntime",
                                hooks.and_then(|h| h.create_runtime().as_ref()),
                                &json,
                            )
                        });
                match result {
                    Ok(()) => parent_channel.send(&Message::HooksDone)?,
                    Err(err) => {
                        let _ = parent_channel.send(&Message::Failed(err.to_string()));
                        return Err(err.into());
                    }
                }
            }
            Ok(Message::Ready) => break,
            Ok(Message::Failed(text)) => return Err(LifecycleError::Init(text)),
            Ok(_) => return Err(SyncError::Closed.into()),
            Err(SyncError::Closed) => {
                return Err(LifecycleError::Init(init_exit_reason(pid)));
            }
            Err(err) => return Err(err.into()),
        }
    }
    state.ready = true;
    store.save(&state)?;
    crate::trace::event("created");
    if let Some(path) = opts.pid_file {
        write_pid_file(path, pid.as_raw())?;
    }
    guard.armed = false;
    Ok(state)
}

fn init_exit_reason(pid: Pid) -> String {
    match waitpid(pid, None) {
        Ok(WaitStatus::Signaled(_, signal, _)) => {
            format!("the container's init was killed by {signal} during setup")
        }
        Ok(WaitStatus::Exited(_, code)) => {
            format!("the container's init exited with status {code} during setup")
        }
        _ => "the container's init exited during setup".into(),
    }
}

fn write_pid_file(path: &Path, pid: i32) -> Result<()> {
    let error = |source| LifecycleError::PidFile {
        path: path.to_path_buf(),
        source,
    };
    // Written beside the target and renamed, so readers never see it partial.
    let tmp = path.with_extension("capsa-tmp");
    fs::write(&tmp, pid.to_string()).map_err(error)?;
    fs::rename(&tmp, path).map_err(error)
}

fn write_id_maps(pid: Pid, spec: &Spec) -> Result<()> {
    let linux = spec.linux().as_ref();
    let format = |maps: Option<&Vec<oci_spec::runtime::LinuxIdMapping>>| -> String {
        maps.into_iter()
            .flatten()
            .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
            .collect()
    };
    for (file, maps) in [
        ("uid_map", linux.and_then(|l| l.uid_mappings().as_ref())),
        ("gid_map", linux.and_then(|l| l.gid_mappings().as_ref())),
    ] {
        let text = format(maps);
        if text.is_empty() {
            continue;
        }
        let path = format!("/proc/{pid}/{file}");
        fs::write(&path, text).map_err(|source| LifecycleError::IdMap { path, source })?;
    }
    Ok(())
}

/// Clones the init into its new namespaces with fork semantics (no new
/// stack: the child continues here with a copy of this address space).
fn spawn_init(
    init: Init,
    parent_channel: &Channel,
    clone_flags: i32,
    pid_ns_path: Option<&Path>,
    backend: &'static dyn Backend,
) -> Result<Pid> {
    // Joining a pid namespace only affects children, so enter it around the
    // clone and return to our own right after.
    let original_pid_ns = match pid_ns_path {
        Some(path) => {
            let pid_ns_error = |source| LifecycleError::PidNamespace {
                path: path.to_path_buf(),
                source,
            };
            let own = fs::File::open("/proc/self/ns/pid").map_err(|e| {
                pid_ns_error(nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
            })?;
            let target = fs::File::open(path).map_err(|e| {
                pid_ns_error(nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
            })?;
            nix::sched::setns(target, nix::sched::CloneFlags::CLONE_NEWPID)
                .map_err(pid_ns_error)?;
            Some(own)
        }
        None => None,
    };
    // SAFETY: a raw clone without CLONE_VM and with a null stack behaves like
    // fork(): the child gets a copy of this single-threaded process.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (clone_flags | libc::SIGCHLD) as libc::c_ulong,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_void>(),
            0 as libc::c_ulong,
        )
    };
    if ret == 0 {
        // The init must not hold capsa's end of the channel, or its error
        // reports would loop back to itself once capsa has gone.
        // SAFETY: closing an fd this (child) process owns a copy of; the
        // Channel value in the parent's memory image is never used here.
        unsafe { libc::close(parent_channel.as_fd().as_raw_fd()) };
        init::main(init, backend);
    }
    if let Some(own) = original_pid_ns {
        let _ = nix::sched::setns(own, nix::sched::CloneFlags::CLONE_NEWPID);
    }
    if ret < 0 {
        return Err(LifecycleError::Clone(nix::Error::last()));
    }
    // The init's ends of the channel, fifo and console socket stay in the
    // child only.
    drop(init);
    Ok(Pid::from_raw(ret as i32))
}

/// Lets the created container's init exec the process.
pub fn start(store: &Store, id: &str) -> Result<ContainerState> {
    let state = store.load(id)?;
    let status = state.status(store);
    if status != Status::Created {
        return Err(LifecycleError::WrongStatus {
            id: id.to_string(),
            status,
            wanted: "created",
        });
    }
    let fifo_path = store.fifo_path(id);
    let fifo = nix::fcntl::open(
        &fifo_path,
        OFlag::O_WRONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|source| LifecycleError::Start {
        id: id.to_string(),
        source,
    })?;
    nix::unistd::write(&fifo, &[1u8]).map_err(|source| LifecycleError::Start {
        id: id.to_string(),
        source,
    })?;
    let _ = fs::remove_file(&fifo_path);
    run_hooks_warning(&state, "poststart", Status::Running);
    Ok(state)
}

/// Signals the init, or with `all` every process in the cgroup. Answers as
/// runc 1.1 does, since containerd's shim parses the answer: `--all` on a
/// stopped container signals whatever is left in its cgroup and succeeds;
/// a plain kill of a stopped container fails with "container not running",
/// which the shim takes as "already gone".
pub fn kill_container(store: &Store, id: &str, signal: Signal, all: bool) -> Result<()> {
    let state = store.load(id)?;
    let status = state.status(store);
    if all {
        if let Some(cgroup) = &state.cgroup {
            let pids = match cgroup.pids() {
                Ok(pids) => pids,
                // A stopped container's cgroup may already be gone; then
                // there is nothing left to signal.
                Err(_) if status == Status::Stopped => Vec::new(),
                Err(err) => return Err(err.into()),
            };
            for pid in pids {
                let _ = kill(Pid::from_raw(pid), signal);
            }
            return Ok(());
        }
    }
    if status == Status::Stopped {
        if all {
            return Ok(());
        }
        return Err(LifecycleError::NotRunning(id.to_string()));
    }
    kill(Pid::from_raw(state.pid), signal).map_err(|source| LifecycleError::Signal {
        id: id.to_string(),
        source,
    })
}

/// Removes a stopped container (or any, with `force`): its processes, its
/// cgroup, its state; then runs the poststop hooks.
pub fn delete(store: &Store, id: &str, force: bool) -> Result<()> {
    let state = match store.load(id) {
        Ok(state) => state,
        // A directory without state is a create that died half-way.
        Err(StateError::NotFound(_)) if force && store.dir(id).exists() => {
            return Ok(store.remove(id)?);
        }
        Err(err) => return Err(err.into()),
    };
    let status = state.status(store);
    if status != Status::Stopped {
        if !force && status != Status::Created {
            return Err(LifecycleError::StillRunning(id.to_string()));
        }
        stop_all(&state)?;
    }
    backend_for(state.isolation).release(&state.spec, &store.dir(id));
    if let Some(cgroup) = &state.cgroup {
        cgroup.delete()?;
    }
    store.remove(id)?;
    run_hooks_warning(&state, "poststop", Status::Stopped);
    Ok(())
}

/// Runs the poststart or poststop hooks; the spec makes their failure a
/// warning, not an error, since the container's fate is already decided.
fn run_hooks_warning(state: &ContainerState, kind: &'static str, status: Status) {
    let hooks = state.spec.hooks().as_ref().and_then(|h| match kind {
        "poststart" => h.poststart().as_ref(),
        _ => h.poststop().as_ref(),
    });
    let json = serde_json::to_vec(&state.oci_state(status)).unwrap_or_default();
    if let Err(err) = hooks::run_all(kind, hooks, &json) {
        eprintln!("capsa: warning: {}", crate::error_chain(&err));
    }
}

/// SIGKILLs the init and everything in the cgroup, and waits until they are gone.
fn stop_all(state: &ContainerState) -> Result<()> {
    if let Some(cgroup) = &state.cgroup {
        // A frozen cgroup would hold the SIGKILL until thawed.
        let _ = cgroup.thaw();
    }
    let _ = kill(Pid::from_raw(state.pid), Signal::SIGKILL);
    wait_gone(state.pid, state.pid_start_time);
    if let Some(cgroup) = &state.cgroup {
        for pid in cgroup.pids().unwrap_or_default() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    Ok(())
}

/// Waits until `pid` (with this start time) has exited, through a pidfd so
/// nothing polls on a timer. Reaps it if it is our child.
fn wait_gone(pid: i32, start_time: u64) {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd >= 0 {
        // SAFETY: the syscall returned a fresh fd that nothing else owns.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        if state::process_start_time(pid) == Some(start_time) {
            let mut fds = [nix::poll::PollFd::new(
                pidfd.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            while let Err(nix::Error::EINTR) =
                nix::poll::poll(&mut fds, nix::poll::PollTimeout::NONE)
            {}
        }
    }
    let _ = waitpid(
        Pid::from_raw(pid),
        Some(nix::sys::wait::WaitPidFlag::WNOHANG),
    );
}

/// Applies new cgroup resources to a live container and records them, so
/// the state keeps describing what the container runs with.
pub fn update(
    store: &Store,
    id: &str,
    resources: &oci_spec::runtime::LinuxResources,
) -> Result<()> {
    let mut state = store.load(id)?;
    let status = state.status(store);
    if status == Status::Stopped {
        return Err(LifecycleError::WrongStatus {
            id: id.to_string(),
            status,
            wanted: "running",
        });
    }
    if let Some(cgroup) = &state.cgroup {
        cgroup.update(resources)?;
    }
    if let Some(mut linux) = state.spec.linux().clone() {
        linux.set_resources(Some(resources.clone()));
        state.spec.set_linux(Some(linux));
    }
    store.save(&state)?;
    Ok(())
}

pub fn pause(store: &Store, id: &str) -> Result<()> {
    set_paused(store, id, true)
}

pub fn resume(store: &Store, id: &str) -> Result<()> {
    set_paused(store, id, false)
}

fn set_paused(store: &Store, id: &str, paused: bool) -> Result<()> {
    let mut state = store.load(id)?;
    let status = state.status(store);
    let wanted = if paused {
        Status::Running
    } else {
        Status::Paused
    };
    if status != wanted {
        return Err(LifecycleError::WrongStatus {
            id: id.to_string(),
            status,
            wanted: if paused { "running" } else { "paused" },
        });
    }
    if let Some(cgroup) = &state.cgroup {
        if paused {
            cgroup.freeze()?;
        } else {
            cgroup.thaw()?;
        }
    }
    state.paused = paused;
    store.save(&state)?;
    Ok(())
}

/// What `capsa run` does in the foreground: create, start, forward signals
/// to the init, and return its exit code (128+N when killed by signal N).
pub fn run_foreground(store: &Store, opts: &CreateOptions<'_>) -> Result<i32> {
    // Blocked before the clone so none is lost; the init unblocks them
    // before it launches the process.
    let mut forwarded = crate::signal::forwarded_set();
    forwarded.add(Signal::SIGCHLD);
    forwarded
        .thread_block()
        .map_err(|source| LifecycleError::Signal {
            id: opts.id.to_string(),
            source,
        })?;

    // Without --console-socket, a terminal is proxied to our own stdio, as
    // runc does in the foreground.
    let (ours, theirs) = match opts.console_socket {
        None => {
            let (a, b) = UnixStream::pair().map_err(|source| LifecycleError::ConsoleSocket {
                path: PathBuf::from("(internal)"),
                source,
            })?;
            (Some(a), Some(OwnedFd::from(b)))
        }
        Some(_) => (None, None),
    };
    let state = create_with_console(store, opts, theirs)?;
    let pid = Pid::from_raw(state.pid);
    let started = start(store, opts.id);
    let terminal = state
        .spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    let code = match started {
        Ok(_) => {
            let proxy = match (terminal, ours) {
                (true, Some(socket)) => crate::terminal::Proxy::start(&socket),
                _ => None,
            };
            let code = wait_forwarding(pid, &forwarded);
            crate::trace::event("exited");
            // The kernel's OOM killer says nothing to the container; the
            // guest's reports itself on the console (see the microVM guest).
            if code == 137 && state.cgroup.as_ref().is_some_and(Cgroup::oom_killed) {
                eprintln!(
                    "capsa: out of memory: {} reached its memory limit and was killed",
                    opts.id
                );
            }
            if let Some(proxy) = proxy {
                proxy.finish();
            }
            code
        }
        Err(err) => {
            let _ = delete(store, opts.id, true);
            return Err(err);
        }
    };
    delete(store, opts.id, true)?;
    crate::trace::event("done");
    Ok(code)
}

fn wait_forwarding(pid: Pid, signals: &SigSet) -> i32 {
    loop {
        match waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, signal, _)) => return 128 + signal as i32,
            Ok(_) => {}
            Err(nix::Error::ECHILD) => return 255,
            Err(_) => {}
        }
        match signals.wait() {
            Ok(Signal::SIGCHLD) => {}
            Ok(signal) => {
                let _ = kill(pid, signal);
            }
            Err(_) => {}
        }
    }
}

/// `capsa exec` into a microVM: the VMM starts the process in its guest
/// (see `microvm::exec`); this process, or with `detach` a keeper forked
/// for it, stands for it on the host until it ends.
fn exec_in_microvm(state_dir: &Path, spec: &Spec, opts: ExecOptions<'_>) -> Result<i32> {
    use crate::microvm::exec::{self as vm_exec, ExecError};
    let vm_error = |source| match source {
        ExecError::Failed(why) => LifecycleError::ExecFailed(why),
        source => LifecycleError::ExecMicroVm {
            id: opts.id.to_string(),
            source,
        },
    };
    if opts.preserve_fds > 0 {
        return Err(LifecycleError::ExecPreserveFds);
    }
    let encoded = crate::microvm::encode_exec_process(spec, &opts.process).map_err(vm_error)?;
    // A terminal is a host pty whose slave is the process's stdio; its
    // master goes to the console socket, or to our own terminal proxy.
    let terminal = opts.process.terminal().unwrap_or(false);
    let (slave, proxy_socket) = if terminal {
        let size = opts.process.console_size();
        let (master, slave) =
            crate::terminal::open_pty(size).map_err(LifecycleError::ExecTerminal)?;
        let (receiver, sender) = match (opts.console_socket, opts.detach) {
            (Some(path), _) => (
                None,
                UnixStream::connect(path).map_err(|source| LifecycleError::ConsoleSocket {
                    path: path.to_path_buf(),
                    source,
                })?,
            ),
            (None, false) => {
                let (a, b) =
                    UnixStream::pair().map_err(|source| LifecycleError::ConsoleSocket {
                        path: PathBuf::from("(internal)"),
                        source,
                    })?;
                (Some(a), b)
            }
            (None, true) => return Err(LifecycleError::NoConsoleSocket),
        };
        crate::terminal::send_master(&sender, &master).map_err(LifecycleError::ExecTerminal)?;
        (Some(slave), receiver)
    } else {
        (None, None)
    };
    let (stdin, stdout, stderr) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
    let stdio = match &slave {
        Some(slave) => [slave.as_fd(); 3],
        None => [stdin.as_fd(), stdout.as_fd(), stderr.as_fd()],
    };
    let forwarded = crate::signal::forwarded_set();
    // Signals that come while the process starts are passed on after.
    forwarded.thread_block().map_err(LifecycleError::ExecHost)?;
    let session = vm_exec::start(state_dir, &encoded, stdio).map_err(vm_error)?;
    drop(slave);
    if opts.detach {
        // SAFETY: no thread has started in this process; the child only
        // waits on the session and exits.
        match unsafe { nix::unistd::fork() }.map_err(LifecycleError::ExecHost)? {
            nix::unistd::ForkResult::Child => {
                // The keeper holds nothing of the caller's: a pipe's reader
                // sees its end when the process closes it.
                if let Ok(null) = fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open("/dev/null")
                {
                    for target in 0..3 {
                        // SAFETY: replacing our stdio with /dev/null; nothing
                        // holds Rust handles to fds 0-2 in the keeper.
                        if let Ok(fd) = unsafe { nix::unistd::dup2_raw(&null, target) } {
                            let _ = std::os::fd::IntoRawFd::into_raw_fd(fd);
                        }
                    }
                }
                let _ = nix::unistd::setsid();
                let ended = session
                    .wait_forwarding(forwarded)
                    .unwrap_or(vm_exec::Ended::Exited(255));
                vm_exec::end_like(ended)
            }
            nix::unistd::ForkResult::Parent { child } => {
                drop(session);
                if let Some(path) = opts.pid_file {
                    write_pid_file(path, child.as_raw())?;
                }
                return Ok(0);
            }
        }
    }
    if let Some(path) = opts.pid_file {
        write_pid_file(path, std::process::id() as i32)?;
    }
    let proxy = proxy_socket.and_then(|socket| crate::terminal::Proxy::start(&socket));
    let ended = session.wait_forwarding(forwarded).map_err(vm_error)?;
    if let Some(proxy) = proxy {
        proxy.finish();
    }
    Ok(ended.code())
}

/// Pids of every process in the container's cgroup.
pub fn pids(store: &Store, id: &str) -> Result<Vec<i32>> {
    let state = store.load(id)?;
    match &state.cgroup {
        Some(cgroup) => Ok(cgroup.pids()?),
        None => Ok(vec![state.pid]),
    }
}

pub struct ExecOptions<'a> {
    pub id: &'a str,
    /// The process to run; `capsa exec` builds it from the container's own
    /// process (user, capabilities, rlimits, env) and the command line.
    pub process: oci_spec::runtime::Process,
    pub detach: bool,
    pub pid_file: Option<&'a Path>,
    pub console_socket: Option<&'a Path>,
    pub preserve_fds: i32,
}

/// The container init's namespaces that differ from ours, in the order to
/// join them (user first: it owns the others; mount last: after it, host
/// paths are gone).
fn namespaces_to_join(pid: i32) -> Vec<(fs::File, nix::sched::CloneFlags)> {
    use nix::sched::CloneFlags as F;
    let kinds = [
        ("user", F::CLONE_NEWUSER),
        ("ipc", F::CLONE_NEWIPC),
        ("uts", F::CLONE_NEWUTS),
        ("net", F::CLONE_NEWNET),
        ("cgroup", F::CLONE_NEWCGROUP),
        ("mnt", F::CLONE_NEWNS),
    ];
    kinds
        .iter()
        .filter(|(kind, _)| {
            let theirs = fs::read_link(format!("/proc/{pid}/ns/{kind}")).ok();
            theirs.is_some() && theirs != fs::read_link(format!("/proc/self/ns/{kind}")).ok()
        })
        .filter_map(|(kind, flag)| {
            Some((
                fs::File::open(format!("/proc/{pid}/ns/{kind}")).ok()?,
                *flag,
            ))
        })
        .collect()
}

/// `capsa exec`: runs another process inside a running container (its
/// namespaces, cgroup, and security settings). Returns its exit code, or 0
/// at once with `detach`.
pub fn exec(store: &Store, opts: ExecOptions<'_>) -> Result<i32> {
    require_root()?;
    let state = store.load(opts.id)?;
    let status = state.status(store);
    if status != Status::Running {
        return Err(LifecycleError::WrongStatus {
            id: opts.id.to_string(),
            status,
            wanted: "running",
        });
    }
    if state.isolation != Isolation::Container {
        return exec_in_microvm(&store.dir(opts.id), &state.spec, opts);
    }
    let join_error = |source| LifecycleError::ExecJoin {
        id: opts.id.to_string(),
        source,
    };
    let terminal = opts.process.terminal().unwrap_or(false);
    let (ours, console) = match (terminal, opts.console_socket) {
        (false, _) => (None, None),
        (true, Some(path)) => (
            None,
            Some(OwnedFd::from(UnixStream::connect(path).map_err(
                |source| LifecycleError::ConsoleSocket {
                    path: path.to_path_buf(),
                    source,
                },
            )?)),
        ),
        (true, None) if !opts.detach => {
            let (a, b) = UnixStream::pair().map_err(|source| LifecycleError::ConsoleSocket {
                path: PathBuf::from("(internal)"),
                source,
            })?;
            (Some(a), Some(OwnedFd::from(b)))
        }
        (true, None) => return Err(LifecycleError::NoConsoleSocket),
    };
    let namespaces = namespaces_to_join(state.pid);
    let own_pid_ns = fs::File::open("/proc/self/ns/pid").map_err(|e| join_error(nix_io(e)))?;
    let their_pid_ns =
        fs::File::open(format!("/proc/{}/ns/pid", state.pid)).map_err(|e| join_error(nix_io(e)))?;

    let mut forwarded = crate::signal::forwarded_set();
    forwarded.add(Signal::SIGCHLD);
    if !opts.detach {
        forwarded.thread_block().map_err(join_error)?;
    }
    // Errors in the child come back through this pipe; a successful exec
    // closes it (close-on-exec) without a word.
    let (error_read, error_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(join_error)?;
    nix::sched::setns(&their_pid_ns, nix::sched::CloneFlags::CLONE_NEWPID).map_err(join_error)?;
    // SAFETY: fork of a process that has started no threads yet (the
    // terminal proxy starts after); the child only joins namespaces, sets
    // up and execs, or reports an error and _exits.
    let forked = unsafe { nix::unistd::fork() };
    let _ = nix::sched::setns(&own_pid_ns, nix::sched::CloneFlags::CLONE_NEWPID);
    let child = match forked.map_err(join_error)? {
        nix::unistd::ForkResult::Child => {
            drop(error_read);
            let result: Result<std::convert::Infallible, String> = (|| {
                if let Some(cgroup) = &state.cgroup {
                    cgroup
                        .add_process(std::process::id() as i32)
                        .map_err(|e| crate::error_chain(&e))?;
                }
                for (file, flag) in &namespaces {
                    nix::sched::setns(file, *flag)
                        .map_err(|e| format!("cannot join namespace: {e}"))?;
                }
                // A container sharing the host's mount namespace has its
                // init chrooted: join its root the same way.
                if !namespaces
                    .iter()
                    .any(|(_, flag)| *flag == nix::sched::CloneFlags::CLONE_NEWNS)
                {
                    let root = format!("/proc/{}/root", state.pid);
                    nix::unistd::chroot(root.as_str())
                        .and_then(|()| nix::unistd::chdir("/"))
                        .map_err(|e| format!("cannot join the container's root {root}: {e}"))?;
                }
                let _ = nix::unistd::setsid();
                let seccomp = state
                    .spec
                    .linux()
                    .as_ref()
                    .and_then(|l| l.seccomp().clone());
                crate::container::process::exec_process(
                    &opts.process,
                    seccomp.as_ref(),
                    console,
                    opts.preserve_fds,
                )
                .map_err(|e| crate::error_chain(&e))
            })();
            let message = match result {
                Ok(never) => match never {},
                Err(message) => message,
            };
            let _ = nix::unistd::write(&error_write, message.as_bytes());
            // SAFETY: leave without running the parent's exit handlers.
            unsafe { libc::_exit(255) }
        }
        nix::unistd::ForkResult::Parent { child } => child,
    };
    drop(error_write);
    drop(console);
    let mut message = String::new();
    let _ = std::io::Read::read_to_string(&mut fs::File::from(error_read), &mut message);
    if !message.is_empty() {
        let _ = waitpid(child, None);
        return Err(LifecycleError::ExecFailed(message));
    }
    if let Some(path) = opts.pid_file {
        write_pid_file(path, child.as_raw())?;
    }
    if opts.detach {
        return Ok(0);
    }
    let proxy = ours.and_then(|socket| crate::terminal::Proxy::start(&socket));
    let code = wait_forwarding(child, &forwarded);
    if let Some(proxy) = proxy {
        proxy.finish();
    }
    Ok(code)
}
