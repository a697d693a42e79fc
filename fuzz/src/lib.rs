//! What capsa's fuzz targets share: guest RAM fenced by guard pages
//! ([`ram`]), a decoder for fuzz input ([`input`]), the driver side of
//! virtio-mmio and split virtqueues ([`driver`]), and a served directory
//! that checks the file server never reaches outside it ([`sandbox`]).
//!
//! Everything here is harness: the code under test is the project's own
//! (`capsa-vmm`, `capsa`, `capsa-guest`), called as the VMM, the runtime and
//! the guest call it.

pub mod driver;
pub mod input;
pub mod ram;
pub mod sandbox;

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;

/// `CAPSA_FUZZ_VERBOSE=1`: targets describe what each input did on stderr
/// (for checking seeds and reproducing crashes, not for fuzzing).
pub fn verbose() -> bool {
    static VERBOSE: OnceLock<bool> = OnceLock::new();
    *VERBOSE.get_or_init(|| std::env::var_os("CAPSA_FUZZ_VERBOSE").is_some_and(|v| v == "1"))
}

/// A descriptor open on /dev/null for device output, kept for the process.
pub fn dev_null() -> RawFd {
    static NULL: OnceLock<File> = OnceLock::new();
    NULL.get_or_init(|| {
        File::options()
            .write(true)
            .open("/dev/null")
            .expect("/dev/null opens")
    })
    .as_raw_fd()
}

/// A non-blocking pipe already holding `data` (at most a pipe buffer's
/// worth), its write end closed: a stdin that delivers `data`, then
/// end-of-file.
pub fn stdin_pipe(data: &[u8]) -> OwnedFd {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 returns.
    let ret = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
    assert_eq!(ret, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just created and are owned by nobody else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let data = &data[..data.len().min(16 << 10)];
    if !data.is_empty() {
        // SAFETY: `data` is a valid buffer of `data.len()` bytes; a pipe
        // holds at least 64 KiB, so this write does not block or fall short.
        let n = unsafe { libc::write(write.as_raw_fd(), data.as_ptr().cast(), data.len()) };
        assert_eq!(n, data.len() as isize);
    }
    read
}

/// Limits what one input can make the file server write on the host, so a
/// fuzzed FALLOCATE or WRITE at a huge offset fails with EFBIG rather than
/// fill the machine's memory (the served directories live on tmpfs).
pub fn limit_file_size() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let limit = libc::rlimit {
            rlim_cur: 16 << 20,
            rlim_max: 16 << 20,
        };
        // SAFETY: plain syscalls with valid arguments; ignoring SIGXFSZ makes
        // an oversized write fail with EFBIG instead of killing the fuzzer.
        unsafe {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            libc::setrlimit(libc::RLIMIT_FSIZE, &limit);
        }
    });
}
