//! The container's network namespace handed to the guest.
//!
//! A microVM's sockets live in the guest kernel, so the host's network
//! stack must not answer for the container's addresses. The namespace the
//! container is given (podman's, a CNI plugin's, a CRI pod's) has an
//! interface already configured, typically the container end of a veth
//! pair. The VMM takes that interface's place, as Kata Containers does:
//!
//! - a TAP device is created in the namespace for the guest's virtio-net
//!   device;
//! - an ingress qdisc with a match-everything u32 filter on each of the two redirects
//!   every frame arriving on one to the other's egress (tc mirred
//!   redirect), so frames for the interface reach the guest untouched and
//!   the guest's frames leave through the interface;
//! - the guest is configured with the interface's MAC, MTU, addresses and
//!   default gateways, read over route netlink.
//!
//! Whoever configured the namespace (port publishing, bridges, policies)
//! therefore works unchanged, and the VMM opens no socket for the guest.
//! A namespace with only `lo` gives the guest only its own loopback.
//!
//! This runs in the init, in the container's namespaces, before the VMM
//! drops its capabilities: only the TAP descriptor is carried into the VMM.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use capsa_abi::NetConfig;
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionGeneric, TcActionMirrorOption, TcActionOption,
    TcActionType, TcAttribute, TcFilterU32Option, TcHandle, TcMessage, TcMirror,
    TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// What the names of capsa's TAP devices begin with.
const TAP_PREFIX: &str = "capsa";

/// The TAP device of container `id` in its namespace: one per container,
/// so that microVMs sharing a namespace (a pod's) never claim each other's
/// (an interface name is at most 15 bytes: the prefix and 8 hex digits of
/// a hash of the id).
pub fn tap_name(id: &str) -> String {
    // FNV-1a: stable across builds and runs, unlike std's hasher.
    let hash = id.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    format!("{TAP_PREFIX}{hash:08x}")
}

/// `ETH_P_ALL` in network byte order, as a filter's protocol.
const ALL_PROTOCOLS: u16 = (libc::ETH_P_ALL as u16).to_be();

/// The priority `tc` gives a filter added without one.
const FILTER_PRIORITY: u32 = 49152;

