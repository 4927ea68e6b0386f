//! HTTP inputs: raw requests (or parts of one) on the ingest listener, a flood of idle and
//! half-head sockets, and connections past the cap.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::bench::{self, connect_from, password, Bench};
use crate::common::{basic, http_get_status, RawMqtt, DEADLINE};
use crate::table::Outcome;

/// Half a request head: the request line and part of a header, never the blank line.
pub const HALF_HEAD: &[u8] =
    b"POST /v1/publish/devices/press-9/t HTTP/1.1\r\nHost: gateway\r\nContent-Le";

/// A hostile HTTP input.
pub enum Input {
    /// These bytes on a new connection; the response's status (or the close) is the outcome.
    Raw { bytes: Vec<u8>, what: String },
    /// One good request on a kept-alive connection, then silence.
    IdleAfterRequest,
    /// This many sockets, idle or with half a head, held while a device logs in and
    /// publishes over MQTT and `/healthz` is asked.
    Flood(usize),
    /// Connections past the connection cap, while a kept-alive device connection publishes.
    PastTheCap { extra: usize },
}

impl Input {
    pub fn describe(&self) -> String {
        match self {
            Input::Raw { what, .. } => what.clone(),
            Input::IdleAfterRequest => "kept-alive connection idle after one request".into(),
            Input::Flood(count) => format!(
                "{count} sockets, half idle and half with half a request head, held while a \
                 device logs in and publishes over MQTT"
            ),
            Input::PastTheCap { extra } => format!(
                "{} connections (cap {}) while a kept-alive device publishes",
                bench::MAX_HTTP_CONNECTIONS + extra,
                bench::MAX_HTTP_CONNECTIONS
            ),
        }
    }

    pub async fn run(&self, bench: &Bench, from: IpAddr) -> Outcome {
        match self {
            Input::Raw { bytes, .. } => raw(bench.http(), from, bytes).await,
            Input::IdleAfterRequest => idle_after_request(bench, from).await,
            Input::Flood(count) => flood(bench, from, *count).await,
            Input::PastTheCap { extra } => past_the_cap(bench, from, *extra).await,
        }
    }
}

/// A publish from `device` with its password, declaring `length` bytes, with `body`.
pub fn publish(device: &str, pass: &str, length: u64, body: &[u8], keep_alive: bool) -> Vec<u8> {
    let mut out =
        format!(
        "POST /v1/publish/devices/{device}/t HTTP/1.1\r\nHost: gateway\r\n{}Authorization: {}\r\n\
         Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n",
        if keep_alive { "" } else { "Connection: close\r\n" },
        basic(device, pass),
    )
        .into_bytes();
    out.extend_from_slice(body);
    out
}

/// The right credentials of `device`.
pub fn good_publish(device: &str, body: &[u8]) -> Vec<u8> {
    publish(device, &password(device), body.len() as u64, body, false)
}

fn status_of(bytes: &[u8]) -> Option<u16> {
    String::from_utf8_lossy(bytes)
        .split(' ')
        .nth(1)?
        .parse()
        .ok()
}

/// Reads until the server closes; the first status, or how long the close took.
async fn answer(stream: &mut TcpStream, started: Instant) -> Outcome {
    let mut received = Vec::new();
    let read = tokio::time::timeout(DEADLINE, async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(read) => received.extend_from_slice(&buffer[..read]),
            }
        }
    })
    .await;
    match (read, status_of(&received)) {
        (_, Some(status)) => Outcome::Http(status),
        (Ok(()), None) => Outcome::ClosedAfter(started.elapsed()),
        (Err(_), None) => Outcome::Other("neither answered nor closed".into()),
    }
}

async fn raw(addr: SocketAddr, from: IpAddr, bytes: &[u8]) -> Outcome {
    let mut stream = match connect_from(from, addr).await {
        Ok(stream) => stream,
        Err(error) => return Outcome::Other(format!("connect: {error}")),
    };
    let started = Instant::now();
    // The server may answer (413) before taking the whole request.
    let _ = stream.write_all(bytes).await;
    answer(&mut stream, started).await
}

/// One kept-alive request's status (reads exactly its response).
async fn kept_alive_status(stream: &mut TcpStream, request: &[u8]) -> Option<u16> {
    stream.write_all(request).await.ok()?;
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
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return None,
                Ok(read) => received.extend_from_slice(&buffer[..read]),
            }
        }
    })
    .await
    .ok()?
}

