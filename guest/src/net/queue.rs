//! A socket's receive queue: what peers sent, as the messages they sent
//! (each send is one segment, with the descriptors and credentials that
//! came with it and the sender's address for datagrams).
//!
//! A stream read runs across segments, as Linux's unix_stream_read_generic
//! does, but stops after a segment that carried descriptors, so the
//! descriptors arrive with the bytes they were sent with. A datagram or
//! seqpacket read takes one segment and drops what did not fit.

use alloc::collections::VecDeque;
use alloc::rc::Rc;
use alloc::vec::Vec;

use crate::errno::{Errno, Result};
use crate::fs::fd::File;
use crate::fs::pipe::bump;
use crate::net::addr::SockAddr;

/// Who sent a segment (`struct ucred`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ucred {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

impl Ucred {
    /// `struct ucred` as SO_PEERCRED and SCM_CREDENTIALS hand it out.
    pub fn to_bytes(self) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[..4].copy_from_slice(&self.pid.to_le_bytes());
        b[4..8].copy_from_slice(&self.uid.to_le_bytes());
        b[8..].copy_from_slice(&self.gid.to_le_bytes());
        b
    }
}

pub struct Segment {
    pub data: Vec<u8>,
    /// How much of `data` a stream reader already took.
    pub taken: usize,
    pub rights: Vec<Rc<dyn File>>,
    pub cred: Ucred,
    /// The sender's address, for datagrams.
    pub from: Option<SockAddr>,
    /// The IPv6 hop limit and traffic class it was sent with (what
    /// IPV6_RECVHOPLIMIT and IPV6_RECVTCLASS report; loopback keeps them).
    pub hop_limit: u8,
    pub tclass: u8,
}

impl Segment {
    pub fn new(data: Vec<u8>, cred: Ucred) -> Segment {
        Segment {
            data,
            taken: 0,
            rights: Vec::new(),
            cred,
            from: None,
            hop_limit: 64,
            tclass: 0,
        }
    }
}

/// What one receive took.
#[derive(Default)]
pub struct Received {
    pub len: usize,
    /// The message's whole length (datagrams: more than `len` when cut).
    pub full_len: usize,
    pub rights: Vec<Rc<dyn File>>,
    pub cred: Option<Ucred>,
    pub from: Option<SockAddr>,
    pub hop_limit: u8,
    pub tclass: u8,
}

pub struct Queue {
    segments: VecDeque<Segment>,
    bytes: usize,
    pub capacity: usize,
    /// The sending side is gone or shut down: readers see end of file once
    /// the queue is empty.
    pub write_closed: bool,
    /// The receiving side is gone or shut down: senders get EPIPE.
    pub read_closed: bool,
    /// The connection was reset (closed with data unread): the next read
    /// reports ECONNRESET.
    pub reset: bool,
    /// Moves at every change (see `File::poll_generation`).
    pub generation: u64,
    /// A queue of a connection through the network interface: its
    /// changes give the pump work (`wire::mark_dirty`).
    pub wire: bool,
}

impl Queue {
    pub fn new(capacity: usize) -> Self {
        Self {
            segments: VecDeque::new(),
            bytes: 0,
            capacity,
            write_closed: false,
            read_closed: false,
            reset: false,
            generation: 0,
            wire: false,
        }
    }

