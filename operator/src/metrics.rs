//! Prometheus metrics of the operator. Names are stable and documented:
//!
//! - `tributary_operator_reconciles_total{kind}`: reconciles started.
//! - `tributary_operator_reconcile_errors_total{kind,error}`: failed reconciles by error kind.
//! - `tributary_operator_reconcile_duration_seconds{kind}`: reconcile latency histogram.
//! - `tributary_operator_leader`: 1 while this replica holds the leader Lease.
//! - `tributary_operator_api_requests_total{verb,resource}`: requests to the Kubernetes API.
//! - `tributary_operator_applies_skipped_total{kind}`: child applies skipped as unable to
//!   change anything.
//! - `tributary_operator_queue_ready_messages{namespace,queue}`, `…_unacked_messages`,
//!   `…_consumers`, `…_dead_letter_messages`: the broker counts the Queue controller last
//!   read (the leader only), for backlog and dead-letter alerts.
//! - `tributary_operator_worker_sink_outages{namespace,worker}`: targets a Worker's pods
//!   report unavailable at `/status`, for the sink-outage alert.
//!
//! The full table is in `docs/metrics.md`; a test below keeps the two in step.

pub mod requests;

use crate::broker::QueueCounts;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::time::Instant;

type Labels = Vec<(String, String)>;

