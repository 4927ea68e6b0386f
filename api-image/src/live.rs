//! Live processed messages: one consumer on the API's own bounded queue feeds a hub, and
//! the hub hands each message to every client whose filter and key scope admit it.
//!
//! The queue is exclusive, auto-deleted and capped (`x-max-length` with `x-overflow:
//! drop-head`), so the API can never back up the pipeline. Each client has a bounded buffer;
//! a full buffer drops the message for that client only (counted), so a slow client never
//! delays the others or the consumer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tributary_contract::api_config::LiveSource;

use crate::backlog::Backlog;
use crate::keys::Scope;
use crate::metrics::Metrics;

/// One live message: the fields clients filter on and the JSON text they receive.
#[derive(Debug)]
pub struct LiveMessage {
    /// The message's `device`.
    pub device: String,
    /// The message's `topic` (empty when absent).
    pub topic: String,
    /// The message's `id`, if any (the SSE event id).
    pub id: Option<String>,
    /// The message as one line of JSON.
    pub json: String,
}

impl LiveMessage {
    /// Reads a processed message (a JSON object with at least a `device` string).
    pub fn parse(body: &[u8]) -> Option<Self> {
        let value: Value = serde_json::from_slice(body).ok()?;
        let object = value.as_object()?;
        let text = |name: &str| object.get(name).and_then(Value::as_str).map(str::to_string);
        Some(Self {
            device: text("device")?,
            topic: text("topic").unwrap_or_default(),
            id: text("id"),
            json: value.to_string(),
        })
    }
}

/// Whether an MQTT topic filter (`+` one level, `#` the rest) matches a topic.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut levels = topic.split('/');
    for part in filter.split('/') {
        match part {
            "#" => return true,
            "+" => {
                if levels.next().is_none() {
                    return false;
                }
            }
            exact => {
                if levels.next() != Some(exact) {
                    return false;
                }
            }
        }
    }
    levels.next().is_none()
}

/// What one client receives: its key's devices, narrowed by the request's filters.
#[derive(Debug, Clone)]
pub struct LiveFilter {
    /// The key's scope.
    pub scope: Scope,
    /// Only this device, if set.
    pub device: Option<String>,
    /// Only topics matching this MQTT filter, if set.
    pub topic: Option<String>,
}

impl LiveFilter {
    /// Whether the client gets this message.
    pub fn admits(&self, message: &LiveMessage) -> bool {
        self.scope.allows(&message.device)
            && self.device.as_ref().is_none_or(|d| *d == message.device)
            && self
                .topic
                .as_ref()
                .is_none_or(|t| topic_matches(t, &message.topic))
    }
}

struct Client {
    filter: LiveFilter,
    sender: mpsc::Sender<Arc<LiveMessage>>,
}

/// The live clients.
pub struct Hub {
    clients: Mutex<HashMap<u64, Client>>,
    next_id: AtomicU64,
    buffer: usize,
    max_clients: usize,
    connected: AtomicBool,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("buffer", &self.buffer).finish()
    }
}

/// A client's place in the hub; leaving it (drop) unregisters the client.
pub struct Subscription {
    id: u64,
    hub: Arc<Hub>,
    /// The client's messages.
    pub receiver: mpsc::Receiver<Arc<LiveMessage>>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.lock().remove(&self.id);
    }
}

