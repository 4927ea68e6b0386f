use super::*;
use crate::controller::mock_api::{context, events, mocked, path, tributary, Exchange};
use base64::Engine as _;
use serde_json::{json, Value};

fn device(spec: Value) -> Device {
    serde_json::from_value(json!({
        "apiVersion": "tributary.dev/v1alpha1",
        "kind": "Device",
        "metadata": {"name": "lamp-1", "namespace": "factory", "uid": "device-uid",
                     "generation": 1},
        "spec": spec
    }))
    .expect("device")
}

fn keys() -> (NamespaceKeys, Value) {
    let keys = NamespaceKeys::generate("factory").expect("keys");
    let secret = serde_json::to_value(keys.secret()).expect("serializes");
    (keys, secret)
}

fn secret_path(name: &str) -> String {
    path("v1", "factory", "secrets", name)
}

fn decoded(body: &Value, key: &str) -> String {
    let text = body["data"][key].as_str().expect("base64 value");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("base64");
    String::from_utf8(bytes).expect("utf-8")
}

/// A credentials Secret this Device owns, made for `rotation` with `password`.
fn owned_credentials(rotation: i64, password: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {
            "name": "lamp-1-credentials", "namespace": "factory",
            "annotations": {"tributary.dev/rotation": rotation.to_string()},
            "ownerReferences": [{"apiVersion": "tributary.dev/v1alpha1", "kind": "Device",
                                 "name": "lamp-1", "uid": "device-uid", "controller": true}]
        },
        "data": {
            "username": base64::engine::general_purpose::STANDARD.encode("lamp-1"),
            "password": base64::engine::general_purpose::STANDARD.encode(password)
        }
    })
}

fn ends_ready(device: &Device, reason: &str) -> Vec<Exchange> {
    vec![
        Exchange::post(&events("factory")).with("/reason", json!(reason)),
        Exchange::apply(&tributary("devices", "lamp-1/status"))
            .with("/status/conditions/0/reason", json!(reason))
            .reply(serde_json::to_value(device).expect("serializes")),
    ]
}

#[tokio::test]
async fn a_new_device_gets_a_generated_secret_and_its_verifier_in_status() {
    let (keys, keys_secret) = keys();
    let d = device(json!({"gateways": ["line-1"], "credentials": {"generated": {}}}));
    let (client, server) = mocked();
    let mut scenario = vec![
        Exchange::get(&secret_path("tributary-device-registry")).reply(keys_secret),
        Exchange::get(&secret_path("lamp-1-credentials")).not_found(),
        Exchange::apply(&secret_path("lamp-1-credentials"))
            .with("/metadata/ownerReferences/0/uid", json!("device-uid"))
            .with("/metadata/annotations/tributary.dev~1rotation", json!("0")),
        Exchange::get(&tributary("gateways", "line-1")).reply(json!({
            "apiVersion": "tributary.dev/v1alpha1", "kind": "Gateway",
            "metadata": {"name": "line-1", "namespace": "factory"}
        })),
    ];
    scenario.extend(ends_ready(&d, reason::RECONCILED));
    let scenario = server.run(scenario);
    let action = reconcile(Arc::new(d), context(client))
        .await
        .expect("reconciles");
    assert_eq!(action, Action::requeue(RESYNC));
    let bodies = scenario.done().await;
    let password = decoded(&bodies[2], "password");
    assert!(
        password.len() >= 32,
        "at least 128 bits: {} characters",
        password.len()
    );
    assert_eq!(decoded(&bodies[2], "username"), "lamp-1");
    let status = &bodies.last().expect("status")["status"];
    assert_eq!(
        status["generated"]["verifier"],
        json!(keys.verifier(password.as_bytes()))
    );
    assert_eq!(status["generated"]["keyId"], json!(keys.key_id()));
    assert_eq!(status["credentialsSecret"], "lamp-1-credentials");
    assert_eq!(status["deviceId"], "lamp-1");
    assert!(
        status.get("connected").is_none(),
        "activity is the collector's"
    );
    assert!(
        !bodies
            .iter()
            .any(|b| b.to_string().contains(&password) && b.get("status").is_some()),
        "the secret never appears in the status"
    );
}

