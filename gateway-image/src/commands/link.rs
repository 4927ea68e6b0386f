//! The gateway's connection to the broker for commands, apart from the publisher's: it
//! never publishes, so a broker that blocks publishers (memory or disk alarm) still
//! delivers commands and takes acknowledgements, and its channel errors never touch
//! ingest.
//!
//! On it: a few channels for declarations (a refused one closes its channel, which is
//! reopened for the next; a device's declarations always take the same one, so they stay
//! in order), and a few consumer channels shared by every device consumer.
//! RabbitMQ allows 2047 channels per connection, so consumers never get one each: each
//! consumer's prefetch is set by `basic.qos` (per consumer) just before its
//! `basic.consume`, the pair serialized per channel.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, Consumer};
use tokio::sync::{watch, Mutex, MutexGuard};
use tokio_util::sync::CancellationToken;
use tributary_contract::gateway_config::BrokerConfig;
use tributary_service_kit::amqp;

use super::topology::BrokerError;
use crate::broker::read_uri;

/// Consumer channels per connection.
pub const CONSUMER_CHANNELS: usize = 8;

/// Declaration channels per connection.
pub const DECLARE_CHANNELS: usize = 8;

/// Longest wait for one broker operation on commands.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest wait for a turn on a declaration or consumer channel (many devices subscribing
/// at once queue up there).
pub const TURN_TIMEOUT: Duration = Duration::from_secs(60);

/// Called with each new connection (declare the topology, start the expired consumer).
pub type OnConnect = Arc<dyn Fn(Arc<Linked>) + Send + Sync>;

/// Handle on the commands connection; cheap to share.
pub struct Link {
    state: watch::Receiver<Option<Arc<Linked>>>,
}

/// One live connection and its channels.
pub struct Linked {
    connection: Connection,
    declare: Vec<Mutex<Option<Channel>>>,
    consumers: Vec<Mutex<Option<Channel>>>,
    next: AtomicUsize,
}

impl Link {
    /// Starts the connection manager; it reconnects with backoff until `close` is
    /// cancelled, then closes the connection.
    pub fn start(
        config: BrokerConfig,
        connection_name: String,
        on_connect: OnConnect,
        close: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (sender, state) = watch::channel(None);
        let task = tokio::spawn(manage(config, connection_name, sender, on_connect, close));
        (Self { state }, task)
    }

    /// The live connection, if any.
    pub fn current(&self) -> Option<Arc<Linked>> {
        self.state
            .borrow()
            .clone()
            .filter(|linked| linked.connection.status().connected())
    }

    /// The live connection, or `Unavailable`.
    pub fn linked(&self) -> Result<Arc<Linked>, BrokerError> {
        self.current().ok_or(BrokerError::Unavailable)
    }

    /// Waits until connected or `deadline` passes.
    pub async fn wait_connected(&self, deadline: Duration) -> bool {
        let mut state = self.state.clone();
        tokio::time::timeout(deadline, state.wait_for(|linked| linked.is_some()))
            .await
            .is_ok_and(|result| result.is_ok())
    }
}

impl Linked {
    /// The declaration channel of `key` (a device id), reopened when an error closed it,
    /// held (and so serialized) while the guard lives.
    pub async fn declarer(
        &self,
        key: &str,
    ) -> Result<(MutexGuard<'_, Option<Channel>>, Channel), BrokerError> {
        let slot = &self.declare[slot_of(key, self.declare.len())];
        let mut guard = tokio::time::timeout(TURN_TIMEOUT, slot.lock())
            .await
            .map_err(|_| BrokerError::Unavailable)?;
        let channel = reopen(&self.connection, &mut guard).await?;
        Ok((guard, channel))
    }

