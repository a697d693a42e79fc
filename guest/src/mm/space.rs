//! Per-process address spaces: page tables of 2 MiB pages over a pool of
//! 2 MiB physical frames, copied eagerly on fork.
//!
//! # Layout of every address space
//! - Slots (2 MiB) below `user_lo` (boot data, page 0, the kernel image) and
//!   from `user_hi` up (the kernel heap with the page tables themselves and
//!   the virtqueues, then the MMIO window) are identity mapped, identically
//!   in every space: the kernel, running at CPL3 in whichever process is
//!   current, always finds its code, heap and devices at the same place.
//!   The first slot is mapped with 4 KiB pages leaving page 0 out, so a
//!   null-pointer access faults as on Linux.
//! - Slots in `[user_lo, user_hi)` belong to the process: not present until
//!   one of its mappings (`crate::mm::Vmas`) covers them, then backed by a
//!   frame from [`Frames`]. Virtual addresses stay those `crate::mm::Mm`
//!   hands out; only the frame behind them differs between processes.
//! - PML4 entry 1 (virtual `PHYS_BASE` = 512 GiB) maps all of guest-physical
//!   `[0, 4 GiB)` again (the shared identity PDPT), so the kernel can copy
//!   and clear any frame whatever address space is loaded.
//!
//! # Why eager copy with 2 MiB pages
//! On these machines a page fault costs ~9-17 µs and each CPL0 instruction
//! ~0.65 µs, while copying memory at CPL3 runs at native speed (~1 ms for a
//! few MiB). Copy-on-write would need a fault path that returns to the
//! faulting instruction, 4 KiB page tables, per-page refcounts and a fault
//! for every page the parent or child touches after fork — for busybox `sh`
//! forking a child that immediately execs, that is dozens of faults (each
//! ~10 µs plus the copy) against one bulk copy of the few slots that are
//! actually dirty. Eager copy needs no fault handling at all, and the page
//! tables stay four pages per process.
//!
//! The hardware dirty bit keeps the copy small: a slot whose PDE is not
//! dirty has not been written since it was mapped fresh (frames are zero in
//! the pool), so fork maps a fresh frame for it instead of copying, and
//! freeing it needs no clearing. Untouched stack reservations thus cost
//! neither copying nor host memory. Writes the CPU does not see (device DMA
//! into a user buffer) set the bit by hand in [`dma_pieces`]. If the boot
//! self-test finds the dirty bit unreliable, every slot counts as dirty.
//!
//! Measured forking busybox `sh` on this project's PVM machines (256 MiB
//! guest; the shell has 6 slots, 2 of them dirty): the address-space copy
//! takes 0.85-0.95 ms into recycled frames (boot with debug syscalls to see
//! it logged per fork), and a whole `(true)` subshell — fork, child exit,
//! wait4, freeing and clearing the child's frames — about 1.9 ms. Into
//! fresh frames the first fork takes ~7 ms (python3's, 9 dirty slots,
//! ~23 ms): each 4 KiB page the host has never backed costs a fault under
//! shadow paging. Slots mapped page by page copy only their dirty pages.
//!
//! Slots wholly covered by `MAP_SHARED` mappings are not copied: the child
//! maps the same frame, and [`Frames`] counts the holders so the last one
//! to let go clears and frees it (shared anonymous mappings get whole slots
//! of their own for this, see `crate::mm`).
//!
//! The cost of 2 MiB granularity is memory: each process holds at least a
//! frame per 2 MiB region it touches.
//!
//! # Protections
//! A slot whose pages differ in what they allow (a `PROT_NONE` guard page,
//! read-only RELRO or text, pages no mapping covers) is mapped through a
//! 4 KiB page table instead of one 2 MiB page ([`Space::set_access`]); its
//! frame stays one contiguous 2 MiB frame, so fork, DMA and the physical
//! window treat it as any slot, and dirty bits are read from its page
//! entries. Changing an entry the CPU may have cached reloads CR3
//! (`Kernel::back`): measured ~25 µs per `mprotect` here against ~4 µs for
//! a bare system call. Entries that only become present (brk and mmap
//! growing into a slot) need no flush.

