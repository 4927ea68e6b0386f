//! The command tests' rig: an API with commands configured for a tenant of its own, and the
//! device side played as a gateway plays it — the device's queue declared with the
//! contract's arguments, bound to the tenant's exchange with the device id, consumed, and
//! answers published to a command's `reply_to`.

use std::time::Duration;

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use reqwest::header::HeaderMap;
use serde_json::{json, Value};
use tributary_api::keys::hash_key;
use tributary_contract::api_config::ApiConfig;
use tributary_contract::command::{self, CommandLimits, QueueArgument, HEADER_STATUS};

use crate::common::{required_env, temp_dir, unique, wait_for, Server};

pub const WAIT: Duration = Duration::from_secs(30);

/// A key that may command every device.
pub const OPERATOR: &str = "operator-key-0123456789";
/// A key that may command the devices starting with `a-`.
pub const GROUP_A: &str = "group-a-command-key-0123456789";
/// A key that reads every device and may not command any.
pub const READER: &str = "reader-key-0123456789";
/// A commanding key with a tight rate limit (burst 2, one request per 100 s after).
pub const TIGHT: &str = "tight-command-key-0123456789";

/// The API config: commands for `tenant` on `amqp_uri`, `commands` merged into the
/// section. The database is never reached by these tests.
pub fn config(tenant: &str, amqp_uri: &str, commands: Value) -> ApiConfig {
    let dir = temp_dir();
    let (pg_file, amqp_file) = (dir.join("postgres-url"), dir.join("amqp-uri"));
    std::fs::write(&pg_file, "postgres://unused:unused@127.0.0.1:1/unused").expect("pg file");
    std::fs::write(&amqp_file, amqp_uri).expect("amqp file");
    let mut section =
        json!({"uriFile": amqp_file, "maxWaitSeconds": 10, "reconnectMaxDelayMs": 500});
    if let (Some(base), Some(extra)) = (section.as_object_mut(), commands.as_object()) {
        base.extend(extra.clone());
    }
    let fast = json!({"requestsPerSecond": 1000, "burst": 1000});
    serde_json::from_value(json!({
        "listen": "127.0.0.1:0",
        "postgres": {"urlFile": pg_file, "table": "unused"},
        "tenant": tenant,
        "commands": section,
        "apiKeys": [
            {"name": "operator", "sha256": hash_key(OPERATOR), "scope": "all", "commands": true, "rateLimit": fast},
            {"name": "group-a", "sha256": hash_key(GROUP_A), "scope": {"devicePrefix": "a-"}, "commands": true, "rateLimit": fast},
            {"name": "reader", "sha256": hash_key(READER), "scope": "all", "rateLimit": fast},
            {"name": "tight", "sha256": hash_key(TIGHT), "scope": "all", "commands": true,
             "rateLimit": {"requestsPerSecond": 0.01, "burst": 2}}
        ],
        "limits": {"maxRequestBytes": 1024},
        "shutdownGraceSeconds": 2
    }))
    .expect("test config")
}

/// An answer to a POST: status, JSON body (Null when not JSON), headers.
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub headers: HeaderMap,
}

/// The API with commands, and the device side on the same broker.
pub struct Rig {
    pub server: Server,
    pub tenant: String,
    pub channel: Channel,
    _connection: Connection,
    queues: std::sync::Mutex<Vec<String>>,
}

