//! The broker users of Gateways and Workers on managed brokers: each workload gets its own
//! RabbitMQ user on every managed broker it connects to, with only the permissions it uses
//! ([`crate::build::queue::access`]), and its pods mount that user's Secret instead of the
//! broker's administrator credentials, which stay the operator's alone.
//!
//! The users live outside the cluster, so a finalizer removes them when the workload is
//! deleted; it never holds a deletion for long: a broker that is gone (its Service, or the
//! namespace going away) releases the workload at once, one that does not answer after
//! [`GIVE_UP_AFTER`], each time with an Event.

use super::applied::apply_child;
use super::{being_deleted, Context, Error, Outcome, RETRY};
use crate::broker::endpoint::{managed_by_name, random_token, Endpoint};
use crate::broker::BrokerUser;
use crate::build::queue::access::{
    self, BrokerCredentials, Permissions, MANAGED_VHOST, PASSWORD_LENGTH, QUEUE_ANNOTATION,
};
use crate::build::queue::{KEY_PASSWORD, KEY_URI};
use crate::build::{OWNER_KIND_LABEL, OWNER_LABEL};
use crate::conditions::{event, reason};
use crate::crd::SecretKeyRef;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::NamespaceResourceScope;
use kube::api::{DeleteParams, ListParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::Duration;

/// Finalizer of a Gateway or Worker with a user on a managed broker.
pub const FINALIZER: &str = "tributary.dev/broker-user";
/// How long a deleted workload waits for a broker that does not answer before it is
/// released with its user left on the broker.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(300);

/// What a workload needs on each managed broker, by the name of the Queue running it.
pub type Grants = BTreeMap<String, Permissions>;

/// A Gateway or Worker, as far as its broker users go.
pub trait Workload:
    Resource<Scope = NamespaceResourceScope, DynamicType = ()> + DeserializeOwned + Clone + Debug
{
    /// `gateway` or `worker`: the user name's prefix.
    const KIND: &'static str;
    /// Name of the workload's children (the Secrets' prefix).
    fn child(&self) -> String;
}

impl Workload for crate::crd::Gateway {
    const KIND: &'static str = "gateway";
    fn child(&self) -> String {
        crate::build::gateway::child_name(&self.name_any())
    }
}

impl Workload for crate::crd::Worker {
    const KIND: &'static str = "worker";
    fn child(&self) -> String {
        crate::build::worker::child_name(&self.name_any())
    }
}

/// Puts the workload's own user in place of a managed broker's administrator Secret.
pub fn substitute(
    uri: &mut SecretKeyRef,
    credentials: &mut BrokerCredentials,
    own: Option<&SecretKeyRef>,
) {
    if let (BrokerCredentials::Administrator, Some(own)) = (*credentials, own) {
        *uri = own.clone();
        *credentials = BrokerCredentials::Workload;
    }
}

/// Ensures the workload's user, permissions and Secret on every broker of `grants`, and
/// removes its users on brokers it no longer uses. Returns each Queue's user Secret key,
/// or the outcome that says why a broker cannot be reached yet. The finalizer comes before
/// the first user and goes with the last, so a workload only on external brokers never
/// has one (nor costs a request here).
pub async fn ensure<K: Workload>(
    ctx: &Context,
    workload: &K,
    grants: &Grants,
) -> super::Step<BTreeMap<String, SecretKeyRef>> {
    match (grants.is_empty(), has_finalizer(workload)) {
        (true, false) => return Ok(Ok(BTreeMap::new())),
        (false, false) => set_finalizer(ctx, workload, true).await?,
        _ => {}
    }
    let mut secrets = BTreeMap::new();
    for (queue, permissions) in grants {
        match ensure_one(ctx, workload, queue, permissions).await? {
            Ok(secret) => secrets.insert(queue.clone(), secret),
            Err(outcome) => return Ok(Err(outcome)),
        };
    }
    let all_removed = remove_stale(ctx, workload, grants).await?;
    if grants.is_empty() && all_removed {
        set_finalizer(ctx, workload, false).await?;
    }
    Ok(Ok(secrets))
}

/// The user on the managed broker of Queue `queue`: its password read back from its Secret
/// (generated the first time), set on the broker with `permissions`, the Secret applied.
async fn ensure_one<K: Workload>(
    ctx: &Context,
    workload: &K,
    queue: &str,
    permissions: &Permissions,
) -> super::Step<SecretKeyRef> {
    let namespace = workload.namespace().unwrap_or_default();
    let unavailable = |message: String| {
        Ok(Err(Outcome::waiting(
            reason::BROKER_UNAVAILABLE,
            message,
            RETRY,
        )))
    };
    let Some(management) = broker(ctx, &namespace, queue)
        .await?
        .and_then(|e| e.management)
    else {
        return unavailable(format!(
            "the managed broker of Queue {queue:?} has no address yet"
        ));
    };
    let name = access::secret_name(&workload.child(), queue);
    let existing = ctx.reads.secret_data(&namespace, &name).await?;
    let password = existing
        .as_ref()
        .and_then(|data| data.get(KEY_PASSWORD))
        .and_then(|value| String::from_utf8(value.clone()).ok())
        .filter(|value| value.len() >= PASSWORD_LENGTH);
    let password = match password {
        Some(password) => password,
        None => random_token(PASSWORD_LENGTH).map_err(Error::Build)?,
    };
    let user = access::user_name(K::KIND, &namespace, &workload.name_any());
    let broker_user = BrokerUser {
        name: &user,
        password: &password,
        vhost: MANAGED_VHOST,
        permissions,
    };
    if let Err(error) = ctx.broker.ensure_user(&management, &broker_user).await {
        return unavailable(format!(
            "cannot set up broker user {user} on the managed broker of Queue {queue:?}: {error}"
        ));
    }
    apply_child(
        ctx,
        &access::user_secret(workload, &name, queue, &user, &password)?,
    )
    .await?;
    Ok(Ok(SecretKeyRef {
        name,
        key: KEY_URI.to_owned(),
    }))
}

/// How the operator reaches the managed broker of Queue `queue`, if it has an address.
async fn broker(ctx: &Context, namespace: &str, queue: &str) -> Result<Option<Endpoint>, Error> {
    Ok(managed_by_name(&ctx.reads, namespace, queue).await?)
}

/// The workload's user Secrets, by the Queue each one's user is on.
async fn user_secrets<K: Workload>(
    ctx: &Context,
    workload: &K,
) -> Result<Vec<(String, Secret)>, Error> {
    let api: Api<Secret> = Api::namespaced(
        ctx.client.clone(),
        &workload.namespace().unwrap_or_default(),
    );
    let selector = format!(
        "app.kubernetes.io/name={},{OWNER_LABEL}={},{OWNER_KIND_LABEL}={}",
        access::COMPONENT,
        workload.name_any(),
        K::KIND
    );
    let list = api.list(&ListParams::default().labels(&selector)).await?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|secret| {
            let queue = secret.annotations().get(QUEUE_ANNOTATION)?.clone();
            Some((queue, secret))
        })
        .collect())
}

