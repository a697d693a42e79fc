//! OCI `linux.seccomp`: turn the spec into a libseccomp filter.
//!
//! [`compile`] validates the whole spec and builds the filter in the runtime
//! process, where errors can still be reported cleanly; the container's init
//! only calls [`SeccompProgram::load`] right before `execve`, after
//! no_new_privs and capabilities have been applied (the order runc uses).
//!
//! Semantics follow runc: unknown syscall names are skipped (profiles list
//! syscalls of newer kernels), rules whose action equals the default action are
//! skipped, and several conditions on the same argument turn into one rule per
//! condition (OR) because libseccomp cannot AND them.

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};

/// Number of syscall arguments a condition can refer to.
const MAX_ARGS: usize = 6;

/// Errors of compiling or loading a seccomp filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// A spec field holds a value capsa cannot turn into a filter.
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    /// libseccomp refused a part of the filter built from a spec field.
    #[error("{field}: libseccomp rejected it")]
    Build {
        field: String,
        #[source]
        source: libseccomp::error::SeccompError,
    },
    /// The kernel refused the filter.
    #[error("cannot load the seccomp filter")]
    Load {
        #[source]
        source: libseccomp::error::SeccompError,
    },
}

/// A validated, built, not yet loaded seccomp filter.
#[derive(Debug)]
pub struct SeccompProgram {
    ctx: ScmpFilterContext,
}

impl SeccompProgram {
    /// Installs the filter on the calling thread (and on all threads of the
    /// process with `SECCOMP_FILTER_FLAG_TSYNC`).
    ///
    /// The filter's own no_new_privs attribute is off: the caller sets
    /// no_new_privs when the spec asks for it, and otherwise needs
    /// CAP_SYS_ADMIN for the kernel to accept the filter.
    pub fn load(&self) -> Result<(), SeccompError> {
        self.ctx
            .load()
            .map_err(|source| SeccompError::Load { source })
    }

    /// The filter in libseccomp's human-readable pseudo-filter-code form, to
    /// `fd` (for debugging).
    pub fn export_pfc<F: std::os::fd::AsFd>(&self, fd: F) -> Result<(), SeccompError> {
        self.ctx
            .export_pfc(fd)
            .map_err(|source| SeccompError::Build {
                field: "linux.seccomp".into(),
                source,
            })
    }
}

/// Validates `spec` and builds its filter without loading it.
pub fn compile(spec: &LinuxSeccomp) -> Result<SeccompProgram, SeccompError> {
    let default_action = action(
        spec.default_action(),
        spec.default_errno_ret(),
        "linux.seccomp.defaultAction",
    )?;
    let build = |field: &str| {
        let field = field.to_string();
        move |source| SeccompError::Build { field, source }
    };
    let mut ctx = ScmpFilterContext::new(default_action).map_err(build("linux.seccomp"))?;
    // The runtime applies no_new_privs itself only when process.noNewPrivileges
    // says so; libseccomp would otherwise force it on.
    ctx.set_ctl_nnp(false).map_err(build("linux.seccomp"))?;

    for (i, arch) in spec.architectures().iter().flatten().enumerate() {
        let field = format!("linux.seccomp.architectures[{i}]");
        ctx.add_arch(scmp_arch(*arch))
            .map_err(|source| SeccompError::Build { field, source })?;
    }

    for (i, flag) in spec.flags().iter().flatten().enumerate() {
        let field = format!("linux.seccomp.flags[{i}]");
        let res = match flag {
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => ctx.set_ctl_tsync(true),
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => ctx.set_ctl_log(true),
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => ctx.set_ctl_ssb(true),
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => ctx.set_ctl_waitkill(true),
        };
        res.map_err(|source| SeccompError::Build { field, source })?;
    }

    for (i, syscall) in spec.syscalls().iter().flatten().enumerate() {
        let field = format!("linux.seccomp.syscalls[{i}]");
        let act = action(
            syscall.action(),
            syscall.errno_ret(),
            &format!("{field}.action"),
        )?;

        let mut conds = Vec::new();
        let mut per_arg = [0usize; MAX_ARGS];
        for (j, arg) in syscall.args().iter().flatten().enumerate() {
            let index = arg.index();
            if index >= MAX_ARGS {
                return Err(SeccompError::Invalid {
                    field: format!("{field}.args[{j}].index"),
                    reason: format!("{index} is out of range (0..{})", MAX_ARGS - 1),
                });
            }
            per_arg[index] += 1;
            // MASKED_EQ: `value` is the mask, `valueTwo` the expected result.
            let (op, datum) = match arg.op() {
                LinuxSeccompOperator::ScmpCmpNe => (ScmpCompareOp::NotEqual, arg.value()),
                LinuxSeccompOperator::ScmpCmpLt => (ScmpCompareOp::Less, arg.value()),
                LinuxSeccompOperator::ScmpCmpLe => (ScmpCompareOp::LessOrEqual, arg.value()),
                LinuxSeccompOperator::ScmpCmpEq => (ScmpCompareOp::Equal, arg.value()),
                LinuxSeccompOperator::ScmpCmpGe => (ScmpCompareOp::GreaterEqual, arg.value()),
                LinuxSeccompOperator::ScmpCmpGt => (ScmpCompareOp::Greater, arg.value()),
                LinuxSeccompOperator::ScmpCmpMaskedEq => (
                    ScmpCompareOp::MaskedEqual(arg.value()),
                    arg.value_two().unwrap_or(0),
                ),
            };
            // `index < MAX_ARGS` was checked above, so it fits.
            conds.push(ScmpArgCompare::new(index as u32, op, datum));
        }

        // libseccomp rejects a rule whose action is the default one; it would
        // be a no-op anyway.
        if act == default_action {
            continue;
        }

        for name in syscall.names() {
            // Unknown to this libseccomp/architecture: skipped, as runc does.
            let Ok(nr) = ScmpSyscall::from_name(name) else {
                continue;
            };
            let build = |source| SeccompError::Build {
                field: format!("{field} ({name})"),
                source,
            };
            if per_arg.iter().any(|&n| n > 1) {
                // Conditions on the same argument cannot be ANDed by
                // libseccomp: add one rule per condition (OR), like runc.
                for cond in &conds {
                    ctx.add_rule_conditional(act, nr, std::slice::from_ref(cond))
                        .map_err(build)?;
                }
            } else {
                ctx.add_rule_conditional(act, nr, &conds).map_err(build)?;
            }
        }
    }
    Ok(SeccompProgram { ctx })
}

