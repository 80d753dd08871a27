//! What the load generator reads: classic lines, down to the bench payload `TAG SENDER SEQ TS`
//! they carry. Pure functions, tested by `tests/bench_arithmetic.rs`.

/// A bench message: who sent it, its number, and the stamp latency is measured from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Payload {
    pub sender: usize,
    pub seq: usize,
    /// Nanoseconds since the run's epoch.
    pub ts: u64,
}

/// A classic line: a copy of a bench message, a lag notice, or anything else.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    Copy(Payload),
    Notice { missed: Option<u64> },
    Other,
}

/// Parses a classic line, `ADDR: "TAG SENDER SEQ TS"` or a `* ...` notice, by byte scanning.
pub fn classify(text: &[u8], tag: &[u8]) -> Incoming {
    if let Some(rest) = text.strip_prefix(b"* ") {
        return Incoming::Notice {
            missed: first_number(rest),
        };
    }
    let Some(start) = text.windows(3).position(|w| w == b": \"") else {
        return Incoming::Other;
    };
    let Some(body) = text[start + 3..].strip_suffix(b"\"") else {
        return Incoming::Other;
    };
    payload(body, tag).map_or(Incoming::Other, Incoming::Copy)
}

/// Parses the bench payload `TAG SENDER SEQ TS` (as sent, before any quoting).
pub fn payload(text: &[u8], tag: &[u8]) -> Option<Payload> {
    let body = text.strip_prefix(tag)?.strip_prefix(b" ")?;
    let mut numbers = body.split(|&b| b == b' ').map(parse_u64);
    match (
        numbers.next(),
        numbers.next(),
        numbers.next(),
        numbers.next(),
    ) {
        (Some(Some(sender)), Some(Some(seq)), Some(Some(ts)), None) => Some(Payload {
            sender: usize::try_from(sender).ok()?,
            seq: usize::try_from(seq).ok()?,
            ts,
        }),
        _ => None,
    }
}

fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit()
            .then(|| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
            .flatten()
    })
}

fn first_number(text: &[u8]) -> Option<u64> {
    let start = text.iter().position(u8::is_ascii_digit)?;
    let len = text[start..]
        .iter()
        .take_while(|d| d.is_ascii_digit())
        .count();
    parse_u64(&text[start..start + len])
}
