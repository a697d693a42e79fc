//! containerd's CRI plugin drives capsa as a kubelet does: gRPC calls on
//! containerd's unix socket (RunPodSandbox, CreateContainer,
//! StartContainer, ExecSync, StopContainer, StopPodSandbox,
//! RemovePodSandbox), with capsa registered as the runc v2 shim's binary
//! of two runtime handlers, `capsa` (containers) and `capsa-microvm` (a
//! link of that name: microVMs). The pod's network is a CNI bridge, its
//! pause image a static C program the test builds. docs/kubernetes.md
//! describes the same configuration for a cluster.

use std::future::Future;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use capsa_tests::*;
use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerState, ContainerStatusRequest,
    CreateContainerRequest, ExecSyncRequest, ImageSpec, ImageStatusRequest, LinuxContainerConfig,
    LinuxContainerResources, LinuxContainerSecurityContext, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, ListContainersRequest, ListPodSandboxRequest, NamespaceMode,
    NamespaceOption, PodSandboxConfig, PodSandboxMetadata, PodSandboxState,
    PodSandboxStatusRequest, RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest,
    StatusRequest, StopContainerRequest, StopPodSandboxRequest, VersionRequest,
};
use serde_json::Value;
use tonic::transport::{Channel, Endpoint, Uri};

/// The pod's infrastructure container, as Kubernetes' pause: it holds the
/// pod's namespaces, sleeps until SIGTERM or SIGINT, and reaps children.
const PAUSE_C: &str = r#"
#include <signal.h>
#include <stddef.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { (void)sig; _exit(0); }

