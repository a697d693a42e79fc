//! The virtio-mmio transport, version 2 (virtio 1.2 §4.2.2).

use alloc::vec::Vec;

use super::queue::Virtqueue;
use crate::arch::{control_write, mmio_read32, mmio_write32};
use capsa_abi::control;

const MAGIC: u64 = 0x000;
const VERSION: u64 = 0x004;
const DEVICE_ID: u64 = 0x008;
const DEVICE_FEATURES: u64 = 0x010;
const DEVICE_FEATURES_SEL: u64 = 0x014;
const DRIVER_FEATURES: u64 = 0x020;
const DRIVER_FEATURES_SEL: u64 = 0x024;
const QUEUE_SEL: u64 = 0x030;
const QUEUE_NUM_MAX: u64 = 0x034;
const QUEUE_NUM: u64 = 0x038;
const QUEUE_READY: u64 = 0x044;
const QUEUE_NOTIFY: u64 = 0x050;
const STATUS: u64 = 0x070;
const QUEUE_DESC_LOW: u64 = 0x080;
const QUEUE_DESC_HIGH: u64 = 0x084;
const QUEUE_DRIVER_LOW: u64 = 0x090;
const QUEUE_DRIVER_HIGH: u64 = 0x094;
const QUEUE_DEVICE_LOW: u64 = 0x0a0;
const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
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
    NotVirtio,
    WrongDevice,
    FeaturesRejected,
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
    /// `queue_count` queues of up to `max_size` entries and sets DRIVER_OK.
    /// Every queue the device has gets set up, used or not, because a device
    /// may activate only once all of its queues are ready.
    ///
    /// The register stores go to the VMM as one batch (one exit instead of
    /// ~35, see `capsa_abi::control::MMIO_BATCH_LEN`), checked by reading
    /// the status back; a device that did not go live is set up register
    /// by register.
    pub fn init(
        &self,
        device_id: u32,
        queue_count: u32,
        max_size: u16,
    ) -> Result<Vec<Virtqueue>, InitError> {
        if let Some(queues) = self.init_batched(queue_count, max_size)? {
            return Ok(queues);
        }
        self.init_by_register(device_id, queue_count, max_size)
    }

    /// The batched setup: queues of `max_size` entries rounded down to a
    /// power of two (the VMM's queues take up to 256, so it does not need
    /// asking); `None` if the status read back says the device is not live.
    fn init_batched(
        &self,
        queue_count: u32,
        max_size: u16,
    ) -> Result<Option<Vec<Virtqueue>>, InitError> {
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
        let status = self.read(STATUS);
        Ok((status & (live | STATUS_FAILED | STATUS_NEEDS_RESET) == live).then_some(queues))
    }

    fn init_by_register(
        &self,
        device_id: u32,
        queue_count: u32,
        max_size: u16,
    ) -> Result<Vec<Virtqueue>, InitError> {
        if self.read(MAGIC) != 0x7472_6976 || self.read(VERSION) != 2 {
            return Err(InitError::NotVirtio);
        }
        if self.read(DEVICE_ID) != device_id {
            return Err(InitError::WrongDevice);
        }
        self.write(STATUS, 0);
        self.write(STATUS, STATUS_ACKNOWLEDGE);
        self.write(STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        self.write(DEVICE_FEATURES_SEL, 1);
        if self.read(DEVICE_FEATURES) & FEATURE_VERSION_1_HIGH == 0 {
            self.write(STATUS, STATUS_FAILED);
            return Err(InitError::FeaturesRejected);
        }
        self.write(DRIVER_FEATURES_SEL, 0);
        self.write(DRIVER_FEATURES, 0);
        self.write(DRIVER_FEATURES_SEL, 1);
        self.write(DRIVER_FEATURES, FEATURE_VERSION_1_HIGH);
        let status = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        self.write(STATUS, status);
        if self.read(STATUS) & STATUS_FEATURES_OK == 0 {
            self.write(STATUS, STATUS_FAILED);
            return Err(InitError::FeaturesRejected);
        }
        let mut queues = Vec::new();
        for index in 0..queue_count {
            self.write(QUEUE_SEL, index);
            let max = self.read(QUEUE_NUM_MAX);
            if max == 0 {
                break;
            }
            let mut size = max_size.min(u16::try_from(max).unwrap_or(u16::MAX));
            // Largest power of two not above the limit.
            size = 1 << (15 - size.leading_zeros().min(15));
            let q = Virtqueue::new(size).ok_or(InitError::NoMemory)?;
            self.write(QUEUE_NUM, u32::from(size));
            let split = |a: u64| (a as u32, (a >> 32) as u32);
            let (lo, hi) = split(q.desc_addr());
            self.write(QUEUE_DESC_LOW, lo);
            self.write(QUEUE_DESC_HIGH, hi);
            let (lo, hi) = split(q.avail_addr());
            self.write(QUEUE_DRIVER_LOW, lo);
            self.write(QUEUE_DRIVER_HIGH, hi);
            let (lo, hi) = split(q.used_addr());
            self.write(QUEUE_DEVICE_LOW, lo);
            self.write(QUEUE_DEVICE_HIGH, hi);
            self.write(QUEUE_READY, 1);
            queues.push(q);
        }
        self.write(STATUS, status | STATUS_DRIVER_OK);
        Ok(queues)
    }

    /// Tells the device queue `index` has new buffers; the VMM processes
    /// them before this store returns.
    pub fn notify(&self, index: u32) {
        self.write(QUEUE_NOTIFY, index);
    }
}
