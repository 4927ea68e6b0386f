//! Prometheus metrics, all named `tributary_gateway_*` with units in the names.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

mod commands;
mod device;

pub use self::commands::{CommandMetrics, ResponseResult, Undeliverable};
pub use self::device::{DeviceMetrics, LoginKind, TableSource};

/// The protocol a device used.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum ProtocolLabel {
    /// MQTT (plain or TLS).
    Mqtt,
    /// HTTP ingest.
    Http,
}

/// Why a message was refused.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum RejectReason {
    /// Topic outside the device's permissions.
    NotPermitted,
    /// No route matches the topic.
    NoRoute,
    /// Payload over the limit.
    TooLarge,
    /// Per-device rate exceeded (HTTP).
    RateLimited,
    /// Broker not connected.
    BrokerUnavailable,
    /// Broker nacked, returned (unroutable) or did not confirm in time.
    BrokerRefused,
    /// Malformed request or packet.
    Malformed,
}

impl ProtocolLabel {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ProtocolLabel::Mqtt => "mqtt",
            ProtocolLabel::Http => "http",
        }
    }
}

impl RejectReason {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::NotPermitted => "not_permitted",
            RejectReason::NoRoute => "no_route",
            RejectReason::TooLarge => "too_large",
            RejectReason::RateLimited => "rate_limited",
            RejectReason::BrokerUnavailable => "broker_unavailable",
            RejectReason::BrokerRefused => "broker_refused",
            RejectReason::Malformed => "malformed",
        }
    }
}

/// Labels: protocol.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabels {
    /// `mqtt` or `http`.
    pub protocol: &'static str,
}

impl ProtocolLabels {
    /// Labels for a protocol.
    pub fn of(protocol: ProtocolLabel) -> Self {
        Self {
            protocol: protocol.as_str(),
        }
    }
}

/// Labels: protocol and reject reason.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    /// `mqtt` or `http`.
    pub protocol: &'static str,
    /// The reason, snake_case.
    pub reason: &'static str,
}

/// Labels: protocol and authentication method attempted.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthLabels {
    /// `mqtt` or `http`.
    pub protocol: &'static str,
    /// `password`, `jwt`, `certificate` or `none`.
    pub method: &'static str,
}

/// Every metric the gateway exports.
pub struct Metrics {
    /// Open MQTT connections.
    pub connections: Gauge,
    /// Messages received from devices.
    pub messages_received: Family<ProtocolLabels, Counter>,
    /// Messages the broker accepted (confirmed, or handed over in `fast` mode).
    pub messages_accepted: Family<ProtocolLabels, Counter>,
    /// Messages refused, by reason.
    pub messages_rejected: Family<RejectLabels, Counter>,
    /// Failed device authentications.
    pub auth_failures: Family<AuthLabels, Counter>,
    /// Publish → broker confirm latency.
    pub confirm_duration: Histogram,
    /// Messages published and awaiting a confirm.
    pub in_flight: Gauge,
    /// 1 while connected to the broker.
    pub broker_connected: Gauge,
    /// Broker (re)connections made.
    pub broker_connects: Counter<u64, AtomicU64>,
    /// The device registry and logins by credential type.
    pub devices: DeviceMetrics,
    /// Commands to devices and their responses.
    pub commands: CommandMetrics,
    registry: Registry,
}

