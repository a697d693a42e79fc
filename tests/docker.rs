//! dockerd (Debian's docker.io) drives capsa as a runtime registered in its
//! daemon.json (`docker run --runtime capsa`), through the containerd it
//! starts and containerd's runc v2 shim, as a Docker host would.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use capsa_tests::*;

/// Debian's client, the one that speaks dockerd 20.10's API (a newer client
/// may come first on PATH).
const DOCKER: &str = "/usr/bin/docker";

/// A private dockerd (own data root, exec root, pidfile, socket and the
/// containerd it starts), with capsa registered as runtimes `capsa` and
/// `capsa-microvm`; stopped and removed on drop.
struct Dockerd {
    dir: tempfile::TempDir,
    /// `timeout` running dockerd, so that a test binary killed outright
    /// still leaves a daemon that ends (timeout's `-k` also bounds the
    /// shutdown a forwarded SIGTERM starts).
    daemon: Child,
}

impl Dockerd {
    fn start() -> Dockerd {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("daemon.json");
        // `capsa-microvm` names its isolation with runtimeArgs (see
        // docker_runs_a_microvm_through_capsa).
        let daemon_json = serde_json::json!({
            // No docker0 bridge and no iptables rules: the host's firewall
            // stays as the other tests (podman's networks) have it, and
            // these tests use `--network none`.
            "iptables": false,
            "bridge": "none",
            "runtimes": {
                "capsa": { "path": capsa_bin() },
                "capsa-microvm": {
                    "path": capsa_bin(),
                    "runtimeArgs": ["--isolation=microvm"],
                },
            },
        });
        std::fs::write(&config, daemon_json.to_string()).expect("daemon.json");
        let log = std::fs::File::create(dir.path().join("dockerd.log")).expect("log");
        let daemon = Command::new("timeout")
            .args(["-k", "60", "1800", "/usr/sbin/dockerd"])
            .arg("--config-file")
            .arg(&config)
            .arg("--data-root")
            .arg(dir.path().join("data"))
            .arg("--exec-root")
            .arg(dir.path().join("exec"))
            .arg("--pidfile")
            .arg(dir.path().join("dockerd.pid"))
            .arg("-H")
            .arg(format!(
                "unix://{}",
                dir.path().join("docker.sock").display()
            ))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("dockerd");
        let mut dockerd = Dockerd { dir, daemon };
        // Ready once the API answers; at most 60 s.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if dockerd.docker(10, &["version"]).status.success() {
                break;
            }
            let exited = dockerd.daemon.try_wait().expect("try_wait");
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "dockerd did not come up ({exited:?}); its log:\n{}",
                dockerd.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        dockerd
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    /// dockerd's `--exec-root`, under which its containerd keeps its state.
    fn exec_root(&self) -> PathBuf {
        self.dir.path().join("exec")
    }

    /// The `--root` the runtimes are given: dockerd 20.10 names the same
    /// one for every runtime of containerd's runc v2 shim, and the shim
    /// adds its namespace (the task's `options.json` says so).
    fn runtime_root(&self) -> PathBuf {
        self.exec_root().join("runtime-runc").join("moby")
    }

    /// The runtime options containerd's shim got for task `id`.
    fn task_options(&self, id: &str) -> serde_json::Value {
        let path = self
            .exec_root()
            .join("containerd/daemon/io.containerd.runtime.v2.task/moby")
            .join(id)
            .join("options.json");
        let text = std::fs::read(&path).expect("the task's options.json");
        serde_json::from_slice(&text).expect("options.json")
    }

    /// The docker client against this daemon, bounded by `limit` seconds.
    fn docker(&self, limit: u32, args: &[&str]) -> Output {
        Command::new("timeout")
            .args(["-k", "5", &limit.to_string(), DOCKER])
            .arg("-H")
            .arg(format!(
                "unix://{}",
                self.dir.path().join("docker.sock").display()
            ))
            .args(args)
            // The client's own configuration stays out of the user's home.
            .env("DOCKER_CONFIG", self.dir.path().join("client"))
            .stdin(Stdio::null())
            .output()
            .expect("docker")
    }

    /// Imports a busybox rootfs as an image and returns its name.
    fn import_busybox(&self) -> String {
        let bundle = TestBundle::busybox(&["true"]);
        let tar = bundle.rootfs_tar();
        let name = format!("localhost/{}", unique_id("capsa-test-busybox"));
        let out = self.docker(120, &["import", &tar.display().to_string(), &name]);
        assert!(out.status.success(), "docker import: {}", show(&out));
        name
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // dockerd leaves running containers behind when it is stopped, so
        // they go first.
        let out = self.docker(30, &["ps", "-aq", "--no-trunc"]);
        for id in stdout(&out).lines() {
            let _ = self.docker(60, &["rm", "-f", id]);
        }
        // SIGTERM, which timeout forwards: dockerd stops its containerd and
        // unmounts its data root. At most 60 s, then SIGKILL.
        let _ = Command::new("timeout")
            .args(["-k", "5", "10", "kill", "-TERM"])
            .arg(self.daemon.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while matches!(self.daemon.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        // What a failed test can still leave: containers capsa keeps, the
        // shims and containerd of this daemon, mounts under its directories.
        let root = self.runtime_root();
        for entry in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            let _ = Command::new("timeout")
                .args(["-k", "5", "30"])
                .arg(capsa_bin())
                .arg("--root")
                .arg(&root)
                .args(["delete", "--force"])
                .arg(entry.file_name())
                .status();
        }
        let dir = self.dir.path().display().to_string();
        for pid in processes_naming(&dir) {
            let _ = Command::new("timeout")
                .args(["-k", "5", "10", "kill", "-KILL", &pid])
                .status();
        }
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut under: Vec<&str> = mounts
            .lines()
            .filter_map(|line| line.split(' ').nth(1))
            .filter(|target| target.starts_with(&dir))
            .collect();
        under.sort_by_key(|target| std::cmp::Reverse(target.len()));
        for target in under {
            let _ = Command::new("timeout")
                .args(["-k", "5", "30", "umount", "-l", target])
                .status();
        }
    }
}

/// The pids of processes whose command line names `text`.
fn processes_naming(text: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_string_lossy().into_owned();
            pid.parse::<u32>().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            String::from_utf8_lossy(&cmdline)
                .contains(text)
                .then_some(pid)
        })
        .collect()
}

