//! The worker config file the operator renders (and users write for standalone runs).
//!
//! One file describes one worker: the queue it consumes, how it processes each envelope
//! (a declarative pipeline of CEL steps, or a custom container on localhost), and the sinks
//! every processed message is written to. Secrets (AMQP URI, database URLs, keys) are never
//! inline: the file names the paths of the mounted Secret files instead.
//!
//! Field names are camelCase, unknown fields are rejected, and every optional setting has a
//! documented default, so a rendered file is self-describing.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The whole worker config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkerConfig {
    /// The queue this worker consumes.
    pub queue: QueueConfig,
    /// Where messages go that are themselves bad: an envelope that does not parse, a step that
    /// fails, a row the database refuses, a message the custom container fails every time.
    /// An unavailable sink or container is never a reason: it is waited for. When absent,
    /// such messages are rejected without requeue, so the broker's own dead-letter policy
    /// applies; with none, **poison messages are discarded** (the reason is only logged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<DeadLetterConfig>,
    /// Backoff for failures: sink and container outages are retried with it for as long as
    /// they last; `maxAttempts` limits only the per-message failures.
    #[serde(default)]
    pub retry: RetryConfig,
    /// How each envelope is processed before it reaches the sinks. When absent, the envelope
    /// goes to the sinks unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processing: Option<ProcessingConfig>,
    /// Where processed messages are written. A message is acknowledged only after every sink
    /// confirmed it. At least one sink is required.
    pub sinks: Vec<SinkConfig>,
    /// The HTTP server for metrics and health endpoints.
    #[serde(default)]
    pub http: HttpConfig,
    /// Seconds to stop consuming, flush batches and acknowledge on SIGTERM before exiting
    /// anyway (unacknowledged messages then return to the queue). Default 25, below
    /// Kubernetes' default termination grace period of 30 s.
    #[serde(default = "default_shutdown_grace_seconds")]
    pub shutdown_grace_seconds: u64,
}

/// The queue to consume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QueueConfig {
    /// File holding the broker's `amqp://` or `amqps://` URI (a mounted Secret key).
    pub uri_file: PathBuf,
    /// A PEM file of the CA(s) an `amqps://` broker's certificate may chain to, for a broker
    /// with a private CA; read at each (re)connect. Host names are verified either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// The queue name.
    pub name: String,
    /// Maximum number of unacknowledged messages the broker sends this worker (AMQP
    /// prefetch). It bounds memory and must cover the largest sink batch. Default 500.
    #[serde(default = "default_prefetch")]
    pub prefetch: u16,
    /// Messages processed (pipeline or custom container) at the same time in this pod.
    /// Default 4.
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    /// Declare the queue (durable, no arguments) and, when `deadLetter` uses the default
    /// exchange, the dead-letter queue, before consuming. For standalone runs only: under the
    /// operator, the Queue resource owns the topology. Default false.
    #[serde(default)]
    pub declare: bool,
    /// Deliveries after which a message that keeps coming back unsettled (its worker crashed
    /// or was stopped while holding it) is dead-lettered. The worker counts them itself in
    /// the `x-tributary-deliveries` header: set it for classic queues, which keep no count.
    /// Quorum queues count on the broker (`x-delivery-limit`); leave it absent for them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_limit: Option<u32>,
}

/// Where unprocessable messages are published, carrying the reason in headers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeadLetterConfig {
    /// The exchange to publish to; empty (the default) is the default exchange, where the
    /// routing key is the queue name.
    #[serde(default)]
    pub exchange: String,
    /// The routing key (with the default exchange: the dead-letter queue's name).
    pub routing_key: String,
}

/// Retries with exponential backoff for transient failures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts in total (the first try included) at a message that fails on its own (the
    /// custom container answers 5xx or drops the connection for it) before it is
    /// dead-lettered; 0 retries without limit. Outages (a sink or the container unreachable)
    /// are retried without limit whatever this says. Default 10.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Delay before the first retry, in milliseconds; doubled after every failure. Default 200.
    #[serde(default = "default_initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    /// Upper bound of the delay between retries, in milliseconds. Default 30000.
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: default_max_attempts(),
            initial_backoff_ms: default_initial_backoff_ms(),
            max_backoff_ms: default_max_backoff_ms(),
        }
    }
}

/// How envelopes are processed: exactly one of the two modes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum ProcessingConfig {
    /// A declarative pipeline of CEL steps evaluated on the message.
    Pipeline(PipelineConfig),
    /// A user container that receives each envelope over HTTP on localhost.
    Container(ContainerConfig),
}

