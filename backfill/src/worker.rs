//! One worker: claim a chunk, copy it, check and repair it, record the outcome; again
//! until no chunk of the selected tables is left. A process runs `--jobs` of them, each
//! with its own connection to each database; claims, lease renewals and results go
//! through the process's control connection to new.

use crate::chunk_check::{check_chunk, wait_for_writers_in_flight, IN_FLIGHT_WAIT};
use crate::chunk_table::{self, ChunkOutcome, ChunkStatus, Claim, PassChunk};
use crate::config::BackfillConfig;
use crate::connect::{connect, connect_copy, connect_writer, Db};
use crate::copy::{copy_chunk, copy_chunk_bulk, range_sum, CopySql, Stages};
use crate::indexes;
use crate::plan::TablePlan;
use crate::progress::Progress;
use crate::table_pass;
use crate::table_scan;
use crate::throttle::Throttle;
use anyhow::{Context, Result};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_core::checksum::{RangeQueries, RowHash};
use switchyard_core::connect::Writer;
use switchyard_core::copy_conn::CopyConn;
use tokio_postgres::Client;

/// Failed chunks in a row after which a worker gives up (the databases are likely down).
const MAX_CONSECUTIVE_FAILURES: u32 = 5;

/// A table as the workers need it.
pub struct TableWork {
    pub plan: TablePlan,
    pub queries: RangeQueries,
    pub copy: CopySql,
    /// Bulk mode verifies the table in one pass (`table_pass`): the key's position in
    /// the copied columns.
    pub pass_key: Option<usize>,
    /// Rows hash the same from either server's binary COPY: the direct path checks a
    /// chunk by hashing what it relays and reading the range back from new.
    pub stream_hash: bool,
}

/// What every worker of a process shares.
pub struct Shared {
    pub cfg: BackfillConfig,
    pub tables: HashMap<String, TableWork>,
    /// Quoted table names in load order.
    pub order: Vec<String>,
    /// Those of `order` that `--scan-old` can read in one scan (a single integer key,
    /// columns hashed the same from both servers: what the verification pass needs).
    pub scannable: Vec<String>,
    pub control: Arc<Client>,
    /// `host:pid`; each worker appends `/job`.
    pub worker_prefix: String,
    pub throttle: Arc<Throttle>,
    pub progress: Arc<Progress>,
    /// Held by the one worker of this process that rebuilds (bulk mode's second phase);
    /// between processes the rebuild's advisory lock decides.
    pub rebuild_guard: tokio::sync::Mutex<()>,
    /// What this process's workers rebuilt (for the summary).
    pub rebuilt: std::sync::Mutex<Vec<String>>,
    /// Old's write transactions a wait before a chunk check gave up on (see
    /// `chunk_check::wait_for_writers_in_flight`): not waited for again.
    pub stuck_writers: std::sync::Mutex<Vec<String>>,
    /// Woken when a worker of this process has finished a chunk, a pass, a verification
    /// or a rebuild, so the others waiting on that state go on at once instead of at
    /// their next poll (which stays, for the work of other processes).
    pub changed: tokio::sync::Notify,
}

impl Shared {
    /// Builds the per-table statements once.
    pub fn table_work(plans: Vec<TablePlan>, row_hash: RowHash) -> HashMap<String, TableWork> {
        plans
            .into_iter()
            .enumerate()
            .map(|(i, plan)| {
                let queries = RangeQueries::new(&plan.old, &plan.columns, row_hash);
                let copy = CopySql::new(&plan, i);
                let pass_key = table_pass::pass_key(&plan);
                let stream_hash = table_pass::stream_hashable_plan(&plan);
                (
                    plan.quoted.clone(),
                    TableWork {
                        plan,
                        queries,
                        copy,
                        pass_key,
                        stream_hash,
                    },
                )
            })
            .collect()
    }
}

/// A worker's own sessions.
struct Sessions {
    old: Client,
    /// Writes every row the worker puts into new.
    new: Writer,
    /// COPY reads: old's chunks, new's read-back.
    old_copy: CopyConn,
    new_copy: CopyConn,
    stages: Stages,
}

