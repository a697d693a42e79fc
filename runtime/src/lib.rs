//! capsa: an OCI runtime with two isolation backends behind one interface.
//!
//! The lifecycle ([`lifecycle`]), state store ([`state`]), hooks and cgroups
//! are shared; a [`backend::Backend`] decides what the container's init does
//! once its namespaces and cgroup exist: set up a root filesystem and exec the
//! process ([`container`]), or boot the process in a KVM microVM ([`microvm`]).

pub mod backend;
pub mod bench;
pub mod cgroups;
pub mod container;
pub mod demo;
pub mod hooks;
pub mod init;
pub mod lifecycle;
pub mod logging;
pub mod microvm;
pub mod paths;
pub mod plot;
pub mod seccomp;
pub mod signal;
pub mod spec;
pub mod state;
pub mod sync;
pub mod terminal;
pub mod trace;

/// An error and its sources on one line, outermost first, separated by ": ".
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        // Transparent wrappers repeat their source's text; print it once.
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}
