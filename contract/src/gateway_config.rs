//! The gateway config file the operator renders (and users write for standalone runs).
//!
//! Secrets never appear inline: the broker URI, password hashes, JWT public keys and TLS
//! keys are files (Kubernetes Secrets mounted as files), referenced here by path.
//!
//! ```yaml
//! tenant: factory
//! gateway: line-1
//! healthListen: 0.0.0.0:8080
//! listeners:
//!   mqtt: 0.0.0.0:1883
//!   http: 0.0.0.0:8081
//!   httpTls:
//!     listen: 0.0.0.0:8443
//!     certFile: /etc/tributary/secrets/tls/tls.crt
//!     keyFile: /etc/tributary/secrets/tls/tls.key
//! auth:
//!   passwordFile: /etc/tributary/secrets/passwords
//! broker:
//!   uriFile: /etc/tributary/secrets/amqp-uri
//! routes:
//!   - topicFilter: devices/+/telemetry
//!     queue: telemetry
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The whole gateway config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GatewayConfig {
    /// The tenant (the Gateway resource's namespace), written into every envelope.
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// The Gateway resource's name, written into every envelope.
    #[serde(default = "default_gateway")]
    pub gateway: String,
    /// Address of the health (`/healthz`, `/readyz`) and Prometheus (`/metrics`) endpoint.
    pub health_listen: SocketAddr,
    /// Where devices connect. Every listener is optional.
    #[serde(default)]
    pub listeners: Listeners,
    /// How devices prove who they are.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Topic templates a device may publish to; `{device}` is replaced by the authenticated
    /// device id, and MQTT wildcards (`+`, `#`) are allowed. Default: `devices/{device}/#`.
    #[serde(default = "default_permissions")]
    pub permissions: Vec<String>,
    /// Routes from MQTT topic filters to queues. A message goes to every queue whose filter
    /// matches its topic; a message that matches no route is refused.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// The RabbitMQ broker the gateway publishes to.
    pub broker: BrokerConfig,
    /// Limits that protect the gateway and the broker.
    #[serde(default)]
    pub limits: Limits,
    /// When a device's message is acknowledged.
    #[serde(default)]
    pub delivery: DeliveryMode,
    /// Commands to devices: which topics devices may subscribe to, the bounds of their
    /// command queues, responses and HTTP long polls (see [`crate::command`]).
    #[serde(default)]
    pub commands: crate::command::CommandsConfig,
}

fn default_tenant() -> String {
    "default".into()
}

fn default_gateway() -> String {
    "gateway".into()
}

/// Default of `permissions`: a device publishes under its own `devices/{device}/` topics.
pub const DEFAULT_PERMISSION: &str = "devices/{device}/#";

fn default_permissions() -> Vec<String> {
    vec![DEFAULT_PERMISSION.into()]
}

/// The gateway's device-facing listeners.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Listeners {
    /// Plain MQTT (3.1.1 and 5.0), usually port 1883.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<SocketAddr>,
    /// MQTT over TLS, usually port 8883.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt_tls: Option<TlsListener>,
    /// HTTP ingest: `POST /v1/publish/{topic}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<SocketAddr>,
    /// HTTP ingest over TLS (HTTPS), usually port 8443: the same endpoint and bounds as
    /// `http`, and its connections share `limits.maxHttpConnections` with it. With
    /// `auth.clientCertificates`, a verified client certificate authenticates the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_tls: Option<TlsListener>,
    /// Every device listener (not the health listener) expects a PROXY protocol v2 header
    /// first, as a load balancer configured for it sends; the source address in it is the
    /// client's address for login throttling and logs. A connection without a valid header
    /// is closed. Only enable it when every connection comes through such a load balancer.
    #[serde(default, skip_serializing_if = "is_false")]
    pub proxy_protocol: bool,
}

fn is_false(value: &bool) -> bool {
    !value
}

/// A TLS listener; certificate and key are PEM files (a mounted `kubernetes.io/tls` Secret).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsListener {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// PEM certificate chain of the server.
    pub cert_file: PathBuf,
    /// PEM private key of the server.
    pub key_file: PathBuf,
}

