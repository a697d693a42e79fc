//! The isolation backends behind one interface.
//!
//! Everything about a container's lifecycle is shared (state store, cgroup,
//! hooks, the init's synchronisation with `capsa`); a backend only decides
//! which namespaces the init lives in, what it prepares before `start`, and
//! what it launches after.
//!
//! This module names neither backend: they implement [`Backend`] below it,
//! the init (`init.rs`) drives one through the trait, and the lifecycle
//! picks which one runs a container.

use std::convert::Infallible;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType, LinuxResources, Process, Spec};

use crate::spec::Bundle;
use crate::sync::Channel;

/// A backend's own error, boxed so that this interface needs neither
/// backend's type; its message and sources pass through unchanged.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Failed(Box<dyn std::error::Error + Send + Sync>),
}

pub trait Backend {
    /// Rejects what this backend cannot run, before anything is created.
    fn check(&self, bundle: &Bundle) -> Result<(), BackendError>;
    /// The limits of the container's cgroup: by default `linux.resources`.
    fn cgroup_resources(&self, spec: &Spec) -> Option<LinuxResources> {
        spec.linux().as_ref().and_then(|l| l.resources().clone())
    }
    /// The namespaces the init runs in: new ones, or existing ones by path.
    fn namespaces(&self, spec: &Spec) -> Vec<LinuxNamespace>;
    /// Runs in the init before the container is reported created.
    fn prepare(&self, init: &mut Init) -> Result<(), BackendError>;
    /// Runs in the init after `start`; returns only on failure.
    fn launch(&self, init: Init) -> Result<Infallible, BackendError>;
    /// Runs in `capsa delete` once the container's processes are gone and
    /// before its state directory goes: undoes what the backend changed
    /// outside the container's own namespaces, cgroup and state.
    fn release(&self, _spec: &Spec, _state_dir: &std::path::Path) {}
}

/// What the init knows: everything is inherited from `capsa create` through
/// the clone, so nothing is re-read from the bundle. Defined here because
/// the trait hands it to the backend; what the init does with it (hooks,
/// waiting for `start`) is in `init.rs`.
pub struct Init {
    pub id: String,
    pub spec: Spec,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    /// The container's state directory, removed with the container: a
    /// backend may put there what must go with it.
    pub state_dir: PathBuf,
    pub channel: Channel,
    /// The exec fifo, opened read-only and non-blocking by capsa before the clone.
    pub fifo: Option<OwnedFd>,
    /// Where to send the terminal's master side (console socket), if any.
    pub console_socket: Option<OwnedFd>,
    /// Extra fds (from 3) passed through to the process, like runc's --preserve-fds.
    pub preserve_fds: i32,
    /// Namespaces this init created rather than joined.
    pub new_namespaces: Vec<LinuxNamespaceType>,
    /// What the backend's `prepare` leaves for its `launch` (resources it
    /// must acquire while the init is still privileged).
    pub handover: Option<Box<dyn std::any::Any>>,
}

impl Init {
    pub fn process(&self) -> &Process {
        // Validation guarantees a process; the default only guards the type.
        static DEFAULT: std::sync::OnceLock<Process> = std::sync::OnceLock::new();
        self.spec
            .process()
            .as_ref()
            .unwrap_or_else(|| DEFAULT.get_or_init(Process::default))
    }

    pub fn has_new(&self, kind: LinuxNamespaceType) -> bool {
        self.new_namespaces.contains(&kind)
    }
}
