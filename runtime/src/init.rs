//! The container's init: the process `capsa create` clones into the new
//! namespaces. It finishes the namespace setup, lets its backend prepare,
//! reports ready, waits for `capsa start` on the exec fifo, then launches.
//!
//! It runs before any exec, so it must only do async-signal-safe-ish work
//! that is fine after a fork of a single-threaded process (capsa never starts
//! threads before creating the init).

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use nix::sched::{setns, unshare, CloneFlags};
use oci_spec::runtime::LinuxNamespaceType;

use crate::backend::{Backend, Init};
use crate::hooks::{self, HookError};
use crate::state::{OciState, Status};
use crate::sync::{Channel, Message, SyncError};

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("linux.namespaces: cannot join {kind} namespace {path}")]
    JoinNamespace {
        kind: String,
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("cannot create the cgroup namespace")]
    CgroupNamespace(#[source] nix::Error),
    #[error("linux.namespaces: cannot bring up the loopback interface")]
    Loopback(#[source] nix::Error),
    #[error("cannot wait for start")]
    WaitStart(#[source] std::io::Error),
    #[error("start was never requested")]
    NoStart,
    #[error(transparent)]
    Sync(#[from] SyncError),
    #[error(transparent)]
    Hook(#[from] HookError),
    #[error("the runtime's hooks failed: {0}")]
    RuntimeHooks(String),
}

/// What the init does besides running its backend: the hooks at the points
/// the spec puts them, and waiting for `start`.
impl Init {
    /// Asks capsa to run the prestart and createRuntime hooks (in the
    /// runtime's namespaces) and waits until they succeeded.
    pub fn run_runtime_hooks(&self) -> Result<(), InitError> {
        self.channel.send(&Message::RuntimeHooks)?;
        match self.channel.recv()? {
            Message::HooksDone => Ok(()),
            Message::Failed(text) => Err(InitError::RuntimeHooks(text)),
            _ => Err(InitError::Sync(SyncError::Closed)),
        }
    }

    /// The state hooks run inside the container see.
    pub fn state_json(&self, status: Status) -> Vec<u8> {
        let state = OciState {
            oci_version: self.spec.version(),
            id: &self.id,
            pid: std::process::id() as i32,
            status,
            bundle: &self.bundle,
            rootfs: &self.rootfs,
            created: "",
            owner: "",
            annotations: self.spec.annotations().as_ref(),
        };
        serde_json::to_vec(&state).unwrap_or_default()
    }

    pub fn run_hooks(&self, kind: &'static str, status: Status) -> Result<(), InitError> {
        let hooks = self.spec.hooks().as_ref();
        let list = hooks.and_then(|h| match kind {
            "createContainer" => h.create_container().as_ref(),
            "startContainer" => h.start_container().as_ref(),
            _ => None,
        });
        if list.is_some_and(|l| !l.is_empty()) {
            hooks::run_all(kind, list, &self.state_json(status))?;
        }
        Ok(())
    }

    /// Blocks until `capsa start` writes to the exec fifo.
    fn wait_for_start(&mut self) -> Result<(), InitError> {
        let Some(fifo) = self.fifo.take() else {
            return Ok(());
        };
        // The fifo was opened non-blocking so the open itself could not
        // wait; block on poll for the writer's byte instead.
        let mut fds = [nix::poll::PollFd::new(
            std::os::fd::AsFd::as_fd(&fifo),
            nix::poll::PollFlags::POLLIN,
        )];
        loop {
            match nix::poll::poll(&mut fds, nix::poll::PollTimeout::NONE) {
                Ok(_) => break,
                Err(nix::Error::EINTR) => continue,
                Err(err) => return Err(InitError::WaitStart(err.into())),
            }
        }
        let mut byte = [0u8; 1];
        let mut file = File::from(fifo);
        match file.read(&mut byte) {
            Ok(1) => Ok(()),
            Ok(_) => Err(InitError::NoStart),
            Err(err) => Err(InitError::WaitStart(err)),
        }
    }
}

/// Joins the namespaces given by path (the pid namespace was joined by capsa
/// before the clone), then creates the cgroup namespace, which must come
/// after capsa moved us into our cgroup.
fn enter_namespaces(init: &Init) -> Result<(), InitError> {
    let namespaces = init
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    // The user namespace first: the others are owned by it.
    let mut joined: Vec<_> = namespaces
        .iter()
        .filter(|ns| ns.path().is_some() && ns.typ() != LinuxNamespaceType::Pid)
        .collect();
    joined.sort_by_key(|ns| ns.typ() != LinuxNamespaceType::User);
    for ns in joined {
        let Some(path) = ns.path() else { continue };
        let join_error = |source| InitError::JoinNamespace {
            kind: ns.typ().to_string(),
            path: path.clone(),
            source,
        };
        let file = File::open(path)
            .map_err(|e| join_error(nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO))))?;
        setns(file, CloneFlags::from_bits_truncate(ns.typ() as i32)).map_err(join_error)?;
    }
    if init.has_new(LinuxNamespaceType::Cgroup) {
        unshare(CloneFlags::CLONE_NEWCGROUP).map_err(InitError::CgroupNamespace)?;
    }
    if init.has_new(LinuxNamespaceType::Network) {
        loopback_up().map_err(InitError::Loopback)?;
    }
    Ok(())
}

/// A new network namespace starts with `lo` down; runc brings it up, and
/// programs expect 127.0.0.1 to work.
fn loopback_up() -> nix::Result<()> {
    use std::os::fd::AsRawFd;
    let socket = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we own.
    unsafe {
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) != 0 {
            return Err(nix::Error::last());
        }
        request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) != 0 {
            return Err(nix::Error::last());
        }
    }
    Ok(())
}

