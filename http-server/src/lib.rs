//! The accept loop behind the data plane's HTTP listeners (the gateway's device ingest and
//! health, the application API), with the bounds that stop a hostile client from holding a
//! server's resources:
//!
//! - a cap on open connections: a connection past it is closed as soon as it is accepted,
//!   so the accept loop never waits and the other listeners never notice;
//! - a deadline for each complete request head, counted from the moment the server waits
//!   for it: from accept for the first request, from the end of the previous response on a
//!   kept-alive connection (so it is also the idle keep-alive timeout);
//! - a size limit on the request head (431 past it).
//!
//! Body deadlines and limits belong to the handlers that read bodies. HTTP upgrades
//! (WebSocket) are served.

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

/// Most connections the health listener (`/healthz`, `/readyz`, `/metrics`) keeps open at
/// once. Its clients are the kubelet's probes and a Prometheus scraper: a handful.
pub const HEALTH_MAX_CONNECTIONS: usize = 32;

/// Largest request head (request line and headers) in bytes; larger ones get 431. Leaves
/// room for a JWT in `Authorization` while keeping a connection's buffer small.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// The bounds of one HTTP listener.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Which listener, for logs (`http` or `health`).
    pub name: &'static str,
    /// Time a connection has to send a complete request head; also how long a kept-alive
    /// connection may stay idle between requests.
    pub header_timeout: Duration,
    /// Most connections open at once; further ones are closed when accepted.
    pub max_connections: usize,
}

/// Serves `router` on `listener` within `bounds` until `stop` is cancelled, then lets each
/// connection finish its request in progress. Connection tasks join `tracker`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    bounds: Bounds,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    let open = Arc::new(Semaphore::new(bounds.max_connections.max(1)));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(bounds.header_timeout.max(Duration::from_millis(100)))
        .max_header_size(MAX_HEAD_BYTES)
        .keep_alive(true);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.cancelled() => return,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                // Usually EMFILE: back off briefly instead of spinning.
                tracing::warn!(listener = bounds.name, error = %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
            // Dropping the stream closes it now; nothing waits on this client.
            tracing::debug!(listener = bounds.name, peer = %peer, "over the connection cap, closed");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let connection =
            serve_connection(builder.clone(), stream, peer, router.clone(), stop.clone());
        tracker.spawn(async move {
            connection.await;
            drop(permit);
        });
    }
}

async fn serve_connection(
    builder: http1::Builder,
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    stop: CancellationToken,
) {
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        // A Router is always ready, so calling a clone is the whole tower protocol.
        router.clone().call(request)
    });
    let mut connection = pin!(builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades());
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = stop.cancelled() => {
            // Finish the request in progress (its broker confirm), then close.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        // Header timeouts, resets and malformed requests: the client's problem, not ours.
        tracing::debug!(peer = %peer, error = %error, "http connection ended with an error");
    }
}
