//! Traffic off the guest: smoltcp's TCP/IP over the virtio-net device,
//! behind the same sockets as loopback.
//!
//! A TCP connection through the interface is a `Core` in the `Connected`
//! state like a loopback one, except that no peer `Core` exists: its `tx`
//! queue is drained into a smoltcp socket and what that socket receives
//! is pushed into the `Core`'s own receive queue (the pump, run by
//! `poll`). So reads, writes, shutdown, resets, readiness and accept
//! queues keep the socket layer's semantics, and smoltcp only carries the
//! bytes. Listening sockets on the wildcard or the interface's address
//! keep a few smoltcp sockets listening on their port; each connection
//! whose handshake completes becomes a server `Core` in the accept queue.
//! UDP sockets bound where the interface reaches get a smoltcp socket on
//! their port; received datagrams become segments of their queue.
//!
//! smoltcp lacks what Linux's socket layer adds above TCP (accept
//! backlogs, one listening endpoint serving many connections, SO_ERROR,
//! half-close as applications see it), which is why the pump sits
//! between the two rather than smoltcp's sockets being the sockets.

use alloc::rc::{Rc, Weak};
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::sync::atomic::{AtomicBool, Ordering};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::{tcp, udp};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpEndpoint, IpListenEndpoint, Ipv4Address,
    Ipv6Address,
};

use crate::drivers::virtio::net::NetDevice;
use crate::errno::{Errno, Result};
use crate::net::addr::{Ip, SockAddr, AF_INET6};
use crate::net::queue::{Queue, Segment, Ucred};
use crate::net::socket::{Core, State};
use capsa_abi::NetConfig;

/// Set when a queue of a connection through the interface changed (the
/// application sent, read or closed): the pump has work.
static DIRTY: AtomicBool = AtomicBool::new(false);

pub fn mark_dirty() {
    DIRTY.store(true, Ordering::Relaxed);
}

/// smoltcp's buffers per TCP socket: a 64 KiB window each way.
const TCP_BUFFER: usize = 64 * 1024;
/// smoltcp sockets listening per listening port: handshakes that can be
/// in progress at once (each becomes a connection and is replaced).
const LISTENERS_PER_PORT: usize = 4;
/// How long a connect waits for the handshake (Linux's 6 SYN retries
/// take about as long).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(127);

struct Phy {
    dev: NetDevice,
    /// The frame being handed to smoltcp (copied out so its buffer goes
    /// back to the device at once).
    scratch: Vec<u8>,
}

struct Rx<'a>(&'a [u8]);
struct Tx<'a>(&'a mut NetDevice);

impl RxToken for Rx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        match self.0.transmit_buffer(len) {
            Some((id, buf)) => {
                let r = f(buf);
                self.0.queue_frame(id, len);
                r
            }
            // `transmit` checked a buffer was free; a frame larger than
            // the link is built and dropped.
            None => f(&mut vec![0; len]),
        }
    }
}

impl Device for Phy {
    type RxToken<'a> = Rx<'a>;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _: Instant) -> Option<(Rx<'_>, Tx<'_>)> {
        let (id, len) = self.dev.receive()?;
        self.scratch.clear();
        self.scratch.extend_from_slice(self.dev.frame(id, len));
        self.dev.repost(id);
        Some((Rx(&self.scratch), Tx(&mut self.dev)))
    }

    fn transmit(&mut self, _: Instant) -> Option<Tx<'_>> {
        self.dev.can_transmit().then_some(Tx(&mut self.dev))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.dev.max_frame();
        caps.max_burst_size = Some(32);
        caps
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The handshake of a connect, which began at this time.
    Connecting(Instant),
    Open,
}

struct Conn {
    core: Weak<Core>,
    handle: SocketHandle,
    /// What the application sends.
    tx: Rc<RefCell<Queue>>,
    phase: Phase,
    /// Our FIN was asked for (close or shutdown).
    closed: bool,
    /// The end of the peer's stream reached the application.
    eof: bool,
}

