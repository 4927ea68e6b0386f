//! Device table changes without restarts, against the real RabbitMQ: the push endpoint
//! (token, order, bounds), the table file re-read, disabled devices' sessions closed, and
//! rotated generated secrets.

mod common;
mod registry_fixture;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use registry_fixture::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tributary_contract::device_table::{MAX_TABLE_BODY_BYTES, MAX_TABLE_JSON_BYTES, TABLE_PATH};

#[tokio::test]
async fn without_a_registry_the_operator_endpoints_are_not_found() {
    let dir = TempDir::new();
    let uri = dir.write("amqp-uri", &amqp_url());
    let auth = tributary_contract::gateway_config::AuthConfig {
        password_file: Some(password_file(&dir, &[("legacy-1", "pw")])),
        ..Default::default()
    };
    let running = start_connected(test_config(uri, vec![route("#", "unused")], auth)).await;
    let health = running.bound.health;
    assert_eq!(
        request(health, "PUT", TABLE_PATH, Some("t"), b"x").await.0,
        404
    );
    let status_path = tributary_contract::device_table::STATUS_PATH;
    assert_eq!(
        request(health, "GET", status_path, Some("t"), b"").await.0,
        404
    );
    running.drain(DEADLINE).await;
}

/// A body of `len` bytes sent chunked (no declared length); the status.
async fn put_chunked(addr: std::net::SocketAddr, token: &str, len: usize) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "PUT {TABLE_PATH} HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {token}\r\n\
         Transfer-Encoding: chunked\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    let chunk = vec![b'x'; 64 * 1024];
    let mut sent = 0;
    while sent < len {
        let piece = format!("{:x}\r\n", chunk.len());
        // The server answers and closes once past its bound: stop sending then.
        if stream.write_all(piece.as_bytes()).await.is_err()
            || stream.write_all(&chunk).await.is_err()
            || stream.write_all(b"\r\n").await.is_err()
        {
            break;
        }
        sent += chunk.len();
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut response)).await;
    String::from_utf8_lossy(&response)
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn the_push_endpoint_checks_token_order_and_bounds_while_devices_keep_publishing() {
    let broker = amqp(&amqp_url()).await;
    let queue = fresh_queue(&broker, "registry-push").await;
    let fixture = Fixture::new();
    let lamp = json!({"id": "lamp-1", "credentials": [fixture.generated("s1", None)]});
    fixture.write_table(&table(100, json!([lamp])));
    let running = registry_gateway(&fixture, &queue, |_| {}).await;
    let health = running.bound.health;
    let token = fixture.token.clone();

    // A device publishing all along.
    let addr = running.bound.mqtt.expect("mqtt");
    let (mut client, code) = RawMqtt::connect(addr, "lamp-1", "s1").await;
    assert_eq!(code, 0);
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = tokio::spawn({
        let (acked, stop) = (Arc::clone(&acked), Arc::clone(&stop));
        async move {
            let mut id = 1u16;
            while !stop.load(Ordering::Relaxed) {
                let acknowledged = client.publish_qos1("devices/lamp-1/t", id, b"{}").await;
                assert_eq!(acknowledged, Some(id), "the publisher was cut off");
                acked.fetch_add(1, Ordering::Relaxed);
                id = id.wrapping_add(1).max(1);
            }
        }
    });

    let newer = table(
        200,
        json!([lamp, {"id": "lamp-2", "credentials": [fixture.generated("s2", None)]}]),
    );
    assert_eq!(push(&running, "wrong-token", &newer).await, 401);
    assert_eq!(
        request(health, "PUT", TABLE_PATH, None, &gzip(&newer))
            .await
            .0,
        401
    );
    assert_eq!(
        connack(&running, "lamp-2", "s2").await,
        4,
        "nothing applied yet"
    );
    assert_eq!(push(&running, &token, &table(99, json!([]))).await, 409);
    assert_eq!(
        request(health, "PUT", TABLE_PATH, Some(&token), b"not gzip")
            .await
            .0,
        400
    );
    let (code, body) = request(
        health,
        "PUT",
        TABLE_PATH,
        Some(&token),
        &gzip(&json!({"devices": 1})),
    )
    .await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("invalid table JSON"),
        "a short reason: {body}"
    );

    let before = acked.load(Ordering::Relaxed);
    let declared = vec![0u8; MAX_TABLE_BODY_BYTES + 1];
    assert_eq!(
        request(health, "PUT", TABLE_PATH, Some(&token), &declared)
            .await
            .0,
        413
    );
    assert_eq!(
        put_chunked(health, &token, MAX_TABLE_BODY_BYTES + (1 << 20)).await,
        413
    );
    let bomb = gzip_bytes(&vec![b' '; MAX_TABLE_JSON_BYTES + 1]);
    assert!(bomb.len() < MAX_TABLE_BODY_BYTES);
    assert_eq!(
        request(health, "PUT", TABLE_PATH, Some(&token), &bomb)
            .await
            .0,
        413
    );
    assert!(
        eventually(DEADLINE, || async {
            acked.load(Ordering::Relaxed) > before + 10
        })
        .await,
        "the device kept publishing while oversized tables were refused"
    );

    assert_eq!(push(&running, &token, &newer).await, 204);
    assert_eq!(
        connack(&running, "lamp-2", "s2").await,
        0,
        "applied at once"
    );
    assert_eq!(
        push(&running, &token, &newer).await,
        204,
        "the same issuedAtMs again is fine"
    );
    assert_eq!(push(&running, &token, &table(150, json!([]))).await, 409);
    assert_eq!(status(&running, &token).await["tableIssuedAtMs"], 200);
    let metrics = running.gateway.metrics.encode();
    assert!(
        metrics.contains("tributary_gateway_device_table_devices 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("source=\"push\",result=\"stale\""),
        "{metrics}"
    );
    assert!(
        metrics.contains("tributary_gateway_logins_total{credential=\"generated\"}"),
        "{metrics}"
    );

    stop.store(true, Ordering::Relaxed);
    publisher.await.expect("publisher kept its session");
    running.drain(DEADLINE).await;
    delete_queue(&broker, &queue).await;
}

