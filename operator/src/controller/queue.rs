//! Queue controller: runs the managed RabbitMQ (or dereferences the external one), declares
//! the queue topology over AMQP, repairs drift, reports counts, and — with
//! `deletionPolicy: Delete` — removes the broker queue behind a finalizer.

use super::conditions::{self, event, reason};
use super::{
    apply, broker, patch_status, ready_condition, secret_data, Context, Error, Outcome,
    PROGRESS_POLL, RETRY,
};
use crate::build::queue::{
    self as build, managed::belongs_to, BrokerPlan, Credentials, ManagedNames, AMQP_PORT,
    KEY_COOKIE, KEY_PASSWORD, KEY_USERNAME, MANAGEMENT_PORT,
};
use crate::build::BuildError;
use crate::crd::queue::{DeletionPolicy, ReplayStatus};
use crate::crd::{Queue, QueueStatus};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// Resync of a ready Queue: how soon a queue deleted by hand on the broker comes back.
pub const DRIFT_CHECK: Duration = Duration::from_secs(20);

/// Finalizer guarding the broker queue under `deletionPolicy: Delete`.
pub const FINALIZER: &str = "tributary.dev/broker-queue";

/// How the operator reaches the broker of a Queue (credentials inside: never log).
pub struct Endpoint {
    /// AMQP URI.
    pub amqp_uri: String,
    /// Management API, when the broker has one the operator knows.
    pub management: Option<broker::Management>,
}

/// Dereferences how to reach a Queue's broker (for the autoscaler), or the outcome that
/// says why it is not possible yet.
pub async fn broker_endpoint(
    ctx: &Context,
    queue: &Queue,
) -> Result<Result<Endpoint, Outcome>, Error> {
    let plan = match build::validate(queue) {
        Ok(plan) => plan,
        Err(BuildError::Invalid(message)) => return Ok(Err(Outcome::invalid(message))),
        Err(other) => return Err(other.into()),
    };
    endpoint(ctx, queue, &plan).await
}

fn random_token(bytes: usize) -> Result<String, Error> {
    let mut buffer = vec![0u8; bytes];
    getrandom::fill(&mut buffer).map_err(|error| {
        Error::Build(BuildError::Invalid(format!(
            "no randomness for credentials: {error}"
        )))
    })?;
    // Alphanumeric only: safe inside URIs without escaping.
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    Ok(buffer
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect())
}

/// Reads the generated credentials back, or generates them the first time.
async fn credentials(
    ctx: &Context,
    namespace: &str,
    names: &ManagedNames,
) -> Result<Credentials, Error> {
    let existing = secret_data(&ctx.client, namespace, &names.credentials).await?;
    let text = |key: &str| {
        existing
            .as_ref()
            .and_then(|data| data.get(key))
            .and_then(|value| String::from_utf8(value.clone()).ok())
            .filter(|value| !value.is_empty())
    };
    Ok(Credentials {
        username: text(KEY_USERNAME).unwrap_or_else(|| "tributary".to_owned()),
        password: match text(KEY_PASSWORD) {
            Some(password) => password,
            None => random_token(24)?,
        },
        erlang_cookie: match text(KEY_COOKIE) {
            Some(cookie) => cookie,
            None => random_token(32)?,
        },
    })
}