struct Listener {
    core: Weak<Core>,
    endpoint: IpListenEndpoint,
    handles: Vec<SocketHandle>,
}

struct Udp {
    core: Weak<Core>,
    handle: SocketHandle,
}

pub struct Wire {
    phy: Phy,
    iface: Interface,
    sockets: SocketSet<'static>,
    conns: Vec<Conn>,
    listeners: Vec<Listener>,
    udp: Vec<Udp>,
    pub config: NetConfig,
    /// When smoltcp next needs a poll (retransmissions, delayed ACKs).
    poll_at: Option<Instant>,
}

fn instant(now_ns: u64) -> Instant {
    Instant::from_micros((now_ns / 1000) as i64)
}

fn smol_ip(ip: &Ip) -> IpAddress {
    match (ip.as_v4(), ip) {
        (Some(a), _) => IpAddress::Ipv4(Ipv4Address::from(a)),
        (None, Ip::V6(a)) => IpAddress::Ipv6(Ipv6Address::from(*a)),
        (None, Ip::V4(a)) => IpAddress::Ipv4(Ipv4Address::from(*a)),
    }
}

/// An address as a socket of `family` reports it (IPv4 peers of IPv6
/// sockets in the mapped form).
fn our_ip(addr: IpAddress, family: u16) -> Ip {
    match addr {
        IpAddress::Ipv4(a) => {
            let ip = Ip::V4(a.octets());
            if family == AF_INET6 {
                ip.to_v6()
            } else {
                ip
            }
        }
        IpAddress::Ipv6(a) => Ip::V6(a.octets()),
    }
}

fn endpoint_addr(ep: IpEndpoint, family: u16) -> SockAddr {
    SockAddr::inet(our_ip(ep.addr, family), ep.port)
}

impl Wire {
    pub fn new(dev: NetDevice, config: NetConfig, now_ns: u64, seed: u64) -> Wire {
        let mut phy = Phy {
            dev,
            scratch: Vec::new(),
        };
        let mut cfg = Config::new(HardwareAddress::Ethernet(EthernetAddress(config.mac)));
        cfg.random_seed = seed;
        let mut iface = Interface::new(cfg, &mut phy, instant(now_ns));
        iface.update_ip_addrs(|addrs| {
            if config.ipv4_prefix != 0 {
                let _ = addrs.push(IpCidr::new(
                    IpAddress::Ipv4(Ipv4Address::from(config.ipv4)),
                    config.ipv4_prefix.min(32),
                ));
            }
            if config.ipv6_prefix != 0 {
                let _ = addrs.push(IpCidr::new(
                    IpAddress::Ipv6(Ipv6Address::from(config.ipv6)),
                    config.ipv6_prefix.min(128),
                ));
            }
        });
        if config.ipv4_gateway != [0; 4] {
            let _ = iface
                .routes_mut()
                .add_default_ipv4_route(Ipv4Address::from(config.ipv4_gateway));
        }
        if config.ipv6_gateway != [0; 16] {
            let _ = iface
                .routes_mut()
                .add_default_ipv6_route(Ipv6Address::from(config.ipv6_gateway));
        }
        Wire {
            phy,
            iface,
            sockets: SocketSet::new(Vec::new()),
            conns: Vec::new(),
            listeners: Vec::new(),
            udp: Vec::new(),
            config,
            poll_at: None,
        }
    }

    /// Whether `ip` is one of the interface's own addresses.
    pub fn is_own(&self, ip: &Ip) -> bool {
        match (ip.as_v4(), ip) {
            (Some(a), _) => self.config.ipv4_prefix != 0 && a == self.config.ipv4,
            (None, Ip::V6(a)) => self.config.ipv6_prefix != 0 && *a == self.config.ipv6,
            (None, Ip::V4(_)) => false,
        }
    }

