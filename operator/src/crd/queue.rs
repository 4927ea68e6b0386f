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
    /// The dead-letter queue, on by default: messages a Worker cannot process (with their
    /// reason), messages past the delivery limit, and (on quorum and classic queues) expired
    /// or dropped ones go there instead of being lost. Opt out with `enabled: false`.
    #[serde(default)]
    pub dead_letter: DeadLetterSpec,
    /// What deleting this resource does: `Retain` (default: the broker queue, its messages
    /// and a managed RabbitMQ with its storage and credentials stay; a new Queue of the same
    /// name adopts them) or `Delete` (the broker queue and dead-letter queue are deleted,
    /// then the managed RabbitMQ).
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// With `deletionPolicy: Delete`, also delete a queue or dead-letter queue that still
    /// holds messages. Default false: the broker refuses to delete a non-empty queue
    /// (atomically, so a message arriving during deletion is kept) and deletion waits
    /// (condition `DeletionBlocked`) until both are empty.
    #[serde(default)]
    pub delete_non_empty: bool,
    /// Moves dead-lettered messages back into the queue (after the cause is fixed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<ReplaySpec>,
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
    /// Number of RabbitMQ nodes. 3 gives replicated quorum queues. Default 1. The queue is
    /// declared once every node is ready and they run as one cluster, so a quorum queue
    /// gets a member on each; raising it later does not add members to an existing queue.
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
    /// CPU and memory of each broker node. Defaults: requests `cpu: 100m`, `memory: 256Mi`;
    /// limits `memory: 1Gi` (no CPU limit: a throttled node misses cluster heartbeats).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<super::ComputeResources>,
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
    /// Secret key holding a PEM bundle of the CA(s) that signed the broker's certificate,
    /// for a broker with a private CA: the operator, Gateways and Workers then also trust
    /// those CAs for this broker (mounted read-only into their pods; a change rolls them).
    /// Host names are verified either way. Needs an `amqps://` URI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
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
    /// Keep the broker queue and its messages, and a managed RabbitMQ with its storage.
    #[default]
    Retain,
    /// Delete the broker queue and dead-letter queue (guarded by `deleteNonEmpty`), then the
    /// managed RabbitMQ.
    Delete,
}

/// Dead-lettering settings. Every Queue has a dead-letter queue unless `enabled` is false.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterSpec {
    /// Whether the Queue has a dead-letter queue. Default true. With `false`, **poison
    /// messages are discarded**: a message that cannot be processed, or is delivered more
    /// than `deliveryLimit` times, is dropped (its reason only logged by the Worker).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Name of the dead-letter queue on the broker. Default: `<queueName>.dlq`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_name: Option<String>,
    /// Deliveries after which a message that keeps coming back (its worker crashed or was
    /// stopped while holding it) is dead-lettered instead of redelivered. Quorum queues count
    /// on the broker (`x-delivery-limit`); on classic queues the Worker counts. Default 5.
    ///
    /// A stream never redelivers and cannot dead-letter by itself: its dead-letter queue is a
    /// separate quorum queue that Workers publish bad messages to, the stream carries no
    /// dead-letter arguments, and this limit does not apply to it.
    #[serde(default = "default_delivery_limit")]
    #[schemars(range(min = 1))]
    pub delivery_limit: i32,
}

impl Default for DeadLetterSpec {
    fn default() -> Self {
        DeadLetterSpec {
            enabled: true,
            queue_name: None,
            delivery_limit: default_delivery_limit(),
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_delivery_limit() -> i32 {
    5
}

/// A request to move dead-lettered messages back into the queue.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplaySpec {
    /// Any text; each new value asks for one replay (for example a date or a counter). The
    /// operator replays when it differs from `status.replay.request`.
    pub request: String,
    /// Replay only messages whose `x-tributary-reason-kind` header has this value (for
    /// example `pipeline` or `sink-rejected`); the others stay in the dead-letter queue.
    /// Default: every message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason_kind: Option<String>,
    /// Move at most this many messages. Default: all that match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_messages: Option<i64>,
}

/// The outcome of the last replay.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplayStatus {
    /// The `spec.replay.request` this replay answered.
    pub request: String,
    /// Messages moved back into the queue.
    pub moved: i64,
    /// Messages that did not match `reasonKind` (or were past `maxMessages`) and stayed.
    pub skipped: i64,
    /// Messages left in the dead-letter queue after the replay.
    pub remaining: i64,
    /// When the replay finished (RFC 3339).
    pub completed_at: String,
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
    /// The last replay of dead-lettered messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<ReplayStatus>,
}
