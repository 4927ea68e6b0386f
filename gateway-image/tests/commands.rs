//! Commands to online devices, on a real broker: delivery to MQTT 3.1.1 and 5 devices
//! (mosquitto_sub and a raw client), what a device may subscribe to, the bound on
//! subscriptions, QoS, commands nobody takes (returned to the sender) and a device on the
//! other of two gateways.

mod commands_fixture;
mod common;

use std::process::Stdio;
use std::time::Duration;

use commands_fixture::mqtt::{Client, Login};
use commands_fixture::*;
use common::*;
use tokio::io::AsyncReadExt;

/// Starts `mosquitto_sub` for one command of `device`; its output is `format` per message.
fn mosquitto_sub(
    setup: &Setup,
    version: &str,
    device: &str,
    format: &str,
) -> tokio::process::Child {
    tokio::process::Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &setup.mqtt().port().to_string()])
        .args(["-V", version, "-i", &format!("sub-{device}"), "-u", device])
        .args(["-P", &password(device), "-q", "1", "-C", "1", "-W", "20"])
        .args(["-t", &format!("commands/{device}/#"), "-F", format])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto_sub runs (tests/services/install-clients.sh installs it)")
}

async fn output(mut child: tokio::process::Child) -> String {
    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .expect("mosquitto_sub exits")
        .expect("mosquitto_sub status");
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        stdout.read_to_string(&mut out).await.expect("stdout");
    }
    let mut err = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        stderr.read_to_string(&mut err).await.expect("stderr");
    }
    assert!(status.success(), "mosquitto_sub failed: {out} {err}");
    out.trim_end().to_owned()
}

#[tokio::test]
async fn a_command_reaches_a_311_device_subscribed_with_mosquitto_sub() {
    let setup = Setup::start(&["press-1", "press-9"], |_| {}).await;
    let child = mosquitto_sub(&setup, "mqttv311", "press-1", "%t %p");
    setup.wait_consumers(1).await;
    let command = Cmd::new("c-311", "fan/set", b"{\"on\":true}");
    assert_eq!(setup.sender.send("press-1", &command).await, Sent::Queued);
    assert_eq!(
        output(child).await,
        "commands/press-1/fan/set {\"on\":true}"
    );
    assert!(
        eventually(DEADLINE, || async {
            setup.metric("tributary_gateway_commands_acknowledged_total{protocol=\"mqtt\"}") == 1.0
        })
        .await,
        "the command was acknowledged to the broker after the device's PUBACK"
    );
    assert_eq!(
        setup.metric("tributary_gateway_commands_delivered_total{protocol=\"mqtt\"}"),
        1.0
    );
    setup.assert_ingest_works("press-9").await;
    setup.finish().await;
}

#[tokio::test]
async fn a_command_reaches_an_mqtt5_device_with_its_properties() {
    let setup = Setup::start(&["press-1", "press-2"], |_| {}).await;
    let child = mosquitto_sub(&setup, "mqttv5", "press-1", "%t %C %p");
    setup.wait_consumers(1).await;
    let command = Cmd::new("c-v5", "reboot", b"{\"delay\":5}");
    assert_eq!(setup.sender.send("press-1", &command).await, Sent::Queued);
    assert_eq!(
        output(child).await,
        "commands/press-1/reboot application/json {\"delay\":5}"
    );
    // A raw MQTT 5 client sees the remaining time-to-live too.
    let mut client = Client::connect(setup.mqtt(), &Login::clean(true, "raw", "press-2")).await;
    assert_eq!(client.subscribe(1, &[("commands/press-2/#", 1)]).await, [1]);
    let command = Cmd::new("c-v5-raw", "fan/set", b"{}").ttl(30_000);
    assert_eq!(setup.sender.send("press-2", &command).await, Sent::Queued);
    let received = client.next_publish().await;
    assert_eq!(received.topic, "commands/press-2/fan/set");
    assert_eq!(received.qos, 1);
    assert!(!received.dup);
    assert_eq!(received.content_type.as_deref(), Some("application/json"));
    assert!(
        received
            .message_expiry
            .is_some_and(|s| (1..=30).contains(&s)),
        "{received:?}"
    );
    assert_eq!(received.response_topic, None, "a one-way command");
    client.puback(received.packet_id.expect("QoS 1")).await;
    setup.finish().await;
}

