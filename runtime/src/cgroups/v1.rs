//! cgroup v1 (and the v1 side of hybrid hosts): one mount per controller
//! under the root, one container directory in each.

use std::fs;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType, LinuxResources, LinuxThrottleDevice};

use super::{
    delete_hierarchy, mkdir_path, read_file, set, wait_until, write_file, CgroupError, Hierarchy,
};

/// Controllers capsa puts the container into. Named hierarchies
/// (`name=systemd`) and the hybrid `unified` mount are not ours to use.
const CONTROLLERS: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "blkio",
    "pids",
    "net_cls",
    "net_prio",
    "hugetlb",
    "perf_event",
    "rdma",
    "misc",
];

/// The controller hierarchies mounted under `root`. Co-mounted controllers
/// (`cpu,cpuacct` with `cpu` and `cpuacct` symlinks) count once.
pub fn hierarchies(root: &Path) -> Result<Vec<(Vec<String>, PathBuf)>, CgroupError> {
    let entries = fs::read_dir(root).map_err(|e| CgroupError::Read(root.into(), e))?;
    let mut found: Vec<(Vec<String>, PathBuf)> = Vec::new();
    let mut names: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    names.sort();
    for path in names {
        // Symlinks are followed: the mount behind them is what counts.
        let Ok(real) = fs::canonicalize(&path) else {
            continue;
        };
        if !real.is_dir()
            || found
                .iter()
                .any(|(_, p)| fs::canonicalize(p).ok() == Some(real.clone()))
        {
            continue;
        }
        let Some(name) = real.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let controllers: Vec<String> = name.split(',').map(str::to_string).collect();
        if controllers
            .iter()
            .all(|c| CONTROLLERS.contains(&c.as_str()))
        {
            found.push((controllers, path));
        }
    }
    if found.is_empty() {
        return Err(CgroupError::NoHierarchy(root.into()));
    }
    Ok(found)
}

/// Creates `relative` in every controller hierarchy under `root`.
pub(super) fn create(root: &Path, relative: &Path) -> Result<Vec<Hierarchy>, CgroupError> {
    let mut done: Vec<Hierarchy> = Vec::new();
    for (controllers, mount) in hierarchies(root)? {
        let is_cpuset = controllers.iter().any(|c| c == "cpuset");
        let mut h = Hierarchy {
            controllers,
            root: mount.clone(),
            path: PathBuf::new(),
            created: Vec::new(),
        };
        let res = mkdir_path(&mount, relative, &mut h.created, |_| Ok(())).and_then(|path| {
            if is_cpuset {
                fill_cpusets(&mount, relative)?;
            }
            Ok(path)
        });
        match res {
            Ok(path) => {
                h.path = path;
                done.push(h);
            }
            Err(e) => {
                done.push(h);
                for h in &done {
                    let _ = delete_hierarchy(h);
                }
                return Err(e);
            }
        }
    }
    Ok(done)
}

/// A new cpuset starts with empty cpus/mems and accepts no task until they
/// are filled in. Every empty one along the path is filled from its parent,
/// top down, not only those made here: a parent another capsa has just made
/// may still be empty (as runc does for parents).
fn fill_cpusets(mount: &Path, relative: &Path) -> Result<(), CgroupError> {
    let mut dir = mount.to_path_buf();
    for c in relative.components() {
        dir.push(c);
        inherit_cpuset(&dir)?;
    }
    Ok(())
}

fn inherit_cpuset(dir: &Path) -> Result<(), CgroupError> {
    let Some(parent) = dir.parent() else {
        return Ok(());
    };
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let own = dir.join(file);
        if !own.exists() || !read_file(&own)?.trim().is_empty() {
            continue;
        }
        let value = read_file(&parent.join(file))?;
        let value = value.trim();
        if !value.is_empty() {
            write_file(&own, value, "initialising a new cpuset cgroup")?;
        }
    }
    Ok(())
}

fn dir<'a>(hs: &'a [Hierarchy], controller: &str, field: &str) -> Result<&'a Path, CgroupError> {
    hs.iter()
        .find(|h| h.has(controller))
        .map(|h| h.path.as_path())
        .ok_or_else(|| CgroupError::Unsupported {
            field: field.into(),
            detail: format!("the {controller} cgroup controller is not mounted"),
        })
}

