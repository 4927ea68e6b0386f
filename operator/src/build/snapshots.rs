//! Every builder's whole output, rendered from the fixtures and compared byte for byte with
//! the committed YAML under `operator/tests/fixtures/rendered/`. The unit tests next to
//! each builder check single fields; these catch any other change to a rendered object
//! (a refactoring must leave them untouched). After an intended change, regenerate with
//! `TRIBUTARY_UPDATE_SNAPSHOTS=1 cargo test -p tributary-operator --lib snapshots` and
//! review the diff.

use super::fixtures::load;
use super::queue::access::BrokerCredentials;
use super::queue::{validate, BrokerPlan, Credentials};
use super::sink::ResolvedTarget;
use super::worker::{ResolvedQueue, WorkerInputs};
use super::{gateway, monitoring, queue, worker, SecretData};
use crate::crd::{Gateway, Queue, SecretKeyRef, Sink, Worker};
use kube::ResourceExt;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

fn snapshot_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/rendered")
        .join(format!("{name}.yaml"))
}

/// Compares `value`'s YAML with the committed snapshot `name` (or rewrites it when
/// `TRIBUTARY_UPDATE_SNAPSHOTS` is set).
fn assert_snapshot<T: Serialize>(name: &str, value: &T) {
    let rendered = serde_yaml::to_string(value).expect("serializes");
    let path = snapshot_path(name);
    if std::env::var_os("TRIBUTARY_UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, &rendered).expect("write snapshot");
        return;
    }
    let committed = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (regenerate the snapshots)", path.display()));
    if committed != rendered {
        let first_difference = committed
            .lines()
            .zip(rendered.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(rendered.lines().count()));
        panic!(
            "{} differs from the rendering, first at line {}:\n--- committed\n{}\n--- rendered\n{}",
            path.display(),
            first_difference + 1,
            committed.lines().nth(first_difference).unwrap_or("<end>"),
            rendered.lines().nth(first_difference).unwrap_or("<end>"),
        );
    }
}

/// A resource parsed from inline YAML, with the metadata the API server would set.
fn parse<K: serde::de::DeserializeOwned + kube::Resource>(yaml: &str) -> K {
    let mut obj: K = serde_yaml::from_str(yaml).expect("valid YAML");
    let meta = obj.meta_mut();
    meta.namespace.get_or_insert_with(|| "factory".to_owned());
    meta.uid
        .get_or_insert_with(|| "00000000-0000-0000-0000-000000000001".to_owned());
    obj
}

fn credentials() -> Credentials {
    Credentials {
        username: "tributary".into(),
        password: "s3cret".into(),
        erlang_cookie: "cookie".into(),
    }
}

#[test]
fn managed_broker_children_render_as_committed() {
    for (file, deletion_delete) in [
        ("queue-managed", false),
        ("queue-managed-ha", false),
        ("queue-managed", true),
    ] {
        let mut queue: Queue = load(&format!("{file}.yaml"));
        if deletion_delete {
            queue.spec.deletion_policy = crate::crd::queue::DeletionPolicy::Delete;
        }
        let BrokerPlan::Managed(managed) = validate(&queue).expect("valid") else {
            panic!("{file} must be managed");
        };
        let children =
            queue::managed::build_managed(&queue, &managed, &credentials(), "rabbitmq:test")
                .expect("builds");
        let suffix = if deletion_delete { "-delete" } else { "" };
        let name = format!("{file}{suffix}");
        assert_snapshot(&format!("{name}.secret"), &children.secret);
        assert_snapshot(&format!("{name}.configmap"), &children.config_map);
        assert_snapshot(&format!("{name}.headless"), &children.headless_service);
        assert_snapshot(&format!("{name}.service"), &children.service);
        assert_snapshot(&format!("{name}.statefulset"), &children.stateful_set);
        let policy =
            queue::broker_network_policy(&queue, Some("tributary-system")).expect("builds");
        assert_snapshot(&format!("{name}.networkpolicy"), &policy);
    }
}

/// The workload's own user Secret on the managed broker of `queue` (the controllers put it
/// in place of the broker's administrator Secret, which no workload mounts).
fn user_uri(child: &str, queue: &str) -> SecretKeyRef {
    SecretKeyRef {
        name: queue::access::secret_name(child, queue),
        key: "uri".into(),
    }
}

/// Whether a rendered Deployment mounts a managed broker's administrator Secret.
fn mounts_administrator_secret(deployment: &k8s_openapi::api::apps::v1::Deployment) -> bool {
    let text = serde_yaml::to_string(deployment).expect("serializes");
    text.contains("-rabbitmq-credentials")
}

