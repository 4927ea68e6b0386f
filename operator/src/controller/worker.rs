//! Worker controller: dereferences the Queue, the Sinks and their Secrets, renders the
//! worker config, applies the ConfigMap and Deployment, and reports replicas.

use super::conditions::{self, reason};
use super::{
    apply, patch_status, ready_condition, resolve_queue, resolve_secrets, Context, Error, Outcome,
    PROGRESS_POLL, RESYNC,
};
use crate::build::sink::{self as sink_build, ResolvedTarget};
use crate::build::worker::{self as build, WorkerInputs};
use crate::build::BuildError;
use crate::crd::{Condition, Sink, Worker, WorkerStatus};
use crate::scaling as autoscaler;
use k8s_openapi::api::apps::v1::Deployment;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use std::collections::BTreeSet;
use std::sync::Arc;
use tracing::Instrument;

/// One reconcile of a Worker.
pub async fn reconcile(worker: Arc<Worker>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile("Worker");
    let span = tracing::info_span!("reconcile", kind = "Worker", name = %worker.name_any(), namespace = ?worker.namespace());
    let current = worker.status.clone().unwrap_or_default();
    let mut status = WorkerStatus {
        replicas: current.replicas,
        ready_replicas: current.ready_replicas,
        ..WorkerStatus::default()
    };
    let outcome = run(&worker, &ctx, &mut status).instrument(span).await?;
    status.conditions = own_conditions(
        ready_condition(&ctx, worker.as_ref(), &current.conditions, &outcome.ready).await,
    );
    status.observed_generation = worker.metadata.generation;
    // `status.scaling` and the `SinksAvailable` condition belong to the autoscaler's field
    // managers: leave them out of both the comparison and the write (a server-side apply
    // of a stale copy would undo theirs).
    let comparable = WorkerStatus {
        scaling: None,
        conditions: own_conditions(current.conditions.clone()),
        ..current
    };
    patch_status(&ctx.client, worker.as_ref(), Some(&comparable), &status).await?;
    Ok(outcome.action)
}

/// The conditions this controller writes (under its field manager): `Ready` only.
fn own_conditions(conditions: Vec<Condition>) -> Vec<Condition> {
    conditions
        .into_iter()
        .filter(|c| c.type_ == conditions::READY)
        .collect()
}

async fn run(worker: &Worker, ctx: &Context, status: &mut WorkerStatus) -> Result<Outcome, Error> {
    match build::validate(worker) {
        Ok(()) => {}
        Err(BuildError::Invalid(message)) => return Ok(Outcome::invalid(message)),
        Err(other) => return Err(other.into()),
    }
    status.selector = Some(build::selector_string(worker)?);
    let namespace = worker.namespace().unwrap_or_default();
    // Dereference: the Queue, then each Sink (Ready), then every Secret they need.
    let queue = match resolve_queue(&ctx.client, &namespace, &worker.spec.queue).await? {
        Ok(queue) => queue,
        Err(outcome) => return Ok(outcome),
    };
    let sinks_api: Api<Sink> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut sinks = Vec::new();
    for name in &worker.spec.sinks {
        let Some(sink) = sinks_api.get_opt(name).await? else {
            return Ok(Outcome::waiting(
                reason::WAITING_FOR_SINK,
                format!("Sink {name:?} does not exist"),
                RESYNC,
            ));
        };
        let sink_ready = sink
            .status
            .as_ref()
            .is_some_and(|s| conditions::is_ready(&s.conditions));
        if !sink_ready {
            return Ok(Outcome::waiting(
                reason::WAITING_FOR_SINK,
                format!("Sink {name:?} is not ready yet"),
                RESYNC,
            ));
        }
        let target = match sink_build::target_queue(&sink) {
            None => None,
            Some(target) => match resolve_queue(&ctx.client, &namespace, target).await? {
                Ok(resolved) => Some(ResolvedTarget {
                    broker_queue: resolved.broker_queue,
                    uri: resolved.uri,
                }),
                Err(outcome) => return Ok(outcome),
            },
        };
        sinks.push((sink, target));
    }
    // An autoscaled Deployment's replica count belongs to the autoscaler once it has taken
    // it over; until then (creation, scaling just enabled) the operator sets the minimum and
    // hands the field over right after applying.
    let namespace_deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);
    let child = build::child_name(&worker.name_any());
    let autoscaled = worker.spec.scaling.enabled;
    let handed_over = namespace_deployments
        .get_opt(&child)
        .await?
        .is_some_and(|d| autoscaler::owns_replicas(&d, autoscaler::FIELD_MANAGER));
    let mut inputs = WorkerInputs {
        queue,
        sinks,
        secrets: Default::default(),
        image: ctx.images.worker.clone(),
        set_replicas: !(autoscaled && handed_over),
    };
    let names: BTreeSet<String> = build::mounted_secrets(&inputs);
    inputs.secrets = match resolve_secrets(&ctx.client, &namespace, names).await? {
        Ok(secrets) => secrets,
        Err(outcome) => return Ok(outcome),
    };
    let children = match build::build(worker, &inputs) {
        Ok(children) => children,
        Err(BuildError::Invalid(message)) => return Ok(Outcome::invalid(message)),
        Err(other) => return Err(other.into()),
    };
    apply(&ctx.client, &children.config_map).await?;
    let deployment = apply(&ctx.client, &children.deployment).await?;
    super::monitoring::ensure_for_worker(ctx, worker).await;
    let desired = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    if autoscaled && !handed_over {
        autoscaler::set_replicas(&ctx.client, &namespace, &child, desired).await?;
    }
    let deployment_status = deployment.status.unwrap_or_default();
    status.replicas = Some(deployment_status.replicas.unwrap_or(0));
    let ready = deployment_status.ready_replicas.unwrap_or(0);
    status.ready_replicas = Some(ready);
    if desired > 0 && ready == 0 {
        return Ok(Outcome::waiting(
            reason::PROGRESSING,
            format!("waiting for worker pods to become ready (0/{desired})"),
            PROGRESS_POLL,
        ));
    }
    if desired == 0 {
        return Ok(Outcome::ready(
            "scaled to zero: the queue is empty; the first message wakes a worker",
        ));
    }
    Ok(Outcome::ready(format!(
        "{ready}/{desired} worker pods ready"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scaling::SINKS_AVAILABLE;

    fn condition(type_: &str) -> Condition {
        Condition {
            type_: type_.to_owned(),
            status: "True".to_owned(),
            reason: "R".to_owned(),
            message: "m".to_owned(),
            observed_generation: Some(1),
            last_transition_time: "t".to_owned(),
        }
    }

    #[test]
    fn the_controller_writes_only_its_ready_condition() {
        let merged = conditions::merge(
            &[condition(SINKS_AVAILABLE), condition(conditions::READY)],
            &conditions::Desired::ready(false, conditions::reason::PROGRESSING, "x"),
            Some(2),
            "t2",
        );
        assert_eq!(merged.len(), 2);
        let own = own_conditions(merged);
        assert_eq!(own.len(), 1);
        assert_eq!(own[0].type_, conditions::READY);
        assert_eq!(own[0].status, "False");
    }
}
