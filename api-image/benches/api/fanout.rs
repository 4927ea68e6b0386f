//! Live fan-out: BENCH_SSE_CLIENTS Server-Sent-Events clients of the real API, while
//! BENCH_SSE_MESSAGES messages go to the live exchange at BENCH_SSE_RATE per second.
//!
//! Each message carries its publish time (microseconds on this process's monotonic clock),
//! so every client measures publish → receipt for every message. The peer, in the same
//! run, is a plain AMQP consumer of its own queue bound to the same exchange, with the
//! API's prefetch (256) and one ack per message: what a single subscriber gets straight
//! from the broker, so the ratio is the price of the API's hub, HTTP and 100 streams. The
//! API process's CPU (user + system from `/proc/PID/stat`) over the publishing window and
//! its memory are printed beside them. The clients run in this process on the same cores.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::server::{self, ApiProcess, KEY};
use crate::{bench_line, env_usize, percentile_ms, required_env, BenchResult};

/// The clock every publish and receipt time is read from.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn now_us() -> u64 {
    EPOCH.elapsed().as_micros() as u64
}

/// What one receiver saw: each message's latency, at most once per message.
struct Received {
    latencies: Vec<Duration>,
    distinct: usize,
}

/// Records one received message body (JSON with `seq` and `sentUs`) at `at_us`.
fn record(seen: &mut [bool], received: &mut Received, body: &[u8], at_us: u64) {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    let (Some(seq), Some(sent)) = (value["seq"].as_u64(), value["sentUs"].as_u64()) else {
        return;
    };
    let Some(slot) = seen.get_mut(seq as usize) else {
        return;
    };
    if !*slot {
        *slot = true;
        received.distinct += 1;
        received
            .latencies
            .push(Duration::from_micros(at_us.saturating_sub(sent)));
    }
}

/// Opens one `/v1/stream` and returns once its `ready` event arrived; the task then reads
/// until `messages` distinct messages arrived or `stop` fires.
async fn sse_client(
    http: reqwest::Client,
    url: String,
    messages: usize,
    ready: mpsc::Sender<()>,
    stop: tokio_util::sync::CancellationToken,
) -> BenchResult<Received> {
    let mut response = http.get(url).bearer_auth(KEY).send().await?;
    if !response.status().is_success() {
        return Err(format!("stream answered {}", response.status()).into());
    }
    let mut received = Received {
        latencies: Vec::with_capacity(messages),
        distinct: 0,
    };
    let mut seen = vec![false; messages];
    let mut buffer: Vec<u8> = Vec::new();
    let mut announced = false;
    while received.distinct < messages {
        let chunk = tokio::select! {
            chunk = response.chunk() => chunk?,
            () = stop.cancelled() => break,
        };
        let Some(chunk) = chunk else { break };
        let at = now_us();
        buffer.extend_from_slice(&chunk);
        // Whole events end with a blank line; their `data:` lines hold the message.
        while let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buffer.drain(..end + 2).collect();
            for line in event.split(|b| *b == b'\n') {
                if line.starts_with(b"event: ready") || line.starts_with(b"event:ready") {
                    announced = true;
                    let _ = ready.send(()).await;
                } else if let Some(data) = line.strip_prefix(b"data:") {
                    record(&mut seen, &mut received, data.trim_ascii_start(), at);
                }
            }
        }
    }
    if !announced {
        return Err("the stream ended before its ready event".into());
    }
    Ok(received)
}

