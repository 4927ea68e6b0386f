//! The `Gateway` resource: devices connect to it over MQTT or HTTP, and every accepted
//! message is routed into a Queue.

use super::{Condition, SecretRef};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tributary_contract::{command, gateway_config};

/// A provisioned device endpoint: a Deployment and Service of the gateway image.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "tributary.dev",
    version = "v1alpha1",
    kind = "Gateway",
    namespaced,
    status = "GatewayStatus",
    shortname = "tgw",
    category = "tributary",
    doc = "A device endpoint: MQTT and HTTP listeners that authenticate devices and route their messages into Queues.",
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(
        name = "Available",
        type_ = "integer",
        json_path = ".status.readyReplicas"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Delivery", type_ = "string", json_path = ".spec.delivery"),
    printcolumn(name = "Endpoint", type_ = "string", json_path = ".status.endpoint"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    /// Number of gateway pods. Default 1.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0))]
    pub replicas: i32,
    /// Gateway container image. Default: the operator's configured gateway image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// CPU and memory of each gateway pod. Defaults: requests `cpu: 100m`, `memory: 64Mi`;
    /// limits `cpu: "2"`, `memory: 1Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<super::ComputeResources>,
    /// Network listeners devices connect to. At least one must be set.
    pub listeners: Listeners,
    /// The Service in front of the gateway pods.
    #[serde(default)]
    pub service: ServiceSpec,
    /// How devices authenticate. At least one method must be configured.
    pub auth: AuthSpec,
    /// Topics an authenticated device may publish to, as templates over the device id:
    /// `{device}` is replaced by it. Default: `devices/{device}/#`.
    #[serde(default = "default_publish_topics")]
    pub publish_topics: Vec<String>,
    /// Routes from topic filters (MQTT wildcards `+` and `#`) to Queues; a message goes to
    /// every Queue whose filter matches. All routed Queues must be on the same broker.
    #[schemars(length(min = 1))]
    pub routes: Vec<Route>,
    /// When a device's publish is acknowledged: `confirmed` (default: after the broker
    /// confirmed the message) or `fast` (on receipt).
    #[serde(default)]
    pub delivery: DeliveryMode,
    /// Limits protecting the gateway and the queue.
    #[serde(default)]
    pub limits: Limits,
    /// Commands to devices: what they may subscribe to and how their command queues are
    /// bounded (see docs/commands.md).
    #[serde(default)]
    pub commands: Commands,
}

/// How the Gateway's devices receive commands.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Commands {
    /// Whether devices may subscribe (MQTT) and poll (HTTP) for commands. Default true.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Topic filter templates devices may subscribe within; `{device}` is replaced by the
    /// device id. Default: `commands/{device}/#`.
    #[serde(default = "default_subscribe_topics")]
    pub subscribe_topics: Vec<String>,
    /// Most commands queued for one device; further ones are refused to the sender until
    /// the device takes some. Default 100.
    #[serde(default = "default_max_queued")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_queued_per_device: i64,
    /// Seconds a device's command queue outlives its last connection (persistent MQTT
    /// sessions, HTTP devices that poll). Default 86400 (a day).
    #[serde(default = "default_session_expiry")]
    #[schemars(range(min = 1, max = 2592000))]
    pub session_expiry_seconds: i64,
    /// Commands delivered to one device and not yet acknowledged. Default 10.
    #[serde(default = "default_commands_in_flight")]
    #[schemars(range(min = 1, max = 65535))]
    pub max_in_flight_per_device: i64,
}

fn default_true() -> bool {
    true
}

fn default_subscribe_topics() -> Vec<String> {
    vec![command::DEFAULT_SUBSCRIBE_TEMPLATE.to_owned()]
}

fn default_max_queued() -> i64 {
    i64::from(command::DEFAULT_MAX_QUEUED_PER_DEVICE)
}

fn default_session_expiry() -> i64 {
    i64::from(command::DEFAULT_SESSION_EXPIRY_SECONDS)
}

fn default_commands_in_flight() -> i64 {
    i64::from(command::DEFAULT_MAX_COMMANDS_IN_FLIGHT_PER_DEVICE)
}

impl Default for Commands {
    fn default() -> Self {
        Commands {
            enabled: true,
            subscribe_topics: default_subscribe_topics(),
            max_queued_per_device: default_max_queued(),
            session_expiry_seconds: default_session_expiry(),
            max_in_flight_per_device: default_commands_in_flight(),
        }
    }
}

fn default_replicas() -> i32 {
    1
}

fn default_publish_topics() -> Vec<String> {
    vec![gateway_config::DEFAULT_PERMISSION.to_owned()]
}

/// The gateway's listeners; each is optional, at least one is required.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Listeners {
    /// Plain MQTT 3.1.1 and 5.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<PlainListener>,
    /// MQTT over TLS; client-certificate authentication needs it or `httpTls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt_tls: Option<TlsListener>,
    /// HTTP ingest: `POST /v1/publish/<topic>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<PlainListener>,
    /// HTTP ingest over TLS (HTTPS): the same endpoint and limits as `http` (its
    /// connections count towards the same `limits.maxHttpConnections`); with
    /// `auth.clientCertificates`, a verified client certificate authenticates the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_tls: Option<TlsListener>,
}

