//! A whole backfill run: connect, select and plan the tables (once, stored in the chunk
//! table; a restarted or second process reuses the plan), start the workers and the
//! background tasks, wait, and sum up from the chunk table.

use crate::chunk_table::{self, sql_set, PlannedTable, FINISHED};
use crate::config::{BackfillConfig, FkMode, SchemaMode};
use crate::connect::{connect, Db};
use crate::plan::{select_tables, split_table, Selection, TablePlan};
use crate::progress::{Progress, TableStart};
use crate::report::Summary;
use crate::throttle::Throttle;
use crate::worker::{run_worker, Shared};
use crate::{indexes, keyless, schema_copy, tasks};
use anyhow::{Context, Result};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use switchyard_core::checksum::{server_version_num, RowHash};
use switchyard_core::connect::check_writer;
use switchyard_core::key::KeyRange;
use tokio::task::JoinSet;
use tokio_postgres::Client;

/// How the run presents itself.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    /// Draw progress bars (when stderr is a terminal).
    pub bars: bool,
}

/// Runs the backfill; errors that stop it end up in `Summary::error`.
pub async fn run(cfg: &BackfillConfig, opts: RunOptions) -> Summary {
    let started = Instant::now();
    let mut summary = Summary::default();
    if let Err(e) = run_inner(cfg, opts, &mut summary).await {
        summary.error = Some(format!("{e:#}"));
    }
    summary.seconds = started.elapsed().as_secs_f64();
    summary.rows_per_second = summary.rows_this_run as f64 / summary.seconds.max(1e-3);
    summary
}

async fn select(cfg: &BackfillConfig, old: &Client, new: &Client) -> Result<Selection> {
    select_tables(
        old,
        new,
        &cfg.table_names(),
        &cfg.excluded(),
        cfg.backfill.fk_mode == FkMode::Order,
    )
    .await
}

