//! The backfill's state on the new database, shared by every process working on a pair:
//! `_switchyard.backfill_tables` (one row per planned table), `_switchyard.backfill_chunks`
//! (one row per half-open key range: status, attempts, lease, rows, checksums of both
//! sides, timings, worker), `_switchyard.backfill_control` (pause and rate, changed while
//! running) and `_switchyard.backfill_deferred` (index and constraint definitions dropped
//! by `--defer-indexes`, so an interrupted run can restore them).
//!
//! Chunks are claimed with `FOR UPDATE SKIP LOCKED`, so processes on several machines can
//! share the work. A claimed chunk is leased; the claim also records the backend pid and
//! start time of the claiming process's control connection, so a chunk of a process that
//! died (its connection gone from `pg_stat_activity`) is taken over at once, and one of a
//! process that hangs is taken over when its lease runs out.

use std::time::Duration;
use switchyard_core::copy_hash::StreamSum;
use switchyard_core::key::{KeyRange, KeyText};
use tokio_postgres::Client;

/// A statement on the chunk table failed.
#[derive(Debug, thiserror::Error)]
#[error("{what} (chunk table on the new database)")]
pub struct ChunkTableError {
    pub what: &'static str,
    #[source]
    pub source: tokio_postgres::Error,
}

fn err(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> ChunkTableError {
    move |source| ChunkTableError { what, source }
}

/// Advisory lock key (xact-scoped) serialising schema creation and planning between
/// processes: "switchyard.backfill" as an int8.
const PLAN_LOCK: i64 = 0x5357_4246_494c_4c31;

const SCHEMA_SQL: &str = "
CREATE SCHEMA IF NOT EXISTS _switchyard;
CREATE TABLE IF NOT EXISTS _switchyard.backfill_tables (
    table_name text PRIMARY KEY,
    key_columns text[] NOT NULL,
    split text NOT NULL,
    chunk_rows bigint NOT NULL,
    chunks int NOT NULL,
    estimated_rows bigint NOT NULL,
    depends_on text[] NOT NULL DEFAULT '{}',
    planned_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS _switchyard.backfill_chunks (
    table_name text NOT NULL REFERENCES _switchyard.backfill_tables ON DELETE CASCADE,
    chunk_no int NOT NULL,
    lo text[],
    hi text[],
    status text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'running', 'copied', 'verifying', 'done', 'unverified', 'failed')),
    attempts int NOT NULL DEFAULT 0,
    worker text,
    worker_pid int,
    worker_backend_start timestamptz,
    lease_until timestamptz,
    path text,
    rows_copied bigint,
    rows_inserted bigint,
    rows_old bigint,
    rows_new bigint,
    checksum_old text,
    checksum_new text,
    rows_repaired bigint,
    started_at timestamptz,
    finished_at timestamptz,
    copy_ms bigint,
    verify_ms bigint,
    last_error text,
    PRIMARY KEY (table_name, chunk_no)
);
CREATE TABLE IF NOT EXISTS _switchyard.backfill_control (
    id int PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    paused boolean NOT NULL DEFAULT false,
    max_rows_per_sec bigint,
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO _switchyard.backfill_control (id) VALUES (1) ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS _switchyard.backfill_deferred (
    table_name text NOT NULL,
    object_name text NOT NULL,
    kind text NOT NULL,
    definition text NOT NULL,
    dropped_at timestamptz NOT NULL DEFAULT now(),
    restored_at timestamptz,
    PRIMARY KEY (table_name, object_name)
);
-- Bulk mode's statuses, on a chunk table created before they existed.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint
                   WHERE conrelid = '_switchyard.backfill_chunks'::regclass AND contype = 'c'
                     AND pg_catalog.pg_get_constraintdef(oid) LIKE '%verifying%') THEN
        ALTER TABLE _switchyard.backfill_chunks DROP CONSTRAINT IF EXISTS backfill_chunks_status_check;
        ALTER TABLE _switchyard.backfill_chunks ADD CONSTRAINT backfill_chunks_status_check
            CHECK (status IN ('pending', 'running', 'copied', 'verifying', 'done', 'unverified', 'failed'));
    END IF;
