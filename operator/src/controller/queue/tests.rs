//! The Queue reconciler's unit tests: pure helpers, then whole reconciles against the
//! mocked API server (`controller::mock_api`) on the paths that need no broker, or only
//! one that cannot be reached.

use super::*;
use crate::build::fixtures::load;
use crate::controller::mock_api::{self, context, events, mocked, path, secret, Exchange};
use crate::crd::queue::{DeletionPolicy, ReplaySpec};
use serde_json::{json, Value};

#[test]
fn an_unreachable_broker_reads_as_waiting_or_invalid() {
    let waiting = unreachable(Unreachable::NoAddress);
    assert_eq!(
        (waiting.ready.reason, waiting.ready.message.as_str()),
        (reason::PROGRESSING, "broker Service has no address yet")
    );
    assert_eq!(waiting.action, Action::requeue(PROGRESS_POLL));
    let secret = unreachable(Unreachable::MissingSecret {
        name: "amqp".into(),
        key: "uri".into(),
    });
    assert_eq!(secret.ready.reason, reason::WAITING_FOR_SECRET);
    assert_eq!(secret.action, Action::requeue(RETRY * 4));
    let invalid = unreachable(Unreachable::Invalid("bad".into()));
    assert_eq!(
        (invalid.ready.ok, invalid.ready.reason),
        (false, conditions::reason::INVALID_SPEC)
    );
    assert_eq!(invalid.action, Action::await_change());
}

#[test]
fn replay_runs_once_per_new_request() {
    let mut queue: Queue = load("queue-managed.yaml");
    assert!(!replay_requested(&queue), "no spec.replay: nothing to do");
    queue.spec.replay = Some(ReplaySpec {
        request: "fix-1".into(),
        reason_kind: None,
        max_messages: None,
    });
    assert!(replay_requested(&queue), "never answered");
    queue.status = Some(QueueStatus {
        replay: Some(ReplayStatus {
            request: "fix-1".into(),
            ..ReplayStatus::default()
        }),
        ..QueueStatus::default()
    });
    assert!(!replay_requested(&queue), "answered");
    if let Some(replay) = queue.spec.replay.as_mut() {
        replay.request = "fix-2".into();
    }
    assert!(replay_requested(&queue), "asked again");
}

fn object(queue: &Queue) -> Value {
    serde_json::to_value(queue).expect("serializes")
}

/// The path of a child (or `plural` `name`) in the Queue's namespace.
fn in_namespace(queue: &Queue, group_version: &str, plural: &str, name: &str) -> String {
    let namespace = queue.namespace().expect("fixtures have a namespace");
    path(group_version, &namespace, plural, name)
}

/// The path of the Queue itself (`suffix` e.g. `/status`).
fn own_path(queue: &Queue, suffix: &str) -> String {
    let name = format!("{}{suffix}", queue.name_any());
    in_namespace(queue, "tributary.dev/v1alpha1", "queues", &name)
}

/// The Event and the status write that end a reconcile, for a first `Ready` condition with
/// `reason`.
fn reported(queue: &Queue, reason: &str) -> Vec<Exchange> {
    let namespace = queue.namespace().expect("fixtures have a namespace");
    vec![
        Exchange::post(&events(&namespace)).with("/reason", json!(reason)),
        Exchange::apply(&own_path(queue, "/status"))
            .with("/status/conditions/0/type", json!("Ready"))
            .with("/status/conditions/0/status", json!("False"))
            .with("/status/conditions/0/reason", json!(reason))
            .with("/status/observedGeneration", json!(1))
            .reply(object(queue)),
    ]
}

/// `queue` with a `deletionTimestamp`, holding our finalizer or not.
fn deleted(queue: Queue, with_finalizer: bool) -> Queue {
    let mut queue = mock_api::deleted(&queue);
    if with_finalizer {
        queue.metadata.finalizers = Some(vec![FINALIZER.to_owned()]);
    }
    queue
}

/// The last request body: the status write.
fn written_status(bodies: &[Value]) -> &Value {
    &bodies.last().expect("status written")["status"]
}

/// An AMQP URI on a loopback port nothing listens on (it was bound, then released).
fn unreachable_broker_uri() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
    let port = listener.local_addr().expect("has an address").port();
    drop(listener);
    format!("amqp://guest:guest@127.0.0.1:{port}/%2f")
}

fn base64(text: &str) -> Value {
    use base64::Engine as _;
    json!(base64::engine::general_purpose::STANDARD.encode(text))
}

