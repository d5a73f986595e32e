//! `switchyard-backfill`: parse flags, run, exit with the run's status.

use clap::Parser;
use std::process::ExitCode;
use switchyard_backfill::cli::Cli;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("SWITCHYARD_LOG").unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    ExitCode::from(switchyard_backfill::run(cli, std::env::vars()))
}
