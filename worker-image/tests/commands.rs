//! The command sink against real RabbitMQ: a worker process consumes envelopes and sends
//! commands to devices whose queues this test declares exactly as a gateway does
//! (`command::device_queue`, `device_queue_arguments`, bound to the tenant's exchange with
//! the device id).

mod common;

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use serde_json::{json, Value};
use tributary_contract::command::{self, CommandLimits, QueueArgument};
use tributary_worker::sinks::command::command_id;

const DEADLINE: Duration = Duration::from_secs(120);

/// A fresh tenant (a namespace name).
fn tenant() -> String {
    unique("t").replace('_', "-")
}

/// The gateway's side of the commands: the tenant's exchange and device queues.
struct Gateway {
    _connection: Connection,
    channel: Channel,
    tenant: String,
}

/// A command as a device's queue holds it.
#[derive(Debug)]
struct Received {
    id: String,
    correlation_id: String,
    name: String,
    sender: String,
    expiration: String,
    content_type: String,
    persistent: bool,
    payload: Value,
}

fn argument(value: QueueArgument) -> AMQPValue {
    match value {
        QueueArgument::Text(text) => AMQPValue::LongString(LongString::from(text.as_str())),
        QueueArgument::Number(n) => AMQPValue::LongLongInt(i64::try_from(n).expect("fits")),
        QueueArgument::Bool(b) => AMQPValue::Boolean(b),
    }
}

impl Gateway {
    /// Connects to the broker at `url` and declares the tenant's exchange, as the tenant's
    /// gateways do.
    async fn connect(url: &str, tenant: &str) -> Gateway {
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("RabbitMQ unreachable ({e}); run rabbitmq.sh start"));
        let channel = connection.create_channel().await.expect("channel");
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(
                command::exchange(tenant).as_str().into(),
                ExchangeKind::Direct,
                durable,
                FieldTable::default(),
            )
            .await
            .expect("exchange.declare");
        Gateway {
            _connection: connection,
            channel,
            tenant: tenant.to_owned(),
        }
    }

    /// Declares and binds a device's queue with the gateway's arguments.
    async fn device_queue(&self, device: &str, max_queued: u32) {
        let limits = CommandLimits {
            max_queued_per_device: max_queued,
            ..CommandLimits::default()
        };
        let mut arguments = FieldTable::default();
        for (key, value) in command::device_queue_arguments(&self.tenant, &limits) {
            arguments.insert(key.as_str().into(), argument(value));
        }
        let queue = command::device_queue(&self.tenant, device);
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        self.channel
            .queue_declare(queue.as_str().into(), durable, arguments)
            .await
            .expect("queue.declare");
        self.channel
            .queue_bind(
                queue.as_str().into(),
                command::exchange(&self.tenant).as_str().into(),
                device.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("queue.bind");
    }

    /// Takes every command queued for a device.
    async fn take_all(&self, device: &str) -> Vec<Received> {
        let queue = command::device_queue(&self.tenant, device);
        let mut taken = Vec::new();
        while let Some(message) = self
            .channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
        {
            taken.push(received(&message.delivery));
        }
        taken
    }
}

fn received(delivery: &lapin::message::Delivery) -> Received {
    let properties = &delivery.properties;
    let text = |v: &Option<lapin::types::ShortString>| {
        v.as_ref().map(|s| s.to_string()).unwrap_or_default()
    };
    let headers = properties.headers().clone().unwrap_or_default();
    let header = |key: &str| match headers.inner().get(key) {
        Some(AMQPValue::LongString(s)) => s.to_string(),
        other => format!("{other:?}"),
    };
    Received {
        id: text(properties.message_id()),
        correlation_id: text(properties.correlation_id()),
        name: header(command::HEADER_NAME),
        sender: header(command::HEADER_SENDER),
        expiration: text(properties.expiration()),
        content_type: text(properties.content_type()),
        persistent: *properties.delivery_mode() == Some(2),
        payload: serde_json::from_slice(&delivery.data).expect("JSON payload"),
    }
}

/// A worker config: `sinks` (YAML list items) after the queue, dead letters to the DLQ.
fn worker_config(scratch: &Scratch, broker: &Broker, sinks: &str, port: u16) -> PathBuf {
    scratch.file(
        "worker.yaml",
        &format!(
            r#"
queue: {{uriFile: {amqp}, name: {queue}, prefetch: 50, concurrency: 2}}
deadLetter: {{routingKey: {dlq}}}
retry: {{maxAttempts: 3, initialBackoffMs: 100, maxBackoffMs: 1000}}
sinks:
{sinks}
http: {{listen: "127.0.0.1:{port}"}}
"#,
            amqp = scratch.file("amqp", &broker.url).display(),
            queue = broker.queue,
            dlq = broker.dead_letter_queue,
        ),
    )
}

