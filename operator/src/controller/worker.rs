//! Worker controller: dereferences the Queue, the Sinks and their Secrets, renders the
//! worker config, applies the ConfigMap and Deployment, and reports replicas.

use super::applied::{apply_child, apply_kept};
use super::{
    being_deleted, broker_user, checked, patch_status, ready_condition, resolve_queue,
    resolve_secrets, Context, Error, Outcome, Step, PROGRESS_POLL, RESYNC,
};
use crate::build::queue::access::{self, BrokerCredentials};
use crate::build::sink::{self as sink_build, ResolvedTarget};
use crate::build::worker::{self as build, ResolvedQueue, WorkerChildren, WorkerInputs};
use crate::conditions::{self, reason};
use crate::crd::{Condition, Sink, Worker, WorkerStatus};
use crate::reads::Reads;
use crate::scaling as autoscaler;
use k8s_openapi::api::apps::v1::Deployment;
use kube::runtime::controller::Action;
use kube::{Api, Client, ResourceExt};
use std::sync::Arc;
use tracing::Instrument;

/// One reconcile of a Worker.
pub async fn reconcile(worker: Arc<Worker>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile("Worker");
    if being_deleted(&worker.metadata) {
        // Children go with it through garbage collection; its broker users are removed.
        return broker_user::finalize(&ctx, worker.as_ref()).await;
    }
    let span = tracing::info_span!("reconcile", kind = "Worker", name = %worker.name_any(), namespace = ?worker.namespace());
    let current = worker.status.clone().unwrap_or_default();
    let mut status = WorkerStatus {
        replicas: current.replicas,
        ready_replicas: current.ready_replicas,
        ..WorkerStatus::default()
    };
    let outcome = steps(&worker, &ctx, &mut status).instrument(span).await?;
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
    Ok(ctx.retries.pace(&ctx.metrics, worker.as_ref(), &outcome))
}

/// The conditions this controller writes (under its field manager): `Ready` only.
fn own_conditions(conditions: Vec<Condition>) -> Vec<Condition> {
    conditions
        .into_iter()
        .filter(|c| c.type_ == conditions::READY)
        .collect()
}

/// The steps of a Worker not being deleted: validate → dereference → build → apply → status. A step
/// that cannot go on ends the reconcile with its outcome (a condition) instead.
async fn steps(
    worker: &Worker,
    ctx: &Context,
    status: &mut WorkerStatus,
) -> Result<Outcome, Error> {
    let admitted = build::validate(worker).and_then(|()| ctx.tenancy.admits_worker(worker));
    if let Err(outcome) = checked(admitted)? {
        return Ok(outcome);
    }
    status.selector = Some(build::selector_string(worker)?);
    let inputs = match dereference(ctx, worker).await? {
        Ok(inputs) => inputs,
        Err(outcome) => return Ok(outcome),
    };
    let children = match checked(build::build(worker, &inputs))? {
        Ok(children) => children,
        Err(outcome) => return Ok(outcome),
    };
    let deployment = apply_children(ctx, worker, &children, inputs.set_replicas).await?;
    Ok(report(&deployment, status))
}

/// Dereferences the Queue, then each Sink (Ready), the worker's own user on each managed
/// broker (ensured there), then every Secret they need, and who sets the Deployment's
/// replica count.
async fn dereference(ctx: &Context, worker: &Worker) -> Step<WorkerInputs> {
    let reads = &*ctx.reads;
    let namespace = worker.namespace().unwrap_or_default();
    let queue = match resolve_queue(reads, &namespace, &worker.spec.queue).await? {
        Ok(queue) => queue,
        Err(outcome) => return Ok(Err(outcome)),
    };
    let mut sinks = match dereference_sinks(reads, &namespace, &worker.spec.sinks).await? {
        Ok(sinks) => sinks,
        Err(outcome) => return Ok(Err(outcome)),
    };
    let grants = grants(worker, &queue, &sinks);
    let users = match broker_user::ensure(ctx, worker, &grants).await? {
        Ok(users) => users,
        Err(outcome) => return Ok(Err(outcome)),
    };
    let mut queue = queue;
    let own = users.get(&worker.spec.queue);
    broker_user::substitute(&mut queue.uri, &mut queue.credentials, own);
    for (sink, target) in &mut sinks {
        if let (Some(target), Some(name)) = (target.as_mut(), sink_build::target_queue(sink)) {
            broker_user::substitute(&mut target.uri, &mut target.credentials, users.get(name));
        }
    }
    // Without autoscaling the replicas are the operator's: nothing to read.
    let handed_over =
        worker.spec.scaling.enabled && replicas_handed_over(&ctx.client, worker).await?;
    let mut inputs = WorkerInputs {
        queue,
        sinks,
        secrets: Default::default(),
        image: ctx.images.worker.clone(),
        set_replicas: !(worker.spec.scaling.enabled && handed_over),
    };
    let names = build::mounted_secrets(&inputs);
    inputs.secrets = match resolve_secrets(reads, &namespace, names).await? {
        Ok(secrets) => secrets,
        Err(outcome) => return Ok(Err(outcome)),
    };
    Ok(Ok(inputs))
}

