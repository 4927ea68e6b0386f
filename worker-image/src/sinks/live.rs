//! Live sink: a transient copy of each processed message to the topic exchange the
//! application API's live streams bind to, without ever holding the pipeline back.
//!
//! A write hands the batch to a bounded buffer and returns at once; a publisher task
//! drains the buffer to the broker without `mandatory` and without confirms. A full
//! buffer, a broker that is away and an exchange that does not exist (no application API
//! yet) each drop the message for the live view only, counted by reason: the stored copy
//! is the other sinks' business, and the message is acknowledged as usual.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::sync::mpsc;
use tributary_contract::worker_config::{BatchConfig, LiveSinkConfig};
use tributary_service_kit::amqp;

use super::republish::DefaultBroker;
use super::{broker_not_found, exchange_exists, json_bytes, Prepared, SinkBuildError, SinkError};
use crate::metrics::Metrics;
use crate::record::Record;
use prometheus_client::metrics::counter::Counter;

/// The first wait after a failed connection or a missing exchange; doubled up to
/// [`MAX_RETRY_DELAY`].
pub const FIRST_RETRY_DELAY: Duration = Duration::from_millis(500);
/// The longest wait between attempts to reach the broker or find the exchange.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(10);
/// The most bytes of copies waiting for the publisher, whatever `bufferMessages` allows:
/// large messages fill the buffer by size before they fill it by count.
pub const MAX_BUFFER_BYTES: usize = 16 << 20;

/// Why the publisher could not pass copies on (a full buffer is counted by the write).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// The broker could not be reached or refused the publish.
    Unavailable,
    /// The exchange does not exist (nothing declared it yet).
    NoExchange,
}

/// The sink's series of `tributary_worker_live_total`, one per result.
#[derive(Clone)]
struct Counters {
    published: Counter,
    buffer_full: Counter,
    unavailable: Counter,
    no_exchange: Counter,
}

impl Counters {
    fn new(metrics: &Metrics, sink: &str) -> Self {
        Self {
            published: metrics.live(sink, "published"),
            buffer_full: metrics.live(sink, "buffer_full"),
            unavailable: metrics.live(sink, "unavailable"),
            no_exchange: metrics.live(sink, "no_exchange"),
        }
    }

    fn dropped(&self, reason: Dropped) -> &Counter {
        match reason {
            Dropped::Unavailable => &self.unavailable,
            Dropped::NoExchange => &self.no_exchange,
        }
    }
}

/// One message for the live exchange: its routing key (the device) and JSON body.
#[derive(Debug)]
struct Item {
    routing_key: String,
    id: String,
    body: Vec<u8>,
}

/// The live sink.
pub struct LiveSink {
    name: String,
    batch: BatchConfig,
    sender: mpsc::Sender<Item>,
    /// Bytes of the copies in the buffer (added by `write`, taken off by the publisher).
    buffered: Arc<AtomicUsize>,
    publisher: Mutex<Option<Publisher>>,
    counters: Counters,
}

impl std::fmt::Debug for LiveSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveSink")
            .field("name", &self.name)
            .finish()
    }
}

impl LiveSink {
    /// Builds the sink; the URI (and CA file) is the sink's own or the consumed broker's.
    /// The publisher starts with [`LiveSink::init`].
    pub fn build(
        config: &LiveSinkConfig,
        default: DefaultBroker<'_>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, SinkBuildError> {
        let (uri, ca_file) = default.or_own(
            &config.name,
            config.uri_file.as_deref(),
            config.ca_file.as_deref(),
        )?;
        if config.buffer_messages == 0 {
            return Err(SinkBuildError::Invalid {
                sink: config.name.clone(),
                message: "bufferMessages must be at least 1".into(),
            });
        }
        let (sender, receiver) = mpsc::channel(config.buffer_messages as usize);
        let buffered = Arc::new(AtomicUsize::new(0));
        let counters = Counters::new(&metrics, &config.name);
        let publisher = Publisher {
            sink: config.name.clone(),
            uri,
            ca_file,
            exchange: config.exchange.clone(),
            receiver,
            buffered: buffered.clone(),
            counters: counters.clone(),
        };
        Ok(Self {
            name: config.name.clone(),
            batch: config.batch.clone(),
            sender,
            buffered,
            publisher: Mutex::new(Some(publisher)),
            counters,
        })
    }

