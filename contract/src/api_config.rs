//! The application API config file (`tributary-api`), written by hand for standalone runs and,
//! later, rendered by the operator.
//!
//! The API reads what a Worker's sinks stored: rows of a PostgreSQL Sink's table, the latest
//! values of a Redis Sink, and live processed messages republished to an exchange. Secrets
//! are never inline: URLs are files (mounted Secrets), and API keys appear only as SHA-256
//! hashes.
//!
//! ```yaml
//! listen: 0.0.0.0:8080
//! postgres:
//!   urlFile: /etc/tributary/secrets/postgres-url
//!   table: readings
//!   deviceColumn: device
//!   timeColumn: received_at
//! redis:
//!   urlFile: /etc/tributary/secrets/redis-url
//!   keyTemplate: "latest:{device}"
//! live:
//!   uriFile: /etc/tributary/secrets/amqp-uri
//!   exchange: tributary.live
//! tenant: factory
//! commands:
//!   uriFile: /etc/tributary/secrets/amqp-uri
//! apiKeys:
//!   - name: dashboard
//!     sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
//!     scope: all
//!     commands: true
//!   - name: site-a
//!     sha256: 60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752
//!     scope: {devicePrefix: "site-a-"}
//! ```

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The whole API config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiConfig {
    /// Address of the HTTP server (API, `/openapi.json`, `/healthz`, `/readyz`, `/metrics`).
    /// Default `0.0.0.0:8080`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// The PostgreSQL Sink's table: devices, history and buckets.
    pub postgres: PostgresSource,
    /// The Redis Sink holding the latest value per device. When absent, the latest value is
    /// the newest row of the table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisSource>,
    /// Live processed messages for `/v1/stream` and `/v1/ws`. When absent, those endpoints
    /// answer 503.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<LiveSource>,
    /// The tenant (the namespace of the Gateways whose devices the API serves): it names
    /// the command exchange (`tributary.commands.{tenant}`). Default `default`, as the
    /// gateway's.
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// Commands to devices (`POST /v1/devices/{id}/commands/{name}`) through the broker
    /// the gateways consume them from. When absent, that endpoint answers 503.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commands: Option<CommandsTarget>,
    /// The application keys. A request without a known key gets 401.
    #[serde(default)]
    pub api_keys: Vec<ApiKey>,
    /// Requests per key (token bucket); beyond it a key gets 429.
    #[serde(default)]
    pub rate_limit: RateLimit,
    /// Browser origins allowed to call the API (CORS). `*` allows any origin. Default none.
    #[serde(default)]
    pub cors_allowed_origins: Vec<String>,
    /// Limits on requests and answers.
    #[serde(default)]
    pub limits: ApiLimits,
    /// Seconds to finish requests in flight on SIGTERM (live streams are closed at once).
    /// Default 10.
    #[serde(default = "default_shutdown_grace_seconds")]
    pub shutdown_grace_seconds: u64,
    /// The registered devices (`tributary_contract::device_roster`, a file the operator
    /// renders from the Device resources), listed by `/v1/devices` with the devices the
    /// table holds. Read again when it changes; a missing file is an empty roster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_roster_file: Option<PathBuf>,
}

/// The table a PostgreSQL Sink writes: one row per message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PostgresSource {
    /// File holding a `postgres://user:password@host:port/db` URL (a mounted Secret key).
    pub url_file: PathBuf,
    /// The table, optionally schema-qualified (`telemetry.readings`).
    pub table: String,
    /// The column holding the message id (the sink's `idColumn`). Default `id`.
    #[serde(default = "default_id_column")]
    pub id_column: String,
    /// The column holding the device id. Default `device`.
    #[serde(default = "default_device_column")]
    pub device_column: String,
    /// The column holding the message time, `timestamptz` (a `text` column of RFC 3339
    /// times also works, without index use). Default `received_at`.
    #[serde(default = "default_time_column")]
    pub time_column: String,
    /// Connections to the database. Default 4.
    #[serde(default = "default_connections")]
    pub connections: usize,
    /// Longest a query may run before the database cancels it, in milliseconds. Default 5000.
    #[serde(default = "default_statement_timeout_ms")]
    pub statement_timeout_ms: u64,
}

/// The Redis Sink holding the latest value per device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedisSource {
    /// File holding a `redis://[:password@]host:port[/db]` URL (a mounted Secret key).
    pub url_file: PathBuf,
    /// The sink's key template; `{device}` is its only placeholder the API can fill.
    /// Default `latest:{device}`.
    #[serde(default = "default_key_template")]
    pub key_template: String,
}

