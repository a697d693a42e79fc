//! Descriptor chains the guest controls entirely: the input is guest RAM
//! (descriptor table, rings and buffers wherever it puts them) plus a
//! header that sets one queue of a virtio-console, virtio-fs or virtio-net device up
//! through the virtio-mmio transport and notifies it. The device must not
//! panic, hang, or touch host memory outside guest RAM (RAM sits between
//! guard pages).
//!
//! Input header:
//!
//! - u8: bits 0 and 2 the device (0 console, 1 fs, 4 or 5 net), bit 1 the
//!   queue (console and net: 0 receive, 1 transmit; fs: 0 high priority,
//!   1 requests);
//! - u8: queue size, `1 << (value % 9)`;
//! - u16 LE ×3: descriptor table, avail ring, used ring addresses;
//! - u8: number of notifications, `1 + value % 4`;
//! - u8: length of stdin's contents for the console (the frames the TAP
//!   delivers, for the network device), then those bytes;
//!
//! then guest RAM from address 0 (64 KiB; the rest is zero).

#![no_main]

use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Mutex;

use capsa_fuzz::driver::{self, Ring};
use capsa_fuzz::input::Input;
use capsa_fuzz::ram::Ram;
use capsa_fuzz::sandbox::Sandbox;
use capsa_vmm::bus::BusDevice;
use capsa_vmm::devices::virtio::console::Console;
use capsa_vmm::devices::virtio::fs::Fs;
use capsa_vmm::devices::virtio::mmio::MmioTransport;
use capsa_vmm::devices::virtio::net::Net;
use capsa_vmm::devices::Stdin;
use libfuzzer_sys::fuzz_target;

const RAM_SIZE: usize = 64 << 10;

fn ram() -> &'static Ram {
    capsa_fuzz::ram::shared(RAM_SIZE)
}

fn sandbox() -> &'static Mutex<Sandbox> {
    capsa_fuzz::sandbox::shared()
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let which = input.u8();
    let size = 1u16 << (input.u8() % 9);
    let ring = Ring::new(
        u64::from(input.u16()),
        u64::from(input.u16()),
        u64::from(input.u16()),
        size,
    );
    let notifications = 1 + input.u8() % 4;
    let stdin_len = input.u8();
    let stdin_fd = capsa_fuzz::stdin_pipe(input.bytes(usize::from(stdin_len)));
    let ram = ram();
    ram.reset(input.rest());
    let mem = ram.memory();
    let mut sandbox = sandbox().lock().unwrap();

    let queue = u32::from((which >> 1) & 1);
    let mut device: Box<dyn BusDevice> = if which & 4 != 0 {
        // The pipe stands in for the TAP: its bytes arrive as a frame,
        // and transmitted frames fail to write, as to a TAP gone down.
        let tap = stdin_fd.try_clone().unwrap();
        Box::new(MmioTransport::new(
            Net::new(tap, [2, 0, 0, 0, 0, 1], 1500),
            mem.clone(),
        ))
    } else if which & 1 == 0 {
        let stdin = Rc::new(Stdin::new(stdin_fd.as_raw_fd()));
        let console = Console::new(Some(stdin), capsa_fuzz::dev_null());
        Box::new(MmioTransport::new(console, mem.clone()))
    } else {
        let fs = Fs::new(sandbox.root(), "rootfs", true).unwrap();
        Box::new(MmioTransport::new(fs, mem.clone()))
    };
    driver::negotiate(device.as_mut());
    driver::setup_queue(device.as_mut(), queue, &ring);
    driver::driver_ok(device.as_mut());
    for _ in 0..notifications {
        driver::notify(device.as_mut(), queue);
        // Input the console has waiting goes to the receive queue, as
        // after the vCPU loop's poll.
        if device.input_fd().is_some() {
            device.poll_input();
        }
    }
    drop(device);
    if capsa_fuzz::verbose() {
        let used = ram.read(ring.used, 4);
        eprintln!("used index {:?}", used.get(2..4));
    }
    sandbox.check(true, &[], data);
});
