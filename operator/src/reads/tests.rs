use super::*;
use crate::controller::mock_api::{mocked, path, ready_queue, secret, tributary, Exchange};
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher::Event;
use serde_json::json;

/// A filled (empty) cache of `K` for namespace `factory`, registered in `reads`.
fn filled<K>(reads: &Reads, kind: &str) -> Writer<K>
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    let (reader, mut writer) = reflector::store();
    reads.add(kind, Some("factory".to_owned()), reader);
    writer.apply_watcher_event(&Event::Init);
    writer.apply_watcher_event(&Event::InitDone);
    writer
}

fn secret_meta(name: &str, version: &str) -> PartialObjectMeta<Secret> {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": { "name": name, "namespace": "factory", "resourceVersion": version },
    }))
    .expect("metadata")
}

fn secret_at(name: &str, value: &str, version: &str) -> serde_json::Value {
    let mut secret = secret(name, "uri", value);
    secret["metadata"]["resourceVersion"] = json!(version);
    secret
}

#[tokio::test]
async fn a_secret_is_read_again_only_once_its_version_changed() {
    let (client, server) = mocked();
    let reads = Reads::new(client);
    let mut metadata = filled::<PartialObjectMeta<Secret>>(&reads, "Secret");
    metadata.apply_watcher_event(&Event::Apply(secret_meta("uri", "5")));
    let get = || Exchange::get(&path("v1", "factory", "secrets", "uri"));
    let scenario = server.run(vec![
        get().reply(secret_at("uri", "amqp://one", "5")),
        get().reply(secret_at("uri", "amqp://two", "6")),
    ]);
    let value = |data: Option<Arc<SecretData>>| {
        String::from_utf8(data.expect("exists")["uri"].clone()).expect("text")
    };
    let first = reads.secret_data("factory", "uri").await.expect("read");
    assert_eq!(value(first), "amqp://one");
    // Unchanged: no request (a further one would find no answer in the scenario).
    for _ in 0..3 {
        let again = reads.secret_data("factory", "uri").await.expect("kept");
        assert_eq!(value(again), "amqp://one");
    }
    metadata.apply_watcher_event(&Event::Apply(secret_meta("uri", "6")));
    let changed = reads.secret_data("factory", "uri").await.expect("read");
    assert_eq!(value(changed), "amqp://two");
    assert_eq!(scenario.done().await.len(), 2, "one read per version");
}

#[tokio::test]
async fn a_secret_the_cache_shows_missing_is_asked_for() {
    let (client, server) = mocked();
    let reads = Reads::new(client);
    let _metadata = filled::<PartialObjectMeta<Secret>>(&reads, "Secret");
    // Made after the cache last heard: the server has it.
    let scenario = server.run(vec![
        Exchange::get(&path("v1", "factory", "secrets", "uri")).reply(secret_at("uri", "x", "1")),
        Exchange::get(&path("v1", "factory", "secrets", "gone")).not_found(),
    ]);
    let fresh = reads.secret_data("factory", "uri").await.expect("read");
    assert!(fresh.is_some());
    let gone = reads.secret_data("factory", "gone").await.expect("read");
    assert!(gone.is_none());
    assert_eq!(scenario.done().await.len(), 2);
}

#[tokio::test]
async fn without_a_filled_cache_every_read_asks_the_api_server() {
    let (client, server) = mocked();
    let reads = Reads::new(client);
    // Registered but not filled: unknown is not absent.
    let (reader, _writer) = reflector::store::<PartialObjectMeta<Secret>>();
    reads.add("Secret", Some("factory".to_owned()), reader);
    let get = || Exchange::get(&path("v1", "factory", "secrets", "uri"));
    let queue = Exchange::get("/apis/tributary.dev/v1alpha1/namespaces/factory/queues/q");
    let scenario = server.run(vec![
        get().reply(secret_at("uri", "amqp://one", "5")),
        get().reply(secret_at("uri", "amqp://one", "5")),
        queue.reply(ready_queue("q")),
    ]);
    reads.secret_data("factory", "uri").await.expect("read");
    reads.secret_data("factory", "uri").await.expect("read");
    let queue = reads.queue("factory", "q").await.expect("read");
    assert_eq!(queue.expect("exists").metadata.name.as_deref(), Some("q"));
    assert_eq!(scenario.done().await.len(), 3);
}

