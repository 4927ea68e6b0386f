//! Prometheus metrics, all named `tributary_api_*`.
//!
//! | name | type | labels |
//! | --- | --- | --- |
//! | `tributary_api_requests_total` | counter | `route` (the matched route, `unmatched` otherwise), `status` |
//! | `tributary_api_request_duration_seconds` | histogram | `route` |
//! | `tributary_api_stream_clients` | gauge | `kind` (`sse`, `ws`) |
//! | `tributary_api_live_messages_total` | counter | |
//! | `tributary_api_live_dropped_total` | counter | |
//! | `tributary_api_live_unreadable_total` | counter | |
//! | `tributary_api_live_connected` | gauge | |
//! | `tributary_api_rate_limited_total` | counter | `key` (the key's name) |
//! | `tributary_api_auth_failures_total` | counter | |
//! | `tributary_api_commands_total` | counter | `result` ([`COMMAND_RESULTS`]) |
//! | `tributary_api_command_round_trip_seconds` | histogram | |
//! | `tributary_api_commands_waiting` | gauge | |
//! | `tributary_api_commands_connected` | gauge | |
//! | `tributary_api_command_responses_unmatched_total` | counter | |

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// The values of `tributary_api_commands_total`'s `result` label.
pub const COMMAND_RESULTS: [&str; 7] = [
    "queued",
    "answered",
    "timeout",
    "undeliverable",
    "queueFull",
    "refused",
    "error",
];

#[derive(Clone)]
struct LatencyBuckets;
impl MetricConstructor<Histogram> for LatencyBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(0.0005, 2.0, 16))
    }
}

/// The API's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    duration: Family<Labels, Histogram, LatencyBuckets>,
    stream_clients: Family<Labels, Gauge>,
    /// Live messages received from the broker.
    pub live_messages: Counter,
    /// Live messages a slow client did not get (its buffer was full).
    pub live_dropped: Counter,
    /// Live messages that are not a JSON object with a `device` string.
    pub live_unreadable: Counter,
    /// 1 while consuming live messages from the broker.
    pub live_connected: Gauge,
    rate_limited: Family<Labels, Counter>,
    /// Requests with a missing or unknown key.
    pub auth_failures: Counter,
    /// The command endpoint's metrics.
    pub commands: CommandMetrics,
}

/// The command endpoint's metrics.
#[derive(Debug)]
pub struct CommandMetrics {
    results: Family<Labels, Counter>,
    /// Seconds from publishing a command to its device's answer.
    pub round_trip: Histogram,
    /// Requests waiting for a device's answer.
    pub waiting: Gauge,
    /// 1 while the command publisher is connected to the broker.
    pub connected: Gauge,
    /// Answers that arrived for no waiting request (it timed out or went away).
    pub unmatched: Counter,
}