/// Adds or removes our finalizer with an optimistic-concurrency merge patch.
async fn set_finalizer(ctx: &Context, queue: &Queue, present: bool) -> Result<(), Error> {
    let mut finalizers: Vec<String> = queue
        .finalizers()
        .iter()
        .filter(|f| f.as_str() != FINALIZER)
        .cloned()
        .collect();
    if present {
        finalizers.push(FINALIZER.to_owned());
    }
    let api: Api<Queue> =
        Api::namespaced(ctx.client.clone(), &queue.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "metadata": {"finalizers": finalizers, "resourceVersion": queue.resource_version()}
    });
    api.patch(
        &queue.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

/// Dereferences how to reach the broker. `Ok(None)` with an outcome when not yet possible.
async fn endpoint(
    ctx: &Context,
    queue: &Queue,
    plan: &BrokerPlan,
) -> Result<Result<Endpoint, Outcome>, Error> {
    let namespace = queue.namespace().unwrap_or_default();
    match plan {
        BrokerPlan::Managed(_) => match managed_endpoint(ctx, queue).await? {
            Some(endpoint) => Ok(Ok(endpoint)),
            None => Ok(Err(Outcome::waiting(
                reason::PROGRESSING,
                "broker Service has no address yet",
                PROGRESS_POLL,
            ))),
        },
        BrokerPlan::External {
            uri,
            management_uri,
        } => {
            let read = |data: Option<std::collections::BTreeMap<String, Vec<u8>>>, key: &str| {
                data.and_then(|d| d.get(key).cloned())
                    .and_then(|v| String::from_utf8(v).ok())
            };
            let Some(amqp_uri) = read(
                secret_data(&ctx.client, &namespace, &uri.name).await?,
                &uri.key,
            ) else {
                return Ok(Err(Outcome::waiting(
                    reason::WAITING_FOR_SECRET,
                    format!(
                        "Secret {:?} with key {:?} does not exist",
                        uri.name, uri.key
                    ),
                    RETRY * 4,
                )));
            };
            let management = match management_uri {
                Some(r) => read(secret_data(&ctx.client, &namespace, &r.name).await?, &r.key)
                    .and_then(|text| broker::Management::from_uri(text.trim())),
                None => None,
            };
            Ok(Ok(Endpoint {
                amqp_uri: amqp_uri.trim().to_owned(),
                management,
            }))
        }
    }
}

/// How to reach the Queue's managed broker through its Service; `None` while (or when) the
/// Service has no address.
async fn managed_endpoint(ctx: &Context, queue: &Queue) -> Result<Option<Endpoint>, Error> {
    let namespace = queue.namespace().unwrap_or_default();
    let names = ManagedNames::for_queue(&queue.name_any());
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &namespace);
    let ip = services
        .get_opt(&names.broker)
        .await?
        .and_then(|s| s.spec)
        .and_then(|s| s.cluster_ip)
        .filter(|ip| ip != "None");
    let Some(ip) = ip else {
        return Ok(None);
    };
    let creds = credentials(ctx, &namespace, &names).await?;
    // The ClusterIP works from inside the cluster and from a node alike.
    Ok(Some(Endpoint {
        amqp_uri: format!(
            "amqp://{}:{}@{ip}:{AMQP_PORT}/%2f",
            creds.username, creds.password
        ),
        management: Some(broker::Management {
            base_url: format!("http://{ip}:{MANAGEMENT_PORT}"),
            username: creds.username,
            password: creds.password,
        }),
    }))
}

/// Publishes a Kubernetes Event about the Queue (best effort: a failure is only logged, for
/// example in a namespace that is being deleted).
async fn publish_event(ctx: &Context, queue: &Queue, type_: EventType, reason: &str, note: String) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: "Reconcile".to_owned(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &queue.object_ref(&())).await {
        tracing::warn!(%error, reason, "publishing an Event failed");
    }
}

fn being_deleted(meta: &kube::api::ObjectMeta) -> bool {
    meta.deletion_timestamp.is_some()
}

