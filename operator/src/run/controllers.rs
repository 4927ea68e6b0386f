//! The controllers of one watched namespace (or of all): what each watches besides its
//! own kind, the device registry's caches, the autoscaler and the device collector.

use super::stopped;
use crate::controller::{self, error_policy, malformed::guarded, Context};
use crate::crd::{ApplicationApi, Device, Gateway, Queue, Sink, Worker};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::core::DeserializeGuard;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Controller;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use std::sync::Arc;
use tokio::sync::watch;

pub(super) fn api_for<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// What the controllers watch of Secrets: metadata only, never the data; data is read by
/// name when a resource references the Secret, so no other Secret's contents are read.
type SecretMeta = PartialObjectMeta<Secret>;

/// The readable objects cached in `store` that live in `namespace` and satisfy `depends`:
/// what to reconcile when a watched object of that namespace changes.
fn dependents<K>(
    store: &Store<DeserializeGuard<K>>,
    namespace: Option<String>,
    depends: impl Fn(&K) -> bool,
) -> Vec<ObjectRef<DeserializeGuard<K>>>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    store
        .state()
        .into_iter()
        .filter(|object| object.namespace() == namespace && object.0.as_ref().is_ok_and(&depends))
        .map(|object| ObjectRef::from_obj(object.as_ref()))
        .collect()
}

/// The Queue a managed broker child names in its labels (owned or kept under `Retain`).
fn labelled_queue<K: Resource>(child: &K) -> Option<ObjectRef<DeserializeGuard<Queue>>> {
    let labels = child.meta().labels.as_ref()?;
    if labels
        .get(crate::build::OWNER_KIND_LABEL)
        .map(String::as_str)
        != Some("queue")
    {
        return None;
    }
    let name = labels.get(crate::build::OWNER_LABEL)?;
    Some(ObjectRef::new(name).within(child.meta().namespace.as_deref()?))
}

pub(super) fn children_config() -> watcher::Config {
    watcher::Config::default().labels("app.kubernetes.io/managed-by=tributary-operator")
}

/// Runs the controllers and the autoscaler for one namespace (or all) until `stop`
/// fires.
pub(super) async fn run_controllers(
    ctx: Arc<Context>,
    namespace: Option<String>,
    stop: watch::Receiver<bool>,
) {
    let ns = namespace.as_deref();
    let workers = Controller::new(
        api_for::<DeserializeGuard<Worker>>(&ctx.client, ns),
        watcher::Config::default(),
    );
    let autoscaler_ctx = Arc::new(crate::autoscaler::Context {
        client: ctx.client.clone(),
        metrics: ctx.metrics.clone(),
        recorder: ctx.recorder.clone(),
        broker: ctx.broker.clone(),
        reads: ctx.reads.clone(),
    });
    let autoscaler = crate::autoscaler::run(autoscaler_ctx, workers.store(), stop.clone());
    tokio::join!(
        queues(&ctx, ns, stop.clone()),
        sinks(&ctx, ns, stop.clone()),
        gateways(&ctx, ns, stop.clone()),
        devices(&ctx, ns, stop.clone()),
        application_apis(&ctx, ns, stop.clone()),
        gateway_pods(&ctx, ns, stop.clone()),
        device_secrets(&ctx, ns, stop.clone()),
        secret_metadata(&ctx, ns, stop.clone()),
        worker_pods(&ctx, ns, stop.clone()),
        super::children::fill_caches(&ctx, ns, stop.clone()),
        run_workers(workers, &ctx, ns, stop),
        autoscaler
    );
}

/// Resolves once `stop` fires, owning it (for `graceful_shutdown_on`).
async fn on_stop(mut stop: watch::Receiver<bool>) {
    stopped(&mut stop).await;
}

