//! The path every device message takes, whatever the protocol: permission → size → route →
//! envelope → broker. Shared by the MQTT sessions and the HTTP handler.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tributary_contract::envelope::{Envelope, MqttProperties, Payload, Protocol};
use tributary_contract::gateway_config::{DeliveryMode, Limits};

use crate::auth::Authenticator;
use crate::broker::{Broker, PublishError};
use crate::metrics::{Metrics, ProtocolLabel, ProtocolLabels, RejectReason};
use crate::registry::activity::Event;
use crate::registry::table::Device;
use crate::registry::Registry;
use crate::topics::{template_allows, Permissions, Router};

/// Why a message was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IngestError {
    /// Topic outside the device's permissions.
    #[error("topic not permitted")]
    NotPermitted,
    /// No route matches the topic.
    #[error("no route for topic")]
    NoRoute,
    /// Payload over the limit.
    #[error("payload too large")]
    TooLarge,
    /// The device exceeded its message rate.
    #[error("rate limited")]
    RateLimited,
    /// The broker did not confirm.
    #[error(transparent)]
    Broker(#[from] PublishError),
}

impl IngestError {
    /// The metrics reason.
    pub fn reason(&self) -> RejectReason {
        match self {
            IngestError::NotPermitted => RejectReason::NotPermitted,
            IngestError::NoRoute => RejectReason::NoRoute,
            IngestError::TooLarge => RejectReason::TooLarge,
            IngestError::RateLimited => RejectReason::RateLimited,
            IngestError::Broker(PublishError::Unavailable) => RejectReason::BrokerUnavailable,
            IngestError::Broker(_) => RejectReason::BrokerRefused,
        }
    }
}

/// Everything a message needs on its way in; one per gateway process.
pub struct Gateway {
    /// Tenant written into envelopes.
    pub tenant: String,
    /// Gateway name written into envelopes.
    pub gateway: String,
    /// Device authentication.
    pub auth: Arc<Authenticator>,
    /// Publish permissions.
    pub permissions: Permissions,
    /// Topic → queues.
    pub router: Router,
    /// The broker publisher.
    pub broker: Arc<Broker>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Limits.
    pub limits: Limits,
    /// When to acknowledge.
    pub delivery: DeliveryMode,
    /// Per-device token buckets.
    pub rate: RateLimiter,
    /// MQTT connections allowed (permits held by sessions).
    pub connections: Arc<Semaphore>,
    /// Messages in flight across the gateway (backpressure).
    pub in_flight: Arc<Semaphore>,
    /// Cancelled when the gateway starts draining (stop accepting new work).
    pub draining: CancellationToken,
    /// Live MQTT sessions by device and client id (client-id takeover).
    pub sessions: Arc<crate::mqtt::registry::Sessions>,
    /// The device table, when the Gateway has one (extra topics, attributes, activity).
    pub registry: Option<Arc<Registry>>,
    /// Commands to devices and their responses.
    pub commands: Arc<crate::commands::Commands>,
}

/// What a device said about its message besides topic and payload; carried into the
/// envelope.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    /// The content type the device declared.
    pub content_type: Option<String>,
    /// MQTT 5 user properties, response topic and correlation data, if any was sent.
    pub mqtt: Option<MqttProperties>,
}

/// A message that passed the checks, ready to publish.
#[derive(Debug)]
pub struct Prepared {
    /// The envelope id.
    pub id: String,
    /// The device that sent it.
    pub device: String,
    /// Destination queues.
    pub queues: Vec<String>,
    /// Serialized envelope.
    pub body: Bytes,
}

impl Gateway {
    /// Checks permission, size and routes, and builds the envelope.
    pub fn prepare(
        &self,
        device: &str,
        topic: &str,
        protocol: ProtocolLabel,
        content_type: Option<String>,
        payload: &[u8],
    ) -> Result<Prepared, IngestError> {
        let metadata = Metadata {
            content_type,
            mqtt: None,
        };
        self.prepare_with(device, topic, protocol, metadata, payload)
    }

    /// [`Gateway::prepare`] with everything the device said about the message.
    pub fn prepare_with(
        &self,
        device: &str,
        topic: &str,
        protocol: ProtocolLabel,
        metadata: Metadata,
        payload: &[u8],
    ) -> Result<Prepared, IngestError> {
        self.metrics
            .messages_received
            .get_or_create(&ProtocolLabels::of(protocol))
            .inc();
        let entry = self
            .registry
            .as_ref()
            .and_then(|registry| registry.device(device));
        let result = self
            .check(device, entry.as_deref(), topic, payload)
            .map(|queues| {
                let mut envelope = build_envelope(self, device, topic, protocol, metadata, payload);
                if let Some(entry) = &entry {
                    envelope.attributes = entry.attributes.clone();
                }
                let body = serde_json::to_vec(&envelope).unwrap_or_default();
                Prepared {
                    id: envelope.id,
                    device: device.to_owned(),
                    queues,
                    body: Bytes::from(body),
                }
            });
        if let Err(error) = &result {
            self.metrics.reject(protocol, error.reason());
            self.record(device, Event::Rejected);
        }
        result
    }

    /// Records a table device's activity (no-op without a registry or for other devices).
    pub fn record(&self, device: &str, event: Event) {
        if let Some(registry) = &self.registry {
            registry.record(device, event);
        }
    }

