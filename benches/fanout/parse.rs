//! What the load generator reads: classic lines and `broadcast-chat.v1` frames, down to the bench
//! payload `TAG SENDER SEQ TS` they carry. Pure functions, tested by `tests/bench_arithmetic.rs`.

use std::borrow::Cow;

use serde::Deserialize;

/// The subprotocol a resuming client asks for.
pub const SUBPROTOCOL: &str = "broadcast-chat.v1";

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

/// A `broadcast-chat.v1` frame, reduced to what the load generator acts on.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// The first frame: the room's epoch (16 hex digits) and its last offset.
    Welcome { epoch: String, offset: u64 },
    /// A chat message at `offset`; `copy` is its text read as a bench payload.
    Message { offset: u64, copy: Option<Payload> },
    /// How a resumption went; `missed` is 0 when the server did not say.
    Recovered {
        complete: bool,
        missed: u64,
        restarted: bool,
    },
    /// A notice (a lag notice carries a count).
    Notice { count: Option<u64> },
    /// A line of this client's was accepted; `duplicate` when its id had been accepted before.
    Ack { id: u64, duplicate: bool },
    /// Anything else: errors, frames that are not JSON of this protocol.
    Other,
}

/// Every field the load generator reads from any server frame; serde skips the others.
#[derive(Deserialize)]
struct RawFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default)]
    offset: Option<u64>,
    #[serde(borrow, default)]
    epoch: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(default)]
    complete: Option<bool>,
    #[serde(default)]
    missed: Option<u64>,
    #[serde(default)]
    restarted: bool,
    #[serde(default)]
    count: Option<u64>,
    #[serde(default)]
    id: Option<u64>,
    #[serde(default)]
    duplicate: bool,
}

/// Parses a server frame of `broadcast-chat.v1`; `tag` picks out this run's bench payloads.
/// One pass of serde_json with borrowed strings: no allocation for a message frame.
pub fn frame(json: &str, tag: &[u8]) -> Frame {
    let Ok(raw) = serde_json::from_str::<RawFrame<'_>>(json) else {
        return Frame::Other;
    };
    match (raw.kind.as_ref(), raw.offset) {
        ("message", Some(offset)) => Frame::Message {
            offset,
            copy: raw.text.and_then(|text| payload(text.as_bytes(), tag)),
        },
        ("welcome", Some(offset)) => match raw.epoch {
            Some(epoch) if epoch.len() == 16 && epoch.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Frame::Welcome {
                    epoch: epoch.into_owned(),
                    offset,
                }
            }
            _ => Frame::Other,
        },
        ("recovered", _) => match raw.complete {
            Some(complete) => Frame::Recovered {
                complete,
                missed: raw.missed.unwrap_or(0),
                restarted: raw.restarted,
            },
            None => Frame::Other,
        },
        ("notice", _) => Frame::Notice { count: raw.count },
        ("ack", _) => match raw.id {
            Some(id) => Frame::Ack {
                id,
                duplicate: raw.duplicate,
            },
            None => Frame::Other,
        },
        _ => Frame::Other,
    }
}

/// The request target of a structured client's connection: its `session` id and, when it
/// resumes, the room's `epoch` and the last offset it received, after the path's own query if it
/// has one. `session` must be letters, digits, `-` or `_`; the server refuses others.
pub fn session_target(path_and_query: &str, session: &str, resume: Option<(&str, u64)>) -> String {
    let separator = if path_and_query.contains('?') {
        '&'
    } else {
        '?'
    };
    match resume {
        Some((epoch, after)) => {
            format!("{path_and_query}{separator}session={session}&epoch={epoch}&after={after}")
        }
        None => format!("{path_and_query}{separator}session={session}"),
    }
}

/// The value of the unlabelled metric `name` in a Prometheus text exposition: the line
/// `name VALUE` (comments and other metrics, `name_other` and `name{...}` among them, skipped).
pub fn metric(exposition: &str, name: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(' ')?;
        value.split_whitespace().next()?.parse().ok()
    })
}
