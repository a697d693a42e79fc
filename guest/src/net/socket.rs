//! The socket itself: one kind of open file for every family and type.
//!
//! A `Socket` is the open file description (its `O_NONBLOCK` flag); the
//! `Core` behind it is the socket, which a listener's accept queue and
//! descriptors in flight also hold. A connected pair of stream (or
//! seqpacket) sockets is two queues, each socket sending into the other's;
//! a datagram socket receives into its own queue from anyone who finds it
//! by address. Loopback TCP and UDP connect inside the guest this way, with
//! no frames and no exits: the semantics programs see (accept queues,
//! half-close, resets, refused connections, readiness) are the socket
//! layer's, not a wire protocol's.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::rc::{Rc, Weak};
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use core::sync::atomic::{AtomicU64, Ordering};

use crate::errno::{Errno, Result};
use crate::fs::fd::*;
use crate::fs::files::synthetic_stat;
use crate::fs::pipe::bump;
use crate::fs::Devices;
use crate::net::addr::{Ip, SockAddr, UnixName, AF_INET, AF_INET6, AF_UNIX};
use crate::net::queue::{Queue, Received, Segment, Ucred};
use crate::net::*;

static NEXT_INO: AtomicU64 = AtomicU64::new(0x10_0000);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Stream,
    Dgram,
    SeqPacket,
}

impl Kind {
    pub fn from_type(typ: u32) -> Option<Kind> {
        match typ {
            SOCK_STREAM => Some(Kind::Stream),
            SOCK_DGRAM => Some(Kind::Dgram),
            SOCK_SEQPACKET => Some(Kind::SeqPacket),
            _ => None,
        }
    }

    pub fn sock_type(self) -> u32 {
        match self {
            Kind::Stream => SOCK_STREAM,
            Kind::Dgram => SOCK_DGRAM,
            Kind::SeqPacket => SOCK_SEQPACKET,
        }
    }

    /// Whether each send is a message the receiver reads whole.
    pub fn records(self) -> bool {
        self != Kind::Stream
    }

    pub fn connection(self) -> bool {
        self != Kind::Dgram
    }
}

pub enum State {
    Unconnected,
    Listening {
        pending: VecDeque<Rc<Core>>,
        backlog: usize,
    },
    /// A stream or seqpacket connection: `tx` is the peer's receive queue.
    Connected {
        peer: Weak<Core>,
        tx: Rc<RefCell<Queue>>,
    },
    /// A datagram socket's default destination (`connect`).
    Associated {
        peer: Weak<Core>,
    },
}

/// Integer options, by (level, name), as set or defaulted.
type IntOptions = BTreeMap<(u32, u32), i32>;

pub struct Core {
    pub family: u16,
    pub kind: Kind,
    pub protocol: u32,
    pub ino: u64,
    pub rx: Rc<RefCell<Queue>>,
    pub state: RefCell<State>,
    pub local: RefCell<Option<SockAddr>>,
    pub remote: RefCell<Option<SockAddr>>,
    /// SO_ERROR: an asynchronous error not yet reported.
    pub error: Cell<Option<Errno>>,
    pub options: RefCell<IntOptions>,
    /// SO_LINGER (on, seconds) and the SO_RCVTIMEO/SO_SNDTIMEO timeouts
    /// in nanoseconds (0: none).
    pub linger: Cell<(i32, i32)>,
    pub timeouts: Cell<(u64, u64)>,
    /// The creator's credentials (updated at connect and listen), which
    /// the peer's SO_PEERCRED reports.
    pub cred: Cell<Ucred>,
    pub peer_cred: Cell<Option<Ucred>>,
    /// A connection not yet accepted: closing it resets the client.
    pub embryo: Cell<bool>,
    /// shutdown(SHUT_RD) and shutdown(SHUT_WR) by this side.
    pub shut_read: Cell<bool>,
    pub shut_write: Cell<bool>,
    /// A non-blocking connect answered EINPROGRESS; the next connect
    /// reports the outcome.
    pub connect_started: Cell<bool>,
    /// A TCP send after the peer closed went into its reset (see `send`).
    pub sent_after_close: Cell<bool>,
    /// A connect through the network interface waits for its handshake.
    pub connecting: Cell<bool>,
    /// Moves at changes of state (connections queued and accepted,
    /// shutdown, errors), for `File::poll_generation`.
    pub changes: Cell<u64>,
}

