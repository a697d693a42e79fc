//! podman drives capsa as its OCI runtime (`podman --runtime`), as a real
//! client would: create, start, state, delete through conmon.

use std::process::Command;

use capsa_tests::*;

/// An image imported from a busybox rootfs, removed when dropped.
struct Image(String);

impl Image {
    fn import() -> Image {
        let bundle = TestBundle::busybox(&["true"]);
        let tar = bundle.path().join("rootfs.tar");
        let status = Command::new("tar")
            .arg("-C")
            .arg(bundle.rootfs())
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .expect("tar");
        assert!(status.success());
        let name = format!("localhost/{}", unique_id("capsa-test-busybox"));
        let out = Command::new("podman")
            .arg("import")
            .arg(&tar)
            .arg(&name)
            .output()
            .expect("podman import");
        assert!(out.status.success(), "podman import: {}", stderr(&out));
        Image(name)
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["rmi", "-f", &self.0]).output();
    }
}

fn podman(args: &[&str]) -> std::process::Output {
    Command::new("podman")
        .arg("--runtime")
        .arg(capsa_bin())
        .args(args)
        .output()
        .expect("podman")
}

fn podman_run(image: &Image, args: &[&str]) -> std::process::Output {
    Command::new("podman")
        .arg("--runtime")
        .arg(capsa_bin())
        .args(["run", "--rm", "--network", "none"])
        // This host withholds CAP_SYS_RESOURCE, so podman's default
        // rlimits (raised to 1048576) could not be applied by any runtime.
        .args([
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
        ])
        .arg(&image.0)
        .args(args)
        .output()
        .expect("podman run")
}

#[test]
fn podman_runs_containers_through_capsa() {
    let image = Image::import();
    let out = podman_run(&image, &["/bin/echo", "hello through podman"]);
    assert!(out.status.success(), "podman run: {}", stderr(&out));
    assert_eq!(stdout(&out), "hello through podman\n");

    let out = podman_run(&image, &["sh", "-c", "echo $$; exit 5"]);
    assert_eq!(out.status.code(), Some(5), "stderr: {}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "1\n",
        "the process is pid 1 of its own namespace"
    );
}

#[test]
fn podman_exec_and_stop_a_detached_container() {
    let image = Image::import();
    let name = unique_id("capsa-podman");
    let out = podman(&[
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        "none",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
        &image.0,
        "sleep",
        "1000",
    ]);
    assert!(out.status.success(), "podman run -d: {}", stderr(&out));
    let out = podman(&["exec", &name, "sh", "-c", "echo exec-ok; exit 3"]);
    assert_eq!(out.status.code(), Some(3), "podman exec: {}", stderr(&out));
    assert_eq!(stdout(&out), "exec-ok\n");
    let out = podman(&["rm", "-f", "-t", "0", &name]);
    assert!(out.status.success(), "podman rm -f: {}", stderr(&out));
}

#[test]
fn podman_runs_a_microvm_through_capsa_by_annotation() {
    let image = Image::import();
    let out = Command::new("podman")
        .arg("--runtime")
        .arg(capsa_bin())
        .args(["run", "--rm", "--network", "none"])
        .args(["--annotation", "dev.capsa.isolation=microvm"])
        .args([
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
        ])
        .arg(&image.0)
        .args([
            "sh",
            "-c",
            "uname -r; test -s /etc/hostname && echo podman-hostname-file; exit 6",
        ])
        .output()
        .expect("podman run");
    assert_eq!(out.status.code(), Some(6), "stderr: {}", stderr(&out));
    // capsa's guest kernel, and podman's bind-mounted /etc/hostname inside it.
    assert_eq!(stdout(&out), "6.1.0-capsa\npodman-hostname-file\n");
}
