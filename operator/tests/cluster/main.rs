//! Operator tests against the real API server and cluster (`tests/cluster/cluster.sh up`).
//!
//! They read `KUBECONFIG` and FAIL with a clear message when the cluster is unreachable.
//! Marked `#[ignore]` (listed as ignored, never silently skipped) so that `cargo test
//! --workspace` runs before the cluster exists; the cluster stage runs them with
//! `cargo test -p tributary-operator --test cluster -- --ignored`.
//! Each test creates its own `op-test-*` namespace, runs the operator in-process for that
//! namespace, and deletes the namespace afterwards. Waits are on conditions with deadlines.
//!
//! `TRIBUTARY_TEST_RABBITMQ_IMAGE` names the RabbitMQ image imported into the node
//! (default `rabbitmq:3-management`).

mod application_api;
mod autoscaler;
mod commands;
mod devices;
mod leader_election;
mod live_stream;
mod monitoring;
mod queue_lifecycle;
mod spec_and_references;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, DynamicObject, ObjectMeta, Patch, PatchParams, PostParams};
use kube::discovery::ApiResource;
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use std::future::Future;
use std::time::Duration;
use tributary_operator::build::Images;
use tributary_operator::crd::{self, Gateway, Queue, Sink, Worker};

const DEADLINE: Duration = Duration::from_secs(180);

async fn client() -> Client {
    let hint = "start it with tests/cluster/cluster.sh up and export \
                KUBECONFIG=/var/lib/tributary-cluster/admin.kubeconfig";
    let config = match kube::Config::infer().await {
        Ok(config) => config,
        Err(error) => panic!("no Kubernetes configuration ({error}): {hint}"),
    };
    let client = Client::try_from(config).unwrap_or_else(|e| panic!("client: {e}: {hint}"));
    if let Err(error) = client.apiserver_version().await {
        panic!("the test cluster is not reachable ({error}): {hint}");
    }
    client
}

fn rabbitmq_image() -> String {
    std::env::var("TRIBUTARY_TEST_RABBITMQ_IMAGE")
        .unwrap_or_else(|_| "rabbitmq:3-management".to_owned())
}

/// Polls `check` until it returns `Some`, or panics after `DEADLINE` with `what`.
async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = tokio::time::Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if start.elapsed() > DEADLINE {
            panic!("timed out after {DEADLINE:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A stand-in for one Prometheus Operator CRD (`monitoring.coreos.com/v1`): the real
/// schemas are large; the operator only needs the kind to be served.
fn monitoring_crd(kind: &str, plural: &str) -> CustomResourceDefinition {
    serde_yaml::from_str(&format!(
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {{name: {plural}.monitoring.coreos.com}}\nspec:\n  group: monitoring.coreos.com\n  scope: Namespaced\n  names: {{kind: {kind}, plural: {plural}, singular: {singular}, listKind: {kind}List}}\n  versions:\n    - name: v1\n      served: true\n      storage: true\n      schema:\n        openAPIV3Schema: {{type: object, x-kubernetes-preserve-unknown-fields: true}}\n",
        singular = kind.to_lowercase()
    ))
    .expect("monitoring CRD YAML")
}

/// Installs Tributary's CRDs and the two Prometheus Operator kinds the operator writes
/// (every test does, so the operator's cached discovery answer is the same in all).
async fn install_crds(client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply("tributary-operator-tests").force();
    let monitoring = [
        monitoring_crd("PodMonitor", "podmonitors"),
        monitoring_crd("PrometheusRule", "prometheusrules"),
    ];
    for definition in crd::all().into_iter().chain(monitoring) {
        let name = definition.name_any();
        api.patch(&name, &params, &Patch::Apply(&definition))
            .await
            .expect("apply CRD");
        wait_for(&format!("CRD {name} established"), || {
            let api = api.clone();
            let name = name.clone();
            async move {
                let crd = api.get(&name).await.ok()?;
                let established = crd
                    .status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                established.then_some(())
            }
        })
        .await;
    }
}

/// A namespace for one test; deleted (with any finalizers released) on drop.
struct TestNamespace {
    client: Client,
    name: String,
}

fn step(what: &str) {
    eprintln!("[{}] {what}", k8s_openapi::jiff::Timestamp::now());
}

impl TestNamespace {
    async fn create(client: &Client, prefix: &str) -> Self {
        let mut suffix = [0u8; 3];
        getrandom::fill(&mut suffix).expect("randomness");
        let name = format!(
            "op-test-{prefix}-{:02x}{:02x}{:02x}",
            suffix[0], suffix[1], suffix[2]
        );
        let api: Api<Namespace> = Api::all(client.clone());
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        api.create(&PostParams::default(), &namespace)
            .await
            .expect("create namespace");
        TestNamespace {
            client: client.clone(),
            name,
        }
    }

    fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Async cleanup from a destructor: a fresh runtime and client on a helper thread
        // (the test's client is bound to the test's runtime, which this blocks).
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Runtime::new() else {
                return;
            };
            runtime.block_on(async move {
                let Ok(client) = Client::try_default().await else {
                    return;
                };
                let queues: Api<Queue> = Api::namespaced(client.clone(), &name);
                if let Ok(list) = queues.list(&Default::default()).await {
                    for queue in list {
                        let patch = serde_json::json!({"metadata": {"finalizers": null}});
                        let _ = queues
                            .patch(
                                &queue.name_any(),
                                &PatchParams::default(),
                                &Patch::Merge(&patch),
                            )
                            .await;
                    }
                }
                let namespaces: Api<Namespace> = Api::all(client);
                let _ = namespaces.delete(&name, &DeleteParams::default()).await;
            });
        });
        let _ = cleanup.join();
    }
}

