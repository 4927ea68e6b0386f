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
//! | `tributary_worker_commands_total` | counter | `sink`, `result` |
//! | `tributary_worker_live_total` | counter | `sink`, `result` |

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Metric, Registry};

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
    commands: Family<Labels, Counter>,
    live: Family<Labels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

// The name (after the `tributary_worker` prefix) and help of each metric.
const TARGET_UNAVAILABLE: (&str, &str) = (
    "target_unavailable",
    "1 while a target (sink, container, dead-letter queue) is unavailable and its messages are held",
);
const REDELIVERIES_COUNTED: (&str, &str) = (
    "redeliveries_counted",
    "Redelivered messages counted in x-tributary-deliveries and put back on the queue",
);
const BROKER_RECONNECTS: (&str, &str) = (
    "broker_reconnects",
    "Consuming sessions ended by a broker error, after which the worker reconnected",
);
const MESSAGES_CONSUMED: (&str, &str) =
    ("messages_consumed", "Deliveries received from the broker");
const MESSAGES_ACKED: (&str, &str) = ("messages_acked", "Messages acknowledged to the broker");
const MESSAGES_RETRIED: (&str, &str) = (
    "messages_retried",
    "Retries after a failure (an outage or a per-message failure), by stage",
);
const MESSAGES_REQUEUED: (&str, &str) = (
    "messages_requeued",
    "Messages returned to the queue unprocessed at shutdown",
);
const MESSAGES_DEAD_LETTERED: (&str, &str) = (
    "messages_dead_lettered",
    "Messages dead-lettered, by reason kind",
);
const PIPELINE_DROPPED: (&str, &str) =
    ("pipeline_dropped", "Messages dropped by a pipeline filter");
const SINK_WRITE_DURATION_SECONDS: (&str, &str) = (
    "sink_write_duration_seconds",
    "Duration of one batch write to a sink",
);
const SINK_BATCH_SIZE_MESSAGES: (&str, &str) = (
    "sink_batch_size_messages",
    "Messages per batch written to a sink",
);
const COMMANDS: (&str, &str) = (
    "commands",
    "Messages a command sink handled, by sink and result (sent, undeliverable, queue_full, skipped)",
);
const LIVE: (&str, &str) = (
    "live",
    "Messages a live sink handled, by sink and result (published, buffer_full, unavailable, no_exchange)",
);
const SINK_ERRORS: (&str, &str) = (
    "sink_errors",
    "Failed sink writes, by sink and kind (unavailable or rejected)",
);

/// Registers `metric` under its name and help and hands it back.
fn registered<M: Metric + Clone>(
    registry: &mut Registry,
    (name, help): (&str, &str),
    metric: M,
) -> M {
    registry.register(name, help, metric.clone());
    metric
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric (registration order is the rendering order).
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tributary_worker");
        let r = &mut registry;
        Self {
            target_unavailable: registered(r, TARGET_UNAVAILABLE, Family::default()),
            redeliveries_counted: registered(r, REDELIVERIES_COUNTED, Counter::default()),
            broker_reconnects: registered(r, BROKER_RECONNECTS, Counter::default()),
            consumed: registered(r, MESSAGES_CONSUMED, Counter::default()),
            acked: registered(r, MESSAGES_ACKED, Counter::default()),
            retried: registered(r, MESSAGES_RETRIED, Family::default()),
            requeued: registered(r, MESSAGES_REQUEUED, Counter::default()),
            dead_lettered: registered(r, MESSAGES_DEAD_LETTERED, Family::default()),
            pipeline_dropped: registered(r, PIPELINE_DROPPED, Counter::default()),
            write_duration: registered(
                r,
                SINK_WRITE_DURATION_SECONDS,
                Family::new_with_constructor(LatencyBuckets),
            ),
            batch_size: registered(
                r,
                SINK_BATCH_SIZE_MESSAGES,
                Family::new_with_constructor(SizeBuckets),
            ),
            sink_errors: registered(r, SINK_ERRORS, Family::default()),
            commands: registered(r, COMMANDS, Family::default()),
            live: registered(r, LIVE, Family::default()),
            registry,
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

    /// Counts one message a command sink handled, by result (`sent`, `undeliverable`,
    /// `queue_full`, `skipped`).
    pub fn command(&self, sink: &str, result: &str) {
        self.commands
            .get_or_create(&vec![
                ("sink".into(), sink.into()),
                ("result".into(), result.into()),
            ])
            .inc();
    }

    /// The counter of messages a live sink handled with `result` (`published`, or why it
    /// was dropped: `buffer_full`, `unavailable`, `no_exchange`), created at 0 and shared:
    /// the sink keeps it, so counting a message allocates nothing.
    pub fn live(&self, sink: &str, result: &str) -> Counter {
        self.live
            .get_or_create(&vec![
                ("sink".into(), sink.into()),
                ("result".into(), result.into()),
            ])
            .clone()
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
        metrics.command("fan", "queue_full");
        metrics.live("view", "buffer_full").inc_by(3);
        let text = metrics.render();
        for name in [
            "tributary_worker_messages_consumed_total 1",
            "tributary_worker_sink_write_duration_seconds_count{sink=\"db\"} 1",
            "tributary_worker_sink_batch_size_messages_count{sink=\"db\"} 1",
            "tributary_worker_messages_dead_lettered_total{reason=\"pipeline\"} 1",
            "tributary_worker_commands_total{sink=\"fan\",result=\"queue_full\"} 1",
            "tributary_worker_live_total{sink=\"view\",result=\"buffer_full\"} 3",
        ] {
            assert!(text.contains(name), "{name} missing in\n{text}");
        }
    }
}
