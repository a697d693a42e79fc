//! `capsa bench startup`: start-to-exit latency of the same bundle under each
//! isolation mode and each installed peer runtime, interleaved run by run so
//! that drift in the machine's load affects all of them alike.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::spec::Isolation;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Demo(#[from] crate::demo::DemoError),
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecError),
    #[error("{path}: cannot prepare the benchmark bundle")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--runs must be at least 1")]
    NoRuns,
    #[error("nothing to measure: every runner was skipped")]
    NothingRan,
}

pub struct StartupOptions {
    pub runs: usize,
    pub warmup: usize,
    pub isolations: Vec<Isolation>,
    pub peers: Vec<String>,
    pub bundle: Option<PathBuf>,
    /// Bind the host's /usr read-only into the demo bundle.
    pub host_usr: bool,
    pub command: Vec<String>,
}

/// One way of running the bundle.
struct Runner {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    /// Set when the runner was skipped, with the reason.
    skipped: Option<String>,
    samples_ms: Vec<f64>,
    /// capsa's own phase durations per run, when it traces (see [`PHASES`]).
    phases_ms: Vec<[f64; 5]>,
    traced: bool,
}

/// Phase names and the trace events that end each (the first starts when
/// the benchmark spawns the runtime).
pub const PHASES: [(&str, &str); 5] = [
    ("spawn", "cli"),
    ("setup", "created"),
    ("start", "launch"),
    ("run", "exited"),
    ("teardown", "done"),
];

/// Durations of [`PHASES`] from a trace, given when the runtime was spawned.
pub fn phases_from_trace(spawned_ns: u64, events: &[(String, u64)]) -> Option<[f64; 5]> {
    let mut out = [0.0; 5];
    let mut previous = spawned_ns;
    for (i, (_, event)) in PHASES.iter().enumerate() {
        let at = events.iter().find(|(name, _)| name == event)?.1;
        out[i] = at.checked_sub(previous)? as f64 / 1e6;
        previous = at;
    }
    Some(out)
}

#[derive(Debug, serde::Serialize)]
pub struct Summary {
    pub name: String,
    pub runs: usize,
    pub min_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Median of each of capsa's own phases, when it traced them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phases_p50_ms: Option<Vec<(String, f64)>>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

pub fn summarize(name: &str, samples: &[f64]) -> Summary {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    Summary {
        name: name.to_string(),
        runs: sorted.len(),
        min_ms: sorted.first().copied().unwrap_or(f64::NAN),
        p50_ms: percentile(&sorted, 50.0),
        p90_ms: percentile(&sorted, 90.0),
        p99_ms: percentile(&sorted, 99.0),
        max_ms: sorted.last().copied().unwrap_or(f64::NAN),
        phases_p50_ms: None,
    }
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file())
}

/// Writes a bundle running `command` whose rootfs is the given bundle's (or
/// the built-in demo's), so neither the user's config nor rootfs changes.
fn prepare_bundle(work: &Path, opts: &StartupOptions) -> Result<PathBuf, BenchError> {
    let dir = work.join("bundle");
    match &opts.bundle {
        None => {
            let command = if opts.command.is_empty() {
                vec!["/bin/true".to_string()]
            } else {
                opts.command.clone()
            };
            crate::demo::build_bundle(&dir, &command)?;
            if opts.host_usr {
                add_host_usr(&dir)?;
            }
        }
        Some(source) => {
            derive_bundle(source, &dir, &opts.command, false)?;
        }
    }
    Ok(dir)
}

