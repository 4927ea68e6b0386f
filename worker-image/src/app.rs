//! The worker's lifecycle: build everything from the config (failing fast on a bad one),
//! connect, consume until shutdown, then drain: stop consuming, let in-flight messages reach
//! the sinks, flush every batch, settle, close — within the grace period.
//!
//! A lost broker connection ends one consuming session, not the worker: the session drains
//! like a shutdown (what it could not acknowledge returns to the queue and is stored again
//! idempotently), and the worker reconnects with backoff and consumes again.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use thiserror::Error;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tributary_contract::worker_config::{ProcessingConfig, WorkerConfig};
use tributary_service_kit::amqp;

use crate::ack::{Finisher, FinisherSetup};
use crate::ack_window::{Acks, OutOfOrder};
use crate::batch::{backoff, effective_batch, SinkRunner};
use crate::container::ContainerClient;
use crate::expr::CelEnv;
use crate::http::{serve, Health};
use crate::metrics::Metrics;
use crate::outages::Outages;
use crate::pipeline::{Pipeline, PipelineBuildError};
use crate::process::{Mode, Processor};
use crate::sinks::republish::DefaultBroker;
use crate::sinks::{read_secret, Sink, SinkBuildError, SinkContext};

/// A session that lasted this long was a working one: after it ends, reconnecting starts
/// from the shortest backoff.
const STABLE_SESSION: Duration = Duration::from_secs(30);

