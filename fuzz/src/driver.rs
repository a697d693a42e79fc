//! The driver side, as the guest kernel plays it: virtio-mmio register
//! accesses, and split virtqueue rings written by hand into guest memory.

use capsa_vmm::bus::BusDevice;
use capsa_vmm::devices::virtio::mmio::{reg, status};
use capsa_vmm::memory::GuestMemory;
use vm_memory::{Bytes, GuestAddress};

pub const VRING_DESC_F_NEXT: u16 = 1;
pub const VRING_DESC_F_WRITE: u16 = 2;

pub fn write32(dev: &mut dyn BusDevice, offset: u64, value: u32) {
    dev.write(offset, &value.to_le_bytes());
}

pub fn read32(dev: &mut dyn BusDevice, offset: u64) -> u32 {
    let mut data = [0u8; 4];
    dev.read(offset, &mut data);
    u32::from_le_bytes(data)
}

/// Reset, ACKNOWLEDGE, DRIVER, accept `VIRTIO_F_VERSION_1`, FEATURES_OK.
pub fn negotiate(dev: &mut dyn BusDevice) {
    write32(dev, reg::STATUS, 0);
    write32(dev, reg::STATUS, status::ACKNOWLEDGE);
    write32(dev, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    write32(dev, reg::DRIVER_FEATURES_SEL, 1);
    write32(dev, reg::DRIVER_FEATURES, 1); // bit 32: VIRTIO_F_VERSION_1
    write32(dev, reg::DRIVER_FEATURES_SEL, 0);
    write32(dev, reg::DRIVER_FEATURES, 0);
    write32(
        dev,
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
}

/// Sizes queue `index`, gives it its ring addresses and makes it ready.
pub fn setup_queue(dev: &mut dyn BusDevice, index: u32, ring: &Ring) {
    write32(dev, reg::QUEUE_SEL, index);
    write32(dev, reg::QUEUE_NUM, u32::from(ring.size));
    for (low, addr) in [
        (reg::QUEUE_DESC_LOW, ring.desc),
        (reg::QUEUE_DRIVER_LOW, ring.avail),
        (reg::QUEUE_DEVICE_LOW, ring.used),
    ] {
        write32(dev, low, addr as u32);
        write32(dev, low + 4, (addr >> 32) as u32);
    }
    write32(dev, reg::QUEUE_READY, 1);
}

/// DRIVER_OK: the device goes live.
pub fn driver_ok(dev: &mut dyn BusDevice) {
    write32(
        dev,
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
    );
}

pub fn notify(dev: &mut dyn BusDevice, queue: u32) {
    write32(dev, reg::QUEUE_NOTIFY, queue);
}

/// One buffer of a chain.
#[derive(Clone, Copy, Debug)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    /// Device-writable.
    pub write: bool,
}

/// A split virtqueue as its driver sees it (virtio 1.2 section 2.7).
#[derive(Clone, Debug)]
pub struct Ring {
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub size: u16,
    next_desc: u16,
    avail_idx: u16,
}

impl Ring {
    pub fn new(desc: u64, avail: u64, used: u64, size: u16) -> Self {
        Self {
            desc,
            avail,
            used,
            size,
            next_desc: 0,
            avail_idx: 0,
        }
    }

    /// Writes `descs` as one chain into the next free table slots and makes
    /// it available; returns its head index.
    pub fn publish(&mut self, mem: &GuestMemory, descs: &[Desc]) -> u16 {
        let head = self.next_desc;
        for (i, d) in descs.iter().enumerate() {
            let index = (head as usize + i) % self.size as usize;
            let next = ((index + 1) % self.size as usize) as u16;
            let mut flags = if d.write { VRING_DESC_F_WRITE } else { 0 };
            if i + 1 < descs.len() {
                flags |= VRING_DESC_F_NEXT;
            }
            let mut raw = [0u8; 16];
            raw[..8].copy_from_slice(&d.addr.to_le_bytes());
            raw[8..12].copy_from_slice(&d.len.to_le_bytes());
            raw[12..14].copy_from_slice(&flags.to_le_bytes());
            raw[14..].copy_from_slice(&next.to_le_bytes());
            mem.write_slice(&raw, GuestAddress(self.desc + 16 * index as u64))
                .expect("descriptor table in RAM");
        }
        self.next_desc = ((head as usize + descs.len()) % self.size as usize) as u16;
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        mem.write_obj(head, GuestAddress(slot))
            .expect("avail ring in RAM");
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .expect("avail ring in RAM");
        head
    }

    /// The device's used index.
    pub fn used_idx(&self, mem: &GuestMemory) -> u16 {
        mem.read_obj(GuestAddress(self.used + 2))
            .expect("used ring in RAM")
    }

    /// Used element `n` (modulo the ring size): (head, bytes written).
    pub fn used_elem(&self, mem: &GuestMemory, n: u16) -> (u32, u32) {
        let at = self.used + 4 + 8 * u64::from(n % self.size);
        let id = mem.read_obj(GuestAddress(at)).expect("used ring in RAM");
        let len = mem
            .read_obj(GuestAddress(at + 4))
            .expect("used ring in RAM");
        (id, len)
    }
}
