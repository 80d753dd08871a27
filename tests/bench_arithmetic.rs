//! The fan-out benchmark's arithmetic: `[[bench]] harness = false` keeps tests inside the bench
//! from running, so its pure modules are compiled into this test as well.

#[allow(dead_code)]
#[path = "../benches/fanout/datadir.rs"]
mod datadir;
#[allow(dead_code)]
#[path = "../benches/fanout/disk.rs"]
mod disk;
#[allow(dead_code)]
#[path = "../benches/fanout/ledger.rs"]
mod ledger;
#[allow(dead_code)]
#[path = "../benches/fanout/parse.rs"]
mod parse;
#[allow(dead_code)]
#[path = "../benches/fanout/report.rs"]
mod report;
#[allow(dead_code)]
#[path = "../benches/fanout/stats.rs"]
mod stats;

// The disk store's targets and the crash scenario's check, in files of their own.
#[path = "bench_arithmetic/crash.rs"]
mod crash_check;
#[path = "bench_arithmetic/disk.rs"]
mod disk_targets;

use std::time::Duration;

use parse::{Frame, Incoming, Payload};
use report::{Headline, OURS, Outcome, Report, Row, ServerInfo};

/// A run of `scenario` against `server` with every copy of 10 messages to 10 connections.
fn run(scenario: &'static str, server: &str) -> Outcome {
    Outcome {
        scenario,
        server: server.to_owned(),
        receivers: 9,
        senders: 1,
        messages: 10,
        sent: 10,
        expected: 100,
        copies: 100,
        unique: 100,
        connected: 10,
        ..Outcome::default()
    }
}

fn report(rows: Vec<Vec<Outcome>>) -> Report {
    let mut servers: Vec<ServerInfo> = Vec::new();
    for row in &rows {
        if !servers.iter().any(|s| s.label == row[0].server) {
            servers.push(ServerInfo {
                label: row[0].server.clone(),
                command: format!("./{}", row[0].server),
            });
        }
    }
    Report {
        runs: rows[0].len(),
        rows: rows.into_iter().map(|runs| Row { runs }).collect(),
        servers,
        cores: 2,
    }
}

#[test]
fn percentile_is_nearest_rank() {
    let values: Vec<u32> = (1..=100).collect();
    assert_eq!(stats::percentile(&values, 500), Some(50));
    assert_eq!(stats::percentile(&values, 990), Some(99));
    assert_eq!(stats::percentile(&values, 1000), Some(100));
    // 0.07 * 100 is 7.000000000000001 in floating point: a float rank would say 8.
    assert_eq!(stats::percentile(&values, 70), Some(7));
    assert_eq!(stats::percentile(&[1, 2, 3, 4], 500), Some(2));
    assert_eq!(stats::percentile(&[7], 990), Some(7));
    assert_eq!(stats::percentile(&[3, 9], 0), Some(3));
    assert_eq!(stats::percentile(&[], 500), None);
}

#[test]
fn median_run_is_the_middle_or_the_worse_of_the_middle_two() {
    // Higher is better: 100 < 200 < 300, the middle is 200 at index 2.
    assert_eq!(
        stats::median_run(&[Some(100.0), Some(300.0), Some(200.0)], true),
        Some(2)
    );
    // Two runs: the worse one, never the better.
    assert_eq!(
        stats::median_run(&[Some(200.0), Some(100.0)], true),
        Some(1)
    );
    assert_eq!(stats::median_run(&[Some(5.0), Some(1.0)], false), Some(0));
    // A run without the figure counts as the worst.
    assert_eq!(
        stats::median_run(&[None, Some(20.0), Some(10.0)], true),
        Some(2)
    );
    assert_eq!(stats::median_run(&[], true), None);
}

