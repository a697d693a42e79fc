//! `capsa`: the runc-compatible command line.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use capsa::lifecycle::{self, CreateOptions};
use capsa::logging::{LogFormat, Logger};
use capsa::spec::Isolation;
use capsa::state::{Status, Store, DEFAULT_ROOT};

#[derive(Parser)]
#[command(
    name = "capsa",
    version,
    about = "Run OCI bundles as Linux containers or KVM microVMs"
)]
struct Cli {
    /// Directory for container state.
    #[arg(long, global = true, default_value = DEFAULT_ROOT)]
    root: PathBuf,
    /// Also write errors to this file.
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Accepted for runc compatibility.
    #[arg(long, global = true, hide = true)]
    debug: bool,
    /// Accepted for runc compatibility; capsa manages cgroupfs directly.
    #[arg(long, global = true, hide = true)]
    systemd_cgroup: bool,
    /// Accepted for runc compatibility.
    #[arg(long, global = true, hide = true)]
    rootless: Option<String>,
    /// The default isolation of the containers this invocation creates,
    /// before the command: what a runtime handler's arguments give (dockerd's
    /// runtimeArgs). The annotation and `create --isolation` still choose.
    #[arg(long = "isolation", value_enum)]
    default_isolation: Option<Isolation>,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct CreateArgs {
    /// Path to the bundle (the directory holding config.json).
    #[arg(short, long, default_value = ".")]
    bundle: PathBuf,
    /// Unix socket that receives the terminal's master fd.
    #[arg(long)]
    console_socket: Option<PathBuf>,
    /// Write the init's pid here.
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// Pass this many extra fds (from 3) to the process.
    #[arg(long, default_value_t = 0)]
    preserve_fds: i32,
    /// Isolation backend (default: the dev.capsa.isolation annotation, else
    /// `capsa --isolation`, else microvm when invoked as capsa-microvm, else
    /// container).
    #[arg(long, value_enum)]
    isolation: Option<Isolation>,
    /// Accepted for runc compatibility.
    #[arg(long, hide = true)]
    no_pivot: bool,
    /// Accepted for runc compatibility.
    #[arg(long, hide = true)]
    no_new_keyring: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Create a container; its process waits for `start`.
    Create {
        id: String,
        #[command(flatten)]
        args: CreateArgs,
    },
    /// Start a created container's process.
    Start { id: String },
    /// Print a container's state as JSON.
    State { id: String },
    /// Send a signal (default SIGTERM) to a container's init.
    Kill {
        id: String,
        #[arg(default_value = "SIGTERM")]
        signal: String,
        /// Signal every process in the container.
        #[arg(short, long)]
        all: bool,
    },
    /// Delete a container and everything capsa created for it.
    Delete {
        id: String,
        /// Kill the container first if it is running.
        #[arg(short, long)]
        force: bool,
    },
    /// List containers.
    List {
        #[arg(short, long, default_value = "table")]
        format: String,
        /// Print only the ids.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Create and start a container; in the foreground, wait for it and exit
    /// with its status.
    Run {
        id: String,
        #[command(flatten)]
        args: CreateArgs,
        /// Return once the container has started.
        #[arg(short, long)]
        detach: bool,
    },
    /// Write a default config.json.
    Spec {
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
    },
    /// List the processes in a container.
    Ps {
        id: String,
        #[arg(short, long, default_value = "table")]
        format: String,
        /// Arguments for ps(1).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// Run another process in a running container.
    Exec {
        id: String,
        /// The command and its arguments (unless --process is given).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
        /// A JSON file holding the OCI process to run.
        #[arg(short, long)]
        process: Option<PathBuf>,
        /// Allocate a terminal.
        #[arg(short, long)]
        tty: bool,
        #[arg(long)]
        console_socket: Option<PathBuf>,
        /// Return once the process has started.
        #[arg(short, long)]
        detach: bool,
        #[arg(long)]
        pid_file: Option<PathBuf>,
        /// Extra environment (KEY=VALUE), may repeat.
        #[arg(short, long)]
        env: Vec<String>,
        /// Working directory inside the container.
        #[arg(long)]
        cwd: Option<PathBuf>,
        /// UID[:GID] to run as.
        #[arg(short, long)]
        user: Option<String>,
        #[arg(long, default_value_t = 0)]
        preserve_fds: i32,
    },
    /// Change a container's cgroup resources (OCI linux.resources JSON).
    Update {
        id: String,
        /// File holding the resources JSON, or - for stdin.
        #[arg(short, long)]
        resources: PathBuf,
    },
    /// Print what this runtime supports, as OCI features JSON (runc features).
    Features,
    /// Freeze every process in a container.
    Pause { id: String },
    /// Thaw a paused container.
    Resume { id: String },
    /// Write the built-in demo bundle (busybox-static rootfs) to DIR.
    DemoBundle {
        dir: PathBuf,
        /// The process to run (default: sh).
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Measure and compare isolation modes and peer runtimes.
    #[command(subcommand)]
    Bench(BenchCommand),
}

/// How a benchmark reports: a table (default) or JSON, and an optional chart.
#[derive(clap::Args)]
struct BenchOutput {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Also draw the results as an SVG chart.
    #[arg(long)]
    plot: Option<PathBuf>,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Start-to-exit latency, interleaved across modes and peers.
    Startup {
        /// Measured runs per runner (after the warm-up).
        #[arg(long, default_value_t = 30)]
        runs: usize,
        /// Unmeasured runs per runner first.
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// Isolation modes to measure.
        #[arg(long, value_delimiter = ',', default_value = "container,microvm")]
        isolation: Vec<Isolation>,
        /// Peer runtimes to measure when installed.
        #[arg(long, value_delimiter = ',', default_value = "runc,crun,runsc")]
        peers: Vec<String>,
        /// Bundle whose rootfs to use (default: the built-in busybox demo).
        #[arg(long)]
        bundle: Option<PathBuf>,
        /// Bind the host's /usr read-only into the built-in demo bundle, to
        /// measure host programs such as `/usr/bin/python3`.
        #[arg(long, conflicts_with = "bundle")]
        host_usr: bool,
        #[command(flatten)]
        output: BenchOutput,
        /// The command to run (default /bin/true).
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// File I/O and syscall cost inside each mode and on the host, same files.
    Io {
        #[arg(long, value_delimiter = ',', default_value = "container,microvm")]
        isolation: Vec<Isolation>,
        /// Size of the sequentially written and read file, MiB.
        #[arg(long, default_value_t = 256)]
        size_mib: u64,
        /// Small files to create, stat and unlink.
        #[arg(long, default_value_t = 1000)]
        files: usize,
        /// Bytes copied one syscall at a time.
        #[arg(long, default_value_t = 100000)]
        syscall_bytes: u64,
        /// 4 KiB reads and writes at random offsets of the big file.
        #[arg(long, default_value_t = 20000)]
        random_ops: u64,
        /// Memory a process writes before it forks (the fork phase), MiB.
        #[arg(long, default_value_t = 256)]
        fork_mib: u64,
        /// Repetitions of each phase (the median counts).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Bundle whose rootfs to use (default: the built-in busybox demo).
        #[arg(long)]
        bundle: Option<PathBuf>,
        #[command(flatten)]
        output: BenchOutput,
    },
    /// Loopback TCP and unix socket throughput and round trips inside each
    /// mode and on the host, and requests from the host to a server in
    /// each mode through its namespace's interface.
    Net {
        #[arg(long, value_delimiter = ',', default_value = "container,microvm")]
        isolation: Vec<Isolation>,
        /// Data sent over one 127.0.0.1 TCP connection, MiB.
        #[arg(long, default_value_t = 64)]
        stream_mib: u64,
        /// 1-byte request / 1-byte reply round trips on one connection.
        #[arg(long, default_value_t = 20000)]
        round_trips: u64,
        /// Requests from the host to a server in each instance per run,
        /// each on a new TCP connection.
        #[arg(long, default_value_t = 1000)]
        requests: u64,
        /// Repetitions of each phase (the median counts).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Bundle whose rootfs to use (default: the built-in busybox demo).
        #[arg(long)]
        bundle: Option<PathBuf>,
        #[command(flatten)]
        output: BenchOutput,
    },
    /// Memory per idle instance, and density: many idle instances at once.
    Memory {
        /// Idle instances to run at once.
        #[arg(long, default_value_t = 20)]
        count: usize,
        /// Seconds over which the idle instances' CPU time is measured.
        #[arg(long, default_value_t = 10)]
        idle_secs: u64,
        #[arg(long, value_delimiter = ',', default_value = "container,microvm")]
        isolation: Vec<Isolation>,
        #[arg(long, value_delimiter = ',', default_value = "runc")]
        peers: Vec<String>,
        /// Bundle whose rootfs to use (default: the built-in busybox demo).
        #[arg(long)]
        bundle: Option<PathBuf>,
        #[command(flatten)]
        output: BenchOutput,
    },
}

fn main() -> ExitCode {
    capsa::trace::event("cli");
    let cli = Cli::parse();
    let logger = Logger {
        file: cli.log.clone(),
        format: cli.log_format,
    };
    match dispatch(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            let message = format!("{err:#}");
            logger.error(&message);
            eprintln!("capsa: {message}");
            ExitCode::from(1)
        }
    }
}

fn create_options<'a>(
    id: &'a str,
    args: &'a CreateArgs,
    default_isolation: Option<Isolation>,
) -> CreateOptions<'a> {
    CreateOptions {
        id,
        bundle: &args.bundle,
        isolation: args.isolation,
        default_isolation: default_isolation.unwrap_or_else(|| {
            Isolation::for_program(&std::env::args_os().next().unwrap_or_default())
        }),
        pid_file: args.pid_file.as_deref(),
        console_socket: args.console_socket.as_deref(),
        preserve_fds: args.preserve_fds,
    }
}

fn dispatch(cli: Cli) -> Result<u8> {
    let store = Store::new(&cli.root);
    match cli.command {
        Command::Create { id, args } => {
            lifecycle::create(&store, &create_options(&id, &args, cli.default_isolation))
                .map_err(chain)?;
        }
        Command::Start { id } => {
            lifecycle::start(&store, &id).map_err(chain)?;
        }
        Command::State { id } => {
            let state = store.load(&id).map_err(chain)?;
            let status = state.status(&store);
            let json = serde_json::to_string_pretty(&state.oci_state(status))?;
            println!("{json}");
        }
        Command::Kill { id, signal, all } => {
            let signal = capsa::signal::parse(&signal).map_err(chain)?;
            lifecycle::kill_container(&store, &id, signal, all).map_err(chain)?;
        }
        Command::Delete { id, force } => {
            lifecycle::delete(&store, &id, force).map_err(chain)?;
        }
        Command::List { format, quiet } => list(&store, &format, quiet)?,
        Command::Run { id, args, detach } => {
            let opts = create_options(&id, &args, cli.default_isolation);
            if detach {
                lifecycle::create(&store, &opts).map_err(chain)?;
                if let Err(err) = lifecycle::start(&store, &id) {
                    let _ = lifecycle::delete(&store, &id, true);
                    return Err(chain(err));
                }
            } else {
                let code = lifecycle::run_foreground(&store, &opts).map_err(chain)?;
                return Ok(u8::try_from(code).unwrap_or(255));
            }
        }
        Command::Spec { bundle } => {
            let path = bundle.join("config.json");
            if path.exists() {
                anyhow::bail!("{}: already exists", path.display());
            }
            let json = serde_json::to_string_pretty(&capsa::spec::default_spec())?;
            std::fs::write(&path, json + "\n")
                .with_context(|| format!("{}: cannot write", path.display()))?;
        }
        Command::Ps {
            id,
            format,
            ps_args,
        } => ps(&store, &id, &format, &ps_args)?,
        Command::Exec {
            id,
            command,
            process,
            tty,
            console_socket,
            detach,
            pid_file,
            env,
            cwd,
            user,
            preserve_fds,
        } => {
            let process = match process {
                Some(path) => {
                    let text = std::fs::read(&path)
                        .with_context(|| format!("--process {}: cannot read", path.display()))?;
                    serde_json::from_slice(&text).with_context(|| {
                        format!("--process {}: not an OCI process", path.display())
                    })?
                }
                None => exec_process(&store, &id, command, tty, env, cwd, user.as_deref())?,
            };
            let code = lifecycle::exec(
                &store,
                lifecycle::ExecOptions {
                    id: &id,
                    process,
                    detach,
                    pid_file: pid_file.as_deref(),
                    console_socket: console_socket.as_deref(),
                    preserve_fds,
                },
            )
            .map_err(chain)?;
            return Ok(u8::try_from(code).unwrap_or(255));
        }
        Command::Update { id, resources } => {
            let text = if resources.as_os_str() == "-" {
                let mut text = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut text)?;
                text
            } else {
                std::fs::read(&resources)
                    .with_context(|| format!("--resources {}: cannot read", resources.display()))?
            };
            let mut deserializer = serde_json::Deserializer::from_slice(&text);
            let parsed: oci_spec::runtime::LinuxResources =
                serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
                    anyhow::anyhow!("--resources: {}: {}", err.path(), err.inner())
                })?;
            lifecycle::update(&store, &id, &parsed).map_err(chain)?;
        }
        Command::Features => {
            println!("{}", serde_json::to_string_pretty(&features())?);
        }
        Command::Pause { id } => lifecycle::pause(&store, &id).map_err(chain)?,
        Command::Resume { id } => lifecycle::resume(&store, &id).map_err(chain)?,
        Command::DemoBundle { dir, command } => {
            capsa::demo::build_bundle(&dir, &command).map_err(chain)?;
        }
        Command::Bench(BenchCommand::Startup {
            runs,
            warmup,
            isolation,
            peers,
            bundle,
            host_usr,
            output,
            command,
        }) => {
            let opts = capsa::bench::StartupOptions {
                runs,
                warmup,
                isolations: isolation,
                peers,
                bundle,
                host_usr,
                command,
            };
            let summaries = capsa::bench::startup(&opts).map_err(chain)?;
            report(
                &summaries,
                &output,
                capsa::bench::format_table,
                |s, path| capsa::plot::startup(s, path, "capsa bench startup"),
            )?;
        }
        Command::Bench(BenchCommand::Io {
            isolation,
            size_mib,
            files,
            syscall_bytes,
            random_ops,
            fork_mib,
            runs,
            bundle,
            output,
        }) => {
            let opts = capsa::bench::IoOptions {
                isolations: isolation,
                size_mib,
                files,
                syscall_bytes,
                random_ops,
                fork_mib,
                runs,
                bundle,
            };
            let summaries = capsa::bench::io(&opts).map_err(chain)?;
            report(
                &summaries,
                &output,
                capsa::bench::format_io_table,
                capsa::plot::io,
            )?;
        }
        Command::Bench(BenchCommand::Net {
            isolation,
            stream_mib,
            round_trips,
            requests,
            runs,
            bundle,
            output,
        }) => {
            let opts = capsa::bench::NetOptions {
                isolations: isolation,
                stream_mib,
                round_trips,
                requests,
                runs,
                bundle,
            };
            let summaries = capsa::bench::net(&opts).map_err(chain)?;
            report(
                &summaries,
                &output,
                capsa::bench::format_net_table,
                capsa::plot::net,
            )?;
        }
        Command::Bench(BenchCommand::Memory {
            count,
            idle_secs,
            isolation,
            peers,
            bundle,
            output,
        }) => {
            let opts = capsa::bench::MemoryOptions {
                isolations: isolation,
                peers,
                count,
                idle: std::time::Duration::from_secs(idle_secs),
                bundle,
            };
            let summaries = capsa::bench::memory(&opts).map_err(chain)?;
            report(
                &summaries,
                &output,
                capsa::bench::format_memory_table,
                capsa::plot::memory,
            )?;
        }
    }
    Ok(0)
}

