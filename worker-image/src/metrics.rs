//! Prometheus metrics, all named `tributary_worker_*`.
//!
//! | name | type | labels |
//! | --- | --- | --- |
//! | `tributary_worker_messages_consumed_total` | counter | |
//! | `tributary_worker_messages_acked_total` | counter | |
//! | `tributary_worker_messages_retried_total` | counter | `stage` (sink name or `container`) |
//! | `tributary_worker_messages_requeued_total` | counter | |
//! | `tributary_worker_messages_dead_lettered_total` | counter | `reason` (kind) |
//! | `tributary_worker_pipeline_dropped_total` | counter | |
//! | `tributary_worker_sink_write_duration_seconds` | histogram | `sink` |
//! | `tributary_worker_sink_batch_size_messages` | histogram | `sink` |
//! | `tributary_worker_sink_errors_total` | counter | `sink`, `kind` |
//! | `tributary_worker_target_unavailable` | gauge | `target` (`sink NAME`, `container`, `dead-letter queue`) |
//! | `tributary_worker_redeliveries_counted_total` | counter | |

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

#[derive(Clone)]
struct LatencyBuckets;
impl MetricConstructor<Histogram> for LatencyBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(0.0005, 2.0, 16))
    }
}

#[derive(Clone)]
struct SizeBuckets;
impl MetricConstructor<Histogram> for SizeBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(1.0, 2.0, 16))
    }
}

/// The worker's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    /// Deliveries received from the broker.
    pub consumed: Counter,
    /// Messages acknowledged (stored by every sink, filtered, or dead-lettered).
    pub acked: Counter,
    retried: Family<Labels, Counter>,
    /// Messages returned to the queue unprocessed (shutdown during retries).
    pub requeued: Counter,
    dead_lettered: Family<Labels, Counter>,
    /// Messages a pipeline filter dropped.
    pub pipeline_dropped: Counter,
    write_duration: Family<Labels, Histogram, LatencyBuckets>,
    batch_size: Family<Labels, Histogram, SizeBuckets>,
    sink_errors: Family<Labels, Counter>,
    /// Consuming sessions that ended on a broker error and were reconnected.
    pub broker_reconnects: Counter,
    target_unavailable: Family<Labels, Gauge>,
    /// Redelivered messages the worker counted and put back (classic queues).
    pub redeliveries_counted: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tributary_worker");
        let consumed = Counter::default();
        let acked = Counter::default();
        let retried = Family::<Labels, Counter>::default();
        let requeued = Counter::default();
        let dead_lettered = Family::<Labels, Counter>::default();
        let pipeline_dropped = Counter::default();
        let write_duration = Family::new_with_constructor(LatencyBuckets);
        let batch_size = Family::new_with_constructor(SizeBuckets);
        let sink_errors = Family::<Labels, Counter>::default();
        let broker_reconnects = Counter::default();
        let target_unavailable = Family::<Labels, Gauge>::default();
        let redeliveries_counted = Counter::default();
        registry.register(
            "target_unavailable",
            "1 while a target (sink, container, dead-letter queue) is unavailable and its messages are held",
            target_unavailable.clone(),
        );
        registry.register(
            "redeliveries_counted",
            "Redelivered messages counted in x-tributary-deliveries and put back on the queue",
            redeliveries_counted.clone(),
        );
        registry.register(
            "broker_reconnects",
            "Consuming sessions ended by a broker error, after which the worker reconnected",
            broker_reconnects.clone(),
        );
        registry.register(
            "messages_consumed",
            "Deliveries received from the broker",
            consumed.clone(),
        );
        registry.register(
            "messages_acked",
            "Messages acknowledged to the broker",
            acked.clone(),
        );
        registry.register(
            "messages_retried",
            "Retries after a failure (an outage or a per-message failure), by stage",
            retried.clone(),
        );
        registry.register(
            "messages_requeued",
            "Messages returned to the queue unprocessed at shutdown",
            requeued.clone(),
        );
        registry.register(
            "messages_dead_lettered",
            "Messages dead-lettered, by reason kind",
            dead_lettered.clone(),
        );
        registry.register(
            "pipeline_dropped",
            "Messages dropped by a pipeline filter",
            pipeline_dropped.clone(),
        );
        registry.register(
            "sink_write_duration_seconds",
            "Duration of one batch write to a sink",
            write_duration.clone(),
        );
        registry.register(
            "sink_batch_size_messages",
            "Messages per batch written to a sink",
            batch_size.clone(),
        );
        registry.register(
            "sink_errors",
            "Failed sink writes, by sink and kind (unavailable or rejected)",
            sink_errors.clone(),
        );
        Self {
            registry,
            consumed,
            acked,
            retried,
            requeued,
            dead_lettered,
            pipeline_dropped,
            write_duration,
            batch_size,
            sink_errors,
            broker_reconnects,
            target_unavailable,
            redeliveries_counted,
        }
    }

    /// Counts retries of `count` messages at a stage.
    pub fn retried(&self, stage: &str, count: u64) {
        self.retried
            .get_or_create(&vec![("stage".into(), stage.into())])
            .inc_by(count);
    }

    /// Counts a dead-lettered message.
    pub fn dead_lettered(&self, reason: &str) {
        self.dead_lettered
            .get_or_create(&vec![("reason".into(), reason.into())])
            .inc();
    }

    /// Records one successful batch write.
    pub fn sink_write(&self, sink: &str, seconds: f64, messages: usize) {
        let labels = vec![("sink".to_string(), sink.to_string())];
        self.write_duration.get_or_create(&labels).observe(seconds);
        self.batch_size
            .get_or_create(&labels)
            .observe(messages as f64);
    }

    /// Counts a failed sink write.
    pub fn sink_error(&self, sink: &str, kind: &str) {
        self.sink_errors
            .get_or_create(&vec![
                ("sink".into(), sink.into()),
                ("kind".into(), kind.into()),
            ])
            .inc();
    }

    /// Sets whether a target is unavailable.
    pub fn target_unavailable(&self, target: &str, unavailable: bool) {
        self.target_unavailable
            .get_or_create(&vec![("target".into(), target.into())])
            .set(i64::from(unavailable));
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        tributary_service_kit::metrics::encode(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_with_documented_names() {
        let metrics = Metrics::new();
        metrics.consumed.inc();
        metrics.sink_write("db", 0.01, 10);
        metrics.dead_lettered("pipeline");
        let text = metrics.render();
        for name in [
            "tributary_worker_messages_consumed_total 1",
            "tributary_worker_sink_write_duration_seconds_count{sink=\"db\"} 1",
            "tributary_worker_sink_batch_size_messages_count{sink=\"db\"} 1",
            "tributary_worker_messages_dead_lettered_total{reason=\"pipeline\"} 1",
        ] {
            assert!(text.contains(name), "{name} missing in\n{text}");
        }
    }
}
