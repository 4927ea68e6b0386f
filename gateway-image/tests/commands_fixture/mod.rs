//! Commands for the gateway's tests: a gateway with its own tenant (so tests sharing the
//! broker never see each other's exchanges and queues), a sender that publishes commands
//! exactly as the contract says, and a raw MQTT client for commands ([`mqtt`]).
#![allow(dead_code)]

pub mod mqtt;

use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, Consumer};
use tributary_contract::command::{
    device_queue, exchange, expired_exchange, expired_queue, DIRECT_REPLY_TO, HEADER_DEVICE,
    HEADER_NAME, HEADER_SENDER, HEADER_STATUS,
};
use tributary_contract::gateway_config::{AuthConfig, GatewayConfig};
use tributary_gateway::app::Running;

use crate::common::*;

/// The password of a test device.
pub fn password(device: &str) -> String {
    format!("pw-{device}")
}

/// A gateway of its own tenant, with `devices` in its password file.
pub struct Setup {
    pub dir: TempDir,
    pub tenant: String,
    pub devices: Vec<String>,
    pub running: Running,
    pub sender: Sender,
    pub ingest_queue: String,
    pub broker: Connection,
}

impl Setup {
    /// Starts the gateway (commands' session expiry shortened, so queues a failed test
    /// leaves behind go away) and waits for both of its broker connections.
    pub async fn start(devices: &[&str], tune: impl FnOnce(&mut GatewayConfig)) -> Self {
        let tenant = format!("t{}", ulid::Ulid::generate()).to_lowercase();
        Self::start_for(&tenant, devices, tune).await
    }

    /// [`Setup::start`] for a given tenant (a second gateway of the same tenant).
    pub async fn start_for(
        tenant: &str,
        devices: &[&str],
        tune: impl FnOnce(&mut GatewayConfig),
    ) -> Self {
        Self::launch(tenant, devices, tune, true).await
    }

    /// [`Setup::start`] for a gateway whose broker user may not declare the command
    /// topology (nothing to wait for).
    pub async fn start_restricted(devices: &[&str], tune: impl FnOnce(&mut GatewayConfig)) -> Self {
        let tenant = format!("t{}", ulid::Ulid::generate()).to_lowercase();
        Self::launch(&tenant, devices, tune, false).await
    }

    async fn launch(
        tenant: &str,
        devices: &[&str],
        tune: impl FnOnce(&mut GatewayConfig),
        topology: bool,
    ) -> Self {
        let broker = amqp(&amqp_url()).await;
        let ingest_queue = fresh_queue(&broker, "commands-ingest").await;
        let dir = TempDir::new();
        let uri = dir.write("amqp-uri", &amqp_url());
        let passwords: Vec<(String, String)> = devices
            .iter()
            .map(|device| ((*device).to_owned(), password(device)))
            .collect();
        let pairs: Vec<(&str, &str)> = passwords
            .iter()
            .map(|(d, p)| (d.as_str(), p.as_str()))
            .collect();
        let auth = AuthConfig {
            password_file: Some(password_file(&dir, &pairs)),
            failed_logins_per_minute: 1000,
            ..AuthConfig::default()
        };
        let mut config = test_config(uri, vec![route("devices/#", &ingest_queue)], auth);
        config.tenant = tenant.to_owned();
        config.commands.session_expiry_seconds = 600;
        tune(&mut config);
        let running = start_connected(config).await;
        let sender = Sender::connect(tenant).await;
        if running.gateway.commands.enabled() {
            assert!(
                running.gateway.commands.wait_connected(DEADLINE).await,
                "the gateway's commands connection did not come up"
            );
            // The tenant's exchange exists once the gateway declared it.
            assert!(
                !topology || eventually(DEADLINE, || sender.exchange_exists()).await,
                "the gateway did not declare the tenant's command exchange"
            );
        }
        Self {
            dir,
            tenant: tenant.to_owned(),
            devices: devices.iter().map(|d| (*d).to_owned()).collect(),
            running,
            sender,
            ingest_queue,
            broker,
        }
    }

    pub fn mqtt(&self) -> SocketAddr {
        self.running.bound.mqtt.expect("mqtt listener")
    }

