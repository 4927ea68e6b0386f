//! The AMQP side of one command, as `tributary_contract::command` fixes it: the properties
//! a command is published with, and the reading of the answer a gateway publishes back to
//! the direct reply-to address.

use axum::body::Bytes;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use tributary_contract::command::{
    DEFAULT_RESPONSE_STATUS, DIRECT_REPLY_TO, HEADER_NAME, HEADER_SENDER, HEADER_STATUS,
};

use crate::commands::request::{CommandRequest, DEFAULT_CONTENT_TYPE};

/// One command about to be sent.
#[derive(Debug, Clone)]
pub struct Command {
    /// Its id: `message_id` and `correlation_id`.
    pub id: String,
    /// The checked request.
    pub request: CommandRequest,
    /// Who sends it: the API key's name.
    pub sender: String,
    /// The body, passed through.
    pub payload: Bytes,
}

/// A fresh command id: a ULID (26 letters and digits, sorting by creation time).
pub fn new_command_id() -> String {
    ulid::Ulid::generate().to_string()
}

/// The properties of a command published at `now_ms` (Unix milliseconds): ids, name and
/// sender headers, time-to-live, content type, persistent, and the direct reply-to address
/// when the request waits for an answer.
pub fn properties(command: &Command, now_ms: u64) -> BasicProperties {
    let request = &command.request;
    let mut headers = FieldTable::default();
    headers.insert(
        HEADER_NAME.into(),
        AMQPValue::LongString(LongString::from(request.name.as_str())),
    );
    headers.insert(
        HEADER_SENDER.into(),
        AMQPValue::LongString(LongString::from(command.sender.as_str())),
    );
    // The request's checks bound the content type to a short string; the fallback only
    // keeps a bug from panicking.
    let content_type = ShortString::try_new(request.content_type.as_str())
        .unwrap_or_else(|_| DEFAULT_CONTENT_TYPE.into());
    let properties = BasicProperties::default()
        .with_message_id(command.id.as_str().into())
        .with_correlation_id(command.id.as_str().into())
        .with_headers(headers)
        .with_expiration((u64::from(request.ttl_seconds) * 1_000).to_string().into())
        .with_timestamp(now_ms)
        .with_content_type(content_type)
        .with_delivery_mode(2);
    if request.wait_seconds > 0 {
        properties.with_reply_to(DIRECT_REPLY_TO.into())
    } else {
        properties
    }
}

/// A device's answer to a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The device's status (100–599).
    pub status: u16,
    /// The answer's content type, if it gave one.
    pub content_type: Option<String>,
    /// The answer's body.
    pub body: Vec<u8>,
}

/// Reads an answer from its properties and body.
pub fn answer(properties: &BasicProperties, body: Vec<u8>) -> Answer {
    Answer {
        status: response_status(properties.headers().as_ref()),
        content_type: properties
            .content_type()
            .as_ref()
            .map(|c| c.as_str().to_owned()),
        body,
    }
}

/// The [`HEADER_STATUS`] of an answer, as any integer type or a decimal string; the
/// default status when absent or outside 100–599.
pub fn response_status(headers: Option<&FieldTable>) -> u16 {
    let value = headers.and_then(|h| h.inner().get(HEADER_STATUS));
    let number = match value {
        Some(AMQPValue::ShortShortInt(n)) => Some(i64::from(*n)),
        Some(AMQPValue::ShortShortUInt(n)) => Some(i64::from(*n)),
        Some(AMQPValue::ShortInt(n)) => Some(i64::from(*n)),
        Some(AMQPValue::ShortUInt(n)) => Some(i64::from(*n)),
        Some(AMQPValue::LongInt(n)) => Some(i64::from(*n)),
        Some(AMQPValue::LongUInt(n)) => Some(i64::from(*n)),
        Some(AMQPValue::LongLongInt(n)) => Some(*n),
        Some(AMQPValue::LongString(s)) => std::str::from_utf8(s.as_bytes())
            .ok()
            .and_then(|s| s.trim().parse().ok()),
        Some(AMQPValue::ShortString(s)) => s.as_str().trim().parse().ok(),
        _ => None,
    };
    number
        .filter(|n| (100..=599).contains(n))
        .and_then(|n| u16::try_from(n).ok())
        .unwrap_or(DEFAULT_RESPONSE_STATUS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_contract::command::valid_command_id;

    fn command(wait_seconds: u32) -> Command {
        Command {
            id: new_command_id(),
            request: CommandRequest {
                device: "press-1".into(),
                name: "fan/set".into(),
                ttl_seconds: 90,
                wait_seconds,
                content_type: "text/plain".into(),
            },
            sender: "ops".into(),
            payload: Bytes::from_static(b"on"),
        }
    }

    fn header<'a>(properties: &'a BasicProperties, name: &str) -> Option<&'a AMQPValue> {
        properties.headers().as_ref()?.inner().get(name)
    }

    #[test]
    fn a_command_carries_every_property_of_the_contract() {
        let command = command(0);
        assert!(valid_command_id(&command.id), "{}", command.id);
        let properties = properties(&command, 1_767_600_000_000);
        let text = |value: &Option<ShortString>| value.as_ref().map(|v| v.as_str().to_owned());
        assert_eq!(text(properties.message_id()), Some(command.id.clone()));
        assert_eq!(text(properties.correlation_id()), Some(command.id.clone()));
        assert_eq!(text(properties.expiration()).as_deref(), Some("90000"));
        assert_eq!(
            text(properties.content_type()).as_deref(),
            Some("text/plain")
        );
        assert_eq!(*properties.timestamp(), Some(1_767_600_000_000));
        assert_eq!(*properties.delivery_mode(), Some(2));
        assert_eq!(*properties.reply_to(), None, "no reply-to without a wait");
        assert_eq!(
            header(&properties, HEADER_NAME),
            Some(&AMQPValue::LongString("fan/set".into()))
        );
        assert_eq!(
            header(&properties, HEADER_SENDER),
            Some(&AMQPValue::LongString("ops".into()))
        );
    }

    #[test]
    fn a_waiting_command_asks_for_the_direct_reply_to() {
        let properties = properties(&command(5), 0);
        assert_eq!(
            properties.reply_to().as_ref().map(ShortString::as_str),
            Some(DIRECT_REPLY_TO)
        );
    }

    #[test]
    fn answer_status_reads_any_integer_or_text_and_falls_back_to_the_default() {
        let with = |value: AMQPValue| {
            let mut headers = FieldTable::default();
            headers.insert(HEADER_STATUS.into(), value);
            response_status(Some(&headers))
        };
        assert_eq!(with(AMQPValue::ShortUInt(404)), 404);
        assert_eq!(with(AMQPValue::LongInt(201)), 201);
        assert_eq!(with(AMQPValue::LongLongInt(503)), 503);
        assert_eq!(with(AMQPValue::LongString("422".into())), 422);
        assert_eq!(with(AMQPValue::LongLongInt(999)), DEFAULT_RESPONSE_STATUS);
        assert_eq!(with(AMQPValue::Boolean(true)), DEFAULT_RESPONSE_STATUS);
        assert_eq!(response_status(None), DEFAULT_RESPONSE_STATUS);
        let properties = BasicProperties::default().with_content_type("text/plain".into());
        let answer = answer(&properties, b"ok".to_vec());
        assert_eq!(answer.status, DEFAULT_RESPONSE_STATUS);
        assert_eq!(answer.content_type.as_deref(), Some("text/plain"));
    }
}
