//! Memory syscalls: brk, mmap (anonymous, and of files, whose pages are
//! read when first touched), munmap, mprotect, mremap, msync, madvise. See `crate::mm` for
//! how mappings become page tables and protections are enforced.

use crate::errno::{Errno, Result};
use crate::kernel::mm::write_back;
use crate::kernel::{Kernel, MappedFile};
use crate::mm::space::Stale;
use crate::mm::{page_up, MAP_ANONYMOUS, MAP_FIXED, MAP_SHARED, PAGE_SIZE, PROT_READ, PROT_WRITE};

const MREMAP_MAYMOVE: u32 = 1;
const MAP_NORESERVE: u32 = 0x4000;

impl Kernel {
    /// Writes back and forgets the `MAP_SHARED` file mappings in `[start, end)`.
    fn unmap_files(&mut self, start: u64, end: u64) {
        let maps = self.proc_mut().mm.files.take(start, end);
        if !maps.is_empty() {
            let (p, dev) = self.proc_and_dev();
            write_back(p.space.as_ref(), dev, maps);
        }
    }

    /// Drops the frames behind `[start, end)` of the current process, so
    /// the pages read as zero when next touched.
    fn discard(&mut self, start: u64, end: u64) {
        let Some(space) = self.proc().space.as_ref() else {
            return;
        };
        let stale = space.discard(&self.frames, start, end);
        self.flush(stale);
    }

    pub fn sys_brk(&mut self, addr: u64) -> u64 {
        let new = self.proc_mut().mm.brk(addr);
        let _ = self.back();
        new
    }

    pub fn sys_mmap(
        &mut self,
        addr: u64,
        len: u64,
        prot: u32,
        flags: u32,
        fd: i32,
        offset: u64,
    ) -> Result<u64> {
        if len == 0 || !offset.is_multiple_of(PAGE_SIZE) {
            return Err(Errno::EINVAL);
        }
        let file = if flags & MAP_ANONYMOUS == 0 {
            Some(self.proc_mut().fds.file(fd)?)
        } else {
            None
        };
        if let Some(f) = file.as_ref().filter(|_| flags & MAP_SHARED != 0) {
            if prot & PROT_WRITE != 0 && !crate::fs::files::writable(f.flags()) {
                return Err(Errno::EACCES);
            }
        }
        // Linux's heuristic overcommit (vm.overcommit_memory=0): only a
        // private writable mapping larger than all of RAM is refused;
        // reservations (PROT_NONE, MAP_NORESERVE) cost nothing until used.
        let committed = flags & MAP_SHARED == 0 && prot & PROT_WRITE != 0;
        if committed && flags & MAP_NORESERVE == 0 && len > self.ram_size {
            return Err(Errno::ENOMEM);
        }
        if flags & MAP_FIXED != 0 {
            if let Some(end) = page_up(len).and_then(|l| addr.checked_add(l)) {
                self.unmap_files(addr, end);
            }
        }
        let start = self.proc_mut().mm.map(addr, len, prot, flags)?;
        let mapped = page_up(len).ok_or(Errno::ENOMEM)?;
        // What a fixed mapping replaced is gone: fresh pages read as zero,
        // or as the file.
        self.discard(start, start + mapped);
        if let Some(file) = file {
            // The pages are read from the file when first touched.
            self.proc_mut()
                .mm
                .attach_file(start, start + mapped, file.clone(), offset);
            if flags & MAP_SHARED != 0 {
                self.proc_mut().mm.files.insert(MappedFile {
                    start,
                    end: start + mapped,
                    file,
                    offset,
                });
            }
        }
        self.back()?;
        Ok(start)
    }

    pub fn sys_munmap(&mut self, addr: u64, len: u64) -> Result<u64> {
        if addr.is_multiple_of(PAGE_SIZE) {
            if let Some(end) = page_up(len).and_then(|l| addr.checked_add(l)) {
                self.unmap_files(addr, end);
            }
        }
        self.proc_mut().mm.unmap(addr, len)?;
        self.back()?;
        Ok(0)
    }

    /// msync: checks the range like Linux and writes the `MAP_SHARED` file
    /// mappings in it back to their files (`MS_ASYNC` too: the write is
    /// as cheap to do now as later).
    pub fn sys_msync(&mut self, addr: u64, len: u64, flags: u32) -> Result<u64> {
        const MS_ASYNC: u32 = 1;
        const MS_INVALIDATE: u32 = 2;
        const MS_SYNC: u32 = 4;
        if !addr.is_multiple_of(PAGE_SIZE)
            || flags & !(MS_ASYNC | MS_INVALIDATE | MS_SYNC) != 0
            || flags & (MS_ASYNC | MS_SYNC) == MS_ASYNC | MS_SYNC
        {
            return Err(Errno::EINVAL);
        }
        let end = page_up(len)
            .and_then(|l| addr.checked_add(l))
            .ok_or(Errno::ENOMEM)?;
        if end > addr && !self.proc_mut().mm.vmas.covers(addr, end) {
            return Err(Errno::ENOMEM);
        }
        let maps = self.proc_mut().mm.files.within(addr, end);
        let (p, dev) = self.proc_and_dev();
        write_back(p.space.as_ref(), dev, maps);
        Ok(0)
    }

