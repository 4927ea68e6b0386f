//! The autoscaler: every `pollIntervalSeconds`, for each Worker with scaling enabled, it
//! reads the queue's backlog, decides the replica count ([`policy`]), writes the worker
//! Deployment's `spec.replicas` under its own field manager, and tells the story in the
//! Worker's `status.scaling` and in Events.
//!
//! The Worker controller leaves `spec.replicas` of an autoscaled Deployment to this field
//! manager (see [`owns_replicas`]); with scaling disabled it writes `spec.replicas` from
//! the Worker itself (the `/scale` subresource), taking the field back.

pub mod connections;
pub mod policy;

use crate::controller::conditions;
use crate::controller::queue::{broker_endpoint, Endpoint};
use crate::controller::{broker, Context, Error};
use crate::crd::{Queue, ScalingStatus, Worker};
use connections::Connections;
use futures::future::join_all;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};
use policy::History;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Field manager of the replica counts the autoscaler writes.
pub const FIELD_MANAGER: &str = "tributary-autoscaler";

/// How often the loop looks for Workers whose poll is due.
const TICK: Duration = Duration::from_millis(500);

/// Whether `manager` owns `spec.replicas` of `deployment` (from its managed fields).
pub fn owns_replicas(deployment: &Deployment, manager: &str) -> bool {
    deployment
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|entry| entry.manager.as_deref() == Some(manager))
        .filter_map(|entry| entry.fields_v1.as_ref())
        .any(|fields| fields.0["f:spec"].get("f:replicas").is_some())
}

/// Writes `spec.replicas` of a Deployment under the autoscaler's field manager.
pub async fn set_replicas(
    client: &Client,
    namespace: &str,
    name: &str,
    replicas: i32,
) -> Result<(), Error> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let patch = serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": name, "namespace": namespace },
        "spec": { "replicas": replicas },
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(name, &params, &Patch::Apply(&patch)).await?;
    Ok(())
}

/// Per-Worker memory of the loop.
struct Tracked {
    history: History,
    next_poll: Instant,
}

/// Runs the autoscaler over the Workers in `workers` until `stop` fires.
pub async fn run(ctx: Arc<Context>, workers: Store<Worker>, mut stop: watch::Receiver<bool>) {
    let origin = Instant::now();
    let connections = Connections::default();
    let mut tracked: HashMap<ObjectRef<Worker>, Tracked> = HashMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {},
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        let now = Instant::now();
        let scaled: Vec<Arc<Worker>> = workers
            .state()
            .into_iter()
            .filter(|w| w.spec.scaling.enabled && w.metadata.deletion_timestamp.is_none())
            .collect();
        let present: HashSet<ObjectRef<Worker>> = scaled
            .iter()
            .map(|w| ObjectRef::from_obj(w.as_ref()))
            .collect();
        tracked.retain(|key, _| present.contains(key));
        let due: Vec<(ObjectRef<Worker>, Arc<Worker>, Tracked)> = scaled
            .into_iter()
            .filter_map(|worker| {
                let key = ObjectRef::from_obj(worker.as_ref());
                match tracked.remove(&key) {
                    Some(state) if state.next_poll > now => {
                        tracked.insert(key, state);
                        None
                    }
                    Some(state) => Some((key, worker, state)),
                    None => Some((
                        key,
                        worker,
                        Tracked {
                            history: History::default(),
                            next_poll: now,
                        },
                    )),
                }
            })
            .collect();
        let connections = &connections;
        let polls = due.into_iter().map(|(key, worker, mut state)| {
            let ctx = ctx.clone();
            async move {
                let seconds = origin.elapsed().as_secs_f64();
                let polled = poll(&ctx, connections, &worker, &mut state.history, seconds).await;
                if let Err(error) = polled {
                    tracing::warn!(
                        worker = %worker.name_any(),
                        namespace = ?worker.namespace(),
                        %error,
                        "autoscaler poll failed"
                    );
                }
                let interval = worker.spec.scaling.poll_interval_seconds.max(1);
                state.next_poll = Instant::now() + Duration::from_secs(interval.unsigned_abs());
                (key, state)
            }
        });
        for (key, state) in join_all(polls).await {
            tracked.insert(key, state);
        }
        connections.close_idle().await;
    }
}

/// Why a reading could not be taken (shown in `status.scaling.error`).
fn unreadable(worker: &Worker, message: String) -> ScalingStatus {
    ScalingStatus {
        error: Some(message),
        ..current_status(worker)
    }
}

fn current_status(worker: &Worker) -> ScalingStatus {
    worker
        .status
        .as_ref()
        .and_then(|s| s.scaling.clone())
        .unwrap_or_default()
}