impl Core {
    pub fn new(family: u16, kind: Kind, protocol: u32, cred: Ucred) -> Core {
        let capacity = default_buffer(family, kind);
        Core {
            family,
            kind,
            protocol,
            ino: NEXT_INO.fetch_add(1, Ordering::Relaxed),
            rx: Rc::new(RefCell::new(Queue::new(capacity))),
            state: RefCell::new(State::Unconnected),
            local: RefCell::new(None),
            remote: RefCell::new(None),
            error: Cell::new(None),
            options: RefCell::new(default_options(family, kind, protocol)),
            linger: Cell::new((0, 0)),
            timeouts: Cell::new((0, 0)),
            cred: Cell::new(cred),
            peer_cred: Cell::new(None),
            embryo: Cell::new(false),
            shut_read: Cell::new(false),
            shut_write: Cell::new(false),
            connect_started: Cell::new(false),
            sent_after_close: Cell::new(false),
            connecting: Cell::new(false),
            changes: Cell::new(0),
        }
    }

    /// A socket like this one (an accepted connection inherits the
    /// listener's options).
    fn sibling(&self) -> Core {
        let c = Core::new(self.family, self.kind, self.protocol, self.cred.get());
        *c.options.borrow_mut() = self.options.borrow().clone();
        c.linger.set(self.linger.get());
        c.timeouts.set(self.timeouts.get());
        c.rx.borrow_mut().capacity = self.rx.borrow().capacity;
        c
    }

    pub fn option(&self, level: u32, name: u32) -> Option<i32> {
        self.options.borrow().get(&(level, name)).copied()
    }

    /// Whether a boolean option is on.
    pub fn flag(&self, level: u32, name: u32) -> bool {
        self.option(level, name).is_some_and(|v| v != 0)
    }

    /// The address this inet socket sends from to reach `to`: its bound
    /// one, with a wildcard address replaced by the loopback address of
    /// `to`'s family (what the connection or datagram really uses).
    pub fn source_for(&self, to: &Ip) -> Option<SockAddr> {
        match self.local.borrow().clone() {
            Some(SockAddr::Inet { ip, port, .. }) if ip.is_unspecified() => {
                Some(SockAddr::inet(loopback_source(self.family, to), port))
            }
            other => other,
        }
    }

    pub fn is_tcp(&self) -> bool {
        self.family != AF_UNIX && self.kind == Kind::Stream
    }

    pub fn listening(&self) -> bool {
        matches!(*self.state.borrow(), State::Listening { .. })
    }

    pub fn connected(&self) -> bool {
        matches!(*self.state.borrow(), State::Connected { .. })
    }

    /// The connected peer, for a stream or an associated datagram socket.
    pub fn peer(&self) -> Option<Rc<Core>> {
        match &*self.state.borrow() {
            State::Connected { peer, .. } | State::Associated { peer } => peer.upgrade(),
            _ => None,
        }
    }

    /// Something a waiter may wait for happened to the socket's state.
    pub fn changed(&self) {
        self.changes.set(self.changes.get() + 1);
        bump();
    }

    /// Records an asynchronous error (SO_ERROR).
    pub fn fail(&self, error: Errno) {
        self.error.set(Some(error));
        self.changed();
    }

    /// Takes the pending SO_ERROR.
    pub fn take_error(&self) -> Option<Errno> {
        self.error.take()
    }

    /// listen(2): the socket must be bound (the caller autobinds inet
    /// sockets) and not connected.
    pub fn listen(&self, backlog: i32, cred: Ucred) -> Result<()> {
        if !self.kind.connection() {
            return Err(Errno::EOPNOTSUPP);
        }
        let backlog = backlog.clamp(0, SOMAXCONN) as usize;
        let mut state = self.state.borrow_mut();
        match &mut *state {
            State::Listening { backlog: b, .. } => *b = backlog,
            State::Unconnected => {
                *state = State::Listening {
                    pending: VecDeque::new(),
                    backlog,
                }
            }
            _ => return Err(Errno::EINVAL),
        }
        self.cred.set(cred);
        self.changed();
        Ok(())
    }