/// A plain-text listener.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlainListener {
    /// Port the Service exposes and the container listens on.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

/// A TLS listener.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsListener {
    /// Port the Service exposes and the container listens on.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// A `kubernetes.io/tls` Secret (`tls.crt`, `tls.key`) with the server certificate.
    #[schemars(length(min = 1))]
    pub secret_name: String,
}

/// The gateway Service.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Service type: `ClusterIP` (default), `NodePort` or `LoadBalancer`.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// For `NodePort` and `LoadBalancer` only: `Cluster` (the Kubernetes default: any node
    /// forwards, and the gateway sees that node's address) or `Local` (only nodes running
    /// a gateway pod take traffic, and the gateway sees the client's own address, so login
    /// throttling and logs are per device rather than per node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_traffic_policy: Option<ExternalTrafficPolicy>,
    /// The load balancer in front of this Service sends a PROXY protocol v2 header on every
    /// connection (AWS NLB target groups, HAProxy `send-proxy-v2`, ...): every device
    /// listener then reads it first and takes the client's address from it (LOCAL health
    /// checks keep the socket's). Connections without a valid header are closed, so enable
    /// it only when every device connection comes through such a load balancer, and not
    /// for in-cluster clients of the Service. Default false.
    #[serde(default)]
    pub proxy_protocol: bool,
}

/// How a `NodePort` or `LoadBalancer` Service routes external traffic: `Cluster` (any
/// node forwards; the gateway sees that node's address) or `Local` (only nodes with a
/// gateway pod take traffic; the gateway sees the client's own address).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ExternalTrafficPolicy {
    /// Any node forwards to any pod; the client address is the forwarding node's.
    Cluster,
    /// Only nodes with a gateway pod take traffic; the client address is preserved.
    Local,
}

impl ExternalTrafficPolicy {
    /// The Service `spec.externalTrafficPolicy` value.
    pub fn as_str(self) -> &'static str {
        match self {
            ExternalTrafficPolicy::Cluster => "Cluster",
            ExternalTrafficPolicy::Local => "Local",
        }
    }
}

/// Kubernetes Service type.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ServiceType {
    /// Reachable inside the cluster.
    #[default]
    ClusterIP,
    /// Also on a port of every node.
    NodePort,
    /// Also through the cloud's load balancer.
    LoadBalancer,
}

impl ServiceType {
    /// The Service `spec.type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

/// Device authentication methods; a device may use any configured one.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// Secret whose key `passwords` holds lines `device-id:hash` (argon2 PHC hashes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passwords: Option<SecretRef>,
    /// JSON Web Tokens as passwords (MQTT) or bearer tokens (HTTP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtAuth>,
    /// Client certificates (mTLS) on TLS listeners; the device id is the certificate's
    /// common name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificates: Option<ClientCertAuth>,
    /// Accept devices without credentials (they get the id `anonymous`). Default false.
    #[serde(default)]
    pub allow_anonymous: bool,
}

/// JWT authentication.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JwtAuth {
    /// Secret whose keys are PEM public keys (RS256 or ES256) that may sign device tokens.
    pub public_keys: SecretRef,
    /// Required `iss` claim, when set: a token without it is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Required `aud` claim, when set: a token without it is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Longest a token may still be valid when presented (`exp` minus now), when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_token_lifetime_seconds: Option<u64>,
    /// Claim holding the device id. Default `sub`.
    #[serde(default = "default_device_claim")]
    pub device_claim: String,
}

fn default_device_claim() -> String {
    gateway_config::DEFAULT_DEVICE_CLAIM.to_owned()
}

/// mTLS authentication.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientCertAuth {
    /// Secret whose key `ca.crt` holds the CA bundle that signs device certificates.
    /// Needs the `mqttTls` or the `httpTls` listener.
    pub ca: SecretRef,
}

/// A route from a topic filter to a Queue.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// MQTT topic filter, e.g. `devices/+/telemetry`.
    #[schemars(length(min = 1))]
    pub topic_filter: String,
    /// Name of a Queue in the same namespace.
    #[schemars(length(min = 1))]
    pub queue: String,
}

/// When a publish is acknowledged to the device.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryMode {
    /// After the broker confirmed the message (at-least-once).
    #[default]
    Confirmed,
    /// As soon as the gateway received the message.
    Fast,
}

