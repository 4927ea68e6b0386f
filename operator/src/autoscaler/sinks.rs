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

use crate::build::worker::{selector_string, METRICS_PORT};
use crate::controller::conditions::{self, Desired};
use crate::controller::Error;
use crate::crd::{Condition, Worker};
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tributary_contract::worker_status::WorkerStatus;

/// Field manager of the `SinksAvailable` condition.
pub const FIELD_MANAGER: &str = "tributary-sink-health";

/// Condition type: whether every sink (and the custom container) of the Worker is available
/// as its pods see it.
pub const SINKS_AVAILABLE: &str = "SinksAvailable";

/// Reasons of the `SinksAvailable` condition, and of the Events on its transitions.
pub mod reason {
    /// At least one pod reports a target unavailable (condition `False`; Warning Event).
    pub const SINK_UNAVAILABLE: &str = "SinkUnavailable";
    /// The pods that answered report no outage (condition `True`).
    pub const ALL_SINKS_AVAILABLE: &str = "AllSinksAvailable";
    /// Event reason when an outage ended (Normal).
    pub const SINK_RECOVERED: &str = "SinkRecovered";
}

/// How long one pod may take to answer `/status`.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// Pods of one Worker asked at the same time.
const PARALLEL: usize = 8;
/// Largest `/status` body read.
const MAX_BODY: usize = 64 * 1024;
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

/// The `/status` address of a worker pod: running, not being deleted, with an IP; the port
/// is the worker container's `metrics` port (the rendered `http.listen`).
pub fn status_url(pod: &Pod) -> Option<String> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") {
        return None;
    }
    let ip: IpAddr = status.pod_ip.as_deref()?.parse().ok()?;
    let port = pod
        .spec
        .as_ref()
        .and_then(|spec| spec.containers.iter().find(|c| c.name == "worker"))
        .and_then(|c| c.ports.as_ref())
        .and_then(|ports| ports.iter().find(|p| p.name.as_deref() == Some("metrics")))
        .map(|p| p.container_port)
        .unwrap_or(METRICS_PORT);
    let port = u16::try_from(port).ok()?;
    Some(format!("http://{}/status", SocketAddr::new(ip, port)))
}

/// Reads worker pods' `/status` over plain HTTP (pod IPs inside the cluster network).
#[derive(Clone)]
pub struct Reader {
    client: HttpClient<HttpConnector, Empty<Bytes>>,
    timeout: Duration,
}

impl Default for Reader {
    fn default() -> Self {
        Self::new(STATUS_TIMEOUT)
    }
}

impl Reader {
    /// A reader giving each pod `timeout` to answer (connection included).
    pub fn new(timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        let client = HttpClient::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Reader { client, timeout }
    }

    /// GETs one `/status` URL.
    pub async fn status(&self, url: &str) -> Result<WorkerStatus, String> {
        let request = http::Request::get(url)
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            if !status.is_success() {
                return Err(format!("HTTP {status}"));
            }
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            serde_json::from_slice::<WorkerStatus>(&body).map_err(|e| format!("bad report: {e}"))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(answer) => answer,
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }

    /// Asks every `(pod, url)` at once, at most a few at a time; a pod without a URL is
    /// counted as not answering.
    pub async fn read(&self, targets: Vec<(String, Option<String>)>) -> Vec<PodReport> {
        futures::stream::iter(targets)
            .map(|(pod, url)| async move {
                let answer = match url {
                    Some(url) => self.status(&url).await,
                    None => Err("no address".to_owned()),
                };
                PodReport { pod, answer }
            })
            .buffer_unordered(PARALLEL)
            .collect()
            .await
    }