/// The peer: its own queue on the exchange, consumed like the API consumes (prefetch 256,
/// one ack each). Declared before the messages are published.
async fn peer_consumer(
    connection: &Connection,
    exchange: &str,
    messages: usize,
    stop: tokio_util::sync::CancellationToken,
) -> BenchResult<tokio::task::JoinHandle<Received>> {
    let channel = connection.create_channel().await?;
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..QueueDeclareOptions::default()
    };
    let queue = channel
        .queue_declare("".into(), exclusive, FieldTable::default())
        .await?;
    channel
        .queue_bind(
            queue.name().clone(),
            exchange.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel.basic_qos(256, BasicQosOptions::default()).await?;
    let mut consumer = channel
        .basic_consume(
            queue.name().clone(),
            "bench-peer".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(tokio::spawn(async move {
        let mut received = Received {
            latencies: Vec::with_capacity(messages),
            distinct: 0,
        };
        let mut seen = vec![false; messages];
        while received.distinct < messages {
            let delivery = tokio::select! {
                delivery = consumer.next() => delivery,
                () = stop.cancelled() => break,
            };
            let Some(Ok(delivery)) = delivery else { break };
            record(&mut seen, &mut received, &delivery.data, now_us());
            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
        }
        received
    }))
}

/// Publishes `messages` messages to `exchange` at `rate` per second; the seconds it took.
async fn publish(
    connection: &Connection,
    exchange: &str,
    messages: usize,
    rate: usize,
) -> BenchResult<f64> {
    let channel = connection.create_channel().await?;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1) as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    for seq in 0..messages {
        tick.tick().await;
        let device = format!("dev-{:05}", seq % 10);
        let body = json!({
            "id": format!("bench-{seq:08}"), "device": device,
            "topic": format!("devices/{device}/telemetry"), "seq": seq, "sentUs": now_us(),
            "payload": {"temperature": 20.0 + (seq % 50) as f64 / 10.0, "humidity": 40 + seq % 20},
        })
        .to_string();
        channel
            .basic_publish(
                exchange.into(),
                format!("devices.{device}.telemetry").as_str().into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default(),
            )
            .await?;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Opens `clients` streams and waits for every `ready` event.
async fn open_clients(
    api: &ApiProcess,
    clients: usize,
    messages: usize,
    stop: &tokio_util::sync::CancellationToken,
) -> BenchResult<Vec<tokio::task::JoinHandle<BenchResult<Received>>>> {
    let http = reqwest::Client::new();
    let (ready_tx, mut ready_rx) = mpsc::channel(clients.max(1));
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            tokio::spawn(sse_client(
                http.clone(),
                format!("{}/v1/stream", api.base),
                messages,
                ready_tx.clone(),
                stop.clone(),
            ))
        })
        .collect();
    drop(ready_tx);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for opened in 0..clients {
        match tokio::time::timeout_at(deadline, ready_rx.recv()).await {
            Ok(Some(())) => {}
            _ => return Err(format!("only {opened} of {clients} streams opened in 30 s").into()),
        }
    }
    Ok(tasks)
}

/// What the API process used over the run.
struct Usage {
    cpu_percent: f64,
    cpu_seconds: f64,
    wall: f64,
    rss_mib: f64,
    peak_mib: f64,
    dropped: f64,
    failed: usize,
}