    /// Whether the interface reaches `ip`: on its subnet or through a
    /// default gateway, in a family it has an address of.
    pub fn routes(&self, ip: &Ip) -> bool {
        let c = &self.config;
        match (ip.as_v4(), ip) {
            (Some(a), _) => {
                c.ipv4_prefix != 0
                    && (c.ipv4_gateway != [0; 4]
                        || prefix_match(&a, &c.ipv4, c.ipv4_prefix.min(32)))
            }
            (None, Ip::V6(a)) => {
                c.ipv6_prefix != 0
                    && (c.ipv6_gateway != [0; 16]
                        || prefix_match(a, &c.ipv6, c.ipv6_prefix.min(128)))
            }
            (None, Ip::V4(_)) => false,
        }
    }

    /// Whether `poll` has anything to do: a frame came, an application
    /// moved data of a connection, or a protocol timer is due. One load
    /// and a comparison, asked after every system call.
    pub fn due(&self, now_ns: u64) -> bool {
        self.phy.dev.has_frame()
            || DIRTY.load(Ordering::Relaxed)
            || self.poll_at.is_some_and(|at| at <= instant(now_ns))
    }

    /// When the guest must wake for the next protocol timer, if any.
    pub fn deadline_ns(&self) -> Option<u64> {
        self.poll_at
            .map(|at| at.total_micros().max(0) as u64 * 1000)
    }

    /// Moves frames both ways and pumps every connection, until nothing
    /// changes; then sends what was queued with one exit.
    pub fn poll(&mut self, now_ns: u64) {
        let now = instant(now_ns);
        for _ in 0..16 {
            DIRTY.store(false, Ordering::Relaxed);
            self.iface.poll(now, &mut self.phy, &mut self.sockets);
            let moved = self.pump(now);
            self.phy.dev.flush();
            if !moved && !self.phy.dev.has_frame() {
                break;
            }
        }
        DIRTY.store(false, Ordering::Relaxed);
        self.poll_at = self.iface.poll_at(now, &self.sockets);
    }

    /// Starts a TCP connect of `core` from `local_port` to `to` through
    /// the interface; the socket is connecting until the pump sees the
    /// handshake end.
    pub fn connect(
        &mut self,
        core: &Rc<Core>,
        local_port: u16,
        to: (Ip, u16),
        now_ns: u64,
    ) -> Result<()> {
        let mut sock = self.tcp_socket(core);
        sock.connect(
            self.iface.context(),
            IpEndpoint::new(smol_ip(&to.0), to.1),
            local_port,
        )
        .map_err(|e| match e {
            tcp::ConnectError::InvalidState => Errno::EISCONN,
            tcp::ConnectError::Unaddressable => Errno::ENETUNREACH,
        })?;
        sock.set_timeout(Some(CONNECT_TIMEOUT));
        let handle = self.sockets.add(sock);
        // Nothing may be sent before the handshake: no room until then.
        let tx = Rc::new(RefCell::new(Queue::new(0)));
        tx.borrow_mut().wire = true;
        core.rx.borrow_mut().wire = true;
        let local_ip = self.source_ip(&to.0, core.family);
        *core.local.borrow_mut() = Some(SockAddr::inet(local_ip, local_port));
        *core.remote.borrow_mut() = Some(SockAddr::inet(to.0, to.1));
        *core.state.borrow_mut() = State::Connected {
            peer: Weak::new(),
            tx: tx.clone(),
        };
        core.connecting.set(true);
        self.conns.push(Conn {
            core: Rc::downgrade(core),
            handle,
            tx,
            phase: Phase::Connecting(instant(now_ns)),
            closed: false,
            eof: false,
        });
        mark_dirty();
        Ok(())
    }

    /// The interface's address of `to`'s family, as `family` reports it.
    fn source_ip(&self, to: &Ip, family: u16) -> Ip {
        let ip = if to.as_v4().is_some() {
            Ip::V4(self.config.ipv4)
        } else {
            Ip::V6(self.config.ipv6)
        };
        if family == AF_INET6 {
            ip.to_v6()
        } else {
            ip
        }
    }

