use super::*;
use crate::build::fixtures::load;
use crate::metrics::docs::documented;

fn owner_is(object: &DynamicObject, kind: &str, name: &str) {
    let owners = object.metadata.owner_references.clone().unwrap_or_default();
    assert_eq!(owners.len(), 1, "{owners:?}");
    assert_eq!(
        (owners[0].kind.as_str(), owners[0].name.as_str()),
        (kind, name)
    );
    assert_eq!(owners[0].controller, Some(true));
}

fn rules(spec: &Value) -> Vec<Value> {
    spec["groups"][0]["rules"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn alert_named<'a>(rules: &'a [Value], name: &str) -> Option<&'a Value> {
    rules.iter().find(|r| r["alert"] == name)
}

#[test]
fn gateway_pod_monitor_scrapes_the_health_port_of_its_pods_only() {
    let gateway: Gateway = load("gateway.yaml");
    let monitor = gateway_pod_monitor(&gateway).expect("builds");
    let types = monitor.types.clone().expect("types");
    assert_eq!(
        (types.api_version.as_str(), types.kind.as_str()),
        ("monitoring.coreos.com/v1", "PodMonitor")
    );
    assert_eq!(monitor.metadata.name.as_deref(), Some("line-1-gateway"));
    assert_eq!(monitor.metadata.namespace.as_deref(), Some("factory"));
    owner_is(&monitor, "Gateway", "line-1");
    let labels = monitor.metadata.labels.clone().expect("labels");
    assert_eq!(labels["app.kubernetes.io/managed-by"], "tributary-operator");
    // The selector matches the labels the gateway Deployment puts on its pods.
    let deployment_labels = crate::build::labels("Gateway", "line-1", "gateway");
    let selector = monitor.data["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels");
    for (key, value) in selector {
        assert_eq!(
            Some(value.as_str().unwrap_or_default()),
            deployment_labels.get(key).map(String::as_str),
            "{key}"
        );
    }
    let endpoint = &monitor.data["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["port"], "health");
    assert_eq!(endpoint["path"], "/metrics");
    assert_eq!(
        endpoint["relabelings"][0],
        json!({"action": "replace", "targetLabel": "gateway", "replacement": "line-1"})
    );
}

#[test]
fn gateway_pod_monitor_port_is_a_container_port_of_the_gateway() {
    use crate::build::gateway::{build, GatewayInputs};
    let gateway: Gateway = load("gateway.yaml");
    let queue = crate::build::worker::ResolvedQueue {
        ca: None,
        broker_queue: "factory.telemetry".into(),
        uri: crate::crd::SecretKeyRef {
            name: "creds".into(),
            key: "uri".into(),
        },
        credentials: Default::default(),
        dead_letter_queue: None,
        delivery_limit: None,
    };
    let inputs = GatewayInputs {
        queues: [("telemetry".to_owned(), queue)].into(),
        secrets: [(
            "jwt-keys".to_owned(),
            [("a.pem".to_owned(), b"k".to_vec())].into(),
        )]
        .into(),
        image: "gw".into(),
        registry_key_id: "k1".into(),
    };
    let children = build(&gateway, &inputs).expect("builds");
    let pod = children
        .deployment
        .spec
        .and_then(|s| s.template.spec)
        .expect("pod");
    let ports: Vec<String> = pod.containers[0]
        .ports
        .iter()
        .flatten()
        .filter_map(|p| p.name.clone())
        .collect();
    let monitor = gateway_pod_monitor(&gateway).expect("builds");
    let port = monitor.data["spec"]["podMetricsEndpoints"][0]["port"]
        .as_str()
        .expect("port")
        .to_owned();
    assert!(ports.contains(&port), "{port} not in {ports:?}");
}

#[test]
fn worker_pod_monitor_labels_series_with_worker_and_queue() {
    let worker: Worker = load("worker-pipeline.yaml");
    let monitor = worker_pod_monitor(&worker).expect("builds");
    assert_eq!(monitor.metadata.name.as_deref(), Some("ingest-worker"));
    owner_is(&monitor, "Worker", "ingest");
    let spec = &monitor.data["spec"];
    assert_eq!(
        spec["selector"]["matchLabels"]["app.kubernetes.io/instance"],
        "ingest"
    );
    assert_eq!(
        spec["selector"]["matchLabels"]["app.kubernetes.io/name"],
        "worker"
    );
    let endpoint = &spec["podMetricsEndpoints"][0];
    // The container port `metrics` of the worker runtime (build/worker.rs).
    assert_eq!(endpoint["port"], "metrics");
    let relabelings = endpoint["relabelings"].as_array().expect("relabelings");
    assert!(relabelings.contains(
        &json!({"action": "replace", "targetLabel": "queue", "replacement": "telemetry"})
    ));
    assert!(relabelings
        .contains(&json!({"action": "replace", "targetLabel": "worker", "replacement": "ingest"})));
}

#[test]
fn queue_rule_has_backlog_dead_letter_and_sink_alerts_for_this_queue() {
    let queue: Queue = load("queue-managed.yaml");
    let rule = queue_rule(&queue).expect("builds");
    assert_eq!(
        rule.types.clone().map(|t| t.kind),
        Some("PrometheusRule".to_owned())
    );
    assert_eq!(
        rule.metadata.name.as_deref(),
        Some("telemetry-queue-alerts")
    );
    owner_is(&rule, "Queue", "telemetry");
    let rules = rules(&rule.data["spec"]);
    let names: Vec<&str> = rules.iter().filter_map(|r| r["alert"].as_str()).collect();
    assert_eq!(
        names,
        vec![
            "TributaryQueueBacklogGrowing",
            "TributaryQueueBacklogHigh",
            "TributaryQueueDeadLetters",
            "TributaryQueueMessagesDeadLettered",
            "TributaryQueueSinkErrors",
            "TributaryQueueSinkUnavailable",
        ]
    );
    for rule in &rules {
        let expr = rule["expr"].as_str().expect("expr");
        assert!(
            expr.contains("namespace=\"factory\",queue=\"telemetry\""),
            "{expr}"
        );
    }
    // maxLength 100000: alert at 80 %.
    let high = alert_named(&rules, "TributaryQueueBacklogHigh").expect("high");
    assert!(high["expr"]
        .as_str()
        .unwrap_or_default()
        .ends_with("> 80000"));
}

#[test]
fn queue_without_dead_letter_field_has_the_dead_letter_depth_alert() {
    // queue-external.yaml sets no `deadLetter`: the default dead-letter queue is watched.
    let queue: Queue = load("queue-external.yaml");
    let rules = rules(&queue_rule_spec(&queue).expect("builds"));
    assert!(alert_named(&rules, "TributaryQueueDeadLetters").is_some());
}

#[test]
fn queue_that_opted_out_of_dead_lettering_has_no_dead_letter_depth_alert() {
    let mut queue: Queue = load("queue-external.yaml");
    queue.spec.dead_letter.enabled = false;
    let spec = queue_rule_spec(&queue).expect("builds");
    let rules = rules(&spec);
    assert!(alert_named(&rules, "TributaryQueueDeadLetters").is_none());
    // Workers still count what they discard as dead-lettered.
    assert!(alert_named(&rules, "TributaryQueueMessagesDeadLettered").is_some());
    let high = alert_named(&rules, "TributaryQueueBacklogHigh").expect("high");
    assert!(high["expr"]
        .as_str()
        .unwrap_or_default()
        .ends_with(&format!("> {BACKLOG_HIGH_DEFAULT}")));
    assert_eq!(
        spec["groups"][0]["name"],
        "tributary.queue.shared.telemetry"
    );
}

#[test]
fn gateway_rule_alerts_on_auth_failure_bursts_of_this_gateway() {
    let gateway: Gateway = load("gateway.yaml");
    let rule = gateway_rule(&gateway).expect("builds");
    assert_eq!(rule.metadata.name.as_deref(), Some("line-1-gateway-alerts"));
    owner_is(&rule, "Gateway", "line-1");
    let rules = rules(&rule.data["spec"]);
    let burst = alert_named(&rules, "TributaryGatewayAuthFailureBurst").expect("burst");
    let expr = burst["expr"].as_str().unwrap_or_default();
    assert!(
        expr.contains(
            "tributary_gateway_auth_failures_total{namespace=\"factory\",gateway=\"line-1\"}"
        ),
        "{expr}"
    );
    assert!(alert_named(&rules, "TributaryGatewayBrokerDisconnected").is_some());
}

#[test]
fn building_without_a_uid_fails_instead_of_orphaning() {
    let mut queue: Queue = load("queue-managed.yaml");
    queue.metadata.uid = None;
    assert_eq!(
        queue_rule(&queue).expect_err("no uid"),
        BuildError::MissingMetadata("uid")
    );
    // The rules file alone needs no uid (`tributary-operator rules`).
    assert!(queue_rule_spec(&queue).is_ok());
}

#[test]
fn every_metric_in_an_alert_is_documented() {
    let documented: Vec<String> = ["Gateway", "Worker", "Operator"]
        .iter()
        .flat_map(|section| documented(section))
        .map(|(name, _)| name)
        .collect();
    let gateway: Gateway = load("gateway.yaml");
    let mut specs = vec![gateway_rule_spec(&gateway).expect("builds")];
    for file in [
        "queue-managed.yaml",
        "queue-external.yaml",
        "queue-managed-ha.yaml",
    ] {
        let queue: Queue = load(file);
        specs.push(queue_rule_spec(&queue).expect("builds"));
    }
    for spec in &specs {
        for rule in rules(spec) {
            let expr = rule["expr"].as_str().unwrap_or_default();
            let used = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|word| word.starts_with("tributary_"));
            for name in used {
                assert!(
                    documented.iter().any(|d| d == name),
                    "{name} (in {}) is not in docs/metrics.md",
                    rule["alert"]
                );
            }
        }
    }
}

#[test]
fn rules_of_a_manifest_stream_cover_queues_and_gateways_and_skip_the_rest() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/");
    let read = |file: &str| std::fs::read_to_string(format!("{dir}{file}")).expect(file);
    let stream = [
        read("queue-managed.yaml"),
        read("sink-postgres.yaml"),
        read("gateway.yaml"),
    ]
    .join("\n---\n");
    let groups = rule_groups_of_manifests(&stream, "factory").expect("rules");
    let names: Vec<&str> = groups.iter().filter_map(|g| g["name"].as_str()).collect();
    assert_eq!(
        names,
        vec![
            "tributary.queue.factory.telemetry",
            "tributary.gateway.factory.line-1"
        ]
    );
    assert!(rule_groups_of_manifests(&read("sink-postgres.yaml"), "factory").is_err());
}
