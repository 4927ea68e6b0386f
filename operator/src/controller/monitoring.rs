//! Monitoring objects of the Prometheus Operator, created only where the cluster serves its
//! CRDs (`monitoring.coreos.com/v1`). Whether it does is discovered lazily and cached for
//! a few minutes, so CRDs installed after the operator started are picked up without a
//! restart. The objects carry owner references: the garbage collector removes them with
//! their Gateway, Worker or Queue.
//!
//! Monitoring is best effort: a failure here is logged and counted
//! (`tributary_operator_reconcile_errors_total{error="monitoring"}`) but never fails the
//! reconcile of the pipeline itself; the next resync tries again.

use super::Context;
use crate::build::monitoring::{self as build, MonitoringKind};
use crate::build::{BuildError, FIELD_MANAGER};
use crate::crd::{Gateway, Queue, Worker};
use kube::api::{ApiResource, DynamicObject, ObjectMeta, Patch, PatchParams};
use kube::{Api, Client, Resource};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// How long a discovery answer is trusted.
pub const RECHECK: Duration = Duration::from_secs(300);
/// How long a failed discovery (not a "not served") is trusted before asking again.
pub const RECHECK_AFTER_ERROR: Duration = Duration::from_secs(30);

/// Which Prometheus Operator kinds the cluster serves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Served {
    /// `podmonitors.monitoring.coreos.com/v1`.
    pub pod_monitor: bool,
    /// `prometheusrules.monitoring.coreos.com/v1`.
    pub prometheus_rule: bool,
}

