//! Benchmark (not a test), run by `gateway-image/bench.sh`.
//!
//! Throughput: the same MQTT load generator (many QoS 1 publishers, a window of messages in
//! flight each) against (a) the gateway → RabbitMQ queue with publisher confirms, (b)
//! RabbitMQ's own MQTT plugin → a queue bound to `amq.topic` on the same broker, (c)
//! Mosquitto (no durability, a reference); then (d) the broker's confirm ceiling for the
//! same queue, an AMQP client publishing the same load with confirms, on one connection
//! with one channel like the gateway and on several connections (see `ceiling.rs`).
//! The ingest queues are of type BENCH_QUEUE_TYPE (`quorum`, the Queue resource's default;
//! or `classic`). Prints messages/s, publish→PUBACK latency p50/p99 and the ratios.
//!
//! Idle: opens N idle MQTT connections to the gateway and to Mosquitto and prints the
//! server's resident memory per connection.
//!
//! Logins: the server's memory before, at the peak of and after a burst of password logins,
//! gateway beside Mosquitto (see `logins.rs`).
//!
//! Storm: 10,000 devices reconnecting at once, generated secrets of the device table beside
//! argon2 passwords: time until all are connected and peak memory (see `storm.rs`).
//!
//! Every figure is also printed as one machine-readable line,
//! `BENCH figure=<id> system=<id> value=<number> unit=<unit> [key=value…]`, which
//! `hack/bench.sh` collects into `docs/benchmarks.md`.
//!
//! Commands: the round trip of request/response commands to 1,000 connected devices,
//! gateway beside RabbitMQ's MQTT plugin and Mosquitto (see `commands.rs`).
//!
//! Settings (environment): BENCH_MODE=all|throughput (or ingest)|idle|logins|storm|commands, BENCH_CLIENTS (20),
//! BENCH_MESSAGES per client (2000), BENCH_WINDOW in flight per client (10),
//! BENCH_PAYLOAD_BYTES (100), BENCH_QUEUE_TYPE (quorum), BENCH_CEILING_SHAPES (`1x1,4x1`:
//! connections x channels), BENCH_GATEWAY_BIN (another gateway build, e.g. an earlier
//! commit's, for a before/after in the same conditions), BENCH_IDLE_CONNECTIONS (10000), BENCH_LOGINS (1000), BENCH_PORT_BASE (28830: the loopback ports of the servers it
//! starts), plus the TRIBUTARY_TEST_AMQP_URL / TRIBUTARY_TEST_RABBITMQ_MQTT printed by
//! `tests/services/rabbitmq.sh env`.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use lapin::options::{QueueBindOptions, QueueDeclareOptions, QueuePurgeOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use tokio::io::{AsyncWriteExt, BufReader};

mod ceiling;
mod commands;
mod logins;
mod servers;
mod storm;
mod wire;

use servers::{rss_kib, Servers};
use wire::{mqtt_connect, packet, password_for, read_packet, string, USER};

/// An integer setting from the environment, `default` when unset or not a number.
pub(crate) fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Prints one figure as a machine-readable line for `hack/bench.sh`; `extra` holds more
/// `key=value` words (or nothing).
pub(crate) fn bench_line(figure: &str, system: &str, value: f64, unit: &str, extra: &str) {
    println!("BENCH figure={figure} system={system} value={value:.3} unit={unit} {extra}");
}

/// The user connection `index` logs in as: `USER` stands for one device of the password
/// file per connection (the gateway throttles parallel logins of one device), others (the
/// broker's user, "" for anonymous) are used as they are.
fn device_user(user: &str, index: usize) -> String {
    if user == USER {
        format!("dev-{index}")
    } else {
        user.to_owned()
    }
}

