//! The capsa guest kernel: a library OS that runs one unmodified static
//! Linux x86-64 program inside a capsa microVM.
//!
//! Rust code runs at CPL3 in the program's address space (guest CPL0 is
//! emulated instruction by instruction on this project's machines; see
//! `main.rs` for the assembly trampolines that are the only CPL0 code).
//! Files are FUSE requests over virtio-fs, stdio is virtio-console, the
//! process spec comes from the VMM in the boot info (`capsa_abi`).
//!
//! Everything here except `arch` and the device register accesses is plain
//! logic that also builds and is unit-tested on the host.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod arch;
pub mod cputime;
pub mod drivers;
pub mod elf;
pub mod errno;
pub mod event;
pub mod fd;
pub mod files;
pub mod fuse;
pub mod futex;
pub mod kernel;
pub mod locks;
pub mod mem;
pub mod mm;
pub mod pipe;
pub mod process;
pub mod procfs;
pub mod sched;
pub mod socket;
pub mod spec;
pub mod stack;
pub mod syscalls;
pub mod vfs;
