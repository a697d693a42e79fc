//! The exec device (`capsa_abi::exec`): processes `capsa exec` starts in
//! the running guest.
//!
//! The VMM listens on a unix socket the runtime made before the jail
//! (`protocol` has what travels over it). A client's start request
//! becomes an event for the guest, which starts the process and reports
//! back; the process's stdio are the client's descriptors, which the
//! guest reads and writes through this device. Everything arrives through
//! one epoll descriptor, the bus's input for this device, so sessions'
//! signals and input wake an idle guest like console input does.
//!
//! The guest and the client are both untrusted: the guest's calls are
//! bounds-checked against guest RAM and name only its own sessions'
//! streams; a client's messages are parsed by `protocol` and limited in
//! size and number of sessions.

pub mod protocol;

use std::collections::{BTreeMap, VecDeque};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};

use capsa_abi::exec::{self as abi, op, Call};
use vm_memory::{Address, Bytes, GuestAddress};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::bus::{Action, BusDevice};
use crate::hostio;
use crate::memory::GuestMemory;
use protocol::{Reply, Request};

/// Sessions alive at once (started, or still holding streams).
pub const MAX_SESSIONS: usize = 64;
/// Events waiting for the guest at most: past it, a client's further
/// signals are dropped (a guest that does not fetch them cannot make the
/// VMM's memory grow; standard signals coalesce on Linux too).
const MAX_QUEUED_EVENTS: usize = 1024;
/// The most a single stream call moves.
const MAX_IO: usize = 64 << 10;
/// The longest failure message the VMM copies out of the guest.
const MAX_FAILURE: usize = 4096;
/// The epoll token of the listening socket; sessions' are below it.
const LISTENER: u64 = u64::MAX;
/// A session's token is `session << 8 | what`: its client or a stream.
const CLIENT: u64 = 0xff;

/// A connected client: a SOCK_SEQPACKET socket.
struct Client(OwnedFd);

impl ScmSocket for Client {
    fn socket_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl Client {
    fn send(&self, reply: &Reply) {
        // A client that went away no longer cares; its hang-up comes
        // through the epoll.
        let _ = self.send_with_fds(&[&reply.encode()[..]], &[]);
    }
}

#[derive(Default)]
struct Session {
    client: Option<Client>,
    streams: [Option<OwnedFd>; protocol::STDIO_FDS],
    /// The guest was asked to start the process.
    requested: bool,
    /// The guest reported the process ended (or never started).
    ended: bool,
}

impl Session {
    fn is_over(&self) -> bool {
        self.client.is_none() && self.streams.iter().all(Option::is_none)
    }
}

pub struct Exec {
    mem: GuestMemory,
    listener: OwnedFd,
    epoll: Epoll,
    sessions: BTreeMap<u32, Session>,
    next_session: u32,
    events: VecDeque<Vec<u8>>,
    buf: Vec<u8>,
}

fn token(session: u32, what: u64) -> u64 {
    (u64::from(session) << 8) | what
}

fn errno_result(e: &std::io::Error) -> i64 {
    -i64::from(e.raw_os_error().unwrap_or(libc::EIO))
}

impl Exec {
    /// A device serving the clients of `listener` (a listening
    /// SOCK_SEQPACKET unix socket).
    pub fn new(mem: GuestMemory, listener: OwnedFd) -> std::io::Result<Self> {
        // Accepting goes on until the backlog is empty.
        // SAFETY: fcntl on a descriptor we own; no memory is passed.
        if unsafe { libc::fcntl(listener.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, LISTENER),
        )?;
        Ok(Self {
            mem,
            listener,
            epoll,
            sessions: BTreeMap::new(),
            next_session: 1,
            events: VecDeque::new(),
            buf: vec![0; protocol::MAX_MESSAGE + 1],
        })
    }

    /// Sets `bits` in the guest's host-events word.
    fn tell_guest(&self, bits: u64) {
        use vm_memory::GuestMemory as _;
        if let Ok(p) = self
            .mem
            .get_host_address(GuestAddress(abi::HOST_EVENTS_ADDR))
        {
            // SAFETY: the word is 8-byte aligned guest RAM, mapped for the
            // VM's life; both sides only access it atomically.
            unsafe { (*p.cast::<AtomicU64>()).fetch_or(bits, Ordering::AcqRel) };
        }
    }

    fn queue_event(&mut self, kind: u32, session: u32, payload: &[u8]) {
        let mut event = Vec::with_capacity(abi::EVENT_HEADER_LEN + payload.len());
        event.extend_from_slice(&kind.to_le_bytes());
        event.extend_from_slice(&session.to_le_bytes());
        event.extend_from_slice(payload);
        self.events.push_back(event);
        self.tell_guest(abi::EVENTS_PENDING);
    }