END $$;
";

/// Creates the schema and tables if they are missing (several processes may start at
/// once: serialised by an advisory lock, since `CREATE ... IF NOT EXISTS` races).
pub async fn ensure_schema(client: &mut Client) -> Result<(), ChunkTableError> {
    let tx = client
        .transaction()
        .await
        .map_err(err("starting a transaction"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PLAN_LOCK])
        .await
        .map_err(err("taking the planning lock"))?;
    tx.batch_execute(SCHEMA_SQL)
        .await
        .map_err(err("creating the backfill tables"))?;
    tx.commit()
        .await
        .map_err(err("committing the backfill tables"))
}

/// True when the chunk table exists (a dry run creates nothing).
pub async fn exists(client: &Client) -> Result<bool, ChunkTableError> {
    let row = client
        .query_one(
            "SELECT to_regclass('_switchyard.backfill_chunks') IS NOT NULL",
            &[],
        )
        .await
        .map_err(err("looking for the chunk table"))?;
    Ok(row.get(0))
}

/// One planned table, as stored.
#[derive(Debug, Clone)]
pub struct PlannedTable {
    pub table_name: String,
    pub key_columns: Vec<String>,
    pub split: &'static str,
    pub chunk_rows: i64,
    pub estimated_rows: i64,
    pub depends_on: Vec<String>,
    pub ranges: Vec<KeyRange>,
}

