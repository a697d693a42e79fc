//! Futex wait queues for the cooperative scheduler.
//!
//! A waiting thread is blocked in a restartable `futex` call (see
//! `crate::process`): each time it is retried, the kernel asks this table
//! what became of it. The first attempt compares the word and queues the
//! thread; later attempts either find it woken (the call returns 0), or
//! still queued (it blocks again, as a queued Linux waiter does not look at
//! the word again), or past its deadline (ETIMEDOUT, and it leaves the
//! queue). Keys are `(thread group, address)` for private memory and
//! `(0, guest-physical address)` for `MAP_SHARED` memory, which processes
//! share across fork (see `Kernel::futex_key`).
//!
//! Plain data, unit-tested on the host.

use alloc::collections::BTreeSet;
use alloc::vec::Vec;

use crate::process::Pid;

pub const FUTEX_WAIT: u32 = 0;
pub const FUTEX_WAKE: u32 = 1;
pub const FUTEX_REQUEUE: u32 = 3;
pub const FUTEX_CMP_REQUEUE: u32 = 4;
pub const FUTEX_WAIT_BITSET: u32 = 9;
pub const FUTEX_WAKE_BITSET: u32 = 10;
pub const FUTEX_PRIVATE_FLAG: u32 = 128;
pub const FUTEX_CLOCK_REALTIME: u32 = 256;
pub const BITSET_MATCH_ANY: u32 = u32::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Waiter {
    tid: Pid,
    tgid: Pid,
    addr: u64,
    bitset: u32,
}

/// What a retried wait learns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Not queued yet: compare the word and call [`Futexes::enqueue`].
    First,
    /// A wake reached it: the call returns 0.
    Woken,
    /// Still queued: block again.
    Queued,
}

#[derive(Default)]
pub struct Futexes {
    /// In arrival order, so wakes are FIFO like Linux's per-priority queues.
    queue: Vec<Waiter>,
    woken: BTreeSet<Pid>,
}

impl Futexes {
    pub fn state(&mut self, tid: Pid) -> Wait {
        if self.woken.remove(&tid) {
            Wait::Woken
        } else if self.queue.iter().any(|w| w.tid == tid) {
            Wait::Queued
        } else {
            Wait::First
        }
    }

    pub fn enqueue(&mut self, tid: Pid, tgid: Pid, addr: u64, bitset: u32) {
        self.queue.push(Waiter {
            tid,
            tgid,
            addr,
            bitset,
        });
    }

    /// Takes `tid` off the queue (timeout, exit) and forgets a pending wake.
    pub fn forget(&mut self, tid: Pid) {
        self.queue.retain(|w| w.tid != tid);
        self.woken.remove(&tid);
    }

    /// Wakes up to `n` waiters on `(tgid, addr)` whose bitset meets `bitset`.
    pub fn wake(&mut self, tgid: Pid, addr: u64, n: u32, bitset: u32) -> u32 {
        let mut done = 0;
        let mut i = 0;
        while i < self.queue.len() && done < n {
            let w = self.queue[i];
            if w.tgid == tgid && w.addr == addr && w.bitset & bitset != 0 {
                self.queue.remove(i);
                self.woken.insert(w.tid);
                done += 1;
            } else {
                i += 1;
            }
        }
        done
    }

    /// FUTEX_REQUEUE: wakes up to `n` waiters on `addr`, then moves up to
    /// `moved` of the rest to `to`. Returns woken + moved, as Linux does.
    pub fn requeue(&mut self, tgid: Pid, addr: u64, n: u32, to: u64, moved: u32) -> u32 {
        let woken = self.wake(tgid, addr, n, BITSET_MATCH_ANY);
        let mut count = 0;
        for w in self.queue.iter_mut() {
            if count == moved {
                break;
            }
            if w.tgid == tgid && w.addr == addr {
                w.addr = to;
                count += 1;
            }
        }
        woken + count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_then_wake_in_fifo_order() {
        let mut f = Futexes::default();
        assert_eq!(f.state(5), Wait::First);
        f.enqueue(5, 1, 0x1000, BITSET_MATCH_ANY);
        f.enqueue(6, 1, 0x1000, BITSET_MATCH_ANY);
        f.enqueue(7, 2, 0x1000, BITSET_MATCH_ANY);
        assert_eq!(f.state(5), Wait::Queued);
        assert_eq!(f.wake(1, 0x1000, 1, BITSET_MATCH_ANY), 1);
        assert_eq!(f.state(6), Wait::Queued);
        assert_eq!(f.state(5), Wait::Woken);
        assert_eq!(f.state(5), Wait::First);
        // Another group's word at the same address is another futex.
        assert_eq!(f.wake(1, 0x1000, 10, BITSET_MATCH_ANY), 1);
        assert_eq!(f.state(7), Wait::Queued);
    }

    #[test]
    fn bitsets_requeue_and_forget() {
        let mut f = Futexes::default();
        f.enqueue(5, 1, 0x10, 0b01);
        f.enqueue(6, 1, 0x10, 0b10);
        assert_eq!(f.wake(1, 0x10, 10, 0b10), 1);
        assert_eq!(f.state(6), Wait::Woken);
        f.enqueue(7, 1, 0x10, BITSET_MATCH_ANY);
        f.enqueue(8, 1, 0x10, BITSET_MATCH_ANY);
        assert_eq!(f.requeue(1, 0x10, 1, 0x20, 5), 3);
        assert_eq!(f.state(5), Wait::Woken);
        assert_eq!(f.wake(1, 0x10, 10, BITSET_MATCH_ANY), 0);
        assert_eq!(f.wake(1, 0x20, 1, BITSET_MATCH_ANY), 1);
        assert_eq!(f.state(7), Wait::Woken);
        f.forget(8);
        assert_eq!(f.state(8), Wait::First);
    }
}
