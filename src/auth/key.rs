//! The keys tokens are checked and signed with: an HMAC-SHA256 secret (a file of at
//! least 32 bytes), or a PEM key: Ed25519 or RSA, the public key for the server
//! (`--auth-key`), the private key for minting (`server token --key`).

use std::fmt;
use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer};

use crate::Error;

/// Fewest bytes an HMAC secret may have: as many as the hash's output (RFC 7518, 3.2).
pub const MIN_SECRET_LEN: usize = 32;

/// The algorithm a key file holds a key for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A shared secret: HMAC with SHA-256 (tokens with HS384 or HS512 are taken too).
    Hmac,
    /// An Ed25519 key: EdDSA.
    Ed25519,
    /// An RSA key: RS256 (tokens with RS384, RS512 or PS256..PS512 are taken too).
    Rsa,
}

impl Kind {
    /// The algorithms a token checked with this kind of key may name.
    fn accepted(self) -> Vec<Algorithm> {
        use Algorithm::{EdDSA, HS256, HS384, HS512, PS256, PS384, PS512, RS256, RS384, RS512};
        match self {
            Kind::Hmac => vec![HS256, HS384, HS512],
            Kind::Ed25519 => vec![EdDSA],
            Kind::Rsa => vec![RS256, RS384, RS512, PS256, PS384, PS512],
        }
    }

    /// The algorithm tokens are minted with.
    fn signs_with(self) -> Algorithm {
        match self {
            Kind::Hmac => Algorithm::HS256,
            Kind::Ed25519 => Algorithm::EdDSA,
            Kind::Rsa => Algorithm::RS256,
        }
    }
}

/// The key the server checks tokens with (`--auth-key`): an HMAC secret, or an
/// Ed25519 or RSA public key in PEM. `Debug` never shows it.
#[derive(Clone)]
pub struct VerifyingKey {
    pub(super) key: DecodingKey,
    pub(super) algorithms: Vec<Algorithm>,
    kind: Kind,
}

/// The key tokens are minted with (`server token --key`): an HMAC secret, or an
/// Ed25519 or RSA private key in PEM (PKCS#8). `Debug` never shows it.
#[derive(Clone)]
pub struct SigningKey {
    pub(super) key: EncodingKey,
    pub(super) algorithm: Algorithm,
}

impl VerifyingKey {
    /// Reads the key in `path`.
    ///
    /// # Errors
    /// [`Error::AuthKey`] when the file cannot be read or holds no key the server
    /// can check tokens with (a private key, a secret shorter than 32 bytes).
    pub fn load(path: &Path) -> Result<Self, Error> {
        read(path).and_then(|bytes| Self::from_bytes(&bytes).map_err(|e| key_error(path, e)))
    }

    /// The key in `bytes`: a PEM public key, or otherwise an HMAC secret.
    ///
    /// # Errors
    /// One line saying what is wrong with it.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        let (key, kind) = match pem_label(bytes) {
            None => (DecodingKey::from_secret(secret(bytes)?), Kind::Hmac),
            Some("PUBLIC KEY") => {
                let spki = SubjectPublicKeyInfoDer::from_pem_slice(bytes)
                    .map_err(|e| format!("not a PEM public key: {e}"))?;
                match public_key(spki.as_ref())? {
                    (Kind::Ed25519, raw) => (DecodingKey::from_ed_der(raw), Kind::Ed25519),
                    (_, pkcs1) => (DecodingKey::from_rsa_der(pkcs1), Kind::Rsa),
                }
            }
            Some("PRIVATE KEY") => {
                return Err("this is a private key: give the server the public key \
                            (openssl pkey -in FILE -pubout)"
                    .into());
            }
            Some(other) => {
                return Err(format!(
                    "a PEM {other}, not a key: use an HMAC secret or a PUBLIC KEY"
                ));
            }
        };
        Ok(Self {
            key,
            algorithms: kind.accepted(),
            kind,
        })
    }
}

impl SigningKey {
    /// Reads the key in `path`.
    ///
    /// # Errors
    /// [`Error::AuthKey`] when the file cannot be read or holds no key tokens can be
    /// signed with (a public key, a secret shorter than 32 bytes).
    pub fn load(path: &Path) -> Result<Self, Error> {
        read(path).and_then(|bytes| Self::from_bytes(&bytes).map_err(|e| key_error(path, e)))
    }

