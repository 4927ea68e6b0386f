//! Commands: messages from applications (the API's command endpoint) and Workers (the
//! `command` sink) through RabbitMQ to the gateway pod that holds a device's connection.
//!
//! The broker topology, all on the broker the gateway publishes to, named per tenant so
//! that tenants can share one vhost:
//! - [`exchange`]: a durable **direct** exchange; a sender publishes a command to it with the
//!   device id as routing key, `mandatory` set and publisher confirms;
//! - [`device_queue`]: one durable classic queue per device that subscribed to commands (or
//!   polled for them over HTTP), bound to the exchange with its device id, declared by the
//!   gateway with [`device_queue_arguments`]: at most `maxQueuedPerDevice` commands (further
//!   ones are refused: the sender's publish is nacked), one active consumer (the gateway
//!   session that holds the device), expired commands dead-lettered to [`expired_exchange`],
//!   and removed by the broker after `sessionExpirySeconds` without a consumer;
//! - [`expired_exchange`] (fanout) and [`expired_queue`]: the commands whose time-to-live
//!   ran out before a device took them, consumed by the gateways that report them.
//!
//! A command that no queue takes (the device never subscribed, or its clean session ended)
//! is returned to the sender by the broker: it is *undeliverable*, and the sender says so.
//!
//! The gateway's side is configured by [`CommandsConfig`] (the gateway config's `commands`).
//!
//! One AMQP message is one command: the body is the payload, and
//! - `message_id` and `correlation_id`: the command id ([`valid_command_id`]);
//! - header [`HEADER_NAME`]: the command name ([`valid_command_name`]);
//! - header [`HEADER_SENDER`]: who sent it (an API key's name, `worker/<name>`);
//! - `expiration`: the time-to-live in milliseconds (RabbitMQ drops or dead-letters it
//!   after that, even while queued for an offline device);
//! - `reply_to`: set when the sender waits for the device's response (RabbitMQ's direct
//!   reply-to, `amq.rabbitmq.reply-to`); the gateway publishes the response there;
//! - `content_type`, `timestamp` (milliseconds), `delivery_mode` 2 (persistent).
//!
//! Topics a device sees (MQTT; the HTTP long poll returns the same fields as JSON):
//! - a one-way command: [`command_topic`] = `commands/{device}/{name}`;
//! - a request (a command with `reply_to`) to an MQTT 5 session: the same topic, with the
//!   Response Topic property [`response_topic`] = `commands/{device}/res/{id}` and the
//!   command id as Correlation Data;
//! - a request to an MQTT 3.1.1 session (no properties): [`request_topic_v3`] =
//!   `commands/{device}/req/{id}/{name}`; the device answers on
//!   `commands/{device}/res/{id}/{status}` (status a number 100–599, default 200).
//!
//! The response the gateway publishes to the sender: body = the device's payload,
//! `correlation_id` = the command id, headers [`HEADER_STATUS`] and [`HEADER_DEVICE`].

use serde::{Deserialize, Serialize};

/// First part of every command exchange and queue name.
pub const PREFIX: &str = "tributary.commands";
/// Header holding the command name.
pub const HEADER_NAME: &str = "x-tributary-command";
/// Header holding who sent the command.
pub const HEADER_SENDER: &str = "x-tributary-sender";
/// Header of a response holding its status (a number 100–599).
pub const HEADER_STATUS: &str = "x-tributary-status";
/// Header of a response holding the device that answered.
pub const HEADER_DEVICE: &str = "x-tributary-device";
/// RabbitMQ's direct reply-to pseudo queue, where a waiting sender consumes responses.
pub const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";
/// Topic level under a device's commands that 3.1.1 requests carry.
pub const REQUEST_LEVEL: &str = "req";
/// Topic level under a device's commands that responses are published to.
pub const RESPONSE_LEVEL: &str = "res";
/// Status of a response that gives none.
pub const DEFAULT_RESPONSE_STATUS: u16 = 200;
/// Longest command id.
pub const MAX_COMMAND_ID: usize = 64;
/// Longest command name.
pub const MAX_COMMAND_NAME: usize = 128;
/// Default time-to-live of a command, in seconds.
pub const DEFAULT_TTL_SECONDS: u32 = 3_600;
/// Longest time-to-live a sender may give, in seconds (a week).
pub const MAX_TTL_SECONDS: u32 = 7 * 24 * 3_600;

