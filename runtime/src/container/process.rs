//! The last steps of the init before it becomes the container's process:
//! rlimits, console, fds, capabilities, user, no_new_privs, seccomp, exec.
//! The order follows runc, because each step needs privileges the next may
//! drop.

use std::collections::HashSet;
use std::convert::Infallible;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use caps::{CapSet, Capability as Cap};
use nix::sys::signal::{SigHandler, SigSet, Signal};
use nix::unistd::{Gid, Uid};
use oci_spec::runtime::{Capabilities, LinuxCapabilities, Process};

use super::ContainerError;
use crate::backend::Init;
use crate::paths::{self, PathError};
use crate::spec::rlimit_resource;

type Result<T> = std::result::Result<T, ContainerError>;

/// Finds `args[0]` like execvp, in the process's PATH, inside the current
/// root (the container's, once pivoted).
pub fn resolve_executable(process: &Process) -> Result<PathBuf> {
    paths::resolve_executable_in(Path::new("/"), process).map_err(ContainerError::from)
}

fn apply_rlimits(process: &Process) -> Result<()> {
    for (i, rlimit) in process.rlimits().iter().flatten().enumerate() {
        let limit = libc::rlimit {
            rlim_cur: rlimit.soft(),
            rlim_max: rlimit.hard(),
        };
        // SAFETY: setrlimit reads a valid rlimit struct.
        if unsafe { libc::setrlimit(rlimit_resource(rlimit.typ()), &limit) } != 0 {
            return Err(ContainerError::Apply {
                field: format!("process.rlimits[{i}]"),
                source: nix::Error::last(),
            });
        }
    }
    Ok(())
}

/// Marks every fd from 3 + preserve_fds on close-on-exec, so the process
/// inherits only stdio and what was explicitly passed.
fn close_extra_fds(preserve_fds: i32) {
    let first = 3 + preserve_fds.max(0);
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd >= first)
        .collect();
    for fd in fds {
        // SAFETY: F_SETFD on an fd number; a stale number just fails with EBADF.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
}

use crate::spec::capability_set as to_caps;

fn caps_error(set: &str) -> impl FnOnce(caps::errors::CapsError) -> ContainerError + '_ {
    move |source| ContainerError::Capabilities {
        set: set.to_string(),
        source,
    }
}

fn drop_bounding(capabilities: Option<&LinuxCapabilities>) -> Result<()> {
    let keep = to_caps(capabilities.and_then(|c| c.bounding().as_ref()));
    for cap in caps::all() {
        if !keep.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, cap).map_err(caps_error("bounding"))?;
        }
    }
    Ok(())
}

fn apply_caps(capabilities: Option<&LinuxCapabilities>) -> Result<()> {
    let get = |f: fn(&LinuxCapabilities) -> &Option<Capabilities>| {
        to_caps(capabilities.and_then(|c| f(c).as_ref()))
    };
    // capset refuses an effective set that is not within the permitted one,
    // so shrink in this order: inheritable, effective, permitted.
    let permitted = get(LinuxCapabilities::permitted);
    let effective: HashSet<Cap> = get(LinuxCapabilities::effective)
        .intersection(&permitted)
        .copied()
        .collect();
    let inheritable = get(LinuxCapabilities::inheritable);
    caps::set(None, CapSet::Inheritable, &inheritable).map_err(caps_error("inheritable"))?;
    caps::set(None, CapSet::Effective, &effective).map_err(caps_error("effective"))?;
    caps::set(None, CapSet::Permitted, &permitted).map_err(caps_error("permitted"))?;
    caps::clear(None, CapSet::Ambient).map_err(caps_error("ambient"))?;
    let (raise, skipped) =
        ambient_to_raise(get(LinuxCapabilities::ambient), &permitted, &inheritable);
    for cap in raise {
        caps::raise(None, CapSet::Ambient, cap).map_err(caps_error("ambient"))?;
    }
    if !skipped.is_empty() {
        eprintln!(
            "capsa: warning: process.capabilities.ambient: {} not raised: an ambient capability must also be permitted and inheritable",
            skipped.join(", ")
        );
    }
    Ok(())
}

/// Splits the ambient set into the capabilities to raise and the sorted
/// names of those skipped. The kernel raises an ambient capability only if
/// it is both permitted and inheritable; runc skips the others and goes on
/// (its own default spec lists ambient capabilities without inheritable
/// ones), so capsa does too.
fn ambient_to_raise(
    ambient: HashSet<Cap>,
    permitted: &HashSet<Cap>,
    inheritable: &HashSet<Cap>,
) -> (Vec<Cap>, Vec<String>) {
    let (raise, skip): (Vec<Cap>, Vec<Cap>) = ambient
        .into_iter()
        .partition(|cap| permitted.contains(cap) && inheritable.contains(cap));
    let mut skipped: Vec<String> = skip.iter().map(ToString::to_string).collect();
    skipped.sort();
    (raise, skipped)
}

