//! containerd drives capsa through its runc shim (`ctr run --runc-binary`),
//! as Kubernetes does through a RuntimeClass: once as a container and once,
//! by annotation, as a microVM.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use capsa_tests::*;

/// A private containerd daemon (own root, state and socket), stopped on drop.
struct Containerd {
    dir: tempfile::TempDir,
    daemon: Child,
}

impl Containerd {
    fn start() -> Containerd {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("config.toml");
        let root = dir.path().join("root");
        let state = dir.path().join("state");
        let socket = dir.path().join("containerd.sock");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = {root:?}\nstate = {state:?}\n[grpc]\n  address = {socket:?}\n\
                 [plugins.\"io.containerd.grpc.v1.cri\"]\n  disable_cgroup = true\n"
            ),
        )
        .expect("config");
        let mut daemon = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("containerd");
        // Ready once it says so; its log goes on in the background.
        let mut log = BufReader::new(daemon.stderr.take().expect("stderr"));
        let mut line = String::new();
        loop {
            line.clear();
            let n = log.read_line(&mut line).expect("containerd log");
            assert!(n > 0, "containerd exited before it booted");
            if line.contains("successfully booted") {
                break;
            }
        }
        std::thread::spawn(move || std::io::copy(&mut log, &mut std::io::sink()));
        Containerd { dir, daemon }
    }

    fn ctr(&self, args: &[&str]) -> std::process::Output {
        Command::new("ctr")
            .arg("--address")
            .arg(self.dir.path().join("containerd.sock"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("ctr")
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

/// Imports a busybox image (via podman's OCI archive of capsa's demo rootfs).
fn import_busybox(containerd: &Containerd) -> String {
    let bundle = TestBundle::busybox(&["true"]);
    let rootfs_tar = bundle.path().join("rootfs.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(bundle.rootfs())
        .arg("-cf")
        .arg(&rootfs_tar)
        .arg(".")
        .status()
        .expect("tar");
    assert!(status.success());
    let name = format!("localhost/{}:latest", unique_id("capsa-ctr-busybox"));
    let out = Command::new("podman")
        .arg("import")
        .arg(&rootfs_tar)
        .arg(&name)
        .output()
        .expect("podman import");
    assert!(out.status.success(), "podman import: {}", stderr(&out));
    let archive = bundle.path().join("image.tar");
    let out = Command::new("podman")
        .args(["save", "--format", "oci-archive", "-o"])
        .arg(&archive)
        .arg(&name)
        .output()
        .expect("podman save");
    let _ = Command::new("podman").args(["rmi", "-f", &name]).output();
    assert!(out.status.success(), "podman save: {}", stderr(&out));
    let base = name.trim_end_matches(":latest");
    let out = containerd.ctr(&[
        "images",
        "import",
        "--base-name",
        base,
        &archive.display().to_string(),
    ]);
    assert!(out.status.success(), "ctr import: {}", stderr(&out));
    name
}

/// `ctr run` of `image` as `id` through capsa in `isolation`, with `flags`
/// before the image (`--rm`, `-d`) and `args` after the id.
fn ctr_run(
    containerd: &Containerd,
    isolation: &str,
    flags: &[&str],
    image: &str,
    id: &str,
    args: &[&str],
) -> std::process::Output {
    let capsa = capsa_bin().display().to_string();
    let annotation = format!("dev.capsa.isolation={isolation}");
    let mut all = vec!["run"];
    all.extend_from_slice(flags);
    all.extend([
        "--runc-binary",
        &capsa,
        "--annotation",
        &annotation,
        image,
        id,
    ]);
    all.extend_from_slice(args);
    containerd.ctr(&all)
}

#[test]
fn containerd_runs_containers_and_microvms_through_capsa() {
    let containerd = Containerd::start();
    let image = import_busybox(&containerd);
    let script = "echo hello from $(uname -r | cut -d- -f2); exit 5";
    for (isolation, kernel) in [("container", None), ("microvm", Some("capsa"))] {
        let id = unique_id(isolation);
        let out = ctr_run(
            &containerd,
            isolation,
            &["--rm"],
            &image,
            &id,
            &["sh", "-c", script],
        );
        assert_eq!(out.status.code(), Some(5), "{isolation}: {}", stderr(&out));
        let text = stdout(&out);
        assert!(text.starts_with("hello from "), "{isolation}: {text:?}");
        if let Some(kernel) = kernel {
            assert_eq!(
                text.trim(),
                format!("hello from {kernel}"),
                "runs on capsa's guest kernel"
            );
        }
    }
}

/// `ctr task exec` goes through the shim's `capsa exec --detach
/// --pid-file`, whose pid the shim then waits on for the exit status: in a
/// microVM that pid stands for the guest's process.
#[test]
fn ctr_task_exec_runs_in_containers_and_microvms() {
    let containerd = Containerd::start();
    let image = import_busybox(&containerd);
    for (isolation, kernel) in [("container", "host"), ("microvm", "capsa")] {
        let id = unique_id(isolation);
        let out = ctr_run(
            &containerd,
            isolation,
            &["-d"],
            &image,
            &id,
            &["sleep", "1000"],
        );
        assert!(
            out.status.success(),
            "{isolation}: ctr run -d: {}",
            stderr(&out)
        );
        let script = "case $(uname -r) in *-capsa) k=capsa;; *) k=host;; esac; \
                      echo exec on $k; echo to stderr >&2; \
                      tr '\\0' ' ' < /proc/1/cmdline; exit 4";
        let out = containerd.ctr(&[
            "task",
            "exec",
            "--exec-id",
            "probe",
            &id,
            "sh",
            "-c",
            script,
        ]);
        assert_eq!(out.status.code(), Some(4), "{isolation}: {}", stderr(&out));
        assert_eq!(stdout(&out), format!("exec on {kernel}\nsleep 1000 "));
        assert_eq!(stderr(&out), "to stderr\n");
        let out = containerd.ctr(&["task", "rm", "-f", &id]);
        assert!(
            out.status.success(),
            "{isolation}: ctr task rm -f: {}",
            stderr(&out)
        );
        let out = containerd.ctr(&["container", "rm", &id]);
        assert!(
            out.status.success(),
            "{isolation}: ctr container rm: {}",
            stderr(&out)
        );
    }
}