    fn accept(&mut self) {
        loop {
            // SAFETY: accept4 on our listening socket; no address is asked for.
            let fd = unsafe {
                libc::accept4(
                    self.listener.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if fd < 0 {
                return;
            }
            // SAFETY: accept4 just returned this descriptor; nobody else owns it.
            let client = Client(unsafe { OwnedFd::from_raw_fd(fd) });
            if self.sessions.len() >= MAX_SESSIONS {
                client.send(&Reply::Failed(format!(
                    "the microVM already has {MAX_SESSIONS} exec sessions"
                )));
                continue;
            }
            let session = self.next_session;
            self.next_session = self.next_session.wrapping_add(1).max(1);
            let watched = self.epoll.ctl(
                ControlOperation::Add,
                client.socket_fd(),
                EpollEvent::new(EventSet::IN | EventSet::HANG_UP, token(session, CLIENT)),
            );
            if watched.is_ok() {
                self.sessions.insert(
                    session,
                    Session {
                        client: Some(client),
                        ..Session::default()
                    },
                );
            }
        }
    }

    /// Reads what `session`'s client sent; a malformed message or a
    /// hang-up ends the connection.
    fn serve_client(&mut self, session: u32) {
        loop {
            let Some(client) = self.sessions.get(&session).and_then(|s| s.client.as_ref()) else {
                return;
            };
            let mut fds = [-1; protocol::STDIO_FDS];
            let mut iov = [libc::iovec {
                iov_base: self.buf.as_mut_ptr().cast(),
                iov_len: self.buf.len(),
            }];
            // SAFETY: the iovec covers `self.buf`, which may take any bytes.
            let received = unsafe { client.recv_with_fds(&mut iov, &mut fds) };
            let (len, nfds) = match received {
                Ok(r) => r,
                Err(e) if e.errno() == libc::EAGAIN => return,
                Err(_) => (0, 0),
            };
            // SAFETY: recvmsg gave us these descriptors; nobody else owns them.
            let fds: Vec<OwnedFd> = fds[..nfds]
                .iter()
                .map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) })
                .collect();
            if len == 0 {
                self.hang_up(session);
                return;
            }
            let message = &self.buf[..len.min(self.buf.len())];
            let request = protocol::parse_request(message).map_err(|e| e.to_string());
            let outcome = match (request, self.sessions.get_mut(&session)) {
                (Ok(Request::Start(spec)), Some(s)) if !s.requested => {
                    match <[OwnedFd; protocol::STDIO_FDS]>::try_from(fds) {
                        Ok(stdio) => {
                            s.streams = stdio.map(Some);
                            s.requested = true;
                            Ok(Some(spec.to_vec()))
                        }
                        Err(_) => Err(String::from(
                            "a start request carries stdin, stdout and stderr",
                        )),
                    }
                }
                (Ok(Request::Start(_)), _) => Err(String::from("the session already started")),
                (Ok(Request::Signal(sig)), Some(s)) if s.requested && !s.ended => {
                    if self.events.len() < MAX_QUEUED_EVENTS {
                        self.queue_event(abi::event::SIGNAL, session, &sig.to_le_bytes());
                    }
                    Ok(None)
                }
                (Ok(Request::Signal(_)), _) => Ok(None),
                (Err(why), _) => Err(why),
            };
            match outcome {
                Ok(Some(spec)) => self.queue_event(abi::event::START, session, &spec),
                Ok(None) => {}
                Err(why) => {
                    if let Some(c) = self.sessions.get(&session).and_then(|s| s.client.as_ref()) {
                        c.send(&Reply::Failed(why));
                    }
                    self.hang_up(session);
                    return;
                }
            }
        }
    }

