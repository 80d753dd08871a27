//! Opening a connection: resolve, TCP, TLS for `wss://`, upgrade; TLS failures in words.

use std::net::SocketAddr;

use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls;
use tokio_websockets::WebSocketStream;
use tokio_websockets::tls::MaybeTlsStream;

use super::upgrade::upgrade;
use super::url::display_url;
use crate::config::ClientConfig;
use crate::protocol::Format;
use crate::{Error, Result};

/// A connected chat socket, over TLS for `wss://`.
pub type Connection = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens the TCP connection and upgrades it to a WebSocket, within the connect
/// timeout, with `params` in the query (the name, the session, where to resume);
/// returns it with the wire format the server chose.
///
/// # Errors
/// One [`Error`] variant per way it can fail: the name does not resolve, the TCP
/// connection or the TLS handshake fails, the server refuses the upgrade (with
/// [`Error::Unauthorized`] for 401), or it all takes longer than the timeout.
pub async fn connect(
    config: &ClientConfig,
    params: &[(&str, String)],
) -> Result<(Connection, Format)> {
    let url = display_url(&config.url);
    match timeout(config.connect_timeout, connect_inner(config, params, &url)).await {
        Ok(result) => result,
        Err(_) => Err(Error::ConnectTimeout { url }),
    }
}

async fn connect_inner(
    config: &ClientConfig,
    params: &[(&str, String)],
    url: &str,
) -> Result<(Connection, Format)> {
    let uri = &config.url;
    // `Uri::host` keeps the brackets of an IPv6 literal; the resolver wants them off.
    let host = uri.host().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let wss = uri.scheme_str() == Some("wss");
    let port = uri.port_u16().unwrap_or(if wss { 443 } else { 80 });
    let connect_error = |source: std::io::Error| Error::Connect {
        url: url.to_owned(),
        source,
    };
    let addrs = resolve(host, port).await.map_err(|source| Error::Resolve {
        url: url.to_owned(),
        host: host.to_owned(),
        source,
    })?;
    let tcp = TcpStream::connect(&addrs[..])
        .await
        .map_err(connect_error)?;
    let _ = tcp.set_nodelay(true);

    // The scheme alone decides: a wss:// URL is TLS or nothing, never plain text.
    let stream = if wss {
        let tls = match &config.tls {
            Some(tls) => tls.clone(),
            None => crate::tls::client_config(None)?,
        };
        let name = rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|_| {
            Error::InvalidUrl {
                url: url.to_owned(),
                reason: "the host is not a valid TLS server name",
            }
        })?;
        let tls = TlsConnector::from(tls).connect(name, tcp).await;
        MaybeTlsStream::Rustls(tls.map_err(|e| tls_error(url, e))?)
    } else {
        MaybeTlsStream::Plain(tcp)
    };
    upgrade(stream, config, params, url).await
}

/// The addresses of `host`: a step of its own, so that a failure here is known to
/// be the name's, whatever the resolver's message says.
async fn resolve(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
    if addrs.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "the name has no address",
        ));
    }
    Ok(addrs)
}

/// The hint for a certificate that trusting more would let through.
const CA_HINT: &str = "(pass --ca FILE to trust a private CA or a self-signed certificate)";
/// The hint for a certificate outside its validity period.
const CLOCK_HINT: &str = "(renew it on the server, or check this machine's clock)";

/// One line for a failed TLS handshake, with a hint at the likely cause.
fn tls_error(url: &str, e: std::io::Error) -> Error {
    let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return Error::Connect {
            url: url.to_owned(),
            source: e,
        };
    };
    Error::Tls {
        url: url.to_owned(),
        reason: describe_tls(tls),
    }
}

