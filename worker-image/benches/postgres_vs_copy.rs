//! Benchmark (not a test): worker → PostgreSQL rows/s, beside a plain `COPY` of the same
//! rows into a table of the same shape, in the same run; prints both and the ratio.
//!
//! The worker runs as one pod of a Worker with the defaults would: default batch, default
//! concurrency, and the prefetch the operator renders for it ([`prefetch`]). The broker's
//! drain ceiling is a bare consumer of the same messages with the same prefetch that
//! acknowledges with `multiple` every quarter of the prefetch.
//!
//! Needs RabbitMQ and PostgreSQL from `tests/services/`; `worker-image/bench.sh` starts
//! them and runs this. Rows: `BENCH_ROWS` (default 100000); prefetch: `BENCH_PREFETCH`
//! (default as above). Besides the text, every rate is printed as a `BENCH
//! figure=worker_rows system=… value=… unit=rows/s` line, which `hack/bench.sh` collects.

use std::time::{Duration, Instant};

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::json;
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;
use tributary_contract::worker_config::{DEFAULT_POSTGRES_BATCH, DEFAULT_PREFETCH};
use tributary_worker::config;
use tributary_worker::record::{parse_envelope, record_of};
use tributary_worker::sinks::postgres::text_of;

const COLUMNS: &str =
    "id text PRIMARY KEY, device text, seq bigint, temp double precision, payload jsonb";

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        eprintln!("{name} is not set: run worker-image/bench.sh (it starts the servers)");
        std::process::exit(2);
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tributary_worker::http_client::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

