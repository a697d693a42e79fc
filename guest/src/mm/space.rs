//! Per-process address spaces: four-level page tables with 4 KiB pages over
//! a pool of reference-counted 4 KiB frames, filled on demand and shared
//! copy-on-write by fork, as Linux's are.
//!
//! # Layout of every address space
//! - Below `user_lo` (boot data, page 0, the kernel image) and from
//!   `user_hi` to 4 GiB (the kernel heap with the page tables themselves
//!   and the virtqueues, then the MMIO window), memory is identity mapped
//!   with 2 MiB pages, identically in every space: the kernel, running at
//!   CPL3 in whichever process is current, always finds its code, heap and
//!   devices at the same place. The first 2 MiB are mapped with 4 KiB pages
//!   leaving page 0 out, so a null-pointer access faults as on Linux.
//! - The application owns `[user_lo, user_hi)` (where static programs are
//!   linked and their break grows) and `[4 GiB, USER_TOP)`, 128 TiB as on
//!   Linux: mappings there only reserve addresses (`crate::mm::Vmas`); a
//!   page gets a frame when it is first touched (a page fault, or the
//!   kernel touching it for the application), so `PROT_NONE` reservations
//!   and untouched memory cost nothing.
//! - The last 512 GiB of the lower half, from `PHYS_BASE`, map all of
//!   guest-physical `[0, 4 GiB)` again (the shared identity PDPT), so the
//!   kernel can copy and clear any frame whatever address space is loaded.
//!   (Not the upper half, as Linux's direct map: PVM keeps that for the
//!   host, and guest CPL3 accesses there fault.)
//!
//! # Frames and fork
//! [`Frames`] counts the page-table entries that point to each frame. fork
//! copies the page tables, not the memory: private pages become read-only
//! on both sides and the first write to one copies it, unless nobody else
//! holds its frame any more (`Space::fault`); `MAP_SHARED` pages stay
//! writable and shared. So the cost of fork follows the size of the page
//! tables, and a child that execs at once copies nothing.
//!
//! # Faults are expensive here
//! On this project's machines a page fault costs ~10-15 µs (two trips
//! through emulated CPL0) and the first touch of a fresh frame ~20 µs of
//! shadow paging. A fault therefore backs the pages around it too
//! ([`FAULT_AROUND`]), Linux's fault-around applied to anonymous memory as
//! well: start-up pays one fault per 256 KiB instead of one per page.
//! Entries are made with their accessed (and, if writable, dirty) bits
//! already set: the hypervisor's shadow paging only prefetches neighbours
//! of entries marked accessed, and write-protects a page until its dirty
//! bit is set, so each clear bit would cost a host fault on first use
//! (measured: python3's start-up spent ~10 ms more in user time without
//! them). The accessed bit is read back only to skip invalidating pages the
//! CPU cannot have cached.
//!
//! # Flushing
//! Entries that only become present or gain rights need no flush: the CPU
//! caches no translation for a non-present page, and a fault on a stale
//! read-only one makes it walk the tables again (so does the hypervisor's
//! shadow paging). Entries that lose rights or go away require a CR3 load
//! or an `invlpg` of each page ([`Stale`], `Kernel::flush`); the
//! operations here say which.

use alloc::alloc::{alloc_zeroed, dealloc};
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::alloc::Layout;
use core::cell::{Cell, RefCell};
use core::sync::atomic::{AtomicU64, Ordering};

use crate::errno::{Errno, Result};

pub const PAGE: u64 = 4096;
/// 2 MiB: what one page-directory entry maps.
pub const SLOT: u64 = 2 << 20;
/// Where all guest-physical memory is mapped again in every space (the
/// last PML4 entry of the lower half).
pub const PHYS_BASE: u64 = 0x7f80_0000_0000;
/// Start of the large upper user range, above the identity-mapped 4 GiB.
pub const HIGH_USER_START: u64 = 4 << 30;
/// End of user addresses: where the physical window starts, 127.5 TiB
/// (Linux's `TASK_SIZE` is 128 TiB less a page).
pub const USER_TOP: u64 = PHYS_BASE;
/// Pages a fault backs at once around the faulting one (256 KiB, aligned).
pub const FAULT_AROUND: u64 = 64;

const PRESENT: u64 = 1;
const WRITABLE: u64 = 2;
const USER: u64 = 4;
const ACCESSED: u64 = 0x20;
const DIRTY: u64 = 0x40;
const HUGE: u64 = 0x80;
/// Software bit: the entry holds a frame although the page is not present
/// (a `PROT_NONE` page keeps its contents for a later `mprotect`).
const HELD: u64 = 1 << 9;
/// Present, writable, user, 2 MiB.
const LARGE: u64 = PRESENT | WRITABLE | USER | HUGE;
/// Present, writable, user: a pointer to a lower table.
const TABLE: u64 = PRESENT | WRITABLE | USER;
const FRAME_MASK: u64 = 0x000f_ffff_ffff_f000;
const LARGE_MASK: u64 = 0x000f_ffff_ffe0_0000;
/// Guest-physical space the identity tables cover (RAM and the MMIO window).
const IDENTITY_GIB: usize = 4;
/// Frames per chunk of the reference-count table (4 MiB of RAM each):
/// chunks are made as frames in their range are first used, so boot does
/// not touch a table for all of RAM.
const CHUNK: usize = 1024;

