//! `capsa bench startup`: start-to-exit latency of the same bundle under each
//! isolation mode and each installed peer runtime, interleaved run by run so
//! that drift in the machine's load affects all of them alike.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::backend::Isolation;

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
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BenchError::Io { path, source }
    };
    match &opts.bundle {
        None => {
            let command = if opts.command.is_empty() {
                vec!["/bin/true".to_string()]
            } else {
                opts.command.clone()
            };
            crate::demo::build_bundle(&dir, &command)?;
        }
        Some(source) => {
            let bundle = crate::spec::Bundle::load(source)?;
            let mut spec = bundle.spec.clone();
            if let Some(mut root) = spec.root().clone() {
                root.set_path(bundle.rootfs.clone());
                spec.set_root(Some(root));
            }
            if let Some(mut process) = spec.process().clone() {
                process.set_terminal(Some(false));
                if !opts.command.is_empty() {
                    process.set_args(Some(opts.command.clone()));
                }
                spec.set_process(Some(process));
            }
            fs::create_dir_all(&dir).map_err(io(&dir))?;
            let config = dir.join("config.json");
            fs::write(
                &config,
                serde_json::to_vec_pretty(&spec).unwrap_or_default(),
            )
            .map_err(io(&config))?;
        }
    }
    Ok(dir)
}

fn run_once(runner: &Runner, id: &str) -> Result<f64, String> {
    let started = Instant::now();
    let status = Command::new(&runner.program)
        .args(&runner.args)
        .arg(id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| e.to_string())?;
    let elapsed = started.elapsed().as_secs_f64() * 1000.0;
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
    let work = std::env::temp_dir().join(format!("capsa-bench-{}", std::process::id()));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BenchError::Io { path, source }
    };
    fs::create_dir_all(&work).map_err(io(&work))?;
    let result = startup_in(&work, opts);
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
        });
    }
    for peer in &opts.peers {
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
            match run_once(runner, &id) {
                Ok(ms) if round >= opts.warmup => runner.samples_ms.push(ms),
                Ok(_) => {}
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
        .map(|r| summarize(&r.name, &r.samples_ms))
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
    out
}

/// Proportional set size of a process in KiB (/proc/PID/smaps_rollup).
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
    pub bundle: Option<PathBuf>,
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
    let work = std::env::temp_dir().join(format!("capsa-bench-{}", std::process::id()));
    fs::create_dir_all(&work).map_err(|source| BenchError::Io {
        path: work.clone(),
        source,
    })?;
    let startup = StartupOptions {
        runs: 1,
        warmup: 0,
        isolations: Vec::new(),
        peers: Vec::new(),
        bundle: opts.bundle.clone(),
        command: vec!["sleep".into(), "1000000".into()],
    };
    let result = prepare_bundle(&work, &startup).map(|bundle| memory_in(&work, &bundle, opts));
    let _ = fs::remove_dir_all(&work);
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
    for peer in &opts.peers {
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
        summaries.push(MemorySummary {
            name,
            idle_pss_kib: pss_kib(first).unwrap_or(0),
            concurrent: pids.len(),
            launches_per_second: pids.len() as f64 / launch_seconds.max(f64::EPSILON),
            mean_pss_kib: total_pss as f64 / pids.len() as f64,
            stopped_early,
        });
        // Dropping `instances` deletes every instance before the next runner.
    }
    summaries
}

pub fn format_memory_table(summaries: &[MemorySummary]) -> String {
    let mut out = format!(
        "{:<18} {:>14} {:>11} {:>12} {:>18}\n",
        "runner", "idle PSS MiB", "concurrent", "launches/s", "PSS/instance MiB"
    );
    for s in summaries {
        out.push_str(&format!(
            "{:<18} {:>14.2} {:>11} {:>12.1} {:>18.2}\n",
            s.name,
            s.idle_pss_kib as f64 / 1024.0,
            s.concurrent,
            s.launches_per_second,
            s.mean_pss_kib / 1024.0
        ));
        if let Some(reason) = &s.stopped_early {
            out.push_str(&format!("  {} stopped early: {reason}\n", s.name));
        }
    }
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
    fn the_table_reports_ratios_against_runc() {
        let table = format_table(&[
            summarize("capsa container", &[5.0]),
            summarize("runc", &[20.0]),
        ]);
        assert!(table.contains("0.25x"), "{table}");
        assert!(table.contains("1.00x"), "{table}");
    }
}
