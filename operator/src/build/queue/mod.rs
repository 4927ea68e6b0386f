//! Desired state of a Queue: validation, the broker queue's names and the AMQP arguments
//! it is declared with, and (in [`managed`]) the children of a managed RabbitMQ.

use super::{check_dns_label, name_and_namespace, BuildError};
use crate::crd::queue::{ManagedBroker, QueueType};
use crate::crd::{Queue, SecretKeyRef};
use std::collections::BTreeMap;

/// AMQP port of a managed broker.
pub const AMQP_PORT: i32 = 5672;
/// Management API port of a managed broker.
pub const MANAGEMENT_PORT: i32 = 15672;
/// uid/gid of the `rabbitmq` user in the official image.
pub const RABBITMQ_UID: i64 = 999;
/// Longest Queue name with a managed broker (child names add up to 25 characters).
pub const MAX_MANAGED_NAME: usize = 38;
/// Secret keys of the generated credentials Secret.
pub const KEY_USERNAME: &str = "username";
/// See [`KEY_USERNAME`].
pub const KEY_PASSWORD: &str = "password";
/// See [`KEY_USERNAME`].
pub const KEY_COOKIE: &str = "erlang-cookie";
/// See [`KEY_USERNAME`]: the `amqp://` URI Gateways and Workers use.
pub const KEY_URI: &str = "uri";
/// See [`KEY_USERNAME`]: the management API base URI.
pub const KEY_MANAGEMENT_URI: &str = "management-uri";

/// Generated secrets of a managed broker. Kept across reconciles (read back from the
/// Secret) so they never change under running clients.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Broker user name.
    pub username: String,
    /// Broker password.
    pub password: String,
    /// Erlang distribution cookie shared by the broker nodes.
    pub erlang_cookie: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// What the spec asks for, after validation.
#[derive(Clone, Debug, PartialEq)]
pub enum BrokerPlan {
    /// The operator runs RabbitMQ.
    Managed(ManagedBroker),
    /// Someone else runs RabbitMQ; the URI is in this Secret key.
    External {
        /// The AMQP URI.
        uri: SecretKeyRef,
        /// The management API URI, when given.
        management_uri: Option<SecretKeyRef>,
        /// The PEM bundle of the broker's private CA, when given.
        ca: Option<SecretKeyRef>,
    },
}

/// The managed broker's `resources`, when given.
fn validate_broker_resources(spec: &crate::crd::QueueSpec) -> Result<(), BuildError> {
    let resources = spec
        .broker
        .managed
        .as_ref()
        .and_then(|m| m.resources.as_ref());
    crate::build::pod::validate_resources("spec.broker.managed.resources", resources)
}

