//! The container backend, checked from inside real busybox containers: each
//! spec field takes effect, the lifecycle works, bad input leaves nothing.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use capsa_tests::*;
use serde_json::json;

fn sh(script: &str) -> TestBundle {
    TestBundle::busybox(&["sh", "-c", script])
}

fn run_ok(capsa: &Capsa, bundle: &TestBundle) -> String {
    let id = unique_id("run");
    let out = capsa.run(bundle, "container", &id);
    assert!(out.status.success(), "capsa run failed: {}", stderr(&out));
    capsa.assert_nothing_left(&id);
    stdout(&out)
}

#[test]
fn process_fields_take_effect_for_a_non_root_user() {
    let capsa = Capsa::new();
    let mut bundle = sh(concat!(
        "hostname; cat /proc/sys/kernel/domainname; id -u; id -g; ",
        "grep Groups /proc/self/status; umask; echo $FOO; pwd; ",
        "grep 'Max open files' /proc/self/limits; ",
        "grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb)' /proc/self/status; ",
        "grep NoNewPrivs /proc/self/status; cat /proc/self/oom_score_adj"
    ));
    bundle.edit(|c| {
        c["hostname"] = json!("box1");
        c["domainname"] = json!("example.org");
        let p = &mut c["process"];
        p["user"] = json!({"uid": 1000, "gid": 1001, "additionalGids": [10, 20], "umask": 23});
        p["env"] = json!(["PATH=/bin", "FOO=bar"]);
        p["cwd"] = json!("/tmp");
        p["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "hard": 512, "soft": 256}]);
        p["capabilities"] = json!({
            "bounding": ["CAP_KILL", "CAP_CHOWN"],
            "permitted": ["CAP_KILL", "CAP_CHOWN"],
            "effective": ["CAP_KILL"],
            "inheritable": ["CAP_KILL"],
            "ambient": ["CAP_KILL"],
        });
        p["noNewPrivileges"] = json!(true);
        p["oomScoreAdj"] = json!(123);
    });
    let out = run_ok(&capsa, &bundle);
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(lines[0], "box1");
    assert_eq!(lines[1], "example.org");
    assert_eq!(lines[2], "1000");
    assert_eq!(lines[3], "1001");
    assert_eq!(
        lines[4].split_whitespace().collect::<Vec<_>>(),
        ["Groups:", "10", "20"]
    );
    assert_eq!(lines[5], "0027");
    assert_eq!(lines[6], "bar");
    assert_eq!(lines[7], "/tmp");
    assert_eq!(
        lines[8].split_whitespace().collect::<Vec<_>>()[3..5],
        ["256", "512"]
    );
    // After exec as a non-root user only the ambient set survives into
    // permitted/effective; the bounding set keeps both.
    let cap = |name: &str| {
        lines
            .iter()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .map(|v| u64::from_str_radix(v, 16).expect("hex"))
            .expect(name)
    };
    let (chown, kill) = (1u64 << 0, 1u64 << 5);
    assert_eq!(cap("CapInh"), kill);
    assert_eq!(cap("CapPrm"), kill);
    assert_eq!(cap("CapEff"), kill);
    assert_eq!(cap("CapBnd"), kill | chown);
    assert_eq!(cap("CapAmb"), kill);
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert_eq!(lines.last().copied(), Some("123"));
}

#[test]
fn namespaces_differ_from_the_host() {
    let capsa = Capsa::new();
    let kinds = ["pid", "net", "ipc", "uts", "mnt", "cgroup"];
    let script = kinds
        .iter()
        .map(|k| format!("readlink /proc/self/ns/{k}"))
        .collect::<Vec<_>>()
        .join("; ")
        + "; echo $$";
    let bundle = sh(&script);
    let out = run_ok(&capsa, &bundle);
    let lines: Vec<&str> = out.lines().collect();
    for (i, kind) in kinds.iter().enumerate() {
        let host = std::fs::read_link(format!("/proc/self/ns/{kind}")).expect("host ns");
        assert_ne!(
            lines[i],
            host.to_string_lossy(),
            "{kind} namespace is the host's"
        );
        assert!(lines[i].starts_with(kind), "{}", lines[i]);
    }
    assert_eq!(
        lines[kinds.len()],
        "1",
        "the process is pid 1 of its namespace"
    );
}

#[test]
fn namespaces_can_be_joined_by_path_and_loopback_is_up() {
    let capsa = Capsa::new();
    let first = TestBundle::busybox(&["sleep", "1000"]);
    let first_id = unique_id("ns-owner");
    assert!(capsa.create(&first, &[], &first_id).status.success());
    let pid = capsa.state(&first_id)["pid"].as_i64().expect("pid");
    let owner_net = std::fs::read_link(format!("/proc/{pid}/ns/net")).expect("ns");
    let owner_uts = std::fs::read_link(format!("/proc/{pid}/ns/uts")).expect("ns");

    let mut joiner = sh("readlink /proc/self/ns/net; readlink /proc/self/ns/uts; cat /sys/class/net/lo/flags; cat /proc/sys/net/ipv4/ip_forward");
    joiner.edit(|c| {
        let namespaces = c["linux"]["namespaces"].as_array_mut().expect("namespaces");
        namespaces.retain(|ns| ns["type"] != "network");
        namespaces.push(json!({"type": "network", "path": format!("/proc/{pid}/ns/net")}));
        c["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "1"});
    });
    let out = run_ok(&capsa, &joiner);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        owner_net.to_string_lossy(),
        "joined the owner's network namespace"
    );
    assert_ne!(
        lines[1],
        owner_uts.to_string_lossy(),
        "a new uts namespace of its own"
    );
    let flags = u32::from_str_radix(lines[2].trim_start_matches("0x"), 16).expect("flags");
    assert_eq!(flags & 1, 1, "lo is up (IFF_UP)");
    assert_eq!(
        lines[3], "1",
        "linux.sysctl applied in the joined namespace"
    );
    assert!(capsa
        .output(&["delete", "--force", &first_id])
        .status
        .success());
    capsa.assert_nothing_left(&first_id);
}

#[test]
fn a_user_namespace_maps_ids() {
    let capsa = Capsa::new();
    let mut bundle = sh("cat /proc/self/uid_map /proc/self/gid_map; id -u");
    bundle.edit(|c| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .expect("namespaces")
            .push(json!({"type": "user"}));
        c["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        c["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    });
    // The namespace's root is host uid 100000: it must be able to reach the rootfs.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(bundle.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let out = run_ok(&capsa, &bundle);
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0], ["0", "100000", "65536"]);
    assert_eq!(rows[1], ["0", "100000", "65536"]);
    assert_eq!(rows[2], ["0"]);
}