#[tokio::test]
async fn disabling_a_device_by_push_closes_its_session_within_5_s_and_no_one_elses() {
    let broker = amqp(&amqp_url()).await;
    let queue = fresh_queue(&broker, "registry-disable").await;
    let fixture = Fixture::new();
    let lamp = |id: &str, secret: &str, disabled: bool| json!({"id": id, "disabled": disabled, "credentials": [fixture.generated(secret, None)]});
    fixture.write_table(&table(
        1,
        json!([lamp("lamp-1", "s1", false), lamp("lamp-2", "s2", false)]),
    ));
    let running = registry_gateway(&fixture, &queue, |_| {}).await;
    let addr = running.bound.mqtt.expect("mqtt");
    let (mut victim, code) = RawMqtt::connect(addr, "lamp-1", "s1").await;
    assert_eq!(code, 0);
    let (mut other, code) = RawMqtt::connect(addr, "lamp-2", "s2").await;
    assert_eq!(code, 0);
    let (mut legacy, code) = RawMqtt::connect(addr, "legacy-1", "legacy-pw").await;
    assert_eq!(code, 0);

    let disabled = table(
        2,
        json!([lamp("lamp-1", "s1", true), lamp("lamp-2", "s2", false)]),
    );
    let pushed = tokio::time::Instant::now();
    assert_eq!(push(&running, &fixture.token, &disabled).await, 204);
    assert!(
        victim.closed_by_server().await,
        "the disabled device's session closes"
    );
    let took = pushed.elapsed();
    assert!(took < Duration::from_secs(5), "closed after {took:?}");
    assert_eq!(
        other.publish_qos1("devices/lamp-2/t", 1, b"{}").await,
        Some(1)
    );
    assert_eq!(
        legacy.publish_qos1("devices/legacy-1/t", 2, b"{}").await,
        Some(2)
    );
    assert_eq!(
        connack(&running, "lamp-1", "s1").await,
        4,
        "disabled: refused"
    );

    // Removing a device closes its sessions too.
    let (mut removed, code) = RawMqtt::connect(addr, "lamp-2", "s2").await;
    assert_eq!(code, 0);
    assert_eq!(
        push(&running, &fixture.token, &table(3, json!([]))).await,
        204
    );
    assert!(removed.closed_by_server().await);
    assert!(other.closed_by_server().await);
    assert_eq!(
        legacy.publish_qos1("devices/legacy-1/t", 3, b"{}").await,
        Some(3)
    );
    assert_eq!(wait_for_messages(&broker, &queue, 3).await.len(), 3);
    running.drain(DEADLINE).await;
    delete_queue(&broker, &queue).await;
}

#[tokio::test]
async fn a_changed_table_file_is_picked_up_and_an_older_one_ignored() {
    let fixture = Fixture::new();
    // No table file at start: the gateway starts with an empty table.
    let running = registry_gateway(&fixture, "unused", |_| {}).await;
    assert_eq!(connack(&running, "lamp-1", "s1").await, 4);
    fixture.write_table(&table(
        10,
        json!([{"id": "lamp-1", "credentials": [fixture.generated("s1", None)]}]),
    ));
    assert!(
        eventually(DEADLINE, || async {
            connack(&running, "lamp-1", "s1").await == 0
        })
        .await,
        "the new table file was not picked up"
    );
    fixture.write_table(&table(
        5,
        json!([{"id": "lamp-3", "credentials": [fixture.generated("s3", None)]}]),
    ));
    assert!(
        eventually(DEADLINE, || async {
            running
                .gateway
                .metrics
                .encode()
                .contains("source=\"file\",result=\"stale\"")
        })
        .await,
        "the older file was not read"
    );
    assert_eq!(
        connack(&running, "lamp-3", "s3").await,
        4,
        "an older table is not applied"
    );
    assert_eq!(connack(&running, "lamp-1", "s1").await, 0);
    running.drain(DEADLINE).await;
}

#[tokio::test]
async fn a_rotated_secret_works_with_the_new_one_until_not_after_then_only_the_new() {
    let fixture = Fixture::new();
    let not_after = now_ms() + 1_500;
    fixture.write_table(&table(
        1,
        json!([{"id": "lamp-1", "credentials": [
            fixture.generated("old-secret", Some(not_after)),
            fixture.generated("new-secret", None)
        ]}]),
    ));
    let running = registry_gateway(&fixture, "unused", |_| {}).await;
    assert_eq!(connack(&running, "lamp-1", "old-secret").await, 0);
    assert_eq!(connack(&running, "lamp-1", "new-secret").await, 0);
    assert!(
        eventually(DEADLINE, || async {
            connack(&running, "lamp-1", "old-secret").await == 4
        })
        .await,
        "the old secret was never refused"
    );
    assert!(now_ms() > not_after, "refused only after notAfterMs");
    assert_eq!(connack(&running, "lamp-1", "new-secret").await, 0);
    running.drain(DEADLINE).await;
}
