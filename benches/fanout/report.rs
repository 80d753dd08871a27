//! What each run measured, rows of runs per scenario and server, the tables and the JSON.
//!
//! Pure: no I/O, so `tests/bench_arithmetic.rs` can reach all of it.

use std::fmt::Write as _;

use crate::stats;

/// The label of our own server; the ratio table divides the others by it.
pub const OURS: &str = "ours";

/// The figure that picks a row's median run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Headline {
    /// Closed-loop scenarios: as fast as the server allows.
    #[default]
    DeliveriesPerSecond,
    /// Open-loop scenarios: the rate is fixed, the tail is the question.
    P99,
    /// Idle connections: what each one costs.
    KbPerConnection,
}

impl Headline {
    fn name(self) -> &'static str {
        match self {
            Headline::DeliveriesPerSecond => "deliv/s",
            Headline::P99 => "p99",
            Headline::KbPerConnection => "kB/conn",
        }
    }

    fn json_name(self) -> &'static str {
        match self {
            Headline::DeliveriesPerSecond => "deliveries_per_second",
            Headline::P99 => "latency_p99_ms",
            Headline::KbPerConnection => "server_rss_per_connection_kb",
        }
    }

    fn higher_is_better(self) -> bool {
        self == Headline::DeliveriesPerSecond
    }
}

/// What one run of one scenario against one server measured.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub scenario: &'static str,
    /// The server's label: `ours`, a variant's label, or another server's name.
    pub server: String,
    /// Instances of the server sharing the load through one Redis; 0 or 1: a single server.
    /// Its CPU, writes and memory are sums over them.
    pub instances: usize,
    pub headline: Headline,
    pub receivers: usize,
    pub senders: usize,
    /// Messages planned, all senders together.
    pub messages: u64,
    pub sent: u64,
    /// Copies expected: messages times every connection, senders included.
    pub expected: u64,
    /// Copies received, duplicates included.
    pub copies: u64,
    /// Distinct copies received: the deliveries every rate and cost is counted in.
    pub unique: u64,
    /// Copies of a message the connection had already received.
    pub duplicates: u64,
    /// Copies with a lower seq than one already seen from the same sender.
    pub out_of_order: u64,
    pub lag_notices: u64,
    /// Sum of the counts in lag notices.
    pub missed_reported: u64,
    /// Nanoseconds from the first send (its stamp) to the last copy received.
    pub delivery_ns: Option<u64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// Server CPU time over the send phase, all threads, from their schedstat (ns resolution).
    pub cpu_ns: Option<u64>,
    /// The shared Redis's CPU time over the send phase, apart from the server's (schedstat).
    pub redis_cpu_ns: Option<u64>,
    /// The load generator's own CPU time over the send phase (this process, every thread,
    /// schedstat): on a machine it shares with the server, it bounds what any server can do.
    pub generator_cpu_ns: Option<u64>,
    /// The same from /proc/PID/stat's clock ticks, in seconds: a coarse cross-check.
    pub cpu_ticks_s: Option<f64>,
    /// Write syscalls the server made over the send phase (`syscw` in /proc/PID/io).
    pub writes: Option<u64>,
    pub peak_rss_kb: Option<u64>,
    /// With a data directory: its flushes (fsyncs) and the lines they held, from /metrics at
    /// the end of the run (the directory is new for each run).
    pub disk_flushes: Option<u64>,
    pub disk_lines: Option<u64>,
    /// The time those flushes took, in seconds (chat_disk_flush_seconds_total).
    pub disk_flush_s: Option<f64>,
    /// A closed-loop scenario's window: each sender's own messages in flight at most.
    pub window: Option<usize>,
    /// Server RSS growth over the connect phase, in kB.
    pub rss_growth_kb: Option<i64>,
    /// Connections that completed the upgrade and got the welcome.
    pub connected: usize,
    pub connect_s: f64,
    pub connect_failures: u64,
    pub timed_out: bool,
    /// Anything worth a line under the table.
    pub notes: Vec<String>,
}

impl Outcome {
    pub fn connections(&self) -> usize {
        self.receivers + self.senders
    }

    /// Expected copies never received (duplicates do not make up for them).
    pub fn lost(&self) -> u64 {
        self.expected.saturating_sub(self.unique)
    }

    /// Distinct copies per second from the first send to the last copy.
    pub fn deliveries_per_second(&self) -> Option<f64> {
        stats::rate(self.unique, self.delivery_ns?)
    }

