//! The `crash` scenario's books: what each client received and each sender had acknowledged,
//! before and after the server was killed, and the check that every acknowledged line reached
//! every client exactly once and in order; a table row and JSON per run.
//!
//! Pure: no I/O, so `tests/bench_arithmetic.rs` can reach all of it.

use std::fmt::Write as _;
use std::time::Duration;

/// A copy a client received: a line, where the log put it, and on which of the client's
/// connections it came (0: before the kill).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Copy {
    pub sender: usize,
    pub seq: usize,
    pub offset: u64,
    pub connection: u32,
}

/// What a sender had acknowledged, and what it sent again after the restart.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sent {
    /// Which sender: its lines' payloads say so.
    pub sender: usize,
    /// Per line (by seq): the connection its ack came on (0: before the kill); `None`: never.
    pub acked_on: Vec<Option<u32>>,
    /// Lines sent again on a new connection, not acknowledged when the old one died.
    pub resent: u64,
    /// Of the acks on new connections, those marked `duplicate`: the server had the line
    /// before it died.
    pub duplicate_acks: u64,
    /// Acks for a line already acknowledged (never sent again, so never expected).
    pub acked_twice: u64,
}

/// One client's record of the run, over all its connections.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientRecord {
    /// Copies of this run's lines in the order they arrived, repeats included.
    pub copies: Vec<Copy>,
    /// For a sender: its acks.
    pub sent: Option<Sent>,
    /// Connections opened, the first included.
    pub connections: u32,
    /// From the kill to this client's `recovered` frame on a connection opened after it.
    pub resumed_after: Option<Duration>,
    /// `recovered` frames that said lines were lost or the room restarted.
    pub incomplete: u64,
    /// Copies that came in a replay after a resumption.
    pub replayed: u64,
    /// Frames that were none of the above (errors, notices), and the first of them.
    pub other: u64,
    pub first_other: Option<String>,
    /// Why the client stopped before it had everything, if it did.
    pub ended: Option<String>,
}

/// One run of the crash scenario, checked.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CrashRun {
    pub clients: usize,
    pub senders: usize,
    /// Lines planned, all senders together.
    pub lines: u64,
    /// Lines acknowledged before the kill (their ack came on the first connection).
    pub acked_before_kill: u64,
    /// Lines sent but not acknowledged when the server died, and so sent again.
    pub resent: u64,
    /// Of those, the ones the server already had (acked `duplicate` after the restart).
    pub duplicate_acks: u64,
    /// Lines acknowledged by the end.
    pub acked: u64,
    /// Copies replayed to the clients that resumed.
    pub replayed: u64,
    /// Lines acknowledged before the kill that the restarted server's log holds.
    pub recovered: u64,
    /// Whether the restarted server's log was read back at the end.
    pub log_read: bool,
    /// Over every client and the log read back: acknowledged lines missing, lines there more
    /// than once, and lines after a later line of the same sender.
    pub lost: u64,
    pub doubled: u64,
    pub out_of_order: u64,
    /// Clients whose resumption after the restart completed, and `recovered` frames that said
    /// it did not.
    pub resumed: usize,
    pub incomplete: u64,
    /// From the kill to the new server's readiness line, and to the last client's `recovered`.
    pub restart: Option<Duration>,
    pub recovery: Option<Duration>,
    pub notes: Vec<String>,
}

impl CrashRun {
    /// Every line acknowledged, every acknowledged line at every client and in the log exactly
    /// once and in order, and every client resumed completely.
    pub fn passes(&self) -> bool {
        self.acked == self.lines
            // Lines acknowledged before the kill and missing from the log count as lost.
            && self.log_read
            && self.lost == 0
            && self.doubled == 0
            && self.out_of_order == 0
            // Only when every client resumed completely.
            && self.recovery.is_some()
    }
}

/// One list of copies (a client's, or the log's) against the acks.
#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    lost: u64,
    doubled: u64,
    out_of_order: u64,
    /// Lines acknowledged before the kill that are in the list.
    acked_before_kill: u64,
}

