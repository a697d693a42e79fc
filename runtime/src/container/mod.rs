//! The container backend: the init sets up the root filesystem in its mount
//! namespace, then becomes the container's process with execve.

pub(crate) mod process;
pub mod rootfs;

use std::convert::Infallible;
use std::path::PathBuf;

use oci_spec::runtime::{LinuxNamespace, Spec};

use crate::backend::{Backend, BackendError, Init};
use crate::init::InitError;
use crate::paths::PathError;
use crate::spec::Bundle;

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("root.path: cannot pivot_root into {0}")]
    PivotRoot(PathBuf, #[source] nix::Error),
    #[error("root.path: cannot chroot into {0}")]
    Chroot(PathBuf, #[source] nix::Error),
    #[error("{field}: cannot apply")]
    Apply {
        field: String,
        #[source]
        source: nix::Error,
    },
    #[error("linux.sysctl: cannot set {key}")]
    Sysctl {
        key: String,
        #[source]
        source: std::io::Error,
    },
    #[error("process.capabilities: cannot apply {set}")]
    Capabilities {
        set: String,
        #[source]
        source: caps::errors::CapsError,
    },
    #[error("process.args: cannot exec {0:?}")]
    Exec(String, #[source] nix::Error),
    #[error("process.terminal: cannot set up the console")]
    Console(#[source] nix::Error),
    #[error(transparent)]
    Path(#[from] PathError),
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    #[error(transparent)]
    Init(#[from] InitError),
}

// `?` in the trait methods: the error crosses the interface boxed.
impl From<ContainerError> for BackendError {
    fn from(err: ContainerError) -> Self {
        BackendError::Failed(Box::new(err))
    }
}

pub struct ContainerBackend;

impl Backend for ContainerBackend {
    fn check(&self, bundle: &Bundle) -> Result<(), BackendError> {
        if let Some(seccomp) = bundle
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.seccomp().as_ref())
        {
            crate::seccomp::compile(seccomp).map_err(ContainerError::from)?;
        }
        Ok(())
    }

    fn namespaces(&self, spec: &Spec) -> Vec<LinuxNamespace> {
        spec.linux()
            .as_ref()
            .and_then(|l| l.namespaces().clone())
            .unwrap_or_default()
    }

    fn prepare(&self, init: &mut Init) -> Result<(), BackendError> {
        rootfs::prepare(init)?;
        process::resolve_executable(init.process())?;
        Ok(())
    }

    fn launch(&self, init: Init) -> Result<Infallible, BackendError> {
        Ok(process::exec(init)?)
    }
}
