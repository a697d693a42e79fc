//! Memory management: the application's mappings and the addresses they
//! take (this module), the page tables and frames behind them (`space`),
//! and the kernel heap (`heap`).
//!
//! A mapping only reserves addresses: `Vmas` records what each range
//! allows, and `space` gives a page a frame when it is first touched.
//! Kernel memory (boot data, the kernel image, the heap, the MMIO window)
//! is identity mapped in every address space, so a kernel address is also
//! a guest-physical one and the kernel finds itself wherever it runs.
//!
//! Layout, as Linux's: a static non-PIE program at its link address
//! (usually 0x400000) with its break right after it; a PIE program at
//! 0x555555554000 with its break after it; the stack below `USER_TOP` and
//! `mmap` regions from below the stack down.

pub mod cache;
pub mod heap;
pub mod space;

use alloc::collections::BTreeMap;
use alloc::rc::Rc;
use alloc::vec::Vec;

use crate::errno::{Errno, Result};

pub const PAGE_SIZE: u64 = 4096;

pub fn page_up(v: u64) -> Option<u64> {
    Some(v.checked_add(PAGE_SIZE - 1)? & !(PAGE_SIZE - 1))
}
pub fn page_down(v: u64) -> u64 {
    v & !(PAGE_SIZE - 1)
}

/// Free physical (= virtual) address ranges, sorted and disjoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Regions {
    free: Vec<(u64, u64)>,
}

impl Regions {
    pub fn new(start: u64, end: u64) -> Self {
        let mut r = Self { free: Vec::new() };
        if end > start {
            r.free.push((start, end));
        }
        r
    }

    /// Claims exactly `[start, end)` if all of it is free.
    pub fn reserve(&mut self, start: u64, end: u64) -> bool {
        if start >= end {
            return start == end;
        }
        let Some(i) = self.free.iter().position(|&(s, e)| s <= start && end <= e) else {
            return false;
        };
        let (s, e) = self.free[i];
        self.free.remove(i);
        if end < e {
            self.free.insert(i, (end, e));
        }
        if s < start {
            self.free.insert(i, (s, start));
        }
        true
    }

    /// Claims `len` bytes aligned to `align` from the highest free range that fits.
    pub fn alloc_top(&mut self, len: u64, align: u64) -> Option<u64> {
        if len == 0 || !align.is_power_of_two() {
            return None;
        }
        let (start, _) = self.free.iter().rev().find_map(|&(s, e)| {
            let start = e.checked_sub(len)? & !(align - 1);
            (start >= s).then_some((start, e))
        })?;
        self.reserve(start, start + len).then_some(start)
    }

    /// Claims `len` bytes aligned to `align` from the lowest free range
    /// that fits at or above `min`.
    pub fn alloc_above(&mut self, min: u64, len: u64, align: u64) -> Option<u64> {
        if len == 0 || !align.is_power_of_two() {
            return None;
        }
        let start = self.free.iter().find_map(|&(s, e)| {
            let start = s.max(min).checked_add(align - 1)? & !(align - 1);
            (start.checked_add(len)? <= e).then_some(start)
        })?;
        self.reserve(start, start + len).then_some(start)
    }

    /// Gives `[start, end)` back, merging with neighbours.
    pub fn free(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let i = self.free.partition_point(|&(s, _)| s < start);
        self.free.insert(i, (start, end));
        if i + 1 < self.free.len() && self.free[i].1 >= self.free[i + 1].0 {
            self.free[i].1 = self.free[i].1.max(self.free[i + 1].1);
            self.free.remove(i + 1);
        }
        if i > 0 && self.free[i - 1].1 >= self.free[i].0 {
            self.free[i - 1].1 = self.free[i - 1].1.max(self.free[i].1);
            self.free.remove(i);
        }
    }

