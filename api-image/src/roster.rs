//! The registered devices (`tributary_contract::device_roster`): a file the operator renders
//! from the Device resources into a mounted ConfigMap, read again every [`RELOAD_EVERY`]
//! (the kubelet swaps the file in place), and merged by [`merge`] with the devices the
//! table holds for `/v1/devices`.
//!
//! A missing file is an empty roster (the operator writes it a few seconds after the API
//! starts); an unreadable one keeps the last good roster and is logged once per change.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::DateTime;
use flate2::read::GzDecoder;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tributary_contract::device_roster::{
    DeviceRoster, RosterDevice, MAX_COMPRESSED_BYTES, MAX_JSON_BYTES,
};

use crate::keys::Scope;

/// How often the file is read again.
pub const RELOAD_EVERY: Duration = Duration::from_secs(10);

/// The current roster, shared by the requests.
#[derive(Debug, Default)]
pub struct Roster {
    current: RwLock<Arc<DeviceRoster>>,
}

impl Roster {
    /// The roster now.
    pub fn get(&self) -> Arc<DeviceRoster> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the roster.
    pub fn set(&self, roster: DeviceRoster) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(roster);
    }
}

/// Reads a roster file: `Ok(None)` when it does not exist.
pub fn read(path: &Path) -> Result<Option<DeviceRoster>, String> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let mut compressed = Vec::new();
    file.take(2 * MAX_COMPRESSED_BYTES as u64 + 1)
        .read_to_end(&mut compressed)
        .map_err(|e| e.to_string())?;
    if compressed.len() > 2 * MAX_COMPRESSED_BYTES {
        return Err(format!("larger than {} bytes", 2 * MAX_COMPRESSED_BYTES));
    }
    let mut json = Vec::new();
    GzDecoder::new(compressed.as_slice())
        .take(MAX_JSON_BYTES + 1)
        .read_to_end(&mut json)
        .map_err(|e| format!("not gzip: {e}"))?;
    if json.len() as u64 > MAX_JSON_BYTES {
        return Err(format!("more than {MAX_JSON_BYTES} bytes uncompressed"));
    }
    let mut roster: DeviceRoster =
        serde_json::from_slice(&json).map_err(|e| format!("not a device roster: {e}"))?;
    // Binary searches rely on the order; a file written by hand may lack it.
    roster.devices.sort_by(|a, b| a.device.cmp(&b.device));
    roster.devices.dedup_by(|a, b| a.device == b.device);
    Ok(Some(roster))
}

