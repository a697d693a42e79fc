//! Split virtqueues (virtio 1.2 §2.7) in kernel heap memory.
//!
//! Requests complete synchronously during the notify exit, so at most one
//! descriptor chain per queue is ever outstanding: every chain starts at
//! descriptor 0, and no free-descriptor list is needed.

use alloc::alloc::{alloc_zeroed, dealloc};
use core::alloc::Layout;
use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{fence, Ordering};

pub const DESC_F_NEXT: u16 = 1;
pub const DESC_F_WRITE: u16 = 2;

/// One buffer of a chain: virtual address (translated in `push`), length, and
/// whether the device writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buf {
    pub addr: u64,
    pub len: u32,
    pub writable: bool,
}

impl Buf {
    pub fn readable(data: &[u8]) -> Self {
        Self {
            addr: data.as_ptr() as u64,
            len: data.len() as u32,
            writable: false,
        }
    }
    pub fn writable(data: &mut [u8]) -> Self {
        Self {
            addr: data.as_mut_ptr() as u64,
            len: data.len() as u32,
            writable: true,
        }
    }
}

pub struct Virtqueue {
    size: u16,
    mem: *mut u8,
    layout: Layout,
    avail_off: usize,
    used_off: usize,
    next_avail: u16,
    last_used: u16,
}

impl Virtqueue {
    /// A zeroed queue of `size` entries (a power of two), or `None` if out of memory.
    pub fn new(size: u16) -> Option<Self> {
        if size == 0 || !size.is_power_of_two() {
            return None;
        }
        let n = size as usize;
        let avail_off = 16 * n;
        let used_off = (avail_off + 6 + 2 * n + 3) & !3;
        let total = used_off + 6 + 8 * n;
        let layout = Layout::from_size_align(total, 4096).ok()?;
        // SAFETY: the layout has a non-zero size.
        let mem = unsafe { alloc_zeroed(layout) };
        if mem.is_null() {
            return None;
        }
        Some(Self {
            size,
            mem,
            layout,
            avail_off,
            used_off,
            next_avail: 0,
            last_used: 0,
        })
    }

    pub fn size(&self) -> u16 {
        self.size
    }
    pub fn desc_addr(&self) -> u64 {
        self.mem as u64
    }
    pub fn avail_addr(&self) -> u64 {
        self.mem as u64 + self.avail_off as u64
    }
    pub fn used_addr(&self) -> u64 {
        self.mem as u64 + self.used_off as u64
    }

    /// Makes a chain of `bufs` available to the device. Fails if the chain is
    /// longer than the queue or empty.
    pub fn push(&mut self, bufs: &[Buf]) -> bool {
        // Buffers hold virtual addresses; a user buffer may span pages
        // backed by unrelated frames, so each becomes one descriptor per
        // physically contiguous run (see `mm::space`).
        let mut pieces = alloc::vec::Vec::with_capacity(bufs.len());
        for b in bufs {
            let mut split = alloc::vec::Vec::new();
            crate::mm::space::dma_pieces(b.addr, b.len, &mut split);
            pieces.extend(split.into_iter().map(|(addr, len)| Buf {
                addr,
                len,
                writable: b.writable,
            }));
        }
        let bufs = &pieces[..];
        if bufs.is_empty() || bufs.len() > self.size as usize {
            return false;
        }
        for (i, b) in bufs.iter().enumerate() {
            let last = i + 1 == bufs.len();
            let mut flags = if last { 0 } else { DESC_F_NEXT };
            if b.writable {
                flags |= DESC_F_WRITE;
            }
            // SAFETY: descriptor `i` < size lies inside our allocation.
            unsafe {
                let d = self.mem.add(16 * i);
                write_volatile(d as *mut u64, b.addr);
                write_volatile(d.add(8) as *mut u32, b.len);
                write_volatile(d.add(12) as *mut u16, flags);
                write_volatile(d.add(14) as *mut u16, if last { 0 } else { i as u16 + 1 });
            }
        }
        let slot = (self.next_avail % self.size) as usize;
        // SAFETY: the avail ring lies inside our allocation.
        unsafe {
            let avail = self.mem.add(self.avail_off);
            write_volatile(avail.add(4 + 2 * slot) as *mut u16, 0);
            fence(Ordering::SeqCst);
            self.next_avail = self.next_avail.wrapping_add(1);
            write_volatile(avail.add(2) as *mut u16, self.next_avail);
        }
        fence(Ordering::SeqCst);
        true
    }

    /// Makes descriptor `id` available as a chain of one buffer at
    /// `addr` (guest-physical: identity-mapped kernel memory) of `len`
    /// bytes, for a driver that keeps many single-buffer chains
    /// outstanding (the network device's frame buffers, one per
    /// descriptor, reused as the device completes them).
    pub fn post_single(&mut self, id: u16, addr: u64, len: u32, writable: bool) -> bool {
        if id >= self.size {
            return false;
        }
        let flags = if writable { DESC_F_WRITE } else { 0 };
        let slot = (self.next_avail % self.size) as usize;
        // SAFETY: descriptor `id` < size and the avail ring lie inside our
        // allocation.
        unsafe {
            let d = self.mem.add(16 * id as usize);
            write_volatile(d as *mut u64, addr);
            write_volatile(d.add(8) as *mut u32, len);
            write_volatile(d.add(12) as *mut u16, flags);
            write_volatile(d.add(14) as *mut u16, 0);
            let avail = self.mem.add(self.avail_off);
            write_volatile(avail.add(4 + 2 * slot) as *mut u16, id);
            fence(Ordering::SeqCst);
            self.next_avail = self.next_avail.wrapping_add(1);
            write_volatile(avail.add(2) as *mut u16, self.next_avail);
        }
        fence(Ordering::SeqCst);
        true
    }

