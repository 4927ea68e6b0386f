//! The `ApplicationApi` resource: the application API (`tributary-api`) over what a
//! namespace's Sinks stored, its live feed and commands to its devices, behind API keys the
//! operator issues.

use super::gateway::ServiceType;
use super::{ComputeResources, Condition};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A Deployment and Service of the application API, configured from Sinks, a Queue and a
/// Gateway of its namespace, with API keys generated into a Secret.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "tributary.dev",
    version = "v1alpha1",
    kind = "ApplicationApi",
    namespaced,
    status = "ApplicationApiStatus",
    shortname = "tapi",
    category = "tributary",
    doc = "The application API: devices, latest values, history, a live stream, commands and a dashboard over a namespace's Sinks, behind API keys the operator issues.",
    printcolumn(name = "History", type_ = "string", json_path = ".spec.history.sink"),
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
    printcolumn(name = "Endpoint", type_ = "string", json_path = ".status.endpoint"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationApiSpec {
    /// Devices, history and buckets: the table of a PostgreSQL Sink of this namespace.
    pub history: HistorySpec,
    /// Latest value per device from a Redis Sink. Without it, the latest value is the
    /// newest row of the history table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest: Option<LatestSpec>,
    /// Live processed messages (`/v1/stream`, `/v1/ws`, the dashboard's chart) from the
    /// exchange `tributary.live.<namespace>` on a Queue's broker. Without it, those
    /// endpoints answer 503.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<LiveSpec>,
    /// Commands to the devices of a Gateway (`POST /v1/devices/{id}/commands/{name}`).
    /// Without it, that endpoint answers 503.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commands: Option<CommandsSpec>,
    /// The applications' keys. The operator generates each one into the Secret
    /// `<name>-api-keys` (key name → key); the API only holds their SHA-256.
    #[serde(default)]
    pub api_keys: Vec<ApiKeySpec>,
    /// Browser origins allowed to call the API (CORS); `*` allows any. The dashboard is
    /// served by the API itself and needs none. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cors_allowed_origins: Vec<String>,
    /// Requests per key (a token bucket), unless a key has its own. Default 20 per second,
    /// bursts of 40.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSpec>,
    /// Limits on requests and answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ApiLimitsSpec>,
    /// Number of API pods. Default 1.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0))]
    pub replicas: i32,
    /// API container image. Default: the operator's configured API image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// CPU and memory of each API pod. Defaults: requests `cpu: 50m`, `memory: 64Mi`;
    /// limits `cpu: "1"`, `memory: 256Mi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ComputeResources>,
    /// The Service in front of the API pods (port 8080, named `http`).
    #[serde(default)]
    pub service: ApiServiceSpec,
}

fn default_replicas() -> i32 {
    1
}

/// Where history comes from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistorySpec {
    /// Name of a PostgreSQL Sink in the same namespace: the API reads its table, with its
    /// URL Secret and `idColumn`.
    #[schemars(length(min = 1))]
    pub sink: String,
    /// The column holding the device id. Default: the Sink's column whose `expr` is
    /// `device`, else `device`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_column: Option<String>,
    /// The column holding the message time (`timestamptz`). Default: the Sink's column
    /// whose `expr` is `receivedAt`, else `received_at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_column: Option<String>,
}

/// Where latest values come from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LatestSpec {
    /// Name of a Redis Sink in the same namespace whose `keyTemplate` has no placeholder
    /// other than `{device}`.
    #[schemars(length(min = 1))]
    pub sink: String,
}

/// Where live messages come from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LiveSpec {
    /// Name of a Queue in the same namespace: its broker carries the live exchange
    /// `tributary.live.<namespace>`, which the operator declares (a durable topic exchange).
    /// Processed messages reach it from a Worker that republishes to it (docs/application-api.md).
    #[schemars(length(min = 1))]
    pub queue: String,
}

/// Where commands go.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommandsSpec {
    /// Name of a Gateway in the same namespace, with commands enabled: commands go to the
    /// namespace's command exchange on the broker of the Queues it routes to.
    #[schemars(length(min = 1))]
    pub gateway: String,
}

/// One application key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeySpec {
    /// The key's name: its entry in the keys Secret, and its name in the API's logs and
    /// metrics (never the key). Lowercase letters, digits, `-`, `_` and `.`.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// The devices the key may read: `all`, `{devices: [id, ...]}` or
    /// `{devicePrefix: "site-a-"}`.
    #[schemars(schema_with = "scope_schema")]
    pub scope: KeyScopeSpec,
    /// Whether the key may also send commands to the devices of its scope. Default false.
    #[serde(default)]
    pub commands: bool,
    /// This key's own rate limit instead of `spec.rateLimit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSpec>,
    /// Change this number (for example increment it) to have the operator issue a new key
    /// in place of the current one. Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub rotation: Option<i64>,
}

