//! A mocked Kubernetes API server for reconciler tests, after kube-rs' `controller-rs`:
//! `tower_test::mock::pair` stands in for the HTTP client, so a `kube::Client` talks to a
//! scenario instead of a cluster. The scenario lists every request the reconciler must make
//! (method, path, what the body says) with the answer to give, in order; the test then
//! asserts what the reconcile returned and awaits the scenario, which fails when a request
//! differs or never came.

use super::pdb::PdbApi;
use super::Context;
use crate::build::Images;
use crate::metrics::Metrics;
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use kube::runtime::events::{Recorder, Reporter};
use kube::Client;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// How long a scenario may wait for the reconciler's next request.
const PATIENCE: Duration = Duration::from_secs(10);

/// The discovery path of the Prometheus Operator's API group. Its answer is cached once per
/// process (`controller::monitoring`), so whether a given test asks depends on which test
/// ran first: the server answers it "not served" wherever it comes.
const MONITORING_DISCOVERY: &str = "/apis/monitoring.coreos.com/v1";

/// One request the reconciler must make, and the answer it gets.
#[derive(Debug)]
pub struct Exchange {
    method: Method,
    path: String,
    /// The request is a forced server-side apply under this field manager.
    server_side_apply: Option<String>,
    /// The request is a JSON merge patch (`application/merge-patch+json`).
    merge_patch: bool,
    /// JSON pointers into the request body and the value each must hold (`None`: absent).
    body: Vec<(String, Option<Value>)>,
    status: StatusCode,
    reply: Value,
}

impl Exchange {
    fn new(method: Method, path: &str) -> Self {
        Exchange {
            method,
            path: path.to_owned(),
            server_side_apply: None,
            merge_patch: false,
            body: Vec::new(),
            status: StatusCode::OK,
            reply: json!({}),
        }
    }

    /// A `GET` of `path`.
    pub fn get(path: &str) -> Self {
        Self::new(Method::GET, path)
    }

    /// A `POST` to `path`.
    pub fn post(path: &str) -> Self {
        Self::new(Method::POST, path)
    }

    /// A `PUT` (replace) of `path`.
    pub fn put(path: &str) -> Self {
        Self::new(Method::PUT, path)
    }

    /// A forced server-side apply (`PATCH`, `application/apply-patch+yaml`) of `path` by the
    /// operator's field manager.
    pub fn apply(path: &str) -> Self {
        Self::apply_by(path, crate::build::FIELD_MANAGER)
    }

    /// A forced server-side apply of `path` by field manager `manager`.
    pub fn apply_by(path: &str, manager: &str) -> Self {
        Exchange {
            server_side_apply: Some(manager.to_owned()),
            ..Self::new(Method::PATCH, path)
        }
    }

    /// A JSON merge patch (`PATCH`, `application/merge-patch+json`) of `path`.
    pub fn merge(path: &str) -> Self {
        Exchange {
            merge_patch: true,
            ..Self::new(Method::PATCH, path)
        }
    }

    /// The request body must hold `value` at the JSON `pointer` (e.g. `/status/selector`).
    pub fn with(mut self, pointer: &str, value: Value) -> Self {
        self.body.push((pointer.to_owned(), Some(value)));
        self
    }

    /// The request body must hold nothing at the JSON `pointer`.
    pub fn without(mut self, pointer: &str) -> Self {
        self.body.push((pointer.to_owned(), None));
        self
    }

    /// Answers `200 OK` with `reply`. A `POST` or `PATCH` is answered with its own body laid
    /// over `reply`, as the API server returns the object written.
    pub fn reply(mut self, reply: Value) -> Self {
        self.reply = reply;
        self
    }

    /// Answers `404 Not Found` with the API server's `Status` object.
    pub fn not_found(self) -> Self {
        self.fails(StatusCode::NOT_FOUND, "NotFound")
    }

    /// Answers `409 Conflict` (another writer came first).
    pub fn conflict(self) -> Self {
        self.fails(StatusCode::CONFLICT, "Conflict")
    }

