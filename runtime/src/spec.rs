//! Loading and validating a bundle's config.json, what its values mean to
//! the kernel (mount options, rlimits) for both backends, the isolation it
//! asks for, and the default spec of `capsa spec`.
//!
//! Validation happens before anything is created, so bad input never leaves
//! a state directory, cgroup or process behind.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use oci_spec::runtime::{LinuxNamespaceType, PosixRlimitType, Process, Spec};
use serde::{Deserialize, Serialize};

/// Annotation that selects the isolation backend from config.json.
pub const ISOLATION_ANNOTATION: &str = "dev.capsa.isolation";
/// `"true"` backs a microVM's RAM with transparent huge pages: much less
/// time per newly touched page under software virtualization, at the cost
/// of host memory in 2 MiB units (see docs/benchmarks.md).
pub const HUGEPAGES_ANNOTATION: &str = "dev.capsa.hugepages";

/// The backend a container runs under; capsa records it in the state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// Linux namespaces and cgroups; the process shares the host kernel.
    #[default]
    Container,
    /// A KVM microVM with capsa's own guest kernel.
    Microvm,
}

/// The capabilities a set of `process.capabilities` names (unknown names,
/// which validation reports, left out).
pub fn capability_set(set: Option<&oci_spec::runtime::Capabilities>) -> HashSet<caps::Capability> {
    set.into_iter()
        .flatten()
        .filter_map(|c| format!("CAP_{c}").parse::<caps::Capability>().ok())
        .collect()
}

/// The program name that makes microVMs the default: a runtime handler
/// (containerd's runc shim `BinaryName`, a Kubernetes RuntimeClass, a
/// docker or podman runtime) can only name a binary, so a link of this
/// name to capsa is how one chooses microVMs without annotations.
pub const MICROVM_PROGRAM: &str = "capsa-microvm";

impl Isolation {
    /// The default backend of a capsa invoked as `program` (its argv[0]).
    pub fn for_program(program: &std::ffi::OsStr) -> Isolation {
        let name = Path::new(program).file_name().unwrap_or_default();
        if name == MICROVM_PROGRAM {
            Isolation::Microvm
        } else {
            Isolation::Container
        }
    }
}

impl std::str::FromStr for Isolation {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "container" => Ok(Isolation::Container),
            "microvm" => Ok(Isolation::Microvm),
            _ => Err(()),
        }
    }
}

impl std::fmt::Display for Isolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Isolation::Container => "container",
            Isolation::Microvm => "microvm",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{path}: cannot read the bundle's config")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {field}: {message}")]
    Parse {
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("{field}: not supported by capsa")]
    Unsupported { field: String },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// A parsed bundle: its directory, its config and the absolute rootfs path.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub spec: Spec,
    pub rootfs: PathBuf,
}

impl Bundle {
    /// Reads and validates `<dir>/config.json`.
    pub fn load(dir: &Path) -> Result<Bundle, SpecError> {
        let dir = fs::canonicalize(dir).map_err(|source| SpecError::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join("config.json");
        let text = fs::read(&path).map_err(|source| SpecError::Read {
            path: path.clone(),
            source,
        })?;
        let spec = parse(&path, &text)?;
        let rootfs = validate(&spec, &dir)?;
        Ok(Bundle { dir, spec, rootfs })
    }

    /// The backend named by the `dev.capsa.isolation` annotation, if any.
    pub fn isolation_annotation(&self) -> Result<Option<Isolation>, SpecError> {
        let Some(value) = self
            .spec
            .annotations()
            .as_ref()
            .and_then(|a| a.get(ISOLATION_ANNOTATION))
        else {
            return Ok(None);
        };
        value.parse().map(Some).map_err(|_| {
            invalid(
                format!("annotations.{ISOLATION_ANNOTATION}"),
                format!("unknown isolation {value:?} (expected container or microvm)"),
            )
        })
    }
}

/// The `dev.capsa.hugepages` annotation of `spec` (false when absent).
pub fn hugepages(spec: &Spec) -> Result<bool, SpecError> {
    match spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(HUGEPAGES_ANNOTATION))
        .map(String::as_str)
    {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(invalid(
            format!("annotations.{HUGEPAGES_ANNOTATION}"),
            format!("{other:?} is not true or false"),
        )),
    }
}

/// Mount flags and what else a mount's `options` say.
#[derive(Debug, PartialEq, Eq)]
pub struct MountOptions {
    pub flags: MsFlags,
    /// Flags cleared by an explicit option ("rw", "suid", ...), kept so a
    /// bind remount does not add them back.
    pub cleared: MsFlags,
    pub propagation: MsFlags,
    pub bind: bool,
    pub data: Vec<String>,
}

