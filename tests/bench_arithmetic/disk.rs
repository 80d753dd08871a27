//! The disk store against memory: run pairs, the worst of them, PASS and FAIL by the targets;
//! the counters read from /metrics and the file system a data directory is on.

use std::path::Path;

use crate::disk::{self, DISK, DiskTargets, Target};
use crate::report::{OURS, Outcome};
use crate::{datadir, parse, report, run};

/// A run of `scenario` on `server`: 100 deliveries in `delivery_ns`, p99 `p99` ms, `cpu_ns` on
/// CPU, `lost` copies lost; on disk, 500 lines in 200 flushes.
fn timed(
    scenario: &'static str,
    server: &str,
    delivery_ns: u64,
    p99: f64,
    cpu_ns: u64,
    lost: u64,
) -> Outcome {
    let on_disk = server == DISK;
    Outcome {
        delivery_ns: Some(delivery_ns),
        p99_ms: Some(p99),
        cpu_ns: Some(cpu_ns),
        unique: 100 - lost,
        copies: 100 - lost,
        disk_flushes: on_disk.then_some(200),
        disk_lines: on_disk.then_some(500),
        ..run(scenario, server)
    }
}

#[test]
fn each_disk_run_is_paired_with_the_memory_run_beside_it_and_the_worst_pair_shown() {
    let targets = DiskTargets::default();
    // Memory: 100 deliveries in 1 ms, then in 2 ms. Disk: in 1.25 ms (0.8x) and in 2 ms (1x).
    let r = report(vec![
        vec![
            timed("crowd", OURS, 1_000_000, 8.0, 1_000, 0),
            timed("crowd", OURS, 2_000_000, 20.0, 1_000, 0),
        ],
        vec![
            timed("crowd", DISK, 1_250_000, 13.0, 3_000, 0),
            timed("crowd", DISK, 2_000_000, 21.0, 2_000, 0),
        ],
    ]);
    let comparisons = disk::comparisons(&r, &targets);
    assert_eq!(comparisons.len(), 1);
    let c = &comparisons[0];
    assert_eq!(c.target, Target::Throughput(0.8));
    let throughput: Vec<_> = c.pairs.iter().map(|p| p.throughput).collect();
    assert_eq!(throughput, [Some(0.8), Some(1.0)]);
    // Run against run, not disk's best against memory's worst: the second disk run is faster
    // than the first memory run, and still 1.0x.
    assert_eq!(c.worst_throughput(), Some(0.8));
    assert_eq!(c.worst_cpu(), Some(3.0));
    assert_eq!(c.worst_p99_rise_ms(), Some(5.0));
    assert_eq!(c.lines_per_flush_range(), Some((2.5, 2.5)));
    assert!(c.passes(), "0.8x is the target itself: {c:?}");

    let table = disk::table(&r, &targets);
    for expected in ["0.80x", "3.00x", "+5.00", "2.5", "deliv/s >= 0.80x"] {
        assert!(table.contains(expected), "{expected} missing from {table}");
    }
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("crowd") && l.ends_with(" PASS")),
        "{table}"
    );
    let json = report::json(&r, &[("disk", disk::json(&r, &targets))]);
    assert!(json.contains("\"disk\": ["), "{json}");
    assert!(
        json.contains("\"worst_deliveries_per_second_ratio\": 0.8"),
        "{json}"
    );
    assert!(json.contains("\"pass\": true"), "{json}");
    assert!(
        json.contains("\"disk_flushes\": 200, \"disk_lines\": 500, \"disk_flush_s\": null"),
        "{json}"
    );
}

/// The verdict for `scenario` with one pair of runs: memory at 1 ms and p99 8 ms, disk at
/// `disk_ns` and `disk_p99`, losing `lost`.
fn verdict(scenario: &'static str, disk_ns: u64, disk_p99: f64, lost: u64) -> bool {
    let r = report(vec![
        vec![timed(scenario, OURS, 1_000_000, 8.0, 1_000, 0)],
        vec![timed(scenario, DISK, disk_ns, disk_p99, 1_000, lost)],
    ]);
    let comparisons = disk::comparisons(&r, &DiskTargets::default());
    assert_eq!(comparisons.len(), 1, "{scenario}");
    let pass = comparisons[0].passes();
    let table = disk::table(&r, &DiskTargets::default());
    let row = table
        .lines()
        .find(|line| line.starts_with(scenario))
        .unwrap_or_else(|| panic!("no {scenario} row in {table}"));
    let shown = if pass { " PASS" } else { " FAIL" };
    assert!(row.ends_with(shown), "{shown} expected: {table}");
    pass
}