/// Frames in use (4 MiB) beyond which fills of fresh frames have the host
/// back them a stretch at a time (`Frames::alloc_to_fill`).
const POPULATE_AFTER: u64 = 1024;

/// Bit of a frame's holder count: one of its holders is the page cache.
const CACHED: u32 = 1 << 31;

/// Free frames that make the guest report them to the VMM (4 MiB).
const REPORT_BATCH: usize = 1024;

/// Sorted frames as `[start, length]` runs of adjacent pages.
fn runs_of(frames: &[u64]) -> Vec<[u64; 2]> {
    let mut runs: Vec<[u64; 2]> = Vec::new();
    for &f in frames {
        match runs.last_mut() {
            Some(run) if run[0] + run[1] == f => run[1] += PAGE,
            _ => runs.push([f, PAGE]),
        }
    }
    runs
}

/// PML4 of the loaded address space (0: the VMM's identity map, as in host tests).
static ACTIVE_PML4: AtomicU64 = AtomicU64::new(0);

/// Translations the CPU may still hold after page-table entries lost
/// rights or went away: a few pages to invalidate one by one (`invlpg`,
/// one trip through CPL0 each), or so many that reloading CR3 is cheaper.
/// Under shadow paging a CR3 load makes the hypervisor rebuild every
/// translation touched afterwards, so the single pages are worth it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Stale {
    pages: Vec<u64>,
    all: bool,
}

impl Stale {
    /// Pages invalidated one by one at most.
    const MAX_PAGES: usize = 8;

    pub fn everything() -> Self {
        Self {
            pages: Vec::new(),
            all: true,
        }
    }

    fn add(&mut self, va: u64) {
        if self.all {
            return;
        }
        if self.pages.len() == Self::MAX_PAGES {
            *self = Self::everything();
        } else {
            self.pages.push(va);
        }
    }

    pub fn is_empty(&self) -> bool {
        !self.all && self.pages.is_empty()
    }

    /// Whether the whole TLB must go (reload CR3).
    pub fn all(&self) -> bool {
        self.all
    }

    /// The single pages to invalidate, when not `all`.
    pub fn pages(&self) -> &[u64] {
        &self.pages
    }
}

/// What an application page's protections let it do, as page-table bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    None,
    Read,
    ReadWrite,
}

impl Access {
    /// From `PROT_*` bits: x86 pages cannot be write-only or execute-only,
    /// so any access but none implies reading.
    pub fn of_prot(prot: u32) -> Self {
        if prot & crate::mm::PROT_WRITE != 0 {
            Access::ReadWrite
        } else if prot & (crate::mm::PROT_READ | crate::mm::PROT_EXEC) != 0 {
            Access::Read
        } else {
            Access::None
        }
    }
}

/// What a mapping says about one page: its protections, and whether its
/// frames are shared on fork (`MAP_SHARED`) or copied on write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageKind {
    pub access: Access,
    pub shared: bool,
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
}

impl Drop for Table {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.0 as *mut u8, Self::layout()) }
    }
}

/// Entry `i` of the table at (identity-mapped) address `table`.
fn get(table: u64, i: u64) -> u64 {
    // SAFETY: page tables live in identity-mapped kernel heap; i is masked.
    unsafe { core::ptr::read_volatile((table as *const u64).add((i & 511) as usize)) }
}

fn set(table: u64, i: u64, v: u64) {
    // SAFETY: as in `get`; the tables written are this module's own.
    unsafe { core::ptr::write_volatile((table as *mut u64).add((i & 511) as usize), v) }
}

/// Where guest-physical `pa` is in the physical window.
pub fn phys(pa: u64) -> *mut u8 {
    (PHYS_BASE + pa) as *mut u8
}

struct FrameBooks {
    /// Holders per frame, in chunks of `CHUNK` frames made on first use.
    refs: Vec<Option<Box<[u32; CHUNK]>>>,
    /// Frames given back, to be cleared when handed out again (the host
    /// still backs them: reusing one costs no host fault).
    free: Vec<u64>,
    /// Frames given back and reported to the VMM, which dropped the host
    /// memory behind them: they read as zero.
    reported: Vec<u64>,
    /// Frames from here to `user_hi` were never handed out (still zero,
    /// and never touched, so the host has not backed them yet).
    fresh: u64,
    /// Fresh frames below this the host was asked to back already.
    populated: u64,
    used: u64,
}

/// The pool of 4 KiB frames for user memory, and the tables every space shares.
pub struct Frames {
    pub user_lo: u64,
    pub user_hi: u64,
    books: RefCell<FrameBooks>,
    ident_pdpt: Option<Table>,
    ident_pds: Vec<Table>,
    /// 4 KiB pages for the first 2 MiB with page 0 left out, so that a
    /// null-pointer access faults (boot data starts at 0x1000).
    low_pt: Option<Table>,
}

