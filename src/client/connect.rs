//! Opening the connection: resolve the host, TCP, then TLS for `wss://`, then the upgrade, within the
//! connect timeout; a failed TLS handshake as one line with a hint.

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
use crate::{Error, Result};

/// A connected chat socket, over TLS for `wss://`.
pub type Connection = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens the TCP connection and upgrades it to a WebSocket, within the connect timeout.
pub async fn connect(config: &ClientConfig) -> Result<Connection> {
    let url = display_url(&config.url);
    match timeout(config.connect_timeout, connect_inner(config, &url)).await {
        Ok(result) => result,
        Err(_) => Err(Error::ConnectTimeout { url }),
    }
}

async fn connect_inner(config: &ClientConfig, url: &str) -> Result<Connection> {
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
    upgrade(stream, config, url).await
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
    let hint = match tls {
        rustls::Error::InvalidCertificate(_) => {
            " (pass --ca FILE to trust a private CA or a self-signed certificate)"
        }
        rustls::Error::InvalidMessage(_) => " (is the server serving TLS? try ws://)",
        _ => "",
    };
    Error::Tls {
        url: url.to_owned(),
        reason: format!("{tls}{hint}"),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::client::parse_url;

    #[tokio::test]
    async fn a_name_that_does_not_resolve_is_a_resolve_error() {
        // `.invalid` never resolves (RFC 6761).
        let mut config = ClientConfig::new(parse_url("ws://nosuch.invalid:2000").expect("url"));
        config.connect_timeout = Duration::from_secs(10);
        let err = connect(&config).await.expect_err("no such host");
        assert!(matches!(err, Error::Resolve { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "cannot connect to ws://nosuch.invalid:2000: cannot resolve the host name nosuch.invalid (check the URL's host)"
        );
    }
}
