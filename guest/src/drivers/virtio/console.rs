//! virtio-console (virtio 1.2 §5.3), single port, no features: receive
//! queue 0 is stdin, transmit queue 1 is stdout (or stderr).
//!
//! End of input: the VMM completes a receive buffer with zero bytes (the
//! virtio console has no EOF of its own).
//!
//! When the spec asks for a terminal, the VMM's stdio is a host pty:
//! [`terminal_request`] has the VMM carry out the process's terminal
//! requests on it (virtio-console's own size field covers only the size).

use alloc::vec;
use alloc::vec::Vec;

use super::mmio::{InitError, MmioDevice};
use super::queue::{Buf, Virtqueue};
use crate::arch::{control_read, control_write};
use crate::errno::{Errno, Result};
use capsa_abi::control;

const RX: usize = 0;
const TX: usize = 1;
const RX_BUF: usize = 64 * 1024;
const PAGE: usize = 4096;

pub struct Console {
    dev: MmioDevice,
    queues: Vec<Virtqueue>,
    rx_buf: Vec<u8>,
    /// Received bytes not yet read: `rx_buf[pending.0..pending.1]`.
    pending: (usize, usize),
    eof: bool,
}

impl Console {
    /// # Safety
    /// `base` must be the MMIO window of a virtio-console device.
    pub unsafe fn new(base: u64) -> core::result::Result<Self, InitError> {
        // SAFETY: per the caller's contract.
        let dev = unsafe { MmioDevice::new(base) };
        let queues = dev.init(2, 256)?;
        if queues.len() < 2 {
            return Err(InitError::NotVirtio);
        }
        Ok(Self {
            dev,
            queues,
            rx_buf: vec![0; RX_BUF],
            pending: (0, 0),
            eof: false,
        })
    }

    pub fn write(&mut self, data: &[u8]) -> Result<usize> {
        // A buffer becomes one descriptor per physically contiguous run of
        // it, at worst one per page (frames are not contiguous): each
        // request spans no more pages than the queue has descriptors.
        let pages = usize::from(self.queues[TX].size()).max(1);
        let mut rest = data;
        while !rest.is_empty() {
            let start = rest.as_ptr() as usize;
            let end = (start & !(PAGE - 1)) + pages * PAGE;
            let (chunk, tail) = rest.split_at((end - start).min(rest.len()));
            rest = tail;
            if !self.queues[TX].push(&[Buf::readable(chunk)]) {
                return Err(Errno::EIO);
            }
            self.dev.notify(TX as u32);
            if self.queues[TX].pop_used().is_none() {
                return Err(Errno::EIO);
            }
        }
        Ok(data.len())
    }

    /// Collects a completed receive buffer, if any.
    fn harvest(&mut self) {
        if let Some((_, len)) = self.queues[RX].pop_used() {
            let len = (len as usize).min(self.rx_buf.len());
            if len == 0 {
                self.eof = true;
            }
            self.pending = (0, len);
        }
    }

    /// Posts the receive buffer (if not already posted) and notifies.
    fn post(&mut self) {
        if !self.queues[RX].outstanding() {
            let buf = Buf::writable(&mut self.rx_buf);
            self.queues[RX].push(&[buf]);
        }
        self.dev.notify(RX as u32);
        self.harvest();
    }

    /// Whether a read would not block.
    pub fn readable(&mut self) -> bool {
        if self.pending.0 < self.pending.1 || self.eof {
            return true;
        }
        // The VMM may have filled the posted buffer while we idled.
        self.harvest();
        if self.pending.0 < self.pending.1 || self.eof {
            return true;
        }
        if control_read(control::STDIN_READY) != 0 {
            self.post();
        } else if !self.queues[RX].outstanding() {
            // Leave a buffer posted without a notify (no exit): the VMM
            // watches stdin while the guest idles only if it has somewhere
            // to put the input, so without it a reader waiting for input
            // that arrives later would sleep forever.
            let buf = Buf::writable(&mut self.rx_buf);
            self.queues[RX].push(&[buf]);
        }
        self.pending.0 < self.pending.1 || self.eof
    }

    pub fn read(&mut self, out: &mut [u8], nonblocking: bool) -> Result<usize> {
        loop {
            if self.pending.0 < self.pending.1 {
                let n = out.len().min(self.pending.1 - self.pending.0);
                out[..n].copy_from_slice(&self.rx_buf[self.pending.0..self.pending.0 + n]);
                self.pending.0 += n;
                return Ok(n);
            }
            if self.eof {
                return Ok(0);
            }
            if out.is_empty() {
                return Ok(0);
            }
            self.post();
            if self.pending.0 < self.pending.1 || self.eof {
                continue;
            }
            if nonblocking {
                return Err(Errno::EAGAIN);
            }
            // Block until the VMM has input for us, then ask again.
            control_write(control::IDLE_NS, u64::MAX);
        }
    }
}

/// A terminal request (`capsa_abi::exec::TERMINAL_REQUESTS`) on the
/// process's own stream (0 stdin, 1 stdout, 2 stderr), its argument in
/// kernel memory: the VMM asks its own stdio, a host pty when the spec
/// asked for a terminal (else ENOTTY).
pub fn terminal_request(stream: u32, request: u32, arg: &mut [u8]) -> Result<()> {
    let mut words = [
        u64::from(stream) | u64::from(request) << 32,
        arg.as_mut_ptr() as u64,
        0,
    ];
    let at = words.as_mut_ptr();
    // The VMM reads the request during the write's exit and stores the
    // result then: memory in order around it.
    core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
    control_write(control::TERMINAL_REQUEST, at as u64);
    core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
    // SAFETY: `words` lives on the kernel stack until here; the VMM wrote
    // its third word during the exit.
    let result = unsafe { core::ptr::read_volatile(at.add(2)) } as i64;
    if cfg!(test) || result == 0 {
        Ok(())
    } else {
        Err(Errno(i32::try_from(-result).unwrap_or(25)))
    }
}