impl Frames {
    /// The user range `[lo, hi)` rounded inwards to whole 2 MiB slots
    /// (the identity map around it uses 2 MiB pages).
    pub fn new(lo: u64, hi: u64) -> Self {
        let user_lo = (lo + SLOT - 1) & !(SLOT - 1);
        let user_hi = (hi & !(SLOT - 1)).max(user_lo);
        let chunks = ((user_hi - user_lo) / PAGE).div_ceil(CHUNK as u64) as usize;
        let mut refs = Vec::new();
        refs.resize_with(chunks, || None);
        Self {
            user_lo,
            user_hi,
            books: RefCell::new(FrameBooks {
                refs,
                free: Vec::new(),
                reported: Vec::new(),
                fresh: user_lo,
                populated: user_lo,
                used: 0,
            }),
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
            for j in 0..512u64 {
                set(pd.addr(), j, (((g as u64) * 512 + j) << 21) | LARGE);
            }
            set(pdpt.addr(), g as u64, pd.addr() | TABLE);
            self.ident_pds.push(pd);
        }
        self.ident_pdpt = Some(pdpt);
        let low = Table::new()?;
        for i in 1..512u64 {
            set(low.addr(), i, (i << 12) | TABLE);
        }
        self.low_pt = Some(low);
        Ok(())
    }

    fn index(&self, pa: u64) -> Option<(usize, usize)> {
        if !(self.user_lo..self.user_hi).contains(&pa) {
            return None;
        }
        let i = ((pa - self.user_lo) / PAGE) as usize;
        Some((i / CHUNK, i % CHUNK))
    }

    fn refs(&self, pa: u64) -> u32 {
        let Some((c, i)) = self.index(pa) else {
            return 0;
        };
        self.books
            .borrow()
            .refs
            .get(c)
            .and_then(|chunk| chunk.as_ref().map(|chunk| chunk[i]))
            .unwrap_or(0)
    }

    /// How many page-table entries (and the page cache) hold `pa`.
    pub fn holders(&self, pa: u64) -> u32 {
        self.refs(pa) & !CACHED
    }

    /// How many page-table entries point to `pa` (its holders but the
    /// page cache): what a process's proportional share divides by.
    pub fn mappers(&self, pa: u64) -> u32 {
        let refs = self.refs(pa);
        (refs & !CACHED) - u32::from(refs & CACHED != 0)
    }

    /// Marks `pa`, which the caller holds, as the page cache's hold.
    pub fn mark_cached(&self, pa: u64) {
        self.update_refs(pa, |r| r | CACHED);
    }

    /// The page cache lets go of `pa`.
    pub fn uncache(&self, pa: u64) {
        self.update_refs(pa, |r| r & !CACHED);
        self.let_go(pa);
    }

    fn update_refs(&self, pa: u64, f: impl FnOnce(u32) -> u32) {
        let Some((c, i)) = self.index(pa) else {
            return;
        };
        let mut books = self.books.borrow_mut();
        if let Some(Some(chunk)) = books.refs.get_mut(c) {
            chunk[i] = f(chunk[i]);
        }
    }

    fn add_holders(&self, pa: u64, delta: i32) -> u32 {
        let Some((c, i)) = self.index(pa) else {
            return 0;
        };
        let mut books = self.books.borrow_mut();
        let Some(slot) = books.refs.get_mut(c) else {
            return 0;
        };
        let chunk = slot.get_or_insert_with(|| Box::new([0; CHUNK]));
        let flag = chunk[i] & CACHED;
        let count = (chunk[i] & !CACHED)
            .saturating_add_signed(delta)
            .min(!CACHED);
        chunk[i] = if count == 0 { 0 } else { count | flag };
        count
    }

    /// A zero frame with one holder: a recycled one still backed by the
    /// host first (cleared here), then one the host dropped, then one
    /// never used.
    pub fn alloc(&self) -> Option<u64> {
        let (frame, clear) = {
            let mut books = self.books.borrow_mut();
            let taken = if let Some(f) = books.free.pop() {
                (f, true)
            } else if let Some(f) = books.reported.pop() {
                (f, false)
            } else if books.fresh + PAGE <= self.user_hi {
                books.fresh += PAGE;
                (books.fresh - PAGE, false)
            } else {
                return None;
            };
            books.used += 1;
            taken
        };
        if clear {
            // SAFETY: a whole free frame nobody maps, through the physical window.
            unsafe { core::ptr::write_bytes(phys(frame), 0, PAGE as usize) };
        }
        self.add_holders(frame, 1);
        Some(frame)
    }

    /// [`Frames::alloc`] for a frame the caller fills at once (a copy, a
    /// file's page): a frame never used before has the host back the
    /// stretch of fresh frames it starts in one go (`control::POPULATE_*`),
    /// since each first touch of guest RAM is otherwise a host fault
    /// (measured: python3's start-up 8% slower with the page cache's fills
    /// faulting one by one). Frames only mapped, such as fault-around's
    /// zero pages, cost the host nothing until the application touches them,
    /// so plain `alloc` leaves them be. A guest using less than
    /// [`POPULATE_AFTER`] frames keeps its exact footprint (an idle
    /// instance would otherwise pay for the rest of each stretch).
    pub fn alloc_to_fill(&self) -> Option<u64> {
        let frame = self.alloc()?;
        let stretch = capsa_abi::control::POPULATE_SIZE;
        let mut books = self.books.borrow_mut();
        if frame + PAGE == books.fresh && frame >= books.populated && books.used >= POPULATE_AFTER {
            let start = frame & !(stretch - 1);
            books.populated = start + stretch;
            drop(books);
            crate::arch::control_write(capsa_abi::control::POPULATE_ADDR, start);
        }
        Some(frame)
    }

