//! The four tables of the backfill's state on new, created by whichever process comes
//! first.

use super::status::{sql_set, ChunkStatus};
use super::{err, ChunkTableError};
use tokio_postgres::Client;

/// Advisory lock key (xact-scoped) serialising schema creation and planning between
/// processes: "switchyard.backfill" as an int8.
pub(crate) const PLAN_LOCK: i64 = 0x5357_4246_494c_4c31;

/// The tables, and on a chunk table created before bulk mode the constraint that admits
/// its statuses (the constraint text is the enum's, so an older table is recognised by
/// a status it lacks).
fn schema_sql() -> String {
    let statuses = sql_set(&ChunkStatus::ALL);
    let pending = ChunkStatus::Pending.sql();
    let newest = ChunkStatus::Verifying.as_str();
    format!(
        "
CREATE SCHEMA IF NOT EXISTS _switchyard;
CREATE TABLE IF NOT EXISTS _switchyard.backfill_tables (
    table_name text PRIMARY KEY,
    key_columns text[] NOT NULL,
    split text NOT NULL,
    chunk_rows bigint NOT NULL,
    chunks int NOT NULL,
    estimated_rows bigint NOT NULL,
    depends_on text[] NOT NULL DEFAULT '{{}}',
    planned_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS _switchyard.backfill_chunks (
    table_name text NOT NULL REFERENCES _switchyard.backfill_tables ON DELETE CASCADE,
    chunk_no int NOT NULL,
    lo text[],
    hi text[],
    status text NOT NULL DEFAULT {pending}
        CHECK (status IN {statuses}),
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
                     AND pg_catalog.pg_get_constraintdef(oid) LIKE '%{newest}%') THEN
        ALTER TABLE _switchyard.backfill_chunks DROP CONSTRAINT IF EXISTS backfill_chunks_status_check;
        ALTER TABLE _switchyard.backfill_chunks ADD CONSTRAINT backfill_chunks_status_check
            CHECK (status IN {statuses});
    END IF;
END $$;
"
    )
}

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
    tx.batch_execute(&schema_sql())
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

#[cfg(test)]
mod tests {
    use super::schema_sql;

    /// Existing databases hold this constraint as written; a different text would not
    /// break them, but the statuses stored in them must all still be allowed.
    #[test]
    fn the_status_constraint_is_the_one_existing_tables_have() {
        let sql = schema_sql();
        let check = "CHECK (status IN ('pending', 'running', 'copied', 'verifying', 'done', 'unverified', 'failed'))";
        assert_eq!(sql.matches(check).count(), 2, "{sql}");
        assert!(sql.contains("DEFAULT 'pending'"));
        assert!(sql.contains("LIKE '%verifying%'"));
        assert!(sql.contains("NOT NULL DEFAULT '{}',"));
    }
}
