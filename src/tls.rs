//! TLS for `wss://`: the server's certificate and key, and the client's trust
//! roots. rustls with the ring provider; no OpenSSL, no aws-lc.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};

use crate::{Error, Result};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load_error(what: &str, path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::TlsSetup(format!("cannot load {what} {}: {reason}", path.display()))
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
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>> {
    let chain = certificates(cert, "TLS certificate")?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| load_error("TLS key", key, e))?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key))
        .map_err(|e| Error::TlsSetup(format!("cannot use the TLS certificate and key: {e}")))?;
    Ok(Arc::new(config))
}

/// The client's TLS settings: trust the certificates in `ca` (a PEM file) if given,
/// the bundled web PKI roots otherwise.
pub fn client_config(ca: Option<&Path>) -> Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in certificates(path, "CA file")? {
                roots
                    .add(cert)
                    .map_err(|e| load_error("CA file", path, e))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::TlsSetup(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
