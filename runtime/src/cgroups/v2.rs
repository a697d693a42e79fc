//! Unified cgroup v2: one directory per container, with the controllers its
//! resources need enabled in the ancestors' `cgroup.subtree_control`.
//!
//! Enabling a controller in an ancestor is the one change capsa makes outside
//! the directories it created; v2 offers no other way to give a cgroup a
//! controller. It is done only for controllers the spec needs and that are
//! not enabled yet, only by adding (never `-ctrl`), and is not undone on
//! delete since other cgroups below that ancestor may rely on it by then.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxResources, LinuxThrottleDevice};

use super::v1::first_existing;
use super::{
    blkio_weight_to_io_weight, mkdir_path, read_file, set, shares_to_weight, wait_until,
    write_file, CgroupError, Hierarchy,
};

/// Creates `root/relative`.
pub(super) fn create(root: &Path, relative: &Path) -> Result<Hierarchy, CgroupError> {
    let mut h = Hierarchy {
        controllers: Vec::new(),
        root: root.into(),
        path: PathBuf::new(),
        created: Vec::new(),
    };
    match mkdir_path(root, relative, &mut h.created, |_| Ok(())) {
        Ok(path) => {
            h.path = path;
            Ok(h)
        }
        Err(e) => {
            let _ = super::delete_hierarchy(&h);
            Err(e)
        }
    }
}

/// The controllers `r` needs, each with the first spec field needing it.
pub fn needed_controllers(r: &LinuxResources) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut need = |c: &str, field: &str| {
        if !out.iter().any(|(have, _)| have == c) {
            out.push((c.into(), field.into()));
        }
    };
    if let Some(m) = r.memory() {
        if m.limit().is_some() || m.swap().is_some() || m.reservation().is_some() {
            need("memory", "linux.resources.memory");
        }
    }
    if let Some(c) = r.cpu() {
        if c.shares().is_some()
            || c.quota().is_some()
            || c.period().is_some()
            || c.burst().is_some()
            || c.idle().is_some()
        {
            need("cpu", "linux.resources.cpu");
        }
        if c.cpus().as_ref().is_some_and(|s| !s.is_empty())
            || c.mems().as_ref().is_some_and(|s| !s.is_empty())
        {
            need("cpuset", "linux.resources.cpu.cpus");
        }
    }
    if r.pids().is_some() {
        need("pids", "linux.resources.pids.limit");
    }
    if let Some(b) = r.block_io() {
        let any_list = [
            b.throttle_read_bps_device(),
            b.throttle_write_bps_device(),
            b.throttle_read_iops_device(),
            b.throttle_write_iops_device(),
        ]
        .iter()
        .any(|l| l.as_ref().is_some_and(|l| !l.is_empty()));
        if b.weight().is_some_and(|w| w != 0)
            || b.weight_device().iter().flatten().any(|wd| {
                wd.weight().is_some_and(|w| w != 0) || wd.leaf_weight().is_some_and(|w| w != 0)
            })
            || any_list
        {
            need("io", "linux.resources.blockIO");
        }
    }
    if r.hugepage_limits().as_ref().is_some_and(|l| !l.is_empty()) {
        need("hugetlb", "linux.resources.hugepageLimits");
    }
    if r.rdma().as_ref().is_some_and(|l| !l.is_empty()) {
        need("rdma", "linux.resources.rdma");
    }
    for key in r.unified().iter().flat_map(|u| u.keys()) {
        if let Some((ctrl, _)) = key.split_once('.') {
            if ctrl != "cgroup" {
                need(ctrl, &format!("linux.resources.unified.{key}"));
            }
        }
    }
    out
}