    /// Lists the Worker's running pods (from the API server's cache) and merges their
    /// reports.
    pub async fn read_worker(
        &self,
        client: &Client,
        worker: &Worker,
    ) -> Result<SinkVerdict, Error> {
        let namespace = worker.namespace().unwrap_or_default();
        let selector = selector_string(worker)?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
        let listed = pods
            .list(&ListParams::default().labels(&selector).match_any())
            .await?;
        let targets: Vec<(String, Option<String>)> = listed
            .items
            .iter()
            .filter(|pod| {
                pod.metadata.deletion_timestamp.is_none()
                    && pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
            })
            .map(|pod| (pod.name_any(), status_url(pod)))
            .collect();
        let reports = self.read(targets).await;
        for report in &reports {
            if let Err(error) = &report.answer {
                tracing::debug!(pod = %report.pod, %namespace, %error, "worker pod gave no /status");
            }
        }
        Ok(merge(&reports))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_contract::worker_status::Outage;

    fn report(pod: &str, outages: &[(&str, &str, &str)]) -> PodReport {
        PodReport {
            pod: pod.to_owned(),
            answer: Ok(WorkerStatus {
                outages: outages
                    .iter()
                    .map(|(target, since, error)| Outage {
                        target: (*target).to_owned(),
                        since: (*since).to_owned(),
                        error: (*error).to_owned(),
                    })
                    .collect(),
            }),
        }
    }

    fn silent(pod: &str) -> PodReport {
        PodReport {
            pod: pod.to_owned(),
            answer: Err("connection refused".to_owned()),
        }
    }

    const REFUSED: &str = "connect: connection refused";

    #[test]
    fn merge_takes_the_earliest_start_the_common_error_and_counts_pods() {
        let verdict = merge(&[
            report(
                "w-c",
                &[("sink rows", "2026-11-30T04:00:05.250Z", "timed out")],
            ),
            report("w-a", &[("sink rows", "2026-11-30T04:00:07Z", REFUSED)]),
            report(
                "w-b",
                &[
                    ("sink rows", "2026-11-30T04:00:09Z", REFUSED),
                    ("sink cache", "2026-11-30T04:01:00Z", "READONLY"),
                ],
            ),
            silent("w-d"),
        ]);
        assert_eq!(
            (verdict.pods, verdict.answered, verdict.unanswered()),
            (4, 3, 1)
        );
        assert_eq!(verdict.available(), Some(false));
        assert_eq!(
            verdict.outages,
            vec![
                TargetOutage {
                    target: "sink rows".into(),
                    since: "2026-11-30T04:00:05Z".into(),
                    error: REFUSED.into(),
                    pods: 3,
                },
                TargetOutage {
                    target: "sink cache".into(),
                    since: "2026-11-30T04:01:00Z".into(),
                    error: "READONLY".into(),
                    pods: 1,
                },
            ]
        );
        assert_eq!(
            verdict.outage_summary().as_deref(),
            Some(
                "sink rows unavailable since 2026-11-30T04:00:05Z, \
                 sink cache unavailable since 2026-11-30T04:01:00Z"
            )
        );
        let message = verdict.desired().expect("known").message;
        assert!(
            message.starts_with(
                "sink rows unavailable since 2026-11-30T04:00:05Z: connect: connection refused \
                 (reported by 3 of 3 pods); sink cache unavailable since"
            ),
            "{message}"
        );
        assert!(
            message.contains("1 of 4 pods did not answer /status"),
            "{message}"
        );
    }

    #[test]
    fn pods_that_do_not_answer_are_no_outage() {
        let nobody = merge(&[silent("w-a"), silent("w-b")]);
        assert_eq!((nobody.pods, nobody.answered), (2, 0));
        assert_eq!(nobody.available(), None);
        assert_eq!(nobody.desired(), None);
        assert_eq!(merge(&[]).available(), None);

        let healthy = merge(&[report("w-a", &[]), silent("w-b")]);
        assert_eq!(healthy.available(), Some(true));
        assert_eq!(healthy.outage_summary(), None);
        let desired = healthy.desired().expect("known");
        assert_eq!(desired.reason, reason::ALL_SINKS_AVAILABLE);
        assert_eq!(desired.message, "the worker pods report no sink outage");
        // More pods, same condition: nothing to write while replicas change.
        let more = merge(&[report("w-a", &[]), report("w-b", &[]), report("w-c", &[])]);
        assert_eq!(more.desired(), Some(desired));
    }

    #[test]
    fn an_unparsable_start_is_kept_only_when_nothing_parses() {
        let verdict = merge(&[
            report("w-a", &[("container", "yesterday", "HTTP 503")]),
            report("w-b", &[("container", "2026-11-30T04:00:00Z", "HTTP 503")]),
        ]);
        assert_eq!(verdict.outages[0].since, "2026-11-30T04:00:00Z");
        let verdict = merge(&[report("w-a", &[("container", "yesterday", "HTTP 503")])]);
        assert_eq!(verdict.outages[0].since, "yesterday");
    }

    fn condition(status: &str, since: &str) -> Condition {
        Condition {
            type_: SINKS_AVAILABLE.into(),
            status: status.into(),
            reason: if status == "True" {
                reason::ALL_SINKS_AVAILABLE.into()
            } else {
                reason::SINK_UNAVAILABLE.into()
            },
            message: "m".into(),
            observed_generation: Some(1),
            last_transition_time: since.into(),
        }
    }

    #[test]
    fn outage_start_raises_a_warning_once_and_recovery_a_normal_event() {
        let down = merge(&[report(
            "w-a",
            &[("sink rows", "2026-11-30T04:00:00Z", REFUSED)],
        )]);
        let up = merge(&[report("w-a", &[])]);

        // First reading ever, healthy: the condition appears, no Event.
        let first = transition(None, &up, Some(1), "t0").expect("known");
        assert_eq!(
            (
                first.condition.status.as_str(),
                first.condition.reason.as_str()
            ),
            ("True", reason::ALL_SINKS_AVAILABLE)
        );
        assert_eq!(first.event, None);

        // Outage starts: False, a Warning naming target, error and start.
        let started = transition(Some(&first.condition), &down, Some(1), "t1").expect("known");
        assert_eq!(started.condition.status, "False");
        assert_eq!(started.condition.reason, reason::SINK_UNAVAILABLE);
        assert_eq!(started.condition.last_transition_time, "t1");
        let event = started.event.clone().expect("warning");
        assert!(event.warning);
        assert_eq!(event.reason, reason::SINK_UNAVAILABLE);
        assert!(
            event
                .note
                .contains("sink rows unavailable since 2026-11-30T04:00:00Z")
                && event.note.contains(REFUSED),
            "{}",
            event.note
        );

        // It lasts: no further Event, transition time kept, generation follows the spec.
        let lasting = transition(Some(&started.condition), &down, Some(2), "t2").expect("known");
        assert_eq!(lasting.event, None);
        assert_eq!(lasting.condition.last_transition_time, "t1");
        assert_eq!(lasting.condition.observed_generation, Some(2));

        // Nobody answers (pods restarting): nothing changes.
        let nobody = merge(&[silent("w-a")]);
        assert_eq!(
            transition(Some(&lasting.condition), &nobody, Some(2), "t3"),
            None
        );

        // Recovery: True, one Normal Event saying since when it was down.
        let recovered = transition(Some(&lasting.condition), &up, Some(2), "t4").expect("known");
        assert_eq!(recovered.condition.status, "True");
        assert_eq!(recovered.condition.last_transition_time, "t4");
        let event = recovered.event.expect("normal");
        assert!(!event.warning);
        assert_eq!(event.reason, reason::SINK_RECOVERED);
        assert!(event.note.contains("outage since t1"), "{}", event.note);
        let again = transition(Some(&recovered.condition), &up, Some(2), "t5").expect("known");
        assert_eq!(again.event, None);
        assert_eq!(again.condition, recovered.condition);
    }

    #[test]
    fn an_outage_seen_first_is_a_warning_too() {
        let down = merge(&[report(
            "w-a",
            &[("container", "2026-11-30T04:00:00Z", "HTTP 503")],
        )]);
        let t = transition(None, &down, None, "t0").expect("known");
        assert_eq!(t.event.map(|e| e.reason), Some(reason::SINK_UNAVAILABLE));
        let t = transition(Some(&condition("True", "t0")), &down, None, "t1").expect("known");
        assert!(t.event.is_some_and(|e| e.warning));
        let t = transition(Some(&condition("False", "t0")), &down, None, "t1").expect("known");
        assert_eq!(t.event, None);
    }

    fn pod(phase: &str, ip: Option<&str>, port: Option<i32>) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": "w-1" },
            "spec": { "containers": [
                { "name": "processor", "ports": [{ "name": "processor", "containerPort": 8080 }] },
                { "name": "worker", "ports": port.map(|p| vec![serde_json::json!({ "name": "metrics", "containerPort": p })]) },
            ]},
            "status": { "phase": phase, "podIP": ip },
        }))
        .expect("pod")
    }

    #[test]
    fn status_url_uses_the_pod_ip_and_the_metrics_port() {
        assert_eq!(
            status_url(&pod("Running", Some("10.1.2.3"), Some(9191))).as_deref(),
            Some("http://10.1.2.3:9191/status")
        );
        assert_eq!(
            status_url(&pod("Running", Some("fd00::7"), None)).as_deref(),
            Some("http://[fd00::7]:9090/status")
        );
        assert_eq!(status_url(&pod("Pending", Some("10.1.2.3"), None)), None);
        assert_eq!(status_url(&pod("Running", None, None)), None);
    }

    #[tokio::test]
    async fn reader_asks_pods_over_http_and_counts_the_silent_ones() {
        use axum::routing::get;
        let app = axum::Router::new()
            .route(
                "/down/status",
                get(|| async {
                    axum::Json(WorkerStatus {
                        outages: vec![Outage {
                            target: "sink rows".into(),
                            since: "2026-11-30T04:00:00Z".into(),
                            error: REFUSED.into(),
                        }],
                    })
                }),
            )
            .route(
                "/up/status",
                get(|| async { axum::Json(WorkerStatus::default()) }),
            )
            .route(
                "/slow/status",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    "late"
                }),
            )
            .route("/garbled/status", get(|| async { "not json" }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let address = listener.local_addr().expect("address");
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        // A port nothing listens on: bind one and drop it.
        let closed = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
            probe.local_addr().expect("address")
        };
        let url = |path: &str| Some(format!("http://{address}/{path}/status"));
        let reader = Reader::new(Duration::from_millis(500));
        let started = std::time::Instant::now();
        let reports = reader
            .read(vec![
                ("w-1".into(), url("down")),
                ("w-2".into(), url("up")),
                ("w-3".into(), url("slow")),
                ("w-4".into(), url("garbled")),
                ("w-5".into(), url("missing")),
                ("w-6".into(), Some(format!("http://{closed}/status"))),
                ("w-7".into(), None),
            ])
            .await;
        // In parallel: the slow pod costs one timeout, not a sum of them.
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        let by_pod: BTreeMap<&str, &Result<WorkerStatus, String>> = reports
            .iter()
            .map(|r| (r.pod.as_str(), &r.answer))
            .collect();
        assert!(by_pod["w-3"]
            .as_ref()
            .is_err_and(|e| e.contains("no answer within")));
        assert!(by_pod["w-4"]
            .as_ref()
            .is_err_and(|e| e.starts_with("bad report")));
        assert!(by_pod["w-5"].as_ref().is_err_and(|e| e.contains("404")));
        assert!(by_pod["w-6"].is_err() && by_pod["w-7"].is_err());
        let verdict = merge(&reports);
        assert_eq!((verdict.pods, verdict.answered), (7, 2));
        assert_eq!(verdict.outages.len(), 1);
        assert_eq!(verdict.outages[0].pods, 1);
        assert_eq!(verdict.outages[0].target, "sink rows");
        server.abort();
    }
}
