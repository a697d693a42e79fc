//! virtio-fs (virtio 1.2 §5.11): requests on request queue 1 (queue 0 is
//! the high-priority queue, set up but unused). The device carries FUSE
//! requests; their format is the file system's business (`crate::fs::fuse`):
//! here a request is a chain of buffers the device reads, then buffers it
//! writes.
//!
//! Buffers become descriptors as they are: a READ reply lands straight in
//! the application's buffer and a WRITE is sent from it (guest virtual =
//! guest physical), so file I/O costs one exit per 1 MiB and no copies.

use alloc::vec::Vec;

use super::mmio::{InitError, MmioDevice};
use super::queue::{Buf, Virtqueue};
use crate::errno::{Errno, Result};

const REQUEST_QUEUE: usize = 1;
/// Longest descriptor chain of one request.
pub const MAX_CHAIN: usize = 8;

pub struct VirtioFs {
    dev: MmioDevice,
    queues: Vec<Virtqueue>,
}

impl VirtioFs {
    /// # Safety
    /// `base` must be the MMIO window of a virtio-fs device.
    pub unsafe fn new(base: u64) -> core::result::Result<Self, InitError> {
        // SAFETY: per the caller's contract.
        let dev = unsafe { MmioDevice::new(base) };
        // Config: tag[36], then num_request_queues.
        let request_queues = dev.config_read32(36).clamp(1, 8);
        // A user buffer's pages need not be physically adjacent: one
        // descriptor per page of a `MAX_IO` request must fit.
        let queues = dev.init(1 + request_queues, 256)?;
        if queues.len() < 2 {
            return Err(InitError::NotVirtio);
        }
        Ok(Self { dev, queues })
    }

    /// Sends one request made of `readable` then `writable` buffers (empty
    /// ones left out) and returns how many bytes the device wrote.
    pub fn request(&mut self, readable: &[&[u8]], writable: &mut [&mut [u8]]) -> Result<u32> {
        let mut bufs = [Buf {
            addr: 0,
            len: 0,
            writable: false,
        }; MAX_CHAIN];
        let mut n = 0;
        for b in readable.iter().filter(|b| !b.is_empty()) {
            *bufs.get_mut(n).ok_or(Errno::EINVAL)? = Buf::readable(b);
            n += 1;
        }
        for b in writable.iter_mut().filter(|b| !b.is_empty()) {
            *bufs.get_mut(n).ok_or(Errno::EINVAL)? = Buf::writable(b);
            n += 1;
        }
        let q = &mut self.queues[REQUEST_QUEUE];
        if !q.push(&bufs[..n]) {
            return Err(Errno::EIO);
        }
        self.dev.notify(REQUEST_QUEUE as u32);
        let (_, written) = self.queues[REQUEST_QUEUE].pop_used().ok_or(Errno::EIO)?;
        Ok(written)
    }
}

/// A virtio-fs device set up on its first request, so a mount the program
/// never touches costs no MMIO exits at boot (each 20-40 µs under PVM;
/// setting up a device takes dozens).
pub enum FsDevice {
    Pending { base: u64 },
    Ready(VirtioFs),
    Failed,
}

impl FsDevice {
    /// # Safety
    /// `base` must be the MMIO window of a virtio-fs device.
    pub unsafe fn pending(base: u64) -> Self {
        FsDevice::Pending { base }
    }

    /// [`VirtioFs::request`], setting the device up first if needed.
    pub fn request(&mut self, readable: &[&[u8]], writable: &mut [&mut [u8]]) -> Result<u32> {
        if let FsDevice::Pending { base } = *self {
            // SAFETY: `Pending` is only built by `pending`, whose caller
            // vouched for the window.
            *self = match unsafe { VirtioFs::new(base) } {
                Ok(t) => FsDevice::Ready(t),
                Err(_) => FsDevice::Failed,
            };
        }
        match self {
            FsDevice::Ready(t) => t.request(readable, writable),
            _ => Err(Errno::EIO),
        }
    }
}
