//! Fan-out benchmark: broadcast throughput, latency, loss, server CPU and memory per scenario.

#[path = "fanout/connection.rs"]
mod connection;
#[path = "fanout/crash.rs"]
mod crash;
#[path = "fanout/crash_client.rs"]
mod crash_client;
#[path = "fanout/datadir.rs"]
mod datadir;
#[path = "fanout/deploy.rs"]
mod deploy;
#[path = "fanout/disk.rs"]
mod disk;
#[path = "fanout/ledger.rs"]
mod ledger;
#[path = "fanout/load.rs"]
mod load;
#[path = "fanout/parse.rs"]
mod parse;
#[path = "fanout/redis.rs"]
mod redis;
#[path = "fanout/report.rs"]
mod report;
#[path = "fanout/run.rs"]
mod run;
#[path = "fanout/server.rs"]
mod server;
#[path = "fanout/stats.rs"]
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use http::Uri;

use crash::CrashPlan;
use datadir::DataRoot;
use deploy::ServerSource;
use disk::{DISK, DiskTargets};
use load::{Pace, Plan, Reconnect, Target};
use report::{Headline, OURS, Report, Row, ServerInfo};
use run::Setup;
use server::ServerSpec;

/// Connections in the idle scenario, and the larger count tried if file descriptors allow.
const IDLE_CONNECTIONS: usize = 5_000;
const IDLE_CONNECTIONS_LARGE: usize = 10_000;
/// Instances of our server in a `--redis` run, and their label.
const SHARED_INSTANCES: usize = 2;
const SHARED_LABEL: &str = "redis-x2";
/// File descriptors this process needs beyond one per connection.
const FD_MARGIN: u64 = 512;

/// Measures how the chat server fans messages out to many WebSocket clients.
#[derive(Parser)]
#[command(name = "fanout")]
struct Args {
    /// Scenarios to run, in this order [default: all]
    #[arg(value_enum)]
    scenarios: Vec<Scenario>,
    /// Measure an already running server (ws://host:port/) instead of spawning one per scenario
    #[arg(long)]
    url: Option<String>,
    /// Our server binary to spawn [default: the one cargo built]
    #[arg(long)]
    server: Option<PathBuf>,
    /// Also run every scenario against another server, interleaved with ours run by run: an
    /// example of this crate (`classic`, `batching`: built here if needed) or a path to a
    /// binary that takes `--port 0` and prints `Listening on port N` (repeatable)
    #[arg(long, value_name = "SERVER")]
    against: Vec<String>,
    /// Also run our server with extra flags, as `LABEL=FLAGS`, e.g. `"one-thread=--threads 1"`
    /// (repeatable; interleaved like --against)
    #[arg(long, value_name = "LABEL=FLAGS", value_parser = parse_variant)]
    variant: Vec<(String, Vec<String>)>,
    /// Also run our server as two instances sharing a Redis (`redis-server` started for each
    /// run, on a free port, without persistence), the connections and senders split evenly
    /// across them (labelled `redis-x2`; interleaved like --against)
    #[arg(long)]
    redis: bool,
    /// Also run this server binary (a path; it takes `--port 0` and `--redis-url`) as two
    /// instances sharing a Redis, like --redis does ours (labelled `NAME-x2`; repeatable): an
    /// earlier build, to compare the cost of going through Redis in the same invocation
    #[arg(long, value_name = "PATH")]
    redis_against: Vec<PathBuf>,
    /// Also run our server with `--data-dir` in a new directory for each run (labelled `disk`;
    /// interleaved like --against), and judge it against ours in memory by the disk store's
    /// targets
    #[arg(long)]
    disk: bool,
    /// Where the runs with `--data-dir` (--disk, and the crash scenario) make their directories;
    /// refused on a file system in memory [default: TARGET/fanout-data]
    #[arg(long, value_name = "DIR")]
    disk_dir: Option<PathBuf>,
    /// Pass `--buffer N` (broadcast channel capacity) to our spawned server
    #[arg(long)]
    buffer: Option<usize>,
    /// Worker threads: `--threads N` to our server, `TOKIO_WORKER_THREADS=N` to every server
    #[arg(long)]
    threads: Option<usize>,
    /// Where to write the figures as JSON
    #[arg(long, default_value = "target/fanout.json")]
    json: PathBuf,
    /// Connections being opened at once
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: u32,
    /// Runs per scenario and server; with more than one a row shows its median run
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Seconds a scenario's send and delivery phase may take before the rest counts as lost
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// Passed by `cargo bench`; ignored
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// 100 connections, 1 sender, 2000 messages, at most 8 in flight
    Burst,
    /// 1000 connections, 1 sender, 500 messages, at most 4 in flight
    Crowd,
    /// 1000 connections, 1 sender at 200 messages/s for 2 s (open loop)
    Steady,
    /// Like steady for 3 s, and a tenth of the receivers drop their connection mid-run, stay away
    /// 200 ms and resume with broadcast-chat.v1 (classic clients, where the server lacks it)
    Reconnect,
    /// 100 connections, 10 senders of 300 messages each, at most 8 in flight each
    Senders,
    /// 100 connections, 20 senders at 100 messages/s each for 2 s: 2000 a second to every client
    /// (open loop)
    Busy,
    /// 5000 (then 10000) idle connections and one broadcast
    Idle,
    /// Ours with --data-dir: 100 structured clients, 10 senders of 300 lines, 8 unacknowledged
    /// at most each; SIGKILL once half are acknowledged, restart on the same directory and port,
    /// resume, send again what was not acknowledged; every acknowledged line checked at every
    /// client
    Crash,
}

