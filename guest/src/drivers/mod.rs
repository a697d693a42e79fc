//! Device drivers. There are no interrupts: the VMM completes each request
//! during the MMIO exit of the queue notification, so a driver notifies and
//! then finds the used ring already updated.

pub mod exec;
pub mod rng;
pub mod virtio;
