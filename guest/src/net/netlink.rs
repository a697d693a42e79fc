//! The guest's network interfaces as programs ask for them: route netlink
//! and the interface ioctls (`SIOCGIF*`, what `if_nametoindex` uses).
//!
//! Route netlink (`AF_NETLINK`, `NETLINK_ROUTE`): the kernel's answers to
//! the dumps programs ask for to learn the interfaces and their addresses
//! (glibc's `if_nameindex` and `getaddrinfo` with `AI_ADDRCONFIG`,
//! iproute2's `ip link` and `ip addr`, Go's `net.Interfaces`).
//!
//! The guest has `lo`, with 127.0.0.1/8 and ::1/128, as every network
//! namespace has, and, when the VMM gave it a network device, the
//! interface that device stands in for (`eth0`, say), with the name, MAC,
//! MTU, addresses and default routes the container's namespace had
//! configured for it (`capsa_abi::NetConfig`). Requests are answered at
//! once into the socket's queue: a dump's messages and its `NLMSG_DONE`
//! in one datagram, anything else not understood with `NLMSG_ERROR`
//! (`EOPNOTSUPP`), and `NLM_F_ACK` with an acknowledgement. Changes
//! (`RTM_NEWLINK`, `RTM_NEWADDR`, ...) are refused with `EPERM`: no process
//! in the guest has `CAP_NET_ADMIN`.

use alloc::vec::Vec;

use capsa_abi::NetConfig;

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
const RTM_NEWROUTE: u16 = 24;
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
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PREFSRC: u16 = 7;
const RTA_TABLE: u16 = 15;
const RT_TABLE_MAIN: u8 = 254;
const RTN_UNICAST: u8 = 1;
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

/// One interface as programs see it.
struct Link<'a> {
    index: i32,
    name: &'a [u8],
    kind: u16,
    flags: u32,
    mtu: u32,
    mac: [u8; 6],
    broadcast: [u8; 6],
    /// IF_OPER_UNKNOWN (0) for lo, IF_OPER_UP (6) for a device.
    operstate: u8,
    qdisc: &'a [u8],
    /// IPv4 address and prefix length.
    v4: Option<([u8; 4], u8)>,
    v6: Option<([u8; 16], u8)>,
    scope: u8,
}

const ARPHRD_ETHER: u16 = 1;
/// IFF_UP | IFF_BROADCAST | IFF_RUNNING | IFF_MULTICAST | IFF_LOWER_UP.
const ETHER_FLAGS: u32 = 0x1 | 0x2 | 0x40 | 0x1000 | 0x10000;
/// The device's index: Linux numbers a namespace's first device after lo 2.
const DEVICE_INDEX: i32 = 2;
const RT_SCOPE_UNIVERSE: u8 = 0;

/// The guest's interfaces: lo, then the network device's, if any.
fn interfaces(device: Option<&NetConfig>) -> Vec<Link<'_>> {
    let mut links = alloc::vec![Link {
        index: LO_INDEX,
        name: b"lo",
        kind: ARPHRD_LOOPBACK,
        flags: LO_FLAGS,
        mtu: 65536,
        mac: [0; 6],
        broadcast: [0; 6],
        operstate: 0,
        qdisc: b"noqueue",
        v4: Some(([127, 0, 0, 1], 8)),
        v6: Some((crate::net::addr::LOOPBACK_V6, 128)),
        scope: RT_SCOPE_HOST,
    }];
    if let Some(config) = device {
        links.push(Link {
            index: DEVICE_INDEX,
            name: config.name(),
            kind: ARPHRD_ETHER,
            flags: ETHER_FLAGS,
            mtu: u32::from(config.mtu()),
            mac: config.mac,
            broadcast: [0xff; 6],
            operstate: 6,
            qdisc: b"noqueue",
            v4: (config.ipv4_prefix != 0).then_some((config.ipv4, config.ipv4_prefix)),
            v6: (config.ipv6_prefix != 0).then_some((config.ipv6, config.ipv6_prefix)),
            scope: RT_SCOPE_UNIVERSE,
        });
    }
    links
}

fn with_nul(name: &[u8]) -> Vec<u8> {
    let mut bytes = name.to_vec();
    bytes.push(0);
    bytes
}

