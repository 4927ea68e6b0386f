//! Sinks driven directly (no worker process) against real servers: idempotency details that
//! are hard to provoke end to end.

mod common;

use common::*;
use rusty_s3::Credentials;
use serde_json::json;
use tributary_contract::worker_config::{
    BatchConfig, ColumnMapping, PostgresSinkConfig, RedisSinkConfig, RepublishSinkConfig,
    S3SinkConfig, SinkConfig,
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

fn postgres_config(scratch: &Scratch, url: &str, table: &str, create_table: bool) -> SinkConfig {
    let column = |name: &str, expr: &str, sql_type: &str| ColumnMapping {
        name: name.into(),
        expr: expr.into(),
        r#type: sql_type.into(),
    };
    SinkConfig::Postgres(PostgresSinkConfig {
        name: "rows".into(),
        url_file: scratch.file(&unique("pg"), url),
        ca_file: None,
        table: table.into(),
        id_column: "id".into(),
        columns: vec![
            column("at", "payload.at", "timestamptz"),
            column("seq", "payload.seq", "bigint"),
            column("temp", "payload.temp", "double precision"),
            column("doc", "payload.doc", "jsonb"),
            column("note", "payload.note", "text"),
            column("code", "payload.code", "varchar(3)"),
        ],
        create_table,
        batch: batch(),
    })
}

/// A record whose payload has every field the columns read: `given`'s, the others null.
fn row_record(id: &str, given: serde_json::Value) -> Record {
    let mut payload =
        json!({"at": null, "seq": null, "temp": null, "doc": null, "note": null, "code": null});
    if let (Some(payload), Some(given)) = (payload.as_object_mut(), given.as_object()) {
        payload.extend(given.clone());
    }
    Record {
        id: id.into(),
        value: json!({"id": id, "device": "d", "payload": payload}),
    }
}

#[tokio::test]
async fn postgres_stores_each_id_once_and_typed_columns_round_trip() {
    let pg_url = required_env("TRIBUTARY_TEST_POSTGRES_URL", "postgres.sh");
    let pg = postgres(&pg_url).await;
    let scratch = Scratch::new("pg-rows");
    let table = unique("rows");
    let sink = Sink::build(
        &CelEnv::default(),
        &postgres_config(&scratch, &pg_url, &table, true),
        "amqp://unused",
    )
    .expect("build");
    sink.init().await.expect("connect and create the table");
    let prepare = |id: &str, payload: serde_json::Value| -> Prepared {
        let prepared = sink
            .prepare(&row_record(id, payload))
            .expect("prepare")
            .expect("written");
        assert_eq!(prepared.refused, None, "{id}");
        prepared
    };
    let (a, b, c) = (new_id(), new_id(), new_id());
    let full = json!({
        "at": "2026-11-26T09:00:00.250Z", "seq": 9_007_199_254_740_993i64, "temp": -21.5,
        "doc": {"k": [1, "x", null], "nested": {"t": true}}, "note": "tab\there\\ \"quoted\"\nline",
        "code": "abc",
    });
    // JSON nulls are SQL NULLs; a string in a jsonb column is parsed.
    let sparse = json!({"seq": null, "doc": "{\"from\": \"text\"}", "note": ""});
    let items = [
        prepare(&a, full.clone()),
        prepare(&b, sparse),
        // A repeat within the batch, with other values: the first one is kept.
        prepare(&a, json!({"seq": 1})),
        prepare(&c, json!({"seq": 3, "doc": null})),
    ];
    sink.write(&items).await.expect("write");
    // A redelivery of stored ids, alone and beside a new one.
    sink.write(&items[..1]).await.expect("redelivery");
    let d = new_id();
    sink.write(&[
        prepare(&c, json!({"seq": 30})),
        prepare(&d, json!({"seq": 4})),
    ])
    .await
    .expect("redelivery beside a new id");
    assert_eq!(count_rows(&pg, &table).await, 4, "each id stored once");

    let rows = pg
        .query(
            &format!(
                "SELECT id, extract(epoch FROM at)::float8, seq, temp, doc::text, \
                 jsonb_typeof(doc), note, code FROM \"{table}\" ORDER BY id"
            ),
            &[],
        )
        .await
        .expect("select");
    let by_id = |id: &str| {
        rows.iter()
            .find(|row| row.get::<_, String>(0) == id)
            .unwrap_or_else(|| panic!("no row {id}"))
    };
    let row = by_id(&a);
    assert_eq!(row.get::<_, Option<f64>>(1), Some(1_795_683_600.25));
    assert_eq!(row.get::<_, Option<i64>>(2), Some(9_007_199_254_740_993));
    assert_eq!(row.get::<_, Option<f64>>(3), Some(-21.5));
    let doc: serde_json::Value =
        serde_json::from_str(&row.get::<_, String>(4)).expect("doc is JSON");
    assert_eq!(doc, full["doc"]);
    assert_eq!(row.get::<_, Option<&str>>(5), Some("object"));
    assert_eq!(row.get::<_, Option<&str>>(6), full["note"].as_str());
    assert_eq!(row.get::<_, Option<&str>>(7), Some("abc"));
    let row = by_id(&b);
    assert_eq!(row.get::<_, Option<f64>>(1), None);
    assert_eq!(row.get::<_, Option<i64>>(2), None);
    assert_eq!(row.get::<_, Option<f64>>(3), None);
    assert_eq!(row.get::<_, Option<&str>>(5), Some("object"), "parsed");
    assert_eq!(row.get::<_, Option<&str>>(6), Some(""), "empty is not NULL");
    let row = by_id(&c);
    assert_eq!(
        row.get::<_, Option<i64>>(2),
        Some(3),
        "the first write kept"
    );
    assert_eq!(row.get::<_, Option<&str>>(4), None, "JSON null is SQL NULL");
}

/// Prepares a record with `payload` for `sink` and writes it alone.
async fn write_one(sink: &Sink, payload: serde_json::Value) -> Result<(), SinkError> {
    let item = sink
        .prepare(&row_record(&new_id(), payload))
        .expect("prepare")
        .expect("written");
    sink.write(&[item]).await
}

#[tokio::test]
async fn postgres_refusals_are_rejections_and_a_missing_table_or_server_an_outage() {
    let pg_url = required_env("TRIBUTARY_TEST_POSTGRES_URL", "postgres.sh");
    let pg = postgres(&pg_url).await;
    let scratch = Scratch::new("pg-refused");
    let table = unique("refused");
    let sink = Sink::build(
        &CelEnv::default(),
        &postgres_config(&scratch, &pg_url, &table, true),
        "amqp://unused",
    )
    .expect("build");
    // Values only the server refuses fail the whole statement as the data's fault.
    for (payload, code) in [
        (json!({"seq": "not a number"}), "22P02"),
        (json!({"at": "yesterday-ish"}), "22007"),
        (json!({"doc": "{not json"}), "22P02"),
        // Too long for varchar(3): refused, not cut to fit.
        (json!({"code": "abcd"}), "22001"),
    ] {
        match write_one(&sink, payload.clone()).await {
            Err(SinkError::Rejected(message)) => assert!(message.starts_with(code), "{message}"),
            other => panic!("{payload}: {other:?}"),
        }
    }
    assert_eq!(count_rows(&pg, &table).await, 0);
    write_one(&sink, json!({"code": "ab"}))
        .await
        .expect("a value that fits");
    assert_eq!(count_rows(&pg, &table).await, 1);

    // A table nobody created yet, and a server that does not answer, are waited for.
    let missing = Sink::build(
        &CelEnv::default(),
        &postgres_config(&scratch, &pg_url, &unique("missing"), false),
        "amqp://unused",
    )
    .expect("build");
    assert!(
        matches!(missing.init().await, Err(SinkError::Unavailable(ref m)) if m.starts_with("42P01")),
        "a missing table is an outage"
    );
    let away = Sink::build(
        &CelEnv::default(),
        &postgres_config(&scratch, "postgres://u:p@127.0.0.1:1/db", &table, false),
        "amqp://unused",
    )
    .expect("build");
    assert!(matches!(
        write_one(&away, json!({})).await,
        Err(SinkError::Unavailable(_))
    ));
}
