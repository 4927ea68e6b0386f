//! History queries over the big table: the API's latency and rate beside the same SQL run
//! straight against PostgreSQL.
//!
//! Each kind of query runs for BENCH_HISTORY_SECONDS (after one second of warm-up) with
//! BENCH_HISTORY_CONCURRENCY requests in flight, first through the API, then as SQL. The
//! SQL is the API's own (built by `tributary_api::sql`), prepared once on each of as many
//! connections as the API keeps (`postgres.connections`, 4) and run with the same
//! parameters and the same session settings. Each side draws its own random devices and
//! days (same distribution, other seed), so neither reads pages the other just warmed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio_postgres::{Client, NoTls};
use tributary_api::query::{parse_time, Field, Order};
use tributary_api::sql::{DeviceFilter, Statement, Table};
use tributary_api::store::bind_params;
use tributary_contract::api_config::PostgresSource;

use crate::load::{self, device, History};
use crate::server::{self, ApiProcess, KEY};
use crate::{bench_line, env_usize, percentile_ms, required_env, BenchResult, Rng};

/// The API's default `postgres.connections`; the peer opens as many.
const CONNECTIONS: usize = 4;
/// The API's session settings (see `store.rs`), the peer's too.
const SESSION: &str = "SET TIME ZONE 'UTC'; SET statement_timeout = 5000; \
                       SET default_transaction_read_only = on";
/// Rows of a history page.
const PAGE: u32 = 100;
/// Devices in a group.
const GROUP: u64 = 10;

/// The kinds of query measured.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// A page of one device's rows in a day.
    Page,
    /// One device's day in hourly buckets.
    Buckets,
    /// Ten devices' day in hourly buckets, named in `devices=`.
    Group,
    /// The same ten devices as `devicePrefix=`.
    Prefix,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::Page, Kind::Buckets, Kind::Group, Kind::Prefix];

    fn name(self) -> &'static str {
        match self {
            Kind::Page => "page",
            Kind::Buckets => "buckets",
            Kind::Group => "group",
            Kind::Prefix => "prefix",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Kind::Page => "a page of 100 rows of one device's day",
            Kind::Buckets => "one device's day in 1 h buckets (1,440 rows)",
            Kind::Group => "10 devices' day in 1 h buckets, devices=… (14,400 rows)",
            Kind::Prefix => "10 devices' day in 1 h buckets, devicePrefix=… (14,400 rows)",
        }
    }
}

/// One request: the API's path and the SQL statement the API runs for it.
struct Query {
    path: String,
    statement: Statement,
}

/// Random queries of one kind over the generated table.
struct Queries {
    table: Table,
    devices: u64,
    hours: u64,
    start: DateTime<Utc>,
    field: Field,
}

impl Queries {
    fn new(history: &History) -> BenchResult<Self> {
        let table = Table::new(&PostgresSource {
            url_file: "/unused".into(),
            table: history.table.clone(),
            id_column: "id".into(),
            device_column: "device".into(),
            time_column: "received_at".into(),
            connections: CONNECTIONS,
            statement_timeout_ms: 5000,
        })?;
        Ok(Self {
            table,
            devices: history.devices,
            // Whole days inside every device's ~6.9 days.
            hours: load::ROWS_PER_DEVICE / 60 - 24,
            start: START.parse()?,
            field: Field::parse("payload.temperature").map_err(|e| e.0)?,
        })
    }

