//! Where memory meets the rest of the kernel: making the current process's
//! page tables follow its mappings, and writing `MAP_SHARED` file pages
//! back to their files.

use alloc::collections::BTreeSet;
use alloc::rc::Rc;
use alloc::vec;
use alloc::vec::Vec;

use crate::arch;
use crate::errno::Result;
use crate::fs::Devices;
use crate::kernel::{Kernel, MappedFile};
use crate::mm::space::{self, Space};

/// Writes `maps` (parts of `MAP_SHARED` file mappings of `space`) back to
/// their files, up to each file's end as Linux does, and releases files no
/// descriptor or mapping holds any more. Write errors are dropped, as a
/// page cache's writeback errors are when nobody calls `msync`.
pub fn write_back(space: Option<&Space>, dev: &mut Devices, maps: Vec<MappedFile>) {
    let mut buf = vec![0u8; 64 << 10];
    for m in &maps {
        let Some(space) = space.filter(|_| crate::fs::files::writable(m.file.flags())) else {
            continue;
        };
        let Ok(stat) = m.file.stat(dev) else {
            continue;
        };
        let size = u64::from_le_bytes(stat[48..56].try_into().unwrap_or([0; 8]));
        let len = (m.end - m.start).min(size.saturating_sub(m.offset));
        let mut done = 0;
        while done < len {
            let n = (len - done).min(buf.len() as u64) as usize;
            if !space.read(m.start + done, &mut buf[..n])
                || m.file.pwrite(dev, &buf[..n], m.offset + done).is_err()
            {
                break;
            }
            done += n as u64;
        }
    }
    for m in maps {
        if Rc::strong_count(&m.file) == 1 {
            m.file.release(dev);
        }
    }
}

impl Kernel {
    /// Backs every slot the current mappings touch, releases the others,
    /// and makes the pages of slots whose mappings changed allow what
    /// their mappings' protections say.
    pub fn back(&mut self) -> Result<()> {
        let tgid = self.procs.tgid(self.cur);
        let Some(p) = self.processes.get_mut(&tgid) else {
            return Ok(());
        };
        let needed = space::slots_of(p.mm.vmas.ranges());
        let Some(s) = p.space.as_mut() else {
            return Ok(());
        };
        let (mut flush, fresh) = s.sync(&needed, &mut self.frames)?;
        let changed_span = p.mm.vmas.take_changed();
        let mut slots: BTreeSet<u64> = fresh.iter().copied().collect();
        if let Some((start, end)) = changed_span {
            slots.extend(needed.range(space::slot_of(start)..end).copied());
        }
        for slot in slots {
            let access = p.mm.vmas.slot_access(slot);
            match s.set_access(slot, access.as_ref()) {
                // A fresh slot had no translations to flush.
                Ok(f) => flush |= f && !fresh.contains(&slot),
                Err(e) => {
                    // Out of heap for a page table: try again next time.
                    if let Some((start, end)) = changed_span {
                        p.mm.vmas.note_changed(start, end);
                    }
                    arch::load_cr3(s.cr3());
                    self.loaded_cr3 = s.cr3();
                    return Err(e);
                }
            }
        }
        if flush {
            // Flush: under shadow paging the hypervisor may hold on to the
            // old entries (and on hardware, removed ones) until a CR3 load.
            arch::load_cr3(s.cr3());
            self.loaded_cr3 = s.cr3();
        }
        Ok(())
    }
}