/// A declarative pipeline.
///
/// Steps see the message as CEL variables: every top-level field of the message
/// (`id`, `tenant`, `gateway`, `device`, `topic`, `protocol`, `receivedAt`, `contentType`,
/// `payload`, `payloadEncoding`, and any field an earlier `set` step added), and the whole
/// message as `message`. `payload` is the device's JSON value (or the base64 text of a
/// binary payload, with `payloadEncoding` `"base64"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PipelineConfig {
    /// The steps, applied in order.
    pub steps: Vec<PipelineStep>,
}

/// One pipeline step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum PipelineStep {
    /// A CEL expression that must evaluate to a bool: messages for which it is false are
    /// acknowledged and dropped (counted in `tributary_worker_pipeline_dropped_total`).
    Filter(String),
    /// Compute a field from a CEL expression.
    Set(SetStep),
    /// Remove fields, by dotted path (`payload.raw`). Missing fields are ignored.
    Drop(Vec<String>),
}

/// A `set` step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SetStep {
    /// Dotted path of the field to set (`payload.celsius`, `site`); intermediate objects are
    /// created as needed.
    pub field: String,
    /// The CEL expression computing the value.
    pub expr: String,
}

/// A custom container: each envelope is POSTed as JSON to `url`. A 2xx response
/// acknowledges it (a non-empty JSON body replaces the message for the sinks), a 5xx or a
/// connection failure is retried with backoff, a 4xx dead-letters it with the response as
/// the reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerConfig {
    /// The container's endpoint, on localhost (the container shares the pod's network).
    pub url: String,
    /// Per-request timeout in milliseconds. Default 30000.
    #[serde(default = "default_container_timeout_ms")]
    pub timeout_ms: u64,
}

/// Batching of a sink's writes: a batch is written when it holds `maxMessages` messages or
/// `maxBytes` bytes, or when its oldest message waited `maxAgeMs`, whichever comes first.
/// Each sink kind has its own default; when given, all three fields are required.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BatchConfig {
    /// Maximum messages per batch.
    pub max_messages: usize,
    /// Maximum bytes (of the sink's encoded records) per batch.
    pub max_bytes: usize,
    /// Maximum wait of the oldest message in a batch, in milliseconds.
    pub max_age_ms: u64,
}

/// One sink. Every sink has a `name`, unique in the file, used in metrics and logs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum SinkConfig {
    /// Rows in a PostgreSQL table.
    Postgres(PostgresSinkConfig),
    /// The latest value per key in Redis.
    Redis(RedisSinkConfig),
    /// JSON Lines objects in S3-compatible object storage.
    S3(S3SinkConfig),
    /// An HTTP POST per message, signed with HMAC-SHA256.
    Webhook(WebhookSinkConfig),
    /// Republish to another queue (or exchange).
    Republish(RepublishSinkConfig),
    /// A command to a device (through its tenant's command exchange) for each message
    /// that meets a condition.
    Command(CommandSinkConfig),
    /// A live copy of each processed message for the application API's streams; never
    /// waited for.
    Live(LiveSinkConfig),
}

impl SinkConfig {
    /// The sink's name.
    pub fn name(&self) -> &str {
        match self {
            SinkConfig::Postgres(c) => &c.name,
            SinkConfig::Redis(c) => &c.name,
            SinkConfig::S3(c) => &c.name,
            SinkConfig::Webhook(c) => &c.name,
            SinkConfig::Republish(c) => &c.name,
            SinkConfig::Command(c) => &c.name,
            SinkConfig::Live(c) => &c.name,
        }
    }

    /// The sink's batching policy.
    pub fn batch(&self) -> &BatchConfig {
        match self {
            SinkConfig::Postgres(c) => &c.batch,
            SinkConfig::Redis(c) => &c.batch,
            SinkConfig::S3(c) => &c.batch,
            SinkConfig::Webhook(c) => &c.batch,
            SinkConfig::Republish(c) => &c.batch,
            SinkConfig::Command(c) => &c.batch,
            SinkConfig::Live(c) => &c.batch,
        }
    }
}

