//! Benchmark (not a test), run by `gateway-image/bench.sh`.
//!
//! Throughput: the same MQTT load generator (many QoS 1 publishers, a window of messages in
//! flight each) against (a) the gateway → RabbitMQ queue with publisher confirms, (b)
//! RabbitMQ's own MQTT plugin → a queue bound to `amq.topic` on the same broker, (c)
//! Mosquitto (no durability, a reference). Prints messages/s, publish→PUBACK latency
//! p50/p99 and the ratios.
//!
//! Idle: opens N idle MQTT connections to the gateway and to Mosquitto and prints the
//! server's resident memory per connection.
//!
//! Settings (environment): BENCH_MODE=all|throughput|idle, BENCH_CLIENTS (20),
//! BENCH_MESSAGES per client (2000), BENCH_WINDOW in flight per client (10),
//! BENCH_PAYLOAD_BYTES (100), BENCH_IDLE_CONNECTIONS (10000), plus the
//! TRIBUTARY_TEST_AMQP_URL / TRIBUTARY_TEST_RABBITMQ_MQTT printed by
//! `tests/services/rabbitmq.sh env`.
#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lapin::options::{QueueBindOptions, QueueDeclareOptions, QueuePurgeOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const GATEWAY_MQTT: &str = "127.0.0.1:18830";
const GATEWAY_HEALTH: &str = "127.0.0.1:18090";
const MOSQUITTO: &str = "127.0.0.1:18831";
const USER: &str = "bench";
const PASSWORD: &str = "bench-pass";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn string(text: &str) -> Vec<u8> {
    let mut out = (text.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
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
fn connect_packet(client_id: &str, user: &str, password: &str) -> Vec<u8> {
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

async fn read_packet<R: AsyncReadExt + Unpin>(reader: &mut R) -> std::io::Result<Vec<u8>> {
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

async fn mqtt_connect(addr: &str, client_id: &str, user: &str, password: &str) -> TcpStream {
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

/// One publisher: `messages` QoS 1 publishes with `window` in flight; returns latencies.
async fn publisher(
    addr: String,
    client_id: String,
    user: String,
    topic: String,
    messages: usize,
    window: usize,
    payload: Vec<u8>,
) -> Vec<Duration> {
    let stream = mqtt_connect(&addr, &client_id, &user, password_for(&user)).await;
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    let mut sent_at: Vec<Option<Instant>> = vec![None; 65_536];
    let mut latencies = Vec::with_capacity(messages);
    let mut sent = 0usize;
    let mut next_id: u16 = 0;
    let publish = |id: u16| {
        let mut body = string(&topic);
        body.extend_from_slice(&id.to_be_bytes());
        body.extend_from_slice(&payload);
        packet(0x32, &body)
    };
    while sent < messages.min(window) {
        next_id = next_id % 65_535 + 1;
        sent_at[usize::from(next_id)] = Some(Instant::now());
        writer.write_all(&publish(next_id)).await.unwrap();
        sent += 1;
    }
    while latencies.len() < messages {
        let ack = read_packet(&mut reader).await.expect("PUBACK");
        assert_eq!(ack[0], 0x40, "expected PUBACK, got {ack:?}");
        let id = u16::from_be_bytes([ack[1], ack[2]]);
        if let Some(start) = sent_at[usize::from(id)].take() {
            latencies.push(start.elapsed());
        }
        if sent < messages {
            next_id = next_id % 65_535 + 1;
            sent_at[usize::from(next_id)] = Some(Instant::now());
            writer.write_all(&publish(next_id)).await.unwrap();
            sent += 1;
        }
    }
    let _ = writer.write_all(&[0xE0, 0]).await;
    latencies
}

fn password_for(user: &str) -> &'static str {
    if user == "tributary" {
        "tributary-test-pass"
    } else {
        PASSWORD
    }
}

struct Measured {
    name: &'static str,
    rate: f64,
    p50: Duration,
    p99: Duration,
}

async fn load(name: &'static str, addr: &str, user: &str, topic_prefix: &str) -> Measured {
    let clients = env_usize("BENCH_CLIENTS", 20);
    let messages = env_usize("BENCH_MESSAGES", 2000);
    let window = env_usize("BENCH_WINDOW", 10);
    let payload_bytes = env_usize("BENCH_PAYLOAD_BYTES", 100);
    let payload = format!(
        "{{\"v\":\"{}\"}}",
        "x".repeat(payload_bytes.saturating_sub(8))
    )
    .into_bytes();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..clients {
        tasks.push(tokio::spawn(publisher(
            addr.to_owned(),
            format!("bench-{client}"),
            user.to_owned(),
            format!("{topic_prefix}/bench-{client}/t"),
            messages,
            window,
            payload.clone(),
        )));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let pick = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Measured {
        name,
        rate: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: pick(0.5),
        p99: pick(0.99),
    }
}

fn temp_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tributary-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Starts our own gateway process (the release binary) on loopback.
fn start_gateway(amqp_url: &str, queue: &str) -> Child {
    let dir = temp_dir();
    let hash = tributary_gateway::auth::hash_password_cheap(PASSWORD.as_bytes()).unwrap();
    std::fs::write(dir.join("passwords"), format!("{USER}:{hash}\n")).unwrap();
    std::fs::write(dir.join("amqp-uri"), amqp_url).unwrap();
    let config = format!(
        "tenant: bench\ngateway: bench\nhealthListen: {GATEWAY_HEALTH}\nlisteners:\n  mqtt: {GATEWAY_MQTT}\n\
         auth:\n  passwordFile: {dir}/passwords\n  allowAnonymous: true\nbroker:\n  uriFile: {dir}/amqp-uri\n\
         permissions: [\"gw/#\"]\nroutes:\n  - topicFilter: gw/#\n    queue: {queue}\n\
         limits:\n  messagesPerSecond: 1000000\n  burst: 1000000\n  maxConnections: 100000\n  maxInFlightPerConnection: 1000\n",
        dir = dir.display()
    );
    std::fs::write(dir.join("gateway.yaml"), config).unwrap();
    Command::new(env!("CARGO_BIN_EXE_tributary-gateway"))
        .arg("--config")
        .arg(dir.join("gateway.yaml"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start gateway")
}

fn start_mosquitto() -> Child {
    let dir = temp_dir();
    let (host, port) = MOSQUITTO.split_once(':').unwrap();
    std::fs::write(
        dir.join("mosquitto.conf"),
        format!("listener {port} {host}\nallow_anonymous true\npersistence false\nmax_inflight_messages 0\nmax_connections -1\nlog_dest none\n"),
    )
    .unwrap();
    Command::new("mosquitto")
        .arg("-c")
        .arg(dir.join("mosquitto.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mosquitto (Debian package `mosquitto`)")
}

async fn wait_port(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "{addr} did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_ready(health: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut stream) = TcpStream::connect(health).await {
            let _ = stream
                .write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await;
            let mut text = String::new();
            let _ = stream.read_to_string(&mut text).await;
            if text.starts_with("HTTP/1.1 200") {
                return;
            }
        }
        assert!(Instant::now() < deadline, "gateway not ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn idle_memory(name: &str, addr: &str, user: &str, pid: u32, count: usize) -> f64 {
    let before = rss_kib(pid);
    let mut connections = Vec::with_capacity(count);
    let mut batch = Vec::new();
    for index in 0..count {
        let (addr, user) = (addr.to_owned(), user.to_owned());
        batch.push(tokio::spawn(async move {
            mqtt_connect(&addr, &format!("idle-{index}"), &user, password_for(&user)).await
        }));
        if batch.len() == 200 || index + 1 == count {
            for task in batch.drain(..) {
                connections.push(task.await.unwrap());
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib(pid);
    let per_connection = (after.saturating_sub(before) as f64 * 1024.0) / count as f64;
    println!(
        "idle {name:<10} {count} connections: RSS {before} KiB -> {after} KiB = {:.0} bytes/connection",
        per_connection
    );
    drop(connections);
    per_connection
}

/// The two bench queues, empty; the plugin's is bound to `amq.topic` for `plugin.#`.
async fn declare_queues(channel: &lapin::Channel) {
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    for queue in ["bench-gateway", "bench-plugin"] {
        channel
            .queue_declare(queue.into(), durable, FieldTable::default())
            .await
            .unwrap();
        channel
            .queue_purge(queue.into(), QueuePurgeOptions::default())
            .await
            .unwrap();
    }
    channel
        .queue_bind(
            "bench-plugin".into(),
            "amq.topic".into(),
            "plugin.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
}

/// Loads the gateway, the RabbitMQ MQTT plugin and Mosquitto in turn and prints their rates
/// and latencies.
async fn throughput(channel: &lapin::Channel, plugin_mqtt: &str) {
    let results = vec![
        load("gateway", GATEWAY_MQTT, USER, "gw").await,
        load("rabbit-mqtt", plugin_mqtt, "tributary", "plugin").await,
        load("mosquitto", MOSQUITTO, USER, "mq").await,
    ];
    for queue in ["bench-gateway", "bench-plugin"] {
        let _ = channel
            .queue_purge(queue.into(), QueuePurgeOptions::default())
            .await;
    }
    println!(
        "\n{:<12} {:>12} {:>12} {:>12}",
        "target", "msgs/s", "p50", "p99"
    );
    for r in &results {
        println!(
            "{:<12} {:>12.0} {:>12.2?} {:>12.2?}",
            r.name, r.rate, r.p50, r.p99
        );
    }
    println!(
        "ratio gateway / rabbit-mqtt plugin: {:.2}   gateway / mosquitto: {:.2}",
        results[0].rate / results[1].rate,
        results[0].rate / results[2].rate
    );
}

#[tokio::main]
async fn main() {
    let mode = std::env::var("BENCH_MODE").unwrap_or_else(|_| "all".into());
    let amqp_url = std::env::var("TRIBUTARY_TEST_AMQP_URL")
        .expect("TRIBUTARY_TEST_AMQP_URL: run via gateway-image/bench.sh");
    let plugin_mqtt = std::env::var("TRIBUTARY_TEST_RABBITMQ_MQTT")
        .expect("TRIBUTARY_TEST_RABBITMQ_MQTT: run via gateway-image/bench.sh");
    let amqp = Connection::connect(&amqp_url, ConnectionProperties::default())
        .await
        .expect("amqp");
    let channel = amqp.create_channel().await.unwrap();
    declare_queues(&channel).await;

    let servers = Servers(vec![
        start_gateway(&amqp_url, "bench-gateway"),
        start_mosquitto(),
    ]);
    let (gateway_pid, mosquitto_pid) = (servers.0[0].id(), servers.0[1].id());
    wait_ready(GATEWAY_HEALTH).await;
    wait_port(MOSQUITTO).await;

    if mode == "all" || mode == "throughput" {
        throughput(&channel, &plugin_mqtt).await;
    }
    if mode == "all" || mode == "idle" {
        let count = env_usize("BENCH_IDLE_CONNECTIONS", 10_000);
        // BENCH_IDLE_ANONYMOUS=1 connects without credentials, to separate the cost of a
        // connection from the cost of argon2 password checks during the connection storm.
        let anonymous = std::env::var("BENCH_IDLE_ANONYMOUS").is_ok_and(|v| v == "1");
        let user = if anonymous { "" } else { USER };
        let gw = idle_memory("gateway", GATEWAY_MQTT, user, gateway_pid, count).await;
        let mq = idle_memory("mosquitto", MOSQUITTO, user, mosquitto_pid, count).await;
        println!(
            "ratio gateway / mosquitto memory per idle connection: {:.2}",
            gw / mq.max(1.0)
        );
    }
    drop(servers);
}

/// The server processes this benchmark started; SIGTERM to exactly those PIDs when done,
/// also when the benchmark panics.
struct Servers(Vec<Child>);

impl Drop for Servers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }
}