/// Device authentication sources. A device may use any configured one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthConfig {
    /// A file of `device:hash` lines, one device per line, with an argon2 PHC hash
    /// (`$argon2id$...`); `#` starts a comment. MQTT: username = device, password.
    /// HTTP: Basic authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// JSON Web Tokens signed with RS256 or ES256. MQTT: the token is the password (the
    /// username is ignored). HTTP: `Authorization: Bearer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtAuth>,
    /// Client certificates on the TLS listener; the device id is the certificate subject's
    /// common name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificates: Option<ClientCertificateAuth>,
    /// Accept devices without credentials. Off unless explicitly enabled; anonymous devices
    /// get the id `anonymousDevice`.
    #[serde(default)]
    pub allow_anonymous: bool,
    /// The device registry the operator renders from `Device` resources: devices, their
    /// credentials (generated secrets, argon2 hashes, JWT keys, certificates), whether they
    /// are disabled, extra topics and attributes. Re-read when the table file changes, and
    /// replaced at once by the operator's pushes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<crate::device_table::RegistryFiles>,
    /// The device id anonymous devices get.
    #[serde(default = "default_anonymous_device")]
    pub anonymous_device: String,
    /// Failed logins per source address per minute before further attempts from it are
    /// slowed down (by at most half a second each). Never a refusal: devices behind one NAT
    /// share an address, and a correct password from it is still accepted. Failures are
    /// also counted per device id; after a few, that device's password checks are spaced
    /// out with growing delays.
    #[serde(default = "default_failed_logins_per_minute")]
    pub failed_logins_per_minute: u32,
    /// Password checks (argon2) that run at once. Each slot keeps one argon2 memory block
    /// (19 MiB at the recommended cost) for the gateway's lifetime and reuses it, so
    /// password logins never grow the process beyond `slots × memory cost`.
    #[serde(default = "default_password_check_slots")]
    pub password_check_slots: u16,
    /// Password logins that may wait for a free slot; a login beyond this, or one whose
    /// wait outlasts its CONNECT deadline, is answered "server unavailable" at once.
    #[serde(default = "default_password_check_queue")]
    pub password_check_queue: u16,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            password_file: None,
            jwt: None,
            client_certificates: None,
            allow_anonymous: false,
            registry: None,
            anonymous_device: default_anonymous_device(),
            failed_logins_per_minute: default_failed_logins_per_minute(),
            password_check_slots: default_password_check_slots(),
            password_check_queue: default_password_check_queue(),
        }
    }
}

fn default_anonymous_device() -> String {
    "anonymous".into()
}

fn default_failed_logins_per_minute() -> u32 {
    30
}

fn default_password_check_slots() -> u16 {
    2
}

fn default_password_check_queue() -> u16 {
    64
}

/// JWT verification settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JwtAuth {
    /// PEM public keys (RSA for RS256, P-256 EC for ES256), one file each. A token is valid
    /// when any key verifies it.
    pub public_key_files: Vec<PathBuf>,
    /// The claim that carries the device id.
    #[serde(default = "default_device_claim")]
    pub device_claim: String,
    /// Required `iss` claim, if set: a token without it is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Required `aud` claim, if set: a token without it is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Longest a token may still be valid when presented (`exp` minus now), if set: a
    /// token minted to last for years is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_token_lifetime_seconds: Option<u64>,
}

/// Default of `auth.jwt.deviceClaim`.
pub const DEFAULT_DEVICE_CLAIM: &str = "sub";

fn default_device_claim() -> String {
    DEFAULT_DEVICE_CLAIM.into()
}

/// Client certificate (mTLS) settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClientCertificateAuth {
    /// PEM bundle of the CAs that sign device certificates.
    pub ca_file: PathBuf,
}

/// A route from a topic filter to a queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Route {
    /// MQTT topic filter (`+` one level, `#` the rest), e.g. `devices/+/telemetry`.
    pub topic_filter: String,
    /// The queue name (published through the default exchange with `mandatory`).
    pub queue: String,
}

/// The broker connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BrokerConfig {
    /// A file holding the `amqp://` or `amqps://` URI (with credentials), read at each
    /// (re)connect. The URI never appears in logs.
    pub uri_file: PathBuf,
    /// A PEM file of the CA(s) an `amqps://` broker's certificate may chain to, for a broker
    /// with a private CA; read at each (re)connect. Host names are verified either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Longest wait between reconnect attempts, in milliseconds.
    #[serde(default = "default_reconnect_max_delay_ms")]
    pub reconnect_max_delay_ms: u64,
    /// How long to wait for the broker's confirm before a message counts as failed, in
    /// milliseconds.
    #[serde(default = "default_confirm_timeout_ms")]
    pub confirm_timeout_ms: u64,
}

/// Default of `broker.reconnectMaxDelayMs`.
pub const DEFAULT_RECONNECT_MAX_DELAY_MS: u64 = 5_000;
/// Default of `broker.confirmTimeoutMs`.
pub const DEFAULT_CONFIRM_TIMEOUT_MS: u64 = 30_000;

fn default_reconnect_max_delay_ms() -> u64 {
    DEFAULT_RECONNECT_MAX_DELAY_MS
}

fn default_confirm_timeout_ms() -> u64 {
    DEFAULT_CONFIRM_TIMEOUT_MS
}

