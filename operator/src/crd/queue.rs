//! The `Queue` resource: a durable queue on RabbitMQ, either on a broker the operator runs
//! (`managed`) or on an existing one (`external`).

use super::{Condition, SecretKeyRef};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A durable queue on RabbitMQ. Gateways route device messages into it; Workers consume it.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "tributary.dev",
    version = "v1alpha1",
    kind = "Queue",
    namespaced,
    status = "QueueStatus",
    shortname = "tq",
    category = "tributary",
    doc = "A durable queue on RabbitMQ: Gateways route device messages into it and Workers consume it.",
    printcolumn(name = "Type", type_ = "string", json_path = ".spec.type"),
    printcolumn(name = "Broker", type_ = "string", json_path = ".status.brokerMode"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Messages",
        type_ = "integer",
        json_path = ".status.readyMessages"
    ),
    printcolumn(
        name = "Unacked",
        type_ = "integer",
        json_path = ".status.unackedMessages"
    ),
    printcolumn(name = "Consumers", type_ = "integer", json_path = ".status.consumers"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct QueueSpec {
    /// Which RabbitMQ holds the queue: set exactly one of `managed` or `external`.
    pub broker: BrokerSpec,
    /// Queue type on the broker: `quorum` (replicated, default), `classic` or `stream`.
    #[serde(default, rename = "type")]
    pub queue_type: QueueType,
    /// Name of the queue on the broker. Default: `<namespace>.<name>` of this resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_name: Option<String>,
    /// Maximum number of ready messages; past it `overflow` decides. Default: unbounded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_length: Option<i64>,
    /// Maximum total size of ready message bodies in bytes. Default: unbounded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_length_bytes: Option<i64>,
    /// What happens when the queue is full: `reject-publish` (default: publishers, and so
    /// devices, get pushed back) or `drop-head` (the oldest messages are dropped or
    /// dead-lettered).
    #[serde(default)]
    pub overflow: Overflow,
    /// Time-to-live of a message in the queue, in seconds. Default: messages never expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub message_ttl_seconds: Option<i64>,
    /// Dead-lettering of rejected or expired messages into a companion queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<DeadLetterSpec>,
    /// What deleting this resource does to the queue on the broker: `Retain` (default: the
    /// broker queue and its messages stay) or `Delete` (the broker queue is deleted).
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// With `deletionPolicy: Delete`, also delete a queue that still holds messages.
    /// Default false: deletion waits (condition `DeletionBlocked`) until the queue is empty.
    #[serde(default)]
    pub delete_non_empty: bool,
}

/// Which broker holds the queue. Exactly one field must be set.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BrokerSpec {
    /// Run a RabbitMQ for this queue as a StatefulSet in the resource's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedBroker>,
    /// Use an existing RabbitMQ reached through an `amqp://` or `amqps://` URI from a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalBroker>,
}

/// A RabbitMQ run by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagedBroker {
    /// Number of RabbitMQ nodes. 3 gives replicated quorum queues. Default 1.
    #[serde(default = "default_broker_replicas")]
    #[schemars(range(min = 1, max = 7))]
    pub replicas: i32,
    /// RabbitMQ container image. Default: the operator's configured RabbitMQ image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Persistent storage per node. Without it the broker keeps data in an `emptyDir`
    /// (lost when the pod is deleted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageSpec>,
}

fn default_broker_replicas() -> i32 {
    1
}

/// A PersistentVolumeClaim template for each broker node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Requested size, as a Kubernetes quantity such as `1Gi`.
    pub size: String,
    /// StorageClass of the claims. Default: the cluster's default StorageClass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

/// A RabbitMQ run by someone else.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalBroker {
    /// Secret key holding the `amqp://` or `amqps://` URI, credentials and vhost included.
    pub uri_secret_ref: SecretKeyRef,
    /// Secret key holding the management API base URI (`http(s)://user:pass@host:15672`),
    /// used to read message counts. Optional: without it the status shows no counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub management_uri_secret_ref: Option<SecretKeyRef>,
}

/// Queue type on the broker.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// Replicated, durable (default).
    #[default]
    Quorum,
    /// Single-node classic queue.
    Classic,
    /// Append-only log.
    Stream,
}

impl QueueType {
    /// The `x-queue-type` argument value.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
            QueueType::Stream => "stream",
        }
    }
}

/// Behaviour of a full queue.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Overflow {
    /// Refuse new messages: publishers see a negative confirm.
    #[default]
    RejectPublish,
    /// Drop (or dead-letter) the oldest message.
    DropHead,
}

impl Overflow {
    /// The `x-overflow` argument value.
    pub fn as_str(self) -> &'static str {
        match self {
            Overflow::RejectPublish => "reject-publish",
            Overflow::DropHead => "drop-head",
        }
    }
}

/// What deleting the resource does to the broker queue.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Keep the broker queue and its messages.
    #[default]
    Retain,
    /// Delete the broker queue (guarded by `deleteNonEmpty`).
    Delete,
}

/// Dead-lettering settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterSpec {
    /// Name of the dead-letter queue on the broker. Default: `<queueName>.dlq`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_name: Option<String>,
    /// Deliveries after which a message is dead-lettered instead of redelivered (quorum
    /// queues only). Default 5.
    #[serde(default = "default_delivery_limit")]
    #[schemars(range(min = 1))]
    pub delivery_limit: i32,
}

fn default_delivery_limit() -> i32 {
    5
}

/// Observed state of a Queue.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueStatus {
    /// Conditions: `Ready` tells whether the queue is declared and usable.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` last reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `managed` or `external`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_mode: Option<String>,
    /// Name of the queue on the broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_name: Option<String>,
    /// Name of the dead-letter queue on the broker, when dead-lettering is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_queue_name: Option<String>,
    /// Secret key holding the AMQP URI that Gateways and Workers use for this queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_secret_ref: Option<SecretKeyRef>,
    /// Messages ready for delivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_messages: Option<i64>,
    /// Messages delivered and not yet acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unacked_messages: Option<i64>,
    /// Consumers attached to the queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumers: Option<i64>,
    /// Messages waiting in the dead-letter queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_lettered_messages: Option<i64>,
}
