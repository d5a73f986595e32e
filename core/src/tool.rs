//! What the command-line tools (backfill, reconciler) share at their top: logging set up
//! from `SWITCHYARD_LOG`, the async runtime, and how ignored environment variables are
//! reported.

use crate::config_layer::ConfigError;

/// Log lines on stderr, filtered by `SWITCHYARD_LOG` (default `warn`), coloured only on a
/// terminal.
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("SWITCHYARD_LOG").unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// A multi-threaded runtime, or `None` after saying why on stderr (`tool: ...`).
pub fn runtime(tool: &str) -> Option<tokio::runtime::Runtime> {
    runtime_with_threads(tool, 0)
}

/// [`build_runtime`], or `None` after saying why on stderr (`tool: ...`).
pub fn runtime_with_threads(tool: &str, threads: usize) -> Option<tokio::runtime::Runtime> {
    match build_runtime(threads) {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("{tool}: starting the async runtime: {e}");
            None
        }
    }
}

/// The async runtime with `threads` worker threads: 1 runs every task on the calling
/// thread (no work stealing, so no cross-thread wake-ups, which dominate the CPU profile
/// of a relay on a small box), 0 means one per core.
pub fn build_runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        0 => tokio::runtime::Builder::new_multi_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    builder.enable_all().build()
}

/// Warns about `SWITCHYARD_*` variables that name no setting.
pub fn warn_ignored(warnings: &[ConfigError]) {
    for w in warnings {
        tracing::warn!(variable = %w.origin, "Environment variable names no setting; ignored.");
    }
}
