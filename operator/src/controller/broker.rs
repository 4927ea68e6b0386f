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
use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
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

/// Declares the dead-letter queue (when given) and the queue with its arguments. Declaring
/// is idempotent, and re-creates a queue deleted by hand. Returns the queue's ready count.
pub async fn declare(
    uri: &str,
    queue: &str,
    args: &BTreeMap<String, ArgValue>,
    dead_letter_queue: Option<&str>,
    queue_type: &str,
) -> Result<u32, BrokerError> {
    let connection = connect(uri).await?;
    let result = async {
        let channel = timed(connection.create_channel(), BrokerError::Connect).await?;
        let options = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        if let Some(dlq) = dead_letter_queue {
            let mut dlq_args = BTreeMap::new();
            dlq_args.insert(
                "x-queue-type".to_owned(),
                ArgValue::Str(queue_type.to_owned()),
            );
            timed(
                channel.queue_declare(dlq.into(), options, field_table(&dlq_args)),
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

/// Deletes the queue (and its dead-letter queue). Refuses a non-empty queue unless
/// `allow_non_empty`; a missing queue counts as deleted.
pub async fn delete(
    uri: &str,
    queue: &str,
    dead_letter_queue: Option<&str>,
    allow_non_empty: bool,
) -> Result<(), BrokerError> {
    if !allow_non_empty {
        if let Some(messages) = inspect(uri, queue).await? {
            if messages > 0 {
                return Err(BrokerError::NotEmpty {
                    queue: queue.to_owned(),
                    messages,
                });
            }
        }
    }
    let connection = connect(uri).await?;
    let result = async {
        let channel = timed(connection.create_channel(), BrokerError::Connect).await?;
        for name in std::iter::once(queue).chain(dead_letter_queue) {
            timed(
                channel.queue_delete(name.into(), QueueDeleteOptions::default()),
                |reason| BrokerError::Refused {
                    operation: "deletion",
                    queue: name.to_owned(),
                    reason,
                },
            )
            .await?;
        }
        let _ = tokio::time::timeout(TIMEOUT, channel.close(200, "done".into())).await;
        Ok(())
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
    fn queue_names_are_percent_encoded_in_paths() {
        assert_eq!(encode_segment("factory.telemetry"), "factory.telemetry");
        assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
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
