//! Memory syscalls: brk, mmap (anonymous, and file-backed by reading the
//! file), munmap, mprotect, mremap, msync, madvise. See `crate::mm` for
//! how mappings become page tables and protections are enforced.

use crate::errno::{Errno, Result};
use crate::kernel::mm::write_back;
use crate::kernel::{Kernel, MappedFile};
use crate::mm::{
    page_up, space, MAP_ANONYMOUS, MAP_FIXED, MAP_SHARED, PAGE_SIZE, PROT_READ, PROT_WRITE,
};

const MREMAP_MAYMOVE: u32 = 1;

/// Clears application memory being released or replaced, whatever its
/// pages allow the application.
fn zero_range(start: u64, end: u64) {
    for (at, n) in space::kernel_view(start, end - start, false) {
        // SAFETY: a view of backed application memory (see `kernel_view`)
        // the application is giving up.
        unsafe { core::ptr::write_bytes(at as *mut u8, 0, n as usize) }
    }
}

impl Kernel {
    /// Writes back and forgets the `MAP_SHARED` file mappings in `[start, end)`.
    fn unmap_files(&mut self, start: u64, end: u64) {
        let maps = self.proc_mut().mm.files.take(start, end);
        if !maps.is_empty() {
            let (p, dev) = self.proc_and_dev();
            write_back(p.space.as_ref(), dev, maps);
        }
    }

    /// Guest RAM ran out for a mapping of `len` bytes. As Linux's
    /// heuristic overcommit, a request larger than all of RAM is refused
    /// (`ENOMEM`); otherwise, as its OOM killer, the process holding the
    /// most memory is killed with SIGKILL and the kill reported on the
    /// console's stderr. Returns whether the caller survived to retry.
    fn out_of_memory(&mut self, len: u64) -> Result<bool> {
        if len > self.ram_size {
            return Err(Errno::ENOMEM);
        }
        let me = self.procs.tgid(self.cur);
        let slots = |space: Option<&crate::mm::space::Space>| space.map_or(0, |s| s.slot_count());
        let mut victim = (me, slots(self.proc().space.as_ref()), self.proc().comm);
        for (&tgid, p) in &self.processes {
            if tgid != me && slots(p.space.as_ref()) > victim.1 {
                victim = (tgid, slots(p.space.as_ref()), p.comm);
            }
        }
        let (pid, held, comm) = victim;
        let len = comm.iter().position(|&b| b == 0).unwrap_or(16);
        let msg = alloc::format!(
            "capsa: out of memory: killed process {pid} ({}, {} MiB)\n",
            alloc::string::String::from_utf8_lossy(&comm[..len]),
            held as u64 * (crate::mm::space::SLOT >> 20)
        );
        crate::kernel::stderr_message(&mut self.dev, msg.as_bytes());
        self.terminate(
            pid,
            crate::task::process::ExitStatus::Signaled {
                signal: 9,
                core: false,
            },
        );
        Ok(pid != me)
    }

    pub fn sys_brk(&mut self, addr: u64) -> u64 {
        let old = self.proc_mut().mm.brk;
        let new = self.proc_mut().mm.brk(addr, &mut zero_range);
        if self.back().is_err() {
            // No frame for the growth: the break stays where it was.
            self.proc_mut().mm.brk(old, &mut zero_range);
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
            Some(self.proc_mut().fds.file(fd)?)
        } else {
            None
        };
        if let Some(f) = file.as_ref().filter(|_| flags & MAP_SHARED != 0) {
            if prot & PROT_WRITE != 0 && !crate::fs::files::writable(f.flags()) {
                return Err(Errno::EACCES);
            }
        }
        if flags & MAP_FIXED != 0 {
            if let Some(end) = page_up(len).and_then(|l| addr.checked_add(l)) {
                self.unmap_files(addr, end);
            }
        }
        let start = loop {
            // Addresses are guest-physical ones (see `crate::mm`): running
            // out of them is running out of memory too.
            // A file mapping is filled by the kernel, so it starts writable
            // and gets its protection once filled.
            let fill_prot = if file.is_some() {
                prot | PROT_READ | PROT_WRITE
            } else {
                prot
            };
            let start = match self
                .proc_mut()
                .mm
                .map(addr, len, fill_prot, flags, &mut zero_range)
            {
                Ok(start) => start,
                Err(Errno::ENOMEM) if flags & MAP_FIXED == 0 && self.out_of_memory(len)? => {
                    continue
                }
                Err(e) => return Err(e),
            };
            match self.back() {
                Ok(()) => break start,
                Err(e) => {
                    let _ = self.proc_mut().mm.unmap(start, len, &mut zero_range);
                    let _ = self.back();
                    if e != Errno::ENOMEM || !self.out_of_memory(len)? {
                        return Err(e);
                    }
                }
            }
        };
        if let Some(file) = file {
            let mapped = page_up(len).ok_or(Errno::ENOMEM)?;
            let dst = self.user_buf_mut(start, len as usize);
            let read = dst.and_then(|dst| self.read_file_into(fd, offset, dst));
            let protected = read.and_then(|_| {
                self.proc_mut().mm.protect(start, mapped, prot)?;
                self.back()
            });
            if let Err(e) = protected {
                let _ = self.proc_mut().mm.unmap(start, mapped, &mut zero_range);
                let _ = self.back();
                return Err(e);
            }
            if flags & MAP_SHARED != 0 {
                self.proc_mut().mm.files.insert(MappedFile {
                    start,
                    end: start + mapped,
                    file,
                    offset,
                });
            }
        }
        Ok(start)
    }