/// Why the broker of a Queue being deleted no longer exists, if it does not: then its
/// queues cannot (and need not) be deleted, and the finalizer must not wait for them.
/// Managed: the namespace is terminating, or the broker's StatefulSet or Service is gone or
/// being deleted. External: the URI Secret is gone, being deleted or lacks its key.
async fn broker_gone(
    ctx: &Context,
    queue: &Queue,
    plan: &BrokerPlan,
) -> Result<Option<String>, Error> {
    let namespace = queue.namespace().unwrap_or_default();
    match plan {
        BrokerPlan::Managed(_) => {
            let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
            // Reading the namespace may be forbidden; the StatefulSet and Service below
            // then tell (the namespace deletion removes them).
            match namespaces.get_opt(&namespace).await {
                Ok(Some(ns)) if being_deleted(&ns.metadata) => {
                    return Ok(Some(format!(
                        "namespace {namespace} is being deleted, and the managed RabbitMQ with it"
                    )))
                }
                Ok(_) => {}
                Err(error) => tracing::debug!(%error, "reading the namespace failed"),
            }
            let names = ManagedNames::for_queue(&queue.name_any());
            let sets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &namespace);
            match sets.get_opt(&names.broker).await? {
                None => {
                    return Ok(Some(format!(
                        "the managed RabbitMQ (StatefulSet {}) no longer exists",
                        names.broker
                    )))
                }
                Some(set) if being_deleted(&set.metadata) => {
                    return Ok(Some(format!(
                        "the managed RabbitMQ (StatefulSet {}) is being deleted",
                        names.broker
                    )))
                }
                Some(_) => {}
            }
            let services: Api<Service> = Api::namespaced(ctx.client.clone(), &namespace);
            match services.get_opt(&names.broker).await? {
                None => Ok(Some(format!(
                    "the managed RabbitMQ's Service {} no longer exists",
                    names.broker
                ))),
                Some(service) if being_deleted(&service.metadata) => Ok(Some(format!(
                    "the managed RabbitMQ's Service {} is being deleted",
                    names.broker
                ))),
                Some(_) => Ok(None),
            }
        }
        BrokerPlan::External { uri, .. } => {
            let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
            Ok(match secrets.get_opt(&uri.name).await? {
                None => Some(format!(
                    "the Secret {} with the broker URI no longer exists",
                    uri.name
                )),
                Some(secret) if being_deleted(&secret.metadata) => Some(format!(
                    "the Secret {} with the broker URI is being deleted",
                    uri.name
                )),
                Some(secret) => {
                    let has_key = secret.data.iter().flatten().any(|(k, _)| *k == uri.key)
                        || secret
                            .string_data
                            .iter()
                            .flatten()
                            .any(|(k, _)| *k == uri.key);
                    (!has_key).then(|| {
                        format!(
                            "the Secret {} no longer has the broker URI key {:?}",
                            uri.name, uri.key
                        )
                    })
                }
            })
        }
    }
}

/// Applies a managed broker's children; `Some(outcome)` while the broker is not ready.
async fn apply_managed(
    ctx: &Context,
    queue: &Queue,
    managed: &crate::crd::queue::ManagedBroker,
) -> Result<Option<Outcome>, Error> {
    let namespace = queue.namespace().unwrap_or_default();
    let names = ManagedNames::for_queue(&queue.name_any());
    let creds = credentials(ctx, &namespace, &names).await?;
    let children = build::build_managed(queue, managed, &creds, &ctx.images.rabbitmq)?;
    apply(&ctx.client, &children.secret).await?;
    apply(&ctx.client, &children.config_map).await?;
    apply(&ctx.client, &children.headless_service).await?;
    apply(&ctx.client, &children.service).await?;
    let sts = apply(&ctx.client, &children.stateful_set).await?;
    let ready = sts.status.and_then(|s| s.ready_replicas).unwrap_or(0);
    if ready < 1 {
        return Ok(Some(Outcome::waiting(
            reason::PROGRESSING,
            format!(
                "waiting for the RabbitMQ pods of StatefulSet {} to become ready",
                names.broker
            ),
            PROGRESS_POLL,
        )));
    }
    if managed.replicas > 1 {
        return await_cluster_formation(ctx, queue, managed.replicas, ready).await;
    }
    Ok(None)
}

