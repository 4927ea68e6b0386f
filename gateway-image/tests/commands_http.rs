//! Commands for HTTP devices, on a real broker: the long poll returns a command published
//! while it waits (or one queued before), 204 when none comes, the response endpoint
//! answers a request, and the bounds: `maxLongPolls` (503), one poll per device (409).

mod commands_fixture;
mod common;

use std::net::SocketAddr;
use std::time::Duration;

use commands_fixture::mqtt::{Client, Login};
use commands_fixture::*;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One request to the device listener; (status, body).
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    device: Option<&str>,
    body: &[u8],
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect http");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n",
        body.len()
    );
    if let Some(device) = device {
        head.push_str(&format!(
            "Authorization: {}\r\n",
            basic(device, &password(device))
        ));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.expect("send");
    stream.write_all(body).await.expect("send body");
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

async fn poll(setup: &Setup, device: &str, wait_seconds: u32) -> (u16, String) {
    let path = format!("/v1/commands?waitSeconds={wait_seconds}");
    request(setup.http(), "GET", &path, Some(device), b"").await
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|_| panic!("JSON body: {body:?}"))
}

#[tokio::test]
async fn a_long_poll_returns_a_command_published_while_it_waits_and_204_without_one() {
    let setup = Setup::start(&["meter-1", "meter-9"], |_| {}).await;
    let addr = setup.http();
    let waiting = tokio::spawn(async move {
        request(
            addr,
            "GET",
            "/v1/commands?waitSeconds=20",
            Some("meter-1"),
            b"",
        )
        .await
    });
    setup.wait_consumers(1).await;
    let command = Cmd::new("h-1", "relay/set", b"{\"on\":true}");
    assert_eq!(setup.sender.send("meter-1", &command).await, Sent::Queued);
    let (status, body) = waiting.await.expect("poll");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        json(&body),
        serde_json::json!({
            "commandId": "h-1",
            "name": "relay/set",
            "topic": "commands/meter-1/relay/set",
            "contentType": "application/json",
            "payload": {"on": true},
            "responseRequired": false,
        })
    );
    // Taken and acknowledged: the next poll has nothing.
    assert_eq!(poll(&setup, "meter-1", 1).await.0, 204);
    // A command queued between polls (the queue persists) is returned at once, binary
    // payloads as base64.
    let mut binary = Cmd::new("h-2", "blob", &[0xFF, 0x00]);
    binary.content_type = Some("application/octet-stream".into());
    assert_eq!(setup.sender.send("meter-1", &binary).await, Sent::Queued);
    let (status, body) = poll(&setup, "meter-1", 5).await;
    assert_eq!(status, 200);
    let answer = json(&body);
    assert_eq!(answer["payload"], "/wA=");
    assert_eq!(answer["payloadEncoding"], "base64");
    assert_eq!(
        setup.metric("tributary_gateway_commands_delivered_total{protocol=\"http\"}"),
        2.0
    );
    assert_eq!(
        request(setup.http(), "GET", "/v1/commands", None, b"")
            .await
            .0,
        401
    );
    setup.wait_consumers(0).await;
    setup.finish().await;
}

#[tokio::test]
async fn an_http_device_answers_a_request_through_the_response_endpoint() {
    let setup = Setup::start(&["meter-2"], |_| {}).await;
    // The first poll makes the device's queue.
    assert_eq!(poll(&setup, "meter-2", 0).await.0, 204);
    let command = Cmd::new("h-req", "reading/get", b"{}");
    let (sent, waiter) = setup.sender.request("meter-2", &command).await;
    assert_eq!(sent, Sent::Queued);
    let (status, body) = poll(&setup, "meter-2", 5).await;
    assert_eq!(status, 200);
    assert_eq!(json(&body)["responseRequired"], true);
    let path = "/v1/commands/h-req/response?status=201";
    let (status, body) = request(setup.http(), "POST", path, Some("meter-2"), b"42 kWh").await;
    assert_eq!(status, 202, "{body}");
    let reply = waiter.reply(DEADLINE).await.expect("reply");
    assert_eq!(reply.status, Some(201));
    assert_eq!(reply.correlation_id.as_deref(), Some("h-req"));
    assert_eq!(reply.device.as_deref(), Some("meter-2"));
    assert_eq!(reply.content_type.as_deref(), Some("text/plain"));
    assert_eq!(reply.payload, b"42 kWh");
    let again = request(setup.http(), "POST", path, Some("meter-2"), b"x").await;
    assert_eq!(again.0, 404, "answered already");
    let bad = "/v1/commands/h-req/response?status=99";
    assert_eq!(
        request(setup.http(), "POST", bad, Some("meter-2"), b"x")
            .await
            .0,
        400
    );
    setup.finish().await;
}

#[tokio::test]
async fn polls_past_max_long_polls_get_503_and_a_devices_second_poll_409_while_others_work() {
    let devices = ["meter-3", "meter-4", "meter-5", "press-1", "press-9"];
    let setup = Setup::start(&devices, |config| {
        config.commands.max_long_polls = 2;
    })
    .await;
    let addr = setup.http();
    let long = |device: &'static str| {
        tokio::spawn(async move {
            request(
                addr,
                "GET",
                "/v1/commands?waitSeconds=20",
                Some(device),
                b"",
            )
            .await
        })
    };
    let first = long("meter-3");
    let second = long("meter-4");
    setup.wait_consumers(2).await;
    assert_eq!(poll(&setup, "meter-5", 1).await.0, 503, "maxLongPolls");
    assert_eq!(
        poll(&setup, "meter-3", 1).await.0,
        409,
        "one poll per device"
    );
    // MQTT devices and ingest are served meanwhile.
    let mut mqtt = Client::connect(setup.mqtt(), &Login::clean(true, "m", "press-1")).await;
    assert_eq!(mqtt.subscribe(1, &[("commands/press-1/#", 1)]).await, [1]);
    assert_eq!(
        setup
            .sender
            .send("press-1", &Cmd::new("m-1", "go", b"{}"))
            .await,
        Sent::Queued
    );
    assert_eq!(mqtt.next_publish().await.topic, "commands/press-1/go");
    setup.assert_ingest_works("press-9").await;
    // A command ends a poll; its slot serves the next device.
    for (device, poll_task) in [("meter-3", first), ("meter-4", second)] {
        let command = Cmd::new(&format!("to-{device}"), "go", b"{}");
        assert_eq!(setup.sender.send(device, &command).await, Sent::Queued);
        assert_eq!(poll_task.await.expect("poll").0, 200);
    }
    assert_eq!(poll(&setup, "meter-5", 0).await.0, 204);
    setup.finish().await;
}