/// Gateway limits.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// Largest accepted payload in bytes. Default 262144 (256 KiB).
    #[serde(default = "default_max_payload")]
    #[schemars(range(min = 1))]
    pub max_payload_bytes: i64,
    /// Most concurrent device connections per gateway pod. Default 50000.
    #[serde(default = "default_max_connections")]
    #[schemars(range(min = 1))]
    pub max_connections: i64,
    /// Sustained messages per second one device may publish (MQTT is slowed down, HTTP
    /// gets 429). Default 100.
    #[serde(default = "default_rate")]
    #[schemars(range(min = 1))]
    pub messages_per_second_per_device: i64,
    /// Messages a device may send in a burst above the sustained rate. Default 200.
    #[serde(default = "default_burst")]
    #[schemars(range(min = 0))]
    pub burst: i64,
    /// Most simultaneous MQTT connections one device id may hold, so that one leaked
    /// credential cannot take every slot; a further CONNECT is refused with "quota exceeded"
    /// unless it takes over a live connection's client id. Default 4.
    #[serde(default = "default_max_connections_per_device")]
    #[schemars(range(min = 1))]
    pub max_connections_per_device: i64,
    /// Most simultaneous connections to the HTTP ingest listener per pod; further ones are
    /// closed as soon as they are accepted. Default 1024.
    #[serde(default = "default_max_http_connections")]
    #[schemars(range(min = 1))]
    pub max_http_connections: i64,
    /// Seconds an HTTP connection has to send a complete request head (also the idle
    /// keep-alive timeout between requests). Default 5.
    #[serde(default = "default_http_header_timeout")]
    #[schemars(range(min = 1))]
    pub http_header_timeout_seconds: i64,
    /// Seconds an HTTP request body has to arrive once its head was read; slower bodies get
    /// 408. Default 15.
    #[serde(default = "default_http_body_timeout")]
    #[schemars(range(min = 1))]
    pub http_body_timeout_seconds: i64,
    /// Longest MQTT keep-alive granted, in seconds; a client asking for 0 or more gets this
    /// (MQTT 5: told in CONNACK). Connections silent for 1.5 times their keep-alive are
    /// closed. Default 300.
    #[serde(default = "default_max_keep_alive")]
    #[schemars(range(min = 1, max = 65535))]
    pub max_keep_alive_seconds: i64,
    /// Seconds a write to an MQTT client may stay blocked (it stopped reading) before the
    /// connection is closed. Default 30.
    #[serde(default = "default_write_timeout")]
    #[schemars(range(min = 1))]
    pub write_timeout_seconds: i64,
}

// The gateway's own defaults (tributary-contract), in the CRD's integer type.
fn default_rate() -> i64 {
    i64::from(gateway_config::DEFAULT_MESSAGES_PER_SECOND)
}

fn default_burst() -> i64 {
    i64::from(gateway_config::DEFAULT_BURST)
}

fn default_max_payload() -> i64 {
    gateway_config::DEFAULT_MAX_PAYLOAD_BYTES as i64
}

fn default_max_connections() -> i64 {
    gateway_config::DEFAULT_MAX_CONNECTIONS as i64
}

fn default_max_connections_per_device() -> i64 {
    gateway_config::DEFAULT_MAX_CONNECTIONS_PER_DEVICE as i64
}

fn default_max_http_connections() -> i64 {
    gateway_config::DEFAULT_MAX_HTTP_CONNECTIONS as i64
}

fn default_http_header_timeout() -> i64 {
    gateway_config::DEFAULT_HTTP_HEADER_TIMEOUT_SECONDS as i64
}

fn default_http_body_timeout() -> i64 {
    gateway_config::DEFAULT_HTTP_BODY_TIMEOUT_SECONDS as i64
}

fn default_max_keep_alive() -> i64 {
    i64::from(gateway_config::DEFAULT_MAX_KEEP_ALIVE_SECONDS)
}

fn default_write_timeout() -> i64 {
    gateway_config::DEFAULT_WRITE_TIMEOUT_SECONDS as i64
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload_bytes: default_max_payload(),
            max_connections: default_max_connections(),
            messages_per_second_per_device: default_rate(),
            burst: default_burst(),
            max_connections_per_device: default_max_connections_per_device(),
            max_http_connections: default_max_http_connections(),
            http_header_timeout_seconds: default_http_header_timeout(),
            http_body_timeout_seconds: default_http_body_timeout(),
            max_keep_alive_seconds: default_max_keep_alive(),
            write_timeout_seconds: default_write_timeout(),
        }
    }
}

/// Observed state of a Gateway.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayStatus {
    /// Conditions: `Ready` tells whether the gateway accepts devices.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` last reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Gateway pods ready to accept devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// In-cluster DNS name of the gateway Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Devices connected, as last reported by the gateway pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connected_devices: Option<i64>,
    /// The device table the pods use, as the operator last checked with them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_table: Option<DeviceTableStatus>,
}

/// Whether a Gateway's pods hold its current device table.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceTableStatus {
    /// Devices in the table (the Devices that name this Gateway).
    pub devices: i64,
    /// When the table was issued (RFC 3339).
    pub issued_at: String,
    /// Running pods that hold this table (or a newer one).
    pub pods_current: i64,
    /// Running pods asked.
    pub pods: i64,
}
