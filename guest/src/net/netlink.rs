//! The guest's network interfaces as programs ask for them: route netlink
//! and the interface ioctls (`SIOCGIF*`, what `if_nametoindex` uses).
//!
//! Route netlink (`AF_NETLINK`, `NETLINK_ROUTE`): the kernel's answers to
//! the dumps programs ask for to learn the interfaces and their addresses
//! (glibc's `if_nameindex` and `getaddrinfo` with `AI_ADDRCONFIG`,
//! iproute2's `ip link` and `ip addr`, Go's `net.Interfaces`).
//!
//! The guest has one interface, `lo`, with 127.0.0.1/8 and ::1/128, as a
//! network namespace with only loopback has. Requests are answered at
//! once into the socket's queue: a dump's messages and its `NLMSG_DONE`
//! in one datagram, anything else not understood with `NLMSG_ERROR`
//! (`EOPNOTSUPP`), and `NLM_F_ACK` with an acknowledgement. Changes
//! (`RTM_NEWLINK`, `RTM_NEWADDR`, ...) are refused with `EPERM`: no process
//! in the guest has `CAP_NET_ADMIN`.

use alloc::vec::Vec;

use crate::errno::Errno;
use crate::net::addr::{self, Ip, SockAddr};

pub const NETLINK_ROUTE: u32 = 0;

const NLMSG_HDR: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_MULTI: u16 = 0x2;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;

const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const RTM_GETROUTE: u16 = 26;
const RTM_GETNEIGH: u16 = 30;
const RTM_GETRULE: u16 = 34;

const IFLA_ADDRESS: u16 = 1;
const IFLA_BROADCAST: u16 = 2;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_TXQLEN: u16 = 13;
const IFLA_QDISC: u16 = 6;
const IFLA_OPERSTATE: u16 = 16;
const IFLA_LINKMODE: u16 = 17;
const IFLA_GROUP: u16 = 27;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_LABEL: u16 = 3;
const IFA_CACHEINFO: u16 = 6;
const IFA_FLAGS: u16 = 8;

const ARPHRD_LOOPBACK: u16 = 772;
/// IFF_UP | IFF_LOOPBACK | IFF_RUNNING | IFF_LOWER_UP.
const LO_FLAGS: u32 = 0x1 | 0x8 | 0x40 | 0x10000;
const LO_INDEX: i32 = 1;
const IFA_F_PERMANENT: u32 = 0x80;
const RT_SCOPE_HOST: u8 = 254;
// The address families as the one-byte fields of netlink messages hold them.
const AF_INET: u8 = addr::AF_INET as u8;
const AF_INET6: u8 = addr::AF_INET6 as u8;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// A message being built: header, fixed part, attributes.
struct Message {
    bytes: Vec<u8>,
}

impl Message {
    fn new(kind: u16, flags: u16, seq: u32, port: u32) -> Self {
        let mut bytes = Vec::with_capacity(128);
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes.extend_from_slice(&kind.to_le_bytes());
        bytes.extend_from_slice(&flags.to_le_bytes());
        bytes.extend_from_slice(&seq.to_le_bytes());
        bytes.extend_from_slice(&port.to_le_bytes());
        Self { bytes }
    }

    fn raw(mut self, data: &[u8]) -> Self {
        self.bytes.extend_from_slice(data);
        self.bytes.resize(align4(self.bytes.len()), 0);
        self
    }

    fn attr(mut self, kind: u16, data: &[u8]) -> Self {
        let len = 4 + data.len();
        self.bytes.extend_from_slice(&(len as u16).to_le_bytes());
        self.bytes.extend_from_slice(&kind.to_le_bytes());
        self.bytes.extend_from_slice(data);
        self.bytes.resize(align4(self.bytes.len()), 0);
        self
    }

    fn finish(mut self, out: &mut Vec<u8>) {
        let len = self.bytes.len() as u32;
        self.bytes[..4].copy_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&self.bytes);
    }
}

