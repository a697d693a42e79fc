//! eventfd, epoll and pidfds.
//!
//! Both block like pipes (see `crate::fs::pipe`): a call that must wait answers
//! `EBLOCK` and is retried when the event counter moves, which every
//! eventfd change bumps too. Readiness comes from each file's `poll`.
//!
//! epoll keeps its interest list by descriptor number with a weak reference
//! to the open file: when the file is closed everywhere the entry is dead and
//! skipped, as Linux drops it. Edge-triggered entries (`EPOLLET`) are
//! reported like level-triggered ones — a program written for edge triggers
//! reads until `EAGAIN` and so sees only extra wake-ups; `EPOLLONESHOT`
//! disables an entry once reported until `EPOLL_CTL_MOD`.

use alloc::collections::BTreeMap;
use alloc::rc::{Rc, Weak};
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};

use crate::errno::{Errno, Result};
use crate::fs::fd::{File, O_NONBLOCK, POLL_ERR, POLL_HUP};
use crate::fs::files::synthetic_stat;
use crate::fs::pipe::bump;
use crate::fs::Devices;

pub const EFD_SEMAPHORE: u32 = 1;
pub const EPOLLIN: u32 = 0x001;
pub const EPOLLPRI: u32 = 0x002;
pub const EPOLLOUT: u32 = 0x004;
pub const EPOLLRDNORM: u32 = 0x040;
pub const EPOLLWRNORM: u32 = 0x100;
pub const EPOLLONESHOT: u32 = 1 << 30;
pub const EPOLLET: u32 = 1 << 31;
pub const EPOLL_CTL_ADD: u32 = 1;
pub const EPOLL_CTL_DEL: u32 = 2;
pub const EPOLL_CTL_MOD: u32 = 3;
/// Size of `struct epoll_event` on x86-64 (packed: u32 events, u64 data).
pub const EVENT_SIZE: usize = 12;
/// The largest value an eventfd counter may hold.
pub const EVENTFD_MAX: u64 = u64::MAX - 1;

/// A process's descriptor (`pidfd_open`): readable once the process has
/// exited, which the kernel records in `exited`.
pub struct PidFd {
    pub pid: i32,
    pub exited: Rc<Cell<bool>>,
    pub flags: Cell<u32>,
}

impl File for PidFd {
    fn read(&self, _dev: &mut Devices, _buf: &mut [u8]) -> Result<usize> {
        Err(Errno::EINVAL)
    }
    fn stat(&self, _dev: &mut Devices) -> Result<[u8; 144]> {
        Ok(synthetic_stat(0o600, 0, 0x82))
    }
    fn poll(&self, _dev: &mut Devices) -> (bool, bool) {
        (self.exited.get(), false)
    }
    fn flags(&self) -> u32 {
        self.flags.get()
    }
    fn set_flags(&self, flags: u32) {
        self.flags.set(flags);
    }
    fn as_any(&self) -> Option<&dyn core::any::Any> {
        Some(self)
    }
    fn proc_name(&self) -> Vec<u8> {
        b"anon_inode:[pidfd]".to_vec()
    }
}

/// A 64-bit counter: writes add, reads take (all, or one with `EFD_SEMAPHORE`).
pub struct EventFd {
    pub count: Cell<u64>,
    /// Moves at every change of `count` (see `File::poll_generation`).
    pub generation: Cell<u64>,
    pub semaphore: bool,
    pub flags: Cell<u32>,
}

impl File for EventFd {
    fn poll_generation(&self) -> Option<u64> {
        Some(self.generation.get())
    }
    fn read(&self, _dev: &mut Devices, buf: &mut [u8]) -> Result<usize> {
        let out = buf.get_mut(..8).ok_or(Errno::EINVAL)?;
        let count = self.count.get();
        if count == 0 {
            return Err(self.would_block());
        }
        let taken = if self.semaphore { 1 } else { count };
        self.count.set(count - taken);
        self.generation.set(self.generation.get() + 1);
        out.copy_from_slice(&taken.to_le_bytes());
        bump();
        Ok(8)
    }
    fn write(&self, _dev: &mut Devices, buf: &[u8]) -> Result<usize> {
        let bytes: [u8; 8] = buf
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .ok_or(Errno::EINVAL)?;
        let add = u64::from_le_bytes(bytes);
        if add == u64::MAX {
            return Err(Errno::EINVAL);
        }
        let count = self.count.get();
        if add > EVENTFD_MAX - count {
            return Err(self.would_block());
        }
        self.count.set(count + add);
        self.generation.set(self.generation.get() + 1);
        bump();
        Ok(8)
    }
    fn stat(&self, _dev: &mut Devices) -> Result<[u8; 144]> {
        Ok(synthetic_stat(0o600, 0, 0x80))
    }
    fn poll(&self, _dev: &mut Devices) -> (bool, bool) {
        let count = self.count.get();
        (count > 0, count < EVENTFD_MAX)
    }
    fn flags(&self) -> u32 {
        self.flags.get()
    }
    fn set_flags(&self, flags: u32) {
        self.flags.set(flags);
    }
    fn proc_name(&self) -> Vec<u8> {
        b"anon_inode:[eventfd]".to_vec()
    }
}

