//! `replay`: drains the embedded retry log (`_switchyard.retry_log` on the primary) and the
//! primary's change log (`_switchyard.capture_log`), in each direction that has them:
//! old's into new always, then new's into old where new has them (the cutover's
//! `writes-new` phase, in which new is the primary). Row records re-sync their key from the
//! source of truth (the table's database) under a row lock; table records run
//! verify-and-repair on the table; statement records run once on the other database,
//! deduplicated by idempotency key in its `_switchyard.applied_statements`. Records are
//! claimed with `FOR UPDATE SKIP LOCKED`, so several replayers can run at once; a record
//! that keeps failing is retried with backoff and dead-lettered (`dead = true`, reason
//! kept) after `max_attempts`.
//!
//! Unlike a Kafka record, an embedded record needs no wait for its origin transaction: the
//! proxy inserts it inside the client's own transaction on the primary, so the claim query
//! sees it only once that transaction committed (its rows visible to the re-sync), and a
//! rolled-back transaction takes its records with it. For the same reason the table a
//! record is in says its direction, whatever its origin says.

use crate::apply::{Applier, Outcome, Pending};
use crate::config::ReconcilerConfig;
use crate::connect::{connect, Db};
pub use crate::replay_report::{DirectionCounts, PartitionLag, ReplayReport};
use anyhow::{Context, Result};
use std::time::Duration;
use switchyard_core::direction::Direction;
use tokio_postgres::Client;

