//! Copying one chunk: chunk by chunk it is checked and recorded finished; bulk-loading,
//! it is recorded copied in its COPY's transaction and verified later.

use super::{Retry, Sessions, Shared, TableWork, Worker};
use crate::chunk_check::{check_chunk, wait_for_writers_in_flight, IN_FLIGHT_WAIT};
use crate::chunk_table::{self, ChunkOutcome, Claim};
use crate::copy::{copy_chunk, copy_chunk_bulk, range_sum};
use anyhow::{Context, Result};
use std::time::Instant;
use tokio_postgres::Client;

pub(super) async fn run(w: &mut Worker<'_>, claim: Claim) -> Result<()> {
    let shared = w.shared;
    let name = w.name.clone();
    let outcome = async {
        let t = shared.table(&claim.table_name)?;
        let s = w.sessions().await?;
        work(shared, t, s, &claim, &name).await
    }
    .await;
    let log = |error: &str| {
        tracing::warn!(table = %claim.table_name, chunk = claim.chunk_no, attempt = claim.attempts, error = %error, "Chunk failed; it will be retried.");
    };
    let outcome = w
        .settle(outcome, Retry::Copy(std::slice::from_ref(&claim)), log)
        .await?;
    // `None` inside: bulk mode, copied and recorded in one transaction, verified later.
    if let Some(Some(o)) = outcome {
        let recorded = chunk_table::finish(&shared.control, &claim, &name, &o).await?;
        w.counted(recorded, &claim, o.rows_old, "Chunk was taken over by another worker while this one worked on it; its result counts.");
    }
    Ok(())
}

/// Copies and checks one chunk; in bulk mode only copies it (recorded `copied` in the
/// COPY's transaction) and returns `None`.
async fn work(
    shared: &Shared,
    t: &TableWork,
    s: &mut Sessions,
    claim: &Claim,
    worker: &str,
) -> Result<Option<ChunkOutcome>> {
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
                rows_copied: copied.rows_copied as i64,
                rows_inserted: copied.rows_inserted as i64,
                rows_old: old_sum.rows,
                rows_new: new_sum.rows,
                checksum_old: old_sum.text(),
                checksum_new: new_sum.text(),
                copy_ms,
                verify_ms: started.elapsed().as_millis() as i64,
                ..ChunkOutcome::checked(true, copied.path.as_str())
            }));
        }
        tracing::warn!(table = %claim.table_name, chunk = claim.chunk_no, old_rows = old_sum.rows, new_rows = new_sum.rows, "Chunk read back from new differs from the rows read from old; checking it in SQL.");
    }
    if shared.cfg.backfill.dual_writes {
        wait_for_writers(shared, &s.old, t, claim).await?;
    }
    let checked = check_chunk(&mut s.old, &mut s.new, &t.plan, &t.queries, &claim.range)
        .await
        .with_context(|| format!("checking chunk {} of {}", claim.chunk_no, t.plan.name))?;
    Ok(Some(ChunkOutcome {
        rows_copied: copied.rows_copied as i64,
        rows_inserted: copied.rows_inserted as i64,
        rows_old: checked.old.rows,
        rows_new: checked.new.rows,
        checksum_old: checked.old.sum,
        checksum_new: checked.new.sum,
        rows_repaired: checked.repaired as i64,
        copy_ms,
        verify_ms: started.elapsed().as_millis() as i64,
        ..ChunkOutcome::checked(checked.equal, copied.path.as_str())
    }))
}

/// Waits for old's transactions that were writing the table before the copy, so that a
/// delete they commit after the copy read the row is seen by the check; those still open
/// after [`IN_FLIGHT_WAIT`] are not waited for again by any worker.
async fn wait_for_writers(
    shared: &Shared,
    old: &Client,
    t: &TableWork,
    claim: &Claim,
) -> Result<()> {
    let skip: Vec<String> = shared
        .stuck_writers
        .lock()
        .map(|s| s.clone())
        .unwrap_or_default();
    let open = wait_for_writers_in_flight(old, &t.plan.quoted, IN_FLIGHT_WAIT, &skip)
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
    Ok(())
}
