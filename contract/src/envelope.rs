//! One JSON envelope per device message, as published to the queue.

use std::collections::BTreeMap;

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
    /// The MQTT 5 properties a consumer may act on (user properties, response topic,
    /// correlation data), when the device sent any; absent for HTTP and MQTT 3.1.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<MqttProperties>,
    /// The device's attributes (its Device resource's `spec.attributes`: site, model,
    /// owner...), when it has any.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
    pub payload: Payload,
}

/// The MQTT 5 request/response and user properties of a message, as the device sent them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MqttProperties {
    /// User properties in the order sent; a name may appear more than once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub user_properties: Vec<UserProperty>,
    /// The topic the device expects a response on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_topic: Option<String>,
    /// The correlation data for a response. MQTT carries it as binary, so it is given here
    /// base64-encoded (standard alphabet, with padding).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_data: Option<String>,
}

impl MqttProperties {
    /// Whether no property is set (then the envelope carries none).
    pub fn is_empty(&self) -> bool {
        self.user_properties.is_empty()
            && self.response_topic.is_none()
            && self.correlation_data.is_none()
    }
}

/// One MQTT 5 user property: a name and a value, both UTF-8.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserProperty {
    /// The property's name.
    pub name: String,
    /// The property's value.
    pub value: String,
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
            mqtt: None,
            attributes: BTreeMap::new(),
            payload: Payload::Json(serde_json::json!({"temp": 21.5})),
        };
        let text = serde_json::to_string(&envelope).expect("serialize");
        assert!(text.contains("\"receivedAt\""));
        assert!(
            !text.contains("\"mqtt\":"),
            "absent properties are omitted: {text}"
        );
        assert!(text.contains("\"encoding\":\"json\""));
        let back: Envelope = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, envelope);
    }

    #[test]
    fn mqtt_properties_serialize_camel_case_and_parse_back() {
        let mut envelope: Envelope = serde_json::from_value(serde_json::json!({
            "id": "01J0000000000000000000000", "tenant": "t", "gateway": "g",
            "device": "d", "topic": "a/b", "protocol": "mqtt",
            "receivedAt": "2026-11-26T09:00:00.000Z",
            "payload": {"encoding": "json", "data": 1}
        }))
        .expect("an envelope without MQTT properties parses");
        assert_eq!(envelope.mqtt, None);
        envelope.mqtt = Some(MqttProperties {
            user_properties: vec![UserProperty {
                name: "site".into(),
                value: "north".into(),
            }],
            response_topic: Some("replies/d".into()),
            correlation_data: Some("AAE=".into()),
        });
        let value = serde_json::to_value(&envelope).expect("serialize");
        assert_eq!(
            value["mqtt"],
            serde_json::json!({
                "userProperties": [{"name": "site", "value": "north"}],
                "responseTopic": "replies/d",
                "correlationData": "AAE="
            })
        );
        let back: Envelope = serde_json::from_value(value).expect("parse");
        assert_eq!(back, envelope);
    }
}