async fn run_inner(cfg: &BackfillConfig, opts: RunOptions, summary: &mut Summary) -> Result<()> {
    // One after the other, so that with both unreachable the message names old.
    let old = connect(Db::Old, &cfg.old, cfg.backfill.source_statement_timeout_ms).await?;
    let mut control = connect(Db::New, &cfg.new, 0).await?;
    // Before anything is planned or written: the workers open their loading sessions
    // only when they claim a chunk, and a role they could not set up must be refused
    // now, with the fix, not chunk after chunk.
    check_writer(&mut control, Db::New, cfg.backfill.write_mode()).await?;
    // Before the tables are selected: they are looked up on new.
    if cfg.backfill.schema == SchemaMode::Copy {
        let outcome =
            schema_copy::prepare(&cfg.old, &cfg.new, cfg.backfill.pg_bin.as_deref(), &control)
                .await?;
        tracing::info!(?outcome, "Schema of new ready.");
        summary.schema = Some(outcome);
    }
    let selection = select(cfg, &old, &control).await?;
    summary.skipped = selection.skipped.clone();
    let plans = selection.tables;
    let keyless_plans = selection.keyless;
    let order: Vec<String> = plans.iter().map(|p| p.quoted.clone()).collect();
    // Keyless tables are copied after the keyed ones, by their own pass.
    let all: Vec<String> = order
        .iter()
        .cloned()
        .chain(keyless_plans.iter().map(|p| p.quoted.clone()))
        .collect();
    let display: HashMap<String, String> = plans
        .iter()
        .chain(&keyless_plans)
        .map(|p| (p.quoted.clone(), p.name.to_string()))
        .collect();

    chunk_table::ensure_schema(&mut control).await?;
    plan_missing(cfg, &old, &mut control, &plans, &keyless_plans).await?;
    if cfg.backfill.bulk == Some(true) && cfg.backfill.dual_writes {
        tracing::warn!("--bulk needs --dual-writes off (nothing else may write to new): not used.");
    }
    if cfg.backfill.scan_old && !cfg.backfill.bulk_mode() {
        tracing::warn!("--scan-old reads tables for bulk mode only (--dual-writes off, --bulk not off): not used.");
    }
    if cfg.backfill.bulk_mode() {
        let bulk = indexes::defer_bulk(&mut control, &plans).await?;
        if !bulk.is_empty() {
            tracing::info!(tables = ?bulk, "Bulk mode: keys and indexes dropped; chunks are verified after one rebuild.");
        }
    }
    for p in plans.iter().filter(|p| p.key_missing_on_new) {
        if !chunk_table::bulk_loading(&control, &p.quoted).await? {
            let key: Vec<&str> = p.old.key_columns().map(|c| c.name.as_str()).collect();
            anyhow::bail!(
                "table {} has primary key {key:?} on old but none on new",
                p.name
            );
        }
    }
    if cfg.backfill.defers_indexes() {
        indexes::defer(&mut control, &plans).await?;
    }

    let row_hash = RowHash::for_versions(
        server_version_num(&old).await?,
        server_version_num(&control).await?,
    );
    let starts = table_starts(&control, &all, &display).await?;
    let progress = Progress::new(&starts, opts.bars);
    let throttle = Arc::new(Throttle::new(cfg.backfill.max_rows_per_sec));
    // Before any worker claims: a run started while paused copies nothing.
    let ctl = chunk_table::read_control(&control).await?;
    throttle.set_paused(ctl.paused);
    if let Some(rate) = ctl.max_rows_per_sec {
        throttle.set_rate(rate.max(0) as u64);
    }
    let control = Arc::new(control);
    let mut background = JoinSet::new();
    tasks::spawn(
        &mut background,
        cfg,
        control.clone(),
        throttle.clone(),
        progress.clone(),
    );
    let tables = Shared::table_work(plans.clone(), row_hash);
    let scannable = order
        .iter()
        .filter(|t| tables.get(*t).is_some_and(|w| w.pass_key.is_some()))
        .cloned()
        .collect();
    let shared = Arc::new(Shared {
        cfg: cfg.clone(),
        tables,
        order: order.clone(),
        scannable,
        control: control.clone(),
        worker_prefix: worker_prefix(),
        throttle: throttle.clone(),
        progress: progress.clone(),
        rebuild_guard: tokio::sync::Mutex::new(()),
        rebuilt: std::sync::Mutex::new(Vec::new()),
        stuck_writers: std::sync::Mutex::new(Vec::new()),
        changed: tokio::sync::Notify::new(),
    });
    let rows_before: i64 = starts.iter().map(|s| s.rows_done as i64).sum();
    let mut workers = JoinSet::new();
    for job in 0..cfg.backfill.jobs {
        workers.spawn(run_worker(shared.clone(), job));
    }
    let mut first_error = None;
    while let Some(r) = workers.join_next().await {
        let r = r.context("a worker task panicked").and_then(|r| r);
        if let Err(e) = r {
            if first_error.is_none() {
                // The others stop at their next claim; in-flight chunks are retried by
                // the next run.
                workers.abort_all();
                first_error = Some(e);
            }
        }
    }
    if first_error.is_none() && !keyless_plans.is_empty() {
        // While the background tasks still renew the keyless chunks' leases.
        let k = keyless::Keyless {
            cfg: cfg.clone(),
            control: control.clone(),
            throttle,
            progress: progress.clone(),
            worker_prefix: shared.worker_prefix.clone(),
            row_hash,
        };
        match keyless::copy_all(&k, &keyless_plans).await {
            Ok(refused) => summary.refused = refused,
            Err(e) => first_error = Some(e),
        }
    }
    background.abort_all();
    progress.finish();
    if let Some(e) = first_error {
        return Err(e);
    }

    if let Ok(mut r) = shared.rebuilt.lock() {
        summary.rebuilt = std::mem::take(&mut *r);
    }
    let totals = chunk_table::totals(&control, &all).await?;
    let rows_after: i64 = totals.iter().map(|t| t.rows_old).sum();
    summary.rows_this_run = (rows_after - rows_before).max(0) as u64;
    if cfg.backfill.defers_indexes() || indexes::pending(&control).await? {
        let finished: Vec<String> = totals
            .iter()
            .filter(|t| t.open == 0 && t.failed == 0)
            .map(|t| t.table.clone())
            .collect();
        let more = indexes::rebuild(cfg, &control, &finished).await?;
        summary.rebuilt.extend(more);
    }
    summary.tables = totals
        .into_iter()
        .map(|mut t| {
            if let Some(d) = display.get(&t.table) {
                t.table = d.clone();
            }
            t
        })
        .collect();
    Ok(())
}

/// Plans the tables no process has planned yet, under the planning lock (a second process
/// starting at the same time waits, then finds the plan).
async fn plan_missing(
    cfg: &BackfillConfig,
    old: &Client,
    control: &mut Client,
    plans: &[TablePlan],
    keyless_plans: &[TablePlan],
) -> Result<()> {
    let names: Vec<String> = plans
        .iter()
        .chain(keyless_plans)
        .map(|p| p.quoted.clone())
        .collect();
    let tx = control
        .transaction()
        .await
        .context("starting the planning transaction on new")?;
    let planned = chunk_table::planned_tables(&tx, &names).await?;
    for plan in plans.iter().filter(|p| !planned.contains(&p.quoted)) {
        let split = split_table(old, plan, cfg.backfill.chunk_rows).await?;
        chunk_table::insert_plan(
            &tx,
            &PlannedTable {
                table_name: plan.quoted.clone(),
                key_columns: plan.old.key_columns().map(|c| c.name.clone()).collect(),
                split: split.method,
                chunk_rows: cfg.backfill.chunk_rows as i64,
                estimated_rows: split.estimated_rows,
                depends_on: plan.depends_on.clone(),
                ranges: split.ranges,
            },
        )
        .await?;
    }
    for plan in keyless_plans
        .iter()
        .filter(|p| !planned.contains(&p.quoted))
    {
        chunk_table::insert_plan(
            &tx,
            &PlannedTable {
                table_name: plan.quoted.clone(),
                key_columns: Vec::new(),
                split: keyless::SPLIT,
                chunk_rows: 0,
                estimated_rows: keyless::estimated_rows(old, plan).await?,
                depends_on: Vec::new(),
                ranges: vec![KeyRange::all()],
            },
        )
        .await?;
    }
    tx.commit().await.context("committing the plan on new")?;
    Ok(())
}

