//! The capsa KVM microVM monitor.
//!
//! [`run`] boots the capsa guest kernel in a one-vCPU KVM virtual machine,
//! serves its devices (control registers, virtio-console, virtio-fs) from the
//! calling thread, and returns how the guest's process ended. The contract
//! with the guest (entry state, memory layout, device map, process spec) is
//! the `capsa-abi` crate.
//!
//! Code map: [`vm`] creates the VM and lays out boot data, [`memory`] owns
//! guest RAM, [`vcpu`] runs the vCPU and dispatches its exits to the [`bus`],
//! [`devices`] holds the control device and the virtio devices, [`seccomp`]
//! confines the VMM before it runs guest code.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod bus;
pub mod devices;
mod hostio;
pub mod memory;
pub mod seccomp;
mod signals;
pub mod tick;
pub mod vcpu;
pub mod vm;

use std::borrow::Cow;
use std::path::PathBuf;

/// Memory the VMM itself needs beside guest RAM (its code, heap, the FUSE
/// server's state, KVM's per-VM kernel allocations). A runtime that enforces
/// a memory limit on the whole VMM process gives the guest
/// `limit - VMM_MEMORY_ALLOWANCE` bytes of RAM.
///
/// Measured on this project's machines (cgroup v1, a guest touching 50 MiB
/// under a 96 MiB limit): the cgroup's peak charge was 2.6 MiB, of which
/// 0.8 MiB kernel memory. Host page cache the FUSE server reads is charged
/// too, but is reclaimed before the limit bites, so it needs no room here.
/// 8 MiB leaves three times the measured peak.
pub const VMM_MEMORY_ALLOWANCE: u64 = 8 << 20;

/// Guest RAM used when nothing else is asked for. The host backs guest
/// pages only when first touched, so a generous size costs nothing idle
/// (measured: the same idle PSS as 256 MiB).
pub const DEFAULT_RAM_SIZE: u64 = 1 << 30;

/// One resource limit of the process (`RLIMIT_*` number, `u64::MAX` = unlimited).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rlimit {
    pub resource: u32,
    pub soft: u64,
    pub hard: u64,
}

/// What the guest runs and how, from the OCI `process` and `linux` sections.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessSpec {
    pub args: Vec<String>,
    /// `KEY=VALUE` strings.
    pub env: Vec<String>,
    pub cwd: String,
    pub hostname: String,
    pub domainname: String,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub umask: Option<u32>,
    pub rlimits: Vec<Rlimit>,
    pub no_new_privileges: bool,
    pub pids_limit: Option<u64>,
    /// `process.capabilities`; None: the spec names none, and the process
    /// has every capability its uid gives it.
    pub capabilities: Option<capsa_abi::process::CapabilitySets>,
    /// `process.oomScoreAdj`, which the guest reports in `/proc`.
    pub oom_score_adj: Option<i32>,
}

/// A host directory served to the guest and mounted at `destination`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedDir {
    pub source: PathBuf,
    pub destination: String,
    pub readonly: bool,
}

/// Everything one microVM run needs.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// The guest kernel ELF.
    pub kernel: Cow<'static, [u8]>,
    /// Bytes of guest RAM (rounded down to 2 MiB, at most `capsa_abi::MAX_RAM_SIZE`).
    pub ram_size: u64,
    /// Back guest RAM with transparent huge pages (`MADV_HUGEPAGE`).
    pub hugepages: bool,
    /// Number of vCPUs; only 1 is supported.
    pub vcpus: u8,
    pub process: ProcessSpec,
    pub rootfs: PathBuf,
    pub rootfs_readonly: bool,
    pub mounts: Vec<SharedDir>,
    /// Ask the guest to log every unknown syscall.
    pub debug_syscalls: bool,
    /// Install the VMM's seccomp allowlist before running guest code.
    pub seccomp: bool,
    /// The network interface, when the container's namespace has one.
    pub net: Option<NetAttachment>,
    /// A listening SOCK_SEQPACKET unix socket `capsa exec` connects to
    /// (see `devices::exec`); without it nothing can be exec'd.
    pub exec_socket: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
}

/// A TAP device (IFF_TAP | IFF_NO_PI, non-blocking) the guest's
/// virtio-net device sends and receives frames through, and how the
/// guest configures its side.
#[derive(Clone, Debug)]
pub struct NetAttachment {
    pub tap: std::sync::Arc<std::os::fd::OwnedFd>,
    pub config: capsa_abi::NetConfig,
}

/// How the guest's process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestExit {
    /// It exited with this status.
    Code(u8),
    /// It was killed by this signal.
    Signal(i32),
}

impl GuestExit {
    /// The exit status a shell would report (`128 + signal` for a signal).
    pub fn status(self) -> i32 {
        match self {
            GuestExit::Code(code) => i32::from(code),
            GuestExit::Signal(signal) => 128 + signal,
        }
    }
}

/// Why a microVM run failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The virtual machine could not be set up.
    #[error("cannot set up the virtual machine")]
    Setup(#[from] vm::Error),
    /// The VMM's seccomp filter could not be installed.
    #[error("cannot confine the VMM with seccomp")]
    Seccomp(#[from] seccomp::Error),
    /// The guest stopped abnormally.
    #[error("the guest failed")]
    Guest(#[from] vcpu::Error),
}

/// Boots the guest described by `config` and blocks until its process exits.
///
/// The guest's stdin, stdout and stderr are this process's descriptors 0, 1
/// and 2. No signal handlers are installed: a signal whose default action
/// ends the process ends the VMM. With `config.seccomp`, the calling thread
/// and every other thread of the process stay confined by the VMM's
/// allowlist after this returns (see [`seccomp`]): the caller should do
/// little more than report the result and exit.
pub fn run(config: VmConfig) -> Result<GuestExit, Error> {
    let mut machine = vm::Vm::new(&config)?;
    // Handlers go in before the seccomp filter, which has no rt_sigaction.
    let _forwarding = signals::forward_to(machine.host_signals_word());
    signals::hold_sigpipe();
    if config.seccomp {
        seccomp::install()?;
    }
    Ok(machine.run()?)
}