/// Why the container's network could not be handed to the guest.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("network namespace: cannot talk route netlink")]
    Netlink(#[source] std::io::Error),
    #[error("network namespace: {what} failed")]
    Request {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("network namespace: unreadable route netlink reply")]
    Decode,
    #[error("network namespace: cannot create the TAP device {name}")]
    Tap {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: cannot note the redirected interface")]
    Note {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

type Result<T, E = NetworkError> = std::result::Result<T, E>;

/// The interface the guest takes over, as the namespace had it configured.
#[derive(Debug, Default, PartialEq, Eq)]
struct Interface {
    index: u32,
    name: String,
    mac: [u8; 6],
    mtu: u32,
    ipv4: Option<(Ipv4Addr, u8)>,
    ipv6: Option<(Ipv6Addr, u8)>,
    ipv4_gateway: Option<Ipv4Addr>,
    ipv6_gateway: Option<Ipv6Addr>,
}

impl Interface {
    fn config(&self) -> NetConfig {
        let mut config = NetConfig::default();
        let name = self.name.as_bytes();
        let len = name.len().min(config.name.len() - 1);
        config.name[..len].copy_from_slice(&name[..len]);
        config.mac = self.mac;
        config.mtu = u16::try_from(self.mtu).unwrap_or(u16::MAX);
        if let Some((addr, prefix)) = self.ipv4 {
            config.ipv4 = addr.octets();
            config.ipv4_prefix = prefix;
        }
        if let Some((addr, prefix)) = self.ipv6 {
            config.ipv6 = addr.octets();
            config.ipv6_prefix = prefix;
        }
        if let Some(gateway) = self.ipv4_gateway {
            config.ipv4_gateway = gateway.octets();
        }
        if let Some(gateway) = self.ipv6_gateway {
            config.ipv6_gateway = gateway.octets();
        }
        config
    }
}

/// The file in the container's state directory that names the interface
/// whose traffic goes to the TAP, for [`detach`].
const REDIRECTED: &str = "redirected-interface";

/// Reads the namespace's interface, and when there is one with an address,
/// creates the TAP and redirects the interface's traffic through it,
/// noting the interface in `state_dir`.
pub fn attach(id: &str, state_dir: &Path) -> Result<Option<capsa_vmm::NetAttachment>> {
    let mut netlink = Netlink::open()?;
    let links = netlink.dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))?;
    let addresses = netlink.dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))?;
    // An unspecified family dumps the routes of every family.
    let routes = netlink.dump(RouteNetlinkMessage::GetRoute(RouteMessage::default()))?;
    let Some(interface) = choose_interface(&links, &addresses, &routes) else {
        return Ok(None);
    };
    let (tap, tap_index) = open_tap(&tap_name(id))?;
    let mut up = LinkMessage::default();
    up.header.index = tap_index;
    up.header.flags = LinkFlags::Up;
    up.header.change_mask = LinkFlags::Up;
    up.attributes.push(LinkAttribute::Mtu(interface.mtu));
    netlink.request("setting the TAP up", RouteNetlinkMessage::SetLink(up), 0)?;
    let note = state_dir.join(REDIRECTED);
    std::fs::write(&note, &interface.name).map_err(|source| NetworkError::Note {
        path: note.clone(),
        source,
    })?;
    netlink.redirect(interface.index, tap_index)?;
    netlink.redirect(tap_index, interface.index)?;
    Ok(Some(capsa_vmm::NetAttachment {
        tap: std::sync::Arc::new(tap),
        config: interface.config(),
    }))
}

/// Gives the namespace at `namespace` its interface back once the VMM is
/// gone: removes the redirect [`attach`] noted in `state_dir` (the TAP
/// went with the VMM's descriptor), so the interface is the namespace's
/// own again (a pod's next container, a restarted one), unless another
/// microVM's TAP is still there. Nothing noted, or the namespace gone with
/// its pod, is nothing to do.
pub fn detach(namespace: &Path, state_dir: &Path) -> Result<()> {
    let Ok(name) = std::fs::read_to_string(state_dir.join(REDIRECTED)) else {
        return Ok(());
    };
    let Ok(namespace) = std::fs::File::open(namespace) else {
        return Ok(());
    };
    let inside = || -> Result<()> {
        let mut netlink = Netlink::open()?;
        let links = netlink.dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))?;
        // Another microVM's TAP (a pod's other container) means the
        // redirect may be its: the last one out gives it back.
        if link_names(&links).any(|(_, n)| n.starts_with(TAP_PREFIX)) {
            return Ok(());
        }
        let Some((index, _)) = link_names(&links).find(|(_, n)| *n == name) else {
            return Ok(());
        };
        netlink.remove_ingress(i32::try_from(index).map_err(|_| NetworkError::Decode)?)
    };
    super::namespace::within(&namespace, nix::sched::CloneFlags::CLONE_NEWNET, inside)
        .map_err(|e| NetworkError::Netlink(e.into()))?
}

/// The index and name of each link in a link dump.
fn link_names(links: &[RouteNetlinkMessage]) -> impl Iterator<Item = (u32, &str)> {
    links.iter().filter_map(|message| match message {
        RouteNetlinkMessage::NewLink(link) => link.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(name) => Some((link.header.index, name.as_str())),
            _ => None,
        }),
        _ => None,
    })
}

