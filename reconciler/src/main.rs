//! `switchyard-reconciler`: parse flags, run the subcommand, exit with its status.

use clap::Parser;
use std::process::ExitCode;
use switchyard_reconciler::cli::Cli;

fn main() -> ExitCode {
    switchyard_core::tool::init_logging();
    let cli = Cli::parse();
    ExitCode::from(switchyard_reconciler::run(cli, std::env::vars()))
}