use alloc::alloc::{alloc_zeroed, dealloc};
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;
use core::alloc::Layout;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::errno::{Errno, Result};

pub const SLOT: u64 = 2 << 20;
/// Where all guest-physical memory is mapped again in every space.
pub const PHYS_BASE: u64 = 1 << 39;
const PRESENT: u64 = 1;
const ACCESSED: u64 = 0x20;
const DIRTY: u64 = 0x40;
/// Present, writable, user, 2 MiB.
const LARGE: u64 = 0x87;
/// Present, writable, user: a pointer to a lower table, or a 4 KiB page.
const TABLE: u64 = 0x07;
/// Present, user, read-only 4 KiB page.
const READ_ONLY: u64 = 0x05;
const PAGE_BYTES: u64 = 4096;
const ADDR_MASK: u64 = 0x000f_ffff_ffe0_0000;
const TABLE_MASK: u64 = 0x000f_ffff_ffff_f000;
/// Guest-physical space the identity tables cover (RAM and the MMIO window).
const IDENTITY_GIB: usize = 4;

/// PML4 of the loaded address space (0: the VMM's identity map, as in host tests).
static ACTIVE_PML4: AtomicU64 = AtomicU64::new(0);
/// Cleared by the boot self-test if the CPU (or hypervisor) does not set dirty bits.
static DIRTY_BITS_WORK: AtomicBool = AtomicBool::new(true);

pub fn slot_of(va: u64) -> u64 {
    va & !(SLOT - 1)
}

/// A zeroed, 4 KiB aligned page of kernel heap (identity mapped, so its
/// address is also its physical address).
struct Table(*mut u64);

impl Table {
    fn new() -> Result<Self> {
        // SAFETY: non-zero size.
        let p = unsafe { alloc_zeroed(Self::layout()) } as *mut u64;
        if p.is_null() {
            return Err(Errno::ENOMEM);
        }
        Ok(Self(p))
    }
    fn layout() -> Layout {
        // 4096 is a power of two and a multiple of the size: always valid.
        Layout::from_size_align(4096, 4096).unwrap_or(Layout::new::<[u64; 512]>())
    }
    fn addr(&self) -> u64 {
        self.0 as u64
    }
    fn get(&self, i: usize) -> u64 {
        // SAFETY: i < 512 (callers mask indices), the page is ours.
        unsafe { core::ptr::read_volatile(self.0.add(i & 511)) }
    }
    fn set(&self, i: usize, v: u64) {
        // SAFETY: as in `get`.
        unsafe { core::ptr::write_volatile(self.0.add(i & 511), v) }
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.0 as *mut u8, Self::layout()) }
    }
}

/// The pool of 2 MiB frames for user memory, and the tables every space shares.
pub struct Frames {
    pub user_lo: u64,
    pub user_hi: u64,
    free: Vec<u64>,
    /// Frames from here to `user_hi` were never handed out (still zero).
    fresh: u64,
    /// Frames of shared mappings held by more than one space: the count of
    /// holders beyond the first.
    extra_holders: BTreeMap<u64, u32>,
    ident_pdpt: Option<Table>,
    ident_pds: Vec<Table>,
    /// 4 KiB pages for the first 2 MiB with page 0 left out, so that a
    /// null-pointer access faults (boot data starts at 0x1000).
    low_pt: Option<Table>,
}

impl Frames {
    /// The user range `[lo, hi)` rounded inwards to whole slots.
    pub fn new(lo: u64, hi: u64) -> Self {
        let user_lo = (lo + SLOT - 1) & !(SLOT - 1);
        let user_hi = (hi & !(SLOT - 1)).max(user_lo);
        Self {
            user_lo,
            user_hi,
            free: Vec::new(),
            fresh: user_lo,
            extra_holders: BTreeMap::new(),
            ident_pdpt: None,
            ident_pds: Vec::new(),
            low_pt: None,
        }
    }

