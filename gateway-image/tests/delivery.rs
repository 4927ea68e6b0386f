//! Delivery into the real RabbitMQ: confirms before PUBACK/202, routing, envelope fields,
//! and the HTTP status codes.

mod common;

use common::*;
use tributary_contract::gateway_config::{AuthConfig, Limits};

async fn gateway_with_queues(
    dir: &TempDir,
    routes: Vec<tributary_contract::gateway_config::Route>,
) -> tributary_gateway::app::Running {
    let uri = dir.write("amqp-uri", &amqp_url());
    let auth = AuthConfig {
        password_file: Some(password_file(
            dir,
            &[("press-7", "pw7"), ("press-8", "pw8")],
        )),
        ..AuthConfig::default()
    };
    start_connected(test_config(uri, routes, auth)).await
}

#[tokio::test]
async fn qos1_puback_arrives_only_with_the_message_already_in_the_queue() {
    let connection = amqp(&amqp_url()).await;
    let queue = fresh_queue(&connection, "telemetry").await;
    let dir = TempDir::new();
    let running = gateway_with_queues(&dir, vec![route("devices/+/telemetry", &queue)]).await;
    let mqtt = running.bound.mqtt.expect("mqtt listener");
    let (mut client, code) = RawMqtt::connect(mqtt, "press-7", "pw7").await;
    assert_eq!(code, 0);
    for packet_id in 1..=20u16 {
        let acked = client
            .publish_qos1(
                "devices/press-7/telemetry",
                packet_id,
                format!("{{\"n\":{packet_id}}}").as_bytes(),
            )
            .await;
        assert_eq!(acked, Some(packet_id));
        // Acknowledged means confirmed: the message is in the queue right now, no waiting.
        let messages = drain_queue(&connection, &queue).await;
        assert_eq!(
            messages.len(),
            1,
            "message {packet_id} not in the queue at PUBACK time"
        );
        assert_eq!(messages[0]["payload"]["data"]["n"], packet_id);
    }
    delete_queue(&connection, &queue).await;
}

#[tokio::test]
async fn one_message_is_routed_to_every_matching_queue() {
    let connection = amqp(&amqp_url()).await;
    let telemetry = fresh_queue(&connection, "telemetry").await;
    let archive = fresh_queue(&connection, "archive").await;
    let dir = TempDir::new();
    let routes = vec![
        route("devices/+/telemetry", &telemetry),
        route("devices/#", &archive),
    ];
    let running = gateway_with_queues(&dir, routes).await;
    let (mut client, _) =
        RawMqtt::connect(running.bound.mqtt.expect("mqtt"), "press-7", "pw7").await;
    assert_eq!(
        client
            .publish_qos1("devices/press-7/telemetry", 1, b"{}")
            .await,
        Some(1)
    );
    assert_eq!(
        client
            .publish_qos1("devices/press-7/status", 2, b"{}")
            .await,
        Some(2)
    );
    let in_telemetry = drain_queue(&connection, &telemetry).await;
    let in_archive = drain_queue(&connection, &archive).await;
    assert_eq!(in_telemetry.len(), 1);
    assert_eq!(in_archive.len(), 2);
    assert_eq!(
        in_telemetry[0]["id"], in_archive[0]["id"],
        "the same envelope in both queues"
    );
    delete_queue(&connection, &telemetry).await;
    delete_queue(&connection, &archive).await;
}