static void reap(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(void) {
    struct sigaction sa = {0};
    sa.sa_handler = stop;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sa.sa_handler = reap;
    sa.sa_flags = SA_NOCLDSTOP;
    sigaction(SIGCHLD, &sa, NULL);
    for (;;)
        pause();
}
"#;

/// The pod's hostname, which every container of the pod must see.
const POD_HOSTNAME: &str = "capsa-pod";

/// The port the pod's server container listens on.
const PORT: u16 = 7070;

/// What every gRPC call may take at most (an ExecSync's own timeout is
/// shorter).
const CALL_LIMIT: Duration = Duration::from_secs(120);

/// The memory limit of the app containers: kubelet's `limits.memory`. In
/// a microVM it sizes guest RAM.
const MEMORY_LIMIT: i64 = 256 << 20;

/// The OOM score the app containers get, as kubelet computes one for a
/// burstable pod.
const OOM_SCORE_ADJ: i64 = 500;

/// One of the two runtime handlers the private containerd registers.
#[derive(Clone, Copy)]
struct Handler {
    /// The RuntimeClass handler: the runtime section's name.
    name: &'static str,
    microvm: bool,
    /// The third octet of the pod network 10.215.`subnet`.0/24.
    subnet: u8,
}

const CONTAINERS: Handler = Handler {
    name: "capsa",
    microvm: false,
    subnet: 0,
};

const MICROVMS: Handler = Handler {
    name: "capsa-microvm",
    microvm: true,
    subnet: 1,
};

/// `program args...` under `timeout -k 5 LIMIT`, stdin /dev/null.
fn bounded(limit_secs: u32, program: &str, args: &[&str]) -> Output {
    Command::new("timeout")
        .args(["-k", "5", &limit_secs.to_string(), program])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"))
}

/// The two images a pod needs, as OCI archives: the pause image
/// (`ENTRYPOINT ["/pause"]` over a busybox rootfs) and busybox for the
/// app containers.
struct Images {
    dir: tempfile::TempDir,
    pause: String,
    busybox: String,
}

impl Images {
    fn build() -> Images {
        let dir = tempfile::tempdir().expect("tempdir");
        let pause_bin = compile_c(dir.path(), "pause", PAUSE_C, &["-static"]);
        let bundle = TestBundle::busybox(&["true"]);
        let busybox_tar = bundle.path().join("busybox-rootfs.tar");
        std::fs::rename(bundle.rootfs_tar(), &busybox_tar).expect("rename the rootfs tar");
        std::fs::copy(&pause_bin, bundle.rootfs().join("pause")).expect("copy pause");
        let pause_tar = bundle.path().join("pause-rootfs.tar");
        std::fs::rename(bundle.rootfs_tar(), &pause_tar).expect("rename the pause rootfs tar");
        let images = Images {
            pause: format!("localhost/{}:latest", unique_id("capsa-cri-pause")),
            busybox: format!("localhost/{}:latest", unique_id("capsa-cri-busybox")),
            dir,
        };
        images.save(
            &pause_tar,
            &images.pause,
            &["--change", r#"ENTRYPOINT ["/pause"]"#],
        );
        images.save(&busybox_tar, &images.busybox, &[]);
        images
    }

    /// The OCI archive of image `name`.
    fn archive(&self, name: &str) -> PathBuf {
        let base = name.trim_start_matches("localhost/").replace(':', "-");
        self.dir.path().join(format!("{base}.tar"))
    }

    /// Makes `name` from the rootfs tar `rootfs` with podman, saved as an
    /// OCI archive (podman's own copy is removed).
    fn save(&self, rootfs: &Path, name: &str, changes: &[&str]) {
        let rootfs = rootfs.display().to_string();
        let mut args = vec!["import"];
        args.extend_from_slice(changes);
        args.extend_from_slice(&[&rootfs, name]);
        let out = bounded(120, "podman", &args);
        assert!(out.status.success(), "podman import: {}", show(&out));
        let archive = self.archive(name).display().to_string();
        let out = bounded(
            120,
            "podman",
            &["save", "--format", "oci-archive", "-o", &archive, name],
        );
        let _ = bounded(60, "podman", &["rmi", "-f", name]);
        assert!(out.status.success(), "podman save: {}", show(&out));
    }
}

/// A private containerd (own root, state, socket, runtime root and CNI
/// network) with capsa as the runtime handlers `capsa` and
/// `capsa-microvm`, and a CRI client of it. On drop it removes what a
/// failed test may have left: pods, containerd and its shims, capsa's
/// containers, mounts, the pod network's bridge and cgroups.
struct Containerd {
    dir: tempfile::TempDir,
    /// `timeout` running containerd, so that a test binary killed
    /// outright still leaves a daemon that ends.
    daemon: Child,
    runtime: tokio::runtime::Runtime,
    /// The CRI client's connection, once containerd took it.
    channel: Option<Channel>,
    /// The CNI bridge on the host.
    bridge: String,
    /// Pods this test ran, removed on drop if the test did not.
    pods: Vec<String>,
    /// Pod cgroup parents, removed on drop (kubelet removes a pod's).
    cgroup_parents: Vec<String>,
}

impl Containerd {
    fn start(handler: Handler, sandbox_image: &str) -> Containerd {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = |name: &str| dir.path().join(name);
        // The handler `capsa-microvm` names a link of that name, which
        // makes microVMs capsa's default: the runc shim runs the binary
        // `BinaryName` names, with nothing else to choose by.
        let microvm_link = path("capsa-microvm");
        std::os::unix::fs::symlink(capsa_bin(), &microvm_link).expect("capsa-microvm link");
        let cni_conf = path("cni");
        std::fs::create_dir_all(&cni_conf).expect("mkdir cni");
        let bridge = format!(
            "capsacri{}x{}",
            std::process::id() % 100_000,
            handler.subnet
        );
        // A bridge with a host-local address per pod on a subnet of its
        // own; no masquerading (no iptables rule): the pod is reached from
        // the host only. containerd adds the loopback network itself
        // (the `loopback` plugin in bin_dir).
        let network = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": format!("capsa-cri-{}", handler.subnet),
            "plugins": [{
                "type": "bridge",
                "bridge": bridge,
                "isGateway": true,
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": format!("10.215.{}.0/24", handler.subnet)}]],
                    "dataDir": path("cni-ipam"),
                },
            }],
        });
        std::fs::write(cni_conf.join("10-capsa.conflist"), network.to_string()).expect("cni");
        // A pod's annotations reach config.json only as `pod_annotations`
        // lets them. The container handler lets every `dev.capsa.*` one
        // through (`dev.capsa.isolation=microvm` makes a pod microVMs);
        // the microVM handler only `dev.capsa.hugepages`: a pod's
        // `dev.capsa.isolation=container` would otherwise take its
        // containers out of their VMs.
        let runtime_section = |name: &str, binary: &Path, annotations: &str| {
            let section =
                format!("[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.{name}]");
            format!(
                "{section}\n  runtime_type = \"io.containerd.runc.v2\"\n  \
                 pod_annotations = [\"{annotations}\"]\n\
                 {}\n  BinaryName = {binary:?}\n  Root = {:?}\n",
                section.replace(']', ".options]"),
                path("runtime"),
            )
        };
        // The CRI plugin's cgroup handling stays on (unlike
        // tests/containerd.rs, whose `ctr` never reaches it): as under a
        // kubelet, each container's config.json names the pod's cgroup
        // parent and the container's resources, which capsa applies (to
        // the VMM's cgroup in a microVM) and removes on delete.
        // `stream_server_port = "0"`: ExecSync needs no streaming server,
        // and a fixed port would collide with another test's containerd.
        // `restrict_oom_score_adj`: the CRI plugin gives a pod's sandbox
        // an OOM score of -998, and lowering a score takes
        // CAP_SYS_RESOURCE, which root lacks where the tests run (capsa
        // create then fails with "process.oomScoreAdj: cannot set:
        // Permission denied"); so no score below containerd's own is
        // asked for. Runtimes named here replace containerd's built-in
        // `runc`, so the default handler must be one of them.
        let config = format!(
            "version = 2\nroot = {:?}\nstate = {:?}\n[grpc]\n  address = {:?}\n\
             [plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = {sandbox_image:?}\n  \
             stream_server_address = \"127.0.0.1\"\n  stream_server_port = \"0\"\n  \
             restrict_oom_score_adj = true\n\
             [plugins.\"io.containerd.grpc.v1.cri\".cni]\n  bin_dir = \"/usr/lib/cni\"\n  \
             conf_dir = {cni_conf:?}\n\
             [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  \
             default_runtime_name = \"capsa\"\n{}{}",
            path("root"),
            path("state"),
            path("containerd.sock"),
            runtime_section("capsa", &capsa_bin(), "dev.capsa.*"),
            runtime_section("capsa-microvm", &microvm_link, "dev.capsa.hugepages"),
        );
        std::fs::write(path("config.toml"), config).expect("config.toml");
        let log = std::fs::File::create(path("containerd.log")).expect("containerd.log");
        let daemon = Command::new("timeout")
            .args(["-k", "30", "900", "containerd", "--config"])
            .arg(path("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("containerd");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let socket = path("containerd.sock");
        let mut containerd = Containerd {
            channel: None,
            dir,
            daemon,
            runtime,
            bridge,
            pods: Vec::new(),
            cgroup_parents: Vec::new(),
        };
        // Up once its socket takes a connection and the CRI plugin says
        // the runtime and the network are ready; at most 60 s.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let exited = containerd.daemon.try_wait().expect("try_wait");
            let log = containerd.log();
            assert!(
                exited.is_none()
                    && Instant::now() < deadline
                    && !log.contains("failed to load plugin io.containerd.grpc.v1.cri"),
                "containerd did not come up ({exited:?}); its log:\n{log}"
            );
            if socket.exists() {
                if let Ok(channel) = containerd.runtime.block_on(connect(socket.clone())) {
                    containerd.channel = Some(channel);
                    if containerd.ready() {
                        break;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        containerd
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// The runtime root the shim gives capsa (`Root` in the runtime
    /// options; the shim adds the namespace).
    fn capsa_root(&self) -> PathBuf {
        self.dir.path().join("runtime").join("k8s.io")
    }

    fn runtime_service(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel.clone().expect("connected to containerd"))
    }

    fn image_service(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel.clone().expect("connected to containerd"))
    }

    /// Runs one gRPC call to its end.
    fn try_call<T>(
        &self,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, tonic::Status> {
        self.runtime
            .block_on(async { tokio::time::timeout(CALL_LIMIT, call).await })
            .map_err(|_| tonic::Status::deadline_exceeded("the test's bound"))?
            .map(tonic::Response::into_inner)
    }

    /// Runs one gRPC call, which must succeed; `what` names it.
    fn call<T>(
        &self,
        what: &str,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> T {
        self.try_call(call).unwrap_or_else(|status| {
            panic!(
                "{what}: {status}\n--- containerd's log (end):\n{}",
                tail(&self.log(), 40)
            )
        })
    }

    /// Whether the CRI plugin reports RuntimeReady and NetworkReady.
    fn ready(&self) -> bool {
        let Ok(status) = self.try_call(self.runtime_service().status(StatusRequest::default()))
        else {
            return false;
        };
        let conditions = status.status.map(|s| s.conditions).unwrap_or_default();
        ["RuntimeReady", "NetworkReady"]
            .iter()
            .all(|ty| conditions.iter().any(|c| c.r#type == *ty && c.status))
    }

    /// `ctr` against this daemon, bounded.
    fn ctr(&self, args: &[&str]) -> Output {
        let socket = self
            .dir
            .path()
            .join("containerd.sock")
            .display()
            .to_string();
        let mut all = vec!["--address", &socket];
        all.extend_from_slice(args);
        bounded(120, "ctr", &all)
    }

    /// Imports the OCI archive of `name` into the CRI's namespace and waits
    /// (at most 30 s) for the CRI plugin to see it, as after a pull.
    fn import(&self, images: &Images, name: &str) {
        let archive = images.archive(name).display().to_string();
        let base = name.trim_end_matches(":latest");
        let out = self.ctr(&[
            "-n",
            "k8s.io",
            "images",
            "import",
            "--base-name",
            base,
            &archive,
        ]);
        assert!(out.status.success(), "ctr images import: {}", show(&out));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let request = ImageStatusRequest {
                image: Some(ImageSpec {
                    image: name.to_string(),
                    ..Default::default()
                }),
                verbose: false,
            };
            let status = self.call("ImageStatus", self.image_service().image_status(request));
            if status.image.is_some() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the CRI plugin does not see the imported {name}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// ContainerStatus with its verbose info (containerd's JSON `info`).
    fn container_status(&self, id: &str) -> (k8s_cri::v1::ContainerStatus, Value) {
        let request = ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: true,
        };
        let response = self.call(
            "ContainerStatus",
            self.runtime_service().container_status(request),
        );
        let info = response
            .info
            .get("info")
            .map(|text| serde_json::from_str(text).expect("ContainerStatus info is JSON"))
            .unwrap_or(Value::Null);
        (response.status.expect("a container status"), info)
    }

    /// ExecSync of `args` in container `id`: (exit code, stdout, stderr).
    fn exec_sync(&self, id: &str, args: &[&str]) -> (i32, String, String) {
        let request = ExecSyncRequest {
            container_id: id.to_string(),
            cmd: args.iter().map(|a| a.to_string()).collect(),
            timeout: 60,
        };
        let response = self.call(
            &format!("ExecSync {args:?} in {id}"),
            self.runtime_service().exec_sync(request),
        );
        (
            response.exit_code,
            String::from_utf8_lossy(&response.stdout).into_owned(),
            String::from_utf8_lossy(&response.stderr).into_owned(),
        )
    }
}

/// A channel to the gRPC server on the unix socket `path` (tonic's uds
/// client: the URI is a placeholder the connector ignores).
async fn connect(path: PathBuf) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_static("http://[::]:50051")
        .connect_timeout(Duration::from_secs(10))
        .timeout(CALL_LIMIT)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // A failed test's pods first, through the CRI as a kubelet would.
        let pods = if self.channel.is_some() {
            std::mem::take(&mut self.pods)
        } else {
            Vec::new()
        };
        for pod in pods {
            let _ = self.try_call(
                self.runtime_service()
                    .stop_pod_sandbox(StopPodSandboxRequest {
                        pod_sandbox_id: pod.clone(),
                    }),
            );
            let _ = self.try_call(self.runtime_service().remove_pod_sandbox(
                RemovePodSandboxRequest {
                    pod_sandbox_id: pod,
                },
            ));
        }
        // SIGTERM (timeout forwards it), at most 30 s, then SIGKILL.
        let _ = bounded(10, "kill", &["-TERM", &self.daemon.id().to_string()]);
        let deadline = Instant::now() + Duration::from_secs(30);
        while matches!(self.daemon.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        // What a failed test can still leave: capsa's containers, the
        // shims (their command lines name this directory's socket), mounts
        // under this directory, the pods' network namespaces, the bridge,
        // the pod cgroups.
        let root = self.capsa_root();
        for entry in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let root = root.display().to_string();
            let capsa = capsa_bin().display().to_string();
            let _ = bounded(30, &capsa, &["--root", &root, "delete", "--force", &name]);
        }
        let dir = self.dir.path().display().to_string();
        for pid in processes_naming(&[dir.as_str()]) {
            let _ = bounded(10, "kill", &["-KILL", &pid.to_string()]);
        }
        let mut under: Vec<String> = mount_targets()
            .into_iter()
            .filter(|target| target.starts_with(&dir))
            .collect();
        under.sort_by_key(|target| std::cmp::Reverse(target.len()));
        for target in under {
            let _ = bounded(30, "umount", &["-l", &target]);
        }
        let _ = bounded(30, "ip", &["link", "del", &self.bridge]);
        for parent in &self.cgroup_parents {
            remove_cgroup_tree(parent);
        }
    }
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The pids of processes whose command line contains any of `needles`.
fn processes_naming(needles: &[&str]) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != std::process::id() as i32)
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            needles.iter().any(|needle| cmdline.contains(needle))
        })
        .collect()
}

/// Every mount point on the host (this test's mount namespace is
/// containerd's).
fn mount_targets() -> Vec<String> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|line| line.split(' ').nth(1))
        .map(|target| target.replace("\\040", " "))
        .collect()
}

