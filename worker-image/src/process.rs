//! Processing one delivery: parse the envelope, run the pipeline or the custom container,
//! encode for every sink, and hand the message to the sinks (or settle it right away when it
//! is filtered out or cannot be processed).

use std::sync::Arc;

use lapin::message::Delivery;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tributary_contract::worker_config::RetryConfig;

use crate::ack::{Delivered, Finisher, Ticket, Verdict};
use crate::batch::{backoff, may_retry, SinkItem};
use crate::container::{ContainerClient, ContainerError};
use crate::metrics::Metrics;
use crate::pipeline::{Outcome, Pipeline};
use crate::record::{parse_envelope, record_of, Record};
use crate::sinks::Sink;

/// How messages are processed.
pub enum Mode {
    /// Unchanged to the sinks.
    PassThrough,
    /// A CEL pipeline.
    Pipeline(Pipeline),
    /// The user's container.
    Container(ContainerClient),
}

/// Shared by all processing tasks.
pub struct Processor {
    /// Processing mode (shared by the consuming sessions).
    pub mode: Arc<Mode>,
    /// Sinks, in config order, with their queues.
    pub sinks: Vec<(Arc<Sink>, mpsc::Sender<SinkItem>)>,
    /// Settles deliveries.
    pub finisher: Arc<Finisher>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Retry policy (custom container).
    pub retry: RetryConfig,
    /// Cancelled at shutdown.
    pub shutdown: CancellationToken,
}

enum Step {
    Forward(Record),
    Settle(Verdict),
}

impl Processor {
    /// Processes one delivery to the point where the sinks (or the finisher) own it.
    pub async fn process(&self, delivery: Delivery) {
        let delivered = Delivered {
            acker: delivery.acker,
            body: delivery.data,
            properties: delivery.properties,
        };
        match self.evaluate(&delivered.body).await {
            Step::Settle(verdict) => self.finisher.finish(delivered, verdict).await,
            Step::Forward(record) => self.forward(record, delivered).await,
        }
    }

    async fn evaluate(&self, body: &[u8]) -> Step {
        let envelope = match parse_envelope(body) {
            Ok(envelope) => envelope,
            Err(e) => {
                return Step::Settle(Verdict::DeadLetter {
                    kind: "bad-envelope",
                    reason: e.to_string(),
                })
            }
        };
        let mut record = record_of(&envelope);
        match self.mode.as_ref() {
            Mode::PassThrough => {}
            Mode::Pipeline(pipeline) => match pipeline.apply(record.value) {
                Ok(Outcome::Keep(value)) => record.value = value,
                Ok(Outcome::Filtered(step)) => {
                    tracing::debug!(message_id = %record.id, step, "filtered");
                    self.metrics.pipeline_dropped.inc();
                    return Step::Settle(Verdict::Ack);
                }
                Err(e) => {
                    return Step::Settle(Verdict::DeadLetter {
                        kind: "pipeline",
                        reason: e.to_string(),
                    })
                }
            },
            Mode::Container(client) => match self.call_container(client, &record.id, body).await {
                Ok(Some(value)) => record.value = value,
                Ok(None) => {}
                Err(verdict) => return Step::Settle(verdict),
            },
        }
        Step::Forward(record)
    }

    async fn call_container(
        &self,
        client: &ContainerClient,
        id: &str,
        body: &[u8],
    ) -> Result<Option<serde_json::Value>, Verdict> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let message = match client.process(id, body).await {
                Ok(value) => return Ok(value),
                Err(ContainerError::Rejected(message)) => {
                    return Err(Verdict::DeadLetter {
                        kind: "container-rejected",
                        reason: format!("container rejected the message: {message}"),
                    })
                }
                Err(ContainerError::Unavailable(message)) => message,
            };
            if !may_retry(&self.retry, attempts) {
                return Err(Verdict::DeadLetter {
                    kind: "container-unavailable",
                    reason: format!("container unavailable: {message} (after {attempts} attempts)"),
                });
            }
            self.metrics.retried("container", 1);
            let delay = backoff(&self.retry, attempts);
            tracing::warn!(message_id = %id, attempts, error = %message, "container unavailable; retrying");
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return Err(Verdict::Requeue),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn forward(&self, record: Record, delivered: Delivered) {
        let mut prepared = Vec::with_capacity(self.sinks.len());
        for (sink, _) in &self.sinks {
            match sink.prepare(&record) {
                Ok(item) => prepared.push(item),
                Err(message) => {
                    let verdict = Verdict::DeadLetter {
                        kind: "sink-encode",
                        reason: format!("sink {}: {message}", sink.name()),
                    };
                    self.finisher.finish(delivered, verdict).await;
                    return;
                }
            }
        }
        let ticket = Ticket::new(self.sinks.len(), delivered);
        for ((sink, sender), prepared) in self.sinks.iter().zip(prepared) {
            let item = SinkItem {
                prepared,
                ticket: ticket.clone(),
            };
            if let Err(mpsc::error::SendError(item)) = sender.send(item).await {
                // The sink's task is gone (only at shutdown): give the message back.
                tracing::warn!(sink = sink.name(), "sink closed; requeueing");
                if let Some((delivery, verdict)) = item.ticket.complete(Verdict::Requeue) {
                    self.finisher.finish(delivery, verdict).await;
                }
            }
        }
    }
}