/// Makes the demo bundle in `dir` see the host's /usr (read-only) as its
/// own, with /lib and /lib64 linking into it as on a merged-/usr Debian, so
/// host programs and their libraries run unchanged in every runtime.
fn add_host_usr(dir: &Path) -> Result<(), BenchError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BenchError::Io { path, source }
    };
    let rootfs = dir.join("rootfs");
    fs::create_dir_all(rootfs.join("usr")).map_err(io(&rootfs))?;
    for (link, target) in [("lib", "usr/lib"), ("lib64", "usr/lib64")] {
        let at = rootfs.join(link);
        if fs::symlink_metadata(&at).is_err() {
            std::os::unix::fs::symlink(target, &at).map_err(io(&at))?;
        }
    }
    let config = dir.join("config.json");
    let text = fs::read_to_string(&config).map_err(io(&config))?;
    let mut spec: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| io(&config)(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
    if let Some(mounts) = spec["mounts"].as_array_mut() {
        mounts.push(serde_json::json!({
            "destination": "/usr", "type": "bind", "source": "/usr", "options": ["rbind", "ro"]
        }));
    }
    let text = serde_json::to_string_pretty(&spec)
        .map_err(|e| io(&config)(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
    fs::write(&config, text).map_err(io(&config))
}

/// Writes `<dir>/config.json`: the bundle at `source` running `command` (if
/// not empty), with its rootfs by absolute path (so neither the user's config
/// nor rootfs changes), not on a terminal, and writable if asked.
fn derive_bundle(
    source: &Path,
    dir: &Path,
    command: &[String],
    writable: bool,
) -> Result<PathBuf, BenchError> {
    let bundle = crate::spec::Bundle::load(source)?;
    let mut spec = bundle.spec.clone();
    if let Some(mut root) = spec.root().clone() {
        root.set_path(bundle.rootfs.clone());
        if writable {
            root.set_readonly(Some(false));
        }
        spec.set_root(Some(root));
    }
    if let Some(mut process) = spec.process().clone() {
        process.set_terminal(Some(false));
        if !command.is_empty() {
            process.set_args(Some(command.to_vec()));
        }
        spec.set_process(Some(process));
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BenchError::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(io(dir))?;
    let config = dir.join("config.json");
    fs::write(
        &config,
        serde_json::to_vec_pretty(&spec).unwrap_or_default(),
    )
    .map_err(io(&config))?;
    Ok(bundle.rootfs)
}

fn run_once(runner: &mut Runner, id: &str, trace: &Path) -> Result<f64, String> {
    let mut command = Command::new(&runner.program);
    if runner.traced {
        let _ = fs::remove_file(trace);
        command.env(crate::trace::ENV, trace);
    }
    let spawned_ns = crate::trace::monotonic_ns();
    let started = Instant::now();
    let status = command
        .args(&runner.args)
        .arg(id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| e.to_string())?;
    let elapsed = started.elapsed().as_secs_f64() * 1000.0;
    if runner.traced {
        let events = crate::trace::parse(&fs::read_to_string(trace).unwrap_or_default());
        if let Some(phases) = phases_from_trace(spawned_ns, &events) {
            runner.phases_ms.push(phases);
        }
    }
    if status.status.success() {
        Ok(elapsed)
    } else {
        let stderr = String::from_utf8_lossy(&status.stderr);
        Err(stderr.lines().last().unwrap_or("failed").trim().to_string())
    }
}

pub fn startup(opts: &StartupOptions) -> Result<Vec<Summary>, BenchError> {
    if opts.runs == 0 {
        return Err(BenchError::NoRuns);
    }
    in_work_dir(|work| startup_in(work, opts))
}

/// Runs `body` with a fresh scratch directory, removed afterwards whatever
/// the outcome.
fn in_work_dir<T>(body: impl FnOnce(&Path) -> Result<T, BenchError>) -> Result<T, BenchError> {
    let work = std::env::temp_dir().join(format!("capsa-bench-{}", std::process::id()));
    fs::create_dir_all(&work).map_err(|source| BenchError::Io {
        path: work.clone(),
        source,
    })?;
    let result = body(&work);
    let _ = fs::remove_dir_all(&work);
    result
}

fn startup_in(work: &Path, opts: &StartupOptions) -> Result<Vec<Summary>, BenchError> {
    let bundle = prepare_bundle(work, opts)?;
    let bundle_arg = bundle.display().to_string();
    let capsa = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("capsa"));
    let mut runners = Vec::new();
    for isolation in &opts.isolations {
        let root = work.join(format!("state-{isolation}"));
        runners.push(Runner {
            name: format!("capsa {isolation}"),
            program: capsa.clone(),
            args: vec![
                "--root".into(),
                root.display().to_string(),
                "run".into(),
                format!("--isolation={isolation}"),
                "--bundle".into(),
                bundle_arg.clone(),
            ],
            skipped: None,
            samples_ms: Vec::new(),
            phases_ms: Vec::new(),
            traced: true,
        });
    }
    for peer in opts.peers.iter().filter(|p| !p.is_empty()) {
        let root = work.join(format!("state-{peer}"));
        let mut runner = Runner {
            name: peer.clone(),
            program: PathBuf::from(peer),
            args: vec![
                "--root".into(),
                root.display().to_string(),
                "run".into(),
                "--bundle".into(),
                bundle_arg.clone(),
            ],
            skipped: None,
            samples_ms: Vec::new(),
            phases_ms: Vec::new(),
            traced: false,
        };
        match which(peer) {
            Some(path) => runner.program = path,
            None => runner.skipped = Some("not installed".into()),
        }
        runners.push(runner);
    }

    let total = opts.warmup + opts.runs;
    let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    for round in 0..total {
        if progress {
            eprint!("\rround {}/{total}", round + 1);
        }
        for (index, runner) in runners.iter_mut().enumerate() {
            if runner.skipped.is_some() {
                continue;
            }
            let id = format!("bench-{}-{index}-{round}", std::process::id());
            let trace = work.join("trace");
            match run_once(runner, &id, &trace) {
                Ok(ms) if round >= opts.warmup => runner.samples_ms.push(ms),
                Ok(_) => {
                    runner.phases_ms.clear();
                }
                Err(reason) => runner.skipped = Some(format!("fails on this host: {reason}")),
            }
        }
    }

    if progress {
        eprint!("\r\x1b[K");
    }
    for runner in &runners {
        if let Some(reason) = &runner.skipped {
            eprintln!("note: {} skipped ({reason})", runner.name);
        }
    }
    let summaries: Vec<Summary> = runners
        .iter()
        .filter(|r| r.skipped.is_none())
        .map(|r| {
            let mut summary = summarize(&r.name, &r.samples_ms);
            if !r.phases_ms.is_empty() {
                let phases = (0..PHASES.len())
                    .map(|i| {
                        let column: Vec<f64> = r.phases_ms.iter().map(|p| p[i]).collect();
                        (PHASES[i].0.to_string(), summarize("", &column).p50_ms)
                    })
                    .collect();
                summary.phases_p50_ms = Some(phases);
            }
            summary
        })
        .collect();
    if summaries.is_empty() {
        return Err(BenchError::NothingRan);
    }
    Ok(summaries)
}

/// The table `capsa bench startup` prints, with each p50 as a ratio of runc's.
pub fn format_table(summaries: &[Summary]) -> String {
    let baseline = summaries
        .iter()
        .find(|s| s.name == "runc")
        .map(|s| s.p50_ms);
    let mut out = format!(
        "{:<18} {:>5} {:>9} {:>9} {:>9} {:>9} {:>9} {:>12}\n",
        "runner", "runs", "min ms", "p50 ms", "p90 ms", "p99 ms", "max ms", "p50 / runc"
    );
    for s in summaries {
        let ratio = baseline
            .map(|b| format!("{:.2}x", s.p50_ms / b))
            .unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "{:<18} {:>5} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>12}\n",
            s.name, s.runs, s.min_ms, s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms, ratio
        ));
    }
    let traced: Vec<&Summary> = summaries
        .iter()
        .filter(|s| s.phases_p50_ms.is_some())
        .collect();
    if !traced.is_empty() {
        out.push_str("\ncapsa's phases, p50 ms (spawn: exec of capsa; setup: namespaces, cgroup, rootfs or jail;\nstart: start to launch; run: exec or VM boot + process + exit; teardown: delete)\n");
        out.push_str(&format!("{:<18}", "runner"));
        for (name, _) in PHASES {
            out.push_str(&format!(" {name:>9}"));
        }
        out.push('\n');
        for s in traced {
            out.push_str(&format!("{:<18}", s.name));
            for (_, ms) in s.phases_p50_ms.iter().flatten() {
                out.push_str(&format!(" {ms:>9.2}"));
            }
            out.push('\n');
        }
    }
    out
}

