//! RabbitMQ's management API over HTTP: where it is ([`Management`], credentials inside)
//! and GETs through the [`Broker`](super::Broker)'s one kept HTTP client.

use super::{timed, BrokerError};
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use std::time::Duration;

/// The HTTP client of management calls (plain HTTP, keep-alive connections pooled).
pub type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// How long an idle keep-alive connection to a management API is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A new management HTTP client: one per [`Broker`](super::Broker), reused by every call.
pub fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(IDLE_TIMEOUT)
        .build_http()
}

/// Where and how to reach a management API.
#[derive(Clone)]
pub struct Management {
    /// `http://host:port`, without credentials.
    pub base_url: String,
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
}

impl std::fmt::Debug for Management {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Management")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl Management {
    /// Parses `http://user:pass@host:port[/]`; `None` when the URI has another shape.
    pub fn from_uri(uri: &str) -> Option<Self> {
        let rest = uri.strip_prefix("http://")?;
        let (userinfo, host) = rest.split_once('@')?;
        let (username, password) = userinfo.split_once(':')?;
        Some(Management {
            base_url: format!("http://{}", host.trim_end_matches('/')),
            username: username.to_owned(),
            password: password.to_owned(),
        })
    }
}

/// Everything but RFC 3986's unreserved characters is encoded in a path segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encodes one path segment of the management API.
fn encode_segment(segment: &str) -> String {
    utf8_percent_encode(segment, SEGMENT).to_string()
}

/// GETs a management API path and parses the JSON answer.
pub async fn get(
    http: &HttpClient,
    management: &Management,
    path: &str,
) -> Result<serde_json::Value, BrokerError> {
    let credentials = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", management.username, management.password));
    let request = http::Request::get(format!("{}{path}", management.base_url))
        .header(http::header::AUTHORIZATION, format!("Basic {credentials}"))
        .body(Empty::new())
        .map_err(|error| BrokerError::Management(error.to_string()))?;
    let response = timed(http.request(request), BrokerError::Management).await?;
    let status = response.status();
    let body = timed(response.into_body().collect(), BrokerError::Management)
        .await?
        .to_bytes();
    if !status.is_success() {
        return Err(BrokerError::Management(format!(
            "GET {path}: HTTP {status}"
        )));
    }
    serde_json::from_slice(&body).map_err(|error| BrokerError::Management(error.to_string()))
}

/// A queue as the management API reports it (arguments, counts, message statistics).
pub async fn queue_info(
    http: &HttpClient,
    management: &Management,
    queue: &str,
) -> Result<serde_json::Value, BrokerError> {
    let path = format!("/api/queues/%2F/{}", encode_segment(queue));
    get(http, management, &path).await
}

/// How many broker nodes the management API reports running (one cluster's view).
pub async fn running_nodes(
    http: &HttpClient,
    management: &Management,
) -> Result<usize, BrokerError> {
    Ok(count_running(&get(http, management, "/api/nodes").await?))
}

/// The nodes marked `running` in a management `/api/nodes` answer.
fn count_running(nodes: &serde_json::Value) -> usize {
    nodes.as_array().map_or(0, |nodes| {
        nodes
            .iter()
            .filter(|node| node["running"].as_bool() == Some(true))
            .count()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn management_uri_is_split_into_url_and_credentials() {
        let management = Management::from_uri("http://u:p@10.0.0.1:15672/").expect("parses");
        assert_eq!(management.base_url, "http://10.0.0.1:15672");
        assert_eq!(
            (management.username.as_str(), management.password.as_str()),
            ("u", "p")
        );
        assert!(!format!("{management:?}").contains(":p"));
        assert!(Management::from_uri("https://u:p@h").is_none());
    }

    #[test]
    fn only_nodes_marked_running_count() {
        let nodes = serde_json::json!([
            {"name": "rabbit@a", "running": true},
            {"name": "rabbit@b", "running": false},
            {"name": "rabbit@c"},
            {"name": "rabbit@d", "running": true}
        ]);
        assert_eq!(count_running(&nodes), 2);
        assert_eq!(count_running(&serde_json::json!({"error": "x"})), 0);
    }

    #[test]
    fn queue_names_are_percent_encoded_in_paths() {
        assert_eq!(encode_segment("factory.telemetry"), "factory.telemetry");
        assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
        assert_eq!(encode_segment("/"), "%2F", "the default vhost");
        assert_eq!(encode_segment("zähler~1"), "z%C3%A4hler~1");
    }
}