/// Validates a Queue's spec; the error message is shown to the user in a condition.
pub fn validate(queue: &Queue) -> Result<BrokerPlan, BuildError> {
    let (name, _) = name_and_namespace(queue)?;
    let spec = &queue.spec;
    validate_broker_resources(spec)?;
    let plan = match (&spec.broker.managed, &spec.broker.external) {
        (Some(_), Some(_)) => {
            return Err(BuildError::Invalid(
                "spec.broker: set exactly one of managed and external, not both".into(),
            ))
        }
        (None, None) => {
            return Err(BuildError::Invalid(
                "spec.broker: set exactly one of managed and external".into(),
            ))
        }
        (Some(managed), None) => {
            check_dns_label(
                "a Queue with a managed broker has a name that",
                &name,
                MAX_MANAGED_NAME,
            )?;
            BrokerPlan::Managed(managed.clone())
        }
        (None, Some(external)) => BrokerPlan::External {
            uri: external.uri_secret_ref.clone(),
            management_uri: external.management_uri_secret_ref.clone(),
            ca: external.ca_secret_ref.clone(),
        },
    };
    if spec.queue_type == QueueType::Stream {
        // Streams keep their dead-letter queue (a separate queue Workers publish to), but
        // cannot bound or expire messages by count or age.
        let unsupported = [
            (spec.max_length.is_some(), "maxLength"),
            (spec.message_ttl_seconds.is_some(), "messageTtlSeconds"),
        ];
        if let Some((_, field)) = unsupported.iter().find(|(set, _)| *set) {
            return Err(BuildError::Invalid(format!(
                "spec.{field} is not supported by stream queues (use maxLengthBytes)"
            )));
        }
    }
    if let Some(queue_name) = &spec.queue_name {
        if !is_broker_queue_name(queue_name) {
            return Err(BuildError::Invalid(
                "spec.queueName must be 1-255 bytes and must not start with \"amq.\"".into(),
            ));
        }
    }
    if let Some(dlq) = &spec.dead_letter.queue_name {
        if !is_broker_queue_name(dlq) {
            return Err(BuildError::Invalid(
                "spec.deadLetter.queueName must be 1-255 bytes and must not start with \"amq.\""
                    .into(),
            ));
        }
    }
    if spec.dead_letter.enabled && dead_letter_queue_name(queue)? == Some(broker_queue_name(queue)?)
    {
        return Err(BuildError::Invalid(
            "spec.deadLetter.queueName must differ from the queue's own name".into(),
        ));
    }
    if let Some(replay) = &spec.replay {
        if !spec.dead_letter.enabled {
            return Err(BuildError::Invalid(
                "spec.replay needs a dead-letter queue (spec.deadLetter.enabled is false)".into(),
            ));
        }
        if replay.request.is_empty() {
            return Err(BuildError::Invalid(
                "spec.replay.request must not be empty".into(),
            ));
        }
    }
    Ok(plan)
}

fn is_broker_queue_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 255 && !name.starts_with("amq.")
}

/// Name of the queue on the broker: `spec.queueName` or `<namespace>.<name>`.
pub fn broker_queue_name(queue: &Queue) -> Result<String, BuildError> {
    let (name, namespace) = name_and_namespace(queue)?;
    Ok(queue
        .spec
        .queue_name
        .clone()
        .unwrap_or_else(|| format!("{namespace}.{name}")))
}

/// Name of the dead-letter queue: `spec.deadLetter.queueName` or `<queueName>.dlq`; `None`
/// only when the user opted out with `deadLetter.enabled: false`.
pub fn dead_letter_queue_name(queue: &Queue) -> Result<Option<String>, BuildError> {
    let dead_letter = &queue.spec.dead_letter;
    if !dead_letter.enabled {
        return Ok(None);
    }
    Ok(Some(match &dead_letter.queue_name {
        Some(name) => name.clone(),
        None => format!("{}.dlq", broker_queue_name(queue)?),
    }))
}

/// Type of the dead-letter queue: the queue's own, except for a stream, whose dead letters
/// go to a quorum queue (a stream cannot be drained message by message, so nothing could be
/// replayed from it).
pub fn dead_letter_queue_type(queue: &Queue) -> QueueType {
    match queue.spec.queue_type {
        QueueType::Stream => QueueType::Quorum,
        other => other,
    }
}

/// The delivery limit the Worker enforces itself: the Queue's on classic queues, which keep
/// no delivery count; `None` on quorum queues, where the broker counts (`x-delivery-limit`),
/// and on streams, which never redeliver (the worker counts by putting a message back on
/// its queue, which would append a copy to the stream's log).
pub fn worker_delivery_limit(queue: &Queue) -> Option<u32> {
    match queue.spec.queue_type {
        QueueType::Classic => u32::try_from(queue.spec.dead_letter.delivery_limit.max(1)).ok(),
        QueueType::Quorum | QueueType::Stream => None,
    }
}

/// One AMQP queue argument value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArgValue {
    /// A string argument.
    Str(String),
    /// An integer argument.
    Int(i64),
}

