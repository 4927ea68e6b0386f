//! Live messages from a real RabbitMQ to SSE and WebSocket clients of a real server: scope
//! and filters, the API's own bounded queue, and a slow client that must not hold up a fast
//! one. Latencies are printed, never asserted (the machine is shared).

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(20);

struct Live {
    server: Server,
    table: Table,
    exchange: String,
    _connection: Connection,
    channel: Channel,
}

impl Live {
    async fn start(extra: Value) -> Live {
        let amqp_url = required_env("TRIBUTARY_TEST_AMQP_URL", "rabbitmq.sh");
        let table = Table::create().await;
        let dir = temp_dir();
        let uri_file = dir.join("amqp-uri");
        std::fs::write(&uri_file, &amqp_url).expect("write uri file");
        let exchange = unique("api_live");
        let mut live = json!({
            "uriFile": uri_file, "exchange": exchange, "declareExchange": true, "clientBuffer": 64
        });
        if let (Some(live), Some(extra)) = (live.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                live.insert(k.clone(), v.clone());
            }
        }
        let server = Server::start(config(&table, &dir, json!({"live": live}))).await;
        wait_for("the API to consume live messages", WAIT, || async {
            (server.metric("tributary_api_live_connected").await == 1.0).then_some(())
        })
        .await;
        let connection = Connection::connect(&amqp_url, ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| {
                panic!("RabbitMQ is unreachable ({e}); run `tests/services/rabbitmq.sh start`")
            });
        let channel = connection.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm.select");
        Live {
            server,
            table,
            exchange,
            _connection: connection,
            channel,
        }
    }

    /// Publishes a processed message (the worker's record) and waits for the broker's confirm.
    async fn publish(&self, device: &str, topic_kind: &str, payload: Value) -> String {
        let id = new_id();
        let body = json!({
            "id": id, "tenant": "factory", "gateway": "line-1", "device": device,
            "topic": format!("devices/{device}/{topic_kind}"), "protocol": "mqtt",
            "receivedAt": "2026-01-05T10:00:00.000Z", "payload": payload, "payloadEncoding": "json",
        });
        self.channel
            .basic_publish(
                self.exchange.as_str().into(),
                format!("devices.{device}.{topic_kind}").as_str().into(),
                BasicPublishOptions::default(),
                body.to_string().as_bytes(),
                BasicProperties::default(),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        id
    }

    async fn finish(self) {
        self.server.stop().await;
        self.table.drop_table().await;
        let _ = self
            .channel
            .exchange_delete(self.exchange.as_str().into(), Default::default())
            .await;
    }
}

fn data(event: &SseEvent) -> Value {
    serde_json::from_str(&event.data).expect("event data is JSON")
}