/// The process `capsa exec ID COMMAND` runs: the container's own process
/// (user, capabilities, rlimits, no_new_privs, env) with the command line's
/// overrides, as runc builds it.
fn exec_process(
    store: &Store,
    id: &str,
    command: Vec<String>,
    tty: bool,
    env: Vec<String>,
    cwd: Option<PathBuf>,
    user: Option<&str>,
) -> Result<oci_spec::runtime::Process> {
    if command.is_empty() {
        anyhow::bail!("capsa exec: give a command or --process");
    }
    let state = store.load(id).map_err(chain)?;
    let mut process = state.spec.process().clone().unwrap_or_default();
    process.set_args(Some(command));
    process.set_terminal(Some(tty));
    let mut vars = process.env().clone().unwrap_or_default();
    for var in env {
        if !var.contains('=') {
            anyhow::bail!("--env {var:?}: expected KEY=VALUE");
        }
        let key = var.split('=').next().unwrap_or_default().to_string();
        vars.retain(|v| v.split('=').next() != Some(key.as_str()));
        vars.push(var);
    }
    process.set_env(Some(vars));
    if let Some(cwd) = cwd {
        process.set_cwd(cwd);
    }
    if let Some(user) = user {
        let (uid, gid) = match user.split_once(':') {
            Some((uid, gid)) => (uid, Some(gid)),
            None => (user, None),
        };
        let bad = || anyhow::anyhow!("--user {user:?}: expected UID[:GID]");
        let uid: u32 = uid.parse().map_err(|_| bad())?;
        let mut ids = process.user().clone();
        ids.set_uid(uid);
        if let Some(gid) = gid {
            ids.set_gid(gid.parse().map_err(|_| bad())?);
        }
        process.set_user(ids);
    }
    Ok(process)
}