impl CommandMetrics {
    fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            results: Family::default(),
            // 5 ms to about 80 s: a device on a slow link answering within the longest wait.
            round_trip: Histogram::new(exponential_buckets(0.005, 2.0, 15)),
            waiting: Gauge::default(),
            connected: Gauge::default(),
            unmatched: Counter::default(),
        };
        registry.register(
            "commands",
            "Command requests, by result (queued, answered, timeout, undeliverable, queueFull, refused, error)",
            metrics.results.clone(),
        );
        registry.register(
            "command_round_trip_seconds",
            "Time from publishing a command to its device's answer, for answered commands",
            metrics.round_trip.clone(),
        );
        registry.register(
            "commands_waiting",
            "Command requests waiting for their device's answer",
            metrics.waiting.clone(),
        );
        registry.register(
            "commands_connected",
            "1 while the command publisher is connected to the broker",
            metrics.connected.clone(),
        );
        registry.register(
            "command_responses_unmatched",
            "Device answers that arrived for no waiting request (timed out, or the client left)",
            metrics.unmatched.clone(),
        );
        metrics
    }

    /// Counts a command request by its result (one of [`COMMAND_RESULTS`]).
    pub fn count(&self, result: &str) {
        self.results
            .get_or_create(&vec![("result".into(), result.into())])
            .inc();
    }
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
        let mut registry = Registry::with_prefix("tributary_api");
        let requests = Family::<Labels, Counter>::default();
        let duration = Family::new_with_constructor(LatencyBuckets);
        let stream_clients = Family::<Labels, Gauge>::default();
        let live_messages = Counter::default();
        let live_dropped = Counter::default();
        let live_unreadable = Counter::default();
        let live_connected = Gauge::default();
        let rate_limited = Family::<Labels, Counter>::default();
        let auth_failures = Counter::default();
        registry.register(
            "requests",
            "HTTP requests answered, by route and status",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time to answer a request (for streams: to open it), by route",
            duration.clone(),
        );
        registry.register(
            "stream_clients",
            "Live clients connected, by kind (sse, ws)",
            stream_clients.clone(),
        );
        registry.register(
            "live_messages",
            "Live messages received from the broker",
            live_messages.clone(),
        );
        registry.register(
            "live_dropped",
            "Live messages not delivered to a client because it fell behind",
            live_dropped.clone(),
        );
        registry.register(
            "live_unreadable",
            "Live messages that are not a JSON object with a device",
            live_unreadable.clone(),
        );
        registry.register(
            "live_connected",
            "1 while consuming live messages from the broker",
            live_connected.clone(),
        );
        registry.register(
            "rate_limited",
            "Requests refused with 429, by key name",
            rate_limited.clone(),
        );
        registry.register(
            "auth_failures",
            "Requests refused with 401 (no key or an unknown key)",
            auth_failures.clone(),
        );
        let commands = CommandMetrics::register(&mut registry);
        Self {
            registry,
            requests,
            duration,
            stream_clients,
            live_messages,
            live_dropped,
            live_unreadable,
            live_connected,
            rate_limited,
            auth_failures,
            commands,
        }
    }

    /// Records an answered request.
    pub fn request(&self, route: &str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&vec![
                ("route".into(), route.into()),
                ("status".into(), status.to_string()),
            ])
            .inc();
        self.duration
            .get_or_create(&vec![("route".into(), route.into())])
            .observe(seconds);
    }

    /// The gauge of live clients of a kind.
    pub fn stream_clients(&self, kind: &str) -> Gauge {
        self.stream_clients
            .get_or_create(&vec![("kind".into(), kind.into())])
            .clone()
    }

    /// Counts a request refused by a key's rate limit.
    pub fn rate_limited(&self, key: &str) {
        self.rate_limited
            .get_or_create(&vec![("key".into(), key.into())])
            .inc();
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        tributary_service_kit::metrics::encode(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The (name, type) rows of the `## API` table in `docs/metrics.md`.
    fn documented() -> Vec<(String, String)> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md");
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let mut in_section = false;
        let mut rows = Vec::new();
        for line in text.lines() {
            if let Some(title) = line.strip_prefix("## ") {
                in_section = title.trim() == "API";
                continue;
            }
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            if in_section && cells.len() > 3 && cells[1].starts_with("`tributary_") {
                rows.push((cells[1].trim_matches('`').to_owned(), cells[2].to_owned()));
            }
        }
        rows
    }

    #[test]
    fn exported_metrics_and_docs_metrics_md_agree() {
        let metrics = Metrics::new();
        // Give every labelled family a series.
        metrics.request("/v1/devices", 200, 0.01);
        metrics.stream_clients("sse").set(0);
        metrics.rate_limited("k");
        metrics.commands.count("queued");
        let text = metrics.render();
        let mut exported = Vec::new();
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
            exported.push((name, kind.to_owned()));
        }
        let mut documented = documented();
        documented.sort();
        exported.sort();
        assert_eq!(
            exported, documented,
            "docs/metrics.md ## API is out of step"
        );
    }
}
