//! Sinks driven directly (no worker process) against real servers: idempotency details that
//! are hard to provoke end to end.

mod common;

use common::*;
use rusty_s3::Credentials;
use serde_json::json;
use tributary_contract::worker_config::{
    BatchConfig, RedisSinkConfig, RepublishSinkConfig, S3SinkConfig, SinkConfig,
};
use tributary_worker::expr::CelEnv;
use tributary_worker::record::Record;
use tributary_worker::sinks::s3::{object_key, S3Client};
use tributary_worker::sinks::{Prepared, Sink, SinkError};

fn batch() -> BatchConfig {
    BatchConfig {
        max_messages: 100,
        max_bytes: 1 << 20,
        max_age_ms: 10,
    }
}

fn record(id: &str, device: &str, value: i64) -> Record {
    Record {
        id: id.into(),
        value: json!({"id": id, "device": device, "payload": {"v": value}}),
    }
}

#[tokio::test]
async fn redis_keeps_the_newest_value_whatever_the_write_order() {
    let redis_url = required_env("TRIBUTARY_TEST_REDIS_URL", "redis.sh");
    let scratch = Scratch::new("redis");
    let prefix = unique("latest");
    let config = SinkConfig::Redis(RedisSinkConfig {
        name: "latest".into(),
        url_file: scratch.file("redis", &redis_url),
        ca_file: None,
        key_template: format!("{prefix}:{{device}}"),
        value: Some("payload.v".into()),
        ttl_seconds: 0,
        batch: batch(),
    });
    let sink = Sink::build(&CelEnv::default(), &config, "amqp://unused").expect("build");
    sink.init()
        .await
        .unwrap_or_else(|e| panic!("Redis unreachable ({e}); run `tests/services/redis.sh start`"));
    let (old, new, newer) = (new_id(), new_id(), new_id());
    let prepare = |r: Record| -> Prepared { sink.prepare(&r).expect("prepare").expect("written") };

    // The newer message first, then a redelivery of an older one, then the same again.
    sink.write(&[prepare(record(&new, "d1", 2))])
        .await
        .expect("write");
    sink.write(&[prepare(record(&old, "d1", 1))])
        .await
        .expect("write");
    sink.write(&[prepare(record(&new, "d1", 2))])
        .await
        .expect("write");
    // Within one batch, the newest wins regardless of position.
    sink.write(&[
        prepare(record(&newer, "d2", 30)),
        prepare(record(&new, "d2", 20)),
    ])
    .await
    .expect("write");

    let client = redis::Client::open(redis_url.as_str()).expect("url");
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let d1: String = redis::cmd("GET")
        .arg(format!("{prefix}:d1"))
        .query_async(&mut connection)
        .await
        .expect("GET d1");
    let d2: String = redis::cmd("GET")
        .arg(format!("{prefix}:d2"))
        .query_async(&mut connection)
        .await
        .expect("GET d2");
    assert_eq!((d1.as_str(), d2.as_str()), ("2", "30"));
}

#[tokio::test]
async fn republished_messages_keep_the_envelope_id() {
    let broker = Broker::connect("republish").await;
    let scratch = Scratch::new("republish");
    let config = SinkConfig::Republish(RepublishSinkConfig {
        name: "forward".into(),
        uri_file: Some(scratch.file("amqp", &broker.url)),
        ca_file: None,
        exchange: String::new(),
        routing_key: broker.dead_letter_queue.clone(), // any queue of this test
        batch: batch(),
    });
    let sink = Sink::build(&CelEnv::default(), &config, "amqp://unused").expect("build");
    sink.init().await.expect("connect");
    let ids: Vec<String> = (0..5).map(|_| new_id()).collect();
    let items: Vec<Prepared> = ids
        .iter()
        .map(|id| {
            sink.prepare(&record(id, "d", 1))
                .expect("prepare")
                .expect("written")
        })
        .collect();
    sink.write(&items).await.expect("publish");
    let mut received = Vec::new();
    while let Some((id, _, body)) = broker.take_dead_letter().await {
        let value: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(value["id"].as_str(), Some(id.as_str()));
        received.push(id);
    }
    assert_eq!(received, ids);

    // A routing key without a queue is an error (retried), not a silent loss.
    let nowhere = SinkConfig::Republish(RepublishSinkConfig {
        name: "nowhere".into(),
        uri_file: Some(scratch.file("amqp2", &broker.url)),
        ca_file: None,
        exchange: String::new(),
        routing_key: unique("no_such_queue"),
        batch: batch(),
    });
    let sink = Sink::build(&CelEnv::default(), &nowhere, "amqp://unused").expect("build");
    let error = sink
        .write(&items[..1])
        .await
        .expect_err("unroutable must fail");
    assert!(error.to_string().contains("unroutable"), "{error}");
    broker.cleanup().await;
}