    /// Server instances: 1 for a single server.
    pub fn instances(&self) -> usize {
        self.instances.max(1)
    }

    /// Distinct copies per second per server instance: what each of them delivered, on average.
    pub fn deliveries_per_second_per_instance(&self) -> Option<f64> {
        stats::per_instance(self.deliveries_per_second(), self.instances)
    }

    /// Server CPU seconds per million distinct deliveries over the send phase.
    pub fn cpu_s_per_million(&self) -> Option<f64> {
        stats::cpu_s_per_million(self.cpu_ns?, self.unique)
    }

    /// The shared Redis's CPU seconds per million distinct deliveries over the send phase.
    pub fn redis_cpu_s_per_million(&self) -> Option<f64> {
        stats::cpu_s_per_million(self.redis_cpu_ns?, self.unique)
    }

    /// The load generator's CPU seconds per million distinct deliveries over the send phase.
    pub fn generator_cpu_s_per_million(&self) -> Option<f64> {
        stats::cpu_s_per_million(self.generator_cpu_ns?, self.unique)
    }

    /// Server write syscalls per distinct delivery over the send phase.
    pub fn writes_per_delivery(&self) -> Option<f64> {
        stats::per_item(self.writes?, self.unique)
    }

    /// With a data directory: lines per flush (fsync), the group commit's batch.
    pub fn lines_per_flush(&self) -> Option<f64> {
        stats::per_item(self.disk_lines?, self.disk_flushes?)
    }

    /// With a data directory: a flush's mean time, in ms: what every line waited at least
    /// before anyone was sent it.
    pub fn flush_ms(&self) -> Option<f64> {
        Some(self.disk_flush_s? * 1e3 / self.disk_flushes.filter(|&f| f > 0)? as f64)
    }

    /// A closed-loop run's round trip per line, in ms: a sender keeps `window` lines in
    /// flight, so each took window / (its lines per second) from its send to its copy.
    pub fn round_trip_ms(&self) -> Option<f64> {
        let window = self.window? as f64;
        let per_sender =
            self.deliveries_per_second()? / self.connections() as f64 / self.senders.max(1) as f64;
        (per_sender > 0.0).then(|| window / per_sender * 1e3)
    }

    pub fn peak_rss_mb(&self) -> Option<f64> {
        Some(self.peak_rss_kb? as f64 / 1024.0)
    }

    pub fn rss_per_connection_kb(&self) -> Option<f64> {
        (self.connected > 0).then_some(self.rss_growth_kb? as f64 / self.connected as f64)
    }

    fn headline_value(&self) -> Option<f64> {
        match self.headline {
            Headline::DeliveriesPerSecond => self.deliveries_per_second(),
            Headline::P99 => self.p99_ms,
            Headline::KbPerConnection => self.rss_per_connection_kb(),
        }
    }
}

/// Every run of one scenario against one server, in run order.
#[derive(Clone, Debug)]
pub struct Row {
    pub runs: Vec<Outcome>,
}

impl Row {
    /// The run whose figures the row shows: the median by the scenario's headline.
    pub fn median(&self) -> &Outcome {
        let headline = self.runs[0].headline;
        let values: Vec<Option<f64>> = self.runs.iter().map(Outcome::headline_value).collect();
        let index = stats::median_run(&values, headline.higher_is_better()).unwrap_or(0);
        &self.runs[index]
    }

    fn first(&self) -> &Outcome {
        &self.runs[0]
    }

    pub fn worst_lost(&self) -> u64 {
        stats::worst(self.runs.iter().map(Outcome::lost))
    }

    pub fn worst_duplicates(&self) -> u64 {
        stats::worst(self.runs.iter().map(|o| o.duplicates))
    }

    pub fn worst_out_of_order(&self) -> u64 {
        stats::worst(self.runs.iter().map(|o| o.out_of_order))
    }
}

/// A server the benchmark ran, for the footer and the JSON.
#[derive(Clone, Debug)]
pub struct ServerInfo {
    pub label: String,
    /// The command line it was started with, or its URL.
    pub command: String,
}

/// Everything one invocation measured: rows by scenario, each scenario's servers in run order,
/// ours first.
#[derive(Clone, Debug)]
pub struct Report {
    pub rows: Vec<Row>,
    pub servers: Vec<ServerInfo>,
    pub runs: usize,
    pub cores: usize,
}

