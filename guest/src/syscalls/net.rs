//! Socket system calls: decode addresses, messages and control data, find
//! sockets by name (`crate::net::Net`), and call the socket
//! (`crate::net::socket`).

use alloc::rc::Rc;
use alloc::vec;
use alloc::vec::Vec;

use crate::errno::{Errno, Result};
use crate::fs::fd::{File, O_CLOEXEC, O_NONBLOCK, O_RDWR};
use crate::fs::fuse::S_IFMT;
use crate::kernel::Kernel;
use crate::net::addr::{Ip, SockAddr, UnixName, AF_INET, AF_INET6, AF_NETLINK, AF_UNIX};
use crate::net::netlink::NETLINK_ROUTE;
use crate::net::queue::{Segment, Ucred};
use crate::net::socket::{
    family_accepts, loopback_source, send_copy, socket_of, unnamed, Core, Kind, State, SEND_CHUNK,
};
use crate::net::*;

/// `sizeof(struct sockaddr_storage)`: the longest address a call reads.
const SOCKADDR_MAX: u32 = 128;
/// `struct msghdr` and `struct mmsghdr` on x86-64.
const MSGHDR_SIZE: usize = 56;
const MMSGHDR_SIZE: usize = 64;
const CMSG_HDR: usize = 16;
const UIO_MAXIOV: u64 = 1024;
/// Linux's ESOCKTNOSUPPORT: a socket type the family does not have.
const ESOCKTNOSUPPORT: Errno = Errno(94);
/// What SO_PEERCRED reports without a peer: no pid, the overflow ids.
const NO_PEER: Ucred = Ucred {
    pid: 0,
    uid: 65534,
    gid: 65534,
};