/// `docker run --rm --runtime capsa --network none` of `script` in a fresh
/// container of `image`.
fn docker_run(dockerd: &Dockerd, image: &str, script: &str) -> Output {
    dockerd.docker(
        180,
        &[
            "run",
            "--rm",
            "--runtime",
            "capsa",
            "--network",
            "none",
            image,
            "sh",
            "-c",
            script,
        ],
    )
}

/// docker's cgroups for container `id` (cgroupfs driver, parent `/docker`).
fn docker_cgroup_dirs(id: &str) -> Vec<PathBuf> {
    let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") else {
        return Vec::new();
    };
    controllers
        .flatten()
        .map(|controller| controller.path().join("docker").join(id))
        .filter(|dir| Path::exists(dir))
        .collect()
}

#[test]
fn docker_runs_a_container_through_capsa() {
    let dockerd = Dockerd::start();
    let image = dockerd.import_busybox();
    let out = docker_run(&dockerd, &image, "echo hi; exit 3");
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    assert_eq!(stdout(&out), "hi\n");
    // A container shares the host's kernel.
    let out = docker_run(&dockerd, &image, "uname -r");
    assert!(out.status.success(), "{}", show(&out));
    assert_ne!(stdout(&out), "6.1.0-capsa\n");
}

#[test]
fn docker_execs_in_and_removes_detached_containers_and_microvms() {
    let dockerd = Dockerd::start();
    let image = dockerd.import_busybox();
    for (runtime, isolation) in [("capsa", "container"), ("capsa-microvm", "microvm")] {
        let out = dockerd.docker(
            180,
            &[
                "run",
                "-d",
                "--runtime",
                runtime,
                "--network",
                "none",
                &image,
                "sleep",
                "1000",
            ],
        );
        assert!(
            out.status.success(),
            "{runtime}: docker run -d: {}",
            show(&out)
        );
        let id = stdout(&out).trim().to_string();
        // containerd's shim runs capsa (through the script dockerd writes
        // for a runtime with arguments), which keeps the container's state
        // under the root dockerd names.
        let options = dockerd.task_options(&id);
        let binary = options["binary_name"].as_str().expect("binary_name");
        if runtime == "capsa" {
            assert_eq!(binary, capsa_bin().display().to_string());
        } else {
            assert!(binary.ends_with("/runtimes/capsa-microvm"), "{binary}");
        }
        let state_dir = Path::new(options["root"].as_str().expect("root"))
            .join("moby")
            .join(&id);
        assert_eq!(state_dir, dockerd.runtime_root().join(&id));
        let state = std::fs::read(state_dir.join("state.json")).expect("capsa's state.json");
        let state: serde_json::Value = serde_json::from_slice(&state).expect("state.json");
        assert_eq!(state["isolation"], isolation);
        // The exec joins the container: its pid 1 is the detached process.
        let out = dockerd.docker(
            60,
            &[
                "exec",
                &id,
                "sh",
                "-c",
                "echo exec-ok; tr '\\0' ' ' < /proc/1/cmdline; exit 3",
            ],
        );
        assert_eq!(
            out.status.code(),
            Some(3),
            "{runtime}: docker exec: {}",
            show(&out)
        );
        assert_eq!(stdout(&out), "exec-ok\nsleep 1000 ");
        let out = dockerd.docker(60, &["rm", "-f", &id]);
        assert!(
            out.status.success(),
            "{runtime}: docker rm -f: {}",
            show(&out)
        );
        let out = dockerd.docker(30, &["ps", "-aq", "--no-trunc"]);
        assert!(out.status.success(), "docker ps: {}", show(&out));
        assert_eq!(stdout(&out), "", "docker still lists containers");
        assert!(
            !state_dir.exists(),
            "capsa's state directory of {id} left behind"
        );
        assert_eq!(docker_cgroup_dirs(&id), Vec::<PathBuf>::new());
    }
}

/// dockerd 20.10 cannot pass annotations (no `docker run --annotation`, and
/// its config.json has none), so the isolation is the runtime's: a second
/// runtime in daemon.json whose `runtimeArgs` name it. dockerd runs those
/// as `capsa --isolation=microvm <command> ...`, before the command, where
/// capsa takes it as the default of the containers it creates.
#[test]
fn docker_runs_a_microvm_through_capsa() {
    let dockerd = Dockerd::start();
    let image = dockerd.import_busybox();
    let out = dockerd.docker(
        180,
        &[
            "run",
            "--rm",
            "--runtime",
            "capsa-microvm",
            "--network",
            "none",
            &image,
            "sh",
            "-c",
            "echo hi; uname -r; exit 3",
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    // capsa's guest kernel ran it.
    assert_eq!(stdout(&out), "hi\n6.1.0-capsa\n");
}
