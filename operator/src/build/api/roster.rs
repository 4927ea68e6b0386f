//! The registered devices an ApplicationApi lists (`tributary_contract::device_roster`):
//! built from the namespace's Devices, compressed to fit a ConfigMap, and that ConfigMap,
//! which the API pods mount outside the pod-template hash (a Device's change reaches the
//! running pods when the kubelet refreshes the volume, without a restart).

use super::{child_name, COMPONENT};
use crate::build::{child_meta, gzip_json, BuildError};
use crate::conditions::is_ready;
use crate::crd::{ApplicationApi, Device};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::ByteString;
use std::collections::BTreeMap;
use tributary_contract::device_roster::{
    DeviceRoster, RosterDevice, MAX_COMPRESSED_BYTES, ROSTER_FILE,
};

/// Where the API pods mount the roster ConfigMap.
pub const ROSTER_DIR: &str = "/etc/tributary/devices";

/// Name of the roster ConfigMap of the ApplicationApi `api`.
pub fn config_map_name(api: &str) -> String {
    format!("{}-devices", child_name(api))
}

/// The path of the roster file inside the API pods.
pub fn roster_path() -> String {
    format!("{ROSTER_DIR}/{ROSTER_FILE}")
}

/// The roster of `devices`: one entry per device id (the oldest resource of an id, as the
/// gateways' tables keep it), sorted by id.
pub fn roster_of<'a>(devices: impl IntoIterator<Item = &'a Device>) -> DeviceRoster {
    let mut by_id: BTreeMap<String, &Device> = BTreeMap::new();
    for device in devices {
        let created = |d: &Device| d.metadata.creation_timestamp.clone();
        by_id
            .entry(device.device_id())
            .and_modify(|kept| {
                if (created(device), device.metadata.name.as_ref())
                    < (created(kept), kept.metadata.name.as_ref())
                {
                    *kept = device;
                }
            })
            .or_insert(device);
    }
    let devices = by_id
        .into_iter()
        .map(|(id, device)| {
            let status = device.status.as_ref();
            RosterDevice {
                device: id,
                resource: device.metadata.name.clone().unwrap_or_default(),
                disabled: device.spec.disabled,
                ready: status.is_some_and(|s| is_ready(&s.conditions)),
                connected: status.and_then(|s| s.connected),
                last_seen: status.and_then(|s| s.last_seen.clone()),
            }
        })
        .collect();
    DeviceRoster {
        devices,
        omitted: 0,
    }
}

/// The compressed roster, at most `limit` bytes: when the whole roster is larger, the
/// devices with the last ids are left out and counted in `omitted`.
pub fn compress(mut roster: DeviceRoster, limit: usize) -> Result<Vec<u8>, BuildError> {
    loop {
        let bytes = gzip_json("roster", &roster)?;
        if bytes.len() <= limit || roster.devices.is_empty() {
            return Ok(bytes);
        }
        // Keep the share that fits, with a margin, and try again.
        let count = roster.devices.len();
        let keep = (count as f64 * limit as f64 / bytes.len() as f64 * 0.95) as usize;
        let keep = keep.min(count - 1);
        roster.omitted += count - keep;
        roster.devices.truncate(keep);
    }
}

/// The roster ConfigMap of `api`, owned by it.
pub fn config_map(api: &ApplicationApi, roster: DeviceRoster) -> Result<ConfigMap, BuildError> {
    let name = api.metadata.name.clone().unwrap_or_default();
    Ok(ConfigMap {
        metadata: child_meta(api, &config_map_name(&name), COMPONENT)?,
        binary_data: Some(BTreeMap::from([(
            ROSTER_FILE.to_owned(),
            ByteString(compress(roster, MAX_COMPRESSED_BYTES)?),
        )])),
        ..ConfigMap::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::device::{DeviceSpec, DeviceStatus};
    use crate::crd::Condition;
    use flate2::read::GzDecoder;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use std::io::Read;

    fn device(name: &str, id: Option<&str>, created: i64) -> Device {
        let mut spec: DeviceSpec = serde_json::from_value(
            serde_json::json!({"gateways": ["gw"], "credentials": {"generated": {}}}),
        )
        .expect("a device spec");
        spec.device_id = id.map(str::to_owned);
        let mut device = Device::new(name, spec);
        device.metadata.creation_timestamp = Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(created).expect("a time"),
        ));
        device
    }

    fn read(bytes: &[u8]) -> DeviceRoster {
        let mut json = String::new();
        GzDecoder::new(bytes)
            .read_to_string(&mut json)
            .expect("gzip");
        serde_json::from_str(&json).expect("a roster")
    }

    #[test]
    fn the_roster_lists_each_device_id_once_with_its_status_sorted_by_id() {
        let mut ready = device("press-2", None, 10);
        ready.status = Some(DeviceStatus {
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: "Ready".into(),
                message: String::new(),
                last_transition_time: "2026-12-01T03:00:00Z".into(),
                observed_generation: None,
            }],
            connected: Some(true),
            last_seen: Some("2026-12-01T03:00:00Z".into()),
            ..DeviceStatus::default()
        });
        let mut disabled = device("press-1", None, 10);
        disabled.spec.disabled = true;
        // Two resources claim the id `shared`: the older one is listed.
        let newer = device("b-newer", Some("shared"), 20);
        let older = device("z-older", Some("shared"), 5);
        let roster = roster_of([&ready, &newer, &disabled, &older]);
        let listed: Vec<(&str, &str)> = roster
            .devices
            .iter()
            .map(|d| (d.device.as_str(), d.resource.as_str()))
            .collect();
        assert_eq!(
            listed,
            [
                ("press-1", "press-1"),
                ("press-2", "press-2"),
                ("shared", "z-older")
            ]
        );
        let press2 = roster.get("press-2").expect("press-2 listed");
        assert!(press2.ready && !press2.disabled);
        assert_eq!(press2.connected, Some(true));
        assert_eq!(press2.last_seen.as_deref(), Some("2026-12-01T03:00:00Z"));
        let press1 = roster.get("press-1").expect("press-1 listed");
        assert!(press1.disabled && !press1.ready && press1.connected.is_none());
    }

    #[test]
    fn a_roster_larger_than_the_bound_leaves_out_the_last_ids_and_counts_them() {
        let devices: Vec<Device> = (0..20_000)
            .map(|i| device(&format!("sensor-{i:05}-{:x}", i * 7919), None, 1))
            .collect();
        let whole = compress(roster_of(&devices), usize::MAX).expect("compressed");
        let limit = whole.len() / 3;
        let bytes = compress(roster_of(&devices), limit).expect("compressed");
        assert!(bytes.len() <= limit, "{} > {limit}", bytes.len());
        let roster = read(&bytes);
        assert!(roster.omitted > 0);
        assert_eq!(roster.devices.len() + roster.omitted, 20_000);
        assert_eq!(roster.devices[0].device, "sensor-00000-0");
        // What is kept is a prefix by id.
        let all = roster_of(&devices);
        assert_eq!(roster.devices[..], all.devices[..roster.devices.len()]);
        // Under the bound, nothing is left out.
        assert_eq!(read(&whole).omitted, 0);
    }
}
