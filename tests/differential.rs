//! Differential tests: the same busybox bundle runs under
//! `--isolation=container` and `--isolation=microvm`, and both must give the
//! same stdout, stderr and exit status, which must also be the expected ones
//! (so the modes cannot agree on being wrong). Plus the lifecycle of a
//! microVM: create, state, start, kill, delete.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use capsa_tests::*;
use serde_json::json;

const MODES: [&str; 2] = ["container", "microvm"];

/// The contents of `/data` in every fixture, with fixed times so `ls -l`
/// prints the same thing whenever and however the bundle was built.
const FILES: [(&str, &str); 3] = [
    ("a.txt", "pear\napple\nfig\nbanana\n"),
    ("b.txt", "one two three\nfour five\n"),
    ("empty", ""),
];
const FIXED_TIME: &str = "2021-03-04 05:06:07";

/// A static C program compiled once per test run with the host's gcc.
fn static_hello() -> &'static Path {
    static HELLO: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, path) = HELLO.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let binary = compile_c(
            dir.path(),
            "hello",
            "#include <stdio.h>\nint main(int argc, char **argv) {\n\
             printf(\"hello from %s with %d args\\n\", argv[0], argc);\n\
             fprintf(stderr, \"to stderr\\n\");\n return 4;\n}\n",
            &["-static"],
        );
        (dir, binary)
    });
    path
}

/// A busybox bundle running `args`, with `/data` holding [`FILES`] and
/// `/bin/hello` the static C program; everything owned by root, fixed times.
fn fixture(args: &[&str]) -> TestBundle {
    let bundle = TestBundle::busybox(args);
    let data = bundle.rootfs().join("data");
    std::fs::create_dir(&data).expect("mkdir /data");
    for (name, text) in FILES {
        std::fs::write(data.join(name), text).expect("write fixture file");
    }
    std::fs::copy(static_hello(), bundle.rootfs().join("bin/hello")).expect("copy hello");
    let mut touch = Command::new("touch");
    touch.arg("-d").arg(FIXED_TIME).arg(&data);
    for (name, _) in FILES {
        touch.arg(data.join(name));
    }
    assert!(touch.status().expect("touch").success(), "touch -d failed");
    bundle
}

/// A fixture running `/bin/<name>`, the C program `source` built with the
/// host's gcc and `flags`.
fn c_program_fixture(name: &str, source: &str, flags: &[&str]) -> TestBundle {
    let dir = tempfile::tempdir().expect("tempdir");
    let binary = compile_c(dir.path(), name, source, flags);
    let program = format!("/bin/{name}");
    let bundle = fixture(&[program.as_str()]);
    std::fs::copy(&binary, bundle.rootfs().join(&program[1..])).expect("copy the program");
    bundle
}

/// `capsa run` of `bundle` in `mode`, with `stdin` piped in (else /dev/null).
fn run(capsa: &Capsa, bundle: &TestBundle, mode: &str, stdin: Option<&[u8]>) -> Output {
    let id = unique_id(mode);
    let mut cmd = capsa.run_command(bundle, mode, &id);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    if stdin.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd.spawn().expect("spawn capsa run");
    if let (Some(bytes), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(bytes).expect("write stdin");
        // Dropping the pipe closes it: the process sees end of file.
    }
    let out = child.wait_with_output().expect("wait for capsa run");
    capsa.assert_nothing_left(&id);
    out
}

/// Runs `bundle` in both modes and asserts identical results; returns them.
fn both(case: &str, bundle: &TestBundle, stdin: Option<&[u8]>) -> Output {
    let capsa = Capsa::new();
    let [container, microvm] = MODES.map(|mode| run(&capsa, bundle, mode, stdin));
    assert!(
        container.status.code() == microvm.status.code()
            && container.stdout == microvm.stdout
            && container.stderr == microvm.stderr,
        "case {case:?}: the modes differ\n== container: {}\n== microvm: {}",
        show(&container),
        show(&microvm)
    );
    container
}

/// Runs `args` on a fresh fixture in both modes and checks the shared result.
fn case(name: &str, args: &[&str], code: i32, expected_stdout: &str) -> Output {
    let out = both(name, &fixture(args), None);
    assert_eq!(
        (out.status.code(), stdout(&out).as_str()),
        (Some(code), expected_stdout),
        "case {name:?}: both modes agree on a wrong result\n{}",
        show(&out)
    );
    out
}

#[test]
fn a_static_c_program() {
    let out = case(
        "static hello",
        &["/bin/hello", "x", "y"],
        4,
        "hello from /bin/hello with 3 args\n",
    );
    assert_eq!(stderr(&out), "to stderr\n");
}

#[test]
fn busybox_echo() {
    case("echo", &["echo", "hello", "world"], 0, "hello world\n");
}

#[test]
fn cat_of_a_rootfs_file() {
    case("cat", &["cat", "/data/a.txt"], 0, FILES[0].1);
}

#[test]
fn ls_long_listing_with_fixed_times() {
    let listing = concat!(
        "total 8\n",
        "-rw-r--r--    1 root     root            22 Mar  4  2021 a.txt\n",
        "-rw-r--r--    1 root     root            24 Mar  4  2021 b.txt\n",
        "-rw-r--r--    1 root     root             0 Mar  4  2021 empty\n",
    );
    case("ls -l", &["ls", "-l", "/data"], 0, listing);
    case(
        "ls -ld",
        &["ls", "-ld", "--full-time", "/data"],
        0,
        "drwxr-xr-x    2 root     root          4096 2021-03-04 05:06:07 +0000 /data\n",
    );
}

#[test]
fn text_tools() {
    case(
        "wc",
        &["wc", "/data/a.txt", "/data/b.txt"],
        0,
        concat!(
            "        4         4        22 /data/a.txt\n",
            "        2         5        24 /data/b.txt\n",
            "        6         9        46 total\n",
        ),
    );
    case(
        "sort",
        &["sort", "/data/a.txt"],
        0,
        "apple\nbanana\nfig\npear\n",
    );
    case(
        "head",
        &["head", "-n", "2", "/data/a.txt"],
        0,
        "pear\napple\n",
    );
    let sums = Command::new("sha256sum")
        .current_dir(fixture(&["true"]).rootfs())
        .args(["data/a.txt", "data/b.txt", "data/empty"])
        .output()
        .expect("host sha256sum");
    let expected = stdout(&sums).replace("data/", "/data/");
    case(
        "sha256sum",
        &["sha256sum", "/data/a.txt", "/data/b.txt", "/data/empty"],
        0,
        &expected,
    );
}

#[test]
fn shell_builtins() {
    // Builtins only: no child process is involved.
    case(
        "sh builtins",
        &[
            "sh",
            "-c",
            "x=3; echo $((x * 7)); cd /data && pwd && echo *; read -r l < a.txt; echo \"$l\"; \
             test -f b.txt && echo yes; printf '%s-%s\\n' a b; echo oops >&2; exit 5",
        ],
        5,
        "21\n/data\na.txt b.txt empty\npear\nyes\na-b\n",
    );
}

#[test]
fn pipelines_subshells_and_signals_to_self() {
    // Child processes, pipes and signal handlers inside the guest.
    case(
        "pipeline",
        &["sh", "-c", "cat /data/a.txt | sort | head -n 2"],
        0,
        "apple\nbanana\n",
    );
    case(
        "command substitution",
        &[
            "sh",
            "-c",
            "n=$(ls /data | wc -l); echo \"$n files\"; (exit 7); echo $?",
        ],
        0,
        "3 files\n7\n",
    );
    case(
        "trap",
        &[
            "sh",
            "-c",
            "trap 'echo got USR1' USR1; kill -USR1 $$; echo after",
        ],
        0,
        "got USR1\nafter\n",
    );
}

#[test]
fn exit_status_propagates() {
    case("exit 3", &["sh", "-c", "exit 3"], 3, "");
}

#[test]
fn a_file_written_by_the_process_is_in_the_rootfs() {
    for mode in MODES {
        let mut bundle = fixture(&["sh", "-c", "echo written > /data/out.txt; echo done"]);
        bundle.edit(|c| c["root"]["readonly"] = json!(false));
        let capsa = Capsa::new();
        let out = run(&capsa, &bundle, mode, None);
        assert!(out.status.success(), "{mode}: {}", show(&out));
        assert_eq!(stdout(&out), "done\n", "{mode}");
        let written = std::fs::read_to_string(bundle.rootfs().join("data/out.txt"))
            .unwrap_or_else(|e| panic!("{mode}: /data/out.txt is not in the rootfs: {e}"));
        assert_eq!(written, "written\n", "{mode}");
    }
}

#[test]
fn a_read_only_rootfs_refuses_writes() {
    let mut bundle = fixture(&["sh", "-c", "echo x > /data/out.txt"]);
    bundle.edit(|c| c["root"]["readonly"] = json!(true));
    let out = both("read-only root", &bundle, None);
    assert_ne!(out.status.code(), Some(0), "{}", show(&out));
    assert!(
        stderr(&out).contains("Read-only file system"),
        "{}",
        show(&out)
    );
    assert!(!bundle.rootfs().join("data/out.txt").exists());
}

#[test]
fn a_missing_executable_fails_create_with_one_line() {
    let bundle = fixture(&["no-such-program", "arg"]);
    let out = both("missing executable", &bundle, None);
    assert_one_line_error(
        &out,
        "process.args: \"no-such-program\": executable file not found in $PATH",
    );
}

#[test]
fn stdin_reaches_the_process() {
    let out = both("stdin", &fixture(&["cat"]), Some(b"hi\nthere\n"));
    assert_eq!(stdout(&out), "hi\nthere\n", "{}", show(&out));
    let out = both("wc stdin", &fixture(&["wc", "-l"]), Some(b"1\n2\n3\n"));
    assert_eq!(stdout(&out).trim(), "3", "{}", show(&out));
}

fn process_exists(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the pid exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// The VMM of a running microVM is confined: its root holds only what it
/// serves, it has no_new_privs, a seccomp filter and only the capabilities
/// of a file server.
fn assert_vmm_is_jailed(pid: i32) {
    let mut root: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/root"))
        .expect("VMM root")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    root.sort();
    // `mnt` holds the served tmpfs of the spec's /dev/shm.
    assert_eq!(root, ["dev", "mnt", "proc", "rootfs"], "the VMM's root");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_else(|| panic!("{name} missing from\n{status}"))
            .to_string()
    };
    assert_eq!(field("NoNewPrivs:"), "1");
    assert_eq!(field("Seccomp:"), "2", "seccomp filter mode");
    // CHOWN, DAC_OVERRIDE, DAC_READ_SEARCH, FOWNER, FSETID, SETGID, SETUID.
    for set in ["CapBnd:", "CapPrm:", "CapEff:"] {
        assert_eq!(field(set), "00000000000000df", "{set}");
    }
    assert_eq!(field("CapAmb:"), "0000000000000000");
}

#[test]
fn kill_ends_a_running_microvm_and_run_exits_137() {
    for mode in MODES {
        let capsa = Capsa::new();
        let id = unique_id("kill");
        // `read` blocks on stdin, which the test keeps open: a process that
        // is provably running (it printed) and waits without a timer.
        let bundle = fixture(&["sh", "-c", "echo ready; read line; echo never"]);
        let mut child = capsa
            .run_command(&bundle, mode, &id)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn capsa run");
        let stdin = child.stdin.take();
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("read ready");
        assert_eq!(line, "ready\n", "{mode}");
        let pid = capsa.state(&id)["pid"].as_i64().expect("pid") as i32;
        if mode == "microvm" {
            assert_vmm_is_jailed(pid);
        }
        let killed = capsa.output(&["kill", &id, "KILL"]);
        assert!(killed.status.success(), "{mode}: {}", stderr(&killed));
        let status = child.wait().expect("wait");
        drop(stdin);
        assert_eq!(status.code(), Some(137), "{mode}");
        line.clear();
        out.read_line(&mut line).expect("read rest");
        assert_eq!(line, "", "{mode}: the process went on after SIGKILL");
        assert!(
            !process_exists(pid),
            "{mode}: the init {pid} is still there"
        );
        capsa.assert_nothing_left(&id);
    }
}