fn gateway_inputs(child: &str) -> gateway::GatewayInputs {
    let queue = ResolvedQueue {
        ca: None,
        broker_queue: "factory.telemetry".into(),
        uri: user_uri(child, "telemetry"),
        credentials: BrokerCredentials::Workload,
        dead_letter_queue: None,
        delivery_limit: None,
    };
    gateway::GatewayInputs {
        queues: BTreeMap::from([("telemetry".into(), queue)]),
        secrets: SecretData::from([
            (
                "devices".into(),
                BTreeMap::from([("passwords".into(), b"d1:$argon2id$x".to_vec())]),
            ),
            (
                "jwt-keys".into(),
                BTreeMap::from([
                    ("a.pem".into(), b"-----".to_vec()),
                    ("b.pem".into(), b"-----".to_vec()),
                ]),
            ),
        ]),
        image: "tributary/gateway:test".into(),
        registry_key_id: "k1".into(),
    }
}

/// Every listener and authentication method, a LoadBalancer Service that keeps client
/// addresses (Local policy, PROXY protocol), fast delivery, own image and limits.
const GATEWAY_FULL: &str = r#"
apiVersion: tributary.dev/v1alpha1
kind: Gateway
metadata: {name: line-2}
spec:
  image: example/gateway:2
  listeners:
    mqtt: {port: 1883}
    mqttTls: {port: 8883, secretName: gateway-tls}
    http: {port: 8080}
    httpTls: {port: 8443, secretName: gateway-https}
  service: {type: LoadBalancer, externalTrafficPolicy: Local, proxyProtocol: true}
  auth:
    passwords: {name: devices}
    jwt:
      publicKeys: {name: jwt-keys}
      issuer: factory
      audience: gateways
      maxTokenLifetimeSeconds: 3600
      deviceClaim: device
    clientCertificates: {ca: {name: device-ca}}
    allowAnonymous: true
  publishTopics: ["devices/{device}/#", "shared/#"]
  delivery: fast
  limits: {maxPayloadBytes: 1024, maxConnections: 10, messagesPerSecondPerDevice: 5, burst: 0}
  commands:
    subscribeTopics: ["commands/{device}/#", "broadcast/#"]
    maxQueuedPerDevice: 20
    sessionExpirySeconds: 600
    maxInFlightPerDevice: 4
  routes:
    - {topicFilter: "devices/+/telemetry", queue: telemetry}
    - {topicFilter: "shared/#", queue: telemetry}
"#;

#[test]
fn gateway_children_render_as_committed() {
    let fixture: Gateway = load("gateway.yaml");
    let full: Gateway = parse(GATEWAY_FULL);
    for (name, gateway) in [("gateway", fixture), ("gateway-full", full)] {
        let child = gateway::child_name(&gateway.name_any());
        let children = gateway::build(&gateway, &gateway_inputs(&child)).expect("builds");
        assert!(!mounts_administrator_secret(&children.deployment), "{name}");
        assert_snapshot(&format!("{name}.configmap"), &children.config_map);
        assert_snapshot(&format!("{name}.deployment"), &children.deployment);
        assert_snapshot(&format!("{name}.service"), &children.service);
        assert_snapshot(&format!("{name}.pdb"), &children.pdb);
        assert_snapshot(&format!("{name}.networkpolicy"), &children.network_policy);
        if name != "gateway" {
            continue;
        }
        let user = queue::access::user_name("gateway", "factory", &gateway.name_any());
        let secret = queue::access::user_secret(
            &gateway,
            &user_uri(&child, "telemetry").name,
            "telemetry",
            &user,
            "generated-password",
        )
        .expect("builds");
        assert_snapshot(&format!("{name}.broker-user"), &secret);
    }
}

/// One Sink of each kind the fixtures lack, with and without explicit batches.
const SINKS: &str = r#"
apiVersion: tributary.dev/v1alpha1
kind: Sink
metadata: {name: latest}
spec:
  redis:
    urlSecretRef: {name: redis, key: url}
    value: "payload"
    ttlSeconds: 60
---
apiVersion: tributary.dev/v1alpha1
kind: Sink
metadata: {name: archive}
spec:
  s3:
    endpoint: http://s3.local:9000
    bucket: archive
    prefix: raw/
    credentialsSecret: s3-creds
    createBucket: true
    batch: {maxMessages: 100, maxBytes: 1000000, maxAgeMs: 5000}