/// The operator's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<Labels, Counter>,
    errors: Family<Labels, Counter>,
    durations: Family<Labels, Histogram>,
    /// 1 while leading.
    pub leader: Gauge,
    /// Requests to the Kubernetes API, by verb (counted by [`requests::CountRequests`]).
    pub api_requests: requests::RequestCounts,
    applies_skipped: Family<Labels, Counter>,
    scale_events: Family<Labels, Counter>,
    worker_replicas: Family<Labels, Gauge>,
    worker_backlog: Family<Labels, Gauge>,
    worker_sink_outages: Family<Labels, Gauge>,
    queue_ready: Family<Labels, Gauge>,
    queue_unacked: Family<Labels, Gauge>,
    queue_consumers: Family<Labels, Gauge>,
    queue_dead_letter: Family<Labels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut metrics = Metrics {
            registry: Registry::with_prefix("tributary_operator"),
            reconciles: Family::default(),
            errors: Family::default(),
            durations: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.005, 2.0, 12))
            }),
            leader: Gauge::default(),
            api_requests: Family::default(),
            applies_skipped: Family::default(),
            scale_events: Family::default(),
            worker_replicas: Family::default(),
            worker_backlog: Family::default(),
            worker_sink_outages: Family::default(),
            queue_ready: Family::default(),
            queue_unacked: Family::default(),
            queue_consumers: Family::default(),
            queue_dead_letter: Family::default(),
        };
        // Registration order is the order of `render`'s output.
        metrics.register_reconcile_metrics();
        metrics.register_worker_metrics();
        metrics.register_queue_metrics();
        metrics
    }

    fn register_reconcile_metrics(&mut self) {
        let registry = &mut self.registry;
        registry.register(
            "reconciles",
            "Reconciles started, by resource kind",
            self.reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Failed reconciles, by resource kind and error kind",
            self.errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Reconcile duration in seconds, by resource kind",
            self.durations.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            self.leader.clone(),
        );
        registry.register(
            "api_requests",
            "Requests to the Kubernetes API, by verb (watch, get, create, update, patch, delete)",
            self.api_requests.clone(),
        );
        registry.register(
            "applies_skipped",
            "Child applies skipped because they could not change anything, by child kind",
            self.applies_skipped.clone(),
        );
    }

    fn register_worker_metrics(&mut self) {
        let registry = &mut self.registry;
        registry.register(
            "scale_events",
            "Replica changes made by the autoscaler, by namespace and worker",
            self.scale_events.clone(),
        );
        registry.register(
            "worker_desired_replicas",
            "Replicas the autoscaler last decided, by namespace and worker",
            self.worker_replicas.clone(),
        );
        registry.register(
            "worker_backlog_messages",
            "Ready + unacknowledged messages of the worker's queue at the autoscaler's last reading",
            self.worker_backlog.clone(),
        );
        registry.register(
            "worker_sink_outages",
            "Targets (sinks, the custom container) a Worker's pods report unavailable at the last reading",
            self.worker_sink_outages.clone(),
        );
    }

    fn register_queue_metrics(&mut self) {
        for (name, help, family) in [
            (
                "queue_ready_messages",
                "Ready messages of a Queue at the last reading",
                &self.queue_ready,
            ),
            (
                "queue_unacked_messages",
                "Delivered, unacknowledged messages of a Queue at the last reading",
                &self.queue_unacked,
            ),
            (
                "queue_consumers",
                "Consumers of a Queue at the last reading",
                &self.queue_consumers,
            ),
            (
                "queue_dead_letter_messages",
                "Messages in a Queue's dead-letter queue at the last reading",
                &self.queue_dead_letter,
            ),
        ] {
            self.registry.register(name, help, family.clone());
        }
    }

    /// Starts timing one reconcile of `kind`; the duration is recorded when the guard drops.
    pub fn reconcile(&self, kind: &str) -> ReconcileTimer<'_> {
        let labels = vec![("kind".to_owned(), kind.to_owned())];
        self.reconciles.get_or_create(&labels).inc();
        ReconcileTimer {
            metrics: self,
            labels,
            start: Instant::now(),
        }
    }

    /// Counts a child apply of `kind` skipped because it could not change anything.
    pub fn apply_skipped(&self, kind: &str) {
        let labels = vec![("kind".to_owned(), kind.to_owned())];
        self.applies_skipped.get_or_create(&labels).inc();
    }

    /// Counts a failed reconcile.
    pub fn error(&self, kind: &str, error: &str) {
        let labels = vec![
            ("kind".to_owned(), kind.to_owned()),
            ("error".to_owned(), error.to_owned()),
        ];
        self.errors.get_or_create(&labels).inc();
    }

    /// Records an autoscaler reading of a worker's queue and its decision.
    pub fn observed(&self, namespace: &str, worker: &str, backlog: i64, replicas: i32) {
        let labels = worker_labels(namespace, worker);
        self.worker_backlog.get_or_create(&labels).set(backlog);
        self.worker_replicas
            .get_or_create(&labels)
            .set(i64::from(replicas));
    }

    /// Records how many targets a Worker's pods report unavailable.
    pub fn sink_outages(&self, namespace: &str, worker: &str, targets: usize) {
        self.worker_sink_outages
            .get_or_create(&worker_labels(namespace, worker))
            .set(i64::try_from(targets).unwrap_or(i64::MAX));
    }

    /// Drops the gauges of a Worker that is gone (a stale outage must not keep alerting).
    pub fn forget_worker(&self, namespace: &str, worker: &str) {
        let labels = worker_labels(namespace, worker);
        for family in [
            &self.worker_backlog,
            &self.worker_replicas,
            &self.worker_sink_outages,
        ] {
            family.remove(&labels);
        }
    }

    /// Counts a replica change made by the autoscaler.
    pub fn scaled(&self, namespace: &str, worker: &str) {
        self.scale_events
            .get_or_create(&worker_labels(namespace, worker))
            .inc();
    }

    /// Records the broker counts of the Queue `queue` in `namespace`.
    pub fn queue_counts(&self, namespace: &str, queue: &str, counts: &QueueCounts) {
        let labels = queue_labels(namespace, queue);
        self.queue_ready.get_or_create(&labels).set(counts.ready);
        self.queue_unacked
            .get_or_create(&labels)
            .set(counts.unacked);
        self.queue_consumers
            .get_or_create(&labels)
            .set(counts.consumers);
        match counts.dead_lettered {
            Some(depth) => {
                self.queue_dead_letter.get_or_create(&labels).set(depth);
            }
            None => {
                self.queue_dead_letter.remove(&labels);
            }
        }
    }

    /// Drops the series of a deleted Queue.
    pub fn forget_queue(&self, namespace: &str, queue: &str) {
        let labels = queue_labels(namespace, queue);
        for family in [
            &self.queue_ready,
            &self.queue_unacked,
            &self.queue_consumers,
            &self.queue_dead_letter,
        ] {
            family.remove(&labels);
        }
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

fn worker_labels(namespace: &str, worker: &str) -> Labels {
    vec![
        ("namespace".to_owned(), namespace.to_owned()),
        ("worker".to_owned(), worker.to_owned()),
    ]
}

fn queue_labels(namespace: &str, queue: &str) -> Labels {
    vec![
        ("namespace".to_owned(), namespace.to_owned()),
        ("queue".to_owned(), queue.to_owned()),
    ]
}

/// Records a reconcile's duration on drop.
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    labels: Labels,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .durations
            .get_or_create(&self.labels)
            .observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
pub(crate) mod docs {
    //! Reading `docs/metrics.md` in tests.

    /// The (name, type) pairs of the metrics table under `## heading` in
    /// `docs/metrics.md`.
    pub fn documented(heading: &str) -> Vec<(String, String)> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md");
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let mut in_section = false;
        let mut names = Vec::new();
        for line in text.lines() {
            if let Some(title) = line.strip_prefix("## ") {
                in_section = title.trim() == heading;
                continue;
            }
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            if in_section && cells.len() > 3 && cells[1].starts_with("`tributary_") {
                names.push((cells[1].trim_matches('`').to_owned(), cells[2].to_owned()));
            }
        }
        assert!(
            !names.is_empty(),
            "no metrics documented under ## {heading}"
        );
        names
    }
}