/// Before a clustered managed broker's queue first exists: waits until every broker pod is
/// ready and all nodes run as one cluster. RabbitMQ places a quorum queue's members on the
/// nodes running when it is declared and never adds any later, so a queue declared while
/// one node was up would have one member, and losing that pod would lose the queue. Once
/// the queue exists, nothing is waited for (a broker pod down is what replication is for).
async fn await_cluster_formation(
    ctx: &Context,
    queue: &Queue,
    replicas: i32,
    ready_pods: i32,
) -> Result<Option<Outcome>, Error> {
    let Some(endpoint) = managed_endpoint(ctx, queue).await? else {
        return Ok(None); // reported by the endpoint step
    };
    match broker::inspect(&endpoint.amqp_uri, &build::broker_queue_name(queue)?).await {
        Ok(Some(_)) => return Ok(None),
        // The declaration that follows reports an unreachable broker.
        Err(_) => return Ok(None),
        Ok(None) => {}
    }
    let running = match (&endpoint.management, ready_pods >= replicas) {
        (Some(management), true) => broker::running_nodes(management).await.ok(),
        _ => None,
    };
    Ok(formation_gap(replicas, ready_pods, running)
        .map(|message| Outcome::waiting(reason::PROGRESSING, message, PROGRESS_POLL)))
}

/// What keeps a cluster of `replicas` broker nodes from being formed, if anything:
/// `running_nodes` is what the management API reports (`None` when not asked or not
/// answered).
fn formation_gap(replicas: i32, ready_pods: i32, running_nodes: Option<usize>) -> Option<String> {
    let wanted = usize::try_from(replicas).unwrap_or(0);
    let why = "before declaring the queue, so that it is replicated on every node";
    if ready_pods < replicas {
        return Some(format!(
            "waiting for all {replicas} broker pods to become ready ({ready_pods} ready) {why}"
        ));
    }
    match running_nodes {
        Some(running) if running >= wanted => None,
        Some(running) => Some(format!(
            "waiting for the {replicas} broker nodes to form one cluster ({running} running) {why}"
        )),
        None => Some(format!(
            "waiting for the management API to list the {replicas} broker nodes {why}"
        )),
    }
}

/// After a switch to `external`: deletes the managed broker's children (owned by this Queue,
/// or kept under `Retain` and labelled with its name), but only once the managed broker is
/// verified to hold no messages in `queues`. `Some(outcome)` refuses the switch, deleting
/// nothing.
async fn leave_managed(
    ctx: &Context,
    queue: &Queue,
    queues: &[&str],
) -> Result<Option<Outcome>, Error> {
    let namespace = queue.namespace().unwrap_or_default();
    let names = ManagedNames::for_queue(&queue.name_any());
    let params = kube::api::DeleteParams::default();
    let sets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &namespace);
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &namespace);
    let maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &namespace);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let set = sets
        .get_opt(&names.broker)
        .await?
        .filter(|o| belongs_to(&o.metadata, queue));
    if set.as_ref().is_some_and(|s| !being_deleted(&s.metadata)) {
        let refuse = |message: String| {
            Ok(Some(Outcome::waiting(
                reason::BROKER_SWITCH_BLOCKED,
                message,
                RETRY,
            )))
        };
        let listed = queues.join(", ");
        let Some(endpoint) = managed_endpoint(ctx, queue).await? else {
            return refuse(format!(
                "switching to the external broker waits: the managed RabbitMQ (StatefulSet {}) \
                 cannot be reached (its Service has no address), so it cannot be verified to \
                 hold no messages; delete the StatefulSet by hand to discard what it holds",
                names.broker
            ));
        };
        match broker::message_total(&endpoint.amqp_uri, endpoint.management.as_ref(), queues)
            .await
        {
            Ok(0) => {}
            Ok(messages) => {
                return refuse(format!(
                    "switching to the external broker waits: the managed RabbitMQ still holds \
                     {messages} messages in {listed}; let the Workers drain it (and replay or \
                     empty the dead-letter queue), or delete StatefulSet {} by hand to discard them",
                    names.broker
                ))
            }
            Err(error) => {
                return refuse(format!(
                    "switching to the external broker waits: the managed RabbitMQ cannot be \
                     verified to hold no messages in {listed} ({error}); delete StatefulSet {} \
                     by hand to discard what it holds",
                    names.broker
                ))
            }
        }
    }
    if set.is_some() {
        sets.delete(&names.broker, &params).await?;
    }
    for name in [&names.broker, &names.headless] {
        if services
            .get_opt(name)
            .await?
            .is_some_and(|o| belongs_to(&o.metadata, queue))
        {
            services.delete(name, &params).await?;
        }
    }
    if maps
        .get_opt(&names.config)
        .await?
        .is_some_and(|o| belongs_to(&o.metadata, queue))
    {
        maps.delete(&names.config, &params).await?;
    }
    if secrets
        .get_opt(&names.credentials)
        .await?
        .is_some_and(|o| belongs_to(&o.metadata, queue))
    {
        secrets.delete(&names.credentials, &params).await?;
    }
    Ok(None)
}

