//! What happens on a device connection before its protocol: the PROXY protocol header
//! (when enabled) names the client, then the TLS handshake (on TLS listeners) names the
//! device of a verified client certificate. The callers bound the time both take and
//! count the connection against their cap while they run.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::Extensions;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tributary_http_server::{Handshake, Ready};

use crate::metrics::{Metrics, ProtocolLabel};
use crate::proxy_protocol;
use crate::tls::{peer_certificate, PeerCertificate};

/// A verified client certificate, in an HTTPS request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateDevice(pub PeerCertificate);

/// The client's address: from the PROXY header when `proxy_protocol` is on (`None`, and
/// the connection should be closed, when the header is missing or invalid), else `peer`.
pub async fn client_address(
    stream: &mut TcpStream,
    peer: SocketAddr,
    proxy_protocol: bool,
) -> Option<SocketAddr> {
    if !proxy_protocol {
        return Some(peer);
    }
    match proxy_protocol::read_client_address(stream, peer).await {
        Ok(client) => Some(client),
        Err(error) => {
            tracing::info!(peer = %peer, error = %error, "no valid PROXY header, closed");
            None
        }
    }
}

/// The TLS handshake; on success the stream and the verified client certificate (device
/// id and issuer), if one was presented. A failure is logged and counted.
pub async fn accept_tls(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    client: SocketAddr,
    metrics: &Metrics,
    protocol: ProtocolLabel,
) -> Option<(TlsStream<TcpStream>, Option<PeerCertificate>)> {
    match acceptor.accept(stream).await {
        Ok(stream) => {
            let device = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(peer_certificate);
            Some((stream, device))
        }
        Err(error) => {
            metrics.auth_failure(protocol, "certificate");
            tracing::info!(peer = %client, error = %error, "tls handshake failed");
            None
        }
    }
}

/// Plain HTTP ingest: the PROXY header when enabled, nothing else.
#[derive(Debug, Clone, Copy)]
pub struct PlainHttp {
    /// Whether a PROXY protocol v2 header comes first.
    pub proxy_protocol: bool,
}

impl Handshake for PlainHttp {
    type Io = TcpStream;

    async fn handshake(&self, mut stream: TcpStream, peer: SocketAddr) -> Option<Ready<TcpStream>> {
        let peer = client_address(&mut stream, peer, self.proxy_protocol).await?;
        Some(Ready {
            io: stream,
            peer,
            extensions: Extensions::new(),
        })
    }
}

/// HTTPS ingest: the PROXY header when enabled, then the TLS handshake; a verified client
/// certificate's device goes into every request as [`CertificateDevice`].
#[derive(Clone)]
pub struct TlsHttp {
    /// Whether a PROXY protocol v2 header comes first.
    pub proxy_protocol: bool,
    /// The listener's TLS configuration.
    pub acceptor: TlsAcceptor,
    /// Where failed handshakes are counted.
    pub metrics: Arc<Metrics>,
}

impl Handshake for TlsHttp {
    type Io = TlsStream<TcpStream>;

    async fn handshake(
        &self,
        mut stream: TcpStream,
        peer: SocketAddr,
    ) -> Option<Ready<TlsStream<TcpStream>>> {
        let peer = client_address(&mut stream, peer, self.proxy_protocol).await?;
        let (stream, device) = accept_tls(
            &self.acceptor,
            stream,
            peer,
            &self.metrics,
            ProtocolLabel::Http,
        )
        .await?;
        let mut extensions = Extensions::new();
        if let Some(device) = device {
            extensions.insert(CertificateDevice(device));
        }
        Some(Ready {
            io: stream,
            peer,
            extensions,
        })
    }
}
