//! Processes the host starts in a running guest (`capsa exec`).
//!
//! The VMM queues *events* for the guest (a process to start, a signal for
//! one, its client gone) and sets [`EVENTS_PENDING`] in the word at
//! [`HOST_EVENTS_ADDR`], which the guest checks where it checks host
//! signals (after each system call, at each tick, while idle). The guest
//! then carries out [`Call`]s on the exec device, one MMIO write each:
//! fetch the next event, read or write a started process's stdio stream,
//! report that it started, failed or exited.
//!
//! Each started process is a *session*, numbered by the VMM; its streams
//! are 0 (stdin), 1 (stdout) and 2 (stderr), host descriptors the client
//! handed the VMM.

/// A little-endian u64 beside [`crate::HOST_SIGNALS_ADDR`] where the VMM
/// sets bits for the guest, which swaps it to zero (both sides atomically).
pub const HOST_EVENTS_ADDR: u64 = crate::HOST_SIGNALS_ADDR + 8;
/// Bit in the word: events wait for [`op::NEXT_EVENT`].
pub const EVENTS_PENDING: u64 = 1;
/// Bit in the word: a stream a read found empty has input (or end of file).
pub const STREAM_READY: u64 = 2;

/// The exec device's registers, after the virtio devices' windows.
pub const EXEC_MMIO_BASE: u64 = crate::MMIO_WINDOW_START + 0x2_0000;
pub const EXEC_MMIO_SIZE: u64 = 0x1000;
/// Write: the guest-physical address of a [`Call`], which the VMM carries
/// out before the write returns, storing its result in [`Call::result`].
pub const CALL: u64 = 0;

/// One request to the exec device.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Call {
    /// An [`op`] value.
    pub op: u32,
    pub session: u32,
    /// 0, 1 or 2 for the stream operations.
    pub stream: u32,
    pub reserved: u32,
    /// Guest-physical address of the operation's buffer.
    pub addr: u64,
    /// Its length, or the operation's number argument.
    pub len: u64,
    /// Bytes moved, an event's length, or a negated errno.
    pub result: i64,
}

/// Byte offset of [`Call::result`] in the call.
pub const CALL_RESULT_OFFSET: u64 = 32;
/// Size of a [`Call`].
pub const CALL_SIZE: usize = 40;

/// The operations of a [`Call`].
pub mod op {
    /// Copies the next event (header then payload) to `addr`, at most
    /// `len` bytes; the result is its length, 0 when none is queued.
    /// An event longer than `len` is dropped and answered with `-EMSGSIZE`.
    pub const NEXT_EVENT: u32 = 1;
    /// Reads at most `len` bytes of `stream` into `addr`: the count, 0 at
    /// end of file, `-EAGAIN` when none is there yet (the VMM then sets
    /// [`super::STREAM_READY`] once some is).
    pub const READ: u32 = 2;
    /// Writes the `len` bytes at `addr` to `stream`.
    pub const WRITE: u32 = 3;
    /// The guest no longer uses `stream`.
    pub const CLOSE: u32 = 4;
    /// The session's process started as guest pid `len`.
    pub const STARTED: u32 = 5;
    /// The session's process could not start: `len` bytes of UTF-8 at
    /// `addr` say why.
    pub const FAILED: u32 = 6;
    /// The session's process ended with wait status `len` (as `wait(2)`
    /// encodes it).
    pub const EXITED: u32 = 7;
    /// Whether `stream` has input now: 1 or 0 (then as for `READ`'s
    /// `-EAGAIN`, the VMM sets [`super::STREAM_READY`] later).
    pub const POLL: u32 = 8;
    /// A terminal request on `stream` (a host pty's slave when the client
    /// asked for a terminal): `len` is one of [`super::TERMINAL_REQUESTS`],
    /// `addr` its argument (a kernel `struct termios` of 36 bytes or a
    /// `struct winsize` of 8), read or filled as Linux's request does.
    /// `-ENOTTY` for any other request or a stream that is no terminal.
    pub const IOCTL: u32 = 9;
}

/// The terminal requests [`op::IOCTL`] carries out, with the size of their
/// argument: TCGETS, TCSETS, TCSETSW, TCSETSF, TIOCGWINSZ, TIOCSWINSZ.
pub const TERMINAL_REQUESTS: [(u32, usize); 6] = [
    (0x5401, 36),
    (0x5402, 36),
    (0x5403, 36),
    (0x5404, 36),
    (0x5413, 8),
    (0x5414, 8),
];

/// Whether a terminal request fills its argument (a get) rather than
/// reading it (a set).
pub fn terminal_request_fills(request: u32) -> bool {
    matches!(request, 0x5401 | 0x5413)
}

/// Every event starts with its kind and session, two little-endian u32s.
pub const EVENT_HEADER_LEN: usize = 8;
/// The longest event (a process spec).
pub const MAX_EVENT_LEN: usize = 64 << 10;

/// The kinds of events.
pub mod event {
    /// Start a process: the payload is its spec (see [`crate::process`]).
    pub const START: u32 = 1;
    /// Send the session's process the signal in the payload (a u32).
    pub const SIGNAL: u32 = 2;
    /// The session's client went away.
    pub const HANGUP: u32 = 3;
}

/// Negated errno results the VMM gives.
pub const EAGAIN: i64 = -11;
pub const EBADF: i64 = -9;
pub const EFAULT: i64 = -14;
pub const EINVAL: i64 = -22;
pub const EMSGSIZE: i64 = -90;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_layout_matches_its_constants() {
        assert_eq!(core::mem::size_of::<Call>(), CALL_SIZE);
        assert_eq!(
            core::mem::offset_of!(Call, result) as u64,
            CALL_RESULT_OFFSET
        );
        let end_of_virtio =
            crate::VIRTIO_MMIO_BASE + crate::VIRTIO_MMIO_SIZE * crate::MAX_DEVICES as u64;
        assert!(EXEC_MMIO_BASE >= end_of_virtio);
    }
}