impl Hub {
    /// An empty hub.
    pub fn new(buffer: usize, max_clients: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            clients: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            buffer: buffer.max(1),
            max_clients,
            connected: AtomicBool::new(false),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Client>> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a client; `None` when the hub is full.
    pub fn subscribe(self: &Arc<Self>, filter: LiveFilter) -> Option<Subscription> {
        let (sender, receiver) = mpsc::channel(self.buffer);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut clients = self.lock();
        if clients.len() >= self.max_clients {
            return None;
        }
        clients.insert(id, Client { filter, sender });
        Some(Subscription {
            id,
            hub: self.clone(),
            receiver,
        })
    }

    /// Hands a message to every client that admits it, never waiting for one.
    pub fn publish(&self, message: LiveMessage) {
        let message = Arc::new(message);
        let mut dropped = 0;
        self.lock().retain(|_, client| {
            if !client.filter.admits(&message) {
                return !client.sender.is_closed();
            }
            match client.sender.try_send(message.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    dropped += 1;
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        self.metrics.live_dropped.inc_by(dropped);
    }

    /// Live clients now.
    pub fn clients(&self) -> usize {
        self.lock().len()
    }

    /// Whether the consumer is receiving from the broker.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
        self.metrics.live_connected.set(i64::from(connected));
    }
}

/// Consumes the API's live queue into the hub until `stop`, reconnecting with backoff; on
/// the same connection, reads the backlog queue's depth when there is one.
pub async fn run(
    config: LiveSource,
    uri: String,
    hub: Arc<Hub>,
    backlog: Option<Arc<Backlog>>,
    stop: CancellationToken,
) {
    let max_delay = Duration::from_millis(config.reconnect_max_delay_ms.max(100));
    let mut delay = Duration::from_millis(100);
    loop {
        let session = consume(&config, &uri, &hub, backlog.as_deref(), &stop);
        let result = tokio::select! {
            result = session => result,
            () = stop.cancelled() => Ok(()),
        };
        hub.set_connected(false);
        if stop.is_cancelled() {
            return;
        }
        match result {
            Ok(()) => delay = Duration::from_millis(100),
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "live consumer stopped")
            }
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stop.cancelled() => return,
        }
        delay = (delay * 2).min(max_delay);
    }
}

fn exchange_kind(kind: &str) -> ExchangeKind {
    match kind {
        "topic" => ExchangeKind::Topic,
        "fanout" => ExchangeKind::Fanout,
        "direct" => ExchangeKind::Direct,
        "headers" => ExchangeKind::Headers,
        other => ExchangeKind::Custom(other.to_string()),
    }
}

/// The arguments of the API's queue: bounded, oldest dropped first.
pub fn queue_arguments(max_length: u32) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-max-length".into(),
        AMQPValue::LongLongInt(i64::from(max_length)),
    );
    arguments.insert(
        "x-overflow".into(),
        AMQPValue::LongString(LongString::from("drop-head")),
    );
    arguments
}