    /// Builds the shared identity tables (not in host tests: they only
    /// matter for the CPU).
    pub fn build_identity(&mut self) -> Result<()> {
        let pdpt = Table::new()?;
        for g in 0..IDENTITY_GIB {
            let pd = Table::new()?;
            for j in 0..512 {
                pd.set(j, (((g * 512 + j) as u64) << 21) | LARGE);
            }
            pdpt.set(g, pd.addr() | TABLE);
            self.ident_pds.push(pd);
        }
        self.ident_pdpt = Some(pdpt);
        let low = Table::new()?;
        for i in 1..512u64 {
            low.set(i as usize, (i << 12) | TABLE);
        }
        self.low_pt = Some(low);
        Ok(())
    }

    /// A zero frame.
    pub fn alloc(&mut self) -> Option<u64> {
        if let Some(f) = self.free.pop() {
            return Some(f);
        }
        if self.fresh + SLOT <= self.user_hi {
            self.fresh += SLOT;
            return Some(self.fresh - SLOT);
        }
        None
    }

    /// Takes back a frame, which the caller has cleared.
    pub fn free(&mut self, frame: u64) {
        self.free.push(frame);
    }

    /// One more space holds `frame`.
    pub fn hold(&mut self, frame: u64) {
        *self.extra_holders.entry(frame).or_default() += 1;
    }

    /// A space lets go of `frame`; true if others still hold it.
    pub fn let_go(&mut self, frame: u64) -> bool {
        match self.extra_holders.get_mut(&frame) {
            Some(n) if *n > 1 => {
                *n -= 1;
                true
            }
            Some(_) => {
                self.extra_holders.remove(&frame);
                true
            }
            None => false,
        }
    }

    pub fn available(&self) -> u64 {
        self.free.len() as u64 + (self.user_hi - self.fresh) / SLOT
    }

    pub fn is_user(&self, va: u64) -> bool {
        (self.user_lo..self.user_hi).contains(&va)
    }
}

/// The slots `[start, end)` ranges touch.
pub fn slots_of(ranges: impl Iterator<Item = (u64, u64)>) -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    for (s, e) in ranges {
        let mut at = slot_of(s);
        while at < e {
            out.insert(at);
            at += SLOT;
        }
    }
    out
}

/// What the application may do with one 4 KiB page of a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    None,
    Read,
    ReadWrite,
}

impl Access {
    fn pte_flags(self) -> u64 {
        match self {
            Access::None => 0,
            Access::Read => READ_ONLY,
            Access::ReadWrite => TABLE,
        }
    }
}

/// The frame behind a slot and, when its pages differ in what they allow,
/// the 4 KiB page table that says so (otherwise one 2 MiB page maps it).
struct Backing {
    frame: u64,
    pages: Option<Table>,
}

/// One process's page tables and the frames behind its slots.
pub struct Space {
    pml4: Table,
    pdpt: Table,
    /// Private page directories for the GiBs holding user slots.
    pds: Vec<Table>,
    /// Slot address -> its frame.
    slots: BTreeMap<u64, Backing>,
}

fn phys(pa: u64) -> *mut u8 {
    (PHYS_BASE + pa) as *mut u8
}

/// Zeroes `[pa, pa + len)` of a user frame no space maps any more.
fn clear(pa: u64, len: u64) {
    // SAFETY: the range lies in a 2 MiB user frame being freed, reached
    // through the physical window every space has.
    unsafe { core::ptr::write_bytes(phys(pa), 0, len as usize) }
}