/// Live processed messages: the API's own queue bound to an exchange.
///
/// The queue is exclusive, auto-deleted, and bounded (`x-max-length`, `x-overflow:
/// drop-head`), so a slow or stopped API never backs up the pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LiveSource {
    /// File holding the broker's `amqp://` or `amqps://` URI (a mounted Secret key).
    pub uri_file: PathBuf,
    /// The exchange the processed messages are published to (a Worker's republish sink).
    pub exchange: String,
    /// The binding key. Default `#` (everything, on a topic exchange).
    #[serde(default = "default_binding_key")]
    pub routing_key: String,
    /// Declare the exchange (durable, of `exchangeType`) before binding. For standalone runs;
    /// default false.
    #[serde(default)]
    pub declare_exchange: bool,
    /// The exchange type used by `declareExchange`. Default `topic`.
    #[serde(default = "default_exchange_type")]
    pub exchange_type: String,
    /// Most messages the API's queue holds; older ones are dropped first. Default 10000.
    #[serde(default = "default_queue_max_length")]
    pub queue_max_length: u32,
    /// Messages buffered per live client; a client that falls further behind loses
    /// messages (counted), never slowing the others. Default 256.
    #[serde(default = "default_client_buffer")]
    pub client_buffer: usize,
    /// Most live clients at once; more get 503. Default 1000.
    #[serde(default = "default_max_clients")]
    pub max_clients: usize,
    /// Longest wait between reconnect attempts, in milliseconds. Default 5000.
    #[serde(default = "default_reconnect_max_delay_ms")]
    pub reconnect_max_delay_ms: u64,
    /// The pipeline's queue on the same broker: its depth is the backlog `/v1/backlog`
    /// reports (a passive declare, which creates nothing). When absent, that endpoint
    /// answers 503.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backlog_queue: Option<String>,
}

/// The broker commands are published to, and the bounds of waiting for answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CommandsTarget {
    /// File holding the broker's `amqp://` or `amqps://` URI (a mounted Secret key): the
    /// broker the gateways declare the device command queues on.
    pub uri_file: PathBuf,
    /// PEM file of a private CA the broker's certificate may chain to (`amqps://`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Longest `waitSeconds` a request may give (waiting for the device's answer).
    /// Default 60.
    #[serde(default = "default_max_wait_seconds")]
    pub max_wait_seconds: u32,
    /// Most requests waiting for an answer at once; further waiting requests get 503
    /// (commands that do not wait are still sent). Default 1000.
    #[serde(default = "default_max_waiting")]
    pub max_waiting: usize,
    /// Longest wait between reconnect attempts, in milliseconds. Default 5000.
    #[serde(default = "default_reconnect_max_delay_ms")]
    pub reconnect_max_delay_ms: u64,
}

/// An application key: only the SHA-256 of the key is configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiKey {
    /// A name for logs and metrics (never the key).
    pub name: String,
    /// Lowercase hex SHA-256 of the key (`printf %s "$KEY" | sha256sum`).
    pub sha256: String,
    /// The devices the key may read (and, with `commands`, send commands to).
    pub scope: KeyScope,
    /// Whether the key may send commands to the devices of its scope. Default false: keys
    /// only read.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub commands: bool,
    /// This key's own rate limit instead of `rateLimit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

/// The devices a key may read: everything, a list, or the ids with a prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum KeyScope {
    /// Every device.
    All,
    /// Exactly these device ids.
    Devices(Vec<String>),
    /// Device ids starting with this text.
    DevicePrefix(String),
}

/// A token bucket: a sustained rate and a burst above it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimit {
    /// Sustained requests per second. Default 20.
    #[serde(default = "default_requests_per_second")]
    pub requests_per_second: f64,
    /// Requests allowed at once above the sustained rate. Default 40.
    #[serde(default = "default_burst")]
    pub burst: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            requests_per_second: default_requests_per_second(),
            burst: default_burst(),
        }
    }
}

/// Limits on requests and answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiLimits {
    /// Largest request body in bytes: a command's payload; other endpoints read none, and
    /// oversized uploads get 413. Default 16384.
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    /// Longest a request may take, in milliseconds (live streams excepted; a command may
    /// also wait `waitSeconds` for its device's answer). It also bounds the wait for the
    /// broker's confirm of a command. Default 15000.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Rows per history page when `limit` is absent. Default 100.
    #[serde(default = "default_page_size")]
    pub default_page_size: u32,
    /// Largest `limit` accepted. Default 1000.
    #[serde(default = "default_max_page_size")]
    pub max_page_size: u32,
    /// Most buckets one query may return. Default 10000.
    #[serde(default = "default_max_buckets")]
    pub max_buckets: u64,
    /// Most device ids in one `devices=` list. Default 100.
    #[serde(default = "default_max_devices_per_query")]
    pub max_devices_per_query: usize,
    /// Most connections open at once (live streams included); further ones are closed as
    /// soon as they are accepted. Default 1024.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Seconds a connection has to send a complete request head; also how long a kept-alive
    /// connection may stay idle. Default 10.
    #[serde(default = "default_header_timeout_seconds")]
    pub header_timeout_seconds: u64,
}