/// A worker that cannot start.
#[derive(Debug, Error)]
pub enum BuildError {
    /// The AMQP URI file cannot be read.
    #[error("queue: {0}")]
    Uri(SinkBuildError),
    /// A pipeline step is invalid.
    #[error(transparent)]
    Pipeline(#[from] PipelineBuildError),
    /// The custom container endpoint is invalid.
    #[error("processing.container: {0}")]
    Container(String),
    /// A sink is invalid.
    #[error(transparent)]
    Sink(#[from] SinkBuildError),
}

/// A worker that stopped on an error.
#[derive(Debug, Error)]
pub enum RunError {
    /// The metrics listener cannot bind.
    #[error("http.listen {listen}: {source}")]
    Listen {
        /// The address.
        listen: String,
        /// The bind error.
        source: std::io::Error,
    },
    /// A broker operation failed.
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    /// The broker closed the consumer (connection lost, queue deleted).
    #[error("broker closed the consumer")]
    ConsumerClosed,
    /// The channel skipped or repeated a delivery tag: bulk acks could cover the wrong
    /// messages, so the session ends and its unacknowledged messages return to the queue.
    #[error("broker delivery tags: {0}")]
    DeliveryTags(#[from] OutOfOrder),
}

/// A worker ready to run.
pub struct Worker {
    config: WorkerConfig,
    amqp_uri: String,
    mode: Arc<Mode>,
    sinks: Vec<Arc<Sink>>,
    metrics: Arc<Metrics>,
    outages: Arc<Outages>,
    health: Arc<Health>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("queue", &self.config.queue.name)
            .field("sinks", &self.sinks)
            .finish()
    }
}

impl Worker {
    /// Compiles the processing, builds the sinks and reads the secrets; no network yet.
    pub fn build(config: WorkerConfig) -> Result<Self, BuildError> {
        let env = CelEnv::default();
        let amqp_uri = read_secret("queue", &config.queue.uri_file).map_err(BuildError::Uri)?;
        let mode = match &config.processing {
            None => Mode::PassThrough,
            Some(ProcessingConfig::Pipeline(p)) => Mode::Pipeline(Pipeline::compile(&env, p)?),
            Some(ProcessingConfig::Container(c)) => {
                Mode::Container(ContainerClient::new(c).map_err(BuildError::Container)?)
            }
        };
        let metrics = Arc::new(Metrics::new());
        let sinks = config
            .sinks
            .iter()
            .map(|c| {
                let context = SinkContext {
                    broker: DefaultBroker {
                        uri: &amqp_uri,
                        ca_file: config.queue.ca_file.as_deref(),
                    },
                    metrics: metrics.clone(),
                };
                Sink::build(&env, c, context).map(Arc::new)
            })
            .collect::<Result<Vec<_>, _>>()?;
        for sink in &sinks {
            let configured = sink.batch_config().max_messages;
            let effective = effective_batch(sink.batch_config(), config.queue.prefetch);
            if effective.max_messages < configured {
                tracing::info!(
                    sink = sink.name(),
                    prefetch = config.queue.prefetch,
                    configured,
                    batch = effective.max_messages,
                    "batches limited to a share of queue.prefetch, so that the next one fills while one is written"
                );
            }
        }
        Ok(Self {
            config,
            amqp_uri,
            mode: Arc::new(mode),
            sinks,
            outages: Arc::new(Outages::new(metrics.clone())),
            metrics,
            health: Arc::new(Health::default()),
        })
    }

    /// The metrics (for tests and embedding).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Runs until `shutdown` is cancelled (then drains); reconnects after a broker loss.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), RunError> {
        let http_stop = CancellationToken::new();
        let listen = self.config.http.listen.clone();
        let http = serve(
            &listen,
            self.health.clone(),
            self.metrics.clone(),
            self.outages.clone(),
            http_stop.clone(),
        )
        .await
        .map_err(|source| RunError::Listen { listen, source })?;
        let result = self.consume(shutdown).await;
        http_stop.cancel();
        let _ = http.await;
        result
    }

    async fn consume(&mut self, shutdown: CancellationToken) -> Result<(), RunError> {
        let mut sinks_ready = false;
        let mut quick_failures = 0;
        loop {
            let Some(connection) = self.connect(&shutdown).await else {
                return Ok(());
            };
            if !sinks_ready {
                if !self.init_sinks(&shutdown).await {
                    return Ok(());
                }
                sinks_ready = true;
            }
            let started = Instant::now();
            let Err(error) = self.session(connection, &shutdown).await else {
                return Ok(());
            };
            if shutdown.is_cancelled() {
                return Ok(());
            }
            // A session that failed at once (queue missing, access refused) backs off more
            // each time; one that ran for a while starts the backoff afresh.
            quick_failures = if started.elapsed() >= STABLE_SESSION {
                1
            } else {
                quick_failures + 1
            };
            let delay = backoff(&self.config.retry, quick_failures);
            self.metrics.broker_reconnects.inc();
            tracing::warn!(
                %error,
                delay_ms = delay.as_millis() as u64,
                "broker session ended; unacknowledged messages return to the queue; reconnecting"
            );
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One consuming session on `connection`, until shutdown (`Ok`) or a broker error, then
    /// the drain.
    async fn session(
        &mut self,
        connection: Connection,
        shutdown: &CancellationToken,
    ) -> Result<(), RunError> {
        // Cancelled with the worker's shutdown, or at the end of this session's drain so no
        // task of a lost session outlives it (retrying a sink for a dead channel).
        let session_stop = shutdown.child_token();
        let _stop_on_return = session_stop.clone().drop_guard();
        let queue = self.config.queue.clone();
        let consume_channel = connection.create_channel().await?;
        consume_channel
            .basic_qos(queue.prefetch, BasicQosOptions::default())
            .await?;
        let publish_channel = connection.create_channel().await?;
        publish_channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        if queue.declare {
            self.declare(&consume_channel).await?;
        }
        let acks = Arc::new(Acks::new(self.metrics.clone()));
        let (processor, runners) = self.start_pipeline(&publish_channel, &acks, &session_stop);
        let tag = format!("tributary-worker-{}", std::process::id());
        let mut consumer = consume_channel
            .basic_consume(
                queue.name.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        // Spawned once nothing can fail before the drain, which closes it.
        let ack_task = tokio::spawn(acks.clone().run());
        self.health.ready.store(true, Ordering::Relaxed);
        tracing::info!(queue = %queue.name, prefetch = queue.prefetch, concurrency = queue.concurrency, "consuming");

        let concurrency = queue.concurrency;
        let permits = Arc::new(Semaphore::new(concurrency as usize));
        let outcome = self
            .hand_out(&mut consumer, (&processor, &acks), &permits, shutdown)
            .await;
        self.health.ready.store(false, Ordering::Relaxed);
        tracing::info!("draining: stop consuming, flush batches, settle");
        let grace = Duration::from_secs(self.config.shutdown_grace_seconds);
        let drained = tokio::time::timeout(grace, async {
            let _ = consume_channel
                .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                .await;
            // Every processing task has handed its message to the sinks once all permits
            // are back; dropping the processor then closes the sinks' queues.
            let _ = permits.acquire_many(concurrency).await;
            drop(processor);
            for runner in runners {
                let _ = runner.await;
            }
            // Everything is settled: send the last acks before the channel closes.
            acks.close();
            let _ = ack_task.await;
        })
        .await;
        // After a drain cut short too: the task sends what is settled and ends.
        acks.close();
        if drained.is_err() {
            tracing::warn!(
                grace_seconds = grace.as_secs(),
                "grace period over; unsettled messages return to the queue"
            );
        }
        // Closing requeues whatever is still unacknowledged (prefetched, never processed).
        let _ = consume_channel.close(200, "worker stopping".into()).await;
        let _ = publish_channel.close(200, "worker stopping".into()).await;
        let _ = connection.close(200, "worker stopping".into()).await;
        outcome
    }

    /// The session's finisher, one batching task per sink and the processor feeding them.
    fn start_pipeline(
        &self,
        publish_channel: &Channel,
        acks: &Arc<Acks>,
        session_stop: &CancellationToken,
    ) -> (Arc<Processor>, Vec<tokio::task::JoinHandle<()>>) {
        let queue = &self.config.queue;
        let finisher = Arc::new(Finisher::new(FinisherSetup {
            queue: queue.name.clone(),
            acks: acks.clone(),
            dead_letter: self.config.dead_letter.clone(),
            channel: Some(publish_channel.clone()),
            metrics: self.metrics.clone(),
            retry: self.config.retry.clone(),
            outages: self.outages.clone(),
            stop: session_stop.clone(),
        }));
        let mut runners = Vec::new();
        let mut senders = Vec::new();
        for sink in &self.sinks {
            let (tx, rx) = mpsc::channel(usize::from(queue.prefetch).max(1));
            let runner = SinkRunner {
                sink: sink.clone(),
                retry: self.config.retry.clone(),
                finisher: finisher.clone(),
                metrics: self.metrics.clone(),
                outages: self.outages.clone(),
                shutdown: session_stop.clone(),
                prefetch: queue.prefetch,
            };
            runners.push(tokio::spawn(Arc::new(runner).run(rx)));
            senders.push((sink.clone(), tx));
        }
        let processor = Arc::new(Processor {
            mode: self.mode.clone(),
            sinks: senders,
            finisher,
            metrics: self.metrics.clone(),
            retry: self.config.retry.clone(),
            delivery_limit: queue.delivery_limit,
            outages: self.outages.clone(),
            shutdown: session_stop.clone(),
        });
        (processor, runners)
    }

    /// Records each delivery's tag, then hands it to a processing task (at most `permits` at
    /// once) until shutdown (`Ok`) or a broker error.
    async fn hand_out(
        &self,
        consumer: &mut lapin::Consumer,
        (processor, acks): (&Arc<Processor>, &Acks),
        permits: &Arc<Semaphore>,
        shutdown: &CancellationToken,
    ) -> Result<(), RunError> {
        loop {
            let next = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                next = consumer.next() => next,
            };
            let delivery = match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(e)) => return Err(RunError::Broker(e)),
                None => return Err(RunError::ConsumerClosed),
            };
            self.metrics.consumed.inc();
            acks.delivered(delivery.delivery_tag)?;
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return Ok(());
            };
            let processor = processor.clone();
            tokio::spawn(async move {
                processor.process(delivery).await;
                drop(permit);
            });
        }
    }

