//! Command sink: for each processed message that meets `when`, one command to a device
//! through its tenant's command exchange (see [`tributary_contract::command`]).
//!
//! What becomes of a message:
//! - `when` false: no command; the sink takes no part in the message (`skipped`);
//! - `when`, `device` or `payload` fails on it, or the device id is not one: dead-lettered
//!   with the reason, as for any sink that cannot encode a message;
//! - the broker confirms the command: written (`sent`);
//! - the broker returns it (no queue for the device: offline without a persistent session,
//!   or never subscribed), or the exchange does not exist: written, counted `undeliverable`
//!   and logged — a device's absence is not the pipeline's failure, and waiting for it
//!   would stop the pipeline;
//! - the broker nacks it (the device's queue is full): written, counted `queue_full`;
//! - the broker is unreachable or the channel fails: an outage, waited for with backoff.
//!
//! The command id is derived from the message id and the sink name ([`command_id`]): a
//! redelivered message sends a command with the same id (at least once, with a stable id).

mod encode;
mod link;

use std::sync::Arc;

use serde_json::Value;
use tributary_contract::command;
use tributary_contract::worker_config::{BatchConfig, CommandSinkConfig};

pub use encode::{command_id, device_id, Delivery, MAX_DEVICE_ID};
use encode::{config_problem, properties, sender, Template};
use link::{Link, Outgoing};

use super::republish::DefaultBroker;
use super::{json_bytes, Prepared, SinkBuildError, SinkError};
use crate::expr::{CelEnv, Expr};
use crate::metrics::Metrics;
use crate::record::Record;

/// The `result` label of a message `when` left without a command.
const SKIPPED: &str = "skipped";

/// The command sink.
pub struct CommandSink {
    name: String,
    env: CelEnv,
    when: Option<Expr>,
    device: Option<Expr>,
    payload: Option<Expr>,
    template: Template,
    batch: BatchConfig,
    link: Link,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for CommandSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandSink")
            .field("name", &self.name)
            .field("command", &self.template.name)
            .field("link", &self.link)
            .finish()
    }
}