impl Report {
    /// Whether any row is of several instances sharing a Redis: the tables then show the figures
    /// per instance and Redis's CPU.
    pub fn shared(&self) -> bool {
        self.rows.iter().any(|row| row.first().instances() > 1)
    }

    /// Whether every run of every scenario against every server received every copy.
    pub fn nothing_lost(&self) -> bool {
        self.rows
            .iter()
            .all(|row| row.runs.iter().all(|o| o.lost() == 0))
    }

    /// The ratio of each other server's row to ours in the same scenario.
    pub fn ratios(&self) -> Vec<Ratios> {
        let mut ratios = Vec::new();
        for row in &self.rows {
            let first = row.first();
            if first.server == OURS {
                continue;
            }
            let Some(ours) = self.rows.iter().find(|r| {
                r.first().server == OURS
                    && r.first().scenario == first.scenario
                    && r.first().connections() == first.connections()
            }) else {
                continue;
            };
            let (o, b) = (row.median(), ours.median());
            ratios.push(Ratios {
                scenario: first.scenario,
                connections: first.connections(),
                server: first.server.clone(),
                deliveries_per_second: stats::ratio(
                    o.deliveries_per_second(),
                    b.deliveries_per_second(),
                ),
                per_instance: stats::ratio(
                    o.deliveries_per_second_per_instance(),
                    b.deliveries_per_second_per_instance(),
                ),
                p50: stats::ratio(o.p50_ms, b.p50_ms),
                p99: stats::ratio(o.p99_ms, b.p99_ms),
                cpu_s_per_million: stats::ratio(o.cpu_s_per_million(), b.cpu_s_per_million()),
                writes_per_delivery: stats::ratio(o.writes_per_delivery(), b.writes_per_delivery()),
                kb_per_connection: stats::ratio(
                    o.rss_per_connection_kb(),
                    b.rss_per_connection_kb(),
                ),
                worst_lost: row.worst_lost(),
                expected: first.expected,
            });
        }
        ratios
    }
}

/// One other server's figures divided by ours, median run by median run.
#[derive(Clone, Debug, PartialEq)]
pub struct Ratios {
    pub scenario: &'static str,
    pub connections: usize,
    pub server: String,
    pub deliveries_per_second: Option<f64>,
    /// Deliveries per second per instance, theirs over ours: for several instances sharing a
    /// Redis, what each does compared with one alone.
    pub per_instance: Option<f64>,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub cpu_s_per_million: Option<f64>,
    pub writes_per_delivery: Option<f64>,
    pub kb_per_connection: Option<f64>,
    /// The other server's worst-run loss, not a ratio.
    pub worst_lost: u64,
    pub expected: u64,
}

fn cell(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "n/a".to_string(), |v| format!("{v:.decimals$}"))
}

fn times(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".to_string(), |v| format!("{v:.2}x"))
}

fn share(part: u64, whole: u64) -> f64 {
    100.0 * part as f64 / whole.max(1) as f64
}

