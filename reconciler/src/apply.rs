//! Applying retry records, whichever backend they came from: row records re-sync their keys
//! from the source of truth under a row lock (one re-sync per table per batch), table
//! records run verify-and-repair once per table per batch, statement records run once on
//! the secondary, deduplicated by idempotency key in its `_switchyard.applied_statements`.
//!
//! An [`Applier`] works in one [`Direction`]: old-to-new reads old and writes new (every
//! phase before the cutover's `writes-new`), new-to-old reads new and writes old.

use crate::config::ReconcilerConfig;
use crate::connect::{connect, connect_writer};
use crate::replay_report::ReplayReport;
use crate::verify::RepairMode;
use anyhow::{Context, Result};
use std::collections::{BTreeMap, HashMap};
use switchyard_core::catalog::{load_table, TableMeta};
use switchyard_core::connect::{Db, Writer};
use switchyard_core::direction::Direction;
use switchyard_core::ident::QualifiedName;
use switchyard_core::key::KeyText;
use switchyard_core::resync::resync_keys;
use tokio_postgres::Client;

/// One record to apply, in the form both backends can give.
#[derive(Debug, Clone)]
pub struct Pending {
    pub kind: String,
    pub table: Option<String>,
    /// The primary key as JSON text (`{"id": 7}`).
    pub key: Option<String>,
    pub statement: Option<String>,
    pub idempotency_key: String,
}

impl From<switchyard_core::retry::RetryRecord> for Pending {
    fn from(r: switchyard_core::retry::RetryRecord) -> Self {
        Pending {
            kind: r.kind.as_str().to_string(),
            table: r.table_name,
            key: r.key.map(|k| k.to_string()),
            statement: r.statement,
            idempotency_key: r.idempotency_key,
        }
    }
}

/// What became of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// Worth trying again later (the secondary was down, a lock timed out, ...).
    Failed(String),
    /// Can never succeed as it is: dead-letter it at once.
    Poison(String),
}

pub struct Applier {
    cfg: ReconcilerConfig,
    direction: Direction,
    /// The direction's primary: the source of truth rows are re-read from.
    source: Client,
    /// The direction's secondary. Every row and statement record is applied on this
    /// session (its triggers and foreign-key checks and actions do not fire; what they did
    /// on the primary arrives with the primary's rows).
    pub target: Writer,
    tables: HashMap<String, TableMeta>,
    log_tables: switchyard_core::capture::log::LogTables,
}

/// The URL of `db` in `cfg`.
pub fn url_of(cfg: &ReconcilerConfig, db: Db) -> &str {
    match db {
        Db::Old => &cfg.old,
        Db::New => &cfg.new,
    }
}

impl Applier {
    /// An applier from old to new.
    pub async fn connect(cfg: &ReconcilerConfig) -> Result<Applier> {
        Applier::connect_dir(cfg, Direction::OldToNew).await
    }

    /// An applier that re-reads rows on `direction`'s primary and writes its secondary.
    pub async fn connect_dir(cfg: &ReconcilerConfig, direction: Direction) -> Result<Applier> {
        let (from, to) = (direction.primary(), direction.secondary());
        let source = connect(from, url_of(cfg, from)).await?;
        let target = connect_writer(to, url_of(cfg, to)).await?;
        target
            .batch_execute(switchyard_core::retry::APPLIED_STATEMENTS_SQL)
            .await
            .with_context(|| {
                format!("creating _switchyard.applied_statements on the {to} database")
            })?;
        Ok(Applier {
            cfg: cfg.clone(),
            direction,
            source,
            target,
            tables: HashMap::new(),
            log_tables: Default::default(),
        })
    }

    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// Applies the primary's change log (writes no proxy mirrored in lockstep: sessions
    /// straight on the primary, procedures that commit by themselves) until it is empty.
    /// `claim` is a session on the primary that holds the claimed rows' locks. Nothing to
    /// do where capture is not installed.
    pub async fn drain_change_log(
        &mut self,
        claim: &mut Client,
        report: &mut ReplayReport,
    ) -> Result<()> {
        let installed: bool = claim
            .query_one(
                "SELECT to_regclass('_switchyard.capture_log') IS NOT NULL",
                &[],
            )
            .await
            .with_context(|| {
                format!(
                    "looking for the change log on the {} database",
                    self.direction.primary()
                )
            })?
            .get(0);
        if !installed {
            return Ok(());
        }
        loop {
            let r = switchyard_core::capture::log::drain_once(
                claim,
                &mut self.source,
                &mut self.target,
                &mut self.log_tables,
                500,
            )
            .await
            .inspect_err(|_| self.log_tables.clear())
            .with_context(|| format!("applying the change log {}", self.direction))?;
            report.change_log_events += r.events;
            report.writes_outside_proxy += r.outside_proxy;
            if r.events == 0 {
                return Ok(());
            }
        }
    }

    /// True while both connections are usable; a replayer reconnects otherwise.
    pub fn is_healthy(&self) -> bool {
        !self.source.is_closed() && !self.target.is_closed()
    }

    /// The connection to the source of truth (the direction's primary), for looking up
    /// origin transactions between batches.
    pub fn source(&self) -> &Client {
        &self.source
    }