#[tokio::test]
async fn a_published_message_reaches_sse_clients_of_its_scope() {
    let live = Live::start(json!({})).await;
    let mut admin_a1 = SseReader::open(&live.server, "?device=a-1", ADMIN).await;
    let mut group_a = SseReader::open(&live.server, "", GROUP_A).await;
    let mut pair_b = SseReader::open(&live.server, "", PAIR_B).await;
    let mut status_only = SseReader::open(&live.server, "?topic=devices/%2B/status", ADMIN).await;
    for reader in [&mut admin_a1, &mut group_a, &mut pair_b, &mut status_only] {
        assert_eq!(reader.expect("ready", WAIT).await.event, "ready");
    }

    let b1 = live.publish("b-1", "telemetry", json!({"t": 1})).await;
    let started = Instant::now();
    let a1 = live.publish("a-1", "telemetry", json!({"t": 2})).await;
    let event = admin_a1.expect("a-1's message", WAIT).await;
    let latency = started.elapsed();
    assert_eq!(event.event, "message");
    assert_eq!(event.id.as_deref(), Some(a1.as_str()));
    assert_eq!(data(&event)["payload"], json!({"t": 2}));
    println!(
        "publish → SSE client: {:.1} ms",
        latency.as_secs_f64() * 1000.0
    );

    let status = live.publish("a-2", "status", json!({"on": true})).await;
    let b2 = live.publish("b-2", "telemetry", json!({"t": 3})).await;
    // Group A: its two devices, in order; never group B's.
    assert_eq!(
        group_a.expect("a-1", WAIT).await.id.as_deref(),
        Some(a1.as_str())
    );
    assert_eq!(
        group_a.expect("a-2", WAIT).await.id.as_deref(),
        Some(status.as_str())
    );
    // Pair B: b-1 then b-2, with a-1's and a-2's messages never in between.
    assert_eq!(
        pair_b.expect("b-1", WAIT).await.id.as_deref(),
        Some(b1.as_str())
    );
    assert_eq!(
        pair_b.expect("b-2", WAIT).await.id.as_deref(),
        Some(b2.as_str())
    );
    // The topic filter: only the status message.
    assert_eq!(
        status_only.expect("status", WAIT).await.id.as_deref(),
        Some(status.as_str())
    );

    // The API's queue is its own: exclusive, auto-delete, bounded with drop-head.
    let api = required_env("TRIBUTARY_TEST_RABBITMQ_API", "rabbitmq.sh");
    let user = required_env("TRIBUTARY_TEST_RABBITMQ_API_USER", "rabbitmq.sh");
    let password = required_env("TRIBUTARY_TEST_RABBITMQ_API_PASSWORD", "rabbitmq.sh");
    let http = common::http_client();
    let bindings: Value = http
        .get(format!(
            "{api}/api/exchanges/%2f/{}/bindings/source",
            live.exchange
        ))
        .basic_auth(&user, Some(&password))
        .send()
        .await
        .expect("bindings")
        .json()
        .await
        .expect("bindings json");
    let queue = bindings[0]["destination"]
        .as_str()
        .expect("a bound queue")
        .to_string();
    let info: Value = http
        .get(format!(
            "{api}/api/queues/%2f/{}",
            queue.replace('.', "%2E")
        ))
        .basic_auth(&user, Some(&password))
        .send()
        .await
        .expect("queue")
        .json()
        .await
        .expect("queue json");
    assert_eq!(info["exclusive"], json!(true), "{info}");
    assert_eq!(info["auto_delete"], json!(true), "{info}");
    assert_eq!(info["arguments"]["x-max-length"], json!(10_000), "{info}");
    assert_eq!(
        info["arguments"]["x-overflow"],
        json!("drop-head"),
        "{info}"
    );

    assert_eq!(
        live.server
            .metric("tributary_api_stream_clients{kind=\"sse\"}")
            .await,
        4.0
    );
    // Shutdown ends the streams instead of waiting for them.
    live.finish().await;
    assert!(
        admin_a1.next().await.is_none(),
        "the stream ends at shutdown"
    );
}