    /// One more entry points to `pa`.
    pub fn hold(&self, pa: u64) {
        self.add_holders(pa, 1);
    }

    /// An entry stops pointing to `pa`; the last one frees it.
    pub fn let_go(&self, pa: u64) {
        if self.index(pa).is_some() && self.add_holders(pa, -1) == 0 {
            let mut books = self.books.borrow_mut();
            books.free.push(pa);
            books.used = books.used.saturating_sub(1);
            if books.free.len() >= REPORT_BATCH {
                drop(books);
                self.report_free();
            }
        }
    }

    /// Free page reporting: tells the VMM which free frames the host may
    /// drop (`control::FREE_PAGES_*`), as runs of adjacent frames, and
    /// keeps them as known-zero frames. Batched, since each report is an
    /// exit: a process giving back memory and taking it again soon after
    /// keeps reusing frames the host still backs.
    fn report_free(&self) {
        use capsa_abi::control;
        let mut frames = core::mem::take(&mut self.books.borrow_mut().free);
        frames.sort_unstable();
        let runs = runs_of(&frames);
        for chunk in runs.chunks(control::MAX_FREE_RANGES as usize) {
            let records: Vec<[u64; 2]> = chunk.to_vec();
            // The records live in the identity-mapped kernel heap: their
            // address is guest-physical.
            crate::arch::control_write(control::FREE_PAGES_ADDR, records.as_ptr() as u64);
            crate::arch::control_write(control::FREE_PAGES_LEN, records.len() as u64);
        }
        self.books.borrow_mut().reported.extend(frames);
    }

    /// Frames not in use.
    pub fn available(&self) -> u64 {
        (self.user_hi - self.user_lo) / PAGE - self.books.borrow().used
    }

    /// Whether `va` is an address the application owns (see the layout).
    pub fn is_user(&self, va: u64) -> bool {
        (self.user_lo..self.user_hi).contains(&va) || (HIGH_USER_START..USER_TOP).contains(&va)
    }
}

/// One process's page tables.
pub struct Space {
    pml4: Table,
    /// Every private table below the PML4, to free with the space.
    tables: RefCell<Vec<Table>>,
    /// Pages with a frame (the resident set).
    resident: Cell<u64>,
    user_lo: u64,
    user_hi: u64,
}

impl Space {
    /// An empty space: the kernel parts identity mapped, no user pages.
    pub fn new(frames: &Frames) -> Result<Self> {
        let pml4 = Table::new()?;
        let pdpt = Table::new()?;
        let ident = frames.ident_pdpt.as_ref().ok_or(Errno::ENOMEM)?;
        let user_gib = frames.user_hi.div_ceil(1 << 30);
        let mut tables = Vec::new();
        for g in 0..IDENTITY_GIB as u64 {
            if g < user_gib {
                let pd = Table::new()?;
                for j in 0..512u64 {
                    let va = (g * 512 + j) << 21;
                    if va == 0 {
                        let low = frames.low_pt.as_ref().ok_or(Errno::ENOMEM)?;
                        set(pd.addr(), j, low.addr() | TABLE);
                    } else if !(frames.user_lo..frames.user_hi).contains(&va) {
                        set(pd.addr(), j, va | LARGE);
                    }
                }
                set(pdpt.addr(), g, pd.addr() | TABLE);
                tables.push(pd);
            } else {
                set(pdpt.addr(), g, get(ident.addr(), g));
            }
        }
        set(pml4.addr(), 0, pdpt.addr() | TABLE);
        set(pml4.addr(), PHYS_BASE >> 39, ident.addr() | TABLE);
        tables.push(pdpt);
        Ok(Self {
            pml4,
            tables: RefCell::new(tables),
            resident: Cell::new(0),
            user_lo: frames.user_lo,
            user_hi: frames.user_hi,
        })
    }

    /// The CR3 value that loads this space.
    pub fn cr3(&self) -> u64 {
        self.pml4.addr()
    }

    fn is_user(&self, va: u64) -> bool {
        (self.user_lo..self.user_hi).contains(&va) || (HIGH_USER_START..USER_TOP).contains(&va)
    }

    /// The page-table entry for the user page at `va` (the table's address
    /// and the index in it), making the tables on the way when `create`.
    fn entry(&self, va: u64, create: bool) -> Result<Option<(u64, u64)>> {
        if !self.is_user(va) {
            return Ok(None);
        }
        let mut table = self.pml4.addr();
        for shift in [39u64, 30, 21] {
            let i = (va >> shift) & 511;
            let e = get(table, i);
            if e & PRESENT != 0 {
                table = e & FRAME_MASK;
                continue;
            }
            if !create {
                return Ok(None);
            }
            let t = Table::new()?;
            set(table, i, t.addr() | TABLE);
            table = t.addr();
            self.tables.borrow_mut().push(t);
        }
        Ok(Some((table, (va >> 12) & 511)))
    }

    /// The entry of the page at `va`, if its table exists.
    fn pte(&self, va: u64) -> u64 {
        match self.entry(va, false) {
            Ok(Some((t, i))) => get(t, i),
            _ => 0,
        }
    }

