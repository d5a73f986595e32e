//! Tables without a primary key: no key cuts them into ranges and no key lets a copied row
//! be matched, re-checked or repaired on new, so each is copied whole, in one transaction
//! on each side, and verified as a multiset (row count and the sum of 64-bit row hashes,
//! duplicates counted: `switchyard_core::multiset`).
//!
//! - Old is read in one REPEATABLE READ snapshot: the COPY and old's checksum see the
//!   same rows.
//! - New is loaded in one transaction that also records the table's single chunk `done`,
//!   after new's checksum (taken in that transaction) matched old's. A run stopped midway
//!   leaves nothing on new and the chunk claimable: the next run copies the table again
//!   from the start, never on top of a partial copy.
//! - New's table must be empty when the copy starts (rows there cannot be told apart from
//!   old's), and nothing may change the table on either side meanwhile: a row deleted or
//!   updated on old after the snapshot would have its mirrored change applied on new
//!   before the copy re-inserts the snapshot's version. So a table that old's change
//!   capture covers (the proxy may be dual-writing it) is refused unless `lock_keyless`:
//!   then old's table is locked in SHARE mode (writers wait, readers do not) and new's in
//!   SHARE ROW EXCLUSIVE mode (mirrored transactions already prepared there finish first)
//!   before the snapshot is taken, and new's rows, which then all came from old, are
//!   replaced by the copy.
//!
//! Refusals name the table and the fix, count as needing attention (exit 1), and never
//! stop the other tables.

use crate::chunk_table::{self, ChunkOutcome, ChunkStatus, Claim};
use crate::config::BackfillConfig;
use crate::connect::{connect, connect_writer, Db};
use crate::plan::{Skipped, TablePlan};
use crate::progress::Progress;
use crate::throttle::{Throttle, BATCH_ROWS};
use anyhow::{bail, Context, Result};
use bytes::BytesMut;
use futures_util::{pin_mut, SinkExt, StreamExt};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_core::checksum::{RangeChecksum, RowHash};
use switchyard_core::multiset::MultisetQueries;
use tokio_postgres::Client;

/// The `split` a keyless table is planned with (one chunk, the whole table).
pub const SPLIT: &str = "keyless";

/// How long a copy waits for its table locks before the attempt fails (a writer holding
/// the table for longer, or a prepared transaction the proxy left behind on new).
const LOCK_WAIT: Duration = Duration::from_secs(30);

/// A proxy instance heard from within this long counts as running.
const PROXY_ALIVE: Duration = Duration::from_secs(30);

/// Bytes of rows sent to new per COPY message.
const SINK_BATCH: usize = 64 * 1024;

/// What the keyless tables of a run share.
pub struct Keyless {
    pub cfg: BackfillConfig,
    pub control: Arc<Client>,
    pub throttle: Arc<Throttle>,
    pub progress: Arc<Progress>,
    pub worker_prefix: String,
    pub row_hash: RowHash,
}

/// Why dual writes may be running for `plan`'s table, read on old: capture triggers on it
/// (the proxy installs them on every user table when it starts), or a proxy instance's
/// recent heartbeat. `None`: no sign of either.
pub async fn dual_write_evidence(old: &Client, plan: &TablePlan) -> Result<Option<String>> {
    let row = old
        .query_one(
            "SELECT (SELECT count(*) FROM pg_catalog.pg_trigger \
                     WHERE tgrelid = $1::text::regclass AND tgenabled <> 'D' \
                       AND tgname LIKE 'switchyard\\_capture\\_%'), \
                    to_regclass('_switchyard.cutover_instances') IS NOT NULL",
            &[&plan.quoted],
        )
        .await
        .with_context(|| format!("looking for change capture on {} on old", plan.name))?;
    if row.get::<_, i64>(0) > 0 {
        return Ok(Some("old's change capture covers it".into()));
    }
    if !row.get::<_, bool>(1) {
        return Ok(None);
    }
    let live: i64 = old
        .query_one(
            "SELECT count(*) FROM _switchyard.cutover_instances \
             WHERE last_seen > clock_timestamp() - $1 * interval '1 second'",
            &[&(PROXY_ALIVE.as_secs() as f64)],
        )
        .await
        .context("reading the proxy instances on old")?
        .get(0);
    Ok((live > 0).then(|| format!("{live} proxy instance(s) sent a heartbeat to old just now")))
}

