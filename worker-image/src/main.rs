//! Entry point: parse arguments and config, start the runtime, hand over.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use tributary_worker::{config, Worker};

/// The Tributary worker: consumes one queue, processes every message and writes it to
/// the configured sinks, acknowledging only after every sink confirmed.
#[derive(Parser, Debug)]
#[command(name = "tributary-worker", version, about, long_about = None)]
struct Cli {
    /// The worker config file (rendered by the operator, or written by hand).
    #[arg(
        long,
        env = "TRIBUTARY_WORKER_CONFIG",
        default_value = "/etc/tributary/worker.yaml"
    )]
    config: PathBuf,
    /// Check the config (parse, compile expressions, read secrets) and exit.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    tributary_worker::http_client::install_crypto_provider();
    let config = config::load(&cli.config)?;
    let worker = Worker::build(config).context("cannot start the worker")?;
    if cli.check {
        println!("config ok");
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(tributary_service_kit::shutdown::cancel_on_signal(
            shutdown.clone(),
        ));
        worker.run(shutdown).await.context("worker stopped")
    })
}
