//! Queue controller: runs the managed RabbitMQ (or dereferences the external one), declares
//! the queue topology over AMQP, repairs drift, reports counts, and — with
//! `deletionPolicy: Delete` — removes the broker queue behind a finalizer.

use super::conditions::reason;
use super::{
    apply, broker, patch_status, ready_condition, secret_data, Context, Error, Outcome,
    PROGRESS_POLL, RETRY,
};
use crate::build::queue::{
    self as build, BrokerPlan, Credentials, ManagedNames, AMQP_PORT, KEY_COOKIE, KEY_PASSWORD,
    KEY_USERNAME, MANAGEMENT_PORT,
};
use crate::build::BuildError;
use crate::crd::queue::DeletionPolicy;
use crate::crd::{Queue, QueueStatus};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
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
        BrokerPlan::Managed(_) => {
            let names = ManagedNames::for_queue(&queue.name_any());
            let services: Api<Service> = Api::namespaced(ctx.client.clone(), &namespace);
            let ip = services
                .get_opt(&names.broker)
                .await?
                .and_then(|s| s.spec)
                .and_then(|s| s.cluster_ip)
                .filter(|ip| ip != "None");
            let Some(ip) = ip else {
                return Ok(Err(Outcome::waiting(
                    reason::PROGRESSING,
                    "broker Service has no address yet",
                    PROGRESS_POLL,
                )));
            };
            let creds = credentials(ctx, &namespace, &names).await?;
            // The ClusterIP works from inside the cluster and from a node alike.
            Ok(Ok(Endpoint {
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
    Ok(None)
}

/// Deletes the managed broker's children after a switch to `external`.
async fn remove_managed(ctx: &Context, queue: &Queue) -> Result<(), Error> {
    let namespace = queue.namespace().unwrap_or_default();
    let names = ManagedNames::for_queue(&queue.name_any());
    let params = kube::api::DeleteParams::default();
    let owned = |meta: &kube::api::ObjectMeta| {
        meta.owner_references
            .iter()
            .flatten()
            .any(|o| Some(&o.uid) == queue.uid().as_ref())
    };
    let sts: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &namespace);
    if sts
        .get_opt(&names.broker)
        .await?
        .is_some_and(|o| owned(&o.metadata))
    {
        sts.delete(&names.broker, &params).await?;
    }
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &namespace);
    for name in [&names.broker, &names.headless] {
        if services
            .get_opt(name)
            .await?
            .is_some_and(|o| owned(&o.metadata))
        {
            services.delete(name, &params).await?;
        }
    }
    let maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &namespace);
    if maps
        .get_opt(&names.config)
        .await?
        .is_some_and(|o| owned(&o.metadata))
    {
        maps.delete(&names.config, &params).await?;
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    if secrets
        .get_opt(&names.credentials)
        .await?
        .is_some_and(|o| owned(&o.metadata))
    {
        secrets.delete(&names.credentials, &params).await?;
    }
    Ok(())
}

/// One reconcile of a Queue.
pub async fn reconcile(queue: Arc<Queue>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile("Queue");
    let current = queue.status.clone().unwrap_or_default();
    let mut status = QueueStatus {
        conditions: current.conditions.clone(),
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
            remove_managed(ctx, queue).await?;
        }
    }
    let endpoint = match endpoint(ctx, queue, &plan).await? {
        Ok(endpoint) => endpoint,
        Err(outcome) => return Ok(Some(outcome)),
    };
    let args = build::declare_arguments(queue)?;
    if let Err(error) = broker::declare(
        &endpoint.amqp_uri,
        &broker_queue,
        &args,
        dead_letter_queue.as_deref(),
        queue.spec.queue_type.as_str(),
    )
    .await
    {
        return Ok(Some(Outcome::waiting(
            reason::BROKER_UNAVAILABLE,
            error.to_string(),
            RETRY,
        )));
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