/// The parts of a written slot's frame that may hold data, as (offset,
/// length) runs: the whole frame for one 2 MiB page; for a slot mapped page
/// by page, the runs of pages whose dirty bit is set. The rest of the frame
/// is still zero (frames come zero and every write sets a dirty bit: the
/// CPU's, or `translate`'s for DMA and the kernel's physical-window writes),
/// so fork copies and free clears only these: a process that touched a few
/// pages of a slot costs a few pages, not 2 MiB of first touches.
fn written_runs(backing: &Backing) -> Vec<(u64, u64)> {
    let Some(pt) = backing
        .pages
        .as_ref()
        .filter(|_| DIRTY_BITS_WORK.load(Ordering::Relaxed))
    else {
        return alloc::vec![(0, SLOT)];
    };
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for i in 0..512u64 {
        if pt.get(i as usize) & DIRTY == 0 {
            continue;
        }
        match runs.last_mut() {
            Some(run) if run.0 + run.1 == i * PAGE_BYTES => run.1 += PAGE_BYTES,
            _ => runs.push((i * PAGE_BYTES, PAGE_BYTES)),
        }
    }
    runs
}

impl Space {
    /// An empty space: the kernel parts identity mapped, no user slots.
    pub fn new(frames: &Frames) -> Result<Self> {
        let pml4 = Table::new()?;
        let pdpt = Table::new()?;
        let ident = frames.ident_pdpt.as_ref().ok_or(Errno::ENOMEM)?;
        let user_gib = frames.user_hi.div_ceil(1 << 30) as usize;
        let mut pds = Vec::new();
        for g in 0..IDENTITY_GIB {
            if g < user_gib {
                let pd = Table::new()?;
                for j in 0..512 {
                    let va = ((g * 512 + j) as u64) << 21;
                    if va == 0 {
                        let low = frames.low_pt.as_ref().ok_or(Errno::ENOMEM)?;
                        pd.set(j, low.addr() | TABLE);
                    } else if !frames.is_user(va) {
                        pd.set(j, va | LARGE);
                    }
                }
                pdpt.set(g, pd.addr() | TABLE);
                pds.push(pd);
            } else {
                pdpt.set(g, ident.get(g));
            }
        }
        pml4.set(0, pdpt.addr() | TABLE);
        pml4.set(1, ident.addr() | TABLE);
        Ok(Self {
            pml4,
            pdpt,
            pds,
            slots: BTreeMap::new(),
        })
    }

    /// The CR3 value that loads this space.
    pub fn cr3(&self) -> u64 {
        self.pml4.addr()
    }

    fn pde(&self, va: u64) -> Option<(&Table, usize)> {
        let pd = self.pds.get((va >> 30) as usize)?;
        Some((pd, ((va >> 21) & 511) as usize))
    }

    /// Points the slot at `va` to `backing`: one 2 MiB page, or its page table.
    fn install(&self, va: u64, backing: &Backing, dirty: bool) {
        let Some((pd, i)) = self.pde(va) else {
            return;
        };
        match &backing.pages {
            Some(pt) => pd.set(i, pt.addr() | TABLE),
            None => pd.set(
                i,
                backing.frame | LARGE | if dirty { DIRTY | ACCESSED } else { 0 },
            ),
        }
    }

    fn dirty(&self, va: u64) -> bool {
        if !DIRTY_BITS_WORK.load(Ordering::Relaxed) {
            return true;
        }
        match self.slots.get(&va).and_then(|b| b.pages.as_ref()) {
            Some(pt) => (0..512).any(|i| pt.get(i) & DIRTY != 0),
            None => self.pde(va).is_some_and(|(pd, i)| pd.get(i) & DIRTY != 0),
        }
    }

    pub fn is_mapped(&self, va: u64) -> bool {
        self.slots.contains_key(&slot_of(va))
    }

    /// Makes the backed slots exactly `needed`; returns whether a slot went
    /// away (the caller must then flush the TLB if this space is loaded)
    /// and the slots newly backed (as one 2 MiB page each, for the caller
    /// to give their protections with `set_access`).
    pub fn sync(
        &mut self,
        needed: &BTreeSet<u64>,
        frames: &mut Frames,
    ) -> Result<(bool, Vec<u64>)> {
        let gone: Vec<u64> = self
            .slots
            .keys()
            .copied()
            .filter(|s| !needed.contains(s))
            .collect();
        for &va in &gone {
            self.drop_slot(va, frames);
        }
        let mut fresh = Vec::new();
        for &va in needed {
            if self.slots.contains_key(&va) || !frames.is_user(va) {
                continue;
            }
            let frame = frames.alloc().ok_or(Errno::ENOMEM)?;
            let backing = Backing { frame, pages: None };
            self.install(va, &backing, false);
            self.slots.insert(va, backing);
            fresh.push(va);
        }
        Ok((!gone.is_empty(), fresh))
    }

