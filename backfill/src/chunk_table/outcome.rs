//! Recording what became of claimed chunks. Each record names the worker (and for a copy
//! its attempt): a chunk whose lease ran out and that another worker took over is not
//! matched, and the record says so, since the other worker's result counts.

use super::claim::Claim;
use super::status::ChunkStatus;
use super::transition::{transition, Transition};
use super::ChunkTableError;
use switchyard_core::copy_hash::StreamSum;
use tokio_postgres::{Client, Transaction};
use ChunkStatus::*;

/// A copy claim's chunk: `$1` table, `$2` chunk number, `$3` worker, `$4` attempt.
const THIS_ATTEMPT: &str =
    "c.table_name = $1 AND c.chunk_no = $2 AND c.worker = $3 AND c.attempts = $4";

/// A verification claim's chunk (attempts are not counted): `$1`, `$2`, `$3` as above.
const THIS_VERIFICATION: &str = "c.table_name = $1 AND c.chunk_no = $2 AND c.worker = $3";

/// What a worker found out about a chunk.
#[derive(Debug, Clone)]
pub struct ChunkOutcome {
    /// `Done` (checksums equal) or `Unverified` (still different after the repair
    /// rounds, under heavy concurrent writes).
    pub status: ChunkStatus,
    /// `direct` (plain COPY into an empty range) or `merge` (staging + ON CONFLICT).
    pub path: &'static str,
    pub rows_copied: i64,
    pub rows_inserted: i64,
    pub rows_old: i64,
    pub rows_new: i64,
    pub checksum_old: String,
    pub checksum_new: String,
    pub rows_repaired: i64,
    pub copy_ms: i64,
    pub verify_ms: i64,
}

impl ChunkOutcome {
    /// A chunk whose checksums are `equal` or not after its check.
    pub fn checked(equal: bool, path: &'static str) -> Self {
        ChunkOutcome {
            status: if equal { Done } else { Unverified },
            path,
            rows_copied: 0,
            rows_inserted: 0,
            rows_old: 0,
            rows_new: 0,
            checksum_old: String::new(),
            checksum_new: String::new(),
            rows_repaired: 0,
            copy_ms: 0,
            verify_ms: 0,
        }
    }
}

/// Records a finished chunk; false when the chunk is no longer this worker's (its lease
/// ran out and someone else took it over: their result counts).
pub async fn finish(
    client: &Client,
    claim: &Claim,
    worker: &str,
    o: &ChunkOutcome,
) -> Result<bool, ChunkTableError> {
    let rows = transition(
        client,
        &Transition::of_chunks(
            &[Running],
            o.status,
            "path = $5, rows_copied = $6, rows_inserted = $7, rows_old = $8, \
                  rows_new = $9, checksum_old = $10, checksum_new = $11, rows_repaired = $12, \
                  copy_ms = $13, verify_ms = $14, finished_at = clock_timestamp(), \
                  lease_until = NULL",
            THIS_ATTEMPT,
        ),
        &[
            &claim.table_name,
            &claim.chunk_no,
            &worker,
            &claim.attempts,
            &o.path,
            &o.rows_copied,
            &o.rows_inserted,
            &o.rows_old,
            &o.rows_new,
            &o.checksum_old,
            &o.checksum_new,
            &o.rows_repaired,
            &o.copy_ms,
            &o.verify_ms,
        ],
        "recording a finished chunk",
    )
    .await?;
    Ok(rows.len() == 1)
}

/// Records a failed attempt; the chunk is claimable again until `max_attempts`.
pub async fn fail(
    client: &Client,
    claim: &Claim,
    worker: &str,
    error: &str,
) -> Result<(), ChunkTableError> {
    transition(
        client,
        &Transition::of_chunks(
            &[Running],
            Failed,
            "last_error = $5, finished_at = clock_timestamp(), lease_until = NULL",
            THIS_ATTEMPT,
        ),
        &[
            &claim.table_name,
            &claim.chunk_no,
            &worker,
            &claim.attempts,
            &error,
        ],
        "recording a failed chunk",
    )
    .await?;
    Ok(())
}

/// Bulk mode: records a chunk as copied, in the transaction of its COPY (so the table
/// holds exactly the rows of chunks recorded copied), with old's checksum of the rows as
/// the copy read them when there is one. False when the chunk is no longer this
/// worker's: roll back.
pub async fn record_copied(
    tx: &Transaction<'_>,
    claim: &Claim,
    worker: &str,
    rows_copied: i64,
    copy_ms: i64,
    old_sum: Option<StreamSum>,
) -> Result<bool, ChunkTableError> {
    let (rows_old, checksum_old) = match old_sum {
        Some(s) => (Some(s.rows), Some(s.text())),
        None => (None, None),
    };
    let rows = transition(
        tx,
        &Transition::of_chunks(
            &[Running],
            Copied,
            "path = 'bulk', rows_copied = $5, rows_inserted = $5, copy_ms = $6, \
                  lease_until = NULL, rows_old = $7, checksum_old = $8",
            THIS_ATTEMPT,
        ),
        &[
            &claim.table_name,
            &claim.chunk_no,
            &worker,
            &claim.attempts,
            &rows_copied,
            &copy_ms,
            &rows_old,
            &checksum_old,
        ],
        "recording a copied chunk",
    )
    .await?;
    Ok(rows.len() == 1)
}

