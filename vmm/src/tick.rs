//! The guest's timer tick. The guest has no interrupt controller and runs
//! its CPL3 code with interrupts off (under PVM, guest CPL0 is emulated
//! instruction by instruction, so an IDT-delivered interrupt would cost a
//! trip through it). Instead the VMM interrupts the guest itself: a host
//! timer signal every [`capsa_abi::control::TICK_PERIOD_NS`] of guest
//! running time kicks the vCPU out of `KVM_RUN`; if the vCPU is in the
//! application at CPL3, the VMM writes the interrupted context as an
//! exception frame where the guest said and resumes the vCPU at the
//! guest's tick entry, which then takes its fault path (time slice,
//! timers, signals). In the guest's kernel code (or at CPL0) the tick is
//! dropped: the kernel ends every entry with the same checks. While the
//! guest idles the timer is disarmed, so an idle VM takes no ticks.
//!
//! Written by hand: the handler may only touch an atomic (async-signal
//! safety), and no crate offers a per-process interval timer that
//! interrupts `KVM_RUN`.

use std::sync::atomic::{AtomicBool, Ordering};

use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};

use crate::memory::GuestMemory;
use capsa_abi::control::{TICK_PERIOD_NS, TICK_VECTOR};

/// Errors of the tick.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot create the tick timer")]
    Create(#[source] std::io::Error),
    #[error("cannot get or set the vCPU's registers for a tick")]
    Registers(#[source] kvm_ioctls::Error),
}

/// Where the guest takes its ticks (`control::TICK_ENTRY_ADDR`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TickEntry {
    rip: u64,
    rsp: u64,
    frame: u64,
    kernel: (u64, u64),
}

impl TickEntry {
    /// Decodes the guest's five little-endian words; None if they make no
    /// sense (the guest then simply gets no ticks).
    pub fn parse(raw: &[u8; 40]) -> Option<Self> {
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&raw[i * 8..i * 8 + 8]);
            u64::from_le_bytes(b)
        };
        let entry = TickEntry {
            rip: word(0),
            rsp: word(1),
            frame: word(2),
            kernel: (word(3), word(4)),
        };
        let sane = entry.rip != 0
            && entry.rsp != 0
            && entry.kernel.0 < entry.kernel.1
            && entry.frame.checked_add(FRAME_BYTES).is_some();
        sane.then_some(entry)
    }
}

/// The seven words of the frame the guest reads.
const FRAME_BYTES: u64 = 56;

static TICKED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_tick(_sig: libc::c_int) {
    TICKED.store(true, Ordering::Release);
}

/// The timer, and what the guest said about taking ticks.
pub struct Ticker {
    timer: libc::timer_t,
    entry: Option<TickEntry>,
    armed: bool,
}

