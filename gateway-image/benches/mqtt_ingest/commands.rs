//! Commands: the round trip of a request/response command to one of BENCH_COMMAND_DEVICES
//! (1000) connected devices, sender → device → sender, with BENCH_COMMAND_WINDOW (10) in
//! flight, BENCH_COMMANDS (2000) in all, each to a device picked at random; every device
//! answers at once. Three systems, same devices (MQTT 3.1.1, QoS 1), same run:
//! - `gateway`: the sender does what the command API does (AMQP to the tenant's command
//!   exchange, mandatory, confirms, direct reply-to); the devices are on our gateway, which
//!   routes each command through the device's queue and its answer back;
//! - `rabbitmq-mqtt`: the sender publishes to `amq.topic` on the same broker, the devices
//!   are on RabbitMQ's MQTT plugin and answer to `responses/…`, which the sender consumes;
//! - `mosquitto`: sender and devices are MQTT clients of Mosquitto (no durability).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tributary_contract::command;

use crate::servers::{self, Servers};
use crate::wire::{connect_packet, mqtt_connect, packet, read_packet, string, PASSWORD};
use crate::{bench_line, env_usize};

/// The tenant of the benchmark's gateway (`servers::start_gateway_with`).
const TENANT: &str = "bench";

/// How a device answers a command delivered on `topic`: the topic of its answer.
type Answer = fn(&str) -> Option<String>;

/// Our gateway's convention for 3.1.1: `commands/{d}/req/{id}/{name}` → `commands/{d}/res/{id}`.
fn answer_gateway(topic: &str) -> Option<String> {
    let mut levels = topic.split('/');
    let (_, device, req, id) = (
        levels.next()?,
        levels.next()?,
        levels.next()?,
        levels.next()?,
    );
    (req == command::REQUEST_LEVEL).then(|| command::response_topic(device, id))
}

/// The peers' convention: `commands/{d}/ping/{id}` → `responses/{d}/{id}`.
fn answer_peer(topic: &str) -> Option<String> {
    let levels: Vec<&str> = topic.split('/').collect();
    (levels.len() == 4).then(|| format!("responses/{}/{}", levels[1], levels[3]))
}

/// A 3.1.1 SUBSCRIBE of one filter at QoS 1.
fn subscribe_packet(filter: &str) -> Vec<u8> {
    let mut body = 1u16.to_be_bytes().to_vec();
    body.extend(string(filter));
    body.push(1);
    packet(0x82, &body)
}

/// A QoS 1 PUBLISH.
fn publish_packet(topic: &str, id: u16, payload: &[u8]) -> Vec<u8> {
    let mut body = string(topic);
    body.extend_from_slice(&id.max(1).to_be_bytes());
    body.extend_from_slice(payload);
    packet(0x32, &body)
}

/// The topic and packet id (QoS 1) of a PUBLISH packet.
fn parse_publish(packet: &[u8]) -> Option<(String, Option<u16>)> {
    let body = packet.get(1..)?;
    // `read_packet` keeps only the first byte of the fixed header.
    let len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    let topic = std::str::from_utf8(body.get(2..2 + len)?).ok()?.to_owned();
    let qos = (packet[0] >> 1) & 3;
    let id = (qos > 0)
        .then(|| {
            Some(u16::from_be_bytes([
                *body.get(2 + len)?,
                *body.get(3 + len)?,
            ]))
        })
        .flatten();
    Some((topic, id))
}

