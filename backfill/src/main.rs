//! `switchyard-backfill`: parse flags, run, exit with the run's status.

use clap::Parser;
use std::process::ExitCode;
use switchyard_backfill::cli::Cli;

fn main() -> ExitCode {
    switchyard_core::tool::init_logging();
    let cli = Cli::parse();
    ExitCode::from(switchyard_backfill::run(cli, std::env::vars()))
}
