//! The wire formats. A client that asks for nothing gets the [`classic`] text lines,
//! byte for byte the exercise's; one that asks for the [`structured`] subprotocol
//! (`Sec-WebSocket-Protocol: broadcast-chat.v1`) gets one JSON object per frame,
//! with offsets to resume from. What both share is here: names, rooms, the query
//! parameters of the upgrade, epochs, close reasons.

pub mod classic;
pub mod structured;

use std::fmt;
use std::str::FromStr;

/// The first message every client gets.
pub const WELCOME: &str = "Welcome to chat! Type a message";

/// Close reason sent to every client when the server shuts down (code 1001).
pub const REASON_SHUTDOWN: &str = "server shutting down";
/// Close reason for a binary message (code 1003).
pub const REASON_BINARY: &str = "binary messages are not supported; send text";
/// Close reason for a client that kept sending over the rate limit (code 1008).
pub const REASON_FLOOD: &str = "too many messages for too long";
/// The reason a `--token` server gives for a 401.
pub const REASON_WRONG_TOKEN: &str = "missing or wrong token";
/// Close reason sent by the client when its input ends (code 1000).
pub const REASON_BYE: &str = "bye";

/// Longest name or room name, in characters.
pub const MAX_NAME_LEN: usize = 32;
/// Longest client id ([`SESSION_PARAM`]), in characters.
pub const MAX_SESSION_LEN: usize = 64;

/// The query parameter that carries a client's name: `ws://host:2000/room?name=alice`.
pub const NAME_PARAM: &str = "name";
/// The query parameter with a client's id, the same across its reconnections, so
/// that a line it sends again is recognised: `session=k3j4h5`. `session` is its
/// name on the wire only: in the server's code the value is the client id, since
/// a server's session is one connection's task.
pub const SESSION_PARAM: &str = "session";
/// The query parameter with the epoch of the room a client resumes.
pub const EPOCH_PARAM: &str = "epoch";
/// The query parameter with the last offset a resuming client received.
pub const AFTER_PARAM: &str = "after";
/// The query parameter with which a newcomer asks for the room's last N logged
/// messages after the welcome, instead of the server's `--history`.
pub const HISTORY_PARAM: &str = "history";

/// How a browser presents the token, which cannot set `Authorization` on a
/// WebSocket: as an entry of `Sec-WebSocket-Protocol`, this prefix followed by the
/// token's bytes in base64url without padding (`bearer.czNjcmV0` for `s3cret`),
/// beside the protocol it asks for. The server accepts it as it accepts
/// `Authorization: Bearer`, and never names it in its answer.
pub const TOKEN_PROTOCOL_PREFIX: &str = "bearer.";

/// The text a classic client sends to ask who is in its room; the answer goes to it
/// alone.
pub const WHO_COMMAND: &str = "/who";

/// The GUID that RFC 6455 appends to the client's key before hashing.
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The `Sec-WebSocket-Accept` value that answers a `Sec-WebSocket-Key` (RFC 6455).
pub fn accept_key(key: &str) -> String {
    use base64::{Engine, engine::general_purpose::STANDARD};
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(WS_GUID.as_bytes());
    STANDARD.encode(sha.digest().bytes())
}

/// Checks a name or room name: 1 to 32 letters, digits, `-`, `_` or `.`.
///
/// # Errors
/// A one-line message naming the rule when `name` breaks it.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.is_empty() || name.chars().count() > MAX_NAME_LEN || !name.chars().all(ok) {
        return Err(format!(
            "invalid name {name:?}: use 1 to {MAX_NAME_LEN} letters, digits, '-', '_' or '.'"
        ));
    }
    Ok(())
}

/// The room a request path chooses: `/` is the lobby (`""`), `/rust` is `rust`.
///
/// # Errors
/// A one-line message when the path is not a valid room name (nested paths included).
pub fn room_from_path(path: &str) -> Result<&str, String> {
    let room = path.strip_prefix('/').unwrap_or(path).trim_end_matches('/');
    if room.is_empty() {
        return Ok("");
    }
    check_name(room).map_err(|e| e.replacen("invalid name", "invalid room name", 1))?;
    Ok(room)
}

/// The wire format a connection speaks, chosen at the upgrade: the server keeps a
/// room's channel per format, the client reads and writes its frames by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The [`classic`] text lines: for a client that asks for no subprotocol.
    Classic,
    /// The [`structured`] `broadcast-chat.v1` JSON frames.
    Structured,
}

/// A room's epoch: a random id chosen when the room is created, so that offsets
/// from a room that was since emptied and created again, or from a server that
/// restarted, are never taken for this room's. Written as 16 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Epoch(pub u64);

impl Epoch {
    /// A new random epoch.
    pub fn random() -> Self {
        Self(fastrand::u64(..))
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl FromStr for Epoch {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "invalid epoch {s:?}: use the 16 hex digits the server sent"
            ));
        }
        u64::from_str_radix(s, 16)
            .map(Epoch)
            .map_err(|e| format!("invalid epoch {s:?}: {e}"))
    }
}

/// Where a returning client left off: the room's epoch and the last offset it received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    /// The epoch of the room the client was in.
    pub epoch: Epoch,
    /// The last offset it received in that room.
    pub after: u64,
}

