//! The capsa guest kernel: a library OS that runs one unmodified static
//! Linux x86-64 program inside a capsa microVM.
//!
//! Rust code runs at CPL3 in the program's address space (guest CPL0 is
//! emulated instruction by instruction on this project's machines; see
//! `main.rs` for the assembly trampolines that are the only CPL0 code).
//! Files are FUSE requests over virtio-fs, stdio is virtio-console, the
//! process spec comes from the VMM in the boot info (`capsa_abi`).
//!
//! Subsystems, lowest first; each names only those before it:
//! `errno`, `arch`, `mm`, `drivers`, `loader`, `fs`, `net`, `task`,
//! `kernel` (the `Kernel` and what joins the subsystems: boot, exec,
//! switching, signal delivery, clocks), `syscalls` (the Linux ABI: decode,
//! call a subsystem, encode).
//!
//! Everything here except `arch` and the device register accesses is plain
//! logic that also builds and is unit-tested on the host.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod arch;
pub mod drivers;
pub mod errno;
pub mod fs;
pub mod kernel;
pub mod loader;
pub mod mm;
pub mod net;
pub mod syscalls;
pub mod task;