#[cfg(test)]
mod tests {
    use super::docs::documented;
    use super::*;

    #[test]
    fn metrics_render_with_stable_names() {
        let metrics = Metrics::new();
        drop(metrics.reconcile("Queue"));
        metrics.error("Queue", "kube");
        let text = metrics.render();
        assert!(
            text.contains("tributary_operator_reconciles_total{kind=\"Queue\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "tributary_operator_reconcile_errors_total{kind=\"Queue\",error=\"kube\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("tributary_operator_reconcile_duration_seconds_count{kind=\"Queue\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn queue_counts_are_exported_and_forgotten() {
        let metrics = Metrics::new();
        let counts = QueueCounts {
            ready: 7,
            unacked: 2,
            consumers: 1,
            dead_lettered: Some(3),
        };
        metrics.queue_counts("factory", "telemetry", &counts);
        let text = metrics.render();
        for line in [
            "tributary_operator_queue_ready_messages{namespace=\"factory\",queue=\"telemetry\"} 7",
            "tributary_operator_queue_unacked_messages{namespace=\"factory\",queue=\"telemetry\"} 2",
            "tributary_operator_queue_consumers{namespace=\"factory\",queue=\"telemetry\"} 1",
            "tributary_operator_queue_dead_letter_messages{namespace=\"factory\",queue=\"telemetry\"} 3",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
        metrics.forget_queue("factory", "telemetry");
        assert!(!metrics.render().contains("queue=\"telemetry\""));
    }

    #[test]
    fn every_documented_operator_metric_is_exported_and_vice_versa() {
        let metrics = Metrics::new();
        drop(metrics.reconcile("Queue"));
        metrics.error("Queue", "kube");
        metrics.apply_skipped("ConfigMap");
        metrics.leader.set(1);
        metrics
            .api_requests
            .get_or_create(&vec![("verb".to_owned(), "get".to_owned())])
            .inc();
        metrics.observed("factory", "ingest", 5, 2);
        metrics.scaled("factory", "ingest");
        metrics.sink_outages("factory", "ingest", 1);
        metrics.queue_counts(
            "factory",
            "telemetry",
            &QueueCounts {
                ready: 1,
                unacked: 0,
                consumers: 1,
                dead_lettered: Some(0),
            },
        );
        let text = metrics.render();
        let documented = documented("Operator");
        for (name, kind) in &documented {
            let sample = if kind == "histogram" {
                format!("{name}_count")
            } else {
                name.clone()
            };
            assert!(
                text.lines()
                    .any(|l| l.starts_with(&sample) && l[sample.len()..].starts_with([' ', '{'])),
                "documented {name} ({kind}) is not exported:\n{text}"
            );
        }
        // And every exported family is documented.
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let mut parts = line.split_whitespace().skip(2);
            let (Some(family), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            let name = if kind == "counter" {
                format!("{family}_total")
            } else {
                family.to_owned()
            };
            assert!(
                documented.iter().any(|(d, _)| *d == name),
                "exported {name} is not documented in docs/metrics.md"
            );
        }
    }

    #[test]
    fn worker_sink_outages_are_exported_and_forgotten_with_the_worker() {
        let metrics = Metrics::new();
        metrics.observed("factory", "ingest", 40, 2);
        metrics.sink_outages("factory", "ingest", 2);
        let text = metrics.render();
        let line =
            "tributary_operator_worker_sink_outages{namespace=\"factory\",worker=\"ingest\"} 2";
        assert!(text.contains(line), "{line} missing in\n{text}");
        metrics.sink_outages("factory", "ingest", 0);
        assert!(metrics.render().contains(&line.replace("} 2", "} 0")));
        metrics.forget_worker("factory", "ingest");
        let text = metrics.render();
        assert!(!text.contains("worker=\"ingest\"} "), "{text}");
    }
}
