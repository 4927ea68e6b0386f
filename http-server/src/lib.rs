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
//!
//! [`serve_with`] runs a [`Handshake`] (a TLS handshake, a PROXY protocol header) on each
//! accepted connection before HTTP is spoken: it holds a connection slot and gets the
//! head deadline, so a client that connects and sends nothing is closed either way.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::Extensions;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
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

/// A connection ready for HTTP, as a [`Handshake`] leaves it.
pub struct Ready<Io> {
    /// The byte stream HTTP is spoken on.
    pub io: Io,
    /// The client's address, put into every request as `ConnectInfo<SocketAddr>`.
    pub peer: SocketAddr,
    /// Added to every request of the connection (e.g. a verified client certificate).
    pub extensions: Extensions,
}

/// What a listener does with an accepted connection before speaking HTTP on it.
pub trait Handshake: Clone + Send + Sync + 'static {
    /// The stream HTTP is spoken on afterwards.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Prepares the connection; `None` closes it (the handshake logs why).
    fn handshake(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> impl Future<Output = Option<Ready<Self::Io>>> + Send;
}

/// No handshake: HTTP straight on the TCP stream, the socket's peer as the client.
#[derive(Debug, Clone, Copy)]
pub struct Plain;

impl Handshake for Plain {
    type Io = TcpStream;

    async fn handshake(&self, stream: TcpStream, peer: SocketAddr) -> Option<Ready<TcpStream>> {
        Some(Ready {
            io: stream,
            peer,
            extensions: Extensions::new(),
        })
    }
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
    let shared = SharedBounds {
        name: bounds.name,
        header_timeout: bounds.header_timeout,
        open: ConnectionCap::new(bounds.max_connections),
    };
    serve_with(listener, router, shared, Plain, stop, tracker).await;
}

/// A cap on open connections that several listeners may share.
#[derive(Debug, Clone)]
pub struct ConnectionCap(Arc<Semaphore>);

impl ConnectionCap {
    /// At most `max` connections (at least 1) open at once.
    pub fn new(max: usize) -> Self {
        Self(Arc::new(Semaphore::new(max.max(1))))
    }
}

/// [`Bounds`] whose connection cap may be shared with other listeners.
#[derive(Debug, Clone)]
pub struct SharedBounds {
    /// Which listener, for logs.
    pub name: &'static str,
    /// Time the handshake has, and then each request head (see [`Bounds::header_timeout`]).
    pub header_timeout: Duration,
    /// One permit per open connection, its handshake included.
    pub open: ConnectionCap,
}

/// Like [`serve`], with `handshake` run on each connection first, within the head deadline
/// and holding a connection slot, and a connection cap that may be shared.
pub async fn serve_with<H: Handshake>(
    listener: TcpListener,
    router: Router,
    bounds: SharedBounds,
    handshake: H,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    let SharedBounds {
        name,
        header_timeout,
        open,
    } = bounds;
    let header_timeout = header_timeout.max(Duration::from_millis(100));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
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
                tracing::warn!(listener = name, error = %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&open.0).try_acquire_owned() else {
            // Dropping the stream closes it now; nothing waits on this client.
            tracing::debug!(listener = name, peer = %peer, "over the connection cap, closed");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (builder, router, stop, handshake) = (
            builder.clone(),
            router.clone(),
            stop.clone(),
            handshake.clone(),
        );
        tracker.spawn(async move {
            let ready =
                tokio::time::timeout(header_timeout, handshake.handshake(stream, peer)).await;
            match ready {
                Ok(Some(ready)) => serve_connection(builder, ready, router, stop).await,
                Ok(None) => {}
                Err(_) => {
                    tracing::debug!(listener = name, peer = %peer, "handshake deadline passed, closed");
                }
            }
            drop(permit);
        });
    }
}

async fn serve_connection<Io: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    builder: http1::Builder,
    ready: Ready<Io>,
    router: Router,
    stop: CancellationToken,
) {
    let Ready {
        io,
        peer,
        extensions,
    } = ready;
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().extend(extensions.clone());
        request.extensions_mut().insert(ConnectInfo(peer));
        // A Router is always ready, so calling a clone is the whole tower protocol.
        router.clone().call(request)
    });
    let mut connection = pin!(builder
        .serve_connection(TokioIo::new(io), service)
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
