//! virtio-console (virtio 1.2 section 5.3), single port, no features: queue
//! 0 receives (host input to the guest), queue 1 transmits.
//!
//! Input is read from the host descriptor only when it is readable, so the
//! vCPU never blocks here; end-of-file is reported once, as a used receive
//! buffer of length zero.

use std::os::fd::RawFd;
use std::rc::Rc;

use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};

use super::{queue, VirtioDevice};
use crate::devices::Stdin;
use crate::hostio;
use crate::memory::GuestMemory;

pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
pub const QUEUE_SIZE: u16 = 256;
/// Largest single copy between a host descriptor and the guest.
pub const CHUNK: usize = 64 * 1024;

pub struct Console {
    input: Option<Rc<Stdin>>,
    output: RawFd,
}

impl Console {
    /// A console reading `input` (if any) and writing the guest's output to `output`.
    pub fn new(input: Option<Rc<Stdin>>, output: RawFd) -> Self {
        Self { input, output }
    }

    fn transmit(&mut self, queue: &mut Queue, mem: &GuestMemory) {
        let mut buf = Vec::new();
        while let Some(chain) = queue::pop(queue, mem) {
            let head = chain.head_index();
            for desc in chain.readable() {
                let mut addr = desc.addr();
                let mut left = desc.len() as usize;
                while left > 0 {
                    let n = left.min(CHUNK);
                    buf.resize(n, 0);
                    if mem.read_slice(&mut buf, addr).is_err() {
                        left = 0;
                        continue;
                    }
                    // Output errors (a closed pipe reader, a full disk) drop
                    // the data, as a console with nobody listening would.
                    if let Err(e) = hostio::write_all(self.output, &buf) {
                        if e.raw_os_error() == Some(libc::EPIPE) {
                            crate::signals::die_of_sigpipe();
                        }
                    }
                    left -= n;
                    addr = GuestAddress(addr.0.wrapping_add(n as u64));
                }
            }
            queue::add_used(queue, mem, head, 0);
        }
    }

    fn receive(&mut self, queue: &mut Queue, mem: &GuestMemory) {
        let Some(stdin) = self.input.clone() else {
            return;
        };
        let mut buf = Vec::new();
        while !stdin.eof_delivered() && hostio::readable_now(stdin.fd()) {
            let Some(chain) = queue::pop(queue, mem) else {
                return;
            };
            let head = chain.head_index();
            let writable: Vec<(GuestAddress, usize)> = chain
                .writable()
                .map(|d| (d.addr(), d.len() as usize))
                .collect();
            let capacity = writable
                .iter()
                .fold(0usize, |acc, (_, len)| acc.saturating_add(*len))
                .min(CHUNK);
            if capacity == 0 {
                // Nothing to write into: give the buffer back untouched
                // rather than make it look like end-of-file.
                queue::add_used(queue, mem, head, 0);
                continue;
            }
            buf.resize(capacity, 0);
            // An unreadable stdin ends like an empty one.
            let n = hostio::read(stdin.fd(), &mut buf).unwrap_or_default();
            if n == 0 {
                stdin.set_eof_delivered();
                queue::add_used(queue, mem, head, 0);
                return;
            }
            let mut done = 0;
            for (addr, len) in writable {
                if done == n {
                    break;
                }
                let take = len.min(n - done);
                if mem.write_slice(&buf[done..done + take], addr).is_err() {
                    break;
                }
                done += take;
            }
            queue::add_used(queue, mem, head, done as u32);
        }
    }
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u32 {
        capsa_abi::VIRTIO_ID_CONSOLE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_console_config { cols, rows, max_nr_ports, emerg_wr }:
        // no feature makes any of it valid.
        super::read_config_bytes(&[0; 12], offset, data);
    }

    fn process_queue(&mut self, index: usize, queue: &mut Queue, mem: &GuestMemory) {
        match index {
            RX_QUEUE => self.receive(queue, mem),
            TX_QUEUE => self.transmit(queue, mem),
            _ => {}
        }
    }