/// Removes the workload's users on brokers not in `grants` (routes or sinks changed, or
/// the Queue went external), with their Secrets; one whose broker fails is left for the
/// next reconcile (`false`), one whose broker is gone only loses its Secret.
async fn remove_stale<K: Workload>(
    ctx: &Context,
    workload: &K,
    grants: &Grants,
) -> Result<bool, Error> {
    let mut all_removed = true;
    let namespace = workload.namespace().unwrap_or_default();
    let user = access::user_name(K::KIND, &namespace, &workload.name_any());
    for (queue, secret) in user_secrets(ctx, workload).await? {
        if grants.contains_key(&queue) {
            continue;
        }
        if let Some(management) = broker(ctx, &namespace, &queue)
            .await?
            .and_then(|e| e.management)
        {
            if let Err(error) = ctx.broker.delete_user(&management, &user).await {
                tracing::warn!(%error, queue, "removing a stale broker user failed");
                all_removed = false;
                continue;
            }
        }
        let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
        api.delete(&secret.name_any(), &DeleteParams::default())
            .await?;
    }
    Ok(all_removed)
}

/// A deleted workload: removes its broker users, then its finalizer. A broker that is
/// gone releases it at once; one that fails, after [`GIVE_UP_AFTER`]; both with an Event.
pub async fn finalize<K: Workload>(ctx: &Context, workload: &K) -> Result<Action, Error> {
    if !has_finalizer(workload) {
        return Ok(Action::await_change());
    }
    let namespace = workload.namespace().unwrap_or_default();
    let user = access::user_name(K::KIND, &namespace, &workload.name_any());
    let terminating = namespace_terminating(ctx, &namespace).await;
    for (queue, _) in user_secrets(ctx, workload).await? {
        let endpoint = match terminating {
            true => None,
            false => broker(ctx, &namespace, &queue).await?,
        };
        let Some(management) = endpoint.and_then(|e| e.management) else {
            let note = format!(
                "broker user {user} was not removed: the managed broker of Queue {queue:?} is gone"
            );
            publish(ctx, workload, note).await;
            continue;
        };
        if let Err(error) = ctx.broker.delete_user(&management, &user).await {
            if !waited_long_enough(workload) {
                tracing::info!(%error, queue, "removing the broker user failed; retrying");
                return Ok(Action::requeue(RETRY));
            }
            let note = format!(
                "broker user {user} was not removed from the managed broker of Queue {queue:?} \
                 within {GIVE_UP_AFTER:?}: {error}"
            );
            publish(ctx, workload, note).await;
        }
    }
    set_finalizer(ctx, workload, false).await?;
    Ok(Action::await_change())
}