    /// Connects this stream socket to `listener`: the server side is
    /// created now and waits in the listener's accept queue, as Linux's
    /// own connections do once their handshake is done. `local` is this
    /// socket's address (already bound or chosen by the caller), `to` the
    /// address the server side reports as its own.
    pub fn connect_to(
        self: &Rc<Self>,
        listener: &Rc<Core>,
        local: SockAddr,
        to: SockAddr,
        cred: Ucred,
        nonblocking: bool,
    ) -> Result<()> {
        if listener.kind != self.kind {
            return Err(Errno::EPROTOTYPE);
        }
        let mut lstate = listener.state.borrow_mut();
        let State::Listening { pending, backlog } = &mut *lstate else {
            return Err(Errno::ECONNREFUSED);
        };
        // Linux's accept queue is full when it holds more than the backlog.
        // A non-blocking TCP connect still goes in: its handshake would
        // complete once the queue drains.
        if pending.len() > *backlog && !(self.is_tcp() && nonblocking) {
            return Err(Errno::would_block(nonblocking));
        }
        let server = Rc::new(listener.sibling());
        server.embryo.set(true);
        *server.local.borrow_mut() = Some(to.clone());
        *server.remote.borrow_mut() = Some(local.clone());
        server.peer_cred.set(Some(cred));
        *server.state.borrow_mut() = State::Connected {
            peer: Rc::downgrade(self),
            tx: self.rx.clone(),
        };
        self.cred.set(cred);
        self.peer_cred.set(Some(listener.cred.get()));
        *self.local.borrow_mut() = Some(local);
        *self.remote.borrow_mut() = Some(to);
        *self.state.borrow_mut() = State::Connected {
            peer: Rc::downgrade(&server),
            tx: server.rx.clone(),
        };
        pending.push_back(server);
        listener.changed();
        self.changed();
        Ok(())
    }

    /// Queues a connection that came through the network interface for
    /// accept: a server side like `connect_to` makes, whose peer is the
    /// wire (`tx` drains into smoltcp). `None` when the queue is full.
    pub fn accept_from_wire(
        &self,
        local: SockAddr,
        remote: SockAddr,
        tx: Rc<RefCell<Queue>>,
    ) -> Option<Rc<Core>> {
        let mut lstate = self.state.borrow_mut();
        let State::Listening { pending, backlog } = &mut *lstate else {
            return None;
        };
        if pending.len() > *backlog {
            return None;
        }
        let server = Rc::new(self.sibling());
        server.embryo.set(true);
        server.rx.borrow_mut().wire = true;
        *server.local.borrow_mut() = Some(local);
        *server.remote.borrow_mut() = Some(remote);
        *server.state.borrow_mut() = State::Connected {
            peer: Weak::new(),
            tx,
        };
        pending.push_back(server.clone());
        drop(lstate);
        self.changed();
        Some(server)
    }

    /// Takes the next connection of a listening socket.
    pub fn accept(&self, nonblocking: bool) -> Result<Rc<Core>> {
        let mut state = self.state.borrow_mut();
        let State::Listening { pending, .. } = &mut *state else {
            return Err(Errno::EINVAL);
        };
        let conn = pending.pop_front().ok_or(Errno::would_block(nonblocking))?;
        conn.embryo.set(false);
        self.changed();
        Ok(conn)
    }

