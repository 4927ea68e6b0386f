//! Plain HTTP to the pipeline's pods (pod IPs inside the cluster network): one client
//! with a connect timeout and pooled connections, and an exchange bounded in time and in
//! the size of the answer. Used to read workers' `/status` and to sync gateways' device
//! tables.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use k8s_openapi::api::core::v1::Pod;
use std::net::IpAddr;
use std::time::Duration;

/// The IP of a pod that is running and not being deleted: one worth asking.
pub fn running_pod_ip(pod: &Pod) -> Option<IpAddr> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") {
        return None;
    }
    status.pod_ip.as_deref()?.parse().ok()
}

/// A client for pod endpoints; each request (connection included) gets `timeout`.
#[derive(Clone)]
pub struct PodHttp {
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl PodHttp {
    /// A client giving each request `timeout`.
    pub fn new(timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        PodHttp { client, timeout }
    }

    /// Sends `request`; its status and at most `max_body` bytes of its body, or what went
    /// wrong (no answer within the timeout, a larger body, a connection error).
    pub async fn exchange(
        &self,
        request: http::Request<Full<Bytes>>,
        max_body: usize,
    ) -> Result<(http::StatusCode, Bytes), String> {
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            let body = Limited::new(response.into_body(), max_body)
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok((status, body))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(answer) => answer,
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }
}
