//! Sockets: `AF_UNIX` (path names, the abstract namespace, pairs) and
//! `AF_INET`/`AF_INET6` over loopback, all inside the guest.
//!
//! `socket` is the socket itself (every family and type), `queue` what it
//! receives, `addr` the addresses applications pass; `Net` here is the
//! namespace that finds a socket by name: bound unix paths (by the file
//! system node bind created), abstract names, and bound ports.

pub mod addr;
pub mod netlink;
pub mod queue;
pub mod socket;
pub mod wire;

use alloc::collections::BTreeMap;
use alloc::rc::{Rc, Weak};
use alloc::vec::Vec;

use crate::errno::{Errno, Result};
use crate::fs::vfs::Node;
use addr::{Ip, SockAddr, AF_INET6, EPHEMERAL_PORTS};
use socket::Core;

pub const SOCK_STREAM: u32 = 1;
pub const SOCK_DGRAM: u32 = 2;
pub const SOCK_SEQPACKET: u32 = 5;
pub const SOCK_TYPE_MASK: u32 = 0xf;
pub const IPPROTO_TCP: u32 = 6;
pub const IPPROTO_UDP: u32 = 17;
pub const IPPROTO_UDPLITE: u32 = 136;

pub const SOL_SOCKET: u32 = 1;
pub const SOL_IP: u32 = 0;
pub const SOL_TCP: u32 = 6;
pub const SOL_UDP: u32 = 17;
pub const SOL_IPV6: u32 = 41;

pub const SO_DEBUG: u32 = 1;
pub const SO_REUSEADDR: u32 = 2;
pub const SO_TYPE: u32 = 3;
pub const SO_ERROR: u32 = 4;
pub const SO_DONTROUTE: u32 = 5;
pub const SO_BROADCAST: u32 = 6;
pub const SO_SNDBUF: u32 = 7;
pub const SO_RCVBUF: u32 = 8;
pub const SO_KEEPALIVE: u32 = 9;
pub const SO_OOBINLINE: u32 = 10;
pub const SO_PRIORITY: u32 = 12;
pub const SO_LINGER: u32 = 13;
pub const SO_REUSEPORT: u32 = 15;
pub const SO_PASSCRED: u32 = 16;
pub const SO_PEERCRED: u32 = 17;
pub const SO_RCVLOWAT: u32 = 18;
pub const SO_SNDLOWAT: u32 = 19;
pub const SO_RCVTIMEO: u32 = 20;
pub const SO_SNDTIMEO: u32 = 21;
pub const SO_BINDTODEVICE: u32 = 25;
pub const SO_TIMESTAMP: u32 = 29;
pub const SO_ACCEPTCONN: u32 = 30;
pub const SO_SNDBUFFORCE: u32 = 32;
pub const SO_RCVBUFFORCE: u32 = 33;
pub const SO_MARK: u32 = 36;
pub const SO_PROTOCOL: u32 = 38;
pub const SO_DOMAIN: u32 = 39;

pub const TCP_NODELAY: u32 = 1;
pub const TCP_MAXSEG: u32 = 2;
pub const TCP_CORK: u32 = 3;
pub const TCP_KEEPIDLE: u32 = 4;
pub const TCP_KEEPINTVL: u32 = 5;
pub const TCP_KEEPCNT: u32 = 6;
pub const TCP_SYNCNT: u32 = 7;
pub const TCP_LINGER2: u32 = 8;
pub const TCP_DEFER_ACCEPT: u32 = 9;
pub const TCP_WINDOW_CLAMP: u32 = 10;
pub const TCP_QUICKACK: u32 = 12;
pub const TCP_USER_TIMEOUT: u32 = 18;
pub const TCP_FASTOPEN: u32 = 23;
pub const TCP_NOTSENT_LOWAT: u32 = 25;

pub const IP_TOS: u32 = 1;
pub const IP_TTL: u32 = 2;
pub const IP_PKTINFO: u32 = 8;
pub const IP_MTU_DISCOVER: u32 = 10;
pub const IP_RECVERR: u32 = 11;
pub const IP_MULTICAST_TTL: u32 = 33;
pub const IP_MULTICAST_LOOP: u32 = 34;
pub const IPV6_UNICAST_HOPS: u32 = 16;
pub const IPV6_MULTICAST_HOPS: u32 = 18;
pub const IPV6_MULTICAST_LOOP: u32 = 19;
pub const IPV6_V6ONLY: u32 = 26;
pub const IPV6_RECVPKTINFO: u32 = 49;
pub const IPV6_RECVHOPLIMIT: u32 = 51;
pub const IPV6_HOPLIMIT: u32 = 52;
pub const IPV6_RECVTCLASS: u32 = 66;
pub const IPV6_TCLASS: u32 = 67;

pub const SCM_RIGHTS: u32 = 1;
pub const SCM_CREDENTIALS: u32 = 2;
/// The most descriptors one SCM_RIGHTS message carries (Linux's SCM_MAX_FD).
pub const SCM_MAX_FD: usize = 253;

