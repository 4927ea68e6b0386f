//! The collector: every few seconds (and at once when a table was published) it asks each
//! gateway pod what its devices did, pushes the current table to pods that lack it, and
//! writes the devices' activity into their status (and the Gateways' connected count).
//!
//! Status writes are bounded: a device is written when it connects or disconnects, and
//! otherwise at most once per [`REFRESH`] while its counters move; each cycle writes at
//! most [`WRITES_PER_CYCLE`] Devices (the rest wait for the next cycle). The activity
//! fields are written under their own field manager, so the Device controller's status
//! writes never undo them.

use super::{GatewayKey, Published};
use crate::build::selector_labels;
use crate::controller::Context;
use crate::crd::{Device, Gateway};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::Api;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tributary_contract::device_table::DeviceReport;

/// How often the pods are asked when nothing was published.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(5);
/// A device whose connection state did not change is written at most this often.
pub const REFRESH: Duration = Duration::from_secs(60);
/// Most Device status writes per cycle.
pub const WRITES_PER_CYCLE: usize = 50;
/// The field manager of the activity fields.
pub const ACTIVITY_MANAGER: &str = "tributary-operator-activity";
const PARALLEL: usize = 8;

/// One device's activity across the pods of every Gateway it uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Activity {
    /// Live connections.
    pub connections: u64,
    /// Last seen, Unix milliseconds.
    pub last_seen_ms: Option<u64>,
    /// Messages accepted.
    pub accepted: u64,
    /// Messages and logins refused.
    pub rejected: u64,
    /// Commands that expired before the device took them.
    pub commands_expired: u64,
}

impl Activity {
    fn add(&mut self, other: &tributary_contract::device_table::DeviceActivity) {
        self.merge(&Activity {
            connections: u64::from(other.connections),
            last_seen_ms: other.last_seen_ms,
            accepted: other.accepted,
            rejected: other.rejected,
            commands_expired: other.commands_expired,
        });
    }

    /// Adds another pod's or Gateway's activity of the same device.
    fn merge(&mut self, other: &Activity) {
        self.connections += other.connections;
        self.last_seen_ms = self.last_seen_ms.max(other.last_seen_ms);
        self.accepted += other.accepted;
        self.rejected += other.rejected;
        self.commands_expired += other.commands_expired;
    }

    /// The status fields it is written as.
    pub fn status(&self) -> serde_json::Value {
        let last_seen = self
            .last_seen_ms
            .and_then(|ms| Timestamp::from_millisecond(i64::try_from(ms).ok()?).ok())
            .and_then(|t| t.round(k8s_openapi::jiff::Unit::Second).ok())
            .map(|t| t.to_string());
        serde_json::json!({
            "connected": self.connections > 0,
            "connections": self.connections,
            "lastSeen": last_seen,
            "messagesAccepted": self.accepted,
            "messagesRejected": self.rejected,
            "commandsExpired": self.commands_expired,
        })
    }
}

/// Adds one pod's report to the activity by Device resource (`resources` maps the
/// table's device ids to resource names); ids the table does not know are ignored.
pub fn merge_report(
    activity: &mut BTreeMap<(String, String), Activity>,
    namespace: &str,
    resources: &BTreeMap<String, String>,
    report: &DeviceReport,
) {
    for device in &report.devices {
        if let Some(resource) = resources.get(&device.id) {
            activity
                .entry((namespace.to_owned(), resource.clone()))
                .or_default()
                .add(device);
        }
    }
}

/// What the collector writes into a Gateway's status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayActivity {
    /// Devices with a live connection.
    pub connected: i64,
    /// Devices in the table.
    pub devices: i64,
    /// When the table was issued (Unix milliseconds).
    pub issued_at_ms: u64,
    /// Pods holding the current table.
    pub pods_current: i64,
    /// Pods asked.
    pub pods: i64,
}

impl GatewayActivity {
    /// The status fields it is written as.
    pub fn status(&self) -> serde_json::Value {
        let issued_at = Timestamp::from_millisecond(i64::try_from(self.issued_at_ms).unwrap_or(0))
            .map(|t| t.to_string())
            .unwrap_or_default();
        serde_json::json!({
            "connectedDevices": self.connected,
            "deviceTable": {
                "devices": self.devices,
                "issuedAt": issued_at,
                "podsCurrent": self.pods_current,
                "pods": self.pods,
            },
        })
    }
}

/// What was last written for a device, and when.
struct Written {
    activity: Activity,
    at: Instant,
}

/// Whether a device's new activity is written now: it connected or disconnected, commands
/// for it expired, or it changed and the last write is older than [`REFRESH`].
fn due(last: Option<&(Activity, Instant)>, now: &Activity, at: Instant) -> bool {
    match last {
        None => true,
        Some((before, written)) => {
            (before.connections > 0) != (now.connections > 0)
                || newly_expired(Some(before), now) > 0
                || (before != now && at.duration_since(*written) >= REFRESH)
        }
    }
}