#[tokio::test]
async fn an_invalid_queue_reports_it_and_waits_for_a_new_spec_without_any_other_request() {
    let mut queue: Queue = load("queue-managed.yaml");
    queue.spec.broker.managed = None;
    let (client, server) = mocked();
    let scenario = server.run(reported(&queue, reason::INVALID_SPEC));
    let action = reconcile(Arc::new(queue), context(client)).await;
    assert_eq!(action.expect("reconciles"), Action::await_change());
    let bodies = scenario.done().await;
    let status = written_status(&bodies);
    assert_eq!(
        status["conditions"][0]["message"],
        "spec.broker: set exactly one of managed and external"
    );
    assert_eq!(status.get("queueName"), None, "nothing was applied");
    assert_eq!(status.get("brokerMode"), None);
}

#[tokio::test]
async fn an_external_broker_whose_uri_secret_is_missing_waits_for_the_secret() {
    // `queue-external.yaml`: namespace `shared`, `deletionPolicy: Delete`, URI in Secret
    // `shared-rabbit`.
    let queue: Queue = load("queue-external.yaml");
    let get = |group_version: &str, plural: &str, name: &str| {
        Exchange::get(&in_namespace(&queue, group_version, plural, name)).not_found()
    };
    let (client, server) = mocked();
    let mut scenario = vec![
        // `deletionPolicy: Delete` puts the finalizer on first.
        Exchange::merge(&own_path(&queue, ""))
            .with("/metadata/finalizers", json!([FINALIZER]))
            .reply(object(&queue)),
        // No managed broker was left behind by an earlier `managed` spec.
        get("apps/v1", "statefulsets", "telemetry-rabbitmq"),
        get("v1", "services", "telemetry-rabbitmq"),
        get("v1", "services", "telemetry-rabbitmq-nodes"),
        get("v1", "configmaps", "telemetry-rabbitmq-config"),
        get(
            "networking.k8s.io/v1",
            "networkpolicies",
            "telemetry-rabbitmq",
        ),
        get("v1", "secrets", "telemetry-rabbitmq-credentials"),
        // The endpoint: the URI Secret does not exist.
        get("v1", "secrets", "shared-rabbit"),
    ];
    scenario.extend(reported(&queue, reason::WAITING_FOR_SECRET));
    let scenario = server.run(scenario);
    let action = reconcile(Arc::new(queue), context(client)).await;
    assert_eq!(action.expect("reconciles"), Action::requeue(RETRY * 4));
    let bodies = scenario.done().await;
    let status = written_status(&bodies);
    assert_eq!(
        status["conditions"][0]["message"],
        "Secret \"shared-rabbit\" with key \"uri\" does not exist"
    );
    assert_eq!(status["brokerMode"], "external");
    assert_eq!(status["queueName"], "shared.telemetry");
    assert_eq!(status["deadLetterQueueName"], "shared.telemetry.dlq");
    assert_eq!(
        status["connectionSecretRef"],
        json!({ "name": "shared-rabbit", "key": "uri" })
    );
}

#[tokio::test]
async fn an_external_broker_never_managed_reads_no_managed_children_when_the_caches_are_filled() {
    use k8s_openapi::api::apps::v1::StatefulSet;
    use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use kube::core::PartialObjectMeta as Meta;
    use kube::runtime::{reflector, watcher::Event};
    fn filled<K>(ctx: &Context, namespace: &str)
    where
        K: kube::Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    {
        let (reader, mut writer) = reflector::store::<K>();
        writer.apply_watcher_event(&Event::Init);
        writer.apply_watcher_event(&Event::InitDone);
        let kind = K::kind(&());
        ctx.applied
            .caches
            .add(&kind, Some(namespace.to_owned()), reader);
    }
    let queue: Queue = load("queue-external.yaml");
    let (client, server) = mocked();
    let ctx = context(client);
    let namespace = queue.namespace().expect("fixtures have a namespace");
    filled::<StatefulSet>(&ctx, &namespace);
    filled::<Meta<Service>>(&ctx, &namespace);
    filled::<Meta<ConfigMap>>(&ctx, &namespace);
    filled::<Meta<NetworkPolicy>>(&ctx, &namespace);
    filled::<Meta<Secret>>(&ctx, &namespace);
    let mut scenario = vec![
        Exchange::merge(&own_path(&queue, ""))
            .with("/metadata/finalizers", json!([FINALIZER]))
            .reply(object(&queue)),
        // Straight to the endpoint: the caches hold no managed broker's child.
        Exchange::get(&in_namespace(&queue, "v1", "secrets", "shared-rabbit")).not_found(),
    ];
    scenario.extend(reported(&queue, reason::WAITING_FOR_SECRET));
    let scenario = server.run(scenario);
    let action = reconcile(Arc::new(queue), ctx).await;
    assert_eq!(action.expect("reconciles"), Action::requeue(RETRY * 4));
    scenario.done().await;
}

