//! The exec device (`capsa_abi::exec`): processes the host starts in this
//! guest, their stdio streams, and what the host hears about them. Each
//! call is one MMIO write naming a `Call` the VMM fills in.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use capsa_abi::exec::{self as abi, op, Call};

use crate::errno::{Errno, Result};

fn call(op: u32, session: u32, stream: u32, addr: u64, len: u64) -> i64 {
    if cfg!(test) {
        return 0;
    }
    let mut c = Call {
        op,
        session,
        stream,
        reserved: 0,
        addr,
        len,
        result: 0,
    };
    let at = &mut c as *mut Call;
    // The VMM reads the call during the write's exit: its fields must be in
    // memory by then, and the result read only after.
    core::sync::atomic::compiler_fence(Ordering::SeqCst);
    // SAFETY: the exec device's register is in the MMIO window, identity
    // mapped; `c` lives on the kernel stack (identity mapped, so its
    // address is its guest-physical one) until the VMM has filled it in
    // during this write's exit.
    unsafe {
        core::ptr::write_volatile((abi::EXEC_MMIO_BASE + abi::CALL) as *mut u64, at as u64);
        core::sync::atomic::compiler_fence(Ordering::SeqCst);
        core::ptr::read_volatile(core::ptr::addr_of!((*at).result))
    }
}

fn to_result(ret: i64) -> Result<usize> {
    if ret < 0 {
        Err(Errno(i32::try_from(-ret).unwrap_or(5)))
    } else {
        Ok(ret as usize)
    }
}

/// Takes the bits the VMM set in the host-events word.
pub fn take_events() -> u64 {
    if cfg!(test) {
        return 0;
    }
    // SAFETY: the word is 8-byte aligned in the boot data page, mapped in
    // every address space, and only accessed atomically.
    let word = unsafe { &*(abi::HOST_EVENTS_ADDR as *const AtomicU64) };
    if word.load(Ordering::Relaxed) == 0 {
        return 0;
    }
    word.swap(0, Ordering::AcqRel)
}

/// The next queued event: kind, session and payload.
pub fn next_event(buf: &mut Vec<u8>) -> Option<(u32, u32, &[u8])> {
    buf.resize(abi::MAX_EVENT_LEN, 0);
    loop {
        let ret = call(
            op::NEXT_EVENT,
            0,
            0,
            buf.as_mut_ptr() as u64,
            buf.len() as u64,
        );
        if ret == abi::EMSGSIZE {
            continue;
        }
        let len = usize::try_from(ret).ok()?.min(buf.len());
        if len < abi::EVENT_HEADER_LEN {
            return None;
        }
        let word = |at: usize| u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
        return Some((word(0), word(4), &buf[abi::EVENT_HEADER_LEN..len]));
    }
}

/// The most one stream call moves (as the VMM's bound): the bytes go
/// through a kernel buffer, since the VMM sees guest-physical memory and
/// the caller's buffer is user memory.
const MAX_IO: usize = 64 << 10;

pub fn read(session: u32, stream: u32, buf: &mut [u8]) -> Result<usize> {
    let mut bounce = alloc::vec![0u8; buf.len().min(MAX_IO)];
    let n = to_result(call(
        op::READ,
        session,
        stream,
        bounce.as_mut_ptr() as u64,
        bounce.len() as u64,
    ))?;
    let n = n.min(bounce.len());
    buf[..n].copy_from_slice(&bounce[..n]);
    Ok(n)
}

pub fn write(session: u32, stream: u32, buf: &[u8]) -> Result<usize> {
    let bounce = buf[..buf.len().min(MAX_IO)].to_vec();
    to_result(call(
        op::WRITE,
        session,
        stream,
        bounce.as_ptr() as u64,
        bounce.len() as u64,
    ))
}

/// A terminal request (`capsa_abi::exec::TERMINAL_REQUESTS`) on the
/// stream, its argument in `arg` (kernel memory).
pub fn ioctl(session: u32, stream: u32, request: u32, arg: &mut [u8]) -> Result<()> {
    to_result(call(
        op::IOCTL,
        session,
        stream,
        arg.as_mut_ptr() as u64,
        u64::from(request),
    ))
    .map(|_| ())
}

/// Whether the stream has input now (else the VMM says when it has).
pub fn readable(session: u32, stream: u32) -> bool {
    call(op::POLL, session, stream, 0, 0) != 0
}

pub fn close(session: u32, stream: u32) {
    call(op::CLOSE, session, stream, 0, 0);
}

pub fn started(session: u32, pid: i32) {
    call(op::STARTED, session, 0, 0, pid as u64);
}

pub fn failed(session: u32, why: &[u8]) {
    call(
        op::FAILED,
        session,
        0,
        why.as_ptr() as u64,
        why.len() as u64,
    );
}

pub fn exited(session: u32, wstatus: i32) {
    call(op::EXITED, session, 0, 0, wstatus as u32 as u64);
}