#[test]
fn a_row_shows_one_run_not_a_mix_of_runs() {
    let with = |deliveries_ns, p99| Outcome {
        delivery_ns: Some(deliveries_ns),
        p99_ms: Some(p99),
        cpu_ns: Some(deliveries_ns / 1000),
        ..run("burst", OURS)
    };
    // 100 deliveries over 1 s, 0.5 s and 0.25 s: the median by deliv/s is the 0.5 s run,
    // whose p99 (9) is the largest, not the median of the p99s (5).
    let row = Row {
        runs: vec![
            with(1_000_000_000, 1.0),
            with(500_000_000, 9.0),
            with(250_000_000, 5.0),
        ],
    };
    let median = row.median();
    assert_eq!(median.deliveries_per_second(), Some(200.0));
    assert_eq!(median.p99_ms, Some(9.0));
    assert_eq!(median.cpu_s_per_million(), Some(5.0));

    // Open loop: the median by p99, the worse of two.
    let open = |p99| Outcome {
        headline: Headline::P99,
        p99_ms: Some(p99),
        ..run("steady", OURS)
    };
    let row = Row {
        runs: vec![open(3.0), open(12.0)],
    };
    assert_eq!(row.median().p99_ms, Some(12.0));
}

#[test]
fn loss_is_the_worst_runs_and_no_copies_lost_needs_every_run_clean() {
    let lossy = Outcome {
        unique: 50,
        copies: 50,
        ..run("burst", OURS)
    };
    let row = Row {
        runs: vec![run("burst", OURS), run("burst", OURS), lossy.clone()],
    };
    assert_eq!(row.median().lost(), 0);
    assert_eq!(row.worst_lost(), 50);

    let clean = report(vec![vec![run("burst", OURS); 3]]);
    assert!(clean.nothing_lost());
    assert!(report::table(&clean).contains("No copies lost."));

    let one_bad_run = report(vec![vec![
        run("burst", OURS),
        run("burst", OURS),
        lossy.clone(),
    ]]);
    assert!(!one_bad_run.nothing_lost());
    let table = report::table(&one_bad_run);
    assert!(!table.contains("No copies lost"), "{table}");
    assert!(table.contains("LOST: burst on ours"), "{table}");
    assert!(table.contains("(per run: 0, 0, 50)"), "{table}");

    // A loss by another server counts too.
    let theirs = Outcome {
        server: "classic".to_owned(),
        ..lossy
    };
    let other_lost = report(vec![vec![run("burst", OURS)], vec![theirs]]);
    assert!(!report::table(&other_lost).contains("No copies lost"));
}

#[test]
fn duplicates_and_disorder_are_the_worst_runs() {
    let disordered = Outcome {
        copies: 103,
        duplicates: 3,
        out_of_order: 2,
        ..run("burst", OURS)
    };
    let row = Row {
        runs: vec![run("burst", OURS), disordered, run("burst", OURS)],
    };
    assert_eq!(row.worst_duplicates(), 3);
    assert_eq!(row.worst_out_of_order(), 2);
    let table = report::table(&report(vec![row.runs]));
    assert!(table.contains("DISORDER: burst on ours"), "{table}");
}

#[test]
fn duplicates_count_in_no_rate_or_cost() {
    // 100 copies of which 20 duplicates: 80 deliveries, 20 lost.
    let o = Outcome {
        expected: 100,
        copies: 100,
        unique: 80,
        duplicates: 20,
        delivery_ns: Some(1_000_000_000),
        cpu_ns: Some(8_000),
        writes: Some(40),
        ..run("burst", OURS)
    };
    assert_eq!(o.lost(), 20);
    assert_eq!(o.deliveries_per_second(), Some(80.0));
    // 8 µs for 80 deliveries: 0.1 s per million.
    assert_eq!(o.cpu_s_per_million(), Some(0.1));
    assert_eq!(o.writes_per_delivery(), Some(0.5));
}

#[test]
fn cpu_per_million_keeps_nanoseconds() {
    // 1,234,567 ns for 1,000 deliveries: finer than a 10 ms tick by far.
    let per_million = stats::cpu_s_per_million(1_234_567, 1_000).expect("deliveries");
    assert!((per_million - 1.234567).abs() < 1e-12, "{per_million}");
    assert_eq!(stats::cpu_s_per_million(5, 0), None);
    assert_eq!(stats::per_item(5, 0), None);
    assert_eq!(stats::rate(5, 0), None);
}