async fn open_sessions(cfg: &BackfillConfig) -> Result<Sessions> {
    let s = &cfg.backfill;
    let (old, new, old_copy, new_copy) = tokio::try_join!(
        connect(Db::Old, &cfg.old, s.source_statement_timeout_ms),
        connect_writer(&cfg.new, s.write_mode()),
        connect_copy(Db::Old, &cfg.old, s.source_statement_timeout_ms),
        connect_copy(Db::New, &cfg.new, 0),
    )?;
    // Every statement of a worker reads one key range. On new the table starts empty and
    // unanalysed, so the planner would scan the whole (growing) table for each chunk;
    // without sequential scans it walks the primary-key index.
    for (db, client) in [(Db::Old, &old), (Db::New, &*new)] {
        client
            .batch_execute("SET enable_seqscan = off")
            .await
            .with_context(|| format!("setting up a worker session on the {db} database"))?;
    }
    Ok(Sessions {
        old,
        new,
        old_copy,
        new_copy,
        stages: Stages::default(),
    })
}

/// The worker's sessions, opened when it has none (or lost them after a failure).
async fn sessions_of<'a>(
    sessions: &'a mut Option<Sessions>,
    cfg: &BackfillConfig,
) -> Result<&'a mut Sessions> {
    Ok(match sessions {
        Some(s) => s,
        None => sessions.insert(open_sessions(cfg).await?),
    })
}