/// Maps a spec action; `errno_ret` defaults to EPERM for ERRNO and TRACE.
fn action(
    act: LinuxSeccompAction,
    errno_ret: Option<u32>,
    field: &str,
) -> Result<ScmpAction, SeccompError> {
    let errno_field = || {
        let base = field.strip_suffix(".action").unwrap_or(field);
        if base == "linux.seccomp.defaultAction" {
            "linux.seccomp.defaultErrnoRet".to_string()
        } else {
            format!("{base}.errnoRet")
        }
    };
    Ok(match act {
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            ScmpAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActErrno => {
            let errno = errno_ret.unwrap_or(libc::EPERM as u32);
            // The kernel keeps 16 bits of SECCOMP_RET_DATA for the errno.
            match u16::try_from(errno) {
                Ok(e) => ScmpAction::Errno(i32::from(e)),
                Err(_) => {
                    return Err(SeccompError::Invalid {
                        field: errno_field(),
                        reason: format!("{errno} is out of range (0..65535)"),
                    })
                }
            }
        }
        LinuxSeccompAction::ScmpActTrace => {
            let msg = errno_ret.unwrap_or(libc::EPERM as u32);
            match u16::try_from(msg) {
                Ok(m) => ScmpAction::Trace(m),
                Err(_) => {
                    return Err(SeccompError::Invalid {
                        field: errno_field(),
                        reason: format!("{msg} is out of range (0..65535)"),
                    })
                }
            }
        }
        LinuxSeccompAction::ScmpActNotify => {
            return Err(SeccompError::Invalid {
                field: field.to_string(),
                reason: "SCMP_ACT_NOTIFY is not supported by capsa".into(),
            })
        }
    })
}