/// Limits on devices and on work in flight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Limits {
    /// Largest accepted payload in bytes (MQTT packets are capped a little above this).
    #[serde(default = "default_max_payload_bytes")]
    pub max_payload_bytes: usize,
    /// Most simultaneous MQTT connections; further CONNECTs get "server unavailable".
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Most simultaneous MQTT connections one device (one authenticated device id) may
    /// hold, so that one leaked credential cannot take every connection slot. A further
    /// CONNECT is refused with "quota exceeded" (MQTT 5 reason 0x97; 3.1.1 return code 0x03,
    /// server unavailable), unless it reuses a live connection's client id: that takes the
    /// session over and counts once. Default 4; 0 is taken as 1.
    #[serde(default = "default_max_connections_per_device")]
    pub max_connections_per_device: usize,
    /// Sustained messages per second per device (MQTT is slowed down, HTTP gets 429).
    #[serde(default = "default_messages_per_second")]
    pub messages_per_second: u32,
    /// Burst of messages a device may send above the sustained rate.
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// Messages awaiting a broker confirm across the gateway; beyond this the gateway stops
    /// reading from device sockets (backpressure).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Unacknowledged QoS 1 messages per MQTT connection (MQTT 5 "receive maximum").
    #[serde(default = "default_max_in_flight_per_connection")]
    pub max_in_flight_per_connection: u16,
    /// Seconds a new MQTT connection has to send CONNECT and be authenticated (waiting for
    /// a password check slot included). Its PROXY header and TLS handshake get this long
    /// too, together, before the CONNECT deadline starts.
    #[serde(default = "default_connect_timeout_seconds")]
    pub connect_timeout_seconds: u64,
    /// Most simultaneous connections to the HTTP ingest listeners (`http` and `httpTls`
    /// together, TLS handshakes and PROXY headers in progress included); further ones are
    /// closed as soon as they are accepted.
    #[serde(default = "default_max_http_connections")]
    pub max_http_connections: usize,
    /// Seconds an HTTP connection has to send a complete request head (request line and
    /// headers), counted from accept or from the end of the previous response on a
    /// kept-alive connection; a connection that does not is closed. Also applies to the
    /// health listener. A new ingest connection's PROXY header and TLS handshake get this
    /// long too, together, before its first head's deadline starts.
    #[serde(default = "default_http_header_timeout_seconds")]
    pub http_header_timeout_seconds: u64,
    /// Seconds an HTTP request body has to arrive, counted once its head was read; a body
    /// that takes longer is abandoned with 408 and the connection closed.
    #[serde(default = "default_http_body_timeout_seconds")]
    pub http_body_timeout_seconds: u64,
    /// Longest MQTT keep-alive the gateway grants, in seconds. A client asking for 0 (no
    /// keep-alive) or for more gets this instead: MQTT 5 clients are told so with the
    /// Server Keep Alive property in CONNACK, 3.1.1 clients are held to it. A connection
    /// that sends no complete packet for 1.5 times its keep-alive is closed.
    #[serde(default = "default_max_keep_alive_seconds")]
    pub max_keep_alive_seconds: u16,
    /// Seconds a write to an MQTT client may stay blocked (the client stopped reading and
    /// its socket buffer is full) before the connection is closed.
    #[serde(default = "default_write_timeout_seconds")]
    pub write_timeout_seconds: u64,
}

/// Default of `limits.maxHttpConnections`: more than enough for devices that publish and
/// hang up, small enough that idle sockets cannot exhaust the gateway's file descriptors.
pub const DEFAULT_MAX_HTTP_CONNECTIONS: usize = 1024;

/// Default of `limits.httpHeaderTimeoutSeconds`: a device on a slow link sends a few hundred
/// bytes of head well within it; a socket that sends nothing is closed quickly.
pub const DEFAULT_HTTP_HEADER_TIMEOUT_SECONDS: u64 = 5;

/// Default of `limits.httpBodyTimeoutSeconds`: the largest default payload (256 KiB) at
/// about 20 KB/s, a slow cellular link.
pub const DEFAULT_HTTP_BODY_TIMEOUT_SECONDS: u64 = 15;

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_payload_bytes: default_max_payload_bytes(),
            max_connections: default_max_connections(),
            max_connections_per_device: default_max_connections_per_device(),
            messages_per_second: default_messages_per_second(),
            burst: default_burst(),
            max_in_flight: default_max_in_flight(),
            max_in_flight_per_connection: default_max_in_flight_per_connection(),
            connect_timeout_seconds: default_connect_timeout_seconds(),
            max_http_connections: default_max_http_connections(),
            http_header_timeout_seconds: default_http_header_timeout_seconds(),
            http_body_timeout_seconds: default_http_body_timeout_seconds(),
            max_keep_alive_seconds: default_max_keep_alive_seconds(),
            write_timeout_seconds: default_write_timeout_seconds(),
        }
    }
}