/// PostgreSQL sink: one row per message, idempotent on the message id (duplicates skipped).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PostgresSinkConfig {
    /// The sink's name.
    pub name: String,
    /// File holding a `postgres://user:password@host:port/db` URL (a mounted Secret key).
    /// Its `sslmode` parameter takes libpq's values: `disable`, `prefer` (the default: TLS
    /// when offered, unverified), `require` (TLS, unverified), `verify-ca` (TLS, the chain
    /// checked) and `verify-full` (TLS, the chain and the host name checked).
    pub url_file: PathBuf,
    /// File holding the PEM CA bundle that `verify-ca`/`verify-full` trust instead of the
    /// system roots. Default: the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Target table, optionally schema-qualified (`telemetry.readings`).
    pub table: String,
    /// The column receiving the message id; it must be the primary key or carry a unique
    /// constraint. Default `id`.
    #[serde(default = "default_id_column")]
    pub id_column: String,
    /// The other columns, each computed by a CEL expression over the processed message.
    pub columns: Vec<ColumnMapping>,
    /// Create the table (id column as text primary key, the columns with their `type`) if it
    /// does not exist. Default false.
    #[serde(default)]
    pub create_table: bool,
    /// Batching. Default 1000 messages, 4 MiB, 200 ms.
    #[serde(default = "default_postgres_batch")]
    pub batch: BatchConfig,
}

/// One column of a PostgreSQL sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ColumnMapping {
    /// Column name.
    pub name: String,
    /// CEL expression for the value: strings and numbers are written as text for
    /// PostgreSQL to parse into the column type, maps and lists as JSON, null as NULL.
    pub expr: String,
    /// SQL type, used only by `createTable` (for example `text`, `double precision`,
    /// `timestamptz`, `jsonb`). Default `text`.
    #[serde(default = "default_column_type")]
    pub r#type: String,
}

/// Redis sink: the latest message per key, written only when newer (by message id) than
/// the stored one, so redeliveries and reordering never move a value back in time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedisSinkConfig {
    /// The sink's name.
    pub name: String,
    /// File holding a `redis://[:password@]host:port[/db]` URL, or `rediss://` for TLS
    /// with the chain and host name verified (a mounted Secret key).
    pub url_file: PathBuf,
    /// File holding the PEM CA bundle a `rediss://` connection trusts instead of the system
    /// roots. Default: the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Key template: `{path}` is replaced by the message field at that dotted path
    /// (`latest:{device}`, `site:{payload.site}:{device}`).
    pub key_template: String,
    /// Optional CEL expression for the stored value (JSON-encoded); default the whole
    /// processed message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Expiry of each key in seconds; 0 (the default) keeps keys forever.
    #[serde(default)]
    pub ttl_seconds: u64,
    /// Batching. Default 500 messages, 4 MiB, 50 ms.
    #[serde(default = "default_redis_batch")]
    pub batch: BatchConfig,
}

/// S3-compatible object storage sink: each batch becomes one JSON Lines object with key
/// `{prefix}YYYY/MM/DD/HH/{time}-{batch id}.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct S3SinkConfig {
    /// The sink's name.
    pub name: String,
    /// The service endpoint, e.g. `https://s3.example.net` or `http://127.0.0.1:9100`.
    pub endpoint: String,
    /// Signing region. Default `us-east-1`.
    #[serde(default = "default_region")]
    pub region: String,
    /// The bucket.
    pub bucket: String,
    /// Key prefix (include a trailing `/` for a folder). Default empty.
    #[serde(default)]
    pub prefix: String,
    /// File holding the access key id.
    pub access_key_id_file: PathBuf,
    /// File holding the secret access key.
    pub secret_access_key_file: PathBuf,
    /// Create the bucket at start if it does not exist. Default false.
    #[serde(default)]
    pub create_bucket: bool,
    /// Batching (one object per batch). Default 10000 messages, 8 MiB, 60 s.
    #[serde(default = "default_s3_batch")]
    pub batch: BatchConfig,
}

/// HTTP webhook sink: one POST per message, body the processed message as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookSinkConfig {
    /// The sink's name.
    pub name: String,
    /// The URL to POST to.
    pub url: String,
    /// File holding the HMAC key. The header carries `sha256=<hex HMAC-SHA256 of the body>`.
    pub secret_file: PathBuf,
    /// Header name of the signature. Default `X-Tributary-Signature`.
    #[serde(default = "default_signature_header")]
    pub signature_header: String,
    /// Per-request timeout in milliseconds. Default 10000.
    #[serde(default = "default_webhook_timeout_ms")]
    pub timeout_ms: u64,
    /// Batching (the POSTs of a batch run concurrently). Default 50 messages, 1 MiB, 50 ms.
    #[serde(default = "default_webhook_batch")]
    pub batch: BatchConfig,
}

