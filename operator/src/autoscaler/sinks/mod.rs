//! Sink availability as a Worker's pods report it: each running pod answers `GET /status`
//! on its operations listener with the targets it is waiting for
//! ([`tributary_contract::worker_status::WorkerStatus`]). The reports merge into one
//! [`SinkVerdict`], which sets the Worker's `SinksAvailable` condition (with an Event on each
//! transition) and holds the autoscaler: more replicas cannot drain a backlog that a down
//! sink causes.
//!
//! A pod that does not answer (starting, overloaded, or an image without `/status`) is not a
//! sink outage: it is counted apart, and a reading in which no pod answered changes nothing.
//!
//! The condition is written under its own field manager ([`FIELD_MANAGER`]): the Worker
//! controller applies only `Ready`, the autoscaler only `status.scaling`, so none of the
//! three removes what another wrote.

mod reader;
#[cfg(test)]
mod tests;

pub use crate::scaling::SINKS_AVAILABLE;
pub use reader::{status_url, Reader, STATUS_TIMEOUT};

use super::Error;
use crate::conditions::{self, Desired};
use crate::crd::{Condition, Worker};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use std::collections::BTreeMap;
use tributary_contract::worker_status::WorkerStatus;

/// Field manager of the `SinksAvailable` condition.
pub const FIELD_MANAGER: &str = "tributary-sink-health";

/// Reasons of the `SinksAvailable` condition, and of the Events on its transitions.
pub mod reason {
    /// At least one pod reports a target unavailable (condition `False`; Warning Event).
    pub const SINK_UNAVAILABLE: &str = "SinkUnavailable";
    /// The pods that answered report no outage (condition `True`).
    pub const ALL_SINKS_AVAILABLE: &str = "AllSinksAvailable";
    /// Event reason when an outage ended (Normal).
    pub const SINK_RECOVERED: &str = "SinkRecovered";
}

/// Longest error text a condition message quotes per target.
const MAX_ERROR_CHARS: usize = 300;

/// What one pod answered at `/status`, or why it did not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodReport {
    /// Pod name.
    pub pod: String,
    /// The report, or why there is none (not reachable, timeout, HTTP error, bad JSON).
    pub answer: Result<WorkerStatus, String>,
}

/// One unavailable target, merged over the pods that report it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetOutage {
    /// `sink NAME` or `container`.
    pub target: String,
    /// The earliest start of the outage among the pods (RFC 3339).
    pub since: String,
    /// The error most pods report (ties: the first pod by name).
    pub error: String,
    /// Pods reporting this target unavailable.
    pub pods: usize,
}

/// The merged reports of a Worker's running pods.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SinkVerdict {
    /// Running pods asked.
    pub pods: usize,
    /// Pods that answered with a report.
    pub answered: usize,
    /// Unavailable targets, in the order the pods list them.
    pub outages: Vec<TargetOutage>,
}

impl SinkVerdict {
    /// Pods asked that gave no report.
    pub fn unanswered(&self) -> usize {
        self.pods - self.answered
    }

    /// Whether the sinks are available: `None` when no pod answered (nothing is known).
    pub fn available(&self) -> Option<bool> {
        (self.answered > 0).then_some(self.outages.is_empty())
    }

    /// The outage in a few words for the autoscaler's story (`sink rows unavailable since
    /// …`), or `None` when no pod reports one. Free of counts, so that it stays the same
    /// while the outage lasts.
    pub fn outage_summary(&self) -> Option<String> {
        if self.outages.is_empty() {
            return None;
        }
        Some(
            self.outages
                .iter()
                .map(|o| format!("{} unavailable since {}", o.target, o.since))
                .collect::<Vec<_>>()
                .join(", "),
        )
    }

    /// The condition this verdict asks for, or `None` when no pod answered.
    pub fn desired(&self) -> Option<Desired> {
        let available = self.available()?;
        let unanswered = match self.unanswered() {
            0 => String::new(),
            n => format!("; {n} of {} pods did not answer /status", self.pods),
        };
        Some(if available {
            Desired {
                type_: SINKS_AVAILABLE,
                ok: true,
                reason: reason::ALL_SINKS_AVAILABLE,
                // No counts: the message stays the same while replicas come and go.
                message: "the worker pods report no sink outage".to_owned(),
            }
        } else {
            let targets = self
                .outages
                .iter()
                .map(|o| {
                    format!(
                        "{} unavailable since {}: {} (reported by {} of {} {})",
                        o.target,
                        o.since,
                        truncate(&o.error, MAX_ERROR_CHARS),
                        o.pods,
                        self.answered,
                        plural(self.answered, "pod", "pods")
                    )
                })
                .collect::<Vec<_>>()
                .join("; ");
            Desired {
                type_: SINKS_AVAILABLE,
                ok: false,
                reason: reason::SINK_UNAVAILABLE,
                message: format!(
                    "{targets}{unanswered}. The worker holds its messages unacknowledged and \
                     takes no new deliveries until it recovers; the backlog waits in the queue"
                ),
            }
        })
    }
}

fn plural(n: usize, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 {
        one
    } else {
        many
    }
}

