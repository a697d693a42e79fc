//! config.json from the bundle to the guest: the runtime's parser and
//! validation (`runtime/src/spec.rs`), the backends' checks (the container
//! backend compiles `linux.seccomp`, not loading it), mount destinations
//! resolved inside the rootfs by `secure_join`, the microVM backend's
//! `VmConfig`, and the process spec as the VMM encodes it and the guest
//! decodes it, which must round-trip.
//!
//! The bundle is a temporary directory whose rootfs holds symlinks that
//! point out of it, so destination resolution meets them.

#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use capsa::backend::Backend;
use capsa::container::ContainerBackend;
use capsa::microvm::{self, MicroVmBackend};
use capsa::paths::secure_join;
use capsa::spec::{self, parse_options, Bundle};
use capsa_fuzz::sandbox::Sandbox;
use libfuzzer_sys::fuzz_target;

/// The bundle directory, holding `rootfs/` (the sandbox's root, with
/// symlinks out of it).
fn bundle() -> &'static Path {
    static SANDBOX: OnceLock<(Sandbox, PathBuf)> = OnceLock::new();
    let (_, dir) = SANDBOX.get_or_init(|| {
        let sandbox = Sandbox::new();
        let bundle = sandbox.root().join("dir");
        std::fs::create_dir_all(bundle.join("rootfs/etc")).unwrap();
        std::os::unix::fs::symlink("../../..", bundle.join("rootfs/escape")).unwrap();
        std::os::unix::fs::symlink("/etc", bundle.join("rootfs/abs")).unwrap();
        std::os::unix::fs::symlink("loop", bundle.join("rootfs/loop")).unwrap();
        (sandbox, bundle)
    });
    dir
}

fuzz_target!(|text: &[u8]| {
    let dir = bundle();
    let spec = match spec::parse(&dir.join("config.json"), text) {
        Ok(spec) => spec,
        Err(err) => {
            let message = capsa::error_chain(&err);
            if capsa_fuzz::verbose() {
                eprintln!("parse: {message}");
            }
            return;
        }
    };
    let rootfs = match spec::validate(&spec, dir) {
        Ok(rootfs) => rootfs,
        Err(err) => {
            let message = capsa::error_chain(&err);
            if capsa_fuzz::verbose() {
                eprintln!("validate: {message}");
            }
            return;
        }
    };
    for m in spec.mounts().iter().flatten() {
        let _ = parse_options(m.options().as_deref().unwrap_or_default());
        if let Ok(resolved) = secure_join(&rootfs, m.destination()) {
            assert!(
                resolved.starts_with(&rootfs),
                "{} resolved to {}, outside the rootfs",
                m.destination().display(),
                resolved.display()
            );
        }
    }
    let bundle = Bundle {
        dir: dir.to_path_buf(),
        spec: spec.clone(),
        rootfs: rootfs.clone(),
    };
    let _ = bundle.isolation_annotation();
    let checked = ContainerBackend.check(&bundle);
    if capsa_fuzz::verbose() {
        eprintln!("container check: {checked:?}");
    }
    let _ = ContainerBackend.namespaces(&spec);
    let _ = MicroVmBackend.cgroup_resources(&spec);

    let Ok(config) = microvm::vm_config(&spec, &rootfs, dir) else {
        return;
    };
    // Devices 0-2 are the consoles and the rootfs; shared dirs follow.
    let mounts: Vec<_> = config
        .mounts
        .iter()
        .enumerate()
        .map(|(i, m)| (3 + i as u32, m))
        .collect();
    let Ok(encoded) = capsa_vmm::vm::encode_process_spec(&config.process, &mounts) else {
        return;
    };
    if capsa_fuzz::verbose() {
        eprintln!(
            "process spec: {} bytes, {} shared dirs",
            encoded.len(),
            mounts.len()
        );
    }
    let (decoded, malformed) = capsa_guest::kernel::spec::ProcessSpec::decode(&encoded);
    assert!(!malformed, "the guest cannot decode the VMM's process spec");
    let p = &config.process;
    let bytes = |v: &[String]| v.iter().map(|s| s.as_bytes().to_vec()).collect::<Vec<_>>();
    assert_eq!(decoded.args, bytes(&p.args));
    assert_eq!(decoded.env, bytes(&p.env));
    assert_eq!(decoded.cwd, p.cwd.as_bytes());
    assert_eq!(decoded.hostname, p.hostname.as_bytes());
    assert_eq!(decoded.domainname, p.domainname.as_bytes());
    assert_eq!((decoded.uid, decoded.gid), (p.uid, p.gid));
    assert_eq!(decoded.groups, p.additional_gids);
    assert_eq!(decoded.umask, p.umask.map_or(0o022, |u| u & 0o777));
    for r in &p.rlimits {
        if let Some(&got) = decoded.rlimits.get(r.resource as usize) {
            assert_eq!(got, (r.soft, r.hard), "rlimit {}", r.resource);
        }
    }
    assert_eq!(decoded.no_new_privileges, p.no_new_privileges);
    assert_eq!(decoded.pids_limit, p.pids_limit);
    assert_eq!(decoded.mounts.len(), mounts.len());
    for (got, (device, dir)) in decoded.mounts.iter().zip(&mounts) {
        assert_eq!(got.device, *device);
        assert_eq!(got.readonly, dir.readonly);
        assert_eq!(got.destination, dir.destination.as_bytes());
    }
});
