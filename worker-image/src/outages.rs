//! The targets a worker is waiting for (sinks, the custom container, the dead-letter queue):
//! when each outage began and its last error. Served at `/status` for the operator (the
//! Worker's `SinksAvailable` condition, an autoscaler that does not scale for a backlog a
//! down sink causes) and as the `tributary_worker_target_unavailable` gauge.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, SecondsFormat, Utc};
use tributary_contract::worker_status::{Outage, WorkerStatus};

use crate::metrics::Metrics;

/// Errors kept per target are cut to this many characters (a report stays small).
const MAX_ERROR_CHARS: usize = 300;

#[derive(Debug, Clone)]
struct Ongoing {
    since: DateTime<Utc>,
    error: String,
}

/// Ongoing outages by target (`sink NAME`, `container`, `dead-letter queue`).
#[derive(Debug)]
pub struct Outages {
    ongoing: Mutex<BTreeMap<String, Ongoing>>,
    metrics: Arc<Metrics>,
}

impl Outages {
    /// No outage yet.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            ongoing: Mutex::default(),
            metrics,
        }
    }

    /// Records a failure of `target`; true when it starts an outage (the first failure
    /// since the target last worked).
    pub fn failed(&self, target: &str, error: &str) -> bool {
        let error: String = error.chars().take(MAX_ERROR_CHARS).collect();
        let mut ongoing = self.ongoing.lock().unwrap_or_else(|p| p.into_inner());
        let started = match ongoing.get_mut(target) {
            Some(outage) => {
                outage.error = error;
                false
            }
            None => {
                ongoing.insert(
                    target.to_string(),
                    Ongoing {
                        since: Utc::now(),
                        error,
                    },
                );
                true
            }
        };
        if started {
            self.metrics.target_unavailable(target, true);
            tracing::warn!(
                target,
                "outage: holding its messages unacknowledged until it is back"
            );
        }
        started
    }

    /// Records that `target` worked; true when that ends an outage.
    pub fn recovered(&self, target: &str) -> bool {
        let ended = self
            .ongoing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(target);
        if let Some(outage) = &ended {
            self.metrics.target_unavailable(target, false);
            let seconds = (Utc::now() - outage.since).num_milliseconds() as f64 / 1000.0;
            tracing::info!(target, seconds, "outage over");
        }
        ended.is_some()
    }

    /// The report served at `/status`.
    pub fn report(&self) -> WorkerStatus {
        let ongoing = self.ongoing.lock().unwrap_or_else(|p| p.into_inner());
        WorkerStatus {
            outages: ongoing
                .iter()
                .map(|(target, outage)| Outage {
                    target: target.clone(),
                    since: outage.since.to_rfc3339_opts(SecondsFormat::Millis, true),
                    error: outage.error.clone(),
                })
                .collect(),
        }
    }
}

/// The outage target of a sink.
pub fn sink_target(name: &str) -> String {
    format!("sink {name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_starts_once_keeps_its_start_and_ends_on_success() {
        let metrics = Arc::new(Metrics::new());
        let outages = Outages::new(metrics.clone());
        assert!(outages.failed("sink rows", "connect: refused"));
        let since = outages.report().outages[0].since.clone();
        assert!(!outages.failed("sink rows", "connect: reset"));
        let report = outages.report();
        assert_eq!(report.outages.len(), 1);
        assert_eq!(report.outages[0].since, since);
        assert_eq!(report.outages[0].error, "connect: reset");
        assert!(metrics
            .render()
            .contains("tributary_worker_target_unavailable{target=\"sink rows\"} 1"));
        assert!(outages.recovered("sink rows"));
        assert!(!outages.recovered("sink rows"));
        assert_eq!(outages.report(), WorkerStatus::default());
        assert!(metrics
            .render()
            .contains("tributary_worker_target_unavailable{target=\"sink rows\"} 0"));
    }

    #[test]
    fn long_errors_are_cut() {
        let outages = Outages::new(Arc::new(Metrics::new()));
        outages.failed("container", &"x".repeat(10_000));
        assert_eq!(outages.report().outages[0].error.len(), MAX_ERROR_CHARS);
    }
}
