//! Memory syscalls: brk, mmap (anonymous, and file-backed by reading the
//! file), munmap, mprotect, mremap. See `crate::mm` for what the
//! identity-mapped design means for protections.

use crate::errno::{Errno, Result};
use crate::kernel::Kernel;
use crate::mm::{page_up, MAP_ANONYMOUS, MAP_FIXED, PAGE_SIZE};

const MREMAP_MAYMOVE: u32 = 1;

fn zero_range(start: u64, end: u64) {
    // SAFETY: the range is application memory being released or replaced
    // (identity-mapped RAM reserved for the application).
    unsafe { core::ptr::write_bytes(start as *mut u8, 0, (end - start) as usize) }
}

impl Kernel {
    pub fn sys_brk(&mut self, addr: u64) -> u64 {
        let old = self.mm.brk;
        let new = self.mm.brk(addr, &mut zero_range);
        if self.back().is_err() {
            // No frame for the growth: the break stays where it was.
            self.mm.brk(old, &mut zero_range);
            let _ = self.back();
            return old;
        }
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
            Some(self.fds.file(fd)?)
        } else {
            None
        };
        let start = self.mm.map(addr, len, prot, flags, &mut zero_range)?;
        if let Err(e) = self.back() {
            let _ = self.mm.unmap(start, len, &mut zero_range);
            let _ = self.back();
            return Err(e);
        }
        if file.is_some() {
            let mapped = page_up(len).ok_or(Errno::ENOMEM)?;
            let dst = self.user_buf(start, len as usize);
            let read = dst.and_then(|dst| self.read_file_into(fd, offset, dst));
            if let Err(e) = read {
                let _ = self.mm.unmap(start, mapped, &mut zero_range);
                let _ = self.back();
                return Err(e);
            }
        }
        Ok(start)
    }

    pub fn sys_munmap(&mut self, addr: u64, len: u64) -> Result<u64> {
        self.mm.unmap(addr, len, &mut zero_range)?;
        self.back()?;
        Ok(0)
    }

    pub fn sys_mprotect(&mut self, addr: u64, len: u64, prot: u32) -> Result<u64> {
        self.mm.protect(addr, len, prot).map(|_| 0)
    }

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
        let (_, vma) = self.mm.vmas.get(old).ok_or(Errno::EFAULT)?;
        if new_len <= old_len {
            if new_len < old_len {
                self.mm
                    .unmap(old + new_len, old_len - new_len, &mut zero_range)?;
                self.back()?;
            }
            return Ok(old);
        }
        // Grow in place when the memory after the mapping is free.
        let tail = old + old_len;
        if vma.end == tail && self.mm.regions.reserve(tail, old + new_len) {
            self.mm.vmas.insert(tail, old + new_len, vma.prot);
            if let Err(e) = self.back() {
                self.mm.vmas.remove(tail, old + new_len);
                self.mm.regions.free(tail, old + new_len);
                let _ = self.back();
                return Err(e);
            }
            return Ok(old);
        }
        if flags & MREMAP_MAYMOVE == 0 {
            return Err(Errno::ENOMEM);
        }
        let new = self
            .mm
            .map(0, new_len, vma.prot, MAP_ANONYMOUS, &mut zero_range)?;
        if let Err(e) = self.back() {
            let _ = self.mm.unmap(new, new_len, &mut zero_range);
            let _ = self.back();
            return Err(e);
        }
        // SAFETY: both ranges are application mappings tracked above and
        // do not overlap (the new one was free until now).
        unsafe {
            core::ptr::copy_nonoverlapping(old as *const u8, new as *mut u8, old_len as usize)
        };
        self.mm.unmap(old, old_len, &mut zero_range)?;
        self.back()?;
        let _ = MAP_FIXED;
        Ok(new)
    }
}
