//! `process.terminal`: a pty inside the container whose master side goes to
//! the caller over the console socket (runc's protocol: one SCM_RIGHTS
//! message whose data is the master's path).

use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::fcntl::OFlag;
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use oci_spec::runtime::Box as ConsoleSize;

pub fn setup(socket: OwnedFd, size: Option<ConsoleSize>) -> nix::Result<()> {
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let slave_name = ptsname_r(&master)?;
    let slave = nix::fcntl::open(
        slave_name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY,
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
    let fds = [master.as_raw_fd()];
    let name = b"/dev/ptmx";
    sendmsg::<()>(
        socket.as_raw_fd(),
        &[IoSlice::new(name)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )?;
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
