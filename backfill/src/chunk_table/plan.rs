//! Storing the plan: one row per table and one per chunk, all pending, written once by
//! the first process under the planning lock.

use super::schema::PLAN_LOCK;
use super::{err, ChunkTableError};
use switchyard_core::key::KeyRange;
use tokio_postgres::Transaction;

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
    tx: &Transaction<'_>,
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

/// Stores a table's plan and its chunks, all pending (the column's default: a plan
/// inserts, it changes no state).
pub async fn insert_plan(tx: &Transaction<'_>, plan: &PlannedTable) -> Result<(), ChunkTableError> {
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
