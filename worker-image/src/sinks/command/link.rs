//! The command sink's broker link: one connection and one confirm-mode channel to the
//! broker of the tenant's command exchange, whether that exchange exists, and the
//! publishing of a batch of commands with what became of each.
//!
//! The worker declares nothing: the exchange belongs to the tenant's gateways (its broker
//! user needs only to write to it), and it is looked up passively, which needs no
//! permission. While it does not exist no device can have a queue bound to it, so
//! commands are undeliverable, exactly as for a device without a queue; the lookup is
//! repeated at most every [`EXCHANGE_RECHECK`].

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::sync::Mutex;
use tributary_service_kit::amqp;

use super::encode::{outcomes, Delivery};
use crate::sinks::{broker_not_found, exchange_exists, SinkError};

/// How long a missing exchange is taken as missing before it is looked up again.
pub const EXCHANGE_RECHECK: Duration = Duration::from_secs(5);

/// One command ready to publish.
#[derive(Debug, Clone)]
pub struct Outgoing<'a> {
    /// The command id (also in `properties`).
    pub id: String,
    /// The device id: the routing key.
    pub device: &'a str,
    /// The JSON payload.
    pub payload: &'a [u8],
    /// The AMQP properties.
    pub properties: BasicProperties,
}

#[derive(Debug, Clone, Copy)]
enum Exchange {
    Unknown,
    Present,
    Missing(Instant),
}

struct State {
    connection: Option<Connection>,
    channel: Option<Channel>,
    exchange: Exchange,
}

/// The link to the command broker.
pub struct Link {
    uri: String,
    ca_file: Option<PathBuf>,
    exchange: String,
    state: Mutex<State>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("exchange", &self.exchange)
            .finish()
    }
}

fn unavailable(what: &'static str) -> impl Fn(lapin::Error) -> SinkError {
    move |e| SinkError::Unavailable(format!("{what}: {e}"))
}

impl Link {
    /// A link (not connected yet) publishing to `exchange` on the broker at `uri`.
    pub fn new(uri: String, ca_file: Option<PathBuf>, exchange: String) -> Self {
        Self {
            uri,
            ca_file,
            exchange,
            state: Mutex::new(State {
                connection: None,
                channel: None,
                exchange: Exchange::Unknown,
            }),
        }
    }

    /// Connects (the exchange is looked up with the first batch).
    pub async fn init(&self) -> Result<(), SinkError> {
        let mut state = self.state.lock().await;
        self.channel(&mut state).await.map(|_| ())
    }

    /// Publishes the commands and waits for every confirm; what became of each, in order.
    /// Any broker or channel failure is an outage: the whole batch is sent again later
    /// (with the same ids).
    pub async fn send(&self, commands: &[Outgoing<'_>]) -> Result<Vec<Delivery>, SinkError> {
        // Held for the whole batch: the client hands returned messages to the confirms that
        // complete next, so only one batch at a time may await confirms on the channel.
        let mut state = self.state.lock().await;
        let channel = self.channel(&mut state).await?;
        if !self.exchange_exists(&mut state, &channel).await? {
            return Ok(vec![Delivery::NoExchange; commands.len()]);
        }
        let result = publish(&channel, &self.exchange, commands).await;
        if result.is_err() {
            // A deleted exchange also closes the channel: look it up again next time.
            state.channel = None;
            state.exchange = Exchange::Unknown;
        }
        result
    }

    async fn channel(&self, state: &mut State) -> Result<Channel, SinkError> {
        if let (Some(connection), Some(channel)) = (&state.connection, &state.channel) {
            if connection.status().connected() && channel.status().connected() {
                return Ok(channel.clone());
            }
        }
        let connected = state
            .connection
            .as_ref()
            .is_some_and(|c| c.status().connected());
        if !connected {
            state.channel = None;
            state.exchange = Exchange::Unknown;
            // A certificate error is an outage like any other: waited for.
            let properties = ConnectionProperties::default()
                .with_connection_name("tributary-worker-commands".into());
            let connection = amqp::connect(&self.uri, self.ca_file.as_deref(), properties)
                .await
                .map_err(|e| SinkError::Unavailable(format!("connect: {e}")))?;
            state.connection = Some(connection);
        }
        let Some(connection) = &state.connection else {
            return Err(SinkError::Unavailable("no connection".into()));
        };
        let channel = connection
            .create_channel()
            .await
            .map_err(unavailable("channel"))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(unavailable("confirm.select"))?;
        state.channel = Some(channel.clone());
        Ok(channel)
    }

    /// Whether the exchange exists, looked up passively (a missing one closes the channel).
    async fn exchange_exists(
        &self,
        state: &mut State,
        channel: &Channel,
    ) -> Result<bool, SinkError> {
        match state.exchange {
            Exchange::Present => return Ok(true),
            Exchange::Missing(since) if since.elapsed() < EXCHANGE_RECHECK => return Ok(false),
            Exchange::Missing(_) | Exchange::Unknown => {}
        }
        let looked_up = exchange_exists(channel, &self.exchange).await;
        match looked_up {
            Ok(()) => {
                state.exchange = Exchange::Present;
                Ok(true)
            }
            Err(e) if broker_not_found(&e) => {
                tracing::info!(exchange = %self.exchange, "the command exchange does not exist (no gateway of the tenant declared it): commands are undeliverable");
                state.channel = None;
                state.exchange = Exchange::Missing(Instant::now());
                Ok(false)
            }
            Err(e) => {
                state.channel = None;
                Err(SinkError::Unavailable(format!("exchange lookup: {e}")))
            }
        }
    }
}

/// Publishes mandatory commands routed by device id and classifies their confirms.
async fn publish(
    channel: &Channel,
    exchange: &str,
    commands: &[Outgoing<'_>],
) -> Result<Vec<Delivery>, SinkError> {
    let mut confirms = Vec::with_capacity(commands.len());
    for command in commands {
        let confirm = channel
            .basic_publish(
                exchange.into(),
                command.device.into(),
                // Mandatory: a command no queue takes comes back instead of vanishing.
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                command.payload,
                command.properties.clone(),
            )
            .await
            .map_err(unavailable("publish"))?;
        confirms.push(confirm);
    }
    let mut acked = Vec::with_capacity(confirms.len());
    let mut returned = HashSet::new();
    for confirm in confirms {
        let confirmation = confirm.await.map_err(unavailable("confirm"))?;
        acked.push(confirmation.is_ack());
        if let Some(message) = confirmation.take_message() {
            if let Some(id) = message.delivery.properties.message_id() {
                returned.insert(id.to_string());
            }
        }
    }
    let ids: Vec<String> = commands.iter().map(|c| c.id.clone()).collect();
    Ok(outcomes(&ids, &acked, &returned))
}
