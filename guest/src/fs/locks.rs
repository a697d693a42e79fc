//! Advisory file locks, shared by every process of the VM.
//!
//! - POSIX record locks (`fcntl` `F_SETLK`, `F_SETLKW`, `F_GETLK`) belong to
//!   the process: a byte range, read or write; released when the process
//!   closes *any* descriptor of the file, or exits.
//! - Open-file-description locks (`F_OFD_*`) and `flock` locks belong to the
//!   open file description and go away with its last descriptor.
//!
//! POSIX/OFD locks and `flock` locks are separate, as on Linux. A lock is
//! keyed by the file (its file system and node id). Blocking requests answer
//! `EBLOCK` and are retried when the event counter moves, like pipes; every
//! release bumps it. No deadlock detection (`EDEADLK` is never returned).

use alloc::collections::BTreeMap;
use alloc::rc::{Rc, Weak};
use alloc::vec::Vec;

use crate::errno::{Errno, Result};
use crate::fs::fd::File;

/// Which file a lock is on: (file system, node id), or an open file's
/// address for files that are not on a file system (pipes).
pub type LockKey = (usize, u64);

#[derive(Clone)]
pub enum Owner {
    /// A process (thread group id): POSIX record locks.
    Process(i32),
    /// An open file description: OFD and flock locks.
    File(Weak<dyn File>),
}

impl Owner {
    fn same(&self, other: &Owner) -> bool {
        match (self, other) {
            (Owner::Process(a), Owner::Process(b)) => a == b,
            (Owner::File(a), Owner::File(b)) => Weak::ptr_eq(a, b),
            _ => false,
        }
    }
}

#[derive(Clone)]
pub struct RecordLock {
    pub owner: Owner,
    pub start: u64,
    /// Exclusive end; `u64::MAX` reaches past any end of file.
    pub end: u64,
    pub write: bool,
}

/// A `flock` lock: the open file description holding it, and whether it
/// is exclusive.
type Flock = (Weak<dyn File>, bool);

#[derive(Default)]
pub struct Locks {
    records: BTreeMap<LockKey, Vec<RecordLock>>,
    flocks: BTreeMap<LockKey, Vec<Flock>>,
}

impl Locks {
    /// Drops locks whose owner is gone (`alive` says which processes live).
    fn prune(&mut self, key: LockKey, alive: &dyn Fn(i32) -> bool) {
        if let Some(list) = self.records.get_mut(&key) {
            list.retain(|l| match &l.owner {
                Owner::Process(pid) => alive(*pid),
                Owner::File(f) => f.strong_count() > 0,
            });
        }
        if let Some(list) = self.flocks.get_mut(&key) {
            list.retain(|(f, _)| f.strong_count() > 0);
        }
    }

    /// The first lock of another owner that conflicts with the request.
    pub fn conflict(
        &mut self,
        key: LockKey,
        want: &RecordLock,
        alive: &dyn Fn(i32) -> bool,
    ) -> Option<RecordLock> {
        self.prune(key, alive);
        self.records.get(&key)?.iter().find_map(|l| {
            let overlaps = l.start < want.end && want.start < l.end;
            (overlaps && (l.write || want.write) && !l.owner.same(&want.owner)).then(|| l.clone())
        })
    }

    /// Sets (or with `unlock`, clears) `lock`'s range for its owner; fails
    /// with `EAGAIN` on a conflict.
    pub fn set(
        &mut self,
        key: LockKey,
        lock: RecordLock,
        unlock: bool,
        alive: &dyn Fn(i32) -> bool,
    ) -> Result<()> {
        if !unlock && self.conflict(key, &lock, alive).is_some() {
            return Err(Errno::EAGAIN);
        }
        let list = self.records.entry(key).or_default();
        let mut kept = Vec::with_capacity(list.len() + 2);
        for l in list.drain(..) {
            let overlaps = l.start < lock.end && lock.start < l.end;
            if !overlaps || !l.owner.same(&lock.owner) {
                kept.push(l);
                continue;
            }
            // The owner's own lock: keep what lies outside the new range.
            if l.start < lock.start {
                kept.push(RecordLock {
                    end: lock.start,
                    ..l.clone()
                });
            }
            if l.end > lock.end {
                kept.push(RecordLock {
                    start: lock.end,
                    ..l
                });
            }
        }
        if !unlock {
            kept.push(lock);
        }
        *list = kept;
        if list.is_empty() {
            self.records.remove(&key);
        }
        crate::fs::pipe::bump();
        Ok(())
    }

