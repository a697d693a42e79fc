//! The terminal of a foreground `capsa run` without `--console-socket`: the
//! pty master arrives over an internal socket and is copied to and from our
//! own stdio, with our terminal in raw mode meanwhile. Also the host ptys
//! both backends hand out over console sockets (runc's protocol: one
//! SCM_RIGHTS message whose data is the master's path).

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

use nix::fcntl::OFlag;
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use nix::sys::termios::{self, SetArg, Termios};
use oci_spec::runtime::Box as ConsoleSize;

/// A new pty: its master and its slave (neither the controlling terminal
/// of this process), the slave sized as `size` says.
pub fn open_pty(size: Option<ConsoleSize>) -> nix::Result<(OwnedFd, OwnedFd)> {
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let slave_name = ptsname_r(&master)?;
    let slave = nix::fcntl::open(
        slave_name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    if let Some(size) = size {
        let winsize = libc::winsize {
            ws_row: u16::try_from(size.height()).unwrap_or(u16::MAX),
            ws_col: u16::try_from(size.width()).unwrap_or(u16::MAX),
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize struct we own.
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &winsize) };
    }
    Ok((master.into(), slave))
}

/// Hands the pty's master to whoever listens on the console socket.
pub fn send_master(socket: &impl AsRawFd, master: &OwnedFd) -> nix::Result<()> {
    let fds = [master.as_raw_fd()];
    let name = b"/dev/ptmx";
    sendmsg::<()>(
        socket.as_raw_fd(),
        &[IoSlice::new(name)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )?;
    Ok(())
}

/// A terminal for this process (a container's, or a microVM's VMM whose
/// stdio the guest's process uses): a new pty whose master goes out over
/// `socket` and whose slave becomes stdio and the controlling terminal
/// (the caller leads its own session).
pub fn become_stdio(socket: OwnedFd, size: Option<ConsoleSize>) -> nix::Result<()> {
    let (master, slave) = open_pty(size)?;
    send_master(&socket, &master)?;
    drop(master);
    drop(socket);
    // SAFETY: TIOCSCTTY with arg 0 on a tty fd we own; we lead our own session.
    if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) } != 0 {
        return Err(nix::Error::last());
    }
    for target in 0..3 {
        // SAFETY: replacing stdio with the pty is exactly the intent; nothing
        // else in this process holds Rust handles to fds 0-2.
        let stdio = unsafe { nix::unistd::dup2_raw(&slave, target) }?;
        // The new fd is the process's stdio from now on: never close it.
        let _ = std::os::fd::IntoRawFd::into_raw_fd(stdio);
    }
    Ok(())
}

/// Restores our terminal's mode when dropped.
pub struct Proxy {
    saved: Option<Termios>,
    output: Option<std::thread::JoinHandle<()>>,
}

/// Receives the master fd the init sends (runc's console protocol).
fn receive_master(socket: &UnixStream) -> Option<OwnedFd> {
    let mut name = [0u8; 64];
    let mut iov = [IoSliceMut::new(&mut name)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .ok()?;
    for cmsg in msg.cmsgs().ok()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            let fd = *fds.first()?;
            // SAFETY: SCM_RIGHTS just installed this fd in our table; we own it.
            return Some(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
    None
}

fn copy(mut from: impl Read, mut to: impl Write) {
    let mut buf = [0u8; 8192];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 || to.write_all(&buf[..n]).is_err() {
            break;
        }
        let _ = to.flush();
    }
}

impl Proxy {
    /// Waits for the master and starts copying; None if the init never sent one.
    pub fn start(socket: &UnixStream) -> Option<Proxy> {
        let master = std::fs::File::from(receive_master(socket)?);
        let stdin = std::io::stdin();
        let mut size = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ/TIOCSWINSZ read and write a winsize we own.
        unsafe {
            if libc::ioctl(stdin.as_raw_fd(), libc::TIOCGWINSZ, &mut size) == 0 {
                libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size);
            }
        }
        let saved = termios::tcgetattr(&stdin).ok();
        if let Some(mode) = &saved {
            let mut raw = mode.clone();
            termios::cfmakeraw(&mut raw);
            let _ = termios::tcsetattr(&stdin, SetArg::TCSANOW, &raw);
        }
        let output = master.try_clone().ok()?;
        // Daemon threads: the input side may block on our stdin forever;
        // the process exits when the container does.
        std::thread::spawn(move || copy(std::io::stdin(), master));
        let output = std::thread::spawn(move || copy(output, std::io::stdout()));
        Some(Proxy {
            saved,
            output: Some(output),
        })
    }

    /// After the container exited: the master reads end-of-file once the
    /// last slave fd is gone, so this returns when all output is copied.
    pub fn finish(mut self) {
        if let Some(output) = self.output.take() {
            let _ = output.join();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(mode) = &self.saved {
            let _ = termios::tcsetattr(std::io::stdin(), SetArg::TCSANOW, mode);
        }
    }
}