    /// Sends `seg` on a connection, or as a datagram to `to` (or the
    /// associated peer); a datagram without a sender address gets the
    /// bound one.
    pub fn send(
        &self,
        mut seg: Segment,
        to: Option<&Rc<Core>>,
        nonblocking: bool,
    ) -> Result<usize> {
        if self.shut_write.get() {
            return Err(Errno::EPIPE);
        }
        if self.kind.connection() {
            let state = self.state.borrow();
            let State::Connected { tx, .. } = &*state else {
                return Err(if self.is_tcp() {
                    Errno::EPIPE
                } else {
                    Errno::ENOTCONN
                });
            };
            if self.rx.borrow().reset {
                self.rx.borrow_mut().reset = false;
                self.sent_after_close.set(true);
                return Err(Errno::ECONNRESET);
            }
            let mut q = tx.borrow_mut();
            if q.read_closed {
                // A TCP peer that closed answers the first data after its
                // close with a reset: that send succeeds, the next fails.
                if self.is_tcp() && !self.sent_after_close.replace(true) {
                    return Ok(seg.data.len());
                }
                return Err(Errno::EPIPE);
            }
            let len = seg.data.len();
            if self.kind == Kind::SeqPacket && len > q.capacity.max(SOCK_MAX_MESSAGE) {
                return Err(Errno::EMSGSIZE);
            }
            let n = q.room(len, self.kind.records());
            if n == 0 && len != 0 {
                return Err(Errno::would_block(nonblocking));
            }
            seg.data.truncate(n);
            q.push(seg);
            return Ok(n);
        }
        let peer = self.peer();
        let Some(target) = to.or(peer.as_ref()) else {
            return Err(
                if matches!(*self.state.borrow(), State::Associated { .. }) {
                    Errno::ECONNREFUSED
                } else {
                    Errno::EDESTADDRREQ
                },
            );
        };
        let len = seg.data.len();
        let limit = if self.family == AF_UNIX {
            self.option(SOL_SOCKET, SO_SNDBUF).unwrap_or(0) as usize
        } else {
            UDP_MAX_PAYLOAD
        };
        if len > limit {
            return Err(Errno::EMSGSIZE);
        }
        if target.kind != self.kind {
            return Err(Errno::EPROTOTYPE);
        }
        if seg.from.is_none() {
            seg.from = self.local.borrow().clone();
        }
        // A socket associated with another peer takes nothing from us:
        // unix refuses (EPERM), UDP drops.
        if let Some(their) = target.peer() {
            if !core::ptr::eq(&*their, self) {
                if self.family == AF_UNIX {
                    return Err(Errno::EPERM);
                }
                return Ok(len);
            }
        }
        let mut q = target.rx.borrow_mut();
        if q.read_closed {
            return Err(Errno::ECONNREFUSED);
        }
        if q.room(len, true) == 0 {
            // UDP drops what finds no room; unix datagrams wait for it.
            if self.family != AF_UNIX {
                return Ok(len);
            }
            return Err(Errno::would_block(nonblocking));
        }
        q.push(seg);
        Ok(len)
    }

    /// How much one receive could take now: a message's length, or what a
    /// stream holds (what a receive buffer needs at most).
    pub fn readable(&self) -> usize {
        let rx = self.rx.borrow();
        if self.kind.records() {
            rx.front().map_or(0, |s| s.data.len())
        } else {
            rx.len()
        }
    }

    /// Receives into `out`. `wait_for`: a stream read waits until that
    /// many bytes are there (MSG_WAITALL; 0: no wait) or the stream ends.
    pub fn recv(
        &self,
        out: &mut [u8],
        nonblocking: bool,
        peek: bool,
        wait_for: usize,
    ) -> Result<Received> {
        if self.kind.connection() {
            match &*self.state.borrow() {
                State::Connected { .. } => {}
                State::Listening { .. } | State::Unconnected if self.is_tcp() => {
                    return Err(Errno::ENOTCONN)
                }
                _ => return Err(Errno::EINVAL),
            }
        }
        if self.shut_read.get() && self.rx.borrow().is_empty() {
            return Ok(Received::default());
        }
        let mut q = self.rx.borrow_mut();
        if out.is_empty() && !self.kind.records() {
            return Ok(Received::default());
        }
        if q.is_empty() {
            if let Some(e) = self.take_error() {
                return Err(e);
            }
            let read = q.empty_read(nonblocking);
            if read == Err(Errno::ECONNRESET) {
                // The reset ended the connection: no send goes through.
                self.sent_after_close.set(true);
            }
            return read.map(|_| Received::default());
        }
        if !self.kind.records() && q.len() < wait_for && !q.write_closed && !nonblocking {
            return Err(Errno::EBLOCK);
        }
        Ok(q.take(out, self.kind.records(), peek))
    }