/// The first interface (by index) that is not a loopback, is not a TAP of
/// ours left by an earlier VMM in the namespace, and has an address: what
/// podman, CNI and CRI pods configure.
fn choose_interface(
    links: &[RouteNetlinkMessage],
    addresses: &[RouteNetlinkMessage],
    routes: &[RouteNetlinkMessage],
) -> Option<Interface> {
    let mut candidates: Vec<Interface> = links
        .iter()
        .filter_map(|message| match message {
            RouteNetlinkMessage::NewLink(link) => Some(link),
            _ => None,
        })
        .filter(|link| !link.header.flags.contains(LinkFlags::Loopback))
        .filter_map(|link| {
            let mut interface = Interface {
                index: link.header.index,
                mtu: 1500,
                ..Interface::default()
            };
            for attribute in &link.attributes {
                match attribute {
                    LinkAttribute::IfName(name) => interface.name = name.clone(),
                    LinkAttribute::Mtu(mtu) => interface.mtu = *mtu,
                    LinkAttribute::Address(mac) if mac.len() == 6 => {
                        interface.mac.copy_from_slice(mac)
                    }
                    _ => {}
                }
            }
            (!interface.name.starts_with(TAP_PREFIX)).then_some(interface)
        })
        .collect();
    candidates.sort_by_key(|i| i.index);
    candidates.into_iter().find_map(|mut interface| {
        for message in addresses {
            let RouteNetlinkMessage::NewAddress(address) = message else {
                continue;
            };
            if address.header.index != interface.index {
                continue;
            }
            let prefix = address.header.prefix_len;
            let local = address.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let addr = local.or_else(|| {
                address.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            });
            match addr {
                Some(IpAddr::V4(v4)) if interface.ipv4.is_none() => {
                    interface.ipv4 = Some((v4, prefix))
                }
                // Link-local addresses are the guest's own business.
                Some(IpAddr::V6(v6))
                    if interface.ipv6.is_none()
                        && address.header.scope == AddressScope::Universe =>
                {
                    interface.ipv6 = Some((v6, prefix))
                }
                _ => {}
            }
        }
        if interface.ipv4.is_none() && interface.ipv6.is_none() {
            return None;
        }
        for message in routes {
            let RouteNetlinkMessage::NewRoute(route) = message else {
                continue;
            };
            if route.header.destination_prefix_length != 0
                || route.header.table != RouteHeader::RT_TABLE_MAIN
            {
                continue;
            }
            let through_interface = route
                .attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Oif(index) if *index == interface.index));
            if !through_interface {
                continue;
            }
            for attribute in &route.attributes {
                match attribute {
                    RouteAttribute::Gateway(RouteAddress::Inet(gateway))
                        if interface.ipv4_gateway.is_none() =>
                    {
                        interface.ipv4_gateway = Some(*gateway)
                    }
                    RouteAttribute::Gateway(RouteAddress::Inet6(gateway))
                        if interface.ipv6_gateway.is_none() =>
                    {
                        interface.ipv6_gateway = Some(*gateway)
                    }
                    _ => {}
                }
            }
        }
        Some(interface)
    })
}

