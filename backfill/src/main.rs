//! `switchyard-backfill`: copies existing rows old → new in checksummed primary-key ranges.
//! Not built yet (issue "switchyard-backfill"); the binary exists so the workspace layout and
//! the interfaces are in place, and it says so plainly rather than pretending to work.

use clap::Parser;
use std::process::ExitCode;

/// Copy existing rows from the old database to the new one (not implemented yet).
#[derive(Debug, Parser)]
#[command(name = "switchyard-backfill", version)]
struct Args {
    #[arg(long)]
    old: Option<String>,
    #[arg(long)]
    new: Option<String>,
}

fn main() -> ExitCode {
    let _ = Args::parse();
    eprintln!("switchyard-backfill: not implemented in this version; see the backfill issue");
    ExitCode::from(2)
}