#[test]
fn mounts_devices_masked_and_readonly_paths_take_effect() {
    let capsa = Capsa::new();
    let shared = tempfile::tempdir().expect("tempdir");
    std::fs::write(shared.path().join("hello.txt"), "from the host\n").expect("write");
    let mut bundle = sh(concat!(
        "grep ' /scratch ' /proc/self/mountinfo; ",
        "cat /data/hello.txt; ",
        "touch /data/new 2>&1; touch /newfile 2>&1; ",
        "{ echo x > /proc/sys/kernel/hostname; } 2>&1; ",
        "wc -c < /proc/keys; ls /proc/acpi | wc -l; ",
        "ls -l /dev/mynull; ls -l /dev/null; readlink /dev/fd; readlink /dev/stdin; readlink /dev/ptmx; ",
        "grep ' /dev/shm ' /proc/self/mountinfo | sed 's/.* - //' | cut -d' ' -f1"
    ));
    let data = shared.path().display().to_string();
    bundle.edit(|c| {
        c["root"]["readonly"] = json!(true);
        let mounts = c["mounts"].as_array_mut().expect("mounts");
        mounts.push(
            json!({"destination": "/scratch", "type": "tmpfs", "source": "tmpfs",
            "options": ["nosuid", "nodev", "noexec", "size=1m"]}),
        );
        mounts.push(
            json!({"destination": "/data", "type": "bind", "source": data,
            "options": ["rbind", "ro"]}),
        );
        c["linux"]["devices"] = json!([{"path": "/dev/mynull", "type": "c", "major": 1, "minor": 3,
            "fileMode": 384, "uid": 0, "gid": 0}]);
        c["linux"]["maskedPaths"] = json!(["/proc/keys", "/proc/acpi", "/proc/does-not-exist"]);
        c["linux"]["readonlyPaths"] = json!(["/proc/sys"]);
    });
    let out = run_ok(&capsa, &bundle);
    let mut lines = out.lines();
    let scratch = lines.next().expect("mountinfo line");
    let opts = scratch.split_whitespace().nth(5).expect("mount options");
    for flag in ["nosuid", "nodev", "noexec"] {
        assert!(opts.contains(flag), "/scratch options {opts} lack {flag}");
    }
    assert_eq!(lines.next(), Some("from the host"));
    assert!(lines
        .next()
        .expect("touch /data")
        .contains("Read-only file system"));
    assert!(lines
        .next()
        .expect("touch /")
        .contains("Read-only file system"));
    assert!(lines
        .next()
        .expect("sysctl write")
        .contains("Read-only file system"));
    assert_eq!(
        lines.next().map(str::trim),
        Some("0"),
        "masked /proc/keys is not empty"
    );
    assert_eq!(
        lines.next().map(str::trim),
        Some("0"),
        "masked /proc/acpi is not empty"
    );
    let mynull = lines.next().expect("ls mynull");
    assert!(mynull.starts_with("crw-------"), "{mynull}");
    assert!(mynull.contains("1,") && mynull.contains(" 3 "), "{mynull}");
    assert!(lines.next().expect("ls null").starts_with("crw-rw-rw-"));
    assert_eq!(lines.next(), Some("/proc/self/fd"));
    assert_eq!(lines.next(), Some("/proc/self/fd/0"));
    assert_eq!(lines.next(), Some("pts/ptmx"));
    assert_eq!(lines.next(), Some("tmpfs"));
    assert!(!shared.path().join("new").exists());
}

