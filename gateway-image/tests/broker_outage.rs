//! A broker outage: while RabbitMQ is down nothing is acknowledged; after it restarts the
//! gateway reconnects by itself and every message it ever acknowledged is in the queue.
//!
//! Runs against a second, dedicated RabbitMQ node (instance `outage`, AMQP port 5674)
//! started and stopped through `tests/services/rabbitmq.sh`, so the shared test broker is
//! never disturbed. `TRIBUTARY_TEST_OUTAGE_RABBITMQ_PORT` moves it (instance
//! `outage-PORT`, management PORT + 10000, MQTT PORT - 3789), for machines where several
//! builders run this test at once.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use tributary_contract::gateway_config::AuthConfig;

/// The outage broker's AMQP port.
fn amqp_port() -> u16 {
    std::env::var("TRIBUTARY_TEST_OUTAGE_RABBITMQ_PORT")
        .ok()
        .and_then(|port| port.parse().ok())
        .unwrap_or(5674)
}

fn outage_broker(action: &str) {
    let script = repo_root().join("tests/services/rabbitmq.sh");
    let port = amqp_port();
    let instance = if port == 5674 {
        "outage".to_owned()
    } else {
        format!("outage-{port}")
    };
    let status = Command::new("bash")
        .arg(&script)
        .arg(action)
        .env("TRIBUTARY_RABBITMQ_INSTANCE", instance)
        .env("TRIBUTARY_RABBITMQ_PORT", port.to_string())
        .env("TRIBUTARY_RABBITMQ_MGMT_PORT", (port + 10_000).to_string())
        .env("TRIBUTARY_RABBITMQ_MQTT_PORT", (port - 3_789).to_string())
        .status()
        .unwrap_or_else(|error| panic!("running {}: {error}", script.display()));
    assert!(
        status.success(),
        "`rabbitmq.sh {action}` for the outage broker failed: {status}"
    );
}

/// Stops the outage broker when the test ends, also when it fails half-way.
struct StopOnDrop;

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        outage_broker("stop");
    }
}

fn outage_url() -> String {
    // Same credentials as the shared test broker (whatever its port), other port.
    let url = amqp_url();
    let (head, tail) = url
        .rsplit_once(':')
        .expect("the test broker URL has a port");
    let (_, vhost) = tail.split_once('/').unwrap_or((tail, ""));
    format!("{head}:{}/{vhost}", amqp_port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_acknowledged_while_the_broker_is_down_and_nothing_acknowledged_is_lost() {
    tokio::task::spawn_blocking(|| outage_broker("start"))
        .await
        .expect("start broker");
    let _stop = StopOnDrop;
    let url = outage_url();
    let connection = amqp(&url).await;
    let queue = fresh_queue(&connection, "outage").await;
    drop(connection);
    let dir = TempDir::new();
    let uri = dir.write("amqp-uri", &url);
    let auth = AuthConfig {
        password_file: Some(password_file(&dir, &[("press-7", "pw7")])),
        ..AuthConfig::default()
    };
    let running = start_connected(test_config(uri, vec![route("devices/#", &queue)], auth)).await;
    let (mqtt, http, health) = (
        running.bound.mqtt.expect("mqtt"),
        running.bound.http.expect("http"),
        running.bound.health,
    );
    let mut acknowledged = Vec::new();

    let (mut client, _) = RawMqtt::connect(mqtt, "press-7", "pw7").await;
    for n in 1..=10u16 {
        let payload = format!("{{\"n\":{n}}}");
        assert_eq!(
            client
                .publish_qos1("devices/press-7/t", n, payload.as_bytes())
                .await,
            Some(n)
        );
        acknowledged.push(u64::from(n));
    }

    tokio::task::spawn_blocking(|| outage_broker("stop"))
        .await
        .expect("stop broker");
    assert!(
        eventually(DEADLINE, || async {
            http_get_status(health, "/readyz").await == 503
        })
        .await,
        "readyz did not turn 503 with the broker down"
    );
    assert_eq!(
        http_get_status(health, "/healthz").await,
        200,
        "still alive"
    );
    assert_eq!(
        client
            .publish_qos1("devices/press-7/t", 11, b"{\"n\":11}")
            .await,
        None,
        "no PUBACK while the broker is down"
    );
    let (status, _) = http_post(
        http,
        "/v1/publish/devices/press-7/t",
        Some(&basic("press-7", "pw7")),
        None,
        b"{\"n\":12}",
    )
    .await;
    assert_eq!(status, 503, "no 202 while the broker is down");
    let (_, code) = RawMqtt::connect(mqtt, "press-7", "pw7").await;
    assert_eq!(code, 0x03, "new devices get CONNACK server unavailable");

    tokio::task::spawn_blocking(|| outage_broker("start"))
        .await
        .expect("restart broker");
    assert!(
        running
            .gateway
            .broker
            .wait_connected(Duration::from_secs(60))
            .await,
        "gateway did not reconnect after the broker restarted"
    );
    assert!(
        eventually(DEADLINE, || async {
            http_get_status(health, "/readyz").await == 200
        })
        .await,
        "readyz did not return to 200"
    );
    let (mut client, code) = RawMqtt::connect(mqtt, "press-7", "pw7").await;
    assert_eq!(code, 0);
    for n in 13..=22u16 {
        let payload = format!("{{\"n\":{n}}}");
        assert_eq!(
            client
                .publish_qos1("devices/press-7/t", n, payload.as_bytes())
                .await,
            Some(n)
        );
        acknowledged.push(u64::from(n));
    }
    let (status, _) = http_post(
        http,
        "/v1/publish/devices/press-7/t",
        Some(&basic("press-7", "pw7")),
        None,
        b"{\"n\":23}",
    )
    .await;
    assert_eq!(status, 202);
    acknowledged.push(23);

    let connection = amqp(&url).await;
    let messages = wait_for_messages(&connection, &queue, acknowledged.len()).await;
    let received: Vec<u64> = messages
        .iter()
        .filter_map(|m| m["payload"]["data"]["n"].as_u64())
        .collect();
    for n in &acknowledged {
        assert!(
            received.contains(n),
            "acknowledged message {n} missing; got {received:?}"
        );
    }
    delete_queue(&connection, &queue).await;
    drop(connection);
    running.drain(Duration::from_secs(5)).await;
    tokio::task::spawn_blocking(|| outage_broker("stop"))
        .await
        .expect("stop broker");
}