/// Scanning old: records every chunk of a scanned table as copied, with the rows and
/// old's checksum of each and its share of the scan's `copy_ms`, in the transaction that
/// committed the first loading session; false (roll back) unless every chunk is still
/// this worker's claim.
pub async fn record_scanned(
    tx: &Transaction<'_>,
    claims: &[Claim],
    worker: &str,
    sums: &[StreamSum],
    copy_ms: i64,
) -> Result<bool, ChunkTableError> {
    let Some(first) = claims.first() else {
        return Ok(true);
    };
    // The scan's time shared out by rows, so that the chunks' times add up to it.
    let total: i64 = sums.iter().map(|s| s.rows).sum::<i64>().max(1);
    let ms: Vec<i64> = sums.iter().map(|s| copy_ms * s.rows / total).collect();
    let chunk_nos: Vec<i32> = claims.iter().map(|c| c.chunk_no).collect();
    let attempts: Vec<i32> = claims.iter().map(|c| c.attempts).collect();
    let rows: Vec<i64> = sums.iter().map(|s| s.rows).collect();
    let checksums: Vec<String> = sums.iter().map(|s| s.text()).collect();
    let changed = transition(
        tx,
        &Transition {
            join: "unnest($2::int[], $3::int[], $4::bigint[], $5::text[], $7::bigint[]) \
                   AS u(chunk_no, attempts, rows, checksum, ms)",
            ..Transition::of_chunks(
                &[Running],
                Copied,
                "path = 'scan', rows_copied = u.rows, rows_inserted = u.rows, copy_ms = u.ms, \
                 lease_until = NULL, rows_old = u.rows, checksum_old = u.checksum",
                "c.table_name = $1 AND c.chunk_no = u.chunk_no \
                 AND c.attempts = u.attempts AND c.worker = $6",
            )
        },
        &[
            &first.table_name,
            &chunk_nos,
            &attempts,
            &rows,
            &checksums,
            &worker,
            &ms,
        ],
        "recording a scanned table's chunks",
    )
    .await?;
    Ok(changed.len() == claims.len())
}

/// Bulk mode: records a verified chunk (`done` or `unverified`); false when another
/// worker took the verification over.
pub async fn finish_verify(
    client: &Client,
    claim: &Claim,
    worker: &str,
    o: &ChunkOutcome,
) -> Result<bool, ChunkTableError> {
    let rows = transition(
        client,
        &Transition::of_chunks(
            &[Verifying],
            o.status,
            "rows_old = $4, rows_new = $5, checksum_old = $6, checksum_new = $7, \
                  rows_repaired = $8, verify_ms = $9, finished_at = clock_timestamp(), \
                  lease_until = NULL",
            THIS_VERIFICATION,
        ),
        &[
            &claim.table_name,
            &claim.chunk_no,
            &worker,
            &o.rows_old,
            &o.rows_new,
            &o.checksum_old,
            &o.checksum_new,
            &o.rows_repaired,
            &o.verify_ms,
        ],
        "recording a verified chunk",
    )
    .await?;
    Ok(rows.len() == 1)
}

/// Bulk mode: a chunk's verification did not end: it goes back to `copied` (its rows are
/// in, only the check is retried). With `drop_old_sum` (the one pass found it different
/// from old's stream checksum) that checksum is cleared, so the chunk is next checked
/// range by range in SQL once the table's key is back.
pub async fn back_to_copied(
    client: &Client,
    claim: &Claim,
    worker: &str,
    error: &str,
    drop_old_sum: bool,
) -> Result<(), ChunkTableError> {
    transition(
        client,
        &Transition::of_chunks(
            &[Verifying],
            Copied,
            "last_error = $4, lease_until = NULL, \
                  checksum_old = CASE WHEN $5 THEN NULL ELSE checksum_old END, \
                  rows_old = CASE WHEN $5 THEN NULL ELSE rows_old END",
            THIS_VERIFICATION,
        ),
        &[
            &claim.table_name,
            &claim.chunk_no,
            &worker,
            &error,
            &drop_old_sum,
        ],
        "returning a chunk to copied",
    )
    .await?;
    Ok(())
}