/// The `x-*` arguments the broker queue is declared with.
pub fn declare_arguments(queue: &Queue) -> Result<BTreeMap<String, ArgValue>, BuildError> {
    let spec = &queue.spec;
    let mut args = BTreeMap::new();
    args.insert(
        "x-queue-type".to_owned(),
        ArgValue::Str(spec.queue_type.as_str().to_owned()),
    );
    if let Some(bytes) = spec.max_length_bytes {
        args.insert("x-max-length-bytes".to_owned(), ArgValue::Int(bytes));
    }
    if spec.queue_type == QueueType::Stream {
        return Ok(args);
    }
    if let Some(length) = spec.max_length {
        args.insert("x-max-length".to_owned(), ArgValue::Int(length));
    }
    if spec.max_length.is_some() || spec.max_length_bytes.is_some() {
        args.insert(
            "x-overflow".to_owned(),
            ArgValue::Str(spec.overflow.as_str().to_owned()),
        );
    }
    if let Some(ttl) = spec.message_ttl_seconds {
        let millis = ttl
            .checked_mul(1000)
            .ok_or_else(|| BuildError::Invalid("spec.messageTtlSeconds is too large".to_owned()))?;
        args.insert("x-message-ttl".to_owned(), ArgValue::Int(millis));
    }
    if let Some(dlq) = dead_letter_queue_name(queue)? {
        args.insert(
            "x-dead-letter-exchange".to_owned(),
            ArgValue::Str(String::new()),
        );
        args.insert("x-dead-letter-routing-key".to_owned(), ArgValue::Str(dlq));
    }
    if spec.queue_type == QueueType::Quorum {
        // Also without a dead-letter queue: a message that crashes its workers stops
        // coming back (and is then discarded, as the opt-out says).
        args.insert(
            "x-delivery-limit".to_owned(),
            ArgValue::Int(i64::from(spec.dead_letter.delivery_limit)),
        );
    }
    Ok(args)
}

/// The `x-*` arguments of the dead-letter queue: its type only (durable, no limits, no
/// dead-lettering of its own).
pub fn dead_letter_arguments(queue: &Queue) -> BTreeMap<String, ArgValue> {
    BTreeMap::from([(
        "x-queue-type".to_owned(),
        ArgValue::Str(dead_letter_queue_type(queue).as_str().to_owned()),
    )])
}

/// Names of a managed broker's children.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManagedNames {
    /// StatefulSet and client Service.
    pub broker: String,
    /// Headless Service giving each node a stable DNS name.
    pub headless: String,
    /// Generated credentials Secret.
    pub credentials: String,
    /// ConfigMap with `rabbitmq.conf` and `enabled_plugins`.
    pub config: String,
}

impl ManagedNames {
    /// The names for a Queue called `queue`.
    pub fn for_queue(queue: &str) -> Self {
        ManagedNames {
            broker: format!("{queue}-rabbitmq"),
            headless: format!("{queue}-rabbitmq-nodes"),
            credentials: format!("{queue}-rabbitmq-credentials"),
            config: format!("{queue}-rabbitmq-config"),
        }
    }

    /// The broker's DNS name inside the cluster (its client Service in `namespace`).
    pub fn host(&self, namespace: &str) -> String {
        format!("{}.{namespace}.svc", self.broker)
    }
}

/// The Secret key Gateways and Workers read the AMQP URI from.
pub fn connection_secret_ref(queue: &Queue, plan: &BrokerPlan) -> Result<SecretKeyRef, BuildError> {
    let (name, _) = name_and_namespace(queue)?;
    Ok(match plan {
        BrokerPlan::Managed(_) => SecretKeyRef {
            name: ManagedNames::for_queue(&name).credentials,
            key: KEY_URI.to_owned(),
        },
        BrokerPlan::External { uri, .. } => uri.clone(),
    })
}

pub mod access;
pub mod managed;
pub mod network_policy;