#[tokio::test]
async fn a_device_cannot_subscribe_to_another_devices_commands_nor_to_everything() {
    let setup = Setup::start(&["press-1", "press-2", "press-9"], |_| {}).await;
    let filters = [
        ("commands/press-2/#", 1),
        ("#", 1),
        ("commands/+/#", 1),
        ("commands/press-1/fan/+", 0),
        ("$share/g/commands/press-1/#", 1),
    ];
    let mut v5 = Client::connect(setup.mqtt(), &Login::clean(true, "a", "press-1")).await;
    assert_eq!(
        v5.subscribe(3, &filters).await,
        [0x87, 0x87, 0x87, 0x00, 0x9E]
    );
    let mut v3 = Client::connect(setup.mqtt(), &Login::clean(false, "b", "press-2")).await;
    let filters = [
        ("commands/press-1/#", 1),
        ("#", 0),
        ("commands/press-2/#", 2),
    ];
    assert_eq!(
        v3.subscribe(4, &filters).await,
        [0x80, 0x80, 0x01],
        "QoS 2 is granted as 1"
    );
    assert_eq!(
        setup.metric(
            "tributary_gateway_command_subscriptions_refused_total{reason=\"not_authorized\"}"
        ),
        5.0
    );
    assert_eq!(
        setup.metric("tributary_gateway_command_subscriptions_refused_total{reason=\"shared\"}"),
        1.0
    );
    // press-2's command goes to press-2 only.
    let command = Cmd::new("c-mine", "fan/set", b"{}");
    assert_eq!(setup.sender.send("press-2", &command).await, Sent::Queued);
    assert_eq!(v3.next_publish().await.topic, "commands/press-2/fan/set");
    assert_eq!(
        v5.next_publish_within(Duration::from_millis(500)).await,
        None
    );
    // The sessions go on.
    v5.raw.send(&[0xC0, 0]).await;
    assert_eq!(v5.raw.read_packet().await, Some(vec![0xD0, 0]));
    setup.assert_ingest_works("press-9").await;
    setup.finish().await;
}

#[tokio::test]
async fn subscriptions_past_the_session_bound_are_refused_while_another_device_keeps_working() {
    let setup = Setup::start(&["press-1", "press-2", "press-9"], |_| {}).await;
    let names: Vec<String> = (0..17).map(|n| format!("commands/press-1/n{n}")).collect();
    let filters: Vec<(&str, u8)> = names.iter().map(|name| (name.as_str(), 1)).collect();
    let mut greedy = Client::connect(setup.mqtt(), &Login::clean(true, "g", "press-1")).await;
    let codes = greedy.subscribe(1, &filters[..16]).await;
    assert_eq!(codes, vec![1; 16]);
    assert_eq!(greedy.subscribe(2, &filters[16..]).await, [0x97]);
    assert_eq!(
        greedy.subscribe(3, &[("commands/press-1/n0", 0)]).await,
        [0],
        "a held filter can still be renewed"
    );
    let mut v3 = Client::connect(setup.mqtt(), &Login::clean(false, "h", "press-1")).await;
    let codes = v3.subscribe(1, &filters).await;
    assert_eq!(codes[16], 0x80, "3.1.1 refuses the 17th too");
    // Another device is served all along.
    let mut other = Client::connect(setup.mqtt(), &Login::clean(true, "o", "press-2")).await;
    assert_eq!(other.subscribe(1, &[("commands/press-2/#", 1)]).await, [1]);
    let command = Cmd::new("c-other", "fan/set", b"{}");
    assert_eq!(setup.sender.send("press-2", &command).await, Sent::Queued);
    assert_eq!(other.next_publish().await.topic, "commands/press-2/fan/set");
    setup.assert_ingest_works("press-9").await;
    setup.finish().await;
}