    fn make(&self, kind: Kind, rng: &mut Rng) -> Query {
        let from_time = self.start + chrono::Duration::hours(rng.below(self.hours) as i64);
        let to_time = from_time + chrono::Duration::days(1);
        let (from, to) = (rfc3339(from_time), rfc3339(to_time));
        let (sql_from, sql_to) = (canonical(&from), canonical(&to));
        let range = format!("from={from}&to={to}");
        let buckets = format!("{range}&bucket=1h&field=payload.temperature");
        let one = device(rng.below(self.devices));
        let group = rng.below((self.devices / GROUP).max(1));
        let members: Vec<String> = (group * GROUP..(group + 1) * GROUP)
            .filter(|i| *i < self.devices)
            .map(device)
            .collect();
        let prefix = format!("dev-{group:04}");
        let t = &self.table;
        let bucketed = |filter| t.buckets(&filter, &sql_from, &sql_to, 3600, &self.field);
        match kind {
            Kind::Page => Query {
                path: format!("/v1/devices/{one}/history?{range}&limit={PAGE}"),
                statement: t.history(
                    &DeviceFilter::Devices(vec![one]),
                    Some(&sql_from),
                    Some(&sql_to),
                    None,
                    Order::Asc,
                    PAGE,
                ),
            },
            Kind::Buckets => Query {
                path: format!("/v1/devices/{one}/history?{buckets}"),
                statement: bucketed(DeviceFilter::Devices(vec![one])),
            },
            Kind::Group => Query {
                path: format!("/v1/history?devices={}&{buckets}", members.join(",")),
                statement: bucketed(DeviceFilter::Devices(members)),
            },
            Kind::Prefix => Query {
                path: format!("/v1/history?devicePrefix={prefix}&{buckets}"),
                statement: bucketed(DeviceFilter::Prefix(prefix)),
            },
        }
    }
}

const START: &str = load::START;

fn rfc3339(time: DateTime<Utc>) -> String {
    time.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The time text the API hands to SQL for a query parameter.
fn canonical(text: &str) -> String {
    parse_time("from", text).unwrap_or_default()
}

/// The peer: the API's SQL, prepared, on connections of its own.
struct Peer {
    clients: Vec<Client>,
    prepared: Vec<tokio_postgres::Statement>,
}

impl Peer {
    async fn connect(url: &str) -> BenchResult<Self> {
        let mut clients = Vec::new();
        for _ in 0..CONNECTIONS {
            let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
            tokio::spawn(connection);
            client.batch_execute(SESSION).await?;
            clients.push(client);
        }
        Ok(Self {
            clients,
            prepared: Vec::new(),
        })
    }

    /// Prepares `sql` on every connection (the statements of one kind share their text).
    async fn prepare(&mut self, sql: &str) -> BenchResult<()> {
        self.prepared.clear();
        for client in &self.clients {
            self.prepared.push(client.prepare(sql).await?);
        }
        Ok(())
    }

    async fn run(&self, worker: usize, statement: &Statement) -> Result<(), String> {
        let params = bind_params(statement);
        let slot = worker % self.clients.len();
        self.clients[slot]
            .query(&self.prepared[slot], &params)
            .await
            .map(|_| ())
            .map_err(|e| match e.as_db_error() {
                Some(db) => format!("{}: {}", db.code().code(), db.message()),
                None => e.to_string(),
            })
    }
}

/// Who answers: the API over HTTP, or the peer.
enum Target {
    Api { http: reqwest::Client, base: String },
    Sql(Peer),
}

impl Target {
    async fn once(&self, worker: usize, query: &Query) -> Result<(), String> {
        match self {
            Target::Api { http, base } => {
                let response = http
                    .get(format!("{base}{}", query.path))
                    .bearer_auth(KEY)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                let status = response.status();
                let body = response.bytes().await.map_err(|e| e.to_string())?;
                if !status.is_success() {
                    return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
                }
                Ok(())
            }
            Target::Sql(peer) => peer.run(worker, &query.statement).await,
        }
    }
}

/// What one side measured for one kind.
struct Run {
    latencies: Vec<Duration>,
    errors: usize,
    first_error: Option<String>,
    seconds: f64,
}

/// Runs `kind` against `target` with `concurrency` workers: one second of warm-up, then
/// `seconds` measured.
async fn measure(
    target: Arc<Target>,
    queries: Arc<Queries>,
    kind: Kind,
    seed: u64,
    concurrency: usize,
    seconds: u64,
) -> Run {
    let warm_end = Instant::now() + Duration::from_secs(1);
    let end = warm_end + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let (target, queries) = (target.clone(), queries.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(seed * 1000 + worker as u64);
            let (mut latencies, mut errors) = (Vec::new(), Vec::new());
            while Instant::now() < end {
                let query = queries.make(kind, &mut rng);
                let started = Instant::now();
                let result = target.once(worker, &query).await;
                if started >= warm_end {
                    match result {
                        Ok(()) => latencies.push(started.elapsed()),
                        Err(e) => errors.push(e),
                    }
                }
            }
            (latencies, errors)
        }));
    }
    let mut run = Run {
        latencies: Vec::new(),
        errors: 0,
        first_error: None,
        seconds: seconds as f64,
    };
    for task in tasks {
        let Ok((latencies, errors)) = task.await else {
            run.errors += 1;
            continue;
        };
        run.latencies.extend(latencies);
        run.errors += errors.len();
        run.first_error = run.first_error.or(errors.into_iter().next());
    }
    run.latencies.sort_unstable();
    run
}