#[test]
fn proc_files_parse() {
    assert_eq!(stats::schedstat_ns("2479832 4123 17\n"), Some(2_479_832));
    assert_eq!(stats::schedstat_ns(""), None);
    let io = "rchar: 6976\nwchar: 12\nsyscr: 10\nsyscw: 3\nread_bytes: 0\n";
    assert_eq!(stats::proc_io_field(io, "syscw"), Some(3));
    assert_eq!(stats::proc_io_field(io, "syscr"), Some(10));
    assert_eq!(stats::proc_io_field(io, "cancelled_write_bytes"), None);
}

#[test]
fn open_loop_schedule_is_fixed_and_staggered() {
    // One sender at 200 a second: message 10 is due at 50 ms.
    assert_eq!(
        stats::open_loop_due(10, 0, 1, 200),
        Duration::from_millis(50)
    );
    // 20 senders at 100 a second each: the room gets one message every 0.5 ms.
    assert_eq!(stats::open_loop_due(0, 0, 20, 100), Duration::ZERO);
    assert_eq!(
        stats::open_loop_due(0, 1, 20, 100),
        Duration::from_micros(500)
    );
    assert_eq!(
        stats::open_loop_due(1, 0, 20, 100),
        Duration::from_millis(10)
    );
    assert_eq!(
        stats::open_loop_due(199, 19, 20, 100),
        Duration::from_micros(1_999_500)
    );
}