#[test]
fn microvm_lifecycle_create_start_kill_delete() {
    let capsa = Capsa::new();
    let bundle = fixture(&["sleep", "1000"]);
    let id = unique_id("vmlife");
    let pid_file = bundle.path().join("pid");
    let pid_arg = pid_file.display().to_string();
    let out = capsa.create(
        &bundle,
        &["--isolation", "microvm", "--pid-file", &pid_arg],
        &id,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let state = capsa.state(&id);
    assert_eq!(state["status"], "created");
    let pid = state["pid"].as_i64().expect("pid") as i32;
    assert!(
        pid > 0 && process_exists(pid),
        "state pid {pid} is not alive"
    );
    assert_eq!(
        std::fs::read_to_string(&pid_file).expect("pid file"),
        pid.to_string()
    );
    // The pid is the VMM's host pid: a process in the container's cgroup.
    let ps: Vec<i32> =
        serde_json::from_slice(&capsa.output(&["ps", "--format", "json", &id]).stdout)
            .expect("ps json");
    assert_eq!(ps, vec![pid]);

    let out = capsa.output(&["start", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(capsa.state(&id)["status"], "running");
    assert_one_line_error(&capsa.output(&["delete", &id]), "use --force");
    // The freezer holds the VMM (vCPU included) like any process.
    assert!(capsa.output(&["pause", &id]).status.success());
    assert_eq!(capsa.state(&id)["status"], "paused");
    assert!(capsa.output(&["resume", &id]).status.success());
    assert_eq!(capsa.state(&id)["status"], "running");

    let out = capsa.output(&["kill", &id, "SIGKILL"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_exit(pid);
    assert_eq!(capsa.state(&id)["status"], "stopped");
    let out = capsa.output(&["delete", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_one_line_error(&capsa.output(&["state", &id]), "does not exist");
    capsa.assert_nothing_left(&id);
}

#[test]
fn microvm_refusals_name_the_field_and_leave_nothing() {
    let capsa = Capsa::new();
    type ConfigChange = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(ConfigChange, &str)> = vec![
        (
            Box::new(|c| c["linux"]["resources"] = json!({"memory": {"limit": 16 << 20}})),
            "linux.resources.memory.limit",
        ),
        (
            Box::new(|c| {
                c["mounts"].as_array_mut().expect("mounts").push(
                    json!({"destination": "/f", "type": "bind", "source": "/no/such/source",
                    "options": ["bind"]}),
                )
            }),
            "/no/such/source",
        ),
        (
            Box::new(|c| {
                c["mounts"].as_array_mut().expect("mounts").push(
                    json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                    "options": ["size=lots"]}),
                )
            }),
            "mounts[",
        ),
        (
            Box::new(|c| c["annotations"] = json!({"dev.capsa.hugepages": "maybe"})),
            "annotations.dev.capsa.hugepages",
        ),
    ];
    for (change, needle) in cases {
        let mut bundle = fixture(&["true"]);
        bundle.edit(change);
        let id = unique_id("vmbad");
        let out = capsa.run(&bundle, "microvm", &id);
        assert_one_line_error(&out, needle);
        capsa.assert_nothing_left(&id);
    }
}

#[test]
fn a_bind_mount_is_shared_with_the_microvm() {
    let shared = tempfile::tempdir().expect("tempdir");
    std::fs::write(shared.path().join("hello.txt"), "from the host\n").expect("write");
    let source = shared.path().display().to_string();
    for (mode, options) in [("rw", json!(["rbind"])), ("ro", json!(["rbind", "ro"]))] {
        let mut bundle = fixture(&[
            "sh",
            "-c",
            "read -r l < /shared/hello.txt; echo \"$l\"; echo new > /shared/new.txt && echo wrote",
        ]);
        bundle.edit(|c| {
            c["mounts"].as_array_mut().expect("mounts").push(
                json!({"destination": "/shared", "type": "bind", "source": source,
                "options": options}),
            )
        });
        let out = both(&format!("bind mount {mode}"), &bundle, None);
        let _ = std::fs::remove_file(shared.path().join("new.txt"));
        let want = if mode == "rw" {
            "from the host\nwrote\n"
        } else {
            "from the host\n"
        };
        assert_eq!(stdout(&out), want, "{mode}: {}", show(&out));
    }
}

#[test]
fn a_pids_limit_of_one_still_runs_the_process() {
    let mut bundle = fixture(&["sh", "-c", "echo one process"]);
    bundle.edit(|c| c["linux"]["resources"] = json!({"pids": {"limit": 1}}));
    let out = both("pids.limit 1", &bundle, None);
    assert_eq!(
        (out.status.code(), stdout(&out).as_str()),
        (Some(0), "one process\n"),
        "{}",
        show(&out)
    );
}

#[test]
fn a_non_root_user_writes_as_itself() {
    let mut bundle = fixture(&[
        "sh",
        "-c",
        "echo mine > /tmp/mine && echo wrote; echo x > /data/a.txt",
    ]);
    bundle.edit(|c| {
        c["root"]["readonly"] = json!(false);
        c["process"]["user"] = json!({"uid": 1000, "gid": 1000});
    });
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let tmp = bundle.rootfs().join("tmp");
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    let capsa = Capsa::new();
    let [container, microvm] = MODES.map(|mode| {
        let out = run(&capsa, &bundle, mode, None);
        let meta = std::fs::metadata(tmp.join("mine"))
            .unwrap_or_else(|e| panic!("{mode}: /tmp/mine was not written: {e}"));
        assert_eq!((meta.uid(), meta.gid()), (1000, 1000), "{mode}: owner");
        std::fs::remove_file(tmp.join("mine")).expect("remove");
        out
    });
    assert_eq!(show(&container), show(&microvm), "the modes differ");
    assert_eq!(stdout(&container), "wrote\n");
    assert!(
        stderr(&container).contains("Permission denied"),
        "{}",
        show(&container)
    );
    assert_eq!(
        std::fs::read_to_string(bundle.rootfs().join("data/a.txt")).expect("a.txt"),
        FILES[0].1,
        "a root-owned file was overwritten by uid 1000"
    );
}

#[test]
fn a_vmm_failure_after_start_exits_125_with_one_line() {
    // The startContainer hook runs in the init just before it becomes the
    // VMM: removing the shared directory there makes the jail fail.
    let shared = tempfile::tempdir().expect("tempdir");
    let source = shared.path().join("gone");
    std::fs::create_dir(&source).expect("mkdir");
    let source = source.display().to_string();
    let mut bundle = fixture(&["true"]);
    bundle.edit(|c| {
        c["mounts"].as_array_mut().expect("mounts").push(
            json!({"destination": "/shared", "type": "bind", "source": source, "options": ["rbind"]}),
        );
        c["hooks"] = json!({"startContainer": [
            {"path": "/bin/rmdir", "args": ["rmdir", source]}
        ]});
    });
    let capsa = Capsa::new();
    let out = run(&capsa, &bundle, "microvm", None);
    assert_eq!(out.status.code(), Some(125), "{}", show(&out));
    assert_one_line_error(
        &out,
        &format!("capsa: cannot build the VMM's jail at {source}"),
    );
}

#[test]
fn a_file_bind_mount_is_visible_and_read_only_in_both_modes() {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), "bound from the host\n").expect("write");
    let source = file.path().display().to_string();
    let mut bundle = fixture(&[
        "sh",
        "-c",
        "cat /etc/bound; echo x > /etc/bound 2>/dev/null || echo refused",
    ]);
    bundle.edit(|c| {
        c["mounts"].as_array_mut().expect("mounts").push(json!({
            "destination": "/etc/bound", "type": "bind", "source": source,
            "options": ["bind", "ro"]
        }))
    });
    let out = both("file bind mount", &bundle, None);
    assert_eq!(
        stdout(&out),
        "bound from the host\nrefused\n",
        "{}",
        show(&out)
    );
    assert_eq!(
        std::fs::read_to_string(file.path()).expect("read"),
        "bound from the host\n"
    );
}

/// Input that arrives after the process is already blocked reading stdin
/// (an interactive user, a slow producer) must wake it in both modes.
#[test]
fn stdin_arriving_later_wakes_a_blocked_reader() {
    use std::io::{BufRead, BufReader, Write};
    let bundle = fixture(&["sh", "-c", "echo ready; read x; echo got $x"]);
    let capsa = Capsa::new();
    for mode in MODES {
        let id = unique_id("late-stdin");
        let mut child = capsa
            .run_command(&bundle, mode, &id)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn capsa run");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read");
        assert_eq!(line, "ready\n", "{mode}");
        // The reader is blocked (or about to block) on an empty stdin now.
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(b"go\n").expect("write");
        drop(stdin);
        line.clear();
        stdout.read_line(&mut line).expect("read");
        assert_eq!(line, "got go\n", "{mode}");
        assert!(child.wait().expect("wait").success(), "{mode}");
        capsa.assert_nothing_left(&id);
    }
}

/// What the fault tests' C programs share: a SIGINFO handler that records
/// the signal, its code and address, and jumps back to the `sigsetjmp` of
/// the access that faulted; `catch_faults(sig)` installs it.
const FAULT_CATCHER_C: &str = r#"#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
static sigjmp_buf back;
static volatile char *where;
static volatile int code, sig;
static void on_fault(int s, siginfo_t *info, void *uc) {
    (void)uc; sig = s; where = info->si_addr; code = info->si_code;
    siglongjmp(back, 1);
}
static void catch_faults(int signal) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO;
    sigaction(signal, &sa, NULL);
}
"#;

/// Faults raise signals whose handlers run: SIGSEGV on an unmapped address
/// (three times, each handler leaving through siglongjmp) with the address
/// and SEGV_MAPERR in its siginfo, SIGFPE on an integer division by zero,
/// then, with the default action back, a null-pointer write kills the
/// process (139).
const FAULTS_MAIN_C: &str = r#"int main(void) {
    catch_faults(SIGSEGV);
    catch_faults(SIGFPE);
    volatile int *bad = (int *)0x100000000000;
    for (int i = 0; i < 3; i++) {
        if (!sigsetjmp(back, 1)) *bad = 1;
        printf("SIGSEGV %d at %p code %d\n", sig, (void *)where, code);
    }
    volatile int zero = 0, seven = 7;
    if (!sigsetjmp(back, 1)) printf("%d\n", seven / zero);
    printf("SIGFPE %d code %d\n", sig, code);
    signal(SIGSEGV, SIG_DFL);
    fflush(stdout);
    *(volatile int *)0 = 2;
    return 0;
}
"#;

#[test]
fn fault_signals_run_their_handlers() {
    let bundle = c_program_fixture(
        "faults",
        &format!("{FAULT_CATCHER_C}{FAULTS_MAIN_C}"),
        &["-static", "-O1"],
    );
    let out = both("fault handlers", &bundle, None);
    assert_eq!(
        (out.status.code(), stdout(&out).as_str()),
        (
            Some(139),
            "SIGSEGV 11 at 0x100000000000 code 1\n\
             SIGSEGV 11 at 0x100000000000 code 1\n\
             SIGSEGV 11 at 0x100000000000 code 1\n\
             SIGFPE 8 code 1\n"
        ),
        "{}",
        show(&out)
    );
}