fn report(kind: Kind, system: &str, run: &Run, rows: u64, concurrency: usize) {
    let (p50, p99) = (
        percentile_ms(&run.latencies, 50.0),
        percentile_ms(&run.latencies, 99.0),
    );
    let rate = run.latencies.len() as f64 / run.seconds;
    println!(
        "{:<4} {:<8} p50 {p50:8.2} ms  p99 {p99:8.2} ms  {rate:8.1} req/s  ({} answered, {} errors) — {}",
        system,
        kind.name(),
        run.latencies.len(),
        run.errors,
        kind.what()
    );
    if let Some(error) = &run.first_error {
        println!("     first error: {error}");
    }
    let extra = format!(
        "rows={rows} concurrency={concurrency} errors={}",
        run.errors
    );
    let name = kind.name();
    bench_line(&format!("history_{name}_p50"), system, p50, "ms", &extra);
    bench_line(&format!("history_{name}_p99"), system, p99, "ms", &extra);
    bench_line(
        &format!("history_{name}_rate"),
        system,
        rate,
        "req/s",
        &extra,
    );
}

/// The history benchmark.
pub async fn run() -> BenchResult<()> {
    let pg_url = required_env("TRIBUTARY_TEST_POSTGRES_URL");
    let rows = env_usize("BENCH_HISTORY_ROWS", 10_000_000) as u64;
    let seconds = env_usize("BENCH_HISTORY_SECONDS", 10) as u64;
    let concurrency = env_usize("BENCH_HISTORY_CONCURRENCY", 8).max(1);
    let (pg, connection) = tokio_postgres::connect(&pg_url, NoTls).await?;
    tokio::spawn(connection);
    let history = load::ensure(&pg, rows).await?;
    let rows = history.devices * load::ROWS_PER_DEVICE;
    if history.load_seconds > 0.0 {
        bench_line(
            "history_load_seconds",
            "postgres",
            history.load_seconds,
            "s",
            &format!("rows={rows}"),
        );
    }
    let dir = server::secrets_dir("history")?;
    let api = ApiProcess::start(&dir, |port| {
        server::config(&dir, port, &pg_url, &history.table, None)
    })
    .await?;
    let queries = Arc::new(Queries::new(&history)?);
    let api_target = Arc::new(Target::Api {
        http: reqwest::Client::new(),
        base: api.base.clone(),
    });
    let mut peer = Peer::connect(&pg_url).await?;
    println!(
        "history: {rows} rows, {} devices; {concurrency} requests in flight, {seconds} s per figure; \
         api = tributary-api over HTTP, sql = the same SQL prepared, {CONNECTIONS} connections each",
        history.devices
    );
    for (index, kind) in Kind::ALL.into_iter().enumerate() {
        let seed = index as u64 * 2;
        let api_run = measure(
            api_target.clone(),
            queries.clone(),
            kind,
            seed,
            concurrency,
            seconds,
        )
        .await;
        report(kind, "api", &api_run, rows, concurrency);
        peer.prepare(&queries.make(kind, &mut Rng::new(0)).statement.sql)
            .await?;
        let sql_target = Arc::new(Target::Sql(peer));
        let sql_run = measure(
            sql_target.clone(),
            queries.clone(),
            kind,
            seed + 1,
            concurrency,
            seconds,
        )
        .await;
        report(kind, "sql", &sql_run, rows, concurrency);
        peer = match Arc::try_unwrap(sql_target) {
            Ok(Target::Sql(peer)) => peer,
            _ => return Err("the peer's connections are still in use".into()),
        };
    }
    drop(api);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