/// The OCI runtime features document (runtime-spec features.md).
fn features() -> serde_json::Value {
    let options: Vec<&str> = vec![
        "ro",
        "rw",
        "nosuid",
        "suid",
        "nodev",
        "dev",
        "noexec",
        "exec",
        "sync",
        "async",
        "dirsync",
        "remount",
        "mand",
        "nomand",
        "atime",
        "noatime",
        "diratime",
        "nodiratime",
        "relatime",
        "norelatime",
        "strictatime",
        "nostrictatime",
        "bind",
        "rbind",
        "private",
        "rprivate",
        "shared",
        "rshared",
        "slave",
        "rslave",
        "unbindable",
        "runbindable",
    ];
    let capabilities: Vec<String> = caps::all().iter().map(|c| c.to_string()).collect();
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.2.0",
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": options,
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
            "capabilities": capabilities,
            "cgroup": {"v1": true, "v2": true, "systemd": false, "systemdUser": false},
            "seccomp": {"enabled": true},
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false},
        },
        "annotations": {
            capsa::spec::ISOLATION_ANNOTATION: "container|microvm",
            capsa::spec::HUGEPAGES_ANNOTATION: "true|false",
        },
    })
}

/// Prints benchmark results as a table or JSON, and draws the chart if asked.
fn report<T: serde::Serialize>(
    summaries: &[T],
    output: &BenchOutput,
    table: fn(&[T]) -> String,
    plot: impl Fn(&[T], &std::path::Path) -> Result<(), capsa::plot::PlotError>,
) -> Result<()> {
    if output.json {
        println!("{}", serde_json::to_string_pretty(summaries)?);
    } else {
        print!("{}", table(summaries));
    }
    if let Some(path) = &output.plot {
        plot(summaries, path).map_err(chain)?;
    }
    Ok(())
}

