//! OCI lifecycle hooks: each runs with the container's state JSON on stdin
//! and is killed when its timeout expires.

use std::io::Write;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use oci_spec::runtime::Hook;

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("{kind} hook {index} ({path}) could not be started")]
    Spawn {
        kind: &'static str,
        index: usize,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{kind} hook {index} ({path}) failed: {status}{stderr}")]
    Failed {
        kind: &'static str,
        index: usize,
        path: String,
        status: String,
        stderr: String,
    },
    #[error("{kind} hook {index} ({path}) timed out after {seconds}s")]
    TimedOut {
        kind: &'static str,
        index: usize,
        path: String,
        seconds: i64,
    },
}

/// Runs `hooks` in order with `state_json` on stdin; stops at the first failure.
pub fn run_all(
    kind: &'static str,
    hooks: Option<&Vec<Hook>>,
    state_json: &[u8],
) -> Result<(), HookError> {
    for (index, hook) in hooks.into_iter().flatten().enumerate() {
        run_one(kind, index, hook, state_json)?;
    }
    Ok(())
}

fn run_one(
    kind: &'static str,
    index: usize,
    hook: &Hook,
    state_json: &[u8],
) -> Result<(), HookError> {
    let path = hook.path().display().to_string();
    let mut command = Command::new(hook.path());
    if let Some(args) = hook.args() {
        if let Some((arg0, rest)) = args.split_first() {
            command.arg0(arg0).args(rest);
        }
    }
    command.env_clear();
    for var in hook.env().iter().flatten() {
        if let Some((key, value)) = var.split_once('=') {
            command.env(key, value);
        }
    }
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let spawn_error = |source| HookError::Spawn {
        kind,
        index,
        path: path.clone(),
        source,
    };
    let mut child = command.spawn().map_err(spawn_error)?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that exits without reading its stdin is not an error.
        let _ = stdin.write_all(state_json);
    }
    if let Some(seconds) = hook.timeout().filter(|s| *s > 0) {
        if !exits_within(child.id(), seconds).map_err(spawn_error)? {
            let _ = child.kill();
            let _ = child.wait();
            return Err(HookError::TimedOut {
                kind,
                index,
                path,
                seconds,
            });
        }
    }
    let output = child.wait_with_output().map_err(spawn_error)?;
    if output.status.success() {
        return Ok(());
    }
    let status = match (output.status.code(), output.status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => "unknown status".into(),
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stderr = stderr.trim();
    Err(HookError::Failed {
        kind,
        index,
        path,
        status,
        stderr: if stderr.is_empty() {
            String::new()
        } else {
            format!(": {}", stderr.lines().next().unwrap_or_default())
        },
    })
}

/// Waits for process `pid` to exit (without reaping it) for up to `seconds`.
fn exits_within(pid: u32, seconds: i64) -> std::io::Result<bool> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a fresh fd that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let millis = seconds.saturating_mul(1000).min(i64::from(i32::MAX)) as i32;
    let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
    loop {
        match poll(
            &mut fds,
            PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX),
        ) {
            Ok(n) => return Ok(n > 0),
            Err(nix::Error::EINTR) => continue,
            Err(err) => return Err(err.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::HookBuilder;

    fn hook(args: &[&str], timeout: Option<i64>) -> Hook {
        let mut builder = HookBuilder::default()
            .path("/bin/sh")
            .args(args.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        if let Some(t) = timeout {
            builder = builder.timeout(t);
        }
        builder.build().expect("hook")
    }

    #[test]
    fn a_hook_reads_the_state_on_stdin() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("state");
        let script = format!("cat > {}", out.display());
        let hooks = vec![hook(&["sh", "-c", &script], None)];
        run_all("prestart", Some(&hooks), br#"{"id":"x"}"#).expect("runs");
        assert_eq!(std::fs::read(&out).expect("written"), br#"{"id":"x"}"#);
    }

    #[test]
    fn a_failing_hook_reports_its_status_and_stderr() {
        let hooks = vec![hook(&["sh", "-c", "echo nope >&2; exit 3"], None)];
        let err = run_all("poststart", Some(&hooks), b"{}").expect_err("fails");
        assert_eq!(
            err.to_string(),
            "poststart hook 0 (/bin/sh) failed: exit status 3: nope"
        );
    }

    #[test]
    fn a_slow_hook_is_killed_at_its_timeout() {
        let hooks = vec![hook(&["sh", "-c", "exec sleep 30"], Some(1))];
        let err = run_all("prestart", Some(&hooks), b"{}").expect_err("times out");
        assert!(
            matches!(err, HookError::TimedOut { seconds: 1, .. }),
            "{err}"
        );
    }
}
