//! Where memory meets the rest of the kernel: making the current process's
//! page tables follow its mappings, backing pages on faults and for the
//! kernel's own accesses, the OOM killer, and writing `MAP_SHARED` file
//! pages back to their files.

use alloc::rc::Rc;
use alloc::vec;
use alloc::vec::Vec;

use crate::arch;
use crate::errno::{Errno, Result};
use crate::fs::Devices;
use crate::kernel::{Kernel, MappedFile};
use crate::mm::space::{self, Space, Stale};
use crate::mm::PAGE_SIZE;

/// Cached pages reclaimed at a time when frames run out (1 MiB).
const RECLAIM_BATCH: u64 = 256;

/// Writes `maps` (parts of `MAP_SHARED` file mappings of `space`) back to
/// their files, up to each file's end as Linux does, and releases files no
/// descriptor or mapping holds any more. Write errors are dropped, as a
/// page cache's writeback errors are when nobody calls `msync`.
pub fn write_back(space: Option<&Space>, dev: &mut Devices, maps: Vec<MappedFile>) {
    let mut page = vec![0u8; PAGE_SIZE as usize];
    for m in &maps {
        let Some(space) = space.filter(|_| crate::fs::files::writable(m.file.flags())) else {
            continue;
        };
        let Ok(stat) = m.file.stat(dev) else {
            continue;
        };
        let size = u64::from_le_bytes(stat[48..56].try_into().unwrap_or([0; 8]));
        let len = (m.end - m.start).min(size.saturating_sub(m.offset));
        // Only pages with a frame can differ from the file: the others
        // were never touched.
        let mut done = 0;
        while done < len {
            let n = (len - done).min(PAGE_SIZE) as usize;
            if space.read(m.start + done, &mut page[..n])
                && m.file.pwrite(dev, &page[..n], m.offset + done).is_err()
            {
                break;
            }
            done += n as u64;
        }
    }
    release_files(dev, maps.into_iter().map(|m| m.file).collect());
}

/// Lets go of files mappings held, releasing those nobody else holds.
pub fn release_files(dev: &mut Devices, files: Vec<Rc<dyn crate::fs::fd::File>>) {
    for file in files {
        if Rc::strong_count(&file) == 1 {
            file.release(dev);
        }
    }
}

impl Kernel {
    /// Makes the current process's page tables follow the mappings that
    /// changed since the last call: frames of unmapped pages go back to
    /// the pool, the others get the rights their mappings now give.
    pub fn back(&mut self) -> Result<()> {
        let tgid = self.procs.tgid(self.cur);
        let Some(p) = self.processes.get_mut(&tgid) else {
            return Ok(());
        };
        let Some((start, end)) = p.mm.vmas.take_changed() else {
            return Ok(());
        };
        let Some(s) = p.space.as_ref() else {
            return Ok(());
        };
        let vmas = &p.mm.vmas;
        let stale = s.reconcile(&self.frames, start, end, |va| vmas.page_kind(va));
        self.flush(stale);
        let unused = self.proc_mut().mm.unused_backing();
        release_files(&mut self.dev, unused);
        Ok(())
    }

    /// Drops the translations `stale` names from the TLB of the current
    /// process's space (loaded: the kernel changes only the running
    /// process's tables outside fork).
    pub fn flush(&self, stale: Stale) {
        if stale.is_empty() {
            return;
        }
        let Some(cr3) = self.proc().space.as_ref().map(Space::cr3) else {
            return;
        };
        if stale.all() {
            arch::load_cr3(cr3);
        } else {
            for &va in stale.pages() {
                arch::invlpg(va);
            }
        }
    }

