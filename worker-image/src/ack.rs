//! Settling deliveries: a [`Ticket`] gathers every sink's verdict on one message, and the
//! [`Finisher`] acts on the final one (ack, dead-letter then ack, or requeue). Acks are
//! handed to the channel's [`Acks`], which sends them in bulk; a requeue or a reject is sent
//! alone at once. A dead letter the broker refuses is held and retried with backoff, never
//! dropped; for classic queues the finisher also counts redeliveries (see [`redelivery`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use lapin::options::{BasicNackOptions, BasicPublishOptions, BasicRejectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::Acker;
use lapin::{BasicProperties, Channel};
use tokio_util::sync::CancellationToken;
use tributary_contract::worker_config::{DeadLetterConfig, RetryConfig};

use crate::ack_window::Acks;
use crate::batch::backoff;
use crate::metrics::Metrics;
use crate::outages::Outages;

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
    /// Its delivery tag on the consuming channel.
    pub tag: u64,
    /// Acknowledges on the consuming channel.
    pub acker: Acker,
    /// The original body.
    pub body: Vec<u8>,
    /// The original properties.
    pub properties: BasicProperties,
    /// The broker delivered it before (a worker held it and did not settle it).
    pub redelivered: bool,
}

impl Delivered {
    fn message_id(&self) -> String {
        self.properties
            .message_id()
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default()
    }
}

/// The header in which the worker counts the deliveries of a message that came back
/// unsettled (classic queues keep no count of their own).
pub const DELIVERIES_HEADER: &str = "x-tributary-deliveries";

/// The outage target reported while dead letters cannot be published.
pub const DEAD_LETTER_TARGET: &str = "dead-letter queue";

/// What to do with a delivery under the worker's own delivery limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redelivery {
    /// Process it (no limit, or not a redelivery).
    Process,
    /// It came back unsettled for the `n`th time: put it back with the count, then process
    /// the copy when it comes.
    Count(u32),
    /// It came back unsettled `n` times, reaching the limit: dead-letter it.
    Limit(u32),
}

/// Decides on a delivery under `limit`, given whether the broker redelivered it and the
/// count its header carries.
pub fn redelivery(limit: Option<u32>, redelivered: bool, counted: u32) -> Redelivery {
    match limit {
        Some(limit) if redelivered => {
            let returns = counted.saturating_add(1);
            if returns >= limit {
                Redelivery::Limit(returns)
            } else {
                Redelivery::Count(returns)
            }
        }
        _ => Redelivery::Process,
    }
}

/// The count in a message's [`DELIVERIES_HEADER`] (0 when absent or not a number).
pub fn counted_deliveries(properties: &BasicProperties) -> u32 {
    let Some(value) = properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(DELIVERIES_HEADER).cloned())
    else {
        return 0;
    };
    let number: i64 = match value {
        AMQPValue::LongLongInt(n) => n,
        AMQPValue::LongInt(n) => i64::from(n),
        AMQPValue::ShortInt(n) => i64::from(n),
        AMQPValue::ShortShortInt(n) => i64::from(n),
        AMQPValue::LongUInt(n) => i64::from(n),
        AMQPValue::ShortUInt(n) => i64::from(n),
        AMQPValue::ShortShortUInt(n) => i64::from(n),
        _ => 0,
    };
    u32::try_from(number.max(0)).unwrap_or(u32::MAX)
}

/// Acts on final verdicts.
pub struct Finisher {
    queue: String,
    acks: Arc<Acks>,
    dead_letter: Option<DeadLetterConfig>,
    channel: Option<Channel>,
    metrics: Arc<Metrics>,
    retry: RetryConfig,
    outages: Arc<Outages>,
    stop: CancellationToken,
}

impl std::fmt::Debug for Finisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Finisher")
            .field("queue", &self.queue)
            .finish()
    }
}

/// Where the finisher publishes and how it waits out a broker that refuses.
pub struct FinisherSetup {
    /// The consumed queue's name (republished counted messages go back to it).
    pub queue: String,
    /// The consuming channel's acknowledgements.
    pub acks: Arc<Acks>,
    /// The dead-letter target, when configured.
    pub dead_letter: Option<DeadLetterConfig>,
    /// A channel in confirm mode for dead letters and counted messages.
    pub channel: Option<Channel>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Backoff between failed publishes.
    pub retry: RetryConfig,
    /// Where a dead-letter queue that refuses is reported.
    pub outages: Arc<Outages>,
    /// Cancelled when the session ends: a message still waiting is requeued.
    pub stop: CancellationToken,
}