    /// Whether the device completed a chain not yet popped: one load,
    /// cheap enough to ask after every system call.
    pub fn has_used(&self) -> bool {
        // SAFETY: the used ring lies inside our allocation.
        let idx = unsafe { read_volatile(self.mem.add(self.used_off + 2) as *const u16) };
        idx != self.last_used
    }

    /// The next completed chain: (head descriptor id, bytes written by the device).
    pub fn pop_used(&mut self) -> Option<(u32, u32)> {
        fence(Ordering::SeqCst);
        // SAFETY: the used ring lies inside our allocation.
        unsafe {
            let used = self.mem.add(self.used_off);
            let idx = read_volatile(used.add(2) as *const u16);
            if idx == self.last_used {
                return None;
            }
            let slot = (self.last_used % self.size) as usize;
            let elem = used.add(4 + 8 * slot);
            let id = read_volatile(elem as *const u32);
            let len = read_volatile(elem.add(4) as *const u32);
            self.last_used = self.last_used.wrapping_add(1);
            Some((id, len))
        }
    }

    /// Whether a chain has been made available and not yet used.
    pub fn outstanding(&self) -> bool {
        self.next_avail != self.last_used
    }
}

impl Drop for Virtqueue {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.mem, self.layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal device: reads the chain at the next avail slot, copies the
    /// readable bytes into the writable ones, and completes it.
    fn device_echo(q: &Virtqueue, seen: &mut u16) -> Vec<(u64, u32, u16)> {
        let mut chain = Vec::new();
        // SAFETY: the test reads the ring memory the queue allocated.
        unsafe {
            let avail = q.avail_addr() as *const u16;
            let idx = read_volatile(avail.add(1));
            assert_ne!(idx, *seen, "nothing available");
            let head = read_volatile(avail.add(2 + (*seen % q.size()) as usize));
            let mut i = head as usize;
            let mut data = Vec::new();
            let mut written = 0u32;
            loop {
                let d = (q.desc_addr() + 16 * i as u64) as *const u8;
                let addr = read_volatile(d as *const u64);
                let len = read_volatile(d.add(8) as *const u32);
                let flags = read_volatile(d.add(12) as *const u16);
                chain.push((addr, len, flags));
                if flags & DESC_F_WRITE == 0 {
                    data.extend_from_slice(core::slice::from_raw_parts(
                        addr as *const u8,
                        len as usize,
                    ));
                } else {
                    let n = data.len().min(len as usize);
                    core::ptr::copy_nonoverlapping(data.as_ptr(), addr as *mut u8, n);
                    data.drain(..n);
                    written += n as u32;
                }
                if flags & DESC_F_NEXT == 0 {
                    break;
                }
                i = read_volatile(d.add(14) as *const u16) as usize;
            }
            let used = q.used_addr() as *mut u8;
            let uidx = read_volatile(used.add(2) as *const u16);
            let elem = used.add(4 + 8 * (uidx % q.size()) as usize);
            write_volatile(elem as *mut u32, head as u32);
            write_volatile(elem.add(4) as *mut u32, written);
            write_volatile(used.add(2) as *mut u16, uidx.wrapping_add(1));
        }
        *seen = seen.wrapping_add(1);
        chain
    }

    #[test]
    fn chains_round_trip_through_a_device_and_wrap() {
        let mut q = Virtqueue::new(4).expect("queue");
        assert_eq!(q.desc_addr() % 4096, 0);
        assert_eq!(q.used_addr() % 4, 0);
        let mut seen = 0;
        for round in 0..10u8 {
            let input = [round; 5];
            let mut output = [0u8; 8];
            assert!(q.push(&[Buf::readable(&input), Buf::writable(&mut output)]));
            assert!(q.outstanding());
            assert_eq!(q.pop_used(), None);
            let chain = device_echo(&q, &mut seen);
            assert_eq!(chain.len(), 2);
            assert_eq!(chain[0].2, DESC_F_NEXT);
            assert_eq!(chain[1].2, DESC_F_WRITE);
            assert_eq!(q.pop_used(), Some((0, 5)));
            assert!(!q.outstanding());
            assert_eq!(&output[..5], &[round; 5]);
        }
    }

    #[test]
    fn rejects_bad_sizes_and_chains() {
        assert!(Virtqueue::new(3).is_none());
        let mut q = Virtqueue::new(2).expect("queue");
        let b = [0u8; 1];
        assert!(!q.push(&[]));
        assert!(!q.push(&[Buf::readable(&b); 3]));
    }
}
