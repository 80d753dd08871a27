//! What the server counts for its operators, and `GET /metrics` in the Prometheus
//! text format, with the `metrics` crate and its Prometheus exporter (its own
//! recorder, not a global one, so several servers in one process keep apart). No
//! label ever holds a room, an address or a name: only small fixed sets (outcomes,
//! statuses, reasons). Deliveries and their latency, counted per write on every
//! core, go into per-thread shards, so that counting never shares a cache line
//! between cores.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use metrics::{Counter, Gauge, Key, KeyName, Label, Level, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::formatting::{write_help_line, write_type_line};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use crate::store::{Flushes, StoreKind};

/// The media type of the exposition.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The latency histogram's name and help.
const LATENCY: &str = "chat_delivery_latency_seconds";
/// With --data-dir: the time commits took, in seconds (a float, so rendered here:
/// the recorder's counters are whole numbers).
const FLUSH_TIME: &str = "chat_disk_flush_seconds_total";
const FLUSH_TIME_HELP: &str = "With --data-dir: the time the commits took, write and fsync (divided by the flushes, what every line waits at least before anyone gets it)";
const LATENCY_HELP: &str = "From accepting a message to writing it to a client, per write (the oldest message in the write)";

/// The upper bounds of the latency histogram's buckets, in nanoseconds (shown in
/// seconds: 0.0005 to 2.5).
const LATENCY_BUCKETS: [u64; 12] = [
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
];

/// How a connection ended up, once its first request was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnectionOutcome {
    /// Upgraded to a WebSocket and joined a room.
    Upgraded,
    /// Refused with an HTTP status (see `chat_refusals_total`).
    Refused,
    /// A plain request answered: the health check, the metrics, the page.
    Answered,
    /// The connection failed during the handshake (TLS, I/O).
    Failed,
    /// The handshake took longer than `--handshake-timeout`.
    TimedOut,
}

impl ConnectionOutcome {
    const ALL: [ConnectionOutcome; 5] = [
        ConnectionOutcome::Upgraded,
        ConnectionOutcome::Refused,
        ConnectionOutcome::Answered,
        ConnectionOutcome::Failed,
        ConnectionOutcome::TimedOut,
    ];

    fn label(self) -> &'static str {
        match self {
            ConnectionOutcome::Upgraded => "upgraded",
            ConnectionOutcome::Refused => "refused",
            ConnectionOutcome::Answered => "answered",
            ConnectionOutcome::Failed => "failed",
            ConnectionOutcome::TimedOut => "timed_out",
        }
    }
}

/// Why a chat connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// The client closed it.
    ClientClosed,
    /// It broke without a close (reset, end of stream).
    Lost,
    /// A write to the client waited longer than `--write-timeout`.
    WriteTimeout,
    /// The client answered nothing, not even pings.
    Keepalive,
    /// The client kept over `--max-rate` for `--flood-timeout`.
    Flood,
    /// The server shut down.
    Shutdown,
    /// The client broke the protocol or its limits (binary, too big, bad UTF-8).
    Protocol,
    /// The client's signed token expired while it was connected.
    Expired,
}

impl Reason {
    const ALL: [Reason; 8] = [
        Reason::ClientClosed,
        Reason::Lost,
        Reason::WriteTimeout,
        Reason::Keepalive,
        Reason::Flood,
        Reason::Shutdown,
        Reason::Protocol,
        Reason::Expired,
    ];

    fn label(self) -> &'static str {
        match self {
            Reason::ClientClosed => "client_closed",
            Reason::Lost => "lost",
            Reason::WriteTimeout => "write_timeout",
            Reason::Keepalive => "keepalive",
            Reason::Flood => "flood",
            Reason::Shutdown => "shutdown",
            Reason::Protocol => "protocol",
            Reason::Expired => "token_expired",
        }
    }
}

/// The HTTP statuses the server refuses with.
const STATUSES: [u16; 9] = [400, 401, 403, 404, 405, 426, 431, 503, 505];

