//! A certificate's validity period, read from its DER for certificates trusted without a chain.
//!
//! Written by hand because the crates at hand do not give it: rustls-webpki keeps a
//! certificate's dates private and checks them only while building a chain, which
//! is exactly what rejects a self-signed certificate marked as a CA; a full X.509
//! parser (`x509-parser`) would add a dozen crates for two dates.

use std::time::Duration;

use rustls_pki_types::UnixTime;

/// DER tags met on the way to the validity period.
const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const VERSION: u8 = 0xa0;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// The `notBefore` and `notAfter` times of a DER certificate, or `None` if the
/// certificate is not one (RFC 5280, section 4.1).
pub(crate) fn validity(cert: &[u8]) -> Option<(UnixTime, UnixTime)> {
    let (cert, _) = expect(SEQUENCE, cert)?;
    let (tbs, _) = expect(SEQUENCE, cert)?;
    let rest = match element(tbs)? {
        (VERSION, _, rest) => rest,
        _ => tbs,
    };
    let (_serial, rest) = expect(INTEGER, rest)?;
    let (_signature, rest) = expect(SEQUENCE, rest)?;
    let (_issuer, rest) = expect(SEQUENCE, rest)?;
    let (validity, _) = expect(SEQUENCE, rest)?;
    let (tag, not_before, rest) = element(validity)?;
    let not_before = time(tag, not_before)?;
    let (tag, not_after, _) = element(rest)?;
    Some((not_before, time(tag, not_after)?))
}

/// The element at the front of `input` if its tag is `tag`: its contents and what follows.
fn expect(tag: u8, input: &[u8]) -> Option<(&[u8], &[u8])> {
    match element(input)? {
        (found, contents, rest) if found == tag => Some((contents, rest)),
        _ => None,
    }
}

/// The DER element at the front of `input`: its tag, its contents, and what follows.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (len, rest) = rest.split_at(count);
        let len = len.iter().fold(0usize, |n, &b| n << 8 | usize::from(b));
        (len, rest)
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// A DER `UTCTime` (`YYMMDDHHMMSSZ`) or `GeneralizedTime` (`YYYYMMDDHHMMSSZ`).
fn time(tag: u8, text: &[u8]) -> Option<UnixTime> {
    let text = std::str::from_utf8(text).ok()?.strip_suffix('Z')?;
    let number = |range: std::ops::Range<usize>| -> Option<i64> {
        let digits = text.get(range)?;
        digits.bytes().all(|b| b.is_ascii_digit()).then_some(())?;
        digits.parse().ok()
    };
    let (year, rest) = match (tag, text.len()) {
        // RFC 5280: two-digit years 50 to 99 are 1950 to 1999, the others 2000 to 2049.
        (UTC_TIME, 12) => {
            let yy = number(0..2)?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, 2)
        }
        (GENERALIZED_TIME, 14) => (number(0..4)?, 4),
        _ => return None,
    };
    let field = |i: usize| number(rest + 2 * i..rest + 2 * i + 2);
    let (month, day, hour, minute, second) =
        (field(0)?, field(1)?, field(2)?, field(3)?, field(4)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    // Times before 1970 count as 1970: only a `notBefore` can be that old.
    let seconds = u64::try_from(seconds).unwrap_or(0);
    Some(UnixTime::since_unix_epoch(Duration::from_secs(seconds)))
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar (Howard
/// Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(not_before: (i32, u8, u8), not_after: (i32, u8, u8)) -> Vec<u8> {
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let key = rcgen::KeyPair::generate().expect("key");
        params
            .self_signed(&key)
            .expect("certificate")
            .der()
            .to_vec()
    }

    fn secs(time: UnixTime) -> u64 {
        time.as_secs()
    }

    #[test]
    fn both_time_formats_are_read() {
        // rcgen writes years before 2050 as UTCTime and later ones as GeneralizedTime.
        let (from, to) = validity(&certificate((2001, 2, 3), (2060, 1, 1))).expect("validity");
        assert_eq!(secs(from), 981_158_400);
        assert_eq!(secs(to), 2_840_140_800);
        let (from, to) = validity(&certificate((1969, 12, 31), (2049, 12, 31))).expect("validity");
        assert_eq!(secs(from), 0);
        assert_eq!(secs(to), 2_524_521_600);
    }

    #[test]
    fn times_are_exact_to_the_second() {
        assert_eq!(time(UTC_TIME, b"700101000000Z").map(secs), Some(0));
        assert_eq!(
            time(UTC_TIME, b"000229123456Z").map(secs),
            Some(951_827_696)
        );
        assert_eq!(
            time(GENERALIZED_TIME, b"20380119031408Z").map(secs),
            Some(2_147_483_648)
        );
        assert_eq!(
            time(UTC_TIME, b"991231235959Z").map(secs),
            Some(946_684_799)
        );
    }

    #[test]
    fn anything_else_is_refused() {
        assert_eq!(validity(b""), None);
        assert_eq!(validity(b"\x30\x03\x02\x01\x00"), None);
        assert_eq!(validity(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        let cert = certificate((2001, 2, 3), (2060, 1, 1));
        assert_eq!(validity(&cert[..cert.len() / 2]), None);
        assert_eq!(time(UTC_TIME, b"700101000000"), None);
        assert_eq!(time(UTC_TIME, b"20700101000000Z"), None);
        assert_eq!(time(GENERALIZED_TIME, b"700101000000Z"), None);
        assert_eq!(time(UTC_TIME, b"701301000000Z"), None);
        assert_eq!(time(UTC_TIME, b"70010100+000Z"), None);
    }
}
