//! The autoscaler against a real broker and Deployment.

use super::*;

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
            .inspect(uri.as_str().into(), &broker_queue)
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
