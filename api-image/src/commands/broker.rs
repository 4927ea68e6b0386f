//! The command publisher: one connection and one channel to the broker, reopened with
//! backoff when lost.
//!
//! The channel is in confirm mode, and RabbitMQ's direct reply-to consumer (no-ack) runs on
//! it: a reply to `amq.rabbitmq.reply-to` reaches only a consumer on the channel the
//! command was published on. Each command is published to the tenant's exchange with the
//! device id as routing key and `mandatory` set, so the broker's confirm says which of
//! queued, returned (no queue for the device) or refused (the device's queue is full) it
//! was.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::Confirmation;
use lapin::{Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};
use tokio_util::sync::CancellationToken;
use tributary_contract::api_config::CommandsTarget;
use tributary_contract::command::{self, DIRECT_REPLY_TO};

use crate::commands::message::{self, Command};
use crate::commands::outcome::Outcome;
use crate::commands::waiters::Waiters;
use crate::metrics::Metrics;

/// Publishes commands and hands answers to the requests waiting for them.
pub struct Commander {
    exchange: String,
    max_wait_seconds: u32,
    confirm_timeout: Duration,
    channel: Mutex<Option<Channel>>,
    waiters: Arc<Waiters>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Commander {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Commander")
            .field("exchange", &self.exchange)
            .finish()
    }
}

impl Commander {
    /// Not connected yet; `confirm_timeout` bounds the wait for the broker's confirm.
    pub fn new(
        tenant: &str,
        target: &CommandsTarget,
        confirm_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        metrics.commands.connected.set(0);
        Self {
            exchange: command::exchange(tenant),
            max_wait_seconds: target.max_wait_seconds,
            confirm_timeout,
            channel: Mutex::new(None),
            waiters: Arc::new(Waiters::new(
                target.max_waiting,
                metrics.commands.waiting.clone(),
            )),
            metrics,
        }
    }

    /// The longest `waitSeconds` a request may give.
    pub fn max_wait_seconds(&self) -> u32 {
        self.max_wait_seconds
    }

    /// Whether the publisher is connected.
    pub fn connected(&self) -> bool {
        self.current().is_some()
    }

    fn current(&self) -> Option<Channel> {
        self.channel
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn attach(&self, channel: Option<Channel>) {
        self.metrics
            .commands
            .connected
            .set(i64::from(channel.is_some()));
        *self.channel.lock().unwrap_or_else(|p| p.into_inner()) = channel;
    }

    /// Sends a command and, when it asks to, waits for its device's answer.
    pub async fn send(&self, command: &Command) -> Outcome {
        let wait = command.request.wait_seconds;
        // Registered before publishing: a fast device may answer before the confirm.
        let waiter = match wait {
            0 => None,
            _ => match self.waiters.register(&command.id) {
                Some(waiter) => Some(waiter),
                None => return Outcome::Busy,
            },
        };
        let started = Instant::now();
        let outcome = self.publish(command).await;
        let Some(mut waiter) = waiter.filter(|_| outcome == Outcome::Queued) else {
            return outcome;
        };
        let wait = Duration::from_secs(u64::from(wait));
        match tokio::time::timeout(wait, &mut waiter.receiver).await {
            Ok(Ok(answer)) => Outcome::Answered {
                answer,
                seconds: started.elapsed().as_secs_f64(),
            },
            Ok(Err(_)) => Outcome::Unavailable(
                "the connection to the broker was lost while waiting for the device's answer; \
                 the command was queued"
                    .into(),
            ),
            Err(_) => Outcome::Timeout,
        }
    }

    /// Publishes with `mandatory` and waits for the broker's confirm.
    async fn publish(&self, command: &Command) -> Outcome {
        let Some(channel) = self.current() else {
            return Outcome::Unavailable(
                "the broker is unreachable; the command was not sent (the API reconnects)".into(),
            );
        };
        let properties = message::properties(command, unix_millis());
        let publish = async {
            channel
                .basic_publish(
                    self.exchange.as_str().into(),
                    command.request.device.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        immediate: false,
                    },
                    &command.payload,
                    properties,
                )
                .await?
                .await
        };
        match tokio::time::timeout(self.confirm_timeout, publish).await {
            Ok(Ok(Confirmation::Ack(None))) => Outcome::Queued,
            Ok(Ok(Confirmation::Ack(Some(returned)))) => Outcome::Undeliverable {
                reason: returned.reply_text.as_str().to_owned(),
            },
            Ok(Ok(Confirmation::Nack(_))) => Outcome::QueueFull,
            Ok(Ok(Confirmation::NotRequested)) => {
                Outcome::Unavailable("the broker did not confirm the command".into())
            }
            Ok(Err(error)) => Outcome::Unavailable(format!(
                "publishing to the broker failed ({error}); the command may not have been queued"
            )),
            Err(_) => Outcome::Unavailable(
                "the broker did not confirm the command in time; it may have been queued".into(),
            ),
        }
    }