/// Whether the workload has been deleted for longer than [`GIVE_UP_AFTER`].
fn waited_long_enough<K: Resource>(workload: &K) -> bool {
    let Some(deleted) = &workload.meta().deletion_timestamp else {
        return true;
    };
    let waited = k8s_openapi::jiff::Timestamp::now().duration_since(deleted.0);
    waited.unsigned_abs() >= GIVE_UP_AFTER && !waited.is_negative()
}

/// Whether the namespace is being deleted (its brokers go with it); `false` when it cannot
/// be read (the operator may lack the right).
async fn namespace_terminating(ctx: &Context, namespace: &str) -> bool {
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    match namespaces.get_opt(namespace).await {
        Ok(Some(ns)) => being_deleted(&ns.metadata),
        Ok(None) => true,
        Err(error) => {
            tracing::debug!(%error, "reading the namespace failed");
            false
        }
    }
}

/// A Warning Event about a broker user left behind (best effort).
async fn publish<K: Workload>(ctx: &Context, workload: &K, note: String) {
    tracing::warn!(note, "broker user left");
    let event = Event {
        type_: EventType::Warning,
        reason: event::BROKER_USER_LEFT.to_owned(),
        note: Some(note),
        action: "Finalize".to_owned(),
        secondary: None,
    };
    if let Err(error) = ctx
        .recorder
        .publish(&event, &workload.object_ref(&()))
        .await
    {
        tracing::warn!(%error, "publishing an Event failed");
    }
}

fn has_finalizer<K: Resource>(workload: &K) -> bool {
    super::has_finalizer(workload, FINALIZER)
}

/// Adds or removes the finalizer.
async fn set_finalizer<K: Workload>(
    ctx: &Context,
    workload: &K,
    present: bool,
) -> Result<(), Error> {
    super::set_finalizer(&ctx.client, workload, FINALIZER, present).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_administrator_secret_is_replaced_by_the_workloads_own() {
        let own = SecretKeyRef {
            name: "line-1-gateway-amqp-telemetry".into(),
            key: "uri".into(),
        };
        let admin = SecretKeyRef {
            name: "telemetry-rabbitmq-credentials".into(),
            key: "uri".into(),
        };
        let (mut uri, mut credentials) = (admin.clone(), BrokerCredentials::Administrator);
        substitute(&mut uri, &mut credentials, Some(&own));
        assert_eq!(
            (uri, credentials),
            (own.clone(), BrokerCredentials::Workload)
        );
        let supplied = SecretKeyRef {
            name: "shared-rabbit".into(),
            key: "uri".into(),
        };
        let (mut uri, mut credentials) = (supplied.clone(), BrokerCredentials::Supplied);
        substitute(&mut uri, &mut credentials, Some(&own));
        assert_eq!((uri, credentials), (supplied, BrokerCredentials::Supplied));
        let (mut uri, mut credentials) = (admin.clone(), BrokerCredentials::Administrator);
        substitute(&mut uri, &mut credentials, None);
        assert_eq!(
            credentials,
            BrokerCredentials::Administrator,
            "left to the build to refuse"
        );
    }

    #[test]
    fn a_workload_deleted_just_now_is_not_given_up_on() {
        let gateway: crate::crd::Gateway = crate::build::fixtures::load("gateway.yaml");
        let deleted = crate::controller::mock_api::deleted(&gateway);
        assert!(
            waited_long_enough(&deleted),
            "deleted in 2026-01-01, long ago"
        );
        let mut recent = gateway;
        recent.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ));
        assert!(!waited_long_enough(&recent));
    }
}
