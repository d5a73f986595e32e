//! `switchyard-reconciler`: replays the retry log, resolves in-doubt commits, verifies and repairs tables.
//! Not built yet (the reconciler issues); the binary exists so the workspace layout and
//! the interfaces are in place, and it says so plainly rather than pretending to work.

use clap::Parser;
use std::process::ExitCode;

/// Replay, recover, verify and repair (not implemented yet).
#[derive(Debug, Parser)]
#[command(name = "switchyard-reconciler", version)]
struct Args {
    #[arg(long)]
    old: Option<String>,
    #[arg(long)]
    new: Option<String>,
}

fn main() -> ExitCode {
    let _ = Args::parse();
    eprintln!("switchyard-reconciler: not implemented in this version; see the reconciler issues");
    ExitCode::from(2)
}