/// One reading and decision for one Worker.
async fn poll(
    ctx: &Context,
    connections: &Connections,
    worker: &Worker,
    history: &mut History,
    now: f64,
) -> Result<(), Error> {
    let namespace = worker.namespace().unwrap_or_default();
    let name = worker.name_any();
    let queues: Api<Queue> = Api::namespaced(ctx.client.clone(), &namespace);
    let queue_name = &worker.spec.queue;
    let Some(queue) = queues.get_opt(queue_name).await? else {
        let status = unreadable(worker, format!("Queue {queue_name:?} does not exist"));
        return write_status(ctx, worker, status).await;
    };
    let Some(broker_queue) = queue.status.as_ref().and_then(|s| s.queue_name.clone()) else {
        let status = unreadable(worker, format!("Queue {queue_name:?} is not ready yet"));
        return write_status(ctx, worker, status).await;
    };
    let endpoint = match broker_endpoint(ctx, &queue).await? {
        Ok(endpoint) => endpoint,
        Err(outcome) => {
            let status = unreadable(worker, outcome.ready.message);
            return write_status(ctx, worker, status).await;
        }
    };
    let reading = match read_queue(connections, &endpoint, &broker_queue).await {
        Ok(reading) => reading,
        Err(error) => {
            let status = unreadable(worker, error.to_string());
            return write_status(ctx, worker, status).await;
        }
    };
    let child = crate::build::worker::child_name(&name);
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);
    let Some(deployment) = deployments.get_opt(&child).await? else {
        // The Worker controller has not created it yet.
        return Ok(());
    };
    let current = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let decision = policy::decide(&worker.spec.scaling, current, &reading, history, now);
    ctx.metrics
        .observed(&namespace, &name, reading.backlog(), decision.replicas);
    let mut status = ScalingStatus {
        backlog: Some(reading.backlog()),
        consumers: Some(reading.consumers),
        desired_replicas: Some(decision.replicas),
        error: None,
        ..current_status(worker)
    };
    if let Some(reason) = decision.reason {
        set_replicas(&ctx.client, &namespace, &child, decision.replicas).await?;
        ctx.metrics.scaled(&namespace, &name);
        tracing::info!(worker = %name, namespace = %namespace, from = current, to = decision.replicas, %reason, "scaled");
        let event = Event {
            type_: EventType::Normal,
            // One reason per kind of change: Events of the same reason are aggregated
            // into a series, and `status.scaling` keeps the latest message.
            reason: decision.event.unwrap_or("Scaled").to_owned(),
            note: Some(reason.clone()),
            action: "Scale".to_owned(),
            secondary: None,
        };
        if let Err(error) = ctx.recorder.publish(&event, &worker.object_ref(&())).await {
            tracing::warn!(%error, "publishing an Event failed");
        }
        status.last_scale_time = Some(conditions::now());
        status.last_scale_reason = Some(reason);
    }
    write_status(ctx, worker, status).await
}

/// One reading of `queue` over the broker's kept-open connection; a failed reading drops
/// the connection so the next poll starts afresh.
async fn read_queue(
    connections: &Connections,
    endpoint: &Endpoint,
    queue: &str,
) -> Result<policy::Reading, broker::BrokerError> {
    let connection = connections.get(&endpoint.amqp_uri).await?;
    let reading = broker::reading(&connection, endpoint.management.as_ref(), queue).await;
    if reading.is_err() {
        connections.forget(&endpoint.amqp_uri).await;
    }
    reading
}

/// Writes `status.scaling` under the autoscaler's field manager when it changed.
async fn write_status(ctx: &Context, worker: &Worker, status: ScalingStatus) -> Result<(), Error> {
    if worker.status.as_ref().and_then(|s| s.scaling.as_ref()) == Some(&status) {
        return Ok(());
    }
    let namespace = worker.namespace().unwrap_or_default();
    let api: Api<Worker> = Api::namespaced(ctx.client.clone(), &namespace);
    let patch = serde_json::json!({
        "apiVersion": Worker::api_version(&()),
        "kind": Worker::kind(&()),
        "status": { "scaling": status },
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch_status(&worker.name_any(), &params, &Patch::Apply(&patch))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};

    fn managed(manager: &str, fields: serde_json::Value) -> ManagedFieldsEntry {
        ManagedFieldsEntry {
            manager: Some(manager.to_owned()),
            operation: Some("Apply".to_owned()),
            fields_v1: Some(FieldsV1(fields)),
            ..ManagedFieldsEntry::default()
        }
    }

    #[test]
    fn replicas_ownership_is_read_from_managed_fields() {
        let mut deployment = Deployment::default();
        assert!(!owns_replicas(&deployment, FIELD_MANAGER));
        deployment.metadata.managed_fields = Some(vec![
            managed(
                "tributary-operator",
                serde_json::json!({"f:spec": {"f:replicas": {}, "f:template": {}}}),
            ),
            managed(FIELD_MANAGER, serde_json::json!({"f:metadata": {}})),
        ]);
        assert!(!owns_replicas(&deployment, FIELD_MANAGER));
        deployment
            .metadata
            .managed_fields
            .get_or_insert_with(Vec::new)
            .push(managed(
                FIELD_MANAGER,
                serde_json::json!({"f:spec": {"f:replicas": {}}}),
            ));
        assert!(owns_replicas(&deployment, FIELD_MANAGER));
    }
}