/// Proportional set size of a process in KiB (/proc/PID/smaps_rollup).
/// The host's MemAvailable (/proc/meminfo), KiB.
fn mem_available_kib() -> Option<u64> {
    fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

pub fn pss_kib(pid: i32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

pub struct MemoryOptions {
    pub isolations: Vec<Isolation>,
    pub peers: Vec<String>,
    pub count: usize,
    /// How long the idle instances' CPU time is measured for.
    pub idle: Duration,
    pub bundle: Option<PathBuf>,
}

/// CPU time (user + system) process `pid` used so far, in clock ticks.
fn cpu_ticks(pid: i32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which may hold spaces: utime and
    // stime are the 14th and 15th of the whole line.
    let rest = &text[text.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[derive(Debug, serde::Serialize)]
pub struct MemorySummary {
    pub name: String,
    /// PSS of one idle instance's processes (the VMM with its guest, or the
    /// container's process; neither capsa nor runc leaves a runtime process).
    pub idle_pss_kib: u64,
    /// Instances running at once in the density run.
    pub concurrent: usize,
    pub launches_per_second: f64,
    pub mean_pss_kib: f64,
    /// CPU time all the idle instances used over the idle window, as a
    /// share of one host CPU (ms of CPU per s).
    pub idle_cpu_ms_per_s: f64,
    /// How much the host's MemAvailable fell per running instance: what PSS
    /// does not see (the host kernel's own memory for each VM and its
    /// shadow page tables, the cgroups, the namespaces), and the page cache
    /// the instances hold.
    pub mem_available_drop_kib: f64,
    /// Why the density run stopped before `count`, if it did.
    pub stopped_early: Option<String>,
}

/// Starts idle instances of the bundle, detached, and measures them.
struct Detached<'a> {
    program: PathBuf,
    prefix: Vec<String>,
    root: PathBuf,
    bundle: &'a str,
    ids: Vec<String>,
}

impl Detached<'_> {
    /// Runs one detached instance; returns its pid and how long the launch took.
    fn launch(&mut self, id: &str) -> Result<(i32, f64), String> {
        let mut cmd = Command::new(&self.program);
        cmd.arg("--root").arg(&self.root).arg("run").arg("--detach");
        cmd.args(&self.prefix).args(["--bundle", self.bundle, id]);
        // The instance inherits stderr and keeps it open while it runs, so
        // it goes to a file: a pipe would never reach end-of-file.
        let log_path = self.root.with_extension(format!("{id}.stderr"));
        let log = fs::File::create(&log_path).map_err(|e| e.to_string())?;
        let started = Instant::now();
        let status = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .status()
            .map_err(|e| e.to_string())?;
        let seconds = started.elapsed().as_secs_f64();
        if !status.success() {
            let stderr = fs::read_to_string(&log_path).unwrap_or_default();
            return Err(stderr.lines().last().unwrap_or("failed").trim().to_string());
        }
        self.ids.push(id.to_string());
        let state = Command::new(&self.program)
            .arg("--root")
            .arg(&self.root)
            .args(["state", id])
            .output()
            .map_err(|e| e.to_string())?;
        let json: serde_json::Value =
            serde_json::from_slice(&state.stdout).map_err(|e| e.to_string())?;
        let pid = json["pid"]
            .as_i64()
            .ok_or_else(|| "state has no pid".to_string())?;
        Ok((pid as i32, seconds))
    }
}

impl Drop for Detached<'_> {
    fn drop(&mut self) {
        for id in &self.ids {
            let _ = Command::new(&self.program)
                .arg("--root")
                .arg(&self.root)
                .args(["delete", "--force", id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

pub fn memory(opts: &MemoryOptions) -> Result<Vec<MemorySummary>, BenchError> {
    if opts.count == 0 {
        return Err(BenchError::NoRuns);
    }
    let startup = StartupOptions {
        runs: 1,
        warmup: 0,
        isolations: Vec::new(),
        peers: Vec::new(),
        bundle: opts.bundle.clone(),
        host_usr: false,
        command: vec!["sleep".into(), "1000000".into()],
    };
    let result = in_work_dir(|work| {
        prepare_bundle(work, &startup).map(|bundle| memory_in(work, &bundle, opts))
    });
    let summaries = result?;
    if summaries.is_empty() {
        return Err(BenchError::NothingRan);
    }
    Ok(summaries)
}

fn memory_in(work: &Path, bundle: &Path, opts: &MemoryOptions) -> Vec<MemorySummary> {
    let bundle_arg = bundle.display().to_string();
    let capsa = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("capsa"));
    let mut runners: Vec<(String, PathBuf, Vec<String>)> = opts
        .isolations
        .iter()
        .map(|i| {
            (
                format!("capsa {i}"),
                capsa.clone(),
                vec![format!("--isolation={i}")],
            )
        })
        .collect();
    for peer in opts.peers.iter().filter(|p| !p.is_empty()) {
        match which(peer) {
            Some(path) => runners.push((peer.clone(), path, Vec::new())),
            None => eprintln!("note: {peer} skipped (not installed)"),
        }
    }
    let mut summaries = Vec::new();
    for (index, (name, program, prefix)) in runners.into_iter().enumerate() {
        let mut instances = Detached {
            program,
            prefix,
            root: work.join(format!("memory-state-{index}")),
            bundle: &bundle_arg,
            ids: Vec::new(),
        };
        let tag = format!("mem-{}-{index}", std::process::id());
        let available_before = mem_available_kib();
        let mut pids = Vec::new();
        let mut launch_seconds = 0.0;
        let mut stopped_early = None;
        for n in 0..opts.count {
            match instances.launch(&format!("{tag}-{n}")) {
                Ok((pid, seconds)) => {
                    pids.push(pid);
                    launch_seconds += seconds;
                }
                Err(reason) => {
                    stopped_early = Some(format!("instance {}: {reason}", n + 1));
                    break;
                }
            }
        }
        let Some(first) = pids.first().copied() else {
            eprintln!(
                "note: {name} skipped (fails on this host: {})",
                stopped_early.unwrap_or_default()
            );
            continue;
        };
        let total_pss: u64 = pids.iter().filter_map(|p| pss_kib(*p)).sum();
        // SAFETY: sysconf has no memory effects.
        let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let before: u64 = pids.iter().filter_map(|p| cpu_ticks(*p)).sum();
        std::thread::sleep(opts.idle);
        let after: u64 = pids.iter().filter_map(|p| cpu_ticks(*p)).sum();
        let idle_cpu_ms_per_s = after.saturating_sub(before) as f64 * 1000.0
            / ticks_per_s
            / opts.idle.as_secs_f64().max(f64::EPSILON);
        let mem_available_drop_kib = match (available_before, mem_available_kib()) {
            (Some(before), Some(now)) => before.saturating_sub(now) as f64 / pids.len() as f64,
            _ => f64::NAN,
        };
        summaries.push(MemorySummary {
            name,
            idle_pss_kib: pss_kib(first).unwrap_or(0),
            concurrent: pids.len(),
            launches_per_second: pids.len() as f64 / launch_seconds.max(f64::EPSILON),
            mean_pss_kib: total_pss as f64 / pids.len() as f64,
            idle_cpu_ms_per_s,
            mem_available_drop_kib,
            stopped_early,
        });
        // Dropping `instances` deletes every instance before the next runner.
    }
    summaries
}

pub fn format_memory_table(summaries: &[MemorySummary]) -> String {
    let mut out = format!(
        "{:<18} {:>14} {:>11} {:>12} {:>18} {:>24} {:>19}\n",
        "runner",
        "idle PSS MiB",
        "concurrent",
        "launches/s",
        "PSS/instance MiB",
        "MemAvailable/inst MiB",
        "idle CPU (all) ms/s"
    );
    for s in summaries {
        out.push_str(&format!(
            "{:<18} {:>14.2} {:>11} {:>12.1} {:>18.2} {:>24.2} {:>19.2}\n",
            s.name,
            s.idle_pss_kib as f64 / 1024.0,
            s.concurrent,
            s.launches_per_second,
            s.mean_pss_kib / 1024.0,
            s.mem_available_drop_kib / 1024.0,
            s.idle_cpu_ms_per_s
        ));
        if let Some(reason) = &s.stopped_early {
            out.push_str(&format!("  {} stopped early: {reason}\n", s.name));
        }
    }
    out
}

pub struct IoOptions {
    pub isolations: Vec<Isolation>,
    /// Size of the sequentially written and read file.
    pub size_mib: u64,
    /// Small files created, stat'ed and unlinked.
    pub files: usize,
    /// Bytes copied one at a time (two syscalls each) in the syscall loop.
    pub syscall_bytes: u64,
    /// 4 KiB positioned reads and writes at random offsets of the big file.
    pub random_ops: u64,
    /// Memory a process writes before the forks of the fork phase, MiB.
    pub fork_mib: u64,
    /// Repetitions of each phase; the median counts.
    pub runs: usize,
    pub bundle: Option<PathBuf>,
}

#[derive(Debug, serde::Serialize)]
pub struct IoSummary {
    pub name: String,
    pub seq_write_mib_s: f64,
    pub seq_read_mib_s: f64,
    /// 4 KiB pread/pwrite at random offsets, operations per second.
    pub rand_read_iops: f64,
    pub rand_write_iops: f64,
    /// The same reads of the file just read whole (in the page cache).
    pub cached_read_iops: f64,
    pub creates_per_s: f64,
    /// Stats of files no process of the run looked at yet.
    pub stats_per_s: f64,
    /// Stats of the same files again in the same run.
    pub cached_stats_per_s: f64,
    pub unlinks_per_s: f64,
    /// One read(2) or write(2) of a byte, /dev/zero to /dev/null.
    pub syscall_ns: f64,
    /// One fork (and the child's exit and reaping) of a process that wrote
    /// `fork_mib` MiB, in milliseconds.
    pub fork_ms: f64,
}

/// Forks the fork phase times (a median of these per run).
const FORKS: u64 = 10;

/// The phases, each a busybox sh script over `$D` (the work directory),
/// `$Z` (/dev/zero) and `$N` (/dev/null), so the host runs the very same
/// scripts on the very same files.
fn io_phases(opts: &IoOptions) -> Vec<(&'static str, String)> {
    let count = opts.files;
    vec![
        ("baseline", "true".to_string()),
        (
            "write",
            format!("dd if=$Z of=$D/data bs=1M count={} 2>$N", opts.size_mib),
        ),
        ("read", "dd if=$D/data of=$N bs=1M 2>$N".to_string()),
        (
            "loop",
            format!("i=0; while [ $i -lt {count} ]; do i=$((i+1)); done"),
        ),
        (
            "create",
            format!("mkdir $D/m; i=0; while [ $i -lt {count} ]; do : > $D/m/f$i; i=$((i+1)); done"),
        ),
        (
            "stat",
            format!("i=0; while [ $i -lt {count} ]; do [ -e $D/m/f$i ]; i=$((i+1)); done"),
        ),
        // The same twice in one run: the second pass finds what the first
        // looked up (names and attributes cached, as a program's repeated
        // stats of its own files do).
        (
            "restat",
            format!("for pass in 1 2; do i=0; while [ $i -lt {count} ]; do [ -e $D/m/f$i ]; i=$((i+1)); done; done"),
        ),
        ("unlink", "rm -r $D/m".to_string()),
        (
            "syscalls",
            format!("dd if=$Z of=$N bs=1 count={} 2>$N", opts.syscall_bytes),
        ),
        // Timed inside by the worker (it prints `OPS SECONDS`).
        (
            "randread",
            format!("$D/../iobench randread $D/data 4096 {}", opts.random_ops),
        ),
        (
            "randwrite",
            format!("$D/../iobench randwrite $D/data 4096 {}", opts.random_ops),
        ),
        (
            "cachedread",
            format!("$D/../iobench cachedread $D/data 4096 {}", opts.random_ops),
        ),
        (
            "fork",
            format!("$D/../iobench fork {} {FORKS}", opts.fork_mib),
        ),
    ]
}

/// Phases whose time the worker measures itself.
const TIMED_INSIDE: [&str; 4] = ["randread", "randwrite", "cachedread", "fork"];

/// The static worker built from runtime/iobench.
static IOBENCH: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/capsa-iobench"));

pub fn io(opts: &IoOptions) -> Result<Vec<IoSummary>, BenchError> {
    if opts.runs == 0 {
        return Err(BenchError::NoRuns);
    }
    in_work_dir(|work| io_in(work, opts))
}

fn io_in(work: &Path, opts: &IoOptions) -> Result<Vec<IoSummary>, BenchError> {
    let phases = io_phases(opts);
    let bench = PhaseBench {
        tag: "io",
        phases: &phases,
        timed_inside: &TIMED_INSIDE,
        isolations: &opts.isolations,
        runs: opts.runs,
        bundle: opts.bundle.as_deref(),
    };
    let mut summaries = Vec::new();
    for (name, m) in run_phases(work, &bench)? {
        // Each phase minus what every run pays anyway (start-up, or the
        // shell loop itself); a difference lost in the noise is reported as
        // not measurable (NaN) rather than as an absurd rate.
        let net = |phase: usize, minus: usize| {
            let seconds = m[phase] - m[minus];
            if seconds > m[minus] * 0.02 && seconds > 0.0 {
                seconds
            } else {
                f64::NAN
            }
        };
        let files = opts.files as f64;
        summaries.push(IoSummary {
            name,
            seq_write_mib_s: opts.size_mib as f64 / net(1, 0),
            seq_read_mib_s: opts.size_mib as f64 / net(2, 0),
            creates_per_s: files / net(4, 3),
            stats_per_s: files / net(5, 3),
            cached_stats_per_s: files / net(6, 5),
            unlinks_per_s: files / net(7, 0),
            syscall_ns: net(8, 0) * 1e9 / (2.0 * opts.syscall_bytes as f64),
            rand_read_iops: opts.random_ops as f64 / m[9],
            rand_write_iops: opts.random_ops as f64 / m[10],
            cached_read_iops: opts.random_ops as f64 / m[11],
            fork_ms: m[12] * 1e3 / FORKS as f64,
        });
    }
    if summaries.is_empty() {
        return Err(BenchError::NothingRan);
    }
    Ok(summaries)
}

/// The bundle whose rootfs a benchmark uses: the user's, or the built-in
/// demo, built in `work` the first time a benchmark of this run asks.
fn base_bundle(work: &Path, bundle: Option<&Path>) -> Result<PathBuf, BenchError> {
    if let Some(bundle) = bundle {
        return Ok(bundle.to_path_buf());
    }
    let dir = work.join("demo");
    if !dir.join("config.json").exists() {
        crate::demo::build_bundle(&dir, &[])?;
    }
    Ok(dir)
}

/// A benchmark made of phases, each a busybox sh script run on the host and
/// in each mode over `$D` (the runner's own directory in the rootfs, the
/// worker one level up), `$Z` (/dev/zero) and `$N` (/dev/null).
struct PhaseBench<'a> {
    /// Names the directory in the rootfs (`/capsa-<tag>`) and the instances.
    tag: &'static str,
    phases: &'a [(&'static str, String)],
    /// Phases whose worker prints `OPS SECONDS`; the others are timed from
    /// outside, whole.
    timed_inside: &'a [&'static str],
    isolations: &'a [Isolation],
    runs: usize,
    bundle: Option<&'a Path>,
}

/// Runs every phase `bench.runs` times, interleaved runner by runner, and
/// returns each runner's median seconds per phase (the host first, then the
/// modes; a runner that failed is left out with a note).
fn run_phases(work: &Path, bench: &PhaseBench) -> Result<Vec<(String, Vec<f64>)>, BenchError> {
    let base = base_bundle(work, bench.bundle)?;
    let inner = format!("capsa-{}", bench.tag);
    let capsa = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("capsa"));
    // One bundle per mode and phase, all on the same rootfs; each mode works
    // in a directory of its own so no run sees another's files.
    let mut rootfs = PathBuf::new();
    for isolation in bench.isolations {
        for (name, script) in bench.phases {
            let command = vec![
                "sh".to_string(),
                "-c".to_string(),
                format!("D=/{inner}/{isolation} Z=/dev/zero N=/dev/null; {script}"),
            ];
            let bundle = work.join(format!("phase-{isolation}-{name}"));
            rootfs = derive_bundle(&base, &bundle, &command, true)?;
        }
    }
    if rootfs.as_os_str().is_empty() {
        rootfs = crate::spec::Bundle::load(&base)?.rootfs;
    }
    let dir = rootfs.join(inner);
    install_worker(&dir)?;
    let result = phase_runs(work, bench, &capsa, &dir);
    // The rootfs may be the user's: leave it as it was.
    let _ = fs::remove_dir_all(&dir);
    result
}