/// The per-server table with its footer and notes, the ratio table when there are other
/// servers, and a loud `LOST` line for every row whose worst run lost copies.
pub fn table(report: &Report) -> String {
    let mut out = String::new();
    let width = report
        .servers
        .iter()
        .map(|s| s.label.len())
        .chain([6])
        .max()
        .unwrap_or(6);
    // With instances sharing a Redis: their count and deliveries per instance after deliv/s,
    // Redis's CPU after the servers'.
    let shared = report.shared();
    let per_instance = |instances: &str, rate: &str| {
        if shared {
            format!(" {instances:>4} {rate:>10}")
        } else {
            String::new()
        }
    };
    let redis = |cpu: &str| {
        if shared {
            format!(" {cpu:>9}")
        } else {
            String::new()
        }
    };
    let _ = writeln!(
        out,
        "{:<8} {:<width$} {:>10} {:>6} {:>10}{} {:>7} {:>7} {:>8} {:>8}{} {:>8} {:>8} {:>8} \
         {:>9} {:>7} {:>5} {:>5}",
        "scenario",
        "server",
        "conns(N+S)",
        "msgs",
        "deliv/s",
        per_instance("inst", "per inst"),
        "p50 ms",
        "p99 ms",
        "max ms",
        "cpu s/M",
        redis("redis s/M"),
        "wr/deliv",
        "peak MB",
        "kB/conn",
        "connect s",
        "lost",
        "dup",
        "ooo",
    );
    for row in &report.rows {
        let o = row.median();
        let _ = writeln!(
            out,
            "{:<8} {:<width$} {:>10} {:>6} {:>10}{} {:>7} {:>7} {:>8} {:>8}{} {:>8} {:>8} {:>8} \
             {:>9.2} {:>7} {:>5} {:>5}",
            o.scenario,
            o.server,
            format!("{}+{}", o.receivers, o.senders),
            o.messages,
            cell(o.deliveries_per_second(), 0),
            per_instance(
                &o.instances().to_string(),
                &cell(o.deliveries_per_second_per_instance(), 0)
            ),
            cell(o.p50_ms, 2),
            cell(o.p99_ms, 2),
            cell(o.max_ms, 2),
            cell(o.cpu_s_per_million(), 2),
            redis(
                &o.redis_cpu_s_per_million()
                    .map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"))
            ),
            cell(o.writes_per_delivery(), 3),
            cell(o.peak_rss_mb(), 1),
            cell(o.rss_per_connection_kb(), 1),
            o.connect_s,
            row.worst_lost(),
            row.worst_duplicates(),
            row.worst_out_of_order(),
        );
    }
    let _ = writeln!(
        out,
        "conns = N receivers + S senders (senders receive their own copies too). deliveries = \
         distinct copies received, expected = msgs x conns. deliv/s = deliveries from the first \
         send to the last copy. Latency = arrival minus the send time stamped in the message; \
         open-loop senders (steady, reconnect, busy) stamp the time a message was due, so a \
         sender that falls behind is charged for it; a replayed copy arrives as late as its \
         client was away. cpu s/M = server CPU seconds, all threads (schedstat, \
         ns), per million deliveries over the send phase (the JSON adds the load generator's \
         own, generator_cpu_s_per_million: where the two share the cores, their sum times \
         deliv/s is the cores in use). wr/deliv = the server's write \
         syscalls (syscw) over the send phase per delivery. kB/conn = server RSS growth over the \
         connect phase / conns. lost, dup, ooo = the worst run's copies never received, \
         received twice, received after a later one from the same sender."
    );
    if shared {
        let _ = writeln!(
            out,
            "inst = instances of the server sharing rooms through one Redis, the connections and \
             the senders split evenly across them; per inst = deliv/s / inst. Their cpu s/M, \
             wr/deliv, peak MB and kB/conn are sums over the instances (peak MB: of each one's \
             own peak); redis s/M = the redis-server's CPU (schedstat, every thread) per million \
             deliveries over the send phase, not included in cpu s/M."
        );
    }
    if report.runs > 1 {
        let mut headlines: Vec<String> = Vec::new();
        for row in &report.rows {
            let o = row.first();
            let entry = format!("{} for {}", o.headline.name(), o.scenario);
            if !headlines.contains(&entry) {
                headlines.push(entry);
            }
        }
        let _ = writeln!(
            out,
            "{} runs, interleaved across servers. Every other figure of a row comes from one \
             run: the median by its headline ({}); with an even count, the worse of the middle \
             two. Every run is in the JSON.",
            report.runs,
            headlines.join(", ")
        );
    }
    let commands: Vec<String> = report
        .servers
        .iter()
        .map(|s| format!("{} = {}", s.label, s.command))
        .collect();
    let _ = writeln!(out, "Servers: {}.", commands.join("; "));
    let _ = writeln!(
        out,
        "Load generator (tokio, 2 workers) and server share this machine's {} cores.",
        report.cores
    );
    for row in &report.rows {
        for (i, o) in row.runs.iter().enumerate() {
            for note in &o.notes {
                let run = if row.runs.len() > 1 {
                    format!(" run {}", i + 1)
                } else {
                    String::new()
                };
                let _ = writeln!(
                    out,
                    "  {} on {} ({} conns){run}: {note}",
                    o.scenario,
                    o.server,
                    o.connections()
                );
            }
        }
    }

    let ratios = report.ratios();
    if !ratios.is_empty() {
        let ratio_per_instance = |text: &str| {
            if shared {
                format!(" {text:>8}")
            } else {
                String::new()
            }
        };
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<8} {:<width$} {:>6} {:>10}{} {:>7} {:>7} {:>8} {:>8} {:>8} {:>18}",
            "scenario",
            "vs ours",
            "conns",
            "deliv/s",
            ratio_per_instance("per inst"),
            "p50",
            "p99",
            "cpu s/M",
            "wr/deliv",
            "kB/conn",
            "worst lost",
        );
        for r in &ratios {
            let _ = writeln!(
                out,
                "{:<8} {:<width$} {:>6} {:>10}{} {:>7} {:>7} {:>8} {:>8} {:>8} {:>18}",
                r.scenario,
                r.server,
                r.connections,
                times(r.deliveries_per_second),
                ratio_per_instance(&times(r.per_instance)),
                times(r.p50),
                times(r.p99),
                times(r.cpu_s_per_million),
                times(r.writes_per_delivery),
                times(r.kb_per_connection),
                format!("{} ({:.2}%)", r.worst_lost, share(r.worst_lost, r.expected)),
            );
        }
        let _ = writeln!(
            out,
            "Each figure of the other server's row divided by ours (same scenario, the rows' \
             median runs): deliv/s above 1x is faster than ours, the others above 1x cost more \
             than ours. worst lost is the other server's own worst run, not a ratio."
        );
        if shared {
            let _ = writeln!(
                out,
                "per inst = deliv/s per instance, theirs over ours (a single server is one \
                 instance): 0.50x is each of several instances delivering half as fast as ours \
                 alone. Open-loop scenarios offer a fixed rate, so there it is 1/inst by \
                 construction; the closed-loop ones show what the instances can do."
            );
        }
    }

    for row in &report.rows {
        let lost = row.worst_lost();
        let dup = row.worst_duplicates();
        let ooo = row.worst_out_of_order();
        let o = row.first();
        if lost > 0 {
            let per_run: Vec<String> = row.runs.iter().map(|o| o.lost().to_string()).collect();
            let _ = writeln!(
                out,
                "LOST: {} on {} ({} conns) lost {lost} of {} copies ({:.3}%) in its worst run \
                 (per run: {}); {} lag notices reporting {} missed{}",
                o.scenario,
                o.server,
                o.connections(),
                o.expected,
                share(lost, o.expected),
                per_run.join(", "),
                stats::worst(row.runs.iter().map(|o| o.lag_notices)),
                stats::worst(row.runs.iter().map(|o| o.missed_reported)),
                if row.runs.iter().any(|o| o.timed_out) {
                    "; delivery timed out"
                } else {
                    ""
                }
            );
        }
        if dup > 0 || ooo > 0 {
            let _ = writeln!(
                out,
                "DISORDER: {} on {} ({} conns): up to {dup} duplicate and {ooo} out-of-order \
                 copies in a run",
                o.scenario,
                o.server,
                o.connections(),
            );
        }
    }
    if report.nothing_lost() {
        let _ = writeln!(out, "No copies lost.");
    }
    out
}