/// `NLMSG_ERROR` carrying `error` (0: an acknowledgement) and the
/// request's header.
fn error(out: &mut Vec<u8>, request: &[u8], error: i32, seq: u32, port: u32) {
    let mut body = error.to_le_bytes().to_vec();
    body.extend_from_slice(&request[..NLMSG_HDR]);
    Message::new(NLMSG_ERROR, 0, seq, port)
        .raw(&body)
        .finish(out);
}

fn links(out: &mut Vec<u8>, seq: u32, port: u32) {
    let mut info = Vec::with_capacity(16);
    info.extend_from_slice(&[0, 0]); // family, padding
    info.extend_from_slice(&ARPHRD_LOOPBACK.to_le_bytes());
    info.extend_from_slice(&LO_INDEX.to_le_bytes());
    info.extend_from_slice(&LO_FLAGS.to_le_bytes());
    info.extend_from_slice(&0u32.to_le_bytes()); // change mask
    Message::new(RTM_NEWLINK, NLM_F_MULTI, seq, port)
        .raw(&info)
        .attr(IFLA_IFNAME, b"lo\0")
        .attr(IFLA_TXQLEN, &1000u32.to_le_bytes())
        // IF_OPER_UNKNOWN, as Linux reports for lo.
        .attr(IFLA_OPERSTATE, &[0])
        .attr(IFLA_LINKMODE, &[0])
        .attr(IFLA_MTU, &65536u32.to_le_bytes())
        .attr(IFLA_GROUP, &0u32.to_le_bytes())
        .attr(IFLA_QDISC, b"noqueue\0")
        .attr(IFLA_ADDRESS, &[0; 6])
        .attr(IFLA_BROADCAST, &[0; 6])
        .finish(out);
}

fn addresses(out: &mut Vec<u8>, family: u8, seq: u32, port: u32) {
    let loopback_v4 = [127, 0, 0, 1];
    let loopback_v6 = crate::net::addr::LOOPBACK_V6;
    let entries: [(u8, u8, &[u8]); 2] = [(AF_INET, 8, &loopback_v4), (AF_INET6, 128, &loopback_v6)];
    for (fam, prefix, addr) in entries {
        if family != 0 && family != fam {
            continue;
        }
        let mut info = Vec::with_capacity(8);
        info.extend_from_slice(&[fam, prefix, IFA_F_PERMANENT as u8, RT_SCOPE_HOST]);
        info.extend_from_slice(&LO_INDEX.to_le_bytes());
        let mut msg = Message::new(RTM_NEWADDR, NLM_F_MULTI, seq, port)
            .raw(&info)
            .attr(IFA_ADDRESS, addr);
        if fam == AF_INET {
            msg = msg.attr(IFA_LOCAL, addr).attr(IFA_LABEL, b"lo\0");
        }
        // Preferred and valid lifetimes forever, no timestamps.
        let mut cache = [0xffu8; 16];
        cache[8..].fill(0);
        msg.attr(IFA_FLAGS, &IFA_F_PERMANENT.to_le_bytes())
            .attr(IFA_CACHEINFO, &cache)
            .finish(out);
    }
}