/// mprotect is enforced page by page: a read-only page reads but a write
/// faults with SEGV_ACCERR at the written address while its neighbour
/// stays writable; the kernel refuses (EFAULT) to write into a read-only
/// page or read from a PROT_NONE one; a forked child inherits the
/// protections; making the page writable again works; bad arguments fail
/// as on Linux; an unmapped page amid mapped ones faults with SEGV_MAPERR;
/// a read-only private file mapping faults on write.
const PROTECT_MAIN_C: &str = r#"#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
static void try_write(const char *what, volatile char *p) {
    sig = 0;
    if (!sigsetjmp(back, 1)) *p = 'w';
    printf("write %s: signal %d code %d at %+ld\n", what, sig, sig ? code : 0, sig ? (long)(where - p) : 0L);
}
static void try_read(const char *what, volatile char *p) {
    sig = 0;
    int v = 0;
    if (!sigsetjmp(back, 1)) v = *p;
    printf("read %s: signal %d code %d value %d\n", what, sig, sig ? code : 0, sig ? -1 : v);
}
int main(void) {
    catch_faults(SIGSEGV);
    long pg = sysconf(_SC_PAGESIZE);
    char *m = mmap(NULL, 3 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memset(m, 'a', 3 * pg);
    printf("mprotect read-only: %d\n", mprotect(m + pg, pg, PROT_READ));
    try_read("read-only", m + pg);
    try_write("read-only", m + pg + 7);
    try_write("neighbour", m + 2 * pg);
    int fd = open("/dev/zero", O_RDONLY);
    int p[2];
    pipe(p);
    ssize_t n = read(fd, m + pg, 16);
    printf("read(2) into read-only: %zd errno %d\n", n, errno);
    n = write(p[1], m + pg, 16);
    printf("write(2) from read-only: %zd\n", n);
    printf("mprotect none: %d\n", mprotect(m + pg, pg, PROT_NONE));
    try_read("none", m + pg);
    errno = 0;
    n = write(p[1], m + pg, 16);
    printf("write(2) from none: %zd errno %d\n", n, errno);
    pid_t child = fork();
    if (child == 0) {
        signal(SIGSEGV, SIG_DFL);
        m[0] = 'c';
        m[pg] = 'c';
        _exit(0);
    }
    int status;
    waitpid(child, &status, 0);
    printf("child touching none: signaled %d sig %d\n", WIFSIGNALED(status), WTERMSIG(status));
    printf("mprotect read-write: %d\n", mprotect(m, 3 * pg, PROT_READ | PROT_WRITE));
    try_write("read-write", m + pg);
    printf("value %c\n", m[pg]);
    int r = mprotect(m, pg, 0x80);
    printf("mprotect bad prot: %d errno %d\n", r, errno);
    r = mprotect(m + 1, pg, PROT_READ);
    printf("mprotect unaligned: %d errno %d\n", r, errno);
    munmap(m + pg, pg);
    try_read("unmapped", m + pg);
    r = mprotect(m, 3 * pg, PROT_READ);
    printf("mprotect hole: %d errno %d\n", r, errno);
    int f = open("/data/a.txt", O_RDONLY);
    char *fm = mmap(NULL, pg, PROT_READ, MAP_PRIVATE, f, 0);
    if (fm == MAP_FAILED) return 1;
    printf("file mapping reads %c\n", fm[0]);
    try_write("file read-only", fm);
    return 0;
}
"#;

#[test]
fn mprotect_is_enforced_page_by_page() {
    let bundle = c_program_fixture(
        "protect",
        &format!("{FAULT_CATCHER_C}{PROTECT_MAIN_C}"),
        &["-static", "-O1"],
    );
    let out = both("mprotect", &bundle, None);
    assert_eq!(
        (out.status.code(), stdout(&out).as_str()),
        (
            Some(0),
            "mprotect read-only: 0\n\
             read read-only: signal 0 code 0 value 97\n\
             write read-only: signal 11 code 2 at +0\n\
             write neighbour: signal 0 code 0 at +0\n\
             read(2) into read-only: -1 errno 14\n\
             write(2) from read-only: 16\n\
             mprotect none: 0\n\
             read none: signal 11 code 2 value -1\n\
             write(2) from none: -1 errno 14\n\
             child touching none: signaled 1 sig 11\n\
             mprotect read-write: 0\n\
             write read-write: signal 0 code 0 at +0\n\
             value w\n\
             mprotect bad prot: -1 errno 22\n\
             mprotect unaligned: -1 errno 22\n\
             read unmapped: signal 11 code 1 value -1\n\
             mprotect hole: -1 errno 12\n\
             file mapping reads p\n\
             write file read-only: signal 11 code 2 at +0\n"
        ),
        "{}",
        show(&out)
    );
}

/// `MAP_SHARED` file mappings are the file's: msync writes them back, a
/// forked child's writes show in the parent's mapping, munmap and exit
/// write them back; a writable shared mapping of a read-only descriptor is
/// refused (EACCES); a process-shared semaphore in shared memory wakes a
/// child blocked on it (its futex is keyed by the memory, not the process).
const SHARED_FILE_C: &str = r#"#include <errno.h>
#include <fcntl.h>
#include <semaphore.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
static void show(const char *what, int fd) {
    char buf[32] = {0};
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    printf("%s: %zd \"%s\"\n", what, n, buf);
    fflush(stdout);
}
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    int fd = open("/data/shared-map", O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || ftruncate(fd, 4096) != 0) return 1;
    char *m = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) return 2;
    strcpy(m, "written");
    printf("msync: %d\n", msync(m, 4096, MS_SYNC));
    show("after msync", fd);
    pid_t child = fork();
    if (child == 0) {
        strcpy(m, "by the child");
        _exit(0);
    }
    waitpid(child, NULL, 0);
    printf("parent sees: \"%s\"\n", m);
    munmap(m, 4096);
    show("after munmap", fd);
    child = fork();
    if (child == 0) {
        char *c = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        strcpy(c, "at exit");
        _exit(0);
    }
    waitpid(child, NULL, 0);
    show("after the child's exit", fd);
    int ro = open("/data/shared-map", O_RDONLY);
    void *bad = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, ro, 0);
    printf("writable shared map of a read-only fd: %s errno %d\n", bad == MAP_FAILED ? "refused" : "allowed", errno);
    char *r = mmap(NULL, 4096, PROT_READ, MAP_SHARED, ro, 3 * 0 + 0);
    printf("read-only shared map reads \"%s\"\n", r);
    sem_t *sem = mmap(NULL, sizeof *sem, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    sem_init(sem, 1, 0);
    child = fork();
    if (child == 0) {
        sem_wait(sem);
        printf("child woke\n");
        fflush(stdout);
        sem_post(sem + 0);
        _exit(0);
    }
    printf("posting\n");
    fflush(stdout);
    sem_post(sem);
    waitpid(child, NULL, 0);
    printf("done\n");
    return 0;
}
"#;

#[test]
fn shared_file_mappings_reach_the_file_and_other_processes() {
    let mut bundle =
        c_program_fixture("sharedfile", SHARED_FILE_C, &["-static", "-O1", "-pthread"]);
    bundle.edit(|c| c["root"]["readonly"] = json!(false));
    let out = both("MAP_SHARED files", &bundle, None);
    assert_eq!(
        (out.status.code(), stdout(&out).as_str()),
        (
            Some(0),
            "msync: 0\n\
             after msync: 31 \"written\"\n\
             parent sees: \"by the child\"\n\
             after munmap: 31 \"by the child\"\n\
             after the child's exit: 31 \"at exit\"\n\
             writable shared map of a read-only fd: refused errno 13\n\
             read-only shared map reads \"at exit\"\n\
             posting\n\
             child woke\n\
             done\n"
        ),
        "{}",
        show(&out)
    );
}

/// execve from a process with threads ends them: the new image is the
/// process's only thread (its /proc status says so).
const EXEC_WITH_THREADS_C: &str = r#"#include <pthread.h>
#include <unistd.h>
static void *wait_forever(void *arg) {
    int p[2];
    char c;
    if (pipe(p) == 0) read(p[0], &c, 1);
    return arg;
}
int main(void) {
    pthread_t t[3];
    for (int i = 0; i < 3; i++) pthread_create(&t[i], NULL, wait_forever, NULL);
    execl("/bin/sh", "sh", "-c", "grep Threads /proc/$$/status", (char *)0);
    return 1;
}
"#;

#[test]
fn exec_ends_the_other_threads() {
    let bundle = c_program_fixture(
        "execthreads",
        EXEC_WITH_THREADS_C,
        &["-static", "-O1", "-pthread"],
    );
    let out = both("exec with threads", &bundle, None);
    assert_eq!(
        (out.status.code(), stdout(&out).as_str()),
        (Some(0), "Threads:\t1\n"),
        "{}",
        show(&out)
    );
}

/// A forked child (and its child) sees every page its parent wrote, however
/// it was written: by the CPU, by a file read landing in the buffer, by
/// mremap moving a mapping, and nothing where nothing was written.
const FORK_SEES_WRITES_C: &str = r#"#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
static unsigned sum(const unsigned char *p, long n) {
    unsigned s = 0;
    for (long i = 0; i < n; i++) s = s * 31 + p[i];
    return s;
}
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    long pg = 4096, n = 150;
    unsigned char *m = mmap(NULL, n * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    for (long i = 0; i < n; i += 7) memset(m + i * pg + 100, (int)i, 50);
    int fd = open("/data/a.txt", O_RDONLY);
    ssize_t got = read(fd, m + 3 * pg + 4000, 200);
    unsigned char *r = mmap(NULL, 2 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memcpy(r + pg + 5, "moved", 5);
    r = mremap(r, 2 * pg, 64 * pg, MREMAP_MAYMOVE);
    unsigned expect = sum(m, n * pg), expect_r = sum(r, 64 * pg);
    printf("read %zd, parent %u %u\n", got, expect == sum(m, n * pg), expect_r == sum(r, 64 * pg));
    for (int depth = 0; depth < 2; depth++) {
        pid_t c = fork();
        if (c != 0) {
            int st;
            waitpid(c, &st, 0);
            return WEXITSTATUS(st);
        }
        printf("child %d: %s %s %.4s %d\n", depth, sum(m, n * pg) == expect ? "same" : "DIFFERENT",
               sum(r, 64 * pg) == expect_r ? "same" : "DIFFERENT", (char *)m + 3 * pg + 4000,
               m[10 * pg + 100]);
    }
    return 0;
}
"#;

#[test]
fn a_forked_child_sees_every_written_page() {
    let bundle = c_program_fixture("forkwrites", FORK_SEES_WRITES_C, &["-static", "-O1"]);
    let out = both("fork sees writes", &bundle, None);
    assert_eq!(
        (out.status.code(), stdout(&out).as_str()),
        (
            Some(0),
            "read 22, parent 1 1\nchild 0: same same pear 0\nchild 1: same same pear 0\n"
        ),
        "{}",
        show(&out)
    );
}

/// `capsa kill` with SIGTERM reaches the process in both modes: a shell
/// trapping it runs its trap (exit 3), while SIGUSR1, which it has no
/// handler for, is ignored as by any container's pid 1 and the process
/// keeps running until it is told to stop (here by its trap).
#[test]
fn kill_term_reaches_a_trapping_process_in_both_modes() {
    for mode in MODES {
        let capsa = Capsa::new();
        let id = unique_id("term");
        let bundle = fixture(&[
            "sh",
            "-c",
            "trap 'echo got TERM; exit 3' TERM; echo ready; while :; do sleep 1; done",
        ]);
        let mut child = capsa
            .run_command(&bundle, mode, &id)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn capsa run");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("read ready");
        assert_eq!(line, "ready\n", "{mode}");
        for sig in ["USR1", "TERM"] {
            let sent = capsa.output(&["kill", &id, sig]);
            assert!(sent.status.success(), "{mode} {sig}: {}", stderr(&sent));
        }
        let status = child.wait().expect("wait");
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut out, &mut rest).expect("read rest");
        assert_eq!(
            (status.code(), rest.as_str()),
            (Some(3), "got TERM\n"),
            "{mode}"
        );
        capsa.assert_nothing_left(&id);
    }
}

/// Prints CLOCK_REALTIME and CLOCK_MONOTONIC (ns) twice, 30 ms apart by
/// nanosleep.
const CLOCKS_C: &str = r#"#include <stdio.h>
#include <time.h>
static long long ns(clockid_t c) {
    struct timespec t;
    clock_gettime(c, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}
int main(void) {
    long long r1 = ns(CLOCK_REALTIME), m1 = ns(CLOCK_MONOTONIC);
    struct timespec nap = {0, 30 * 1000 * 1000};
    nanosleep(&nap, NULL);
    long long r2 = ns(CLOCK_REALTIME), m2 = ns(CLOCK_MONOTONIC);
    printf("%lld %lld %lld %lld\n", r1, m1, r2, m2);
    return 0;
}
"#;

fn host_clock(clock: libc::clockid_t) -> i64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(clock, &mut t) };
    t.tv_sec * 1_000_000_000 + t.tv_nsec
}

/// The process's CLOCK_REALTIME and CLOCK_MONOTONIC agree with the host's to
/// a millisecond in both modes: each reading lies between the host's
/// readings taken before `capsa run` and after it (±1 ms), and a 30 ms
/// nanosleep lasts 30 ms or more on both clocks, which advance together.
#[test]
fn clocks_agree_with_the_host_within_a_millisecond() {
    let bundle = c_program_fixture("clocks", CLOCKS_C, &["-static"]);
    const MS: i64 = 1_000_000;
    for mode in MODES {
        let capsa = Capsa::new();
        let before = [libc::CLOCK_REALTIME, libc::CLOCK_MONOTONIC].map(host_clock);
        let out = run(&capsa, &bundle, mode, None);
        let after = [libc::CLOCK_REALTIME, libc::CLOCK_MONOTONIC].map(host_clock);
        assert_eq!(out.status.code(), Some(0), "{mode}: {}", show(&out));
        let v: Vec<i64> = stdout(&out)
            .split_whitespace()
            .map(|w| w.parse().expect("a number"))
            .collect();
        let [r1, m1, r2, m2] = v[..] else {
            panic!("{mode}: {}", show(&out))
        };
        for (clock, (first, second)) in [(r1, r2), (m1, m2)].into_iter().enumerate() {
            assert!(
                before[clock] - MS <= first && first <= second && second <= after[clock] + MS,
                "{mode}: clock {clock}: host {} .. {}, process {first} .. {second}",
                before[clock],
                after[clock]
            );
        }
        assert!(
            r2 - r1 >= 30 * MS && m2 - m1 >= 30 * MS,
            "{mode}: slept too little"
        );
        assert!(
            ((r2 - r1) - (m2 - m1)).abs() <= MS,
            "{mode}: the clocks advanced apart: {} vs {} ns",
            r2 - r1,
            m2 - m1
        );
    }
}

/// `dev.capsa.hugepages: "true"` runs the same process the same way (the
/// microVM's RAM is then backed by transparent huge pages; a container
/// ignores it).
#[test]
fn the_hugepages_annotation_changes_nothing_the_process_sees() {
    let mut bundle = fixture(&["/bin/hello", "big"]);
    bundle.edit(|c| c["annotations"] = json!({"dev.capsa.hugepages": "true"}));
    let out = both("hugepages", &bundle, None);
    assert_eq!(
        (out.status.code(), stdout(&out).as_str()),
        (Some(4), "hello from /bin/hello with 2 args\n"),
        "{}",
        show(&out)
    );
}