/// The start time of process `pid` (field 22 of its stat), which tells a
/// process from a later one with the same pid; None once it is gone.
fn start_time(pid: i64) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after it do not.
    let after = &stat[stat.rfind(')')? + 2..];
    after.split(' ').nth(19).map(str::to_string)
}

/// The directories of cgroup `relative` (a cgroupsPath) in every
/// hierarchy that has it.
fn cgroup_paths(relative: &str) -> Vec<PathBuf> {
    let relative = relative.trim_start_matches('/');
    let root = Path::new("/sys/fs/cgroup");
    let mut found = Vec::new();
    if root.join(relative).is_dir() {
        found.push(root.join(relative));
    }
    for hierarchy in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let dir = hierarchy.path().join(relative);
        if dir.is_dir() {
            found.push(dir);
        }
    }
    found
}

/// Removes cgroup `relative` and everything below it, deepest first, in
/// every hierarchy (what kubelet does with a pod's cgroup once it is
/// gone).
fn remove_cgroup_tree(relative: &str) {
    fn remove(dir: &Path) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove(&entry.path());
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
    for dir in cgroup_paths(relative) {
        remove(&dir);
    }
}

/// The memory limit of cgroup `relative`: cgroup v1's
/// `memory.limit_in_bytes` or v2's `memory.max`.
fn memory_limit(relative: &str) -> Option<i64> {
    let relative = relative.trim_start_matches('/');
    [
        format!("/sys/fs/cgroup/memory/{relative}/memory.limit_in_bytes"),
        format!("/sys/fs/cgroup/{relative}/memory.max"),
    ]
    .iter()
    .find_map(|file| std::fs::read_to_string(file).ok()?.trim().parse().ok())
}

