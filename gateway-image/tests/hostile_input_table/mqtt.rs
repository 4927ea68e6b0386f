//! MQTT inputs: raw bytes on a connection (before or after a successful CONNECT) and the
//! scenarios that need more than one connection or a clock, each reduced to one outcome.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::bench::{self, connect_from, password, Bench};
use crate::common::{packet, DEADLINE};
use crate::table::Outcome;

/// A successful CONNECT sent before the row's bytes.
#[derive(Clone)]
pub struct Login {
    pub v5: bool,
    pub client_id: String,
    pub device: String,
}

/// A hostile MQTT input.
pub enum Input {
    /// Raw bytes, after `login` if given; the first answer (or the close) is the outcome.
    Bytes {
        login: Option<Login>,
        bytes: Vec<u8>,
        what: String,
    },
    /// A QoS 1 PUBLISH sent one byte a second on a connection with this keep-alive.
    Trickle { keep_alive: u16 },
    /// CONNECT asking for keep-alive 0, then silence.
    KeepAliveZero { v5: bool },
    /// A client that floods PINGREQs and never reads the answers.
    StopsReading,
    /// A second connection with the same device and client id.
    Takeover { v5: bool },
    /// More connections for one device than its cap.
    DeviceCap { v5: bool },
    /// This many failed logins from one address, then the right password from it.
    AddressFailures(usize),
    /// This many wrong passwords for one device at once.
    ParallelGuesses(usize),
    /// This many logins at once (unknown devices), more than the check slots and queue.
    LoginBurst(usize),
    /// More connections that never send CONNECT than the pre-authentication cap.
    PreAuthFlood { extra: usize },
}

impl Input {
    pub fn describe(&self) -> String {
        match self {
            Input::Bytes { what, .. } => what.clone(),
            Input::Trickle { keep_alive } => {
                format!("QoS 1 PUBLISH trickled one byte a second, keep-alive {keep_alive} s")
            }
            Input::KeepAliveZero { v5: true } => "MQTT 5 CONNECT with keep-alive 0".into(),
            Input::KeepAliveZero { v5: false } => {
                "3.1.1 CONNECT with keep-alive 0, then silence".into()
            }
            Input::StopsReading => "client floods PINGREQ and never reads".into(),
            Input::Takeover { v5 } => format!(
                "second {} connection with the same device and client id",
                version(*v5)
            ),
            Input::DeviceCap { v5 } => format!(
                "{} connection {} of one device (cap {})",
                version(*v5),
                bench::MAX_CONNECTIONS_PER_DEVICE + 1,
                bench::MAX_CONNECTIONS_PER_DEVICE
            ),
            Input::AddressFailures(count) => {
                format!("correct password from an address with {count} failed logins in the minute")
            }
            Input::ParallelGuesses(count) => {
                format!("{count} wrong passwords for one device at once")
            }
            Input::LoginBurst(count) => format!(
                "{count} logins at once (1 check slot, queue of 4, CONNECT deadline {} s)",
                bench::CONNECT_TIMEOUT.as_secs()
            ),
            Input::PreAuthFlood { extra } => format!(
                "{} connections that never send CONNECT, at most {} per address, with {extra} \
                 more from a full address and {extra} more once all places are taken",
                tributary_gateway::mqtt::places::MAX_UNAUTHENTICATED_CONNECTIONS,
                tributary_gateway::mqtt::places::MAX_UNAUTHENTICATED_PER_ADDRESS,
            ),
        }
    }

    pub async fn run(&self, bench: &Bench, from: IpAddr) -> Outcome {
        match self {
            Input::Bytes { login, bytes, .. } => {
                bytes_row(bench, from, login.as_ref(), bytes).await
            }
            Input::Trickle { keep_alive } => trickle(bench, from, *keep_alive).await,
            Input::KeepAliveZero { v5 } => keep_alive_zero(bench, from, *v5).await,
            Input::StopsReading => crate::scenarios::stops_reading(bench, from).await,
            Input::Takeover { v5 } => crate::scenarios::takeover(bench, from, *v5).await,
            Input::DeviceCap { v5 } => crate::scenarios::device_cap(bench, from, *v5).await,
            Input::AddressFailures(count) => {
                crate::scenarios::address_failures(bench, from, *count).await
            }
            Input::ParallelGuesses(count) => {
                crate::scenarios::parallel_guesses(bench, from, *count).await
            }
            Input::LoginBurst(count) => crate::scenarios::login_burst(bench, from, *count).await,
            Input::PreAuthFlood { extra } => {
                crate::scenarios::pre_auth_flood(bench, from, *extra).await
            }
        }
    }
}

fn version(v5: bool) -> &'static str {
    if v5 {
        "MQTT 5"
    } else {
        "3.1.1"
    }
}