    /// Starts consuming `queue` with `prefetch` unacknowledged deliveries at most, on one
    /// of the shared consumer channels; returns that channel and the consumer.
    pub async fn consume(
        &self,
        queue: &str,
        tag: &str,
        prefetch: u16,
    ) -> Result<(Channel, Consumer), BrokerError> {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.consumers.len();
        let mut guard = tokio::time::timeout(TURN_TIMEOUT, self.consumers[index].lock())
            .await
            .map_err(|_| BrokerError::Unavailable)?;
        let channel = reopen(&self.connection, &mut guard).await?;
        let start = async {
            channel
                .basic_qos(prefetch.max(1), BasicQosOptions { global: false })
                .await?;
            channel
                .basic_consume(
                    queue.into(),
                    tag.into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
        };
        match tokio::time::timeout(OPERATION_TIMEOUT, start).await {
            Ok(Ok(consumer)) => Ok((channel, consumer)),
            Ok(Err(error)) => Err(error.into()),
            Err(_) => Err(BrokerError::Unavailable),
        }
    }

    /// A channel of its own (the expired-commands consumer).
    pub async fn own_channel(&self) -> Result<Channel, BrokerError> {
        Ok(self.connection.create_channel().await?)
    }
}

/// Which of `slots` serves `key` (stable for a key).
fn slot_of(key: &str, slots: usize) -> usize {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    usize::try_from(hasher.finish() % slots.max(1) as u64).unwrap_or(0)
}

/// The channel in `slot`, or a new one when it is missing or closed.
async fn reopen(
    connection: &Connection,
    slot: &mut Option<Channel>,
) -> Result<Channel, BrokerError> {
    if let Some(channel) = slot.as_ref().filter(|c| c.status().connected()) {
        return Ok(channel.clone());
    }
    let channel = tokio::time::timeout(OPERATION_TIMEOUT, connection.create_channel())
        .await
        .map_err(|_| BrokerError::Unavailable)??;
    *slot = Some(channel.clone());
    Ok(channel)
}

async fn manage(
    config: BrokerConfig,
    connection_name: String,
    sender: watch::Sender<Option<Arc<Linked>>>,
    on_connect: OnConnect,
    close: CancellationToken,
) {
    let max_delay = Duration::from_millis(config.reconnect_max_delay_ms.max(100));
    let mut delay = Duration::from_millis(100);
    while !close.is_cancelled() {
        match connect(&config, &connection_name).await {
            Ok(connection) => {
                tracing::info!("connected to the broker for commands");
                delay = Duration::from_millis(100);
                let linked = Arc::new(Linked {
                    connection,
                    declare: (0..DECLARE_CHANNELS).map(|_| Mutex::new(None)).collect(),
                    consumers: (0..CONSUMER_CHANNELS).map(|_| Mutex::new(None)).collect(),
                    next: AtomicUsize::new(0),
                });
                on_connect(Arc::clone(&linked));
                sender.send_replace(Some(Arc::clone(&linked)));
                watch_connection(&linked.connection, &close).await;
                sender.send_replace(None);
                if close.is_cancelled() {
                    let _ = linked
                        .connection
                        .close(200, "gateway shutting down".into())
                        .await;
                    return;
                }
                tracing::warn!("commands broker connection lost; reconnecting");
            }
            Err(error) => {
                tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "cannot connect to the broker for commands");
            }
        }
        tokio::select! {
            _ = close.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(max_delay);
    }
}

async fn connect(config: &BrokerConfig, connection_name: &str) -> Result<Connection, String> {
    let uri = read_uri(config).await?;
    let properties = ConnectionProperties::default().with_connection_name(connection_name.into());
    let attempt = amqp::connect(&uri, config.ca_file.as_deref(), properties);
    match tokio::time::timeout(OPERATION_TIMEOUT, attempt).await {
        Ok(result) => result.map_err(|error| error.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

/// Returns when the connection fails or `close` is cancelled.
async fn watch_connection(connection: &Connection, close: &CancellationToken) {
    let mut events = connection.events_listener();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = close.cancelled() => return,
            event = events.next() => match event {
                // A channel error (a refused declaration) closes that channel only.
                Some(lapin::Event::Error(error)) if !error.is_amqp_soft_error() => {
                    tracing::warn!(%error, "commands broker connection error");
                    return;
                }
                None => return,
                Some(_) => {}
            },
            _ = tick.tick() => {
                if !connection.status().connected() {
                    return;
                }
            }
        }
    }
}
