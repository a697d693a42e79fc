//! The page cache: one set of frames per file, keyed by its file system and
//! FUSE node, that read(2), write(2) and every mapping of the file use, as
//! Linux's page cache is.
//!
//! - read(2) copies cached pages without asking the VMM; a miss reads a
//!   run of pages (with readahead) in one request and keeps them.
//! - Mappings map the cached frames themselves: `MAP_SHARED` ones writable,
//!   so every process mapping the file, fork or not, sees the others'
//!   stores; `MAP_PRIVATE` ones read-only until written (copy-on-write), so
//!   the text of ld.so, libc and programs is one set of frames for all.
//! - write(2) goes through to the file at once (see `FuseFile::pwrite`) and
//!   updates the cached pages it covers, so mappings see it.
//! - A cached page whose only holder is the cache is clean (written
//!   through, or written back before its last mapping went) and is
//!   reclaimed when frames run short, before the OOM killer acts.
//! - Coherence with the host follows virtio-fs's `cache=auto`: the cache of
//!   a file is dropped when an open finds its size or mtime changed by
//!   someone else (close-to-open).

use alloc::collections::BTreeMap;
use alloc::rc::Rc;
use alloc::vec;
use alloc::vec::Vec;

use crate::errno::{Errno, Result};
use crate::mm::space::{phys, Frames, FAULT_AROUND, PAGE};

/// A cached file: (file system index, FUSE node id).
pub type FileKey = (usize, u64);

/// Pages one miss reads at least (Linux's default readahead, 128 KiB).
const READAHEAD: u64 = 32;
/// Pages one request reads at most (the FUSE transfer size, 512 KiB).
const MAX_RUN: u64 = 128;

/// What an open found the file to be, for close-to-open revalidation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Version {
    pub size: u64,
    pub mtime: (u64, u32),
}

#[derive(Default)]
struct CachedFile {
    /// Page index -> frame (one holder is the cache's).
    pages: BTreeMap<u64, u64>,
    /// The file's size, once known (a read reached the end, an open or a
    /// write told it): reads stop there without asking.
    size: Option<u64>,
    /// What the last open saw.
    version: Option<Version>,
    /// The guest changed the file since (its mtime moved by our hand).
    ours: bool,
    /// When last used, for reclaim (a counter, not a time).
    used: u64,
}

/// Reads `buf.len()` bytes at an offset of the file into `buf`; returns
/// how many there were (fewer only at the end of the file).
pub type Fetch<'a> = dyn FnMut(u64, &mut [u8]) -> Result<usize> + 'a;

pub struct PageCache {
    frames: Rc<Frames>,
    files: BTreeMap<FileKey, CachedFile>,
    clock: u64,
    pages: u64,
}

impl PageCache {
    pub fn new(frames: Rc<Frames>) -> Self {
        Self {
            frames,
            files: BTreeMap::new(),
            clock: 0,
            pages: 0,
        }
    }

