//! `process.terminal`: a pty inside the container whose master side goes to
//! the caller over the console socket (`crate::terminal`).

use std::os::fd::{AsRawFd, OwnedFd};

use oci_spec::runtime::Box as ConsoleSize;

/// The process's terminal: a new pty whose master goes out over `socket`
/// and whose slave becomes stdio and the controlling terminal.
pub fn setup(socket: OwnedFd, size: Option<ConsoleSize>) -> nix::Result<()> {
    let (master, slave) = crate::terminal::open_pty(size)?;
    crate::terminal::send_master(&socket, &master)?;
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
