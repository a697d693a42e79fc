//! The devices the guest sees: the capsa control registers and the virtio devices.

pub mod control;
pub mod exec;
pub mod virtio;

use std::cell::Cell;
use std::os::fd::RawFd;

use crate::hostio;

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
