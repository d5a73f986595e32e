//! `switchyard-proxy`: parse flags, load config, run until SIGTERM or Ctrl-C.

use anyhow::Context;
use clap::Parser;
use std::process::ExitCode;
use switchyard_proxy::cli::Args;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("SWITCHYARD_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let mut args = Args::parse();
    if let Some(switchyard_proxy::cli::Command::Cutover(c)) = args.command.take() {
        return switchyard_proxy::cutover::cli::run(c);
    }
    let config = match args.load_with_warnings(std::env::vars()) {
        Ok((c, warnings)) => {
            for w in warnings {
                tracing::warn!(variable = %w.origin, "Environment variable names no setting; ignored.");
            }
            c
        }
        Err(e) => {
            eprint!("switchyard-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard-proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: switchyard_proxy::ProxyConfig) -> anyhow::Result<()> {
    // The accept loop, the admin server and background work need little: one thread.
    // Sessions run on their own threads (`worker_threads`, see `session_threads`), or on
    // this one when it is 1.
    let runtime = switchyard_core::tool::build_runtime(1).context("starting the async runtime")?;
    runtime.block_on(async {
        let proxy = switchyard_proxy::start(config)
            .await
            .context("starting the proxy")?;
        let stop = proxy.shutdown_sender();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!("Signal received: draining sessions.");
            let _ = stop.send(true);
        });
        proxy.wait().await;
        Ok(())
    })
}