/// Commands that expired since the activity last written (none when the gateways'
/// counters went back: their pods restarted).
fn newly_expired(before: Option<&Activity>, now: &Activity) -> u64 {
    now.commands_expired
        .saturating_sub(before.map_or(0, |b| b.commands_expired))
}

/// A Warning Event on the Device: commands for it expired before it took them.
async fn report_expired(ctx: &Context, namespace: &str, name: &str, count: u64) {
    let event = Event {
        type_: EventType::Warning,
        reason: "CommandsExpired".to_owned(),
        note: Some(format!(
            "{count} command(s) expired before the device took them (it was offline longer \
             than their time-to-live, or not subscribed)"
        )),
        action: "Deliver".to_owned(),
        secondary: None,
    };
    let device = ObjectReference {
        api_version: Some("tributary.dev/v1alpha1".to_owned()),
        kind: Some("Device".to_owned()),
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        ..ObjectReference::default()
    };
    if let Err(error) = ctx.recorder.publish(&event, &device).await {
        tracing::warn!(%error, device = name, "publishing a CommandsExpired Event failed");
    }
}

/// Runs the collector until `stop` fires.
pub async fn run(ctx: Arc<Context>, mut stop: watch::Receiver<bool>) {
    let mut written: HashMap<(String, String), Written> = HashMap::new();
    let mut gateways: HashMap<GatewayKey, GatewayActivity> = HashMap::new();
    loop {
        tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => return,
            () = ctx.registry.changed.notified() => {}
            () = tokio::time::sleep(REPORT_INTERVAL) => {}
        }
        let (activity, per_gateway) = cycle(&ctx).await;
        write_devices(&ctx, &activity, &mut written).await;
        write_gateways(&ctx, per_gateway, &mut gateways).await;
    }
}

/// Asks every pod of every published Gateway; pushes the table where it is missing.
async fn cycle(
    ctx: &Context,
) -> (
    BTreeMap<(String, String), Activity>,
    BTreeMap<GatewayKey, GatewayActivity>,
) {
    let mut activity = BTreeMap::new();
    let mut per_gateway = BTreeMap::new();
    for (key, published) in ctx.registry.published() {
        // A Gateway deleted without a reconcile (no finalizer) leaves its table here.
        if ctx.registry.gateway_cached(&key.0, &key.1).await == Some(false) {
            ctx.registry.withdraw(&key);
            continue;
        }
        let (reports, pods, pods_current) = gateway_reports(ctx, &key, &published).await;
        let mut devices = BTreeMap::new();
        for report in &reports {
            merge_report(&mut devices, &key.0, &published.resources, report);
        }
        let online = devices.values().filter(|a| a.connections > 0).count();
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        per_gateway.insert(
            key.clone(),
            GatewayActivity {
                connected: count(online),
                devices: count(published.resources.len()),
                issued_at_ms: published.issued_at_ms,
                pods_current: count(pods_current),
                pods: count(pods),
            },
        );
        for (device, seen) in devices {
            activity
                .entry(device)
                .or_insert_with(Activity::default)
                .merge(&seen);
        }
    }
    (activity, per_gateway)
}

/// The reports of one Gateway's pods, how many pods were asked and how many hold the
/// current table; a pod whose table is older (or unknown) gets the current one.
async fn gateway_reports(
    ctx: &Context,
    key: &GatewayKey,
    published: &Arc<Published>,
) -> (Vec<DeviceReport>, usize, usize) {
    let selector = selector_labels(&key.1, "gateway");
    let pods = ctx.registry.pods_of(&key.0, &selector);
    let addresses: Vec<_> = pods
        .iter()
        .filter_map(|pod| super::sync::pod_address(pod))
        .collect();
    let asked = addresses.len();
    let answers: Vec<(Option<DeviceReport>, bool)> = futures::stream::iter(addresses)
        .map(|addr| async move {
            let sync = &ctx.registry.sync;
            let report = sync.report(addr, &published.token).await;
            let current = report
                .as_ref()
                .is_ok_and(|r| r.table_issued_at_ms >= published.issued_at_ms);
            if current {
                return (report.ok(), true);
            }
            let pushed = sync.push(addr, &published.token, published.table.clone()).await;
            if let Err(error) = &pushed {
                tracing::debug!(%addr, %error, gateway = %key.1, "pushing the device table failed; retried next cycle");
            }
            (report.ok(), pushed.is_ok())
        })
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    let current = answers.iter().filter(|(_, current)| *current).count();
    let reports = answers
        .into_iter()
        .filter_map(|(report, _)| report)
        .collect();
    (reports, asked, current)
}

