//! Prometheus metrics of the operator. Names are stable and documented:
//!
//! - `tributary_operator_reconciles_total{kind}`: reconciles started.
//! - `tributary_operator_reconcile_errors_total{kind,error}`: failed reconciles by error kind.
//! - `tributary_operator_reconcile_duration_seconds{kind}`: reconcile latency histogram.
//! - `tributary_operator_leader`: 1 while this replica holds the leader Lease.

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
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tributary_operator");
        let reconciles = Family::<Labels, Counter>::default();
        let errors = Family::<Labels, Counter>::default();
        let durations = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 12))
        });
        let leader = Gauge::default();
        registry.register(
            "reconciles",
            "Reconciles started, by resource kind",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Failed reconciles, by resource kind and error kind",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Reconcile duration in seconds, by resource kind",
            durations.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            leader.clone(),
        );
        Metrics {
            registry,
            reconciles,
            errors,
            durations,
            leader,
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

    /// Counts a failed reconcile.
    pub fn error(&self, kind: &str, error: &str) {
        let labels = vec![
            ("kind".to_owned(), kind.to_owned()),
            ("error".to_owned(), error.to_owned()),
        ];
        self.errors.get_or_create(&labels).inc();
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
mod tests {
    use super::*;

    #[test]
    fn metrics_render_with_stable_names() {
        let metrics = Metrics::new();
        drop(metrics.reconcile("Queue"));
        metrics.error("Queue", "broker");
        let text = metrics.render();
        assert!(
            text.contains("tributary_operator_reconciles_total{kind=\"Queue\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "tributary_operator_reconcile_errors_total{kind=\"Queue\",error=\"broker\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("tributary_operator_reconcile_duration_seconds_count{kind=\"Queue\"} 1"),
            "{text}"
        );
    }
}