/// What a client says in the upgrade request's query string:
/// `?name=alice&session=k3j4h5&epoch=3f9a0c12d4e5b678&after=41`. Other parameters
/// are ignored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Params<'a> {
    /// The client's name, checked with [`check_name`].
    pub name: Option<&'a str>,
    /// The client's id ([`SESSION_PARAM`]), the same across its reconnections.
    pub client_id: Option<&'a str>,
    /// Where a returning client left off.
    pub resume: Option<Resume>,
    /// How many of the room's last logged messages a newcomer asks for, instead
    /// of the server's `--history`.
    pub history: Option<u64>,
}

impl<'a> Params<'a> {
    /// Reads and checks the parameters of `query` (without the `?`).
    ///
    /// # Errors
    /// A one-line message for the first parameter that is invalid, for an epoch
    /// without an offset (or the reverse), or for a history asked by a returning
    /// client.
    pub fn parse(query: Option<&'a str>) -> Result<Self, String> {
        let mut params = Params::default();
        let (mut epoch, mut after) = (None, None);
        for pair in query.unwrap_or_default().split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                NAME_PARAM => {
                    check_name(value)?;
                    params.name = Some(value);
                }
                SESSION_PARAM => {
                    check_client_id(value)?;
                    params.client_id = Some(value);
                }
                EPOCH_PARAM => epoch = Some(value.parse::<Epoch>()?),
                AFTER_PARAM => {
                    after = Some(value.parse::<u64>().map_err(|_| {
                        format!(
                            "invalid offset {value:?}: use the last offset received, a whole number"
                        )
                    })?);
                }
                HISTORY_PARAM => {
                    params.history = Some(value.parse::<u64>().map_err(|_| {
                        format!(
                            "invalid history {value:?}: use a number of messages, a whole number"
                        )
                    })?);
                }
                _ => {}
            }
        }
        params.resume = match (epoch, after) {
            (Some(epoch), Some(after)) => Some(Resume { epoch, after }),
            (None, None) => None,
            _ => {
                return Err(format!(
                    "{EPOCH_PARAM} and {AFTER_PARAM} go together: give both or neither"
                ));
            }
        };
        if params.history.is_some() && params.resume.is_some() {
            return Err(format!(
                "{HISTORY_PARAM} is for a newcomer: a returning client gets what it missed after {AFTER_PARAM}"
            ));
        }
        Ok(params)
    }
}

/// Checks a client id: 1 to 64 letters, digits, `-` or `_`.
fn check_client_id(id: &str) -> Result<(), String> {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_');
    if id.is_empty() || id.len() > MAX_SESSION_LEN || !id.chars().all(ok) {
        return Err(format!(
            "invalid session {id:?}: use 1 to {MAX_SESSION_LEN} letters, digits, '-' or '_'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_short_and_plain() {
        for good in ["alice", "a", "Bob_2", "x.y-z", &"n".repeat(32)] {
            assert_eq!(check_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "al ice",
            "alice!",
            "ünï",
            "a/b",
            "\u{1b}[31m",
            &"n".repeat(33),
        ] {
            let err = check_name(bad).expect_err(bad);
            assert!(
                err.contains("use 1 to 32 letters, digits, '-', '_' or '.'"),
                "{err}"
            );
        }
    }

    #[test]
    fn paths_choose_rooms() {
        assert_eq!(room_from_path("/"), Ok(""));
        assert_eq!(room_from_path("/rust"), Ok("rust"));
        assert_eq!(room_from_path("/rust/"), Ok("rust"));
        assert!(
            room_from_path("/a/b")
                .expect_err("nested")
                .starts_with("invalid room name")
        );
    }

    #[test]
    fn the_query_gives_name_session_and_where_to_resume() {
        assert_eq!(Params::parse(None), Ok(Params::default()));
        assert_eq!(
            Params::parse(Some("x=1&name=bob")).map(|p| p.name),
            Ok(Some("bob"))
        );
        assert_eq!(
            Params::parse(Some("names=x")).map(|p| p.name),
            Ok(None),
            "only `name` names"
        );
        let params =
            Params::parse(Some("session=k3j-4_h5&epoch=3f9a0c12d4e5b678&after=41")).expect("valid");
        assert_eq!(params.client_id, Some("k3j-4_h5"));
        assert_eq!(
            params.resume,
            Some(Resume {
                epoch: Epoch(0x3f9a_0c12_d4e5_b678),
                after: 41
            })
        );
        assert_eq!(params.history, None);
        assert_eq!(
            Params::parse(Some("history=50")).map(|p| p.history),
            Ok(Some(50))
        );
    }

    #[test]
    fn bad_query_parameters_are_one_line_errors() {
        for (query, error) in [
            ("name=al%20ice", "invalid name \"al%20ice\""),
            ("session=a/b", "invalid session \"a/b\""),
            ("epoch=xyz&after=1", "invalid epoch \"xyz\""),
            ("epoch=3f9a0c12d4e5b678&after=-1", "invalid offset \"-1\""),
            ("epoch=3f9a0c12d4e5b678", "epoch and after go together"),
            ("after=5", "epoch and after go together"),
            ("history=-1", "invalid history \"-1\""),
            ("history=lots", "invalid history \"lots\""),
            (
                "history=5&epoch=3f9a0c12d4e5b678&after=1",
                "history is for a newcomer",
            ),
        ] {
            let err = Params::parse(Some(query)).expect_err(query);
            assert!(err.starts_with(error), "{query}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn epochs_are_sixteen_hex_digits_both_ways() {
        let epoch = Epoch(0xab);
        assert_eq!(epoch.to_string(), "00000000000000ab");
        assert_eq!("00000000000000ab".parse(), Ok(epoch));
        assert!("ab".parse::<Epoch>().is_err());
        assert!("+000000000000000".parse::<Epoch>().is_err());
    }
}
