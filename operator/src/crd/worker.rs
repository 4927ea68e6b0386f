//! The `Worker` resource: consumes one Queue, processes each message (CEL pipeline or a
//! custom container) and writes it to Sinks.

use super::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tributary_contract::worker_config;

/// A Deployment of the worker runtime consuming one Queue and writing to Sinks.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "tributary.dev",
    version = "v1alpha1",
    kind = "Worker",
    namespaced,
    status = "WorkerStatus",
    shortname = "twk",
    category = "tributary",
    doc = "Consumes one Queue, processes each message with a CEL pipeline or a custom container, and writes it to Sinks.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Queue", type_ = "string", json_path = ".spec.queue"),
    printcolumn(
        name = "Min",
        type_ = "integer",
        json_path = ".spec.scaling.minReplicas"
    ),
    printcolumn(
        name = "Max",
        type_ = "integer",
        json_path = ".spec.scaling.maxReplicas"
    ),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".status.replicas"),
    printcolumn(
        name = "Backlog",
        type_ = "integer",
        json_path = ".status.scaling.backlog"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Sinks",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"SinksAvailable\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct WorkerSpec {
    /// Name of the Queue (same namespace) to consume.
    #[schemars(length(min = 1))]
    pub queue: String,
    /// Names of the Sinks (same namespace) every message is written to. A message is
    /// acknowledged only after every sink confirmed it.
    #[schemars(length(min = 1))]
    pub sinks: Vec<String>,
    /// Declarative processing: CEL steps applied in order. Exclusive with `container`;
    /// with neither, messages pass through unchanged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pipeline: Vec<PipelineStep>,
    /// Custom processing: the user's container runs beside the worker runtime, receives
    /// each message over HTTP on localhost, and a 2xx response acknowledges it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<CustomContainer>,
    /// CPU and memory of the worker runtime container. Defaults: requests `cpu: 100m`,
    /// `memory: 64Mi`; limits `cpu: "1"`, `memory: 512Mi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<super::ComputeResources>,
    /// Desired replicas when `scaling.enabled` is false, written by `kubectl scale` or an
    /// HPA/KEDA through the `/scale` subresource (clamped to the scaling bounds). Ignored
    /// while the operator's autoscaler is enabled. Default: `scaling.minReplicas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub replicas: Option<i32>,
    /// Backlog-driven scaling bounds.
    #[serde(default)]
    pub scaling: Scaling,
    /// Retries of a failed message before it is dead-lettered with the reason.
    #[serde(default)]
    pub retry: Retry,
    /// Messages a worker pod holds unacknowledged at once (AMQP prefetch). A sink batch
    /// larger than this can only be written when it reaches its age limit. Default: the
    /// largest `batch.maxMessages` of the Worker's sinks, at least 500.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub prefetch: Option<i32>,
    /// Messages processed at the same time in one pod. Default 4.
    #[serde(default = "default_concurrency")]
    #[schemars(range(min = 1))]
    pub concurrency: i32,
    /// Worker runtime image. Default: the operator's configured worker image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

fn default_concurrency() -> i32 {
    worker_config::DEFAULT_CONCURRENCY as i32
}

/// One CEL step. Exactly one field must be set.
///
/// Steps see the message's top-level fields (`id`, `device`, `topic`, `receivedAt`,
/// `payload`, ...) as CEL variables and the whole message as `message`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PipelineStep {
    /// CEL boolean expression; messages for which it is false are acknowledged and dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// Compute one field from a CEL expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<SetStep>,
    /// Remove fields by dotted path (`payload.raw`); missing fields are ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop: Option<Vec<String>>,
}

/// A `set` step.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SetStep {
    /// Dotted path of the field to set (`payload.celsius`); missing objects are created.
    #[schemars(length(min = 1))]
    pub field: String,
    /// CEL expression computing the value.
    #[schemars(length(min = 1))]
    pub expr: String,
}

/// The user's processing container.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CustomContainer {
    /// Container image.
    #[schemars(length(min = 1))]
    pub image: String,
    /// Entrypoint override.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Plain environment variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Port on localhost where the container accepts `POST` of each message. Default 8080.
    #[serde(default = "default_container_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// HTTP path messages are posted to. Default `/`.
    #[serde(default = "default_container_path")]
    pub path: String,
    /// Per-message request timeout in milliseconds. Default 30000.
    #[serde(default = "default_container_timeout")]
    #[schemars(range(min = 1))]
    pub timeout_ms: i64,
    /// CPU and memory of this container. Defaults: requests `cpu: 50m`, `memory: 64Mi`;
    /// limits `cpu: "1"`, `memory: 512Mi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<super::ComputeResources>,
    /// HTTP path on `port` that answers 2xx while the container is healthy: its readiness
    /// and liveness probes `GET` it (the kubelet probes the pod's address, so the container
    /// must listen on it, not only on loopback). Without it, the container has no probes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_path: Option<String>,
}

fn default_container_timeout() -> i64 {
    worker_config::DEFAULT_CONTAINER_TIMEOUT_MS as i64
}

fn default_container_port() -> i32 {
    8080
}

fn default_container_path() -> String {
    "/".to_owned()
}

