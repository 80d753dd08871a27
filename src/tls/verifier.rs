//! How the client checks a server's certificate: a chain to a root, or the `--ca` one itself.

use std::sync::Arc;

use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::{
    VerifierBuilderError, WebPkiServerVerifier, verify_server_name,
};
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::server::ParsedCertificate;
use tokio_rustls::rustls::{
    CertificateError, DigitallySignedStruct, Error, RootCertStore, SignatureScheme,
};

use super::validity::validity;

/// Trusts a server certificate that chains to one of the roots, and also one that is,
/// byte for byte, a certificate the user gave with `--ca`, as OpenSSL-based clients
/// do. A self-signed certificate made with `openssl req -x509` says it is a CA
/// (`basicConstraints CA:TRUE`), which the web PKI forbids for a server's own
/// certificate; the user naming that exact certificate is trust enough. Its names and
/// validity period are still checked, and so is every handshake signature, with the
/// provider's algorithms.
#[derive(Debug)]
pub(crate) struct ServerVerifier {
    /// The usual verification: chains, names, validity, signatures.
    webpki: Arc<WebPkiServerVerifier>,
    /// Certificates trusted as they are, from the `--ca` file.
    pinned: Vec<CertificateDer<'static>>,
}

impl ServerVerifier {
    /// A verifier trusting chains to `roots`, and the `pinned` certificates as they are.
    pub(crate) fn new(
        roots: RootCertStore,
        pinned: Vec<CertificateDer<'static>>,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, VerifierBuilderError> {
        let webpki =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider).build()?;
        Ok(Self { webpki, pinned })
    }
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        if self.pinned.iter().any(|pinned| pinned == end_entity) {
            return verify_pinned(end_entity, server_name, now);
        }
        self.webpki
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// Checks a certificate trusted as it is: in its validity period and for `server_name`.
fn verify_pinned(
    cert: &CertificateDer<'_>,
    server_name: &ServerName<'_>,
    now: UnixTime,
) -> Result<ServerCertVerified, Error> {
    let (not_before, not_after) = validity(cert).ok_or(CertificateError::BadEncoding)?;
    if now < not_before {
        return Err(CertificateError::NotValidYetContext {
            time: now,
            not_before,
        }
        .into());
    }
    if now > not_after {
        return Err(CertificateError::ExpiredContext {
            time: now,
            not_after,
        }
        .into());
    }
    verify_server_name(&ParsedCertificate::try_from(cert)?, server_name)?;
    Ok(ServerCertVerified::assertion())
}

#[cfg(test)]
mod tests {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

    use super::*;

    fn params(names: &[&str], ca: bool, years: (i32, i32)) -> CertificateParams {
        let names = names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
        let mut params = CertificateParams::new(names.clone()).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0].clone());
        if ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        }
        params.not_before = rcgen::date_time_ymd(years.0, 1, 1);
        params.not_after = rcgen::date_time_ymd(years.1, 1, 1);
        params
    }

    /// A self-signed certificate for `names`, marked as a CA when `ca`, valid from
    /// the first of January of one year to that of the other.
    fn self_signed(names: &[&str], ca: bool, years: (i32, i32)) -> CertificateDer<'static> {
        let key = KeyPair::generate().expect("key");
        let cert = params(names, ca, years)
            .self_signed(&key)
            .expect("certificate");
        cert.der().clone()
    }

    /// A verifier as `--ca` with `certs` in the file makes it.
    fn trusting(certs: &[&CertificateDer<'static>]) -> ServerVerifier {
        let mut roots = RootCertStore::empty();
        for cert in certs {
            roots.add((*cert).clone()).expect("a root");
        }
        let pinned = certs.iter().map(|c| (*c).clone()).collect();
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        ServerVerifier::new(roots, pinned, provider).expect("verifier")
    }

    fn verify(
        verifier: &ServerVerifier,
        cert: &CertificateDer<'_>,
        name: &str,
    ) -> Result<(), Error> {
        let name = ServerName::try_from(name.to_owned()).expect("server name");
        verifier
            .verify_server_cert(cert, &[], &name, &[], UnixTime::now())
            .map(|_| ())
    }

    fn certificate_error(result: Result<(), Error>) -> CertificateError {
        match result {
            Err(Error::InvalidCertificate(e)) => e,
            other => panic!("expected a certificate error, got {other:?}"),
        }
    }

    const NOW: (i32, i32) = (2000, 4000);

    #[test]
    fn a_self_signed_ca_certificate_given_itself_is_trusted_for_its_names() {
        let cert = self_signed(&["localhost", "127.0.0.1"], true, NOW);
        let verifier = trusting(&[&cert]);
        verify(&verifier, &cert, "localhost").expect("trusted for its DNS name");
        verify(&verifier, &cert, "127.0.0.1").expect("trusted for its IP address");
        let error = certificate_error(verify(&verifier, &cert, "example.com"));
        assert!(
            matches!(error, CertificateError::NotValidForNameContext { .. }),
            "{error:?}"
        );
        let error = certificate_error(verify(&verifier, &cert, "::1"));
        assert!(
            matches!(error, CertificateError::NotValidForNameContext { .. }),
            "{error:?}"
        );
    }

    #[test]
    fn a_certificate_given_itself_must_still_be_in_its_validity_period() {
        let expired = self_signed(&["localhost"], true, (2000, 2001));
        let error = certificate_error(verify(&trusting(&[&expired]), &expired, "localhost"));
        assert!(
            matches!(error, CertificateError::ExpiredContext { .. }),
            "{error:?}"
        );
        let early = self_signed(&["localhost"], false, (3000, 4000));
        let error = certificate_error(verify(&trusting(&[&early]), &early, "localhost"));
        assert!(
            matches!(error, CertificateError::NotValidYetContext { .. }),
            "{error:?}"
        );
    }

    #[test]
    fn another_self_signed_certificate_is_not_trusted() {
        let given = self_signed(&["localhost"], true, NOW);
        let verifier = trusting(&[&given]);
        // Another subject: no trusted certificate could have issued it.
        let other = self_signed(&["127.0.0.1", "localhost"], false, NOW);
        let error = certificate_error(verify(&verifier, &other, "localhost"));
        assert_eq!(error, CertificateError::UnknownIssuer);
        // The same subject (CN=localhost, as openssl makes them): the signature gives it away.
        let same = self_signed(&["localhost"], false, NOW);
        let error = certificate_error(verify(&verifier, &same, "localhost"));
        assert_eq!(error, CertificateError::BadSignature);
        let ca = self_signed(&["localhost"], true, NOW);
        verify(&verifier, &ca, "localhost").expect_err("not the certificate given");
    }

    #[test]
    fn a_chain_to_a_given_ca_is_verified_as_usual() {
        let ca_key = KeyPair::generate().expect("key");
        let ca_params = params(&["Test CA"], true, NOW);
        let ca = ca_params.self_signed(&ca_key).expect("CA").der().clone();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().expect("key");
        let leaf = params(&["localhost"], false, NOW)
            .signed_by(&leaf_key, &issuer)
            .expect("leaf")
            .der()
            .clone();
        let verifier = trusting(&[&ca]);
        verify(&verifier, &leaf, "localhost").expect("a chain to the CA");
        let error = certificate_error(verify(&verifier, &leaf, "example.com"));
        assert!(
            matches!(error, CertificateError::NotValidForNameContext { .. }),
            "{error:?}"
        );
    }
}