    /// Applies `items`; the outcome of each, in order.
    pub async fn apply(&mut self, items: &[Pending], report: &mut ReplayReport) -> Vec<Outcome> {
        let mut out = vec![Outcome::Done; items.len()];
        let mut rows: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        let mut tables: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, p) in items.iter().enumerate() {
            match (p.kind.as_str(), p.table.as_deref()) {
                ("row", Some(t)) => rows.entry(t).or_default().push(i),
                ("table", Some(t)) => tables.entry(t).or_default().push(i),
                // In order, before the rows: later row images may need the new shape.
                ("statement", _) => match self.apply_statement(p).await {
                    Ok(applied) => report.statements_applied += u64::from(applied),
                    Err(e) => out[i] = Outcome::Failed(format!("{e:#}")),
                },
                _ => out[i] = Outcome::Poison(format!("malformed record of kind {:?}", p.kind)),
            }
        }
        for (t, idx) in tables {
            match repair_table(&self.cfg, self.direction, t).await {
                Ok(()) => report.tables_repaired += 1,
                Err(e) => {
                    let msg = format!("{e:#}");
                    for i in idx {
                        out[i] = Outcome::Failed(msg.clone());
                    }
                }
            }
        }
        for (t, idx) in rows {
            match self.resync(t, items, &idx).await {
                Ok(n) => report.rows_resynced += n,
                Err(Outcome::Poison(msg)) if idx.len() > 1 => {
                    // One bad key must not hold the others back: try them one by one.
                    tracing::debug!(table = t, error = %msg, "Re-syncing records one by one.");
                    for i in idx {
                        match self.resync(t, items, &[i]).await {
                            Ok(n) => report.rows_resynced += n,
                            Err(o) => out[i] = o,
                        }
                    }
                }
                Err(o) => {
                    for i in idx {
                        out[i] = o.clone();
                    }
                }
            }
        }
        out
    }

    async fn resync(
        &mut self,
        table: &str,
        items: &[Pending],
        idx: &[usize],
    ) -> Result<u64, Outcome> {
        let meta = match self.tables.get(table) {
            Some(m) => m.clone(),
            None => {
                let name = QualifiedName::parse(table)
                    .map_err(|e| Outcome::Poison(format!("table name {table}: {e}")))?;
                let m = load_table(&self.target, &name)
                    .await
                    .with_context(|| {
                        format!("{table} on the {} database", self.direction.secondary())
                    })
                    .map_err(|e| Outcome::Failed(format!("{e:#}")))?;
                self.tables.insert(table.to_string(), m.clone());
                m
            }
        };
        let keys: Vec<KeyText> = idx
            .iter()
            .map(|&i| key_text(&meta, items[i].key.as_deref().unwrap_or("{}")))
            .collect::<Result<_>>()
            .map_err(|e| Outcome::Poison(format!("{e:#}")))?;
        match resync_keys(&mut self.source, &mut self.target, &meta, &keys).await {
            Ok(c) => Ok(c.upserted + c.deleted + c.unchanged),
            Err(e) => {
                self.tables.remove(table);
                // Through anyhow, so the server's message follows the failed step.
                Err(Outcome::Failed(format!("{:#}", anyhow::Error::new(e))))
            }
        }
    }

    async fn apply_statement(&mut self, p: &Pending) -> Result<bool> {
        let sql = p
            .statement
            .as_deref()
            .context("statement record without a statement")?;
        let tx = self.target.transaction().await?;
        let fresh = tx
            .execute(
                "INSERT INTO _switchyard.applied_statements (idempotency_key) VALUES ($1) ON CONFLICT DO NOTHING",
                &[&p.idempotency_key],
            )
            .await?
            == 1;
        if fresh {
            tx.batch_execute(sql).await.with_context(|| {
                format!(
                    "running {sql:?} on the {} database",
                    self.direction.secondary()
                )
            })?;
        }
        tx.commit().await?;
        Ok(fresh)
    }
}

/// The key of a record (`{"col": value}`) as text values in the table's key order.
fn key_text(meta: &TableMeta, key: &str) -> Result<KeyText> {
    let v: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(key).with_context(|| format!("record key {key}"))?;
    meta.key_columns()
        .map(|c| {
            Ok(match v.get(&c.name) {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(other) => Some(other.to_string()),
            })
        })
        .collect()
}

async fn repair_table(cfg: &ReconcilerConfig, direction: Direction, table: &str) -> Result<()> {
    let mut one = cfg.clone();
    one.reconciler.tables = vec![table.to_string()];
    let source = match direction.primary() {
        Db::Old => crate::cli::SourceSide::Old,
        Db::New => crate::cli::SourceSide::New,
    };
    // A table record re-syncs that table's rows; sequences are the cutover's business.
    let scope = crate::verify::Scope {
        row_hash: None,
        sequences: false,
    };
    let report = crate::verify::run(
        &one,
        scope,
        Some(RepairMode {
            source,
            dry_run: false,
        }),
        &mut |_| {},
    )
    .await;
    match report.exit_code() {
        0 => Ok(()),
        _ => anyhow::bail!("repairing {table}: {}", report.summary()),
    }
}