/// Everything counted.
pub(crate) struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    connections: [Counter; ConnectionOutcome::ALL.len()],
    refusals: [Counter; STATUSES.len()],
    disconnections: [Counter; Reason::ALL.len()],
    /// Lines accepted from clients.
    pub(crate) received: Counter,
    /// Lines dropped for going over `--max-rate`.
    pub(crate) rate_limited: Counter,
    /// Messages written to clients; shown through `deliveries_total`.
    pub(crate) deliveries: ShardedCounter,
    deliveries_total: Counter,
    /// Times a session fell behind its room's channel.
    pub(crate) lags: Counter,
    /// Messages sent from the log: history, resumes, lag recovery.
    pub(crate) replayed: Counter,
    /// Messages a client was told it missed (the log no longer held them).
    pub(crate) missed: Counter,
    /// From accepting a message to writing it, per write (the oldest in the write).
    pub(crate) latency: ShardedHistogram,
    /// With Redis: publishes and reads that failed.
    pub(crate) redis_errors: Counter,
    /// With Redis: messages fetched from a stream to fill a gap.
    pub(crate) redis_recovered: Counter,
    /// Lines the store refused (the data directory could not be written, and held
    /// as many as it may): their senders were told.
    pub(crate) not_accepted: Counter,
    open: Gauge,
    rooms: Gauge,
    log_bytes: Gauge,
    redis_up: Gauge,
    disk_up: Gauge,
    disk_flushes: Counter,
    disk_lines: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Figures read off the server's state when the metrics are shown.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Now {
    /// Connections open, handshakes included.
    pub(crate) open: usize,
    /// Rooms that exist.
    pub(crate) rooms: usize,
    /// Bytes the rooms' logs in memory hold.
    pub(crate) log_bytes: usize,
    /// Where the logs are (`memory`, `disk`, `redis`), and whether Redis answers or
    /// the data directory takes writes.
    pub(crate) store: (StoreKind, Option<bool>),
    /// With a data directory: its flushes so far, the lines they held, their time.
    pub(crate) flushes: Option<Flushes>,
}

/// Where metrics are registered from, for the recorder's metadata.
static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

impl Metrics {
    /// Every metric, described, registered and at zero.
    pub(crate) fn new() -> Self {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let counter = |name: &'static str, help: &'static str, labels: Vec<Label>| {
            recorder.describe_counter(KeyName::from(name), None, help.into());
            recorder.register_counter(&Key::from_parts(name, labels), &METADATA)
        };
        let gauge = |name: &'static str, unit: Option<Unit>, help: &'static str| {
            recorder.describe_gauge(KeyName::from(name), unit, help.into());
            recorder.register_gauge(&Key::from_name(name), &METADATA)
        };
        let connections = ConnectionOutcome::ALL.map(|o| {
            counter(
                "chat_connections_total",
                "Connections opened, by what became of them",
                vec![Label::new("outcome", o.label())],
            )
        });
        let refusals = STATUSES.map(|status| {
            counter(
                "chat_refusals_total",
                "Requests refused before any upgrade, by HTTP status",
                vec![Label::new("status", status.to_string())],
            )
        });
        let disconnections = Reason::ALL.map(|r| {
            counter(
                "chat_disconnections_total",
                "Chat connections ended, by reason",
                vec![Label::new("reason", r.label())],
            )
        });
        let plain = |name, help| counter(name, help, Vec::new());
        Self {
            connections,
            refusals,
            disconnections,
            received: plain(
                "chat_messages_received_total",
                "Lines accepted from clients",
            ),
            rate_limited: plain(
                "chat_messages_rate_limited_total",
                "Lines dropped for going over --max-rate",
            ),
            deliveries: ShardedCounter::default(),
            deliveries_total: plain("chat_deliveries_total", "Messages written to clients"),
            lags: plain(
                "chat_lag_events_total",
                "Times a session fell behind its room's channel",
            ),
            replayed: plain(
                "chat_messages_replayed_total",
                "Messages sent from a room's log: history, resumes, lag recovery",
            ),
            missed: plain(
                "chat_messages_missed_total",
                "Messages clients were told they missed: the log no longer held them",
            ),
            latency: ShardedHistogram::default(),
            redis_errors: plain(
                "chat_redis_errors_total",
                "With --redis-url: publishes, reads and pings that failed",
            ),
            redis_recovered: plain(
                "chat_redis_recovered_messages_total",
                "With --redis-url: messages fetched from a room's stream to fill a gap",
            ),
            open: gauge(
                "chat_connections_open",
                None,
                "Connections open now, handshakes included",
            ),
            rooms: gauge("chat_rooms_open", None, "Rooms that exist now"),
            log_bytes: gauge(
                "chat_log_bytes",
                Some(Unit::Bytes),
                "Bytes the rooms' logs in memory hold",
            ),
            redis_up: gauge(
                "chat_redis_up",
                None,
                "With --redis-url: 1 when Redis answers, 0 when it is out of reach",
            ),
            disk_up: gauge(
                "chat_disk_up",
                None,
                "With --data-dir: 1 when it takes writes, 0 while writes fail (lines are held)",
            ),
            disk_flushes: plain(
                "chat_disk_flushes_total",
                "With --data-dir: commits, each one flush to disk (fsync)",
            ),
            disk_lines: plain(
                "chat_disk_lines_total",
                "With --data-dir: entries the commits held (divided by the flushes: lines per flush)",
            ),
            not_accepted: plain(
                "chat_messages_not_accepted_total",
                "Lines refused because the data directory could not be written and held as many as it may; each sender was told",
            ),
            handle,
            recorder,
        }
    }

