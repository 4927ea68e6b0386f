//! The message as the pipeline and the sinks see it: a JSON object built from the envelope,
//! with dotted-path access and key templates.

use serde_json::{Map, Value};
use thiserror::Error;
use tributary_contract::envelope::{Envelope, Payload};

/// A message on its way to the sinks: the envelope id (the idempotency key, whatever the
/// processing did to the fields) and the processed JSON object.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The envelope id, unchanged by processing.
    pub id: String,
    /// The processed message.
    pub value: Value,
}

/// Errors of record construction and templates.
#[derive(Debug, Error, PartialEq)]
pub enum RecordError {
    /// The message body is not a valid envelope.
    #[error("bad envelope: {0}")]
    BadEnvelope(String),
    /// A key template names a field the message lacks.
    #[error("key template field `{0}` is missing or null")]
    MissingField(String),
    /// A key template is malformed.
    #[error("bad key template: {0}")]
    BadTemplate(String),
}

/// Parses a message body into its envelope.
pub fn parse_envelope(body: &[u8]) -> Result<Envelope, RecordError> {
    serde_json::from_slice(body).map_err(|e| RecordError::BadEnvelope(e.to_string()))
}

/// The record of an envelope: the envelope's fields, with `payload` the device's JSON value
/// (or base64 text) and `payloadEncoding` saying which, and `attributes` the device's
/// attributes from its Device resource (an empty object when it has none, so that steps
/// can test `has(attributes.site)`).
pub fn record_of(envelope: &Envelope) -> Record {
    into_record(envelope.clone())
}

/// [`record_of`], taking the envelope: its strings and payload move into the record.
pub fn into_record(envelope: Envelope) -> Record {
    let mut object = Map::new();
    object.insert("id".into(), envelope.id.as_str().into());
    object.insert("tenant".into(), envelope.tenant.into());
    object.insert("gateway".into(), envelope.gateway.into());
    object.insert("device".into(), envelope.device.into());
    object.insert("topic".into(), envelope.topic.into());
    let protocol = serde_json::to_value(envelope.protocol).unwrap_or(Value::Null);
    object.insert("protocol".into(), protocol);
    object.insert("receivedAt".into(), envelope.received_at.into());
    if let Some(content_type) = envelope.content_type {
        object.insert("contentType".into(), content_type.into());
    }
    let (encoding, payload) = match envelope.payload {
        Payload::Json(value) => ("json", value),
        Payload::Base64(text) => ("base64", Value::String(text)),
    };
    object.insert("payload".into(), payload);
    object.insert("payloadEncoding".into(), encoding.into());
    let attributes: Map<String, Value> = envelope
        .attributes
        .into_iter()
        .map(|(key, value)| (key, Value::String(value)))
        .collect();
    object.insert("attributes".into(), Value::Object(attributes));
    Record {
        id: envelope.id,
        value: Value::Object(object),
    }
}

/// The value at a dotted path (`payload.site`), if present.
pub fn get_path<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(value, |current, part| current.as_object()?.get(part))
}

/// Sets the value at a dotted path, creating (or replacing non-object) intermediates.
pub fn set_path(value: &mut Value, path: &str, new: Value) {
    let mut current = value;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        if !current.is_object() {
            *current = Value::Object(Map::new());
        }
        let Value::Object(object) = current else {
            return;
        };
        if parts.peek().is_none() {
            object.insert(part.to_string(), new);
            return;
        }
        current = object
            .entry(part.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
    }
}

/// Removes the value at a dotted path; a missing path is not an error.
pub fn remove_path(value: &mut Value, path: &str) {
    let (parent, last) = match path.rsplit_once('.') {
        Some((parent, last)) => match get_path_mut(value, parent) {
            Some(parent) => (parent, last),
            None => return,
        },
        None => (value, path),
    };
    if let Some(object) = parent.as_object_mut() {
        object.remove(last);
    }
}

fn get_path_mut<'a>(value: &'a mut Value, path: &str) -> Option<&'a mut Value> {
    path.split('.').try_fold(value, |current, part| {
        current.as_object_mut()?.get_mut(part)
    })
}

/// Whether a dotted path is well formed: non-empty parts of letters, digits, `_` or `-`.
pub fn valid_path(path: &str) -> bool {
    !path.is_empty()
        && path.split('.').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        })
}

/// A parsed key template such as `latest:{device}`.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyTemplate {
    parts: Vec<TemplatePart>,
}

#[derive(Debug, Clone, PartialEq)]
enum TemplatePart {
    Literal(String),
    Field(String),
}

