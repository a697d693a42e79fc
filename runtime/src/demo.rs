//! The built-in demo bundle: a busybox-static root filesystem (from the
//! host's Debian busybox-static) and capsa's default config, not on a terminal.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;

pub const BUSYBOX: &str = "/bin/busybox";

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{BUSYBOX} is missing or not runnable (install Debian's busybox-static)")]
    NoBusybox,
    #[error("{0}: already exists")]
    Exists(String),
    #[error("{path}: cannot write the demo bundle")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Writes `<dir>/config.json` and `<dir>/rootfs` running `args`.
pub fn build_bundle(dir: &Path, args: &[String]) -> Result<(), DemoError> {
    if dir.join("config.json").exists() {
        return Err(DemoError::Exists(
            dir.join("config.json").display().to_string(),
        ));
    }
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| DemoError::Io { path, source }
    };
    let list = Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .map_err(|_| DemoError::NoBusybox)?;
    if !list.status.success() {
        return Err(DemoError::NoBusybox);
    }
    let rootfs = dir.join("rootfs");
    let bin = rootfs.join("bin");
    fs::create_dir_all(&bin).map_err(io(&bin))?;
    for sub in ["proc", "sys", "dev", "tmp", "etc", "root"] {
        let path = rootfs.join(sub);
        fs::create_dir_all(&path).map_err(io(&path))?;
    }
    fs::copy(BUSYBOX, bin.join("busybox")).map_err(io(&bin))?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" && !applet.is_empty() {
            let link = bin.join(applet);
            symlink("busybox", &link).map_err(io(&link))?;
        }
    }
    let etc = rootfs.join("etc");
    fs::write(
        etc.join("passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )
    .map_err(io(&etc))?;
    fs::write(etc.join("group"), "root:x:0:\nnogroup:x:65534:\n").map_err(io(&etc))?;

    let mut spec = crate::spec::default_spec();
    if let Some(mut process) = spec.process().clone() {
        process.set_terminal(Some(false));
        if !args.is_empty() {
            process.set_args(Some(args.to_vec()));
        }
        spec.set_process(Some(process));
    }
    let json = serde_json::to_string_pretty(&spec).unwrap_or_default();
    let config = dir.join("config.json");
    fs::write(&config, json + "\n").map_err(io(&config))
}
