//! Linux error numbers.
//!
//! A newtype over the raw value rather than a closed enum: FUSE servers
//! answer with any host errno, and those must reach the application
//! unchanged.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub i32);

macro_rules! errnos {
    ($($name:ident = $value:expr,)*) => {
        impl Errno {
            $(pub const $name: Errno = Errno($value);)*
        }
    };
}

errnos! {
    EPERM = 1,
    ENOENT = 2,
    ESRCH = 3,
    EINTR = 4,
    EIO = 5,
    ENXIO = 6,
    E2BIG = 7,
    ENOEXEC = 8,
    EBADF = 9,
    ECHILD = 10,
    EAGAIN = 11,
    ENOMEM = 12,
    EACCES = 13,
    EFAULT = 14,
    EBUSY = 16,
    EEXIST = 17,
    EXDEV = 18,
    ENODEV = 19,
    ENOTDIR = 20,
    EISDIR = 21,
    EINVAL = 22,
    ENFILE = 23,
    EMFILE = 24,
    ENOTTY = 25,
    EFBIG = 27,
    ENOSPC = 28,
    ESPIPE = 29,
    EROFS = 30,
    EPIPE = 32,
    EDOM = 33,
    ERANGE = 34,
    EDEADLK = 35,
    ENAMETOOLONG = 36,
    ENOSYS = 38,
    ENOTEMPTY = 39,
    ELOOP = 40,
    ENODATA = 61,
    EOVERFLOW = 75,
    ENOTSOCK = 88,
    EDESTADDRREQ = 89,
    EMSGSIZE = 90,
    EPROTOTYPE = 91,
    ENOPROTOOPT = 92,
    EPROTONOSUPPORT = 93,
    EOPNOTSUPP = 95,
    EAFNOSUPPORT = 97,
    EADDRINUSE = 98,
    EADDRNOTAVAIL = 99,
    ENETUNREACH = 101,
    ECONNRESET = 104,
    ENOBUFS = 105,
    EISCONN = 106,
    ENOTCONN = 107,
    ETIMEDOUT = 110,
    ECONNREFUSED = 111,
    EALREADY = 114,
    EINPROGRESS = 115,
}

impl Errno {
    /// Kernel-internal, never seen by the application: the call cannot
    /// complete now; the scheduler blocks the process and restarts the call
    /// later (see `crate::task::process`). Linux's own ERESTARTSYS range.
    pub const EBLOCK: Errno = Errno(512);

    /// What a call that cannot go on now answers: `EAGAIN` when the caller
    /// asked not to wait, else `EBLOCK` (wait and retry).
    pub fn would_block(nonblocking: bool) -> Errno {
        if nonblocking {
            Errno::EAGAIN
        } else {
            Errno::EBLOCK
        }
    }

    /// The value a syscall returns for this error.
    pub fn to_ret(self) -> i64 {
        -(self.0 as i64)
    }

    /// An error number received from a device (FUSE `error` field, negative).
    /// Zero or out-of-range values become `EIO`.
    pub fn from_device(negative: i32) -> Errno {
        match negative.checked_neg() {
            Some(value) if (1..4096).contains(&value) => Errno(value),
            _ => Errno::EIO,
        }
    }
}

pub type Result<T> = core::result::Result<T, Errno>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_errors_map_back_directly() {
        assert_eq!(Errno::from_device(-2), Errno::ENOENT);
        assert_eq!(Errno::from_device(-13).to_ret(), -13);
        assert_eq!(Errno::from_device(0), Errno::EIO);
        assert_eq!(Errno::from_device(i32::MIN), Errno::EIO);
    }
}