    /// A process closed a descriptor of `key`: its POSIX locks there go.
    pub fn release_process(&mut self, key: LockKey, pid: i32) {
        if let Some(list) = self.records.get_mut(&key) {
            let before = list.len();
            list.retain(|l| !matches!(l.owner, Owner::Process(p) if p == pid));
            if list.len() != before {
                crate::fs::pipe::bump();
            }
        }
    }

    /// `flock`: takes (shared or `exclusive`) or, with `unlock`, drops the
    /// description's lock; `EAGAIN` when another description holds a
    /// conflicting one.
    pub fn flock(
        &mut self,
        key: LockKey,
        file: &Rc<dyn File>,
        exclusive: bool,
        unlock: bool,
    ) -> Result<()> {
        self.prune(key, &|_| true);
        let me = Rc::downgrade(file);
        let list = self.flocks.entry(key).or_default();
        if !unlock
            && list
                .iter()
                .any(|(f, ex)| !Weak::ptr_eq(f, &me) && (*ex || exclusive))
        {
            return Err(Errno::EAGAIN);
        }
        list.retain(|(f, _)| !Weak::ptr_eq(f, &me));
        if !unlock {
            list.push((me, exclusive));
        }
        crate::fs::pipe::bump();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(pid: i32, start: u64, end: u64, write: bool) -> RecordLock {
        RecordLock {
            owner: Owner::Process(pid),
            start,
            end,
            write,
        }
    }

    #[test]
    fn readers_share_writers_exclude_and_ranges_split() {
        let alive = |_| true;
        let mut locks = Locks::default();
        let key = (0, 7);
        locks
            .set(key, lock(1, 0, 100, false), false, &alive)
            .expect("read lock");
        locks
            .set(key, lock(2, 50, 150, false), false, &alive)
            .expect("shared read");
        assert_eq!(
            locks.set(key, lock(2, 0, 10, true), false, &alive),
            Err(Errno::EAGAIN)
        );
        // Process 1 unlocks the middle; 2 can now write there.
        locks
            .set(key, lock(1, 0, 100, false), true, &alive)
            .expect("unlock");
        locks
            .set(key, lock(2, 0, 40, true), false, &alive)
            .expect("write");
        let c = locks
            .conflict(key, &lock(3, 30, 31, false), &alive)
            .expect("conflict");
        assert!(matches!(c.owner, Owner::Process(2)) && c.write);
        // A dead owner's locks do not count.
        assert!(locks
            .conflict(key, &lock(3, 30, 31, true), &|pid| pid != 2)
            .is_none());
    }

    #[test]
    fn an_owner_replaces_its_own_range() {
        let alive = |_| true;
        let mut locks = Locks::default();
        let key = (0, 1);
        locks
            .set(key, lock(1, 0, u64::MAX, true), false, &alive)
            .expect("whole file");
        locks
            .set(key, lock(1, 10, 20, false), false, &alive)
            .expect("downgrade part");
        assert!(locks
            .conflict(key, &lock(2, 12, 13, false), &alive)
            .is_none());
        assert!(locks
            .conflict(key, &lock(2, 25, 26, false), &alive)
            .is_some());
        locks.release_process(key, 1);
        assert!(locks
            .conflict(key, &lock(2, 0, u64::MAX, true), &alive)
            .is_none());
    }
}
