//! The isolation backends behind one interface.
//!
//! Everything about a container's lifecycle is shared (state store, cgroup,
//! hooks, the init's synchronisation with `capsa`); a backend only decides
//! which namespaces the init lives in, what it prepares before `start`, and
//! what it launches after.

use std::convert::Infallible;

use oci_spec::runtime::{LinuxNamespace, LinuxResources, Spec};
use serde::{Deserialize, Serialize};

use crate::container::{ContainerBackend, ContainerError};
use crate::init::Init;
use crate::microvm::{MicroVmBackend, MicroVmError};
use crate::spec::Bundle;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// Linux namespaces and cgroups; the process shares the host kernel.
    #[default]
    Container,
    /// A KVM microVM with capsa's own guest kernel.
    Microvm,
}

impl std::str::FromStr for Isolation {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "container" => Ok(Isolation::Container),
            "microvm" => Ok(Isolation::Microvm),
            _ => Err(()),
        }
    }
}

impl std::fmt::Display for Isolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Isolation::Container => "container",
            Isolation::Microvm => "microvm",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error(transparent)]
    MicroVm(#[from] MicroVmError),
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
}

pub fn for_isolation(isolation: Isolation) -> &'static dyn Backend {
    match isolation {
        Isolation::Container => &ContainerBackend,
        Isolation::Microvm => &MicroVmBackend,
    }
}