#[test]
fn classic_lines_give_the_bench_payload_notices_or_nothing() {
    let copy = |sender, seq, ts| Incoming::Copy(Payload { sender, seq, ts });
    let tag = b"fo1ar2";
    assert_eq!(
        parse::classify(br#"127.0.0.1:5000: "fo1ar2 3 41 1234567""#, tag),
        copy(3, 41, 1_234_567)
    );
    // A named sender's tag, and a colon inside it, change nothing.
    assert_eq!(
        parse::classify(br#"alice@[::1]:5000: "fo1ar2 0 0 0""#, tag),
        copy(0, 0, 0)
    );
    assert_eq!(
        parse::classify(
            b"* you missed 12 messages: your connection fell behind",
            tag
        ),
        Incoming::Notice { missed: Some(12) }
    );
    assert_eq!(
        parse::classify(b"* 2 here: a, b", tag),
        Incoming::Notice { missed: Some(2) },
        "any notice's first number; only lag notices come during a run"
    );
    for other in [
        &b"Welcome to chat! Type a message"[..],
        br#"127.0.0.1:5000: "fo1ar9 3 41 1234567""#,
        br#"127.0.0.1:5000: "fo1ar2 3 41""#,
        br#"127.0.0.1:5000: "fo1ar2 3 41 12 5""#,
        br#"127.0.0.1:5000: "fo1ar2 3 x 12""#,
        br#"127.0.0.1:5000: "fo1ar2 3 41 99999999999999999999""#,
        br#"127.0.0.1:5000: "fo1ar2 3 41 12"#,
        br#"127.0.0.1:5000: "fo1ar23 41 12""#,
    ] {
        assert_eq!(
            parse::classify(other, tag),
            Incoming::Other,
            "{}",
            String::from_utf8_lossy(other)
        );
    }
}

#[test]
fn structured_frames_give_offsets_epochs_and_the_bench_payload() {
    let tag = b"fo1ar2";
    let epoch = "3f9a0c12d4e5b678";
    assert_eq!(
        parse::frame(
            r#"{"type":"welcome","text":"Welcome to chat! Type a message","room":"","epoch":"3f9a0c12d4e5b678","offset":41,"you":"127.0.0.1:5000","echo":true}"#,
            tag
        ),
        Frame::Welcome {
            epoch: epoch.to_owned(),
            offset: 41
        }
    );
    assert_eq!(
        parse::frame(
            r#"{"type":"message","room":"","epoch":"3f9a0c12d4e5b678","offset":42,"from":"127.0.0.1:5000","text":"fo1ar2 0 7 123"}"#,
            tag
        ),
        Frame::Message {
            offset: 42,
            copy: Some(Payload {
                sender: 0,
                seq: 7,
                ts: 123
            })
        }
    );
    // Key order is the server's business; an escaped text is read as well.
    assert_eq!(
        parse::frame(
            r#"{"text":"fo1ar2 1\u00202 3","offset":9,"type":"message","from":"a@b"}"#,
            tag
        ),
        Frame::Message {
            offset: 9,
            copy: Some(Payload {
                sender: 1,
                seq: 2,
                ts: 3
            })
        }
    );
    assert_eq!(
        parse::frame(
            r#"{"type":"message","offset":43,"from":"x","text":"hello"}"#,
            tag
        ),
        Frame::Message {
            offset: 43,
            copy: None
        },
        "another's message still moves the offset on"
    );
    assert_eq!(
        parse::frame(r#"{"type":"recovered","complete":true}"#, tag),
        Frame::Recovered {
            complete: true,
            missed: 0,
            restarted: false
        }
    );
    assert_eq!(
        parse::frame(
            r#"{"type":"recovered","complete":false,"missed":30,"text":"* you missed 30 messages while you were away"}"#,
            tag
        ),
        Frame::Recovered {
            complete: false,
            missed: 30,
            restarted: false
        }
    );
    assert_eq!(
        parse::frame(
            r#"{"type":"recovered","complete":false,"restarted":true,"text":"* the room was restarted"}"#,
            tag
        ),
        Frame::Recovered {
            complete: false,
            missed: 0,
            restarted: true
        }
    );
    assert_eq!(
        parse::frame(
            r#"{"type":"notice","kind":"missed","text":"* you missed 3 messages: your connection fell behind","count":3}"#,
            tag
        ),
        Frame::Notice { count: Some(3) }
    );
    assert_eq!(
        parse::frame(r#"{"type":"ack","id":1,"offset":42}"#, tag),
        Frame::Ack {
            id: 1,
            duplicate: false
        }
    );
    assert_eq!(
        parse::frame(r#"{"type":"ack","id":7,"duplicate":true}"#, tag),
        Frame::Ack {
            id: 7,
            duplicate: true
        },
        "a repeat of an older id comes without an offset"
    );
    for other in [
        r#"{"type":"ack","offset":42}"#,
        r#"{"type":"error","code":"bad-offset","text":"beyond"}"#,
        r#"{"type":"welcome","epoch":"xyz","offset":1}"#,
        r#"{"type":"welcome","epoch":"3f9a0c12d4e5b678"}"#,
        r#"{"type":"message","text":"fo1ar2 0 7 123"}"#,
        r#"{"type":"recovered"}"#,
        r#"{"offset":1}"#,
        r#"127.0.0.1:5000: "fo1ar2 0 7 123""#,
        "Welcome to chat! Type a message",
        "",
    ] {
        assert_eq!(parse::frame(other, tag), Frame::Other, "{other}");
    }
}

#[test]
fn a_session_target_adds_session_and_resume_to_the_query() {
    assert_eq!(parse::session_target("/", "s1", None), "/?session=s1");
    assert_eq!(
        parse::session_target("/", "s1", Some(("3f9a0c12d4e5b678", 41))),
        "/?session=s1&epoch=3f9a0c12d4e5b678&after=41"
    );
    assert_eq!(
        parse::session_target("/rust?name=bob", "s1", Some(("00000000000000ab", 0))),
        "/rust?name=bob&session=s1&epoch=00000000000000ab&after=0"
    );
}

#[test]
fn a_tenth_of_the_receivers_drop_one_after_another() {
    let after = |id| stats::reconnect_after(id, 999, 10, 100, 400);
    let droppers: Vec<usize> = (0..999).filter(|&id| after(id).is_some()).collect();
    assert_eq!(droppers.len(), 100);
    assert_eq!(droppers[..3], [0, 10, 20]);
    assert_eq!(droppers.last(), Some(&990));
    // Spread evenly from the first seq to the last, in id order.
    assert_eq!(after(0), Some(100));
    assert_eq!(after(10), Some(103));
    assert_eq!(after(500), Some(251));
    assert_eq!(after(990), Some(400));
    let seqs: Vec<usize> = droppers.iter().filter_map(|&id| after(id)).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(after(5), None);
    assert_eq!(after(999), None, "not a receiver");
    // One dropper drops at the first seq; none when every is 0.
    assert_eq!(stats::reconnect_after(0, 5, 10, 100, 400), Some(100));
    assert_eq!(stats::reconnect_after(0, 5, 0, 100, 400), None);
}

#[test]
fn ratios_divide_the_other_median_run_by_ours() {
    let figures = |server: &str, delivery_ns, p99, cpu_ns, writes, lost: u64| Outcome {
        delivery_ns: Some(delivery_ns),
        p50_ms: Some(1.0),
        p99_ms: Some(p99),
        cpu_ns: Some(cpu_ns),
        writes: Some(writes),
        rss_growth_kb: Some(30),
        unique: 100 - lost,
        ..run("burst", server)
    };
    let r = report(vec![
        vec![figures(OURS, 1_000_000, 2.0, 1_000, 10, 0)],
        vec![figures("classic", 4_000_000, 8.0, 6_000, 100, 20)],
    ]);
    let ratios = r.ratios();
    assert_eq!(ratios.len(), 1);
    let classic = &ratios[0];
    assert_eq!(classic.server, "classic");
    // 80 deliveries in 4 ms against 100 in 1 ms.
    assert_eq!(classic.deliveries_per_second, Some(0.2));
    assert_eq!(classic.p50, Some(1.0));
    assert_eq!(classic.p99, Some(4.0));
    // 6 µs for 80 against 1 µs for 100.
    assert!((classic.cpu_s_per_million.expect("cpu") - 7.5).abs() < 1e-9);
    assert_eq!(classic.writes_per_delivery, Some(12.5));
    assert_eq!(classic.kb_per_connection, Some(1.0));
    assert_eq!(classic.worst_lost, 20);
    let table = report::table(&r);
    assert!(table.contains("vs ours"), "{table}");
    assert!(table.contains("0.20x"), "{table}");
    let json = report::json(&r, &[]);
    assert!(json.contains("\"ratios\": ["), "{json}");
    assert!(json.contains("\"writes_per_delivery\": 12.5"), "{json}");

    assert_eq!(stats::ratio(Some(1.0), Some(0.0)), None);
    assert_eq!(stats::ratio(None, Some(1.0)), None);
}

#[test]
fn ratios_pair_rows_of_the_same_connection_count() {
    let idle = |server: &str, receivers, growth| Outcome {
        headline: Headline::KbPerConnection,
        receivers,
        connected: receivers + 1,
        rss_growth_kb: Some(growth),
        ..run("idle", server)
    };
    let r = report(vec![
        vec![idle(OURS, 4_999, 15_000)],
        vec![idle(OURS, 9_999, 20_000)],
        vec![idle("classic", 4_999, 45_000)],
        vec![idle("classic", 9_999, 100_000)],
    ]);
    let ratios: Vec<(usize, Option<f64>)> = r
        .ratios()
        .iter()
        .map(|r| (r.connections, r.kb_per_connection))
        .collect();
    assert_eq!(ratios, [(5_000, Some(3.0)), (10_000, Some(5.0))]);
}

/// Connections and senders per instance when `receivers` and `senders` are split over
/// `instances`.
fn split(receivers: usize, senders: usize, instances: usize) -> (Vec<usize>, Vec<usize>) {
    let (mut all, mut sending) = (vec![0; instances], vec![0; instances]);
    for id in 0..receivers + senders {
        let instance = stats::instance_of(id, receivers, senders, instances);
        all[instance] += 1;
        if id >= receivers {
            sending[instance] += 1;
        }
    }
    (all, sending)
}

#[test]
fn connections_and_senders_split_evenly_across_instances() {
    // crowd: 999 receivers and the one sender, 500 connections on each instance.
    assert_eq!(split(999, 1, 2), (vec![500, 500], vec![1, 0]));
    // senders: 90 receivers and 10 senders, 5 senders on each.
    assert_eq!(split(90, 10, 2), (vec![50, 50], vec![5, 5]));
    // busy: 80 receivers and 20 senders.
    assert_eq!(split(80, 20, 2), (vec![50, 50], vec![10, 10]));
    // One instance takes everyone; so does a count of 0.
    assert_eq!(split(99, 1, 1), (vec![100], vec![1]));
    assert_eq!(stats::instance_of(7, 99, 1, 0), 0);
    // Any mix: no two instances differ by more than one, in connections or in senders.
    for instances in 1..=4 {
        for receivers in 0..40 {
            for senders in 0..12 {
                let (all, sending) = split(receivers, senders, instances);
                for counts in [&all, &sending] {
                    let (min, max) = (counts.iter().min(), counts.iter().max());
                    assert!(
                        max.zip(min).is_some_and(|(max, min)| max - min <= 1),
                        "{receivers}+{senders} over {instances}: {all:?}, senders {sending:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn shared_instances_report_per_instance_throughput_and_redis_cpu_apart() {
    // Ours alone: 100 deliveries in 1 ms. Two instances: 100 in 0.625 ms, 80,000 a second each.
    let ours = Outcome {
        delivery_ns: Some(1_000_000),
        cpu_ns: Some(1_000),
        ..run("crowd", OURS)
    };
    let two = Outcome {
        instances: 2,
        delivery_ns: Some(625_000),
        cpu_ns: Some(3_000_000),
        redis_cpu_ns: Some(500_000),
        ..run("crowd", "redis-x2")
    };
    assert_eq!(ours.instances(), 1);
    assert_eq!(ours.deliveries_per_second_per_instance(), Some(100_000.0));
    assert_eq!(ours.redis_cpu_s_per_million(), None);
    assert_eq!(two.deliveries_per_second(), Some(160_000.0));
    assert_eq!(two.deliveries_per_second_per_instance(), Some(80_000.0));
    // The instances' CPU is one sum, 3 ms for 100 deliveries; Redis's is apart, 0.5 ms.
    assert_eq!(two.cpu_s_per_million(), Some(30.0));
    assert_eq!(two.redis_cpu_s_per_million(), Some(5.0));
    assert_eq!(stats::per_instance(Some(3.0), 0), Some(3.0));
    assert_eq!(stats::per_instance(None, 2), None);

    let r = report(vec![vec![ours.clone()], vec![two]]);
    let ratios = r.ratios();
    assert_eq!(ratios.len(), 1);
    assert_eq!(ratios[0].deliveries_per_second, Some(1.6));
    // Each instance at 0.8x ours alone: over the issue's line of 0.5x.
    assert_eq!(ratios[0].per_instance, Some(0.8));
    let table = report::table(&r);
    for expected in ["per inst", "redis s/M", "80000", "0.80x", "5.00"] {
        assert!(table.contains(expected), "{expected} missing from {table}");
    }
    let json = report::json(&r, &[]);
    assert!(json.contains("\"instances\": 2"), "{json}");
    assert!(json.contains("\"redis_cpu_s_per_million\": 5"), "{json}");
    assert!(
        json.contains("\"deliveries_per_second_per_instance\": 0.8"),
        "{json}"
    );

    // Without shared instances the table keeps its columns.
    let alone = report::table(&report(vec![vec![ours]]));
    assert!(
        !alone.contains("per inst") && !alone.contains("redis s/M"),
        "{alone}"
    );
}
