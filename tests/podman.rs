//! podman drives capsa as its OCI runtime (`podman --runtime`), as a real
//! client would: create, start, state, delete through conmon.

use std::process::Command;

use capsa_tests::*;

/// An image imported from a busybox rootfs, removed when dropped.
struct Image(String);

impl Image {
    fn import() -> Image {
        Image::import_from(TestBundle::busybox(&["true"]))
    }

    /// A busybox image whose `/lib` and `/lib64` lead into `/usr`, so the
    /// host's programs run in it with `-v /usr:/usr:ro` (python3 here).
    fn import_for_host_usr() -> Image {
        let mut bundle = TestBundle::busybox(&["true"]);
        bundle.bind_host_usr();
        Image::import_from(bundle)
    }

    fn import_from(bundle: TestBundle) -> Image {
        let tar = bundle.rootfs_tar();
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
fn podman_exec_and_stop_detached_containers_and_microvms() {
    let image = Image::import();
    for isolation in ["container", "microvm"] {
        let name = unique_id("capsa-podman");
        let annotation = format!("dev.capsa.isolation={isolation}");
        let out = podman(&[
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            "none",
            "--annotation",
            &annotation,
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            &image.0,
            "sleep",
            "1000",
        ]);
        assert!(
            out.status.success(),
            "{isolation}: podman run -d: {}",
            stderr(&out)
        );
        // conmon hands capsa exec its pipes and waits on the pid file's pid.
        let mut exec = Command::new("podman")
            .arg("--runtime")
            .arg(capsa_bin())
            .args(["exec", "-i", &name, "sh", "-c", "echo exec-ok; cat; exit 3"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("podman exec");
        {
            use std::io::Write;
            let mut stdin = exec.stdin.take().expect("stdin");
            stdin.write_all(b"from stdin\n").expect("write");
        }
        let out = exec.wait_with_output().expect("podman exec");
        assert_eq!(
            out.status.code(),
            Some(3),
            "{isolation}: podman exec: {}",
            stderr(&out)
        );
        assert_eq!(stdout(&out), "exec-ok\nfrom stdin\n", "{isolation}");
        let out = podman(&["rm", "-f", "-t", "0", &name]);
        assert!(
            out.status.success(),
            "{isolation}: podman rm -f: {}",
            stderr(&out)
        );
    }
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

/// podman's rlimits this host can grant (it withholds CAP_SYS_RESOURCE).
const ULIMITS: [&str; 4] = [
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
];
const MICROVM: [&str; 2] = ["--annotation", "dev.capsa.isolation=microvm"];
const HOST_USR: [&str; 2] = ["-v", "/usr:/usr:ro"];
/// python's http.server on port 8000, serving `/`.
const HTTP_SERVER: [&str; 6] = ["/usr/bin/python3", "-m", "http.server", "-d", "/", "8000"];

/// A port nothing on the host listens on now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// Removes a podman container (and with `network`, a network) when dropped.
struct Cleanup {
    containers: Vec<String>,
    network: Option<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for name in &self.containers {
            let _ = podman(&["rm", "-f", "-t", "0", name]);
        }
        if let Some(network) = &self.network {
            let _ = Command::new("podman")
                .args(["network", "rm", "-f", network])
                .output();
        }
    }
}

/// curl's status code for `url`, retried until it answers or `limit` passes
/// (the server inside is still starting).
fn curl_until_answered(url: &str, limit: std::time::Duration) -> String {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let out = Command::new("curl")
            .args([
                "-s",
                "-m",
                "5",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                url,
            ])
            .output()
            .expect("curl");
        let code = stdout(&out);
        if out.status.success() || std::time::Instant::now() >= deadline {
            return code;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The microVM takes the place of the interface podman configured in its
/// namespace: podman's port publishing reaches python's http.server in
/// the guest from the host.
#[test]
fn podman_publishes_a_port_of_a_microvm() {
    let image = Image::import_for_host_usr();
    let name = unique_id("capsa-publish");
    let _cleanup = Cleanup {
        containers: vec![name.clone()],
        network: None,
    };
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:8000");
    let out = podman(
        &[
            &["run", "-d", "--name", &name, "-p", &publish][..],
            &MICROVM,
            &HOST_USR,
            &ULIMITS,
            &[&image.0],
            &HTTP_SERVER,
        ]
        .concat(),
    );
    assert!(out.status.success(), "podman run -d: {}", stderr(&out));
    let url = format!("http://127.0.0.1:{port}/");
    let code = curl_until_answered(&url, std::time::Duration::from_secs(60));
    let logs = podman(&["logs", &name]);
    assert_eq!(code, "200", "curl {url}; the server said: {}", show(&logs));
    // The request reached the guest's own server.
    assert!(
        stderr(&logs).contains("\"GET / HTTP/1.1\" 200"),
        "{}",
        show(&logs)
    );
}

/// With `--network=none` podman's namespace has only loopback, and so has
/// the instance, in both modes.
#[test]
fn podman_network_none_gives_loopback_only() {
    let image = Image::import();
    let links = |isolation: &str| {
        let annotation = format!("dev.capsa.isolation={isolation}");
        podman(
            &[
                &[
                    "run",
                    "--rm",
                    "--network",
                    "none",
                    "--annotation",
                    &annotation,
                ][..],
                &ULIMITS,
                &[&image.0, "sh", "-c", "ip -o link | cut -d: -f2"],
            ]
            .concat(),
        )
    };
    for isolation in ["container", "microvm"] {
        let out = links(isolation);
        assert!(out.status.success(), "{isolation}: {}", stderr(&out));
        assert_eq!(stdout(&out), " lo\n", "{isolation}");
    }
}

/// A client in a microVM reaches a server in a container of the same
/// podman network through the bridge.
#[test]
fn a_microvm_reaches_a_container_on_its_podman_network() {
    let image = Image::import_for_host_usr();
    let network = unique_id("capsa-net");
    let server = unique_id("capsa-server");
    let _cleanup = Cleanup {
        containers: vec![server.clone()],
        network: Some(network.clone()),
    };
    let out = Command::new("podman")
        .args(["network", "create", &network])
        .output()
        .expect("podman network create");
    assert!(
        out.status.success(),
        "podman network create: {}",
        stderr(&out)
    );
    let out = podman(
        &[
            &["run", "-d", "--name", &server, "--network", &network][..],
            &HOST_USR,
            &ULIMITS,
            &[&image.0],
            &HTTP_SERVER,
        ]
        .concat(),
    );
    assert!(out.status.success(), "server: {}", stderr(&out));
    let format = format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}");
    let out = podman(&["inspect", "-f", &format, &server]);
    assert!(out.status.success(), "podman inspect: {}", stderr(&out));
    let address = stdout(&out).trim().to_string();
    assert!(!address.is_empty(), "the server has no address");
    // The client retries while the server starts, for at most 60 s.
    let client = format!(
        "import time, urllib.request\n\
         deadline = time.monotonic() + 60\n\
         while True:\n\
         \ttry:\n\
         \t\tprint(urllib.request.urlopen('http://{address}:8000/', timeout=5).status)\n\
         \t\tbreak\n\
         \texcept OSError:\n\
         \t\tif time.monotonic() > deadline: raise\n\
         \t\ttime.sleep(0.1)\n"
    );
    let out = Command::new("timeout")
        .args(["-k", "5", "120", "podman", "--runtime"])
        .arg(capsa_bin())
        .args(
            [
                &["run", "--rm", "--network", &network][..],
                &MICROVM,
                &HOST_USR,
                &ULIMITS,
                &[&image.0, "/usr/bin/python3", "-c", &client],
            ]
            .concat(),
        )
        .output()
        .expect("podman run");
    assert!(out.status.success(), "client: {}", show(&out));
    assert_eq!(stdout(&out), "200\n");
}
