//! The VMM's exec channel (`vmm/src/devices/exec/`): client messages over
//! a real connection to the exec device's listening socket, then the
//! guest's calls on the device.
//!
//! Input: a count of client messages (0-3), each a flags byte (bit 0:
//! carry three descriptors, bit 1: hang up after it) and a u16 length and
//! that many bytes; then up to 16 calls of 40 bytes (`capsa_abi::exec::Call`
//! layout: op, session, stream, reserved, addr, len, result) the guest
//! makes; the rest of the input is guest RAM from 0x2000, where the calls'
//! buffers may point.
//!
//! Checks: no panic and no access past guest RAM (guard pages); a message
//! the parser accepts as a start carries a spec the guest decodes whole.

#![no_main]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use capsa_abi::exec as abi;
use capsa_fuzz::input::Input;
use capsa_vmm::bus::BusDevice;
use capsa_vmm::devices::exec::{protocol, Exec};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};

const RAM: usize = 1 << 20;
const CALL_AT: u64 = 0x1000;

fn seqpacket() -> OwnedFd {
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: a descriptor socket(2) just returned.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// An abstract socket address unique to this process and input.
fn address() -> libc::sockaddr_un {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "capsa-fuzz-exec-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    // SAFETY: sockaddr_un is plain data; zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path[1..].iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    addr
}

const ADDR_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;

fn send(client: &OwnedFd, message: &[u8], fds: &[i32]) {
    let mut iov = libc::iovec {
        iov_base: message.as_ptr().cast_mut().cast(),
        iov_len: message.len(),
    };
    let mut control = [0u64; 8];
    // SAFETY: msghdr is plain data; zero is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let len = std::mem::size_of_val(fds) as u32;
        msg.msg_control = control.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE only computes a size.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(len) } as usize;
        // SAFETY: the control buffer holds one header and `fds`
        // (CMSG_SPACE of 12 bytes is 32, within its 64).
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(len) as usize;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(cmsg).cast(), fds.len());
        }
    }
    // SAFETY: the message and its buffers outlive the call.
    unsafe {
        libc::sendmsg(
            client.as_raw_fd(),
            &msg,
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
}

fuzz_target!(|data: &[u8]| {
    let ram = capsa_fuzz::ram::shared(RAM);
    let mut input = Input::new(data);
    let messages: Vec<(u8, &[u8])> = (0..input.u8() % 4)
        .map(|_| {
            let flags = input.u8();
            let len = usize::from(input.u16());
            (flags, input.bytes(len))
        })
        .collect();
    let calls: Vec<&[u8]> = (0..input.u8() % 17)
        .map(|_| input.bytes(abi::CALL_SIZE))
        .collect();
    let mut image = vec![0u8; 0x2000];
    image.extend_from_slice(input.rest());
    ram.reset(&image);

    let listener = seqpacket();
    let addr = address();
    // SAFETY: bind/listen on our socket with a valid address.
    unsafe {
        assert_eq!(
            libc::bind(
                listener.as_raw_fd(),
                (&addr as *const libc::sockaddr_un).cast(),
                ADDR_LEN
            ),
            0
        );
        assert_eq!(libc::listen(listener.as_raw_fd(), 8), 0);
    }
    let mut exec = Exec::new(ram.memory().clone(), listener).expect("exec device");
    let null = capsa_fuzz::dev_null();
    let mut clients = Vec::new();
    for (flags, message) in messages {
        if let Ok(request) = protocol::parse_request(message) {
            if let protocol::Request::Start(spec) = request {
                let (_, malformed) = capsa_guest::kernel::spec::ProcessSpec::decode(spec);
                assert!(!malformed, "an accepted start's spec does not decode");
            }
        }
        let client = seqpacket();
        // SAFETY: connect on our socket with a valid address.
        let ret = unsafe {
            libc::connect(
                client.as_raw_fd(),
                (&addr as *const libc::sockaddr_un).cast(),
                ADDR_LEN,
            )
        };
        assert_eq!(ret, 0, "connect: {}", std::io::Error::last_os_error());
        let fds = if flags & 1 != 0 {
            vec![null; 3]
        } else {
            Vec::new()
        };
        send(&client, message, &fds);
        if flags & 2 == 0 {
            clients.push(client);
        }
        exec.poll_input();
    }
    for call in calls {
        let _ = ram.memory().write_slice(call, GuestAddress(CALL_AT));
        exec.write(abi::CALL, &CALL_AT.to_le_bytes());
    }
    drop(clients);
    exec.poll_input();
});