    /// Visits every user page in `[start, end)` whose entry holds a frame,
    /// skipping tables that do not exist.
    fn for_each_page(&self, start: u64, end: u64, mut f: impl FnMut(u64, u64, u64)) {
        let end = end.min(USER_TOP);
        self.walk(self.pml4.addr(), 39, 0, start, end, &mut f);
    }

    fn walk(
        &self,
        table: u64,
        shift: u64,
        base: u64,
        start: u64,
        end: u64,
        f: &mut dyn FnMut(u64, u64, u64),
    ) {
        let span = 1u64 << shift;
        let first = if start > base {
            (start - base) >> shift
        } else {
            0
        };
        for i in first..512 {
            let va = base + i * span;
            if va >= end || va >= USER_TOP {
                break;
            }
            let e = get(table, i);
            if shift == 12 {
                if e & (PRESENT | HELD) != 0 && va >= start {
                    f(va, table, i);
                }
                continue;
            }
            // Kernel parts: the identity-mapped GiBs and 2 MiB pages, and
            // the first 2 MiB's shared table.
            let kernel = e & HUGE != 0
                || (shift == 30 && base == 0 && va < HIGH_USER_START && va >= self.user_hi)
                || (shift == 21 && !self.is_user(va));
            if e & PRESENT == 0 || kernel {
                continue;
            }
            self.walk(e & FRAME_MASK, shift - 9, va, start, end, f);
        }
    }

    /// The bits a present entry for a page of `kind` gets; `writable`:
    /// whether the frame may be written in place (not copy-on-write).
    fn bits(kind: PageKind, writable: bool) -> u64 {
        match kind.access {
            Access::None => HELD,
            Access::Read => PRESENT | USER | ACCESSED,
            Access::ReadWrite if writable => PRESENT | USER | WRITABLE | ACCESSED | DIRTY,
            Access::ReadWrite => PRESENT | USER | ACCESSED,
        }
    }

    /// Backs the pages of `[start, end)` that have no frame yet with zero
    /// frames; with `write` the pages are about to be written, and a frame
    /// others hold too is copied first. ENOMEM when frames run out.
    /// Returns the present pages that became writable or changed frames,
    /// whose old translation the CPU may still hold (a fault on the page
    /// dropped it already; the kernel touching it for a call did not).
    pub fn populate(
        &self,
        frames: &Frames,
        start: u64,
        end: u64,
        kind: PageKind,
        write: bool,
    ) -> Result<Stale> {
        let mut stale = Stale::default();
        let mut va = start & !(PAGE - 1);
        while va < end {
            // One walk per page table, then its entries in turn.
            let (table, first) = self.entry(va, true)?.ok_or(Errno::EFAULT)?;
            for i in first..512 {
                if va >= end {
                    break;
                }
                let e = get(table, i);
                if e & (PRESENT | HELD) == 0 {
                    let frame = frames.alloc().ok_or(Errno::ENOMEM)?;
                    set(table, i, frame | Self::bits(kind, true));
                    self.resident.set(self.resident.get() + 1);
                } else if write && e & WRITABLE == 0 && kind.access == Access::ReadWrite {
                    let frame = e & FRAME_MASK;
                    if kind.shared || frames.holders(frame) <= 1 {
                        set(table, i, (e & !HELD) | Self::bits(kind, true));
                    } else {
                        let copy = frames.alloc_to_fill().ok_or(Errno::ENOMEM)?;
                        // SAFETY: two distinct whole frames through the
                        // physical window; `copy` belongs to nobody yet.
                        unsafe {
                            core::ptr::copy_nonoverlapping(phys(frame), phys(copy), PAGE as usize)
                        };
                        frames.let_go(frame);
                        set(table, i, copy | Self::bits(kind, true));
                    }
                    if e & (PRESENT | ACCESSED) == PRESENT | ACCESSED {
                        stale.add(va);
                    }
                }
                va += PAGE;
            }
        }
        Ok(stale)
    }

    /// Gives the page at `va`, which has no frame, a fresh one holding
    /// `data` (at most a page; the rest zero).
    pub fn install_copy(
        &self,
        frames: &Frames,
        va: u64,
        data: &[u8],
        kind: PageKind,
    ) -> Result<()> {
        let (table, i) = self.entry(va, true)?.ok_or(Errno::EFAULT)?;
        if get(table, i) & (PRESENT | HELD) != 0 {
            return Ok(());
        }
        let frame = frames.alloc_to_fill().ok_or(Errno::ENOMEM)?;
        let n = data.len().min(PAGE as usize);
        // SAFETY: a fresh whole frame nobody maps yet, through the physical
        // window; `n` is at most a page.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), phys(frame), n) };
        set(table, i, frame | Self::bits(kind, true));
        self.resident.set(self.resident.get() + 1);
        Ok(())
    }

    /// Gives the page at `va`, which has no frame, a fresh copy of `frame`.
    pub fn install_copy_of(
        &self,
        frames: &Frames,
        va: u64,
        frame: u64,
        kind: PageKind,
    ) -> Result<()> {
        // SAFETY: a whole frame through the physical window, read only.
        let page = unsafe { core::slice::from_raw_parts(phys(frame), PAGE as usize) };
        self.install_copy(frames, va, page, kind)
    }