/// The Queue controller: woken by its broker's StatefulSet and by the URI Secret of an
/// external broker.
async fn queues(ctx: &Arc<Context>, ns: Option<&str>, stop: watch::Receiver<bool>) {
    let client = &ctx.client;
    let wc = watcher::Config::default();
    let queues = Controller::new(api_for::<DeserializeGuard<Queue>>(client, ns), wc.clone());
    let queue_store = queues.store();
    ctx.reads
        .add("Queue", ns.map(str::to_owned), queues.store());
    queues
        // By label, not owner reference: under `Retain` the broker has no owner.
        .watches(
            api_for::<StatefulSet>(client, ns),
            children_config(),
            |set: StatefulSet| labelled_queue(&set),
        )
        .watches(
            api_for::<SecretMeta>(client, ns),
            wc,
            move |secret: SecretMeta| {
                // External brokers: the URI or CA Secret may appear after the Queue.
                dependents(&queue_store, secret.namespace(), |q| {
                    q.spec.broker.external.as_ref().is_some_and(|e| {
                        e.uri_secret_ref.name == secret.name_any()
                            || e.ca_secret_ref
                                .as_ref()
                                .is_some_and(|ca| ca.name == secret.name_any())
                    })
                })
            },
        )
        .graceful_shutdown_on(on_stop(stop))
        .run(
            |object, ctx| guarded(object, ctx, controller::queue::reconcile),
            error_policy,
            ctx.clone(),
        )
        .for_each(|_| futures::future::ready(()))
        .await;
}

/// The Sink controller: woken by the Secrets it references and by its target Queue.
async fn sinks(ctx: &Arc<Context>, ns: Option<&str>, stop: watch::Receiver<bool>) {
    let client = &ctx.client;
    let wc = watcher::Config::default();
    let sinks = Controller::new(api_for::<DeserializeGuard<Sink>>(client, ns), wc.clone());
    let sink_store = sinks.store();
    ctx.reads.add("Sink", ns.map(str::to_owned), sinks.store());
    let sink_store_for_queues = sink_store.clone();
    sinks
        .watches(
            api_for::<SecretMeta>(client, ns),
            wc.clone(),
            move |secret: SecretMeta| {
                dependents(&sink_store, secret.namespace(), |s| {
                    crate::build::sink::referenced_secrets(s)
                        .iter()
                        .any(|r| r.name == secret.name_any())
                })
            },
        )
        .watches(api_for::<Queue>(client, ns), wc, move |queue: Queue| {
            dependents(&sink_store_for_queues, queue.namespace(), |s| {
                crate::build::sink::target_queue(s) == Some(queue.name_any().as_str())
            })
        })
        .graceful_shutdown_on(on_stop(stop))
        .run(
            |object, ctx| guarded(object, ctx, controller::sink::reconcile),
            error_policy,
            ctx.clone(),
        )
        .for_each(|_| futures::future::ready(()))
        .await;
}

/// The Gateway controller: woken by its Deployment, the Queues it routes to and the
/// Secrets of its namespace.
async fn gateways(ctx: &Arc<Context>, ns: Option<&str>, stop: watch::Receiver<bool>) {
    let client = &ctx.client;
    let wc = watcher::Config::default();
    let gateways = Controller::new(api_for::<DeserializeGuard<Gateway>>(client, ns), wc.clone());
    let by_queue = gateways.store();
    let by_secret = gateways.store();
    let by_device = gateways.store();
    ctx.registry.add_gateways(gateways.store());
    ctx.reads
        .add("Gateway", ns.map(str::to_owned), gateways.store());
    gateways
        .owns(api_for::<Deployment>(client, ns), children_config())
        .watches(
            api_for::<DeserializeGuard<Device>>(client, ns),
            wc.clone(),
            move |device: DeserializeGuard<Device>| {
                // A Device that cannot be read may have named any Gateway of its namespace.
                let named = device.0.as_ref().map(|d| d.spec.gateways.clone()).ok();
                dependents(&by_device, device.namespace(), |g| {
                    named
                        .as_ref()
                        .is_none_or(|names| names.contains(&g.name_any()))
                })
            },
        )
        .watches(
            api_for::<Queue>(client, ns),
            wc.clone(),
            move |queue: Queue| {
                dependents(&by_queue, queue.namespace(), |g| {
                    g.spec.routes.iter().any(|r| r.queue == queue.name_any())
                })
            },
        )
        .watches(
            api_for::<SecretMeta>(client, ns),
            wc,
            move |secret: SecretMeta| {
                // Device credentials, TLS and broker URIs: any Secret of the namespace may be
                // referenced directly or through a Queue.
                dependents(&by_secret, secret.namespace(), |_| true)
            },
        )
        .graceful_shutdown_on(on_stop(stop))
        .run(
            |object, ctx| guarded(object, ctx, controller::gateway::reconcile),
            error_policy,
            ctx.clone(),
        )
        .for_each(|_| futures::future::ready(()))
        .await;
}

