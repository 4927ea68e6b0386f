//! TLS for the MQTT and HTTPS listeners: server certificate, optional client-certificate
//! verification, and the device id taken from a verified client certificate.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tributary_contract::gateway_config::{ClientCertificateAuth, TlsListener};

/// Errors building the TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: String,
        /// What went wrong (never the file's contents).
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("tls configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client CA bundle is unusable.
    #[error("client certificate CAs: {0}")]
    Verifier(String),
}

fn pem_error(path: &Path, reason: impl ToString) -> TlsError {
    TlsError::Pem {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|error| pem_error(path, error))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| pem_error(path, error))?;
    if certificates.is_empty() {
        return Err(pem_error(path, "no certificates"));
    }
    Ok(certificates)
}

/// ALPN protocol id of MQTT over TLS.
pub const ALPN_MQTT: &[u8] = b"mqtt";
/// ALPN protocol id of HTTP/1.1 (the only HTTP version the ingest listener speaks).
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Builds the server TLS config offering the ALPN protocol `alpn`; with `client_auth`
/// and/or a device CA (`device_ca`, the device registry's), client certificates signed by
/// those CAs are verified when presented (devices may still use passwords or tokens over
/// TLS), and untrusted ones fail the handshake.
pub fn server_config(
    listener: &TlsListener,
    client_auth: Option<&ClientCertificateAuth>,
    device_ca: Option<&Path>,
    alpn: &[u8],
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certificates(&listener.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&listener.key_file)
        .map_err(|error| pem_error(&listener.key_file, error))?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?;
    let ca_files: Vec<&Path> = client_auth
        .map(|client_auth| client_auth.ca_file.as_path())
        .into_iter()
        .chain(device_ca)
        .collect();
    let builder = match ca_files.is_empty() {
        false => {
            let mut roots = RootCertStore::empty();
            for file in ca_files {
                for certificate in certificates(file)? {
                    roots.add(certificate)?;
                }
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|error| TlsError::Verifier(error.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        true => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key)?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}

/// A verified client certificate as authentication sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertificate {
    /// Its subject's common name: the device id.
    pub device: String,
    /// Its issuer's raw (DER) name: which CA signed it.
    pub issuer: Vec<u8>,
}

/// The device id and issuer of a verified client certificate.
pub fn peer_certificate(certificate: &CertificateDer<'_>) -> Option<PeerCertificate> {
    let device = device_from_certificate(certificate)?;
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate.as_ref()).ok()?;
    Some(PeerCertificate {
        device,
        issuer: parsed.issuer().as_raw().to_vec(),
    })
}

/// The device id of a verified client certificate: its subject's common name.
pub fn device_from_certificate(certificate: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate.as_ref()).ok()?;
    let common_name = parsed
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_owned();
    Some(common_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_id_is_the_certificate_common_name() {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec![]).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "press-7");
        let certificate = params.self_signed(&key).expect("certificate");
        assert_eq!(
            device_from_certificate(certificate.der()),
            Some("press-7".into())
        );
    }
}
