//! The roster writer: every [`INTERVAL`], each ApplicationApi's registered devices (from the
//! Device cache, with the activity the collector wrote into their status) into its roster
//! ConfigMap (`build::api::roster`), through the operator's skip-unchanged apply
//! (`controller::applied`): written only when the roster changed or the ConfigMap was
//! edited or deleted. At steady state it makes no request; while devices come and go it
//! writes each ApplicationApi's roster at most once per interval, however many Devices
//! changed.

use crate::build::api::roster::{config_map, roster_of};
use crate::controller::applied::apply_child;
use crate::controller::{being_deleted, Context};
use kube::ResourceExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often the rosters are compared with the Device cache.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// Writes the rosters until `stop` fires.
pub async fn run(ctx: Arc<Context>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => return,
            () = tokio::time::sleep(INTERVAL) => {}
        }
        cycle(&ctx).await;
    }
}

/// One pass over the cached ApplicationApis.
async fn cycle(ctx: &Context) {
    for api in ctx.registry.apis() {
        if being_deleted(&api.metadata) {
            continue;
        }
        let (namespace, name) = (api.namespace().unwrap_or_default(), api.name_any());
        let devices = match ctx.registry.devices_in(&namespace).await {
            Ok(devices) => devices,
            Err(error) => {
                tracing::debug!(%error, "device cache not ready; rosters wait");
                return;
            }
        };
        let roster = roster_of(crate::registry::readable(&devices));
        let outcome = match config_map(&api, roster) {
            Ok(map) => apply_child(ctx, &map).await,
            Err(error) => Err(error.into()),
        };
        if let Err(error) = outcome {
            tracing::warn!(%namespace, api = %name, %error, "device roster not written; retried next cycle");
        }
    }
}
