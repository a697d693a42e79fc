//! The vCPU loop and its exit dispatcher.
//!
//! [`handle_exit`] is a plain function over a [`VcpuExit`] and the [`Bus`],
//! so every exit path is unit-tested without `/dev/kvm`.

use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::bus::{Action, Bus};
use crate::memory::GuestMemory;
use crate::tick::Ticker;
use crate::GuestExit;

/// Why the guest stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The guest hit a state it cannot leave (named exit at the given RIP).
    #[error("unexpected vCPU exit {exit} at guest RIP {rip:#x}")]
    UnexpectedExit { exit: String, rip: u64 },
    /// The guest kernel reported a panic.
    #[error("the guest kernel panicked: {message}")]
    GuestPanic { message: String },
    /// `KVM_RUN` failed.
    #[error("cannot run the vCPU")]
    Run(#[source] kvm_ioctls::Error),
    #[error("cannot deliver a timer tick")]
    Tick(#[from] crate::tick::Error),
}

/// What one exit means for the loop.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Action(Action),
    /// An exit the guest cannot recover from, by name.
    Unexpected(String),
}

/// Handles one vCPU exit: MMIO goes to the bus, port I/O is ignored (reads
/// return all ones), anything else is unexpected.
pub fn handle_exit(exit: VcpuExit<'_>, bus: &mut Bus) -> Outcome {
    match exit {
        VcpuExit::MmioRead(addr, data) => {
            bus.read(addr, data);
            Outcome::Action(Action::Continue)
        }
        VcpuExit::MmioWrite(addr, data) => Outcome::Action(bus.write(addr, data)),
        VcpuExit::IoIn(_, data) => {
            data.fill(0xff);
            Outcome::Action(Action::Continue)
        }
        VcpuExit::IoOut(..) | VcpuExit::Intr => Outcome::Action(Action::Continue),
        VcpuExit::Hlt => Outcome::Unexpected("HLT with no interrupt controller".into()),
        VcpuExit::Shutdown => Outcome::Unexpected("SHUTDOWN (triple fault)".into()),
        VcpuExit::InternalError => Outcome::Unexpected(
            "INTERNAL_ERROR (instruction the hypervisor cannot emulate?)".into(),
        ),
        VcpuExit::FailEntry(reason, cpu) => Outcome::Unexpected(format!(
            "FAIL_ENTRY (hardware reason {reason:#x}, cpu {cpu})"
        )),
        VcpuExit::SystemEvent(kind, _) => Outcome::Unexpected(format!("SYSTEM_EVENT {kind}")),
        VcpuExit::Unsupported(reason) => Outcome::Unexpected(format!("exit reason {reason}")),
        other => Outcome::Unexpected(format!("{other:?}")),
    }
}

/// Runs the vCPU until the guest's process ends or the guest fails.
pub fn run_loop(
    vcpu: &mut VcpuFd,
    bus: &mut Bus,
    mem: &GuestMemory,
    ticker: &mut Ticker,
) -> Result<GuestExit, Error> {
    loop {
        ticker.deliver(vcpu, mem)?;
        let outcome = match vcpu.run() {
            Ok(exit) => handle_exit(exit, bus),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                // A tick or a signal: input (network frames) waits for no exit.
                bus.poll_ready_inputs();
                continue;
            }
            Err(e) => return Err(Error::Run(e)),
        };
        match outcome {
            Outcome::Action(Action::Continue) => {}
            Outcome::Action(Action::Idle(timeout)) => {
                ticker.pause();
                bus.idle(timeout);
                ticker.resume();
            }
            Outcome::Action(Action::EnableTicks(entry)) => ticker.enable(entry),
            Outcome::Action(Action::MmioWrites(writes)) => bus.write_batch(
                &writes,
                capsa_abi::VIRTIO_MMIO_BASE
                    ..capsa_abi::VIRTIO_MMIO_BASE
                        + capsa_abi::VIRTIO_MMIO_SIZE * capsa_abi::MAX_DEVICES as u64,
            ),
            Outcome::Action(Action::Exit(exit)) => return Ok(exit),
            Outcome::Action(Action::Panic(message)) => return Err(Error::GuestPanic { message }),
            Outcome::Unexpected(exit) => {
                let rip = vcpu.get_regs().map_or(u64::MAX, |r| r.rip);
                return Err(Error::UnexpectedExit { exit, rip });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::tests::Recorder;
    use crate::bus::BusDevice;

    struct Exiter;
    impl BusDevice for Exiter {
        fn read(&mut self, _: u64, data: &mut [u8]) {
            data.fill(7);
        }
        fn write(&mut self, _: u64, data: &[u8]) -> Action {
            Action::Exit(GuestExit::Code(data[0]))
        }
    }

    #[test]
    fn mmio_goes_to_the_bus() {
        let mut bus = Bus::new();
        let rec = Recorder::default();
        let writes = rec.writes.clone();
        bus.insert(0x1000, 0x1000, Box::new(rec)).unwrap();
        bus.insert(0x2000, 0x1000, Box::new(Exiter)).unwrap();

        let mut data = [0u8; 4];
        assert_eq!(
            handle_exit(VcpuExit::MmioRead(0x2000, &mut data), &mut bus),
            Outcome::Action(Action::Continue)
        );
        assert_eq!(data, [7; 4]);
        assert_eq!(
            handle_exit(VcpuExit::MmioWrite(0x1008, &[5]), &mut bus),
            Outcome::Action(Action::Continue)
        );
        assert_eq!(*writes.borrow(), vec![(8, vec![5])]);
        assert_eq!(
            handle_exit(VcpuExit::MmioWrite(0x2008, &[3]), &mut bus),
            Outcome::Action(Action::Exit(GuestExit::Code(3)))
        );
        // Unmapped: reads are zero, writes dropped.
        let mut data = [9u8; 8];
        handle_exit(VcpuExit::MmioRead(0xdead_0000, &mut data), &mut bus);
        assert_eq!(data, [0; 8]);
    }

    #[test]
    fn port_io_is_ignored_and_fatal_exits_are_named() {
        let mut bus = Bus::new();
        let mut data = [0u8; 2];
        assert_eq!(
            handle_exit(VcpuExit::IoIn(0x3f8, &mut data), &mut bus),
            Outcome::Action(Action::Continue)
        );
        assert_eq!(data, [0xff; 2]);
        assert_eq!(
            handle_exit(VcpuExit::IoOut(0x3f8, &[1]), &mut bus),
            Outcome::Action(Action::Continue)
        );
        for exit in [
            VcpuExit::Shutdown,
            VcpuExit::Hlt,
            VcpuExit::InternalError,
            VcpuExit::FailEntry(3, 0),
            VcpuExit::Unknown,
        ] {
            assert!(matches!(
                handle_exit(exit, &mut bus),
                Outcome::Unexpected(_)
            ));
        }
        let Outcome::Unexpected(name) = handle_exit(VcpuExit::Shutdown, &mut bus) else {
            unreachable!()
        };
        assert!(name.contains("SHUTDOWN"));
    }
}