/// The devices a key may read (the API's key scope, in the same shape): `all`,
/// `{devices: [...]}` or `{devicePrefix: ...}`. Read through a JSON value, so that YAML
/// (which would want tags for enums) and JSON give the same result.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(try_from = "serde_json::Value", into = "serde_json::Value")]
pub enum KeyScopeSpec {
    /// Every device.
    All,
    /// Exactly these device ids.
    Devices(Vec<String>),
    /// Device ids starting with this text.
    DevicePrefix(String),
}

impl TryFrom<serde_json::Value> for KeyScopeSpec {
    type Error = String;

    fn try_from(value: serde_json::Value) -> Result<Self, Self::Error> {
        use serde_json::Value;
        let expected =
            || "scope must be `all`, `{devices: [id, ...]}` or `{devicePrefix: text}`".to_owned();
        match value {
            Value::String(text) if text == "all" => Ok(KeyScopeSpec::All),
            Value::Object(map) if map.len() == 1 => match map.into_iter().next() {
                Some((key, Value::Array(items))) if key == "devices" => items
                    .into_iter()
                    .map(|item| match item {
                        Value::String(id) => Ok(id),
                        _ => Err(expected()),
                    })
                    .collect::<Result<_, _>>()
                    .map(KeyScopeSpec::Devices),
                Some((key, Value::String(prefix))) if key == "devicePrefix" => {
                    Ok(KeyScopeSpec::DevicePrefix(prefix))
                }
                _ => Err(expected()),
            },
            _ => Err(expected()),
        }
    }
}

impl From<KeyScopeSpec> for serde_json::Value {
    fn from(scope: KeyScopeSpec) -> Self {
        match scope {
            KeyScopeSpec::All => serde_json::json!("all"),
            KeyScopeSpec::Devices(devices) => serde_json::json!({ "devices": devices }),
            KeyScopeSpec::DevicePrefix(prefix) => serde_json::json!({ "devicePrefix": prefix }),
        }
    }
}

/// `scope` is a string (`all`) or an object: structural schemas have no "one of these
/// types", so the API server keeps it as given and the operator checks it (an unreadable
/// one is reported on the resource's `Ready` condition).
fn scope_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "The devices the key may read: `all`, `{devices: [id, ...]}` or `{devicePrefix: \"site-a-\"}`.",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// A token bucket.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitSpec {
    /// Sustained requests per second (may be fractional: `0.5`).
    pub requests_per_second: f64,
    /// Requests allowed at once above the sustained rate.
    #[schemars(range(min = 1))]
    pub burst: i64,
}

/// Limits on requests and answers; each unset one keeps the API's default.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiLimitsSpec {
    /// Largest request body in bytes (a command's payload). Default 16384.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_request_bytes: Option<i64>,
    /// Longest a request may take, in milliseconds (live streams excepted). Default 15000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub request_timeout_ms: Option<i64>,
    /// Largest `limit` of a history page. Default 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_page_size: Option<i64>,
    /// Most connections open at once per pod (live streams included). Default 1024.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_connections: Option<i64>,
}

/// The API Service.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiServiceSpec {
    /// Service type: `ClusterIP` (default), `NodePort` or `LoadBalancer`.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
}

/// Observed state of an ApplicationApi.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationApiStatus {
    /// Conditions: `Ready` tells whether the API serves, and otherwise why not.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` last reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// API pods ready to serve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// In-cluster address of the API Service (`<service>.<namespace>.svc:8080`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The Secret holding the generated API keys (key name → key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys_secret: Option<String>,
    /// Path of the dashboard page on the endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dashboard_path: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_read_the_same_from_yaml_and_json_and_bad_ones_are_refused() {
        let yaml: Vec<KeyScopeSpec> =
            serde_yaml::from_str("[all, {devices: [a, b]}, {devicePrefix: site-a-}]")
                .expect("yaml");
        let json: Vec<KeyScopeSpec> = serde_json::from_str(
            r#"["all", {"devices": ["a", "b"]}, {"devicePrefix": "site-a-"}]"#,
        )
        .expect("json");
        assert_eq!(yaml, json);
        assert_eq!(json[1], KeyScopeSpec::Devices(vec!["a".into(), "b".into()]));
        let back = serde_json::to_value(&json).expect("serializes");
        assert_eq!(back[2], serde_json::json!({"devicePrefix": "site-a-"}));
        for bad in [r#""some""#, r#"{"devices": "a"}"#, r#"{"all": true}"#, "3"] {
            assert!(serde_json::from_str::<KeyScopeSpec>(bad).is_err(), "{bad}");
        }
    }
}