/// Applies the set fields of `r`.
pub(super) fn apply(hs: &[Hierarchy], r: &LinuxResources) -> Result<(), CgroupError> {
    memory(hs, r)?;
    cpu(hs, r)?;
    if let Some(p) = r.pids() {
        let d = dir(hs, "pids", "linux.resources.pids.limit")?;
        let v = if p.limit() > 0 {
            p.limit().to_string()
        } else {
            "max".into()
        };
        set(d, "pids.max", &v, "linux.resources.pids.limit")?;
    }
    blkio(hs, r)?;
    for (i, l) in r.hugepage_limits().iter().flatten().enumerate() {
        let field = format!("linux.resources.hugepageLimits[{i}]");
        let d = dir(hs, "hugetlb", &field)?;
        let file = format!("hugetlb.{}.limit_in_bytes", l.page_size());
        check_component(&file, &field)?;
        set(d, &file, &l.limit().to_string(), &field)?;
    }
    if let Some(n) = r.network() {
        if let Some(id) = n.class_id() {
            let field = "linux.resources.network.classID";
            set(
                dir(hs, "net_cls", field)?,
                "net_cls.classid",
                &id.to_string(),
                field,
            )?;
        }
        for (i, p) in n.priorities().iter().flatten().enumerate() {
            let field = format!("linux.resources.network.priorities[{i}]");
            let v = format!("{} {}", p.name(), p.priority());
            set(
                dir(hs, "net_prio", &field)?,
                "net_prio.ifpriomap",
                &v,
                &field,
            )?;
        }
    }
    if let Some(rdma) = r.rdma() {
        for (dev, l) in rdma {
            let field = format!("linux.resources.rdma.{dev}");
            set(
                dir(hs, "rdma", &field)?,
                "rdma.max",
                &super::rdma_line(dev, l),
                &field,
            )?;
        }
    }
    if r.unified().as_ref().is_some_and(|u| !u.is_empty()) {
        return Err(CgroupError::Unsupported {
            field: "linux.resources.unified".into(),
            detail: "it needs cgroup v2 and this host uses cgroup v1".into(),
        });
    }
    if let Some(rules) = r.devices() {
        if !rules.is_empty() {
            devices(dir(hs, "devices", "linux.resources.devices")?, rules)?;
        }
    }
    Ok(())
}

fn check_component(file: &str, field: &str) -> Result<(), CgroupError> {
    if file.contains('/') {
        return Err(CgroupError::InvalidValue {
            field: field.into(),
            reason: format!("{file:?} is not a control file name"),
        });
    }
    Ok(())
}

/// Byte limits: -1 is unlimited, 0 means unset (as in runc), others must be
/// positive.
fn bytes(v: Option<i64>, field: &str) -> Result<Option<i64>, CgroupError> {
    match v {
        None | Some(0) => Ok(None),
        Some(n) if n == -1 || n > 0 => Ok(Some(n)),
        Some(n) => Err(CgroupError::InvalidValue {
            field: field.into(),
            reason: format!("{n} is neither a byte count nor -1 (unlimited)"),
        }),
    }
}

