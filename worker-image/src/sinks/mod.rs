//! Sinks: where processed messages are written.
//!
//! Each sink has two halves. `prepare` turns one record into the bytes the sink writes
//! (run by the processing tasks, so a message a sink cannot encode is dead-lettered before it
//! reaches any sink), or says the sink has nothing to write for it (a command sink whose
//! `when` is false); `write` stores a batch of prepared items (run by the sink's own
//! batching task, see [`crate::batch`]). Every write is idempotent on the envelope id (a
//! command sink sends a command id derived from it).

pub mod command;
pub mod live;
pub mod postgres;
pub mod postgres_tls;
pub mod redis;
pub mod republish;
pub mod s3;
pub mod webhook;

use std::path::Path;
use std::sync::Arc;

use thiserror::Error;
use tributary_contract::worker_config::{BatchConfig, SinkConfig};

use crate::expr::CelEnv;
use crate::metrics::Metrics;
use crate::record::Record;
use republish::DefaultBroker;

/// One message, encoded for one sink.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    /// The envelope id.
    pub id: String,
    /// A sink-specific key (Redis key, the device id of a command), if any.
    pub key: Option<String>,
    /// The encoded message (a JSON line, a request body); empty for PostgreSQL, whose row
    /// is in `values`.
    pub bytes: Vec<u8>,
    /// PostgreSQL: the row as text, one value per mapped column in order (None for SQL
    /// NULL); empty for the other sinks.
    pub values: Vec<Option<String>>,
    /// Why the target would certainly refuse this message (seen while encoding, e.g. a NUL
    /// byte PostgreSQL cannot store): it is dead-lettered as `sink-rejected` without being
    /// written, and the rest of its batch is written without it.
    pub refused: Option<String>,
}

impl Prepared {
    /// The bytes it holds, counted against a batch's `maxBytes`.
    pub fn size(&self) -> usize {
        self.bytes.len() + self.values.iter().flatten().map(String::len).sum::<usize>()
    }
}

/// A failed batch write.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum SinkError {
    /// An outage: the target is unreachable, overloaded, restarting, or failing for reasons
    /// of its own (including a missing table or bucket, or refused credentials). Retried for
    /// as long as it lasts; never a reason to dead-letter.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The data itself is refused (a value the column cannot hold, a constraint, a request
    /// the target names as bad): retrying cannot help, the message is dead-lettered.
    #[error("rejected: {0}")]
    Rejected(String),
}

/// Whether an HTTP status names the request as bad (the message is dead-lettered) rather
/// than the target as unavailable or misconfigured (waited for): a 4xx, except those that
/// say something about the endpoint, the credentials or the load — 401, 403, 404, 405, 407,
/// 408, 409, 421, 423, 425 and 429.
pub fn status_rejects_the_message(status: reqwest::StatusCode) -> bool {
    status.is_client_error()
        && !matches!(
            status.as_u16(),
            401 | 403 | 404 | 405 | 407 | 408 | 409 | 421 | 423 | 425 | 429
        )
}

/// A sink that cannot be built from its config.
#[derive(Debug, Error)]
pub enum SinkBuildError {
    /// A secret file could not be read.
    #[error("sink {sink}: cannot read {path}: {message}")]
    Secret {
        /// Sink name.
        sink: String,
        /// File path.
        path: String,
        /// The I/O error.
        message: String,
    },
    /// A setting is invalid.
    #[error("sink {sink}: {message}")]
    Invalid {
        /// Sink name.
        sink: String,
        /// What is wrong.
        message: String,
    },
}

/// Reads a secret file, trimming the trailing newline editors and `kubectl` leave.
pub fn read_secret(sink: &str, path: &Path) -> Result<String, SinkBuildError> {
    std::fs::read_to_string(path)
        .map(|text| text.trim_end_matches(['\n', '\r']).to_string())
        .map_err(|e| SinkBuildError::Secret {
            sink: sink.to_string(),
            path: path.display().to_string(),
            message: e.to_string(),
        })
}

/// A configured sink.
#[derive(Debug)]
pub enum Sink {
    /// PostgreSQL rows.
    Postgres(postgres::PostgresSink),
    /// Redis latest values.
    Redis(redis::RedisSink),
    /// S3 JSON Lines objects.
    S3(s3::S3Sink),
    /// HTTP webhook.
    Webhook(webhook::WebhookSink),
    /// Republish to AMQP.
    Republish(republish::RepublishSink),
    /// Commands to devices (boxed: three compiled expressions make it the largest).
    Command(Box<command::CommandSink>),
    /// A live copy for the application API's streams.
    Live(live::LiveSink),
}

/// What the worker gives the sinks it builds.
#[derive(Debug, Clone)]
pub struct SinkContext<'a> {
    /// The consumed broker (URI and CA file), for republish, command and live sinks without
    /// their own.
    pub broker: DefaultBroker<'a>,
    /// The worker's metrics, for sinks that count more than their writes.
    pub metrics: Arc<Metrics>,
}

impl<'a> From<DefaultBroker<'a>> for SinkContext<'a> {
    /// The broker, with metrics of their own (tests, benchmarks).
    fn from(broker: DefaultBroker<'a>) -> Self {
        SinkContext {
            broker,
            metrics: Arc::new(Metrics::new()),
        }
    }
}

impl<'a> From<&'a str> for SinkContext<'a> {
    /// A broker URI, with metrics of their own (tests, benchmarks).
    fn from(uri: &'a str) -> Self {
        DefaultBroker::from(uri).into()
    }
}

