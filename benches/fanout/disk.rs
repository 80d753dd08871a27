//! The disk store (`--data-dir`) against memory: each disk run against the memory run beside
//! it, the worst pair judged by the targets, as a table and JSON.
//!
//! Pure: no I/O, so `tests/bench_arithmetic.rs` can reach all of it.

use std::fmt::Write as _;

use crate::report::{OURS, Outcome, Report, Row};
use crate::stats;

/// The label of our server with `--data-dir`.
pub const DISK: &str = "disk";

/// What the disk store must do against memory (issue: the disk store).
#[derive(Clone, Debug)]
pub struct DiskTargets {
    /// Scenarios judged by throughput: disk's deliveries per second at least
    /// `min_throughput` times memory's.
    pub throughput_scenarios: &'static [&'static str],
    pub min_throughput: f64,
    /// Scenarios judged by the tail: disk's p99 at most `max_p99_rise_ms` above memory's.
    pub latency_scenarios: &'static [&'static str],
    pub max_p99_rise_ms: f64,
}

impl Default for DiskTargets {
    fn default() -> Self {
        Self {
            throughput_scenarios: &["crowd", "senders", "busy"],
            min_throughput: 0.8,
            latency_scenarios: &["steady"],
            max_p99_rise_ms: 5.0,
        }
    }
}

/// One disk run against the memory run beside it (the same run number: interleaved, so the
/// machine's load fell on both alike).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Pair {
    /// Disk's deliveries per second over memory's.
    pub throughput: Option<f64>,
    /// Disk's server CPU per delivery over memory's.
    pub cpu: Option<f64>,
    /// Disk's p99 minus memory's, in ms.
    pub p99_rise_ms: Option<f64>,
    /// Disk's lines per flush (fsync) over the run, from its /metrics.
    pub lines_per_flush: Option<f64>,
    /// Disk's mean flush time, in ms, from its /metrics.
    pub flush_ms: Option<f64>,
    /// A closed-loop scenario's ceiling for `throughput`: [`flush_bound`] of memory's round
    /// trip and disk's flush.
    pub bound: Option<f64>,
    /// Copies the disk run lost.
    pub lost: u64,
}

/// The most a closed loop can keep of its rate when each line waits for a flush of
/// `flush_ms` before anyone gets it, its own sender included: a sender with W lines in
/// flight and a round trip of `round_trip_ms` per line sends W / round trip lines a second;
/// with every round trip longer by at least the flush, at most W / (round trip + flush). It
/// takes the rest of the round trip to stay as long as in memory, which holds where both runs
/// keep the cores as busy (disk's CPU per delivery is memory's or more).
pub fn flush_bound(round_trip_ms: f64, flush_ms: f64) -> Option<f64> {
    (round_trip_ms > 0.0 && flush_ms >= 0.0).then(|| round_trip_ms / (round_trip_ms + flush_ms))
}

impl Pair {
    /// Disk run `disk` against memory run `memory`.
    pub fn of(disk: &Outcome, memory: &Outcome) -> Self {
        let p99_rise_ms = match (disk.p99_ms, memory.p99_ms) {
            (Some(disk), Some(memory)) => Some(disk - memory),
            _ => None,
        };
        Self {
            throughput: stats::ratio(disk.deliveries_per_second(), memory.deliveries_per_second()),
            cpu: stats::ratio(disk.cpu_s_per_million(), memory.cpu_s_per_million()),
            p99_rise_ms,
            lines_per_flush: disk.lines_per_flush(),
            flush_ms: disk.flush_ms(),
            bound: memory
                .round_trip_ms()
                .zip(disk.flush_ms())
                .and_then(|(round_trip, flush)| flush_bound(round_trip, flush)),
            lost: disk.lost(),
        }
    }
}

/// What a scenario is judged by.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    /// Deliveries per second at least this share of memory's, in every run.
    Throughput(f64),
    /// p99 at most this many ms above memory's, in every run.
    P99Rise(f64),
    /// Nothing lost, and no figure.
    NoLoss,
}

/// A scenario's disk runs against its memory runs.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    pub scenario: &'static str,
    pub connections: usize,
    pub target: Target,
    /// Run by run.
    pub pairs: Vec<Pair>,
}