fn links(out: &mut Vec<u8>, device: Option<&NetConfig>, seq: u32, port: u32) {
    for link in interfaces(device) {
        let mut info = Vec::with_capacity(16);
        info.extend_from_slice(&[0, 0]); // family, padding
        info.extend_from_slice(&link.kind.to_le_bytes());
        info.extend_from_slice(&link.index.to_le_bytes());
        info.extend_from_slice(&link.flags.to_le_bytes());
        info.extend_from_slice(&0u32.to_le_bytes()); // change mask
        Message::new(RTM_NEWLINK, NLM_F_MULTI, seq, port)
            .raw(&info)
            .attr(IFLA_IFNAME, &with_nul(link.name))
            .attr(IFLA_TXQLEN, &1000u32.to_le_bytes())
            .attr(IFLA_OPERSTATE, &[link.operstate])
            .attr(IFLA_LINKMODE, &[0])
            .attr(IFLA_MTU, &link.mtu.to_le_bytes())
            .attr(IFLA_GROUP, &0u32.to_le_bytes())
            .attr(IFLA_QDISC, &with_nul(link.qdisc))
            .attr(IFLA_ADDRESS, &link.mac)
            .attr(IFLA_BROADCAST, &link.broadcast)
            .finish(out);
    }
}

fn addresses(out: &mut Vec<u8>, device: Option<&NetConfig>, family: u8, seq: u32, port: u32) {
    let links = interfaces(device);
    for fam in [AF_INET, AF_INET6] {
        for link in &links {
            let (addr, prefix): (&[u8], u8) = match (fam, &link.v4, &link.v6) {
                (AF_INET, Some((a, p)), _) => (a, *p),
                (AF_INET6, _, Some((a, p))) => (a, *p),
                _ => continue,
            };
            if family != 0 && family != fam {
                continue;
            }
            let mut info = Vec::with_capacity(8);
            info.extend_from_slice(&[fam, prefix, IFA_F_PERMANENT as u8, link.scope]);
            info.extend_from_slice(&link.index.to_le_bytes());
            let mut msg = Message::new(RTM_NEWADDR, NLM_F_MULTI, seq, port)
                .raw(&info)
                .attr(IFA_ADDRESS, addr);
            if fam == AF_INET {
                msg = msg.attr(IFA_LOCAL, addr);
                msg = msg.attr(IFA_LABEL, &with_nul(link.name));
            }
            // Preferred and valid lifetimes forever, no timestamps.
            let mut cache = [0xffu8; 16];
            cache[8..].fill(0);
            msg.attr(IFA_FLAGS, &IFA_F_PERMANENT.to_le_bytes())
                .attr(IFA_CACHEINFO, &cache)
                .finish(out);
        }
    }
}

/// A route: family, destination prefix length, destination, gateway.
type Route<'a> = (u8, u8, &'a [u8], Option<&'a [u8]>);

/// The main table's routes through the device: its subnet, and the
/// default route through its gateway (lo's routes are in the local table,
/// which programs rarely dump).
fn routes(out: &mut Vec<u8>, device: Option<&NetConfig>, family: u8, seq: u32, port: u32) {
    let Some(config) = device else {
        return;
    };
    let v4_net = |prefix: u8| {
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        (u32::from_be_bytes(config.ipv4) & mask).to_be_bytes()
    };
    let mut v6_net = config.ipv6;
    for (i, byte) in v6_net.iter_mut().enumerate() {
        let bits = (usize::from(config.ipv6_prefix))
            .saturating_sub(i * 8)
            .min(8);
        *byte &= !(0xffu8.checked_shr(bits as u32).unwrap_or(0));
    }
    let v4_net = v4_net(config.ipv4_prefix);
    let mut entries: Vec<Route<'_>> = Vec::new();
    if config.ipv4_prefix != 0 {
        if config.ipv4_gateway != [0; 4] {
            entries.push((AF_INET, 0, &[], Some(&config.ipv4_gateway)));
        }
        entries.push((AF_INET, config.ipv4_prefix, &v4_net, None));
    }
    if config.ipv6_prefix != 0 {
        entries.push((AF_INET6, config.ipv6_prefix, &v6_net, None));
        if config.ipv6_gateway != [0; 16] {
            entries.push((AF_INET6, 0, &[], Some(&config.ipv6_gateway)));
        }
    }
    for (fam, prefix, dst, gateway) in entries {
        if family != 0 && family != fam {
            continue;
        }
        // rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type; flags.
        let (protocol, scope) = match gateway {
            // RTPROT_BOOT, RT_SCOPE_UNIVERSE; RTPROT_KERNEL, RT_SCOPE_LINK.
            Some(_) => (3, RT_SCOPE_UNIVERSE),
            None => (2, 253),
        };
        let info = [
            fam,
            prefix,
            0,
            0,
            RT_TABLE_MAIN,
            protocol,
            scope,
            RTN_UNICAST,
            0,
            0,
            0,
            0,
        ];
        let mut msg = Message::new(RTM_NEWROUTE, NLM_F_MULTI, seq, port)
            .raw(&info)
            .attr(RTA_TABLE, &u32::from(RT_TABLE_MAIN).to_le_bytes());
        if !dst.is_empty() {
            msg = msg.attr(RTA_DST, dst);
        }
        if let Some(gateway) = gateway {
            msg = msg.attr(RTA_GATEWAY, gateway);
        } else if fam == AF_INET {
            msg = msg.attr(RTA_PREFSRC, &config.ipv4);
        }
        msg.attr(RTA_OIF, &DEVICE_INDEX.to_le_bytes()).finish(out);
    }
}