fn switch_user(process: &Process) -> Result<()> {
    let user = process.user();
    let apply = |field: &str, result: nix::Result<()>| {
        result.map_err(|source| ContainerError::Apply {
            field: field.to_string(),
            source,
        })
    };
    // Keep the permitted set across setuid so apply_caps can choose.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) };
    let groups: Vec<Gid> = user
        .additional_gids()
        .iter()
        .flatten()
        .map(|g| Gid::from_raw(*g))
        .collect();
    // setgroups is refused in a user namespace whose setgroups is "deny".
    let setgroups_denied = std::fs::read_to_string("/proc/self/setgroups")
        .map(|s| s.trim() == "deny")
        .unwrap_or(false);
    if !setgroups_denied {
        apply(
            "process.user.additionalGids",
            nix::unistd::setgroups(&groups),
        )?;
    }
    let gid = Gid::from_raw(user.gid());
    apply("process.user.gid", nix::unistd::setresgid(gid, gid, gid))?;
    let uid = Uid::from_raw(user.uid());
    apply("process.user.uid", nix::unistd::setresuid(uid, uid, uid))?;
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) };
    Ok(())
}

fn cstrings<'a>(items: impl Iterator<Item = &'a String>) -> Vec<CString> {
    items
        .filter_map(|s| CString::new(s.as_bytes()).ok())
        .collect()
}

/// Becomes the container's process. Returns only on failure.
pub fn exec(mut init: Init) -> Result<Infallible> {
    let process = init.process().clone();
    let console = init.console_socket.take();
    let seccomp = init.spec.linux().as_ref().and_then(|l| l.seccomp().clone());
    exec_process(&process, seccomp.as_ref(), console, init.preserve_fds)
}

/// Becomes `process` in the current namespaces (the init's last step, and
/// `capsa exec`'s once it has joined the container). Returns only on failure.
pub fn exec_process(
    process: &Process,
    seccomp: Option<&oci_spec::runtime::LinuxSeccomp>,
    console: Option<std::os::fd::OwnedFd>,
    preserve_fds: i32,
) -> Result<Infallible> {
    let path = resolve_executable(process)?;
    apply_rlimits(process)?;
    if let Some(socket) = console {
        crate::terminal::become_stdio(socket, process.console_size())
            .map_err(ContainerError::Console)?;
    }
    close_extra_fds(preserve_fds);

    let seccomp = match seccomp {
        Some(spec) => Some(crate::seccomp::compile(spec)?),
        None => None,
    };
    let no_new_privileges = process.no_new_privileges().unwrap_or(false);
    // Without no_new_privs, loading a filter needs CAP_SYS_ADMIN: do it
    // while we still have it.
    if !no_new_privileges {
        if let Some(filter) = &seccomp {
            filter.load()?;
        }
    }
    let capabilities = process.capabilities().as_ref();
    drop_bounding(capabilities)?;
    switch_user(process)?;
    apply_caps(capabilities)?;
    if no_new_privileges {
        nix::sys::prctl::set_no_new_privs().map_err(|source| ContainerError::Apply {
            field: "process.noNewPrivileges".into(),
            source,
        })?;
        if let Some(filter) = &seccomp {
            filter.load()?;
        }
    }
    if let Some(umask) = process.user().umask() {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(umask));
    }
    nix::unistd::chdir(process.cwd()).map_err(|source| ContainerError::Apply {
        field: "process.cwd".into(),
        source,
    })?;

    // capsa blocks the forwarded signals and ignores SIGPIPE (Rust's
    // runtime does); the process must start with neither.
    let _ = SigSet::all().thread_unblock();
    // SAFETY: restoring the default disposition installs no Rust handler.
    let _ = unsafe { nix::sys::signal::signal(Signal::SIGPIPE, SigHandler::SigDfl) };

    let args = cstrings(process.args().iter().flatten());
    let env = cstrings(process.env().iter().flatten());
    let path_c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| PathError::NotFound(path.display().to_string()))?;
    let Err(err) = nix::unistd::execve(&path_c, &args, &env);
    Err(ContainerError::Exec(path.display().to_string(), err))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(caps: &[Cap]) -> HashSet<Cap> {
        caps.iter().copied().collect()
    }

    #[test]
    fn ambient_capabilities_not_permitted_and_inheritable_are_skipped() {
        use Cap::{CAP_AUDIT_WRITE, CAP_CHOWN, CAP_KILL, CAP_NET_BIND_SERVICE};
        // runc spec's default: ambient = permitted, no inheritable set.
        let runc = set(&[CAP_AUDIT_WRITE, CAP_KILL, CAP_NET_BIND_SERVICE]);
        let (raise, skipped) = ambient_to_raise(runc.clone(), &runc, &HashSet::new());
        assert_eq!(raise, vec![]);
        assert_eq!(
            skipped,
            ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
        );

        let permitted = set(&[CAP_KILL, CAP_CHOWN]);
        let inheritable = set(&[CAP_KILL, CAP_NET_BIND_SERVICE]);
        let ambient = set(&[CAP_KILL, CAP_CHOWN, CAP_NET_BIND_SERVICE]);
        let (raise, skipped) = ambient_to_raise(ambient, &permitted, &inheritable);
        assert_eq!(raise, vec![CAP_KILL]);
        assert_eq!(skipped, ["CAP_CHOWN", "CAP_NET_BIND_SERVICE"]);
    }
}