    /// Hands a reply to the request waiting for it.
    fn deliver(&self, delivery: Delivery) {
        let id = delivery
            .properties
            .correlation_id()
            .as_ref()
            .map(|id| id.as_str().to_owned());
        let answer = message::answer(&delivery.properties, delivery.data);
        if !id.is_some_and(|id| self.waiters.answer(&id, answer)) {
            self.metrics.commands.unmatched.inc();
        }
    }
}

fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// Where the publisher connects.
#[derive(Debug, Clone)]
pub struct BrokerAddress {
    /// The `amqp://` or `amqps://` URI (a secret: never logged).
    pub uri: String,
    /// A private CA's PEM file.
    pub ca_file: Option<PathBuf>,
    /// Longest wait between reconnect attempts.
    pub max_delay: Duration,
}

/// Keeps the publisher connected until `stop`, reconnecting with backoff: 100 ms doubling
/// up to the configured maximum while connecting fails, back to 100 ms once connected.
pub async fn run(commander: Arc<Commander>, address: BrokerAddress, stop: CancellationToken) {
    let max_delay = address.max_delay.max(Duration::from_millis(100));
    let mut delay = Duration::from_millis(100);
    loop {
        let opened = tokio::select! {
            opened = open(&commander.exchange, &address) => opened,
            () = stop.cancelled() => return,
        };
        let error = match opened {
            Ok((connection, channel, replies)) => {
                delay = Duration::from_millis(100);
                commander.attach(Some(channel));
                tracing::info!(exchange = %commander.exchange, "command publisher connected");
                let ended = serve_replies(&commander, replies, &stop).await;
                commander.attach(None);
                // Answers to the waiting requests would come on the channel just lost.
                commander.waiters.abandon_all();
                let _ = connection.close(200, "api stopping".into()).await;
                match ended {
                    Ok(()) => return,
                    Err(error) => error,
                }
            }
            Err(error) => error,
        };
        tracing::warn!(
            error = %error,
            retry_in_ms = delay.as_millis() as u64,
            "command publisher disconnected"
        );
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stop.cancelled() => return,
        }
        delay = (delay * 2).min(max_delay);
    }
}

/// Opens a connection and its channel: confirms on, the exchange declared, the direct
/// reply-to consumed.
async fn open(
    exchange: &str,
    address: &BrokerAddress,
) -> Result<(Connection, Channel, Consumer), String> {
    let name = format!("tributary-api commands {exchange}");
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    let connection =
        tributary_service_kit::amqp::connect(&address.uri, address.ca_file.as_deref(), properties)
            .await
            .map_err(|e| e.to_string())?;
    let channel = connection.create_channel().await.map_err(text)?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(text)?;
    // The gateways declare it too, identically: whoever comes first creates it.
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(text)?;
    let replies = channel
        .basic_consume(
            DIRECT_REPLY_TO.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(text)?;
    Ok((connection, channel, replies))
}

/// Hands replies to their waiting requests until `stop` (Ok) or the channel ends (Err).
async fn serve_replies(
    commander: &Commander,
    mut replies: Consumer,
    stop: &CancellationToken,
) -> Result<(), String> {
    loop {
        let delivery = tokio::select! {
            delivery = replies.next() => delivery,
            () = stop.cancelled() => return Ok(()),
        };
        match delivery {
            Some(Ok(delivery)) => commander.deliver(delivery),
            Some(Err(error)) => return Err(text(error)),
            None => return Err("the reply consumer ended (channel or connection closed)".into()),
        }
    }
}

fn text(error: lapin::Error) -> String {
    error.to_string()
}
