//! One scenario's figures, medians over runs, the stdout table and the JSON file.

use std::fmt::Write as _;

/// The figures of one scenario run (or the medians of several).
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub scenario: &'static str,
    pub receivers: usize,
    pub senders: usize,
    /// Messages planned, all senders together.
    pub messages: u64,
    pub sent: u64,
    /// Copies expected: messages times every connection, senders included.
    pub expected: u64,
    /// Copies received, duplicates included.
    pub delivered: u64,
    /// Expected copies never received.
    pub lost: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub lag_notices: u64,
    /// Sum of the counts in lag notices.
    pub missed_reported: u64,
    pub deliveries_per_second: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// Server CPU seconds (user + system) per million deliveries, during the send phase.
    pub cpu_s_per_million: Option<f64>,
    pub peak_rss_mb: Option<f64>,
    pub rss_per_connection_kb: Option<f64>,
    pub connect_s: f64,
    pub connect_failures: u64,
    pub timed_out: bool,
    /// Anything worth a line under the table.
    pub notes: Vec<String>,
}

impl Outcome {
    fn connections(&self) -> usize {
        self.receivers + self.senders
    }

    /// Field-wise medians of several runs of the same scenario; notes are kept from every run.
    pub fn median(runs: &[Outcome]) -> Outcome {
        let Some(first) = runs.first() else {
            return Outcome::default();
        };
        if runs.len() == 1 {
            return first.clone();
        }
        let count = |f: fn(&Outcome) -> u64| {
            let mut v: Vec<u64> = runs.iter().map(f).collect();
            v.sort_unstable();
            v[(v.len() - 1) / 2]
        };
        let figure =
            |f: fn(&Outcome) -> Option<f64>| median_f64(runs.iter().filter_map(f).collect());
        Outcome {
            scenario: first.scenario,
            receivers: first.receivers,
            senders: first.senders,
            messages: first.messages,
            sent: count(|o| o.sent),
            expected: first.expected,
            delivered: count(|o| o.delivered),
            lost: count(|o| o.lost),
            duplicates: count(|o| o.duplicates),
            out_of_order: count(|o| o.out_of_order),
            lag_notices: count(|o| o.lag_notices),
            missed_reported: count(|o| o.missed_reported),
            deliveries_per_second: figure(|o| o.deliveries_per_second),
            p50_ms: figure(|o| o.p50_ms),
            p99_ms: figure(|o| o.p99_ms),
            max_ms: figure(|o| o.max_ms),
            cpu_s_per_million: figure(|o| o.cpu_s_per_million),
            peak_rss_mb: figure(|o| o.peak_rss_mb),
            rss_per_connection_kb: figure(|o| o.rss_per_connection_kb),
            connect_s: figure(|o| Some(o.connect_s)).unwrap_or_default(),
            connect_failures: count(|o| o.connect_failures),
            timed_out: runs.iter().any(|o| o.timed_out),
            notes: runs
                .iter()
                .enumerate()
                .flat_map(|(i, o)| o.notes.iter().map(move |n| format!("run {}: {n}", i + 1)))
                .collect(),
        }
    }
}

fn median_f64(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

fn cell(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "n/a".to_string(), |v| format!("{v:.decimals$}"))
}

