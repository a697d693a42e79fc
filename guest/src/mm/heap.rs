//! The kernel heap: first-fit over an address-ordered free list, coalescing
//! on free. Lives in one RAM region handed over at boot; small and
//! predictable, which is all a single-threaded library OS needs.

use core::alloc::Layout;
use core::ptr::null_mut;

const UNIT: usize = 16;

#[repr(C)]
struct FreeBlock {
    size: usize,
    next: *mut FreeBlock,
}

pub struct Heap {
    head: *mut FreeBlock,
    initialized: bool,
}

fn round(size: usize) -> Option<usize> {
    Some(size.max(UNIT).checked_add(UNIT - 1)? & !(UNIT - 1))
}

impl Heap {
    pub const fn empty() -> Self {
        Self {
            head: null_mut(),
            initialized: false,
        }
    }

    pub fn initialized(&self) -> bool {
        self.initialized
    }

    /// Hands the heap the memory `[start, start + len)`.
    ///
    /// # Safety
    /// The region must be unused, writable memory that outlives the heap.
    pub unsafe fn init(&mut self, start: u64, len: u64) {
        self.initialized = true;
        let begin = (start as usize + UNIT - 1) & !(UNIT - 1);
        let end = (start + len) as usize & !(UNIT - 1);
        if end > begin {
            // SAFETY: per the caller's contract.
            unsafe { self.insert(begin as *mut u8, end - begin) };
        }
    }

    /// # Safety
    /// Single-threaded use only.
    pub unsafe fn alloc(&mut self, layout: Layout) -> *mut u8 {
        let Some(size) = round(layout.size()) else {
            return null_mut();
        };
        let align = layout.align().max(UNIT);
        let mut prev: *mut FreeBlock = null_mut();
        let mut cur = self.head;
        // SAFETY: every pointer on the list is a free block we own.
        unsafe {
            while !cur.is_null() {
                let block_start = cur as usize;
                let block_size = (*cur).size;
                let block_end = block_start + block_size;
                let mut start = (block_start + align - 1) & !(align - 1);
                // A gap before the allocation must be able to hold a free block.
                if start != block_start && start - block_start < UNIT {
                    start += align.max(UNIT);
                    start &= !(align - 1);
                }
                if start.checked_add(size).is_some_and(|end| end <= block_end) {
                    let next = (*cur).next;
                    // Unlink, then give back the gaps on either side.
                    if prev.is_null() {
                        self.head = next;
                    } else {
                        (*prev).next = next;
                    }
                    if start > block_start {
                        self.insert(block_start as *mut u8, start - block_start);
                    }
                    let end = start + size;
                    if block_end > end {
                        self.insert(end as *mut u8, block_end - end);
                    }
                    return start as *mut u8;
                }
                prev = cur;
                cur = (*cur).next;
            }
        }
        null_mut()
    }

    /// # Safety
    /// `ptr` must come from `alloc` with the same layout.
    pub unsafe fn dealloc(&mut self, ptr: *mut u8, layout: Layout) {
        if let Some(size) = round(layout.size()) {
            // SAFETY: the block is ours again.
            unsafe { self.insert(ptr, size) };
        }
    }

    /// Inserts a free block in address order and merges it with neighbours.
    unsafe fn insert(&mut self, ptr: *mut u8, size: usize) {
        let block = ptr as *mut FreeBlock;
        let addr = ptr as usize;
        let mut prev: *mut FreeBlock = null_mut();
        let mut cur = self.head;
        // SAFETY: list pointers are free blocks we own; `block` is memory
        // being returned to us.
        unsafe {
            while !cur.is_null() && (cur as usize) < addr {
                prev = cur;
                cur = (*cur).next;
            }
            (*block).size = size;
            (*block).next = cur;
            if !cur.is_null() && addr + size == cur as usize {
                (*block).size += (*cur).size;
                (*block).next = (*cur).next;
            }
            if prev.is_null() {
                self.head = block;
            } else if prev as usize + (*prev).size == addr {
                (*prev).size += (*block).size;
                (*prev).next = (*block).next;
            } else {
                (*prev).next = block;
            }
        }
    }

    /// Bytes currently free (walks the list; for tests and diagnostics).
    pub fn free_bytes(&self) -> usize {
        let mut total = 0;
        let mut cur = self.head;
        while !cur.is_null() {
            // SAFETY: list pointers are free blocks we own.
            unsafe {
                total += (*cur).size;
                cur = (*cur).next;
            }
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_aligned_disjoint_blocks_and_coalesces() {
        let mut backing = vec![0u8; 1 << 16];
        let mut heap = Heap::empty();
        // SAFETY: the vector outlives the heap and is otherwise unused.
        unsafe { heap.init(backing.as_mut_ptr() as u64, backing.len() as u64) };
        let total = heap.free_bytes();
        let layouts = [
            Layout::from_size_align(1, 1).expect("layout"),
            Layout::from_size_align(100, 8).expect("layout"),
            Layout::from_size_align(4096, 4096).expect("layout"),
            Layout::from_size_align(24, 16).expect("layout"),
        ];
        let mut ptrs = Vec::new();
        for l in layouts {
            // SAFETY: single-threaded test.
            let p = unsafe { heap.alloc(l) };
            assert!(!p.is_null());
            assert_eq!(p as usize % l.align(), 0);
            ptrs.push((p as usize, l));
        }
        let mut ranges: Vec<_> = ptrs.iter().map(|(p, l)| (*p, *p + l.size())).collect();
        ranges.sort();
        assert!(ranges.windows(2).all(|w| w[0].1 <= w[1].0));
        for (p, l) in ptrs.into_iter().rev() {
            // SAFETY: allocated above with this layout.
            unsafe { heap.dealloc(p as *mut u8, l) };
        }
        assert_eq!(heap.free_bytes(), total);
        // Fully coalesced: the whole region is one block again.
        let big = Layout::from_size_align(total, 16).expect("layout");
        // SAFETY: single-threaded test.
        assert!(!unsafe { heap.alloc(big) }.is_null());
    }

    #[test]
    fn exhaustion_returns_null() {
        let mut backing = vec![0u8; 4096];
        let mut heap = Heap::empty();
        // SAFETY: the vector outlives the heap.
        unsafe { heap.init(backing.as_mut_ptr() as u64, 4096) };
        let l = Layout::from_size_align(8192, 16).expect("layout");
        // SAFETY: single-threaded test.
        assert!(unsafe { heap.alloc(l) }.is_null());
    }
}