impl Default for ApiLimits {
    fn default() -> Self {
        Self {
            max_request_bytes: default_max_request_bytes(),
            request_timeout_ms: default_request_timeout_ms(),
            default_page_size: default_page_size(),
            max_page_size: default_max_page_size(),
            max_buckets: default_max_buckets(),
            max_devices_per_query: default_max_devices_per_query(),
            max_connections: default_max_connections(),
            header_timeout_seconds: default_header_timeout_seconds(),
        }
    }
}

fn default_max_connections() -> usize {
    1024
}
fn default_header_timeout_seconds() -> u64 {
    10
}
fn default_tenant() -> String {
    "default".into()
}
fn default_max_wait_seconds() -> u32 {
    60
}
fn default_max_waiting() -> usize {
    1_000
}
fn default_listen() -> String {
    "0.0.0.0:8080".into()
}
fn default_shutdown_grace_seconds() -> u64 {
    10
}
fn default_id_column() -> String {
    "id".into()
}
fn default_device_column() -> String {
    "device".into()
}
fn default_time_column() -> String {
    "received_at".into()
}
fn default_connections() -> usize {
    4
}
fn default_statement_timeout_ms() -> u64 {
    5_000
}
fn default_key_template() -> String {
    "latest:{device}".into()
}
fn default_binding_key() -> String {
    "#".into()
}
fn default_exchange_type() -> String {
    "topic".into()
}
fn default_queue_max_length() -> u32 {
    10_000
}
fn default_client_buffer() -> usize {
    256
}
fn default_max_clients() -> usize {
    1_000
}
fn default_reconnect_max_delay_ms() -> u64 {
    5_000
}
fn default_requests_per_second() -> f64 {
    20.0
}
fn default_burst() -> u32 {
    40
}
fn default_max_request_bytes() -> usize {
    16 * 1024
}
fn default_request_timeout_ms() -> u64 {
    15_000
}
fn default_page_size() -> u32 {
    100
}
fn default_max_page_size() -> u32 {
    1_000
}
fn default_max_buckets() -> u64 {
    10_000
}
fn default_max_devices_per_query() -> usize {
    100
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let config: ApiConfig = serde_json::from_value(serde_json::json!({
            "postgres": {"urlFile": "/s/pg", "table": "readings"}
        }))
        .expect("parse");
        assert_eq!(config.listen, "0.0.0.0:8080");
        assert_eq!(config.postgres.id_column, "id");
        assert_eq!(config.postgres.device_column, "device");
        assert_eq!(config.postgres.time_column, "received_at");
        assert_eq!(config.rate_limit, RateLimit::default());
        assert_eq!(config.limits, ApiLimits::default());
        assert!(config.api_keys.is_empty() && config.redis.is_none() && config.live.is_none());
        assert_eq!(config.tenant, "default");
        assert!(config.commands.is_none());
    }

    #[test]
    fn key_scopes_parse_in_their_three_forms() {
        let keys: Vec<ApiKey> = serde_json::from_value(serde_json::json!([
            {"name": "a", "sha256": "00", "scope": "all"},
            {"name": "b", "sha256": "00", "scope": {"devices": ["x", "y"]}},
            {"name": "c", "sha256": "00", "scope": {"devicePrefix": "site-a-"}}
        ]))
        .expect("parse");
        assert_eq!(keys[0].scope, KeyScope::All);
        assert_eq!(
            keys[1].scope,
            KeyScope::Devices(vec!["x".into(), "y".into()])
        );
        assert_eq!(keys[2].scope, KeyScope::DevicePrefix("site-a-".into()));
        assert!(
            keys.iter().all(|k| !k.commands),
            "keys only read by default"
        );
    }

    #[test]
    fn commands_section_gets_documented_defaults_and_keys_opt_in() {
        let config: ApiConfig = serde_json::from_value(serde_json::json!({
            "postgres": {"urlFile": "/s/pg", "table": "readings"},
            "tenant": "factory",
            "commands": {"uriFile": "/s/amqp"},
            "apiKeys": [{"name": "ops", "sha256": "00", "scope": "all", "commands": true}]
        }))
        .expect("parse");
        let commands = config.commands.expect("commands");
        assert_eq!(commands.max_wait_seconds, 60);
        assert_eq!(commands.max_waiting, 1_000);
        assert_eq!(commands.reconnect_max_delay_ms, 5_000);
        assert!(commands.ca_file.is_none());
        assert!(config.api_keys[0].commands);
        assert_eq!(config.tenant, "factory");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let result: Result<ApiConfig, _> = serde_json::from_value(serde_json::json!({
            "postgres": {"urlFile": "/s/pg", "table": "t", "url": "postgres://inline"}
        }));
        assert!(result.is_err());
        let result: Result<ApiKey, _> = serde_json::from_value(serde_json::json!(
            {"name": "a", "key": "plain-text", "sha256": "00", "scope": "all"}
        ));
        assert!(result.is_err());
    }
}
