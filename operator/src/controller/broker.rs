//! Broker I/O of the Queue controller and the autoscaler: declaring and deleting the queue
//! topology over AMQP (lapin), and reading message counts (passive declarations and the
//! management API).
//!
//! URIs carry credentials: they are never logged and never put into error messages.

use crate::build::queue::ArgValue;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Connection, ConnectionProperties};
use std::collections::BTreeMap;
use std::time::Duration;

/// Longest wait for any broker operation.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Why a broker operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker could not be reached or refused the login.
    #[error("cannot connect to the broker: {0}")]
    Connect(String),
    /// The broker refused an operation (for example different arguments on a queue).
    #[error("broker refused {operation} of queue {queue:?}: {reason}")]
    Refused {
        /// What was attempted.
        operation: &'static str,
        /// The broker queue.
        queue: String,
        /// The broker's reason.
        reason: String,
    },
    /// Deletion was refused because the queue still holds messages.
    #[error("queue {queue:?} still holds {messages} messages; set deleteNonEmpty to drop them")]
    NotEmpty {
        /// The broker queue.
        queue: String,
        /// Messages it holds.
        messages: u32,
    },
    /// The operation took longer than the timeout.
    #[error("broker operation timed out after {0:?}")]
    Timeout(Duration),
    /// The management API failed.
    #[error("management API: {0}")]
    Management(String),
}

/// Message counts of a queue.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueCounts {
    /// Ready messages.
    pub ready: i64,
    /// Delivered, unacknowledged messages.
    pub unacked: i64,
    /// Consumers.
    pub consumers: i64,
    /// Messages in the dead-letter queue.
    pub dead_lettered: Option<i64>,
}

/// Where and how to reach a management API.
#[derive(Clone)]
pub struct Management {
    /// `http://host:port`, without credentials.
    pub base_url: String,
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
}

impl std::fmt::Debug for Management {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Management")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl Management {
    /// Parses `http://user:pass@host:port[/]`; `None` when the URI has another shape.
    pub fn from_uri(uri: &str) -> Option<Self> {
        let rest = uri.strip_prefix("http://")?;
        let (userinfo, host) = rest.split_once('@')?;
        let (username, password) = userinfo.split_once(':')?;
        Some(Management {
            base_url: format!("http://{}", host.trim_end_matches('/')),
            username: username.to_owned(),
            password: password.to_owned(),
        })
    }
}

async fn timed<T, E: std::fmt::Display>(
    future: impl std::future::Future<Output = Result<T, E>>,
    map: impl FnOnce(String) -> BrokerError,
) -> Result<T, BrokerError> {
    match tokio::time::timeout(TIMEOUT, future).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(map(error.to_string())),
        Err(_) => Err(BrokerError::Timeout(TIMEOUT)),
    }
}

/// Opens an AMQP connection (bounded by the operation timeout).
pub(crate) async fn connect(uri: &str) -> Result<Connection, BrokerError> {
    timed(
        Connection::connect(uri, ConnectionProperties::default()),
        BrokerError::Connect,
    )
    .await
}

fn field_table(args: &BTreeMap<String, ArgValue>) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in args {
        let value = match value {
            ArgValue::Str(text) => AMQPValue::LongString(LongString::from(text.as_str())),
            ArgValue::Int(number) => AMQPValue::LongLongInt(*number),
        };
        table.insert(key.as_str().into(), value);
    }
    table
}

/// Declares the dead-letter queue (when given, with its own arguments) and the queue with
/// its arguments. Declaring is idempotent, and re-creates a queue deleted by hand. Returns
/// the queue's ready count.
pub async fn declare(
    uri: &str,
    queue: &str,
    args: &BTreeMap<String, ArgValue>,
    dead_letter: Option<(&str, &BTreeMap<String, ArgValue>)>,
) -> Result<u32, BrokerError> {
    let connection = connect(uri).await?;
    let result = async {
        let channel = timed(connection.create_channel(), BrokerError::Connect).await?;
        let options = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        if let Some((dlq, dlq_args)) = dead_letter {
            timed(
                channel.queue_declare(dlq.into(), options, field_table(dlq_args)),
                |reason| BrokerError::Refused {
                    operation: "declaration",
                    queue: dlq.to_owned(),
                    reason,
                },
            )
            .await?;
        }
        let declared = timed(
            channel.queue_declare(queue.into(), options, field_table(args)),
            |reason| BrokerError::Refused {
                operation: "declaration",
                queue: queue.to_owned(),
                reason,
            },
        )
        .await?;
        let _ = tokio::time::timeout(TIMEOUT, channel.close(200, "done".into())).await;
        Ok(declared.message_count())
    }
    .await;
    let _ = tokio::time::timeout(TIMEOUT, connection.close(200, "done".into())).await;
    result
}

