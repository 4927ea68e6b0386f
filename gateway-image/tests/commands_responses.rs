//! Requests and responses, on a real broker: the sender waits on RabbitMQ's direct
//! reply-to; an MQTT 5 device gets Response Topic and Correlation Data, a 3.1.1 device the
//! request topic, and each answers; unknown, repeated and malformed responses; the bound on
//! pending requests.

mod commands_fixture;
mod common;

use std::time::Duration;

use commands_fixture::mqtt::{Client, Login};
use commands_fixture::*;
use common::*;

async fn subscribed(setup: &Setup, login: &Login<'_>) -> Client {
    let mut client = Client::connect(setup.mqtt(), login).await;
    let filter = format!("commands/{}/#", login.device);
    assert_eq!(client.subscribe(1, &[(filter.as_str(), 1)]).await, [1]);
    client
}

#[tokio::test]
async fn a_v5_device_answers_a_request_through_its_response_topic() {
    let setup = Setup::start(&["press-1"], |_| {}).await;
    let mut device = subscribed(&setup, &Login::clean(true, "r", "press-1")).await;
    let command = Cmd::new("req-1", "config/get", b"{\"key\":\"rate\"}");
    let (sent, waiter) = setup.sender.request("press-1", &command).await;
    assert_eq!(sent, Sent::Queued);
    let request = device.next_publish().await;
    assert_eq!(request.topic, "commands/press-1/config/get");
    assert_eq!(
        request.response_topic.as_deref(),
        Some("commands/press-1/res/req-1")
    );
    assert_eq!(request.correlation_data.as_deref(), Some(&b"req-1"[..]));
    device.puback(request.packet_id.expect("QoS 1")).await;
    let puback = device
        .publish("commands/press-1/res/req-1", 9, b"{\"rate\":5}")
        .await;
    assert_eq!(puback, [0x40, 2, 0, 9], "forwarded: success");
    let reply = waiter
        .reply(DEADLINE)
        .await
        .expect("the sender gets the reply");
    assert_eq!(
        reply,
        Reply {
            correlation_id: Some("req-1".into()),
            status: Some(200),
            device: Some("press-1".into()),
            content_type: Some("text/plain".into()),
            payload: b"{\"rate\":5}".to_vec(),
        }
    );
    assert_eq!(
        setup.metric("tributary_gateway_command_responses_total{result=\"forwarded\"}"),
        1.0
    );
    setup.finish().await;
}

#[tokio::test]
async fn a_311_device_gets_the_request_topic_and_answers_with_a_status() {
    let setup = Setup::start(&["press-2"], |_| {}).await;
    let mut device = subscribed(&setup, &Login::clean(false, "r", "press-2")).await;
    let command = Cmd::new("req-2", "fan/set", b"{\"on\":true}");
    let (sent, waiter) = setup.sender.request("press-2", &command).await;
    assert_eq!(sent, Sent::Queued);
    let request = device.next_publish().await;
    assert_eq!(request.topic, "commands/press-2/req/req-2/fan/set");
    device.puback(request.packet_id.expect("QoS 1")).await;
    let puback = device
        .publish("commands/press-2/res/req-2/409", 4, b"busy")
        .await;
    assert_eq!(puback, [0x40, 2, 0, 4]);
    let reply = waiter.reply(DEADLINE).await.expect("reply");
    assert_eq!(reply.status, Some(409));
    assert_eq!(reply.correlation_id.as_deref(), Some("req-2"));
    assert_eq!(reply.payload, b"busy");
    assert_eq!(reply.content_type, None, "3.1.1 has no content type");
    setup.finish().await;
}