/// Republish sink: the processed message as JSON, persistent, with the envelope id as the
/// AMQP message id, confirmed by the broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RepublishSinkConfig {
    /// The sink's name.
    pub name: String,
    /// File holding the target broker's URI; default the consumed queue's broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri_file: Option<PathBuf>,
    /// A PEM file of the CA(s) the target broker's certificate may chain to (with
    /// `uriFile`); without `uriFile`, the consumed queue's `caFile` applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// The exchange; empty (the default) is the default exchange.
    #[serde(default)]
    pub exchange: String,
    /// The routing key (with the default exchange: the target queue's name).
    pub routing_key: String,
    /// Batching (publishes of a batch are confirmed together). Default 500 messages, 4 MiB,
    /// 20 ms.
    #[serde(default = "default_republish_batch")]
    pub batch: BatchConfig,
}

/// Command sink: for each processed message that meets `when`, one command to a device,
/// published to the tenant's command exchange ([`crate::command::exchange`]) with the
/// device id as routing key, `mandatory`, persistent and confirmed, as
/// [`crate::command`] describes. A device that holds no command queue (offline without a
/// persistent session, or never subscribed) makes the command *undeliverable*, and a full
/// device queue refuses it: both are counted and logged, and the message still counts as
/// written (a device's state is not the pipeline's failure). The command id is derived from
/// the message id and the sink name, so a redelivered message sends the same id again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CommandSinkConfig {
    /// The sink's name; commands carry `worker/<name>` as their sender.
    pub name: String,
    /// The tenant (a namespace name) whose command exchange receives the commands; the
    /// operator renders the Worker's namespace.
    pub tenant: String,
    /// File holding the broker's URI (the broker the tenant's gateways consume commands
    /// from); default the consumed queue's broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri_file: Option<PathBuf>,
    /// A PEM file of the CA(s) that broker's certificate may chain to (with `uriFile`);
    /// without `uriFile`, the consumed queue's `caFile` applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// The command name, as devices see it in their topic (`fan/set`): topic levels of
    /// letters, digits, `-`, `_` and `.` ([`crate::command::valid_command_name`]).
    pub command: String,
    /// CEL expression for the device id the command goes to; default the message's
    /// `device`. A message for which it fails, or gives no valid device id, is
    /// dead-lettered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// CEL condition: a message for which it is false sends no command (and counts as
    /// written). Default: every message sends one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// CEL expression for the command's payload (JSON-encoded); default the whole
    /// processed message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// Seconds a command waits for its device before the broker expires it, 1 to
    /// [`crate::command::MAX_TTL_SECONDS`]. Default
    /// [`crate::command::DEFAULT_TTL_SECONDS`] (an hour).
    #[serde(default = "default_command_ttl_seconds")]
    pub ttl_seconds: u32,
    /// Batching (publishes of a batch are confirmed together). Default 500 messages, 4 MiB,
    /// 20 ms, as a republish sink.
    #[serde(default = "default_republish_batch")]
    pub batch: BatchConfig,
}

/// Live sink: a transient copy of each processed message (JSON, routed by its `device`) to
/// the topic exchange the application API's streams bind to. A write only hands the batch
/// to a bounded buffer that a publisher drains without `mandatory` or confirms: a copy is
/// dropped (counted) when the buffer is full, the broker away or the exchange missing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LiveSinkConfig {
    /// The sink's name.
    pub name: String,
    /// The topic exchange (the operator declares it for an ApplicationApi).
    pub exchange: String,
    /// File holding the broker's URI; default the consumed queue's broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri_file: Option<PathBuf>,
    /// A PEM CA file for that broker (with `uriFile`; else the consumed queue's `caFile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Messages waiting for the publisher at most (and 16 MiB); more are dropped. Default 10000.
    #[serde(default = "default_live_buffer")]
    pub buffer_messages: u32,
    /// Batching (a batch goes to the buffer at once). Default as a republish sink.
    #[serde(default = "default_republish_batch")]
    pub batch: BatchConfig,
}

/// The live sink's default buffer, in messages.
pub const DEFAULT_LIVE_BUFFER: u32 = 10_000;

fn default_live_buffer() -> u32 {
    DEFAULT_LIVE_BUFFER
}

/// The metrics and health HTTP server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpConfig {
    /// Listen address for `/metrics`, `/healthz` and `/readyz`. Default `0.0.0.0:9090`.
    #[serde(default = "default_listen")]
    pub listen: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
        }
    }
}