/// The table, notes and a loud `LOST` line for every scenario that lost copies.
pub fn table(outcomes: &[Outcome], runs: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<8} {:>11} {:>6} {:>10} {:>7} {:>7} {:>7} {:>8} {:>10} {:>8} {:>8} {:>9}",
        "scenario",
        "conns(N+S)",
        "msgs",
        "deliv/s",
        "lost",
        "p50 ms",
        "p99 ms",
        "max ms",
        "cpu s/M",
        "peak MB",
        "kB/conn",
        "connect s"
    );
    for o in outcomes {
        let _ = writeln!(
            out,
            "{:<8} {:>11} {:>6} {:>10} {:>7} {:>7} {:>7} {:>8} {:>10} {:>8} {:>8} {:>9.2}",
            o.scenario,
            format!("{}+{}", o.receivers, o.senders),
            o.messages,
            cell(o.deliveries_per_second, 0),
            o.lost,
            cell(o.p50_ms, 2),
            cell(o.p99_ms, 2),
            cell(o.max_ms, 2),
            cell(o.cpu_s_per_million, 2),
            cell(o.peak_rss_mb, 1),
            cell(o.rss_per_connection_kb, 1),
            o.connect_s,
        );
    }
    let _ = writeln!(
        out,
        "conns = N receivers + S senders (senders receive their own copies too); \
         deliveries = copies received, expected = msgs x conns; cpu s/M = server user+system \
         CPU seconds per million deliveries over the send phase; kB/conn = server RSS growth \
         over the connect phase / conns.{}",
        if runs > 1 {
            format!(" Medians of {runs} runs.")
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        out,
        "Load generator (tokio, 2 workers) and server share this machine's {} cores.",
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    for o in outcomes {
        for note in &o.notes {
            let _ = writeln!(out, "  {} ({} conns): {note}", o.scenario, o.connections());
        }
    }
    let mut any_lost = false;
    for o in outcomes.iter().filter(|o| o.lost > 0) {
        any_lost = true;
        let _ = writeln!(
            out,
            "LOST: {} ({} conns) lost {} of {} copies ({:.3}%); {} lag notices reporting {} missed{}",
            o.scenario,
            o.connections(),
            o.lost,
            o.expected,
            100.0 * o.lost as f64 / o.expected.max(1) as f64,
            o.lag_notices,
            o.missed_reported,
            if o.timed_out {
                "; delivery timed out"
            } else {
                ""
            }
        );
    }
    if !any_lost {
        let _ = writeln!(out, "No copies lost.");
    }
    out
}

/// The same figures as a JSON document.
pub fn json(outcomes: &[Outcome], runs: usize) -> String {
    let num = |v: Option<f64>| match v {
        Some(v) if v.is_finite() => format!("{v}"),
        _ => "null".to_string(),
    };
    let mut out = String::new();
    let _ = write!(
        out,
        "{{\n  \"runs\": {runs},\n  \"cores\": {},\n  \"generator_workers\": 2,\n  \"results\": [",
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    for (i, o) in outcomes.iter().enumerate() {
        let notes: Vec<String> = o.notes.iter().map(|n| json_string(n)).collect();
        let _ = write!(
            out,
            "{}\n    {{\"scenario\": {}, \"connections\": {}, \"receivers\": {}, \"senders\": {}, \
             \"messages\": {}, \"sent\": {}, \"expected_copies\": {}, \"delivered_copies\": {}, \
             \"lost\": {}, \"duplicates\": {}, \"out_of_order\": {}, \"lag_notices\": {}, \
             \"missed_reported\": {}, \"deliveries_per_second\": {}, \"latency_p50_ms\": {}, \
             \"latency_p99_ms\": {}, \"latency_max_ms\": {}, \"server_cpu_s_per_million\": {}, \
             \"server_peak_rss_mb\": {}, \"server_rss_per_connection_kb\": {}, \
             \"connect_s\": {}, \"connect_failures\": {}, \"timed_out\": {}, \"notes\": [{}]}}",
            if i == 0 { "" } else { "," },
            json_string(o.scenario),
            o.connections(),
            o.receivers,
            o.senders,
            o.messages,
            o.sent,
            o.expected,
            o.delivered,
            o.lost,
            o.duplicates,
            o.out_of_order,
            o.lag_notices,
            o.missed_reported,
            num(o.deliveries_per_second),
            num(o.p50_ms),
            num(o.p99_ms),
            num(o.max_ms),
            num(o.cpu_s_per_million),
            num(o.peak_rss_mb),
            num(o.rss_per_connection_kb),
            num(Some(o.connect_s)),
            o.connect_failures,
            o.timed_out,
            notes.join(", "),
        );
    }
    out.push_str("\n  ]\n}\n");
    out
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
