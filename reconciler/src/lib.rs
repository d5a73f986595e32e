//! `switchyard-reconciler`: verifies that tables on the old and new databases are equal
//! (range checksums, bisection, row comparison, re-check of live rows) and repairs the
//! differences from the source of truth ([`verify`], [`repair`](verify::RepairMode));
//! drains the retry logs and change logs into the other side ([`replay`], with the
//! Kafka-backed log in [`replay_kafka`]); finishes the prepared transactions a proxy left
//! in doubt ([`recover`]). Progress on a terminal: [`progress`].

pub mod apply;
pub mod cli;
pub mod config;
pub mod connect;
pub mod failpoint;
pub mod origin;
pub mod progress;
pub mod progress_table;
pub mod recover;
pub mod replay;
pub mod replay_kafka;
pub mod replay_report;
pub mod report;
pub mod schema;
pub mod verify;
pub mod verify_keyless;
pub mod verify_sequences;

use cli::{Cli, Command, Format, VerifyArgs};
use config::ReconcilerConfig;
use std::io::Write;
use switchyard_core::config_layer::{ConfigError, ConfigErrors};
use switchyard_core::diff::RowHash;
use verify::RepairMode;

/// Exit status when verify or repair could not do its work.
pub const EXIT_ERROR: u8 = 2;

/// Runs a parsed command line; `env` is the process environment (injected for tests).
/// Returns the exit status: 0 equal (or repaired), 1 differences, 2 error.
pub fn run<I>(cli: Cli, env: I) -> u8
where
    I: IntoIterator<Item = (String, String)>,
{
    match cli.command {
        Command::Verify(args) => run_verify(&args, None, env),
        Command::Repair(args) => run_verify(
            &args.verify,
            Some(RepairMode {
                source: args.source,
                dry_run: args.dry_run,
            }),
            env,
        ),
        Command::Replay(args) => run_replay(&args, env),
        Command::Recover(args) => run_recover(&args, env),
    }
}

/// The configuration `loaded`, or `None` once its errors are shown; with `warn`, the
/// settings it ignored are shown too.
fn config_of(
    loaded: Result<(ReconcilerConfig, Vec<ConfigError>), ConfigErrors>,
    warn: bool,
) -> Option<ReconcilerConfig> {
    match loaded {
        Ok((cfg, warnings)) => {
            if warn {
                switchyard_core::tool::warn_ignored(&warnings);
            }
            Some(cfg)
        }
        Err(e) => {
            eprint!("switchyard-reconciler: {e}");
            None
        }
    }
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    switchyard_core::tool::runtime("switchyard-reconciler")
}

/// The configuration `loaded` (see [`config_of`]), then a runtime; `None` once what went
/// wrong is shown.
fn config_and_runtime(
    loaded: Result<(ReconcilerConfig, Vec<ConfigError>), ConfigErrors>,
    warn: bool,
) -> Option<(ReconcilerConfig, tokio::runtime::Runtime)> {
    let cfg = config_of(loaded, warn)?;
    Some((cfg, runtime()?))
}

/// Whether the metrics file at `path` was `written`; shows the error when not.
fn metrics_written(path: &std::path::Path, written: std::io::Result<()>) -> bool {
    if let Err(e) = &written {
        eprintln!(
            "switchyard-reconciler: writing the metrics file {}: {e}",
            path.display()
        );
    }
    written.is_ok()
}