/// Makes `controllers` available in `h.path` by enabling them in the
/// `cgroup.subtree_control` of every ancestor, root first, where missing.
fn enable_controllers(h: &Hierarchy, controllers: &[(String, String)]) -> Result<(), CgroupError> {
    if controllers.is_empty() {
        return Ok(());
    }
    let available = read_file(&h.root.join("cgroup.controllers"))?;
    let available: Vec<&str> = available.split_whitespace().collect();
    for (c, field) in controllers {
        if !available.contains(&c.as_str()) {
            return Err(CgroupError::Unsupported {
                field: field.clone(),
                detail: format!(
                    "the {c} controller is not in {}/cgroup.controllers",
                    h.root.display()
                ),
            });
        }
    }
    let Ok(rel) = h.path.strip_prefix(&h.root) else {
        return Ok(());
    };
    let mut dir = h.root.clone();
    let mut parents = vec![dir.clone()];
    let comps: Vec<_> = rel.components().collect();
    for c in comps.iter().take(comps.len().saturating_sub(1)) {
        dir.push(c);
        parents.push(dir.clone());
    }
    for parent in parents {
        let file = parent.join("cgroup.subtree_control");
        let enabled = read_file(&file)?;
        let enabled: Vec<&str> = enabled.split_whitespace().collect();
        for (c, field) in controllers {
            if !enabled.contains(&c.as_str()) {
                // Fails with EBUSY when `parent` holds processes itself
                // (v2's no-internal-processes rule); the error names it.
                write_file(&file, &format!("+{c}"), field)?;
            }
        }
    }
    Ok(())
}

/// Applies the set fields of `r`.
pub(super) fn apply(h: &Hierarchy, r: &LinuxResources) -> Result<(), CgroupError> {
    // Reject inconsistent values before changing anything.
    if let Some(m) = r.memory() {
        limits(m, true)?;
    }
    enable_controllers(h, &needed_controllers(r))?;
    let d = h.path.as_path();
    memory(d, r)?;
    cpu(d, r)?;
    if let Some(p) = r.pids() {
        let v = if p.limit() > 0 {
            p.limit().to_string()
        } else {
            "max".into()
        };
        set(d, "pids.max", &v, "linux.resources.pids.limit")?;
    }
    io(d, r)?;
    for (i, l) in r.hugepage_limits().iter().flatten().enumerate() {
        let field = format!("linux.resources.hugepageLimits[{i}]");
        let file = format!("hugetlb.{}.max", l.page_size());
        if file.contains('/') {
            return Err(CgroupError::InvalidValue {
                field,
                reason: format!("page size {:?} is not valid", l.page_size()),
            });
        }
        set(d, &file, &l.limit().to_string(), &field)?;
    }
    if let Some(n) = r.network() {
        if n.class_id().is_some() || n.priorities().as_ref().is_some_and(|p| !p.is_empty()) {
            return Err(CgroupError::Unsupported {
                field: "linux.resources.network".into(),
                detail: "net_cls and net_prio exist only in cgroup v1".into(),
            });
        }
    }
    if let Some(rdma) = r.rdma() {
        for (dev, l) in rdma {
            let field = format!("linux.resources.rdma.{dev}");
            set(d, "rdma.max", &super::rdma_line(dev, l), &field)?;
        }
    }
    if let Some(u) = r.unified() {
        let mut keys: Vec<_> = u.iter().collect();
        keys.sort();
        for (key, value) in keys {
            let field = format!("linux.resources.unified.{key}");
            if key.is_empty() || key.contains('/') || key == "." || key == ".." {
                return Err(CgroupError::InvalidValue {
                    field,
                    reason: "not a control file name".into(),
                });
            }
            set(d, key, value, &field)?;
        }
    }
    // linux.resources.devices is not enforced on v2: that takes a BPF
    // program attached to the cgroup, which capsa does not build yet.
    Ok(())
}