/// The tenant's command exchange (direct, durable).
pub fn exchange(tenant: &str) -> String {
    format!("{PREFIX}.{tenant}")
}

/// The queue holding one device's commands.
pub fn device_queue(tenant: &str, device: &str) -> String {
    format!("{PREFIX}.{tenant}.device.{device}")
}

/// The tenant's exchange of expired commands (fanout, durable).
pub fn expired_exchange(tenant: &str) -> String {
    format!("{PREFIX}.{tenant}.expired")
}

/// The queue of the tenant's expired commands (same name as its exchange).
pub fn expired_queue(tenant: &str) -> String {
    expired_exchange(tenant)
}

/// Most expired commands kept for reporting; older ones are dropped first.
pub const EXPIRED_QUEUE_MAX_LENGTH: u32 = 10_000;

/// The arguments of a device's command queue; every declarer uses exactly these (RabbitMQ
/// refuses a redeclaration with other arguments).
pub fn device_queue_arguments(
    tenant: &str,
    limits: &CommandLimits,
) -> Vec<(String, QueueArgument)> {
    vec![
        ("x-queue-type".into(), QueueArgument::Text("classic".into())),
        (
            "x-max-length".into(),
            QueueArgument::Number(u64::from(limits.max_queued_per_device)),
        ),
        (
            "x-overflow".into(),
            QueueArgument::Text("reject-publish".into()),
        ),
        ("x-single-active-consumer".into(), QueueArgument::Bool(true)),
        (
            "x-dead-letter-exchange".into(),
            QueueArgument::Text(expired_exchange(tenant)),
        ),
        (
            "x-expires".into(),
            QueueArgument::Number(u64::from(limits.session_expiry_seconds) * 1_000),
        ),
    ]
}

/// The arguments of the tenant's expired-commands queue.
pub fn expired_queue_arguments() -> Vec<(String, QueueArgument)> {
    vec![
        ("x-queue-type".into(), QueueArgument::Text("classic".into())),
        (
            "x-max-length".into(),
            QueueArgument::Number(u64::from(EXPIRED_QUEUE_MAX_LENGTH)),
        ),
        ("x-overflow".into(), QueueArgument::Text("drop-head".into())),
    ]
}

/// One queue argument's value, independent of any AMQP library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueArgument {
    /// A string (`longstr`).
    Text(String),
    /// An unsigned number (sent as a signed 64-bit `long long`).
    Number(u64),
    /// A boolean.
    Bool(bool),
}

/// `commands/{device}/{name}`: where a device receives a command.
pub fn command_topic(device: &str, name: &str) -> String {
    format!("commands/{device}/{name}")
}

/// `commands/{device}/req/{id}/{name}`: where an MQTT 3.1.1 device receives a request.
pub fn request_topic_v3(device: &str, id: &str, name: &str) -> String {
    format!("commands/{device}/{REQUEST_LEVEL}/{id}/{name}")
}

/// `commands/{device}/res/{id}`: where a device answers a request.
pub fn response_topic(device: &str, id: &str) -> String {
    format!("commands/{device}/{RESPONSE_LEVEL}/{id}")
}

/// A device's answer to a request, read from the topic it published to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseAddress {
    /// The command id the device answers.
    pub command_id: String,
    /// The status it gave (the optional last level), else [`DEFAULT_RESPONSE_STATUS`].
    pub status: u16,
}

