//! Talking to gateway pods' registry endpoints over plain HTTP (pod IPs inside the cluster
//! network, the health port): pushing a table (`PUT`) and reading the devices' activity
//! (`GET`), each with the Gateway's bearer token and within a timeout.

use crate::build::gateway::HEALTH_PORT;
use crate::pod_http::PodHttp;
use bytes::Bytes;
use http_body_util::Full;
use k8s_openapi::api::core::v1::Pod;
use std::net::SocketAddr;
use std::time::Duration;
use tributary_contract::device_table::{DeviceReport, STATUS_PATH, TABLE_PATH};

/// How long one pod may take to answer.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest report read from a pod.
const MAX_REPORT: usize = 16 * 1024 * 1024;

/// The health address of a running gateway pod that is not being deleted.
pub fn pod_address(pod: &Pod) -> Option<SocketAddr> {
    crate::pod_http::running_pod_ip(pod).map(|ip| SocketAddr::new(ip, HEALTH_PORT))
}

/// An HTTP client for the registry endpoints.
#[derive(Clone)]
pub struct SyncClient {
    http: PodHttp,
}

impl Default for SyncClient {
    fn default() -> Self {
        SyncClient {
            http: PodHttp::new(SYNC_TIMEOUT),
        }
    }
}

impl SyncClient {
    /// Pushes a compressed table; `Ok(())` when the pod applied it or already has a newer
    /// one (409).
    pub async fn push(&self, addr: SocketAddr, token: &str, table: Bytes) -> Result<(), String> {
        let request = http::Request::put(format!("http://{addr}{TABLE_PATH}"))
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
            .header(http::header::CONTENT_TYPE, "application/gzip")
            .body(Full::new(table))
            .map_err(|e| e.to_string())?;
        let (status, _) = self.http.exchange(request, MAX_REPORT).await?;
        match status.as_u16() {
            200..=299 | 409 => Ok(()),
            other => Err(format!("HTTP {other}")),
        }
    }

    /// Reads a pod's report of its devices.
    pub async fn report(&self, addr: SocketAddr, token: &str) -> Result<DeviceReport, String> {
        let request = http::Request::get(format!("http://{addr}{STATUS_PATH}"))
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let (status, body) = self.http.exchange(request, MAX_REPORT).await?;
        if !status.is_success() {
            return Err(format!("HTTP {status}"));
        }
        serde_json::from_slice(&body).map_err(|e| format!("bad report: {e}"))
    }
}
