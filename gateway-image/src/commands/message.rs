//! One command as the contract carries it in an AMQP message, and what a device receives
//! of it: the MQTT PUBLISH (topic and MQTT 5 properties per version) or the HTTP poll's
//! JSON. All pure.

use base64::Engine;
use bytes::Bytes;
use lapin::types::AMQPValue;
use lapin::BasicProperties;
use tributary_contract::command::{
    command_topic, request_topic_v3, response_topic, valid_command_id, valid_command_name,
    DEFAULT_TTL_SECONDS, HEADER_NAME,
};

/// A command taken from a device's queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The command id (`message_id`, else `correlation_id`).
    pub id: String,
    /// The command name (header [`HEADER_NAME`]).
    pub name: String,
    /// Where the sender waits for the response, when it is a request.
    pub reply_to: Option<String>,
    /// The payload's content type.
    pub content_type: Option<String>,
    /// Milliseconds left of its time-to-live, when it has one.
    pub remaining_ttl_ms: Option<u64>,
    /// The payload.
    pub payload: Bytes,
}

/// Why a message is not a command the gateway can deliver.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidCommand {
    /// No valid command id.
    #[error("no valid command id")]
    Id,
    /// No valid command name.
    #[error("no valid command name")]
    Name,
}

impl Command {
    /// Reads a command from an AMQP message's properties and body; `now_ms` (Unix
    /// milliseconds) gives the time-to-live left from its `timestamp` (milliseconds).
    pub fn parse(
        properties: &BasicProperties,
        payload: Bytes,
        now_ms: u64,
    ) -> Result<Self, InvalidCommand> {
        let id = properties
            .message_id()
            .as_ref()
            .or(properties.correlation_id().as_ref())
            .map(|id| id.as_str().to_owned())
            .filter(|id| valid_command_id(id))
            .ok_or(InvalidCommand::Id)?;
        let name = properties
            .headers()
            .as_ref()
            .and_then(|headers| headers.inner().get(HEADER_NAME))
            .and_then(text)
            .filter(|name| valid_command_name(name))
            .ok_or(InvalidCommand::Name)?;
        let ttl_ms = properties
            .expiration()
            .as_ref()
            .and_then(|ms| ms.as_str().parse::<u64>().ok());
        let sent_ms = *properties.timestamp();
        Ok(Self {
            id,
            name,
            reply_to: properties
                .reply_to()
                .as_ref()
                .map(|to| to.as_str().to_owned())
                .filter(|to| !to.is_empty()),
            content_type: properties
                .content_type()
                .as_ref()
                .map(|kind| kind.as_str().to_owned()),
            remaining_ttl_ms: ttl_ms.map(|ttl| remaining_ttl(ttl, sent_ms, now_ms)),
            payload,
        })
    }

    /// Whether the sender waits for a response.
    pub fn is_request(&self) -> bool {
        self.reply_to.is_some()
    }

    /// How long a response to it is awaited: what is left of its time-to-live, else the
    /// default time-to-live.
    pub fn response_window_ms(&self) -> u64 {
        self.remaining_ttl_ms
            .unwrap_or(u64::from(DEFAULT_TTL_SECONDS) * 1_000)
    }
}

/// What is left of `ttl_ms` sent at `sent_ms` (when known and plausible), at least 1 ms:
/// the broker still delivered it.
fn remaining_ttl(ttl_ms: u64, sent_ms: Option<u64>, now_ms: u64) -> u64 {
    let elapsed = sent_ms
        .filter(|sent| *sent <= now_ms)
        .map_or(0, |sent| now_ms - sent);
    ttl_ms.saturating_sub(elapsed).max(1)
}

/// A header's text (long or short string).
fn text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(text) => std::str::from_utf8(text.as_bytes()).ok().map(str::to_owned),
        AMQPValue::ShortString(text) => Some(text.as_str().to_owned()),
        _ => None,
    }
}

/// What an MQTT session sends for a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttCommand {
    /// The topic: [`command_topic`], or for a request to a 3.1.1 session
    /// [`request_topic_v3`].
    pub topic: String,
    /// MQTT 5 Response Topic, for a request.
    pub response_topic: Option<String>,
    /// MQTT 5 Correlation Data (the command id), for a request.
    pub correlation_data: Option<Vec<u8>>,
    /// MQTT 5 Message Expiry Interval: the time-to-live left, in whole seconds (rounded up).
    pub message_expiry: Option<u32>,
}

/// The PUBLISH of `command` to `device`'s session of MQTT 5 (`v5`) or 3.1.1.
pub fn mqtt_command(command: &Command, device: &str, v5: bool) -> MqttCommand {
    let request = command.is_request();
    let topic = if request && !v5 {
        request_topic_v3(device, &command.id, &command.name)
    } else {
        command_topic(device, &command.name)
    };
    MqttCommand {
        topic,
        response_topic: (request && v5).then(|| response_topic(device, &command.id)),
        correlation_data: (request && v5).then(|| command.id.clone().into_bytes()),
        message_expiry: command
            .remaining_ttl_ms
            .filter(|_| v5)
            .map(|ms| u32::try_from(ms.div_ceil(1_000)).unwrap_or(u32::MAX)),
    }
}