/// GET `path` from `addr` (an HTTP/1.0 request) from the host; the body
/// on a 200, else None.
fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut stream =
        TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    (head.split(' ').nth(1) == Some("200")).then(|| body.to_string())
}

/// Polls `check` until it gives Some, at most `limit`; `what` names the
/// wait in the failure.
fn poll<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What kubelet asks of every pod's namespaces by default: the pod's
/// network and IPC namespaces shared, a pid namespace per container.
fn namespace_options() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Pod as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// The pod's annotations: huge pages asked for in both, and in the
/// microVM pod an isolation its handler must not let through.
fn pod_annotations(handler: Handler) -> std::collections::HashMap<String, String> {
    let mut annotations =
        std::collections::HashMap::from([("dev.capsa.hugepages".to_string(), "true".to_string())]);
    if handler.microvm {
        annotations.insert("dev.capsa.isolation".into(), "container".into());
    }
    annotations
}

/// The file name of the program process `pid` runs (capsa itself for a
/// VMM, which is the cloned init).
fn program(pid: i64) -> String {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .and_then(|exe| Some(exe.file_name()?.to_string_lossy().into_owned()))
        .unwrap_or_default()
}

/// A container of the pod: its CRI id and the host pid containerd knows
/// it by (the VMM's in a microVM) with that process's start time.
struct Started {
    id: String,
    pid: i64,
    start_time: String,
    /// The annotations of its config.json.
    annotations: Value,
}