#[tokio::test]
async fn a_managed_cluster_gets_its_children_applied_and_reports_progress_while_pods_start() {
    // `queue-managed-ha.yaml`: Queue `ha` in `factory`, a managed broker of 3 replicas.
    let queue: Queue = load("queue-managed-ha.yaml");
    let child = |group_version: &str, plural: &str, name: &str| {
        in_namespace(&queue, group_version, plural, name)
    };
    let (client, server) = mocked();
    let mut scenario = vec![
        // No credentials yet: they are generated.
        Exchange::get(&child("v1", "secrets", "ha-rabbitmq-credentials")).not_found(),
        Exchange::apply(&child("v1", "secrets", "ha-rabbitmq-credentials"))
            .with("/data/username", base64("tributary"))
            // Under `deletionPolicy: Retain` the broker outlives the Queue: labelled with
            // its name, not owned by it.
            .with("/metadata/labels/tributary.dev~1owner", json!("ha"))
            .without("/metadata/ownerReferences"),
        Exchange::apply(&child("v1", "configmaps", "ha-rabbitmq-config"))
            .with("/kind", json!("ConfigMap")),
        Exchange::apply(&child("v1", "services", "ha-rabbitmq-nodes"))
            .with("/spec/clusterIP", json!("None")),
        Exchange::apply(&child("v1", "services", "ha-rabbitmq")).with("/kind", json!("Service")),
        Exchange::apply(&child(
            "networking.k8s.io/v1",
            "networkpolicies",
            "ha-rabbitmq",
        ))
        .with("/spec/policyTypes", json!(["Ingress"]))
        .without("/metadata/ownerReferences"),
        Exchange::apply(&child("apps/v1", "statefulsets", "ha-rabbitmq"))
            .with("/spec/replicas", json!(3))
            .reply(json!({ "status": { "replicas": 3, "readyReplicas": 0 } })),
    ];
    scenario.extend(reported(&queue, reason::PROGRESSING));
    let scenario = server.run(scenario);
    let action = reconcile(Arc::new(queue), context(client)).await;
    assert_eq!(action.expect("reconciles"), Action::requeue(PROGRESS_POLL));
    let bodies = scenario.done().await;
    let password = bodies[1]["data"]["password"].as_str().expect("a password");
    assert!(!password.is_empty(), "a password is generated");
    let status = written_status(&bodies);
    assert_eq!(
        status["conditions"][0]["message"],
        "waiting for the RabbitMQ pods of StatefulSet ha-rabbitmq to become ready"
    );
    assert_eq!(status["brokerMode"], "managed");
    assert_eq!(status["queueName"], "factory.ha");
    assert_eq!(
        status["connectionSecretRef"],
        json!({ "name": "ha-rabbitmq-credentials", "key": "uri" })
    );
}

#[tokio::test]
async fn a_ready_managed_broker_keeps_its_credentials_and_waits_for_its_service_address() {
    // `queue-managed.yaml`: Queue `telemetry` in `factory`, one broker replica.
    let queue: Queue = load("queue-managed.yaml");
    let child = |group_version: &str, plural: &str, name: &str| {
        in_namespace(&queue, group_version, plural, name)
    };
    let credentials = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": { "name": "telemetry-rabbitmq-credentials", "namespace": "factory" },
        "data": {
            "username": base64("tributary"),
            "password": base64("kept-password"),
            "erlang-cookie": base64("kept-cookie"),
        },
    });
    let (client, server) = mocked();
    let mut scenario = vec![
        Exchange::get(&child("v1", "secrets", "telemetry-rabbitmq-credentials")).reply(credentials),
        Exchange::apply(&child("v1", "secrets", "telemetry-rabbitmq-credentials"))
            .with("/data/password", base64("kept-password"))
            .with("/data/erlang-cookie", base64("kept-cookie")),
        Exchange::apply(&child("v1", "configmaps", "telemetry-rabbitmq-config")),
        Exchange::apply(&child("v1", "services", "telemetry-rabbitmq-nodes")),
        Exchange::apply(&child("v1", "services", "telemetry-rabbitmq")),
        Exchange::apply(&child(
            "networking.k8s.io/v1",
            "networkpolicies",
            "telemetry-rabbitmq",
        )),
        Exchange::apply(&child("apps/v1", "statefulsets", "telemetry-rabbitmq"))
            .with("/spec/replicas", json!(1))
            .reply(json!({ "status": { "replicas": 1, "readyReplicas": 1 } })),
        // The endpoint step: the Service has no ClusterIP yet.
        Exchange::get(&child("v1", "services", "telemetry-rabbitmq"))
            .reply(json!({ "apiVersion": "v1", "kind": "Service", "spec": {} })),
    ];
    scenario.extend(reported(&queue, reason::PROGRESSING));
    let scenario = server.run(scenario);
    let action = reconcile(Arc::new(queue), context(client)).await;
    assert_eq!(action.expect("reconciles"), Action::requeue(PROGRESS_POLL));
    let bodies = scenario.done().await;
    assert_eq!(
        written_status(&bodies)["conditions"][0]["message"],
        "broker Service has no address yet"
    );
}

