//! One JSON envelope per device message, as published to the queue.

use serde::{Deserialize, Serialize};

/// How a device reached the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Mqtt,
    Http,
}

/// The message body: JSON when the device sent valid JSON, otherwise base64 of the bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "encoding", content = "data", rename_all = "lowercase")]
pub enum Payload {
    Json(serde_json::Value),
    Base64(String),
}

/// A device message as it travels from the gateway through the queue to the sinks.
///
/// Published persistent, with `id` as the AMQP message id. `id` is unique and sorts by
/// receive time, so sinks can skip duplicates of an at-least-once delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    /// Unique, time-sortable message id (ULID text).
    pub id: String,
    /// The tenant: the namespace of the Gateway that accepted the message.
    pub tenant: String,
    /// The Gateway resource's name.
    pub gateway: String,
    /// The authenticated device id.
    pub device: String,
    /// The topic the device published on (for HTTP, the path below `/v1/publish/`).
    pub topic: String,
    pub protocol: Protocol,
    /// When the gateway received the message, RFC 3339 with milliseconds, UTC.
    pub received_at: String,
    /// The content type the device declared, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    pub payload: Payload,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips_through_json_with_camel_case_fields() {
        let envelope = Envelope {
            id: "01J0000000000000000000000".into(),
            tenant: "factory".into(),
            gateway: "line-1".into(),
            device: "press-7".into(),
            topic: "devices/press-7/telemetry".into(),
            protocol: Protocol::Mqtt,
            received_at: "2026-11-26T09:00:00.000Z".into(),
            content_type: None,
            payload: Payload::Json(serde_json::json!({"temp": 21.5})),
        };
        let text = serde_json::to_string(&envelope).expect("serialize");
        assert!(text.contains("\"receivedAt\""));
        assert!(text.contains("\"encoding\":\"json\""));
        let back: Envelope = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, envelope);
    }
}
