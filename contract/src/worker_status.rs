//! What a worker reports at `GET /status`: the targets it is waiting for. The operator reads
//! it from each Worker pod to set the Worker's `SinksAvailable` condition and to hold the
//! autoscaler, since more replicas cannot drain a backlog that a down sink causes.

use serde::{Deserialize, Serialize};

/// A worker's report. No outage listed means every target answered its last write.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerStatus {
    /// Targets that are unavailable now, in config order (sinks by name, then the custom
    /// container as `container`).
    #[serde(default)]
    pub outages: Vec<Outage>,
}

/// One unavailable target. While it lasts the worker holds its messages unacknowledged and
/// takes no new deliveries beyond its prefetch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Outage {
    /// `sink NAME` or `container`.
    pub target: String,
    /// When the first failure of this outage happened (RFC 3339).
    pub since: String,
    /// The last error, as the target reported it (never carries credentials).
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_in_camel_case() {
        let status = WorkerStatus {
            outages: vec![Outage {
                target: "sink rows".into(),
                since: "2026-11-30T04:00:00.000Z".into(),
                error: "connect: connection refused".into(),
            }],
        };
        let text = serde_json::to_string(&status).expect("json");
        assert!(text.contains(r#""outages":[{"target":"sink rows","since":"#));
        assert_eq!(
            serde_json::from_str::<WorkerStatus>(&text).expect("parse"),
            status
        );
        assert_eq!(
            serde_json::from_str::<WorkerStatus>("{}").expect("empty"),
            WorkerStatus::default()
        );
    }
}
