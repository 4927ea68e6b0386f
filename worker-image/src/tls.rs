//! TLS client settings for the data stores (PostgreSQL, Redis): which certificates are
//! trusted (a CA bundle file, or the system roots) and how much of the server's certificate
//! is checked.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use thiserror::Error;

/// How much of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Encrypt only: any certificate is accepted (libpq's `require`). Protects against
    /// passive eavesdropping, not against an active attacker.
    Nothing,
    /// The chain must lead to a trusted CA; the host name is not compared (`verify-ca`).
    Chain,
    /// The chain and the host name (`verify-full`).
    Full,
}

/// TLS settings that cannot be built.
#[derive(Debug, Error)]
pub enum TlsError {
    /// The CA file cannot be read or holds no certificate.
    #[error("CA file {path}: {message}")]
    CaFile {
        /// The file.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// No system root certificate could be loaded (and no CA file was given).
    #[error("no system root certificates could be loaded: {0}")]
    NoSystemRoots(String),
    /// rustls refused the settings.
    #[error("TLS settings: {0}")]
    Rustls(String),
}

/// The PEM certificates of `path` (a CA bundle).
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let error = |message: String| TlsError::CaFile {
        path: path.display().to_string(),
        message,
    };
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(e.to_string()))?;
    if certificates.is_empty() {
        return Err(error("holds no PEM certificate".into()));
    }
    Ok(certificates)
}

/// The trusted roots: the certificates of `ca_file`, else the system's.
pub fn root_store(ca_file: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for certificate in read_ca_file(path)? {
                store.add(certificate).map_err(|e| TlsError::CaFile {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?;
            }
        }
        None => {
            let loaded = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(loaded.certs);
            if added == 0 {
                let why = loaded.errors.first().map(|e| e.to_string());
                return Err(TlsError::NoSystemRoots(
                    why.unwrap_or_else(|| "none found".into()),
                ));
            }
        }
    }
    Ok(store)
}

/// A client config checking what `verify` says against the roots of [`root_store`].
pub fn client_config(verify: Verify, ca_file: Option<&Path>) -> Result<ClientConfig, TlsError> {
    crate::http_client::install_crypto_provider();
    Ok(ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(verifier(verify, ca_file)?)
        .with_no_client_auth())
}

/// The server certificate verifier for `verify`, trusting the roots of [`root_store`].
pub fn verifier(
    verify: Verify,
    ca_file: Option<&Path>,
) -> Result<Arc<dyn ServerCertVerifier>, TlsError> {
    crate::http_client::install_crypto_provider();
    if verify == Verify::Nothing {
        return Ok(Arc::new(AcceptAny(provider_algorithms())));
    }
    let roots = Arc::new(root_store(ca_file)?);
    let webpki = WebPkiServerVerifier::builder(roots)
        .build()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    Ok(match verify {
        Verify::Chain => Arc::new(ChainOnly(webpki)),
        _ => webpki,
    })
}

fn provider_algorithms() -> rustls::crypto::WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

/// Accepts any certificate, but still checks the handshake signatures with it.
#[derive(Debug)]
struct AcceptAny(rustls::crypto::WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// The WebPKI checks without the host name comparison (`verify-ca`).
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // WebPKI checks the chain before the name, so a name mismatch means the chain passed.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_ca_file_is_named_in_the_error() {
        let error = client_config(Verify::Full, Some(Path::new("/nonexistent/ca.pem")))
            .expect_err("missing file");
        assert!(error.to_string().contains("/nonexistent/ca.pem"), "{error}");
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = std::env::temp_dir().join(format!("tls-empty-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("ca.pem");
        std::fs::write(&path, "not a certificate\n").expect("write");
        let error = read_ca_file(&path).expect_err("no certificate");
        assert!(error.to_string().contains("no PEM certificate"), "{error}");
    }

    #[test]
    fn require_needs_no_roots() {
        assert!(client_config(Verify::Nothing, None).is_ok());
    }
}
