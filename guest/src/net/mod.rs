//! Sockets. Today: AF_UNIX socket pairs (`unix`).

pub mod unix;