    /// shutdown(2).
    pub fn shutdown(&self, how: u32) -> Result<()> {
        if how > SHUT_RDWR {
            return Err(Errno::EINVAL);
        }
        let state = self.state.borrow();
        let tx = match &*state {
            State::Connected { tx, .. } => Some(tx),
            State::Associated { .. } => None,
            _ if self.kind.connection() => return Err(Errno::ENOTCONN),
            _ => None,
        };
        if how != SHUT_WR {
            self.shut_read.set(true);
            if self.family == AF_UNIX {
                // A unix peer's writes fail at once, as Linux's do.
                self.rx.borrow_mut().read_closed = true;
            }
        }
        if how != SHUT_RD {
            self.shut_write.set(true);
            if let Some(tx) = tx {
                tx.borrow_mut().close_write();
            }
        }
        self.changed();
        Ok(())
    }

    /// The poll mask (`POLLIN`, `POLLOUT`, `POLLRDHUP`, `POLLHUP`, `POLLERR`).
    pub fn poll_mask(&self) -> u32 {
        let mut mask = 0;
        if self.error.get().is_some() {
            mask |= POLL_ERR;
        }
        let rx = self.rx.borrow();
        match &*self.state.borrow() {
            State::Listening { pending, .. } => {
                if !pending.is_empty() {
                    mask |= POLL_IN | POLL_RDNORM;
                }
                return mask;
            }
            State::Connected { tx, .. } => {
                let read_down = rx.write_closed || self.shut_read.get() || rx.reset;
                let tx = tx.borrow();
                let write_down = self.shut_write.get() || tx.read_closed;
                if !rx.is_empty() || read_down {
                    mask |= POLL_IN | POLL_RDNORM;
                }
                if read_down {
                    mask |= POLL_RDHUP;
                }
                if rx.reset {
                    mask |= POLL_ERR;
                }
                if read_down && write_down {
                    mask |= POLL_HUP;
                }
                if write_down || tx.room(1, false) > 0 {
                    mask |= POLL_OUT | POLL_WRNORM;
                }
            }
            State::Associated { peer } => {
                if !rx.is_empty() {
                    mask |= POLL_IN | POLL_RDNORM;
                }
                let room = peer
                    .upgrade()
                    .is_none_or(|p| p.rx.borrow().room(1, true) > 0);
                if room {
                    mask |= POLL_OUT | POLL_WRNORM;
                }
            }
            State::Unconnected => {
                if !rx.is_empty() {
                    mask |= POLL_IN | POLL_RDNORM;
                }
                mask |= POLL_OUT | POLL_WRNORM;
                // An unconnected stream socket is hung up (Linux's
                // TCP_CLOSE state), also after a refused connect.
                if self.kind.connection() {
                    mask |= POLL_HUP;
                }
            }
        }
        mask
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        match &*self.state.borrow() {
            State::Connected { tx, .. } => {
                let mut tx = tx.borrow_mut();
                tx.close_write();
                // Closing with data unread (or before accept) resets the
                // peer, as Linux's TCP and unix sockets both do.
                if !self.rx.borrow().is_empty() || self.embryo.get() {
                    tx.reset = true;
                }
            }
            State::Listening { .. } | State::Unconnected | State::Associated { .. } => {}
        }
        // Unaccepted connections (if listening) drop with the state.
        self.rx.borrow_mut().close_read();
    }
}

/// The open file of a socket.
pub struct Socket {
    pub core: Rc<Core>,
    pub flags: Cell<u32>,
}

impl Socket {
    pub fn new(core: Rc<Core>, flags: u32) -> Socket {
        Socket {
            core,
            flags: Cell::new(flags),
        }
    }

    pub fn nonblocking(&self) -> bool {
        self.flags.get() & O_NONBLOCK != 0
    }
}

