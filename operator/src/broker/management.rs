//! RabbitMQ's management API over HTTP: where it is ([`Management`], credentials inside)
//! and GETs through the [`Broker`](super::Broker)'s one kept HTTP client.

use super::{timed, BrokerError};
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use std::time::Duration;

/// The HTTP client of management calls (plain HTTP, keep-alive connections pooled).
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Largest management answer read: `/api/nodes` of a few nodes or one queue's details are
/// tens of KiB; a management URI a tenant chose cannot make the operator buffer more.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

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
pub(super) fn encode_segment(segment: &str) -> String {
    utf8_percent_encode(segment, SEGMENT).to_string()
}

/// Sends one request to the management API (JSON `body`, if any) and reads the answer
/// (at most [`MAX_RESPONSE_BYTES`]): its status and body.
pub async fn send(
    http: &HttpClient,
    management: &Management,
    method: http::Method,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<(http::StatusCode, Bytes), BrokerError> {
    let credentials = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", management.username, management.password));
    let body = match body {
        Some(json) => Full::new(Bytes::from(json.to_string())),
        None => Full::default(),
    };
    let request = http::Request::builder()
        .method(method.clone())
        .uri(format!("{}{path}", management.base_url))
        .header(http::header::AUTHORIZATION, format!("Basic {credentials}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body)
        .map_err(|error| BrokerError::Management(error.to_string()))?;
    let response = timed(http.request(request), BrokerError::Management).await?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES);
    let body = timed(body.collect(), |error| {
        BrokerError::Management(format!("{method} {path}: {error}"))
    })
    .await?
    .to_bytes();
    Ok((status, body))
}

/// GETs a management API path and parses the JSON answer.
pub async fn get(
    http: &HttpClient,
    management: &Management,
    path: &str,
) -> Result<serde_json::Value, BrokerError> {
    let (status, body) = send(http, management, http::Method::GET, path, None).await?;
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

    /// A management API on loopback answering every request with `body_len` bytes of JSON.
    async fn management_answering(body_len: usize) -> Management {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut head = [0u8; 4096];
                    let _ = socket.read(&mut head).await;
                    let body = format!("[{}]", "0,".repeat(body_len / 2).trim_end_matches(','));
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                        body.len()
                    );
                    let _ = socket.write_all(answer.as_bytes()).await;
                    let _ = socket.write_all(body.as_bytes()).await;
                });
            }
        });
        Management {
            base_url: format!("http://{address}"),
            username: "u".into(),
            password: "p".into(),
        }
    }

    #[tokio::test]
    async fn a_management_answer_past_the_limit_is_refused_and_a_normal_one_read() {
        let http = http_client();
        let small = management_answering(1000).await;
        let nodes = get(&http, &small, "/api/nodes")
            .await
            .expect("a small answer is read");
        assert_eq!(nodes.as_array().map(Vec::len), Some(500));
        let huge = management_answering(MAX_RESPONSE_BYTES + 2).await;
        let error = get(&http, &huge, "/api/nodes").await.expect_err("refused");
        assert!(error.to_string().contains("length limit"), "{error}");
    }

    #[test]
    fn queue_names_are_percent_encoded_in_paths() {
        assert_eq!(encode_segment("factory.telemetry"), "factory.telemetry");
        assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
        assert_eq!(encode_segment("/"), "%2F", "the default vhost");
        assert_eq!(encode_segment("zähler~1"), "z%C3%A4hler~1");
    }
}
