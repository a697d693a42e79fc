//! FUSE requests through the virtio-fs request path: each request is laid
//! out in guest memory as the guest kernel does it (device-readable
//! descriptors holding the request, then device-writable ones for the
//! reply), made available on a queue, and served by the VMM's `Fs`
//! (fuse-backend-rs's server over capsa's passthrough configuration and
//! its read-only screen) during the queue notification, through the
//! virtio-mmio transport.
//!
//! The served directory sits beside a sibling holding a random secret; the
//! root has symlinks pointing at it. After the input nothing outside the
//! root may have changed, no reply may carry the secret, and a read-only
//! root must be unchanged too. Every request must come back on the used
//! ring, with no more bytes than its reply buffers hold.
//!
//! Input: u8 flags (bit 0 read-only, bit 1 no INIT from the harness first,
//! bit 2 use the high-priority queue), then requests, each:
//!
//! - u16 LE request length, u16 LE reply buffer length;
//! - u8 split: the request spans `1 + (split & 3)` descriptors, the reply
//!   `1 + ((split >> 2) & 3)`;
//! - the request bytes (a FUSE in-header and its body).

#![no_main]

use std::sync::{Mutex, OnceLock};

use capsa_fuzz::driver::{self, Desc, Ring};
use capsa_fuzz::input::Input;
use capsa_fuzz::ram::Ram;
use capsa_fuzz::sandbox::Sandbox;
use capsa_vmm::bus::BusDevice;
use capsa_vmm::devices::virtio::fs::{Fs, HIPRIO_QUEUE, REQUEST_QUEUE};
use capsa_vmm::devices::virtio::mmio::MmioTransport;
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};

const RAM_SIZE: usize = 256 << 10;
const REQUEST_AT: u64 = 0x1_0000;
const REPLY_AT: u64 = 0x2_0000;
const MAX_REQUESTS: usize = 64;
const FUSE_INIT: u32 = 26;

fn ram() -> &'static Ram {
    capsa_fuzz::ram::shared(RAM_SIZE)
}

fn sandbox() -> &'static Mutex<Sandbox> {
    static SANDBOX: OnceLock<Mutex<Sandbox>> = OnceLock::new();
    SANDBOX.get_or_init(|| {
        capsa_fuzz::limit_file_size();
        Mutex::new(Sandbox::new())
    })
}

/// `[at, at + len)` cut into `pieces` descriptors (the last takes the rest).
fn split(at: u64, len: usize, pieces: usize, write: bool) -> Vec<Desc> {
    let each = len / pieces;
    (0..pieces)
        .map(|i| Desc {
            addr: at + (i * each) as u64,
            len: if i + 1 == pieces {
                len - i * each
            } else {
                each
            } as u32,
            write,
        })
        .collect()
}

/// The INIT the guest kernel sends first: FUSE 7.31, no flags.
fn init_request() -> Vec<u8> {
    let mut msg = Vec::new();
    msg.extend(56u32.to_le_bytes());
    msg.extend(FUSE_INIT.to_le_bytes());
    msg.extend(1u64.to_le_bytes()); // unique
    msg.extend(0u64.to_le_bytes()); // nodeid
    msg.extend([0u8; 16]); // uid, gid, pid, padding
    for v in [7u32, 31, 0, 0] {
        msg.extend(v.to_le_bytes());
    }
    msg
}

struct Driver<'a> {
    ram: &'a Ram,
    device: Box<dyn BusDevice>,
    ring: Ring,
    queue: u32,
}

impl Driver<'_> {
    /// Sends one request; returns the reply bytes the device reported.
    fn request(&mut self, request: &[u8], reply_len: usize, split_byte: u8) -> Vec<u8> {
        let mem = self.ram.memory();
        mem.write_slice(request, GuestAddress(REQUEST_AT)).unwrap();
        let mut descs = split(
            REQUEST_AT,
            request.len(),
            1 + usize::from(split_byte & 3),
            false,
        );
        descs.extend(split(
            REPLY_AT,
            reply_len,
            1 + usize::from((split_byte >> 2) & 3),
            true,
        ));
        let used_before = self.ring.used_idx(mem);
        let head = self.ring.publish(mem, &descs);
        driver::notify(self.device.as_mut(), self.queue);
        let used = self.ring.used_idx(mem);
        assert_eq!(
            used,
            used_before.wrapping_add(1),
            "the request did not come back"
        );
        let (id, len) = self.ring.used_elem(mem, used_before);
        assert_eq!(id, u32::from(head), "another chain came back");
        assert!(
            len as usize <= reply_len,
            "{len} bytes written to a {reply_len}-byte reply"
        );
        let reply = self.ram.read(REPLY_AT, len as usize);
        if capsa_fuzz::verbose() {
            let word =
                |b: &[u8], at: usize| Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?));
            eprintln!(
                "opcode {:?}: {len} reply bytes, error {:?}",
                word(request, 4),
                word(&reply, 4).map(|e| e as i32)
            );
        }
        reply
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.u8();
    let readonly = flags & 1 != 0;
    let queue = if flags & 4 != 0 {
        HIPRIO_QUEUE
    } else {
        REQUEST_QUEUE
    } as u32;
    let ram = ram();
    ram.reset(&[]);
    let mut sandbox = sandbox().lock().unwrap();

    let fs = Fs::new(sandbox.root(), "rootfs", readonly).unwrap();
    let mut driver = Driver {
        ram,
        device: Box::new(MmioTransport::new(fs, ram.memory().clone())),
        ring: Ring::new(0, 0x1000, 0x2000, 16),
        queue,
    };
    driver::negotiate(driver.device.as_mut());
    driver::setup_queue(driver.device.as_mut(), queue, &driver.ring.clone());
    driver::driver_ok(driver.device.as_mut());

    let mut replies = Vec::new();
    if flags & 2 == 0 {
        replies.push(driver.request(&init_request(), 0x1000, 0));
    }
    for _ in 0..MAX_REQUESTS {
        if input.is_empty() {
            break;
        }
        let request_len = usize::from(input.u16());
        let reply_len = usize::from(input.u16());
        let split_byte = input.u8();
        let request = input.bytes(request_len);
        replies.push(driver.request(request, reply_len, split_byte));
    }
    drop(driver);
    let replies: Vec<&[u8]> = replies.iter().map(Vec::as_slice).collect();
    sandbox.check(readonly, &replies, data);
});