impl File for Socket {
    fn read(&self, _dev: &mut Devices, buf: &mut [u8]) -> Result<usize> {
        self.core
            .recv(buf, self.nonblocking(), false, 0)
            .map(|r| r.len)
    }
    fn write(&self, _dev: &mut Devices, buf: &[u8]) -> Result<usize> {
        let core = &self.core;
        let cred = core.cred.get();
        let nonblocking = self.nonblocking();
        // A UDP socket sends to the peer bound when it connected (write(2)
        // itself goes through the kernel's send path, which finds the peer
        // bound now).
        if core.kind == Kind::Dgram && core.family != AF_UNIX {
            let remote = core.remote.borrow().clone();
            let Some(SockAddr::Inet { ip, .. }) = remote else {
                return Err(Errno::EDESTADDRREQ);
            };
            let from = core.source_for(&ip);
            let Some(target) = core.peer() else {
                core.fail(Errno::ECONNREFUSED);
                return Ok(buf.len());
            };
            let mut seg = Segment::new(send_copy(core.kind, buf)?, cred);
            seg.from = from;
            return core.send(seg, Some(&target), nonblocking);
        }
        core.send(
            Segment::new(send_copy(core.kind, buf)?, cred),
            None,
            nonblocking,
        )
        .map_err(|e| {
            if e == Errno::EDESTADDRREQ {
                Errno::ENOTCONN
            } else {
                e
            }
        })
    }
    fn stat(&self, _dev: &mut Devices) -> Result<[u8; 144]> {
        Ok(synthetic_stat(S_IFSOCK | 0o777, 0, self.core.ino))
    }
    fn ioctl(&self, _dev: &mut Devices, request: u32, _arg: u64) -> Result<u64> {
        match request {
            FIONREAD => Ok(self.core.readable() as u64),
            SIOCOUTQ => Ok(match &*self.core.state.borrow() {
                State::Connected { tx, .. } => tx.borrow().len() as u64,
                _ => 0,
            }),
            _ => Err(Errno::ENOTTY),
        }
    }
    fn poll(&self, _dev: &mut Devices) -> (bool, bool) {
        let mask = self.core.poll_mask();
        (
            mask & (POLL_IN | POLL_HUP | POLL_ERR) != 0,
            mask & (POLL_OUT | POLL_ERR) != 0,
        )
    }
    fn poll_mask(&self, _dev: &mut Devices) -> u32 {
        self.core.poll_mask()
    }
    fn poll_generation(&self) -> Option<u64> {
        let core = &self.core;
        let tx = match &*core.state.borrow() {
            State::Connected { tx, .. } => tx.borrow().generation,
            _ => 0,
        };
        Some(core.rx.borrow().generation + tx + core.changes.get())
    }
    fn flags(&self) -> u32 {
        self.flags.get()
    }
    fn set_flags(&self, flags: u32) {
        self.flags.set(flags);
    }
    fn proc_name(&self) -> Vec<u8> {
        alloc::format!("socket:[{}]", self.core.ino).into_bytes()
    }
    fn as_any(&self) -> Option<&dyn core::any::Any> {
        Some(self)
    }
}

/// The most one send copies into the kernel: more than any socket buffer
/// holds, so a stream send of more returns a partial count as it would
/// anyway; no datagram is this large (EMSGSIZE).
pub const SEND_CHUNK: usize = 1 << 20;

/// The part of `data` a send copies (see [`SEND_CHUNK`]).
pub fn send_copy(kind: Kind, data: &[u8]) -> Result<Vec<u8>> {
    if kind == Kind::Dgram && data.len() > SEND_CHUNK {
        return Err(Errno::EMSGSIZE);
    }
    Ok(data[..data.len().min(SEND_CHUNK)].to_vec())
}

/// The socket behind a descriptor, if it is one.
pub fn socket_of(file: &dyn File) -> Option<&Socket> {
    file.as_any()?.downcast_ref::<Socket>()
}

/// Linux's default buffer sizes (net.core.*mem_default, net.ipv4.tcp_rmem).
fn default_buffer(family: u16, kind: Kind) -> usize {
    if family != AF_UNIX && kind == Kind::Stream {
        131_072
    } else {
        212_992
    }
}

