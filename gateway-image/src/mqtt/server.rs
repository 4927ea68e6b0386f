//! MQTT listeners (plain and TLS): accept connections until draining, one task each.
//!
//! With the PROXY protocol on, a connection's header is read first; it and the TLS
//! handshake must be done within `limits.connectTimeoutSeconds`, then CONNECT gets its own
//! deadline.
//!
//! Connections not yet authenticated (PROXY header, TLS handshake, CONNECT, password check)
//! are capped across both listeners: past the cap a connection is closed as soon as it is
//! accepted, so sockets that never log in cannot pile up; each holds its place at most
//! until its deadlines pass.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use super::places::{Place, Unauthenticated};
use super::session;
use crate::handshake::{accept_tls, client_address};
use crate::ingest::Gateway;
use crate::metrics::ProtocolLabel;

/// Accepts connections until the gateway drains, spawning `serve` on each that finds a
/// place among the unauthenticated ones (those past the cap are closed at once).
async fn accept_loop<F, Fut>(
    gateway: &Gateway,
    listener: TcpListener,
    places: Unauthenticated,
    tracker: TaskTracker,
    mut serve: F,
) where
    F: FnMut(TcpStream, SocketAddr, Place) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = gateway.draining.cancelled() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let Some(place) = places.take() else {
                    tracing::debug!(peer = %peer, "over the unauthenticated connection cap, closed");
                    continue;
                };
                let _ = stream.set_nodelay(true);
                tracker.spawn(serve(stream, peer, place));
            }
            Err(error) => {
                // Usually EMFILE: back off briefly instead of spinning.
                tracing::warn!(error = %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

fn handshake_timeout(gateway: &Gateway) -> Duration {
    Duration::from_secs(gateway.limits.connect_timeout_seconds.max(1))
}

/// Accepts plain MQTT connections until the gateway drains; with `proxy_protocol`, each
/// starts with a PROXY v2 header naming the client.
pub async fn serve_plain(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    proxy_protocol: bool,
    places: Unauthenticated,
    tracker: TaskTracker,
) {
    let shared = Arc::clone(&gateway);
    accept_loop(
        &gateway,
        listener,
        places,
        tracker,
        move |mut stream, peer, mut place| {
            let gateway = Arc::clone(&shared);
            async move {
                let timeout = handshake_timeout(&gateway);
                let client = tokio::time::timeout(
                    timeout,
                    client_address(&mut stream, peer, proxy_protocol),
                );
                if let Ok(Some(client)) = client.await {
                    if !place.claim_address(client.ip()) {
                        tracing::debug!(client = %client, "over the address's unauthenticated connection share, closed");
                        return;
                    }
                    session::serve(gateway, stream, client, None, place).await;
                }
            }
        },
    )
    .await;
}

/// Accepts MQTT-over-TLS connections until the gateway drains. A verified client
/// certificate authenticates the device; an untrusted one fails the handshake.
pub async fn serve_tls(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    acceptor: TlsAcceptor,
    proxy_protocol: bool,
    places: Unauthenticated,
    tracker: TaskTracker,
) {
    let shared = Arc::clone(&gateway);
    accept_loop(
        &gateway,
        listener,
        places,
        tracker,
        move |mut stream, peer, mut place| {
            let gateway = Arc::clone(&shared);
            let acceptor = acceptor.clone();
            async move {
                let timeout = handshake_timeout(&gateway);
                let handshake = async {
                    let client = client_address(&mut stream, peer, proxy_protocol).await?;
                    if !place.claim_address(client.ip()) {
                        tracing::debug!(client = %client, "over the address's unauthenticated connection share, closed");
                        return None;
                    }
                    let (stream, device) = accept_tls(
                        &acceptor,
                        stream,
                        client,
                        &gateway.metrics,
                        ProtocolLabel::Mqtt,
                    )
                    .await?;
                    Some((stream, client, device))
                };
                if let Ok(Some((stream, client, device))) =
                    tokio::time::timeout(timeout, handshake).await
                {
                    session::serve(gateway, stream, client, device, place).await;
                }
            }
        },
    )
    .await;
}