    pub fn free_bytes(&self) -> u64 {
        self.free.iter().map(|(s, e)| e - s).sum()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vma {
    pub end: u64,
    pub prot: u32,
    /// `MAP_SHARED`: fork shares its frames instead of copying on write.
    pub shared: bool,
    /// The file whose contents the pages start with (read when first
    /// touched), or none: anonymous memory, zero when first touched.
    pub file: Option<FileRef>,
}

/// A mapping's file: its id in `Mm::backing`, and the file offset of the
/// mapping's first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileRef {
    pub id: u32,
    pub offset: u64,
}

impl Vma {
    /// The part of this mapping (which starts at `start`) from `at` on.
    fn from(self, start: u64, at: u64) -> Vma {
        Vma {
            file: self.file.map(|f| FileRef {
                offset: f.offset + (at - start),
                ..f
            }),
            ..self
        }
    }

    /// The file and the offset behind `va` (in this mapping starting at `start`).
    pub fn file_at(&self, start: u64, va: u64) -> Option<FileRef> {
        self.from(start, va).file
    }
}

/// The application's mappings (start -> end, prot).
#[derive(Clone, Debug, Default)]
pub struct Vmas {
    map: BTreeMap<u64, Vma>,
    /// The span whose mappings changed since the page tables last followed
    /// them (see `take_changed`).
    changed: Option<(u64, u64)>,
}

impl Vmas {
    pub fn insert(&mut self, start: u64, end: u64, prot: u32) {
        self.insert_vma(start, end, prot, false);
    }

    pub fn insert_vma(&mut self, start: u64, end: u64, prot: u32, shared: bool) {
        self.insert_with(
            start,
            Vma {
                end,
                prot,
                shared,
                file: None,
            },
        );
    }

    /// Maps `[start, vma.end)` as `vma` says, replacing what was there.
    pub fn insert_with(&mut self, start: u64, vma: Vma) {
        self.remove(start, vma.end);
        self.map.insert(start, vma);
    }

    /// The ids of the files mappings read from.
    pub fn file_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.map.values().filter_map(|v| v.file.map(|f| f.id))
    }

    /// Records that `[start, end)` changed.
    pub fn note_changed(&mut self, start: u64, end: u64) {
        self.changed = Some(match self.changed {
            Some((s, e)) => (s.min(start), e.max(end)),
            None => (start, end),
        });
    }

    /// The span that changed since the last call.
    pub fn take_changed(&mut self) -> Option<(u64, u64)> {
        self.changed.take()
    }

    /// What the page at `va` allows and whether it is shared, if mapped.
    pub fn page_kind(&self, va: u64) -> Option<space::PageKind> {
        self.get(va).map(|(_, v)| space::PageKind {
            access: space::Access::of_prot(v.prot),
            shared: v.shared,
        })
    }

    /// Whether `[start, end)` is mapped and the application may read
    /// (`write`: and write) every page of it: the kernel must not touch for
    /// it what it could not touch itself.
    pub fn allows(&self, start: u64, end: u64, write: bool) -> bool {
        let need = if write {
            PROT_WRITE
        } else {
            PROT_READ | PROT_WRITE | PROT_EXEC
        };
        self.covered_by(start, end, |prot| prot & need != 0)
    }

    /// Whether mappings whose protections `accept` takes cover every byte
    /// of `[start, end)` without a gap.
    fn covered_by(&self, start: u64, end: u64, accept: impl Fn(u32) -> bool) -> bool {
        if start >= end {
            return true;
        }
        let Some((first, _)) = self.get(start) else {
            return false;
        };
        let mut covered_to = first;
        for (&s, v) in self.map.range(first..) {
            if s != covered_to || !accept(v.prot) {
                return false;
            }
            covered_to = v.end;
            if covered_to >= end {
                return true;
            }
        }
        false
    }

    /// Unmaps `[start, end)`, splitting mappings that straddle it; returns the
    /// subranges that were mapped.
    pub fn remove(&mut self, start: u64, end: u64) -> Vec<(u64, u64)> {
        self.note_changed(start, end);
        let mut removed = Vec::new();
        let overlapping: Vec<(u64, Vma)> = self
            .map
            .range(..end)
            .filter(|(&s, v)| s < end && v.end > start)
            .map(|(&s, &v)| (s, v))
            .collect();
        for (s, v) in overlapping {
            self.map.remove(&s);
            if s < start {
                self.map.insert(s, Vma { end: start, ..v });
            }
            if v.end > end {
                self.map.insert(end, v.from(s, end));
            }
            removed.push((s.max(start), v.end.min(end)));
        }
        removed
    }

