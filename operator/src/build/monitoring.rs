//! Desired Prometheus Operator objects (`monitoring.coreos.com/v1`): a PodMonitor per
//! Gateway and per Worker, and a PrometheusRule per Queue and per Gateway.
//!
//! PodMonitors, not ServiceMonitors: the gateway's Service is device-facing and carries only
//! the listener ports (its metrics port `health` stays inside the pod network), and workers
//! have no Service at all. The monitors add `gateway`, `worker` and `queue` labels to every
//! scraped series, so the rules below can select one resource's pods. Every metric name used
//! here is documented in `docs/metrics.md` (a test checks it).

use super::{child_meta, name_and_namespace, selector_labels, BuildError, OWNER_KIND_LABEL};
use crate::crd::{Gateway, Queue, Worker};
use kube::api::{ApiResource, DynamicObject};
use kube::core::TypeMeta;
use serde_json::{json, Value};

/// API group of the Prometheus Operator's CRDs.
pub const GROUP: &str = "monitoring.coreos.com";
/// The version the operator writes.
pub const VERSION: &str = "v1";
/// How often Prometheus scrapes the data-plane pods.
pub const SCRAPE_INTERVAL: &str = "30s";
/// Ready + unacked messages below which a rising backlog is not worth an alert.
pub const BACKLOG_GROWING_MIN: i64 = 100;
/// "Backlog high" threshold of a Queue without `maxLength`.
pub const BACKLOG_HIGH_DEFAULT: i64 = 10_000;
/// "Backlog high" threshold of a Queue with `maxLength`, in percent of it.
pub const BACKLOG_HIGH_PERCENT_OF_MAX: i64 = 80;
/// Failed device logins per 5 minutes at one Gateway that make a burst.
pub const AUTH_FAILURE_BURST: i64 = 20;

/// A Prometheus Operator kind the operator creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MonitoringKind {
    /// Scrape configuration selecting pods.
    PodMonitor,
    /// Alerting rules.
    PrometheusRule,
}

impl MonitoringKind {
    /// The kind's name.
    pub fn kind(self) -> &'static str {
        match self {
            MonitoringKind::PodMonitor => "PodMonitor",
            MonitoringKind::PrometheusRule => "PrometheusRule",
        }
    }

    /// The resource's plural name, as discovery lists it.
    pub fn plural(self) -> &'static str {
        match self {
            MonitoringKind::PodMonitor => "podmonitors",
            MonitoringKind::PrometheusRule => "prometheusrules",
        }
    }

    /// The dynamic API resource.
    pub fn api_resource(self) -> ApiResource {
        ApiResource {
            group: GROUP.to_owned(),
            version: VERSION.to_owned(),
            api_version: format!("{GROUP}/{VERSION}"),
            kind: self.kind().to_owned(),
            plural: self.plural().to_owned(),
        }
    }
}

fn object(kind: MonitoringKind, metadata: kube::api::ObjectMeta, spec: Value) -> DynamicObject {
    DynamicObject {
        types: Some(TypeMeta {
            api_version: format!("{GROUP}/{VERSION}"),
            kind: kind.kind().to_owned(),
        }),
        metadata,
        data: json!({ "spec": spec }),
    }
}

/// A PromQL string literal (names are DNS labels, but quote defensively).
fn quoted(value: &str) -> String {
    let escaped = value.replace('\\', "\\\\").replace('"', "\\\"");
    format!("\"{escaped}\"")
}

/// A PodMonitor spec selecting one component's pods, scraping `/metrics` on `port`, and
/// adding the static `labels` to every series.
fn pod_monitor_spec(owner: &str, component: &str, port: &str, labels: &[(&str, &str)]) -> Value {
    let mut match_labels = selector_labels(owner, component);
    match_labels.insert(OWNER_KIND_LABEL.to_owned(), component.to_owned());
    let relabelings: Vec<Value> = labels
        .iter()
        .map(|(label, value)| {
            json!({"action": "replace", "targetLabel": label, "replacement": value})
        })
        .collect();
    json!({
        "selector": {"matchLabels": match_labels},
        "podMetricsEndpoints": [{
            "port": port,
            "path": "/metrics",
            "interval": SCRAPE_INTERVAL,
            "relabelings": relabelings,
        }],
    })
}

/// The PodMonitor of a Gateway's pods (container port `health`).
pub fn gateway_pod_monitor(gateway: &Gateway) -> Result<DynamicObject, BuildError> {
    let (name, _) = name_and_namespace(gateway)?;
    let child = super::gateway::child_name(&name);
    Ok(object(
        MonitoringKind::PodMonitor,
        child_meta(gateway, &child, "gateway")?,
        pod_monitor_spec(&name, "gateway", "health", &[("gateway", &name)]),
    ))
}