/// Default of `shutdownGraceSeconds`.
pub const DEFAULT_SHUTDOWN_GRACE_SECONDS: u64 = 25;
/// Default of `queue.prefetch`.
pub const DEFAULT_PREFETCH: u16 = 500;
/// Default of `queue.concurrency`.
pub const DEFAULT_CONCURRENCY: u32 = 4;
/// Default of `retry.maxAttempts`.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 10;
/// Default of `retry.initialBackoffMs`.
pub const DEFAULT_INITIAL_BACKOFF_MS: u64 = 200;
/// Default of `retry.maxBackoffMs`.
pub const DEFAULT_MAX_BACKOFF_MS: u64 = 30_000;
/// Default of `processing.container.timeoutMs`.
pub const DEFAULT_CONTAINER_TIMEOUT_MS: u64 = 30_000;
/// Default of a PostgreSQL sink's `idColumn`.
pub const DEFAULT_ID_COLUMN: &str = "id";
/// Default of a PostgreSQL column's `type`.
pub const DEFAULT_COLUMN_TYPE: &str = "text";
/// Default of an S3 sink's `region`.
pub const DEFAULT_S3_REGION: &str = "us-east-1";
/// Default of a webhook sink's `signatureHeader`.
pub const DEFAULT_SIGNATURE_HEADER: &str = "X-Tributary-Signature";
/// Default of a webhook sink's `timeoutMs`.
pub const DEFAULT_WEBHOOK_TIMEOUT_MS: u64 = 10_000;
/// Default batch of a PostgreSQL sink: 1000 messages, 4 MiB, 200 ms.
pub const DEFAULT_POSTGRES_BATCH: BatchConfig = batch(1000, 4 << 20, 200);
/// Default batch of a Redis sink: 500 messages, 4 MiB, 50 ms.
pub const DEFAULT_REDIS_BATCH: BatchConfig = batch(500, 4 << 20, 50);
/// Default batch of an S3 sink: 10000 messages, 8 MiB, 60 s.
pub const DEFAULT_S3_BATCH: BatchConfig = batch(10_000, 8 << 20, 60_000);
/// Default batch of a webhook sink: 50 messages, 1 MiB, 50 ms.
pub const DEFAULT_WEBHOOK_BATCH: BatchConfig = batch(50, 1 << 20, 50);
/// Default batch of a republish sink: 500 messages, 4 MiB, 20 ms.
pub const DEFAULT_REPUBLISH_BATCH: BatchConfig = batch(500, 4 << 20, 20);

fn default_shutdown_grace_seconds() -> u64 {
    DEFAULT_SHUTDOWN_GRACE_SECONDS
}
fn default_prefetch() -> u16 {
    DEFAULT_PREFETCH
}
fn default_concurrency() -> u32 {
    DEFAULT_CONCURRENCY
}
fn default_max_attempts() -> u32 {
    DEFAULT_MAX_ATTEMPTS
}
fn default_initial_backoff_ms() -> u64 {
    DEFAULT_INITIAL_BACKOFF_MS
}
fn default_max_backoff_ms() -> u64 {
    DEFAULT_MAX_BACKOFF_MS
}
fn default_container_timeout_ms() -> u64 {
    DEFAULT_CONTAINER_TIMEOUT_MS
}
fn default_id_column() -> String {
    DEFAULT_ID_COLUMN.into()
}
fn default_column_type() -> String {
    DEFAULT_COLUMN_TYPE.into()
}
fn default_region() -> String {
    DEFAULT_S3_REGION.into()
}
fn default_signature_header() -> String {
    DEFAULT_SIGNATURE_HEADER.into()
}
fn default_webhook_timeout_ms() -> u64 {
    DEFAULT_WEBHOOK_TIMEOUT_MS
}
fn default_command_ttl_seconds() -> u32 {
    crate::command::DEFAULT_TTL_SECONDS
}
fn default_listen() -> String {
    "0.0.0.0:9090".into()
}
const fn batch(max_messages: usize, max_bytes: usize, max_age_ms: u64) -> BatchConfig {
    BatchConfig {
        max_messages,
        max_bytes,
        max_age_ms,
    }
}
fn default_postgres_batch() -> BatchConfig {
    DEFAULT_POSTGRES_BATCH
}
fn default_redis_batch() -> BatchConfig {
    DEFAULT_REDIS_BATCH
}
fn default_s3_batch() -> BatchConfig {
    DEFAULT_S3_BATCH
}
fn default_webhook_batch() -> BatchConfig {
    DEFAULT_WEBHOOK_BATCH
}
fn default_republish_batch() -> BatchConfig {
    DEFAULT_REPUBLISH_BATCH
}

#[cfg(test)]
mod tests;
