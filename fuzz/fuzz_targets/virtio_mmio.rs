//! The VMM's MMIO bus as the guest sees it: the control device, two
//! virtio-consoles (stdin/stdout, stderr) and a virtio-fs device behind the
//! virtio-mmio transport, mapped where `vm.rs` maps them, driven by a
//! sequence of register reads and writes of every width, guest memory
//! pokes (to build rings and buffers) and idle polls. Queue notifications
//! make the devices process whatever rings the input has set up.
//!
//! Input: a byte giving the length of stdin's contents, those bytes, then
//! operations:
//!
//! - `op` u8: bits 0-1 the kind (0 read, 1 write, 2 poke RAM, 3 idle), bits
//!   2-3 the access width (1, 2, 4, 8 bytes), bits 4-7 the target (0
//!   control, 1-3 the virtio devices, 4 the unmapped slot after them, 5 the
//!   bottom of the address space, others the top);
//! - `offset` u16 LE, relative to the target (for a poke: the guest address);
//! - for a write, the value, u64 LE (its low `width` bytes are written);
//!   for a poke, a u32 LE.

#![no_main]

use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Mutex;
use std::time::Duration;

use capsa_abi::{CONTROL_MMIO_BASE, CONTROL_MMIO_SIZE, VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE};
use capsa_fuzz::input::Input;
use capsa_fuzz::ram::Ram;
use capsa_fuzz::sandbox::Sandbox;
use capsa_vmm::bus::{Action, Bus};
use capsa_vmm::devices::control::Control;
use capsa_vmm::devices::virtio::console::Console;
use capsa_vmm::devices::virtio::fs::Fs;
use capsa_vmm::devices::virtio::mmio::MmioTransport;
use capsa_vmm::devices::Stdin;
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};

const RAM_SIZE: usize = 64 << 10;

fn ram() -> &'static Ram {
    capsa_fuzz::ram::shared(RAM_SIZE)
}

fn sandbox() -> &'static Mutex<Sandbox> {
    capsa_fuzz::sandbox::shared()
}

fn address(target: u8, offset: u16) -> u64 {
    let offset = u64::from(offset);
    match target {
        0 => CONTROL_MMIO_BASE + offset,
        1..=4 => VIRTIO_MMIO_BASE + u64::from(target - 1) * VIRTIO_MMIO_SIZE + offset,
        5 => offset,
        _ => u64::MAX - offset,
    }
}

fuzz_target!(|data: &[u8]| {
    let ram = ram();
    ram.reset(&[]);
    let mem = ram.memory();
    let mut sandbox = sandbox().lock().unwrap();
    let mut input = Input::new(data);
    let stdin_len = input.u8();
    let stdin_fd = capsa_fuzz::stdin_pipe(input.bytes(usize::from(stdin_len)));
    let stdin = Rc::new(Stdin::new(stdin_fd.as_raw_fd()));
    let null = capsa_fuzz::dev_null();

    let mut bus = Bus::new();
    bus.insert(
        CONTROL_MMIO_BASE,
        CONTROL_MMIO_SIZE,
        Box::new(Control::with_log(
            mem.clone(),
            stdin.clone(),
            Box::new(|_| {}),
        )),
    )
    .unwrap();
    let fs = Fs::new(sandbox.root(), "rootfs", true).unwrap();
    let devices: [Box<dyn capsa_vmm::bus::BusDevice>; 3] = [
        Box::new(MmioTransport::new(
            Console::new(Some(stdin), null),
            mem.clone(),
        )),
        Box::new(MmioTransport::new(Console::new(None, null), mem.clone())),
        Box::new(MmioTransport::new(fs, mem.clone())),
    ];
    for (i, device) in devices.into_iter().enumerate() {
        let base = VIRTIO_MMIO_BASE + i as u64 * VIRTIO_MMIO_SIZE;
        bus.insert(base, VIRTIO_MMIO_SIZE, device).unwrap();
    }

    while !input.is_empty() {
        let op = input.u8();
        let width = 1usize << ((op >> 2) & 3);
        let offset = input.u16();
        let addr = address(op >> 4, offset);
        match op & 3 {
            0 => {
                let mut buf = [0u8; 8];
                bus.read(addr, &mut buf[..width]);
            }
            1 => {
                let value = input.u64().to_le_bytes();
                // The vCPU loop idles on Idle; here it only polls, so an
                // input cannot sleep.
                if let Action::Idle(_) = bus.write(addr, &value[..width]) {
                    bus.idle(Some(Duration::ZERO));
                }
            }
            2 => {
                let _ = mem.write_obj(input.u32(), GuestAddress(u64::from(offset)));
            }
            _ => bus.idle(Some(Duration::ZERO)),
        }
    }
    if capsa_fuzz::verbose() {
        // Which devices used buffers (InterruptStatus) and what they wrote.
        let status: Vec<u8> = (1..=3)
            .map(|target| {
                let mut word = [0u8; 4];
                bus.read(address(target, 0x60), &mut word);
                word[0]
            })
            .collect();
        eprintln!("interrupt status per virtio device: {status:?}");
    }
    drop(bus);
    sandbox.check(true, &[], data);
});