/// Starts the planning transaction: takes the planning lock and returns which of `tables`
/// (quoted names) are planned already. Insert the missing ones with [`insert_plan`] on the
/// same transaction, then commit.
pub async fn planned_tables(
    tx: &tokio_postgres::Transaction<'_>,
    tables: &[String],
) -> Result<Vec<String>, ChunkTableError> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PLAN_LOCK])
        .await
        .map_err(err("taking the planning lock"))?;
    let rows = tx
        .query(
            "SELECT table_name FROM _switchyard.backfill_tables WHERE table_name = ANY($1)",
            &[&tables],
        )
        .await
        .map_err(err("reading the planned tables"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Stores a table's plan and its chunks, all pending.
pub async fn insert_plan(
    tx: &tokio_postgres::Transaction<'_>,
    plan: &PlannedTable,
) -> Result<(), ChunkTableError> {
    tx.execute(
        "INSERT INTO _switchyard.backfill_tables \
         (table_name, key_columns, split, chunk_rows, chunks, estimated_rows, depends_on) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            &plan.table_name,
            &plan.key_columns,
            &plan.split,
            &plan.chunk_rows,
            &(plan.ranges.len() as i32),
            &plan.estimated_rows,
            &plan.depends_on,
        ],
    )
    .await
    .map_err(err("storing a table's plan"))?;
    // One statement per few thousand chunks: unnest of the bounds as text arrays would
    // need arrays of arrays with NULLs, which do not nest; JSON does.
    for (batch_no, batch) in plan.ranges.chunks(2000).enumerate() {
        let doc: Vec<serde_json::Value> = batch
            .iter()
            .enumerate()
            .map(|(i, r)| {
                serde_json::json!({
                    "n": (batch_no * 2000 + i) as i64,
                    "lo": r.lo,
                    "hi": r.hi,
                })
            })
            .collect();
        let text = serde_json::Value::Array(doc).to_string();
        tx.execute(
            "INSERT INTO _switchyard.backfill_chunks (table_name, chunk_no, lo, hi) \
             SELECT $1, (e->>'n')::int, \
                    CASE WHEN jsonb_typeof(e->'lo') = 'array' \
                         THEN ARRAY(SELECT x #>> '{}' FROM jsonb_array_elements(e->'lo') WITH ORDINALITY AS a(x, o) ORDER BY o) END, \
                    CASE WHEN jsonb_typeof(e->'hi') = 'array' \
                         THEN ARRAY(SELECT x #>> '{}' FROM jsonb_array_elements(e->'hi') WITH ORDINALITY AS a(x, o) ORDER BY o) END \
             FROM jsonb_array_elements($2::text::jsonb) AS e",
            &[&plan.table_name, &text],
        )
        .await
        .map_err(err("storing a table's chunks"))?;
    }
    Ok(())
}

/// A chunk claimed by a worker.
#[derive(Debug, Clone)]
pub struct Claim {
    pub table_name: String,
    pub chunk_no: i32,
    pub range: KeyRange,
    pub attempts: i32,
}

/// A claim from the first five columns a claim statement returns (table, chunk number,
/// bounds, attempts).
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

/// A chunk `c` that a worker may claim: pending, failed with attempts left (`$2`), or
/// running under a lease that ran out or a worker that is gone.
macro_rules! claimable {
    ($c:literal) => {
        concat!(
            "(",
            $c,
            ".status = 'pending'
           OR (",
            $c,
            ".status = 'failed' AND ",
            $c,
            ".attempts < $2)
           OR (",
            $c,
            ".status = 'running'
               AND (",
            $c,
            ".lease_until < now()
                    OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a
                                   WHERE a.pid = ",
            $c,
            ".worker_pid
                                     AND a.backend_start = ",
            $c,
            ".worker_backend_start))))"
        )
    };
}

/// The claim's `SET`: `$3` the worker, `$4` the lease in milliseconds.
macro_rules! running_set {
    () => {
        "SET status = 'running', attempts = c.attempts + 1, worker = $3,
    worker_pid = pg_backend_pid(),
    worker_backend_start = (SELECT backend_start FROM pg_catalog.pg_stat_activity
                            WHERE pid = pg_backend_pid()),
    lease_until = now() + $4 * interval '1 millisecond',
    started_at = clock_timestamp(), finished_at = NULL, last_error = NULL
"
    };
}

const CLAIM_SQL: &str = concat!(
    "
WITH next AS (
    SELECT c.table_name, c.chunk_no
    FROM _switchyard.backfill_chunks c
    JOIN _switchyard.backfill_tables t USING (table_name)
    WHERE c.table_name = ANY($1)
      AND ",
    claimable!("c"),
    "
      AND NOT EXISTS (SELECT 1 FROM _switchyard.backfill_chunks p
                      WHERE p.table_name = ANY(t.depends_on)
                        AND p.status NOT IN ('done', 'unverified'))
    ORDER BY array_position($1, c.table_name), c.chunk_no
    LIMIT 1
    FOR UPDATE OF c SKIP LOCKED
)
UPDATE _switchyard.backfill_chunks c
",
    running_set!(),
    "FROM next
WHERE c.table_name = next.table_name AND c.chunk_no = next.chunk_no
RETURNING c.table_name, c.chunk_no, c.lo, c.hi, c.attempts"
);

const SCAN_CLAIM_SQL: &str = concat!(
    "
WITH cand AS (
    SELECT t.table_name
    FROM _switchyard.backfill_tables t
    WHERE t.table_name = ANY($1)
      AND EXISTS (SELECT 1 FROM _switchyard.backfill_deferred d
                  WHERE d.table_name = t.table_name AND d.kind = 'primary-key'
                    AND d.restored_at IS NULL)
      AND NOT EXISTS (SELECT 1 FROM _switchyard.backfill_chunks p
                      WHERE p.table_name = ANY(t.depends_on)
                        AND p.status NOT IN ('done', 'unverified'))
      AND NOT EXISTS (SELECT 1 FROM _switchyard.backfill_chunks o
                      WHERE o.table_name = t.table_name AND NOT ",
    claimable!("o"),
    ")
    ORDER BY array_position($1, t.table_name)
    LIMIT 1
),
locked AS (
    SELECT c.table_name, c.chunk_no
    FROM _switchyard.backfill_chunks c JOIN cand USING (table_name)
    WHERE ",
    claimable!("c"),
    "
    FOR UPDATE OF c SKIP LOCKED
)
UPDATE _switchyard.backfill_chunks c
",
    running_set!(),
    "FROM locked
WHERE c.table_name = locked.table_name AND c.chunk_no = locked.chunk_no
  AND (SELECT count(*) FROM locked)
      = (SELECT count(*) FROM _switchyard.backfill_chunks a JOIN cand USING (table_name))
RETURNING c.table_name, c.chunk_no, c.lo, c.hi, c.attempts"
);

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
    let row = client
        .query_opt(CLAIM_SQL, &[&tables, &max_attempts, &worker, &lease_ms])
        .await
        .map_err(err("claiming a chunk"))?;
    Ok(row.as_ref().map(claim_of))
}

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
    let rows = client
        .query(
            SCAN_CLAIM_SQL,
            &[&tables, &max_attempts, &worker, &lease_ms],
        )
        .await
        .map_err(err("claiming a table's chunks to scan"))?;
    let mut claims: Vec<Claim> = rows.iter().map(claim_of).collect();
    claims.sort_by_key(|c| c.chunk_no);
    Ok(claims)
}

/// Scanning old: records every chunk of a scanned table as copied, with the rows and
/// old's checksum of each and its share of the scan's `copy_ms`, in the transaction that committed the first loading session;
/// false (roll back) unless every chunk is still this worker's claim.
pub async fn record_scanned(
    tx: &tokio_postgres::Transaction<'_>,
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
    let n = tx
        .execute(
            "UPDATE _switchyard.backfill_chunks c SET status = 'copied', path = 'scan', \
             rows_copied = u.rows, rows_inserted = u.rows, copy_ms = u.ms, lease_until = NULL, \
             rows_old = u.rows, checksum_old = u.checksum \
             FROM unnest($2::int[], $3::int[], $4::bigint[], $5::text[], $7::bigint[]) \
                  AS u(chunk_no, attempts, rows, checksum, ms) \
             WHERE c.table_name = $1 AND c.chunk_no = u.chunk_no AND c.attempts = u.attempts \
               AND c.worker = $6 AND c.status = 'running'",
            &[
                &first.table_name,
                &chunk_nos,
                &attempts,
                &rows,
                &checksums,
                &worker,
                &ms,
            ],
        )
        .await
        .map_err(err("recording a scanned table's chunks"))?;
    Ok(n == claims.len() as u64)
}

/// Renews the lease of every chunk this process (its control connection) holds.
pub async fn renew_leases(client: &Client, lease: Duration) -> Result<u64, ChunkTableError> {
    let lease_ms = lease.as_millis() as f64;
    client
        .execute(
            "UPDATE _switchyard.backfill_chunks SET lease_until = now() + $1 * interval '1 millisecond' \
             WHERE status IN ('running', 'verifying') AND worker_pid = pg_backend_pid()",
            &[&lease_ms],
        )
        .await
        .map_err(err("renewing leases"))
}

/// What a worker found out about a chunk.
#[derive(Debug, Clone, Default)]
pub struct ChunkOutcome {
    /// `done` (checksums equal), `unverified` (still different after the repair rounds,
    /// under heavy concurrent writes).
    pub status: &'static str,
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

/// Records a finished chunk; false when the chunk is no longer this worker's (its lease
/// ran out and someone else took it over: their result counts).
pub async fn finish(
    client: &Client,
    claim: &Claim,
    worker: &str,
    o: &ChunkOutcome,
) -> Result<bool, ChunkTableError> {
    let n = client
        .execute(
            "UPDATE _switchyard.backfill_chunks SET status = $5, path = $6, rows_copied = $7, \
             rows_inserted = $8, rows_old = $9, rows_new = $10, checksum_old = $11, \
             checksum_new = $12, rows_repaired = $13, copy_ms = $14, verify_ms = $15, \
             finished_at = clock_timestamp(), lease_until = NULL \
             WHERE table_name = $1 AND chunk_no = $2 AND worker = $3 AND attempts = $4 \
               AND status = 'running'",
            &[
                &claim.table_name,
                &claim.chunk_no,
                &worker,
                &claim.attempts,
                &o.status,
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
        )
        .await
        .map_err(err("recording a finished chunk"))?;
    Ok(n == 1)
}

/// The SET clause of both verification claims: the chunk becomes `verifying`, held by
/// worker `$2` on this control connection, leased for `$3` milliseconds.
macro_rules! verifying_set {
    () => {
        "SET status = 'verifying', worker = $2,
    worker_pid = pg_backend_pid(),
    worker_backend_start = (SELECT backend_start FROM pg_catalog.pg_stat_activity
                            WHERE pid = pg_backend_pid()),
    lease_until = now() + $3 * interval '1 millisecond', last_error = NULL
"
    };
}

const VERIFY_CLAIM_SQL: &str = concat!(
    "
WITH next AS (
    SELECT c.table_name, c.chunk_no
    FROM _switchyard.backfill_chunks c
    WHERE c.table_name = ANY($1)
      AND (c.status = 'copied'
           OR (c.status = 'verifying'
               AND (c.lease_until < now()
                    OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a
                                   WHERE a.pid = c.worker_pid
                                     AND a.backend_start = c.worker_backend_start))))
      AND NOT EXISTS (SELECT 1 FROM _switchyard.backfill_deferred d
                      WHERE d.table_name = c.table_name AND d.restored_at IS NULL)
    ORDER BY array_position($1, c.table_name), c.chunk_no
    LIMIT 1
    FOR UPDATE OF c SKIP LOCKED
)
UPDATE _switchyard.backfill_chunks c
",
    verifying_set!(),
    "FROM next
WHERE c.table_name = next.table_name AND c.chunk_no = next.chunk_no
RETURNING c.table_name, c.chunk_no, c.lo, c.hi, c.attempts"
);

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
    let row = client
        .query_opt(VERIFY_CLAIM_SQL, &[&tables, &worker, &lease_ms])
        .await
        .map_err(err("claiming a chunk to verify"))?;
    Ok(row.as_ref().map(claim_of))
}

/// Bulk mode: records a chunk as copied, in the transaction of its COPY (so the table
/// holds exactly the rows of chunks recorded copied), with old's checksum of the rows as
/// the copy read them when there is one. False when the chunk is no longer this
/// worker's: roll back.
pub async fn record_copied(
    tx: &tokio_postgres::Transaction<'_>,
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
    let n = tx
        .execute(
            "UPDATE _switchyard.backfill_chunks SET status = 'copied', path = 'bulk', \
             rows_copied = $5, rows_inserted = $5, copy_ms = $6, lease_until = NULL, \
             rows_old = $7, checksum_old = $8 \
             WHERE table_name = $1 AND chunk_no = $2 AND worker = $3 AND attempts = $4 \
               AND status = 'running'",
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
        )
        .await
        .map_err(err("recording a copied chunk"))?;
    Ok(n == 1)
}

const PASS_CLAIM_SQL: &str = concat!(
    "
WITH t AS (
    SELECT c.table_name
    FROM _switchyard.backfill_chunks c
    WHERE c.table_name = ANY($1) AND c.status = 'copied' AND c.checksum_old LIKE 'xxh3:%'
      AND NOT EXISTS (SELECT 1 FROM _switchyard.backfill_chunks o
                      WHERE o.table_name = c.table_name
                        AND o.status IN ('pending', 'running', 'failed'))
    ORDER BY array_position($1, c.table_name)
    LIMIT 1
)
UPDATE _switchyard.backfill_chunks c
",
    verifying_set!(),
    "FROM t
WHERE c.table_name = t.table_name AND c.status = 'copied' AND c.checksum_old LIKE 'xxh3:%'
RETURNING c.table_name, c.chunk_no, c.lo, c.hi, c.attempts, c.rows_old, c.checksum_old"
);

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
    let rows = client
        .query(PASS_CLAIM_SQL, &[&tables, &worker, &lease_ms])
        .await
        .map_err(err("claiming a table's chunks to verify in one pass"))?;
    Ok(rows
        .iter()
        .map(|r| PassChunk {
            claim: claim_of(r),
            rows_old: r.get::<_, Option<i64>>(5).unwrap_or(-1),
            checksum_old: r.get(6),
        })
        .collect())
}

/// Bulk mode: records a verified chunk (`done` or `unverified`); false when another
/// worker took the verification over.
pub async fn finish_verify(
    client: &Client,
    claim: &Claim,
    worker: &str,
    o: &ChunkOutcome,
) -> Result<bool, ChunkTableError> {
    let n = client
        .execute(
            "UPDATE _switchyard.backfill_chunks SET status = $4, rows_old = $5, rows_new = $6, \
             checksum_old = $7, checksum_new = $8, rows_repaired = $9, verify_ms = $10, \
             finished_at = clock_timestamp(), lease_until = NULL \
             WHERE table_name = $1 AND chunk_no = $2 AND worker = $3 AND status = 'verifying'",
            &[
                &claim.table_name,
                &claim.chunk_no,
                &worker,
                &o.status,
                &o.rows_old,
                &o.rows_new,
                &o.checksum_old,
                &o.checksum_new,
                &o.rows_repaired,
                &o.verify_ms,
            ],
        )
        .await
        .map_err(err("recording a verified chunk"))?;
    Ok(n == 1)
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
    client
        .execute(
            "UPDATE _switchyard.backfill_chunks SET status = 'copied', last_error = $4, \
             lease_until = NULL, \
             checksum_old = CASE WHEN $5 THEN NULL ELSE checksum_old END, \
             rows_old = CASE WHEN $5 THEN NULL ELSE rows_old END \
             WHERE table_name = $1 AND chunk_no = $2 AND worker = $3 AND status = 'verifying'",
            &[
                &claim.table_name,
                &claim.chunk_no,
                &worker,
                &error,
                &drop_old_sum,
            ],
        )
        .await
        .map_err(err("returning a chunk to copied"))?;
    Ok(())
}

/// Tables of `tables` whose deferred objects wait to be rebuilt and none of whose chunks
/// still waits to be copied (bulk mode's second phase may start).
pub async fn ready_to_rebuild(
    client: &Client,
    tables: &[String],
) -> Result<Vec<String>, ChunkTableError> {
    let rows = client
        .query(
            "SELECT DISTINCT d.table_name FROM _switchyard.backfill_deferred d \
             WHERE d.restored_at IS NULL AND d.table_name = ANY($1) \
               AND NOT EXISTS (SELECT 1 FROM _switchyard.backfill_chunks c \
                               WHERE c.table_name = d.table_name \
                                 AND c.status IN ('pending', 'running', 'failed'))",
            &[&tables],
        )
        .await
        .map_err(err("looking for tables to rebuild"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Bulk mode: true when `table`'s primary key is dropped for loading (its chunks are
/// copied bare and recorded in their COPY's transaction).
pub async fn bulk_loading(client: &Client, table: &str) -> Result<bool, ChunkTableError> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM _switchyard.backfill_deferred \
                            WHERE table_name = $1 AND kind = 'primary-key' AND restored_at IS NULL)",
            &[&table],
        )
        .await
        .map_err(err("reading a table's load mode"))?;
    Ok(row.get(0))
}

/// Records a failed attempt; the chunk is claimable again until `max_attempts`.
pub async fn fail(
    client: &Client,
    claim: &Claim,
    worker: &str,
    error: &str,
) -> Result<(), ChunkTableError> {
    client
        .execute(
            "UPDATE _switchyard.backfill_chunks SET status = 'failed', last_error = $5, \
             finished_at = clock_timestamp(), lease_until = NULL \
             WHERE table_name = $1 AND chunk_no = $2 AND worker = $3 AND attempts = $4 \
               AND status = 'running'",
            &[
                &claim.table_name,
                &claim.chunk_no,
                &worker,
                &claim.attempts,
                &error,
            ],
        )
        .await
        .map_err(err("recording a failed chunk"))?;
    Ok(())
}

/// Chunks of `tables` that may still need work: pending, running (here or elsewhere),
/// failed with attempts left, or (bulk mode) copied and not yet verified. Returns (open,
/// running or verifying).
pub async fn open_chunks(
    client: &Client,
    tables: &[String],
    max_attempts: i32,
) -> Result<(i64, i64), ChunkTableError> {
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE status IN ('pending', 'running', 'copied', 'verifying') \
                                      OR (status = 'failed' AND attempts < $2)), \
                    count(*) FILTER (WHERE status IN ('running', 'verifying')) \
             FROM _switchyard.backfill_chunks WHERE table_name = ANY($1)",
            &[&tables, &max_attempts],
        )
        .await
        .map_err(err("counting open chunks"))?;
    Ok((row.get(0), row.get(1)))
}