impl Rig {
    /// A server for a fresh tenant, connected to the broker; `commands` tunes its section.
    pub async fn start(commands: Value) -> Rig {
        let amqp_url = required_env("TRIBUTARY_TEST_AMQP_URL", "rabbitmq.sh");
        let tenant = unique("t");
        let server = Server::start(config(&tenant, &amqp_url, commands)).await;
        wait_for("the command publisher to connect", WAIT, || async {
            (server.metric("tributary_api_commands_connected").await == 1.0).then_some(())
        })
        .await;
        let connection = Connection::connect(&amqp_url, ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| {
                panic!("RabbitMQ is unreachable ({e}); run `tests/services/rabbitmq.sh start`")
            });
        let channel = connection.create_channel().await.expect("channel");
        Rig {
            server,
            tenant,
            channel,
            _connection: connection,
            queues: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// POSTs a command; `query` starts with `?` or is empty.
    pub async fn post(
        &self,
        device: &str,
        name: &str,
        query: &str,
        key: &str,
        body: &[u8],
    ) -> Answer {
        self.post_as(device, name, query, key, body, None).await
    }

    /// [`Rig::post`] with a Content-Type.
    pub async fn post_as(
        &self,
        device: &str,
        name: &str,
        query: &str,
        key: &str,
        body: &[u8],
        content_type: Option<&str>,
    ) -> Answer {
        let url = format!(
            "{}/v1/devices/{device}/commands/{name}{query}",
            self.server.base
        );
        let mut request = self
            .server
            .http
            .post(url)
            .bearer_auth(key)
            .body(body.to_vec());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.json().await.unwrap_or(Value::Null);
        Answer {
            status,
            body,
            headers,
        }
    }

    /// Declares `device`'s command queue as a gateway does (at most `max_queued`
    /// commands), bound to the tenant's exchange; its name.
    pub async fn device_queue(&self, device: &str, max_queued: u32) -> String {
        let name = command::device_queue(&self.tenant, device);
        let limits = CommandLimits {
            max_queued_per_device: max_queued,
            session_expiry_seconds: 300,
        };
        let mut arguments = FieldTable::default();
        for (key, value) in command::device_queue_arguments(&self.tenant, &limits) {
            let value = match value {
                QueueArgument::Text(text) => AMQPValue::LongString(text.into()),
                QueueArgument::Number(n) => AMQPValue::LongLongInt(i64::try_from(n).expect("fits")),
                QueueArgument::Bool(b) => AMQPValue::Boolean(b),
            };
            arguments.insert(key.into(), value);
        }
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        self.channel
            .queue_declare(name.as_str().into(), durable, arguments)
            .await
            .expect("declare the device queue");
        self.channel
            .queue_bind(
                name.as_str().into(),
                command::exchange(&self.tenant).as_str().into(),
                device.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind the device queue");
        self.queues.lock().expect("queues").push(name.clone());
        name
    }

    /// Consumes a device queue (acknowledging nothing: the gateway acks after delivery).
    pub async fn consume(&self, queue: &str) -> Consumer {
        self.channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consume the device queue")
    }

    /// Commands waiting in a queue.
    pub async fn queued(&self, queue: &str) -> u32 {
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        self.channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await
            .expect("queue exists")
            .message_count()
    }

    /// Publishes a device's answer to a command, as the gateway does.
    pub async fn answer(&self, command: &Delivery, status: u16, content_type: &str, body: &[u8]) {
        let reply_to = command
            .properties
            .reply_to()
            .clone()
            .expect("the command has a reply_to");
        let id = command
            .properties
            .correlation_id()
            .clone()
            .expect("a correlation id");
        let mut headers = FieldTable::default();
        headers.insert(HEADER_STATUS.into(), AMQPValue::ShortUInt(status));
        headers.insert(
            "x-tributary-device".into(),
            AMQPValue::LongString(LongString::from("d")),
        );
        let properties = BasicProperties::default()
            .with_correlation_id(id)
            .with_content_type(content_type.into())
            .with_headers(headers);
        self.channel
            .basic_publish(
                "".into(),
                reply_to,
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .expect("publish the answer");
    }

    /// Stops the server and removes the tenant's queues and exchange.
    pub async fn finish(self) {
        self.server.stop().await;
        let queues = self.queues.lock().expect("queues").clone();
        for queue in queues {
            let _ = self
                .channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = self
            .channel
            .exchange_delete(
                command::exchange(&self.tenant).as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
    }
}

/// The next command from a consumer, within [`WAIT`].
pub async fn next_command(consumer: &mut Consumer) -> Delivery {
    tokio::time::timeout(WAIT, consumer.next())
        .await
        .expect("a command reaches the device in time")
        .expect("the consumer is open")
        .expect("a delivery")
}

/// A text header of a delivery.
pub fn header(delivery: &Delivery, name: &str) -> Option<String> {
    match delivery.properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(text) => Some(String::from_utf8_lossy(text.as_bytes()).into_owned()),
        AMQPValue::ShortString(text) => Some(text.as_str().to_owned()),
        _ => None,
    }
}

/// A short-string property as text.
pub fn text(value: &Option<lapin::types::ShortString>) -> Option<String> {
    value.as_ref().map(|v| v.as_str().to_owned())
}
