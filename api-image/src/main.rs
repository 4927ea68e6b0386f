//! Entry point: parse arguments and config, start the runtime, hand over.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use tributary_api::{config, Api};

/// The Tributary application API: devices, latest values, history with time buckets and a
/// live stream, read from what the workers' sinks stored.
#[derive(Parser, Debug)]
#[command(name = "tributary-api", version, about, long_about = None)]
struct Cli {
    /// The API config file.
    #[arg(
        long,
        env = "TRIBUTARY_API_CONFIG",
        default_value = "/etc/tributary/api.yaml"
    )]
    config: PathBuf,
    /// Check the config (parse, read secrets) and exit.
    #[arg(long)]
    check: bool,
    /// Print the OpenAPI document and exit.
    #[arg(long)]
    openapi: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // lapin logs a returned (undeliverable) command with its payload at warn; the API
    // answers it as a 409 and never logs payloads.
    let filter = match "lapin::returned_messages=error".parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
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
    if cli.openapi {
        use std::io::Write;
        let text = format!("{:#}\n", tributary_api::openapi::document());
        // A closed pipe (`| head`) is not an error worth a panic.
        return match std::io::stdout().write_all(text.as_bytes()) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
            _ => Ok(()),
        };
    }
    let config = config::load(&cli.config)?;
    let api = Api::build(config).context("cannot start the API")?;
    if cli.check {
        println!("config ok");
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    runtime.block_on(async move {
        let (_, server) = api.bind().await?;
        let shutdown = CancellationToken::new();
        tokio::spawn(tributary_service_kit::shutdown::cancel_on_signal(
            shutdown.clone(),
        ));
        server.run(shutdown).await.context("server failed")
    })
}