/// Whether a queue exists, with its ready count, by passive declaration.
pub async fn inspect(uri: &str, queue: &str) -> Result<Option<u32>, BrokerError> {
    Ok(passive(uri, queue).await?.map(|(ready, _)| ready))
}

/// Ready messages and consumers of a queue by passive declaration (current to the
/// moment, unlike the management API's sampled statistics); `None` when it is missing.
async fn passive(uri: &str, queue: &str) -> Result<Option<(u32, u32)>, BrokerError> {
    let connection = connect(uri).await?;
    let result = passive_on(&connection, queue).await;
    let _ = tokio::time::timeout(TIMEOUT, connection.close(200, "done".into())).await;
    result
}

/// [`passive`] on an open connection, in a channel of its own (a passive declaration of a
/// missing queue closes the channel, never the connection).
async fn passive_on(
    connection: &Connection,
    queue: &str,
) -> Result<Option<(u32, u32)>, BrokerError> {
    let channel = timed(connection.create_channel(), BrokerError::Connect).await?;
    let options = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let declared = tokio::time::timeout(
        TIMEOUT,
        channel.queue_declare(queue.into(), options, FieldTable::default()),
    )
    .await;
    // After a 404 the broker already closed the channel; closing again is harmless.
    let _ = tokio::time::timeout(TIMEOUT, channel.close(200, "done".into())).await;
    match declared {
        Ok(Ok(declared)) => Ok(Some((declared.message_count(), declared.consumer_count()))),
        // A passive declare of a missing queue closes the channel with 404.
        Ok(Err(error)) if error.to_string().contains("NOT_FOUND") => Ok(None),
        Ok(Err(error)) => Err(BrokerError::Refused {
            operation: "inspection",
            queue: queue.to_owned(),
            reason: error.to_string(),
        }),
        Err(_) => Err(BrokerError::Timeout(TIMEOUT)),
    }
}

/// The broker's soft (channel-level) error code in a lapin error, if it is one.
fn soft_error(error: &lapin::Error) -> Option<AMQPSoftError> {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => match amqp.kind() {
            AMQPErrorKind::Soft(soft) => Some(soft.clone()),
            AMQPErrorKind::Hard(_) => None,
        },
        _ => None,
    }
}

/// Deletes the queue, then its dead-letter queue. Unless `allow_non_empty`, each deletion
/// is `queue.delete` with `if-empty`: the broker itself refuses a queue holding messages, so
/// a message published between a check and the deletion is never dropped. A missing queue
/// counts as deleted.
pub async fn delete(
    uri: &str,
    queue: &str,
    dead_letter_queue: Option<&str>,
    allow_non_empty: bool,
) -> Result<(), BrokerError> {
    let connection = connect(uri).await?;
    let result = async {
        for name in std::iter::once(queue).chain(dead_letter_queue) {
            // A refusal closes the channel: one channel per deletion.
            let channel = timed(connection.create_channel(), BrokerError::Connect).await?;
            let options = QueueDeleteOptions {
                if_empty: !allow_non_empty,
                ..QueueDeleteOptions::default()
            };
            let deleted = tokio::time::timeout(TIMEOUT, channel.queue_delete(name.into(), options))
                .await
                .map_err(|_| BrokerError::Timeout(TIMEOUT))?;
            match deleted {
                Ok(_) => {
                    let _ = tokio::time::timeout(TIMEOUT, channel.close(200, "done".into())).await;
                }
                Err(error) => match soft_error(&error) {
                    Some(AMQPSoftError::NOTFOUND) => {}
                    Some(AMQPSoftError::PRECONDITIONFAILED) if !allow_non_empty => {
                        let messages = passive_on(&connection, name)
                            .await
                            .ok()
                            .flatten()
                            .map_or(0, |(ready, _)| ready);
                        return Err(BrokerError::NotEmpty {
                            queue: name.to_owned(),
                            messages,
                        });
                    }
                    _ => {
                        return Err(BrokerError::Refused {
                            operation: "deletion",
                            queue: name.to_owned(),
                            reason: error.to_string(),
                        })
                    }
                },
            }
        }
        Ok(())
    }
    .await;
    let _ = tokio::time::timeout(TIMEOUT, connection.close(200, "done".into())).await;
    result
}