    fn input_fd(&self, queues: &[Queue], mem: &GuestMemory) -> Option<RawFd> {
        let stdin = self.input.as_ref()?;
        let rx = queues.get(RX_QUEUE)?;
        (!stdin.eof_delivered() && queue::has_available(rx, mem)).then(|| stdin.fd())
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
    use std::fs::File;
    use std::io::{Read, Write};
    use std::os::fd::{AsRawFd, FromRawFd};
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;

    fn pipe() -> (File, File) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for two descriptors.
        let ret = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK) };
        assert_eq!(ret, 0);
        // SAFETY: both descriptors are new and owned by nobody else.
        unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
    }

    fn raw(addr: u64, len: u32, flags: u32) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags as u16, 0))
    }

    #[test]
    fn transmit_writes_guest_bytes_to_the_output() {
        let mem = crate::memory::create(8 << 20, false).unwrap();
        let (mut out_r, out_w) = pipe();
        let mock_rx = MockSplitQueue::create(&mem, GuestAddress(0x10_0000), 16);
        let mock_tx = MockSplitQueue::create(&mem, GuestAddress(0x20_0000), 16);
        mem.write_slice(b"hello ", GuestAddress(0x30_0000)).unwrap();
        mem.write_slice(b"world", GuestAddress(0x30_1000)).unwrap();
        mock_tx
            .build_desc_chain(&[raw(0x30_0000, 6, 0), raw(0x30_1000, 5, 0)])
            .unwrap();
        // A descriptor past the end of RAM is skipped, not fatal.
        mock_tx
            .add_desc_chains(&[raw(u64::MAX - 2, 0xffff_ffff, 0)], 2)
            .unwrap();

        let mut t = MmioTransport::new(Console::new(None, out_w.as_raw_fd()), mem.clone());
        let q = |m: &MockSplitQueue<GuestMemory>| {
            (m.desc_table_addr().0, m.avail_addr().0, m.used_addr().0, 16)
        };
        activate(&mut t, &[q(&mock_rx), q(&mock_tx)]);
        w(&mut t, reg::QUEUE_NOTIFY, TX_QUEUE as u32);
        let mut got = [0u8; 11];
        out_r.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello world");
        assert_eq!(mock_tx.used().idx().load(), 2);
    }

    #[test]
    fn receive_delivers_input_then_eof_once() {
        let mem = crate::memory::create(8 << 20, false).unwrap();
        let (in_r, mut in_w) = pipe();
        let stdin = Rc::new(Stdin::new(in_r.as_raw_fd()));
        let mock_rx = MockSplitQueue::create(&mem, GuestAddress(0x10_0000), 16);
        let mock_tx = MockSplitQueue::create(&mem, GuestAddress(0x20_0000), 16);
        let mut t = MmioTransport::new(Console::new(Some(stdin.clone()), 1), mem.clone());
        let q = |m: &MockSplitQueue<GuestMemory>| {
            (m.desc_table_addr().0, m.avail_addr().0, m.used_addr().0, 16)
        };
        activate(&mut t, &[q(&mock_rx), q(&mock_tx)]);

        // No buffers yet: nothing to wait for.
        assert_eq!(t.input_fd(), None);
        mock_rx
            .add_desc_chains(
                &[
                    raw(0x30_0000, 4, VRING_DESC_F_WRITE),
                    raw(0x31_0000, 64, VRING_DESC_F_WRITE),
                ],
                0,
            )
            .unwrap();
        assert_eq!(t.input_fd(), Some(in_r.as_raw_fd()));
        // Notified with no input: buffers stay with the device.
        w(&mut t, reg::QUEUE_NOTIFY, RX_QUEUE as u32);
        assert_eq!(mock_rx.used().idx().load(), 0);

        in_w.write_all(b"abcdef").unwrap();
        assert!(stdin.ready());
        t.poll_input();
        assert_eq!(mock_rx.used().idx().load(), 2);
        let mut got = [0u8; 4];
        mem.read_slice(&mut got, GuestAddress(0x30_0000)).unwrap();
        assert_eq!(&got, b"abcd");
        let mut got = [0u8; 2];
        mem.read_slice(&mut got, GuestAddress(0x31_0000)).unwrap();
        assert_eq!(&got, b"ef");

        drop(in_w);
        t.poll_input(); // no buffer left for end-of-file
        assert!(!stdin.eof_delivered());
        mock_rx
            .add_desc_chains(&[raw(0x32_0000, 64, VRING_DESC_F_WRITE)], 2)
            .unwrap();
        w(&mut t, reg::QUEUE_NOTIFY, RX_QUEUE as u32);
        assert_eq!(mock_rx.used().idx().load(), 3);
        assert!(stdin.eof_delivered());
        assert!(!stdin.ready());
        assert_eq!(t.input_fd(), None);
    }
}
