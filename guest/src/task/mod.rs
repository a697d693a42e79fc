//! Tasks: the process table (processes, threads, their parentage, groups,
//! sessions and run states), the scheduler's queue and its wake-ups,
//! signal state, futex wait queues, CPU time and credentials.
//!
//! A [`Process`] is what a thread group owns (address space, files, cwd,
//! credentials, signal dispositions), a [`Thread`] what each thread owns
//! (TLS base, tid words, signal mask, the call it is blocked in), as
//! Linux's `mm_struct`/`files_struct`/`cred` and `task_struct` split them.
//! The kernel (`crate::kernel`) keeps every process and task in its tables;
//! running one is pointing at it.
//!
//! Plain data and policy, unit-tested on the host.

pub mod capability;
pub mod cputime;
pub mod futex;
pub mod process;
pub mod signal;
pub mod timers;

use alloc::vec::Vec;

use crate::fs::fd::{FdTable, File};
use crate::mm::space::Space;
use crate::mm::Mm;
use signal::{SigMask, Signals};

/// What a process (a thread group) owns, shared by its threads.
#[derive(Default)]
pub struct Process {
    pub fds: FdTable,
    pub mm: Mm<dyn File>,
    /// Its page tables: none while lent to a vfork child, or gone.
    pub space: Option<Space>,
    pub cwd: Vec<u8>,
    pub umask: u32,
    pub creds: Creds,
    pub signals: Signals,
    pub exe_path: Vec<u8>,
    pub comm: [u8; 16],
    /// personality(2) flags (the domain is always PER_LINUX).
    pub personality: u32,
    /// Set when the process exits: what its pidfds (`pidfd_open`) poll.
    pub exited: Option<alloc::rc::Rc<core::cell::Cell<bool>>>,
    /// Its POSIX timers (not inherited by fork, gone at exec).
    pub timers: timers::Timers,
    /// The exec session of a process the host started (`capsa exec`),
    /// told how it ends; not inherited.
    pub exec_session: Option<u32>,
}

/// What each thread owns besides its registers (`process::Task::ctx`).
#[derive(Default)]
pub struct Thread {
    /// The TLS base (`arch_prctl(ARCH_SET_FS)`, CLONE_SETTLS).
    pub fs_base: u64,
    pub sigmask: SigMask,
    /// Deadline of a sleep or poll being restarted (see `process`).
    pub restart_deadline: Option<u64>,
    /// The call the thread is blocked in (to be restarted), if any: a
    /// handler interrupting it makes it fail with EINTR instead.
    pub blocked_nr: Option<u64>,
    /// CLONE_CHILD_CLEARTID / set_tid_address: cleared when the thread exits.
    pub clear_child_tid: u64,
    /// set_robust_list: the list head, walked when the thread exits or execs.
    pub robust_list: u64,
    /// The scheduling policy sched_setscheduler chose (SCHED_OTHER, BATCH
    /// or IDLE: the round-robin scheduler treats them alike).
    pub policy: u32,
    /// A program to load when the thread first runs (a process the host
    /// started: its image is built in its own address space).
    pub launch: Option<alloc::boxed::Box<Launch>>,
}

/// What a process the host started runs (see `Thread::launch`).
pub struct Launch {
    pub args: Vec<Vec<u8>>,
    pub env: Vec<Vec<u8>>,
}

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
    /// The five capability sets (`capability.rs` moves them).
    pub caps: capsa_abi::process::CapabilitySets,
    /// `PR_SET_KEEPCAPS`: leaving root keeps the permitted set.
    pub keep_caps: bool,
}
