//! A managed Queue from creation to deletion: children, delete policies, retained brokers.

use super::*;

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
        .delete(uri.as_str().into(), &broker_queue, None, true)
        .await
        .expect("delete by hand");
    // (No "is gone" assertion: the operator may re-declare it at any moment.)
    step("queue re-declared after manual deletion");
    wait_for("queue re-declared after manual deletion", || async {
        tributary_operator::broker::Broker::default()
            .inspect(uri.as_str().into(), &broker_queue)
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
            .inspect(uri.as_str().into(), &broker_queue)
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
            .inspect(uri.as_str().into(), &broker_queue)
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
        .inspect(uri.as_str().into(), &broker_queue)
        .await
    {
        assert!(found.is_none(), "broker queue deleted");
    }
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
            .inspect(uri.as_str().into(), &broker_queue)
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