/// Creates and starts container `name` of `pod` running `sh -c script`
/// from `image`, logging to `<name>/0.log` in the pod's log directory, as
/// kubelet does; asserts it runs.
fn start_container(
    containerd: &Containerd,
    pod: &str,
    pod_config: &PodSandboxConfig,
    image: &str,
    name: &str,
    script: &str,
) -> Started {
    // kubelet makes each container's log directory.
    std::fs::create_dir_all(Path::new(&pod_config.log_directory).join(name))
        .expect("the container's log directory");
    let config = ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.to_string(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image.to_string(),
            ..Default::default()
        }),
        command: vec!["sh".into(), "-c".into(), script.into()],
        log_path: format!("{name}/0.log"),
        linux: Some(LinuxContainerConfig {
            resources: Some(LinuxContainerResources {
                cpu_shares: 102,
                memory_limit_in_bytes: MEMORY_LIMIT,
                oom_score_adj: OOM_SCORE_ADJ,
                ..Default::default()
            }),
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(namespace_options()),
                ..Default::default()
            }),
        }),
        ..Default::default()
    };
    let request = CreateContainerRequest {
        pod_sandbox_id: pod.to_string(),
        config: Some(config),
        sandbox_config: Some(pod_config.clone()),
    };
    let id = containerd
        .call(
            &format!("CreateContainer {name}"),
            containerd.runtime_service().create_container(request),
        )
        .container_id;
    containerd.call(
        &format!("StartContainer {name}"),
        containerd
            .runtime_service()
            .start_container(StartContainerRequest {
                container_id: id.clone(),
            }),
    );
    let (status, info) = containerd.container_status(&id);
    assert_eq!(
        status.state,
        ContainerState::ContainerRunning as i32,
        "{name} is not running: {status:?}"
    );
    let pid = info["pid"]
        .as_i64()
        .expect("ContainerStatus info names the pid");
    let start_time = start_time(pid).expect("the container's process is there");
    Started {
        id,
        pid,
        start_time,
        annotations: info["runtimeSpec"]["annotations"].clone(),
    }
}