/// The PodMonitor of a Worker's pods (container port `metrics`), labelling every series
/// with the Worker and the Queue it consumes.
pub fn worker_pod_monitor(worker: &Worker) -> Result<DynamicObject, BuildError> {
    let (name, _) = name_and_namespace(worker)?;
    let child = super::worker::child_name(&name);
    Ok(object(
        MonitoringKind::PodMonitor,
        child_meta(worker, &child, "worker")?,
        pod_monitor_spec(
            &name,
            "worker",
            "metrics",
            &[("worker", &name), ("queue", &worker.spec.queue)],
        ),
    ))
}

/// Name of a Queue's PrometheusRule.
pub fn queue_rule_name(queue: &str) -> String {
    format!("{queue}-queue-alerts")
}

/// Name of a Gateway's PrometheusRule.
pub fn gateway_rule_name(gateway: &str) -> String {
    format!("{gateway}-gateway-alerts")
}

fn alert(
    name: &str,
    expr: String,
    for_: &str,
    severity: &str,
    summary: &str,
    description: &str,
) -> Value {
    let mut rule = json!({
        "alert": name,
        "expr": expr,
        "labels": {"severity": severity},
        "annotations": {"summary": summary, "description": description},
    });
    if !for_.is_empty() {
        rule["for"] = json!(for_);
    }
    rule
}

/// The "backlog high" threshold of a Queue: 80 % of `maxLength`, or a fixed default.
pub fn backlog_high_threshold(queue: &Queue) -> i64 {
    match queue.spec.max_length {
        Some(max) if max > 0 => (max.saturating_mul(BACKLOG_HIGH_PERCENT_OF_MAX) / 100).max(1),
        _ => BACKLOG_HIGH_DEFAULT,
    }
}

/// The rules of a Queue as a Prometheus rules-file value (`{groups: [...]}`), which is also
/// the PrometheusRule's spec: backlog growing or high, dead letters, sink errors of the
/// Workers consuming it.
pub fn queue_rule_spec(queue: &Queue) -> Result<Value, BuildError> {
    let (name, namespace) = name_and_namespace(queue)?;
    let sel = format!("namespace={},queue={}", quoted(&namespace), quoted(&name));
    let who = format!("Queue {namespace}/{name}");
    let mut rules = backlog_alerts(queue, &sel, &who);
    if queue.spec.dead_letter.enabled {
        rules.push(dead_letters_alert(&sel, &who));
    }
    rules.extend(worker_alerts(&sel, &who));
    Ok(json!({
        "groups": [{"name": format!("tributary.queue.{namespace}.{name}"), "rules": rules}]
    }))
}

/// A Queue's backlog keeps growing, or is high (`sel` selects its series, `who` names it).
fn backlog_alerts(queue: &Queue, sel: &str, who: &str) -> Vec<Value> {
    let ready = format!("tributary_operator_queue_ready_messages{{{sel}}}");
    let unacked = format!("tributary_operator_queue_unacked_messages{{{sel}}}");
    vec![
        alert(
            "TributaryQueueBacklogGrowing",
            format!("({ready} + {unacked}) > {BACKLOG_GROWING_MIN}\nand\nderiv({ready}[15m]) > 0"),
            "15m",
            "warning",
            &format!("The backlog of {who} keeps growing"),
            "{{ $value }} messages wait and the backlog has risen for 15 minutes: workers do \
             not keep up (check their replicas, sink latency and errors).",
        ),
        alert(
            "TributaryQueueBacklogHigh",
            format!("{ready} > {}", backlog_high_threshold(queue)),
            "10m",
            "warning",
            &format!("The backlog of {who} is high"),
            &format!(
                "{{{{ $value }}}} ready messages (threshold {}). Near maxLength the broker \
                 refuses or drops messages, depending on the Queue's overflow setting.",
                backlog_high_threshold(queue)
            ),
        ),
    ]
}

/// Messages wait in a Queue's dead-letter queue.
fn dead_letters_alert(sel: &str, who: &str) -> Value {
    alert(
        "TributaryQueueDeadLetters",
        format!("tributary_operator_queue_dead_letter_messages{{{sel}}} > 0"),
        "5m",
        "warning",
        &format!("The dead-letter queue of {who} holds messages"),
        "{{ $value }} dead-lettered messages wait for inspection; each carries its \
         reason in the x-tributary-reason header.",
    )
}

/// The Workers consuming a Queue dead-letter messages, fail sink writes, or wait for a
/// target that is down.
fn worker_alerts(sel: &str, who: &str) -> Vec<Value> {
    vec![
        alert(
            "TributaryQueueMessagesDeadLettered",
            format!(
                "sum by (namespace, queue, worker, reason) \
                 (increase(tributary_worker_messages_dead_lettered_total{{{sel}}}[15m])) > 0"
            ),
            "",
            "warning",
            &format!("Workers of {who} dead-letter messages"),
            "Worker {{ $labels.worker }} dead-lettered {{ $value | humanize }} messages in 15 \
             minutes (reason {{ $labels.reason }}).",
        ),
        alert(
            "TributaryQueueSinkErrors",
            format!(
                "sum by (namespace, queue, worker, sink, kind) \
                 (rate(tributary_worker_sink_errors_total{{{sel}}}[5m])) > 0"
            ),
            "10m",
            "warning",
            &format!("Sink writes of {who} keep failing"),
            "Worker {{ $labels.worker }} fails {{ $value | humanize }} writes/s to sink \
             {{ $labels.sink }} ({{ $labels.kind }}) for 10 minutes.",
        ),
        alert(
            "TributaryQueueSinkUnavailable",
            format!(
                "max by (namespace, queue, worker, target) \
                 (tributary_worker_target_unavailable{{{sel}}}) > 0"
            ),
            "1m",
            "warning",
            &format!("A worker of {who} waits for a target that is down"),
            "Worker {{ $labels.worker }} cannot reach {{ $labels.target }}: it holds its \
             messages unacknowledged and the backlog waits in the queue until it is back.",
        ),
    ]
}

