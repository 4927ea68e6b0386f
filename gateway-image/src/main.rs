//! Entry point: parse arguments and config, start the runtime, hand over.
#![forbid(unsafe_code)]

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// The Tributary gateway: devices connect over MQTT and HTTP, and every message it
/// acknowledges is durably queued.
#[derive(Parser, Debug)]
#[command(name = "tributary-gateway", version, about, long_about = None)]
struct Cli {
    /// The gateway config file (rendered by the operator, or written by hand).
    #[arg(
        long,
        env = "TRIBUTARY_GATEWAY_CONFIG",
        default_value = "/etc/tributary/gateway.yaml"
    )]
    config: PathBuf,
    /// Log as JSON lines (default: human-readable).
    #[arg(long, env = "TRIBUTARY_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Read a password on stdin and print its argon2id hash for a password file line.
    HashPassword,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    if cli.log_json {
        logs.json().init();
    } else {
        logs.with_ansi(ansi).init();
    }
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(Command::HashPassword) = cli.command {
        let mut password = String::new();
        std::io::stdin()
            .read_to_string(&mut password)
            .context("reading stdin")?;
        let hash = tributary_gateway::auth::hash_password(password.trim_end().as_bytes())
            .map_err(|error| anyhow::anyhow!("hashing: {error}"))?;
        println!("{hash}");
        return Ok(());
    }
    let config = tributary_gateway::app::load_config(&cli.config)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(tributary_gateway::app::run(
        config,
        tributary_service_kit::shutdown::signal(),
    ))?;
    Ok(())
}