/// Counts `copies` of `senders` x `lines` lines against `ack_of(sender, seq)`, the connection
/// each line's ack came on.
fn tally(
    copies: &[Copy],
    senders: usize,
    lines: usize,
    ack_of: impl Fn(usize, usize) -> Option<u32>,
) -> Tally {
    let mut t = Tally::default();
    let mut seen = vec![0u32; senders * lines];
    let mut highest: Vec<Option<usize>> = vec![None; senders];
    for copy in copies {
        if copy.sender >= senders || copy.seq >= lines {
            continue;
        }
        let count = &mut seen[copy.sender * lines + copy.seq];
        *count += 1;
        if *count > 1 {
            t.doubled += 1;
            continue;
        }
        match highest[copy.sender] {
            Some(high) if copy.seq < high => t.out_of_order += 1,
            _ => highest[copy.sender] = Some(copy.seq),
        }
        if ack_of(copy.sender, copy.seq) == Some(0) {
            t.acked_before_kill += 1;
        }
    }
    for (index, count) in seen.iter().enumerate() {
        if *count == 0 && ack_of(index / lines, index % lines).is_some() {
            t.lost += 1;
        }
    }
    t
}

/// Checks the records of the clients and the restarted server's `log` (`None`: it could not be
/// read) against the acks of the `senders` among the clients, each with `lines` lines.
pub fn check(
    records: &[ClientRecord],
    log: Option<&[Copy]>,
    senders: usize,
    lines: usize,
) -> CrashRun {
    // acked_on[sender][seq], from the records that sent.
    let mut acked_on: Vec<&[Option<u32>]> = vec![&[]; senders];
    for sent in records.iter().filter_map(|r| r.sent.as_ref()) {
        if let Some(slot) = acked_on.get_mut(sent.sender) {
            *slot = &sent.acked_on;
        }
    }
    let ack_of = |sender: usize, seq: usize| -> Option<u32> { *acked_on.get(sender)?.get(seq)? };
    let mut run = CrashRun {
        clients: records.len(),
        senders,
        lines: (senders * lines) as u64,
        log_read: log.is_some(),
        ..CrashRun::default()
    };
    for sent in records.iter().filter_map(|r| r.sent.as_ref()) {
        run.acked_before_kill += sent.acked_on.iter().filter(|a| **a == Some(0)).count() as u64;
        run.acked += sent.acked_on.iter().filter(|a| a.is_some()).count() as u64;
        run.resent += sent.resent;
        run.duplicate_acks += sent.duplicate_acks;
        if sent.acked_twice > 0 {
            run.notes.push(format!(
                "sender {} got {} acks for lines already acknowledged",
                sent.sender, sent.acked_twice
            ));
        }
    }
    let lists = records.iter().map(|r| r.copies.as_slice()).chain(log);
    for (i, copies) in lists.enumerate() {
        let t = tally(copies, senders, lines, ack_of);
        run.lost += t.lost;
        run.doubled += t.doubled;
        run.out_of_order += t.out_of_order;
        if i == records.len() {
            run.recovered = t.acked_before_kill;
            if t.lost + t.doubled + t.out_of_order > 0 {
                run.notes.push(format!(
                    "the log read back after the restart: {} acknowledged lines missing, {} \
                     twice, {} out of order",
                    t.lost, t.doubled, t.out_of_order
                ));
            }
        }
    }
    for record in records {
        run.replayed += record.replayed;
        run.incomplete += record.incomplete;
        run.resumed += usize::from(record.resumed_after.is_some() && record.incomplete == 0);
    }
    if run.resumed == records.len() {
        run.recovery = records.iter().filter_map(|r| r.resumed_after).max();
    }
    notes(records, &mut run);
    run
}

/// The notes of a run: clients that stopped early, frames not understood.
fn notes(records: &[ClientRecord], run: &mut CrashRun) {
    let ended: Vec<&str> = records.iter().filter_map(|r| r.ended.as_deref()).collect();
    if let Some(first) = ended.first() {
        run.notes.push(format!(
            "{} clients stopped early, first: {first}",
            ended.len()
        ));
    }
    let other: u64 = records.iter().map(|r| r.other).sum();
    if let Some(first) = records.iter().find_map(|r| r.first_other.as_deref()) {
        run.notes.push(format!(
            "{other} frames were not copies, acks or recoveries, first: {first}"
        ));
    }
    if !run.log_read {
        run.notes
            .push("the restarted server's log could not be read back: not checked".to_owned());
    }
    if run.acked < run.lines {
        run.notes.push(format!(
            "{} of {} lines were never acknowledged",
            run.lines - run.acked,
            run.lines
        ));
    }
}

fn ms(value: Option<Duration>) -> String {
    value.map_or_else(
        || "n/a".to_owned(),
        |d| format!("{:.0}", d.as_secs_f64() * 1e3),
    )
}