impl Metrics {
    /// Creates and registers all metrics.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tributary_gateway");
        let connections = Gauge::default();
        registry.register("connections", "Open MQTT connections", connections.clone());
        let messages_received = Family::<ProtocolLabels, Counter>::default();
        registry.register(
            "messages_received",
            "Messages received from devices",
            messages_received.clone(),
        );
        let messages_accepted = Family::<ProtocolLabels, Counter>::default();
        registry.register(
            "messages_accepted",
            "Messages confirmed by the broker (or handed over in fast mode)",
            messages_accepted.clone(),
        );
        let messages_rejected = Family::<RejectLabels, Counter>::default();
        registry.register(
            "messages_rejected",
            "Messages refused, by reason",
            messages_rejected.clone(),
        );
        let auth_failures = Family::<AuthLabels, Counter>::default();
        registry.register(
            "auth_failures",
            "Failed device authentications",
            auth_failures.clone(),
        );
        let confirm_duration = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register_with_unit(
            "broker_confirm_duration",
            "Time from publish to broker confirm",
            Unit::Seconds,
            confirm_duration.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "in_flight_messages",
            "Messages awaiting a broker confirm",
            in_flight.clone(),
        );
        let broker_connected = Gauge::default();
        registry.register(
            "broker_connected",
            "1 while the gateway is connected to the broker",
            broker_connected.clone(),
        );
        let broker_connects = Counter::default();
        registry.register(
            "broker_connects",
            "Broker connections made",
            broker_connects.clone(),
        );
        let devices = DeviceMetrics::register(&mut registry);
        let commands = CommandMetrics::register(&mut registry);
        Self {
            connections,
            messages_received,
            messages_accepted,
            messages_rejected,
            auth_failures,
            confirm_duration,
            in_flight,
            broker_connected,
            broker_connects,
            devices,
            commands,
            registry,
        }
    }

    /// Counts a refused message.
    pub fn reject(&self, protocol: ProtocolLabel, reason: RejectReason) {
        self.messages_rejected
            .get_or_create(&RejectLabels {
                protocol: protocol.as_str(),
                reason: reason.as_str(),
            })
            .inc();
    }

    /// Counts a failed authentication.
    pub fn auth_failure(&self, protocol: ProtocolLabel, method: &'static str) {
        self.auth_failures
            .get_or_create(&AuthLabels {
                protocol: protocol.as_str(),
                method,
            })
            .inc();
    }

    /// Counts a device table offered from `source` with `result`.
    pub fn table_load(&self, source: TableSource, result: &'static str) {
        self.devices
            .table_loads
            .get_or_create(&device::TableLoadLabels {
                source: source.as_str(),
                result,
            })
            .inc();
    }

    /// Records a table applied from `source`.
    pub fn table_applied(&self, source: TableSource, devices: usize, issued_at_ms: u64) {
        self.table_load(source, "applied");
        self.devices
            .table_devices
            .set(i64::try_from(devices).unwrap_or(i64::MAX));
        #[allow(clippy::cast_precision_loss)]
        self.devices
            .table_issued_at
            .set(issued_at_ms as f64 / 1000.0);
    }

    /// Counts a successful login.
    pub fn login(&self, kind: LoginKind) {
        self.devices
            .logins
            .get_or_create(&device::LoginLabels {
                credential: kind.as_str(),
            })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        tributary_service_kit::metrics::encode(&self.registry)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_carry_prefix_and_units() {
        let metrics = Metrics::new();
        metrics.confirm_duration.observe(0.01);
        metrics.reject(ProtocolLabel::Http, RejectReason::RateLimited);
        let text = metrics.encode();
        assert!(text.contains("tributary_gateway_broker_confirm_duration_seconds_bucket"));
        assert!(text.contains(
            "tributary_gateway_messages_rejected_total{protocol=\"http\",reason=\"rate_limited\"}"
        ));
    }

    #[test]
    fn every_exported_metric_is_documented_in_docs_metrics_md() {
        let docs = include_str!("../../docs/metrics.md");
        let text = Metrics::new().encode();
        let families: Vec<(&str, &str)> = text
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .filter_map(|rest| rest.split_once(' '))
            .collect();
        assert!(families.len() > 15, "{text}");
        for (name, kind) in families {
            let documented = if kind == "counter" {
                format!("| `{name}_total` | counter |")
            } else {
                format!("| `{name}` | {kind} |")
            };
            assert!(
                docs.contains(&documented),
                "{documented} missing in docs/metrics.md"
            );
        }
    }
}