#[derive(Debug, Clone)]
pub struct ReplayOptions {
    pub batch: i64,
    pub max_attempts: i32,
    /// Keep polling for new records instead of stopping when the log is drained.
    pub follow: bool,
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

/// One direction's side of a run: the session on its primary that claims records, and
/// its applier (connected once the direction has anything to replay).
struct Side {
    direction: Direction,
    claim: Client,
    applier: Option<Applier>,
}

/// Which of Switchyard's logs a database has.
struct Logs {
    retry_log: bool,
    change_log: bool,
}

async fn logs_on(c: &Client, db: Db) -> Result<Logs> {
    let row = c
        .query_one(
            "SELECT to_regclass('_switchyard.retry_log') IS NOT NULL, \
                    to_regclass('_switchyard.capture_log') IS NOT NULL",
            &[],
        )
        .await
        .with_context(|| format!("looking for the retry and change logs on the {db} database"))?;
    Ok(Logs {
        retry_log: row.get(0),
        change_log: row.get(1),
    })
}

/// Called after each batch of the embedded retry log with the records applied and the
/// records failed (to be tried again) in it.
pub type Tick<'a> = &'a mut (dyn FnMut(u64, u64) + Send);

pub async fn run(cfg: &ReconcilerConfig, opts: &ReplayOptions) -> Result<ReplayReport> {
    run_with(cfg, opts, &mut |_, _| {}).await
}

/// [`run`], telling `tick` of every batch (for the progress display).
pub async fn run_with(
    cfg: &ReconcilerConfig,
    opts: &ReplayOptions,
    tick: Tick<'_>,
) -> Result<ReplayReport> {
    let started = std::time::Instant::now();
    // Shown at once, so that an empty log is seen to be empty rather than stuck.
    tick(0, 0);
    // First, so that a role that may not write into new is refused before anything else.
    let forward = Applier::connect(cfg).await?;
    let old = connect(Db::Old, &cfg.old).await?;
    old.batch_execute(switchyard_core::retry::EMBEDDED_SCHEMA_SQL)
        .await
        .context("creating the retry log on the old database")?;
    let mut sides = [
        Side {
            direction: Direction::OldToNew,
            claim: old,
            applier: Some(forward),
        },
        Side {
            direction: Direction::NewToOld,
            claim: connect(Db::New, &cfg.new).await?,
            applier: None,
        },
    ];
    let mut report = ReplayReport::default();
    loop {
        // Intents first: those the secondary did not commit become retry records, which the
        // passes below apply.
        let [forward, reverse] = &mut sides;
        resolve_intents(&mut forward.claim, &reverse.claim, &mut report).await;
        resolve_intents(&mut reverse.claim, &forward.claim, &mut report).await;
        for side in &mut sides {
            let mut sub = ReplayReport::default();
            match pass(cfg, opts, side, &mut sub, &mut *tick).await {
                Ok(true) => report.add_direction(side.direction, &sub),
                Ok(false) => {}
                // A following run waits out an outage of new (its records fail and back
                // off) as it did before new had logs of its own: a failure to read them is
                // no reason to stop, and the next pass connects again.
                Err(e) if opts.follow && side.direction == Direction::NewToOld => {
                    report.add_direction(side.direction, &sub);
                    tracing::warn!(error = %format!("{e:#}"), "Replaying the new database's logs into old failed; trying again.");
                    if side.applier.as_ref().is_some_and(|a| !a.is_healthy()) {
                        side.applier = None;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        if !opts.follow {
            break;
        }
        // The running loop also finishes prepared transactions a proxy left behind.
        let [forward, reverse] = &sides;
        match switchyard_core::recover::resolve_in_doubt_both(
            &forward.claim,
            &reverse.claim,
            Duration::from_secs(2),
        )
        .await
        {
            Ok(r) => r.log_resolved(),
            Err(e) => tracing::warn!(error = %e, "Resolving in-doubt transactions failed."),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    for side in &sides {
        if !logs_on(&side.claim, side.direction.primary())
            .await?
            .retry_log
        {
            continue;
        }
        let row = side
            .claim
            .query_one(
                "SELECT count(*), coalesce(extract(epoch FROM clock_timestamp() - min(created_at)), 0)::float8 \
                 FROM _switchyard.retry_log WHERE NOT dead",
                &[],
            )
            .await
            .with_context(|| {
                format!("counting the retry log on the {} database", side.direction.primary())
            })?;
        let backlog: i64 = row.get(0);
        report.backlog += backlog;
        report.oldest_age_secs = report.oldest_age_secs.max(row.get(1));
        report.direction(side.direction).backlog = backlog;
    }
    report.seconds = started.elapsed().as_secs_f64();
    report.busy_seconds = report.seconds;
    Ok(report)
}

async fn resolve_intents(
    primary: &mut tokio_postgres::Client,
    secondary: &tokio_postgres::Client,
    report: &mut ReplayReport,
) {
    // Any age: an intent is visible only once its primary committed, and the secondary's
    // transaction is then running (left alone), committed or aborted.
    match switchyard_core::intents::resolve(primary, secondary, Duration::ZERO).await {
        Ok(r) => {
            report.intents_cleared += r.cleared;
            report.intents_queued += r.queued;
        }
        Err(e) => tracing::warn!(error = %e, "Resolving intents failed."),
    }
}

/// One pass over a direction's logs; false when its primary has none. New's logs are looked
/// for on every pass: they appear when the cutover moves the writes to new, and replay must
/// neither create them before nor ask for the right to write into old while there is
/// nothing to write.
async fn pass(
    cfg: &ReconcilerConfig,
    opts: &ReplayOptions,
    side: &mut Side,
    report: &mut ReplayReport,
    tick: Tick<'_>,
) -> Result<bool> {
    let db = side.direction.primary();
    if side.claim.is_closed() {
        side.claim = connect(db, crate::apply::url_of(cfg, db)).await?;
    }
    let logs = logs_on(&side.claim, db).await?;
    if !(logs.retry_log || logs.change_log) {
        return Ok(false);
    }
    if side.applier.is_none() {
        side.applier = Some(Applier::connect_dir(cfg, side.direction).await?);
    }
    let Some(applier) = side.applier.as_mut() else {
        return Ok(false);
    };
    if logs.retry_log {
        drain_retry_log(applier, &mut side.claim, opts, report, tick).await?;
    }
    applier.drain_change_log(&mut side.claim, report).await?;
    Ok(true)
}

/// Drains the retry log on `claim`'s database (the applier's primary) until it is empty
/// or only records that just failed are left (they wait for their backoff).
async fn drain_retry_log(
    applier: &mut Applier,
    claim: &mut Client,
    opts: &ReplayOptions,
    report: &mut ReplayReport,
    tick: Tick<'_>,
) -> Result<()> {
    let db = applier.direction().primary();
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
            .with_context(|| format!("reading the retry log on the {db} database"))?;
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(());
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
        let outcomes = applier.apply(&items, report).await;
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
                tracing::error!(id, %db, error = %error, "Retry record dead-lettered.");
            } else {
                tracing::warn!(id, %db, error = %error, "Replay failed; will retry.");
            }
        }
        tx.commit().await.context("committing replay progress")?;
        report.records_done += done.len() as u64;
        report.records_failed += failed.len() as u64;
        tick(done.len() as u64, failed.len() as u64);
        if !failed.is_empty() && done.is_empty() {
            // Everything left is backing off; a later pass picks it up.
            return Ok(());
        }
    }
}