/// The kernel's answer to what a process sent to `NETLINK_ROUTE` from
/// port `port`: the bytes of one datagram (empty if nothing is owed).
/// Messages are read as Linux reads them: a header with a length of at
/// least 16 that fits; what follows a malformed one is dropped.
pub fn respond(request: &[u8], device: Option<&NetConfig>, port: u32) -> Vec<u8> {
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
                links(&mut out, device, seq, port);
                Ok(())
            }
            (RTM_GETADDR, true) => {
                addresses(&mut out, device, family, seq, port);
                Ok(())
            }
            (RTM_GETROUTE, true) => {
                routes(&mut out, device, family, seq, port);
                Ok(())
            }
            // No neighbours or rules to show.
            (RTM_GETNEIGH | RTM_GETRULE, true) => Ok(()),
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
pub const SIOCGIFHWADDR: u32 = 0x8927;
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
pub fn interface_request(
    request: u32,
    ifreq: &mut [u8; IFREQ_SIZE],
    device: Option<&NetConfig>,
) -> crate::errno::Result<()> {
    let links = interfaces(device);
    if request == SIOCGIFNAME {
        let index = i32::from_le_bytes([ifreq[16], ifreq[17], ifreq[18], ifreq[19]]);
        let link = links
            .iter()
            .find(|l| l.index == index)
            .ok_or(Errno::ENODEV)?;
        ifreq[..16].fill(0);
        ifreq[..link.name.len()].copy_from_slice(link.name);
        return Ok(());
    }
    let name_end = ifreq[..16].iter().position(|&b| b == 0).unwrap_or(16);
    let link = links
        .iter()
        .find(|l| l.name == &ifreq[..name_end])
        .ok_or(Errno::ENODEV)?;
    let value = &mut ifreq[16..];
    match request {
        SIOCGIFINDEX => value[..4].copy_from_slice(&link.index.to_le_bytes()),
        SIOCGIFFLAGS => value[..2].copy_from_slice(&(link.flags as u16).to_le_bytes()),
        SIOCGIFMTU => value[..4].copy_from_slice(&link.mtu.to_le_bytes()),
        SIOCGIFTXQLEN => value[..4].copy_from_slice(&1000u32.to_le_bytes()),
        SIOCGIFHWADDR => {
            value[..2].copy_from_slice(&link.kind.to_le_bytes());
            value[2..8].copy_from_slice(&link.mac);
        }
        SIOCGIFADDR | SIOCGIFNETMASK => {
            let (addr, prefix) = link.v4.ok_or(Errno::EADDRNOTAVAIL)?;
            let sockaddr = if request == SIOCGIFADDR {
                sockaddr_in(addr)
            } else {
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                sockaddr_in(mask.to_be_bytes())
            };
            value[..16].copy_from_slice(&sockaddr);
        }
        _ => return Err(Errno::EINVAL),
    }
    Ok(())
}

/// SIOCGIFCONF's records: one `struct ifreq` (name and IPv4 address) per
/// interface with an IPv4 address.
pub fn interface_list(device: Option<&NetConfig>) -> Vec<u8> {
    let mut out = Vec::new();
    for link in interfaces(device) {
        let Some((addr, _)) = link.v4 else {
            continue;
        };
        let mut record = [0u8; IFREQ_SIZE];
        record[..link.name.len()].copy_from_slice(link.name);
        record[16..32].copy_from_slice(&sockaddr_in(addr));
        out.extend_from_slice(&record);
    }
    out
}

