//! Processing one delivery: apply the worker's own delivery limit (classic queues), parse
//! the envelope, run the pipeline or the custom container, encode for every sink, and hand
//! the message to the sinks (or settle it right away when it is filtered out or cannot be
//! processed).

use std::sync::Arc;

use lapin::message::Delivery;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tributary_contract::worker_config::RetryConfig;

use crate::ack::{
    counted_deliveries, redelivery, Delivered, Finisher, Redelivery, Ticket, Verdict,
};
use crate::batch::{backoff, may_retry, SinkItem};
use crate::container::{ContainerClient, ContainerError};
use crate::metrics::Metrics;
use crate::outages::Outages;
use crate::pipeline::{Outcome, Pipeline};
use crate::record::{into_record, parse_envelope, Record};
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
    /// The worker's own delivery limit (classic queues), if any.
    pub delivery_limit: Option<u32>,
    /// Where an outage of the custom container is reported.
    pub outages: Arc<Outages>,
    /// Cancelled at shutdown.
    pub shutdown: CancellationToken,
}

/// The outage target of the custom container.
const CONTAINER_TARGET: &str = "container";

enum Step {
    Forward(Record),
    Settle(Verdict),
}

impl Processor {
    /// Processes one delivery to the point where the sinks (or the finisher) own it.
    pub async fn process(&self, delivery: Delivery) {
        let delivered = Delivered {
            tag: delivery.delivery_tag,
            acker: delivery.acker,
            body: delivery.data,
            properties: delivery.properties,
            redelivered: delivery.redelivered,
        };
        let counted = counted_deliveries(&delivered.properties);
        match redelivery(self.delivery_limit, delivered.redelivered, counted) {
            Redelivery::Process => {}
            Redelivery::Count(count) => {
                return self.finisher.put_back_counted(delivered, count).await;
            }
            Redelivery::Limit(count) => {
                let verdict = Verdict::DeadLetter {
                    kind: "delivery-limit",
                    reason: format!(
                        "came back unsettled {count} times (its worker crashed or stopped while holding it each time); delivery limit reached"
                    ),
                };
                return self.finisher.finish(delivered, verdict).await;
            }
        }
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
        let mut record = into_record(envelope);
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

    /// Calls the container until it answers for this message. Its outages are waited out
    /// without limit; failures on this message count against `retry.maxAttempts`.
    async fn call_container(
        &self,
        client: &ContainerClient,
        id: &str,
        body: &[u8],
    ) -> Result<Option<serde_json::Value>, Verdict> {
        let mut failures = 0u32;
        let mut outage = 0u32;
        loop {
            let delay = match client.process(id, body).await {
                Ok(value) => {
                    self.outages.recovered(CONTAINER_TARGET);
                    return Ok(value);
                }
                Err(ContainerError::Rejected(message)) => {
                    self.outages.recovered(CONTAINER_TARGET);
                    return Err(Verdict::DeadLetter {
                        kind: "container-rejected",
                        reason: format!("container rejected the message: {message}"),
                    });
                }
                Err(ContainerError::Failed(message)) => {
                    self.outages.recovered(CONTAINER_TARGET);
                    failures = failures.saturating_add(1);
                    if !may_retry(&self.retry, failures) {
                        return Err(Verdict::DeadLetter {
                            kind: "container-failed",
                            reason: format!(
                                "container failed on the message {failures} times: {message}"
                            ),
                        });
                    }
                    tracing::warn!(message_id = %id, failures, error = %message, "container failed on the message; retrying");
                    backoff(&self.retry, failures)
                }
                Err(ContainerError::Unavailable(message)) => {
                    outage = outage.saturating_add(1);
                    self.outages.failed(CONTAINER_TARGET, &message);
                    tracing::warn!(message_id = %id, error = %message, "container unavailable; holding the message");
                    backoff(&self.retry, outage)
                }
            };
            self.metrics.retried(CONTAINER_TARGET, 1);
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return Err(Verdict::Requeue),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Hands the record to every sink that has something to write for it, under one ticket;
    /// acknowledges it at once when none has (every command sink's `when` false).
    async fn forward(&self, record: Record, delivered: Delivered) {
        let mut taken = Vec::with_capacity(self.sinks.len());
        for (sink, sender) in &self.sinks {
            match sink.prepare(&record) {
                Ok(Some(item)) => taken.push((sink, sender, item)),
                Ok(None) => {}
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
        if taken.is_empty() {
            return self.finisher.finish(delivered, Verdict::Ack).await;
        }
        let ticket = Ticket::new(taken.len(), delivered);
        for (sink, sender, prepared) in taken {
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
