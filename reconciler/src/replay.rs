//! `replay`: drains the embedded retry log (`_switchyard.retry_log` on the old database).
//! Row records re-sync their key from the source of truth under a row lock; table records
//! run verify-and-repair on the table; statement records run once on the new database,
//! deduplicated by idempotency key in `_switchyard.applied_statements`. Records are claimed
//! with `FOR UPDATE SKIP LOCKED`, so several replayers can run at once; a record that keeps
//! failing is retried with backoff and dead-lettered (`dead = true`, reason kept) after
//! `max_attempts`.
//!
//! Unlike a Kafka record, an embedded record needs no wait for its origin transaction: the
//! proxy inserts it inside the client's own transaction on old, so the claim query sees it
//! only once that transaction committed (its rows visible to the re-sync), and a rolled-back
//! transaction takes its records with it.

use crate::apply::{Applier, Outcome, Pending};
use crate::config::ReconcilerConfig;
use crate::connect::{connect, Db};
use anyhow::{Context, Result};
use serde::Serialize;

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
    /// Rows of old's change log applied (writes no proxy mirrored in lockstep).
    pub change_log_events: u64,
    /// Of those, written by sessions outside every proxy.
    pub writes_outside_proxy: u64,
    pub records_done: u64,
    pub records_failed: u64,
    pub records_dead: u64,
    pub backlog: i64,
    /// Age of the oldest record still waiting, in seconds (0 when none).
    pub oldest_age_secs: f64,
    pub seconds: f64,
    /// Time spent taking, applying and committing records (the run minus waiting for the
    /// group to form and for new records).
    pub busy_seconds: f64,
    /// Kafka only: the consumer lag of each partition assigned to this reconciler.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<PartitionLag>,
    /// Kafka only: records still in the embedded table (statements, fallbacks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedded_backlog: Option<i64>,
    /// Kafka only: records dropped because their origin transaction rolled back on the old
    /// database (their changes never happened there).
    pub records_dropped_aborted: u64,
    /// Kafka only: records that name no origin transaction, applied without waiting.
    pub records_without_xid: u64,
    /// Kafka only: records held until their origin transaction ends on the old database.
    pub waiting_for_origin: u64,
}

/// Messages of one partition not yet replayed and committed.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionLag {
    pub partition: i32,
    pub lag: i64,
}

impl ReplayReport {
    /// Adds the counts of another run (an embedded pass within a Kafka run).
    pub fn absorb(&mut self, o: &ReplayReport) {
        self.rows_resynced += o.rows_resynced;
        self.tables_repaired += o.tables_repaired;
        self.statements_applied += o.statements_applied;
        self.change_log_events += o.change_log_events;
        self.writes_outside_proxy += o.writes_outside_proxy;
        self.records_done += o.records_done;
        self.records_failed += o.records_failed;
        self.records_dead += o.records_dead;
        self.busy_seconds += o.busy_seconds;
        self.records_dropped_aborted += o.records_dropped_aborted;
        self.records_without_xid += o.records_without_xid;
        self.embedded_backlog = Some(o.backlog);
    }

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
        let mut out = format!(
            "# HELP switchyard_replay_records_total Retry records handled by this replay run.\n\
             # TYPE switchyard_replay_records_total counter\n\
             switchyard_replay_records_total{{outcome=\"applied\"}} {}\n\
             switchyard_replay_records_total{{outcome=\"failed\"}} {}\n\
             switchyard_replay_records_total{{outcome=\"dead\"}} {}\n\
             switchyard_replay_records_total{{outcome=\"dropped_aborted\"}} {}\n\
             # HELP switchyard_replay_change_log_events_total Change-log rows applied by this run.\n\
             # TYPE switchyard_replay_change_log_events_total counter\n\
             switchyard_replay_change_log_events_total {}\n\
             # HELP switchyard_replay_records_without_xid_total Records that named no origin transaction (applied without waiting for it).\n\
             # TYPE switchyard_replay_records_without_xid_total counter\n\
             switchyard_replay_records_without_xid_total {}\n\
             # HELP switchyard_replay_waiting_for_origin Records held until their origin transaction ends on the old database.\n\
             # TYPE switchyard_replay_waiting_for_origin gauge\n\
             switchyard_replay_waiting_for_origin {}\n\
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
            self.records_dropped_aborted,
            self.change_log_events,
            self.records_without_xid,
            self.waiting_for_origin,
            self.backlog,
            self.oldest_age_secs,
            self.rate()
        );
        if !self.partitions.is_empty() {
            out.push_str(
                "# HELP switchyard_replay_consumer_lag Kafka messages not yet replayed, by partition.\n\
                 # TYPE switchyard_replay_consumer_lag gauge\n",
            );
            for p in &self.partitions {
                out.push_str(&format!(
                    "switchyard_replay_consumer_lag{{partition=\"{}\"}} {}\n",
                    p.partition, p.lag
                ));
            }
        }
        out
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
    // First, so that a role that may not write into new is refused before anything else.
    let mut applier = Applier::connect(cfg).await?;
    let mut claim = connect(Db::Old, &cfg.old).await?;
    claim
        .batch_execute(switchyard_core::retry::EMBEDDED_SCHEMA_SQL)
        .await
        .context("creating the retry log on the old database")?;
    let mut report = ReplayReport::default();
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
            applier.drain_change_log(&mut claim, &mut report).await?;
            if opts.follow {
                // The running loop also finishes prepared transactions a proxy left behind.
                match switchyard_core::recover::resolve_in_doubt(
                    &claim,
                    &applier.target,
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
        let items: Vec<Pending> = claimed
            .iter()
            .map(|c| Pending {
                kind: c.kind.clone(),
                table: c.table.clone(),
                key: c.key.clone(),
                statement: c.statement.clone(),
                idempotency_key: c.idempotency_key.clone(),
            })
            .collect();
        let outcomes = applier.apply(&items, &mut report).await;
        let mut done: Vec<i64> = Vec::new();
        let mut failed: Vec<(i64, i32, String)> = Vec::new();
        for (c, outcome) in claimed.iter().zip(outcomes) {
            match outcome {
                Outcome::Done => done.push(c.id),
                Outcome::Failed(e) => failed.push((c.id, c.attempts, e)),
                Outcome::Poison(e) => failed.push((c.id, i32::MAX - 1, e)),
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
    report.busy_seconds = report.seconds;
    Ok(report)
}
