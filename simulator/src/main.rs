//! Entry point: parse arguments, validate them, run, print the summary.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use tributary_simulator::report::summary_line;
use tributary_simulator::settings::{Cli, Settings};

fn main() -> ExitCode {
    let settings = match Settings::from_cli(Cli::parse()) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    let json = settings.json;
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: starting the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let summary = runtime.block_on(tributary_simulator::run::run(settings));
    if json {
        match serde_json::to_string(&summary) {
            Ok(text) => println!("{text}"),
            Err(error) => eprintln!("error: summary as JSON: {error}"),
        }
    } else {
        println!("{}", summary_line(&summary));
    }
    if summary.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
