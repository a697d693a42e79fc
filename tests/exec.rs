//! `capsa exec` into running instances of both modes: the same command
//! gives the same stdout, stderr and exit code, stdin reaches it, signals
//! sent to `capsa exec` reach it, and with `--detach` the pid file's
//! process ends as the exec'd process does (what a shim or conmon waits
//! on). A microVM's exec travels over its VMM's exec socket.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Output, Stdio};

use capsa_tests::*;

const MODES: [&str; 2] = ["container", "microvm"];

/// A running instance of a busybox bundle whose process sleeps.
struct Running {
    capsa: Capsa,
    id: String,
    _bundle: TestBundle,
}

impl Running {
    fn start(isolation: &str) -> Running {
        let capsa = Capsa::new();
        let mut bundle = TestBundle::busybox(&["sleep", "1000"]);
        bundle.edit(|c| c["hostname"] = serde_json::json!("exec-box"));
        let id = unique_id(&format!("exec-{isolation}"));
        let out = capsa.create(&bundle, &["--isolation", isolation], &id);
        assert!(
            out.status.success(),
            "{isolation}: create: {}",
            stderr(&out)
        );
        let out = capsa.output(&["start", &id]);
        assert!(out.status.success(), "{isolation}: start: {}", stderr(&out));
        Running {
            capsa,
            id,
            _bundle: bundle,
        }
    }