    /// Whether any mapping overlaps `[start, end)`.
    pub fn overlaps(&self, start: u64, end: u64) -> bool {
        self.map
            .range(..end)
            .next_back()
            .is_some_and(|(_, v)| v.end > start)
    }

    /// Whether every byte of `[start, end)` is mapped.
    pub fn covers(&self, start: u64, end: u64) -> bool {
        self.covered_by(start, end, |_| true)
    }

    /// Changes the protection of `[start, end)`; ENOMEM if part is unmapped.
    pub fn protect(&mut self, start: u64, end: u64, prot: u32) -> Result<()> {
        if !self.covers(start, end) {
            return Err(Errno::ENOMEM);
        }
        let pieces: Vec<(u64, Vma)> = self
            .map
            .range(..end)
            .filter(|(&s, v)| s < end && v.end > start)
            .map(|(&s, v)| {
                let at = s.max(start);
                let piece = Vma {
                    end: v.end.min(end),
                    prot,
                    ..v.from(s, at)
                };
                (at, piece)
            })
            .collect();
        self.remove(start, end);
        for (s, piece) in pieces {
            self.map.insert(s, piece);
        }
        Ok(())
    }

    pub fn get(&self, addr: u64) -> Option<(u64, Vma)> {
        let (&s, &v) = self.map.range(..=addr).next_back()?;
        (addr < v.end).then_some((s, v))
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Every mapping as `(start, end, prot)`.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64, u32)> + '_ {
        self.map.iter().map(|(&s, v)| (s, v.end, v.prot))
    }

    /// The `MAP_SHARED` mappings, as `(start, end, prot)`.
    pub fn shared(&self) -> impl Iterator<Item = (u64, u64, u32)> + '_ {
        self.map
            .iter()
            .filter(|(_, v)| v.shared)
            .map(|(&s, v)| (s, v.end, v.prot))
    }

    /// The private parts of `[start, end)`.
    pub fn private_ranges(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        self.map
            .range(..end)
            .filter(|(&s, v)| s < end && v.end > start && !v.shared)
            .map(|(&s, v)| (s.max(start), v.end.min(end)))
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// A `MAP_SHARED` mapping of a file: its pages are the file's, written
/// back on `msync`, `munmap`, exit and exec (`crate::kernel::mm`). `F` is
/// the file object's type, which the layers above mm define.
pub struct MappedFile<F: ?Sized> {
    pub start: u64,
    pub end: u64,
    pub file: Rc<F>,
    /// File offset of `start`.
    pub offset: u64,
}

impl<F: ?Sized> Clone for MappedFile<F> {
    fn clone(&self) -> Self {
        Self {
            file: self.file.clone(),
            ..*self
        }
    }
}

/// The process's `MAP_SHARED` file mappings by start address.
pub struct MappedFiles<F: ?Sized> {
    map: BTreeMap<u64, MappedFile<F>>,
}

impl<F: ?Sized> Default for MappedFiles<F> {
    fn default() -> Self {
        Self {
            map: BTreeMap::new(),
        }
    }
}

impl<F: ?Sized> Clone for MappedFiles<F> {
    fn clone(&self) -> Self {
        Self {
            map: self.map.clone(),
        }
    }
}

impl<F: ?Sized> core::fmt::Debug for MappedFiles<F> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list()
            .entries(self.map.values().map(|m| (m.start, m.end, m.offset)))
            .finish()
    }
}

impl<F: ?Sized> MappedFiles<F> {
    pub fn insert(&mut self, m: MappedFile<F>) {
        self.take(m.start, m.end);
        self.map.insert(m.start, m);
    }