/// Messages a set of queues hold: ready ones by passive declaration (exact), plus
/// unacknowledged ones from the management API when given. Missing queues hold none.
pub async fn message_total(
    uri: &str,
    management: Option<&Management>,
    queues: &[&str],
) -> Result<u64, BrokerError> {
    let connection = connect(uri).await?;
    let result = async {
        let mut total = 0u64;
        for queue in queues {
            let Some((ready, _)) = passive_on(&connection, queue).await? else {
                continue;
            };
            total += u64::from(ready);
            if let Some(management) = management {
                let info = queue_info(management, queue).await?;
                total += info["messages_unacknowledged"].as_u64().unwrap_or(0);
            }
        }
        Ok(total)
    }
    .await;
    let _ = tokio::time::timeout(TIMEOUT, connection.close(200, "done".into())).await;
    result
}

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
    channel: &lapin::Channel,
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

/// Moves dead-lettered messages back into their queue. Each message is taken with
/// `basic.get` (not auto-acknowledged), published persistent to the default exchange with the
/// queue's name as routing key (same message id, body and properties, without the
/// dead-letter headers), confirmed by the broker, and only then acknowledged in the
/// dead-letter queue: a failure at any point leaves a message in one queue or, at worst, in
/// both (sinks drop the duplicate by its id), never in neither. Messages that do not match
/// `reason_kind`, or exceed `max_messages`, are republished unchanged to the dead-letter
/// queue's tail and acknowledged. At most as many messages as the dead-letter queue held at
/// the start are looked at, so the replay ends.
pub async fn replay(uri: &str, request: &ReplayRequest<'_>) -> Result<ReplayReport, BrokerError> {
    let connection = connect(uri).await?;
    let result = async {
        let Some((at_start, _)) = passive_on(&connection, request.dead_letter_queue).await? else {
            return Err(BrokerError::Refused {
                operation: "replay",
                queue: request.dead_letter_queue.to_owned(),
                reason: "the dead-letter queue does not exist on the broker".to_owned(),
            });
        };
        if passive_on(&connection, request.queue).await?.is_none() {
            return Err(BrokerError::Refused {
                operation: "replay",
                queue: request.queue.to_owned(),
                reason: "the queue does not exist on the broker".to_owned(),
            });
        }
        let channel = timed(connection.create_channel(), BrokerError::Connect).await?;
        timed(
            channel.confirm_select(ConfirmSelectOptions::default()),
            BrokerError::Connect,
        )
        .await?;
        let mut report = ReplayReport::default();
        for _ in 0..at_start {
            let got = timed(
                channel.basic_get(
                    request.dead_letter_queue.into(),
                    BasicGetOptions { no_ack: false },
                ),
                |reason| BrokerError::Refused {
                    operation: "replay",
                    queue: request.dead_letter_queue.to_owned(),
                    reason,
                },
            )
            .await?;
            let Some(message) = got else { break };
            let delivery = message.delivery;
            let headers = delivery.properties.headers().as_ref();
            let matches = request.reason_kind.is_none_or(|kind| {
                header_text(headers, REASON_KIND_HEADER).as_deref() == Some(kind)
            });
            let within = request.max_messages.is_none_or(|max| report.moved < max);
            let published = if matches && within {
                let properties = delivery
                    .properties
                    .clone()
                    .with_delivery_mode(2)
                    .with_headers(replay_headers(headers));
                publish_confirmed(&channel, request.queue, &delivery.data, properties).await
            } else {
                publish_confirmed(
                    &channel,
                    request.dead_letter_queue,
                    &delivery.data,
                    delivery.properties.clone(),
                )
                .await
            };
            // On failure the copy stays in the dead-letter queue (the broker returns an
            // unacknowledged message when the channel closes).
            published?;
            timed(delivery.acker.ack(BasicAckOptions::default()), |reason| {
                BrokerError::Refused {
                    operation: "replay",
                    queue: request.dead_letter_queue.to_owned(),
                    reason,
                }
            })
            .await?;
            if matches && within {
                report.moved += 1;
            } else {
                report.skipped += 1;
            }
        }
        let _ = tokio::time::timeout(TIMEOUT, channel.close(200, "done".into())).await;
        report.remaining = passive_on(&connection, request.dead_letter_queue)
            .await?
            .map_or(0, |(ready, _)| u64::from(ready));
        Ok(report)
    }
    .await;
    let _ = tokio::time::timeout(TIMEOUT, connection.close(200, "done".into())).await;
    result
}

/// Percent-encodes one path segment of the management API.
fn encode_segment(segment: &str) -> String {
    segment
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// GETs a management API path and parses the JSON answer.
pub async fn management_get(
    management: &Management,
    path: &str,
) -> Result<serde_json::Value, BrokerError> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let credentials = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", management.username, management.password));
    let request = http::Request::get(format!("{}{path}", management.base_url))
        .header(http::header::AUTHORIZATION, format!("Basic {credentials}"))
        .body(Empty::new())
        .map_err(|error| BrokerError::Management(error.to_string()))?;
    let response = timed(client.request(request), BrokerError::Management).await?;
    let status = response.status();
    let body = timed(response.into_body().collect(), BrokerError::Management)
        .await?
        .to_bytes();
    if !status.is_success() {
        return Err(BrokerError::Management(format!(
            "GET {path}: HTTP {status}"
        )));
    }
    serde_json::from_slice(&body).map_err(|error| BrokerError::Management(error.to_string()))
}

