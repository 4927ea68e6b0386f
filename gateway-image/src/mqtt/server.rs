//! MQTT listeners (plain and TLS): accept connections until draining, one task each.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use super::session;
use crate::ingest::Gateway;
use crate::tls::device_from_certificate;

/// Accepts plain MQTT connections until the gateway drains.
pub async fn serve_plain(gateway: Arc<Gateway>, listener: TcpListener, tracker: TaskTracker) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = gateway.draining.cancelled() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                tracker.spawn(session::serve(Arc::clone(&gateway), stream, peer, None));
            }
            Err(error) => {
                // Usually EMFILE: back off briefly instead of spinning.
                tracing::warn!(error = %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Accepts MQTT-over-TLS connections until the gateway drains. A verified client
/// certificate authenticates the device; an untrusted one fails the handshake.
pub async fn serve_tls(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    acceptor: TlsAcceptor,
    tracker: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = gateway.draining.cancelled() => return,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                tracing::warn!(error = %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let gateway = Arc::clone(&gateway);
        let acceptor = acceptor.clone();
        tracker.spawn(async move {
            let timeout = Duration::from_secs(gateway.limits.connect_timeout_seconds.max(1));
            let stream = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    gateway
                        .metrics
                        .auth_failure(crate::metrics::ProtocolLabel::Mqtt, "certificate");
                    tracing::info!(peer = %peer, error = %error, "tls handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let device = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(device_from_certificate);
            session::serve(gateway, stream, peer, device).await;
        });
    }
}