    /// Counts a connection's outcome.
    pub(crate) fn connection(&self, outcome: ConnectionOutcome) {
        if let Some(i) = ConnectionOutcome::ALL.iter().position(|o| *o == outcome) {
            self.connections[i].increment(1);
        }
    }

    /// Counts a refusal with `status` (and the connection's outcome).
    pub(crate) fn refused(&self, status: u16) {
        self.connection(ConnectionOutcome::Refused);
        match STATUSES.iter().position(|s| *s == status) {
            Some(i) => self.refusals[i].increment(1),
            // A status not listed is registered when first seen: refusals are rare.
            None => self
                .recorder
                .register_counter(
                    &Key::from_parts(
                        "chat_refusals_total",
                        vec![Label::new("status", status.to_string())],
                    ),
                    &METADATA,
                )
                .increment(1),
        }
    }

    /// Counts a chat connection's end.
    pub(crate) fn disconnected(&self, reason: Reason) {
        if let Some(i) = Reason::ALL.iter().position(|r| *r == reason) {
            self.disconnections[i].increment(1);
        }
    }

    /// The exposition, with the figures of `now`.
    pub(crate) fn render(&self, now: Now) -> String {
        #[allow(clippy::cast_precision_loss)] // Gauges are f64; these stay far below 2^53.
        {
            self.open.set(now.open as f64);
            self.rooms.set(now.rooms as f64);
            self.log_bytes.set(now.log_bytes as f64);
        }
        let (store, up) = now.store;
        let up = |kind| f64::from(u8::from(store == kind && up.unwrap_or(false)));
        self.redis_up.set(up(StoreKind::Redis));
        self.disk_up.set(up(StoreKind::Disk));
        if let Some(flushes) = now.flushes {
            self.disk_flushes.absolute(flushes.count);
            self.disk_lines.absolute(flushes.lines);
        }
        self.deliveries_total.absolute(self.deliveries.get());
        let mut text = self.handle.render();
        self.latency.render(LATENCY, LATENCY_HELP, &mut text);
        if let Some(flushes) = now.flushes {
            use std::fmt::Write;
            write_help_line(&mut text, FLUSH_TIME, None, None, FLUSH_TIME_HELP);
            write_type_line(&mut text, FLUSH_TIME, None, None, "counter");
            #[allow(clippy::cast_precision_loss)] // Seconds, as Prometheus wants them.
            let seconds = flushes.nanos as f64 / 1e9;
            let _ = writeln!(text, "{FLUSH_TIME} {seconds}");
        }
        text
    }
}

/// Shards per counter: more than the cores that count.
const SHARDS: usize = 32;

/// Which shard this thread counts in.
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    SHARD.with(|shard| {
        if shard.get() == usize::MAX {
            shard.set(NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS);
        }
        shard.get()
    })
}

/// One `T` per shard: each thread writes to its own, and readers go through all.
#[derive(Debug)]
struct Shards<T>([T; SHARDS]);

impl<T: Default> Default for Shards<T> {
    fn default() -> Self {
        Self(std::array::from_fn(|_| T::default()))
    }
}

impl<T> Shards<T> {
    /// This thread's shard.
    fn mine(&self) -> &T {
        &self.0[shard()]
    }

    /// Every shard.
    fn all(&self) -> impl Iterator<Item = &T> {
        self.0.iter()
    }
}

/// One atomic on a cache line of its own.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded(AtomicU64);

/// A counter with one shard per thread, summed when shown.
#[derive(Debug, Default)]
pub(crate) struct ShardedCounter(Shards<Padded>);

impl ShardedCounter {
    /// Adds `n`.
    pub(crate) fn add(&self, n: u64) {
        self.0.mine().0.fetch_add(n, Ordering::Relaxed);
    }

    /// The total.
    pub(crate) fn get(&self) -> u64 {
        self.0.all().map(|p| p.0.load(Ordering::Relaxed)).sum()
    }
}