    fn tcp_socket(&self, core: &Core) -> tcp::Socket<'static> {
        let mut sock = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
            tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
        );
        // The socket layer above batches what applications write; Nagle
        // on top would hold back the last segment of each reply for an ACK.
        sock.set_nagle_enabled(false);
        if core.flag(crate::net::SOL_SOCKET, crate::net::SO_KEEPALIVE) {
            sock.set_keep_alive(Some(Duration::from_secs(75)));
        }
        sock
    }

    /// Accepts connections through the interface for a listening socket
    /// bound to `ip` (the wildcard or the interface's own) and `port`.
    pub fn listen(&mut self, core: &Rc<Core>, ip: &Ip, port: u16) {
        if self
            .listeners
            .iter()
            .any(|l| l.core.ptr_eq(&Rc::downgrade(core)))
        {
            return;
        }
        let addr = (!ip.is_unspecified()).then(|| smol_ip(ip));
        let endpoint = IpListenEndpoint { addr, port };
        let mut listener = Listener {
            core: Rc::downgrade(core),
            endpoint,
            handles: Vec::new(),
        };
        for _ in 0..LISTENERS_PER_PORT {
            if let Some(h) = self.listening_socket(core, endpoint) {
                listener.handles.push(h);
            }
        }
        core.rx.borrow_mut().wire = true;
        self.listeners.push(listener);
    }

    fn listening_socket(
        &mut self,
        core: &Core,
        endpoint: IpListenEndpoint,
    ) -> Option<SocketHandle> {
        let mut sock = self.tcp_socket(core);
        sock.listen(endpoint).ok()?;
        Some(self.sockets.add(sock))
    }

    /// Receives datagrams through the interface for a UDP socket bound to
    /// `port` (on the wildcard or the interface's address).
    pub fn bind_udp(&mut self, core: &Rc<Core>, ip: &Ip, port: u16) {
        if self.udp.iter().any(|u| u.core.ptr_eq(&Rc::downgrade(core))) {
            return;
        }
        let mut sock = udp::Socket::new(
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 32], vec![0; 64 * 1024]),
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 32], vec![0; 64 * 1024]),
        );
        let addr = (!ip.is_unspecified()).then(|| smol_ip(ip));
        if sock.bind(IpListenEndpoint { addr, port }).is_err() {
            return;
        }
        let handle = self.sockets.add(sock);
        self.udp.push(Udp {
            core: Rc::downgrade(core),
            handle,
        });
    }

    /// Sends one datagram of `core` (bound to `from`, see `bind_udp`) to
    /// `to` through the interface. A full transmit buffer drops it, as a
    /// congested link does.
    pub fn send_udp(
        &mut self,
        core: &Rc<Core>,
        from: (Ip, u16),
        to: (Ip, u16),
        data: &[u8],
    ) -> Result<usize> {
        self.bind_udp(core, &from.0, from.1);
        let Some(u) = self
            .udp
            .iter()
            .find(|u| u.core.ptr_eq(&Rc::downgrade(core)))
        else {
            return Err(Errno::EADDRINUSE);
        };
        let sock = self.sockets.get_mut::<udp::Socket>(u.handle);
        if data.len() > sock.payload_send_capacity() {
            return Err(Errno::EMSGSIZE);
        }
        match sock.send_slice(data, IpEndpoint::new(smol_ip(&to.0), to.1)) {
            Ok(()) | Err(udp::SendError::BufferFull) => {}
            Err(udp::SendError::Unaddressable) => return Err(Errno::ENETUNREACH),
        }
        mark_dirty();
        Ok(data.len())
    }

    /// Moves data between connections' queues and their smoltcp sockets,
    /// turns completed handshakes into accepted connections and received
    /// datagrams into segments. Returns whether anything moved.
    fn pump(&mut self, now: Instant) -> bool {
        let mut moved = false;
        let mut i = 0;
        while i < self.conns.len() {
            let (m, done) = pump_conn(&mut self.conns[i], &mut self.sockets, now);
            moved |= m;
            if done {
                let conn = self.conns.swap_remove(i);
                self.sockets.remove(conn.handle);
            } else {
                i += 1;
            }
        }
        let mut i = 0;
        while i < self.listeners.len() {
            match self.pump_listener(i) {
                Some(m) => {
                    moved |= m;
                    i += 1;
                }
                None => {
                    let l = self.listeners.swap_remove(i);
                    for h in l.handles {
                        self.sockets.remove(h);
                    }
                }
            }
        }
        let sockets = &mut self.sockets;
        self.udp.retain(|u| {
            let Some(core) = u.core.upgrade() else {
                sockets.remove(u.handle);
                return false;
            };
            let sock = sockets.get_mut::<udp::Socket>(u.handle);
            while let Ok((data, meta)) = sock.recv() {
                moved = true;
                let from = endpoint_addr(meta.endpoint, core.family);
                // A connected UDP socket hears only its peer.
                if let Some(peer) = core.remote.borrow().as_ref() {
                    if *peer != from {
                        continue;
                    }
                }
                let mut rx = core.rx.borrow_mut();
                if rx.room(data.len(), true) == 0 || rx.read_closed {
                    continue;
                }
                let mut seg = Segment::new(data.to_vec(), Ucred::default());
                seg.from = Some(from);
                rx.push(seg);
            }
            true
        });
        moved
    }

    /// One listening socket's handshakes; `None` once it no longer listens.
    fn pump_listener(&mut self, index: usize) -> Option<bool> {
        let core = self.listeners[index].core.upgrade()?;
        if !core.listening() {
            return None;
        }
        let endpoint = self.listeners[index].endpoint;
        let mut moved = false;
        for slot in 0..self.listeners[index].handles.len() {
            let handle = self.listeners[index].handles[slot];
            let sock = self.sockets.get_mut::<tcp::Socket>(handle);
            match sock.state() {
                tcp::State::Listen | tcp::State::SynReceived => continue,
                tcp::State::Closed => {
                    // A reset during the handshake: listen again.
                    let _ = sock.listen(endpoint);
                    continue;
                }
                _ => {}
            }
            moved = true;
            let (local, remote) = (sock.local_endpoint(), sock.remote_endpoint());
            let fresh = self.listening_socket(&core, endpoint);
            match fresh {
                Some(h) => self.listeners[index].handles[slot] = h,
                None => {
                    self.listeners[index].handles.swap_remove(slot);
                }
            }
            let (Some(local), Some(remote)) = (local, remote) else {
                self.sockets.remove(handle);
                continue;
            };
            let tx = Rc::new(RefCell::new(Queue::new(send_buffer(&core))));
            tx.borrow_mut().wire = true;
            let server = core.accept_from_wire(
                endpoint_addr(local, core.family),
                endpoint_addr(remote, core.family),
                tx.clone(),
            );
            match server {
                Some(server) => self.conns.push(Conn {
                    core: Rc::downgrade(&server),
                    handle,
                    tx,
                    phase: Phase::Open,
                    closed: false,
                    eof: false,
                }),
                None => {
                    // The accept queue is full: refuse, as a reset.
                    self.sockets.get_mut::<tcp::Socket>(handle).abort();
                    self.conns.push(Conn {
                        core: Weak::new(),
                        handle,
                        tx,
                        phase: Phase::Open,
                        closed: true,
                        eof: true,
                    });
                }
            }
            // Only one slot per pass: the handle list changed.
            break;
        }
        Some(moved)
    }
}

