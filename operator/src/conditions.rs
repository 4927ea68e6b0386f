//! Status conditions: type and reason constants, and the merge that keeps
//! `lastTransitionTime` when a condition's status did not change. Shared by the controllers
//! and the autoscaler, below both.

use crate::crd::Condition;

/// Condition type every resource reports.
pub const READY: &str = "Ready";

/// Reasons of the `Ready` condition.
pub mod reason {
    /// Everything is applied and usable.
    pub const RECONCILED: &str = "Reconciled";
    /// Children are applied; pods or the broker are not ready yet.
    pub const PROGRESSING: &str = "Progressing";
    /// The spec cannot be acted on; fix it.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// A referenced Queue does not exist or is not ready yet.
    pub const WAITING_FOR_QUEUE: &str = "WaitingForQueue";
    /// A referenced Sink does not exist or is not ready yet.
    pub const WAITING_FOR_SINK: &str = "WaitingForSink";
    /// A referenced Secret or key does not exist yet.
    pub const WAITING_FOR_SECRET: &str = "WaitingForSecret";
    /// A Gateway a Device names does not exist yet.
    pub const WAITING_FOR_GATEWAY: &str = "WaitingForGateway";
    /// A referenced resource exists but cannot serve this one (a Sink of another type, a
    /// Gateway without commands); fix the reference or the resource.
    pub const INVALID_REFERENCE: &str = "InvalidReference";
    /// A child's name is taken by an object the operator does not own (never overwritten).
    pub const NAME_CONFLICT: &str = "NameConflict";
    /// The broker cannot be reached or refused the topology.
    pub const BROKER_UNAVAILABLE: &str = "BrokerUnavailable";
    /// Deletion waits: the broker queue still holds messages.
    pub const DELETION_BLOCKED: &str = "DeletionBlocked";
    /// A switch from the managed broker to an external one waits: the managed broker still
    /// holds messages, or cannot be checked.
    pub const BROKER_SWITCH_BLOCKED: &str = "BrokerSwitchBlocked";
}

/// Reasons of Events that are not transitions of the `Ready` condition.
pub mod event {
    /// A deleted Queue was released although its broker queue could not be deleted: the
    /// broker no longer exists (or goes away with the namespace).
    pub const BROKER_GONE: &str = "BrokerGone";
    /// Dead-lettered messages were moved back into the queue.
    pub const REPLAYED: &str = "Replayed";
    /// A deleted Gateway or Worker was released although its user on a managed broker
    /// could not be removed (the broker is gone, or did not answer in time).
    pub const BROKER_USER_LEFT: &str = "BrokerUserLeft";
}

/// `True`/`False` as condition status text.
pub fn status_text(ok: bool) -> &'static str {
    if ok {
        "True"
    } else {
        "False"
    }
}

/// A condition as the reconciler wants it, before merging with the stored one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    /// Condition type.
    pub type_: &'static str,
    /// True or false.
    pub ok: bool,
    /// Reason constant.
    pub reason: &'static str,
    /// Message for humans.
    pub message: String,
}

impl Desired {
    /// A `Ready` condition.
    pub fn ready(ok: bool, reason: &'static str, message: impl Into<String>) -> Self {
        Desired {
            type_: READY,
            ok,
            reason,
            message: message.into(),
        }
    }
}

/// Merges a desired condition into the stored ones: `lastTransitionTime` is kept while the
/// status is unchanged, and set to `now` when it changes or the condition is new.
pub fn merge(
    existing: &[Condition],
    desired: &Desired,
    generation: Option<i64>,
    now: &str,
) -> Vec<Condition> {
    let status = status_text(desired.ok);
    let previous = existing.iter().find(|c| c.type_ == desired.type_);
    let last_transition_time = match previous {
        Some(previous) if previous.status == status => previous.last_transition_time.clone(),
        _ => now.to_owned(),
    };
    let mut merged: Vec<Condition> = existing
        .iter()
        .filter(|c| c.type_ != desired.type_)
        .cloned()
        .collect();
    merged.push(Condition {
        type_: desired.type_.to_owned(),
        status: status.to_owned(),
        reason: desired.reason.to_owned(),
        message: desired.message.clone(),
        observed_generation: generation,
        last_transition_time,
    });
    merged.sort_by(|a, b| a.type_.cmp(&b.type_));
    merged
}

/// The `Ready` condition among `conditions`, if any.
pub fn ready(conditions: &[Condition]) -> Option<&Condition> {
    conditions.iter().find(|c| c.type_ == READY)
}

/// Whether `conditions` say Ready=True.
pub fn is_ready(conditions: &[Condition]) -> bool {
    ready(conditions).is_some_and(|c| c.status == "True")
}

/// Current time as RFC 3339 (seconds), the format of `lastTransitionTime`.
pub fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| k8s_openapi::jiff::Timestamp::now().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_transition_time_is_kept_while_status_is_unchanged() {
        let first = merge(
            &[],
            &Desired::ready(false, reason::PROGRESSING, "a"),
            Some(1),
            "t1",
        );
        assert_eq!(first[0].last_transition_time, "t1");
        let same = merge(
            &first,
            &Desired::ready(false, reason::WAITING_FOR_QUEUE, "b"),
            Some(2),
            "t2",
        );
        assert_eq!(same[0].last_transition_time, "t1");
        assert_eq!(same[0].reason, "WaitingForQueue");
        assert_eq!(same[0].observed_generation, Some(2));
        let flipped = merge(
            &same,
            &Desired::ready(true, reason::RECONCILED, "c"),
            Some(2),
            "t3",
        );
        assert_eq!(flipped[0].last_transition_time, "t3");
        assert!(is_ready(&flipped));
    }

    #[test]
    fn now_is_rfc3339_without_fraction() {
        let text = now();
        assert!(text.ends_with('Z') && !text.contains('.'), "{text}");
    }
}