/// Starts the operator in-process, watching only `namespace`.
fn start_operator(namespace: &str) {
    let settings = operator_settings(namespace);
    tokio::spawn(async move {
        if let Err(error) = tributary_operator::run::run(settings).await {
            panic!("operator stopped: {error}");
        }
    });
}

/// The settings of an in-process operator watching only `namespace`, without election.
fn operator_settings(namespace: &str) -> tributary_operator::run::Settings {
    tributary_operator::run::Settings {
        namespaces: vec![namespace.to_owned()],
        listen: "127.0.0.1:0".parse().expect("address"),
        images: Images {
            rabbitmq: rabbitmq_image(),
            ..Images::default()
        },
        lease_namespace: None,
        lease_name: "unused".to_owned(),
        identity: format!("test-{namespace}"),
        // As a platform team would set for kube-prometheus-stack's selectors.
        monitoring_labels: std::collections::BTreeMap::from([(
            "release".to_owned(),
            "kube-prometheus-stack".to_owned(),
        )]),
        allow_internal_webhooks: false,
        tenancy: Default::default(),
        // In-process, not in a pod: the brokers' NetworkPolicies select it by label.
        operator_namespace: None,
    }
}

async fn apply_yaml<K>(api: &Api<K>, yaml: &str) -> K
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let object: K = serde_yaml::from_str(yaml).expect("test YAML parses");
    let params = PatchParams::apply("tributary-tests").force();
    api.patch(&object.name_any(), &params, &Patch::Apply(&object))
        .await
        .expect("apply")
}

/// Waits until the `Ready` condition of `name` satisfies `check`; returns (status, reason).
async fn wait_ready<K>(
    api: &Api<K>,
    name: &str,
    what: &str,
    check: impl Fn(&str, &str) -> bool,
) -> (String, String)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + serde::Serialize,
{
    wait_for(what, || async {
        let object = api.get(name).await.ok()?;
        let value = serde_json::to_value(&object).ok()?;
        let generation = value["metadata"]["generation"].as_i64();
        let conditions = value["status"]["conditions"].as_array()?.clone();
        let ready = conditions.iter().find(|c| c["type"] == "Ready")?;
        let status = ready["status"].as_str()?.to_owned();
        let reason = ready["reason"].as_str()?.to_owned();
        let current = ready["observedGeneration"].as_i64() == generation;
        (current && check(&status, &reason)).then_some((status, reason))
    })
    .await
}

async fn management_queue(client: &Client, ns: &str, queue: &str) -> Option<serde_json::Value> {
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let ip = services
        .get("telemetry-rabbitmq")
        .await
        .ok()?
        .spec?
        .cluster_ip?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let data = secrets
        .get("telemetry-rabbitmq-credentials")
        .await
        .ok()?
        .data?;
    let password = String::from_utf8(data.get("password")?.0.clone()).ok()?;
    let management = tributary_operator::broker::Management {
        base_url: format!("http://{ip}:15672"),
        username: "tributary".to_owned(),
        password,
    };
    tributary_operator::broker::Broker::default()
        .queue_info(&management, queue)
        .await
        .ok()
}

