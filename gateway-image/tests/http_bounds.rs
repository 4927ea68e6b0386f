//! The HTTP listeners' bounds (issue 13): sockets that send nothing or half a header, a
//! declared huge body, a body that stalls and connections past the cap each cost only their
//! own connection, while a well-behaved device keeps publishing and `/healthz` answers.
//!
//! Timings are printed, never asserted: the machines these run on are shared and noisy.
//! A test fails only when something does not happen at all within a generous deadline.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tributary_contract::gateway_config::{AuthConfig, Limits};
use tributary_gateway::app::Running;

/// How long `/healthz` may take before a test says it stopped answering.
const HEALTH_DEADLINE: Duration = Duration::from_secs(10);

/// Half a request head: the request line and part of a header, never the blank line.
const HALF_HEAD: &[u8] =
    b"POST /v1/publish/devices/press-9/t HTTP/1.1\r\nHost: gateway\r\nContent-Le";

/// A gateway with devices `press-1` (`pw1`) and `press-9` (`pw9`) whose every topic goes to
/// a fresh queue, the given limits, and the AMQP connection and queue to check deliveries.
struct Setup {
    connection: lapin::Connection,
    queue: String,
    running: Running,
    _dir: TempDir,
}

impl Setup {
    async fn start(limits: Limits) -> Self {
        let connection = amqp(&amqp_url()).await;
        let queue = fresh_queue(&connection, "http-bounds").await;
        let dir = TempDir::new();
        let uri = dir.write("amqp-uri", &amqp_url());
        let auth = AuthConfig {
            password_file: Some(password_file(
                &dir,
                &[("press-1", "pw1"), ("press-9", "pw9")],
            )),
            ..AuthConfig::default()
        };
        let mut config = test_config(uri, vec![route("devices/#", &queue)], auth);
        config.limits = Limits {
            messages_per_second: 10_000,
            burst: 10_000,
            ..limits
        };
        let running = start_connected(config).await;
        Self {
            connection,
            queue,
            running,
            _dir: dir,
        }
    }

    fn http(&self) -> SocketAddr {
        self.running.bound.http.expect("http listener")
    }

    fn mqtt(&self) -> SocketAddr {
        self.running.bound.mqtt.expect("mqtt listener")
    }

    fn health(&self) -> SocketAddr {
        self.running.bound.health
    }

    /// A normal HTTP publish from `press-1`; returns the status.
    async fn publish_http(&self, payload: &str) -> u16 {
        let (status, body) = http_post(
            self.http(),
            "/v1/publish/devices/press-1/t",
            Some(&basic("press-1", "pw1")),
            Some("application/json"),
            payload.as_bytes(),
        )
        .await;
        if status != 202 {
            println!("HTTP publish got {status}: {body}");
        }
        status
    }

    /// Checks that exactly `count` messages reached the queue, all from `press-1`, then
    /// deletes the queue.
    async fn expect_delivered(self, count: usize) {
        let delivered = wait_for_messages(&self.connection, &self.queue, count).await;
        assert_eq!(delivered.len(), count, "every accepted message is queued");
        assert!(
            delivered.iter().all(|m| m["device"] == "press-1"),
            "nothing from the hostile clients"
        );
        delete_queue(&self.connection, &self.queue).await;
    }
}

/// `/healthz`'s status and how long it took, failing the test if it does not answer.
async fn healthz(addr: SocketAddr) -> Duration {
    let started = Instant::now();
    let status = tokio::time::timeout(HEALTH_DEADLINE, http_get_status(addr, "/healthz"))
        .await
        .expect("/healthz did not answer within 10 s");
    assert_eq!(status, 200, "/healthz");
    started.elapsed()
}

/// Opens `count` sockets to `addr`; every other one sends half a request head.
async fn hostile_sockets(addr: SocketAddr, count: usize) -> Vec<TcpStream> {
    let mut sockets = Vec::with_capacity(count);
    for index in 0..count {
        let mut socket = TcpStream::connect(addr).await.expect("hostile connect");
        if index % 2 == 1 {
            socket.write_all(HALF_HEAD).await.expect("half a head");
        }
        sockets.push(socket);
    }
    sockets
}

/// Reads until the server closes `socket`; returns everything it sent and when it closed,
/// or `None` if it did not close within the deadline.
async fn read_until_closed(socket: &mut TcpStream) -> Option<(Vec<u8>, Duration)> {
    let started = Instant::now();
    let mut received = Vec::new();
    tokio::time::timeout(DEADLINE, async {
        let mut buffer = [0u8; 4096];
        loop {
            match socket.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(read) => received.extend_from_slice(&buffer[..read]),
            }
        }
    })
    .await
    .ok()?;
    Some((received, started.elapsed()))
}

/// The status code of the first response in `bytes`.
fn status_of(bytes: &[u8]) -> Option<u16> {
    String::from_utf8_lossy(bytes)
        .split(' ')
        .nth(1)?
        .parse()
        .ok()
}

/// A request on a kept-alive connection; returns the status, or `None` if the connection
/// closed (or nothing came) first.
async fn keep_alive_request(socket: &mut TcpStream, request: &str) -> Option<u16> {
    socket.write_all(request.as_bytes()).await.ok()?;
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    tokio::time::timeout(DEADLINE, async {
        loop {
            let text = String::from_utf8_lossy(&received).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .filter_map(|line| line.split_once(':'))
                    .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, value)| value.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if body.len() >= length {
                    return status_of(&received);
                }
            }
            match socket.read(&mut buffer).await {
                Ok(0) | Err(_) => return None,
                Ok(read) => received.extend_from_slice(&buffer[..read]),
            }
        }
    })
    .await
    .ok()?
}