#[tokio::test]
async fn a_deleted_queue_under_retain_is_released_without_any_request() {
    let queue = deleted(load("queue-managed.yaml"), false);
    assert_eq!(queue.spec.deletion_policy, DeletionPolicy::Retain);
    let (client, server) = mocked();
    let scenario = server.run(Vec::new());
    let action = reconcile(Arc::new(queue), context(client)).await;
    assert_eq!(action.expect("reconciles"), Action::await_change());
    assert!(scenario.done().await.is_empty());
}

#[tokio::test]
async fn a_deleted_queue_switched_to_retain_drops_its_finalizer_and_keeps_the_broker_queue() {
    // The finalizer was put on under `Delete`; the policy became `Retain` before the
    // deletion was reconciled: the broker queue is kept, nothing is asked of the broker.
    let mut queue: Queue = load("queue-external.yaml");
    queue.spec.deletion_policy = DeletionPolicy::Retain;
    let queue = deleted(queue, true);
    let (client, server) = mocked();
    let scenario = server.run(vec![Exchange::merge(&own_path(&queue, ""))
        .with("/metadata/finalizers", json!([]))
        .reply(object(&queue))]);
    let action = reconcile(Arc::new(queue), context(client)).await;
    assert_eq!(action.expect("reconciles"), Action::await_change());
    scenario.done().await;
}

#[tokio::test]
async fn a_deleted_queue_under_delete_keeps_its_finalizer_while_the_broker_is_unreachable() {
    let queue = deleted(load("queue-external.yaml"), true);
    let uri_secret = secret("shared-rabbit", "uri", &unreachable_broker_uri());
    let secret_path = in_namespace(&queue, "v1", "secrets", "shared-rabbit");
    let (client, server) = mocked();
    let mut scenario = vec![
        // Is the broker gone? Its URI Secret still exists with the key: no.
        Exchange::get(&secret_path).reply(uri_secret.clone()),
        // The endpoint; then deleting the broker queue fails to connect.
        Exchange::get(&secret_path).reply(uri_secret),
    ];
    // No merge patch: the finalizer stays.
    scenario.extend(reported(&queue, reason::BROKER_UNAVAILABLE));
    let scenario = server.run(scenario);
    let action = reconcile(Arc::new(queue), context(client)).await;
    assert_eq!(action.expect("reconciles"), Action::requeue(RETRY));
    let bodies = scenario.done().await;
    let message = written_status(&bodies)["conditions"][0]["message"]
        .as_str()
        .expect("a message")
        .to_owned();
    assert!(
        message.starts_with("cannot connect to the broker"),
        "{message}"
    );
    assert!(!message.contains("guest"), "no credentials in {message}");
}

#[tokio::test]
async fn a_deleted_queue_under_delete_whose_broker_secret_is_gone_is_released_with_an_event() {
    let queue = deleted(load("queue-external.yaml"), true);
    let namespace = queue.namespace().expect("namespace");
    let (client, server) = mocked();
    let scenario = server.run(vec![
        Exchange::get(&in_namespace(&queue, "v1", "secrets", "shared-rabbit")).not_found(),
        Exchange::post(&events(&namespace))
            .with("/reason", json!(event::BROKER_GONE))
            .with("/type", json!("Warning")),
        Exchange::merge(&own_path(&queue, ""))
            .with("/metadata/finalizers", json!([]))
            .reply(object(&queue)),
    ]);
    let action = reconcile(Arc::new(queue), context(client)).await;
    assert_eq!(action.expect("reconciles"), Action::await_change());
    let bodies = scenario.done().await;
    let note = bodies[1]["note"].as_str().expect("a note");
    assert!(
        note.contains("shared.telemetry and shared.telemetry.dlq"),
        "{note}"
    );
}
