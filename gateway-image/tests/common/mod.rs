//! Shared helpers for the gateway's integration tests: the real RabbitMQ started by
//! `tests/services/rabbitmq.sh`, an in-process gateway on loopback ports, and minimal raw
//! MQTT and HTTP clients (raw, so tests control every byte).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use lapin::options::{BasicGetOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tributary_contract::gateway_config::{
    AuthConfig, BrokerConfig, DeliveryMode, GatewayConfig, Limits, Listeners, Route,
};
use tributary_gateway::app::{start, Running};

/// Upper bound for anything a test waits on.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// The AMQP URL of the test broker; fails the test with instructions when unset.
pub fn amqp_url() -> String {
    match std::env::var("TRIBUTARY_TEST_AMQP_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "TRIBUTARY_TEST_AMQP_URL is not set: start the test broker with \
             `tests/services/rabbitmq.sh start` and `eval \"$(tests/services/rabbitmq.sh env)\"`"
        ),
    }
}

/// The repository root (for `tests/services/*.sh`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A private temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let path = std::env::temp_dir().join(format!("tributary-gw-{}", ulid::Ulid::generate()));
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }

    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).expect("write temp file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Connects to the test broker, failing with a clear message when it is unreachable.
pub async fn amqp(url: &str) -> Connection {
    match tokio::time::timeout(DEADLINE, Connection::connect(url, ConnectionProperties::default()))
        .await
    {
        Ok(Ok(connection)) => connection,
        Ok(Err(error)) => panic!(
            "cannot reach the test broker ({error}); is it running? `tests/services/rabbitmq.sh status`"
        ),
        Err(_) => panic!("timed out connecting to the test broker"),
    }
}

/// Declares a fresh durable queue with a unique name.
pub async fn fresh_queue(connection: &Connection, prefix: &str) -> String {
    let name = format!("{prefix}-{}", ulid::Ulid::generate()).to_lowercase();
    let channel = connection.create_channel().await.expect("channel");
    channel
        .queue_declare(
            name.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare queue");
    name
}

/// Deletes a queue (cleanup).
pub async fn delete_queue(connection: &Connection, name: &str) {
    if let Ok(channel) = connection.create_channel().await {
        let _ = channel
            .queue_delete(name.into(), QueueDeleteOptions::default())
            .await;
    }
}

/// Takes every message currently in `queue` (acknowledging them), as parsed JSON.
pub async fn drain_queue(connection: &Connection, queue: &str) -> Vec<serde_json::Value> {
    let channel = connection.create_channel().await.expect("channel");
    let mut out = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
    {
        let mut value: serde_json::Value =
            serde_json::from_slice(&message.delivery.data).expect("envelope is JSON");
        let amqp_id = message
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.to_string());
        value["_amqpMessageId"] = serde_json::json!(amqp_id);
        value["_persistent"] =
            serde_json::json!(message.delivery.properties.delivery_mode() == &Some(2));
        out.push(value);
    }
    out
}

/// Waits until `queue` holds `count` messages or the deadline passes; returns them.
pub async fn wait_for_messages(
    connection: &Connection,
    queue: &str,
    count: usize,
) -> Vec<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut all = Vec::new();
    loop {
        all.extend(drain_queue(connection, queue).await);
        if all.len() >= count || tokio::time::Instant::now() > deadline {
            return all;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A gateway config for tests: every listener on an ephemeral loopback port.
pub fn test_config(uri_file: PathBuf, routes: Vec<Route>, auth: AuthConfig) -> GatewayConfig {
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    GatewayConfig {
        tenant: "factory".into(),
        gateway: "line-1".into(),
        health_listen: any,
        listeners: Listeners {
            mqtt: Some(any),
            http: Some(any),
            ..Listeners::default()
        },
        auth,
        permissions: vec!["devices/{device}/#".into()],
        routes,
        broker: BrokerConfig {
            uri_file,
            ca_file: None,
            reconnect_max_delay_ms: 500,
            confirm_timeout_ms: 10_000,
        },
        limits: Limits::default(),
        delivery: DeliveryMode::Confirmed,
        commands: Default::default(),
    }
}

/// A password file with `device:password` pairs (cheap hashes, for debug-build speed).
pub fn password_file(dir: &TempDir, devices: &[(&str, &str)]) -> PathBuf {
    let mut text = String::new();
    for (device, password) in devices {
        let hash = tributary_gateway::auth::hash_password_cheap(password.as_bytes()).expect("hash");
        text.push_str(&format!("{device}:{hash}\n"));
    }
    dir.write("passwords", &text)
}

/// Starts a gateway and waits until it is connected to the broker.
pub async fn start_connected(config: GatewayConfig) -> Running {
    let running = start(config).await.expect("gateway starts");
    assert!(
        running.gateway.broker.wait_connected(DEADLINE).await,
        "gateway did not connect to the test broker"
    );
    running
}

pub fn route(filter: &str, queue: &str) -> Route {
    Route {
        topic_filter: filter.into(),
        queue: queue.into(),
    }
}

// ---- raw MQTT client ----

fn string(text: &str) -> Vec<u8> {
    let mut out = (text.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out
}

fn varint(mut value: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut byte = (value % 128) as u8;
        value /= 128;
        if value > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if value == 0 {
            return out;
        }
    }
}

/// A packet from its first byte and body.
pub fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    out.extend(varint(body.len()));
    out.extend_from_slice(body);
    out
}

/// An MQTT 3.1.1 CONNECT with user name and password.
pub fn connect_packet(client_id: &str, username: &str, password: &str) -> Vec<u8> {
    let mut body = string("MQTT");
    body.extend_from_slice(&[4, 0xC2, 0, 60]);
    body.extend(string(client_id));
    body.extend(string(username));
    body.extend(string(password));
    packet(0x10, &body)
}

/// A QoS 1 PUBLISH.
pub fn publish_packet(topic: &str, packet_id: u16, payload: &[u8]) -> Vec<u8> {
    let mut body = string(topic);
    body.extend_from_slice(&packet_id.to_be_bytes());
    body.extend_from_slice(payload);
    packet(0x32, &body)
}

/// A raw MQTT connection.
pub struct RawMqtt {
    pub stream: TcpStream,
}

impl RawMqtt {
    pub async fn open(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.expect("connect to gateway");
        Self { stream }
    }

    /// Opens and completes CONNECT; returns the CONNACK return code.
    pub async fn connect(addr: SocketAddr, device: &str, password: &str) -> (Self, u8) {
        let mut client = Self::open(addr).await;
        client.send(&connect_packet(device, device, password)).await;
        let connack = client.read_packet().await.expect("CONNACK");
        assert_eq!(connack[0], 0x20, "expected CONNACK, got {connack:?}");
        (client, connack[3])
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        // The gateway may already have closed; the reader sees that.
        let _ = self.stream.write_all(bytes).await;
    }

    /// Reads one whole packet, or `None` when the connection closed (or the deadline passed).
    pub async fn read_packet_within(&mut self, deadline: Duration) -> Option<Vec<u8>> {
        tokio::time::timeout(deadline, async {
            let mut header = [0u8; 1];
            self.stream.read_exact(&mut header).await.ok()?;
            let mut remaining = 0usize;
            let mut out = vec![header[0]];
            for index in 0..4 {
                let mut byte = [0u8; 1];
                self.stream.read_exact(&mut byte).await.ok()?;
                out.push(byte[0]);
                remaining |= usize::from(byte[0] & 0x7F) << (7 * index);
                if byte[0] & 0x80 == 0 {
                    break;
                }
            }
            let mut body = vec![0u8; remaining];
            self.stream.read_exact(&mut body).await.ok()?;
            out.extend(body);
            Some(out)
        })
        .await
        .ok()
        .flatten()
    }

    pub async fn read_packet(&mut self) -> Option<Vec<u8>> {
        self.read_packet_within(DEADLINE).await
    }

    /// Publishes at QoS 1 and returns the PUBACK's packet id, or `None` if the connection
    /// closed instead.
    pub async fn publish_qos1(
        &mut self,
        topic: &str,
        packet_id: u16,
        payload: &[u8],
    ) -> Option<u16> {
        self.send(&publish_packet(topic, packet_id, payload)).await;
        let puback = self.read_packet().await?;
        assert_eq!(puback[0], 0x40, "expected PUBACK, got {puback:?}");
        Some(u16::from_be_bytes([puback[2], puback[3]]))
    }

    /// Whether the gateway closes the connection (EOF or reset) within the deadline,
    /// ignoring any packets it sends first (e.g. a CONNACK refusal).
    pub async fn closed_by_server(&mut self) -> bool {
        let result = tokio::time::timeout(DEADLINE, async {
            let mut buffer = [0u8; 1024];
            loop {
                match self.stream.read(&mut buffer).await {
                    Ok(0) | Err(_) => return true,
                    Ok(_) => continue,
                }
            }
        })
        .await;
        result.unwrap_or(false)
    }
}

// ---- raw HTTP client ----

/// POSTs `body` to the gateway's ingest endpoint; returns (status, response body).
pub async fn http_post(
    addr: SocketAddr,
    path: &str,
    authorization: Option<&str>,
    content_type: Option<&str>,
    body: &[u8],
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr)
        .await
        .expect("connect to http ingest");
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(value) = authorization {
        request.push_str(&format!("Authorization: {value}\r\n"));
    }
    if let Some(value) = content_type {
        request.push_str(&format!("Content-Type: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    // The server may answer (413) before reading the whole body.
    let _ = stream.write_all(body).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// `Basic` authorization header value.
pub fn basic(device: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{device}:{password}"))
    )
}

/// GETs a path from the health listener; returns the status.
pub async fn http_get_status(addr: SocketAddr, path: &str) -> u16 {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return 0;
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return 0;
    }
    let mut response = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut response)).await;
    String::from_utf8_lossy(&response)
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// Waits for `condition` to become true, polling, until the deadline.
pub async fn eventually<F, Fut>(deadline: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if condition().await {
            return true;
        }
        if tokio::time::Instant::now() > end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