    /// Maps `frame` (a page-cache frame) at `va`, which has no frame yet,
    /// holding it once more: writable in place only in a `MAP_SHARED`
    /// mapping, since others hold it.
    pub fn map_frame(&self, frames: &Frames, va: u64, frame: u64, kind: PageKind) -> Result<()> {
        let (table, i) = self.entry(va, true)?.ok_or(Errno::EFAULT)?;
        if get(table, i) & (PRESENT | HELD) != 0 {
            return Ok(());
        }
        frames.hold(frame);
        let writable = kind.shared || frames.holders(frame) <= 1;
        set(table, i, frame | Self::bits(kind, writable));
        self.resident.set(self.resident.get() + 1);
        Ok(())
    }

    /// Handles a fault at `va` in a mapping of `kind` spanning
    /// `[map_start, map_end)`: backs the page (copying it if it is written
    /// and shared copy-on-write) and the pages around it.
    pub fn fault(
        &self,
        frames: &Frames,
        va: u64,
        write: bool,
        kind: PageKind,
        (map_start, map_end): (u64, u64),
    ) -> Result<()> {
        let page = va & !(PAGE - 1);
        let window = FAULT_AROUND * PAGE;
        let lo = (page & !(window - 1)).max(map_start);
        let hi = ((page & !(window - 1)) + window).min(map_end);
        // The faulting page first: fault-around is a bonus that must not
        // take the last frame from it.
        // The fault itself dropped the page's old translation.
        self.populate(frames, page, page + PAGE, kind, write)?;
        let _ = self.populate(frames, lo, page, kind, false);
        let _ = self.populate(frames, page + PAGE, hi, kind, false);
        Ok(())
    }

    /// Makes the entries holding frames in `[start, end)` follow what
    /// `kind_of` says of each page (`None`: no mapping, the frame goes);
    /// returns the translations that lost rights or went away.
    pub fn reconcile(
        &self,
        frames: &Frames,
        start: u64,
        end: u64,
        kind_of: impl Fn(u64) -> Option<PageKind>,
    ) -> Stale {
        let mut stale = Stale::default();
        let mut gone = 0;
        self.for_each_page(start, end, |va, table, i| {
            let e = get(table, i);
            let frame = e & FRAME_MASK;
            let new = match kind_of(va) {
                None => {
                    frames.let_go(frame);
                    gone += 1;
                    0
                }
                Some(kind) => {
                    let writable = kind.shared || frames.holders(frame) <= 1;
                    (e & (ACCESSED | DIRTY)) | frame | Self::bits(kind, writable)
                }
            };
            if new != e {
                set(table, i, new);
                // Only a page the CPU used (accessed) can be in the TLB.
                let cached = e & (PRESENT | ACCESSED) == PRESENT | ACCESSED;
                let lost = cached && (new & PRESENT == 0 || (e & !new) & WRITABLE != 0);
                if lost {
                    stale.add(va);
                }
            }
        });
        self.resident.set(self.resident.get() - gone);
        stale
    }

    /// Drops the frames of `[start, end)` (MADV_DONTNEED of private
    /// memory: it reads back as zero).
    pub fn discard(&self, frames: &Frames, start: u64, end: u64) -> Stale {
        self.reconcile(frames, start, end, |_| None)
    }

    /// Moves the pages of `[from, from + len)` to `to` (mremap), leaving
    /// the old range without frames.
    pub fn move_pages(&self, from: u64, to: u64, len: u64) -> Result<Stale> {
        let mut moved = Vec::new();
        self.for_each_page(from, from + len, |va, table, i| {
            moved.push((va, get(table, i)));
            set(table, i, 0);
        });
        let mut stale = Stale::default();
        for &(va, e) in &moved {
            let (table, i) = self.entry(va - from + to, true)?.ok_or(Errno::EFAULT)?;
            set(table, i, e);
            if e & (PRESENT | ACCESSED) == PRESENT | ACCESSED {
                stale.add(va);
            }
        }
        Ok(stale)
    }

    /// A copy for a forked child: pages `shared(va)` says are `MAP_SHARED`
    /// map the same frames writable, private ones the same frames
    /// read-only on both sides until written. Returns the child and
    /// whether this space lost write rights (flush it if loaded).
    pub fn fork(&self, frames: &Frames, shared: impl Fn(u64) -> bool) -> Result<(Space, bool)> {
        let child = Space::new(frames)?;
        let mut pages = Vec::new();
        self.for_each_page(0, USER_TOP, |va, table, i| pages.push((va, table, i)));
        let mut flush = false;
        for (va, table, i) in pages {
            let mut e = get(table, i);
            if e & WRITABLE != 0 && !shared(va) {
                e &= !WRITABLE;
                set(table, i, e);
                flush = true;
            }
            let Some((ct, ci)) = child.entry(va, true).ok().flatten() else {
                child.release(frames);
                return Err(Errno::ENOMEM);
            };
            frames.hold(e & FRAME_MASK);
            set(ct, ci, e);
            child.resident.set(child.resident.get() + 1);
        }
        Ok((child, flush))
    }

    /// Gives every frame back. The space must not be loaded.
    pub fn release(self, frames: &Frames) {
        self.for_each_page(0, USER_TOP, |_, table, i| {
            frames.let_go(get(table, i) & FRAME_MASK);
        });
    }