    /// The key in `bytes`: a PEM private key (PKCS#8), or otherwise an HMAC secret.
    ///
    /// # Errors
    /// One line saying what is wrong with it.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        let (key, kind) = match pem_label(bytes) {
            None => (EncodingKey::from_secret(secret(bytes)?), Kind::Hmac),
            Some("PRIVATE KEY") => {
                let pkcs8 = PrivatePkcs8KeyDer::from_pem_slice(bytes)
                    .map_err(|e| format!("not a PEM private key: {e}"))?;
                match private_key(pkcs8.secret_pkcs8_der())? {
                    // ring takes the whole PKCS#8 document for Ed25519, and the
                    // PKCS#1 key inside it for RSA.
                    (Kind::Ed25519, _) => (
                        EncodingKey::from_ed_der(pkcs8.secret_pkcs8_der()),
                        Kind::Ed25519,
                    ),
                    (_, pkcs1) => (EncodingKey::from_rsa_der(pkcs1), Kind::Rsa),
                }
            }
            Some("PUBLIC KEY") => {
                return Err("this is a public key: tokens are signed with the private key".into());
            }
            Some(other) => {
                return Err(format!(
                    "a PEM {other}, not a key: use an HMAC secret or a PKCS#8 PRIVATE KEY \
                     (openssl genpkey -algorithm ed25519)"
                ));
            }
        };
        Ok(Self {
            key,
            algorithm: kind.signs_with(),
        })
    }
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifyingKey({:?}, <redacted>)", self.kind)
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({:?}, <redacted>)", self.algorithm)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| key_error(path, e.to_string()))
}

fn key_error(path: &Path, reason: String) -> Error {
    Error::AuthKey {
        path: path.display().to_string(),
        reason,
    }
}

/// The label of the first PEM section (`PUBLIC KEY`), if the file is PEM.
fn pem_label(bytes: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(bytes).ok()?.trim_start();
    let rest = text.strip_prefix("-----BEGIN ")?;
    rest.split_once("-----").map(|(label, _)| label)
}

/// The secret in a file: its bytes without the line end an editor or `echo` adds.
fn secret(bytes: &[u8]) -> Result<&[u8], String> {
    let secret = bytes
        .strip_suffix(b"\n")
        .map_or(bytes, |b| b.strip_suffix(b"\r").unwrap_or(b));
    if secret.len() < MIN_SECRET_LEN {
        return Err(format!(
            "an HMAC secret of {} bytes is too short: use at least {MIN_SECRET_LEN} \
             (e.g. openssl rand -base64 32 > FILE)",
            secret.len()
        ));
    }
    Ok(secret)
}

/// `id-Ed25519` (RFC 8410).
const ED25519_OID: &[u8] = &[0x2b, 0x65, 0x70];
/// `rsaEncryption` (RFC 8017).
const RSA_OID: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

/// The key kind and its bits from a SubjectPublicKeyInfo: the raw 32 bytes of an
/// Ed25519 key, the PKCS#1 `RSAPublicKey` of an RSA one (what ring takes).
fn public_key(spki: &[u8]) -> Result<(Kind, &[u8]), String> {
    let bad = || "a malformed public key".to_owned();
    let (body, _) = der(spki, SEQUENCE).ok_or_else(bad)?;
    let (algorithm, rest) = der(body, SEQUENCE).ok_or_else(bad)?;
    let kind = algorithm_kind(algorithm)?;
    let (bits, _) = der(rest, BIT_STRING).ok_or_else(bad)?;
    // The first byte of a BIT STRING counts its unused bits: none in a key.
    let key = bits.strip_prefix(&[0]).ok_or_else(bad)?;
    Ok((kind, key))
}

/// The key kind and, for RSA, the PKCS#1 `RSAPrivateKey` inside a PKCS#8 document.
fn private_key(pkcs8: &[u8]) -> Result<(Kind, &[u8]), String> {
    let bad = || "a malformed private key".to_owned();
    let (body, _) = der(pkcs8, SEQUENCE).ok_or_else(bad)?;
    let (_version, rest) = der(body, INTEGER).ok_or_else(bad)?;
    let (algorithm, rest) = der(rest, SEQUENCE).ok_or_else(bad)?;
    let kind = algorithm_kind(algorithm)?;
    let (key, _) = der(rest, OCTET_STRING).ok_or_else(bad)?;
    Ok((kind, key))
}