    /// The parts of mappings inside `[start, end)`, left in place.
    pub fn within(&self, start: u64, end: u64) -> Vec<MappedFile<F>> {
        self.map
            .range(..end)
            .rev()
            .take_while(|(_, m)| m.end > start)
            .map(|(_, m)| {
                let s = m.start.max(start);
                MappedFile {
                    start: s,
                    end: m.end.min(end),
                    file: m.file.clone(),
                    offset: m.offset + (s - m.start),
                }
            })
            .collect()
    }

    /// Removes the parts of mappings inside `[start, end)` (splitting those
    /// that straddle it) and returns them.
    pub fn take(&mut self, start: u64, end: u64) -> Vec<MappedFile<F>> {
        let taken = self.within(start, end);
        for part in &taken {
            let Some((&s, _)) = self.map.range(..=part.start).next_back() else {
                continue;
            };
            let Some(m) = self.map.remove(&s) else {
                continue;
            };
            if m.start < part.start {
                let head = MappedFile {
                    end: part.start,
                    ..m.clone()
                };
                self.map.insert(m.start, head);
            }
            if m.end > part.end {
                let tail = MappedFile {
                    start: part.end,
                    offset: m.offset + (part.end - m.start),
                    ..m
                };
                self.map.insert(part.end, tail);
            }
        }
        taken
    }
}

pub const PROT_NONE: u32 = 0;
pub const PROT_READ: u32 = 1;
pub const PROT_WRITE: u32 = 2;
pub const PROT_EXEC: u32 = 4;
pub const MAP_SHARED: u32 = 0x01;
pub const MAP_PRIVATE: u32 = 0x02;
pub const MAP_FIXED: u32 = 0x10;
pub const MAP_ANONYMOUS: u32 = 0x20;
pub const MAP_FIXED_NOREPLACE: u32 = 0x10_0000;

/// Where a PIE program goes, as on Linux (`ELF_ET_DYN_BASE`).
pub const PIE_BASE: u64 = 0x5555_5555_4000;

/// Address-space state of one process: free addresses, mappings, the
/// break, and its shared file mappings (of file objects of type `F`).
#[derive(Debug)]
pub struct Mm<F: ?Sized> {
    pub regions: Regions,
    pub vmas: Vmas,
    pub brk_start: u64,
    pub brk: u64,
    /// End of the memory reserved for the break (page aligned).
    pub brk_end: u64,
    /// Where the argument strings and the initial stack lie (`/proc/self`).
    pub args: (u64, u64),
    pub stack: (u64, u64),
    pub files: MappedFiles<F>,
    /// The files mappings read their pages from, by `FileRef::id`.
    pub backing: BTreeMap<u32, Rc<F>>,
    next_backing: u32,
}

impl<F: ?Sized> Default for Mm<F> {
    fn default() -> Self {
        Self {
            regions: Regions::default(),
            vmas: Vmas::default(),
            brk_start: 0,
            brk: 0,
            brk_end: 0,
            args: (0, 0),
            stack: (0, 0),
            files: MappedFiles::default(),
            backing: BTreeMap::new(),
            next_backing: 0,
        }
    }
}

impl<F: ?Sized> Clone for Mm<F> {
    fn clone(&self) -> Self {
        Self {
            regions: self.regions.clone(),
            vmas: self.vmas.clone(),
            files: self.files.clone(),
            backing: self.backing.clone(),
            ..*self
        }
    }
}

impl<F: ?Sized> Mm<F> {
    /// A fresh address space owning `[low_start, low_end)` (below the
    /// kernel heap) and `[HIGH_USER_START, USER_TOP)`.
    pub fn new(low_start: u64, low_end: u64) -> Self {
        let mut regions = Regions::new(page_up(low_start).unwrap_or(low_end), low_end);
        regions.free(space::HIGH_USER_START, space::USER_TOP);
        Self {
            regions,
            ..Self::default()
        }
    }

    /// Makes the mapping just made at `[start, end)` read its pages from
    /// `file`, starting at `offset`.
    pub fn attach_file(&mut self, start: u64, end: u64, file: Rc<F>, offset: u64) {
        let id = self.next_backing;
        self.next_backing = self.next_backing.wrapping_add(1);
        self.backing.insert(id, file);
        if let Some((s, vma)) = self.vmas.get(start) {
            if s == start && vma.end == end {
                self.vmas.insert_with(
                    start,
                    Vma {
                        file: Some(FileRef { id, offset }),
                        ..vma
                    },
                );
            }
        }
    }