    /// The guest-physical address behind `va` in this space (loaded or
    /// not), if a frame backs it.
    pub fn physical(&self, va: u64) -> Option<u64> {
        let e = self.pte(va);
        (e & (PRESENT | HELD) != 0).then_some((e & FRAME_MASK) + (va & (PAGE - 1)))
    }

    /// Copies `out.len()` bytes at `va` of this space (loaded or not)
    /// through the physical window; false if part of it has no frame.
    pub fn read(&self, va: u64, out: &mut [u8]) -> bool {
        let mut done = 0usize;
        while done < out.len() {
            let at = va + done as u64;
            let Some(pa) = self.physical(at) else {
                return false;
            };
            let n = ((PAGE - (at & (PAGE - 1))) as usize).min(out.len() - done);
            // SAFETY: `pa..pa + n` lies in one frame of this space, which
            // the physical window maps.
            unsafe { core::ptr::copy_nonoverlapping(phys(pa), out[done..].as_mut_ptr(), n) };
            done += n;
        }
        true
    }

    /// This space's share of its frames, in bytes: each frame divided
    /// among the entries holding it (PSS), and the frames it holds alone.
    pub fn shares(&self, frames: &Frames) -> (u64, u64) {
        let (mut proportional, mut private) = (0, 0);
        self.for_each_page(0, USER_TOP, |_, table, i| {
            let holders = u64::from(frames.mappers(get(table, i) & FRAME_MASK).max(1));
            proportional += PAGE / holders;
            if holders == 1 {
                private += PAGE;
            }
        });
        (proportional, private)
    }

    /// Pages with a frame (resident set).
    pub fn resident_pages(&self) -> u64 {
        self.resident.get()
    }

    /// Whether every page of `[start, end)` has a frame.
    pub fn backed(&self, start: u64, end: u64) -> bool {
        let mut va = start & !(PAGE - 1);
        while va < end {
            if self.physical(va).is_none() {
                return false;
            }
            va += PAGE;
        }
        true
    }

    /// Whether every page of `[start, end)` has a present entry allowing
    /// the access (`write`: writable in place).
    pub fn accessible(&self, start: u64, end: u64, write: bool) -> bool {
        let mut va = start & !(PAGE - 1);
        while va < end {
            let e = self.pte(va);
            if e & PRESENT == 0 || (write && e & WRITABLE == 0) {
                return false;
            }
            va += PAGE;
        }
        true
    }

    /// Makes this the space DMA addresses are translated through.
    pub fn activate(&self) {
        ACTIVE_PML4.store(self.cr3(), Ordering::Relaxed);
    }
}

/// Splits the buffer `[va, va + len)` of the loaded space into guest-physical
/// pieces for a device (physically adjacent pages together).
pub fn dma_pieces(va: u64, len: u32, out: &mut Vec<(u64, u32)>) {
    for (pa, n) in physical_pieces(va, u64::from(len)) {
        out.push((pa, n as u32));
    }
}

/// The guest-physical address behind `va` in the loaded space (`va`
/// itself without one), if it is backed.
pub fn physical(va: u64) -> Option<u64> {
    let pml4 = ACTIVE_PML4.load(Ordering::Relaxed);
    if pml4 == 0 {
        return Some(va);
    }
    translate(pml4, va).map(|(pa, _)| pa)
}

fn physical_pieces(va: u64, len: u64) -> Vec<(u64, u64)> {
    let pml4 = ACTIVE_PML4.load(Ordering::Relaxed);
    if pml4 == 0 || len == 0 {
        return alloc::vec![(va, len)];
    }
    let mut out: Vec<(u64, u64)> = Vec::new();
    let end = va.saturating_add(len);
    let mut at = va;
    while at < end {
        let Some((pa, size)) = translate(pml4, at) else {
            at = (at & !(PAGE - 1)) + PAGE;
            continue;
        };
        let n = (size - (at & (size - 1))).min(end - at);
        match out.last_mut() {
            Some(last) if last.0 + last.1 == pa => last.1 += n,
            _ => out.push((pa, n)),
        }
        at += n;
    }
    out
}

