//! The Queue's finalizer: present only under `deletionPolicy: Delete`, it holds a deleted
//! Queue until its broker queue is deleted, or released when the broker itself is gone.
//!
//! kube-runtime's `finalizer` helper does not fit: it adds its finalizer to every object
//! and keeps it, while this one follows the deletion policy (a Queue under `Retain` never
//! waits for the operator to be deleted), and a deleted Queue here still reports why it
//! waits (`DeletionBlocked`, `BrokerUnavailable`) in its `Ready` condition.

use super::super::{being_deleted, Context, Error, Outcome, RETRY};
use super::{endpoint, publish_event, BrokerQueues};
use crate::broker::BrokerError;
use crate::build::queue::{BrokerPlan, ManagedNames};
use crate::conditions::{event, reason};
use crate::crd::queue::DeletionPolicy;
use crate::crd::Queue;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};

/// Finalizer guarding the broker queue under `deletionPolicy: Delete`.
pub const FINALIZER: &str = "tributary.dev/broker-queue";

fn has_finalizer(queue: &Queue) -> bool {
    super::super::has_finalizer(queue, FINALIZER)
}

/// Adds or removes our finalizer.
async fn set_finalizer(ctx: &Context, queue: &Queue, present: bool) -> Result<(), Error> {
    super::super::set_finalizer(&ctx.client, queue, FINALIZER, present).await
}

/// Adds or removes the finalizer as `deletionPolicy` asks.
pub(super) async fn follow_policy(ctx: &Context, queue: &Queue) -> Result<(), Error> {
    let wanted = queue.spec.deletion_policy == DeletionPolicy::Delete;
    if wanted != has_finalizer(queue) {
        set_finalizer(ctx, queue, wanted).await?;
    }
    Ok(())
}

/// The spec is invalid: report it, or, for a deleted Queue holding our finalizer, release
/// it (an invalid spec cannot reach any broker).
pub(super) async fn invalid_spec(
    ctx: &Context,
    queue: &Queue,
    message: String,
) -> Result<Option<Outcome>, Error> {
    if being_deleted(&queue.metadata) && has_finalizer(queue) {
        set_finalizer(ctx, queue, false).await?;
        return Ok(None);
    }
    Ok(Some(Outcome::invalid(message)))
}

/// A deleted Queue: deletes its broker queues (when the finalizer holds it and the policy
/// is still `Delete`), then releases it; `Ok(None)` once released, `Some(outcome)` while the deletion waits.
pub(super) async fn finalize(
    ctx: &Context,
    queue: &Queue,
    plan: &BrokerPlan,
    names: &BrokerQueues,
) -> Result<Option<Outcome>, Error> {
    if !has_finalizer(queue) {
        return Ok(None);
    }
    if queue.spec.deletion_policy != DeletionPolicy::Delete {
        // The policy became `Retain` before this deletion was reconciled: keep the queue.
        set_finalizer(ctx, queue, false).await?;
        return Ok(None);
    }
    if let Some(why) = broker_gone(ctx, queue, plan).await? {
        publish_event(
            ctx,
            queue,
            EventType::Warning,
            event::BROKER_GONE,
            format!(
                "the broker queue {} could not be deleted: {why}",
                names.joined(" and ")
            ),
        )
        .await;
        set_finalizer(ctx, queue, false).await?;
        return Ok(None);
    }
    let endpoint = match endpoint(ctx, queue, plan).await? {
        Ok(endpoint) => endpoint,
        Err(outcome) => return Ok(Some(outcome)),
    };
    let deleted = ctx
        .broker
        .delete(
            endpoint.amqp(),
            &names.queue,
            names.dead_letter.as_deref(),
            queue.spec.delete_non_empty,
        )
        .await;
    match deleted {
        Ok(()) => {
            set_finalizer(ctx, queue, false).await?;
            Ok(None)
        }
        Err(error @ BrokerError::NotEmpty { .. }) => Ok(Some(Outcome::waiting(
            reason::DELETION_BLOCKED,
            error.to_string(),
            RETRY * 2,
        ))),
        Err(error) => Ok(Some(Outcome::waiting(
            reason::BROKER_UNAVAILABLE,
            error.to_string(),
            RETRY,
        ))),
    }
}

/// Why the broker of a Queue being deleted no longer exists, if it does not: then its
/// queues cannot (and need not) be deleted, and the finalizer must not wait for them.
async fn broker_gone(
    ctx: &Context,
    queue: &Queue,
    plan: &BrokerPlan,
) -> Result<Option<String>, Error> {
    match plan {
        BrokerPlan::Managed(_) => managed_broker_gone(ctx, queue).await,
        BrokerPlan::External { uri, .. } => {
            let namespace = queue.namespace().unwrap_or_default();
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

/// [`broker_gone`] of a managed broker: the namespace is terminating, or the broker's
/// StatefulSet or Service is gone or being deleted.
async fn managed_broker_gone(ctx: &Context, queue: &Queue) -> Result<Option<String>, Error> {
    let namespace = queue.namespace().unwrap_or_default();
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    // Reading the namespace may be forbidden; the StatefulSet and Service below then tell
    // (the namespace deletion removes them).
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