    /// Sets what each 4 KiB page of the backed slot at `va` allows (`None`:
    /// everything, as one 2 MiB page); returns whether the TLB must be
    /// flushed: when an entry the CPU may have cached changed, not when a
    /// page only became present (x86 caches no translation for a
    /// non-present page, so brk and mmap growing into a slot cost no
    /// flush). Dirty bits carry over: a slot
    /// written as a whole counts as written in each of its pages.
    pub fn set_access(&mut self, va: u64, access: Option<&[Access; 512]>) -> Result<bool> {
        let dirty = self.slots.contains_key(&va) && self.dirty(va);
        let Some(backing) = self.slots.get_mut(&va) else {
            return Ok(false);
        };
        let frame = backing.frame;
        let changed = match (access, &backing.pages) {
            (None, None) => false,
            (None, Some(_)) => {
                backing.pages = None;
                true
            }
            (Some(access), None) => {
                let pt = Table::new()?;
                let written = if dirty { DIRTY | ACCESSED } else { 0 };
                for (i, a) in access.iter().enumerate() {
                    pt.set(i, (frame + i as u64 * PAGE_BYTES) | a.pte_flags() | written);
                }
                backing.pages = Some(pt);
                true
            }
            (Some(access), Some(pt)) => {
                let mut flush = false;
                for (i, a) in access.iter().enumerate() {
                    let old = pt.get(i);
                    let new = (old & !(TABLE | READ_ONLY)) | a.pte_flags();
                    if new != old {
                        pt.set(i, new);
                        flush |= old & PRESENT != 0;
                    }
                }
                return Ok(flush);
            }
        };
        let Some(backing) = self.slots.get(&va) else {
            return Ok(changed);
        };
        self.install(va, backing, dirty);
        Ok(changed)
    }

    fn drop_slot(&mut self, va: u64, frames: &mut Frames) {
        let dirty = self.slots.contains_key(&va) && self.dirty(va);
        if let Some(backing) = self.slots.remove(&va) {
            if let Some((pd, i)) = self.pde(va) {
                pd.set(i, 0);
            }
            if frames.let_go(backing.frame) {
                // Another space still maps this shared frame.
                return;
            }
            if dirty {
                for (offset, len) in written_runs(&backing) {
                    clear(backing.frame + offset, len);
                }
            }
            frames.free(backing.frame);
        }
    }

    /// The child's backing of a slot: `frame`, with a copy of `parent`'s
    /// page table (if it has one) pointing there, its dirty bits cleared
    /// unless `written`.
    fn backing_like(parent: &Backing, frame: u64, written: bool) -> Result<Backing> {
        let pages = match &parent.pages {
            None => None,
            Some(pt) => {
                let copy = Table::new()?;
                for i in 0..512 {
                    let mut e = (pt.get(i) & !TABLE_MASK) | (frame + i as u64 * PAGE_BYTES);
                    if !written {
                        e &= !(DIRTY | ACCESSED);
                    }
                    copy.set(i, e);
                }
                Some(copy)
            }
        };
        Ok(Backing { frame, pages })
    }

    /// Marks the whole slot at `va` written (so whoever lets go of a shared
    /// frame last clears it).
    fn mark_written(&self, va: u64) {
        match self.slots.get(&va).and_then(|b| b.pages.as_ref()) {
            Some(pt) => (0..512).for_each(|i| pt.set(i, pt.get(i) | DIRTY | ACCESSED)),
            None => {
                if let Some((pd, i)) = self.pde(va) {
                    pd.set(i, pd.get(i) | DIRTY | ACCESSED);
                }
            }
        }
    }

