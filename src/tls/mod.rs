//! TLS for `wss://`: the server's certificate and key, and what the client trusts.
//!
//! rustls with the ring provider; no OpenSSL, no aws-lc.
//!
//! # Layout
//! - this file: loading PEM files, the trust roots, the two sides' settings.
//! - `verifier`: how the client checks a server's certificate (chains, or `--ca` itself).
//! - `validity`: a certificate's validity period, read from its DER.

mod validity;
mod verifier;

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};

use crate::{Error, Result};
use verifier::ServerVerifier;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What failed underneath a TLS setup error.
type Source = Box<dyn std::error::Error + Send + Sync>;

fn load_error(what: &str, path: &Path, source: impl Into<Source>) -> Error {
    setup_error(format!("cannot load {what} {}", path.display()), source)
}

/// `context: source`, with the source kept.
fn setup_error(context: impl std::fmt::Display, source: impl Into<Source>) -> Error {
    let source = source.into();
    Error::TlsSetup {
        reason: format!("{context}: {source}"),
        source: Some(source),
    }
}

fn certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| load_error(what, path, e))?;
    if certs.is_empty() {
        return Err(load_error(what, path, "no PEM certificate in it"));
    }
    Ok(certs)
}

/// The server's TLS settings from a PEM certificate chain and a PEM private key.
///
/// # Errors
/// [`Error::TlsSetup`], naming the file, when a file cannot be read or holds no
/// usable certificate or key, or when the key does not fit the certificate.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>> {
    let chain = certificates(cert, "TLS certificate")?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| load_error("TLS key", key, e))?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key))
        .map_err(|e| setup_error("cannot use the TLS certificate and key", e))?;
    Ok(Arc::new(config))
}

/// The client's TLS settings. With `ca` (a PEM file), trust its certificates only:
/// as roots of a chain, and each as a server certificate itself (a self-signed one,
/// even one marked as a CA). Without, trust the bundled web PKI roots and the
/// operating system's store.
///
/// # Errors
/// [`Error::TlsSetup`], naming the file, when `ca` cannot be read or holds no
/// certificate.
pub fn client_config(ca: Option<&Path>) -> Result<Arc<ClientConfig>> {
    let (roots, pinned) = match ca {
        Some(path) => {
            let certs = certificates(path, "CA file")?;
            let mut roots = RootCertStore::empty();
            for cert in &certs {
                roots
                    .add(cert.clone())
                    .map_err(|e| load_error("CA file", path, e))?;
            }
            (roots, certs)
        }
        None => (default_roots(), Vec::new()),
    };
    let verifier = ServerVerifier::new(roots, pinned, provider())
        .map_err(|e| setup_error("cannot use the trusted certificates", e))?;
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::TlsSetup {
            reason: e.to_string(),
            source: Some(Box::new(e)),
        })?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The roots trusted without `--ca`: the web PKI roots bundled with the program, and
/// the certificates of the operating system's store (where a company's or a
/// developer's own CA is installed), as curl and browsers trust them.
///
/// `rustls-native-certs` rather than `rustls-platform-verifier`: on Linux it is one
/// small crate (it only finds and reads the store's files) and its roots go into
/// the same store as the bundled ones, so the one verifier above serves both; the
/// platform verifier would bring a second verification path per OS. A store that is
/// missing or unreadable is not fatal: the bundled roots remain.
fn default_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let system = rustls_native_certs::load_native_certs();
    for error in &system.errors {
        tracing::debug!(%error, "cannot read the system's certificate store");
    }
    let (added, ignored) = roots.add_parsable_certificates(system.certs);
    tracing::debug!(added, ignored, "certificates from the system's store");
    roots
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_cannot_be_read_keeps_the_reason_for_the_caller() {
        let missing = Path::new("/no/such/cert.pem");
        let Err(e) = server_config(missing, missing) else {
            panic!("loaded a missing file");
        };
        assert_eq!(
            e.to_string(),
            "cannot load TLS certificate /no/such/cert.pem: I/O error: No such file or directory (os error 2)"
        );
        let source = std::error::Error::source(&e).expect("a source");
        assert!(
            matches!(
                source.downcast_ref::<rustls_pki_types::pem::Error>(),
                Some(rustls_pki_types::pem::Error::Io(io)) if io.kind() == std::io::ErrorKind::NotFound
            ),
            "{source:?}"
        );
    }
}