    fn fails(mut self, status: StatusCode, reason: &str) -> Self {
        self.status = status;
        self.reply = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "reason": reason,
            "message": format!("{} {}: {reason}", self.method, self.path),
            "code": status.as_u16(),
        });
        self
    }

    /// Checks `request` against the expectation; returns its JSON body (`null` if empty).
    async fn check(&self, request: Request<Body>) -> Value {
        let what = format!("{} {}", request.method(), request.uri());
        assert_eq!(
            (request.method(), request.uri().path()),
            (&self.method, self.path.as_str()),
            "unexpected request {what}"
        );
        if let Some(manager) = &self.server_side_apply {
            let content_type = request.headers().get(http::header::CONTENT_TYPE);
            assert_eq!(
                content_type.and_then(|v| v.to_str().ok()),
                Some("application/apply-patch+yaml"),
                "{what} is not a server-side apply"
            );
            let query = request.uri().query().unwrap_or_default();
            assert!(
                query.contains(&format!("fieldManager={manager}")) && query.contains("force=true"),
                "{what} is not forced under field manager {manager}"
            );
        }
        if self.merge_patch {
            let content_type = request.headers().get(http::header::CONTENT_TYPE);
            assert_eq!(
                content_type.and_then(|v| v.to_str().ok()),
                Some("application/merge-patch+json"),
                "{what} is not a merge patch"
            );
        }
        let bytes = request
            .into_body()
            .collect_bytes()
            .await
            .expect("request body");
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{what}: body: {e}"))
        };
        for (pointer, expected) in &self.body {
            assert_eq!(
                body.pointer(pointer),
                expected.as_ref(),
                "{what}: {pointer} in {body}"
            );
        }
        body
    }

    fn response(&self, body: Value) -> Response<Body> {
        let mut reply = self.reply.clone();
        if self.method != Method::GET && self.status.is_success() {
            overlay(&mut reply, body);
        }
        let bytes = serde_json::to_vec(&reply).expect("reply serializes");
        Response::builder()
            .status(self.status)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Body::from(bytes))
            .expect("response")
    }
}

/// Lays `top` over `base`: objects merge key by key, anything else replaces.
fn overlay(base: &mut Value, top: Value) {
    match (base, top) {
        (Value::Object(base), Value::Object(top)) => {
            for (key, value) in top {
                overlay(base.entry(key).or_insert(Value::Null), value);
            }
        }
        (_, Value::Null) => {}
        (base, top) => *base = top,
    }
}

/// The server side of a mocked client.
pub struct ApiServer(Handle);

/// A client whose requests the returned server answers.
pub fn mocked() -> (Client, ApiServer) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), ApiServer(handle))
}

/// A running scenario.
pub struct Scenario(JoinHandle<Vec<Value>>);

impl ApiServer {
    /// Answers the requests of `scenario`, in order, in the background. Once it is played
    /// out the server goes away: a further request fails in the client.
    pub fn run(mut self, scenario: Vec<Exchange>) -> Scenario {
        Scenario(tokio::spawn(async move {
            let mut bodies = Vec::new();
            for expected in scenario {
                let (request, reply) = self.next(&expected).await;
                let body = expected.check(request).await;
                reply.send_response(expected.response(body.clone()));
                bodies.push(body);
            }
            bodies
        }))
    }

    async fn next(
        &mut self,
        expected: &Exchange,
    ) -> (
        Request<Body>,
        tower_test::mock::SendResponse<Response<Body>>,
    ) {
        loop {
            let next = tokio::time::timeout(PATIENCE, self.0.next_request()).await;
            let Ok(Some((request, reply))) = next else {
                panic!(
                    "the reconciler never sent {} {}",
                    expected.method, expected.path
                );
            };
            if request.uri().path() == MONITORING_DISCOVERY {
                reply.send_response(
                    Exchange::get(MONITORING_DISCOVERY)
                        .not_found()
                        .response(Value::Null),
                );
                continue;
            }
            return (request, reply);
        }
    }
}

/// A request as the server saw it: method, path with query, JSON body (`null` if empty).
pub type Seen = (Method, String, Value);

impl ApiServer {
    /// Answers every request with `answer`, in whatever order they come (concurrent
    /// reconciles, watches), in the background: `answer` gets the method, the path with its
    /// query, and the JSON body; `Some(reply)` is sent with `200 OK` (a `POST` or `PATCH`
    /// with its body laid over it), `None` leaves the request pending, like an open watch
    /// with no news. The requests seen are recorded.
    pub fn answer_all<F>(mut self, mut answer: F) -> Arc<std::sync::Mutex<Vec<Seen>>>
    where
        F: FnMut(&Method, &str, &Value) -> Option<Value> + Send + 'static,
    {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            let mut pending = Vec::new();
            while let Some((request, reply)) = self.0.next_request().await {
                if request.uri().path() == MONITORING_DISCOVERY {
                    let not_served = Exchange::get(MONITORING_DISCOVERY).not_found();
                    reply.send_response(not_served.response(Value::Null));
                    continue;
                }
                let method = request.method().clone();
                let uri = request.uri().to_string();
                let bytes = request.into_body().collect_bytes().await;
                let body = bytes
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .unwrap_or(Value::Null);
                let answered = answer(&method, &uri, &body);
                record.lock().expect("not poisoned").push((
                    method.clone(),
                    uri.clone(),
                    body.clone(),
                ));
                match answered {
                    Some(value) => {
                        let exchange = Exchange::new(method, &uri).reply(value);
                        reply.send_response(exchange.response(body));
                    }
                    None => pending.push(reply),
                }
            }
        });
        seen
    }
}

impl Scenario {
    /// Waits until every expected request came and was answered; the request bodies, in
    /// order. Panics with the scenario's failure.
    pub async fn done(self) -> Vec<Value> {
        match tokio::time::timeout(PATIENCE, self.0).await {
            Ok(Ok(bodies)) => bodies,
            Ok(Err(error)) => std::panic::resume_unwind(error.into_panic()),
            Err(_) => panic!("the scenario did not finish"),
        }
    }
}