#[tokio::test]
async fn a_rotation_keeps_the_previous_secret_valid_for_the_grace_period() {
    let (keys, keys_secret) = keys();
    let d = device(json!({"gateways": ["line-1"],
                          "credentials": {"generated": {"rotation": 1, "gracePeriodSeconds": 600}}}));
    let (client, server) = mocked();
    let mut scenario = vec![
        Exchange::get(&secret_path("tributary-device-registry")).reply(keys_secret),
        Exchange::get(&secret_path("lamp-1-credentials")).reply(owned_credentials(0, "old-secret")),
        Exchange::apply(&secret_path("lamp-1-credentials"))
            .with("/metadata/annotations/tributary.dev~1rotation", json!("1")),
        Exchange::get(&tributary("gateways", "line-1")).reply(json!({
            "apiVersion": "tributary.dev/v1alpha1", "kind": "Gateway",
            "metadata": {"name": "line-1", "namespace": "factory"}
        })),
    ];
    scenario.extend(ends_ready(&d, reason::RECONCILED));
    let scenario = server.run(scenario);
    let action = reconcile(Arc::new(d), context(client))
        .await
        .expect("reconciles");
    let Action { .. } = action;
    let bodies = scenario.done().await;
    assert_eq!(decoded(&bodies[2], "previous-password"), "old-secret");
    let new = decoded(&bodies[2], "password");
    assert_ne!(new, "old-secret");
    let status = &bodies.last().expect("status")["status"];
    assert_eq!(
        status["generated"]["verifier"],
        json!(keys.verifier(new.as_bytes()))
    );
    assert_eq!(
        status["generated"]["previousVerifier"],
        json!(keys.verifier(b"old-secret"))
    );
    assert!(status["generated"]["previousValidUntil"].is_string());
    assert_eq!(
        status["credentialExpiry"],
        status["generated"]["previousValidUntil"]
    );
}

#[tokio::test]
async fn a_secret_of_the_same_name_that_is_not_the_devices_is_never_overwritten() {
    let (_, keys_secret) = keys();
    let d = device(json!({"gateways": ["line-1"], "credentials": {"generated": {}}}));
    let mut foreign = owned_credentials(0, "theirs");
    foreign["metadata"]["ownerReferences"] = json!([]);
    let (client, server) = mocked();
    let mut scenario = vec![
        Exchange::get(&secret_path("tributary-device-registry")).reply(keys_secret),
        Exchange::get(&secret_path("lamp-1-credentials")).reply(foreign),
    ];
    scenario.extend(ends_ready(&d, reason::INVALID_SPEC));
    let scenario = server.run(scenario);
    reconcile(Arc::new(d), context(client))
        .await
        .expect("reconciles");
    let bodies = scenario.done().await;
    let message = bodies.last().expect("status")["status"]["conditions"][0]["message"].to_string();
    assert!(
        message.contains("does not belong to this Device"),
        "{message}"
    );
}

#[tokio::test]
async fn an_invalid_device_is_reported_without_touching_anything() {
    let d = device(json!({"gateways": ["line-1"], "credentials": {}}));
    let (client, server) = mocked();
    let scenario = server.run(ends_ready(&d, reason::INVALID_SPEC));
    let action = reconcile(Arc::new(d), context(client))
        .await
        .expect("reconciles");
    assert_eq!(action, Action::await_change());
    scenario.done().await;
}

#[tokio::test]
async fn a_certificate_is_issued_from_the_namespace_ca_and_a_missing_gateway_is_waited_for() {
    let (keys, keys_secret) = keys();
    let d = device(
        json!({"gateways": ["line-9"], "credentials": {"certificate": {"validityDays": 30}}}),
    );
    let (client, server) = mocked();
    let mut scenario = vec![
        Exchange::get(&secret_path("tributary-device-registry")).reply(keys_secret),
        Exchange::get(&secret_path("lamp-1-certificate")).not_found(),
        Exchange::apply(&secret_path("lamp-1-certificate"))
            .with("/type", json!("kubernetes.io/tls"))
            .with(
                "/metadata/annotations/tributary.dev~1subject",
                json!("lamp-1"),
            )
            .with(
                "/metadata/annotations/tributary.dev~1issuer",
                json!(keys.key_id()),
            ),
        Exchange::get(&tributary("gateways", "line-9")).not_found(),
    ];
    scenario.extend(ends_ready(&d, reason::WAITING_FOR_GATEWAY));
    let scenario = server.run(scenario);
    reconcile(Arc::new(d), context(client))
        .await
        .expect("reconciles");
    let bodies = scenario.done().await;
    assert_eq!(decoded(&bodies[2], "ca.crt"), keys.ca_cert_pem);
    assert!(decoded(&bodies[2], "tls.key").contains("PRIVATE KEY"));
    let status = &bodies.last().expect("status")["status"];
    assert_eq!(status["certificateSecret"], "lamp-1-certificate");
    assert!(status["credentialExpiry"].is_string());
}