/// Runs one worker to the end of the work.
pub async fn run_worker(shared: Arc<Shared>, job: usize) -> Result<()> {
    let worker = format!("{}/{job}", shared.worker_prefix);
    let s = &shared.cfg.backfill;
    let mut sessions: Option<Sessions> = None;
    let mut failures = 0u32;
    loop {
        shared.throttle.wait_unpaused().await;
        // Registered before the chunk table is read: a change made after that read wakes
        // this worker even if it happens before the worker starts to wait.
        let changed = shared.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if s.scan_old && s.bulk_mode() && !shared.scannable.is_empty() {
            let claims = chunk_table::claim_scan(
                &shared.control,
                &shared.scannable,
                s.max_attempts,
                &worker,
                shared.cfg.lease(),
            )
            .await?;
            if !claims.is_empty() {
                run_scan(&shared, &worker, &mut sessions, &mut failures, claims).await?;
                shared.changed.notify_waiters();
                continue;
            }
        }
        let claim = chunk_table::claim(
            &shared.control,
            &shared.order,
            s.max_attempts,
            &worker,
            shared.cfg.lease(),
        )
        .await?;
        if let Some(claim) = claim {
            run_claim(&shared, &worker, &mut sessions, &mut failures, claim).await?;
            shared.changed.notify_waiters();
            continue;
        }
        // Bulk mode's second phase: a table read back in one pass (no index needed, so
        // while another worker rebuilds), then copied chunks of tables whose indexes are
        // back, range by range.
        #[cfg(feature = "failpoints")]
        if crate::failpoint::armed("exit-before-verify") {
            // No worker of this process verifies or rebuilds: each waits until every
            // chunk is copied (the others may still be copying), then the process exits.
            if !chunk_table::ready_to_rebuild(&shared.control, &shared.order)
                .await?
                .is_empty()
            {
                tracing::warn!("Failpoint exit-before-verify: exiting.");
                std::process::exit(3);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let pass =
            chunk_table::claim_pass(&shared.control, &shared.order, &worker, shared.cfg.lease())
                .await?;
        if !pass.is_empty() {
            run_pass(&shared, &worker, &mut sessions, &mut failures, pass).await?;
            shared.changed.notify_waiters();
            continue;
        }
        let verify =
            chunk_table::claim_verify(&shared.control, &shared.order, &worker, shared.cfg.lease())
                .await?;
        if let Some(claim) = verify {
            run_verify(&shared, &worker, &mut sessions, &mut failures, claim).await?;
            shared.changed.notify_waiters();
            continue;
        }
        let (open, running) =
            chunk_table::open_chunks(&shared.control, &shared.order, s.max_attempts).await?;
        if open == 0 {
            return Ok(());
        }
        // Bulk-loaded tables whose chunks are all copied: one worker of one process
        // rebuilds their indexes; the others wait (and take over if it dies).
        let ready = chunk_table::ready_to_rebuild(&shared.control, &shared.order).await?;
        if !ready.is_empty() {
            if let Ok(_guard) = shared.rebuild_guard.try_lock() {
                let rebuilt = indexes::rebuild(&shared.cfg, &shared.control, &ready).await?;
                if !rebuilt.is_empty() {
                    tracing::info!(objects = ?rebuilt, "Rebuilt after the bulk load; verifying the chunks.");
                    if let Ok(mut all) = shared.rebuilt.lock() {
                        all.extend(rebuilt);
                    }
                    shared.changed.notify_waiters();
                    continue;
                }
            }
            wait_for_change(changed).await;
            continue;
        }
        if running == 0 {
            // Nothing running and nothing claimable: what is left waits on a table
            // whose chunks failed for good. One more look, in case a parent table was
            // finished between the claim and the count.
            let again = chunk_table::claim(
                &shared.control,
                &shared.order,
                s.max_attempts,
                &worker,
                shared.cfg.lease(),
            )
            .await?;
            match again {
                Some(c) => {
                    run_claim(&shared, &worker, &mut sessions, &mut failures, c).await?;
                    continue;
                }
                None => return Ok(()),
            }
        }
        // Chunks are running (here or in another process): wait, and take one over if
        // its worker dies.
        wait_for_change(changed).await;
    }
}

/// Waits until a worker of this process reports a change, or 300 ms (what other
/// processes do is only seen by polling).
async fn wait_for_change(changed: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>) {
    let _ = tokio::time::timeout(Duration::from_millis(300), changed).await;
}

/// Bulk mode: verifies (and repairs) one copied chunk.
async fn run_verify(
    shared: &Shared,
    worker: &str,
    sessions: &mut Option<Sessions>,
    failures: &mut u32,
    claim: Claim,
) -> Result<()> {
    let outcome = match sessions {
        Some(s) => verify(shared, s, &claim).await,
        None => match open_sessions(&shared.cfg).await {
            Ok(s) => verify(shared, sessions.insert(s), &claim).await,
            Err(e) => Err(e),
        },
    };
    match outcome {
        Ok(o) => {
            *failures = 0;
            let rows = o.rows_old.max(0) as u64;
            if chunk_table::finish_verify(&shared.control, &claim, worker, &o).await? {
                shared.progress.chunk_done(&claim.table_name, rows);
            } else {
                tracing::warn!(table = %claim.table_name, chunk = claim.chunk_no, "Chunk's verification was taken over by another worker; its result counts.");
            }
            Ok(())
        }
        Err(e) => {
            *failures += 1;
            let text = format!("{e:#}");
            tracing::warn!(table = %claim.table_name, chunk = claim.chunk_no, error = %text, "Chunk verification failed; it will be retried.");
            chunk_table::back_to_copied(&shared.control, &claim, worker, &text, false).await?;
            after_failure(sessions, *failures, e)
        }
    }
}

/// Scanning old: copies a whole table whose chunks this worker claimed (see `table_scan`).
async fn run_scan(
    shared: &Shared,
    worker: &str,
    sessions: &mut Option<Sessions>,
    failures: &mut u32,
    claims: Vec<Claim>,
) -> Result<()> {
    let table = claims[0].table_name.clone();
    let outcome = async {
        let t = shared
            .tables
            .get(&table)
            .with_context(|| format!("claimed chunks of {table}, which this run does not plan"))?;
        let key = t
            .pass_key
            .with_context(|| format!("claimed {table} to scan, but it has no integer key"))?;
        let s = sessions_of(sessions, &shared.cfg).await?;
        // One loading session per job (at most 4), as chunk copies would use.
        let cfg = &shared.cfg;
        let mut news = futures_util::future::try_join_all(
            (0..cfg.backfill.jobs.clamp(1, 4))
                .map(|_| connect_writer(&cfg.new, cfg.backfill.write_mode())),
        )
        .await?;
        tracing::info!(table = %table, sessions = news.len(), "Scanning old for the whole table.");
        table_scan::run(
            &s.old,
            &mut s.old_copy,
            &mut news,
            &t.plan,
            key,
            &claims,
            worker,
            &shared.throttle,
        )
        .await
    }
    .await;
    match outcome {
        Ok(Some(rows)) => {
            *failures = 0;
            tracing::info!(table = %table, rows, "Scanned and loaded; verified after the rebuild.");
            Ok(())
        }
        Ok(None) => {
            *failures = 0;
            tracing::warn!(table = %table, "The table's chunks were taken over by another worker while this one scanned it; rolled back.");
            Ok(())
        }
        Err(e) => {
            *failures += 1;
            let text = format!("{e:#}");
            tracing::warn!(table = %table, error = %text, "Scan failed; the table's chunks will be retried.");
            for c in &claims {
                chunk_table::fail(&shared.control, c, worker, &text).await?;
            }
            after_failure(sessions, *failures, e)
        }
    }
}

/// Bulk mode: verifies the claimed chunks of one table in one pass over the table on new.
async fn run_pass(
    shared: &Shared,
    worker: &str,
    sessions: &mut Option<Sessions>,
    failures: &mut u32,
    chunks: Vec<PassChunk>,
) -> Result<()> {
    let table = chunks[0].claim.table_name.clone();
    let outcome = async {
        let t = shared
            .tables
            .get(&table)
            .with_context(|| format!("claimed chunks of {table}, which this run does not plan"))?;
        let key = t.pass_key.with_context(|| {
            format!("chunks of {table} carry stream checksums, but its columns cannot be hashed that way")
        })?;
        let s = sessions_of(sessions, &shared.cfg).await?;
        // The pass is what is left of the table's work while its key is rebuilt: read it
        // on up to `--jobs` sessions at once (at most 4), so it does not leave cores idle.
        let extra = shared.cfg.backfill.jobs.clamp(1, 4) - 1;
        let mut more = futures_util::future::try_join_all(
            (0..extra).map(|_| connect_copy(Db::New, &shared.cfg.new, 0)),
        )
        .await?;
        let mut conns: Vec<&mut CopyConn> = std::iter::once(&mut s.new_copy)
            .chain(more.iter_mut())
            .collect();
        table_pass::run(&s.new, &mut conns, &t.plan, key, chunks.clone()).await
    }
    .await;
    match outcome {
        Ok(result) => {
            *failures = 0;
            table_pass::record(&shared.control, worker, result, |t, rows| {
                shared.progress.chunk_done(t, rows)
            })
            .await
        }
        Err(e) => {
            *failures += 1;
            let text = format!("{e:#}");
            tracing::warn!(table = %table, error = %text, "Verification pass failed; it will be retried.");
            for c in &chunks {
                chunk_table::back_to_copied(&shared.control, &c.claim, worker, &text, false)
                    .await?;
            }
            after_failure(sessions, *failures, e)
        }
    }
}

async fn verify(shared: &Shared, s: &mut Sessions, claim: &Claim) -> Result<ChunkOutcome> {
    let t = table_of(shared, claim)?;
    let started = Instant::now();
    let checked = check_chunk(&mut s.old, &mut s.new, &t.plan, &t.queries, &claim.range)
        .await
        .with_context(|| format!("verifying chunk {} of {}", claim.chunk_no, t.plan.name))?;
    Ok(ChunkOutcome {
        rows_old: checked.old.rows,
        rows_new: checked.new.rows,
        checksum_old: checked.old.sum,
        checksum_new: checked.new.sum,
        rows_repaired: checked.repaired as i64,
        verify_ms: started.elapsed().as_millis() as i64,
        ..ChunkOutcome::checked(checked.equal, "bulk")
    })
}

fn table_of<'a>(shared: &'a Shared, claim: &Claim) -> Result<&'a TableWork> {
    shared.tables.get(&claim.table_name).with_context(|| {
        format!(
            "claimed a chunk of {}, which this run does not plan",
            claim.table_name
        )
    })
}