/// `MAP_SHARED | MAP_ANONYMOUS` memory is shared with forked children
/// (three children add to a counter the parent then reads), private memory
/// is not, and a new shared mapping after an unmap reads as zero.
const SHARED_MEMORY_C: &str = r#"#include <stdio.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
int main(void) {
    int *shared = mmap(NULL, 3 * 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    int *private = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    shared[0] = 1; private[0] = 1;
    for (int i = 0; i < 3; i++) {
        pid_t pid = fork();
        if (pid == 0) { shared[0] += 10; shared[1000] = 7; private[0] = 99; _exit(0); }
        waitpid(pid, NULL, 0);
    }
    printf("shared %d %d private %d\n", shared[0], shared[1000], private[0]);
    munmap(shared, 3 * 4096);
    int *again = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    printf("fresh %d\n", again[0]);
    return 0;
}
"#;

#[test]
fn shared_anonymous_memory_is_shared_across_fork() {
    let bundle = c_program_fixture("shm", SHARED_MEMORY_C, &["-static", "-O1"]);
    let out = both("shared memory", &bundle, None);
    assert_eq!(
        (out.status.code(), stdout(&out).as_str()),
        (Some(0), "shared 31 7 private 1\nfresh 0\n"),
        "{}",
        show(&out)
    );
}

/// Robust futex lists are walked when their thread dies: a robust mutex
/// whose owner is gone (a thread that exited, a process that exited, was
/// killed while blocked, ended with exit_group while a sibling thread held
/// it, or exec'd) is taken with EOWNERDEAD, by a waiter already blocked on
/// it too, and pthread_mutex_consistent makes it usable again. Hand-made
/// lists check the kernel's walk itself: a circular list ends, the pending
/// entry, the PI bit, a bad pointer, a read-only word, a PROT_NONE entry
/// and a pending operation on a released word (a wake, no mark) behave as
/// on Linux, and none of them faults the kernel. Every lock is bounded to 5 s,
/// so a kernel that never marks fails here instead of hanging.
const ROBUST_C: &str = r#"#define _GNU_SOURCE
#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void say(const char *what, int ok) { printf("%s: %s\n", what, ok ? "yes" : "no"); fflush(stdout); }

/* A lock bounded to 5 s, so a broken kernel fails the check instead of hanging. */
static int lock5(pthread_mutex_t *m) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    t.tv_sec += 5;
    return pthread_mutex_timedlock(m, &t);
}

static void robust_init(pthread_mutex_t *m, int shared) {
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    if (shared) pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutex_init(m, &a);
}

/* 1: the owner thread exits; the lock is taken after the join. */
static pthread_mutex_t m1, m7;
static void *hold_and_exit(void *arg) { pthread_mutex_lock(arg); return NULL; }
static void *lock_unlock(void *arg) { pthread_mutex_lock(arg); pthread_mutex_unlock(arg); return NULL; }

/* 2: the owner exits while the main thread waits for the lock. */
static pthread_mutex_t m2;
static int ready[2];
static void *hold_until_waited(void *arg) {
    (void)arg;
    pthread_mutex_lock(&m2);
    char c = 1;
    write(ready[1], &c, 1);
    /* Leave once the main thread is queued on the lock (FUTEX_WAITERS). */
    while (!(__atomic_load_n(&m2.__data.__lock, __ATOMIC_SEQ_CST) & FUTEX_WAITERS)) sched_yield();
    return NULL;
}

/* 3-6: process-shared robust mutexes in MAP_SHARED memory. */
static pthread_mutex_t *shm;
static int go[2];
static void *child_thread_holds(void *arg) {
    (void)arg;
    pthread_mutex_lock(&shm[2]);
    char c = 1;
    write(ready[1], &c, 1);
    read(go[0], &c, 1); /* never written: blocked until the process ends */
    return NULL;
}

/* 8: hand-made robust lists, walked when the thread that registered them exits. */
struct entry { struct entry *next; long pad; unsigned word; };
struct head { struct entry *next; long offset; struct entry *pending; };
static struct entry ring[2], pend, pi_entry, lone, after_ro, after_none;
static struct head h_ring, h_pend, h_pi, h_bad, h_ro, h_none;
static char *guarded; /* a read-only page, then a PROT_NONE one */
static unsigned other_word;
static long futex_offset = (long)__builtin_offsetof(struct entry, word);
static void *register_list(void *arg) {
    struct head *h = arg;
    unsigned tid = (unsigned)syscall(SYS_gettid);
    if (h == &h_ring) {
        ring[0].next = &ring[1]; ring[1].next = &ring[0]; /* circular */
        ring[0].word = tid; ring[1].word = 12345;
        h->next = &ring[0];
    } else if (h == &h_pend) {
        h->next = (struct entry *)h; /* empty list */
        pend.word = tid | FUTEX_WAITERS;
        h->pending = &pend;
    } else if (h == &h_pi) {
        pi_entry.next = (struct entry *)h;
        pi_entry.word = tid;
        h->next = (struct entry *)((unsigned long)&pi_entry | 1);
    } else if (h == &h_bad) {
        h->next = (struct entry *)0x100000000000UL; /* unmapped */
        lone.word = tid;
        h->pending = &lone; /* not reached: the walk stops at the bad pointer */
    } else {
        /* An owned word the kernel may not write, or an entry it may not
           read: either ends the walk (the pending entry is not reached). */
        int ro = h == &h_ro;
        struct entry *e = (struct entry *)(guarded + (ro ? 0 : 4096));
        e->next = (struct entry *)h;
        e->word = tid;
        mprotect(e, 4096, ro ? PROT_READ : PROT_NONE);
        struct entry *after = ro ? &after_ro : &after_none;
        after->word = tid;
        h->next = e;
        h->pending = after;
    }
    h->offset = futex_offset;
    syscall(SYS_set_robust_list, h, sizeof *h);
    return NULL;
}

/* 9: a pending operation on a released word only wakes a waiter. */
static unsigned queue_word;
static struct entry released;
static struct head h_released;
static void *release_pending(void *arg) {
    (void)arg;
    /* Move the main thread's wait onto the released word once it waits. */
    while (syscall(SYS_futex, &queue_word, FUTEX_REQUEUE, 0, 1, &released.word, 0) != 1) sched_yield();
    h_released.next = (struct entry *)&h_released;
    h_released.offset = futex_offset;
    h_released.pending = &released;
    syscall(SYS_set_robust_list, &h_released, sizeof h_released);
    return NULL;
}

int main(void) {
    pthread_t t;
    int r;

    robust_init(&m1, 0);
    pthread_create(&t, NULL, hold_and_exit, &m1);
    pthread_join(t, NULL);
    r = lock5(&m1);
    say("owner died after join gives EOWNERDEAD", r == EOWNERDEAD);
    say("consistent", pthread_mutex_consistent(&m1) == 0);
    pthread_mutex_unlock(&m1);
    say("relocked cleanly", lock5(&m1) == 0);
    pthread_mutex_unlock(&m1);

    robust_init(&m7, 0);
    pthread_create(&t, NULL, lock_unlock, &m7);
    pthread_join(t, NULL);
    say("an unlocked mutex stays clean", lock5(&m7) == 0);

    robust_init(&m2, 0);
    pipe(ready);
    pthread_create(&t, NULL, hold_until_waited, NULL);
    char c;
    read(ready[0], &c, 1);
    r = lock5(&m2);
    say("a waiter is woken with EOWNERDEAD", r == EOWNERDEAD);
    pthread_mutex_unlock(&m2);
    say("not made consistent: ENOTRECOVERABLE", lock5(&m2) == ENOTRECOVERABLE);
    pthread_join(t, NULL);

    shm = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    for (int i = 0; i < 4; i++) robust_init(&shm[i], 1);
    pipe(go);
    int st;
    pid_t pid = fork();
    if (pid == 0) { pthread_mutex_lock(&shm[0]); _exit(0); }
    waitpid(pid, &st, 0);
    say("a process exiting marks its shared mutex", lock5(&shm[0]) == EOWNERDEAD);

    pid = fork();
    if (pid == 0) { pthread_mutex_lock(&shm[1]); write(ready[1], &c, 1); read(go[0], &c, 1); _exit(0); }
    read(ready[0], &c, 1);
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    say("a process killed while blocked marks it", WIFSIGNALED(st) && lock5(&shm[1]) == EOWNERDEAD);

    pid = fork();
    if (pid == 0) {
        pthread_t ct;
        pthread_create(&ct, NULL, child_thread_holds, NULL);
        read(ready[0], &c, 1);
        _exit(0);
    }
    waitpid(pid, &st, 0);
    say("exit_group marks a sibling thread's mutex", lock5(&shm[2]) == EOWNERDEAD);

    pid = fork();
    if (pid == 0) {
        pthread_mutex_lock(&shm[3]);
        execl("/bin/true", "true", (char *)NULL);
        _exit(9);
    }
    waitpid(pid, &st, 0);
    say("execve marks the old image's mutex", WIFEXITED(st) && WEXITSTATUS(st) == 0 && lock5(&shm[3]) == EOWNERDEAD);

    guarded = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    struct head *heads[6] = {&h_ring, &h_pend, &h_pi, &h_bad, &h_ro, &h_none};
    for (int i = 0; i < 6; i++) { pthread_create(&t, NULL, register_list, heads[i]); pthread_join(t, NULL); }
    say("circular list: owned word marked", ring[0].word == FUTEX_OWNER_DIED);
    say("circular list: other word untouched", ring[1].word == 12345);
    say("pending op marked, waiters bit kept", pend.word == (FUTEX_OWNER_DIED | FUTEX_WAITERS));
    say("pi entry marked", pi_entry.word == FUTEX_OWNER_DIED);
    say("bad pointer ends the walk", lone.word != 0 && !(lone.word & FUTEX_OWNER_DIED));
    say("a read-only word ends the walk", !(after_ro.word & FUTEX_OWNER_DIED) && !(((struct entry *)guarded)->word & FUTEX_OWNER_DIED));
    say("a PROT_NONE entry ends the walk", after_none.word != 0 && !(after_none.word & FUTEX_OWNER_DIED));
    (void)other_word;

    pthread_create(&t, NULL, release_pending, NULL);
    struct timespec five = {5, 0};
    r = syscall(SYS_futex, &queue_word, FUTEX_WAIT, 0, &five, NULL, 0);
    say("pending op on a released word wakes a waiter", r == 0);
    say("and leaves the word alone", released.word == 0);
    pthread_join(t, NULL);
    return 0;
}
"#;

#[test]
fn robust_mutexes_of_dead_owners_are_marked_owner_died() {
    let bundle = c_program_fixture("robust", ROBUST_C, &["-static", "-pthread"]);
    let out = both("robust mutexes", &bundle, None);
    let expected: String = [
        "owner died after join gives EOWNERDEAD",
        "consistent",
        "relocked cleanly",
        "an unlocked mutex stays clean",
        "a waiter is woken with EOWNERDEAD",
        "not made consistent: ENOTRECOVERABLE",
        "a process exiting marks its shared mutex",
        "a process killed while blocked marks it",
        "exit_group marks a sibling thread's mutex",
        "execve marks the old image's mutex",
        "circular list: owned word marked",
        "circular list: other word untouched",
        "pending op marked, waiters bit kept",
        "pi entry marked",
        "bad pointer ends the walk",
        "a read-only word ends the walk",
        "a PROT_NONE entry ends the walk",
        "pending op on a released word wakes a waiter",
        "and leaves the word alone",
    ]
    .iter()
    .map(|c| format!("{c}: yes\n"))
    .collect();
    assert_eq!(
        (out.status.code(), stdout(&out)),
        (Some(0), expected),
        "{}",
        show(&out)
    );
}

/// CPU time is accounted per thread: computing advances the process and
/// thread CPU clocks by about the time spent (user time, little system
/// time) and sleeping does not; getrusage (self, thread, children), times
/// and wait4 agree; another thread's time counts for the process and that
/// thread's clock only; a child's clock (clock_getcpuclockid) reads its
/// time while it is a zombie and is gone once reaped; ITIMER_VIRTUAL and
/// ITIMER_PROF fire on CPU time, not while sleeping. Only yes/no lines, so
/// the output is the same in both modes. A busy host taking the CPU away
/// fails nothing: the computing check's lower bound is the work's own CPU
/// cost (see `burn`), and the other burns run to a CPU-time target.
const CPU_TIME_C: &str = r#"#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/times.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MS 1000000LL
static void say(const char *what, int ok) { printf("%s: %s\n", what, ok ? "yes" : "no"); fflush(stdout); }
static long long ns(clockid_t c) {
    struct timespec t;
    if (clock_gettime(c, &t)) return -1;
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}
static long long tv(struct timeval t) { return t.tv_sec * 1000000000LL + t.tv_usec * 1000LL; }
static volatile unsigned long sink;
static void work(void) { for (int i = 0; i < 20000; i++) sink += i; }
/* Computes for `ms` of wall-clock time in chunks. Returns a lower bound of
   the CPU time that took: the number of chunks times the fastest one's
   duration (a busy host stretches chunks, never shrinks their work). A
   chunk is long enough (~1 ms) that reading the clock between chunks, a
   system call in a microVM (50 us and more where the host emulates the
   guest's kernel entry), stays a small part of the time however slow a
   loaded host makes system calls. */