/// Parses mount options as runc does: known flags become MS_* bits, the
/// rest is passed to the filesystem as data.
pub fn parse_options(options: &[String]) -> MountOptions {
    let mut parsed = MountOptions {
        flags: MsFlags::empty(),
        cleared: MsFlags::empty(),
        propagation: MsFlags::empty(),
        bind: false,
        data: Vec::new(),
    };
    for option in options {
        let (set, clear): (MsFlags, MsFlags) = match option.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
            "bind" => {
                parsed.bind = true;
                (MsFlags::MS_BIND, MsFlags::empty())
            }
            "rbind" => {
                parsed.bind = true;
                (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty())
            }
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable"
            | "runbindable" => {
                parsed.propagation |= propagation_flags(option).unwrap_or(MsFlags::empty());
                continue;
            }
            // runc-specific options capsa does not need to act on.
            "tmpcopyup" | "idmap" | "ridmap" => continue,
            _ => {
                parsed.data.push(option.clone());
                continue;
            }
        };
        parsed.flags = (parsed.flags | set) & !clear;
        parsed.cleared = (parsed.cleared | clear) & !set;
    }
    parsed
}

pub fn propagation_flags(name: &str) -> Option<MsFlags> {
    Some(match name {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => return None,
    })
}

/// The kernel's number for an rlimit type (`setrlimit`, and the guest's
/// process spec).
pub fn rlimit_resource(typ: PosixRlimitType) -> libc::__rlimit_resource_t {
    match typ {
        PosixRlimitType::RlimitCpu => libc::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => libc::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => libc::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => libc::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => libc::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => libc::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => libc::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => libc::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => libc::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => libc::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => libc::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => libc::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => libc::RLIMIT_RTTIME,
    }
}

/// Parses config.json, naming the offending field on error.
pub fn parse(path: &Path, text: &[u8]) -> Result<Spec, SpecError> {
    let mut deserializer = serde_json::Deserializer::from_slice(text);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let field = err.path().to_string();
        SpecError::Parse {
            path: path.to_path_buf(),
            field: if field == "." {
                "(document)".into()
            } else {
                field
            },
            message: err.into_inner().to_string(),
        }
    })
}

/// Checks what serde cannot: values, combinations, referenced paths.
/// Returns the absolute rootfs path.
pub fn validate(spec: &Spec, bundle: &Path) -> Result<PathBuf, SpecError> {
    if !spec.version().starts_with("1.") {
        return Err(invalid(
            "ociVersion",
            format!("{:?} is not a 1.x runtime-spec version", spec.version()),
        ));
    }
    // Checked in both modes, so a bundle is accepted or refused whichever
    // isolation runs it.
    hugepages(spec)?;
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| invalid("root", "missing"))?;
    let rootfs = bundle.join(root.path());
    match fs::metadata(&rootfs) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(invalid(
                "root.path",
                format!("{} is not a directory", rootfs.display()),
            ))
        }
        Err(_) => {
            return Err(invalid(
                "root.path",
                format!("{} does not exist", rootfs.display()),
            ))
        }
    }

    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| invalid("process", "missing"))?;
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(invalid("process.args", "must not be empty"));
    }
    if !process.cwd().is_absolute() {
        return Err(invalid(
            "process.cwd",
            format!("{} is not an absolute path", process.cwd().display()),
        ));
    }
    if let Some(env) = process.env() {
        for (i, var) in env.iter().enumerate() {
            if !var.contains('=') {
                return Err(invalid(
                    format!("process.env[{i}]"),
                    format!("{var:?} is not KEY=VALUE"),
                ));
            }
        }
    }
    if let Some(rlimits) = process.rlimits() {
        let mut seen = HashSet::new();
        for (i, rlimit) in rlimits.iter().enumerate() {
            if !seen.insert(rlimit.typ().to_string()) {
                return Err(invalid(
                    format!("process.rlimits[{i}].type"),
                    format!("{} is given twice", rlimit.typ()),
                ));
            }
            if rlimit.soft() > rlimit.hard() {
                return Err(invalid(
                    format!("process.rlimits[{i}]"),
                    "soft limit exceeds hard limit",
                ));
            }
        }
    }
    if process
        .apparmor_profile()
        .as_ref()
        .is_some_and(|p| !p.is_empty())
    {
        return Err(SpecError::Unsupported {
            field: "process.apparmorProfile".into(),
        });
    }
    if process
        .selinux_label()
        .as_ref()
        .is_some_and(|p| !p.is_empty())
    {
        return Err(SpecError::Unsupported {
            field: "process.selinuxLabel".into(),
        });
    }
    if process.scheduler().is_some() {
        return Err(SpecError::Unsupported {
            field: "process.scheduler".into(),
        });
    }
    if process.io_priority().is_some() {
        return Err(SpecError::Unsupported {
            field: "process.ioPriority".into(),
        });
    }

    if let Some(mounts) = spec.mounts() {
        for (i, mount) in mounts.iter().enumerate() {
            if !mount.destination().is_absolute() {
                return Err(invalid(
                    format!("mounts[{i}].destination"),
                    format!("{} is not an absolute path", mount.destination().display()),
                ));
            }
        }
    }

    if let Some(linux) = spec.linux() {
        validate_linux(linux)?;
    }
    Ok(rootfs)
}