    /// Forgets the files no mapping reads from any more; returns them.
    pub fn unused_backing(&mut self) -> Vec<Rc<F>> {
        if self.backing.is_empty() {
            return Vec::new();
        }
        let used: alloc::collections::BTreeSet<u32> = self.vmas.file_ids().collect();
        let unused: Vec<u32> = self
            .backing
            .keys()
            .copied()
            .filter(|id| !used.contains(id))
            .collect();
        unused
            .into_iter()
            .filter_map(|id| self.backing.remove(&id))
            .collect()
    }

    pub fn set_brk_start(&mut self, at: u64) {
        self.brk_start = at;
        self.brk = at;
        self.brk_end = at;
    }

    /// `brk(2)`: returns the new break, or the old one if it cannot move.
    pub fn brk(&mut self, requested: u64) -> u64 {
        if requested < self.brk_start {
            return self.brk;
        }
        let Some(want_end) = page_up(requested) else {
            return self.brk;
        };
        if want_end > self.brk_end {
            if !self.regions.reserve(self.brk_end, want_end) {
                return self.brk;
            }
            self.vmas
                .insert(self.brk_end, want_end, PROT_READ | PROT_WRITE);
            self.brk_end = want_end;
        } else if want_end < self.brk_end {
            self.vmas.remove(want_end, self.brk_end);
            self.regions.free(want_end, self.brk_end);
            self.brk_end = want_end;
        }
        self.brk = requested;
        self.brk
    }

    /// Reserves addresses for a new mapping; returns its address. `fixed`
    /// mappings replace what the application had there.
    pub fn map(&mut self, addr: u64, len: u64, prot: u32, flags: u32) -> Result<u64> {
        let len = page_up(len).ok_or(Errno::ENOMEM)?;
        if len == 0 {
            return Err(Errno::EINVAL);
        }
        let shared = flags & MAP_SHARED != 0;
        if flags & (MAP_FIXED | MAP_FIXED_NOREPLACE) != 0 {
            if !addr.is_multiple_of(PAGE_SIZE) {
                return Err(Errno::EINVAL);
            }
            let end = addr.checked_add(len).ok_or(Errno::ENOMEM)?;
            if end > space::USER_TOP {
                return Err(Errno::ENOMEM);
            }
            if flags & MAP_FIXED_NOREPLACE != 0 && self.vmas.overlaps(addr, end) {
                return Err(Errno::EEXIST);
            }
            // Replace the application's own mappings; claim free addresses
            // for the rest.
            let owned = self.vmas.remove(addr, end);
            for &(s, e) in &owned {
                self.regions.free(s, e);
            }
            if !self.regions.reserve(addr, end) {
                // Part of the range is the kernel's; undo.
                for &(s, e) in &owned {
                    let _ = self.regions.reserve(s, e);
                    self.vmas.insert(s, e, prot);
                }
                return Err(Errno::ENOMEM);
            }
            self.vmas.insert_vma(addr, end, prot, shared);
            return Ok(addr);
        }
        let hinted = addr != 0
            && addr.is_multiple_of(PAGE_SIZE)
            && addr
                .checked_add(len)
                .is_some_and(|end| end <= space::USER_TOP)
            && self.regions.reserve(addr, addr + len);
        let start = if hinted {
            addr
        } else {
            self.regions
                .alloc_top(len, PAGE_SIZE)
                .ok_or(Errno::ENOMEM)?
        };
        self.vmas.insert_vma(start, start + len, prot, shared);
        Ok(start)
    }