/// Default of `limits.maxConnectionsPerDevice`: room for a device's reconnect overlapping
/// its old connection and a second client, not for one credential to hold the gateway.
pub const DEFAULT_MAX_CONNECTIONS_PER_DEVICE: usize = 4;

fn default_max_connections_per_device() -> usize {
    DEFAULT_MAX_CONNECTIONS_PER_DEVICE
}

/// Default of `limits.maxKeepAliveSeconds`: a silent or dead connection is found within
/// 7.5 minutes.
pub const DEFAULT_MAX_KEEP_ALIVE_SECONDS: u16 = 300;

/// Default of `limits.writeTimeoutSeconds`: far longer than a slow link needs to take a
/// few acknowledgements, short enough that a client that stopped reading is let go.
pub const DEFAULT_WRITE_TIMEOUT_SECONDS: u64 = 30;

fn default_max_keep_alive_seconds() -> u16 {
    DEFAULT_MAX_KEEP_ALIVE_SECONDS
}

fn default_write_timeout_seconds() -> u64 {
    DEFAULT_WRITE_TIMEOUT_SECONDS
}

/// Default of `limits.maxPayloadBytes`: 256 KiB.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 256 * 1024;
/// Default of `limits.maxConnections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 50_000;
/// Default of `limits.messagesPerSecond`.
pub const DEFAULT_MESSAGES_PER_SECOND: u32 = 100;
/// Default of `limits.burst`.
pub const DEFAULT_BURST: u32 = 200;

fn default_max_payload_bytes() -> usize {
    DEFAULT_MAX_PAYLOAD_BYTES
}

fn default_max_connections() -> usize {
    DEFAULT_MAX_CONNECTIONS
}

fn default_messages_per_second() -> u32 {
    DEFAULT_MESSAGES_PER_SECOND
}

fn default_burst() -> u32 {
    DEFAULT_BURST
}

fn default_max_in_flight() -> usize {
    10_000
}

fn default_max_in_flight_per_connection() -> u16 {
    64
}

fn default_connect_timeout_seconds() -> u64 {
    10
}

fn default_max_http_connections() -> usize {
    DEFAULT_MAX_HTTP_CONNECTIONS
}

fn default_http_header_timeout_seconds() -> u64 {
    DEFAULT_HTTP_HEADER_TIMEOUT_SECONDS
}

fn default_http_body_timeout_seconds() -> u64 {
    DEFAULT_HTTP_BODY_TIMEOUT_SECONDS
}

/// When the gateway acknowledges a device's message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DeliveryMode {
    /// MQTT PUBACK / HTTP 202 only after the broker confirmed the message (durable).
    #[default]
    Confirmed,
    /// Acknowledge once the message is handed to the broker connection (faster; a broker
    /// crash may lose acknowledged messages).
    Fast,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let config: GatewayConfig = serde_json::from_value(serde_json::json!({
            "healthListen": "0.0.0.0:8080",
            "broker": {"uriFile": "/secrets/amqp-uri"}
        }))
        .expect("parse");
        assert_eq!(config.tenant, "default");
        assert_eq!(config.permissions, vec!["devices/{device}/#".to_string()]);
        assert_eq!(config.delivery, DeliveryMode::Confirmed);
        assert!(!config.auth.allow_anonymous);
        assert_eq!(config.limits, Limits::default());
    }

    #[test]
    fn limits_written_before_the_http_bounds_keep_parsing() {
        let limits: Limits = serde_json::from_value(serde_json::json!({
            "maxPayloadBytes": 1024,
            "connectTimeoutSeconds": 3
        }))
        .expect("parse");
        assert_eq!(limits.max_payload_bytes, 1024);
        assert_eq!(limits.max_http_connections, DEFAULT_MAX_HTTP_CONNECTIONS);
        assert_eq!(
            limits.http_header_timeout_seconds,
            DEFAULT_HTTP_HEADER_TIMEOUT_SECONDS
        );
        assert_eq!(
            limits.http_body_timeout_seconds,
            DEFAULT_HTTP_BODY_TIMEOUT_SECONDS
        );
        assert_eq!(
            limits.max_keep_alive_seconds,
            DEFAULT_MAX_KEEP_ALIVE_SECONDS
        );
        assert_eq!(limits.write_timeout_seconds, DEFAULT_WRITE_TIMEOUT_SECONDS);
        assert_eq!(
            limits.max_connections_per_device,
            DEFAULT_MAX_CONNECTIONS_PER_DEVICE
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let result: Result<GatewayConfig, _> = serde_json::from_value(serde_json::json!({
            "healthListen": "0.0.0.0:8080",
            "broker": {"uriFile": "/x", "uri": "amqp://inline"}
        }));
        assert!(result.is_err());
    }
}