pub fn string(text: &[u8]) -> Vec<u8> {
    let mut out = (text.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(text);
    out
}

fn with_length(properties: &[u8]) -> Vec<u8> {
    let mut out = vec![properties.len() as u8];
    out.extend_from_slice(properties);
    out
}

/// A will: (retain, will properties, payload); its topic is the device's own.
pub type Will<'a> = (bool, &'a [u8], &'a [u8]);

/// A CONNECT with user name and password (and properties and a will, MQTT 5 only for
/// properties) and this keep-alive.
pub fn connect(
    v5: bool,
    client_id: &str,
    user: &str,
    pass: &[u8],
    properties: &[u8],
    will: Option<Will>,
    keep_alive: u16,
) -> Vec<u8> {
    let mut flags = 0xC2;
    if let Some((retain, ..)) = will {
        flags |= 0x04 | if retain { 0x20 } else { 0 };
    }
    let mut body = string(b"MQTT");
    body.extend_from_slice(&[if v5 { 5 } else { 4 }, flags]);
    body.extend_from_slice(&keep_alive.to_be_bytes());
    if v5 {
        body.extend(with_length(properties));
    }
    body.extend(string(client_id.as_bytes()));
    if let Some((_, will_properties, payload)) = will {
        if v5 {
            body.extend(with_length(will_properties));
        }
        body.extend(string(format!("devices/{user}/will").as_bytes()));
        body.extend(string(payload));
    }
    body.extend(string(user.as_bytes()));
    body.extend(string(pass));
    packet(0x10, &body)
}

/// A CONNECT for `device` with its right password.
pub fn login_packet(login: &Login, properties: &[u8], will: Option<Will>) -> Vec<u8> {
    let pass = password(&login.device);
    connect(
        login.v5,
        &login.client_id,
        &login.device,
        pass.as_bytes(),
        properties,
        will,
        60,
    )
}

/// A QoS 1 PUBLISH (MQTT 5 with these properties when `v5`).
pub fn publish(
    v5: bool,
    topic: &[u8],
    packet_id: u16,
    properties: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    let mut body = string(topic);
    body.extend_from_slice(&packet_id.to_be_bytes());
    if v5 {
        body.extend(with_length(properties));
    }
    body.extend_from_slice(payload);
    packet(0x32, &body)
}

/// Reads one whole packet; `Err(elapsed)` when the connection closed first.
pub async fn read_packet(stream: &mut TcpStream, started: Instant) -> Result<Vec<u8>, Duration> {
    let read = async {
        let mut first = [0u8; 1];
        stream.read_exact(&mut first).await.ok()?;
        let mut out = vec![first[0]];
        let mut remaining = 0usize;
        for index in 0..4 {
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).await.ok()?;
            out.push(byte[0]);
            remaining |= usize::from(byte[0] & 0x7F) << (7 * index);
            if byte[0] & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0u8; remaining];
        stream.read_exact(&mut body).await.ok()?;
        out.extend(body);
        Some(out)
    };
    match tokio::time::timeout(DEADLINE, read).await {
        Ok(Some(packet)) => Ok(packet),
        _ => Err(started.elapsed()),
    }
}

/// Waits for the close; how long it took from `started` (None: not within the deadline).
pub async fn closed(stream: &mut TcpStream, started: Instant) -> Option<Duration> {
    let wait = async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => continue,
            }
        }
    };
    tokio::time::timeout(DEADLINE, wait).await.ok()
}

/// The outcome a packet from the gateway (or the close) stands for.
pub async fn classify(stream: &mut TcpStream, started: Instant) -> Outcome {
    let packet = match read_packet(stream, started).await {
        Ok(packet) => packet,
        Err(after) if after < DEADLINE => return Outcome::ClosedAfter(after),
        Err(_) => return Outcome::Other("neither answered nor closed".into()),
    };
    match packet.first().map(|b| b >> 4) {
        Some(2) => Outcome::Connack(packet.get(3).copied().unwrap_or(0xFF)),
        Some(4) => Outcome::Puback(packet.get(4).copied().unwrap_or(0)),
        Some(14) => {
            let reason = packet.get(2).copied().unwrap_or(0);
            match closed(stream, started).await {
                Some(_) => Outcome::Disconnect(reason),
                None => Outcome::Other(format!("DISCONNECT {reason:#04x} but not closed")),
            }
        }
        _ => Outcome::Other(format!("unexpected packet {packet:?}")),
    }
}

