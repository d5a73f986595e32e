//! `replay`: drains the embedded retry log (`_switchyard.retry_log` on the old database).
//! Row records re-sync their key from the source of truth under a row lock; table records
//! run verify-and-repair on the table; statement records run once on the new database,
//! deduplicated by idempotency key in `_switchyard.applied_statements`. Records are claimed
//! with `FOR UPDATE SKIP LOCKED`, so several replayers can run at once; a record that keeps
//! failing is retried with backoff and dead-lettered (`dead = true`, reason kept) after
//! `max_attempts`.

use crate::config::ReconcilerConfig;
use crate::connect::{connect, Db};
use crate::verify::RepairMode;
use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use switchyard_core::catalog::{load_table, TableMeta};
use switchyard_core::ident::QualifiedName;
use switchyard_core::key::KeyText;
use switchyard_core::resync::resync_keys;
use tokio_postgres::Client;

#[derive(Debug, Clone)]
pub struct ReplayOptions {
    pub batch: i64,
    pub max_attempts: i32,
    /// Keep polling for new records instead of stopping when the log is drained.
    pub follow: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct ReplayReport {
    pub rows_resynced: u64,
    pub tables_repaired: u64,
    pub statements_applied: u64,
    pub records_done: u64,
    pub records_failed: u64,
    pub records_dead: u64,
    pub backlog: i64,
    /// Age of the oldest record still waiting, in seconds (0 when none).
    pub oldest_age_secs: f64,
    pub seconds: f64,
}

impl ReplayReport {
    /// Records replayed per second of this run.
    pub fn rate(&self) -> f64 {
        if self.seconds > 0.0 {
            self.records_done as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// Prometheus text exposition of this run.
    pub fn prometheus(&self) -> String {
        format!(
            "# HELP switchyard_replay_records_total Retry records handled by this replay run.\n\
             # TYPE switchyard_replay_records_total counter\n\
             switchyard_replay_records_total{{outcome=\"applied\"}} {}\n\
             switchyard_replay_records_total{{outcome=\"failed\"}} {}\n\
             switchyard_replay_records_total{{outcome=\"dead\"}} {}\n\
             # HELP switchyard_replay_backlog Records still waiting in the retry log.\n\
             # TYPE switchyard_replay_backlog gauge\n\
             switchyard_replay_backlog {}\n\
             # HELP switchyard_replay_oldest_record_age_seconds Age of the oldest waiting record.\n\
             # TYPE switchyard_replay_oldest_record_age_seconds gauge\n\
             switchyard_replay_oldest_record_age_seconds {:.3}\n\
             # HELP switchyard_replay_records_per_second Records replayed per second in this run.\n\
             # TYPE switchyard_replay_records_per_second gauge\n\
             switchyard_replay_records_per_second {:.1}\n",
            self.records_done,
            self.records_failed,
            self.records_dead,
            self.backlog,
            self.oldest_age_secs,
            self.rate()
        )
    }
}

struct Claimed {
    id: i64,
    kind: String,
    table: Option<String>,
    key: Option<String>,
    statement: Option<String>,
    idempotency_key: String,
    attempts: i32,
}

pub async fn run(cfg: &ReconcilerConfig, opts: &ReplayOptions) -> Result<ReplayReport> {
    let started = std::time::Instant::now();
    let mut claim = connect(Db::Old, &cfg.old).await?;
    let mut source = connect(Db::Old, &cfg.old).await?;
    let mut target = connect(Db::New, &cfg.new).await?;
    claim
        .batch_execute(switchyard_core::retry::EMBEDDED_SCHEMA_SQL)
        .await
        .context("creating the retry log on the old database")?;
    target
        .batch_execute(switchyard_core::retry::APPLIED_STATEMENTS_SQL)
        .await
        .context("creating _switchyard.applied_statements on the new database")?;
    let mut report = ReplayReport::default();
    let mut tables: HashMap<String, TableMeta> = HashMap::new();
    loop {
        let tx = claim
            .transaction()
            .await
            .context("claiming retry records")?;
        let rows = tx
            .query(
                "SELECT id, kind, table_name, key::text, statement, idempotency_key, attempts \
                 FROM _switchyard.retry_log WHERE NOT dead AND next_attempt_at <= clock_timestamp() \
                 ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
                &[&opts.batch],
            )
            .await
            .context("reading the retry log")?;
        if rows.is_empty() {
            tx.commit().await?;
            if opts.follow {
                // The running loop also finishes prepared transactions a proxy left behind.
                match switchyard_core::recover::resolve_in_doubt(
                    &claim,
                    &target,
                    std::time::Duration::from_secs(2),
                )
                .await
                {
                    Ok(r) if !r.committed.is_empty() || !r.rolled_back.is_empty() => {
                        tracing::info!(
                            committed = r.committed.len(),
                            rolled_back = r.rolled_back.len(),
                            "Resolved in-doubt transactions."
                        );
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "Resolving in-doubt transactions failed."),
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
            break;
        }
        let claimed: Vec<Claimed> = rows
            .iter()
            .map(|r| Claimed {
                id: r.get(0),
                kind: r.get(1),
                table: r.get(2),
                key: r.get(3),
                statement: r.get(4),
                idempotency_key: r.get(5),
                attempts: r.get(6),
            })
            .collect();
        let mut done: Vec<i64> = Vec::new();
        let mut failed: Vec<(i64, i32, String)> = Vec::new();
        // Row records, grouped by table: one re-sync per table per batch.
        let mut by_table: BTreeMap<String, Vec<&Claimed>> = BTreeMap::new();
        // Table records: one verify-and-repair per table per batch, whatever the count.
        let mut table_records: BTreeMap<String, Vec<&Claimed>> = BTreeMap::new();
        for c in &claimed {
            match (c.kind.as_str(), &c.table) {
                ("row", Some(t)) => by_table.entry(t.clone()).or_default().push(c),
                ("table", Some(t)) => table_records.entry(t.clone()).or_default().push(c),
                ("statement", _) => match apply_statement(&mut target, c).await {
                    Ok(applied) => {
                        report.statements_applied += u64::from(applied);
                        done.push(c.id);
                    }
                    Err(e) => failed.push((c.id, c.attempts, format!("{e:#}"))),
                },
                _ => failed.push((
                    c.id,
                    i32::MAX - 1,
                    format!("malformed record of kind {:?}", c.kind),
                )),
            }
        }
        for (t, records) in table_records {
            match repair_table(cfg, &t).await {
                Ok(()) => {
                    report.tables_repaired += 1;
                    done.extend(records.iter().map(|c| c.id));
                }
                Err(e) => {
                    let msg = format!("{e:#}");
                    failed.extend(records.iter().map(|c| (c.id, c.attempts, msg.clone())));
                }
            }
        }
        for (table, records) in by_table {
            let result = async {
                let meta = match tables.get(&table) {
                    Some(m) => m.clone(),
                    None => {
                        let name = QualifiedName::parse(&table)
                            .with_context(|| format!("table name {table}"))?;
                        let m = load_table(&target, &name)
                            .await
                            .with_context(|| format!("{table} on the new database"))?;
                        tables.insert(table.clone(), m.clone());
                        m
                    }
                };
                let keys: Vec<KeyText> = records
                    .iter()
                    .map(|c| key_text(&meta, c.key.as_deref().unwrap_or("{}")))
                    .collect::<Result<_>>()?;
                let counts = resync_keys(&mut source, &mut target, &meta, &keys).await?;
                anyhow::Ok(counts.upserted + counts.deleted + counts.unchanged)
            }
            .await;
            match result {
                Ok(n) => {
                    report.rows_resynced += n;
                    done.extend(records.iter().map(|c| c.id));
                }
                Err(e) => {
                    tables.remove(&table);
                    let msg = format!("{e:#}");
                    failed.extend(records.iter().map(|c| (c.id, c.attempts, msg.clone())));
                }
            }
        }
        if !done.is_empty() {
            tx.execute(
                "DELETE FROM _switchyard.retry_log WHERE id = ANY($1)",
                &[&done],
            )
            .await
            .context("removing replayed records")?;
        }
        for (id, attempts, error) in &failed {
            let dead = attempts + 1 >= opts.max_attempts;
            tx.execute(
                "UPDATE _switchyard.retry_log SET attempts = attempts + 1, last_error = $2, dead = $3, \
                 next_attempt_at = clock_timestamp() + least(interval '1 second' * power(2, attempts), interval '5 minutes') \
                 WHERE id = $1",
                &[id, error, &dead],
            )
            .await
            .context("recording a failed replay")?;
            if dead {
                report.records_dead += 1;
                tracing::error!(id, error = %error, "Retry record dead-lettered.");
            } else {
                tracing::warn!(id, error = %error, "Replay failed; will retry.");
            }
        }
        tx.commit().await.context("committing replay progress")?;
        report.records_done += done.len() as u64;
        report.records_failed += failed.len() as u64;
        if !failed.is_empty() && !opts.follow && done.is_empty() {
            // Everything left is backing off; a later run picks it up.
            break;
        }
    }
    let row = claim
        .query_one(
            "SELECT count(*), coalesce(extract(epoch FROM clock_timestamp() - min(created_at)), 0)::float8 \
             FROM _switchyard.retry_log WHERE NOT dead",
            &[],
        )
        .await?;
    report.backlog = row.get(0);
    report.oldest_age_secs = row.get(1);
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
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

async fn apply_statement(target: &mut Client, c: &Claimed) -> Result<bool> {
    let sql = c
        .statement
        .as_deref()
        .context("statement record without a statement")?;
    let tx = target.transaction().await?;
    let fresh = tx
        .execute(
            "INSERT INTO _switchyard.applied_statements (idempotency_key) VALUES ($1) ON CONFLICT DO NOTHING",
            &[&c.idempotency_key],
        )
        .await?
        == 1;
    if fresh {
        tx.batch_execute(sql)
            .await
            .with_context(|| format!("running {sql:?} on the new database"))?;
    }
    tx.commit().await?;
    Ok(fresh)
}

async fn repair_table(cfg: &ReconcilerConfig, table: &str) -> Result<()> {
    let mut one = cfg.clone();
    one.reconciler.tables = vec![table.to_string()];
    let report = crate::verify::run(
        &one,
        None,
        Some(RepairMode {
            source: crate::cli::SourceSide::Old,
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