/// The same figures as a JSON document: each row's median run and every run, the ratios, and
/// `sections` (name, JSON value) after them.
pub fn json(report: &Report, sections: &[(&str, String)]) -> String {
    let mut out = String::new();
    let servers: Vec<String> = report
        .servers
        .iter()
        .map(|s| {
            format!(
                "{{\"label\": {}, \"command\": {}}}",
                json_string(&s.label),
                json_string(&s.command)
            )
        })
        .collect();
    let _ = write!(
        out,
        "{{\n  \"runs\": {},\n  \"cores\": {},\n  \"generator_workers\": 2,\n  \"servers\": [{}],\
         \n  \"results\": [",
        report.runs,
        report.cores,
        servers.join(", ")
    );
    for (i, row) in report.rows.iter().enumerate() {
        let first = row.first();
        let median = row.median();
        let median_index = row
            .runs
            .iter()
            .position(|o| std::ptr::eq(o, median))
            .unwrap_or(0);
        let runs: Vec<String> = row.runs.iter().map(run_json).collect();
        let _ = write!(
            out,
            "{}\n    {{\"scenario\": {}, \"server\": {}, \"connections\": {}, \"headline\": {}, \
             \"median_run\": {}, \"worst_lost\": {}, \"worst_duplicates\": {}, \
             \"worst_out_of_order\": {}, \"median\": {},\n     \"runs\": [\n      {}]}}",
            if i == 0 { "" } else { "," },
            json_string(first.scenario),
            json_string(&first.server),
            first.connections(),
            json_string(first.headline.json_name()),
            median_index + 1,
            row.worst_lost(),
            row.worst_duplicates(),
            row.worst_out_of_order(),
            run_json(median),
            runs.join(",\n      "),
        );
    }
    out.push_str("\n  ],\n  \"ratios\": [");
    for (i, r) in report.ratios().iter().enumerate() {
        let _ = write!(
            out,
            "{}\n    {{\"scenario\": {}, \"connections\": {}, \"server\": {}, \
             \"deliveries_per_second\": {}, \"deliveries_per_second_per_instance\": {}, \
             \"latency_p50_ms\": {}, \"latency_p99_ms\": {}, \
             \"server_cpu_s_per_million\": {}, \"writes_per_delivery\": {}, \
             \"server_rss_per_connection_kb\": {}, \"worst_lost\": {}, \"expected_copies\": {}}}",
            if i == 0 { "" } else { "," },
            json_string(r.scenario),
            r.connections,
            json_string(&r.server),
            num(r.deliveries_per_second),
            num(r.per_instance),
            num(r.p50),
            num(r.p99),
            num(r.cpu_s_per_million),
            num(r.writes_per_delivery),
            num(r.kb_per_connection),
            r.worst_lost,
            r.expected,
        );
    }
    out.push_str("\n  ]");
    for (name, value) in sections {
        let _ = write!(out, ",\n  {}: {value}", json_string(name));
    }
    out.push_str("\n}\n");
    out
}

