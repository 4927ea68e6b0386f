//! Opening an AMQP connection the same way in every process: a URI (`amqp://` or
//! `amqps://`) and, for a broker whose certificate comes from a private CA, a PEM file of
//! that CA. Host names are always verified; nothing here can turn verification off.
//!
//! The CA file is read at each connect, so a reconnect after the mounted Secret changed
//! uses the new bundle. Errors name the cause but never the URI's password.

use lapin::tcp::OwnedTLSConfig;
use lapin::{Connection, ConnectionProperties};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use std::path::Path;

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    /// The CA file could not be read.
    #[error("reading the broker CA file {path}: {reason}")]
    CaFile {
        /// The file.
        path: String,
        /// Why (never the file's contents).
        reason: String,
    },
    /// The CA file holds no usable PEM certificate (lapin would silently skip it and fall
    /// back to the system roots, which hides the mistake).
    #[error("the broker CA file {path} holds no PEM certificate")]
    NoCertificate {
        /// The file.
        path: String,
    },
    /// The broker refused or could not be reached; the text has the URI and password
    /// replaced (a TLS failure names its cause, e.g. an unknown issuer).
    #[error("{0}")]
    Connect(String),
}

/// The PEM bundle in `path`, checked to hold at least one parsable certificate.
pub async fn read_ca(path: &Path) -> Result<String, AmqpError> {
    let shown = path.display().to_string();
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|error| AmqpError::CaFile {
            path: shown.clone(),
            reason: error.to_string(),
        })?;
    check_ca(&text, &shown)?;
    Ok(text)
}

/// Checks that `pem` (from `source`, named in the error) holds at least one parsable
/// certificate.
pub fn check_ca(pem: &str, source: &str) -> Result<(), AmqpError> {
    let certificates: Result<Vec<CertificateDer<'static>>, _> =
        CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
    match certificates {
        Ok(certificates) if !certificates.is_empty() => Ok(()),
        Ok(_) => Err(AmqpError::NoCertificate {
            path: source.to_owned(),
        }),
        Err(error) => Err(AmqpError::CaFile {
            path: source.to_owned(),
            reason: error.to_string(),
        }),
    }
}

/// Opens a connection to `uri`. With `ca_file`, the broker's certificate may also chain
/// to the CAs in that PEM file (lapin adds them to the system roots); the host name in the
/// URI is verified either way.
pub async fn connect(
    uri: &str,
    ca_file: Option<&Path>,
    properties: ConnectionProperties,
) -> Result<Connection, AmqpError> {
    let ca = match ca_file {
        Some(path) => Some(read_ca(path).await?),
        None => None,
    };
    connect_with_ca(uri, ca, properties).await
}

/// [`connect`] with the CA bundle already in memory (the operator reads it from a Secret):
/// `ca` must hold at least one certificate.
pub async fn connect_with_ca(
    uri: &str,
    ca: Option<String>,
    properties: ConnectionProperties,
) -> Result<Connection, AmqpError> {
    if let Some(pem) = &ca {
        check_ca(pem, "(CA bundle)")?;
    }
    let runtime = lapin::runtime::default_runtime()
        .map_err(|error| AmqpError::Connect(redact(&error.to_string(), uri)))?;
    let tls = OwnedTLSConfig {
        identity: None,
        cert_chain: ca,
    };
    Connection::connect_with_config(uri, properties, tls, runtime)
        .await
        .map_err(|error| AmqpError::Connect(redact(&error.to_string(), uri)))
}

/// `text` with the URI and its password replaced, for error messages that might echo
/// them.
pub fn redact(text: &str, uri: &str) -> String {
    let mut out = text.replace(uri, "<broker uri>");
    if let Some(password) = uri
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, password)| password)
        .filter(|password| !password.is_empty())
    {
        out = out.replace(password, "***");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_hides_the_uri_and_its_password() {
        let uri = "amqps://user:s3cret@broker:5671/%2f";
        let text = format!("cannot reach {uri}; auth s3cret refused");
        let redacted = redact(&text, uri);
        assert!(!redacted.contains("s3cret"), "{redacted}");
        assert!(redacted.contains("<broker uri>"), "{redacted}");
    }

    #[tokio::test]
    async fn a_missing_ca_file_is_named_and_nothing_is_dialled() {
        let error = connect(
            "amqps://u:p@127.0.0.1:1/%2f",
            Some(Path::new("/nonexistent/ca.crt")),
            ConnectionProperties::default(),
        )
        .await
        .expect_err("no CA file");
        assert!(matches!(error, AmqpError::CaFile { .. }), "{error}");
        assert!(error.to_string().contains("/nonexistent/ca.crt"), "{error}");
    }

    #[tokio::test]
    async fn a_ca_file_without_certificates_is_refused() {
        let dir = std::env::temp_dir().join(format!("amqp-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("empty.pem");
        std::fs::write(&path, "not a certificate\n").expect("write");
        let error = read_ca(&path).await.expect_err("no certificate");
        assert!(matches!(error, AmqpError::NoCertificate { .. }), "{error}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