static long long burn(long long ms) {
    long long start = ns(CLOCK_MONOTONIC), now = start, fastest = -1, chunks = 0;
    while (now - start < ms * MS) {
        long long before = now;
        for (int i = 0; i < 100; i++) work();
        now = ns(CLOCK_MONOTONIC);
        if (fastest < 0 || now - before < fastest) fastest = now - before;
        chunks++;
    }
    return chunks * fastest;
}
/* Computes until `clock` advanced `ms` (2 s at most). */
static void burn_cpu(clockid_t clock, long long ms) {
    long long end = ns(clock) + ms * MS, give_up = ns(CLOCK_MONOTONIC) + 2000 * MS;
    while (ns(clock) < end && ns(CLOCK_MONOTONIC) < give_up) work();
}
static int pipe_a[2], pipe_b[2];
static void *burner(void *arg) {
    (void)arg;
    char c = 1;
    burn_cpu(CLOCK_THREAD_CPUTIME_ID, 40);
    write(pipe_a[1], &c, 1);
    read(pipe_b[0], &c, 1);
    return NULL;
}
static volatile sig_atomic_t prof, vtalrm;
static void on_sig(int s) { if (s == SIGPROF) prof++; else vtalrm++; }

int main(void) {
    struct timespec res;
    say("process clock resolution is 1 ns", clock_getres(CLOCK_PROCESS_CPUTIME_ID, &res) == 0 && res.tv_sec == 0 && res.tv_nsec == 1);
    say("thread clock resolution is 1 ns", clock_getres(CLOCK_THREAD_CPUTIME_ID, &res) == 0 && res.tv_sec == 0 && res.tv_nsec == 1);

    /* Computing for 50 ms advances both CPU clocks by at least the work's
       CPU time and at most the time that passed. */
    long long p0 = ns(CLOCK_PROCESS_CPUTIME_ID), t0 = ns(CLOCK_THREAD_CPUTIME_ID), m0 = ns(CLOCK_MONOTONIC);
    long long least = burn(50);
    long long m1 = ns(CLOCK_MONOTONIC), p1 = ns(CLOCK_PROCESS_CPUTIME_ID), t1 = ns(CLOCK_THREAD_CPUTIME_ID);
    long long wall = m1 - m0;
    say("computing counts on the process clock", p1 - p0 >= least * 8 / 10 && p1 - p0 <= wall + 2 * MS);
    say("and on the thread clock", t1 - t0 >= least * 8 / 10 && t1 - t0 <= wall + 2 * MS);

    /* Sleeping 100 ms does not. */
    struct timespec nap = {0, 100 * MS};
    nanosleep(&nap, NULL);
    long long p2 = ns(CLOCK_PROCESS_CPUTIME_ID), t2 = ns(CLOCK_THREAD_CPUTIME_ID);
    say("sleeping does not count", p2 - p1 < 5 * MS && t2 - t1 < 5 * MS);

    /* getrusage and times agree; the burn was user time. */
    struct rusage self, thread;
    struct tms tm;
    getrusage(RUSAGE_SELF, &self);
    times(&tm);
    getrusage(RUSAGE_THREAD, &thread);
    long long self_ns = tv(self.ru_utime) + tv(self.ru_stime);
    long long p3 = ns(CLOCK_PROCESS_CPUTIME_ID);
    say("RUSAGE_SELF matches the process clock", self_ns >= p2 - 1000 && self_ns <= p3 + 1000);
    say("the burn was user time", tv(self.ru_utime) >= least * 8 / 10 && tv(self.ru_stime) < tv(self.ru_utime) / 2);
    say("RUSAGE_THREAD counts the burn", tv(thread.ru_utime) + tv(thread.ru_stime) >= least * 8 / 10);
    long long tms_ns = (long long)(tm.tms_utime + tm.tms_stime) * 10 * MS;
    say("times agrees with getrusage", tms_ns <= self_ns + MS && tms_ns > self_ns - 20 * MS && tm.tms_cutime + tm.tms_cstime == 0);

    /* Another thread's burn counts for the process and that thread, not for this one. */
    pipe(pipe_a);
    pipe(pipe_b);
    pthread_t t;
    long long mine0 = ns(CLOCK_THREAD_CPUTIME_ID), proc0 = ns(CLOCK_PROCESS_CPUTIME_ID);
    pthread_create(&t, NULL, burner, NULL);
    char c;
    read(pipe_a[0], &c, 1);
    long long mine1 = ns(CLOCK_THREAD_CPUTIME_ID), proc1 = ns(CLOCK_PROCESS_CPUTIME_ID);
    clockid_t tc;
    pthread_getcpuclockid(t, &tc);
    long long other = ns(tc);
    say("another thread's burn counts for the process", proc1 - proc0 >= 40 * MS);
    say("but not for this thread", mine1 - mine0 < 10 * MS);
    say("and on that thread's clock", other >= 40 * MS && other <= proc1 - proc0 + MS);
    write(pipe_b[1], &c, 1);
    pthread_join(t, NULL);
    long long proc2 = ns(CLOCK_PROCESS_CPUTIME_ID);
    say("an ended thread's time stays with the process", proc2 >= proc1);

    /* A child's time: its clock while a zombie, wait4's rusage, RUSAGE_CHILDREN. */
    struct rusage before_children;
    getrusage(RUSAGE_CHILDREN, &before_children);
    pid_t pid = fork();
    if (pid == 0) { burn_cpu(CLOCK_PROCESS_CPUTIME_ID, 40); _exit(0); }
    long long self_before = ns(CLOCK_PROCESS_CPUTIME_ID);
    siginfo_t si;
    waitid(P_PID, pid, &si, WEXITED | WNOWAIT);
    clockid_t cc;
    say("clock_getcpuclockid of a child", clock_getcpuclockid(pid, &cc) == 0);
    long long child = ns(cc);
    say("a zombie child's clock counts its burn", child >= 40 * MS);
    struct timespec x;
    say("a thread clock of another process is EINVAL", clock_gettime((~pid << 3) | 6, &x) == -1);
    struct rusage ru;
    int st;
    wait4(pid, &st, 0, &ru);
    say("wait4 reports the child's time", tv(ru.ru_utime) + tv(ru.ru_stime) >= 39 * MS);
    long long self_after = ns(CLOCK_PROCESS_CPUTIME_ID);
    say("the parent's own time did not grow", self_after - self_before < 10 * MS);
    struct rusage children;
    getrusage(RUSAGE_CHILDREN, &children);
    say("RUSAGE_CHILDREN counts the reaped child", tv(children.ru_utime) + tv(children.ru_stime) - tv(before_children.ru_utime) - tv(before_children.ru_stime) >= 39 * MS);
    times(&tm);
    say("times counts the child", tm.tms_cutime + tm.tms_cstime >= 3);
    say("a reaped child's clock is gone", ns(cc) == -1);

    /* Interval timers on CPU time: not while sleeping, then while computing
       (Linux adds a tick to the value: armed means up to 30 ms left). */
    signal(SIGVTALRM, on_sig);
    signal(SIGPROF, on_sig);
    struct itimerval it = {{0, 0}, {0, 20000}}, left;
    setitimer(ITIMER_VIRTUAL, &it, NULL);
    getitimer(ITIMER_VIRTUAL, &left);
    say("ITIMER_VIRTUAL is armed", left.it_value.tv_sec == 0 && left.it_value.tv_usec > 0 && left.it_value.tv_usec <= 30000);
    nanosleep(&nap, NULL);
    say("ITIMER_VIRTUAL does not fire while sleeping", vtalrm == 0);
    long long v0 = ns(CLOCK_PROCESS_CPUTIME_ID), deadline = ns(CLOCK_MONOTONIC) + 2000 * MS;
    while (!vtalrm && ns(CLOCK_MONOTONIC) < deadline) work();
    long long v1 = ns(CLOCK_PROCESS_CPUTIME_ID);
    /* Linux charges user time by whole ticks to whoever runs at the tick,
       so on a busy host the timer may fire after less CPU than its value
       says: only that it fired, and after some computing. */
    say("ITIMER_VIRTUAL fires while computing", vtalrm == 1 && v1 > v0);
    getitimer(ITIMER_VIRTUAL, &left);
    say("and a one-shot timer is disarmed", left.it_value.tv_sec == 0 && left.it_value.tv_usec == 0);
    struct itimerval periodic = {{0, 10000}, {0, 10000}};
    setitimer(ITIMER_PROF, &periodic, NULL);
    deadline = ns(CLOCK_MONOTONIC) + 2000 * MS;
    while (prof < 3 && ns(CLOCK_MONOTONIC) < deadline) work();
    say("ITIMER_PROF repeats", prof >= 3);
    getitimer(ITIMER_PROF, &left);
    say("with its interval", left.it_interval.tv_sec == 0 && left.it_interval.tv_usec == 10000);
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_PROF, &off, NULL);

    /* Clocks that name nobody. */
    clockid_t bad = (~99999 << 3) | 2;
    say("a CPU clock of no process is EINVAL", clock_gettime(bad, &x) == -1);
    return 0;
}
"#;

#[test]
fn cpu_time_counts_computing_not_sleeping() {
    let bundle = c_program_fixture("cputime", CPU_TIME_C, &["-static", "-pthread"]);
    let out = both("cpu time", &bundle, None);
    let expected: String = [
        "process clock resolution is 1 ns",
        "thread clock resolution is 1 ns",
        "computing counts on the process clock",
        "and on the thread clock",
        "sleeping does not count",
        "RUSAGE_SELF matches the process clock",
        "the burn was user time",
        "RUSAGE_THREAD counts the burn",
        "times agrees with getrusage",
        "another thread's burn counts for the process",
        "but not for this thread",
        "and on that thread's clock",
        "an ended thread's time stays with the process",
        "clock_getcpuclockid of a child",
        "a zombie child's clock counts its burn",
        "a thread clock of another process is EINVAL",
        "wait4 reports the child's time",
        "the parent's own time did not grow",
        "RUSAGE_CHILDREN counts the reaped child",
        "times counts the child",
        "a reaped child's clock is gone",
        "ITIMER_VIRTUAL is armed",
        "ITIMER_VIRTUAL does not fire while sleeping",
        "ITIMER_VIRTUAL fires while computing",
        "and a one-shot timer is disarmed",
        "ITIMER_PROF repeats",
        "with its interval",
        "a CPU clock of no process is EINVAL",
    ]
    .iter()
    .map(|c| format!("{c}: yes\n"))
    .collect();
    assert_eq!(
        (out.status.code(), stdout(&out)),
        (Some(0), expected),
        "{}",
        show(&out)
    );
}

const LINUX_CHECKS_C: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void say(const char *what, int ok) { printf("%s: %s\n", what, ok ? "yes" : "no"); fflush(stdout); }

