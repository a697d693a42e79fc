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
    pub json: bool,
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
    for round in 0..total {
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