impl Served {
    /// From the resource names the API group version lists.
    pub fn from_resources<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        let mut served = Served::default();
        for name in names {
            if name == MonitoringKind::PodMonitor.plural() {
                served.pod_monitor = true;
            } else if name == MonitoringKind::PrometheusRule.plural() {
                served.prometheus_rule = true;
            }
        }
        served
    }

    /// Whether `kind` is served.
    pub fn serves(self, kind: MonitoringKind) -> bool {
        match kind {
            MonitoringKind::PodMonitor => self.pod_monitor,
            MonitoringKind::PrometheusRule => self.prometheus_rule,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Discovered {
    served: Served,
    valid_until: Instant,
}

/// One cached answer per process; the lock is held across the discovery request so that
/// concurrent reconciles ask once.
static DISCOVERY: Mutex<Option<Discovered>> = Mutex::const_new(None);
/// Whether "not served" was logged already (once per process, at info).
static LOGGED_ABSENT: AtomicBool = AtomicBool::new(false);
/// Whether "served" was logged already.
static LOGGED_PRESENT: AtomicBool = AtomicBool::new(false);

/// The kinds the cluster serves, from the cache or by asking the API server.
pub async fn served(client: &Client) -> Served {
    let mut cache = DISCOVERY.lock().await;
    let now = Instant::now();
    if let Some(discovered) = *cache {
        if now < discovered.valid_until {
            return discovered.served;
        }
    }
    let group_version = format!("{}/{}", build::GROUP, build::VERSION);
    let (served, ttl) = match client.list_api_group_resources(&group_version).await {
        Ok(list) => (
            Served::from_resources(list.resources.iter().map(|r| r.name.as_str())),
            RECHECK,
        ),
        // The group is not served at all.
        Err(kube::Error::Api(status)) if status.code == 404 => (Served::default(), RECHECK),
        Err(error) => {
            tracing::warn!(%error, group_version, "discovering the Prometheus Operator API failed");
            (Served::default(), RECHECK_AFTER_ERROR)
        }
    };
    if served == Served::default() {
        if !LOGGED_ABSENT.swap(true, Ordering::Relaxed) {
            tracing::info!(
                group_version,
                "the cluster does not serve PodMonitors or PrometheusRules: no monitoring \
                 objects are created (checked again every few minutes)"
            );
        }
    } else if !LOGGED_PRESENT.swap(true, Ordering::Relaxed) {
        tracing::info!(
            group_version,
            pod_monitors = served.pod_monitor,
            prometheus_rules = served.prometheus_rule,
            "the cluster serves the Prometheus Operator API: creating monitoring objects"
        );
    }
    *cache = Some(Discovered {
        served,
        valid_until: now + ttl,
    });
    served
}

/// Server-side applies one dynamic object, forced, under the operator's field manager.
async fn apply_dynamic(
    client: &Client,
    resource: &ApiResource,
    object: &DynamicObject,
) -> Result<ObjectMeta, super::Error> {
    let namespace = object
        .metadata
        .namespace
        .clone()
        .ok_or(BuildError::MissingMetadata("namespace"))?;
    let name = object
        .metadata
        .name
        .clone()
        .ok_or(BuildError::MissingMetadata("name"))?;
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &namespace, resource);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    Ok(api
        .patch(&name, &params, &Patch::Apply(object))
        .await?
        .metadata)
}

/// Builds and applies the objects of `owner` whose kind the cluster serves; logs and counts
/// a failure instead of returning it.
async fn ensure<K>(
    ctx: &Context,
    owner: &K,
    objects: Vec<(MonitoringKind, Result<DynamicObject, BuildError>)>,
) where
    K: Resource<DynamicType = ()>,
{
    let served = served(&ctx.client).await;
    for (kind, object) in objects {
        if !served.serves(kind) {
            continue;
        }
        let result = match object {
            Ok(mut object) => {
                crate::build::labels::add_missing(&mut object.metadata, &ctx.monitoring_labels);
                let resource = kind.api_resource();
                super::applied::apply_dynamic(ctx, kind.kind(), &object, || {
                    apply_dynamic(&ctx.client, &resource, &object)
                })
                .await
            }
            Err(error) => Err(error.into()),
        };
        if let Err(error) = result {
            let owner_kind = K::kind(&());
            ctx.metrics.error(&owner_kind, "monitoring");
            tracing::warn!(
                kind = %owner_kind,
                name = %owner.meta().name.as_deref().unwrap_or_default(),
                namespace = %owner.meta().namespace.as_deref().unwrap_or_default(),
                monitoring_kind = kind.kind(),
                %error,
                "applying a monitoring object failed"
            );
        }
    }
}

/// The Gateway's PodMonitor and PrometheusRule (auth failure bursts, broker connection).
pub async fn ensure_for_gateway(ctx: &Context, gateway: &Gateway) {
    let objects = vec![
        (
            MonitoringKind::PodMonitor,
            build::gateway_pod_monitor(gateway),
        ),
        (MonitoringKind::PrometheusRule, build::gateway_rule(gateway)),
    ];
    ensure(ctx, gateway, objects).await;
}

/// The Worker's PodMonitor.
pub async fn ensure_for_worker(ctx: &Context, worker: &Worker) {
    let objects = vec![(
        MonitoringKind::PodMonitor,
        build::worker_pod_monitor(worker),
    )];
    ensure(ctx, worker, objects).await;
}

/// The Queue's PrometheusRule (backlog, dead letters, sink errors).
pub async fn ensure_for_queue(ctx: &Context, queue: &Queue) {
    let objects = vec![(MonitoringKind::PrometheusRule, build::queue_rule(queue))];
    ensure(ctx, queue, objects).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_of_the_monitoring_group_reads_the_served_kinds() {
        let all = Served::from_resources([
            "alertmanagers",
            "podmonitors",
            "podmonitors/status",
            "prometheusrules",
            "servicemonitors",
        ]);
        assert_eq!(
            all,
            Served {
                pod_monitor: true,
                prometheus_rule: true
            }
        );
        assert!(all.serves(MonitoringKind::PodMonitor));
        // A cluster with only ServiceMonitors (e.g. a trimmed-down CRD install).
        let none = Served::from_resources(["servicemonitors"]);
        assert!(!none.serves(MonitoringKind::PodMonitor));
        assert!(!none.serves(MonitoringKind::PrometheusRule));
    }
}