/// The kernel's answer to what a process sent to `NETLINK_ROUTE` from
/// port `port`: the bytes of one datagram (empty if nothing is owed).
/// Messages are read as Linux reads them: a header with a length of at
/// least 16 that fits; what follows a malformed one is dropped.
pub fn respond(request: &[u8], port: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at = 0;
    while request.len() - at >= NLMSG_HDR {
        let msg = &request[at..];
        let len = u32::from_le_bytes([msg[0], msg[1], msg[2], msg[3]]) as usize;
        if len < NLMSG_HDR || len > msg.len() {
            break;
        }
        let kind = u16::from_le_bytes([msg[4], msg[5]]);
        let flags = u16::from_le_bytes([msg[6], msg[7]]);
        let seq = u32::from_le_bytes([msg[8], msg[9], msg[10], msg[11]]);
        at += align4(len).min(request.len() - at);
        if flags & NLM_F_REQUEST == 0 || kind < RTM_NEWLINK {
            continue;
        }
        // Every RTM_GET* is even-numbered two above its RTM_NEW*.
        let get = kind % 4 == 2;
        let dump = get && flags & NLM_F_DUMP == NLM_F_DUMP;
        let family = msg.get(NLMSG_HDR).copied().unwrap_or(0);
        let result = match (kind, dump) {
            (RTM_GETLINK, true) => {
                links(&mut out, seq, port);
                Ok(())
            }
            (RTM_GETADDR, true) => {
                addresses(&mut out, family, seq, port);
                Ok(())
            }
            // No routes in the main table, no neighbours, no rules to show
            // (the kernel's local routes of lo aside).
            (RTM_GETROUTE | RTM_GETNEIGH | RTM_GETRULE, true) => Ok(()),
            _ if !get => Err(Errno::EPERM),
            _ => Err(Errno::EOPNOTSUPP),
        };
        match result {
            Ok(()) => {
                if dump {
                    Message::new(NLMSG_DONE, NLM_F_MULTI, seq, port)
                        .raw(&0i32.to_le_bytes())
                        .finish(&mut out);
                }
                if flags & NLM_F_ACK != 0 {
                    error(&mut out, msg, 0, seq, port);
                }
            }
            Err(e) => error(&mut out, msg, -e.0, seq, port),
        }
    }
    out
}

pub const SIOCGIFNAME: u32 = 0x8910;
pub const SIOCGIFCONF: u32 = 0x8912;
pub const SIOCGIFFLAGS: u32 = 0x8913;
pub const SIOCGIFADDR: u32 = 0x8915;
pub const SIOCGIFNETMASK: u32 = 0x891b;
pub const SIOCGIFMTU: u32 = 0x8921;
pub const SIOCGIFINDEX: u32 = 0x8933;
pub const SIOCGIFTXQLEN: u32 = 0x8942;
/// `sizeof(struct ifreq)`: a 16-byte name, then a 24-byte union.
pub const IFREQ_SIZE: usize = 40;

/// An IPv4 `struct sockaddr` (16 bytes) of `addr`.
fn sockaddr_in(addr: [u8; 4]) -> Vec<u8> {
    SockAddr::inet(Ip::V4(addr), 0).encode(addr::AF_INET)
}

/// The interface ioctls on a `struct ifreq`: by name (all but
/// SIOCGIFNAME, which goes by index). An unknown interface is ENODEV.
pub fn interface_request(request: u32, ifreq: &mut [u8; IFREQ_SIZE]) -> crate::errno::Result<()> {
    if request == SIOCGIFNAME {
        let index = i32::from_le_bytes([ifreq[16], ifreq[17], ifreq[18], ifreq[19]]);
        if index != LO_INDEX {
            return Err(Errno::ENODEV);
        }
        ifreq[..16].fill(0);
        ifreq[..2].copy_from_slice(b"lo");
        return Ok(());
    }
    let name_end = ifreq[..16].iter().position(|&b| b == 0).unwrap_or(16);
    if &ifreq[..name_end] != b"lo" {
        return Err(Errno::ENODEV);
    }
    let value = &mut ifreq[16..];
    match request {
        SIOCGIFINDEX => value[..4].copy_from_slice(&LO_INDEX.to_le_bytes()),
        SIOCGIFFLAGS => value[..2].copy_from_slice(&(LO_FLAGS as u16).to_le_bytes()),
        SIOCGIFMTU => value[..4].copy_from_slice(&65536u32.to_le_bytes()),
        SIOCGIFTXQLEN => value[..4].copy_from_slice(&1000u32.to_le_bytes()),
        SIOCGIFADDR => value[..16].copy_from_slice(&sockaddr_in([127, 0, 0, 1])),
        SIOCGIFNETMASK => value[..16].copy_from_slice(&sockaddr_in([255, 0, 0, 0])),
        _ => return Err(Errno::EINVAL),
    }
    Ok(())
}