#[tokio::test]
async fn envelope_fields_describe_the_device_message() {
    let connection = amqp(&amqp_url()).await;
    let queue = fresh_queue(&connection, "envelope").await;
    let dir = TempDir::new();
    let running = gateway_with_queues(&dir, vec![route("devices/#", &queue)]).await;
    let (mut client, _) =
        RawMqtt::connect(running.bound.mqtt.expect("mqtt"), "press-7", "pw7").await;
    assert_eq!(
        client
            .publish_qos1("devices/press-7/telemetry", 1, br#"{"temp":21.5}"#)
            .await,
        Some(1)
    );
    assert_eq!(
        client
            .publish_qos1("devices/press-7/raw", 2, &[0xFF, 0x00, 0x01])
            .await,
        Some(2)
    );
    let (status, _) = http_post(
        running.bound.http.expect("http"),
        "/v1/publish/devices/press-8/telemetry",
        Some(&basic("press-8", "pw8")),
        Some("application/json"),
        br#"{"temp":19}"#,
    )
    .await;
    assert_eq!(status, 202);
    let messages = drain_queue(&connection, &queue).await;
    assert_eq!(messages.len(), 3);
    let json = &messages[0];
    assert_eq!(json["tenant"], "factory");
    assert_eq!(json["gateway"], "line-1");
    assert_eq!(json["device"], "press-7");
    assert_eq!(json["topic"], "devices/press-7/telemetry");
    assert_eq!(json["protocol"], "mqtt");
    assert_eq!(
        json["payload"],
        serde_json::json!({"encoding": "json", "data": {"temp": 21.5}})
    );
    assert_eq!(
        json["_amqpMessageId"], json["id"],
        "AMQP message id is the envelope id"
    );
    assert_eq!(json["_persistent"], true);
    let id = json["id"].as_str().expect("id");
    assert!(ulid::Ulid::from_string(id).is_ok(), "id {id} is a ULID");
    let received = json["receivedAt"].as_str().expect("receivedAt");
    assert!(received.parse::<jiff::Timestamp>().is_ok(), "{received}");
    assert_eq!(
        messages[1]["payload"],
        serde_json::json!({"encoding": "base64", "data": "/wAB"})
    );
    assert_eq!(messages[2]["protocol"], "http");
    assert_eq!(messages[2]["device"], "press-8");
    assert_eq!(messages[2]["contentType"], "application/json");
    delete_queue(&connection, &queue).await;
}

/// (name, path, Authorization header, body, expected status)
type HttpCase = (&'static str, String, Option<String>, Vec<u8>, u16);

#[tokio::test]
async fn http_ingest_answers_with_the_documented_status_codes() {
    let connection = amqp(&amqp_url()).await;
    let queue = fresh_queue(&connection, "http").await;
    let dir = TempDir::new();
    let uri = dir.write("amqp-uri", &amqp_url());
    let auth = AuthConfig {
        password_file: Some(password_file(&dir, &[("press-7", "pw7")])),
        ..AuthConfig::default()
    };
    let mut config = test_config(uri, vec![route("devices/#", &queue)], auth);
    config.limits = Limits {
        max_payload_bytes: 64,
        messages_per_second: 1,
        burst: 3,
        ..Limits::default()
    };
    let running = start_connected(config).await;
    let http = running.bound.http.expect("http");
    let good = basic("press-7", "pw7");
    let topic = "/v1/publish/devices/press-7/t";
    let cases: Vec<HttpCase> = vec![
        (
            "accepted",
            topic.into(),
            Some(good.clone()),
            b"{}".to_vec(),
            202,
        ),
        ("no credentials", topic.into(), None, b"{}".to_vec(), 401),
        (
            "wrong password",
            topic.into(),
            Some(basic("press-7", "nope")),
            b"{}".to_vec(),
            401,
        ),
        (
            "unknown device",
            topic.into(),
            Some(basic("ghost", "pw7")),
            b"{}".to_vec(),
            401,
        ),
        (
            "garbage authorization",
            topic.into(),
            Some("Basic !!!".into()),
            b"{}".to_vec(),
            401,
        ),
        (
            "wildcard topic",
            "/v1/publish/devices/press-7/%2B".into(),
            Some(good.clone()),
            b"{}".to_vec(),
            400,
        ),
        (
            "other device's topic",
            "/v1/publish/devices/press-8/t".into(),
            Some(good.clone()),
            b"{}".to_vec(),
            403,
        ),
        (
            "too large",
            topic.into(),
            Some(good.clone()),
            vec![b'x'; 65],
            413,
        ),
    ];
    for (name, path, authorization, body, expected) in cases {
        let (status, response) =
            http_post(http, &path, authorization.as_deref(), None, &body).await;
        assert_eq!(status, expected, "{name}: {response}");
    }
    // Beyond the burst the device is told to slow down (the bucket refills at 1/s, so a
    // quick run of requests must hit the limit).
    let mut statuses = Vec::new();
    for _ in 0..50 {
        let (status, _) = http_post(http, topic, Some(&good), None, b"{}").await;
        statuses.push(status);
        if status == 429 {
            break;
        }
    }
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 202 || *s == 429),
        "{statuses:?}"
    );
    let accepted = 1 + statuses.iter().filter(|s| **s == 202).count();
    assert_eq!(drain_queue(&connection, &queue).await.len(), accepted);
    delete_queue(&connection, &queue).await;
}

#[tokio::test]
async fn unreachable_broker_gives_healthz_200_readyz_503_http_503_and_connack_unavailable() {
    let dir = TempDir::new();
    // Port 9 on loopback (discard) is closed here: connection refused, retried forever.
    let uri = dir.write("amqp-uri", "amqp://nobody:secret@127.0.0.1:9/%2f");
    let auth = AuthConfig {
        password_file: Some(password_file(&dir, &[("press-7", "pw7")])),
        ..AuthConfig::default()
    };
    let config = test_config(uri, vec![route("devices/#", "q")], auth);
    let running = tributary_gateway::app::start(config)
        .await
        .expect("starts without a broker");
    assert_eq!(http_get_status(running.bound.health, "/healthz").await, 200);
    assert_eq!(http_get_status(running.bound.health, "/readyz").await, 503);
    let (status, _) = http_post(
        running.bound.http.expect("http"),
        "/v1/publish/devices/press-7/t",
        Some(&basic("press-7", "pw7")),
        None,
        b"{}",
    )
    .await;
    assert_eq!(status, 503);
    let (_, code) = RawMqtt::connect(running.bound.mqtt.expect("mqtt"), "press-7", "pw7").await;
    assert_eq!(code, 0x03, "CONNACK server unavailable");
}

#[tokio::test]
async fn mqtt_auth_failures_get_bad_credentials_and_foreign_topics_close_v311_sessions() {
    let connection = amqp(&amqp_url()).await;
    let queue = fresh_queue(&connection, "authz").await;
    let dir = TempDir::new();
    let running = gateway_with_queues(&dir, vec![route("devices/#", &queue)]).await;
    let mqtt = running.bound.mqtt.expect("mqtt");
    let (_, unknown) = RawMqtt::connect(mqtt, "ghost", "pw7").await;
    assert_eq!(unknown, 0x04, "unknown device: bad user name or password");
    let (_, wrong) = RawMqtt::connect(mqtt, "press-7", "wrong").await;
    assert_eq!(wrong, 0x04, "wrong password: same code as unknown device");
    let (_, wildcard) = RawMqtt::connect(mqtt, "press-#", "pw7").await;
    assert_eq!(
        wildcard, 0x02,
        "wildcards in client id / user name: identifier rejected"
    );
    let (mut client, ok) = RawMqtt::connect(mqtt, "press-7", "pw7").await;
    assert_eq!(ok, 0);
    assert_eq!(
        client
            .publish_qos1("devices/press-8/telemetry", 1, b"{}")
            .await,
        None
    );
    assert!(drain_queue(&connection, &queue).await.is_empty());
    delete_queue(&connection, &queue).await;
}