/// The gateway's password file for the throughput and idle runs: `USER` and one device
/// per connection, all with the same cheap argon2 hash (the logins run measures the real
/// cost).
fn device_passwords() -> String {
    let hash = tributary_gateway::auth::hash_password_cheap(wire::PASSWORD.as_bytes()).unwrap();
    let devices = env_usize("BENCH_IDLE_CONNECTIONS", 10_000).max(env_usize("BENCH_CLIENTS", 20));
    let mut file = format!("{USER}:{hash}\n");
    for index in 0..devices {
        file.push_str(&format!("dev-{index}:{hash}\n"));
    }
    file
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
            device_user(user, client),
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

async fn idle_memory(name: &str, addr: &str, user: &str, pid: u32, count: usize) -> f64 {
    let before = rss_kib(pid);
    let mut connections = Vec::with_capacity(count);
    let mut batch = Vec::new();
    for index in 0..count {
        let (addr, user) = (addr.to_owned(), device_user(user, index));
        batch.push(tokio::spawn(async move {
            mqtt_connect(&addr, &format!("idle-{index}"), &user, password_for(&user)).await
        }));
        // At most 50 logins at once: the gateway closes unauthenticated connections past
        // 128 and answers "server unavailable" past 64 password checks waiting.
        if batch.len() == 50 || index + 1 == count {
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
    let extra = format!("connections={count}");
    bench_line(
        "idle_bytes_per_connection",
        name,
        per_connection,
        "bytes",
        &extra,
    );
    let mib = |kib: u64| kib as f64 / 1024.0;
    bench_line("idle_rss_total", name, mib(after), "MiB", &extra);
    drop(connections);
    per_connection
}

/// The ingest queues' type: BENCH_QUEUE_TYPE, `quorum` (the Queue resource's default) or
/// `classic`.
fn queue_type() -> String {
    std::env::var("BENCH_QUEUE_TYPE").unwrap_or_else(|_| "quorum".into())
}

/// The ingest queue of `system` (`gateway`, `plugin`), named after its type so that a
/// broker holding one of another type from an earlier run is no obstacle.
fn ingest_queue(system: &str) -> String {
    format!("bench-{system}-{}", queue_type())
}

/// The two ingest queues of BENCH_QUEUE_TYPE, empty; the plugin's is bound to `amq.topic`
/// for `plugin.#`.
async fn declare_queues(channel: &lapin::Channel) {
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        lapin::types::AMQPValue::LongString(queue_type().into()),
    );
    for queue in [ingest_queue("gateway"), ingest_queue("plugin")] {
        channel
            .queue_declare(queue.as_str().into(), durable, arguments.clone())
            .await
            .unwrap();
        channel
            .queue_purge(queue.as_str().into(), QueuePurgeOptions::default())
            .await
            .unwrap();
    }
    channel
        .queue_bind(
            ingest_queue("plugin").as_str().into(),
            "amq.topic".into(),
            "plugin.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
}

/// Loads the gateway, the RabbitMQ MQTT plugin and Mosquitto in turn, then measures the
/// broker's confirm ceiling for the same queue (one connection with one channel like the
/// gateway, and several connections); prints their rates, latencies and the ratios.
async fn throughput(
    channel: &lapin::Channel,
    ports: &servers::Ports,
    amqp_url: &str,
    plugin_mqtt: &str,
) {
    let results = vec![
        load("gateway", &ports.gateway_mqtt, USER, "gw").await,
        load("rabbitmq-mqtt", plugin_mqtt, "tributary", "plugin").await,
        load("mosquitto", &ports.mosquitto, USER, "mq").await,
    ];
    for queue in [ingest_queue("gateway"), ingest_queue("plugin")] {
        let _ = channel
            .queue_purge(queue.as_str().into(), QueuePurgeOptions::default())
            .await;
    }
    let extra = format!(
        "clients={} messages={} window={} queue_type={}",
        env_usize("BENCH_CLIENTS", 20),
        env_usize("BENCH_MESSAGES", 2000),
        env_usize("BENCH_WINDOW", 10),
        queue_type()
    );
    let shapes = ceiling::shapes();
    let ceilings = ceiling::run(amqp_url, &ingest_queue("gateway"), &shapes, &extra).await;
    println!(
        "\n{:<22} {:>12} {:>12} {:>12}",
        "target", "msgs/s", "p50", "p99"
    );
    for r in &results {
        println!(
            "{:<22} {:>12.0} {:>12.2?} {:>12.2?}",
            r.name, r.rate, r.p50, r.p99
        );
        bench_line("ingest_rate", r.name, r.rate, "msg/s", &extra);
        let millis = r.p99.as_secs_f64() * 1000.0;
        bench_line("ingest_p99", r.name, millis, "ms", &extra);
    }
    for (system, rate) in &ceilings {
        println!("{system:<22} {rate:>12.0}");
    }
    println!(
        "ratio gateway / rabbit-mqtt plugin: {:.2}   gateway / mosquitto: {:.2}",
        results[0].rate / results[1].rate,
        results[0].rate / results[2].rate
    );
    for (system, rate) in &ceilings {
        println!("ratio gateway / {system}: {:.2}", results[0].rate / rate);
    }
}

/// Idle connections to the gateway, then to Mosquitto; prints memory per connection.
async fn idle(ports: &servers::Ports, gateway_pid: u32, mosquitto_pid: u32) {
    let count = env_usize("BENCH_IDLE_CONNECTIONS", 10_000);
    // BENCH_IDLE_ANONYMOUS=1 connects without credentials, to separate the cost of a
    // connection from the cost of argon2 password checks during the connection storm.
    let anonymous = std::env::var("BENCH_IDLE_ANONYMOUS").is_ok_and(|v| v == "1");
    let user = if anonymous { "" } else { USER };
    let gw = idle_memory("gateway", &ports.gateway_mqtt, user, gateway_pid, count).await;
    let mq = idle_memory("mosquitto", &ports.mosquitto, user, mosquitto_pid, count).await;
    println!(
        "ratio gateway / mosquitto memory per idle connection: {:.2}",
        gw / mq.max(1.0)
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

    // `ingest` is another name for `throughput`.
    let mode = if mode == "ingest" {
        "throughput".into()
    } else {
        mode
    };
    let modes = ["all", "throughput", "idle", "logins", "storm", "commands"];
    assert!(
        modes.contains(&mode.as_str()),
        "BENCH_MODE={mode}: one of {modes:?} or ingest"
    );
    if ["all", "throughput", "idle"].contains(&mode.as_str()) {
        let ports = servers::ports(0);
        let servers = Servers(vec![
            servers::start_gateway(
                &ports,
                &amqp_url,
                &ingest_queue("gateway"),
                &device_passwords(),
            ),
            servers::start_mosquitto(&ports.mosquitto, None),
        ]);
        servers::wait_ready(&ports.gateway_health).await;
        servers::wait_port(&ports.mosquitto).await;
        if mode != "idle" {
            throughput(&channel, &ports, &amqp_url, &plugin_mqtt).await;
        }
        if mode != "throughput" {
            idle(&ports, servers.0[0].id(), servers.0[1].id()).await;
        }
    }
    if mode == "all" || mode == "logins" {
        logins::run(&amqp_url).await;
    }
    if mode == "all" || mode == "storm" {
        storm::run(&amqp_url).await;
    }
    if mode == "all" || mode == "commands" {
        commands::run(&amqp_url, &plugin_mqtt).await;
    }
}