/// Copies the worker into `dir` (made for it) as `iobench`.
fn install_worker(dir: &Path) -> Result<PathBuf, BenchError> {
    let worker = dir.join("iobench");
    let io_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BenchError::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(io_error(dir))?;
    fs::write(&worker, IOBENCH).map_err(io_error(&worker))?;
    fs::set_permissions(&worker, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .map_err(io_error(&worker))?;
    Ok(worker)
}

fn phase_runs(
    work: &Path,
    bench: &PhaseBench,
    capsa: &Path,
    dir: &Path,
) -> Result<Vec<(String, Vec<f64>)>, BenchError> {
    for sub in ["host".to_string()]
        .into_iter()
        .chain(bench.isolations.iter().map(|i| i.to_string()))
    {
        let path = dir.join(sub);
        fs::create_dir_all(&path).map_err(|source| BenchError::Io { path, source })?;
    }
    let host_dir = dir.join("host").display().to_string();
    let mut names = vec!["host".to_string()];
    names.extend(bench.isolations.iter().map(|i| format!("capsa {i}")));
    // samples[runner][phase]
    let mut samples = vec![vec![Vec::new(); bench.phases.len()]; names.len()];
    let mut failed: Vec<Option<String>> = vec![None; names.len()];
    let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    for run in 0..bench.runs {
        if progress {
            eprint!("\rrun {}/{}", run + 1, bench.runs);
        }
        for (phase_index, (name, script)) in bench.phases.iter().enumerate() {
            for runner in 0..names.len() {
                if failed[runner].is_some() {
                    continue;
                }
                let mut cmd = if runner == 0 {
                    let mut cmd = Command::new(crate::demo::BUSYBOX);
                    cmd.args([
                        "sh",
                        "-c",
                        &format!("D={host_dir} Z=/dev/zero N=/dev/null; {script}"),
                    ]);
                    cmd
                } else {
                    let isolation = bench.isolations[runner - 1];
                    let mut cmd = Command::new(capsa);
                    cmd.arg("--root")
                        .arg(work.join(format!("state-{isolation}")))
                        .arg("run")
                        .arg(format!("--isolation={isolation}"))
                        .arg("--bundle")
                        .arg(work.join(format!("phase-{isolation}-{name}")))
                        .arg(format!(
                            "{}-{}-{run}-{phase_index}",
                            bench.tag,
                            std::process::id()
                        ));
                    cmd
                };
                let started = Instant::now();
                let out = cmd
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .output();
                let wall = started.elapsed().as_secs_f64();
                match out {
                    Ok(out) if out.status.success() => {
                        let inside = String::from_utf8_lossy(&out.stdout)
                            .split_whitespace()
                            .nth(1)
                            .and_then(|s| s.parse::<f64>().ok());
                        let seconds = if bench.timed_inside.contains(name) {
                            inside.unwrap_or(f64::NAN)
                        } else {
                            wall
                        };
                        samples[runner][phase_index].push(seconds);
                    }
                    Ok(out) => {
                        let stderr = String::from_utf8_lossy(&out.stderr);
                        failed[runner] = Some(format!(
                            "phase {name}: {}",
                            stderr.lines().last().unwrap_or("failed").trim()
                        ));
                    }
                    Err(err) => failed[runner] = Some(err.to_string()),
                }
            }
        }
    }
    if progress {
        eprint!("\r\x1b[K");
    }
    let median = |values: &Vec<f64>| {
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        percentile(&sorted, 50.0)
    };
    let mut medians = Vec::new();
    for (runner, name) in names.into_iter().enumerate() {
        if let Some(reason) = &failed[runner] {
            eprintln!("note: {name} skipped ({reason})");
            continue;
        }
        medians.push((name, samples[runner].iter().map(median).collect()));
    }
    Ok(medians)
}

pub struct NetOptions {
    pub isolations: Vec<Isolation>,
    /// Data sent over one loopback TCP connection, MiB.
    pub stream_mib: u64,
    /// 1-byte request / 1-byte reply round trips per connection.
    pub round_trips: u64,
    /// Requests from the host to a server in each instance per run.
    pub requests: u64,
    /// Repetitions of each phase; the median counts.
    pub runs: usize,
    pub bundle: Option<PathBuf>,
}

#[derive(Debug, serde::Serialize)]
pub struct NetSummary {
    pub name: String,
    /// One 127.0.0.1 TCP connection, sender and reader in two threads,
    /// megabytes (10^6 bytes) per second.
    pub tcp_stream_mb_s: f64,
    /// 1-byte request, 1-byte reply on one TCP connection with TCP_NODELAY.
    pub tcp_round_trips_per_s: f64,
    /// The same over a unix stream socket pair.
    pub unix_round_trips_per_s: f64,
    /// Requests from the host to a server in the instance, through the
    /// interface of the network namespace it was given (what a published
    /// port forwards to): each a new TCP connection with a 1-byte request
    /// and a 1-byte reply. Not measured for the host itself (NaN).
    pub host_requests_per_s: f64,
    /// The median and 99th percentile of one such request, microseconds.
    pub host_request_p50_us: f64,
    pub host_request_p99_us: f64,
}

/// Every phase is timed inside by the worker, so neither the instance's
/// start-up nor the shell counts.
fn net_phases(opts: &NetOptions) -> Vec<(&'static str, String)> {
    vec![
        (
            "tcpstream",
            format!("$D/../iobench tcpstream {}", opts.stream_mib),
        ),
        ("tcprr", format!("$D/../iobench tcprr {}", opts.round_trips)),
        (
            "unixrr",
            format!("$D/../iobench unixrr {}", opts.round_trips),
        ),
    ]
}

const NET_PHASES: [&str; 3] = ["tcpstream", "tcprr", "unixrr"];

pub fn net(opts: &NetOptions) -> Result<Vec<NetSummary>, BenchError> {
    if opts.runs == 0 {
        return Err(BenchError::NoRuns);
    }
    in_work_dir(|work| net_in(work, opts))
}

fn net_in(work: &Path, opts: &NetOptions) -> Result<Vec<NetSummary>, BenchError> {
    let phases = net_phases(opts);
    let bench = PhaseBench {
        tag: "net",
        phases: &phases,
        timed_inside: &NET_PHASES,
        isolations: &opts.isolations,
        runs: opts.runs,
        bundle: opts.bundle.as_deref(),
    };
    let bytes = opts.stream_mib as f64 * (1u64 << 20) as f64;
    let medians = run_phases(work, &bench)?;
    let requests = host_requests(work, opts)?;
    let summaries: Vec<NetSummary> = medians
        .into_iter()
        .map(|(name, m)| {
            let from_host = requests
                .iter()
                .find(|(runner, _)| *runner == name)
                .map(|(_, r)| *r)
                .unwrap_or([f64::NAN; 3]);
            NetSummary {
                name,
                tcp_stream_mb_s: bytes / 1e6 / m[0],
                tcp_round_trips_per_s: opts.round_trips as f64 / m[1],
                unix_round_trips_per_s: opts.round_trips as f64 / m[2],
                host_requests_per_s: from_host[0],
                host_request_p50_us: from_host[1],
                host_request_p99_us: from_host[2],
            }
        })
        .collect();
    if summaries.is_empty() {
        return Err(BenchError::NothingRan);
    }
    Ok(summaries)
}

/// The port the instance's server listens on, inside its namespace.
const SERVE_PORT: u16 = 8000;

/// A network namespace joined to the host by a veth pair, as a bridge
/// network gives a container: `eth0` inside with .2/24 and a default route
/// through the host end, .1/24. Made with iproute2's `ip`; removed (with
/// the pair) when dropped.
struct BenchNamespace {
    name: String,
    subnet: u8,
    host_end: String,
}

impl BenchNamespace {
    fn new(tag: &str) -> Result<BenchNamespace, String> {
        let pid = std::process::id();
        let mut host_end = format!("cb{}{tag}", pid % 100_000);
        host_end.truncate(15);
        let ns = BenchNamespace {
            name: format!("capsa-bench-{pid}-{tag}"),
            subnet: (pid % 200) as u8 + 20,
            host_end,
        };
        let host_end = ns.host_end.as_str();
        let net = format!("10.214.{}", ns.subnet);
        let (host_cidr, inner_cidr, gateway) = (
            format!("{net}.1/24"),
            format!("{net}.2/24"),
            format!("{net}.1"),
        );
        let n = ns.name.as_str();
        let steps: [&[&str]; 8] = [
            &["netns", "add", n],
            &[
                "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", n,
            ],
            &["addr", "add", &host_cidr, "dev", host_end],
            &["link", "set", host_end, "up"],
            &["-n", n, "addr", "add", &inner_cidr, "dev", "eth0"],
            &["-n", n, "link", "set", "eth0", "up"],
            &["-n", n, "link", "set", "lo", "up"],
            &["-n", n, "route", "add", "default", "via", &gateway],
        ];
        for args in steps {
            let out = Command::new("ip")
                .args(args)
                .output()
                .map_err(|e| format!("ip: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "ip {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        Ok(ns)
    }

    fn server(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([10, 214, self.subnet, 2], SERVE_PORT))
    }

    fn path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.name)
    }
}

impl Drop for BenchNamespace {
    fn drop(&mut self) {
        // Deleting the host end removes the pair at once, so the next run
        // can make it again (the namespace is freed by the kernel later).
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_end])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Each mode's requests from the host (requests/s, p50 and p99 µs),
/// interleaved run by run; a mode that fails is left out with a note.
fn host_requests(work: &Path, opts: &NetOptions) -> Result<Vec<(String, [f64; 3])>, BenchError> {
    let base = base_bundle(work, opts.bundle.as_deref())?;
    let inner = "capsa-net-serve";
    let command: Vec<String> = [
        format!("/{inner}/iobench"),
        "serve".into(),
        SERVE_PORT.to_string(),
        // One untimed request first: the server is up once it answers.
        (opts.requests + 1).to_string(),
    ]
    .into();
    let mut rootfs = PathBuf::new();
    for isolation in &opts.isolations {
        rootfs = derive_bundle(
            &base,
            &work.join(format!("serve-{isolation}")),
            &command,
            false,
        )?;
    }
    let worker = install_worker(&rootfs.join(inner))?;
    let capsa = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("capsa"));
    let mut latencies: Vec<Vec<f64>> = vec![Vec::new(); opts.isolations.len()];
    let mut seconds = vec![0.0; opts.isolations.len()];
    let mut failed: Vec<Option<String>> = vec![None; opts.isolations.len()];
    for run in 0..opts.runs {
        for (index, isolation) in opts.isolations.iter().enumerate() {
            if failed[index].is_some() {
                continue;
            }
            let bundle = work.join(format!("serve-{isolation}"));
            let id = format!("net-serve-{}-{run}-{isolation}", std::process::id());
            let state = work.join(format!("state-{isolation}"));
            match serve_requests(&capsa, &state, &bundle, *isolation, &id, opts.requests) {
                Ok((times, total)) => {
                    latencies[index].extend(times);
                    seconds[index] += total;
                }
                Err(reason) => failed[index] = Some(reason),
            }
        }
    }
    let _ = fs::remove_dir_all(worker.parent().unwrap_or(&worker));
    let mut results = Vec::new();
    for (index, isolation) in opts.isolations.iter().enumerate() {
        let name = format!("capsa {isolation}");
        if let Some(reason) = &failed[index] {
            eprintln!("note: {name}: requests from the host skipped ({reason})");
            continue;
        }
        let sorted = &mut latencies[index];
        sorted.sort_by(f64::total_cmp);
        results.push((
            name,
            [
                sorted.len() as f64 / seconds[index],
                percentile(sorted, 50.0) * 1e6,
                percentile(sorted, 99.0) * 1e6,
            ],
        ));
    }
    Ok(results)
}

/// One run: the instance serves in a namespace of its own while the host
/// sends `requests` requests, each on a new connection; returns each
/// request's seconds and their total.
fn serve_requests(
    capsa: &Path,
    state: &Path,
    bundle: &Path,
    isolation: Isolation,
    id: &str,
    requests: u64,
) -> Result<(Vec<f64>, f64), String> {
    use std::io::{Read, Write};
    let ns = BenchNamespace::new(&isolation.to_string()[..1])?;
    join_network_namespace(bundle, &ns.path())?;
    let mut instance = Command::new(capsa)
        .arg("--root")
        .arg(state)
        .args(["run", &format!("--isolation={isolation}"), "--bundle"])
        .arg(bundle)
        .arg(id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("capsa run: {e}"))?;
    let limit = std::time::Duration::from_secs(30);
    let request = || -> Result<f64, String> {
        let started = Instant::now();
        let mut conn = std::net::TcpStream::connect_timeout(&ns.server(), limit)
            .map_err(|e| format!("connect: {e}"))?;
        conn.set_nodelay(true).map_err(|e| e.to_string())?;
        conn.set_read_timeout(Some(limit))
            .map_err(|e| e.to_string())?;
        let mut byte = [1u8];
        conn.write_all(&byte).map_err(|e| format!("request: {e}"))?;
        conn.read_exact(&mut byte)
            .map_err(|e| format!("reply: {e}"))?;
        drop(conn);
        Ok(started.elapsed().as_secs_f64())
    };
    // The first request waits for the server to listen (bounded).
    let deadline = Instant::now() + limit;
    let outcome = loop {
        match request() {
            Ok(_) => break Ok(()),
            Err(_) if Instant::now() < deadline && matches!(instance.try_wait(), Ok(None)) => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => break Err(e),
        }
    };
    let measured = outcome.and_then(|()| {
        let started = Instant::now();
        let times = (0..requests)
            .map(|_| request())
            .collect::<Result<Vec<f64>, String>>()?;
        Ok((times, started.elapsed().as_secs_f64()))
    });
    if measured.is_err() {
        let _ = Command::new(capsa)
            .arg("--root")
            .arg(state)
            .args(["delete", "--force", id])
            .output();
    }
    let out = instance.wait_with_output().map_err(|e| e.to_string())?;
    let result = measured?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(stderr
            .lines()
            .last()
            .unwrap_or("the server failed")
            .to_string());
    }
    Ok(result)
}

