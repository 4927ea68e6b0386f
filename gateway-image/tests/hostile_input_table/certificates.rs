//! Client-certificate inputs on the MQTT-over-TLS listener: the certificate decides who the
//! device is, so anything not issued by the configured CA, or not valid now, fails the
//! handshake; the CONNECT carries no password.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use crate::bench::{ca, connect_from, leaf, Bench};
use crate::common::packet;
use crate::mqtt::string;
use crate::table::Outcome;

/// Which certificate the client presents.
pub enum Input {
    /// Issued by the device CA for this common name.
    FromCa(&'static str),
    /// Issued by the device CA, expired.
    Expired,
    /// Issued by another CA.
    OtherCa,
    /// Self-signed.
    SelfSigned,
    /// None (and no password either).
    Without,
}

impl Input {
    pub fn describe(&self) -> String {
        match self {
            Input::FromCa(name) => {
                format!("certificate from the device CA, CN `{name}`, no password")
            }
            Input::Expired => "expired certificate from the device CA".into(),
            Input::OtherCa => "certificate from another CA, CN of a real device".into(),
            Input::SelfSigned => "self-signed certificate, CN of a real device".into(),
            Input::Without => "no certificate and no password".into(),
        }
    }

    fn certificate(&self, bench: &Bench) -> Option<(String, String)> {
        match self {
            Input::FromCa(name) => Some(leaf(name, Some(&bench.device_ca), false)),
            Input::Expired => Some(leaf("press-3", Some(&bench.device_ca), true)),
            Input::OtherCa => Some(leaf("press-3", Some(&ca("somebody else")), false)),
            Input::SelfSigned => Some(leaf("press-3", None, false)),
            Input::Without => None,
        }
    }

    pub async fn run(&self, bench: &Bench, from: IpAddr) -> Outcome {
        let config = match client_config(&bench.ca_pem(), self.certificate(bench)) {
            Ok(config) => config,
            Err(error) => return Outcome::Other(format!("client config: {error}")),
        };
        let stream = match connect_from(from, bench.mqtt_tls()).await {
            Ok(stream) => stream,
            Err(error) => return Outcome::Other(format!("connect: {error}")),
        };
        let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
        let Ok(mut tls) = TlsConnector::from(config).connect(name, stream).await else {
            return Outcome::TlsRefused;
        };
        // TLS 1.3: the server judges the client certificate after the client's handshake
        // ended, so a refusal shows as an alert on the first read.
        let _ = tls.write_all(&bare_connect()).await;
        let started = Instant::now();
        let mut connack = [0u8; 4];
        match tokio::time::timeout(crate::common::DEADLINE, tls.read_exact(&mut connack)).await {
            Ok(Ok(_)) if connack[0] == 0x20 => Outcome::Connack(connack[3]),
            Ok(Ok(_)) => Outcome::Other(format!("not a CONNACK: {connack:?}")),
            Ok(Err(_)) => Outcome::TlsRefused,
            Err(_) => Outcome::Other(format!("no answer in {:?}", started.elapsed())),
        }
    }
}

/// A 3.1.1 CONNECT without user name or password: only the certificate speaks.
fn bare_connect() -> Vec<u8> {
    let mut body = string(b"MQTT");
    body.extend_from_slice(&[4, 0x02, 0, 60]);
    body.extend(string(b""));
    packet(0x10, &body)
}

/// A client trusting the device CA (which also signed the server), presenting `identity`.
fn client_config(
    ca_pem: &str,
    identity: Option<(String, String)>,
) -> Result<Arc<ClientConfig>, rustls::Error> {
    let mut roots = RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(ca_pem.as_bytes()).flatten() {
        roots.add(certificate)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .flatten()
                    .collect();
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
                .map_err(|error| rustls::Error::General(error.to_string()))?;
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The rows: (name, input, expected outcome).
pub fn inputs() -> Vec<(&'static str, Input, Outcome)> {
    vec![
        (
            "device certificate",
            Input::FromCa("press-3"),
            Outcome::Connack(0),
        ),
        // The CA is the registry of certificate devices: it vouches for the name.
        (
            "right CA, device not in the password file",
            Input::FromCa("cert-only-7"),
            Outcome::Connack(0),
        ),
        (
            "right CA, wildcard CN",
            Input::FromCa("press/#"),
            Outcome::Connack(4),
        ),
        ("expired certificate", Input::Expired, Outcome::TlsRefused),
        ("wrong CA", Input::OtherCa, Outcome::TlsRefused),
        ("self-signed", Input::SelfSigned, Outcome::TlsRefused),
        ("no certificate", Input::Without, Outcome::Connack(4)),
    ]
}
