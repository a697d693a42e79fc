//! eventfd and epoll system calls (the file kinds are `crate::fs::event`).

use crate::errno::{Errno, Result};
use crate::fs::event::*;
use crate::fs::fd::{O_CLOEXEC, O_NONBLOCK, O_RDWR};
use crate::kernel::Kernel;
use alloc::collections::BTreeMap;
use alloc::rc::{Rc, Weak};
use core::cell::{Cell, RefCell};

impl Kernel {
    pub fn sys_eventfd2(&mut self, initval: u32, flags: u32) -> Result<u64> {
        if flags & !(O_CLOEXEC | O_NONBLOCK | EFD_SEMAPHORE) != 0 {
            return Err(Errno::EINVAL);
        }
        let file = EventFd {
            count: Cell::new(u64::from(initval)),
            generation: Cell::new(0),
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
        let ep_file = self.proc_mut().fds.file(epfd)?;
        let target = self.proc_mut().fds.file(fd)?;
        let epoll = ep_file.as_epoll().ok_or(Errno::EINVAL)?;
        if Rc::ptr_eq(&ep_file, &target) {
            return Err(Errno::EINVAL);
        }
        if target.as_epoll().is_none() && !target.pollable() {
            return Err(Errno::EPERM);
        }
        // Linux refuses an epoll that watches this one (ELOOP): polling the
        // pair would never end.
        if op == EPOLL_CTL_ADD && epoll.reached_from(&*target) {
            return Err(Errno::ELOOP);
        }
        let read_event = |k: &mut Self| -> Result<(u32, u64)> {
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
                interest.insert(fd, Interest::new(file, events, data));
                Ok(0)
            }
            EPOLL_CTL_MOD if same => {
                let (events, data) = read_event(self)?;
                if let Some(i) = interest.get_mut(&fd) {
                    i.events = events;
                    i.reported.set(None);
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
        let ep_file = self.proc_mut().fds.file(epfd)?;
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
