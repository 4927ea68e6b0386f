//! The `Device` resource: one device of the platform's registry — the Gateways it may use,
//! its credentials (issued by the operator or brought), whether it is disabled, extra topics
//! and the attributes copied into its messages. Its status is what the gateways report.

use super::{Condition, SecretKeyRef};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A device of the registry.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "tributary.dev",
    version = "v1alpha1",
    kind = "Device",
    namespaced,
    status = "DeviceStatus",
    shortname = "tdev",
    category = "tributary",
    doc = "A device of the registry: the Gateways it may connect to, its credentials (generated secrets and certificates issued by the operator, or an argon2 hash or JWT key brought by the user), whether it is disabled, extra topics, and attributes copied into its messages.",
    printcolumn(name = "Device", type_ = "string", json_path = ".status.deviceId"),
    printcolumn(name = "Disabled", type_ = "boolean", json_path = ".spec.disabled"),
    printcolumn(name = "Connected", type_ = "boolean", json_path = ".status.connected"),
    printcolumn(name = "Last Seen", type_ = "date", json_path = ".status.lastSeen"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct DeviceSpec {
    /// Names of the Gateways (in this namespace) the device may connect to.
    #[schemars(length(min = 1))]
    pub gateways: Vec<String>,
    /// The id the device authenticates as: MQTT user name, HTTP Basic user, the device claim
    /// of its tokens, the common name of its certificate. Letters, digits, `-`, `_`, `.`
    /// and `:`. Default: the resource's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// How the device authenticates; at least one. A device may hold several (say, a
    /// generated secret and a certificate).
    pub credentials: DeviceCredentials,
    /// A disabled device is refused by every Gateway, and its live connections are closed
    /// within seconds. Its credentials are kept. Default false.
    #[serde(default)]
    pub disabled: bool,
    /// Topic templates the device may publish to besides its Gateways' `publishTopics`
    /// (`{device}` is replaced by its id; MQTT wildcards allowed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish_topics: Vec<String>,
    /// Copied into every message of the device (`attributes` of the envelope), for steps
    /// and sinks: site, model, owner... At most 32, keys up to 63 characters, values up to
    /// 256.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
}

/// A device's credentials; each is optional, at least one is required.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceCredentials {
    /// A random secret the operator generates (192 bits) into the Secret
    /// `<name>-credentials` (keys `username` and `password`), owned by the Device. Gateways
    /// check it with a keyed fast hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generated: Option<GeneratedCredential>,
    /// A client certificate the operator issues from the namespace's device CA into the
    /// `kubernetes.io/tls` Secret `<name>-certificate` (`tls.crt`, `tls.key`, `ca.crt`),
    /// subject common name = the device id; renewed when two thirds of its validity have
    /// passed. Used on the Gateways' TLS listeners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateCredential>,
    /// An argon2 PHC hash (`$argon2id$...`) of a password chosen elsewhere, in a Secret of
    /// this namespace. Checked with the slow hash it was made with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<SecretKeyRef>,
    /// A public key that signs the device's JSON Web Tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtCredential>,
}

/// A secret the operator generates.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GeneratedCredential {
    /// Change this number (say, increment it) to rotate the secret: a new one is generated,
    /// and the previous one stays valid for `gracePeriodSeconds`. Default 0.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub rotation: i64,
    /// How long the previous secret stays valid after a rotation, in seconds. Default 86400
    /// (a day).
    #[serde(default = "default_grace_period")]
    #[schemars(range(min = 0))]
    pub grace_period_seconds: i64,
}

fn default_grace_period() -> i64 {
    86_400
}

/// A client certificate the operator issues.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateCredential {
    /// Validity of each issued certificate, in days. Default 365.
    #[serde(default = "default_validity_days")]
    #[schemars(range(min = 1, max = 3650))]
    pub validity_days: i64,
}

impl Default for CertificateCredential {
    fn default() -> Self {
        CertificateCredential {
            validity_days: default_validity_days(),
        }
    }
}

fn default_validity_days() -> i64 {
    365
}

/// A JWT signing key the device (or its provisioning service) holds.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JwtCredential {
    /// The PEM public key (RSA for RS256, P-256 EC for ES256). A token must be signed by
    /// it, and its device claim (the Gateway's `auth.jwt.deviceClaim`, default `sub`) must
    /// be the device id.
    #[schemars(length(min = 1))]
    pub public_key: String,
}

/// Observed state of a Device.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceStatus {
    /// Conditions: `Ready` tells whether its credentials are issued and its Gateways know
    /// it.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` last reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The id the device authenticates as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// The Secret holding the generated secret (`username`, `password`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
    /// The Secret holding the issued client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_secret: Option<String>,
    /// When the first of the device's credentials expires (RFC 3339): the certificate's end
    /// of validity, or the end of a rotation's grace period for the previous secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_expiry: Option<String>,
    /// How gateways check the generated secrets (keyed hashes, never the secrets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generated: Option<GeneratedStatus>,
    /// Whether the device holds a connection to any gateway pod, as the gateways last
    /// reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connected: Option<bool>,
    /// Live connections across the gateway pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<i64>,
    /// Last login or accepted message (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<String>,
    /// Messages accepted since the gateway pods started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages_accepted: Option<i64>,
    /// Messages and logins refused since the gateway pods started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages_rejected: Option<i64>,
    /// Commands that expired before the device took them, since the gateway pods started
    /// (each also raises a `CommandsExpired` Event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commands_expired: Option<i64>,
}

/// The verifiers of a generated credential: base64 HMAC-SHA256 of each secret under the
/// namespace's registry key, which the gateways hold.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GeneratedStatus {
    /// The `spec.credentials.generated.rotation` the current secret was made for.
    pub rotation: i64,
    /// Identifies the registry key the verifiers were computed with.
    pub key_id: String,
    /// Verifier of the current secret.
    pub verifier: String,
    /// Verifier of the previous secret, valid until `previousValidUntil`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_verifier: Option<String>,
    /// End of the previous secret's grace period (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_valid_until: Option<String>,
}

impl Device {
    /// The id the device authenticates as: `spec.deviceId`, else the resource name.
    pub fn device_id(&self) -> String {
        self.spec
            .device_id
            .clone()
            .or_else(|| self.metadata.name.clone())
            .unwrap_or_default()
    }
}