    /// `capsa exec [flags] ID args...` under a bound.
    fn exec_command(&self, flags: &[&str], args: &[&str]) -> Command {
        let mut cmd = Command::new("timeout");
        cmd.args(["-k", "10", "120"])
            .arg(capsa_bin())
            .arg("--root")
            .arg(self.capsa.root.path())
            .arg("exec")
            .args(flags)
            .arg(&self.id)
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    fn exec(&self, flags: &[&str], args: &[&str]) -> Output {
        self.exec_command(flags, args).output().expect("capsa exec")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let out = self.capsa.output(&["delete", "--force", &self.id]);
        assert!(out.status.success(), "delete: {}", stderr(&out));
        self.capsa.assert_nothing_left(&self.id);
    }
}

/// Runs `check` against an instance of each mode and asserts both give
/// the same result.
fn same_in_both_modes<T: PartialEq + std::fmt::Debug>(
    what: &str,
    check: impl Fn(&Running) -> T,
) -> T {
    let [container, microvm] = MODES.map(|mode| check(&Running::start(mode)));
    assert_eq!(container, microvm, "{what}: container vs microVM");
    container
}

fn outcome(out: &Output) -> (Option<i32>, String, String) {
    (out.status.code(), stdout(out), stderr(out))
}

#[test]
fn exec_runs_the_process_the_flags_describe_in_both_modes() {
    let script = "hostname; echo $FOO; id -u; id -g; pwd; echo to stderr >&2; \
                  grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; exit 4";
    let (code, out, err) = same_in_both_modes("exec with flags", |r| {
        outcome(&r.exec(
            &["-e", "FOO=bar", "-u", "1000:1001", "--cwd", "/tmp"],
            &["sh", "-c", script],
        ))
    });
    assert_eq!(code, Some(4), "{err}");
    assert!(
        out.starts_with("exec-box\nbar\n1000\n1001\n/tmp\n"),
        "{out}"
    );
    assert_eq!(err, "to stderr\n");
}

#[test]
fn exec_passes_stdin_through_in_both_modes() {
    let input = "first line\nsecond line\n".repeat(2000);
    let out = same_in_both_modes("exec with stdin", |r| {
        let mut child = r
            .exec_command(&[], &["sh", "-c", "wc -l; echo done"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("capsa exec");
        let mut stdin = child.stdin.take().expect("stdin");
        let writer = {
            let input = input.clone();
            std::thread::spawn(move || stdin.write_all(input.as_bytes()))
        };
        let out = child.wait_with_output().expect("wait");
        writer.join().expect("writer").expect("write stdin");
        outcome(&out)
    });
    assert_eq!(out, (Some(0), "4000\ndone\n".to_string(), String::new()));
}

#[test]
fn exec_of_a_missing_program_fails_with_one_line_in_both_modes() {
    let (code, _, err) = same_in_both_modes("exec of a missing program", |r| {
        let out = r.exec(&[], &["no-such-program"]);
        assert_one_line_error(&out, "no-such-program");
        // The instance goes on serving execs.
        let again = r.exec(&[], &["true"]);
        assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
        outcome(&out)
    });
    assert_ne!(code, Some(0), "{err}");
}

/// Reads `capsa exec`'s stdout until `line`, then sends it `signal`.
fn signal_after(mut child: Child, line: &str, signal: i32) -> Output {
    let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    reader.read_line(&mut first).expect("read");
    assert_eq!(first, format!("{line}\n"));
    // SAFETY: kill(2) of our own child, which has not been reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut reader, &mut rest).expect("read");
    let mut out = child.wait_with_output().expect("wait");
    out.stdout = format!("{first}{rest}").into_bytes();
    out
}

#[test]
fn signals_to_capsa_exec_reach_the_process_in_both_modes() {
    let script = "trap 'echo got TERM; exit 9' TERM; echo ready; \
                  while :; do sleep 1; done";
    let out = same_in_both_modes("a forwarded SIGTERM", |r| {
        // capsa exec is timeout's child: signal capsa itself.
        let mut cmd = Command::new(capsa_bin());
        cmd.arg("--root")
            .arg(r.capsa.root.path())
            .args(["exec", &r.id, "sh", "-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        outcome(&signal_after(
            cmd.spawn().expect("capsa exec"),
            "ready",
            libc::SIGTERM,
        ))
    });
    assert_eq!(
        out,
        (Some(9), "ready\ngot TERM\n".to_string(), String::new())
    );
}

/// Waits for `pid`, an orphan this process adopted as a subreaper.
fn reap(pid: i32) -> i32 {
    let mut status = 0;
    // SAFETY: waitpid on a child of ours (adopted), with a valid pointer.
    let got = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(got, pid, "waitpid: {}", std::io::Error::last_os_error());
    status
}

/// `capsa exec --detach --pid-file` of `args`: the pid in the file. The
/// process keeps capsa's stdout and stderr, so they go to a file here.
fn exec_detached(r: &Running, args: &[&str]) -> i32 {
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("pid");
    let log = dir.path().join("log");
    let out = r
        .exec_command(
            &["--detach", "--pid-file", &pid_file.display().to_string()],
            args,
        )
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .status()
        .expect("capsa exec --detach");
    let log = std::fs::read_to_string(&log).expect("log");
    assert_eq!(out.code(), Some(0), "{log}");
    std::fs::read_to_string(&pid_file)
        .expect("pid file")
        .trim()
        .parse()
        .expect("a pid")
}

#[test]
fn a_detached_exec_leaves_a_pid_that_ends_as_the_process_does() {
    // The pid file's process outlives `capsa exec --detach`: as a shim
    // does, this test adopts it to wait for it.
    // SAFETY: prctl with integer arguments only.
    let adopted = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(adopted, 0);
    let statuses = same_in_both_modes("a detached exec", |r| {
        let exited = reap(exec_detached(r, &["sh", "-c", "sleep 1; exit 6"]));
        // Killing the pid file's process kills the exec'd process.
        let pid = exec_detached(r, &["sleep", "1000"]);
        // SAFETY: kill(2) of a process this test adopted and has not reaped.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
        let killed = reap(pid);
        let out = r.exec(&[], &["sh", "-c", "ps -o comm | grep -c sleep"]);
        (exited, killed, stdout(&out))
    });
    let (exited, killed, sleepers) = statuses;
    assert!(
        libc::WIFEXITED(exited) && libc::WEXITSTATUS(exited) == 6,
        "{exited:#x}"
    );
    assert!(
        libc::WIFSIGNALED(killed) && libc::WTERMSIG(killed) == libc::SIGKILL,
        "{killed:#x}"
    );
    assert_eq!(sleepers, "1\n", "only the instance's own sleep is left");
}

#[test]
fn exec_into_a_stopped_microvm_fails_with_one_line() {
    let r = Running::start("microvm");
    let out = r.capsa.output(&["kill", &r.id, "KILL"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let pid = r.capsa.state(&r.id)["pid"].as_i64().expect("pid") as i32;
    wait_exit(pid);
    assert_one_line_error(&r.exec(&[], &["true"]), "not running");
}

#[test]
fn exec_with_a_terminal_gives_the_process_a_tty_in_both_modes() {
    let script = "[ -t 0 ] && [ -t 1 ] && echo is-a-tty; stty size; \
                  stty -echo; stty | grep -c -- -echo; exit 2";
    let out = same_in_both_modes("exec -t", |r| {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("console.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket).expect("console socket");
        let process = serde_json::json!({
            "terminal": true,
            "consoleSize": {"height": 24, "width": 80},
            "user": {"uid": 0, "gid": 0},
            "args": ["sh", "-c", script],
            "env": ["PATH=/bin:/usr/bin"],
            "cwd": "/",
        });
        let process_file = dir.path().join("process.json");
        std::fs::write(&process_file, process.to_string()).expect("process.json");
        let child = r
            .exec_command(
                &[
                    "--process",
                    &process_file.display().to_string(),
                    "--console-socket",
                    &socket.display().to_string(),
                ],
                &[],
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("capsa exec -t");
        let master = receive_master(&listener);
        let output = read_master(master);
        let status = child.wait_with_output().expect("wait");
        (status.status.code(), output, stderr(&status))
    });
    assert_eq!(
        out,
        (
            Some(2),
            "is-a-tty\r\n24 80\r\n1\r\n".to_string(),
            String::new()
        )
    );
}
