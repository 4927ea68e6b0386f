//! PodMonitors and PrometheusRules follow their owners.

use super::*;

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
