//! The VMM's own seccomp allowlist, installed right before the vCPU loop:
//! exactly the system calls the loop and the devices make. Anything else
//! kills the whole process (`SECCOMP_RET_KILL_PROCESS`).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Why the filter could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The rules did not compile to BPF.
    #[error("cannot compile the seccomp filter")]
    Compile(#[source] seccompiler::BackendError),
    /// The kernel refused the filter.
    #[error("cannot install the seccomp filter")]
    Install(#[source] seccompiler::Error),
}

/// `KVM_RUN` and `KVM_GET_REGS` (read after an unexpected exit, for the report).
const KVM_RUN: u64 = 0xAE80;
const KVM_GET_REGS: u64 = 0x8090_AE81;
const KVM_SET_REGS: u64 = 0x4090_AE82;
const KVM_GET_SREGS: u64 = 0x8138_AE83;
const KVM_GET_VCPU_EVENTS: u64 = 0x8040_AE9F;

/// System calls allowed without conditions.
const ALLOWED: &[i64] = &[
    // vCPU loop, control device, consoles.
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_rt_sigreturn,
    // The tick timer, disarmed while the guest idles, deleted at the end.
    libc::SYS_timer_settime,
    libc::SYS_timer_delete,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_futex,
    // The allocator.
    libc::SYS_brk,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    // The FUSE passthrough server.
    libc::SYS_openat,
    libc::SYS_close,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_fstatfs,
    libc::SYS_getdents64,
    libc::SYS_lseek,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_readlinkat,
    // Extended attributes, on /proc/self/fd/N paths of the server's handles.
    libc::SYS_getxattr,
    libc::SYS_setxattr,
    libc::SYS_listxattr,
    libc::SYS_removexattr,
    libc::SYS_mkdirat,
    libc::SYS_mknodat,
    libc::SYS_unlinkat,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_linkat,
    libc::SYS_symlinkat,
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    libc::SYS_fchown,
    libc::SYS_fchownat,
    libc::SYS_ftruncate,
    libc::SYS_fallocate,
    libc::SYS_utimensat,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_fcntl,
    libc::SYS_dup,
    libc::SYS_flock,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_setresuid,
    libc::SYS_setresgid,
    libc::SYS_setfsuid,
    libc::SYS_setfsgid,
    libc::SYS_getuid,
    libc::SYS_getgid,
    libc::SYS_geteuid,
    libc::SYS_getegid,
    libc::SYS_capget,
    libc::SYS_capset,
    libc::SYS_umask,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_sched_yield,
    // The exec device's clients (`devices::exec`).
    libc::SYS_accept4,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    // std's hash map seeds.
    libc::SYS_getrandom,
];

/// The compiled allowlist.
pub fn filter() -> Result<BpfProgram, Error> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        ALLOWED.iter().map(|&nr| (nr, Vec::new())).collect();
    let ioctl = |request: u64| {
        SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, request)
            .and_then(|c| SeccompRule::new(vec![c]))
    };
    // Memory may be mapped and protected, never made executable.
    let no_exec = || {
        SeccompCondition::new(
            2,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64),
            0,
        )
        .and_then(|c| SeccompRule::new(vec![c]))
    };
    rules.insert(libc::SYS_mmap, vec![no_exec().map_err(Error::Compile)?]);
    rules.insert(libc::SYS_mprotect, vec![no_exec().map_err(Error::Compile)?]);
    rules.insert(
        libc::SYS_ioctl,
        vec![
            ioctl(KVM_RUN).map_err(Error::Compile)?,
            ioctl(KVM_GET_REGS).map_err(Error::Compile)?,
            // A timer tick moves the vCPU to the guest's tick entry.
            ioctl(KVM_SET_REGS).map_err(Error::Compile)?,
            ioctl(KVM_GET_SREGS).map_err(Error::Compile)?,
            ioctl(KVM_GET_VCPU_EVENTS).map_err(Error::Compile)?,
        ]
        .into_iter()
        // An exec'd process's terminal (`devices::exec`, op IOCTL).
        .chain(
            capsa_abi::exec::TERMINAL_REQUESTS
                .iter()
                .map(|&(request, _)| ioctl(u64::from(request)).map_err(Error::Compile))
                .collect::<Result<Vec<_>, _>>()?,
        )
        .collect(),
    );
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(Error::Compile)?;
    filter.try_into().map_err(Error::Compile)
}

/// Installs the allowlist on every thread of the VMM.
pub fn install() -> Result<(), Error> {
    let program = filter()?;
    seccompiler::apply_filter_all_threads(&program).map_err(Error::Install)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_compiles() {
        let program = filter().unwrap();
        assert!(program.len() > ALLOWED.len());
    }

    #[test]
    fn ioctl_numbers_match_the_kernel_headers() {
        assert_eq!(KVM_RUN, kvm_bindings::KVMIO as u64 * 256 + 0x80);
        assert_eq!(
            KVM_GET_REGS,
            (2 << 30)
                | ((std::mem::size_of::<kvm_bindings::kvm_regs>() as u64) << 16)
                | (0xAE << 8)
                | 0x81
        );
        assert_eq!(
            KVM_SET_REGS,
            (1 << 30)
                | ((std::mem::size_of::<kvm_bindings::kvm_regs>() as u64) << 16)
                | (0xAE << 8)
                | 0x82
        );
        assert_eq!(
            KVM_GET_SREGS,
            (2 << 30)
                | ((std::mem::size_of::<kvm_bindings::kvm_sregs>() as u64) << 16)
                | (0xAE << 8)
                | 0x83
        );
        assert_eq!(
            KVM_GET_VCPU_EVENTS,
            (2 << 30)
                | ((std::mem::size_of::<kvm_bindings::kvm_vcpu_events>() as u64) << 16)
                | (0xAE << 8)
                | 0x9f
        );
    }
}