/// Starts the API on a new live exchange and waits until it consumes from its queue.
async fn start_api(
    dir: &std::path::Path,
    amqp_url: &str,
    exchange: &str,
) -> BenchResult<ApiProcess> {
    let pg_url = required_env("TRIBUTARY_TEST_POSTGRES_URL");
    // The table is not read here; any name does (/readyz asks only that PostgreSQL answers).
    let api = ApiProcess::start(dir, |port| {
        server::config(
            dir,
            port,
            &pg_url,
            "api_bench_unused",
            Some((amqp_url, exchange)),
        )
    })
    .await?;
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while api.metric(&http, "tributary_api_live_connected").await < 1.0 {
        if Instant::now() > deadline {
            return Err("the API did not bind its live queue within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(api)
}

/// Publishes while the streams and the peer receive; what each received and what the API
/// process used.
async fn measure(
    api: &ApiProcess,
    amqp_url: &str,
    exchange: &str,
    (clients, messages, rate): (usize, usize, usize),
) -> BenchResult<(Received, Received, Usage)> {
    let stop = tokio_util::sync::CancellationToken::new();
    let streams = open_clients(api, clients, messages, &stop).await?;
    let publisher = Connection::connect(amqp_url, ConnectionProperties::default()).await?;
    let subscriber = Connection::connect(amqp_url, ConnectionProperties::default()).await?;
    let peer = peer_consumer(&subscriber, exchange, messages, stop.clone()).await?;
    let (pid, ticks_per_second) = (api.pid(), server::clock_ticks());
    let (cpu_before, started) = (server::cpu_ticks(pid), Instant::now());
    let publish_seconds = publish(&publisher, exchange, messages, rate).await?;
    eprintln!("fanout: published {messages} messages in {publish_seconds:.1} s");
    // Everything published: late deliveries get up to 10 s, then whoever still waits stops.
    let waiter = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(10)).await;
        waiter.cancel();
    });
    let mut api_received = Received {
        latencies: Vec::new(),
        distinct: 0,
    };
    let mut failed = 0;
    for stream in streams {
        match stream.await? {
            Ok(received) => {
                api_received.distinct += received.distinct;
                api_received.latencies.extend(received.latencies);
            }
            Err(e) => {
                failed += 1;
                eprintln!("fanout: a stream failed: {e}");
            }
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu_seconds = (server::cpu_ticks(pid) - cpu_before) as f64 / ticks_per_second;
    let peer_received = peer.await?;
    stop.cancel();
    let usage = Usage {
        cpu_percent: cpu_seconds / wall * 100.0,
        cpu_seconds,
        wall,
        rss_mib: server::status_kib(pid, "VmRSS") as f64 / 1024.0,
        peak_mib: server::status_kib(pid, "VmHWM") as f64 / 1024.0,
        dropped: api
            .metric(&reqwest::Client::new(), "tributary_api_live_dropped_total")
            .await,
        failed,
    };
    let channel = publisher.create_channel().await?;
    channel
        .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
        .await?;
    let _ = publisher.close(200, "done".into()).await;
    let _ = subscriber.close(200, "done".into()).await;
    Ok((api_received, peer_received, usage))
}

fn report(
    api: Received,
    peer: Received,
    usage: &Usage,
    (clients, messages, rate): (usize, usize, usize),
) {
    let extra = format!("clients={clients} messages={messages} rate={rate}");
    for (system, mut received, expected) in [
        ("api-sse", api, clients * messages),
        ("amqp-consumer", peer, messages),
    ] {
        received.latencies.sort_unstable();
        let (p50, p99) = (
            percentile_ms(&received.latencies, 50.0),
            percentile_ms(&received.latencies, 99.0),
        );
        let delivered = received.distinct as f64 / expected as f64 * 100.0;
        println!(
            "{system:<14} publish → receipt p50 {p50:7.2} ms  p99 {p99:7.2} ms  \
             delivered {} of {expected} ({delivered:.2} %)",
            received.distinct
        );
        bench_line("live_latency_p50", system, p50, "ms", &extra);
        bench_line("live_latency_p99", system, p99, "ms", &extra);
        bench_line("live_delivered", system, delivered, "%", &extra);
    }
    println!(
        "api process: {:.2} s CPU over {:.1} s ({:.1} % of one core), RSS {:.1} MiB \
         (peak {:.1} MiB), {} deliveries dropped for slow clients, {} streams failed",
        usage.cpu_seconds,
        usage.wall,
        usage.cpu_percent,
        usage.rss_mib,
        usage.peak_mib,
        usage.dropped,
        usage.failed
    );
    bench_line("live_api_cpu", "api-sse", usage.cpu_percent, "%", &extra);
    bench_line("live_api_rss", "api-sse", usage.rss_mib, "MiB", &extra);
    bench_line(
        "live_api_rss_peak",
        "api-sse",
        usage.peak_mib,
        "MiB",
        &extra,
    );
}

/// The fan-out benchmark.
pub async fn run() -> BenchResult<()> {
    let amqp_url = required_env("TRIBUTARY_TEST_AMQP_URL");
    let sizes = (
        env_usize("BENCH_SSE_CLIENTS", 100),
        env_usize("BENCH_SSE_MESSAGES", 2000),
        env_usize("BENCH_SSE_RATE", 100),
    );
    LazyLock::force(&EPOCH);
    let tag = ulid::Ulid::generate().to_string().to_lowercase();
    let exchange = format!("bench.live.{tag}");
    let dir = server::secrets_dir("fanout")?;
    let api = start_api(&dir, &amqp_url, &exchange).await?;
    println!(
        "fanout: {} SSE clients, {} messages at {}/s to {exchange}; \
         peer = one plain AMQP consumer of the same exchange",
        sizes.0, sizes.1, sizes.2
    );
    let (api_received, peer_received, usage) = measure(&api, &amqp_url, &exchange, sizes).await?;
    drop(api);
    let _ = std::fs::remove_dir_all(&dir);
    report(api_received, peer_received, &usage, sizes);
    Ok(())
}
