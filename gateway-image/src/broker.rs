//! The RabbitMQ publisher: one connection with a confirm-mode channel, reconnected after
//! failures, publishing with the `mandatory` flag through the default exchange.
//!
//! A message counts as delivered only when the broker acked it without returning it. When
//! the connection dies, every unconfirmed publish fails (it is never reported as
//! delivered), and new publishes fail fast with `Unavailable` until the reconnect.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::Confirmation;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tributary_contract::gateway_config::{BrokerConfig, DeliveryMode};
use tributary_service_kit::amqp;

use crate::metrics::Metrics;

/// Why a publish was not confirmed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PublishError {
    /// Not connected to the broker.
    #[error("broker unavailable")]
    Unavailable,
    /// The broker nacked the message.
    #[error("broker refused the message")]
    Nacked,
    /// No queue of that name: the broker returned the mandatory message.
    #[error("queue {0} does not exist")]
    Unroutable(String),
    /// No confirm within the confirm timeout.
    #[error("no confirm from the broker in time")]
    Timeout,
    /// The connection failed while the message was in flight.
    #[error("broker connection lost")]
    Lost,
}

/// Handle for publishing; cheap to share.
pub struct Broker {
    channel: watch::Receiver<Option<Channel>>,
    metrics: Arc<Metrics>,
    confirm_timeout: Duration,
}

impl Broker {
    /// Starts the connection manager; it retries until `close` is cancelled, then closes
    /// the connection.
    pub fn start(
        config: BrokerConfig,
        connection_name: String,
        metrics: Arc<Metrics>,
        close: CancellationToken,
    ) -> (Arc<Self>, tokio::task::JoinHandle<()>) {
        let (sender, receiver) = watch::channel(None);
        let broker = Arc::new(Self {
            channel: receiver,
            metrics: Arc::clone(&metrics),
            confirm_timeout: Duration::from_millis(config.confirm_timeout_ms),
        });
        let task = tokio::spawn(manage_connection(
            config,
            connection_name,
            sender,
            metrics,
            close,
        ));
        (broker, task)
    }

    /// Whether a confirm-mode channel is open.
    pub fn is_connected(&self) -> bool {
        self.channel
            .borrow()
            .as_ref()
            .is_some_and(|channel| channel.status().connected())
    }

    /// Waits until connected or `deadline` passes.
    pub async fn wait_connected(&self, deadline: Duration) -> bool {
        let mut receiver = self.channel.clone();
        tokio::time::timeout(deadline, receiver.wait_for(|channel| channel.is_some()))
            .await
            .is_ok_and(|result| result.is_ok())
    }

    /// Publishes `body` persistently to every queue in `queues`. In `Confirmed` mode this
    /// returns `Ok` only once the broker confirmed every copy; in `Fast` mode once the
    /// copies are handed to the connection.
    ///
    /// The whole operation is bounded by the confirm timeout, so a blocked connection
    /// (broker memory or disk alarm) fails the publish instead of hanging the device.
    pub async fn publish(
        &self,
        queues: &[String],
        message_id: &str,
        body: Bytes,
        mode: DeliveryMode,
    ) -> Result<(), PublishError> {
        tokio::time::timeout(
            self.confirm_timeout,
            self.publish_unbounded(queues, message_id, body, mode),
        )
        .await
        .unwrap_or(Err(PublishError::Timeout))
    }

    async fn publish_unbounded(
        &self,
        queues: &[String],
        message_id: &str,
        body: Bytes,
        mode: DeliveryMode,
    ) -> Result<(), PublishError> {
        let channel = self
            .channel
            .borrow()
            .clone()
            .ok_or(PublishError::Unavailable)?;
        if !channel.status().connected() {
            return Err(PublishError::Unavailable);
        }
        let properties = BasicProperties::default()
            .with_message_id(message_id.into())
            .with_delivery_mode(2)
            .with_content_type("application/json".into());
        let started = Instant::now();
        self.metrics.in_flight.inc();
        let _in_flight = scopeguard(|| {
            self.metrics.in_flight.dec();
        });
        let mut confirms = Vec::with_capacity(queues.len());
        for queue in queues {
            let confirm = channel
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        immediate: false,
                    },
                    &body,
                    properties.clone(),
                )
                .await
                .map_err(|_| PublishError::Lost)?;
            confirms.push((queue.clone(), confirm));
        }
        match mode {
            DeliveryMode::Fast => {
                tokio::spawn(async move {
                    for (_, confirm) in confirms {
                        let _ = confirm.await;
                    }
                });
                Ok(())
            }
            DeliveryMode::Confirmed => {
                let wait_all = async {
                    for (queue, confirm) in confirms {
                        match confirm.await {
                            Ok(Confirmation::Ack(None)) => {}
                            Ok(Confirmation::Ack(Some(_))) => {
                                return Err(PublishError::Unroutable(queue))
                            }
                            Ok(Confirmation::Nack(_)) => return Err(PublishError::Nacked),
                            Ok(Confirmation::NotRequested) | Err(_) => {
                                return Err(PublishError::Lost)
                            }
                        }
                    }
                    Ok(())
                };
                let result = wait_all.await;
                if result.is_ok() {
                    self.metrics
                        .confirm_duration
                        .observe(started.elapsed().as_secs_f64());
                }
                result
            }
        }
    }
}

