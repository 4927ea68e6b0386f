//! The queue topology over AMQP (lapin): declaring, inspecting and deleting queues on an
//! open connection. Each operation takes a channel of its own, since a refusal closes the
//! channel, never the connection.

use super::pool::Amqp;
use super::{timed, BrokerError, TIMEOUT};
use crate::build::queue::ArgValue;
use lapin::options::{ExchangeDeclareOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use std::collections::BTreeMap;
use tributary_service_kit::amqp;

/// Opens an AMQP connection (bounded by the operation timeout), trusting the target's
/// private CA besides the system roots; host names are verified. The error names the cause
/// (an unknown issuer, a refused login), never the URI or its password.
pub async fn connect(target: Amqp<'_>) -> Result<Connection, BrokerError> {
    timed(
        amqp::connect_with_ca(
            target.uri,
            target.ca.map(str::to_owned),
            ConnectionProperties::default(),
        ),
        BrokerError::Connect,
    )
    .await
}

/// A new channel on `connection`.
pub(super) async fn channel(connection: &Connection) -> Result<Channel, BrokerError> {
    timed(connection.create_channel(), BrokerError::Connect).await
}

/// Closes a channel, waiting at most the timeout (after a refusal the broker already
/// closed it; closing again is harmless).
pub(super) async fn close(channel: &Channel) {
    let _ = tokio::time::timeout(TIMEOUT, channel.close(200, "done".into())).await;
}

/// Closes a connection, waiting at most the timeout.
pub(super) async fn close_connection(connection: &Connection) {
    let _ = tokio::time::timeout(TIMEOUT, connection.close(200, "done".into())).await;
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
    connection: &Connection,
    queue: &str,
    args: &BTreeMap<String, ArgValue>,
    dead_letter: Option<(&str, &BTreeMap<String, ArgValue>)>,
) -> Result<u32, BrokerError> {
    let channel = channel(connection).await?;
    let options = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let refused = |queue: &str| {
        let queue = queue.to_owned();
        move |reason| BrokerError::Refused {
            operation: "declaration",
            queue,
            reason,
        }
    };
    if let Some((dlq, dlq_args)) = dead_letter {
        timed(
            channel.queue_declare(dlq.into(), options, field_table(dlq_args)),
            refused(dlq),
        )
        .await?;
    }
    let declared = timed(
        channel.queue_declare(queue.into(), options, field_table(args)),
        refused(queue),
    )
    .await?;
    close(&channel).await;
    Ok(declared.message_count())
}

/// Declares a durable topic exchange (idempotent; one that exists with another type is
/// refused by the broker and reported).
pub async fn declare_topic_exchange(
    connection: &Connection,
    exchange: &str,
) -> Result<(), BrokerError> {
    let channel = channel(connection).await?;
    let options = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    timed(
        channel.exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            options,
            FieldTable::default(),
        ),
        |reason| BrokerError::Refused {
            operation: "declaration",
            queue: exchange.to_owned(),
            reason,
        },
    )
    .await?;
    close(&channel).await;
    Ok(())
}

/// Ready messages and consumers of a queue by passive declaration (current to the moment,
/// unlike the management API's sampled statistics); `None` when it is missing. In a
/// channel of its own: a passive declaration of a missing queue closes the channel, never
/// the connection.
pub async fn passive(
    connection: &Connection,
    queue: &str,
) -> Result<Option<(u32, u32)>, BrokerError> {
    let channel = channel(connection).await?;
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
    close(&channel).await;
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

/// Whether a queue exists, with its ready count, by passive declaration.
pub async fn inspect(connection: &Connection, queue: &str) -> Result<Option<u32>, BrokerError> {
    Ok(passive(connection, queue).await?.map(|(ready, _)| ready))
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
    connection: &Connection,
    queue: &str,
    dead_letter_queue: Option<&str>,
    allow_non_empty: bool,
) -> Result<(), BrokerError> {
    for name in std::iter::once(queue).chain(dead_letter_queue) {
        delete_one(connection, name, allow_non_empty).await?;
    }
    Ok(())
}

/// Deletes one queue, in a channel of its own (a refusal closes the channel).
async fn delete_one(
    connection: &Connection,
    name: &str,
    allow_non_empty: bool,
) -> Result<(), BrokerError> {
    let channel = channel(connection).await?;
    let options = QueueDeleteOptions {
        if_empty: !allow_non_empty,
        ..QueueDeleteOptions::default()
    };
    let deleted = tokio::time::timeout(TIMEOUT, channel.queue_delete(name.into(), options))
        .await
        .map_err(|_| BrokerError::Timeout(TIMEOUT))?;
    let error = match deleted {
        Ok(_) => {
            close(&channel).await;
            return Ok(());
        }
        Err(error) => error,
    };
    match soft_error(&error) {
        Some(AMQPSoftError::NOTFOUND) => Ok(()),
        Some(AMQPSoftError::PRECONDITIONFAILED) if !allow_non_empty => {
            let messages = inspect(connection, name).await.ok().flatten().unwrap_or(0);
            Err(BrokerError::NotEmpty {
                queue: name.to_owned(),
                messages,
            })
        }
        _ => Err(BrokerError::Refused {
            operation: "deletion",
            queue: name.to_owned(),
            reason: error.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