impl KeyTemplate {
    /// Parses a template; `{path}` placeholders name dotted message paths.
    pub fn parse(template: &str) -> Result<Self, RecordError> {
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(TemplatePart::Literal(rest[..open].to_string()));
            }
            let after = &rest[open + 1..];
            let close = after.find('}').ok_or_else(|| {
                RecordError::BadTemplate(format!("unclosed `{{` in `{template}`"))
            })?;
            let path = &after[..close];
            if !valid_path(path) {
                return Err(RecordError::BadTemplate(format!(
                    "`{{{path}}}` in `{template}` is not a dotted field path"
                )));
            }
            parts.push(TemplatePart::Field(path.to_string()));
            rest = &after[close + 1..];
        }
        if rest.contains('}') {
            return Err(RecordError::BadTemplate(format!(
                "unopened `}}` in `{template}`"
            )));
        }
        if !rest.is_empty() {
            parts.push(TemplatePart::Literal(rest.to_string()));
        }
        if parts.is_empty() {
            return Err(RecordError::BadTemplate("empty template".into()));
        }
        Ok(Self { parts })
    }

    /// Renders the template for a message; strings are inserted escaped (see
    /// [`push_key_field`]), other scalars as escaped JSON.
    pub fn render(&self, value: &Value) -> Result<String, RecordError> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                TemplatePart::Literal(text) => out.push_str(text),
                TemplatePart::Field(path) => match get_path(value, path) {
                    None | Some(Value::Null) => {
                        return Err(RecordError::MissingField(path.clone()))
                    }
                    Some(Value::String(text)) => push_key_field(&mut out, text),
                    Some(other) => push_key_field(&mut out, &other.to_string()),
                },
            }
        }
        Ok(out)
    }
}

pub use tributary_contract::redis_key::push_key_field;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tributary_contract::envelope::Protocol;

    pub(crate) fn envelope(payload: Value) -> Envelope {
        Envelope {
            id: "01JABCDEF0000000000000000".into(),
            tenant: "factory".into(),
            gateway: "line-1".into(),
            device: "press-7".into(),
            topic: "devices/press-7/telemetry".into(),
            protocol: Protocol::Mqtt,
            received_at: "2026-11-26T09:00:00.000Z".into(),
            content_type: None,
            mqtt: None,
            attributes: Default::default(),
            payload: Payload::Json(payload),
        }
    }

    #[test]
    fn record_exposes_payload_value_and_encoding() {
        let record = record_of(&envelope(json!({"temp": 21.5})));
        assert_eq!(record.value["payload"]["temp"], json!(21.5));
        assert_eq!(record.value["payloadEncoding"], json!("json"));
        assert_eq!(record.value["protocol"], json!("mqtt"));
        assert_eq!(record.id, "01JABCDEF0000000000000000");
    }

    #[test]
    fn record_exposes_the_devices_attributes_and_an_empty_object_without_them() {
        let mut with = envelope(json!({}));
        with.attributes.insert("site".into(), "north".into());
        assert_eq!(
            record_of(&with).value["attributes"],
            json!({"site": "north"})
        );
        assert_eq!(
            record_of(&envelope(json!({}))).value["attributes"],
            json!({})
        );
    }

    #[test]
    fn bad_envelope_is_reported() {
        assert!(matches!(
            parse_envelope(b"{not json"),
            Err(RecordError::BadEnvelope(_))
        ));
    }

    #[test]
    fn set_and_remove_nested_paths() {
        let mut value = json!({"payload": {"temp": 1}});
        set_path(&mut value, "payload.site.name", json!("north"));
        set_path(&mut value, "top", json!(true));
        assert_eq!(value["payload"]["site"]["name"], json!("north"));
        remove_path(&mut value, "payload.temp");
        remove_path(&mut value, "payload.missing.deep");
        assert_eq!(
            value,
            json!({"payload": {"site": {"name": "north"}}, "top": true})
        );
    }

    #[test]
    fn key_template_renders_fields() {
        let template = KeyTemplate::parse("latest:{device}:{payload.line}").expect("parse");
        let value = json!({"device": "d1", "payload": {"line": 3}});
        assert_eq!(template.render(&value).expect("render"), "latest:d1:3");
    }

    #[test]
    fn key_values_cannot_steer_the_key_into_another_key_space() {
        let template = KeyTemplate::parse("latest:{device}").expect("parse");
        for (device, key) in [
            ("d1", "latest:d1"),
            ("a:b", "latest:a%3Ab"),
            ("d1#id", "latest:d1%23id"),
            ("*", "latest:%2A"),
            ("{x}?[y] z", "latest:%7Bx%7D%3F%5By%5D%20z"),
            ("50%", "latest:50%25"),
            ("nul\u{0}", "latest:nul%00"),
            ("été", "latest:été"),
        ] {
            let rendered = template
                .render(&json!({ "device": device }))
                .expect("render");
            assert_eq!(rendered, key, "{device}");
        }
        // A number is unchanged; a string looking like an escape stays distinct from it.
        let numbered = KeyTemplate::parse("line:{n}").expect("parse");
        assert_eq!(
            numbered.render(&json!({"n": -2.5})).expect("render"),
            "line:-2.5"
        );
        assert_ne!(
            template
                .render(&json!({"device": "a%3Ab"}))
                .expect("render"),
            template.render(&json!({"device": "a:b"})).expect("render")
        );
    }

    #[test]
    fn key_template_with_missing_field_fails() {
        let template = KeyTemplate::parse("latest:{site}").expect("parse");
        assert_eq!(
            template.render(&json!({"device": "d1"})),
            Err(RecordError::MissingField("site".into()))
        );
    }

    #[test]
    fn malformed_key_templates_are_rejected() {
        for bad in ["latest:{device", "latest:device}", "x:{}", "x:{a b}", ""] {
            assert!(KeyTemplate::parse(bad).is_err(), "{bad}");
        }
    }
}
