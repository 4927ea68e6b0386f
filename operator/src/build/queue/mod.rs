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
    },
}

/// Validates a Queue's spec; the error message is shown to the user in a condition.
pub fn validate(queue: &Queue) -> Result<BrokerPlan, BuildError> {
    let (name, _) = name_and_namespace(queue)?;
    let spec = &queue.spec;
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
        },
    };
    if spec.queue_type == QueueType::Stream {
        let unsupported = [
            (spec.max_length.is_some(), "maxLength"),
            (spec.message_ttl_seconds.is_some(), "messageTtlSeconds"),
            (spec.dead_letter.is_some(), "deadLetter"),
        ];
        if let Some((_, field)) = unsupported.iter().find(|(set, _)| *set) {
            return Err(BuildError::Invalid(format!(
                "spec.{field} is not supported by stream queues (use maxLengthBytes)"
            )));
        }
    }
    if let Some(queue_name) = &spec.queue_name {
        if queue_name.is_empty() || queue_name.len() > 255 || queue_name.starts_with("amq.") {
            return Err(BuildError::Invalid(
                "spec.queueName must be 1-255 bytes and must not start with \"amq.\"".into(),
            ));
        }
    }
    Ok(plan)
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

/// Name of the dead-letter queue, when dead-lettering is on.
pub fn dead_letter_queue_name(queue: &Queue) -> Result<Option<String>, BuildError> {
    let Some(dead_letter) = &queue.spec.dead_letter else {
        return Ok(None);
    };
    Ok(Some(match &dead_letter.queue_name {
        Some(name) => name.clone(),
        None => format!("{}.dlq", broker_queue_name(queue)?),
    }))
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
    if let (Some(dead_letter), Some(dlq)) = (&spec.dead_letter, dead_letter_queue_name(queue)?) {
        args.insert(
            "x-dead-letter-exchange".to_owned(),
            ArgValue::Str(String::new()),
        );
        args.insert("x-dead-letter-routing-key".to_owned(), ArgValue::Str(dlq));
        if spec.queue_type == QueueType::Quorum {
            args.insert(
                "x-delivery-limit".to_owned(),
                ArgValue::Int(i64::from(dead_letter.delivery_limit)),
            );
        }
    }
    Ok(args)
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

pub mod managed;

pub use managed::{build_managed, ManagedChildren};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures::load;

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
    fn stream_queue_rejects_dead_lettering() {
        let mut queue: Queue = load("queue-managed.yaml");
        queue.spec.queue_type = QueueType::Stream;
        let error = validate(&queue).expect_err("invalid");
        assert!(error.to_string().contains("stream"), "{error}");
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