/// Whether `topic` is `device`'s response topic (`commands/{device}/res/{id}[/{status}]`),
/// and to which command. `Err` for a topic under the response level that is malformed.
pub fn parse_response_topic(device: &str, topic: &str) -> Option<Result<ResponseAddress, String>> {
    let rest = topic.strip_prefix("commands/")?.strip_prefix(device)?;
    let rest = rest
        .strip_prefix('/')?
        .strip_prefix(RESPONSE_LEVEL)?
        .strip_prefix('/')?;
    let mut levels = rest.split('/');
    let id = levels.next().unwrap_or_default();
    let status = levels.next();
    if levels.next().is_some() {
        return Some(Err(format!(
            "response topic {topic:?} has levels after the status"
        )));
    }
    if !valid_command_id(id) {
        return Some(Err(format!(
            "response topic {topic:?} names no valid command id"
        )));
    }
    let status = match status {
        None => DEFAULT_RESPONSE_STATUS,
        Some(text) => match text.parse::<u16>() {
            Ok(code) if (100..=599).contains(&code) => code,
            _ => {
                return Some(Err(format!(
                    "response status {text:?} is not a number 100-599"
                )))
            }
        },
    };
    Some(Ok(ResponseAddress {
        command_id: id.to_owned(),
        status,
    }))
}

/// Longest device id a command can address (the device queue's name and the routing key
/// stay within AMQP's 255 bytes).
pub const MAX_DEVICE_ID: usize = 128;

/// Whether commands can address device `id`: 1 to [`MAX_DEVICE_ID`] bytes that can be a
/// topic level and a routing key — no `/`, `+`, `#` or control characters (a gateway gives
/// such ids no topics). Every id a gateway accepts and the operator's Device ids qualify.
pub fn valid_device_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_DEVICE_ID
        && !id
            .chars()
            .any(|c| matches!(c, '/' | '+' | '#') || c.is_control())
}

/// A command id: 1 to [`MAX_COMMAND_ID`] ASCII letters, digits, `-` or `_`.
pub fn valid_command_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_COMMAND_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A command name: 1 to [`MAX_COMMAND_NAME`] bytes of topic levels made of ASCII letters,
/// digits, `-`, `_` and `.`, separated by `/` (`fan/set`); its first level is not `req` or
/// `res`, which the request and response topics use.
pub fn valid_command_name(name: &str) -> bool {
    let levels_ok = name.split('/').all(|level| {
        !level.is_empty()
            && level
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    });
    let first = name.split('/').next().unwrap_or_default();
    !name.is_empty()
        && name.len() <= MAX_COMMAND_NAME
        && levels_ok
        && first != REQUEST_LEVEL
        && first != RESPONSE_LEVEL
}

/// The bounds of a device's command queue (the gateway config's `commands` section).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLimits {
    /// Most commands queued for one device; a sender's further commands are refused
    /// until the device takes some.
    pub max_queued_per_device: u32,
    /// Seconds a device's command queue outlives its last consumer.
    pub session_expiry_seconds: u32,
}

/// Default of `maxQueuedPerDevice`.
pub const DEFAULT_MAX_QUEUED_PER_DEVICE: u32 = 100;
/// Default of `sessionExpirySeconds`: a day.
pub const DEFAULT_SESSION_EXPIRY_SECONDS: u32 = 86_400;

impl Default for CommandLimits {
    fn default() -> Self {
        Self {
            max_queued_per_device: DEFAULT_MAX_QUEUED_PER_DEVICE,
            session_expiry_seconds: DEFAULT_SESSION_EXPIRY_SECONDS,
        }
    }
}

