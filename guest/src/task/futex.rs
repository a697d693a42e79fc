//! Futex wait queues for the scheduler.
//!
//! A waiting thread is blocked in a restartable `futex` call (see
//! `crate::task::process`): each time it is retried, the kernel asks this table
//! what became of it. The first attempt compares the word and queues the
//! thread; later attempts either find it woken (the call returns 0), or
//! still queued (it blocks again, as a queued Linux waiter does not look at
//! the word again), or past its deadline (ETIMEDOUT, and it leaves the
//! queue). Keys are `(thread group, address)` for private memory and
//! `(0, guest-physical address)` for `MAP_SHARED` memory, which processes
//! share across fork (see `Kernel::futex_key`).
//!
//! # Robust futex lists
//! [`exit_robust_list`] is Linux's `exit_robust_list`/`handle_futex_death`
//! (kernel/futex/core.c): when a thread exits, execs or dies with its
//! process, the list it registered with `set_robust_list` is walked in its
//! (still loaded) memory, and every futex word it still owns gets
//! `FUTEX_OWNER_DIED`, with one waiter woken when `FUTEX_WAITERS` was set.
//! The list is the application's, so every read may fail: a bad pointer
//! ends the walk, as on Linux, and never the kernel.
//!
//! Plain data, unit-tested on the host.

use alloc::collections::BTreeSet;
use alloc::vec::Vec;

use crate::task::process::Pid;

pub const FUTEX_WAIT: u32 = 0;
pub const FUTEX_WAKE: u32 = 1;
pub const FUTEX_REQUEUE: u32 = 3;
pub const FUTEX_CMP_REQUEUE: u32 = 4;
pub const FUTEX_WAIT_BITSET: u32 = 9;
pub const FUTEX_WAKE_BITSET: u32 = 10;
pub const FUTEX_PRIVATE_FLAG: u32 = 128;
pub const FUTEX_CLOCK_REALTIME: u32 = 256;
pub const BITSET_MATCH_ANY: u32 = u32::MAX;

/// The futex word's bits for robust (and PI) mutexes.
pub const FUTEX_WAITERS: u32 = 0x8000_0000;
pub const FUTEX_OWNER_DIED: u32 = 0x4000_0000;
pub const FUTEX_TID_MASK: u32 = 0x3fff_ffff;
/// At most this many list entries are visited (a guard against circular lists).
pub const ROBUST_LIST_LIMIT: usize = 2048;
/// `sizeof(struct robust_list_head)`: next, futex_offset, list_op_pending.
pub const ROBUST_LIST_HEAD_SIZE: u64 = 24;

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

/// The memory a robust list lives in. Every access may fail (unmapped,
/// outside the application's memory): the walk then stops.
pub trait RobustMemory {
    fn read_u64(&mut self, addr: u64) -> Option<u64>;
    fn read_u32(&mut self, addr: u64) -> Option<u32>;
    fn write_u32(&mut self, addr: u64, value: u32) -> Option<()>;
}

/// One list pointer: the address with the PI flag (bit 0) split off.
fn fetch_entry(mem: &mut dyn RobustMemory, at: u64) -> Option<(u64, bool)> {
    let raw = mem.read_u64(at)?;
    Some((raw & !1, raw & 1 != 0))
}

/// Linux's `handle_futex_death` for the futex word at `uaddr`: marks it
/// `FUTEX_OWNER_DIED` if `tid` owns it, keeping `FUTEX_WAITERS`, and queues
/// a wake of one waiter when that bit was set (not for PI futexes, whose
/// waiters Linux wakes through their PI state). A pending operation on an
/// unowned non-PI word only wakes (the owner died between releasing the
/// word and waking, or a woken waiter died before taking it). None when
/// the word cannot be read or written: the walk ends.
fn handle_death(
    mem: &mut dyn RobustMemory,
    uaddr: u64,
    tid: Pid,
    pi: bool,
    pending: bool,
    wakes: &mut Vec<u64>,
) -> Option<()> {
    if !uaddr.is_multiple_of(4) {
        return None;
    }
    let uval = mem.read_u32(uaddr)?;
    let owner = uval & FUTEX_TID_MASK;
    if pending && !pi && owner == 0 {
        wakes.push(uaddr);
        return Some(());
    }
    if owner != tid as u32 {
        return Some(());
    }
    // One vCPU and no preemption inside the kernel: read-modify-write is
    // as atomic as Linux's cmpxchg loop.
    mem.write_u32(uaddr, (uval & FUTEX_WAITERS) | FUTEX_OWNER_DIED)?;
    if !pi && uval & FUTEX_WAITERS != 0 {
        wakes.push(uaddr);
    }
    Some(())
}