/// Pause flag and rate override of the control row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Control {
    pub paused: bool,
    pub max_rows_per_sec: Option<i64>,
}

/// Reads the control row.
pub async fn read_control(client: &Client) -> Result<Control, ChunkTableError> {
    let row = client
        .query_opt(
            "SELECT paused, max_rows_per_sec FROM _switchyard.backfill_control WHERE id = 1",
            &[],
        )
        .await
        .map_err(err("reading the control row"))?;
    Ok(row
        .map(|r| Control {
            paused: r.get(0),
            max_rows_per_sec: r.get(1),
        })
        .unwrap_or_default())
}

/// Sets the pause flag of the control row (every process on the pair follows within a
/// second).
pub async fn set_paused(client: &Client, paused: bool) -> Result<(), ChunkTableError> {
    client
        .execute(
            "UPDATE _switchyard.backfill_control SET paused = $1, updated_at = now() WHERE id = 1",
            &[&paused],
        )
        .await
        .map_err(err("setting the pause flag"))?;
    Ok(())
}

/// Per-table totals from the chunk table (whatever process did the work).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TableTotals {
    pub table: String,
    pub chunks: i64,
    pub done: i64,
    pub unverified: i64,
    pub failed: i64,
    pub open: i64,
    pub rows_copied: i64,
    pub rows_old: i64,
    pub rows_new: i64,
    pub rows_repaired: i64,
    pub copy_seconds: f64,
    pub verify_seconds: f64,
}