    pub fn len(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Room for `len` more bytes: a stream takes what fits (a small send
    /// whole or not at all), a datagram all or nothing; an empty queue
    /// takes any datagram, so one larger than the capacity still passes.
    pub fn room(&self, len: usize, datagram: bool) -> usize {
        let space = self.capacity.saturating_sub(self.bytes);
        if space >= len || (datagram && self.bytes == 0) {
            return len;
        }
        if datagram || len <= crate::fs::pipe::PIPE_BUF {
            0
        } else {
            space
        }
    }

    pub fn push(&mut self, segment: Segment) {
        self.bytes += segment.data.len();
        self.segments.push_back(segment);
        self.changed();
    }

    /// The next segment's sender address (for recvfrom of a datagram
    /// that is then peeked).
    pub fn front(&self) -> Option<&Segment> {
        self.segments.front()
    }

    /// Takes (or with `peek` copies) up to `out.len()` bytes.
    pub fn take(&mut self, out: &mut [u8], records: bool, peek: bool) -> Received {
        let mut got = Received::default();
        if records {
            let Some(seg) = self.segments.front() else {
                return got;
            };
            let n = out.len().min(seg.data.len());
            out[..n].copy_from_slice(&seg.data[..n]);
            got.len = n;
            got.full_len = seg.data.len();
            got.cred = Some(seg.cred);
            got.from = seg.from.clone();
            got.hop_limit = seg.hop_limit;
            got.tclass = seg.tclass;
            if peek {
                got.rights = seg.rights.clone();
                return got;
            }
            if let Some(seg) = self.segments.pop_front() {
                self.bytes -= seg.data.len();
                got.rights = seg.rights;
            }
            self.changed();
            return got;
        }
        let mut index = 0;
        while got.len < out.len() {
            let Some(seg) = self.segments.get_mut(index) else {
                break;
            };
            // Bytes of different senders are not merged into one read.
            if got.cred.is_some_and(|c| c != seg.cred) || (got.len > 0 && !seg.rights.is_empty()) {
                break;
            }
            got.cred = Some(seg.cred);
            let avail = &seg.data[seg.taken..];
            let n = avail.len().min(out.len() - got.len);
            out[got.len..got.len + n].copy_from_slice(&avail[..n]);
            got.len += n;
            let carried = !seg.rights.is_empty();
            if peek {
                if carried {
                    got.rights = seg.rights.clone();
                }
                index += 1;
            } else {
                seg.taken += n;
                got.rights.append(&mut seg.rights);
                if seg.taken == seg.data.len() {
                    if let Some(done) = self.segments.pop_front() {
                        self.bytes -= done.data.len();
                    }
                } else {
                    // Only a partly read segment's remainder counts.
                    self.bytes -= n;
                    seg.data.drain(..seg.taken);
                    seg.taken = 0;
                }
            }
            if carried {
                break;
            }
        }
        got.full_len = got.len;
        if !peek && got.len > 0 {
            self.changed();
        }
        got
    }

    /// For a reader that found nothing: end of file, a reset, or wait.
    pub fn empty_read(&mut self, nonblocking: bool) -> Result<usize> {
        if self.reset {
            self.reset = false;
            return Err(Errno::ECONNRESET);
        }
        if self.write_closed {
            return Ok(0);
        }
        Err(Errno::would_block(nonblocking))
    }

    /// Ends the queue for the reader: it sees end of file after the data.
    pub fn close_write(&mut self) {
        self.write_closed = true;
        self.changed();
    }

    /// Something a waiter may wait for happened here.
    pub fn changed(&mut self) {
        self.generation += 1;
        if self.wire {
            crate::net::wire::mark_dirty();
        }
        bump();
    }

    /// Ends the queue for senders, dropping what it holds (with any
    /// descriptors in flight).
    pub fn close_read(&mut self) {
        self.read_closed = true;
        self.segments.clear();
        self.bytes = 0;
        self.changed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(data: &[u8], pid: i32) -> Segment {
        Segment::new(
            data.to_vec(),
            Ucred {
                pid,
                ..Ucred::default()
            },
        )
    }

    #[test]
    fn streams_read_across_sends_of_one_sender() {
        let mut q = Queue::new(100);
        q.push(seg(b"hello ", 1));
        q.push(seg(b"world", 1));
        q.push(seg(b"!", 2));
        let mut out = [0u8; 8];
        let got = q.take(&mut out, false, true);
        assert_eq!(&out[..got.len], b"hello wo");
        let got = q.take(&mut out, false, false);
        assert_eq!(&out[..got.len], b"hello wo");
        assert_eq!(q.len(), 4);
        let got = q.take(&mut out, false, false);
        assert_eq!(&out[..got.len], b"rld");
        let got = q.take(&mut out, false, false);
        assert_eq!(
            (&out[..got.len], got.cred.map(|c| c.pid)),
            (&b"!"[..], Some(2))
        );
        assert!(q.is_empty());
        assert_eq!(q.empty_read(true), Err(Errno::EAGAIN));
        q.close_write();
        assert_eq!(q.empty_read(false), Ok(0));
    }

    #[test]
    fn records_are_read_whole_or_cut() {
        let mut q = Queue::new(10);
        q.push(seg(b"0123456789abc", 1));
        assert_eq!(q.room(1, true), 0);
        assert_eq!(q.room(5000, false), 0);
        let mut out = [0u8; 4];
        let got = q.take(&mut out, true, false);
        assert_eq!((got.len, got.full_len), (4, 13));
        assert!(q.is_empty());
        assert_eq!(q.room(50, true), 50);
    }
}