#[tokio::test]
async fn qos_follows_the_best_subscription_and_unmatched_commands_are_undeliverable() {
    let setup = Setup::start(&["press-1"], |_| {}).await;
    let mut client = Client::connect(setup.mqtt(), &Login::clean(true, "q", "press-1")).await;
    assert_eq!(
        client
            .subscribe(
                1,
                &[
                    ("commands/press-1/fan/+", 0),
                    ("commands/press-1/fan/set", 1)
                ]
            )
            .await,
        [0, 1]
    );
    for (id, name) in [("c1", "reboot"), ("c2", "fan/speed"), ("c3", "fan/set")] {
        let command = Cmd::new(id, name, b"{}");
        assert_eq!(setup.sender.send("press-1", &command).await, Sent::Queued);
    }
    let speed = client.next_publish().await;
    assert_eq!(
        (speed.topic.as_str(), speed.qos, speed.packet_id),
        ("commands/press-1/fan/speed", 0, None)
    );
    let set = client.next_publish().await;
    assert_eq!(
        (set.topic.as_str(), set.qos),
        ("commands/press-1/fan/set", 1)
    );
    client.puback(set.packet_id.expect("QoS 1")).await;
    assert_eq!(
        setup.metric("tributary_gateway_commands_undeliverable_total{reason=\"no_subscription\"}"),
        1.0,
        "reboot matched no subscription"
    );
    // Unsubscribed: the next fan command matches nothing either.
    let unsuback = client
        .unsubscribe(2, &["commands/press-1/fan/+", "nothing/here"])
        .await;
    assert_eq!(unsuback, [0xB0, 5, 0, 2, 0, 0x00, 0x11]);
    let command = Cmd::new("c4", "fan/speed", b"{}");
    assert_eq!(setup.sender.send("press-1", &command).await, Sent::Queued);
    assert!(
        eventually(DEADLINE, || async {
            setup.metric(
                "tributary_gateway_commands_undeliverable_total{reason=\"no_subscription\"}",
            ) == 2.0
        })
        .await
    );
    assert!(
        eventually(DEADLINE, || async {
            setup.metric("tributary_gateway_commands_acknowledged_total{protocol=\"mqtt\"}") == 2.0
        })
        .await,
        "QoS 0 acknowledged once written, QoS 1 after the PUBACK"
    );
    setup.finish().await;
}

#[tokio::test]
async fn a_command_for_a_device_without_a_queue_is_returned_to_the_sender() {
    let setup = Setup::start(&["press-1"], |_| {}).await;
    let command = Cmd::new("c-nobody", "fan/set", b"{}");
    assert_eq!(setup.sender.send("press-1", &command).await, Sent::Returned);
    assert_eq!(
        setup.sender.send("never-seen", &command).await,
        Sent::Returned
    );
    // A clean session's queue goes with it: afterwards commands are returned again.
    let mut client = Client::connect(setup.mqtt(), &Login::clean(false, "c", "press-1")).await;
    assert_eq!(client.subscribe(1, &[("commands/press-1/#", 1)]).await, [1]);
    assert_eq!(setup.sender.send("press-1", &command).await, Sent::Queued);
    client.next_publish().await;
    client.disconnect().await;
    setup.wait_consumers(0).await;
    assert!(
        eventually(DEADLINE, || async {
            setup.sender.send("press-1", &command).await == Sent::Returned
        })
        .await,
        "the clean session's queue was deleted when it ended"
    );
    setup.finish().await;
}

