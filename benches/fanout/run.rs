//! One scenario run: server up, connect phase, send phase under a deadline, merge, server down.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio::time::{MissedTickBehavior, timeout_at};

use crate::connection;
use crate::deploy::{Deployment, ServerSource};
use crate::load::{self, Pace, Plan, Shared, Tally};
use crate::report::Outcome;
use crate::server;
use crate::stats;

/// Bound on the whole connect phase.
const CONNECT_PHASE_TIMEOUT: Duration = Duration::from_secs(60);
/// After the senders are done, delivery ends when no new copy arrived for this long.
const QUIET: Duration = Duration::from_secs(2);
/// How long cancelled receive loops get to hand in their tallies.
const WIND_DOWN: Duration = Duration::from_secs(5);

/// Settings shared by every scenario.
pub struct Setup {
    /// At most this many connections are being opened at once.
    pub concurrency: usize,
    /// Bound on a scenario's send and delivery phase.
    pub delivery_timeout: Duration,
    /// Clock ticks per second of /proc/PID/stat's CPU times.
    pub clock_ticks: u64,
    /// Timestamps in messages are nanoseconds since this instant.
    pub epoch: Instant,
}

/// Runs `plan` once against `source`; `Err` only when the server cannot be started or reached.
pub async fn run(
    plan: &Plan,
    setup: &Setup,
    source: &ServerSource,
    tag: String,
) -> Result<Outcome, String> {
    let mut deployment = Deployment::start(source, &tag)?;
    let rss_before = deployment.rss_kb();
    let mut notes = Vec::new();

    let (shared, mut channels) = Shared::new(
        plan.clone(),
        deployment.targets.clone(),
        tag,
        setup.epoch,
        setup.concurrency,
    );
    let overflows_before = server::listen_overflows();
    let mut tasks = JoinSet::new();
    let connect_start = Instant::now();
    for id in 0..plan.connections {
        tasks.spawn(connection::connection(id, Arc::clone(&shared)));
    }
    let mut sinks = Vec::new();
    let mut connected = 0;
    let mut failures = Vec::new();
    let connect_deadline = tokio::time::Instant::from_std(connect_start + CONNECT_PHASE_TIMEOUT);
    for _ in 0..plan.connections {
        match timeout_at(connect_deadline, channels.ready_rx.recv()).await {
            Ok(Some(Ok(sink))) => {
                connected += 1;
                sinks.extend(sink);
            }
            Ok(Some(Err(error))) => failures.push(error),
            Ok(None) | Err(_) => break,
        }
    }
    let connect_s = connect_start.elapsed().as_secs_f64();
    if let (Some(before), Some(after)) = (overflows_before, server::listen_overflows())
        && after > before
    {
        notes.push(format!(
            "the kernel dropped {} connection attempts on a full listen queue while connecting \
             (system-wide ListenOverflows; each retry waits 1 s): the server's listen backlog \
             is too small for {} concurrent connects, or its accept loop fell behind",
            after - before,
            setup.concurrency
        ));
    }
    let connect_failures = (plan.connections - connected) as u64;
    if connected == 0 {
        let why = failures
            .first()
            .map_or("connect phase timed out", String::as_str);
        let uris: Vec<String> = deployment
            .targets
            .iter()
            .map(|t| t.uri.to_string())
            .collect();
        return Err(format!(
            "could not reach the server at {}: {why}",
            uris.join(" and ")
        ));
    }
    if connect_failures > 0 {
        notes.push(format!(
            "{connect_failures} of {} connections failed, first: {}",
            plan.connections,
            failures
                .first()
                .map_or("connect phase timed out", String::as_str)
        ));
    }
    let rss_connected = deployment.rss_kb();
    let cpu_before = deployment.cpu_ns();
    let redis_cpu_before = deployment.redis_cpu_ns();
    let generator_cpu_before = server::cpu_ns(std::process::id());
    let ticks_before = deployment.cpu_ticks();
    let writes_before = deployment.writes();

    let send_start = Instant::now();
    let senders: Vec<_> = sinks
        .into_iter()
        .map(|(sender, sink)| {
            tokio::spawn(load::send(sink, sender, Arc::clone(&shared), send_start))
        })
        .collect();

    let mut tallies = Vec::with_capacity(connected);
    let deadline = send_start + setup.delivery_timeout;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let (mut last_total, mut last_change) = (0, Instant::now());
    let mut timed_out = false;
    while tallies.len() < connected {
        tokio::select! {
            tally = channels.tally_rx.recv() => match tally {
                Some(tally) => tallies.push(tally),
                None => break,
            },
            _ = tick.tick() => {
                let now = Instant::now();
                if now >= deadline {
                    timed_out = true;
                    notes.push(format!(
                        "delivery timed out after {:?}; the rest counts as lost",
                        setup.delivery_timeout
                    ));
                    break;
                }
                if let Some(exited) = deployment.exited() {
                    notes.push(format!("{exited} during the send phase"));
                    break;
                }
                let total: u64 = shared.progress.iter().map(|p| p.0.load(Ordering::Relaxed)).sum();
                if total != last_total {
                    (last_total, last_change) = (total, now);
                } else if senders.iter().all(|s| s.is_finished()) && now - last_change >= QUIET {
                    notes.push(format!(
                        "senders done and no copy arrived for {QUIET:?}; the rest counts as lost"
                    ));
                    break;
                }
            }
        }
    }
    let cpu_after = deployment.cpu_ns();
    let redis_cpu_after = deployment.redis_cpu_ns();
    let generator_cpu_after = server::cpu_ns(std::process::id());
    let ticks_after = deployment.cpu_ticks();
    let writes_after = deployment.writes();
    let peak_rss_kb = deployment.peak_rss_kb();

    shared.cancel.cancel();
    let wind_down = tokio::time::Instant::now() + WIND_DOWN;
    while tallies.len() < connected {
        match timeout_at(wind_down, channels.tally_rx.recv()).await {
            Ok(Some(tally)) => tallies.push(tally),
            Ok(None) | Err(_) => break,
        }
    }
    let mut sent = 0;
    let mut first_send_ns = None::<u64>;
    // Summed over senders: twenty failing senders make one note, not twenty.
    let (mut stalls, mut stalled_senders) = (0, 0);
    let mut errors = Vec::new();
    for sender in senders {
        match sender.await {
            Ok(report) => {
                sent += report.sent;
                if let Some(ns) = report.first_send_ns {
                    first_send_ns = Some(first_send_ns.map_or(ns, |f| f.min(ns)));
                }
                if report.stalls > 0 {
                    stalls += report.stalls;
                    stalled_senders += 1;
                }
                errors.extend(report.error);
            }
            Err(e) => errors.push(format!("sender task: {e}")),
        }
    }
    if stalls > 0 {
        notes.push(format!(
            "{stalled_senders} senders waited in vain for their own copies, {stalls} times in all \
             (window stall)"
        ));
    }
    if let Some(first) = errors.first() {
        notes.push(format!("{} senders failed, first: {first}", errors.len()));
    }
    notes.extend(deployment.log_notes());
    let disk_counters = match deployment.disk_counters().await {
        Some(Ok(counters)) => Some(counters),
        Some(Err(why)) => {
            notes.push(format!("no lines per flush: {why}"));
            None
        }
        None => None,
    };
    let instances = deployment.targets.len();
    drop(deployment);
    tasks.shutdown().await;

    // Merge the tallies.
    let mut outcome = Outcome {
        scenario: plan.scenario,
        server: source.label().to_owned(),
        instances,
        headline: plan.headline,
        receivers: plan.receivers(),
        senders: plan.senders,
        messages: (plan.senders * plan.messages) as u64,
        sent,
        connected,
        connect_s,
        connect_failures,
        timed_out,
        window: match plan.pace {
            Pace::Closed { window } => Some(window),
            Pace::Open { .. } => None,
        },
        ..Outcome::default()
    };
    outcome.expected = outcome.messages * plan.connections as u64;
    let mut latencies = Vec::new();
    let (mut other, mut last_copy_ns) = (0, 0);
    let mut ended = Vec::new();
    let mut away = Away::default();
    let mut first_disorder = None;
    for tally in tallies {
        away.add(&tally);
        first_disorder = first_disorder.or(tally.first_disorder);
        outcome.copies += tally.copies;
        outcome.unique += tally.unique;
        outcome.duplicates += tally.duplicates;
        outcome.out_of_order += tally.out_of_order;
        outcome.lag_notices += tally.notices;
        outcome.missed_reported += tally.missed;
        other += tally.other;
        last_copy_ns = last_copy_ns.max(tally.last_copy_ns);
        latencies.extend_from_slice(&tally.latencies_us);
        ended.extend(tally.ended);
    }
    if outcome.messages == 1 {
        notes.push("one broadcast: deliv/s is copies over the fan-out time".to_string());
    }
    if sent < outcome.messages {
        notes.push(format!(
            "only {sent} of {} messages were sent",
            outcome.messages
        ));
    }
    if outcome.duplicates > 0 || outcome.out_of_order > 0 {
        notes.push(format!(
            "{} duplicate and {} out-of-order copies, first: {}",
            outcome.duplicates,
            outcome.out_of_order,
            first_disorder.as_deref().unwrap_or("?")
        ));
    }
    if outcome.lag_notices > 0 {
        notes.push(format!(
            "{} lag notices reporting {} missed messages",
            outcome.lag_notices, outcome.missed_reported
        ));
    }
    if other > 0 {
        notes.push(format!("{other} messages were neither copies nor notices"));
    }
    if let Some(first) = ended.first() {
        notes.push(format!(
            "{} connections ended early, first: {first}",
            ended.len()
        ));
    }
    if plan.reconnect.is_some() {
        notes.extend(away.notes(plan.reconnecting()));
    }

    if let Some(first) = first_send_ns {
        outcome.delivery_ns = Some(last_copy_ns.saturating_sub(first));
    }
    latencies.sort_unstable();
    let ms = |per_mille| Some(f64::from(stats::percentile(&latencies, per_mille)?) / 1000.0);
    (outcome.p50_ms, outcome.p99_ms, outcome.max_ms) = (ms(500), ms(990), ms(1000));
    if let (Some(before), Some(after)) = (cpu_before, cpu_after) {
        outcome.cpu_ns = Some(after.saturating_sub(before));
    }
    if let (Some(before), Some(after)) = (redis_cpu_before, redis_cpu_after) {
        outcome.redis_cpu_ns = Some(after.saturating_sub(before));
    }
    if let (Some(before), Some(after)) = (generator_cpu_before, generator_cpu_after) {
        outcome.generator_cpu_ns = Some(after.saturating_sub(before));
    }
    if let (Some(before), Some(after)) = (ticks_before, ticks_after) {
        outcome.cpu_ticks_s = Some(after.saturating_sub(before) as f64 / setup.clock_ticks as f64);
    }
    if let (Some(before), Some(after)) = (writes_before, writes_after) {
        outcome.writes = Some(after.saturating_sub(before));
    }
    outcome.peak_rss_kb = peak_rss_kb;
    if let Some((flushes, lines, seconds)) = disk_counters {
        (outcome.disk_flushes, outcome.disk_lines) = (Some(flushes), Some(lines));
        outcome.disk_flush_s = Some(seconds);
    }
    if let (Some(before), Some(after)) = (rss_before, rss_connected) {
        outcome.rss_growth_kb = Some(after as i64 - before as i64);
    }
    outcome.notes = notes;
    Ok(outcome)
}

