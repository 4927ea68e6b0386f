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

#[tokio::test]
#[ignore = "needs the test cluster: cargo test -p tributary-operator --test cluster -- --ignored"]
async fn invalid_spec_sets_condition_and_operator_keeps_reconciling() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::create(&client, "invalid").await;
    start_operator(&ns.name);
    let queues: Api<Queue> = ns.api();
    apply_yaml(&queues, "apiVersion: tributary.dev/v1alpha1\nkind: Queue\nmetadata: {name: both}\nspec:\n  broker:\n    managed: {}\n    external: {uriSecretRef: {name: x, key: uri}}\n").await;
    let (_, reason) = wait_ready(&queues, "both", "Queue InvalidSpec", |s, r| {
        s == "False" && r == "InvalidSpec"
    })
    .await;
    assert_eq!(reason, "InvalidSpec");
    let workers: Api<Worker> = ns.api();
    apply_yaml(&workers, "apiVersion: tributary.dev/v1alpha1\nkind: Worker\nmetadata: {name: bad-cel}\nspec:\n  queue: q\n  sinks: [s]\n  pipeline:\n    - filter: 'payload.temp >'\n").await;
    wait_ready(&workers, "bad-cel", "Worker InvalidSpec", |s, r| {
        s == "False" && r == "InvalidSpec"
    })
    .await;
    let message = workers
        .get("bad-cel")
        .await
        .expect("get")
        .status
        .expect("status")
        .conditions[0]
        .message
        .clone();
    assert!(message.contains("invalid CEL"), "{message}");
    // Fixing the spec clears the condition (the operator did not give up on it).
    apply_yaml(&workers, "apiVersion: tributary.dev/v1alpha1\nkind: Worker\nmetadata: {name: bad-cel}\nspec:\n  queue: q\n  sinks: [s]\n  pipeline:\n    - filter: 'payload.temp > 1.0'\n").await;
    wait_ready(
        &workers,
        "bad-cel",
        "Worker waits for its Queue after the fix",
        |_, r| r == "WaitingForQueue",
    )
    .await;
    // And it still serves other resources.
    let sinks: Api<Sink> = ns.api();
    let secrets: Api<Secret> = ns.api();
    apply_yaml(
        &secrets,
        "apiVersion: v1\nkind: Secret\nmetadata: {name: hook}\nstringData: {key: abc}\n",
    )
    .await;
    apply_yaml(&sinks, "apiVersion: tributary.dev/v1alpha1\nkind: Sink\nmetadata: {name: hook}\nspec:\n  webhook:\n    url: http://127.0.0.1:9/hook\n    hmacSecretRef: {name: hook, key: key}\n").await;
    wait_ready(&sinks, "hook", "Sink Ready", |s, _| s == "True").await;
}

#[tokio::test]
#[ignore = "needs the test cluster: cargo test -p tributary-operator --test cluster -- --ignored"]
async fn sink_waits_for_its_secret_and_recovers_when_it_appears() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::create(&client, "sink").await;
    start_operator(&ns.name);
    let sinks: Api<Sink> = ns.api();
    apply_yaml(&sinks, "apiVersion: tributary.dev/v1alpha1\nkind: Sink\nmetadata: {name: readings}\nspec:\n  postgres:\n    urlSecretRef: {name: pg, key: url}\n    table: readings\n    columns: [{name: device, expr: device}]\n").await;
    wait_ready(&sinks, "readings", "Sink WaitingForSecret", |_, r| {
        r == "WaitingForSecret"
    })
    .await;
    let secrets: Api<Secret> = ns.api();
    apply_yaml(&secrets, "apiVersion: v1\nkind: Secret\nmetadata: {name: pg}\nstringData: {url: 'postgres://u:p@db/x'}\n").await;
    wait_ready(
        &sinks,
        "readings",
        "Sink Ready after its Secret appeared",
        |s, _| s == "True",
    )
    .await;
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