fn memory(d: &Path, r: &LinuxResources) -> Result<(), CgroupError> {
    let Some(m) = r.memory() else { return Ok(()) };
    const LIMIT: &str = "linux.resources.memory.limit";
    const SWAP: &str = "linux.resources.memory.swap";
    let max = |v: i64| {
        if v == -1 {
            "max".to_string()
        } else {
            v.to_string()
        }
    };
    let (limit, swap_max) = limits(m, d.join("memory.swap.max").exists())?;
    if let Some(s) = swap_max {
        set(d, "memory.swap.max", &max(s), SWAP)?;
    }
    if let Some(l) = limit {
        set(d, "memory.max", &max(l), LIMIT)?;
    }
    if let Some(v) = m.reservation() {
        set(
            d,
            "memory.low",
            &max(v),
            "linux.resources.memory.reservation",
        )?;
    }
    if m.swappiness().is_some() {
        return Err(CgroupError::Unsupported {
            field: "linux.resources.memory.swappiness".into(),
            detail: "cgroup v2 has no per-cgroup swappiness".into(),
        });
    }
    if m.disable_oom_killer() == Some(true) {
        return Err(CgroupError::Unsupported {
            field: "linux.resources.memory.disableOOMKiller".into(),
            detail: "cgroup v2 cannot disable the OOM killer".into(),
        });
    }
    // kernel/kernelTCP: ignored, kernel memory is always accounted in v2.
    Ok(())
}

/// The memory.max and memory.swap.max values for `m`, validated.
fn limits(
    m: &oci_spec::runtime::LinuxMemory,
    has_swap: bool,
) -> Result<(Option<i64>, Option<i64>), CgroupError> {
    const LIMIT: &str = "linux.resources.memory.limit";
    const SWAP: &str = "linux.resources.memory.swap";
    // 0 means unset, as in runc.
    let limit = m.limit().filter(|&v| v != 0);
    let swap = m.swap().filter(|&v| v != 0);
    for (v, field) in [(limit, LIMIT), (swap, SWAP)] {
        if let Some(v) = v.filter(|&v| v < -1) {
            return Err(CgroupError::InvalidValue {
                field: field.into(),
                reason: format!("{v} is neither a byte count nor -1 (unlimited)"),
            });
        }
    }
    // The spec's swap is memory+swap (v1 memsw); v2's memory.swap.max is the
    // swap alone. Same conversion as runc.
    let swap_max = match (limit, swap) {
        (_, Some(-1)) => Some(-1),
        (Some(-1), None) if has_swap => Some(-1),
        (_, None) => None,
        (None, Some(_)) => {
            return Err(CgroupError::InvalidValue {
                field: SWAP.into(),
                reason: "a swap limit needs a memory limit too".into(),
            })
        }
        (Some(-1), Some(s)) => {
            return Err(CgroupError::InvalidValue {
                field: SWAP.into(),
                reason: format!("{s} is finite while memory.limit is unlimited"),
            })
        }
        (Some(l), Some(s)) if s < l => {
            return Err(CgroupError::InvalidValue {
                field: SWAP.into(),
                reason: format!("{s} is below memory.limit {l} (swap is the memory+swap limit)"),
            })
        }
        (Some(l), Some(s)) => Some(s - l),
    };
    Ok((limit, swap_max))
}

fn cpu(d: &Path, r: &LinuxResources) -> Result<(), CgroupError> {
    let Some(c) = r.cpu() else { return Ok(()) };
    if let Some(s) = c.shares() {
        let f = "linux.resources.cpu.shares";
        set(d, "cpu.weight", &shares_to_weight(s).to_string(), f)?;
    }
    if c.quota().is_some() || c.period().is_some() {
        const FIELD: &str = "linux.resources.cpu.quota";
        // cpu.max holds both; keep the half the spec leaves unset.
        let current = read_file(&d.join("cpu.max")).unwrap_or_default();
        let mut cur = current.split_whitespace();
        let cur_quota = cur.next().unwrap_or("max").to_string();
        let cur_period = cur.next().unwrap_or("100000").to_string();
        let quota = match c.quota() {
            Some(q) if q > 0 => q.to_string(),
            Some(_) => "max".into(),
            None => cur_quota,
        };
        let period = c.period().map_or(cur_period, |p| p.to_string());
        set(d, "cpu.max", &format!("{quota} {period}"), FIELD)?;
    }
    if let Some(v) = c.burst() {
        set(
            d,
            "cpu.max.burst",
            &v.to_string(),
            "linux.resources.cpu.burst",
        )?;
    }
    if let Some(v) = c.idle() {
        set(d, "cpu.idle", &v.to_string(), "linux.resources.cpu.idle")?;
    }
    if c.realtime_period().is_some() || c.realtime_runtime().is_some() {
        return Err(CgroupError::Unsupported {
            field: "linux.resources.cpu.realtimeRuntime".into(),
            detail: "cgroup v2 has no realtime CPU bandwidth".into(),
        });
    }
    if let Some(v) = c.cpus().as_deref().filter(|v| !v.is_empty()) {
        set(d, "cpuset.cpus", v, "linux.resources.cpu.cpus")?;
    }
    if let Some(v) = c.mems().as_deref().filter(|v| !v.is_empty()) {
        set(d, "cpuset.mems", v, "linux.resources.cpu.mems")?;
    }
    Ok(())
}

