//! The history table: shaped like the one a PostgreSQL Sink with `createTable: true` writes
//! (`id` text primary key, `device`, `topic`, `received_at` timestamptz, `payload` jsonb),
//! filled by PostgreSQL itself from `generate_series`, with the index the API's README
//! recommends.
//!
//! Loading 10 million rows takes minutes, so a complete table is kept and reused: its name
//! holds the row count and the layout's version, and it gets that name only once loaded
//! and indexed (a load cut short leaves a `_loading` table, dropped by the next run).
//!
//! Layout: one row per device per minute from 2026-01-01T00:00Z, `rows / 10,000` devices
//! (`dev-00000`, `dev-00001`, …) so every device has 10,000 rows (about 6.9 days), stored
//! in arrival order (the devices of one minute side by side, as a sink writes them).

use std::time::Instant;

use tokio_postgres::Client;

use crate::BenchResult;

/// Bump when the generated rows change shape.
const LAYOUT: u32 = 1;
/// Rows of each device.
pub const ROWS_PER_DEVICE: u64 = 10_000;
/// The first row's time.
pub const START: &str = "2026-01-01T00:00:00Z";
/// Rows per INSERT (one progress line each).
const CHUNK: u64 = 1_000_000;

/// The generated table.
pub struct History {
    /// Its name.
    pub table: String,
    /// Devices `dev-00000` … in it.
    pub devices: u64,
    /// Seconds the load took (0 when an existing table was reused).
    pub load_seconds: f64,
}

/// A device's id.
pub fn device(index: u64) -> String {
    format!("dev-{index:05}")
}

/// Returns the table for `rows` rows, loading it unless a complete one exists.
pub async fn ensure(pg: &Client, rows: u64) -> BenchResult<History> {
    let devices = (rows / ROWS_PER_DEVICE).max(1);
    let rows = devices * ROWS_PER_DEVICE;
    let table = format!("api_bench_readings_v{LAYOUT}_{rows}");
    let exists: bool = pg
        .query_one("SELECT to_regclass($1::text) IS NOT NULL", &[&table])
        .await?
        .get(0);
    let mut load_seconds = 0.0;
    if exists {
        eprintln!("history: reusing {table} ({rows} rows, {devices} devices)");
    } else {
        load_seconds = load(pg, &table, rows, devices).await?;
    }
    ensure_indexes(pg, &table).await?;
    let size: String = pg
        .query_one(
            "SELECT pg_size_pretty(pg_total_relation_size($1::text::regclass))",
            &[&table],
        )
        .await?
        .get(0);
    eprintln!("history: {table} holds {rows} rows, {size} with its indexes");
    Ok(History {
        table,
        devices,
        load_seconds,
    })
}

/// Fills `{table}_loading` in chunks (printing progress), adds the primary key, and gives
/// it its final name; the seconds that took.
async fn load(pg: &Client, table: &str, rows: u64, devices: u64) -> BenchResult<f64> {
    let loading = format!("{table}_loading");
    pg.batch_execute(&format!(
        "DROP TABLE IF EXISTS {loading}; \
         CREATE TABLE {loading} (\"id\" text, \"device\" text, \"topic\" text, \
         \"received_at\" timestamptz, \"payload\" jsonb)"
    ))
    .await?;
    let started = Instant::now();
    let insert = format!(
        "INSERT INTO {loading} SELECT \
           '01BENCH' || lpad(g::text, 19, '0'), \
           'dev-' || lpad((g % $3)::text, 5, '0'), \
           'devices/dev-' || lpad((g % $3)::text, 5, '0') || '/telemetry', \
           TIMESTAMPTZ '{START}' + (g / $3) * interval '1 minute' + (g % $3) * interval '1 ms', \
           jsonb_build_object('temperature', 20 + (g % 97) / 10.0, 'humidity', 40 + g % 53, \
                              'seq', g / $3) \
         FROM generate_series($1::bigint, $2::bigint) AS g"
    );
    let devices = devices as i64;
    let mut done = 0u64;
    while done < rows {
        let last = (done + CHUNK).min(rows) - 1;
        pg.execute(&insert, &[&(done as i64), &(last as i64), &devices])
            .await?;
        done = last + 1;
        eprintln!(
            "history: loading {loading}: {done} / {rows} rows ({:.0} s)",
            started.elapsed().as_secs_f64()
        );
    }
    eprintln!("history: adding the primary key");
    pg.batch_execute(&format!(
        "SET maintenance_work_mem = '512MB'; \
         ALTER TABLE {loading} ADD PRIMARY KEY (id); \
         ALTER TABLE {loading} RENAME TO {table}"
    ))
    .await?;
    let seconds = started.elapsed().as_secs_f64();
    eprintln!("history: loaded {table} in {seconds:.0} s");
    Ok(seconds)
}

/// The index the API's README recommends, made when missing (replacing the one it
/// recommended before), then fresh statistics and visibility map when anything changed.
async fn ensure_indexes(pg: &Client, table: &str) -> BenchResult<()> {
    let index = format!("{table}_device_pattern_time");
    let exists: bool = pg
        .query_one("SELECT to_regclass($1::text) IS NOT NULL", &[&index])
        .await?
        .get(0);
    if exists {
        return Ok(());
    }
    let started = Instant::now();
    eprintln!("history: creating the index {index}");
    pg.batch_execute(&format!(
        "SET maintenance_work_mem = '512MB'; \
         DROP INDEX IF EXISTS {table}_device_time; \
         CREATE INDEX {index} ON {table} (device text_pattern_ops, received_at, id)"
    ))
    .await?;
    // Alone: VACUUM cannot run in the implicit transaction of a multi-statement batch.
    pg.batch_execute(&format!("VACUUM ANALYZE {table}")).await?;
    eprintln!(
        "history: indexed and analysed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