    async fn connect(&self, shutdown: &CancellationToken) -> Option<Connection> {
        let mut failures = 0;
        loop {
            let properties =
                ConnectionProperties::default().with_connection_name("tributary-worker".into());
            // A certificate error is an outage: waited for like an unreachable broker.
            let ca_file = self.config.queue.ca_file.as_deref();
            match amqp::connect(&self.amqp_uri, ca_file, properties).await {
                Ok(connection) => return Some(connection),
                Err(e) => {
                    failures += 1;
                    let delay = backoff(&self.config.retry, failures);
                    tracing::warn!(error = %e, delay_ms = delay.as_millis() as u64, "broker connection failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return None,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Waits until every sink is reachable (and its table or bucket exists).
    async fn init_sinks(&self, shutdown: &CancellationToken) -> bool {
        for sink in &self.sinks {
            let mut failures = 0;
            while let Err(e) = sink.init().await {
                failures += 1;
                let delay = backoff(&self.config.retry, failures);
                tracing::warn!(sink = sink.name(), error = %e, "sink not ready; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return false,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
        true
    }

    async fn declare(&self, channel: &Channel) -> Result<(), lapin::Error> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(
                self.config.queue.name.as_str().into(),
                durable,
                FieldTable::default(),
            )
            .await?;
        if let Some(dead_letter) = &self.config.dead_letter {
            if dead_letter.exchange.is_empty() {
                channel
                    .queue_declare(
                        dead_letter.routing_key.as_str().into(),
                        durable,
                        FieldTable::default(),
                    )
                    .await?;
            }
        }
        Ok(())
    }
}