/// SIOCGIFCONF's records: one `struct ifreq` (name and IPv4 address) per
/// interface with an IPv4 address.
pub fn interface_list() -> Vec<u8> {
    let mut out = alloc::vec![0u8; IFREQ_SIZE];
    out[..2].copy_from_slice(b"lo");
    out[16..32].copy_from_slice(&sockaddr_in([127, 0, 0, 1]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(kind: u16, flags: u16, family: u8) -> Vec<u8> {
        let mut r = Vec::new();
        r.extend_from_slice(&20u32.to_le_bytes());
        r.extend_from_slice(&kind.to_le_bytes());
        r.extend_from_slice(&flags.to_le_bytes());
        r.extend_from_slice(&7u32.to_le_bytes());
        r.extend_from_slice(&0u32.to_le_bytes());
        r.extend_from_slice(&[family, 0, 0, 0]);
        r
    }

    /// (type, seq, port) of each message in `reply`.
    fn headers(reply: &[u8]) -> Vec<(u16, u32, u32)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at + NLMSG_HDR <= reply.len() {
            let m = &reply[at..];
            let len = u32::from_le_bytes([m[0], m[1], m[2], m[3]]) as usize;
            assert!(
                len >= NLMSG_HDR && at + len <= reply.len(),
                "bad length {len}"
            );
            out.push((
                u16::from_le_bytes([m[4], m[5]]),
                u32::from_le_bytes([m[8], m[9], m[10], m[11]]),
                u32::from_le_bytes([m[12], m[13], m[14], m[15]]),
            ));
            at += align4(len);
        }
        assert_eq!(at, reply.len());
        out
    }

    #[test]
    fn dumps_answer_with_lo_then_done() {
        let reply = respond(&request(RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, 0), 42);
        assert_eq!(headers(&reply), [(RTM_NEWLINK, 7, 42), (NLMSG_DONE, 7, 42)]);
        assert!(reply.windows(3).any(|w| w == b"lo\0"));
        let reply = respond(&request(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, 0), 42);
        assert_eq!(
            headers(&reply),
            [
                (RTM_NEWADDR, 7, 42),
                (RTM_NEWADDR, 7, 42),
                (NLMSG_DONE, 7, 42)
            ]
        );
        let reply = respond(
            &request(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, AF_INET6),
            42,
        );
        assert_eq!(headers(&reply).len(), 2);
    }

    #[test]
    fn interface_ioctls_know_lo_only() {
        let mut req = [0u8; IFREQ_SIZE];
        req[..2].copy_from_slice(b"lo");
        assert_eq!(interface_request(SIOCGIFINDEX, &mut req), Ok(()));
        assert_eq!(&req[16..20], &1i32.to_le_bytes());
        let mut by_index = [0u8; IFREQ_SIZE];
        by_index[16] = 1;
        assert_eq!(interface_request(SIOCGIFNAME, &mut by_index), Ok(()));
        assert_eq!(&by_index[..3], b"lo\0");
        let mut other = [0u8; IFREQ_SIZE];
        other[..4].copy_from_slice(b"eth0");
        assert_eq!(
            interface_request(SIOCGIFINDEX, &mut other),
            Err(Errno::ENODEV)
        );
        by_index[16] = 2;
        assert_eq!(
            interface_request(SIOCGIFNAME, &mut by_index),
            Err(Errno::ENODEV)
        );
    }

    #[test]
    fn changes_are_refused_and_garbage_ignored() {
        let reply = respond(&request(RTM_NEWADDR, NLM_F_REQUEST | NLM_F_ACK, 0), 1);
        assert_eq!(headers(&reply), [(NLMSG_ERROR, 7, 1)]);
        assert_eq!(&reply[16..20], &(-1i32).to_le_bytes());
        assert!(respond(&[0xff; 15], 1).is_empty());
        let mut bad = request(RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, 0);
        bad[..4].copy_from_slice(&1000u32.to_le_bytes());
        assert!(respond(&bad, 1).is_empty());
        let reply = respond(&request(RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP, 0), 1);
        assert_eq!(headers(&reply), [(NLMSG_DONE, 7, 1)]);
    }
}
