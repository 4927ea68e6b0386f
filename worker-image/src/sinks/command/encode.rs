//! The pure half of the command sink: the command id, the checks of the config and of each
//! message's device id, the AMQP properties of a command, and what became of a batch.

use std::collections::HashSet;

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tributary_contract::command::{self, MAX_TTL_SECONDS};

/// Hex digits of a command id: the first 128 bits of the hash.
const COMMAND_ID_HEX: usize = 32;

pub use tributary_contract::command::MAX_DEVICE_ID;

/// Longest tenant: a Kubernetes namespace name.
pub const MAX_TENANT: usize = 63;

/// The id of the command a sink sends for a message: 128 bits of a SHA-256 over the sink
/// name and the message id, in hex. A redelivered (or duplicated) message gets the same id,
/// so receivers can drop the repeat; two command sinks give one message distinct ids.
pub fn command_id(sink: &str, message_id: &str) -> String {
    let mut hash = Sha256::new();
    hash.update(b"tributary-command\0");
    // Length-prefixed, so no other (sink, message) pair hashes the same bytes.
    hash.update((sink.len() as u64).to_be_bytes());
    hash.update(sink.as_bytes());
    hash.update(message_id.as_bytes());
    let mut id = hex::encode(hash.finalize());
    id.truncate(COMMAND_ID_HEX);
    id
}

/// The sender a command sink names in [`command::HEADER_SENDER`].
pub fn sender(sink: &str) -> String {
    format!("worker/{sink}")
}

/// Why a sink's settings cannot make valid commands, if they cannot.
pub fn config_problem(tenant: &str, name: &str, ttl_seconds: u32) -> Option<String> {
    if !valid_tenant(tenant) {
        return Some(format!(
            "tenant {tenant:?} is not a namespace name (1 to {MAX_TENANT} lowercase letters, \
             digits and '-', starting and ending with a letter or digit)"
        ));
    }
    if !command::valid_command_name(name) {
        return Some(format!(
            "command {name:?} is not a command name (topic levels of letters, digits, '-', \
             '_' and '.' separated by '/', at most {} bytes, not starting with `req` or `res`)",
            command::MAX_COMMAND_NAME
        ));
    }
    if ttl_seconds == 0 || ttl_seconds > MAX_TTL_SECONDS {
        return Some(format!(
            "ttlSeconds {ttl_seconds} is not between 1 and {MAX_TTL_SECONDS}"
        ));
    }
    None
}

/// A tenant names its exchange and queues: a namespace name (no `.`, so no tenant's names
/// can be another's, like `t.expired`).
pub fn valid_tenant(tenant: &str) -> bool {
    let bytes = tenant.as_bytes();
    let edge = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    bytes.len() <= MAX_TENANT
        && edge(bytes.first())
        && edge(bytes.last())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

/// The device id a `device` value names, or why it names none: a string of 1 to
/// [`MAX_DEVICE_ID`] bytes that can be a topic level and a routing key (no `/`, `+`, `#`
/// or control characters: the gateway gives such ids no topics).
pub fn device_id(value: &Value) -> Result<String, String> {
    let Value::String(id) = value else {
        return Err(format!("the device id is {value}, not a string"));
    };
    if !command::valid_device_id(id) {
        return Err(format!(
            "the device id {id:?} is not a valid device id (1 to {MAX_DEVICE_ID} bytes \
             without '/', '+', '#' or control characters)"
        ));
    }
    Ok(id.clone())
}

/// What every command of one sink carries alike.
#[derive(Debug, Clone)]
pub struct Template {
    /// The command name ([`command::HEADER_NAME`]).
    pub name: String,
    /// The sender ([`command::HEADER_SENDER`]).
    pub sender: String,
    /// The time-to-live, in seconds.
    pub ttl_seconds: u32,
}

/// The AMQP properties of one command, as [`tributary_contract::command`] lays them out.
pub fn properties(template: &Template, id: &str, now_ms: u64) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (key, value) in [
        (command::HEADER_NAME, &template.name),
        (command::HEADER_SENDER, &template.sender),
    ] {
        headers.insert(
            ShortString::from(key),
            AMQPValue::LongString(LongString::from(value.as_str())),
        );
    }
    let ttl_ms = u64::from(template.ttl_seconds) * 1_000;
    BasicProperties::default()
        .with_message_id(id.into())
        .with_correlation_id(id.into())
        .with_headers(headers)
        .with_expiration(ttl_ms.to_string().into())
        .with_content_type("application/json".into())
        .with_timestamp(now_ms)
        .with_delivery_mode(2)
}

/// What became of one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The broker queued it for its device (confirmed).
    Sent,
    /// No queue took it: the device has no command queue (offline without a persistent
    /// session, or it never subscribed); returned by the broker.
    NoQueue,
    /// The tenant's command exchange does not exist, so no device can have a queue.
    NoExchange,
    /// The device's queue is full (the broker nacked it).
    QueueFull,
}

impl Delivery {
    /// The `result` label of `tributary_worker_commands_total`.
    pub fn label(self) -> &'static str {
        match self {
            Delivery::Sent => "sent",
            Delivery::NoQueue | Delivery::NoExchange => "undeliverable",
            Delivery::QueueFull => "queue_full",
        }
    }
}

