//! The watch caches of the children the operator applies (`controller::applied`), for one
//! watched namespace (or all): label-selected, metadata only (a Secret's values never
//! reach them), except the Deployments and StatefulSets whose status the reconciles read
//! and the Services whose address they read (the Deployments and Services also answer
//! `crate::reads`); PodMonitors and PrometheusRules too when the cluster serves them at start. A kind the
//! operator may not list and watch leaves its cache unfilled: those children are always
//! applied.

use super::controllers::{api_for, children_config};
use super::stopped;
use crate::build::monitoring::MonitoringKind;
use crate::controller::Context;
use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::NamespaceResourceScope;
use kube::api::DynamicObject;
use kube::core::PartialObjectMeta as Meta;
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::sync::Arc;
use tokio::sync::watch;

/// Fills the caches of every kind of child until `stop` fires.
pub(super) async fn fill_caches(ctx: &Arc<Context>, ns: Option<&str>, stop: watch::Receiver<bool>) {
    // Before `policy/v1` (Kubernetes 1.21) no cache: those budgets are always applied.
    let with_pdbs = ctx.pdb.api_version() == "policy/v1";
    let pdb_stop = stop.clone();
    let pdbs = async move {
        if with_pdbs {
            cache::<Meta<PodDisruptionBudget>>(ctx, ns, pdb_stop, Reads::No).await;
        }
    };
    tokio::join!(
        cache::<Meta<ConfigMap>>(ctx, ns, stop.clone(), Reads::No),
        cache::<Meta<Secret>>(ctx, ns, stop.clone(), Reads::No),
        cache::<Service>(ctx, ns, stop.clone(), Reads::Too),
        cache::<Meta<NetworkPolicy>>(ctx, ns, stop.clone(), Reads::No),
        pdbs,
        cache::<Deployment>(ctx, ns, stop.clone(), Reads::Too),
        cache::<StatefulSet>(ctx, ns, stop.clone(), Reads::No),
        monitoring(ctx, ns, stop),
    );
}

/// The metadata of the PodMonitors and PrometheusRules, for the kinds the cluster serves at
/// start (installed later, they are applied on every reconcile until a restart).
async fn monitoring(ctx: &Arc<Context>, ns: Option<&str>, stop: watch::Receiver<bool>) {
    let served = crate::controller::monitoring::served(&ctx.client).await;
    let kinds = [MonitoringKind::PodMonitor, MonitoringKind::PrometheusRule];
    let caches = kinds
        .into_iter()
        .filter(|kind| served.serves(*kind))
        .map(|kind| {
            let resource = kind.api_resource();
            let writer = reflector::store::Writer::new(resource.clone());
            let namespace = ns.map(str::to_owned);
            ctx.applied
                .caches
                .add_dynamic(&resource, namespace, writer.as_reader());
            let api: Api<Meta<DynamicObject>> = match ns {
                Some(ns) => Api::namespaced_with(ctx.client.clone(), ns, &resource),
                None => Api::all_with(ctx.client.clone(), &resource),
            };
            let stream = watcher(api, children_config())
                .default_backoff()
                .modify(|object| object.managed_fields_mut().clear())
                .reflect(writer)
                .take_while(|item| futures::future::ready(!refused(item)));
            drain(stream, stop.clone())
        });
    futures::future::join_all(caches).await;
}

/// The children of kind `K` (`Meta<_>`: metadata only, the API asked for no more),
/// without their managedFields; the whole-object caches of `Reads::Too` also answer the
/// reconciles' and the autoscaler's reads.
async fn cache<K>(ctx: &Arc<Context>, ns: Option<&str>, stop: watch::Receiver<bool>, reads: Reads)
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let kind = K::kind(&()).into_owned();
    if reads == Reads::Too {
        ctx.reads.add(&kind, ns.map(str::to_owned), reader.clone());
    }
    ctx.applied.caches.add(&kind, ns.map(str::to_owned), reader);
    let stream = watcher(api_for::<K>(&ctx.client, ns), children_config())
        .default_backoff()
        .modify(|object| object.managed_fields_mut().clear())
        .reflect(writer)
        .take_while(move |item| {
            let refused = refused(item);
            if refused {
                tracing::warn!(
                    %kind,
                    "cannot list and watch this kind of child (RBAC, or not served): each is applied on every reconcile"
                );
            }
            futures::future::ready(!refused)
        });
    drain(stream, stop).await;
}

/// Whether a cache of children also answers the reconciles' reads (`crate::reads`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reads {
    Too,
    No,
}

/// Whether the API server refused to list or watch the kind for good: forbidden (the
/// operator's role lacks `list` or `watch`) or not served. Its cache then stays unfilled
/// (its children are always applied) instead of asking again and again.
fn refused<T>(item: &Result<T, watcher::Error>) -> bool {
    match item {
        Err(
            watcher::Error::InitialListFailed(kube::Error::Api(status))
            | watcher::Error::WatchStartFailed(kube::Error::Api(status)),
        ) => status.is_forbidden() || status.is_not_found(),
        _ => false,
    }
}

/// Runs a reflector's stream until `stop` fires.
async fn drain<S: Stream>(stream: S, mut stop: watch::Receiver<bool>) {
    let stream = stream.for_each(|_| futures::future::ready(()));
    tokio::select! {
        () = stream => {}
        () = stopped(&mut stop) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(code: u16, reason: &str) -> Result<(), watcher::Error> {
        let status: kube::core::Status = serde_json::from_value(serde_json::json!({
            "status": "Failure", "reason": reason, "message": reason, "code": code,
        }))
        .expect("status");
        Err(watcher::Error::InitialListFailed(kube::Error::Api(
            Box::new(status),
        )))
    }

    #[test]
    fn a_kind_the_operator_may_not_watch_stops_its_cache_and_a_passing_failure_does_not() {
        assert!(refused(&failed(403, "Forbidden")));
        assert!(refused(&failed(404, "NotFound")));
        assert!(!refused(&failed(500, "InternalError")));
        assert!(!refused(&Ok(())));
    }
}