pub use managed::{build_managed, ManagedChildren};
pub use network_policy::broker_network_policy;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures::load;
    use crate::crd::queue::{DeadLetterSpec, ReplaySpec};
    use crate::crd::QueueSpec;

    #[test]
    fn declare_arguments_carry_type_length_overflow_ttl_and_dead_letter() {
        let queue: Queue = load("queue-managed.yaml");
        let args = declare_arguments(&queue).expect("args");
        assert_eq!(args["x-queue-type"], ArgValue::Str("quorum".into()));
        assert_eq!(args["x-max-length"], ArgValue::Int(100_000));
        assert_eq!(args["x-overflow"], ArgValue::Str("reject-publish".into()));
        assert_eq!(args["x-message-ttl"], ArgValue::Int(86_400_000));
        assert_eq!(args["x-dead-letter-exchange"], ArgValue::Str(String::new()));
        assert_eq!(
            args["x-dead-letter-routing-key"],
            ArgValue::Str("factory.telemetry.dlq".into())
        );
        assert_eq!(args["x-delivery-limit"], ArgValue::Int(3));
    }

    #[test]
    fn external_queue_uses_the_users_secret_and_builds_no_broker() {
        let queue: Queue = load("queue-external.yaml");
        let plan = validate(&queue).expect("valid");
        let secret = connection_secret_ref(&queue, &plan).expect("ref");
        assert_eq!(
            (secret.name.as_str(), secret.key.as_str()),
            ("shared-rabbit", "uri")
        );
        assert_eq!(broker_queue_name(&queue).expect("name"), "shared.telemetry");
    }

    #[test]
    fn both_or_neither_broker_is_invalid() {
        let mut queue: Queue = load("queue-external.yaml");
        let managed: Queue = load("queue-managed.yaml");
        queue.spec.broker.managed = managed.spec.broker.managed.clone();
        let error = validate(&queue).expect_err("both");
        assert!(error.to_string().contains("not both"), "{error}");
        queue.spec.broker = Default::default();
        assert!(validate(&queue)
            .expect_err("neither")
            .to_string()
            .contains("exactly one"));
    }

    #[test]
    fn stream_queue_rejects_length_and_ttl_limits() {
        let mut queue: Queue = load("queue-managed.yaml");
        queue.spec.queue_type = QueueType::Stream;
        let error = validate(&queue).expect_err("invalid");
        assert!(error.to_string().contains("stream"), "{error}");
        queue.spec.max_length = None;
        let error = validate(&queue).expect_err("invalid");
        assert!(error.to_string().contains("messageTtlSeconds"), "{error}");
    }

    #[test]
    fn stream_queue_keeps_a_quorum_dlq_without_dead_letter_arguments() {
        let mut queue: Queue = load("queue-managed.yaml");
        queue.spec.queue_type = QueueType::Stream;
        queue.spec.max_length = None;
        queue.spec.message_ttl_seconds = None;
        validate(&queue).expect("a stream with a dead-letter queue is valid");
        assert_eq!(
            dead_letter_queue_name(&queue).expect("name").as_deref(),
            Some("factory.telemetry.dlq")
        );
        let args = declare_arguments(&queue).expect("args");
        assert_eq!(args.keys().collect::<Vec<_>>(), vec!["x-queue-type"]);
        assert_eq!(
            dead_letter_arguments(&queue)["x-queue-type"],
            ArgValue::Str("quorum".into())
        );
        // A stream never redelivers: no count on the broker nor in the worker.
        assert_eq!(worker_delivery_limit(&queue), None);
    }

    #[test]
    fn queue_without_dead_letter_field_gets_a_dlq_with_the_default_limit() {
        // queue-external.yaml: a classic queue with no `deadLetter` at all.
        let queue: Queue = load("queue-external.yaml");
        assert_eq!(queue.spec.dead_letter, DeadLetterSpec::default());
        assert_eq!(
            dead_letter_queue_name(&queue).expect("name").as_deref(),
            Some("shared.telemetry.dlq")
        );
        let args = declare_arguments(&queue).expect("args");
        assert_eq!(
            args["x-dead-letter-routing-key"],
            ArgValue::Str("shared.telemetry.dlq".into())
        );
        // Classic queues keep no delivery count: the worker enforces the default limit.
        assert!(!args.contains_key("x-delivery-limit"));
        assert_eq!(worker_delivery_limit(&queue), Some(5));
        assert_eq!(
            dead_letter_arguments(&queue)["x-queue-type"],
            ArgValue::Str("classic".into())
        );
    }

    #[test]
    fn dead_letter_manifests_old_and_new_deserialize() {
        let spec = |dead_letter: &str| -> QueueSpec {
            serde_yaml::from_str(&format!("broker: {{managed: {{}}}}\n{dead_letter}"))
                .expect("spec parses")
        };
        // Before the opt-out existed: queueName and deliveryLimit only.
        let old = spec("deadLetter: {queueName: rejected, deliveryLimit: 3}");
        assert_eq!(
            old.dead_letter,
            DeadLetterSpec {
                enabled: true,
                queue_name: Some("rejected".into()),
                delivery_limit: 3
            }
        );
        let absent = spec("");
        assert!(absent.dead_letter.enabled);
        assert_eq!(absent.dead_letter.delivery_limit, 5);
        let opted_out = spec("deadLetter: {enabled: false}");
        assert!(!opted_out.dead_letter.enabled);
        assert_eq!(opted_out.dead_letter.delivery_limit, 5);
    }

    #[test]
    fn opting_out_declares_no_dlq_but_keeps_the_delivery_limit() {
        let mut queue: Queue = load("queue-managed.yaml");
        queue.spec.dead_letter.enabled = false;
        validate(&queue).expect("valid");
        assert_eq!(dead_letter_queue_name(&queue).expect("name"), None);
        let args = declare_arguments(&queue).expect("args");
        assert!(!args.contains_key("x-dead-letter-exchange"));
        assert!(!args.contains_key("x-dead-letter-routing-key"));
        assert_eq!(args["x-delivery-limit"], ArgValue::Int(3));
        assert_eq!(worker_delivery_limit(&queue), None);
    }

    #[test]
    fn dead_letter_queue_name_must_be_valid_and_not_the_queue_itself() {
        let mut queue: Queue = load("queue-managed.yaml");
        queue.spec.dead_letter.queue_name = Some("amq.dead".into());
        let error = validate(&queue).expect_err("reserved name");
        assert!(
            error.to_string().contains("deadLetter.queueName"),
            "{error}"
        );
        queue.spec.dead_letter.queue_name = Some("factory.telemetry".into());
        let error = validate(&queue).expect_err("same as the queue");
        assert!(error.to_string().contains("differ"), "{error}");
    }

    #[test]
    fn replay_needs_a_dead_letter_queue_and_a_request() {
        let mut queue: Queue = load("queue-managed.yaml");
        queue.spec.replay = Some(ReplaySpec {
            request: "2026-01-01".into(),
            reason_kind: None,
            max_messages: None,
        });
        validate(&queue).expect("valid");
        queue.spec.dead_letter.enabled = false;
        let error = validate(&queue).expect_err("no DLQ");
        assert!(error.to_string().contains("spec.replay"), "{error}");
        queue.spec.dead_letter.enabled = true;
        queue.spec.replay = Some(ReplaySpec {
            request: String::new(),
            reason_kind: None,
            max_messages: None,
        });
        assert!(validate(&queue).is_err());
    }

    #[test]
    fn credentials_never_show_in_debug_output() {
        let credentials = Credentials {
            username: "tributary".into(),
            password: "s3cret".into(),
            erlang_cookie: "cookie".into(),
        };
        assert!(!format!("{credentials:?}").contains("s3cret"));
    }
}