/// A command sink `fan` for `tenant`: `fan/set` with the speed, when it is hot.
fn fan_sink(tenant: &str, extra: &str) -> String {
    format!(
        r#"  - command:
      name: fan
      tenant: {tenant}
      command: fan/set
      when: "payload.temp > 30.0"
      payload: "{{'speed': 100, 'temp': payload.temp}}"
      ttlSeconds: 120
      batch: {{maxMessages: 20, maxBytes: 1000000, maxAgeMs: 20}}
{extra}"#
    )
}

async fn commands(worker: &WorkerProcess, sink: &str, result: &str) -> f64 {
    let name = format!("tributary_worker_commands_total{{sink=\"{sink}\",result=\"{result}\"}}");
    worker.metric(&name).await.unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_reading_sends_one_command_with_a_stable_id_and_a_cool_one_none() {
    let broker = Broker::connect("cmd-send").await;
    let tenant = tenant();
    let gateway = Gateway::connect(&broker.url, &tenant).await;
    gateway.device_queue("press-7", 100).await;
    let scratch = Scratch::new("cmd-send");
    let port = free_port();
    let config = worker_config(&scratch, &broker, &fan_sink(&tenant, ""), port);
    let hot = envelope(&new_id(), "press-7", json!({"temp": 35.5}));
    let cool = envelope(&new_id(), "press-7", json!({"temp": 20.0}));
    // The hot message twice (a duplicate, as a redelivery would be): one id for both.
    broker.publish(&[hot.clone(), cool, hot.clone()]).await;
    let worker = WorkerProcess::start(&scratch, &config, port, 1);
    worker.wait_acked(3, DEADLINE).await;

    let taken = gateway.take_all("press-7").await;
    assert_eq!(taken.len(), 2, "one command per hot message: {taken:?}");
    let expected_id = command_id("fan", hot["id"].as_str().expect("id"));
    for command in &taken {
        assert_eq!(command.id, expected_id, "{command:?}");
        assert_eq!(command.correlation_id, expected_id);
        assert_eq!(command.name, "fan/set");
        assert_eq!(command.sender, "worker/fan");
        assert_eq!(command.expiration, "120000");
        assert_eq!(command.content_type, "application/json");
        assert!(command.persistent);
        assert_eq!(command.payload, json!({"speed": 100, "temp": 35.5}));
    }
    assert_eq!(commands(&worker, "fan", "sent").await, 2.0);
    assert_eq!(commands(&worker, "fan", "skipped").await, 1.0);
    assert_eq!(broker.depth(&broker.dead_letter_queue).await, 0);
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_devices_full_queues_and_missing_exchanges_are_counted_not_dead_lettered() {
    let broker = Broker::connect("cmd-absent").await;
    let (tenant, nobody) = (tenant(), tenant());
    let gateway = Gateway::connect(&broker.url, &tenant).await;
    gateway.device_queue("busy", 2).await;
    let scratch = Scratch::new("cmd-absent");
    let port = free_port();
    // A second sink for a tenant whose exchange no gateway declared.
    let ghost = format!(
        r#"  - command: {{name: ghost, tenant: {nobody}, command: reboot, when: "device == 'ghost'"}}"#
    );
    let config = worker_config(&scratch, &broker, &fan_sink(&tenant, &ghost), port);
    let hot = |device: &str| envelope(&new_id(), device, json!({"temp": 40.5}));
    let mut envelopes = vec![hot("offline"), hot("ghost")];
    envelopes.extend((0..3).map(|_| hot("busy")));
    broker.publish(&envelopes).await;
    let worker = WorkerProcess::start(&scratch, &config, port, 1);
    worker.wait_acked(5, DEADLINE).await;

    // offline and ghost: no queue; busy: two queued, the third refused by the full queue.
    assert_eq!(commands(&worker, "fan", "undeliverable").await, 2.0);
    assert_eq!(commands(&worker, "fan", "sent").await, 2.0);
    assert_eq!(commands(&worker, "fan", "queue_full").await, 1.0);
    assert_eq!(commands(&worker, "ghost", "undeliverable").await, 1.0);
    assert_eq!(commands(&worker, "ghost", "skipped").await, 4.0);
    assert_eq!(gateway.take_all("busy").await.len(), 2);
    assert_eq!(broker.depth(&broker.dead_letter_queue).await, 0);
    let log = worker.log_text();
    assert!(log.contains("command undeliverable"), "{log}");
    assert!(log.contains("command exchange does not exist"), "{log}");
    assert!(log.contains("command queue is full"), "{log}");
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_expression_that_fails_dead_letters_the_message_with_the_reason() {
    let broker = Broker::connect("cmd-bad").await;
    let tenant = tenant();
    let gateway = Gateway::connect(&broker.url, &tenant).await;
    gateway.device_queue("fan-3", 100).await;
    let scratch = Scratch::new("cmd-bad");
    let port = free_port();
    let sink = fan_sink(&tenant, "      device: payload.fan\n");
    let config = worker_config(&scratch, &broker, &sink, port);
    let bad = envelope(&new_id(), "press-1", json!({"temp": 50.5}));
    let good = envelope(&new_id(), "press-2", json!({"temp": 50.5, "fan": "fan-3"}));
    broker.publish(&[bad.clone(), good]).await;
    let worker = WorkerProcess::start(&scratch, &config, port, 1);
    worker.wait_acked(2, DEADLINE).await;

    let (id, reason, _) = wait_for("the bad message dead-lettered", DEADLINE, || async {
        broker.take_dead_letter().await
    })
    .await;
    assert_eq!(id, bad["id"].as_str().expect("id"));
    assert!(
        reason.starts_with("sink fan: device: CEL evaluation of `payload.fan` failed"),
        "{reason}"
    );
    let taken = gateway.take_all("fan-3").await;
    assert_eq!(taken.len(), 1, "{taken:?}");
    assert_eq!(commands(&worker, "fan", "sent").await, 1.0);
    broker.cleanup().await;
}

/// The broker of the command exchange in the outage test (the shared broker's ports + 10).
static COMMAND_BROKER: SideBroker = SideBroker {
    name: "worker-commands",
    offset: 10,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_of_the_command_broker_holds_the_messages_until_it_is_back() {
    let broker = Broker::connect("cmd-outage").await;
    COMMAND_BROKER.run_async("start").await;
    let _stop = StopOnDrop(&COMMAND_BROKER);
    let url = COMMAND_BROKER.url();
    let tenant = tenant();
    let gateway = Gateway::connect(&url, &tenant).await;
    gateway.device_queue("press-9", 100).await;
    let scratch = Scratch::new("cmd-outage");
    let port = free_port();
    let uri_file = scratch.file("commands-amqp", &url);
    let sink = fan_sink(&tenant, &format!("      uriFile: {}\n", uri_file.display()));
    let config = worker_config(&scratch, &broker, &sink, port);
    let hot = || envelope(&new_id(), "press-9", json!({"temp": 45.5}));
    let first = hot();
    broker.publish(std::slice::from_ref(&first)).await;
    let worker = WorkerProcess::start(&scratch, &config, port, 1);
    worker.wait_acked(1, DEADLINE).await;
    let before: Vec<String> = gateway
        .take_all("press-9")
        .await
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(
        before,
        vec![command_id("fan", first["id"].as_str().expect("id"))]
    );

    drop(gateway);
    COMMAND_BROKER.run_async("stop").await;
    let held: Vec<Value> = (0..3).map(|_| hot()).collect();
    broker.publish(&held).await;
    wait_for("the outage reported", DEADLINE, || async {
        let down = worker.metric("tributary_worker_target_unavailable").await;
        (down == Some(1.0)).then_some(())
    })
    .await;
    assert_eq!(
        worker.metric("tributary_worker_messages_acked_total").await,
        Some(1.0),
        "nothing acknowledged while the command broker is down"
    );
    assert_eq!(broker.depth(&broker.dead_letter_queue).await, 0);

    COMMAND_BROKER.run_async("start").await;
    worker.wait_acked(4, DEADLINE).await;
    let gateway = Gateway::connect(&url, &tenant).await;
    gateway.device_queue("press-9", 100).await;
    let after: HashSet<String> = gateway
        .take_all("press-9")
        .await
        .into_iter()
        .map(|c| c.id)
        .collect();
    let expected: HashSet<String> = held
        .iter()
        .map(|e| command_id("fan", e["id"].as_str().expect("id")))
        .collect();
    assert_eq!(after, expected, "every held message's command (by id)");
    assert_eq!(broker.depth(&broker.dead_letter_queue).await, 0);
    assert_eq!(commands(&worker, "fan", "sent").await, 4.0);
    broker.cleanup().await;
}
