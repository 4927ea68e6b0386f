//! ApplicationApi controller: validate → dereference (Sinks, brokers, keys; see
//! [`dereference`]) → build (`build::api`) → apply (keys Secret, ConfigMap, Service,
//! NetworkPolicy, Deployment) → status (endpoint, keys Secret, dashboard path, `Ready`).

mod dereference;

use super::applied::{apply_child, apply_kept};
use super::{
    being_deleted, broker_user, checked, patch_status, ready_condition, Context, Error, Outcome,
};
use crate::build::api::{self as build, keys, ApiChildren};
use crate::crd::{ApplicationApi, ApplicationApiStatus};
use k8s_openapi::api::apps::v1::Deployment;
use kube::runtime::controller::Action;
use kube::ResourceExt;
use std::sync::Arc;
use tracing::Instrument;

impl broker_user::Workload for ApplicationApi {
    const KIND: &'static str = "api";
    fn child(&self) -> String {
        build::child_name(&self.name_any())
    }
}

/// One reconcile of an ApplicationApi.
pub async fn reconcile(api: Arc<ApplicationApi>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile("ApplicationApi");
    if being_deleted(&api.metadata) {
        // Children go with it through garbage collection; its broker users are removed.
        return broker_user::finalize(&ctx, api.as_ref()).await;
    }
    let span = tracing::info_span!("reconcile", kind = "ApplicationApi", name = %api.name_any(), namespace = ?api.namespace());
    let current = api.status.clone().unwrap_or_default();
    let mut status = ApplicationApiStatus {
        ready_replicas: current.ready_replicas,
        ..ApplicationApiStatus::default()
    };
    let outcome = steps(&api, &ctx, &mut status).instrument(span).await?;
    status.conditions =
        ready_condition(&ctx, api.as_ref(), &current.conditions, &outcome.ready).await;
    status.observed_generation = api.metadata.generation;
    let written = api.status.as_ref();
    patch_status(&ctx.client, api.as_ref(), written, &status).await?;
    Ok(ctx.retries.pace(&ctx.metrics, api.as_ref(), &outcome))
}

/// The steps of an ApplicationApi not being deleted. A step that cannot go on ends the
/// reconcile with its outcome (a condition) instead.
async fn steps(
    api: &ApplicationApi,
    ctx: &Context,
    status: &mut ApplicationApiStatus,
) -> Result<Outcome, Error> {
    let admitted = build::validate(api).and_then(|()| ctx.tenancy.admits_api(api));
    if let Err(outcome) = checked(admitted)? {
        return Ok(outcome);
    }
    let inputs = match dereference::dereference(ctx, api).await? {
        Ok(inputs) => inputs,
        Err(outcome) => return Ok(outcome),
    };
    let children = match checked(build::build(api, &inputs))? {
        Ok(children) => children,
        Err(outcome) => return Ok(outcome),
    };
    let deployment = apply_children(ctx, &children).await?;
    Ok(report(api, &deployment, status))
}

/// Applies the keys Secret first (an application may read its key while the pods start),
/// then the config, Service and policy, and the Deployment last, as applied.
async fn apply_children(ctx: &Context, children: &ApiChildren) -> Result<Deployment, Error> {
    apply_child(ctx, &children.keys_secret).await?;
    apply_child(ctx, &children.config_map).await?;
    apply_child(ctx, &children.service).await?;
    apply_child(ctx, &children.network_policy).await?;
    apply_kept(ctx, &children.deployment).await
}

/// The status from the applied Deployment: where to reach the API, where its keys are, and
/// whether it is Ready.
fn report(
    api: &ApplicationApi,
    deployment: &Deployment,
    status: &mut ApplicationApiStatus,
) -> Outcome {
    let name = api.name_any();
    status.endpoint = Some(build::endpoint(&name, &api.namespace().unwrap_or_default()));
    status.keys_secret = Some(keys::secret_name(&name));
    status.dashboard_path = Some(build::DASHBOARD_PATH.to_owned());
    let (ready, outcome) = super::deployment_readiness(deployment, api.spec.replicas, "API");
    status.ready_replicas = Some(ready);
    outcome
}

#[cfg(test)]
mod tests;
