//! Reaching the application's memory from the kernel, as Linux's
//! `copy_from_user`/`copy_to_user`: every range is checked against the
//! current process's mappings and their protections first, so a bad
//! pointer is EFAULT, never a kernel fault.

use alloc::vec::Vec;

use crate::errno::{Errno, Result};
use crate::kernel::Kernel;

/// Lowest address the application may hand the kernel: below it are the
/// VMM's boot data and the kernel image.
const USER_MIN: u64 = capsa_abi::KERNEL_BASE;

impl Kernel {
    /// Checks that `[ptr, ptr + len)` is RAM the application may read.
    pub fn user_range(&mut self, ptr: u64, len: usize) -> Result<()> {
        self.check_user(ptr, len, false)
    }

    /// Checks that `[ptr, ptr + len)` is RAM the application may write.
    pub fn user_range_mut(&mut self, ptr: u64, len: usize) -> Result<()> {
        self.check_user(ptr, len, true)
    }

    /// Checks that `[ptr, ptr + len)` is memory the application may name
    /// and its pages allow what the kernel is about to do for it, and
    /// gives every page a frame (copying shared copy-on-write pages about
    /// to be written), so the kernel's access cannot fault.
    fn check_user(&mut self, ptr: u64, len: usize, write: bool) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let end = ptr.checked_add(len as u64).ok_or(Errno::EFAULT)?;
        if ptr < USER_MIN || !self.frames.is_user(ptr) || !self.frames.is_user(end - 1) {
            return Err(Errno::EFAULT);
        }
        if !self.proc().mm.vmas.allows(ptr, end, write) {
            return Err(Errno::EFAULT);
        }
        self.populate(ptr, end, write)
    }

    /// The application's buffer `[ptr, ptr + len)`, for the kernel to read.
    pub fn user_buf(&mut self, ptr: u64, len: usize) -> Result<&'static mut [u8]> {
        self.user_slice(ptr, len, false)
    }

    /// The application's buffer `[ptr, ptr + len)`, for the kernel to
    /// write (and read): `EFAULT` unless its pages are writable.
    pub fn user_buf_mut(&mut self, ptr: u64, len: usize) -> Result<&'static mut [u8]> {
        self.user_slice(ptr, len, true)
    }

    fn user_slice(&mut self, ptr: u64, len: usize, write: bool) -> Result<&'static mut [u8]> {
        if len == 0 {
            return Ok(&mut []);
        }
        self.check_user(ptr, len, write)?;
        // SAFETY: the range is mapped RAM whose pages allow the access
        // (checked above); the application and kernel share the address
        // space and nothing else runs while the kernel handles this call.
        Ok(unsafe { core::slice::from_raw_parts_mut(ptr as *mut u8, len) })
    }

    /// A NUL-terminated string from the application (at most `PATH_MAX`).
    pub fn user_cstr(&mut self, ptr: u64) -> Result<Vec<u8>> {
        if ptr == 0 {
            return Err(Errno::EFAULT);
        }
        let max = crate::fs::vfs::PATH_MAX as u64;
        // Stop at the last readable page rather than fault on a string
        // that ends just before an unmapped or forbidden one.
        let mut avail = max;
        while avail > 0 && self.user_range(ptr, avail as usize).is_err() {
            let last_page = crate::mm::page_down(ptr.saturating_add(avail - 1));
            avail = last_page.saturating_sub(ptr);
        }
        if avail == 0 {
            return Err(Errno::EFAULT);
        }
        let buf = self.user_buf(ptr, avail as usize)?;
        let len = buf
            .iter()
            .position(|&b| b == 0)
            .ok_or(Errno::ENAMETOOLONG)?;
        Ok(buf[..len].to_vec())
    }

    pub fn put_user(&mut self, ptr: u64, bytes: &[u8]) -> Result<()> {
        self.user_buf_mut(ptr, bytes.len())?.copy_from_slice(bytes);
        Ok(())
    }

    pub fn get_u64(&mut self, ptr: u64) -> Result<u64> {
        let b = self.user_buf(ptr, 8)?;
        let mut v = [0u8; 8];
        v.copy_from_slice(b);
        Ok(u64::from_le_bytes(v))
    }
}