#[tokio::test]
async fn a_slow_sse_client_does_not_block_a_fast_one() {
    let live = Live::start(json!({})).await;
    // The slow client: a socket with a tiny receive buffer that stops reading after `ready`.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("small buffer");
    let mut slow = socket.connect(live.server.address).await.expect("connect");
    slow.write_all(
        format!("GET /v1/stream HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer {ADMIN}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .expect("request");
    let mut head = Vec::new();
    let mut buffer = [0u8; 512];
    while !String::from_utf8_lossy(&head).contains("event: ready") {
        let n = tokio::time::timeout(WAIT, slow.read(&mut buffer))
            .await
            .expect("slow client gets its first event")
            .expect("read");
        assert!(
            n > 0,
            "connection closed: {}",
            String::from_utf8_lossy(&head)
        );
        head.extend_from_slice(&buffer[..n]);
    }
    assert!(String::from_utf8_lossy(&head).starts_with("HTTP/1.1 200"));

    let mut fast = SseReader::open(&live.server, "", ADMIN).await;
    assert_eq!(fast.expect("ready", WAIT).await.event, "ready");

    // Far more than the socket buffers and the slow client's 64 messages can hold, in
    // batches the fast client reads before the next (so it never falls 64 behind itself).
    let filler = "x".repeat(16 * 1024);
    let (batches, batch) = (20, 50);
    let started = Instant::now();
    for b in 0..batches {
        let mut ids = Vec::new();
        for i in 0..batch {
            ids.push(
                live.publish(
                    "a-1",
                    "telemetry",
                    json!({"seq": b * batch + i, "filler": filler}),
                )
                .await,
            );
        }
        for id in ids {
            let event = fast.expect("the fast client's next message", WAIT).await;
            assert_eq!(
                event.id.as_deref(),
                Some(id.as_str()),
                "in order, none lost"
            );
        }
    }
    let elapsed = started.elapsed();
    let dropped = live.server.metric("tributary_api_live_dropped_total").await;
    println!(
        "fast client got all {} messages of 16 KiB in {:.2}s; the slow client lost {dropped}",
        batches * batch,
        elapsed.as_secs_f64()
    );
    assert!(dropped > 0.0, "the slow client's buffer overflowed");
    // The slow client is still connected: it was never waited for, nor cut off.
    assert_eq!(
        live.server
            .metric("tributary_api_stream_clients{kind=\"sse\"}")
            .await,
        2.0
    );
    drop(slow);
    live.finish().await;
}

#[tokio::test]
async fn a_websocket_client_gets_the_same_filtered_messages() {
    let live = Live::start(json!({})).await;
    let url = format!(
        "ws://{}/v1/ws?device=a-2&access_token={GROUP_A}",
        live.server.address
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket");
    let text = |message: tokio_tungstenite::tungstenite::Message| -> Value {
        serde_json::from_str(message.to_text().expect("text frame")).expect("json frame")
    };
    let ready = tokio::time::timeout(WAIT, socket.next())
        .await
        .expect("ready in time")
        .expect("open")
        .expect("frame");
    assert_eq!(text(ready), json!({"type": "ready"}));
    live.publish("a-1", "telemetry", json!({"t": 1})).await;
    let started = Instant::now();
    let id = live.publish("a-2", "telemetry", json!({"t": 2})).await;
    let frame = tokio::time::timeout(WAIT, socket.next())
        .await
        .expect("message in time")
        .expect("open")
        .expect("frame");
    println!(
        "publish → WebSocket client: {:.1} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
    let message = text(frame);
    assert_eq!(message["id"], json!(id), "only a-2's message: {message}");
    assert_eq!(
        live.server
            .metric("tributary_api_stream_clients{kind=\"ws\"}")
            .await,
        1.0
    );
    let _ = socket.close(None).await;
    wait_for("the WebSocket client to be gone", WAIT, || async {
        (live
            .server
            .metric("tributary_api_stream_clients{kind=\"ws\"}")
            .await
            == 0.0)
            .then_some(())
    })
    .await;
    live.finish().await;
}

#[tokio::test]
async fn live_refusals_are_documented_json_errors_and_topics_count_characters() {
    let live = Live::start(json!({})).await;
    // A plain GET of the WebSocket endpoint (no handshake) is a JSON 400 like every refusal.
    let (status, body) = live.server.get("/v1/ws", ADMIN).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].is_string(), "{body}");
    // `topic` is bounded in characters, as documented: 256 two-byte characters are fine.
    let topic = |n: usize| "%C3%A9".repeat(n);
    let mut long = SseReader::open(&live.server, &format!("?topic={}", topic(256)), ADMIN).await;
    assert_eq!(long.expect("ready", WAIT).await.event, "ready");
    drop(long);
    let (status, body) = live
        .server
        .get(&format!("/v1/stream?topic={}", topic(257)), ADMIN)
        .await;
    assert_eq!(status, 400, "{body}");
    live.finish().await;
}

#[tokio::test]
async fn the_backlog_is_the_pipeline_queues_depth_once_the_queue_exists() {
    let queue = unique("api_backlog");
    let live = Live::start(json!({"backlogQueue": queue})).await;
    // The queue does not exist yet: no depth, and the live feed is unaffected.
    let (status, body) = live.server.get("/v1/backlog", GROUP_A).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"].as_str().unwrap_or("").contains(&queue),
        "{body}"
    );
    let mut reader = SseReader::open(&live.server, "", ADMIN).await;
    assert_eq!(reader.expect("ready", WAIT).await.event, "ready");
    let id = live.publish("a-1", "telemetry", json!({"t": 1})).await;
    let event = reader.expect("a live message", WAIT).await;
    assert_eq!(data(&event)["id"], json!(id));

    // The pipeline's queue appears with 7 messages waiting.
    let declare = lapin::options::QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    live.channel
        .queue_declare(queue.as_str().into(), declare, Default::default())
        .await
        .expect("declare the pipeline queue");
    for n in 0..7 {
        live.channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                format!("{n}").as_bytes(),
                BasicProperties::default(),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
    }
    let body = wait_for("the backlog's depth", Duration::from_secs(30), || async {
        let (status, body) = live.server.get("/v1/backlog", GROUP_A).await;
        (status == 200 && body["messages"] == 7).then_some(body)
    })
    .await;
    assert_eq!(body["consumers"], 0);
    assert!(body["observedAt"].is_string(), "{body}");
    let (status, _) = live.server.get("/v1/backlog?x=1", GROUP_A).await;
    assert_eq!(status, 400, "unknown parameters are refused");
    let _ = live
        .channel
        .queue_delete(queue.as_str().into(), Default::default())
        .await;
    drop(reader);
    live.finish().await;
}

#[tokio::test]
async fn without_a_live_queue_there_is_no_backlog() {
    let table = Table::create().await;
    let dir = temp_dir();
    let server = Server::start(config(&table, &dir, json!({}))).await;
    let (status, body) = server.get("/v1/backlog", ADMIN).await;
    assert_eq!(status, 503, "{body}");
    server.stop().await;
    table.drop_table().await;
}