/// The worst of `values` (a missing one is the worst of all): the lowest, or with
/// `higher_is_worse` the highest.
fn worst(values: impl Iterator<Item = Option<f64>>, higher_is_worse: bool) -> Option<f64> {
    let mut worst: Option<f64> = None;
    for value in values {
        let value = value?;
        worst = Some(match worst {
            Some(w) if higher_is_worse => w.max(value),
            Some(w) => w.min(value),
            None => value,
        });
    }
    worst
}

impl Comparison {
    pub fn worst_throughput(&self) -> Option<f64> {
        worst(self.pairs.iter().map(|p| p.throughput), false)
    }

    pub fn worst_cpu(&self) -> Option<f64> {
        worst(self.pairs.iter().map(|p| p.cpu), true)
    }

    pub fn worst_p99_rise_ms(&self) -> Option<f64> {
        worst(self.pairs.iter().map(|p| p.p99_rise_ms), true)
    }

    /// The fewest and the most lines per flush over the runs.
    pub fn lines_per_flush_range(&self) -> Option<(f64, f64)> {
        self.range(|p| p.lines_per_flush)
    }

    /// The lowest and the highest of a figure over the runs; `None` if a run lacks it.
    fn range(&self, figure: impl Fn(&Pair) -> Option<f64>) -> Option<(f64, f64)> {
        let low = worst(self.pairs.iter().map(&figure), false)?;
        Some((low, worst(self.pairs.iter().map(&figure), true)?))
    }

    /// The shortest and the longest mean flush over the runs, in ms.
    pub fn flush_ms_range(&self) -> Option<(f64, f64)> {
        self.range(|p| p.flush_ms)
    }

    /// The lowest and the highest ceiling over the runs (closed-loop scenarios only).
    pub fn bound_range(&self) -> Option<(f64, f64)> {
        self.range(|p| p.bound)
    }

    pub fn worst_lost(&self) -> u64 {
        stats::worst(self.pairs.iter().map(|p| p.lost))
    }

    /// Whether the worst run meets the target: every run lost nothing, and the target's figure
    /// is known and within its bound in every run.
    pub fn passes(&self) -> bool {
        let figure = match self.target {
            Target::Throughput(least) => self.worst_throughput().is_some_and(|t| t >= least),
            Target::P99Rise(most) => self.worst_p99_rise_ms().is_some_and(|r| r <= most),
            Target::NoLoss => true,
        };
        figure && self.worst_lost() == 0 && !self.pairs.is_empty()
    }
}

/// What `scenario` is judged by under `targets`.
pub fn target_of(scenario: &str, targets: &DiskTargets) -> Target {
    if targets.throughput_scenarios.contains(&scenario) {
        Target::Throughput(targets.min_throughput)
    } else if targets.latency_scenarios.contains(&scenario) {
        Target::P99Rise(targets.max_p99_rise_ms)
    } else {
        Target::NoLoss
    }
}

/// Every scenario with both a memory row (ours) and a disk row of the same connection count,
/// run by run.
pub fn comparisons(report: &Report, targets: &DiskTargets) -> Vec<Comparison> {
    let find = |server: &str, scenario: &str, connections: usize| {
        report.rows.iter().find(|row: &&Row| {
            let o = &row.runs[0];
            o.server == server && o.scenario == scenario && o.connections() == connections
        })
    };
    let mut out = Vec::new();
    for disk in &report.rows {
        let first = &disk.runs[0];
        if first.server != DISK {
            continue;
        }
        let Some(memory) = find(OURS, first.scenario, first.connections()) else {
            continue;
        };
        out.push(Comparison {
            scenario: first.scenario,
            connections: first.connections(),
            target: target_of(first.scenario, targets),
            pairs: disk
                .runs
                .iter()
                .zip(&memory.runs)
                .map(|(disk, memory)| Pair::of(disk, memory))
                .collect(),
        });
    }
    out
}

fn times(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.2}x"))
}

fn rise(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".to_owned(), |v| format!("{v:+.2}"))
}

/// `lo-hi` at `digits` decimals, or one figure where the two print alike.
fn span(lo: f64, hi: f64, digits: usize, unit: &str) -> String {
    let (lo, hi) = (format!("{lo:.digits$}"), format!("{hi:.digits$}"));
    if lo == hi {
        format!("{lo}{unit}")
    } else {
        format!("{lo}-{hi}{unit}")
    }
}