/// Totals of `tables` (quoted names).
pub async fn totals(
    client: &Client,
    tables: &[String],
) -> Result<Vec<TableTotals>, ChunkTableError> {
    let rows = client
        .query(
            "SELECT table_name, count(*), count(*) FILTER (WHERE status = 'done'), \
                    count(*) FILTER (WHERE status = 'unverified'), \
                    count(*) FILTER (WHERE status = 'failed'), \
                    count(*) FILTER (WHERE status IN ('pending', 'running', 'copied', 'verifying')), \
                    coalesce(sum(rows_copied), 0)::int8, coalesce(sum(rows_old), 0)::int8, \
                    coalesce(sum(rows_new), 0)::int8, coalesce(sum(rows_repaired), 0)::int8, \
                    coalesce(sum(copy_ms), 0)::float8 / 1000, coalesce(sum(verify_ms), 0)::float8 / 1000 \
             FROM _switchyard.backfill_chunks WHERE table_name = ANY($1) \
             GROUP BY table_name ORDER BY array_position($1, table_name)",
            &[&tables],
        )
        .await
        .map_err(err("reading the totals"))?;
    Ok(rows
        .iter()
        .map(|r| TableTotals {
            table: r.get(0),
            chunks: r.get(1),
            done: r.get(2),
            unverified: r.get(3),
            failed: r.get(4),
            open: r.get(5),
            rows_copied: r.get(6),
            rows_old: r.get(7),
            rows_new: r.get(8),
            rows_repaired: r.get(9),
            copy_seconds: r.get(10),
            verify_seconds: r.get(11),
        })
        .collect())
}
