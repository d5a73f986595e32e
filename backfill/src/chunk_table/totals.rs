//! Where the work stands, read from the chunk table: what is left, which tables may be
//! rebuilt, and the totals reported at the end (whatever process did the work).

use super::status::{sql_set, ChunkStatus, HELD, OPEN, UNCOPIED};
use super::{err, ChunkTableError};
use tokio_postgres::Client;
use ChunkStatus::*;

/// Tables of `tables` whose deferred objects wait to be rebuilt and none of whose chunks
/// still waits to be copied (bulk mode's second phase may start).
pub async fn ready_to_rebuild(
    client: &Client,
    tables: &[String],
) -> Result<Vec<String>, ChunkTableError> {
    let rows = client
        .query(
            &format!(
                "SELECT DISTINCT d.table_name FROM _switchyard.backfill_deferred d \
                 WHERE d.restored_at IS NULL AND d.table_name = ANY($1) \
                   AND NOT EXISTS (SELECT 1 FROM _switchyard.backfill_chunks c \
                                   WHERE c.table_name = d.table_name \
                                     AND c.status IN {})",
                sql_set(UNCOPIED)
            ),
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
            &format!(
                "SELECT count(*) FILTER (WHERE status IN {open} \
                                          OR (status = {failed} AND attempts < $2)), \
                        count(*) FILTER (WHERE status IN {held}) \
                 FROM _switchyard.backfill_chunks WHERE table_name = ANY($1)",
                open = sql_set(OPEN),
                failed = Failed.sql(),
                held = sql_set(HELD),
            ),
            &[&tables, &max_attempts],
        )
        .await
        .map_err(err("counting open chunks"))?;
    Ok((row.get(0), row.get(1)))
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
            &format!(
                "SELECT table_name, count(*), count(*) FILTER (WHERE status = {done}), \
                        count(*) FILTER (WHERE status = {unverified}), \
                        count(*) FILTER (WHERE status = {failed}), \
                        count(*) FILTER (WHERE status IN {open}), \
                        coalesce(sum(rows_copied), 0)::int8, coalesce(sum(rows_old), 0)::int8, \
                        coalesce(sum(rows_new), 0)::int8, coalesce(sum(rows_repaired), 0)::int8, \
                        coalesce(sum(copy_ms), 0)::float8 / 1000, coalesce(sum(verify_ms), 0)::float8 / 1000 \
                 FROM _switchyard.backfill_chunks WHERE table_name = ANY($1) \
                 GROUP BY table_name ORDER BY array_position($1, table_name)",
                done = Done.sql(),
                unverified = Unverified.sql(),
                failed = Failed.sql(),
                open = sql_set(OPEN),
            ),
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
