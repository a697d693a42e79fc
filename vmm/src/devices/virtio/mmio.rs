//! The virtio-mmio transport, version 2 (virtio 1.2 section 4.2.2): the
//! register file, feature negotiation, queue setup and notification.

use std::os::fd::RawFd;

use virtio_queue::{Queue, QueueT};

use super::{queue, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::bus::{Action, BusDevice};
use crate::memory::GuestMemory;

/// Register offsets.
pub mod reg {
    pub const MAGIC_VALUE: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const SHM_SEL: u64 = 0x0ac;
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    pub const SHM_BASE_LOW: u64 = 0x0b8;
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    pub const QUEUE_RESET: u64 = 0x0c0;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// "virt" little-endian.
pub const MAGIC: u32 = 0x7472_6976;
/// "QEMU"'s vendor id is taken; capsa reports its own ("cpsa").
pub const VENDOR: u32 = u32::from_le_bytes(*b"cpsa");

pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    pub const FAILED: u32 = 128;
}

/// `InterruptStatus` bit: the device used a buffer.
pub const INT_USED_BUFFER: u32 = 1;

pub struct MmioTransport<D> {
    device: D,
    mem: GuestMemory,
    queues: Vec<Queue>,
    queue_sel: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    status: u32,
    interrupt_status: u32,
}

impl<D: VirtioDevice> MmioTransport<D> {
    pub fn new(device: D, mem: GuestMemory) -> Self {
        let queues = Self::fresh_queues(&device);
        Self {
            device,
            mem,
            queues,
            queue_sel: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            status: 0,
            interrupt_status: 0,
        }
    }

    fn fresh_queues(device: &D) -> Vec<Queue> {
        device
            .queue_max_sizes()
            .iter()
            .filter_map(|&max| Queue::new(max).ok())
            .collect()
    }

    pub fn device(&self) -> &D {
        &self.device
    }

    fn device_features(&self) -> u64 {
        self.device.features() | VIRTIO_F_VERSION_1
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn reset(&mut self) {
        self.queues = Self::fresh_queues(&self.device);
        self.queue_sel = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.status = 0;
        self.interrupt_status = 0;
        self.device.reset();
    }

    fn driver_ok(&self) -> bool {
        self.status & status::DRIVER_OK != 0 && self.status & status::FAILED == 0
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let mut value = value;
        if value & status::FEATURES_OK != 0 && self.status & status::FEATURES_OK == 0 {
            let offered = self.device_features();
            let acceptable = self.driver_features & !offered == 0
                && self.driver_features & VIRTIO_F_VERSION_1 != 0;
            if !acceptable {
                value &= !status::FEATURES_OK;
            }
        }
        // DRIVER_OK without FEATURES_OK is a driver bug; do not go live.
        if value & status::DRIVER_OK != 0 && value & status::FEATURES_OK == 0 {
            value &= !status::DRIVER_OK;
        }
        self.status = value;
    }

    fn notify(&mut self, index: u32) {
        if !self.driver_ok() {
            return;
        }
        let Some(queue) = self.queues.get_mut(index as usize) else {
            return;
        };
        if !queue::usable(queue, &self.mem) {
            return;
        }
        self.device.process_queue(index as usize, queue, &self.mem);
        self.device.after_notify(&mut self.queues, &self.mem);
        self.interrupt_status |= INT_USED_BUFFER;
    }

    fn write_reg(&mut self, offset: u64, value: u32) {
        let set_addr = |q: &mut Queue, low: Option<u32>, high: Option<u32>, which: u8| {
            if q.ready() {
                return;
            }
            match which {
                0 => q.set_desc_table_address(low, high),
                1 => q.set_avail_ring_address(low, high),
                _ => q.set_used_ring_address(low, high),
            }
        };
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = value,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            reg::DRIVER_FEATURES if self.status & status::FEATURES_OK == 0 => {
                match self.driver_features_sel {
                    0 => {
                        self.driver_features =
                            (self.driver_features & !0xffff_ffff) | u64::from(value)
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
                    }
                    _ => {}
                }
            }
            reg::QUEUE_SEL => self.queue_sel = value,
            reg::QUEUE_NUM => {
                if let Some(q) = self.selected_queue() {
                    if !q.ready() {
                        if let Ok(size) = u16::try_from(value) {
                            q.set_size(size);
                        }
                    }
                }
            }
            reg::QUEUE_READY => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(value == 1);
                }
            }
            reg::QUEUE_RESET if value == 1 => {
                let max = self.device.queue_max_sizes().get(self.queue_sel as usize);
                if let Some(Ok(fresh)) = max.map(|&m| Queue::new(m)) {
                    if let Some(q) = self.selected_queue() {
                        *q = fresh;
                    }
                }
            }
            reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_DRIVER_LOW
            | reg::QUEUE_DRIVER_HIGH
            | reg::QUEUE_DEVICE_LOW
            | reg::QUEUE_DEVICE_HIGH => {
                let high = offset & 4 != 0;
                let which = ((offset - reg::QUEUE_DESC_LOW) / 0x10) as u8;
                if let Some(q) = self.selected_queue() {
                    if high {
                        set_addr(q, None, Some(value), which);
                    } else {
                        set_addr(q, Some(value), None, which);
                    }
                }
            }
            reg::QUEUE_NOTIFY => self.notify(value & 0xffff),
            reg::INTERRUPT_ACK => self.interrupt_status &= !value,
            reg::STATUS => self.set_status(value),
            reg::SHM_SEL => {}
            _ => {}
        }
    }

    fn read_reg(&self, offset: u64) -> u32 {
        let queue = self.queues.get(self.queue_sel as usize);
        match offset {
            reg::MAGIC_VALUE => MAGIC,
            reg::VERSION => 2,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => VENDOR,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device_features() as u32,
                1 => (self.device_features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => queue.map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready())),
            reg::QUEUE_RESET => 0,
            reg::INTERRUPT_STATUS => self.interrupt_status,
            reg::STATUS => self.status,
            reg::SHM_LEN_LOW | reg::SHM_LEN_HIGH => u32::MAX,
            reg::SHM_BASE_LOW | reg::SHM_BASE_HIGH => u32::MAX,
            reg::CONFIG_GENERATION => 0,
            _ => 0,
        }
    }
}

