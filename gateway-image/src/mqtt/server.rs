//! MQTT listeners (plain and TLS): accept connections until draining, one task each.
//!
//! Connections not yet authenticated (TLS handshake, CONNECT, password check) are capped
//! across both listeners: past the cap a connection is closed as soon as it is accepted, so
//! sockets that never log in cannot pile up; each holds its place at most until its CONNECT
//! deadline.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use super::session;
use crate::ingest::Gateway;
use crate::tls::device_from_certificate;

/// Most MQTT connections (plain and TLS together) that may be waiting to be authenticated.
pub const MAX_UNAUTHENTICATED_CONNECTIONS: usize = 128;

/// The places for unauthenticated connections, shared by the MQTT listeners.
pub fn unauthenticated_places() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(MAX_UNAUTHENTICATED_CONNECTIONS))
}

/// Accepts the next connection with a place among the unauthenticated ones (closing those
/// past the cap at once); `None` once the gateway drains.
async fn accept(
    gateway: &Gateway,
    listener: &TcpListener,
    places: &Arc<Semaphore>,
) -> Option<(TcpStream, std::net::SocketAddr, OwnedSemaphorePermit)> {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = gateway.draining.cancelled() => return None,
        };
        match accepted {
            Ok((stream, peer)) => {
                let Ok(place) = Arc::clone(places).try_acquire_owned() else {
                    tracing::debug!(peer = %peer, "over the unauthenticated connection cap, closed");
                    continue;
                };
                let _ = stream.set_nodelay(true);
                return Some((stream, peer, place));
            }
            Err(error) => {
                // Usually EMFILE: back off briefly instead of spinning.
                tracing::warn!(error = %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Accepts plain MQTT connections until the gateway drains.
pub async fn serve_plain(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    places: Arc<Semaphore>,
    tracker: TaskTracker,
) {
    while let Some((stream, peer, place)) = accept(&gateway, &listener, &places).await {
        tracker.spawn(session::serve(
            Arc::clone(&gateway),
            stream,
            peer,
            None,
            place,
        ));
    }
}

/// Accepts MQTT-over-TLS connections until the gateway drains. A verified client
/// certificate authenticates the device; an untrusted one fails the handshake.
pub async fn serve_tls(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    acceptor: TlsAcceptor,
    places: Arc<Semaphore>,
    tracker: TaskTracker,
) {
    while let Some((stream, peer, place)) = accept(&gateway, &listener, &places).await {
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
            session::serve(gateway, stream, peer, device, place).await;
        });
    }
}