/// What the clients that dropped and reconnected did, summed over them.
#[derive(Default)]
struct Away {
    drops: u64,
    reconnects: u64,
    resumed: u64,
    replayed: u64,
    live_after: u64,
    incomplete: u64,
    announced_lost: u64,
    skipped_offsets: u64,
    repeated_offsets: u64,
    first_offset_skip: Option<String>,
}

impl Away {
    fn add(&mut self, tally: &Tally) {
        self.drops += tally.drops;
        self.reconnects += tally.reconnects;
        self.resumed += tally.resumed;
        self.replayed += tally.replayed;
        self.live_after += tally.live_after;
        self.incomplete += tally.incomplete;
        self.announced_lost += tally.announced_lost;
        self.skipped_offsets += tally.skipped_offsets;
        self.repeated_offsets += tally.repeated_offsets;
        if self.first_offset_skip.is_none() {
            self.first_offset_skip.clone_from(&tally.first_offset_skip);
        }
    }

    /// The notes of a run in which `planned` clients were to drop and reconnect.
    fn notes(&self, planned: usize) -> Vec<String> {
        let classic = self.reconnects - self.resumed;
        let mut notes = vec![format!(
            "{} of {planned} clients dropped their connection mid-run and {} came back ({} \
             resumed with broadcast-chat.v1, {classic} as classic clients, which lose what was \
             said while away); copies on the new connections: {} replayed, {} live",
            self.drops, self.reconnects, self.resumed, self.replayed, self.live_after
        )];
        if self.incomplete > 0 {
            notes.push(format!(
                "{} resumptions were incomplete by the server's word",
                self.incomplete
            ));
        }
        // Skipped offsets the server announced are expected; others, and any offset that
        // comes again, are the server's bug.
        if let Some(first) = &self.first_offset_skip {
            notes.push(format!(
                "structured connections skipped {} offsets (the server announced {} lost) and \
                 went back {} times; first: {first}",
                self.skipped_offsets, self.announced_lost, self.repeated_offsets
            ));
        }
        notes
    }
}