/// Whether `name` is one of the guest's interfaces (SO_BINDTODEVICE).
pub fn has_interface(name: &[u8], device: Option<&NetConfig>) -> bool {
    interfaces(device).iter().any(|l| l.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn respond_lo(request: &[u8], port: u32) -> Vec<u8> {
        respond(request, None, port)
    }

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
        let reply = respond_lo(&request(RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, 0), 42);
        assert_eq!(headers(&reply), [(RTM_NEWLINK, 7, 42), (NLMSG_DONE, 7, 42)]);
        assert!(reply.windows(3).any(|w| w == b"lo\0"));
        let reply = respond_lo(&request(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, 0), 42);
        assert_eq!(
            headers(&reply),
            [
                (RTM_NEWADDR, 7, 42),
                (RTM_NEWADDR, 7, 42),
                (NLMSG_DONE, 7, 42)
            ]
        );
        let reply = respond_lo(
            &request(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, AF_INET6),
            42,
        );
        assert_eq!(headers(&reply).len(), 2);
    }

    #[test]
    fn interface_ioctls_know_lo_only() {
        let mut req = [0u8; IFREQ_SIZE];
        req[..2].copy_from_slice(b"lo");
        assert_eq!(interface_request(SIOCGIFINDEX, &mut req, None), Ok(()));
        assert_eq!(&req[16..20], &1i32.to_le_bytes());
        let mut by_index = [0u8; IFREQ_SIZE];
        by_index[16] = 1;
        assert_eq!(interface_request(SIOCGIFNAME, &mut by_index, None), Ok(()));
        assert_eq!(&by_index[..3], b"lo\0");
        let mut other = [0u8; IFREQ_SIZE];
        other[..4].copy_from_slice(b"eth0");
        assert_eq!(
            interface_request(SIOCGIFINDEX, &mut other, None),
            Err(Errno::ENODEV)
        );
        by_index[16] = 2;
        assert_eq!(
            interface_request(SIOCGIFNAME, &mut by_index, None),
            Err(Errno::ENODEV)
        );
    }

    #[test]
    fn changes_are_refused_and_garbage_ignored() {
        let reply = respond_lo(&request(RTM_NEWADDR, NLM_F_REQUEST | NLM_F_ACK, 0), 1);
        assert_eq!(headers(&reply), [(NLMSG_ERROR, 7, 1)]);
        assert_eq!(&reply[16..20], &(-1i32).to_le_bytes());
        assert!(respond(&[0xff; 15], None, 1).is_empty());
        let mut bad = request(RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, 0);
        bad[..4].copy_from_slice(&1000u32.to_le_bytes());
        assert!(respond(&bad, None, 1).is_empty());
        let reply = respond_lo(&request(RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP, 0), 1);
        assert_eq!(headers(&reply), [(NLMSG_DONE, 7, 1)]);
    }

    fn device() -> NetConfig {
        let mut config = NetConfig::default();
        config.name[..4].copy_from_slice(b"eth0");
        config.mac = [2, 0x42, 10, 88, 0, 7];
        config.mtu = 1450;
        config.ipv4 = [10, 88, 0, 7];
        config.ipv4_prefix = 16;
        config.ipv4_gateway = [10, 88, 0, 1];
        config
    }

    #[test]
    fn the_device_is_shown_beside_lo() {
        let config = device();
        let device = Some(&config);
        let dump = |kind| respond(&request(kind, NLM_F_REQUEST | NLM_F_DUMP, 0), device, 9);
        let reply = dump(RTM_GETLINK);
        assert_eq!(headers(&reply).len(), 3);
        assert!(reply.windows(5).any(|w| w == b"eth0\0"));
        assert!(reply.windows(6).any(|w| w == config.mac));
        let reply = dump(RTM_GETADDR);
        assert_eq!(headers(&reply).len(), 4);
        assert!(reply.windows(4).any(|w| w == [10, 88, 0, 7]));
        let reply = dump(RTM_GETROUTE);
        assert_eq!(
            headers(&reply),
            [
                (RTM_NEWROUTE, 7, 9),
                (RTM_NEWROUTE, 7, 9),
                (NLMSG_DONE, 7, 9)
            ]
        );
        assert!(reply.windows(4).any(|w| w == [10, 88, 0, 1]), "gateway");
        assert!(reply.windows(4).any(|w| w == [10, 88, 0, 0]), "subnet");

        let mut req = [0u8; IFREQ_SIZE];
        req[..4].copy_from_slice(b"eth0");
        assert_eq!(interface_request(SIOCGIFINDEX, &mut req, device), Ok(()));
        assert_eq!(&req[16..20], &2i32.to_le_bytes());
        assert_eq!(interface_request(SIOCGIFNETMASK, &mut req, device), Ok(()));
        assert_eq!(&req[20..24], &[255, 255, 0, 0]);
        assert_eq!(interface_request(SIOCGIFHWADDR, &mut req, device), Ok(()));
        assert_eq!(&req[18..24], &config.mac);
        assert_eq!(interface_list(device).len(), 2 * IFREQ_SIZE);
        assert!(has_interface(b"eth0", device));
        assert!(!has_interface(b"eth0", None));
    }
}