impl Finisher {
    /// A finisher.
    pub fn new(setup: FinisherSetup) -> Self {
        Self {
            queue: setup.queue,
            acks: setup.acks,
            dead_letter: setup.dead_letter,
            channel: setup.channel,
            metrics: setup.metrics,
            retry: setup.retry,
            outages: setup.outages,
            stop: setup.stop,
        }
    }

    /// Settles one delivery. Errors are logged: an unsettled delivery returns to the queue
    /// when the channel closes, so nothing is lost.
    pub async fn finish(&self, delivery: Delivered, verdict: Verdict) {
        match verdict {
            Verdict::Ack => self.ack_all([delivery]),
            Verdict::Requeue => {
                let id = delivery.message_id();
                self.requeue(&delivery, &id).await;
            }
            Verdict::DeadLetter { kind, reason } => {
                self.dead_letter(delivery, kind, &reason).await;
            }
        }
    }

    /// Publishes a copy with the reason to the dead-letter target, then acknowledges (or,
    /// without a target, rejects so that the broker's own policy applies).
    async fn dead_letter(&self, delivery: Delivered, kind: &'static str, reason: &str) {
        let id = delivery.message_id();
        tracing::warn!(message_id = %id, kind, reason = %reason, "dead-lettering");
        let (Some(target), Some(channel)) = (&self.dead_letter, &self.channel) else {
            // Dead-lettering switched off: the broker's own policy applies, and without one
            // the message is discarded (as documented).
            let rejected = delivery
                .acker
                .reject(BasicRejectOptions { requeue: false })
                .await;
            match rejected {
                Ok(sent) => {
                    self.metrics.dead_lettered(kind);
                    self.sent_alone(&delivery, sent);
                }
                Err(e) => tracing::warn!(message_id = %id, error = %e, "reject failed"),
            }
            return;
        };
        let headers = dead_letter_headers(&delivery, kind, reason, &self.queue);
        let route = (target.exchange.as_str(), target.routing_key.as_str());
        if self
            .publish_until_taken(channel, route, &delivery, headers)
            .await
        {
            self.metrics.dead_lettered(kind);
            self.ack_all([delivery]);
        } else {
            self.requeue(&delivery, &id).await;
        }
    }

    /// Puts a message that came back unsettled back on its queue with its count, then
    /// acknowledges this delivery; requeues it instead when the session ends first.
    pub async fn put_back_counted(&self, delivery: Delivered, count: u32) {
        let id = delivery.message_id();
        let Some(channel) = &self.channel else {
            self.requeue(&delivery, &id).await;
            return;
        };
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        headers.insert(
            DELIVERIES_HEADER.into(),
            AMQPValue::LongLongInt(i64::from(count)),
        );
        tracing::info!(message_id = %id, count, "redelivered message counted and put back");
        if self
            .publish_until_taken(channel, ("", &self.queue), &delivery, headers)
            .await
        {
            self.ack_all([delivery]);
            // Counted once the original is settled too (tests wait for it before a crash).
            self.metrics.redeliveries_counted.inc();
        } else {
            self.requeue(&delivery, &id).await;
        }
    }

