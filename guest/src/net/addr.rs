//! Socket addresses as the application passes them (`struct sockaddr_un`,
//! `sockaddr_in`, `sockaddr_in6`): decoded once at the system call and
//! encoded back for getsockname, getpeername, accept and recvfrom.

use alloc::vec::Vec;

use crate::errno::{Errno, Result};

pub const AF_UNSPEC: u16 = 0;
pub const AF_UNIX: u16 = 1;
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const AF_NETLINK: u16 = 16;

/// `sizeof(struct sockaddr_un)`: the family and 108 bytes of path.
pub const SUN_LEN: usize = 110;
const SUN_PATH_MAX: usize = 108;

/// The ports Linux hands out to sockets that bind port 0 or connect
/// unbound (net.ipv4.ip_local_port_range).
pub const EPHEMERAL_PORTS: core::ops::RangeInclusive<u16> = 32768..=60999;

/// An IP address; IPv4 addresses of IPv6 sockets are the mapped form
/// `::ffff:a.b.c.d`, as Linux reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Ip {
    V4([u8; 4]),
    V6([u8; 16]),
}

impl Ip {
    /// The wildcard address of a socket of `family`.
    pub fn unspecified(family: u16) -> Ip {
        if family == AF_INET6 {
            Ip::V6([0; 16])
        } else {
            Ip::V4([0; 4])
        }
    }

    pub fn is_unspecified(&self) -> bool {
        match self {
            Ip::V4(a) => *a == [0; 4],
            Ip::V6(a) => *a == [0; 16],
        }
    }

    /// The IPv4 address itself, also when given in the mapped form.
    pub fn as_v4(&self) -> Option<[u8; 4]> {
        match self {
            Ip::V4(a) => Some(*a),
            Ip::V6(a) if a[..10] == [0; 10] && a[10..12] == [0xff, 0xff] => {
                Some([a[12], a[13], a[14], a[15]])
            }
            Ip::V6(_) => None,
        }
    }

    /// Whether traffic to this address stays on the loopback interface:
    /// 127/8, ::1, and the unspecified addresses (a connect to 0.0.0.0
    /// reaches the host itself on Linux).
    pub fn is_local(&self) -> bool {
        match (self.as_v4(), self) {
            (Some(a), _) => a[0] == 127 || a == [0; 4],
            (None, Ip::V6(a)) => *a == LOOPBACK_V6 || *a == [0; 16],
            (None, Ip::V4(_)) => false,
        }
    }

    /// The same address as an IPv6 socket sees it.
    pub fn to_v6(self) -> Ip {
        match self {
            Ip::V4(a) => {
                let mut m = [0u8; 16];
                m[10] = 0xff;
                m[11] = 0xff;
                m[12..].copy_from_slice(&a);
                Ip::V6(m)
            }
            v6 => v6,
        }
    }
}