#[tokio::test]
async fn a_command_reaches_a_device_connected_to_the_other_gateway() {
    let first = Setup::start(&["press-1", "press-9"], |_| {}).await;
    let second = Setup::start_for(&first.tenant, &["press-1", "press-9"], |_| {}).await;
    let mut client = Client::connect(second.mqtt(), &Login::clean(true, "x", "press-1")).await;
    assert_eq!(client.subscribe(1, &[("commands/press-1/#", 1)]).await, [1]);
    // The sender knows no gateway: the broker routes by device id.
    let command = Cmd::new("c-elsewhere", "fan/set", b"{\"on\":1}");
    assert_eq!(first.sender.send("press-1", &command).await, Sent::Queued);
    let received = client.next_publish().await;
    assert_eq!(received.payload, b"{\"on\":1}");
    assert_eq!(first.consumers(), 0);
    assert_eq!(second.consumers(), 1);
    first.assert_ingest_works("press-9").await;
    second.finish().await;
    first.finish().await;
}

#[tokio::test]
async fn with_commands_disabled_every_subscription_is_refused_and_nothing_is_declared() {
    let setup = Setup::start(&["press-1"], |_| {}).await;
    let tenant = setup.tenant.clone();
    let disabled = Setup::start_for(&tenant, &["press-1"], |config| {
        config.commands.enabled = false;
    })
    .await;
    let mut v5 = Client::connect(disabled.mqtt(), &Login::clean(true, "d", "press-1")).await;
    assert_eq!(v5.subscribe(1, &[("commands/press-1/#", 1)]).await, [0x87]);
    let mut v3 = Client::connect(disabled.mqtt(), &Login::clean(false, "e", "press-1")).await;
    assert_eq!(v3.subscribe(1, &[("commands/press-1/#", 1)]).await, [0x80]);
    assert_eq!(
        disabled
            .metric("tributary_gateway_command_subscriptions_refused_total{reason=\"disabled\"}"),
        2.0
    );
    assert_eq!(disabled.consumers(), 0);
    disabled.finish().await;
    setup.finish().await;
}

#[tokio::test]
async fn no_more_commands_are_in_flight_than_the_clients_receive_maximum_and_they_stay_in_order() {
    let setup = Setup::start(&["press-1"], |_| {}).await;
    let login = Login {
        receive_maximum: Some(1),
        ..Login::clean(true, "rm", "press-1")
    };
    let mut client = Client::connect(setup.mqtt(), &login).await;
    assert_eq!(client.subscribe(1, &[("commands/press-1/#", 1)]).await, [1]);
    for n in 0..3 {
        let command = Cmd::new(&format!("c{n}"), "step", format!("{n}").as_bytes());
        assert_eq!(setup.sender.send("press-1", &command).await, Sent::Queued);
    }
    for n in 0..3 {
        let received = client.next_publish().await;
        assert_eq!(
            received.payload,
            format!("{n}").as_bytes(),
            "in queue order"
        );
        assert_eq!(
            client.next_publish_within(Duration::from_millis(300)).await,
            None,
            "one in flight until the PUBACK"
        );
        client.puback(received.packet_id.expect("QoS 1")).await;
    }
    setup.finish().await;
}

#[tokio::test]
async fn a_command_larger_than_the_clients_maximum_packet_size_is_not_sent() {
    let setup = Setup::start(&["press-1"], |_| {}).await;
    let login = Login {
        maximum_packet_size: Some(128),
        ..Login::clean(true, "mp", "press-1")
    };
    let mut client = Client::connect(setup.mqtt(), &login).await;
    assert_eq!(client.subscribe(1, &[("commands/press-1/#", 1)]).await, [1]);
    let big = Cmd::new("c-big", "firmware", &[b'x'; 512]);
    assert_eq!(setup.sender.send("press-1", &big).await, Sent::Queued);
    let small = Cmd::new("c-small", "ping", b"{}");
    assert_eq!(setup.sender.send("press-1", &small).await, Sent::Queued);
    let received = client.next_publish().await;
    assert_eq!(
        received.topic, "commands/press-1/ping",
        "the big one was skipped"
    );
    assert_eq!(
        setup.metric("tributary_gateway_commands_undeliverable_total{reason=\"too_large\"}"),
        1.0
    );
    setup.finish().await;
}