fn memory(hs: &[Hierarchy], r: &LinuxResources) -> Result<(), CgroupError> {
    let Some(m) = r.memory() else { return Ok(()) };
    const LIMIT: &str = "linux.resources.memory.limit";
    const SWAP: &str = "linux.resources.memory.swap";
    let limit = bytes(m.limit(), LIMIT)?;
    let mut swap = bytes(m.swap(), SWAP)?;
    let any = limit.is_some()
        || swap.is_some()
        || m.reservation().is_some()
        || m.swappiness().is_some()
        || m.disable_oom_killer().is_some();
    if !any {
        // kernel/kernelTCP are ignored: kernel memory accounting is gone
        // from current kernels. useHierarchy is always on.
        return Ok(());
    }
    let d = dir(hs, "memory", "linux.resources.memory")?;
    const MEM: &str = "memory.limit_in_bytes";
    const MEMSW: &str = "memory.memsw.limit_in_bytes";
    // Unlimited memory with swap unset means unlimited memory+swap too (runc),
    // when the kernel accounts swap at all.
    if limit == Some(-1) && swap.is_none() && d.join(MEMSW).exists() {
        swap = Some(-1);
    }
    match (limit, swap) {
        (Some(l), Some(s)) => {
            if l > 0 && s > 0 && s < l {
                return Err(CgroupError::InvalidValue {
                    field: SWAP.into(),
                    reason: format!(
                        "{s} is below memory.limit {l} (swap is the memory+swap limit)"
                    ),
                });
            }
            // The kernel wants memsw >= memory at every moment: raise memsw
            // first when the new total exceeds the current memory limit.
            let current: i64 = read_file(&d.join(MEM))?.trim().parse().unwrap_or(i64::MAX);
            if s == -1 || current < s {
                set(d, MEMSW, &s.to_string(), SWAP)?;
                set(d, MEM, &l.to_string(), LIMIT)?;
            } else {
                set(d, MEM, &l.to_string(), LIMIT)?;
                set(d, MEMSW, &s.to_string(), SWAP)?;
            }
        }
        (Some(l), None) => set(d, MEM, &l.to_string(), LIMIT)?,
        (None, Some(s)) => set(d, MEMSW, &s.to_string(), SWAP)?,
        (None, None) => {}
    }
    if let Some(v) = m.reservation() {
        let field = "linux.resources.memory.reservation";
        set(d, "memory.soft_limit_in_bytes", &v.to_string(), field)?;
    }
    if let Some(v) = m.swappiness() {
        let field = "linux.resources.memory.swappiness";
        if v > 100 {
            return Err(CgroupError::InvalidValue {
                field: field.into(),
                reason: format!("{v} is out of range (0..100)"),
            });
        }
        set(d, "memory.swappiness", &v.to_string(), field)?;
    }
    if let Some(v) = m.disable_oom_killer() {
        let field = "linux.resources.memory.disableOOMKiller";
        set(d, "memory.oom_control", if v { "1" } else { "0" }, field)?;
    }
    Ok(())
}

fn cpu(hs: &[Hierarchy], r: &LinuxResources) -> Result<(), CgroupError> {
    let Some(c) = r.cpu() else { return Ok(()) };
    let cpu_dir = |field: &str| dir(hs, "cpu", field);
    if let Some(v) = c.shares() {
        let f = "linux.resources.cpu.shares";
        set(cpu_dir(f)?, "cpu.shares", &v.to_string(), f)?;
    }
    const PERIOD: &str = "linux.resources.cpu.period";
    const QUOTA: &str = "linux.resources.cpu.quota";
    match (c.period(), c.quota()) {
        (Some(p), Some(q)) => {
            let d = cpu_dir(PERIOD)?;
            // A shorter period can be refused while the old quota exceeds
            // it; the other order then works.
            if set(d, "cpu.cfs_period_us", &p.to_string(), PERIOD).is_err() {
                set(d, "cpu.cfs_quota_us", &q.to_string(), QUOTA)?;
                set(d, "cpu.cfs_period_us", &p.to_string(), PERIOD)?;
            } else {
                set(d, "cpu.cfs_quota_us", &q.to_string(), QUOTA)?;
            }
        }
        (Some(p), None) => set(
            cpu_dir(PERIOD)?,
            "cpu.cfs_period_us",
            &p.to_string(),
            PERIOD,
        )?,
        (None, Some(q)) => set(cpu_dir(QUOTA)?, "cpu.cfs_quota_us", &q.to_string(), QUOTA)?,
        (None, None) => {}
    }
    if let Some(v) = c.burst() {
        let f = "linux.resources.cpu.burst";
        set(cpu_dir(f)?, "cpu.cfs_burst_us", &v.to_string(), f)?;
    }
    if let Some(v) = c.idle() {
        let f = "linux.resources.cpu.idle";
        set(cpu_dir(f)?, "cpu.idle", &v.to_string(), f)?;
    }
    // Period before runtime: the runtime must fit in the period.
    if let Some(v) = c.realtime_period() {
        let f = "linux.resources.cpu.realtimePeriod";
        set(cpu_dir(f)?, "cpu.rt_period_us", &v.to_string(), f)?;
    }
    if let Some(v) = c.realtime_runtime() {
        let f = "linux.resources.cpu.realtimeRuntime";
        set(cpu_dir(f)?, "cpu.rt_runtime_us", &v.to_string(), f)?;
    }
    if let Some(v) = c.cpus().as_deref().filter(|v| !v.is_empty()) {
        let f = "linux.resources.cpu.cpus";
        set(dir(hs, "cpuset", f)?, "cpuset.cpus", v, f)?;
    }
    if let Some(v) = c.mems().as_deref().filter(|v| !v.is_empty()) {
        let f = "linux.resources.cpu.mems";
        set(dir(hs, "cpuset", f)?, "cpuset.mems", v, f)?;
    }
    Ok(())
}