/// The HTTP long poll's answer for a command: the payload as JSON when its content type
/// says JSON and it parses, else base64 with `"payloadEncoding": "base64"`.
pub fn http_command(command: &Command, device: &str) -> serde_json::Value {
    let json_type = command.content_type.as_deref().is_some_and(|kind| {
        kind.split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .ends_with("json")
    });
    let parsed = json_type
        .then(|| serde_json::from_slice::<serde_json::Value>(&command.payload).ok())
        .flatten();
    let mut body = serde_json::json!({
        "commandId": command.id,
        "name": command.name,
        "topic": command_topic(device, &command.name),
        "contentType": command.content_type,
        "responseRequired": command.is_request(),
    });
    match parsed {
        Some(value) => body["payload"] = value,
        None => {
            body["payload"] = serde_json::Value::String(
                base64::engine::general_purpose::STANDARD.encode(&command.payload),
            );
            body["payloadEncoding"] = serde_json::Value::String("base64".into());
        }
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{FieldTable, LongString};

    fn properties(name: Option<&str>) -> BasicProperties {
        let mut headers = FieldTable::default();
        if let Some(name) = name {
            headers.insert(
                HEADER_NAME.into(),
                AMQPValue::LongString(LongString::from(name)),
            );
        }
        BasicProperties::default()
            .with_message_id("c1".into())
            .with_correlation_id("c1".into())
            .with_headers(headers)
            .with_content_type("application/json".into())
            .with_expiration("60000".into())
            .with_timestamp(1_000_000)
    }

    fn command(reply_to: Option<&str>) -> Command {
        let mut properties = properties(Some("fan/set"));
        if let Some(to) = reply_to {
            properties = properties.with_reply_to(to.into());
        }
        Command::parse(&properties, Bytes::from_static(b"{\"on\":true}"), 1_010_500).expect("valid")
    }

    #[test]
    fn a_command_is_read_from_the_contract_properties() {
        let command = command(Some("amq.rabbitmq.reply-to.x"));
        assert_eq!(command.id, "c1");
        assert_eq!(command.name, "fan/set");
        assert_eq!(command.reply_to.as_deref(), Some("amq.rabbitmq.reply-to.x"));
        assert_eq!(command.remaining_ttl_ms, Some(49_500), "60 s less 10.5 s");
        assert_eq!(command.response_window_ms(), 49_500);
    }

    #[test]
    fn messages_without_a_valid_id_or_name_are_not_commands() {
        let body = Bytes::new();
        assert_eq!(
            Command::parse(&properties(None), body.clone(), 0),
            Err(InvalidCommand::Name)
        );
        assert_eq!(
            Command::parse(&properties(Some("res/x")), body.clone(), 0),
            Err(InvalidCommand::Name)
        );
        let no_id = BasicProperties::default()
            .with_headers(properties(Some("a")).headers().clone().unwrap_or_default());
        assert_eq!(Command::parse(&no_id, body, 0), Err(InvalidCommand::Id));
    }

    #[test]
    fn remaining_ttl_never_reaches_zero_and_ignores_future_timestamps() {
        assert_eq!(remaining_ttl(1_000, Some(0), 5_000), 1);
        assert_eq!(remaining_ttl(1_000, Some(9_000), 5_000), 1_000);
        assert_eq!(remaining_ttl(1_000, None, 5_000), 1_000);
    }

    #[test]
    fn requests_reach_v5_with_properties_and_v311_on_the_request_topic() {
        let request = command(Some("amq.rabbitmq.reply-to.x"));
        let v5 = mqtt_command(&request, "d1", true);
        assert_eq!(v5.topic, "commands/d1/fan/set");
        assert_eq!(v5.response_topic.as_deref(), Some("commands/d1/res/c1"));
        assert_eq!(v5.correlation_data.as_deref(), Some(&b"c1"[..]));
        assert_eq!(v5.message_expiry, Some(50));
        let v3 = mqtt_command(&request, "d1", false);
        assert_eq!(v3.topic, "commands/d1/req/c1/fan/set");
        assert_eq!((v3.response_topic, v3.message_expiry), (None, None));
        let one_way = mqtt_command(&command(None), "d1", true);
        assert_eq!(one_way.topic, "commands/d1/fan/set");
        assert_eq!(one_way.response_topic, None);
    }

    #[test]
    fn the_http_answer_carries_json_as_json_and_anything_else_as_base64() {
        let json = http_command(&command(Some("r")), "d1");
        assert_eq!(json["payload"], serde_json::json!({"on": true}));
        assert_eq!(json["responseRequired"], true);
        assert_eq!(json["topic"], "commands/d1/fan/set");
        assert!(json.get("payloadEncoding").is_none());
        let mut binary = command(None);
        binary.content_type = Some("application/octet-stream".into());
        let answer = http_command(&binary, "d1");
        assert_eq!(answer["payloadEncoding"], "base64");
        assert_eq!(answer["payload"], "eyJvbiI6dHJ1ZX0=");
        assert_eq!(answer["responseRequired"], false);
        binary.content_type = Some("application/json; charset=utf-8".into());
        binary.payload = Bytes::from_static(b"not json");
        assert_eq!(http_command(&binary, "d1")["payloadEncoding"], "base64");
    }
}
