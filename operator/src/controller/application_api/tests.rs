//! ApplicationApi reconciles against the mocked API server.

use super::*;
use crate::build::fixtures::load;
use crate::conditions::reason;
use crate::controller::mock_api::{
    context, deleted, events, mocked, path, ready, secret, tributary, Exchange,
};
use crate::controller::RESYNC;
use crate::crd::application_api::KeyScopeSpec;
use crate::crd::Sink;
use base64::Engine;
use serde_json::{json, Value};

/// The fixture without latest values, live feed or commands: PostgreSQL history only, one
/// read-only key.
fn api() -> ApplicationApi {
    let mut api: ApplicationApi = load("application-api.yaml");
    api.spec.latest = None;
    api.spec.live = None;
    api.spec.commands = None;
    api.spec.api_keys.retain(|k| !k.commands);
    api
}

fn ready_sink(file: &str) -> Value {
    let sink: Sink = load(file);
    let mut value = serde_json::to_value(sink).expect("serializes");
    value["status"] = json!({ "conditions": [ready("True")] });
    value
}

fn keys_secret_path() -> String {
    path("v1", "factory", "secrets", "factory-api-keys")
}

fn child(group_version: &str, plural: &str) -> String {
    path(group_version, "factory", plural, "factory-api")
}

/// The Event and the status write that end every reconcile, for a first `Ready`
/// condition with `reason`.
fn reported(api: &ApplicationApi, reason: &str) -> Vec<Exchange> {
    vec![
        Exchange::post(&events("factory")).with("/reason", json!(reason)),
        Exchange::apply(&tributary("applicationapis", "factory/status"))
            .with("/status/conditions/0/reason", json!(reason))
            .with("/status/observedGeneration", json!(1))
            .reply(serde_json::to_value(api).expect("serializes")),
    ]
}

/// The requests of a reconcile that gets as far as applying the children.
fn applied(keys_secret: Exchange) -> Vec<Exchange> {
    vec![
        Exchange::get(&tributary("sinks", "readings")).reply(ready_sink("sink-postgres.yaml")),
        keys_secret,
        Exchange::get(&path("v1", "factory", "secrets", "pg")).reply(secret(
            "pg",
            "url",
            "postgres://db",
        )),
        Exchange::apply(&keys_secret_path())
            .with("/metadata/ownerReferences/0/kind", json!("ApplicationApi"))
            .with("/type", json!("Opaque")),
        Exchange::apply(&child("v1", "configmaps")).with("/kind", json!("ConfigMap")),
        Exchange::apply(&child("v1", "services"))
            .with("/spec/ports/0/port", json!(8080))
            .with("/spec/ports/0/name", json!("http")),
        Exchange::apply(&child("networking.k8s.io/v1", "networkpolicies"))
            .with("/spec/policyTypes", json!(["Ingress"])),
        Exchange::apply(&child("apps/v1", "deployments"))
            .with("/spec/replicas", json!(1))
            .reply(json!({ "status": { "readyReplicas": 1 } })),
    ]
}

fn key_of(secret: &Value, name: &str) -> String {
    let encoded = secret["data"][name].as_str().expect("the key is there");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .expect("base64");
    String::from_utf8(bytes).expect("utf-8")
}

#[tokio::test]
async fn a_new_api_gets_its_keys_children_and_status() {
    let api = api();
    let (client, server) = mocked();
    let mut scenario = applied(Exchange::get(&keys_secret_path()).not_found());
    scenario.extend(reported(&api, reason::RECONCILED));
    let scenario = server.run(scenario);
    let action = reconcile(Arc::new(api), context(client)).await;
    assert_eq!(action.expect("reconciles"), Action::requeue(RESYNC));
    let bodies = scenario.done().await;
    let secret = &bodies[3];
    let key = key_of(secret, "dashboard");
    assert_eq!(key.len(), keys::KEY_LENGTH);
    let config = bodies[4]["data"][build::CONFIG_KEY]
        .as_str()
        .expect("config")
        .to_owned();
    assert!(config.contains(&keys::sha256_hex(&key)), "{config}");
    assert!(
        !config.contains(&key),
        "the key itself never reaches the config"
    );
    let status = &bodies.last().expect("status written")["status"];
    assert_eq!(status["endpoint"], "factory-api.factory.svc:8080");
    assert_eq!(status["keysSecret"], "factory-api-keys");
    assert_eq!(status["dashboardPath"], "/dashboard");
    assert_eq!(status["conditions"][0]["message"], "1/1 API pods ready");
}

