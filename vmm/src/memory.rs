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
}

/// Smallest RAM the layout allows: boot data, the kernel and some room to run.
pub const MIN_RAM_SIZE: u64 = 8 << 20;

/// Maps `size` bytes (rounded down to [`RAM_ALIGN`]) of guest RAM at guest-physical 0.
pub fn create(size: u64) -> Result<GuestMemory, Error> {
    let size = size - size % RAM_ALIGN;
    if !(MIN_RAM_SIZE..=capsa_abi::MAX_RAM_SIZE).contains(&size) {
        return Err(Error::BadSize {
            size,
            min: MIN_RAM_SIZE,
            max: capsa_abi::MAX_RAM_SIZE,
        });
    }
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)])
        .map_err(|source| Error::Map { size, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemory as _;

    #[test]
    fn sizes_are_checked_and_rounded() {
        assert!(matches!(create(1 << 20), Err(Error::BadSize { .. })));
        assert!(matches!(create(4 << 30), Err(Error::BadSize { .. })));
        let mem = create((16 << 20) + 4096).unwrap();
        assert_eq!(mem.last_addr(), GuestAddress((16 << 20) - 1));
    }
}