/// Rows of `plan`'s table on `client` (new), stopping at the first.
async fn has_rows(client: &Client, plan: &TablePlan) -> Result<bool> {
    Ok(client
        .query_one(
            &format!("SELECT EXISTS (SELECT 1 FROM {})", plan.quoted),
            &[],
        )
        .await
        .with_context(|| format!("looking for rows of {} on new", plan.name))?
        .get(0))
}

/// Old's estimate of the table's rows (for the plan and the progress display).
pub async fn estimated_rows(old: &Client, plan: &TablePlan) -> Result<i64> {
    let row = old
        .query_one(
            "SELECT greatest(reltuples, 0)::int8 FROM pg_catalog.pg_class \
             WHERE oid = $1::text::regclass",
            &[&plan.quoted],
        )
        .await
        .with_context(|| format!("estimating the rows of {}", plan.name))?;
    Ok(row.get(0))
}

/// Whether the table's chunk is finished already (an earlier run copied it).
async fn finished(control: &Client, plan: &TablePlan) -> Result<bool> {
    let row = control
        .query_opt(
            "SELECT status FROM _switchyard.backfill_chunks \
             WHERE table_name = $1 AND chunk_no = 0",
            &[&plan.quoted],
        )
        .await
        .with_context(|| format!("reading where {} stands", plan.name))?;
    let Some(row) = row else {
        return Ok(false);
    };
    let status: ChunkStatus = row.get::<_, &str>(0).parse()?;
    Ok(status.is_finished())
}

/// Copies every keyless table, `jobs` at a time; returns the refused ones with the reason.
/// Failed attempts are recorded on their chunk (and reported from the chunk table).
pub async fn copy_all(k: &Keyless, tables: &[TablePlan]) -> Result<Vec<Skipped>> {
    let jobs = k.cfg.backfill.jobs.max(1);
    let results: Vec<Result<Option<Skipped>>> =
        futures_util::stream::iter(tables.iter().enumerate())
            .map(|(i, plan)| copy_table(k, plan, i))
            .buffer_unordered(jobs)
            .collect()
            .await;
    let mut refused = Vec::new();
    for r in results {
        if let Some(s) = r? {
            refused.push(s);
        }
    }
    Ok(refused)
}

/// Screens, claims and copies one table; `Some` when it is refused.
async fn copy_table(k: &Keyless, plan: &TablePlan, no: usize) -> Result<Option<Skipped>> {
    if finished(&k.control, plan).await? {
        return Ok(None);
    }
    // A pause holds a table before its copy starts; a locked copy, once started, is not
    // paused (its table's writers would wait for the pause too).
    k.throttle.wait_unpaused().await;
    let old = connect(
        Db::Old,
        &k.cfg.old,
        k.cfg.backfill.source_statement_timeout_ms,
    )
    .await?;
    let lock = match dual_write_evidence(&old, plan).await? {
        Some(evidence) if !k.cfg.backfill.lock_keyless => {
            return Ok(Some(refuse(
                plan,
                format!(
                    "no primary key, and dual writes may be running ({evidence}): rows changed \
                     on old during the copy would end up duplicated or resurrected on new. \
                     Run again with --lock-keyless (writers to {} wait while it is copied), or \
                     copy it before the proxy starts",
                    plan.name
                ),
            )));
        }
        Some(_) => true,
        None => false,
    };
    if !lock && has_rows(&k.control, plan).await? {
        return Ok(Some(refuse(
            plan,
            format!(
                "no primary key, and new's copy already holds rows that cannot be matched to \
                 old's: empty it on new (TRUNCATE {}) and run again, or leave it out with \
                 --exclude",
                plan.name
            ),
        )));
    }
    let worker = format!("{}/keyless-{no}", k.worker_prefix);
    let Some(claim) = chunk_table::claim(
        &k.control,
        std::slice::from_ref(&plan.quoted),
        k.cfg.backfill.max_attempts,
        &worker,
        k.cfg.lease(),
    )
    .await?
    else {
        // Held by another live process, or out of attempts: the totals say which.
        return Ok(None);
    };
    match copy_claimed(k, plan, old, &claim, &worker, lock).await {
        Ok(Some(rows)) => k.progress.chunk_done(&plan.quoted, rows),
        Ok(None) => {}
        Err(e) => {
            let message = format!("{e:#}");
            tracing::warn!(table = %plan.name, error = %message, "Copying a table without a primary key failed.");
            chunk_table::fail(&k.control, &claim, &worker, &message).await?;
        }
    }
    Ok(None)
}