/// The Sinks named, in order, each Ready, with the Queue a `queue` sink publishes to.
async fn dereference_sinks(
    reads: &Reads,
    namespace: &str,
    names: &[String],
) -> Step<Vec<(Sink, Option<ResolvedTarget>)>> {
    let waiting = |message: String| {
        Ok(Err(Outcome::waiting(
            reason::WAITING_FOR_SINK,
            message,
            RESYNC,
        )))
    };
    let mut sinks = Vec::new();
    for name in names {
        let Some(sink) = reads.sink(namespace, name).await? else {
            return waiting(format!("Sink {name:?} does not exist"));
        };
        let sink_ready = sink
            .status
            .as_ref()
            .is_some_and(|s| conditions::is_ready(&s.conditions));
        if !sink_ready {
            return waiting(format!("Sink {name:?} is not ready yet"));
        }
        let target = match sink_build::target_queue(&sink) {
            None => None,
            Some(target) => match resolve_queue(reads, namespace, target).await? {
                Ok(ResolvedQueue {
                    broker_queue,
                    uri,
                    credentials,
                    ca,
                    ..
                }) => Some(ResolvedTarget {
                    broker_queue,
                    uri,
                    credentials,
                    ca,
                }),
                Err(outcome) => return Ok(Err(outcome)),
            },
        };
        sinks.push((sink, target));
    }
    Ok(Ok(sinks))
}

/// What the worker needs on each managed broker (by Queue name): read its queue and publish
/// (dead letters, redelivery counting) on its Queue's; publish on a `queue` sink's target's.
fn grants(
    worker: &Worker,
    queue: &ResolvedQueue,
    sinks: &[(Sink, Option<ResolvedTarget>)],
) -> broker_user::Grants {
    let mut grants = broker_user::Grants::new();
    for (sink, target) in sinks {
        if let (Some(target), Some(name)) = (target, sink_build::target_queue(sink)) {
            if target.credentials == BrokerCredentials::Administrator {
                grants.insert(name.to_owned(), access::worker_permissions(&[]));
            }
        }
    }
    if queue.credentials == BrokerCredentials::Administrator {
        // Its own Queue last: a sink republishing to it adds nothing to reading it.
        let mut permissions = access::worker_permissions(&[queue.broker_queue.as_str()]);
        // Command and live sinks publish on the consumed queue's broker.
        let namespace = worker.namespace().unwrap_or_default();
        if sinks.iter().any(|(sink, _)| sink.spec.command.is_some()) {
            permissions = permissions.with_command_sender(&namespace);
        }
        if sinks.iter().any(|(sink, _)| sink.spec.live.is_some()) {
            permissions = permissions.with_live_publisher(&namespace);
        }
        grants.insert(worker.spec.queue.clone(), permissions);
    }
    grants
}

/// Whether the autoscaler has taken the Deployment's replica count over. An autoscaled
/// Deployment's replicas belong to the autoscaler once it has; until then (creation,
/// scaling just enabled) the operator sets the minimum and hands the field over right after
/// applying.
///
/// Read from the API server, not from the cache: the caches drop managedFields, which say
/// who owns the replicas.
async fn replicas_handed_over(client: &Client, worker: &Worker) -> Result<bool, Error> {
    let namespace = worker.namespace().unwrap_or_default();
    let child = build::child_name(&worker.name_any());
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    Ok(deployments
        .get_opt(&child)
        .await?
        .is_some_and(|d| autoscaler::owns_replicas(&d, autoscaler::FIELD_MANAGER)))
}

