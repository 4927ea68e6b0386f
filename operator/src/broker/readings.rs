//! What a queue holds: the autoscaler's [`Reading`], the Queue status' [`QueueCounts`], and
//! the total a broker switch waits for. Ready messages come from passive declarations
//! (exact), the rest from the management API (sampled).

use super::management::{self, HttpClient, Management};
use super::topology::passive;
use super::BrokerError;
use lapin::Connection;

/// Message counts of a queue, for the Queue's status and metrics.
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

/// One reading of a queue, for the autoscaler.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reading {
    /// Messages waiting to be delivered.
    pub ready: i64,
    /// Messages delivered and not yet acknowledged, when the broker tells (management API).
    pub unacked: Option<i64>,
    /// Consumers of the queue.
    pub consumers: i64,
    /// Cumulative count of messages published to the queue, when the broker tells.
    pub published: Option<u64>,
}

impl Reading {
    /// Ready + unacknowledged.
    pub fn backlog(&self) -> i64 {
        self.ready.max(0) + self.unacked.unwrap_or(0).max(0)
    }
}

/// Ready, unacked and consumer counts of a queue (and the dead-letter queue's depth), from
/// the management API.
pub async fn counts(
    http: &HttpClient,
    management: &Management,
    queue: &str,
    dead_letter_queue: Option<&str>,
) -> Result<QueueCounts, BrokerError> {
    let number = |value: &serde_json::Value, key: &str| value[key].as_i64().unwrap_or(0);
    let info = management::queue_info(http, management, queue).await?;
    let dead_lettered = match dead_letter_queue {
        Some(dlq) => Some(number(
            &management::queue_info(http, management, dlq).await?,
            "messages",
        )),
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
    http: &HttpClient,
    management: Option<&Management>,
    queue: &str,
) -> Result<Reading, BrokerError> {
    let Some((ready, consumers)) = passive(connection, queue).await? else {
        return Err(BrokerError::Refused {
            operation: "inspection",
            queue: queue.to_owned(),
            reason: "the queue does not exist on the broker".to_owned(),
        });
    };
    let mut reading = Reading {
        ready: i64::from(ready),
        unacked: None,
        consumers: i64::from(consumers),
        published: None,
    };
    if let Some(management) = management {
        match management::queue_info(http, management, queue).await {
            Ok(info) => {
                reading.unacked = info["messages_unacknowledged"].as_i64();
                reading.published = info["message_stats"]["publish"].as_u64();
            }
            Err(error) => tracing::debug!(%error, queue, "management reading failed"),
        }
    }
    Ok(reading)
}

/// Messages a set of queues hold: ready ones by passive declaration (exact), plus
/// unacknowledged ones from the management API when given. Missing queues hold none.
pub async fn message_total(
    connection: &Connection,
    http: &HttpClient,
    management: Option<&Management>,
    queues: &[&str],
) -> Result<u64, BrokerError> {
    let mut total = 0u64;
    for queue in queues {
        let Some((ready, _)) = passive(connection, queue).await? else {
            continue;
        };
        total += u64::from(ready);
        if let Some(management) = management {
            let info = management::queue_info(http, management, queue).await?;
            total += info["messages_unacknowledged"].as_u64().unwrap_or(0);
        }
    }
    Ok(total)
}
