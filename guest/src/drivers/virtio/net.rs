//! virtio-net (virtio 1.2 §5.1) with no offloads: receive queue 0 and
//! transmit queue 1, each frame one buffer behind the 12-byte
//! `virtio_net_hdr_v1` (all zero: no checksum or segmentation help asked
//! or given).
//!
//! Receive buffers stay posted, one per descriptor; the VMM fills them
//! while the guest idles, at its exits and at timer ticks, and the guest
//! sees them by polling the used ring (there are no interrupts). Transmit
//! buffers are filled and posted in a batch and go out with one notify.

use alloc::vec;
use alloc::vec::Vec;

use super::mmio::{InitError, MmioDevice};
use super::queue::Virtqueue;

const RX: usize = 0;
const TX: usize = 1;
/// `virtio_net_hdr_v1`: flags, gso_type, hdr_len, gso_size, csum_start,
/// csum_offset, num_buffers.
pub const HEADER: usize = 12;
/// Frame buffers per queue: enough for a 64 KiB window of full frames in
/// flight each way without holding much of a small guest's kernel heap.
const BUFFERS: u16 = 64;

pub struct NetDevice {
    dev: MmioDevice,
    rx: Virtqueue,
    tx: Virtqueue,
    /// `BUFFERS` receive buffers of `stride` bytes, then as many transmit ones.
    rx_bufs: Vec<u8>,
    tx_bufs: Vec<u8>,
    stride: usize,
    tx_free: Vec<u16>,
    /// Transmit buffers posted since the last notify.
    tx_posted: bool,
}

impl NetDevice {
    /// # Safety
    /// `base` must be the MMIO window of a virtio-net device.
    pub unsafe fn new(base: u64, mtu: u16) -> Result<Self, InitError> {
        // SAFETY: per the caller's contract.
        let dev = unsafe { MmioDevice::new(base) };
        let mut queues = dev.init(2, 256)?;
        if queues.len() < 2 {
            return Err(InitError::NotVirtio);
        }
        let tx = queues.pop().ok_or(InitError::NotVirtio)?;
        let rx = queues.pop().ok_or(InitError::NotVirtio)?;
        let count = BUFFERS.min(rx.size()).min(tx.size());
        // Ethernet header and the MTU's payload behind the virtio header.
        let stride = (HEADER + 14 + usize::from(mtu)).next_multiple_of(64);
        let mut net = Self {
            dev,
            rx,
            tx,
            rx_bufs: vec![0; stride * usize::from(count)],
            tx_bufs: vec![0; stride * usize::from(count)],
            stride,
            tx_free: (0..count).rev().collect(),
            tx_posted: false,
        };
        for id in 0..count {
            net.repost(id);
        }
        Ok(net)
    }

    /// The largest frame (Ethernet header included) a buffer holds.
    pub fn max_frame(&self) -> usize {
        self.stride - HEADER
    }

    /// Whether a received frame is waiting.
    pub fn has_frame(&self) -> bool {
        self.rx.has_used()
    }

    /// The next received frame: its buffer id and length. The frame's
    /// bytes are `frame(id, len)` until `repost(id)`.
    pub fn receive(&mut self) -> Option<(u16, usize)> {
        let (id, len) = self.rx.pop_used()?;
        let id = u16::try_from(id)
            .ok()
            .filter(|&i| self.owns(i, &self.rx_bufs))?;
        // The device says how much it wrote; never more than the buffer.
        let len = (len as usize).min(self.stride).saturating_sub(HEADER);
        Some((id, len))
    }

    pub fn frame(&self, id: u16, len: usize) -> &[u8] {
        let start = usize::from(id) * self.stride + HEADER;
        &self.rx_bufs[start..start + len.min(self.stride - HEADER)]
    }

    /// Hands receive buffer `id` back to the device.
    pub fn repost(&mut self, id: u16) {
        let start = usize::from(id) * self.stride;
        let addr = self.rx_bufs[start..].as_ptr() as u64;
        self.rx.post_single(id, addr, self.stride as u32, true);
    }

    fn owns(&self, id: u16, bufs: &[u8]) -> bool {
        (usize::from(id) + 1) * self.stride <= bufs.len()
    }

    /// Whether a transmit buffer is free.
    pub fn can_transmit(&self) -> bool {
        !self.tx_free.is_empty()
    }

    /// A free transmit buffer for a frame of `len` bytes, or `None` while
    /// all are in flight (or the frame is too large for the link).
    pub fn transmit_buffer(&mut self, len: usize) -> Option<(u16, &mut [u8])> {
        if len > self.max_frame() {
            return None;
        }
        let id = self.tx_free.pop()?;
        let start = usize::from(id) * self.stride;
        let buf = &mut self.tx_bufs[start..start + HEADER + len];
        buf[..HEADER].fill(0);
        Some((id, &mut buf[HEADER..]))
    }

    /// Posts transmit buffer `id` holding a frame of `len` bytes; it goes
    /// out at the next `flush`.
    pub fn queue_frame(&mut self, id: u16, len: usize) {
        let start = usize::from(id) * self.stride;
        let addr = self.tx_bufs[start..].as_ptr() as u64;
        if self.tx.post_single(id, addr, (HEADER + len) as u32, false) {
            self.tx_posted = true;
        } else {
            self.tx_free.push(id);
        }
    }

    /// Sends what was queued with one notify (one exit for the batch);
    /// the device completes it before the notify returns.
    pub fn flush(&mut self) {
        if self.tx_posted {
            self.tx_posted = false;
            self.dev.notify(TX as u32);
        }
        while let Some((id, _)) = self.tx.pop_used() {
            if let Ok(id) = u16::try_from(id) {
                if self.owns(id, &self.tx_bufs) && !self.tx_free.contains(&id) {
                    self.tx_free.push(id);
                }
            }
        }
    }

    /// Tells the device receive buffers were handed back, so a frame it
    /// holds for want of one comes in now rather than at the next idle.
    pub fn notify_receive(&mut self) {
        self.dev.notify(RX as u32);
    }
}
