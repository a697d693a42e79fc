//! virtio-net (virtio 1.2 section 5.1) over a TAP descriptor, with no
//! offloads: queue 0 receives, queue 1 transmits, every buffer is a
//! 12-byte `virtio_net_hdr_v1` and one Ethernet frame.
//!
//! The device moves frames and nothing else: it parses no header beyond
//! the virtio one and opens nothing on the guest's behalf. Frames come in
//! when the guest idles (the bus waits on the TAP), after each notify of
//! this device, and at timer ticks (`Bus::poll_ready_inputs`); transmit
//! chains are all written out during their notify.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};

use super::{queue, VirtioDevice};
use crate::hostio;
use crate::memory::GuestMemory;

pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
pub const QUEUE_SIZE: u16 = 256;
/// `sizeof(struct virtio_net_hdr_v1)`.
pub const HEADER: usize = 12;
/// The largest frame the TAP passes (64 KiB IP packet and Ethernet header).
pub const MAX_FRAME: usize = 65_535 + 14;

const VIRTIO_NET_F_MTU: u64 = 1 << 3;
const VIRTIO_NET_F_MAC: u64 = 1 << 5;
const VIRTIO_NET_F_STATUS: u64 = 1 << 16;
const VIRTIO_NET_S_LINK_UP: u16 = 1;

pub struct Net {
    tap: OwnedFd,
    mac: [u8; 6],
    mtu: u16,
    frame: Vec<u8>,
}

impl Net {
    /// A device moving frames between the guest and `tap` (non-blocking;
    /// each read gives one frame and each write sends one, as a TAP opened
    /// with IFF_TAP | IFF_NO_PI does).
    pub fn new(tap: OwnedFd, mac: [u8; 6], mtu: u16) -> Self {
        Self {
            tap,
            mac,
            mtu,
            frame: vec![0; MAX_FRAME],
        }
    }

    fn transmit(&mut self, queue: &mut Queue, mem: &GuestMemory) {
        let mut buf = Vec::new();
        while let Some(chain) = queue::pop(queue, mem) {
            let head = chain.head_index();
            buf.clear();
            let mut fits = true;
            for desc in chain.readable() {
                let n = desc.len() as usize;
                let at = buf.len();
                if at + n > HEADER + MAX_FRAME {
                    fits = false;
                    break;
                }
                buf.resize(at + n, 0);
                if mem.read_slice(&mut buf[at..], desc.addr()).is_err() {
                    fits = false;
                    break;
                }
            }
            // A chain too short for its header, too long, or outside RAM
            // is dropped; a full TAP drops the frame, as a busy link would.
            if fits && buf.len() > HEADER {
                let frame = &buf[HEADER..];
                // SAFETY: `frame` is valid for reads of its length; the TAP
                // is our own descriptor.
                let _ = unsafe {
                    libc::write(self.tap.as_raw_fd(), frame.as_ptr().cast(), frame.len())
                };
            }
            queue::add_used(queue, mem, head, 0);
        }
    }