/// Walks the robust list at `head` of dying thread `tid` (Linux's
/// `exit_robust_list`), marking the futex words it owns. Returns the
/// addresses at which one waiter each is to be woken, in walk order.
///
/// `struct robust_list_head { next, futex_offset, list_op_pending }`: the
/// entries form a circular list through their first word, back to `head`;
/// each entry's futex word is at the entry plus `futex_offset` (signed);
/// bit 0 of a pointer marks a PI futex. `list_op_pending` is an entry
/// being locked or unlocked when the thread died: handled after the list
/// (and not twice if it is also on it). At most [`ROBUST_LIST_LIMIT`]
/// entries are visited; the pending one is still handled after that. A
/// failed access ends the walk without handling the pending entry.
pub fn exit_robust_list(mem: &mut dyn RobustMemory, head: u64, tid: Pid) -> Vec<u64> {
    let mut wakes = Vec::new();
    // None: a failed access ended the walk early, which is not an error.
    let _ = walk(mem, head, tid, &mut wakes);
    wakes
}

fn walk(mem: &mut dyn RobustMemory, head: u64, tid: Pid, wakes: &mut Vec<u64>) -> Option<()> {
    let (mut entry, mut pi) = fetch_entry(mem, head)?;
    let offset = mem.read_u64(head.checked_add(8)?)?;
    let (pending, pending_pi) = fetch_entry(mem, head.checked_add(16)?)?;
    let mut limit = ROBUST_LIST_LIMIT;
    while entry != head {
        // The next pointer is read before the entry is handled, as Linux
        // does: a woken waiter may take the lock and relink the entry.
        let next = fetch_entry(mem, entry);
        if entry != pending {
            handle_death(mem, entry.wrapping_add(offset), tid, pi, false, wakes)?;
        }
        (entry, pi) = next?;
        limit -= 1;
        if limit == 0 {
            break;
        }
    }
    if pending != 0 {
        handle_death(
            mem,
            pending.wrapping_add(offset),
            tid,
            pending_pi,
            true,
            wakes,
        )?;
    }
    Some(())
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

    /// Application memory for the walk: `len` bytes at `base`, the rest
    /// unmapped; writes fail when `read_only`.
    struct Ram {
        base: u64,
        bytes: Vec<u8>,
        read_only: bool,
        reads: usize,
    }

    impl Ram {
        fn new(base: u64, len: usize) -> Self {
            Self {
                base,
                bytes: alloc::vec![0; len],
                read_only: false,
                reads: 0,
            }
        }
        fn at(&self, addr: u64, len: usize) -> Option<usize> {
            let off = usize::try_from(addr.checked_sub(self.base)?).ok()?;
            (off.checked_add(len)? <= self.bytes.len()).then_some(off)
        }
        fn put64(&mut self, addr: u64, v: u64) {
            let o = self.at(addr, 8).expect("in range");
            self.bytes[o..o + 8].copy_from_slice(&v.to_le_bytes());
        }
        fn put32(&mut self, addr: u64, v: u32) {
            let o = self.at(addr, 4).expect("in range");
            self.bytes[o..o + 4].copy_from_slice(&v.to_le_bytes());
        }
        fn get32(&self, addr: u64) -> u32 {
            let o = self.at(addr, 4).expect("in range");
            u32::from_le_bytes(self.bytes[o..o + 4].try_into().expect("4 bytes"))
        }
        /// A head at `head`: next, futex_offset, list_op_pending.
        fn head(&mut self, head: u64, next: u64, offset: i64, pending: u64) {
            self.put64(head, next);
            self.put64(head + 8, offset as u64);
            self.put64(head + 16, pending);
        }
    }

    impl RobustMemory for Ram {
        fn read_u64(&mut self, addr: u64) -> Option<u64> {
            self.reads += 1;
            let o = self.at(addr, 8)?;
            Some(u64::from_le_bytes(self.bytes[o..o + 8].try_into().ok()?))
        }
        fn read_u32(&mut self, addr: u64) -> Option<u32> {
            let o = self.at(addr, 4)?;
            Some(u32::from_le_bytes(self.bytes[o..o + 4].try_into().ok()?))
        }
        fn write_u32(&mut self, addr: u64, value: u32) -> Option<()> {
            let o = self.at(addr, 4).filter(|_| !self.read_only)?;
            self.bytes[o..o + 4].copy_from_slice(&value.to_le_bytes());
            Some(())
        }
    }

    const TID: Pid = 42;
    const BASE: u64 = 0x10_0000;
    /// Entries of 16 bytes: next pointer, then the futex word at +8.
    const OFF: i64 = 8;

    fn entry(i: u64) -> u64 {
        BASE + 0x100 + 16 * i
    }

    #[test]
    fn an_empty_list_changes_nothing() {
        let mut m = Ram::new(BASE, 0x1000);
        m.head(BASE, BASE, OFF, 0);
        assert!(exit_robust_list(&mut m, BASE, TID).is_empty());
        assert!(m.bytes[24..].iter().all(|&b| b == 0));
    }

    #[test]
    fn owned_words_are_marked_and_waiters_woken() {
        let mut m = Ram::new(BASE, 0x1000);
        m.head(BASE, entry(0), OFF, 0);
        m.put64(entry(0), entry(1));
        m.put64(entry(1), entry(2));
        m.put64(entry(2), BASE);
        m.put32(entry(0) + 8, TID as u32);
        m.put32(entry(1) + 8, 7 | FUTEX_WAITERS); // another owner
        m.put32(entry(2) + 8, TID as u32 | FUTEX_WAITERS);
        let wakes = exit_robust_list(&mut m, BASE, TID);
        assert_eq!(m.get32(entry(0) + 8), FUTEX_OWNER_DIED);
        assert_eq!(m.get32(entry(1) + 8), 7 | FUTEX_WAITERS);
        assert_eq!(m.get32(entry(2) + 8), FUTEX_OWNER_DIED | FUTEX_WAITERS);
        assert_eq!(wakes, [entry(2) + 8]);
    }

    #[test]
    fn a_negative_offset_reaches_a_word_before_the_entry() {
        let mut m = Ram::new(BASE, 0x1000);
        m.head(BASE, entry(1), -8, 0);
        m.put64(entry(1), BASE);
        m.put32(entry(1) - 8, TID as u32 | FUTEX_WAITERS);
        assert_eq!(exit_robust_list(&mut m, BASE, TID), [entry(1) - 8]);
        assert_eq!(m.get32(entry(1) - 8), FUTEX_OWNER_DIED | FUTEX_WAITERS);
    }

    #[test]
    fn a_circular_list_ends_at_the_limit_then_the_pending_entry_counts() {
        let mut m = Ram::new(BASE, 0x1000);
        m.head(BASE, entry(0), OFF, entry(5));
        m.put64(entry(0), entry(1));
        m.put64(entry(1), entry(0));
        m.put32(entry(0) + 8, TID as u32 | FUTEX_WAITERS);
        m.put32(entry(5) + 8, TID as u32);
        let wakes = exit_robust_list(&mut m, BASE, TID);
        // Marked once: the word no longer names the dead thread afterwards.
        assert_eq!(wakes, [entry(0) + 8]);
        assert_eq!(m.get32(entry(5) + 8), FUTEX_OWNER_DIED);
        // Three head reads, then one per visited entry.
        assert_eq!(m.reads, 3 + ROBUST_LIST_LIMIT);
    }

    #[test]
    fn a_long_list_is_walked_only_to_the_limit() {
        let n = ROBUST_LIST_LIMIT as u64 + 10;
        let mut m = Ram::new(BASE, 0x100 + 16 * n as usize);
        m.head(BASE, entry(0), OFF, 0);
        for i in 0..n {
            m.put64(entry(i), if i + 1 == n { BASE } else { entry(i + 1) });
            m.put32(entry(i) + 8, TID as u32);
        }
        exit_robust_list(&mut m, BASE, TID);
        let marked = (0..n)
            .filter(|&i| m.get32(entry(i) + 8) == FUTEX_OWNER_DIED)
            .count();
        assert_eq!(marked, ROBUST_LIST_LIMIT);
        assert_eq!(m.get32(entry(n - 1) + 8), TID as u32);
    }

    #[test]
    fn the_pending_entry_is_handled_once_and_unowned_only_woken() {
        let mut m = Ram::new(BASE, 0x1000);
        // Pending and also on the list: handled once, after the list.
        m.head(BASE, entry(0), OFF, entry(0));
        m.put64(entry(0), BASE);
        m.put32(entry(0) + 8, TID as u32 | FUTEX_WAITERS);
        assert_eq!(exit_robust_list(&mut m, BASE, TID), [entry(0) + 8]);
        assert_eq!(m.get32(entry(0) + 8), FUTEX_OWNER_DIED | FUTEX_WAITERS);
        // Pending on a released word (owner 0): a wake, the word untouched.
        m.head(BASE, BASE, OFF, entry(1));
        m.put32(entry(1) + 8, FUTEX_WAITERS);
        assert_eq!(exit_robust_list(&mut m, BASE, TID), [entry(1) + 8]);
        assert_eq!(m.get32(entry(1) + 8), FUTEX_WAITERS);
        // On the list (not pending), an unowned word is left alone.
        m.head(BASE, entry(1), OFF, 0);
        m.put64(entry(1), BASE);
        assert!(exit_robust_list(&mut m, BASE, TID).is_empty());
    }

    #[test]
    fn pi_entries_are_marked_without_a_wake() {
        let mut m = Ram::new(BASE, 0x1000);
        m.head(BASE, entry(0) | 1, OFF, entry(1) | 1);
        m.put64(entry(0), BASE);
        m.put32(entry(0) + 8, TID as u32 | FUTEX_WAITERS);
        // A PI pending entry with no owner is not even woken.
        m.put32(entry(1) + 8, 0);
        assert!(exit_robust_list(&mut m, BASE, TID).is_empty());
        assert_eq!(m.get32(entry(0) + 8), FUTEX_OWNER_DIED | FUTEX_WAITERS);
        assert_eq!(m.get32(entry(1) + 8), 0);
    }

    #[test]
    fn bad_pointers_end_the_walk_before_the_pending_entry() {
        let mut m = Ram::new(BASE, 0x1000);
        m.put32(entry(3) + 8, TID as u32);
        // The next pointer leads outside memory.
        m.head(BASE, entry(0), OFF, entry(3));
        m.put64(entry(0), 0x7000_0000_0000);
        m.put32(entry(0) + 8, TID as u32);
        assert!(exit_robust_list(&mut m, BASE, TID).is_empty());
        assert_eq!(m.get32(entry(0) + 8), FUTEX_OWNER_DIED);
        assert_eq!(m.get32(entry(3) + 8), TID as u32);
        // A misaligned futex word.
        m.head(BASE, entry(1), OFF + 1, entry(3));
        m.put64(entry(1), BASE);
        assert!(exit_robust_list(&mut m, BASE, TID).is_empty());
        assert_eq!(m.get32(entry(3) + 8), TID as u32);
        // The head itself unreadable, or at the very top of the address space.
        assert!(exit_robust_list(&mut m, 0x10, TID).is_empty());
        assert!(exit_robust_list(&mut m, u64::MAX - 7, TID).is_empty());
        // Memory that cannot be written.
        m.head(BASE, entry(2), OFF, entry(3));
        m.put64(entry(2), BASE);
        m.put32(entry(2) + 8, TID as u32);
        m.read_only = true;
        assert!(exit_robust_list(&mut m, BASE, TID).is_empty());
        assert_eq!(m.get32(entry(2) + 8), TID as u32);
        assert_eq!(m.get32(entry(3) + 8), TID as u32);
    }
}
