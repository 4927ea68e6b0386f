//! The controllers: one module per resource, each reconciling in the steps
//! dereference → validate → build → apply → status. Shared here: the context, the error
//! type, server-side apply and status helpers.

use crate::broker::Broker;
use crate::build::queue::access::BrokerCredentials;
use crate::build::{BuildError, Images, FIELD_MANAGER};
use crate::conditions::{self, Desired};
use crate::crd::Condition;
use crate::metrics::Metrics;
use crate::reads::Reads;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{ObjectMeta, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

pub mod application_api;
pub mod applied;
pub mod broker_user;
pub mod device;
pub mod gateway;
pub mod gateway_registry;
pub mod malformed;
#[cfg(test)]
pub mod mock_api;
pub mod monitoring;
pub mod pdb;
pub mod queue;
pub mod retries;
pub mod sink;
pub mod worker;

/// Shared state of every controller.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Default images of the children.
    pub images: Images,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Publishes Kubernetes Events.
    pub recorder: Recorder,
    /// The PodDisruptionBudget API version the cluster serves.
    pub pdb: pdb::PdbApi,
    /// Extra labels on the PodMonitors and PrometheusRules (e.g. a Prometheus' selector).
    pub monitoring_labels: BTreeMap<String, String>,
    /// Kept connections to the brokers (shared with the autoscaler).
    pub broker: Arc<Broker>,
    /// What the operator's settings allow Sinks to point at.
    pub sink_policy: crate::build::sink::SinkPolicy,
    /// Which images and Service types each namespace may choose.
    pub tenancy: crate::build::tenancy::TenantPolicy,
    /// Backoff of reconciles whose broker is unreachable.
    pub retries: retries::BrokerRetries,
    /// The namespace the operator's pods run in (NetworkPolicies let them reach brokers),
    /// when known.
    pub operator_namespace: Option<String>,
    /// The device registry: namespace keys, cached Devices and gateway pods, published
    /// tables.
    pub registry: Arc<crate::registry::Registry>,
    /// What was applied of each child, and the children's caches: applies that cannot
    /// change anything are skipped.
    pub applied: applied::Applied,
    /// Reads of Queues, Deployments, Services, pods and Secrets through the watch caches.
    pub reads: Arc<crate::reads::Reads>,
}

/// Why a reconcile failed. Invalid specs and missing references are not errors: they
/// become conditions.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A desired object could not be built (missing metadata).
    #[error("building children: {0}")]
    Build(#[from] BuildError),
    /// A value could not be (de)serialized.
    #[error("serialization: {0}")]
    Json(#[from] serde_json::Error),
    /// A cache the reconcile reads has not been filled yet (right after start).
    #[error("the {0} cache is not ready yet")]
    CacheNotReady(&'static str),
}

impl Error {
    /// Short label of the error kind, for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Build(_) => "build",
            Error::Json(_) => "serialization",
            Error::CacheNotReady(_) => "cache",
        }
    }
}

/// Requeue interval of a healthy resource (drift checks and status refresh).
pub const RESYNC: Duration = Duration::from_secs(60);
/// Requeue interval while children are progressing.
pub const PROGRESS_POLL: Duration = Duration::from_secs(5);
/// Requeue interval after a transient failure.
pub const RETRY: Duration = Duration::from_secs(15);

/// The ready pods of an applied Deployment of `desired` replicas, and the outcome: ready
/// once one is (`what` names the pods in the message), else waiting.
pub fn deployment_readiness(
    deployment: &k8s_openapi::api::apps::v1::Deployment,
    desired: i32,
    what: &str,
) -> (i32, Outcome) {
    let ready = deployment
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    let outcome = if desired > 0 && ready == 0 {
        Outcome::waiting(
            conditions::reason::PROGRESSING,
            format!("waiting for {what} pods to become ready (0/{desired})"),
            PROGRESS_POLL,
        )
    } else {
        Outcome::ready(format!("{ready}/{desired} {what} pods ready"))
    };
    (ready, outcome)
}