/// What a failed TLS handshake means, said plainly, with a hint where one helps.
fn describe_tls(e: &rustls::Error) -> String {
    use rustls::CertificateError as Cert;
    let cert = match e {
        rustls::Error::InvalidCertificate(cert) => cert,
        rustls::Error::InvalidMessage(_) => {
            return "the server did not answer in TLS (is it a plain ws:// server? try ws://)"
                .into();
        }
        other => return other.to_string(),
    };
    let (what, hint) = match cert {
        Cert::UnknownIssuer => ("is from an unknown issuer".into(), CA_HINT),
        Cert::BadSignature => ("is not signed by a trusted issuer".into(), CA_HINT),
        Cert::NotValidForNameContext { expected, .. } => (
            format!("is for another name, not {}", expected.to_str()),
            "(put a name it holds in the URL)",
        ),
        Cert::NotValidForName => (
            "is for another name".into(),
            "(put a name it holds in the URL)",
        ),
        Cert::Expired | Cert::ExpiredContext { .. } => ("has expired".into(), CLOCK_HINT),
        Cert::NotValidYet | Cert::NotValidYetContext { .. } => {
            ("is not valid yet".into(), CLOCK_HINT)
        }
        Cert::Revoked => ("has been revoked".into(), ""),
        Cert::BadEncoding => ("is malformed".into(), ""),
        Cert::InvalidPurpose | Cert::InvalidPurposeContext { .. } => {
            ("is not meant for a server".into(), "")
        }
        Cert::UnsupportedSignatureAlgorithmContext { .. }
        | Cert::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => (
            "is signed with an algorithm this client does not support".into(),
            "",
        ),
        // Among these, a self-signed certificate marked as a CA, without --ca.
        _ => ("is not trusted".into(), CA_HINT),
    };
    match hint {
        "" => format!("the server's certificate {what}"),
        hint => format!("the server's certificate {what} {hint}"),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::client::parse_url;
    use rustls::CertificateError as Cert;

    fn described(cert: Cert) -> String {
        describe_tls(&rustls::Error::InvalidCertificate(cert))
    }

    #[test]
    fn certificate_errors_are_said_plainly_with_the_hint_that_helps() {
        assert_eq!(
            described(Cert::UnknownIssuer),
            "the server's certificate is from an unknown issuer \
             (pass --ca FILE to trust a private CA or a self-signed certificate)"
        );
        assert_eq!(
            described(Cert::BadSignature),
            "the server's certificate is not signed by a trusted issuer \
             (pass --ca FILE to trust a private CA or a self-signed certificate)"
        );
        let other = Cert::Other(rustls::OtherError(std::sync::Arc::new(
            std::io::Error::other("CaUsedAsEndEntity"),
        )));
        assert_eq!(
            described(other),
            "the server's certificate is not trusted \
             (pass --ca FILE to trust a private CA or a self-signed certificate)"
        );
        let expected = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
        assert_eq!(
            described(Cert::NotValidForNameContext {
                expected: expected.to_owned(),
                presented: vec!["DnsName(\"localhost\")".into()],
            }),
            "the server's certificate is for another name, not 127.0.0.1 (put a name it holds in the URL)"
        );
        let time = rustls::pki_types::UnixTime::since_unix_epoch(Duration::from_secs(2));
        let then = rustls::pki_types::UnixTime::since_unix_epoch(Duration::from_secs(1));
        assert_eq!(
            described(Cert::ExpiredContext {
                time,
                not_after: then
            }),
            "the server's certificate has expired (renew it on the server, or check this machine's clock)"
        );
        assert_eq!(
            described(Cert::NotValidYet),
            "the server's certificate is not valid yet (renew it on the server, or check this machine's clock)"
        );
        assert_eq!(
            described(Cert::Revoked),
            "the server's certificate has been revoked"
        );
        for cert in [
            Cert::UnknownIssuer,
            Cert::Expired,
            Cert::NotValidForName,
            Cert::InvalidPurpose,
            Cert::BadEncoding,
        ] {
            let line = described(cert);
            assert!(!line.contains("Other") && !line.contains('{'), "{line}");
        }
    }

    #[test]
    fn a_server_that_does_not_speak_tls_gets_a_hint_at_ws() {
        let line = describe_tls(&rustls::Error::InvalidMessage(
            rustls::InvalidMessage::InvalidContentType,
        ));
        assert_eq!(
            line,
            "the server did not answer in TLS (is it a plain ws:// server? try ws://)"
        );
        let plain = tls_error("wss://h", std::io::ErrorKind::ConnectionReset.into());
        assert!(matches!(plain, Error::Connect { .. }), "{plain:?}");
    }

    #[tokio::test]
    async fn a_name_that_does_not_resolve_is_a_resolve_error() {
        // `.invalid` never resolves (RFC 6761).
        let mut config = ClientConfig::new(parse_url("ws://nosuch.invalid:2000").expect("url"));
        config.connect_timeout = Duration::from_secs(10);
        let err = connect(&config, &[]).await.expect_err("no such host");
        assert!(matches!(err, Error::Resolve { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "cannot connect to ws://nosuch.invalid:2000: cannot resolve the host name nosuch.invalid (check the URL's host)"
        );
    }
}
