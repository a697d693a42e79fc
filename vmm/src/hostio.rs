//! Small wrappers over the host file descriptor calls the devices make on
//! descriptors they do not own (the process's stdio).

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

/// Whether `fd` has data or end-of-file (or an error) to report, without blocking.
pub fn readable_now(fd: RawFd) -> bool {
    let mut fds = [libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }];
    // SAFETY: `fds` is a valid array of one pollfd for the duration of the call.
    let ret = unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) };
    ret > 0 && fds[0].revents != 0
}

/// Waits until one of `fds` is readable or `timeout` passes (`None`: no
/// timeout). Returns the readable descriptors. Signals that interrupt the wait
/// end it early, like a timeout.
pub fn wait_readable(fds: &[RawFd], timeout: Option<Duration>) -> Vec<RawFd> {
    let mut pollfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: libc::time_t::try_from(t.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(t.subsec_nanos() as i32),
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `pollfds` is a valid array of `pollfds.len()` entries and `ts_ptr`
    // is null or points to a timespec that outlives the call; no signal mask.
    let ret = unsafe {
        libc::ppoll(
            pollfds.as_mut_ptr(),
            pollfds.len() as libc::nfds_t,
            ts_ptr,
            std::ptr::null(),
        )
    };
    if ret <= 0 {
        return Vec::new();
    }
    pollfds
        .iter()
        .filter(|p| p.revents != 0)
        .map(|p| p.fd)
        .collect()
}

/// One `read(2)`, retried on `EINTR`.
pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
        let ret = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if ret >= 0 {
            return Ok(ret as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Writes all of `buf`, retrying on `EINTR` and short writes, waiting for
/// writability if the descriptor is non-blocking.
pub fn write_all(fd: RawFd, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: `buf` is valid for reads of `buf.len()` bytes.
        let ret = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if ret > 0 {
            buf = &buf[ret as usize..];
            continue;
        }
        if ret == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::Interrupted => {}
            io::ErrorKind::WouldBlock => {
                let mut fds = [libc::pollfd {
                    fd,
                    events: libc::POLLOUT,
                    revents: 0,
                }];
                // SAFETY: `fds` is a valid array of one pollfd.
                unsafe { libc::poll(fds.as_mut_ptr(), 1, -1) };
            }
            _ => return Err(err),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn pipe() -> (std::fs::File, std::fs::File) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe(2) returns.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        use std::os::fd::FromRawFd;
        // SAFETY: both descriptors were just created and are owned by nobody else.
        unsafe {
            (
                std::fs::File::from_raw_fd(fds[0]),
                std::fs::File::from_raw_fd(fds[1]),
            )
        }
    }

    #[test]
    fn pipe_round_trip_and_eof() {
        let (r, w) = pipe();
        assert!(!readable_now(r.as_raw_fd()));
        assert!(wait_readable(&[r.as_raw_fd()], Some(Duration::from_millis(1))).is_empty());
        write_all(w.as_raw_fd(), b"abc").unwrap();
        assert!(readable_now(r.as_raw_fd()));
        let mut buf = [0; 8];
        assert_eq!(read(r.as_raw_fd(), &mut buf).unwrap(), 3);
        assert_eq!(&buf[..3], b"abc");
        drop(w);
        assert!(readable_now(r.as_raw_fd()));
        assert_eq!(read(r.as_raw_fd(), &mut buf).unwrap(), 0);
    }
}