#[tokio::test]
async fn issued_keys_are_kept_and_a_new_key_is_added_beside_them() {
    let mut api = api();
    api.spec
        .api_keys
        .push(crate::crd::application_api::ApiKeySpec {
            name: "reporting".into(),
            scope: KeyScopeSpec::Devices(vec!["m-1".into()]),
            commands: false,
            rate_limit: None,
            rotation: None,
        });
    let issued = "k".repeat(keys::KEY_LENGTH);
    let mut existing = secret("factory-api-keys", "dashboard", &issued);
    existing["metadata"]["ownerReferences"] = json!([{
        "apiVersion": "tributary.dev/v1alpha1", "kind": "ApplicationApi", "name": "factory",
        "uid": "00000000-0000-0000-0000-000000000001", "controller": true
    }]);
    let (client, server) = mocked();
    let mut scenario = applied(Exchange::get(&keys_secret_path()).reply(existing));
    scenario.extend(reported(&api, reason::RECONCILED));
    let scenario = server.run(scenario);
    reconcile(Arc::new(api), context(client))
        .await
        .expect("reconciles");
    let bodies = scenario.done().await;
    assert_eq!(key_of(&bodies[3], "dashboard"), issued, "kept");
    assert_ne!(key_of(&bodies[3], "reporting"), issued, "a new one");
}

#[tokio::test]
async fn a_keys_secret_it_does_not_own_is_left_alone_and_reported() {
    let api = api();
    let (client, server) = mocked();
    let mut scenario = vec![
        Exchange::get(&tributary("sinks", "readings")).reply(ready_sink("sink-postgres.yaml")),
        Exchange::get(&keys_secret_path()).reply(secret("factory-api-keys", "x", "y")),
    ];
    scenario.extend(reported(&api, reason::NAME_CONFLICT));
    let scenario = server.run(scenario);
    let action = reconcile(Arc::new(api), context(client)).await;
    assert_eq!(action.expect("reconciles"), Action::requeue(RESYNC));
    let bodies = scenario.done().await;
    let message = bodies.last().expect("status")["status"]["conditions"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        message.contains("is not this ApplicationApi's"),
        "{message}"
    );
}

#[tokio::test]
async fn a_missing_history_sink_is_reported_and_nothing_is_applied() {
    let api = api();
    let (client, server) = mocked();
    let mut scenario = vec![Exchange::get(&tributary("sinks", "readings")).not_found()];
    scenario.extend(reported(&api, reason::WAITING_FOR_SINK));
    let scenario = server.run(scenario);
    let action = reconcile(Arc::new(api), context(client)).await;
    assert_eq!(action.expect("reconciles"), Action::requeue(RESYNC));
    let bodies = scenario.done().await;
    assert_eq!(
        bodies.last().expect("status")["status"]["conditions"][0]["message"],
        "Sink \"readings\" does not exist"
    );
}

#[tokio::test]
async fn a_history_sink_that_is_not_postgresql_is_an_invalid_reference() {
    let api = api();
    let (client, server) = mocked();
    let mut redis = ready_sink("sink-redis.yaml");
    redis["metadata"]["name"] = json!("readings");
    let mut scenario = vec![Exchange::get(&tributary("sinks", "readings")).reply(redis)];
    scenario.extend(reported(&api, reason::INVALID_REFERENCE));
    let scenario = server.run(scenario);
    let action = reconcile(Arc::new(api), context(client)).await;
    assert_eq!(action.expect("reconciles"), Action::requeue(RESYNC));
    let bodies = scenario.done().await;
    let status = &bodies.last().expect("status")["status"];
    assert_eq!(status["conditions"][0]["status"], "False");
    assert!(status["conditions"][0]["message"]
        .as_str()
        .is_some_and(|m| m.contains("is not a PostgreSQL Sink")));
}

#[tokio::test]
async fn an_invalid_api_waits_for_a_new_spec_without_dereferencing() {
    let mut api = api();
    api.spec.api_keys[0].name = "Not A Name".into();
    let (client, server) = mocked();
    let scenario = server.run(reported(&api, reason::INVALID_SPEC));
    let action = reconcile(Arc::new(api), context(client)).await;
    assert_eq!(action.expect("reconciles"), Action::await_change());
    scenario.done().await;
}

#[tokio::test]
async fn an_api_being_deleted_without_broker_users_needs_no_request() {
    let api = deleted(&api());
    let (client, server) = mocked();
    let scenario = server.run(Vec::new());
    let action = reconcile(Arc::new(api), context(client)).await;
    assert_eq!(action.expect("no request fails"), Action::await_change());
    assert!(scenario.done().await.is_empty());
}
