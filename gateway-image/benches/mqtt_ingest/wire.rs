//! Just enough MQTT 3.1.1 on the wire for the benchmark's load generators.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The device name and password the benchmark's gateway and Mosquitto accept.
pub const USER: &str = "bench";
pub const PASSWORD: &str = "bench-pass";

/// The password of `user`: the RabbitMQ test user's, or the benchmark's.
pub fn password_for(user: &str) -> &'static str {
    if user == "tributary" {
        "tributary-test-pass"
    } else {
        PASSWORD
    }
}

/// An MQTT string: two length bytes, then the UTF-8 text.
pub fn string(text: &str) -> Vec<u8> {
    let mut out = (text.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out
}

/// A packet: the first byte, the remaining length as a varint, the body.
pub fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// A 3.1.1 CONNECT; an empty `user` connects anonymously.
pub fn connect_packet(client_id: &str, user: &str, password: &str) -> Vec<u8> {
    let mut body = string("MQTT");
    let flags = if user.is_empty() { 0x02 } else { 0xC2 };
    body.extend_from_slice(&[4, flags, 0, 0]);
    body.extend(string(client_id));
    if !user.is_empty() {
        body.extend(string(user));
        body.extend(string(password));
    }
    packet(0x10, &body)
}

/// One whole packet, first byte included.
pub async fn read_packet<R: AsyncReadExt + Unpin>(reader: &mut R) -> std::io::Result<Vec<u8>> {
    let first = reader.read_u8().await?;
    let mut len = 0usize;
    for index in 0..4 {
        let byte = reader.read_u8().await?;
        len |= usize::from(byte & 0x7F) << (7 * index);
        if byte & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).await?;
    body.insert(0, first);
    Ok(body)
}

/// Logins in flight at once.
pub const LOGINS_AT_ONCE: usize = 8;

/// Connects and logs in, at most [`LOGINS_AT_ONCE`] at a time (the gateway admits 16
/// unauthenticated connections per address, and every client here comes from loopback;
/// every server is measured the same way); panics when the server refuses (the benchmark
/// cannot go on).
pub async fn mqtt_connect(addr: &str, client_id: &str, user: &str, password: &str) -> TcpStream {
    static LOGINS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(LOGINS_AT_ONCE);
    let _login = LOGINS.acquire().await.expect("never closed");
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).unwrap();
    stream
        .write_all(&connect_packet(client_id, user, password))
        .await
        .unwrap();
    let connack = read_packet(&mut stream).await.expect("CONNACK");
    assert_eq!(
        connack.get(2),
        Some(&0),
        "CONNACK refused by {addr}: {connack:?}"
    );
    stream
}

/// One login: the CONNACK return code (0 accepted; `u8::MAX` when the server closed the
/// connection without one), then DISCONNECT and close.
pub async fn login(addr: &str, client_id: &str, user: &str, password: &str) -> std::io::Result<u8> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    stream
        .write_all(&connect_packet(client_id, user, password))
        .await?;
    let Ok(connack) = read_packet(&mut stream).await else {
        return Ok(u8::MAX);
    };
    let code = connack.get(2).copied().unwrap_or(u8::MAX);
    if code == 0 {
        let _ = stream.write_all(&[0xE0, 0]).await;
    }
    Ok(code)
}