fn refuse(plan: &TablePlan, reason: String) -> Skipped {
    tracing::warn!(table = %plan.name, %reason, "Table refused.");
    Skipped {
        table: plan.name.to_string(),
        reason,
    }
}

/// The copy itself, under `claim`; the rows copied, or `None` when the claim was taken
/// over meanwhile (everything rolled back).
async fn copy_claimed(
    k: &Keyless,
    plan: &TablePlan,
    old: Client,
    claim: &Claim,
    worker: &str,
    lock: bool,
) -> Result<Option<u64>> {
    let started = Instant::now();
    // Returning drops both sessions: on an error, that rolls both sides back.
    let new = connect_writer(&k.cfg.new, k.cfg.backfill.write_mode()).await?;
    let wait = format!("SET LOCAL lock_timeout = {}", LOCK_WAIT.as_millis());
    // LOCK comes before the first query, so the snapshot is taken once writers are out.
    // The whole table is read in one statement: no statement timeout.
    let mut begin_old =
        format!("BEGIN ISOLATION LEVEL REPEATABLE READ; SET LOCAL statement_timeout = 0; {wait}");
    if lock {
        begin_old.push_str(&format!("; LOCK TABLE {} IN SHARE MODE", plan.quoted));
    }
    old.batch_execute(&begin_old)
        .await
        .with_context(|| format!("locking {} on old (writers wait)", plan.name))?;
    new.batch_execute(&format!(
        "BEGIN; {wait}; LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE",
        plan.quoted
    ))
    .await
    .with_context(|| format!("locking {} on new", plan.name))?;
    check_capture_backlog(&old, plan).await?;
    if has_rows(&new, plan).await? {
        if !lock {
            bail!(
                "rows of {} appeared on new after it was found empty: empty it there and run again",
                plan.name
            );
        }
        let gone = new
            .execute(&format!("DELETE FROM {}", plan.quoted), &[])
            .await
            .with_context(|| format!("clearing {} on new under the locks", plan.name))?;
        tracing::info!(table = %plan.name, rows = gone, "Rows mirrored to new before the copy replaced by old's.");
    }
    let throttle = (!lock).then_some(&*k.throttle);
    let rows = stream(&old, &new, plan, throttle).await?;
    let copy_ms = started.elapsed().as_millis() as i64;

    let verify_started = Instant::now();
    let q = MultisetQueries::new(&plan.old, &plan.columns, k.row_hash);
    let (old_sum, new_sum) = tokio::try_join!(
        async {
            q.checksum(&old, None)
                .await
                .with_context(|| format!("checksumming {} on old", plan.name))
        },
        async {
            q.checksum(&new, None)
                .await
                .with_context(|| format!("checksumming {} on new", plan.name))
        },
    )?;
    let verify_ms = verify_started.elapsed().as_millis() as i64;
    if old_sum != new_sum || old_sum.rows as u64 != rows {
        bail!(
            "{} differs after its copy: old has {} rows (hash sum {}), new {} rows (hash sum {}), \
             {rows} copied; nothing was kept on new",
            plan.name,
            old_sum.rows,
            old_sum.sum,
            new_sum.rows,
            new_sum.sum
        );
    }
    let outcome = ChunkOutcome {
        status: ChunkStatus::Done,
        path: SPLIT,
        rows_copied: rows as i64,
        rows_inserted: rows as i64,
        rows_old: old_sum.rows,
        rows_new: new_sum.rows,
        checksum_old: shown(&old_sum),
        checksum_new: shown(&new_sum),
        rows_repaired: 0,
        copy_ms,
        verify_ms,
    };
    hold_for_test(plan).await;
    // Recorded in the loading transaction: the rows and the record commit together.
    if !chunk_table::finish(&new, claim, worker, &outcome).await? {
        return Ok(None);
    }
    new.batch_execute("COMMIT")
        .await
        .with_context(|| format!("committing {} on new", plan.name))?;
    // Old's lock is held until new's copy is committed: a writer let in earlier would be
    // mirrored onto a table still being loaded.
    old.batch_execute("ROLLBACK")
        .await
        .with_context(|| format!("ending the snapshot of {} on old", plan.name))?;
    Ok(Some(rows))
}