/// A new TAP device, non-blocking, without packet information (the frames
/// are Ethernet frames as the virtio-net device moves them), and its
/// interface index. It goes away with its last descriptor (the VMM's).
fn open_tap(name: &str) -> Result<(OwnedFd, u32)> {
    let tap_error = |source| NetworkError::Tap {
        name: name.to_string(),
        source,
    };
    // SAFETY: a plain open of a NUL-terminated path.
    let fd = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(tap_error(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    let tap = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; all zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes the struct ifreq `ifr` points to.
    if unsafe { libc::ioctl(tap.as_raw_fd(), libc::TUNSETIFF, &mut ifr) } < 0 {
        return Err(tap_error(std::io::Error::last_os_error()));
    }
    // SAFETY: if_nametoindex reads the NUL-terminated name TUNSETIFF left
    // in `ifr` (at most 15 bytes of the zeroed 16).
    let index = unsafe { libc::if_nametoindex(ifr.ifr_name.as_ptr()) };
    if index == 0 {
        return Err(tap_error(std::io::Error::last_os_error()));
    }
    Ok((tap, index))
}

/// A route netlink socket speaking to the kernel.
struct Netlink {
    socket: Socket,
    sequence: u32,
}

impl Netlink {
    fn open() -> Result<Netlink> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(NetworkError::Netlink)?;
        socket.bind_auto().map_err(NetworkError::Netlink)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(NetworkError::Netlink)?;
        Ok(Netlink {
            socket,
            sequence: 0,
        })
    }

    fn send(&mut self, message: RouteNetlinkMessage, flags: u16) -> Result<u32> {
        self.sequence += 1;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
        packet.finalize();
        let mut buffer = vec![0; packet.buffer_len()];
        packet.serialize(&mut buffer);
        self.socket
            .send(&buffer, 0)
            .map_err(NetworkError::Netlink)?;
        Ok(self.sequence)
    }

    /// Reads replies to `sequence`, handing each payload to `each` until it
    /// returns the outcome.
    fn replies(
        &mut self,
        sequence: u32,
        mut each: impl FnMut(NetlinkPayload<RouteNetlinkMessage>) -> Option<Result<()>>,
    ) -> Result<()> {
        let mut buffer = vec![0u8; 64 << 10];
        loop {
            let len = self
                .socket
                .recv(&mut &mut buffer[..], 0)
                .map_err(NetworkError::Netlink)?;
            let mut offset = 0;
            while offset < len {
                let message =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buffer[offset..len])
                        .map_err(|_| NetworkError::Decode)?;
                let length = message.header.length as usize;
                if length == 0 {
                    return Err(NetworkError::Decode);
                }
                offset += (length + 3) & !3;
                if message.header.sequence_number != sequence {
                    continue;
                }
                if let Some(done) = each(message.payload) {
                    return done;
                }
            }
        }
    }

    fn dump(&mut self, request: RouteNetlinkMessage) -> Result<Vec<RouteNetlinkMessage>> {
        let sequence = self.send(request, NLM_F_DUMP)?;
        let mut found = Vec::new();
        self.replies(sequence, |payload| match payload {
            NetlinkPayload::InnerMessage(message) => {
                found.push(message);
                None
            }
            NetlinkPayload::Done(_) => Some(Ok(())),
            NetlinkPayload::Error(error) => Some(Err(NetworkError::Request {
                what: "a dump".into(),
                source: error.to_io(),
            })),
            _ => None,
        })?;
        Ok(found)
    }

    /// Sends a change and waits for the kernel's acknowledgement.
    fn request(&mut self, what: &str, message: RouteNetlinkMessage, flags: u16) -> Result<()> {
        let sequence = self.send(message, NLM_F_ACK | flags)?;
        self.replies(sequence, |payload| match payload {
            NetlinkPayload::Error(error) => Some(match error.code {
                None => Ok(()),
                Some(_) => Err(NetworkError::Request {
                    what: what.to_string(),
                    source: error.to_io(),
                }),
            }),
            NetlinkPayload::Done(_) => Some(Ok(())),
            _ => None,
        })
    }

    /// Removes the ingress qdisc of interface `index`, with its filters.
    fn remove_ingress(&mut self, index: i32) -> Result<()> {
        self.request(
            "removing an ingress qdisc",
            RouteNetlinkMessage::DelQueueDiscipline(ingress_qdisc(index)),
            0,
        )
    }

    /// Makes every frame arriving on `from` leave through `to`: a fresh
    /// ingress qdisc on `from` (any earlier one, an earlier VMM's, goes)
    /// with one match-everything filter whose mirred action redirects to `to`'s
    /// egress.
    fn redirect(&mut self, from: u32, to: u32) -> Result<()> {
        let index = i32::try_from(from).map_err(|_| NetworkError::Decode)?;
        // None there yet is the common case.
        let _ = self.remove_ingress(index);
        self.request(
            "adding an ingress qdisc",
            RouteNetlinkMessage::NewQueueDiscipline(ingress_qdisc(index)),
            NLM_F_CREATE | NLM_F_EXCL,
        )?;
        self.request(
            "adding a redirecting filter",
            RouteNetlinkMessage::NewTrafficFilter(redirect_filter(index, to)),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }
}

/// `tc qdisc ... dev INDEX handle ffff: ingress`.
fn ingress_qdisc(index: i32) -> TcMessage {
    let mut qdisc = TcMessage::default();
    qdisc.header.index = index;
    qdisc.header.parent = TcHandle::INGRESS;
    qdisc.header.handle = TcHandle {
        major: 0xffff,
        minor: 0,
    };
    qdisc.attributes.push(TcAttribute::Kind("ingress".into()));
    qdisc
}

/// `tc filter add dev FROM parent ffff: protocol all u32 match u32 0 0
/// action mirred egress redirect dev TO`: u32 rather than matchall, which
/// kernels may leave out (this host's does).
fn redirect_filter(from: i32, to: u32) -> TcMessage {
    let mut mirror = TcMirror::default();
    mirror.generic = TcActionGeneric::default();
    mirror.generic.action = TcActionType::Stolen;
    mirror.eaction = TcMirrorActionType::EgressRedir;
    mirror.ifindex = to;
    let mut action = TcAction::default();
    action.tab = 1;
    action.attributes = vec![
        TcActionAttribute::Kind("mirred".into()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
            mirror,
        ))]),
    ];
    // One key matching every packet: mask 0 at offset 0.
    let mut selector = TcU32Selector::default();
    selector.flags = TcU32SelectorFlags::Terminal;
    selector.nkeys = 1;
    selector.keys = vec![TcU32Key::default()];
    let mut filter = TcMessage::default();
    filter.header.index = from;
    filter.header.parent = TcHandle {
        major: 0xffff,
        minor: 0,
    };
    filter.header.info = (FILTER_PRIORITY << 16) | u32::from(ALL_PROTOCOLS);
    filter.attributes = vec![
        TcAttribute::Kind("u32".into()),
        TcAttribute::Options(vec![
            TcOption::U32(TcFilterU32Option::Selector(selector)),
            TcOption::U32(TcFilterU32Option::Action(vec![action])),
        ]),
    ];
    filter
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, name: &str, flags: LinkFlags, mtu: u32) -> RouteNetlinkMessage {
        let mut link = LinkMessage::default();
        link.header.index = index;
        link.header.flags = flags;
        link.attributes = vec![
            LinkAttribute::IfName(name.into()),
            LinkAttribute::Mtu(mtu),
            LinkAttribute::Address(vec![2, 0x42, 10, 88, 0, index as u8]),
        ];
        RouteNetlinkMessage::NewLink(link)
    }

    fn address(index: u32, ip: IpAddr, prefix: u8, scope: AddressScope) -> RouteNetlinkMessage {
        let mut address = AddressMessage::default();
        address.header.index = index;
        address.header.prefix_len = prefix;
        address.header.scope = scope;
        address.attributes = vec![AddressAttribute::Address(ip)];
        RouteNetlinkMessage::NewAddress(address)
    }

    fn default_route(index: u32, gateway: RouteAddress) -> RouteNetlinkMessage {
        let mut route = RouteMessage::default();
        route.header.table = RouteHeader::RT_TABLE_MAIN;
        route.attributes = vec![RouteAttribute::Gateway(gateway), RouteAttribute::Oif(index)];
        RouteNetlinkMessage::NewRoute(route)
    }

    #[test]
    fn the_guest_takes_the_configured_interface() {
        let links = [
            link(1, "lo", LinkFlags::Loopback | LinkFlags::Up, 65536),
            link(3, "eth0", LinkFlags::Up, 1450),
            link(2, "unused0", LinkFlags::Up, 1500),
        ];
        let addresses = [
            address(
                1,
                "127.0.0.1".parse().expect("address"),
                8,
                AddressScope::Host,
            ),
            address(
                3,
                "10.88.0.7".parse().expect("address"),
                16,
                AddressScope::Universe,
            ),
            address(
                3,
                "fe80::1".parse().expect("address"),
                64,
                AddressScope::Link,
            ),
            address(
                3,
                "fd00::7".parse().expect("address"),
                64,
                AddressScope::Universe,
            ),
        ];
        let routes = [
            default_route(3, RouteAddress::Inet("10.88.0.1".parse().expect("address"))),
            default_route(3, RouteAddress::Inet6("fd00::1".parse().expect("address"))),
        ];
        let chosen = choose_interface(&links, &addresses, &routes).expect("eth0");
        let config = chosen.config();
        assert_eq!(config.name(), b"eth0");
        assert_eq!(config.mac, [2, 0x42, 10, 88, 0, 3]);
        assert_eq!(config.mtu(), 1450);
        assert_eq!((config.ipv4, config.ipv4_prefix), ([10, 88, 0, 7], 16));
        assert_eq!(config.ipv4_gateway, [10, 88, 0, 1]);
        let v6: Ipv6Addr = "fd00::7".parse().expect("address");
        assert_eq!((config.ipv6, config.ipv6_prefix), (v6.octets(), 64));
        let gw6: Ipv6Addr = "fd00::1".parse().expect("address");
        assert_eq!(config.ipv6_gateway, gw6.octets());
    }

    #[test]
    fn only_loopback_or_no_address_gives_no_network() {
        let links = [
            link(1, "lo", LinkFlags::Loopback | LinkFlags::Up, 65536),
            link(2, "eth0", LinkFlags::Up, 1500),
        ];
        let addresses = [
            address(
                1,
                "127.0.0.1".parse().expect("address"),
                8,
                AddressScope::Host,
            ),
            address(
                2,
                "fe80::1".parse().expect("address"),
                64,
                AddressScope::Link,
            ),
        ];
        assert_eq!(choose_interface(&links, &addresses, &[]), None);
    }

    #[test]
    fn tap_names_are_per_container_and_fit_an_interface_name() {
        let (a, b) = (tap_name("pod-sandbox"), tap_name("app"));
        assert_ne!(a, b);
        assert_eq!(a, tap_name("pod-sandbox"));
        assert!(a.len() <= 15 && a.starts_with(TAP_PREFIX), "{a}");
    }

    #[test]
    fn a_microvm_s_tap_is_not_taken_for_the_interface() {
        let links = [
            link(2, &tap_name("other-container"), LinkFlags::Up, 1500),
            link(3, "eth0", LinkFlags::Up, 1500),
        ];
        let addresses = [
            address(
                2,
                "10.0.0.9".parse().expect("address"),
                24,
                AddressScope::Universe,
            ),
            address(
                3,
                "10.0.0.2".parse().expect("address"),
                24,
                AddressScope::Universe,
            ),
        ];
        let chosen = choose_interface(&links, &addresses, &[]).expect("eth0");
        assert_eq!(chosen.name, "eth0");
        assert_eq!(chosen.config().ipv4_gateway, [0; 4]);
    }

    #[test]
    fn the_redirect_is_tc_s_u32_mirred_filter() {
        use netlink_packet_core::{Emitable, Parseable};
        let filter = redirect_filter(7, 9);
        let mut bytes = vec![0; filter.buffer_len()];
        filter.emit(&mut bytes);
        // What `tc filter add dev X parent ffff: protocol all u32 match u32
        // 0 0 action mirred egress redirect dev Y` sends: priority 49152, all protocols.
        assert_eq!(&bytes[16..20], &0xc000_0300u32.to_le_bytes());
        let parsed = TcMessage::parse(&bytes).expect("parse");
        assert_eq!(parsed, filter);
    }
}