pub const LOOPBACK_V6: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// A unix socket's name: a path (as given to bind, which getsockname
/// reports back), an abstract name (leading NUL, any bytes), or none.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum UnixName {
    Unnamed,
    Path(Vec<u8>),
    Abstract(Vec<u8>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SockAddr {
    Unix(UnixName),
    Inet {
        ip: Ip,
        port: u16,
        /// sin6_flowinfo and sin6_scope_id, kept to be echoed back.
        flow: u32,
        scope: u32,
    },
    /// `AF_NETLINK`: a port (0: the kernel) and multicast groups.
    Netlink {
        port: u32,
        groups: u32,
    },
    /// `AF_UNSPEC`: connect with it dissolves a datagram association.
    Unspec,
}

impl SockAddr {
    pub fn inet(ip: Ip, port: u16) -> Self {
        SockAddr::Inet {
            ip,
            port,
            flow: 0,
            scope: 0,
        }
    }

    /// Decodes what the application passed, as Linux checks it: a length
    /// too short for the family is EINVAL; an unknown family
    /// EAFNOSUPPORT.
    pub fn parse(raw: &[u8]) -> Result<Self> {
        let family = u16::from_le_bytes(
            raw.get(..2)
                .ok_or(Errno::EINVAL)?
                .try_into()
                .map_err(|_| Errno::EINVAL)?,
        );
        match family {
            AF_UNSPEC => Ok(SockAddr::Unspec),
            AF_UNIX => {
                if raw.len() > SUN_LEN {
                    return Err(Errno::EINVAL);
                }
                let path = &raw[2..];
                Ok(SockAddr::Unix(match path.first() {
                    None => UnixName::Unnamed,
                    Some(0) => UnixName::Abstract(path[1..].to_vec()),
                    // A path ends at its first NUL, as Linux's unix_mkname.
                    Some(_) => {
                        let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
                        UnixName::Path(path[..end].to_vec())
                    }
                }))
            }
            AF_INET => {
                let b = raw.get(..16).ok_or(Errno::EINVAL)?;
                Ok(SockAddr::inet(
                    Ip::V4([b[4], b[5], b[6], b[7]]),
                    u16::from_be_bytes([b[2], b[3]]),
                ))
            }
            AF_INET6 => {
                let b = raw.get(..24).ok_or(Errno::EINVAL)?;
                let mut ip = [0u8; 16];
                ip.copy_from_slice(&b[8..24]);
                let scope = raw
                    .get(24..28)
                    .map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]));
                Ok(SockAddr::Inet {
                    ip: Ip::V6(ip),
                    port: u16::from_be_bytes([b[2], b[3]]),
                    flow: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
                    scope,
                })
            }
            AF_NETLINK => {
                let b = raw.get(..12).ok_or(Errno::EINVAL)?;
                Ok(SockAddr::Netlink {
                    port: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
                    groups: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
                })
            }
            _ => Err(Errno::EAFNOSUPPORT),
        }
    }

    /// The address in the layout of `family` (an IPv6 socket reports IPv4
    /// peers in the mapped form).
    pub fn encode(&self, family: u16) -> Vec<u8> {
        match self {
            SockAddr::Unspec => AF_UNSPEC.to_le_bytes().to_vec(),
            SockAddr::Netlink { port, groups } => {
                let mut out = AF_NETLINK.to_le_bytes().to_vec();
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(&port.to_le_bytes());
                out.extend_from_slice(&groups.to_le_bytes());
                out
            }
            SockAddr::Unix(name) => {
                let mut out = AF_UNIX.to_le_bytes().to_vec();
                match name {
                    UnixName::Unnamed => {}
                    UnixName::Path(p) => {
                        out.extend_from_slice(p);
                        // Linux counts the terminating NUL when it fits.
                        if p.len() < SUN_PATH_MAX {
                            out.push(0);
                        }
                    }
                    UnixName::Abstract(n) => {
                        out.push(0);
                        out.extend_from_slice(n);
                    }
                }
                out
            }
            SockAddr::Inet {
                ip,
                port,
                flow,
                scope,
            } => match (family, ip.as_v4()) {
                (AF_INET, Some(a)) => {
                    let mut out = alloc::vec![0u8; 16];
                    out[..2].copy_from_slice(&AF_INET.to_le_bytes());
                    out[2..4].copy_from_slice(&port.to_be_bytes());
                    out[4..8].copy_from_slice(&a);
                    out
                }
                _ => {
                    let Ip::V6(a) = ip.to_v6() else {
                        return Vec::new();
                    };
                    let mut out = alloc::vec![0u8; 28];
                    out[..2].copy_from_slice(&AF_INET6.to_le_bytes());
                    out[2..4].copy_from_slice(&port.to_be_bytes());
                    out[4..8].copy_from_slice(&flow.to_be_bytes());
                    out[8..24].copy_from_slice(&a);
                    out[24..28].copy_from_slice(&scope.to_le_bytes());
                    out
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_names_round_trip_as_linux_reports_them() {
        let mut raw = AF_UNIX.to_le_bytes().to_vec();
        raw.extend_from_slice(b"/tmp/s\0junk");
        let a = SockAddr::parse(&raw).expect("parses");
        assert_eq!(a, SockAddr::Unix(UnixName::Path(b"/tmp/s".to_vec())));
        assert_eq!(a.encode(AF_UNIX), b"\x01\x00/tmp/s\0");
        let mut raw = AF_UNIX.to_le_bytes().to_vec();
        raw.extend_from_slice(b"\0ab\0c");
        let a = SockAddr::parse(&raw).expect("parses");
        assert_eq!(a, SockAddr::Unix(UnixName::Abstract(b"ab\0c".to_vec())));
        assert_eq!(a.encode(AF_UNIX), raw);
        assert_eq!(SockAddr::parse(&[1]), Err(Errno::EINVAL));
        assert_eq!(
            SockAddr::parse(&[1, 0]).expect("parses").encode(AF_UNIX),
            [1, 0]
        );
        let mut long = alloc::vec![b'a'; SUN_LEN + 1];
        long[..2].copy_from_slice(&AF_UNIX.to_le_bytes());
        assert_eq!(SockAddr::parse(&long), Err(Errno::EINVAL));
        assert_eq!(SockAddr::parse(&[9, 9, 0, 0]), Err(Errno::EAFNOSUPPORT));
    }

    #[test]
    fn inet_addresses_decode_in_network_order_and_map_to_v6() {
        let raw = [2, 0, 0x1f, 0x90, 127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0];
        let a = SockAddr::parse(&raw).expect("parses");
        assert_eq!(a, SockAddr::inet(Ip::V4([127, 0, 0, 1]), 8080));
        assert_eq!(a.encode(AF_INET), raw);
        let v6 = a.encode(AF_INET6);
        assert_eq!(v6.len(), 28);
        assert_eq!(&v6[18..24], &[0xff, 0xff, 127, 0, 0, 1]);
        let back = SockAddr::parse(&v6).expect("parses");
        let SockAddr::Inet { ip, port, .. } = back else {
            panic!("not inet")
        };
        assert_eq!((ip.as_v4(), port), (Some([127, 0, 0, 1]), 8080));
        assert!(ip.is_local());
        assert!(!Ip::V4([10, 0, 0, 1]).is_local());
        assert!(Ip::V6(LOOPBACK_V6).is_local());
        assert_eq!(SockAddr::parse(&raw[..15]), Err(Errno::EINVAL));
    }
}