async fn consume(
    config: &LiveSource,
    uri: &str,
    hub: &Hub,
    backlog: Option<&Backlog>,
    stop: &CancellationToken,
) -> Result<(), lapin::Error> {
    let properties = ConnectionProperties::default().with_connection_name("tributary-api".into());
    let connection = Connection::connect(uri, properties).await?;
    let channel = connection.create_channel().await?;
    if config.declare_exchange {
        channel
            .exchange_declare(
                config.exchange.as_str().into(),
                exchange_kind(&config.exchange_type),
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
    }
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            queue_arguments(config.queue_max_length),
        )
        .await?;
    channel
        .queue_bind(
            queue.name().clone(),
            config.exchange.as_str().into(),
            config.routing_key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel.basic_qos(256, BasicQosOptions::default()).await?;
    let consumer = channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    hub.set_connected(true);
    tracing::info!(exchange = %config.exchange, queue = %queue.name(), "consuming live messages");
    let backlog = async {
        match backlog {
            Some(backlog) => crate::backlog::poll(&connection, backlog, stop).await,
            None => {
                stop.cancelled().await;
                Ok(())
            }
        }
    };
    tokio::select! {
        delivered = deliver(consumer, hub, stop) => delivered?,
        polled = backlog => polled?,
    }
    let _ = connection.close(200, "api stopping".into()).await;
    Ok(())
}

/// Hands every delivery to the hub until `stop` or the end of the consumer.
async fn deliver(
    mut consumer: lapin::Consumer,
    hub: &Hub,
    stop: &CancellationToken,
) -> Result<(), lapin::Error> {
    loop {
        let delivery = tokio::select! {
            delivery = consumer.next() => delivery,
            () = stop.cancelled() => return Ok(()),
        };
        let Some(delivery) = delivery else {
            return Ok(());
        };
        let delivery = delivery?;
        hub.metrics.live_messages.inc();
        match LiveMessage::parse(&delivery.data) {
            Some(message) => hub.publish(message),
            None => {
                hub.metrics.live_unreadable.inc();
            }
        }
        // Acknowledged at once: the hub never waits, and a lost live message is only a
        // missed update on a dashboard, never lost data.
        delivery.acker.ack(BasicAckOptions::default()).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(device: &str, topic: &str) -> LiveMessage {
        LiveMessage {
            device: device.into(),
            topic: topic.into(),
            id: None,
            json: "{}".into(),
        }
    }

    #[test]
    fn topic_filters_follow_mqtt_wildcards() {
        assert!(topic_matches("devices/+/telemetry", "devices/a/telemetry"));
        assert!(!topic_matches(
            "devices/+/telemetry",
            "devices/a/b/telemetry"
        ));
        assert!(topic_matches("devices/#", "devices/a/b"));
        assert!(topic_matches("devices/a", "devices/a"));
        assert!(!topic_matches("devices/a", "devices/a/b"));
        assert!(!topic_matches("devices/a/b", "devices/a"));
    }

    #[test]
    fn messages_need_a_device_and_become_one_line() {
        let parsed =
            LiveMessage::parse(b"{\n \"device\": \"a\", \"topic\": \"t\", \"id\": \"1\"\n}")
                .expect("parse");
        assert_eq!(parsed.device, "a");
        assert_eq!(parsed.id.as_deref(), Some("1"));
        assert!(!parsed.json.contains('\n'));
        assert!(LiveMessage::parse(b"{\"topic\": \"t\"}").is_none());
        assert!(LiveMessage::parse(b"not json").is_none());
    }

    #[test]
    fn filters_apply_scope_device_and_topic() {
        let filter = LiveFilter {
            scope: Scope::Prefix("a-".into()),
            device: None,
            topic: Some("devices/+/telemetry".into()),
        };
        assert!(filter.admits(&message("a-1", "devices/a-1/telemetry")));
        assert!(!filter.admits(&message("b-1", "devices/b-1/telemetry")));
        assert!(!filter.admits(&message("a-1", "devices/a-1/status")));
    }

    #[tokio::test]
    async fn full_client_loses_messages_and_others_still_get_them() {
        let metrics = Arc::new(Metrics::new());
        let hub = Arc::new(Hub::new(2, 10, metrics.clone()));
        let all = LiveFilter {
            scope: Scope::All,
            device: None,
            topic: None,
        };
        let slow = hub.subscribe(all.clone()).expect("slow");
        let mut fast = hub.subscribe(all).expect("fast");
        for i in 0..5 {
            hub.publish(message("d", "t"));
            let got = fast.receiver.recv().await.expect("fast gets every message");
            assert_eq!(got.device, "d", "message {i}");
        }
        assert_eq!(slow.receiver.len(), 2);
        assert_eq!(metrics.live_dropped.get(), 3);
        drop(slow);
        assert_eq!(hub.clients(), 1);
    }

    #[test]
    fn hub_refuses_clients_beyond_its_maximum() {
        let hub = Arc::new(Hub::new(1, 1, Arc::new(Metrics::new())));
        let filter = LiveFilter {
            scope: Scope::All,
            device: None,
            topic: None,
        };
        let first = hub.subscribe(filter.clone());
        assert!(first.is_some());
        assert!(hub.subscribe(filter.clone()).is_none());
        drop(first);
        assert!(hub.subscribe(filter).is_some());
    }
}