/// `error_policy` shared by all controllers: count the failure and retry soon.
pub fn error_policy<K: Resource<DynamicType = ()>>(
    object: Arc<K>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    let kind = K::kind(&()).to_string();
    ctx.metrics.error(&kind, error.kind());
    tracing::warn!(
        kind = %kind,
        name = %object.meta().name.as_deref().unwrap_or_default(),
        namespace = %object.meta().namespace.as_deref().unwrap_or_default(),
        error = %error,
        "reconcile failed"
    );
    Action::requeue(RETRY)
}

/// Whether an object is being deleted (`deletionTimestamp` set).
pub fn being_deleted(meta: &ObjectMeta) -> bool {
    meta.deletion_timestamp.is_some()
}

/// The first step of the Gateway, Worker and Sink reconciles: an object being deleted (a
/// foreground deletion keeps it until its children are gone) is left alone. Its children go
/// with it through garbage collection: applying them again would recreate what the
/// collector removes. `Some(action)` ends the reconcile without a request.
pub fn skip_deleted<K: Resource>(object: &K) -> Option<Action> {
    being_deleted(object.meta()).then(Action::await_change)
}

/// Whether `object` carries `finalizer`.
pub fn has_finalizer<K: Resource>(object: &K, finalizer: &str) -> bool {
    object.finalizers().iter().any(|f| f == finalizer)
}

