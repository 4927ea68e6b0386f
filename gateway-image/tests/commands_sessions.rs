//! Persistent sessions and commands, on a real broker: commands queued while a device was
//! offline arrive in order when it comes back, an unacknowledged QoS 1 command comes again
//! with DUP, an expired one is reported instead of delivered, a clean start discards the
//! old session, a takeover and a drain hand commands over, and a full queue refuses the
//! sender while other devices go on.

mod commands_fixture;
mod common;
mod registry_fixture;

use std::time::Duration;

use commands_fixture::mqtt::{Client, Login};
use commands_fixture::*;
use common::*;
use registry_fixture::{now_ms, status, table, Fixture};

async fn subscribed(setup: &Setup, login: &Login<'_>) -> Client {
    let mut client = Client::connect(setup.mqtt(), login).await;
    let filter = format!("commands/{}/#", login.device);
    assert_eq!(client.subscribe(1, &[(filter.as_str(), 1)]).await, [1]);
    client
}

#[tokio::test]
async fn a_persistent_device_gets_the_commands_sent_while_offline_in_order() {
    let setup = Setup::start(&["press-3", "press-5"], |_| {}).await;
    for (v5, device) in [(false, "press-3"), (true, "press-5")] {
        let login = Login::persistent(v5, device, device);
        subscribed(&setup, &login).await.disconnect().await;
        setup.wait_consumers(0).await;
        for n in 0..5 {
            let command = Cmd::new(&format!("c{n}"), "step", format!("{n}").as_bytes());
            assert_eq!(setup.sender.send(device, &command).await, Sent::Queued);
        }
        // Back without subscribing again: the session is resumed.
        let mut client = Client::connect(setup.mqtt(), &login).await;
        assert!(client.session_present, "{device}: Session Present");
        if v5 {
            assert_eq!(
                client.session_expiry,
                Some(600),
                "the queue's expiry is what holds"
            );
        }
        for n in 0..5 {
            let received = client.next_publish().await;
            assert_eq!(
                received.payload,
                format!("{n}").as_bytes(),
                "{device}: in order"
            );
            assert_eq!((received.qos, received.dup), (1, false));
            client.puback(received.packet_id.expect("QoS 1")).await;
        }
        client.disconnect().await;
    }
    setup.finish().await;
}

#[tokio::test]
async fn a_clean_connection_that_only_publishes_leaves_the_devices_queued_commands_alone() {
    let setup = Setup::start(&["press-6"], |_| {}).await;
    let login = Login::persistent(true, "press-6", "press-6");
    subscribed(&setup, &login).await.disconnect().await;
    setup.wait_consumers(0).await;
    let command = Cmd::new("c-kept", "step", b"1");
    assert_eq!(setup.sender.send("press-6", &command).await, Sent::Queued);
    // The same device publishes from a second, clean connection (another client id) and
    // hangs up: its clean start is about its own session, not the device's queue.
    let mut publisher =
        Client::connect(setup.mqtt(), &Login::clean(true, "press-6-pub", "press-6")).await;
    assert!(!publisher.session_present);
    publisher
        .publish("devices/press-6/telemetry", 1, b"{}")
        .await;
    publisher.disconnect().await;
    let mut client = Client::connect(setup.mqtt(), &login).await;
    assert!(
        client.session_present,
        "the persistent session is still there"
    );
    let received = client.next_publish().await;
    assert_eq!(received.payload, b"1", "the command queued while offline");
    client.puback(received.packet_id.expect("QoS 1")).await;
    client.disconnect().await;
    setup.finish().await;
}

#[tokio::test]
async fn an_unacknowledged_qos1_command_is_redelivered_with_dup_on_the_next_connection() {
    let setup = Setup::start(&["press-4"], |_| {}).await;
    let login = Login::persistent(false, "press-4", "press-4");
    let mut client = subscribed(&setup, &login).await;
    let command = Cmd::new("c-dup", "valve/close", b"{}");
    assert_eq!(setup.sender.send("press-4", &command).await, Sent::Queued);
    let first = client.next_publish().await;
    assert!(!first.dup);
    // Gone without a PUBACK (the connection just drops).
    drop(client);
    setup.wait_consumers(0).await;
    let mut client = Client::connect(setup.mqtt(), &login).await;
    assert!(client.session_present);
    let again = client.next_publish().await;
    assert_eq!(again.topic, "commands/press-4/valve/close");
    assert!(again.dup, "redelivered with DUP");
    client.puback(again.packet_id.expect("QoS 1")).await;
    client.disconnect().await;
    setup.wait_consumers(0).await;
    // Acknowledged now: not sent a third time.
    let mut client = Client::connect(setup.mqtt(), &login).await;
    assert_eq!(
        client.next_publish_within(Duration::from_millis(700)).await,
        None
    );
    setup.finish().await;
}