impl Sink {
    /// Builds a sink (compiles expressions, reads secrets); no I/O to the target yet.
    pub fn build<'a>(
        env: &CelEnv,
        config: &SinkConfig,
        context: impl Into<SinkContext<'a>>,
    ) -> Result<Self, SinkBuildError> {
        let context = context.into();
        let default_broker = context.broker;
        Ok(match config {
            SinkConfig::Postgres(c) => Sink::Postgres(postgres::PostgresSink::build(env, c)?),
            SinkConfig::Redis(c) => Sink::Redis(redis::RedisSink::build(env, c)?),
            SinkConfig::S3(c) => Sink::S3(s3::S3Sink::build(c)?),
            SinkConfig::Webhook(c) => Sink::Webhook(webhook::WebhookSink::build(c)?),
            SinkConfig::Republish(c) => {
                Sink::Republish(republish::RepublishSink::build(c, default_broker)?)
            }
            SinkConfig::Command(c) => Sink::Command(Box::new(command::CommandSink::build(
                env,
                c,
                default_broker,
                context.metrics,
            )?)),
            SinkConfig::Live(c) => {
                Sink::Live(live::LiveSink::build(c, default_broker, context.metrics)?)
            }
        })
    }

    /// The sink's name.
    pub fn name(&self) -> &str {
        match self {
            Sink::Postgres(s) => s.name(),
            Sink::Redis(s) => s.name(),
            Sink::S3(s) => s.name(),
            Sink::Webhook(s) => s.name(),
            Sink::Republish(s) => s.name(),
            Sink::Command(s) => s.name(),
            Sink::Live(s) => s.name(),
        }
    }

    /// The sink's batching policy.
    pub fn batch_config(&self) -> &BatchConfig {
        match self {
            Sink::Postgres(s) => s.batch_config(),
            Sink::Redis(s) => s.batch_config(),
            Sink::S3(s) => s.batch_config(),
            Sink::Webhook(s) => s.batch_config(),
            Sink::Republish(s) => s.batch_config(),
            Sink::Command(s) => s.batch_config(),
            Sink::Live(s) => s.batch_config(),
        }
    }

    /// One-time setup at start (connect, create the table or bucket).
    pub async fn init(&self) -> Result<(), SinkError> {
        match self {
            Sink::Postgres(s) => s.init().await,
            Sink::Redis(s) => s.init().await,
            Sink::S3(s) => s.init().await,
            Sink::Webhook(_) => Ok(()),
            Sink::Republish(s) => s.init().await,
            Sink::Command(s) => s.init().await,
            Sink::Live(s) => s.init().await,
        }
    }

    /// Encodes one record; `None` when the sink has nothing to write for it (a command
    /// sink whose `when` is false); an error is permanent for that message.
    pub fn prepare(&self, record: &Record) -> Result<Option<Prepared>, String> {
        match self {
            Sink::Postgres(s) => s.prepare(record).map(Some),
            Sink::Redis(s) => s.prepare(record).map(Some),
            Sink::S3(s) => s.prepare(record).map(Some),
            Sink::Webhook(s) => s.prepare(record).map(Some),
            Sink::Republish(s) => s.prepare(record).map(Some),
            Sink::Command(s) => s.prepare(record),
            Sink::Live(s) => s.prepare(record).map(Some),
        }
    }

    /// Writes a batch; returns only when the target confirmed all of it.
    pub async fn write(&self, batch: &[Prepared]) -> Result<(), SinkError> {
        match self {
            Sink::Postgres(s) => s.write(batch).await,
            Sink::Redis(s) => s.write(batch).await,
            Sink::S3(s) => s.write(batch).await,
            Sink::Webhook(s) => s.write(batch).await,
            Sink::Republish(s) => s.write(batch).await,
            Sink::Command(s) => s.write(batch).await,
            Sink::Live(s) => s.write(batch).await,
        }
    }
}

/// Whether the broker closed the channel because the thing named does not exist (404).
pub(crate) fn broker_not_found(error: &lapin::Error) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    matches!(
        error.kind(),
        lapin::ErrorKind::ProtocolError(amqp)
            if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND))
    )
}

/// Looks an exchange up without declaring it, which needs no permission; a missing one
/// fails with [`broker_not_found`] and closes the channel.
pub(crate) async fn exchange_exists(
    channel: &lapin::Channel,
    exchange: &str,
) -> Result<(), lapin::Error> {
    let passive = lapin::options::ExchangeDeclareOptions {
        passive: true,
        ..lapin::options::ExchangeDeclareOptions::default()
    };
    // The kind is not checked by a passive declaration.
    channel
        .exchange_declare(
            exchange.into(),
            lapin::ExchangeKind::Direct,
            passive,
            lapin::types::FieldTable::default(),
        )
        .await
}

/// Serializes a JSON value; a `serde_json::Value` always serializes.
pub(crate) fn json_bytes(value: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::status_rejects_the_message;
    use reqwest::StatusCode;

    #[test]
    fn only_statuses_that_name_the_request_reject_the_message() {
        for rejected in [400, 410, 413, 415, 422] {
            let status = StatusCode::from_u16(rejected).expect("status");
            assert!(status_rejects_the_message(status), "{rejected}");
        }
        for waited in [401, 403, 404, 408, 429, 500, 502, 503, 504] {
            let status = StatusCode::from_u16(waited).expect("status");
            assert!(!status_rejects_the_message(status), "{waited}");
        }
    }
}