/// How much of an application's writes the socket layer holds before
/// they go into smoltcp's own send buffer.
fn send_buffer(core: &Core) -> usize {
    core.option(crate::net::SOL_SOCKET, crate::net::SO_SNDBUF)
        .unwrap_or(16_384)
        .max(4096) as usize
}

/// One connection's pump; returns (moved, finished).
fn pump_conn(conn: &mut Conn, sockets: &mut SocketSet<'static>, now: Instant) -> (bool, bool) {
    let sock = sockets.get_mut::<tcp::Socket>(conn.handle);
    let core = conn.core.upgrade();
    let mut moved = false;
    if let Phase::Connecting(started) = conn.phase {
        match sock.state() {
            tcp::State::SynSent | tcp::State::SynReceived => return (false, false),
            tcp::State::Closed | tcp::State::TimeWait | tcp::State::Listen => {
                if let Some(core) = core {
                    // A reset answered the SYN, or the SYNs went unanswered.
                    let error = if now - started >= CONNECT_TIMEOUT {
                        Errno::ETIMEDOUT
                    } else {
                        Errno::ECONNREFUSED
                    };
                    *core.state.borrow_mut() = State::Unconnected;
                    core.connecting.set(false);
                    core.fail(error);
                }
                return (true, true);
            }
            _ => {
                conn.phase = Phase::Open;
                if let Some(core) = &core {
                    conn.tx.borrow_mut().capacity = send_buffer(core);
                    core.connecting.set(false);
                    core.changed();
                }
                moved = true;
            }
        }
    }
    {
        let mut tx = conn.tx.borrow_mut();
        if tx.reset && !conn.closed {
            // Closed with data unread: Linux resets the connection.
            sock.abort();
            conn.closed = true;
            conn.eof = true;
            return (true, false);
        }
        while sock.can_send() && !tx.is_empty() {
            let sent = sock.send(|buf| {
                let got = tx.take(buf, false, false);
                (got.len, got.len)
            });
            match sent {
                Ok(n) if n > 0 => moved = true,
                _ => break,
            }
        }
        if tx.write_closed && tx.is_empty() && !conn.closed {
            sock.close();
            conn.closed = true;
            moved = true;
        }
    }
    if let Some(core) = &core {
        let mut rx = core.rx.borrow_mut();
        while sock.can_recv() && !rx.read_closed {
            let space = rx.capacity.saturating_sub(rx.len());
            if space == 0 {
                break;
            }
            let got = sock.recv(|data| {
                let n = data.len().min(space);
                (n, data[..n].to_vec())
            });
            match got {
                Ok(data) if !data.is_empty() => {
                    rx.push(Segment::new(data, Ucred::default()));
                    moved = true;
                }
                _ => break,
            }
        }
        if rx.read_closed && sock.can_recv() {
            // shutdown(SHUT_RD) or close: what arrives is dropped.
            let _ = sock.recv(|data| (data.len(), ()));
        }
        if !conn.eof && !sock.may_recv() && sock.recv_queue() == 0 {
            conn.eof = true;
            moved = true;
            if sock.state() == tcp::State::Closed && !conn.closed {
                // The peer reset the connection.
                rx.reset = true;
                conn.tx.borrow_mut().read_closed = true;
            }
            rx.close_write();
        }
    }
    let finished = sock.state() == tcp::State::Closed && (core.is_none() || conn.eof);
    // The application's socket is gone: close once what it wrote has gone
    // into smoltcp (a reply larger than smoltcp's buffer, then close(2),
    // must reach the peer whole, as Linux sends an orphaned socket's data).
    if core.is_none() && !conn.closed && conn.tx.borrow().is_empty() {
        sock.close();
        conn.closed = true;
    }
    (moved, finished)
}

fn prefix_match(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let full = usize::from(prefix / 8);
    if a.len() != b.len() || a.len() < full || a[..full] != b[..full] {
        return false;
    }
    let rest = prefix % 8;
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    a.get(full)
        .zip(b.get(full))
        .is_some_and(|(x, y)| x & mask == y & mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_by_bit() {
        assert!(prefix_match(&[10, 88, 0, 7], &[10, 88, 0, 1], 24));
        assert!(!prefix_match(&[10, 88, 1, 7], &[10, 88, 0, 1], 24));
        assert!(prefix_match(&[10, 88, 0, 200], &[10, 88, 0, 129], 25));
        assert!(!prefix_match(&[10, 88, 0, 100], &[10, 88, 0, 129], 25));
        assert!(prefix_match(&[1, 2, 3, 4], &[9, 9, 9, 9], 0));
    }
}
