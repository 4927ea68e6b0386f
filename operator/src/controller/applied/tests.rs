//! The ledger and caches together, and a Worker reconciled twice against the mocked API
//! server: the second pass, with nothing changed, writes nothing.

use super::*;
use crate::controller::mock_api::{context, mocked, path, ready, ready_queue, secret, tributary};
use crate::controller::mock_api::{events, Exchange};
use crate::crd::{Sink, Worker};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher::Event;
use serde_json::{json, Value};

type Meta<K> = PartialObjectMeta<K>;

/// A cache of `K` for namespace `factory`, registered in `applied`, filled (empty) unless
/// `filled` is false.
fn cache<K>(applied: &Applied, filled: bool) -> Writer<K>
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    let (reader, mut writer) = reflector::store();
    applied
        .caches
        .add(&K::kind(&()), Some("factory".to_owned()), reader);
    if filled {
        writer.apply_watcher_event(&Event::Init);
        writer.apply_watcher_event(&Event::InitDone);
    }
    writer
}

fn config_map_meta(name: &str, version: &str) -> Meta<ConfigMap> {
    let mut meta: Meta<ConfigMap> = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": name, "namespace": "factory", "uid": "u-1" },
    }))
    .expect("metadata");
    meta.metadata.resource_version = Some(version.to_owned());
    meta
}

fn key(name: &str) -> Key {
    ("ConfigMap".into(), "factory".into(), name.into())
}

#[test]
fn a_child_is_skipped_only_while_the_filled_cache_shows_it_as_applied() {
    let applied = Applied::default();
    let mut writer = cache::<Meta<ConfigMap>>(&applied, true);
    let answered = config_map_meta("a", "41");
    assert_eq!(
        applied.check(&key("a"), 7).0,
        Decision::Apply,
        "never applied"
    );
    applied.record(key("a"), 7, &answered.metadata);
    // The watch has not shown the apply yet.
    assert_eq!(applied.check(&key("a"), 7).0, Decision::Apply);
    writer.apply_watcher_event(&Event::Apply(answered.clone()));
    assert_eq!(applied.check(&key("a"), 7).0, Decision::Skip);
    assert_eq!(
        applied.check(&key("a"), 8).0,
        Decision::Apply,
        "desired changed"
    );
    writer.apply_watcher_event(&Event::Apply(config_map_meta("a", "42")));
    assert_eq!(applied.check(&key("a"), 7).0, Decision::Apply, "edited");
    writer.apply_watcher_event(&Event::Delete(config_map_meta("a", "42")));
    assert_eq!(applied.check(&key("a"), 7).0, Decision::Apply, "deleted");
}

#[test]
fn without_a_filled_cache_of_the_kind_and_namespace_everything_is_applied() {
    let applied = Applied::default();
    let answered = config_map_meta("a", "41");
    applied.record(key("a"), 7, &answered.metadata);
    assert_eq!(applied.check(&key("a"), 7).0, Decision::Apply, "no cache");
    let mut writer = cache::<Meta<ConfigMap>>(&applied, false);
    writer.apply_watcher_event(&Event::InitApply(answered.clone()));
    assert_eq!(applied.check(&key("a"), 7).0, Decision::Apply, "not filled");
    writer.apply_watcher_event(&Event::InitDone);
    assert_eq!(applied.check(&key("a"), 7).0, Decision::Skip);
    let elsewhere = ("ConfigMap".into(), "other".into(), "a".into());
    assert_eq!(
        applied.check(&elsewhere, 7).0,
        Decision::Apply,
        "not watched"
    );
}

#[test]
fn records_of_children_gone_from_the_caches_are_swept() {
    let applied = Applied::default();
    let _writer = cache::<Meta<ConfigMap>>(&applied, true);
    for n in 0..=SWEEP_FLOOR {
        let name = format!("c{n}");
        applied.record(key(&name), 1, &config_map_meta(&name, "1").metadata);
    }
    assert!(applied.remembered() < SWEEP_FLOOR, "none is in the cache");
}

fn worker() -> Worker {
    let mut worker: Worker = crate::build::fixtures::load("worker-pipeline.yaml");
    worker.spec.scaling.enabled = false;
    worker
}

fn child(group_version: &str, plural: &str) -> String {
    path(group_version, "factory", plural, "ingest-worker")
}

/// What the server answers an apply with: its version.
fn versioned(uid: &str, generation: Option<i64>) -> Value {
    json!({ "metadata": { "uid": uid, "resourceVersion": "100", "generation": generation } })
}

/// The reads of every pass: the Queue, the Sink and the Secrets.
fn dereferenced() -> Vec<Exchange> {
    let sink: Sink = crate::build::fixtures::load("sink-postgres.yaml");
    let mut sink = serde_json::to_value(sink).expect("serializes");
    sink["status"] = json!({ "conditions": [ready("True")] });
    vec![
        Exchange::get(&tributary("queues", "telemetry")).reply(ready_queue("telemetry")),
        Exchange::get(&tributary("sinks", "readings")).reply(sink),
        Exchange::get(&path("v1", "factory", "secrets", "pg")).reply(secret("pg", "url", "x")),
        Exchange::get(&path("v1", "factory", "secrets", "telemetry-uri")).reply(secret(
            "telemetry-uri",
            "uri",
            "amqp://broker",
        )),
    ]
}

