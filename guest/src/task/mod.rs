//! Tasks: the process table (processes, threads, their parentage, groups,
//! sessions and run states), the scheduler's queue and its wake-ups,
//! signal state, futex wait queues, CPU time and credentials.
//!
//! Plain data and policy, unit-tested on the host; the kernel (`crate::kernel`)
//! owns a table of these and switches between them.

pub mod cputime;
pub mod futex;
pub mod process;
pub mod signal;

use alloc::vec::Vec;

/// A process's user and group ids, as Linux's `struct cred` holds them.
#[derive(Clone, Debug, Default)]
pub struct Creds {
    pub uid: u32,
    pub euid: u32,
    pub suid: u32,
    pub gid: u32,
    pub egid: u32,
    pub sgid: u32,
    /// The ids file permission checks use; they follow the effective ids
    /// unless `setfsuid`/`setfsgid` set them apart.
    pub fsuid: u32,
    pub fsgid: u32,
    pub groups: Vec<u32>,
}