fn s3_config(scratch: &Scratch, endpoint: &str, bucket: &str, create_bucket: bool) -> SinkConfig {
    SinkConfig::S3(S3SinkConfig {
        name: "archive".into(),
        endpoint: endpoint.into(),
        region: std::env::var("TRIBUTARY_TEST_S3_REGION").unwrap_or_else(|_| "us-east-1".into()),
        bucket: bucket.into(),
        prefix: "raw/".into(),
        access_key_id_file: scratch
            .file("ak", &required_env("TRIBUTARY_TEST_S3_ACCESS_KEY", "s3.sh")),
        secret_access_key_file: scratch
            .file("sk", &required_env("TRIBUTARY_TEST_S3_SECRET_KEY", "s3.sh")),
        create_bucket,
        batch: batch(),
    })
}

#[tokio::test]
async fn s3_batch_lands_under_its_key_and_a_missing_bucket_or_server_is_an_outage() {
    tributary_worker::http_client::install_crypto_provider();
    let endpoint = required_env("TRIBUTARY_TEST_S3_ENDPOINT", "s3.sh");
    let scratch = Scratch::new("s3");
    let bucket = unique("archive").replace('_', "-");
    let build = |config: &SinkConfig| {
        Sink::build(&CelEnv::default(), config, "amqp://unused").expect("build")
    };
    let (first, second) = (new_id(), new_id());

    // No such bucket (and not asked to create it): waited for, never dead-lettered.
    let missing = build(&s3_config(&scratch, &endpoint, &bucket, false));
    let batch_of = |sink: &Sink| -> Vec<Prepared> {
        [record(&second, "d1", 2), record(&first, "d1", 1)]
            .iter()
            .map(|r| sink.prepare(r).expect("prepare").expect("written"))
            .collect()
    };
    let refused = missing.write(&batch_of(&missing)).await;
    assert!(
        matches!(refused, Err(SinkError::Unavailable(_))),
        "{refused:?}"
    );

    // Nothing listening: an outage too.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed_endpoint = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    let unreachable = build(&s3_config(&scratch, &closed_endpoint, &bucket, false));
    let refused = unreachable.write(&batch_of(&unreachable)).await;
    assert!(
        matches!(refused, Err(SinkError::Unavailable(_))),
        "{refused:?}"
    );

    // Created at init, the batch is one object under its documented key, one line each.
    let sink = build(&s3_config(&scratch, &endpoint, &bucket, true));
    sink.init()
        .await
        .unwrap_or_else(|e| panic!("S3 unreachable ({e}); run `tests/services/s3.sh start`"));
    let batch = batch_of(&sink);
    sink.write(&batch).await.expect("write");
    let client = S3Client::new(
        &endpoint,
        "us-east-1",
        Credentials::new(
            required_env("TRIBUTARY_TEST_S3_ACCESS_KEY", "s3.sh"),
            required_env("TRIBUTARY_TEST_S3_SECRET_KEY", "s3.sh"),
        ),
    )
    .expect("client");
    let keys = client.list_keys(&bucket, "raw/").await.expect("list");
    assert_eq!(keys, vec![object_key("raw/", &batch, chrono::Utc::now())]);
    let body = client.get_object(&bucket, &keys[0]).await.expect("get");
    let ids: Vec<String> = String::from_utf8_lossy(&body)
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).expect("json")["id"].to_string()
        })
        .collect();
    assert_eq!(ids, vec![format!("{second:?}"), format!("{first:?}")]);
}