    /// Gives every page of `[start, end)` of the current process a frame,
    /// writable in place where `write` (copied if shared copy-on-write),
    /// so the kernel can touch it for the application: EFAULT where no
    /// mapping covers a page or a file mapping's page lies past the end of
    /// its file, ENOMEM when frames run out even after reclaim. Pages of
    /// file mappings come from the page cache.
    pub fn populate(&mut self, start: u64, end: u64, write: bool) -> Result<()> {
        let Some(space) = self.proc().space.as_ref() else {
            return Ok(());
        };
        if space.accessible(start, end, write) {
            return Ok(());
        }
        let mut va = start & !(PAGE_SIZE - 1);
        while va < end {
            let (_, vma) = self.proc().mm.vmas.get(va).ok_or(Errno::EFAULT)?;
            let piece_end = vma.end.min(end);
            let result = self.reclaiming(|k| {
                k.fill_from_file(va, piece_end)?;
                let p = k.proc();
                let kind = p.mm.vmas.page_kind(va).ok_or(Errno::EFAULT)?;
                let space = p.space.as_ref().ok_or(Errno::EFAULT)?;
                if vma.file.is_some() && !space.backed(va, piece_end) {
                    return Err(Errno::EFAULT);
                }
                let stale = space.populate(&k.frames, va, piece_end, kind, write)?;
                k.flush(stale);
                Ok(())
            });
            if let Err(e) = result {
                if e == Errno::ENOMEM {
                    // The OOM killer needs the whole kernel: it runs as
                    // the system call ends (`syscalls::entry`).
                    self.oom_pending.set(true);
                }
                return Err(e);
            }
            va = piece_end;
        }
        Ok(())
    }

    /// Runs `op` again while it fails for want of frames and the page
    /// cache can give some back (clean pages go before the OOM killer).
    fn reclaiming(&mut self, mut op: impl FnMut(&mut Kernel) -> Result<()>) -> Result<()> {
        loop {
            match op(self) {
                Err(Errno::ENOMEM) if self.dev.cache.reclaim(RECLAIM_BATCH) > 0 => continue,
                other => return other,
            }
        }
    }

    /// Maps the pages of `[start, end)` (inside one mapping) that have no
    /// frame yet to their file's pages in the page cache, reading those
    /// not cached in one request per run. Pages wholly past the end of
    /// the file stay without a frame.
    fn fill_from_file(&mut self, start: u64, end: u64) -> Result<()> {
        let p = self.proc();
        let (map_start, vma) = p.mm.vmas.get(start).ok_or(Errno::EFAULT)?;
        let Some(file_ref) = vma.file else {
            return Ok(());
        };
        let file =
            p.mm.backing
                .get(&file_ref.id)
                .cloned()
                .ok_or(Errno::EFAULT)?;
        let kind = p.mm.vmas.page_kind(start).ok_or(Errno::EFAULT)?;
        let space = p.space.as_ref().ok_or(Errno::EFAULT)?;
        let end = end.min(vma.end);
        // Only the pages from the first to the last without a frame.
        let mut lo = start & !(PAGE_SIZE - 1);
        while lo < end && space.physical(lo).is_some() {
            lo += PAGE_SIZE;
        }
        let mut hi = (end + PAGE_SIZE - 1) & !(PAGE_SIZE - 1);
        while hi > lo && space.physical(hi - PAGE_SIZE).is_some() {
            hi -= PAGE_SIZE;
        }
        if lo >= hi {
            return Ok(());
        }
        let offset = file_ref.offset + (lo - map_start);
        let Some(key) = file.cache_key() else {
            return self.copy_from_file(&*file, lo, hi, offset, kind);
        };
        let crate::fs::Devices { cache, vfs, .. } = &mut self.dev;
        let pages = cache.map_pages(
            key,
            offset / PAGE_SIZE,
            (hi - lo) / PAGE_SIZE,
            &mut |at, buf| file.fetch(vfs, buf, at),
        )?;
        let space = self.proc().space.as_ref().ok_or(Errno::EFAULT)?;
        // A private writable mapping (a program's or library's data, which
        // its loader relocates at once) gets copies now: sharing the cached
        // frames would cost a copy-on-write fault per page written, and a
        // fault here costs as much as the copy many times over.
        let copy = !kind.shared && kind.access == space::Access::ReadWrite;
        for (i, frame) in pages.into_iter().enumerate() {
            let va = lo + i as u64 * PAGE_SIZE;
            match frame {
                Some(frame) if copy => space.install_copy_of(&self.frames, va, frame, kind)?,
                Some(frame) => space.map_frame(&self.frames, va, frame, kind)?,
                None => {}
            }
        }
        Ok(())
    }