    /// Publishes a copy of the delivery with `headers`, waiting out a broker that refuses
    /// (backoff, reported as an outage of the dead-letter queue) until it is confirmed;
    /// false when the session ended first.
    async fn publish_until_taken(
        &self,
        channel: &Channel,
        (exchange, routing_key): (&str, &str),
        delivery: &Delivered,
        headers: FieldTable,
    ) -> bool {
        let mut failures = 0u32;
        loop {
            match publish(channel, (exchange, routing_key), delivery, headers.clone()).await {
                Ok(()) => {
                    self.outages.recovered(DEAD_LETTER_TARGET);
                    return true;
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    self.outages.failed(DEAD_LETTER_TARGET, &e);
                    let delay = backoff(&self.retry, failures);
                    tracing::error!(message_id = %delivery.message_id(), error = %e, delay_ms = delay.as_millis() as u64, "publish refused; holding the message and retrying");
                    tokio::select! {
                        biased;
                        _ = self.stop.cancelled() => return false,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    async fn requeue(&self, delivery: &Delivered, id: &str) {
        let options = BasicNackOptions {
            multiple: false,
            requeue: true,
        };
        match delivery.acker.nack(options).await {
            Ok(sent) => {
                self.metrics.requeued.inc();
                self.sent_alone(delivery, sent);
            }
            Err(e) => tracing::warn!(message_id = %id, error = %e, "nack failed"),
        };
    }

    /// Acknowledges deliveries whose writes are durable: the channel's [`Acks`] sends one
    /// multiple ack for each settled run of tags (counted in `acked` once sent).
    pub fn ack_all(&self, deliveries: impl IntoIterator<Item = Delivered>) {
        self.acks
            .ack(deliveries.into_iter().map(|d| (d.tag, d.acker)));
    }

    /// A nack or reject went out alone: a later multiple ack may pass over it. One that was
    /// not sent (the channel closed) keeps blocking it; the broker requeues the message.
    fn sent_alone(&self, delivery: &Delivered, sent: bool) {
        if sent {
            self.acks.settled_alone(delivery.tag);
        }
    }
}

/// The delivery's headers plus the reason it is dead-lettered.
fn dead_letter_headers(delivery: &Delivered, kind: &str, reason: &str, queue: &str) -> FieldTable {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    let text = |s: &str| AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()));
    headers.insert("x-tributary-reason".into(), text(reason));
    headers.insert("x-tributary-reason-kind".into(), text(kind));
    headers.insert("x-tributary-source-queue".into(), text(queue));
    headers.insert(
        "x-tributary-failed-at".into(),
        text(&chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
    );
    headers
}

/// Publishes a persistent, mandatory copy of the delivery and waits for the confirm.
async fn publish(
    channel: &Channel,
    (exchange, routing_key): (&str, &str),
    delivery: &Delivered,
    headers: FieldTable,
) -> Result<(), String> {
    let properties = delivery
        .properties
        .clone()
        .with_delivery_mode(2)
        .with_headers(headers);
    let confirm = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            // Mandatory: an unroutable copy comes back instead of vanishing.
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
        return Err("the broker refused the message".into());
    }
    if confirm.take_message().is_some() {
        return Err(format!(
            "unroutable (exchange `{exchange}`, routing key `{routing_key}`)"
        ));
    }
    Ok(())
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
    fn redeliveries_are_counted_up_to_the_limit() {
        assert_eq!(redelivery(None, true, 7), Redelivery::Process);
        assert_eq!(redelivery(Some(3), false, 2), Redelivery::Process);
        assert_eq!(redelivery(Some(3), true, 0), Redelivery::Count(1));
        assert_eq!(redelivery(Some(3), true, 1), Redelivery::Count(2));
        assert_eq!(redelivery(Some(3), true, 2), Redelivery::Limit(3));
        assert_eq!(redelivery(Some(1), true, 0), Redelivery::Limit(1));
        assert_eq!(
            redelivery(Some(3), true, u32::MAX),
            Redelivery::Limit(u32::MAX)
        );
    }

    #[test]
    fn the_count_is_read_from_any_integer_header() {
        let with = |value| {
            let mut headers = FieldTable::default();
            headers.insert(DELIVERIES_HEADER.into(), value);
            BasicProperties::default().with_headers(headers)
        };
        assert_eq!(counted_deliveries(&BasicProperties::default()), 0);
        assert_eq!(counted_deliveries(&with(AMQPValue::LongLongInt(4))), 4);
        assert_eq!(counted_deliveries(&with(AMQPValue::ShortShortInt(2))), 2);
        assert_eq!(counted_deliveries(&with(AMQPValue::LongLongInt(-4))), 0);
        assert_eq!(counted_deliveries(&with(AMQPValue::Boolean(true))), 0);
    }

    #[test]
    fn dead_letter_beats_requeue_beats_ack() {
        assert_eq!(Verdict::Ack.merge(Verdict::Requeue), Verdict::Requeue);
        assert_eq!(Verdict::Requeue.merge(dead("x")), dead("x"));
        assert_eq!(Verdict::Ack.merge(Verdict::Ack), Verdict::Ack);
    }
}
