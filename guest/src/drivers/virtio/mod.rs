//! virtio 1.2 over the MMIO transport (version 2): split virtqueues, the
//! console and file-system devices.

pub mod console;
pub mod fs;
pub mod mmio;
pub mod net;
pub mod queue;