fn io(d: &Path, r: &LinuxResources) -> Result<(), CgroupError> {
    let Some(b) = r.block_io() else { return Ok(()) };
    // BFQ takes blkio's 10..1000 scale as is; io.weight is 1..10000.
    let weight_file = |field: &str| first_existing(d, &["io.bfq.weight", "io.weight"], field);
    let scaled = |file: &str, w: u16| {
        if file == "io.weight" {
            blkio_weight_to_io_weight(u64::from(w))
        } else {
            u64::from(w)
        }
    };
    // 0 is no weight: Docker sends it for "not set", and runc skips it, as
    // every weight below does.
    if let Some(w) = b.weight().filter(|w| *w != 0) {
        let f = "linux.resources.blockIO.weight";
        let file = weight_file(f)?;
        set(d, file, &scaled(file, w).to_string(), f)?;
    }
    if b.leaf_weight().is_some_and(|w| w != 0) {
        return Err(CgroupError::Unsupported {
            field: "linux.resources.blockIO.leafWeight".into(),
            detail: "cgroup v2 has no leaf weight".into(),
        });
    }
    for (i, wd) in b.weight_device().iter().flatten().enumerate() {
        if let Some(w) = wd.weight().filter(|w| *w != 0) {
            let f = format!("linux.resources.blockIO.weightDevice[{i}].weight");
            let file = weight_file(&f)?;
            let v = format!("{}:{} {}", wd.major(), wd.minor(), scaled(file, w));
            set(d, file, &v, &f)?;
        }
        if wd.leaf_weight().is_some_and(|w| w != 0) {
            return Err(CgroupError::Unsupported {
                field: format!("linux.resources.blockIO.weightDevice[{i}].leafWeight"),
                detail: "cgroup v2 has no leaf weight".into(),
            });
        }
    }
    let throttles: [(&str, &Option<Vec<LinuxThrottleDevice>>, &str); 4] = [
        (
            "throttleReadBpsDevice",
            b.throttle_read_bps_device(),
            "rbps",
        ),
        (
            "throttleWriteBpsDevice",
            b.throttle_write_bps_device(),
            "wbps",
        ),
        (
            "throttleReadIOPSDevice",
            b.throttle_read_iops_device(),
            "riops",
        ),
        (
            "throttleWriteIOPSDevice",
            b.throttle_write_iops_device(),
            "wiops",
        ),
    ];
    for (name, list, key) in throttles {
        for (i, t) in list.iter().flatten().enumerate() {
            let f = format!("linux.resources.blockIO.{name}[{i}]");
            let v = format!("{}:{} {key}={}", t.major(), t.minor(), t.rate());
            set(d, "io.max", &v, &f)?;
        }
    }
    Ok(())
}

fn events_frozen(h: &Hierarchy) -> Result<bool, CgroupError> {
    let events = read_file(&h.path.join("cgroup.events"))?;
    Ok(events.lines().any(|l| l.trim() == "frozen 1"))
}

pub(super) fn freeze(h: &Hierarchy) -> Result<(), CgroupError> {
    let file = h.path.join("cgroup.freeze");
    write_file(&file, "1", "pausing the container")?;
    if wait_until(|| events_frozen(h))? {
        Ok(())
    } else {
        let _ = write_file(&file, "0", "resuming after a failed pause");
        Err(CgroupError::FreezeTimeout(h.path.join("cgroup.events")))
    }
}

pub(super) fn thaw(h: &Hierarchy) -> Result<(), CgroupError> {
    write_file(&h.path.join("cgroup.freeze"), "0", "resuming the container")
}
