//! The microVM backend (being built): the init becomes a jailed VMM that
//! runs the process inside a KVM microVM.

use std::convert::Infallible;

use oci_spec::runtime::{LinuxNamespace, Spec};

use crate::backend::{Backend, BackendError};
use crate::init::Init;
use crate::spec::Bundle;

#[derive(Debug, thiserror::Error)]
pub enum MicroVmError {
    #[error("--isolation=microvm: the microVM backend is not available in this build")]
    Unavailable,
}

pub struct MicroVmBackend;

impl Backend for MicroVmBackend {
    fn check(&self, _bundle: &Bundle) -> Result<(), BackendError> {
        Err(MicroVmError::Unavailable.into())
    }

    fn namespaces(&self, _spec: &Spec) -> Vec<LinuxNamespace> {
        Vec::new()
    }

    fn prepare(&self, _init: &mut Init) -> Result<(), BackendError> {
        Err(MicroVmError::Unavailable.into())
    }

    fn launch(&self, _init: Init) -> Result<Infallible, BackendError> {
        Err(MicroVmError::Unavailable.into())
    }
}
