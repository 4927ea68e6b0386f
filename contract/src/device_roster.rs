//! The registered devices an application API lists beside the devices its table holds: the
//! operator renders them from the namespace's `Device` resources (id, whether disabled or
//! Ready, and the activity the gateways reported) into a ConfigMap the API pods mount, and
//! the API reads the file again when the kubelet refreshes it.
//!
//! The file is gzip-compressed JSON (a ConfigMap holds at most 1 MiB):
//!
//! ```json
//! {"devices": [{"device": "press-1", "resource": "press-1", "ready": true,
//!               "connected": true, "lastSeen": "2026-12-01T03:00:00Z"}],
//!  "omitted": 0}
//! ```

use serde::{Deserialize, Serialize};

/// Name of the file inside the mounted ConfigMap.
pub const ROSTER_FILE: &str = "devices.json.gz";
/// Largest compressed roster the operator writes (a ConfigMap holds at most 1 MiB); the
/// devices that do not fit are counted in [`DeviceRoster::omitted`].
pub const MAX_COMPRESSED_BYTES: usize = 900 * 1024;
/// Largest roster the API decompresses (a bound on what a corrupt or hostile file costs).
pub const MAX_JSON_BYTES: u64 = 64 * 1024 * 1024;

/// The namespace's registered devices, sorted by device id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeviceRoster {
    /// One entry per device id, sorted by it.
    pub devices: Vec<RosterDevice>,
    /// Devices left out because the roster would not fit into a ConfigMap (the last ids).
    #[serde(default)]
    pub omitted: usize,
}

/// One registered device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RosterDevice {
    /// The id the device authenticates as (the device column of the stored rows).
    pub device: String,
    /// The `Device` resource's name.
    pub resource: String,
    /// The Device is disabled: gateways refuse it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
    /// Its credentials are issued and its Gateways know it (condition `Ready`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ready: bool,
    /// Whether it holds a connection to a gateway pod, as the gateways last reported
    /// (absent before any report).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connected: Option<bool>,
    /// Its last login or accepted message, as the gateways reported (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<String>,
}

impl DeviceRoster {
    /// The entry of `device` (the devices are sorted by id).
    pub fn get(&self, device: &str) -> Option<&RosterDevice> {
        self.devices
            .binary_search_by(|d| d.device.as_str().cmp(device))
            .ok()
            .map(|index| &self.devices[index])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_roster_reads_back_what_was_written_and_finds_devices_by_id() {
        let roster = DeviceRoster {
            devices: vec![
                RosterDevice {
                    device: "a".into(),
                    resource: "dev-a".into(),
                    ready: true,
                    connected: Some(true),
                    last_seen: Some("2026-12-01T03:00:00Z".into()),
                    ..RosterDevice::default()
                },
                RosterDevice {
                    device: "b".into(),
                    resource: "dev-b".into(),
                    disabled: true,
                    ..RosterDevice::default()
                },
            ],
            omitted: 0,
        };
        let text = serde_json::to_string(&roster).expect("serialized");
        assert_eq!(
            text,
            r#"{"devices":[{"device":"a","resource":"dev-a","ready":true,"connected":true,"lastSeen":"2026-12-01T03:00:00Z"},{"device":"b","resource":"dev-b","disabled":true}],"omitted":0}"#
        );
        let back: DeviceRoster = serde_json::from_str(&text).expect("read back");
        assert_eq!(back, roster);
        assert_eq!(back.get("b").map(|d| d.resource.as_str()), Some("dev-b"));
        assert!(back.get("c").is_none());
    }
}