/// One shard of a histogram: a count per bucket (the last one past every bound)
/// and the sum, on cache lines of its own.
#[derive(Debug, Default)]
#[repr(align(128))]
struct HistogramShard {
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

/// A histogram of durations in [`LATENCY_BUCKETS`], with one shard per thread,
/// summed when shown.
///
/// Written here rather than taken from the exporter: its histogram keeps every
/// sample in a shared lock-free list (under an epoch collector) until upkeep folds
/// them into buckets, and at full fan-out, a sample per write on every core, that
/// took about 4% of the server's CPU (perf, `steady`), more than any other part of
/// the session loop. A sample here is two uncontended adds. It is shown in the same
/// text format, with the exporter's own help and type lines.
#[derive(Debug, Default)]
pub(crate) struct ShardedHistogram(Shards<HistogramShard>);

impl ShardedHistogram {
    /// Counts one duration.
    pub(crate) fn record(&self, value: Duration) {
        let nanos = u64::try_from(value.as_nanos()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|bound| nanos <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        let shard = self.0.mine();
        shard.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        shard.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Appends the histogram to an exposition: cumulative buckets, sum, count.
    fn render(&self, name: &str, help: &str, text: &mut String) {
        use std::fmt::Write;
        let bucket = |i: usize| -> u64 {
            self.0
                .all()
                .map(|shard| shard.buckets[i].load(Ordering::Relaxed))
                .sum()
        };
        let sum_nanos: u64 = self
            .0
            .all()
            .map(|shard| shard.sum_nanos.load(Ordering::Relaxed))
            .sum();
        write_help_line(text, name, None, None, help);
        write_type_line(text, name, None, None, "histogram");
        let mut count = 0;
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            count += bucket(i);
            #[allow(clippy::cast_precision_loss)] // The bounds are exact in f64.
            let le = *bound as f64 / 1e9;
            let _ = writeln!(text, "{name}_bucket{{le=\"{le}\"}} {count}");
        }
        count += bucket(LATENCY_BUCKETS.len());
        let _ = writeln!(text, "{name}_bucket{{le=\"+Inf\"}} {count}");
        #[allow(clippy::cast_precision_loss)] // Seconds, as Prometheus wants them.
        let sum = sum_nanos as f64 / 1e9;
        let _ = writeln!(text, "{name}_sum {sum}");
        let _ = writeln!(text, "{name}_count {count}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sharded_counters_sum_every_thread() {
        let counter = ShardedCounter::default();
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| (0..1000).for_each(|_| counter.add(2)));
            }
        });
        assert_eq!(counter.get(), 8000);
    }

    #[test]
    fn the_exposition_names_every_metric_with_its_help_and_type() {
        let metrics = Metrics::new();
        metrics.refused(401);
        metrics.refused(418);
        metrics.connection(ConnectionOutcome::Upgraded);
        metrics.disconnected(Reason::Lost);
        metrics.deliveries.add(3);
        metrics.latency.record(Duration::from_millis(2));
        metrics.latency.record(Duration::from_secs(3));
        let text = metrics.render(Now {
            open: 2,
            rooms: 1,
            log_bytes: 100,
            store: (StoreKind::Memory, None),
            flushes: None,
        });
        for line in [
            "# HELP chat_connections_total Connections opened, by what became of them",
            "# TYPE chat_connections_total counter",
            "chat_connections_total{outcome=\"refused\"} 2",
            "chat_connections_total{outcome=\"upgraded\"} 1",
            "chat_connections_total{outcome=\"timed_out\"} 0",
            "chat_refusals_total{status=\"401\"} 1",
            "chat_refusals_total{status=\"418\"} 1",
            "chat_disconnections_total{reason=\"lost\"} 1",
            "chat_deliveries_total 3",
            "# TYPE chat_delivery_latency_seconds histogram",
            "# HELP chat_delivery_latency_seconds From accepting a message to writing it to a client, per write (the oldest message in the write)",
            "chat_delivery_latency_seconds_bucket{le=\"0.001\"} 0",
            "chat_delivery_latency_seconds_bucket{le=\"0.0025\"} 1",
            "chat_delivery_latency_seconds_bucket{le=\"1\"} 1",
            "chat_delivery_latency_seconds_bucket{le=\"2.5\"} 1",
            "chat_delivery_latency_seconds_bucket{le=\"+Inf\"} 2",
            "chat_delivery_latency_seconds_sum 3.002",
            "chat_delivery_latency_seconds_count 2",
            "chat_connections_open 2",
            "chat_log_bytes 100",
            "chat_redis_up 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }
}