/// The declared arguments of a queue as the management API reports them.
pub async fn queue_info(
    management: &Management,
    queue: &str,
) -> Result<serde_json::Value, BrokerError> {
    management_get(
        management,
        &format!("/api/queues/%2F/{}", encode_segment(queue)),
    )
    .await
}

/// How many broker nodes the management API reports running (one cluster's view).
pub async fn running_nodes(management: &Management) -> Result<usize, BrokerError> {
    Ok(count_running(
        &management_get(management, "/api/nodes").await?,
    ))
}

/// The nodes marked `running` in a management `/api/nodes` answer.
fn count_running(nodes: &serde_json::Value) -> usize {
    nodes.as_array().map_or(0, |nodes| {
        nodes
            .iter()
            .filter(|node| node["running"].as_bool() == Some(true))
            .count()
    })
}

/// Ready, unacked and consumer counts of a queue (and the dead-letter queue's depth).
pub async fn counts(
    management: &Management,
    queue: &str,
    dead_letter_queue: Option<&str>,
) -> Result<QueueCounts, BrokerError> {
    let number = |value: &serde_json::Value, key: &str| value[key].as_i64().unwrap_or(0);
    let info = queue_info(management, queue).await?;
    let dead_lettered = match dead_letter_queue {
        Some(dlq) => Some(number(&queue_info(management, dlq).await?, "messages")),
        None => None,
    };
    Ok(QueueCounts {
        ready: number(&info, "messages_ready"),
        unacked: number(&info, "messages_unacknowledged"),
        consumers: number(&info, "consumers"),
        dead_lettered,
    })
}

/// One reading of a queue for the autoscaler: ready messages and consumers by passive
/// declaration; unacknowledged messages and the publish counter from the management API
/// when there is one (its figures are sampled, so a failure there only leaves them out).
pub async fn reading(
    connection: &Connection,
    management: Option<&Management>,
    queue: &str,
) -> Result<crate::autoscaler::policy::Reading, BrokerError> {
    let Some((ready, consumers)) = passive_on(connection, queue).await? else {
        return Err(BrokerError::Refused {
            operation: "inspection",
            queue: queue.to_owned(),
            reason: "the queue does not exist on the broker".to_owned(),
        });
    };
    let mut reading = crate::autoscaler::policy::Reading {
        ready: i64::from(ready),
        unacked: None,
        consumers: i64::from(consumers),
        published: None,
    };
    if let Some(management) = management {
        match queue_info(management, queue).await {
            Ok(info) => {
                reading.unacked = info["messages_unacknowledged"].as_i64();
                reading.published = info["message_stats"]["publish"].as_u64();
            }
            Err(error) => tracing::debug!(%error, queue, "management reading failed"),
        }
    }
    Ok(reading)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn management_uri_is_split_into_url_and_credentials() {
        let management = Management::from_uri("http://u:p@10.0.0.1:15672/").expect("parses");
        assert_eq!(management.base_url, "http://10.0.0.1:15672");
        assert_eq!(
            (management.username.as_str(), management.password.as_str()),
            ("u", "p")
        );
        assert!(!format!("{management:?}").contains(":p"));
        assert!(Management::from_uri("https://u:p@h").is_none());
    }

    #[test]
    fn only_nodes_marked_running_count() {
        let nodes = serde_json::json!([
            {"name": "rabbit@a", "running": true},
            {"name": "rabbit@b", "running": false},
            {"name": "rabbit@c"},
            {"name": "rabbit@d", "running": true}
        ]);
        assert_eq!(count_running(&nodes), 2);
        assert_eq!(count_running(&serde_json::json!({"error": "x"})), 0);
    }

    #[test]
    fn queue_names_are_percent_encoded_in_paths() {
        assert_eq!(encode_segment("factory.telemetry"), "factory.telemetry");
        assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
    }

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

    #[test]
    fn arguments_become_typed_amqp_values() {
        let args = BTreeMap::from([
            ("x-queue-type".to_owned(), ArgValue::Str("quorum".into())),
            ("x-max-length".to_owned(), ArgValue::Int(10)),
        ]);
        let table = field_table(&args);
        let inner = table.inner();
        assert_eq!(inner.len(), 2);
        assert!(matches!(
            inner.get("x-max-length"),
            Some(AMQPValue::LongLongInt(10))
        ));
    }
}
