//! The arithmetic behind the report: percentiles, the median and worst runs, rates, ratios and
//! open-loop schedules. Pure functions, tested by `tests/bench_arithmetic.rs`.

use std::cmp::Ordering;
use std::time::Duration;

/// The value at `per_mille`/1000 of sorted `values` by nearest rank: the smallest value with at
/// least that share of all values at or below it (500: median, 990: p99, 1000: max).
pub fn percentile(sorted: &[u32], per_mille: u32) -> Option<u32> {
    let len = sorted.len();
    if len == 0 {
        return None;
    }
    // Integer arithmetic: a float rank like 0.07 * 100 = 7.000000000000001 would round up wrong.
    let rank = (u64::from(per_mille) * len as u64).div_ceil(1000) as usize;
    Some(sorted[rank.clamp(1, len) - 1])
}

/// The index of the median run: runs ordered from worst to best by their headline figure
/// (`None`, a run without the figure, counts as worst), the middle one, or with an even count
/// the worse of the middle two, so a row never shows the better of two runs.
pub fn median_run(headlines: &[Option<f64>], higher_is_better: bool) -> Option<usize> {
    if headlines.is_empty() {
        return None;
    }
    let mut order: Vec<usize> = (0..headlines.len()).collect();
    order.sort_by(|&a, &b| worse_first(headlines[a], headlines[b], higher_is_better));
    Some(order[(order.len() - 1) / 2])
}

fn worse_first(a: Option<f64>, b: Option<f64>, higher_is_better: bool) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(a), Some(b)) if higher_is_better => a.total_cmp(&b),
        (Some(a), Some(b)) => b.total_cmp(&a),
    }
}

/// The worst (largest) of a count over runs: the loss a row reports is the worst run's.
pub fn worst(counts: impl IntoIterator<Item = u64>) -> u64 {
    counts.into_iter().max().unwrap_or(0)
}

/// `count` per second over `nanos`.
pub fn rate(count: u64, nanos: u64) -> Option<f64> {
    // One division of exact integers: correctly rounded.
    (nanos > 0).then(|| (count as f64 * 1e9) / nanos as f64)
}

/// CPU seconds per million deliveries, from `cpu_ns` nanoseconds on CPU.
pub fn cpu_s_per_million(cpu_ns: u64, deliveries: u64) -> Option<f64> {
    // (ns / 1e9) / (deliveries / 1e6), as one division of exact integers.
    (deliveries > 0).then(|| cpu_ns as f64 / (deliveries as f64 * 1e3))
}

/// `total` per item, e.g. write syscalls per delivery.
pub fn per_item(total: u64, items: u64) -> Option<f64> {
    (items > 0).then(|| total as f64 / items as f64)
}

/// `other` as a multiple of `ours`; `None` when either is missing or ours is not positive.
pub fn ratio(other: Option<f64>, ours: Option<f64>) -> Option<f64> {
    match (other, ours) {
        (Some(other), Some(ours)) if ours > 0.0 && other.is_finite() => Some(other / ours),
        _ => None,
    }
}

/// When an open-loop sender's message `seq` is due, after the shared start: `per_second`
/// messages a second per sender, with sender `sender` of `senders` offset by its share of one
/// interval so that the room receives an even stream instead of `senders` at once.
pub fn open_loop_due(seq: usize, sender: usize, senders: usize, per_second: u32) -> Duration {
    let slots = seq as u64 * senders as u64 + sender as u64;
    Duration::from_nanos(slots * 1_000_000_000 / (u64::from(per_second) * senders.max(1) as u64))
}

/// The first field of a `/proc/PID/task/TID/schedstat` line: nanoseconds the thread ran.
pub fn schedstat_ns(schedstat: &str) -> Option<u64> {
    schedstat.split_whitespace().next()?.parse().ok()
}

/// The value of `key` (e.g. `syscw`) in a `/proc/PID/io` file.
pub fn proc_io_field(io: &str, key: &str) -> Option<u64> {
    io.lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))?
        .trim()
        .parse()
        .ok()
}

/// After which of the room's messages (by seq) receiver `id` of `receivers` drops its connection,
/// if it is one of the one-in-`every` that do (ids 0, `every`, 2 × `every`, ...): their drops are
/// spread evenly from `first` to `last` in id order, so they leave and come back one after
/// another rather than all at once.
pub fn reconnect_after(
    id: usize,
    receivers: usize,
    every: usize,
    first: usize,
    last: usize,
) -> Option<usize> {
    if every == 0 || id >= receivers || !id.is_multiple_of(every) {
        return None;
    }
    let count = receivers.div_ceil(every);
    let span = last.saturating_sub(first);
    Some(first + (id / every) * span / (count - 1).max(1))
}

/// Which of `instances` servers connection `id` talks to (ids below `receivers` are receivers,
/// the `senders` after them senders). Senders go round-robin from the first instance and the
/// receivers continue the round after them, so every instance gets an even share of the senders
/// and of all connections: no two differ by more than one in either.
pub fn instance_of(id: usize, receivers: usize, senders: usize, instances: usize) -> usize {
    let position = if id >= receivers {
        id - receivers
    } else {
        senders + id
    };
    position % instances.max(1)
}

/// A figure of several instances together, per instance: `total` over `instances` (0 counts as
/// one, as a run with no instance count is one server).
pub fn per_instance(total: Option<f64>, instances: usize) -> Option<f64> {
    Some(total? / instances.max(1) as f64)
}