    pub fn http(&self) -> SocketAddr {
        self.running.bound.http.expect("http listener")
    }

    /// The gateway's metrics text.
    pub fn metrics(&self) -> String {
        self.running.gateway.metrics.encode()
    }

    /// The value of one metric series (0 when absent).
    pub fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics(), series)
    }

    /// Consumers of device queues the gateway holds now.
    pub fn consumers(&self) -> i64 {
        self.running.gateway.metrics.commands.consumers.get()
    }

    /// Waits until the gateway holds `count` command consumers.
    pub async fn wait_consumers(&self, count: i64) {
        assert!(
            eventually(DEADLINE, || async { self.consumers() == count }).await,
            "expected {count} command consumers, have {}",
            self.consumers()
        );
    }

    /// A device that never touches commands publishes and is acknowledged (ingest is
    /// unaffected by whatever commands went through).
    pub async fn assert_ingest_works(&self, device: &str) {
        let (mut client, code) = RawMqtt::connect(self.mqtt(), device, &password(device)).await;
        assert_eq!(code, 0, "{device} connects");
        let topic = format!("devices/{device}/telemetry");
        assert_eq!(client.publish_qos1(&topic, 7, b"{}").await, Some(7));
        assert_eq!(drain_queue(&self.broker, &self.ingest_queue).await.len(), 1);
    }

    /// Deletes what the test declared on the broker (each on a channel of its own: a
    /// missing one closes its channel).
    pub async fn finish(self) {
        let mut queues: Vec<String> = self
            .devices
            .iter()
            .map(|device| device_queue(&self.tenant, device))
            .collect();
        queues.push(expired_queue(&self.tenant));
        for queue in queues {
            delete_queue(&self.broker, &queue).await;
        }
        for name in [exchange(&self.tenant), expired_exchange(&self.tenant)] {
            if let Ok(channel) = self.broker.create_channel().await {
                let _ = channel
                    .exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default())
                    .await;
            }
        }
        delete_queue(&self.broker, &self.ingest_queue).await;
    }
}

/// The value of `series` (name with labels, as exported) in a metrics text; 0 if absent.
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// One command as a sender gives it.
#[derive(Debug, Clone)]
pub struct Cmd {
    pub id: String,
    pub name: String,
    pub payload: Vec<u8>,
    pub ttl_ms: Option<u64>,
    pub content_type: Option<String>,
}

impl Cmd {
    pub fn new(id: &str, name: &str, payload: &[u8]) -> Self {
        Self {
            id: id.into(),
            name: name.into(),
            payload: payload.to_vec(),
            ttl_ms: Some(60_000),
            content_type: Some("application/json".into()),
        }
    }

    pub fn ttl(mut self, ttl_ms: u64) -> Self {
        self.ttl_ms = Some(ttl_ms);
        self
    }

    fn properties(&self, reply_to: bool) -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert(
            HEADER_NAME.into(),
            AMQPValue::LongString(LongString::from(self.name.as_str())),
        );
        headers.insert(
            HEADER_SENDER.into(),
            AMQPValue::LongString(LongString::from("test-sender")),
        );
        let now_ms = u64::try_from(jiff::Timestamp::now().as_millisecond()).unwrap_or(0);
        let mut properties = BasicProperties::default()
            .with_message_id(self.id.as_str().into())
            .with_correlation_id(self.id.as_str().into())
            .with_headers(headers)
            .with_delivery_mode(2)
            .with_timestamp(now_ms);
        if let Some(ttl) = self.ttl_ms {
            properties = properties.with_expiration(ttl.to_string().into());
        }
        if let Some(kind) = &self.content_type {
            properties = properties.with_content_type(kind.as_str().into());
        }
        if reply_to {
            properties = properties.with_reply_to(DIRECT_REPLY_TO.into());
        }
        properties
    }
}

/// What the broker said about a sent command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Routed to the device's queue and confirmed.
    Queued,
    /// No queue took it: returned (mandatory).
    Returned,
    /// The device's queue refused it (full): nacked.
    Refused,
}