/// Connects and subscribes to `filter`, retrying refusals (the gateway admits 16
/// unauthenticated connections per address at a time and closes the others at accept).
async fn connect_subscribed(addr: &str, name: &str, user: &str, password: &str) -> TcpStream {
    let mut delay = Duration::from_millis(20);
    for _ in 0..100 {
        if let Ok(mut stream) = TcpStream::connect(addr).await {
            stream.set_nodelay(true).unwrap();
            let filter = format!("commands/{name}/#");
            let hello = [
                connect_packet(name, user, password),
                subscribe_packet(&filter),
            ]
            .concat();
            if stream.write_all(&hello).await.is_ok() {
                let connack = read_packet(&mut stream).await;
                let suback = read_packet(&mut stream).await;
                if let (Ok(connack), Ok(suback)) = (connack, suback) {
                    assert_eq!(connack.get(2), Some(&0), "CONNACK refused by {addr}");
                    assert_eq!(suback.last(), Some(&1), "{name}'s SUBSCRIBE granted QoS 1");
                    return stream;
                }
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(500));
    }
    panic!("{name} could not connect to {addr}");
}

/// One device: connected and subscribed (then `ready` is told), it answers each command at
/// once.
async fn device(
    addr: String,
    index: usize,
    user: String,
    password: String,
    answer: Answer,
    ready: mpsc::UnboundedSender<()>,
) {
    let name = format!("dev-{index}");
    let user = if user.is_empty() { name.clone() } else { user };
    let stream = connect_subscribed(&addr, &name, &user, &password).await;
    let _ = ready.send(());
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    let mut next_id: u16 = 0;
    while let Ok(packet) = read_packet(&mut reader).await {
        if packet[0] >> 4 != 3 {
            continue; // PUBACKs of the answers
        }
        let Some((topic, id)) = parse_publish(&packet) else {
            continue;
        };
        if let Some(id) = id {
            let _ = writer
                .write_all(&[0x40, 2, (id >> 8) as u8, id as u8])
                .await;
        }
        if let Some(reply) = answer(&topic) {
            next_id = next_id % 65_535 + 1;
            let _ = writer
                .write_all(&publish_packet(&reply, next_id, b"{\"ok\":true}"))
                .await;
        }
    }
}

/// Connects `count` devices to `addr`, 8 logging in at a time, until all are subscribed.
async fn connect_devices(addr: &str, count: usize, user: &str, password: &str, answer: Answer) {
    let (ready, mut subscribed) = mpsc::unbounded_channel();
    let mut done = 0;
    for index in 0..count {
        if index >= done + 8 {
            subscribed.recv().await.expect("devices report");
            done += 1;
        }
        let (addr, user, password) = (addr.to_owned(), user.to_owned(), password.to_owned());
        tokio::spawn(device(addr, index, user, password, answer, ready.clone()));
    }
    while done < count {
        subscribed.recv().await.expect("devices report");
        done += 1;
    }
}

/// How the sender sends one command.
enum Sender {
    /// AMQP to our command exchange, with direct reply-to.
    Gateway(Channel),
    /// AMQP to `amq.topic` (the MQTT plugin's exchange).
    Plugin(Channel),
    /// An MQTT client of Mosquitto.
    Mqtt(OwnedWriteHalf, u16),
}

impl Sender {
    async fn send(&mut self, device: usize, id: &str) {
        let device = format!("dev-{device}");
        match self {
            Sender::Gateway(channel) => {
                let headers = FieldTable::from(std::collections::BTreeMap::from([(
                    command::HEADER_NAME.into(),
                    AMQPValue::LongString("ping".into()),
                )]));
                let properties = BasicProperties::default()
                    .with_message_id(id.into())
                    .with_correlation_id(id.into())
                    .with_reply_to(command::DIRECT_REPLY_TO.into())
                    .with_expiration("30000".into())
                    .with_headers(headers);
                let options = BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                };
                let exchange = command::exchange(TENANT);
                let confirm = channel
                    .basic_publish(
                        exchange.as_str().into(),
                        device.as_str().into(),
                        options,
                        b"{}",
                        properties,
                    )
                    .await
                    .unwrap();
                tokio::spawn(confirm);
            }
            Sender::Plugin(channel) => {
                let key = format!("commands.{device}.ping.{id}");
                let options = BasicPublishOptions::default();
                let _unconfirmed = channel
                    .basic_publish(
                        "amq.topic".into(),
                        key.as_str().into(),
                        options,
                        b"{}",
                        BasicProperties::default(),
                    )
                    .await
                    .unwrap();
            }
            Sender::Mqtt(writer, next_id) => {
                *next_id = *next_id % 65_535 + 1;
                let topic = format!("commands/{device}/ping/{id}");
                writer
                    .write_all(&publish_packet(&topic, *next_id, b"{}"))
                    .await
                    .unwrap();
            }
        }
    }
}

/// Sends the commands with a window in flight; the latencies of their answers.
async fn measure(
    sender: &mut Sender,
    answers: &mut mpsc::UnboundedReceiver<String>,
) -> Vec<Duration> {
    let devices = env_usize("BENCH_COMMAND_DEVICES", 1000);
    let total = env_usize("BENCH_COMMANDS", 2000);
    let window = env_usize("BENCH_COMMAND_WINDOW", 10);
    let mut started: HashMap<String, Instant> = HashMap::new();
    let mut latencies = Vec::with_capacity(total);
    let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
    let mut sent = 0usize;
    while latencies.len() < total {
        while sent < total && started.len() < window {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let id = format!("c{sent}");
            started.insert(id.clone(), Instant::now());
            sender.send((seed % devices as u64) as usize, &id).await;
            sent += 1;
        }
        let id = tokio::time::timeout(Duration::from_secs(30), answers.recv())
            .await
            .expect("an answer within 30 s")
            .expect("answers flow");
        if let Some(start) = started.remove(&id) {
            latencies.push(start.elapsed());
        }
    }
    latencies
}

/// The AMQP answers of `consumer` (ids from the correlation id or the routing key's tail).
fn forward_amqp(mut consumer: lapin::Consumer, answers: mpsc::UnboundedSender<String>) {
    tokio::spawn(async move {
        while let Some(Ok(delivery)) = consumer.next().await {
            let id = match delivery.properties.correlation_id() {
                Some(id) => id.to_string(),
                None => delivery
                    .routing_key
                    .as_str()
                    .rsplit('.')
                    .next()
                    .unwrap_or("")
                    .to_owned(),
            };
            if answers.send(id).is_err() {
                break;
            }
        }
    });
}