---
apiVersion: tributary.dev/v1alpha1
kind: Sink
metadata: {name: notify}
spec:
  webhook:
    url: https://hooks.example/t
    hmacSecretRef: {name: hook, key: hmac}
---
apiVersion: tributary.dev/v1alpha1
kind: Sink
metadata: {name: defaults-only}
spec:
  redis:
    urlSecretRef: {name: redis, key: url}
---
apiVersion: tributary.dev/v1alpha1
kind: Sink
metadata: {name: live-view, namespace: factory}
spec:
  live:
    bufferMessages: 5000
"#;

fn all_sinks(child: &str) -> Vec<(Sink, Option<ResolvedTarget>)> {
    let mut sinks: Vec<(Sink, Option<ResolvedTarget>)> = vec![
        (load("sink-postgres.yaml"), None),
        (
            load("sink-queue.yaml"),
            Some(ResolvedTarget {
                ca: None,
                broker_queue: "factory.alerts".into(),
                uri: user_uri(child, "alerts"),
                credentials: BrokerCredentials::Workload,
            }),
        ),
    ];
    for document in SINKS.split("\n---\n") {
        sinks.push((parse(document), None));
    }
    sinks
}

fn worker_inputs(child: &str, set_replicas: bool) -> WorkerInputs {
    WorkerInputs {
        queue: ResolvedQueue {
            ca: None,
            broker_queue: "factory.telemetry".into(),
            uri: user_uri(child, "telemetry"),
            credentials: BrokerCredentials::Workload,
            dead_letter_queue: Some("factory.telemetry.dlq".into()),
            delivery_limit: Some(5),
        },
        sinks: all_sinks(child),
        secrets: SecretData::from([(
            "pg".into(),
            BTreeMap::from([("url".into(), b"postgres://x".to_vec())]),
        )]),
        image: "tributary/worker:test".into(),
        set_replicas,
    }
}

#[test]
fn worker_children_render_as_committed() {
    for (file, set_replicas) in [
        ("worker-pipeline", true),
        ("worker-container", true),
        ("worker-container", false),
    ] {
        let worker: Worker = load(&format!("{file}.yaml"));
        let child = worker::child_name(&worker.name_any());
        let children =
            worker::build(&worker, &worker_inputs(&child, set_replicas)).expect("builds");
        assert!(!mounts_administrator_secret(&children.deployment), "{file}");
        let name = format!("{file}{}", if set_replicas { "" } else { "-autoscaled" });
        assert_snapshot(&format!("{name}.configmap"), &children.config_map);
        assert_snapshot(&format!("{name}.deployment"), &children.deployment);
        assert_snapshot(&format!("{name}.networkpolicy"), &children.network_policy);
    }
}

#[test]
fn application_api_children_render_as_committed() {
    let api: crate::crd::ApplicationApi = load("application-api.yaml");
    let children = super::api::build(&api, &super::api::tests::inputs()).expect("builds");
    let name = "application-api";
    assert_snapshot(&format!("{name}.configmap"), &children.config_map);
    assert_snapshot(&format!("{name}.deployment"), &children.deployment);
    assert_snapshot(&format!("{name}.service"), &children.service);
    assert_snapshot(&format!("{name}.networkpolicy"), &children.network_policy);
    // The keys Secret holds the fixed test keys; generated ones never reach a fixture.
    assert_snapshot(&format!("{name}.keys-secret"), &children.keys_secret);
}

#[test]
fn monitoring_objects_render_as_committed() {
    let mut with_max_length: Queue = load("queue-managed.yaml");
    with_max_length.spec.max_length = Some(5000);
    with_max_length.spec.dead_letter.enabled = false;
    for (name, queue) in [
        ("queue-managed", load::<Queue>("queue-managed.yaml")),
        ("queue-external", load("queue-external.yaml")),
        ("queue-max-length", with_max_length),
    ] {
        let rule = monitoring::queue_rule(&queue).expect("builds");
        assert_snapshot(&format!("{name}.prometheusrule"), &rule);
    }
    let gateway: Gateway = load("gateway.yaml");
    assert_snapshot(
        "gateway.prometheusrule",
        &monitoring::gateway_rule(&gateway).expect("builds"),
    );
    assert_snapshot(
        "gateway.podmonitor",
        &monitoring::gateway_pod_monitor(&gateway).expect("builds"),
    );
    let worker: Worker = load("worker-pipeline.yaml");
    assert_snapshot(
        "worker-pipeline.podmonitor",
        &monitoring::worker_pod_monitor(&worker).expect("builds"),
    );
}