/// A controller context around a mocked client.
pub fn context(client: Client) -> Arc<Context> {
    context_with(client, crate::build::tenancy::TenantPolicy::default())
}

/// [`context`] with the operator's tenancy settings.
pub fn context_with(client: Client, tenancy: crate::build::tenancy::TenantPolicy) -> Arc<Context> {
    Arc::new(Context {
        reads: Arc::new(crate::reads::Reads::new(client.clone())),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: crate::build::FIELD_MANAGER.to_owned(),
                instance: Some("test".to_owned()),
            },
        ),
        client,
        images: Images::default(),
        metrics: Arc::new(Metrics::new()),
        pdb: PdbApi::for_version("v1"),
        monitoring_labels: BTreeMap::new(),
        broker: Arc::new(crate::broker::Broker::default()),
        sink_policy: crate::build::sink::SinkPolicy::default(),
        tenancy,
        retries: Default::default(),
        registry: Default::default(),
        applied: Default::default(),
        operator_namespace: Some("tributary-system".to_owned()),
    })
}

/// A Secret of namespace `factory` holding `key`.
pub fn secret(name: &str, key: &str, value: &str) -> Value {
    use base64::Engine as _;
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": { "name": name, "namespace": "factory" },
        "data": { key: base64::engine::general_purpose::STANDARD.encode(value) },
    })
}

/// A Ready Queue of namespace `factory` (from `queue-managed.yaml`) named `name`, whose
/// broker queue is `factory.<name>`, reached through Secret `<name>-uri`.
pub fn ready_queue(name: &str) -> Value {
    let mut queue: crate::crd::Queue = crate::build::fixtures::load("queue-managed.yaml");
    queue.metadata.name = Some(name.to_owned());
    let mut value = serde_json::to_value(queue).expect("serializes");
    value["status"] = json!({
        "conditions": [ready("True")],
        "queueName": format!("factory.{name}"),
        "connectionSecretRef": { "name": format!("{name}-uri"), "key": "uri" },
    });
    value
}

/// `object` with a `deletionTimestamp`, as during a (foreground) deletion.
pub fn deleted<K: serde::Serialize + serde::de::DeserializeOwned>(object: &K) -> K {
    let mut value = serde_json::to_value(object).expect("serializes");
    value["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    serde_json::from_value(value).expect("deserializes")
}

/// A `Ready` condition with `status` (`True` or `False`).
pub fn ready(status: &str) -> Value {
    json!({
        "type": "Ready",
        "status": status,
        "reason": "Reconciled",
        "message": "",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    })
}

/// The path of a Tributary resource: `plural` of `tributary.dev/v1alpha1` in `factory`.
pub fn tributary(plural: &str, name: &str) -> String {
    path("tributary.dev/v1alpha1", "factory", plural, name)
}

/// The path of a namespaced object: `group_version` is `v1` or `group/version`.
pub fn path(group_version: &str, namespace: &str, plural: &str, name: &str) -> String {
    let root = if group_version == "v1" {
        "/api/v1".to_owned()
    } else {
        format!("/apis/{group_version}")
    };
    format!("{root}/namespaces/{namespace}/{plural}/{name}")
}

/// The path of the Events of `namespace` (`events.k8s.io/v1`).
pub fn events(namespace: &str) -> String {
    format!("/apis/events.k8s.io/v1/namespaces/{namespace}/events")
}

mod tests {
    use super::*;
    use crate::conditions::reason;
    use crate::controller::resolve_secrets;

    #[tokio::test]
    async fn secrets_are_dereferenced_until_the_first_missing_one() {
        let (client, server) = mocked();
        let scenario = server.run(vec![
            Exchange::get(&path("v1", "factory", "secrets", "pg")).reply(secret(
                "pg",
                "url",
                "postgres://db",
            )),
            Exchange::get(&path("v1", "factory", "secrets", "absent")).not_found(),
        ]);
        let names = ["pg", "absent", "never-asked"].map(String::from);
        let reads = crate::reads::Reads::new(client);
        let resolved = resolve_secrets(&reads, "factory", names)
            .await
            .expect("no API error");
        let waiting = resolved.expect_err("waits for the missing Secret");
        assert_eq!(waiting.ready.reason, reason::WAITING_FOR_SECRET);
        assert!(waiting.ready.message.contains("\"absent\""));
        scenario.done().await;
    }

    #[tokio::test]
    async fn a_request_the_scenario_did_not_expect_fails_it() {
        let (client, server) = mocked();
        let scenario = server.run(vec![Exchange::get(&path("v1", "factory", "secrets", "a"))]);
        let asked = crate::reads::Reads::new(client)
            .secret_data("factory", "b")
            .await;
        assert!(asked.is_err(), "the server answered nothing");
        let failed = tokio::spawn(scenario.done()).await;
        assert!(failed.is_err(), "a mismatched request fails the scenario");
    }
}
