//! Settling deliveries: a [`Ticket`] gathers every sink's verdict on one message, and the
//! [`Finisher`] acts on the final one (ack, dead-letter then ack, or requeue).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use lapin::options::{BasicAckOptions, BasicNackOptions, BasicPublishOptions, BasicRejectOptions};
use lapin::types::{AMQPValue, LongString};
use lapin::Acker;
use lapin::{BasicProperties, Channel};
use tributary_contract::worker_config::DeadLetterConfig;

use crate::metrics::Metrics;

/// What happens to a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Stored (or deliberately dropped): acknowledge.
    Ack,
    /// Cannot be processed: publish to the dead-letter target with the reason, then ack.
    DeadLetter {
        /// A short, stable kind for metrics (`bad-envelope`, `pipeline`, ...).
        kind: &'static str,
        /// The human-readable reason, carried in the `x-tributary-reason` header.
        reason: String,
    },
    /// Not processed (shutting down): return it to the queue.
    Requeue,
}

impl Verdict {
    /// The verdict of two sinks on one message: dead-letter wins over requeue over ack.
    pub fn merge(self, other: Verdict) -> Verdict {
        match (self, other) {
            (v @ Verdict::DeadLetter { .. }, _) | (_, v @ Verdict::DeadLetter { .. }) => v,
            (Verdict::Requeue, _) | (_, Verdict::Requeue) => Verdict::Requeue,
            _ => Verdict::Ack,
        }
    }
}

struct TicketState<D> {
    remaining: AtomicUsize,
    verdict: Mutex<Option<Verdict>>,
    delivery: Mutex<Option<D>>,
}

/// One message's pending settlement, shared by the sinks it was sent to.
pub struct Ticket<D> {
    state: Arc<TicketState<D>>,
}

impl<D> Clone for Ticket<D> {
    fn clone(&self) -> Self {
        Self {
            state: self.state.clone(),
        }
    }
}

impl<D> Ticket<D> {
    /// A ticket waiting for `sinks` verdicts.
    pub fn new(sinks: usize, delivery: D) -> Self {
        Self {
            state: Arc::new(TicketState {
                remaining: AtomicUsize::new(sinks.max(1)),
                verdict: Mutex::new(None),
                delivery: Mutex::new(Some(delivery)),
            }),
        }
    }

    /// Records one sink's verdict; the last one gets the delivery and the merged verdict.
    pub fn complete(&self, verdict: Verdict) -> Option<(D, Verdict)> {
        {
            let mut merged = self.state.verdict.lock().unwrap_or_else(|p| p.into_inner());
            *merged = Some(match merged.take() {
                Some(previous) => previous.merge(verdict),
                None => verdict,
            });
        }
        if self.state.remaining.fetch_sub(1, Ordering::AcqRel) != 1 {
            return None;
        }
        let verdict = self
            .state
            .verdict
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or(Verdict::Ack);
        let delivery = self
            .state
            .delivery
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()?;
        Some((delivery, verdict))
    }
}

/// What the finisher needs of a delivery.
pub struct Delivered {
    /// Acknowledges on the consuming channel.
    pub acker: Acker,
    /// The original body.
    pub body: Vec<u8>,
    /// The original properties.
    pub properties: BasicProperties,
}

/// Acts on final verdicts.
pub struct Finisher {
    queue: String,
    dead_letter: Option<DeadLetterConfig>,
    channel: Option<Channel>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Finisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Finisher")
            .field("queue", &self.queue)
            .finish()
    }
}

