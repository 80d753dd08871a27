//! The arithmetic behind the report, in pure functions tested by `tests/bench_arithmetic.rs`.

use std::time::Duration;

/// When an open-loop sender's message `seq` is due, after the shared start: `per_second`
/// messages a second per sender, with sender `sender` of `senders` offset by its share of one
/// interval so that the room receives an even stream instead of `senders` at once.
pub fn open_loop_due(seq: usize, sender: usize, senders: usize, per_second: u32) -> Duration {
    let slots = seq as u64 * senders as u64 + sender as u64;
    Duration::from_nanos(slots * 1_000_000_000 / (u64::from(per_second) * senders.max(1) as u64))
}