/// Flattens a library error's chain into one line (the libraries keep
/// sources separate; the edge prints them once).
fn chain(err: impl std::error::Error) -> anyhow::Error {
    anyhow::anyhow!(capsa::error_chain(&err))
}

fn list(store: &Store, format: &str, quiet: bool) -> Result<()> {
    let mut rows = Vec::new();
    for id in store.list().map_err(chain)? {
        let Ok(state) = store.load(&id) else { continue };
        let status = state.status(store);
        rows.push((state, status));
    }
    let mut out = std::io::stdout().lock();
    if quiet {
        for (state, _) in &rows {
            writeln!(out, "{}", state.id)?;
        }
        return Ok(());
    }
    match format {
        "json" => {
            let docs: Vec<_> = rows.iter().map(|(s, st)| s.oci_state(*st)).collect();
            writeln!(out, "{}", serde_json::to_string(&docs)?)?;
        }
        "table" => {
            writeln!(
                out,
                "{:<20} {:<8} {:<10} {:<10} {:<40} CREATED",
                "ID", "PID", "STATUS", "ISOLATION", "BUNDLE"
            )?;
            for (state, status) in &rows {
                let pid = if *status == Status::Stopped {
                    0
                } else {
                    state.pid
                };
                writeln!(
                    out,
                    "{:<20} {:<8} {:<10} {:<10} {:<40} {}",
                    state.id,
                    pid,
                    status,
                    state.isolation,
                    state.bundle.display(),
                    state.created
                )?;
            }
        }
        other => anyhow::bail!("--format {other:?}: expected table or json"),
    }
    Ok(())
}

fn ps(store: &Store, id: &str, format: &str, ps_args: &[String]) -> Result<()> {
    let pids = lifecycle::pids(store, id).map_err(chain)?;
    match format {
        "json" => println!("{}", serde_json::to_string(&pids)?),
        "table" => {
            let args: Vec<&str> = if ps_args.is_empty() {
                vec!["-ef"]
            } else {
                ps_args.iter().map(String::as_str).collect()
            };
            let output = std::process::Command::new("ps")
                .args(&args)
                .output()
                .context("cannot run ps")?;
            let text = String::from_utf8_lossy(&output.stdout);
            let mut lines = text.lines();
            let header = lines.next().unwrap_or_default();
            let pid_column = header
                .split_whitespace()
                .position(|h| h == "PID")
                .context("ps output has no PID column")?;
            println!("{header}");
            for line in lines {
                let pid = line
                    .split_whitespace()
                    .nth(pid_column)
                    .and_then(|p| p.parse::<i32>().ok());
                if pid.is_some_and(|p| pids.contains(&p)) {
                    println!("{line}");
                }
            }
        }
        other => anyhow::bail!("--format {other:?}: expected table or json"),
    }
    Ok(())
}