impl Scenario {
    const ALL: [Scenario; 8] = [
        Scenario::Burst,
        Scenario::Crowd,
        Scenario::Steady,
        Scenario::Reconnect,
        Scenario::Senders,
        Scenario::Busy,
        Scenario::Idle,
        Scenario::Crash,
    ];

    /// The runs this scenario consists of; `idle` has a larger second one if fds allow.
    fn plans(self, fd_limit: Option<u64>) -> Vec<Plan> {
        let plan = |scenario, connections, senders, messages, pace| Plan {
            scenario,
            connections,
            senders,
            messages,
            pace,
            headline: match pace {
                Pace::Closed { .. } => Headline::DeliveriesPerSecond,
                Pace::Open { .. } => Headline::P99,
            },
            reconnect: None,
        };
        match self {
            Scenario::Burst => vec![plan("burst", 100, 1, 2000, Pace::Closed { window: 8 })],
            Scenario::Crowd => vec![plan("crowd", 1000, 1, 500, Pace::Closed { window: 4 })],
            Scenario::Steady => vec![plan("steady", 1000, 1, 400, Pace::Open { per_second: 200 })],
            // Open loop, so the drops fall mid-traffic whatever the server's speed: they are
            // spread over 0.5 s to 2 s of a 3 s run, and 40 messages are said while each
            // client is away.
            Scenario::Reconnect => vec![Plan {
                reconnect: Some(Reconnect {
                    every: 10,
                    first_seq: 100,
                    last_seq: 400,
                    away: Duration::from_millis(200),
                }),
                ..plan("reconnect", 1000, 1, 600, Pace::Open { per_second: 200 })
            }],
            Scenario::Senders => vec![plan("senders", 100, 10, 300, Pace::Closed { window: 8 })],
            Scenario::Busy => vec![plan("busy", 100, 20, 200, Pace::Open { per_second: 100 })],
            Scenario::Idle => {
                let idle = |connections| Plan {
                    headline: Headline::KbPerConnection,
                    ..plan("idle", connections, 1, 1, Pace::Closed { window: 1 })
                };
                let mut plans = vec![idle(IDLE_CONNECTIONS)];
                if fd_limit.unwrap_or(0) >= IDLE_CONNECTIONS_LARGE as u64 + FD_MARGIN {
                    plans.push(idle(IDLE_CONNECTIONS_LARGE));
                } else {
                    eprintln!(
                        "fanout: skipping idle with {IDLE_CONNECTIONS_LARGE} connections: the open \
                         files limit ({fd_limit:?}) is below {}",
                        IDLE_CONNECTIONS_LARGE as u64 + FD_MARGIN
                    );
                }
                plans
            }
            // Not a fan-out plan: run by `crash::run`.
            Scenario::Crash => Vec::new(),
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Two workers: the load generator shares this 2-core machine with the server.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("cannot build the tokio runtime");
    match runtime.block_on(bench(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("fanout: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn bench(args: Args) -> Result<(), String> {
    let scenarios = match (&args.url, args.scenarios.is_empty()) {
        // The crash scenario kills the server it started: not one running at a URL.
        (Some(_), true) => Scenario::ALL
            .into_iter()
            .filter(|s| *s != Scenario::Crash)
            .collect(),
        (Some(_), false) if args.scenarios.contains(&Scenario::Crash) => {
            return Err("the crash scenario kills the server it starts: drop --url".into());
        }
        (_, true) => Scenario::ALL.to_vec(),
        (_, false) => args.scenarios.clone(),
    };
    let data_root = if args.disk || scenarios.contains(&Scenario::Crash) {
        Some(DataRoot::new(args.disk_dir.clone())?)
    } else {
        None
    };
    let sources = servers(&args, data_root.as_ref()).await?;
    let setup = Setup {
        concurrency: args.concurrency as usize,
        delivery_timeout: Duration::from_secs(args.timeout),
        clock_ticks: server::clock_ticks_per_second(),
        epoch: Instant::now(),
    };
    let fd_limit = server::open_files_soft_limit();

    let mut rows = Vec::new();
    let mut crashes = Vec::new();
    let mut run_number = 0;
    for scenario in scenarios {
        if scenario == Scenario::Crash {
            let (ServerSource::Spawn(ours), Some(root)) = (&sources[0], &data_root) else {
                unreachable!("without --url, ours is spawned and the crash has a data root");
            };
            let plan = CrashPlan {
                concurrency: args.concurrency as usize,
                timeout: Duration::from_secs(args.timeout),
                ..CrashPlan::default()
            };
            for _ in 0..args.runs {
                run_number += 1;
                let tag = format!("fo{:x}r{run_number}", std::process::id());
                let outcome = crash::run(&plan, ours, root, tag)
                    .await
                    .map_err(|e| format!("crash: {e}"))?;
                eprintln!(
                    "fanout: crash: {} lines acknowledged before the kill, {} lost, {} doubled, \
                     recovery {}",
                    outcome.acked_before_kill,
                    outcome.lost,
                    outcome.doubled,
                    outcome
                        .recovery
                        .map_or("incomplete".to_owned(), |d| format!("{d:.1?}"))
                );
                crashes.push(outcome);
            }
            continue;
        }
        for plan in scenario.plans(fd_limit) {
            // Interleaved: run 1 of every server, then run 2 of every server, so that a change
            // in the machine's load falls on all of them alike.
            let mut runs: Vec<Vec<_>> = sources.iter().map(|_| Vec::new()).collect();
            for _ in 0..args.runs {
                for (source, runs) in sources.iter().zip(&mut runs) {
                    run_number += 1;
                    let tag = format!("fo{:x}r{run_number}", std::process::id());
                    let started = Instant::now();
                    let outcome = run::run(&plan, &setup, source, tag)
                        .await
                        .map_err(|e| format!("{} on {}: {e}", plan.scenario, source.label()))?;
                    eprintln!(
                        "fanout: {} on {} with {} connections: {} of {} copies in {:.1} s",
                        plan.scenario,
                        source.label(),
                        plan.connections,
                        outcome.unique,
                        outcome.expected,
                        started.elapsed().as_secs_f64()
                    );
                    runs.push(outcome);
                }
            }
            rows.extend(runs.into_iter().map(|runs| Row { runs }));
        }
    }

    let report = Report {
        rows,
        servers: sources
            .iter()
            .map(|source| ServerInfo {
                label: source.label().to_owned(),
                command: source.command(),
            })
            .collect(),
        runs: args.runs as usize,
        cores: std::thread::available_parallelism().map_or(0, usize::from),
    };
    let targets = DiskTargets::default();
    // Without a fan-out scenario (crash alone) there is no table of them.
    if !report.rows.is_empty() {
        print!("{}", report::table(&report));
    }
    print!("{}", disk::table(&report, &targets));
    print!("{}", ledger::table(&crashes));
    if let Some(dir) = args.json.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let sections = [
        ("disk", disk::json(&report, &targets)),
        ("crash", ledger::json(&crashes)),
    ];
    std::fs::write(&args.json, report::json(&report, &sections))
        .map_err(|e| format!("cannot write {}: {e}", args.json.display()))?;
    println!("JSON written to {}", args.json.display());
    Ok(())
}

/// The servers to run, ours first: ours, its variants, ours with a data directory (in
/// `data_root`), ours as instances sharing a Redis, then the others, building the examples among
/// them. With `--url`, only the server there.
async fn servers(args: &Args, data_root: Option<&DataRoot>) -> Result<Vec<ServerSource>, String> {
    if let Some(url) = &args.url {
        if !args.against.is_empty()
            || !args.variant.is_empty()
            || args.redis
            || args.disk
            || !args.redis_against.is_empty()
        {
            return Err(
                "--url measures one running server: drop --against, --variant, --redis, \
                        --redis-against and --disk"
                    .into(),
            );
        }
        return Ok(vec![ServerSource::Url(resolve(url).await?)]);
    }
    // Our flags go to ours only; every server gets the worker count through tokio's variable.
    let env: Vec<(String, String)> = args
        .threads
        .map(|n| ("TOKIO_WORKER_THREADS".to_owned(), n.to_string()))
        .into_iter()
        .collect();
    let ours_path = args
        .server
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_server")));
    // The rate limit is off: the senders are load generators, not people.
    let mut ours_args: Vec<String> = ["--host", "127.0.0.1", "--port", "0", "--max-rate", "0"]
        .map(str::to_owned)
        .into();
    for (flag, value) in [("--buffer", args.buffer), ("--threads", args.threads)] {
        if let Some(value) = value {
            ours_args.extend([flag.to_owned(), value.to_string()]);
        }
    }
    let ours = ServerSpec {
        label: OURS.to_owned(),
        path: ours_path.clone(),
        args: ours_args.clone(),
        env: env.clone(),
    };
    let mut sources = vec![ServerSource::Spawn(ours.clone())];
    for (label, extra) in &args.variant {
        sources.push(ServerSource::Spawn(ServerSpec {
            label: label.clone(),
            path: ours_path.clone(),
            args: ours_args.iter().chain(extra).cloned().collect(),
            env: env.clone(),
        }));
    }
    if let (true, Some(root)) = (args.disk, data_root) {
        sources.push(ServerSource::Disk {
            spec: ServerSpec {
                label: DISK.to_owned(),
                ..ours.clone()
            },
            root: root.clone(),
        });
    }
    if args.redis {
        match redis::available() {
            Ok(()) => sources.push(ServerSource::Shared {
                spec: ServerSpec {
                    label: SHARED_LABEL.to_owned(),
                    ..ours
                },
                instances: SHARED_INSTANCES,
            }),
            Err(why) => eprintln!("fanout: skipping the two-instance runs (--redis): {why}"),
        }
    }
    for path in &args.redis_against {
        let name = path
            .file_name()
            .map_or_else(|| "other".to_owned(), |n| n.to_string_lossy().into_owned());
        match redis::available() {
            Ok(()) => sources.push(ServerSource::Shared {
                spec: ServerSpec {
                    label: format!("{name}-x2"),
                    path: path.clone(),
                    args: vec!["--port".to_owned(), "0".to_owned()],
                    env: env.clone(),
                },
                instances: SHARED_INSTANCES,
            }),
            Err(why) => eprintln!("fanout: skipping {} through Redis: {why}", path.display()),
        }
    }
    let is_path = |name: &str| name.contains(std::path::MAIN_SEPARATOR) || name.contains('/');
    let examples: Vec<&str> = args
        .against
        .iter()
        .map(String::as_str)
        .filter(|name| !is_path(name))
        .collect();
    let examples_dir = if examples.is_empty() {
        PathBuf::new()
    } else {
        server::build_examples(&examples)?
    };
    for name in &args.against {
        let path = if is_path(name) {
            PathBuf::from(name)
        } else {
            examples_dir.join(name)
        };
        let label = path
            .file_name()
            .map_or_else(|| name.clone(), |n| n.to_string_lossy().into_owned());
        sources.push(ServerSource::Spawn(ServerSpec {
            label,
            path,
            args: vec!["--port".to_owned(), "0".to_owned()],
            env: env.clone(),
        }));
    }
    let mut labels: Vec<&str> = sources.iter().map(ServerSource::label).collect();
    labels.sort_unstable();
    if let Some(pair) = labels.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(format!("two servers are labelled {:?}", pair[0]));
    }
    Ok(sources)
}

/// Parses `LABEL=FLAGS` for --variant: the flags split at whitespace.
fn parse_variant(text: &str) -> Result<(String, Vec<String>), String> {
    let (label, flags) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not LABEL=FLAGS"))?;
    let label = label.trim();
    if label.is_empty() || label.contains(char::is_whitespace) {
        return Err(format!("{label:?} is not a label: one word, not empty"));
    }
    Ok((
        label.to_owned(),
        flags.split_whitespace().map(str::to_owned).collect(),
    ))
}

/// Turns `ws://host:port/path` into an address to connect to and the URI for the upgrade.
async fn resolve(url: &str) -> Result<Target, String> {
    let uri: Uri = url.parse().map_err(|e| format!("bad --url {url:?}: {e}"))?;
    if uri.scheme_str() != Some("ws") {
        return Err(format!("--url must start with ws:// (got {url:?})"));
    }
    let host = uri
        .host()
        .ok_or_else(|| format!("--url {url:?} has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(80);
    let addr = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("cannot resolve {host}:{port}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host}:{port} resolves to no address"))?;
    Ok(Target { addr, uri })
}
