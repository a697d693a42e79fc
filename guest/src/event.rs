//! eventfd and epoll.
//!
//! Both block like pipes (see `crate::pipe`): a call that must wait answers
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
use crate::fd::{File, O_CLOEXEC, O_NONBLOCK, O_RDWR};
use crate::files::synthetic_stat;
use crate::kernel::{Devices, Kernel};
use crate::pipe::bump;

const EFD_SEMAPHORE: u32 = 1;
const EPOLLIN: u32 = 0x001;
const EPOLLPRI: u32 = 0x002;
const EPOLLOUT: u32 = 0x004;
const EPOLLRDNORM: u32 = 0x040;
const EPOLLWRNORM: u32 = 0x100;
const EPOLLONESHOT: u32 = 1 << 30;
const EPOLL_CTL_ADD: u32 = 1;
const EPOLL_CTL_DEL: u32 = 2;
const EPOLL_CTL_MOD: u32 = 3;
/// Size of `struct epoll_event` on x86-64 (packed: u32 events, u64 data).
const EVENT_SIZE: usize = 12;
/// The largest value an eventfd counter may hold.
const EVENTFD_MAX: u64 = u64::MAX - 1;

/// A 64-bit counter: writes add, reads take (all, or one with `EFD_SEMAPHORE`).
pub struct EventFd {
    count: Cell<u64>,
    semaphore: bool,
    flags: Cell<u32>,
}

impl File for EventFd {
    fn read(&self, _dev: &mut Devices, buf: &mut [u8]) -> Result<usize> {
        let out = buf.get_mut(..8).ok_or(Errno::EINVAL)?;
        let count = self.count.get();
        if count == 0 {
            return Err(self.would_block());
        }
        let taken = if self.semaphore { 1 } else { count };
        self.count.set(count - taken);
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
        if self.flags.get() & O_NONBLOCK != 0 {
            Errno::EAGAIN
        } else {
            Errno::EBLOCK
        }
    }
}

struct Interest {
    file: Weak<dyn File>,
    events: u32,
    data: u64,
}

/// An epoll instance: its interest list.
pub struct Epoll {
    interest: RefCell<BTreeMap<i32, Interest>>,
    flags: u32,
}

impl Epoll {
    /// Up to `max` ready entries as (events, data); one-shot entries
    /// reported here are disabled.
    fn ready(&self, dev: &mut Devices, max: usize) -> Vec<(u32, u64)> {
        let live: Vec<(i32, Rc<dyn File>, u32, u64)> = self
            .interest
            .borrow()
            .iter()
            .filter_map(|(&fd, i)| Some((fd, i.file.upgrade()?, i.events, i.data)))
            .collect();
        let mut out = Vec::new();
        for (fd, file, events, data) in live {
            if out.len() == max {
                break;
            }
            let (readable, writable) = file.poll(dev);
            let mut revents = 0;
            if readable {
                revents |= events & (EPOLLIN | EPOLLRDNORM);
            }
            if writable {
                revents |= events & (EPOLLOUT | EPOLLWRNORM);
            }
            if revents == 0 {
                continue;
            }
            out.push((revents, data));
            if events & EPOLLONESHOT != 0 {
                if let Some(i) = self.interest.borrow_mut().get_mut(&fd) {
                    i.events = 0;
                }
            }
        }
        out
    }
}

