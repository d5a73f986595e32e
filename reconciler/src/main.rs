//! `switchyard-reconciler`: parse flags, run the subcommand, exit with its status.

use clap::Parser;
use std::process::ExitCode;
use switchyard_reconciler::cli::Cli;
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
    ExitCode::from(switchyard_reconciler::run(cli, std::env::vars()))
}