impl Ticker {
    /// Installs the signal handler and creates the (disarmed) timer; both
    /// need system calls the seccomp filter forbids, so this runs before.
    pub fn new() -> Result<Self, Error> {
        let signal = libc::SIGRTMIN();
        // SAFETY: a zeroed sigaction is valid; the handler only stores an
        // atomic. SA_RESTART: the VMM's own calls (file I/O for the guest)
        // go on; KVM_RUN returns EINTR all the same, which is the point.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_tick as extern "C" fn(libc::c_int) as usize;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(signal, &action, std::ptr::null_mut()) != 0 {
                return Err(Error::Create(std::io::Error::last_os_error()));
            }
        }
        // SAFETY: a zeroed sigevent is valid; the fields set make it deliver
        // `signal` to this process.
        let mut event: libc::sigevent = unsafe { std::mem::zeroed() };
        event.sigev_notify = libc::SIGEV_SIGNAL;
        event.sigev_signo = signal;
        let mut timer: libc::timer_t = std::ptr::null_mut();
        // SAFETY: `event` and `timer` are valid for the call.
        if unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut event, &mut timer) } != 0 {
            return Err(Error::Create(std::io::Error::last_os_error()));
        }
        Ok(Ticker {
            timer,
            entry: None,
            armed: false,
        })
    }

    fn set(&mut self, on: bool) {
        if self.armed == on || self.entry.is_none() {
            return;
        }
        let period = libc::timespec {
            tv_sec: (TICK_PERIOD_NS / 1_000_000_000) as libc::time_t,
            tv_nsec: (TICK_PERIOD_NS % 1_000_000_000) as libc::c_long,
        };
        let zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let spec = libc::itimerspec {
            it_interval: if on { period } else { zero },
            it_value: if on { period } else { zero },
        };
        // SAFETY: `self.timer` was created in `new`; `spec` is valid. A
        // failure leaves the guest without ticks, nothing worse.
        unsafe { libc::timer_settime(self.timer, 0, &spec, std::ptr::null_mut()) };
        self.armed = on;
    }

    /// The guest registered its tick entry: ticks start.
    pub fn enable(&mut self, entry: TickEntry) {
        self.entry = Some(entry);
        self.set(true);
    }

    /// No ticks while the guest idles.
    pub fn pause(&mut self) {
        self.set(false);
        TICKED.store(false, Ordering::Release);
    }

    pub fn resume(&mut self) {
        self.set(true);
    }

    /// Delivers a tick that came since the last call, if the vCPU is in
    /// the application; returns whether it did.
    pub fn deliver(&mut self, vcpu: &VcpuFd, mem: &GuestMemory) -> Result<bool, Error> {
        if !TICKED.swap(false, Ordering::AcqRel) {
            return Ok(false);
        }
        let Some(entry) = self.entry else {
            return Ok(false);
        };
        // An exception (a page fault, say) the vCPU was about to take
        // would be taken at the tick entry instead, with its frame naming
        // the entry: that tick is skipped.
        let events = vcpu.get_vcpu_events().map_err(Error::Registers)?;
        if events.exception.injected != 0
            || events.exception.pending != 0
            || events.interrupt.injected != 0
            || events.nmi.injected != 0
        {
            return Ok(false);
        }
        let mut regs = vcpu.get_regs().map_err(Error::Registers)?;
        let sregs = vcpu.get_sregs().map_err(Error::Registers)?;
        let in_application =
            sregs.cs.selector & 3 == 3 && !(entry.kernel.0..entry.kernel.1).contains(&regs.rip);
        if !in_application {
            return Ok(false);
        }
        let frame = [
            TICK_VECTOR,
            0,
            regs.rip,
            u64::from(sregs.cs.selector),
            regs.rflags,
            regs.rsp,
            u64::from(sregs.ss.selector),
        ];
        let bytes: Vec<u8> = frame.iter().flat_map(|w| w.to_le_bytes()).collect();
        if mem.write_slice(&bytes, GuestAddress(entry.frame)).is_err() {
            return Ok(false);
        }
        regs.rip = entry.rip;
        regs.rsp = entry.rsp;
        // Bit 1 is reserved (always set); no IF, DF clear for the guest's
        // compiled code.
        regs.rflags = 0x2;
        vcpu.set_regs(&regs).map_err(Error::Registers)?;
        Ok(true)
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        // SAFETY: created in `new`, deleted once.
        unsafe { libc::timer_delete(self.timer) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(words: [u64; 5]) -> [u8; 40] {
        let mut b = [0u8; 40];
        for (i, w) in words.iter().enumerate() {
            b[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
        b
    }

    #[test]
    fn a_tick_entry_is_read_from_five_words_and_nonsense_refused() {
        let e = TickEntry::parse(&raw([
            0x20_1000, 0x30_0000, 0x2f_ffc8, 0x20_0000, 0x40_0000,
        ]))
        .expect("valid");
        assert_eq!((e.rip, e.rsp, e.frame), (0x20_1000, 0x30_0000, 0x2f_ffc8));
        assert_eq!(e.kernel, (0x20_0000, 0x40_0000));
        assert_eq!(TickEntry::parse(&raw([0, 1, 2, 3, 4])), None, "no entry");
        assert_eq!(
            TickEntry::parse(&raw([1, 1, 2, 9, 4])),
            None,
            "empty kernel range"
        );
        assert_eq!(
            TickEntry::parse(&raw([1, 1, u64::MAX - 8, 3, 4])),
            None,
            "frame past the end of the address space"
        );
    }
}