async fn run_claim(
    shared: &Shared,
    worker: &str,
    sessions: &mut Option<Sessions>,
    failures: &mut u32,
    claim: Claim,
) -> Result<()> {
    let outcome = match sessions {
        Some(s) => work(shared, s, &claim, worker).await,
        None => match open_sessions(&shared.cfg).await {
            Ok(s) => work(shared, sessions.insert(s), &claim, worker).await,
            Err(e) => Err(e),
        },
    };
    match outcome {
        Ok(None) => {
            // Bulk mode: copied and recorded in one transaction, verified later.
            *failures = 0;
            Ok(())
        }
        Ok(Some(o)) => {
            *failures = 0;
            let rows = o.rows_old.max(0) as u64;
            if chunk_table::finish(&shared.control, &claim, worker, &o).await? {
                shared.progress.chunk_done(&claim.table_name, rows);
            } else {
                tracing::warn!(table = %claim.table_name, chunk = claim.chunk_no, "Chunk was taken over by another worker while this one worked on it; its result counts.");
            }
            Ok(())
        }
        Err(e) => {
            *failures += 1;
            let text = format!("{e:#}");
            tracing::warn!(table = %claim.table_name, chunk = claim.chunk_no, attempt = claim.attempts, error = %text, "Chunk failed; it will be retried.");
            chunk_table::fail(&shared.control, &claim, worker, &text).await?;
            after_failure(sessions, *failures, e)
        }
    }
}

/// After a failed chunk, verification or pass (already recorded): sessions whose
/// connection is gone are dropped (reopened for the next claim), and after too many
/// failures in a row the worker gives up.
fn after_failure(sessions: &mut Option<Sessions>, failures: u32, e: anyhow::Error) -> Result<()> {
    match sessions {
        // A failed chunk's transaction may have rolled back the staging tables' creation.
        Some(s)
            if !s.old.is_closed()
                && !s.new.is_closed()
                && !s.old_copy.is_broken()
                && !s.new_copy.is_broken() =>
        {
            s.stages.forget()
        }
        _ => *sessions = None,
    }
    if failures >= MAX_CONSECUTIVE_FAILURES {
        return Err(e.context(format!("{failures} chunks failed in a row; giving up")));
    }
    Ok(())
}

