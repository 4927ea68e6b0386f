use super::*;
use crate::controller::mock_api::{context, events, mocked, secret, tributary, Exchange};
use crate::controller::{error_policy, sink, RESYNC};
use crate::crd::Sink;
use futures::StreamExt;
use http::Method;
use kube::runtime::{watcher, Controller};
use serde_json::{json, Value};
use std::time::Duration;

/// A Sink whose `spec.postgres` is not an object: the API server may hold it (a schema
/// looser than the operator's types), the operator cannot read it.
fn broken() -> Value {
    json!({
        "apiVersion": "tributary.dev/v1alpha1",
        "kind": "Sink",
        "metadata": {
            "name": "broken", "namespace": "factory", "uid": "u-broken",
            "generation": 3, "resourceVersion": "7",
        },
        "spec": { "postgres": "not an object" },
    })
}

fn good() -> Value {
    let sink: Sink = crate::build::fixtures::load("sink-postgres.yaml");
    let mut value = serde_json::to_value(sink).expect("serializes");
    value["metadata"]["resourceVersion"] = json!("8");
    value
}

fn guard(value: Value) -> Arc<DeserializeGuard<Sink>> {
    Arc::new(serde_json::from_value(value).expect("any object with metadata deserializes"))
}

#[tokio::test]
async fn a_malformed_object_is_reported_on_its_ready_condition_once() {
    let (client, server) = mocked();
    let status = tributary("sinks", "broken/status");
    let scenario = server.run(vec![
        Exchange::get(&tributary("sinks", "broken")).reply(broken()),
        Exchange::post(&events("factory"))
            .with("/reason", json!(reason::INVALID_SPEC))
            .with("/type", json!("Warning")),
        Exchange::apply_by(&status, FIELD_MANAGER)
            .with("/status/conditions/0/status", json!("False"))
            .with("/status/conditions/0/reason", json!(reason::INVALID_SPEC))
            .with("/status/observedGeneration", json!(3))
            .reply(broken()),
    ]);
    let action = guarded(guard(broken()), context(client), sink::reconcile).await;
    assert_eq!(action.expect("reported"), Action::await_change());
    let bodies = scenario.done().await;
    let written = bodies.last().expect("status written")["status"].clone();
    let message = written["conditions"][0]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.starts_with("the operator cannot read this Sink: "),
        "{message}"
    );

    // Reconciled again (its own status write is a change): the condition is as it should
    // be, so nothing is written and no Event repeats.
    let mut reported = broken();
    reported["status"] = written;
    let (client, server) = mocked();
    let scenario = server.run(vec![
        Exchange::get(&tributary("sinks", "broken")).reply(reported)
    ]);
    let action = guarded(guard(broken()), context(client), sink::reconcile).await;
    assert_eq!(action.expect("reported"), Action::await_change());
    scenario.done().await;
}

/// Answers the Sink controller's requests: the list of `items`, a watch with no news, the
/// Secret of the good Sink, the stored broken Sink, Events and status writes.
fn sink_api(items: Vec<Value>) -> impl FnMut(&Method, &str, &Value) -> Option<Value> {
    let list = tributary("sinks", "");
    move |method, uri, _body| {
        let path = uri.split('?').next().unwrap_or_default();
        match (method.as_str(), path) {
            ("GET", p) if p == list.trim_end_matches('/') => {
                if uri.contains("watch=true") {
                    return None;
                }
                Some(json!({
                    "apiVersion": "tributary.dev/v1alpha1",
                    "kind": "SinkList",
                    "metadata": { "resourceVersion": "9" },
                    "items": items.clone(),
                }))
            }
            ("GET", "/api/v1/namespaces/factory/secrets/pg") => {
                Some(secret("pg", "url", "postgres://db"))
            }
            ("GET", p) if p == tributary("sinks", "broken") => Some(broken()),
            ("POST", p) if p == events("factory") => Some(json!({})),
            ("PATCH", p) if p == tributary("sinks", "broken/status") => Some(broken()),
            ("PATCH", p) if p == tributary("sinks", "readings/status") => Some(good()),
            _ => None,
        }
    }
}

#[tokio::test]
async fn a_malformed_sink_does_not_stop_the_others_from_reconciling() {
    let (client, server) = mocked();
    let seen = server.answer_all(sink_api(vec![broken(), good()]));
    let api: Api<DeserializeGuard<Sink>> = Api::namespaced(client.clone(), "factory");
    let reconciled = Controller::new(api, watcher::Config::default())
        .run(
            |sink, ctx| guarded(sink, ctx, sink::reconcile),
            error_policy,
            context(client),
        )
        .take(2)
        .collect::<Vec<_>>();
    let reconciled = tokio::time::timeout(Duration::from_secs(10), reconciled)
        .await
        .unwrap_or_else(|_| panic!("not both reconciled; requests: {seen:?}"));
    let mut actions: Vec<(String, Action)> = reconciled
        .into_iter()
        .map(|result| {
            let (object, action) = result.expect("reconciled");
            (object.name, action)
        })
        .collect();
    actions.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        actions,
        vec![
            ("broken".to_owned(), Action::await_change()),
            ("readings".to_owned(), Action::requeue(RESYNC)),
        ]
    );
    let seen = seen.lock().expect("not poisoned").clone();
    let ready_of = |name: &str| {
        seen.iter()
            .find(|(method, uri, _)| {
                method == Method::PATCH && uri.contains(&format!("/sinks/{name}/status"))
            })
            .map(|(_, _, body)| body["status"]["conditions"][0]["reason"].clone())
    };
    assert_eq!(ready_of("readings"), Some(json!(reason::RECONCILED)));
    assert_eq!(ready_of("broken"), Some(json!(reason::INVALID_SPEC)));
}

#[tokio::test]
async fn without_the_guard_one_malformed_sink_fails_the_whole_list() {
    let (client, server) = mocked();
    let seen = server.answer_all(sink_api(vec![broken(), good()]));
    let api: Api<Sink> = Api::namespaced(client.clone(), "factory");
    let mut reconciled = Box::pin(Controller::new(api, watcher::Config::default()).run(
        sink::reconcile,
        error_policy,
        context(client),
    ));
    let first = tokio::time::timeout(Duration::from_secs(10), reconciled.next())
        .await
        .expect("the controller reports something")
        .expect("the stream goes on");
    assert!(first.is_err(), "the list failed: {first:?}");
    let seen = seen.lock().expect("not poisoned").clone();
    assert!(
        !seen.iter().any(|(method, _, _)| method == Method::PATCH),
        "nothing was reconciled: {seen:?}"
    );
}
