//! Claiming chunks: `FOR UPDATE SKIP LOCKED`, so that processes on several machines share
//! the work, and a lease on each claim with the backend pid and start time of the
//! claiming process's control connection, so that the chunk of a process that died (its
//! connection gone from `pg_stat_activity`) is taken over at once and that of one that
//! hangs when the lease runs out.

use super::status::{sql_set, ChunkStatus, FINISHED, HELD, UNCOPIED};
use super::transition::{transition, Transition};
use super::{err, ChunkTableError};
use std::sync::LazyLock;
use std::time::Duration;
use switchyard_core::key::{KeyRange, KeyText};
use tokio_postgres::Client;
use ChunkStatus::*;

/// A chunk claimed by a worker.
#[derive(Debug, Clone)]
pub struct Claim {
    pub table_name: String,
    pub chunk_no: i32,
    pub range: KeyRange,
    pub attempts: i32,
}

/// What every claim returns, read by [`claim_of`].
const CLAIM_RETURNING: &str = "c.table_name, c.chunk_no, c.lo, c.hi, c.attempts";

fn claim_of(r: &tokio_postgres::Row) -> Claim {
    Claim {
        table_name: r.get(0),
        chunk_no: r.get(1),
        range: KeyRange {
            lo: r.get::<_, Option<KeyText>>(2),
            hi: r.get::<_, Option<KeyText>>(3),
        },
        attempts: r.get(4),
    }
}

/// The chunk `c` is in `held` under a lease that ran out, or a worker that is gone.
fn abandoned(c: &str, held: ChunkStatus) -> String {
    format!(
        "({c}.status = {held}
               AND ({c}.lease_until < now()
                    OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a
                                   WHERE a.pid = {c}.worker_pid
                                     AND a.backend_start = {c}.worker_backend_start)))",
        held = held.sql(),
    )
}

/// A chunk `c` that a worker may claim to copy: pending, failed with attempts left
/// (`$2`), or running abandoned.
fn claimable(c: &str) -> String {
    format!(
        "({c}.status = {pending} OR ({c}.status = {failed} AND {c}.attempts < $2) OR {running})",
        pending = Pending.sql(),
        failed = Failed.sql(),
        running = abandoned(c, Running),
    )
}

/// Chunks a copy claim may take.
const CLAIMED_FROM: &[ChunkStatus] = &[Pending, Failed, Running];

/// No table that `t` depends on has a chunk still unfinished.
fn parents_finished() -> String {
    format!(
        "NOT EXISTS (SELECT 1 FROM _switchyard.backfill_chunks p
                      WHERE p.table_name = ANY(t.depends_on)
                        AND p.status NOT IN {})",
        sql_set(FINISHED)
    )
}

/// This control connection holds the chunk, leased for `$lease` milliseconds.
fn held_here(lease: &str) -> String {
    format!(
        "worker_pid = pg_backend_pid(),
    worker_backend_start = (SELECT backend_start FROM pg_catalog.pg_stat_activity
                            WHERE pid = pg_backend_pid()),
    lease_until = now() + {lease} * interval '1 millisecond'"
    )
}

/// The copy claims' `SET`: `$3` the worker, `$4` the lease in milliseconds.
static RUNNING_SET: LazyLock<String> = LazyLock::new(|| {
    format!(
        "attempts = c.attempts + 1, worker = $3, {},
    started_at = clock_timestamp(), finished_at = NULL, last_error = NULL",
        held_here("$4")
    )
});

static CLAIM_WITH: LazyLock<String> = LazyLock::new(|| {
    format!(
        "next AS (
    SELECT c.table_name, c.chunk_no
    FROM _switchyard.backfill_chunks c
    JOIN _switchyard.backfill_tables t USING (table_name)
    WHERE c.table_name = ANY($1)
      AND {claimable}
      AND {parents}
    ORDER BY array_position($1, c.table_name), c.chunk_no
    LIMIT 1
    FOR UPDATE OF c SKIP LOCKED
)",
        claimable = claimable("c"),
        parents = parents_finished(),
    )
});