int main(int argc, char **argv) {
    if (argc > 1) { printf("exec'd through a descriptor as %s\n", argv[1]); return 7; }
    mkdir("/work", 0755);
    int p[2];
    pipe(p);
    say("a pipe holds 64 KiB", fcntl(p[1], F_GETPIPE_SZ) == 65536);
    say("F_SETPIPE_SZ rounds up to a power of two of pages", fcntl(p[1], F_SETPIPE_SZ, 5000) == 8192);
    say("and F_GETPIPE_SZ reads it back", fcntl(p[0], F_GETPIPE_SZ) == 8192);
    char buf[9000] = {0};
    fcntl(p[1], F_SETFL, O_NONBLOCK);
    say("a full pipe takes what fits", write(p[1], buf, sizeof buf) == 8192);
    say("a pipe cannot shrink below what it holds", fcntl(p[1], F_SETPIPE_SZ, 4096) == -1 && errno == EBUSY);
    say("more than 1 MiB needs CAP_SYS_RESOURCE", fcntl(p[1], F_SETPIPE_SZ, 2 << 20) == -1 && errno == EPERM);
    int file = open("/work/f", O_CREAT | O_WRONLY, 0644);
    say("a file has no pipe size", fcntl(file, F_GETPIPE_SZ) == -1 && errno == EBADF);
    say("fadvise of a file", posix_fadvise(file, 0, 0, POSIX_FADV_WILLNEED) == 0);
    say("fadvise of a pipe", posix_fadvise(p[0], 0, 0, POSIX_FADV_WILLNEED) == ESPIPE);
    say("fadvise of an unknown advice", posix_fadvise(file, 0, 0, 99) == EINVAL);
    say("O_CREAT of a path ending in /", open("/work/new/", O_CREAT | O_WRONLY, 0644) == -1 && errno == EISDIR);
    say("and of a file with a /", open("/work/f/", O_CREAT | O_WRONLY, 0644) == -1 && errno == EISDIR);
    say("and of a path whose directory is missing", open("/work/no/x/", O_CREAT | O_WRONLY, 0644) == -1 && errno == ENOENT);
    say("nothing was made", access("/work/new", F_OK) == -1);
    say("chown to -1 -1 of no file", chown("/work/none", -1, -1) == -1 && errno == ENOENT);
    symlink("/work/none", "/work/dangling");
    say("lchown of a dangling symlink", lchown("/work/dangling", 0, 0) == 0);
    say("chown through it", chown("/work/dangling", 0, 0) == -1 && errno == ENOENT);
    cpu_set_t set;
    say("sched_getaffinity of no task", sched_getaffinity(-1, sizeof set, &set) == -1 && errno == ESRCH);
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    say("clock_settime of the realtime clock", clock_settime(CLOCK_REALTIME, &now) == -1 && errno == EPERM);
    say("clock_settime of the monotonic clock", clock_settime(CLOCK_MONOTONIC, &now) == -1 && errno == EINVAL);
    int link = open("/work/dangling", O_PATH | O_NOFOLLOW);
    struct stat st;
    say("O_PATH|O_NOFOLLOW opens a symlink itself", link >= 0 && fstat(link, &st) == 0 && S_ISLNK(st.st_mode));
    say("and reads nothing through it", read(link, buf, 1) == -1 && errno == EBADF);
    say("fchmodat without following a symlink is unsupported", fchmodat(AT_FDCWD, "/work/dangling", 0600, AT_SYMLINK_NOFOLLOW) == -1 && errno == EOPNOTSUPP);
    say("but of a file it works", fchmodat(AT_FDCWD, "/work/f", 0600, AT_SYMLINK_NOFOLLOW) == 0 && stat("/work/f", &st) == 0 && (st.st_mode & 0777) == 0600);
    struct sched_param sp = {0};
    say("a task runs under SCHED_OTHER", sched_getscheduler(0) == SCHED_OTHER && sched_getparam(0, &sp) == 0 && sp.sched_priority == 0);
    say("SCHED_BATCH may be chosen", sched_setscheduler(0, SCHED_BATCH, &sp) == 0 && sched_getscheduler(0) == SCHED_BATCH && sched_setscheduler(0, SCHED_OTHER, &sp) == 0);
    sp.sched_priority = 1;
    say("real-time scheduling needs CAP_SYS_NICE", sched_setscheduler(0, SCHED_FIFO, &sp) == -1 && errno == EPERM);
    say("RR priorities are 1 to 99", sched_get_priority_min(SCHED_RR) == 1 && sched_get_priority_max(SCHED_RR) == 99);
    say("no policy -23", sched_get_priority_max(-23) == -1 && errno == EINVAL);
    say("sched_getparam of a negative pid", sched_getparam(-1, &sp) == -1 && errno == EINVAL);
    int data = open("/work/data", O_CREAT | O_RDWR, 0644);
    write(data, "hello", 5);
    say("SEEK_DATA inside a file", lseek(data, 2, SEEK_DATA) == 2);
    say("SEEK_HOLE finds its end", lseek(data, 2, SEEK_HOLE) == 5);
    say("both past the end are ENXIO", lseek(data, 5, SEEK_DATA) == -1 && errno == ENXIO && lseek(data, 5, SEEK_HOLE) == -1 && errno == ENXIO);
    char two[2];
    struct iovec v = {two, 2};
    say("preadv2 with RWF_HIPRI", preadv2(data, &v, 1, 1, RWF_HIPRI) == 2 && memcmp(two, "el", 2) == 0);
    say("preadv2 with RWF_NOWAIT of a file", preadv2(data, &v, 1, 0, RWF_NOWAIT) == 2 && memcmp(two, "he", 2) == 0);
    int empty[2];
    pipe(empty);
    say("and of an empty pipe", preadv2(empty[0], &v, 1, -1, RWF_NOWAIT) == -1 && errno == EAGAIN);
    say("which still blocks without it", (fcntl(empty[0], F_GETFL) & O_NONBLOCK) == 0);
    int dir = open("/work", O_PATH | O_DIRECTORY | O_CREAT | O_TRUNC);
    say("an O_PATH directory serves *at calls", dir >= 0 && fstatat(dir, "f", &st, 0) == 0 && S_ISREG(st.st_mode));
    int self = open("/proc/self/exe", O_RDONLY);
    if (self < 0) self = open(argv[0], O_RDONLY);
    pid_t child = fork();
    if (child == 0) {
        chdir("/work");
        char *args[] = {argv[0], "fexecve", NULL};
        char *env[] = {NULL};
        fexecve(self, args, env);
        _exit(100 + errno);
    }
    int status;
    waitpid(child, &status, 0);
    say("fexecve ran the program", WIFEXITED(status) && WEXITSTATUS(status) == 7);
    say("execveat without AT_EMPTY_PATH needs a path", syscall(SYS_execveat, self, "", NULL, NULL, 0) == -1 && errno == ENOENT);
    say("execveat of a pipe", syscall(SYS_execveat, p[0], "", NULL, NULL, AT_EMPTY_PATH) == -1 && errno == EACCES);
    return 0;
}
"#;

#[test]
fn linux_checks_of_pipes_exec_ownership_and_clocks() {
    let mut bundle = c_program_fixture("checks", LINUX_CHECKS_C, &["-static"]);
    bundle.edit(|c| c["root"]["readonly"] = serde_json::json!(false));
    let out = both("linux checks", &bundle, None);
    let expected: String = [
        "a pipe holds 64 KiB",
        "F_SETPIPE_SZ rounds up to a power of two of pages",
        "and F_GETPIPE_SZ reads it back",
        "a full pipe takes what fits",
        "a pipe cannot shrink below what it holds",
        "more than 1 MiB needs CAP_SYS_RESOURCE",
        "a file has no pipe size",
        "fadvise of a file",
        "fadvise of a pipe",
        "fadvise of an unknown advice",
        "O_CREAT of a path ending in /",
        "and of a file with a /",
        "and of a path whose directory is missing",
        "nothing was made",
        "chown to -1 -1 of no file",
        "lchown of a dangling symlink",
        "chown through it",
        "sched_getaffinity of no task",
        "clock_settime of the realtime clock",
        "clock_settime of the monotonic clock",
        "O_PATH|O_NOFOLLOW opens a symlink itself",
        "and reads nothing through it",
        "fchmodat without following a symlink is unsupported",
        "but of a file it works",
        "a task runs under SCHED_OTHER",
        "SCHED_BATCH may be chosen",
        "real-time scheduling needs CAP_SYS_NICE",
        "RR priorities are 1 to 99",
        "no policy -23",
        "sched_getparam of a negative pid",
        "SEEK_DATA inside a file",
        "SEEK_HOLE finds its end",
        "both past the end are ENXIO",
        "preadv2 with RWF_HIPRI",
        "preadv2 with RWF_NOWAIT of a file",
        "and of an empty pipe",
        "which still blocks without it",
        "an O_PATH directory serves *at calls",
    ]
    .iter()
    .map(|c| format!("{c}: yes\n"))
    .chain([
        "exec'd through a descriptor as fexecve\n".to_string(),
        "fexecve ran the program: yes\n".to_string(),
        "execveat without AT_EMPTY_PATH needs a path: yes\n".to_string(),
        "execveat of a pipe: yes\n".to_string(),
    ])
    .collect();
    assert_eq!(
        (out.status.code(), stdout(&out)),
        (Some(0), expected),
        "{}",
        show(&out)
    );
}

#[test]
fn args0_through_a_bin_symlink_into_a_bound_usr_runs_in_both_modes() {
    let mut bundle = TestBundle::busybox(&["sh", "-c", "echo ok"]);
    // /bin -> usr/bin, with /usr the host's: /bin/sh is the host's dash.
    let bin = bundle.rootfs().join("bin");
    std::fs::remove_dir_all(&bin).expect("remove /bin");
    std::os::unix::fs::symlink("usr/bin", &bin).expect("/bin link");
    bundle.bind_host_usr();
    bundle.edit(|c| c["process"]["env"] = json!(["PATH=/bin"]));
    assert_both_modes(&bundle, "/bin/sh through /bin -> usr/bin", 0, "ok\n", "");
}

#[test]
fn args0_through_a_symlink_chain_across_two_bind_mounts_runs_in_both_modes() {
    let mut bundle = TestBundle::busybox(&["tool", "-c", "echo ok"]);
    // As Debian's alternatives: /bin/tool (rootfs) -> /etc/alternatives/tool
    // (a second bind mount) -> /usr/bin/dash (the host's /usr).
    let alternatives = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink("/usr/bin/dash", alternatives.path().join("tool"))
        .expect("alternative");
    std::os::unix::fs::symlink("/etc/alternatives/tool", bundle.rootfs().join("bin/tool"))
        .expect("tool link");
    bundle.bind_host_usr();
    let source = alternatives.path().display().to_string();
    bundle.edit(|c| {
        c["mounts"].as_array_mut().expect("mounts").push(json!({
            "destination": "/etc/alternatives", "type": "bind", "source": source,
            "options": ["rbind", "ro"]
        }));
        c["process"]["env"] = json!(["PATH=/bin"]);
    });
    assert_both_modes(
        &bundle,
        "tool -> alternatives -> /usr/bin/dash",
        0,
        "ok\n",
        "",
    );
}

/// pidfds as Linux has them: `pidfd_open` of a running child is not
/// readable until the child exits, then poll reports it; `waitid(P_PIDFD)`
/// reaps through it; `pidfd_send_signal` kills; bad arguments get Linux's
/// errnos, and a signal to a reaped process is ESRCH.
const PIDFD_C: &str = r#"#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static int pidfd_open(pid_t pid, unsigned flags) { return syscall(SYS_pidfd_open, pid, flags); }
static int send(int fd, int sig) { return syscall(SYS_pidfd_send_signal, fd, sig, NULL, 0); }

int main(void) {
    int gate[2];
    if (pipe(gate)) return 1;
    pid_t child = fork();
    if (child == 0) {
        char c;
        close(gate[1]);
        _exit(read(gate[0], &c, 1) == 0 ? 7 : 1);
    }
    close(gate[0]);
    int fd = pidfd_open(child, 0);
    struct pollfd p = {fd, POLLIN, 0};
    printf("open %d cloexec %d\n", fd >= 0, (fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0);
    printf("running: ready %d\n", poll(&p, 1, 0));
    close(gate[1]);
    int ready = poll(&p, 1, 5000);
    printf("exited: ready %d revents %d\n", ready, p.revents & POLLIN);
    siginfo_t info = {0};
    int waited = waitid(P_PIDFD, fd, &info, WEXITED);
    printf("waitid %d pid ok %d status %d\n", waited, info.si_pid == child, info.si_status);
    errno = 0;
    int sent = send(fd, 0);
    printf("signal after reaping: %d %s\n", sent, errno == ESRCH ? "ESRCH" : "?");
    close(fd);

    pid_t victim = fork();
    if (victim == 0) { for (;;) pause(); }
    int vfd = pidfd_open(victim, 0);
    printf("kill %d\n", send(vfd, SIGKILL));
    int status = 0;
    waitpid(victim, &status, 0);
    printf("killed by %d\n", WIFSIGNALED(status) ? WTERMSIG(status) : -1);

    int r = pidfd_open(-1, 0);
    printf("pid -1: %d %d\n", r, errno == EINVAL);
    r = pidfd_open(getpid(), 1);
    printf("bad flags: %d %d\n", r, errno == EINVAL);
    r = pidfd_open(99999, 0);
    printf("no such pid: %d %d\n", r, errno == ESRCH);
    return 0;
}
"#;

#[test]
fn pidfds_wait_signal_and_poll_as_on_linux() {
    let bundle = c_program_fixture("pidfd", PIDFD_C, &["-static", "-O1"]);
    let out = both("pidfd", &bundle, None);
    assert_eq!(
        (out.status.code(), stdout(&out).as_str()),
        (
            Some(0),
            "open 1 cloexec 1\nrunning: ready 0\nexited: ready 1 revents 1\n\
             waitid 0 pid ok 1 status 7\nsignal after reaping: -1 ESRCH\nkill 0\n\
             killed by 9\npid -1: -1 1\nbad flags: -1 1\nno such pid: -1 1\n"
        ),
        "{}",
        show(&out)
    );
}

/// One write(2) of 1 MiB to stdout from memory whose pages are physically
/// scattered: single pages are mapped, touched and every other one unmapped
/// first, so the buffer's frames come from a fragmented pool in a microVM.
/// Every byte must arrive (a write that needed more descriptors than the
/// console queue has failed with EIO).
const SCATTERED_WRITE_C: &str = r#"
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>
int main(void) {
    size_t size = 1 << 20;
    static char *pages[1024];
    for (int i = 0; i < 1024; i++) {
        pages[i] = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (pages[i] == MAP_FAILED) return 2;
        pages[i][0] = 1;
    }
    for (int i = 0; i < 1024; i += 2) munmap(pages[i], 4096);
    char *a = malloc(size);
    if (!a) return 2;
    for (size_t i = 0; i < size; i++) a[i] = 'a' + i % 26;
    size_t done = 0;
    while (done < size) {
        ssize_t n = write(1, a + done, size - done);
        if (n <= 0) return 1;
        done += n;
    }
    return 0;
}
"#;

#[test]
fn a_large_write_from_scattered_pages_arrives_whole() {
    let bundle = c_program_fixture("scattered", SCATTERED_WRITE_C, &["-static", "-O2"]);
    let out = both("a 1 MiB write from scattered pages", &bundle, None);
    let expected: Vec<u8> = (0..1 << 20).map(|i| b'a' + (i % 26) as u8).collect();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        out.stdout == expected,
        "stdout is {} bytes, not the 1 MiB written",
        out.stdout.len()
    );
}

