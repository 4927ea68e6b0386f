//! Expired commands: those whose time-to-live ran out in a device's queue are dead-lettered
//! by the broker to the tenant's expired exchange; every gateway consumes its queue (any
//! pod may take any), counts them, logs them, and counts them per device in the device
//! report so the operator can raise Events.
//!
//! Also where each new commands connection starts: the tenant topology is declared first.

use std::sync::Arc;

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use tributary_contract::command::{expired_queue, HEADER_NAME};

use super::link::{Linked, OnConnect};
use super::topology;
use crate::metrics::Metrics;
use crate::registry::activity::Event;
use crate::registry::Registry;

/// Expired commands taken unacknowledged at once.
const PREFETCH: u16 = 100;

/// One expired command, as far as its message tells.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExpiredCommand {
    /// The device it was for.
    pub device: Option<String>,
    /// The command id.
    pub id: Option<String>,
    /// The command name.
    pub name: Option<String>,
    /// Why the broker dead-lettered it (`expired`; other reasons are not expiries).
    pub reason: Option<String>,
}

impl ExpiredCommand {
    /// Reads a dead-lettered command: the device from the `x-death` routing keys (else the
    /// message's routing key), id and name from the contract's properties.
    pub fn read(properties: &BasicProperties, routing_key: &str) -> Self {
        let headers = properties.headers().clone().unwrap_or_default();
        let death = last_death(&headers);
        let device = death
            .as_ref()
            .and_then(|death| death.inner().get("routing-keys"))
            .and_then(AMQPValue::as_array)
            .and_then(|keys| keys.as_slice().first())
            .and_then(text)
            .or_else(|| (!routing_key.is_empty()).then(|| routing_key.to_owned()));
        Self {
            device,
            id: properties
                .message_id()
                .as_ref()
                .or(properties.correlation_id().as_ref())
                .map(|id| id.as_str().to_owned()),
            name: headers.inner().get(HEADER_NAME).and_then(text),
            reason: death
                .as_ref()
                .and_then(|death| death.inner().get("reason"))
                .and_then(text),
        }
    }

    /// Whether the broker dead-lettered it because its time-to-live ran out.
    pub fn is_expiry(&self) -> bool {
        self.reason.as_deref() == Some("expired")
    }
}

/// The most recent `x-death` entry (RabbitMQ puts it first).
fn last_death(headers: &FieldTable) -> Option<FieldTable> {
    headers
        .inner()
        .get("x-death")
        .and_then(AMQPValue::as_array)
        .and_then(|deaths| deaths.as_slice().first())
        .and_then(AMQPValue::as_field_table)
        .cloned()
}

fn text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(text) => String::from_utf8(text.as_bytes().to_vec()).ok(),
        AMQPValue::ShortString(text) => Some(text.as_str().to_owned()),
        _ => None,
    }
}

/// What each new commands connection starts: the tenant topology, then the consumer of
/// expired commands.
pub fn on_connect(
    tenant: String,
    metrics: Arc<Metrics>,
    registry: Option<Arc<Registry>>,
) -> OnConnect {
    Arc::new(move |linked: Arc<Linked>| {
        tokio::spawn(run(
            linked,
            tenant.clone(),
            Arc::clone(&metrics),
            registry.clone(),
        ));
    })
}

async fn run(
    linked: Arc<Linked>,
    tenant: String,
    metrics: Arc<Metrics>,
    registry: Option<Arc<Registry>>,
) {
    let declared = async {
        let (_guard, channel) = linked.declarer(&tenant).await?;
        topology::declare_tenant(&channel, &tenant)
            .await
            .map_err(topology::BrokerError::from)
    }
    .await;
    if let Err(error) = declared {
        metrics.commands.broker_error(true);
        tracing::warn!(%error, tenant, "cannot declare the command exchanges; commands are unavailable until the next connection");
        return;
    }
    let consumer = async {
        let channel = linked.own_channel().await?;
        channel
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await
            .map_err(topology::BrokerError::from)?;
        let tag = format!("expired.{}", ulid::Ulid::generate());
        let consumer = channel
            .basic_consume(
                expired_queue(&tenant).into(),
                tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(topology::BrokerError::from)?;
        Ok::<_, topology::BrokerError>(consumer)
    }
    .await;
    let mut consumer = match consumer {
        Ok(consumer) => consumer,
        Err(error) => {
            metrics.commands.broker_error(true);
            tracing::warn!(%error, "cannot consume the expired commands");
            return;
        }
    };
    while let Some(Ok(delivery)) = consumer.next().await {
        let expired = ExpiredCommand::read(&delivery.properties, delivery.routing_key.as_str());
        record(&expired, &metrics, registry.as_deref());
        let _ = delivery.acker.ack(BasicAckOptions::default()).await;
    }
}

fn record(expired: &ExpiredCommand, metrics: &Metrics, registry: Option<&Registry>) {
    let (device, id, name) = (
        expired.device.as_deref().unwrap_or("?"),
        expired.id.as_deref().unwrap_or("?"),
        expired.name.as_deref().unwrap_or("?"),
    );
    if !expired.is_expiry() {
        tracing::info!(device, command_id = id, command = name, reason = ?expired.reason, "command dead-lettered for another reason than expiry");
        return;
    }
    metrics.commands.expired.inc();
    tracing::info!(
        device,
        command_id = id,
        command = name,
        "command expired before the device took it"
    );
    if let (Some(registry), Some(device)) = (registry, &expired.device) {
        registry.record(device, Event::CommandExpired);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{FieldArray, LongString};

    fn dead_letter(reason: &str) -> BasicProperties {
        let mut death = FieldTable::default();
        death.insert("reason".into(), AMQPValue::LongString(reason.into()));
        death.insert(
            "routing-keys".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongString(
                LongString::from("press-1"),
            )])),
        );
        let mut headers = FieldTable::default();
        headers.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
        );
        headers.insert(HEADER_NAME.into(), AMQPValue::LongString("reboot".into()));
        BasicProperties::default()
            .with_message_id("c9".into())
            .with_headers(headers)
    }

    #[test]
    fn an_expired_command_names_its_device_id_and_name() {
        let expired = ExpiredCommand::read(&dead_letter("expired"), "ignored");
        assert_eq!(expired.device.as_deref(), Some("press-1"));
        assert_eq!(expired.id.as_deref(), Some("c9"));
        assert_eq!(expired.name.as_deref(), Some("reboot"));
        assert!(expired.is_expiry());
        assert!(!ExpiredCommand::read(&dead_letter("rejected"), "").is_expiry());
    }

    #[test]
    fn without_x_death_the_routing_key_names_the_device() {
        let expired = ExpiredCommand::read(&BasicProperties::default(), "press-2");
        assert_eq!(expired.device.as_deref(), Some("press-2"));
        assert!(!expired.is_expiry());
    }
}
