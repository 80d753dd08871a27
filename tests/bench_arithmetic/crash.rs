//! The crash scenario's check: every acknowledged line at every client and in the log read back,
//! exactly once and in order; what counts as recovered; when a run passes.

use std::time::Duration;

use crate::ledger::{self, ClientRecord, Copy, CrashRun, Sent};

const SENDERS: usize = 2;
const LINES: usize = 3;

/// Line `seq` of `sender` at `offset`, on connection `connection`.
fn copy(sender: usize, seq: usize, offset: u64, connection: u32) -> Copy {
    Copy {
        sender,
        seq,
        offset,
        connection,
    }
}

/// The whole room in log order: three lines before the kill, three after it.
fn room() -> Vec<Copy> {
    vec![
        copy(0, 0, 1, 0),
        copy(1, 0, 2, 0),
        copy(0, 1, 3, 0),
        copy(1, 1, 4, 1),
        copy(0, 2, 5, 1),
        copy(1, 2, 6, 1),
    ]
}

/// A receiver and the two senders, each with the whole room and resumed `ms` after the kill.
/// Sender 0 had lines 0 and 1 acknowledged before the kill and sent line 2 again; sender 1 had
/// line 0, sent 1 and 2 again, and the server already had line 1.
fn clean() -> Vec<ClientRecord> {
    let client = |ms, sent| ClientRecord {
        copies: room(),
        sent,
        connections: 2,
        resumed_after: Some(Duration::from_millis(ms)),
        replayed: 1,
        ..ClientRecord::default()
    };
    vec![
        client(30, None),
        client(
            40,
            Some(Sent {
                sender: 0,
                acked_on: vec![Some(0), Some(0), Some(1)],
                resent: 1,
                ..Sent::default()
            }),
        ),
        client(
            35,
            Some(Sent {
                sender: 1,
                acked_on: vec![Some(0), Some(1), Some(1)],
                resent: 2,
                duplicate_acks: 1,
                ..Sent::default()
            }),
        ),
    ]
}

fn check(records: &[ClientRecord], log: Option<&[Copy]>) -> CrashRun {
    ledger::check(records, log, SENDERS, LINES)
}

#[test]
fn a_clean_crash_counts_what_was_acknowledged_resent_and_recovered() {
    let run = check(&clean(), Some(&room()));
    assert_eq!(
        (run.clients, run.senders, run.lines, run.acked),
        (3, 2, 6, 6)
    );
    assert_eq!(run.acked_before_kill, 3);
    assert_eq!((run.resent, run.duplicate_acks), (3, 1));
    assert_eq!(run.replayed, 3);
    // The three lines acknowledged before the kill are in the log read back.
    assert_eq!(run.recovered, 3);
    assert_eq!((run.lost, run.doubled, run.out_of_order), (0, 0, 0));
    assert_eq!(run.resumed, 3);
    assert_eq!(run.recovery, Some(Duration::from_millis(40)));
    assert!(run.passes(), "{run:?}");
    assert!(run.notes.is_empty(), "{:?}", run.notes);

    let runs = [CrashRun {
        restart: Some(Duration::from_millis(12)),
        ..run
    }];
    let table = ledger::table(&runs);
    for expected in ["1+2", " 12 ", " 40 ", "PASS", "crash: PASS in all 1 runs"] {
        assert!(table.contains(expected), "{expected} missing from {table}");
    }
    let json = ledger::json(&runs);
    assert!(json.contains("\"recovered\": 3"), "{json}");
    assert!(json.contains("\"recovery_s\": 0.04"), "{json}");
    assert!(json.contains("\"pass\": true, \"notes\": []"), "{json}");
    assert_eq!(ledger::table(&[]), "");
}

/// `clean()` with client `client`'s copies changed by `change`.
fn with_copies(client: usize, change: impl FnOnce(&mut Vec<Copy>)) -> CrashRun {
    let mut records = clean();
    change(&mut records[client].copies);
    check(&records, Some(&room()))
}

#[test]
fn a_line_missing_twice_or_out_of_order_at_any_client_fails() {
    let missing = with_copies(0, |c| {
        c.remove(2);
    });
    assert_eq!((missing.lost, missing.doubled), (1, 0));
    assert!(!missing.passes());

    // Received again after the restart, as a line logged twice would be.
    let doubled = with_copies(2, |c| c.push(copy(0, 1, 7, 1)));
    assert_eq!((doubled.lost, doubled.doubled), (0, 1));
    assert!(!doubled.passes());

    let swapped = with_copies(1, |c| c.swap(3, 5));
    assert_eq!(swapped.out_of_order, 1);
    assert!(!swapped.passes());

    // A line never acknowledged counts as lost nowhere, but the run is not complete.
    let mut records = clean();
    records[2].sent.as_mut().expect("a sender").acked_on[2] = None;
    for record in &mut records {
        record.copies.pop();
    }
    let mut log = room();
    log.pop();
    let unacked = check(&records, Some(&log));
    assert_eq!((unacked.acked, unacked.lost), (5, 0));
    assert!(!unacked.passes());
    assert!(
        unacked.notes.iter().any(|n| n.contains("1 of 6 lines")),
        "{:?}",
        unacked.notes
    );
}

#[test]
fn the_log_read_back_must_hold_every_acknowledged_line_once() {
    // The restarted server forgot a line acknowledged before the kill.
    let mut log = room();
    log.remove(1);
    let forgot = check(&clean(), Some(&log));
    assert_eq!((forgot.recovered, forgot.lost), (2, 1));
    assert!(!forgot.passes());
    assert!(
        forgot
            .notes
            .iter()
            .any(|n| n.contains("1 acknowledged lines missing")),
        "{:?}",
        forgot.notes
    );

    // It logged a line sent again a second time.
    let mut log = room();
    log.push(copy(1, 1, 7, 1));
    let twice = check(&clean(), Some(&log));
    assert_eq!(twice.doubled, 1);
    assert!(!twice.passes());

    // Not read back: not checked, so no pass.
    let unread = check(&clean(), None);
    assert!(!unread.log_read);
    assert_eq!(unread.recovered, 0);
    assert!(!unread.passes());
}

#[test]
fn every_client_must_resume_completely_for_a_recovery_time() {
    let mut records = clean();
    records[0].resumed_after = None;
    let stuck = check(&records, Some(&room()));
    assert_eq!((stuck.resumed, stuck.recovery), (2, None));
    assert!(!stuck.passes());

    let mut records = clean();
    records[1].incomplete = 1;
    let restarted = check(&records, Some(&room()));
    assert_eq!((restarted.resumed, restarted.incomplete), (2, 1));
    assert!(!restarted.passes());
    let table = ledger::table(&[restarted]);
    assert!(table.contains("FAIL"), "{table}");
    assert!(table.contains("crash: FAIL in 1 of 1 runs"), "{table}");
}