/// Adds or removes `finalizer` with an optimistic-concurrency merge patch (the object's
/// `resourceVersion`), keeping every other finalizer.
pub async fn set_finalizer<K>(
    client: &Client,
    object: &K,
    finalizer: &str,
    present: bool,
) -> Result<(), Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + DeserializeOwned
        + Clone
        + Debug,
{
    let mut finalizers: Vec<String> = object
        .finalizers()
        .iter()
        .filter(|f| f.as_str() != finalizer)
        .cloned()
        .collect();
    if present {
        finalizers.push(finalizer.to_owned());
    }
    let api: Api<K> = Api::namespaced(client.clone(), &object.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "metadata": {"finalizers": finalizers, "resourceVersion": object.resource_version()}
    });
    api.patch(
        &object.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

/// Server-side applies one namespaced object, forced, under the operator's field manager.
pub async fn apply<K>(client: &Client, object: &K) -> Result<K, Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Serialize
        + DeserializeOwned
        + Clone
        + Debug,
{
    let namespace = object
        .meta()
        .namespace
        .clone()
        .ok_or(BuildError::MissingMetadata("namespace"))?;
    let name = object
        .meta()
        .name
        .clone()
        .ok_or(BuildError::MissingMetadata("name"))?;
    let api: Api<K> = Api::namespaced(client.clone(), &namespace);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    Ok(api.patch(&name, &params, &Patch::Apply(object)).await?)
}

/// Writes `status` through server-side apply on `/status`, unless it equals `current`
/// (nothing is written at steady state).
pub async fn patch_status<K, S>(
    client: &Client,
    object: &K,
    current: Option<&S>,
    status: &S,
) -> Result<(), Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + DeserializeOwned
        + Clone
        + Debug,
    S: Serialize + PartialEq,
{
    if current == Some(status) {
        return Ok(());
    }
    let namespace = object
        .meta()
        .namespace
        .clone()
        .ok_or(BuildError::MissingMetadata("namespace"))?;
    let api: Api<K> = Api::namespaced(client.clone(), &namespace);
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch_status(&object.name_any(), &params, &Patch::Apply(&patch))
        .await?;
    Ok(())
}

/// Merges the desired `Ready` condition, and publishes an Event when its status or reason
/// changed (so users see transitions in `kubectl describe`, without an Event per resync).
pub async fn ready_condition<K>(
    ctx: &Context,
    object: &K,
    existing: &[Condition],
    desired: &Desired,
) -> Vec<Condition>
where
    K: Resource<DynamicType = ()>,
{
    let merged = conditions::merge(
        existing,
        desired,
        object.meta().generation,
        &conditions::now(),
    );
    let before = conditions::ready(existing);
    let changed = before.is_none_or(|c| {
        c.reason != desired.reason || c.status != conditions::status_text(desired.ok)
    });
    if changed {
        let event = Event {
            type_: if desired.ok {
                EventType::Normal
            } else {
                EventType::Warning
            },
            reason: desired.reason.to_owned(),
            note: Some(truncate(&desired.message, 1000)),
            action: "Reconcile".to_owned(),
            secondary: None,
        };
        if let Err(error) = ctx.recorder.publish(&event, &object.object_ref(&())).await {
            tracing::warn!(%error, "publishing an Event failed");
        }
    }
    merged
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// Outcome of one reconcile, before the status is written.
pub struct Outcome {
    /// The `Ready` condition.
    pub ready: Desired,
    /// When to look again.
    pub action: Action,
}

impl Outcome {
    /// Ready, resync later.
    pub fn ready(message: impl Into<String>) -> Self {
        Outcome {
            ready: Desired::ready(true, conditions::reason::RECONCILED, message),
            action: Action::requeue(RESYNC),
        }
    }

    /// Not ready for `reason`; look again after `after` (watches usually wake it sooner).
    pub fn waiting(reason: &'static str, message: impl Into<String>, after: Duration) -> Self {
        Outcome {
            ready: Desired::ready(false, reason, message),
            action: Action::requeue(after),
        }
    }

    /// The spec is invalid: wait for the user to change it.
    pub fn invalid(message: impl Into<String>) -> Self {
        Outcome {
            ready: Desired::ready(false, conditions::reason::INVALID_SPEC, message),
            action: Action::await_change(),
        }
    }
}

/// The result of a step that may end the reconcile early: `Ok(Ok(value))` goes on to the
/// next step, `Ok(Err(outcome))` ends the reconcile with that outcome (a condition, not an
/// error), `Err` fails it.
pub type Step<T> = Result<Result<T, Outcome>, Error>;

/// A builder's result as a step: an invalid spec ends the reconcile with `InvalidSpec`.
pub fn checked<T>(built: Result<T, BuildError>) -> Step<T> {
    match built {
        Ok(value) => Ok(Ok(value)),
        Err(BuildError::Invalid(message)) => Ok(Err(Outcome::invalid(message))),
        Err(other) => Err(other.into()),
    }
}

/// Dereferences a Queue by name: its broker queue and connection Secret once it is Ready,
/// or a waiting outcome naming it.
pub async fn resolve_queue(
    reads: &Reads,
    namespace: &str,
    name: &str,
) -> Step<crate::build::worker::ResolvedQueue> {
    let waiting = |message: String| {
        Err(Outcome::waiting(
            conditions::reason::WAITING_FOR_QUEUE,
            message,
            RESYNC,
        ))
    };
    let Some(queue) = reads.queue(namespace, name).await? else {
        return Ok(waiting(format!("Queue {name:?} does not exist")));
    };
    let delivery_limit = crate::build::queue::worker_delivery_limit(&queue);
    let ca = queue
        .spec
        .broker
        .external
        .as_ref()
        .and_then(|e| e.ca_secret_ref.clone());
    let status = queue.status.unwrap_or_default();
    // A managed broker's connection Secret is its administrator's: the Gateway and Worker
    // controllers put the workload's own user in its place.
    let credentials = match status.broker_mode.as_deref() {
        Some("managed") => BrokerCredentials::Administrator,
        _ => BrokerCredentials::Supplied,
    };
    match (
        conditions::is_ready(&status.conditions),
        status.queue_name,
        status.connection_secret_ref,
    ) {
        (true, Some(broker_queue), Some(uri)) => Ok(Ok(crate::build::worker::ResolvedQueue {
            broker_queue,
            uri,
            credentials,
            ca,
            dead_letter_queue: status.dead_letter_queue_name,
            delivery_limit,
        })),
        _ => Ok(waiting(format!("Queue {name:?} is not ready yet"))),
    }
}

/// Dereferences Secrets by name; the first missing one yields a waiting outcome.
pub async fn resolve_secrets(
    reads: &Reads,
    namespace: &str,
    names: impl IntoIterator<Item = String>,
) -> Step<crate::build::SecretData> {
    let mut data = crate::build::SecretData::new();
    for name in names {
        match reads.secret_data(namespace, &name).await? {
            Some(values) => {
                data.insert(name, Arc::unwrap_or_clone(values));
            }
            None => {
                return Ok(Err(Outcome::waiting(
                    conditions::reason::WAITING_FOR_SECRET,
                    format!("Secret {name:?} does not exist"),
                    RESYNC,
                )))
            }
        }
    }
    Ok(Ok(data))
}
