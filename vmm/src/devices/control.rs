//! The capsa control registers (`capsa_abi::control`): exit status, clocks,
//! idling, debug log, panic, batched MMIO and free page reporting.

use std::os::fd::RawFd;
use std::rc::Rc;
use std::time::Duration;

use capsa_abi::control as reg;
use vm_memory::{Bytes, GuestAddress};

use super::Stdin;
use crate::bus::{Action, BusDevice};
use crate::memory::GuestMemory;
use crate::GuestExit;

/// Longest debug message the VMM copies out of the guest.
pub const MAX_DEBUG_LEN: usize = 4096;

/// Prefix of every guest debug line on the VMM's stderr.
pub const DEBUG_PREFIX: &str = "capsa-guest: ";

pub struct Control {
    mem: GuestMemory,
    stdin: Rc<Stdin>,
    debug_addr: u64,
    batch_addr: u64,
    free_pages_addr: u64,
    last_message: String,
    /// Where debug lines go (the VMM's stderr outside tests).
    log: Box<dyn FnMut(&str)>,
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for clock_gettime to fill.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

/// Little-endian value of an access of 1 to 8 bytes.
fn value_of(data: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    let n = data.len().min(8);
    bytes[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(bytes)
}

impl Control {
    pub fn new(mem: GuestMemory, stdin: Rc<Stdin>) -> Self {
        Self::with_log(
            mem,
            stdin,
            Box::new(|line| eprintln!("{DEBUG_PREFIX}{line}")),
        )
    }

    pub fn with_log(mem: GuestMemory, stdin: Rc<Stdin>, log: Box<dyn FnMut(&str)>) -> Self {
        Self {
            mem,
            stdin,
            debug_addr: 0,
            batch_addr: 0,
            free_pages_addr: 0,
            last_message: String::new(),
            log,
        }
    }

    /// The batch of `count` register stores at `batch_addr`; nothing if it
    /// is too long or not in guest RAM.
    fn mmio_batch(&self, count: u64) -> Action {
        if count == 0 || count > reg::MAX_MMIO_BATCH {
            return Action::Continue;
        }
        let mut raw = vec![0u8; (count * reg::MMIO_WRITE_SIZE) as usize];
        if self
            .mem
            .read_slice(&mut raw, GuestAddress(self.batch_addr))
            .is_err()
        {
            return Action::Continue;
        }
        let writes = raw
            .chunks_exact(reg::MMIO_WRITE_SIZE as usize)
            .map(|r| (value_of(&r[..8]), value_of(&r[8..12]) as u32))
            .collect();
        Action::MmioWrites(writes)
    }

    /// Gives the host memory behind the guest's `count` free ranges at
    /// `free_pages_addr` back (`MADV_DONTNEED`: it reads as zero when the
    /// guest next touches it). Records that are unaligned or reach outside
    /// guest RAM are skipped: the guest can only drop its own memory.
    /// Backs `[start, start + POPULATE_SIZE)` of guest RAM on the host now,
    /// if it is an aligned range of guest RAM (anything else is ignored).
    fn populate(&self, start: u64) {
        use vm_memory::GuestMemory as _;
        let len = reg::POPULATE_SIZE as usize;
        if !start.is_multiple_of(reg::POPULATE_SIZE)
            || !self.mem.check_range(GuestAddress(start), len)
        {
            return;
        }
        let Ok(host) = self.mem.get_host_address(GuestAddress(start)) else {
            return;
        };
        // SAFETY: `[host, host + len)` lies inside the guest RAM mapping
        // (checked above), which stays mapped for the VM's life; populating
        // changes no byte of it. A failure (an old host kernel) only leaves
        // the pages to be faulted in one by one.
        unsafe { libc::madvise(host.cast(), len, libc::MADV_POPULATE_WRITE) };
    }

    fn release_free_pages(&self, count: u64) {
        use vm_memory::GuestMemory as _;
        if count == 0 || count > reg::MAX_FREE_RANGES {
            return;
        }
        let mut raw = vec![0u8; (count * reg::FREE_RANGE_SIZE) as usize];
        if self
            .mem
            .read_slice(&mut raw, GuestAddress(self.free_pages_addr))
            .is_err()
        {
            return;
        }
        for record in raw.chunks_exact(reg::FREE_RANGE_SIZE as usize) {
            let (start, len) = (value_of(&record[..8]), value_of(&record[8..]));
            let aligned = start % 4096 == 0 && len % 4096 == 0 && len > 0;
            let Ok(len) = usize::try_from(len) else {
                continue;
            };
            if !aligned || !self.mem.check_range(GuestAddress(start), len) {
                continue;
            }
            let Ok(host) = self.mem.get_host_address(GuestAddress(start)) else {
                continue;
            };
            // SAFETY: `[host, host + len)` lies inside the guest RAM mapping
            // (checked above), which stays mapped for the VM's life; the
            // advice only drops its contents, which the guest gave up.
            unsafe { libc::madvise(host.cast(), len, libc::MADV_DONTNEED) };
        }
    }

    /// A terminal request on the VMM's own stdio (the process's): the
    /// request at `at` names the stream and its argument; the result goes
    /// back beside them. A request outside guest RAM is ignored.
    fn terminal_request(&self, at: u64) {
        let mut raw = [0u8; 16];
        if self.mem.read_slice(&mut raw, GuestAddress(at)).is_err() {
            return;
        }
        let word = value_of(&raw[..8]);
        let (stream, request) = (word & 0xffff_ffff, (word >> 32) as u32);
        let result = if stream <= 2 {
            super::terminal_request(
                &self.mem,
                stream as RawFd,
                request,
                GuestAddress(value_of(&raw[8..])),
            )
        } else {
            -i64::from(libc::EBADF)
        };
        if let Some(result_at) = at.checked_add(16) {
            let _ = self.mem.write_obj(result, GuestAddress(result_at));
        }
    }

    fn debug_message(&mut self, len: u64) {
        let len = usize::try_from(len)
            .unwrap_or(usize::MAX)
            .min(MAX_DEBUG_LEN);
        let mut buf = vec![0u8; len];
        let message = match self.mem.read_slice(&mut buf, GuestAddress(self.debug_addr)) {
            Ok(()) => String::from_utf8_lossy(&buf).into_owned(),
            Err(_) => format!(
                "<debug message at {:#x}+{len:#x} is outside guest RAM>",
                self.debug_addr
            ),
        };
        for line in message.trim_end_matches('\n').split('\n') {
            (self.log)(line);
        }
        self.last_message = message;
    }
}

impl BusDevice for Control {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            reg::MAGIC => reg::MAGIC_VALUE,
            reg::REALTIME_NS => clock_ns(libc::CLOCK_REALTIME),
            reg::MONOTONIC_NS => clock_ns(libc::CLOCK_MONOTONIC),
            reg::STDIN_READY => u64::from(self.stdin.ready()),
            _ => 0,
        };
        let bytes = value.to_le_bytes();
        let n = data.len().min(8);
        data[..n].copy_from_slice(&bytes[..n]);
        data[n..].fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Action {
        let value = value_of(data);
        match offset {
            reg::EXIT_CODE => Action::Exit(GuestExit::Code(value as u8)),
            reg::EXIT_SIGNAL => Action::Exit(GuestExit::Signal((value & 0x7f) as i32)),
            reg::IDLE_NS => Action::Idle((value != u64::MAX).then(|| Duration::from_nanos(value))),
            reg::DEBUG_ADDR => {
                self.debug_addr = value;
                Action::Continue
            }
            reg::DEBUG_LEN => {
                self.debug_message(value);
                Action::Continue
            }
            reg::PANIC => Action::Panic(self.last_message.clone()),
            reg::MMIO_BATCH_ADDR => {
                self.batch_addr = value;
                Action::Continue
            }
            reg::MMIO_BATCH_LEN => self.mmio_batch(value),
            reg::FREE_PAGES_ADDR => {
                self.free_pages_addr = value;
                Action::Continue
            }
            reg::FREE_PAGES_LEN => {
                self.release_free_pages(value);
                Action::Continue
            }
            reg::POPULATE_ADDR => {
                self.populate(value);
                Action::Continue
            }
            reg::TERMINAL_REQUEST => {
                self.terminal_request(value);
                Action::Continue
            }
            reg::TICK_ENTRY_ADDR => {
                let mut raw = [0u8; 40];
                match self.mem.read_slice(&mut raw, GuestAddress(value)) {
                    Ok(()) => crate::tick::TickEntry::parse(&raw)
                        .map_or(Action::Continue, Action::EnableTicks),
                    Err(_) => Action::Continue,
                }
            }
            _ => Action::Continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    fn control() -> (Control, Rc<RefCell<Vec<String>>>) {
        let mem = crate::memory::create(8 << 20, false).unwrap();
        let lines = Rc::new(RefCell::new(Vec::new()));
        let sink = lines.clone();
        // A descriptor that is never readable: a pipe whose write end stays open.
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for two descriptors.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let control = Control::with_log(
            mem,
            Rc::new(Stdin::new(fds[0])),
            Box::new(move |l| sink.borrow_mut().push(l.to_string())),
        );
        (control, lines)
    }

    fn read64(c: &mut Control, offset: u64) -> u64 {
        let mut data = [0u8; 8];
        c.read(offset, &mut data);
        u64::from_le_bytes(data)
    }

    #[test]
    fn registers() {
        let (mut c, _) = control();
        assert_eq!(read64(&mut c, reg::MAGIC), reg::MAGIC_VALUE);
        let a = read64(&mut c, reg::MONOTONIC_NS);
        let b = read64(&mut c, reg::MONOTONIC_NS);
        assert!(a > 0 && b >= a);
        assert!(read64(&mut c, reg::REALTIME_NS) > 1_600_000_000 * 1_000_000_000);
        assert_eq!(read64(&mut c, reg::STDIN_READY), 0);
        assert_eq!(read64(&mut c, 0x7f8), 0);
        let mut short = [0xffu8; 4];
        c.read(reg::MAGIC, &mut short);
        assert_eq!(short, *b"caps");

        assert_eq!(
            c.write(reg::EXIT_CODE, &300u32.to_le_bytes()),
            Action::Exit(GuestExit::Code(44))
        );
        assert_eq!(
            c.write(reg::EXIT_SIGNAL, &9u64.to_le_bytes()),
            Action::Exit(GuestExit::Signal(9))
        );
        assert_eq!(
            c.write(reg::IDLE_NS, &u64::MAX.to_le_bytes()),
            Action::Idle(None)
        );
        assert_eq!(
            c.write(reg::IDLE_NS, &1500u64.to_le_bytes()),
            Action::Idle(Some(Duration::from_nanos(1500)))
        );
        assert_eq!(c.write(0x7f8, &[1]), Action::Continue);
    }

    #[test]
    fn debug_messages_are_bounded_and_checked() {
        let (mut c, lines) = control();
        c.mem
            .write_slice(b"hello\nworld\n", GuestAddress(0x5000))
            .unwrap();
        c.write(reg::DEBUG_ADDR, &0x5000u64.to_le_bytes());
        c.write(reg::DEBUG_LEN, &12u64.to_le_bytes());
        assert_eq!(*lines.borrow(), ["hello", "world"]);
        assert_eq!(
            c.write(reg::PANIC, &[1]),
            Action::Panic("hello\nworld\n".into())
        );

        // A huge length is capped; an address past RAM is reported, not read.
        c.write(reg::DEBUG_LEN, &u64::MAX.to_le_bytes());
        assert_eq!(c.last_message.len(), MAX_DEBUG_LEN);
        c.write(reg::DEBUG_ADDR, &(u64::MAX - 3).to_le_bytes());
        c.write(reg::DEBUG_LEN, &16u64.to_le_bytes());
        assert!(lines.borrow().last().unwrap().contains("outside guest RAM"));
    }

    #[test]
    fn mmio_batches_are_read_from_guest_memory_and_bounded() {
        let (mut c, _) = control();
        let mut raw = Vec::new();
        for (addr, value) in [(0xC000_1070u64, 1u32), (0xC000_1030, 2)] {
            raw.extend_from_slice(&addr.to_le_bytes());
            raw.extend_from_slice(&value.to_le_bytes());
            raw.extend_from_slice(&[0xff; 4]);
        }
        c.mem.write_slice(&raw, GuestAddress(0x6000)).unwrap();
        c.write(reg::MMIO_BATCH_ADDR, &0x6000u64.to_le_bytes());
        assert_eq!(
            c.write(reg::MMIO_BATCH_LEN, &2u64.to_le_bytes()),
            Action::MmioWrites(vec![(0xC000_1070, 1), (0xC000_1030, 2)])
        );
        // Too long, empty, or outside RAM: nothing happens.
        let too_long = reg::MAX_MMIO_BATCH + 1;
        assert_eq!(
            c.write(reg::MMIO_BATCH_LEN, &too_long.to_le_bytes()),
            Action::Continue
        );
        assert_eq!(
            c.write(reg::MMIO_BATCH_LEN, &0u64.to_le_bytes()),
            Action::Continue
        );
        c.write(reg::MMIO_BATCH_ADDR, &(u64::MAX - 8).to_le_bytes());
        assert_eq!(
            c.write(reg::MMIO_BATCH_LEN, &1u64.to_le_bytes()),
            Action::Continue
        );
    }

    #[test]
    fn reported_free_pages_read_as_zero_and_bad_records_are_skipped() {
        let (mut c, _) = control();
        c.mem
            .write_slice(&[7u8; 0x3000], GuestAddress(0x10000))
            .unwrap();
        let mut raw = Vec::new();
        for (start, len) in [
            (0x10000u64, 0x1000u64), // released
            (0x12001, 0x1000),       // unaligned: skipped
            (0x12000, 0),            // empty: skipped
            (0x7f_f000, 0x10_0000),  // reaches past RAM: skipped
        ] {
            raw.extend_from_slice(&start.to_le_bytes());
            raw.extend_from_slice(&len.to_le_bytes());
        }
        c.mem.write_slice(&raw, GuestAddress(0x6000)).unwrap();
        c.write(reg::FREE_PAGES_ADDR, &0x6000u64.to_le_bytes());
        assert_eq!(
            c.write(reg::FREE_PAGES_LEN, &4u64.to_le_bytes()),
            Action::Continue
        );
        let mut back = [0u8; 0x3000];
        c.mem.read_slice(&mut back, GuestAddress(0x10000)).unwrap();
        assert!(back[..0x1000].iter().all(|&b| b == 0), "released");
        assert!(back[0x1000..].iter().all(|&b| b == 7), "kept");
        // Populating keeps the contents; a misaligned or outside range is ignored.
        c.mem
            .write_slice(&[9u8; 16], GuestAddress(0x40000))
            .unwrap();
        for start in [0x40000u64, 0x40010, 8 << 20, u64::MAX - 4095] {
            assert_eq!(
                c.write(reg::POPULATE_ADDR, &start.to_le_bytes()),
                Action::Continue
            );
        }
        let mut kept = [0u8; 16];
        c.mem.read_slice(&mut kept, GuestAddress(0x40000)).unwrap();
        assert_eq!(kept, [9u8; 16]);
        // Too many records: nothing is read.
        let too_many = reg::MAX_FREE_RANGES + 1;
        c.write(reg::FREE_PAGES_LEN, &too_many.to_le_bytes());
    }
}