/// Applies the ConfigMap, then the Deployment (as applied), the monitoring objects, and
/// hands an autoscaled Deployment's replicas over to the autoscaler.
async fn apply_children(
    ctx: &Context,
    worker: &Worker,
    children: &WorkerChildren,
    set_replicas: bool,
) -> Result<Deployment, Error> {
    apply_child(ctx, &children.config_map).await?;
    apply_child(ctx, &children.network_policy).await?;
    let deployment = apply_kept(ctx, &children.deployment).await?;
    super::monitoring::ensure_for_worker(ctx, worker).await;
    if worker.spec.scaling.enabled && set_replicas {
        let namespace = worker.namespace().unwrap_or_default();
        let child = build::child_name(&worker.name_any());
        autoscaler::set_replicas(&ctx.client, &namespace, &child, desired(&deployment)).await?;
    }
    Ok(deployment)
}

/// The replicas the applied Deployment asks for.
fn desired(deployment: &Deployment) -> i32 {
    deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1)
}

/// The status from the applied Deployment: replicas, ready pods, and whether it is Ready.
fn report(deployment: &Deployment, status: &mut WorkerStatus) -> Outcome {
    let desired = desired(deployment);
    let deployment_status = deployment.status.clone().unwrap_or_default();
    status.replicas = Some(deployment_status.replicas.unwrap_or(0));
    let ready = deployment_status.ready_replicas.unwrap_or(0);
    status.ready_replicas = Some(ready);
    if desired > 0 && ready == 0 {
        return Outcome::waiting(
            reason::PROGRESSING,
            format!("waiting for worker pods to become ready (0/{desired})"),
            PROGRESS_POLL,
        );
    }
    if desired == 0 {
        return Outcome::ready(
            "scaled to zero: the queue is empty; the first message wakes a worker",
        );
    }
    Outcome::ready(format!("{ready}/{desired} worker pods ready"))
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

    use crate::build::fixtures::load;
    use crate::controller::mock_api::{
        context, context_with, deleted, events, mocked, path, ready, ready_queue, secret,
        tributary, Exchange,
    };
    use serde_json::{json, Value};

    fn worker() -> Worker {
        load("worker-pipeline.yaml")
    }

    fn ready_sink() -> Value {
        let sink: Sink = load("sink-postgres.yaml");
        let mut value = serde_json::to_value(sink).expect("serializes");
        value["status"] = json!({ "conditions": [ready("True")] });
        value
    }

    /// The Event and the status write that end every reconcile, for a first `Ready`
    /// condition with `reason`.
    fn reported(worker: &Worker, reason: &str) -> Vec<Exchange> {
        vec![
            Exchange::post(&events("factory")).with("/reason", json!(reason)),
            Exchange::apply(&tributary("workers", "ingest/status"))
                .with("/status/conditions/0/reason", json!(reason))
                .with("/status/observedGeneration", json!(1))
                .reply(serde_json::to_value(worker).expect("serializes")),
        ]
    }

    fn child(group_version: &str, plural: &str) -> String {
        path(group_version, "factory", plural, "ingest-worker")
    }

    #[tokio::test]
    async fn a_new_autoscaled_worker_gets_its_children_and_hands_replicas_over() {
        let worker = worker();
        let (client, server) = mocked();
        let mut scenario = vec![
            Exchange::get(&tributary("queues", "telemetry")).reply(ready_queue("telemetry")),
            Exchange::get(&tributary("sinks", "readings")).reply(ready_sink()),
            // No Deployment yet: the operator sets the replicas this once.
            Exchange::get(&child("apps/v1", "deployments")).not_found(),
            Exchange::get(&path("v1", "factory", "secrets", "pg")).reply(secret(
                "pg",
                "url",
                "postgres://db",
            )),
            Exchange::get(&path("v1", "factory", "secrets", "telemetry-uri")).reply(secret(
                "telemetry-uri",
                "uri",
                "amqp://broker",
            )),
            Exchange::apply(&child("v1", "configmaps")).with("/kind", json!("ConfigMap")),
            Exchange::apply(&child("networking.k8s.io/v1", "networkpolicies"))
                .with("/spec/policyTypes", json!(["Ingress"])),
            Exchange::apply(&child("apps/v1", "deployments"))
                .with("/spec/replicas", json!(2))
                .reply(json!({ "status": { "replicas": 2, "readyReplicas": 1 } })),
            Exchange::apply_by(&child("apps/v1", "deployments"), autoscaler::FIELD_MANAGER)
                .with("/spec/replicas", json!(2)),
        ];
        scenario.extend(reported(&worker, reason::RECONCILED));
        let scenario = server.run(scenario);
        let action = reconcile(Arc::new(worker), context(client)).await;
        assert_eq!(action.expect("reconciles"), Action::requeue(RESYNC));
        let bodies = scenario.done().await;
        let status = &bodies.last().expect("status written")["status"];
        assert_eq!(status["replicas"], 2);
        assert_eq!(status["readyReplicas"], 1);
        assert_eq!(status["conditions"][0]["message"], "1/2 worker pods ready");
        assert!(status["selector"]
            .as_str()
            .is_some_and(|s| s.contains("ingest")));
    }

    #[tokio::test]
    async fn a_missing_sink_is_reported_and_nothing_is_applied() {
        let worker = worker();
        let (client, server) = mocked();
        let mut scenario = vec![
            Exchange::get(&tributary("queues", "telemetry")).reply(ready_queue("telemetry")),
            Exchange::get(&tributary("sinks", "readings")).not_found(),
        ];
        scenario.extend(reported(&worker, reason::WAITING_FOR_SINK));
        let scenario = server.run(scenario);
        let action = reconcile(Arc::new(worker), context(client)).await;
        assert_eq!(action.expect("reconciles"), Action::requeue(RESYNC));
        let bodies = scenario.done().await;
        let status = &bodies.last().expect("status written")["status"];
        assert_eq!(
            status["conditions"][0]["message"],
            "Sink \"readings\" does not exist"
        );
        assert_eq!(status["conditions"][0]["status"], "False");
    }

    #[tokio::test]
    async fn an_invalid_worker_waits_for_a_new_spec_without_dereferencing() {
        let mut worker = worker();
        worker.spec.scaling.min_replicas = 9;
        let (client, server) = mocked();
        let scenario = server.run(reported(&worker, reason::INVALID_SPEC));
        let action = reconcile(Arc::new(worker), context(client)).await;
        assert_eq!(action.expect("reconciles"), Action::await_change());
        let bodies = scenario.done().await;
        let status = &bodies.last().expect("status written")["status"];
        assert_eq!(
            status["conditions"][0]["message"],
            "spec.scaling.minReplicas (9) exceeds maxReplicas (5)"
        );
        assert_eq!(status.get("selector"), None, "validation comes first");
    }

    #[tokio::test]
    async fn an_image_outside_the_operators_allow_list_is_invalid_and_nothing_is_applied() {
        let mut worker = worker();
        worker.spec.image = Some("docker.io/someone/worker:latest".into());
        let (client, server) = mocked();
        let scenario = server.run(reported(&worker, reason::INVALID_SPEC));
        let tenancy = crate::build::tenancy::TenantPolicy {
            images: crate::build::tenancy::NamespaceRules::parse("*=tributary/").expect("rules"),
            ..Default::default()
        };
        let action = reconcile(Arc::new(worker), context_with(client, tenancy)).await;
        assert_eq!(action.expect("reconciles"), Action::await_change());
        let bodies = scenario.done().await;
        let message = bodies.last().expect("status written")["status"]["conditions"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            message.contains("spec.image") && message.contains("allow-list"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn a_worker_being_deleted_is_left_to_garbage_collection_without_a_request() {
        // Foreground deletion: the worker stays, `deletionTimestamp` set, until its children are gone.
        let worker = deleted(&worker());
        let (client, server) = mocked();
        let scenario = server.run(Vec::new());
        let action = reconcile(Arc::new(worker), context(client)).await;
        assert_eq!(action.expect("no request fails"), Action::await_change());
        assert!(scenario.done().await.is_empty());
    }
}
