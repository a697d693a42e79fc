//! `capsa exec` into a microVM: a client of the VMM's exec socket
//! (`capsa_vmm::devices::exec::protocol`), which the init creates in the
//! state directory before the VMM is jailed. The socket is reachable only
//! by root: the state directory is root's.
//!
//! The client hands its stdio (or a pty's slave) to the VMM with the
//! process's spec, and its connection stands for the process: it relays
//! signals, ends with the process's status, and killing it kills the
//! process. With `--detach` a forked keeper holds the connection, so the
//! pid a shim or conmon waits on (the pid file's) ends as the process does.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use capsa_vmm::devices::exec::protocol::{self, Reply, Request};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::socket::{
    bind, connect, listen, recv, sendmsg, socket, AddressFamily, Backlog, ControlMessage, MsgFlags,
    SockFlag, SockType, UnixAddr,
};

/// The socket's name in the state directory.
pub const SOCKET: &str = "exec.sock";

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("cannot listen on {path}")]
    Listen {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("cannot reach the microVM's exec socket {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("cannot talk to the microVM")]
    Talk(#[source] nix::Error),
    #[error("the process is too large to send ({0} bytes; at most {max})", max = protocol::MAX_MESSAGE)]
    TooLarge(usize),
    #[error("the microVM ended before the process started")]
    Gone,
    #[error("the microVM answered something unexpected")]
    Protocol(#[source] protocol::Error),
    /// The guest's own one-line reason.
    #[error("{0}")]
    Failed(String),
}

type Result<T, E = ExecError> = std::result::Result<T, E>;

/// The socket in `dir` by a path short enough for a socket address
/// (shims' state directories overflow its 108 bytes): through `/proc`'s
/// link to the directory, opened as `dir_fd`.
fn socket_address(dir_fd: &std::fs::File) -> nix::Result<UnixAddr> {
    UnixAddr::new(&PathBuf::from(format!(
        "/proc/self/fd/{}/{SOCKET}",
        dir_fd.as_raw_fd()
    )))
}

fn open_dir(path: &Path) -> nix::Result<std::fs::File> {
    std::fs::File::open(path)
        .map_err(|e| nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
}

/// Makes the listening exec socket in `state_dir`, for the VMM to serve.
pub fn listen_in(state_dir: &Path) -> Result<OwnedFd> {
    let path = state_dir.join(SOCKET);
    let error = |source| ExecError::Listen {
        path: path.clone(),
        source,
    };
    let dir = open_dir(state_dir).map_err(error)?;
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(error)?;
    let addr = socket_address(&dir).map_err(error)?;
    bind(fd.as_raw_fd(), &addr).map_err(error)?;
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(|e| error(nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO))))?;
    let backlog = Backlog::new(16).map_err(error)?;
    listen(&fd, backlog).map_err(error)?;
    Ok(fd)
}

/// A process running in the microVM, held by its connection.
pub struct Session {
    socket: OwnedFd,
}

fn receive(socket: &OwnedFd) -> Result<Option<Reply>> {
    let mut buf = vec![0u8; protocol::MAX_MESSAGE];
    loop {
        match recv(socket.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(0) => return Ok(None),
            Ok(n) => {
                return protocol::parse_reply(&buf[..n])
                    .map(Some)
                    .map_err(ExecError::Protocol)
            }
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(ExecError::Talk(e)),
        }
    }
}

/// Asks the microVM whose state directory is `state_dir` to start the
/// process `spec` (encoded, see `capsa_abi::process`) with `stdio` as its
/// stdin, stdout and stderr; returns once it started.
pub fn start(state_dir: &Path, spec: &[u8], stdio: [BorrowedFd<'_>; 3]) -> Result<Session> {
    let path = state_dir.join(SOCKET);
    let message = Request::Start(spec).encode();
    if message.len() > protocol::MAX_MESSAGE {
        return Err(ExecError::TooLarge(message.len()));
    }
    let socket = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(ExecError::Talk)?;
    let connect_error = |source| ExecError::Connect {
        path: path.clone(),
        source,
    };
    let dir = open_dir(state_dir).map_err(connect_error)?;
    let addr = socket_address(&dir).map_err(connect_error)?;
    connect(socket.as_raw_fd(), &addr).map_err(connect_error)?;
    let fds = stdio.map(|fd| fd.as_raw_fd());
    sendmsg::<()>(
        socket.as_raw_fd(),
        &[IoSlice::new(&message)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(ExecError::Talk)?;
    match receive(&socket)? {
        Some(Reply::Started(_)) => Ok(Session { socket }),
        Some(Reply::Failed(why)) => Err(ExecError::Failed(why)),
        Some(Reply::Exited(_)) => Err(ExecError::Protocol(protocol::Error::UnknownTag)),
        None => Err(ExecError::Gone),
    }
}

/// How the process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    Exited(i32),
    Signaled(i32),
}

impl Ended {
    fn from_wait_status(status: i32) -> Ended {
        match status & 0x7f {
            0 => Ended::Exited((status >> 8) & 0xff),
            sig => Ended::Signaled(sig),
        }
    }

    /// The status a shell reports (`128 + N` for signal N).
    pub fn code(self) -> i32 {
        match self {
            Ended::Exited(code) => code,
            Ended::Signaled(sig) => 128 + sig,
        }
    }
}

impl Session {
    /// Sends the process `signal`.
    pub fn signal(&self, signal: Signal) -> Result<()> {
        let message = Request::Signal(signal as u32).encode();
        sendmsg::<()>(
            self.socket.as_raw_fd(),
            &[IoSlice::new(&message)],
            &[],
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(ExecError::Talk)?;
        Ok(())
    }

    /// Waits for the process to end, passing on the `forwarded` signals
    /// (which the caller has blocked) meanwhile. A microVM that stops
    /// first ended the process with it, as SIGKILL would.
    pub fn wait_forwarding(self, forwarded: SigSet) -> Result<Ended> {
        let relay = self.socket.try_clone().map_err(|e| {
            ExecError::Talk(nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
        })?;
        // A daemon thread: it ends with the process.
        std::thread::spawn(move || {
            let relay = Session { socket: relay };
            while let Ok(signal) = forwarded.wait() {
                if relay.signal(signal).is_err() {
                    return;
                }
            }
        });
        loop {
            match receive(&self.socket)? {
                Some(Reply::Exited(status)) => return Ok(Ended::from_wait_status(status)),
                Some(_) => continue,
                None => return Ok(Ended::Signaled(libc::SIGKILL)),
            }
        }
    }
}

/// Ends this process as `ended` says: with its exit code, or killed by its
/// signal, so whoever waits on this pid (a shim, conmon) sees what the
/// guest process did.
pub fn end_like(ended: Ended) -> ! {
    if let Ended::Signaled(sig) = ended {
        if let Ok(signal) = Signal::try_from(sig) {
            // SAFETY: restoring the default disposition installs no handler.
            let _ =
                unsafe { nix::sys::signal::signal(signal, nix::sys::signal::SigHandler::SigDfl) };
            let mut set = SigSet::empty();
            set.add(signal);
            let _ = set.thread_unblock();
            let _ = nix::sys::signal::raise(signal);
        }
    }
    std::process::exit(ended.code())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_statuses_decode_as_wait_does() {
        assert_eq!(Ended::from_wait_status(3 << 8), Ended::Exited(3));
        assert_eq!(Ended::from_wait_status(9), Ended::Signaled(9));
        assert_eq!(Ended::Signaled(15).code(), 143);
        assert_eq!(Ended::Exited(0).code(), 0);
    }
}