/// A kubelet's pod lifecycle through containerd's CRI with runtime handler
/// `handler`: a pod with two busybox containers, exec, logs, hostname,
/// the pod network, resources, a graceful stop, and nothing left after
/// the pod is removed.
fn pod_lifecycle(handler: Handler) {
    let images = Images::build();
    let mut containerd = Containerd::start(handler, &images.pause);
    containerd.import(&images, &images.pause);
    containerd.import(&images, &images.busybox);

    let version = containerd.call(
        "Version",
        containerd
            .runtime_service()
            .version(VersionRequest::default()),
    );
    assert_eq!(
        (
            version.runtime_name.as_str(),
            version.runtime_api_version.as_str()
        ),
        ("containerd", "v1"),
        "{version:?}"
    );

    // The pod, as kubelet describes one: metadata, hostname, log
    // directory, a cgroup parent of its own (kubelet's
    // kubepods/<qos>/pod<uid>), kubelet's default namespaces.
    let uid = unique_id("capsa-cri-pod");
    let log_directory = containerd.dir.path().join("pods").join(&uid);
    std::fs::create_dir_all(&log_directory).expect("the pod's log directory");
    let cgroup_parent = format!("/{uid}");
    containerd.cgroup_parents.push(cgroup_parent.clone());
    let pod_config = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "web".into(),
            uid: uid.clone(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: POD_HOSTNAME.into(),
        log_directory: log_directory.display().to_string(),
        annotations: pod_annotations(handler),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent.clone(),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(namespace_options()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let pod = containerd
        .call(
            "RunPodSandbox",
            containerd
                .runtime_service()
                .run_pod_sandbox(RunPodSandboxRequest {
                    config: Some(pod_config.clone()),
                    runtime_handler: handler.name.into(),
                }),
        )
        .pod_sandbox_id;
    containerd.pods.push(pod.clone());
    let status = containerd.call(
        "PodSandboxStatus",
        containerd
            .runtime_service()
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: pod.clone(),
                verbose: true,
            }),
    );
    let pod_info: Value = serde_json::from_str(
        status
            .info
            .get("info")
            .expect("PodSandboxStatus has verbose info"),
    )
    .expect("PodSandboxStatus info is JSON");
    let pod_status = status.status.expect("a pod status");
    assert_eq!(pod_status.state, PodSandboxState::SandboxReady as i32);
    assert_eq!(pod_status.runtime_handler, handler.name);
    let pod_ip = pod_status.network.map(|n| n.ip).unwrap_or_default();
    assert!(
        pod_ip.starts_with(&format!("10.215.{}.", handler.subnet)),
        "the pod's IP {pod_ip:?} is not on the CNI network"
    );
    let netns = pod_info["runtimeSpec"]["linux"]["namespaces"]
        .as_array()
        .expect("the sandbox's namespaces")
        .iter()
        .find(|ns| ns["type"] == "network")
        .and_then(|ns| ns["path"].as_str())
        .expect("the pod's network namespace path")
        .to_string();
    let sandbox_pid = pod_info["pid"].as_i64().expect("the sandbox's pid");
    let sandbox_start = start_time(sandbox_pid).expect("the sandbox's process is there");

    // Two app containers: `logger` writes to both streams and stops
    // cleanly on SIGTERM; `server` serves HTTP on the pod's port. The
    // server starts last: in a microVM pod the VM started last is the one
    // the pod's interface leads to (docs/kubernetes.md).
    let logger = start_container(
        &containerd,
        &pod,
        &pod_config,
        &images.busybox,
        "logger",
        "echo hello from $(hostname); echo to stderr >&2; \
         trap 'echo stopping; exit 0' TERM; sleep 1000 & wait",
    );
    let server = start_container(
        &containerd,
        &pod,
        &pod_config,
        &images.busybox,
        "server",
        &format!(
            "mkdir -p /srv && echo pong > /srv/ping && echo serving && \
             exec httpd -f -p {PORT} -h /srv"
        ),
    );
    let containers = [&logger, &server];

    // What runs: the pause program and busybox in containers; VMMs (capsa
    // itself) in a microVM pod, the sandbox's included.
    let expected = |container: &str| {
        if handler.microvm {
            "capsa".to_string()
        } else {
            container.to_string()
        }
    };
    // StartContainer returns once the runtime's `start` has, as with runc:
    // the container's process may not have executed its program yet.
    let runs = |pid: i64, want: String| {
        poll(
            &format!("pid {pid} runs {want}"),
            Duration::from_secs(30),
            || (program(pid) == want).then_some(()),
        )
    };
    runs(sandbox_pid, expected("pause"));
    for c in containers {
        runs(c.pid, expected("busybox"));
        // The pod's annotations as the handler lets them through.
        assert_eq!(c.annotations["dev.capsa.hugepages"], "true", "{}", c.id);
        assert_eq!(
            c.annotations["dev.capsa.isolation"],
            Value::Null,
            "{}: a pod's isolation annotation passed",
            c.id
        );
    }

    // The CRI log: `<RFC 3339 time> <stream> F <line>` per line.
    let log_file = log_directory.join("logger").join("0.log");
    let log = poll(
        "the logger's CRI log has both lines",
        Duration::from_secs(60),
        || {
            let text = std::fs::read_to_string(&log_file).ok()?;
            (text.lines().count() >= 2).then_some(text)
        },
    );
    let mut entries: Vec<(String, String)> = Vec::new();
    for line in log.lines() {
        let fields: Vec<&str> = line.splitn(4, ' ').collect();
        let &[time, stream, tag, text] = fields.as_slice() else {
            panic!("not a CRI log line: {line:?}");
        };
        assert!(
            time.len() >= 20 && time.as_bytes()[4] == b'-' && time.as_bytes()[10] == b'T',
            "not an RFC 3339 time in {line:?}"
        );
        assert_eq!(tag, "F", "a full line: {line:?}");
        entries.push((stream.to_string(), text.to_string()));
    }
    entries.sort();
    assert_eq!(
        entries,
        [
            ("stderr".to_string(), "to stderr".to_string()),
            ("stdout".to_string(), format!("hello from {POD_HOSTNAME}")),
        ],
        "the logger's CRI log:\n{log}"
    );

    // ExecSync: stdout, stderr and the exit code come back apart.
    for c in containers {
        assert_eq!(
            containerd.exec_sync(&c.id, &["sh", "-c", "echo out; echo err >&2; exit 3"]),
            (3, "out\n".to_string(), "err\n".to_string()),
            "ExecSync in {}",
            c.id
        );
        // Every container sees the pod's hostname.
        assert_eq!(
            containerd.exec_sync(&c.id, &["hostname"]),
            (0, format!("{POD_HOSTNAME}\n"), String::new())
        );
        // On the guest kernel in a microVM, the host's in a container.
        let (code, release, _) = containerd.exec_sync(&c.id, &["uname", "-r"]);
        assert_eq!(code, 0);
        let host_release =
            std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("the host's release");
        if handler.microvm {
            assert!(release.trim_end().ends_with("-capsa"), "{release:?}");
        } else {
            assert_eq!(release, host_release);
        }
        // The pod's address on its interface.
        let (code, addresses, err) = containerd.exec_sync(&c.id, &["ip", "-4", "addr"]);
        assert_eq!(code, 0, "ip addr: {err}");
        assert!(
            addresses.contains(&format!("inet {pod_ip}/24")),
            "the pod's IP {pod_ip} in {}: {addresses}",
            c.id
        );
    }

    // The server answers on 127.0.0.1 inside its own container (or VM).
    let fetch = [
        "wget",
        "-q",
        "-O",
        "-",
        &format!("http://127.0.0.1:{PORT}/ping"),
    ];
    let served = |id: &str| {
        poll(
            "the server answers on 127.0.0.1",
            Duration::from_secs(30),
            || {
                let (code, body, _) = containerd.exec_sync(id, &fetch);
                (code == 0).then_some(body)
            },
        )
    };
    assert_eq!(served(&server.id), "pong\n");
    if !handler.microvm {
        // Containers of a pod share its network namespace, so the logger
        // reaches the server over loopback. Not in a microVM pod: each
        // container is a VM with its own TCP/IP, whose 127.0.0.1 is its
        // own (docs/kubernetes.md).
        assert_eq!(served(&logger.id), "pong\n");
    }
    // The pod's IP reaches the server from the host, as a kubelet's probe
    // or a Service's traffic does.
    let body = poll(
        "the server answers on the pod's IP",
        Duration::from_secs(30),
        || http_get(&format!("{pod_ip}:{PORT}"), "/ping"),
    );
    assert_eq!(body, "pong\n");

    // kubelet's resources reached each container's cgroup (the VMM's in a
    // microVM) under the pod's cgroup parent, and its OOM score.
    for c in containers {
        let cgroup = format!("{cgroup_parent}/{}", c.id);
        assert!(
            !cgroup_paths(&cgroup).is_empty(),
            "no cgroup {cgroup} for {}",
            c.id
        );
        assert_eq!(memory_limit(&cgroup), Some(MEMORY_LIMIT), "{cgroup}");
        let adj = std::fs::read_to_string(format!("/proc/{}/oom_score_adj", c.pid))
            .expect("oom_score_adj");
        assert_eq!(adj.trim(), OOM_SCORE_ADJ.to_string(), "{}", c.id);
    }
    // capsa keeps its state under the runtime root the shim names; the
    // pod's shim names the pod; the rootfs and the pod's shm are mounted
    // under containerd's directories; the pod's veth is on the bridge, its
    // address reserved. All of which must go with the pod.
    let ids = [pod.as_str(), logger.id.as_str(), server.id.as_str()];
    for id in ids {
        assert!(
            containerd.capsa_root().join(id).is_dir(),
            "no capsa state for {id} in {}",
            containerd.capsa_root().display()
        );
    }
    assert!(
        !processes_naming(&[&pod]).is_empty(),
        "no shim names the pod"
    );
    let dir = containerd.dir.path().display().to_string();
    assert!(
        mount_targets().iter().any(|t| t.starts_with(&dir)),
        "nothing mounted under {dir}"
    );
    let bridge_ports = || -> Vec<std::ffi::OsString> {
        std::fs::read_dir(format!("/sys/class/net/{}/brif", containerd.bridge))
            .map(|dir| dir.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default()
    };
    assert_eq!(bridge_ports().len(), 1, "the pod's veth on the bridge");
    let lease = containerd
        .dir
        .path()
        .join("cni-ipam")
        .join(format!("capsa-cri-{}", handler.subnet))
        .join(&pod_ip);
    assert!(lease.exists(), "{} is not reserved", pod_ip);

    // StopContainer with a grace period: SIGTERM reaches the logger's
    // shell (the guest's first process in a microVM), which exits 0.
    containerd.call(
        "StopContainer",
        containerd
            .runtime_service()
            .stop_container(StopContainerRequest {
                container_id: logger.id.clone(),
                timeout: 30,
            }),
    );
    let (status, _) = containerd.container_status(&logger.id);
    assert_eq!(
        (status.state, status.exit_code),
        (ContainerState::ContainerExited as i32, 0),
        "the logger after StopContainer: {status:?}"
    );
    assert!(
        std::fs::read_to_string(&log_file)
            .expect("the logger's log")
            .contains(" stdout F stopping\n"),
        "the logger's trap ran"
    );

    containerd.call(
        "StopPodSandbox",
        containerd
            .runtime_service()
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pod.clone(),
            }),
    );
    let (status, _) = containerd.container_status(&server.id);
    assert_eq!(
        status.state,
        ContainerState::ContainerExited as i32,
        "the server after StopPodSandbox: {status:?}"
    );
    containerd.call(
        "RemovePodSandbox",
        containerd
            .runtime_service()
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: pod.clone(),
            }),
    );
    containerd.pods.clear();

    // Nothing of the pod is left.
    let listed = containerd.call(
        "ListPodSandbox",
        containerd
            .runtime_service()
            .list_pod_sandbox(ListPodSandboxRequest::default()),
    );
    assert!(listed.items.is_empty(), "pods left: {:?}", listed.items);
    let listed = containerd.call(
        "ListContainers",
        containerd
            .runtime_service()
            .list_containers(ListContainersRequest::default()),
    );
    assert!(
        listed.containers.is_empty(),
        "containers left: {:?}",
        listed.containers
    );
    for id in ids {
        assert!(
            !containerd.capsa_root().join(id).exists(),
            "capsa's state of {id} left behind"
        );
        let cgroup = format!("{cgroup_parent}/{id}");
        assert!(
            cgroup_paths(&cgroup).is_empty(),
            "cgroups of {id} left behind: {:?}",
            cgroup_paths(&cgroup)
        );
        assert!(cgroup_dirs(id).is_empty(), "cgroups of {id} left behind");
    }
    // The processes: the containers' (each VMM in a microVM) and the
    // sandbox's are gone, and in a while so is every process naming the
    // pod's ids (the pod's shim, exec keepers).
    for (pid, start) in [
        (sandbox_pid, &sandbox_start),
        (logger.pid, &logger.start_time),
        (server.pid, &server.start_time),
    ] {
        assert_ne!(start_time(pid).as_ref(), Some(start), "process {pid} left");
    }
    poll(
        "no process names the pod's ids",
        Duration::from_secs(30),
        || processes_naming(&ids).is_empty().then_some(()),
    );
    // No mounts under containerd's directories (rootfs, the pod's shm),
    // nor the pod's network namespace.
    let mounts: Vec<String> = mount_targets()
        .into_iter()
        .filter(|target| target.starts_with(&dir) || *target == netns)
        .collect();
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    assert!(
        !Path::new(&netns).exists(),
        "the pod's network namespace {netns} is left"
    );
    // CNI's DEL took the pod's veth off the bridge and gave its address
    // back.
    assert!(
        bridge_ports().is_empty(),
        "ports left on the bridge: {:?}",
        bridge_ports()
    );
    assert!(!lease.exists(), "the pod's address is still reserved");
}

#[test]
fn cri_runs_a_pod_of_containers_through_capsa() {
    pod_lifecycle(CONTAINERS);
}

#[test]
fn cri_runs_a_pod_of_microvms_through_capsa() {
    pod_lifecycle(MICROVMS);
}
