//! Signed identities: JWTs checked at the upgrade with the `--auth-key` key (their
//! claims say who the holder is, which rooms they may enter, whether they may send
//! and publish), tokens minted for `server token`, and the limit on failed
//! authentications per source address.
//!
//! A token is checked once, when a connection is opened or a line published, never
//! per message; a session whose token expires while it is open is closed by one timer.

mod key;
mod limiter;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Header, Validation};
use serde::{Deserialize, Serialize};

use crate::protocol::check_name;
pub use key::{MIN_SECRET_LEN, SigningKey, VerifyingKey};
pub(crate) use limiter::FailureLimit;

/// The close code of a session whose token expired while it was open (reason
/// [`REASON_EXPIRED`]): a client should not come back with the same token.
pub const CLOSE_EXPIRED: u16 = 4001;
/// The close reason of a session whose token expired.
pub const REASON_EXPIRED: &str = "token expired";

/// What a token says, as its JSON payload has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The holder's name: their tag in the room (1 to 32 letters, digits, `-`, `_`, `.`).
    pub sub: String,
    /// When the token expires, in seconds since 1970 (UTC).
    pub exp: u64,
    /// The rooms the holder may enter: names, `/` for the lobby, a prefix ending in
    /// `*` (`team-*`), or `*` for every room.
    pub rooms: Vec<String>,
    /// Whether the holder may only read: their lines never reach the room.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    /// Whether the holder may post through the publish API (`POST /_/rooms/NAME/messages`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub publish: bool,
}

/// Who a valid token says its holder is, and what they may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The holder's name (`sub`).
    pub name: String,
    /// The rooms they may enter, as patterns (see [`Claims::rooms`]).
    pub rooms: Vec<String>,
    /// Whether their lines reach the room.
    pub may_send: bool,
    /// Whether they may post through the publish API.
    pub may_publish: bool,
    /// When the token expires, in seconds since 1970.
    pub expires: u64,
}

/// Why a token was not taken: each is answered with HTTP 401 and [`Refusal::reason`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No token came with the request.
    Missing,
    /// The token's `exp` has passed.
    Expired,
    /// The token is not one of ours: a bad signature, another algorithm, bad claims.
    Invalid(String),
}

impl Refusal {
    /// One line saying why, for the answer's body.
    pub fn reason(&self) -> String {
        match self {
            Refusal::Missing => "missing token: send Authorization: Bearer TOKEN".into(),
            Refusal::Expired => "token expired: get a new one".into(),
            Refusal::Invalid(why) => format!("invalid token: {why}"),
        }
    }
}

/// Seconds since 1970, now (0 if the clock is set before 1970).
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl VerifyingKey {
    /// Checks `token`'s signature and claims at `now` (seconds since 1970). A token
    /// is valid while `now < exp`; there is no leeway, so the server's clock and the
    /// signer's should agree.
    ///
    /// # Errors
    /// The [`Refusal`] to answer with.
    pub fn verify(&self, token: &[u8], now: u64) -> Result<Identity, Refusal> {
        let token = std::str::from_utf8(token)
            .map_err(|_| Refusal::Invalid("not a JWT (not text)".into()))?;
        let mut validation = Validation::new(self.algorithms[0]);
        validation.algorithms.clone_from(&self.algorithms);
        validation.set_required_spec_claims(&["exp", "sub"]);
        // Checked below against the caller's clock, so that tests and the expiry
        // timer agree with the upgrade.
        validation.validate_exp = false;
        validation.leeway = 0;
        let claims = jsonwebtoken::decode::<Claims>(token, &self.key, &validation)
            .map_err(|e| Refusal::Invalid(describe(e.kind())))?
            .claims;
        if claims.exp <= now {
            return Err(Refusal::Expired);
        }
        check_name(&claims.sub).map_err(|e| Refusal::Invalid(format!("claim sub: {e}")))?;
        for pattern in &claims.rooms {
            check_pattern(pattern).map_err(|e| Refusal::Invalid(format!("claim rooms: {e}")))?;
        }
        Ok(Identity {
            name: claims.sub,
            rooms: claims.rooms,
            may_send: !claims.read_only,
            may_publish: claims.publish,
            expires: claims.exp,
        })
    }
}