#[tokio::test]
async fn unknown_repeated_and_malformed_responses_are_acknowledged_and_counted() {
    let setup = Setup::start(&["press-3", "press-9"], |_| {}).await;
    let mut device = subscribed(&setup, &Login::clean(true, "r", "press-3")).await;
    assert_eq!(
        device
            .publish("commands/press-3/res/nobody-asked", 1, b"x")
            .await,
        [0x40, 3, 0, 1, 0x10],
        "no matching subscribers"
    );
    let command = Cmd::new("req-3", "ping", b"{}");
    let (_, waiter) = setup.sender.request("press-3", &command).await;
    let request = device.next_publish().await;
    device.puback(request.packet_id.expect("QoS 1")).await;
    assert_eq!(
        device
            .publish("commands/press-3/res/req-3", 2, b"pong")
            .await,
        [0x40, 2, 0, 2]
    );
    assert_eq!(
        device
            .publish("commands/press-3/res/req-3", 3, b"pong")
            .await,
        [0x40, 3, 0, 3, 0x10],
        "answered already"
    );
    assert_eq!(
        device
            .publish("commands/press-3/res/req-3/999", 4, b"x")
            .await,
        [0x40, 3, 0, 4, 0x90],
        "status out of range"
    );
    // Another device's response topic is no response of this one: a refused publish.
    assert_eq!(
        device.publish("commands/press-9/res/req-3", 5, b"x").await,
        [0x40, 3, 0, 5, 0x87]
    );
    assert!(waiter.reply(DEADLINE).await.is_some());
    let mut v3 = Client::connect(setup.mqtt(), &Login::clean(false, "v3", "press-3")).await;
    assert_eq!(
        v3.publish("commands/press-3/res/unknown", 6, b"x").await,
        [0x40, 2, 0, 6],
        "3.1.1 is simply acknowledged"
    );
    assert_eq!(
        setup.metric("tributary_gateway_command_responses_total{result=\"unknown\"}"),
        3.0
    );
    assert_eq!(
        setup.metric("tributary_gateway_command_responses_total{result=\"invalid\"}"),
        1.0
    );
    setup.assert_ingest_works("press-9").await;
    setup.finish().await;
}

#[tokio::test]
async fn past_max_pending_responses_the_oldest_requests_are_forgotten() {
    let setup = Setup::start(&["press-4", "press-5", "press-9"], |config| {
        config.commands.max_pending_responses = 2;
    })
    .await;
    let mut device = subscribed(&setup, &Login::clean(true, "r", "press-4")).await;
    let mut waiters = Vec::new();
    for id in ["old", "mid", "new"] {
        let (sent, waiter) = setup
            .sender
            .request("press-4", &Cmd::new(id, "ping", b"{}"))
            .await;
        assert_eq!(sent, Sent::Queued);
        let request = device.next_publish().await;
        device.puback(request.packet_id.expect("QoS 1")).await;
        waiters.push(waiter);
    }
    assert_eq!(
        device.publish("commands/press-4/res/old", 1, b"late").await,
        [0x40, 3, 0, 1, 0x10],
        "the oldest request was forgotten"
    );
    let new = waiters.pop().expect("new");
    let _mid = waiters.pop().expect("mid");
    let old = waiters.pop().expect("old");
    assert_eq!(
        device.publish("commands/press-4/res/new", 2, b"ok").await,
        [0x40, 2, 0, 2]
    );
    assert_eq!(new.reply(DEADLINE).await.expect("reply").payload, b"ok");
    assert_eq!(old.reply(Duration::from_millis(300)).await, None);
    // Another device's requests still go round.
    let mut other = subscribed(&setup, &Login::clean(false, "o", "press-5")).await;
    let (_, waiter) = setup
        .sender
        .request("press-5", &Cmd::new("other", "ping", b"{}"))
        .await;
    let request = other.next_publish().await;
    other.puback(request.packet_id.expect("QoS 1")).await;
    assert_eq!(
        other
            .publish("commands/press-5/res/other", 3, b"pong")
            .await,
        [0x40, 2, 0, 3]
    );
    assert_eq!(
        waiter.reply(DEADLINE).await.expect("reply").payload,
        b"pong"
    );
    setup.assert_ingest_works("press-9").await;
    setup.finish().await;
}