#[tokio::test]
#[ignore = "needs the test cluster: cargo test -p tributary-operator --test cluster -- --ignored"]
async fn managed_queue_serves_workers_and_gateways_and_children_follow_the_owner() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::create(&client, "managed").await;
    start_operator(&ns.name);
    let secrets: Api<Secret> = ns.api();
    let sinks: Api<Sink> = ns.api();
    let workers: Api<Worker> = ns.api();
    let queues: Api<Queue> = ns.api();

    // A Worker created before its Queue waits for it.
    apply_yaml(&secrets, "apiVersion: v1\nkind: Secret\nmetadata: {name: pg}\nstringData: {url: 'postgres://u:p@db/x'}\n").await;
    apply_yaml(&sinks, "apiVersion: tributary.dev/v1alpha1\nkind: Sink\nmetadata: {name: readings}\nspec:\n  postgres:\n    urlSecretRef: {name: pg, key: url}\n    table: readings\n    columns: [{name: device, expr: device}]\n").await;
    apply_yaml(&workers, "apiVersion: tributary.dev/v1alpha1\nkind: Worker\nmetadata: {name: ingest}\nspec:\n  queue: telemetry\n  sinks: [readings]\n").await;
    step("Worker WaitingForQueue");
    wait_ready(&workers, "ingest", "Worker WaitingForQueue", |_, r| {
        r == "WaitingForQueue"
    })
    .await;

    // The managed Queue: RabbitMQ pod, declared queue with its arguments.
    apply_yaml(&queues, "apiVersion: tributary.dev/v1alpha1\nkind: Queue\nmetadata: {name: telemetry}\nspec:\n  broker:\n    managed: {}\n  maxLength: 1000\n  messageTtlSeconds: 3600\n  deadLetter: {deliveryLimit: 3}\n").await;
    step("managed Queue Ready (RabbitMQ pod running)");
    wait_ready(
        &queues,
        "telemetry",
        "managed Queue Ready (RabbitMQ pod running)",
        |s, _| s == "True",
    )
    .await;
    let broker_queue = format!("{}.telemetry", ns.name);
    step("queue visible in the management API");
    let info = wait_for("queue visible in the management API", || {
        management_queue(&client, &ns.name, &broker_queue)
    })
    .await;
    let args = &info["arguments"];
    assert_eq!(args["x-queue-type"], "quorum");
    assert_eq!(args["x-max-length"], 1000);
    assert_eq!(args["x-message-ttl"], 3_600_000);
    assert_eq!(args["x-delivery-limit"], 3);
    assert_eq!(
        args["x-dead-letter-routing-key"],
        format!("{broker_queue}.dlq")
    );

    // Drift: a queue deleted by hand on the broker is declared again.
    let services: Api<Service> = ns.api();
    let uri = managed_broker_uri(&ns, "telemetry").await;
    tributary_operator::broker::Broker::default()
        .delete(&uri, &broker_queue, None, true)
        .await
        .expect("delete by hand");
    // (No "is gone" assertion: the operator may re-declare it at any moment.)
    step("queue re-declared after manual deletion");
    wait_for("queue re-declared after manual deletion", || async {
        tributary_operator::broker::Broker::default()
            .inspect(&uri, &broker_queue)
            .await
            .ok()
            .flatten()
    })
    .await;

    // The waiting Worker proceeds: its Deployment and config exist.
    step("Worker past WaitingForQueue");
    wait_ready(&workers, "ingest", "Worker past WaitingForQueue", |_, r| {
        r != "WaitingForQueue"
    })
    .await;
    let deployments: Api<Deployment> = ns.api();
    let worker_deployment = deployments
        .get("ingest-worker")
        .await
        .expect("worker Deployment");
    let owner = &worker_deployment.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Worker", "ingest")
    );

    // A Gateway: children created, updated on edit, rolled on Secret change, removed on delete.
    apply_yaml(&secrets, "apiVersion: v1\nkind: Secret\nmetadata: {name: devices}\nstringData: {passwords: 'd1:$argon2id$v=19$m=16,t=2,p=1$c2FsdHNhbHQ$aGFzaA'}\n").await;
    let gateways: Api<Gateway> = ns.api();
    let gateway_yaml = |replicas: i32, service_type: &str| {
        format!("apiVersion: tributary.dev/v1alpha1\nkind: Gateway\nmetadata: {{name: line-1}}\nspec:\n  replicas: {replicas}\n  listeners:\n    mqtt: {{port: 1883}}\n    http: {{port: 8080}}\n  service: {{type: {service_type}}}\n  auth:\n    passwords: {{name: devices}}\n  routes:\n    - topicFilter: devices/+/telemetry\n      queue: telemetry\n")
    };
    apply_yaml(&gateways, &gateway_yaml(1, "ClusterIP")).await;
    let config_maps: Api<ConfigMap> = ns.api();
    step("gateway children");
    wait_for("gateway children", || async {
        let d = deployments.get("line-1-gateway").await.ok()?;
        services.get("line-1-gateway").await.ok()?;
        config_maps.get("line-1-gateway").await.ok()?;
        Some(d)
    })
    .await;
    let pdb_api = ApiResource {
        group: "policy".into(),
        version: "v1beta1".into(),
        api_version: "policy/v1beta1".into(),
        kind: "PodDisruptionBudget".into(),
        plural: "poddisruptionbudgets".into(),
    };
    let pdbs: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns.name, &pdb_api);
    pdbs.get("line-1-gateway")
        .await
        .expect("PodDisruptionBudget");
    let config = config_maps
        .get("line-1-gateway")
        .await
        .expect("config")
        .data
        .expect("data")["gateway.yaml"]
        .clone();
    assert!(config.contains(&broker_queue), "{config}");

    let hash = |d: &Deployment| {
        d.spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get("tributary.dev/config-hash").cloned())
    };
    let before = hash(&deployments.get("line-1-gateway").await.expect("deployment"));
    apply_yaml(&gateways, &gateway_yaml(2, "NodePort")).await;
    step("gateway edit applied");
    wait_for("gateway edit applied", || async {
        let d = deployments.get("line-1-gateway").await.ok()?;
        let s = services.get("line-1-gateway").await.ok()?;
        (d.spec?.replicas == Some(2) && s.spec?.type_.as_deref() == Some("NodePort")).then_some(())
    })
    .await;
    apply_yaml(&secrets, "apiVersion: v1\nkind: Secret\nmetadata: {name: devices}\nstringData: {passwords: 'd2:$argon2id$v=19$m=16,t=2,p=1$c2FsdHNhbHQ$aGFzaA'}\n").await;
    step("pod template hash changes with the device Secret");
    wait_for(
        "pod template hash changes with the device Secret",
        || async {
            let d = deployments.get("line-1-gateway").await.ok()?;
            (hash(&d) != before).then_some(())
        },
    )
    .await;

    gateways
        .delete("line-1", &DeleteParams::default())
        .await
        .expect("delete gateway");
    step("gateway children garbage-collected");
    wait_for("gateway children garbage-collected", || async {
        let gone = deployments.get_opt("line-1-gateway").await.ok()?.is_none()
            && services.get_opt("line-1-gateway").await.ok()?.is_none()
            && config_maps.get_opt("line-1-gateway").await.ok()?.is_none();
        gone.then_some(())
    })
    .await;
}