impl EventFd {
    fn would_block(&self) -> Errno {
        Errno::would_block(self.flags.get() & O_NONBLOCK != 0)
    }
}

pub struct Interest {
    pub file: Weak<dyn File>,
    pub events: u32,
    pub data: u64,
    /// The file's poll generation when this edge-triggered entry was last
    /// reported (None: not since it was added or modified).
    pub reported: Cell<Option<u64>>,
}

impl Interest {
    pub fn new(file: Weak<dyn File>, events: u32, data: u64) -> Self {
        Self {
            file,
            events,
            data,
            reported: Cell::new(None),
        }
    }

    /// What this entry would report now: the events it wants that are
    /// ready (errors and hang-ups always), none if disabled (a one-shot
    /// entry already reported) or edge-triggered without a change since
    /// its last report.
    fn pending(&self, file: &dyn File, dev: &mut Devices) -> u32 {
        if self.events & !(EPOLLONESHOT | EPOLLET) == 0 {
            return 0;
        }
        let generation = file.poll_generation();
        if self.events & EPOLLET != 0 && generation.is_some() && generation == self.reported.get() {
            return 0;
        }
        file.poll_mask(dev) & (self.events | POLL_ERR | POLL_HUP)
    }
}

/// An epoll instance: its interest list.
pub struct Epoll {
    pub interest: RefCell<BTreeMap<i32, Interest>>,
    pub flags: u32,
}

impl Epoll {
    /// Up to `max` ready entries as (events, data); one-shot entries
    /// reported here are disabled.
    pub fn ready(&self, dev: &mut Devices, max: usize) -> Vec<(u32, u64)> {
        let live: Vec<(i32, Rc<dyn File>)> = self
            .interest
            .borrow()
            .iter()
            .filter_map(|(&fd, i)| Some((fd, i.file.upgrade()?)))
            .collect();
        let mut out = Vec::new();
        for (fd, file) in live {
            if out.len() == max {
                break;
            }
            // The entry is only read while its file is polled (a nested
            // epoll reads its own list meanwhile).
            let (revents, data) = match self.interest.borrow().get(&fd) {
                Some(i) => (i.pending(&*file, dev), i.data),
                None => continue,
            };
            if revents == 0 {
                continue;
            }
            out.push((revents, data));
            if let Some(i) = self.interest.borrow_mut().get_mut(&fd) {
                i.reported.set(file.poll_generation());
                if i.events & EPOLLONESHOT != 0 {
                    i.events = 0;
                }
            }
        }
        out
    }
}

impl Epoll {
    /// Whether `target` is this instance or watches it, directly or
    /// through nested instances: adding it here would make a cycle.
    pub fn reached_from(&self, target: &dyn File) -> bool {
        let Some(other) = target.as_epoll() else {
            return false;
        };
        if core::ptr::eq(other, self) {
            return true;
        }
        let nested: Vec<Rc<dyn File>> = other
            .interest
            .borrow()
            .values()
            .filter_map(|i| i.file.upgrade())
            .collect();
        nested.iter().any(|f| self.reached_from(&**f))
    }
}

impl File for Epoll {
    fn stat(&self, _dev: &mut Devices) -> Result<[u8; 144]> {
        Ok(synthetic_stat(0o600, 0, 0x81))
    }
    fn poll(&self, dev: &mut Devices) -> (bool, bool) {
        let any = self
            .interest
            .borrow()
            .values()
            .any(|i| i.file.upgrade().is_some_and(|f| i.pending(&*f, dev) != 0));
        (any, false)
    }
    fn flags(&self) -> u32 {
        self.flags
    }
    fn proc_name(&self) -> Vec<u8> {
        b"anon_inode:[eventpoll]".to_vec()
    }
    fn as_epoll(&self) -> Option<&Epoll> {
        Some(self)
    }
}