pub const MSG_OOB: u32 = 0x1;
pub const MSG_PEEK: u32 = 0x2;
pub const MSG_CTRUNC: u32 = 0x8;
pub const MSG_TRUNC: u32 = 0x20;
pub const MSG_DONTWAIT: u32 = 0x40;
pub const MSG_EOR: u32 = 0x80;
pub const MSG_WAITALL: u32 = 0x100;
pub const MSG_NOSIGNAL: u32 = 0x4000;
pub const MSG_MORE: u32 = 0x8000;
pub const MSG_WAITFORONE: u32 = 0x10000;
pub const MSG_CMSG_CLOEXEC: u32 = 0x4000_0000;

pub const SHUT_RD: u32 = 0;
pub const SHUT_WR: u32 = 1;
pub const SHUT_RDWR: u32 = 2;

pub const FIONREAD: u32 = 0x541b;
pub const SIOCOUTQ: u32 = 0x5411;
pub const S_IFSOCK: u32 = 0o140000;
/// net.core.somaxconn.
pub const SOMAXCONN: i32 = 4096;
/// The largest UDP payload over IPv4.
pub const UDP_MAX_PAYLOAD: usize = 65_507;
/// The largest seqpacket message beyond the buffer size Linux accepts.
pub const SOCK_MAX_MESSAGE: usize = 212_992;

/// A unix socket's key in the namespace.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum UnixKey {
    Path(Node),
    Abstract(Vec<u8>),
}

/// Where sockets are found by name. Entries are weak: a closed socket's
/// name is free again (a path stays on disk and refuses connections, as
/// on Linux), and dead entries are pruned as they are met.
#[derive(Default)]
pub struct Net {
    unix: BTreeMap<UnixKey, Weak<Core>>,
    /// Bound inet sockets by (protocol, port).
    ports: BTreeMap<(u32, u16), Vec<Weak<Core>>>,
    next_port: u16,
    next_autobind: u32,
    /// Bound netlink sockets by port id.
    netlink: BTreeMap<u32, Weak<Core>>,
    /// The network interface, when the VMM gave the guest one.
    pub wire: Option<wire::Wire>,
}

/// Which of TCP, UDP and UDP-Lite an inet socket speaks (each has ports
/// of its own).
pub fn transport(core: &Core) -> u32 {
    core.protocol
}

impl Net {
    /// The configuration of the interface the network device stands in
    /// for, if the VMM gave the guest one.
    pub fn device(&self) -> Option<&capsa_abi::NetConfig> {
        self.wire.as_ref().map(|w| &w.config)
    }

    /// Whether `ip` is one of the interface's own addresses (traffic to
    /// it stays in the guest, as loopback's does).
    pub fn is_own(&self, ip: &Ip) -> bool {
        self.wire.as_ref().is_some_and(|w| w.is_own(ip))
    }

    /// Whether traffic to `ip` leaves the guest through the interface.
    pub fn is_remote(&self, ip: &Ip) -> bool {
        !ip.is_local() && !self.is_own(ip)
    }

    /// Whether a socket bound to `ip` is reachable through the interface.
    fn reached_by_wire(&self, ip: &Ip) -> bool {
        self.wire.is_some() && (ip.is_unspecified() || self.is_own(ip))
    }

    /// Lets a listening TCP socket bound to `ip`:`port` take connections
    /// through the interface too.
    pub fn listen_wire(&mut self, core: &Rc<Core>, ip: Ip, port: u16) {
        if self.reached_by_wire(&ip) {
            if let Some(w) = &mut self.wire {
                w.listen(core, &ip, port);
            }
        }
    }

    pub fn unix(&mut self, key: &UnixKey) -> Option<Rc<Core>> {
        let found = self.unix.get(key)?.upgrade();
        if found.is_none() {
            self.unix.remove(key);
        }
        found
    }

    /// Binds a unix name; an abstract name in use is EADDRINUSE (a path
    /// in use already failed to be created).
    pub fn bind_unix(&mut self, key: UnixKey, core: &Rc<Core>) -> Result<()> {
        if self.unix(&key).is_some() {
            return Err(Errno::EADDRINUSE);
        }
        self.unix.insert(key, Rc::downgrade(core));
        Ok(())
    }

    /// The abstract name a unix socket bound without a name gets: five hex
    /// digits, as Linux's autobind.
    pub fn autobind_name(&mut self) -> Result<Vec<u8>> {
        for _ in 0..0x10_0000 {
            self.next_autobind = (self.next_autobind + 1) & 0xf_ffff;
            let name = alloc::format!("{:05x}", self.next_autobind).into_bytes();
            if self.unix(&UnixKey::Abstract(name.clone())).is_none() {
                return Ok(name);
            }
        }
        Err(Errno::EADDRINUSE)
    }