    fn check(
        &self,
        device: &str,
        entry: Option<&Device>,
        topic: &str,
        payload: &[u8],
    ) -> Result<Vec<String>, IngestError> {
        let extra = entry.map_or(&[][..], |entry| entry.publish_topics.as_slice());
        let permitted = self.permissions.allows(device, topic)
            || extra
                .iter()
                .any(|template| template_allows(template, device, topic));
        if !permitted {
            return Err(IngestError::NotPermitted);
        }
        if payload.len() > self.limits.max_payload_bytes {
            return Err(IngestError::TooLarge);
        }
        let queues = self.router.queues_for(topic);
        if queues.is_empty() {
            return Err(IngestError::NoRoute);
        }
        Ok(queues)
    }

    /// Publishes a prepared message; `Ok` means confirmed (or handed over in fast mode).
    pub async fn deliver(
        &self,
        prepared: Prepared,
        protocol: ProtocolLabel,
    ) -> Result<String, IngestError> {
        let result = self
            .broker
            .publish(&prepared.queues, &prepared.id, prepared.body, self.delivery)
            .await;
        match result {
            Ok(()) => {
                self.metrics
                    .messages_accepted
                    .get_or_create(&ProtocolLabels::of(protocol))
                    .inc();
                self.record(&prepared.device, Event::Accepted);
                Ok(prepared.id)
            }
            Err(error) => {
                self.record(&prepared.device, Event::Rejected);
                let error = IngestError::Broker(error);
                tracing::warn!(error = %error, message_id = %prepared.id, "message not confirmed");
                self.metrics.reject(protocol, error.reason());
                Err(error)
            }
        }
    }
}

/// Message ids in strictly increasing order within this process, even within one
/// millisecond: sinks keep the newest message per key by id, so a device's burst must get
/// ids in the order it was received.
fn next_message_id() -> String {
    static GENERATOR: std::sync::Mutex<ulid::Generator> =
        std::sync::Mutex::new(ulid::Generator::new());
    let mut generator = GENERATOR
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // Overflow needs 2^80 ids in one millisecond; fall back to a fresh random id.
    generator
        .generate()
        .unwrap_or_else(|_| ulid::Ulid::generate())
        .to_string()
}

/// The envelope's `receivedAt`: RFC 3339 in UTC with exactly three fractional digits.
fn received_at(now: jiff::Timestamp) -> String {
    format!("{now:.3}")
}

fn build_envelope(
    gateway: &Gateway,
    device: &str,
    topic: &str,
    protocol: ProtocolLabel,
    metadata: Metadata,
    payload: &[u8],
) -> Envelope {
    let payload = match serde_json::from_slice::<serde_json::Value>(payload) {
        Ok(value) => Payload::Json(value),
        Err(_) => Payload::Base64(base64::engine::general_purpose::STANDARD.encode(payload)),
    };
    Envelope {
        id: next_message_id(),
        tenant: gateway.tenant.clone(),
        gateway: gateway.gateway.clone(),
        device: device.to_owned(),
        topic: topic.to_owned(),
        protocol: match protocol {
            ProtocolLabel::Mqtt => Protocol::Mqtt,
            ProtocolLabel::Http => Protocol::Http,
        },
        received_at: received_at(jiff::Timestamp::now()),
        content_type: metadata.content_type,
        mqtt: metadata.mqtt.filter(|mqtt| !mqtt.is_empty()),
        attributes: Default::default(),
        payload,
    }
}

/// Per-device token buckets: `rate` tokens per second, up to `burst`.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// A limiter allowing `per_second` sustained and `burst` extra messages.
    pub fn new(per_second: u32, burst: u32) -> Self {
        Self {
            rate: f64::from(per_second.max(1)),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `device`, or says how long until one is available.
    pub fn try_take(&self, device: &str) -> Result<(), Duration> {
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(());
        };
        if buckets.len() > 200_000 {
            let full_after = self.burst / self.rate;
            buckets.retain(|_, (_, last)| last.elapsed().as_secs_f64() < full_after);
        }
        let now = Instant::now();
        let (tokens, last) = buckets
            .entry(device.to_owned())
            .or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / self.rate))
        }
    }

    /// Waits until `device` may send (MQTT: slow the device down instead of refusing).
    pub async fn take(&self, device: &str) {
        while let Err(wait) = self.try_take(device) {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod id_tests {
    #[test]
    fn message_ids_increase_within_a_millisecond() {
        let ids: Vec<String> = (0..10_000).map(|_| super::next_message_id()).collect();
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_at_is_utc_with_milliseconds() {
        let at = |ms: i64| received_at(jiff::Timestamp::from_millisecond(ms).expect("in range"));
        assert_eq!(at(1_764_504_000_123), "2025-11-30T12:00:00.123Z");
        assert_eq!(at(1_764_504_000_000), "2025-11-30T12:00:00.000Z");
    }

    #[test]
    fn rate_limiter_allows_the_burst_then_refuses() {
        let limiter = RateLimiter::new(1, 3);
        for _ in 0..3 {
            assert!(limiter.try_take("d").is_ok());
        }
        assert!(limiter.try_take("d").is_err());
        assert!(limiter.try_take("other").is_ok(), "buckets are per device");
    }

    #[test]
    fn receive_time_has_millisecond_precision() {
        let text = format!("{:.3}", jiff::Timestamp::now());
        assert!(text.ends_with('Z'), "{text}");
        assert_eq!(text.split('.').nth(1).map(str::len), Some(4), "{text}");
    }
}