    /// madvise: the access-pattern and huge-page hints change nothing
    /// here, so accepting them is their whole effect. `MADV_DONTNEED`
    /// and `MADV_FREE` give the frames of private memory back, which then
    /// reads as zero (a private file mapping reads its file again), as on
    /// Linux; shared memory keeps its contents.
    pub fn sys_madvise(&mut self, addr: u64, len: u64, advice: u32) -> Result<u64> {
        const MADV_DONTNEED: u32 = 4;
        const MADV_FREE: u32 = 8;
        if !addr.is_multiple_of(PAGE_SIZE) {
            return Err(Errno::EINVAL);
        }
        let len = page_up(len).ok_or(Errno::EINVAL)?;
        let end = addr.checked_add(len).ok_or(Errno::EINVAL)?;
        match advice {
            0..=3 | MADV_DONTNEED | MADV_FREE | 10..=21 => {}
            _ => return Err(Errno::EINVAL),
        }
        if len == 0 {
            return Ok(0);
        }
        if !self.proc_mut().mm.vmas.covers(addr, end) {
            return Err(Errno::ENOMEM);
        }
        if advice == MADV_DONTNEED || advice == MADV_FREE {
            for (s, e) in self.proc_mut().mm.vmas.private_ranges(addr, end) {
                self.discard(s, e);
            }
        }
        Ok(0)
    }

    /// mprotect: the page tables follow at once (see `crate::mm::space`).
    pub fn sys_mprotect(&mut self, addr: u64, len: u64, prot: u32) -> Result<u64> {
        const PROT_GROWSDOWN: u32 = 0x0100_0000;
        const PROT_GROWSUP: u32 = 0x0200_0000;
        if prot & !(PROT_READ | PROT_WRITE | crate::mm::PROT_EXEC | PROT_GROWSDOWN | PROT_GROWSUP)
            != 0
        {
            return Err(Errno::EINVAL);
        }
        self.proc_mut()
            .mm
            .protect(addr, len, prot & !(PROT_GROWSDOWN | PROT_GROWSUP))?;
        self.back()?;
        Ok(0)
    }

    /// mremap: shrinks, grows in place, or moves the pages themselves
    /// (their frames, not copies) to a new range.
    pub fn sys_mremap(
        &mut self,
        old: u64,
        old_len: u64,
        new_len: u64,
        flags: u32,
        _new_addr: u64,
    ) -> Result<u64> {
        let old_len = page_up(old_len).ok_or(Errno::EINVAL)?;
        let new_len = page_up(new_len).ok_or(Errno::EINVAL)?;
        if !old.is_multiple_of(PAGE_SIZE) || new_len == 0 {
            return Err(Errno::EINVAL);
        }
        let (vma_start, vma) = self.proc_mut().mm.vmas.get(old).ok_or(Errno::EFAULT)?;
        if new_len <= old_len {
            if new_len < old_len {
                self.unmap_files(old + new_len, old + old_len);
                self.proc_mut().mm.unmap(old + new_len, old_len - new_len)?;
                self.back()?;
            }
            return Ok(old);
        }
        // Grow in place when the addresses after the mapping are free.
        let tail = old + old_len;
        if vma.end == tail && self.proc_mut().mm.regions.reserve(tail, old + new_len) {
            let grown = crate::mm::Vma {
                end: old + new_len,
                file: vma.file_at(vma_start, tail),
                ..vma
            };
            self.proc_mut().mm.vmas.insert_with(tail, grown);
            self.back()?;
            return Ok(old);
        }
        if flags & MREMAP_MAYMOVE == 0 {
            return Err(Errno::ENOMEM);
        }
        let shared = if vma.shared { MAP_SHARED } else { 0 };
        let new = self
            .proc_mut()
            .mm
            .map(0, new_len, vma.prot, MAP_ANONYMOUS | shared)?;
        // Pages not read yet still come from the file, at the same offsets.
        let moved_vma = crate::mm::Vma {
            end: new + new_len,
            file: vma.file_at(vma_start, old),
            ..vma
        };
        self.proc_mut().mm.vmas.insert_with(new, moved_vma);
        let moved = match self.proc().space.as_ref() {
            Some(space) => space.move_pages(old, new, old_len),
            None => Ok(Stale::default()),
        };
        let stale = match moved {
            Ok(moved) => moved,
            Err(e) => {
                let _ = self.proc_mut().mm.unmap(new, new_len);
                let _ = self.back();
                return Err(e);
            }
        };
        // A shared file mapping moves with its file.
        for m in self.proc_mut().mm.files.take(old, old + old_len) {
            self.proc_mut().mm.files.insert(MappedFile {
                start: m.start - old + new,
                end: m.end - old + new,
                ..m
            });
        }
        self.proc_mut().mm.unmap(old, old_len)?;
        // The old range's entries went away.
        self.flush(stale);
        self.back()?;
        Ok(new)
    }
}