/// The Worker controller (its store shared with the autoscaler): woken by its Deployment,
/// its Queue, its Sinks and the Secrets of its namespace.
async fn run_workers(
    workers: Controller<DeserializeGuard<Worker>>,
    ctx: &Arc<Context>,
    ns: Option<&str>,
    stop: watch::Receiver<bool>,
) {
    let client = &ctx.client;
    let wc = watcher::Config::default();
    let by_queue = workers.store();
    let by_sink = workers.store();
    let by_secret = workers.store();
    workers
        .owns(api_for::<Deployment>(client, ns), children_config())
        .watches(
            api_for::<Queue>(client, ns),
            wc.clone(),
            move |queue: Queue| {
                // Sinks of type queue also depend on Queues: reconcile every Worker of the
                // namespace that uses this Queue directly; sink targets come via the Sink.
                dependents(&by_queue, queue.namespace(), |w| {
                    w.spec.queue == queue.name_any()
                })
            },
        )
        .watches(
            api_for::<Sink>(client, ns),
            wc.clone(),
            move |sink: Sink| {
                dependents(&by_sink, sink.namespace(), |w| {
                    w.spec.sinks.contains(&sink.name_any())
                })
            },
        )
        .watches(
            api_for::<SecretMeta>(client, ns),
            wc,
            move |secret: SecretMeta| dependents(&by_secret, secret.namespace(), |_| true),
        )
        .graceful_shutdown_on(on_stop(stop))
        .run(
            |object, ctx| guarded(object, ctx, controller::worker::reconcile),
            error_policy,
            ctx.clone(),
        )
        .for_each(|_| futures::future::ready(()))
        .await;
}

/// The ApplicationApi controller: woken by its Deployment, the Sinks, Queues and Gateways
/// it reads from, and the Secrets of its namespace (the Sinks' URLs, its keys Secret).
async fn application_apis(ctx: &Arc<Context>, ns: Option<&str>, stop: watch::Receiver<bool>) {
    let client = &ctx.client;
    let wc = watcher::Config::default();
    let apis = Controller::new(
        api_for::<DeserializeGuard<ApplicationApi>>(client, ns),
        wc.clone(),
    );
    let (by_sink, by_queue, by_gateway, by_secret) =
        (apis.store(), apis.store(), apis.store(), apis.store());
    ctx.registry.add_apis(apis.store());
    apis.owns(api_for::<Deployment>(client, ns), children_config())
        .watches(
            api_for::<Sink>(client, ns),
            wc.clone(),
            move |sink: Sink| {
                dependents(&by_sink, sink.namespace(), |a| {
                    crate::build::api::sinks_of(a).contains(&sink.name_any().as_str())
                })
            },
        )
        .watches(
            api_for::<Queue>(client, ns),
            wc.clone(),
            move |queue: Queue| {
                // The live Queue by name; a Gateway's Queues are not named in the spec.
                dependents(&by_queue, queue.namespace(), |a| {
                    a.spec.commands.is_some()
                        || a.spec
                            .live
                            .as_ref()
                            .is_some_and(|l| l.queue == queue.name_any())
                })
            },
        )
        .watches(
            api_for::<PartialObjectMeta<Gateway>>(client, ns),
            wc.clone(),
            move |gateway: PartialObjectMeta<Gateway>| {
                dependents(&by_gateway, gateway.namespace(), |a| {
                    a.spec
                        .commands
                        .as_ref()
                        .is_some_and(|c| c.gateway == gateway.name_any())
                })
            },
        )
        .watches(
            api_for::<SecretMeta>(client, ns),
            wc,
            move |secret: SecretMeta| dependents(&by_secret, secret.namespace(), |_| true),
        )
        .graceful_shutdown_on(on_stop(stop))
        .run(
            |object, ctx| guarded(object, ctx, controller::application_api::reconcile),
            error_policy,
            ctx.clone(),
        )
        .for_each(|_| futures::future::ready(()))
        .await;
}