/// What a decoding error means, in a few words.
fn describe(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::InvalidSignature => "bad signature".into(),
        ErrorKind::InvalidAlgorithm => "signed with another algorithm than the server's key".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("missing claim {claim}"),
        ErrorKind::Json(e) => format!("bad claims: {e}"),
        ErrorKind::ImmatureSignature => "not valid yet (nbf)".into(),
        _ => "malformed token".into(),
    }
}

impl Identity {
    /// Whether the token lets its holder into `room` (`""` is the lobby).
    pub fn may_enter(&self, room: &str) -> bool {
        self.rooms.iter().any(|pattern| matches(pattern, room))
    }

    /// How long the token has left at `now` (seconds since 1970).
    pub fn remaining(&self, now: u64) -> Duration {
        Duration::from_secs(self.expires.saturating_sub(now))
    }
}

/// Whether `pattern` (see [`Claims::rooms`]) covers `room`.
fn matches(pattern: &str, room: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => room.starts_with(prefix),
        None if pattern == "/" => room.is_empty(),
        None => pattern == room,
    }
}

/// Checks a room pattern: `/`, `*`, a room name, or a room name's start and `*`.
///
/// # Errors
/// One line naming the rule.
pub fn check_pattern(pattern: &str) -> Result<(), String> {
    let name = pattern.strip_suffix('*').unwrap_or(pattern);
    if pattern == "/" || pattern == "*" || check_name(name).is_ok() {
        return Ok(());
    }
    Err(format!(
        "invalid room pattern {pattern:?}: use a room name, / for the lobby, a prefix ending in * (team-*), or *"
    ))
}

/// A token for `claims`, signed with `key`.
///
/// # Errors
/// One line when a claim breaks its rule or the key cannot sign.
pub fn mint(key: &SigningKey, claims: &Claims) -> Result<String, String> {
    check_name(&claims.sub)?;
    if claims.rooms.is_empty() {
        return Err("no rooms: name at least one (or * for every room)".into());
    }
    for pattern in &claims.rooms {
        check_pattern(pattern)?;
    }
    jsonwebtoken::encode(&Header::new(key.algorithm), claims, &key.key)
        .map_err(|e| format!("cannot sign the token: {e}"))
}

#[cfg(test)]
mod tests {
    use super::key::tests::{ED25519_PRIVATE, ED25519_PUBLIC};
    use super::*;

    const SECRET: &[u8] = b"an HMAC secret of at least 32 bytes";
    const NOW: u64 = 1_800_000_000;

    fn claims(rooms: &[&str]) -> Claims {
        Claims {
            sub: "alice".into(),
            exp: NOW + 60,
            rooms: rooms.iter().map(|r| (*r).to_owned()).collect(),
            read_only: false,
            publish: false,
        }
    }

    fn hmac() -> (SigningKey, VerifyingKey) {
        (
            SigningKey::from_bytes(SECRET).expect("signing"),
            VerifyingKey::from_bytes(SECRET).expect("verifying"),
        )
    }

    #[test]
    fn a_minted_token_verifies_with_its_rights() {
        let (signing, verifying) = hmac();
        let token = mint(
            &signing,
            &Claims {
                read_only: true,
                ..claims(&["rust", "team-*"])
            },
        )
        .expect("minted");
        let who = verifying.verify(token.as_bytes(), NOW).expect("valid");
        assert_eq!(who.name, "alice");
        assert!(!who.may_send);
        assert!(!who.may_publish);
        assert!(who.may_enter("rust") && who.may_enter("team-ops") && who.may_enter("team-"));
        assert!(!who.may_enter("ops") && !who.may_enter("") && !who.may_enter("rusty"));
        assert_eq!(who.remaining(NOW), Duration::from_secs(60));
    }

