//! The devices the guest sees: the capsa control registers and the virtio devices.

pub mod control;
pub mod exec;
pub mod virtio;

use std::cell::Cell;
use std::os::fd::RawFd;

use crate::hostio;
use crate::memory::GuestMemory;
use vm_memory::{Bytes, GuestAddress};

/// Carries out a terminal request (`capsa_abi::exec::TERMINAL_REQUESTS`)
/// on the host descriptor `fd` for the guest, its argument at `arg` in
/// guest RAM: 0, or a negated errno (`ENOTTY` for any other request or a
/// descriptor that is no terminal).
pub fn terminal_request(mem: &GuestMemory, fd: RawFd, request: u32, arg: GuestAddress) -> i64 {
    let Some(&(_, size)) = capsa_abi::exec::TERMINAL_REQUESTS
        .iter()
        .find(|(r, _)| *r == request)
    else {
        return -i64::from(libc::ENOTTY);
    };
    let fills = capsa_abi::exec::terminal_request_fills(request);
    // Room for the largest argument, whatever the request.
    let mut buf = [0u8; 64];
    if !fills && mem.read_slice(&mut buf[..size], arg).is_err() {
        return -i64::from(libc::EFAULT);
    }
    // SAFETY: one of the terminal requests above, with a buffer larger
    // than its argument.
    let ret = unsafe { libc::ioctl(fd, libc::c_ulong::from(request), buf.as_mut_ptr()) };
    if ret < 0 {
        return -i64::from(
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        );
    }
    if fills && mem.write_slice(&buf[..size], arg).is_err() {
        return -i64::from(libc::EFAULT);
    }
    0
}

/// The process's stdin as the control device and the stdin console share it.
#[derive(Debug)]
pub struct Stdin {
    fd: RawFd,
    eof_delivered: Cell<bool>,
}

impl Stdin {
    pub fn new(fd: RawFd) -> Self {
        Self {
            fd,
            eof_delivered: Cell::new(false),
        }
    }

    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// Data or end-of-file is waiting to be passed to the guest.
    pub fn ready(&self) -> bool {
        !self.eof_delivered.get() && hostio::readable_now(self.fd)
    }

    pub fn eof_delivered(&self) -> bool {
        self.eof_delivered.get()
    }

    pub fn set_eof_delivered(&self) {
        self.eof_delivered.set(true);
    }
}