/// A kept-alive publish from `press-1` (no `Connection: close`).
fn keep_alive_publish(payload: &str) -> String {
    format!(
        "POST /v1/publish/devices/press-1/t HTTP/1.1\r\nHost: gateway\r\nAuthorization: {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{payload}",
        basic("press-1", "pw1"),
        payload.len()
    )
}

#[tokio::test]
async fn idle_and_half_head_sockets_are_closed_after_the_header_timeout() {
    let setup = Setup::start(Limits {
        http_header_timeout_seconds: 1,
        ..Limits::default()
    })
    .await;
    let mut ingest = hostile_sockets(setup.http(), 40).await;
    let mut health = hostile_sockets(setup.health(), 10).await;
    // A kept-alive connection that made one request, then goes idle.
    let mut idle_after_request = TcpStream::connect(setup.http()).await.expect("connect");
    assert_eq!(
        keep_alive_request(&mut idle_after_request, &keep_alive_publish("{\"n\":1}")).await,
        Some(202),
        "the kept-alive connection's first request"
    );

    let mut slowest = Duration::ZERO;
    for (index, socket) in ingest.iter_mut().chain(health.iter_mut()).enumerate() {
        let (received, after) = read_until_closed(socket)
            .await
            .unwrap_or_else(|| panic!("hostile socket {index} was never closed"));
        assert!(
            received.is_empty() || status_of(&received).is_some_and(|s| s >= 400),
            "hostile socket {index} got {:?}",
            String::from_utf8_lossy(&received)
        );
        slowest = slowest.max(after);
    }
    let (_, idle_closed) = read_until_closed(&mut idle_after_request)
        .await
        .expect("the idle kept-alive connection was never closed");
    println!(
        "header timeout 1 s: 40 ingest + 10 health hostile sockets closed, the last after \
         {slowest:?}; idle kept-alive connection closed after a further {idle_closed:?}"
    );

    assert_eq!(setup.publish_http("{\"n\":2}").await, 202, "a new request");
    healthz(setup.health()).await;
    setup.expect_delivered(2).await;
}

#[tokio::test]
async fn connections_past_the_cap_are_closed_while_connected_devices_publish() {
    const CAP: usize = 20;
    let setup = Setup::start(Limits {
        max_http_connections: CAP,
        // Hostile sockets under the cap stay held for the whole test.
        http_header_timeout_seconds: 60,
        ..Limits::default()
    })
    .await;
    // Two devices connected before the flood: one over a kept-alive HTTP connection (it
    // holds one of the CAP places), one over MQTT.
    let mut http_device = TcpStream::connect(setup.http()).await.expect("connect");
    assert_eq!(
        keep_alive_request(&mut http_device, &keep_alive_publish("{\"n\":1}")).await,
        Some(202)
    );
    let (mut mqtt_device, code) = RawMqtt::connect(setup.mqtt(), "press-1", "pw1").await;
    assert_eq!(code, 0);

    let extra = 30;
    let hostile = hostile_sockets(setup.http(), CAP - 1 + extra).await;
    let closed = Arc::new(AtomicUsize::new(0));
    let mut watchers = Vec::new();
    for mut socket in hostile {
        let closed = Arc::clone(&closed);
        watchers.push(tokio::spawn(async move {
            if read_until_closed(&mut socket).await.is_some() {
                closed.fetch_add(1, Ordering::SeqCst);
            }
            socket
        }));
    }
    let started = Instant::now();
    assert!(
        eventually(DEADLINE, || {
            let closed = Arc::clone(&closed);
            async move { closed.load(Ordering::SeqCst) >= extra }
        })
        .await,
        "connections past the cap were not closed (closed: {})",
        closed.load(Ordering::SeqCst)
    );
    println!(
        "cap {CAP}: the {extra} connections past it closed within {:?}",
        started.elapsed()
    );

    let started = Instant::now();
    assert_eq!(
        keep_alive_request(&mut http_device, &keep_alive_publish("{\"n\":2}")).await,
        Some(202),
        "the connected HTTP device publishes while the cap is full"
    );
    assert_eq!(
        mqtt_device
            .publish_qos1("devices/press-1/t", 1, b"{}")
            .await,
        Some(1),
        "the connected MQTT device publishes"
    );
    let health = healthz(setup.health()).await;
    println!(
        "cap full: HTTP device 202 and MQTT PUBACK in {:?}; /healthz {health:?}",
        started.elapsed()
    );
    assert_eq!(
        closed.load(Ordering::SeqCst),
        extra,
        "only connections past the cap were closed"
    );

    // Freeing the places lets new connections in again.
    for watcher in watchers {
        watcher.abort();
    }
    drop(http_device);
    assert!(
        eventually(DEADLINE, || async {
            try_publish(setup.http(), "{\"n\":3}").await == Some(202)
        })
        .await,
        "a new connection is served once the hostile ones are gone"
    );
    setup.expect_delivered(4).await;
}

/// A publish from `press-1` on a new connection; `None` when the connection is closed
/// without an answer (e.g. past the cap).
async fn try_publish(addr: SocketAddr, payload: &str) -> Option<u16> {
    let mut socket = TcpStream::connect(addr).await.ok()?;
    let request = keep_alive_publish(payload);
    keep_alive_request(&mut socket, &request).await
}