/// The outcome of each command of a batch from its broker confirm (`acked`, in publish
/// order) and the ids of the commands the broker returned. Returns are matched by command
/// id, not by the confirm they came with: the client hands a returned message to whichever
/// confirm completes next, which is not always its own when one ack covers several.
pub fn outcomes(ids: &[String], acked: &[bool], returned: &HashSet<String>) -> Vec<Delivery> {
    ids.iter()
        .zip(acked)
        .map(|(id, acked)| match (acked, returned.contains(id)) {
            (false, _) => Delivery::QueueFull,
            (true, true) => Delivery::NoQueue,
            (true, false) => Delivery::Sent,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn command_ids_are_stable_distinct_and_valid() {
        let id = command_id("fan", "01JD5Z8Q2K3M4N5P6Q7R8S9T0V");
        assert_eq!(id, command_id("fan", "01JD5Z8Q2K3M4N5P6Q7R8S9T0V"));
        assert_eq!(id.len(), 32);
        assert!(command::valid_command_id(&id), "{id}");
        assert_ne!(id, command_id("fan", "01JD5Z8Q2K3M4N5P6Q7R8S9T0W"));
        assert_ne!(id, command_id("fan2", "01JD5Z8Q2K3M4N5P6Q7R8S9T0V"));
        // The length prefix keeps the boundary between sink and message id.
        assert_ne!(command_id("ab", "c"), command_id("a", "bc"));
        // Any message id, however long or odd, gives a valid id.
        let odd = command_id("fan", &"é/+#".repeat(100));
        assert!(command::valid_command_id(&odd), "{odd}");
    }

    #[test]
    fn config_problems_are_named() {
        assert_eq!(config_problem("factory", "fan/set", 60), None);
        assert_eq!(config_problem("f-1", "reboot", MAX_TTL_SECONDS), None);
        for (tenant, name, ttl, words) in [
            ("", "fan/set", 60, "tenant"),
            ("Factory", "fan/set", 60, "tenant"),
            ("a.expired", "fan/set", 60, "tenant"),
            ("-a", "fan/set", 60, "tenant"),
            (&"a".repeat(64) as &str, "fan/set", 60, "tenant"),
            ("factory", "fan/+", 60, "command"),
            ("factory", "res/x", 60, "command"),
            ("factory", "", 60, "command"),
            ("factory", "fan/set", 0, "ttlSeconds 0"),
            ("factory", "fan/set", MAX_TTL_SECONDS + 1, "ttlSeconds"),
        ] {
            let problem = config_problem(tenant, name, ttl).unwrap_or_default();
            assert!(
                problem.contains(words),
                "{tenant} {name} {ttl}: {problem:?}"
            );
        }
    }

    #[test]
    fn device_ids_must_be_plain_strings() {
        assert_eq!(device_id(&json!("press-7")), Ok("press-7".into()));
        assert_eq!(device_id(&json!("site:a.b_c")), Ok("site:a.b_c".into()));
        for (bad, words) in [
            (json!(7), "not a string"),
            (json!(null), "not a string"),
            (json!(""), "not a valid device id"),
            (json!("a/b"), "not a valid device id"),
            (json!("+"), "not a valid device id"),
            (json!("a\nb"), "not a valid device id"),
            (
                json!("x".repeat(MAX_DEVICE_ID + 1)),
                "not a valid device id",
            ),
        ] {
            let error = device_id(&bad).expect_err("invalid");
            assert!(error.contains(words), "{bad}: {error}");
        }
    }

    #[test]
    fn properties_follow_the_contract() {
        let template = Template {
            name: "fan/set".into(),
            sender: sender("fan"),
            ttl_seconds: 90,
        };
        let properties = properties(&template, "c1", 1_700_000_000_000);
        let text = |v: &Option<ShortString>| v.as_ref().map(|s| s.to_string());
        assert_eq!(text(properties.message_id()), Some("c1".into()));
        assert_eq!(text(properties.correlation_id()), Some("c1".into()));
        assert_eq!(text(properties.expiration()), Some("90000".into()));
        assert_eq!(
            text(properties.content_type()),
            Some("application/json".into())
        );
        assert_eq!(*properties.delivery_mode(), Some(2));
        assert_eq!(*properties.timestamp(), Some(1_700_000_000_000));
        let headers = properties.headers().clone().unwrap_or_default();
        let header = |key: &str| match headers.inner().get(key) {
            Some(AMQPValue::LongString(s)) => s.to_string(),
            other => format!("{other:?}"),
        };
        assert_eq!(header(command::HEADER_NAME), "fan/set");
        assert_eq!(header(command::HEADER_SENDER), "worker/fan");
    }

    #[test]
    fn outcomes_match_returns_by_id_and_nacks_by_position() {
        let ids: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
        let returned: HashSet<String> = ["c".to_string()].into();
        assert_eq!(
            outcomes(&ids, &[true, false, true, true], &returned),
            vec![
                Delivery::Sent,
                Delivery::QueueFull,
                Delivery::NoQueue,
                Delivery::Sent
            ]
        );
        assert_eq!(Delivery::NoExchange.label(), "undeliverable");
    }
}