    /// The sink's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The batching policy.
    pub fn batch_config(&self) -> &BatchConfig {
        &self.batch
    }

    /// Starts the publisher task (once); it ends when the sink is dropped. Never fails:
    /// the broker is the publisher's to wait for.
    pub async fn init(&self) -> Result<(), SinkError> {
        let publisher = self.publisher.lock().map(|mut p| p.take()).unwrap_or(None);
        if let Some(publisher) = publisher {
            tokio::spawn(publisher.run());
        }
        Ok(())
    }

    /// The JSON body, routed by the message's `device` (empty when it has none).
    pub fn prepare(&self, record: &Record) -> Result<Prepared, String> {
        let device = record
            .value
            .get("device")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default();
        Ok(Prepared {
            id: record.id.clone(),
            key: Some(device.to_string()),
            bytes: json_bytes(&record.value),
            values: Vec::new(),
            refused: None,
        })
    }

    /// Hands the batch to the publisher; what does not fit (by count or by
    /// [`MAX_BUFFER_BYTES`]) is dropped and counted. Always succeeds at once.
    pub async fn write(&self, batch: &[Prepared]) -> Result<(), SinkError> {
        let mut full = 0;
        for prepared in batch {
            let size = prepared.bytes.len();
            let before = self.buffered.fetch_add(size, Ordering::SeqCst);
            if before + size > MAX_BUFFER_BYTES {
                self.buffered.fetch_sub(size, Ordering::SeqCst);
                full += 1;
                continue;
            }
            let item = Item {
                routing_key: prepared.key.clone().unwrap_or_default(),
                id: prepared.id.clone(),
                body: prepared.bytes.clone(),
            };
            if self.sender.try_send(item).is_err() {
                self.buffered.fetch_sub(size, Ordering::SeqCst);
                full += 1;
            }
        }
        self.counters.buffer_full.inc_by(full);
        Ok(())
    }
}

/// The task that drains the buffer to the broker.
struct Publisher {
    sink: String,
    uri: String,
    ca_file: Option<PathBuf>,
    exchange: String,
    receiver: mpsc::Receiver<Item>,
    buffered: Arc<AtomicUsize>,
    counters: Counters,
}

impl Publisher {
    /// The next copy from the buffer, its bytes taken off the buffer's count; `None` once
    /// the sink is gone.
    async fn next(&mut self) -> Option<Item> {
        let item = self.receiver.recv().await?;
        self.buffered.fetch_sub(item.body.len(), Ordering::SeqCst);
        Some(item)
    }

    async fn run(mut self) {
        let mut delay = FIRST_RETRY_DELAY;
        let mut last_problem: Option<Dropped> = None;
        loop {
            let problem = match self.connect().await {
                Ok((connection, channel)) => {
                    if last_problem.take().is_some() {
                        tracing::info!(sink = %self.sink, exchange = %self.exchange, "live exchange reached: publishing");
                    }
                    delay = FIRST_RETRY_DELAY;
                    let ended = self.publish_until_failure(&channel).await;
                    let _ = connection.close(200, "live sink done".into()).await;
                    match ended {
                        None => return,
                        Some(problem) => problem,
                    }
                }
                Err(problem) => problem,
            };
            if last_problem != Some(problem.0) {
                tracing::warn!(sink = %self.sink, exchange = %self.exchange, reason = %problem.1, "live messages are dropped until the exchange can be reached");
                last_problem = Some(problem.0);
            }
            if !self.drop_for(delay, problem.0).await {
                return;
            }
            delay = (delay * 2).min(MAX_RETRY_DELAY);
        }
    }