#[test]
fn throughput_scenarios_fail_below_the_share_and_latency_ones_above_the_rise() {
    for scenario in ["crowd", "senders", "busy"] {
        assert!(verdict(scenario, 1_250_000, 100.0, 0), "{scenario} at 0.8x");
        // 100 deliveries in 1.26 ms: 0.79x.
        assert!(!verdict(scenario, 1_260_000, 8.0, 0), "{scenario} at 0.79x");
    }
    // steady: judged by its tail alone; +5 ms passes, +5.01 does not.
    assert!(verdict("steady", 2_000_000, 13.0, 0));
    assert!(!verdict("steady", 1_000_000, 13.01, 0));
    // Others: by their losses alone.
    assert!(verdict("burst", 5_000_000, 100.0, 0));
    // One copy lost fails any scenario, whatever its figures.
    for scenario in ["crowd", "steady", "burst"] {
        assert!(
            !verdict(scenario, 1_000_000, 8.0, 1),
            "{scenario} with a loss"
        );
    }
}

#[test]
fn one_bad_run_or_a_missing_figure_fails_the_scenario() {
    let targets = DiskTargets::default();
    let memory = timed("steady", OURS, 1_000_000, 8.0, 1_000, 0);
    let r = report(vec![
        vec![memory.clone(), memory.clone(), memory.clone()],
        vec![
            timed("steady", DISK, 1_000_000, 9.0, 1_000, 0),
            timed("steady", DISK, 1_000_000, 14.0, 1_000, 0),
            timed("steady", DISK, 1_000_000, 10.0, 1_000, 0),
        ],
    ]);
    let c = &disk::comparisons(&r, &targets)[0];
    assert_eq!(c.worst_p99_rise_ms(), Some(6.0));
    assert!(!c.passes());

    // A run without a p99 is the worst of all, and fails.
    let no_p99 = Outcome {
        p99_ms: None,
        ..timed("steady", DISK, 1_000_000, 9.0, 1_000, 0)
    };
    let r = report(vec![
        vec![memory.clone(); 2],
        vec![timed("steady", DISK, 1_000_000, 9.0, 1_000, 0), no_p99],
    ]);
    let c = &disk::comparisons(&r, &targets)[0];
    assert_eq!(c.worst_p99_rise_ms(), None);
    assert!(!c.passes());

    // No disk rows: no table, an empty section.
    let memory_only = report(vec![vec![memory]]);
    assert_eq!(disk::table(&memory_only, &targets), "");
    assert_eq!(disk::json(&memory_only, &targets), "[\n  ]");
}

#[test]
fn counters_are_read_from_the_exposition_by_exact_name() {
    let exposition = "# HELP chat_disk_flushes_total With --data-dir: commits\n\
                      # TYPE chat_disk_flushes_total counter\n\
                      chat_disk_flushes_total_extra 9\n\
                      chat_disk_flushes_total{kind=\"x\"} 8\n\
                      chat_disk_flushes_total 200\n\
                      chat_disk_lines_total 500\n\
                      chat_disk_flush_seconds_total 0.125\n";
    assert_eq!(
        parse::metric(exposition, "chat_disk_flush_seconds_total"),
        Some(0.125)
    );
    assert_eq!(
        parse::metric(exposition, "chat_disk_flushes_total"),
        Some(200.0)
    );
    assert_eq!(
        parse::metric(exposition, "chat_disk_lines_total"),
        Some(500.0)
    );
    assert_eq!(parse::metric(exposition, "chat_disk_up"), None);
    let o = Outcome {
        disk_flushes: Some(200),
        disk_lines: Some(500),
        ..run("crowd", DISK)
    };
    assert_eq!(o.lines_per_flush(), Some(2.5));
    assert_eq!(
        Outcome {
            disk_flushes: Some(0),
            ..o
        }
        .lines_per_flush(),
        None
    );
}