/// One run's figures as a JSON object.
fn run_json(o: &Outcome) -> String {
    let notes: Vec<String> = o.notes.iter().map(|n| json_string(n)).collect();
    format!(
        "{{\"instances\": {}, \"receivers\": {}, \"senders\": {}, \"messages\": {}, \"sent\": {}, \
         \"expected_copies\": {}, \"delivered_copies\": {}, \"unique_copies\": {}, \"lost\": {}, \
         \"duplicates\": {}, \"out_of_order\": {}, \"lag_notices\": {}, \"missed_reported\": {}, \
         \"deliveries_per_second\": {}, \"deliveries_per_second_per_instance\": {}, \
         \"latency_p50_ms\": {}, \"latency_p99_ms\": {}, \
         \"latency_max_ms\": {}, \"server_cpu_s\": {}, \"server_cpu_s_from_ticks\": {}, \
         \"server_cpu_s_per_million\": {}, \"redis_cpu_s\": {}, \"redis_cpu_s_per_million\": {}, \
         \"generator_cpu_s_per_million\": {}, \
         \"server_writes\": {}, \"writes_per_delivery\": {}, \
         \"server_peak_rss_mb\": {}, \"server_rss_per_connection_kb\": {}, \
         \"disk_flushes\": {}, \"disk_lines\": {}, \"disk_flush_s\": {}, \
         \"round_trip_ms\": {}, \"connect_s\": {}, \
         \"connect_failures\": {}, \"timed_out\": {}, \"notes\": [{}]}}",
        o.instances(),
        o.receivers,
        o.senders,
        o.messages,
        o.sent,
        o.expected,
        o.copies,
        o.unique,
        o.lost(),
        o.duplicates,
        o.out_of_order,
        o.lag_notices,
        o.missed_reported,
        num(o.deliveries_per_second()),
        num(o.deliveries_per_second_per_instance()),
        num(o.p50_ms),
        num(o.p99_ms),
        num(o.max_ms),
        num(o.cpu_ns.map(|ns| ns as f64 / 1e9)),
        num(o.cpu_ticks_s),
        num(o.cpu_s_per_million()),
        num(o.redis_cpu_ns.map(|ns| ns as f64 / 1e9)),
        num(o.redis_cpu_s_per_million()),
        num(o.generator_cpu_s_per_million()),
        count(o.writes),
        num(o.writes_per_delivery()),
        num(o.peak_rss_mb()),
        num(o.rss_per_connection_kb()),
        count(o.disk_flushes),
        count(o.disk_lines),
        num(o.disk_flush_s),
        num(o.round_trip_ms()),
        num(Some(o.connect_s)),
        o.connect_failures,
        o.timed_out,
        notes.join(", "),
    )
}

fn count(value: Option<u64>) -> String {
    value.map_or_else(|| "null".to_string(), |v| v.to_string())
}

fn num(value: Option<f64>) -> String {
    match value {
        Some(v) if v.is_finite() => format!("{v}"),
        _ => "null".to_string(),
    }
}

fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