/// A copy claim: the chunks `with` chooses (as `join`, matched by `filter`) become this
/// worker's, running, with one attempt more.
fn running<'a>(with: &'a str, join: &'a str, filter: &'a str) -> Transition<'a> {
    Transition {
        from: CLAIMED_FROM,
        to: Running,
        with,
        set: &RUNNING_SET,
        join,
        filter,
        returning: CLAIM_RETURNING,
    }
}

/// The chunk a claim's `next` query chose.
const NEXT_CHUNK: &str = "c.table_name = next.table_name AND c.chunk_no = next.chunk_no";

/// Claims the next chunk of `tables` (quoted names, in load order) for `worker`; `None`
/// when nothing is claimable now. Run on the process's control connection: its backend
/// pid marks the claim as alive.
pub async fn claim(
    client: &Client,
    tables: &[String],
    max_attempts: i32,
    worker: &str,
    lease: Duration,
) -> Result<Option<Claim>, ChunkTableError> {
    let lease_ms = lease.as_millis() as f64;
    let rows = transition(
        client,
        &running(&CLAIM_WITH, "next", NEXT_CHUNK),
        &[&tables, &max_attempts, &worker, &lease_ms],
        "claiming a chunk",
    )
    .await?;
    Ok(rows.first().map(claim_of))
}

static SCAN_CLAIM_WITH: LazyLock<String> = LazyLock::new(|| {
    format!(
        "cand AS (
    SELECT t.table_name
    FROM _switchyard.backfill_tables t
    WHERE t.table_name = ANY($1)
      AND EXISTS (SELECT 1 FROM _switchyard.backfill_deferred d
                  WHERE d.table_name = t.table_name AND d.kind = 'primary-key'
                    AND d.restored_at IS NULL)
      AND {parents}
      AND NOT EXISTS (SELECT 1 FROM _switchyard.backfill_chunks o
                      WHERE o.table_name = t.table_name AND NOT {claimable_o})
    ORDER BY array_position($1, t.table_name)
    LIMIT 1
),
locked AS (
    SELECT c.table_name, c.chunk_no
    FROM _switchyard.backfill_chunks c JOIN cand USING (table_name)
    WHERE {claimable_c}
    FOR UPDATE OF c SKIP LOCKED
)",
        parents = parents_finished(),
        claimable_o = claimable("o"),
        claimable_c = claimable("c"),
    )
});

/// Scanning old (bulk mode): claims every chunk of the first of `tables` that is
/// bulk-loading and none of whose chunks is copied, done or held by a live worker, in
/// one statement (all or none: a chunk another worker locks or claims meanwhile leaves
/// the table to the chunk-by-chunk claim). Empty when no table qualifies.
pub async fn claim_scan(
    client: &Client,
    tables: &[String],
    max_attempts: i32,
    worker: &str,
    lease: Duration,
) -> Result<Vec<Claim>, ChunkTableError> {
    let lease_ms = lease.as_millis() as f64;
    let rows = transition(
        client,
        &running(
            &SCAN_CLAIM_WITH,
            "locked",
            "c.table_name = locked.table_name AND c.chunk_no = locked.chunk_no
  AND (SELECT count(*) FROM locked)
      = (SELECT count(*) FROM _switchyard.backfill_chunks a JOIN cand USING (table_name))",
        ),
        &[&tables, &max_attempts, &worker, &lease_ms],
        "claiming a table's chunks to scan",
    )
    .await?;
    let mut claims: Vec<Claim> = rows.iter().map(claim_of).collect();
    claims.sort_by_key(|c| c.chunk_no);
    Ok(claims)
}

/// The verification claims' `SET`: held by worker `$2`, leased for `$3` milliseconds.
static VERIFYING_SET: LazyLock<String> =
    LazyLock::new(|| format!("worker = $2, {}, last_error = NULL", held_here("$3")));

static VERIFY_CLAIM_WITH: LazyLock<String> = LazyLock::new(|| {
    format!(
        "next AS (
    SELECT c.table_name, c.chunk_no
    FROM _switchyard.backfill_chunks c
    WHERE c.table_name = ANY($1)
      AND (c.status = {copied} OR {verifying})
      AND NOT EXISTS (SELECT 1 FROM _switchyard.backfill_deferred d
                      WHERE d.table_name = c.table_name AND d.restored_at IS NULL)
    ORDER BY array_position($1, c.table_name), c.chunk_no
    LIMIT 1
    FOR UPDATE OF c SKIP LOCKED
)",
        copied = Copied.sql(),
        verifying = abandoned("c", Verifying),
    )
});