    /// A connection and a channel on which the exchange is known to exist.
    async fn connect(&self) -> Result<(Connection, Channel), (Dropped, String)> {
        let unavailable =
            |what: &str, e: &dyn std::fmt::Display| (Dropped::Unavailable, format!("{what}: {e}"));
        let properties =
            ConnectionProperties::default().with_connection_name("tributary-worker-live".into());
        let connection = amqp::connect(&self.uri, self.ca_file.as_deref(), properties)
            .await
            .map_err(|e| unavailable("connect", &e))?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| unavailable("channel", &e))?;
        // Passive: needs no permission, and declares nothing the worker does not own.
        let looked_up = exchange_exists(&channel, &self.exchange).await;
        match looked_up {
            Ok(()) => Ok((connection, channel)),
            Err(e) => {
                let _ = connection.close(200, "live exchange lookup".into()).await;
                if broker_not_found(&e) {
                    Err((Dropped::NoExchange, "the exchange does not exist".into()))
                } else {
                    Err(unavailable("exchange lookup", &e))
                }
            }
        }
    }

    /// Publishes buffered messages until the buffer closes (`None`: the sink is gone) or
    /// the broker fails (the message in hand is dropped and counted).
    async fn publish_until_failure(&mut self, channel: &Channel) -> Option<(Dropped, String)> {
        while let Some(item) = self.next().await {
            let properties = BasicProperties::default()
                .with_delivery_mode(1)
                .with_content_type("application/json".into())
                .with_message_id(item.id.as_str().into());
            let published = channel
                .basic_publish(
                    self.exchange.as_str().into(),
                    item.routing_key.as_str().into(),
                    BasicPublishOptions::default(),
                    &item.body,
                    properties,
                )
                .await;
            match published {
                Ok(_not_confirmed) => {
                    self.counters.published.inc();
                }
                Err(e) => {
                    let problem = if broker_not_found(&e) {
                        (Dropped::NoExchange, "the exchange was deleted".to_string())
                    } else {
                        (Dropped::Unavailable, format!("publish: {e}"))
                    };
                    self.counters.dropped(problem.0).inc();
                    return Some(problem);
                }
            }
        }
        None
    }

    /// Drops what arrives for `delay`, counted as `reason`; false when the sink is gone.
    async fn drop_for(&mut self, delay: Duration, reason: Dropped) -> bool {
        let deadline = tokio::time::Instant::now() + delay;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => return true,
                item = self.next() => match item {
                    Some(_) => {
                        self.counters.dropped(reason).inc();
                    }
                    None => return false,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(buffer_messages: u32) -> LiveSinkConfig {
        LiveSinkConfig {
            name: "view".into(),
            exchange: "tributary.live.t".into(),
            uri_file: None,
            ca_file: None,
            buffer_messages,
            batch: tributary_contract::worker_config::DEFAULT_REPUBLISH_BATCH,
        }
    }

    fn item(size: usize) -> Prepared {
        Prepared {
            id: "m".into(),
            key: Some("d".into()),
            bytes: vec![b'x'; size],
            values: Vec::new(),
            refused: None,
        }
    }

    #[tokio::test]
    async fn the_buffer_takes_no_more_than_its_bytes_or_its_count_and_counts_the_rest() {
        let metrics = Arc::new(Metrics::new());
        // Not started: nothing drains the buffer.
        let sink = LiveSink::build(&config(1000), "amqp://unused".into(), metrics.clone())
            .expect("builds");
        let big = MAX_BUFFER_BYTES / 3 + 1;
        sink.write(&[item(big), item(big), item(big), item(big)])
            .await
            .expect("never fails");
        // Two fit in the bytes; the third and fourth would pass them.
        assert_eq!(sink.buffered.load(Ordering::SeqCst), 2 * big);
        sink.write(&[item(10)]).await.expect("never fails");
        assert_eq!(
            sink.buffered.load(Ordering::SeqCst),
            2 * big + 10,
            "small ones still fit"
        );
        let text = metrics.render();
        assert!(
            text.contains("tributary_worker_live_total{sink=\"view\",result=\"buffer_full\"} 2"),
            "{text}"
        );

        let sink = LiveSink::build(&config(2), "amqp://unused".into(), Arc::new(Metrics::new()))
            .expect("builds");
        sink.write(&[item(1), item(1), item(1)])
            .await
            .expect("never fails");
        assert_eq!(sink.buffered.load(Ordering::SeqCst), 2, "two by count");
    }
}