/// splice between a pipe and files (with and without offsets), and
/// copy_file_range between files, as Linux checks and moves them.
const SPLICE_C: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
static const char *err(long r) { return r < 0 ? strerror(errno) : "ok"; }
int main(void) {
    int src = open("/tmp/src", O_CREAT | O_RDWR | O_TRUNC, 0600);
    int dst = open("/tmp/dst", O_CREAT | O_RDWR | O_TRUNC, 0600);
    write(src, "0123456789abcdef", 16);
    int p[2];
    pipe(p);
    off_t off = 4;
    long n = splice(src, &off, p[1], NULL, 6, 0);
    printf("file to pipe at 4: %ld, offset now %lld\n", n, (long long)off);
    printf("file position unmoved: %lld\n", (long long)lseek(src, 0, SEEK_CUR));
    lseek(src, 10, SEEK_SET);
    n = splice(src, NULL, p[1], NULL, 100, 0);
    printf("file to pipe at its position: %ld, position now %lld\n", n, (long long)lseek(src, 0, SEEK_CUR));
    printf("pipe to file: %zd\n", splice(p[0], NULL, dst, NULL, 5, 0));
    off = 100;
    n = splice(p[0], NULL, dst, &off, 100, 0);
    printf("pipe to file at 100: %ld, offset now %lld\n", n, (long long)off);
    char buf[128] = {0};
    n = pread(dst, buf, 5, 0);
    printf("dst: %ld %.5s ", n, buf);
    n = pread(dst, buf, 7, 100);
    printf("%ld %.7s\n", n, buf);
    printf("empty pipe, non-blocking: %s\n", err(splice(p[0], NULL, dst, NULL, 5, SPLICE_F_NONBLOCK)));
    printf("offset on a pipe: %s\n", err(splice(p[0], &off, dst, NULL, 5, 0)));
    printf("no pipe: %s\n", err(splice(src, NULL, dst, NULL, 5, 0)));
    close(p[1]);
    printf("pipe at end of file: %zd\n", splice(p[0], NULL, dst, NULL, 5, 0));
    off_t in = 2, out = 50;
    n = copy_file_range(src, &in, dst, &out, 8, 0);
    printf("copy_file_range: %ld, offsets %lld %lld\n", n, (long long)in, (long long)out);
    n = pread(dst, buf, 8, 50);
    printf("%ld %.8s\n", n, buf);
    lseek(src, 0, SEEK_SET);
    lseek(dst, 0, SEEK_SET);
    n = copy_file_range(src, NULL, dst, NULL, 3, 0);
    long long at_src = lseek(src, 0, SEEK_CUR), at_dst = lseek(dst, 0, SEEK_CUR);
    printf("by positions: %ld, now %lld %lld\n", n, at_src, at_dst);
    printf("past the end: %zd\n", copy_file_range(src, &(off_t){99}, dst, NULL, 3, 0));
    printf("flags: %s\n", err(copy_file_range(src, NULL, dst, NULL, 3, 1)));
    printf("overlap: %s\n", err(copy_file_range(src, &(off_t){0}, src, &(off_t){2}, 4, 0)));
    int ro = open("/tmp/dst", O_RDONLY);
    printf("read-only output: %s\n", err(copy_file_range(src, NULL, ro, NULL, 3, 0)));
    printf("a pipe: %s\n", err(copy_file_range(p[0], NULL, dst, NULL, 3, 0)));
    return 0;
}
"#;

#[test]
fn splice_and_copy_file_range_as_on_linux() {
    let mut bundle = c_program_fixture("splice", SPLICE_C, &["-static", "-O2"]);
    bundle.edit(|c| {
        c["mounts"]
            .as_array_mut()
            .expect("mounts")
            .push(serde_json::json!({
                "destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                "options": ["nosuid", "nodev", "mode=1777", "size=1m"]
            }));
    });
    let out = both("splice and copy_file_range", &bundle, None);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(
        stdout(&out),
        EXPECTED_SPLICE,
        "both modes agree on a wrong result"
    );
}

const EXPECTED_SPLICE: &str = "file to pipe at 4: 6, offset now 10\n\
file position unmoved: 16\n\
file to pipe at its position: 6, position now 16\n\
pipe to file: 5\n\
pipe to file at 100: 7, offset now 107\n\
dst: 5 45678 7 9abcdef\n\
empty pipe, non-blocking: Resource temporarily unavailable\n\
offset on a pipe: Illegal seek\n\
no pipe: Invalid argument\n\
pipe at end of file: 0\n\
copy_file_range: 8, offsets 10 58\n\
8 23456789\n\
by positions: 3, now 3 3\n\
past the end: 0\n\
flags: Invalid argument\n\
overlap: Invalid argument\n\
read-only output: Bad file descriptor\n\
a pipe: Invalid argument\n\
";

/// Nested epoll instances: an inner one's readiness reaches the outer,
/// and a cycle (the inner watching the outer) is refused with ELOOP, as
/// on Linux, rather than polled forever.
const NESTED_EPOLL_C: &str = r#"
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>
int main(void) {
    int p[2];
    pipe(p);
    int outer = epoll_create1(0), inner = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN};
    ev.data.fd = p[0];
    epoll_ctl(inner, EPOLL_CTL_ADD, p[0], &ev);
    ev.data.fd = inner;
    printf("inner in outer: %d\n", epoll_ctl(outer, EPOLL_CTL_ADD, inner, &ev));
    ev.data.fd = outer;
    int r = epoll_ctl(inner, EPOLL_CTL_ADD, outer, &ev);
    printf("outer in inner: %d %s\n", r, r ? strerror(errno) : "");
    printf("itself: %s\n", epoll_ctl(outer, EPOLL_CTL_ADD, outer, &ev) ? strerror(errno) : "added");
    printf("nothing ready: %d\n", epoll_wait(outer, &ev, 1, 0));
    write(p[1], "x", 1);
    int n = epoll_wait(outer, &ev, 1, 1000);
    printf("ready through the inner one: %d %s\n", n, ev.data.fd == inner ? "inner" : "other");
    return 0;
}
"#;

#[test]
fn nested_epolls_report_through_and_refuse_cycles() {
    let bundle = c_program_fixture("nestedepoll", NESTED_EPOLL_C, &["-static", "-O2"]);
    let out = both("nested epoll", &bundle, None);
    assert_eq!(
        (out.status.code(), stdout(&out).as_str()),
        (
            Some(0),
            "inner in outer: 0\nouter in inner: -1 Too many levels of symbolic links\n\
             itself: Invalid argument\nnothing ready: 0\nready through the inner one: 1 inner\n"
        ),
        "nested epoll: both modes agree on a wrong result"
    );
}

/// A runtime handler can only name a binary and its arguments: capsa
/// invoked as `capsa-microvm`, or given `--isolation microvm` before the
/// command, runs microVMs unless the bundle's annotation or
/// `create --isolation` says otherwise.
#[test]
fn capsa_invoked_as_capsa_microvm_runs_microvms_by_default() {
    let links = tempfile::tempdir().expect("tempdir");
    let program = links.path().join("capsa-microvm");
    std::os::unix::fs::symlink(capsa_bin(), &program).expect("symlink");
    let host_release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let capsa = Capsa::new();
    let run = |bundle: &TestBundle, extra: &[&str]| {
        let id = unique_id("handler");
        let out = std::process::Command::new("timeout")
            .args(["-k", "10", "60"])
            .arg(&program)
            .arg("--root")
            .arg(capsa.root.path())
            .arg("run")
            .args(extra)
            .arg("--bundle")
            .arg(bundle.path())
            .arg(&id)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run capsa-microvm");
        capsa.assert_nothing_left(&id);
        out
    };
    let mut bundle = TestBundle::busybox(&["uname", "-r"]);
    let out = run(&bundle, &[]);
    assert_eq!(stdout(&out), "6.1.0-capsa\n", "{}", show(&out));
    let out = run(&bundle, &["--isolation", "container"]);
    assert_eq!(stdout(&out), host_release, "{}", show(&out));
    // `capsa --isolation microvm run`: a handler's arguments before the
    // command (dockerd's runtimeArgs) set the same default.
    let id = unique_id("handler-args");
    let out = std::process::Command::new("timeout")
        .args(["-k", "10", "60"])
        .arg(capsa_bin())
        .args(["--isolation", "microvm", "--root"])
        .arg(capsa.root.path())
        .arg("run")
        .arg("--bundle")
        .arg(bundle.path())
        .arg(&id)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run capsa --isolation microvm");
    capsa.assert_nothing_left(&id);
    assert_eq!(stdout(&out), "6.1.0-capsa\n", "{}", show(&out));
    bundle.edit(|c| c["annotations"] = serde_json::json!({"dev.capsa.isolation": "container"}));
    let out = run(&bundle, &[]);
    assert_eq!(stdout(&out), host_release, "{}", show(&out));
}

/// A container of a pod joins its sandbox's UTS namespace by path, with no
/// hostname of its own in the spec: it sees the pod's hostname and domain
/// name in both modes.
#[test]
fn a_joined_uts_namespace_gives_its_hostname_in_both_modes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("uts");
    std::fs::write(&file, "").expect("namespace file");
    // A persistent UTS namespace, named as a pod's would be.
    let out = Command::new("unshare")
        .arg(format!("--uts={}", file.display()))
        .args(["sh", "-c", "hostname pod-a7 && domainname pods.example"])
        .output()
        .expect("unshare");
    assert!(out.status.success(), "unshare: {}", show(&out));
    let mut bundle =
        TestBundle::busybox(&["sh", "-c", "hostname; cat /proc/sys/kernel/domainname"]);
    bundle.edit(|c| {
        c.as_object_mut().expect("config").remove("hostname");
        let namespaces = c["linux"]["namespaces"].as_array_mut().expect("namespaces");
        namespaces.retain(|ns| ns["type"] != "uts");
        namespaces.push(json!({"type": "uts", "path": file}));
    });
    let verdict = both_modes_verdict(
        &bundle,
        "joined UTS namespace",
        (0, "pod-a7\npods.example\n", ""),
        60,
    );
    let _ = nix_umount(&file);
    if let Err(problem) = verdict {
        panic!("{problem}");
    }
}

/// Detaches the namespace bind mount at `path`.
fn nix_umount(path: &Path) -> std::io::Result<()> {
    let status = Command::new("umount").arg(path).status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other("umount failed"))
    }
}

/// What a process can read of its spec from inside (what conformance tools
/// check): its cwd and root, oom_score_adj, resource limits, umask, ids,
/// groups, capability sets and no_new_privs (a user keeps exactly its
/// ambient capabilities), hostname. The same in both modes.
#[test]
fn the_spec_reads_the_same_from_inside_in_both_modes() {
    let mut bundle = TestBundle::busybox(&[
        "sh",
        "-c",
        "readlink /proc/self/cwd; readlink /proc/self/root; cat /proc/self/oom_score_adj; \
         grep -E '^(Limit|Max open files|Max processes|Max core file size)' /proc/self/limits; \
         grep -E '^(Umask|Uid|Gid|Groups|Cap|NoNewPrivs)' /proc/self/status; hostname",
    ]);
    bundle.edit(|c| {
        c["process"]["cwd"] = json!("/tmp");
        c["process"]["oomScoreAdj"] = json!(234);
        c["process"]["user"] =
            json!({"uid": 1000, "gid": 1000, "additionalGids": [27], "umask": 23});
        c["process"]["rlimits"] = json!([
            {"type": "RLIMIT_NOFILE", "soft": 512, "hard": 2048},
            {"type": "RLIMIT_NPROC", "soft": 300, "hard": 400},
            {"type": "RLIMIT_CORE", "soft": 0, "hard": 18446744073709551615u64},
        ]);
        c["hostname"] = json!("inside");
    });
    let expected = "/tmp\n/\n234\n\
        Limit                     Soft Limit           Hard Limit           Units     \n\
        Max core file size        0                    unlimited            bytes     \n\
        Max processes             300                  400                  processes \n\
        Max open files            512                  2048                 files     \n\
        Umask:\t0027\nUid:\t1000\t1000\t1000\t1000\nGid:\t1000\t1000\t1000\t1000\n\
        Groups:\t27 \n\
        CapInh:\t0000000020000420\nCapPrm:\t0000000020000420\nCapEff:\t0000000020000420\n\
        CapBnd:\t0000000020000420\nCapAmb:\t0000000020000420\nNoNewPrivs:\t1\ninside\n";
    if let Err(problem) = both_modes_verdict(&bundle, "the spec from inside", (0, expected, ""), 60)
    {
        panic!("{problem}");
    }
}

