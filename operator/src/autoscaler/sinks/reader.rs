//! Asking a Worker's running pods for their `/status` over plain HTTP (pod IPs inside the
//! cluster network), a few at a time, each within a timeout.

use super::{merge, PodReport, SinkVerdict};
use crate::autoscaler::Error;
use crate::build::worker::{pod_labels, METRICS_PORT};
use crate::crd::Worker;
use crate::pod_http::PodHttp;
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::Full;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use std::net::SocketAddr;
use std::time::Duration;
use tributary_contract::worker_status::WorkerStatus;

/// How long one pod may take to answer `/status`.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// Pods of one Worker asked at the same time.
const PARALLEL: usize = 8;
/// Largest `/status` body read.
const MAX_BODY: usize = 64 * 1024;

/// The `/status` address of a worker pod: running, not being deleted, with an IP; the port
/// is the worker container's `metrics` port (the rendered `http.listen`).
pub fn status_url(pod: &Pod) -> Option<String> {
    let ip = crate::pod_http::running_pod_ip(pod)?;
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
    http: PodHttp,
}

impl Default for Reader {
    fn default() -> Self {
        Self::new(STATUS_TIMEOUT)
    }
}

impl Reader {
    /// A reader giving each pod `timeout` to answer (connection included).
    pub fn new(timeout: Duration) -> Self {
        Reader {
            http: PodHttp::new(timeout),
        }
    }

    /// GETs one `/status` URL.
    pub async fn status(&self, url: &str) -> Result<WorkerStatus, String> {
        let request = http::Request::get(url)
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let (status, body) = self.http.exchange(request, MAX_BODY).await?;
        if !status.is_success() {
            return Err(format!("HTTP {status}"));
        }
        serde_json::from_slice::<WorkerStatus>(&body).map_err(|e| format!("bad report: {e}"))
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

    /// The Worker's running pods (from the operator's cache) and their merged reports.
    pub async fn read_worker(
        &self,
        reads: &crate::reads::Reads,
        worker: &Worker,
    ) -> Result<SinkVerdict, Error> {
        let namespace = worker.namespace().unwrap_or_default();
        let listed = reads.worker_pods(&namespace, &pod_labels(worker)?).await?;
        let targets: Vec<(String, Option<String>)> = listed
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
    use std::collections::BTreeMap;
    use tributary_contract::worker_status::Outage;

    const REFUSED: &str = "connect: connection refused";

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