fn truncate(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// `since` as a timestamp, when it parses.
fn parse_since(since: &str) -> Option<Timestamp> {
    since.parse::<Timestamp>().ok()
}

/// Merges the pods' reports: per target the earliest `since`, the error most pods report,
/// and how many pods report it. Pods are taken in name order, so the result does not depend
/// on the order the answers came in.
pub fn merge(reports: &[PodReport]) -> SinkVerdict {
    let mut sorted: Vec<&PodReport> = reports.iter().collect();
    sorted.sort_by(|a, b| a.pod.cmp(&b.pod));
    struct Acc {
        since: String,
        earliest: Option<Timestamp>,
        errors: Vec<(String, usize)>,
        pods: usize,
    }
    let mut order: Vec<String> = Vec::new();
    let mut targets: BTreeMap<String, Acc> = BTreeMap::new();
    let mut answered = 0;
    for report in sorted {
        let Ok(status) = &report.answer else {
            continue;
        };
        answered += 1;
        // A pod listing a target twice counts once.
        let mut seen_here: Vec<&str> = Vec::new();
        for outage in &status.outages {
            if seen_here.contains(&outage.target.as_str()) {
                continue;
            }
            seen_here.push(&outage.target);
            let parsed = parse_since(&outage.since);
            let acc = targets.entry(outage.target.clone()).or_insert_with(|| {
                order.push(outage.target.clone());
                Acc {
                    since: outage.since.clone(),
                    earliest: parsed,
                    errors: Vec::new(),
                    pods: 0,
                }
            });
            acc.pods += 1;
            // The earliest parsable start wins; an unparsable one only when nothing parses.
            if let Some(at) = parsed {
                if acc.earliest.is_none_or(|earliest| at < earliest) {
                    acc.earliest = Some(at);
                    acc.since = outage.since.clone();
                }
            }
            match acc.errors.iter_mut().find(|(e, _)| *e == outage.error) {
                Some((_, count)) => *count += 1,
                None => acc.errors.push((outage.error.clone(), 1)),
            }
        }
    }
    let outages = order
        .into_iter()
        .filter_map(|target| {
            let acc = targets.remove(&target)?;
            let most = acc.errors.iter().map(|(_, n)| *n).max().unwrap_or(0);
            let error = acc
                .errors
                .into_iter()
                .find(|(_, n)| *n == most)
                .map(|(e, _)| e)
                .unwrap_or_default();
            let since = acc
                .earliest
                .and_then(|t| t.round(k8s_openapi::jiff::Unit::Second).ok())
                .map(|t| t.to_string())
                .unwrap_or(acc.since);
            Some(TargetOutage {
                target,
                since,
                error,
                pods: acc.pods,
            })
        })
        .collect();
    SinkVerdict {
        pods: reports.len(),
        answered,
        outages,
    }
}

/// An Event a `SinksAvailable` transition publishes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkEvent {
    /// Warning (an outage started) or Normal (it ended).
    pub warning: bool,
    /// `SinkUnavailable` or `SinkRecovered`.
    pub reason: &'static str,
    /// The text shown by `kubectl describe`.
    pub note: String,
}

/// The `SinksAvailable` condition after a reading, and the Event to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// The condition to store (`lastTransitionTime` kept while its status is unchanged).
    pub condition: Condition,
    /// An Event when the outage started or ended; `None` on every other reading.
    pub event: Option<SinkEvent>,
}

/// From the stored `SinksAvailable` condition and a new verdict to the condition to store
/// and the Event to publish, if any. `None` when the verdict knows nothing (no pod answered):
/// the condition stays as it is.
pub fn transition(
    previous: Option<&Condition>,
    verdict: &SinkVerdict,
    generation: Option<i64>,
    now: &str,
) -> Option<Transition> {
    let desired = verdict.desired()?;
    let existing: Vec<Condition> = previous.cloned().into_iter().collect();
    let condition = conditions::merge(&existing, &desired, generation, now)
        .into_iter()
        .find(|c| c.type_ == SINKS_AVAILABLE)?;
    let was_down = previous.is_some_and(|c| c.status == conditions::status_text(false));
    let event = match (was_down, desired.ok) {
        (false, false) => Some(SinkEvent {
            warning: true,
            reason: reason::SINK_UNAVAILABLE,
            note: desired.message.clone(),
        }),
        (true, true) => Some(SinkEvent {
            warning: false,
            reason: reason::SINK_RECOVERED,
            note: format!(
                "sinks available again after an outage since {}: {}",
                previous
                    .map(|c| c.last_transition_time.as_str())
                    .unwrap_or("?"),
                desired.message
            ),
        }),
        _ => None,
    };
    Some(Transition { condition, event })
}

/// The Worker's `SinksAvailable` condition as stored.
pub fn stored(worker: &Worker) -> Option<&Condition> {
    worker
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == SINKS_AVAILABLE)
}

/// Writes the `SinksAvailable` condition through server-side apply on `/status`, under
/// [`FIELD_MANAGER`] (only that entry of the conditions list).
pub async fn write_condition(
    client: &Client,
    worker: &Worker,
    condition: &Condition,
) -> Result<(), Error> {
    let namespace = worker.namespace().unwrap_or_default();
    let api: Api<Worker> = Api::namespaced(client.clone(), &namespace);
    let patch = serde_json::json!({
        "apiVersion": Worker::api_version(&()),
        "kind": Worker::kind(&()),
        "status": { "conditions": [condition] },
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch_status(&worker.name_any(), &params, &Patch::Apply(&patch))
        .await?;
    Ok(())
}