fn kept_alive_publish(device: &str, body: &[u8]) -> Vec<u8> {
    publish(device, &password(device), body.len() as u64, body, true)
}

async fn idle_after_request(bench: &Bench, from: IpAddr) -> Outcome {
    let mut stream = match connect_from(from, bench.http()).await {
        Ok(stream) => stream,
        Err(error) => return Outcome::Other(format!("connect: {error}")),
    };
    match kept_alive_status(&mut stream, &kept_alive_publish("press-2", b"{\"n\":1}")).await {
        Some(202) => {}
        other => return Outcome::Other(format!("the first request got {other:?}")),
    }
    answer(&mut stream, Instant::now()).await
}

/// Opens `count` sockets; every other one sends half a request head.
async fn hostile_sockets(addr: SocketAddr, from: IpAddr, count: usize) -> Vec<TcpStream> {
    let mut sockets = Vec::with_capacity(count);
    for index in 0..count {
        let Ok(mut socket) = connect_from(from, addr).await else {
            continue;
        };
        if index % 2 == 1 {
            let _ = socket.write_all(HALF_HEAD).await;
        }
        sockets.push(socket);
    }
    sockets
}

/// Whether the server has not closed `socket` (nothing to read, no EOF), without waiting.
fn still_open(socket: &TcpStream) -> bool {
    let mut buffer = [0u8; 64];
    matches!(socket.try_read(&mut buffer), Err(error) if error.kind() == std::io::ErrorKind::WouldBlock)
}

/// How long `/healthz` took to answer 200 (only that request is timed).
async fn healthz(addr: SocketAddr) -> Result<Duration, Outcome> {
    let started = Instant::now();
    match http_get_status(addr, "/healthz").await {
        200 => Ok(started.elapsed()),
        status => Err(Outcome::Other(format!("/healthz answered {status}"))),
    }
}

async fn flood(bench: &Bench, from: IpAddr, count: usize) -> Outcome {
    let hostile = hostile_sockets(bench.http(), from, count).await;
    let mut slowest = healthz(bench.health()).await;
    let (mut device, code) = RawMqtt::connect(bench.mqtt(), "press-2", &password("press-2")).await;
    if code != 0 {
        return Outcome::Other(format!("the device's CONNACK {code:#04x} during the flood"));
    }
    for packet_id in 1..=3u16 {
        let publish_ok = device
            .publish_qos1("devices/press-2/t", packet_id, b"{}")
            .await;
        if publish_ok != Some(packet_id) {
            return Outcome::Other("the device's publish failed during the flood".into());
        }
        let took = healthz(bench.health()).await;
        slowest = match (slowest, took) {
            (Ok(a), Ok(b)) => Ok(a.max(b)),
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
    }
    let held = hostile.iter().filter(|socket| still_open(socket)).count();
    if held < count {
        return Outcome::Other(format!(
            "only {held} of {count} sockets were still held at the end"
        ));
    }
    match slowest {
        Ok(took) => Outcome::HealthzSlowest(took),
        Err(outcome) => outcome,
    }
}

async fn past_the_cap(bench: &Bench, from: IpAddr, extra: usize) -> Outcome {
    let mut device = match connect_from(from, bench.http()).await {
        Ok(stream) => stream,
        Err(error) => return Outcome::Other(format!("connect: {error}")),
    };
    match kept_alive_status(&mut device, &kept_alive_publish("press-2", b"{\"n\":2}")).await {
        Some(202) => {}
        other => return Outcome::Other(format!("the device's first request got {other:?}")),
    }
    let held = hostile_sockets(bench.http(), from, bench::MAX_HTTP_CONNECTIONS - 1).await;
    let mut slowest = Duration::ZERO;
    for _ in 0..extra {
        let started = Instant::now();
        let Ok(mut socket) = connect_from(from, bench.http()).await else {
            continue;
        };
        match answer(&mut socket, started).await {
            Outcome::ClosedAfter(after) => slowest = slowest.max(after),
            other => return Outcome::Other(format!("a connection past the cap got {other}")),
        }
    }
    let status = kept_alive_status(&mut device, &kept_alive_publish("press-2", b"{\"n\":3}")).await;
    drop(held);
    match status {
        Some(202) => Outcome::ClosedAfter(slowest),
        other => Outcome::Other(format!(
            "the connected device got {other:?} while the cap was full"
        )),
    }
}