impl File for Epoll {
    fn stat(&self, _dev: &mut Devices) -> Result<[u8; 144]> {
        Ok(synthetic_stat(0o600, 0, 0x81))
    }
    fn poll(&self, dev: &mut Devices) -> (bool, bool) {
        let any = self.interest.borrow().values().any(|i| {
            i.events & !EPOLLONESHOT != 0
                && i.file.upgrade().is_some_and(|f| {
                    let (r, w) = f.poll(dev);
                    (r && i.events & (EPOLLIN | EPOLLPRI) != 0) || (w && i.events & EPOLLOUT != 0)
                })
        });
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

impl Kernel {
    pub fn sys_eventfd2(&mut self, initval: u32, flags: u32) -> Result<u64> {
        if flags & !(O_CLOEXEC | O_NONBLOCK | EFD_SEMAPHORE) != 0 {
            return Err(Errno::EINVAL);
        }
        let file = EventFd {
            count: Cell::new(u64::from(initval)),
            semaphore: flags & EFD_SEMAPHORE != 0,
            flags: Cell::new(O_RDWR | (flags & O_NONBLOCK)),
        };
        self.install(Rc::new(file), flags & O_CLOEXEC != 0)
    }

    pub fn sys_epoll_create1(&mut self, flags: u32) -> Result<u64> {
        if flags & !O_CLOEXEC != 0 {
            return Err(Errno::EINVAL);
        }
        let epoll = Epoll {
            interest: RefCell::new(BTreeMap::new()),
            flags: O_RDWR,
        };
        self.install(Rc::new(epoll), flags & O_CLOEXEC != 0)
    }

    pub fn sys_epoll_ctl(&mut self, epfd: i32, op: u32, fd: i32, event: u64) -> Result<u64> {
        let ep_file = self.fds.file(epfd)?;
        let target = self.fds.file(fd)?;
        let epoll = ep_file.as_epoll().ok_or(Errno::EINVAL)?;
        if Rc::ptr_eq(&ep_file, &target) {
            return Err(Errno::EINVAL);
        }
        if target.as_epoll().is_none() && !target.pollable() {
            return Err(Errno::EPERM);
        }
        let read_event = |k: &Self| -> Result<(u32, u64)> {
            let raw = k.user_buf(event, EVENT_SIZE)?;
            let events = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
            let mut data = [0u8; 8];
            data.copy_from_slice(&raw[4..12]);
            Ok((events, u64::from_le_bytes(data)))
        };
        let mut interest = epoll.interest.borrow_mut();
        let same = interest
            .get(&fd)
            .is_some_and(|i| Weak::ptr_eq(&i.file, &Rc::downgrade(&target)));
        match op {
            EPOLL_CTL_ADD if same => Err(Errno::EEXIST),
            EPOLL_CTL_ADD => {
                let (events, data) = read_event(self)?;
                let file = Rc::downgrade(&target);
                interest.insert(fd, Interest { file, events, data });
                Ok(0)
            }
            EPOLL_CTL_MOD if same => {
                let (events, data) = read_event(self)?;
                if let Some(i) = interest.get_mut(&fd) {
                    i.events = events;
                    i.data = data;
                }
                Ok(0)
            }
            EPOLL_CTL_DEL if same => {
                interest.remove(&fd);
                Ok(0)
            }
            EPOLL_CTL_MOD | EPOLL_CTL_DEL => Err(Errno::ENOENT),
            _ => Err(Errno::EINVAL),
        }
    }

    /// epoll_wait and epoll_pwait (the signal mask argument is not applied,
    /// as for ppoll and pselect; see docs/syscalls.md).
    pub fn sys_epoll_wait(
        &mut self,
        epfd: i32,
        events: u64,
        max: i32,
        timeout_ns: Option<u64>,
    ) -> Result<u64> {
        let max = usize::try_from(max)
            .ok()
            .filter(|&m| m > 0 && m <= i32::MAX as usize / EVENT_SIZE)
            .ok_or(Errno::EINVAL)?;
        let ep_file = self.fds.file(epfd)?;
        let epoll = ep_file.as_epoll().ok_or(Errno::EINVAL)?;
        // Check the buffer before consuming one-shot entries.
        self.user_buf_mut(events, max * EVENT_SIZE)?;
        let ready = epoll.ready(&mut self.dev, max);
        if ready.is_empty() {
            self.block_until(timeout_ns)?;
            return Ok(0);
        }
        let out = self.user_buf_mut(events, ready.len() * EVENT_SIZE)?;
        for (slot, (revents, data)) in out.chunks_exact_mut(EVENT_SIZE).zip(&ready) {
            slot[..4].copy_from_slice(&revents.to_le_bytes());
            slot[4..].copy_from_slice(&data.to_le_bytes());
        }
        Ok(ready.len() as u64)
    }

    /// epoll_pwait2: the timeout is a timespec (none: wait indefinitely).
    pub fn sys_epoll_pwait2(
        &mut self,
        epfd: i32,
        events: u64,
        max: i32,
        timeout: u64,
    ) -> Result<u64> {
        let timeout_ns = if timeout == 0 {
            None
        } else {
            Some(self.timespec_ns(timeout)?)
        };
        self.sys_epoll_wait(epfd, events, max, timeout_ns)
    }
}