/// Copies and checks one chunk; in bulk mode only copies it (recorded `copied` in the
/// COPY's transaction) and returns `None`.
async fn work(
    shared: &Shared,
    s: &mut Sessions,
    claim: &Claim,
    worker: &str,
) -> Result<Option<ChunkOutcome>> {
    let t = table_of(shared, claim)?;
    // Read per chunk, not per process: a process started before another one put the
    // table in bulk mode must load it the same way.
    if chunk_table::bulk_loading(&s.new, &claim.table_name).await? {
        let copied = copy_chunk_bulk(
            &mut s.old_copy,
            &mut s.new,
            &t.copy,
            &claim.range,
            &shared.throttle,
            claim,
            worker,
            t.pass_key.is_some(),
        )
        .await
        .with_context(|| format!("copying chunk {} of {}", claim.chunk_no, t.plan.name))?;
        if copied.is_none() {
            tracing::warn!(table = %claim.table_name, chunk = claim.chunk_no, "Chunk was taken over by another worker while this one copied it; rolled back.");
        }
        return Ok(None);
    }
    let started = Instant::now();
    let copied = copy_chunk(
        &mut s.old_copy,
        &mut s.new,
        &mut s.stages,
        &t.copy,
        &claim.range,
        !shared.cfg.backfill.dual_writes,
        t.stream_hash,
        &shared.throttle,
    )
    .await
    .with_context(|| format!("copying chunk {} of {}", claim.chunk_no, t.plan.name))?;
    let copy_ms = started.elapsed().as_millis() as i64;
    let started = Instant::now();
    if let Some(old_sum) = copied.old_sum {
        // Direct path (dual writes off, the range was empty): the rows read from old
        // against the range read back from new; SQL checksums and repair only if they
        // differ.
        let new_sum = range_sum(&mut s.new_copy, &t.copy, &claim.range)
            .await
            .with_context(|| format!("checking chunk {} of {}", claim.chunk_no, t.plan.name))?;
        if new_sum == old_sum {
            return Ok(Some(ChunkOutcome {
                status: ChunkStatus::Done,
                path: copied.path.as_str(),
                rows_copied: copied.rows_copied as i64,
                rows_inserted: copied.rows_inserted as i64,
                rows_old: old_sum.rows,
                rows_new: new_sum.rows,
                checksum_old: old_sum.text(),
                checksum_new: new_sum.text(),
                rows_repaired: 0,
                copy_ms,
                verify_ms: started.elapsed().as_millis() as i64,
            }));
        }
        tracing::warn!(table = %claim.table_name, chunk = claim.chunk_no, old_rows = old_sum.rows, new_rows = new_sum.rows, "Chunk read back from new differs from the rows read from old; checking it in SQL.");
    }
    if shared.cfg.backfill.dual_writes {
        let skip: Vec<String> = shared
            .stuck_writers
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default();
        let open = wait_for_writers_in_flight(&s.old, &t.plan.quoted, IN_FLIGHT_WAIT, &skip)
            .await
            .context("waiting for old's open write transactions before the check")?;
        if !open.is_empty() {
            tracing::warn!(table = %claim.table_name, chunk = claim.chunk_no, transactions = ?open,
                "Transactions writing this table on old since before the chunk's copy are still open after {} s; checking without them from now on (a delete they commit later may leave a row on new: run verify before cutover).",
                IN_FLIGHT_WAIT.as_secs());
            if let Ok(mut stuck) = shared.stuck_writers.lock() {
                stuck.extend(open);
            }
        }
    }
    let checked = check_chunk(&mut s.old, &mut s.new, &t.plan, &t.queries, &claim.range)
        .await
        .with_context(|| format!("checking chunk {} of {}", claim.chunk_no, t.plan.name))?;
    Ok(Some(ChunkOutcome {
        status: if checked.equal {
            ChunkStatus::Done
        } else {
            ChunkStatus::Unverified
        },
        path: copied.path.as_str(),
        rows_copied: copied.rows_copied as i64,
        rows_inserted: copied.rows_inserted as i64,
        rows_old: checked.old.rows,
        rows_new: checked.new.rows,
        checksum_old: checked.old.sum,
        checksum_new: checked.new.sum,
        rows_repaired: checked.repaired as i64,
        copy_ms,
        verify_ms: started.elapsed().as_millis() as i64,
    }))
}