    /// `munmap(2)`: forgets whatever the application had mapped in the
    /// range (the page tables follow in `Kernel::back`).
    pub fn unmap(&mut self, addr: u64, len: u64) -> Result<()> {
        if !addr.is_multiple_of(PAGE_SIZE) || len == 0 {
            return Err(Errno::EINVAL);
        }
        let end = addr
            .checked_add(page_up(len).ok_or(Errno::EINVAL)?)
            .ok_or(Errno::EINVAL)?;
        for (s, e) in self.vmas.remove(addr, end) {
            if s >= self.brk_start && e <= self.brk_end {
                // The break area stays reserved for brk; just record the hole.
                continue;
            }
            self.regions.free(s, e);
        }
        Ok(())
    }

    pub fn protect(&mut self, addr: u64, len: u64, prot: u32) -> Result<()> {
        if !addr.is_multiple_of(PAGE_SIZE) {
            return Err(Errno::EINVAL);
        }
        let end = addr
            .checked_add(page_up(len).ok_or(Errno::ENOMEM)?)
            .ok_or(Errno::ENOMEM)?;
        self.vmas.protect(addr, end, prot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_kinds_and_allowed_accesses_follow_the_mappings() {
        use space::Access;
        let mut v = Vmas::default();
        v.insert(0x40_0000, 0x40_8000, PROT_READ | PROT_WRITE);
        v.protect(0x40_1000, 0x40_2000, PROT_NONE).expect("mapped");
        v.protect(0x40_3000, 0x40_5000, PROT_READ | PROT_EXEC)
            .expect("mapped");
        v.insert_vma(0x40_8000, 0x40_9000, PROT_READ | PROT_WRITE, true);
        let access = |va| v.page_kind(va).map(|k| k.access);
        assert_eq!(access(0x40_0000), Some(Access::ReadWrite));
        assert_eq!(access(0x40_1000), Some(Access::None));
        assert_eq!(access(0x40_3fff), Some(Access::Read));
        assert_eq!(access(0x40_9000), None);
        assert!(v.page_kind(0x40_8000).is_some_and(|k| k.shared));
        assert!(v.allows(0x40_0000, 0x40_1000, true));
        assert!(
            !v.allows(0x40_0800, 0x40_1800, false),
            "reaches the PROT_NONE page"
        );
        assert!(v.allows(0x40_3000, 0x40_5000, false));
        assert!(!v.allows(0x40_3000, 0x40_3001, true), "read-only");
        v.remove(0x40_6000, 0x40_7000);
        assert!(!v.allows(0x40_5000, 0x40_8000, false), "reaches the hole");
        assert!(v.overlaps(0x40_6800, 0x40_7800) && !v.overlaps(0x40_6000, 0x40_7000));
        // The span the page tables must follow covers every change.
        assert_eq!(v.take_changed(), Some((0x40_0000, 0x40_9000)));
        assert_eq!(v.take_changed(), None);
    }

    #[test]
    fn shared_file_mappings_split_when_partly_taken() {
        let file = Rc::new("a file");
        let mut files = MappedFiles::default();
        files.insert(MappedFile {
            start: 0x10_0000,
            end: 0x10_4000,
            file: file.clone(),
            offset: 0x8000,
        });
        let parts = |v: Vec<MappedFile<&str>>| -> Vec<(u64, u64, u64)> {
            v.iter().map(|m| (m.start, m.end, m.offset)).collect()
        };
        assert_eq!(
            parts(files.within(0x10_1000, 0x20_0000)),
            vec![(0x10_1000, 0x10_4000, 0x9000)]
        );
        assert_eq!(
            parts(files.take(0x10_1000, 0x10_2000)),
            vec![(0x10_1000, 0x10_2000, 0x9000)]
        );
        assert_eq!(
            parts(files.within(0, u64::MAX))
                .into_iter()
                .rev()
                .collect::<Vec<_>>(),
            vec![
                (0x10_0000, 0x10_1000, 0x8000),
                (0x10_2000, 0x10_4000, 0xa000)
            ]
        );
        assert_eq!(files.take(0, u64::MAX).len(), 2);
        assert!(files.within(0, u64::MAX).is_empty());
    }

    #[test]
    fn regions_reserve_alloc_and_merge() {
        let mut r = Regions::new(0x1000, 0x10000);
        assert!(r.reserve(0x4000, 0x6000));
        assert!(!r.reserve(0x5000, 0x7000));
        assert_eq!(r.alloc_top(0x1000, 0x1000), Some(0xF000));
        assert_eq!(r.alloc_top(0x3000, 0x4000), Some(0xC000));
        r.free(0x4000, 0x6000);
        r.free(0xF000, 0x10000);
        r.free(0xC000, 0xF000);
        assert_eq!(r, Regions::new(0x1000, 0x10000));
        assert_eq!(r.alloc_top(0x20000, 0x1000), None);
        assert_eq!(r.alloc_above(0, 0x1000, 0x2000), Some(0x2000));
        assert_eq!(r.alloc_above(0x9000, 0x1000, 0x1000), Some(0x9000));
    }

    #[test]
    fn vmas_split_on_partial_unmap_and_protect() {
        let mut v = Vmas::default();
        v.insert(0x1000, 0x5000, PROT_READ);
        assert_eq!(v.remove(0x2000, 0x3000), vec![(0x2000, 0x3000)]);
        assert_eq!(v.len(), 2);
        assert!(!v.covers(0x1000, 0x5000));
        assert!(v.covers(0x3000, 0x5000));
        assert_eq!(v.protect(0x1000, 0x3000, PROT_WRITE), Err(Errno::ENOMEM));
        v.protect(0x3000, 0x4000, PROT_WRITE).expect("mapped");
        assert_eq!(
            v.get(0x3800).map(|(s, m)| (s, m.prot)),
            Some((0x3000, PROT_WRITE))
        );
        assert_eq!(
            v.get(0x4800).map(|(s, m)| (s, m.prot)),
            Some((0x4000, PROT_READ))
        );
        assert_eq!(v.get(0x2800), None);
    }

    #[test]
    fn mmap_munmap_and_brk_keep_honest_books() {
        let mut mm = Mm::<()>::new(0x300000, 0x1000000);
        let free = mm.regions.free_bytes();
        // Mappings come from the top of the address space, down.
        let a = mm
            .map(0, 0x3000, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS)
            .expect("mmap");
        assert_eq!(a, space::USER_TOP - 0x3000);
        assert_eq!(mm.regions.free_bytes(), free - 0x3000);
        mm.unmap(a + 0x1000, 0x1000).expect("munmap");
        assert_eq!(mm.regions.free_bytes(), free - 0x2000);
        // MAP_FIXED over our own mapping replaces it; NOREPLACE refuses.
        let f = mm
            .map(a, 0x1000, PROT_READ, MAP_FIXED | MAP_ANONYMOUS)
            .expect("fixed");
        assert_eq!(f, a);
        assert_eq!(
            mm.map(a, 0x1000, PROT_READ, MAP_FIXED_NOREPLACE | MAP_ANONYMOUS),
            Err(Errno::EEXIST)
        );
        // MAP_FIXED onto memory the kernel owns fails.
        for kernel in [0x200000, 0x1000000, space::USER_TOP] {
            assert_eq!(
                mm.map(kernel, 0x1000, PROT_READ, MAP_FIXED | MAP_ANONYMOUS),
                Err(Errno::ENOMEM),
                "{kernel:#x}"
            );
        }
        // A 64 GiB reservation is only addresses.
        let big = mm
            .map(0, 64 << 30, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS)
            .expect("reserve");
        assert!(big >= space::HIGH_USER_START);
        mm.set_brk_start(0x500000);
        assert_eq!(mm.brk(0x500010), 0x500010);
        assert_eq!(mm.brk_end, 0x501000);
        assert_eq!(mm.brk(0x400000), 0x500010);
        assert_eq!(mm.brk(0x500000), 0x500000);
        assert_eq!(mm.brk_end, 0x500000);
        // The break cannot grow into a mapping.
        mm.map(0x600000, 0x1000, PROT_READ, MAP_FIXED | MAP_ANONYMOUS)
            .expect("fixed");
        assert_eq!(mm.brk(0x700000), 0x500000);
        assert_eq!(
            mm.regions.alloc_above(PIE_BASE, 0x1000, 0x1000),
            Some(PIE_BASE)
        );
    }
}