/// The `commands` section: how devices receive commands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CommandsConfig {
    /// Whether devices may subscribe (MQTT) and poll (HTTP) for commands. When off, every
    /// SUBSCRIBE is refused and the gateway declares nothing for commands.
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// Topic filter templates a device may subscribe within; `{device}` is replaced by the
    /// authenticated device id. A SUBSCRIBE whose filter could match a topic outside every
    /// template is refused (MQTT 5 reason 0x87, 3.1.1 return code 0x80). Default:
    /// `commands/{device}/#`.
    #[serde(default = "default_subscribe_templates")]
    pub subscribe: Vec<String>,
    /// Most commands queued for one device (see [`CommandLimits`]).
    #[serde(default = "default_max_queued_per_device")]
    pub max_queued_per_device: u32,
    /// Seconds a device's command queue outlives its last connection (persistent MQTT
    /// sessions, HTTP devices that poll).
    #[serde(default = "default_session_expiry_seconds")]
    pub session_expiry_seconds: u32,
    /// Commands delivered to one device and not yet acknowledged (QoS 1 PUBACK).
    #[serde(default = "default_max_in_flight_per_device")]
    pub max_in_flight_per_device: u16,
    /// Requests awaiting a device's response across the gateway; the oldest are forgotten
    /// past it.
    #[serde(default = "default_max_pending_responses")]
    pub max_pending_responses: usize,
    /// Simultaneous HTTP long polls across the gateway; further ones get 503.
    #[serde(default = "default_max_long_polls")]
    pub max_long_polls: usize,
    /// Longest wait of one HTTP long poll, in seconds.
    #[serde(default = "default_max_long_poll_seconds")]
    pub max_long_poll_seconds: u32,
}

/// Default of `commands.subscribe`.
pub const DEFAULT_SUBSCRIBE_TEMPLATE: &str = "commands/{device}/#";
/// Default of `commands.maxInFlightPerDevice`.
pub const DEFAULT_MAX_COMMANDS_IN_FLIGHT_PER_DEVICE: u16 = 10;
/// Default of `commands.maxPendingResponses`.
pub const DEFAULT_MAX_PENDING_RESPONSES: usize = 10_000;
/// Default of `commands.maxLongPolls`.
pub const DEFAULT_MAX_LONG_POLLS: usize = 1_000;
/// Default of `commands.maxLongPollSeconds`.
pub const DEFAULT_MAX_LONG_POLL_SECONDS: u32 = 60;

impl CommandsConfig {
    /// The bounds every declarer of a device's command queue uses.
    pub fn queue_limits(&self) -> CommandLimits {
        CommandLimits {
            max_queued_per_device: self.max_queued_per_device,
            session_expiry_seconds: self.session_expiry_seconds,
        }
    }
}

impl Default for CommandsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            subscribe: default_subscribe_templates(),
            max_queued_per_device: default_max_queued_per_device(),
            session_expiry_seconds: default_session_expiry_seconds(),
            max_in_flight_per_device: default_max_in_flight_per_device(),
            max_pending_responses: default_max_pending_responses(),
            max_long_polls: default_max_long_polls(),
            max_long_poll_seconds: default_max_long_poll_seconds(),
        }
    }
}

fn default_subscribe_templates() -> Vec<String> {
    vec![DEFAULT_SUBSCRIBE_TEMPLATE.into()]
}

fn default_max_queued_per_device() -> u32 {
    DEFAULT_MAX_QUEUED_PER_DEVICE
}

fn default_session_expiry_seconds() -> u32 {
    DEFAULT_SESSION_EXPIRY_SECONDS
}

fn default_max_in_flight_per_device() -> u16 {
    DEFAULT_MAX_COMMANDS_IN_FLIGHT_PER_DEVICE
}

fn default_max_pending_responses() -> usize {
    DEFAULT_MAX_PENDING_RESPONSES
}

fn default_max_long_polls() -> usize {
    DEFAULT_MAX_LONG_POLLS
}

fn default_max_long_poll_seconds() -> u32 {
    DEFAULT_MAX_LONG_POLL_SECONDS
}