/// Where each table stands, for the progress display.
async fn table_starts(
    control: &Client,
    order: &[String],
    display: &HashMap<String, String>,
) -> Result<Vec<TableStart>> {
    let rows = control
        .query(
            &format!(
                "SELECT t.table_name, t.estimated_rows, \
                        coalesce(sum(c.rows_old) FILTER (WHERE c.status IN {finished}), 0)::int8, \
                        count(c.*), count(c.*) FILTER (WHERE c.status IN {finished}) \
                 FROM _switchyard.backfill_tables t \
                 LEFT JOIN _switchyard.backfill_chunks c USING (table_name) \
                 WHERE t.table_name = ANY($1) GROUP BY t.table_name, t.estimated_rows \
                 ORDER BY array_position($1, t.table_name)",
                finished = sql_set(FINISHED)
            ),
            &[&order],
        )
        .await
        .context("reading where the tables stand")?;
    Ok(rows
        .iter()
        .map(|r| {
            let name: String = r.get(0);
            TableStart {
                table: display.get(&name).cloned().unwrap_or_else(|| name.clone()),
                key: name,
                estimated_rows: r.get::<_, i64>(1).max(0) as u64,
                rows_done: r.get::<_, i64>(2).max(0) as u64,
                chunks: r.get::<_, i64>(3).max(0) as u64,
                chunks_done: r.get::<_, i64>(4).max(0) as u64,
            }
        })
        .collect())
}

/// `host:pid`, so the chunk table says which process worked on a chunk.
fn worker_prefix() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_string());
    format!("{host}:{}", std::process::id())
}

/// A planned table for `--dry-run`.
#[derive(Debug, serde::Serialize)]
pub struct DryRunTable {
    pub table: String,
    pub key_columns: Vec<String>,
    pub split: String,
    pub estimated_rows: i64,
    pub chunks: i64,
    pub depends_on: Vec<String>,
    /// `planned` (new plan, nothing written), or `resumes` (a plan exists on new).
    pub state: String,
    pub chunks_done: i64,
}

/// `--dry-run`: the tables and how they would be cut; writes nothing.
pub async fn dry_run(cfg: &BackfillConfig) -> Result<(Vec<DryRunTable>, Selection)> {
    let old = connect(Db::Old, &cfg.old, cfg.backfill.source_statement_timeout_ms).await?;
    let mut new = connect(Db::New, &cfg.new, 0).await?;
    // A dry run stops where the run would.
    check_writer(&mut new, Db::New, cfg.backfill.write_mode()).await?;
    if cfg.backfill.schema == SchemaMode::Copy {
        // Refused or not, said now; an empty new has no tables yet to plan.
        let outcome =
            schema_copy::check(&cfg.old, &cfg.new, cfg.backfill.pg_bin.as_deref()).await?;
        tracing::info!(
            ?outcome,
            "Dry run: the schema of new would be {}.",
            match outcome {
                schema_copy::Outcome::Copied =>
                    "copied from old (the tables are planned once it is)",
                schema_copy::Outcome::AlreadyThere => "kept (it is old's already)",
            }
        );
    }
    let selection = select(cfg, &old, &new).await?;
    let has_table = chunk_table::exists(&new).await?;
    let mut out = Vec::new();
    for p in selection.tables.iter().chain(&selection.keyless) {
        let existing = if has_table {
            new.query_opt(
                &format!(
                    "SELECT t.split, t.estimated_rows, t.chunks::int8, \
                            (SELECT count(*) FROM _switchyard.backfill_chunks c \
                             WHERE c.table_name = t.table_name AND c.status IN {}) \
                     FROM _switchyard.backfill_tables t WHERE t.table_name = $1",
                    sql_set(FINISHED)
                ),
                &[&p.quoted],
            )
            .await
            .context("reading the stored plan")?
        } else {
            None
        };
        let key_columns = p.old.key_columns().map(|c| c.name.clone()).collect();
        let row = match existing {
            Some(r) => DryRunTable {
                table: p.name.to_string(),
                key_columns,
                split: r.get(0),
                estimated_rows: r.get(1),
                chunks: r.get(2),
                depends_on: p.depends_on.clone(),
                state: "resumes".into(),
                chunks_done: r.get(3),
            },
            None if p.old.primary_key.is_empty() => DryRunTable {
                table: p.name.to_string(),
                key_columns,
                split: keyless::SPLIT.into(),
                estimated_rows: keyless::estimated_rows(&old, p).await?,
                chunks: 1,
                depends_on: Vec::new(),
                state: "planned".into(),
                chunks_done: 0,
            },
            None => {
                let split = split_table(&old, p, cfg.backfill.chunk_rows).await?;
                DryRunTable {
                    table: p.name.to_string(),
                    key_columns,
                    split: split.method.into(),
                    estimated_rows: split.estimated_rows,
                    chunks: split.ranges.len() as i64,
                    depends_on: p.depends_on.clone(),
                    state: "planned".into(),
                    chunks_done: 0,
                }
            }
        };
        out.push(row);
    }
    Ok((out, selection))
}