    /// A copy for a forked child: `shared` slots (of `MAP_SHARED`
    /// mappings) map the same frames, dirty slots are copied into fresh
    /// frames, clean ones backed by fresh (zero) frames. Page protections
    /// are the parent's.
    pub fn fork(&self, frames: &mut Frames, shared: &BTreeSet<u64>) -> Result<Space> {
        let mut child = Space::new(frames)?;
        for (&va, backing) in &self.slots {
            if shared.contains(&va) {
                // Both sides count the whole frame as written, so whichever
                // lets go last clears all of it (it cannot know which pages
                // the other wrote).
                self.mark_written(va);
                let Ok(copy) = Self::backing_like(backing, backing.frame, true) else {
                    child.release(frames);
                    return Err(Errno::ENOMEM);
                };
                frames.hold(backing.frame);
                child.install(va, &copy, true);
                child.slots.insert(va, copy);
                continue;
            }
            let Some(new) = frames.alloc() else {
                child.release(frames);
                return Err(Errno::ENOMEM);
            };
            let dirty = self.dirty(va);
            let copy = match Self::backing_like(backing, new, dirty) {
                Ok(copy) => copy,
                Err(e) => {
                    frames.free(new);
                    child.release(frames);
                    return Err(e);
                }
            };
            if dirty {
                for (offset, len) in written_runs(backing) {
                    // SAFETY: the same range of two distinct frames, both
                    // reached through the physical window; `new` belongs to
                    // nobody yet.
                    unsafe {
                        core::ptr::copy_nonoverlapping(
                            phys(backing.frame + offset),
                            phys(new + offset),
                            len as usize,
                        )
                    };
                }
            }
            child.install(va, &copy, dirty);
            child.slots.insert(va, copy);
        }
        Ok(child)
    }

    /// Gives every frame back (cleared where written). The space must not
    /// be loaded.
    pub fn release(mut self, frames: &mut Frames) {
        let all: Vec<u64> = self.slots.keys().copied().collect();
        for va in all {
            self.drop_slot(va, frames);
        }
    }

    /// Copies `out.len()` bytes at `va` of this space (loaded or not)
    /// through the physical window; false if part of it is not backed.
    pub fn read(&self, va: u64, out: &mut [u8]) -> bool {
        let mut done = 0usize;
        while done < out.len() {
            let at = va + done as u64;
            let Some(backing) = self.slots.get(&slot_of(at)) else {
                return false;
            };
            let within = at - slot_of(at);
            let n = ((SLOT - within) as usize).min(out.len() - done);
            // SAFETY: `frame` is one of this space's 2 MiB frames and
            // `within + n` stays inside it; the physical window maps it.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    phys(backing.frame + within),
                    out[done..].as_mut_ptr(),
                    n,
                )
            };
            done += n;
        }
        true
    }

    /// The guest-physical address behind `va` in this space (loaded or not).
    pub fn physical(&self, va: u64) -> Option<u64> {
        let slot = slot_of(va);
        self.slots.get(&slot).map(|b| b.frame + (va - slot))
    }

    /// Frames in use (for `sysinfo` and tests).
    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// Slots that were written (and so copied by `fork`).
    pub fn dirty_count(&self) -> usize {
        self.slots.keys().filter(|&&va| self.dirty(va)).count()
    }

    /// Makes this the space DMA addresses are translated through.
    pub fn activate(&self) {
        ACTIVE_PML4.store(self.cr3(), Ordering::Relaxed);
        let _ = &self.pdpt;
    }
}