    /// The client is gone: a process still running is killed.
    fn hang_up(&mut self, session: u32) {
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        if let Some(client) = s.client.take() {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                client.socket_fd(),
                EpollEvent::default(),
            );
        }
        if s.requested && !s.ended {
            self.queue_event(abi::event::HANGUP, session, &[]);
        } else {
            self.forget_if_over(session);
        }
    }

    fn forget_if_over(&mut self, session: u32) {
        if self.sessions.get(&session).is_some_and(Session::is_over) {
            self.sessions.remove(&session);
        }
    }

    fn stream(&self, call: &Call) -> Option<RawFd> {
        let s = self.sessions.get(&call.session)?;
        s.streams
            .get(call.stream as usize)?
            .as_ref()
            .map(AsRawFd::as_raw_fd)
    }

    /// Asks for `STREAM_READY` once `fd` (a stream of `call`) is readable.
    fn watch(&self, call: &Call, fd: RawFd) {
        let event = EpollEvent::new(
            EventSet::IN | EventSet::ONE_SHOT,
            token(call.session, u64::from(call.stream)),
        );
        if self.epoll.ctl(ControlOperation::Modify, fd, event).is_err() {
            let _ = self.epoll.ctl(ControlOperation::Add, fd, event);
        }
    }

    fn reply(&mut self, session: u32, reply: &Reply) {
        if let Some(c) = self.sessions.get(&session).and_then(|s| s.client.as_ref()) {
            c.send(reply);
        }
    }

    /// Ends the session's process's life on the host side: the client is
    /// told and let go; the streams live on while the guest holds them.
    fn end(&mut self, session: u32, reply: &Reply) {
        self.reply(session, reply);
        if let Some(s) = self.sessions.get_mut(&session) {
            s.ended = true;
        }
        self.hang_up(session);
    }

    fn carry_out(&mut self, call: &Call) -> i64 {
        let len = usize::try_from(call.len).unwrap_or(usize::MAX);
        let addr = GuestAddress(call.addr);
        match call.op {
            op::NEXT_EVENT => {
                let Some(event) = self.events.pop_front() else {
                    return 0;
                };
                if event.len() > len {
                    return abi::EMSGSIZE;
                }
                match self.mem.write_slice(&event, addr) {
                    Ok(()) => event.len() as i64,
                    Err(_) => abi::EFAULT,
                }
            }
            op::READ | op::POLL => {
                let Some(fd) = self.stream(call) else {
                    return abi::EBADF;
                };
                if !hostio::readable_now(fd) {
                    self.watch(call, fd);
                    return if call.op == op::POLL { 0 } else { abi::EAGAIN };
                }
                if call.op == op::POLL {
                    return 1;
                }
                let mut data = vec![0u8; len.min(MAX_IO)];
                match hostio::read(fd, &mut data) {
                    Ok(n) => match self.mem.write_slice(&data[..n], addr) {
                        Ok(()) => n as i64,
                        Err(_) => abi::EFAULT,
                    },
                    Err(e) => errno_result(&e),
                }
            }
            op::WRITE => {
                let Some(fd) = self.stream(call) else {
                    return abi::EBADF;
                };
                let mut data = vec![0u8; len.min(MAX_IO)];
                if self.mem.read_slice(&mut data, addr).is_err() {
                    return abi::EFAULT;
                }
                match hostio::write_all(fd, &data) {
                    Ok(()) => data.len() as i64,
                    Err(e) => errno_result(&e),
                }
            }
            op::CLOSE => {
                let Some(slot) = self
                    .sessions
                    .get_mut(&call.session)
                    .and_then(|s| s.streams.get_mut(call.stream as usize))
                else {
                    return abi::EBADF;
                };
                *slot = None;
                self.forget_if_over(call.session);
                0
            }
            op::IOCTL => {
                let Some(fd) = self.stream(call) else {
                    return abi::EBADF;
                };
                let request = u32::try_from(call.len).unwrap_or(0);
                super::terminal_request(&self.mem, fd, request, addr)
            }
            op::STARTED => {
                let pid = u32::try_from(call.len).unwrap_or(0);
                self.reply(call.session, &Reply::Started(pid));
                0
            }
            op::FAILED => {
                let mut why = vec![0u8; len.min(MAX_FAILURE)];
                if self.mem.read_slice(&mut why, addr).is_err() {
                    return abi::EFAULT;
                }
                let why = String::from_utf8_lossy(&why).into_owned();
                if let Some(s) = self.sessions.get_mut(&call.session) {
                    s.streams = Default::default();
                }
                self.end(call.session, &Reply::Failed(why));
                0
            }
            op::EXITED => {
                self.end(call.session, &Reply::Exited(call.len as i32));
                0
            }
            _ => abi::EINVAL,
        }
    }
}

impl BusDevice for Exec {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Action {
        if offset != abi::CALL || data.len() != 8 {
            return Action::Continue;
        }
        let mut addr = [0u8; 8];
        addr.copy_from_slice(data);
        let at = GuestAddress(u64::from_le_bytes(addr));
        let mut raw = [0u8; abi::CALL_SIZE];
        if self.mem.read_slice(&mut raw, at).is_err() {
            return Action::Continue;
        }
        let field = |at: usize, n: usize| {
            let mut v = [0u8; 8];
            v[..n].copy_from_slice(&raw[at..at + n]);
            u64::from_le_bytes(v)
        };
        let call = Call {
            op: field(0, 4) as u32,
            session: field(4, 4) as u32,
            stream: field(8, 4) as u32,
            reserved: 0,
            addr: field(16, 8),
            len: field(24, 8),
            result: 0,
        };
        let result = self.carry_out(&call);
        if let Some(result_at) = at.checked_add(abi::CALL_RESULT_OFFSET) {
            let _ = self.mem.write_obj(result, result_at);
        }
        Action::Continue
    }

    fn input_fd(&self) -> Option<RawFd> {
        Some(self.epoll.as_raw_fd())
    }

    fn poll_input(&mut self) {
        let mut ready = [EpollEvent::default(); 16];
        loop {
            let n = self.epoll.wait(0, &mut ready).unwrap_or(0);
            if n == 0 {
                return;
            }
            for event in &ready[..n] {
                match event.data() {
                    LISTENER => self.accept(),
                    t if t & 0xff == CLIENT => self.serve_client((t >> 8) as u32),
                    _ => self.tell_guest(abi::STREAM_READY),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