/// A device's response as the sender receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub correlation_id: Option<String>,
    pub status: Option<u16>,
    pub device: Option<String>,
    pub content_type: Option<String>,
    pub payload: Vec<u8>,
}

/// Publishes commands as the contract says: the tenant's exchange, routing key = device
/// id, mandatory, publisher confirms, headers, expiration.
pub struct Sender {
    connection: Connection,
    channel: Channel,
    tenant: String,
}

/// A request's wait for its reply, on the channel it was published on.
pub struct ReplyWaiter {
    _channel: Channel,
    consumer: Consumer,
}

impl Sender {
    pub async fn connect(tenant: &str) -> Self {
        let connection = amqp(&amqp_url()).await;
        let channel = confirm_channel(&connection).await;
        Self {
            connection,
            channel,
            tenant: tenant.to_owned(),
        }
    }

    /// Whether the tenant's command exchange exists (checked on a throwaway channel).
    pub async fn exchange_exists(&self) -> bool {
        let Ok(channel) = self.connection.create_channel().await else {
            return false;
        };
        channel
            .exchange_declare(
                exchange(&self.tenant).into(),
                lapin::ExchangeKind::Direct,
                lapin::options::ExchangeDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .is_ok()
    }

    /// Sends a one-way command to `device`.
    pub async fn send(&self, device: &str, command: &Cmd) -> Sent {
        publish(&self.channel, &self.tenant, device, command, false).await
    }

    /// Sends a request, consuming the direct reply-to on the same channel first.
    pub async fn request(&self, device: &str, command: &Cmd) -> (Sent, ReplyWaiter) {
        let channel = confirm_channel(&self.connection).await;
        let consumer = channel
            .basic_consume(
                DIRECT_REPLY_TO.into(),
                format!("reply-{}", ulid::Ulid::generate()).into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consume direct reply-to");
        let sent = publish(&channel, &self.tenant, device, command, true).await;
        (
            sent,
            ReplyWaiter {
                _channel: channel,
                consumer,
            },
        )
    }
}

impl ReplyWaiter {
    /// The reply, if one comes within `wait`.
    pub async fn reply(mut self, wait: Duration) -> Option<Reply> {
        let delivery = tokio::time::timeout(wait, self.consumer.next())
            .await
            .ok()??
            .ok()?;
        let properties = &delivery.properties;
        let headers = properties.headers().clone().unwrap_or_default();
        let status = headers
            .inner()
            .get(HEADER_STATUS)
            .and_then(|value| match value {
                AMQPValue::ShortUInt(n) => Some(*n),
                AMQPValue::LongInt(n) => u16::try_from(*n).ok(),
                AMQPValue::LongLongInt(n) => u16::try_from(*n).ok(),
                _ => None,
            });
        let device = headers
            .inner()
            .get(HEADER_DEVICE)
            .and_then(AMQPValue::as_long_string)
            .map(|text| String::from_utf8_lossy(text.as_bytes()).into_owned());
        Some(Reply {
            correlation_id: properties
                .correlation_id()
                .as_ref()
                .map(|id| id.to_string()),
            status,
            device,
            content_type: properties.content_type().as_ref().map(|t| t.to_string()),
            payload: delivery.data,
        })
    }
}

async fn confirm_channel(connection: &Connection) -> Channel {
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");
    channel
}

async fn publish(
    channel: &Channel,
    tenant: &str,
    device: &str,
    command: &Cmd,
    reply: bool,
) -> Sent {
    let confirm = channel
        .basic_publish(
            exchange(tenant).into(),
            device.into(),
            BasicPublishOptions {
                mandatory: true,
                immediate: false,
            },
            &command.payload,
            command.properties(reply),
        )
        .await
        .expect("publish");
    match tokio::time::timeout(DEADLINE, confirm).await {
        Ok(Ok(Confirmation::Ack(None))) => Sent::Queued,
        Ok(Ok(Confirmation::Ack(Some(_)))) => Sent::Returned,
        Ok(Ok(Confirmation::Nack(_))) => Sent::Refused,
        other => panic!("no confirm for command {}: {other:?}", command.id),
    }
}