/// Checks once, on the loaded space, that writing a page sets the dirty bit
/// of its entry.
pub fn self_test(space: &Space, va: u64) {
    let Some((pd, i)) = space.pde(va) else {
        return;
    };
    if pd.get(i) & PRESENT == 0 {
        return;
    }
    // SAFETY: `va` is a mapped, writable user page of the loaded space (the
    // caller's stack); the byte is written back unchanged.
    unsafe {
        let p = va as *mut u8;
        core::ptr::write_volatile(p, core::ptr::read_volatile(p));
    }
    // The leaf entry: the 2 MiB page, or the page's entry in the slot's
    // page table (`written_runs` trusts those).
    let leaf = match space.slots.get(&slot_of(va)).and_then(|b| b.pages.as_ref()) {
        Some(pt) => pt.get(((va >> 12) & 511) as usize),
        None => pd.get(i),
    };
    if leaf & DIRTY == 0 {
        DIRTY_BITS_WORK.store(false, Ordering::Relaxed);
    }
}

/// Splits the buffer `[va, va + len)` of the loaded space into guest-physical
/// pieces for a device; marks written pages dirty (the CPU does not see DMA).
pub fn dma_pieces(va: u64, len: u32, writable: bool, out: &mut Vec<(u64, u32)>) {
    for (pa, n) in physical_pieces(va, u64::from(len), writable) {
        out.push((pa, n as u32));
    }
}

/// Where the kernel can reach `[va, va + len)` of the loaded space whatever
/// its pages allow the application: pieces of the physical window (the
/// range itself without a loaded space). `written` marks the pages dirty,
/// as a write through `va` would; unbacked parts are left out.
pub fn kernel_view(va: u64, len: u64, written: bool) -> Vec<(u64, u64)> {
    let pml4 = ACTIVE_PML4.load(Ordering::Relaxed);
    if pml4 == 0 {
        return alloc::vec![(va, len)];
    }
    physical_pieces(va, len, written)
        .into_iter()
        .map(|(pa, n)| (PHYS_BASE + pa, n))
        .collect()
}

/// Copies `len` bytes from `src` to `dst` in the loaded space (ranges that
/// do not overlap) through [`kernel_view`], whatever the pages allow.
pub fn copy_within_space(dst: u64, src: u64, len: u64) {
    let mut done = 0;
    for (to, n) in kernel_view(dst, len, true) {
        let mut piece_done = 0;
        for (from, m) in kernel_view(src + done, n, false) {
            // SAFETY: both are views of backed application memory (the
            // physical window, or identity-mapped RAM without a loaded
            // space) of at least `m` bytes, and the ranges do not overlap.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    from as *const u8,
                    (to + piece_done) as *mut u8,
                    m as usize,
                )
            };
            piece_done += m;
        }
        done += n;
    }
}

/// The guest-physical address behind `va` in the loaded space (`va`
/// itself without one), if it is backed.
pub fn physical(va: u64) -> Option<u64> {
    let pml4 = ACTIVE_PML4.load(Ordering::Relaxed);
    if pml4 == 0 {
        return Some(va);
    }
    translate(pml4, va, va + 1, false)
}

fn physical_pieces(va: u64, len: u64, written: bool) -> Vec<(u64, u64)> {
    let pml4 = ACTIVE_PML4.load(Ordering::Relaxed);
    if pml4 == 0 || len == 0 {
        return alloc::vec![(va, len)];
    }
    let mut out = Vec::new();
    let end = va.saturating_add(len);
    let mut at = va;
    while at < end {
        let piece_end = (slot_of(at) + SLOT).min(end);
        if let Some(pa) = translate(pml4, at, piece_end, written) {
            out.push((pa, piece_end - at));
        }
        at = piece_end;
    }
    out
}