/// Opens a connection from `from` and logs in; `Err` describes a failed login.
pub async fn open_logged_in(
    bench: &Bench,
    from: IpAddr,
    login: &Login,
) -> Result<TcpStream, Outcome> {
    let mut stream = connect_from(from, bench.mqtt())
        .await
        .map_err(|error| Outcome::Other(format!("connect: {error}")))?;
    let _ = stream.write_all(&login_packet(login, &[], None)).await;
    match classify(&mut stream, Instant::now()).await {
        Outcome::Connack(0) => Ok(stream),
        other => Err(Outcome::Other(format!("login failed: {other}"))),
    }
}

async fn bytes_row(bench: &Bench, from: IpAddr, login: Option<&Login>, bytes: &[u8]) -> Outcome {
    let mut stream = match login {
        Some(login) => match open_logged_in(bench, from, login).await {
            Ok(stream) => stream,
            Err(outcome) => return outcome,
        },
        None => match connect_from(from, bench.mqtt()).await {
            Ok(stream) => stream,
            Err(error) => return Outcome::Other(format!("connect: {error}")),
        },
    };
    let started = Instant::now();
    // The gateway may close before taking every byte; the close is the outcome.
    let _ = stream.write_all(bytes).await;
    classify(&mut stream, started).await
}

async fn trickle(bench: &Bench, from: IpAddr, keep_alive: u16) -> Outcome {
    let mut stream = match connect_from(from, bench.mqtt()).await {
        Ok(stream) => stream,
        Err(error) => return Outcome::Other(format!("connect: {error}")),
    };
    let pass = password("press-6");
    let _ = stream
        .write_all(&connect(
            false,
            "trickler",
            "press-6",
            pass.as_bytes(),
            &[],
            None,
            keep_alive,
        ))
        .await;
    let started = Instant::now();
    match read_packet(&mut stream, started).await {
        Ok(connack) if connack.get(3) == Some(&0) => {}
        other => return Outcome::Other(format!("trickler's CONNACK: {other:?}")),
    }
    // Measured from the CONNACK: the last whole packet the gateway handled.
    let started = Instant::now();
    let publish = publish(false, b"devices/press-6/t", 1, &[], &[b' '; 200]);
    let (mut reader, mut writer) = stream.into_split();
    let dripping = tokio::spawn(async move {
        for byte in publish {
            if writer.write_all(&[byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let mut buffer = [0u8; 64];
    let closed = tokio::time::timeout(DEADLINE, async {
        loop {
            match reader.read(&mut buffer).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => continue,
            }
        }
    })
    .await;
    dripping.abort();
    match closed {
        Ok(after) => Outcome::ClosedAfter(after),
        Err(_) => Outcome::Other("still open after the deadline".into()),
    }
}

/// The Server Keep Alive property (0x13) of an MQTT 5 CONNACK, if present.
fn server_keep_alive(connack: &[u8]) -> Option<u16> {
    let mut rest = connack.get(5..)?;
    while let Some((&id, tail)) = rest.split_first() {
        let size = match id {
            0x13 | 0x21 => 2,
            0x27 => 4,
            0x24 | 0x25 | 0x28 | 0x29 | 0x2A => 1,
            0x12 => 2 + usize::from(u16::from_be_bytes([*tail.first()?, *tail.get(1)?])),
            _ => return None,
        };
        if id == 0x13 {
            return Some(u16::from_be_bytes([*tail.first()?, *tail.get(1)?]));
        }
        rest = tail.get(size..)?;
    }
    None
}

async fn keep_alive_zero(bench: &Bench, from: IpAddr, v5: bool) -> Outcome {
    let mut stream = match connect_from(from, bench.mqtt()).await {
        Ok(stream) => stream,
        Err(error) => return Outcome::Other(format!("connect: {error}")),
    };
    let pass = password("press-6");
    let client_id = format!("idle-{v5}");
    let _ = stream
        .write_all(&connect(
            v5,
            &client_id,
            "press-6",
            pass.as_bytes(),
            &[],
            None,
            0,
        ))
        .await;
    let connack = match read_packet(&mut stream, Instant::now()).await {
        Ok(connack) if connack.get(3) == Some(&0) => connack,
        other => return Outcome::Other(format!("CONNACK: {other:?}")),
    };
    let started = Instant::now();
    if v5 {
        return match server_keep_alive(&connack) {
            Some(seconds) => Outcome::ServerKeepAlive(seconds),
            None => Outcome::Other("CONNACK without Server Keep Alive".into()),
        };
    }
    match closed(&mut stream, started).await {
        Some(after) => Outcome::ClosedAfter(after),
        None => Outcome::Other("still open after the deadline".into()),
    }
}

/// Codes of a set of CONNACKs.
pub fn codes(codes: &[u8]) -> Outcome {
    Outcome::ConnackCodes(codes.iter().copied().collect::<BTreeSet<u8>>())
}