fn run_replay<I>(args: &cli::ReplayArgs, env: I) -> u8
where
    I: IntoIterator<Item = (String, String)>,
{
    let Some((cfg, rt)) = config_and_runtime(args.load(env), false) else {
        return EXIT_ERROR;
    };
    let opts = replay::ReplayOptions {
        batch: args.batch.max(1),
        max_attempts: args.max_attempts.max(1),
        follow: args.follow,
    };
    let shown = progress::ReplayProgress::new(progress::display(
        args.format == Format::Human,
        args.progress,
    ));
    let shown = std::sync::Mutex::new(shown);
    let metrics_file = args.metrics_file.clone();
    let write_metrics = |r: &replay::ReplayReport| -> bool {
        let Some(path) = &metrics_file else {
            return true;
        };
        // Written whole then renamed, so a scraper never reads half a file.
        let tmp = path.with_extension("tmp");
        metrics_written(
            path,
            std::fs::write(&tmp, r.prometheus()).and_then(|()| std::fs::rename(&tmp, path)),
        )
    };
    let result = match cfg.retry_log.backend {
        switchyard_core::retry_kafka::Backend::Kafka => {
            rt.block_on(replay_kafka::run(&cfg, &opts, |r| {
                if let Ok(mut p) = shown.lock() {
                    p.report(r);
                }
                write_metrics(r);
            }))
        }
        switchyard_core::retry_kafka::Backend::Embedded => {
            rt.block_on(replay::run_with(&cfg, &opts, &mut |done, failed| {
                if let Ok(mut p) = shown.lock() {
                    p.batch(done, failed);
                }
            }))
        }
    };
    if let Ok(p) = shown.lock() {
        p.finish();
    }
    match result {
        Ok(r) => {
            if args.format == Format::Json {
                println!("{}", serde_json::to_string(&r).unwrap_or_default());
            } else {
                println!(
                    "replayed {} records in {:.2}s ({} rows re-synced, {} tables repaired, {} statements applied); {} failed, {} dead-lettered, {} dropped (origin rolled back); backlog {}; change log: {} rows applied ({} written outside every proxy); intents left behind: {} queued, {} cleared",
                    r.records_done, r.seconds, r.rows_resynced, r.tables_repaired, r.statements_applied,
                    r.records_failed, r.records_dead, r.records_dropped_aborted, r.backlog,
                    r.change_log_events, r.writes_outside_proxy, r.intents_queued, r.intents_cleared
                );
                for (d, c) in &r.directions {
                    println!(
                        "  {d}: {} records, {} change-log rows, {} dead-lettered, backlog {}",
                        c.records_done, c.change_log_events, c.records_dead, c.backlog
                    );
                }
            }
            if !write_metrics(&r) {
                return EXIT_ERROR;
            }
            if r.backlog == 0 && r.records_dead == 0 && r.embedded_backlog.unwrap_or(0) == 0 {
                0
            } else {
                1
            }
        }
        Err(e) => {
            eprintln!("switchyard-reconciler: replay: {e:#}");
            EXIT_ERROR
        }
    }
}

fn run_recover<I>(args: &cli::RecoverArgs, env: I) -> u8
where
    I: IntoIterator<Item = (String, String)>,
{
    let (Some(cfg), Some(rt)) = (config_of(args.common.load(env), false), runtime()) else {
        return EXIT_ERROR;
    };
    let min_age = std::time::Duration::from_secs_f64(args.min_age_secs.max(0.0));
    match rt.block_on(recover::run(&cfg, min_age)) {
        Ok(r) => {
            if args.format == Format::Json {
                println!("{}", recover::json(&r));
            } else {
                println!("{}", recover::human(&r));
            }
            let t = r.total();
            if t.pending.is_empty() && t.unknown.is_empty() {
                0
            } else {
                1
            }
        }
        Err(e) => {
            eprintln!("switchyard-reconciler: recover: {e:#}");
            EXIT_ERROR
        }
    }
}

fn run_verify<I>(args: &VerifyArgs, repair: Option<RepairMode>, env: I) -> u8
where
    I: IntoIterator<Item = (String, String)>,
{
    let Some((cfg, runtime)) = config_and_runtime(args.load(env), true) else {
        return EXIT_ERROR;
    };
    let human = args.format == Format::Human;
    let mut shown = progress::VerifyProgress::new(
        progress::display(human, args.progress),
        if repair.is_some() { "repair" } else { "verify" },
    );
    let mut print = |e: verify::Event<'_>| {
        shown.event(e, |t| {
            if human {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{}", report::human_table(t));
                let _ = out.flush();
            }
        })
    };
    let row_hash = args.row_hash.map(|r| match r {
        cli::RowHashArg::Record => RowHash::Record,
        cli::RowHashArg::Text => RowHash::Text,
    });
    let scope = verify::Scope {
        row_hash,
        sequences: !args.skip_sequences,
    };
    let report = runtime.block_on(verify::run(&cfg, scope, repair, &mut print));
    shown.finish();
    if human {
        for q in &report.sequences {
            println!("{}", report::human_sequence(q));
        }
        if let Some(e) = &report.error {
            eprintln!("switchyard-reconciler: {e}");
        }
        println!("{}", report.summary());
    } else {
        println!("{}", report.json());
    }
    let code = report.exit_code();
    if let Some(path) = &args.metrics_file {
        if !metrics_written(path, std::fs::write(path, report.prometheus())) {
            return EXIT_ERROR;
        }
    }
    code
}