    /// Moves frames from the TAP into receive buffers until either runs out.
    fn receive(&mut self, queue: &mut Queue, mem: &GuestMemory) {
        while queue::has_available(queue, mem) {
            let n = match hostio::read(self.tap.as_raw_fd(), &mut self.frame) {
                Ok(n) if n > 0 => n,
                _ => return,
            };
            let Some(chain) = queue::pop(queue, mem) else {
                return;
            };
            let head = chain.head_index();
            let writable: Vec<(GuestAddress, usize)> = chain
                .writable()
                .map(|d| (d.addr(), d.len() as usize))
                .collect();
            let room = writable
                .iter()
                .fold(0usize, |acc, (_, len)| acc.saturating_add(*len));
            if room < HEADER + n {
                // No room for the frame: it is lost, the buffer goes back.
                queue::add_used(queue, mem, head, 0);
                continue;
            }
            let mut header = [0u8; HEADER];
            // num_buffers: the frame is in this one buffer.
            header[10] = 1;
            let mut data = Vec::with_capacity(HEADER + n);
            data.extend_from_slice(&header);
            data.extend_from_slice(&self.frame[..n]);
            let mut done = 0;
            for (addr, len) in writable {
                if done == data.len() {
                    break;
                }
                let take = len.min(data.len() - done);
                if mem.write_slice(&data[done..done + take], addr).is_err() {
                    break;
                }
                done += take;
            }
            queue::add_used(queue, mem, head, done as u32);
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        capsa_abi::VIRTIO_ID_NET
    }

    fn features(&self) -> u64 {
        VIRTIO_NET_F_MAC | VIRTIO_NET_F_MTU | VIRTIO_NET_F_STATUS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_net_config { mac, status, max_virtqueue_pairs, mtu }.
        let mut config = [0u8; 12];
        config[..6].copy_from_slice(&self.mac);
        config[6..8].copy_from_slice(&VIRTIO_NET_S_LINK_UP.to_le_bytes());
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        config[10..12].copy_from_slice(&self.mtu.to_le_bytes());
        super::read_config_bytes(&config, offset, data);
    }

    fn process_queue(&mut self, index: usize, queue: &mut Queue, mem: &GuestMemory) {
        match index {
            RX_QUEUE => self.receive(queue, mem),
            TX_QUEUE => self.transmit(queue, mem),
            _ => {}
        }
    }

    fn after_notify(&mut self, queues: &mut [Queue], mem: &GuestMemory) {
        // Replies to what the guest just sent are often already here.
        self.poll_input(queues, mem);
    }

    fn input_fd(&self, queues: &[Queue], mem: &GuestMemory) -> Option<RawFd> {
        let rx = queues.get(RX_QUEUE)?;
        queue::has_available(rx, mem).then(|| self.tap.as_raw_fd())
    }

    fn poll_input(&mut self, queues: &mut [Queue], mem: &GuestMemory) {
        if let Some(rx) = queues.get_mut(RX_QUEUE) {
            if queue::usable(rx, mem) {
                self.receive(rx, mem);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::BusDevice;
    use crate::devices::virtio::mmio::tests::{activate, w};
    use crate::devices::virtio::mmio::{reg, MmioTransport};
    use std::os::fd::FromRawFd;
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;

    /// A datagram socket pair stands in for the TAP: one frame per message.
    fn tap_pair() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for two descriptors.
        let ret = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(ret, 0);
        // SAFETY: both descriptors are new and owned by nobody else.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    fn raw(addr: u64, len: u32, flags: u32) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags as u16, 0))
    }

    fn send(fd: &OwnedFd, data: &[u8]) {
        // SAFETY: `data` is valid for reads of its length.
        let n = unsafe { libc::send(fd.as_raw_fd(), data.as_ptr().cast(), data.len(), 0) };
        assert_eq!(n, data.len() as isize);
    }

    fn recv(fd: &OwnedFd) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 70_000];
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        (n >= 0).then(|| {
            buf.truncate(n as usize);
            buf
        })
    }

    const Q: u16 = 16;

    fn addrs(m: &MockSplitQueue<GuestMemory>) -> (u64, u64, u64, u16) {
        (m.desc_table_addr().0, m.avail_addr().0, m.used_addr().0, Q)
    }

    fn device(
        mem: &GuestMemory,
        rx: &MockSplitQueue<GuestMemory>,
        tx: &MockSplitQueue<GuestMemory>,
    ) -> (MmioTransport<Net>, OwnedFd) {
        let (tap, host) = tap_pair();
        let mut dev = MmioTransport::new(Net::new(tap, [2, 0, 0, 0, 0, 1], 1500), mem.clone());
        activate(&mut dev, &[addrs(rx), addrs(tx)]);
        (dev, host)
    }

    #[test]
    fn transmit_strips_the_header_across_descriptors() {
        let mem = crate::memory::create(8 << 20, false).unwrap();
        let rx = MockSplitQueue::create(&mem, GuestAddress(0x10_0000), Q);
        let tx = MockSplitQueue::create(&mem, GuestAddress(0x20_0000), Q);
        let (mut dev, host) = device(&mem, &rx, &tx);
        mem.write_slice(&[0u8; 8], GuestAddress(0x30_0000)).unwrap();
        mem.write_slice(b"\0\0\0\0frame", GuestAddress(0x30_1000))
            .unwrap();
        tx.build_desc_chain(&[raw(0x30_0000, 8, 0), raw(0x30_1000, 9, 0)])
            .unwrap();
        w(&mut dev, reg::QUEUE_NOTIFY, TX_QUEUE as u32);
        assert_eq!(recv(&host).as_deref(), Some(&b"frame"[..]));
        assert_eq!(tx.used().idx().load(), 1);
    }

    #[test]
    fn hostile_transmit_chains_are_dropped() {
        let mem = crate::memory::create(8 << 20, false).unwrap();
        let rx = MockSplitQueue::create(&mem, GuestAddress(0x10_0000), Q);
        let tx = MockSplitQueue::create(&mem, GuestAddress(0x20_0000), Q);
        let (mut dev, host) = device(&mem, &rx, &tx);
        tx.add_desc_chains(
            &[
                // Shorter than the header.
                raw(0x30_0000, 5, 0),
                // Outside guest RAM.
                raw(u64::MAX - 2, 0xffff_ffff, 0),
                // Longer than any frame.
                raw(0x30_0000, 0x7f_0000, 0),
            ],
            0,
        )
        .unwrap();
        w(&mut dev, reg::QUEUE_NOTIFY, TX_QUEUE as u32);
        assert_eq!(recv(&host), None);
        assert_eq!(tx.used().idx().load(), 3);
    }

    #[test]
    fn receive_prepends_the_header_and_drops_what_does_not_fit() {
        let mem = crate::memory::create(8 << 20, false).unwrap();
        let rx = MockSplitQueue::create(&mem, GuestAddress(0x10_0000), Q);
        let tx = MockSplitQueue::create(&mem, GuestAddress(0x20_0000), Q);
        let (mut dev, host) = device(&mem, &rx, &tx);
        assert_eq!(dev.input_fd(), None, "no buffers: nothing to wait for");
        rx.add_desc_chains(
            &[
                raw(0x30_0000, 30, VRING_DESC_F_WRITE),
                // Read-only: nothing can be written into it.
                raw(0x31_0000, 2048, 0),
                raw(0x32_0000, 2048, VRING_DESC_F_WRITE),
            ],
            0,
        )
        .unwrap();
        assert!(dev.input_fd().is_some());
        send(&host, b"0123456789");
        send(&host, b"lost: the second buffer is read-only");
        send(&host, b"third");
        dev.poll_input();
        assert_eq!(rx.used().idx().load(), 3);
        let used = |i: u16| rx.used().ring().ref_at(i.into()).unwrap().load().len();
        assert_eq!(used(0), (HEADER + 10) as u32);
        assert_eq!(used(1), 0);
        assert_eq!(used(2), (HEADER + 5) as u32);
        let mut got = [0u8; 22];
        mem.read_slice(&mut got, GuestAddress(0x30_0000)).unwrap();
        assert_eq!(got[10], 1, "num_buffers");
        assert_eq!(&got[12..], b"0123456789");
        let mut third = [0u8; 5];
        mem.read_slice(&mut third, GuestAddress(0x32_0000 + HEADER as u64))
            .unwrap();
        assert_eq!(&third, b"third");
        assert_eq!(dev.input_fd(), None, "every buffer used");
    }
}