async fn gateway(connection: &Connection) -> Vec<Duration> {
    let ports = servers::ports(4);
    let count = env_usize("BENCH_COMMAND_DEVICES", 1000);
    let hash = tributary_gateway::auth::hash_password_cheap(PASSWORD.as_bytes()).unwrap();
    let passwords: String = (0..count).map(|i| format!("dev-{i}:{hash}\n")).collect();
    let amqp_url = std::env::var("TRIBUTARY_TEST_AMQP_URL").unwrap();
    let _servers = Servers(vec![servers::start_gateway(
        &ports,
        &amqp_url,
        "bench-gateway",
        &passwords,
    )]);
    servers::wait_ready(&ports.gateway_health).await;
    connect_devices(&ports.gateway_mqtt, count, "", PASSWORD, answer_gateway).await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let options = BasicConsumeOptions {
        no_ack: true,
        ..BasicConsumeOptions::default()
    };
    let consumer = channel
        .basic_consume(
            command::DIRECT_REPLY_TO.into(),
            "".into(),
            options,
            FieldTable::default(),
        )
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    forward_amqp(consumer, tx);
    measure(&mut Sender::Gateway(channel), &mut rx).await
}

async fn plugin(connection: &Connection, plugin_mqtt: &str) -> Vec<Duration> {
    let count = env_usize("BENCH_COMMAND_DEVICES", 1000);
    connect_devices(
        plugin_mqtt,
        count,
        "tributary",
        "tributary-test-pass",
        answer_peer,
    )
    .await;
    let channel = connection.create_channel().await.unwrap();
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..QueueDeclareOptions::default()
    };
    let queue = channel
        .queue_declare("".into(), exclusive, FieldTable::default())
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.name().clone(),
            "amq.topic".into(),
            "responses.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let options = BasicConsumeOptions {
        no_ack: true,
        ..BasicConsumeOptions::default()
    };
    let consumer = channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            options,
            FieldTable::default(),
        )
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    forward_amqp(consumer, tx);
    measure(&mut Sender::Plugin(channel), &mut rx).await
}

async fn mosquitto() -> Vec<Duration> {
    let ports = servers::ports(4);
    let count = env_usize("BENCH_COMMAND_DEVICES", 1000);
    let _servers = Servers(vec![servers::start_mosquitto(&ports.mosquitto, None)]);
    servers::wait_port(&ports.mosquitto).await;
    connect_devices(&ports.mosquitto, count, "", "", answer_peer).await;
    let stream = mqtt_connect(&ports.mosquitto, "sender", "", "").await;
    let (reader, mut writer) = stream.into_split();
    writer
        .write_all(&subscribe_packet("responses/#"))
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut reader = BufReader::new(reader);
        while let Ok(packet) = read_packet(&mut reader).await {
            if packet[0] >> 4 != 3 {
                continue;
            }
            if let Some((topic, _)) = parse_publish(&packet) {
                let id = topic.rsplit('/').next().unwrap_or("").to_owned();
                if tx.send(id).is_err() {
                    break;
                }
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    measure(&mut Sender::Mqtt(writer, 0), &mut rx).await
}

fn percentile(latencies: &mut [Duration], q: f64) -> f64 {
    latencies.sort_unstable();
    let index = ((latencies.len() as f64 * q) as usize).min(latencies.len() - 1);
    latencies[index].as_secs_f64() * 1000.0
}

/// The three systems in turn; prints p50/p99 round trips and the BENCH lines.
pub async fn run(amqp_url: &str, plugin_mqtt: &str) {
    let connection = Connection::connect(amqp_url, ConnectionProperties::default())
        .await
        .expect("amqp");
    let mut results = vec![
        ("gateway", gateway(&connection).await),
        ("rabbitmq-mqtt", plugin(&connection, plugin_mqtt).await),
        ("mosquitto", mosquitto().await),
    ];
    let extra = format!(
        "devices={} commands={} window={}",
        env_usize("BENCH_COMMAND_DEVICES", 1000),
        env_usize("BENCH_COMMANDS", 2000),
        env_usize("BENCH_COMMAND_WINDOW", 10)
    );
    println!("\n{:<14} {:>10} {:>10}", "commands", "p50 ms", "p99 ms");
    for (name, latencies) in &mut results {
        let (p50, p99) = (percentile(latencies, 0.5), percentile(latencies, 0.99));
        println!("{name:<14} {p50:>10.2} {p99:>10.2}");
        bench_line("command_round_trip_p50", name, p50, "ms", &extra);
        bench_line("command_round_trip_p99", name, p99, "ms", &extra);
    }
}