#[tokio::test]
async fn a_command_that_expires_while_the_device_is_offline_is_reported_not_delivered() {
    let fixture = Fixture::new();
    let secret = password("press-1");
    fixture.write_table(&table(
        now_ms(),
        serde_json::json!([{"id": "press-1", "credentials": [fixture.generated(&secret, None)]}]),
    ));
    let files = fixture.files.clone();
    let setup = Setup::start(&["press-1", "press-9"], move |config| {
        config.auth.registry = Some(files);
    })
    .await;
    let login = Login::persistent(true, "p1", "press-1");
    subscribed(&setup, &login).await.disconnect().await;
    setup.wait_consumers(0).await;
    let short = Cmd::new("c-short", "reboot", b"{}").ttl(200);
    assert_eq!(setup.sender.send("press-1", &short).await, Sent::Queued);
    assert!(
        eventually(DEADLINE, || async {
            setup.metric("tributary_gateway_commands_expired_total") == 1.0
        })
        .await,
        "the expiry is counted"
    );
    let report = status(&setup.running, &fixture.token).await;
    let device = &report["devices"][0];
    assert_eq!(device["id"], "press-1");
    assert_eq!(device["commandsExpired"], 1, "{report}");
    // The device comes back: the expired command is not delivered, a later one is.
    let mut client = Client::connect(setup.mqtt(), &login).await;
    assert!(client.session_present);
    let fresh = Cmd::new("c-fresh", "fan/set", b"{}");
    assert_eq!(setup.sender.send("press-1", &fresh).await, Sent::Queued);
    let received = client.next_publish().await;
    assert_eq!(received.topic, "commands/press-1/fan/set");
    setup.assert_ingest_works("press-9").await;
    setup.finish().await;
}

#[tokio::test]
async fn a_clean_start_discards_the_old_session_and_its_commands() {
    let setup = Setup::start(&["press-6"], |_| {}).await;
    let persistent = Login::persistent(true, "p6", "press-6");
    subscribed(&setup, &persistent).await.disconnect().await;
    setup.wait_consumers(0).await;
    let stale = Cmd::new("c-stale", "reboot", b"{}");
    assert_eq!(setup.sender.send("press-6", &stale).await, Sent::Queued);
    let clean = Login::clean(true, "p6", "press-6");
    let mut client = subscribed(&setup, &clean).await;
    assert!(!client.session_present);
    let fresh = Cmd::new("c-fresh", "fan/set", b"{}");
    assert_eq!(setup.sender.send("press-6", &fresh).await, Sent::Queued);
    let received = client.next_publish().await;
    assert_eq!(
        received.topic, "commands/press-6/fan/set",
        "the stale one is gone"
    );
    setup.finish().await;
}

#[tokio::test]
async fn a_takeover_hands_the_unacknowledged_command_to_the_new_connection() {
    let setup = Setup::start(&["press-7"], |_| {}).await;
    let login = Login::persistent(true, "same-client", "press-7");
    let mut old = subscribed(&setup, &login).await;
    let command = Cmd::new("c-handover", "valve/open", b"{}");
    assert_eq!(setup.sender.send("press-7", &command).await, Sent::Queued);
    assert!(!old.next_publish().await.dup);
    let mut new = Client::connect(setup.mqtt(), &login).await;
    assert!(new.session_present);
    let disconnect = old.raw.read_packet().await.expect("DISCONNECT");
    assert_eq!(disconnect[..3], [0xE0, 2, 0x8E], "session taken over");
    let received = new.next_publish().await;
    assert_eq!(received.topic, "commands/press-7/valve/open");
    assert!(received.dup);
    new.puback(received.packet_id.expect("QoS 1")).await;
    setup.wait_consumers(1).await;
    setup.finish().await;
}

#[tokio::test]
async fn a_drain_returns_held_commands_for_the_devices_next_gateway() {
    let first = Setup::start(&["press-8"], |_| {}).await;
    let second = Setup::start_for(&first.tenant, &["press-8"], |_| {}).await;
    let login = Login::persistent(true, "p8", "press-8");
    let mut client = subscribed(&first, &login).await;
    let command = Cmd::new("c-drain", "valve/open", b"{}");
    assert_eq!(first.sender.send("press-8", &command).await, Sent::Queued);
    assert!(!client.next_publish().await.dup);
    let Setup { running, .. } = first;
    running.drain(Duration::from_secs(10)).await;
    let disconnect = client.raw.read_packet().await.expect("DISCONNECT");
    assert_eq!(disconnect[..3], [0xE0, 2, 0x8B], "server shutting down");
    let mut client = Client::connect(second.mqtt(), &login).await;
    assert!(client.session_present);
    let received = client.next_publish().await;
    assert_eq!(received.topic, "commands/press-8/valve/open");
    assert!(received.dup);
    second.finish().await;
}

#[tokio::test]
async fn past_max_queued_per_device_the_sender_is_refused_while_another_device_goes_on() {
    let setup = Setup::start(&["press-1", "press-2", "press-9"], |config| {
        config.commands.max_queued_per_device = 3;
    })
    .await;
    let offline = Login::persistent(false, "p1", "press-1");
    subscribed(&setup, &offline).await.disconnect().await;
    setup.wait_consumers(0).await;
    for n in 0..3 {
        let command = Cmd::new(&format!("c{n}"), "step", b"{}");
        assert_eq!(setup.sender.send("press-1", &command).await, Sent::Queued);
    }
    let one_more = Cmd::new("c3", "step", b"{}");
    assert_eq!(
        setup.sender.send("press-1", &one_more).await,
        Sent::Refused,
        "the full queue nacks the sender's publish"
    );
    let mut other = subscribed(&setup, &Login::clean(true, "p2", "press-2")).await;
    for n in 0..5 {
        let command = Cmd::new(&format!("o{n}"), "step", b"{}");
        assert_eq!(setup.sender.send("press-2", &command).await, Sent::Queued);
        let received = other.next_publish().await;
        other.puback(received.packet_id.expect("QoS 1")).await;
    }
    setup.assert_ingest_works("press-9").await;
    // The full device still gets its three.
    let mut back = Client::connect(setup.mqtt(), &offline).await;
    for _ in 0..3 {
        let received = back.next_publish().await;
        back.puback(received.packet_id.expect("QoS 1")).await;
    }
    setup.finish().await;
}
