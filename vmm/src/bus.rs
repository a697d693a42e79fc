//! The MMIO bus: guest-physical address ranges routed to devices.

use std::os::fd::RawFd;
use std::time::Duration;

use crate::hostio;
use crate::GuestExit;

/// What the vCPU loop does after a device handled an access.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Resume the guest.
    Continue,
    /// The guest's process ended; stop the VM.
    Exit(GuestExit),
    /// Block until a device has input or the timeout (`None`: none) passes.
    Idle(Option<Duration>),
    /// The guest kernel gave up; the message is its last debug message.
    Panic(String),
    /// Perform these 32-bit register stores (address, value) in order, as
    /// if the guest had made them (a batch, see `capsa_abi::control`).
    MmioWrites(Vec<(u64, u32)>),
    /// The guest registered its tick entry (`capsa_abi::control`).
    EnableTicks(crate::tick::TickEntry),
}

/// A device mapped on the bus. Offsets are relative to the device's base;
/// every access is at most 8 bytes. Nothing a guest does through these calls
/// may panic.
pub trait BusDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]) -> Action;
    /// A host descriptor whose readability means input for the guest, when
    /// the device can take input right now.
    fn input_fd(&self) -> Option<RawFd> {
        None
    }
    /// Moves available input to the guest (called after `input_fd` polled readable).
    fn poll_input(&mut self) {}
}

struct Mapping {
    base: u64,
    size: u64,
    device: Box<dyn BusDevice>,
}

/// Address ranges and their devices.
#[derive(Default)]
pub struct Bus {
    mappings: Vec<Mapping>,
}

/// The range overlaps a device already on the bus, or wraps around.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("MMIO range {base:#x}+{size:#x} overlaps another device or is empty")]
pub struct OverlapError {
    pub base: u64,
    pub size: u64,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(
        &mut self,
        base: u64,
        size: u64,
        device: Box<dyn BusDevice>,
    ) -> Result<(), OverlapError> {
        let end = base
            .checked_add(size)
            .filter(|_| size > 0)
            .ok_or(OverlapError { base, size })?;
        if self
            .mappings
            .iter()
            .any(|m| base < m.base + m.size && m.base < end)
        {
            return Err(OverlapError { base, size });
        }
        self.mappings.push(Mapping { base, size, device });
        Ok(())
    }

    /// The device covering the whole access `[addr, addr + len)` and the offset into it.
    fn find(&mut self, addr: u64, len: usize) -> Option<(&mut dyn BusDevice, u64)> {
        let m = self.mappings.iter_mut().find(|m| {
            addr >= m.base
                && addr
                    .checked_add(len as u64)
                    .is_some_and(|end| end <= m.base + m.size)
        })?;
        Some((m.device.as_mut(), addr - m.base))
    }

    /// Reads from a device; unmapped addresses read as zero.
    pub fn read(&mut self, addr: u64, data: &mut [u8]) {
        match self.find(addr, data.len()) {
            Some((device, offset)) => device.read(offset, data),
            None => data.fill(0),
        }
    }

    /// Writes to a device; writes to unmapped addresses are dropped.
    pub fn write(&mut self, addr: u64, data: &[u8]) -> Action {
        match self.find(addr, data.len()) {
            Some((device, offset)) => device.write(offset, data),
            None => Action::Continue,
        }
    }

    /// Performs a batch of register stores for the guest; only addresses
    /// in `allowed` are reached (the batch cannot stop the VM, idle, or
    /// start another batch), and whatever the stores ask of the loop is
    /// dropped.
    pub fn write_batch(&mut self, writes: &[(u64, u32)], allowed: std::ops::Range<u64>) {
        for &(addr, value) in writes {
            let fits = addr.checked_add(4).is_some_and(|end| end <= allowed.end);
            if addr >= allowed.start && fits {
                let _ = self.write(addr, &value.to_le_bytes());
            }
        }
    }

    /// Lets devices whose input is ready now move it to the guest, without
    /// blocking: at a timer tick, so a guest that computes or makes calls
    /// without exits still gets its network frames.
    pub fn poll_ready_inputs(&mut self) {
        for m in &mut self.mappings {
            if m.device.input_fd().is_some_and(hostio::readable_now) {
                m.device.poll_input();
            }
        }
    }

    /// Blocks until a device's input descriptor is readable or `timeout`
    /// passes, then lets the ready devices move their input to the guest.
    pub fn idle(&mut self, timeout: Option<Duration>) {
        let fds: Vec<RawFd> = self
            .mappings
            .iter()
            .filter_map(|m| m.device.input_fd())
            .collect();
        let ready = hostio::wait_readable(&fds, timeout);
        for m in &mut self.mappings {
            if m.device.input_fd().is_some_and(|fd| ready.contains(&fd)) {
                m.device.poll_input();
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    pub type Writes = Rc<RefCell<Vec<(u64, Vec<u8>)>>>;

    /// Records accesses; reads return the offset's low byte.
    #[derive(Default)]
    pub struct Recorder {
        pub writes: Writes,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) -> Action {
            self.writes.borrow_mut().push((offset, data.to_vec()));
            Action::Continue
        }
    }

    #[test]
    fn routes_by_range_and_rejects_overlaps() {
        let mut bus = Bus::new();
        let rec = Recorder::default();
        let writes = rec.writes.clone();
        bus.insert(0x1000, 0x100, Box::new(rec)).unwrap();
        assert!(bus
            .insert(0x10ff, 0x10, Box::new(Recorder::default()))
            .is_err());
        assert!(bus
            .insert(u64::MAX, 2, Box::new(Recorder::default()))
            .is_err());
        assert!(bus
            .insert(0x2000, 0, Box::new(Recorder::default()))
            .is_err());
        bus.insert(0x1100, 0x100, Box::new(Recorder::default()))
            .unwrap();

        let mut data = [0xaa; 4];
        bus.read(0x1010, &mut data);
        assert_eq!(data, [0x10; 4]);
        bus.read(0x10fe, &mut data); // straddles two devices
        assert_eq!(data, [0; 4]);
        bus.read(u64::MAX - 1, &mut data);
        assert_eq!(data, [0; 4]);
        assert_eq!(bus.write(0x1004, &[1, 2]), Action::Continue);
        assert_eq!(bus.write(0x9000, &[1, 2]), Action::Continue);
        assert_eq!(*writes.borrow(), vec![(4, vec![1, 2])]);

        // A batch reaches only the allowed range.
        bus.write_batch(
            &[(0x1008, 7), (0x1100, 9), (0x10fe, 1), (u64::MAX - 1, 2)],
            0x1000..0x1100,
        );
        assert_eq!(
            *writes.borrow(),
            vec![(4, vec![1, 2]), (8, 7u32.to_le_bytes().to_vec())]
        );
    }
}