/// Whether `spec.replay` asks for a replay that `status.replay` has not answered yet.
pub fn replay_requested(queue: &Queue) -> bool {
    let Some(replay) = &queue.spec.replay else {
        return false;
    };
    let answered = queue
        .status
        .as_ref()
        .and_then(|s| s.replay.as_ref())
        .map(|r| r.request.as_str());
    answered != Some(replay.request.as_str())
}

/// Moves dead-lettered messages back when `spec.replay` asks for it; `Some(outcome)` when
/// the broker failed (the request stays unanswered and is retried).
async fn replay(
    ctx: &Context,
    queue: &Queue,
    uri: &str,
    broker_queue: &str,
    dead_letter_queue: Option<&str>,
    status: &mut QueueStatus,
) -> Option<Outcome> {
    let (Some(spec), Some(dlq)) = (&queue.spec.replay, dead_letter_queue) else {
        return None;
    };
    if !replay_requested(queue) {
        return None;
    }
    let request = broker::ReplayRequest {
        dead_letter_queue: dlq,
        queue: broker_queue,
        reason_kind: spec.reason_kind.as_deref(),
        max_messages: spec.max_messages.and_then(|m| u64::try_from(m).ok()),
    };
    match broker::replay(uri, &request).await {
        Ok(report) => {
            let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            status.replay = Some(ReplayStatus {
                request: spec.request.clone(),
                moved: count(report.moved),
                skipped: count(report.skipped),
                remaining: count(report.remaining),
                completed_at: conditions::now(),
            });
            publish_event(
                ctx,
                queue,
                EventType::Normal,
                event::REPLAYED,
                format!(
                    "replay {:?}: moved {} dead-lettered messages back into {broker_queue}; \
                     {} skipped, {} remain in {dlq}",
                    spec.request, report.moved, report.skipped, report.remaining
                ),
            )
            .await;
            None
        }
        Err(error) => Some(Outcome::waiting(
            reason::BROKER_UNAVAILABLE,
            format!("replay {:?} failed: {error}", spec.request),
            RETRY,
        )),
    }
}

/// One reconcile of a Queue.
pub async fn reconcile(queue: Arc<Queue>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile("Queue");
    let current = queue.status.clone().unwrap_or_default();
    let mut status = QueueStatus {
        conditions: current.conditions.clone(),
        replay: current.replay.clone(),
        ..QueueStatus::default()
    };
    let span = tracing::info_span!("reconcile", kind = "Queue", name = %queue.name_any(), namespace = ?queue.namespace());
    let outcome = run(&queue, &ctx, &mut status).instrument(span).await?;
    let Some(outcome) = outcome else {
        // Deleted: no status to write.
        ctx.metrics
            .forget_queue(&queue.namespace().unwrap_or_default(), &queue.name_any());
        return Ok(Action::await_change());
    };
    status.conditions =
        ready_condition(&ctx, queue.as_ref(), &current.conditions, &outcome.ready).await;
    status.observed_generation = queue.metadata.generation;
    if !outcome.ready.ok {
        // Keep the last known counts while not ready.
        status.ready_messages = status.ready_messages.or(current.ready_messages);
        status.unacked_messages = status.unacked_messages.or(current.unacked_messages);
        status.consumers = status.consumers.or(current.consumers);
        status.dead_lettered_messages = status
            .dead_lettered_messages
            .or(current.dead_lettered_messages);
    }
    patch_status(&ctx.client, queue.as_ref(), queue.status.as_ref(), &status).await?;
    Ok(outcome.action)
}