/// The first of `files` that exists in `d`, for knobs whose name depends on
/// the I/O scheduler (CFQ's `blkio.weight` vs BFQ's `blkio.bfq.weight`).
pub(super) fn first_existing<'a>(
    d: &Path,
    files: &[&'a str],
    field: &str,
) -> Result<&'a str, CgroupError> {
    files
        .iter()
        .find(|f| d.join(f).exists())
        .copied()
        .ok_or_else(|| CgroupError::Unsupported {
            field: field.into(),
            detail: format!("no {}", files.join(" or ")),
        })
}

fn blkio(hs: &[Hierarchy], r: &LinuxResources) -> Result<(), CgroupError> {
    let Some(b) = r.block_io() else { return Ok(()) };
    let d = || dir(hs, "blkio", "linux.resources.blockIO");
    // 0 is no weight (the kernel's range starts at 10): Docker sends it for
    // "not set", and runc skips it, as every weight below does.
    if let Some(w) = b.weight().filter(|w| *w != 0) {
        let f = "linux.resources.blockIO.weight";
        let d = d()?;
        let file = first_existing(d, &["blkio.weight", "blkio.bfq.weight"], f)?;
        set(d, file, &w.to_string(), f)?;
    }
    if let Some(w) = b.leaf_weight().filter(|w| *w != 0) {
        let f = "linux.resources.blockIO.leafWeight";
        set(d()?, "blkio.leaf_weight", &w.to_string(), f)?;
    }
    for (i, wd) in b.weight_device().iter().flatten().enumerate() {
        if let Some(w) = wd.weight().filter(|w| *w != 0) {
            let f = format!("linux.resources.blockIO.weightDevice[{i}].weight");
            let d = d()?;
            let file = first_existing(d, &["blkio.weight_device", "blkio.bfq.weight_device"], &f)?;
            set(d, file, &format!("{}:{} {w}", wd.major(), wd.minor()), &f)?;
        }
        if let Some(w) = wd.leaf_weight().filter(|w| *w != 0) {
            let f = format!("linux.resources.blockIO.weightDevice[{i}].leafWeight");
            let v = format!("{}:{} {w}", wd.major(), wd.minor());
            set(d()?, "blkio.leaf_weight_device", &v, &f)?;
        }
    }
    let throttles: [(&str, &Option<Vec<LinuxThrottleDevice>>, &str); 4] = [
        (
            "throttleReadBpsDevice",
            b.throttle_read_bps_device(),
            "blkio.throttle.read_bps_device",
        ),
        (
            "throttleWriteBpsDevice",
            b.throttle_write_bps_device(),
            "blkio.throttle.write_bps_device",
        ),
        (
            "throttleReadIOPSDevice",
            b.throttle_read_iops_device(),
            "blkio.throttle.read_iops_device",
        ),
        (
            "throttleWriteIOPSDevice",
            b.throttle_write_iops_device(),
            "blkio.throttle.write_iops_device",
        ),
    ];
    for (name, list, file) in throttles {
        for (i, t) in list.iter().flatten().enumerate() {
            let f = format!("linux.resources.blockIO.{name}[{i}]");
            set(
                d()?,
                file,
                &format!("{}:{} {}", t.major(), t.minor(), t.rate()),
                &f,
            )?;
        }
    }
    Ok(())
}

/// The rule line the v1 devices controller takes (`c 1:3 rwm`).
pub fn device_rule(rule: &LinuxDeviceCgroup) -> Result<String, CgroupError> {
    let typ = match rule.typ() {
        None | Some(LinuxDeviceType::A) => 'a',
        Some(LinuxDeviceType::B) => 'b',
        Some(LinuxDeviceType::C) | Some(LinuxDeviceType::U) => 'c',
        Some(LinuxDeviceType::P) => {
            return Err(CgroupError::InvalidValue {
                field: "linux.resources.devices".into(),
                reason: "type \"p\" (FIFO) cannot be controlled by the devices cgroup".into(),
            })
        }
    };
    let num = |n: Option<i64>| match n {
        Some(n) if n >= 0 => n.to_string(),
        _ => "*".into(),
    };
    let access = rule
        .access()
        .as_deref()
        .filter(|a| !a.is_empty())
        .unwrap_or("rwm");
    if !access.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
        return Err(CgroupError::InvalidValue {
            field: "linux.resources.devices".into(),
            reason: format!("access {access:?} is not a combination of r, w and m"),
        });
    }
    Ok(format!(
        "{typ} {}:{} {access}",
        num(rule.major()),
        num(rule.minor())
    ))
}