    /// For a mapped file the page cache does not hold (an emulated
    /// device): copies `[lo, hi)` from the file at `offset` into fresh
    /// frames, one request per run of up to `FAULT_AROUND` pages.
    fn copy_from_file(
        &mut self,
        file: &dyn crate::fs::fd::File,
        lo: u64,
        hi: u64,
        offset: u64,
        kind: space::PageKind,
    ) -> Result<()> {
        let max_run = space::FAULT_AROUND * PAGE_SIZE;
        let mut va = lo;
        while va < hi {
            let run_end = (va + max_run).min(hi);
            let mut data = vec![0u8; (run_end - va) as usize];
            let at = offset + (va - lo);
            let mut done = 0;
            while done < data.len() {
                let n = file.read_at(&mut self.dev, &mut data[done..], at + done as u64)?;
                if n == 0 {
                    break;
                }
                done += n;
            }
            let space = self.proc().space.as_ref().ok_or(Errno::EFAULT)?;
            for (i, page) in data.chunks(PAGE_SIZE as usize).enumerate() {
                space.install_copy(&self.frames, va + i as u64 * PAGE_SIZE, page, kind)?;
            }
            va = run_end;
        }
        Ok(())
    }

    /// A page fault at `va` the current process's mappings allow: backs
    /// the page and the pages around it (a file mapping's from the page
    /// cache). Err(EIO) for a file mapping's page past the end of its file
    /// (SIGBUS); Err(ENOMEM) when no frame is left even after reclaim and
    /// the OOM killer (the caller then is the victim).
    pub fn page_fault(&mut self, va: u64, write: bool) -> Result<()> {
        loop {
            let (start, vma) = self.proc().mm.vmas.get(va).ok_or(Errno::EFAULT)?;
            let window = space::FAULT_AROUND * PAGE_SIZE;
            let lo = (va & !(window - 1)).max(start);
            let hi = ((va & !(window - 1)) + window).min(vma.end);
            let result = self.reclaiming(|k| {
                k.fill_from_file(lo, hi)?;
                let p = k.proc();
                let kind = p.mm.vmas.page_kind(va).ok_or(Errno::EFAULT)?;
                let space = p.space.as_ref().ok_or(Errno::EFAULT)?;
                if vma.file.is_none() {
                    return space.fault(&k.frames, va, write, kind, (start, vma.end));
                }
                let page = va & !(PAGE_SIZE - 1);
                if space.physical(page).is_none() {
                    return Err(Errno::EIO);
                }
                // The fault dropped the page's old translation.
                space.populate(&k.frames, page, page + PAGE_SIZE, kind, write)?;
                Ok(())
            });
            match result {
                Err(Errno::ENOMEM) => {
                    if !self.out_of_memory() {
                        return Err(Errno::ENOMEM);
                    }
                }
                other => return other,
            }
        }
    }

    /// Guest RAM ran out: as Linux's OOM killer, the process holding the
    /// most memory is killed with SIGKILL and the kill reported on the
    /// console's stderr. Returns whether the current process survived.
    pub fn out_of_memory(&mut self) -> bool {
        self.oom_pending.set(false);
        let me = self.procs.tgid(self.cur);
        let resident = |p: &crate::task::Process| p.space.as_ref().map_or(0, Space::resident_pages);
        let mut victim = (me, resident(self.proc()), self.proc().comm);
        for (&tgid, p) in &self.processes {
            if tgid != me && resident(p) > victim.1 {
                victim = (tgid, resident(p), p.comm);
            }
        }
        let (pid, pages, comm) = victim;
        let len = comm.iter().position(|&b| b == 0).unwrap_or(16);
        let msg = alloc::format!(
            "capsa: out of memory: killed process {pid} ({}, {} MiB)\n",
            alloc::string::String::from_utf8_lossy(&comm[..len]),
            (pages * PAGE_SIZE) >> 20
        );
        crate::kernel::stderr_message(&mut self.dev, msg.as_bytes());
        self.terminate(
            pid,
            crate::task::process::ExitStatus::Signaled {
                signal: 9,
                core: false,
            },
        );
        pid != me
    }
}
