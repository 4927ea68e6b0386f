//! The device registry as one Gateway sees it: the operator renders a [`DeviceTable`] from
//! the namespace's `Device` resources that name the Gateway, writes it into a Secret the
//! gateway pods mount (read at start, re-read when it changes) and pushes it to every
//! running pod (`PUT /v1/devices/table` on the health port), so that a change takes effect
//! in seconds without a restart. The gateways report what their devices do at
//! `GET /v1/devices/status` ([`DeviceReport`]); the operator writes it into each Device's
//! status. Both endpoints need `Authorization: Bearer <sync token>`, a random token in the
//! same Secret.
//!
//! Files in the Secret (and [`RegistryFiles`] in the gateway config):
//! - `devices.json.gz`: the table, gzip-compressed JSON;
//! - `verifier-key`: the key of the keyed hash of generated secrets (raw bytes);
//! - `sync-token`: the bearer token of the two endpoints;
//! - `device-ca.crt`: the PEM certificate of the Gateway's device CA, when any Device uses a
//!   certificate credential.
//!
//! Generated secrets are random (at least 128 bits), so they are checked with a fast keyed
//! hash, [`GeneratedSecret::verifier`] = base64(HMAC-SHA256(verifier key, secret)), instead
//! of a slow password hash: microseconds per login instead of tens of milliseconds.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// File name of the table in the registry Secret.
pub const TABLE_FILE: &str = "devices.json.gz";
/// File name of the keyed-hash key in the registry Secret.
pub const VERIFIER_KEY_FILE: &str = "verifier-key";
/// File name of the sync token in the registry Secret.
pub const SYNC_TOKEN_FILE: &str = "sync-token";
/// File name of the device CA certificate in the registry Secret.
pub const DEVICE_CA_FILE: &str = "device-ca.crt";
/// Path of the push endpoint on the gateway's health listener.
pub const TABLE_PATH: &str = "/v1/devices/table";
/// Path of the status endpoint on the gateway's health listener.
pub const STATUS_PATH: &str = "/v1/devices/status";
/// Largest table body a gateway accepts on the push endpoint (compressed), and the largest
/// it decompresses to is [`MAX_TABLE_JSON_BYTES`].
pub const MAX_TABLE_BODY_BYTES: usize = 8 * 1024 * 1024;
/// Largest decompressed table a gateway accepts (from the file or a push).
pub const MAX_TABLE_JSON_BYTES: usize = 64 * 1024 * 1024;

/// Where a gateway finds its registry (the mounted Secret's files).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RegistryFiles {
    /// The gzip-compressed JSON [`DeviceTable`]; re-read when it changes.
    pub table_file: PathBuf,
    /// The key of generated secrets' keyed hash.
    pub verifier_key_file: PathBuf,
    /// The bearer token of the push and status endpoints.
    pub sync_token_file: PathBuf,
    /// The device CA's PEM certificate: client certificates it signed authenticate only
    /// devices of the table with a certificate credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_ca_file: Option<PathBuf>,
}

/// Every device one Gateway accepts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeviceTable {
    /// When the operator rendered it (Unix milliseconds). A gateway replaces its table only
    /// with one issued at the same time or later, whichever way it arrives.
    pub issued_at_ms: u64,
    /// The devices, sorted by id, each id once.
    #[serde(default)]
    pub devices: Vec<DeviceEntry>,
}

/// One device of the table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeviceEntry {
    /// The device id (MQTT user name, HTTP Basic user, token claim, certificate CN).
    pub id: String,
    /// A disabled device is refused, and its live sessions are closed.
    #[serde(default, skip_serializing_if = "is_false")]
    pub disabled: bool,
    /// How it may authenticate; any one of them.
    #[serde(default)]
    pub credentials: Vec<Credential>,
    /// Topic templates it may publish to besides the Gateway's (`{device}` = its id).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish_topics: Vec<String>,
    /// Copied into every envelope of its messages (`attributes`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
}

/// One way a device may authenticate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum Credential {
    /// A secret the operator generated, presented as the password.
    #[serde(rename_all = "camelCase")]
    Generated(GeneratedSecret),
    /// An argon2 PHC hash of a password the user chose.
    #[serde(rename_all = "camelCase")]
    PasswordHash {
        /// `$argon2id$...`.
        hash: String,
    },
    /// A PEM public key (RSA for RS256, P-256 EC for ES256) that signs this device's
    /// tokens; the token's device claim must be this device's id.
    #[serde(rename_all = "camelCase")]
    Jwt {
        /// The PEM public key.
        public_key: String,
    },
    /// A client certificate whose subject common name is the device id.
    Certificate,
}

/// A generated secret as the gateway checks it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GeneratedSecret {
    /// base64 (standard, padded) of HMAC-SHA256(verifier key, secret).
    pub verifier: String,
    /// Unix milliseconds after which it is refused: set on the previous secret during a
    /// rotation's grace period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after_ms: Option<u64>,
}

/// What one gateway pod reports about its devices at [`STATUS_PATH`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceReport {
    /// `issuedAtMs` of the table the pod uses (0: none yet); the operator pushes its table
    /// again when this is older.
    pub table_issued_at_ms: u64,
    /// Devices of the table that were seen since the pod started, sorted by id.
    #[serde(default)]
    pub devices: Vec<DeviceActivity>,
}

/// One device's activity on one gateway pod since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceActivity {
    /// The device id.
    pub id: String,
    /// Live connections (MQTT sessions) now.
    pub connections: u32,
    /// Last successful login or accepted message (Unix milliseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_ms: Option<u64>,
    /// Messages accepted (routed and, for confirmed delivery, confirmed).
    pub accepted: u64,
    /// Messages refused (not permitted, no route, too large, rate limited, broker refused)
    /// and failed logins with a known device id.
    pub rejected: u64,
    /// Commands for the device that expired in its queue before it took them (reported by
    /// whichever pod consumed the expired command).
    #[serde(default)]
    pub commands_expired: u64,
}

fn is_false(value: &bool) -> bool {
    !value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_round_trips_in_camel_case_with_tagged_credentials() {
        let table = DeviceTable {
            issued_at_ms: 1_764_000_000_000,
            devices: vec![DeviceEntry {
                id: "lamp-1".into(),
                disabled: false,
                credentials: vec![
                    Credential::Generated(GeneratedSecret {
                        verifier: "q83v".into(),
                        not_after_ms: Some(5),
                    }),
                    Credential::Certificate,
                ],
                publish_topics: vec!["city/{device}/#".into()],
                attributes: BTreeMap::from([("site".into(), "north".into())]),
            }],
        };
        let json = serde_json::to_value(&table).expect("serializes");
        assert_eq!(
            json["devices"][0]["credentials"][0],
            serde_json::json!({"type": "generated", "verifier": "q83v", "notAfterMs": 5})
        );
        assert_eq!(
            json["devices"][0]["credentials"][1],
            serde_json::json!({"type": "certificate"})
        );
        assert_eq!(json["issuedAtMs"], 1_764_000_000_000u64);
        assert!(json["devices"][0].get("disabled").is_none());
        let back: DeviceTable = serde_json::from_value(json).expect("deserializes");
        assert_eq!(back, table);
    }

    #[test]
    fn an_unknown_credential_type_is_refused() {
        let json = serde_json::json!({
            "issuedAtMs": 1,
            "devices": [{"id": "a", "credentials": [{"type": "telepathy"}]}]
        });
        assert!(serde_json::from_value::<DeviceTable>(json).is_err());
    }
}
