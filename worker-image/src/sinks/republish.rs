//! Republish sink: the processed message as JSON to an exchange, persistent, with the
//! envelope id as the AMQP message id (downstream consumers dedupe on it), each publish
//! confirmed by the broker before the batch counts as written.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use std::path::{Path, PathBuf};
use tokio::sync::Mutex;
use tributary_contract::worker_config::{BatchConfig, RepublishSinkConfig};
use tributary_service_kit::amqp;

use super::{json_bytes, read_secret, Prepared, SinkBuildError, SinkError};
use crate::record::Record;

/// The broker a republish sink without its own `uriFile` publishes to: the consumed one.
#[derive(Clone, Copy, Debug)]
pub struct DefaultBroker<'a> {
    /// Its URI (credentials inside: never logged).
    pub uri: &'a str,
    /// The PEM file of its private CA, if any.
    pub ca_file: Option<&'a Path>,
}

impl DefaultBroker<'_> {
    /// The broker a sink publishes to: its own `uri_file` (read now) with its own
    /// `ca_file`, or this one. Returns the URI and the CA file.
    pub fn or_own(
        &self,
        sink: &str,
        uri_file: Option<&Path>,
        ca_file: Option<&Path>,
    ) -> Result<(String, Option<PathBuf>), SinkBuildError> {
        Ok(match uri_file {
            Some(path) => (read_secret(sink, path)?, ca_file.map(Path::to_path_buf)),
            None => (self.uri.to_string(), self.ca_file.map(Path::to_path_buf)),
        })
    }
}

impl<'a> From<&'a str> for DefaultBroker<'a> {
    fn from(uri: &'a str) -> Self {
        DefaultBroker { uri, ca_file: None }
    }
}

/// The republish sink.
pub struct RepublishSink {
    name: String,
    uri: String,
    ca_file: Option<PathBuf>,
    exchange: String,
    routing_key: String,
    batch: BatchConfig,
    channel: Mutex<Option<(Connection, Channel)>>,
}

impl std::fmt::Debug for RepublishSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepublishSink")
            .field("name", &self.name)
            .field("routing_key", &self.routing_key)
            .finish()
    }
}

impl RepublishSink {
    /// Builds the sink; the URI (and CA file) is the sink's own or the consumed broker's.
    pub fn build(
        config: &RepublishSinkConfig,
        default: DefaultBroker<'_>,
    ) -> Result<Self, SinkBuildError> {
        let (uri, ca_file) = default.or_own(
            &config.name,
            config.uri_file.as_deref(),
            config.ca_file.as_deref(),
        )?;
        Ok(Self {
            name: config.name.clone(),
            uri,
            ca_file,
            exchange: config.exchange.clone(),
            routing_key: config.routing_key.clone(),
            batch: config.batch.clone(),
            channel: Mutex::new(None),
        })
    }

    /// The sink's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The batching policy.
    pub fn batch_config(&self) -> &BatchConfig {
        &self.batch
    }

    /// Connects.
    pub async fn init(&self) -> Result<(), SinkError> {
        self.channel().await.map(|_| ())
    }

    /// The JSON body.
    pub fn prepare(&self, record: &Record) -> Result<Prepared, String> {
        Ok(Prepared {
            id: record.id.clone(),
            key: None,
            bytes: json_bytes(&record.value),
            values: Vec::new(),
            refused: None,
        })
    }

    /// Publishes the batch and waits for every confirm.
    pub async fn write(&self, batch: &[Prepared]) -> Result<(), SinkError> {
        let channel = self.channel().await?;
        let result = publish_all(&channel, &self.exchange, &self.routing_key, batch).await;
        if result.is_err() {
            *self.channel.lock().await = None;
        }
        result
    }

    async fn channel(&self) -> Result<Channel, SinkError> {
        let mut guard = self.channel.lock().await;
        if let Some((connection, channel)) = guard.as_ref() {
            if connection.status().connected() && channel.status().connected() {
                return Ok(channel.clone());
            }
        }
        // A certificate error is an outage like any other: the batch waits and is retried.
        let connection = amqp::connect(
            &self.uri,
            self.ca_file.as_deref(),
            ConnectionProperties::default(),
        )
        .await
        .map_err(|e| SinkError::Unavailable(format!("connect: {e}")))?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| SinkError::Unavailable(format!("channel: {e}")))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| SinkError::Unavailable(format!("confirm.select: {e}")))?;
        *guard = Some((connection, channel.clone()));
        Ok(channel)
    }
}

/// Publishes persistent JSON messages with their ids and waits for all confirms.
pub async fn publish_all(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    batch: &[Prepared],
) -> Result<(), SinkError> {
    let mut confirms = Vec::with_capacity(batch.len());
    for item in batch {
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(item.id.as_str().into());
        let confirm = channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                // Mandatory: an unroutable message comes back instead of vanishing.
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &item.bytes,
                properties,
            )
            .await
            .map_err(|e| SinkError::Unavailable(format!("publish: {e}")))?;
        confirms.push(confirm);
    }
    for confirm in confirms {
        let confirmation = confirm
            .await
            .map_err(|e| SinkError::Unavailable(format!("confirm: {e}")))?;
        if confirmation.is_nack() {
            return Err(SinkError::Unavailable(
                "broker refused (nack) a publish".into(),
            ));
        }
        if confirmation.take_message().is_some() {
            // No queue bound yet: retried, as the topology may still be in the making.
            return Err(SinkError::Unavailable(format!(
                "unroutable: exchange `{exchange}`, routing key `{routing_key}`"
            )));
        }
    }
    Ok(())
}