    #[test]
    fn ed25519_tokens_verify_with_the_public_key() {
        let signing = SigningKey::from_bytes(ED25519_PRIVATE.as_bytes()).expect("signing");
        let verifying = VerifyingKey::from_bytes(ED25519_PUBLIC.as_bytes()).expect("verifying");
        let token = mint(&signing, &claims(&["*"])).expect("minted");
        let who = verifying.verify(token.as_bytes(), NOW).expect("valid");
        assert!(who.may_enter("") && who.may_enter("anything"));
        // An HMAC key cannot take a token signed for another algorithm.
        let (_, hmac) = hmac();
        assert_eq!(
            hmac.verify(token.as_bytes(), NOW),
            Err(Refusal::Invalid(
                "signed with another algorithm than the server's key".into()
            ))
        );
    }

    #[test]
    fn forged_expired_and_malformed_tokens_are_refused_with_a_reason() {
        let (signing, verifying) = hmac();
        let token = mint(&signing, &claims(&["rust"])).expect("minted");
        // Another secret's signature.
        let forger = SigningKey::from_bytes(b"another secret of at least 32 bytes!").expect("key");
        let forged = mint(&forger, &claims(&["rust"])).expect("minted");
        assert_eq!(
            verifying.verify(forged.as_bytes(), NOW),
            Err(Refusal::Invalid("bad signature".into()))
        );
        // The claims changed after signing (rooms: everything).
        let mut parts: Vec<&str> = token.split('.').collect();
        let widened = {
            use base64::Engine;
            let json = serde_json::to_vec(&claims(&["*"])).expect("json");
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
        };
        parts[1] = &widened;
        assert_eq!(
            verifying.verify(parts.join(".").as_bytes(), NOW),
            Err(Refusal::Invalid("bad signature".into()))
        );
        assert_eq!(
            verifying.verify(token.as_bytes(), NOW + 60),
            Err(Refusal::Expired),
            "valid while now < exp"
        );
        assert!(verifying.verify(token.as_bytes(), NOW + 59).is_ok());
        assert_eq!(
            verifying.verify(b"s3cret", NOW),
            Err(Refusal::Invalid("malformed token".into()))
        );
        assert!(verifying.verify(b"\xff", NOW).is_err());
    }

    #[test]
    fn claims_are_checked_for_their_rules() {
        let (signing, verifying) = hmac();
        let sign = |claims: &serde_json::Value| {
            jsonwebtoken::encode(&Header::default(), claims, &signing.key).expect("signed")
        };
        let refused =
            |claims: serde_json::Value| match verifying.verify(sign(&claims).as_bytes(), NOW) {
                Err(Refusal::Invalid(why)) => why,
                other => panic!("expected a refusal, got {other:?}"),
            };
        let exp = NOW + 60;
        assert!(refused(serde_json::json!({"sub": "alice", "exp": exp})).contains("rooms"));
        assert!(refused(serde_json::json!({"exp": exp, "rooms": ["*"]})).contains("sub"));
        assert!(refused(serde_json::json!({"sub": "alice", "rooms": ["*"]})).contains("exp"));
        assert!(
            refused(serde_json::json!({"sub": "a b", "exp": exp, "rooms": ["*"]}))
                .starts_with("claim sub: invalid name")
        );
        assert!(
            refused(serde_json::json!({"sub": "alice", "exp": exp, "rooms": ["a/b"]}))
                .starts_with("claim rooms: invalid room pattern")
        );
        let who = verifying
            .verify(
                sign(
                    &serde_json::json!({"sub": "bot", "exp": exp, "rooms": ["/"], "publish": true}),
                )
                .as_bytes(),
                NOW,
            )
            .expect("valid");
        assert!(who.may_send && who.may_publish && who.may_enter("") && !who.may_enter("rust"));
    }

    #[test]
    fn minting_refuses_what_the_server_would() {
        let (signing, _) = hmac();
        assert!(mint(&signing, &claims(&[])).is_err());
        assert!(mint(&signing, &claims(&["a b"])).is_err());
        assert!(
            mint(
                &signing,
                &Claims {
                    sub: String::new(),
                    ..claims(&["*"])
                }
            )
            .is_err()
        );
    }

    #[test]
    fn patterns() {
        for ok in ["/", "*", "rust", "team-*", "a.b_c-*"] {
            assert!(check_pattern(ok).is_ok(), "{ok}");
        }
        for bad in ["", "**", "a*b", "a b", "/rust"] {
            assert!(check_pattern(bad).is_err(), "{bad}");
        }
    }
}