fn validate_linux(linux: &oci_spec::runtime::Linux) -> Result<(), SpecError> {
    let namespaces = linux.namespaces().as_deref().unwrap_or_default();
    let mut seen = HashSet::new();
    for (i, ns) in namespaces.iter().enumerate() {
        if !seen.insert(ns.typ()) {
            return Err(invalid(
                format!("linux.namespaces[{i}].type"),
                format!("{} is given twice", ns.typ()),
            ));
        }
        if ns.typ() == LinuxNamespaceType::Time {
            return Err(SpecError::Unsupported {
                field: format!("linux.namespaces[{i}] (time)"),
            });
        }
        if let Some(path) = ns.path() {
            if !path.exists() {
                return Err(invalid(
                    format!("linux.namespaces[{i}].path"),
                    format!("{} does not exist", path.display()),
                ));
            }
        }
    }
    let has_userns = seen.contains(&LinuxNamespaceType::User);
    let has_maps = linux.uid_mappings().as_ref().is_some_and(|m| !m.is_empty())
        || linux.gid_mappings().as_ref().is_some_and(|m| !m.is_empty());
    if has_maps && !has_userns {
        return Err(invalid(
            "linux.uidMappings",
            "mappings need a user namespace in linux.namespaces",
        ));
    }
    if linux.sysctl().as_ref().is_some_and(|s| !s.is_empty())
        && !seen.contains(&LinuxNamespaceType::Mount)
    {
        return Err(invalid("linux.sysctl", "needs a mount namespace"));
    }
    if let Some(propagation) = linux.rootfs_propagation() {
        if !matches!(
            propagation.as_str(),
            "" | "private"
                | "rprivate"
                | "slave"
                | "rslave"
                | "shared"
                | "rshared"
                | "unbindable"
                | "runbindable"
        ) {
            return Err(invalid(
                "linux.rootfsPropagation",
                format!("unknown propagation {propagation:?}"),
            ));
        }
    }
    if let Some(devices) = linux.devices() {
        for (i, device) in devices.iter().enumerate() {
            if !device.path().is_absolute() || !device.path().starts_with("/dev") {
                return Err(invalid(
                    format!("linux.devices[{i}].path"),
                    format!("{} is not under /dev", device.path().display()),
                ));
            }
        }
    }
    for (field, present) in [
        ("linux.intelRdt", linux.intel_rdt().is_some()),
        ("linux.personality", linux.personality().is_some()),
        ("linux.memoryPolicy", linux.memory_policy().is_some()),
        ("linux.timeOffsets", linux.time_offsets().is_some()),
        (
            "linux.netDevices",
            linux.net_devices().as_ref().is_some_and(|d| !d.is_empty()),
        ),
    ] {
        if present {
            return Err(SpecError::Unsupported {
                field: field.into(),
            });
        }
    }
    Ok(())
}