    /// Binds a netlink socket to `port`; 0 picks the process id if free
    /// (as Linux's autobind), else a free negative one.
    pub fn bind_netlink(&mut self, core: &Rc<Core>, port: u32, tgid: i32) -> Result<u32> {
        self.netlink.retain(|_, w| w.strong_count() > 0);
        let port = if port != 0 {
            port
        } else if !self.netlink.contains_key(&(tgid as u32)) {
            tgid as u32
        } else {
            (1..=u32::MAX / 2)
                .map(|n| (-(n as i64)) as u32)
                .find(|p| !self.netlink.contains_key(p))
                .ok_or(Errno::EADDRINUSE)?
        };
        if self.netlink.contains_key(&port) {
            return Err(Errno::EADDRINUSE);
        }
        self.netlink.insert(port, Rc::downgrade(core));
        Ok(port)
    }

    fn live(&mut self, proto: u32, port: u16) -> Vec<Rc<Core>> {
        let Some(list) = self.ports.get_mut(&(proto, port)) else {
            return Vec::new();
        };
        list.retain(|w| w.strong_count() > 0);
        list.iter().filter_map(Weak::upgrade).collect()
    }

    /// Binds `core` to `ip`:`port` (0: an ephemeral port); returns the port.
    /// Two sockets may share a port when their addresses cannot meet, or
    /// when both set SO_REUSEPORT (or both SO_REUSEADDR, for UDP).
    pub fn bind_port(&mut self, core: &Rc<Core>, ip: Ip, port: u16) -> Result<u16> {
        let proto = transport(core);
        let port = if port == 0 {
            self.ephemeral(proto, core, ip)?
        } else {
            port
        };
        for other in self.live(proto, port) {
            if clashes(core, ip, &other) {
                return Err(Errno::EADDRINUSE);
            }
        }
        self.ports
            .entry((proto, port))
            .or_default()
            .push(Rc::downgrade(core));
        if core.kind == socket::Kind::Dgram && self.reached_by_wire(&ip) {
            if let Some(w) = &mut self.wire {
                w.bind_udp(core, &ip, port);
            }
        }
        Ok(port)
    }

    fn ephemeral(&mut self, proto: u32, core: &Rc<Core>, ip: Ip) -> Result<u16> {
        let span = EPHEMERAL_PORTS.end() - EPHEMERAL_PORTS.start() + 1;
        for _ in 0..span {
            self.next_port = (self.next_port + 1) % span;
            let port = EPHEMERAL_PORTS.start() + self.next_port;
            if self
                .live(proto, port)
                .iter()
                .all(|other| !clashes(core, ip, other))
            {
                return Ok(port);
            }
        }
        Err(Errno::EADDRINUSE)
    }

    /// A port for a connecting socket that has none: ephemeral, not
    /// registered (only bound sockets are found by port).
    pub fn client_port(&mut self) -> u16 {
        let span = EPHEMERAL_PORTS.end() - EPHEMERAL_PORTS.start() + 1;
        self.next_port = (self.next_port + 1) % span;
        EPHEMERAL_PORTS.start() + self.next_port
    }

    /// The socket a packet to `ip`:`port` reaches: one bound to that exact
    /// address before one bound to the wildcard; an IPv6 wildcard takes
    /// IPv4 too unless IPV6_V6ONLY.
    pub fn find_port(&mut self, proto: u32, ip: Ip, port: u16) -> Option<Rc<Core>> {
        let mut wildcard = None;
        for other in self.live(proto, port) {
            let Some(SockAddr::Inet { ip: bound, .. }) = other.local.borrow().clone() else {
                continue;
            };
            if proto == IPPROTO_TCP && !other.listening() {
                continue;
            }
            if same_ip(bound, ip) {
                return Some(other);
            }
            if bound.is_unspecified() && reaches(&other, ip) && wildcard.is_none() {
                wildcard = Some(other.clone());
            }
        }
        wildcard
    }
}

fn same_ip(a: Ip, b: Ip) -> bool {
    match (a.as_v4(), b.as_v4()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// Whether a wildcard-bound socket receives traffic to `ip`.
fn reaches(core: &Core, ip: Ip) -> bool {
    match (core.family, ip.as_v4()) {
        (AF_INET6, Some(_)) => !core.flag(SOL_IPV6, IPV6_V6ONLY),
        (AF_INET6, None) => true,
        (_, v4) => v4.is_some(),
    }
}

/// Whether binding `core` to `ip` conflicts with `other`'s binding.
fn clashes(core: &Core, ip: Ip, other: &Core) -> bool {
    let Some(SockAddr::Inet { ip: theirs, .. }) = other.local.borrow().clone() else {
        return false;
    };
    let both = |name| core.flag(SOL_SOCKET, name) && other.flag(SOL_SOCKET, name);
    if both(SO_REUSEPORT) || (core.kind == socket::Kind::Dgram && both(SO_REUSEADDR)) {
        return false;
    }
    match (ip.is_unspecified(), theirs.is_unspecified()) {
        (false, false) => same_ip(ip, theirs),
        (true, false) => reaches(core, theirs),
        (false, true) => reaches(other, ip),
        // Two wildcards: the same family, or an IPv6 one that takes IPv4.
        (true, true) => {
            let v6 = if core.family == AF_INET6 { core } else { other };
            core.family == other.family || reaches(v6, Ip::V4([0; 4]))
        }
    }
}
