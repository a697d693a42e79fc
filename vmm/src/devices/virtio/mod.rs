//! virtio devices over the virtio-mmio transport (virtio 1.2).
//!
//! There is no interrupt controller: every request is completed during the
//! MMIO exit of its queue notification (or of an idle call, for input), and
//! the guest polls the used rings.

pub mod console;
pub mod fs;
pub mod mmio;
pub mod net;
pub mod queue;

use std::os::fd::RawFd;

use virtio_queue::Queue;

use crate::memory::GuestMemory;

/// `VIRTIO_F_VERSION_1`: the only transport feature offered.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// One virtio device type behind the transport.
pub trait VirtioDevice {
    /// The virtio device id (spec section 5).
    fn device_type(&self) -> u32;
    /// Device-specific feature bits (the transport adds `VIRTIO_F_VERSION_1`).
    fn features(&self) -> u64 {
        0
    }
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Reads the device configuration space (bounds are the device's job:
    /// out-of-range bytes read as zero).
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Handles a notification of queue `index`: processes available buffers.
    fn process_queue(&mut self, index: usize, queue: &mut Queue, mem: &GuestMemory);
    /// After a notify of any queue was processed, with all the queues.
    fn after_notify(&mut self, _queues: &mut [Queue], _mem: &GuestMemory) {}
    /// A host descriptor whose readability means input for the guest, given
    /// the current queues (None when no buffer could take input).
    fn input_fd(&self, _queues: &[Queue], _mem: &GuestMemory) -> Option<RawFd> {
        None
    }
    /// Moves available input into the queues.
    fn poll_input(&mut self, _queues: &mut [Queue], _mem: &GuestMemory) {}
    /// The driver reset the device.
    fn reset(&mut self) {}
}

/// Reads `data.len()` bytes of `config` at `offset`, zero past its end.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}