/// A row per run, a footer, the notes, and the verdict over every run; empty without runs.
pub fn table(runs: &[CrashRun]) -> String {
    let mut out = String::new();
    let Some(first) = runs.first() else {
        return out;
    };
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<9} {:>10} {:>10} {:>7} {:>8} {:>8} {:>9} {:>5} {:>7} {:>4} {:>10} {:>11} verdict",
        "crash",
        "conns(N+S)",
        "acked@kill",
        "resent",
        "dup ack",
        "replayed",
        "recovered",
        "lost",
        "doubled",
        "ooo",
        "restart ms",
        "recovery ms",
    );
    for (i, run) in runs.iter().enumerate() {
        let _ = writeln!(
            out,
            "{:<9} {:>10} {:>10} {:>7} {:>8} {:>8} {:>9} {:>5} {:>7} {:>4} {:>10} {:>11} {}",
            format!("run {}", i + 1),
            format!("{}+{}", run.clients - run.senders, run.senders),
            run.acked_before_kill,
            run.resent,
            run.duplicate_acks,
            run.replayed,
            run.recovered,
            run.lost,
            run.doubled,
            run.out_of_order,
            ms(run.restart),
            ms(run.recovery),
            if run.passes() { "PASS" } else { "FAIL" },
        );
    }
    let _ = writeln!(
        out,
        "crash = ours with --data-dir, {} structured clients ({} sending {} lines each, acks \
         tracked), SIGKILLed mid-traffic and restarted on the same directory and port; every \
         client resumes with epoch and after, every sender sends again what was not \
         acknowledged. acked@kill = lines acknowledged before the kill; resent = sent but not \
         acknowledged then, dup ack = of those, the ones the server already had; replayed = \
         copies replayed on resuming; recovered = lines acknowledged before the kill found in \
         the restarted server's log, read back at the end as a newcomer asking for all of it \
         (history); lost, doubled, ooo = over every client and that log, acknowledged lines \
         missing, there twice, after a later one of the same sender; restart ms = kill to the \
         new server's readiness line, recovery ms = kill to the last client's complete recovery. \
         PASS: every line acknowledged, the log read back, lost, doubled and ooo 0, every client \
         resumed completely.",
        first.clients,
        first.senders,
        first.lines / first.senders.max(1) as u64,
    );
    for (i, run) in runs.iter().enumerate() {
        for note in &run.notes {
            let _ = writeln!(out, "  crash run {}: {note}", i + 1);
        }
    }
    let worst = runs.iter().filter_map(|r| r.recovery).max();
    let _ = if runs.iter().all(CrashRun::passes) {
        writeln!(
            out,
            "crash: PASS in all {} runs (slowest recovery {} ms)",
            runs.len(),
            ms(worst)
        )
    } else {
        writeln!(
            out,
            "crash: FAIL in {} of {} runs",
            runs.iter().filter(|r| !r.passes()).count(),
            runs.len()
        )
    };
    out
}

/// The runs as a JSON array.
pub fn json(runs: &[CrashRun]) -> String {
    let secs =
        |d: Option<Duration>| d.map_or_else(|| "null".to_owned(), |d| d.as_secs_f64().to_string());
    let items: Vec<String> = runs
        .iter()
        .map(|r| {
            format!(
                "\n    {{\"clients\": {}, \"senders\": {}, \"lines\": {}, \"acked_before_kill\": {}, \
                 \"resent\": {}, \"duplicate_acks\": {}, \"acked\": {}, \"replayed\": {}, \
                 \"recovered\": {}, \"lost\": {}, \"doubled\": {}, \"out_of_order\": {}, \
                 \"resumed\": {}, \"incomplete\": {}, \"restart_s\": {}, \"recovery_s\": {}, \
                 \"pass\": {}, \"notes\": {}}}",
                r.clients,
                r.senders,
                r.lines,
                r.acked_before_kill,
                r.resent,
                r.duplicate_acks,
                r.acked,
                r.replayed,
                r.recovered,
                r.lost,
                r.doubled,
                r.out_of_order,
                r.resumed,
                r.incomplete,
                secs(r.restart),
                secs(r.recovery),
                r.passes(),
                serde_json::to_string(&r.notes).unwrap_or_else(|_| "[]".to_owned()),
            )
        })
        .collect();
    format!("[{}\n  ]", items.join(","))
}