impl<D: VirtioDevice> BusDevice for MmioTransport<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            self.device.read_config(offset - reg::CONFIG, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Action {
        // The configuration space of console and fs is read-only; registers
        // take aligned 32-bit writes only.
        if offset < reg::CONFIG && data.len() == 4 && offset.is_multiple_of(4) {
            let value = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            self.write_reg(offset, value);
        }
        Action::Continue
    }

    fn input_fd(&self) -> Option<RawFd> {
        if !self.driver_ok() {
            return None;
        }
        self.device.input_fd(&self.queues, &self.mem)
    }

    fn poll_input(&mut self) {
        if !self.driver_ok() {
            return;
        }
        self.device.poll_input(&mut self.queues, &self.mem);
        self.interrupt_status |= INT_USED_BUFFER;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    /// A device that records which queues were notified.
    pub struct Dummy {
        pub notified: Rc<RefCell<Vec<usize>>>,
    }

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            42
        }
        fn features(&self) -> u64 {
            1 << 3
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 8]
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            super::super::read_config_bytes(b"abcdefgh", offset, data);
        }
        fn process_queue(&mut self, index: usize, _: &mut Queue, _: &GuestMemory) {
            self.notified.borrow_mut().push(index);
        }
    }

    pub fn w(t: &mut impl BusDevice, offset: u64, value: u32) {
        t.write(offset, &value.to_le_bytes());
    }

    pub fn r(t: &mut impl BusDevice, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        t.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    /// Drives the driver side of initialization (virtio 1.2 section 3.1.1)
    /// and sets up each queue with `(desc, avail, used, size)`.
    pub fn activate(t: &mut impl BusDevice, queues: &[(u64, u64, u64, u16)]) {
        w(t, reg::STATUS, 0);
        w(t, reg::STATUS, status::ACKNOWLEDGE);
        w(t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        w(t, reg::DRIVER_FEATURES_SEL, 1);
        w(t, reg::DRIVER_FEATURES, 1);
        w(t, reg::DRIVER_FEATURES_SEL, 0);
        w(t, reg::DRIVER_FEATURES, 0);
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        w(t, reg::STATUS, s);
        assert_eq!(r(t, reg::STATUS) & status::FEATURES_OK, status::FEATURES_OK);
        for (i, &(desc, avail, used, size)) in queues.iter().enumerate() {
            w(t, reg::QUEUE_SEL, i as u32);
            w(t, reg::QUEUE_NUM, u32::from(size));
            w(t, reg::QUEUE_DESC_LOW, desc as u32);
            w(t, reg::QUEUE_DESC_HIGH, (desc >> 32) as u32);
            w(t, reg::QUEUE_DRIVER_LOW, avail as u32);
            w(t, reg::QUEUE_DRIVER_HIGH, (avail >> 32) as u32);
            w(t, reg::QUEUE_DEVICE_LOW, used as u32);
            w(t, reg::QUEUE_DEVICE_HIGH, (used >> 32) as u32);
            w(t, reg::QUEUE_READY, 1);
        }
        w(t, reg::STATUS, s | status::DRIVER_OK);
    }

    fn transport() -> (MmioTransport<Dummy>, Rc<RefCell<Vec<usize>>>) {
        let notified = Rc::new(RefCell::new(Vec::new()));
        let mem = crate::memory::create(8 << 20, false).unwrap();
        (
            MmioTransport::new(
                Dummy {
                    notified: notified.clone(),
                },
                mem,
            ),
            notified,
        )
    }

    #[test]
    fn identification_registers() {
        let (mut t, _) = transport();
        assert_eq!(r(&mut t, reg::MAGIC_VALUE), MAGIC);
        assert_eq!(r(&mut t, reg::VERSION), 2);
        assert_eq!(r(&mut t, reg::DEVICE_ID), 42);
        assert_eq!(r(&mut t, reg::DEVICE_FEATURES), 1 << 3);
        w(&mut t, reg::DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&mut t, reg::DEVICE_FEATURES), 1);
        w(&mut t, reg::DEVICE_FEATURES_SEL, 7);
        assert_eq!(r(&mut t, reg::DEVICE_FEATURES), 0);
        w(&mut t, reg::QUEUE_SEL, 1);
        assert_eq!(r(&mut t, reg::QUEUE_NUM_MAX), 8);
        w(&mut t, reg::QUEUE_SEL, 2);
        assert_eq!(r(&mut t, reg::QUEUE_NUM_MAX), 0);
        assert_eq!(r(&mut t, reg::SHM_LEN_LOW), u32::MAX);
        let mut cfg = [0u8; 4];
        t.read(reg::CONFIG + 6, &mut cfg);
        assert_eq!(cfg, [b'g', b'h', 0, 0]);
        // Misaligned and odd-sized register accesses read as zero.
        let mut odd = [0xffu8; 2];
        t.read(reg::MAGIC_VALUE, &mut odd);
        assert_eq!(odd, [0, 0]);
    }

    #[test]
    fn features_must_include_version_1_and_be_offered() {
        let (mut t, _) = transport();
        w(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        w(&mut t, reg::DRIVER_FEATURES, 1 << 3);
        w(
            &mut t,
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        assert_eq!(r(&mut t, reg::STATUS) & status::FEATURES_OK, 0);
        w(&mut t, reg::DRIVER_FEATURES_SEL, 1);
        w(&mut t, reg::DRIVER_FEATURES, 1 | 2); // bit 33 is not offered
        w(
            &mut t,
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        assert_eq!(r(&mut t, reg::STATUS) & status::FEATURES_OK, 0);
        w(&mut t, reg::DRIVER_FEATURES, 1);
        w(
            &mut t,
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        assert_eq!(
            r(&mut t, reg::STATUS) & status::FEATURES_OK,
            status::FEATURES_OK
        );
    }

    #[test]
    fn notify_reaches_the_device_only_when_live_and_valid() {
        let (mut t, notified) = transport();
        w(&mut t, reg::QUEUE_NOTIFY, 0);
        assert!(notified.borrow().is_empty());
        activate(
            &mut t,
            &[(0x10_0000, 0x10_1000, 0x10_2000, 16), (0, 0, 0, 8)],
        );
        assert!(t.driver_ok());
        w(&mut t, reg::QUEUE_NOTIFY, 0);
        w(&mut t, reg::QUEUE_NOTIFY, 1); // queue 1 has invalid (zero) addresses... still valid at 0
        w(&mut t, reg::QUEUE_NOTIFY, 9);
        assert_eq!(notified.borrow()[0], 0);
        assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), INT_USED_BUFFER);
        w(&mut t, reg::INTERRUPT_ACK, INT_USED_BUFFER);
        assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), 0);
        // Queue registers cannot change under a live queue.
        w(&mut t, reg::QUEUE_SEL, 0);
        w(&mut t, reg::QUEUE_NUM, 4);
        assert_eq!(t.queues[0].size(), 16);
        // Reset.
        w(&mut t, reg::STATUS, 0);
        assert_eq!(r(&mut t, reg::STATUS), 0);
        assert_eq!(r(&mut t, reg::QUEUE_READY), 0);
    }

    #[test]
    fn hostile_register_writes_do_not_panic() {
        let (mut t, _) = transport();
        activate(&mut t, &[(u64::MAX - 7, u64::MAX - 3, u64::MAX, 16)]);
        for offset in (0..0x200).step_by(4) {
            for value in [0, 1, 0xffff, 0xffff_ffff] {
                w(&mut t, offset, value);
                w(&mut t, reg::QUEUE_NOTIFY, value);
                let _ = r(&mut t, offset);
            }
        }
        for len in [1usize, 2, 8] {
            t.write(reg::STATUS, &vec![0xff; len]);
            let mut data = vec![0; len];
            t.read(0x1ff, &mut data);
        }
    }
}