fn algorithm_kind(algorithm: &[u8]) -> Result<Kind, String> {
    let (oid, _) = der(algorithm, OID).ok_or("a malformed key algorithm")?;
    match oid {
        ED25519_OID => Ok(Kind::Ed25519),
        RSA_OID => Ok(Kind::Rsa),
        _ => Err("a key of another kind than Ed25519 or RSA".into()),
    }
}

const INTEGER: u8 = 0x02;
const BIT_STRING: u8 = 0x03;
const OCTET_STRING: u8 = 0x04;
const OID: u8 = 0x06;
const SEQUENCE: u8 = 0x30;

/// The contents of the DER element with `tag` at the start of `input`, and what
/// follows it; `None` if it is not there or its length is not within `input`.
fn der(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&first, rest) = input.split_first()?;
    if first != tag {
        return None;
    }
    let (&len, mut rest) = rest.split_first()?;
    let len = if len < 0x80 {
        usize::from(len)
    } else {
        // Long form: the low bits count the length's bytes (at most 4 here).
        let count = usize::from(len & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (bytes, after) = rest.split_at(count);
        rest = after;
        bytes.iter().fold(0usize, |n, &b| (n << 8) | usize::from(b))
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An Ed25519 key pair made with `openssl genpkey -algorithm ed25519`.
    pub(crate) const ED25519_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\n\
        MC4CAQAwBQYDK2VwBCIEIM6vuTkrsoPcXAM/e61oooC41GC+61BHbe+HngkRjf8o\n\
        -----END PRIVATE KEY-----\n";
    /// Its public key (`openssl pkey -pubout`).
    pub(crate) const ED25519_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\n\
        MCowBQYDK2VwAyEANtPvPicgUWZHy8zkiJPs6sCNDfl6vb1ClEZD9sH7w9Y=\n\
        -----END PUBLIC KEY-----\n";

    #[test]
    fn a_short_secret_is_refused_with_the_rule() {
        let e = VerifyingKey::from_bytes(b"s3cret\n").expect_err("too short");
        assert!(e.contains("6 bytes is too short: use at least 32"), "{e}");
        assert!(SigningKey::from_bytes(&[b'x'; 31]).is_err());
        assert!(SigningKey::from_bytes(&[b'x'; 32]).is_ok());
    }

    #[test]
    fn the_line_end_is_not_part_of_the_secret() {
        assert_eq!(
            secret(b"0123456789abcdef0123456789abcdef\r\n"),
            secret(b"0123456789abcdef0123456789abcdef")
        );
    }

    #[test]
    fn a_private_key_is_refused_as_the_servers_key_and_a_public_one_for_minting() {
        let e = VerifyingKey::from_bytes(ED25519_PRIVATE.as_bytes()).expect_err("private");
        assert!(e.contains("give the server the public key"), "{e}");
        let key = SigningKey::from_bytes(ED25519_PRIVATE.as_bytes()).expect("signs");
        assert_eq!(key.algorithm, Algorithm::EdDSA);
        let e = SigningKey::from_bytes(ED25519_PUBLIC.as_bytes()).expect_err("public");
        assert!(e.contains("signed with the private key"), "{e}");
        let key = VerifyingKey::from_bytes(ED25519_PUBLIC.as_bytes()).expect("verifies");
        assert_eq!(key.algorithms, [Algorithm::EdDSA]);
        assert!(!format!("{key:?}").contains("MCow"));
    }

    #[test]
    fn der_lengths_are_checked() {
        assert_eq!(
            der(&[0x30, 0x02, 1, 2, 3], SEQUENCE),
            Some((&[1u8, 2][..], &[3u8][..]))
        );
        assert_eq!(
            der(&[0x30, 0x03, 1, 2], SEQUENCE),
            None,
            "longer than the input"
        );
        assert_eq!(
            der(&[0x30, 0x81, 0x01, 9], SEQUENCE),
            Some((&[9u8][..], &[][..]))
        );
        assert_eq!(der(&[0x31, 0x00], SEQUENCE), None, "another tag");
        assert_eq!(der(&[0x30, 0x85, 1, 1, 1, 1, 1], SEQUENCE), None);
        assert!(public_key(&[0x30, 0x00]).is_err());
    }
}