/// Backlog-driven autoscaling.
///
/// Every `pollIntervalSeconds` the operator reads the queue's ready + unacknowledged count
/// and wants `ceil(backlog / messagesPerReplica)` replicas within the bounds. It scales up
/// at once; it scales down only to the highest replica count wanted during the last
/// `scaleDownDelaySeconds`, removing at most `maxScaleDownPercent` of the replicas per
/// poll. With `minReplicas: 0` the worker stops when the queue has been empty and idle (no
/// publishes) for the delay, and the first message wakes one replica.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Scaling {
    /// Whether the operator scales this worker on its queue's backlog. When false, the
    /// replica count is `spec.replicas` (`kubectl scale`, HPA, KEDA). Default true.
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// Fewest replicas; 0 lets the worker scale to zero on an empty queue. Default 1.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 0))]
    pub min_replicas: i32,
    /// Most replicas. Default 10.
    #[serde(default = "default_max_replicas")]
    #[schemars(range(min = 1))]
    pub max_replicas: i32,
    /// Backlog (ready + unacknowledged) one replica is expected to handle. Default 100.
    #[serde(default = "default_messages_per_replica")]
    #[schemars(range(min = 1))]
    pub messages_per_replica: i64,
    /// Seconds the backlog must stay low before replicas are removed (and, with
    /// `minReplicas: 0`, the queue empty and idle before the worker stops). Default 60.
    #[serde(default = "default_scale_down_delay")]
    #[schemars(range(min = 0))]
    pub scale_down_delay_seconds: i64,
    /// Seconds between two readings of the queue (and of the worker pods' sink status,
    /// which is read for every Worker, autoscaled or not). Default 5.
    #[serde(default = "default_poll_interval")]
    #[schemars(range(min = 1))]
    pub poll_interval_seconds: i64,
    /// Largest share of the replicas removed by one scale-down step (at least one
    /// replica). Default 50.
    #[serde(default = "default_max_scale_down_percent")]
    #[schemars(range(min = 1, max = 100))]
    pub max_scale_down_percent: i32,
}

fn default_enabled() -> bool {
    true
}
fn default_min_replicas() -> i32 {
    1
}
fn default_max_replicas() -> i32 {
    10
}
fn default_messages_per_replica() -> i64 {
    100
}
fn default_scale_down_delay() -> i64 {
    60
}
fn default_poll_interval() -> i64 {
    5
}
fn default_max_scale_down_percent() -> i32 {
    50
}

impl Default for Scaling {
    fn default() -> Self {
        Scaling {
            enabled: default_enabled(),
            min_replicas: default_min_replicas(),
            max_replicas: default_max_replicas(),
            messages_per_replica: default_messages_per_replica(),
            scale_down_delay_seconds: default_scale_down_delay(),
            poll_interval_seconds: default_poll_interval(),
            max_scale_down_percent: default_max_scale_down_percent(),
        }
    }
}

/// Retry policy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Retry {
    /// Attempts per message (the first included) before it is dead-lettered. Default 10.
    #[serde(default = "default_max_attempts")]
    #[schemars(range(min = 1))]
    pub max_attempts: i32,
    /// First backoff in milliseconds; doubles per attempt. Default 200.
    #[serde(default = "default_initial_backoff")]
    #[schemars(range(min = 1))]
    pub initial_backoff_ms: i64,
    /// Backoff ceiling in milliseconds. Default 30000.
    #[serde(default = "default_max_backoff")]
    #[schemars(range(min = 1))]
    pub max_backoff_ms: i64,
}

// The worker's own retry defaults (tributary-contract), in the CRD's integer types.
fn default_max_attempts() -> i32 {
    worker_config::DEFAULT_MAX_ATTEMPTS as i32
}
fn default_initial_backoff() -> i64 {
    worker_config::DEFAULT_INITIAL_BACKOFF_MS as i64
}
fn default_max_backoff() -> i64 {
    worker_config::DEFAULT_MAX_BACKOFF_MS as i64
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            max_attempts: default_max_attempts(),
            initial_backoff_ms: default_initial_backoff(),
            max_backoff_ms: default_max_backoff(),
        }
    }
}

/// Observed state of a Worker.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerStatus {
    /// Conditions: `Ready` tells whether the worker is consuming; `SinksAvailable` whether
    /// its pods can write to every sink (and reach the custom container). While a pod
    /// reports one unavailable, it holds its messages unacknowledged, takes no new
    /// deliveries, and the autoscaler adds no replicas for the backlog.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` last reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Current replicas of the worker Deployment (the `/scale` status).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Ready replicas of the worker Deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Label selector of the worker pods (the `/scale` selector).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// The autoscaler's view (written by the autoscaler only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling: Option<ScalingStatus>,
}

/// What the autoscaler last saw and decided.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingStatus {
    /// Ready + unacknowledged messages of the queue at the last reading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backlog: Option<i64>,
    /// Consumers of the queue at the last reading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumers: Option<i64>,
    /// Replicas the autoscaler wants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<i32>,
    /// When the autoscaler last changed the replica count (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<String>,
    /// Why the replica count last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_reason: Option<String>,
    /// Why the last reading failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why the replicas stay below what the backlog asks for, while they do: a sink the
    /// worker pods report unavailable (more replicas cannot drain that backlog).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<String>,
}