impl Broker {
    /// Publishes a device's response to the sender's `reply_to` (RabbitMQ's direct
    /// reply-to) through the default exchange, confirmed, within the confirm timeout. Not
    /// `mandatory`: RabbitMQ returns every direct reply-to publish that is (NO_ROUTE, as it
    /// bypasses routing) while still delivering it; a reply to a sender that stopped
    /// waiting is dropped by the broker.
    pub async fn publish_reply(
        &self,
        reply_to: &str,
        properties: BasicProperties,
        body: &[u8],
    ) -> Result<(), PublishError> {
        let publish = async {
            let channel = self
                .channel
                .borrow()
                .clone()
                .filter(|channel| channel.status().connected())
                .ok_or(PublishError::Unavailable)?;
            self.metrics.in_flight.inc();
            let _in_flight = scopeguard(|| {
                self.metrics.in_flight.dec();
            });
            let confirm = channel
                .basic_publish(
                    "".into(),
                    reply_to.into(),
                    BasicPublishOptions::default(),
                    body,
                    properties,
                )
                .await
                .map_err(|_| PublishError::Lost)?;
            match confirm.await {
                Ok(Confirmation::Ack(None)) => Ok(()),
                Ok(Confirmation::Ack(Some(_))) => Err(PublishError::Unroutable(reply_to.into())),
                Ok(Confirmation::Nack(_)) => Err(PublishError::Nacked),
                Ok(Confirmation::NotRequested) | Err(_) => Err(PublishError::Lost),
            }
        };
        tokio::time::timeout(self.confirm_timeout, publish)
            .await
            .unwrap_or(Err(PublishError::Timeout))
    }
}

/// Runs `f` when dropped (also when the publish future is cancelled).
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

async fn manage_connection(
    config: BrokerConfig,
    connection_name: String,
    sender: watch::Sender<Option<Channel>>,
    metrics: Arc<Metrics>,
    close: CancellationToken,
) {
    let max_delay = Duration::from_millis(config.reconnect_max_delay_ms.max(100));
    let mut delay = Duration::from_millis(100);
    while !close.is_cancelled() {
        match connect(&config, &connection_name).await {
            Ok((connection, channel)) => {
                tracing::info!("connected to the broker");
                delay = Duration::from_millis(100);
                metrics.broker_connects.inc();
                metrics.broker_connected.set(1);
                sender.send_replace(Some(channel.clone()));
                watch_connection(&connection, &channel, &close).await;
                sender.send_replace(None);
                metrics.broker_connected.set(0);
                if close.is_cancelled() {
                    let _ = connection.close(200, "gateway shutting down".into()).await;
                    tracing::info!("broker connection closed");
                    return;
                }
                tracing::warn!("broker connection lost; reconnecting");
            }
            Err(error) => {
                tracing::warn!(error = %error, retry_in_ms = delay.as_millis() as u64, "cannot connect to the broker");
            }
        }
        tokio::select! {
            _ = close.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(max_delay);
    }
}

async fn connect(
    config: &BrokerConfig,
    connection_name: &str,
) -> Result<(Connection, Channel), String> {
    let uri = read_uri(config).await?;
    let uri = uri.as_str();
    let properties = ConnectionProperties::default().with_connection_name(connection_name.into());
    // A certificate the CA file does not vouch for fails here, like an unreachable broker:
    // readiness stays false and devices are pushed back, nothing is acknowledged.
    let attempt = async {
        let connection = amqp::connect(uri, config.ca_file.as_deref(), properties)
            .await
            .map_err(|error| error.to_string())?;
        let channel = async {
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            Ok::<_, lapin::Error>(channel)
        }
        .await
        .map_err(|error| amqp::redact(&error.to_string(), uri))?;
        Ok::<_, String>((connection, channel))
    };
    match tokio::time::timeout(Duration::from_secs(10), attempt).await {
        Ok(result) => result,
        Err(_) => Err("timed out".into()),
    }
}

/// The broker URI from its file (a Secret's key), trimmed; the error never holds it.
pub(crate) async fn read_uri(config: &BrokerConfig) -> Result<String, String> {
    let uri = tokio::fs::read_to_string(&config.uri_file)
        .await
        .map_err(|error| format!("reading {}: {error}", config.uri_file.display()))?;
    Ok(uri.trim().to_owned())
}

/// Returns when the connection or channel fails, or `close` is cancelled.
async fn watch_connection(connection: &Connection, channel: &Channel, close: &CancellationToken) {
    let mut events = connection.events_listener();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = close.cancelled() => return,
            event = events.next() => match event {
                Some(lapin::Event::Error(error)) => {
                    tracing::warn!(error = %error, "broker connection error");
                    return;
                }
                None => return,
                Some(_) => {}
            },
            _ = tick.tick() => {
                if !connection.status().connected() || !channel.status().connected() {
                    return;
                }
            }
        }
    }
}