/// Devices every container may use whatever the spec says, as runc adds
/// them: mknod of anything, and the standard character devices.
pub const DEFAULT_ALLOWED_DEVICES: &[&str] = &[
    "c *:* m",
    "b *:* m",
    "c 1:3 rwm",    // null
    "c 1:5 rwm",    // zero
    "c 1:7 rwm",    // full
    "c 1:8 rwm",    // random
    "c 1:9 rwm",    // urandom
    "c 5:0 rwm",    // tty
    "c 5:1 rwm",    // console
    "c 5:2 rwm",    // ptmx
    "c 136:* rwm",  // pts
    "c 10:200 rwm", // net/tun
];

fn devices(d: &Path, rules: &[LinuxDeviceCgroup]) -> Result<(), CgroupError> {
    const FIELD: &str = "linux.resources.devices";
    let mut lines = Vec::with_capacity(rules.len());
    for (i, rule) in rules.iter().enumerate() {
        let line = device_rule(rule).map_err(|e| match e {
            CgroupError::InvalidValue { reason, .. } => CgroupError::InvalidValue {
                field: format!("{FIELD}[{i}]"),
                reason,
            },
            e => e,
        })?;
        lines.push((rule.allow(), line, format!("{FIELD}[{i}]")));
    }
    for (allow, line, field) in lines {
        let file = if allow {
            "devices.allow"
        } else {
            "devices.deny"
        };
        set(d, file, &line, &field)?;
    }
    for line in DEFAULT_ALLOWED_DEVICES {
        set(d, "devices.allow", line, "default device rules")?;
    }
    Ok(())
}

pub(super) fn freeze(h: &Hierarchy) -> Result<(), CgroupError> {
    let state = h.path.join("freezer.state");
    write_file(&state, "FROZEN", "pausing the container")?;
    // FREEZING means some task has not stopped yet; writing FROZEN again
    // makes the kernel retry them.
    let frozen = wait_until(|| {
        let s = read_file(&state)?;
        if s.trim() == "FROZEN" {
            return Ok(true);
        }
        write_file(&state, "FROZEN", "pausing the container")?;
        Ok(false)
    })?;
    if frozen {
        Ok(())
    } else {
        let _ = write_file(&state, "THAWED", "resuming after a failed pause");
        Err(CgroupError::FreezeTimeout(state))
    }
}

pub(super) fn thaw(h: &Hierarchy) -> Result<(), CgroupError> {
    write_file(
        &h.path.join("freezer.state"),
        "THAWED",
        "resuming the container",
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn device_rules() {
        let rule = |j: &str| device_rule(&serde_json::from_str(j).unwrap());
        assert_eq!(rule(r#"{"allow": false}"#).unwrap(), "a *:* rwm");
        assert_eq!(
            rule(r#"{"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rw"}"#)
                .unwrap(),
            "c 1:3 rw"
        );
        assert_eq!(
            rule(r#"{"allow": true, "type": "b", "major": 8, "minor": -1}"#).unwrap(),
            "b 8:* rwm"
        );
        assert!(rule(r#"{"allow": true, "type": "p"}"#).is_err());
        assert!(rule(r#"{"allow": true, "access": "rwx"}"#).is_err());
    }

    #[test]
    fn new_cpuset_inherits_parent_cpus_and_mems() {
        let t = tempfile::tempdir().unwrap();
        let child = t.path().join("child");
        fs::create_dir(&child).unwrap();
        fs::write(t.path().join("cpuset.cpus"), "0-3\n").unwrap();
        fs::write(t.path().join("cpuset.mems"), "0\n").unwrap();
        fs::write(child.join("cpuset.cpus"), "\n").unwrap();
        fs::write(child.join("cpuset.mems"), "1").unwrap();
        inherit_cpuset(&child).unwrap();
        assert_eq!(
            fs::read_to_string(child.join("cpuset.cpus")).unwrap(),
            "0-3"
        );
        // Already set: kept.
        assert_eq!(fs::read_to_string(child.join("cpuset.mems")).unwrap(), "1");
    }
}