/// The reconcile steps; `Ok(None)` once a deleted Queue is fully cleaned up.
async fn run(
    queue: &Queue,
    ctx: &Context,
    status: &mut QueueStatus,
) -> Result<Option<Outcome>, Error> {
    let plan = match build::validate(queue) {
        Ok(plan) => plan,
        Err(BuildError::Invalid(message)) => {
            if queue.metadata.deletion_timestamp.is_some()
                && queue.finalizers().iter().any(|f| f == FINALIZER)
            {
                // An invalid spec cannot reach any broker: release the resource.
                set_finalizer(ctx, queue, false).await?;
                return Ok(None);
            }
            return Ok(Some(Outcome::invalid(message)));
        }
        Err(other) => return Err(other.into()),
    };
    let broker_queue = build::broker_queue_name(queue)?;
    let dead_letter_queue = build::dead_letter_queue_name(queue)?;
    let has_finalizer = queue.finalizers().iter().any(|f| f == FINALIZER);
    let wants_finalizer = queue.spec.deletion_policy == DeletionPolicy::Delete;

    if queue.metadata.deletion_timestamp.is_some() {
        if !has_finalizer {
            return Ok(None);
        }
        if let Some(why) = broker_gone(ctx, queue, &plan).await? {
            let queues = std::iter::once(broker_queue.as_str())
                .chain(dead_letter_queue.as_deref())
                .collect::<Vec<_>>()
                .join(" and ");
            publish_event(
                ctx,
                queue,
                EventType::Warning,
                event::BROKER_GONE,
                format!("the broker queue {queues} could not be deleted: {why}"),
            )
            .await;
            set_finalizer(ctx, queue, false).await?;
            return Ok(None);
        }
        let endpoint = match endpoint(ctx, queue, &plan).await? {
            Ok(endpoint) => endpoint,
            Err(outcome) => return Ok(Some(outcome)),
        };
        return match broker::delete(
            &endpoint.amqp_uri,
            &broker_queue,
            dead_letter_queue.as_deref(),
            queue.spec.delete_non_empty,
        )
        .await
        {
            Ok(()) => {
                set_finalizer(ctx, queue, false).await?;
                Ok(None)
            }
            Err(error @ broker::BrokerError::NotEmpty { .. }) => Ok(Some(Outcome::waiting(
                reason::DELETION_BLOCKED,
                error.to_string(),
                RETRY * 2,
            ))),
            Err(error) => Ok(Some(Outcome::waiting(
                reason::BROKER_UNAVAILABLE,
                error.to_string(),
                RETRY,
            ))),
        };
    }
    if wants_finalizer != has_finalizer {
        set_finalizer(ctx, queue, wants_finalizer).await?;
    }

    if let BrokerPlan::External { .. } = &plan {
        // The managed broker (if any) must be empty before it is removed.
        let previous = queue.status.clone().unwrap_or_default();
        let mut queues: Vec<&str> = std::iter::once(broker_queue.as_str())
            .chain(dead_letter_queue.as_deref())
            .chain(previous.queue_name.as_deref())
            .chain(previous.dead_letter_queue_name.as_deref())
            .collect();
        queues.sort_unstable();
        queues.dedup();
        if let Some(outcome) = leave_managed(ctx, queue, &queues).await? {
            // Clients stay where they are until the switch can happen.
            status.broker_mode = previous.broker_mode;
            status.queue_name = previous.queue_name;
            status.dead_letter_queue_name = previous.dead_letter_queue_name;
            status.connection_secret_ref = previous.connection_secret_ref;
            return Ok(Some(outcome));
        }
    }
    status.queue_name = Some(broker_queue.clone());
    status.dead_letter_queue_name = dead_letter_queue.clone();
    status.connection_secret_ref = Some(build::connection_secret_ref(queue, &plan)?);
    match &plan {
        BrokerPlan::Managed(managed) => {
            status.broker_mode = Some("managed".to_owned());
            if let Some(outcome) = apply_managed(ctx, queue, managed).await? {
                return Ok(Some(outcome));
            }
        }
        BrokerPlan::External { .. } => {
            status.broker_mode = Some("external".to_owned());
        }
    }
    let endpoint = match endpoint(ctx, queue, &plan).await? {
        Ok(endpoint) => endpoint,
        Err(outcome) => return Ok(Some(outcome)),
    };
    let args = build::declare_arguments(queue)?;
    let dead_letter_args = build::dead_letter_arguments(queue);
    if let Err(error) = broker::declare(
        &endpoint.amqp_uri,
        &broker_queue,
        &args,
        dead_letter_queue
            .as_deref()
            .map(|dlq| (dlq, &dead_letter_args)),
    )
    .await
    {
        let mut message = error.to_string();
        if message.contains("inequivalent arg") {
            // The queue exists with other arguments (for example declared before dead-letter
            // queues became the default): RabbitMQ cannot change them in place.
            message.push_str(
                "; the arguments of an existing broker queue cannot change: drain and delete \
                 it on the broker (the operator declares it again), or set another queueName",
            );
        }
        return Ok(Some(Outcome::waiting(
            reason::BROKER_UNAVAILABLE,
            message,
            RETRY,
        )));
    }
    if let Some(outcome) = replay(
        ctx,
        queue,
        &endpoint.amqp_uri,
        &broker_queue,
        dead_letter_queue.as_deref(),
        status,
    )
    .await
    {
        return Ok(Some(outcome));
    }
    if let Some(management) = &endpoint.management {
        match broker::counts(management, &broker_queue, dead_letter_queue.as_deref()).await {
            Ok(counts) => {
                status.ready_messages = Some(counts.ready);
                status.unacked_messages = Some(counts.unacked);
                status.consumers = Some(counts.consumers);
                status.dead_lettered_messages = counts.dead_lettered;
                ctx.metrics.queue_counts(
                    &queue.namespace().unwrap_or_default(),
                    &queue.name_any(),
                    &counts,
                );
            }
            Err(error) => tracing::debug!(%error, "reading queue counts failed"),
        }
    }
    let mut outcome = Outcome::ready(format!("queue {broker_queue} is declared on the broker"));
    outcome.action = Action::requeue(DRIFT_CHECK);
    super::monitoring::ensure_for_queue(ctx, queue).await;
    Ok(Some(outcome))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures::load;
    use crate::crd::queue::ReplaySpec;

    #[test]
    fn a_clustered_broker_is_formed_only_when_every_node_runs() {
        assert!(formation_gap(3, 1, None)
            .expect("pods missing")
            .contains("all 3 broker pods to become ready (1 ready)"));
        assert!(formation_gap(3, 3, Some(2))
            .expect("a node missing")
            .contains("form one cluster (2 running)"));
        assert!(formation_gap(3, 3, None)
            .expect("nodes unknown")
            .contains("management API to list the 3 broker nodes"));
        assert_eq!(formation_gap(3, 3, Some(3)), None);
        assert_eq!(formation_gap(2, 2, Some(3)), None);
    }

    #[test]
    fn replay_runs_once_per_new_request() {
        let mut queue: Queue = load("queue-managed.yaml");
        assert!(!replay_requested(&queue), "no spec.replay: nothing to do");
        queue.spec.replay = Some(ReplaySpec {
            request: "fix-1".into(),
            reason_kind: None,
            max_messages: None,
        });
        assert!(replay_requested(&queue), "never answered");
        queue.status = Some(QueueStatus {
            replay: Some(ReplayStatus {
                request: "fix-1".into(),
                ..ReplayStatus::default()
            }),
            ..QueueStatus::default()
        });
        assert!(!replay_requested(&queue), "answered");
        if let Some(replay) = queue.spec.replay.as_mut() {
            replay.request = "fix-2".into();
        }
        assert!(replay_requested(&queue), "asked again");
    }
}