/// `body` as the server answered it (`answer` laid over), as a watch then shows it.
fn as_watched<K: DeserializeOwned>(body: &Value, answer: Value) -> K {
    let mut object = body.clone();
    object["metadata"]["uid"] = answer["metadata"]["uid"].clone();
    object["metadata"]["resourceVersion"] = json!("100");
    object["metadata"]["generation"] = answer["metadata"]["generation"].clone();
    if let Some(status) = answer.get("status") {
        object["status"] = status.clone();
    }
    serde_json::from_value(object).expect("deserializes")
}

#[tokio::test]
async fn a_second_reconcile_with_nothing_changed_writes_nothing() {
    let (client, server) = mocked();
    let ctx = context(client);
    let mut config_maps = cache::<Meta<ConfigMap>>(&ctx.applied, true);
    let mut policies = cache::<Meta<NetworkPolicy>>(&ctx.applied, true);
    let mut deployments = cache::<Deployment>(&ctx.applied, true);
    let deployment_answer = json!({
        "metadata": { "uid": "u-d", "generation": 1 },
        "status": { "replicas": 2, "readyReplicas": 2 },
    });
    let mut first = dereferenced();
    first.extend([
        Exchange::apply(&child("v1", "configmaps")).reply(versioned("u-c", None)),
        Exchange::apply(&child("networking.k8s.io/v1", "networkpolicies"))
            .reply(versioned("u-n", Some(1))),
        Exchange::apply(&child("apps/v1", "deployments")).reply(deployment_answer.clone()),
        Exchange::post(&events("factory")),
        Exchange::apply(&tributary("workers", "ingest/status"))
            .reply(serde_json::to_value(worker()).expect("serializes")),
    ]);
    let scenario = server.run(first);
    let worker = worker();
    let action = crate::controller::worker::reconcile(Arc::new(worker.clone()), ctx.clone()).await;
    action.expect("first pass reconciles");
    let bodies = scenario.done().await;
    // The watches show the children as the server answered, and the status written.
    config_maps.apply_watcher_event(&Event::Apply(as_watched(
        &bodies[4],
        versioned("u-c", None),
    )));
    policies.apply_watcher_event(&Event::Apply(as_watched(
        &bodies[5],
        versioned("u-n", Some(1)),
    )));
    deployments.apply_watcher_event(&Event::Apply(as_watched(&bodies[6], deployment_answer)));
    let mut settled = worker;
    settled.status = Some(serde_json::from_value(bodies[8]["status"].clone()).expect("status"));

    // Second pass: the same reads, no write (a further request would find no server).
    let (client, server) = mocked();
    let ctx = Arc::new(Context {
        reads: Arc::new(crate::reads::Reads::new(client.clone())),
        client,
        ..Arc::into_inner(ctx).expect("the only reference")
    });
    let scenario = server.run(dereferenced());
    let action = crate::controller::worker::reconcile(Arc::new(settled), ctx.clone()).await;
    action.expect("second pass reconciles without a write");
    assert_eq!(scenario.done().await.len(), 4, "reads only");
    let metrics = ctx.metrics.render();
    for kind in ["ConfigMap", "NetworkPolicy", "Deployment"] {
        let line = format!("tributary_operator_applies_skipped_total{{kind=\"{kind}\"}} 1");
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
}

/// The reads of every Gateway pass: its Queue and the Secrets it mounts.
fn gateway_reads() -> Vec<Exchange> {
    let secret_path = |name: &str| path("v1", "factory", "secrets", name);
    vec![
        Exchange::get(&tributary("queues", "telemetry")).reply(ready_queue("telemetry")),
        Exchange::get(&secret_path("devices")).reply(secret("devices", "passwords", "d1:x")),
        Exchange::get(&secret_path("jwt-keys")).reply(secret("jwt-keys", "a.pem", "-----")),
        Exchange::get(&secret_path("telemetry-uri")).reply(secret(
            "telemetry-uri",
            "uri",
            "amqp://broker",
        )),
    ]
}

#[tokio::test]
async fn a_settled_gateway_writes_nothing_on_its_next_reconcile() {
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    let gateway: crate::crd::Gateway = crate::build::fixtures::load("gateway.yaml");
    let (client, server) = mocked();
    let ctx = context(client);
    let mut config_maps = cache::<Meta<ConfigMap>>(&ctx.applied, true);
    let mut services = cache::<Meta<Service>>(&ctx.applied, true);
    let mut budgets = cache::<Meta<PodDisruptionBudget>>(&ctx.applied, true);
    let mut policies = cache::<Meta<NetworkPolicy>>(&ctx.applied, true);
    let mut deployments = cache::<Deployment>(&ctx.applied, true);
    let child = |group_version: &str, plural: &str| {
        path(group_version, "factory", plural, "line-1-gateway")
    };
    let registry = path("v1", "factory", "secrets", "line-1-gateway-registry");
    let deployment_answer = json!({
        "metadata": { "uid": "u-d", "generation": 1 },
        "status": { "replicas": 2, "readyReplicas": 2 },
    });
    let mut first = gateway_reads();
    first.extend([
        Exchange::get(&path(
            "v1",
            "factory",
            "secrets",
            "tributary-device-registry",
        ))
        .not_found(),
        Exchange::post("/api/v1/namespaces/factory/secrets"),
        Exchange::get(&registry).not_found(),
        Exchange::apply(&registry),
        Exchange::apply(&child("v1", "configmaps")).reply(versioned("u-c", None)),
        Exchange::apply(&child("v1", "services")).reply(versioned("u-s", None)),
        Exchange::apply(&child("policy/v1", "poddisruptionbudgets"))
            .reply(versioned("u-p", Some(1))),
        Exchange::apply(&child("networking.k8s.io/v1", "networkpolicies"))
            .reply(versioned("u-n", Some(1))),
        Exchange::apply(&child("apps/v1", "deployments")).reply(deployment_answer.clone()),
        Exchange::post(&events("factory")),
        Exchange::apply(&tributary("gateways", "line-1/status"))
            .reply(serde_json::to_value(&gateway).expect("serializes")),
    ]);
    let scenario = server.run(first);
    let action = crate::controller::gateway::reconcile(Arc::new(gateway.clone()), ctx.clone());
    action.await.expect("first pass reconciles");
    let bodies = scenario.done().await;
    config_maps.apply_watcher_event(&Event::Apply(as_watched(
        &bodies[8],
        versioned("u-c", None),
    )));
    services.apply_watcher_event(&Event::Apply(as_watched(
        &bodies[9],
        versioned("u-s", None),
    )));
    let budget = as_watched(&bodies[10], versioned("u-p", Some(1)));
    budgets.apply_watcher_event(&Event::Apply(budget));
    let policy = as_watched(&bodies[11], versioned("u-n", Some(1)));
    policies.apply_watcher_event(&Event::Apply(policy));
    deployments.apply_watcher_event(&Event::Apply(as_watched(&bodies[12], deployment_answer)));
    let mut settled = gateway;
    settled.status = Some(serde_json::from_value(bodies[14]["status"].clone()).expect("status"));

    // Second pass: the namespace's keys are kept; the registry Secret is read back (its
    // table unchanged); nothing is written.
    let (client, server) = mocked();
    let ctx = Arc::new(Context {
        reads: Arc::new(crate::reads::Reads::new(client.clone())),
        client,
        ..Arc::into_inner(ctx).expect("the only reference")
    });
    let mut second = gateway_reads();
    second.push(Exchange::get(&registry).reply(bodies[7].clone()));
    let scenario = server.run(second);
    let action = crate::controller::gateway::reconcile(Arc::new(settled), ctx.clone());
    action
        .await
        .expect("second pass reconciles without a write");
    assert_eq!(scenario.done().await.len(), 5, "reads only");
    let metrics = ctx.metrics.render();
    let kinds = [
        "ConfigMap",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "Deployment",
    ];
    for kind in kinds {
        let line = format!("tributary_operator_applies_skipped_total{{kind=\"{kind}\"}} 1");
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
}

#[tokio::test]
async fn a_monitoring_object_is_sent_again_only_once_its_cache_shows_a_change() {
    use crate::build::monitoring::MonitoringKind;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (client, _server) = mocked();
    let ctx = context(client);
    let resource = MonitoringKind::PodMonitor.api_resource();
    let mut writer = Writer::new(resource.clone());
    let namespace = Some("factory".to_owned());
    ctx.applied
        .caches
        .add_dynamic(&resource, namespace, writer.as_reader());
    writer.apply_watcher_event(&Event::Init);
    writer.apply_watcher_event(&Event::InitDone);
    let object = DynamicObject::new("line-1-gateway", &resource)
        .within("factory")
        .data(json!({ "spec": { "podMetricsEndpoints": [{ "port": "metrics" }] } }));
    let watched = |generation: i64| -> Meta<DynamicObject> {
        serde_json::from_value(json!({
            "apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor",
            "metadata": { "name": "line-1-gateway", "namespace": "factory", "uid": "u-m",
                          "generation": generation, "resourceVersion": "5" },
        }))
        .expect("metadata")
    };
    let sent = AtomicUsize::new(0);
    let send = || async {
        sent.fetch_add(1, Ordering::SeqCst);
        Ok(watched(1).metadata)
    };
    apply_dynamic(&ctx, "PodMonitor", &object, send)
        .await
        .expect("sent");
    writer.apply_watcher_event(&Event::Apply(watched(1)));
    apply_dynamic(&ctx, "PodMonitor", &object, send)
        .await
        .expect("skipped");
    assert_eq!(sent.load(Ordering::SeqCst), 1, "unchanged: not sent again");
    writer.apply_watcher_event(&Event::Apply(watched(2)));
    apply_dynamic(&ctx, "PodMonitor", &object, send)
        .await
        .expect("sent");
    assert_eq!(
        sent.load(Ordering::SeqCst),
        2,
        "edited by someone: sent again"
    );
}