/// Points the bundle's network namespace at `path`.
fn join_network_namespace(bundle: &Path, path: &Path) -> Result<(), String> {
    let config = bundle.join("config.json");
    let text = fs::read(&config).map_err(|e| format!("{}: {e}", config.display()))?;
    let mut value: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", config.display()))?;
    if let Some(namespaces) = value["linux"]["namespaces"].as_array_mut() {
        namespaces.retain(|ns| ns["type"] != "network");
        namespaces.push(serde_json::json!({"type": "network", "path": path}));
    }
    fs::write(&config, value.to_string()).map_err(|e| format!("{}: {e}", config.display()))
}

impl NetSummary {
    /// The figures `bench net` compares, in the order of [`NET_HEADINGS`].
    pub fn figures(&self) -> [f64; 3] {
        [
            self.tcp_stream_mb_s,
            self.tcp_round_trips_per_s,
            self.unix_round_trips_per_s,
        ]
    }
}

pub const NET_HEADINGS: [&str; 3] = ["tcp MB/s", "tcp rtt/s", "unix rtt/s"];

/// The table `capsa bench net` prints: the medians, then each mode's as a
/// ratio of the next lighter runner's (microVM / container, container /
/// host) and of the host's.
pub fn format_net_table(summaries: &[NetSummary]) -> String {
    let cell = |value: f64, ratio: bool| match (value.is_finite(), ratio) {
        (false, _) => format!(" {:>11}", "-"),
        (true, true) => format!(" {:>11}", format!("{value:.2}x")),
        (true, false) => format!(" {value:>11.0}"),
    };
    let mut out = format!("{:<34}", "runner");
    for heading in NET_HEADINGS {
        out.push_str(&format!(" {heading:>11}"));
    }
    out.push('\n');
    for s in summaries {
        out.push_str(&format!("{:<34}", s.name));
        for value in s.figures() {
            out.push_str(&cell(value, false));
        }
        out.push('\n');
    }
    let find = |name: &str| summaries.iter().find(|s| s.name == name);
    let pairs = [
        ("capsa microvm", "capsa container"),
        ("capsa container", "host"),
        ("capsa microvm", "host"),
    ];
    for (a, b) in pairs {
        let (Some(a), Some(b)) = (find(a), find(b)) else {
            continue;
        };
        out.push_str(&format!("{:<34}", format!("{} / {}", a.name, b.name)));
        for (x, y) in a.figures().into_iter().zip(b.figures()) {
            out.push_str(&cell(x / y, true));
        }
        out.push('\n');
    }
    out.push_str(
        "\nrequests from the host to a server in the instance, through the interface of \
         the network namespace it was given (a veth; what a published port forwards to), \
         each a new TCP connection with a 1-byte request and reply:\n",
    );
    out.push_str(&format!(
        "{:<34} {:>11} {:>11} {:>11}\n",
        "runner", "req/s", "p50 us", "p99 us"
    ));
    let measured: Vec<&NetSummary> = summaries
        .iter()
        .filter(|s| s.host_requests_per_s.is_finite())
        .collect();
    let request_figures = |s: &NetSummary| {
        [
            s.host_requests_per_s,
            s.host_request_p50_us,
            s.host_request_p99_us,
        ]
    };
    for s in &measured {
        out.push_str(&format!("{:<34}", s.name));
        for value in request_figures(s) {
            out.push_str(&cell(value, false));
        }
        out.push('\n');
    }
    if let (Some(vm), Some(container)) = (find("capsa microvm"), find("capsa container")) {
        if vm.host_requests_per_s.is_finite() && container.host_requests_per_s.is_finite() {
            out.push_str(&format!("{:<34}", "capsa microvm / capsa container"));
            for (x, y) in request_figures(vm)
                .into_iter()
                .zip(request_figures(container))
            {
                out.push_str(&cell(x / y, true));
            }
            out.push('\n');
        }
    }
    out
}

