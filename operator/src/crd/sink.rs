//! The `Sink` resource: where processed data goes. Credentials always come from Secrets.

use super::{Condition, SecretKeyRef};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tributary_contract::worker_config;

/// A destination for processed messages. Exactly one of `postgres`, `redis`, `s3`,
/// `webhook` or `queue` must be set.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "tributary.dev",
    version = "v1alpha1",
    kind = "Sink",
    namespaced,
    status = "SinkStatus",
    shortname = "tsk",
    category = "tributary",
    doc = "A destination for processed messages: PostgreSQL, Redis, S3-compatible storage, an HTTP webhook, another Queue, commands to devices or the application API's live feed.",
    printcolumn(name = "Type", type_ = "string", json_path = ".status.sinkType"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct SinkSpec {
    /// Rows in a PostgreSQL table, idempotent on the message id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresSink>,
    /// Latest value per key in Redis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisSink>,
    /// Batched JSON Lines objects in S3-compatible object storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Sink>,
    /// HMAC-signed HTTP POSTs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookSink>,
    /// Republish into another Queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueSink>,
    /// Commands to devices: a processed message sends a command through the namespace's
    /// command exchange on the Worker's broker (docs/commands.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<CommandSink>,
    /// A live copy of each processed message for the namespace's ApplicationApi (its
    /// streams and dashboard chart), through the exchange `tributary.live.<namespace>` on
    /// the Worker's broker. Never slows the pipeline down: copies the API cannot take are
    /// dropped and counted (docs/application-api.md, "Live feed").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<LiveSink>,
}

/// Batching of a sink's writes: a batch is written when it reaches `maxMessages` or
/// `maxBytes`, or when its oldest message waited `maxAgeMs`. Unset: the sink type's default.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Batch {
    /// Most messages per batch.
    #[schemars(range(min = 1))]
    pub max_messages: i64,
    /// Most bytes of encoded records per batch.
    #[schemars(range(min = 1))]
    pub max_bytes: i64,
    /// Longest wait of the oldest message in a batch, in milliseconds.
    #[schemars(range(min = 0))]
    pub max_age_ms: i64,
}

/// PostgreSQL sink: one row per message, idempotent on the message id.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PostgresSink {
    /// Secret key holding a `postgres://user:password@host:port/db` URL. Its `sslmode`
    /// parameter takes libpq's values: `disable`, `prefer` (the default: TLS when offered,
    /// unverified), `require` (TLS, unverified), `verify-ca` (TLS, chain checked),
    /// `verify-full` (TLS, chain and host name checked).
    pub url_secret_ref: SecretKeyRef,
    /// Secret key holding the PEM CA bundle `verify-ca`/`verify-full` trust instead of the
    /// system roots (mounted read-only into the worker pod).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// Target table, optionally schema-qualified.
    #[schemars(length(min = 1))]
    pub table: String,
    /// Column receiving the message id (primary key or unique). Default `id`.
    #[serde(default = "default_id_column")]
    pub id_column: String,
    /// The other columns (at least one), each computed by a CEL expression over the
    /// processed message.
    // Neither required nor `minItems` in the schema (its default `[]` must validate, and
    // Sinks stored before this rule must still deserialize): the operator reports an empty
    // list as an invalid spec.
    #[serde(default)]
    pub columns: Vec<Column>,
    /// Create the table when it does not exist. Default false.
    #[serde(default)]
    pub create_table: bool,
    /// Write batching. Default 1000 messages, 4 MiB, 200 ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<Batch>,
}

fn default_id_column() -> String {
    worker_config::DEFAULT_ID_COLUMN.to_owned()
}

/// One PostgreSQL column.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Column {
    /// Column name.
    #[schemars(length(min = 1))]
    pub name: String,
    /// CEL expression for the value, e.g. `payload.temp` or `receivedAt`.
    #[schemars(length(min = 1))]
    pub expr: String,
    /// SQL type, used only by `createTable`. Default `text`.
    #[serde(default = "default_column_type", rename = "type")]
    pub type_: String,
}

fn default_column_type() -> String {
    worker_config::DEFAULT_COLUMN_TYPE.to_owned()
}

/// Redis sink: the latest message per key, never moved back in time by redeliveries.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedisSink {
    /// Secret key holding a `redis://[:password@]host:port[/db]` URL, or `rediss://` for TLS
    /// with the chain and host name checked.
    pub url_secret_ref: SecretKeyRef,
    /// Secret key holding the PEM CA bundle a `rediss://` connection trusts instead of the
    /// system roots (mounted read-only into the worker pod).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// Key template; `{path}` is replaced by the message field at that dotted path.
    /// Default `latest:{device}`.
    #[serde(default = "default_redis_key")]
    pub key_template: String,
    /// CEL expression for the stored value. Default: the whole processed message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Expiry of each key in seconds; unset keeps keys forever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub ttl_seconds: Option<i64>,
    /// Write batching. Default 500 messages, 4 MiB, 50 ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<Batch>,
}

