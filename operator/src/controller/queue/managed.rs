//! The managed RabbitMQ of a Queue: applying its children, waiting for a clustered broker
//! to form before the first declaration, and removing it after a switch to an external
//! broker once it is verified to hold no messages.

use super::super::applied::{apply_child, apply_kept};
use super::super::{being_deleted, Context, Error, Outcome, PROGRESS_POLL, RETRY};
use super::BrokerQueues;
use crate::broker::endpoint;
use crate::build::queue::{self as build, managed::belongs_to, ManagedNames};
use crate::conditions::reason;
use crate::crd::queue::ManagedBroker;
use crate::crd::{Queue, QueueStatus};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::{Api, ResourceExt};

/// Applies a managed broker's children; `Some(outcome)` while the broker is not ready.
pub(super) async fn apply_broker(
    ctx: &Context,
    queue: &Queue,
    managed: &ManagedBroker,
) -> Result<Option<Outcome>, Error> {
    let namespace = queue.namespace().unwrap_or_default();
    let names = ManagedNames::for_queue(&queue.name_any());
    let creds = endpoint::credentials(&ctx.reads, &namespace, &names).await?;
    let children = build::build_managed(queue, managed, &creds, &ctx.images.rabbitmq)?;
    apply_child(ctx, &children.secret).await?;
    apply_child(ctx, &children.config_map).await?;
    apply_child(ctx, &children.headless_service).await?;
    apply_child(ctx, &children.service).await?;
    // Before the broker pods exist: they never run unprotected.
    let policy = build::broker_network_policy(queue, ctx.operator_namespace.as_deref())?;
    apply_child(ctx, &policy).await?;
    let sts = apply_kept(ctx, &children.stateful_set).await?;
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
    let Some(endpoint) = endpoint::managed(&ctx.reads, queue).await? else {
        return Ok(None); // reported by the endpoint step
    };
    let broker_queue = build::broker_queue_name(queue)?;
    // Only a queue seen to exist skips the wait: a broker that cannot be asked (a node
    // still starting behind the Service, say) may be a cluster still forming, and a
    // declaration then would place the members on the nodes that happen to run.
    if let Ok(Some(_)) = ctx.broker.inspect(endpoint.amqp(), &broker_queue).await {
        return Ok(None);
    }
    let running = match (&endpoint.management, ready_pods >= replicas) {
        (Some(management), true) => ctx.broker.running_nodes(management).await.ok(),
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

/// On an external broker: removes the managed one the Queue may have run before, once it
/// holds no messages in the queues of now or of the last status. `Some(outcome)` while the
/// switch waits: clients then stay where they are (the status keeps the old broker).
pub(super) async fn switch_away(
    ctx: &Context,
    queue: &Queue,
    names: &BrokerQueues,
    status: &mut QueueStatus,
) -> Result<Option<Outcome>, Error> {
    let previous = queue.status.clone().unwrap_or_default();
    let mut queues: Vec<&str> = std::iter::once(names.queue.as_str())
        .chain(names.dead_letter.as_deref())
        .chain(previous.queue_name.as_deref())
        .chain(previous.dead_letter_queue_name.as_deref())
        .collect();
    queues.sort_unstable();
    queues.dedup();
    let Some(outcome) = leave_managed(ctx, queue, &queues).await? else {
        return Ok(None);
    };
    status.broker_mode = previous.broker_mode;
    status.queue_name = previous.queue_name;
    status.dead_letter_queue_name = previous.dead_letter_queue_name;
    status.connection_secret_ref = previous.connection_secret_ref;
    Ok(Some(outcome))
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
    // The common case, an external broker never managed: the children's caches show none
    // of the managed broker's children, so nothing is read (nor removed).
    let children = [
        ("StatefulSet", names.broker.as_str()),
        ("Service", names.broker.as_str()),
        ("Service", names.headless.as_str()),
        ("ConfigMap", names.config.as_str()),
        ("NetworkPolicy", names.broker.as_str()),
        ("Secret", names.credentials.as_str()),
    ];
    if ctx.applied.all_absent(&namespace, &children) {
        return Ok(None);
    }
    let sets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &namespace);
    let set = sets
        .get_opt(&names.broker)
        .await?
        .filter(|o| belongs_to(&o.metadata, queue));
    if set.as_ref().is_some_and(|s| !being_deleted(&s.metadata)) {
        if let Some(refusal) = check_empty(ctx, queue, &names, queues).await? {
            return Ok(Some(Outcome::waiting(
                reason::BROKER_SWITCH_BLOCKED,
                refusal,
                RETRY,
            )));
        }
    }
    let params = kube::api::DeleteParams::default();
    if set.is_some() {
        sets.delete(&names.broker, &params).await?;
    }
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &namespace);
    for name in [&names.broker, &names.headless] {
        if services
            .get_opt(name)
            .await?
            .is_some_and(|o| belongs_to(&o.metadata, queue))
        {
            services.delete(name, &params).await?;
        }
    }
    let maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &namespace);
    if maps
        .get_opt(&names.config)
        .await?
        .is_some_and(|o| belongs_to(&o.metadata, queue))
    {
        maps.delete(&names.config, &params).await?;
    }
    let policies: Api<NetworkPolicy> = Api::namespaced(ctx.client.clone(), &namespace);
    if policies
        .get_opt(&names.broker)
        .await?
        .is_some_and(|o| belongs_to(&o.metadata, queue))
    {
        policies.delete(&names.broker, &params).await?;
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    if secrets
        .get_opt(&names.credentials)
        .await?
        .is_some_and(|o| belongs_to(&o.metadata, queue))
    {
        secrets.delete(&names.credentials, &params).await?;
    }
    Ok(None)
}

/// Why the running managed broker cannot be removed yet, if it cannot: it holds messages
/// in `queues`, or cannot be verified to hold none.
async fn check_empty(
    ctx: &Context,
    queue: &Queue,
    names: &ManagedNames,
    queues: &[&str],
) -> Result<Option<String>, Error> {
    let listed = queues.join(", ");
    let Some(endpoint) = endpoint::managed(&ctx.reads, queue).await? else {
        return Ok(Some(format!(
            "switching to the external broker waits: the managed RabbitMQ (StatefulSet {}) \
             cannot be reached (its Service has no address), so it cannot be verified to \
             hold no messages; delete the StatefulSet by hand to discard what it holds",
            names.broker
        )));
    };
    let total = ctx
        .broker
        .message_total(endpoint.amqp(), endpoint.management.as_ref(), queues)
        .await;
    Ok(match total {
        Ok(0) => None,
        Ok(messages) => Some(format!(
            "switching to the external broker waits: the managed RabbitMQ still holds \
             {messages} messages in {listed}; let the Workers drain it (and replay or \
             empty the dead-letter queue), or delete StatefulSet {} by hand to discard them",
            names.broker
        )),
        Err(error) => Some(format!(
            "switching to the external broker waits: the managed RabbitMQ cannot be \
             verified to hold no messages in {listed} ({error}); delete StatefulSet {} \
             by hand to discard what it holds",
            names.broker
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
