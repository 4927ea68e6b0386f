//! Custom-container mode: each envelope is POSTed to the user's container on localhost.
//! 2xx: done (a non-empty JSON body replaces the message); unreachable, 503 or 429: an
//! outage, waited for; another 5xx, 408, a timeout or a dropped answer: this message failed,
//! retried up to the limit; another 4xx: the container refused the message for good.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use thiserror::Error;
use tributary_contract::worker_config::ContainerConfig;

/// A failed delivery to the container.
#[derive(Debug, Error, PartialEq)]
pub enum ContainerError {
    /// An outage: nothing listens (connection refused), or it says it is overloaded or
    /// unavailable (503, 429). Waited for without limit.
    #[error("container unavailable: {0}")]
    Unavailable(String),
    /// Processing this message failed (another 5xx, 408, a timeout, the connection dropped
    /// mid-request, as when the container crashes on it): retried up to the limit, then
    /// dead-lettered.
    #[error("container failed on the message: {0}")]
    Failed(String),
    /// The container refused the message (4xx) or answered something that is not JSON.
    #[error("container rejected the message: {0}")]
    Rejected(String),
}

/// A client for the user's container.
#[derive(Debug, Clone)]
pub struct ContainerClient {
    http: reqwest::Client,
    url: reqwest::Url,
}

impl ContainerClient {
    /// A client for the configured endpoint.
    pub fn new(config: &ContainerConfig) -> Result<Self, String> {
        let url = reqwest::Url::parse(&config.url).map_err(|e| format!("container url: {e}"))?;
        if url.scheme() != "http" {
            return Err(format!("container url `{}` must be http://", config.url));
        }
        let http = crate::http_client::client(Duration::from_millis(config.timeout_ms))
            .map_err(|e| format!("http client: {e}"))?;
        Ok(Self { http, url })
    }

    /// Sends one envelope (its original JSON body); the replacement message, if any.
    pub async fn process(&self, id: &str, body: &[u8]) -> Result<Option<Value>, ContainerError> {
        let response = self
            .http
            .post(self.url.clone())
            .header("content-type", "application/json")
            .header("x-tributary-id", id)
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() {
                    ContainerError::Unavailable(e.to_string())
                } else {
                    ContainerError::Failed(e.to_string())
                }
            })?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| ContainerError::Failed(e.to_string()))?;
        let snippet = || {
            String::from_utf8_lossy(&bytes)
                .chars()
                .take(300)
                .collect::<String>()
        };
        if status.is_success() {
            if bytes.iter().all(u8::is_ascii_whitespace) {
                return Ok(None);
            }
            return serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                ContainerError::Rejected(format!(
                    "answered {status} with a body that is not JSON: {e}"
                ))
            });
        }
        let text = format!("{status}: {}", snippet());
        Err(match status {
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS => {
                ContainerError::Unavailable(text)
            }
            StatusCode::REQUEST_TIMEOUT => ContainerError::Failed(text),
            _ if status.is_server_error() => ContainerError::Failed(text),
            _ => ContainerError::Rejected(text),
        })
    }
}
