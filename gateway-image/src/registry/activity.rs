//! What each table device did on this pod since it started: last seen, messages accepted
//! and refused. Only ids of the current table are kept, so the map is bounded by the table.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tributary_contract::device_table::DeviceActivity;

use super::table::Table;

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    last_seen_ms: Option<u64>,
    accepted: u64,
    rejected: u64,
    commands_expired: u64,
}

/// Per-device activity of table devices.
#[derive(Debug, Default)]
pub struct Activity {
    devices: Mutex<HashMap<String, Counts>>,
}

/// One event of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A successful login.
    Login,
    /// A message accepted.
    Accepted,
    /// A message refused, or a failed login.
    Rejected,
    /// A command for the device expired before it took it.
    CommandExpired,
}

impl Activity {
    /// Records `event` for `device` at `now_ms`; the caller checked it is a table device.
    pub fn record(&self, device: &str, event: Event, now_ms: u64) {
        let mut devices = self.lock();
        let counts = match devices.get_mut(device) {
            Some(counts) => counts,
            None => devices.entry(device.to_owned()).or_default(),
        };
        match event {
            Event::Login => counts.last_seen_ms = Some(now_ms),
            Event::Accepted => {
                counts.accepted += 1;
                counts.last_seen_ms = Some(now_ms);
            }
            Event::Rejected => counts.rejected += 1,
            Event::CommandExpired => counts.commands_expired += 1,
        }
    }

    /// Drops the entries of devices `table` no longer has.
    pub fn retain_table(&self, table: &Table) {
        self.lock().retain(|id, _| table.contains(id));
    }

    /// Every device of `table` that was seen or holds connections (`connections` counts
    /// them), sorted by id.
    pub fn report(&self, table: &Table, connections: impl Fn(&str) -> u32) -> Vec<DeviceActivity> {
        let devices = self.lock();
        let mut out: Vec<DeviceActivity> = table
            .ids()
            .filter_map(|id| {
                let live = connections(id);
                let counts = devices.get(id);
                (live > 0 || counts.is_some()).then(|| {
                    let counts = counts.copied().unwrap_or_default();
                    DeviceActivity {
                        id: id.clone(),
                        connections: live,
                        last_seen_ms: counts.last_seen_ms,
                        accepted: counts.accepted,
                        rejected: counts.rejected,
                        commands_expired: counts.commands_expired,
                    }
                })
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Counts>> {
        self.devices.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::table::parse_table;

    fn table(ids: &[&str]) -> Table {
        let devices: Vec<_> = ids.iter().map(|id| serde_json::json!({"id": id})).collect();
        let json = serde_json::json!({"issuedAtMs": 1, "devices": devices});
        parse_table(json.to_string().as_bytes()).expect("table")
    }

    #[test]
    fn the_report_counts_per_device_and_lists_connected_ones_never_seen() {
        let activity = Activity::default();
        let table = table(&["a", "b", "c"]);
        activity.record("a", Event::Login, 10);
        activity.record("a", Event::Accepted, 20);
        activity.record("a", Event::Accepted, 30);
        activity.record("a", Event::Rejected, 40);
        activity.record("c", Event::CommandExpired, 50);
        let report = activity.report(&table, |id| u32::from(id == "b"));
        assert_eq!(report.len(), 3);
        assert_eq!(
            (
                report[0].id.as_str(),
                report[0].accepted,
                report[0].rejected
            ),
            ("a", 2, 1)
        );
        assert_eq!(report[0].last_seen_ms, Some(30), "a refusal is not 'seen'");
        assert_eq!((report[1].id.as_str(), report[1].connections), ("b", 1));
        assert_eq!(report[1].last_seen_ms, None);
        assert_eq!(
            (report[2].id.as_str(), report[2].commands_expired),
            ("c", 1)
        );
        assert_eq!(report[2].last_seen_ms, None, "an expiry is not 'seen'");
    }

    #[test]
    fn devices_removed_from_the_table_are_forgotten() {
        let activity = Activity::default();
        activity.record("a", Event::Login, 1);
        activity.record("b", Event::Login, 1);
        let next = table(&["b"]);
        activity.retain_table(&next);
        let report = activity.report(&table(&["a", "b"]), |_| 0);
        assert_eq!(report.len(), 1);
        assert_eq!(report[0].id, "b");
    }
}