/// Extended attributes: `user.*` on files and directories (create and
/// replace flags, removal, listing, by path, without following and by
/// descriptor), `trusted.*` and `security.*` refused without
/// CAP_SYS_ADMIN, and no `user.*` on a symlink; on a tmpfs, in both modes.
const XATTR_PY: &str = r#"
import errno, os
fn = '/tmp/x'
open(fn, 'w').close()
print(os.listxattr(fn))
os.setxattr(fn, 'user.test', b'hello')
print(os.getxattr(fn, 'user.test'), os.listxattr(fn))
for flag, name in [(os.XATTR_CREATE, 'user.test'), (os.XATTR_REPLACE, 'user.none')]:
    try:
        os.setxattr(fn, name, b'x', flag)
    except OSError as e:
        print(name, errno.errorcode[e.errno])
os.setxattr(fn, 'user.big', b'a' * 1024)
print(len(os.getxattr(fn, 'user.big')), sorted(os.listxattr(fn)))
os.removexattr(fn, 'user.test')
try:
    os.getxattr(fn, 'user.test')
except OSError as e:
    print('removed', errno.errorcode[e.errno])
for name in ['trusted.x', 'security.x']:
    try:
        os.setxattr(fn, name, b'1')
    except OSError as e:
        print(name, errno.errorcode[e.errno])
with open(fn) as f:
    os.setxattr(f.fileno(), 'user.fd', b'v')
    print(os.getxattr(f.fileno(), 'user.fd'))
os.mkdir('/tmp/d')
os.setxattr('/tmp/d', 'user.dir', b'd')
print(os.getxattr('/tmp/d', 'user.dir'))
os.symlink(fn, '/tmp/l')
try:
    os.setxattr('/tmp/l', 'user.l', b'1', follow_symlinks=False)
except OSError as e:
    print('symlink', errno.errorcode[e.errno])
print(sorted(os.listxattr('/tmp/l')))
"#;

#[test]
fn extended_attributes_in_both_modes() {
    let mut bundle = TestBundle::busybox(&["/usr/bin/python3", "-c", XATTR_PY]);
    bundle.bind_host_usr();
    bundle.edit(|c| {
        c["mounts"].as_array_mut().expect("mounts").push(json!({
            "destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["mode=1777"]
        }));
    });
    let expected = "[]\nb'hello' ['user.test']\nuser.test EEXIST\nuser.none ENODATA\n\
        1024 ['user.big', 'user.test']\nremoved ENODATA\ntrusted.x EPERM\nsecurity.x EPERM\n\
        b'v'\nb'd'\nsymlink EPERM\n['user.big', 'user.fd']\n";
    if let Err(problem) = both_modes_verdict(&bundle, "extended attributes", (0, expected, ""), 60)
    {
        panic!("{problem}");
    }
}

/// `process.terminal` with a console socket (podman's `run -it`): the
/// process's stdio is a terminal of the given size whose mode it can
/// change, in a microVM as in a container (where the VMM's stdio is the
/// pty and the guest asks the VMM for the process's terminal requests).
#[test]
fn a_terminal_in_the_spec_is_the_process_s_tty_in_both_modes() {
    // A resize of the master reaches the process as SIGWINCH (the
    // microVM's VMM, the terminal's process group, passes it on) and the
    // new size reads back.
    let script = "[ -t 0 ] && [ -t 1 ] && [ -t 2 ] && echo is-a-tty; stty size; \
                  stty -echo; stty | grep -c -- -echo; \
                  trap 'stty size; exit 3' WINCH; echo resize me; \
                  while :; do sleep 1; done";
    let mut bundle = TestBundle::busybox(&["sh", "-c", script]);
    bundle.edit(|c| {
        c["process"]["terminal"] = serde_json::json!(true);
        c["process"]["consoleSize"] = serde_json::json!({"height": 30, "width": 100});
    });
    let capsa = Capsa::new();
    let mut seen = Vec::new();
    for mode in ["container", "microvm"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("console.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket).expect("console socket");
        let id = unique_id(&format!("tty-{mode}"));
        let child = capsa
            .bounded_run_command(&bundle, mode, &id, 120)
            .arg("--console-socket")
            .arg(&socket)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("capsa run");
        let mut master = receive_master(&listener);
        let mut output = Vec::new();
        while !String::from_utf8_lossy(&output).contains("resize me\r\n") {
            let mut buf = [0u8; 256];
            let n = std::io::Read::read(&mut master, &mut buf).expect("read the master");
            assert!(n > 0, "{mode}: the terminal closed before the resize");
            output.extend_from_slice(&buf[..n]);
        }
        let size = libc::winsize {
            ws_row: 40,
            ws_col: 120,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize we own, on the master we hold.
        let resized = unsafe {
            libc::ioctl(
                std::os::fd::AsRawFd::as_raw_fd(&master),
                libc::TIOCSWINSZ,
                &size,
            )
        };
        assert_eq!(
            resized,
            0,
            "TIOCSWINSZ: {}",
            std::io::Error::last_os_error()
        );
        let output = String::from_utf8_lossy(&output).into_owned() + &read_master(master);
        let out = child.wait_with_output().expect("wait");
        capsa.assert_nothing_left(&id);
        seen.push((out.status.code(), output, stderr(&out)));
    }
    assert_eq!(seen[0], seen[1], "container vs microVM");
    assert_eq!(
        seen[0],
        (
            Some(3),
            "is-a-tty\r\n30 100\r\n1\r\nresize me\r\n40 120\r\n".to_string(),
            String::new()
        )
    );
}

const MEMFD_PTY_C: &str = r#"
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* Reads the master into `got` until it holds `want` (or EIO: the slave is gone). */
static char got[1024];
static size_t have;
static void read_until(int master, const char *want) {
    while (!(want && strstr(got, want))) {
        ssize_t n = read(master, got + have, sizeof got - 1 - have);
        if (n <= 0) return;
        have += n;
    }
}

int main(void) {
    alarm(20);
    int fd = memfd_create("box", MFD_CLOEXEC);
    printf("memfd %d cloexec %d\n", fd >= 0, (fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0);
    char path[64], link[64] = {0};
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    readlink(path, link, sizeof link - 1);
    printf("link %s\n", link);
    ftruncate(fd, 4096);
    char *m = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    pid_t c = fork();
    if (c == 0) { strcpy(m, "from the child"); _exit(0); }
    waitpid(c, NULL, 0);
    char buf[32] = {0};
    pread(fd, buf, 14, 0);
    struct stat st;
    fstat(fd, &st);
    printf("shared: %s; size %ld regular %d\n", buf, (long)st.st_size, S_ISREG(st.st_mode));

    int master = posix_openpt(O_RDWR | O_NOCTTY);
    grantpt(master);
    unlockpt(master);
    char *name = ptsname(master);
    printf("pts %d\n", strncmp(name, "/dev/pts/", 9) == 0);
    fflush(stdout);
    pid_t k = fork();
    if (k == 0) {
        setsid();
        int s = open(name, O_RDWR); /* a session leader's first terminal: its controlling one */
        char line[64];
        write(s, "ready\n", 6);
        ssize_t n = read(s, line, sizeof line);
        dprintf(s, "got %zd %.*s", n, (int)n, line);
        pause();
        _exit(1);
    }
    read_until(master, "ready\r\n");
    write(master, "hello\r", 6);
    read_until(master, "got 6 hello\r\n");
    write(master, "\x03", 1);
    int status;
    waitpid(k, &status, 0);
    read_until(master, NULL);
    printf("terminal:");
    for (size_t i = 0; i < have; i++)
        printf(got[i] == '\r' ? "\\r" : got[i] == '\n' ? "\\n" : "%c", got[i]);
    printf("\nchild killed by %d\n", WIFSIGNALED(status) ? WTERMSIG(status) : 0);
    return 0;
}
"#;

/// memfd_create (a file whose pages a shared mapping and read share across
/// fork, shown as Linux shows it) and a pseudo-terminal between a process
/// and the session leader whose controlling terminal it is: canonical
/// input with echo and CR to NL, NL to CR-NL on output, ^C as SIGINT to
/// the foreground group, the master reading what is left once the slave
/// is gone.
#[test]
fn memfd_and_a_pty_with_its_line_discipline_in_both_modes() {
    let bundle = c_program_fixture("memfdpty", MEMFD_PTY_C, &["-static", "-O1"]);
    let out = both("memfd and pty", &bundle, None);
    assert_eq!(
        (out.status.code(), stdout(&out).as_str()),
        (
            Some(0),
            "memfd 1 cloexec 1\nlink /memfd:box (deleted)\n\
             shared: from the child; size 4096 regular 1\npts 1\n\
             terminal:ready\\r\\nhello\\r\\ngot 6 hello\\r\\n^C\nchild killed by 2\n"
        ),
        "{}",
        show(&out)
    );
}

const DNOTIFY_C: &str = r#"
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

static volatile sig_atomic_t sigios;
static void on_sigio(int sig) { (void)sig; sigios++; }

int main(void) {
    signal(SIGIO, on_sigio);
    mkdir("/tmp/watched", 0755);
    int dir = open("/tmp/watched", O_RDONLY | O_DIRECTORY);
    int plain = open("/tmp", O_RDONLY);
    int file = open("/etc/hostname", O_RDONLY);
    printf("not a directory: %d\n", fcntl(file, F_NOTIFY, DN_CREATE) == -1);
    printf("multishot alone: %d\n", fcntl(plain, F_NOTIFY, DN_MULTISHOT));
    printf("watch: %d\n", fcntl(dir, F_NOTIFY, DN_CREATE | DN_DELETE | DN_MODIFY | DN_MULTISHOT));
    int f = open("/tmp/watched/a", O_CREAT | O_WRONLY, 0600);
    printf("after create: %d\n", sigios);
    write(f, "x", 1);
    printf("after write: %d\n", sigios);
    close(f);
    rename("/tmp/watched/a", "/tmp/watched/b");
    printf("after rename (a delete and a create): %d\n", sigios);
    unlink("/tmp/watched/b");
    printf("after unlink: %d\n", sigios);
    mkdir("/tmp/elsewhere", 0755);
    printf("after a change elsewhere: %d\n", sigios);
    /* Events add to a watch; none ends it; then a one-shot watch. */
    close(open("/tmp/watched/keep", O_CREAT | O_WRONLY, 0600));
    fcntl(dir, F_NOTIFY, DN_ATTRIB);
    chmod("/tmp/watched/keep", 0644);
    printf("added attrib: %d\n", sigios);
    fcntl(dir, F_NOTIFY, 0);
    close(open("/tmp/watched/c", O_CREAT | O_WRONLY, 0600));
    printf("ended: %d\n", sigios);
    fcntl(dir, F_NOTIFY, DN_CREATE);
    close(open("/tmp/watched/d", O_CREAT | O_WRONLY, 0600));
    close(open("/tmp/watched/e", O_CREAT | O_WRONLY, 0600));
    printf("one-shot: %d\n", sigios);
    return 0;
}
"#;

/// dnotify (fcntl F_NOTIFY): SIGIO for the events a directory's watch
/// asks for, again with DN_MULTISHOT, once without.
#[test]
fn directory_notification_in_both_modes() {
    let mut bundle = c_program_fixture("dnotify", DNOTIFY_C, &["-static", "-O1"]);
    bundle.edit(|c| {
        c["mounts"].as_array_mut().expect("mounts").push(json!({
            "destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
            "options": ["nosuid", "nodev", "mode=1777"]
        }))
    });
    let out = both("dnotify", &bundle, None);
    assert_eq!(
        (out.status.code(), stdout(&out).as_str()),
        (
            Some(0),
            "not a directory: 1\nmultishot alone: 0\nwatch: 0\nafter create: 1\n\
             after write: 2\nafter rename (a delete and a create): 3\nafter unlink: 4\n\
             after a change elsewhere: 4\nadded attrib: 6\nended: 6\none-shot: 7\n"
        ),
        "{}",
        show(&out)
    );
}
