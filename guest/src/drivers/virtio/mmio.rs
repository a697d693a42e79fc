//! The virtio-mmio transport, version 2 (virtio 1.2 §4.2.2).

use alloc::vec::Vec;

use super::queue::Virtqueue;
use crate::arch::{control_write, mmio_read32, mmio_write32};
use capsa_abi::control;

const DRIVER_FEATURES: u64 = 0x020;
const DRIVER_FEATURES_SEL: u64 = 0x024;
const QUEUE_SEL: u64 = 0x030;
const QUEUE_NUM: u64 = 0x038;
const QUEUE_READY: u64 = 0x044;
const QUEUE_NOTIFY: u64 = 0x050;
const STATUS: u64 = 0x070;
const QUEUE_DESC_LOW: u64 = 0x080;
const QUEUE_DRIVER_LOW: u64 = 0x090;
const QUEUE_DEVICE_LOW: u64 = 0x0a0;
pub const CONFIG: u64 = 0x100;

const STATUS_ACKNOWLEDGE: u32 = 1;
const STATUS_DRIVER: u32 = 2;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;
const STATUS_NEEDS_RESET: u32 = 64;
const STATUS_FAILED: u32 = 128;
/// VIRTIO_F_VERSION_1, bit 32: the only feature we need.
const FEATURE_VERSION_1_HIGH: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitError {
    /// The device's configuration says it is not what the boot info listed.
    NotVirtio,
    /// The status read back after setup lacks DRIVER_OK (features or
    /// queues refused).
    NotLive,
    NoMemory,
}

pub struct MmioDevice {
    base: u64,
}

impl MmioDevice {
    /// # Safety
    /// `base` must be a virtio-mmio register window the VMM listed.
    pub unsafe fn new(base: u64) -> Self {
        Self { base }
    }

    fn read(&self, reg: u64) -> u32 {
        // SAFETY: `base` is a device window (see `new`); `reg` is in range.
        unsafe { mmio_read32(self.base + reg) }
    }

    fn write(&self, reg: u64, value: u32) {
        // SAFETY: as in `read`.
        unsafe { mmio_write32(self.base + reg, value) }
    }

    pub fn config_read32(&self, offset: u64) -> u32 {
        self.read(CONFIG + offset)
    }

    /// Resets and negotiates VIRTIO_F_VERSION_1 only, then sets up
    /// `queue_count` queues of `max_size` entries (rounded down to a power
    /// of two) and sets DRIVER_OK. Every queue the device has gets set up,
    /// used or not, because a device may activate only once all of its
    /// queues are ready.
    ///
    /// The register stores go to the VMM as one batch (one exit instead of
    /// ~35 of 20-40 µs each under PVM, see
    /// `capsa_abi::control::MMIO_BATCH_LEN`), and one read of the status
    /// checks the device went live. Nothing is asked first: the boot info
    /// names the device, the VMM that embeds this kernel always takes
    /// batches, and its queues take up to 256 entries.
    pub fn init(&self, queue_count: u32, max_size: u16) -> Result<Vec<Virtqueue>, InitError> {
        let size = 1u16 << (15 - max_size.max(1).leading_zeros().min(15));
        let mut batch: Vec<[u64; 2]> = Vec::new();
        let mut store = |reg: u64, value: u32| batch.push([self.base + reg, u64::from(value)]);
        let features_ok = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        store(STATUS, 0);
        store(STATUS, STATUS_ACKNOWLEDGE);
        store(STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        store(DRIVER_FEATURES_SEL, 0);
        store(DRIVER_FEATURES, 0);
        store(DRIVER_FEATURES_SEL, 1);
        store(DRIVER_FEATURES, FEATURE_VERSION_1_HIGH);
        store(STATUS, features_ok);
        let mut queues = Vec::new();
        for index in 0..queue_count {
            let q = Virtqueue::new(size).ok_or(InitError::NoMemory)?;
            store(QUEUE_SEL, index);
            store(QUEUE_NUM, u32::from(size));
            for (low, addr) in [
                (QUEUE_DESC_LOW, q.desc_addr()),
                (QUEUE_DRIVER_LOW, q.avail_addr()),
                (QUEUE_DEVICE_LOW, q.used_addr()),
            ] {
                store(low, addr as u32);
                store(low + 4, (addr >> 32) as u32);
            }
            store(QUEUE_READY, 1);
            queues.push(q);
        }
        store(STATUS, features_ok | STATUS_DRIVER_OK);
        // The batch lives in the identity-mapped kernel heap: its address
        // is guest-physical.
        control_write(control::MMIO_BATCH_ADDR, batch.as_ptr() as u64);
        control_write(control::MMIO_BATCH_LEN, batch.len() as u64);
        let live = features_ok | STATUS_DRIVER_OK;
        if self.read(STATUS) & (live | STATUS_FAILED | STATUS_NEEDS_RESET) != live {
            self.write(STATUS, STATUS_FAILED);
            return Err(InitError::NotLive);
        }
        Ok(queues)
    }

    /// Tells the device queue `index` has new buffers; the VMM processes
    /// them before this store returns.
    pub fn notify(&self, index: u32) {
        self.write(QUEUE_NOTIFY, index);
    }
}
