#![allow(clippy::unwrap_used)]
//! The capsa guest kernel's TCP/IP over the virtio-net device, with the host
//! kernel as the peer through a real TAP device: the guest connects to a
//! host server and serves a host client (needs root, /dev/kvm,
//! /dev/net/tun, python3, and the guest kernel that `cargo build -p capsa`
//! builds into target/guest).

use std::borrow::Cow;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use capsa_vmm::{run, GuestExit, NetAttachment, ProcessSpec, VmConfig};

const TIMEOUT: Duration = Duration::from_secs(30);

/// The guest: listens on the IPv6 wildcard (dual-stack, as python's
/// http.server does), tells the host server so, then answers the host's
/// connection to it.
const GUEST_PY: &str = r#"
import socket, sys
host = sys.argv[1]
srv = socket.socket(socket.AF_INET6)
srv.bind(('::', 8000))
srv.listen(4)
c = socket.create_connection((host, int(sys.argv[2])), timeout=30)
c.sendall(b'listening')
c.shutdown(socket.SHUT_WR)
assert c.recv(100) == b'noted', 'host reply'
c.close()
srv.settimeout(30)
conn, peer = srv.accept()
assert peer[0] == '::ffff:' + host, peer
data = b''
while not data.endswith(b'?'):
    chunk = conn.recv(70000)
    assert chunk, 'early end'
    data += chunk
conn.sendall(b'x' * 300000)
conn.close()
"#;

fn guest_kernel() -> Vec<u8> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let path = target.join("guest/release/capsa-guest");
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (cargo build -p capsa builds the guest kernel)",
            path.display()
        )
    })
}

/// A TAP device with `addr`/24 on the host side, up; it goes away with the
/// descriptor.
fn tap(name: &str, addr: &str) -> OwnedFd {
    // SAFETY: a plain open of a NUL-terminated path.
    let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_NONBLOCK) };
    assert!(fd >= 0, "/dev/net/tun: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` was just opened and is owned by nobody else.
    let tap = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut ifr = [0u8; 40];
    ifr[..name.len()].copy_from_slice(name.as_bytes());
    let flags = (libc::IFF_TAP | libc::IFF_NO_PI) as u16;
    ifr[16..18].copy_from_slice(&flags.to_le_bytes());
    // SAFETY: TUNSETIFF reads and writes a struct ifreq, which `ifr` holds.
    let ret = unsafe { libc::ioctl(fd, libc::TUNSETIFF, ifr.as_mut_ptr()) };
    assert_eq!(ret, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
    for args in [
        vec!["addr", "add", addr, "dev", name],
        vec!["link", "set", name, "up"],
    ] {
        let status = Command::new("ip").args(&args).status().unwrap();
        assert!(status.success(), "ip {args:?}");
    }
    tap
}

#[test]
fn guest_tcp_reaches_the_host_and_serves_it_through_the_network_device() {
    let name = format!("capsat{}", std::process::id() % 100_000);
    let tap = tap(&name, "10.213.0.1/24");
    let listener = TcpListener::bind("10.213.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let host = std::thread::spawn(move || {
        let (mut from_guest, _) = listener.accept().unwrap();
        from_guest.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut said = String::new();
        from_guest.read_to_string(&mut said).unwrap();
        assert_eq!(said, "listening");
        from_guest.write_all(b"noted").unwrap();
        drop(from_guest);
        let mut to_guest =
            TcpStream::connect_timeout(&"10.213.0.2:8000".parse().unwrap(), TIMEOUT).unwrap();
        to_guest.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut request = vec![b'r'; 70_000];
        request.push(b'?');
        to_guest.write_all(&request).unwrap();
        let mut reply = Vec::new();
        to_guest.read_to_end(&mut reply).unwrap();
        reply.len()
    });

    let mut net = capsa_abi::NetConfig::default();
    net.name[..4].copy_from_slice(b"eth0");
    net.mac = [0x02, 0x42, 0x0a, 0xd5, 0, 2];
    net.ipv4 = [10, 213, 0, 2];
    net.ipv4_prefix = 24;
    net.ipv4_gateway = [10, 213, 0, 1];
    let config = VmConfig {
        kernel: Cow::Owned(guest_kernel()),
        ram_size: 512 << 20,
        hugepages: false,
        vcpus: 1,
        process: ProcessSpec {
            args: vec![
                "/usr/bin/python3".into(),
                "-c".into(),
                GUEST_PY.into(),
                "10.213.0.1".into(),
                port.to_string(),
            ],
            env: vec!["PATH=/usr/bin:/bin".into()],
            cwd: "/".into(),
            ..Default::default()
        },
        rootfs: "/".into(),
        rootfs_readonly: true,
        mounts: Vec::new(),
        debug_syscalls: false,
        seccomp: false,
        net: Some(NetAttachment {
            tap: Arc::new(tap),
            config: net,
        }),
        exec_socket: None,
    };
    assert_eq!(run(config).unwrap(), GuestExit::Code(0));
    assert_eq!(host.join().unwrap(), 300_000);
}
