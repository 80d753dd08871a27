//! The fan-out benchmark's arithmetic: `[[bench]] harness = false` keeps tests inside the bench
//! from running, so its pure modules are compiled into this test as well.

#[allow(dead_code)]
#[path = "../benches/fanout/stats.rs"]
mod stats;

use std::time::Duration;

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