fn target_text(target: Target) -> String {
    match target {
        Target::Throughput(least) => format!("deliv/s >= {least:.2}x, lost 0"),
        Target::P99Rise(most) => format!("p99 <= +{most} ms, lost 0"),
        Target::NoLoss => "lost 0".to_owned(),
    }
}

/// The disk table: a row per scenario with the worst pair's figures and PASS or FAIL; empty
/// without disk rows.
pub fn table(report: &Report, targets: &DiskTargets) -> String {
    let comparisons = comparisons(report, targets);
    let mut out = String::new();
    if comparisons.is_empty() {
        return out;
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<9} {:>6} {:>8} {:>8} {:>8} {:>11} {:>9} {:>11} {:>5}  {:<26} verdict",
        "disk",
        "conns",
        "deliv/s",
        "cpu s/M",
        "p99 +ms",
        "lines/flush",
        "flush ms",
        "bound",
        "lost",
        "target"
    );
    for c in &comparisons {
        let bound = match c.bound_range() {
            None => "n/a".to_owned(),
            Some((lo, hi)) => span(lo, hi, 2, "x"),
        };
        let _ = writeln!(
            out,
            "{:<9} {:>6} {:>8} {:>8} {:>8} {:>11} {:>9} {:>11} {:>5}  {:<26} {}",
            c.scenario,
            c.connections,
            times(c.worst_throughput()),
            times(c.worst_cpu()),
            rise(c.worst_p99_rise_ms()),
            c.lines_per_flush_range()
                .map_or_else(|| "n/a".to_owned(), |(lo, hi)| span(lo, hi, 1, "")),
            c.flush_ms_range()
                .map_or_else(|| "n/a".to_owned(), |(lo, hi)| span(lo, hi, 2, "")),
            bound,
            c.worst_lost(),
            target_text(c.target),
            if c.passes() { "PASS" } else { "FAIL" },
        );
    }
    let _ = writeln!(
        out,
        "Each disk run (ours with --data-dir, a fresh directory per run) against the memory run \
         beside it, the worst of the runs shown: deliv/s = disk's over memory's (lowest), \
         cpu s/M = disk's CPU per delivery over memory's (highest), p99 +ms = disk's p99 minus \
         memory's (highest), lines/flush = chat_disk_lines_total / chat_disk_flushes_total from \
         its /metrics at the end of each run (fewest-most), flush ms = \
         chat_disk_flush_seconds_total / chat_disk_flushes_total (shortest-longest), bound = \
         for a closed loop, the most deliv/s could be if each line's round trip were memory's \
         plus one flush: memory's round trip / (memory's round trip + disk's flush), the round \
         trip being a sender's window over its lines per second (lowest-highest over the runs; \
         below the target, no run could meet it), lost = disk's worst run. A verdict is PASS \
         only if every run meets the target."
    );
    out
}

/// The comparisons as a JSON array, each with its runs.
pub fn json(report: &Report, targets: &DiskTargets) -> String {
    let num = |v: Option<f64>| match v {
        Some(v) if v.is_finite() => format!("{v}"),
        _ => "null".to_owned(),
    };
    let mut items = Vec::new();
    for c in comparisons(report, targets) {
        let pairs: Vec<String> = c
            .pairs
            .iter()
            .map(|p| {
                format!(
                    "{{\"deliveries_per_second_ratio\": {}, \"cpu_per_delivery_ratio\": {}, \
                     \"p99_rise_ms\": {}, \"lines_per_flush\": {}, \"flush_ms\": {}, \
                     \"bound\": {}, \"lost\": {}}}",
                    num(p.throughput),
                    num(p.cpu),
                    num(p.p99_rise_ms),
                    num(p.lines_per_flush),
                    num(p.flush_ms),
                    num(p.bound),
                    p.lost
                )
            })
            .collect();
        items.push(format!(
            "\n    {{\"scenario\": \"{}\", \"connections\": {}, \"target\": \"{}\", \
             \"worst_deliveries_per_second_ratio\": {}, \"worst_cpu_per_delivery_ratio\": {}, \
             \"worst_p99_rise_ms\": {}, \"worst_lost\": {}, \"pass\": {},\n     \"runs\": [{}]}}",
            c.scenario,
            c.connections,
            target_text(c.target),
            num(c.worst_throughput()),
            num(c.worst_cpu()),
            num(c.worst_p99_rise_ms()),
            c.worst_lost(),
            c.passes(),
            pairs.join(", ")
        ));
    }
    format!("[{}\n  ]", items.join(","))
}