/// The config.json `capsa spec` writes, like runc's: `sh` on a terminal, the
/// usual namespaces, mounts, masked and readonly paths and capabilities.
pub fn default_spec() -> Spec {
    let mut spec = Spec::default();
    spec.set_hostname(Some("capsa".into()));
    let mut process = Process::default();
    process.set_terminal(Some(true));
    spec.set_process(Some(process));
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_bundle(config: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir(dir.path().join("rootfs")).expect("rootfs");
        fs::write(dir.path().join("config.json"), config).expect("config");
        dir
    }

    fn default_json() -> serde_json::Value {
        serde_json::to_value(default_spec()).expect("serialize")
    }

    #[test]
    fn default_spec_is_valid_and_round_trips() {
        let dir = write_bundle(&default_json().to_string());
        let bundle = Bundle::load(dir.path()).expect("valid");
        assert_eq!(
            bundle.rootfs,
            dir.path().canonicalize().expect("c").join("rootfs")
        );
        let process = bundle.spec.process().as_ref().expect("process");
        assert_eq!(process.args().as_deref(), Some(&["sh".to_string()][..]));
        assert_eq!(process.terminal(), Some(true));
    }

    #[test]
    fn a_type_error_names_the_field() {
        let mut json = default_json();
        json["process"]["user"]["uid"] = serde_json::json!("root");
        let dir = write_bundle(&json.to_string());
        let err = Bundle::load(dir.path()).expect_err("bad uid").to_string();
        assert!(err.contains("process.user.uid"), "{err}");
    }

    #[test]
    fn a_missing_rootfs_names_root_path() {
        let mut json = default_json();
        json["root"]["path"] = serde_json::json!("nope");
        let dir = write_bundle(&json.to_string());
        let err = Bundle::load(dir.path()).expect_err("no rootfs").to_string();
        assert!(err.starts_with("root.path: "), "{err}");
        assert!(err.contains("nope does not exist"), "{err}");
    }

    #[test]
    fn empty_args_and_relative_cwd_are_rejected() {
        let mut json = default_json();
        json["process"]["args"] = serde_json::json!([]);
        let dir = write_bundle(&json.to_string());
        let err = Bundle::load(dir.path())
            .expect_err("empty args")
            .to_string();
        assert_eq!(err, "process.args: must not be empty");

        let mut json = default_json();
        json["process"]["cwd"] = serde_json::json!("tmp");
        let dir = write_bundle(&json.to_string());
        let err = Bundle::load(dir.path()).expect_err("relative").to_string();
        assert_eq!(err, "process.cwd: tmp is not an absolute path");
    }

    #[test]
    fn the_program_name_capsa_microvm_defaults_to_microvms() {
        let of = |name: &str| Isolation::for_program(std::ffi::OsStr::new(name));
        assert_eq!(of("/usr/local/bin/capsa-microvm"), Isolation::Microvm);
        assert_eq!(of("capsa-microvm"), Isolation::Microvm);
        assert_eq!(of("/usr/local/bin/capsa"), Isolation::Container);
        assert_eq!(of("/opt/capsa-microvm/capsa"), Isolation::Container);
    }

    #[test]
    fn unknown_namespace_isolation_and_hugepages_are_rejected() {
        let mut json = default_json();
        json["linux"]["namespaces"] = serde_json::json!([{"type": "bogus"}]);
        let dir = write_bundle(&json.to_string());
        let err = Bundle::load(dir.path()).expect_err("bogus ns").to_string();
        assert!(err.contains("linux.namespaces[0].type"), "{err}");

        let mut json = default_json();
        json["annotations"] = serde_json::json!({ISOLATION_ANNOTATION: "vm"});
        let dir = write_bundle(&json.to_string());
        let bundle = Bundle::load(dir.path()).expect("loads");
        let err = bundle.isolation_annotation().expect_err("bad").to_string();
        assert!(err.starts_with("annotations.dev.capsa.isolation"), "{err}");
        json["annotations"] = serde_json::json!({HUGEPAGES_ANNOTATION: "yes"});
        let dir = write_bundle(&json.to_string());
        let err = Bundle::load(dir.path()).expect_err("bad").to_string();
        assert!(
            err.starts_with("annotations.dev.capsa.hugepages: "),
            "{err}"
        );
        json["annotations"] = serde_json::json!({HUGEPAGES_ANNOTATION: "true"});
        let spec: Spec = serde_json::from_value(json.clone()).expect("spec");
        assert_eq!(hugepages(&spec).ok(), Some(true));
    }

    #[test]
    fn options_become_flags_and_data() {
        let opts: Vec<String> = [
            "nosuid",
            "noexec",
            "ro",
            "mode=755",
            "size=65536k",
            "rslave",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let parsed = parse_options(&opts);
        assert_eq!(
            parsed.flags,
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY
        );
        assert_eq!(parsed.data, vec!["mode=755", "size=65536k"]);
        assert_eq!(parsed.propagation, MsFlags::MS_SLAVE | MsFlags::MS_REC);
        assert!(!parsed.bind);

        let parsed = parse_options(&["rbind".to_string(), "ro".into(), "rw".into()]);
        assert!(parsed.bind);
        assert_eq!(parsed.flags, MsFlags::MS_BIND | MsFlags::MS_REC);
        assert_eq!(parsed.cleared, MsFlags::MS_RDONLY);
    }

    #[test]
    fn unsupported_fields_are_named() {
        let mut json = default_json();
        json["linux"]["intelRdt"] = serde_json::json!({"closID": "x"});
        let dir = write_bundle(&json.to_string());
        let err = Bundle::load(dir.path()).expect_err("rdt").to_string();
        assert_eq!(err, "linux.intelRdt: not supported by capsa");
    }
}