/// The rules of a Gateway as a rules-file value: authentication failure bursts and a lost
/// broker connection. (Per Gateway rather than per Queue: a Gateway routes to several
/// Queues, and one failed login would otherwise alert once per Queue.)
pub fn gateway_rule_spec(gateway: &Gateway) -> Result<Value, BuildError> {
    let (name, namespace) = name_and_namespace(gateway)?;
    let sel = format!("namespace={},gateway={}", quoted(&namespace), quoted(&name));
    let who = format!("Gateway {namespace}/{name}");
    let rules = vec![
        alert(
            "TributaryGatewayAuthFailureBurst",
            format!(
                "sum by (namespace, gateway, protocol, method) \
                 (increase(tributary_gateway_auth_failures_total{{{sel}}}[5m])) > {AUTH_FAILURE_BURST}"
            ),
            "",
            "warning",
            &format!("Burst of failed device logins at {who}"),
            "{{ $value | humanize }} failed {{ $labels.method }} logins over {{ $labels.protocol }} \
             in 5 minutes: a misconfigured fleet or someone guessing credentials.",
        ),
        alert(
            "TributaryGatewayBrokerDisconnected",
            format!("tributary_gateway_broker_connected{{{sel}}} == 0"),
            "5m",
            "critical",
            &format!("{who} cannot reach its broker"),
            "Pod {{ $labels.pod }} has had no broker connection for 5 minutes; devices' \
             messages are refused (broker_unavailable).",
        ),
    ];
    Ok(json!({
        "groups": [{"name": format!("tributary.gateway.{namespace}.{name}"), "rules": rules}]
    }))
}

/// The PrometheusRule of a Queue.
pub fn queue_rule(queue: &Queue) -> Result<DynamicObject, BuildError> {
    let (name, _) = name_and_namespace(queue)?;
    Ok(object(
        MonitoringKind::PrometheusRule,
        child_meta(queue, &queue_rule_name(&name), "queue")?,
        queue_rule_spec(queue)?,
    ))
}

/// The PrometheusRule of a Gateway.
pub fn gateway_rule(gateway: &Gateway) -> Result<DynamicObject, BuildError> {
    let (name, _) = name_and_namespace(gateway)?;
    Ok(object(
        MonitoringKind::PrometheusRule,
        child_meta(gateway, &gateway_rule_name(&name), "gateway")?,
        gateway_rule_spec(gateway)?,
    ))
}

/// The rule groups of every Queue and Gateway in a YAML stream (one or more documents);
/// objects without a namespace are placed in `namespace`. Other kinds are skipped; a stream
/// without a Queue or Gateway is an error. For `tributary-operator rules`.
pub fn rule_groups_of_manifests(yaml: &str, namespace: &str) -> Result<Vec<Value>, BuildError> {
    use serde::Deserialize;
    let invalid = |error: String| BuildError::Invalid(error);
    let mut groups = Vec::new();
    let mut found = false;
    for document in serde_yaml::Deserializer::from_str(yaml) {
        let value = Value::deserialize(document).map_err(|e| invalid(e.to_string()))?;
        if value.is_null() {
            continue;
        }
        let kind = value["kind"].as_str().unwrap_or_default().to_owned();
        let spec = match kind.as_str() {
            "Queue" => {
                let mut queue: Queue =
                    serde_json::from_value(value).map_err(|e| invalid(format!("Queue: {e}")))?;
                queue
                    .metadata
                    .namespace
                    .get_or_insert_with(|| namespace.to_owned());
                queue_rule_spec(&queue)?
            }
            "Gateway" => {
                let mut gateway: Gateway =
                    serde_json::from_value(value).map_err(|e| invalid(format!("Gateway: {e}")))?;
                gateway
                    .metadata
                    .namespace
                    .get_or_insert_with(|| namespace.to_owned());
                gateway_rule_spec(&gateway)?
            }
            _ => continue,
        };
        found = true;
        groups.extend(spec["groups"].as_array().cloned().unwrap_or_default());
    }
    if found {
        Ok(groups)
    } else {
        Err(invalid("no Queue or Gateway in the manifests".to_owned()))
    }
}

#[cfg(test)]
mod tests;