#[test]
fn a_closed_loops_ceiling_is_its_round_trip_over_the_round_trip_and_a_flush() {
    // 10 connections (9 receivers, 1 sender), 100 copies in 10 ms: 10,000 deliveries a second,
    // 1,000 lines a second from the one sender; with 4 in flight, 4 ms a line.
    let closed = |server, flush_s| Outcome {
        delivery_ns: Some(10_000_000),
        window: Some(4),
        disk_flushes: (server == DISK).then_some(100),
        disk_lines: (server == DISK).then_some(250),
        disk_flush_s: flush_s,
        ..run("crowd", server)
    };
    let memory = closed(OURS, None);
    assert_eq!(memory.round_trip_ms(), Some(4.0));
    // 100 flushes in 0.1 s: 1 ms each. Each line's 4 ms and a flush: at most 4 / 5 = 0.8x.
    let on_disk = closed(DISK, Some(0.1));
    assert_eq!(on_disk.flush_ms(), Some(1.0));
    assert_eq!(disk::flush_bound(4.0, 1.0), Some(0.8));
    assert_eq!(
        disk::flush_bound(0.0, 1.0),
        None,
        "no round trip, no ceiling"
    );
    // Two senders of the same 1,000 lines a second: 500 each, 8 ms a line.
    let two = Outcome {
        receivers: 8,
        senders: 2,
        ..memory.clone()
    };
    assert_eq!(two.round_trip_ms(), Some(8.0));
    // An open loop has no window, so no round trip and no ceiling.
    let open = Outcome {
        window: None,
        ..memory.clone()
    };
    assert_eq!(open.round_trip_ms(), None);

    let targets = DiskTargets::default();
    let slower = Outcome {
        disk_flush_s: Some(0.3),
        ..on_disk.clone()
    };
    let r = report(vec![
        vec![memory.clone(), memory.clone()],
        vec![on_disk.clone(), slower],
    ]);
    let c = &disk::comparisons(&r, &targets)[0];
    assert_eq!(c.pairs[0].bound, Some(0.8));
    assert_eq!(c.pairs[0].flush_ms, Some(1.0));
    // 3 ms flushes: 4 / 7.
    assert_eq!(c.pairs[1].bound, Some(4.0 / 7.0));
    assert_eq!(c.bound_range(), Some((4.0 / 7.0, 0.8)));
    assert_eq!(c.flush_ms_range(), Some((1.0, 3.0)));
    let table = disk::table(&r, &targets);
    let row = table
        .lines()
        .find(|l| l.starts_with("crowd"))
        .expect("a crowd row");
    for expected in ["1.00-3.00", "0.57-0.80x"] {
        assert!(row.contains(expected), "{expected} missing from {row}");
    }
    let json = disk::json(&r, &targets);
    assert!(json.contains("\"flush_ms\": 1, \"bound\": 0.8"), "{json}");
}

#[test]
fn the_file_system_is_the_deepest_mount_containing_the_path() {
    let mountinfo = "\
22 1 252:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 0:25 / /tmp rw,nosuid shared:5 - tmpfs tmpfs rw
31 22 0:26 / /work/my\\040disk rw - xfs /dev/vdb rw
32 30 0:27 / /tmp/inner rw - btrfs /dev/vdc rw
bad line without the separator
";
    let fs = |path: &str| datadir::filesystem_of(mountinfo, Path::new(path));
    assert_eq!(fs("/work/target/fanout-data").as_deref(), Some("ext4"));
    assert_eq!(fs("/tmp/fanout-data").as_deref(), Some("tmpfs"));
    assert_eq!(fs("/tmp/inner/x").as_deref(), Some("btrfs"));
    // A mount point's space is escaped as \040; a longer name is not inside it.
    assert_eq!(fs("/work/my disk/data").as_deref(), Some("xfs"));
    assert_eq!(fs("/work/my diskette").as_deref(), Some("ext4"));
    assert_eq!(fs("/tmpfoo").as_deref(), Some("ext4"));
    // A later mount over the same point hides the earlier one.
    let over = format!("{mountinfo}33 22 0:28 / /tmp rw - ext4 /dev/vdd rw\n");
    assert_eq!(
        datadir::filesystem_of(&over, Path::new("/tmp/x")).as_deref(),
        Some("ext4")
    );
    assert_eq!(datadir::filesystem_of("", Path::new("/x")), None);
}