fn scmp_arch(arch: Arch) -> ScmpArch {
    match arch {
        Arch::ScmpArchNative => ScmpArch::Native,
        Arch::ScmpArchX86 => ScmpArch::X86,
        Arch::ScmpArchX86_64 => ScmpArch::X8664,
        Arch::ScmpArchX32 => ScmpArch::X32,
        Arch::ScmpArchArm => ScmpArch::Arm,
        Arch::ScmpArchAarch64 => ScmpArch::Aarch64,
        Arch::ScmpArchMips => ScmpArch::Mips,
        Arch::ScmpArchMips64 => ScmpArch::Mips64,
        Arch::ScmpArchMips64n32 => ScmpArch::Mips64N32,
        Arch::ScmpArchMipsel => ScmpArch::Mipsel,
        Arch::ScmpArchMipsel64 => ScmpArch::Mipsel64,
        Arch::ScmpArchMipsel64n32 => ScmpArch::Mipsel64N32,
        Arch::ScmpArchPpc => ScmpArch::Ppc,
        Arch::ScmpArchPpc64 => ScmpArch::Ppc64,
        Arch::ScmpArchPpc64le => ScmpArch::Ppc64Le,
        Arch::ScmpArchS390 => ScmpArch::S390,
        Arch::ScmpArchS390x => ScmpArch::S390X,
        Arch::ScmpArchParisc => ScmpArch::Parisc,
        Arch::ScmpArchParisc64 => ScmpArch::Parisc64,
        Arch::ScmpArchRiscv64 => ScmpArch::Riscv64,
        Arch::ScmpArchLoongarch64 => ScmpArch::Loongarch64,
        Arch::ScmpArchM68k => ScmpArch::M68k,
        Arch::ScmpArchSh => ScmpArch::Sh,
        Arch::ScmpArchSheb => ScmpArch::Sheb,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::{fork, ForkResult};

    fn spec(json: &str) -> LinuxSeccomp {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn compiles_a_typical_profile() {
        let s = spec(
            r#"{
              "defaultAction": "SCMP_ACT_ERRNO",
              "defaultErrnoRet": 1,
              "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
              "flags": ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW", "SECCOMP_FILTER_FLAG_TSYNC"],
              "syscalls": [
                {"names": ["read", "write", "exit_group", "no_such_syscall_xyz"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"},
                          {"index": 0, "value": 131072, "op": "SCMP_CMP_EQ"}]},
                {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
                {"names": ["ptrace"], "action": "SCMP_ACT_KILL_PROCESS"},
                {"names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": 97},
                {"names": ["acct"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
                {"names": ["kexec_load"], "action": "SCMP_ACT_TRAP"},
                {"names": ["uselib"], "action": "SCMP_ACT_LOG"},
                {"names": ["vhangup"], "action": "SCMP_ACT_KILL"}
              ]
            }"#,
        );
        compile(&s).unwrap();
    }

    #[test]
    fn rejects_arg_index_out_of_range() {
        let s = spec(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": ["read"], "action": "SCMP_ACT_ERRNO"},
                {"names": ["write"], "action": "SCMP_ACT_ERRNO"},
                {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO",
                 "args": [{"index": 7, "value": 0, "op": "SCMP_CMP_EQ"}]}]}"#,
        );
        let err = compile(&s).unwrap_err();
        assert_eq!(
            err.to_string(),
            "linux.seccomp.syscalls[2].args[0].index: 7 is out of range (0..5)"
        );
    }

    #[test]
    fn rejects_notify_and_bad_errno() {
        let s = spec(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": ["read"], "action": "SCMP_ACT_NOTIFY"}]}"#,
        );
        assert_eq!(
            compile(&s).unwrap_err().to_string(),
            "linux.seccomp.syscalls[0].action: SCMP_ACT_NOTIFY is not supported by capsa"
        );
        let s = spec(r#"{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 70000}"#);
        assert_eq!(
            compile(&s).unwrap_err().to_string(),
            "linux.seccomp.defaultErrnoRet: 70000 is out of range (0..65535)"
        );
        let s = spec(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": ["read"], "action": "SCMP_ACT_ERRNO", "errnoRet": 99999}]}"#,
        );
        assert_eq!(
            compile(&s).unwrap_err().to_string(),
            "linux.seccomp.syscalls[0].errnoRet: 99999 is out of range (0..65535)"
        );
    }

    #[test]
    fn skips_rules_equal_to_default_and_unknown_names() {
        let s = spec(
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
                {"names": ["read"], "action": "SCMP_ACT_ERRNO"},
                {"names": ["definitely_not_a_syscall"], "action": "SCMP_ACT_ALLOW"}]}"#,
        );
        compile(&s).unwrap();
    }

    #[test]
    fn loaded_filter_makes_mkdir_fail_with_enosys() {
        let s = spec(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}]}"#,
        );
        let prog = compile(&s).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let target =
            std::ffi::CString::new(dir.path().join("x").into_os_string().into_encoded_bytes())
                .unwrap();
        // Loading in the test process would confine every other test: fork.
        // SAFETY: the child only loads the filter (libseccomp allocates, which
        // glibc makes safe after fork), calls mkdir and _exits.
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                // SAFETY: plain syscalls and _exit in the forked child.
                unsafe {
                    // Without CAP_SYS_ADMIN the kernel requires no_new_privs.
                    if libc::geteuid() != 0 {
                        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                    }
                    if prog.load().is_err() {
                        libc::_exit(2);
                    }
                    let rc = libc::mkdir(target.as_ptr(), 0o755);
                    let errno = *libc::__errno_location();
                    libc::_exit(if rc == -1 && errno == libc::ENOSYS {
                        0
                    } else {
                        1
                    });
                }
            }
            ForkResult::Parent { child } => {
                let status = waitpid(child, None).unwrap();
                assert_eq!(status, WaitStatus::Exited(child, 0));
                assert!(!dir.path().join("x").exists());
            }
        }
    }
}