/// Publishes `count` envelopes (devices `d-0`…`d-9`) straight into a broker queue.
async fn publish_envelopes(uri: &str, queue: &str, tenant: &str, count: usize) {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    use lapin::{BasicProperties, Connection, ConnectionProperties};
    let connection = Connection::connect(uri, ConnectionProperties::default())
        .await
        .expect("amqp connect");
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let mut confirms = Vec::with_capacity(count);
    for i in 0..count {
        let envelope = serde_json::json!({
            "id": format!("01JTEST{i:019}"),
            "tenant": tenant,
            "gateway": "test",
            "device": format!("d-{}", i % 10),
            "topic": "devices/test/telemetry",
            "protocol": "mqtt",
            "receivedAt": "2026-11-26T12:00:00.000Z",
            "payload": {"encoding": "json", "data": {"seq": i}},
        });
        let body = serde_json::to_vec(&envelope).expect("json");
        confirms.push(
            channel
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .expect("publish"),
        );
    }
    for confirm in confirms {
        confirm.await.expect("broker confirm");
    }
    let _ = connection.close(200, "done".into()).await;
}

/// The AMQP URI of a managed Queue's broker, reachable from the node.
async fn managed_broker_uri(ns: &TestNamespace, queue: &str) -> String {
    let services: Api<Service> = ns.api();
    let secrets: Api<Secret> = ns.api();
    let ip = services
        .get(&format!("{queue}-rabbitmq"))
        .await
        .expect("service")
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("ip");
    let password = String::from_utf8(
        secrets
            .get(&format!("{queue}-rabbitmq-credentials"))
            .await
            .expect("secret")
            .data
            .expect("data")["password"]
            .0
            .clone(),
    )
    .expect("utf8");
    format!("amqp://tributary:{password}@{ip}:5672/%2f")
}

fn deployment_replicas(deployment: &Deployment) -> Option<i32> {
    deployment.spec.as_ref().and_then(|s| s.replicas)
}

async fn scale_events(client: &Client, ns: &str, worker: &str) -> Vec<String> {
    use k8s_openapi::api::core::v1::Event;
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    events
        .list(&Default::default())
        .await
        .map(|list| {
            list.items
                .into_iter()
                .filter(|e| e.involved_object.name.as_deref() == Some(worker))
                .filter_map(|e| Some(format!("{}: {}", e.reason?, e.message?)))
                .collect()
        })
        .unwrap_or_default()
}

fn monitoring_api(client: &Client, ns: &str, kind: &str, plural: &str) -> Api<DynamicObject> {
    let resource = ApiResource {
        group: "monitoring.coreos.com".into(),
        version: "v1".into(),
        api_version: "monitoring.coreos.com/v1".into(),
        kind: kind.into(),
        plural: plural.into(),
    };
    Api::namespaced_with(client.clone(), ns, &resource)
}

/// The uid of an object, for "the same object, not a new one" assertions.
fn uid_of<K: Resource>(object: &K) -> String {
    object.meta().uid.clone().unwrap_or_default()
}

/// The IP of a ready pod of component `name` (`app.kubernetes.io/name`) of `instance`.
async fn ready_pod_ip(ns: &TestNamespace, name: &str, instance: &str) -> String {
    let pods: Api<k8s_openapi::api::core::v1::Pod> = ns.api();
    let labels = format!("app.kubernetes.io/name={name},app.kubernetes.io/instance={instance}");
    wait_for(&format!("a ready {name} pod of {instance}"), || async {
        let list = pods
            .list(&kube::api::ListParams::default().labels(&labels))
            .await
            .ok()?;
        list.items.into_iter().find_map(|pod| {
            let status = pod.status?;
            let ready = status
                .conditions?
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            ready.then_some(status.pod_ip?)
        })
    })
    .await
}

/// `mosquitto_pub` of one QoS 1 message from `device` (client id `<device>-pub`) on
/// `devices/<device>/telemetry` to the gateway at `ip:1883`; true when the gateway
/// accepted it.
async fn mosquitto_pub(ip: &str, device: &str, password: &str, payload: &str) -> bool {
    tokio::process::Command::new("mosquitto_pub")
        .args([
            "-h",
            ip,
            "-p",
            "1883",
            "-q",
            "1",
            "-i",
            &format!("{device}-pub"),
        ])
        .args(["-u", device, "-P", password])
        .args(["-t", &format!("devices/{device}/telemetry"), "-m", payload])
        .output()
        .await
        .is_ok_and(|out| out.status.success())
}

/// A Secret's key as text.
async fn secret_text(secrets: &Api<Secret>, name: &str, key: &str) -> Option<String> {
    let data = secrets.get_opt(name).await.ok()??.data?;
    String::from_utf8(data.get(key)?.0.clone()).ok()
}