/// Writes the activity of devices that are due, at most [`WRITES_PER_CYCLE`]; devices
/// that were connected and are no longer reported are written as disconnected.
async fn write_devices(
    ctx: &Context,
    activity: &BTreeMap<(String, String), Activity>,
    written: &mut HashMap<(String, String), Written>,
) {
    let now = Instant::now();
    let gone: Vec<_> = written
        .iter()
        .filter(|(key, w)| w.activity.connections > 0 && !activity.contains_key(*key))
        .map(|(key, w)| {
            let mut idle = w.activity.clone();
            idle.connections = 0;
            (key.clone(), idle)
        })
        .collect();
    let candidates = activity
        .iter()
        .map(|(key, a)| (key.clone(), a.clone()))
        .chain(gone);
    let mut writes = 0;
    for (key, new) in candidates {
        let last = written.get(&key).map(|w| (w.activity.clone(), w.at));
        if writes >= WRITES_PER_CYCLE || !due(last.as_ref(), &new, now) {
            continue;
        }
        writes += 1;
        let api: Api<Device> = Api::namespaced(ctx.client.clone(), &key.0);
        let patch = serde_json::json!({
            "apiVersion": "tributary.dev/v1alpha1",
            "kind": "Device",
            "status": new.status(),
        });
        let params = PatchParams::apply(ACTIVITY_MANAGER).force();
        match api
            .patch_status(&key.1, &params, &Patch::Apply(&patch))
            .await
        {
            Ok(_) => {
                let expired = newly_expired(last.as_ref().map(|(a, _)| a), &new);
                if expired > 0 {
                    report_expired(ctx, &key.0, &key.1, expired).await;
                }
                written.insert(
                    key,
                    Written {
                        activity: new,
                        at: now,
                    },
                );
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {
                written.remove(&key);
            }
            Err(error) => {
                tracing::warn!(%error, device = %key.1, "writing a Device's activity failed")
            }
        }
    }
}

/// Writes each Gateway's connected devices and table state when they changed.
async fn write_gateways(
    ctx: &Context,
    per_gateway: BTreeMap<GatewayKey, GatewayActivity>,
    written: &mut HashMap<GatewayKey, GatewayActivity>,
) {
    written.retain(|key, _| per_gateway.contains_key(key));
    for (key, activity) in per_gateway {
        if written.get(&key) == Some(&activity) {
            continue;
        }
        let api: Api<Gateway> = Api::namespaced(ctx.client.clone(), &key.0);
        let patch = serde_json::json!({
            "apiVersion": "tributary.dev/v1alpha1",
            "kind": "Gateway",
            "status": activity.status(),
        });
        let params = PatchParams::apply(ACTIVITY_MANAGER).force();
        match api
            .patch_status(&key.1, &params, &Patch::Apply(&patch))
            .await
        {
            Ok(_) => {
                written.insert(key, activity);
            }
            Err(error) => {
                tracing::debug!(%error, gateway = %key.1, "writing the Gateway's device state failed")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_contract::device_table::DeviceActivity;

    fn seen(id: &str, connections: u32, last: u64, accepted: u64) -> DeviceActivity {
        DeviceActivity {
            id: id.into(),
            connections,
            last_seen_ms: Some(last),
            accepted,
            rejected: 1,
            commands_expired: 0,
        }
    }

    #[test]
    fn reports_of_several_pods_add_up_per_device_resource() {
        let resources = BTreeMap::from([("lamp-1".to_owned(), "lamp-one".to_owned())]);
        let mut activity = BTreeMap::new();
        for report in [
            DeviceReport {
                table_issued_at_ms: 1,
                devices: vec![seen("lamp-1", 1, 1_000, 5), seen("stranger", 1, 9, 9)],
            },
            DeviceReport {
                table_issued_at_ms: 1,
                devices: vec![seen("lamp-1", 0, 2_000, 2)],
            },
        ] {
            merge_report(&mut activity, "city", &resources, &report);
        }
        let total = &activity[&("city".to_owned(), "lamp-one".to_owned())];
        assert_eq!(activity.len(), 1, "ids outside the table are ignored");
        assert_eq!(total.connections, 1);
        assert_eq!(total.last_seen_ms, Some(2_000));
        assert_eq!((total.accepted, total.rejected), (7, 2));
        let status = total.status();
        assert_eq!(status["connected"], true);
        assert_eq!(status["lastSeen"], "1970-01-01T00:00:02Z");
    }

    #[test]
    fn connection_changes_are_written_at_once_other_changes_at_most_each_refresh() {
        let start = Instant::now();
        let online = Activity {
            connections: 1,
            last_seen_ms: Some(1),
            accepted: 1,
            rejected: 0,
            commands_expired: 0,
        };
        assert!(due(None, &online, start));
        let last = (online.clone(), start);
        let busier = Activity {
            accepted: 2,
            ..online.clone()
        };
        assert!(!due(Some(&last), &busier, start + Duration::from_secs(5)));
        assert!(due(Some(&last), &busier, start + REFRESH));
        assert!(!due(Some(&last), &online, start + REFRESH), "unchanged");
        let offline = Activity {
            connections: 0,
            ..online.clone()
        };
        assert!(due(Some(&last), &offline, start + Duration::from_secs(1)));
        let expired = Activity {
            commands_expired: 2,
            ..online.clone()
        };
        assert!(
            due(Some(&last), &expired, start + Duration::from_secs(1)),
            "expired commands are reported at once"
        );
        assert_eq!(newly_expired(Some(&online), &expired), 2);
        assert_eq!(newly_expired(Some(&expired), &online), 0, "a pod restarted");
    }
}
