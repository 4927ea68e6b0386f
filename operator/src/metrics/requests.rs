//! Counting the operator's requests to the Kubernetes API by verb and resource: a tower
//! layer on its client, so that a steady state making no writes (and few reads) can be
//! checked from `/metrics`, and what it does ask for can be seen.

use http::{Method, Request};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// The counter family, by `verb` and `resource`.
pub type RequestCounts = Family<Vec<(String, String)>, Counter>;

/// The verb of a request as the API server names it, as far as the request shows it:
/// `watch` (a GET with `watch=true`), `get` (other GETs, lists included), `create`,
/// `update`, `patch`, `delete`, or `other`.
pub fn verb<B>(request: &Request<B>) -> &'static str {
    match *request.method() {
        Method::GET => {
            let watching = request
                .uri()
                .query()
                .is_some_and(|q| q.split('&').any(|pair| pair == "watch=true"));
            if watching {
                "watch"
            } else {
                "get"
            }
        }
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "other",
    }
}

/// The resource a request path names, with its subresource (`secrets`, `queues/status`,
/// `namespaces`), or `discovery` for the API's own listings. The operator builds every
/// path, so the values are the few kinds it reads and writes.
pub fn resource(path: &str) -> String {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    // /api/v1/... or /apis/group/version/...
    let rest = match segments.as_slice() {
        ["api", _version, rest @ ..] => rest,
        ["apis", _group, _version, rest @ ..] => rest,
        _ => return "discovery".to_owned(),
    };
    let rest = match rest {
        ["namespaces", _namespace, rest @ ..] if !rest.is_empty() => rest,
        rest => rest,
    };
    match rest {
        [] => "discovery".to_owned(),
        [plural] | [plural, _] => (*plural).to_owned(),
        [plural, _, subresource, ..] => format!("{plural}/{subresource}"),
    }
}

/// Counts every request passing through.
#[derive(Clone)]
pub struct CountRequests(pub RequestCounts);

impl<S> Layer<S> for CountRequests {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Counted<S> {
        Counted {
            inner,
            counts: self.0.clone(),
        }
    }
}

/// A service that counts its requests by verb and resource.
#[derive(Clone)]
pub struct Counted<S> {
    inner: S,
    counts: RequestCounts,
}

impl<S, B> Service<Request<B>> for Counted<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let labels = vec![
            ("verb".to_owned(), verb(&request).to_owned()),
            ("resource".to_owned(), resource(request.uri().path())),
        ];
        self.counts.get_or_create(&labels).inc();
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, uri: &str) -> Request<()> {
        Request::builder()
            .method(method)
            .uri(uri)
            .body(())
            .expect("request")
    }

    #[test]
    fn verbs_are_named_as_the_api_server_names_them() {
        assert_eq!(
            verb(&request(
                Method::GET,
                "/api/v1/pods?watch=true&timeoutSeconds=290"
            )),
            "watch"
        );
        assert_eq!(
            verb(&request(Method::GET, "/api/v1/pods?labelSelector=a")),
            "get"
        );
        assert_eq!(
            verb(&request(Method::PATCH, "/api/v1/namespaces/a/secrets/b")),
            "patch"
        );
        assert_eq!(
            verb(&request(Method::POST, "/api/v1/namespaces/a/secrets")),
            "create"
        );
        assert_eq!(verb(&request(Method::DELETE, "/x")), "delete");
    }

    #[test]
    fn resources_are_named_by_their_plural_and_subresource() {
        let cases = [
            ("/api/v1/pods", "pods"),
            ("/api/v1/namespaces/a/secrets/b", "secrets"),
            ("/api/v1/namespaces/a/secrets", "secrets"),
            ("/api/v1/namespaces/a", "namespaces"),
            ("/api/v1/namespaces", "namespaces"),
            (
                "/apis/tributary.dev/v1alpha1/namespaces/a/queues/q/status",
                "queues/status",
            ),
            (
                "/apis/apps/v1/namespaces/a/deployments/d/scale",
                "deployments/scale",
            ),
            (
                "/apis/coordination.k8s.io/v1/namespaces/a/leases/l",
                "leases",
            ),
            ("/apis/apps/v1", "discovery"),
            ("/version", "discovery"),
        ];
        for (path, resource_name) in cases {
            assert_eq!(resource(path), resource_name, "{path}");
        }
    }
}
