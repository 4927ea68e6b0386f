//! Metrics of commands: subscriptions, deliveries, acknowledgements, undeliverable
//! commands, responses, expiries and the consumers of device queues. Every labelled series
//! is created at zero, so each is scraped from the start.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::commands::filter::Refusal;

/// Why a command taken from a device's queue was not delivered to the device.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Undeliverable {
    /// None of the session's subscriptions matches its topic.
    NoSubscription,
    /// It lacks a valid command id or name.
    Invalid,
    /// Larger than the MQTT 5 client's Maximum Packet Size.
    TooLarge,
}

impl Undeliverable {
    const ALL: [Undeliverable; 3] = [
        Undeliverable::NoSubscription,
        Undeliverable::Invalid,
        Undeliverable::TooLarge,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Undeliverable::NoSubscription => "no_subscription",
            Undeliverable::Invalid => "invalid",
            Undeliverable::TooLarge => "too_large",
        }
    }
}

/// What became of a device's response.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum ResponseResult {
    /// Published to the sender's reply queue and confirmed.
    Forwarded,
    /// No pending request with that id (unknown, answered already, expired, or the sender
    /// is gone).
    Unknown,
    /// A malformed response topic or status.
    Invalid,
}

impl ResponseResult {
    const ALL: [ResponseResult; 3] = [
        ResponseResult::Forwarded,
        ResponseResult::Unknown,
        ResponseResult::Invalid,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseResult::Forwarded => "forwarded",
            ResponseResult::Unknown => "unknown",
            ResponseResult::Invalid => "invalid",
        }
    }
}

/// Labels: protocol (`mqtt`, `http`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandProtocolLabels {
    /// `mqtt` or `http`.
    pub protocol: &'static str,
}

/// Labels: reason.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// The reason, snake_case.
    pub reason: &'static str,
}

/// Labels: result.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// The result, snake_case.
    pub result: &'static str,
}

/// The command metrics.
#[derive(Clone, Default)]
pub struct CommandMetrics {
    /// Subscriptions granted.
    pub subscriptions_granted: Counter,
    /// Subscriptions refused, by reason.
    pub subscriptions_refused: Family<ReasonLabels, Counter>,
    /// Commands delivered to devices, by protocol.
    pub delivered: Family<CommandProtocolLabels, Counter>,
    /// Commands acknowledged to the broker after the device took them, by protocol.
    pub acknowledged: Family<CommandProtocolLabels, Counter>,
    /// Commands taken from a queue but not delivered, by reason.
    pub undeliverable: Family<ReasonLabels, Counter>,
    /// Device responses, by result.
    pub responses: Family<ResultLabels, Counter>,
    /// Commands that expired before a device took them.
    pub expired: Counter,
    /// Consumers of device command queues (MQTT sessions and HTTP polls).
    pub consumers: Gauge,
    /// Broker operations on command queues that failed (refused or unavailable).
    pub broker_errors: Family<ReasonLabels, Counter>,
}

impl CommandMetrics {
    /// Registers them in `registry`, every labelled series at zero.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        for refusal in Refusal::ALL {
            metrics.refused(refusal).get();
        }
        for protocol in ["mqtt", "http"] {
            let labels = CommandProtocolLabels { protocol };
            metrics.delivered.get_or_create(&labels).get();
            metrics.acknowledged.get_or_create(&labels).get();
        }
        for reason in Undeliverable::ALL {
            metrics.undeliverable(reason).get();
        }
        for result in ResponseResult::ALL {
            metrics.response(result).get();
        }
        for reason in ["refused", "unavailable"] {
            metrics
                .broker_errors
                .get_or_create(&ReasonLabels { reason })
                .get();
        }
        metrics.register_all(registry);
        metrics
    }

    fn register_all(&self, registry: &mut Registry) {
        registry.register(
            "command_subscriptions_granted",
            "Command subscriptions granted",
            self.subscriptions_granted.clone(),
        );
        registry.register(
            "command_subscriptions_refused",
            "Command subscriptions refused, by reason",
            self.subscriptions_refused.clone(),
        );
        registry.register(
            "commands_delivered",
            "Commands delivered to devices, by protocol",
            self.delivered.clone(),
        );
        registry.register(
            "commands_acknowledged",
            "Commands acknowledged to the broker once the device took them, by protocol",
            self.acknowledged.clone(),
        );
        registry.register(
            "commands_undeliverable",
            "Commands taken from a device queue and not delivered, by reason",
            self.undeliverable.clone(),
        );
        registry.register(
            "command_responses",
            "Device responses to requests, by result",
            self.responses.clone(),
        );
        registry.register(
            "commands_expired",
            "Commands whose time-to-live ran out before a device took them",
            self.expired.clone(),
        );
        registry.register(
            "command_consumers",
            "Consumers of device command queues (MQTT sessions and HTTP polls)",
            self.consumers.clone(),
        );
        registry.register(
            "command_broker_errors",
            "Broker operations on command queues that failed, by reason",
            self.broker_errors.clone(),
        );
    }

    /// The counter of `refusal`.
    pub fn refused(&self, refusal: Refusal) -> Counter {
        self.subscriptions_refused
            .get_or_create(&ReasonLabels {
                reason: refusal.as_str(),
            })
            .clone()
    }

    /// The counter of `reason`.
    pub fn undeliverable(&self, reason: Undeliverable) -> Counter {
        self.undeliverable
            .get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            })
            .clone()
    }

    /// The counter of `result`.
    pub fn response(&self, result: ResponseResult) -> Counter {
        self.responses
            .get_or_create(&ResultLabels {
                result: result.as_str(),
            })
            .clone()
    }

    /// The delivered counter of `protocol`.
    pub fn delivered(&self, protocol: &'static str) -> Counter {
        self.delivered
            .get_or_create(&CommandProtocolLabels { protocol })
            .clone()
    }

    /// The acknowledged counter of `protocol`.
    pub fn acknowledged(&self, protocol: &'static str) -> Counter {
        self.acknowledged
            .get_or_create(&CommandProtocolLabels { protocol })
            .clone()
    }

    /// Counts a failed broker operation: `refused` (an AMQP error such as 403 or 406) or
    /// `unavailable` (not connected, timed out).
    pub fn broker_error(&self, refused: bool) {
        let reason = if refused { "refused" } else { "unavailable" };
        self.broker_errors
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }
}