    /// Pages the cache holds.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    fn file(&mut self, key: FileKey) -> &mut CachedFile {
        self.clock += 1;
        let clock = self.clock;
        let f = self.files.entry(key).or_default();
        f.used = clock;
        f
    }

    /// A fresh frame for the cache, reclaiming clean pages of other files
    /// (or of this one outside `keep`) when none is free.
    fn alloc(&mut self, key: FileKey, keep: core::ops::Range<u64>) -> Option<u64> {
        if let Some(f) = self.frames.alloc_to_fill() {
            return Some(f);
        }
        self.reclaim_except(FAULT_AROUND, Some((key, keep)));
        self.frames.alloc_to_fill()
    }

    /// Reads `[offset, offset + out.len())` of the file through the cache;
    /// returns the bytes read (fewer at the end of the file). Pages that
    /// cannot be cached for want of frames are read all the same.
    pub fn read(
        &mut self,
        key: FileKey,
        offset: u64,
        out: &mut [u8],
        fetch: &mut Fetch<'_>,
    ) -> Result<usize> {
        let mut want = out.len() as u64;
        if let Some(size) = self.file(key).size {
            want = want.min(size.saturating_sub(offset));
        }
        let mut done = 0u64;
        while done < want {
            let at = offset + done;
            let index = at / PAGE;
            let in_page = at % PAGE;
            let n = (PAGE - in_page).min(want - done);
            if let Some(&frame) = self.file(key).pages.get(&index) {
                // SAFETY: a cached frame, through the physical window;
                // `in_page + n` is at most a page. `copy` allows the
                // destination to be a mapping of the same frame.
                unsafe {
                    core::ptr::copy(
                        phys(frame).add(in_page as usize),
                        out[done as usize..].as_mut_ptr(),
                        n as usize,
                    )
                };
                done += n;
                continue;
            }
            // A miss: the missing pages from here, with readahead.
            let last_wanted = (offset + want - 1) / PAGE;
            let run = self.missing_run(key, index, (last_wanted + 1 - index).max(READAHEAD));
            let (data, got) = self.fill(key, index, run, index..index + run, fetch)?;
            let avail = (got as u64).saturating_sub(in_page);
            let n = avail.min(want - done);
            out[done as usize..(done + n) as usize]
                .copy_from_slice(&data[in_page as usize..(in_page + n) as usize]);
            done += n;
            if (got as u64) < run * PAGE {
                break;
            }
        }
        Ok(done as usize)
    }

    /// Reads `run` pages from page `index` in one request and keeps them
    /// (see `keep`); returns the bytes read and how many there were.
    fn fill(
        &mut self,
        key: FileKey,
        index: u64,
        run: u64,
        keep: core::ops::Range<u64>,
        fetch: &mut Fetch<'_>,
    ) -> Result<(Vec<u8>, usize)> {
        let mut data = vec![0u8; (run * PAGE) as usize];
        let got = fetch(index * PAGE, &mut data)?.min(data.len());
        self.keep(key, index, &data[..got], got < data.len(), keep);
        Ok((data, got))
    }

    /// How many pages from `index` (at most `limit`, `MAX_RUN`, and what
    /// the known size allows) are not cached.
    fn missing_run(&mut self, key: FileKey, index: u64, limit: u64) -> u64 {
        let f = self.file(key);
        let mut end = index + limit.min(MAX_RUN);
        if let Some(size) = f.size {
            end = end.min(size.div_ceil(PAGE)).max(index + 1);
        }
        let next_cached = f.pages.range(index..end).next().map(|(&i, _)| i);
        next_cached.unwrap_or(end) - index
    }

    /// Keeps the pages of `data` read at page `index` (the last one
    /// possibly partial, zero beyond); `eof`: the file ends there. Making
    /// room reclaims no page of the file in `keep` (pages the caller is
    /// about to use).
    fn keep(
        &mut self,
        key: FileKey,
        index: u64,
        data: &[u8],
        eof: bool,
        keep: core::ops::Range<u64>,
    ) {
        if eof {
            self.file(key).size = Some(index * PAGE + data.len() as u64);
        }
        for (i, chunk) in data.chunks(PAGE as usize).enumerate() {
            let page = index + i as u64;
            if self.file(key).pages.contains_key(&page) {
                continue;
            }
            let Some(frame) = self.alloc(key, keep.clone()) else {
                return;
            };
            self.frames.mark_cached(frame);
            // SAFETY: a fresh frame only the cache holds, through the
            // physical window; the chunk is at most a page.
            unsafe {
                core::ptr::copy_nonoverlapping(chunk.as_ptr(), phys(frame), chunk.len());
                if chunk.len() < PAGE as usize {
                    core::ptr::write_bytes(
                        phys(frame).add(chunk.len()),
                        0,
                        PAGE as usize - chunk.len(),
                    );
                }
            }
            self.file(key).pages.insert(page, frame);
            self.pages += 1;
        }
    }

    /// The frames of pages `[first, first + count)` for a mapping, reading
    /// the missing ones in one request per run: `None` for pages wholly
    /// past the end of the file (SIGBUS on access). ENOMEM when no frame
    /// can be had. The caller holds the frames it maps.
    pub fn map_pages(
        &mut self,
        key: FileKey,
        first: u64,
        count: u64,
        fetch: &mut Fetch<'_>,
    ) -> Result<Vec<Option<u64>>> {
        let mut out = Vec::with_capacity(count as usize);
        let mut index = first;
        while index < first + count {
            let f = self.file(key);
            if f.size.is_some_and(|size| index * PAGE >= size) {
                out.push(None);
                index += 1;
                continue;
            }
            if let Some(&frame) = f.pages.get(&index) {
                out.push(Some(frame));
                index += 1;
                continue;
            }
            let run = self.missing_run(key, index, first + count - index);
            let (_, got) = self.fill(key, index, run, first..first + count, fetch)?;
            let f = self.file(key);
            let read_pages = (got as u64).div_ceil(PAGE);
            for page in index..index + run {
                if page >= index + read_pages {
                    out.push(None);
                    continue;
                }
                out.push(Some(*f.pages.get(&page).ok_or(Errno::ENOMEM)?));
            }
            index += run;
        }
        Ok(out)
    }

    /// The guest wrote `data` at `offset` of the file (through to the
    /// host): the cached pages it covers take it, so mappings see it.
    pub fn wrote(&mut self, key: FileKey, offset: u64, data: &[u8]) {
        let Some(f) = self.files.get_mut(&key) else {
            return;
        };
        f.ours = true;
        let end = offset + data.len() as u64;
        if let Some(size) = f.size.as_mut() {
            *size = (*size).max(end);
        }
        if data.is_empty() {
            return;
        }
        for (&index, &frame) in f.pages.range(offset / PAGE..end.div_ceil(PAGE)) {
            let page_start = index * PAGE;
            let from = offset.max(page_start);
            let to = end.min(page_start + PAGE);
            // SAFETY: a cached frame through the physical window; the
            // range lies within it and within `data`.
            unsafe {
                core::ptr::copy(
                    data[(from - offset) as usize..].as_ptr(),
                    phys(frame).add((from - page_start) as usize),
                    (to - from) as usize,
                )
            };
        }
    }

    /// The guest set the file's size: pages past it go, the tail of the
    /// last one reads as zero.
    pub fn truncated(&mut self, key: FileKey, size: u64) {
        let Some(f) = self.files.get_mut(&key) else {
            return;
        };
        f.ours = true;
        f.size = Some(size);
        for frame in f.pages.split_off(&size.div_ceil(PAGE)).into_values() {
            self.frames.uncache(frame);
            self.pages -= 1;
        }
        if !size.is_multiple_of(PAGE) {
            if let Some(&frame) = f.pages.get(&(size / PAGE)) {
                let tail = (size % PAGE) as usize;
                // SAFETY: a cached frame through the physical window.
                unsafe { core::ptr::write_bytes(phys(frame).add(tail), 0, PAGE as usize - tail) };
            }
        }
    }

    /// Forgets what is cached of the file (it changed in a way the cache
    /// does not follow). Mappings keep the frames they hold.
    pub fn invalidate(&mut self, key: FileKey) {
        if let Some(f) = self.files.remove(&key) {
            for frame in f.pages.into_values() {
                self.frames.uncache(frame);
                self.pages -= 1;
            }
        }
    }

    /// An open found the file at `now`: if someone else changed it since
    /// the last open (size or mtime moved, and not by the guest), its
    /// cached pages go.
    pub fn revalidate(&mut self, key: FileKey, now: Version) {
        let changed = self
            .files
            .get(&key)
            .is_some_and(|f| f.version.is_some_and(|v| v != now) && !f.ours);
        if changed {
            self.invalidate(key);
        }
        let f = self.file(key);
        f.version = Some(now);
        f.size = Some(now.size);
        f.ours = false;
    }

    /// Frees up to `want` frames held only by the cache (clean pages no
    /// mapping uses), least recently used files first; returns how many.
    pub fn reclaim(&mut self, want: u64) -> u64 {
        self.reclaim_except(want, None)
    }

    fn reclaim_except(&mut self, want: u64, keep: Option<(FileKey, core::ops::Range<u64>)>) -> u64 {
        let mut order: Vec<(u64, FileKey)> = self.files.iter().map(|(&k, f)| (f.used, k)).collect();
        order.sort_unstable();
        let mut freed = 0;
        for (_, key) in order {
            let Some(f) = self.files.get_mut(&key) else {
                continue;
            };
            let spare: Vec<u64> = f
                .pages
                .iter()
                .filter(|&(i, &frame)| {
                    self.frames.holders(frame) == 1
                        && !keep
                            .as_ref()
                            .is_some_and(|(k, r)| *k == key && r.contains(i))
                })
                .map(|(&i, _)| i)
                .take((want - freed) as usize)
                .collect();
            for index in spare {
                if let Some(frame) = f.pages.remove(&index) {
                    self.frames.uncache(frame);
                    self.pages -= 1;
                    freed += 1;
                }
            }
            if f.pages.is_empty() && f.version.is_none() {
                self.files.remove(&key);
            }
            if freed >= want {
                break;
            }
        }
        freed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: FileKey = (0, 7);

    /// A cache over one 2 MiB slot of frames. Frames in host tests are
    /// never touched through the physical window: these tests keep to
    /// paths that do not copy data.
    fn cache() -> PageCache {
        PageCache::new(Rc::new(Frames::new(0x40_0000, 0x60_0000)))
    }

    #[test]
    fn missing_runs_stop_at_cached_pages_and_the_known_end() {
        let mut c = cache();
        c.file(KEY).pages.insert(10, 0x40_0000);
        assert_eq!(c.missing_run(KEY, 2, 4), 4);
        assert_eq!(c.missing_run(KEY, 2, READAHEAD), 8, "up to the cached page");
        assert_eq!(c.missing_run(KEY, 11, 500), MAX_RUN);
        c.file(KEY).size = Some(13 * PAGE + 1);
        assert_eq!(c.missing_run(KEY, 11, 500), 3, "up to the end's page");
        assert_eq!(c.missing_run(KEY, 20, 5), 1, "at least the page asked");
    }

    #[test]
    fn revalidation_keeps_the_cache_unless_someone_else_changed_the_file() {
        let mut c = cache();
        let v1 = Version {
            size: 100,
            mtime: (1, 0),
        };
        let v2 = Version {
            size: 100,
            mtime: (2, 0),
        };
        let f = c.frames.alloc().expect("frame");
        c.file(KEY).pages.insert(0, f);
        c.pages += 1;
        c.revalidate(KEY, v1);
        assert_eq!(c.pages(), 1, "first open keeps what was read");
        c.wrote(KEY, 200, &[]);
        c.revalidate(KEY, v2);
        assert_eq!(c.pages(), 1, "the guest's own write moved the mtime");
        c.revalidate(KEY, v1);
        assert_eq!(c.pages(), 0, "changed behind the guest's back");
        assert_eq!(c.frames.holders(f), 0);
        assert_eq!(c.file(KEY).size, Some(100));
    }

    #[test]
    fn reclaim_takes_only_pages_no_mapping_holds_oldest_file_first() {
        let mut c = cache();
        let old = (0, 1);
        let mapped = c.frames.alloc().expect("frame");
        c.frames.hold(mapped); // a mapping holds it too
        let a = c.frames.alloc().expect("frame");
        c.file(old).pages.insert(0, mapped);
        c.file(old).pages.insert(1, a);
        let b = c.frames.alloc().expect("frame");
        c.file(KEY).pages.insert(0, b);
        c.pages = 3;
        assert_eq!(c.reclaim(1), 1);
        assert_eq!(c.frames.holders(a), 0, "the older file's clean page");
        assert_eq!(c.frames.holders(b), 1);
        assert_eq!(c.reclaim(10), 1, "the mapped page stays");
        assert_eq!(c.frames.holders(mapped), 2);
        assert_eq!(c.pages(), 1);
    }

    #[test]
    fn truncation_drops_pages_past_the_end() {
        let mut c = cache();
        for i in 0..4 {
            let f = c.frames.alloc().expect("frame");
            c.file(KEY).pages.insert(i, f);
            c.pages += 1;
        }
        c.truncated(KEY, 2 * PAGE);
        assert_eq!(c.pages(), 2);
        assert_eq!(c.file(KEY).size, Some(2 * PAGE));
        c.invalidate(KEY);
        assert_eq!(c.pages(), 0);
        assert_eq!(c.frames.available(), 512);
    }
}
