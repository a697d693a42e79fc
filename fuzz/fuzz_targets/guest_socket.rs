//! The guest kernel's sockets (`guest/src/net/`) driven by an arbitrary
//! sequence of what system calls do to them: socket addresses decoded
//! from the input's bytes, then connections between listeners and
//! clients, sends and receives of any size with or without MSG_PEEK,
//! MSG_WAITALL and non-blocking, shutdowns, accepts, closes and poll masks,
//! in any order.
//!
//! Input: the first byte is the length of an address to parse; then each
//! 4-byte group is one operation (kind, socket index, two arguments).
//!
//! Checks beyond "no panic" (a RefCell borrowed twice panics too): every
//! stream delivers exactly the bytes sent on it, in order, with nothing
//! invented; a queue never reports more bytes than were sent into it;
//! an encoded address decodes back to itself.

#![no_main]

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use capsa_guest::net::addr::{SockAddr, AF_INET, AF_INET6, AF_UNIX};
use capsa_guest::net::queue::{Segment, Ucred};
use capsa_guest::net::socket::{Core, Kind};
use libfuzzer_sys::fuzz_target;

/// A socket the sequence holds, with the bytes each direction still owes.
struct Held {
    core: Rc<Core>,
    /// Bytes sent to this socket by its peer that it has not received yet
    /// (streams only).
    owed: Rc<RefCell<VecDeque<u8>>>,
    peer_owed: Option<Rc<RefCell<VecDeque<u8>>>>,
}

fn cred() -> Ucred {
    Ucred {
        pid: 1,
        uid: 0,
        gid: 0,
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&addr_len, rest)) = input.split_first() else {
        return;
    };
    let (raw, ops) = rest.split_at((addr_len as usize).min(rest.len()));
    if let Ok(addr) = SockAddr::parse(raw) {
        let family = match &addr {
            SockAddr::Unix(_) => AF_UNIX,
            SockAddr::Inet { ip, .. } if ip.as_v4().is_some() => AF_INET,
            _ => AF_INET6,
        };
        let encoded = addr.encode(family);
        if let (Ok(again), false) = (SockAddr::parse(&encoded), matches!(addr, SockAddr::Unspec)) {
            assert_eq!(again.encode(family), encoded, "address does not round-trip");
        }
    }

    let mut held: Vec<Held> = Vec::new();
    let mut listeners: Vec<Rc<Core>> = Vec::new();
    // Server sides not yet accepted, with what each direction owes.
    type Owed = Rc<RefCell<VecDeque<u8>>>;
    let mut embryos: Vec<(std::rc::Weak<Core>, Owed, Owed)> = Vec::new();
    for op in ops.chunks_exact(4) {
        let (kind, index, a, b) = (op[0] % 10, op[1] as usize, op[2], op[3]);
        match kind {
            // A listener of either stream type.
            0 if listeners.len() < 4 => {
                let kind = if a % 2 == 0 {
                    Kind::Stream
                } else {
                    Kind::SeqPacket
                };
                let family = if b % 2 == 0 { AF_UNIX } else { AF_INET };
                let l = Rc::new(Core::new(family, kind, 0, cred()));
                if l.listen(i32::from(a % 4) - 1, cred()).is_ok() {
                    listeners.push(l);
                }
            }
            // A client connecting to a listener.
            1 if !listeners.is_empty() && held.len() < 16 => {
                let l = listeners[index % listeners.len()].clone();
                let c = Rc::new(Core::new(l.family, l.kind, 0, cred()));
                let to = SockAddr::Unix(capsa_guest::net::addr::UnixName::Unnamed);
                if c.connect_to(&l, to.clone(), to, cred(), a % 2 == 0).is_ok() {
                    // What the client sends is owed to the server side,
                    // which accept hands out later.
                    let (owed, peer_owed): (Owed, Owed) = (Rc::default(), Rc::default());
                    if let Some(server) = c.peer() {
                        embryos.push((Rc::downgrade(&server), peer_owed.clone(), owed.clone()));
                    }
                    held.push(Held {
                        core: c,
                        owed,
                        peer_owed: Some(peer_owed),
                    });
                }
            }
            // Accept: pair the server side with the latest unpaired client.
            2 if !listeners.is_empty() => {
                let l = &listeners[index % listeners.len()];
                if let Ok(server) = l.accept(true) {
                    let Some(at) = embryos
                        .iter()
                        .position(|(w, _, _)| std::ptr::eq(w.as_ptr(), Rc::as_ptr(&server)))
                    else {
                        panic!("accepted a connection nobody made");
                    };
                    let (_, owed, client_owed) = embryos.swap_remove(at);
                    let peer_owed = Some(client_owed);
                    held.push(Held {
                        core: server,
                        owed,
                        peer_owed,
                    });
                }
            }
            // Send a bytes of b's value.
            3 if !held.is_empty() => {
                let h = &held[index % held.len()];
                let data = vec![b; usize::from(a) * 97];
                let stream = h.core.kind == Kind::Stream;
                if let Ok(n) = h.core.send(Segment::new(data.clone(), cred()), None, true) {
                    assert!(n <= data.len());
                    if let (true, Some(owed)) = (stream, &h.peer_owed) {
                        owed.borrow_mut().extend(&data[..n]);
                    }
                }
            }
            // Receive (peek, wait-all, sizes up to 25 KiB).
            4 if !held.is_empty() => {
                let h = &held[index % held.len()];
                let mut out = vec![0u8; usize::from(a) * 100];
                let peek = b & 1 != 0;
                let wait_for = if b & 2 != 0 { out.len() } else { 0 };
                if let Ok(got) = h.core.recv(&mut out, true, peek, wait_for) {
                    assert!(got.len <= out.len() && got.len <= got.full_len);
                    if h.core.kind == Kind::Stream {
                        let mut owed = h.owed.borrow_mut();
                        assert!(got.len <= owed.len(), "received bytes nobody sent");
                        let expected: Vec<u8> = owed.iter().take(got.len).copied().collect();
                        assert_eq!(&out[..got.len], &expected[..], "stream bytes out of order");
                        if !peek {
                            owed.drain(..got.len);
                        }
                    }
                }
            }
            5 if !held.is_empty() => {
                let _ = held[index % held.len()].core.shutdown(u32::from(a % 4));
            }
            // Close one.
            6 if !held.is_empty() => {
                held.remove(index % held.len());
            }
            7 if !listeners.is_empty() => {
                listeners.remove(index % listeners.len());
            }
            8 if !held.is_empty() => {
                let h = &held[index % held.len()];
                let _ = h.core.poll_mask();
                assert!(h.core.readable() <= h.core.rx.borrow().len());
            }
            9 => {
                for l in &listeners {
                    let _ = l.poll_mask();
                }
            }
            _ => {}
        }
    }
});
