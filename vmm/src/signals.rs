//! Signals the host sends the VMM for its guest (`capsa kill`, a forwarding
//! `capsa run`, podman's stop): a handler sets the signal's bit in the
//! guest's host-signal word ([`capsa_abi::HOST_SIGNALS_ADDR`]), which the
//! guest checks after every system call and while idle, and delivers to its
//! first process. The handler interrupts `KVM_RUN` and the idle wait (no
//! `SA_RESTART`), so an idle guest sees the signal at once.
//!
//! Written by hand: the handler must only touch an atomic in guest memory
//! (async-signal-safe); no crate offers that as a primitive.

use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

/// The signals passed to the guest. SIGKILL and SIGSTOP act on the VMM
/// itself. SIGWINCH comes from the terminal the VMM's stdio is when the
/// spec asks for one (a resize by whoever holds the master): the guest's
/// process then reads the new size through its terminal requests.
const FORWARDED: [libc::c_int; 7] = [
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGTERM,
    libc::SIGWINCH,
];

/// The word the handler sets bits in (null: none, signals are dropped).
static WORD: AtomicPtr<AtomicU64> = AtomicPtr::new(std::ptr::null_mut());

extern "C" fn on_signal(sig: libc::c_int) {
    let word = WORD.load(Ordering::Acquire);
    if !word.is_null() && (1..=64).contains(&sig) {
        // SAFETY: `word` points into guest RAM, which outlives the
        // `Forwarding` that published it; the access is one atomic op.
        unsafe { (*word).fetch_or(1 << (sig - 1), Ordering::AcqRel) };
    }
}

/// Forwards the signals while alive; dropping it stops publishing the word
/// (the handlers stay and drop later signals).
pub struct Forwarding(());

impl Drop for Forwarding {
    fn drop(&mut self) {
        WORD.store(std::ptr::null_mut(), Ordering::Release);
    }
}

/// Starts forwarding into `word` (8-byte aligned guest memory that lives
/// until the returned guard is dropped).
pub fn forward_to(word: *const AtomicU64) -> Forwarding {
    WORD.store(word.cast_mut(), Ordering::Release);
    for sig in FORWARDED {
        // SAFETY: a zeroed sigaction is valid; the handler only does an
        // atomic store through a pointer published above.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }
    Forwarding(())
}

/// Holds SIGPIPE blocked on the calling thread: a write to an exec stream
/// whose reader left then fails with EPIPE, which the guest's writer gets
/// (and its SIGPIPE) instead of the whole VMM dying. The consoles are the
/// container's own stdout and stderr, where the VMM must die as the process
/// would: they call [`die_of_sigpipe`].
pub fn hold_sigpipe() {
    set_sigpipe_mask(libc::SIG_BLOCK);
}

/// Lets the SIGPIPE a failed write left pending act (by default, ending
/// the VMM with it).
pub fn die_of_sigpipe() {
    set_sigpipe_mask(libc::SIG_UNBLOCK);
}

fn set_sigpipe_mask(how: libc::c_int) {
    // SAFETY: a sigset built with sigemptyset/sigaddset and passed by
    // pointer for the duration of the call.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPIPE);
        libc::pthread_sigmask(how, &set, std::ptr::null_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_sets_its_bit_while_forwarding() {
        let word = Box::new(AtomicU64::new(0));
        let guard = forward_to(&*word);
        // SAFETY: raising a signal whose handler was just installed.
        unsafe { libc::raise(libc::SIGUSR2) };
        assert_eq!(word.load(Ordering::Acquire), 1 << (libc::SIGUSR2 - 1));
        drop(guard);
        // SAFETY: as above; the word is no longer published.
        unsafe { libc::raise(libc::SIGUSR2) };
        assert_eq!(word.load(Ordering::Acquire), 1 << (libc::SIGUSR2 - 1));
    }
}
