//! Gateway controller: dereferences the routed Queues and the device-credential Secrets,
//! renders the gateway config, and applies the ConfigMap, Deployment, Service and
//! PodDisruptionBudget.

use super::conditions::reason;
use super::{
    apply, patch_status, ready_condition, resolve_queue, resolve_secrets, Context, Error, Outcome,
    PROGRESS_POLL,
};
use crate::build::gateway::{self as build, GatewayInputs};
use crate::build::BuildError;
use crate::crd::{Gateway, GatewayStatus};
use kube::runtime::controller::Action;
use kube::ResourceExt;
use std::collections::BTreeMap;
use std::sync::Arc;
use tracing::Instrument;

/// One reconcile of a Gateway.
pub async fn reconcile(gateway: Arc<Gateway>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile("Gateway");
    let span = tracing::info_span!("reconcile", kind = "Gateway", name = %gateway.name_any(), namespace = ?gateway.namespace());
    let current = gateway.status.clone().unwrap_or_default();
    let mut status = GatewayStatus {
        ready_replicas: current.ready_replicas,
        connected_devices: current.connected_devices,
        ..GatewayStatus::default()
    };
    let outcome = run(&gateway, &ctx, &mut status).instrument(span).await?;
    status.conditions =
        ready_condition(&ctx, gateway.as_ref(), &current.conditions, &outcome.ready).await;
    status.observed_generation = gateway.metadata.generation;
    patch_status(
        &ctx.client,
        gateway.as_ref(),
        gateway.status.as_ref(),
        &status,
    )
    .await?;
    Ok(outcome.action)
}

async fn run(
    gateway: &Gateway,
    ctx: &Context,
    status: &mut GatewayStatus,
) -> Result<Outcome, Error> {
    match build::validate(gateway) {
        Ok(()) => {}
        Err(BuildError::Invalid(message)) => return Ok(Outcome::invalid(message)),
        Err(other) => return Err(other.into()),
    }
    let namespace = gateway.namespace().unwrap_or_default();
    let mut queues = BTreeMap::new();
    for route in &gateway.spec.routes {
        if queues.contains_key(&route.queue) {
            continue;
        }
        match resolve_queue(&ctx.client, &namespace, &route.queue).await? {
            Ok(queue) => {
                queues.insert(route.queue.clone(), queue);
            }
            Err(outcome) => return Ok(outcome),
        }
    }
    let mut names = build::referenced_secrets(gateway);
    names.extend(queues.values().map(|q| q.uri.name.clone()));
    let secrets = match resolve_secrets(&ctx.client, &namespace, names).await? {
        Ok(secrets) => secrets,
        Err(outcome) => return Ok(outcome),
    };
    let inputs = GatewayInputs {
        queues,
        secrets,
        image: ctx.images.gateway.clone(),
    };
    let children = match build::build(gateway, &inputs) {
        Ok(children) => children,
        Err(BuildError::Invalid(message)) => return Ok(Outcome::invalid(message)),
        Err(other) => return Err(other.into()),
    };
    apply(&ctx.client, &children.config_map).await?;
    apply(&ctx.client, &children.service).await?;
    ctx.pdb.apply(&ctx.client, &children.pdb).await?;
    let deployment = apply(&ctx.client, &children.deployment).await?;
    super::monitoring::ensure_for_gateway(ctx, gateway).await;
    let child = build::child_name(&gateway.name_any());
    status.endpoint = Some(format!("{child}.{namespace}.svc"));
    let ready = deployment
        .status
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    status.ready_replicas = Some(ready);
    let desired = gateway.spec.replicas;
    if desired > 0 && ready == 0 {
        return Ok(Outcome::waiting(
            reason::PROGRESSING,
            format!("waiting for gateway pods to become ready (0/{desired})"),
            PROGRESS_POLL,
        ));
    }
    Ok(Outcome::ready(format!(
        "{ready}/{desired} gateway pods ready"
    )))
}
