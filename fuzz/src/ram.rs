//! Guest RAM between two inaccessible guard pages: a host access that
//! strays past either end of guest memory faults (and the fuzzer reports
//! it) instead of silently reading or corrupting the harness's heap.
//!
//! The mapping lives as long as the process and is zeroed between inputs,
//! so no clone of the memory a device still holds can outlive it.

use capsa_vmm::memory::GuestMemory;
use vm_memory::{Bytes, GuestAddress, GuestRegionMmap, MmapRegion};

const PAGE: usize = 4096;

/// The process's one guest RAM of `size` bytes (a fuzz target is one
/// process and serves every input from the same mapping).
pub fn shared(size: usize) -> &'static Ram {
    static RAM: std::sync::OnceLock<Ram> = std::sync::OnceLock::new();
    let ram = RAM.get_or_init(|| Ram::new(size));
    assert_eq!(ram.size, size, "one RAM size per fuzz target");
    ram
}

pub struct Ram {
    memory: GuestMemory,
    size: usize,
}

impl Ram {
    /// Maps `size` bytes (a multiple of the page size) at guest-physical 0.
    pub fn new(size: usize) -> Ram {
        assert!(size > 0 && size.is_multiple_of(PAGE));
        let total = size + 2 * PAGE;
        // SAFETY: a new anonymous mapping at an address the kernel picks;
        // nothing that exists is affected.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED, "cannot map guest RAM");
        let ram = base.cast::<u8>().wrapping_add(PAGE);
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        // SAFETY: [ram, ram + size) lies inside the mapping made above,
        // between its first and last page, which stay inaccessible.
        let ret = unsafe { libc::mprotect(ram.cast(), size, prot) };
        assert_eq!(ret, 0, "mprotect: {}", std::io::Error::last_os_error());
        // SAFETY: `ram` is page aligned and starts `size` read-write bytes
        // of a private anonymous mapping that is never unmapped.
        let region = unsafe {
            MmapRegion::build_raw(ram, size, prot, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS)
        }
        .expect("MmapRegion over the mapping");
        let region = GuestRegionMmap::new(region, GuestAddress(0)).expect("region at 0");
        let memory = GuestMemory::from_regions(vec![region]).expect("one region");
        Ram { memory, size }
    }

    pub fn memory(&self) -> &GuestMemory {
        &self.memory
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// Zeroes RAM, then copies `image` (cut to RAM's size) to address 0.
    pub fn reset(&self, image: &[u8]) {
        let mut bytes = vec![0u8; self.size];
        let image = &image[..image.len().min(self.size)];
        bytes[..image.len()].copy_from_slice(image);
        self.memory
            .write_slice(&bytes, GuestAddress(0))
            .expect("RAM's own size fits");
    }

    /// A copy of `len` bytes at `addr`, cut at the end of RAM.
    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let start = usize::try_from(addr).unwrap_or(usize::MAX).min(self.size);
        let len = len.min(self.size - start);
        let mut out = vec![0u8; len];
        self.memory
            .read_slice(&mut out, GuestAddress(start as u64))
            .expect("inside RAM");
        out
    }
}
