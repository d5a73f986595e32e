//! `switchyard-backfill`: copies the existing rows of the old database into the new one in
//! half-open primary-key chunks with binary COPY, checksums every chunk on both sides and
//! repairs what differs from old under row locks; parallel (`--jobs`, and several
//! processes through the chunk table), resumable, throttled, safe while the proxy
//! dual-writes. How and why: `docs/backfill.md`.
//!
//! - [`plan`]: which tables, in what order, cut into which ranges.
//! - [`chunk_table`]: the shared state on new (chunks, leases, control row).
//! - [`copy`]: one chunk's rows, streamed; the direct and the conflict-safe path.
//! - [`chunk_check`]: checksums of a chunk on both sides, diff and repair.
//! - [`worker`]: claim, copy, check, record.
//! - [`throttle`], [`tasks`]: rate limit, pause, adaptive brake, lease renewal.
//! - [`indexes`]: deferred indexes and constraints (`--defer-indexes`).
//! - [`schema_copy`]: `--schema copy`, old's schema restored into new with pg_dump/pg_restore.
//! - [`keyless`]: tables without a primary key, copied whole in one snapshot.
//! - [`progress`], [`report`]: bars or log lines; summary, JSON, metrics, exit status.

pub mod chunk_check;
pub mod chunk_index;
pub mod chunk_table;
pub mod cli;
pub mod config;
pub mod connect;
pub mod copy;
pub mod failpoint;
pub mod indexes;
pub mod keyless;
pub mod plan;
pub mod progress;
pub mod report;
pub mod run;
pub mod schema_copy;
pub mod session_lock;
pub mod table_pass;
pub mod table_scan;
pub mod tasks;
pub mod throttle;
pub mod worker;

use cli::{Cli, Format};
use config::BackfillConfig;
use report::{EXIT_ERROR, EXIT_OK};

/// Runs a parsed command line; `env` is the process environment (injected for tests).
/// Returns the exit status: 0 done and verified, 1 needs attention, 2 error.
pub fn run<I>(cli: Cli, env: I) -> u8
where
    I: IntoIterator<Item = (String, String)>,
{
    let cfg = match cli.load(env) {
        Ok((cfg, warnings)) => {
            switchyard_core::tool::warn_ignored(&warnings);
            cfg
        }
        Err(e) => {
            eprint!("switchyard-backfill: {e}");
            return EXIT_ERROR;
        }
    };
    let Some(runtime) =
        switchyard_core::tool::runtime_with_threads("switchyard-backfill", cfg.backfill.threads)
    else {
        return EXIT_ERROR;
    };
    if cli.pause || cli.resume {
        return runtime.block_on(set_paused(&cfg, cli.pause));
    }
    if cli.dry_run {
        return runtime.block_on(print_dry_run(&cfg, cli.format));
    }
    if cli.schema_only {
        return runtime.block_on(copy_schema_only(&cfg, cli.format));
    }
    let human = cli.format == Format::Human;
    let summary = runtime.block_on(run::run(&cfg, run::RunOptions { bars: human }));
    if human {
        if let Some(e) = &summary.error {
            eprintln!("switchyard-backfill: {e}");
        }
        println!("{}", summary.human());
    } else {
        println!("{}", summary.json());
    }
    if let Some(path) = &cli.metrics_file {
        if let Err(e) = std::fs::write(path, summary.prometheus()) {
            eprintln!(
                "switchyard-backfill: writing the metrics file {}: {e}",
                path.display()
            );
            return EXIT_ERROR;
        }
    }
    summary.exit_code()
}

async fn set_paused(cfg: &BackfillConfig, paused: bool) -> u8 {
    let result = async {
        let mut client = connect::connect(connect::Db::New, &cfg.new, 0).await?;
        chunk_table::ensure_schema(&mut client).await?;
        chunk_table::set_paused(&client, paused).await?;
        anyhow::Ok(())
    }
    .await;
    match result {
        Ok(()) => {
            println!(
                "backfills on {} {}",
                connect::shown(&cfg.new),
                if paused { "paused" } else { "resumed" }
            );
            EXIT_OK
        }
        Err(e) => {
            eprintln!("switchyard-backfill: {e:#}");
            EXIT_ERROR
        }
    }
}

async fn copy_schema_only(cfg: &BackfillConfig, format: Format) -> u8 {
    let result = async {
        let control = connect::connect(connect::Db::New, &cfg.new, 0).await?;
        schema_copy::prepare(&cfg.old, &cfg.new, cfg.backfill.pg_bin.as_deref(), &control).await
    }
    .await;
    match result {
        Ok(outcome) => {
            if format == Format::Json {
                println!("{}", serde_json::json!({ "schema": outcome }));
            } else {
                println!(
                    "{}",
                    match outcome {
                        schema_copy::Outcome::Copied => "schema copied from old",
                        schema_copy::Outcome::AlreadyThere => "schema: old's already on new, kept",
                    }
                );
            }
            EXIT_OK
        }
        Err(e) => {
            eprintln!("switchyard-backfill: {e:#}");
            EXIT_ERROR
        }
    }
}

async fn print_dry_run(cfg: &BackfillConfig, format: Format) -> u8 {
    match run::dry_run(cfg).await {
        Ok((tables, selection)) => {
            if format == Format::Json {
                let doc = serde_json::json!({ "tables": tables, "skipped": selection.skipped });
                println!("{doc}");
            } else {
                println!(
                    "{:<30} {:<20} {:<9} {:>12} {:>7} {:<8} depends on",
                    "table", "key", "split", "est. rows", "chunks", "state"
                );
                for t in &tables {
                    let state = if t.state == "resumes" {
                        format!("resumes ({} of {} chunks done)", t.chunks_done, t.chunks)
                    } else {
                        t.state.clone()
                    };
                    println!(
                        "{:<30} {:<20} {:<9} {:>12} {:>7} {:<8} {}",
                        t.table,
                        t.key_columns.join(","),
                        t.split,
                        t.estimated_rows,
                        t.chunks,
                        state,
                        t.depends_on.join(", ")
                    );
                }
                for s in &selection.skipped {
                    println!("{:<30} skipped: {}", s.table, s.reason);
                }
                println!("dry run: nothing was written");
            }
            EXIT_OK
        }
        Err(e) => {
            eprintln!("switchyard-backfill: {e:#}");
            EXIT_ERROR
        }
    }
}
