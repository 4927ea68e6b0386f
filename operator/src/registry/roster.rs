//! The roster writer: every [`INTERVAL`], each ApplicationApi's registered devices (from the
//! Device cache, with the activity the collector wrote into their status) into its roster
//! ConfigMap (`build::api::roster`), written only when the roster changed since the last
//! write or the operator's ConfigMap cache shows it deleted. At steady state it makes no
//! request; while devices come and go it writes each
//! ApplicationApi's roster at most once per interval, however many Devices changed.

use crate::build::api::roster::{config_map, config_map_name, roster_of};
use crate::controller::{apply, being_deleted, Context};
use crate::crd::ApplicationApi;
use kube::ResourceExt;
use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tributary_contract::device_roster::DeviceRoster;

/// How often the rosters are compared with the Device cache.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// An ApplicationApi by namespace and name.
type ApiKey = (String, String);

/// Writes the rosters until `stop` fires.
pub async fn run(ctx: Arc<Context>, mut stop: watch::Receiver<bool>) {
    let mut written: HashMap<ApiKey, u64> = HashMap::new();
    loop {
        tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => return,
            () = tokio::time::sleep(INTERVAL) => {}
        }
        cycle(&ctx, &mut written).await;
    }
}

/// One pass over the cached ApplicationApis.
async fn cycle(ctx: &Context, written: &mut HashMap<ApiKey, u64>) {
    let apis: Vec<ApplicationApi> = ctx
        .registry
        .apis()
        .into_iter()
        .filter(|api| !being_deleted(&api.metadata))
        .collect();
    written.retain(|key, _| apis.iter().any(|api| &api_key(api) == key));
    for api in &apis {
        let key = api_key(api);
        let devices = match ctx.registry.devices_in(&key.0).await {
            Ok(devices) => devices,
            Err(error) => {
                tracing::debug!(%error, "device cache not ready; rosters wait");
                return;
            }
        };
        let roster = roster_of(crate::registry::readable(&devices));
        let fingerprint = fingerprint(&roster);
        // Written before and still there (a deleted ConfigMap is written again).
        let name = config_map_name(&key.1);
        let gone = ctx
            .applied
            .all_absent(&key.0, &[("ConfigMap", name.as_str())]);
        if written.get(&key) == Some(&fingerprint) && !gone {
            continue;
        }
        let count = roster.devices.len();
        let outcome = match config_map(api, roster) {
            Ok(map) => apply(&ctx.client, &map).await.map(|_| ()),
            Err(error) => Err(error.into()),
        };
        match outcome {
            Ok(()) => {
                tracing::info!(namespace = %key.0, api = %key.1, devices = count, "device roster written");
                written.insert(key, fingerprint);
            }
            Err(error) => {
                tracing::warn!(namespace = %key.0, api = %key.1, %error, "device roster not written; retried next cycle");
            }
        }
    }
}

fn api_key(api: &ApplicationApi) -> ApiKey {
    (api.namespace().unwrap_or_default(), api.name_any())
}

/// A fingerprint of the roster's content (what decides whether to write it again).
fn fingerprint(roster: &DeviceRoster) -> u64 {
    let mut hasher = DefaultHasher::new();
    serde_json::to_vec(roster)
        .unwrap_or_default()
        .hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_contract::device_roster::RosterDevice;

    #[test]
    fn the_fingerprint_changes_with_the_content_only() {
        let roster = |connected| DeviceRoster {
            devices: vec![RosterDevice {
                device: "a".into(),
                resource: "a".into(),
                connected: Some(connected),
                ..RosterDevice::default()
            }],
            omitted: 0,
        };
        assert_eq!(fingerprint(&roster(true)), fingerprint(&roster(true)));
        assert_ne!(fingerprint(&roster(true)), fingerprint(&roster(false)));
    }
}
