//! The pipeline's backlog: the depth of the pipeline's queue (`live.backlogQueue`), read
//! every [`POLL_EVERY`] with a passive `queue.declare` (which creates nothing) on the live
//! consumer's connection, and served by `/v1/backlog`. However many clients ask, the broker
//! is asked once per interval.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::Connection;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// How often the depth is read.
pub const POLL_EVERY: Duration = Duration::from_secs(5);
/// A reading older than this is not served (the broker is away).
pub const STALE_AFTER: Duration = Duration::from_secs(20);

/// One reading of the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    /// Messages ready in the queue (not yet delivered to a worker).
    pub messages: u32,
    /// Consumers of the queue (the workers' channels).
    pub consumers: u32,
    /// When it was read (RFC 3339).
    pub observed_at: String,
}

/// The latest reading, shared by the requests.
#[derive(Debug)]
pub struct Backlog {
    queue: String,
    latest: Mutex<Option<(Instant, Reading)>>,
}

impl Backlog {
    /// No reading yet for `queue`.
    pub fn new(queue: String) -> Self {
        Self {
            queue,
            latest: Mutex::new(None),
        }
    }

    /// The queue whose depth this is.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Instant, Reading)>> {
        self.latest.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a reading.
    pub fn record(&self, reading: Reading) {
        *self.lock() = Some((Instant::now(), reading));
    }

    /// The latest reading, unless it is older than [`STALE_AFTER`].
    pub fn current(&self) -> Option<Reading> {
        self.lock()
            .as_ref()
            .filter(|(at, _)| at.elapsed() <= STALE_AFTER)
            .map(|(_, reading)| reading.clone())
    }

    /// The answer of `/v1/backlog` for a reading.
    pub fn answer(reading: &Reading) -> Value {
        json!({
            "messages": reading.messages,
            "consumers": reading.consumers,
            "observedAt": reading.observed_at,
        })
    }
}

/// Reads the depth on `connection` every [`POLL_EVERY`] until `stop` or until the
/// connection fails. A queue that does not exist (the broker closes the channel) is logged
/// and asked again on a new channel next time.
pub async fn poll(
    connection: &Connection,
    backlog: &Backlog,
    stop: &CancellationToken,
) -> Result<(), lapin::Error> {
    let mut missing_logged = false;
    loop {
        let channel = connection.create_channel().await?;
        loop {
            let declared = channel
                .queue_declare(
                    backlog.queue.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await;
            match declared {
                Ok(queue) => {
                    missing_logged = false;
                    backlog.record(Reading {
                        messages: queue.message_count(),
                        consumers: queue.consumer_count(),
                        observed_at: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
                    });
                }
                Err(error) if connection.status().connected() => {
                    if !missing_logged {
                        tracing::warn!(queue = %backlog.queue, %error, "cannot read the backlog queue's depth");
                        missing_logged = true;
                    }
                }
                Err(error) => return Err(error),
            }
            tokio::select! {
                () = tokio::time::sleep(POLL_EVERY) => {}
                () = stop.cancelled() => return Ok(()),
            }
            if !channel.status().connected() {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reading_is_served_until_it_goes_stale() {
        let backlog = Backlog::new("factory.telemetry".into());
        assert_eq!(backlog.current(), None);
        let reading = Reading {
            messages: 42,
            consumers: 2,
            observed_at: "2026-12-01T03:00:00.000Z".into(),
        };
        backlog.record(reading.clone());
        assert_eq!(backlog.current(), Some(reading.clone()));
        *backlog.lock() = Some((Instant::now() - STALE_AFTER * 2, reading.clone()));
        assert_eq!(backlog.current(), None);
        assert_eq!(
            Backlog::answer(&reading),
            json!({"messages": 42, "consumers": 2, "observedAt": "2026-12-01T03:00:00.000Z"})
        );
    }
}
