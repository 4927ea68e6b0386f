//! AMQPS to a broker whose certificate comes from a private CA (the test broker's `tls`
//! listener, `tests/services/rabbitmq.sh tls`): with the CA file the gateway connects and
//! messages are confirmed; with the system roots alone it never becomes ready and nothing
//! is acknowledged to a device.

mod common;

use common::*;
use std::path::PathBuf;
use tributary_contract::gateway_config::AuthConfig;

/// The AMQPS URL and CA file of the test broker's TLS listener; fails with instructions
/// when unset.
fn amqps() -> (String, PathBuf) {
    let var = |name: &str| match std::env::var(name) {
        Ok(value) if !value.is_empty() => value,
        _ => panic!(
            "{name} is not set: run `eval \"$(tests/services/rabbitmq.sh tls)\"` after \
             `tests/services/rabbitmq.sh start`"
        ),
    };
    (
        var("TRIBUTARY_TEST_AMQPS_URL"),
        PathBuf::from(var("TRIBUTARY_TEST_RABBITMQ_CA_FILE")),
    )
}

fn gateway_config(
    dir: &TempDir,
    queue: &str,
    ca_file: Option<PathBuf>,
) -> tributary_contract::gateway_config::GatewayConfig {
    let (url, _) = amqps();
    let uri = dir.write("amqp-uri", &url);
    let auth = AuthConfig {
        password_file: Some(password_file(dir, &[("press-7", "pw7")])),
        ..AuthConfig::default()
    };
    let mut config = test_config(uri, vec![route("devices/+/telemetry", queue)], auth);
    config.broker.ca_file = ca_file;
    config
}

#[tokio::test]
async fn the_gateway_publishes_over_amqps_with_the_private_ca_and_the_message_is_confirmed() {
    let (_, ca) = amqps();
    let connection = amqp(&amqp_url()).await;
    let queue = fresh_queue(&connection, "amqps").await;
    let dir = TempDir::new();
    let running = start_connected(gateway_config(&dir, &queue, Some(ca))).await;
    let mqtt = running.bound.mqtt.expect("mqtt listener");
    let (mut client, code) = RawMqtt::connect(mqtt, "press-7", "pw7").await;
    assert_eq!(code, 0);
    let acked = client
        .publish_qos1("devices/press-7/telemetry", 1, b"{\"n\":1}")
        .await;
    assert_eq!(acked, Some(1));
    // Acknowledged means confirmed: the message is in the queue already.
    let messages = drain_queue(&connection, &queue).await;
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0]["payload"]["data"]["n"], 1);
    delete_queue(&connection, &queue).await;
}

#[tokio::test]
async fn without_the_private_ca_the_gateway_stays_unready_and_acknowledges_nothing() {
    let connection = amqp(&amqp_url()).await;
    let queue = fresh_queue(&connection, "amqps-untrusted").await;
    let dir = TempDir::new();
    let running = tributary_gateway::app::start(gateway_config(&dir, &queue, None))
        .await
        .expect("gateway starts");
    let (health, http) = (
        running.bound.health,
        running.bound.http.expect("http listener"),
    );
    // Several reconnect attempts (at most 500 ms apart in tests) all fail verification.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert!(!running.gateway.broker.is_connected());
    assert_eq!(http_get_status(health, "/readyz").await, 503);
    let (status, _) = http_post(
        http,
        "/v1/publish/devices/press-7/telemetry",
        Some(&basic("press-7", "pw7")),
        None,
        b"{\"n\":2}",
    )
    .await;
    assert_eq!(status, 503, "no 202 without a trusted broker certificate");
    let (_, code) = RawMqtt::connect(running.bound.mqtt.expect("mqtt"), "press-7", "pw7").await;
    assert_eq!(code, 0x03, "devices get CONNACK server unavailable");
    assert!(drain_queue(&connection, &queue).await.is_empty());
    delete_queue(&connection, &queue).await;
}