/// The Device controller (its cache shared with the Gateways' table builder): woken by
/// the Gateways it names (a Device may come first) and by its credential Secrets.
async fn devices(ctx: &Arc<Context>, ns: Option<&str>, stop: watch::Receiver<bool>) {
    let client = &ctx.client;
    let wc = watcher::Config::default();
    // Cached without managedFields (a third of a Device's size): a fleet's cache is the
    // operator's largest.
    let (reader, writer) = reflector::store();
    let stream = watcher(api_for::<DeserializeGuard<Device>>(client, ns), wc.clone())
        .default_backoff()
        .modify(|device| device.managed_fields_mut().clear())
        .reflect(writer)
        .applied_objects();
    let devices = Controller::for_stream(stream, reader);
    ctx.registry.add_devices(devices.store());
    let by_gateway = devices.store();
    devices
        .owns(api_for::<SecretMeta>(client, ns), children_config())
        .watches(
            api_for::<PartialObjectMeta<Gateway>>(client, ns),
            wc,
            move |gateway: PartialObjectMeta<Gateway>| {
                dependents(&by_gateway, gateway.namespace(), |d| {
                    d.spec.gateways.contains(&gateway.name_any())
                })
            },
        )
        .graceful_shutdown_on(on_stop(stop))
        .run(
            |object, ctx| guarded(object, ctx, controller::device::reconcile),
            error_policy,
            ctx.clone(),
        )
        .for_each(|_| futures::future::ready(()))
        .await;
}

/// A cache of the metadata of the Secrets the operator issued to Devices (rotation,
/// certificate validity): unchanged credentials are checked without a request.
async fn device_secrets(ctx: &Arc<Context>, ns: Option<&str>, stop: watch::Receiver<bool>) {
    let (reader, writer) = reflector::store();
    ctx.registry.add_device_secrets(reader);
    let labels = "app.kubernetes.io/name=device,app.kubernetes.io/managed-by=tributary-operator";
    fill(writer, api_for::<SecretMeta>(&ctx.client, ns), labels, stop).await;
}

/// A cache of the metadata of every Secret (their versions: a Secret the reconciles read
/// is read again only once it changed).
async fn secret_metadata(ctx: &Arc<Context>, ns: Option<&str>, stop: watch::Receiver<bool>) {
    let (reader, writer) = reflector::store();
    ctx.reads.add("Secret", ns.map(str::to_owned), reader);
    fill(writer, api_for::<SecretMeta>(&ctx.client, ns), "", stop).await;
}

/// A cache of the Workers' pods (the autoscaler asks each for its sinks' status).
async fn worker_pods(ctx: &Arc<Context>, ns: Option<&str>, stop: watch::Receiver<bool>) {
    let (reader, writer) = reflector::store();
    ctx.reads.add_worker_pods(ns.map(str::to_owned), reader);
    let labels = crate::build::worker::WORKER_POD_SELECTOR;
    fill(writer, api_for::<Pod>(&ctx.client, ns), labels, stop).await;
}

/// A cache of the gateway pods (their addresses, for the device collector).
async fn gateway_pods(ctx: &Arc<Context>, ns: Option<&str>, stop: watch::Receiver<bool>) {
    let (reader, writer) = reflector::store();
    ctx.registry.add_pods(reader);
    let labels = "app.kubernetes.io/name=gateway";
    fill(writer, api_for::<Pod>(&ctx.client, ns), labels, stop).await;
}

/// Keeps `writer`'s cache filled with the objects of `api` that carry `labels` (all of
/// them when empty), until `stop` fires.
async fn fill<K>(
    writer: reflector::store::Writer<K>,
    api: Api<K>,
    labels: &str,
    mut stop: watch::Receiver<bool>,
) where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let config = match labels {
        "" => watcher::Config::default(),
        labels => watcher::Config::default().labels(labels),
    };
    let stream = watcher(api, config)
        .default_backoff()
        .modify(|object| object.managed_fields_mut().clear())
        .reflect(writer)
        .applied_objects()
        .for_each(|_| futures::future::ready(()));
    tokio::select! {
        () = stream => {}
        () = stopped(&mut stop) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures::load;
    use crate::build::queue::{build_managed, validate, BrokerPlan, Credentials};

    #[test]
    fn a_kept_broker_wakes_the_queue_it_is_labelled_with() {
        let queue: Queue = load("queue-managed.yaml");
        let BrokerPlan::Managed(managed) = validate(&queue).expect("valid") else {
            panic!("managed");
        };
        let credentials = Credentials {
            username: "u".into(),
            password: "p".into(),
            erlang_cookie: "c".into(),
        };
        let set = build_managed(&queue, &managed, &credentials, "img")
            .expect("builds")
            .stateful_set;
        // Retain: no owner reference, so only the labels lead back to the Queue.
        assert_eq!(set.metadata.owner_references, None);
        assert_eq!(
            labelled_queue(&set),
            Some(ObjectRef::new("telemetry").within("factory"))
        );
        let unlabelled = StatefulSet::default();
        assert_eq!(labelled_queue(&unlabelled), None);
    }
}
