//! Moving dead-lettered messages back into their queue (`spec.replay` of a Queue).

use super::topology::{channel, close, passive};
use super::{timed, BrokerError};
use lapin::message::BasicGetMessage;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection};

/// What to move back from a dead-letter queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayRequest<'a> {
    /// The dead-letter queue to read.
    pub dead_letter_queue: &'a str,
    /// The queue to publish into (through the default exchange).
    pub queue: &'a str,
    /// Only messages whose `x-tributary-reason-kind` header equals this.
    pub reason_kind: Option<&'a str>,
    /// At most this many messages are moved.
    pub max_messages: Option<u64>,
}

/// What a replay did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Messages moved into the queue.
    pub moved: u64,
    /// Messages looked at and put back at the dead-letter queue's tail.
    pub skipped: u64,
    /// Ready messages in the dead-letter queue afterwards.
    pub remaining: u64,
}

/// Header name of the dead-letter reason kind the worker sets.
pub const REASON_KIND_HEADER: &str = "x-tributary-reason-kind";

/// Whether a header is dead-letter bookkeeping that a replayed message must not carry
/// (the worker's reason headers, the broker's death records and delivery count).
pub fn is_dead_letter_header(name: &str) -> bool {
    name.starts_with("x-tributary-")
        || name == "x-death"
        || name.starts_with("x-first-death-")
        || name.starts_with("x-last-death-")
        || name == "x-delivery-count"
}

/// The headers of a replayed message: the original ones without dead-letter bookkeeping.
pub fn replay_headers(headers: Option<&FieldTable>) -> FieldTable {
    let mut kept = FieldTable::default();
    for (key, value) in headers.map(FieldTable::inner).into_iter().flatten() {
        if !is_dead_letter_header(key.as_str()) {
            kept.insert(key.clone(), value.clone());
        }
    }
    kept
}

/// A header's value as text (long or short string).
fn header_text(headers: Option<&FieldTable>, name: &str) -> Option<String> {
    match headers?.inner().get(name)? {
        AMQPValue::LongString(text) => Some(String::from_utf8_lossy(text.as_bytes()).into_owned()),
        AMQPValue::ShortString(text) => Some(text.as_str().to_owned()),
        _ => None,
    }
}

/// Publishes with a confirm through the default exchange, mandatory (an unroutable message
/// comes back as an error instead of vanishing).
async fn publish_confirmed(
    channel: &Channel,
    routing_key: &str,
    body: &[u8],
    properties: lapin::BasicProperties,
) -> Result<(), BrokerError> {
    let refused = |reason: String| BrokerError::Refused {
        operation: "publish",
        queue: routing_key.to_owned(),
        reason,
    };
    let confirm = timed(
        channel.basic_publish(
            "".into(),
            routing_key.into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            body,
            properties,
        ),
        refused,
    )
    .await?;
    let confirmation = timed(confirm, refused).await?;
    if confirmation.is_nack() {
        return Err(refused("the broker refused the message".to_owned()));
    }
    if confirmation.take_message().is_some() {
        return Err(refused("unroutable: the queue does not exist".to_owned()));
    }
    Ok(())
}

/// A refusal of the replay naming `queue`.
fn refused(queue: &str, reason: impl Into<String>) -> BrokerError {
    BrokerError::Refused {
        operation: "replay",
        queue: queue.to_owned(),
        reason: reason.into(),
    }
}

/// Moves dead-lettered messages back into their queue. Each message is taken with
/// `basic.get` (not auto-acknowledged), published persistent to the default exchange with the
/// queue's name as routing key (same message id, body and properties, without the
/// dead-letter headers), confirmed by the broker, and only then acknowledged in the
/// dead-letter queue: a failure at any point leaves a message in one queue or, at worst, in
/// both (sinks drop the duplicate by its id), never in neither. Messages that do not match
/// `reason_kind`, or exceed `max_messages`, are republished unchanged to the dead-letter
/// queue's tail and acknowledged. At most as many messages as the dead-letter queue held at
/// the start are looked at, so the replay ends.
pub async fn replay(
    connection: &Connection,
    request: &ReplayRequest<'_>,
) -> Result<ReplayReport, BrokerError> {
    let dlq = request.dead_letter_queue;
    let Some((at_start, _)) = passive(connection, dlq).await? else {
        return Err(refused(
            dlq,
            "the dead-letter queue does not exist on the broker",
        ));
    };
    if passive(connection, request.queue).await?.is_none() {
        return Err(refused(
            request.queue,
            "the queue does not exist on the broker",
        ));
    }
    let channel = channel(connection).await?;
    timed(
        channel.confirm_select(ConfirmSelectOptions::default()),
        BrokerError::Connect,
    )
    .await?;
    let mut report = ReplayReport::default();
    for _ in 0..at_start {
        let got = timed(
            channel.basic_get(dlq.into(), BasicGetOptions { no_ack: false }),
            |reason| refused(dlq, reason),
        )
        .await?;
        let Some(message) = got else { break };
        // On failure the message stays in the dead-letter queue (the broker returns an
        // unacknowledged message when the channel closes).
        if move_one(&channel, request, &report, message).await? {
            report.moved += 1;
        } else {
            report.skipped += 1;
        }
    }
    close(&channel).await;
    report.remaining = passive(connection, dlq)
        .await?
        .map_or(0, |(ready, _)| u64::from(ready));
    Ok(report)
}

/// Republishes one message taken from the dead-letter queue, then acknowledges it there:
/// into the queue when it matches the request (`true`), else back to the dead-letter
/// queue's tail, unchanged (`false`).
async fn move_one(
    channel: &Channel,
    request: &ReplayRequest<'_>,
    report: &ReplayReport,
    message: BasicGetMessage,
) -> Result<bool, BrokerError> {
    let delivery = message.delivery;
    let headers = delivery.properties.headers().as_ref();
    let matches = request
        .reason_kind
        .is_none_or(|kind| header_text(headers, REASON_KIND_HEADER).as_deref() == Some(kind));
    let within = request.max_messages.is_none_or(|max| report.moved < max);
    let moves = matches && within;
    if moves {
        let properties = delivery
            .properties
            .clone()
            .with_delivery_mode(2)
            .with_headers(replay_headers(headers));
        publish_confirmed(channel, request.queue, &delivery.data, properties).await?;
    } else {
        let properties = delivery.properties.clone();
        publish_confirmed(
            channel,
            request.dead_letter_queue,
            &delivery.data,
            properties,
        )
        .await?;
    }
    timed(delivery.acker.ack(BasicAckOptions::default()), |reason| {
        refused(request.dead_letter_queue, reason)
    })
    .await?;
    Ok(moves)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::LongString;

    #[test]
    fn replayed_messages_lose_dead_letter_headers_and_keep_the_others() {
        let mut headers = FieldTable::default();
        for key in [
            "x-tributary-reason",
            "x-tributary-reason-kind",
            "x-tributary-source-queue",
            "x-death",
            "x-first-death-queue",
            "x-delivery-count",
            "traceparent",
            "x-custom",
        ] {
            headers.insert(key.into(), AMQPValue::LongString(LongString::from("v")));
        }
        let kept = replay_headers(Some(&headers));
        let keys: Vec<&str> = kept.inner().keys().map(|k| k.as_str()).collect();
        assert_eq!(keys, vec!["traceparent", "x-custom"]);
        assert!(replay_headers(None).inner().is_empty());
        assert_eq!(
            header_text(Some(&headers), REASON_KIND_HEADER).as_deref(),
            Some("v")
        );
        assert_eq!(header_text(Some(&headers), "missing"), None);
    }
}