/// The guest-physical address of `va`, `[va, end)` lying in one slot
/// (whose frame is contiguous, whether one 2 MiB page or a page table maps
/// it); `mark_dirty` sets the dirty bits of the entries covering the range.
fn translate(pml4: u64, va: u64, end: u64, mark_dirty: bool) -> Option<u64> {
    let read = |table: u64, i: u64| {
        // SAFETY: page tables live in identity-mapped kernel heap.
        unsafe { core::ptr::read_volatile((table as *const u64).add((i & 511) as usize)) }
    };
    let write = |table: u64, i: u64, v: u64| {
        // SAFETY: as above; setting D on an entry is what the CPU itself
        // would do on a write through it.
        unsafe { core::ptr::write_volatile((table as *mut u64).add((i & 511) as usize), v) }
    };
    let e = read(pml4, va >> 39);
    if e & PRESENT == 0 {
        return None;
    }
    let e = read(e & TABLE_MASK, va >> 30);
    if e & PRESENT == 0 {
        return None;
    }
    let pd = e & TABLE_MASK;
    let e = read(pd, va >> 21);
    if e & PRESENT == 0 {
        return None;
    }
    if e & 0x80 != 0 {
        if mark_dirty && e & DIRTY == 0 {
            write(pd, va >> 21, e | DIRTY | ACCESSED);
        }
        return Some((e & ADDR_MASK) + (va & (SLOT - 1)));
    }
    // A slot mapped page by page: every entry keeps its frame address, even
    // where the page allows nothing.
    let pt = e & TABLE_MASK;
    let first = read(pt, va >> 12);
    if first & TABLE_MASK == 0 {
        return None;
    }
    if mark_dirty {
        let mut page = va >> 12;
        while page << 12 < end {
            let e = read(pt, page);
            if e & DIRTY == 0 {
                write(pt, page, e | DIRTY | ACCESSED);
            }
            page += 1;
        }
    }
    Some((first & TABLE_MASK) + (va & (PAGE_BYTES - 1)))
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_come_fresh_then_recycled() {
        let mut f = Frames::new(0x30_1000, 0x100_0000 + 0x1234);
        assert_eq!((f.user_lo, f.user_hi), (0x40_0000, 0x100_0000));
        assert_eq!(f.available(), 6);
        let a = f.alloc().expect("frame");
        let b = f.alloc().expect("frame");
        assert_eq!((a, b), (0x40_0000, 0x60_0000));
        f.free(a);
        assert_eq!(f.alloc(), Some(a));
        for _ in 0..4 {
            assert!(f.alloc().is_some());
        }
        assert_eq!(f.alloc(), None);
        assert!(f.is_user(0x40_0000) && !f.is_user(0x100_0000) && !f.is_user(0x20_0000));
    }

    #[test]
    fn a_shared_frame_is_freed_by_its_last_holder() {
        let mut f = Frames::new(0x40_0000, 0x100_0000);
        let frame = f.alloc().expect("frame");
        assert!(!f.let_go(frame), "one holder: the caller frees it");
        f.hold(frame);
        f.hold(frame);
        assert!(f.let_go(frame));
        assert!(f.let_go(frame));
        assert!(!f.let_go(frame));
    }

    #[test]
    fn slots_cover_every_touched_2mib_region() {
        let s = slots_of([(0x40_1000, 0x40_2000), (0x5f_f000, 0x60_1000)].into_iter());
        assert_eq!(
            s.into_iter().collect::<Vec<_>>(),
            vec![0x40_0000, 0x60_0000]
        );
        assert!(slots_of([(0x80_0000, 0x80_0000)].into_iter()).is_empty());
    }

    #[test]
    fn only_written_pages_of_a_page_mapped_slot_are_copied() {
        let whole = Backing {
            frame: 0x40_0000,
            pages: None,
        };
        assert_eq!(written_runs(&whole), vec![(0, SLOT)]);
        let pt = Table::new().expect("table");
        for i in [0usize, 1, 5, 511] {
            pt.set(i, DIRTY | ACCESSED);
        }
        pt.set(7, ACCESSED | TABLE);
        let paged = Backing {
            frame: 0x40_0000,
            pages: Some(pt),
        };
        assert_eq!(
            written_runs(&paged),
            vec![
                (0, 2 * PAGE_BYTES),
                (5 * PAGE_BYTES, PAGE_BYTES),
                (511 * PAGE_BYTES, PAGE_BYTES)
            ]
        );
    }

    #[test]
    fn dma_is_identity_without_a_loaded_space() {
        let mut out = Vec::new();
        dma_pieces(0x1234, 100, true, &mut out);
        assert_eq!(out, vec![(0x1234, 100)]);
    }
}