/// Keeps `roster` equal to the file at `path` until `stop`.
pub async fn watch(path: PathBuf, roster: Arc<Roster>, stop: CancellationToken) {
    let mut last_error: Option<String> = None;
    loop {
        match read(&path) {
            Ok(read) => {
                let read = read.unwrap_or_default();
                if *roster.get() != read {
                    tracing::info!(
                        devices = read.devices.len(),
                        omitted = read.omitted,
                        "device roster loaded"
                    );
                    roster.set(read);
                }
                last_error = None;
            }
            Err(error) => {
                if last_error.as_ref() != Some(&error) {
                    tracing::warn!(path = %path.display(), %error, "device roster unreadable; keeping the last one");
                }
                last_error = Some(error);
            }
        }
        tokio::select! {
            () = tokio::time::sleep(RELOAD_EVERY) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// A device as the table reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDevice {
    /// The device column (`None` for rows without one).
    pub device: Option<String>,
    /// The newest row's time.
    pub last_seen: Option<String>,
    /// Rows stored.
    pub messages: i64,
}

/// The later of two RFC 3339 times (either may be missing or unreadable).
fn later(a: Option<&str>, b: Option<&str>) -> Option<String> {
    let time = |t: Option<&str>| t.and_then(|t| DateTime::parse_from_rfc3339(t).ok());
    match (time(a), time(b)) {
        (Some(x), Some(y)) => Some(if y > x { b } else { a }.unwrap_or_default().to_owned()),
        (Some(_), None) => a.map(str::to_owned),
        (None, Some(_)) => b.map(str::to_owned),
        (None, None) => a.or(b).map(str::to_owned),
    }
}

fn entry(stored: Option<&StoredDevice>, registered: Option<&RosterDevice>) -> Value {
    let device = stored
        .and_then(|s| s.device.clone())
        .or_else(|| registered.map(|r| r.device.clone()));
    let mut value = json!({
        "device": device,
        "lastSeen": later(
            stored.and_then(|s| s.last_seen.as_deref()),
            registered.and_then(|r| r.last_seen.as_deref()),
        ),
        "messages": stored.map_or(0, |s| s.messages),
        "registered": registered.is_some(),
    });
    if let Some(r) = registered {
        value["resource"] = json!(r.resource);
        value["ready"] = json!(r.ready);
        value["disabled"] = json!(r.disabled);
        value["connected"] = json!(r.connected);
    }
    value
}

/// The devices of `/v1/devices`: the table's (the first `limit` by id, rows without a
/// device last) and the registered ones in `scope`, one entry per id, sorted the same way,
/// at most `limit`.
pub fn merge(
    stored: &[StoredDevice],
    roster: &DeviceRoster,
    scope: &Scope,
    limit: usize,
) -> Vec<Value> {
    let mut registered = roster
        .devices
        .iter()
        .filter(|d| scope.allows(&d.device))
        .peekable();
    let mut stored = stored.iter().peekable();
    let mut merged = Vec::new();
    while merged.len() < limit {
        let next_stored = stored.peek().map(|s| s.device.as_deref());
        let next_registered = registered.peek().map(|r| r.device.as_str());
        let value = match (next_stored, next_registered) {
            (None, None) => break,
            (Some(Some(s)), Some(r)) if s == r => entry(stored.next(), registered.next()),
            (Some(Some(s)), Some(r)) if s < r => entry(stored.next(), None),
            (Some(_), None) => entry(stored.next(), None),
            // A registered id comes before the next stored one (or before rows without a
            // device, which sort last).
            (_, Some(_)) => entry(None, registered.next()),
        };
        merged.push(value);
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use std::io::Write;

    fn stored(device: Option<&str>, last_seen: &str, messages: i64) -> StoredDevice {
        StoredDevice {
            device: device.map(str::to_owned),
            last_seen: Some(last_seen.to_owned()),
            messages,
        }
    }

    fn registered(device: &str, last_seen: Option<&str>) -> RosterDevice {
        RosterDevice {
            device: device.into(),
            resource: format!("res-{device}"),
            ready: true,
            connected: Some(last_seen.is_some()),
            last_seen: last_seen.map(str::to_owned),
            ..RosterDevice::default()
        }
    }

    fn roster(devices: Vec<RosterDevice>) -> DeviceRoster {
        DeviceRoster {
            devices,
            omitted: 0,
        }
    }

    #[test]
    fn stored_and_registered_devices_merge_by_id_in_order_with_the_later_time() {
        let table = [
            stored(Some("b"), "2026-12-01T03:00:00.000000Z", 5),
            stored(Some("d"), "2026-12-01T03:00:00.000000Z", 2),
            stored(None, "2026-12-01T01:00:00.000000Z", 1),
        ];
        let registry = roster(vec![
            registered("a", None),
            registered("b", Some("2026-12-01T04:00:00Z")),
            registered("c", Some("2026-12-01T02:00:00Z")),
        ]);
        let merged = merge(&table, &registry, &Scope::All, 10);
        let ids: Vec<Value> = merged.iter().map(|d| d["device"].clone()).collect();
        assert_eq!(
            ids,
            [json!("a"), json!("b"), json!("c"), json!("d"), json!(null)]
        );
        // `a` never sent anything: registered, no rows, no time.
        assert_eq!(merged[0]["messages"], 0);
        assert_eq!(merged[0]["registered"], true);
        assert_eq!(merged[0]["lastSeen"], Value::Null);
        // `b`: the rows' count, the gateways' later time, the Device's status.
        assert_eq!(merged[1]["messages"], 5);
        assert_eq!(merged[1]["lastSeen"], "2026-12-01T04:00:00Z");
        assert_eq!(merged[1]["resource"], "res-b");
        assert_eq!(merged[1]["connected"], true);
        // `d` is only in the table: not registered, no status fields.
        assert_eq!(merged[3]["registered"], false);
        assert!(merged[3].get("connected").is_none());
        assert_eq!(merged[3]["lastSeen"], "2026-12-01T03:00:00.000000Z");
    }

    #[test]
    fn the_limit_and_the_keys_scope_apply_to_registered_devices_too() {
        let table = [stored(Some("site-a-2"), "2026-12-01T03:00:00Z", 1)];
        let registry = roster(vec![
            registered("site-a-1", None),
            registered("site-a-3", None),
            registered("site-b-1", None),
        ]);
        let scope = Scope::Prefix("site-a-".into());
        let ids = |merged: Vec<Value>| -> Vec<String> {
            merged
                .iter()
                .map(|d| d["device"].as_str().expect("an id").to_owned())
                .collect()
        };
        assert_eq!(
            ids(merge(&table, &registry, &scope, 10)),
            ["site-a-1", "site-a-2", "site-a-3"]
        );
        assert_eq!(
            ids(merge(&table, &registry, &scope, 2)),
            ["site-a-1", "site-a-2"]
        );
        let one = Scope::Devices(vec!["site-b-1".into()]);
        assert_eq!(ids(merge(&[], &registry, &one, 10)), ["site-b-1"]);
    }

    fn write(path: &Path, bytes: &[u8]) {
        let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(bytes).expect("gzip");
        std::fs::write(path, encoder.finish().expect("gzip")).expect("write");
    }

    #[test]
    fn a_file_is_read_sorted_and_a_missing_or_bad_one_says_so() {
        let dir = std::env::temp_dir().join(format!("roster-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("devices.json.gz");
        assert_eq!(read(&path), Ok(None));
        write(
            &path,
            br#"{"devices":[{"device":"b","resource":"b"},{"device":"a","resource":"a"}]}"#,
        );
        let roster = read(&path).expect("readable").expect("present");
        assert_eq!(roster.devices[0].device, "a");
        assert!(roster.get("b").is_some());
        write(&path, b"[1, 2]");
        assert!(read(&path)
            .expect_err("refused")
            .contains("not a device roster"));
        std::fs::write(&path, b"plain text").expect("write");
        assert!(read(&path).expect_err("refused").contains("not gzip"));
        std::fs::remove_dir_all(&dir).expect("remove temp dir");
    }

    #[test]
    fn a_roster_that_inflates_past_the_bound_is_refused() {
        let dir = std::env::temp_dir().join(format!("roster-bomb-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("devices.json.gz");
        let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![b' '; 1024 * 1024];
        for _ in 0..(MAX_JSON_BYTES / zeros.len() as u64 + 1) {
            encoder.write_all(&zeros).expect("gzip");
        }
        std::fs::write(&path, encoder.finish().expect("gzip")).expect("write");
        assert!(read(&path).expect_err("refused").contains("uncompressed"));
        std::fs::remove_dir_all(&dir).expect("remove temp dir");
    }
}