impl CommandSink {
    /// Checks the settings, compiles the expressions and reads the URI; no I/O to the
    /// broker yet. The URI (and CA file) is the sink's own or the consumed broker's.
    pub fn build(
        env: &CelEnv,
        config: &CommandSinkConfig,
        default: DefaultBroker<'_>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, SinkBuildError> {
        let invalid = |message: String| SinkBuildError::Invalid {
            sink: config.name.clone(),
            message,
        };
        if let Some(problem) = config_problem(&config.tenant, &config.command, config.ttl_seconds) {
            return Err(invalid(problem));
        }
        let compile = |field: &str, source: &Option<String>| match source {
            Some(source) => env
                .compile(source)
                .map(Some)
                .map_err(|e| invalid(format!("{field}: {e}"))),
            None => Ok(None),
        };
        let (when, device) = (
            compile("when", &config.when)?,
            compile("device", &config.device)?,
        );
        let payload = compile("payload", &config.payload)?;
        let (uri, ca_file) = default.or_own(
            &config.name,
            config.uri_file.as_deref(),
            config.ca_file.as_deref(),
        )?;
        Ok(Self {
            name: config.name.clone(),
            env: env.clone(),
            when,
            device,
            payload,
            template: Template {
                name: config.command.clone(),
                sender: sender(&config.name),
                ttl_seconds: config.ttl_seconds,
            },
            batch: config.batch.clone(),
            link: Link::new(uri, ca_file, command::exchange(&config.tenant)),
            metrics,
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
        self.link.init().await
    }

    /// The command for a record: `key` the device id, `bytes` the JSON payload; `None`
    /// when `when` is false. An error (an expression failing, no valid device id) is
    /// permanent for the message.
    pub fn prepare(&self, record: &Record) -> Result<Option<Prepared>, String> {
        let scope = self.env.scope(&record.value);
        if let Some(when) = &self.when {
            match when.eval_in(&scope).map_err(|e| format!("when: {e}"))? {
                Value::Bool(true) => {}
                Value::Bool(false) => {
                    self.metrics.command(&self.name, SKIPPED);
                    return Ok(None);
                }
                other => return Err(format!("when: expected a bool, got {other}")),
            }
        }
        let device = match &self.device {
            Some(expr) => expr.eval_in(&scope).map_err(|e| format!("device: {e}"))?,
            None => record.value.get("device").cloned().unwrap_or(Value::Null),
        };
        let device = device_id(&device).map_err(|e| format!("device: {e}"))?;
        let bytes = match &self.payload {
            Some(expr) => json_bytes(&expr.eval_in(&scope).map_err(|e| format!("payload: {e}"))?),
            None => json_bytes(&record.value),
        };
        Ok(Some(Prepared {
            id: record.id.clone(),
            key: Some(device),
            bytes,
            values: Vec::new(),
            refused: None,
        }))
    }

    /// Sends one command per item and waits for the broker's answer on each; only an
    /// outage fails the batch (see the module's list).
    pub async fn write(&self, batch: &[Prepared]) -> Result<(), SinkError> {
        let now_ms = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or_default();
        let commands: Vec<Outgoing<'_>> = batch
            .iter()
            .map(|item| {
                let id = command_id(&self.name, &item.id);
                Outgoing {
                    properties: properties(&self.template, &id, now_ms),
                    id,
                    device: item.key.as_deref().unwrap_or_default(),
                    payload: &item.bytes,
                }
            })
            .collect();
        let deliveries = self.link.send(&commands).await?;
        for ((item, command), delivery) in batch.iter().zip(&commands).zip(deliveries) {
            self.report(&item.id, command, delivery);
        }
        Ok(())
    }

    fn report(&self, message_id: &str, command: &Outgoing<'_>, delivery: Delivery) {
        self.metrics.command(&self.name, delivery.label());
        let (sink, device, command_id) = (&self.name, command.device, &command.id);
        match delivery {
            Delivery::Sent => {
                tracing::debug!(sink, device, command_id, message_id, "command sent");
            }
            Delivery::NoQueue => {
                tracing::info!(sink, device, command_id, message_id, "command undeliverable: the device has no command queue (offline, or never subscribed)");
            }
            Delivery::NoExchange => {
                tracing::info!(
                    sink,
                    device,
                    command_id,
                    message_id,
                    "command undeliverable: the tenant's command exchange does not exist"
                );
            }
            Delivery::QueueFull => {
                tracing::warn!(
                    sink,
                    device,
                    command_id,
                    message_id,
                    "command refused: the device's command queue is full"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tributary_contract::worker_config::{CommandSinkConfig, DEFAULT_REPUBLISH_BATCH};

    fn config() -> CommandSinkConfig {
        CommandSinkConfig {
            name: "fan".into(),
            tenant: "factory".into(),
            uri_file: None,
            ca_file: None,
            command: "fan/set".into(),
            device: None,
            when: Some("payload.temp > 30.0".into()),
            payload: Some("{'speed': 100}".into()),
            ttl_seconds: 60,
            batch: DEFAULT_REPUBLISH_BATCH,
        }
    }

    fn build(config: &CommandSinkConfig) -> Result<(CommandSink, Arc<Metrics>), String> {
        let metrics = Arc::new(Metrics::new());
        CommandSink::build(
            &CelEnv::default(),
            config,
            DefaultBroker::from("amqp://unused"),
            metrics.clone(),
        )
        .map(|sink| (sink, metrics))
        .map_err(|e| e.to_string())
    }

    fn record(payload: Value) -> Record {
        Record {
            id: "01JD5Z8Q2K3M4N5P6Q7R8S9T0V".into(),
            value: json!({"id": "01JD5Z8Q2K3M4N5P6Q7R8S9T0V", "device": "press-7", "payload": payload}),
        }
    }

    type Change = fn(&mut CommandSinkConfig);

    #[test]
    fn bad_settings_fail_the_build_naming_the_sink_and_the_field() {
        let cases: [(Change, &str); 6] = [
            (
                |c| c.tenant = "Factory".into(),
                "sink fan: tenant \"Factory\"",
            ),
            (
                |c| c.command = "fan/#".into(),
                "sink fan: command \"fan/#\"",
            ),
            (|c| c.ttl_seconds = 0, "sink fan: ttlSeconds 0"),
            (
                |c| c.when = Some("payload.temp >".into()),
                "sink fan: when: invalid CEL",
            ),
            (
                |c| c.device = Some("(".into()),
                "sink fan: device: invalid CEL",
            ),
            (
                |c| c.payload = Some("{'a':".into()),
                "sink fan: payload: invalid CEL",
            ),
        ];
        for (change, expected) in cases {
            let mut config = config();
            change(&mut config);
            let error = build(&config).expect_err("invalid");
            assert!(error.starts_with(expected), "{error}");
        }
        assert!(build(&config()).is_ok());
    }

    #[test]
    fn a_message_that_meets_when_becomes_a_command_to_its_device() {
        let (sink, metrics) = build(&config()).expect("build");
        let prepared = sink
            .prepare(&record(json!({"temp": 31.5})))
            .expect("prepare")
            .expect("a command");
        assert_eq!(prepared.key.as_deref(), Some("press-7"));
        assert_eq!(prepared.id, "01JD5Z8Q2K3M4N5P6Q7R8S9T0V");
        let payload: Value = serde_json::from_slice(&prepared.bytes).expect("json");
        assert_eq!(payload, json!({"speed": 100}));
        assert!(!metrics.render().contains("commands_total"));
    }

    #[test]
    fn a_message_that_fails_when_sends_nothing_and_is_counted_skipped() {
        let (sink, metrics) = build(&config()).expect("build");
        let prepared = sink
            .prepare(&record(json!({"temp": 20.0})))
            .expect("prepare");
        assert_eq!(prepared, None);
        assert!(
            metrics
                .render()
                .contains("tributary_worker_commands_total{sink=\"fan\",result=\"skipped\"} 1"),
            "{}",
            metrics.render()
        );
    }

    #[test]
    fn without_expressions_every_message_goes_whole_to_its_device() {
        let mut config = config();
        (config.when, config.payload) = (None, None);
        let (sink, _) = build(&config).expect("build");
        let record = record(json!({"temp": 1}));
        let prepared = sink.prepare(&record).expect("prepare").expect("a command");
        assert_eq!(prepared.key.as_deref(), Some("press-7"));
        assert_eq!(prepared.bytes, json_bytes(&record.value));
    }

    #[test]
    fn a_bad_device_or_condition_is_permanent_for_the_message() {
        let cases = [
            (
                Some("payload.target"),
                "payload.temp > 30.0",
                "device: CEL evaluation",
            ),
            (
                Some("payload.temp"),
                "true",
                "device: the device id is 31.5, not a string",
            ),
            (
                Some("'a/b'"),
                "true",
                "device: the device id \"a/b\" is not a valid device id",
            ),
            (None, "payload.missing", "when: CEL evaluation"),
            (None, "1", "when: expected a bool, got 1"),
        ];
        for (device, when, expected) in cases {
            let mut config = config();
            config.device = device.map(String::from);
            config.when = Some(when.into());
            let (sink, _) = build(&config).expect("build");
            let error = sink
                .prepare(&record(json!({"temp": 31.5})))
                .expect_err("refused");
            assert!(error.starts_with(expected), "{error}");
        }
    }
}
