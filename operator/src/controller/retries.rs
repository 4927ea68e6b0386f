//! Pacing of reconciles that found their broker unreachable. Such a reconcile ends with a
//! `BrokerUnavailable` condition, not an error, so `error_policy` never sees it: here each
//! one is counted in `tributary_operator_reconcile_errors_total{error="broker_unavailable"}`
//! and retried after a delay that doubles with every consecutive failure of that object
//! (15 s, 30 s, 60 s, then every 2 minutes), so that many Queues on a dead broker do not load the
//! API server and the broker's network every 15 s. Watches still wake an object at once
//! when something it depends on changes.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

use super::{Outcome, RETRY};
use crate::conditions::reason::BROKER_UNAVAILABLE;
use crate::metrics::Metrics;

/// The longest wait between two attempts on an unreachable broker.
pub const MAX_BROKER_RETRY: Duration = Duration::from_secs(120);
/// Objects remembered at most; past it the record starts afresh (delays restart at 15 s).
const MAX_TRACKED: usize = 100_000;

/// Consecutive broker failures per object (kind, namespace, name); an entry exists only
/// while its object keeps failing.
#[derive(Debug, Default)]
pub struct BrokerRetries(Mutex<HashMap<(String, String, String), u32>>);

/// The wait before attempt `failures + 1`: [`RETRY`] doubled per earlier failure, capped.
pub fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    RETRY
        .saturating_mul(1u32 << doublings)
        .min(MAX_BROKER_RETRY)
}

impl BrokerRetries {
    /// When to reconcile `object` again after `outcome`: backed off while its broker stays
    /// unreachable (each such outcome counted as an error), as the outcome says otherwise.
    pub fn pace<K: Resource<DynamicType = ()>>(
        &self,
        metrics: &Metrics,
        object: &K,
        outcome: &Outcome,
    ) -> Action {
        let kind = K::kind(&()).to_string();
        let key = (
            kind.clone(),
            object.namespace().unwrap_or_default(),
            object.name_any(),
        );
        let mut failing = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if outcome.ready.reason != BROKER_UNAVAILABLE {
            failing.remove(&key);
            return outcome.action.clone();
        }
        metrics.error(&kind, "broker_unavailable");
        if failing.len() >= MAX_TRACKED && !failing.contains_key(&key) {
            failing.clear();
        }
        let failures = failing.entry(key).or_insert(0);
        *failures = failures.saturating_add(1);
        Action::requeue(backoff(*failures))
    }

    /// Objects currently backing off.
    pub fn tracked(&self) -> usize {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures::load;
    use crate::conditions::reason::PROGRESSING;
    use crate::crd::Queue;

    #[test]
    fn the_delay_doubles_from_fifteen_seconds_up_to_two_minutes() {
        let delays: Vec<u64> = (1..=7).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(delays, vec![15, 30, 60, 120, 120, 120, 120]);
        assert_eq!(backoff(u32::MAX), MAX_BROKER_RETRY);
    }

    #[test]
    fn an_unreachable_broker_backs_off_is_counted_and_recovery_resets() {
        let metrics = Metrics::new();
        let retries = BrokerRetries::default();
        let queue: Queue = load("queue-managed.yaml");
        let unavailable = Outcome::waiting(BROKER_UNAVAILABLE, "down", RETRY);
        let first = retries.pace(&metrics, &queue, &unavailable);
        let second = retries.pace(&metrics, &queue, &unavailable);
        let third = retries.pace(&metrics, &queue, &unavailable);
        assert_eq!(first, Action::requeue(Duration::from_secs(15)));
        assert_eq!(second, Action::requeue(Duration::from_secs(30)));
        assert_eq!(third, Action::requeue(Duration::from_secs(60)));
        assert!(metrics
            .render()
            .contains("tributary_operator_reconcile_errors_total{kind=\"Queue\",error=\"broker_unavailable\"} 3"));
        // Another reason (the broker answers, pods still starting) ends the backoff.
        let progressing = Outcome::waiting(PROGRESSING, "starting", Duration::from_secs(5));
        let after = retries.pace(&metrics, &queue, &progressing);
        assert_eq!(after, Action::requeue(Duration::from_secs(5)));
        assert_eq!(retries.tracked(), 0);
        assert_eq!(
            retries.pace(&metrics, &queue, &unavailable),
            Action::requeue(Duration::from_secs(15))
        );
    }
}