pub fn format_io_table(summaries: &[IoSummary]) -> String {
    let mut out = format!(
        "{:<16} {:>12} {:>12} {:>13} {:>14} {:>15} {:>11} {:>11} {:>14} {:>11} {:>12} {:>9}\n",
        "runner",
        "write MiB/s",
        "read MiB/s",
        "rand read/s",
        "rand write/s",
        "cached read/s",
        "creates/s",
        "stats/s",
        "cached stat/s",
        "unlinks/s",
        "syscall ns",
        "fork ms"
    );
    let cell = |value: f64, width: usize| {
        if value.is_finite() {
            format!(" {value:>width$.0}")
        } else {
            format!(" {:>width$}", "-")
        }
    };
    for s in summaries {
        out.push_str(&format!("{:<16}", s.name));
        out.push_str(&cell(s.seq_write_mib_s, 12));
        out.push_str(&cell(s.seq_read_mib_s, 12));
        out.push_str(&cell(s.rand_read_iops, 13));
        out.push_str(&cell(s.rand_write_iops, 14));
        out.push_str(&cell(s.cached_read_iops, 15));
        out.push_str(&cell(s.creates_per_s, 11));
        out.push_str(&cell(s.stats_per_s, 11));
        out.push_str(&cell(s.cached_stats_per_s, 14));
        out.push_str(&cell(s.unlinks_per_s, 11));
        out.push_str(&cell(s.syscall_ns, 12));
        out.push_str(&format!(" {:>9.2}", s.fork_ms));
        out.push('\n');
    }
    out.push_str("(-: lost in start-up noise; raise --files / --syscall-bytes / --size-mib)\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_sample() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = summarize("x", &samples);
        assert_eq!((s.min_ms, s.max_ms), (1.0, 100.0));
        assert_eq!(s.p50_ms, 51.0);
        assert_eq!(s.p90_ms, 90.0);
        assert_eq!(s.p99_ms, 99.0);
    }

    #[test]
    fn phases_come_from_consecutive_trace_events() {
        let events: Vec<(String, u64)> = [
            ("cli", 2_000_000),
            ("created", 5_000_000),
            ("launch", 5_500_000),
            ("exited", 9_500_000),
            ("done", 10_000_000),
        ]
        .iter()
        .map(|(n, t)| (n.to_string(), *t))
        .collect();
        assert_eq!(
            phases_from_trace(1_000_000, &events),
            Some([1.0, 3.0, 0.5, 4.0, 0.5])
        );
        assert_eq!(
            phases_from_trace(1_000_000, &events[..4]),
            None,
            "a missing event"
        );
    }

    #[test]
    fn the_memory_table_shows_pss_beside_the_memavailable_drop() {
        let table = format_memory_table(&[MemorySummary {
            name: "capsa microvm".into(),
            idle_pss_kib: 4096,
            concurrent: 100,
            launches_per_second: 40.0,
            mean_pss_kib: 3584.0,
            idle_cpu_ms_per_s: 0.0,
            mem_available_drop_kib: 6144.0,
            stopped_early: None,
        }]);
        let row: Vec<&str> = table
            .lines()
            .nth(1)
            .expect("a row")
            .split_whitespace()
            .collect();
        assert_eq!(
            row[2..],
            ["4.00", "100", "40.0", "3.50", "6.00", "0.00"],
            "{table}"
        );
        assert!(table
            .lines()
            .next()
            .is_some_and(|h| h.contains("MemAvailable")));
    }

    #[test]
    fn the_net_table_reports_ratios_between_modes_and_against_the_host() {
        let summary = |name: &str, scale: f64| NetSummary {
            name: name.into(),
            tcp_stream_mb_s: 1000.0 * scale,
            tcp_round_trips_per_s: 50000.0 * scale,
            unix_round_trips_per_s: f64::NAN,
            host_requests_per_s: if name == "host" {
                f64::NAN
            } else {
                1000.0 * scale
            },
            host_request_p50_us: 100.0 / scale,
            host_request_p99_us: 300.0 / scale,
        };
        let table = format_net_table(&[
            summary("host", 1.0),
            summary("capsa container", 0.5),
            summary("capsa microvm", 0.1),
        ]);
        let line = |prefix: &str| {
            table
                .lines()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("no {prefix:?} line in {table}"))
                .split_whitespace()
                .rev()
                .take(3)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            line("capsa microvm / capsa container"),
            ["-", "0.20x", "0.20x"]
        );
        assert_eq!(line("capsa container / host"), ["-", "0.50x", "0.50x"]);
        assert_eq!(line("capsa microvm / host"), ["-", "0.10x", "0.10x"]);
        // The requests from the host: the modes only, then their ratio.
        let (_, requests) = table.split_once("requests from the host").expect("section");
        let rows: Vec<Vec<&str>> = requests
            .lines()
            .filter(|l| l.starts_with("capsa") || l.starts_with("host"))
            .map(|l| l.split_whitespace().rev().take(3).collect())
            .collect();
        assert_eq!(
            rows,
            [
                vec!["600", "200", "500"],
                vec!["3000", "1000", "100"],
                vec!["5.00x", "5.00x", "0.20x"]
            ],
            "{table}"
        );
    }

    #[test]
    fn the_table_reports_ratios_against_runc() {
        let table = format_table(&[
            summarize("capsa container", &[5.0]),
            summarize("runc", &[20.0]),
        ]);
        assert!(table.contains("0.25x"), "{table}");
        assert!(table.contains("1.00x"), "{table}");
    }
}