fn default_options(family: u16, kind: Kind, protocol: u32) -> IntOptions {
    let tcp = family != AF_UNIX && kind == Kind::Stream;
    let mut o = BTreeMap::new();
    for name in [
        SO_REUSEADDR,
        SO_KEEPALIVE,
        SO_BROADCAST,
        SO_OOBINLINE,
        SO_REUSEPORT,
        SO_PASSCRED,
        SO_DONTROUTE,
        SO_PRIORITY,
        SO_TIMESTAMP,
        SO_MARK,
    ] {
        o.insert((SOL_SOCKET, name), 0);
    }
    o.insert((SOL_SOCKET, SO_RCVLOWAT), 1);
    o.insert((SOL_SOCKET, SO_SNDLOWAT), 1);
    o.insert((SOL_SOCKET, SO_SNDBUF), if tcp { 16_384 } else { 212_992 });
    o.insert((SOL_SOCKET, SO_RCVBUF), default_buffer(family, kind) as i32);
    if tcp {
        for (name, v) in [
            (TCP_NODELAY, 0),
            (TCP_MAXSEG, 536),
            (TCP_CORK, 0),
            (TCP_KEEPIDLE, 7200),
            (TCP_KEEPINTVL, 75),
            (TCP_KEEPCNT, 9),
            (TCP_SYNCNT, 6),
            (TCP_LINGER2, 60),
            (TCP_DEFER_ACCEPT, 0),
            (TCP_WINDOW_CLAMP, 0),
            (TCP_QUICKACK, 1),
            (TCP_USER_TIMEOUT, 0),
            (TCP_FASTOPEN, 0),
            (TCP_NOTSENT_LOWAT, 0),
        ] {
            o.insert((SOL_TCP, name), v);
        }
    }
    if family == AF_INET || family == AF_INET6 {
        for (name, v) in [
            (IP_TOS, 0),
            (IP_TTL, 64),
            (IP_RECVERR, 0),
            (IP_PKTINFO, 0),
            (IP_MULTICAST_TTL, 1),
            (IP_MULTICAST_LOOP, 1),
            (IP_MTU_DISCOVER, if tcp { 1 } else { 0 }),
        ] {
            o.insert((SOL_IP, name), v);
        }
    }
    if protocol == IPPROTO_UDPLITE {
        // UDPLITE_SEND_CSCOV and UDPLITE_RECV_CSCOV: full coverage.
        o.insert((IPPROTO_UDPLITE, 10), 0);
        o.insert((IPPROTO_UDPLITE, 11), 0);
    }
    if family == AF_INET6 {
        for (name, v) in [
            (IPV6_V6ONLY, 0),
            (IPV6_UNICAST_HOPS, 64),
            (IPV6_MULTICAST_HOPS, 1),
            (IPV6_MULTICAST_LOOP, 1),
            (IPV6_RECVPKTINFO, 0),
            (IPV6_RECVHOPLIMIT, 0),
            (IPV6_RECVTCLASS, 0),
            (IPV6_TCLASS, 0),
        ] {
            o.insert((SOL_IPV6, name), v);
        }
    }
    o
}

/// The name a unix socket reports when it has none.
pub fn unnamed() -> SockAddr {
    SockAddr::Unix(UnixName::Unnamed)
}

/// The loopback address a socket of `family` sends from to reach `to`.
pub fn loopback_source(family: u16, to: &Ip) -> Ip {
    match (family, to.as_v4()) {
        (AF_INET6, None) => Ip::V6(crate::net::addr::LOOPBACK_V6),
        (AF_INET6, Some(_)) => Ip::V4([127, 0, 0, 1]).to_v6(),
        _ => Ip::V4([127, 0, 0, 1]),
    }
}

/// Whether `family` sockets may use an address of this form.
pub fn family_accepts(family: u16, ip: &Ip) -> bool {
    matches!((family, ip), (AF_INET, Ip::V4(_)) | (AF_INET6, Ip::V6(_)))
}
