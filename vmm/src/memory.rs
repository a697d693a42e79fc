//! Guest RAM: one anonymous private mapping at guest-physical 0, touched
//! lazily so an idle guest costs only the pages it uses.

use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Guest memory as the devices and the loader see it.
pub type GuestMemory = GuestMemoryMmap<()>;

/// Granularity of guest RAM sizes (one identity-map page).
pub const RAM_ALIGN: u64 = 2 << 20;

/// Why guest RAM could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The requested RAM size is below what the guest needs or above the MMIO window.
    #[error("guest RAM size {size:#x} is outside [{min:#x}, {max:#x}]")]
    BadSize { size: u64, min: u64, max: u64 },
    /// The host refused to map guest RAM.
    #[error("cannot map {size:#x} bytes of guest RAM")]
    Map {
        size: u64,
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
    /// The host refused transparent huge pages for guest RAM.
    #[error("cannot back guest RAM with transparent huge pages")]
    HugePages(#[source] std::io::Error),
}

/// Smallest RAM the layout allows: boot data, the kernel and some room to run.
pub const MIN_RAM_SIZE: u64 = 8 << 20;

/// Maps `size` bytes (rounded down to [`RAM_ALIGN`]) of guest RAM at
/// guest-physical 0, asking for transparent huge pages with `hugepages`.
///
/// Why huge pages matter: under shadow paging each 4 KiB page the guest
/// touches first costs a fault into the host (~20 µs measured on PVM); a
/// huge page is one fault per 2 MiB, but is backed whole.
pub fn create(size: u64, hugepages: bool) -> Result<GuestMemory, Error> {
    let size = size - size % RAM_ALIGN;
    if !(MIN_RAM_SIZE..=capsa_abi::MAX_RAM_SIZE).contains(&size) {
        return Err(Error::BadSize {
            size,
            min: MIN_RAM_SIZE,
            max: capsa_abi::MAX_RAM_SIZE,
        });
    }
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)])
        .map_err(|source| Error::Map { size, source })?;
    if hugepages {
        use vm_memory::GuestMemory as _;
        let start = mem
            .get_host_address(GuestAddress(0))
            .map_err(|_| Error::HugePages(std::io::Error::from_raw_os_error(libc::EFAULT)))?;
        // SAFETY: the range is exactly the mapping just created; the advice
        // changes how it is backed, not its contents.
        let advised = unsafe { libc::madvise(start.cast(), size as usize, libc::MADV_HUGEPAGE) };
        if advised != 0 {
            return Err(Error::HugePages(std::io::Error::last_os_error()));
        }
    }
    Ok(mem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemory as _;

    #[test]
    fn sizes_are_checked_and_rounded() {
        assert!(matches!(create(1 << 20, false), Err(Error::BadSize { .. })));
        assert!(matches!(create(4 << 30, false), Err(Error::BadSize { .. })));
        let mem = create((16 << 20) + 4096, true).unwrap();
        assert_eq!(mem.last_addr(), GuestAddress((16 << 20) - 1));
    }
}
