//! verify and repair, table by table: the schema check for every table first, then the
//! data comparison (and the repair) of each comparable table.

use crate::cli::SourceSide;
use crate::config::ReconcilerConfig;
use crate::connect::{connect, connect_writer, Db};
use crate::progress_table::ProgressTable;
pub use crate::report::RepairMode;
use crate::report::{RepairReport, Report, RowReport, Status, TableReport};
use crate::schema::{compare, SchemaCheck};
use crate::verify_keyless::{self, Keyless};
use crate::verify_sequences;
use anyhow::{Context, Result};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;
use switchyard_core::catalog::{list_user_tables, load_table, CatalogError, TableMeta};
use switchyard_core::checksum::server_version_num;
use switchyard_core::connect::Writer;
use switchyard_core::diff::{diff_table, DiffKind, RowHash, Sides, TableDiff};
use switchyard_core::ident::QualifiedName;
use switchyard_core::key::KeyText;
use switchyard_core::resync::{resync_keys, ResyncCounts};
use tokio_postgres::Client;

/// Verify-and-repair rounds per table when more rows differ than are listed at once.
const MAX_REPAIR_PASSES: u32 = 100;

/// A table that passed the schema check.
struct Comparable {
    report_index: usize,
    old: TableMeta,
    new: TableMeta,
    columns: Vec<String>,
    /// No primary key on either side: compared as a multiset of rows.
    keyless: bool,
}

/// What a run compares besides the tables' rows.
#[derive(Debug, Clone, Copy)]
pub struct Scope {
    /// How rows are hashed; `None` picks the fastest both servers support.
    pub row_hash: Option<RowHash>,
    /// Compare (and repair) the sequences too.
    pub sequences: bool,
}