/// The guest-physical address of `va` and the size of the page holding
/// it, walking the tables at `pml4` (2 MiB pages are the kernel's).
fn translate(pml4: u64, va: u64) -> Option<(u64, u64)> {
    let mut table = pml4;
    for shift in [39u64, 30, 21] {
        let e = get(table, va >> shift);
        if e & PRESENT == 0 {
            return None;
        }
        if shift == 21 && e & HUGE != 0 {
            return Some(((e & LARGE_MASK) + (va & (SLOT - 1)), SLOT));
        }
        table = e & FRAME_MASK;
    }
    let e = get(table, va >> 12);
    (e & (PRESENT | HELD) != 0).then_some(((e & FRAME_MASK) + (va & (PAGE - 1)), PAGE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_come_fresh_then_recycled_and_count_holders() {
        let f = Frames::new(0x30_1000, 0x60_0000 + 0x1234);
        assert_eq!((f.user_lo, f.user_hi), (0x40_0000, 0x60_0000));
        assert_eq!(f.available(), 512);
        let a = f.alloc().expect("frame");
        let b = f.alloc().expect("frame");
        assert_eq!((a, b), (0x40_0000, 0x40_1000));
        assert_eq!(f.available(), 510);
        f.hold(a);
        assert_eq!(f.holders(a), 2);
        f.let_go(a);
        assert_eq!(f.available(), 510, "still held once");
        f.let_go(a);
        assert_eq!(f.available(), 511);
        assert_eq!(f.holders(a), 0);
        assert!(f.is_user(0x40_0000) && !f.is_user(0x60_0000) && !f.is_user(0x20_0000));
        assert!(f.is_user(HIGH_USER_START) && !f.is_user(USER_TOP) && !f.is_user(PHYS_BASE));
    }

    #[test]
    fn fills_have_fresh_stretches_backed_once_the_guest_has_grown() {
        let f = Frames::new(0x40_0000, 0x40_0000 + 8 * SLOT);
        let stretch = capsa_abi::control::POPULATE_SIZE;
        // (Frames given back are cleared through the physical window when
        // reused, which host tests do not have: none is given back here.)
        f.alloc_to_fill().expect("frame");
        assert_eq!(
            f.books.borrow().populated,
            f.user_lo,
            "a small guest asks nothing"
        );
        let mut taken: Vec<u64> = (0..POPULATE_AFTER).filter_map(|_| f.alloc()).collect();
        let fill = f.alloc_to_fill().expect("frame");
        let populated = f.books.borrow().populated;
        assert_eq!(populated, (fill & !(stretch - 1)) + stretch);
        taken.push(f.alloc_to_fill().expect("frame"));
        assert_eq!(
            f.books.borrow().populated,
            populated,
            "inside the stretch already asked"
        );
    }

    #[test]
    fn the_page_caches_hold_counts_as_a_holder_not_a_mapper() {
        let f = Frames::new(0x40_0000, 0x60_0000);
        let a = f.alloc().expect("frame");
        f.mark_cached(a);
        f.hold(a);
        assert_eq!((f.holders(a), f.mappers(a)), (2, 1));
        f.let_go(a);
        assert_eq!((f.holders(a), f.mappers(a)), (1, 0), "the cache's alone");
        f.hold(a);
        f.uncache(a);
        assert_eq!((f.holders(a), f.mappers(a)), (1, 1), "the mapping's alone");
        f.let_go(a);
        assert_eq!((f.holders(a), f.available()), (0, 512));
    }

    #[test]
    fn freed_frames_are_reported_in_batches_of_runs_and_come_back_zero() {
        assert_eq!(
            runs_of(&[0x1000, 0x2000, 0x3000, 0x8000, 0xa000, 0xb000]),
            vec![[0x1000, 0x3000], [0x8000, 0x1000], [0xa000, 0x2000]]
        );
        let f = Frames::new(0x40_0000, 0x40_0000 + 2 * REPORT_BATCH as u64 * PAGE);
        let taken: Vec<u64> = (0..REPORT_BATCH).filter_map(|_| f.alloc()).collect();
        for &frame in &taken[..REPORT_BATCH - 1] {
            f.let_go(frame);
        }
        assert_eq!(f.books.borrow().free.len(), REPORT_BATCH - 1, "not yet");
        f.let_go(taken[REPORT_BATCH - 1]);
        let books = f.books.borrow();
        assert!(books.free.is_empty());
        assert_eq!(books.reported.len(), REPORT_BATCH);
        drop(books);
        assert_eq!(f.available(), (f.user_hi - f.user_lo) / PAGE);
        // Reported frames are handed out again before fresh ones.
        let again = f.alloc().expect("frame");
        assert!(taken.contains(&again));
    }

    #[test]
    fn a_few_stale_pages_are_invalidated_alone_many_by_a_flush() {
        let mut stale = Stale::default();
        assert!(stale.is_empty());
        for i in 0..Stale::MAX_PAGES as u64 {
            stale.add(i * PAGE);
        }
        assert!(!stale.all() && stale.pages().len() == Stale::MAX_PAGES);
        stale.add(0x10_0000);
        assert!(stale.all() && stale.pages().is_empty() && !stale.is_empty());
    }

    #[test]
    fn dma_is_identity_without_a_loaded_space() {
        let mut out = Vec::new();
        dma_pieces(0x1234, 100, &mut out);
        assert_eq!(out, vec![(0x1234, 100)]);
    }

    #[test]
    fn page_kinds_follow_protections() {
        use crate::mm::{PROT_EXEC, PROT_NONE, PROT_READ, PROT_WRITE};
        assert_eq!(Access::of_prot(PROT_NONE), Access::None);
        assert_eq!(Access::of_prot(PROT_EXEC), Access::Read);
        assert_eq!(Access::of_prot(PROT_READ | PROT_WRITE), Access::ReadWrite);
        let rw = PageKind {
            access: Access::ReadWrite,
            shared: false,
        };
        assert_eq!(Space::bits(rw, true) & WRITABLE, WRITABLE);
        assert_eq!(Space::bits(rw, false) & WRITABLE, 0, "copy-on-write");
        let none = PageKind {
            access: Access::None,
            shared: false,
        };
        assert_eq!(
            Space::bits(none, true),
            HELD,
            "keeps the frame, not present"
        );
    }
}