/// Tests only (`BACKFILL_TEST_FAILPOINT=hold-keyless-until:PATH`): the copy, verified and
/// still holding its locks and transactions, waits until PATH exists, so a test can watch
/// what the locks do to writers.
#[cfg(feature = "failpoints")]
async fn hold_for_test(plan: &TablePlan) {
    let Some(point) = crate::failpoint::value() else {
        return;
    };
    let Some(path) = point.strip_prefix("hold-keyless-until:") else {
        return;
    };
    tracing::warn!(table = %plan.name, path, "Failpoint hold-keyless-until: waiting.");
    while !std::path::Path::new(path).exists() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Without the feature there is nothing to wait for.
#[cfg(not(feature = "failpoints"))]
async fn hold_for_test(_plan: &TablePlan) {}

fn shown(sum: &RangeChecksum) -> String {
    format!("multiset:{}:{}", sum.rows, sum.sum)
}

/// Changes captured on old for the table but not yet applied on new (writes that bypassed
/// the proxy, drained later by it or the reconciler) would land on top of the copy, which
/// holds them already.
async fn check_capture_backlog(old: &Client, plan: &TablePlan) -> Result<()> {
    let exists: bool = old
        .query_one(
            "SELECT to_regclass('_switchyard.capture_log') IS NOT NULL",
            &[],
        )
        .await
        .context("looking for the capture log on old")?
        .get(0);
    if !exists {
        return Ok(());
    }
    let waiting: i64 = old
        .query_one(
            "SELECT count(*) FROM _switchyard.capture_log WHERE relid = $1::text::regclass",
            &[&plan.quoted],
        )
        .await
        .with_context(|| format!("reading the capture log of {} on old", plan.name))?
        .get(0);
    if waiting > 0 {
        bail!(
            "{waiting} captured changes to {} wait in old's capture log to be applied on new, \
             and would then be applied on top of the copy: let the proxy or \
             `switchyard-reconciler` drain them, then run again",
            plan.name
        );
    }
    Ok(())
}

/// Streams the table from old's snapshot into new's transaction (binary COPY, one message
/// per row from old, batched towards new); returns the rows new took.
async fn stream(
    old: &Client,
    new: &Client,
    plan: &TablePlan,
    throttle: Option<&Throttle>,
) -> Result<u64> {
    let columns = plan.column_list();
    let source = old
        .copy_out(&format!(
            "COPY (SELECT {columns} FROM {}) TO STDOUT (FORMAT binary)",
            plan.quoted
        ))
        .await
        .with_context(|| format!("starting COPY TO on old for {}", plan.name))?;
    let sink = new
        .copy_in::<_, bytes::Bytes>(&format!(
            "COPY {} ({columns}) FROM STDIN (FORMAT binary)",
            plan.quoted
        ))
        .await
        .with_context(|| format!("starting COPY FROM on new for {}", plan.name))?;
    pin_mut!(source);
    pin_mut!(sink);
    #[cfg(feature = "failpoints")]
    let failpoint = crate::failpoint::armed("exit-mid-keyless");
    let mut batch = BytesMut::with_capacity(2 * SINK_BATCH);
    let mut messages = 0u64;
    while let Some(piece) = source.next().await {
        let piece = piece.with_context(|| format!("reading {} from old", plan.name))?;
        batch.extend_from_slice(&piece);
        messages += 1;
        if batch.len() >= SINK_BATCH {
            sink.send(batch.split().freeze())
                .await
                .with_context(|| format!("writing rows of {} to new", plan.name))?;
        }
        if messages.is_multiple_of(BATCH_ROWS) {
            if let Some(t) = throttle {
                t.wait_unpaused().await;
                t.take(BATCH_ROWS).await;
            }
            #[cfg(feature = "failpoints")]
            if failpoint {
                sink.flush()
                    .await
                    .with_context(|| format!("writing rows of {} to new", plan.name))?;
                tracing::warn!("Failpoint exit-mid-keyless: exiting.");
                std::process::exit(3);
            }
        }
    }
    if !batch.is_empty() {
        sink.send(batch.freeze())
            .await
            .with_context(|| format!("writing rows of {} to new", plan.name))?;
    }
    sink.as_mut()
        .finish()
        .await
        .with_context(|| format!("finishing COPY FROM on new for {}", plan.name))
}