/// What a run tells its caller as it goes.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// The tables of the run, once listed.
    Tables(usize),
    /// A table's data comparison starts.
    Started(&'a str),
    /// A table's report is final.
    Finished(&'a TableReport),
}

/// Runs verify (or repair, with `repair`), calling `progress` with each table's report as
/// soon as it is known (schema differences first). Errors that stop the whole run (the
/// databases cannot be reached) end up in `Report::error`.
pub async fn run(
    cfg: &ReconcilerConfig,
    scope: Scope,
    repair: Option<RepairMode>,
    progress: &mut dyn FnMut(Event<'_>),
) -> Report {
    let mut report = Report {
        command: if repair.is_some() { "repair" } else { "verify" },
        equal: false,
        tables: Vec::new(),
        sequences: Vec::new(),
        sequences_skipped: None,
        error: None,
    };
    if let Err(e) = run_inner(cfg, scope, repair, progress, &mut report).await {
        report.error = Some(format!("{e:#}"));
    }
    report.equal = report.exit_code() == 0;
    report
}

async fn run_inner(
    cfg: &ReconcilerConfig,
    scope: Scope,
    repair: Option<RepairMode>,
    progress: &mut dyn FnMut(Event<'_>),
    report: &mut Report,
) -> Result<()> {
    // One after the other, so that with both unreachable the message names old.
    let meta_old = connect(Db::Old, &cfg.old).await?;
    let meta_new = connect(Db::New, &cfg.new).await?;
    // Repair writes into the side it does not take rows from; that session is set up
    // (or its role refused, with the fix) before anything is read.
    let target = match repair {
        Some(m) if !m.dry_run => Some(match m.source {
            SourceSide::Old => connect_writer(Db::New, &cfg.new).await?,
            SourceSide::New => connect_writer(Db::Old, &cfg.old).await?,
        }),
        _ => None,
    };
    let requested = cfg.table_names();
    let tables: Vec<QualifiedName> = if requested.is_empty() {
        let (a, b) = tokio::try_join!(list_user_tables(&meta_old), list_user_tables(&meta_new))
            .context("listing the tables")?;
        a.into_iter()
            .chain(b)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    } else {
        requested
    };

    progress(Event::Tables(tables.len()));
    let mut board =
        ProgressTable::open(&cfg.new, if repair.is_some() { "repair" } else { "verify" }).await;
    for name in &tables {
        board.queued(&name.to_string()).await;
    }
    // Schema check of every table before any data is read.
    let mut comparable = Vec::new();
    for name in &tables {
        let (old, new) = tokio::join!(load_table(&meta_old, name), load_table(&meta_new, name));
        let (old, new) = match (found(old), found(new)) {
            (Ok(o), Ok(n)) => (o, n),
            (Err(e), _) | (_, Err(e)) => {
                let mut t = TableReport::new(name.to_string(), Status::Error);
                t.error = Some(format!("{:#}", anyhow::Error::new(e)));
                board.finished(&t).await;
                report.tables.push(t);
                continue;
            }
        };
        let mut t = TableReport::new(name.to_string(), Status::SchemaDifferent);
        if let Some(m) = old.as_ref().or(new.as_ref()) {
            t.key_columns = m.key_columns().map(|c| c.name.clone()).collect();
        }
        match compare(old.as_ref(), new.as_ref()) {
            SchemaCheck::Different(problems) => {
                if old.is_none() && new.is_none() {
                    // A name the user typed that exists nowhere is a mistake, not a difference.
                    t.status = Status::Error;
                    t.error = Some(format!("table {name} exists on neither database"));
                } else {
                    t.schema_differences = problems;
                }
                board.finished(&t).await;
                progress(Event::Finished(&t));
                report.tables.push(t);
            }
            SchemaCheck::Comparable { columns, keyless } => {
                comparable.push(Comparable {
                    report_index: report.tables.len(),
                    old: old.expect("comparable tables exist on old"),
                    new: new.expect("comparable tables exist on new"),
                    columns,
                    keyless,
                });
                t.status = Status::Equal;
                report.tables.push(t);
            }
        }
    }
    if scope.sequences {
        let urls = repair
            .filter(|m| !m.dry_run)
            .map(|_| (cfg.old.as_str(), cfg.new.as_str()));
        let checked =
            verify_sequences::check(&meta_old, &meta_new, &cfg.table_names(), urls).await?;
        report.sequences = checked.sequences;
        report.sequences_skipped = checked.skipped;
    } else {
        report.sequences_skipped = Some("--skip-sequences".into());
    }
    if comparable.is_empty() {
        return Ok(());
    }
    let mode = match scope.row_hash {
        Some(m) => m,
        None => {
            let (a, b) =
                tokio::try_join!(server_version_num(&meta_old), server_version_num(&meta_new))?;
            RowHash::for_versions(a, b)
        }
    };

    let jobs = cfg.reconciler.jobs;
    let mut pairs = Vec::with_capacity(jobs);
    for _ in 0..jobs {
        let (old, new) = tokio::try_join!(connect(Db::Old, &cfg.old), connect(Db::New, &cfg.new))?;
        pairs.push(Arc::new(Sides { old, new }));
    }
    let mut repair_clients = match (repair, target) {
        (Some(m), Some(target)) => Some(match m.source {
            SourceSide::Old => (meta_old, target),
            SourceSide::New => (meta_new, target),
        }),
        _ => None,
    };
    let mut opts = cfg.diff_options();
    opts.row_hash = Some(mode);
    for c in comparable {
        let started = Instant::now();
        let t = &mut report.tables[c.report_index];
        board.running(&t.table.clone()).await;
        progress(Event::Started(&t.table));
        if c.keyless {
            let table = Keyless {
                old: &c.old,
                new: &c.new,
                columns: &c.columns,
            };
            let fix = repair.map(|m| (m, repair_clients.as_mut()));
            if let Err(e) = verify_keyless::run(t, &pairs[0], table, &opts, mode, fix).await {
                t.status = Status::Error;
                t.error = Some(format!("{e:#}"));
            }
            t.seconds = started.elapsed().as_secs_f64();
            board.finished(t).await;
            progress(Event::Finished(t));
            continue;
        }
        match diff_table(&pairs, &c.old, &c.columns, &opts).await {
            Ok(diff) => {
                fill(t, &diff);
                if let (Some(mode), false) = (repair, diff.is_equal()) {
                    let target_meta = match mode.source {
                        SourceSide::Old => &c.new,
                        SourceSide::New => &c.old,
                    };
                    let outcome = repair_table(
                        mode,
                        repair_clients.as_mut(),
                        &pairs,
                        &c,
                        target_meta,
                        diff,
                        &opts,
                    )
                    .await;
                    match outcome {
                        Ok(r) => {
                            if !r.dry_run {
                                t.status = Status::Repaired;
                            }
                            t.repair = Some(r);
                        }
                        Err(e) => {
                            t.status = Status::Error;
                            t.error = Some(format!("repair failed: {e:#}"));
                        }
                    }
                }
            }
            Err(e) => {
                t.status = Status::Error;
                t.error = Some(format!("{:#}", anyhow::Error::new(e)));
            }
        }
        t.seconds = started.elapsed().as_secs_f64();
        board.finished(t).await;
        progress(Event::Finished(t));
    }
    Ok(())
}

/// `NotFound` becomes `None`; other catalog errors stay errors.
fn found(r: Result<TableMeta, CatalogError>) -> Result<Option<TableMeta>, CatalogError> {
    match r {
        Ok(m) => Ok(Some(m)),
        Err(CatalogError::NotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

fn fill(t: &mut TableReport, d: &TableDiff) {
    t.status = if d.is_equal() {
        Status::Equal
    } else {
        Status::Different
    };
    t.rows_old = d.rows_old;
    t.rows_new = d.rows_new;
    t.missing_in_new = d.missing_in_new;
    t.extra_in_new = d.extra_in_new;
    t.different = d.different;
    t.transient = d.transient;
    t.truncated = d.truncated;
    t.ranges_checked = d.ranges_checked;
    t.rows = d.rows.iter().map(RowReport::from).collect();
}

/// True when a row of this kind is fixed by writing the source's image (false: by
/// deleting the target's row).
fn needs_upsert(source: SourceSide, kind: DiffKind) -> bool {
    match (source, kind) {
        (_, DiffKind::Different) => true,
        (SourceSide::Old, DiffKind::MissingInNew) | (SourceSide::New, DiffKind::ExtraInNew) => true,
        (SourceSide::Old, DiffKind::ExtraInNew) | (SourceSide::New, DiffKind::MissingInNew) => {
            false
        }
    }
}

async fn repair_table(
    mode: RepairMode,
    clients: Option<&mut (Client, Writer)>,
    pairs: &[Arc<Sides>],
    c: &Comparable,
    target_meta: &TableMeta,
    mut diff: TableDiff,
    opts: &switchyard_core::diff::DiffOptions,
) -> Result<RepairReport> {
    let mut r = RepairReport {
        source: match mode.source {
            SourceSide::Old => "old",
            SourceSide::New => "new",
        },
        dry_run: mode.dry_run,
        ..RepairReport::default()
    };
    let Some((source, target)) = clients else {
        // Dry run: what the listed rows need, without touching anything.
        r.passes = 1;
        for d in &diff.rows {
            if needs_upsert(mode.source, d.kind) {
                r.upserted += 1;
            } else {
                r.deleted += 1;
            }
        }
        return Ok(r);
    };
    let mut total = ResyncCounts::default();
    loop {
        r.passes += 1;
        let keys: Vec<KeyText> = diff.rows.iter().map(|d| d.key.clone()).collect();
        total += resync_keys(source, target, target_meta, &keys)
            .await
            .with_context(|| format!("re-syncing {} rows", keys.len()))?;
        if !diff.truncated || r.passes >= MAX_REPAIR_PASSES {
            break;
        }
        // More differed than was listed: look again and fix the next batch.
        diff = diff_table(pairs, &c.old, &c.columns, opts).await?;
        if diff.is_equal() {
            break;
        }
    }
    r.upserted = total.upserted;
    r.deleted = total.deleted;
    r.unchanged = total.unchanged;
    Ok(r)
}