fn align8(n: usize) -> usize {
    (n + 7) & !7
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

/// A message to send, as decoded from the caller.
#[derive(Default)]
struct Outgoing {
    data: Vec<u8>,
    to: Option<SockAddr>,
    rights: Vec<Rc<dyn File>>,
    cred: Option<Ucred>,
    /// IPV6_HOPLIMIT and IPV6_TCLASS control messages.
    hop_limit: Option<u8>,
    tclass: Option<u8>,
}

impl Outgoing {
    /// The segment that carries the message's data and descriptors.
    fn segment(&mut self, cred: Ucred) -> Segment {
        let mut seg = Segment::new(core::mem::take(&mut self.data), cred);
        seg.rights = core::mem::take(&mut self.rights);
        seg
    }
}

/// Where a received message goes: the buffers and the caller's room for
/// the address and control data.
struct Incoming {
    /// (address, length) of each buffer: only what a receive fills is
    /// touched (and so backed), however large the buffers.
    bufs: Vec<(u64, usize)>,
    name: u64,
    name_room: u32,
    control: u64,
    control_room: usize,
}

/// What a receive wrote back (recvmsg's msg_namelen, msg_controllen,
/// msg_flags) and its result.
struct Delivered {
    len: usize,
    name_len: u32,
    control_len: usize,
    flags: u32,
}

impl Kernel {
    /// The socket behind `fd` and whether its open file is non-blocking.
    fn socket(&self, fd: i32) -> Result<(Rc<Core>, bool)> {
        let file = self.proc().fds.file(fd)?;
        let sock = socket_of(&*file).ok_or(Errno::ENOTSOCK)?;
        Ok((sock.core.clone(), sock.nonblocking()))
    }

    /// The caller's credentials as a socket reports them: its process id
    /// and effective ids (SO_PEERCRED), or its real ids (SCM_CREDENTIALS).
    fn ucred(&self, effective: bool) -> Ucred {
        let creds = &self.proc().creds;
        let (uid, gid) = if effective {
            (creds.euid, creds.egid)
        } else {
            (creds.uid, creds.gid)
        };
        Ucred {
            pid: self.procs.tgid(self.cur),
            uid,
            gid,
        }
    }

    fn install_socket(&mut self, core: Rc<Core>, flags: u32) -> Result<u64> {
        let file = crate::net::socket::Socket::new(core, O_RDWR | (flags & O_NONBLOCK));
        self.install(Rc::new(file), flags & O_CLOEXEC != 0)
    }

    fn user_sockaddr(&mut self, ptr: u64, len: u32) -> Result<SockAddr> {
        if len > SOCKADDR_MAX {
            return Err(Errno::EINVAL);
        }
        let raw = self.user_buf(ptr, len as usize)?.to_vec();
        SockAddr::parse(&raw)
    }

    /// Writes `addr` for the caller (truncated to its room) and the full
    /// length to `len_ptr`, as accept, recvfrom and getsockname do.
    fn put_sockaddr(&mut self, ptr: u64, len_ptr: u64, encoded: &[u8]) -> Result<()> {
        if len_ptr == 0 {
            return Ok(());
        }
        let room = u32_at(self.user_buf(len_ptr, 4)?, 0);
        if (room as i32) < 0 {
            return Err(Errno::EINVAL);
        }
        let n = (room as usize).min(encoded.len());
        if n > 0 {
            self.put_user(ptr, &encoded[..n])?;
        }
        self.put_user(len_ptr, &(encoded.len() as u32).to_le_bytes())
    }

    /// The unix socket a name refers to: a path is walked (ENOENT,
    /// ENOTDIR, ...) and must be a socket somebody bound.
    fn unix_target(&mut self, name: &UnixName) -> Result<Rc<Core>> {
        let key = match name {
            UnixName::Unnamed => return Err(Errno::EINVAL),
            UnixName::Abstract(n) => UnixKey::Abstract(n.clone()),
            UnixName::Path(p) => {
                let walk = self.walk_from_cwd(p, true)?;
                if walk.mode & S_IFMT != S_IFSOCK {
                    return Err(Errno::ECONNREFUSED);
                }
                UnixKey::Path(walk.node)
            }
        };
        self.net.unix(&key).ok_or(Errno::ECONNREFUSED)
    }

    /// An inet destination: the address must suit the socket's family,
    /// and be local (loopback, the interface's own) or reached through
    /// the interface. The unspecified address means the local host.
    fn inet_destination(&self, core: &Core, addr: &SockAddr) -> Result<(Ip, u16)> {
        let SockAddr::Inet { ip, port, .. } = addr else {
            return Err(wrong_family(core));
        };
        if !family_accepts(core.family, ip) {
            return Err(wrong_family(core));
        }
        if self.net.is_remote(ip) && !self.net.wire.as_ref().is_some_and(|w| w.routes(ip)) {
            return Err(Errno::ENETUNREACH);
        }
        let ip = if ip.is_unspecified() {
            loopback_source(core.family, &Ip::V4([127, 0, 0, 1]))
        } else {
            *ip
        };
        if *port == 0 {
            return Err(Errno::ECONNREFUSED);
        }
        Ok((ip, *port))
    }

    /// The address an inet socket sends from to reach `to`: its bound port
    /// (binding an ephemeral one first if it has none) on the loopback
    /// address of `to`'s family when bound to the wildcard.
    fn inet_source(&mut self, core: &Rc<Core>, to: &Ip) -> Result<SockAddr> {
        if core.local.borrow().is_none() {
            if core.kind != Kind::Dgram {
                // A connecting stream socket's port is not bound.
                let port = self.net.client_port();
                return Ok(SockAddr::inet(loopback_source(core.family, to), port));
            }
            self.autobind_inet(core)?;
        }
        core.source_for(to).ok_or(Errno::EINVAL)
    }

    /// Binds an unbound inet socket to an ephemeral port on the wildcard
    /// address, as Linux does at listen, or at a datagram socket's first
    /// send or connect.
    fn autobind_inet(&mut self, core: &Rc<Core>) -> Result<()> {
        let wildcard = Ip::unspecified(core.family);
        let port = self.net.bind_port(core, wildcard, 0)?;
        *core.local.borrow_mut() = Some(SockAddr::inet(wildcard, port));
        Ok(())
    }

    pub fn sys_socket(&mut self, domain: u32, typ: u32, protocol: u32) -> Result<u64> {
        let flags = typ & (O_NONBLOCK | O_CLOEXEC);
        if typ & !(SOCK_TYPE_MASK | O_NONBLOCK | O_CLOEXEC) != 0 {
            return Err(Errno::EINVAL);
        }
        let family = domain as u16;
        if family == AF_NETLINK && domain <= u32::from(u16::MAX) {
            // Raw and datagram netlink sockets are the same thing.
            if !matches!(typ & SOCK_TYPE_MASK, 2 | 3) {
                return Err(ESOCKTNOSUPPORT);
            }
            if protocol != NETLINK_ROUTE {
                return Err(Errno::EPROTONOSUPPORT);
            }
            let core = Rc::new(Core::new(AF_NETLINK, Kind::Dgram, 0, self.ucred(true)));
            return self.install_socket(core, flags);
        }
        let kind = Kind::from_type(typ & SOCK_TYPE_MASK);
        let (kind, protocol) = match (family, kind) {
            _ if domain > u32::from(u16::MAX) => return Err(Errno::EAFNOSUPPORT),
            (AF_UNIX, Some(kind)) if protocol == 0 || protocol == u32::from(AF_UNIX) => (kind, 0),
            (AF_UNIX, Some(_)) => return Err(Errno::EPROTONOSUPPORT),
            (AF_UNIX, None) => return Err(ESOCKTNOSUPPORT),
            (AF_INET | AF_INET6, Some(Kind::Stream)) if matches!(protocol, 0 | IPPROTO_TCP) => {
                (Kind::Stream, IPPROTO_TCP)
            }
            (AF_INET | AF_INET6, Some(Kind::Dgram)) if matches!(protocol, 0 | IPPROTO_UDP) => {
                (Kind::Dgram, IPPROTO_UDP)
            }
            (AF_INET | AF_INET6, Some(Kind::Dgram)) if protocol == IPPROTO_UDPLITE => {
                (Kind::Dgram, IPPROTO_UDPLITE)
            }
            // Raw sockets need CAP_NET_RAW, which no process here has.
            (AF_INET | AF_INET6, _) if typ & SOCK_TYPE_MASK == 3 => return Err(Errno::EPERM),
            (AF_INET | AF_INET6, _) => return Err(Errno::EPROTONOSUPPORT),
            _ => return Err(Errno::EAFNOSUPPORT),
        };
        let core = Rc::new(Core::new(family, kind, protocol, self.ucred(true)));
        self.install_socket(core, flags)
    }

    pub fn sys_socketpair(&mut self, domain: u32, typ: u32, protocol: u32, sv: u64) -> Result<u64> {
        if domain != u32::from(AF_UNIX) {
            return Err(
                if domain == u32::from(AF_INET) || domain == u32::from(AF_INET6) {
                    Errno::EOPNOTSUPP
                } else {
                    Errno::EAFNOSUPPORT
                },
            );
        }
        if typ & !(SOCK_TYPE_MASK | O_NONBLOCK | O_CLOEXEC) != 0 {
            return Err(Errno::EINVAL);
        }
        let kind = Kind::from_type(typ & SOCK_TYPE_MASK).ok_or(ESOCKTNOSUPPORT)?;
        if protocol != 0 && protocol != u32::from(AF_UNIX) {
            return Err(Errno::EPROTONOSUPPORT);
        }
        self.user_buf_mut(sv, 8)?;
        let cred = self.ucred(true);
        let a = Rc::new(Core::new(AF_UNIX, kind, 0, cred));
        let b = Rc::new(Core::new(AF_UNIX, kind, 0, cred));
        for (me, them) in [(&a, &b), (&b, &a)] {
            *me.state.borrow_mut() = if kind.connection() {
                State::Connected {
                    peer: Rc::downgrade(them),
                    tx: them.rx.clone(),
                }
            } else {
                State::Associated {
                    peer: Rc::downgrade(them),
                }
            };
            *me.remote.borrow_mut() = Some(unnamed());
            me.peer_cred.set(Some(cred));
        }
        let flags = typ & (O_NONBLOCK | O_CLOEXEC);
        let fa = self.install_socket(a, flags)?;
        let fb = match self.install_socket(b, flags) {
            Ok(fb) => fb,
            Err(e) => {
                let _ = self.sys_close(fa as i32);
                return Err(e);
            }
        };
        let mut out = [0u8; 8];
        out[..4].copy_from_slice(&(fa as i32).to_le_bytes());
        out[4..].copy_from_slice(&(fb as i32).to_le_bytes());
        self.put_user(sv, &out)?;
        Ok(0)
    }

    pub fn sys_bind(&mut self, fd: i32, addr: u64, len: u32) -> Result<u64> {
        let (core, _) = self.socket(fd)?;
        let addr = self.user_sockaddr(addr, len)?;
        if core.local.borrow().is_some() {
            return Err(Errno::EINVAL);
        }
        match (core.family, addr) {
            (AF_UNIX, SockAddr::Unix(name)) => {
                let name = match name {
                    UnixName::Unnamed => UnixName::Abstract(self.net.autobind_name()?),
                    other => other,
                };
                let key = match &name {
                    UnixName::Path(path) => self.bind_socket_path(path)?,
                    UnixName::Abstract(n) => UnixKey::Abstract(n.clone()),
                    UnixName::Unnamed => return Err(Errno::EINVAL),
                };
                self.net.bind_unix(key, &core)?;
                *core.local.borrow_mut() = Some(SockAddr::Unix(name));
            }
            (AF_UNIX, _) => return Err(Errno::EINVAL),
            (AF_NETLINK, SockAddr::Netlink { port, groups }) => {
                self.bind_netlink(&core, port, groups)?;
            }
            (AF_NETLINK, _) => return Err(Errno::EINVAL),
            (_, SockAddr::Inet { ip, port, .. }) => {
                if !family_accepts(core.family, &ip) {
                    return Err(wrong_family(&core));
                }
                if self.net.is_remote(&ip) {
                    return Err(Errno::EADDRNOTAVAIL);
                }
                let port = self.net.bind_port(&core, ip, port)?;
                *core.local.borrow_mut() = Some(SockAddr::inet(ip, port));
            }
            (AF_INET, _) => return Err(Errno::EAFNOSUPPORT),
            _ => return Err(Errno::EINVAL),
        }
        Ok(0)
    }

    /// Binds a netlink socket to `port` (0: the process id if free) and
    /// multicast `groups`; returns the port.
    fn bind_netlink(&mut self, core: &Rc<Core>, port: u32, groups: u32) -> Result<u32> {
        let port = self
            .net
            .bind_netlink(core, port, self.procs.tgid(self.cur))?;
        *core.local.borrow_mut() = Some(SockAddr::Netlink { port, groups });
        Ok(port)
    }

    /// Creates the socket file a path bind makes (EADDRINUSE if the name
    /// exists) and returns its node.
    fn bind_socket_path(&mut self, path: &[u8]) -> Result<UnixKey> {
        let (dir, name) = {
            let (p, dev) = self.proc_and_dev();
            dev.vfs.walk_parent(&p.cwd, path)?
        };
        if name.is_empty() || name == b"." || name == b".." {
            return Err(Errno::EADDRINUSE);
        }
        let node = self
            .mknod_in(&dir, &name, S_IFSOCK, 0o777, 0)
            .map_err(|e| {
                if e == Errno::EEXIST {
                    Errno::EADDRINUSE
                } else {
                    e
                }
            })?;
        Ok(UnixKey::Path(node))
    }

    pub fn sys_listen(&mut self, fd: i32, backlog: i32) -> Result<u64> {
        let (core, _) = self.socket(fd)?;
        if !core.kind.connection() {
            return Err(Errno::EOPNOTSUPP);
        }
        if core.local.borrow().is_none() {
            if core.family == AF_UNIX {
                return Err(Errno::EINVAL);
            }
            self.autobind_inet(&core)?;
        }
        core.listen(backlog, self.ucred(true))?;
        if let Some(SockAddr::Inet { ip, port, .. }) = core.local.borrow().clone() {
            self.net.listen_wire(&core, ip, port);
        }
        Ok(0)
    }

    pub fn sys_connect(&mut self, fd: i32, addr: u64, len: u32) -> Result<u64> {
        let (core, nonblocking) = self.socket(fd)?;
        let addr = self.user_sockaddr(addr, len)?;
        if core.kind == Kind::Dgram {
            return self.associate(&core, addr);
        }
        if core.connecting.get() {
            // A handshake through the interface is under way.
            return Err(if nonblocking {
                Errno::EALREADY
            } else {
                Errno::EBLOCK
            });
        }
        if core.connect_started.get() {
            // The second connect after EINPROGRESS reports the outcome.
            core.connect_started.set(false);
            if let Some(e) = core.take_error() {
                return Err(e);
            }
            if core.connected() {
                return Ok(0);
            }
        }
        if core.connected() {
            return Err(Errno::EISCONN);
        }
        if core.listening() {
            return Err(if core.family == AF_UNIX {
                Errno::EINVAL
            } else {
                Errno::EISCONN
            });
        }
        let cred = self.ucred(true);
        if core.family == AF_UNIX {
            let SockAddr::Unix(name) = addr else {
                return Err(Errno::EINVAL);
            };
            let listener = self.unix_target(&name)?;
            let to = listener.local.borrow().clone().unwrap_or_else(unnamed);
            let local = core.local.borrow().clone().unwrap_or_else(unnamed);
            core.connect_to(&listener, local, to, cred, nonblocking)?;
            return Ok(0);
        }
        let (ip, port) = self.inet_destination(&core, &addr)?;
        if self.net.is_remote(&ip) {
            let local_port = match core.local.borrow().clone() {
                Some(SockAddr::Inet { port, .. }) => port,
                _ => self.net.client_port(),
            };
            let now = self.clock.monotonic_ns();
            let Some(wire) = &mut self.net.wire else {
                return Err(Errno::ENETUNREACH);
            };
            wire.connect(&core, local_port, (ip, port), now)?;
            core.cred.set(cred);
            // Both report the outcome at the next connect: a blocking one
            // waits for it (its call is retried once the handshake ends).
            core.connect_started.set(true);
            return Err(if nonblocking {
                Errno::EINPROGRESS
            } else {
                Errno::EBLOCK
            });
        }
        let Some(listener) = self.net.find_port(IPPROTO_TCP, ip, port) else {
            if nonblocking {
                core.connect_started.set(true);
                core.fail(Errno::ECONNREFUSED);
                return Err(Errno::EINPROGRESS);
            }
            return Err(Errno::ECONNREFUSED);
        };
        let local = self.inet_source(&core, &ip)?;
        core.connect_to(
            &listener,
            local,
            SockAddr::inet(ip, port),
            cred,
            nonblocking,
        )?;
        if nonblocking {
            // Linux answers a non-blocking TCP connect before its
            // handshake, also over loopback; it is writable at once.
            core.connect_started.set(true);
            return Err(Errno::EINPROGRESS);
        }
        Ok(0)
    }

    /// connect(2) of a datagram socket: its default destination and the
    /// only sender it receives from; AF_UNSPEC dissolves it.
    fn associate(&mut self, core: &Rc<Core>, addr: SockAddr) -> Result<u64> {
        if addr == SockAddr::Unspec {
            *core.state.borrow_mut() = State::Unconnected;
            *core.remote.borrow_mut() = None;
            return Ok(0);
        }
        if core.family == AF_NETLINK {
            // Only the kernel (port 0) answers.
            let SockAddr::Netlink { port: 0, .. } = addr else {
                return Err(Errno::ECONNREFUSED);
            };
            *core.remote.borrow_mut() = Some(addr);
            return Ok(0);
        }
        let (peer, remote) = if core.family == AF_UNIX {
            let SockAddr::Unix(name) = addr else {
                return Err(Errno::EINVAL);
            };
            let target = self.unix_target(&name)?;
            if target.kind != core.kind {
                return Err(Errno::EPROTOTYPE);
            }
            let remote = target.local.borrow().clone().unwrap_or_else(unnamed);
            (Rc::downgrade(&target), remote)
        } else {
            let (ip, port) = self.inet_destination(core, &addr)?;
            self.inet_source(core, &ip)?;
            // The socket bound there now; a send by address (send, sendto,
            // write) finds whoever is bound at its time.
            let target = self.net.find_port(core.protocol, ip, port);
            let peer = target
                .as_ref()
                .map_or_else(alloc::rc::Weak::new, Rc::downgrade);
            (peer, SockAddr::inet(ip, port))
        };
        *core.state.borrow_mut() = State::Associated { peer };
        *core.remote.borrow_mut() = Some(remote);
        core.peer_cred.set(None);
        core.changed();
        Ok(0)
    }

    pub fn sys_accept4(&mut self, fd: i32, addr: u64, addr_len: u64, flags: u32) -> Result<u64> {
        if flags & !(O_NONBLOCK | O_CLOEXEC) != 0 {
            return Err(Errno::EINVAL);
        }
        let (core, nonblocking) = self.socket(fd)?;
        if !core.kind.connection() {
            return Err(Errno::EOPNOTSUPP);
        }
        let conn = core.accept(nonblocking)?;
        let peer = conn
            .remote
            .borrow()
            .clone()
            .unwrap_or_else(unnamed)
            .encode(conn.family);
        let fd = self.install_socket(conn, flags)?;
        // Without a buffer the length is ignored, as on Linux.
        if addr != 0 {
            if let Err(e) = self.put_sockaddr(addr, addr_len, &peer) {
                let _ = self.sys_close(fd as i32);
                return Err(e);
            }
        }
        Ok(fd)
    }

    /// Sends one message; the SIGPIPE of a broken connection unless
    /// MSG_NOSIGNAL.
    fn send_message(&mut self, fd: i32, mut msg: Outgoing, flags: u32) -> Result<usize> {
        let (core, nonblocking) = self.socket(fd)?;
        if core.family == AF_NETLINK {
            return self.send_netlink(&core, msg);
        }
        let nonblocking = nonblocking || flags & MSG_DONTWAIT != 0;
        if flags & MSG_OOB != 0 && core.family == AF_UNIX {
            return Err(Errno::EOPNOTSUPP);
        }
        let own = self.ucred(false);
        let cred = msg.cred.unwrap_or(own);
        if core.family != AF_UNIX && !msg.rights.is_empty() {
            return Err(Errno::EINVAL);
        }
        let result = if core.kind.connection() {
            match (&msg.to, core.family) {
                // TCP ignores a destination on a connection; unix refuses one.
                (Some(_), AF_UNIX) => Err(if core.connected() {
                    Errno::EISCONN
                } else {
                    Errno::EOPNOTSUPP
                }),
                _ => core.send(msg.segment(cred), None, nonblocking),
            }
        } else {
            self.send_datagram(&core, msg, cred, nonblocking)
        };
        if result == Err(Errno::EPIPE) && flags & MSG_NOSIGNAL == 0 {
            let cur = self.cur;
            self.post_signal(cur, crate::task::signal::SIGPIPE);
        }
        result
    }

    /// A request to the kernel's route netlink: answered at once into the
    /// socket's own queue, from port 0.
    fn send_netlink(&mut self, core: &Rc<Core>, msg: Outgoing) -> Result<usize> {
        if !matches!(msg.to, None | Some(SockAddr::Netlink { port: 0, .. })) {
            return Err(Errno::ECONNREFUSED);
        }
        let bound = core.local.borrow().clone();
        let port = match bound {
            Some(SockAddr::Netlink { port, .. }) => port,
            // Linux binds an unbound netlink socket at its first send.
            _ => self.bind_netlink(core, 0, 0)?,
        };
        let reply = crate::net::netlink::respond(&msg.data, self.net.device(), port);
        if !reply.is_empty() {
            let mut seg = Segment::new(reply, self.ucred(false));
            seg.cred = Ucred::default();
            seg.from = Some(SockAddr::Netlink { port: 0, groups: 0 });
            core.rx.borrow_mut().push(seg);
        }
        Ok(msg.data.len())
    }

    fn send_datagram(
        &mut self,
        core: &Rc<Core>,
        mut msg: Outgoing,
        cred: Ucred,
        nonblocking: bool,
    ) -> Result<usize> {
        let to = match msg.to.take().or_else(|| core.remote.borrow().clone()) {
            Some(to) => to,
            None => return Err(Errno::EDESTADDRREQ),
        };
        if core.family == AF_UNIX {
            let SockAddr::Unix(name) = &to else {
                return Err(Errno::EINVAL);
            };
            let target = self.unix_target(name)?;
            return core.send(msg.segment(cred), Some(&target), nonblocking);
        }
        let (ip, port) = self.inet_destination(core, &to)?;
        let from = self.inet_source(core, &ip)?;
        if self.net.is_remote(&ip) {
            let bound = match core.local.borrow().clone() {
                Some(SockAddr::Inet { ip, port, .. }) => (ip, port),
                _ => return Err(Errno::EINVAL),
            };
            let Some(wire) = &mut self.net.wire else {
                return Err(Errno::ENETUNREACH);
            };
            return wire.send_udp(core, bound, (ip, port), &msg.data);
        }
        // The socket's own hop limit and traffic class unless the message
        // set them.
        let hops = core.option(SOL_IPV6, IPV6_UNICAST_HOPS).unwrap_or(64);
        let tclass = core.option(SOL_IPV6, IPV6_TCLASS).unwrap_or(0);
        match self.net.find_port(core.protocol, ip, port) {
            Some(target) => {
                let mut seg = msg.segment(cred);
                seg.from = Some(from);
                seg.hop_limit = msg.hop_limit.unwrap_or(hops as u8);
                seg.tclass = msg.tclass.unwrap_or(tclass as u8);
                core.send(seg, Some(&target), nonblocking)
            }
            None => {
                if msg.data.len() > UDP_MAX_PAYLOAD {
                    return Err(Errno::EMSGSIZE);
                }
                // Nobody listens: the datagram is lost, and a connected
                // socket hears of it (Linux's ICMP port unreachable).
                if matches!(*core.state.borrow(), State::Associated { .. }) {
                    core.fail(Errno::ECONNREFUSED);
                }
                Ok(msg.data.len())
            }
        }
    }

    /// Receives one message into `into`.
    fn recv_message(&mut self, fd: i32, into: Incoming, flags: u32) -> Result<Delivered> {
        let (core, nonblocking) = self.socket(fd)?;
        let nonblocking = nonblocking || flags & MSG_DONTWAIT != 0;
        if flags & MSG_OOB != 0 {
            return Err(if core.family == AF_UNIX {
                Errno::EOPNOTSUPP
            } else {
                Errno::EINVAL
            });
        }
        let total: usize = into.bufs.iter().map(|b| b.1).sum();
        // Staged no larger than what can arrive: the caller's buffer may be
        // far larger than the kernel's heap. One byte stands for "some" so
        // an empty socket still blocks or reports its end.
        let mut staging = vec![0u8; total.min(core.readable().max(1))];
        let wait_for = if flags & MSG_WAITALL != 0 { total } else { 0 };
        let got = core.recv(&mut staging, nonblocking, flags & MSG_PEEK != 0, wait_for)?;
        let mut at = 0;
        for (base, room) in into.bufs {
            if at == got.len {
                break;
            }
            let n = room.min(got.len - at);
            self.put_user(base, &staging[at..at + n])?;
            at += n;
        }
        let mut out_flags = 0;
        let mut len = got.len;
        if got.full_len > got.len {
            out_flags |= MSG_TRUNC;
            if flags & MSG_TRUNC != 0 {
                len = got.full_len;
            }
        }
        // The sender's address: a datagram's, or nothing for streams.
        let name = match (&got.from, core.kind) {
            (Some(from), Kind::Dgram) => from.encode(core.family),
            _ => Vec::new(),
        };
        let name = match name.as_slice() {
            // An unnamed unix sender has no address to report.
            [_, _] => Vec::new(),
            _ => name,
        };
        let name_len = name.len() as u32;
        if into.name != 0 && !name.is_empty() {
            let n = (into.name_room as usize).min(name.len());
            self.put_user(into.name, &name[..n])?;
        }
        // Control data: credentials when asked for (SO_PASSCRED), the IPv6
        // hop limit and traffic class (RFC 3542), then descriptors.
        let mut control = ControlOut::new(into.control_room);
        if core.family == AF_UNIX && core.flag(SOL_SOCKET, SO_PASSCRED) {
            let cred = got.cred.unwrap_or(NO_PEER).to_bytes();
            control.put(SOL_SOCKET, SCM_CREDENTIALS, &cred);
        }
        if core.family == AF_INET6 && core.kind == Kind::Dgram {
            if core.flag(SOL_IPV6, IPV6_RECVHOPLIMIT) {
                let v = i32::from(got.hop_limit).to_le_bytes();
                control.put(SOL_IPV6, IPV6_HOPLIMIT, &v);
            }
            if core.flag(SOL_IPV6, IPV6_RECVTCLASS) {
                let v = i32::from(got.tclass).to_le_bytes();
                control.put(SOL_IPV6, IPV6_TCLASS, &v);
            }
        }
        if !got.rights.is_empty() {
            // As many descriptors as fit; the rest are closed.
            let room = control.fd_room();
            let mut fds = Vec::new();
            for file in got.rights.iter().take(room) {
                let fd = self.install(file.clone(), flags & MSG_CMSG_CLOEXEC != 0)?;
                fds.extend_from_slice(&(fd as i32).to_le_bytes());
            }
            if room < got.rights.len() {
                control.truncated = true;
            }
            if !fds.is_empty() {
                control.put(SOL_SOCKET, SCM_RIGHTS, &fds);
            }
        }
        if control.truncated {
            out_flags |= MSG_CTRUNC;
        }
        if !control.bytes.is_empty() {
            self.put_user(into.control, &control.bytes)?;
        }
        let control = control.bytes;
        Ok(Delivered {
            len,
            name_len,
            control_len: control.len(),
            flags: out_flags,
        })
    }

    pub fn sys_sendto(
        &mut self,
        fd: i32,
        buf: u64,
        len: u64,
        flags: u32,
        addr: u64,
        addr_len: u32,
    ) -> Result<u64> {
        let (core, _) = self.socket(fd)?;
        let data = send_copy(core.kind, self.user_buf(buf, len as usize)?)?;
        let to = if addr == 0 {
            None
        } else {
            Some(self.user_sockaddr(addr, addr_len)?)
        };
        let msg = Outgoing {
            data,
            to,
            ..Outgoing::default()
        };
        self.send_message(fd, msg, flags).map(|n| n as u64)
    }

    pub fn sys_recvfrom(
        &mut self,
        fd: i32,
        buf: u64,
        len: u64,
        flags: u32,
        addr: u64,
        addr_len: u64,
    ) -> Result<u64> {
        self.socket(fd)?;
        let name_room = if addr != 0 && addr_len != 0 {
            u32_at(self.user_buf(addr_len, 4)?, 0)
        } else {
            0
        };
        let into = Incoming {
            bufs: vec![(buf, len as usize)],
            name: addr,
            name_room,
            control: 0,
            control_room: 0,
        };
        let got = self.recv_message(fd, into, flags)?;
        if addr != 0 && addr_len != 0 {
            self.put_user(addr_len, &got.name_len.to_le_bytes())?;
        }
        Ok(got.len as u64)
    }

    /// Decodes a `struct msghdr` to send: data, destination and control
    /// messages (SCM_RIGHTS, SCM_CREDENTIALS).
    fn outgoing(&mut self, hdr: &[u8], unix: bool, stream: bool) -> Result<Outgoing> {
        let (name, name_len) = (u64_at(hdr, 0), u32_at(hdr, 8));
        let (iov, iov_len) = (u64_at(hdr, 16), u64_at(hdr, 24));
        let (control, control_len) = (u64_at(hdr, 32), u64_at(hdr, 40));
        if iov_len > UIO_MAXIOV {
            return Err(Errno::EMSGSIZE);
        }
        let mut data = Vec::new();
        let parts = self.iovecs(iov, iov_len, false)?;
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if !stream && total > SEND_CHUNK {
            return Err(Errno::EMSGSIZE);
        }
        for part in parts {
            let take = part.len().min(SEND_CHUNK - data.len());
            data.extend_from_slice(&part[..take]);
        }
        let to = if name != 0 && name_len != 0 {
            Some(self.user_sockaddr(name, name_len)?)
        } else {
            None
        };
        let mut msg = Outgoing {
            data,
            to,
            ..Outgoing::default()
        };
        if control == 0 || control_len == 0 {
            return Ok(msg);
        }
        // Linux's net.core.optmem_max bounds control data.
        if control_len > 128 * 1024 {
            return Err(Errno::ENOBUFS);
        }
        let raw = self.user_buf(control, control_len as usize)?.to_vec();
        let mut at = 0;
        while at + CMSG_HDR <= raw.len() {
            let len = u64_at(&raw, at) as usize;
            let (level, kind) = (u32_at(&raw, at + 8), u32_at(&raw, at + 12));
            if len < CMSG_HDR || len > raw.len() - at {
                return Err(Errno::EINVAL);
            }
            let data = &raw[at + CMSG_HDR..at + len];
            match (level, kind) {
                (SOL_SOCKET, SCM_RIGHTS) => {
                    if !unix {
                        return Err(Errno::EINVAL);
                    }
                    if data.len() / 4 + msg.rights.len() > SCM_MAX_FD {
                        return Err(Errno::EINVAL);
                    }
                    for fd in data.chunks_exact(4) {
                        let fd = i32::from_le_bytes([fd[0], fd[1], fd[2], fd[3]]);
                        msg.rights.push(self.proc().fds.file(fd)?);
                    }
                }
                (SOL_SOCKET, SCM_CREDENTIALS) => {
                    if !unix || data.len() < 12 {
                        return Err(Errno::EINVAL);
                    }
                    let given = Ucred {
                        pid: u32_at(data, 0) as i32,
                        uid: u32_at(data, 4),
                        gid: u32_at(data, 8),
                    };
                    let own = self.ucred(false);
                    let creds = &self.proc().creds;
                    // Without privilege a process may only claim its own ids.
                    use crate::task::capability::{CAP_SETGID, CAP_SETUID, CAP_SYS_ADMIN};
                    let uid_ok = creds.capable(CAP_SETUID)
                        || [creds.uid, creds.euid, creds.suid].contains(&given.uid);
                    let gid_ok = creds.capable(CAP_SETGID)
                        || [creds.gid, creds.egid, creds.sgid].contains(&given.gid);
                    let pid_ok = given.pid == own.pid || creds.capable(CAP_SYS_ADMIN);
                    if !pid_ok || !uid_ok || !gid_ok {
                        return Err(Errno::EPERM);
                    }
                    msg.cred = Some(given);
                }
                (SOL_SOCKET, _) => return Err(Errno::EINVAL),
                (SOL_IPV6, IPV6_HOPLIMIT | IPV6_TCLASS) if !unix => {
                    // An int from -1 (the socket's default) to 255.
                    let v = u32_at(data, 0) as i32;
                    if data.len() < 4 || !(-1..=255).contains(&v) {
                        return Err(Errno::EINVAL);
                    }
                    let v = u8::try_from(v).ok();
                    if kind == IPV6_HOPLIMIT {
                        msg.hop_limit = v;
                    } else {
                        msg.tclass = v;
                    }
                }
                // IP-level control messages (IP_PKTINFO, IP_TOS, ...) change
                // nothing on loopback.
                _ if !unix => {}
                _ => return Err(Errno::EINVAL),
            }
            at += align8(len);
        }
        Ok(msg)
    }

    /// The (address, length) pairs of an iovec array, as readv checks them.
    fn iovec_list(&mut self, iov: u64, count: u64) -> Result<Vec<(u64, usize)>> {
        let raw = self.user_buf(iov, count as usize * 16)?;
        let list: Vec<(u64, usize)> = raw
            .chunks_exact(16)
            .map(|v| (u64_at(v, 0), u64_at(v, 8) as usize))
            .collect();
        if list.iter().any(|&(_, len)| len > isize::MAX as usize) {
            return Err(Errno::EINVAL);
        }
        Ok(list)
    }

    fn incoming(&mut self, hdr: &[u8]) -> Result<Incoming> {
        let (name, name_room) = (u64_at(hdr, 0), u32_at(hdr, 8));
        let (iov, iov_len) = (u64_at(hdr, 16), u64_at(hdr, 24));
        let (control, control_room) = (u64_at(hdr, 32), u64_at(hdr, 40));
        if iov_len > UIO_MAXIOV {
            return Err(Errno::EMSGSIZE);
        }
        if control != 0 && control_room > 0 {
            self.user_buf_mut(control, control_room as usize)?;
        }
        Ok(Incoming {
            bufs: self.iovec_list(iov, iov_len)?,
            name,
            name_room,
            control,
            control_room: if control == 0 {
                0
            } else {
                control_room as usize
            },
        })
    }

    pub fn sys_sendmsg(&mut self, fd: i32, msg: u64, flags: u32) -> Result<u64> {
        let (core, _) = self.socket(fd)?;
        let hdr = self.user_buf(msg, MSGHDR_SIZE)?.to_vec();
        let out = self.outgoing(&hdr, core.family == AF_UNIX, core.kind != Kind::Dgram)?;
        self.send_message(fd, out, flags).map(|n| n as u64)
    }

    /// Writes a receive's lengths and flags back into its `struct msghdr`.
    fn finish_msghdr(&mut self, msg: u64, got: &Delivered) -> Result<()> {
        self.put_user(msg + 8, &got.name_len.to_le_bytes())?;
        self.put_user(msg + 40, &(got.control_len as u64).to_le_bytes())?;
        self.put_user(msg + 48, &got.flags.to_le_bytes())
    }

    pub fn sys_recvmsg(&mut self, fd: i32, msg: u64, flags: u32) -> Result<u64> {
        self.socket(fd)?;
        let hdr = self.user_buf_mut(msg, MSGHDR_SIZE)?.to_vec();
        let into = self.incoming(&hdr)?;
        let got = self.recv_message(fd, into, flags)?;
        self.finish_msghdr(msg, &got)?;
        Ok(got.len as u64)
    }

    pub fn sys_sendmmsg(&mut self, fd: i32, vec: u64, vlen: u32, flags: u32) -> Result<u64> {
        let (core, _) = self.socket(fd)?;
        let vlen = u64::from(vlen).min(UIO_MAXIOV);
        let mut sent = 0u64;
        for i in 0..vlen {
            let at = vec + i * MMSGHDR_SIZE as u64;
            let result = self
                .user_buf(at, MMSGHDR_SIZE)
                .map(|h| h.to_vec())
                .and_then(|hdr| {
                    self.outgoing(&hdr, core.family == AF_UNIX, core.kind != Kind::Dgram)
                })
                .and_then(|out| self.send_message(fd, out, flags));
            match result {
                Ok(n) => self.put_user(at + MSGHDR_SIZE as u64, &(n as u32).to_le_bytes())?,
                Err(_) if sent > 0 => break,
                Err(e) => return Err(e),
            }
            sent += 1;
        }
        Ok(sent)
    }

    /// recvmmsg: the first message as recvmsg would wait for it, the rest
    /// only if already there (Linux's MSG_WAITFORONE; without it Linux
    /// would also wait for the rest until the timeout).
    pub fn sys_recvmmsg(
        &mut self,
        fd: i32,
        vec: u64,
        vlen: u32,
        flags: u32,
        timeout: u64,
    ) -> Result<u64> {
        self.socket(fd)?;
        if timeout != 0 {
            self.timespec_ns(timeout)?;
        }
        let vlen = u64::from(vlen).min(UIO_MAXIOV);
        let mut got_count = 0u64;
        for i in 0..vlen {
            let at = vec + i * MMSGHDR_SIZE as u64;
            let flags = if i == 0 { flags } else { flags | MSG_DONTWAIT };
            let result = self
                .user_buf_mut(at, MMSGHDR_SIZE)
                .map(|h| h.to_vec())
                .and_then(|hdr| self.incoming(&hdr))
                .and_then(|into| self.recv_message(fd, into, flags));
            match result {
                Ok(got) => {
                    self.finish_msghdr(at, &got)?;
                    self.put_user(at + MSGHDR_SIZE as u64, &(got.len as u32).to_le_bytes())?;
                }
                Err(_) if got_count > 0 => break,
                Err(e) => return Err(e),
            }
            got_count += 1;
        }
        Ok(got_count)
    }

    pub fn sys_shutdown(&mut self, fd: i32, how: u32) -> Result<u64> {
        let (core, _) = self.socket(fd)?;
        core.shutdown(how).map(|_| 0)
    }

    pub fn sys_getsockname(&mut self, fd: i32, addr: u64, addr_len: u64) -> Result<u64> {
        let (core, _) = self.socket(fd)?;
        // A connected socket bound to the wildcard reports the address its
        // connection uses.
        let remote = core.remote.borrow().clone();
        let local = match remote {
            Some(SockAddr::Inet { ip: to, .. }) if core.connected() => core.source_for(&to),
            _ => core.local.borrow().clone(),
        };
        let local = local.unwrap_or(match core.family {
            AF_UNIX => unnamed(),
            AF_NETLINK => SockAddr::Netlink { port: 0, groups: 0 },
            family => SockAddr::inet(Ip::unspecified(family), 0),
        });
        self.put_sockaddr(addr, addr_len, &local.encode(core.family))?;
        Ok(0)
    }

    pub fn sys_getpeername(&mut self, fd: i32, addr: u64, addr_len: u64) -> Result<u64> {
        let (core, _) = self.socket(fd)?;
        let live = match &*core.state.borrow() {
            State::Connected { .. } | State::Associated { .. } => true,
            State::Unconnected | State::Listening { .. } => false,
        };
        let remote = core.remote.borrow().clone().filter(|_| live);
        let remote = remote.ok_or(Errno::ENOTCONN)?;
        self.put_sockaddr(addr, addr_len, &remote.encode(core.family))?;
        Ok(0)
    }

    pub fn sys_setsockopt(
        &mut self,
        fd: i32,
        level: u32,
        name: u32,
        value: u64,
        len: u32,
    ) -> Result<u64> {
        let (core, _) = self.socket(fd)?;
        if (len as i32) < 0 {
            return Err(Errno::EINVAL);
        }
        // No option value is longer than a struct timeval; what is past it
        // is not read, as Linux reads only what an option needs.
        let raw = self.user_buf(value, (len as usize).min(64))?.to_vec();
        let int = || -> Result<i32> {
            raw.get(..4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or(Errno::EINVAL)
        };
        match (level, name) {
            (SOL_SOCKET, SO_LINGER) => {
                if raw.len() < 8 {
                    return Err(Errno::EINVAL);
                }
                core.linger.set((int()?, u32_at(&raw, 4) as i32));
            }
            (SOL_SOCKET, SO_RCVTIMEO | SO_SNDTIMEO) => {
                let ns = crate::syscalls::time::timeval_ns(raw.get(..16).ok_or(Errno::EINVAL)?)
                    .map_err(|_| Errno::EDOM)?;
                let (r, s) = core.timeouts.get();
                core.timeouts.set(if name == SO_RCVTIMEO {
                    (ns, s)
                } else {
                    (r, ns)
                });
            }
            (SOL_SOCKET, SO_SNDBUF | SO_RCVBUF | SO_SNDBUFFORCE | SO_RCVBUFFORCE) => {
                // As Linux: doubled for bookkeeping, within its limits.
                let want = int()?.clamp(0, 212_992);
                let (name, floor) = match name {
                    SO_SNDBUF | SO_SNDBUFFORCE => (SO_SNDBUF, 4608),
                    _ => (SO_RCVBUF, 2304),
                };
                let size = (want * 2).max(floor);
                core.options.borrow_mut().insert((SOL_SOCKET, name), size);
                if name == SO_RCVBUF {
                    core.rx.borrow_mut().capacity = size as usize;
                }
            }
            (SOL_SOCKET, SO_BINDTODEVICE) => {
                let dev = raw.split(|&b| b == 0).next().unwrap_or(&[]);
                if !dev.is_empty() && !crate::net::netlink::has_interface(dev, self.net.device()) {
                    return Err(Errno::ENODEV);
                }
            }
            (SOL_TCP, _) if !core.is_tcp() => return Err(Errno::EOPNOTSUPP),
            (SOL_IP | SOL_IPV6, _) if core.family == AF_UNIX => return Err(Errno::EOPNOTSUPP),
            (SOL_IPV6, IPV6_V6ONLY) if core.local.borrow().is_some() => return Err(Errno::EINVAL),
            (SOL_IP, IP_TTL) | (SOL_IPV6, IPV6_UNICAST_HOPS) => {
                let v = int()?;
                if !(-1..=255).contains(&v) || v == 0 {
                    return Err(Errno::EINVAL);
                }
                core.options
                    .borrow_mut()
                    .insert((level, name), if v == -1 { 64 } else { v });
            }
            (SOL_TCP, TCP_KEEPIDLE | TCP_KEEPINTVL | TCP_KEEPCNT) => {
                let v = int()?;
                if v < 1 || v > if name == TCP_KEEPCNT { 127 } else { 32767 } {
                    return Err(Errno::EINVAL);
                }
                core.options.borrow_mut().insert((level, name), v);
            }
            _ => {
                let v = int()?;
                let mut options = core.options.borrow_mut();
                let slot = options.get_mut(&(level, name)).ok_or(Errno::ENOPROTOOPT)?;
                *slot = if is_flag(level, name) {
                    i32::from(v != 0)
                } else {
                    v
                };
            }
        }
        Ok(0)
    }

    pub fn sys_getsockopt(
        &mut self,
        fd: i32,
        level: u32,
        name: u32,
        value: u64,
        len: u64,
    ) -> Result<u64> {
        let (core, _) = self.socket(fd)?;
        let room = u32_at(self.user_buf(len, 4)?, 0) as i32;
        if room < 0 {
            return Err(Errno::EINVAL);
        }
        let int = |v: i32| v.to_le_bytes().to_vec();
        let bytes: Vec<u8> = match (level, name) {
            (SOL_SOCKET, SO_TYPE) => int(core.kind.sock_type() as i32),
            (SOL_SOCKET, SO_ERROR) => int(core.take_error().map_or(0, |e| e.0)),
            (SOL_SOCKET, SO_ACCEPTCONN) => int(i32::from(core.listening())),
            (SOL_SOCKET, SO_DOMAIN) => int(i32::from(core.family)),
            (SOL_SOCKET, SO_PROTOCOL) => int(core.protocol as i32),
            (SOL_SOCKET, SO_PEERCRED) => {
                let c = core
                    .peer_cred
                    .get()
                    .filter(|_| core.family == AF_UNIX)
                    .unwrap_or(NO_PEER);
                c.to_bytes().to_vec()
            }
            (SOL_SOCKET, SO_LINGER) => {
                let (on, secs) = core.linger.get();
                let mut b = on.to_le_bytes().to_vec();
                b.extend_from_slice(&secs.to_le_bytes());
                b
            }
            (SOL_SOCKET, SO_RCVTIMEO | SO_SNDTIMEO) => {
                let (r, s) = core.timeouts.get();
                crate::task::cputime::timeval(if name == SO_RCVTIMEO { r } else { s }).to_vec()
            }
            (SOL_TCP, _) if !core.is_tcp() => return Err(Errno::EOPNOTSUPP),
            (SOL_IP | SOL_IPV6, _) if core.family == AF_UNIX => return Err(Errno::EOPNOTSUPP),
            _ => int(core.option(level, name).ok_or(Errno::ENOPROTOOPT)?),
        };
        let n = (room as usize).min(bytes.len());
        self.put_user(value, &bytes[..n])?;
        self.put_user(len, &(n as u32).to_le_bytes())?;
        Ok(0)
    }

    /// FIONREAD and SIOCOUTQ of a socket (an int for the caller), and the
    /// interface ioctls any socket answers (`struct ifreq`).
    pub fn socket_ioctl(&mut self, file: &Rc<dyn File>, request: u32, arg: u64) -> Result<u64> {
        use crate::net::netlink::{self, IFREQ_SIZE};
        if request == netlink::SIOCGIFCONF {
            // struct ifconf: an int length, then a pointer to the records
            // (none: report the length they need).
            let conf = self.user_buf_mut(arg, 16)?.to_vec();
            let room = u32_at(&conf, 0) as usize;
            let records = u64_at(&conf, 8);
            let list = netlink::interface_list(self.net.device());
            let n = if records == 0 {
                list.len()
            } else {
                list.len().min(room / IFREQ_SIZE * IFREQ_SIZE)
            };
            if records != 0 && n > 0 {
                self.put_user(records, &list[..n])?;
            }
            self.put_user(arg, &(n as u32).to_le_bytes())?;
            return Ok(0);
        }
        if (0x8900..=0x89ff).contains(&request) {
            let mut ifreq = [0u8; IFREQ_SIZE];
            ifreq.copy_from_slice(self.user_buf_mut(arg, IFREQ_SIZE)?);
            netlink::interface_request(request, &mut ifreq, self.net.device())?;
            self.put_user(arg, &ifreq)?;
            return Ok(0);
        }
        let n = file.ioctl(&mut self.dev, request, arg)?;
        self.put_user(arg, &(n as i32).to_le_bytes())?;
        Ok(0)
    }
}

/// The error for an address of the other IP family: an IPv4 socket does
/// not know IPv6 (EAFNOSUPPORT), an IPv6 one finds it too short (EINVAL).
fn wrong_family(core: &Core) -> Errno {
    if core.family == AF_INET {
        Errno::EAFNOSUPPORT
    } else {
        Errno::EINVAL
    }
}

/// Whether an option holds a boolean (Linux reports 1 for any non-zero set).
fn is_flag(level: u32, name: u32) -> bool {
    matches!(
        (level, name),
        (
            SOL_SOCKET,
            SO_REUSEADDR
                | SO_KEEPALIVE
                | SO_BROADCAST
                | SO_OOBINLINE
                | SO_REUSEPORT
                | SO_PASSCRED
                | SO_DONTROUTE
                | SO_TIMESTAMP
        ) | (SOL_TCP, TCP_NODELAY | TCP_CORK | TCP_QUICKACK)
            | (SOL_IPV6, IPV6_V6ONLY)
            | (SOL_IP, IP_RECVERR | IP_PKTINFO | IP_MULTICAST_LOOP)
    )
}

/// Control messages written as Linux's put_cmsg writes them: a message
/// that does not fit whole is cut to the room left (its length says so)
/// and the receive is flagged MSG_CTRUNC; without room for a header,
/// nothing is written.
struct ControlOut {
    bytes: Vec<u8>,
    room: usize,
    truncated: bool,
}

impl ControlOut {
    fn new(room: usize) -> Self {
        Self {
            bytes: Vec::new(),
            room,
            truncated: false,
        }
    }

    fn left(&self) -> usize {
        self.room - self.bytes.len()
    }

    /// How many descriptors an SCM_RIGHTS message could carry now.
    fn fd_room(&self) -> usize {
        self.left().saturating_sub(CMSG_HDR) / 4
    }

    fn put(&mut self, level: u32, kind: u32, data: &[u8]) {
        let left = self.left();
        if left < CMSG_HDR {
            self.truncated = true;
            return;
        }
        let mut len = CMSG_HDR + data.len();
        if len > left {
            self.truncated = true;
            len = left;
        }
        let start = self.bytes.len();
        self.bytes.extend_from_slice(&(len as u64).to_le_bytes());
        self.bytes.extend_from_slice(&level.to_le_bytes());
        self.bytes.extend_from_slice(&kind.to_le_bytes());
        self.bytes.extend_from_slice(&data[..len - CMSG_HDR]);
        let space = (CMSG_HDR + align8(data.len())).min(left);
        self.bytes.resize(start + space, 0);
    }
}
