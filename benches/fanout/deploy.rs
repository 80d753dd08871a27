//! What a run measures: one spawned server, ours with a data directory made for the run,
//! several instances of ours sharing a Redis started for the run, or a server already running;
//! started, read from /proc and stopped as one.

use std::net::{Ipv4Addr, SocketAddr};

use crate::datadir::{DataDir, DataRoot};
use crate::load::Target;
use crate::parse;
use crate::redis::{self, RedisProcess};
use crate::server::{self, ServerProcess, ServerSpec};

/// A server to measure.
pub enum ServerSource {
    /// Spawned per run.
    Spawn(ServerSpec),
    /// Our server spawned per run with `--data-dir` in a new directory under `root`.
    Disk { spec: ServerSpec, root: DataRoot },
    /// `instances` of our server spawned per run with `--redis-url` to a Redis spawned with them,
    /// the connections split across them.
    Shared { spec: ServerSpec, instances: usize },
    /// Already running at a URL.
    Url(Target),
}

impl ServerSource {
    pub fn label(&self) -> &str {
        match self {
            ServerSource::Spawn(spec)
            | ServerSource::Disk { spec, .. }
            | ServerSource::Shared { spec, .. } => &spec.label,
            ServerSource::Url(_) => crate::report::OURS,
        }
    }

    /// How it is started, for the report's footer.
    pub fn command(&self) -> String {
        match self {
            ServerSource::Spawn(spec) => spec.command(),
            ServerSource::Disk { spec, root } => {
                format!("{} --data-dir {}", spec.command(), root.describe())
            }
            ServerSource::Shared { spec, instances } => format!(
                "{instances} x {} --redis-url redis://127.0.0.1:PORT, sharing {} --port PORT {} \
                 (both started for each run)",
                spec.command(),
                redis::PROGRAM,
                redis::FLAGS
                    .map(|f| if f.is_empty() { "''" } else { f })
                    .join(" ")
            ),
            ServerSource::Url(target) => target.uri.to_string(),
        }
    }
}

/// The processes of one run, killed when dropped: the server's instances (none for a URL), then
/// the Redis they share, if any.
pub struct Deployment {
    // Dropped in this order: the instances go before their Redis, so none of them sees it vanish.
    instances: Vec<ServerProcess>,
    redis: Option<RedisProcess>,
    /// The data directory of a `Disk` run, removed once its server is gone.
    data_dir: Option<DataDir>,
    /// Where to connect, one per instance (one for a URL).
    pub targets: Vec<Target>,
}

impl Deployment {
    /// Starts `source`'s processes for the run tagged `tag` and waits until every one is ready.
    pub fn start(source: &ServerSource, tag: &str) -> Result<Self, String> {
        let mut data_dir = None;
        let (instances, redis) = match source {
            ServerSource::Url(target) => {
                return Ok(Self {
                    instances: Vec::new(),
                    redis: None,
                    data_dir,
                    targets: vec![target.clone()],
                });
            }
            ServerSource::Spawn(spec) => (vec![ServerProcess::spawn(spec)?], None),
            ServerSource::Disk { spec, root } => {
                let dir = root.fresh(tag)?;
                let mut spec = spec.clone();
                spec.args.push("--data-dir".to_owned());
                spec.args.push(dir.path.display().to_string());
                let server = ServerProcess::spawn(&spec)?;
                data_dir = Some(dir);
                (vec![server], None)
            }
            ServerSource::Shared { spec, instances } => {
                let redis = RedisProcess::spawn()?;
                let mut spec = spec.clone();
                spec.args.extend(["--redis-url".to_owned(), redis.url()]);
                let instances = (0..*instances)
                    .map(|_| ServerProcess::spawn(&spec))
                    .collect::<Result<Vec<_>, _>>()?;
                (instances, Some(redis))
            }
        };
        let targets = instances
            .iter()
            .map(|server| {
                let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, server.port));
                let uri = format!("ws://{addr}/")
                    .parse()
                    .map_err(|e| format!("bad server address {addr}: {e}"))?;
                Ok(Target { addr, uri })
            })
            .collect::<Result<_, String>>()?;
        Ok(Self {
            instances,
            redis,
            data_dir,
            targets,
        })
    }

    /// With a data directory: its flushes, the lines they held and the seconds they took so
    /// far, from the server's /metrics.
    pub async fn disk_counters(&self) -> Option<Result<(u64, u64, f64), String>> {
        self.data_dir.as_ref()?;
        let target = self.targets.first()?;
        let read = async {
            let text = server::scrape(target.addr, "/metrics").await?;
            let counter =
                |name| parse::metric(&text, name).ok_or_else(|| format!("/metrics has no {name}"));
            Ok((
                counter("chat_disk_flushes_total")? as u64,
                counter("chat_disk_lines_total")? as u64,
                counter("chat_disk_flush_seconds_total")?,
            ))
        };
        Some(read.await)
    }

    /// `read` summed over the instances; `None` without any, or if one could not be read.
    fn sum(&self, read: impl Fn(&ServerProcess) -> Option<u64>) -> Option<u64> {
        if self.instances.is_empty() {
            return None;
        }
        self.instances.iter().map(read).sum()
    }

    /// The instances' CPU nanoseconds so far, all threads of all of them.
    pub fn cpu_ns(&self) -> Option<u64> {
        self.sum(ServerProcess::cpu_ns)
    }

    /// The same in clock ticks: the coarse cross-check.
    pub fn cpu_ticks(&self) -> Option<u64> {
        self.sum(ServerProcess::cpu_ticks)
    }

    /// The instances' write syscalls so far.
    pub fn writes(&self) -> Option<u64> {
        self.sum(ServerProcess::writes)
    }

    /// The instances' resident memory now, in kB.
    pub fn rss_kb(&self) -> Option<u64> {
        self.sum(ServerProcess::rss_kb)
    }

    /// The sum of each instance's own peak resident memory, in kB.
    pub fn peak_rss_kb(&self) -> Option<u64> {
        self.sum(ServerProcess::peak_rss_kb)
    }

    /// The shared Redis's CPU nanoseconds so far.
    pub fn redis_cpu_ns(&self) -> Option<u64> {
        self.redis.as_ref()?.cpu_ns()
    }

    /// What exited early, if anything did: which process, and its status.
    pub fn exited(&mut self) -> Option<String> {
        let count = self.instances.len();
        for (i, server) in self.instances.iter_mut().enumerate() {
            if let Some(status) = server.exited() {
                return Some(format!("{}exited: {status}", Self::which(i, count)));
            }
        }
        let status = self.redis.as_mut()?.exited()?;
        Some(format!("{} exited: {status}", redis::PROGRAM))
    }

    /// A note for every instance that wrote to stderr: how many lines, and the first few.
    pub fn log_notes(&self) -> Vec<String> {
        let count = self.instances.len();
        let mut notes = Vec::new();
        for (i, server) in self.instances.iter().enumerate() {
            let (lines, first) = server.log();
            if lines > 0 {
                notes.push(format!(
                    "{}wrote {lines} stderr lines at RUST_LOG=warn, first: {}",
                    Self::which(i, count),
                    first.join(" | ")
                ));
            }
        }
        notes
    }

    /// How a note names instance `i` of `count`: "server " alone, "server 2 of 2 " among several.
    fn which(i: usize, count: usize) -> String {
        if count > 1 {
            format!("server {} of {count} ", i + 1)
        } else {
            "server ".to_owned()
        }
    }
}
