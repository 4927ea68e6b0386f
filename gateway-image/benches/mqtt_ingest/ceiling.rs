//! The broker's confirm ceiling: what RabbitMQ takes into the ingest queue with publisher
//! confirms when no gateway is in the way. One AMQP client publishes what the gateway
//! publishes (an envelope of the same size, persistent, `mandatory`, through the default
//! exchange, confirms awaited) with the MQTT load's shape: BENCH_CLIENTS publishers with
//! BENCH_WINDOW messages in flight each, BENCH_MESSAGES each.
//!
//! The publishers are spread over `connections` × `channels` (publisher `i` on channel
//! `i mod total`), so the ceiling can be measured in the gateway's shape, `1x1` (one
//! connection with one confirm-mode channel, which every device's messages share), and
//! in others: `4x1` is four connections with one channel each, the broker's
//! multi-connection ceiling.

use std::time::Instant;

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueuePurgeOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tributary_contract::envelope::{Envelope, Payload, Protocol};

use crate::{bench_line, env_usize};

/// How the publishers are spread: connections, and confirm-mode channels on each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub connections: usize,
    pub channels: usize,
}

impl Shape {
    /// `CxH`: C connections with H channels each.
    pub fn parse(text: &str) -> Option<Self> {
        let (connections, channels) = text.trim().split_once('x')?;
        let shape = Self {
            connections: connections.parse().ok()?,
            channels: channels.parse().ok()?,
        };
        (shape.connections > 0 && shape.channels > 0).then_some(shape)
    }

    /// The figure's system name, e.g. `amqp-confirms-4x1`.
    pub fn system(self) -> String {
        format!("amqp-confirms-{}x{}", self.connections, self.channels)
    }
}

/// An envelope as the gateway writes it for the load's payload (same type, same size).
fn envelope_body(payload_bytes: usize) -> Vec<u8> {
    let value = "x".repeat(payload_bytes.saturating_sub(8));
    let envelope = Envelope {
        id: ulid::Ulid::generate().to_string(),
        tenant: "bench".into(),
        gateway: "bench".into(),
        device: "dev-0".into(),
        topic: "gw/bench-0/t".into(),
        protocol: Protocol::Mqtt,
        received_at: "2026-01-01T00:00:00.000Z".into(),
        content_type: None,
        mqtt: None,
        attributes: Default::default(),
        payload: Payload::Json(serde_json::json!({ "v": value })),
    };
    serde_json::to_vec(&envelope).unwrap()
}

/// One publisher: `messages` confirmed publishes to `queue`, `window` in flight.
async fn publisher(channel: Channel, queue: String, messages: usize, window: usize, body: Vec<u8>) {
    let options = BasicPublishOptions {
        mandatory: true,
        immediate: false,
    };
    let mut confirms = FuturesUnordered::new();
    let (mut sent, mut confirmed) = (0usize, 0usize);
    while confirmed < messages {
        while sent < messages && confirms.len() < window.max(1) {
            let properties = BasicProperties::default()
                .with_message_id(ulid::Ulid::generate().to_string().into())
                .with_delivery_mode(2)
                .with_content_type("application/json".into());
            let confirm = channel
                .basic_publish("".into(), queue.as_str().into(), options, &body, properties)
                .await
                .expect("basic.publish");
            confirms.push(confirm);
            sent += 1;
        }
        let confirmation = confirms.next().await.expect("a confirm in flight");
        assert_eq!(
            confirmation.expect("confirm"),
            Confirmation::Ack(None),
            "the broker refused or returned a message"
        );
        confirmed += 1;
    }
}

/// Publishes the load in `shape` to `queue` and returns confirmed messages per second.
pub async fn measure(amqp_url: &str, queue: &str, shape: Shape) -> f64 {
    let clients = env_usize("BENCH_CLIENTS", 20);
    let messages = env_usize("BENCH_MESSAGES", 2000);
    let window = env_usize("BENCH_WINDOW", 10);
    let body = envelope_body(env_usize("BENCH_PAYLOAD_BYTES", 100));
    let mut connections = Vec::new();
    let mut channels = Vec::new();
    for index in 0..shape.connections {
        let properties = ConnectionProperties::default()
            .with_connection_name(format!("bench-ceiling-{index}").into());
        let connection = Connection::connect(amqp_url, properties)
            .await
            .expect("amqp");
        for _ in 0..shape.channels {
            let channel = connection.create_channel().await.unwrap();
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .unwrap();
            channels.push(channel);
        }
        connections.push(connection);
    }
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let channel = channels[client % channels.len()].clone();
            tokio::spawn(publisher(
                channel,
                queue.to_owned(),
                messages,
                window,
                body.clone(),
            ))
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let rate = (clients * messages) as f64 / started.elapsed().as_secs_f64();
    if let Some(channel) = channels.first() {
        let _ = channel
            .queue_purge(queue.into(), QueuePurgeOptions::default())
            .await;
    }
    for connection in connections {
        let _ = connection.close(200, "done".into()).await;
    }
    rate
}

/// The shapes to measure: BENCH_CEILING_SHAPES, by default `1x1` (the gateway's shape)
/// and `4x1` (several connections).
pub fn shapes() -> Vec<Shape> {
    let text = std::env::var("BENCH_CEILING_SHAPES").unwrap_or_else(|_| "1x1,4x1".into());
    let mut shapes: Vec<Shape> = text.split(',').filter_map(Shape::parse).collect();
    shapes.dedup();
    shapes
}

/// Measures every shape into `queue`, prints them and their `BENCH` lines; returns
/// (system, rate) pairs.
pub async fn run(amqp_url: &str, queue: &str, shapes: &[Shape], extra: &str) -> Vec<(String, f64)> {
    let mut results = Vec::new();
    for &shape in shapes {
        let rate = measure(amqp_url, queue, shape).await;
        bench_line("ingest_rate", &shape.system(), rate, "msg/s", extra);
        results.push((shape.system(), rate));
    }
    results
}