fn default_enabled() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_per_tenant_and_device() {
        assert_eq!(exchange("factory"), "tributary.commands.factory");
        assert_eq!(
            device_queue("factory", "m-1"),
            "tributary.commands.factory.device.m-1"
        );
        assert_eq!(
            expired_queue("factory"),
            "tributary.commands.factory.expired"
        );
    }

    #[test]
    fn topics_follow_the_convention() {
        assert_eq!(command_topic("m-1", "fan/set"), "commands/m-1/fan/set");
        assert_eq!(
            request_topic_v3("m-1", "c1", "fan/set"),
            "commands/m-1/req/c1/fan/set"
        );
        assert_eq!(response_topic("m-1", "c1"), "commands/m-1/res/c1");
    }

    #[test]
    fn response_topics_are_parsed_for_their_own_device_only() {
        let ok = |status| {
            Some(Ok(ResponseAddress {
                command_id: "c1".into(),
                status,
            }))
        };
        assert_eq!(parse_response_topic("m-1", "commands/m-1/res/c1"), ok(200));
        assert_eq!(
            parse_response_topic("m-1", "commands/m-1/res/c1/404"),
            ok(404)
        );
        assert_eq!(parse_response_topic("m-1", "commands/m-2/res/c1"), None);
        assert_eq!(parse_response_topic("m-1", "commands/m-10/res/c1"), None);
        assert_eq!(parse_response_topic("m-1", "devices/m-1/res/c1"), None);
        assert_eq!(parse_response_topic("m-1", "commands/m-1/fan/set"), None);
        assert!(matches!(
            parse_response_topic("m-1", "commands/m-1/res/c1/999"),
            Some(Err(_))
        ));
        assert!(matches!(
            parse_response_topic("m-1", "commands/m-1/res/c1/200/x"),
            Some(Err(_))
        ));
        assert!(matches!(
            parse_response_topic("m-1", "commands/m-1/res/"),
            Some(Err(_))
        ));
        assert!(matches!(
            parse_response_topic("m-1", "commands/m-1/res/a+b"),
            Some(Err(_))
        ));
    }

    #[test]
    fn names_and_ids_are_bounded_and_plain() {
        assert!(valid_command_name("fan/set"));
        assert!(valid_command_name("reboot"));
        assert!(valid_command_name("v1.2/apply_config-now"));
        for bad in [
            "", "/x", "x/", "a//b", "fan/+", "#", "req", "res/x", "a b", "é",
        ] {
            assert!(!valid_command_name(bad), "{bad:?}");
        }
        assert!(valid_command_name("request"));
        assert!(!valid_command_name(&"x".repeat(MAX_COMMAND_NAME + 1)));
        assert!(valid_command_id("01JD5Z8Q2K3M4N5P6Q7R8S9T0V"));
        assert!(valid_device_id("press-7") && valid_device_id("site:a.b_c@x"));
        for bad in ["", "a/b", "a+b", "a#", "a\nb"] {
            assert!(!valid_device_id(bad), "{bad:?}");
        }
        assert!(!valid_device_id(&"d".repeat(MAX_DEVICE_ID + 1)));
        for bad in ["", "a/b", "a.b", "a+b"] {
            assert!(!valid_command_id(bad), "{bad:?}");
        }
        assert!(!valid_command_id(&"x".repeat(MAX_COMMAND_ID + 1)));
    }

    #[test]
    fn every_declarer_uses_the_same_bounded_queue() {
        let arguments = device_queue_arguments("t", &CommandLimits::default());
        let find = |key: &str| {
            arguments
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(find("x-max-length"), Some(QueueArgument::Number(100)));
        assert_eq!(
            find("x-overflow"),
            Some(QueueArgument::Text("reject-publish".into()))
        );
        assert_eq!(find("x-expires"), Some(QueueArgument::Number(86_400_000)));
        assert_eq!(
            find("x-dead-letter-exchange"),
            Some(QueueArgument::Text("tributary.commands.t.expired".into()))
        );
        assert_eq!(
            find("x-single-active-consumer"),
            Some(QueueArgument::Bool(true))
        );
    }
}