/// The prefetch of the run: `BENCH_PREFETCH`, or what the operator renders for a Worker with
/// one default PostgreSQL sink (its batch, at least the worker's default prefetch).
fn prefetch() -> u16 {
    let rendered = u16::try_from(DEFAULT_POSTGRES_BATCH.max_messages)
        .unwrap_or(u16::MAX)
        .max(DEFAULT_PREFETCH);
    std::env::var("BENCH_PREFETCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(rendered)
}

async fn run() -> BenchResult<()> {
    let amqp_url = env("TRIBUTARY_TEST_AMQP_URL");
    let pg_url = env("TRIBUTARY_TEST_POSTGRES_URL");
    let rows: usize = std::env::var("BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let tag = ulid::Ulid::generate().to_string().to_lowercase();
    let (pg, connection) = tokio_postgres::connect(&pg_url, NoTls).await?;
    tokio::spawn(connection);

    // The same envelopes for both runs.
    let bodies = envelopes(rows);
    let copy_table = format!("bench_copy_{tag}");
    let copy_seconds = plain_copy(&pg, &copy_table, &bodies).await?;

    // Worker: the queue is filled first (not timed), then the worker drains it.
    let connection = Connection::connect(&amqp_url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let queue = format!("bench_{tag}");
    declare_and_fill(&channel, &queue, &bodies).await?;
    // Broker ceiling: a bare consumer that only acknowledges, same prefetch, same messages.
    let bare_queue = format!("bench_bare_{tag}");
    declare_and_fill(&channel, &bare_queue, &bodies).await?;
    let prefetch = prefetch();
    let bare_seconds = bare_consume(&connection, &bare_queue, rows, prefetch).await?;

    let worker_table = format!("bench_worker_{tag}");
    pg.batch_execute(&format!("CREATE TABLE {worker_table} ({COLUMNS})"))
        .await?;
    let dir = std::env::temp_dir().join(format!("tributary-bench-{tag}"));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("amqp"), &amqp_url)?;
    std::fs::write(dir.join("pg"), &pg_url)?;
    let config_text = worker_config(&dir, (&queue, prefetch), &worker_table)?;
    let worker = tributary_worker::Worker::build(config::parse(&config_text)?)?;
    let metrics = worker.metrics();
    let prepare_micros = prepare_micros(&config_text, &amqp_url, &bodies)?;
    let worker_seconds = run_worker(worker, &pg, &worker_table, rows).await?;

    let copy_rate = rows as f64 / copy_seconds;
    let worker_rate = rows as f64 / worker_seconds;
    println!("rows: {rows}, prefetch {prefetch}");
    println!("plain COPY into {copy_table}: {copy_seconds:.3} s, {copy_rate:.0} rows/s");
    println!(
        "worker (RabbitMQ -> pipeline -> batched INSERT ... unnest(text arrays) ON CONFLICT, acks) into {worker_table}: {worker_seconds:.3} s, {worker_rate:.0} rows/s"
    );
    println!("ratio worker/COPY: {:.2}", worker_rate / copy_rate);
    let bare_rate = rows as f64 / bare_seconds;
    println!(
        "broker ceiling (bare consumer, same prefetch, multiple acks, no processing or sink): {bare_seconds:.3} s, {bare_rate:.0} rows/s; worker/ceiling {:.2}",
        worker_rate / bare_rate
    );
    println!("processing CPU (parse + record + column CEL) per message: {prepare_micros:.1} µs");
    bench_lines(rows, worker_rate, copy_rate, bare_rate);
    for line in metrics.render().lines() {
        if line.starts_with("tributary_worker_sink_write_duration_seconds_sum")
            || line.starts_with("tributary_worker_sink_write_duration_seconds_count")
            || line.starts_with("tributary_worker_messages_acked_total")
        {
            println!("  {line}");
        }
    }

    for name in [&queue, &bare_queue] {
        channel
            .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
            .await?;
    }
    pg.batch_execute(&format!(
        "DROP TABLE {copy_table}; DROP TABLE {worker_table}"
    ))
    .await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The rates as machine-readable lines for hack/bench.sh.
fn bench_lines(rows: usize, worker: f64, copy: f64, ceiling: f64) {
    for (system, rate) in [
        ("worker", worker),
        ("copy", copy),
        ("broker-ceiling", ceiling),
    ] {
        println!(
            "BENCH figure=worker_rows system={system} value={rate:.1} unit=rows/s rows={rows}"
        );
    }
}

/// `rows` envelopes (id, JSON body) over 100 devices.
fn envelopes(rows: usize) -> Vec<(String, Vec<u8>)> {
    let mut generator = ulid::Generator::new();
    (0..rows)
        .map(|i| {
            let id = generator.generate().map(|u| u.to_string()).unwrap_or_default();
            let body = json!({
                "id": id, "tenant": "bench", "gateway": "g", "device": format!("d{}", i % 100),
                "topic": "t", "protocol": "mqtt", "receivedAt": "2026-11-26T09:00:00.000Z",
                "payload": {"encoding": "json", "data": {"seq": i, "temp": 20.0 + (i % 50) as f64 / 10.0}},
            });
            (id, serde_json::to_vec(&body).unwrap_or_default())
        })
        .collect()
}

/// The peer: one plain COPY of the same rows (text format, built in advance) into a new
/// `table`; the seconds the COPY took.
async fn plain_copy(
    pg: &tokio_postgres::Client,
    table: &str,
    bodies: &[(String, Vec<u8>)],
) -> BenchResult<f64> {
    pg.batch_execute(&format!("CREATE TABLE {table} ({COLUMNS})"))
        .await?;
    let mut text = String::new();
    for (_, body) in bodies {
        let record = record_of(&parse_envelope(body)?);
        let v = &record.value;
        for (i, value) in [
            json!(record.id),
            v["device"].clone(),
            v["payload"]["seq"].clone(),
            v["payload"]["temp"].clone(),
            v["payload"].clone(),
        ]
        .iter()
        .enumerate()
        {
            if i > 0 {
                text.push('\t');
            }
            push_copy_field(&mut text, value);
        }
        text.push('\n');
    }
    let started = Instant::now();
    {
        use futures::SinkExt;
        let sink = pg
            .copy_in::<_, bytes::Bytes>(&format!("COPY {table} FROM STDIN"))
            .await?;
        let mut sink = std::pin::pin!(sink);
        sink.send(bytes::Bytes::from(text)).await?;
        sink.as_mut().finish().await?;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Appends a value to a COPY text-format line: the text the worker sends for it
/// ([`text_of`]) with COPY's escapes, NULL as `\N`.
fn push_copy_field(line: &mut String, value: &serde_json::Value) {
    let Some(text) = text_of(value) else {
        return line.push_str("\\N");
    };
    let mut rest = text.as_str();
    while let Some(at) = rest.find(['\\', '\n', '\r', '\t']) {
        line.push_str(&rest[..at]);
        line.push_str(match rest.as_bytes()[at] {
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            _ => "\\t",
        });
        rest = &rest[at + 1..];
    }
    line.push_str(rest);
}

/// Declares a durable `queue` and publishes every body to it.
async fn declare_and_fill(
    channel: &lapin::Channel,
    queue: &str,
    bodies: &[(String, Vec<u8>)],
) -> BenchResult<()> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.into(), durable, FieldTable::default())
        .await?;
    publish(channel, queue, bodies).await
}

/// The worker's config: `queue` with `prefetch` into `table` (default batch and
/// concurrency), its files under `dir`, HTTP on a free port.
fn worker_config(
    dir: &std::path::Path,
    (queue, prefetch): (&str, u16),
    table: &str,
) -> BenchResult<String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    Ok(format!(
        r#"
queue: {{uriFile: {dir}/amqp, name: {queue}, prefetch: {prefetch}}}
sinks:
  - postgres:
      name: rows
      urlFile: {dir}/pg
      table: {table}
      columns:
        - {{name: device, expr: device}}
        - {{name: seq, expr: payload.seq}}
        - {{name: temp, expr: payload.temp}}
        - {{name: payload, expr: payload}}
http: {{listen: "127.0.0.1:{port}"}}
"#,
        dir = dir.display()
    ))
}

/// CPU of the processing path alone (parse, record, column expressions) per message, in
/// microseconds, for context.
fn prepare_micros(
    config_text: &str,
    amqp_url: &str,
    bodies: &[(String, Vec<u8>)],
) -> BenchResult<f64> {
    let parsed = config::parse(config_text)?;
    let sink = tributary_worker::sinks::Sink::build(
        &tributary_worker::expr::CelEnv::default(),
        &parsed.sinks[0],
        amqp_url,
    )?;
    let started = Instant::now();
    for (_, body) in bodies {
        let record = record_of(&parse_envelope(body)?);
        sink.prepare(&record)?;
    }
    Ok(started.elapsed().as_secs_f64() * 1e6 / bodies.len() as f64)
}

/// Runs the worker until it acknowledged `rows` messages (each only once its row is
/// committed), then checks that `table` holds them; the seconds until the last ack. The
/// worker's own counter is read, not `count(*)`: polling a growing table would take the
/// CPU the worker and PostgreSQL share.
async fn run_worker(
    worker: tributary_worker::Worker,
    pg: &tokio_postgres::Client,
    table: &str,
    rows: usize,
) -> BenchResult<f64> {
    let metrics = worker.metrics();
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let handle = tokio::spawn(worker.run(shutdown.clone()));
    while metrics.acked.get() < rows as u64 {
        if started.elapsed() > Duration::from_secs(600) {
            let acked = metrics.acked.get();
            return Err(format!("worker acknowledged only {acked} of {rows} in 600 s").into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let worker_seconds = started.elapsed().as_secs_f64();
    shutdown.cancel();
    let _ = handle.await;
    let count: i64 = pg
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await?
        .get(0);
    if count as usize != rows {
        return Err(format!("{rows} messages acknowledged but {count} rows stored").into());
    }
    Ok(worker_seconds)
}

async fn publish(
    channel: &lapin::Channel,
    queue: &str,
    bodies: &[(String, Vec<u8>)],
) -> Result<(), Box<dyn std::error::Error>> {
    for chunk in bodies.chunks(5000) {
        let mut confirms = Vec::new();
        for (id, body) in chunk {
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_message_id(id.as_str().into());
            confirms.push(
                channel
                    .basic_publish(
                        "".into(),
                        queue.into(),
                        BasicPublishOptions::default(),
                        body,
                        properties,
                    )
                    .await?,
            );
        }
        for confirm in confirms {
            confirm.await?;
        }
    }
    Ok(())
}

/// Seconds for a consumer that only acknowledges to drain `rows` messages, with `prefetch`
/// and one `multiple` ack per quarter of it (and one for the rest).
async fn bare_consume(
    connection: &Connection,
    queue: &str,
    rows: usize,
    prefetch: u16,
) -> Result<f64, Box<dyn std::error::Error>> {
    use futures::StreamExt;
    use lapin::options::BasicAckOptions;
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(prefetch, lapin::options::BasicQosOptions::default())
        .await?;
    let every = (usize::from(prefetch) / 4).max(1);
    let started = Instant::now();
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "bench-bare".into(),
            lapin::options::BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut seen = 0;
    while seen < rows {
        let Some(delivery) = consumer.next().await else {
            break;
        };
        let delivery = delivery?;
        seen += 1;
        if seen % every == 0 || seen == rows {
            delivery
                .acker
                .ack(BasicAckOptions { multiple: true })
                .await?;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    channel.close(200, "done".into()).await?;
    Ok(seconds)
}
