//! Benchmark (not a test), run by `api-image/bench.sh`.
//!
//! History: BENCH_HISTORY_ROWS rows (10 million by default) in a table shaped like a
//! PostgreSQL Sink's, loaded once and reused (see `load.rs`); the real `tributary-api`
//! binary answers a page of one device's rows, one device's day in hourly buckets, and a
//! group's day in hourly buckets (a list of devices, and a `devicePrefix`), with
//! BENCH_HISTORY_CONCURRENCY requests in flight; beside it the same SQL, prepared once, run
//! straight against PostgreSQL with the same concurrency and connections (see `history.rs`).
//!
//! Fan-out: BENCH_SSE_CLIENTS clients on `/v1/stream` while BENCH_SSE_MESSAGES messages are
//! published at BENCH_SSE_RATE per second to the live exchange on a real RabbitMQ; delivery
//! latency per (client, message), messages delivered, and the API process's CPU and memory;
//! beside it a plain AMQP consumer of the same messages (see `fanout.rs`).
//!
//! Every figure is also printed as one line `BENCH figure=<id> system=<id> value=<number>
//! unit=<unit> [key=value…]`, which `hack/bench.sh` collects into `docs/benchmarks.md`.
//!
//! Settings (environment): BENCH_MODE=all|history|fanout, BENCH_HISTORY_ROWS (10000000),
//! BENCH_HISTORY_SECONDS per figure and system (10), BENCH_HISTORY_CONCURRENCY (8),
//! BENCH_SSE_CLIENTS (100), BENCH_SSE_MESSAGES (2000), BENCH_SSE_RATE (100), plus the
//! TRIBUTARY_TEST_POSTGRES_URL and TRIBUTARY_TEST_AMQP_URL printed by `tests/services/*.sh
//! env`.

use std::error::Error;
use std::time::Duration;

mod fanout;
mod history;
mod load;
mod server;

/// The benchmark's error type: anything, reported at the end.
pub(crate) type BenchResult<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// An integer setting from the environment, `default` when unset or not a number.
pub(crate) fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A required variable, or exit saying how to get it.
pub(crate) fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        eprintln!("{name} is not set: run api-image/bench.sh (it starts the servers)");
        std::process::exit(2);
    })
}

/// Prints one figure as a machine-readable line for `hack/bench.sh`; `extra` holds more
/// `key=value` words (or nothing).
pub(crate) fn bench_line(figure: &str, system: &str, value: f64, unit: &str, extra: &str) {
    println!("BENCH figure={figure} system={system} value={value:.3} unit={unit} {extra}");
}

/// The `p`-th percentile (0–100) of sorted durations, in milliseconds (NaN when empty).
pub(crate) fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0
}

/// A small deterministic generator (xorshift64*), so the API and its peer get the same
/// sequence of random queries.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// A number in `0..bound` (`bound` > 0).
    pub(crate) fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % bound.max(1)
    }
}

fn main() -> BenchResult<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mode = std::env::var("BENCH_MODE").unwrap_or_else(|_| "all".into());
    runtime.block_on(async {
        if matches!(mode.as_str(), "all" | "history") {
            history::run().await?;
        }
        if matches!(mode.as_str(), "all" | "fanout") {
            fanout::run().await?;
        }
        if !matches!(mode.as_str(), "all" | "history" | "fanout") {
            return Err(format!("BENCH_MODE={mode}: use all, history or fanout").into());
        }
        Ok(())
    })
}