fn default_redis_key() -> String {
    "latest:{device}".to_owned()
}

/// S3-compatible object storage sink: each batch becomes one JSON Lines object.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Sink {
    /// Endpoint URL, e.g. `http://minio.storage:9000`.
    #[schemars(length(min = 1))]
    pub endpoint: String,
    /// Signing region. Default `us-east-1`.
    #[serde(default = "default_region")]
    pub region: String,
    /// Bucket name.
    #[schemars(length(min = 1))]
    pub bucket: String,
    /// Object key prefix (end it with `/` for a folder). Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Secret with the keys `accessKeyId` and `secretAccessKey`.
    #[schemars(length(min = 1))]
    pub credentials_secret: String,
    /// Create the bucket at start when it does not exist. Default false.
    #[serde(default)]
    pub create_bucket: bool,
    /// Batching, one object per batch. Default 10000 messages, 8 MiB, 60 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<Batch>,
}

fn default_region() -> String {
    worker_config::DEFAULT_S3_REGION.to_owned()
}

/// HTTP webhook sink: one POST per message, signed with HMAC-SHA256.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSink {
    /// URL messages are POSTed to (http or https). Loopback, link-local and unspecified
    /// addresses and the Kubernetes API server are refused unless the operator runs with
    /// `--allow-internal-webhooks` (chart value `allowInternalWebhooks`).
    #[schemars(length(min = 1))]
    pub url: String,
    /// Secret key holding the HMAC key; the signature header carries
    /// `sha256=<hex HMAC-SHA256 of the body>`.
    pub hmac_secret_ref: SecretKeyRef,
    /// Signature header name. Default `X-Tributary-Signature`.
    #[serde(default = "default_signature_header")]
    pub signature_header: String,
    /// Per-request timeout in milliseconds. Default 10000.
    #[serde(default = "default_webhook_timeout")]
    #[schemars(range(min = 1))]
    pub timeout_ms: i64,
    /// Batching (the POSTs of a batch run concurrently). Default 50 messages, 1 MiB, 50 ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<Batch>,
}

fn default_signature_header() -> String {
    worker_config::DEFAULT_SIGNATURE_HEADER.to_owned()
}

fn default_webhook_timeout() -> i64 {
    worker_config::DEFAULT_WEBHOOK_TIMEOUT_MS as i64
}

/// Republish into another Queue.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueSink {
    /// Name of a Queue in the same namespace.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Batching (publishes of a batch are confirmed together). Default 500 messages,
    /// 4 MiB, 20 ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<Batch>,
}

/// A command to a device for each processed message for which `when` holds, for example
/// `fan/set` with `{"speed": 100}` when `payload.temperature > 80`. A device that is offline
/// without a persistent session, or whose command queue is full, is counted and logged; the
/// message is still acknowledged (a device being away is not the pipeline's failure).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommandSink {
    /// The command name: topic levels of letters, digits, `-`, `_` and `.` (`fan/set`).
    #[schemars(length(min = 1, max = 128))]
    pub command: String,
    /// CEL expression for the device id. Default: the message's `device`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// CEL condition; a message for which it is false sends nothing. Default: every message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// CEL expression for the payload, sent as JSON. Default: the whole processed message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// Seconds the command waits for the device (queued for a persistent session) before
    /// it expires. Default 3600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 604800))]
    pub ttl_seconds: Option<i64>,
    /// Batching (publishes of a batch are confirmed together). Default: the worker's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<Batch>,
}

/// A live copy of each processed message: transient, routed by device, handed to a bounded
/// buffer that a publisher drains without waiting for confirms. A full buffer, a broker
/// that is away or an exchange no ApplicationApi declared yet drops the copy (counted in
/// `tributary_worker_live_total`); the message itself is acknowledged as usual.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LiveSink {
    /// Copies waiting for the publisher at most, per worker pod (and at most 16 MiB of
    /// them); more are dropped. Default 10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub buffer_messages: Option<i32>,
    /// Batching (a batch is handed to the buffer at once). Default 500 messages, 4 MiB,
    /// 20 ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<Batch>,
}

/// Observed state of a Sink.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SinkStatus {
    /// Conditions: `Ready` tells whether the sink's spec and Secrets are valid.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` last reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `postgres`, `redis`, `s3`, `webhook`, `queue`, `command` or `live`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink_type: Option<String>,
}