    pub fn sys_munmap(&mut self, addr: u64, len: u64) -> Result<u64> {
        if addr.is_multiple_of(PAGE_SIZE) {
            if let Some(end) = page_up(len).and_then(|l| addr.checked_add(l)) {
                self.unmap_files(addr, end);
            }
        }
        self.proc_mut().mm.unmap(addr, len, &mut zero_range)?;
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

    /// madvise: the access-pattern and huge-page hints change nothing here
    /// (memory is already resident in 2 MiB frames), so accepting them is
    /// their whole effect; `MADV_DONTNEED` zero-fills the private parts of
    /// the range, which is what the next read of private anonymous memory
    /// sees on Linux (private file mappings, which Linux would re-read from
    /// the file, read back as zero too).
    /// `MADV_FREE` may keep the contents, as Linux may.
    pub fn sys_madvise(&mut self, addr: u64, len: u64, advice: u32) -> Result<u64> {
        const MADV_DONTNEED: u32 = 4;
        const MADV_REMOVE: u32 = 9;
        const MADV_HWPOISON: u32 = 100;
        if !addr.is_multiple_of(PAGE_SIZE) {
            return Err(Errno::EINVAL);
        }
        let len = page_up(len).ok_or(Errno::EINVAL)?;
        let end = addr.checked_add(len).ok_or(Errno::EINVAL)?;
        match advice {
            0..=3 | 8 | 10..=21 | MADV_DONTNEED => {}
            MADV_REMOVE | MADV_HWPOISON => return Err(Errno::EINVAL),
            _ => return Err(Errno::EINVAL),
        }
        if len == 0 {
            return Ok(0);
        }
        if !self.proc_mut().mm.vmas.covers(addr, end) {
            return Err(Errno::ENOMEM);
        }
        if advice == MADV_DONTNEED {
            // Shared memory keeps its contents (the pages stay in the
            // shared object), private memory reads back as zero.
            for (s, e) in self.proc_mut().mm.vmas.private_ranges(addr, end) {
                zero_range(s, e);
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
        let (_, vma) = self.proc_mut().mm.vmas.get(old).ok_or(Errno::EFAULT)?;
        if new_len <= old_len {
            if new_len < old_len {
                self.unmap_files(old + new_len, old + old_len);
                self.proc_mut()
                    .mm
                    .unmap(old + new_len, old_len - new_len, &mut zero_range)?;
                self.back()?;
            }
            return Ok(old);
        }
        // Grow in place when the memory after the mapping is free.
        let tail = old + old_len;
        if vma.end == tail && self.proc_mut().mm.regions.reserve(tail, old + new_len) {
            self.proc_mut()
                .mm
                .vmas
                .insert(tail, old + new_len, vma.prot);
            if let Err(e) = self.back() {
                self.proc_mut().mm.vmas.remove(tail, old + new_len);
                self.proc_mut().mm.regions.free(tail, old + new_len);
                let _ = self.back();
                return Err(e);
            }
            return Ok(old);
        }
        if flags & MREMAP_MAYMOVE == 0 {
            return Err(Errno::ENOMEM);
        }
        let new = self
            .proc_mut()
            .mm
            .map(0, new_len, vma.prot, MAP_ANONYMOUS, &mut zero_range)?;
        if let Err(e) = self.back() {
            let _ = self.proc_mut().mm.unmap(new, new_len, &mut zero_range);
            let _ = self.back();
            return Err(e);
        }
        // The new range was free until now: no overlap.
        space::copy_within_space(new, old, old_len);
        // A shared file mapping moves with its file (as a private copy of
        // its memory: see docs/syscalls.md).
        for m in self.proc_mut().mm.files.take(old, old + old_len) {
            self.proc_mut().mm.files.insert(MappedFile {
                start: m.start - old + new,
                end: m.end - old + new,
                ..m
            });
        }
        self.proc_mut().mm.unmap(old, old_len, &mut zero_range)?;
        self.back()?;
        Ok(new)
    }
}