#[tokio::test]
#[ignore = "needs the test cluster: cargo test -p tributary-operator --test cluster -- --ignored"]
async fn delete_policy_refuses_a_non_empty_queue_until_allowed() {
    use lapin::options::BasicPublishOptions;
    use lapin::{BasicProperties, Connection, ConnectionProperties};
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::create(&client, "delete").await;
    start_operator(&ns.name);
    let queues: Api<Queue> = ns.api();
    let yaml = |allow: bool| {
        format!("apiVersion: tributary.dev/v1alpha1\nkind: Queue\nmetadata: {{name: telemetry}}\nspec:\n  broker:\n    managed: {{}}\n  type: classic\n  deletionPolicy: Delete\n  deleteNonEmpty: {allow}\n")
    };
    apply_yaml(&queues, &yaml(false)).await;
    step("Queue with deletionPolicy Delete Ready");
    wait_ready(&queues, "telemetry", "Queue Ready", |s, _| s == "True").await;
    let finalizers = queues
        .get("telemetry")
        .await
        .expect("queue")
        .finalizers()
        .to_vec();
    assert_eq!(finalizers, vec!["tributary.dev/broker-queue".to_owned()]);

    // One message in the queue.
    let uri = managed_broker_uri(&ns, "telemetry").await;
    let broker_queue = format!("{}.telemetry", ns.name);
    let connection = Connection::connect(&uri, ConnectionProperties::default())
        .await
        .expect("amqp");
    let channel = connection.create_channel().await.expect("channel");
    channel
        .basic_publish(
            "".into(),
            broker_queue.as_str().into(),
            BasicPublishOptions::default(),
            b"{}",
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .expect("publish");
    let _ = connection.close(200, "done".into()).await;
    step("message visible on the broker");
    wait_for("one message in the queue", || async {
        let count = tributary_operator::broker::Broker::default()
            .inspect(&uri, &broker_queue)
            .await
            .ok()??;
        (count == 1).then_some(())
    })
    .await;

    queues
        .delete("telemetry", &DeleteParams::default())
        .await
        .expect("delete");
    step("deletion blocked by the non-empty queue");
    wait_for("DeletionBlocked condition", || async {
        let queue = queues.get("telemetry").await.ok()?;
        let reason = queue
            .status?
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")?
            .reason
            .clone();
        (reason == "DeletionBlocked").then_some(())
    })
    .await;
    assert!(
        tributary_operator::broker::Broker::default()
            .inspect(&uri, &broker_queue)
            .await
            .expect("inspect")
            .is_some(),
        "data kept"
    );

    // Explicitly allowing it drops the queue and releases the resource.
    let patch = serde_json::json!({"spec": {"deleteNonEmpty": true}});
    queues
        .patch("telemetry", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("allow");
    step("Queue resource gone after deleteNonEmpty");
    wait_for("Queue resource deleted", || async {
        queues
            .get_opt("telemetry")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    // The broker pod may already be going away with its owner; if it still answers, the
    // queue must be gone.
    if let Ok(found) = tributary_operator::broker::Broker::default()
        .inspect(&uri, &broker_queue)
        .await
    {
        assert!(found.is_none(), "broker queue deleted");
    }
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

#[tokio::test]
#[ignore = "needs the test cluster: cargo test -p tributary-operator --test cluster -- --ignored"]
async fn autoscaler_follows_the_backlog_scales_to_zero_and_wakes_on_a_message() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::create(&client, "scale").await;
    start_operator(&ns.name);
    let deployments: Api<Deployment> = ns.api();
    let workers: Api<Worker> = ns.api();
    let queues: Api<Queue> = ns.api();

    // The sink's Redis, the Queue, the Sink and an autoscaled Worker (min 0, max 3).
    apply_yaml(&deployments, "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: cache}\nspec:\n  selector: {matchLabels: {app: cache}}\n  template:\n    metadata: {labels: {app: cache}}\n    spec:\n      securityContext: {runAsNonRoot: true, seccompProfile: {type: RuntimeDefault}}\n      containers:\n        - name: redis\n          image: redis:7\n          ports: [{containerPort: 6379}]\n          securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}\n          volumeMounts: [{name: data, mountPath: /data}]\n      volumes: [{name: data, emptyDir: {}}]\n").await;
    let services: Api<Service> = ns.api();
    apply_yaml(&services, "apiVersion: v1\nkind: Service\nmetadata: {name: cache}\nspec:\n  selector: {app: cache}\n  ports: [{port: 6379, protocol: TCP}]\n").await;
    let secrets: Api<Secret> = ns.api();
    apply_yaml(&secrets, "apiVersion: v1\nkind: Secret\nmetadata: {name: cache}\nstringData: {url: 'redis://cache:6379'}\n").await;
    let sinks: Api<Sink> = ns.api();
    apply_yaml(&sinks, "apiVersion: tributary.dev/v1alpha1\nkind: Sink\nmetadata: {name: latest}\nspec:\n  redis:\n    urlSecretRef: {name: cache, key: url}\n").await;
    apply_yaml(&queues, "apiVersion: tributary.dev/v1alpha1\nkind: Queue\nmetadata: {name: telemetry}\nspec:\n  broker:\n    managed: {}\n  type: classic\n").await;
    apply_yaml(&workers, "apiVersion: tributary.dev/v1alpha1\nkind: Worker\nmetadata: {name: ingest}\nspec:\n  queue: telemetry\n  sinks: [latest]\n  scaling:\n    minReplicas: 0\n    maxReplicas: 3\n    messagesPerReplica: 200\n    scaleDownDelaySeconds: 10\n    pollIntervalSeconds: 2\n").await;
    step("Queue Ready");
    wait_ready(&queues, "telemetry", "Queue Ready", |s, _| s == "True").await;
    step("Worker Ready at zero replicas, replica count owned by the autoscaler");
    wait_ready(&workers, "ingest", "Worker Ready", |s, _| s == "True").await;
    let deployment = deployments.get("ingest-worker").await.expect("deployment");
    assert_eq!(deployment_replicas(&deployment), Some(0));
    wait_for("autoscaler owns spec.replicas", || async {
        let d = deployments.get("ingest-worker").await.ok()?;
        tributary_operator::scaling::owns_replicas(&d, tributary_operator::scaling::FIELD_MANAGER)
            .then_some(())
    })
    .await;

    // A backlog of 1000 messages wants 5 replicas at 200 each: capped at 3.
    let uri = managed_broker_uri(&ns, "telemetry").await;
    let broker_queue = format!("{}.telemetry", ns.name);
    publish_envelopes(&uri, &broker_queue, &ns.name, 1000).await;
    let published = tokio::time::Instant::now();
    step("backlog published: replicas rise to the maximum");
    wait_for("worker Deployment scaled to 3", || async {
        let d = deployments.get("ingest-worker").await.ok()?;
        (deployment_replicas(&d) == Some(3)).then_some(())
    })
    .await;
    step(&format!(
        "scaled to 3 after {:.1}s",
        published.elapsed().as_secs_f64()
    ));
    // The status follows the scale (written after the Deployment): wait for it too. A poll
    // during the publishing may have seen part of the backlog (0 → 2, then 2 → 3).
    let scaling = wait_for("status.scaling records the scale to 3", || async {
        let scaling = workers.get("ingest").await.ok()?.status?.scaling?;
        scaling
            .last_scale_reason
            .as_deref()
            .is_some_and(|r| r.contains(" → 3"))
            .then_some(scaling)
    })
    .await;
    assert!(scaling.last_scale_time.is_some(), "{scaling:?}");
    assert!(
        scaling
            .last_scale_reason
            .as_deref()
            .is_some_and(|r| r.contains("backlog")),
        "{scaling:?}"
    );

    // The workers drain the queue (into Redis), then the count falls back to zero.
    step("queue drained by the worker pods (nothing ready, nothing unacknowledged)");
    wait_for("queue drained", || async {
        let ready = tributary_operator::broker::Broker::default()
            .inspect(&uri, &broker_queue)
            .await
            .ok()??;
        let scaling = workers.get("ingest").await.ok()?.status?.scaling?;
        (ready == 0 && scaling.backlog == Some(0)).then_some(())
    })
    .await;
    step("replicas fall back to zero once the queue is empty and idle");
    wait_for("worker Deployment scaled to 0", || async {
        let d = deployments.get("ingest-worker").await.ok()?;
        (deployment_replicas(&d) == Some(0)).then_some(())
    })
    .await;
    let scaling = workers
        .get("ingest")
        .await
        .expect("worker")
        .status
        .and_then(|s| s.scaling)
        .expect("status.scaling");
    assert_eq!(scaling.backlog, Some(0));
    assert_eq!(scaling.desired_replicas, Some(0));
    assert!(
        scaling
            .last_scale_reason
            .as_deref()
            .is_some_and(|r| r.contains("idle")),
        "{scaling:?}"
    );

    // One message wakes one replica.
    publish_envelopes(&uri, &broker_queue, &ns.name, 1).await;
    step("a new message wakes one replica");
    wait_for("worker Deployment scaled to 1", || async {
        let d = deployments.get("ingest-worker").await.ok()?;
        (deployment_replicas(&d) == Some(1)).then_some(())
    })
    .await;
    wait_for("status.scaling tells of the wake-up", || async {
        let reason = workers
            .get("ingest")
            .await
            .ok()?
            .status?
            .scaling?
            .last_scale_reason?;
        reason.contains("0 → 1").then_some(())
    })
    .await;
    let events = wait_for("WokeUp, ScaledDown and ScaledToZero Events", || async {
        let events = scale_events(&client, &ns.name, "ingest").await;
        let told = events
            .iter()
            .any(|e| e.starts_with("WokeUp: ") && e.contains(" 0 → "))
            && events.iter().any(|e| e.starts_with("ScaledDown: "))
            && events.iter().any(|e| e.starts_with("ScaledToZero: "));
        told.then_some(events)
    })
    .await;
    step(&format!("Events: {events:?}"));

    // Autoscaler off: `kubectl scale` through the /scale subresource drives the replicas.
    let patch = serde_json::json!({"spec": {"scaling": {"enabled": false}}});
    workers
        .patch("ingest", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("disable scaling");
    let scale = serde_json::json!({"spec": {"replicas": 2}});
    workers
        .patch_scale("ingest", &PatchParams::default(), &Patch::Merge(&scale))
        .await
        .expect("scale through /scale");
    step("with scaling disabled, /scale sets the replicas");
    wait_for("worker Deployment at the /scale replicas", || async {
        let d = deployments.get("ingest-worker").await.ok()?;
        (deployment_replicas(&d) == Some(2)).then_some(())
    })
    .await;
    wait_for("the /scale status reports the replicas", || async {
        let scale = workers.get_scale("ingest").await.ok()?;
        (scale.status?.replicas == 2).then_some(())
    })
    .await;
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

#[tokio::test]
#[ignore = "needs the test cluster: cargo test -p tributary-operator --test cluster -- --ignored"]
async fn monitoring_objects_appear_and_disappear_with_their_owners() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::create(&client, "monitoring").await;
    start_operator(&ns.name);
    let pod_monitors = monitoring_api(&client, &ns.name, "PodMonitor", "podmonitors");
    let rules = monitoring_api(&client, &ns.name, "PrometheusRule", "prometheusrules");
    let queues: Api<Queue> = ns.api();
    let gateways: Api<Gateway> = ns.api();
    let workers: Api<Worker> = ns.api();
    let secrets: Api<Secret> = ns.api();
    let sinks: Api<Sink> = ns.api();

    apply_yaml(&queues, "apiVersion: tributary.dev/v1alpha1\nkind: Queue\nmetadata: {name: telemetry}\nspec:\n  broker:\n    managed: {}\n  type: classic\n").await;
    apply_yaml(&secrets, "apiVersion: v1\nkind: Secret\nmetadata: {name: devices}\nstringData: {passwords: 'd1:$argon2id$v=19$m=16,t=2,p=1$c2FsdHNhbHQ$aGFzaA'}\n").await;
    apply_yaml(&gateways, "apiVersion: tributary.dev/v1alpha1\nkind: Gateway\nmetadata: {name: line-1}\nspec:\n  listeners:\n    mqtt: {port: 1883}\n  auth:\n    passwords: {name: devices}\n  routes:\n    - topicFilter: devices/+/telemetry\n      queue: telemetry\n").await;
    apply_yaml(&secrets, "apiVersion: v1\nkind: Secret\nmetadata: {name: cache}\nstringData: {url: 'redis://cache:6379'}\n").await;
    apply_yaml(&sinks, "apiVersion: tributary.dev/v1alpha1\nkind: Sink\nmetadata: {name: latest}\nspec:\n  redis:\n    urlSecretRef: {name: cache, key: url}\n").await;
    apply_yaml(&workers, "apiVersion: tributary.dev/v1alpha1\nkind: Worker\nmetadata: {name: ingest}\nspec:\n  queue: telemetry\n  sinks: [latest]\n").await;

    step(
        "PrometheusRule of the Queue, PodMonitor and rule of the Gateway, PodMonitor of the Worker",
    );
    let owner_of = |object: &DynamicObject| {
        object
            .owner_references()
            .first()
            .map(|o| format!("{}/{}", o.kind, o.name))
    };
    let queue_rule = wait_for("Queue PrometheusRule", || async {
        rules.get_opt("telemetry-queue-alerts").await.ok()?
    })
    .await;
    assert_eq!(owner_of(&queue_rule).as_deref(), Some("Queue/telemetry"));
    let groups = &queue_rule.data["spec"]["groups"];
    assert!(
        groups.to_string().contains("TributaryQueue"),
        "alerts of the queue: {groups}"
    );
    let gateway_monitor = wait_for("Gateway PodMonitor", || async {
        pod_monitors.get_opt("line-1-gateway").await.ok()?
    })
    .await;
    assert_eq!(
        owner_of(&gateway_monitor).as_deref(),
        Some("Gateway/line-1")
    );
    wait_for("Gateway PrometheusRule", || async {
        rules.get_opt("line-1-gateway-alerts").await.ok()?
    })
    .await;
    let worker_monitor = wait_for("Worker PodMonitor", || async {
        pod_monitors.get_opt("ingest-worker").await.ok()?
    })
    .await;
    assert_eq!(owner_of(&worker_monitor).as_deref(), Some("Worker/ingest"));
    for object in [&queue_rule, &gateway_monitor, &worker_monitor] {
        assert_eq!(
            object.labels().get("release").map(String::as_str),
            Some("kube-prometheus-stack"),
            "the operator's extra monitoring label on {:?}",
            object.metadata.name
        );
    }

    step("deleting the owners removes them");
    workers
        .delete("ingest", &DeleteParams::default())
        .await
        .expect("delete worker");
    gateways
        .delete("line-1", &DeleteParams::default())
        .await
        .expect("delete gateway");
    queues
        .delete("telemetry", &DeleteParams::default())
        .await
        .expect("delete queue");
    wait_for("monitoring objects garbage-collected", || async {
        let monitors = pod_monitors.list(&Default::default()).await.ok()?.items;
        let rules = rules.list(&Default::default()).await.ok()?.items;
        (monitors.is_empty() && rules.is_empty()).then_some(())
    })
    .await;
}

/// The uid of an object, for "the same object, not a new one" assertions.
fn uid_of<K: Resource>(object: &K) -> String {
    object.meta().uid.clone().unwrap_or_default()
}

#[tokio::test]
#[ignore = "needs the test cluster: cargo test -p tributary-operator --test cluster -- --ignored"]
async fn retain_keeps_the_managed_broker_and_its_messages_and_a_new_queue_adopts_them() {
    use k8s_openapi::api::apps::v1::StatefulSet;
    use k8s_openapi::api::core::v1::Pod;
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::create(&client, "retain").await;
    start_operator(&ns.name);
    let queues: Api<Queue> = ns.api();
    let sets: Api<StatefulSet> = ns.api();
    let pods: Api<Pod> = ns.api();
    let secrets: Api<Secret> = ns.api();
    let rules = monitoring_api(&client, &ns.name, "PrometheusRule", "prometheusrules");
    // The default deletionPolicy: Retain.
    let yaml = "apiVersion: tributary.dev/v1alpha1\nkind: Queue\nmetadata: {name: telemetry}\nspec:\n  broker:\n    managed: {}\n  type: classic\n";
    apply_yaml(&queues, yaml).await;
    step("managed Queue Ready");
    wait_ready(&queues, "telemetry", "managed Queue Ready", |s, _| {
        s == "True"
    })
    .await;
    let broker_queue = format!("{}.telemetry", ns.name);
    let uri = managed_broker_uri(&ns, "telemetry").await;
    publish_envelopes(&uri, &broker_queue, &ns.name, 25).await;
    let count = || async {
        tributary_operator::broker::Broker::default()
            .inspect(&uri, &broker_queue)
            .await
            .ok()
            .flatten()
    };
    assert_eq!(count().await, Some(25), "messages before");
    let set = sets.get("telemetry-rabbitmq").await.expect("StatefulSet");
    assert!(
        set.owner_references().is_empty(),
        "under Retain the broker has no owner: {:?}",
        set.owner_references()
    );
    assert_eq!(
        set.labels().get("tributary.dev/owner").map(String::as_str),
        Some("telemetry")
    );
    let pod = pods.get("telemetry-rabbitmq-0").await.expect("broker pod");
    let secret = secrets
        .get("telemetry-rabbitmq-credentials")
        .await
        .expect("credentials");
    wait_for("Queue PrometheusRule", || async {
        rules.get_opt("telemetry-queue-alerts").await.ok()?
    })
    .await;

    step("deleting the Queue (Retain)");
    queues
        .delete("telemetry", &DeleteParams::default())
        .await
        .expect("delete queue");
    wait_for("Queue gone", || async {
        queues
            .get_opt("telemetry")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    // The garbage collector has handled the Queue's dependents once its rule is gone.
    wait_for(
        "the Queue's own PrometheusRule garbage-collected",
        || async {
            rules
                .get_opt("telemetry-queue-alerts")
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;
    let kept_set = sets
        .get("telemetry-rabbitmq")
        .await
        .expect("StatefulSet kept");
    assert_eq!(uid_of(&kept_set), uid_of(&set));
    assert!(kept_set.metadata.deletion_timestamp.is_none());
    let kept_pod = pods.get("telemetry-rabbitmq-0").await.expect("pod kept");
    assert_eq!(
        uid_of(&kept_pod),
        uid_of(&pod),
        "the broker pod was not replaced"
    );
    assert_eq!(count().await, Some(25), "messages after deleting the Queue");
    eprintln!("after deleting the Queue: broker pod kept, 25 of 25 messages on the broker");

    step("re-creating the Queue adopts the broker");
    apply_yaml(&queues, yaml).await;
    wait_ready(&queues, "telemetry", "re-created Queue Ready", |s, _| {
        s == "True"
    })
    .await;
    let adopted = sets.get("telemetry-rabbitmq").await.expect("StatefulSet");
    assert_eq!(uid_of(&adopted), uid_of(&set), "the same StatefulSet");
    assert_eq!(
        uid_of(&pods.get("telemetry-rabbitmq-0").await.expect("pod")),
        uid_of(&pod),
        "the same broker pod"
    );
    let reused = secrets
        .get("telemetry-rabbitmq-credentials")
        .await
        .expect("credentials");
    assert_eq!(
        reused.data.as_ref().map(|d| d["password"].clone()),
        secret.data.as_ref().map(|d| d["password"].clone()),
        "credentials reused, not regenerated"
    );
    assert_eq!(count().await, Some(25), "messages after adoption");
    step("status counts the kept messages");
    wait_for("status.readyMessages 25", || async {
        let status = queues.get("telemetry").await.ok()?.status?;
        (status.ready_messages == Some(25)).then_some(())
    })
    .await;

    // Switching to an external broker is refused while the managed one holds messages.
    apply_yaml(&secrets, "apiVersion: v1\nkind: Secret\nmetadata: {name: elsewhere}\nstringData: {uri: 'amqp://u:p@127.0.0.1:1/%2f'}\n").await;
    // As `kubectl patch --type=merge` (or `kubectl edit`) would: `managed` removed,
    // `external` set.
    let external = serde_json::json!({"spec": {"broker": {
        "managed": null,
        "external": {"uriSecretRef": {"name": "elsewhere", "key": "uri"}},
    }}});
    queues
        .patch(
            "telemetry",
            &PatchParams::default(),
            &Patch::Merge(&external),
        )
        .await
        .expect("switch to external");
    step("switch to external refused while messages remain");
    wait_ready(&queues, "telemetry", "BrokerSwitchBlocked", |s, r| {
        s == "False" && r == "BrokerSwitchBlocked"
    })
    .await;
    let message = queues
        .get("telemetry")
        .await
        .expect("queue")
        .status
        .expect("status")
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready")
        .message;
    assert!(message.contains("25 messages"), "{message}");
    assert_eq!(
        uid_of(&sets.get("telemetry-rabbitmq").await.expect("kept")),
        uid_of(&set)
    );
    assert_eq!(count().await, Some(25), "nothing deleted");

    step("drained: the switch proceeds and removes the managed broker");
    let connection = lapin::Connection::connect(&uri, lapin::ConnectionProperties::default())
        .await
        .expect("amqp");
    let channel = connection.create_channel().await.expect("channel");
    channel
        .queue_purge(broker_queue.as_str().into(), Default::default())
        .await
        .expect("purge");
    let _ = connection.close(200, "done".into()).await;
    wait_for("managed broker removed after the switch", || async {
        let set = sets.get_opt("telemetry-rabbitmq").await.ok()?;
        let secret = secrets
            .get_opt("telemetry-rabbitmq-credentials")
            .await
            .ok()?;
        (set.is_none() && secret.is_none()).then_some(())
    })
    .await;
}

#[tokio::test]
#[ignore = "needs the test cluster: cargo test -p tributary-operator --test cluster -- --ignored"]
async fn deletion_never_hangs_when_the_broker_is_gone() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::create(&client, "gone").await;
    start_operator(&ns.name);
    let queues: Api<Queue> = ns.api();
    let secrets: Api<Secret> = ns.api();

    // An external broker that is unreachable: deletion waits for it, until its Secret goes.
    apply_yaml(&secrets, "apiVersion: v1\nkind: Secret\nmetadata: {name: shared-rabbit}\nstringData: {uri: 'amqp://u:p@127.0.0.1:1/%2f'}\n").await;
    apply_yaml(&queues, "apiVersion: tributary.dev/v1alpha1\nkind: Queue\nmetadata: {name: orphan}\nspec:\n  broker:\n    external:\n      uriSecretRef: {name: shared-rabbit, key: uri}\n  type: classic\n  deletionPolicy: Delete\n").await;
    step("finalizer of the external Delete Queue");
    wait_for("finalizer", || async {
        let queue = queues.get("orphan").await.ok()?;
        (!queue.finalizers().is_empty()).then_some(())
    })
    .await;
    queues
        .delete("orphan", &DeleteParams::default())
        .await
        .expect("delete queue");
    step("deletion waits for the unreachable broker");
    wait_for("BrokerUnavailable while deleting", || async {
        let queue = queues.get("orphan").await.ok()?;
        let ready = queue
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Ready")?;
        (ready.reason == "BrokerUnavailable").then_some(())
    })
    .await;
    secrets
        .delete("shared-rabbit", &DeleteParams::default())
        .await
        .expect("delete Secret");
    step("Secret gone: the Queue is released with a BrokerGone Event");
    wait_for("Queue released", || async {
        queues.get_opt("orphan").await.ok()?.is_none().then_some(())
    })
    .await;
    let events = wait_for("BrokerGone Event", || async {
        let events = scale_events(&client, &ns.name, "orphan").await;
        events
            .iter()
            .any(|e| e.starts_with("BrokerGone: "))
            .then_some(events)
    })
    .await;
    eprintln!("events of Queue orphan: {events:?}");

    // A managed Queue under Delete holding a message: deleting the namespace completes.
    apply_yaml(&queues, "apiVersion: tributary.dev/v1alpha1\nkind: Queue\nmetadata: {name: telemetry}\nspec:\n  broker:\n    managed: {}\n  type: classic\n  deletionPolicy: Delete\n").await;
    step("managed Delete Queue Ready");
    wait_ready(&queues, "telemetry", "managed Queue Ready", |s, _| {
        s == "True"
    })
    .await;
    let uri = managed_broker_uri(&ns, "telemetry").await;
    publish_envelopes(&uri, &format!("{}.telemetry", ns.name), &ns.name, 1).await;
    step("deleting the namespace");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let started = std::time::Instant::now();
    namespaces
        .delete(&ns.name, &DeleteParams::default())
        .await
        .expect("delete namespace");
    let limit = Duration::from_secs(120);
    loop {
        let found = namespaces.get_opt(&ns.name).await.expect("read namespace");
        if found.is_none() {
            break;
        }
        if started.elapsed() > limit {
            let left = queues
                .list(&Default::default())
                .await
                .map(|l| {
                    l.items
                        .iter()
                        .map(|q| format!("{} {:?}", q.name_any(), q.status))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            panic!("namespace still there after {limit:?}; Queues left: {left:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "namespace of a Delete Queue deleted in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test]
#[ignore = "needs the test cluster: cargo test -p tributary-operator --test cluster -- --ignored"]
async fn a_second_operator_on_the_same_namespace_refuses_to_start_while_the_first_reconciles() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::create(&client, "two-operators").await;
    // The first operator, with leader election (its Lease in the namespace it watches).
    let first = tributary_operator::run::Settings {
        lease_namespace: Some(ns.name.clone()),
        lease_name: "tributary-first".to_owned(),
        identity: "first".to_owned(),
        listen: "127.0.0.1:0".parse().expect("address"),
        ..operator_settings(&ns.name)
    };
    tokio::spawn(async move {
        if let Err(error) = tributary_operator::run::run(first).await {
            panic!("the first operator stopped: {error}");
        }
    });
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = ns.api();
    wait_for("the first operator holding its Lease", || async {
        let lease = leases.get_opt("tributary-first").await.ok()??;
        (lease.spec?.holder_identity.as_deref() == Some("first")).then_some(())
    })
    .await;

    // A second installation on the same namespace (another release: another Lease).
    let second = tributary_operator::run::Settings {
        lease_namespace: Some(ns.name.clone()),
        lease_name: "tributary-second".to_owned(),
        identity: "second".to_owned(),
        listen: "127.0.0.1:0".parse().expect("address"),
        ..operator_settings(&ns.name)
    };
    let refused = tokio::time::timeout(DEADLINE, tributary_operator::run::run(second))
        .await
        .expect("the second operator decides within the deadline");
    let message = match refused {
        Err(error @ tributary_operator::run::RunError::AnotherOperator(_)) => error.to_string(),
        other => panic!("the second operator should refuse to start, got {other:?}"),
    };
    assert!(
        message.contains(&format!("Lease {}/tributary-first held by first", ns.name)),
        "{message}"
    );
    let second_lease = leases.get_opt("tributary-second").await.expect("get");
    assert!(
        second_lease
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
            .is_none(),
        "the refusing operator gave its Lease up"
    );

    // The first keeps reconciling.
    let queues: Api<Queue> = ns.api();
    apply_yaml(&queues, "apiVersion: tributary.dev/v1alpha1\nkind: Queue\nmetadata: {name: both}\nspec:\n  broker:\n    managed: {}\n    external: {uriSecretRef: {name: x, key: uri}}\n").await;
    wait_ready(
        &queues,
        "both",
        "the first operator reconciling a new Queue",
        |s, r| s == "False" && r == "InvalidSpec",
    )
    .await;
}