#[tokio::test]
async fn queues_deployments_and_worker_pods_come_from_filled_caches() {
    let (client, server) = mocked();
    let reads = Reads::new(client);
    let scenario = server.run(vec![]);
    let mut queues = filled::<DeserializeGuard<Queue>>(&reads, "Queue");
    let queue: Queue = serde_json::from_value(ready_queue("q")).expect("queue");
    queues.apply_watcher_event(&Event::Apply(DeserializeGuard(Ok(queue))));
    let mut deployments = filled::<Deployment>(&reads, "Deployment");
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": { "name": "rows-worker", "namespace": "factory" },
        "spec": { "replicas": 3, "selector": {}, "template": {} },
    }))
    .expect("deployment");
    deployments.apply_watcher_event(&Event::Apply(deployment));
    let (pod_reader, mut pods) = reflector::store::<Pod>();
    reads.add_worker_pods(None, pod_reader);
    pods.apply_watcher_event(&Event::Init);
    let pod = |name: &str, namespace: &str, instance: &str| -> Pod {
        serde_json::from_value(json!({
            "metadata": { "name": name, "namespace": namespace, "labels": {
                "app.kubernetes.io/name": "worker", "app.kubernetes.io/instance": instance,
            }},
        }))
        .expect("pod")
    };
    pods.apply_watcher_event(&Event::InitApply(pod("rows-1", "factory", "rows")));
    pods.apply_watcher_event(&Event::InitApply(pod("rows-1", "other", "rows")));
    pods.apply_watcher_event(&Event::InitApply(pod("alerts-1", "factory", "alerts")));
    pods.apply_watcher_event(&Event::InitDone);

    let found = reads.queue("factory", "q").await.expect("cached");
    assert_eq!(found.expect("exists").metadata.name.as_deref(), Some("q"));
    let found = reads.deployment("factory", "rows-worker").await;
    let replicas = found.expect("cached").expect("exists").spec.expect("spec");
    assert_eq!(replicas.replicas, Some(3));
    let selector = BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "worker".to_owned()),
        ("app.kubernetes.io/instance".to_owned(), "rows".to_owned()),
    ]);
    let listed = reads
        .worker_pods("factory", &selector)
        .await
        .expect("cached");
    let names: Vec<(String, String)> = listed
        .iter()
        .map(|p| (p.name_any(), p.namespace().unwrap_or_default()))
        .collect();
    assert_eq!(names, vec![("rows-1".to_owned(), "factory".to_owned())]);
    assert!(scenario.done().await.is_empty(), "no request");
}

#[tokio::test]
async fn kept_secrets_follow_the_secrets_that_exist() {
    let (client, server) = mocked();
    let reads = Reads::new(client);
    let mut metadata = filled::<PartialObjectMeta<Secret>>(&reads, "Secret");
    let count = SWEEP_FLOOR + 1;
    let names: Vec<String> = (0..count).map(|i| format!("s-{i}")).collect();
    let exchanges = names
        .iter()
        .map(|name| {
            Exchange::get(&path("v1", "factory", "secrets", name)).reply(secret_at(name, "x", "1"))
        })
        .collect();
    let scenario = server.run(exchanges);
    for name in &names {
        metadata.apply_watcher_event(&Event::Apply(secret_meta(name, "1")));
        reads.secret_data("factory", name).await.expect("read");
        // Gone right after it was read.
        metadata.apply_watcher_event(&Event::Delete(secret_meta(name, "1")));
    }
    scenario.done().await;
    // The read past the floor swept every Secret gone since but itself.
    assert!(reads.kept_secrets() <= 1, "kept {}", reads.kept_secrets());
}

#[tokio::test]
async fn a_queue_cached_as_missing_or_not_ready_is_asked_for() {
    let (client, server) = mocked();
    let reads = Reads::new(client);
    let mut queues = filled::<DeserializeGuard<Queue>>(&reads, "Queue");
    let mut waiting: Queue = serde_json::from_value(ready_queue("q")).expect("queue");
    waiting.status = None;
    queues.apply_watcher_event(&Event::Apply(DeserializeGuard(Ok(waiting))));
    let get = |name: &str| {
        Exchange::get(&format!(
            "/apis/tributary.dev/v1alpha1/namespaces/factory/queues/{name}"
        ))
    };
    // The watch that woke the caller ran ahead of the cache: the server knows better.
    let scenario = server.run(vec![
        get("q").reply(ready_queue("q")),
        get("new").reply(ready_queue("new")),
    ]);
    let fresh = reads.queue("factory", "q").await.expect("read");
    assert!(
        fresh.and_then(|q| q.status).is_some(),
        "the server's Ready Queue"
    );
    let created = reads.queue("factory", "new").await.expect("read");
    assert!(created.is_some(), "created after the cache last heard");
    assert_eq!(scenario.done().await.len(), 2);
}

fn gateway(name: &str, commands: bool) -> serde_json::Value {
    json!({
        "apiVersion": "tributary.dev/v1alpha1", "kind": "Gateway",
        "metadata": {"name": name, "namespace": "factory"},
        "spec": {
            "listeners": {"mqtt": {"port": 1883}},
            "auth": {},
            "routes": [{"topicFilter": "devices/+/telemetry", "queue": "telemetry"}],
            "commands": {"enabled": commands},
        },
    })
}

#[tokio::test]
async fn a_gateway_is_taken_from_the_cache_only_once_it_sends_commands() {
    let (client, server) = mocked();
    let reads = Reads::new(client);
    let mut gateways = filled::<DeserializeGuard<Gateway>>(&reads, "Gateway");
    let cached = |name: &str, commands: bool| {
        let gateway: Gateway = serde_json::from_value(gateway(name, commands)).expect("gateway");
        Event::Apply(DeserializeGuard(Ok(gateway)))
    };
    gateways.apply_watcher_event(&cached("line-1", true));
    gateways.apply_watcher_event(&cached("line-2", false));
    // line-1 comes from the cache; line-2's commands may have been enabled since the cache
    // last heard, and line-3 made since: both are asked for.
    let get = |name: &str| Exchange::get(&tributary("gateways", name));
    let scenario = server.run(vec![
        get("line-2").reply(gateway("line-2", true)),
        get("line-3").not_found(),
    ]);
    let first = reads.gateway_for_commands("factory", "line-1").await;
    assert!(first
        .expect("read")
        .is_some_and(|g| g.spec.commands.enabled));
    let second = reads.gateway_for_commands("factory", "line-2").await;
    assert!(second
        .expect("read")
        .is_some_and(|g| g.spec.commands.enabled));
    let third = reads.gateway_for_commands("factory", "line-3").await;
    assert!(third.expect("read").is_none());
    assert_eq!(
        scenario.done().await.len(),
        2,
        "only line-2 and line-3 asked for"
    );
}