fn run(mut init: Init, backend: &dyn Backend) -> Result<std::convert::Infallible, String> {
    let fail = |e: &dyn std::error::Error| crate::error_chain(e);
    init.channel.expect(Message::Go).map_err(|e| fail(&e))?;
    if init.has_new(LinuxNamespaceType::User) {
        // Become the namespace's root now that the maps exist, so files we
        // create are owned by a mapped id.
        nix::unistd::setresgid(0.into(), 0.into(), 0.into())
            .and_then(|()| nix::unistd::setresuid(0.into(), 0.into(), 0.into()))
            .map_err(|e| {
                format!("linux.uidMappings: cannot become root in the user namespace: {e}")
            })?;
    }
    enter_namespaces(&init).map_err(|e| fail(&e))?;
    // A session of its own, so the container is not tied to capsa's terminal.
    let _ = nix::unistd::setsid();
    backend.prepare(&mut init).map_err(|e| fail(&e))?;
    init.channel.send(&Message::Ready).map_err(|e| fail(&e))?;
    init.wait_for_start().map_err(|e| fail(&e))?;
    init.run_hooks("startContainer", Status::Running)
        .map_err(|e| fail(&e))?;
    crate::trace::event("launch");
    backend.launch(init).map_err(|e| fail(&e))
}

/// The init's entry point right after the clone. Never returns: errors
/// before `Ready` go to capsa over the channel, later ones to stderr.
pub fn main(init: Init, backend: &dyn Backend) -> ! {
    // A duplicate, because `run` consumes the init (and its channel) but
    // the error still has to reach capsa.
    // SAFETY: F_DUPFD_CLOEXEC on a socket fd this process owns.
    let channel_fd = unsafe {
        libc::fcntl(
            init.channel.as_raw_fd_for_errors(),
            libc::F_DUPFD_CLOEXEC,
            3,
        )
    };
    let message = match run(init, backend) {
        Ok(never) => match never {},
        Err(message) => message,
    };
    // Before Ready capsa is listening; afterwards the channel is closed
    // and the message goes to the container's stderr.
    let packet = {
        let mut p = vec![5u8];
        p.extend_from_slice(message.as_bytes());
        p
    };
    // SAFETY: plain send on a socket fd this process owns; failure is handled.
    let sent = unsafe {
        libc::send(
            channel_fd,
            packet.as_ptr().cast(),
            packet.len(),
            libc::MSG_NOSIGNAL,
        )
    };
    if sent < 0 {
        let text = CString::new(format!("capsa: {message}\n")).unwrap_or_default();
        // SAFETY: writing a valid buffer to fd 2.
        unsafe { libc::write(2, text.as_ptr().cast(), text.as_bytes().len()) };
    }
    // SAFETY: _exit ends the process without running capsa's atexit handlers
    // or flushing buffers that belong to the parent.
    unsafe { libc::_exit(1) }
}

impl Channel {
    fn as_raw_fd_for_errors(&self) -> i32 {
        std::os::fd::AsFd::as_fd(self).as_raw_fd()
    }
}
