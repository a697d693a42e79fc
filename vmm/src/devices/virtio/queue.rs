//! Glue between virtio-queue's split queues and the devices: popping chains
//! and returning them, with the guest treated as hostile (a broken ring
//! stops processing; it never panics the VMM).

use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::GuestMemory as _;

use crate::memory::GuestMemory;

/// The next available chain, if the queue is usable.
pub fn pop<'a>(
    queue: &mut Queue,
    mem: &'a GuestMemory,
) -> Option<DescriptorChain<&'a GuestMemory>> {
    if !queue.ready() {
        return None;
    }
    queue.pop_descriptor_chain(mem)
}

/// Whether the driver has made at least one buffer available.
pub fn has_available(queue: &Queue, mem: &GuestMemory) -> bool {
    if !queue.ready() || !queue.is_valid(mem) {
        return false;
    }
    queue
        .avail_idx(mem, std::sync::atomic::Ordering::Acquire)
        .is_ok_and(|idx| idx.0 != queue.next_avail())
}

/// Returns a chain to the driver with `len` bytes written. A failure means a
/// broken used ring; there is nothing better to do than drop the buffer.
pub fn add_used(queue: &mut Queue, mem: &GuestMemory, head: u16, len: u32) {
    let _ = queue.add_used(mem, head, len);
}

/// Checks whether the ring addresses are usable before processing.
pub fn usable(queue: &Queue, mem: &GuestMemory) -> bool {
    queue.ready() && queue.is_valid(mem) && mem.num_regions() > 0
}