impl Finisher {
    /// A finisher; `channel` (in confirm mode) publishes dead letters when configured.
    pub fn new(
        queue: String,
        dead_letter: Option<DeadLetterConfig>,
        channel: Option<Channel>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            queue,
            dead_letter,
            channel,
            metrics,
        }
    }

    /// Settles one delivery. Errors are logged: an unsettled delivery returns to the queue
    /// when the channel closes, so nothing is lost.
    pub async fn finish(&self, delivery: Delivered, verdict: Verdict) {
        let id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default();
        match verdict {
            Verdict::Ack => self.ack(&delivery, &id).await,
            Verdict::Requeue => {
                let options = BasicNackOptions {
                    multiple: false,
                    requeue: true,
                };
                match delivery.acker.nack(options).await {
                    Ok(_) => {
                        self.metrics.requeued.inc();
                    }
                    Err(e) => tracing::warn!(message_id = %id, error = %e, "nack failed"),
                };
            }
            Verdict::DeadLetter { kind, reason } => {
                tracing::warn!(message_id = %id, kind, reason = %reason, "dead-lettering");
                match (&self.dead_letter, &self.channel) {
                    (Some(target), Some(channel)) => {
                        match self
                            .publish(channel, target, &delivery, kind, &reason)
                            .await
                        {
                            Ok(()) => {
                                self.metrics.dead_lettered(kind);
                                self.ack(&delivery, &id).await;
                            }
                            Err(e) => {
                                // Keep the message: back to the queue rather than lost.
                                tracing::error!(message_id = %id, error = %e, "dead-letter publish failed; requeueing");
                                let _ = delivery
                                    .acker
                                    .nack(BasicNackOptions {
                                        multiple: false,
                                        requeue: true,
                                    })
                                    .await;
                            }
                        }
                    }
                    _ => {
                        // No target configured: the broker's dead-letter policy applies.
                        match delivery
                            .acker
                            .reject(BasicRejectOptions { requeue: false })
                            .await
                        {
                            Ok(_) => self.metrics.dead_lettered(kind),
                            Err(e) => tracing::warn!(message_id = %id, error = %e, "reject failed"),
                        }
                    }
                }
            }
        }
    }

    async fn ack(&self, delivery: &Delivered, id: &str) {
        match delivery.acker.ack(BasicAckOptions::default()).await {
            Ok(_) => {
                self.metrics.acked.inc();
            }
            Err(e) => tracing::warn!(message_id = %id, error = %e, "ack failed"),
        }
    }

    async fn publish(
        &self,
        channel: &Channel,
        target: &DeadLetterConfig,
        delivery: &Delivered,
        kind: &str,
        reason: &str,
    ) -> Result<(), String> {
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        let text = |s: &str| AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()));
        headers.insert("x-tributary-reason".into(), text(reason));
        headers.insert("x-tributary-reason-kind".into(), text(kind));
        headers.insert("x-tributary-source-queue".into(), text(&self.queue));
        headers.insert(
            "x-tributary-failed-at".into(),
            text(&chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        );
        let properties = delivery
            .properties
            .clone()
            .with_delivery_mode(2)
            .with_headers(headers);
        let confirm = channel
            .basic_publish(
                target.exchange.as_str().into(),
                target.routing_key.as_str().into(),
                // Mandatory: an unroutable dead letter comes back instead of vanishing.
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &delivery.body,
                properties,
            )
            .await
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        if confirm.is_nack() {
            return Err("broker refused the dead letter".into());
        }
        if confirm.take_message().is_some() {
            return Err(format!(
                "dead letter unroutable (exchange `{}`, routing key `{}`)",
                target.exchange, target.routing_key
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dead(reason: &str) -> Verdict {
        Verdict::DeadLetter {
            kind: "sink-rejected",
            reason: reason.into(),
        }
    }

    #[test]
    fn ticket_settles_once_after_every_sink() {
        let ticket = Ticket::new(3, "delivery");
        assert_eq!(ticket.clone().complete(Verdict::Ack), None);
        assert_eq!(ticket.complete(dead("db refused")), None);
        assert_eq!(
            ticket.complete(Verdict::Ack),
            Some(("delivery", dead("db refused")))
        );
    }

    #[test]
    fn dead_letter_beats_requeue_beats_ack() {
        assert_eq!(Verdict::Ack.merge(Verdict::Requeue), Verdict::Requeue);
        assert_eq!(Verdict::Requeue.merge(dead("x")), dead("x"));
        assert_eq!(Verdict::Ack.merge(Verdict::Ack), Verdict::Ack);
    }
}