#[test]
fn cgroup_limits_land_in_the_cgroup_tree_and_are_removed() {
    let capsa = Capsa::new();
    let mut bundle = sh("cat /proc/self/cgroup");
    // The first virtio or SCSI disk: throttling needs a real block device.
    let disk: (u64, u64) = std::fs::read_dir("/sys/block")
        .expect("/sys/block")
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with("vd") || name.starts_with("sd") || name.starts_with("nvme")
        })
        .find_map(|e| {
            let text = std::fs::read_to_string(e.path().join("dev")).ok()?;
            let (major, minor) = text.trim().split_once(':')?;
            Some((major.parse().ok()?, minor.parse().ok()?))
        })
        .expect("a block device");
    bundle.edit(|c| {
        c["linux"]["resources"] = json!({
            "memory": {"limit": 67108864, "reservation": 33554432},
            "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0", "mems": "0"},
            "pids": {"limit": 32},
            "blockIO": {"throttleReadBpsDevice": [{"major": disk.0, "minor": disk.1, "rate": 1048576}]},
        });
    });
    let id = unique_id("cg");
    let out = capsa.create(&bundle, &[], &id);
    assert!(out.status.success(), "{}", stderr(&out));
    let read = |controller: &str, file: &str| {
        std::fs::read_to_string(format!("/sys/fs/cgroup/{controller}/capsa/{id}/{file}"))
            .unwrap_or_else(|e| panic!("{controller}/{file}: {e}"))
            .trim()
            .to_string()
    };
    assert_eq!(read("memory", "memory.limit_in_bytes"), "67108864");
    assert_eq!(read("memory", "memory.soft_limit_in_bytes"), "33554432");
    assert_eq!(read("cpu", "cpu.shares"), "512");
    assert_eq!(read("cpu", "cpu.cfs_quota_us"), "50000");
    assert_eq!(read("cpu", "cpu.cfs_period_us"), "100000");
    assert_eq!(read("pids", "pids.max"), "32");
    assert_eq!(read("cpuset", "cpuset.cpus"), "0");
    assert_eq!(read("cpuset", "cpuset.mems"), "0");
    assert_eq!(
        read("blkio", "blkio.throttle.read_bps_device"),
        format!("{}:{} 1048576", disk.0, disk.1)
    );
    let pid = capsa.state(&id)["pid"].as_i64().expect("pid");
    assert_eq!(read("pids", "cgroup.procs"), pid.to_string());

    let update = bundle.path().join("resources.json");
    std::fs::write(
        &update,
        r#"{"pids": {"limit": 64}, "memory": {"limit": 134217728}}"#,
    )
    .expect("write");
    let out = capsa.output(&["update", "--resources", &update.display().to_string(), &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(read("pids", "pids.max"), "64");
    assert_eq!(read("memory", "memory.limit_in_bytes"), "134217728");
    std::fs::write(&update, r#"{"pids": {"limit": "many"}}"#).expect("write");
    let out = capsa.output(&["update", "--resources", &update.display().to_string(), &id]);
    assert_one_line_error(&out, "pids.limit");

    let out = capsa.output(&["delete", "--force", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    capsa.assert_nothing_left(&id);
}

#[test]
fn a_seccomp_rule_returns_its_errno() {
    let capsa = Capsa::new();
    let mut bundle = sh("mkdir /tmp/x; echo status=$?; ls -d /tmp");
    bundle.edit(|c| {
        c["root"]["readonly"] = json!(false);
        c["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}],
        });
    });
    let id = unique_id("seccomp");
    let out = capsa.run(&bundle, "container", &id);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Function not implemented"),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).contains("status=1"), "{}", stdout(&out));
    assert!(stdout(&out).contains("/tmp"), "later syscalls still work");
}

#[test]
fn exit_codes_propagate() {
    let capsa = Capsa::new();
    let id = unique_id("exit");
    let out = capsa.run(&sh("exit 3"), "container", &id);
    assert_eq!(out.status.code(), Some(3));
    capsa.assert_nothing_left(&id);
}

/// Starts `capsa run` in the foreground with a process that prints "ready"
/// once it is set up; returns the child after that line.
fn run_until_ready(capsa: &Capsa, bundle: &TestBundle, id: &str) -> std::process::Child {
    let mut child = capsa
        .cmd()
        .args(["run", "--bundle"])
        .arg(bundle.path())
        .arg(id)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn capsa run");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("read");
    assert_eq!(line.trim(), "ready");
    child
}

#[test]
fn a_container_killed_by_a_signal_exits_128_plus_n() {
    let capsa = Capsa::new();
    let id = unique_id("killed");
    let bundle = sh("echo ready; exec sleep 1000");
    let mut child = run_until_ready(&capsa, &bundle, &id);
    let out = capsa.output(&["kill", &id, "KILL"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(137));
    capsa.assert_nothing_left(&id);
}

#[test]
fn run_forwards_sigterm_to_the_container() {
    let capsa = Capsa::new();
    let id = unique_id("fwd");
    let bundle = sh("trap 'exit 7' TERM; echo ready; while true; do sleep 1; done");
    let mut child = run_until_ready(&capsa, &bundle, &id);
    // SAFETY: kill with a live child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(7));
    capsa.assert_nothing_left(&id);
}

#[test]
fn lifecycle_create_start_kill_delete() {
    let capsa = Capsa::new();
    let bundle = TestBundle::busybox(&["sleep", "1000"]);
    let id = unique_id("life");
    let pid_file = bundle.path().join("pid");
    let pid_arg = pid_file.display().to_string();
    let out = capsa.create(&bundle, &["--pid-file", &pid_arg], &id);
    assert!(out.status.success(), "{}", stderr(&out));
    let state = capsa.state(&id);
    assert_eq!(state["status"], "created");
    assert_eq!(state["id"], id.as_str());
    let pid = state["pid"].as_i64().expect("pid") as i32;
    assert!(pid > 0);
    assert_eq!(
        std::fs::read_to_string(&pid_file).expect("pid file"),
        pid.to_string()
    );

    let list = stdout(&capsa.output(&["list", "--quiet"]));
    assert_eq!(list.trim(), id);

    assert!(capsa.output(&["start", &id]).status.success());
    assert_eq!(capsa.state(&id)["status"], "running");
    let ps: Vec<i32> =
        serde_json::from_slice(&capsa.output(&["ps", "--format", "json", &id]).stdout)
            .expect("ps json");
    assert_eq!(ps, vec![pid]);
    let out = capsa.output(&["start", &id]);
    assert_one_line_error(&out, "is running, not created");

    assert!(capsa.output(&["pause", &id]).status.success());
    assert_eq!(capsa.state(&id)["status"], "paused");
    assert!(capsa.output(&["resume", &id]).status.success());
    assert_eq!(capsa.state(&id)["status"], "running");

    let out = capsa.output(&["delete", &id]);
    assert_one_line_error(&out, "use --force");

    assert!(capsa.output(&["kill", &id, "SIGKILL"]).status.success());
    wait_exit(pid);
    assert_eq!(capsa.state(&id)["status"], "stopped");
    let out = capsa.output(&["delete", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_one_line_error(&capsa.output(&["state", &id]), "does not exist");
    capsa.assert_nothing_left(&id);
}

#[test]
fn hooks_run_at_their_points_with_the_state() {
    let capsa = Capsa::new();
    let mut bundle = sh("cat /tmp/started");
    let record = tempfile::tempdir().expect("tempdir");
    let prestart = record.path().join("prestart.json");
    let poststop = record.path().join("poststop.json");
    bundle.edit(|c| {
        c["root"]["readonly"] = json!(false);
        c["hooks"] = json!({
            "prestart": [{"path": "/bin/sh", "args": ["sh", "-c", format!("cat > {}", prestart.display())]}],
            "startContainer": [{"path": "/bin/sh", "args": ["sh", "-c", "echo started-inside > /tmp/started"]}],
            "poststop": [{"path": "/bin/sh", "args": ["sh", "-c", format!("cat > {}", poststop.display())]}],
        });
    });
    let out = run_ok(&capsa, &bundle);
    assert_eq!(out.trim(), "started-inside");
    let pre: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&prestart).expect("prestart ran")).expect("json");
    assert_eq!(pre["status"], "creating");
    assert!(pre["pid"].as_i64().expect("pid") > 0);
    let post: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&poststop).expect("poststop ran")).expect("json");
    assert_eq!(post["status"], "stopped");
}

#[test]
fn a_failing_hook_fails_create_and_leaves_nothing() {
    let capsa = Capsa::new();
    let mut bundle = sh("true");
    bundle.edit(|c| {
        c["hooks"] = json!({"createRuntime": [{"path": "/bin/false"}]});
    });
    let id = unique_id("hookfail");
    let out = capsa.run(&bundle, "container", &id);
    assert_one_line_error(&out, "createRuntime hook 0 (/bin/false) failed");
    capsa.assert_nothing_left(&id);
}

#[test]
fn bad_config_fields_are_named_and_leave_nothing() {
    let capsa = Capsa::new();
    type ConfigChange = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(ConfigChange, &str)> = vec![
        (
            Box::new(|c| c["process"]["user"]["uid"] = json!("root")),
            "process.user.uid",
        ),
        (
            Box::new(|c| c["root"]["path"] = json!("missing")),
            "root.path",
        ),
        (
            Box::new(|c| c["process"]["args"] = json!([])),
            "process.args",
        ),
        (
            Box::new(|c| c["process"]["args"] = json!(["/no/such/binary"])),
            "process.args",
        ),
        (
            Box::new(|c| {
                c["mounts"]
                    .as_array_mut()
                    .expect("mounts")
                    .push(json!({"destination": "/x", "type": "bogusfs", "source": "none"}))
            }),
            "mounts[",
        ),
        (
            Box::new(|c| {
                c["linux"]["namespaces"] = json!([{"type": "mount"}, {"type": "sideways"}])
            }),
            "linux.namespaces[1].type",
        ),
        (
            Box::new(|c| c["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_BOGUS"})),
            "linux.seccomp",
        ),
        (
            Box::new(|c| c["annotations"] = json!({"dev.capsa.isolation": "vm"})),
            "dev.capsa.isolation",
        ),
    ];
    for (change, needle) in cases {
        let mut bundle = sh("true");
        bundle.edit(change);
        let id = unique_id("bad");
        let out = capsa.run(&bundle, "container", &id);
        assert_one_line_error(&out, needle);
        capsa.assert_nothing_left(&id);
    }
    let bundle = sh("true");
    bundle.write_config("{ not json");
    let id = unique_id("bad");
    assert_one_line_error(&capsa.run(&bundle, "container", &id), "config.json");
    capsa.assert_nothing_left(&id);
}

#[test]
fn bad_ids_signals_and_unknown_containers_are_one_line_errors() {
    let capsa = Capsa::new();
    for args in [
        vec!["state", "nope"],
        vec!["start", "nope"],
        vec!["kill", "nope"],
        vec!["delete", "nope"],
        vec!["pause", "nope"],
    ] {
        assert_one_line_error(&capsa.output(&args), "container \"nope\" does not exist");
    }
    let bundle = TestBundle::busybox(&["sleep", "1000"]);
    let id = unique_id("dup");
    let create = |id: &str| capsa.create(&bundle, &[], id);
    assert!(create(&id).status.success());
    assert_one_line_error(&create(&id), "already exists");
    assert_one_line_error(
        &capsa.output(&["kill", &id, "FOO"]),
        "invalid signal \"FOO\"",
    );
    assert_one_line_error(&create("a/b"), "container id \"a/b\" is invalid");
    assert!(capsa.output(&["delete", "--force", &id]).status.success());
    capsa.assert_nothing_left(&id);
}

#[test]
fn without_root_capsa_refuses_with_one_line() {
    let capsa = Capsa::new();
    let bundle = sh("true");
    let id = unique_id("noroot");
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(capsa_bin())
        .arg("--root")
        .arg(capsa.root.path())
        .args(["run", "--bundle"])
        .arg(bundle.path())
        .arg(&id)
        .output()
        .expect("setpriv");
    assert_one_line_error(&out, "needs root");
    capsa.assert_nothing_left(&id);
}

#[test]
fn a_terminal_is_allocated_and_proxied_in_the_foreground() {
    let capsa = Capsa::new();
    let mut bundle = sh("tty; test -t 0 && echo stdin-is-a-tty");
    bundle.edit(|c| c["process"]["terminal"] = json!(true));
    let id = unique_id("tty");
    let command = format!(
        "{} --root {} run --bundle {} {id}",
        capsa_bin().display(),
        capsa.root.path().display(),
        bundle.path().display()
    );
    // script(1) gives capsa a terminal of its own, as an interactive user has.
    let out = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("script");
    let text = stdout(&out);
    assert!(out.status.success(), "{text} {}", stderr(&out));
    assert!(text.contains("/dev/pts/0"), "{text:?}");
    assert!(text.contains("stdin-is-a-tty"), "{text:?}");
    capsa.assert_nothing_left(&id);
}

#[test]
fn delete_force_cleans_up_after_capsa_is_killed_during_create() {
    let capsa = Capsa::new();
    let mut bundle = sh("true");
    let fifo = bundle.path().join("hook.fifo");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(status.success());
    // The hook tells us its pid, then blocks: capsa is mid-create.
    let script = format!("echo $$ > {}; exec sleep 1000", fifo.display());
    bundle.edit(|c| {
        c["hooks"] = json!({"prestart": [{"path": "/bin/sh", "args": ["sh", "-c", script]}]})
    });
    let id = unique_id("killed-create");
    let mut capsa_run = capsa
        .cmd()
        .args(["run", "--bundle"])
        .arg(bundle.path())
        .arg(&id)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let hook_pid: i32 = std::fs::read_to_string(&fifo)
        .expect("read fifo")
        .trim()
        .parse()
        .expect("hook pid");
    capsa_run.kill().expect("SIGKILL capsa");
    capsa_run.wait().expect("reap capsa");
    // SAFETY: killing the orphaned hook by the pid it reported.
    unsafe { libc::kill(hook_pid, libc::SIGKILL) };
    assert!(!cgroup_dirs(&id).is_empty(), "the cgroup exists mid-create");
    // The init notices capsa is gone (its channel closes) and exits.
    let init = capsa.state(&id);
    assert!(
        matches!(init["status"].as_str(), Some("stopped" | "creating")),
        "{init}"
    );

    let out = capsa.output(&["delete", "--force", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    capsa.assert_nothing_left(&id);
}

#[test]
fn exec_joins_a_running_container() {
    let capsa = Capsa::new();
    let mut bundle = TestBundle::busybox(&["sleep", "1000"]);
    bundle.edit(|c| c["hostname"] = json!("exec-box"));
    let id = unique_id("exec");
    assert!(capsa.create(&bundle, &[], &id).status.success());
    assert!(capsa.output(&["start", &id]).status.success());
    let init = capsa.state(&id)["pid"].as_i64().expect("pid");

    let out = capsa.output(&[
        "exec",
        "-e",
        "FOO=bar",
        "-u",
        "1000:1001",
        &id,
        "sh",
        "-c",
        "hostname; echo $FOO; id -u; id -g; readlink /proc/self/ns/pid; exit 4",
    ]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let lines: Vec<String> = stdout(&out).lines().map(String::from).collect();
    assert_eq!(lines[..4], ["exec-box", "bar", "1000", "1001"]);
    let init_pid_ns = std::fs::read_link(format!("/proc/{init}/ns/pid")).expect("ns");
    assert_eq!(
        lines[4],
        init_pid_ns.to_string_lossy(),
        "in the container's pid namespace"
    );
    let procs = std::fs::read_to_string(format!("/sys/fs/cgroup/pids/capsa/{id}/cgroup.procs"))
        .expect("cgroup.procs");
    assert_eq!(
        procs.trim(),
        init.to_string(),
        "the exec'd process left the cgroup when it exited"
    );

    assert_one_line_error(&capsa.output(&["exec", &id, "/no/such"]), "process.args");
    assert!(capsa.output(&["delete", "--force", &id]).status.success());
    assert_one_line_error(&capsa.output(&["exec", &id, "true"]), "does not exist");
    capsa.assert_nothing_left(&id);
}

/// Creates and starts `bundle` as `id` and waits until its init has exited.
fn start_until_stopped(capsa: &Capsa, bundle: &TestBundle, id: &str) {
    let out = capsa.create(bundle, &[], id);
    assert!(out.status.success(), "{}", stderr(&out));
    let pid = capsa.state(id)["pid"].as_i64().expect("pid") as i32;
    assert!(capsa.output(&["start", id]).status.success());
    wait_exit(pid);
    assert_eq!(capsa.state(id)["status"], "stopped");
}

#[test]
fn kill_of_a_stopped_container_answers_as_runc() {
    let capsa = Capsa::new();
    let id = unique_id("kill-stopped");
    start_until_stopped(&capsa, &sh("true"), &id);
    // containerd's shim sends `kill --all ID KILL` after the init exits and
    // needs it to succeed; runc 1.1 exits 0 without a word.
    let out = capsa.output(&["kill", "--all", &id, "KILL"]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(stderr(&out), "");
    // A plain kill fails as runc's does, with the words the shim takes as
    // "already gone".
    for signal in ["KILL", "TERM"] {
        let out = capsa.output(&["kill", &id, signal]);
        assert_eq!(out.status.code(), Some(1), "{}", show(&out));
        assert_one_line_error(&out, "container not running");
    }
    assert!(capsa.output(&["delete", &id]).status.success());
    capsa.assert_nothing_left(&id);
}

#[test]
fn kill_all_of_a_stopped_container_reaches_what_is_left_in_its_cgroup() {
    let capsa = Capsa::new();
    let id = unique_id("kill-left");
    // Without a pid namespace the init's exit does not end its children.
    let mut bundle = sh("sleep 1000 &");
    bundle.edit(|c| {
        let namespaces = c["linux"]["namespaces"].as_array_mut().expect("namespaces");
        namespaces.retain(|ns| ns["type"] != "pid");
    });
    start_until_stopped(&capsa, &bundle, &id);
    let left: Vec<i32> =
        serde_json::from_slice(&capsa.output(&["ps", "--format", "json", &id]).stdout)
            .expect("ps json");
    assert_eq!(left.len(), 1, "the background sleep is left: {left:?}");
    let out = capsa.output(&["kill", "--all", &id, "KILL"]);
    assert!(out.status.success(), "{}", show(&out));
    wait_exit(left[0]);
    assert!(capsa.output(&["delete", &id]).status.success());
    capsa.assert_nothing_left(&id);
}

/// A busybox bundle whose config.json is `runc spec`'s default, running
/// `args` without a terminal.
fn runc_default_bundle(args: &[&str]) -> TestBundle {
    let mut bundle = TestBundle::busybox(&["true"]);
    std::fs::remove_file(bundle.path().join("config.json")).expect("remove config.json");
    let out = std::process::Command::new("runc")
        .arg("spec")
        .arg("--bundle")
        .arg(bundle.path())
        .output()
        .expect("run runc spec (the test machines have runc)");
    assert!(out.status.success(), "runc spec: {}", show(&out));
    let text = std::fs::read(bundle.path().join("config.json")).expect("runc's config.json");
    bundle.config = serde_json::from_slice(&text).expect("json");
    bundle.edit(|c| {
        c["process"]["terminal"] = json!(false);
        c["process"]["args"] = json!(args);
    });
    bundle
}

#[test]
fn runc_default_spec_runs_skipping_ambient_capabilities_it_cannot_raise() {
    let capsa = Capsa::new();
    let bundle = runc_default_bundle(&["sh", "-c", "grep -E '^Cap(Prm|Amb)' /proc/self/status"]);
    // runc's default lists ambient capabilities but no inheritable ones.
    assert!(bundle.config["process"]["capabilities"]["inheritable"].is_null());
    let id = unique_id("runc-spec");
    let out = capsa.run(&bundle, "container", &id);
    assert!(out.status.success(), "{}", show(&out));
    // CAP_AUDIT_WRITE, CAP_KILL, CAP_NET_BIND_SERVICE are permitted; none
    // could be ambient.
    assert_eq!(
        stdout(&out),
        "CapPrm:\t0000000020000420\nCapAmb:\t0000000000000000\n"
    );
    assert_eq!(
        stderr(&out),
        "capsa: warning: process.capabilities.ambient: CAP_AUDIT_WRITE, CAP_KILL, \
         CAP_NET_BIND_SERVICE not raised: an ambient capability must also be permitted \
         and inheritable\n"
    );
    capsa.assert_nothing_left(&id);
}

#[test]
fn every_rootfs_propagation_runs_and_applies_to_the_root() {
    let capsa = Capsa::new();
    // The optional fields of the root's line in mountinfo: "shared:N" when
    // the root is shared, nothing for private (and for slave here, where the
    // master may be private).
    let mut bundle = sh("awk '$5 == \"/\" { print ($7 ~ /^shared:/) ? \"shared\" : \"not shared\" }' /proc/self/mountinfo; echo ok");
    for (propagation, root) in [
        ("shared", "shared"),
        ("rshared", "shared"),
        ("slave", "not shared"),
        ("rslave", "not shared"),
        ("private", "not shared"),
        ("rprivate", "not shared"),
    ] {
        bundle.edit(|c| c["linux"]["rootfsPropagation"] = json!(propagation));
        let id = unique_id("propagation");
        let out = capsa.run(&bundle, "container", &id);
        assert!(out.status.success(), "{propagation}: {}", show(&out));
        assert_eq!(stdout(&out), format!("{root}\nok\n"), "{propagation}");
        capsa.assert_nothing_left(&id);
    }
}

/// The host's mount table lines that mention `path`.
fn host_mounts_under(path: &std::path::Path) -> Vec<String> {
    let needle = path.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter(|l| l.contains(&needle))
        .map(String::from)
        .collect()
}

/// The host's root mount's line, which holds its propagation.
fn host_root_mount() -> String {
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/"))
        .map(String::from)
        .expect("the host's root mount")
}

fn without_mount_namespace(bundle: &mut TestBundle) {
    std::fs::write(bundle.rootfs().join("marker"), "inside the rootfs\n").expect("marker");
    bundle.edit(|c| {
        let namespaces = c["linux"]["namespaces"].as_array_mut().expect("namespaces");
        namespaces.retain(|ns| ns["type"] != "mount");
    });
}

#[test]
fn a_container_without_a_mount_namespace_runs_chrooted_and_leaves_no_mount() {
    let capsa = Capsa::new();
    let root_before = host_root_mount();
    let mut bundle = sh(
        "readlink /proc/self/ns/mnt; cat /marker; test -e /proc/self/status && echo proc; \
         touch /new 2>/dev/null || echo read-only",
    );
    without_mount_namespace(&mut bundle);
    let id = unique_id("no-mntns");
    let out = capsa.run(&bundle, "container", &id);
    assert!(out.status.success(), "{}", show(&out));
    let host_ns = std::fs::read_link("/proc/self/ns/mnt").expect("ns");
    assert_eq!(
        stdout(&out),
        format!(
            "{}\ninside the rootfs\nproc\nread-only\n",
            host_ns.display()
        )
    );
    assert_eq!(host_mounts_under(bundle.path()), Vec::<String>::new());
    assert_eq!(host_mounts_under(capsa.root.path()), Vec::<String>::new());
    assert_eq!(host_root_mount(), root_before, "the host's propagation");
    capsa.assert_nothing_left(&id);
}

#[test]
fn exec_into_a_container_without_a_mount_namespace_joins_its_root() {
    let capsa = Capsa::new();
    let mut bundle = TestBundle::busybox(&["sleep", "1000"]);
    without_mount_namespace(&mut bundle);
    let id = unique_id("no-mntns-exec");
    let out = capsa.create(&bundle, &[], &id);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(capsa.output(&["start", &id]).status.success());
    let out = capsa.output(&["exec", &id, "cat", "/marker"]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(stdout(&out), "inside the rootfs\n");
    assert!(capsa.output(&["delete", "--force", &id]).status.success());
    assert_eq!(host_mounts_under(bundle.path()), Vec::<String>::new());
    assert_eq!(host_mounts_under(capsa.root.path()), Vec::<String>::new());
    capsa.assert_nothing_left(&id);
}

#[test]
fn a_failed_create_without_a_mount_namespace_leaves_no_mount() {
    let capsa = Capsa::new();
    let mut bundle = TestBundle::busybox(&["/no/such/program"]);
    without_mount_namespace(&mut bundle);
    let id = unique_id("no-mntns-bad");
    let out = capsa.run(&bundle, "container", &id);
    assert_one_line_error(&out, "process.args");
    assert_eq!(host_mounts_under(bundle.path()), Vec::<String>::new());
    assert_eq!(host_mounts_under(capsa.root.path()), Vec::<String>::new());
    capsa.assert_nothing_left(&id);
    assert!(
        bundle.rootfs().join("bin/busybox").exists(),
        "the rootfs is intact"
    );
}

#[test]
fn block_io_weights_of_zero_are_not_set_as_docker_sends_them() {
    let capsa = Capsa::new();
    let mut bundle = sh("echo ok");
    // What `docker run` puts in every config.json when no weight is asked for.
    bundle.edit(|c| c["linux"]["resources"]["blockIO"] = json!({"weight": 0, "leafWeight": 0}));
    let id = unique_id("blkio-zero");
    let out = capsa.run(&bundle, "container", &id);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(stdout(&out), "ok\n");
    capsa.assert_nothing_left(&id);
}