/// Bulk mode: claims a chunk that was copied and waits for its verification, once its
/// table's indexes are rebuilt (or one whose verifier died or hung). Attempts are not
/// counted: the copy is not repeated. `None` when nothing is claimable now.
pub async fn claim_verify(
    client: &Client,
    tables: &[String],
    worker: &str,
    lease: Duration,
) -> Result<Option<Claim>, ChunkTableError> {
    let lease_ms = lease.as_millis() as f64;
    let rows = transition(
        client,
        &Transition {
            from: &[Copied, Verifying],
            to: Verifying,
            with: &VERIFY_CLAIM_WITH,
            set: &VERIFYING_SET,
            join: "next",
            filter: NEXT_CHUNK,
            returning: CLAIM_RETURNING,
        },
        &[&tables, &worker, &lease_ms],
        "claiming a chunk to verify",
    )
    .await?;
    Ok(rows.first().map(claim_of))
}

/// Chunks copied with old's stream checksum (see `table_pass`).
const STREAM_SUMMED: &str = "c.checksum_old LIKE 'xxh3:%'";

static PASS_CLAIM_WITH: LazyLock<String> = LazyLock::new(|| {
    format!(
        "t AS (
    SELECT c.table_name
    FROM _switchyard.backfill_chunks c
    WHERE c.table_name = ANY($1) AND c.status = {copied} AND {STREAM_SUMMED}
      AND NOT EXISTS (SELECT 1 FROM _switchyard.backfill_chunks o
                      WHERE o.table_name = c.table_name
                        AND o.status IN {uncopied})
    ORDER BY array_position($1, c.table_name)
    LIMIT 1
)",
        copied = Copied.sql(),
        uncopied = sql_set(UNCOPIED),
    )
});

/// A chunk claimed for a table pass, with old's checksum recorded at its copy.
#[derive(Debug, Clone)]
pub struct PassChunk {
    pub claim: Claim,
    pub rows_old: i64,
    pub checksum_old: String,
}

/// Bulk mode: claims, for one table whose chunks are all copied, every copied chunk that
/// carries old's stream checksum (see `table_pass`). Empty when no table is ready.
pub async fn claim_pass(
    client: &Client,
    tables: &[String],
    worker: &str,
    lease: Duration,
) -> Result<Vec<PassChunk>, ChunkTableError> {
    let lease_ms = lease.as_millis() as f64;
    let rows = transition(
        client,
        &Transition {
            from: &[Copied],
            to: Verifying,
            with: &PASS_CLAIM_WITH,
            set: &VERIFYING_SET,
            join: "t",
            filter: &format!("c.table_name = t.table_name AND {STREAM_SUMMED}"),
            returning:
                "c.table_name, c.chunk_no, c.lo, c.hi, c.attempts, c.rows_old, c.checksum_old",
        },
        &[&tables, &worker, &lease_ms],
        "claiming a table's chunks to verify in one pass",
    )
    .await?;
    Ok(rows
        .iter()
        .map(|r| PassChunk {
            claim: claim_of(r),
            rows_old: r.get::<_, Option<i64>>(5).unwrap_or(-1),
            checksum_old: r.get(6),
        })
        .collect())
}

/// Renews the lease of every chunk this process (its control connection) holds.
pub async fn renew_leases(client: &Client, lease: Duration) -> Result<u64, ChunkTableError> {
    let lease_ms = lease.as_millis() as f64;
    client
        .execute(
            &format!(
                "UPDATE _switchyard.backfill_chunks \
                 SET lease_until = now() + $1 * interval '1 millisecond' \
                 WHERE status IN {} AND worker_pid = pg_backend_pid()",
                sql_set(HELD)
            ),
            &[&lease_ms],
        )
        .await
        .map_err(err("renewing leases"))
}
